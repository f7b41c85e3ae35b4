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

/* A request from the loop thread, answered at a step boundary. */
struct req {
	struct req *next;
	bool save; /* publish a checkpoint; otherwise a pause or resume */
	mnd_worker_cb cb;
	void *arg;
	int status;
	int64_t step;
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
	int64_t last_saved_step;
	int64_t rate_t0, rate_step0;
	struct mnd_dist *dist; /* NULL when training alone */
	bool dist_paused;      /* the ranks last agreed to pause */
	bool diverged;         /* the ranks' parameters differ: nothing more is saved */

	/* Shared, under lock. */
	struct mn_config next_cfg;
	bool next_cfg_pending;
	bool stop_requested;
	bool pause_requested;
	struct req *pending, **pending_tail; /* for the training thread */
	struct req *done, **done_tail;       /* answered, for the loop thread */
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

/* Counts a checkpoint write (rc 0: name was published at step) for status and metrics. */
static void note_write(struct mnd_worker *w, int rc, int64_t step, const char *name,
                       int64_t took_ns)
{
	pthread_mutex_lock(&w->lock);
	if (rc < 0) {
		w->status.ckpt_failed++;
	} else {
		w->status.ckpt_published++;
		snprintf(w->status.latest, sizeof(w->status.latest), "%s", name);
		w->status.latest_step = step;
		w->status.latest_ns = mn_realtime_ns();
	}
	mn_prom_hist_observe(&w->status.ckpt_write, (double)took_ns / 1e9);
	pthread_mutex_unlock(&w->lock);
}

/* Publishes the current state; returns 0 or -errno with the message in err. */
static int save_now(struct mnd_worker *w, char *name, size_t len, char *err, size_t errlen)
{
	int64_t step = mn_trainer_global_step(w->trainer);
	int rc;

	if (w->dist) {
		/* Every rank takes part in the comparison; only rank 0 writes. */
		struct mn_trainer_state s;

		mn_trainer_state(w->trainer, &s);
		rc = mnd_dist_check_state(w->dist, &s, err, errlen);
		if (rc < 0) {
			mn_log(MN_LOG_ERROR, "not saving: %s", err);
			w->diverged = true;
			return rc;
		}
		if (mnd_dist_rank(w->dist) != 0)
			return 0;
	}
	if (step == w->last_saved_step) {
		char path[PATH_MAX];

		/* This exact state is already durable (unless someone removed it since). */
		pthread_mutex_lock(&w->lock);
		snprintf(name, len, "%s", w->status.latest);
		pthread_mutex_unlock(&w->lock);
		snprintf(path, sizeof(path), "%s/%s", w->cfg.checkpoint.dir, name);
		if (access(path, F_OK) == 0)
			return 0;
	}
	int64_t t0 = mn_monotonic_ns();

	rc = mn_model_save(w->trainer, w->cfg.checkpoint.dir, w->cfg.checkpoint.prefix,
	                   (size_t)w->cfg.checkpoint.max_to_keep, w->config_json,
	                   mnd_dist_size(w->dist), name, len, err, errlen);
	note_write(w, rc, step, name, mn_monotonic_ns() - t0);
	if (rc < 0) {
		mn_log_fields(
		    MN_LOG_ERROR, "checkpoint failed",
		    (struct mn_log_field[]){MN_F_INT("step", step), MN_F_STR("error", err)}, 2);
		return rc;
	}
	w->last_saved_step = step;
	mn_log_fields(MN_LOG_INFO, "checkpoint published",
	              (struct mn_log_field[]){
	                  MN_F_INT("step", step),
	                  MN_F_STR("file", name),
	                  MN_F_DBL("write_ms", (double)(mn_monotonic_ns() - t0) / 1e6, 1),
	              },
	              3);
	return 0;
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

/* Carries out the requests taken at this step boundary: one checkpoint serves every save. */
static void complete_requests(struct mnd_worker *w, struct req *list)
{
	char name[MN_CKPT_MAX_NAME] = "", err[MN_ERRLEN] = "";
	int rc = 0;

	if (any_save(list))
		rc = save_now(w, name, sizeof(name), err, sizeof(err));
	answer_all(w, list, rc, name, err);
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

static void train_thread(void *arg)
{
	struct mnd_worker *w = arg;
	char name[MN_CKPT_MAX_NAME], err[MN_ERRLEN];
	int status = 0;

	if (w->dist) {
		status = dist_start(w, err, sizeof(err));
		if (status < 0)
			goto dist_failed;
	}
	w->rate_t0 = mn_monotonic_ns();
	w->rate_step0 = mn_trainer_global_step(w->trainer);
	for (;;) {
		struct mail m;
		bool dist_save = false;

		if (!take_mail(w, &m))
			continue;
		if (w->dist) {
			status = dist_agree(w, &m, &dist_save, err, sizeof(err));
			if (status < 0) {
				answer_all(w, m.reqs, status, "", err);
				goto dist_failed;
			}
			/* Rank 0 answers its save requests; the others only join the check. */
			if (dist_save && !m.reqs)
				save_now(w, name, sizeof(name), err, sizeof(err));
		}
		if (m.have_next) {
			apply_config(w, &m.next);
			pthread_mutex_lock(&w->lock);
			w->status.max_steps = w->cfg.train.max_steps;
			pthread_mutex_unlock(&w->lock);
		}
		complete_requests(w, m.reqs);
		if (w->diverged) {
			status = -EPROTO;
			break;
		}
		if (m.stop) {
			mn_log(MN_LOG_INFO, "stopping at step %" PRId64,
			       mn_trainer_global_step(w->trainer));
			status = save_now(w, name, sizeof(name), err, sizeof(err));
			break;
		}
		if (m.paused)
			continue;

		int64_t step = mn_trainer_global_step(w->trainer);

		if (step >= w->cfg.train.max_steps) {
			status = save_now(w, name, sizeof(name), err, sizeof(err));
			if (status == 0)
				mn_log_fields(MN_LOG_INFO, "training finished",
				              (struct mn_log_field[]){MN_F_INT("step", step),
				                                      MN_F_STR("file", name)},
				              2);
			break;
		}

		struct mn_hparams h;
		double loss, lr;

		hparams_from(w, &h);
		status = mn_trainer_step(w->trainer, &h, &loss, &lr);
		if (status < 0) {
			mn_log(MN_LOG_ERROR, "training step %" PRId64 " failed: %s", step,
			       strerror(-status));
			break;
		}
		step++;
		if (mn_log_get_level() <= MN_LOG_DEBUG)
			mn_log_fields(MN_LOG_DEBUG, "step",
			              (struct mn_log_field[]){MN_F_INT("step", step),
			                                      MN_F_DBL("loss", loss, 8),
			                                      MN_F_DBL("learning_rate", lr, 8)},
			              3);
		int64_t now = mn_monotonic_ns();

		pthread_mutex_lock(&w->lock);
		w->status.step = step;
		w->status.loss = loss;
		w->status.loss_sum += loss;
		w->status.loss_count++;
		w->status.learning_rate = lr;
		w->status.progress_ns = now;
		update_rate(w, now, step);
		pthread_mutex_unlock(&w->lock);

		if (step % w->cfg.checkpoint.every_steps == 0 && step < w->cfg.train.max_steps) {
			save_now(w, name, sizeof(name), err, sizeof(err));
			if (w->diverged) {
				status = -EPROTO;
				break;
			}
		}
	}
	mnd_dist_log_summary(w->dist);
	if (0) {
	dist_failed:
		/* A collective this rank cannot finish would hang the others: end the job. */
		mn_log(MN_LOG_ERROR, "rank %d: %s; ending the job", mnd_dist_rank(w->dist), err);
		mnd_dist_abort(w->dist, 1);
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
                     size_t train_count, const char *latest, struct mnd_dist *dist,
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
	/* The trainer is the worker's only once the thread runs: on failure it stays the caller's.
	 */
	w->trainer = t;
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
