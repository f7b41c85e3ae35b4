/* train.c - see train.h. */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void mn_rng_seed(struct mn_rng *r, uint64_t seed)
{
	uint64_t x = seed;

	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

uint64_t mn_rng_u64(struct mn_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double mn_rng_uniform(struct mn_rng *r)
{
	return (double)(mn_rng_u64(r) >> 11) * 0x1.0p-53;
}

double mn_rng_normal(struct mn_rng *r)
{
	/* u1 in (0, 1] so the logarithm is finite. */
	double u1 = 1.0 - mn_rng_uniform(r);
	double u2 = mn_rng_uniform(r);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint64_t mn_rng_below(struct mn_rng *r, uint64_t n)
{
	/* Values below 2^64 mod n would make the low residues more likely. */
	uint64_t threshold, v;

	if (n == 0)
		return 0;
	threshold = (0 - n) % n;
	/*
	 * Rejection happens with probability below n / 2^64, so 64 tries never
	 * run out for a real generator; the bound is for a broken state (all
	 * zero yields zeros forever), which must not hang the trainer.
	 */
	for (int tries = 0; tries < 64; tries++) {
		v = mn_rng_u64(r);
		if (v >= threshold)
			break;
	}
	return v % n;
}

void mn_rng_shuffle_u32(struct mn_rng *r, uint32_t *a, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)mn_rng_below(r, i);
		uint32_t t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}

void mn_init_truncated_normal(struct mn_rng *r, float stddev, size_t n, float *w)
{
	for (size_t i = 0; i < n; i++) {
		double z;

		do
			z = mn_rng_normal(r);
		while (fabs(z) > 2.0);
		w[i] = (float)(z * stddev);
	}
}

void mn_params_init(const struct mn_arch *a, float stddev, struct mn_rng *r, float *params)
{
	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		size_t in = mn_arch_layer_in(a, l), out = mn_arch_layer_out(a, l);

		mn_init_truncated_normal(r, stddev, in * out,
		                         params + mn_arch_weights_offset(a, l));
		memset(params + mn_arch_biases_offset(a, l), 0, out * sizeof(float));
	}
}

double mn_learning_rate(double learning_rate, double decay, double decay_steps, int64_t step)
{
	return learning_rate * pow(decay, (double)step / decay_steps);
}

void mn_sgd_update(size_t n, float lr, float l2, const float *g, float *w)
{
	if (l2 == 0.0f) {
		for (size_t i = 0; i < n; i++)
			w[i] -= lr * g[i];
		return;
	}
	for (size_t i = 0; i < n; i++)
		w[i] -= lr * (g[i] + l2 * w[i]);
}

double mn_ema_decay_at(double ema_decay, int64_t step)
{
	double d = (1.0 + (double)step) / (10.0 + (double)step);

	return d < ema_decay ? d : ema_decay;
}

void mn_ema_update(size_t n, float d, const float *w, float *shadow)
{
	float e = 1.0f - d;

	for (size_t i = 0; i < n; i++)
		shadow[i] = d * shadow[i] + e * w[i];
}

struct mn_trainer {
	struct mn_trainer_params p;
	struct mn_view train;
	size_t nparams;
	float *params;
	float *shadow;
	struct mn_mlp *mlp;
	uint32_t *batch; /* batch_size indices into train */
	uint32_t *perm;  /* nperm */
	size_t nperm;
	uint64_t perm_pos;
	int64_t epoch;
	int64_t global_step;
	struct mn_rng rng;
	/* Data-parallel share of each batch (mn_trainer_set_shard); 0 of 1 alone. */
	size_t shard_index, shard_count;
	mn_trainer_reduce_fn reduce;
	void *reduce_ctx;
	/* A sharded step's own buffers, allocated by mn_trainer_set_shard. */
	float *grad; /* nparams + 1: the gradient, then the loss */
	float *x;    /* batch_size x input */
	uint8_t *y;  /* batch_size labels */
};

/* malloc(n * size) with an overflow check. */
static void *alloc_array(size_t n, size_t size)
{
	if (size != 0 && n > SIZE_MAX / size)
		return NULL;
	return malloc(n * size > 0 ? n * size : 1);
}

/* The parameters and the training set, checked before anything is allocated. */
static int check_params(const struct mn_trainer_params *p, const struct mn_view *train, char *err,
                        size_t errlen)
{
	int rc = mn_arch_validate(&p->arch, err, errlen);

	if (rc < 0)
		return rc;
	if (p->batch_size < 1 || p->batch_size > INT32_MAX) {
		mn_errf(err, errlen, "trainer: batch_size must be in [1, %d], got %zu", INT32_MAX,
		        p->batch_size);
		return -EINVAL;
	}
	if (!(p->init_stddev >= 0.0f) || !isfinite(p->init_stddev)) {
		mn_errf(err, errlen, "trainer: init_stddev must be finite and >= 0, got %g",
		        (double)p->init_stddev);
		return -EINVAL;
	}
	if (!train || train->count < 1 || !train->images || !train->labels) {
		mn_errf(err, errlen, "trainer: the training set is empty");
		return -EINVAL;
	}
	if (train->count > UINT32_MAX) {
		mn_errf(err, errlen, "trainer: %zu training examples, at most %u supported",
		        train->count, UINT32_MAX);
		return -EINVAL;
	}
	if (train->dim != p->arch.input) {
		mn_errf(
		    err, errlen,
		    "trainer: the training images have %zu pixels but the network's input is %zu",
		    train->dim, p->arch.input);
		return -EINVAL;
	}
	/* Checking every label now means a step cannot fail half way through. */
	for (size_t i = 0; i < train->count; i++) {
		if (train->labels[i] >= p->arch.output) {
			mn_errf(err, errlen,
			        "trainer: training label %u (example %zu) does not fit the "
			        "network's %zu outputs",
			        train->labels[i], i, p->arch.output);
			return -EINVAL;
		}
	}
	return 0;
}

int mn_trainer_new(const struct mn_trainer_params *p, const struct mn_view *train,
                   struct mn_trainer **out, char *err, size_t errlen)
{
	struct mn_trainer *t = NULL;
	int rc;

	*out = NULL;
	rc = check_params(p, train, err, errlen);
	if (rc < 0)
		return rc;
	t = calloc(1, sizeof(*t));
	if (!t)
		goto nomem;
	t->p = *p;
	t->train = *train;
	t->nparams = mn_arch_param_count(&p->arch);
	t->nperm = train->count;
	t->shard_count = 1;
	t->params = alloc_array(t->nparams, sizeof(float));
	t->shadow = alloc_array(t->nparams, sizeof(float));
	t->batch = alloc_array(p->batch_size, sizeof(uint32_t));
	t->perm = alloc_array(t->nperm, sizeof(uint32_t));
	if (!t->params || !t->shadow || !t->batch || !t->perm)
		goto nomem;
	rc = mn_mlp_new(&p->arch, p->batch_size, &t->mlp, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "trainer");
		goto fail;
	}
	rc = mn_mlp_set_threads(t->mlp, p->threads);
	if (rc < 0) {
		mn_errf(err, errlen, "trainer: cannot start %d training threads: %s", p->threads,
		        strerror(-rc));
		goto fail;
	}

	mn_rng_seed(&t->rng, p->seed);
	mn_params_init(&p->arch, p->init_stddev, &t->rng, t->params);
	memcpy(t->shadow, t->params, t->nparams * sizeof(float));
	for (size_t i = 0; i < t->nperm; i++)
		t->perm[i] = (uint32_t)i;
	/* An exhausted permutation makes the first step draw a fresh one. */
	t->perm_pos = t->nperm;
	t->epoch = 0;
	t->global_step = 0;
	*out = t;
	return 0;

nomem:
	rc = -ENOMEM;
	mn_errf(err, errlen, "trainer: out of memory");
fail:
	mn_trainer_free(t);
	return rc;
}

void mn_trainer_free(struct mn_trainer *t)
{
	if (!t)
		return;
	mn_mlp_free(t->mlp);
	free(t->grad);
	free(t->x);
	free(t->y);
	free(t->params);
	free(t->shadow);
	free(t->batch);
	free(t->perm);
	free(t);
}

static bool hparams_ok(const struct mn_hparams *h)
{
	return isfinite(h->learning_rate) && h->learning_rate >= 0.0 &&
	       isfinite(h->learning_rate_decay) && h->learning_rate_decay > 0.0 &&
	       isfinite(h->decay_steps) && h->decay_steps > 0.0 && isfinite(h->l2) &&
	       h->l2 >= 0.0 && isfinite(h->ema_decay) && h->ema_decay >= 0.0 && h->ema_decay <= 1.0;
}

/*
 * The gradient of this trainer's share of the batch, summed with the other
 * shards' when there are any. Each share is weighted by its size, so the sum
 * is the whole batch's mean gradient and mean loss however the batch splits.
 */
static int shard_loss_grad(struct mn_trainer *t, double *batch_loss)
{
	size_t bs = t->p.batch_size;
	size_t lo = t->shard_index * bs / t->shard_count;
	size_t hi = (t->shard_index + 1) * bs / t->shard_count;
	float share;
	int rc;

	mn_view_gather(&t->train, t->batch + lo, hi - lo, t->x, t->y);
	rc = mn_mlp_loss_grad(t->mlp, t->params, t->x, t->y, hi - lo, t->grad, batch_loss);
	if (rc < 0 || !t->reduce)
		return rc;
	share = (float)((double)(hi - lo) / (double)bs);
	for (size_t i = 0; i < t->nparams; i++)
		t->grad[i] *= share;
	t->grad[t->nparams] = (float)(*batch_loss * (double)share);
	rc = t->reduce(t->reduce_ctx, t->grad, t->nparams + 1);
	if (rc < 0)
		return rc;
	*batch_loss = t->grad[t->nparams];
	return 0;
}

/*
 * A data-parallel step: the gradient is summed over the shards before the
 * update, so it is stored, and SGD and the EMA are passes of their own.
 */
static int shard_step(struct mn_trainer *t, const struct mn_hparams *h, float rate,
                      double *batch_loss)
{
	const struct mn_arch *a = &t->p.arch;
	int rc = shard_loss_grad(t, batch_loss);

	if (rc < 0)
		return rc;
	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		size_t in = mn_arch_layer_in(a, l), out = mn_arch_layer_out(a, l);
		size_t wo = mn_arch_weights_offset(a, l), bo = mn_arch_biases_offset(a, l);

		mn_sgd_update(in * out, rate, (float)h->l2, t->grad + wo, t->params + wo);
		mn_sgd_update(out, rate, 0.0f, t->grad + bo, t->params + bo);
	}
	t->global_step++;
	mn_ema_update(t->nparams, (float)mn_ema_decay_at(h->ema_decay, t->global_step), t->params,
	              t->shadow);
	return 0;
}

int mn_trainer_step(struct mn_trainer *t, const struct mn_hparams *h, double *loss, double *lr)
{
	size_t bs = t->p.batch_size;
	struct mn_mlp_step step;
	double batch_loss, rate;
	int rc;

	if (!hparams_ok(h))
		return -EINVAL;
	for (size_t i = 0; i < bs; i++) {
		if (t->perm_pos >= t->nperm) {
			mn_rng_shuffle_u32(&t->rng, t->perm, t->nperm);
			t->perm_pos = 0;
			t->epoch++;
		}
		t->batch[i] = t->perm[t->perm_pos++];
		/* A restored permutation is data; never index out of the set. */
		if (t->batch[i] >= t->train.count)
			return -EINVAL;
	}
	rate = mn_learning_rate(h->learning_rate, h->learning_rate_decay, h->decay_steps,
	                        t->global_step);
	if (t->reduce) {
		rc = shard_step(t, h, (float)rate, &batch_loss);
		if (rc < 0)
			return rc;
		goto done;
	}
	step.data = &t->train;
	step.rows = t->batch;
	step.n = bs;
	step.lr = (float)rate;
	step.l2 = (float)h->l2;
	/* The EMA's decay is that of global_step after the update. */
	step.ema_decay = (float)mn_ema_decay_at(h->ema_decay, t->global_step + 1);
	rc = mn_mlp_train_step(t->mlp, &step, t->params, t->shadow, &batch_loss);
	if (rc < 0)
		return rc;
	t->global_step++;
done:

	if (loss)
		*loss = batch_loss;
	if (lr)
		*lr = rate;
	return 0;
}

int mn_trainer_set_shard(struct mn_trainer *t, size_t index, size_t count,
                         mn_trainer_reduce_fn reduce, void *ctx)
{
	if (count < 1 || index >= count || count > t->p.batch_size || (count > 1 && !reduce))
		return -EINVAL;
	/* Only a sharded step stores its gradient; the fused one needs none of this. */
	if (reduce && !t->grad) {
		if (t->p.batch_size > SIZE_MAX / t->p.arch.input)
			return -ENOMEM;
		t->grad = alloc_array(t->nparams + 1, sizeof(float));
		t->x = alloc_array(t->p.batch_size * t->p.arch.input, sizeof(float));
		t->y = alloc_array(t->p.batch_size, sizeof(uint8_t));
		if (!t->grad || !t->x || !t->y) {
			free(t->grad);
			free(t->x);
			free(t->y);
			t->grad = t->x = NULL;
			t->y = NULL;
			return -ENOMEM;
		}
	}
	if (reduce) {
		/* Sharded steps use BLAS's own threads, as they did before the fused step. */
		mn_mlp_set_threads(t->mlp, 1);
		mn_blas_set_threads(t->p.threads);
	}
	t->shard_index = index;
	t->shard_count = count;
	t->reduce = reduce;
	t->reduce_ctx = ctx;
	return 0;
}

int64_t mn_trainer_global_step(const struct mn_trainer *t)
{
	return t->global_step;
}

const struct mn_arch *mn_trainer_arch(const struct mn_trainer *t)
{
	return &t->p.arch;
}

void mn_trainer_state(struct mn_trainer *t, struct mn_trainer_state *s)
{
	s->params = t->params;
	s->shadow = t->shadow;
	s->nparams = t->nparams;
	s->global_step = &t->global_step;
	s->epoch = &t->epoch;
	s->perm_pos = &t->perm_pos;
	s->perm = t->perm;
	s->nperm = t->nperm;
	s->rng = &t->rng;
}

struct mn_trainer_snapshot {
	struct mn_arch arch;
	size_t nparams, nperm;
	int64_t global_step, epoch;
	uint64_t perm_pos;
	struct mn_rng rng;
	float *params, *shadow;
	uint32_t *perm;
};

int mn_trainer_snapshot_new(const struct mn_trainer *t, struct mn_trainer_snapshot **out)
{
	struct mn_trainer_snapshot *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s)
		return -ENOMEM;
	s->arch = t->p.arch;
	s->nparams = t->nparams;
	s->nperm = t->nperm;
	s->params = alloc_array(t->nparams, sizeof(float));
	s->shadow = alloc_array(t->nparams, sizeof(float));
	s->perm = alloc_array(t->nperm, sizeof(uint32_t));
	if (!s->params || !s->shadow || !s->perm) {
		mn_trainer_snapshot_free(s);
		return -ENOMEM;
	}
	/*
	 * Touched now: the first snapshot would otherwise fault in every page
	 * at the step that takes it (11 ms for 784-500-10 here, nine steps).
	 */
	memset(s->params, 0, t->nparams * sizeof(float));
	memset(s->shadow, 0, t->nparams * sizeof(float));
	memset(s->perm, 0, t->nperm * sizeof(uint32_t));
	*out = s;
	return 0;
}

void mn_trainer_snapshot_free(struct mn_trainer_snapshot *s)
{
	if (!s)
		return;
	free(s->params);
	free(s->shadow);
	free(s->perm);
	free(s);
}

void mn_trainer_snapshot_take(struct mn_trainer_snapshot *s, struct mn_trainer *t)
{
	memcpy(s->params, t->params, t->nparams * sizeof(float));
	memcpy(s->shadow, t->shadow, t->nparams * sizeof(float));
	memcpy(s->perm, t->perm, t->nperm * sizeof(uint32_t));
	s->global_step = t->global_step;
	s->epoch = t->epoch;
	s->perm_pos = t->perm_pos;
	s->rng = t->rng;
}

void mn_trainer_snapshot_state(struct mn_trainer_snapshot *s, struct mn_trainer_state *st)
{
	st->params = s->params;
	st->shadow = s->shadow;
	st->nparams = s->nparams;
	st->global_step = &s->global_step;
	st->epoch = &s->epoch;
	st->perm_pos = &s->perm_pos;
	st->perm = s->perm;
	st->nperm = s->nperm;
	st->rng = &s->rng;
}

const struct mn_arch *mn_trainer_snapshot_arch(const struct mn_trainer_snapshot *s)
{
	return &s->arch;
}
