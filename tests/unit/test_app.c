/* test_app.c - the programs' shared scaffolding: start, signals, data split, reload, close. */
#include "app.h"
#include "gnuplot.h"
#include "log.h"
#include "util.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "mn_test.h"

static char tmpdir[PATH_MAX];
static char cfgpath[PATH_MAX + 32];

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(cfgpath, sizeof(cfgpath), "%s/mnistd.json", tmpdir);
}

static void teardown(void)
{
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

static void write_config(const char *json)
{
	mn_test_write_file(cfgpath, json, strlen(json));
}

static struct mn_app app_for(const char *config_path)
{
	return (struct mn_app){.name = "test_app", .config_path = config_path};
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Writes an uncompressed training set of n 2x2 images (labels 0..n-1 mod 10) into tmpdir. */
static void write_train_set(uint32_t n)
{
	uint8_t img[16 + 4 * 16], lab[8 + 16];
	char path[PATH_MAX + 64];

	ck_assert_uint_le(n, 16);
	memset(img, 7, sizeof(img));
	put_be32(img, 0x0803);
	put_be32(img + 4, n);
	put_be32(img + 8, 2);
	put_be32(img + 12, 2);
	put_be32(lab, 0x0801);
	put_be32(lab + 4, n);
	for (uint32_t i = 0; i < n; i++)
		lab[8 + i] = (uint8_t)(i % 10);
	snprintf(path, sizeof(path), "%s/train-images-idx3-ubyte", tmpdir);
	mn_test_write_file(path, img, 16 + 4 * (size_t)n);
	snprintf(path, sizeof(path), "%s/train-labels-idx1-ubyte", tmpdir);
	mn_test_write_file(path, lab, 8 + (size_t)n);
}

/* Writes a configuration whose data.dir is tmpdir, with the given validation_size. */
static void write_data_config(int validation_size)
{
	char json[PATH_MAX + 128];

	snprintf(json, sizeof(json), "{\"data\": {\"dir\": \"%s\", \"validation_size\": %d}}",
	         tmpdir, validation_size);
	write_config(json);
}

START_TEST(test_start_loads_config_and_ignores_sigpipe)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	struct sigaction sa;
	int ex = -1;

	write_config("{\"train\": {\"max_steps\": 123}, \"log\": {\"level\": \"warn\"}}");
	signal(SIGPIPE, SIG_DFL);
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(a.cfg.train.max_steps, 123);
	ck_assert_int_eq(mn_log_get_level(), MN_LOG_WARN);
	ck_assert_int_eq(sigaction(SIGPIPE, NULL, &sa), 0);
	ck_assert_ptr_eq(sa.sa_handler, SIG_IGN);
	mn_app_end(&a);
}
END_TEST

START_TEST(test_start_terminal_shows_info)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {.terminal = true};
	int ex = -1;

	write_config("{\"log\": {\"level\": \"error\"}}");
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(mn_log_get_level(), MN_LOG_INFO);
	ck_assert_int_eq(a.cfg.log.level, MN_LOG_ERROR);
	mn_app_end(&a);
}
END_TEST

START_TEST(test_start_check_only_ends_with_ok)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {.check_only = true};
	int ex = -1;

	write_config("{}");
	ck_assert(!mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(ex, MN_EX_OK);
}
END_TEST

START_TEST(test_start_bad_config_is_ex_config)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {.check_only = true};
	int ex = -1;

	write_config("{\"train\": {\"max_stepz\": 1}}");
	ck_assert(!mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(ex, MN_EX_CONFIG);

	/* A missing file too, and a log file that cannot be opened. */
	a = app_for("/nonexistent/mnistd.json");
	ex = -1;
	ck_assert(!mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(ex, MN_EX_CONFIG);
	a = app_for(cfgpath);
	p.check_only = false;
	write_config("{\"log\": {\"file\": \"/nonexistent/dir/x.log\"}}");
	ex = -1;
	ck_assert(!mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(ex, MN_EX_CONFIG);
}
END_TEST

START_TEST(test_load_split)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	struct mn_view train, validation;
	int ex = -1;

	write_train_set(10);
	write_data_config(4);
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(mn_app_load_split(&a, "training", &train, &validation), MN_EX_OK);
	ck_assert_uint_eq(validation.count, 4);
	ck_assert_uint_eq(train.count, 6);
	ck_assert_uint_eq(train.dim, 4);
	ck_assert_ptr_nonnull(a.data);
	mn_app_end(&a);
	ck_assert_ptr_null(a.data);
}
END_TEST

START_TEST(test_load_split_errors_map_to_exit_statuses)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	struct mn_view validation;
	char path[PATH_MAX + 64];
	int ex = -1;

	/* No files: EX_NOINPUT. */
	write_data_config(4);
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(mn_app_load_split(&a, "validation", NULL, &validation), MN_EX_NOINPUT);
	mn_app_end(&a);

	/* A split that leaves no training images: a configuration error. */
	write_train_set(4);
	a = app_for(cfgpath);
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(mn_app_load_split(&a, "validation", NULL, &validation), MN_EX_CONFIG);
	mn_app_end(&a);

	/* A file that is there but broken: a data error (EX_DATAERR), which no restart fixes. */
	snprintf(path, sizeof(path), "%s/train-labels-idx1-ubyte", tmpdir);
	mn_test_write_file(path, "garbage", 7);
	write_data_config(1);
	a = app_for(cfgpath);
	ck_assert(mn_app_start(&a, &p, &ex));
	ck_assert_int_eq(mn_app_load_split(&a, "validation", NULL, &validation), MN_EX_DATAERR);
	mn_app_end(&a);
}
END_TEST

struct signal_seen {
	int signum;
	int calls;
};

static void on_signal(uv_signal_t *h, int signum)
{
	struct signal_seen *s = h->data;

	s->signum = signum;
	s->calls++;
	uv_stop(h->loop);
}

START_TEST(test_signals_reach_their_callbacks)
{
	struct mn_app a = app_for(cfgpath);
	struct signal_seen stop = {0}, hup = {0};

	/* Both callbacks get the same data pointer; tell them apart by signal number. */
	ck_assert_int_eq(mn_app_loop_start(&a, true, on_signal, on_signal, &stop), 0);
	ck_assert(a.loop_ready);
	ck_assert(a.signals_ready);
	ck_assert_ptr_eq(a.sig_hup.data, &stop);
	a.sig_hup.data = &hup;
	raise(SIGHUP);
	uv_run(&a.loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(hup.calls, 1);
	ck_assert_int_eq(hup.signum, SIGHUP);
	raise(SIGTERM);
	uv_run(&a.loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(stop.calls, 1);
	ck_assert_int_eq(stop.signum, SIGTERM);
	raise(SIGINT);
	uv_run(&a.loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(stop.calls, 2);
	ck_assert_int_eq(stop.signum, SIGINT);

	/* Unreferenced, the signals no longer keep the loop alive, yet are still caught. */
	mn_app_signals_unref(&a);
	ck_assert_int_eq(uv_run(&a.loop, UV_RUN_DEFAULT), 0);
	raise(SIGTERM);
	uv_run(&a.loop, UV_RUN_NOWAIT);
	mn_app_loop_close(&a);
	ck_assert(!a.loop_ready);
	mn_app_loop_close(&a); /* a second close does nothing */
	/* A stop signal while the program tidies up after its loop does not kill it. */
	raise(SIGTERM);
	raise(SIGINT);
	raise(SIGHUP);
}
END_TEST

/*
 * A service is started before its loop catches signals: a reload or a stop
 * then must neither kill it nor be lost, but reach the loop's callbacks.
 */
START_TEST(test_signals_before_the_loop_are_held)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	struct signal_seen stop = {0}, hup = {0};
	int ex = -1;

	write_config("{}");
	ck_assert(mn_app_start(&a, &p, &ex));
	raise(SIGTERM);
	raise(SIGHUP);
	raise(SIGTERM); /* one stop, however often it is asked for */
	ck_assert_int_eq(mn_app_loop_start(&a, true, on_signal, on_signal, &stop), 0);
	a.sig_hup.data = &hup;
	while (hup.calls + stop.calls < 2)
		uv_run(&a.loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(hup.calls, 1);
	ck_assert_int_eq(stop.calls, 1);
	ck_assert_int_eq(stop.signum, SIGTERM);
	mn_app_loop_close(&a);
	mn_app_end(&a);
}
END_TEST

/* A command (no signals) held a stop back: it ends by it, as it would have at once. */
START_TEST(test_stop_held_ends_a_command)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	int ex = -1;

	write_config("{}");
	ck_assert(mn_app_start(&a, &p, &ex));
	raise(SIGTERM);
	mn_app_loop_start(&a, false, NULL, NULL, NULL);
	ck_abort_msg("still running after a held SIGTERM");
}
END_TEST

START_TEST(test_loop_without_signals)
{
	struct mn_app a = app_for(cfgpath);

	ck_assert_int_eq(mn_app_loop_start(&a, false, NULL, NULL, NULL), 0);
	ck_assert(a.loop_ready);
	ck_assert(!a.signals_ready);
	mn_app_signals_unref(&a); /* nothing to unref */
	mn_app_loop_close(&a);
}
END_TEST

static void not_called(void *arg, int status, const char *out, size_t len, const char *error)
{
	ck_abort_msg("a cancelled gnuplot reported its end");
}

/*
 * mn_app_loop_close right after a child was killed (an early exit with a
 * gnuplot running): the child is reaped and its owner's memory freed
 * (LeakSanitizer), not left a zombie by its handle closed from outside.
 */
START_TEST(test_loop_close_reaps_a_killed_child)
{
	static const char script[] = "pause 600\n";
	struct mn_app a = app_for(cfgpath);
	struct mn_gnuplot *g = NULL;
	char err[MN_ERRLEN] = "";

	ck_assert_int_eq(mn_app_loop_start(&a, false, NULL, NULL, NULL), 0);
	ck_assert_msg(mn_gnuplot_start(&a.loop, script, strlen(script), not_called, NULL, &g, err,
	                               sizeof(err)) == 0,
	              "%s", err);
	mn_gnuplot_cancel(g);
	mn_app_loop_close(&a);
	errno = 0;
	ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
	ck_assert_int_eq(errno, ECHILD);
}
END_TEST

START_TEST(test_reload_sorts_keys_by_what_they_are_to_the_program)
{
	struct mn_app a = app_for(cfgpath);
	struct mn_app_start_params p = {0};
	struct mn_app_reloaded r;
	struct mn_config next;
	char err[MN_ERRLEN];
	int ex = -1;

	a.user = MN_CONFIG_TRAINER;
	write_config("{}");
	ck_assert(mn_app_start(&a, &p, &ex));
	/* Reloadable and used; used, restart only; the evaluator's, reloadable and not. */
	write_config("{\"train\": {\"learning_rate\": 0.5}, \"model\": {\"seed\": 7},"
	             " \"eval\": {\"use_ema\": false, \"keep_best\": 3}}");
	ck_assert_int_eq(mn_app_reload_config(&a, &r, &next, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.n[MN_CONFIG_APPLY], 1);
	ck_assert_str_eq(r.keys[MN_CONFIG_APPLY][0], "train.learning_rate");
	ck_assert_uint_eq(r.n[MN_CONFIG_RESTART], 1);
	ck_assert_str_eq(r.keys[MN_CONFIG_RESTART][0], "model.seed");
	ck_assert_uint_eq(r.n[MN_CONFIG_UNUSED], 2);
	ck_assert_str_eq(r.keys[MN_CONFIG_UNUSED][0], "eval.use_ema");
	ck_assert_str_eq(r.keys[MN_CONFIG_UNUSED][1], "eval.keep_best");
	ck_assert_double_eq(a.cfg.train.learning_rate, 0.5);
	ck_assert_uint_eq(a.cfg.model.seed, 42);
	ck_assert_uint_eq(next.model.seed, 7);
	/* What the program does not use is taken as seen: the same file again lists it no more. */
	ck_assert_int_eq(a.cfg.eval.keep_best, 3);
	ck_assert_int_eq(mn_app_reload_config(&a, &r, &next, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.n[MN_CONFIG_APPLY] + r.n[MN_CONFIG_UNUSED], 0);
	ck_assert_uint_eq(r.n[MN_CONFIG_RESTART], 1);

	/* The evaluator, on the same change: its keys are the applied and the waiting ones. */
	a.user = MN_CONFIG_EVALUATOR;
	mn_config_defaults(&a.cfg);
	ck_assert_int_eq(mn_app_reload_config(&a, &r, &next, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.n[MN_CONFIG_APPLY], 1);
	ck_assert_str_eq(r.keys[MN_CONFIG_APPLY][0], "eval.use_ema");
	ck_assert_uint_eq(r.n[MN_CONFIG_RESTART], 1);
	ck_assert_str_eq(r.keys[MN_CONFIG_RESTART][0], "eval.keep_best");
	ck_assert_uint_eq(r.n[MN_CONFIG_UNUSED], 2);
	ck_assert_str_eq(r.keys[MN_CONFIG_UNUSED][0], "model.seed");
	ck_assert_str_eq(r.keys[MN_CONFIG_UNUSED][1], "train.learning_rate");

	/* An invalid file changes nothing. */
	write_config("{\"train\": {\"learning_rate\": \"fast\"}}");
	ck_assert_int_lt(mn_app_reload_config(&a, &r, &next, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "train.learning_rate"));
	ck_assert_uint_eq(r.n[MN_CONFIG_APPLY] + r.n[MN_CONFIG_RESTART] + r.n[MN_CONFIG_UNUSED], 0);
	ck_assert_double_eq(a.cfg.train.learning_rate, 0.5);
	mn_app_end(&a);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("app");
	TCase *tc = mn_test_tcase(s, "app", setup, teardown);

	MN_TEST_ADD(tc, test_start_loads_config_and_ignores_sigpipe, test_start_terminal_shows_info,
	            test_start_check_only_ends_with_ok, test_start_bad_config_is_ex_config,
	            test_load_split, test_load_split_errors_map_to_exit_statuses,
	            test_signals_reach_their_callbacks, test_loop_without_signals,
	            test_loop_close_reaps_a_killed_child,
	            test_reload_sorts_keys_by_what_they_are_to_the_program,
	            test_signals_before_the_loop_are_held);
	tcase_add_test_raise_signal(tc, test_stop_held_ends_a_command, SIGTERM);
	return mn_test_run(s);
}
