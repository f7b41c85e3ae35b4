/*
 * prom.h - Prometheus text exposition (format 0.0.4) for node-exporter's
 * textfile collector.
 *
 * Both services run without network access, so they expose metrics the way
 * sandboxed and batch jobs do: they rewrite a `.prom` file in a directory that
 * node-exporter's textfile collector reads. A struct mn_prom collects one
 * whole exposition in memory; mn_prom_write() then replaces the file
 * atomically (mn_write_atomic_opts), so the collector never reads half a
 * file.
 *
 * What the builder writes, per family:
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> gauge|counter|histogram
 *   <name>{<constant labels>} <value>
 * and, for a histogram, one <name>_bucket sample per upper bound with the
 * cumulative count (le="+Inf" last, equal to the count), then <name>_sum and
 * <name>_count. Label values are escaped (\\, \", \n); values are written as
 * the shortest decimal that reads back exactly, NaN and +Inf/-Inf as
 * Prometheus spells them.
 *
 * Errors are sticky: a bad metric or label name (not [a-zA-Z_:][a-zA-Z0-9_:]*,
 * labels without ':'), a label value or HELP text that is not UTF-8 (the
 * collector would reject the whole file), a counter whose name does not end
 * in "_total", a histogram with unsorted bounds, or an allocation failure is
 * remembered, the rest of the building is skipped, and mn_prom_write() or
 * mn_prom_text() reports the first one. So callers add every family without
 * checking each call.
 */
#ifndef MN_PROM_H
#define MN_PROM_H

#include <stddef.h>
#include <stdint.h>

/* Most bucket bounds a histogram has (besides +Inf). */
#define MN_PROM_MAX_BUCKETS 16

/*
 * A histogram's running state, a plain value type kept by whoever observes
 * (it is copied with a status snapshot). counts[i] is the number of
 * observations <= bounds[i] and > bounds[i - 1] (not cumulative); the rest
 * beyond the last bound are count minus their sum.
 */
struct mn_prom_hist {
	size_t nbounds;                       /* bounds in use, at most MN_PROM_MAX_BUCKETS */
	double bounds[MN_PROM_MAX_BUCKETS];   /* upper bounds, strictly increasing */
	uint64_t counts[MN_PROM_MAX_BUCKETS]; /* observations in each bucket */
	uint64_t count;                       /* all observations */
	double sum;                           /* their sum */
};

/*
 * Sets h to empty with the given upper bounds (at most MN_PROM_MAX_BUCKETS
 * are used; mn_prom_histogram() rejects bounds that are not increasing).
 */
void mn_prom_hist_init(struct mn_prom_hist *h, const double *bounds, size_t nbounds);

/* Counts one observation v (NaN is ignored). */
void mn_prom_hist_observe(struct mn_prom_hist *h, double v);

struct mn_prom;

/* A new, empty exposition. NULL on allocation failure. */
struct mn_prom *mn_prom_new(void);

/* Frees p. NULL is fine. */
void mn_prom_free(struct mn_prom *p);

/* Empties p (text, constant labels and error), keeping its memory for the next round. */
void mn_prom_reset(struct mn_prom *p);

/*
 * Adds a label that every sample added afterwards carries, for instance
 * run="nightly" so that two runs writing into one textfile directory give
 * different series. value may be any UTF-8 text; it is escaped. Text that
 * is not well-formed UTF-8 is a building error.
 */
void mn_prom_label(struct mn_prom *p, const char *name, const char *value);

/* Adds a gauge family with one sample. */
void mn_prom_gauge(struct mn_prom *p, const char *name, const char *help, double value);

/* Adds a counter family with one sample; name must end in "_total". */
void mn_prom_counter(struct mn_prom *p, const char *name, const char *help, double value);

/* Adds a histogram family: cumulative buckets, +Inf, _sum and _count. */
void mn_prom_histogram(struct mn_prom *p, const char *name, const char *help,
                       const struct mn_prom_hist *h);

/*
 * The exposition built so far (NUL-terminated, *len bytes without the NUL),
 * valid until p is changed. Returns 0, or the first building error (-EINVAL
 * or -ENOMEM) with its message in err.
 */
int mn_prom_text(const struct mn_prom *p, const char **text, size_t *len, char *err, size_t errlen);

/*
 * Replaces the file at path with the exposition, atomically (temporary
 * dot-file in the same directory, rename), mode 0644 whatever the umask and
 * the replaced file's mode, so that node-exporter, running as another user,
 * can read it. Without fsync, so it never waits for the disk: after a
 * crash the file may be an older version, or empty, until the next write.
 * Returns 0, a building error, or the write's -errno, with a message that
 * names the file.
 */
int mn_prom_write(const struct mn_prom *p, const char *path, char *err, size_t errlen);

/*
 * Removes the temporary files of path that a killed writer left behind
 * (mn_remove_stale_temps_of: its own name's only, of a process gone), so
 * that SIGKILL during a write does not leave one in node-exporter's
 * directory for good. For a program to call once, before it first writes
 * path. Returns the count removed or -errno (a missing directory is not
 * worth a message: the writes report it).
 */
int mn_prom_remove_stale(const char *path);

/*
 * Writes as mn_prom_write() does, for a program that rewrites the file
 * periodically, and logs the outcome: a failure at error level as
 * "<key>: <message>", once until the message changes, and the first success
 * after failures. p remembers the last failure (mn_prom_reset keeps it).
 * Returns what mn_prom_write returned.
 */
int mn_prom_publish(struct mn_prom *p, const char *path, const char *key);

#endif
