/* test_gnuplot.c - the real gnuplot as a child process: output, errors, absence. */
#include "gnuplot.h"

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "mn_test.h"
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

int main(void)
{
	Suite *s = suite_create("gnuplot");

	/* gnuplot exiting before it has read its script must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	MN_TEST_ADD(mn_test_tcase(s, "gnuplot", NULL, NULL), runs_a_script,
	            a_bad_script_reports_gnuplot_s_message, missing_gnuplot_is_enoent);
	return mn_test_run(s);
}
