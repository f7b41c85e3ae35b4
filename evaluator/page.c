/*
 * page.c - eval.report_html, rebuilt off the loop's critical path.
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
	bool again;
	/* What the running build draws; the page needs it when gnuplot is done. */
	struct mn_metrics_series train, eval;
};

static void free_series(struct mne_page *r)
{
	mn_metrics_series_free(&r->train);
	mn_metrics_series_free(&r->eval);
}

static struct mn_report_input input(struct mne_page *r)
{
	return (struct mn_report_input){
	    .train = &r->train,
	    .eval = &r->eval,
	    .train_path = r->cfg.train.metrics_file,
	    .eval_path = r->cfg.eval.metrics_file,
	    .config = &r->cfg,
	    .refresh_seconds = MNE_PAGE_REFRESH_S,
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
	free_series(r);
	if (r->again) {
		r->again = false;
		start(r);
	}
}

/* Reads the metrics and starts gnuplot; a failure is logged and leaves the old page. */
static void start(struct mne_page *r)
{
	struct mn_report_input in;
	char *script = NULL, err[MN_ERRLEN];
	size_t len;
	int rc;

	rc = mn_metrics_load(MN_METRICS_EVAL, r->cfg.eval.metrics_file, &r->eval, err, sizeof(err));
	if (rc < 0) {
		/* Nothing evaluated yet is no failure: the page appears with the first evaluation.
		 */
		mn_log(rc == -ENOENT || rc == -ENODATA ? MN_LOG_DEBUG : MN_LOG_ERROR,
		       "eval.report_html not updated: %s", err);
		return;
	}
	if (r->cfg.train.metrics_file[0]) {
		rc = mn_metrics_load(MN_METRICS_TRAIN, r->cfg.train.metrics_file, &r->train, err,
		                     sizeof(err));
		if (rc < 0)
			mn_log(rc == -ENOENT || rc == -ENODATA ? MN_LOG_DEBUG : MN_LOG_WARN,
			       "eval.report_html without the training curves: %s", err);
	}
	in = input(r);
	rc = mn_report_svg_script(&in, &script, &len, err, sizeof(err));
	if (rc == 0)
		rc = mn_gnuplot_start(r->loop, script, len, on_plotted, r, &r->running, err,
		                      sizeof(err));
	free(script);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "eval.report_html not updated: %s", err);
		free_series(r);
	}
}

void mne_page_kick(struct mne_page *r)
{
	if (!r)
		return;
	if (r->running)
		r->again = true;
	else
		start(r);
}

int mne_page_new(uv_loop_t *loop, const struct mn_config *cfg, struct mne_page **out, char *err,
                 size_t errlen)
{
	const char *path = cfg->eval.report_html, *slash = strrchr(path, '/');
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
	if (slash && !slash[1]) {
		mn_errf(err, errlen, "eval.report_html: \"%s\" does not name a file", path);
		return -EINVAL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		mn_errf(err, errlen, "eval.report_html: out of memory");
		return -ENOMEM;
	}
	r->loop = loop;
	r->cfg = *cfg;
	if (!slash)
		snprintf(r->dir, sizeof(r->dir), ".");
	else
		snprintf(r->dir, sizeof(r->dir), "%.*s", slash == path ? 1 : (int)(slash - path),
		         path);
	r->name = slash ? r->cfg.eval.report_html + (slash - path) + 1 : r->cfg.eval.report_html;
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
	free_series(r);
	free(r);
}
