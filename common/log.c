/* log.c - see log.h. */
#include "log.h"

#include "json.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The longest line written, newline included; longer lines are cut. */
#define LINE_MAX_BYTES 16384
/* Room kept at the end of a line for the cut marker "..." and the newline. */
#define LINE_TAIL 8

/*
 * Process-wide state, guarded by log_lock. Writes happen under the lock,
 * so a descriptor is never closed while a line is being written to it.
 * log_gen changes on every open and close, so a reopen that raced with
 * them does not install a stale descriptor.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1; /* the log file, -1 when there is none */
static bool log_stdout; /* opened without a file: standard output */
static char log_path[PATH_MAX];
static unsigned long log_gen;
static enum mn_log_format log_format = MN_LOG_TEXT;
static enum mn_log_level log_level = MN_LOG_INFO;
static const char *log_tag_key; /* mn_log_set_tag's field, NULL when none */
static int64_t log_tag_value;
/*
 * The log file's health. A line cut short (a full disk) leaves the file in
 * the middle of a line: the next line starts with a newline, so it is not
 * glued onto that one. A failure is said once on standard error (the log
 * itself cannot say it), and the first line written again is preceded by
 * a note of how many were lost.
 */
static bool log_torn;     /* the log file ends in a partial line */
static int log_failing;   /* the errno of the failure said; 0 while lines are written */
static uint64_t log_lost; /* lines not written since */

const char *const mn_log_level_names[] = {"debug", "info", "warn", "error", NULL};
const char *const mn_log_format_names[] = {"text", "json", NULL};

const char *mn_log_level_name(enum mn_log_level level)
{
	if ((int)level < 0 || level > MN_LOG_ERROR)
		return "unknown";
	return mn_log_level_names[level];
}

static int open_file(const char *path, int *fd, char *err, size_t errlen)
{
	*fd = mn_open_append(path, 0640, err, errlen);
	if (*fd < 0) {
		int rc = *fd;

		mn_errprefix(err, errlen, "log file");
		return rc;
	}
	return 0;
}

int mn_log_open(const char *path, enum mn_log_format format, enum mn_log_level level, char *err,
                size_t errlen)
{
	bool to_file = path && path[0];
	int fd = -1, old, rc;

	if ((format != MN_LOG_TEXT && format != MN_LOG_JSON) || (int)level < MN_LOG_DEBUG ||
	    level > MN_LOG_ERROR) {
		mn_errf(err, errlen, "invalid log format or level");
		return -EINVAL;
	}
	if (to_file && strlen(path) >= sizeof(log_path)) {
		mn_errf(err, errlen, "log file path too long");
		return -ENAMETOOLONG;
	}
	if (to_file) {
		rc = open_file(path, &fd, err, errlen);
		if (rc < 0)
			return rc;
	}
	pthread_mutex_lock(&log_lock);
	old = log_fd;
	log_fd = fd;
	log_stdout = !to_file;
	snprintf(log_path, sizeof(log_path), "%s", to_file ? path : "");
	log_gen++;
	log_torn = fd >= 0 && mn_fd_ends_mid_line(fd);
	log_failing = 0;
	log_lost = 0;
	log_format = format;
	log_level = level;
	pthread_mutex_unlock(&log_lock);
	if (old >= 0)
		close(old);
	return 0;
}

int mn_log_reopen(char *err, size_t errlen)
{
	char path[PATH_MAX];
	unsigned long gen;
	int fd, old, rc;

	pthread_mutex_lock(&log_lock);
	gen = log_gen;
	snprintf(path, sizeof(path), "%s", log_path);
	pthread_mutex_unlock(&log_lock);
	if (path[0] == '\0')
		return 0;
	/* Open outside the lock: a slow file system must not stall other threads' lines. */
	rc = open_file(path, &fd, err, errlen);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&log_lock);
	if (gen == log_gen) {
		old = log_fd;
		log_fd = fd;
		log_torn = mn_fd_ends_mid_line(fd);
	} else {
		old = fd; /* the log was opened or closed meanwhile: keep that */
	}
	pthread_mutex_unlock(&log_lock);
	if (old >= 0)
		close(old);
	return 0;
}

void mn_log_close(void)
{
	int old;

	pthread_mutex_lock(&log_lock);
	old = log_fd;
	log_fd = -1;
	log_stdout = false;
	log_path[0] = '\0';
	log_gen++;
	log_torn = false;
	log_failing = 0;
	log_lost = 0;
	pthread_mutex_unlock(&log_lock);
	if (old >= 0)
		close(old);
}

void mn_log_set_level(enum mn_log_level level)
{
	pthread_mutex_lock(&log_lock);
	log_level = level;
	pthread_mutex_unlock(&log_lock);
}

enum mn_log_level mn_log_get_level(void)
{
	enum mn_log_level level;

	pthread_mutex_lock(&log_lock);
	level = log_level;
	pthread_mutex_unlock(&log_lock);
	return level;
}

/* Whether a line at level is wanted; *format receives the current format. */
static bool wanted(enum mn_log_level level, enum mn_log_format *format)
{
	bool yes;

	pthread_mutex_lock(&log_lock);
	yes = (int)level >= (int)log_level;
	*format = log_format;
	pthread_mutex_unlock(&log_lock);
	return yes;
}

/* Whether tag is a field to add: there is one, and the line has no field of its name. */
static bool tag_wanted(const struct mn_log_field *f, size_t n, const struct mn_log_field *tag)
{
	if (!tag->key)
		return false;
	for (size_t i = 0; i < n; i++)
		if (f[i].key && strcmp(f[i].key, tag->key) == 0)
			return false;
	return true;
}

/* ---- a bounded line buffer ---- */

struct line {
	char *p;
	size_t len, cap; /* cap excludes the LINE_TAIL reserve */
	bool cut;
};

static void put(struct line *l, const char *s, size_t n)
{
	if (l->cut)
		return;
	if (n > l->cap - l->len) {
		n = l->cap - l->len;
		l->cut = true;
	}
	memcpy(l->p + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

static void putch(struct line *l, char c)
{
	put(l, &c, 1);
}

/* Drops an incomplete UTF-8 sequence at the end (left by a cut). */
static size_t utf8_trim(const char *p, size_t len)
{
	size_t i = len, back = 0;

	while (i > 0 && back < 4 && ((unsigned char)p[i - 1] & 0xC0) == 0x80) {
		i--;
		back++;
	}
	if (i == 0)
		return len;
	unsigned char lead = (unsigned char)p[i - 1];
	size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;

	if (lead >= 0xC0 && back + 1 < need)
		return i - 1;
	return len;
}

/* Ends the line with a newline, marking a cut line with "...". Returns its length. */
static size_t finish(struct line *l)
{
	if (l->cut) {
		l->len = utf8_trim(l->p, l->len);
		memcpy(l->p + l->len, "...", 3);
		l->len += 3;
	}
	l->p[l->len++] = '\n';
	return l->len;
}

/* ---- text lines ---- */

static void put_escaped(struct line *l, const char *s, bool quoted)
{
	char hex[8];

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '\n') {
			puts_(l, "\\n");
		} else if (ch == '\r') {
			puts_(l, "\\r");
		} else if (ch == '\t') {
			puts_(l, "\\t");
		} else if (ch < 0x20 || ch == 0x7f) {
			snprintf(hex, sizeof(hex), "\\x%02x", ch);
			puts_(l, hex);
		} else if (ch == 0xC2 && (unsigned char)s[1] >= 0x80 &&
		           (unsigned char)s[1] < 0xA0) {
			/* C1 controls: some terminals obey U+009B as CSI, so tail -f would too. */
			snprintf(hex, sizeof(hex), "\\u%04x", (unsigned char)s[1]);
			puts_(l, hex);
			s++;
		} else if (quoted && (ch == '"' || ch == '\\')) {
			putch(l, '\\');
			putch(l, (char)ch);
		} else {
			putch(l, (char)ch);
		}
	}
}

static bool needs_quotes(const char *s)
{
	if (*s == '\0')
		return true;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch <= ' ' || ch == '"' || ch == '=' || ch == 0x7f)
			return true;
	}
	return false;
}

#define NUMLEN 400

static void text_line(struct line *l, const char *time, enum mn_log_level level, const char *msg,
                      const struct mn_log_field *f, size_t n)
{
	char num[NUMLEN];

	puts_(l, time);
	putch(l, ' ');
	puts_(l, mn_log_level_name(level));
	putch(l, ' ');
	put_escaped(l, msg ? msg : "", false);
	for (size_t i = 0; i < n; i++) {
		putch(l, ' ');
		put_escaped(l, f[i].key ? f[i].key : "?", false);
		putch(l, '=');
		switch (f[i].type) {
		case MN_LF_STR: {
			const char *s = f[i].v.s ? f[i].v.s : "";

			if (needs_quotes(s)) {
				putch(l, '"');
				put_escaped(l, s, true);
				putch(l, '"');
			} else {
				put_escaped(l, s, false);
			}
			break;
		}
		case MN_LF_INT:
			snprintf(num, sizeof(num), "%" PRId64, f[i].v.i);
			puts_(l, num);
			break;
		case MN_LF_DBL:
			mn_json_format_double(f[i].v.d, f[i].precision, num, sizeof(num));
			puts_(l, num);
			break;
		case MN_LF_BOOL:
			puts_(l, f[i].v.b ? "true" : "false");
			break;
		default:
			puts_(l, "?");
			break;
		}
	}
}

/* ---- JSON lines ---- */

static cJSON *json_field(const struct mn_log_field *f)
{
	switch (f->type) {
	case MN_LF_STR:
		return f->v.s ? cJSON_CreateString(f->v.s) : cJSON_CreateNull();
	case MN_LF_INT:
		return mn_json_int(f->v.i);
	case MN_LF_DBL:
		return mn_json_double(f->v.d, f->precision);
	case MN_LF_BOOL:
		return cJSON_CreateBool(f->v.b);
	}
	return cJSON_CreateNull();
}

static cJSON *json_head(const char *time, enum mn_log_level level, const char *msg)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	if (!mn_json_add(o, "time", cJSON_CreateString(time)) ||
	    !mn_json_add(o, "level", cJSON_CreateString(mn_log_level_name(level))) ||
	    !mn_json_add(o, "msg", cJSON_CreateString(msg))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* cJSON may use a few bytes more than it prints; its documentation asks for 5. */
#define CJSON_SLACK 5

static void json_line(struct line *l, const char *time, enum mn_log_level level, const char *msg,
                      const struct mn_log_field *f, size_t n)
{
	char part[(LINE_MAX_BYTES - 512) / 6 + 1];
	cJSON *o = json_head(time, level, msg ? msg : "");
	bool ok = o != NULL;
	size_t cut;

	for (size_t i = 0; ok && i < n; i++)
		ok = mn_json_add(o, f[i].key ? f[i].key : "?", json_field(&f[i]));
	if (ok && cJSON_PrintPreallocated(o, l->p, (int)(l->cap - CJSON_SLACK), false)) {
		l->len = strlen(l->p);
		cJSON_Delete(o);
		return;
	}
	cJSON_Delete(o);
	/*
	 * Too long (or out of memory): the message alone, cut so that even
	 * six-byte escapes of every byte fit, and a marker.
	 */
	snprintf(part, sizeof(part), "%s", msg ? msg : "");
	cut = utf8_trim(part, strlen(part));
	part[cut] = '\0';
	o = json_head(time, level, part);
	if (o && mn_json_add(o, "truncated", cJSON_CreateTrue()) &&
	    cJSON_PrintPreallocated(o, l->p, (int)(l->cap - CJSON_SLACK), false)) {
		l->len = strlen(l->p);
	} else {
		l->len = 0;
		l->cut = false;
		puts_(l, "{\"time\":\"");
		puts_(l, time);
		puts_(l, "\",\"level\":\"");
		puts_(l, mn_log_level_name(level));
		puts_(l, "\",\"msg\":\"log: out of memory\"}");
	}
	cJSON_Delete(o);
}

/* ---- output ---- */

/* Writes p; returns the bytes written, all of them or fewer with *e the errno. */
static size_t write_all(int fd, const char *p, size_t len, int *e)
{
	size_t done = 0;

	*e = 0;
	while (done < len) {
		ssize_t w = write(fd, p + done, len - done);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				struct pollfd pfd = {.fd = fd, .events = POLLOUT};

				if (poll(&pfd, 1, 1000) > 0)
					continue;
			}
			*e = errno;
			return done;
		}
		if (w == 0) {
			*e = ENOSPC;
			return done;
		}
		done += (size_t)w;
	}
	return done;
}

/*
 * Under log_lock: whether log_path still names the log file. Moved aside or
 * removed without a SIGHUP (logrotate without postrotate, an operator's
 * rm), it would take every later line where no one looks: a new file is
 * opened under the name instead. Returns true if it was, for a note.
 */
static bool follow_name(void)
{
	char err[MN_ERRLEN];
	int fd;

	if (log_fd < 0 || mn_path_names_fd(log_path, log_fd) != 0)
		return false; /* still it, or not known to be gone */
	if (open_file(log_path, &fd, err, sizeof(err)) < 0)
		return false; /* the old file goes on taking the lines; a SIGHUP says why */
	close(log_fd);
	log_fd = fd;
	log_gen++;
	log_torn = mn_fd_ends_mid_line(fd);
	return true;
}

/*
 * Writes one line (p[0] is a spare byte before it) to the log file, under
 * log_lock: after a partial line with a newline first, in the same write.
 * Returns whether it was written whole. A failed line is counted (unless it
 * is the note of lines lost itself) and the first failure of a run of them
 * said on standard error: the log cannot say it.
 */
static bool file_line(char *p, size_t len, bool counted)
{
	size_t n;
	int e, ignored;

	if (log_torn)
		*p = '\n';
	else
		p++, len--;
	n = write_all(log_fd, p, len, &e);
	if (n > 0)
		log_torn = p[n - 1] != '\n';
	if (n == len)
		return true;
	if (counted)
		log_lost++;
	if (!log_failing) {
		char note[PATH_MAX + 256], time[MN_TIMELEN];
		int m;

		mn_time_rfc3339(time);
		m = snprintf(
		    note, sizeof(note),
		    "%s error log file %s: cannot write: %s; lines are lost until it can be "
		    "written again\n",
		    time, log_path, strerror(e));
		if (m > 0)
			write_all(STDERR_FILENO, note,
			          (size_t)m < sizeof(note) ? (size_t)m : sizeof(note) - 1,
			          &ignored);
	}
	log_failing = e;
	return false;
}

void mn_log_set_tag(const char *key, int64_t value)
{
	pthread_mutex_lock(&log_lock);
	log_tag_key = key;
	log_tag_value = value;
	pthread_mutex_unlock(&log_lock);
}

/* The most fields a tagged line carries besides the tag (more: the line goes untagged). */
#define TAGGED_FIELDS_MAX 32

void mn_log_fields(enum mn_log_level level, const char *msg, const struct mn_log_field *fields,
                   size_t nfields)
{
	/* A spare byte before each line, for the newline that ends a partial one (file_line). */
	char buf[LINE_MAX_BYTES + 1], nbuf[PATH_MAX + 512], time[MN_TIMELEN], path[PATH_MAX];
	struct line l = {.p = buf + 1, .cap = sizeof(buf) - 1 - LINE_TAIL};
	struct line nl = {.p = nbuf + 1, .cap = sizeof(nbuf) - 1 - LINE_TAIL};
	enum mn_log_format format;
	size_t len, nlen = 0;
	uint64_t lost;
	int fd, failing;
	bool moved;
	struct mn_log_field tagged[TAGGED_FIELDS_MAX + 1], tag;

	if (!wanted(level, &format))
		return;
	if (!fields)
		nfields = 0;
	pthread_mutex_lock(&log_lock);
	tag = MN_F_INT(log_tag_key, log_tag_value);
	failing = log_fd >= 0 ? log_failing : 0;
	lost = log_lost;
	if (failing)
		snprintf(path, sizeof(path), "%s", log_path);
	pthread_mutex_unlock(&log_lock);
	if (nfields <= TAGGED_FIELDS_MAX && tag_wanted(fields, nfields, &tag)) {
		if (nfields)
			memcpy(tagged, fields, nfields * sizeof(*fields));
		tagged[nfields++] = tag;
		fields = tagged;
	}
	mn_time_rfc3339(time);
	if (format == MN_LOG_JSON)
		json_line(&l, time, level, msg, fields, nfields);
	else
		text_line(&l, time, level, msg, fields, nfields);
	len = finish(&l);
	if (failing) {
		/* Built outside the lock, in case this line is the first to get through. */
		struct mn_log_field nf[] = {
		    MN_F_STR("file", path),
		    MN_F_INT("lines_lost", (int64_t)lost),
		    MN_F_STR("error", strerror(failing)),
		};

		if (format == MN_LOG_JSON)
			json_line(&nl, time, MN_LOG_WARN, "log file: writing again", nf, 3);
		else
			text_line(&nl, time, MN_LOG_WARN, "log file: writing again", nf, 3);
		nlen = finish(&nl);
	}
	pthread_mutex_lock(&log_lock);
	moved = follow_name();
	if (log_fd >= 0) {
		if (log_failing && nlen && file_line(nbuf, nlen + 1, false)) {
			log_failing = 0;
			log_lost = 0;
		}
		file_line(buf, len + 1, true);
	} else {
		int ignored;

		fd = log_stdout ? STDOUT_FILENO : STDERR_FILENO;
		write_all(fd, buf + 1, len, &ignored);
	}
	pthread_mutex_unlock(&log_lock);
	if (moved)
		mn_log(MN_LOG_WARN,
		       "log file was moved or removed: lines go to a new file under its name");
}

void mn_log(enum mn_log_level level, const char *fmt, ...)
{
	char msg[LINE_MAX_BYTES];
	enum mn_log_format format;
	va_list ap;

	if (!wanted(level, &format))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	mn_log_fields(level, msg, NULL, 0);
}
