/*
 * test_runner.c - the evaluator's runner on a real libuv loop and thread
 * pool, with real checkpoints: which file a burst of kicks evaluates.
 */
#include <check.h>
#include <stdio.h>
#include <uv.h>

#include "mn_test.h"
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

static struct mne_runner *start(void)
{
	struct mne_runner_params p = {
	    .pick = {.dir = tmpdir, .prefix = PREFIX, .data = &data, .threads = 1, .use_ema = true},
	    .on_result = on_result,
	    .on_missing = on_missing};
	struct mne_runner *r = NULL;
	char err[256] = "";

	ck_assert_msg(mne_runner_new(&loop, &p, &r, err, sizeof(err)) == 0, "%s", err);
	return r;
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

int main(void)
{
	Suite *s = suite_create("runner");
	TCase *tc = mn_test_tcase(s, "runner", setup, teardown);

	MN_TEST_ADD(tc, test_named_kicks_evaluate_the_newest_named, test_an_unnamed_kick_lists);
	return mn_test_run(s);
}
