/* mlp.c - see mlp.h. The only file that calls BLAS. */
#include "mlp.h"

#include <cJSON.h>
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "simd.h"
#include "util.h"

size_t mn_arch_layers(const struct mn_arch *a)
{
	return a->nhidden + 1;
}

size_t mn_arch_layer_in(const struct mn_arch *a, size_t l)
{
	return l == 0 ? a->input : a->hidden[l - 1];
}

size_t mn_arch_layer_out(const struct mn_arch *a, size_t l)
{
	return l >= a->nhidden ? a->output : a->hidden[l];
}

size_t mn_arch_weights_offset(const struct mn_arch *a, size_t l)
{
	size_t off = 0;

	for (size_t k = 0; k < l && k < mn_arch_layers(a); k++) {
		size_t in = mn_arch_layer_in(a, k), out = mn_arch_layer_out(a, k);

		off += in * out + out;
	}
	return off;
}

size_t mn_arch_biases_offset(const struct mn_arch *a, size_t l)
{
	return mn_arch_weights_offset(a, l) + mn_arch_layer_in(a, l) * mn_arch_layer_out(a, l);
}

size_t mn_arch_param_count(const struct mn_arch *a)
{
	return mn_arch_weights_offset(a, mn_arch_layers(a));
}

static int check_units(const char *what, size_t v, char *err, size_t errlen)
{
	if (v < 1 || v > MN_MAX_UNITS) {
		mn_errf(err, errlen, "architecture: %s must be in [1, %u], got %zu", what,
		        MN_MAX_UNITS, v);
		return -EINVAL;
	}
	return 0;
}

int mn_arch_validate(const struct mn_arch *a, char *err, size_t errlen)
{
	uint64_t total = 0;
	char what[32];
	int rc;

	if (a->nhidden > MN_MAX_HIDDEN) {
		mn_errf(err, errlen, "architecture: at most %d hidden layers, got %zu",
		        MN_MAX_HIDDEN, a->nhidden);
		return -EINVAL;
	}
	if ((rc = check_units("input", a->input, err, errlen)) < 0)
		return rc;
	for (size_t l = 0; l < a->nhidden; l++) {
		snprintf(what, sizeof(what), "hidden[%zu]", l);
		if ((rc = check_units(what, a->hidden[l], err, errlen)) < 0)
			return rc;
	}
	if ((rc = check_units("output", a->output, err, errlen)) < 0)
		return rc;
	if (a->output > 256) {
		mn_errf(err, errlen,
		        "architecture: output must be at most 256 (labels are bytes), got %zu",
		        a->output);
		return -EINVAL;
	}
	/* Each size is at most 2^20, so every term fits in 64 bits. */
	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		uint64_t in = mn_arch_layer_in(a, l), out = mn_arch_layer_out(a, l);

		total += in * out + out;
	}
	if (total > MN_MAX_PARAMS) {
		mn_errf(err, errlen, "architecture: %llu parameters, at most %zu allowed",
		        (unsigned long long)total, MN_MAX_PARAMS);
		return -EINVAL;
	}
	return 0;
}

bool mn_arch_equal(const struct mn_arch *a, const struct mn_arch *b)
{
	if (a->input != b->input || a->output != b->output || a->nhidden != b->nhidden)
		return false;
	for (size_t l = 0; l < a->nhidden && l < MN_MAX_HIDDEN; l++)
		if (a->hidden[l] != b->hidden[l])
			return false;
	return true;
}

int mn_arch_to_json(const struct mn_arch *a, char *buf, size_t len)
{
	size_t pos = 0;
	int n;

#define MN_APPEND(...)                                                                             \
	do {                                                                                       \
		n = snprintf(pos < len ? buf + pos : NULL, pos < len ? len - pos : 0,              \
		             __VA_ARGS__);                                                         \
		if (n < 0)                                                                         \
			return -EINVAL;                                                            \
		pos += (size_t)n;                                                                  \
	} while (0)

	if (!buf)
		return -ENOSPC;
	MN_APPEND("{\"input\":%zu,\"hidden\":[", a->input);
	for (size_t l = 0; l < a->nhidden && l < MN_MAX_HIDDEN; l++)
		MN_APPEND("%s%zu", l ? "," : "", a->hidden[l]);
	MN_APPEND("],\"output\":%zu,\"activation\":\"relu\"}", a->output);
#undef MN_APPEND
	if (pos >= len || pos > INT32_MAX)
		return -ENOSPC;
	return (int)pos;
}

/* Converts a JSON number to a size, rejecting fractions, negatives and huge values. */
static int json_size(const cJSON *item, const char *what, size_t *out, char *err, size_t errlen)
{
	double d;

	if (!cJSON_IsNumber(item)) {
		mn_errf(err, errlen, "architecture: %s must be an integer", what);
		return -EINVAL;
	}
	d = item->valuedouble;
	if (!isfinite(d) || d != floor(d)) {
		mn_errf(err, errlen, "architecture: %s must be an integer, got %g", what, d);
		return -EINVAL;
	}
	if (d < 0) {
		mn_errf(err, errlen, "architecture: %s must not be negative, got %.0f", what, d);
		return -EINVAL;
	}
	if (d > MN_MAX_UNITS) {
		mn_errf(err, errlen, "architecture: %s must be in [1, %u], got %.0f", what,
		        MN_MAX_UNITS, d);
		return -EINVAL;
	}
	*out = (size_t)d;
	return 0;
}

/* The four members of an architecture object, each once. */
static int arch_members(const cJSON *root, const cJSON **input, const cJSON **hidden,
                        const cJSON **output, const cJSON **activation, char *err, size_t errlen)
{
	const struct mn_json_member members[] = {
	    {"input", 0, true, input},
	    {"hidden", 0, true, hidden},
	    {"output", 0, true, output},
	    {"activation", 0, true, activation},
	};
	enum mn_json_fault fault;
	const char *bad;

	if (!cJSON_IsObject(root)) {
		mn_errf(err, errlen, "architecture: must be a JSON object");
		return -EINVAL;
	}
	if (mn_json_members(root, members, 4, false, &fault, &bad) == 0)
		return 0;
	if (fault == MN_JSON_UNKNOWN)
		mn_errf(err, errlen, "architecture: unknown key \"%.64s\"", bad);
	else if (fault == MN_JSON_DUPLICATE)
		mn_errf(err, errlen, "architecture: duplicate key \"%s\"", bad);
	else
		mn_errf(err, errlen, "architecture: missing key \"%s\"", bad);
	return -EINVAL;
}

int mn_arch_from_json(const char *json, struct mn_arch *a, char *err, size_t errlen)
{
	const cJSON *input, *hidden, *output, *activation, *it;
	struct mn_json_error e;
	struct mn_arch r;
	cJSON *root = NULL;
	char what[32];
	int rc;

	memset(&r, 0, sizeof(r));
	if (!json) {
		mn_errf(err, errlen, "architecture: missing");
		return -EINVAL;
	}
	rc = mn_json_parse(json, strlen(json), 0, &root, &e);
	if (rc < 0) {
		mn_errf(err, errlen,
		        rc == -ENOMEM ? "architecture: out of memory"
		                      : "architecture: not valid JSON");
		return rc;
	}
	rc = arch_members(root, &input, &hidden, &output, &activation, err, errlen);
	if (rc < 0)
		goto out;
	if ((rc = json_size(input, "input", &r.input, err, errlen)) < 0)
		goto out;
	if ((rc = json_size(output, "output", &r.output, err, errlen)) < 0)
		goto out;
	rc = -EINVAL;
	if (!cJSON_IsArray(hidden)) {
		mn_errf(err, errlen, "architecture: hidden must be an array of integers");
		goto out;
	}
	cJSON_ArrayForEach(it, hidden)
	{
		if (r.nhidden >= MN_MAX_HIDDEN) {
			mn_errf(err, errlen, "architecture: at most %d hidden layers, got %d",
			        MN_MAX_HIDDEN, cJSON_GetArraySize(hidden));
			rc = -EINVAL;
			goto out;
		}
		snprintf(what, sizeof(what), "hidden[%zu]", r.nhidden);
		if ((rc = json_size(it, what, &r.hidden[r.nhidden], err, errlen)) < 0)
			goto out;
		r.nhidden++;
	}
	rc = -EINVAL;
	if (!cJSON_IsString(activation) || strcmp(activation->valuestring, "relu") != 0) {
		if (cJSON_IsString(activation))
			mn_errf(err, errlen,
			        "architecture: unknown activation \"%.64s\" (only \"relu\")",
			        activation->valuestring);
		else
			mn_errf(err, errlen,
			        "architecture: activation must be the string \"relu\"");
		goto out;
	}
	if ((rc = mn_arch_validate(&r, err, errlen)) < 0)
		goto out;
	*a = r;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

void mn_arch_format(const struct mn_arch *a, char *buf, size_t len)
{
	size_t pos = 0;
	int n;

	if (!buf || len == 0)
		return;
	n = snprintf(buf, len, "%zu", a->input);
	pos = n > 0 ? (size_t)n : 0;
	for (size_t l = 0; l < a->nhidden && l < MN_MAX_HIDDEN && pos < len; l++) {
		n = snprintf(buf + pos, len - pos, "-%zu", a->hidden[l]);
		pos += n > 0 ? (size_t)n : 0;
	}
	if (pos < len)
		snprintf(buf + pos, len - pos, "-%zu", a->output);
}

void mn_blas_set_threads(int threads)
{
	if (threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		threads = n > 0 && n < 4096 ? (int)n : 1;
	}
	openblas_set_num_threads(threads);
}

/* Per thread: its share of the batch's loss, one cache line each. */
struct mn_part {
	double loss;
	char pad[64 - sizeof(double)];
};

/* A worker's identity: its team and its index (1 .. nthreads - 1). */
struct mn_member {
	struct mn_mlp *m;
	size_t j;
	pthread_t tid;
	unsigned start_go; /* the job generation when it was started: its first job is the next */
};

struct mn_mlp {
	struct mn_arch arch;
	size_t layers;
	size_t max_batch;
	/* Per layer: max_batch x out_l. act: ReLU output (logits for the last layer). */
	float *act[MN_MAX_HIDDEN + 1];
	/* Per layer: the loss gradient with respect to the layer's pre-activation. */
	float *delta[MN_MAX_HIDDEN + 1];
	/* Per layer: column sums of delta (the bias gradient), out_l floats. */
	float *gb[MN_MAX_HIDDEN + 1];
	float *x;   /* max_batch x input: the gathered batch of a training step */
	uint8_t *y; /* max_batch labels */
	float *mem;

	/* The team of mn_mlp_train_step; the caller is member 0. */
	size_t nthreads;
	struct mn_member *members; /* nthreads - 1 workers */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool sync_ready;
	atomic_uint go;        /* job generation: workers start a step when it moves */
	atomic_int sleepers;   /* workers waiting on cond */
	atomic_bool quit;      /* workers exit at the next generation */
	atomic_uint bar_count; /* arrivals at the current barrier */
	atomic_uint bar_gen;   /* barriers passed */
	/* The current job, written before go moves: a training step or a forward pass. */
	void (*job_part)(struct mn_mlp *m, size_t j);
	const struct mn_mlp_step *job;
	const float *job_x; /* the batch: x for a step, the caller's for a forward pass */
	size_t job_n;
	float *job_params, *job_shadow;
	struct mn_part part[MN_MLP_MAX_THREADS];
};

/*
 * C = alpha op(A) op(B) + beta C, row-major with leading dimensions: op(A)
 * is M x K, op(B) is K x N, C is M x N. beta 0 overwrites C (OpenBLAS does
 * not read it).
 */
static void sgemm_ld(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                     const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                     size_t ldc)
{
	cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
	            trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda,
	            b, (int)ldb, beta, c, (int)ldc);
}

/* The same for densely packed matrices with alpha 1. */
static void mn_sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float *a,
                     const float *b, float beta, float *c)
{
	sgemm_ld(trans_a, trans_b, m, n, k, 1.0f, a, trans_a ? m : k, b, trans_b ? k : n, beta, c,
	         n);
}

int mn_mlp_new(const struct mn_arch *arch, size_t max_batch, struct mn_mlp **out, char *err,
               size_t errlen)
{
	struct mn_mlp *m;
	size_t units = 0, off = 0;
	int rc;

	*out = NULL;
	rc = mn_arch_validate(arch, err, errlen);
	if (rc < 0)
		return rc;
	if (max_batch == 0) {
		mn_errf(err, errlen, "batch_size must be at least 1");
		return -EINVAL;
	}
	for (size_t l = 0; l < mn_arch_layers(arch); l++)
		units += mn_arch_layer_out(arch, l);
	/* The BLAS interface takes int sizes; keep every matrix well inside that. */
	if (max_batch > INT32_MAX / 2 / units || max_batch > INT32_MAX / 2 / arch->input) {
		mn_errf(err, errlen, "batch_size %zu is too large for this network", max_batch);
		return -EINVAL;
	}
	m = max_batch > SIZE_MAX / sizeof(float) / 4 / (units + arch->input)
	        ? NULL
	        : calloc(1, sizeof(*m));
	/* act and delta per layer, the bias gradients, the batch and its labels. */
	if (m)
		m->mem =
		    malloc(((2 * max_batch + 1) * units + max_batch * arch->input) * sizeof(float) +
		           max_batch);
	if (!m || !m->mem) {
		free(m);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->arch = *arch;
	m->layers = mn_arch_layers(arch);
	m->max_batch = max_batch;
	m->nthreads = 1;
	for (size_t l = 0; l < m->layers; l++) {
		size_t sz = mn_arch_layer_out(arch, l) * max_batch;

		m->act[l] = m->mem + off;
		m->delta[l] = m->mem + off + sz;
		off += 2 * sz;
	}
	for (size_t l = 0; l < m->layers; l++) {
		m->gb[l] = m->mem + off;
		off += mn_arch_layer_out(arch, l);
	}
	m->x = m->mem + off;
	m->y = (uint8_t *)(m->x + max_batch * arch->input);
	*out = m;
	return 0;
}

static void team_stop(struct mn_mlp *m);

void mn_mlp_free(struct mn_mlp *m)
{
	if (!m)
		return;
	team_stop(m);
	free(m->mem);
	free(m);
}

static int check_batch(const struct mn_mlp *m, const uint8_t *y, size_t n)
{
	if (n == 0 || n > m->max_batch)
		return -EINVAL;
	if (y)
		for (size_t i = 0; i < n; i++)
			if (y[i] >= m->arch.output)
				return -EINVAL;
	return 0;
}

/* Fills m->act[] for n rows; the last layer holds the logits. */
static void forward(struct mn_mlp *m, const float *params, const float *x, size_t n);

/*
 * Cross-entropy of one row of logits z against label y, computed as
 * log-sum-exp(z - max) - (z[y] - max). If p is not NULL it receives the
 * softmax probabilities.
 */
static double row_xent(const float *z, size_t k, uint8_t y, float *p)
{
	float zmax = z[0];
	double sum = 0.0;

	for (size_t j = 1; j < k; j++)
		if (z[j] > zmax)
			zmax = z[j];
	for (size_t j = 0; j < k; j++)
		sum += exp((double)z[j] - (double)zmax);
	if (p)
		for (size_t j = 0; j < k; j++)
			p[j] = (float)(exp((double)z[j] - (double)zmax) / sum);
	return log(sum) - ((double)z[y] - (double)zmax);
}

int mn_mlp_loss_grad(struct mn_mlp *m, const float *params, const float *x, const uint8_t *y,
                     size_t n, float *grad, double *loss)
{
	size_t last = m->layers - 1, k = m->arch.output;
	float inv_n = 1.0f / (float)n;
	double total = 0.0;
	int rc;

	if ((rc = check_batch(m, y, n)) < 0)
		return rc;
	forward(m, params, x, n);

	/* dlogits = (softmax - onehot) / n */
	for (size_t i = 0; i < n; i++) {
		float *d = m->delta[last] + i * k;

		total += row_xent(m->act[last] + i * k, k, y[i], d);
		d[y[i]] -= 1.0f;
		for (size_t j = 0; j < k; j++)
			d[j] *= inv_n;
	}

	for (size_t l = last + 1; l-- > 0;) {
		size_t ni = mn_arch_layer_in(&m->arch, l), no = mn_arch_layer_out(&m->arch, l);
		const float *in = l == 0 ? x : m->act[l - 1];
		const float *w = params + mn_arch_weights_offset(&m->arch, l);
		float *gw = grad + mn_arch_weights_offset(&m->arch, l);
		float *gb = grad + mn_arch_biases_offset(&m->arch, l);
		const float *d = m->delta[l];
		const float *hp;
		float *dp;

		/* dW = in^T delta, [ni x no] */
		mn_sgemm(true, false, ni, no, n, in, d, 0.0f, gw);
		/* db = column sums of delta */
		memcpy(gb, d, no * sizeof(float));
		for (size_t i = 1; i < n; i++) {
			const float *row = d + i * no;

			for (size_t j = 0; j < no; j++)
				gb[j] += row[j];
		}
		if (l == 0)
			break;
		/* delta_{l-1} = (delta W^T) masked by the ReLU of layer l-1 */
		dp = m->delta[l - 1];
		hp = m->act[l - 1];

		mn_sgemm(false, true, n, ni, no, d, w, 0.0f, dp);
		for (size_t i = 0; i < n * ni; i++)
			if (!(hp[i] > 0.0f))
				dp[i] = 0.0f;
	}
	if (loss)
		*loss = total / (double)n;
	return 0;
}

int mn_mlp_eval(struct mn_mlp *m, const float *params, const float *x, const uint8_t *y, size_t n,
                double *loss_sum, size_t *correct, uint8_t *pred)
{
	size_t last = m->layers - 1, k = m->arch.output, ok = 0;
	double total = 0.0;
	int rc;

	if ((rc = check_batch(m, y, n)) < 0)
		return rc;
	forward(m, params, x, n);
	for (size_t i = 0; i < n; i++) {
		const float *z = m->act[last] + i * k;
		size_t best = 0;

		for (size_t j = 1; j < k; j++)
			if (z[j] > z[best])
				best = j;
		if (pred)
			pred[i] = (uint8_t)best;
		if (y) {
			total += row_xent(z, k, y[i], NULL);
			ok += best == y[i];
		}
	}
	if (y && loss_sum)
		*loss_sum += total;
	if (y && correct)
		*correct += ok;
	return 0;
}

/*
 * The training step's team. Why a team of our own: on a machine with as
 * many cores as threads, OpenBLAS's pool would leave its threads spinning
 * while the step's element-wise work ran on one core. Here every thread
 * takes a share of each product (one BLAS thread each) and then the
 * element-wise work on the same rows or columns, while they are still in
 * its cache. Threads meet at barriers between the phases that read what
 * others wrote.
 */

/* Spin politely: a pause, and after a while let others run. */
static void relax(unsigned *spins)
{
	if (++*spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
		return;
	}
	sched_yield();
}

static void team_barrier(struct mn_mlp *m)
{
	unsigned gen, spins = 0;

	if (m->nthreads == 1)
		return;
	gen = atomic_load_explicit(&m->bar_gen, memory_order_acquire);
	if (atomic_fetch_add_explicit(&m->bar_count, 1, memory_order_acq_rel) + 1 == m->nthreads) {
		atomic_store_explicit(&m->bar_count, 0, memory_order_relaxed);
		atomic_fetch_add_explicit(&m->bar_gen, 1, memory_order_release);
		return;
	}
	while (atomic_load_explicit(&m->bar_gen, memory_order_acquire) == gen)
		relax(&spins);
}

/* Where thread j's share of count items begins: j / threads of the way, rounded to align. */
static size_t share_start(size_t count, size_t threads, size_t j, size_t align)
{
	size_t at;

	if (j >= threads)
		return count;
	at = (j * count + threads / 2) / threads;
	at = (at + align / 2) / align * align;
	return at < count ? at : count;
}

/*
 * Thread j's share [*lo, *hi) of count items: as equal as starts at
 * multiples of align allow, since the step waits for the slowest thread at
 * every barrier (500 columns in blocks of 16 gave one thread 5 % more).
 */
static void share(size_t count, size_t threads, size_t j, size_t align, size_t *lo, size_t *hi)
{
	*lo = share_start(count, threads, j, align);
	*hi = share_start(count, threads, j + 1, align);
}

/*
 * How a forward product of n rows is shared out. By output columns when
 * the layer is wide and the batch small (a training step's 100 rows by 500
 * units): each thread then packs and reads half of the weights, which are
 * the bigger operand. By batch rows otherwise: the logits, whose weights
 * are small, and an evaluation's 1000 rows, where each thread packing the
 * whole batch would cost more than each packing all the weights (rows
 * measured 7-10 % faster there).
 */
static bool by_columns(const struct mn_mlp *m, size_t n, size_t out)
{
	return out >= 32 * m->nthreads && n < out;
}

/* h = act(h + b) on a rows x cols block with leading dimension ld. */
MN_SIMD_CLONES static void bias_act(size_t rows, size_t cols, const float *restrict b,
                                    float *restrict h, size_t ld, bool relu)
{
	for (size_t i = 0; i < rows; i++) {
		float *restrict row = h + i * ld;

		if (relu) {
#pragma omp simd
			for (size_t j = 0; j < cols; j++) {
				float v = row[j] + b[j];

				row[j] = v > 0.0f ? v : 0.0f;
			}
		} else {
#pragma omp simd
			for (size_t j = 0; j < cols; j++)
				row[j] += b[j];
		}
	}
}

/* shadow = d * shadow + (1 - d) * w on a rows x cols block with leading dimension ld. */
MN_SIMD_CLONES static void ema_block(size_t rows, size_t cols, size_t ld, float d,
                                     const float *restrict w, float *restrict shadow)
{
	float e = 1.0f - d;

	for (size_t i = 0; i < rows; i++) {
		const float *restrict wr = w + i * ld;
		float *restrict sr = shadow + i * ld;

#pragma omp simd
		for (size_t j = 0; j < cols; j++)
			sr[j] = d * sr[j] + e * wr[j];
	}
}

/*
 * w *= keep, then shadow = d * shadow + (1 - d) * w, over n floats: the L2
 * decay of the weights done in the EMA's sweep, which reads them anyway.
 * Without a shadow only w is scaled.
 */
MN_SIMD_CLONES static void decay_ema(size_t n, float keep, float d, float *restrict w,
                                     float *restrict shadow)
{
	float e = 1.0f - d;

	if (!shadow) {
#pragma omp simd
		for (size_t i = 0; i < n; i++)
			w[i] *= keep;
		return;
	}
#pragma omp simd
	for (size_t i = 0; i < n; i++) {
		float v = keep * w[i];

		w[i] = v;
		shadow[i] = d * shadow[i] + e * v;
	}
}

/* b -= lr * (column sums of the rows x cols block d), summing in gb. */
MN_SIMD_CLONES static void bias_step(size_t rows, size_t cols, const float *restrict d, size_t ld,
                                     float lr, float *restrict gb, float *restrict b)
{
	memcpy(gb, d, cols * sizeof(float));
	for (size_t i = 1; i < rows; i++) {
		const float *restrict row = d + i * ld;

#pragma omp simd
		for (size_t j = 0; j < cols; j++)
			gb[j] += row[j];
	}
#pragma omp simd
	for (size_t j = 0; j < cols; j++)
		b[j] -= lr * gb[j];
}

/* d = h > 0 ? d : 0 (the ReLU's derivative) for n floats. */
MN_SIMD_CLONES static void relu_mask(size_t n, const float *restrict h, float *restrict d)
{
#pragma omp simd
	for (size_t i = 0; i < n; i++)
		d[i] = h[i] > 0.0f ? d[i] : 0.0f;
}

/* Thread j's share of layer l's forward product, bias and activation. */
static void step_forward(struct mn_mlp *m, size_t l, const float *params, size_t n, size_t j)
{
	size_t ni = mn_arch_layer_in(&m->arch, l), no = mn_arch_layer_out(&m->arch, l), lo, hi;
	const float *in = l == 0 ? m->job_x : m->act[l - 1];
	const float *w = params + mn_arch_weights_offset(&m->arch, l);
	const float *b = params + mn_arch_biases_offset(&m->arch, l);
	bool relu = l + 1 < m->layers;
	float *h = m->act[l];

	if (by_columns(m, n, no)) {
		share(no, m->nthreads, j, 8, &lo, &hi);
		if (hi > lo) {
			sgemm_ld(false, false, n, hi - lo, ni, 1.0f, in, ni, w + lo, no, 0.0f,
			         h + lo, no);
			bias_act(n, hi - lo, b + lo, h + lo, no, relu);
		}
	} else {
		share(n, m->nthreads, j, 1, &lo, &hi);
		if (hi > lo) {
			sgemm_ld(false, false, hi - lo, no, ni, 1.0f, in + lo * ni, ni, w, no, 0.0f,
			         h + lo * no, no);
			bias_act(hi - lo, no, b, h + lo * no, no, relu);
		}
	}
}

/* Thread j's share of the loss and its gradient with respect to the logits. */
static void step_loss(struct mn_mlp *m, size_t n, size_t j)
{
	size_t last = m->layers - 1, k = m->arch.output, lo, hi;
	float inv_n = 1.0f / (float)n;
	double total = 0.0;

	share(n, m->nthreads, j, 1, &lo, &hi);
	for (size_t i = lo; i < hi; i++) {
		float *d = m->delta[last] + i * k;

		total += row_xent(m->act[last] + i * k, k, m->y[i], d);
		d[m->y[i]] -= 1.0f;
		for (size_t c = 0; c < k; c++)
			d[c] *= inv_n;
	}
	m->part[j].loss = total;
}

/*
 * Thread j's share of layer l's update and EMA: w = keep * w - lr * in^T delta.
 * Shared by rows of w, which are whole and contiguous: the shares are as
 * equal as the rows allow (784 = 2 x 392), no cache line is written by two
 * threads, and each EMA sweep is one contiguous block. The biases are
 * shared by columns.
 *
 * The product adds -(lr / keep) in^T delta to w as it is (beta 1) and the
 * EMA's sweep multiplies by keep: keep * (w - lr / keep * g) is the update,
 * and OpenBLAS's separate pass that scales w by beta (a tenth of a step's
 * cycles, perf) is gone. Without a shadow the same sum is scaled on its
 * own, so the parameters do not depend on whether there is one. keep far
 * from 1 (lr * l2 > 1/2, no sane recipe) keeps beta, so lr / keep stays
 * well conditioned.
 */
static void step_update(struct mn_mlp *m, size_t l, size_t n, size_t j)
{
	const struct mn_mlp_step *s = m->job;
	size_t ni = mn_arch_layer_in(&m->arch, l), no = mn_arch_layer_out(&m->arch, l), lo, hi;
	size_t wo = mn_arch_weights_offset(&m->arch, l), bo = mn_arch_biases_offset(&m->arch, l);
	const float *in = l == 0 ? m->x : m->act[l - 1], *d = m->delta[l];
	float *w = m->job_params + wo, *b = m->job_params + bo, *sh = m->job_shadow;
	float keep = 1.0f - s->lr * s->l2;
	bool fold = keep != 1.0f && keep > 0.5f;

	share(ni, m->nthreads, j, 8, &lo, &hi);
	if (hi > lo) {
		size_t count = (hi - lo) * no;

		sgemm_ld(true, false, hi - lo, no, n, fold ? -s->lr / keep : -s->lr, in + lo, ni, d,
		         no, fold ? 1.0f : keep, w + lo * no, no);
		if (fold)
			decay_ema(count, keep, s->ema_decay, w + lo * no,
			          sh ? sh + wo + lo * no : NULL);
		else if (sh)
			ema_block(1, count, 0, s->ema_decay, w + lo * no, sh + wo + lo * no);
	}
	share(no, m->nthreads, j, 16, &lo, &hi);
	if (hi > lo) {
		bias_step(n, hi - lo, d + lo, no, s->lr, m->gb[l] + lo, b + lo);
		if (sh)
			ema_block(1, hi - lo, 0, s->ema_decay, b + lo, sh + bo + lo);
	}
}

/* Thread j's part of a whole step. Ends at a barrier, so the step is done for all. */
static void step_part(struct mn_mlp *m, size_t j)
{
	const struct mn_mlp_step *s = m->job;
	size_t n = s->n, dim = m->arch.input, lo, hi;

	share(n, m->nthreads, j, 1, &lo, &hi);
	if (hi > lo)
		mn_view_gather(s->data, s->rows + lo, hi - lo, m->x + lo * dim, m->y + lo);
	team_barrier(m);
	for (size_t l = 0; l < m->layers; l++) {
		step_forward(m, l, m->job_params, n, j);
		team_barrier(m);
	}
	step_loss(m, n, j);
	team_barrier(m);
	for (size_t l = m->layers; l-- > 0;) {
		if (l > 0) {
			/* delta_{l-1} = (delta_l W_l^T) masked by the ReLU, before W_l changes */
			size_t ni = mn_arch_layer_in(&m->arch, l);
			size_t no = mn_arch_layer_out(&m->arch, l);
			const float *w = m->job_params + mn_arch_weights_offset(&m->arch, l);

			share(n, m->nthreads, j, 1, &lo, &hi);
			if (hi > lo) {
				sgemm_ld(false, true, hi - lo, ni, no, 1.0f, m->delta[l] + lo * no,
				         no, w, no, 0.0f, m->delta[l - 1] + lo * ni, ni);
				relu_mask((hi - lo) * ni, m->act[l - 1] + lo * ni,
				          m->delta[l - 1] + lo * ni);
			}
			team_barrier(m);
		}
		step_update(m, l, n, j);
	}
	team_barrier(m);
}

/* Thread j's part of a forward pass (the job's batch). Ends at a barrier. */
static void forward_part(struct mn_mlp *m, size_t j)
{
	for (size_t l = 0; l < m->layers; l++) {
		step_forward(m, l, m->job_params, m->job_n, j);
		team_barrier(m);
	}
}

static void *team_main(void *arg)
{
	struct mn_member *me = arg;
	struct mn_mlp *m = me->m;
	unsigned seen = me->start_go;

	for (;;) {
		unsigned go, spins = 0;

		/* About a millisecond of polite spinning covers the gap between steps. */
		while ((go = atomic_load(&m->go)) == seen) {
			if (spins < 2000) {
				relax(&spins);
				continue;
			}
			pthread_mutex_lock(&m->lock);
			atomic_fetch_add(&m->sleepers, 1);
			while (atomic_load(&m->go) == seen)
				pthread_cond_wait(&m->cond, &m->lock);
			atomic_fetch_sub(&m->sleepers, 1);
			pthread_mutex_unlock(&m->lock);
		}
		seen = go;
		if (atomic_load(&m->quit))
			return NULL;
		m->job_part(m, me->j);
	}
}

/* Starts a generation: the workers run step_part (or exit if quit is set). */
static void team_go(struct mn_mlp *m)
{
	atomic_fetch_add(&m->go, 1);
	if (atomic_load(&m->sleepers) > 0) {
		pthread_mutex_lock(&m->lock);
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
	}
}

/*
 * The forward pass of n examples x (evaluation, the gradient check), shared
 * out over the team like a training step's.
 */
static void forward(struct mn_mlp *m, const float *params, const float *x, size_t n)
{
	m->job_part = forward_part;
	m->job_x = x;
	m->job_n = n;
	m->job_params = (float *)params; /* only read by a forward pass */
	if (m->nthreads > 1)
		team_go(m);
	forward_part(m, 0);
}

static void team_stop(struct mn_mlp *m)
{
	if (m->nthreads > 1) {
		atomic_store(&m->quit, true);
		team_go(m);
		for (size_t j = 1; j < m->nthreads; j++)
			pthread_join(m->members[j - 1].tid, NULL);
		atomic_store(&m->quit, false);
	}
	free(m->members);
	m->members = NULL;
	m->nthreads = 1;
	if (m->sync_ready) {
		pthread_cond_destroy(&m->cond);
		pthread_mutex_destroy(&m->lock);
		m->sync_ready = false;
	}
}

int mn_mlp_set_threads(struct mn_mlp *m, int threads)
{
	size_t want;
	int rc = 0;

	team_stop(m);
	if (threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		threads = n > 0 ? (int)(n < MN_MLP_MAX_THREADS ? n : MN_MLP_MAX_THREADS) : 1;
	}
	want = threads < MN_MLP_MAX_THREADS ? (size_t)threads : MN_MLP_MAX_THREADS;
	openblas_set_num_threads(1);
	if (want == 1)
		return 0;
	m->members = calloc(want - 1, sizeof(*m->members));
	if (!m->members)
		return -ENOMEM;
	if (pthread_mutex_init(&m->lock, NULL) != 0)
		goto nomem;
	if (pthread_cond_init(&m->cond, NULL) != 0) {
		pthread_mutex_destroy(&m->lock);
		goto nomem;
	}
	m->sync_ready = true;
	for (size_t j = 1; j < want; j++) {
		/* go has moved if an earlier team ran: without this, the stale job would run. */
		m->members[j - 1] =
		    (struct mn_member){.m = m, .j = j, .start_go = atomic_load(&m->go)};
		rc = -pthread_create(&m->members[j - 1].tid, NULL, team_main, &m->members[j - 1]);
		if (rc < 0)
			break;
		/* Counting each one as it starts lets team_stop join exactly those. */
		m->nthreads = j + 1;
	}
	if (rc < 0)
		team_stop(m);
	return rc;
nomem:
	free(m->members);
	m->members = NULL;
	return -ENOMEM;
}

int mn_mlp_train_step(struct mn_mlp *m, const struct mn_mlp_step *s, float *params, float *shadow,
                      double *loss)
{
	const struct mn_view *v = s->data;
	double total = 0.0;

	if (s->n == 0 || s->n > m->max_batch || v->dim != m->arch.input || !v->labels)
		return -EINVAL;
	for (size_t i = 0; i < s->n; i++)
		if (s->rows[i] >= v->count || v->labels[s->rows[i]] >= m->arch.output)
			return -EINVAL;
	m->job_part = step_part;
	m->job = s;
	m->job_x = m->x;
	m->job_n = s->n;
	m->job_params = params;
	m->job_shadow = shadow;
	if (m->nthreads > 1)
		team_go(m);
	step_part(m, 0);
	/* In thread order, so the sum is the same on every run. */
	for (size_t j = 0; j < m->nthreads; j++)
		total += m->part[j].loss;
	if (loss)
		*loss = total / (double)s->n;
	return 0;
}

const float *mn_mlp_logits(const struct mn_mlp *m)
{
	return m->act[m->layers - 1];
}
