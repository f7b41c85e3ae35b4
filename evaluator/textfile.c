/* textfile.c - see textfile.h. */
#include "textfile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "prom.h"
#include "util.h"

/* From a fast local evaluation (tens of ms) to a slow poll (eval.poll_interval_ms) and beyond. */
static const double latency_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

struct mne_textfile {
	struct mn_prom *prom;
	char path[MN_CONFIG_PATH_MAX];
	char run[MN_CONFIG_NAME_MAX];
	double start_s;
	bool evaluated;    /* at least one result since the start */
	int64_t step;      /* of the latest evaluation */
	double accuracy;   /* its validation accuracy */
	double loss;       /* its validation loss */
	double time_s;     /* when its result was ready */
	double best;       /* the best accuracy since the start */
	int64_t best_step; /* the step that reached it */
	uint64_t evaluations;
	uint64_t rejected;
	struct mn_prom_hist latency;
};

int mne_textfile_new(const char *path, const char *run, int64_t start_ns, struct mne_textfile **out,
                     char *err, size_t errlen)
{
	struct mne_textfile *t;

	*out = NULL;
	if (!path[0])
		return 0;
	t = calloc(1, sizeof(*t));
	if (!t || !(t->prom = mn_prom_new())) {
		free(t);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	snprintf(t->path, sizeof(t->path), "%s", path);
	snprintf(t->run, sizeof(t->run), "%s", run);
	t->start_s = (double)start_ns / 1e9;
	t->step = -1;
	t->best_step = -1;
	mn_prom_hist_init(&t->latency, latency_bounds,
	                  sizeof(latency_bounds) / sizeof(latency_bounds[0]));
	/* A temporary file of a predecessor killed mid-write would stay for good. */
	mn_prom_remove_stale(t->path);
	*out = t;
	return 0;
}

void mne_textfile_result(struct mne_textfile *t, const struct mne_pick_result *r, double latency_s)
{
	if (!t)
		return;
	t->evaluated = true;
	t->step = r->step;
	t->accuracy = r->eval.accuracy;
	t->loss = r->eval.loss;
	t->time_s = (double)r->done_ns / 1e9;
	if (t->best_step < 0 || r->eval.accuracy > t->best) {
		t->best = r->eval.accuracy;
		t->best_step = r->step;
	}
	t->evaluations++;
	/* The clocks disagreed (the file's ctime is ahead): a histogram's sum never goes down. */
	mn_prom_hist_observe(&t->latency, latency_s < 0 ? 0 : latency_s);
}

void mne_textfile_rejected(struct mne_textfile *t, uint64_t total)
{
	if (t)
		t->rejected = total;
}

static void build(struct mne_textfile *t, bool running)
{
	struct mn_prom *p = t->prom;
	double unknown = NAN;

	mn_prom_reset(p);
	if (t->run[0])
		mn_prom_label(p, "run", t->run);
	mn_prom_gauge(
	    p, "mnist_eval_running",
	    "1 while the evaluator runs; 0 written as it exits cleanly (a crash leaves 1).",
	    running ? 1 : 0);
	mn_prom_gauge(p, "mnist_eval_process_start_time_seconds",
	              "Start time of the evaluator process since the Unix epoch in seconds.",
	              t->start_s);
	mn_prom_gauge(p, "mnist_eval_step",
	              "Global step of the latest evaluated checkpoint (-1 before the first).",
	              (double)t->step);
	mn_prom_gauge(p, "mnist_eval_validation_accuracy_ratio",
	              "Validation accuracy of the latest evaluation, in [0, 1] (NaN before one).",
	              t->evaluated ? t->accuracy : unknown);
	mn_prom_gauge(
	    p, "mnist_eval_validation_loss",
	    "Validation loss (mean cross-entropy) of the latest evaluation (NaN before one).",
	    t->evaluated ? t->loss : unknown);
	mn_prom_gauge(p, "mnist_eval_best_validation_accuracy_ratio",
	              "Best validation accuracy since the evaluator started (NaN before one).",
	              t->evaluated ? t->best : unknown);
	mn_prom_gauge(
	    p, "mnist_eval_best_step",
	    "Global step of the checkpoint with the best validation accuracy (-1 if none).",
	    (double)t->best_step);
	mn_prom_counter(p, "mnist_eval_evaluations_total", "Checkpoints evaluated by this process.",
	                (double)t->evaluations);
	mn_prom_counter(p, "mnist_eval_rejected_files_total",
	                "Checkpoint files rejected as invalid by this process.",
	                (double)t->rejected);
	mn_prom_histogram(p, "mnist_eval_latency_seconds",
	                  "Time from a checkpoint's publication (its rename) to its logged result.",
	                  &t->latency);
	mn_prom_gauge(p, "mnist_eval_last_evaluation_timestamp_seconds",
	              "When the latest evaluation's result was ready, since the Unix epoch in "
	              "seconds (NaN before one).",
	              t->evaluated ? t->time_s : unknown);
}

void mne_textfile_write(struct mne_textfile *t, bool running)
{
	if (!t)
		return;
	build(t, running);
	mn_prom_publish(t->prom, t->path, "eval.textfile");
}

void mne_textfile_free(struct mne_textfile *t)
{
	if (!t)
		return;
	mn_prom_free(t->prom);
	free(t);
}
