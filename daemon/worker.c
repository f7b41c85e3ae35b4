/* worker.c - see worker.h. */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dist.h"
#include "log.h"
#include "model.h"
#include "util.h"
#include "writer.h"

/* A request from the loop thread, answered at a step boundary. */
struct req {
	struct req *next;
	bool save; /* publish a checkpoint; otherwise a pause or resume */
	mnd_worker_cb cb;
	void *arg;
	int status;
	int64_t step;
	uint64_t seq; /* a save waiting for the write with this sequence number */
	bool paused;
	char name[MN_CKPT_MAX_NAME];
	char error[MN_ERRLEN];
};

struct mnd_worker {
	uv_async_t async;
	uv_thread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;

	/* Owned by the training thread once started. */
	struct mn_trainer *trainer;
	struct mn_config cfg;
	char *config_json;
	size_t train_count;
	int64_t rate_t0, rate_step0;
	struct mnd_writer *writer;
	int64_t submitted_seq, submitted_step; /* the newest snapshot handed to the writer */
	struct mnd_dist *dist;                 /* NULL when training alone */
	bool dist_paused;                      /* the ranks last agreed to pause */
	bool diverged; /* the ranks' parameters differ: nothing more is saved */

	/* Shared, under lock. */
	struct mn_config next_cfg;
	bool next_cfg_pending;
	bool stop_requested;
	bool pause_requested;
	struct req *pending, **pending_tail; /* for the training thread */
	struct req *done, **done_tail;       /* answered, for the loop thread */
	struct req *saving;                  /* saves waiting for their write (req.seq) */
	int64_t last_saved_step;             /* of the newest checkpoint published */
	/* The newest write the writer reported. */
	uint64_t written_seq;
	int written_status;
	int64_t written_step;
	char written_name[MN_CKPT_MAX_NAME];
	char written_error[MN_ERRLEN];
	bool finished;
	int finish_status;
	struct mnd_worker_status status;

	/* Loop thread only. */
	bool done_reported;
	mnd_worker_done_cb done_cb;
	void *done_arg;
};

static void hparams_from(const struct mnd_worker *w, struct mn_hparams *h)
{
	h->learning_rate = w->cfg.train.learning_rate;
	h->learning_rate_decay = w->cfg.train.learning_rate_decay;
	h->decay_steps = (double)mn_config_decay_steps(&w->cfg, w->train_count);
	h->l2 = w->cfg.train.l2;
	h->ema_decay = w->cfg.train.ema_decay;
}

/* Checkpoint writes seen from a scrape: a fast disk takes milliseconds, a slow one seconds. */
static const double write_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

/* Counts a checkpoint write for status and metrics. */
static void note_write(struct mnd_worker *w, const struct mnd_writer_result *r)
{
	pthread_mutex_lock(&w->lock);
	w->status.ckpt_failing = r->consecutive_failures;
	if (r->status < 0) {
		w->status.ckpt_failed++;
		snprintf(w->status.ckpt_error, sizeof(w->status.ckpt_error), "%s", r->error);
	} else {
		w->status.ckpt_published++;
		w->status.ckpt_error[0] = '\0';
		snprintf(w->status.latest, sizeof(w->status.latest), "%s", r->name);
		w->status.latest_step = r->step;
		w->status.latest_ns = mn_realtime_ns();
	}
	mn_prom_hist_observe(&w->status.ckpt_write, (double)r->write_ns / 1e9);
	pthread_mutex_unlock(&w->lock);
}

/*
 * Whether checkpoint.max_failures checkpoints failed in a row (failing, as
 * the step boundary's mail read it): a directory that cannot take
 * checkpoints any more makes training pointless, and stopping (non-zero)
 * brings an operator where a warning would not.
 */
static bool checkpoints_given_up(struct mnd_worker *w, int64_t failing)
{
	int64_t max = w->cfg.checkpoint.max_failures;

	if (max == 0 || failing < max)
		return false;
	mn_log_fields(MN_LOG_ERROR, "stopping: checkpoints keep failing (checkpoint.max_failures)",
	              (struct mn_log_field[]){MN_F_INT("step", mn_trainer_global_step(w->trainer)),
	                                      MN_F_INT("consecutive_failures", failing)},
	              2);
	return true;
}

/*
 * The ranks' comparison before any checkpoint (a collective: every rank
 * takes part). Returns 1 if this rank writes checkpoints, 0 if another
 * does, or -errno with the message in err if the ranks disagree (nothing
 * more is saved then).
 */
static int dist_precheck(struct mnd_worker *w, char *err, size_t errlen)
{
	struct mn_trainer_state s;
	int rc;

	if (!w->dist)
		return 1;
	mn_trainer_state(w->trainer, &s);
	rc = mnd_dist_check_state(w->dist, &s, err, errlen);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "not saving: %s", err);
		w->diverged = true;
		return rc;
	}
	return mnd_dist_rank(w->dist) == 0;
}

/*
 * Hands a snapshot of the current state to the writer. Returns 0 if this
 * very state is already durable (and its file still there), else the
 * sequence number of the write that will settle it (> 0), or -ENOMEM.
 */
static int64_t checkpoint_async(struct mnd_worker *w)
{
	int64_t step = mn_trainer_global_step(w->trainer), seq;
	struct mnd_writer_target where = {
	    .dir = w->cfg.checkpoint.dir,
	    .prefix = w->cfg.checkpoint.prefix,
	    .max_to_keep = (size_t)w->cfg.checkpoint.max_to_keep,
	    .config_json = w->config_json,
	    .world_size = mnd_dist_size(w->dist),
	    .wait = w->cfg.checkpoint.write_all,
	};
	bool durable, pending;
	char path[PATH_MAX];

	pthread_mutex_lock(&w->lock);
	where.newest_good = w->last_saved_step;
	durable = step == w->last_saved_step;
	snprintf(path, sizeof(path), "%s/%s", w->cfg.checkpoint.dir, w->status.latest);
	pending = step == w->submitted_step && (uint64_t)w->submitted_seq > w->written_seq;
	pthread_mutex_unlock(&w->lock);
	/* This exact state is already durable (unless someone removed it since). */
	if (durable && !pending && access(path, F_OK) == 0)
		return 0;
	if (pending)
		return w->submitted_seq;
	seq = mnd_writer_submit(w->writer, w->trainer, &where);
	if (seq < 0) {
		mn_log_fields(MN_LOG_ERROR, "checkpoint failed",
		              (struct mn_log_field[]){MN_F_INT("step", step),
		                                      MN_F_STR("error", "out of memory")},
		              2);
		return seq;
	}
	w->submitted_seq = seq;
	w->submitted_step = step;
	return seq;
}

/* A checkpoint nobody waits for (the periodic ones). */
static void checkpoint_periodic(struct mnd_worker *w)
{
	char err[MN_ERRLEN];

	if (dist_precheck(w, err, sizeof(err)) > 0)
		checkpoint_async(w);
}

/*
 * Publishes the current state and waits until it is durable (the final
 * checkpoint). Returns 0 or -errno with the message in err.
 */
static int save_and_wait(struct mnd_worker *w, char *name, size_t len, char *err, size_t errlen)
{
	int64_t seq;
	int rc = dist_precheck(w, err, errlen);

	snprintf(name, len, "%s", "");
	if (rc <= 0)
		return rc;
	seq = checkpoint_async(w);
	if (seq < 0) {
		mn_errf(err, errlen, "out of memory");
		return (int)seq;
	}
	mnd_writer_drain(w->writer);
	pthread_mutex_lock(&w->lock);
	rc = seq == 0 ? 0 : w->written_status;
	snprintf(name, len, "%s", seq == 0 ? w->status.latest : w->written_name);
	snprintf(err, errlen, "%s", seq == 0 ? "" : w->written_error);
	pthread_mutex_unlock(&w->lock);
	return rc;
}

/* Fills in r's reply and hands it to the loop thread. Called with the lock held. */
static void answer_locked(struct mnd_worker *w, struct req *r, int status, const char *name,
                          const char *error)
{
	r->next = NULL;
	r->status = status;
	r->step = w->status.step;
	r->paused = w->status.paused;
	snprintf(r->name, sizeof(r->name), "%s", r->save && status == 0 ? name : "");
	snprintf(r->error, sizeof(r->error), "%s", status == 0 ? "" : error);
	*w->done_tail = r;
	w->done_tail = &r->next;
}

/* Answers every request in list: saves with rc (and name or err), the others with 0. */
static void answer_all(struct mnd_worker *w, struct req *list, int rc, const char *name,
                       const char *err)
{
	if (!list)
		return;
	pthread_mutex_lock(&w->lock);
	while (list) {
		struct req *r = list;

		list = r->next;
		answer_locked(w, r, r->save ? rc : 0, name, err);
	}
	pthread_mutex_unlock(&w->lock);
	uv_async_send(&w->async);
}

static bool any_save(const struct req *list)
{
	for (; list; list = list->next)
		if (list->save)
			return true;
	return false;
}

/*
 * Answers a save settled by the newest write. Called with the lock held; the
 * reply carries the step that was written.
 */
static void answer_written_locked(struct mnd_worker *w, struct req *r)
{
	answer_locked(w, r, w->written_status, w->written_name, w->written_error);
	r->step = w->written_step;
}

/*
 * Carries out the requests taken at this step boundary: one snapshot serves
 * every save, and the saves are answered once the writer has made it durable.
 */
static void complete_requests(struct mnd_worker *w, struct req *list)
{
	char err[MN_ERRLEN] = "";
	int64_t seq = 0;
	int rc;

	if (!list)
		return;
	if (any_save(list)) {
		rc = dist_precheck(w, err, sizeof(err));
		if (rc < 0) {
			answer_all(w, list, rc, "", err);
			return;
		}
		if (rc > 0)
			seq = checkpoint_async(w);
	}
	pthread_mutex_lock(&w->lock);
	while (list) {
		struct req *r = list, **tail;

		list = r->next;
		if (!r->save || seq == 0) {
			answer_locked(w, r, 0, w->status.latest, "");
		} else if (seq < 0) {
			answer_locked(w, r, (int)seq, "", "out of memory");
		} else if ((uint64_t)seq <= w->written_seq) {
			answer_written_locked(w, r);
		} else {
			r->seq = (uint64_t)seq;
			r->next = NULL;
			for (tail = &w->saving; *tail; tail = &(*tail)->next)
				;
			*tail = r;
		}
	}
	pthread_mutex_unlock(&w->lock);
	uv_async_send(&w->async);
}

/* The writer's report (on its thread): settles the saves it covers. */
static void on_written(void *arg, const struct mnd_writer_result *res)
{
	struct mnd_worker *w = arg;
	struct req **pp;

	note_write(w, res);
	pthread_mutex_lock(&w->lock);
	w->written_seq = res->seq;
	w->written_status = res->status;
	w->written_step = res->step;
	snprintf(w->written_name, sizeof(w->written_name), "%s", res->name);
	snprintf(w->written_error, sizeof(w->written_error), "%s", res->error);
	if (res->status == 0)
		w->last_saved_step = res->step;
	for (pp = &w->saving; *pp;) {
		struct req *r = *pp;

		if (r->seq > res->seq) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		answer_written_locked(w, r);
	}
	pthread_mutex_unlock(&w->lock);
	uv_async_send(&w->async);
}

static void apply_config(struct mnd_worker *w, const struct mn_config *next)
{
	char *json;

	mn_config_apply_reloadable(&w->cfg, next);
	json = mn_config_to_json(&w->cfg);
	if (json) {
		free(w->config_json);
		w->config_json = json;
	}
	if (mnd_dist_rank(w->dist) == 0 || w->cfg.log.level > MN_LOG_WARN)
		mn_log_set_level(w->cfg.log.level);
}

/*
 * Makes this rank's trainer one shard of the job's and starts it from rank
 * 0's state and configuration, whether rank 0 restored them or drew them.
 */
static int dist_start(struct mnd_worker *w, char *err, size_t errlen)
{
	struct mn_trainer_state s;
	struct mn_config cfg = w->cfg;
	int rank = mnd_dist_rank(w->dist), size = mnd_dist_size(w->dist), rc;

	rc = mn_trainer_set_shard(w->trainer, (size_t)rank, (size_t)size, mnd_dist_allreduce,
	                          w->dist);
	if (rc < 0) {
		mn_errf(err, errlen,
		        "%d ranks cannot share a batch of %" PRId64 " (train.batch_size)", size,
		        w->cfg.train.batch_size);
		return rc;
	}
	mn_trainer_state(w->trainer, &s);
	rc = mnd_dist_bcast_state(w->dist, &s, err, errlen);
	if (rc == 0)
		rc = mnd_dist_bcast_config(w->dist, &cfg, err, errlen);
	if (rc == 0 && rank != 0)
		apply_config(w, &cfg);
	return rc;
}

static void update_rate(struct mnd_worker *w, int64_t now, int64_t step)
{
	int64_t dt = now - w->rate_t0;

	if (dt >= 1000000000) {
		w->status.steps_per_sec = (double)(step - w->rate_step0) * 1e9 / (double)dt;
		w->rate_t0 = now;
		w->rate_step0 = step;
	}
}

/* What the loop thread asked for, taken at a step boundary. */
struct mail {
	struct req *reqs;
	struct mn_config next;
	bool have_next, stop, paused;
	int64_t ckpt_failing; /* checkpoints failed in a row, read under the same lock */
};

/*
 * Takes the mail and publishes the pause state it sets. Returns false when
 * paused with nothing to do, after waiting for mail (at most a second, so
 * that progress_ns keeps the watchdog fed).
 */
static bool take_mail(struct mnd_worker *w, struct mail *m)
{
	int64_t now = mn_monotonic_ns();

	pthread_mutex_lock(&w->lock);
	m->have_next = w->next_cfg_pending;
	if (m->have_next)
		m->next = w->next_cfg;
	w->next_cfg_pending = false;
	m->stop = w->stop_requested;
	m->paused = w->pause_requested;
	m->ckpt_failing = w->status.ckpt_failing;
	m->reqs = w->pending;
	w->pending = NULL;
	w->pending_tail = &w->pending;
	if (m->paused != w->status.paused) {
		w->rate_t0 = now;
		w->rate_step0 = w->status.step;
		w->status.steps_per_sec = 0;
	}
	w->status.paused = m->paused;
	w->status.progress_ns = now;
	if (m->paused && !m->stop && !m->reqs && !m->have_next) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		pthread_cond_timedwait(&w->wake, &w->lock, &until);
		pthread_mutex_unlock(&w->lock);
		return false;
	}
	pthread_mutex_unlock(&w->lock);
	return true;
}

/*
 * The ranks agree on this boundary's mail: a stop any rank received, and
 * rank 0's pause, save and reload, which the others then follow. *save
 * tells a rank without save requests of its own to join the check.
 */
static int dist_agree(struct mnd_worker *w, struct mail *m, bool *save, char *err, size_t errlen)
{
	struct mnd_dist_cmd cmd = {m->stop, m->paused, any_save(m->reqs), m->have_next};
	int rc = mnd_dist_agree(w->dist, &cmd, w->dist_paused);

	if (rc < 0) {
		mn_errf(err, errlen, "the ranks cannot agree on the next step: %s", strerror(-rc));
		return rc;
	}
	m->stop = cmd.stop;
	m->paused = w->dist_paused = cmd.pause;
	*save = cmd.save;
	if (cmd.reload) {
		struct mn_config cfg = w->cfg;

		if (mnd_dist_rank(w->dist) == 0)
			mn_config_apply_reloadable(&cfg, &m->next);
		rc = mnd_dist_bcast_config(w->dist, &cfg, err, errlen);
		if (rc < 0)
			return rc;
		m->next = cfg;
		m->have_next = true;
	}
	return 0;
}

/* What the thread does after a step boundary's mail. */
enum boundary {
	TRAIN,    /* take a step */
	WAIT,     /* paused: look at the mail again */
	FINISHED, /* stop, *status says how it went */
	ABORT,    /* the ranks cannot agree: end the whole job (message in err) */
};

/*
 * Carries out a step boundary's mail: the ranks' agreement, a reload, a
 * pause, the requests, a stop (with the final checkpoint) and the end of
 * training at max_steps. Sets *status when it returns FINISHED or ABORT.
 */
static enum boundary at_boundary(struct mnd_worker *w, int *status, char *err, size_t errlen)
{
	char name[MN_CKPT_MAX_NAME];
	bool dist_save = false, gave_up = false;
	struct mail m;
	int64_t step;

	/*
	 * Paused with nothing to do, a rank still takes part in the agreement
	 * (at most a second apart): a stop another rank received would
	 * otherwise wait for a resume.
	 */
	if (!take_mail(w, &m) && !w->dist)
		return WAIT;
	if (!m.stop && checkpoints_given_up(w, m.ckpt_failing))
		m.stop = gave_up = true;
	if (w->dist) {
		*status = dist_agree(w, &m, &dist_save, err, errlen);
		if (*status < 0) {
			answer_all(w, m.reqs, *status, "", err);
			return ABORT;
		}
		/* Rank 0 answers its save requests; the others only join the check. */
		if (dist_save && !m.reqs)
			checkpoint_periodic(w);
	}
	if (m.have_next) {
		apply_config(w, &m.next);
		pthread_mutex_lock(&w->lock);
		w->status.max_steps = w->cfg.train.max_steps;
		pthread_mutex_unlock(&w->lock);
	}
	/* Paused means quiet: what was queued is on disk before a pause is answered. */
	if (m.paused)
		mnd_writer_drain(w->writer);
	complete_requests(w, m.reqs);
	if (w->diverged) {
		*status = -EPROTO;
		return FINISHED;
	}
	if (m.stop) {
		mn_log(MN_LOG_INFO, "stopping at step %" PRId64,
		       mn_trainer_global_step(w->trainer));
		*status = save_and_wait(w, name, sizeof(name), err, errlen);
		if (gave_up)
			*status = -EIO;
		return FINISHED;
	}
	/*
	 * A max_steps reached (a reload lowered it) ends the run paused or
	 * not: the documented "stops at once", not a pause that waits for a
	 * resume to finish.
	 */
	step = mn_trainer_global_step(w->trainer);
	if (step >= w->cfg.train.max_steps) {
		*status = save_and_wait(w, name, sizeof(name), err, errlen);
		if (*status == 0)
			mn_log_fields(
			    MN_LOG_INFO, "training finished",
			    (struct mn_log_field[]){MN_F_INT("step", step), MN_F_STR("file", name)},
			    2);
		return FINISHED;
	}
	if (m.paused)
		return WAIT;
	return TRAIN;
}

/*
 * One training step, its status and its periodic checkpoint. Returns 0, or
 * -errno when training must stop (logged).
 */
static int train_step(struct mnd_worker *w)
{
	int64_t step = mn_trainer_global_step(w->trainer), now;
	struct mn_hparams h;
	double loss, lr;
	int rc;

	hparams_from(w, &h);
	rc = mn_trainer_step(w->trainer, &h, &loss, &lr);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "training step %" PRId64 " failed: %s", step, strerror(-rc));
		return rc;
	}
	step++;
	if (mn_log_get_level() <= MN_LOG_DEBUG)
		mn_log_fields(MN_LOG_DEBUG, "step",
		              (struct mn_log_field[]){MN_F_INT("step", step),
		                                      MN_F_DBL("loss", loss, 8),
		                                      MN_F_DBL("learning_rate", lr, 8)},
		              3);
	/*
	 * TensorFlow's NanTensorHook: a NaN or an infinity spreads to every
	 * weight, so nothing after it is worth publishing. Stop without a
	 * checkpoint and fail, so that an operator looks.
	 */
	if (!isfinite(loss) && w->cfg.train.stop_on_nan) {
		mn_log_fields(
		    MN_LOG_ERROR, "non-finite loss, stopping (train.stop_on_nan)",
		    (struct mn_log_field[]){MN_F_INT("step", step),
		                            MN_F_STR("loss", isnan(loss) ? "nan" : "inf")},
		    2);
		return -ERANGE;
	}
	now = mn_monotonic_ns();
	pthread_mutex_lock(&w->lock);
	w->status.step = step;
	w->status.loss = loss;
	/* One NaN in a running sum would make every later mean NaN (stop_on_nan off). */
	if (isfinite(loss))
		w->status.loss_sum += loss;
	else
		w->status.loss_nonfinite++;
	w->status.loss_count++;
	w->status.learning_rate = lr;
	w->status.progress_ns = now;
	update_rate(w, now, step);
	pthread_mutex_unlock(&w->lock);

	if (step % w->cfg.checkpoint.every_steps == 0 && step < w->cfg.train.max_steps) {
		checkpoint_periodic(w);
		if (w->diverged)
			return -EPROTO;
	}
	return 0;
}

static void train_thread(void *arg)
{
	struct mnd_worker *w = arg;
	char err[MN_ERRLEN] = "";
	enum boundary b = TRAIN;
	int status = 0;

	if (w->dist && (status = dist_start(w, err, sizeof(err))) < 0)
		b = ABORT;
	w->rate_t0 = mn_monotonic_ns();
	w->rate_step0 = mn_trainer_global_step(w->trainer);
	while (b != ABORT) {
		b = at_boundary(w, &status, err, sizeof(err));
		if (b == WAIT)
			continue;
		if (b != TRAIN || (status = train_step(w)) < 0)
			break;
	}
	if (b == ABORT) {
		/* A collective this rank cannot finish would hang the others: end the job. */
		mn_log(MN_LOG_ERROR, "rank %d: %s; ending the job", mnd_dist_rank(w->dist), err);
		mnd_dist_abort(w->dist, 1);
	} else {
		/* Whatever the writer still holds is written before the thread says it is done. */
		mnd_writer_drain(w->writer);
		mnd_dist_log_summary(w->dist);
	}
	pthread_mutex_lock(&w->lock);
	w->finished = true;
	w->status.finished = true;
	w->finish_status = status;
	pthread_mutex_unlock(&w->lock);
	uv_async_send(&w->async);
}

/* Calls the callbacks of answered requests (the list is the caller's) and frees them. */
static void deliver(struct req *list)
{
	while (list) {
		struct req *r = list;
		struct mnd_worker_reply reply = {
		    .status = r->status,
		    .step = r->step,
		    .paused = r->paused,
		    .name = r->name,
		    .error = r->error,
		};

		list = r->next;
		if (r->cb)
			r->cb(r->arg, &reply);
		free(r);
	}
}

static void on_async(uv_async_t *handle)
{
	struct mnd_worker *w = handle->data;
	struct req *done;
	bool finished;
	int status;

	pthread_mutex_lock(&w->lock);
	finished = w->finished;
	status = w->finish_status;
	/* The thread takes no more requests: answer those it left. */
	while (finished && w->pending) {
		struct req *r = w->pending;

		w->pending = r->next;
		answer_locked(w, r, -ESHUTDOWN, "", "the daemon is shutting down");
	}
	/* The thread drained the writer before finishing, so this is only a safety net. */
	while (finished && w->saving) {
		struct req *r = w->saving;

		w->saving = r->next;
		answer_locked(w, r, -ESHUTDOWN, "", "the daemon is shutting down");
	}
	w->pending_tail = &w->pending;
	done = w->done;
	w->done = NULL;
	w->done_tail = &w->done;
	pthread_mutex_unlock(&w->lock);

	deliver(done);
	if (finished && !w->done_reported) {
		w->done_reported = true;
		if (w->done_cb)
			w->done_cb(w->done_arg, status);
	}
}

static void free_worker(struct mnd_worker *w)
{
	mnd_writer_free(w->writer);
	mn_trainer_free(w->trainer);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w->config_json);
	free(w);
}

static void on_async_closed(uv_handle_t *h)
{
	free_worker(h->data);
}

int mnd_worker_start(uv_loop_t *loop, struct mn_trainer *t, const struct mn_config *cfg,
                     size_t train_count, const char *latest, struct mnd_dist *dist, bool stop,
                     mnd_worker_done_cb done, void *arg, struct mnd_worker **out, char *err,
                     size_t errlen)
{
	struct mnd_worker *w = calloc(1, sizeof(*w));
	int rc;

	if (!w) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	w->cfg = *cfg;
	w->train_count = train_count;
	w->dist = dist;
	w->done_cb = done;
	w->done_arg = arg;
	w->pending_tail = &w->pending;
	w->done_tail = &w->done;
	w->status.step = mn_trainer_global_step(t);
	w->status.max_steps = cfg->train.max_steps;
	w->status.loss = NAN;
	w->status.learning_rate = NAN;
	w->status.progress_ns = mn_monotonic_ns();
	w->last_saved_step = -1;
	w->status.latest_step = -1;
	mn_prom_hist_init(&w->status.ckpt_write, write_bounds,
	                  sizeof(write_bounds) / sizeof(write_bounds[0]));
	w->submitted_step = -1;
	if (latest && *latest) {
		struct stat st;
		char path[PATH_MAX];

		snprintf(w->status.latest, sizeof(w->status.latest), "%s", latest);
		w->last_saved_step = w->status.step;
		w->status.latest_step = w->status.step;
		/* Resumed: the checkpoint was published when its file was last changed. */
		snprintf(path, sizeof(path), "%s/%s", cfg->checkpoint.dir, latest);
		if (stat(path, &st) == 0)
			w->status.latest_ns =
			    (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	}
	w->config_json = mn_config_to_json(cfg);
	if (!w->config_json) {
		free(w);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	rc = uv_async_init(loop, &w->async, on_async);
	if (rc < 0) {
		mn_errf(err, errlen, "uv_async_init: %s", uv_strerror(rc));
		free_worker(w);
		return rc;
	}
	w->async.data = w;
	/* Only the rank that writes checkpoints needs the writer and its snapshots. */
	if (mnd_dist_rank(dist) == 0) {
		rc = mnd_writer_start(t, on_written, w, &w->writer, err, errlen);
		if (rc < 0) {
			uv_close((uv_handle_t *)&w->async, on_async_closed);
			return rc;
		}
	}
	/* The trainer is the worker's only once the thread runs: on failure it stays the caller's.
	 */
	w->trainer = t;
	w->stop_requested = stop;
	rc = uv_thread_create(&w->thread, train_thread, w);
	if (rc < 0) {
		mn_errf(err, errlen, "cannot start the training thread: %s", uv_strerror(rc));
		w->trainer = NULL;
		uv_close((uv_handle_t *)&w->async, on_async_closed);
		return rc;
	}
	w->thread_started = true;
	*out = w;
	return 0;
}

void mnd_worker_stop(struct mnd_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stop_requested = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}

/*
 * Queues a request for the next step boundary, or (when cb is NULL and it
 * is not a save) only wakes the thread. The pause flag is set in the same
 * critical section, so the boundary that answers a request has seen it.
 */
static int queue_request(struct mnd_worker *w, bool save, bool paused, mnd_worker_cb cb, void *arg)
{
	struct req *r = NULL;

	if (cb || save) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return -ENOMEM;
		r->save = save;
		r->cb = cb;
		r->arg = arg;
	}
	pthread_mutex_lock(&w->lock);
	if (w->finished) {
		pthread_mutex_unlock(&w->lock);
		free(r);
		return -ESHUTDOWN;
	}
	if (!save)
		w->pause_requested = paused;
	if (r) {
		*w->pending_tail = r;
		w->pending_tail = &r->next;
	}
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

int mnd_worker_set_paused(struct mnd_worker *w, bool paused, mnd_worker_cb cb, void *arg)
{
	return queue_request(w, false, paused, cb, arg);
}

int mnd_worker_save(struct mnd_worker *w, mnd_worker_cb cb, void *arg)
{
	return queue_request(w, true, false, cb, arg);
}

void mnd_worker_reconfigure(struct mnd_worker *w, const struct mn_config *cfg)
{
	pthread_mutex_lock(&w->lock);
	w->next_cfg = *cfg;
	w->next_cfg_pending = true;
	/* max_steps is visible in status at once, so a reload reads back what it set. */
	w->status.max_steps = cfg->train.max_steps;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}

void mnd_worker_get_status(struct mnd_worker *w, struct mnd_worker_status *s)
{
	pthread_mutex_lock(&w->lock);
	*s = w->status;
	pthread_mutex_unlock(&w->lock);
}

void mnd_worker_close(struct mnd_worker *w)
{
	if (!w)
		return;
	if (w->thread_started) {
		mnd_worker_stop(w);
		uv_thread_join(&w->thread);
		w->thread_started = false;
	}
	/* Deliver what the thread finished but the async has not yet reported. */
	on_async(&w->async);
	uv_close((uv_handle_t *)&w->async, on_async_closed);
}
