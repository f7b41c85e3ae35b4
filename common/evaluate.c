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

struct mn_eval_ws {
	struct mn_mlp *m; /* NULL until the first evaluation */
	struct mn_arch arch;
	size_t batch;
	int threads;
	float *x; /* a batch of unscaled images, batch x input */
	uint8_t *y;
};

int mn_eval_ws_new(struct mn_eval_ws **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

void mn_eval_ws_free(struct mn_eval_ws *ws)
{
	if (!ws)
		return;
	mn_mlp_free(ws->m);
	free(ws->x);
	free(ws->y);
	free(ws);
}

/* Makes ws fit the model, batch and thread count, keeping what already does. */
static int ws_fit(struct mn_eval_ws *ws, const struct mn_arch *arch, size_t batch, int threads,
                  bool need_x, char *err, size_t errlen)
{
	int rc;

	if (!ws->m || !mn_arch_equal(&ws->arch, arch) || ws->batch != batch) {
		mn_mlp_free(ws->m);
		free(ws->x);
		free(ws->y);
		ws->m = NULL;
		ws->x = NULL;
		ws->y = malloc(batch);
		if (!ws->y) {
			mn_errf(err, errlen, "out of memory for an evaluation batch");
			return -ENOMEM;
		}
		rc = mn_mlp_new(arch, batch, &ws->m, err, errlen);
		if (rc < 0) {
			mn_errprefix(err, errlen, "evaluation workspace");
			return rc;
		}
		ws->arch = *arch;
		ws->batch = batch;
		ws->threads = -1;
	}
	if (ws->threads != threads) {
		/* A team as the training step's: no BLAS threads spinning between the products. */
		rc = mn_mlp_set_threads(ws->m, threads);
		if (rc < 0) {
			ws->threads = -1;
			mn_errf(err, errlen, "cannot start the evaluation threads: %s",
			        strerror(-rc));
			return rc;
		}
		ws->threads = threads;
	}
	/* Images scaled once (v->scaled) are read in place; others a batch at a time. */
	if (need_x && !ws->x) {
		ws->x = malloc(batch * arch->input * sizeof(float));
		if (!ws->x) {
			mn_errf(err, errlen, "out of memory for an evaluation batch");
			return -ENOMEM;
		}
	}
	return 0;
}

static int run(struct mn_eval_ws *ws, const struct mn_arch *arch, const float *params,
               const struct mn_view *v, int threads, uint8_t *pred, float *logits,
               const atomic_bool *cancel, struct mn_eval_result *res, char *err, size_t errlen)
{
	size_t batch, correct = 0;
	double loss_sum = 0.0;
	int rc;

	if (!ws || !arch || !params || !v || !res) {
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
	rc = ws_fit(ws, arch, batch, threads, !v->scaled, err, errlen);
	if (rc < 0)
		return rc;
	for (size_t first = 0; first < v->count; first += batch) {
		size_t n = v->count - first < batch ? v->count - first : batch;

		if (cancel && atomic_load(cancel)) {
			mn_errf(err, errlen, "evaluation cancelled");
			return -ECANCELED;
		}
		if (v->scaled) {
			if (v->labels)
				memcpy(ws->y, v->labels + first, n);
		} else {
			mn_view_range(v, first, n, ws->x, ws->y);
		}
		rc = mn_mlp_eval(ws->m, params, v->scaled ? v->scaled + first * v->dim : ws->x,
		                 v->labels ? ws->y : NULL, n, &loss_sum, &correct,
		                 pred ? pred + first : NULL);
		if (rc < 0) {
			mn_errf(err, errlen, "forward pass failed: %s", strerror(-rc));
			return rc;
		}
		if (logits)
			memcpy(logits + first * arch->output, mn_mlp_logits(ws->m),
			       n * arch->output * sizeof(float));
	}
	res->images = v->count;
	if (v->labels) {
		res->correct = correct;
		res->loss = loss_sum / (double)v->count;
		res->accuracy = (double)correct / (double)v->count;
	}
	return 0;
}

/* run() in a workspace of its own, for a single evaluation. */
static int run_once(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                    int threads, uint8_t *pred, float *logits, const atomic_bool *cancel,
                    struct mn_eval_result *res, char *err, size_t errlen)
{
	struct mn_eval_ws *ws;
	int rc;

	if (mn_eval_ws_new(&ws) < 0) {
		mn_errf(err, errlen, "out of memory for an evaluation workspace");
		return -ENOMEM;
	}
	rc = run(ws, arch, params, v, threads, pred, logits, cancel, res, err, errlen);
	mn_eval_ws_free(ws);
	return rc;
}

int mn_evaluate_ws(struct mn_eval_ws *ws, const struct mn_arch *arch, const float *params,
                   const struct mn_view *v, int threads, const atomic_bool *cancel,
                   struct mn_eval_result *res, char *err, size_t errlen)
{
	return run(ws, arch, params, v, threads, NULL, NULL, cancel, res, err, errlen);
}

int mn_evaluate(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                int threads, uint8_t *pred, const atomic_bool *cancel, struct mn_eval_result *res,
                char *err, size_t errlen)
{
	return run_once(arch, params, v, threads, pred, NULL, cancel, res, err, errlen);
}

int mn_evaluate_logits(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                       int threads, uint8_t *pred, float *logits, struct mn_eval_result *res,
                       char *err, size_t errlen)
{
	return run_once(arch, params, v, threads, pred, logits, NULL, res, err, errlen);
}
