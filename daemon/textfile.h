/*
 * textfile.h - the trainer's Prometheus textfile (metrics.textfile).
 *
 * A timer on the loop thread rewrites the file every metrics.interval_ms from
 * the worker's status snapshot, so the training thread never waits on it.
 * Each rewrite replaces the file atomically (mn_prom_write), so
 * node-exporter's textfile collector always reads a whole exposition. The
 * families are listed in mnistd(8); every sample carries run="<metrics.run>"
 * when that key is set.
 *
 * A write that fails (the directory is missing or read-only) is logged once,
 * and again only when the error changes; training is never affected, and the
 * next success is logged too.
 */
#ifndef MND_TEXTFILE_H
#define MND_TEXTFILE_H

#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "worker.h"

struct mnd_textfile;

/*
 * Removes the temporary files a killed predecessor left
 * (mn_prom_remove_stale), then writes the file at once and every
 * metrics.interval_ms, reading w's status. start_ns is the process's start (wall clock, ns since
 * the epoch). With metrics.textfile empty, sets *out to NULL and returns 0 (every other function
 * accepts NULL). cfg's metrics keys are copied. On failure returns a negative errno-style code with
 * err filled, and *out stays NULL; run the loop afterwards, as after mnd_textfile_close, to free
 * what was made.
 */
int mnd_textfile_start(uv_loop_t *loop, struct mnd_worker *w, const struct mn_config *cfg,
                       int64_t start_ns, struct mnd_textfile **out, char *err, size_t errlen);

/*
 * Writes the file now. With running false the file says the trainer has
 * stopped (mnistd_running 0), which is what it leaves behind on a clean exit.
 */
void mnd_textfile_write(struct mnd_textfile *m, bool running);

/*
 * Stops the timer and frees m once the loop has closed it (run the loop
 * afterwards). Does not touch the worker, which may already be freed.
 */
void mnd_textfile_close(struct mnd_textfile *m);

#endif
