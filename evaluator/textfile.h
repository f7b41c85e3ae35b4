/*
 * textfile.h - the evaluator's Prometheus textfile (eval.textfile).
 *
 * The evaluator keeps its counters here and rewrites the file atomically
 * (mn_prom_write) on the loop thread whenever they change: at start, after
 * each evaluation, when a bad checkpoint was rejected, and at a clean exit.
 * The families are listed in mnist-eval(8); every sample carries
 * run="<metrics.run>" when that key is set.
 *
 * A failing write is logged once, and again only when the error changes;
 * evaluating goes on.
 */
#ifndef MNE_TEXTFILE_H
#define MNE_TEXTFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pick.h"

struct mne_textfile;

/*
 * A textfile writer for path, whose samples carry run="<run>" unless run is
 * empty; start_ns is the process's start (wall clock). Nothing is written
 * yet; the temporary files a killed predecessor left are removed
 * (mn_prom_remove_stale). With path empty, sets *out to NULL and returns 0 (every other
 * function accepts NULL).
 */
int mne_textfile_new(const char *path, const char *run, int64_t start_ns, struct mne_textfile **out,
                     char *err, size_t errlen);

/*
 * Records an evaluation whose result was logged latency_s seconds after its
 * publication. A negative latency_s (the clocks disagreed) is recorded as 0.
 */
void mne_textfile_result(struct mne_textfile *t, const struct mne_pick_result *r, double latency_s);

/* Sets the number of checkpoint files rejected as invalid so far. */
void mne_textfile_rejected(struct mne_textfile *t, uint64_t total);

/*
 * Rewrites the file; with running false it says the evaluator has stopped
 * (mnist_eval_running 0), as it leaves it on a clean exit.
 */
void mne_textfile_write(struct mne_textfile *t, bool running);

/* Frees t (NULL is fine). The file stays. */
void mne_textfile_free(struct mne_textfile *t);

#endif
