/*
 * fuzz_ckpt.c - libFuzzer target for the checkpoint reader.
 *
 * Built by meson with -Dfuzzing=true (see tests/fuzz/meson.build); run by
 * scripts/fuzz.sh.
 *
 * Besides "never crash, never leak", it checks that whatever the reader
 * accepts, the writer can write again and the reader reads back unchanged,
 * and it runs what the evaluator and mnistctl do next with a file, the
 * model-level checks (architecture against tensors) and the parameter
 * copy, which must agree with each other.
 */
#include "ckpt.h"
#include "model.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accessors(const struct mn_ckpt *c)
{
	char err[MN_ERRLEN];
	uint8_t dst[64];

	for (size_t i = 0; i < mn_ckpt_count(c); i++) {
		const struct mn_tensor *t = mn_ckpt_tensor(c, i);
		volatile uint8_t sink = 0;

		/* Touch every byte a tensor claims, so ASan sees any bad offset. */
		for (size_t k = 0; k < t->nbytes; k++)
			sink ^= ((const uint8_t *)t->data)[k];
		(void)sink;
		if (mn_ckpt_find(c, t->name) == NULL)
			abort();
		if (t->nbytes <= sizeof(dst) && mn_ckpt_copy(c, t->name, t->dtype, t->ndim,
		                                             t->shape, dst, err, sizeof(err)) != 0)
			abort();
	}
	for (size_t i = 0; i < mn_ckpt_meta_count(c); i++)
		if (mn_ckpt_meta(c, mn_ckpt_meta_at(c, i)->key) == NULL)
			abort();
	mn_ckpt_copy(c, "no such tensor", MN_DTYPE_F32, 0, NULL, dst, err, sizeof(err));
	mn_ckpt_copy(c, "no such tensor", MN_DTYPE_F32, 0, NULL, dst, err, 16);
}

static void check_reencode(const struct mn_ckpt *c)
{
	size_t nt = mn_ckpt_count(c), nm = 0, len = 0;
	struct mn_tensor *t = calloc(nt + 1, sizeof(*t));
	struct mn_meta *m = calloc(mn_ckpt_meta_count(c) + 1, sizeof(*m));
	struct mn_ckpt *back = NULL;
	char err[MN_ERRLEN];
	uint8_t *buf = NULL;

	if (!t || !m)
		goto out;
	for (size_t i = 0; i < nt; i++)
		t[i] = *mn_ckpt_tensor(c, i);
	for (size_t i = 0; i < mn_ckpt_meta_count(c); i++)
		if (strcmp(mn_ckpt_meta_at(c, i)->key, "data_crc32") != 0)
			m[nm++] = *mn_ckpt_meta_at(c, i);
	if (mn_ckpt_encode(t, nt, m, nm, &buf, &len, err, sizeof(err)) != 0)
		abort();
	if (mn_ckpt_parse(buf, len, "re", 0, &back, err, sizeof(err)) != 0)
		abort();
	if (mn_ckpt_count(back) != nt || mn_ckpt_meta_count(back) != nm + 1)
		abort();
	for (size_t i = 0; i < nt; i++) {
		const struct mn_tensor *a = mn_ckpt_tensor(c, i), *b = mn_ckpt_tensor(back, i);

		if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
		    memcmp(a->shape, b->shape, a->ndim * sizeof(a->shape[0])) != 0 ||
		    a->nbytes != b->nbytes || (a->nbytes && memcmp(a->data, b->data, a->nbytes)))
			abort();
	}
	for (size_t i = 0; i < nm; i++)
		if (strcmp(mn_ckpt_meta_at(back, i)->value, m[i].value) != 0)
			abort();
out:
	mn_ckpt_free(back);
	free(buf);
	free(m);
	free(t);
}

static void check_model(const struct mn_ckpt *c)
{
	char err[MN_ERRLEN];
	struct mn_arch arch, loaded;
	int rc = mn_model_arch(c, &arch, err, sizeof(err));

	for (int ema = 0; ema < 2; ema++) {
		float *params = NULL;
		volatile float sink = 0;

		if (mn_model_load_params(c, ema, &loaded, &params, err, sizeof(err)) != rc)
			abort();
		if (rc != 0) {
			/* Not always in front ("tensor ... not found in fuzz"), but named. */
			if (params != NULL || strstr(err, "fuzz") == NULL)
				abort();
			continue;
		}
		if (!mn_arch_equal(&arch, &loaded) ||
		    mn_arch_validate(&arch, err, sizeof(err)) != 0)
			abort();
		/* Touch every parameter, so ASan sees a layout that outgrows the array. */
		for (size_t i = 0; i < mn_arch_param_count(&arch); i++)
			sink += params[i];
		(void)sink;
		free(params);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[MN_ERRLEN];
	struct mn_ckpt *c = NULL;

	for (unsigned flags = 0; flags <= MN_CKPT_REQUIRE_MNISTD; flags++) {
		err[0] = '\0';
		if (mn_ckpt_parse(data, size, "fuzz", flags, &c, err, sizeof(err)) != 0) {
			/* Every rejection explains itself. */
			if (c != NULL || strncmp(err, "fuzz: ", 6) != 0 || err[6] == '\0')
				abort();
			continue;
		}
		check_accessors(c);
		check_reencode(c);
		if (flags == 0)
			check_model(c);
		mn_ckpt_free(c);
		c = NULL;
	}
	return 0;
}
