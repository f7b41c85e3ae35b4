/*
 * fuzz_config.c - libFuzzer target for the configuration parser.
 *
 * Built by meson with -Dfuzzing=true (see tests/fuzz/meson.build); run by
 * scripts/fuzz.sh. Besides "never crash, never leak", it checks that
 *  - a rejected configuration leaves the output untouched and the message
 *    names the file;
 *  - an accepted one re-serialises with mn_config_to_json into text that
 *    parses back to an identical struct and serialises to the same text;
 *  - mn_config_diff and mn_config_apply_reloadable agree with the schema's
 *    reloadable flags: after copying the reloadable keys, only keys that
 *    need a restart still differ.
 */
#include "config.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void diff_consistent(const char *key, bool reloadable, void *arg)
{
	(void)arg;
	if (mn_config_reloadable(key) != reloadable)
		abort();
}

static void diff_not_reloadable(const char *key, bool reloadable, void *arg)
{
	diff_consistent(key, reloadable, arg);
	if (reloadable)
		abort();
}

static void check_roundtrip(const struct mn_config *c)
{
	struct mn_config back, defaults;
	char err[MN_ERRLEN];
	char *json, *again;

	json = mn_config_to_json(c);
	if (!json)
		abort();
	memset(&back, 0x5a, sizeof(back));
	if (mn_config_parse(json, strlen(json), "re", &back, err, sizeof(err)) != 0)
		abort();
	if (memcmp(c, &back, sizeof(back)) != 0 || mn_config_diff(c, &back, NULL, NULL) != 0)
		abort();
	again = mn_config_to_json(&back);
	if (!again || strcmp(json, again) != 0)
		abort();
	free(again);
	free(json);

	mn_config_defaults(&defaults);
	mn_config_diff(&defaults, c, diff_consistent, NULL);
	mn_config_apply_reloadable(&defaults, c);
	mn_config_diff(&defaults, c, diff_not_reloadable, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mn_config c, untouched;
	char err[MN_ERRLEN] = "";
	struct mn_arch arch;

	memset(&c, 0xa5, sizeof(c));
	memcpy(&untouched, &c, sizeof(c));
	if (mn_config_parse((const char *)data, size, "fuzz", &c, err, sizeof(err)) != 0) {
		if (memcmp(&c, &untouched, sizeof(c)) != 0 || strncmp(err, "fuzz: ", 6) != 0 ||
		    err[6] == '\0')
			abort();
		return 0;
	}
	check_roundtrip(&c);
	/* Any accepted model.hidden gives an architecture the validator can judge. */
	mn_config_arch(&c, 784, 10, &arch);
	mn_arch_validate(&arch, err, sizeof(err));
	return 0;
}
