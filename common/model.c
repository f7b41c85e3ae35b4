/* model.c - see model.h. */
#include "model.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptdir.h"
#include "util.h"

/* Layer tensors: weights, biases, and their EMA twins. */
#define TENSORS_PER_LAYER 4
#define NAME_LEN          (MN_CKPT_MAX_NAME)

int mn_model_tensor_name(size_t l, bool biases, bool ema, char *buf, size_t len)
{
	int n = snprintf(buf, len, "layer%zu/%s%s", l + 1, biases ? "biases" : "weights",
	                 ema ? MN_EMA_SUFFIX : "");

	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

bool mn_model_is_frozen(const struct mn_ckpt *c)
{
	const char *f = mn_ckpt_meta(c, MN_META_FROZEN);

	return f && strcmp(f, "true") == 0;
}

bool mn_model_uses_ema(const struct mn_ckpt *c, bool use_ema)
{
	const char *ema = mn_ckpt_meta(c, MN_META_EMA);

	if (mn_model_is_frozen(c))
		return ema && strcmp(ema, "true") == 0;
	return use_ema;
}

int mn_model_step(const struct mn_ckpt *c, int64_t *step, char *err, size_t errlen)
{
	const char *s = mn_ckpt_meta(c, MN_META_GLOBAL_STEP);

	if (!s)
		return -ENOENT;
	if (!mn_ckpt_parse_step(s, strlen(s), step)) {
		mn_errf(err, errlen, "%s: __metadata__ global_step \"%.32s\" is not a decimal",
		        mn_ckpt_name(c), s);
		return -EINVAL;
	}
	return 0;
}

/* Copies one training-state tensor, if the file has it or complete requires it. */
static int state_tensor(const struct mn_ckpt *c, bool complete, const char *name,
                        enum mn_dtype dtype, size_t ndim, const uint64_t *shape, void *dst,
                        unsigned bit, unsigned *have, char *err, size_t errlen)
{
	int rc;

	if (!complete && !mn_ckpt_find(c, name))
		return 0;
	rc = mn_ckpt_copy(c, name, dtype, ndim, shape, dst, err, errlen);
	if (rc == 0)
		*have |= bit;
	return rc;
}

/* train/permutation: nperm entries when complete, else as many as the file has. */
static int read_permutation(const struct mn_ckpt *c, bool complete, uint64_t nperm,
                            struct mn_model_state *st, char *err, size_t errlen)
{
	const struct mn_tensor *t = mn_ckpt_find(c, MN_TENSOR_PERMUTATION);
	const char *name = mn_ckpt_name(c);
	uint8_t *seen = NULL;
	uint64_t n = nperm;
	int rc;

	if (!t && !complete)
		return 0;
	if (!complete) {
		char shape[128];

		/* mn_ckpt_copy would say "expected [<its own count>]", which helps nobody. */
		if (t->ndim != 1) {
			mn_shape_format(t, shape, sizeof(shape));
			mn_errf(err, errlen,
			        "%s: tensor \"%s\" has shape %s, expected one dimension", name,
			        MN_TENSOR_PERMUTATION, shape);
			return -EINVAL;
		}
		n = t->shape[0];
	}
	st->perm = malloc(n ? n * sizeof(*st->perm) : 1);
	seen = calloc(n ? n : 1, 1);
	if (!st->perm || !seen) {
		mn_errf(err, errlen, "%s: out of memory", name);
		rc = -ENOMEM;
		goto out;
	}
	rc = mn_ckpt_copy(c, MN_TENSOR_PERMUTATION, MN_DTYPE_U32, 1, &n, st->perm, err, errlen);
	if (rc < 0)
		goto out;
	/* A permutation with repeats would silently skew training. */
	for (uint64_t i = 0; i < n; i++) {
		if (st->perm[i] >= n || seen[st->perm[i]]) {
			mn_errf(err, errlen,
			        "%s: %s is not a permutation of %" PRIu64 " images (entry %" PRIu64
			        " is %" PRIu32 ")",
			        name, MN_TENSOR_PERMUTATION, n, i, st->perm[i]);
			rc = -EINVAL;
			goto out;
		}
		seen[st->perm[i]] = 1;
	}
	st->nperm = n;
	st->have |= MN_MODEL_HAVE_PERMUTATION;
out:
	free(seen);
	return rc;
}

/* The values of the state that were read, each against the others and the metadata. */
static int check_state(const struct mn_ckpt *c, const struct mn_model_state *st, char *err,
                       size_t errlen)
{
	const char *name = mn_ckpt_name(c);
	int64_t meta_step;

	if (st->have & MN_MODEL_HAVE_STEP) {
		if (mn_model_step(c, &meta_step, NULL, 0) == 0 && st->step != meta_step) {
			mn_errf(err, errlen,
			        "%s: tensor global_step is %" PRId64
			        " but the metadata says global_step %" PRId64,
			        name, st->step, meta_step);
			return -EINVAL;
		}
		if (st->step < 0) {
			mn_errf(err, errlen, "%s: global_step is negative (%" PRId64 ")", name,
			        st->step);
			return -EINVAL;
		}
	}
	/* xoshiro256** from an all-zero state yields zeros forever: no permutation can be drawn. */
	if ((st->have & MN_MODEL_HAVE_RNG) &&
	    !(st->rng[0] | st->rng[1] | st->rng[2] | st->rng[3])) {
		mn_errf(err, errlen,
		        "%s: train/rng is all zero, a state the generator never leaves (training "
		        "could not draw another epoch)",
		        name);
		return -EINVAL;
	}
	if ((st->have & MN_MODEL_HAVE_EPOCH) && st->epoch < 0) {
		mn_errf(err, errlen, "%s: train/epoch is negative (%" PRId64 ")", name, st->epoch);
		return -EINVAL;
	}
	if ((st->have & MN_MODEL_HAVE_PERM_POS) && (st->have & MN_MODEL_HAVE_PERMUTATION) &&
	    st->perm_pos > st->nperm) {
		mn_errf(err, errlen,
		        "%s: train/perm_pos %" PRIu64 " is beyond the permutation's %" PRIu64
		        " entries",
		        name, st->perm_pos, st->nperm);
		return -EINVAL;
	}
	return 0;
}

int mn_model_read_state(const struct mn_ckpt *c, bool complete, uint64_t nperm,
                        struct mn_model_state *st, char *err, size_t errlen)
{
	int rc;

	memset(st, 0, sizeof(*st));
	if ((rc = state_tensor(c, complete, MN_TENSOR_GLOBAL_STEP, MN_DTYPE_I64, 0, NULL, &st->step,
	                       MN_MODEL_HAVE_STEP, &st->have, err, errlen)) < 0 ||
	    (rc = state_tensor(c, complete, MN_TENSOR_RNG, MN_DTYPE_U64, 1, (uint64_t[]){4},
	                       st->rng, MN_MODEL_HAVE_RNG, &st->have, err, errlen)) < 0 ||
	    (rc = state_tensor(c, complete, MN_TENSOR_EPOCH, MN_DTYPE_I64, 0, NULL, &st->epoch,
	                       MN_MODEL_HAVE_EPOCH, &st->have, err, errlen)) < 0 ||
	    (rc = read_permutation(c, complete, nperm, st, err, errlen)) < 0 ||
	    (rc = state_tensor(c, complete, MN_TENSOR_PERM_POS, MN_DTYPE_U64, 0, NULL,
	                       &st->perm_pos, MN_MODEL_HAVE_PERM_POS, &st->have, err, errlen)) <
	        0 ||
	    (rc = check_state(c, st, err, errlen)) < 0) {
		mn_model_state_free(st);
		return rc;
	}
	return 0;
}

void mn_model_state_free(struct mn_model_state *st)
{
	if (!st)
		return;
	free(st->perm);
	st->perm = NULL;
}

/* Shape of layer l's weights ([in, out]) or biases ([out]). */
static size_t layer_shape(const struct mn_arch *a, size_t l, bool biases, uint64_t shape[2])
{
	if (biases) {
		shape[0] = mn_arch_layer_out(a, l);
		return 1;
	}
	shape[0] = mn_arch_layer_in(a, l);
	shape[1] = mn_arch_layer_out(a, l);
	return 2;
}

/*
 * Checks all layers (raw or EMA) for dtype and shape and, when params is not
 * NULL, copies them into it in mlp.h's layout.
 */
static int copy_layers(const struct mn_ckpt *c, const struct mn_arch *a, bool ema, float *params,
                       char *err, size_t errlen)
{
	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		for (int b = 0; b < 2; b++) {
			char name[NAME_LEN];
			uint64_t shape[2];
			size_t ndim = layer_shape(a, l, b, shape);
			size_t off = b ? mn_arch_biases_offset(a, l) : mn_arch_weights_offset(a, l);
			int rc;

			mn_model_tensor_name(l, b, ema, name, sizeof(name));
			rc = params ? mn_ckpt_copy(c, name, MN_DTYPE_F32, ndim, shape, params + off,
			                           err, errlen)
			            : mn_ckpt_check(c, name, MN_DTYPE_F32, ndim, shape, NULL, err,
			                            errlen);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

/*
 * Whether any of n floats is a NaN or an infinity (exponent bits all ones):
 * one branch-free sweep the compiler vectorises, since the evaluator runs it
 * on every checkpoint it loads and a finite model is the common case.
 */
static bool any_nonfinite(const float *v, size_t n)
{
	unsigned bad = 0;

#pragma omp simd reduction(| : bad)
	for (size_t i = 0; i < n; i++) {
		uint32_t bits;

		memcpy(&bits, &v[i], sizeof(bits));
		bad |= (bits & 0x7f800000u) == 0x7f800000u;
	}
	return bad != 0;
}

/* Names the first non-finite element of tensor name (shape[0] x shape[1] when ndim is 2). */
static int name_nonfinite(const char *name, const float *v, size_t ndim, const uint64_t shape[2],
                          char *err, size_t errlen)
{
	size_t n = ndim == 2 ? (size_t)(shape[0] * shape[1]) : (size_t)shape[0];

	if (!any_nonfinite(v, n))
		return 0;
	for (size_t i = 0; i < n; i++) {
		const char *what = isnan(v[i]) ? "nan" : v[i] > 0 ? "inf" : "-inf";

		if (isfinite(v[i]))
			continue;
		if (ndim == 2)
			mn_errf(err, errlen, "%s[%zu, %zu] is %s", name, i / (size_t)shape[1],
			        i % (size_t)shape[1], what);
		else
			mn_errf(err, errlen, "%s[%zu] is %s", name, i, what);
		break;
	}
	return -EINVAL;
}

/*
 * A "layer<k>/..." tensor beyond the architecture's layers means the
 * metadata describes a different network than the file holds (a
 * 64-32-16-10 model labelled 64-32-16 passes every other check).
 */
static int check_no_extra_layers(const struct mn_ckpt *c, const struct mn_arch *a, char *err,
                                 size_t errlen)
{
	size_t layers = mn_arch_layers(a);
	char arch_s[128];

	for (size_t i = 0; i < mn_ckpt_count(c); i++) {
		const char *n = mn_ckpt_tensor(c, i)->name, *p = n + 5;
		unsigned long long k = 0;

		if (strncmp(n, "layer", 5) != 0 || *p < '0' || *p > '9')
			continue;
		while (*p >= '0' && *p <= '9' && k <= layers)
			k = k * 10 + (unsigned long long)(*p++ - '0');
		while (*p >= '0' && *p <= '9')
			p++;
		if (*p != '/' || (k >= 1 && k <= layers))
			continue;
		mn_arch_format(a, arch_s, sizeof(arch_s));
		mn_errf(err, errlen,
		        "%s: tensor \"%s\" is not part of the architecture %s (%zu layers): the "
		        "metadata and the tensors describe different networks",
		        mn_ckpt_name(c), n, arch_s, layers);
		return -EINVAL;
	}
	return 0;
}

int mn_model_arch(const struct mn_ckpt *c, struct mn_arch *arch, char *err, size_t errlen)
{
	const char *json = mn_ckpt_meta(c, MN_META_ARCHITECTURE);
	struct mn_arch a;
	int rc;

	if (!json) {
		mn_errf(err, errlen, "%s: no \"architecture\" in the metadata", mn_ckpt_name(c));
		return -EINVAL;
	}
	rc = mn_arch_from_json(json, &a, err, errlen);
	if (rc < 0) {
		/* The parser's messages already begin with "architecture: ". */
		mn_errprefix(err, errlen, "%s", mn_ckpt_name(c));
		return rc;
	}
	rc = copy_layers(c, &a, false, NULL, err, errlen);
	if (rc == 0 && !mn_model_is_frozen(c))
		rc = copy_layers(c, &a, true, NULL, err, errlen);
	if (rc == 0)
		rc = check_no_extra_layers(c, &a, err, errlen);
	if (rc < 0)
		return rc;
	*arch = a;
	return 0;
}

int mn_model_load_params_reuse(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch,
                               float **params, size_t *cap, char *err, size_t errlen)
{
	struct mn_arch a;
	size_t count;
	int rc = mn_model_arch(c, &a, err, errlen);

	if (rc < 0)
		return rc;
	count = mn_arch_param_count(&a);
	if (count > *cap || !*params) {
		float *p = realloc(*params, count * sizeof(float));

		if (!p) {
			mn_errf(err, errlen, "%s: out of memory", mn_ckpt_name(c));
			return -ENOMEM;
		}
		*params = p;
		*cap = count;
	}
	rc = copy_layers(c, &a, use_ema && !mn_model_is_frozen(c), *params, err, errlen);
	if (rc < 0)
		return rc;
	*arch = a;
	return 0;
}

int mn_model_load_params(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch,
                         float **params, char *err, size_t errlen)
{
	float *p = NULL;
	size_t cap = 0;
	int rc = mn_model_load_params_reuse(c, use_ema, arch, &p, &cap, err, errlen);

	if (rc < 0) {
		free(p);
		return rc;
	}
	*params = p;
	return 0;
}

/*
 * Describes the layer tensors (raw, or their EMA twins) whose values are in
 * params (mlp.h's layout): 2 per layer into t, named in names. Returns the count.
 */
static size_t layer_tensors(const struct mn_arch *a, const float *params, bool ema,
                            struct mn_tensor *t, char (*names)[NAME_LEN])
{
	size_t n = 0;

	for (size_t l = 0; l < mn_arch_layers(a); l++) {
		for (int b = 0; b < 2; b++, n++) {
			mn_model_tensor_name(l, b, ema, names[n], NAME_LEN);
			t[n].name = names[n];
			t[n].dtype = MN_DTYPE_F32;
			t[n].ndim = layer_shape(a, l, b, t[n].shape);
			t[n].data = params + (b ? mn_arch_biases_offset(a, l)
			                        : mn_arch_weights_offset(a, l));
		}
	}
	return n;
}

int mn_model_check_finite(const struct mn_arch *a, const float *params, bool ema, char *err,
                          size_t errlen)
{
	struct mn_tensor t[2 * (MN_MAX_HIDDEN + 1)];
	char names[2 * (MN_MAX_HIDDEN + 1)][NAME_LEN];
	size_t n = layer_tensors(a, params, ema, t, names);

	for (size_t i = 0; i < n; i++) {
		int rc = name_nonfinite(t[i].name, t[i].data, t[i].ndim, t[i].shape, err, errlen);

		if (rc < 0)
			return rc;
	}
	return 0;
}

int mn_model_save(struct mn_trainer *t, const char *dir, const char *prefix, size_t max_to_keep,
                  const char *config_json, int world_size, char *name, size_t len, char *err,
                  size_t errlen)
{
	struct mn_ckptdir_versions *v;
	struct mn_trainer_state s;
	int rc = mn_ckptdir_versions_open(dir, prefix, -1, &v, err, errlen);

	if (rc < 0)
		return rc;
	mn_trainer_state(t, &s);
	rc = mn_model_save_state(mn_trainer_arch(t), &s, v, max_to_keep, config_json, world_size,
	                         name, len, err, errlen);
	mn_ckptdir_versions_free(v);
	return rc;
}

int mn_model_save_state(const struct mn_arch *a, const struct mn_trainer_state *sp,
                        struct mn_ckptdir_versions *v, size_t max_to_keep, const char *config_json,
                        int world_size, char *name, size_t len, char *err, size_t errlen)
{
	const char *dir = mn_ckptdir_versions_dir(v), *prefix = mn_ckptdir_versions_prefix(v);
	struct mn_trainer_state s = *sp;
	size_t layers = mn_arch_layers(a), nt = 0;
	size_t cap = layers * TENSORS_PER_LAYER + 5;
	struct mn_tensor *tensors = calloc(cap, sizeof(*tensors));
	char(*names)[NAME_LEN] = calloc(layers * TENSORS_PER_LAYER, NAME_LEN);
	char arch_json[1024], step_str[32], world_str[16], created[MN_TIMELEN];
	int rc = -ENOMEM;

	if (!tensors || !names) {
		mn_errf(err, errlen, "out of memory");
		goto out;
	}
	nt += layer_tensors(a, s.params, false, tensors + nt, names + nt);
	nt += layer_tensors(a, s.shadow, true, tensors + nt, names + nt);
	tensors[nt++] = (struct mn_tensor){
	    .name = MN_TENSOR_GLOBAL_STEP, .dtype = MN_DTYPE_I64, .data = s.global_step};
	tensors[nt++] = (struct mn_tensor){.name = MN_TENSOR_RNG,
	                                   .dtype = MN_DTYPE_U64,
	                                   .ndim = 1,
	                                   .shape = {4},
	                                   .data = s.rng->s};
	tensors[nt++] =
	    (struct mn_tensor){.name = MN_TENSOR_EPOCH, .dtype = MN_DTYPE_I64, .data = s.epoch};
	tensors[nt++] = (struct mn_tensor){
	    .name = MN_TENSOR_PERM_POS, .dtype = MN_DTYPE_U64, .data = s.perm_pos};
	tensors[nt++] = (struct mn_tensor){.name = MN_TENSOR_PERMUTATION,
	                                   .dtype = MN_DTYPE_U32,
	                                   .ndim = 1,
	                                   .shape = {s.nperm},
	                                   .data = s.perm};

	if (mn_arch_to_json(a, arch_json, sizeof(arch_json)) < 0) {
		mn_errf(err, errlen, "architecture too large to describe");
		rc = -EINVAL;
		goto out;
	}
	snprintf(step_str, sizeof(step_str), "%" PRId64, *s.global_step);
	snprintf(world_str, sizeof(world_str), "%d", world_size);
	mn_time_rfc3339(created);
	const struct mn_meta meta[] = {
	    {MN_META_FORMAT, MN_CKPT_FORMAT},
	    {MN_META_GLOBAL_STEP, step_str},
	    {MN_META_ARCHITECTURE, arch_json},
	    {MN_META_CREATED, created},
	    {MN_META_CONFIG, config_json ? config_json : "{}"},
	    {MN_META_WORLD_SIZE, world_str},
	};

	rc = mn_ckptdir_filename(prefix, *s.global_step, name, len);
	if (rc < 0) {
		mn_errf(err, errlen, "checkpoint name too long for prefix \"%s\"", prefix);
		goto out;
	}
	rc = mn_ckpt_write(dir, name, tensors, nt, meta, sizeof(meta) / sizeof(meta[0]), err,
	                   errlen);
	if (rc < 0)
		goto out;
	rc = mn_ckptdir_versions_publish(v, *s.global_step, max_to_keep, err, errlen);
out:
	free(tensors);
	free(names);
	return rc;
}

/*
 * The frozen model of mn_model_write_frozen(): into *out (malloc'd, *outlen
 * bytes) when out is not NULL, else written as that function says.
 */
static int frozen(const char *dir, const char *name, const struct mn_arch *a, const float *params,
                  const struct mn_meta *extra, size_t nextra, uint8_t **out, size_t *outlen,
                  char *err, size_t errlen)
{
	static const char *const own_keys[] = {MN_META_FORMAT, MN_META_ARCHITECTURE,
	                                       MN_META_CREATED, MN_META_FROZEN, MN_META_DATA_CRC32};
	size_t layers = mn_arch_layers(a), nt = 0, nm = 0;
	struct mn_tensor *tensors = calloc(2 * layers, sizeof(*tensors));
	char(*names)[NAME_LEN] = calloc(2 * layers, NAME_LEN);
	struct mn_meta *meta = calloc(nextra + 4, sizeof(*meta));
	char arch_json[1024], created[MN_TIMELEN];
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = -ENOMEM;

	if (!tensors || !names || !meta) {
		mn_errf(err, errlen, "out of memory");
		goto out;
	}
	rc = -EINVAL;
	if (mn_arch_to_json(a, arch_json, sizeof(arch_json)) < 0) {
		mn_errf(err, errlen, "architecture too large to describe");
		goto out;
	}
	nt = layer_tensors(a, params, false, tensors, names);
	mn_time_rfc3339(created);
	meta[nm++] = (struct mn_meta){MN_META_FORMAT, MN_CKPT_FORMAT};
	meta[nm++] = (struct mn_meta){MN_META_ARCHITECTURE, arch_json};
	meta[nm++] = (struct mn_meta){MN_META_CREATED, created};
	meta[nm++] = (struct mn_meta){MN_META_FROZEN, "true"};
	for (size_t i = 0; i < nextra; i++) {
		for (size_t k = 0; k < sizeof(own_keys) / sizeof(own_keys[0]); k++) {
			if (extra[i].key && strcmp(extra[i].key, own_keys[k]) == 0) {
				mn_errf(err, errlen, "metadata \"%s\" is set by the freezer",
				        extra[i].key);
				goto out;
			}
		}
		meta[nm++] = extra[i];
	}
	if (out) {
		rc = mn_ckpt_encode(tensors, nt, meta, nm, out, outlen, err, errlen);
	} else if (dir) {
		rc = mn_ckpt_write(dir, name, tensors, nt, meta, nm, err, errlen);
	} else {
		rc = mn_ckpt_encode(tensors, nt, meta, nm, &buf, &len, err, errlen);
		if (rc == 0 &&
		    (rc = mn_write_iov(STDOUT_FILENO,
		                       &(struct iovec){.iov_base = buf, .iov_len = len}, 1)) < 0)
			mn_errf(err, errlen, "standard output: %s", strerror(-rc));
	}
out:
	free(buf);
	free(tensors);
	free(names);
	free(meta);
	return rc;
}

int mn_model_write_frozen(const char *dir, const char *name, const struct mn_arch *a,
                          const float *params, const struct mn_meta *extra, size_t nextra,
                          char *err, size_t errlen)
{
	return frozen(dir, name, a, params, extra, nextra, NULL, NULL, err, errlen);
}

int mn_model_encode_frozen(const struct mn_arch *a, const float *params,
                           const struct mn_meta *extra, size_t nextra, uint8_t **buf, size_t *len,
                           char *err, size_t errlen)
{
	return frozen(NULL, NULL, a, params, extra, nextra, buf, len, err, errlen);
}

/* Training cannot continue from a NaN or an infinity: every step would stay non-finite. */
static int check_finite(const struct mn_ckpt *c, const struct mn_arch *a, const float *params,
                        const float *shadow, char *err, size_t errlen)
{
	char what[MN_ERRLEN];

	if (mn_model_check_finite(a, params, false, what, sizeof(what)) == 0 &&
	    mn_model_check_finite(a, shadow, true, what, sizeof(what)) == 0)
		return 0;
	mn_errf(err, errlen, "%s: %s: training cannot continue from a non-finite value",
	        mn_ckpt_name(c), what);
	return -EINVAL;
}

int mn_model_restore(struct mn_trainer *t, const struct mn_ckpt *c, char *err, size_t errlen)
{
	const struct mn_arch *a = mn_trainer_arch(t);
	struct mn_model_state st = {0};
	struct mn_trainer_state s;
	float *params = NULL, *shadow = NULL;
	int rc = -ENOMEM;

	mn_trainer_state(t, &s);
	params = malloc(s.nparams * sizeof(float));
	shadow = malloc(s.nparams * sizeof(float));
	if (!params || !shadow) {
		mn_errf(err, errlen, "%s: out of memory", mn_ckpt_name(c));
		goto out;
	}
	/* Stage everything first so a bad file leaves the trainer untouched. */
	if ((rc = copy_layers(c, a, false, params, err, errlen)) < 0 ||
	    (rc = copy_layers(c, a, true, shadow, err, errlen)) < 0 ||
	    (rc = check_finite(c, a, params, shadow, err, errlen)) < 0 ||
	    (rc = mn_model_read_state(c, true, s.nperm, &st, err, errlen)) < 0)
		goto out;
	memcpy(s.params, params, s.nparams * sizeof(float));
	memcpy(s.shadow, shadow, s.nparams * sizeof(float));
	memcpy(s.perm, st.perm, s.nperm * sizeof(uint32_t));
	memcpy(s.rng->s, st.rng, sizeof(st.rng));
	*s.global_step = st.step;
	*s.epoch = st.epoch;
	*s.perm_pos = st.perm_pos;
	rc = 0;
out:
	mn_model_state_free(&st);
	free(params);
	free(shadow);
	return rc;
}

/* Index of layer variable "to" (2 * layer + biases), or -1 with the valid names in err. */
static int variable_index(const struct mn_arch *a, const char *to, char *err, size_t errlen)
{
	size_t nvars = 2 * mn_arch_layers(a), pos;
	char name[NAME_LEN], arch_s[128];

	for (size_t v = 0; v < nvars; v++) {
		mn_model_tensor_name(v / 2, v % 2, false, name, sizeof(name));
		if (strcmp(name, to) == 0)
			return (int)v;
	}
	mn_arch_format(a, arch_s, sizeof(arch_s));
	mn_errf(err, errlen, "\"%s\" is not a variable of this model (%s); its variables are: ", to,
	        arch_s);
	pos = err ? strlen(err) : 0;
	for (size_t v = 0; v < nvars && err && pos < errlen; v++) {
		int n;

		mn_model_tensor_name(v / 2, v % 2, false, name, sizeof(name));
		n = snprintf(err + pos, errlen - pos, "%s%s", v ? ", " : "", name);
		if (n < 0)
			break;
		pos += (size_t)n;
	}
	return -1;
}

/* Adds both architectures to a shape mismatch, when the file says what it was. */
static void append_arch_hint(const struct mn_ckpt *c, const struct mn_arch *a, char *err,
                             size_t errlen)
{
	const char *json = mn_ckpt_meta(c, MN_META_ARCHITECTURE);
	struct mn_arch theirs;
	char mine_s[128], theirs_s[128];
	size_t pos;

	if (!err || !json || mn_arch_from_json(json, &theirs, NULL, 0) < 0)
		return;
	mn_arch_format(a, mine_s, sizeof(mine_s));
	mn_arch_format(&theirs, theirs_s, sizeof(theirs_s));
	pos = strlen(err);
	if (pos < errlen)
		snprintf(err + pos, errlen - pos, " (this model is %s, the file's is %s)", mine_s,
		         theirs_s);
}

/* Stages one init_from entry: the file's tensor from into this model's variable to. */
static int warm_load(const struct mn_ckpt *c, const struct mn_arch *a, const char *to,
                     const char *from, bool *loaded, float *staged, char *err, size_t errlen)
{
	int v = variable_index(a, to, err, errlen);
	uint64_t shape[2];
	size_t ndim, off;
	int rc;

	if (v < 0) {
		mn_errprefix(err, errlen, "map");
		return -EINVAL;
	}
	if (loaded[v]) {
		mn_errf(err, errlen, "map: \"%s\" is mapped twice", to);
		return -EINVAL;
	}
	ndim = layer_shape(a, (size_t)v / 2, v % 2, shape);
	off = v % 2 ? mn_arch_biases_offset(a, (size_t)v / 2)
	            : mn_arch_weights_offset(a, (size_t)v / 2);
	rc = mn_ckpt_copy(c, from, MN_DTYPE_F32, ndim, shape, staged + off, err, errlen);
	if (rc < 0) {
		if (rc != -ENOENT)
			append_arch_hint(c, a, err, errlen);
		mn_errprefix(err, errlen, "map \"%s\"", to);
		return rc;
	}
	/* Training from a NaN or an infinity would be non-finite from the first step. */
	rc = name_nonfinite(from, staged + off, ndim, shape, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "map \"%s\": %s", to, mn_ckpt_name(c));
		return rc;
	}
	loaded[v] = true;
	return 0;
}

int mn_model_warm_start(struct mn_trainer *t, const struct mn_config *cfg, char *err, size_t errlen)
{
	const struct mn_arch *a = mn_trainer_arch(t);
	const char *path = cfg->checkpoint.init_from_file;
	size_t nvars = 2 * mn_arch_layers(a);
	size_t nmap = cfg->checkpoint.init_from_nmap;
	struct mn_trainer_state s;
	struct mn_ckpt *c = NULL;
	float *staged = NULL;
	bool loaded[2 * (MN_MAX_HIDDEN + 1)] = {false};
	int rc;

	/*
	 * Any safetensors file will do: frozen models and converted files carry
	 * no global_step, and the checksum is still verified when present.
	 */
	rc = mn_ckpt_read(path, 0, &c, err, errlen);
	if (rc < 0)
		return rc;
	mn_trainer_state(t, &s);
	staged = malloc(s.nparams * sizeof(float));
	if (!staged) {
		mn_errf(err, errlen, "%s: out of memory", path);
		rc = -ENOMEM;
		goto out;
	}
	/* An empty map loads every variable under its own name (TF's WarmStartSettings). */
	for (size_t i = 0; i < (nmap ? nmap : nvars); i++) {
		char own[NAME_LEN];
		const char *to, *from;

		if (nmap) {
			to = cfg->checkpoint.init_from_map[i].to;
			from = cfg->checkpoint.init_from_map[i].from;
		} else {
			mn_model_tensor_name(i / 2, i % 2, false, own, sizeof(own));
			to = from = own;
		}
		rc = warm_load(c, a, to, from, loaded, staged, err, errlen);
		if (rc < 0)
			goto out;
	}
	/* Commit only once every tensor loaded, so a bad map leaves the fresh model intact. */
	for (size_t v = 0; v < nvars; v++) {
		size_t l = v / 2, off, n;

		if (!loaded[v])
			continue;
		off = v % 2 ? mn_arch_biases_offset(a, l) : mn_arch_weights_offset(a, l);
		n = v % 2 ? mn_arch_layer_out(a, l)
		          : mn_arch_layer_in(a, l) * mn_arch_layer_out(a, l);
		memcpy(s.params + off, staged + off, n * sizeof(float));
		memcpy(s.shadow + off, staged + off, n * sizeof(float));
	}
	rc = 0;
out:
	free(staged);
	mn_ckpt_free(c);
	return rc;
}
