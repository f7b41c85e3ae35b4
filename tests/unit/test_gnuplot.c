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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
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

	ck_assert_int_eq(mn_gnuplot_run(script, strlen(script), MN_GNUPLOT_TIMEOUT_MS, &out, &len,
	                                err, sizeof(err)),
	                 0);
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

	ck_assert_int_eq(mn_gnuplot_run(script, strlen(script), MN_GNUPLOT_TIMEOUT_MS, &out, &len,
	                                err, sizeof(err)),
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
	ck_assert_int_eq(
	    mn_gnuplot_run("plot x\n", 7, MN_GNUPLOT_TIMEOUT_MS, &out, &len, err, sizeof(err)),
	    -ENOENT);
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

/* A directory for a test's files and fake programs, removed by its caller. */
static void fake_dir(char *dir, size_t len)
{
	mn_test_tmpdir(dir, len);
}

/* Puts a shell script called gnuplot in dir and dir first in PATH; returns the old PATH. */
static char *fake_gnuplot(const char *dir, const char *body)
{
	char path[PATH_MAX], text[4096], *old = getenv("PATH"), *saved, newpath[8192];

	snprintf(path, sizeof(path), "%s/gnuplot", dir);
	snprintf(text, sizeof(text), "#!/bin/sh\n%s\n", body);
	mn_test_write_file(path, text, strlen(text));
	ck_assert_int_eq(chmod(path, 0755), 0);
	saved = strdup(old ? old : "/usr/bin:/bin");
	ck_assert_ptr_nonnull(saved);
	snprintf(newpath, sizeof(newpath), "%s:%s", dir, saved);
	ck_assert_int_eq(setenv("PATH", newpath, 1), 0);
	return saved;
}

static void restore_path(char *saved)
{
	ck_assert_int_eq(setenv("PATH", saved, 1), 0);
	free(saved);
}

/*
 * A user's ~/.gnuplot (here one that makes commas separate data columns)
 * must not change the charts: gnuplot runs with its default settings.
 */
START_TEST(init_files_are_ignored)
{
	static const char script[] = "$d << EOD\n1 2\n2 3\nEOD\nset terminal dumb size 40,12\n"
	                             "plot $d using 1:2 with lines title \"curve\"\n";
	char dir[MN_TEST_DIRLEN], rc[PATH_MAX + 16], *out = NULL, err[MN_ERRLEN] = "";
	char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
	size_t len;
	int r;

	fake_dir(dir, sizeof(dir));
	snprintf(rc, sizeof(rc), "%s/.gnuplot", dir);
	mn_test_write_file(rc, "set datafile separator \",\"\n", 27);
	ck_assert_int_eq(setenv("HOME", dir, 1), 0);
	r = mn_gnuplot_run(script, strlen(script), MN_GNUPLOT_TIMEOUT_MS, &out, &len, err,
	                   sizeof(err));
	if (old_home)
		setenv("HOME", old_home, 1);
	free(old_home);
	mn_test_rmtree(dir);
	ck_assert_msg(r == 0, "%s", err);
	ck_assert_ptr_nonnull(strstr(out, "curve"));
	free(out);
}
END_TEST

/*
 * A gnuplot that never finishes is killed at the timeout and reaped: an
 * error, no zombie, and the call returns.
 */
START_TEST(a_hanging_gnuplot_times_out)
{
	char dir[MN_TEST_DIRLEN], *out = NULL, err[MN_ERRLEN] = "", *path;
	uint64_t t0;
	size_t len;
	int r;

	fake_dir(dir, sizeof(dir));
	path = fake_gnuplot(dir, "exec sleep 600");
	t0 = uv_hrtime();
	r = mn_gnuplot_run("plot x\n", 7, 300, &out, &len, err, sizeof(err));
	restore_path(path);
	mn_test_rmtree(dir);
	ck_assert_int_eq(r, -ETIMEDOUT);
	ck_assert_ptr_null(out);
	ck_assert_msg(strstr(err, "did not finish within 0.3 s"), "%s", err);
	ck_assert_uint_lt(uv_hrtime() - t0, 30ull * 1000000000);
	errno = 0;
	ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
	ck_assert_int_eq(errno, ECHILD);
}
END_TEST

/*
 * A gnuplot that exits but leaves a process of its own holding its output
 * open gets no more time than one that hangs.
 */
START_TEST(an_inherited_output_does_not_hang)
{
	char dir[MN_TEST_DIRLEN], body[PATH_MAX + 64], pidfile[PATH_MAX], pidtext[32] = "";
	char *out = NULL, err[MN_ERRLEN] = "", *path;
	size_t len;
	FILE *f;
	int r;

	fake_dir(dir, sizeof(dir));
	snprintf(pidfile, sizeof(pidfile), "%s/pid", dir);
	snprintf(body, sizeof(body), "sleep 600 & echo $! > %s\nexit 0", pidfile);
	path = fake_gnuplot(dir, body);
	r = mn_gnuplot_run("plot x\n", 7, 300, &out, &len, err, sizeof(err));
	restore_path(path);
	f = fopen(pidfile, "r");
	if (f) {
		if (fgets(pidtext, sizeof(pidtext), f) && atoi(pidtext) > 0)
			kill(atoi(pidtext), SIGKILL);
		fclose(f);
	}
	mn_test_rmtree(dir);
	ck_assert_int_eq(r, -ETIMEDOUT);
	ck_assert_ptr_null(out);
}
END_TEST

/* gnuplot's error is its last line, even after many lines of warnings. */
START_TEST(the_error_is_the_last_line_after_many_warnings)
{
	char dir[MN_TEST_DIRLEN], *out = NULL, err[MN_ERRLEN] = "", *path;
	size_t len;
	int r;

	fake_dir(dir, sizeof(dir));
	path = fake_gnuplot(dir, "cat >/dev/null\n"
	                         "i=0; while [ $i -lt 2000 ]; do echo \"warning: number $i\" >&2; "
	                         "i=$((i+1)); done\n"
	                         "echo '\"-\" line 7: the real error' >&2\nexit 1");
	r = mn_gnuplot_run("plot x\n", 7, MN_GNUPLOT_TIMEOUT_MS, &out, &len, err, sizeof(err));
	restore_path(path);
	mn_test_rmtree(dir);
	ck_assert_int_eq(r, -EIO);
	ck_assert_msg(strstr(err, "the real error"), "%s", err);
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
	            init_files_are_ignored, a_hanging_gnuplot_times_out,
	            an_inherited_output_does_not_hang,
	            the_error_is_the_last_line_after_many_warnings, missing_gnuplot_is_enoent);
	return mn_test_run(s);
}
