/*
 * history.h - the trainer's history, train.metrics_file: one JSON object
 * per progress interval, for curves (mnistctl plot) and other readers.
 *
 * Each line holds "step" (global_step), "loss" (the mean training loss of
 * the steps since the previous line; the first line after a start covers
 * the steps since the start), "learning_rate" (of the last step),
 * "steps_per_sec", "time" (RFC 3339 UTC) and "max_steps". Lines are
 * written on the loop thread from the worker's status (worker.h), never by
 * the training thread, one write(2) each (jsonl.h).
 *
 * A resumed run appends to the same file. It restarts from the last
 * checkpoint, which can be older than the last line written before a crash,
 * so steps can go backwards in the file. Readers keep TensorBoard's rule:
 * a line whose step is not greater than the step of the line before it
 * starts over at that step, discarding the earlier lines at that step or
 * later (so the last line for a step wins and the curve follows the run
 * that went on). mn_metrics_load() (metrics.h) does exactly that.
 */
#ifndef MND_HISTORY_H
#define MND_HISTORY_H

#include <stddef.h>

#include "worker.h"

/* A history file. Opaque. */
struct mnd_history;

/* Opens path for appending; "" gives *out NULL, which every function accepts. */
int mnd_history_open(const char *path, struct mnd_history **out, char *err, size_t errlen);

/*
 * Appends a line for the progress s shows, if a step ran since the last
 * line (a paused or finished trainer adds nothing). Returns 1 if a line
 * was written, 0 if there was nothing new, or -errno with err filled. A
 * failure is logged here already: a file that keeps failing (a full disk)
 * once, and the first line written again says how many were lost (jsonl.h).
 */
int mnd_history_record(struct mnd_history *h, const struct mnd_worker_status *s, char *err,
                       size_t errlen);

/* Opens the file again (SIGHUP, logrotate); on failure the old one stays in use. */
int mnd_history_reopen(struct mnd_history *h, char *err, size_t errlen);

/* Closes the file. Accepts NULL. */
void mnd_history_close(struct mnd_history *h);

#endif
