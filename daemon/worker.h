/*
 * worker.h - the training thread and its mailbox.
 *
 * The loop thread owns the worker. Requests (stop, pause, save, new
 * hyper-parameters) go in under a mutex and take effect at the next step
 * boundary; results come back through a uv_async_t, so every callback given
 * here runs on the loop thread. Checkpoints are snapshots the training
 * thread copies between steps, so a checkpoint is always a state the run
 * really passed through; a writer thread (writer.h) publishes them while
 * training goes on, and a save is answered once its file is durable.
 */
#ifndef MND_WORKER_H
#define MND_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "ckpt.h"
#include "config.h"
#include "dist.h"
#include "prom.h"
#include "train.h"
#include "util.h"

/* A snapshot of the worker's progress, for status, logs and notify. */
struct mnd_worker_status {
	int64_t step;           /* global_step */
	int64_t max_steps;      /* current target */
	double learning_rate;   /* of the last step */
	double loss;            /* mean cross-entropy of the last step (NAN before one) */
	double loss_sum;        /* sum of every finite step loss since the worker started */
	int64_t loss_count;     /* steps since then: means over any span come from two reads */
	int64_t loss_nonfinite; /* of those, steps whose loss was NaN or infinite (not summed) */
	double steps_per_sec;   /* over the last few seconds */
	bool paused;            /* deliberately paused */
	bool finished;          /* the thread has exited */
	int64_t progress_ns;    /* monotonic time of the last step or pause check */
	char latest[MN_CKPT_MAX_NAME]; /* newest checkpoint published ("" if none) */
	int64_t latest_step;           /* its global step (-1 if none) */
	int64_t latest_ns;             /* when it was published, wall clock (0 if unknown) */
	/* For metrics.textfile: checkpoint writes by this process. */
	int64_t ckpt_published;     /* that succeeded */
	int64_t ckpt_failed;        /* that failed */
	int64_t ckpt_failing;       /* that failed in a row, up to now (0: the last succeeded) */
	char ckpt_error[MN_ERRLEN]; /* why the last one failed while ckpt_failing > 0 */
	struct mn_prom_hist ckpt_write; /* their durations, seconds */
};

/* What a request (save, pause, resume) came to; passed to its callback. */
struct mnd_worker_reply {
	int status;        /* 0, or -errno: -ESHUTDOWN when the thread exited before it */
	int64_t step;      /* global_step of the state the request was carried out on */
	bool paused;       /* whether training is paused from that step on */
	const char *name;  /* save: the checkpoint file published; "" otherwise */
	const char *error; /* why it failed when status < 0; "" otherwise */
};

/* Called on the loop thread once a request is carried out (or failed). */
typedef void (*mnd_worker_cb)(void *arg, const struct mnd_worker_reply *r);

/* Called on the loop thread once the training thread has exited; status 0 or -errno. */
typedef void (*mnd_worker_done_cb)(void *arg, int status);

struct mnd_worker;

/*
 * Starts the training thread on trainer t (whose ownership passes to the
 * worker) with configuration cfg. latest is the checkpoint the trainer was
 * restored from ("" or NULL if none). done is called when the thread exits.
 * stop: a stop asked for before the start (as mnd_worker_stop()), in place
 * before the thread's first step boundary, so that MPI ranks agree on it
 * there and not at whichever boundary a later call would reach.
 */
int mnd_worker_start(uv_loop_t *loop, struct mn_trainer *t, const struct mn_config *cfg,
                     size_t train_count, const char *latest, struct mnd_dist *dist, bool stop,
                     mnd_worker_done_cb done, void *arg, struct mnd_worker **out, char *err,
                     size_t errlen);

/* Asks the thread to finish its step, publish a checkpoint and exit. */
void mnd_worker_stop(struct mnd_worker *w);

/*
 * Pauses or resumes training at the next step boundary; cb (which may be
 * NULL) runs once the thread has reached it (for a pause, once every
 * checkpoint queued before it is durable too). The latest call decides, so a
 * pause followed by a resume before the boundary is answered, both of
 * them, at the boundary where training goes on. -ENOMEM if the request
 * cannot be queued, -ESHUTDOWN if the thread has exited.
 */
int mnd_worker_set_paused(struct mnd_worker *w, bool paused, mnd_worker_cb cb, void *arg);

/*
 * Asks for a checkpoint of the current step; cb runs once it is durable (or
 * failed), with the file's name and step. Works while paused. -ENOMEM if
 * the request cannot be queued, -ESHUTDOWN if the thread has exited.
 */
int mnd_worker_save(struct mnd_worker *w, mnd_worker_cb cb, void *arg);

/* Applies the reloadable keys of cfg at the next step boundary. */
void mnd_worker_reconfigure(struct mnd_worker *w, const struct mn_config *cfg);

/* Copies the current status. */
void mnd_worker_get_status(struct mnd_worker *w, struct mnd_worker_status *s);

/*
 * Closes the worker: a thread still running is asked to stop (it publishes
 * its checkpoint) and joined, which blocks, so call it after done; requests
 * not carried out get their callback with -ESHUTDOWN, here. The memory is
 * released once libuv has closed the async handle: run the loop after
 * this. NULL is allowed.
 */
void mnd_worker_close(struct mnd_worker *w);

#endif
