/*
 * model.h - the mapping between a network's state and checkpoint tensors.
 *
 * Tensor names are TensorFlow's, for layer i = 1 .. layers:
 *   layer<i>/weights    F32 [in, out]      layer<i>/biases    F32 [out]
 *   layer<i>/weights/ExponentialMovingAverage, layer<i>/biases/ExponentialMovingAverage
 *   global_step         I64 []
 * and the training state exact resume needs:
 *   train/rng           U64 [4]            xoshiro256** state
 *   train/epoch         I64 []             epochs started
 *   train/perm_pos      U64 []             next position in the permutation
 *   train/permutation   U32 [train images] the current epoch's order
 *
 * A frozen model (metadata frozen = "true") holds only the layer<i>/weights
 * and layer<i>/biases tensors, with the values chosen at freeze time.
 */
#ifndef MN_MODEL_H
#define MN_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "ckptdir.h"
#include "config.h"
#include "mlp.h"
#include "train.h"

#define MN_EMA_SUFFIX "/ExponentialMovingAverage"

/* Classes of every network mnistd trains: labels are 0..9. */
#define MN_CLASSES 10

/* Tensor names of the training state (the layers' are mn_model_tensor_name()'s). */
#define MN_TENSOR_GLOBAL_STEP "global_step"
#define MN_TENSOR_RNG         "train/rng"
#define MN_TENSOR_EPOCH       "train/epoch"
#define MN_TENSOR_PERM_POS    "train/perm_pos"
#define MN_TENSOR_PERMUTATION "train/permutation"

/* True if the checkpoint is a frozen inference model (metadata frozen = "true"). */
bool mn_model_is_frozen(const struct mn_ckpt *c);

/*
 * Whether a reader that asked for the EMA shadows (use_ema) gets them: a
 * frozen model holds one set of values, and says in its "ema" metadata
 * whether they were the shadows.
 */
bool mn_model_uses_ema(const struct mn_ckpt *c, bool use_ema);

/*
 * The "global_step" metadata, by the one rule for steps
 * (mn_ckpt_parse_step). 0 and *step set; -ENOENT if the file has none;
 * -EINVAL, with a message naming the file and the text, if it is not a
 * plain decimal. err may be NULL.
 */
int mn_model_step(const struct mn_ckpt *c, int64_t *step, char *err, size_t errlen);

/* Which training-state tensors a checkpoint holds (struct mn_model_state.have). */
enum {
	MN_MODEL_HAVE_STEP = 1 << 0,
	MN_MODEL_HAVE_RNG = 1 << 1,
	MN_MODEL_HAVE_EPOCH = 1 << 2,
	MN_MODEL_HAVE_PERM_POS = 1 << 3,
	MN_MODEL_HAVE_PERMUTATION = 1 << 4,
	MN_MODEL_HAVE_ALL = (1 << 5) - 1,
};

/* The training state as read from a checkpoint; fields are set only where have says so. */
struct mn_model_state {
	unsigned have;
	int64_t step, epoch;
	uint64_t rng[4];
	uint64_t perm_pos;
	uint64_t nperm;
	uint32_t *perm; /* nperm entries, malloc'd: mn_model_state_free() */
};

/*
 * Reads and checks the training-state tensors, the one check of that state
 * every reader shares: each with its dtype and shape; global_step
 * non-negative and equal to the metadata's when that is present; train/rng
 * not all zero (a state the generator never leaves); train/epoch
 * non-negative; train/permutation a permutation; train/perm_pos within it.
 * With complete, all five are required and the permutation must have nperm
 * entries (the training set of the trainer that resumes); without, only the
 * tensors present are read and nperm is ignored (a partial file passes).
 * Messages name the file and, on a mismatch, the tensor and both shapes.
 */
int mn_model_read_state(const struct mn_ckpt *c, bool complete, uint64_t nperm,
                        struct mn_model_state *st, char *err, size_t errlen);

/* Frees what mn_model_read_state() allocated. Accepts NULL. */
void mn_model_state_free(struct mn_model_state *st);

/* "layer<l+1>/weights" or ".../biases", with MN_EMA_SUFFIX when ema. */
int mn_model_tensor_name(size_t l, bool biases, bool ema, char *buf, size_t len);

/*
 * Reads the "architecture" metadata of a checkpoint and checks that every
 * layer tensor it implies is present with the right dtype and shape (the
 * EMA tensors too unless the file is frozen). Messages name the file.
 */
int mn_model_arch(const struct mn_ckpt *c, struct mn_arch *arch, char *err, size_t errlen);

/*
 * Copies a checkpoint's parameters into a malloc'd array in mlp.h's layout:
 * the EMA shadows when use_ema (TensorFlow's variables_to_restore), the raw
 * variables otherwise; a frozen model has only one set, used either way.
 * Values are not checked for being finite (mn_model_check_finite): the
 * evaluator reports a run that diverged as such.
 */
int mn_model_load_params(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch,
                         float **params, char *err, size_t errlen);

/*
 * The same into the caller's array: *params (NULL at first) of *cap floats,
 * grown with realloc when the model needs more; it stays the caller's on
 * every path, to reuse for the next checkpoint and free in the end.
 */
int mn_model_load_params_reuse(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch,
                               float **params, size_t *cap, char *err, size_t errlen);

/*
 * Finds the first NaN or infinity in params (mlp.h's layout for a): 0 when
 * every value is finite, else -EINVAL with err naming the tensor as a
 * checkpoint names it and the element, e.g. "layer1/weights[3, 5] is nan"
 * ("layer1/weights/ExponentialMovingAverage[3, 5]" when ema). mlp.c's ReLU
 * turns a NaN into 0, so such a model computes numbers that no other
 * runtime would: what makes a model to serve (freeze, export) or runs one
 * for its answers (predict) refuses it.
 */
int mn_model_check_finite(const struct mn_arch *a, const float *params, bool ema, char *err,
                          size_t errlen);

/*
 * Writes the trainer's full state as "<dir>/<prefix>-<step>.safetensors"
 * (atomic), then checkpoint.json and retention. config_json is stored as the
 * "config" metadata and world_size (the data-parallel processes that
 * trained it) as "world_size". The file name is written to name (len bytes).
 */
int mn_model_save(struct mn_trainer *t, const char *dir, const char *prefix, size_t max_to_keep,
                  const char *config_json, int world_size, char *name, size_t len, char *err,
                  size_t errlen);

/*
 * The same for a training state s of architecture a (a snapshot's, for
 * instance), into the directory whose versions v tracks (its one writer's).
 */
int mn_model_save_state(const struct mn_arch *a, const struct mn_trainer_state *s,
                        struct mn_ckptdir_versions *v, size_t max_to_keep, const char *config_json,
                        int world_size, char *name, size_t len, char *err, size_t errlen);

/*
 * Writes an inference-only model as "<dir>/<name>", atomically: the tensors
 * layer<i>/weights and layer<i>/biases taken from params (mlp.h's layout,
 * arch's shape), and the metadata format, architecture, created and
 * frozen = "true", followed by the caller's extra entries (typically
 * global_step, config, source and ema), which must not repeat those keys.
 * The result passes mn_model_arch() and mn_model_load_params(). With dir
 * NULL the file is written to standard output instead (mnistctl's -o -).
 */
int mn_model_write_frozen(const char *dir, const char *name, const struct mn_arch *arch,
                          const float *params, const struct mn_meta *extra, size_t nextra,
                          char *err, size_t errlen);

/*
 * The same model as mn_model_write_frozen() writes, as the file's bytes in
 * a malloc'd *buf of *len bytes (the caller frees it), for a caller that
 * publishes it itself (mnistctl freeze).
 */
int mn_model_encode_frozen(const struct mn_arch *arch, const float *params,
                           const struct mn_meta *extra, size_t nextra, uint8_t **buf, size_t *len,
                           char *err, size_t errlen);

/*
 * Restores a trainer's full state from a checkpoint whose architecture the
 * caller has checked equals the trainer's (mn_model_arch). Messages name the
 * tensor and both shapes on a mismatch (e.g. a different training set size).
 * A state training cannot continue from is refused (-EINVAL) and leaves the
 * trainer untouched: non-finite weights or shadows, and whatever
 * mn_model_read_state() refuses.
 */
int mn_model_restore(struct mn_trainer *t, const struct mn_ckpt *c, char *err, size_t errlen);

/*
 * Warm start (checkpoint.init_from): loads each tensor of cfg's map, "<name
 * in this model>": "<name in that file>", from the init_from file into the
 * trainer's parameters, and sets the EMA shadows of loaded tensors to the
 * loaded values. Unmapped tensors keep their fresh initialisation. An empty
 * map loads every layer variable under its own name (TensorFlow's
 * WarmStartSettings default). The file may be any safetensors file (a
 * checkpoint, a frozen or a converted model); its checksum is verified when
 * it has one. Each target must be one of this model's variables,
 * layer<i>/weights or layer<i>/biases; each source must exist in the file
 * as F32 with exactly the target's shape. Nothing is changed unless every
 * entry loads. Messages name the file, the tensors and both shapes (and
 * both architectures when the file records its own).
 */
int mn_model_warm_start(struct mn_trainer *t, const struct mn_config *cfg, char *err,
                        size_t errlen);

#endif
