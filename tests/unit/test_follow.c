/* test_follow.c - following a growing file of lines on a real libuv loop and real files. */
#include "follow.h"

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "mn_test.h"
#include "log.h"
#include "util.h"

#define MAXLINES 64

static char dir[MN_TEST_DIRLEN];
static char path[MN_TEST_DIRLEN + 32];
static uv_loop_t loop;

/* What the callbacks saw. */
static struct {
	char lines[MAXLINES][64];
	size_t n;
	int resets;
	char why[64];
	struct mn_follow *close_on_line; /* closes this follower from the first line */
} seen;

static void on_line(const char *line, size_t len, void *arg)
{
	(void)arg;
	ck_assert_uint_eq(strlen(line), len);
	ck_assert_uint_lt(seen.n, MAXLINES);
	snprintf(seen.lines[seen.n++], sizeof(seen.lines[0]), "%s", line);
	if (seen.close_on_line)
		mn_follow_close(seen.close_on_line);
	seen.close_on_line = NULL;
}

static void on_reset(const char *why, void *arg)
{
	(void)arg;
	seen.resets++;
	snprintf(seen.why, sizeof(seen.why), "%s", why);
}

static void tick(uv_timer_t *h)
{
	(void)h;
}

/*
 * Runs the loop until at least n lines were seen (n > 0) or ms milliseconds
 * passed. A tick keeps the loop waking up, so the deadline is checked even
 * without events.
 */
static void run_loop(size_t n, int64_t ms)
{
	uv_timer_t t;
	int64_t end = mn_monotonic_ns() + ms * 1000000;

	uv_timer_init(&loop, &t);
	uv_timer_start(&t, tick, 5, 5);
	while ((n == 0 || seen.n < n) && mn_monotonic_ns() < end)
		uv_run(&loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(&loop, UV_RUN_NOWAIT);
}

static void run_until_lines(size_t n)
{
	run_loop(n, 30000);
	ck_assert_uint_ge(seen.n, n);
}

/* Runs the loop a while, to show that nothing (more) arrives. */
static void run_turns(int ms)
{
	run_loop(0, ms);
}

static void append(const char *p, const char *text)
{
	FILE *fp = fopen(p, "a");

	ck_assert_ptr_nonnull(fp);
	ck_assert_int_eq(fputs(text, fp) >= 0, 1);
	ck_assert_int_eq(fclose(fp), 0);
}

static struct mn_follow *start(const char *p, enum mn_watch_mode mode, uint64_t interval_ms,
                               size_t max_line)
{
	struct mn_follow_params fp = {
	    .path = p,
	    .mode = mode,
	    .poll_interval_ms = interval_ms,
	    .max_line = max_line,
	    .on_line = on_line,
	    .on_reset = on_reset,
	};
	struct mn_follow *f = NULL;
	char err[MN_ERRLEN];

	ck_assert_int_eq(mn_follow_start(&loop, &fp, &f, err, sizeof(err)), 0);
	return f;
}

static void stop(struct mn_follow *f)
{
	mn_follow_close(f);
	uv_run(&loop, UV_RUN_DEFAULT);
}

static void setup(void)
{
	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/metrics.jsonl", dir);
	memset(&seen, 0, sizeof(seen));
	ck_assert_int_eq(uv_loop_init(&loop), 0);
}

static void teardown(void)
{
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_test_rmtree(dir);
}

START_TEST(complete_lines_only)
{
	struct mn_follow *f;

	append(path, "one\ntwo\npar");
	f = start(path, MN_WATCH_AUTO, 3600000, 0);
	run_until_lines(2);
	ck_assert_str_eq(seen.lines[0], "one");
	ck_assert_str_eq(seen.lines[1], "two");
	run_turns(50);
	ck_assert_uint_eq(seen.n, 2);
	append(path, "tial\n\nlast\n");
	run_until_lines(5);
	ck_assert_str_eq(seen.lines[2], "partial");
	ck_assert_str_eq(seen.lines[3], "");
	ck_assert_str_eq(seen.lines[4], "last");
	ck_assert_int_eq(seen.resets, 0);
	stop(f);
}
END_TEST

/* A poll interval of an hour: only filesystem events can bring these lines in time. */
START_TEST(events_deliver_without_polling)
{
	struct mn_follow *f;

	append(path, "a\n");
	f = start(path, MN_WATCH_EVENTS, 3600000, 0);
	run_until_lines(1);
	ck_assert_int_eq(mn_follow_uses_events(f), 1);
	append(path, "b\n");
	run_until_lines(2);
	ck_assert_str_eq(seen.lines[1], "b");
	stop(f);
}
END_TEST

START_TEST(poll_mode)
{
	struct mn_follow *f;

	f = start(path, MN_WATCH_POLL, 20, 0);
	run_turns(30);
	ck_assert_int_eq(mn_follow_uses_events(f), 0);
	append(path, "polled\n");
	run_until_lines(1);
	ck_assert_str_eq(seen.lines[0], "polled");
	stop(f);
}
END_TEST

START_TEST(missing_directory_then_file)
{
	char sub[sizeof(path) + 16], p[sizeof(sub) + 16];
	struct mn_follow *f;

	snprintf(sub, sizeof(sub), "%s/later", dir);
	snprintf(p, sizeof(p), "%s/m.jsonl", sub);
	f = start(p, MN_WATCH_AUTO, 20, 0);
	run_turns(50);
	ck_assert_uint_eq(seen.n, 0);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	append(p, "first\n");
	run_until_lines(1);
	ck_assert_str_eq(seen.lines[0], "first");
	ck_assert_int_eq(seen.resets, 0);
	stop(f);
}
END_TEST

START_TEST(truncation_restarts)
{
	struct mn_follow *f;

	append(path, "long line one\nlong line two\n");
	f = start(path, MN_WATCH_AUTO, 20, 0);
	run_until_lines(2);
	ck_assert_int_eq(truncate(path, 0), 0);
	append(path, "x\n");
	run_until_lines(3);
	ck_assert_str_eq(seen.lines[2], "x");
	ck_assert_int_eq(seen.resets, 1);
	ck_assert_str_eq(seen.why, "was truncated");
	stop(f);
}
END_TEST

/*
 * What jsonl.c does after a short write: the partial line is cut off again
 * and the next record is written where it began. A follower that read the
 * partial line must read that place again, not glue the new line's tail to
 * the old line's head (which parses: step 1000 with step 2000's accuracy).
 */
START_TEST(cut_partial_line_is_read_again)
{
	const char *a = "{\"step\":1000,\"accuracy\":0.5111,\"loss\":9}\n";
	const char *b = "{\"step\":2000,\"accuracy\":0.8222,\"loss\":1}\n";
	struct stat st;
	struct mn_follow *f;

	append(path, "{\"step\":0,\"accuracy\":0.1,\"loss\":1}\n");
	f = start(path, MN_WATCH_POLL, 3600000, 0);
	run_until_lines(1);
	ck_assert_int_eq(stat(path, &st), 0);
	/* Half of a, read by the follower as a partial line. */
	{
		char half[64];

		snprintf(half, sizeof(half), "%.*s", 25, a);
		append(path, half);
	}
	mn_follow_check(f);
	ck_assert_uint_eq(seen.n, 1);
	/* Cut off again, and b written in its place before the follower looks. */
	ck_assert_int_eq(truncate(path, st.st_size), 0);
	append(path, b);
	mn_follow_check(f);
	ck_assert_uint_eq(seen.n, 2);
	ck_assert_str_eq(seen.lines[1], "{\"step\":2000,\"accuracy\":0.8222,\"loss\":1}");
	ck_assert_int_eq(seen.resets, 0);
	/* And a partial line that is merely continued still comes whole. */
	append(path, "{\"step\":30");
	mn_follow_check(f);
	append(path, "00}\n");
	mn_follow_check(f);
	ck_assert_uint_eq(seen.n, 3);
	ck_assert_str_eq(seen.lines[2], "{\"step\":3000}");
	stop(f);
}
END_TEST

/* logrotate: the old file gets one more line, is renamed away, and a new one takes its name. */
START_TEST(rotation_finishes_the_old_file_first)
{
	char old[sizeof(path) + 8], tmp[sizeof(path) + 8];
	struct mn_follow *f;

	snprintf(old, sizeof(old), "%s.1", path);
	snprintf(tmp, sizeof(tmp), "%s/.new", dir);
	append(path, "a\n");
	f = start(path, MN_WATCH_AUTO, 20, 0);
	run_until_lines(1);
	append(path, "b\n");
	ck_assert_int_eq(rename(path, old), 0);
	append(tmp, "c\n");
	ck_assert_int_eq(rename(tmp, path), 0);
	run_until_lines(3);
	ck_assert_str_eq(seen.lines[1], "b");
	ck_assert_str_eq(seen.lines[2], "c");
	ck_assert_int_eq(seen.resets, 1);
	ck_assert_str_eq(seen.why, "was replaced");
	stop(f);
}
END_TEST

START_TEST(removed_then_recreated)
{
	struct mn_follow *f;

	append(path, "a\n");
	f = start(path, MN_WATCH_AUTO, 20, 0);
	run_until_lines(1);
	ck_assert_int_eq(unlink(path), 0);
	run_turns(50);
	append(path, "again\n");
	run_until_lines(2);
	ck_assert_str_eq(seen.lines[1], "again");
	ck_assert_int_eq(seen.resets, 1);
	stop(f);
}
END_TEST

START_TEST(overlong_lines_are_skipped)
{
	struct mn_follow *f;

	append(path, "12345678\n123456789\nabc");
	f = start(path, MN_WATCH_AUTO, 20, 8);
	run_until_lines(1);
	ck_assert_str_eq(seen.lines[0], "12345678");
	/* The overlong line continues in a later write: still skipped, then back to normal. */
	append(path, "defghijk\nok\n");
	run_until_lines(2);
	ck_assert_str_eq(seen.lines[1], "ok");
	run_turns(50);
	ck_assert_uint_eq(seen.n, 2);
	stop(f);
}
END_TEST

/* A FIFO under the name would block a plain open or read forever. */
START_TEST(fifo_is_waited_out)
{
	struct mn_follow *f;

	ck_assert_int_eq(mkfifo(path, 0600), 0);
	f = start(path, MN_WATCH_AUTO, 20, 0);
	run_turns(100);
	ck_assert_uint_eq(seen.n, 0);
	ck_assert_int_eq(unlink(path), 0);
	append(path, "regular\n");
	run_until_lines(1);
	ck_assert_str_eq(seen.lines[0], "regular");
	stop(f);
}
END_TEST

START_TEST(close_from_a_callback)
{
	struct mn_follow *f;

	append(path, "one\ntwo\nthree\n");
	f = start(path, MN_WATCH_AUTO, 20, 0);
	seen.close_on_line = f;
	run_until_lines(1);
	run_turns(50);
	ck_assert_uint_eq(seen.n, 1);
}
END_TEST

START_TEST(bad_parameters)
{
	struct mn_follow_params fp = {.path = path, .poll_interval_ms = 10, .on_line = on_line};
	struct mn_follow *f = (struct mn_follow *)1;
	char err[MN_ERRLEN];

	fp.path = "dir/";
	ck_assert_int_eq(mn_follow_start(&loop, &fp, &f, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(f);
	fp.path = path;
	fp.poll_interval_ms = 0;
	ck_assert_int_eq(mn_follow_start(&loop, &fp, &f, err, sizeof(err)), -EINVAL);
	fp.poll_interval_ms = 10;
	fp.max_line = MN_FOLLOW_LINE_MAX + 1;
	ck_assert_int_eq(mn_follow_start(&loop, &fp, &f, err, sizeof(err)), -EINVAL);
	mn_follow_close(NULL);
}
END_TEST

/*
 * A file that cannot be opened (chmod 000, another user's) is said once,
 * not at every check: a follower checks every poll interval for weeks.
 * Readable again, it is read.
 */
START_TEST(unreadable_file_is_said_once)
{
	char log[MN_TEST_DIRLEN + 32], err[MN_ERRLEN];
	struct mn_follow *f;

	snprintf(log, sizeof(log), "%s/follow.log", dir);
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	append(path, "one\n");
	ck_assert_int_eq(chmod(path, 0), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	f = start(path, MN_WATCH_POLL, 3600000, 0);
	for (int i = 0; i < 5; i++)
		mn_follow_check(f);
	ck_assert_uint_eq(mn_test_count_lines(log, "cannot open"), 1);
	ck_assert_int_eq(chmod(path, 0644), 0);
	mn_follow_check(f);
	ck_assert_uint_eq(seen.n, 1);
	ck_assert_str_eq(seen.lines[0], "one");
	/* Its directory made unsearchable: said once too, not waited on in silence. */
	ck_assert_int_eq(unlink(path), 0);
	mn_follow_check(f);
	ck_assert_int_eq(chmod(dir, 0600), 0);
	for (int i = 0; i < 5; i++)
		mn_follow_check(f);
	ck_assert_int_eq(chmod(dir, 0700), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_uint_eq(mn_test_count_lines(log, "Permission denied"), 2);
	stop(f);
	mn_log_close();
}
END_TEST

/*
 * The directory unsearchable for a moment: the file open is still the
 * file, not a replacement, so nothing is read twice and no reset is made.
 */
START_TEST(unsearchable_directory_is_no_replacement)
{
	struct mn_follow *f;

	append(path, "one\n");
	f = start(path, MN_WATCH_POLL, 3600000, 0);
	mn_follow_check(f);
	ck_assert_uint_eq(seen.n, 1);
	ck_assert_int_eq(chmod(dir, 0600), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	mn_follow_check(f);
	mn_follow_check(f);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_int_eq(chmod(dir, 0700), 0);
	append(path, "two\n");
	mn_follow_check(f);
	ck_assert_int_eq(seen.resets, 0);
	ck_assert_uint_eq(seen.n, 2);
	ck_assert_str_eq(seen.lines[1], "two");
	stop(f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("follow");
	TCase *tc = mn_test_tcase(s, "follow", setup, teardown);

	MN_TEST_ADD(tc, complete_lines_only, events_deliver_without_polling, poll_mode,
	            missing_directory_then_file, truncation_restarts,
	            rotation_finishes_the_old_file_first, removed_then_recreated,
	            overlong_lines_are_skipped, fifo_is_waited_out, close_from_a_callback,
	            bad_parameters, unreadable_file_is_said_once,
	            unsearchable_directory_is_no_replacement, cut_partial_line_is_read_again);
	return mn_test_run(s);
}
