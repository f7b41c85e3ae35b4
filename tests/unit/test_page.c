/*
 * test_page.c - the evaluator's curves page (evaluator/page.c): its
 * configuration checks, and builds by a gnuplot child process on a real
 * libuv loop, from real metrics files into a real directory.
 *
 * gnuplot is found in PATH, so each test puts a directory of its own in
 * front of PATH, where some tests install a shell script called gnuplot: one
 * that notes each run and then runs the real gnuplot (so builds can be
 * counted), one that never ends (so a build is reliably running when the
 * test closes the builder), one that fails. The loop runs until what a test waits for has
 * happened, with a deadline and no sleeps; "idle" means no handle but
 * timers is left on the loop, so no gnuplot runs and none is being closed.
 */
#include "page.h"

#include <check.h>
#include <errno.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_uv.h"
#include "util.h"

#define READ_MAX         (64 << 20)
#define WAIT_MS          60000 /* gnuplot under the sanitizers on a busy machine */
#define PATHLEN          (MN_TEST_DIRLEN + 32)
#define POOL_THREADS     2
#define POOL_THREADS_STR "2"

static const char eval_lines[] =
    "{\"step\":100,\"accuracy\":0.5,\"loss\":1.5,\"checkpoint\":\"model.ckpt-100.safetensors\","
    "\"time\":\"2026-11-29T10:00:06.000Z\"}\n"
    "{\"step\":200,\"accuracy\":0.75,\"loss\":0.75,\"checkpoint\":\"model.ckpt-200.safetensors\","
    "\"time\":\"2026-11-29T10:00:09.000Z\"}\n";
static const char eval_third[] =
    "{\"step\":300,\"accuracy\":0.875,\"loss\":0.5,\"checkpoint\":\"model.ckpt-300.safetensors\","
    "\"time\":\"2026-11-29T10:00:12.000Z\"}\n";
static const char train_lines[] =
    "{\"step\":100,\"loss\":2.5,\"learning_rate\":0.5,\"steps_per_sec\":100,"
    "\"time\":\"2026-11-29T10:00:05.000Z\"}\n"
    "{\"step\":200,\"loss\":1.25,\"learning_rate\":0.25,\"steps_per_sec\":100,"
    "\"time\":\"2026-11-29T10:00:08.000Z\"}\n"
    "{\"step\":300,\"loss\":0.75,\"learning_rate\":0.125,\"steps_per_sec\":98.5,"
    "\"time\":\"2026-11-29T10:00:11.000Z\"}\n";

static char orig_path[8192];
static char tmpdir[MN_TEST_DIRLEN], bindir[PATHLEN], wwwdir[PATHLEN], logpath[PATHLEN];
static char runs[PATHLEN], pidfile[PATHLEN];
static uv_loop_t loop;
static struct mn_config cfg;

static void setup(void)
{
	char err[MN_ERRLEN], path[sizeof(orig_path) + PATHLEN];

	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(bindir, sizeof(bindir), "%s/bin", tmpdir);
	snprintf(wwwdir, sizeof(wwwdir), "%s/www", tmpdir);
	snprintf(logpath, sizeof(logpath), "%s/eval.log", tmpdir);
	snprintf(runs, sizeof(runs), "%s/runs", tmpdir);
	snprintf(pidfile, sizeof(pidfile), "%s/pid", tmpdir);
	ck_assert_int_eq(mkdir(bindir, 0755), 0);
	ck_assert_int_eq(mkdir(wwwdir, 0755), 0);
	snprintf(path, sizeof(path), "%s:%s", bindir, orig_path);
	ck_assert_int_eq(setenv("PATH", path, 1), 0);
	ck_assert_msg(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	mn_config_defaults(&cfg);
	snprintf(cfg.eval.metrics_file, sizeof(cfg.eval.metrics_file), "%s/eval.jsonl", tmpdir);
	snprintf(cfg.train.metrics_file, sizeof(cfg.train.metrics_file), "%s/train.jsonl", tmpdir);
	snprintf(cfg.eval.report_html, sizeof(cfg.eval.report_html), "%s/report.html", wwwdir);
}

static void teardown(void)
{
	/* Whatever the builder started must be closed by now: the loop has to be empty. */
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_log_close();
	ck_assert_int_eq(setenv("PATH", orig_path, 1), 0);
	mn_test_rmtree(tmpdir);
}

/* Installs bindir/gnuplot, a shell script with body. */
static void fake_gnuplot(const char *body)
{
	char path[PATHLEN + 16], script[sizeof(orig_path) + 1024];

	snprintf(path, sizeof(path), "%s/gnuplot", bindir);
	snprintf(script, sizeof(script), "#!/bin/sh\n%s", body);
	mn_test_write_file(path, script, strlen(script));
	ck_assert_int_eq(chmod(path, 0755), 0);
}

/* A gnuplot that notes its run in runs, then is the real one. */
static void counting_gnuplot(void)
{
	char body[sizeof(orig_path) + 512];

	snprintf(body, sizeof(body), "echo $$ >>'%s'\nexport PATH='%s'\nexec gnuplot \"$@\"\n",
	         runs, orig_path);
	fake_gnuplot(body);
}

static void write_file(const char *path, const char *text)
{
	mn_test_write_file(path, text, strlen(text));
}

/* Appends a line, as the evaluator adds one per evaluation. */
static void append(const char *path, const char *line)
{
	FILE *f = fopen(path, "a");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(line, f), 0);
	ck_assert_int_eq(fclose(f), 0);
}

static struct mne_page *make(void)
{
	struct mne_page *r = NULL;
	char err[MN_ERRLEN] = "";

	ck_assert_msg(mne_page_new(&loop, &cfg, &r, err, sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_nonnull(r);
	return r;
}

static void count_handle(uv_handle_t *h, void *arg)
{
	if (h->type != UV_TIMER)
		(*(int *)arg)++;
}

/*
 * No metrics are being read on a worker (a uv_work_t request, which
 * libuv counts in the loop's active_reqs), no gnuplot runs or is being
 * closed; and the file arg exists, unless arg is NULL.
 */
static bool idle(void *arg)
{
	int n = 0;

	uv_walk(&loop, count_handle, &n);
	return n == 0 && loop.active_reqs.count == 0 && (!arg || access(arg, F_OK) == 0);
}

static bool exists(void *arg)
{
	return access(arg, F_OK) == 0;
}

static char *read_text(const char *path)
{
	char err[MN_ERRLEN], *buf = NULL;
	size_t len;

	ck_assert_msg(mn_read_file(path, READ_MAX, &buf, &len, err, sizeof(err)) == 0, "%s", err);
	return buf;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* mne_page_new with report_html set to html: its return code and message. */
static int try_new(const char *html, const char *metrics, char *err, size_t errlen)
{
	struct mne_page *r = (struct mne_page *)&r; /* must be overwritten */
	int rc;

	snprintf(cfg.eval.report_html, sizeof(cfg.eval.report_html), "%s", html);
	snprintf(cfg.eval.metrics_file, sizeof(cfg.eval.metrics_file), "%s", metrics);
	err[0] = '\0';
	rc = mne_page_new(&loop, &cfg, &r, err, errlen);
	if (rc < 0)
		ck_assert_ptr_null(r);
	mne_page_close(r);
	return rc;
}

/*
 * A page needs the evaluations it draws and an existing directory to live
 * in; each configuration error is -EINVAL with a message that says which.
 * "" is off: no builder, and kick and close take the NULL.
 */
START_TEST(test_configuration_errors)
{
	char err[MN_ERRLEN], html[PATHLEN + 32], file[PATHLEN];
	struct mne_page *r = (struct mne_page *)&r;

	snprintf(cfg.eval.report_html, sizeof(cfg.eval.report_html), "%s", "");
	ck_assert_int_eq(mne_page_new(&loop, &cfg, &r, err, sizeof(err)), 0);
	ck_assert_ptr_null(r);
	mne_page_kick(NULL);
	mne_page_close(NULL);

	snprintf(html, sizeof(html), "%s/report.html", wwwdir);
	ck_assert_int_eq(try_new(html, "", err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "eval.report_html needs eval.metrics_file"), "%s", err);

	snprintf(html, sizeof(html), "%s/missing/report.html", tmpdir);
	ck_assert_int_eq(try_new(html, "m.jsonl", err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "/missing: No such file or directory"), "%s", err);

	snprintf(file, sizeof(file), "%s/file", tmpdir);
	write_file(file, "x");
	snprintf(html, sizeof(html), "%s/report.html", file);
	ck_assert_int_eq(try_new(html, "m.jsonl", err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "/file: not a directory"), "%s", err);

	snprintf(html, sizeof(html), "%s/", wwwdir);
	ck_assert_int_eq(try_new(html, "m.jsonl", err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "does not name a file"), "%s", err);

	/* A bare name lives in the working directory, which exists. */
	ck_assert_int_eq(try_new("report.html", "m.jsonl", err, sizeof(err)), 0);
}
END_TEST

/*
 * A directory that cannot be looked at is reported with the reason stat()
 * gave: below a mode 0000 directory, "Permission denied", even for root
 * without the DAC capabilities, whose access() still finds it.
 */
START_TEST(test_unreachable_directory_reports_why)
{
	char locked[PATHLEN], www[PATHLEN + 8], html[PATHLEN + 32], err[MN_ERRLEN];
	int rc;

	snprintf(locked, sizeof(locked), "%s/locked", tmpdir);
	snprintf(www, sizeof(www), "%s/www", locked);
	snprintf(html, sizeof(html), "%s/report.html", www);
	ck_assert_int_eq(mkdir(locked, 0755), 0);
	ck_assert_int_eq(mkdir(www, 0755), 0);
	ck_assert_int_eq(chmod(locked, 0), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	rc = try_new(html, "m.jsonl", err, sizeof(err));
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_int_eq(chmod(locked, 0755), 0);
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_msg(strstr(err, "/locked/www: Permission denied"), "%s", err);
}
END_TEST

/*
 * A kick draws the curves of both metrics files into a self-contained page
 * (inline SVG charts, one point per line) that reloads itself every
 * MNE_PAGE_REFRESH_S seconds, put in place without a temporary left over;
 * the next kick replaces it atomically.
 */
START_TEST(test_kick_builds_the_page)
{
	char refresh[64], err[MN_ERRLEN], *html;
	struct stat before, after;
	struct mne_page *r;
	size_t len;
	int fd;

	write_file(cfg.eval.metrics_file, eval_lines);
	write_file(cfg.train.metrics_file, train_lines);
	r = make();
	ck_assert(!mn_test_exists(wwwdir, "report.html")); /* nothing before a kick */
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, cfg.eval.report_html, WAIT_MS, "the page");
	html = read_text(cfg.eval.report_html);
	ck_assert_uint_eq(count(html, "<svg"), 4);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"2\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-loss\" data-points=\"2\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-training-loss\" data-points=\"3\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-learning-rate\" data-points=\"3\">"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-best-accuracy\">0.75</td>"));
	snprintf(refresh, sizeof(refresh), "<meta http-equiv=\"refresh\" content=\"%d\">",
	         MNE_PAGE_REFRESH_S);
	ck_assert_ptr_nonnull(strstr(html, refresh));
	ck_assert_ptr_nonnull(strstr(html, "</html>"));
	free(html);
	ck_assert_uint_eq(mn_test_count_entries(wwwdir), 1);

	/* The next kick replaces the page: a reader of the old one still has all of it. */
	fd = open(cfg.eval.report_html, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &before), 0);
	append(cfg.eval.metrics_file, eval_third);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the second page");
	ck_assert_int_eq(stat(cfg.eval.report_html, &after), 0);
	ck_assert(after.st_ino != before.st_ino);
	ck_assert_int_eq(mn_read_fd(fd, "old", READ_MAX, &html, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(close(fd), 0);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"2\">"));
	ck_assert_ptr_nonnull(strstr(html, "</html>"));
	free(html);
	html = read_text(cfg.eval.report_html);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"3\">"));
	free(html);
	ck_assert_uint_eq(mn_test_count_entries(wwwdir), 1);
	mne_page_close(r);
}
END_TEST

/*
 * Before the first evaluation a kick builds nothing and runs no gnuplot;
 * the page comes with the first evaluation, even with no training history.
 */
START_TEST(test_page_waits_for_the_first_evaluation)
{
	struct mne_page *r = make();
	char *html;

	counting_gnuplot();
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the look at no file");
	write_file(cfg.eval.metrics_file, "");
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the look at an empty file");
	ck_assert_uint_eq(mn_test_count_lines(runs, ""), 0);

	write_file(cfg.eval.metrics_file, eval_lines);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, cfg.eval.report_html, WAIT_MS, "the page");
	html = read_text(cfg.eval.report_html);
	ck_assert_uint_eq(count(html, "<svg"), 2);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"2\">"));
	ck_assert_ptr_null(strstr(html, "chart-training-loss"));
	free(html);
	ck_assert_uint_eq(mn_test_count_lines(runs, ""), 1);
	mne_page_close(r);
}
END_TEST

/*
 * Kicks while gnuplot runs collapse into exactly one more build, which reads
 * the metrics as they are by then.
 */
START_TEST(test_kicks_during_a_build_make_one_more)
{
	struct mne_page *r;
	char *html;

	counting_gnuplot();
	write_file(cfg.eval.metrics_file, eval_lines);
	write_file(cfg.train.metrics_file, train_lines);
	r = make();
	mne_page_kick(r);
	/* The build the kick started cannot be done before the loop turns. */
	ck_assert(!idle(NULL));
	append(cfg.eval.metrics_file, eval_third);
	mne_page_kick(r);
	mne_page_kick(r);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, cfg.eval.report_html, WAIT_MS, "both builds");
	ck_assert_uint_eq(mn_test_count_lines(runs, ""), 2);
	html = read_text(cfg.eval.report_html);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"3\">"));
	free(html);
	mne_page_close(r);
}
END_TEST

/*
 * Closing the builder while gnuplot runs kills gnuplot; the loop reaps it
 * (no zombie is left) and frees everything once its handles have closed; no
 * page appears.
 */
START_TEST(test_close_during_a_build_stops_gnuplot)
{
	char body[3 * PATHLEN + 64], *text;
	struct mne_page *r;
	pid_t pid;

	snprintf(body, sizeof(body), "echo $$ >'%s.tmp' && mv '%s.tmp' '%s'\nexec sleep 600\n",
	         pidfile, pidfile, pidfile);
	fake_gnuplot(body);
	write_file(cfg.eval.metrics_file, eval_lines);
	r = make();
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, exists, pidfile, WAIT_MS, "gnuplot started");
	text = read_text(pidfile);
	pid = (pid_t)atoi(text);
	free(text);
	ck_assert_int_gt(pid, 1);
	mne_page_close(r);
	/* Without the kill, this gnuplot would sleep past the deadline. */
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "gnuplot killed and its handles closed");
	/* Reaped by the loop before the handles closed: there is nothing left to wait for. */
	errno = 0;
	ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), -1);
	ck_assert_int_eq(errno, ECHILD);
	ck_assert(!mn_test_exists(wwwdir, "report.html"));
}
END_TEST

/* A gnuplot that fails is logged with its message and leaves the old page. */
START_TEST(test_failed_build_keeps_the_old_page)
{
	struct mne_page *r;
	char *before, *after, *log;

	write_file(cfg.eval.metrics_file, eval_lines);
	r = make();
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, cfg.eval.report_html, WAIT_MS, "the page");
	before = read_text(cfg.eval.report_html);
	fake_gnuplot("cat >/dev/null\necho 'line 9: no such terminal' >&2\nexit 1\n");
	append(cfg.eval.metrics_file, eval_third);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the failed build");
	after = read_text(cfg.eval.report_html);
	ck_assert_str_eq(after, before);
	log = read_text(logpath);
	ck_assert_msg(strstr(log, "eval.report_html: gnuplot failed (exit status 1): line 9: no "
	                          "such terminal"),
	              "%s", log);
	free(log);
	free(before);
	free(after);
	mne_page_close(r);
}
END_TEST

/*
 * A build reads only what was appended to the metrics files since the
 * build before, and draws all of it; a file replaced under its name is
 * read again from its start.
 */
START_TEST(test_a_build_reads_only_what_was_appended)
{
	const char *rest = strchr(train_lines, '\n') + 1; /* the lines after the first */
	char tmp[sizeof(cfg.train.metrics_file) + 8], *html;
	struct mne_page *r;

	write_file(cfg.eval.metrics_file, eval_lines);
	write_file(cfg.train.metrics_file, train_lines);
	r = make();
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, cfg.eval.report_html, WAIT_MS, "the page");
	ck_assert_uint_eq(mne_page_bytes_read(r), strlen(eval_lines) + strlen(train_lines));

	append(cfg.eval.metrics_file, eval_third);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the second page");
	ck_assert_uint_eq(mne_page_bytes_read(r), strlen(eval_third));
	html = read_text(cfg.eval.report_html);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"3\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-training-loss\" data-points=\"3\">"));
	free(html);

	/* A new training history (an atomic rewrite): read whole, drawn alone. */
	snprintf(tmp, sizeof(tmp), "%s.new", cfg.train.metrics_file);
	write_file(tmp, rest);
	ck_assert_int_eq(rename(tmp, cfg.train.metrics_file), 0);
	mne_page_kick(r);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the third page");
	ck_assert_uint_eq(mne_page_bytes_read(r), strlen(rest));
	html = read_text(cfg.eval.report_html);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-training-loss\" data-points=\"2\">"));
	free(html);
	mne_page_close(r);
}
END_TEST

/* A worker job that holds its thread until released: it fills the pool. */
static uv_sem_t hold_started, hold_release;

static void hold_work(uv_work_t *req)
{
	(void)req;
	uv_sem_post(&hold_started);
	uv_sem_wait(&hold_release);
}

static void hold_done(uv_work_t *req, int status)
{
	(void)status;
	free(req);
}

/*
 * Closing the builder while its read of the metrics waits for a worker
 * thread (every one of the pool busy) cancels it; closing it while the
 * read may run lets the read finish first. Either way nothing is left
 * (the sanitizer checks the memory), no gnuplot runs and no page appears.
 */
START_TEST(test_close_while_reading_the_metrics)
{
	struct mne_page *r;

	counting_gnuplot();
	write_file(cfg.eval.metrics_file, eval_lines);
	write_file(cfg.train.metrics_file, train_lines);
	ck_assert_int_eq(uv_sem_init(&hold_started, 0), 0);
	ck_assert_int_eq(uv_sem_init(&hold_release, 0), 0);
	for (int i = 0; i < POOL_THREADS; i++) {
		uv_work_t *w = calloc(1, sizeof(*w));

		ck_assert_ptr_nonnull(w);
		ck_assert_int_eq(uv_queue_work(&loop, w, hold_work, hold_done), 0);
	}
	for (int i = 0; i < POOL_THREADS; i++)
		uv_sem_wait(&hold_started);
	r = make();
	mne_page_kick(r);
	ck_assert(!idle(NULL));
	mne_page_close(r);
	for (int i = 0; i < POOL_THREADS; i++)
		uv_sem_post(&hold_release);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the cancelled read");
	uv_sem_destroy(&hold_started);
	uv_sem_destroy(&hold_release);

	r = make();
	mne_page_kick(r);
	mne_page_close(r);
	mne_page_kick(NULL);
	mn_test_uv_run_until(&loop, idle, NULL, WAIT_MS, "the read closed");
	ck_assert_uint_eq(mn_test_count_lines(runs, ""), 0);
	ck_assert(!mn_test_exists(wwwdir, "report.html"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("page");
	TCase *tc = mn_test_tcase(s, "page", setup, teardown);
	const char *path = getenv("PATH");

	/* The worker pool's size, for the test that fills it (read at its first use). */
	setenv("UV_THREADPOOL_SIZE", POOL_THREADS_STR, 1);
	/* gnuplot exiting before it has read its script must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	snprintf(orig_path, sizeof(orig_path), "%s", path ? path : "/usr/bin:/bin");
	MN_TEST_ADD(tc, test_configuration_errors, test_unreachable_directory_reports_why,
	            test_kick_builds_the_page, test_page_waits_for_the_first_evaluation,
	            test_kicks_during_a_build_make_one_more,
	            test_close_during_a_build_stops_gnuplot, test_failed_build_keeps_the_old_page,
	            test_a_build_reads_only_what_was_appended,
	            test_close_while_reading_the_metrics);
	return mn_test_run(s);
}
