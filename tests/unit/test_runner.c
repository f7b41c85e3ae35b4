/*
 * test_runner.c - the evaluator's runner on a real libuv loop and thread
 * pool, with real checkpoints: which file a burst of kicks evaluates.
 */
#include <check.h>
#include <stdio.h>
#include <uv.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_threads.h"
#include "mn_test_uv.h"
#include "runner.h"

#define N_EX     40
#define IN_DIM   16
#define OUT      4
#define PREFIX   "model.ckpt"
#define MAX_SEEN 16

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[PATH_MAX];
static struct mn_view data;
static struct mn_trainer *trainer;
static uv_loop_t loop;
static int64_t results[MAX_SEEN];
static size_t nresults;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	nresults = 0;
}

static void teardown(void)
{
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_trainer_free(trainer);
	mn_test_rmtree(tmpdir);
}

static void on_result(const struct mne_pick_result *res, void *arg)
{
	(void)arg;
	ck_assert_uint_lt(nresults, MAX_SEEN);
	results[nresults++] = res->step;
}

static void on_missing(void *arg)
{
	(void)arg;
	ck_abort_msg("the directory is there");
}

static size_t want;

static bool have_wanted(void *arg)
{
	(void)arg;
	return nresults >= want;
}

/* Runs the loop until n results have arrived, failing after 30 s. */
static void run_until(size_t n)
{
	want = n;
	mn_test_uv_run_until(&loop, have_wanted, NULL, 30000, "results");
}

static struct mne_runner *start_with(int threads)
{
	struct mne_runner_params p = {.pick = {.dir = tmpdir,
	                                       .prefix = PREFIX,
	                                       .data = &data,
	                                       .threads = threads,
	                                       .use_ema = true},
	                              .on_result = on_result,
	                              .on_missing = on_missing};
	struct mne_runner *r = NULL;
	char err[256] = "";

	ck_assert_msg(mne_runner_new(&loop, &p, &r, err, sizeof(err)) == 0, "%s", err);
	return r;
}

static struct mne_runner *start(void)
{
	return start_with(1);
}

/*
 * A kick that names a step evaluates that file without listing the
 * directory (a newer file nobody named is left for a look that lists);
 * kicks in one loop turn make one job, for the newest step they name.
 */
START_TEST(test_named_kicks_evaluate_the_newest_named)
{
	struct mne_runner *r = start();

	mn_test_publish_step(trainer, tmpdir, PREFIX, 1);
	mn_test_publish_step(trainer, tmpdir, PREFIX, 2);
	mn_test_publish_step(trainer, tmpdir, PREFIX, 3);
	mne_runner_kick(r, 2);
	run_until(1);
	ck_assert_int_eq(results[0], 2);

	mne_runner_kick(r, -1); /* a poll: list */
	run_until(2);
	ck_assert_int_eq(results[1], 3);

	mn_test_publish_step(trainer, tmpdir, PREFIX, 4);
	mn_test_publish_step(trainer, tmpdir, PREFIX, 5);
	mne_runner_kick(r, 5);
	mne_runner_kick(r, 4);
	run_until(3);
	ck_assert_int_eq(results[2], 5);
	mne_runner_close(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_uint_eq(nresults, 3);
}
END_TEST

/* One kick without a step among named ones makes the job list the directory. */
START_TEST(test_an_unnamed_kick_lists)
{
	struct mne_runner *r = start();

	mn_test_publish_step(trainer, tmpdir, PREFIX, 1);
	mn_test_publish_step(trainer, tmpdir, PREFIX, 2);
	mne_runner_kick(r, 1);
	mne_runner_kick(r, -1);
	run_until(1);
	ck_assert_int_eq(results[0], 2);
	mne_runner_close(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_uint_eq(nresults, 1);
}
END_TEST

static void noop(uv_work_t *w)
{
	(void)w;
}

static void noop_done(uv_work_t *w, int status)
{
	(void)status;
	*(bool *)w->data = true;
}

static bool is_true(void *arg)
{
	return *(bool *)arg;
}

static char logpath[PATH_MAX + 8];

static bool logged_failure(void *arg)
{
	(void)arg;
	return mn_test_count_lines(logpath, "cannot evaluate") > 0;
}

/*
 * A look that failed for want of threads (the checkpoint may be the run's
 * last: no event will come) is retried by the runner itself, and evaluates
 * the file once threads can be had again.
 */
START_TEST(test_a_look_short_of_threads_is_retried)
{
	struct mne_runner *r = start_with(2);
	uv_work_t w;
	bool pool_up = false;
	char err[MN_ERRLEN];

	snprintf(logpath, sizeof(logpath), "%s/log", tmpdir);
	ck_assert_int_eq(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	/* libuv starts its pool at the first work: before threads are refused. */
	w.data = &pool_up;
	ck_assert_int_eq(uv_queue_work(&loop, &w, noop, noop_done), 0);
	mn_test_uv_run_until(&loop, is_true, &pool_up, 30000, "the thread pool");

	mn_test_publish_step(trainer, tmpdir, PREFIX, 1);
	mn_test_fail_threads = true;
	mne_runner_kick(r, 1);
	mn_test_uv_run_until(&loop, logged_failure, NULL, 30000, "the failure logged");
	mn_test_fail_threads = false;
	ck_assert_uint_eq(nresults, 0);
	run_until(1);
	ck_assert_int_eq(results[0], 1);
	mne_runner_close(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	mn_log_close();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("runner");
	TCase *tc = mn_test_tcase(s, "runner", setup, teardown);

	MN_TEST_ADD(tc, test_named_kicks_evaluate_the_newest_named, test_an_unnamed_kick_lists,
	            test_a_look_short_of_threads_is_retried);
	return mn_test_run(s);
}
