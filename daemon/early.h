/*
 * early.h - early stopping on the evaluator's verdict (train.early_stopping).
 *
 * The trainer follows the evaluator's metrics file (follow.h: filesystem
 * events with polling as the fallback) on the loop thread, never on the
 * training thread. Each complete line that is a JSON object with an integer
 * "step" >= 0 and an "accuracy" in [0, 1] is an evaluation; a record its
 * writer never finished (mn_metrics_line_unfinished(), a disk that filled
 * up under the evaluator) is passed over as the other readers pass it over;
 * anything else is logged as garbage and ignored. An evaluation counts only if it is of this
 * run (its step is at most the trainer's current step: a longer old run's
 * history is not ours) and newer than the last one counted (a restarted
 * evaluator re-evaluates its newest checkpoint; a rotated or rewritten file
 * is read again from its start). A counted evaluation improves when its
 * accuracy exceeds the best so far by more than min_delta; after patience
 * counted evaluations in a row without improvement, on_stop is called, once.
 * A missing, truncated, rotated or garbage file never calls it.
 *
 * All functions and callbacks run on the loop thread.
 */
#ifndef MND_EARLY_H
#define MND_EARLY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

/* What the early stopper knows, for status and its final log line. */
struct mnd_early_status {
	bool have_best;       /* an evaluation has been counted */
	double best_accuracy; /* of best_step */
	int64_t best_step;
	int64_t since_best; /* counted evaluations since best_step */
	int64_t patience;
	int64_t evaluations; /* counted so far */
	bool stopped;        /* on_stop has been called */
};

struct mnd_early_params {
	const char *metrics_file; /* copied */
	int64_t patience;         /* >= 1 */
	double min_delta;         /* >= 0 */
	enum mn_watch_mode mode;  /* eval.watch */
	uint64_t poll_interval_ms;
	/* The trainer's global step now: evaluations of later steps are not this run's. */
	int64_t (*current_step)(void *arg);
	/* Patience ran out. */
	void (*on_stop)(const struct mnd_early_status *s, void *arg);
	void *arg;
};

/* The early stopper. Opaque. */
struct mnd_early;

/* Starts following the metrics file; a missing file is not an error. */
int mnd_early_start(uv_loop_t *loop, const struct mnd_early_params *p, struct mnd_early **out,
                    char *err, size_t errlen);

/*
 * The verdict the metrics file holds already, for a trainer about to train
 * from p->current_step(): reads its complete lines now and judges them as
 * the follower would (quietly: the follower logs them when it reads them
 * again), so that a run whose patience ran out is not trained on at a
 * restart. Fills *s; returns 1 if patience has run out, 0 if not (or there
 * is no file yet), or a negative errno with a message naming the file if it
 * cannot be read (something other than a regular file under the name is
 * refused, never waited on). Calls no callback but current_step.
 */
int mnd_early_verdict(const struct mnd_early_params *p, struct mnd_early_status *s, char *err,
                      size_t errlen);

/* Copies the current state. */
void mnd_early_get_status(const struct mnd_early *e, struct mnd_early_status *s);

/* Stops following; memory is freed once libuv has closed the handles. Accepts NULL. */
void mnd_early_close(struct mnd_early *e);

#endif
