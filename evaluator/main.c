/*
 * mnist-eval - the evaluator: watches checkpoint.dir, evaluates each newly
 * published checkpoint on the validation split the trainer leaves out, and
 * logs its accuracy (and appends it to eval.metrics_file).
 *
 * The loop thread only watches, schedules and reports; reading and
 * evaluating run in libuv's thread pool (runner.h), so SIGTERM is handled
 * at once and cancels a running evaluation between batches.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cJSON.h>

#include "app.h"
#include "ckpt.h"
#include "config.h"
#include "idx.h"
#include "json.h"
#include "jsonl.h"
#include "keep.h"
#include "log.h"
#include "model.h"
#include "mn_build_config.h"
#include "page.h"
#include "pick.h"
#include "runner.h"
#include "textfile.h"
#include "util.h"
#include "watch.h"

struct evaluator {
	struct mn_app app;
	struct mn_view validation;
	float *scaled; /* validation.scaled: the images as floats, made once */
	struct mne_watch *watch;
	struct mne_runner *runner;
	struct mne_keep *keep; /* eval.best_dir, NULL when not kept */
	atomic_bool cancel;
	bool stopping;
	struct mn_jsonl *metrics;      /* eval.metrics_file, NULL when unset */
	struct mne_textfile *textfile; /* eval.textfile, NULL when off */
	struct mne_page *page;         /* eval.report_html, NULL when unset */
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: mnist-eval [--config PATH] [--once] [--check-config]\n"
	           "\n"
	           "Evaluates each checkpoint published into checkpoint.dir on the validation\n"
	           "split (the first data.validation_size training images) as soon as it appears,\n"
	           "and logs one line per evaluation: step, accuracy, loss, ema, checkpoint,\n"
	           "latency_ms (from the file's publication to the result).\n"
	           "\n"
	           "  -c, --config PATH    configuration file (default " MN_DEFAULT_CONFIG ")\n"
	           "      --once           evaluate the latest valid checkpoint, print its line\n"
	           "                       on standard output and exit\n"
	           "      --check-config   validate the configuration and exit\n"
	           "  -h, --help           show this help\n"
	           "  -V, --version        show the version\n"
	           "\n"
	           "Signals: SIGTERM/SIGINT exit 0 at once (a running evaluation is abandoned);\n"
	           "SIGHUP reopens log.file and eval.metrics_file and reloads eval.use_ema and\n"
	           "log.level.\n"
	           "Exit status: 0 done, 1 runtime error or (--once) no valid checkpoint or\n"
	           "its metrics line not written, 2 usage error, 65 invalid data,\n"
	           "66 data not found, 78 configuration error (or started as several\n"
	           "MPI ranks).\n");
}

/* From wall-clock time a to b in milliseconds; ctime's coarse clock can put b first. */
static double span_ms(int64_t a, int64_t b)
{
	return b > a ? (double)(b - a) / 1e6 : 0;
}

/*
 * One JSON object per line, in one write(2) (jsonl.h). Returns false if the
 * line could not be written (it is logged, once while the file keeps
 * failing; the evaluator carries on).
 */
static bool write_metrics(struct evaluator *e, const struct mne_pick_result *r, double latency_ms)
{
	char when[MN_TIMELEN], err[MN_ERRLEN];
	cJSON *o;
	int rc = -ENOMEM;

	if (!e->metrics)
		return true;
	o = cJSON_CreateObject();
	mn_time_rfc3339_ns(r->done_ns, when);
	if (!o || !mn_json_add(o, "step", mn_json_int(r->step)) ||
	    !mn_json_add(o, "accuracy", mn_json_double(r->eval.accuracy, -1)) ||
	    !mn_json_add(o, "loss", mn_json_double(r->eval.loss, -1)) ||
	    !cJSON_AddStringToObject(o, "checkpoint", r->name) ||
	    !cJSON_AddBoolToObject(o, "ema", r->ema) || !cJSON_AddStringToObject(o, "time", when) ||
	    !mn_json_add(o, "latency_ms", mn_json_double(latency_ms, 3)) ||
	    !mn_json_add(o, "images", mn_json_uint(r->eval.images)) ||
	    !mn_json_add(o, "eval_ms", mn_json_double((double)r->eval_ns / 1e6, 3)) ||
	    !mn_json_add(o, "notify_ms",
	                 mn_json_double(span_ms(r->published_ns, r->event_ns), 3)) ||
	    !mn_json_add(o, "open_ms", mn_json_double(span_ms(r->event_ns, r->opened_ns), 3)) ||
	    !mn_json_add(o, "read_ms", mn_json_double((double)r->read_ns / 1e6, 3)))
		mn_log(MN_LOG_ERROR, "%s: out of memory for a metrics line",
		       e->app.cfg.eval.metrics_file);
	else
		rc = mn_jsonl_append(e->metrics, o, err, sizeof(err)); /* it logs a failure */
	cJSON_Delete(o);
	return rc == 0;
}

/* From the checkpoint's publication to its result, in milliseconds. */
static double latency_ms(const struct mne_pick_result *r)
{
	return span_ms(r->published_ns, r->done_ns);
}

/* Logs the result, as soon as it is ready. */
static void log_result(const struct mne_pick_result *r)
{
	if (!isfinite(r->eval.loss)) {
		/*
		 * Said as such ("nan", not a number that looks like one, nor null), and
		 * kept out of the metrics file, whose loss is a JSON number.
		 */
		mn_log_fields(MN_LOG_WARN, "evaluation with a non-finite loss",
		              (struct mn_log_field[]){
		                  MN_F_INT("step", r->step),
		                  MN_F_DBL("accuracy", r->eval.accuracy, 4),
		                  MN_F_STR("loss", isnan(r->eval.loss) ? "nan"
		                                   : r->eval.loss > 0  ? "inf"
		                                                       : "-inf"),
		                  MN_F_STR("checkpoint", r->name),
		                  MN_F_STR("metrics_file", "not written"),
		              },
		              5);
		return;
	}
	mn_log_fields(MN_LOG_INFO, "evaluation",
	              (struct mn_log_field[]){
	                  MN_F_INT("step", r->step),
	                  MN_F_DBL("accuracy", r->eval.accuracy, 4),
	                  MN_F_DBL("loss", r->eval.loss, 4),
	                  MN_F_STR("ema", r->ema ? "yes" : "no"),
	                  MN_F_STR("checkpoint", r->name),
	                  MN_F_DBL("latency_ms", latency_ms(r), 1),
	                  MN_F_INT("images", (int64_t)r->eval.images),
	              },
	              7);
}

/*
 * Records a result once everything it leads to is done (the best
 * checkpoints kept): a metrics line means best.json is up to date, for the
 * early stopper and for scripts. Appends it to the metrics file, has the
 * report page redrawn and the textfile rewritten; false if the append
 * failed. A non-finite loss is kept out of the metrics file, whose loss is
 * a JSON number.
 */
static bool record_result(struct evaluator *e, const struct mne_pick_result *r)
{
	bool ok = true;

	if (isfinite(r->eval.loss)) {
		ok = write_metrics(e, r, latency_ms(r));
		mne_page_kick(e->page);
	}
	mne_textfile_result(e->textfile, r, latency_ms(r) / 1e3);
	mne_textfile_write(e->textfile, true);
	return ok;
}

static void on_result(const struct mne_pick_result *r, void *arg)
{
	(void)arg;
	log_result(r);
}

static void on_settled(const struct mne_pick_result *r, void *arg)
{
	/* A metrics file that cannot be written (disk full) is logged; evaluating goes on. */
	record_result(arg, r);
}

static void on_rejected(uint64_t total, void *arg)
{
	struct evaluator *e = arg;

	mne_textfile_rejected(e->textfile, total);
	mne_textfile_write(e->textfile, true);
}

static void on_missing(void *arg)
{
	struct evaluator *e = arg;

	mne_watch_recheck(e->watch);
}

static void on_change(void *arg, int64_t step)
{
	struct evaluator *e = arg;

	mne_runner_kick(e->runner, step);
}

static void stop(struct evaluator *e)
{
	if (e->stopping)
		return;
	e->stopping = true;
	atomic_store(&e->cancel, true);
	mne_runner_close(e->runner);
	e->runner = NULL;
	mne_watch_close(e->watch);
	e->watch = NULL;
	mne_page_close(e->page);
	e->page = NULL;
	mn_app_signals_unref(&e->app);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
	struct evaluator *e = h->data;

	mn_log(MN_LOG_INFO, "received %s, stopping", strsignal(signum));
	stop(e);
}

/* Re-reads the configuration file and applies the keys the evaluator reloads. */
static void reload(struct evaluator *e)
{
	struct mn_app_reloaded r;
	struct mn_config next;
	char err[MN_ERRLEN];

	if (mn_app_reload_config(&e->app, &r, &next, err, sizeof(err)) < 0)
		return;
	mn_log_set_level(e->app.cfg.log.level);
	/* A SIGHUP held through the start comes before the runner, which then takes the value. */
	if (e->runner)
		mne_runner_set_use_ema(e->runner, e->app.cfg.eval.use_ema);
	mn_app_log_reloaded(&e->app, &r);
}

static void on_hup(uv_signal_t *h, int signum)
{
	struct evaluator *e = h->data;
	struct mn_app_reopen reopen = {0};
	char err[MN_ERRLEN];

	(void)signum;
	/* logrotate's postrotate sends SIGHUP: start fresh files. */
	mn_app_reopen_log_file(&e->app, &reopen);
	if (e->metrics)
		mn_app_reopen_note(&reopen, "eval.metrics_file",
		                   mn_jsonl_reopen(e->metrics, err, sizeof(err)), err);
	mn_app_reopen_log(&reopen);
	/* As mnistd says it: a reload now would report keys nothing applies any more. */
	if (e->stopping) {
		mn_log(MN_LOG_WARN,
		       "the evaluator is shutting down: the configuration is not reloaded");
		return;
	}
	reload(e);
}

/* Loads the training file once and keeps its validation split. Returns an exit status. */
static int load_data(struct evaluator *e)
{
	if (e->app.cfg.data.validation_size == 0) {
		mn_log(MN_LOG_ERROR, "data.validation_size is 0: there is nothing to evaluate on");
		return MN_EX_CONFIG;
	}
	int ex = mn_app_load_split(&e->app, "validation", NULL, &e->validation);

	/*
	 * Every evaluation reads every validation image: scaled to floats once
	 * (16 MB for 5000 images of 784 pixels), a batch is no longer converted
	 * on one thread while the others wait, at each evaluation.
	 */
	if (ex == MN_EX_OK && mn_view_scale(&e->validation, &e->scaled) == 0)
		e->validation.scaled = e->scaled;
	return ex;
}

/*
 * Runs in the thread pool after the result is out, one job at a time: that
 * thread alone touches e->keep once evaluating has begun.
 */
static void on_evaluated(int fd, const char *path, const struct mne_pick_result *res, void *arg)
{
	struct evaluator *e = arg;
	char err[MN_ERRLEN];

	if (mne_keep_offer(e->keep, fd, path, res, err, sizeof(err)) < 0)
		mn_log(MN_LOG_ERROR, "%s", err);
}

static struct mne_pick_params pick_params(struct evaluator *e)
{
	return (struct mne_pick_params){
	    .dir = e->app.cfg.checkpoint.dir,
	    .prefix = e->app.cfg.checkpoint.prefix,
	    .data = &e->validation,
	    .threads = (int)e->app.cfg.train.threads,
	    .use_ema = e->app.cfg.eval.use_ema,
	    .follow_symlinks = e->app.cfg.checkpoint.follow_symlinks,
	    .cancel = &e->cancel,
	};
}

/*
 * Opens eval.best_dir (a rebuild evaluates its files). A best_dir that
 * cannot be used is logged and evaluating goes on without keeping: the
 * evaluations matter more than the copies.
 */
static void open_keep(struct evaluator *e)
{
	struct mne_pick_params eval = pick_params(e);
	struct mne_keep_params kp = {
	    .dir = e->app.cfg.eval.best_dir,
	    .keep = (size_t)e->app.cfg.eval.keep_best,
	    .prefix = e->app.cfg.checkpoint.prefix,
	    .ckpt_dir = e->app.cfg.checkpoint.dir,
	    .eval = &eval,
	};
	char err[MN_ERRLEN];

	if (e->app.cfg.eval.keep_best == 0)
		return;
	if (mne_keep_open(&kp, &e->keep, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "eval.best_dir: %s; the best checkpoints are not kept", err);
		return;
	}
	mn_log_fields(MN_LOG_INFO, "keeping the best checkpoints",
	              (struct mn_log_field[]){MN_F_STR("dir", e->app.cfg.eval.best_dir),
	                                      MN_F_INT("keep_best", e->app.cfg.eval.keep_best),
	                                      MN_F_INT("kept", (int64_t)mne_keep_count(e->keep))},
	              3);
}

/* --once: evaluates the latest valid checkpoint. Returns an exit status. */
static int run_once(struct evaluator *e)
{
	struct mne_pick_params p = pick_params(e);
	struct mne_pick_state s;
	struct mne_pick_result r;
	char err[MN_ERRLEN];
	int rc;

	p.keep_open = e->keep != NULL;
	mne_pick_state_init(&s);
	rc = mne_pick_evaluate(&p, &s, &r, err, sizeof(err));
	mne_pick_state_free(&s);
	/* A command whose record could not be kept has failed, though the line was logged. */
	if (rc == 1) {
		log_result(&r);
		if (r.fd >= 0)
			on_evaluated(r.fd, r.path, &r, e);
		mne_pick_result_close(&r);
		rc = record_result(e, &r) ? MN_EX_OK : MN_EX_FAILURE;
		/* Only the page's gnuplot keeps the loop alive: until the page is written. */
		uv_run(&e->app.loop, UV_RUN_DEFAULT);
		return rc;
	}
	if (rc == 0)
		mn_log(MN_LOG_ERROR, "%s: no valid checkpoint named %s-<step>%s",
		       e->app.cfg.checkpoint.dir, e->app.cfg.checkpoint.prefix, MN_CKPT_SUFFIX);
	else
		mn_log(MN_LOG_ERROR, "%s", err);
	return MN_EX_FAILURE;
}

/* Starts watching and evaluating. Returns 0 or a negative errno (logged). */
static int run_watch(struct evaluator *e)
{
	struct mne_runner_params rp = {
	    .pick = pick_params(e),
	    .on_result = on_result,
	    .on_settled = on_settled,
	    .on_missing = on_missing,
	    .on_rejected = on_rejected,
	    .after_result = e->keep ? on_evaluated : NULL,
	    .arg = e,
	};
	struct mne_watch_params wp = {
	    .dir = e->app.cfg.checkpoint.dir,
	    .prefix = e->app.cfg.checkpoint.prefix,
	    .mode = e->app.cfg.eval.watch,
	    .poll_interval_ms = (uint64_t)e->app.cfg.eval.poll_interval_ms,
	    .on_change = on_change,
	    .arg = e,
	};
	char err[MN_ERRLEN];
	int rc;

	/*
	 * The trainer's shape, from the same configuration, and its checkpoint's
	 * size: weights and EMA shadows, the epoch's permutation of the training
	 * images, and room for the header and the rest of the training state.
	 */
	mn_config_arch(&e->app.cfg, e->validation.dim, MN_CLASSES, &rp.warm);
	rp.warm_file_bytes = 2 * mn_arch_param_count(&rp.warm) * sizeof(float) +
	                     mn_dataset_count(e->app.data) * sizeof(uint32_t) + ((size_t)64 << 10);
	if ((rc = mne_runner_new(&e->app.loop, &rp, &e->runner, err, sizeof(err))) < 0 ||
	    (rc = mne_watch_start(&e->app.loop, &wp, &e->watch, err, sizeof(err))) < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		stop(e);
		return rc;
	}
	mne_textfile_write(e->textfile, true);
	mn_log_fields(MN_LOG_INFO, "ready",
	              (struct mn_log_field[]){
	                  MN_F_STR("dir", e->app.cfg.checkpoint.dir),
	                  MN_F_INT("validation_images", (int64_t)e->validation.count),
	                  MN_F_STR("ema", e->app.cfg.eval.use_ema ? "yes" : "no"),
	              },
	              3);
	/* The page of what was evaluated before a restart, before the next evaluation. */
	mne_page_kick(e->page);
	return 0;
}

/*
 * Whether a stop arrived during the start (the data load, a rebuild of
 * eval.best_dir): its callback runs now, and then there is no point in
 * going on to watch.
 */
static bool stopped(struct evaluator *e)
{
	uv_run(&e->app.loop, UV_RUN_NOWAIT);
	return e->stopping;
}

/* Runs the evaluator until it is stopped; returns the exit status. */
static int run(struct evaluator *e, bool once)
{
	char err[MN_ERRLEN];
	int ex;

	/* Signals first: a SIGTERM during the data load is acted on once it is loaded. */
	if (mn_app_loop_start(&e->app, !once, on_stop_signal, on_hup, e) < 0)
		return MN_EX_FAILURE;
	if (mne_page_new(&e->app.loop, &e->app.cfg, &e->page, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		return MN_EX_CONFIG;
	}
	ex = load_data(e);
	if (ex != MN_EX_OK || stopped(e))
		return ex;
	open_keep(e);
	if (once)
		return run_once(e);
	if (stopped(e))
		return MN_EX_OK;
	if (run_watch(e) < 0)
		return MN_EX_FAILURE;
	uv_run(&e->app.loop, UV_RUN_DEFAULT);
	return MN_EX_OK;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'}, {"once", no_argument, NULL, 'o'},
	    {"check-config", no_argument, NULL, 'C'}, {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},      {0},
	};
	struct evaluator e = {.app = {.name = "mnist-eval",
	                              .config_path = MN_DEFAULT_CONFIG,
	                              .user = MN_CONFIG_EVALUATOR}};
	struct mn_app_start_params sp = {0};
	char err[MN_ERRLEN];
	int64_t start_ns;
	int c, ex, rank, size;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			e.app.config_path = optarg;
			break;
		case 'o':
			/*
			 * --once is a command: its line goes to the terminal, not to the
			 * service's log file, and shows whatever log.level says.
			 */
			sp.terminal = true;
			break;
		case 'C':
			sp.check_only = true;
			break;
		case 'h':
			usage(stdout);
			return MN_EX_OK;
		case 'V':
			printf("mnist-eval %s\n", MN_VERSION);
			return MN_EX_OK;
		default:
			usage(stderr);
			return MN_EX_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mnist-eval: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return MN_EX_USAGE;
	}
	/*
	 * N evaluators would each evaluate every checkpoint and write the same
	 * metrics, textfile and best_dir: one is the service, whatever launched it.
	 */
	rank = mn_launched_rank(&size);
	if (rank > 0 || size > 1) {
		char of[32] = "";

		if (size > 0)
			snprintf(of, sizeof(of), " of %d", size);
		fprintf(stderr,
		        "mnist-eval: started as rank %d%s by an MPI launcher; the evaluator is one "
		        "process: run it once, without mpirun or srun\n",
		        rank, of);
		return MN_EX_CONFIG;
	}
	atomic_init(&e.cancel, false);
	start_ns = mn_realtime_ns();
	if (!mn_app_start(&e.app, &sp, &ex))
		return ex;
	if (mn_jsonl_open(e.app.cfg.eval.metrics_file, &e.metrics, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "eval.metrics_file: %s", err);
		mn_app_end(&e.app);
		return MN_EX_CONFIG;
	}
	/* --once is a command, not the service the textfile describes. */
	if (!sp.terminal && mne_textfile_new(e.app.cfg.eval.textfile, e.app.cfg.metrics.run,
	                                     start_ns, &e.textfile, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "eval.textfile: %s", err);
		ex = MN_EX_FAILURE;
		goto out;
	}
	ex = run(&e, sp.terminal);
	if (e.app.loop_ready) {
		stop(&e);
		mn_app_loop_close(&e.app);
	}
	/* The file stays behind, saying that the evaluator has stopped. */
	mne_textfile_write(e.textfile, false);
	mne_textfile_free(e.textfile);
out:
	mn_jsonl_close(e.metrics);
	mne_keep_free(e.keep);
	free(e.scaled);
	mn_app_end(&e.app);
	return ex;
}
