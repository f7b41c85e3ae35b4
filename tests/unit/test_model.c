/* test_model.c - tensor names, architecture checks, loading, save/restore, freezing, warm start. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "config.h"
#include "model.h"
#include "train.h"
#include "util.h"

#include "mn_test.h"

#define N_EX   60
#define IN_DIM 16
#define OUT    4

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[PATH_MAX];
static char err[MN_ERRLEN];

static const struct mn_hparams hp = MN_TEST_HPARAMS;

static void setup(void)
{
	mn_test_fill_classes(images, labels, N_EX, IN_DIM, OUT);
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	err[0] = '\0';
}

static void teardown(void)
{
	mn_test_rmtree(tmpdir);
}

static const char *tpath(const char *name)
{
	static char buf[PATH_MAX + 256];

	snprintf(buf, sizeof(buf), "%s/%s", tmpdir, name);
	return buf;
}

static struct mn_view view(void)
{
	return (struct mn_view){.images = images, .labels = labels, .count = N_EX, .dim = IN_DIM};
}

/* A trainer of shape IN_DIM-hidden...-OUT; the view must outlive it. */
static struct mn_trainer *trainer(const struct mn_view *v, const size_t *hidden, size_t nhidden,
                                  uint64_t seed, int steps)
{
	struct mn_trainer_params p = {.batch_size = 10, .seed = seed, .init_stddev = 0.1f};
	struct mn_trainer *t = NULL;
	double loss, lr;

	p.arch.input = IN_DIM;
	p.arch.output = OUT;
	p.arch.nhidden = nhidden;
	memcpy(p.arch.hidden, hidden, nhidden * sizeof(*hidden));
	ck_assert_int_eq(mn_trainer_new(&p, v, &t, err, sizeof(err)), 0);
	for (int i = 0; i < steps; i++)
		ck_assert_int_eq(mn_trainer_step(t, &hp, &loss, &lr), 0);
	return t;
}

/* Saves t into tmpdir and reads it back, fully validated. */
static struct mn_ckpt *save_and_read(struct mn_trainer *t, char *name, size_t len)
{
	struct mn_ckpt *c = NULL;

	ck_assert_int_eq(
	    mn_model_save(t, tmpdir, "model.ckpt", 0, "{\"k\":1}", 1, name, len, err, sizeof(err)),
	    0);
	ck_assert_int_eq(mn_ckpt_read(tpath(name), MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err)),
	                 0);
	return c;
}

/* Encodes tensors and metadata and parses the result back as "edited.safetensors". */
static struct mn_ckpt *encode_parse(const struct mn_tensor *t, size_t nt, const struct mn_meta *m,
                                    size_t nm)
{
	struct mn_ckpt *out = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	ck_assert_int_eq(mn_ckpt_encode(t, nt, m, nm, &buf, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_ckpt_parse(buf, len, "edited.safetensors", 0, &out, err, sizeof(err)),
	                 0);
	free(buf);
	return out;
}

/*
 * Re-encodes c's tensors, leaving out skip and replacing the architecture
 * when arch is set (dropping it when arch is "").
 */
static struct mn_ckpt *reencode(const struct mn_ckpt *c, const char *skip, const char *arch)
{
	struct mn_tensor t[32];
	struct mn_meta m[16];
	size_t nt = 0, nm = 0;

	for (size_t i = 0; i < mn_ckpt_count(c); i++) {
		const struct mn_tensor *src = mn_ckpt_tensor(c, i);

		if (skip && strcmp(src->name, skip) == 0)
			continue;
		ck_assert_uint_lt(nt, 32);
		t[nt++] = *src;
	}
	for (size_t i = 0; i < mn_ckpt_meta_count(c); i++) {
		const struct mn_meta *e = mn_ckpt_meta_at(c, i);

		if (strcmp(e->key, "data_crc32") == 0)
			continue;
		if (arch && strcmp(e->key, "architecture") == 0) {
			if (*arch)
				m[nm++] = (struct mn_meta){e->key, arch};
			continue;
		}
		m[nm++] = *e;
	}
	return encode_parse(t, nt, m, nm);
}

START_TEST(test_tensor_names)
{
	char buf[64];

	ck_assert_int_eq(mn_model_tensor_name(0, false, false, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "layer1/weights");
	ck_assert_int_eq(mn_model_tensor_name(1, true, false, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "layer2/biases");
	ck_assert_int_eq(mn_model_tensor_name(2, false, true, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "layer3/weights/ExponentialMovingAverage");
	ck_assert_int_eq(mn_model_tensor_name(0, true, true, buf, 10), -ENAMETOOLONG);
}
END_TEST

START_TEST(test_arch_check)
{
	struct mn_view v = view();
	struct mn_trainer *t = trainer(&v, (size_t[]){8}, 1, 1, 3);
	struct mn_ckpt *c, *e;
	struct mn_arch a;
	char name[128];

	c = save_and_read(t, name, sizeof(name));
	ck_assert_str_eq(name, "model.ckpt-3.safetensors");
	ck_assert_int_eq(mn_model_arch(c, &a, err, sizeof(err)), 0);
	ck_assert(mn_arch_equal(&a, mn_trainer_arch(t)));

	/* A missing EMA tensor: the message names it and lists what is there. */
	e = reencode(c, "layer2/biases/ExponentialMovingAverage", NULL);
	ck_assert_int_eq(mn_model_arch(e, &a, err, sizeof(err)), -ENOENT);
	ck_assert_msg(strstr(err, "tensor \"layer2/biases/ExponentialMovingAverage\" not "
	                          "found in edited.safetensors (it has: layer1/weights"),
	              "%s", err);
	mn_ckpt_free(e);

	/* An architecture the tensors do not have: both shapes are named. */
	e = reencode(c, NULL, "{\"input\":16,\"hidden\":[9],\"output\":4,\"activation\":\"relu\"}");
	ck_assert_int_eq(mn_model_arch(e, &a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(
	    strstr(err, "\"layer1/weights\" has shape [16, 8], expected [16, 9]"));
	mn_ckpt_free(e);

	e = reencode(c, NULL, "");
	ck_assert_int_eq(mn_model_arch(e, &a, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no \"architecture\""));
	mn_ckpt_free(e);

	e = reencode(c, NULL, "{\"input\":16}");
	ck_assert_int_lt(mn_model_arch(e, &a, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "edited.safetensors: architecture"));
	mn_ckpt_free(e);

	mn_ckpt_free(c);
	mn_trainer_free(t);
}
END_TEST

START_TEST(test_load_params_ema_raw)
{
	struct mn_view v = view();
	struct mn_trainer *t = trainer(&v, (size_t[]){8, 5}, 2, 2, 7);
	struct mn_trainer_state s;
	struct mn_ckpt *c;
	struct mn_arch a;
	float *p = NULL;
	char name[128];

	mn_trainer_state(t, &s);
	c = save_and_read(t, name, sizeof(name));
	/* After training the two sets differ, so each comparison below means something. */
	ck_assert(memcmp(s.params, s.shadow, s.nparams * sizeof(float)) != 0);

	ck_assert_int_eq(mn_model_load_params(c, true, &a, &p, err, sizeof(err)), 0);
	ck_assert(mn_arch_equal(&a, mn_trainer_arch(t)));
	ck_assert_mem_eq(p, s.shadow, s.nparams * sizeof(float));
	free(p);
	ck_assert_int_eq(mn_model_load_params(c, false, &a, &p, err, sizeof(err)), 0);
	ck_assert_mem_eq(p, s.params, s.nparams * sizeof(float));
	free(p);
	mn_ckpt_free(c);
	mn_trainer_free(t);
}
END_TEST

/* Loading into the caller's array: the same values, the same memory while it fits. */
START_TEST(test_load_params_reuse)
{
	struct mn_view v = view();
	struct mn_trainer *t = trainer(&v, (size_t[]){8, 5}, 2, 2, 7);
	struct mn_trainer_state s;
	struct mn_ckpt *c;
	struct mn_arch a;
	float *p = NULL, *first;
	size_t cap = 0;
	char name[128];

	mn_trainer_state(t, &s);
	c = save_and_read(t, name, sizeof(name));
	ck_assert_int_eq(mn_model_load_params_reuse(c, true, &a, &p, &cap, err, sizeof(err)), 0);
	ck_assert(mn_arch_equal(&a, mn_trainer_arch(t)));
	ck_assert_uint_eq(cap, s.nparams);
	ck_assert_mem_eq(p, s.shadow, s.nparams * sizeof(float));
	first = p;
	ck_assert_int_eq(mn_model_load_params_reuse(c, false, &a, &p, &cap, err, sizeof(err)), 0);
	ck_assert_ptr_eq(p, first);
	ck_assert_mem_eq(p, s.params, s.nparams * sizeof(float));
	/* Too small an array is grown. */
	cap = 3;
	ck_assert_int_eq(mn_model_load_params_reuse(c, false, &a, &p, &cap, err, sizeof(err)), 0);
	ck_assert_uint_eq(cap, s.nparams);
	ck_assert_mem_eq(p, s.params, s.nparams * sizeof(float));
	free(p);
	mn_ckpt_free(c);
	mn_trainer_free(t);
}
END_TEST

START_TEST(test_save_restore_round_trip)
{
	struct mn_view v = view();
	struct mn_trainer *a = trainer(&v, (size_t[]){8}, 1, 3, 13);
	struct mn_trainer *b = trainer(&v, (size_t[]){8}, 1, 99, 0);
	struct mn_trainer_state sa, sb;
	struct mn_ckpt *c;
	double loss, lr;
	char name[128];

	c = save_and_read(a, name, sizeof(name));
	ck_assert_int_eq(mn_model_restore(b, c, err, sizeof(err)), 0);
	mn_trainer_state(a, &sa);
	mn_trainer_state(b, &sb);
	ck_assert_int_eq(*sb.global_step, 13);
	ck_assert_mem_eq(sa.params, sb.params, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.shadow, sb.shadow, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.perm, sb.perm, sa.nperm * sizeof(uint32_t));
	ck_assert_mem_eq(sa.rng->s, sb.rng->s, sizeof(sa.rng->s));
	/* Exact resume: the next steps are identical too (an epoch boundary included). */
	for (int i = 0; i < 8; i++) {
		ck_assert_int_eq(mn_trainer_step(a, &hp, &loss, &lr), 0);
		ck_assert_int_eq(mn_trainer_step(b, &hp, &loss, &lr), 0);
	}
	ck_assert_mem_eq(sa.params, sb.params, sa.nparams * sizeof(float));
	ck_assert_mem_eq(sa.shadow, sb.shadow, sa.nparams * sizeof(float));
	mn_ckpt_free(c);
	mn_trainer_free(a);
	mn_trainer_free(b);
}
END_TEST

START_TEST(test_frozen)
{
	struct mn_view v = view();
	struct mn_trainer *t = trainer(&v, (size_t[]){8}, 1, 4, 5);
	const struct mn_meta extra[] = {{"global_step", "5"}, {"source", "model.ckpt-5"}};
	struct mn_trainer_state s;
	struct mn_ckpt *c = NULL;
	struct mn_arch a;
	float *p = NULL;

	mn_trainer_state(t, &s);
	ck_assert_int_eq(mn_model_write_frozen(tmpdir, "frozen.safetensors", mn_trainer_arch(t),
	                                       s.shadow, extra, 2, err, sizeof(err)),
	                 0);
	ck_assert_int_eq(
	    mn_ckpt_read(tpath("frozen.safetensors"), MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err)),
	    0);
	ck_assert_str_eq(mn_ckpt_meta(c, "frozen"), "true");
	ck_assert_str_eq(mn_ckpt_meta(c, "format"), MN_CKPT_FORMAT);
	ck_assert_str_eq(mn_ckpt_meta(c, "source"), "model.ckpt-5");
	ck_assert_ptr_nonnull(mn_ckpt_meta(c, "created"));
	/* Only the plain layer names: no EMA twins, no training state. */
	ck_assert_uint_eq(mn_ckpt_count(c), 4);
	ck_assert_ptr_null(mn_ckpt_find(c, "layer1/weights/ExponentialMovingAverage"));
	ck_assert_ptr_null(mn_ckpt_find(c, "global_step"));
	ck_assert_int_eq(mn_model_arch(c, &a, err, sizeof(err)), 0);
	ck_assert(mn_arch_equal(&a, mn_trainer_arch(t)));
	/* A frozen model has one set of values, whichever is asked for. */
	ck_assert_int_eq(mn_model_load_params(c, true, &a, &p, err, sizeof(err)), 0);
	ck_assert_mem_eq(p, s.shadow, s.nparams * sizeof(float));
	free(p);
	ck_assert_int_eq(mn_model_load_params(c, false, &a, &p, err, sizeof(err)), 0);
	ck_assert_mem_eq(p, s.shadow, s.nparams * sizeof(float));
	free(p);
	mn_ckpt_free(c);

	/* The freezer owns these keys; a caller cannot override them. */
	ck_assert_int_eq(mn_model_write_frozen(tmpdir, "bad.safetensors", mn_trainer_arch(t),
	                                       s.params, (struct mn_meta[]){{"frozen", "false"}}, 1,
	                                       err, sizeof(err)),
	                 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "\"frozen\""));
	ck_assert_int_eq(access(tpath("bad.safetensors"), F_OK), -1);
	mn_trainer_free(t);
}
END_TEST

static void set_map(struct mn_config *cfg, const char *file, const char *const (*map)[2], size_t n)
{
	mn_config_defaults(cfg);
	ck_assert_uint_lt(strlen(file), sizeof(cfg->checkpoint.init_from_file));
	memcpy(cfg->checkpoint.init_from_file, file, strlen(file) + 1);
	cfg->checkpoint.init_from_nmap = n;
	for (size_t i = 0; i < n; i++) {
		struct mn_config_rename *r = &cfg->checkpoint.init_from_map[i];

		ck_assert_uint_lt(strlen(map[i][0]), sizeof(r->to));
		ck_assert_uint_lt(strlen(map[i][1]), sizeof(r->from));
		memcpy(r->to, map[i][0], strlen(map[i][0]) + 1);
		memcpy(r->from, map[i][1], strlen(map[i][1]) + 1);
	}
}

/* Offset and length (floats) of layer l's weights or biases. */
static void span(const struct mn_arch *a, size_t l, bool b, size_t *off, size_t *n)
{
	*off = b ? mn_arch_biases_offset(a, l) : mn_arch_weights_offset(a, l);
	*n = b ? mn_arch_layer_out(a, l) : mn_arch_layer_in(a, l) * mn_arch_layer_out(a, l);
}

/*
 * The first NaN or infinity is named as a checkpoint names its tensor, at
 * every position the vectorised sweep can leave it (in a full vector, in the
 * tail), and a value as large as a float holds is finite.
 */
START_TEST(test_check_finite)
{
	size_t hidden[] = {7};
	struct mn_arch a = mn_test_arch(5, 1, hidden, 3);
	size_t n = mn_arch_param_count(&a), w1 = mn_arch_weights_offset(&a, 0);
	size_t b2 = mn_arch_biases_offset(&a, 1);
	float *p = calloc(n, sizeof(float));

	ck_assert_ptr_nonnull(p);
	p[0] = 3.4e38f;
	p[n - 1] = -3.4e38f;
	ck_assert_int_eq(mn_model_check_finite(&a, p, false, err, sizeof(err)), 0);
	/* Every element of layer1/weights [5, 7] in turn. */
	for (size_t i = 0; i < 5 * 7; i++) {
		char want[64];

		p[w1 + i] = NAN;
		ck_assert_int_eq(mn_model_check_finite(&a, p, false, err, sizeof(err)), -EINVAL);
		snprintf(want, sizeof(want), "layer1/weights[%zu, %zu] is nan", i / 7, i % 7);
		ck_assert_str_eq(err, want);
		p[w1 + i] = 0.0f;
	}
	p[b2 + 2] = -INFINITY;
	ck_assert_int_eq(mn_model_check_finite(&a, p, true, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "layer2/biases/ExponentialMovingAverage[2] is -inf");
	p[b2 + 1] = INFINITY;
	ck_assert_int_eq(mn_model_check_finite(&a, p, false, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "layer2/biases[1] is inf");
	free(p);
}
END_TEST

START_TEST(test_warm_start_mapped)
{
	struct mn_view v = view();
	/* Source 16-8-4, target 16-8-6-4: only layer1 has the same shape in both. */
	struct mn_trainer *src = trainer(&v, (size_t[]){8}, 1, 5, 9);
	struct mn_trainer *dst = trainer(&v, (size_t[]){8, 6}, 2, 6, 0);
	struct mn_trainer *fresh = trainer(&v, (size_t[]){8, 6}, 2, 6, 0);
	static const char *const map[][2] = {
	    {"layer1/weights", "layer1/weights/ExponentialMovingAverage"},
	    {"layer1/biases", "layer1/biases"},
	};
	struct mn_trainer_state ss, sd, sf;
	const struct mn_arch *a;
	struct mn_config cfg;
	struct mn_ckpt *c;
	char name[128];
	size_t off, n, boff, bn;

	c = save_and_read(src, name, sizeof(name));
	mn_ckpt_free(c);
	set_map(&cfg, tpath(name), map, 2);
	ck_assert_int_eq(mn_model_warm_start(dst, &cfg, err, sizeof(err)), 0);
	mn_trainer_state(src, &ss);
	mn_trainer_state(dst, &sd);
	mn_trainer_state(fresh, &sf);
	a = mn_trainer_arch(dst);

	/* Renamed: layer1/weights came from the source's EMA shadow, into both sets. */
	span(a, 0, false, &off, &n);
	ck_assert_mem_eq(sd.params + off, ss.shadow + off, n * sizeof(float));
	ck_assert_mem_eq(sd.shadow + off, ss.shadow + off, n * sizeof(float));
	ck_assert(memcmp(sd.params + off, sf.params + off, n * sizeof(float)) != 0);
	span(a, 0, true, &boff, &bn);
	ck_assert_mem_eq(sd.params + boff, ss.params + boff, bn * sizeof(float));
	ck_assert_mem_eq(sd.shadow + boff, ss.params + boff, bn * sizeof(float));
	/* Everything after layer1 is exactly the fresh initialisation. */
	span(a, 1, false, &off, &n);
	ck_assert_mem_eq(sd.params + off, sf.params + off, (sd.nparams - off) * sizeof(float));
	ck_assert_mem_eq(sd.shadow + off, sf.shadow + off, (sd.nparams - off) * sizeof(float));
	ck_assert_int_eq(*sd.global_step, 0);

	mn_trainer_free(src);
	mn_trainer_free(dst);
	mn_trainer_free(fresh);
}
END_TEST

START_TEST(test_warm_start_identity)
{
	struct mn_view v = view();
	struct mn_trainer *src = trainer(&v, (size_t[]){8}, 1, 7, 4);
	struct mn_trainer *dst = trainer(&v, (size_t[]){8}, 1, 8, 0);
	struct mn_trainer_state ss, sd;
	struct mn_config cfg;
	char name[128];

	mn_ckpt_free(save_and_read(src, name, sizeof(name)));
	set_map(&cfg, tpath(name), NULL, 0);
	ck_assert_int_eq(mn_model_warm_start(dst, &cfg, err, sizeof(err)), 0);
	mn_trainer_state(src, &ss);
	mn_trainer_state(dst, &sd);
	/* An empty map loads every variable under its own name: the raw values. */
	ck_assert_mem_eq(sd.params, ss.params, ss.nparams * sizeof(float));
	ck_assert_mem_eq(sd.shadow, ss.params, ss.nparams * sizeof(float));
	ck_assert_int_eq(*sd.global_step, 0);
	mn_trainer_free(src);
	mn_trainer_free(dst);
}
END_TEST

/* Runs a warm start that must fail, and checks the trainer was left untouched. */
static int warm_fail(struct mn_trainer *t, const struct mn_config *cfg)
{
	struct mn_trainer_state s;
	float *before;
	int rc;

	mn_trainer_state(t, &s);
	before = malloc(2 * s.nparams * sizeof(float));
	ck_assert_ptr_nonnull(before);
	memcpy(before, s.params, s.nparams * sizeof(float));
	memcpy(before + s.nparams, s.shadow, s.nparams * sizeof(float));
	rc = mn_model_warm_start(t, cfg, err, sizeof(err));
	ck_assert_int_lt(rc, 0);
	ck_assert_mem_eq(before, s.params, s.nparams * sizeof(float));
	ck_assert_mem_eq(before + s.nparams, s.shadow, s.nparams * sizeof(float));
	free(before);
	return rc;
}

START_TEST(test_warm_start_errors)
{
	struct mn_view v = view();
	struct mn_trainer *src = trainer(&v, (size_t[]){8}, 1, 9, 2);
	struct mn_trainer *dst = trainer(&v, (size_t[]){7}, 1, 10, 0);
	struct mn_config cfg;
	char name[128], path[PATH_MAX + 256];
	FILE *f;

	mn_ckpt_free(save_and_read(src, name, sizeof(name)));
	snprintf(path, sizeof(path), "%s", tpath(name));

	/* The first entry loads, the second does not: nothing may change. */
	set_map(
	    &cfg, path,
	    (const char *const[][2]){{"layer2/biases", "layer2/biases"}, {"layer1/biases", "v1_1"}},
	    2);
	ck_assert_int_eq(warm_fail(dst, &cfg), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "map \"layer1/biases\": tensor \"v1_1\" not found in "));
	ck_assert_ptr_nonnull(strstr(err, "model.ckpt-2.safetensors (it has: layer1/weights, "));

	/* Same name, other shape: both shapes and both architectures. */
	set_map(&cfg, path, (const char *const[][2]){{"layer1/weights", "layer1/weights"}}, 1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "has shape [16, 8], expected [16, 7]"));
	ck_assert_ptr_nonnull(strstr(err, "this model is 16-7-4, the file's is 16-8-4"));

	/* A dtype mismatch: global_step is I64. */
	set_map(&cfg, path, (const char *const[][2]){{"layer2/biases", "global_step"}}, 1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "dtype I64, expected F32"));

	/* Targets must be this model's variables; the message lists them. */
	set_map(&cfg, path, (const char *const[][2]){{"layer3/weights", "layer1/weights"}}, 1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "\"layer3/weights\" is not a variable of this model "
	                                  "(16-7-4); its variables are: layer1/weights, "
	                                  "layer1/biases, layer2/weights, layer2/biases"));
	set_map(
	    &cfg, path,
	    (const char *const[][2]){{"layer1/biases/ExponentialMovingAverage", "layer1/biases"}},
	    1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "is not a variable of this model"));

	/* A value that is not finite: training from it would be NaN from the first step. */
	{
		struct mn_trainer_state ss;
		const struct mn_arch *a = mn_trainer_arch(src);
		float *copy;

		mn_trainer_state(src, &ss);
		copy = malloc(ss.nparams * sizeof(float));
		ck_assert_ptr_nonnull(copy);
		memcpy(copy, ss.params, ss.nparams * sizeof(float));
		copy[mn_arch_biases_offset(a, 1) + 3] = NAN;
		ck_assert_int_eq(mn_model_write_frozen(tmpdir, "nan.safetensors", a, copy, NULL, 0,
		                                       err, sizeof(err)),
		                 0);
		free(copy);
		set_map(&cfg, tpath("nan.safetensors"),
		        (const char *const[][2]){{"layer2/biases", "layer2/biases"}}, 1);
		ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "map \"layer2/biases\": "));
		ck_assert_ptr_nonnull(strstr(err, "nan.safetensors: layer2/biases[3] is nan"));
	}

	/* A missing file and a corrupted one. */
	set_map(&cfg, tpath("nope.safetensors"),
	        (const char *const[][2]){{"layer1/biases", "layer1/biases"}}, 1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nope.safetensors"));

	f = fopen(path, "r+b");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fseek(f, -1, SEEK_END), 0);
	ck_assert_int_eq(fputc(0x5a, f), 0x5a);
	ck_assert_int_eq(fclose(f), 0);
	set_map(&cfg, path, (const char *const[][2]){{"layer2/biases", "layer2/biases"}}, 1);
	ck_assert_int_eq(warm_fail(dst, &cfg), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "checksum mismatch"));

	mn_trainer_free(src);
	mn_trainer_free(dst);
}
END_TEST

/* c's tensors with one replaced (same name), and metadata as given; parsed back. */
static struct mn_ckpt *edited(const struct mn_ckpt *c, const struct mn_tensor *swap,
                              const struct mn_meta *m, size_t nm)
{
	struct mn_tensor t[32];
	size_t nt = 0;

	for (size_t i = 0; i < mn_ckpt_count(c); i++) {
		const struct mn_tensor *src = mn_ckpt_tensor(c, i);

		ck_assert_uint_lt(nt, 32);
		t[nt++] = swap && strcmp(src->name, swap->name) == 0 ? *swap : *src;
	}
	return encode_parse(t, nt, m, nm);
}

START_TEST(test_schema)
{
	struct mn_view v = view();
	struct mn_trainer *t = trainer(&v, (size_t[]){8}, 1, 5, 13);
	struct mn_model_state st;
	struct mn_trainer_state s;
	struct mn_ckpt *c, *e;
	int64_t step = -1;
	uint32_t perm[N_EX];
	char name[128];

	mn_trainer_state(t, &s);
	c = save_and_read(t, name, sizeof(name));
	ck_assert(!mn_model_is_frozen(c));
	ck_assert(mn_model_uses_ema(c, true) && !mn_model_uses_ema(c, false));
	ck_assert_int_eq(mn_model_step(c, &step, err, sizeof(err)), 0);
	ck_assert_int_eq(step, 13);
	ck_assert_int_eq(mn_model_read_state(c, true, s.nperm, &st, err, sizeof(err)), 0);
	ck_assert_uint_eq(st.have, MN_MODEL_HAVE_ALL);
	ck_assert_int_eq(st.step, 13);
	ck_assert_uint_eq(st.nperm, s.nperm);
	ck_assert_mem_eq(st.perm, s.perm, s.nperm * sizeof(uint32_t));
	mn_model_state_free(&st);
	/* A trainer with another training set size cannot resume from it. */
	ck_assert_int_lt(mn_model_read_state(c, true, s.nperm + 1, &st, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, MN_TENSOR_PERMUTATION));

	/* One rule for a step: plain decimal, no leading zero (ckpt.h). */
	e = edited(c, NULL, (struct mn_meta[]){{MN_META_GLOBAL_STEP, "007"}}, 1);
	ck_assert_int_eq(mn_model_step(e, &step, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "global_step \"007\" is not a decimal"));
	mn_ckpt_free(e);
	e = edited(c, NULL, (struct mn_meta[]){{MN_META_FROZEN, "true"}, {MN_META_EMA, "true"}}, 2);
	ck_assert_int_eq(mn_model_step(e, &step, err, sizeof(err)), -ENOENT);
	ck_assert(mn_model_is_frozen(e));
	ck_assert(mn_model_uses_ema(e, false));
	mn_ckpt_free(e);

	/* The tensor and the metadata must agree on the step. */
	e = edited(c, NULL, (struct mn_meta[]){{MN_META_GLOBAL_STEP, "12"}}, 1);
	ck_assert_int_eq(mn_model_read_state(e, false, 0, &st, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "tensor global_step is 13 but the metadata says "
	                                  "global_step 12"));
	mn_ckpt_free(e);

	/* A permutation with a repeat is refused, whoever reads it. */
	memcpy(perm, s.perm, s.nperm * sizeof(uint32_t));
	perm[1] = perm[0];
	e = edited(c,
	           &(struct mn_tensor){.name = MN_TENSOR_PERMUTATION,
	                               .dtype = MN_DTYPE_U32,
	                               .ndim = 1,
	                               .shape = {s.nperm},
	                               .data = perm},
	           NULL, 0);
	ck_assert_int_eq(mn_model_read_state(e, false, 0, &st, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "train/permutation is not a permutation"));
	ck_assert_int_eq(mn_model_restore(t, e, err, sizeof(err)), -EINVAL);
	mn_ckpt_free(e);

	/* A partial file passes the partial check and is not complete. */
	e = reencode(c, MN_TENSOR_RNG, NULL);
	ck_assert_int_eq(mn_model_read_state(e, false, 0, &st, err, sizeof(err)), 0);
	ck_assert_uint_eq(st.have, MN_MODEL_HAVE_ALL & ~MN_MODEL_HAVE_RNG);
	mn_model_state_free(&st);
	ck_assert_int_eq(mn_model_read_state(e, true, s.nperm, &st, err, sizeof(err)), -ENOENT);
	mn_ckpt_free(e);
	mn_ckpt_free(c);
	mn_trainer_free(t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("model");

	MN_TEST_ADD(mn_test_tcase(s, "core", setup, teardown), test_tensor_names, test_arch_check,
	            test_load_params_ema_raw, test_load_params_reuse, test_save_restore_round_trip,
	            test_frozen, test_check_finite, test_warm_start_mapped,
	            test_warm_start_identity, test_warm_start_errors, test_schema);
	return mn_test_run(s);
}
