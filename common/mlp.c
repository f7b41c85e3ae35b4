/* mlp.c - see mlp.h. The only file that calls BLAS. */
#include "mlp.h"

#include <cJSON.h>
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
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

struct mn_mlp {
	struct mn_arch arch;
	size_t layers;
	size_t max_batch;
	/* Per layer: max_batch x out_l. act: ReLU output (logits for the last layer). */
	float *act[MN_MAX_HIDDEN + 1];
	/* Per layer: the loss gradient with respect to the layer's pre-activation. */
	float *delta[MN_MAX_HIDDEN + 1];
	float *mem;
};

/*
 * C = op(A) op(B) + beta C, all row-major and densely packed: op(A) is M x K,
 * op(B) is K x N, C is M x N. beta 0 overwrites C (OpenBLAS does not read it).
 */
static void mn_sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float *a,
                     const float *b, float beta, float *c)
{
	cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
	            trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a,
	            (int)(trans_a ? m : k), b, (int)(trans_b ? k : n), beta, c, (int)n);
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
	m = max_batch > SIZE_MAX / sizeof(float) / 2 / units ? NULL : calloc(1, sizeof(*m));
	if (m)
		m->mem = malloc(2 * units * max_batch * sizeof(float));
	if (!m || !m->mem) {
		free(m);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->arch = *arch;
	m->layers = mn_arch_layers(arch);
	m->max_batch = max_batch;
	for (size_t l = 0; l < m->layers; l++) {
		size_t sz = mn_arch_layer_out(arch, l) * max_batch;

		m->act[l] = m->mem + off;
		m->delta[l] = m->mem + off + sz;
		off += 2 * sz;
	}
	*out = m;
	return 0;
}

void mn_mlp_free(struct mn_mlp *m)
{
	if (!m)
		return;
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
static void forward(struct mn_mlp *m, const float *params, const float *x, size_t n)
{
	const float *in = x;

	for (size_t l = 0; l < m->layers; l++) {
		size_t ni = mn_arch_layer_in(&m->arch, l), no = mn_arch_layer_out(&m->arch, l);
		const float *w = params + mn_arch_weights_offset(&m->arch, l);
		const float *b = params + mn_arch_biases_offset(&m->arch, l);
		float *h = m->act[l];
		bool relu = l + 1 < m->layers;

		mn_sgemm(false, false, n, no, ni, in, w, 0.0f, h);
		for (size_t i = 0; i < n; i++) {
			float *row = h + i * no;

			if (relu)
				for (size_t j = 0; j < no; j++) {
					float v = row[j] + b[j];

					row[j] = v > 0.0f ? v : 0.0f;
				}
			else
				for (size_t j = 0; j < no; j++)
					row[j] += b[j];
		}
		in = h;
	}
}

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
