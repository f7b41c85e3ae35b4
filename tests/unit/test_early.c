/*
 * test_early.c - early stopping on a real libuv loop following a real
 * metrics file: which evaluations count and when patience runs out.
 *
 * Lines are read in order, so once the last line appended has been counted
 * every earlier one has been judged.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "early.h"
#include "follow.h"
#include "log.h"
#include "mn_test.h"
#include "mn_test_uv.h"

static char tmpdir[PATH_MAX];
static char metrics[PATH_MAX + 32];
static uv_loop_t loop;
static int64_t current_step;
static int stops;
static struct mnd_early_status at_stop;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(metrics, sizeof(metrics), "%s/metrics.jsonl", tmpdir);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	current_step = 1000000;
	stops = 0;
}

static void teardown(void)
{
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_test_rmtree(tmpdir);
}

static int64_t get_step(void *arg)
{
	(void)arg;
	return current_step;
}

static void on_stop(const struct mnd_early_status *s, void *arg)
{
	(void)arg;
	stops++;
	at_stop = *s;
}

static void append(const char *lines)
{
	FILE *f = fopen(metrics, "a");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(lines, f), 0);
	ck_assert_int_eq(fclose(f), 0);
}

static struct mnd_early *start(int64_t patience, double min_delta)
{
	struct mnd_early_params p = {.metrics_file = metrics,
	                             .patience = patience,
	                             .min_delta = min_delta,
	                             .mode = MN_WATCH_AUTO,
	                             .poll_interval_ms = 20,
	                             .current_step = get_step,
	                             .on_stop = on_stop};
	struct mnd_early *e = NULL;
	char err[256] = "";

	ck_assert_msg(mnd_early_start(&loop, &p, &e, err, sizeof(err)) == 0, "%s", err);
	return e;
}

struct counted {
	struct mnd_early *e;
	int64_t n;
};

static bool have_counted(void *arg)
{
	const struct counted *c = arg;
	struct mnd_early_status s;

	mnd_early_get_status(c->e, &s);
	return s.evaluations >= c->n || s.stopped;
}

/* Runs the loop until n evaluations have counted (or it stopped); fails after 10 s. */
static void run_until_counted(struct mnd_early *e, int64_t n)
{
	struct counted c = {e, n};

	mn_test_uv_run_until(&loop, have_counted, &c, 10000, "evaluations counted");
}

/* patience evaluations in a row without an improvement above min_delta stop the run. */
START_TEST(test_patience_runs_out)
{
	struct mnd_early *e = start(2, 0.01);
	struct mnd_early_status s;

	append("{\"step\": 100, \"accuracy\": 0.50}\n"
	       "{\"step\": 200, \"accuracy\": 0.505}\n"); /* not better by more than 0.01 */
	run_until_counted(e, 2);
	mnd_early_get_status(e, &s);
	ck_assert_int_eq(stops, 0);
	ck_assert_int_eq(s.since_best, 1);
	append("{\"step\": 300, \"accuracy\": 0.49}\n");
	run_until_counted(e, 3);
	ck_assert_int_eq(stops, 1);
	ck_assert(at_stop.stopped);
	ck_assert_int_eq(at_stop.best_step, 100);
	ck_assert_double_eq(at_stop.best_accuracy, 0.50);
	ck_assert_int_eq(at_stop.since_best, 2);
	ck_assert_int_eq(at_stop.evaluations, 3);
	mnd_early_get_status(e, &s);
	ck_assert(s.stopped);
	mnd_early_close(e);
}
END_TEST

/*
 * Only this run's newer evaluations count: garbage, out-of-range values,
 * repeats, older steps and steps beyond the trainer's are passed over.
 */
START_TEST(test_only_new_evaluations_of_this_run_count)
{
	struct mnd_early *e;
	struct mnd_early_status s;

	current_step = 250;
	e = start(3, 0.05);
	append("not json\n"
	       "{\"step\": -1, \"accuracy\": 0.5}\n"
	       "{\"step\": 100, \"accuracy\": 1.5}\n"
	       "{\"step\": 100, \"accuracy\": 0.60}\n"
	       "{\"step\": 100, \"accuracy\": 0.90}\n"
	       "{\"step\": 50, \"accuracy\": 0.90}\n"
	       "{\"step\": 300, \"accuracy\": 0.90}\n"
	       "{\"step\": 200, \"accuracy\": 0.61}\n");
	run_until_counted(e, 2);
	mnd_early_get_status(e, &s);
	ck_assert_int_eq(s.evaluations, 2);
	ck_assert_int_eq(s.best_step, 100);
	ck_assert_double_eq(s.best_accuracy, 0.60);
	ck_assert_int_eq(s.since_best, 1);
	ck_assert_int_eq(stops, 0);
	mnd_early_close(e);
}
END_TEST

/*
 * A record its writer never finished, ended by the next writer's newline
 * (jsonl.h, when a short write's partial line cannot be cut off): counted
 * as the metrics readers count it (cut, metrics.h), not warned about as
 * garbage; garbage still is.
 */
START_TEST(test_unfinished_record_is_no_garbage)
{
	char log[PATH_MAX + 32], err[256];
	struct mnd_early *e;
	struct mnd_early_status s;

	snprintf(log, sizeof(log), "%s/log", tmpdir);
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	e = start(5, 0.0);
	append("{\"step\":100,\"accuracy\":0.5}\n"
	       "{\"step\":200,\"accur\n"
	       "not json\n"
	       "{\"step\":300,\"accuracy\":0.6}\n");
	run_until_counted(e, 2);
	mnd_early_get_status(e, &s);
	ck_assert_int_eq(s.evaluations, 2);
	mnd_early_close(e);
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_uint_eq(mn_test_count_lines(log, "ignoring a line"), 1);
	ck_assert_uint_eq(
	    mn_test_count_lines(log,
	                        "ignoring a line that is not an evaluation (1 so far): not json"),
	    1);
	mn_log_close();
}
END_TEST

/* A metrics file that does not exist yet is followed from when it appears. */
START_TEST(test_file_that_appears_later)
{
	struct mnd_early *e = start(1, 0.0);
	struct mnd_early_status s;

	mnd_early_get_status(e, &s);
	ck_assert_int_eq(s.evaluations, 0);
	ck_assert(!s.have_best);
	append("{\"step\": 10, \"accuracy\": 0.25}\n");
	run_until_counted(e, 1);
	mnd_early_get_status(e, &s);
	ck_assert(s.have_best);
	ck_assert_int_eq(s.best_step, 10);
	ck_assert_int_eq(stops, 0);
	mnd_early_close(e);
}
END_TEST

/*
 * The verdict a metrics file already holds for a trainer starting at a
 * step, read before it trains: judged as the follower judges the same lines
 * (this run's newer evaluations only), a partial last line not yet a line.
 */
START_TEST(test_verdict_before_training)
{
	struct mnd_early_params p = {.metrics_file = metrics,
	                             .patience = 2,
	                             .min_delta = 0.01,
	                             .mode = MN_WATCH_AUTO,
	                             .poll_interval_ms = 20,
	                             .current_step = get_step,
	                             .on_stop = on_stop};
	struct mnd_early_status s;
	char err[256] = "";

	/* No file: no verdict. */
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	ck_assert(!s.have_best);
	current_step = 300;
	append("{\"step\": 100, \"accuracy\": 0.50}\n"
	       "garbage\n"
	       "{\"step\": 100, \"accuracy\": 0.10}\n"
	       "{\"step\": 200, \"accuracy\": 0.505}\n"
	       "{\"step\": 900, \"accuracy\": 0.40}\n");
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	ck_assert_int_eq(s.evaluations, 2);
	ck_assert_int_eq(s.since_best, 1);
	ck_assert(!s.stopped);
	/*
	 * Longer than the follower delivers: skipped by both, however valid
	 * (leading white space is valid JSON), its end as much as its start.
	 */
	{
		static char longline[MN_FOLLOW_LINE_DEFAULT + 64];
		const char *tail = "{\"step\": 250, \"accuracy\": 0.1}\n";
		size_t pad = MN_FOLLOW_LINE_DEFAULT + 1;

		memset(longline, ' ', pad);
		memcpy(longline + pad, tail, strlen(tail) + 1);
		append(longline);
	}
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	ck_assert_int_eq(s.evaluations, 2);
	/* Not a line until its newline comes. */
	append("{\"step\": 300, \"accuracy\": 0.49}");
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	append("\n");
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 1);
	ck_assert(s.stopped);
	ck_assert_int_eq(s.best_step, 100);
	ck_assert_double_eq(s.best_accuracy, 0.50);
	ck_assert_int_eq(s.since_best, 2);
	ck_assert_int_eq(s.patience, 2);
	/* Started at an earlier step, the same file holds no verdict. */
	current_step = 200;
	ck_assert_int_eq(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	/* Nothing was called: the caller decides. */
	ck_assert_int_eq(stops, 0);
	/* Something other than a file under the name is an error, never waited on. */
	ck_assert_int_eq(unlink(metrics), 0);
	ck_assert_int_eq(mkfifo(metrics, 0644), 0);
	ck_assert_int_lt(mnd_early_verdict(&p, &s, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, metrics));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("early");
	TCase *tc = mn_test_tcase(s, "early", setup, teardown);

	MN_TEST_ADD(tc, test_patience_runs_out, test_only_new_evaluations_of_this_run_count,
	            test_file_that_appears_later, test_verdict_before_training,
	            test_unfinished_record_is_no_garbage);
	return mn_test_run(s);
}
