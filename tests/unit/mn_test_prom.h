/*
 * mn_test_prom.h - a strict reader of the Prometheus text exposition format
 * (0.0.4) for the tests of the programs' textfiles (test_textfile.c,
 * test_eval_textfile.c).
 *
 * It accepts what a textfile should hold and nothing more: each family a
 * HELP, then a TYPE (gauge, counter or histogram), then its samples; every
 * family declared once; a histogram's samples named with _bucket, _sum or
 * _count; labels only run and, on a _bucket sample alone, le; the text ending
 * with a newline. Anything else fails the test with a check assertion that
 * names the line, so a file a scraper would reject fails whatever values it
 * holds. Like mn_test.h, everything is static inline.
 */
#ifndef MN_TEST_PROM_H
#define MN_TEST_PROM_H

#include <check.h>
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* The most families and samples an exposition may have (more fails the test). */
#define MN_TEST_PROM_MAX_FAMILIES 20
#define MN_TEST_PROM_MAX_SAMPLES  48
/* Room for a metric or label name, or a run label's value, with its NUL. */
#define MN_TEST_PROM_NAME_LEN 128
/* The largest file mn_test_prom_read reads (bytes). */
#define MN_TEST_PROM_READ_MAX (1 << 20)

/* One sample line, its labels decoded. Only run and le may appear. */
struct mn_test_prom_sample {
	char name[MN_TEST_PROM_NAME_LEN];
	bool has_run, has_le;
	char run[MN_TEST_PROM_NAME_LEN], le[32];
	double value;
};

/* A family: its name and its TYPE ("gauge", "counter" or "histogram"). */
struct mn_test_prom_family {
	char name[MN_TEST_PROM_NAME_LEN];
	char type[16];
};

/* A whole exposition: its families and samples, in the order of the text. */
struct mn_test_prom_expo {
	struct mn_test_prom_family fam[MN_TEST_PROM_MAX_FAMILIES];
	struct mn_test_prom_sample smp[MN_TEST_PROM_MAX_SAMPLES];
	size_t nfam, nsmp;
};

/* A metric (colon true) or label name at p into out; returns the first byte after it. */
static inline const char *mn_test_prom_parse_name(const char *p, char *out, bool colon, int line)
{
	size_t n = 0;

	ck_assert_msg(isalpha((unsigned char)*p) || *p == '_' || (colon && *p == ':'),
	              "line %d: no name at '%s'", line, p);
	while (isalnum((unsigned char)p[n]) || p[n] == '_' || (colon && p[n] == ':'))
		n++;
	ck_assert_msg(n < MN_TEST_PROM_NAME_LEN, "line %d: name too long", line);
	memcpy(out, p, n);
	out[n] = '\0';
	return p + n;
}

/* A quoted label value (p at the opening quote), unescaped into out (len bytes). */
static inline const char *mn_test_prom_parse_quoted(const char *p, char *out, size_t len, int line)
{
	size_t n = 0;

	ck_assert_msg(*p++ == '"', "line %d: label value not quoted", line);
	for (; *p != '"'; p++) {
		char c = *p;

		ck_assert_msg(c && c != '\n', "line %d: unterminated label value", line);
		if (c == '\\') {
			c = *++p;
			/* The only escapes the format has. */
			ck_assert_msg(c == '\\' || c == '"' || c == 'n', "line %d: bad escape \\%c",
			              line, c);
			c = c == 'n' ? '\n' : c;
		}
		ck_assert_uint_lt(n + 1, len);
		out[n++] = c;
	}
	out[n] = '\0';
	return p + 1;
}

/* A sample's value; strtod reads NaN, +Inf and -Inf as the format spells them. */
static inline double mn_test_prom_parse_value(const char *s, int line)
{
	char *end;
	double v = strtod(s, &end);

	ck_assert_msg(end != s && *end == '\0', "line %d: bad value '%s'", line, s);
	return v;
}

/* The sample line at p (NUL-terminated) of family f, into s. */
static inline void mn_test_prom_parse_sample(const char *p, const struct mn_test_prom_family *f,
                                             struct mn_test_prom_sample *s, int line)
{
	char lname[MN_TEST_PROM_NAME_LEN], suffix[MN_TEST_PROM_NAME_LEN];

	memset(s, 0, sizeof(*s));
	p = mn_test_prom_parse_name(p, s->name, true, line);
	/* A sample belongs to the family just declared; a histogram's carry their suffix. */
	snprintf(suffix, sizeof(suffix), "%s", s->name + strlen(f->name));
	ck_assert_msg(
	    strncmp(s->name, f->name, strlen(f->name)) == 0 &&
	        (!suffix[0] || (strcmp(f->type, "histogram") == 0 &&
	                        (strcmp(suffix, "_bucket") == 0 || strcmp(suffix, "_sum") == 0 ||
	                         strcmp(suffix, "_count") == 0))),
	    "line %d: %s outside its family %s", line, s->name, f->name);
	if (*p == '{') {
		do {
			p = mn_test_prom_parse_name(p + 1, lname, false, line);
			ck_assert_msg(*p == '=', "line %d: no '=' after label %s", line, lname);
			if (strcmp(lname, "run") == 0 && !s->has_run) {
				p = mn_test_prom_parse_quoted(p + 1, s->run, sizeof(s->run), line);
				s->has_run = true;
			} else if (strcmp(lname, "le") == 0 && !s->has_le) {
				p = mn_test_prom_parse_quoted(p + 1, s->le, sizeof(s->le), line);
				s->has_le = true;
			} else {
				ck_abort_msg("line %d: unexpected label %s", line, lname);
			}
		} while (*p == ',');
		ck_assert_msg(*p++ == '}', "line %d: labels not closed", line);
	}
	ck_assert_msg(s->has_le == (strcmp(suffix, "_bucket") == 0), "line %d: le misplaced", line);
	ck_assert_msg(*p++ == ' ', "line %d: no space before the value", line);
	s->value = mn_test_prom_parse_value(p, line);
}

/*
 * Parses a whole exposition into e: each family a HELP, then a TYPE, then
 * its samples, declared once; the text ends with a newline. text is changed
 * (each newline becomes a NUL).
 */
static inline void mn_test_prom_parse(char *text, struct mn_test_prom_expo *e)
{
	struct mn_test_prom_family *f = NULL;
	char name[MN_TEST_PROM_NAME_LEN];
	int line = 0;

	memset(e, 0, sizeof(*e));
	ck_assert_msg(text[0] && text[strlen(text) - 1] == '\n', "not a whole exposition");
	for (char *p = text, *nl; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		*nl = '\0';
		line++;
		if (strncmp(p, "# HELP ", 7) == 0) {
			p = (char *)mn_test_prom_parse_name(p + 7, name, true, line);
			ck_assert_msg(p[0] == ' ' && p[1], "line %d: HELP without text", line);
			ck_assert_uint_lt(e->nfam, MN_TEST_PROM_MAX_FAMILIES);
			for (size_t i = 0; i < e->nfam; i++)
				ck_assert_msg(strcmp(e->fam[i].name, name) != 0,
				              "line %d: %s declared twice", line, name);
			f = &e->fam[e->nfam++];
			snprintf(f->name, sizeof(f->name), "%s", name);
		} else if (strncmp(p, "# TYPE ", 7) == 0) {
			p = (char *)mn_test_prom_parse_name(p + 7, name, true, line);
			ck_assert_msg(f && strcmp(f->name, name) == 0 && !f->type[0],
			              "line %d: TYPE %s without its HELP", line, name);
			ck_assert_msg(strcmp(p, " gauge") == 0 || strcmp(p, " counter") == 0 ||
			                  strcmp(p, " histogram") == 0,
			              "line %d: bad type '%s'", line, p);
			snprintf(f->type, sizeof(f->type), "%s", p + 1);
		} else {
			ck_assert_msg(f && f->type[0], "line %d: sample without a TYPE", line);
			ck_assert_uint_lt(e->nsmp, MN_TEST_PROM_MAX_SAMPLES);
			mn_test_prom_parse_sample(p, f, &e->smp[e->nsmp++], line);
		}
	}
}

/* Reads the file at path (no NUL inside) and parses it into e. */
static inline void mn_test_prom_read(const char *path, struct mn_test_prom_expo *e)
{
	char err[MN_ERRLEN], *buf = NULL;
	size_t len;

	ck_assert_msg(mn_read_file(path, MN_TEST_PROM_READ_MAX, &buf, &len, err, sizeof(err)) == 0,
	              "%s", err);
	ck_assert_uint_eq(strlen(buf), len);
	mn_test_prom_parse(buf, e);
	free(buf);
}

/* The value of the one sample called name (with le="le" when le is not NULL). */
static inline double mn_test_prom_value(const struct mn_test_prom_expo *e, const char *name,
                                        const char *le)
{
	const struct mn_test_prom_sample *found = NULL;

	for (size_t i = 0; i < e->nsmp; i++) {
		const struct mn_test_prom_sample *s = &e->smp[i];

		if (strcmp(s->name, name) == 0 && (!le || strcmp(s->le, le) == 0)) {
			ck_assert_msg(!found, "%s{le=%s} twice", name, le ? le : "");
			found = s;
		}
	}
	ck_assert_msg(found != NULL, "no sample %s{le=%s}", name, le ? le : "");
	return found->value;
}

/*
 * Asserts that e has exactly the n families at want, in any order, each with
 * its type; one sample per family except a histogram's, which are its
 * nbuckets bounds and +Inf, then _sum and _count; and the run label on every
 * sample (with the value run) or, when run is NULL, on none.
 */
static inline void mn_test_prom_check_shape(const struct mn_test_prom_expo *e,
                                            const struct mn_test_prom_family *want, size_t n,
                                            size_t nbuckets, const char *run)
{
	size_t nsamples = 0;

	ck_assert_uint_eq(e->nfam, n);
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;

		while (j < e->nfam && strcmp(e->fam[j].name, want[i].name) != 0)
			j++;
		ck_assert_msg(j < e->nfam, "family %s missing", want[i].name);
		ck_assert_str_eq(e->fam[j].type, want[i].type);
		nsamples += strcmp(want[i].type, "histogram") == 0 ? nbuckets + 3 : 1;
	}
	ck_assert_uint_eq(e->nsmp, nsamples);
	for (size_t i = 0; i < e->nsmp; i++) {
		ck_assert_msg(e->smp[i].has_run == (run != NULL), "%s: run label %s",
		              e->smp[i].name, run ? "missing" : "present");
		if (run)
			ck_assert_str_eq(e->smp[i].run, run);
	}
}

#endif
