/* test_mlp.c - parameter layout, architecture JSON, forward and backward. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mlp.h"
#include "util.h"

#include "mn_test.h"

START_TEST(test_arch_layout_784_500_10)
{
	size_t h[] = {500};
	struct mn_arch a = mn_test_arch(784, 1, h, 10);
	char buf[64];

	ck_assert_int_eq(mn_arch_validate(&a, NULL, 0), 0);
	ck_assert_uint_eq(mn_arch_layers(&a), 2);
	ck_assert_uint_eq(mn_arch_layer_in(&a, 0), 784);
	ck_assert_uint_eq(mn_arch_layer_out(&a, 0), 500);
	ck_assert_uint_eq(mn_arch_layer_in(&a, 1), 500);
	ck_assert_uint_eq(mn_arch_layer_out(&a, 1), 10);
	ck_assert_uint_eq(mn_arch_weights_offset(&a, 0), 0);
	ck_assert_uint_eq(mn_arch_biases_offset(&a, 0), 392000);
	ck_assert_uint_eq(mn_arch_weights_offset(&a, 1), 392500);
	ck_assert_uint_eq(mn_arch_biases_offset(&a, 1), 397500);
	ck_assert_uint_eq(mn_arch_param_count(&a), 397510);
	mn_arch_format(&a, buf, sizeof(buf));
	ck_assert_str_eq(buf, "784-500-10");
}
END_TEST

START_TEST(test_arch_layout_multi)
{
	size_t h[] = {4, 3};
	struct mn_arch a = mn_test_arch(5, 2, h, 3);
	struct mn_arch lin = mn_test_arch(7, 0, NULL, 2);
	char buf[64];

	ck_assert_uint_eq(mn_arch_layers(&a), 3);
	ck_assert_uint_eq(mn_arch_weights_offset(&a, 0), 0);
	ck_assert_uint_eq(mn_arch_biases_offset(&a, 0), 20);
	ck_assert_uint_eq(mn_arch_weights_offset(&a, 1), 24);
	ck_assert_uint_eq(mn_arch_biases_offset(&a, 1), 36);
	ck_assert_uint_eq(mn_arch_weights_offset(&a, 2), 39);
	ck_assert_uint_eq(mn_arch_biases_offset(&a, 2), 48);
	ck_assert_uint_eq(mn_arch_param_count(&a), 51);
	ck_assert_uint_eq(mn_arch_layer_in(&a, 2), 3);
	ck_assert_uint_eq(mn_arch_layer_out(&a, 2), 3);
	mn_arch_format(&a, buf, sizeof(buf));
	ck_assert_str_eq(buf, "5-4-3-3");

	ck_assert_uint_eq(mn_arch_layers(&lin), 1);
	ck_assert_uint_eq(mn_arch_biases_offset(&lin, 0), 14);
	ck_assert_uint_eq(mn_arch_param_count(&lin), 16);
	mn_arch_format(&lin, buf, sizeof(buf));
	ck_assert_str_eq(buf, "7-2");
	/* Truncation must stay inside the buffer and terminate it. */
	mn_arch_format(&a, buf, 4);
	ck_assert_str_eq(buf, "5-4");
}
END_TEST

START_TEST(test_arch_validate)
{
	size_t h[MN_MAX_HIDDEN + 1] = {10, 10, 10, 10, 10, 10, 10, 10, 10};
	char err[MN_ERRLEN];
	struct mn_arch a;

	a = mn_test_arch(784, 1, h, 10);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), 0);
	a = mn_test_arch(784, MN_MAX_HIDDEN, h, 10);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), 0);
	a = mn_test_arch(784, 0, h, 256);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), 0);

	a = mn_test_arch(0, 1, h, 10);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "input"));
	a = mn_test_arch(784, 1, h, 257);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "output"));
	a = mn_test_arch(784, 1, h, 0);
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	a = mn_test_arch(784, MN_MAX_HIDDEN, h, 10);
	a.nhidden = MN_MAX_HIDDEN + 1;
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	a = mn_test_arch(784, 2, h, 10);
	a.hidden[1] = 0;
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "hidden[1]"));
	a.hidden[1] = MN_MAX_UNITS + 1;
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	a = mn_test_arch(MN_MAX_UNITS, 1, h, 10);
	a.hidden[0] = MN_MAX_UNITS;
	ck_assert_int_eq(mn_arch_validate(&a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "parameters"));
}
END_TEST

START_TEST(test_arch_equal)
{
	size_t h1[] = {500}, h2[] = {500, 100};
	struct mn_arch a = mn_test_arch(784, 1, h1, 10), b = mn_test_arch(784, 1, h1, 10);

	ck_assert(mn_arch_equal(&a, &b));
	b.hidden[3] = 77; /* beyond nhidden: not part of the shape */
	ck_assert(mn_arch_equal(&a, &b));
	b = mn_test_arch(784, 2, h2, 10);
	ck_assert(!mn_arch_equal(&a, &b));
	b = mn_test_arch(784, 1, h1, 11);
	ck_assert(!mn_arch_equal(&a, &b));
	b = mn_test_arch(783, 1, h1, 10);
	ck_assert(!mn_arch_equal(&a, &b));
	b = mn_test_arch(784, 1, h1, 10);
	b.hidden[0] = 499;
	ck_assert(!mn_arch_equal(&a, &b));
}
END_TEST

START_TEST(test_arch_json_roundtrip)
{
	size_t h1[] = {500}, h3[] = {256, 128, 100};
	struct mn_arch archs[] = {
	    mn_test_arch(784, 1, h1, 10),
	    mn_test_arch(784, 3, h3, 10),
	    mn_test_arch(16, 0, NULL, 4),
	};
	const char *want[] = {
	    "{\"input\":784,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}",
	    "{\"input\":784,\"hidden\":[256,128,100],\"output\":10,\"activation\":\"relu\"}",
	    "{\"input\":16,\"hidden\":[],\"output\":4,\"activation\":\"relu\"}",
	};
	char buf[256], err[MN_ERRLEN];

	for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) {
		struct mn_arch back;
		int n = mn_arch_to_json(&archs[i], buf, sizeof(buf));

		ck_assert_int_eq(n, (int)strlen(want[i]));
		ck_assert_str_eq(buf, want[i]);
		memset(&back, 0xab, sizeof(back));
		ck_assert_int_eq(mn_arch_from_json(buf, &back, err, sizeof(err)), 0);
		ck_assert(mn_arch_equal(&archs[i], &back));
		/* Exactly enough room, and one byte short. */
		ck_assert_int_eq(mn_arch_to_json(&archs[i], buf, (size_t)n + 1), n);
		ck_assert_int_eq(mn_arch_to_json(&archs[i], buf, (size_t)n), -ENOSPC);
		ck_assert_int_eq(mn_arch_to_json(&archs[i], buf, 5), -ENOSPC);
	}
	/* Whitespace and key order do not matter. */
	struct mn_arch a;
	ck_assert_int_eq(mn_arch_from_json(" { \"activation\" : \"relu\", \"output\": 10,"
	                                   " \"hidden\": [ 500 ], \"input\": 784 } ",
	                                   &a, err, sizeof(err)),
	                 0);
	ck_assert(mn_arch_equal(&a, &archs[0]));
}
END_TEST

START_TEST(test_arch_json_reject)
{
	static const struct {
		const char *json;
		const char *msg;
	} bad[] = {
	    {"", "JSON"},
	    {"{", "JSON"},
	    {"[784, 500, 10]", "object"},
	    {"{\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}", "input"},
	    {"{\"input\":784,\"output\":10,\"activation\":\"relu\"}", "hidden"},
	    {"{\"input\":784,\"hidden\":[500],\"activation\":\"relu\"}", "output"},
	    {"{\"input\":784,\"hidden\":[500],\"output\":10}", "activation"},
	    {"{\"input\":784.5,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}", "integer"},
	    {"{\"input\":\"784\",\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}",
	     "integer"},
	    {"{\"input\":-784,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}", "negative"},
	    {"{\"input\":0,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}", "input"},
	    {"{\"input\":1e30,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}", "input"},
	    {"{\"input\":784,\"hidden\":500,\"output\":10,\"activation\":\"relu\"}", "array"},
	    {"{\"input\":784,\"hidden\":{\"a\":1},\"output\":10,\"activation\":\"relu\"}", "array"},
	    {"{\"input\":784,\"hidden\":[500.25],\"output\":10,\"activation\":\"relu\"}",
	     "hidden[0]"},
	    {"{\"input\":784,\"hidden\":[500,-3],\"output\":10,\"activation\":\"relu\"}",
	     "hidden[1]"},
	    {"{\"input\":784,\"hidden\":[500,null],\"output\":10,\"activation\":\"relu\"}",
	     "hidden[1]"},
	    {"{\"input\":784,\"hidden\":[1,2,3,4,5,6,7,8,9],\"output\":10,\"activation\":\"relu\"}",
	     "hidden layers"},
	    {"{\"input\":784,\"hidden\":[500],\"output\":300,\"activation\":\"relu\"}", "output"},
	    {"{\"input\":784,\"hidden\":[500],\"output\":10,\"activation\":\"tanh\"}", "tanh"},
	    {"{\"input\":784,\"hidden\":[500],\"output\":10,\"activation\":1}", "activation"},
	    {"{\"input\":784,\"hidden\":[500],\"output\":10,\"activation\":\"relu\",\"x\":1}",
	     "unknown key"},
	    {"{\"input\":784,\"input\":785,\"hidden\":[500],\"output\":10,\"activation\":\"relu\"}",
	     "duplicate"},
	};
	char err[MN_ERRLEN];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t h[] = {3};
		struct mn_arch a = mn_test_arch(1, 1, h, 2), orig = a;

		err[0] = '\0';
		ck_assert_msg(mn_arch_from_json(bad[i].json, &a, err, sizeof(err)) == -EINVAL,
		              "accepted %s", bad[i].json);
		ck_assert_msg(strstr(err, bad[i].msg) != NULL, "%s: message \"%s\" lacks \"%s\"",
		              bad[i].json, err, bad[i].msg);
		ck_assert(mn_arch_equal(&a, &orig));
	}
	/* A NULL buffer is a bad argument, not a crash. */
	struct mn_arch a;
	ck_assert_int_eq(mn_arch_from_json(NULL, &a, NULL, 0), -EINVAL);
}
END_TEST

/* Fills params with uniform values in [-scale, scale) (biases too). */
static void fill_params(struct mn_test_lcg *g, const struct mn_arch *a, float scale, float *params)
{
	for (size_t i = 0; i < mn_arch_param_count(a); i++)
		params[i] = mn_test_lcg_sym(g, scale);
}

START_TEST(test_gradient_check)
{
	size_t h[] = {4, 3};
	struct mn_arch a = mn_test_arch(5, 2, h, 3);
	enum { N = 4 };
	size_t np = mn_arch_param_count(&a), nonzero = 0;
	float *params = malloc(np * sizeof(float)), *grad = malloc(np * sizeof(float));
	float x[N * 5];
	uint8_t y[N] = {0, 2, 1, 2};
	struct mn_mlp *m = NULL;
	double loss = 0.0, sum = 0.0;
	const float eps = 1e-3f;
	struct mn_test_lcg g = {12345};

	ck_assert_ptr_nonnull(params);
	ck_assert_ptr_nonnull(grad);
	fill_params(&g, &a, 0.8f, params);
	/* Positive hidden biases keep most ReLUs alive, so most gradients are checked. */
	for (size_t l = 0; l < 2; l++)
		for (size_t j = 0; j < h[l]; j++)
			params[mn_arch_biases_offset(&a, l) + j] = 0.6f + mn_test_lcg_sym(&g, 0.2f);
	for (size_t i = 0; i < N * 5; i++)
		x[i] = mn_test_lcg_sym(&g, 1.0f);
	ck_assert_int_eq(mn_mlp_new(&a, N, &m, NULL, 0), 0);
	/* grad is overwritten, whatever it held. */
	for (size_t i = 0; i < np; i++)
		grad[i] = NAN;
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y, N, grad, &loss), 0);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y, N, &sum, NULL, NULL), 0);
	ck_assert_double_eq_tol(loss, sum / N, 1e-6);

	for (size_t i = 0; i < np; i++) {
		float saved = params[i];
		double lp = 0.0, lm = 0.0, num, ana = grad[i];

		params[i] = saved + eps;
		ck_assert_int_eq(mn_mlp_eval(m, params, x, y, N, &lp, NULL, NULL), 0);
		params[i] = saved - eps;
		ck_assert_int_eq(mn_mlp_eval(m, params, x, y, N, &lm, NULL, NULL), 0);
		params[i] = saved;
		/* Divide by the step actually taken in float. */
		num = (lp - lm) / N / ((double)(saved + eps) - (double)(saved - eps));
		ck_assert_msg(isfinite(ana), "grad[%zu] not finite", i);
		ck_assert_msg(fabs(num - ana) <= 1e-2 * fmax(fabs(num), fabs(ana)) + 2e-4,
		              "param %zu: analytic %.6g numeric %.6g", i, ana, num);
		if (fabs(ana) > 1e-3)
			nonzero++;
	}
	/* The check means little if most gradients vanish (dead ReLUs). */
	ck_assert_uint_gt(nonzero, np * 2 / 3);
	mn_mlp_free(m);
	free(params);
	free(grad);
}
END_TEST

START_TEST(test_gradient_check_784)
{
	/* The real shape with a batch that is not a multiple of any BLAS block. */
	size_t h[] = {50};
	struct mn_arch a = mn_test_arch(784, 1, h, 10);
	enum { N = 37 };
	size_t np = mn_arch_param_count(&a);
	float *params = malloc(np * sizeof(float)), *grad = malloc(np * sizeof(float));
	float *x = malloc(N * 784 * sizeof(float));
	uint8_t y[N];
	struct mn_mlp *m = NULL;
	double loss;
	const float eps = 1e-2f;
	struct mn_test_lcg g = {777};

	ck_assert(params && grad && x);
	fill_params(&g, &a, 0.1f, params);
	for (size_t i = 0; i < N * 784; i++)
		x[i] = mn_test_lcg_uniform(&g);
	for (size_t i = 0; i < N; i++)
		y[i] = (uint8_t)(i % 10);
	ck_assert_int_eq(mn_mlp_new(&a, 100, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y, N, grad, &loss), 0);
	/* A sample of parameters from every block. */
	size_t idx[] = {0, 1, 783 * 50 + 49, 1234, 39200, 39249, 39250, 39250 + 499, 39750, 39759};
	for (size_t k = 0; k < sizeof(idx) / sizeof(idx[0]); k++) {
		size_t i = idx[k];
		float saved = params[i];
		double lp = 0.0, lm = 0.0, num;

		params[i] = saved + eps;
		mn_mlp_eval(m, params, x, y, N, &lp, NULL, NULL);
		params[i] = saved - eps;
		mn_mlp_eval(m, params, x, y, N, &lm, NULL, NULL);
		params[i] = saved;
		num = (lp - lm) / N / ((double)(saved + eps) - (double)(saved - eps));
		ck_assert_msg(fabs(num - grad[i]) <= 2e-2 * fmax(fabs(num), fabs(grad[i])) + 5e-4,
		              "param %zu: analytic %.6g numeric %.6g", i, (double)grad[i], num);
	}
	mn_mlp_free(m);
	free(params);
	free(grad);
	free(x);
}
END_TEST

START_TEST(test_softmax_stable)
{
	/* A linear model with logits around 1e4. */
	struct mn_arch a = mn_test_arch(3, 0, NULL, 3);
	float params[12] = {
	    1e4f, 0,    0, /* weights [3 x 3] */
	    0,    1e4f, 0, /* */
	    0,    0,    -1e4f, 0, 0, 0,
	};
	float x[2 * 3] = {1.0f, 0.5f, 0.0f, 0.0f, 0.0f, 1.0f};
	uint8_t y0[2] = {0, 1}, y1[2] = {2, 2};
	float grad[12];
	struct mn_mlp *m = NULL;
	double loss, sum = 0.0;

	ck_assert_int_eq(mn_mlp_new(&a, 2, &m, NULL, 0), 0);
	/* Row 0 logits (1e4, 5e3, 0); row 1 (0, 0, -1e4). */
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y0, 2, grad, &loss), 0);
	ck_assert(isfinite(loss));
	/* Row 0 is right with certainty; row 1: log(2 + e^-1e4) - 0. */
	ck_assert_double_eq_tol(loss, log(2.0) / 2, 1e-6);
	for (size_t i = 0; i < 12; i++)
		ck_assert(isfinite(grad[i]));
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y1, 2, &sum, NULL, NULL), 0);
	ck_assert(isfinite(sum));
	ck_assert_double_eq_tol(sum, 1e4 + 1e4, 1.0);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y1, 2, grad, &loss), 0);
	ck_assert(isfinite(loss));
	for (size_t i = 0; i < 12; i++)
		ck_assert(isfinite(grad[i]));
	mn_mlp_free(m);
}
END_TEST

START_TEST(test_eval_correct_argmax)
{
	/* Identity weights: the logits are the inputs. */
	struct mn_arch a = mn_test_arch(3, 0, NULL, 3);
	float params[12] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0};
	float x[4 * 3] = {
	    1, 0, 0, /* -> 0 */
	    0, 2, 2, /* tie 1/2 -> 1 */
	    0, 0, 0, /* tie all -> 0 */
	    0, 0, 5, /* -> 2 */
	};
	uint8_t y[4] = {0, 2, 0, 1}, pred[4];
	struct mn_mlp *m = NULL;
	double sum = 0.5, want = 0.0;
	size_t correct = 3;

	ck_assert_int_eq(mn_mlp_new(&a, 4, &m, NULL, 0), 0);
	memset(pred, 0xff, sizeof(pred));
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y, 4, &sum, &correct, pred), 0);
	ck_assert_uint_eq(pred[0], 0);
	ck_assert_uint_eq(pred[1], 1);
	ck_assert_uint_eq(pred[2], 0);
	ck_assert_uint_eq(pred[3], 2);
	/* Results accumulate into what the caller passed. */
	ck_assert_uint_eq(correct, 3 + 2);
	for (size_t i = 0; i < 4; i++) {
		const float *z = x + 3 * i;
		double lse = log(exp(z[0]) + exp(z[1]) + exp(z[2]));

		want += lse - z[y[i]];
	}
	ck_assert_double_eq_tol(sum, 0.5 + want, 1e-5);

	/* Predictions only. */
	memset(pred, 0xff, sizeof(pred));
	ck_assert_int_eq(mn_mlp_eval(m, params, x, NULL, 4, NULL, NULL, pred), 0);
	ck_assert_uint_eq(pred[1], 1);
	ck_assert_uint_eq(pred[3], 2);
	/* Counts only. */
	correct = 0;
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y, 3, NULL, &correct, NULL), 0);
	ck_assert_uint_eq(correct, 2);
	mn_mlp_free(m);
}
END_TEST

START_TEST(test_einval)
{
	char err[MN_ERRLEN];
	size_t h[] = {4};
	struct mn_arch a = mn_test_arch(3, 1, h, 3), bad = mn_test_arch(0, 1, h, 3);
	size_t np = mn_arch_param_count(&a);
	float params[64], grad[64], x[5 * 3] = {0};
	uint8_t y[5] = {0, 1, 2, 0, 1}, ybad[5] = {0, 1, 3, 0, 1};
	struct mn_mlp *m = NULL;
	double loss = 7.0, sum = 1.0;
	size_t correct = 4;

	ck_assert_uint_le(np, 64);
	memset(params, 0, sizeof(params));
	ck_assert_int_eq(mn_mlp_new(&bad, 4, &m, NULL, 0), -EINVAL);
	ck_assert_ptr_null(m);
	ck_assert_int_eq(mn_mlp_new(&a, 0, &m, NULL, 0), -EINVAL);
	ck_assert_ptr_null(m);
	/* The workspace says what is wrong itself; its callers need not guess from -EINVAL. */
	ck_assert_int_eq(mn_mlp_new(&bad, 4, &m, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "input") != NULL, "%s", err);
	ck_assert_int_eq(mn_mlp_new(&a, (size_t)1 << 40, &m, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "too large for this network") != NULL, "%s", err);
	ck_assert_ptr_null(m);
	ck_assert_int_eq(mn_mlp_new(&a, 4, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y, 0, grad, &loss), -EINVAL);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y, 5, grad, &loss), -EINVAL);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, ybad, 4, grad, &loss), -EINVAL);
	ck_assert_double_eq(loss, 7.0);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y, 0, &sum, &correct, NULL), -EINVAL);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, y, 5, &sum, &correct, NULL), -EINVAL);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, ybad, 4, &sum, &correct, NULL), -EINVAL);
	ck_assert_double_eq(sum, 1.0);
	ck_assert_uint_eq(correct, 4);
	ck_assert_int_eq(mn_mlp_loss_grad(m, params, x, y, 4, grad, &loss), 0);
	ck_assert_int_eq(mn_mlp_eval(m, params, x, ybad, 2, &sum, &correct, NULL), 0);
	mn_mlp_free(m);
	mn_mlp_free(NULL);
	mn_blas_set_threads(0);
	mn_blas_set_threads(1);
}
END_TEST

/* A synthetic data set for the fused step: count images of dim pixels. */
struct syn_data {
	uint8_t *images, *labels;
	struct mn_view v;
};

static void syn_make(struct syn_data *d, struct mn_test_lcg *g, size_t count, size_t dim,
                     size_t classes)
{
	d->images = malloc(count * dim);
	d->labels = malloc(count);
	ck_assert(d->images && d->labels);
	for (size_t i = 0; i < count * dim; i++)
		d->images[i] = (uint8_t)(mn_test_lcg_u32(g) & 0xff);
	for (size_t i = 0; i < count; i++)
		d->labels[i] = (uint8_t)(mn_test_lcg_u32(g) % classes);
	d->v =
	    (struct mn_view){.images = d->images, .labels = d->labels, .count = count, .dim = dim};
}

static void assert_close(const float *a, const float *b, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(fabsf(a[i] - b[i]) <= 2e-6f + 2e-5f * fabsf(b[i]),
		              "%s[%zu]: %.9g, want %.9g", what, i, (double)a[i], (double)b[i]);
}

/*
 * The fused step equals its parts (gather, mn_mlp_loss_grad, SGD with L2 on
 * the weights only, EMA) to rounding, for every way the threads share the
 * layers out (by columns, by rows, empty shares), and repeats itself to the
 * bit with the same thread count. The L2 factors cover the decay folded
 * into the EMA's sweep (1e-3), no decay (0) and a decay too strong to fold
 * (lr * l2 > 1/2, done by the product's beta).
 */
START_TEST(test_train_step_matches_parts)
{
	static const struct {
		size_t input, nhidden, hidden[2], output, n;
		float l2;
	} shapes[] = {
	    {5, 2, {4, 3}, 3, 4, 1e-3f},
	    {784, 1, {100, 0}, 10, 37, 0.0f},
	    {30, 2, {70, 40}, 10, 23, 2.0f},
	    /* a wide layer by rows: as many rows as units, as in an evaluation */
	    {20, 1, {64, 0}, 10, 64, 1e-3f},
	};
	const float lr = 0.3f, d = 0.9f;

	for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
		struct mn_arch a = mn_test_arch(shapes[k].input, shapes[k].nhidden,
		                                shapes[k].hidden, shapes[k].output);
		size_t np = mn_arch_param_count(&a), n = shapes[k].n, count = 3 * n;
		float l2 = shapes[k].l2;
		float *p0 = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
		float *want = malloc(np * sizeof(float)), *want_sh = malloc(np * sizeof(float));
		float *p = malloc(np * sizeof(float)), *sh = malloc(np * sizeof(float));
		float *p2 = malloc(np * sizeof(float)), *sh2 = malloc(np * sizeof(float));
		float *x = malloc(n * a.input * sizeof(float));
		uint32_t rows[64];
		uint8_t y[64];
		struct mn_test_lcg lcg = {42 + k};
		struct syn_data data;
		struct mn_mlp *ref = NULL;
		double want_loss;

		ck_assert(p0 && g && want && want_sh && p && sh && p2 && sh2 && x);
		syn_make(&data, &lcg, count, a.input, a.output);
		fill_params(&lcg, &a, 0.3f, p0);
		for (size_t i = 0; i < n; i++)
			rows[i] = (uint32_t)((i * 7 + 3) % count);
		mn_view_gather(&data.v, rows, n, x, y);
		ck_assert_int_eq(mn_mlp_new(&a, n, &ref, NULL, 0), 0);
		ck_assert_int_eq(mn_mlp_loss_grad(ref, p0, x, y, n, g, &want_loss), 0);
		memcpy(want, p0, np * sizeof(float));
		for (size_t i = 0; i < np; i++)
			want_sh[i] = p0[i] * 0.5f;
		for (size_t l = 0; l < mn_arch_layers(&a); l++) {
			size_t wo = mn_arch_weights_offset(&a, l),
			       bo = mn_arch_biases_offset(&a, l);

			for (size_t i = wo; i < bo; i++)
				want[i] -= lr * (g[i] + l2 * want[i]);
			for (size_t i = bo; i < bo + mn_arch_layer_out(&a, l); i++)
				want[i] -= lr * g[i];
		}
		for (size_t i = 0; i < np; i++)
			want_sh[i] = d * want_sh[i] + (1.0f - d) * want[i];

		for (int threads = 1; threads <= 3; threads++) {
			struct mn_mlp_step st = {.data = &data.v,
			                         .rows = rows,
			                         .n = n,
			                         .lr = lr,
			                         .l2 = l2,
			                         .ema_decay = d};
			struct mn_mlp *m = NULL;
			double loss = 0.0, loss2 = 0.0;

			ck_assert_int_eq(mn_mlp_new(&a, n + 5, &m, NULL, 0), 0);
			ck_assert_int_eq(mn_mlp_set_threads(m, threads), 0);
			for (int rep = 0; rep < 2; rep++) {
				float *pp = rep ? p2 : p, *ss = rep ? sh2 : sh;

				memcpy(pp, p0, np * sizeof(float));
				for (size_t i = 0; i < np; i++)
					ss[i] = p0[i] * 0.5f;
				ck_assert_int_eq(
				    mn_mlp_train_step(m, &st, pp, ss, rep ? &loss2 : &loss), 0);
			}
			ck_assert_double_eq_tol(loss, want_loss, 1e-5 * fabs(want_loss));
			assert_close(p, want, np, "params");
			assert_close(sh, want_sh, np, "shadow");
			ck_assert_double_eq(loss, loss2);
			ck_assert_mem_eq(p, p2, np * sizeof(float));
			ck_assert_mem_eq(sh, sh2, np * sizeof(float));
			/* Without a shadow only the parameters move. */
			memcpy(p2, p0, np * sizeof(float));
			ck_assert_int_eq(mn_mlp_train_step(m, &st, p2, NULL, NULL), 0);
			ck_assert_mem_eq(p, p2, np * sizeof(float));
			mn_mlp_free(m);
		}
		mn_mlp_free(ref);
		free(data.images);
		free(data.labels);
		free(p0);
		free(g);
		free(want);
		free(want_sh);
		free(p);
		free(sh);
		free(p2);
		free(sh2);
		free(x);
	}
}
END_TEST

/* The thread of this process with the highest id (the one started last, here). */
static long newest_thread(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	long newest = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atol(e->d_name) > newest)
			newest = atol(e->d_name);
	closedir(d);
	return newest;
}

/*
 * Waits until thread tid sleeps: it has done all it does unasked. Judged by
 * the thread's own CPU time, not the clock: its spin before sleeping is 2000
 * pauses and sched_yield()s, a fraction of a second of CPU, but on a busy
 * core each yield can hand a whole time slice to another process. Pinned to
 * one core next to a CPU hog the spin took 30-34 s of wall time (80-100 ms
 * of its CPU); the old 5 s deadline failed every time. Only a thread that
 * burns 2 s of CPU without sleeping spins for good.
 */
static void await_sleeping(long tid)
{
	char path[64], stat[512], state = '?';
	const long tick = sysconf(_SC_CLK_TCK);
	/* A backstop for a thread that neither sleeps nor runs, under check's 120 s timeout. */
	int64_t deadline = mn_monotonic_ns() + 100 * (int64_t)1000000000;
	unsigned long utime = 0, stime = 0;

	ck_assert_int_gt(tick, 0);
	snprintf(path, sizeof(path), "/proc/self/task/%ld/stat", tid);
	while (mn_monotonic_ns() < deadline) {
		FILE *f = fopen(path, "r");
		char *close_paren;

		ck_assert_ptr_nonnull(f);
		ck_assert_ptr_nonnull(fgets(stat, sizeof(stat), f));
		fclose(f);
		/* "tid (comm) S ...": the state follows the last parenthesis; utime and stime are
		 * fields 14 and 15, the 12th and 13th after it. */
		close_paren = strrchr(stat, ')');
		ck_assert_ptr_nonnull(close_paren);
		state = close_paren[2];
		if (state == 'S')
			return;
		ck_assert_int_eq(sscanf(close_paren + 2,
		                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
		                        &utime, &stime),
		                 2);
		ck_assert_msg((utime + stime) < 2 * (unsigned long)tick,
		              "thread %ld spun for %.2f s of CPU without sleeping (state %c)", tid,
		              (double)(utime + stime) / (double)tick, state);
		sched_yield();
	}
	ck_abort_msg("thread %ld never slept in 100 s (state %c, %.2f s of CPU)", tid, state,
	             (double)(utime + stime) / (double)tick);
}

/* Steps of 4 rows, from params, on a team of threads that is stopped and restarted when restart. */
static void run_steps(const struct mn_arch *a, const struct mn_view *v, float *params,
                      float *shadow, bool restart)
{
	uint32_t rows[4] = {0, 1, 2, 3};
	struct mn_mlp_step st = {.data = v, .rows = rows, .n = 4, .lr = 0.1f, .ema_decay = 0.5f};
	struct mn_mlp *m = NULL;

	ck_assert_int_eq(mn_mlp_new(a, 4, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_set_threads(m, 2), 0);
	ck_assert_int_eq(mn_mlp_train_step(m, &st, params, shadow, NULL), 0);
	if (restart) {
		ck_assert_int_eq(mn_mlp_set_threads(m, 1), 0);
		ck_assert_int_eq(mn_mlp_train_step(m, &st, params, shadow, NULL), 0);
		ck_assert_int_eq(mn_mlp_set_threads(m, 2), 0);
		/* Whatever the new thread does before it is given a step, it has done. */
		await_sleeping(newest_thread());
	} else {
		ck_assert_int_eq(mn_mlp_train_step(m, &st, params, shadow, NULL), 0);
	}
	for (int i = 0; i < 3; i++) {
		rows[0] = (uint32_t)(4 + i);
		ck_assert_int_eq(mn_mlp_train_step(m, &st, params, shadow, NULL), 0);
	}
	mn_mlp_free(m);
}

/*
 * A team stopped and started again on an mlp that has run steps (the
 * evaluator's kept workspace does this when train.threads changes) runs
 * the next steps exactly as a team that never stopped: its new threads must
 * not take the job generation they were started in for a new job.
 */
START_TEST(test_team_restarted)
{
	size_t h[] = {40};
	struct mn_arch a = mn_test_arch(6, 1, h, 4);
	size_t np = mn_arch_param_count(&a);
	float *p = malloc(np * sizeof(float)), *sh = malloc(np * sizeof(float));
	float *p2 = malloc(np * sizeof(float)), *sh2 = malloc(np * sizeof(float));
	struct mn_test_lcg lcg = {11};
	struct syn_data data;

	ck_assert(p && sh && p2 && sh2);
	syn_make(&data, &lcg, 8, 6, 4);
	fill_params(&lcg, &a, 0.3f, p);
	memcpy(sh, p, np * sizeof(float));
	memcpy(p2, p, np * sizeof(float));
	memcpy(sh2, p, np * sizeof(float));
	run_steps(&a, &data.v, p, sh, false);
	run_steps(&a, &data.v, p2, sh2, true);
	ck_assert_mem_eq(p2, p, np * sizeof(float));
	ck_assert_mem_eq(sh2, sh, np * sizeof(float));
	free(data.images);
	free(data.labels);
	free(p);
	free(sh);
	free(p2);
	free(sh2);
}
END_TEST

/* A bad batch changes nothing. */
START_TEST(test_train_step_einval)
{
	size_t h[] = {40};
	struct mn_arch a = mn_test_arch(6, 1, h, 4);
	size_t np = mn_arch_param_count(&a);
	float *p = malloc(np * sizeof(float)), *sh = malloc(np * sizeof(float));
	float *p0 = malloc(np * sizeof(float));
	uint32_t rows[4] = {0, 1, 2, 3};
	struct mn_test_lcg lcg = {9};
	struct syn_data data;
	struct mn_view wrong_dim;
	struct mn_mlp_step st = {.rows = rows, .n = 4, .lr = 0.1f, .ema_decay = 0.5f};
	struct mn_mlp *m = NULL;

	ck_assert(p && sh && p0);
	syn_make(&data, &lcg, 4, 6, 4);
	wrong_dim = data.v;
	wrong_dim.dim = 5;
	fill_params(&lcg, &a, 0.3f, p0);
	memcpy(p, p0, np * sizeof(float));
	memcpy(sh, p0, np * sizeof(float));
	ck_assert_int_eq(mn_mlp_new(&a, 4, &m, NULL, 0), 0);
	ck_assert_int_eq(mn_mlp_set_threads(m, 2), 0);
	st.data = &data.v;
	st.n = 0;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), -EINVAL);
	st.n = 5;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), -EINVAL);
	st.n = 4;
	rows[3] = 4;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), -EINVAL);
	rows[3] = 3;
	data.labels[2] = 4;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), -EINVAL);
	data.labels[2] = 3;
	st.data = &wrong_dim;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), -EINVAL);
	ck_assert_mem_eq(p, p0, np * sizeof(float));
	ck_assert_mem_eq(sh, p0, np * sizeof(float));
	st.data = &data.v;
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), 0);
	/* A team can be resized, and one thread needs no team. */
	ck_assert_int_eq(mn_mlp_set_threads(m, 1), 0);
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), 0);
	ck_assert_int_eq(mn_mlp_set_threads(m, 0), 0);
	ck_assert_int_eq(mn_mlp_train_step(m, &st, p, sh, NULL), 0);
	mn_mlp_free(m);
	free(data.images);
	free(data.labels);
	free(p);
	free(sh);
	free(p0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("mlp");

	MN_TEST_ADD(mn_test_tcase(s, "core", NULL, NULL), test_arch_layout_784_500_10,
	            test_arch_layout_multi, test_arch_validate, test_arch_equal,
	            test_arch_json_roundtrip, test_arch_json_reject, test_gradient_check,
	            test_gradient_check_784, test_softmax_stable, test_eval_correct_argmax,
	            test_einval, test_train_step_matches_parts, test_train_step_einval,
	            test_team_restarted);
	return mn_test_run(s);
}
