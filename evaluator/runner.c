/* runner.c - see runner.h. */
#include "runner.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct mne_runner {
	uv_loop_t *loop;
	uv_timer_t defer; /* starts the next job on the next loop turn */
	uv_work_t work;
	struct mne_runner_params params;
	bool busy;        /* a job (an evaluation or the keeping after it) is queued or running */
	bool pending;     /* kicked while busy */
	int64_t event_ns; /* the first kick since the last job started, wall clock (0: none) */
	int64_t hint;     /* the newest step kicks named since the last job started (-1: none) */
	bool list;        /* a kick since the last job started named no step */
	bool closing;
	bool timer_closed;
	/* Owned by the job while busy, by the loop thread otherwise. */
	struct mne_pick_params job;
	struct mne_pick_state state;
	struct mne_pick_result result;
	int rc;
	char err[MN_ERRLEN];
	char last_err[MN_ERRLEN]; /* a repeated scan error is logged once */
	uint64_t rejected;        /* state.rejected as last reported */
	bool warmed;       /* the first job has run (and warmed the state if it found nothing) */
	uint64_t retry_ms; /* after a resource error: the wait before the next look */
};

/*
 * A look that ended for want of memory, threads or descriptors is retried
 * without waiting for another event (the checkpoint it failed on may be the
 * run's last): after a second, then twice as long each time, at most a
 * minute.
 */
#define RETRY_FIRST_MS 1000
#define RETRY_MAX_MS   60000

static void kick(struct mne_runner *r);
static void start_job(uv_timer_t *h);

static void maybe_free(struct mne_runner *r)
{
	if (r->closing && r->timer_closed && !r->busy) {
		mne_pick_state_free(&r->state);
		free(r);
	}
}

static void keep_cb(uv_work_t *req)
{
	struct mne_runner *r = req->data;

	r->params.after_result(r->result.fd, r->result.path, &r->result, r->params.arg);
	mne_pick_result_close(&r->result);
}

/* The end of a job: the result settled (if there was one), and the next job if kicked. */
static void job_done(struct mne_runner *r, bool evaluated)
{
	if (evaluated && !r->closing && r->params.on_settled)
		r->params.on_settled(&r->result, r->params.arg);
	/* The callback may have closed us. */
	if (!r->closing && r->pending) {
		r->pending = false;
		kick(r);
	}
}

static void after_keep_cb(uv_work_t *req, int status)
{
	struct mne_runner *r = req->data;

	(void)status;
	r->busy = false;
	if (r->closing) {
		maybe_free(r);
		return;
	}
	job_done(r, true);
}

/* Keeps the file just reported in the thread pool; false if that cannot start. */
static bool start_keep(struct mne_runner *r)
{
	int rc;

	if (r->result.fd < 0 || !r->params.after_result || r->closing)
		return false;
	r->work.data = r;
	rc = uv_queue_work(r->loop, &r->work, keep_cb, after_keep_cb);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "cannot keep %s: %s", r->result.name, uv_strerror(rc));
		return false;
	}
	r->busy = true;
	return true;
}

static void work_cb(uv_work_t *req)
{
	struct mne_runner *r = req->data;

	r->err[0] = '\0';
	r->rc = mne_pick_evaluate(&r->job, &r->state, &r->result, r->err, sizeof(r->err));
	/* Nothing to evaluate at start: get ready for the first checkpoint meanwhile. */
	if (!r->warmed && r->rc == 0 && r->params.warm.input > 0)
		mne_pick_warm(&r->state, &r->job, &r->params.warm, r->params.warm_file_bytes);
	r->warmed = true;
}

static void after_work_cb(uv_work_t *req, int status)
{
	struct mne_runner *r = req->data;
	bool evaluated = status >= 0 && r->rc == 1;

	r->busy = false;
	if (r->closing) {
		mne_pick_result_close(&r->result);
		maybe_free(r);
		return;
	}
	/* Before the result: a job may reject newer files and then evaluate an older one. */
	if (r->state.rejected != r->rejected && r->params.on_rejected) {
		r->rejected = r->state.rejected;
		r->params.on_rejected(r->rejected, r->params.arg);
		if (r->closing) {
			mne_pick_result_close(&r->result);
			return;
		}
	}
	if (status < 0 || r->rc == -ECANCELED) {
		/* Not cancelled by us (we never uv_cancel): nothing to report. */
	} else if (r->rc == 1) {
		r->last_err[0] = '\0';
		r->params.on_result(&r->result, r->params.arg);
	} else if (r->rc == -ENOENT) {
		r->params.on_missing(r->params.arg);
	} else if (r->rc < 0) {
		if (strcmp(r->err, r->last_err) != 0)
			mn_log(MN_LOG_ERROR, "%s", r->err);
		memcpy(r->last_err, r->err, sizeof(r->last_err));
	}
	if (status >= 0 && mn_errno_is_resource(r->rc))
		r->retry_ms = r->retry_ms ? r->retry_ms * 2 : RETRY_FIRST_MS;
	else
		r->retry_ms = 0;
	if (r->retry_ms > RETRY_MAX_MS)
		r->retry_ms = RETRY_MAX_MS;
	/* The callbacks above may have closed us; then the keeping is skipped. */
	if (evaluated && start_keep(r))
		return;
	mne_pick_result_close(&r->result);
	job_done(r, evaluated);
	/* Unless a kick came meanwhile (a job is on its way), look again later. */
	if (!r->closing && r->retry_ms && !r->busy && !uv_is_active((uv_handle_t *)&r->defer)) {
		r->list = true;
		uv_timer_start(&r->defer, start_job, r->retry_ms, 0);
	}
}

static void start_job(uv_timer_t *h)
{
	struct mne_runner *r = h->data;
	int rc;

	if (r->closing || r->busy)
		return;
	r->job = r->params.pick;
	r->job.keep_open = r->params.after_result != NULL;
	r->job.event_ns = r->event_ns;
	r->job.hint_step = r->list ? -1 : r->hint;
	r->event_ns = 0;
	r->hint = -1;
	r->list = false;
	r->work.data = r;
	rc = uv_queue_work(r->loop, &r->work, work_cb, after_work_cb);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "cannot start an evaluation: %s", uv_strerror(rc));
		return;
	}
	r->busy = true;
}

void mne_runner_kick(struct mne_runner *r, int64_t step)
{
	if (!r || r->closing)
		return;
	if (step < 0)
		r->list = true;
	else if (step > r->hint)
		r->hint = step;
	kick(r);
}

/* Starts a job on the next loop turn, or after the running one. */
static void kick(struct mne_runner *r)
{
	if (!r->event_ns)
		r->event_ns = mn_realtime_ns();
	if (r->busy) {
		r->pending = true;
		return;
	}
	/*
	 * A timer of 0 ms fires after this turn's I/O callbacks: one job for a
	 * whole batch of events. Restarted, not left alone, when a retry's
	 * longer wait is armed: the event comes first.
	 */
	uv_timer_start(&r->defer, start_job, 0, 0);
}

void mne_runner_set_use_ema(struct mne_runner *r, bool use_ema)
{
	r->params.pick.use_ema = use_ema;
}

int mne_runner_new(uv_loop_t *loop, const struct mne_runner_params *p, struct mne_runner **out,
                   char *err, size_t errlen)
{
	struct mne_runner *r;
	int rc;

	*out = NULL;
	if (!p->pick.dir || !p->pick.prefix || !p->pick.data || !p->on_result || !p->on_missing) {
		mn_errf(err, errlen, "mne_runner_new: invalid parameters");
		return -EINVAL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r->loop = loop;
	r->hint = -1;
	r->params = *p;
	r->result.fd = -1;
	mne_pick_state_init(&r->state);
	rc = uv_timer_init(loop, &r->defer);
	if (rc < 0) {
		mn_errf(err, errlen, "uv_timer_init: %s", uv_strerror(rc));
		free(r);
		return rc;
	}
	r->defer.data = r;
	*out = r;
	return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct mne_runner *r = h->data;

	r->timer_closed = true;
	maybe_free(r);
}

void mne_runner_close(struct mne_runner *r)
{
	if (!r || r->closing)
		return;
	r->closing = true;
	uv_close((uv_handle_t *)&r->defer, on_timer_closed);
}
