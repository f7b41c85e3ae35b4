/* test_prom.c - the Prometheus text exposition builder and its atomic file. */
#include "prom.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mn_test.h"
#include "util.h"

static const char *text_of(struct mn_prom *p)
{
	char err[MN_ERRLEN] = "";
	const char *text = NULL;
	size_t len = 0;

	ck_assert_msg(mn_prom_text(p, &text, &len, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(strlen(text), len);
	return text;
}

START_TEST(gauge_and_counter)
{
	struct mn_prom *p = mn_prom_new();

	ck_assert_ptr_nonnull(p);
	ck_assert_str_eq(text_of(p), "");
	mn_prom_gauge(p, "mnistd_global_step", "Global step.", 3000);
	mn_prom_gauge(p, "mnistd_loss", "Loss, with a \\ and a\nnewline \"kept\".", 0.25);
	mn_prom_counter(p, "mnistd_checkpoints_published_total", "Published.", 3);
	ck_assert_str_eq(text_of(p),
	                 "# HELP mnistd_global_step Global step.\n"
	                 "# TYPE mnistd_global_step gauge\n"
	                 "mnistd_global_step 3000\n"
	                 "# HELP mnistd_loss Loss, with a \\\\ and a\\nnewline \"kept\".\n"
	                 "# TYPE mnistd_loss gauge\n"
	                 "mnistd_loss 0.25\n"
	                 "# HELP mnistd_checkpoints_published_total Published.\n"
	                 "# TYPE mnistd_checkpoints_published_total counter\n"
	                 "mnistd_checkpoints_published_total 3\n");
	mn_prom_free(p);
}
END_TEST

START_TEST(special_values_and_exact_numbers)
{
	struct mn_prom *p = mn_prom_new();

	mn_prom_gauge(p, "a", "h", NAN);
	mn_prom_gauge(p, "b", "h", INFINITY);
	mn_prom_gauge(p, "c", "h", -INFINITY);
	mn_prom_gauge(p, "d", "h", 0.1);
	mn_prom_gauge(p, "e", "h", 9007199254740992.0);
	mn_prom_gauge(p, "f", "h", 1764090245.123);
	ck_assert_str_eq(text_of(p), "# HELP a h\n# TYPE a gauge\na NaN\n"
	                             "# HELP b h\n# TYPE b gauge\nb +Inf\n"
	                             "# HELP c h\n# TYPE c gauge\nc -Inf\n"
	                             "# HELP d h\n# TYPE d gauge\nd 0.1\n"
	                             "# HELP e h\n# TYPE e gauge\ne 9007199254740992\n"
	                             "# HELP f h\n# TYPE f gauge\nf 1764090245.123\n");
	mn_prom_free(p);
}
END_TEST

START_TEST(constant_labels_are_escaped)
{
	struct mn_prom *p = mn_prom_new();

	mn_prom_label(p, "run", "a\"b\\c\nd \xc3\xa9");
	mn_prom_label(p, "zone", "x");
	mn_prom_gauge(p, "g", "h", 1);
	ck_assert_str_eq(text_of(p), "# HELP g h\n# TYPE g gauge\n"
	                             "g{run=\"a\\\"b\\\\c\\nd \xc3\xa9\",zone=\"x\"} 1\n");
	/* reset forgets text and labels alike. */
	mn_prom_reset(p);
	mn_prom_gauge(p, "g", "h", 2);
	ck_assert_str_eq(text_of(p), "# HELP g h\n# TYPE g gauge\ng 2\n");
	mn_prom_free(p);
}
END_TEST

START_TEST(histogram_buckets_are_cumulative)
{
	static const double bounds[] = {0.01, 0.1, 1};
	struct mn_prom_hist h;
	struct mn_prom *p = mn_prom_new();

	mn_prom_hist_init(&h, bounds, 3);
	mn_prom_hist_observe(&h, 0.005);
	mn_prom_hist_observe(&h, 0.01); /* on a bound: counts in that bucket (le) */
	mn_prom_hist_observe(&h, 0.5);
	mn_prom_hist_observe(&h, 4);
	mn_prom_hist_observe(&h, NAN); /* ignored */
	ck_assert_uint_eq(h.count, 4);
	mn_prom_label(p, "run", "r");
	mn_prom_histogram(p, "w_seconds", "Write time.", &h);
	ck_assert_str_eq(text_of(p), "# HELP w_seconds Write time.\n"
	                             "# TYPE w_seconds histogram\n"
	                             "w_seconds_bucket{run=\"r\",le=\"0.01\"} 2\n"
	                             "w_seconds_bucket{run=\"r\",le=\"0.1\"} 2\n"
	                             "w_seconds_bucket{run=\"r\",le=\"1\"} 3\n"
	                             "w_seconds_bucket{run=\"r\",le=\"+Inf\"} 4\n"
	                             "w_seconds_sum{run=\"r\"} 4.515\n"
	                             "w_seconds_count{run=\"r\"} 4\n");
	/* An empty histogram still has every bucket, at zero. */
	mn_prom_reset(p);
	mn_prom_hist_init(&h, bounds, 1);
	mn_prom_histogram(p, "e_seconds", "E.", &h);
	ck_assert_str_eq(text_of(p), "# HELP e_seconds E.\n# TYPE e_seconds histogram\n"
	                             "e_seconds_bucket{le=\"0.01\"} 0\n"
	                             "e_seconds_bucket{le=\"+Inf\"} 0\n"
	                             "e_seconds_sum 0\ne_seconds_count 0\n");
	mn_prom_free(p);
}
END_TEST

static void expect_error(struct mn_prom *p, const char *needle)
{
	char err[MN_ERRLEN] = "";
	const char *text;
	size_t len;

	ck_assert_int_eq(mn_prom_text(p, &text, &len, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, needle) != NULL, "'%s' lacks '%s'", err, needle);
	mn_prom_reset(p);
}

START_TEST(bad_input_is_a_sticky_error)
{
	static const double unsorted[] = {1, 0.5};
	struct mn_prom_hist h;
	struct mn_prom *p = mn_prom_new();

	mn_prom_gauge(p, "9lives", "h", 1);
	mn_prom_gauge(p, "fine", "h", 1); /* skipped after the first error */
	expect_error(p, "9lives: not a valid metric name");
	mn_prom_gauge(p, "has space", "h", 1);
	expect_error(p, "has space");
	mn_prom_counter(p, "checkpoints", "h", 1);
	expect_error(p, "must end in _total");
	mn_prom_label(p, "a:b", "x");
	expect_error(p, "a:b: not a valid label name");
	mn_prom_label(p, "le", "x");
	expect_error(p, "le: not a valid label name");
	mn_prom_label(p, "__name__", "x");
	expect_error(p, "__name__");
	mn_prom_hist_init(&h, unsorted, 2);
	mn_prom_histogram(p, "h_seconds", "h", &h);
	expect_error(p, "increasing");
	/*
	 * The format is UTF-8: node-exporter rejects a whole file whose label
	 * value or HELP is not ("invalid label value"), so none is written.
	 */
	mn_prom_label(p, "run", "caf\xe9");
	mn_prom_gauge(p, "g", "h", 1);
	expect_error(p, "run: label value is not valid UTF-8");
	mn_prom_gauge(p, "g", "caf\xe9", 1);
	expect_error(p, "g: HELP is not valid UTF-8");
	/* After a reset the builder works again. */
	mn_prom_gauge(p, "ok:rate", "h", 1);
	ck_assert_str_eq(text_of(p), "# HELP ok:rate h\n# TYPE ok:rate gauge\nok:rate 1\n");
	mn_prom_free(p);
}
END_TEST

START_TEST(write_replaces_the_file_atomically)
{
	char dir[MN_TEST_DIRLEN], path[PATH_MAX], err[MN_ERRLEN] = "", *buf = NULL;
	struct mn_prom *p = mn_prom_new();
	size_t len;

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/mnistd.prom", dir);
	mn_prom_gauge(p, "g", "h", 1);
	ck_assert_msg(mn_prom_write(p, path, err, sizeof(err)) == 0, "%s", err);
	mn_prom_reset(p);
	mn_prom_gauge(p, "g", "h", 2);
	ck_assert_msg(mn_prom_write(p, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(mn_read_file(path, 4096, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "# HELP g h\n# TYPE g gauge\ng 2\n");
	free(buf);
	/* No temporary file left over. */
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);
	/* A building error leaves the old file alone and names the file. */
	mn_prom_gauge(p, "bad name", "h", 3);
	ck_assert_int_eq(mn_prom_write(p, path, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "mnistd.prom"));
	ck_assert_int_eq(mn_read_file(path, 4096, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "# HELP g h\n# TYPE g gauge\ng 2\n");
	free(buf);
	/* A missing directory is an error naming the path. */
	mn_prom_reset(p);
	snprintf(path, sizeof(path), "%s/nodir/x.prom", dir);
	ck_assert_int_eq(mn_prom_write(p, path, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nodir"));
	mn_prom_free(p);
	mn_test_rmtree(dir);
}
END_TEST

static unsigned mode_of(const char *path)
{
	struct stat st;

	ck_assert_int_eq(stat(path, &st), 0);
	return st.st_mode & 07777;
}

/*
 * node-exporter runs as its own user (prometheus), so the file must be
 * readable by others whatever the writer's umask: the shipped units run with
 * UMask=0027, which would make a new file 0640, unreadable to it. A file left
 * unreadable by an older version is made readable too.
 */
START_TEST(write_is_readable_by_others_whatever_the_umask)
{
	char dir[MN_TEST_DIRLEN], path[PATH_MAX], err[MN_ERRLEN] = "";
	struct mn_prom *p = mn_prom_new();
	mode_t old = umask(0027);

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/mnistd.prom", dir);
	mn_prom_gauge(p, "g", "h", 1);
	ck_assert_msg(mn_prom_write(p, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(mode_of(path), 0644);
	ck_assert_int_eq(chmod(path, 0640), 0);
	ck_assert_msg(mn_prom_write(p, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(mode_of(path), 0644);
	umask(old);
	mn_prom_free(p);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(publish_reports_and_recovers)
{
	char dir[MN_TEST_DIRLEN], sub[PATH_MAX], path[PATH_MAX + 16];
	struct mn_prom *p = mn_prom_new();

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(sub, sizeof(sub), "%s/later", dir);
	snprintf(path, sizeof(path), "%s/x.prom", sub);
	mn_prom_gauge(p, "g", "h", 1);
	/* Failing twice (logged once), then succeeding once the directory exists. */
	ck_assert_int_eq(mn_prom_publish(p, path, "test.textfile"), -ENOENT);
	ck_assert_int_eq(mn_prom_publish(p, path, "test.textfile"), -ENOENT);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	ck_assert_int_eq(mn_prom_publish(p, path, "test.textfile"), 0);
	ck_assert_int_eq(access(path, R_OK), 0);
	mn_prom_free(p);
	mn_test_rmtree(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("prom");
	TCase *tc = mn_test_tcase(s, "prom", NULL, NULL);

	tcase_add_test(tc, gauge_and_counter);
	tcase_add_test(tc, special_values_and_exact_numbers);
	tcase_add_test(tc, constant_labels_are_escaped);
	tcase_add_test(tc, histogram_buckets_are_cumulative);
	tcase_add_test(tc, bad_input_is_a_sticky_error);
	tcase_add_test(tc, write_replaces_the_file_atomically);
	tcase_add_test(tc, write_is_readable_by_others_whatever_the_umask);
	tcase_add_test(tc, publish_reports_and_recovers);
	return mn_test_run(s);
}
