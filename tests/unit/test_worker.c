/*
 * test_worker.c - mnistd's training thread and its mailbox (daemon/worker.c):
 * requests answered by events on the loop, with the step they were carried
 * out at, and a close that frees through the loop.
 */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "train.h"
#include "util.h"
#include "worker.h"

#include "mn_test.h"

#define N_EX   40
#define IN_DIM 16
#define OUT    4

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[MN_TEST_DIRLEN];
static char err[MN_ERRLEN];
static uv_loop_t loop;
static struct mn_config cfg;

/* What the callbacks saw. */
struct seen {
	int calls;
	struct mnd_worker_reply r;
	char name[MN_CKPT_MAX_NAME];
};

static struct seen done_seen;

static void setup(void)
{
	mn_test_fill_classes(images, labels, N_EX, IN_DIM, OUT);
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	err[0] = '\0';
	memset(&done_seen, 0, sizeof(done_seen));
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	mn_test_worker_config(&cfg, tmpdir);
}

static void teardown(void)
{
	/* Everything the worker owned is freed through the loop: nothing may remain. */
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_test_rmtree(tmpdir);
}

static struct mn_view view(void)
{
	return (struct mn_view){.images = images, .labels = labels, .count = N_EX, .dim = IN_DIM};
}

static void on_done(void *arg, int status)
{
	struct seen *s = arg;

	s->calls++;
	s->r.status = status;
}

static void on_reply(void *arg, const struct mnd_worker_reply *r)
{
	struct seen *s = arg;

	s->calls++;
	s->r = *r;
	snprintf(s->name, sizeof(s->name), "%s", r->name);
	s->r.name = s->name;
	s->r.error = "";
}

static struct mnd_worker *start(const struct mn_view *v)
{
	struct mn_trainer_params p = {.batch_size = 10, .seed = 3, .init_stddev = 0.1f};
	struct mn_trainer *t = NULL;
	struct mnd_worker *w = NULL;

	p.arch = mn_test_arch(IN_DIM, 1, (const size_t[]){8}, OUT);
	ck_assert_int_eq(mn_trainer_new(&p, v, &t, err, sizeof(err)), 0);
	ck_assert_int_eq(mnd_worker_start(&loop, t, &cfg, v->count, NULL, NULL, false, on_done,
	                                  &done_seen, &w, err, sizeof(err)),
	                 0);
	return w;
}

/* Runs the loop until the callback behind s has been called n times. */
static void run_until(const struct seen *s, int n)
{
	while (s->calls < n)
		uv_run(&loop, UV_RUN_ONCE);
}

START_TEST(test_pause_save_resume_replies_carry_the_step)
{
	struct mn_view v = view();
	struct mnd_worker *w = start(&v);
	struct mnd_worker_status st;
	struct seen paused = {0}, saved = {0}, resumed = {0};
	char want[MN_CKPT_MAX_NAME + 32], path[PATH_MAX + MN_CKPT_MAX_NAME];

	ck_assert_int_eq(mnd_worker_set_paused(w, true, on_reply, &paused), 0);
	run_until(&paused, 1);
	ck_assert_int_eq(paused.r.status, 0);
	ck_assert(paused.r.paused);
	ck_assert_str_eq(paused.r.name, "");
	mnd_worker_get_status(w, &st);
	ck_assert(st.paused);
	ck_assert_int_eq(st.step, paused.r.step);

	/* Saving while paused publishes the paused step, and says which. */
	ck_assert_int_eq(mnd_worker_save(w, on_reply, &saved), 0);
	run_until(&saved, 1);
	ck_assert_int_eq(saved.r.status, 0);
	ck_assert_int_eq(saved.r.step, paused.r.step);
	snprintf(want, sizeof(want), "model.ckpt-%lld.safetensors", (long long)saved.r.step);
	ck_assert_str_eq(saved.r.name, want);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, saved.r.name);
	ck_assert_int_eq(access(path, F_OK), 0);
	mnd_worker_get_status(w, &st);
	ck_assert_str_eq(st.latest, want);
	ck_assert_int_eq(st.step, paused.r.step);

	ck_assert_int_eq(mnd_worker_set_paused(w, false, on_reply, &resumed), 0);
	run_until(&resumed, 1);
	ck_assert_int_eq(resumed.r.status, 0);
	ck_assert(!resumed.r.paused);
	ck_assert_int_ge(resumed.r.step, paused.r.step);

	mnd_worker_stop(w);
	run_until(&done_seen, 1);
	ck_assert_int_eq(done_seen.r.status, 0);
	mnd_worker_close(w);
}
END_TEST

START_TEST(test_latest_of_pause_and_resume_decides)
{
	struct mn_view v = view();
	struct mnd_worker *w = start(&v);
	struct seen paused = {0}, resumed = {0};

	/* Both before the next boundary: both are answered, and training goes on. */
	ck_assert_int_eq(mnd_worker_set_paused(w, true, on_reply, &paused), 0);
	ck_assert_int_eq(mnd_worker_set_paused(w, false, on_reply, &resumed), 0);
	run_until(&resumed, 1);
	run_until(&paused, 1);
	ck_assert_int_eq(paused.r.status, 0);
	ck_assert_int_eq(resumed.r.status, 0);
	ck_assert(!resumed.r.paused);
	mnd_worker_stop(w);
	run_until(&done_seen, 1);
	mnd_worker_close(w);
}
END_TEST

START_TEST(test_requests_after_the_end_are_refused)
{
	struct mn_view v = view();
	struct mnd_worker *w;
	struct mnd_worker_status st;
	struct seen s = {0};

	cfg.train.max_steps = 3;
	w = start(&v);
	run_until(&done_seen, 1);
	ck_assert_int_eq(done_seen.r.status, 0);
	mnd_worker_get_status(w, &st);
	ck_assert(st.finished);
	ck_assert_int_eq(st.step, 3);
	ck_assert_str_eq(st.latest, "model.ckpt-3.safetensors");
	ck_assert_int_eq(mnd_worker_save(w, on_reply, &s), -ESHUTDOWN);
	ck_assert_int_eq(mnd_worker_set_paused(w, true, on_reply, &s), -ESHUTDOWN);
	mnd_worker_close(w);
	ck_assert_int_eq(s.calls, 0);
}
END_TEST

START_TEST(test_close_while_training_stops_and_frees_through_the_loop)
{
	struct mn_view v = view();
	struct mnd_worker *w = start(&v);
	char path[PATH_MAX + 64];

	/* Closing a running worker stops it (with its final checkpoint) and reports done. */
	mnd_worker_close(w);
	ck_assert_int_eq(done_seen.calls, 1);
	ck_assert_int_eq(done_seen.r.status, 0);
	snprintf(path, sizeof(path), "%s/checkpoint.json", tmpdir);
	ck_assert_int_eq(access(path, F_OK), 0);
	mnd_worker_close(NULL);
	/* teardown runs the loop: the close callback frees the rest. */
}
END_TEST

int main(void)
{
	Suite *s = suite_create("worker");
	TCase *tc = mn_test_tcase(s, "worker", setup, teardown);

	MN_TEST_ADD(tc, test_pause_save_resume_replies_carry_the_step,
	            test_latest_of_pause_and_resume_decides,
	            test_requests_after_the_end_are_refused,
	            test_close_while_training_stops_and_frees_through_the_loop);
	return mn_test_run(s);
}
