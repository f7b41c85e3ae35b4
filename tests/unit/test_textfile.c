/*
 * test_textfile.c - the trainer's Prometheus textfile (daemon/textfile.c)
 * fed by a real worker training a toy network on a real libuv loop.
 *
 * Every test parses what was written as a text exposition (format 0.0.4: a
 * HELP and a TYPE per family, then its samples; mn_test_prom.h), so a file a
 * scraper would reject fails here whatever it holds, and compares the values
 * with the worker's own status, family by family as mnistd(8) lists them.
 * Pausing the worker holds its status still for that. The timer is observed
 * by running the loop until the file changes, with a deadline and no sleeps;
 * failing writes through the process log (log.h), sent to a file for the
 * purpose.
 */
#include "textfile.h"

#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_prom.h"
#include "mn_test_uv.h"
#include "util.h"
#include "worker.h"

#define START_NS    1764090245123000000LL
#define INTERVAL_MS 100
#define N_EX        40
#define IN_DIM      16
#define OUT         4
#define NBUCKETS    11 /* checkpoint write duration bounds besides +Inf */
#define READ_MAX    (1 << 20)

/* The families of mnistd(8), with their types. */
static const struct mn_test_prom_family families[] = {
    {"mnistd_running", "gauge"},
    {"mnistd_process_start_time_seconds", "gauge"},
    {"mnistd_global_step", "gauge"},
    {"mnistd_max_steps", "gauge"},
    {"mnistd_loss", "gauge"},
    {"mnistd_learning_rate", "gauge"},
    {"mnistd_steps_per_second", "gauge"},
    {"mnistd_paused", "gauge"},
    {"mnistd_checkpoints_published_total", "counter"},
    {"mnistd_checkpoint_failures_total", "counter"},
    {"mnistd_checkpoint_consecutive_failures", "gauge"},
    {"mnistd_checkpoint_write_duration_seconds", "histogram"},
    {"mnistd_last_checkpoint_step", "gauge"},
    {"mnistd_last_checkpoint_timestamp_seconds", "gauge"},
};
#define NFAMILIES (sizeof(families) / sizeof(families[0]))

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[MN_TEST_DIRLEN], promdir[MN_TEST_DIRLEN + 8], logpath[MN_TEST_DIRLEN + 16];
static uv_loop_t loop;
static struct mn_config cfg;
static struct mnd_worker *worker;
static struct mnd_textfile *textfile;

static void on_done(void *arg, int status)
{
	(void)arg;
	(void)status;
}

static void on_reply(void *arg, const struct mnd_worker_reply *r)
{
	ck_assert_int_eq(r->status, 0);
	(*(int *)arg)++;
}

static bool counted(void *arg)
{
	return *(int *)arg > 0;
}

static void setup(void)
{
	struct mn_trainer_params p = {.batch_size = 10, .seed = 3, .init_stddev = 0.1f};
	struct mn_view v = {.images = images, .labels = labels, .count = N_EX, .dim = IN_DIM};
	struct mn_trainer *t = NULL;
	char err[MN_ERRLEN] = "";

	mn_test_fill_classes(images, labels, N_EX, IN_DIM, OUT);
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(promdir, sizeof(promdir), "%s/prom", tmpdir);
	ck_assert_int_eq(mkdir(promdir, 0755), 0);
	snprintf(logpath, sizeof(logpath), "%s/mnistd.log", tmpdir);
	ck_assert_msg(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	mn_test_worker_config(&cfg, tmpdir);
	snprintf(cfg.metrics.textfile, sizeof(cfg.metrics.textfile), "%s/mnistd.prom", promdir);
	cfg.metrics.interval_ms = INTERVAL_MS;
	p.arch = mn_test_arch(IN_DIM, 1, (const size_t[]){8}, OUT);
	ck_assert_msg(mn_trainer_new(&p, &v, &t, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(mnd_worker_start(&loop, t, &cfg, N_EX, NULL, NULL, false, on_done, NULL,
	                               &worker, err, sizeof(err)) == 0,
	              "%s", err);
	textfile = NULL;
}

static void teardown(void)
{
	/* The textfile never touches the worker once closed, so the order does not matter. */
	mnd_textfile_close(textfile);
	mnd_worker_close(worker);
	/* Forget them, so that LeakSanitizer sees anything they failed to free. */
	textfile = NULL;
	worker = NULL;
	/* Both free through the loop: afterwards nothing may be left on it. */
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

static void start(void)
{
	char err[MN_ERRLEN] = "";

	ck_assert_msg(
	    mnd_textfile_start(&loop, worker, &cfg, START_NS, &textfile, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_ptr_nonnull(textfile);
}

static bool trained(void *arg)
{
	struct mnd_worker_status st;

	(void)arg;
	mnd_worker_get_status(worker, &st);
	return st.step >= 5;
}

/* Pauses the worker after a few steps, so that its status, and so the file, holds still. */
static void pause_worker(void)
{
	int replies = 0;

	mn_test_uv_run_until(&loop, trained, NULL, 10000, "training steps");
	ck_assert_int_eq(mnd_worker_set_paused(worker, true, on_reply, &replies), 0);
	mn_test_uv_run_until(&loop, counted, &replies, 10000, "pause");
}

/*
 * Exactly the families of the man page, with their types; the histogram's
 * bounds and +Inf, then _sum and _count, the rest one sample each; run on
 * every sample or on none.
 */
static void check_shape(const struct mn_test_prom_expo *e, const char *run)
{
	mn_test_prom_check_shape(e, families, NFAMILIES, NBUCKETS, run);
}

/*
 * The file is written at the start, before the loop turns, and every family
 * holds what the worker's status says: a paused run with one checkpoint
 * saved.
 */
START_TEST(test_values_are_the_worker_status)
{
	struct mnd_worker_status st;
	const struct mn_prom_hist *h = &st.ckpt_write;
	uint64_t cumulative = 0;
	struct mn_test_prom_expo e;
	int saved = 0;

	pause_worker();
	ck_assert_int_eq(mnd_worker_save(worker, on_reply, &saved), 0);
	mn_test_uv_run_until(&loop, counted, &saved, 10000, "save");
	mnd_worker_get_status(worker, &st);
	start();
	mn_test_prom_read(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 1);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_process_start_time_seconds", NULL),
	                    (double)START_NS / 1e9);
	ck_assert_int_gt(st.step, 0);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_global_step", NULL), (double)st.step);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_max_steps", NULL),
	                    (double)cfg.train.max_steps);
	ck_assert(isfinite(st.loss));
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_loss", NULL), st.loss);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_learning_rate", NULL), st.learning_rate);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_steps_per_second", NULL),
	                    st.steps_per_sec);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_paused", NULL), 1);
	ck_assert_int_ge(st.ckpt_published, 1);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_checkpoints_published_total", NULL),
	                    (double)st.ckpt_published);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_checkpoint_failures_total", NULL), 0);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_checkpoint_consecutive_failures", NULL),
	                    0);
	ck_assert_int_eq(st.latest_step, st.step); /* the save was of the paused step */
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_last_checkpoint_step", NULL),
	                    (double)st.latest_step);
	ck_assert_int_gt(st.latest_ns, 0);
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnistd_last_checkpoint_timestamp_seconds", NULL),
	    (double)st.latest_ns / 1e9);
	/* The write durations: bucket by bucket in the order of the bounds, cumulative. */
	for (size_t i = 0, b = 0; i < e.nsmp; i++) {
		const struct mn_test_prom_sample *s = &e.smp[i];

		if (strcmp(s->name, "mnistd_checkpoint_write_duration_seconds_bucket") != 0)
			continue;
		if (b < h->nbounds) {
			ck_assert_double_eq(strtod(s->le, NULL), h->bounds[b]);
			cumulative += h->counts[b++];
		} else {
			ck_assert_str_eq(s->le, "+Inf");
			cumulative = h->count;
		}
		ck_assert_double_eq(s->value, (double)cumulative);
	}
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnistd_checkpoint_write_duration_seconds_count", NULL),
	    (double)st.ckpt_published);
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnistd_checkpoint_write_duration_seconds_sum", NULL), h->sum);
}
END_TEST

/* metrics.run labels every sample, escaped; a clean exit's write says running 0. */
START_TEST(test_run_label_and_stopped)
{
	static const char run[] = "ru\"n\\1\nb";
	char err[MN_ERRLEN], *raw = NULL;
	struct mn_test_prom_expo e;
	size_t len;

	snprintf(cfg.metrics.run, sizeof(cfg.metrics.run), "%s", run);
	start();
	mn_test_prom_read(cfg.metrics.textfile, &e);
	check_shape(&e, run);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 1);
	mnd_textfile_write(textfile, false);
	ck_assert_int_eq(mn_read_file(cfg.metrics.textfile, READ_MAX, &raw, &len, err, sizeof(err)),
	                 0);
	ck_assert_ptr_nonnull(strstr(raw, "\nmnistd_running{run=\"ru\\\"n\\\\1\\nb\"} 0\n"));
	mn_test_prom_parse(raw, &e);
	free(raw);
	check_shape(&e, run);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 0);
}
END_TEST

/* What changed() compares the file with: its last content and inode, and how often it changed. */
static struct {
	char *text;
	ino_t ino;
	int changes;
} last;

static bool changed(void *arg)
{
	char err[MN_ERRLEN], *buf = NULL;
	int want = *(int *)arg;
	struct stat st;
	size_t len;

	/* The file is never missing in between: rename replaces it in one step. */
	ck_assert_int_eq(stat(cfg.metrics.textfile, &st), 0);
	ck_assert_int_eq(mn_read_file(cfg.metrics.textfile, READ_MAX, &buf, &len, err, sizeof(err)),
	                 0);
	if (strcmp(buf, last.text) != 0) {
		/* A new content comes only with a new file. */
		ck_assert(st.st_ino != last.ino);
		free(last.text);
		last.text = buf;
		last.ino = st.st_ino;
		last.changes++;
	} else {
		free(buf);
	}
	return last.changes >= want;
}

/*
 * While training goes on, the timer rewrites the file with the progress:
 * the n-th new content comes no sooner than n metrics.interval_ms after the
 * start (libuv timers never fire early, so this is no race).
 */
START_TEST(test_timer_rewrites_every_interval)
{
	char err[MN_ERRLEN];
	struct stat st;
	struct mn_test_prom_expo e, first;
	uint64_t t0;
	size_t len;

	uv_update_time(&loop);
	t0 = uv_now(&loop);
	start();
	ck_assert_int_eq(stat(cfg.metrics.textfile, &st), 0);
	ck_assert_int_eq(
	    mn_read_file(cfg.metrics.textfile, READ_MAX, &last.text, &len, err, sizeof(err)), 0);
	last.ino = st.st_ino;
	last.changes = 0;
	mn_test_prom_read(cfg.metrics.textfile, &first);
	for (int n = 1; n <= 2; n++) {
		mn_test_uv_run_until(&loop, changed, &n, 10000, "textfile rewrite");
		ck_assert_uint_ge(uv_now(&loop) - t0, (uint64_t)(n * INTERVAL_MS));
	}
	free(last.text);
	mn_test_prom_read(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_gt(mn_test_prom_value(&e, "mnistd_global_step", NULL),
	                    mn_test_prom_value(&first, "mnistd_global_step", NULL));
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_paused", NULL), 0);
}
END_TEST

/* metrics.textfile "" is off: no writer, no timer, and every function takes the NULL. */
START_TEST(test_empty_path_is_off)
{
	char err[MN_ERRLEN] = "";

	cfg.metrics.textfile[0] = '\0';
	textfile = (struct mnd_textfile *)&textfile; /* must be overwritten */
	ck_assert_int_eq(
	    mnd_textfile_start(&loop, worker, &cfg, START_NS, &textfile, err, sizeof(err)), 0);
	ck_assert_ptr_null(textfile);
	mnd_textfile_write(NULL, true);
	mnd_textfile_write(NULL, false);
	mnd_textfile_close(NULL);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 0);
}
END_TEST

/*
 * Fault injection: while fail_timer_init or fail_timer_start is not 0, the
 * next uv_timer_init or uv_timer_start called from this program returns it
 * (and clears it) instead of doing its work. These definitions come before
 * libuv's, which they call otherwise.
 */
static int fail_timer_init, fail_timer_start;

int uv_timer_init(uv_loop_t *l, uv_timer_t *h)
{
	int (*real)(uv_loop_t *, uv_timer_t *) =
	    (int (*)(uv_loop_t *, uv_timer_t *))dlsym(RTLD_NEXT, "uv_timer_init");
	int rc = fail_timer_init;

	if (rc) {
		fail_timer_init = 0;
		return rc;
	}
	ck_assert_ptr_nonnull(real);
	return real(l, h);
}

int uv_timer_start(uv_timer_t *h, uv_timer_cb cb, uint64_t timeout, uint64_t repeat)
{
	int (*real)(uv_timer_t *, uv_timer_cb, uint64_t, uint64_t) =
	    (int (*)(uv_timer_t *, uv_timer_cb, uint64_t, uint64_t))dlsym(RTLD_NEXT,
	                                                                  "uv_timer_start");
	int rc = fail_timer_start;

	if (rc) {
		fail_timer_start = 0;
		return rc;
	}
	ck_assert_ptr_nonnull(real);
	return real(h, cb, timeout, repeat);
}

/*
 * Starts the textfile with *fault set to code: the start fails with code and
 * a message that names the timer, leaves no writer and writes no file, and
 * whatever it made is freed through the loop (teardown finds the loop empty,
 * and LeakSanitizer nothing leaked).
 */
static void start_fails(int *fault, int code)
{
	char err[MN_ERRLEN] = "";

	textfile = (struct mnd_textfile *)&textfile; /* must be overwritten */
	*fault = code;
	ck_assert_int_eq(
	    mnd_textfile_start(&loop, worker, &cfg, START_NS, &textfile, err, sizeof(err)), code);
	ck_assert_int_eq(*fault, 0); /* the failure was met, not left for the worker's timers */
	ck_assert_ptr_null(textfile);
	ck_assert_msg(strstr(err, "rewrite timer: ") && strstr(err, uv_strerror(code)), "%s", err);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 0);
}

START_TEST(test_timer_init_failure_fails_cleanly)
{
	start_fails(&fail_timer_init, UV_ENOMEM);
}
END_TEST

START_TEST(test_timer_start_failure_fails_cleanly)
{
	start_fails(&fail_timer_start, UV_EINVAL);
}
END_TEST

static bool exists(void *arg)
{
	return access(arg, F_OK) == 0;
}

/*
 * Writes into a missing directory fail without harm, logged once; once the directory appears the
 * timer's next write succeeds, which is logged once too.
 */
START_TEST(test_missing_directory_logged_once_then_recovers)
{
	char sub[MN_TEST_DIRLEN + 16];
	struct mn_test_prom_expo e;

	snprintf(sub, sizeof(sub), "%s/later", tmpdir);
	snprintf(cfg.metrics.textfile, sizeof(cfg.metrics.textfile), "%s/mnistd.prom", sub);
	start();
	mnd_textfile_write(textfile, true);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "metrics.textfile: "), 1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "No such file or directory"), 1);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	mn_test_uv_run_until(&loop, exists, cfg.metrics.textfile, 10000, "textfile after mkdir");
	mn_test_prom_read(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "written again"), 1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "metrics.textfile: "), 2);
	/* Successes are logged only after failures. */
	mnd_textfile_write(textfile, true);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "metrics.textfile: "), 2);
}
END_TEST

/*
 * A rewrite replaces the file (a new inode, no temporary left behind): a
 * reader that opened the old one still reads a whole exposition.
 */
START_TEST(test_rewrite_replaces_the_file)
{
	char err[MN_ERRLEN], *old = NULL;
	struct stat before, after;
	struct mn_test_prom_expo e;
	size_t len;
	int fd;

	start();
	fd = open(cfg.metrics.textfile, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &before), 0);
	mnd_textfile_write(textfile, false);
	ck_assert_int_eq(stat(cfg.metrics.textfile, &after), 0);
	ck_assert(before.st_ino != after.st_ino);
	ck_assert_int_eq(mn_read_fd(fd, "old", READ_MAX, &old, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(close(fd), 0);
	mn_test_prom_parse(old, &e);
	free(old);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 1);
	mn_test_prom_read(cfg.metrics.textfile, &e);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnistd_running", NULL), 0);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 1);
}
END_TEST

/*
 * A temporary file that a predecessor killed mid-write left (here under this
 * process's pid, which a restart in a PID namespace reuses) is removed at
 * the start; another file's temporary stays.
 */
START_TEST(test_start_removes_a_killed_writers_temporary)
{
	char stale[PATH_MAX], other[PATH_MAX];

	snprintf(stale, sizeof(stale), "%s/.mnistd.prom.%ld-3.tmp", promdir, (long)getpid());
	snprintf(other, sizeof(other), "%s/.mnist-eval.prom.%ld-3.tmp", promdir, (long)getpid());
	mn_test_write_file(stale, "# HELP", 6);
	mn_test_write_file(other, "# HELP", 6);
	start();
	ck_assert_int_ne(access(stale, F_OK), 0);
	ck_assert_int_eq(access(other, F_OK), 0);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 2);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("textfile");
	TCase *tc = mn_test_tcase(s, "textfile", setup, teardown);

	MN_TEST_ADD(tc, test_values_are_the_worker_status, test_run_label_and_stopped,
	            test_timer_rewrites_every_interval, test_empty_path_is_off,
	            test_timer_init_failure_fails_cleanly, test_timer_start_failure_fails_cleanly,
	            test_missing_directory_logged_once_then_recovers,
	            test_rewrite_replaces_the_file, test_start_removes_a_killed_writers_temporary);
	return mn_test_run(s);
}
