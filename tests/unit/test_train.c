/* test_train.c - RNG, schedule, SGD, EMA and the trainer. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"
#include "util.h"

#include "mn_test.h"

START_TEST(test_learning_rate)
{
	ck_assert_double_eq_tol(mn_learning_rate(0.8, 0.99, 550, 0), 0.8, 1e-12);
	ck_assert_double_eq_tol(mn_learning_rate(0.8, 0.99, 550, 550), 0.792, 1e-12);
	ck_assert_double_eq_tol(mn_learning_rate(0.8, 0.99, 550, 275), 0.8 * 0.99498743710661995,
	                        1e-12);
	ck_assert_double_eq_tol(mn_learning_rate(0.8, 0.99, 550, 1100), 0.78408, 1e-12);
	/* Smooth, not staircase: it moves between multiples of decay_steps. */
	ck_assert_double_lt(mn_learning_rate(0.8, 0.99, 550, 1), 0.8);
}
END_TEST

START_TEST(test_ema_decay)
{
	ck_assert_double_eq_tol(mn_ema_decay_at(0.99, 0), 0.1, 1e-15);
	ck_assert_double_eq_tol(mn_ema_decay_at(0.99, 1), 2.0 / 11.0, 1e-15);
	/* (1 + 100) / (10 + 100) is still below the cap... */
	ck_assert_double_eq_tol(mn_ema_decay_at(0.99, 100), 101.0 / 110.0, 1e-15);
	/* ...which takes over once (1 + s) / (10 + s) > 0.99, i.e. beyond step 890. */
	ck_assert_double_eq_tol(mn_ema_decay_at(0.99, 890), 0.99, 1e-15);
	ck_assert_double_eq(mn_ema_decay_at(0.99, 1000), 0.99);
	ck_assert_double_eq(mn_ema_decay_at(0.99, 30000), 0.99);
	ck_assert_double_eq(mn_ema_decay_at(0.5, 100), 0.5);
}
END_TEST

START_TEST(test_ema_update)
{
	float w[3] = {0.0f, 1.0f, 2.0f}, shadow[3] = {1.0f, 0.0f, -2.0f};

	mn_ema_update(3, 0.9f, w, shadow);
	ck_assert_float_eq_tol(shadow[0], 0.9f, 1e-6f);
	ck_assert_float_eq_tol(shadow[1], 0.1f, 1e-6f);
	ck_assert_float_eq_tol(shadow[2], -1.6f, 1e-6f);
	/* d = 1 keeps the shadow; d = 0 copies the weights. */
	mn_ema_update(3, 1.0f, w, shadow);
	ck_assert_float_eq_tol(shadow[2], -1.6f, 1e-6f);
	mn_ema_update(3, 0.0f, w, shadow);
	ck_assert_float_eq(shadow[0], 0.0f);
	ck_assert_float_eq(shadow[1], 1.0f);
	ck_assert_float_eq(shadow[2], 2.0f);
	/* w untouched */
	ck_assert_float_eq(w[1], 1.0f);
}
END_TEST

START_TEST(test_sgd_update)
{
	float g[2] = {1.0f, -2.0f}, w[2] = {1.0f, 1.0f};

	mn_sgd_update(2, 0.5f, 0.0f, g, w);
	ck_assert_float_eq_tol(w[0], 0.5f, 1e-7f);
	ck_assert_float_eq_tol(w[1], 2.0f, 1e-7f);
	w[0] = w[1] = 1.0f;
	mn_sgd_update(2, 0.5f, 0.1f, g, w);
	ck_assert_float_eq_tol(w[0], 0.45f, 1e-7f);
	ck_assert_float_eq_tol(w[1], 1.95f, 1e-7f);
	/* Zero gradient: pure weight decay. */
	g[0] = 0.0f;
	w[0] = 2.0f;
	mn_sgd_update(1, 0.1f, 0.5f, g, w);
	ck_assert_float_eq_tol(w[0], 1.9f, 1e-6f);
}
END_TEST

START_TEST(test_rng_known_answer)
{
	/* splitmix64 seeding and xoshiro256** as published (checkpoints depend on it). */
	struct mn_rng r;

	mn_rng_seed(&r, 0);
	ck_assert_uint_eq(r.s[0], 0xe220a8397b1dcdafULL);
	ck_assert_uint_eq(r.s[1], 0x6e789e6aa1b965f4ULL);
	ck_assert_uint_eq(r.s[2], 0x06c45d188009454fULL);
	ck_assert_uint_eq(r.s[3], 0xf88bb8a8724c81ecULL);
	ck_assert_uint_eq(mn_rng_u64(&r), 0x99ec5f36cb75f2b4ULL);
	ck_assert_uint_eq(mn_rng_u64(&r), 0xbf6e1f784956452aULL);
	ck_assert_uint_eq(mn_rng_u64(&r), 0x1a5f849d4933e6e0ULL);
	mn_rng_seed(&r, 42);
	ck_assert_uint_eq(mn_rng_u64(&r), 0x15780b2e0c2ec716ULL);
	ck_assert_uint_eq(mn_rng_u64(&r), 0x6104d9866d113a7eULL);
}
END_TEST

START_TEST(test_rng_determinism)
{
	struct mn_rng a, b, c;
	int differ = 0;

	mn_rng_seed(&a, 42);
	mn_rng_seed(&b, 42);
	mn_rng_seed(&c, 43);
	for (int i = 0; i < 1000; i++) {
		uint64_t va = mn_rng_u64(&a), vc = mn_rng_u64(&c);

		ck_assert_uint_eq(va, mn_rng_u64(&b));
		differ += va != vc;
	}
	ck_assert_int_gt(differ, 990);
	/* The whole state is s[]: a copy continues the same sequence (no cached normal). */
	mn_rng_normal(&a);
	b = a;
	for (int i = 0; i < 100; i++)
		ck_assert(mn_rng_normal(&a) == mn_rng_normal(&b));
	for (int i = 0; i < 1000; i++) {
		double u = mn_rng_uniform(&a);

		ck_assert(u >= 0.0 && u < 1.0);
	}
}
END_TEST

/* Issue #15 point 3: an all-zero state (which yields zeros forever) must not hang a draw. */
START_TEST(test_rng_zero_state_terminates)
{
	struct mn_rng r = {{0, 0, 0, 0}};
	uint32_t a[1000];

	/* 2^64 mod 1000 != 0, so 0 is always below the rejection threshold. */
	ck_assert_uint_lt(mn_rng_below(&r, 1000), 1000);
	for (uint32_t i = 0; i < 1000; i++)
		a[i] = i;
	mn_rng_shuffle_u32(&r, a, 1000);
}
END_TEST

START_TEST(test_rng_below)
{
	static const uint64_t ns[] = {
	    1, 2, 3, 7, 10, 1000, 55000, UINT64_C(1) << 32, (UINT64_C(1) << 63) + 1, UINT64_MAX};
	struct mn_rng r;
	size_t counts[3] = {0};

	mn_rng_seed(&r, 7);
	for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++)
		for (int i = 0; i < 2000; i++)
			ck_assert_uint_lt(mn_rng_below(&r, ns[k]), ns[k]);
	for (int i = 0; i < 100; i++)
		ck_assert_uint_eq(mn_rng_below(&r, 1), 0);
	for (int i = 0; i < 30000; i++)
		counts[mn_rng_below(&r, 3)]++;
	for (int j = 0; j < 3; j++)
		ck_assert(counts[j] > 9500 && counts[j] < 10500);
}
END_TEST

START_TEST(test_rng_shuffle)
{
	enum { N = 1000 };
	uint32_t *a = malloc(N * sizeof(uint32_t));
	unsigned char seen[N];
	struct mn_rng r;
	size_t moved = 0;

	ck_assert_ptr_nonnull(a);
	mn_rng_seed(&r, 1);
	for (uint32_t i = 0; i < N; i++)
		a[i] = i;
	mn_rng_shuffle_u32(&r, a, N);
	memset(seen, 0, sizeof(seen));
	for (size_t i = 0; i < N; i++) {
		ck_assert_uint_lt(a[i], N);
		ck_assert(!seen[a[i]]);
		seen[a[i]] = 1;
		moved += a[i] != i;
	}
	ck_assert_uint_gt(moved, N * 9 / 10);
	/* Degenerate sizes are fine. */
	mn_rng_shuffle_u32(&r, a, 1);
	mn_rng_shuffle_u32(&r, a, 0);
	free(a);
}
END_TEST

START_TEST(test_truncated_normal)
{
	enum { N = 100000 };
	float *w = malloc(N * sizeof(float));
	struct mn_rng r;
	double sum = 0.0, sq = 0.0, mean, sd;
	const float stddev = 0.1f;

	ck_assert_ptr_nonnull(w);
	mn_rng_seed(&r, 3);
	mn_init_truncated_normal(&r, stddev, N, w);
	for (size_t i = 0; i < N; i++) {
		ck_assert(fabsf(w[i]) <= 2.0f * stddev);
		sum += w[i];
		sq += (double)w[i] * w[i];
	}
	mean = sum / N;
	sd = sqrt(sq / N - mean * mean);
	/* A normal truncated at 2 sigma has stddev 0.8796 sigma. */
	ck_assert_double_lt(fabs(mean), 0.002);
	ck_assert_double_gt(sd, 0.085);
	ck_assert_double_lt(sd, 0.091);

	/* The plain normal, for comparison. */
	sum = sq = 0.0;
	for (size_t i = 0; i < N; i++) {
		double z = mn_rng_normal(&r);

		ck_assert(isfinite(z));
		sum += z;
		sq += z * z;
	}
	ck_assert_double_lt(fabs(sum / N), 0.02);
	ck_assert_double_gt(sq / N, 0.97);
	ck_assert_double_lt(sq / N, 1.03);
	free(w);
}
END_TEST

START_TEST(test_params_init)
{
	struct mn_arch a = {.input = 5, .nhidden = 2, .hidden = {4, 3}, .output = 3};
	size_t np = mn_arch_param_count(&a);
	float *p = malloc(np * sizeof(float)), *q = malloc(np * sizeof(float));
	struct mn_rng r1, r2;

	ck_assert(p && q);
	memset(p, 0x7f, np * sizeof(float));
	mn_rng_seed(&r1, 9);
	mn_params_init(&a, 0.5f, &r1, p);
	/* Same draws, layer by layer: weights in order, biases zero. */
	mn_rng_seed(&r2, 9);
	memset(q, 0, np * sizeof(float));
	for (size_t l = 0; l < mn_arch_layers(&a); l++)
		mn_init_truncated_normal(&r2, 0.5f,
		                         mn_arch_layer_in(&a, l) * mn_arch_layer_out(&a, l),
		                         q + mn_arch_weights_offset(&a, l));
	ck_assert_mem_eq(p, q, np * sizeof(float));
	ck_assert_mem_eq(r1.s, r2.s, sizeof(r1.s));
	for (size_t l = 0; l < mn_arch_layers(&a); l++)
		for (size_t j = 0; j < mn_arch_layer_out(&a, l); j++)
			ck_assert_float_eq(p[mn_arch_biases_offset(&a, l) + j], 0.0f);
	free(p);
	free(q);
}
END_TEST

/* A separable synthetic set: class c lights up pixels [4c, 4c + 4) of 16. */
enum { SYN_COUNT = 200, SYN_DIM = 16, SYN_CLASSES = 4 };
static uint8_t syn_images[SYN_COUNT * SYN_DIM];
static uint8_t syn_labels[SYN_COUNT];

static struct mn_view syn_view(size_t count)
{
	struct mn_rng r;
	struct mn_view v;

	mn_rng_seed(&r, 2024);
	for (size_t i = 0; i < SYN_COUNT; i++) {
		uint8_t c = (uint8_t)mn_rng_below(&r, SYN_CLASSES);

		syn_labels[i] = c;
		for (size_t j = 0; j < SYN_DIM; j++) {
			bool on = j / 4 == c;

			syn_images[i * SYN_DIM + j] =
			    (uint8_t)(on ? 150 + mn_rng_below(&r, 106) : mn_rng_below(&r, 90));
		}
	}
	v.images = syn_images;
	v.labels = syn_labels;
	v.count = count;
	v.dim = SYN_DIM;
	return v;
}

static struct mn_trainer_params syn_params(size_t batch, uint64_t seed)
{
	struct mn_trainer_params p;

	memset(&p, 0, sizeof(p));
	p.arch.input = SYN_DIM;
	p.arch.nhidden = 1;
	p.arch.hidden[0] = 32;
	p.arch.output = SYN_CLASSES;
	p.batch_size = batch;
	p.seed = seed;
	p.init_stddev = 0.1f;
	return p;
}

static const struct mn_hparams syn_h = {
    .learning_rate = 0.5,
    .learning_rate_decay = 0.99,
    .decay_steps = 20,
    .l2 = 1e-4,
    .ema_decay = 0.99,
};

static double accuracy(const struct mn_arch *a, const float *params, const struct mn_view *v)
{
	float *x = malloc(v->count * v->dim * sizeof(float));
	struct mn_mlp *m = NULL;
	size_t correct = 0;

	ck_assert_ptr_nonnull(x);
	for (size_t i = 0; i < v->count * v->dim; i++)
		x[i] = v->images[i] / 255.0f;
	ck_assert_int_eq(mn_mlp_new(a, v->count, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, v->labels, v->count, NULL, &correct, NULL), 0);
	mn_mlp_free(m);
	free(x);
	return (double)correct / (double)v->count;
}

START_TEST(test_trainer_learns)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(10, 1);
	struct mn_trainer *t = NULL;
	struct mn_trainer_state s;
	char err[MN_ERRLEN];
	double loss, lr, first = 0.0, last = 0.0;

	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_trainer_global_step(t), 0);
	ck_assert(mn_arch_equal(mn_trainer_arch(t), &p.arch));
	mn_trainer_state(t, &s);
	ck_assert_uint_eq(s.nparams, mn_arch_param_count(&p.arch));
	ck_assert_uint_eq(s.nperm, SYN_COUNT);
	ck_assert_mem_eq(s.params, s.shadow, s.nparams * sizeof(float));
	ck_assert_int_eq(*s.epoch, 0);
	ck_assert_uint_eq(*s.perm_pos, SYN_COUNT);
	for (int i = 0; i < 200; i++) {
		ck_assert_int_eq(mn_trainer_step(t, &syn_h, &loss, &lr), 0);
		ck_assert(isfinite(loss));
		ck_assert_double_eq_tol(lr, mn_learning_rate(0.5, 0.99, 20, i), 1e-15);
		if (i < 10)
			first += loss;
		if (i >= 190)
			last += loss;
	}
	ck_assert_int_eq(mn_trainer_global_step(t), 200);
	ck_assert_int_eq(*s.epoch, 10);
	ck_assert_double_lt(last, first * 0.5);
	ck_assert_double_gt(accuracy(&p.arch, s.params, &v), 0.9);
	ck_assert_double_gt(accuracy(&p.arch, s.shadow, &v), 0.9);
	mn_trainer_free(t);
	mn_trainer_free(NULL);
}
END_TEST

/* a and b agree to float rounding (the fused step rounds in another order). */
static void assert_close(const float *a, const float *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(fabsf(a[i] - b[i]) <= 1e-6f + 1e-5f * fabsf(b[i]),
		              "element %zu: %.9g, want %.9g", i, (double)a[i], (double)b[i]);
}

/*
 * The first step, recomputed from the parts: batch, gradient, SGD, EMA. The
 * trainer's fused step folds the update into the gradient's product, so it
 * agrees to rounding, not to the bit.
 */
START_TEST(test_trainer_first_step_exact)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(10, 5);
	const struct mn_arch *a = &p.arch;
	struct mn_trainer *t = NULL;
	struct mn_trainer_state s;
	struct mn_mlp *m = NULL;
	size_t np = mn_arch_param_count(a);
	float *w0 = malloc(np * sizeof(float)), *sh = malloc(np * sizeof(float));
	float *g = malloc(np * sizeof(float)), x[10 * SYN_DIM];
	uint8_t y[10];
	double loss, want_loss, lr;
	float d;

	ck_assert(w0 && sh && g);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, NULL, 0), 0);
	mn_trainer_state(t, &s);
	memcpy(w0, s.params, np * sizeof(float));
	ck_assert_int_eq(mn_trainer_step(t, &syn_h, &loss, &lr), 0);
	ck_assert_double_eq(lr, 0.5);
	ck_assert_int_eq(*s.epoch, 1);
	ck_assert_uint_eq(*s.perm_pos, 10);

	mn_view_gather(&v, s.perm, 10, x, y);
	ck_assert_int_eq(mn_mlp_new(a, 10, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_loss_grad(m, w0, x, y, 10, g, &want_loss), 0);
	ck_assert_double_eq_tol(loss, want_loss, 1e-9);
	memcpy(sh, w0, np * sizeof(float));
	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		size_t n = mn_arch_layer_in(a, l) * mn_arch_layer_out(a, l);
		size_t wo = mn_arch_weights_offset(a, l), bo = mn_arch_biases_offset(a, l);

		mn_sgd_update(n, 0.5f, 1e-4f, g + wo, w0 + wo);
		mn_sgd_update(mn_arch_layer_out(a, l), 0.5f, 0.0f, g + bo, w0 + bo);
	}
	assert_close(s.params, w0, np);
	d = (float)mn_ema_decay_at(0.99, 1);
	ck_assert_float_eq(d, 2.0f / 11.0f);
	mn_ema_update(np, d, w0, sh);
	assert_close(s.shadow, sh, np);
	mn_mlp_free(m);
	mn_trainer_free(t);
	free(w0);
	free(sh);
	free(g);
}
END_TEST

static void run(struct mn_trainer *t, int steps)
{
	for (int i = 0; i < steps; i++)
		ck_assert_int_eq(mn_trainer_step(t, &syn_h, NULL, NULL), 0);
}

START_TEST(test_trainer_determinism)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(7, 11);
	struct mn_trainer *a = NULL, *b = NULL, *c = NULL;
	struct mn_trainer_state sa, sb, sc;

	ck_assert_int_eq(mn_trainer_new(&p, &v, &a, NULL, 0), 0);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &b, NULL, 0), 0);
	p.seed = 12;
	ck_assert_int_eq(mn_trainer_new(&p, &v, &c, NULL, 0), 0);
	run(a, 60);
	run(b, 60);
	run(c, 60);
	mn_trainer_state(a, &sa);
	mn_trainer_state(b, &sb);
	mn_trainer_state(c, &sc);
	ck_assert_mem_eq(sa.params, sb.params, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.shadow, sb.shadow, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.perm, sb.perm, sa.nperm * sizeof(uint32_t));
	ck_assert(memcmp(sa.params, sc.params, sa.nparams * sizeof(float)) != 0);
	mn_trainer_free(a);
	mn_trainer_free(b);
	mn_trainer_free(c);
}
END_TEST

START_TEST(test_trainer_resume)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(7, 21);
	struct mn_trainer *a = NULL, *b = NULL;
	struct mn_trainer_state sa, sb;

	ck_assert_int_eq(mn_trainer_new(&p, &v, &a, NULL, 0), 0);
	run(a, 37);
	/* B starts from another seed; everything that matters comes from the state copy. */
	p.seed = 99;
	ck_assert_int_eq(mn_trainer_new(&p, &v, &b, NULL, 0), 0);
	mn_trainer_state(a, &sa);
	mn_trainer_state(b, &sb);
	ck_assert_uint_eq(sa.nparams, sb.nparams);
	ck_assert_uint_eq(sa.nperm, sb.nperm);
	memcpy(sb.params, sa.params, sa.nparams * sizeof(float));
	memcpy(sb.shadow, sa.shadow, sa.nparams * sizeof(float));
	memcpy(sb.perm, sa.perm, sa.nperm * sizeof(uint32_t));
	*sb.global_step = *sa.global_step;
	*sb.epoch = *sa.epoch;
	*sb.perm_pos = *sa.perm_pos;
	*sb.rng = *sa.rng;
	ck_assert_int_eq(mn_trainer_global_step(b), 37);
	/* 37 * 7 = 259: mid-way through the second epoch. */
	ck_assert_int_eq(*sa.epoch, 2);
	ck_assert_uint_eq(*sa.perm_pos, 59);
	run(a, 50);
	run(b, 50);
	ck_assert_mem_eq(sa.params, sb.params, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.shadow, sb.shadow, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.perm, sb.perm, sa.nperm * sizeof(uint32_t));
	ck_assert_int_eq(*sa.global_step, 87);
	ck_assert_int_eq(*sb.global_step, 87);
	ck_assert_int_eq(*sa.epoch, *sb.epoch);
	ck_assert_uint_eq(*sa.perm_pos, *sb.perm_pos);
	ck_assert_mem_eq(sa.rng->s, sb.rng->s, sizeof(sa.rng->s));
	mn_trainer_free(a);
	mn_trainer_free(b);
}
END_TEST

static void assert_permutation(const uint32_t *perm, size_t n)
{
	unsigned char seen[SYN_COUNT] = {0};

	for (size_t i = 0; i < n; i++) {
		ck_assert_uint_lt(perm[i], n);
		ck_assert(!seen[perm[i]]);
		seen[perm[i]] = 1;
	}
}

START_TEST(test_trainer_epochs)
{
	struct mn_view v = syn_view(23);
	struct mn_trainer_params p = syn_params(10, 3);
	struct mn_trainer *t = NULL;
	struct mn_trainer_state s;
	uint32_t before[23];

	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, NULL, 0), 0);
	mn_trainer_state(t, &s);
	for (uint32_t i = 0; i < 23; i++)
		ck_assert_uint_eq(s.perm[i], i);
	run(t, 1);
	ck_assert_int_eq(*s.epoch, 1);
	ck_assert_uint_eq(*s.perm_pos, 10);
	assert_permutation(s.perm, 23);
	memcpy(before, s.perm, sizeof(before));
	run(t, 1);
	ck_assert_int_eq(*s.epoch, 1);
	ck_assert_uint_eq(*s.perm_pos, 20);
	ck_assert_mem_eq(s.perm, before, sizeof(before));
	/* 3 from epoch 1, then a fresh permutation supplies the other 7. */
	run(t, 1);
	ck_assert_int_eq(*s.epoch, 2);
	ck_assert_uint_eq(*s.perm_pos, 7);
	assert_permutation(s.perm, 23);
	ck_assert(memcmp(s.perm, before, sizeof(before)) != 0);
	run(t, 20);
	/* 230 examples: epochs of 23 -> 10 epochs, ending exactly at the end of one. */
	ck_assert_int_eq(*s.epoch, 10);
	ck_assert_uint_eq(*s.perm_pos, 23);
	mn_trainer_free(t);

	/* A batch larger than the set wraps several times within one step. */
	p = syn_params(50, 3);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, NULL, 0), 0);
	mn_trainer_state(t, &s);
	run(t, 1);
	ck_assert_int_eq(*s.epoch, 3);
	ck_assert_uint_eq(*s.perm_pos, 4);
	assert_permutation(s.perm, 23);
	mn_trainer_free(t);
}
END_TEST

START_TEST(test_trainer_reject)
{
	struct mn_view v = syn_view(SYN_COUNT), empty = v;
	struct mn_trainer_params p = syn_params(10, 1);
	struct mn_trainer *t = (struct mn_trainer *)&p;
	struct mn_hparams h;
	struct mn_trainer_state s;
	char err[MN_ERRLEN];
	int64_t step;

	p.arch.input = 17;
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(t);
	ck_assert_ptr_nonnull(strstr(err, "16"));
	ck_assert_ptr_nonnull(strstr(err, "17"));
	p = syn_params(0, 1);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "batch_size"));
	p = syn_params(10, 1);
	p.arch.output = 0;
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), -EINVAL);
	p = syn_params(10, 1);
	p.arch.output = 3; /* labels go up to 3 */
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "label"));
	p = syn_params(10, 1);
	empty.count = 0;
	ck_assert_int_eq(mn_trainer_new(&p, &empty, &t, err, sizeof(err)), -EINVAL);
	p.init_stddev = NAN;
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), -EINVAL);

	/* Bad hyper-parameters change nothing. */
	p = syn_params(10, 1);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), 0);
	run(t, 3);
	mn_trainer_state(t, &s);
	step = mn_trainer_global_step(t);
	float *copy = malloc(s.nparams * sizeof(float));
	ck_assert_ptr_nonnull(copy);
	memcpy(copy, s.params, s.nparams * sizeof(float));
	h = syn_h;
	h.decay_steps = 0;
	ck_assert_int_eq(mn_trainer_step(t, &h, NULL, NULL), -EINVAL);
	h = syn_h;
	h.learning_rate = NAN;
	ck_assert_int_eq(mn_trainer_step(t, &h, NULL, NULL), -EINVAL);
	h = syn_h;
	h.learning_rate_decay = -1;
	ck_assert_int_eq(mn_trainer_step(t, &h, NULL, NULL), -EINVAL);
	h = syn_h;
	h.l2 = -1;
	ck_assert_int_eq(mn_trainer_step(t, &h, NULL, NULL), -EINVAL);
	h = syn_h;
	h.ema_decay = 1.5;
	ck_assert_int_eq(mn_trainer_step(t, &h, NULL, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_global_step(t), step);
	ck_assert_mem_eq(copy, s.params, s.nparams * sizeof(float));
	/* A corrupt restored permutation is refused, not followed out of bounds. */
	s.perm[*s.perm_pos] = SYN_COUNT + 5;
	ck_assert_int_eq(mn_trainer_step(t, &syn_h, NULL, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_global_step(t), step);
	ck_assert_mem_eq(copy, s.params, s.nparams * sizeof(float));
	free(copy);
	mn_trainer_free(t);
}
END_TEST

/*
 * Data-parallel shards in threads: a reducer that sums through a barrier, as
 * MPI_Allreduce does across processes.
 */
enum { SHARD_MAX = 3, SHARD_STEPS = 40 };

struct shard_group {
	pthread_barrier_t barrier;
	float *bufs[SHARD_MAX];
	size_t count;
};

struct shard_ctx {
	struct shard_group *g;
	size_t index;
	struct mn_trainer *t;
	double loss[SHARD_STEPS];
	int rc;
};

static int shard_reduce(void *arg, float *buf, size_t n)
{
	struct shard_ctx *c = arg;
	struct shard_group *g = c->g;
	float *sum = malloc(n * sizeof(float));

	if (!sum)
		return -ENOMEM;
	g->bufs[c->index] = buf;
	pthread_barrier_wait(&g->barrier);
	for (size_t i = 0; i < n; i++) {
		sum[i] = 0.0f;
		for (size_t r = 0; r < g->count; r++)
			sum[i] += g->bufs[r][i];
	}
	pthread_barrier_wait(&g->barrier);
	memcpy(buf, sum, n * sizeof(float));
	free(sum);
	return 0;
}

static void *shard_run(void *arg)
{
	struct shard_ctx *c = arg;

	for (int i = 0; i < SHARD_STEPS && c->rc == 0; i++)
		c->rc = mn_trainer_step(c->t, &syn_h, &c->loss[i], NULL);
	return NULL;
}

/* count shards of a batch of batch examples match one trainer on it. */
static void check_shards(size_t batch, size_t count)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(batch, 5);
	struct mn_trainer *one = NULL;
	struct shard_group g = {.count = count};
	struct shard_ctx c[SHARD_MAX];
	pthread_t th[SHARD_MAX];
	struct mn_trainer_state s1, sr;
	double loss;

	ck_assert_int_eq(mn_trainer_new(&p, &v, &one, NULL, 0), 0);
	pthread_barrier_init(&g.barrier, NULL, (unsigned)count);
	for (size_t r = 0; r < count; r++) {
		memset(&c[r], 0, sizeof(c[r]));
		c[r].g = &g;
		c[r].index = r;
		ck_assert_int_eq(mn_trainer_new(&p, &v, &c[r].t, NULL, 0), 0);
		ck_assert_int_eq(mn_trainer_set_shard(c[r].t, r, count, shard_reduce, &c[r]), 0);
	}
	for (size_t r = 0; r < count; r++)
		ck_assert_int_eq(pthread_create(&th[r], NULL, shard_run, &c[r]), 0);
	for (size_t r = 0; r < count; r++)
		pthread_join(th[r], NULL);
	mn_trainer_state(one, &s1);
	for (int i = 0; i < SHARD_STEPS; i++) {
		ck_assert_int_eq(mn_trainer_step(one, &syn_h, &loss, NULL), 0);
		for (size_t r = 0; r < count; r++) {
			ck_assert_int_eq(c[r].rc, 0);
			/* The summed, weighted shares are the whole batch's mean loss. */
			ck_assert_double_eq_tol(c[r].loss[i], loss, 1e-4 * fabs(loss) + 1e-6);
		}
	}
	for (size_t r = 0; r < count; r++) {
		mn_trainer_state(c[r].t, &sr);
		ck_assert_int_eq(*sr.global_step, *s1.global_step);
		ck_assert_mem_eq(sr.perm, s1.perm, s1.nperm * sizeof(uint32_t));
		/* Every shard applied the same update: identical to each other... */
		if (r > 0) {
			struct mn_trainer_state s0;

			mn_trainer_state(c[0].t, &s0);
			ck_assert_mem_eq(sr.params, s0.params, s0.nparams * sizeof(float));
		}
		/* ...and to the single trainer up to summation order. */
		for (size_t i = 0; i < s1.nparams; i++)
			ck_assert_float_eq_tol(sr.params[i], s1.params[i], 1e-4f);
	}
	for (size_t r = 0; r < count; r++)
		mn_trainer_free(c[r].t);
	pthread_barrier_destroy(&g.barrier);
	mn_trainer_free(one);
}

START_TEST(test_trainer_shards)
{
	check_shards(20, 2); /* even split */
	check_shards(20, 3); /* 6, 7, 7: weighted by share */
	check_shards(3, 3);  /* one example each */
	check_shards(10, 1); /* one shard that still reduces */
}
END_TEST

START_TEST(test_trainer_shard_reject)
{
	struct mn_view v = syn_view(SYN_COUNT);
	struct mn_trainer_params p = syn_params(4, 5);
	struct mn_trainer *t = NULL;

	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, NULL, 0), 0);
	ck_assert_int_eq(mn_trainer_set_shard(t, 0, 5, shard_reduce, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_set_shard(t, 2, 2, shard_reduce, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_set_shard(t, 0, 2, NULL, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_set_shard(t, 0, 0, shard_reduce, NULL), -EINVAL);
	ck_assert_int_eq(mn_trainer_set_shard(t, 0, 1, NULL, NULL), 0);
	mn_trainer_free(t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("train");

	MN_TEST_ADD(mn_test_tcase(s, "core", NULL, NULL), test_learning_rate, test_ema_decay,
	            test_ema_update, test_sgd_update, test_rng_known_answer, test_rng_determinism,
	            test_rng_below, test_rng_shuffle, test_truncated_normal, test_params_init,
	            test_trainer_learns, test_trainer_first_step_exact, test_trainer_determinism,
	            test_trainer_resume, test_trainer_epochs, test_trainer_reject,
	            test_trainer_shards, test_trainer_shard_reject, test_rng_zero_state_terminates);
	return mn_test_run(s);
}
