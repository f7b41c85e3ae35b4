/* test_pick.c - mnist-eval's synchronous core (evaluator/pick.c): which checkpoint, and its result.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "pick.h"
#include "train.h"
#include "util.h"

#include "log.h"
#include "mn_test.h"
#include "mn_test_threads.h"

#define N_EX   40
#define IN_DIM 16
#define OUT    4
#define PREFIX "model.ckpt"

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[PATH_MAX];
static char err[MN_ERRLEN];
static struct mn_view data;
static struct mn_trainer *trainer;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	err[0] = '\0';
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
}

static void teardown(void)
{
	mn_trainer_free(trainer);
	trainer = NULL;
	mn_test_rmtree(tmpdir);
}

static const char *tpath(const char *name)
{
	static char bufs[2][PATH_MAX + 256];
	static int next;
	char *b = bufs[next++ % 2];

	snprintf(b, sizeof(bufs[0]), "%s/%s", tmpdir, name);
	return b;
}

/* Trains up to step and publishes a checkpoint of it into tmpdir. */
static void publish_step(int64_t step)
{
	mn_test_publish_step(trainer, tmpdir, PREFIX, step);
}

static struct mne_pick_params params(void)
{
	return (struct mne_pick_params){
	    .dir = tmpdir, .prefix = PREFIX, .data = &data, .use_ema = true, .cancel = NULL};
}

static const char *name_of(int64_t step)
{
	static char buf[MN_CKPT_MAX_NAME];

	snprintf(buf, sizeof(buf), PREFIX "-%lld.safetensors", (long long)step);
	return buf;
}

START_TEST(test_missing_and_empty_directory)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	mne_pick_state_init(&s);
	ck_assert_int_eq(s.last_step, -1);
	p.dir = tpath("absent");
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -ENOENT);
	p = params();
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_int_eq(s.last_step, -1);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_burst_collapses_to_newest_and_never_twice)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(1);
	publish_step(2);
	publish_step(3);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 3);
	ck_assert_str_eq(r.name, name_of(3));
	ck_assert_int_eq(s.last_step, 3);
	ck_assert_uint_eq(r.eval.images, N_EX);
	ck_assert(r.eval.accuracy >= 0 && r.eval.accuracy <= 1);
	ck_assert(r.ema);
	ck_assert_int_gt(r.published_ns, 0);
	ck_assert_int_ge(r.done_ns, r.published_ns - 1000000000);
	/* Nothing new: nothing evaluated, and the older steps are never taken up. */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	publish_step(4);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 4);
	mne_pick_state_free(&s);
}
END_TEST

/* r, the result of step in a state that had evaluated before, is what a fresh state gives. */
static void expect_fresh_result(const struct mne_pick_params *p, const struct mne_pick_result *r,
                                int64_t step)
{
	struct mn_ckptdir_entry e = {.step = step};
	struct mne_pick_result fresh;

	ck_assert_int_eq(r->step, step);
	snprintf(e.name, sizeof(e.name), "%s", name_of(step));
	ck_assert_int_eq(mne_pick_evaluate_file(p, tmpdir, &e, &fresh), 0);
	ck_assert_uint_eq(r->eval.correct, fresh.eval.correct);
	ck_assert_double_eq(r->eval.loss, fresh.eval.loss);
}

/*
 * One evaluation after another reuses the state's memory (file bytes,
 * parameters, workspace) and gives what a fresh state gives, a bad file
 * in between included.
 */
START_TEST(test_evaluations_reuse_memory)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	char *file;
	float *par;
	struct mn_eval_ws *ws;

	mne_pick_state_init(&s);
	publish_step(1);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	file = s.file;
	par = s.params;
	ws = s.ws;
	ck_assert(file && par && ws);
	mn_test_write_file(tpath(name_of(2)), "not a checkpoint", 16);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	publish_step(3);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_ptr_eq(s.file, file);
	ck_assert_ptr_eq(s.params, par);
	ck_assert_ptr_eq(s.ws, ws);
	expect_fresh_result(&p, &r, 3);
	mne_pick_state_free(&s);
	ck_assert_ptr_null(s.file);
	ck_assert_ptr_null(s.ws);
}
END_TEST

/*
 * Warmed for the trainer's shape while there is nothing to evaluate, the
 * state evaluates the first checkpoint in the memory and workspace it made
 * then, with the result a fresh state gives; a shape the data cannot feed
 * warms nothing.
 */
START_TEST(test_warm_state_serves_the_first_checkpoint)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	struct mn_arch other = *mn_trainer_arch(trainer);
	char *file;
	float *par;
	struct mn_eval_ws *ws;

	mne_pick_state_init(&s);
	other.input = IN_DIM + 1;
	mne_pick_warm(&s, &p, &other, 1 << 20);
	ck_assert_ptr_null(s.ws);
	ck_assert_ptr_null(s.params);
	mne_pick_warm(&s, &p, mn_trainer_arch(trainer), 1 << 20);
	ck_assert(s.ws && s.params && s.file);
	ck_assert_uint_ge(s.file_cap, 1 << 20);
	file = s.file;
	par = s.params;
	ws = s.ws;
	publish_step(2);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_ptr_eq(s.file, file);
	ck_assert_ptr_eq(s.params, par);
	ck_assert_ptr_eq(s.ws, ws);
	expect_fresh_result(&p, &r, 2);
	mne_pick_state_free(&s);
}
END_TEST

/*
 * A file this machine could not evaluate (no thread for the forward pass)
 * is not judged: the look ends with the error, the file is neither logged
 * as invalid nor remembered as bad, and the next look evaluates it.
 */
START_TEST(test_machine_trouble_is_not_the_file_s_fault)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	char logpath[PATH_MAX + 8];

	snprintf(logpath, sizeof(logpath), "%s/log", tmpdir);
	ck_assert_int_eq(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	p.threads = 2;
	publish_step(1);
	mne_pick_state_init(&s);
	mn_test_fail_threads = true;
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -EAGAIN);
	mn_test_fail_threads = false;
	ck_assert_ptr_nonnull(strstr(err, "cannot evaluate"));
	ck_assert_ptr_nonnull(strstr(err, name_of(1)));
	ck_assert_uint_eq(s.rejected, 0);
	ck_assert_uint_eq(s.nfailed, 0);
	ck_assert_int_eq(s.last_step, -1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "invalid checkpoint"), 0);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 1);
	mne_pick_state_free(&s);
	mn_log_close();
}
END_TEST

/*
 * Out of descriptors when opening the named file (the most likely resource
 * error): the same, not a bad file.
 */
START_TEST(test_no_descriptor_is_not_the_file_s_fault)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	struct rlimit old, few;
	int fds[1024], n = 0, highest = -1;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	publish_step(1);
	mne_pick_state_init(&s);
	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atoi(e->d_name) > highest)
			highest = atoi(e->d_name);
	closedir(d);
	/* A few descriptors allowed, every one of them taken: the next open fails. */
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	few = old;
	few.rlim_cur = (rlim_t)highest + 8;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &few), 0);
	while (n < 1024 && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
		n++;
	ck_assert_int_eq(errno, EMFILE);
	p.hint_step = 1; /* the file an event named: opened without listing the directory */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -EMFILE);
	while (n > 0)
		close(fds[--n]);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	ck_assert_ptr_nonnull(strstr(err, "cannot evaluate"));
	ck_assert_uint_eq(s.rejected, 0);
	ck_assert_uint_eq(s.nfailed, 0);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 1);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_only_final_names_count)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(2);
	/* A temporary, another prefix and a stray name, all "newer": all ignored. */
	ck_assert_int_eq(link(tpath(name_of(2)), tpath("." PREFIX "-9.safetensors.tmp")), 0);
	ck_assert_int_eq(link(tpath(name_of(2)), tpath("other-9.safetensors")), 0);
	ck_assert_int_eq(link(tpath(name_of(2)), tpath(PREFIX "-9.safetensors.bak")), 0);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 2);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_bad_newest_falls_back_and_is_not_retried_until_replaced)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(4);
	mn_test_write_file(tpath(name_of(5)), "not a checkpoint", 16);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 4);
	/* Step 5 stays bad and is remembered: no result. */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.nfailed, 1);
	ck_assert_int_eq(s.failed[0].step, 5);
	ck_assert_uint_eq(s.rejected, 1); /* counted once, not at every look */
	/* A replacement under the same name (a new inode) is tried. */
	publish_step(5);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 5);
	ck_assert_uint_eq(s.nfailed, 0); /* failures at or below the last step are forgotten */
	mne_pick_state_free(&s);
}
END_TEST

/* Sends the log to the work directory's pick.log, whose path goes to log. */
static void open_log(char *log, size_t len)
{
	snprintf(log, len, "%s", tpath("pick.log"));
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
}

/* Issue #15 point 8: however many bad files there are, each is read once. */
START_TEST(test_every_bad_file_is_remembered)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	char log[PATH_MAX + 256];

	open_log(log, sizeof(log));
	for (int64_t step = 10; step < 110; step++)
		mn_test_write_file(tpath(name_of(step)), "truncated", 9);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.nfailed, 100);
	for (size_t i = 1; i < s.nfailed; i++)
		ck_assert_int_lt(s.failed[i - 1].step, s.failed[i].step);
	/* A second look reads none of them again (32 used to be remembered). */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "invalid checkpoint"), 100);
	/* Another size under the same name is another file: it is read again. */
	mn_test_write_file(tpath(name_of(50)), "truncated again", 15);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "invalid checkpoint"), 101);
	mn_log_close();
	mne_pick_state_free(&s);
}
END_TEST

/* Issue #15 point 8: a directory holding a fresh run (lower steps) is followed. */
START_TEST(test_fresh_run_is_followed)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(6);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 6);
	ck_assert_int_eq(unlink(tpath(name_of(6))), 0);
	mn_trainer_free(trainer);
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	publish_step(2);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 2);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_model_for_other_data_is_bad)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	struct mn_view wide = data;

	publish_step(1);
	wide.dim = IN_DIM / 2;
	wide.count = N_EX * 2;
	p.data = &wide;
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.nfailed, 1);
	ck_assert_int_eq(s.last_step, -1);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_raw_weights_when_asked)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result ema, raw;

	publish_step(3);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &ema, err, sizeof(err)), 1);
	p.use_ema = false;
	mne_pick_state_free(&s);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &raw, err, sizeof(err)), 1);
	ck_assert(ema.ema);
	ck_assert(!raw.ema);
	/* Three steps in, the shadows still differ from the weights. */
	ck_assert(ema.eval.loss != raw.eval.loss);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_cancelled)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	atomic_bool cancel;

	publish_step(1);
	atomic_init(&cancel, true);
	p.cancel = &cancel;
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -ECANCELED);
	ck_assert_int_eq(s.last_step, -1);
	atomic_store(&cancel, false);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 1);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_fifo_is_never_opened)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(1);
	/* Opening a FIFO without a writer would block the evaluator forever. */
	ck_assert_int_eq(mkfifo(tpath(name_of(2)), 0600), 0);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 1);
	mne_pick_state_free(&s);
}
END_TEST

START_TEST(test_frozen_model_has_no_shadows)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	struct mn_trainer_state st;

	mn_trainer_state(trainer, &st);
	ck_assert_int_eq(mn_model_write_frozen(
	                     tmpdir, name_of(6), mn_trainer_arch(trainer), st.shadow,
	                     (struct mn_meta[]){{MN_META_GLOBAL_STEP, "6"}}, 1, err, sizeof(err)),
	                 0);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 6);
	/* Asked for the EMA, a frozen model has one set of values, and says so. */
	ck_assert(!r.ema);
	mne_pick_state_free(&s);
}
END_TEST

/*
 * A look for a step an event named opens that file without listing the
 * directory: a newer file nobody named is not seen (it is at the next look
 * that lists), and the step named is the one evaluated.
 */
START_TEST(test_named_step_is_evaluated_without_listing)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(2);
	publish_step(3);
	mne_pick_state_init(&s);
	p.hint_step = 2;
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 2);
	ck_assert_str_eq(r.name, name_of(2));
	ck_assert_int_eq(s.last_step, 2);
	/* Named again, or named lower: not new, so the directory is listed and 3 found. */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 3);
	p.hint_step = 0; /* nothing named: list */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	mne_pick_state_free(&s);
}
END_TEST

/*
 * A named file that is gone (retention was quicker) or bad falls back to
 * listing, which finds the newest good one; the bad one is remembered as
 * when it is found by listing.
 */
START_TEST(test_named_step_gone_or_bad_falls_back_to_listing)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(2);
	mne_pick_state_init(&s);
	p.hint_step = 7; /* never written */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 2);
	publish_step(3);
	mn_test_write_file(tpath(name_of(4)), "not a checkpoint", 16);
	p.hint_step = 4;
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 3);
	ck_assert_uint_eq(s.nfailed, 1);
	ck_assert_int_eq(s.failed[0].step, 4);
	ck_assert_uint_eq(s.rejected, 1);
	/* Named again while unchanged: rejected once, not read again. */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.rejected, 1);
	mne_pick_state_free(&s);
}
END_TEST

/* Polls until the filesystem's clock has moved past path's change time (it ticks coarsely). */
static void wait_ctime_tick(const char *path)
{
	struct stat st, probe;
	int64_t end = mn_monotonic_ns() + 5000000000;

	ck_assert_int_eq(stat(path, &st), 0);
	do {
		mn_test_write_file(tpath("tick"), "x", 1);
		ck_assert_int_eq(stat(tpath("tick"), &probe), 0);
		if (probe.st_ctim.tv_sec != st.st_ctim.tv_sec ||
		    probe.st_ctim.tv_nsec != st.st_ctim.tv_nsec)
			return;
	} while (mn_monotonic_ns() < end);
	ck_abort_msg("the filesystem clock did not tick in 5 s");
}

/*
 * A checkpoint published unreadable (the writer's umask, another user) is
 * rejected; made readable (chmod changes only its change time), it is read
 * again and evaluated, not left rejected for good.
 */
START_TEST(test_unreadable_file_made_readable_is_evaluated)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;

	publish_step(3);
	ck_assert_int_eq(chmod(tpath(name_of(3)), 0), 0);
	mne_pick_state_init(&s);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.rejected, 1);
	wait_ctime_tick(tpath(name_of(3)));
	ck_assert_int_eq(chmod(tpath(name_of(3)), 0644), 0);
	p.hint_step = 3; /* the event the chmod makes names it */
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_int_eq(r.step, 3);
	mne_pick_state_free(&s);
}
END_TEST

/* Sets path's modification time seconds before now, as a file written then has. */
static void backdate(const char *path, time_t seconds)
{
	struct timespec t[2];

	ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &t[0]), 0);
	t[0].tv_sec -= seconds;
	t[1] = t[0];
	ck_assert_int_eq(utimensat(AT_FDCWD, path, t, 0), 0);
}

/*
 * The newest checkpoint deleted (by hand: it diverged) leaves an older one
 * of the same run as the newest: that is no new run, and a step already
 * evaluated is not evaluated again. A file written after the last one
 * evaluated (the trainer resumed from the older one) is a new run.
 */
START_TEST(test_newest_deleted_is_no_new_run)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	char log[PATH_MAX + 256];

	open_log(log, sizeof(log));
	publish_step(2);
	backdate(tpath(name_of(2)), 60);
	mne_pick_state_init(&s);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 2);
	publish_step(4);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 4);
	ck_assert_int_eq(unlink(tpath(name_of(4))), 0);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "new run"), 0);
	/* A trainer that resumed from step 2: its step 3 is written after step 4 was. */
	mn_trainer_free(trainer);
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	publish_step(3);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 3);
	ck_assert_uint_eq(mn_test_count_lines(log, "new run"), 1);
	mn_log_close();
	mne_pick_state_free(&s);
}
END_TEST

/*
 * A directory that can be listed but not searched (chmod -R 644 on it):
 * the directory's trouble, not the files'. The look ends with the error
 * (the runner logs it once) instead of calling every file invalid at every
 * look; searchable again, the newest is evaluated.
 */
START_TEST(test_unsearchable_directory_ends_the_look)
{
	struct mne_pick_params p = params();
	struct mne_pick_state s;
	struct mne_pick_result r;
	char log[PATH_MAX + 256];

	open_log(log, sizeof(log));
	publish_step(2);
	publish_step(3);
	mne_pick_state_init(&s);
	ck_assert_int_eq(chmod(tmpdir, 0644), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -EACCES);
	ck_assert_msg(strstr(err, name_of(3)) && strstr(err, "ermission"), "%s", err);
	p.hint_step = 3;
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), -EACCES);
	ck_assert_int_eq(chmod(tmpdir, 0755), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_uint_eq(s.rejected, 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "invalid checkpoint"), 0);
	ck_assert_int_eq(mne_pick_evaluate(&p, &s, &r, err, sizeof(err)), 1);
	ck_assert_int_eq(r.step, 3);
	mn_log_close();
	mne_pick_state_free(&s);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pick");
	TCase *tc = mn_test_tcase(s, "pick", setup, teardown);

	MN_TEST_ADD(tc, test_missing_and_empty_directory,
	            test_burst_collapses_to_newest_and_never_twice, test_only_final_names_count,
	            test_evaluations_reuse_memory, test_warm_state_serves_the_first_checkpoint,
	            test_machine_trouble_is_not_the_file_s_fault,
	            test_no_descriptor_is_not_the_file_s_fault,
	            test_bad_newest_falls_back_and_is_not_retried_until_replaced,
	            test_model_for_other_data_is_bad, test_raw_weights_when_asked, test_cancelled,
	            test_fifo_is_never_opened, test_frozen_model_has_no_shadows,
	            test_every_bad_file_is_remembered, test_fresh_run_is_followed,
	            test_named_step_is_evaluated_without_listing,
	            test_named_step_gone_or_bad_falls_back_to_listing,
	            test_unreadable_file_made_readable_is_evaluated,
	            test_newest_deleted_is_no_new_run, test_unsearchable_directory_ends_the_look);
	return mn_test_run(s);
}
