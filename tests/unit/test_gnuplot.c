/*
 * test_gnuplot.c - the real gnuplot as a child process: output, errors,
 * absence, and cancelling one that runs.
 */
#include "gnuplot.h"

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <uv.h>

#include "mn_test.h"
#include "mn_test_uv.h"
#include "util.h"

START_TEST(runs_a_script)
{
	static const char script[] =
	    "$d << EOD\n1 2\n2 3\nEOD\nset terminal dumb size 40,12\n"
	    "plot $d using 1:2 with lines title \"curve\"\nprint \"done\"\n";
	char *out, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_gnuplot_run(script, strlen(script), &out, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(strlen(out), len);
	ck_assert_ptr_nonnull(strstr(out, "curve"));
	free(out);
}
END_TEST

START_TEST(a_bad_script_reports_gnuplot_s_message)
{
	static const char script[] = "plot $nothing using 1:2\n";
	char *out, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_gnuplot_run(script, strlen(script), &out, &len, err, sizeof(err)),
	                 -EIO);
	ck_assert_ptr_null(out);
	ck_assert_ptr_nonnull(strstr(err, "gnuplot failed (exit status 1)"));
	ck_assert_ptr_nonnull(strstr(err, "no datablock named $nothing"));
}
END_TEST

START_TEST(missing_gnuplot_is_enoent)
{
	char *out, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(setenv("PATH", "/nonexistent", 1), 0);
	ck_assert_int_eq(mn_gnuplot_run("plot x\n", 7, &out, &len, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "gnuplot is not installed"));
}
END_TEST

static void not_after_cancel(void *arg, int status, const char *out, size_t len, const char *error)
{
	(void)arg;
	(void)out;
	(void)len;
	ck_abort_msg("cb called after mn_gnuplot_cancel: status %d %s", status, error);
}

static void count_handle(uv_handle_t *h, void *arg)
{
	if (h->type != UV_TIMER)
		(*(int *)arg)++;
}

/* Nothing but timers is left on the loop arg. */
static bool only_timers(void *arg)
{
	int n = 0;

	uv_walk(arg, count_handle, &n);
	return n == 0;
}

/*
 * Cancelling a gnuplot that would run for ten minutes kills it, and the
 * loop reaps it before its handles are closed: no child is left behind, not
 * even a zombie, and cb is never called.
 */
START_TEST(cancel_kills_and_reaps_gnuplot)
{
	static const char script[] = "pause 600\n";
	struct mn_gnuplot *g = NULL;
	char err[MN_ERRLEN] = "";
	uv_loop_t loop;

	ck_assert_int_eq(uv_loop_init(&loop), 0);
	ck_assert_msg(mn_gnuplot_start(&loop, script, strlen(script), not_after_cancel, NULL, &g,
	                               err, sizeof(err)) == 0,
	              "%s", err);
	ck_assert_ptr_nonnull(g);
	mn_gnuplot_cancel(g);
	mn_test_uv_run_until(&loop, only_timers, &loop, 60000, "gnuplot's handles closed");
	/* gnuplot was this process's only child, and is gone: waitpid has nothing to wait for. */
	errno = 0;
	ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
	ck_assert_int_eq(errno, ECHILD);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gnuplot");

	/* gnuplot exiting before it has read its script must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	/* missing_gnuplot_is_enoent comes last: it empties PATH (for good with CK_FORK=no). */
	MN_TEST_ADD(mn_test_tcase(s, "gnuplot", NULL, NULL), runs_a_script,
	            a_bad_script_reports_gnuplot_s_message, cancel_kills_and_reaps_gnuplot,
	            missing_gnuplot_is_enoent);
	return mn_test_run(s);
}
