/* test_evaluate.c - batched evaluation: exact numbers, batch boundaries, errors, cancel. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "evaluate.h"
#include "mlp.h"
#include "util.h"

#include "mn_test.h"

/*
 * Uniform in [-scale, scale] on a grid of 1e-4: this file's own draw from the
 * shared generator, kept so the fixture's numbers stay what they were.
 */
static float grid_sym(struct mn_test_lcg *g, float scale)
{
	return ((float)(mn_test_lcg_u32(g) % 20001) / 10000.0f - 1.0f) * scale;
}

/* Identity weights on 2 inputs and 2 classes: the logits are the scaled pixels. */
START_TEST(test_hand_computed)
{
	struct mn_arch a = mn_test_arch(2, 0, NULL, 2);
	const float params[] = {1, 0, 0, 1, 0, 0};
	const uint8_t images[] = {255, 0, 0, 255, 255, 0, 0, 0};
	const uint8_t labels[] = {0, 1, 1, 0};
	struct mn_view v = {.images = images, .labels = labels, .count = 4, .dim = 2};
	struct mn_eval_result r;
	uint8_t pred[4];
	char err[MN_ERRLEN];
	double right = log1p(exp(-1.0)), wrong = log1p(exp(1.0)), tie = log(2.0);

	ck_assert_int_eq(mn_evaluate(&a, params, &v, 1, pred, NULL, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.images, 4);
	/* The third is wrong; the all-zero fourth is a tie, won by class 0. */
	ck_assert_uint_eq(r.correct, 3);
	ck_assert_double_eq_tol(r.accuracy, 0.75, 1e-12);
	ck_assert_double_eq_tol(r.loss, (2 * right + wrong + tie) / 4, 1e-6);
	ck_assert_uint_eq(pred[0], 0);
	ck_assert_uint_eq(pred[1], 1);
	ck_assert_uint_eq(pred[2], 0);
	ck_assert_uint_eq(pred[3], 0);
}
END_TEST

struct fixture {
	struct mn_arch arch;
	float *params;
	uint8_t *images, *labels;
	struct mn_view v;
};

static void fixture_init(struct fixture *f, size_t count)
{
	size_t h[] = {5};
	struct mn_test_lcg g = {12345};

	f->arch = mn_test_arch(6, 1, h, 3);
	f->params = malloc(mn_arch_param_count(&f->arch) * sizeof(float));
	f->images = malloc(count * 6);
	f->labels = malloc(count);
	ck_assert_ptr_nonnull(f->params);
	ck_assert_ptr_nonnull(f->images);
	ck_assert_ptr_nonnull(f->labels);
	for (size_t i = 0; i < mn_arch_param_count(&f->arch); i++)
		f->params[i] = grid_sym(&g, 1.5f);
	for (size_t i = 0; i < count * 6; i++)
		f->images[i] = (uint8_t)(mn_test_lcg_u32(&g) & 0xff);
	for (size_t i = 0; i < count; i++)
		f->labels[i] = (uint8_t)(mn_test_lcg_u32(&g) % 3);
	f->v = (struct mn_view){.images = f->images, .labels = f->labels, .count = count, .dim = 6};
}

static void fixture_free(struct fixture *f)
{
	free(f->params);
	free(f->images);
	free(f->labels);
}

/*
 * More examples than one batch, with a partial last batch: the result must
 * equal one forward pass over everything at once.
 */
START_TEST(test_batches_match_single_pass)
{
	const size_t count = 2 * MN_EVAL_BATCH + 345;
	struct fixture f;
	struct mn_eval_result r;
	struct mn_mlp *m = NULL;
	float *x = malloc(count * 6 * sizeof(float));
	uint8_t *y = malloc(count), *pred = malloc(count), *pred_ref = malloc(count);
	double loss_ref = 0.0;
	size_t correct_ref = 0;
	char err[MN_ERRLEN];

	ck_assert_ptr_nonnull(x);
	ck_assert_ptr_nonnull(y);
	ck_assert_ptr_nonnull(pred);
	ck_assert_ptr_nonnull(pred_ref);
	fixture_init(&f, count);
	ck_assert_int_eq(mn_mlp_new(&f.arch, count, &m, NULL, 0), 0);
	mn_view_range(&f.v, 0, count, x, y);
	ck_assert_int_eq(mn_mlp_eval(m, f.params, x, y, count, &loss_ref, &correct_ref, pred_ref),
	                 0);
	memset(pred, 0xff, count);
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, pred, NULL, &r, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(r.images, count);
	ck_assert_uint_eq(r.correct, correct_ref);
	ck_assert_double_eq_tol(r.accuracy, (double)correct_ref / (double)count, 1e-15);
	ck_assert_double_eq_tol(r.loss, loss_ref / (double)count, 1e-9 * fabs(loss_ref));
	ck_assert_mem_eq(pred, pred_ref, count);
	/* A random model on random data: neither everything nor nothing is right. */
	ck_assert_uint_gt(r.correct, 0);
	ck_assert_uint_lt(r.correct, count);
	mn_mlp_free(m);
	free(x);
	free(y);
	free(pred);
	free(pred_ref);
	fixture_free(&f);
}
END_TEST

/*
 * Logits across batch boundaries: each row is the one a single pass gives
 * (same arithmetic, so bit for bit), and its arg-max is the prediction.
 */
START_TEST(test_logits_match_single_pass)
{
	const size_t count = MN_EVAL_BATCH + 21;
	struct fixture f;
	struct mn_eval_result r;
	struct mn_mlp *m = NULL;
	float *x = malloc(count * 6 * sizeof(float)), *logits = malloc(count * 3 * sizeof(float));
	uint8_t *pred = malloc(count), *y = malloc(count);
	char err[MN_ERRLEN];

	ck_assert_ptr_nonnull(x);
	ck_assert_ptr_nonnull(logits);
	ck_assert_ptr_nonnull(pred);
	ck_assert_ptr_nonnull(y);
	fixture_init(&f, count);
	ck_assert_int_eq(mn_mlp_new(&f.arch, count, &m, NULL, 0), 0);
	mn_view_range(&f.v, 0, count, x, y);
	ck_assert_int_eq(mn_mlp_eval(m, f.params, x, NULL, count, NULL, NULL, NULL), 0);
	ck_assert_int_eq(
	    mn_evaluate_logits(&f.arch, f.params, &f.v, 1, pred, logits, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.images, count);
	for (size_t i = 0; i < count * 3; i++)
		ck_assert_float_eq_tol(logits[i], mn_mlp_logits(m)[i], 1e-5);
	for (size_t i = 0; i < count; i++) {
		const float *z = logits + i * 3;
		size_t best = z[1] > z[0] ? 1 : 0;

		best = z[2] > z[best] ? 2 : best;
		ck_assert_uint_eq(pred[i], best);
	}
	mn_mlp_free(m);
	free(x);
	free(logits);
	free(pred);
	free(y);
	fixture_free(&f);
}
END_TEST

START_TEST(test_unlabelled_predicts_only)
{
	const size_t count = MN_EVAL_BATCH + 7;
	struct fixture f;
	struct mn_view unlabelled;
	struct mn_eval_result r;
	uint8_t *pred = malloc(count), *pred_ref = malloc(count);
	char err[MN_ERRLEN];

	ck_assert_ptr_nonnull(pred);
	ck_assert_ptr_nonnull(pred_ref);
	fixture_init(&f, count);
	ck_assert_int_eq(
	    mn_evaluate(&f.arch, f.params, &f.v, 1, pred_ref, NULL, &r, err, sizeof(err)), 0);
	unlabelled = f.v;
	unlabelled.labels = NULL;
	ck_assert_int_eq(
	    mn_evaluate(&f.arch, f.params, &unlabelled, 1, pred, NULL, &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.images, count);
	ck_assert_uint_eq(r.correct, 0);
	ck_assert_double_eq(r.loss, 0.0);
	ck_assert_double_eq(r.accuracy, 0.0);
	ck_assert_mem_eq(pred, pred_ref, count);
	free(pred);
	free(pred_ref);
	fixture_free(&f);
}
END_TEST

/*
 * Evaluation shared over 2 and 3 threads (a wide layer shared by rows in the
 * full batches and by columns in the ragged last batch of 13, a narrow one by
 * rows) gives what one thread gives.
 */
START_TEST(test_threads_agree)
{
	const size_t count = 2 * MN_EVAL_BATCH + 13, h[] = {100};
	struct mn_arch a = mn_test_arch(6, 1, h, 3);
	size_t np = mn_arch_param_count(&a);
	float *params = malloc(np * sizeof(float));
	float *ref = malloc(count * 3 * sizeof(float)), *got = malloc(count * 3 * sizeof(float));
	uint8_t *images = malloc(count * 6), *labels = malloc(count);
	uint8_t *pred_ref = malloc(count), *pred = malloc(count);
	struct mn_test_lcg g = {777};
	struct mn_eval_result r1, r;
	struct mn_view v;
	char err[MN_ERRLEN];

	ck_assert(params && ref && got && images && labels && pred_ref && pred);
	for (size_t i = 0; i < np; i++)
		params[i] = grid_sym(&g, 0.5f);
	for (size_t i = 0; i < count * 6; i++)
		images[i] = (uint8_t)(mn_test_lcg_u32(&g) & 0xff);
	for (size_t i = 0; i < count; i++)
		labels[i] = (uint8_t)(mn_test_lcg_u32(&g) % 3);
	v = (struct mn_view){.images = images, .labels = labels, .count = count, .dim = 6};
	ck_assert_int_eq(
	    mn_evaluate_logits(&a, params, &v, 1, pred_ref, ref, &r1, err, sizeof(err)), 0);
	for (int threads = 2; threads <= 3; threads++) {
		ck_assert_int_eq(
		    mn_evaluate_logits(&a, params, &v, threads, pred, got, &r, err, sizeof(err)),
		    0);
		ck_assert_uint_eq(r.images, count);
		ck_assert_uint_eq(r.correct, r1.correct);
		ck_assert_double_eq_tol(r.loss, r1.loss, 1e-6 * r1.loss);
		for (size_t i = 0; i < count * 3; i++)
			ck_assert_float_eq_tol(got[i], ref[i], 1e-4f);
		ck_assert_mem_eq(pred, pred_ref, count);
	}
	/* Images scaled once (the evaluator's way) give the very same numbers. */
	{
		float *scaled;

		ck_assert_int_eq(mn_view_scale(&v, &scaled), 0);
		v.scaled = scaled;
		ck_assert_int_eq(
		    mn_evaluate_logits(&a, params, &v, 1, pred, got, &r, err, sizeof(err)), 0);
		ck_assert_uint_eq(r.correct, r1.correct);
		ck_assert_double_eq(r.loss, r1.loss);
		ck_assert_mem_eq(got, ref, count * 3 * sizeof(float));
		ck_assert_mem_eq(pred, pred_ref, count);
		free(scaled);
	}
	free(params);
	free(ref);
	free(got);
	free(images);
	free(labels);
	free(pred_ref);
	free(pred);
}
END_TEST

START_TEST(test_input_size_mismatch)
{
	struct fixture f;
	struct mn_eval_result r;
	char err[MN_ERRLEN];

	fixture_init(&f, 10);
	f.v.dim = 4;
	f.v.count = 15;
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, NULL, &r, err, sizeof(err)),
	                 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "6 inputs"));
	ck_assert_ptr_nonnull(strstr(err, "4 pixels"));
	fixture_free(&f);
}
END_TEST

START_TEST(test_label_out_of_range)
{
	struct fixture f;
	struct mn_eval_result r;
	char err[MN_ERRLEN];

	fixture_init(&f, 10);
	f.labels[7] = 3;
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, NULL, &r, err, sizeof(err)),
	                 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "label 3 of example 7"));
	fixture_free(&f);
}
END_TEST

START_TEST(test_cancel)
{
	struct fixture f;
	struct mn_eval_result r;
	atomic_bool cancel = true, go = false;
	char err[MN_ERRLEN];

	fixture_init(&f, 50);
	ck_assert_int_eq(
	    mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, &cancel, &r, err, sizeof(err)),
	    -ECANCELED);
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, &go, &r, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(r.images, 50);
	fixture_free(&f);
}
END_TEST

START_TEST(test_empty_view)
{
	struct fixture f;
	struct mn_eval_result r;
	char err[MN_ERRLEN];

	fixture_init(&f, 1);
	f.v.count = 0;
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, NULL, &r, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(r.images, 0);
	ck_assert_double_eq(r.accuracy, 0.0);
	fixture_free(&f);
}
END_TEST

/* Threads of this process (the test runs in a process of its own). */
static size_t thread_count(void)
{
	struct dirent *e;
	DIR *d = opendir("/proc/self/task");
	size_t n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/*
 * Waits (5 s at most) until the process has n threads: a joined thread can
 * still be listed for a moment while the kernel finishes its exit.
 */
static void expect_threads(size_t n)
{
	int64_t deadline = mn_monotonic_ns() + 5000000000;

	while (thread_count() != n && mn_monotonic_ns() < deadline)
		sched_yield();
	ck_assert_uint_eq(thread_count(), n);
}

/* ws's result for f's model on v, against mn_evaluate's. */
static void expect_same(struct mn_eval_ws *ws, const struct fixture *f, const struct mn_view *v,
                        int threads)
{
	struct mn_eval_result got, want;
	char err[MN_ERRLEN];

	ck_assert_msg(
	    mn_evaluate_ws(ws, &f->arch, f->params, v, threads, NULL, &got, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_int_eq(
	    mn_evaluate(&f->arch, f->params, v, threads, NULL, NULL, &want, err, sizeof(err)), 0);
	ck_assert_uint_eq(got.images, want.images);
	ck_assert_uint_eq(got.correct, want.correct);
	ck_assert_double_eq(got.loss, want.loss);
}

/*
 * A workspace kept across evaluations gives what a fresh one gives, through
 * changes of model, thread count, batch and scaling, and keeps its threads
 * between evaluations (so none is started per checkpoint) until freed.
 */
START_TEST(test_workspace_reused)
{
	const size_t count = MN_EVAL_BATCH + 77;
	size_t h[] = {9, 4}, before;
	struct fixture f, g;
	struct mn_eval_ws *ws;
	struct mn_view scaled, few;
	float *sc = NULL;
	atomic_bool cancel = true;
	struct mn_eval_result r;
	char err[MN_ERRLEN];

	fixture_init(&f, count);
	fixture_init(&g, count);
	/* g: another shape on the same 6-pixel images. */
	free(g.params);
	g.arch = mn_test_arch(6, 2, h, 3);
	g.params = malloc(mn_arch_param_count(&g.arch) * sizeof(float));
	ck_assert_ptr_nonnull(g.params);
	for (size_t i = 0; i < mn_arch_param_count(&g.arch); i++)
		g.params[i] = (float)((int)(i % 7) - 3) * 0.25f;
	ck_assert_int_eq(mn_view_scale(&f.v, &sc), 0);
	scaled = f.v;
	scaled.scaled = sc;
	few = f.v;
	few.count = 10;

	/* Counted after BLAS has started whatever threads of its own it starts (one thread: no
	 * team). */
	ck_assert_int_eq(mn_evaluate(&f.arch, f.params, &f.v, 1, NULL, NULL, &r, err, sizeof(err)),
	                 0);
	before = thread_count();
	ck_assert_int_eq(mn_eval_ws_new(&ws), 0);
	expect_same(ws, &f, &f.v, 2);
	expect_threads(before + 1);
	expect_same(ws, &f, &scaled, 2);
	expect_same(ws, &f, &f.v, 2);
	expect_threads(before + 1);
	expect_same(ws, &g, &scaled, 2);
	expect_same(ws, &f, &few, 2);
	expect_same(ws, &f, &scaled, 1);
	expect_threads(before);
	/* A cancelled evaluation leaves the workspace usable. */
	ck_assert_int_eq(
	    mn_evaluate_ws(ws, &f.arch, f.params, &f.v, 2, &cancel, &r, err, sizeof(err)),
	    -ECANCELED);
	expect_same(ws, &f, &f.v, 2);
	expect_threads(before + 1);
	mn_eval_ws_free(ws);
	expect_threads(before);
	mn_eval_ws_free(NULL);
	free(sc);
	fixture_free(&f);
	fixture_free(&g);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("evaluate");

	MN_TEST_ADD(mn_test_tcase(s, "core", NULL, NULL), test_hand_computed,
	            test_batches_match_single_pass, test_logits_match_single_pass,
	            test_unlabelled_predicts_only, test_input_size_mismatch,
	            test_label_out_of_range, test_cancel, test_empty_view, test_threads_agree,
	            test_workspace_reused);
	return mn_test_run(s);
}
