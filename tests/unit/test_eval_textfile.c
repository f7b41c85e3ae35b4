/*
 * test_eval_textfile.c - the evaluator's Prometheus textfile
 * (evaluator/textfile.c) read back from a real file.
 *
 * Every test parses what was written as a text exposition (format 0.0.4: a
 * HELP and a TYPE per family, then its samples; mn_test_prom.h), so a file
 * that a scraper would reject fails here whatever values it holds; the values
 * are then compared with what was recorded, family by family as mnist-eval(8)
 * lists them. Failing writes are observed through the process log (log.h),
 * sent to a file for the purpose.
 */
#include "textfile.h"

#include <check.h>
#include <errno.h>
#include <linux/capability.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_prom.h"
#include "util.h"

#define START_NS 1764090245123000000LL
#define NBUCKETS 12 /* latency bounds besides +Inf */
#define READ_MAX (1 << 20)

static char tmpdir[MN_TEST_DIRLEN], path[PATH_MAX], logpath[PATH_MAX];

/* The families of mnist-eval(8), with their types. */
static const struct mn_test_prom_family families[] = {
    {"mnist_eval_running", "gauge"},
    {"mnist_eval_process_start_time_seconds", "gauge"},
    {"mnist_eval_step", "gauge"},
    {"mnist_eval_validation_accuracy_ratio", "gauge"},
    {"mnist_eval_validation_loss", "gauge"},
    {"mnist_eval_best_validation_accuracy_ratio", "gauge"},
    {"mnist_eval_best_step", "gauge"},
    {"mnist_eval_latency_seconds", "histogram"},
    {"mnist_eval_evaluations_total", "counter"},
    {"mnist_eval_rejected_files_total", "counter"},
    {"mnist_eval_last_evaluation_timestamp_seconds", "gauge"},
};
#define NFAMILIES (sizeof(families) / sizeof(families[0]))

static void setup(void)
{
	char err[MN_ERRLEN];

	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(path, sizeof(path), "%s/mnist-eval.prom", tmpdir);
	snprintf(logpath, sizeof(logpath), "%s/eval.log", tmpdir);
	ck_assert_msg(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)) == 0, "%s",
	              err);
}

static void teardown(void)
{
	/* Back to standard error, as before any mn_log_open (CK_FORK=no runs on). */
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

/*
 * Exactly the families of the man page, with their types; the histogram's 12
 * bounds and +Inf, then _sum and _count, the rest one sample each; run on
 * every sample or on none.
 */
static void check_shape(const struct mn_test_prom_expo *e, const char *run)
{
	mn_test_prom_check_shape(e, families, NFAMILIES, NBUCKETS, run);
}

/* Cumulative latency buckets: le bound -> expected count (with +Inf = the count). */
static void check_latency(const struct mn_test_prom_expo *e, const char *const *les,
                          const double *want, size_t n, double sum)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_double_eq(
		    mn_test_prom_value(e, "mnist_eval_latency_seconds_bucket", les[i]), want[i]);
	ck_assert_double_eq(mn_test_prom_value(e, "mnist_eval_latency_seconds_bucket", "+Inf"),
	                    mn_test_prom_value(e, "mnist_eval_latency_seconds_count", NULL));
	ck_assert_double_eq_tol(mn_test_prom_value(e, "mnist_eval_latency_seconds_sum", NULL), sum,
	                        1e-12);
}

static struct mne_textfile *make(const char *run)
{
	struct mne_textfile *t = NULL;
	char err[MN_ERRLEN] = "";

	ck_assert_msg(mne_textfile_new(path, run, START_NS, &t, err, sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_nonnull(t);
	return t;
}

static struct mne_pick_result result(int64_t step, double accuracy, double loss, int64_t done_ns)
{
	struct mne_pick_result r;

	memset(&r, 0, sizeof(r));
	r.step = step;
	r.eval.accuracy = accuracy;
	r.eval.loss = loss;
	r.done_ns = done_ns;
	return r;
}

/* Before any evaluation: the file says so (NaN, -1, zero counts), with every family. */
START_TEST(test_initial_exposition)
{
	struct mne_textfile *t = make("");
	struct mn_test_prom_expo e;

	/* Nothing is written until asked (the evaluator writes at its start). */
	ck_assert_int_eq(access(path, F_OK), -1);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_running", NULL), 1);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_process_start_time_seconds", NULL),
	                    (double)START_NS / 1e9);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), -1);
	ck_assert(isnan(mn_test_prom_value(&e, "mnist_eval_validation_accuracy_ratio", NULL)));
	ck_assert(isnan(mn_test_prom_value(&e, "mnist_eval_validation_loss", NULL)));
	ck_assert(isnan(mn_test_prom_value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL)));
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_best_step", NULL), -1);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_evaluations_total", NULL), 0);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_rejected_files_total", NULL), 0);
	ck_assert(
	    isnan(mn_test_prom_value(&e, "mnist_eval_last_evaluation_timestamp_seconds", NULL)));
	check_latency(&e, (const char *const[]){"0.01", "60"}, (const double[]){0, 0}, 2, 0);
	mne_textfile_free(t);
}
END_TEST

/*
 * Results and rejections show at the next write: the latest result, the best
 * one (which a worse later result does not replace), the counters and the
 * latency histogram.
 */
START_TEST(test_counters_move_with_results_and_rejections)
{
	struct mne_textfile *t = make("");
	struct mne_pick_result r1 = result(1000, 0.8125, 0.5, 1764090300250000000LL);
	struct mne_pick_result r2 = result(2000, 0.75, 0.625, 1764090400500000000LL);
	struct mn_test_prom_expo e;

	mne_textfile_result(t, &r1, 0.03);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), 1000);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_evaluations_total", NULL), 1);
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL), 0.8125);

	mne_textfile_result(t, &r2, 2);
	mne_textfile_rejected(t, 3);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), 2000);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_validation_accuracy_ratio", NULL),
	                    0.75);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_validation_loss", NULL), 0.625);
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL), 0.8125);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_best_step", NULL), 1000);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_evaluations_total", NULL), 2);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_rejected_files_total", NULL), 3);
	ck_assert_double_eq(
	    mn_test_prom_value(&e, "mnist_eval_last_evaluation_timestamp_seconds", NULL),
	    (double)r2.done_ns / 1e9);
	/* 0.03 s falls in (0.025, 0.05], 2 s in (1, 2.5]; buckets are cumulative. */
	check_latency(&e, (const char *const[]){"0.025", "0.05", "1", "2.5", "60"},
	              (const double[]){0, 1, 1, 2, 2}, 5, 2.03);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_latency_seconds_count", NULL), 2);

	/* The rejected total is set, not added to. */
	mne_textfile_rejected(t, 4);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_rejected_files_total", NULL), 4);
	mne_textfile_free(t);
}
END_TEST

/*
 * A negative latency (the file's ctime ahead of the evaluator's clock) is
 * recorded as 0: it lands in the first bucket and the sum never goes down.
 */
START_TEST(test_negative_latency_counts_as_zero)
{
	struct mne_textfile *t = make("");
	struct mne_pick_result r1 = result(1000, 0.5, 1, 1764090300000000000LL);
	struct mne_pick_result r2 = result(2000, 0.625, 0.875, 1764090400000000000LL);
	struct mn_test_prom_expo e;

	mne_textfile_result(t, &r1, 0.03);
	mne_textfile_result(t, &r2, -0.5);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_latency_seconds_count", NULL), 2);
	check_latency(&e, (const char *const[]){"0.01", "0.025", "0.05", "60"},
	              (const double[]){1, 1, 2, 2}, 4, 0.03);
	mne_textfile_free(t);
}
END_TEST

/*
 * metrics.run labels every sample, histogram buckets included, and a value
 * with quotes, backslashes and a newline is escaped so the line still parses
 * back to it.
 */
START_TEST(test_run_label_on_every_sample_escaped)
{
	static const char run[] = "night\"ly\\b\nx";
	struct mne_textfile *t = make(run);
	char err[MN_ERRLEN], *raw = NULL;
	struct mn_test_prom_expo e;
	size_t len;

	mne_textfile_write(t, true);
	ck_assert_int_eq(mn_read_file(path, READ_MAX, &raw, &len, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(raw, "{run=\"night\\\"ly\\\\b\\nx\",le=\"0.01\"} 0\n"));
	free(raw);
	mn_test_prom_read(path, &e);
	check_shape(&e, run);
	mne_textfile_free(t);
}
END_TEST

/* A clean exit writes running 0 and leaves the rest as it was. */
START_TEST(test_stopped_writes_running_zero)
{
	struct mne_textfile *t = make("r");
	struct mne_pick_result r = result(500, 0.5, 1.5, 1764090300000000000LL);
	struct mn_test_prom_expo e;

	mne_textfile_result(t, &r, 0.2);
	mne_textfile_write(t, false);
	mn_test_prom_read(path, &e);
	check_shape(&e, "r");
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_running", NULL), 0);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), 500);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_evaluations_total", NULL), 1);
	mne_textfile_free(t);
}
END_TEST

/* eval.textfile "" is off: no writer, no file, and every function takes the NULL. */
START_TEST(test_empty_path_is_off)
{
	struct mne_textfile *t = (struct mne_textfile *)&t; /* must be overwritten */
	struct mne_pick_result r = result(1, 0.5, 1, 1);
	char err[MN_ERRLEN] = "";

	ck_assert_int_eq(mne_textfile_new("", "r", START_NS, &t, err, sizeof(err)), 0);
	ck_assert_ptr_null(t);
	mne_textfile_result(NULL, &r, 1);
	mne_textfile_rejected(NULL, 1);
	mne_textfile_write(NULL, true);
	mne_textfile_write(NULL, false);
	mne_textfile_free(NULL);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 1); /* the log alone */
}
END_TEST

/*
 * A write into a missing directory, then into a read-only one, fails without
 * harm and is logged once per distinct error; once the directory is writable
 * the next write succeeds, which is logged once too.
 */
START_TEST(test_failing_writes_logged_once_then_recover)
{
	char sub[MN_TEST_DIRLEN + 16];
	struct mne_textfile *t;
	struct mn_test_prom_expo e;

	snprintf(sub, sizeof(sub), "%s/textfiles", tmpdir);
	snprintf(path, sizeof(path), "%s/mnist-eval.prom", sub);
	t = make("");
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "eval.textfile: "), 1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "No such file or directory"), 1);

	ck_assert_int_eq(mkdir(sub, 0555), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE, false);
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	mn_test_caps(1u << CAP_DAC_OVERRIDE, true);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "eval.textfile: "), 2);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "Permission denied"), 1);

	ck_assert_int_eq(chmod(sub, 0755), 0);
	mne_textfile_rejected(t, 7);
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	mn_test_prom_read(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_rejected_files_total", NULL), 7);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "written again"), 1);
	ck_assert_uint_eq(mn_test_count_lines(logpath, "eval.textfile: "), 3);
	mne_textfile_free(t);
}
END_TEST

/*
 * A rewrite replaces the file (a new inode under the name, no temporary left
 * behind): a reader that opened the old one still reads a whole exposition.
 */
START_TEST(test_rewrite_replaces_the_file)
{
	struct mne_textfile *t = make("");
	struct mne_pick_result r = result(100, 0.5, 1, 1764090300000000000LL);
	char err[MN_ERRLEN], *old = NULL;
	struct stat before, after;
	struct mn_test_prom_expo e;
	size_t len;
	int fd;

	mne_textfile_write(t, true);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &before), 0);
	mne_textfile_result(t, &r, 0.1);
	mne_textfile_write(t, true);
	ck_assert_int_eq(stat(path, &after), 0);
	ck_assert(before.st_ino != after.st_ino);
	ck_assert_int_eq(mn_read_fd(fd, "old", READ_MAX, &old, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(close(fd), 0);
	mn_test_prom_parse(old, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), -1);
	free(old);
	mn_test_prom_read(path, &e);
	ck_assert_double_eq(mn_test_prom_value(&e, "mnist_eval_step", NULL), 100);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 2); /* the file and the log */
	mne_textfile_free(t);
}
END_TEST

/*
 * A temporary file that a predecessor killed mid-write left (here under this
 * process's pid, which a restart in a PID namespace reuses) is removed when
 * the writer is made; another file's temporary stays.
 */
START_TEST(test_new_removes_a_killed_writers_temporary)
{
	char stale[PATH_MAX], other[PATH_MAX], err[MN_ERRLEN] = "";
	struct mne_textfile *t = NULL;

	snprintf(stale, sizeof(stale), "%s/.mnist-eval.prom.%ld-3.tmp", tmpdir, (long)getpid());
	snprintf(other, sizeof(other), "%s/.mnistd.prom.%ld-3.tmp", tmpdir, (long)getpid());
	mn_test_write_file(stale, "# HELP", 6);
	mn_test_write_file(other, "# HELP", 6);
	ck_assert_msg(mne_textfile_new(path, "", START_NS, &t, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_ne(access(stale, F_OK), 0);
	ck_assert_int_eq(access(other, F_OK), 0);
	mne_textfile_free(t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("eval_textfile");
	TCase *tc = mn_test_tcase(s, "eval_textfile", setup, teardown);

	MN_TEST_ADD(tc, test_initial_exposition, test_counters_move_with_results_and_rejections,
	            test_negative_latency_counts_as_zero, test_run_label_on_every_sample_escaped,
	            test_stopped_writes_running_zero, test_empty_path_is_off,
	            test_failing_writes_logged_once_then_recover, test_rewrite_replaces_the_file,
	            test_new_removes_a_killed_writers_temporary);
	return mn_test_run(s);
}
