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
 * Forward pass only. For n <= max_batch rows: if y is not NULL, adds the
 * summed cross-entropy to *loss_sum and the number of correct predictions to
 * *correct (either pointer may be NULL); if pred is not NULL, writes the
 * arg-max class of each row (lowest index wins ties).
 */
int mn_mlp_eval(struct mn_mlp *m, const float *params, const float *x, const uint8_t *y, size_t n,
                double *loss_sum, size_t *correct, uint8_t *pred);

#endif
