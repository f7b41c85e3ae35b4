/*
 * train.h - the training recipe: RNG, initialisation, learning-rate
 * schedule, SGD with L2, the EMA of the weights, and the trainer that ties
 * them to a data set.
 *
 * The recipe is TensorFlow's MNIST tutorial:
 *   lr(step)   = learning_rate * decay ^ (step / decay_steps)   (smooth)
 *   update     = w -= lr(step) * (grad + l2 * w) for weights, no L2 for biases
 *   ema decay  = min(ema_decay, (1 + step) / (10 + step)), step after the update
 *   shadow     = d * shadow + (1 - d) * w
 * where the learning rate of an update uses global_step before it.
 */
#ifndef MN_TRAIN_H
#define MN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "idx.h"
#include "mlp.h"

/* xoshiro256** state; all of it is saved in checkpoints. */
struct mn_rng {
	uint64_t s[4];
};

/* Seeds the generator (the seed is expanded with splitmix64). */
void mn_rng_seed(struct mn_rng *r, uint64_t seed);
uint64_t mn_rng_u64(struct mn_rng *r);
/* Uniform double in [0, 1). */
double mn_rng_uniform(struct mn_rng *r);
/* Standard normal (Box-Muller; keeps no cached value, so the state is all in s). */
double mn_rng_normal(struct mn_rng *r);
/* Uniform integer in [0, n), without modulo bias. n > 0. */
uint64_t mn_rng_below(struct mn_rng *r, uint64_t n);
/* Fisher-Yates shuffle. */
void mn_rng_shuffle_u32(struct mn_rng *r, uint32_t *a, size_t n);

/* Fills w with a normal(0, stddev) truncated at 2 stddev (values beyond are redrawn). */
void mn_init_truncated_normal(struct mn_rng *r, float stddev, size_t n, float *w);

/* Initialises a parameter array: weights truncated normal, biases zero. */
void mn_params_init(const struct mn_arch *a, float stddev, struct mn_rng *r, float *params);

/* learning_rate * decay ^ (step / decay_steps). */
double mn_learning_rate(double learning_rate, double decay, double decay_steps, int64_t step);

/* w[i] -= lr * (g[i] + l2 * w[i]) for i < n. */
void mn_sgd_update(size_t n, float lr, float l2, const float *g, float *w);

/* min(ema_decay, (1 + step) / (10 + step)). */
double mn_ema_decay_at(double ema_decay, int64_t step);

/* shadow[i] = d * shadow[i] + (1 - d) * w[i] for i < n. */
void mn_ema_update(size_t n, float d, const float *w, float *shadow);

/* Settings fixed for the life of a trainer. */
struct mn_trainer_params {
	struct mn_arch arch; /* network shape */
	size_t batch_size;   /* examples per step */
	uint64_t seed;       /* RNG seed (initial weights, permutations) */
	float init_stddev;   /* stddev of the truncated-normal weight init */
	int threads;         /* threads of a step (0: one per CPU), see mn_mlp_set_threads */
};

/* Settings that may change between steps (config reload). */
struct mn_hparams {
	double learning_rate;       /* base learning rate */
	double learning_rate_decay; /* decay per decay_steps */
	double decay_steps;         /* steps per decay period, > 0 */
	double l2;                  /* L2 factor on weight matrices */
	double ema_decay;           /* upper bound of the EMA decay */
};

/*
 * Views into a trainer's memory: everything exact resume needs. Checkpoint
 * code reads these to save and writes them to restore.
 */
struct mn_trainer_state {
	float *params;        /* nparams, layout of mlp.h */
	float *shadow;        /* nparams, EMA shadows */
	size_t nparams;       /* mn_arch_param_count */
	int64_t *global_step; /* steps done */
	int64_t *epoch;       /* epochs started (the first is 1 once a step ran) */
	uint64_t *perm_pos;   /* next position in perm */
	uint32_t *perm;       /* current epoch's permutation of the training set */
	size_t nperm;         /* training examples */
	struct mn_rng *rng;   /* generator state */
};

struct mn_trainer;

/*
 * Creates a trainer over the training view train (which must outlive it):
 * seeds the RNG, initialises the parameters and sets the shadows equal to
 * them. The first epoch's permutation is drawn before the first step.
 */
int mn_trainer_new(const struct mn_trainer_params *p, const struct mn_view *train,
                   struct mn_trainer **out, char *err, size_t errlen);

/* Frees a trainer. Accepts NULL. */
void mn_trainer_free(struct mn_trainer *t);

/*
 * One SGD step on the next batch: forward/backward, SGD+L2 with the
 * learning rate at global_step, global_step += 1, EMA update, fused in
 * mn_mlp_train_step (so the step allocates nothing and never stores the
 * gradient). Batches take
 * the next batch_size indices of the epoch permutation; when it runs out, a
 * fresh permutation is drawn and the batch continues from its start.
 * Reports the batch's mean cross-entropy (without L2) and the learning rate
 * used. Parameters are unchanged on error.
 */
int mn_trainer_step(struct mn_trainer *t, const struct mn_hparams *h, double *loss, double *lr);

/* Sums n floats of buf over every cooperating trainer, in place; 0 or -errno. */
typedef int (*mn_trainer_reduce_fn)(void *ctx, float *buf, size_t n);

/*
 * Makes t one of count data-parallel trainers that share every step's
 * batch: t computes the gradient of examples [index * batch / count,
 * (index + 1) * batch / count) of it, weighted by that share, and reduce
 * sums the weighted gradients and losses of all count trainers (one call
 * over nparams + 1 floats) before the update. All must start from the same
 * state (they then draw the same permutations). count 1 with a reduce
 * function still reduces; count 1 without one is a trainer on its own.
 * -EINVAL if index >= count, count > batch_size, or count > 1 without reduce.
 */
int mn_trainer_set_shard(struct mn_trainer *t, size_t index, size_t count,
                         mn_trainer_reduce_fn reduce, void *ctx);

int64_t mn_trainer_global_step(const struct mn_trainer *t);
const struct mn_arch *mn_trainer_arch(const struct mn_trainer *t);

/* Fills s with views into t's state (see struct mn_trainer_state). */
void mn_trainer_state(struct mn_trainer *t, struct mn_trainer_state *s);

/*
 * A copy of a trainer's whole state (everything struct mn_trainer_state
 * views), for writing a checkpoint on another thread while training goes
 * on. Opaque.
 */
struct mn_trainer_snapshot;

/* Allocates a snapshot sized for t (its contents are undefined until taken). */
int mn_trainer_snapshot_new(const struct mn_trainer *t, struct mn_trainer_snapshot **out);

/* Frees a snapshot. Accepts NULL. */
void mn_trainer_snapshot_free(struct mn_trainer_snapshot *s);

/* Copies t's current state into s, which must have been made for t. Allocates nothing. */
void mn_trainer_snapshot_take(struct mn_trainer_snapshot *s, struct mn_trainer *t);

/* Fills st with views into the snapshot's copy. */
void mn_trainer_snapshot_state(struct mn_trainer_snapshot *s, struct mn_trainer_state *st);

/* The architecture of the snapshot's trainer. */
const struct mn_arch *mn_trainer_snapshot_arch(const struct mn_trainer_snapshot *s);

#endif
