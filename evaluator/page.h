/*
 * page.h - eval.report_html: the evaluator keeps the curves page of the
 * run (common/report.h) current, rebuilding it after each evaluation from
 * eval.metrics_file and train.metrics_file.
 *
 * The builder keeps the lines of both files it has read and, at each
 * build, reads only what was appended since the build before
 * (mn_metrics_file_update(), metrics.h), on libuv's worker pool together
 * with writing gnuplot's script: a build after an evaluation costs the
 * same after weeks of history as after an hour, and the first read of a
 * long history does not hold up the loop. gnuplot then runs as a child
 * process on the loop (common/gnuplot.h), so the loop stays free for
 * signals and the next evaluation meanwhile; kicks while a build runs make
 * one more build after it. The page is replaced
 * atomically (a reader sees the old page or the new one) and reloads
 * itself in an open browser. Failures are logged; evaluating goes on.
 *
 * All functions run on the loop's thread.
 */
#ifndef MNE_PAGE_H
#define MNE_PAGE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

/* How often the page reloads itself in a browser, in seconds. */
#define MNE_PAGE_REFRESH_S 15

/* The page's builder. Opaque. */
struct mne_page;

/*
 * Checks cfg's eval.report_html (it needs eval.metrics_file, and its
 * directory must exist) and makes the builder; *out is NULL when
 * eval.report_html is "". cfg is copied. -EINVAL for a configuration error.
 */
int mne_page_new(uv_loop_t *loop, const struct mn_config *cfg, struct mne_page **out, char *err,
                 size_t errlen);

/* The metrics changed: rebuild the page (now, or after the build that runs). */
void mne_page_kick(struct mne_page *r);

/*
 * The bytes the last build read from the metrics files: what was appended
 * since the build before (all of a file at the first build, or after it
 * was replaced or truncated). For tests and logs; 0 for NULL.
 */
uint64_t mne_page_bytes_read(const struct mne_page *r);

/*
 * Stops a running gnuplot and frees the builder. Accepts NULL. Keep running
 * the loop: the killed gnuplot's handles close once it has been reaped, and
 * a read of the metrics that a worker has begun ends first (one not begun
 * is cancelled).
 */
void mne_page_close(struct mne_page *r);

#endif
