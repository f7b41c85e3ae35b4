/* textfile.c - see textfile.h. */
#include "textfile.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"
#include "util.h"

struct mnd_textfile {
	uv_timer_t timer;
	struct mnd_worker *worker;
	struct mn_prom *prom;
	char path[MN_CONFIG_PATH_MAX];
	char run[MN_CONFIG_NAME_MAX];
	double start_s;
};

static double seconds(int64_t ns)
{
	return (double)ns / 1e9;
}

static void build(struct mnd_textfile *m, const struct mnd_worker_status *s, bool running)
{
	struct mn_prom *p = m->prom;

	mn_prom_reset(p);
	if (m->run[0])
		mn_prom_label(p, "run", m->run);
	mn_prom_gauge(p, "mnistd_running",
	              "1 while the trainer runs; 0 written as it exits cleanly (a crash leaves 1).",
	              running ? 1 : 0);
	mn_prom_gauge(p, "mnistd_process_start_time_seconds",
	              "Start time of the trainer process since the Unix epoch in seconds.",
	              m->start_s);
	mn_prom_gauge(p, "mnistd_global_step", "Global step: SGD updates done so far.",
	              (double)s->step);
	mn_prom_gauge(p, "mnistd_max_steps", "Step at which training stops (train.max_steps).",
	              (double)s->max_steps);
	mn_prom_gauge(p, "mnistd_loss",
	              "Training loss of the last step: mean cross-entropy (NaN before a step).",
	              s->loss);
	mn_prom_gauge(p, "mnistd_learning_rate", "Learning rate of the last step (NaN before one).",
	              s->learning_rate);
	mn_prom_gauge(p, "mnistd_steps_per_second", "Training speed over the last seconds.",
	              s->steps_per_sec);
	mn_prom_gauge(p, "mnistd_paused", "1 while training is paused (mnistctl pause), else 0.",
	              s->paused ? 1 : 0);
	mn_prom_counter(p, "mnistd_checkpoints_published_total",
	                "Checkpoints published by this process.", (double)s->ckpt_published);
	mn_prom_counter(p, "mnistd_checkpoint_failures_total",
	                "Checkpoint writes that failed in this process.", (double)s->ckpt_failed);
	mn_prom_gauge(p, "mnistd_checkpoint_consecutive_failures",
	              "Checkpoint writes that failed in a row (0: the last one succeeded).",
	              (double)s->ckpt_failing);
	mn_prom_histogram(p, "mnistd_checkpoint_write_duration_seconds",
	                  "Time to write, sync and publish one checkpoint.", &s->ckpt_write);
	mn_prom_gauge(p, "mnistd_last_checkpoint_step",
	              "Global step of the newest published checkpoint (-1 if none).",
	              (double)s->latest_step);
	mn_prom_gauge(p, "mnistd_last_checkpoint_timestamp_seconds",
	              "When the newest checkpoint was published, since the Unix epoch in seconds "
	              "(NaN if none).",
	              s->latest_ns > 0 ? seconds(s->latest_ns) : (double)NAN);
}

void mnd_textfile_write(struct mnd_textfile *m, bool running)
{
	struct mnd_worker_status s;

	if (!m)
		return;
	mnd_worker_get_status(m->worker, &s);
	build(m, &s, running);
	mn_prom_publish(m->prom, m->path, "metrics.textfile");
}

static void on_timer(uv_timer_t *h)
{
	mnd_textfile_write(h->data, true);
}

static void on_closed(uv_handle_t *h)
{
	struct mnd_textfile *m = h->data;

	mn_prom_free(m->prom);
	free(m);
}

int mnd_textfile_start(uv_loop_t *loop, struct mnd_worker *w, const struct mn_config *cfg,
                       int64_t start_ns, struct mnd_textfile **out, char *err, size_t errlen)
{
	struct mnd_textfile *m;
	uint64_t every = (uint64_t)cfg->metrics.interval_ms;
	int rc;

	*out = NULL;
	if (!cfg->metrics.textfile[0])
		return 0;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->prom = mn_prom_new())) {
		free(m);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->worker = w;
	m->start_s = seconds(start_ns);
	snprintf(m->path, sizeof(m->path), "%s", cfg->metrics.textfile);
	snprintf(m->run, sizeof(m->run), "%s", cfg->metrics.run);
	rc = uv_timer_init(loop, &m->timer);
	if (rc < 0) {
		mn_errf(err, errlen, "cannot init the rewrite timer: %s", uv_strerror(rc));
		mn_prom_free(m->prom);
		free(m);
		return rc;
	}
	m->timer.data = m;
	rc = uv_timer_start(&m->timer, on_timer, every, every);
	if (rc < 0) {
		mn_errf(err, errlen, "cannot start the rewrite timer: %s", uv_strerror(rc));
		/* The loop knows the timer now: m goes when it has closed it. */
		uv_close((uv_handle_t *)&m->timer, on_closed);
		return rc;
	}
	/* A temporary file of a predecessor killed mid-write would stay for good. */
	mn_prom_remove_stale(m->path);
	mnd_textfile_write(m, true);
	*out = m;
	return 0;
}

void mnd_textfile_close(struct mnd_textfile *m)
{
	if (!m)
		return;
	uv_close((uv_handle_t *)&m->timer, on_closed);
}
