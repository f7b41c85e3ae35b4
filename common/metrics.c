/*
 * metrics.c - strict reading of metrics files and best.json, and the summary.
 */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "best.h"
#include "json.h"
#include "util.h"

/* Integers beyond 2^53 do not survive a double. */
#define STEP_MAX 9007199254740992.0

static bool parse_digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++, (*p)++) {
		if (**p < '0' || **p > '9')
			return false;
		v = v * 10 + (**p - '0');
	}
	*out = v;
	return true;
}

static bool expect(const char **p, char c)
{
	if (**p != c)
		return false;
	(*p)++;
	return true;
}

bool mn_metrics_parse_time(const char *s, int64_t *ms)
{
	int y, mo, d, h, mi, sec, oh = 0, om = 0, frac = 0, sign = 0;
	struct tm tm = {0};
	const char *p = s;
	time_t t;

	if (!parse_digits(&p, 4, &y) || !expect(&p, '-') || !parse_digits(&p, 2, &mo) ||
	    !expect(&p, '-') || !parse_digits(&p, 2, &d) || !(expect(&p, 'T') || expect(&p, 't')) ||
	    !parse_digits(&p, 2, &h) || !expect(&p, ':') || !parse_digits(&p, 2, &mi) ||
	    !expect(&p, ':') || !parse_digits(&p, 2, &sec))
		return false;
	if (*p == '.') {
		int scale = 100;

		p++;
		if (*p < '0' || *p > '9')
			return false;
		for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
			frac += (*p - '0') * scale;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p++ == '+' ? 1 : -1;
		if (!parse_digits(&p, 2, &oh) || !expect(&p, ':') || !parse_digits(&p, 2, &om) ||
		    oh > 23 || om > 59)
			return false;
	} else {
		return false;
	}
	if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
		return false;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	*ms = ((int64_t)t - sign * (int64_t)(oh * 3600 + om * 60)) * 1000 + frac;
	return true;
}

/* A finite number, or NAN for null (what the writers put for a non-finite value). */
static bool get_number(const cJSON *o, const char *key, bool nullable, double *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	if (nullable && cJSON_IsNull(v)) {
		*out = NAN;
		return true;
	}
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return false;
	*out = v->valuedouble;
	return true;
}

static bool get_step(const cJSON *o, int64_t *out)
{
	double v;

	if (!get_number(o, "step", false, &v) || v < 0 || v > STEP_MAX || v != floor(v))
		return false;
	*out = (int64_t)v;
	return true;
}

/* Fills p from one line's object; on failure returns the member at fault. */
static const char *parse_point(enum mn_metrics_kind kind, const cJSON *o,
                               struct mn_metrics_point *p)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "time");

	*p = (struct mn_metrics_point){.learning_rate = NAN, .steps_per_sec = NAN, .accuracy = NAN};
	if (!get_step(o, &p->step))
		return "\"step\" must be an integer in [0, 2^53]";
	if (!get_number(o, "loss", true, &p->loss))
		return "\"loss\" must be a number";
	if (!cJSON_IsString(t) || !mn_metrics_parse_time(t->valuestring, &p->time_ms))
		return "\"time\" must be an RFC 3339 time";
	if (kind == MN_METRICS_TRAIN) {
		if (!get_number(o, "learning_rate", true, &p->learning_rate))
			return "\"learning_rate\" must be a number";
		if (!get_number(o, "steps_per_sec", false, &p->steps_per_sec) ||
		    p->steps_per_sec < 0)
			return "\"steps_per_sec\" must be a number >= 0";
		return NULL;
	}
	const cJSON *ck = cJSON_GetObjectItemCaseSensitive(o, "checkpoint");

	if (!get_number(o, "accuracy", false, &p->accuracy) || p->accuracy < 0 || p->accuracy > 1)
		return "\"accuracy\" must be a number in [0, 1]";
	if (!cJSON_IsString(ck) || strlen(ck->valuestring) >= MN_METRICS_NAME_MAX)
		return "\"checkpoint\" must be a file name";
	/* The caller copies it before the object is freed. */
	p->checkpoint = ck->valuestring;
	return NULL;
}

/* Appends p (its checkpoint the series' from now on) under the step rule of metrics.h. */
static int keep_point(struct mn_metrics_series *s, size_t *cap, const struct mn_metrics_point *p)
{
	while (s->n > 0 && s->points[s->n - 1].step >= p->step)
		free(s->points[--s->n].checkpoint);
	if (s->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct mn_metrics_point *np = realloc(s->points, ncap * sizeof(*np));

		if (!np)
			return -ENOMEM;
		s->points = np;
		*cap = ncap;
	}
	s->points[s->n++] = *p;
	return 0;
}

static int parse_line(enum mn_metrics_kind kind, const char *line, size_t len, const char *name,
                      size_t lineno, struct mn_metrics_point *p, char *err, size_t errlen)
{
	struct mn_json_error e;
	cJSON *o = NULL;
	const char *why;
	int rc = mn_json_parse(line, len, MN_JSON_UTF8, &o, &e);

	if (rc == -ENOMEM) {
		mn_errf(err, errlen, "%s: out of memory", name);
		return rc;
	}
	if (rc < 0 || !cJSON_IsObject(o)) {
		cJSON_Delete(o);
		mn_errf(err, errlen, "%s:%zu: not a JSON object%s%s", name, lineno,
		        rc < 0 ? ": " : "", rc < 0 ? e.what : "");
		return -EINVAL;
	}
	why = parse_point(kind, o, p);
	if (!why && p->checkpoint && !(p->checkpoint = strdup(p->checkpoint))) {
		cJSON_Delete(o);
		mn_errf(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	cJSON_Delete(o);
	if (why) {
		mn_errf(err, errlen, "%s:%zu: %s", name, lineno, why);
		return -EINVAL;
	}
	return 0;
}

/*
 * Whether a line (its NUL bytes at either end already cut away) is a record
 * its writer never finished: an object that is never closed. Such a line is
 * what a writer that died mid-write leaves, ended by the next writer's
 * newline; a line that closes its object and still fails is wrong instead.
 */
static bool never_closed(const char *p, size_t len)
{
	int depth = 0;
	bool in_string = false, escaped = false;

	if (len == 0 || p[0] != '{')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];

		if (in_string) {
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if ((c == '}' || c == ']') && --depth == 0) {
			return false;
		}
	}
	return true;
}

/*
 * Narrows [*a, *z) to the line without the zeros a crash can leave where
 * its bytes never reached the disk; true if what is left is a record its
 * writer never finished.
 */
static bool trim_unfinished(const char **a, const char **z)
{
	size_t len = (size_t)(*z - *a);

	while (*a < *z && **a == '\0')
		(*a)++;
	while (*z > *a && (*z)[-1] == '\0')
		(*z)--;
	return (*a == *z && len > 0) || never_closed(*a, (size_t)(*z - *a));
}

bool mn_metrics_line_unfinished(const char *line, size_t len)
{
	const char *a = line, *z = line + len;

	return trim_unfinished(&a, &z);
}

/*
 * Parses the complete lines of text[0, len) into s (line numbers go on
 * from s->lines); *used gets the bytes they take, up to the last newline.
 */
static int parse_lines(enum mn_metrics_kind kind, const char *text, size_t len, const char *name,
                       struct mn_metrics_series *s, size_t *cap, size_t *used, char *err,
                       size_t errlen)
{
	const char *p = text, *end = text + len;
	int rc;

	for (const char *nl; p < end && (nl = memchr(p, '\n', (size_t)(end - p))); p = nl + 1) {
		struct mn_metrics_point pt;
		const char *a = p, *z = nl;

		s->lines++;
		if (trim_unfinished(&a, &z)) {
			s->cut++;
			continue;
		}
		if ((size_t)(nl - p) > MN_METRICS_LINE_MAX) {
			mn_errf(err, errlen, "%s:%zu: longer than %d bytes", name, s->lines,
			        MN_METRICS_LINE_MAX);
			return -EINVAL;
		}
		rc = parse_line(kind, a, (size_t)(z - a), name, s->lines, &pt, err, errlen);
		if (rc == 0 && (rc = keep_point(s, cap, &pt)) < 0) {
			free(pt.checkpoint);
			mn_errf(err, errlen, "%s: out of memory", name);
		}
		if (rc < 0)
			return rc;
	}
	*used = (size_t)(p - text);
	return 0;
}

static int no_lines_yet(const char *name, char *err, size_t errlen)
{
	mn_errf(err, errlen, "%s: has no lines yet", name);
	return -ENODATA;
}

int mn_metrics_parse(enum mn_metrics_kind kind, const char *text, size_t len, const char *name,
                     struct mn_metrics_series *out, char *err, size_t errlen)
{
	struct mn_metrics_series s = {0};
	size_t cap = 0, used;
	int rc;

	*out = s;
	rc = parse_lines(kind, text, len, name, &s, &cap, &used, err, errlen);
	if (rc == 0 && s.n == 0)
		rc = no_lines_yet(name, err, errlen);
	if (rc < 0) {
		mn_metrics_series_free(&s);
		return rc;
	}
	*out = s;
	return 0;
}

void mn_metrics_file_init(struct mn_metrics_file *f, enum mn_metrics_kind kind)
{
	*f = (struct mn_metrics_file){.kind = kind};
}

/* Forgets what was read: the next read starts at the file's first byte. */
static void start_over(struct mn_metrics_file *f)
{
	mn_metrics_series_free(&f->series);
	f->cap = 0;
	f->offset = 0;
	f->seen = 0;
	f->known = false;
	f->rc = 0;
	f->why[0] = '\0';
}

void mn_metrics_file_free(struct mn_metrics_file *f)
{
	start_over(f);
}

/*
 * Whether the file at fd is the one read so far, continued: the same
 * inode, at least as long, and the newline that ended the last line read
 * still there (a file truncated and written again past that length is not).
 */
static bool continues(const struct mn_metrics_file *f, int fd, const struct stat *st)
{
	char c;

	if (!f->known || (uint64_t)st->st_dev != f->dev || (uint64_t)st->st_ino != f->ino ||
	    (uint64_t)st->st_size < f->seen)
		return false;
	return f->offset == 0 || (pread(fd, &c, 1, (off_t)f->offset - 1) == 1 && c == '\n');
}

/* Bytes read per read(2), and the smallest room kept for a partial line. */
#define READ_CHUNK (256u << 10)

/* Reads fd from f->offset to its end, parsing each complete line once. */
static int read_new(struct mn_metrics_file *f, int fd, const char *path, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t cap = 0, len = 0, used;
	int rc = 0;

	for (;;) {
		ssize_t n;

		/* What is left of a chunk is the start of a line: room for it and a chunk more. */
		if (cap - len < READ_CHUNK) {
			char *nb = realloc(buf, len + READ_CHUNK);

			if (!nb) {
				mn_errf(err, errlen, "%s: out of memory", path);
				rc = -ENOMEM;
				break;
			}
			buf = nb;
			cap = len + READ_CHUNK;
		}
		n = pread(fd, buf + len, cap - len, (off_t)(f->offset + len));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			mn_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		f->last_read += (uint64_t)n;
		f->seen = f->offset + len + (uint64_t)n;
		len += (size_t)n;
		rc = parse_lines(f->kind, buf, len, path, &f->series, &f->cap, &used, err, errlen);
		if (rc < 0)
			break;
		f->offset += used;
		len -= used;
		memmove(buf, buf + used, len);
		if (len > MN_METRICS_LINE_MAX) {
			mn_errf(err, errlen, "%s:%zu: longer than %d bytes", path,
			        f->series.lines + 1, MN_METRICS_LINE_MAX);
			rc = -EINVAL;
			break;
		}
	}
	free(buf);
	return rc;
}

int mn_metrics_file_update(struct mn_metrics_file *f, const char *path, char *err, size_t errlen)
{
	struct stat st;
	int fd, rc;

	f->last_read = 0;
	fd = mn_open_regular(path, 0, &st, err, errlen);
	if (fd < 0) {
		start_over(f);
		return fd;
	}
	if (!continues(f, fd, &st)) {
		start_over(f);
		f->known = true;
		f->dev = (uint64_t)st.st_dev;
		f->ino = (uint64_t)st.st_ino;
	}
	if (f->rc < 0) {
		/* Rejected, and nothing was rewritten since: the bad line is still there. */
		close(fd);
		mn_errf(err, errlen, "%s", f->why);
		return f->rc;
	}
	rc = read_new(f, fd, path, err, errlen);
	close(fd);
	if (rc == -EINVAL) {
		mn_metrics_series_free(&f->series);
		f->cap = 0;
		f->rc = rc;
		snprintf(f->why, sizeof(f->why), "%s", err);
		return rc;
	}
	if (rc < 0) {
		/* Out of memory or a read error: what was half read is no state to go on from. */
		start_over(f);
		return rc;
	}
	return f->series.n ? 0 : no_lines_yet(path, err, errlen);
}

int mn_metrics_load(enum mn_metrics_kind kind, const char *path, struct mn_metrics_series *out,
                    char *err, size_t errlen)
{
	struct mn_metrics_file f;
	int rc;

	mn_metrics_file_init(&f, kind);
	rc = mn_metrics_file_update(&f, path, err, errlen);
	if (rc < 0) {
		mn_metrics_file_free(&f);
		*out = (struct mn_metrics_series){0};
		return rc;
	}
	*out = f.series;
	return 0;
}

void mn_metrics_series_free(struct mn_metrics_series *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->points[i].checkpoint);
	free(s->points);
	s->points = NULL;
	s->n = s->lines = s->cut = 0;
}

int mn_metrics_load_best(const char *path, struct mn_metrics_best *out, char *err, size_t errlen)
{
	struct mn_best_entry *e = NULL;
	size_t n = 0;
	int rc = mn_best_load_file(path, &e, &n, err, errlen);

	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	if (n > 0) {
		out->step = e[0].step;
		out->accuracy = e[0].accuracy;
		snprintf(out->file, sizeof(out->file), "%s", e[0].file);
		rc = 1;
	}
	free(e);
	return rc;
}

static void time_span(const struct mn_metrics_series *s, int64_t *first, int64_t *last)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++) {
		if (s->points[i].time_ms < *first)
			*first = s->points[i].time_ms;
		if (s->points[i].time_ms > *last)
			*last = s->points[i].time_ms;
	}
}

void mn_metrics_summarize(const struct mn_metrics_series *train,
                          const struct mn_metrics_series *eval, const struct mn_metrics_best *best,
                          struct mn_metrics_summary *out)
{
	int64_t first = INT64_MAX, last = INT64_MIN;

	*out = (struct mn_metrics_summary){.steps = -1,
	                                   .best_step = -1,
	                                   .best_accuracy = NAN,
	                                   .latest_step = -1,
	                                   .latest_accuracy = NAN,
	                                   .steps_per_sec = NAN,
	                                   .elapsed_s = NAN};
	if (train && train->n) {
		out->steps = train->points[train->n - 1].step;
		out->steps_per_sec = train->points[train->n - 1].steps_per_sec;
	}
	if (eval && eval->n) {
		const struct mn_metrics_point *l = &eval->points[eval->n - 1];

		if (l->step > out->steps)
			out->steps = l->step;
		out->latest_step = l->step;
		out->latest_accuracy = l->accuracy;
		for (size_t i = 0; i < eval->n; i++) {
			const struct mn_metrics_point *p = &eval->points[i];

			if (out->best_step < 0 || p->accuracy > out->best_accuracy) {
				out->best_step = p->step;
				out->best_accuracy = p->accuracy;
				snprintf(out->best_checkpoint, sizeof(out->best_checkpoint), "%s",
				         p->checkpoint);
			}
		}
	}
	if (best) {
		out->best_step = best->step;
		out->best_accuracy = best->accuracy;
		snprintf(out->best_checkpoint, sizeof(out->best_checkpoint), "%s", best->file);
	}
	time_span(train, &first, &last);
	time_span(eval, &first, &last);
	if (first <= last)
		out->elapsed_s = (double)(last - first) / 1000.0;
}
