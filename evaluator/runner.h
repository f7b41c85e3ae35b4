/*
 * runner.h - runs mne_pick_evaluate() off the loop thread, one job at a
 * time, coalescing notifications.
 *
 * Any number of mne_runner_kick() calls before a job starts make one job; a
 * kick while a job runs makes exactly one more job after it. A job's result
 * carries the time of the first kick that asked for it (event_ns). A result
 * goes to on_result at once, then to after_result (in the thread pool), then
 * to on_settled. So a burst of
 * publishes costs at most two looks and evaluates the newest file, and the
 * loop thread stays free for signals while the evaluation runs in libuv's
 * thread pool. A look that ends with a resource error (mn_errno_is_resource)
 * is followed by another without a kick: after 1 s, then twice as long each
 * time, at most 60 s.
 *
 * All functions run on the loop's thread; the callbacks are called there too.
 */
#ifndef MNE_RUNNER_H
#define MNE_RUNNER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "pick.h"

struct mne_runner_params {
	/* dir, prefix and data must outlive the runner; cancel too. */
	struct mne_pick_params pick;
	/* A checkpoint was evaluated: called as soon as the result is ready. */
	void (*on_result)(const struct mne_pick_result *res, void *arg);
	/* Optional: the same result once after_result is done (at once without it). */
	void (*on_settled)(const struct mne_pick_result *res, void *arg);
	/* A scan found no directory (it may have been removed). */
	void (*on_missing)(void *arg);
	/* Optional: more bad files were rejected; total counts them since the start. */
	void (*on_rejected)(uint64_t total, void *arg);
	/*
	 * Optional: called in the thread pool after on_result, with the file
	 * evaluated still open as fd (the evaluator keeps the best checkpoints
	 * there, keep.h), so that the result is out before the copy is made.
	 * The next job waits for it.
	 */
	void (*after_result)(int fd, const char *path, const struct mne_pick_result *res,
	                     void *arg);
	void *arg;
	/*
	 * Optional (input 0: none): the shape checkpoints are expected to have,
	 * and their size. If the first job finds nothing to evaluate, it warms
	 * the state for them (mne_pick_warm).
	 */
	struct mn_arch warm;
	size_t warm_file_bytes;
};

/* The runner. Opaque. */
struct mne_runner;

int mne_runner_new(uv_loop_t *loop, const struct mne_runner_params *p, struct mne_runner **out,
                   char *err, size_t errlen);

/*
 * The directory may have changed: look (soon, once) and evaluate what is
 * new. step is the step of the checkpoint an event named, or -1 if unknown
 * (a poll, the directory appearing): the job lists the directory only if
 * some kick since the last job started did not name a step (see
 * mne_pick_params.hint_step).
 */
void mne_runner_kick(struct mne_runner *r, int64_t step);

/* Takes effect from the next job on (eval.use_ema is reloadable). */
void mne_runner_set_use_ema(struct mne_runner *r, bool use_ema);

/*
 * Stops: no new jobs start and no more callbacks are made. A running job is
 * not waited for here; set the pick params' cancel flag to make it end at
 * the next batch. Memory is freed once the job and the handles are done, so
 * keep running the loop until it returns. Accepts NULL.
 */
void mne_runner_close(struct mne_runner *r);

#endif
