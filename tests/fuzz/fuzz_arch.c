/*
 * fuzz_arch.c - libFuzzer target for the architecture JSON that checkpoint
 * metadata carries (mn_arch_from_json).
 *
 * Built by meson with -Dfuzzing=true (see tests/fuzz/meson.build); run by
 * scripts/fuzz.sh. Besides "never crash, never leak", it checks that
 *  - a rejection leaves the output untouched and says why;
 *  - what is accepted passes mn_arch_validate, has its parameter layout
 *    within MN_MAX_PARAMS and in order, and survives mn_arch_to_json and
 *    mn_arch_from_json unchanged;
 *  - mn_arch_to_json and mn_arch_format never write past a short buffer.
 */
#include "mlp.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_layout(const struct mn_arch *a)
{
	size_t layers = mn_arch_layers(a), off = 0;

	if (layers != a->nhidden + 1 || a->nhidden > MN_MAX_HIDDEN || a->output > 256)
		abort();
	for (size_t l = 0; l < layers; l++) {
		size_t in = mn_arch_layer_in(a, l), out = mn_arch_layer_out(a, l);

		if (in == 0 || out == 0 || in > MN_MAX_UNITS || out > MN_MAX_UNITS)
			abort();
		if (l > 0 && in != mn_arch_layer_out(a, l - 1))
			abort();
		if (mn_arch_weights_offset(a, l) != off ||
		    mn_arch_biases_offset(a, l) != off + in * out)
			abort();
		off += in * out + out;
	}
	if (mn_arch_layer_in(a, 0) != a->input || mn_arch_layer_out(a, layers - 1) != a->output ||
	    off != mn_arch_param_count(a) || off > MN_MAX_PARAMS)
		abort();
}

/* Writes a into buffers of every short size: the result fits or says -ENOSPC. */
static void check_short_buffers(const struct mn_arch *a, const char *full, int fulllen)
{
	for (size_t len = 0; len <= (size_t)fulllen + 1; len++) {
		char *buf = malloc(len ? len : 1);
		int rc;

		if (!buf)
			abort();
		rc = mn_arch_to_json(a, len ? buf : NULL, len);
		if ((size_t)fulllen < len ? rc != fulllen || strcmp(buf, full) != 0 : rc != -ENOSPC)
			abort();
		mn_arch_format(a, len ? buf : NULL, len);
		if (len && memchr(buf, '\0', len) == NULL)
			abort();
		free(buf);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mn_arch a, back, untouched;
	char err[MN_ERRLEN] = "", json[512];
	char *text;
	int n;

	/* The metadata value reaches the parser as a C string. */
	text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	memset(&a, 0xa5, sizeof(a));
	memcpy(&untouched, &a, sizeof(a));
	if (mn_arch_from_json(text, &a, err, sizeof(err)) != 0) {
		if (memcmp(&a, &untouched, sizeof(a)) != 0 ||
		    strncmp(err, "architecture: ", 14) != 0 || err[14] == '\0')
			abort();
		goto out;
	}
	if (mn_arch_validate(&a, err, sizeof(err)) != 0)
		abort();
	check_layout(&a);
	n = mn_arch_to_json(&a, json, sizeof(json));
	if (n <= 0 || (size_t)n >= sizeof(json) || strlen(json) != (size_t)n)
		abort();
	memset(&back, 0, sizeof(back));
	if (mn_arch_from_json(json, &back, err, sizeof(err)) != 0 || !mn_arch_equal(&a, &back))
		abort();
	check_short_buffers(&a, json, n);
out:
	free(text);
	return 0;
}
