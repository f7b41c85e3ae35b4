/*
 * mnistd - the trainer daemon: loads the data, restores the newest valid
 * checkpoint, trains in a worker thread and serves signals (and the control
 * socket) on a libuv loop in the main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "app.h"
#include "best.h"
#include "ckpt.h"
#include "ckptdir.h"
#include "config.h"
#include "control.h"
#include "dist.h"
#include "early.h"
#include "history.h"
#include "idx.h"
#include "log.h"
#include "textfile.h"
#include "mlp.h"
#include "mn_build_config.h"
#include "model.h"
#include "notify.h"
#include "train.h"
#include "util.h"
#include "worker.h"

#define PROGRESS_INTERVAL_MS 5000
#define STATUS_INTERVAL_MS   2000
/* A control connection without a request for this long is closed. */
#define CONTROL_IDLE_MS (10 * 60 * 1000)

struct daemon {
	struct mn_app app;
	uv_timer_t progress;
	uv_timer_t notify_timer;
	uint64_t watchdog_usec;
	int64_t last_status_ns;
	bool notify_warned;
	bool ready; /* READY=1 sent: a reload may say RELOADING=1 and READY=1 again */
	bool stopping;
	struct mnd_control *control;
	struct mnd_worker *worker;
	struct mnd_dist *dist; /* NULL unless an MPI launcher started us */
	struct mnd_textfile *metrics;
	struct mnd_history *history; /* train.metrics_file (rank 0), NULL when unset */
	int64_t start_ns;            /* wall clock at start, for the metrics */
	struct mnd_early *early;     /* train.early_stopping, NULL when off */
	int64_t start_step;          /* the step training starts from, until the worker runs */
	int lock_fd; /* holds checkpoint.dir's writer lock; -1 before setup takes it */
	/* Every rank failed the same check with the same status: no rank waits for another. */
	bool failed_together;
	int ex; /* exit status */
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: mnistd [--config PATH] [--check-config]\n"
	           "\n"
	           "Trains a neural network on an IDX data set (Fashion-MNIST by default),\n"
	           "publishing a versioned checkpoint every checkpoint.every_steps steps and\n"
	           "resuming from the newest valid checkpoint at start.\n"
	           "\n"
	           "  -c, --config PATH    configuration file (default " MN_DEFAULT_CONFIG ")\n"
	           "      --check-config   validate the configuration and exit\n"
	           "  -h, --help           show this help\n"
	           "  -V, --version        show the version\n"
	           "\n"
	           "Signals: SIGTERM/SIGINT finish the step, publish a checkpoint and exit 0;\n"
	           "SIGHUP reloads the configuration file.\n"
	           "Exit status: 0 done, 1 runtime error, 2 usage error, 65 invalid data,\n"
	           "66 data not found, 78 configuration error.\n");
}

/* Tells systemd (if it listens) about the state; a failure is logged once and ignored. */
static void notify(struct daemon *d, const char *fmt, ...) MN_PRINTF(2, 3);

static void notify(struct daemon *d, const char *fmt, ...)
{
	char msg[1024], err[MN_ERRLEN];
	va_list ap;

	/*
	 * Rank 0 alone speaks for the job: every rank inherits NOTIFY_SOCKET
	 * from mpirun, and another rank's STOPPING=1 (it got the SIGTERM)
	 * would tell systemd the job stops before rank 0 knows it.
	 */
	if (mnd_dist_rank(d->dist) != 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (mn_notify(msg, err, sizeof(err)) < 0 && !d->notify_warned) {
		d->notify_warned = true;
		mn_log(MN_LOG_WARN, "cannot notify the service manager: %s", err);
	}
}

static void notify_status(struct daemon *d, const struct mnd_worker_status *s)
{
	char latest[3 * MN_CKPT_MAX_NAME], error[MN_ERRLEN];

	/*
	 * First, since `systemctl status` shows one line: training that cannot
	 * be kept. The error names paths: escaped, as a newline in one would
	 * start another field of the notification (READY=1, say).
	 */
	if (s->ckpt_failing > 0 && !d->stopping) {
		mn_escape(s->latest[0] ? s->latest : "none", latest, sizeof(latest));
		mn_escape(s->ckpt_error, error, sizeof(error));
		notify(d,
		       "STATUS=checkpoints failing: %" PRId64 " in a row (last good: %s): %s; "
		       "step %" PRId64 "/%" PRId64,
		       s->ckpt_failing, latest, error, s->step, s->max_steps);
	} else if (d->stopping)
		notify(d, "STATUS=stopping at step %" PRId64, s->step);
	else if (s->paused)
		notify(d, "STATUS=paused at step %" PRId64 "/%" PRId64, s->step, s->max_steps);
	else if (isnan(s->loss))
		notify(d, "STATUS=training from step %" PRId64 "/%" PRId64, s->step, s->max_steps);
	else
		notify(d,
		       "STATUS=step %" PRId64 "/%" PRId64 ", loss %.4f, learning rate %.6g, "
		       "%.1f steps/s",
		       s->step, s->max_steps, s->loss, s->learning_rate, s->steps_per_sec);
}

static void begin_stop(struct daemon *d)
{
	if (d->stopping)
		return;
	d->stopping = true;
	notify(d, "STOPPING=1");
	if (d->control)
		mnd_control_set_stopping(d->control);
}

/* A train.metrics_file line for the steps since the last one, if any ran. */
static void record_history(struct daemon *d, const struct mnd_worker_status *s)
{
	char err[MN_ERRLEN];

	/* A failure is logged by the history itself, once while the file keeps failing. */
	mnd_history_record(d->history, s, err, sizeof(err));
}

static void on_worker_done(void *arg, int status)
{
	struct daemon *d = arg;
	struct mnd_worker_status s;

	/* The last steps, so a run's history ends at its final step. */
	mnd_worker_get_status(d->worker, &s);
	record_history(d, &s);

	if (status < 0)
		d->ex = MN_EX_FAILURE;
	begin_stop(d);
	uv_stop(&d->app.loop);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
	struct daemon *d = h->data;

	begin_stop(d);
	if (!d->worker) {
		mn_log(MN_LOG_INFO, "received %s before training started", strsignal(signum));
		return;
	}
	mn_log(MN_LOG_INFO, "received %s, finishing the current step", strsignal(signum));
	mnd_worker_stop(d->worker);
}

/* Copies a list of key paths to the control answer's; the schema has fewer keys than either holds.
 */
static void to_proto(const char *const *keys, size_t n, struct mn_proto_keys *out)
{
	for (size_t i = 0; i < n; i++)
		mn_proto_keys_add(out, keys[i]);
}

/*
 * Re-reads the configuration file: the one reload, for SIGHUP and the
 * control socket. The file is validated in full first, so an invalid one
 * changes nothing; then the reloadable keys that changed go to the worker
 * (applied at its next step boundary) and the others are only reported:
 * in restart if mnistd uses them, in ignored if only other programs do
 * (the file is the evaluator's too).
 */
static int reload_config(void *arg, struct mn_proto_keys *applied, struct mn_proto_keys *restart,
                         struct mn_proto_keys *ignored, char *err, size_t errlen)
{
	struct daemon *d = arg;
	struct mn_config next;
	struct mn_app_reloaded r;
	bool ready = d->ready;
	int rc;

	/*
	 * The training thread takes no configuration once it has taken the
	 * stop: a reload now could only claim keys it never applies.
	 */
	if (d->stopping) {
		mn_errf(err, errlen,
		        "the daemon is shutting down: the configuration is not reloaded");
		mn_log(MN_LOG_WARN, "%s", err);
		return -ESHUTDOWN;
	}
	/*
	 * Rank 0 alone reloads and broadcasts what it applied at a step the
	 * ranks agree on; a rank applying a file of its own (a SIGHUP sent to
	 * it alone) would train with other values and drift from the others.
	 */
	if (mnd_dist_rank(d->dist) != 0) {
		mn_errf(err, errlen, "rank %d follows rank 0's configuration: not reloaded",
		        mnd_dist_rank(d->dist));
		mn_log(MN_LOG_WARN, "%s", err);
		return -EPERM;
	}
	/* Before the first READY=1, a reload's READY=1 would announce a start not yet made. */
	if (ready)
		notify(d, "RELOADING=1\nMONOTONIC_USEC=%" PRId64, mn_monotonic_ns() / 1000);
	rc = mn_app_reload_config(&d->app, &r, &next, err, errlen);
	if (rc < 0) {
		if (ready)
			notify(d, "READY=1");
		return rc;
	}
	if (r.n[MN_CONFIG_APPLY] > 0 && d->worker)
		mnd_worker_reconfigure(d->worker, &next);
	else if (r.n[MN_CONFIG_APPLY] > 0)
		/*
		 * Still in setup: the training thread will start from d->app.cfg,
		 * but the log level is set by whoever applies a reload, and that is
		 * this one.
		 */
		mn_log_set_level(d->app.cfg.log.level);
	to_proto(r.keys[MN_CONFIG_APPLY], r.n[MN_CONFIG_APPLY], applied);
	to_proto(r.keys[MN_CONFIG_RESTART], r.n[MN_CONFIG_RESTART], restart);
	to_proto(r.keys[MN_CONFIG_UNUSED], r.n[MN_CONFIG_UNUSED], ignored);
	mn_app_log_reloaded(&d->app, &r);
	if (ready)
		notify(d, "READY=1");
	return 0;
}

static void on_hup(uv_signal_t *h, int signum)
{
	struct daemon *d = h->data;
	struct mn_proto_keys applied = {0}, restart = {0}, ignored = {0};
	struct mn_app_reopen reopen = {0};
	char err[MN_ERRLEN];

	(void)signum;
	/* logrotate's postrotate sends SIGHUP too: start fresh files. */
	mn_app_reopen_log_file(&d->app, &reopen);
	if (d->history)
		mn_app_reopen_note(&reopen, "train.metrics_file",
		                   mnd_history_reopen(d->history, err, sizeof(err)), err);
	mn_app_reopen_log(&reopen);
	reload_config(d, &applied, &restart, &ignored, err, sizeof(err));
}

/*
 * STATUS= every few seconds and, when systemd asked for it, WATCHDOG=1 at
 * half its interval: but only while the training thread shows progress (or
 * is deliberately paused), so a hung trainer lets the watchdog fire.
 */
static void on_notify_timer(uv_timer_t *h)
{
	struct daemon *d = h->data;
	struct mnd_worker_status s;
	int64_t now = mn_monotonic_ns();

	if (!d->worker)
		return;
	mnd_worker_get_status(d->worker, &s);
	if (d->watchdog_usec && !s.finished &&
	    (s.paused || now - s.progress_ns < (int64_t)d->watchdog_usec * 1000))
		notify(d, "WATCHDOG=1");
	if (now - d->last_status_ns >= (int64_t)STATUS_INTERVAL_MS * 1000000) {
		d->last_status_ns = now;
		notify_status(d, &s);
	}
}

static void start_notify(struct daemon *d)
{
	struct mnd_worker_status s;
	uint64_t period = STATUS_INTERVAL_MS;

	mnd_worker_get_status(d->worker, &s);
	notify(d, "READY=1");
	d->ready = true;
	d->last_status_ns = mn_monotonic_ns();
	notify_status(d, &s);
	/* Only rank 0 gets here; under mpirun, systemd's main process is mpirun. */
	d->watchdog_usec = mn_notify_watchdog_usec(mnd_dist_launched());
	if (d->watchdog_usec && d->watchdog_usec / 2000 < period)
		period = d->watchdog_usec / 2000 ? d->watchdog_usec / 2000 : 1;
	uv_timer_init(&d->app.loop, &d->notify_timer);
	d->notify_timer.data = d;
	uv_timer_start(&d->notify_timer, on_notify_timer, period, period);
}

static int start_control(struct daemon *d)
{
	struct mnd_control_params p = {
	    .path = d->app.cfg.control.socket,
	    .reload = reload_config,
	    .arg = d,
	    .idle_timeout_ms = CONTROL_IDLE_MS,
	};
	char err[MN_ERRLEN];
	int rc = mnd_control_start(&d->app.loop, &p, &d->control, err, sizeof(err));

	if (rc < 0)
		mn_log(MN_LOG_ERROR, "%s", err);
	return rc;
}

static void on_progress(uv_timer_t *h)
{
	struct daemon *d = h->data;
	struct mnd_worker_status s;

	if (!d->worker)
		return;
	mnd_worker_get_status(d->worker, &s);
	record_history(d, &s);
	if (s.paused || isnan(s.loss))
		return;
	mn_log_fields(MN_LOG_INFO, "training",
	              (struct mn_log_field[]){
	                  MN_F_INT("step", s.step),
	                  MN_F_INT("max_steps", s.max_steps),
	                  MN_F_DBL("loss", s.loss, 4),
	                  MN_F_DBL("learning_rate", s.learning_rate, 6),
	                  MN_F_DBL("steps_per_sec", s.steps_per_sec, 1),
	              },
	              5);
}

/*
 * Whether c is a training checkpoint this trainer can continue from: an
 * exit status, MN_EX_OK to restore it, or -1 to skip it (logged with the
 * reason, as a truncated file is). Only what the configuration decides is
 * a configuration error: another architecture, or an epoch permutation of
 * another length (another training set), since training over such a file
 * would overwrite its history.
 */
static int usable(const struct mn_ckpt *c, const char *path, const struct mn_arch *want,
                  uint64_t nperm)
{
	struct mn_model_state st;
	char err[MN_ERRLEN], have_s[256], want_s[256];
	struct mn_arch have;
	int rc;

	rc = mn_model_arch(c, &have, err, sizeof(err));
	if (mn_errno_is_resource(rc)) {
		mn_log(MN_LOG_ERROR, "cannot read %s, not starting: %s", path, err);
		return MN_EX_FAILURE;
	}
	if (rc < 0) {
		mn_log(MN_LOG_WARN, "skipping invalid checkpoint: %s", err);
		return -1;
	}
	if (mn_model_is_frozen(c)) {
		mn_log(MN_LOG_WARN,
		       "skipping %s: a frozen model (mnistctl freeze) holds no training state",
		       path);
		return -1;
	}
	if (!mn_arch_equal(&have, want)) {
		mn_arch_format(&have, have_s, sizeof(have_s));
		mn_arch_format(want, want_s, sizeof(want_s));
		mn_log(MN_LOG_ERROR,
		       "%s has architecture %s but the configuration asks for %s; "
		       "use another checkpoint.dir or restore the model settings",
		       path, have_s, want_s);
		return MN_EX_CONFIG;
	}
	/* The state on its own terms first: a broken one is the file's fault, not the config's. */
	rc = mn_model_read_state(c, false, 0, &st, err, sizeof(err));
	if (mn_errno_is_resource(rc)) {
		mn_log(MN_LOG_ERROR, "cannot read %s, not starting: %s", path, err);
		return MN_EX_FAILURE;
	}
	if (rc < 0) {
		mn_log(MN_LOG_WARN, "skipping unusable checkpoint: %s", err);
		return -1;
	}
	mn_model_state_free(&st);
	if ((st.have & MN_MODEL_HAVE_PERMUTATION) && st.nperm != nperm) {
		mn_log(MN_LOG_ERROR,
		       "%s: its epoch permutation has %" PRIu64 " entries but the training set "
		       "has %" PRIu64 " images; did data.dir or data.validation_size change? Use "
		       "another checkpoint.dir or restore those settings",
		       path, st.nperm, nperm);
		return MN_EX_CONFIG;
	}
	return MN_EX_OK;
}

/*
 * Restores the newest checkpoint the trainer can continue from. Invalid and
 * unusable files are skipped with a warning that names them and why; a
 * configuration error (see usable()) ends the start. Returns an exit status.
 */
static int resume(struct daemon *d, struct mn_trainer *t, char *latest, size_t len)
{
	const struct mn_arch *want = mn_trainer_arch(t);
	struct mn_ckptdir_entry *list = NULL;
	struct mn_trainer_state ts;
	size_t n = 0;
	char err[MN_ERRLEN];
	int rc;

	latest[0] = '\0';
	mn_trainer_state(t, &ts);
	rc = mn_ckptdir_scan(d->app.cfg.checkpoint.dir, d->app.cfg.checkpoint.prefix, &list, &n,
	                     err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		return MN_EX_FAILURE;
	}
	for (size_t i = n; i-- > 0;) {
		char path[4096];
		struct mn_ckpt *c = NULL;
		int ex;

		snprintf(path, sizeof(path), "%s/%s", d->app.cfg.checkpoint.dir, list[i].name);
		rc =
		    mn_ckpt_read(path,
		                 MN_CKPT_REQUIRE_MNISTD |
		                     (d->app.cfg.checkpoint.follow_symlinks ? 0 : MN_CKPT_NOFOLLOW),
		                 &c, err, sizeof(err));
		/*
		 * Out of memory or descriptors says nothing of the file: resuming
		 * from an older one would throw away the steps after it.
		 */
		if (mn_errno_is_resource(rc)) {
			mn_log(MN_LOG_ERROR, "cannot read the newest checkpoint, not starting: %s",
			       err);
			free(list);
			return MN_EX_FAILURE;
		}
		if (rc < 0) {
			mn_log(MN_LOG_WARN, "skipping invalid checkpoint: %s", err);
			continue;
		}
		ex = usable(c, path, want, ts.nperm);
		if (ex == MN_EX_OK && (rc = mn_model_restore(t, c, err, sizeof(err))) < 0) {
			ex = mn_errno_is_resource(rc) ? MN_EX_FAILURE : -1;
			if (ex == MN_EX_FAILURE)
				mn_log(MN_LOG_ERROR,
				       "cannot restore the newest checkpoint, not starting: %s",
				       err);
			else
				mn_log(MN_LOG_WARN, "skipping unusable checkpoint: %s", err);
		}
		mn_ckpt_free(c);
		if (ex < 0)
			continue;
		if (ex != MN_EX_OK) {
			free(list);
			return ex;
		}
		snprintf(latest, len, "%s", list[i].name);
		mn_log_fields(MN_LOG_INFO, "resumed",
		              (struct mn_log_field[]){MN_F_STR("file", list[i].name),
		                                      MN_F_INT("step", mn_trainer_global_step(t))},
		              2);
		free(list);
		return MN_EX_OK;
	}
	free(list);
	return MN_EX_OK;
}

static bool holds_best_json(const char *dir)
{
	char path[PATH_MAX + sizeof(MN_BEST_FILE)];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, MN_BEST_FILE);
	return lstat(path, &st) == 0;
}

/* Loads the data, builds the trainer and restores it. Returns an exit status. */
static int setup(struct daemon *d, struct mn_trainer **out, char *latest, size_t len)
{
	const struct mn_config *cfg = &d->app.cfg;
	struct mn_trainer_params tp = {0};
	struct mn_view train, validation;
	char err[MN_ERRLEN];
	int ex, rc;

	mn_log_fields(MN_LOG_INFO, "loading data",
	              (struct mn_log_field[]){MN_F_STR("dir", cfg->data.dir)}, 1);
	ex = mn_app_load_split(&d->app, "training", &train, &validation);
	if (ex != MN_EX_OK)
		return ex;
	/* data.dir may differ between nodes; what it holds may not. */
	rc = d->dist ? mnd_dist_check_data(d->dist, &train, err, sizeof(err)) : 0;
	if (rc < 0) {
		/* Every rank has this answer (-EINVAL), and rank 0 speaks for the job. */
		if (rc != -EINVAL || mnd_dist_rank(d->dist) == 0)
			mn_log(MN_LOG_ERROR, "%s", err);
		d->failed_together = rc == -EINVAL;
		return rc == -EINVAL ? MN_EX_CONFIG : MN_EX_FAILURE;
	}
	mn_config_arch(cfg, train.dim, MN_CLASSES, &tp.arch);
	tp.batch_size = (size_t)cfg->train.batch_size;
	tp.seed = cfg->model.seed;
	tp.init_stddev = (float)cfg->model.init_stddev;
	tp.threads = (int)cfg->train.threads;
	if (mnd_dist_rank(d->dist) != 0) {
		/* Rank 0's state reaches this rank by broadcast; the directory is rank 0's. */
		rc = mn_trainer_new(&tp, &train, out, err, sizeof(err));
		if (rc < 0)
			mn_log(MN_LOG_ERROR, "%s", err);
		return rc == 0 ? MN_EX_OK : rc == -ENOMEM ? MN_EX_FAILURE : MN_EX_CONFIG;
	}
	rc = mn_mkdir_p(cfg->checkpoint.dir, 0755, err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "checkpoint.dir: %s", err);
		return MN_EX_FAILURE;
	}
	/*
	 * mnist-eval's eval.best_dir (a copied configuration): resuming would
	 * take its best file and retention would then delete the kept ones.
	 * Checked before the lock file, which would make the evaluator refuse
	 * the directory for good.
	 */
	if (holds_best_json(cfg->checkpoint.dir)) {
		mn_log(
		    MN_LOG_ERROR,
		    "checkpoint.dir: %s holds %s: it is mnist-eval's eval.best_dir, whose kept "
		    "checkpoints retention would delete; give the trainer a directory of its own "
		    "(checkpoint.init_from can start from a kept checkpoint)",
		    cfg->checkpoint.dir, MN_BEST_FILE);
		return MN_EX_CONFIG;
	}
	rc = mn_ckptdir_check_writable(cfg->checkpoint.dir, err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "checkpoint.dir: %s", err);
		return MN_EX_FAILURE;
	}
	/*
	 * One trainer per directory, whatever its socket: a second one would
	 * resume from the first's files, interleave its history and remove its
	 * temporaries. Taken before anything in the directory is touched.
	 */
	d->lock_fd = mn_ckptdir_lock(cfg->checkpoint.dir, err, sizeof(err));
	if (d->lock_fd < 0) {
		mn_log(MN_LOG_ERROR, "checkpoint.dir: %s", err);
		return MN_EX_FAILURE;
	}
	rc = mn_remove_stale_temps(cfg->checkpoint.dir, err, sizeof(err));
	if (rc > 0)
		mn_log(MN_LOG_INFO, "removed %d stale temporary file(s) from %s", rc,
		       cfg->checkpoint.dir);
	rc = mn_trainer_new(&tp, &train, out, err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		/* Too little memory now is no fault of the file: systemd may restart it. */
		return rc == -ENOMEM ? MN_EX_FAILURE : MN_EX_CONFIG;
	}
	ex = resume(d, *out, latest, len);
	if (ex != MN_EX_OK)
		return ex;
	if (!latest[0] && cfg->checkpoint.init_from_file[0]) {
		rc = mn_model_warm_start(*out, cfg, err, sizeof(err));
		if (rc < 0) {
			mn_log(MN_LOG_ERROR, "checkpoint.init_from: %s", err);
			return MN_EX_CONFIG;
		}
		mn_log_fields(
		    MN_LOG_INFO, "warm start",
		    (struct mn_log_field[]){
		        MN_F_STR("file", cfg->checkpoint.init_from_file),
		        MN_F_INT("tensors", (int64_t)(cfg->checkpoint.init_from_nmap
		                                          ? cfg->checkpoint.init_from_nmap
		                                          : 2 * mn_arch_layers(&tp.arch))),
		    },
		    2);
	}
	char arch_s[256];

	mn_arch_format(&tp.arch, arch_s, sizeof(arch_s));
	mn_log_fields(MN_LOG_INFO, "ready",
	              (struct mn_log_field[]){
	                  MN_F_STR("architecture", arch_s),
	                  MN_F_INT("train_images", (int64_t)train.count),
	                  MN_F_INT("validation_images", (int64_t)validation.count),
	                  MN_F_INT("step", mn_trainer_global_step(*out)),
	                  MN_F_INT("max_steps", cfg->train.max_steps),
	              },
	              5);
	return MN_EX_OK;
}

static int64_t current_step(void *arg)
{
	struct daemon *d = arg;
	struct mnd_worker_status s;

	if (!d->worker)
		return d->start_step;
	mnd_worker_get_status(d->worker, &s);
	return s.step;
}

/* Patience ran out: the same clean stop as SIGTERM (a final checkpoint, exit 0). */
static void on_early_stop(const struct mnd_early_status *s, void *arg)
{
	struct daemon *d = arg;

	mn_log_fields(MN_LOG_INFO, "early stopping: no improvement, finishing the current step",
	              (struct mn_log_field[]){
	                  MN_F_INT("best_step", s->best_step),
	                  MN_F_DBL("best_accuracy", s->best_accuracy, 4),
	                  MN_F_INT("evaluations_since", s->since_best),
	                  MN_F_DBL("min_delta", d->app.cfg.train.early_stopping.min_delta, -1),
	              },
	              4);
	if (d->stopping || !d->worker)
		return;
	begin_stop(d);
	mnd_worker_stop(d->worker);
}

/*
 * Whether the metrics file already holds the verdict for this run at the
 * step it starts from (a restart after an early stop): then it is not
 * trained on, as a run at max_steps is not. Not under MPI, where the ranks
 * stop together at a step they agree on: there the follower's verdict
 * stops it after a step.
 */
static bool verdict_stands(struct daemon *d, const struct mnd_early_params *p)
{
	struct mnd_early_status s;
	char err[MN_ERRLEN];
	int rc;

	if (d->dist)
		return false;
	rc = mnd_early_verdict(p, &s, err, sizeof(err));
	if (rc < 0)
		mn_log(MN_LOG_WARN, "train.early_stopping.metrics_file: %s", err);
	if (rc <= 0)
		return false;
	mn_log_fields(MN_LOG_INFO,
	              "early stopping: patience ran out before this start, not training",
	              (struct mn_log_field[]){
	                  MN_F_INT("best_step", s.best_step),
	                  MN_F_DBL("best_accuracy", s.best_accuracy, 4),
	                  MN_F_INT("evaluations_since", s.since_best),
	                  MN_F_INT("step", d->start_step),
	                  MN_F_DBL("min_delta", d->app.cfg.train.early_stopping.min_delta, -1),
	              },
	              5);
	return true;
}

/*
 * Follows the evaluator's metrics file on this (the loop) thread, from
 * before the worker starts (it calls nothing until the loop runs). If that
 * cannot start, training goes on without it: stopping early is an
 * optimisation, and a failure here must never stop training. Returns true
 * if the run's verdict is in already: then nothing is to be trained.
 */
static bool start_early(struct daemon *d, struct mn_trainer *t)
{
	const struct mn_config *c = &d->app.cfg;
	struct mnd_early_params p = {
	    .metrics_file = c->train.early_stopping.metrics_file,
	    .patience = c->train.early_stopping.patience,
	    .min_delta = c->train.early_stopping.min_delta,
	    .mode = c->eval.watch,
	    .poll_interval_ms = (uint64_t)c->eval.poll_interval_ms,
	    .current_step = current_step,
	    .on_stop = on_early_stop,
	    .arg = d,
	};
	char err[MN_ERRLEN];

	if (!c->train.early_stopping.enabled)
		return false;
	mn_log_fields(MN_LOG_INFO, "early stopping on",
	              (struct mn_log_field[]){
	                  MN_F_STR("metrics_file", p.metrics_file),
	                  MN_F_INT("patience", p.patience),
	                  MN_F_DBL("min_delta", p.min_delta, -1),
	              },
	              3);
	d->start_step = mn_trainer_global_step(t);
	if (verdict_stands(d, &p))
		return true;
	if (mnd_early_start(&d->app.loop, &p, &d->early, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "%s; training without early stopping", err);
		return false;
	}
	if (d->control)
		mnd_control_set_early(d->control, d->early);
	return false;
}

/* Runs the daemon from the event loop's start to its end; returns the exit status. */
static int run(struct daemon *d)
{
	struct mn_trainer *t = NULL;
	char latest[MN_CKPT_MAX_NAME], err[MN_ERRLEN];
	int rc;

	/* Signals before setup, so a stop during the data load is a clean exit too. */
	if (mn_app_loop_start(&d->app, true, on_stop_signal, on_hup, d) < 0) {
		d->ex = MN_EX_FAILURE;
		goto out;
	}
	/*
	 * The control socket before setup: it tells whether another mnistd
	 * runs on this configuration before setup touches checkpoint.dir
	 * (which removes temporary files that daemon may be writing).
	 */
	if (mnd_dist_rank(d->dist) == 0 && start_control(d) < 0) {
		d->ex = MN_EX_FAILURE;
		goto out;
	}
	d->ex = setup(d, &t, latest, sizeof(latest));
	if (d->ex != MN_EX_OK) {
		mn_trainer_free(t);
		goto out;
	}
	/*
	 * Deliver what arrived during setup. Asked to stop before a step ran,
	 * there is nothing new to save: the state is the restored checkpoint
	 * or the seeded initialisation.
	 */
	uv_run(&d->app.loop, UV_RUN_NOWAIT);
	/* Ranks stop together, at a step they agree on: that needs the worker. */
	if (d->stopping && !d->dist) {
		mn_trainer_free(t);
		goto out;
	}
	/* Rank 0 alone follows the evaluator: a stop is any rank's, agreed at the next step. */
	if (mnd_dist_rank(d->dist) == 0 && start_early(d, t)) {
		mn_trainer_free(t);
		goto out;
	}
	if (mnd_dist_rank(d->dist) == 0) {
		uv_timer_init(&d->app.loop, &d->progress);
		d->progress.data = d;
		uv_timer_start(&d->progress, on_progress, PROGRESS_INTERVAL_MS,
		               PROGRESS_INTERVAL_MS);
	}

	struct mn_trainer_state ts;

	mn_trainer_state(t, &ts);
	/*
	 * A stop that came during setup (only an MPI rank gets this far with
	 * one): on_stop_signal had no worker to tell. It is the worker's from
	 * the start, so the ranks agree on it at the first step boundary; told
	 * after the start, the thread could pass that boundary first.
	 */
	rc = mnd_worker_start(&d->app.loop, t, &d->app.cfg, ts.nperm, latest, d->dist, d->stopping,
	                      on_worker_done, d, &d->worker, err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		mn_trainer_free(t);
		d->ex = MN_EX_FAILURE;
		goto out;
	}
	if (d->control)
		mnd_control_set_worker(d->control, d->worker);
	if (mnd_dist_rank(d->dist) == 0 && mn_notify_enabled())
		start_notify(d);
	/* Rank 0 alone speaks for the run, as it alone writes checkpoints and serves the socket. */
	if (mnd_dist_rank(d->dist) == 0 &&
	    mnd_textfile_start(&d->app.loop, d->worker, &d->app.cfg, d->start_ns, &d->metrics, err,
	                       sizeof(err)) < 0)
		mn_log(MN_LOG_ERROR, "metrics.textfile: %s", err);
	uv_run(&d->app.loop, UV_RUN_DEFAULT);
out:
	if (d->control) {
		mnd_control_set_worker(d->control, NULL);
		mnd_control_set_early(d->control, NULL);
	}
	mnd_early_close(d->early);
	d->early = NULL;
	/* Closing answers the worker's last requests: what they call must see it gone. */
	struct mnd_worker *w = d->worker;

	d->worker = NULL;
	/* The final state, with the exit checkpoint, and that the trainer no longer runs. */
	mnd_textfile_write(d->metrics, false);
	mnd_textfile_close(d->metrics);
	d->metrics = NULL;
	mnd_worker_close(w);
	mnd_control_close(d->control);
	d->control = NULL;
	mn_app_loop_close(&d->app);
	return d->ex;
}

/* Joins the MPI job that launched us; rank 0 speaks for it, the others report only trouble. */
static int start_dist(struct daemon *d, int *argc, char ***argv)
{
	char err[MN_ERRLEN];
	int rc;

	if (mnd_dist_init(argc, argv, &d->dist, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "%s", err);
		return MN_EX_FAILURE;
	}
	if (mnd_dist_rank(d->dist) != 0 && d->app.cfg.log.level < MN_LOG_WARN)
		mn_log_set_level(MN_LOG_WARN);
	/* The ranks may share one log file (and mpirun's output): say whose a line is. */
	if (mnd_dist_rank(d->dist) != 0)
		mn_log_set_tag("rank", mnd_dist_rank(d->dist));
	mn_log_fields(MN_LOG_INFO, "data-parallel job",
	              (struct mn_log_field[]){MN_F_INT("rank", mnd_dist_rank(d->dist)),
	                                      MN_F_INT("world_size", mnd_dist_size(d->dist))},
	              2);
	/* Before the data load: a rank with other settings would train other arithmetic. */
	rc = mnd_dist_check_config(d->dist, MN_VERSION, &d->app.cfg, err, sizeof(err));
	if (rc == -EINVAL) {
		/* Every rank has this answer: all end here, without MPI_Abort. */
		if (mnd_dist_rank(d->dist) == 0)
			mn_log(MN_LOG_ERROR, "%s", err);
		mnd_dist_finalize(d->dist);
		d->dist = NULL;
		return MN_EX_CONFIG;
	}
	if (rc < 0) {
		/* A collective left unfinished: the others may wait in it. */
		mn_log(MN_LOG_ERROR, "rank %d: %s; ending the job", mnd_dist_rank(d->dist), err);
		mnd_dist_abort(d->dist, MN_EX_FAILURE);
		mnd_dist_finalize(d->dist);
		d->dist = NULL;
		return MN_EX_FAILURE;
	}
	return MN_EX_OK;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'C'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {0},
	};
	struct daemon d = {
	    .app = {.name = "mnistd", .config_path = MN_DEFAULT_CONFIG, .user = MN_CONFIG_TRAINER},
	    .lock_fd = -1,
	    .start_step = -1};
	struct mn_app_start_params sp = {0};
	char err[MN_ERRLEN];
	int c, ex;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			d.app.config_path = optarg;
			break;
		case 'C':
			sp.check_only = true;
			break;
		case 'h':
			usage(stdout);
			return MN_EX_OK;
		case 'V':
			printf("mnistd %s (MPI %s)\n", MN_VERSION,
			       mnd_dist_available() ? "available" : "not built in");
			return MN_EX_OK;
		default:
			usage(stderr);
			return MN_EX_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mnistd: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return MN_EX_USAGE;
	}
	d.start_ns = mn_realtime_ns();
	if (!mn_app_start(&d.app, &sp, &ex))
		return ex;
	if (mnd_dist_launched()) {
		ex = start_dist(&d, &argc, &argv);
		if (ex != MN_EX_OK) {
			mn_app_end(&d.app);
			return ex;
		}
	}
	/* Rank 0 speaks for the job: it alone keeps the history. */
	if (mnd_dist_rank(d.dist) == 0 &&
	    mnd_history_open(d.app.cfg.train.metrics_file, &d.history, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_ERROR, "train.metrics_file: %s", err);
		ex = MN_EX_CONFIG;
	} else {
		ex = run(&d);
	}
	mnd_history_close(d.history);
	/* Released only now: the final checkpoint is published. */
	if (d.lock_fd >= 0)
		close(d.lock_fd);
	mn_app_end(&d.app);
	/*
	 * A rank that fails alone (rank 0's setup reads the directory, takes the
	 * lock, opens the socket) leaves the others waiting in a collective for
	 * it: end the whole job, with this status.
	 */
	if (ex != MN_EX_OK && !d.failed_together)
		mnd_dist_abort(d.dist, ex);
	mnd_dist_finalize(d.dist);
	return ex;
}
