/* prom.c - see prom.h. */
#include "prom.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "util.h"

struct mn_prom {
	char *text; /* the exposition, NUL-terminated */
	size_t len, cap;
	char *labels; /* rendered constant labels without braces: a="x",b="y" */
	size_t llen, lcap;
	int rc; /* first error, sticky */
	char err[MN_ERRLEN];
	char failed[MN_ERRLEN]; /* mn_prom_publish's last failure, "" after a success */
};

static void fail(struct mn_prom *p, int rc, const char *fmt, ...) MN_PRINTF(3, 4);

static void fail(struct mn_prom *p, int rc, const char *fmt, ...)
{
	va_list ap;

	if (p->rc < 0)
		return;
	p->rc = rc;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof(p->err), fmt, ap);
	va_end(ap);
}

/* Appends n bytes to the buffer *buf (length *len, capacity *cap), keeping a NUL after them. */
static void grow_append(struct mn_prom *p, char **buf, size_t *len, size_t *cap, const char *s,
                        size_t n)
{
	if (p->rc < 0)
		return;
	if (*len + n + 1 > *cap) {
		size_t ncap = *cap ? *cap : 1024;
		char *nb;

		while (ncap < *len + n + 1)
			ncap *= 2;
		nb = realloc(*buf, ncap);
		if (!nb) {
			fail(p, -ENOMEM, "out of memory building the metrics");
			return;
		}
		*buf = nb;
		*cap = ncap;
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = '\0';
}

static void put(struct mn_prom *p, const char *s)
{
	grow_append(p, &p->text, &p->len, &p->cap, s, strlen(s));
}

static bool valid_name(const char *name, bool colon)
{
	if (!name || !*name)
		return false;
	for (const char *c = name; *c; c++) {
		bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
		             (colon && *c == ':');

		if (!alpha && !(c > name && *c >= '0' && *c <= '9'))
			return false;
	}
	return true;
}

/* Appends s with the escapes of a label value (\\, \", \n), or of HELP text (\\, \n). */
static void put_escaped(struct mn_prom *p, char **buf, size_t *len, size_t *cap, const char *s,
                        bool quote)
{
	for (; *s; s++) {
		const char *esc = NULL;

		if (*s == '\\')
			esc = "\\\\";
		else if (*s == '\n')
			esc = "\\n";
		else if (*s == '"' && quote)
			esc = "\\\"";
		if (esc)
			grow_append(p, buf, len, cap, esc, 2);
		else
			grow_append(p, buf, len, cap, s, 1);
	}
}

static void format_value(double v, char *buf, size_t len)
{
	if (isnan(v))
		snprintf(buf, len, "NaN");
	else if (isinf(v))
		snprintf(buf, len, "%s", v > 0 ? "+Inf" : "-Inf");
	else
		mn_json_format_double(v, -1, buf, len);
}

struct mn_prom *mn_prom_new(void)
{
	return calloc(1, sizeof(struct mn_prom));
}

void mn_prom_free(struct mn_prom *p)
{
	if (!p)
		return;
	free(p->text);
	free(p->labels);
	free(p);
}

void mn_prom_reset(struct mn_prom *p)
{
	p->len = 0;
	p->llen = 0;
	if (p->text)
		p->text[0] = '\0';
	if (p->labels)
		p->labels[0] = '\0';
	p->rc = 0;
	p->err[0] = '\0';
}

void mn_prom_label(struct mn_prom *p, const char *name, const char *value)
{
	if (p->rc < 0)
		return;
	if (!valid_name(name, false) || strcmp(name, "le") == 0 || strncmp(name, "__", 2) == 0) {
		fail(p, -EINVAL, "%s: not a valid label name", name ? name : "(null)");
		return;
	}
	/* The format is UTF-8: node-exporter drops a whole file over one bad label value. */
	if (!value || !mn_json_utf8(value, strlen(value))) {
		fail(p, -EINVAL, "%s: label value is not valid UTF-8", name);
		return;
	}
	if (p->llen > 0)
		grow_append(p, &p->labels, &p->llen, &p->lcap, ",", 1);
	grow_append(p, &p->labels, &p->llen, &p->lcap, name, strlen(name));
	grow_append(p, &p->labels, &p->llen, &p->lcap, "=\"", 2);
	put_escaped(p, &p->labels, &p->llen, &p->lcap, value, true);
	grow_append(p, &p->labels, &p->llen, &p->lcap, "\"", 1);
}

static void family(struct mn_prom *p, const char *name, const char *type, const char *help)
{
	if (p->rc < 0)
		return;
	if (!valid_name(name, true)) {
		fail(p, -EINVAL, "%s: not a valid metric name", name ? name : "(null)");
		return;
	}
	if (!help || !mn_json_utf8(help, strlen(help))) {
		fail(p, -EINVAL, "%s: HELP is not valid UTF-8", name);
		return;
	}
	put(p, "# HELP ");
	put(p, name);
	put(p, " ");
	put_escaped(p, &p->text, &p->len, &p->cap, help, false);
	put(p, "\n# TYPE ");
	put(p, name);
	put(p, " ");
	put(p, type);
	put(p, "\n");
}

/* One sample line: name[suffix]{labels[,le="le"]} value. */
static void sample(struct mn_prom *p, const char *name, const char *suffix, const char *le,
                   double value)
{
	char num[MN_JSON_NUMLEN];

	put(p, name);
	put(p, suffix);
	if (p->llen > 0 || le) {
		put(p, "{");
		if (p->llen > 0)
			put(p, p->labels);
		if (le) {
			put(p, p->llen > 0 ? ",le=\"" : "le=\"");
			put(p, le);
			put(p, "\"");
		}
		put(p, "}");
	}
	format_value(value, num, sizeof(num));
	put(p, " ");
	put(p, num);
	put(p, "\n");
}

void mn_prom_gauge(struct mn_prom *p, const char *name, const char *help, double value)
{
	family(p, name, "gauge", help);
	if (p->rc == 0)
		sample(p, name, "", NULL, value);
}

void mn_prom_counter(struct mn_prom *p, const char *name, const char *help, double value)
{
	size_t n = name ? strlen(name) : 0;

	if (p->rc == 0 && (n < 6 || strcmp(name + n - 6, "_total") != 0)) {
		fail(p, -EINVAL, "%s: a counter's name must end in _total", name ? name : "(null)");
		return;
	}
	family(p, name, "counter", help);
	if (p->rc == 0)
		sample(p, name, "", NULL, value);
}

void mn_prom_hist_init(struct mn_prom_hist *h, const double *bounds, size_t nbounds)
{
	memset(h, 0, sizeof(*h));
	h->nbounds = nbounds > MN_PROM_MAX_BUCKETS ? MN_PROM_MAX_BUCKETS : nbounds;
	memcpy(h->bounds, bounds, h->nbounds * sizeof(*bounds));
}

void mn_prom_hist_observe(struct mn_prom_hist *h, double v)
{
	if (isnan(v))
		return;
	for (size_t i = 0; i < h->nbounds; i++) {
		if (v <= h->bounds[i]) {
			h->counts[i]++;
			break;
		}
	}
	h->count++;
	h->sum += v;
}

void mn_prom_histogram(struct mn_prom *p, const char *name, const char *help,
                       const struct mn_prom_hist *h)
{
	char le[MN_JSON_NUMLEN];
	uint64_t cum = 0;

	if (p->rc < 0)
		return;
	if (h->nbounds > MN_PROM_MAX_BUCKETS) {
		fail(p, -EINVAL, "%s: more than %d buckets", name ? name : "(null)",
		     MN_PROM_MAX_BUCKETS);
		return;
	}
	for (size_t i = 0; i < h->nbounds; i++) {
		if (!isfinite(h->bounds[i]) || (i > 0 && h->bounds[i] <= h->bounds[i - 1])) {
			fail(p, -EINVAL, "%s: bucket bounds must be finite and increasing",
			     name ? name : "(null)");
			return;
		}
	}
	family(p, name, "histogram", help);
	for (size_t i = 0; i < h->nbounds && p->rc == 0; i++) {
		cum += h->counts[i];
		format_value(h->bounds[i], le, sizeof(le));
		sample(p, name, "_bucket", le, (double)cum);
	}
	if (p->rc < 0)
		return;
	sample(p, name, "_bucket", "+Inf", (double)h->count);
	sample(p, name, "_sum", NULL, h->sum);
	sample(p, name, "_count", NULL, (double)h->count);
}

int mn_prom_text(const struct mn_prom *p, const char **text, size_t *len, char *err, size_t errlen)
{
	if (p->rc < 0) {
		mn_errf(err, errlen, "%s", p->err);
		return p->rc;
	}
	*text = p->text ? p->text : "";
	*len = p->len;
	return 0;
}

int mn_prom_write(const struct mn_prom *p, const char *path, char *err, size_t errlen)
{
	char dir[PATH_MAX];
	const char *name, *text;
	struct iovec iov;
	size_t len;
	int rc = mn_prom_text(p, &text, &len, err, errlen);

	if (rc < 0) {
		mn_errprefix(err, errlen, "%s", path);
		return rc;
	}
	if (!(name = mn_split_path(path, dir, sizeof(dir), err, errlen)))
		return -EINVAL;
	iov.iov_base = (void *)text;
	iov.iov_len = len;
	/*
	 * Exactly 0644: node-exporter reads as its own user, and the units'
	 * UMask=0027 would otherwise make the file 0640, which it cannot read
	 * (a scrape error, and none of the metrics). No fsync: the callers
	 * write on their event loop, which must not wait seconds for the disk
	 * behind a checkpoint's writeback; the file is rewritten at every
	 * start, so it needs atomicity, not durability.
	 */
	return mn_write_atomic_opts(
	    dir, name, &iov, 1,
	    &(struct mn_write_opts){.mode = 0644, .flags = MN_WRITE_EXACT_MODE | MN_WRITE_NO_SYNC},
	    err, errlen);
}

int mn_prom_remove_stale(const char *path)
{
	char dir[PATH_MAX];
	const char *name = mn_split_path(path, dir, sizeof(dir), NULL, 0);

	return name ? mn_remove_stale_temps_of(dir, name, NULL, 0) : -EINVAL;
}

int mn_prom_publish(struct mn_prom *p, const char *path, const char *key)
{
	char err[MN_ERRLEN] = "";
	int rc = mn_prom_write(p, path, err, sizeof(err));

	if (rc < 0) {
		if (strcmp(err, p->failed) != 0)
			mn_log(MN_LOG_ERROR, "%s: %s", key, err);
		snprintf(p->failed, sizeof(p->failed), "%s", err);
	} else if (p->failed[0]) {
		mn_log(MN_LOG_INFO, "%s: %s written again", key, path);
		p->failed[0] = '\0';
	}
	return rc;
}
