/*
 * evaluate.h - a model's accuracy and loss on a data view, in batches.
 *
 * One implementation serves the evaluator and mnistctl predict, so both
 * report exactly the same numbers for the same file and split.
 */
#ifndef MN_EVALUATE_H
#define MN_EVALUATE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "idx.h"
#include "mlp.h"

/* Rows per forward pass. */
#define MN_EVAL_BATCH 1000

struct mn_eval_result {
	size_t images;   /* examples evaluated */
	size_t correct;  /* predictions equal to the label */
	double loss;     /* mean cross-entropy */
	double accuracy; /* correct / images */
};

/*
 * Runs the model (arch, params in mlp.h's layout) over every example of v
 * in batches of MN_EVAL_BATCH, on threads threads (0: one per CPU; the
 * process's BLAS then runs on one thread, see mn_mlp_set_threads). If
 * v->labels is NULL only predictions are
 * made (result's loss and accuracy are then 0). pred, if not NULL, receives
 * v->count predicted classes. cancel, if not NULL, is checked between
 * batches: when it becomes true the call returns -ECANCELED. -EINVAL (with
 * a message) if v->dim differs from arch->input or a label is out of range.
 */
int mn_evaluate(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                int threads, uint8_t *pred, const atomic_bool *cancel, struct mn_eval_result *res,
                char *err, size_t errlen);

/*
 * mn_evaluate without cancellation that also copies each example's logits
 * (the network's output before softmax) into logits, if not NULL:
 * v->count rows of arch->output floats, row-major, in example order.
 */
int mn_evaluate_logits(const struct mn_arch *arch, const float *params, const struct mn_view *v,
                       int threads, uint8_t *pred, float *logits, struct mn_eval_result *res,
                       char *err, size_t errlen);

/*
 * A workspace kept across evaluations: the forward pass's buffers and its
 * thread team. A process that evaluates one checkpoint after another
 * (mnist-eval) keeps one, so that an evaluation neither starts threads nor
 * faults in fresh pages; it is rebuilt only when the model's shape or the
 * thread count changes. One evaluation at a time. Opaque.
 */
struct mn_eval_ws;

/* An empty workspace, filled by the first evaluation: 0 or -ENOMEM. */
int mn_eval_ws_new(struct mn_eval_ws **out);
/* Stops its threads and frees it. Accepts NULL. */
void mn_eval_ws_free(struct mn_eval_ws *ws);

/* mn_evaluate (without predictions) in ws. */
int mn_evaluate_ws(struct mn_eval_ws *ws, const struct mn_arch *arch, const float *params,
                   const struct mn_view *v, int threads, const atomic_bool *cancel,
                   struct mn_eval_result *res, char *err, size_t errlen);

#endif
