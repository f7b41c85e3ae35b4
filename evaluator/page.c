/*
 * page.c - eval.report_html, rebuilt off the loop's critical path: the
 * metrics are read and the script written on a libuv worker thread
 * (uv_queue_work), gnuplot runs as a child process, and only the page's
 * HTML is made on the loop.
 */
#include "page.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "gnuplot.h"
#include "log.h"
#include "metrics.h"
#include "report.h"
#include "util.h"

struct mne_page {
	uv_loop_t *loop;
	struct mn_config cfg;
	char dir[MN_CONFIG_PATH_MAX];
	const char *name; /* in cfg.eval.report_html */
	struct mn_gnuplot *running;
	uv_work_t work;
	bool working; /* the worker reads the metrics: they and job are its */
	bool closing; /* closed while working: freed when the work is done */
	bool again;
	/*
	 * The metrics files as read so far: a build reads only what was
	 * appended since the one before (metrics.h), so its cost follows the
	 * evaluation's new lines, not the run's length. They hold still while
	 * gnuplot runs, for the page it is drawing.
	 */
	struct mn_metrics_file train, eval;
	uint64_t bytes_read;                   /* by the last build */
	size_t chart_points[MN_REPORT_CHARTS]; /* counted by the worker's script, for the HTML */
	/* What the worker did, for the loop to log and act on. */
	struct {
		int eval_rc, train_rc, script_rc;
		uint64_t bytes_read;
		char eval_err[MN_ERRLEN], train_err[MN_ERRLEN], script_err[MN_ERRLEN];
		char *script;
		size_t len;
	} job;
};

static struct mn_report_input input(struct mne_page *r)
{
	return (struct mn_report_input){
	    .train = &r->train.series,
	    .eval = &r->eval.series,
	    .train_path = r->cfg.train.metrics_file,
	    .eval_path = r->cfg.eval.metrics_file,
	    .config = &r->cfg,
	    .refresh_seconds = MNE_PAGE_REFRESH_S,
	    .chart_points = r->chart_points,
	};
}

static void start(struct mne_page *r);

static void on_plotted(void *arg, int status, const char *svg, size_t len, const char *error)
{
	struct mne_page *r = arg;
	struct mn_report_input in = input(r);
	char *html = NULL, err[MN_ERRLEN];
	size_t hlen;
	struct iovec iov;

	r->running = NULL;
	if (status < 0) {
		mn_log(MN_LOG_ERROR, "eval.report_html: %s", error);
	} else if (mn_report_html(&in, svg, len, &html, &hlen, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "eval.report_html: %s", err);
	} else {
		iov = (struct iovec){.iov_base = html, .iov_len = hlen};
		/*
		 * On the loop, which must not wait for the disk (behind a checkpoint's
		 * writeback an fsync can take seconds): the page is redrawn at every
		 * evaluation, so it needs atomicity, not durability.
		 */
		if (mn_write_atomic_opts(
		        r->dir, r->name, &iov, 1,
		        &(struct mn_write_opts){.mode = 0640, .flags = MN_WRITE_NO_SYNC}, err,
		        sizeof(err)) < 0)
			mn_log(MN_LOG_ERROR, "eval.report_html: %s", err);
		else
			mn_log_fields(
			    MN_LOG_DEBUG, "report written",
			    (struct mn_log_field[]){MN_F_STR("file", r->cfg.eval.report_html)}, 1);
	}
	free(html);
	if (r->again) {
		r->again = false;
		start(r);
	}
}

/*
 * On a worker thread: reads what was appended to the metrics files and
 * writes the script, the part of a build whose cost grows with the run
 * (the first read of a long history takes a second).
 */
static void work_cb(uv_work_t *req)
{
	struct mne_page *r = req->data;
	struct mn_report_input in;

	r->job.script = NULL;
	r->job.train_rc = r->job.script_rc = 0;
	r->job.eval_rc = mn_metrics_file_update(&r->eval, r->cfg.eval.metrics_file, r->job.eval_err,
	                                        sizeof(r->job.eval_err));
	r->job.bytes_read = r->eval.last_read;
	if (r->job.eval_rc < 0)
		return;
	if (r->cfg.train.metrics_file[0]) {
		r->job.train_rc =
		    mn_metrics_file_update(&r->train, r->cfg.train.metrics_file, r->job.train_err,
		                           sizeof(r->job.train_err));
		r->job.bytes_read += r->train.last_read;
	}
	in = input(r);
	r->job.script_rc = mn_report_svg_script(&in, &r->job.script, &r->job.len, r->job.script_err,
	                                        sizeof(r->job.script_err));
}

static void free_page(struct mne_page *r)
{
	mn_metrics_file_free(&r->train);
	mn_metrics_file_free(&r->eval);
	free(r);
}

/* Back on the loop: logs what the worker found and starts gnuplot; a failure leaves the old page.
 */
static void after_work_cb(uv_work_t *req, int status)
{
	struct mne_page *r = req->data;
	char err[MN_ERRLEN];
	int rc;

	r->working = false;
	if (r->closing) {
		free(r->job.script);
		free_page(r);
		return;
	}
	r->bytes_read = r->job.bytes_read;
	rc = r->job.eval_rc;
	if (status < 0) {
		mn_log(MN_LOG_ERROR, "eval.report_html not updated: %s", uv_strerror(status));
	} else if (rc < 0) {
		/* Nothing evaluated yet is no failure: the page appears with the first evaluation.
		 */
		mn_log(rc == -ENOENT || rc == -ENODATA ? MN_LOG_DEBUG : MN_LOG_ERROR,
		       "eval.report_html not updated: %s", r->job.eval_err);
	} else {
		if (r->job.train_rc < 0)
			mn_log(
			    r->job.train_rc == -ENOENT || r->job.train_rc == -ENODATA ? MN_LOG_DEBUG
			                                                              : MN_LOG_WARN,
			    "eval.report_html without the training curves: %s", r->job.train_err);
		rc = r->job.script_rc;
		if (rc < 0)
			snprintf(err, sizeof(err), "%s", r->job.script_err);
		else
			rc = mn_gnuplot_start(r->loop, r->job.script, r->job.len, on_plotted, r,
			                      &r->running, err, sizeof(err));
		if (rc < 0)
			mn_log(MN_LOG_ERROR, "eval.report_html not updated: %s", err);
	}
	free(r->job.script);
	r->job.script = NULL;
	if (!r->running && r->again) {
		r->again = false;
		start(r);
	}
}

/* Starts a build: the worker reads the metrics; gnuplot follows. */
static void start(struct mne_page *r)
{
	int rc;

	r->work.data = r;
	rc = uv_queue_work(r->loop, &r->work, work_cb, after_work_cb);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "eval.report_html not updated: %s", uv_strerror(rc));
		return;
	}
	r->working = true;
}

void mne_page_kick(struct mne_page *r)
{
	if (!r || r->closing)
		return;
	if (r->running || r->working)
		r->again = true;
	else
		start(r);
}

int mne_page_new(uv_loop_t *loop, const struct mn_config *cfg, struct mne_page **out, char *err,
                 size_t errlen)
{
	const char *path = cfg->eval.report_html, *name;
	struct mne_page *r;
	struct stat st;
	int rc;

	*out = NULL;
	if (!path[0])
		return 0;
	if (!cfg->eval.metrics_file[0]) {
		mn_errf(err, errlen,
		        "eval.report_html needs eval.metrics_file, the evaluations it draws");
		return -EINVAL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		mn_errf(err, errlen, "eval.report_html: out of memory");
		return -ENOMEM;
	}
	r->loop = loop;
	r->cfg = *cfg;
	mn_metrics_file_init(&r->train, MN_METRICS_TRAIN);
	mn_metrics_file_init(&r->eval, MN_METRICS_EVAL);
	name = mn_split_path(path, r->dir, sizeof(r->dir), err, errlen);
	if (!name) {
		mn_errprefix(err, errlen, "eval.report_html");
		free(r);
		return -EINVAL;
	}
	r->name = r->cfg.eval.report_html + (name - path);
	/* The reason is stat's own: a second look at the path could see it changed. */
	rc = stat(r->dir, &st) < 0 ? -errno : 0;
	if (rc < 0 || !S_ISDIR(st.st_mode)) {
		mn_errf(err, errlen, "eval.report_html: %s: %s", r->dir,
		        rc < 0 ? strerror(-rc) : "not a directory");
		free(r);
		return -EINVAL;
	}
	/* A killed predecessor's temporary; the directory may be shared (a web root). */
	if (mn_remove_stale_temps_of(r->dir, r->name, err, errlen) < 0)
		mn_log(MN_LOG_WARN, "eval.report_html: %s", err);
	*out = r;
	return 0;
}

void mne_page_close(struct mne_page *r)
{
	if (!r)
		return;
	mn_gnuplot_cancel(r->running);
	r->running = NULL;
	if (r->working) {
		/* Not started yet: cancelled; started: the worker finishes first. Either way
		 * after_work_cb frees. */
		r->closing = true;
		uv_cancel((uv_req_t *)&r->work);
		return;
	}
	free_page(r);
}

uint64_t mne_page_bytes_read(const struct mne_page *r)
{
	return r ? r->bytes_read : 0;
}
