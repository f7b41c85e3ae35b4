/* evaluate.c - see evaluate.h. */
#include "evaluate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static int check_inputs(const struct mn_arch *arch, const struct mn_view *v, char *err,
                        size_t errlen)
{
	if (mn_arch_validate(arch, err, errlen) < 0)
		return -EINVAL;
	if (v->dim != arch->input) {
		mn_errf(err, errlen, "the model takes %zu inputs but the images have %zu pixels",
		        arch->input, v->dim);
		return -EINVAL;
	}
	if (v->count > 0 && !v->images) {
		mn_errf(err, errlen, "mn_evaluate: a view of %zu examples without images",
		        v->count);
		return -EINVAL;
	}
	/* Checked up front so a bad label is reported by index, not as a failed batch. */
	for (size_t i = 0; v->labels && i < v->count; i++) {
		if (v->labels[i] >= arch->output) {
			mn_errf(
			    err, errlen,
			    "label %u of example %zu is out of range for a model with %zu classes",
			    v->labels[i], i, arch->output);
			return -EINVAL;
		}
	}
	return 0;
}

static int run(const struct mn_arch *arch, const float *params, const struct mn_view *v,
               int threads, uint8_t *pred, float *logits, const atomic_bool *cancel,
               struct mn_eval_result *res, char *err, size_t errlen)
{
	size_t batch, correct = 0;
	double loss_sum = 0.0;
	struct mn_mlp *m = NULL;
	float *x = NULL;
	uint8_t *y = NULL;
	int rc;

	if (!arch || !params || !v || !res) {
		mn_errf(err, errlen, "mn_evaluate: invalid arguments");
		return -EINVAL;
	}
	memset(res, 0, sizeof(*res));
	rc = check_inputs(arch, v, err, errlen);
	if (rc < 0)
		return rc;
	if (v->count == 0)
		return 0;
	batch = v->count < MN_EVAL_BATCH ? v->count : MN_EVAL_BATCH;
	rc = mn_mlp_new(arch, batch, &m, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "evaluation workspace");
		goto out;
	}
	/* A team as the training step's: no BLAS threads spinning between the products. */
	rc = mn_mlp_set_threads(m, threads);
	if (rc < 0) {
		mn_errf(err, errlen, "cannot start the evaluation threads: %s", strerror(-rc));
		goto out;
	}
	/* Images scaled once (v->scaled) are read in place; others a batch at a time. */
	x = v->scaled ? NULL : malloc(batch * v->dim * sizeof(float));
	y = malloc(batch);
	if ((!x && !v->scaled) || !y) {
		rc = -ENOMEM;
		mn_errf(err, errlen, "out of memory for an evaluation batch");
		goto out;
	}
	for (size_t first = 0; first < v->count; first += batch) {
		size_t n = v->count - first < batch ? v->count - first : batch;

		if (cancel && atomic_load(cancel)) {
			rc = -ECANCELED;
			mn_errf(err, errlen, "evaluation cancelled");
			goto out;
		}
		if (v->scaled) {
			if (v->labels)
				memcpy(y, v->labels + first, n);
		} else {
			mn_view_range(v, first, n, x, y);
		}
		rc = mn_mlp_eval(m, params, v->scaled ? v->scaled + first * v->dim : x,
		                 v->labels ? y : NULL, n, &loss_sum, &correct,
		                 pred ? pred + first : NULL);
		if (rc < 0) {
			mn_errf(err, errlen, "forward pass failed: %s", strerror(-rc));
			goto out;
		}
		if (logits)
			memcpy(logits + first * arch->output, mn_mlp_logits(m),
			       n * arch->output * sizeof(float));
	}
	res->images = v->count;
	if (v->labels) {
		res->correct = correct;
		res->loss = loss_sum / (double)v->count;
		res->accuracy = (double)correct / (double)v->count;
	}
	rc = 0;
out:
	free(y);
	free(x);
	mn_mlp_free(m);
	return rc;
}

int mn_evaluate(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                int threads, uint8_t *pred, const atomic_bool *cancel, struct mn_eval_result *res,
                char *err, size_t errlen)
{
	return run(arch, params, v, threads, pred, NULL, cancel, res, err, errlen);
}

int mn_evaluate_logits(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                       int threads, uint8_t *pred, float *logits, struct mn_eval_result *res,
                       char *err, size_t errlen)
{
	return run(arch, params, v, threads, pred, logits, NULL, res, err, errlen);
}
