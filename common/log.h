/*
 * log.h - the process log: one line per event, text or JSON, to standard
 * output (journald) or a file that SIGHUP reopens (logrotate's create mode).
 *
 * Text:  2026-11-25T17:04:05.123Z info evaluated step=3000 accuracy=0.8812
 * JSON:  {"time":"2026-11-25T17:04:05.123Z","level":"info","msg":"evaluated",
 *         "step":3000,"accuracy":0.8812}
 *
 * Every line goes out in a single write(2), so lines from several threads
 * never interleave. The log is process-wide; all functions are thread-safe.
 */
#ifndef MN_LOG_H
#define MN_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum mn_log_format { MN_LOG_TEXT, MN_LOG_JSON };
enum mn_log_level { MN_LOG_DEBUG, MN_LOG_INFO, MN_LOG_WARN, MN_LOG_ERROR };

/*
 * The names of the levels ("debug", "info", "warn", "error") and formats
 * ("text", "json"), indexed by the enums and NULL-terminated: the one table
 * the configuration's log.level and log.format are read against.
 */
extern const char *const mn_log_level_names[];
extern const char *const mn_log_format_names[];

enum mn_log_field_type { MN_LF_STR, MN_LF_INT, MN_LF_DBL, MN_LF_BOOL };

/* A structured field. Use the MN_F_* constructors. */
struct mn_log_field {
	const char *key;
	enum mn_log_field_type type;
	int precision; /* digits after the point for MN_LF_DBL; -1: shortest exact form */
	union {
		const char *s;
		int64_t i;
		double d;
		bool b;
	} v;
};

#define MN_F_STR(k, x) ((struct mn_log_field){.key = (k), .type = MN_LF_STR, .v.s = (x)})
#define MN_F_INT(k, x) ((struct mn_log_field){.key = (k), .type = MN_LF_INT, .v.i = (x)})
#define MN_F_DBL(k, x, p)                                                                          \
	((struct mn_log_field){.key = (k), .type = MN_LF_DBL, .precision = (p), .v.d = (x)})
#define MN_F_BOOL(k, x) ((struct mn_log_field){.key = (k), .type = MN_LF_BOOL, .v.b = (x)})

/*
 * Opens the log. path NULL or "" writes to standard output. Until this is
 * called, lines go to standard error at level info in text form.
 */
int mn_log_open(const char *path, enum mn_log_format format, enum mn_log_level level, char *err,
                size_t errlen);

/* Reopens the log file (after logrotate moved it). No-op for standard output. */
int mn_log_reopen(char *err, size_t errlen);

/* Closes the log file; later lines go to standard error. */
void mn_log_close(void);

void mn_log_set_level(enum mn_log_level level);
enum mn_log_level mn_log_get_level(void);

/*
 * Tags every later line of this process with the integer field key=value,
 * after the line's own fields (a line that has a field of that name keeps
 * its own): an MPI rank's number, so that the lines of several processes
 * sharing one log file say whose they are. key NULL removes the tag. key
 * must outlive the tag (a string literal).
 */
void mn_log_set_tag(const char *key, int64_t value);

/* mn_log_level_names[level], or "unknown" out of range. */
const char *mn_log_level_name(enum mn_log_level level);

/* A line with a message and structured fields (text: key=value, strings quoted when needed). */
void mn_log_fields(enum mn_log_level level, const char *msg, const struct mn_log_field *fields,
                   size_t nfields);

/* A line with a printf-formatted message and no fields. */
void mn_log(enum mn_log_level level, const char *fmt, ...) MN_PRINTF(2, 3);

#endif
