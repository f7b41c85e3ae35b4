/*
 * mlp.h - the multi-layer perceptron: parameter layout, forward, backward.
 * The only module that calls BLAS.
 *
 * Parameter layout: all parameters live in one contiguous float array. For
 * each layer l = 0 .. layers-1 in order: the weights [in_l x out_l]
 * row-major, then the biases [out_l]. Gradients and EMA shadows use arrays of
 * the same layout. Hidden layers use ReLU; the output layer produces logits
 * and the loss is softmax cross-entropy, computed stably (log-sum-exp with the
 * row maximum subtracted).
 */
#ifndef MN_MLP_H
#define MN_MLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idx.h"

#define MN_MAX_HIDDEN 8
/* Upper bounds that keep every size computation far from overflow. */
#define MN_MAX_UNITS  (1u << 20)
#define MN_MAX_PARAMS ((size_t)1 << 28)

/* The shape of a network. A value type. */
struct mn_arch {
	size_t input;                 /* inputs (pixels per image) */
	size_t nhidden;               /* hidden layers, 0 .. MN_MAX_HIDDEN */
	size_t hidden[MN_MAX_HIDDEN]; /* units per hidden layer */
	size_t output;                /* classes (logits) */
};

/* Number of weight layers: nhidden + 1. */
size_t mn_arch_layers(const struct mn_arch *a);
/* Inputs and outputs of layer l (0-based). */
size_t mn_arch_layer_in(const struct mn_arch *a, size_t l);
size_t mn_arch_layer_out(const struct mn_arch *a, size_t l);
/* Offsets of layer l's weights and biases in the parameter array. */
size_t mn_arch_weights_offset(const struct mn_arch *a, size_t l);
size_t mn_arch_biases_offset(const struct mn_arch *a, size_t l);
/* Total number of parameters. */
size_t mn_arch_param_count(const struct mn_arch *a);

/*
 * Checks every size is in 1 .. MN_MAX_UNITS, output at most 256 (labels are
 * bytes), at most MN_MAX_HIDDEN hidden layers and the total within MN_MAX_PARAMS.
 */
int mn_arch_validate(const struct mn_arch *a, char *err, size_t errlen);

bool mn_arch_equal(const struct mn_arch *a, const struct mn_arch *b);

/*
 * Writes the architecture as compact JSON:
 * {"input":784,"hidden":[500],"output":10,"activation":"relu"}.
 * Returns the length, or -ENOSPC if len is too small.
 */
int mn_arch_to_json(const struct mn_arch *a, char *buf, size_t len);

/* Parses and validates the JSON form above (activation must be "relu"). */
int mn_arch_from_json(const char *json, struct mn_arch *a, char *err, size_t errlen);

/* Writes a short human form, "784-500-10". */
void mn_arch_format(const struct mn_arch *a, char *buf, size_t len);

/* Sets the number of BLAS threads (0: one per CPU). */
void mn_blas_set_threads(int threads);

/* Activation workspace for batches of up to max_batch rows. Opaque. */
struct mn_mlp;

/*
 * Allocates the workspace. -EINVAL with a message for an invalid
 * architecture or a batch the BLAS interface's int sizes cannot hold,
 * -ENOMEM ("out of memory").
 */
int mn_mlp_new(const struct mn_arch *arch, size_t max_batch, struct mn_mlp **out, char *err,
               size_t errlen);
/* Frees the workspace. Accepts NULL. */
void mn_mlp_free(struct mn_mlp *m);

/*
 * Forward and backward pass for n <= max_batch rows x (n x input floats)
 * with labels y. Writes the gradient of the mean cross-entropy (no L2) into
 * grad (param_count floats, overwritten) and the mean cross-entropy into
 * *loss. -EINVAL if n is 0 or too large or a label is >= output.
 */
int mn_mlp_loss_grad(struct mn_mlp *m, const float *params, const float *x, const uint8_t *y,
                     size_t n, float *grad, double *loss);

/*
 * Uses threads threads (0: one per CPU, at most MN_MLP_MAX_THREADS) for
 * mn_mlp_train_step: the calling thread and threads - 1 workers started
 * here, which share out every matrix product and every element-wise pass of
 * the step. Each product then runs on one BLAS thread, so this sets the
 * process's BLAS thread count to 1 (a second thread pool spinning against
 * OpenBLAS's own would slow both down; mn_blas_set_threads changes it back
 * for code that wants BLAS's threads). Between steps the workers spin for
 * about a millisecond, then sleep. Returns 0, or -errno if a thread could not
 * be started (the team is then the calling thread alone).
 */
#define MN_MLP_MAX_THREADS 64
int mn_mlp_set_threads(struct mn_mlp *m, int threads);

/* One fused training step: see mn_mlp_train_step. */
struct mn_mlp_step {
	const struct mn_view *data; /* training images and labels (dim == input) */
	const uint32_t *rows;       /* the batch: n indices into data */
	size_t n;                   /* batch rows, 1 .. max_batch */
	float lr;                   /* learning rate of this update */
	float l2;                   /* L2 factor on the weight matrices (not the biases) */
	float ema_decay;            /* d of the EMA update that follows the SGD update */
};

/*
 * One SGD step in place: gathers the batch (pixels scaled to [0, 1]), runs
 * the forward and backward pass, updates params with
 * w = (1 - lr * l2) * w - lr * dw for weights and b -= lr * db for biases
 * (the gradient of the mean cross-entropy), then, if shadow is not NULL,
 * shadow = d * shadow + (1 - d) * params. The gradient is never stored: the
 * weight update is the gradient's own matrix product. Writes the batch's
 * mean cross-entropy (before the update) to *loss if loss is not NULL.
 * Allocates nothing. -EINVAL, with params and shadow unchanged, if n is 0
 * or too large, a row index is out of the data set, a label is >= output or
 * the images do not have input pixels.
 */
int mn_mlp_train_step(struct mn_mlp *m, const struct mn_mlp_step *s, float *params, float *shadow,
                      double *loss);

/*
 * Forward pass only. For n <= max_batch rows: if y is not NULL, adds the
 * summed cross-entropy to *loss_sum and the number of correct predictions to
 * *correct (either pointer may be NULL); if pred is not NULL, writes the
 * arg-max class of each row (lowest index wins ties).
 */
int mn_mlp_eval(struct mn_mlp *m, const float *params, const float *x, const uint8_t *y, size_t n,
                double *loss_sum, size_t *correct, uint8_t *pred);

/*
 * The logits of the last forward pass (mn_mlp_eval or mn_mlp_loss_grad):
 * its n rows of output floats, row-major, valid until the next pass.
 */
const float *mn_mlp_logits(const struct mn_mlp *m);

#endif
