/*
 * ctl_freeze.c - mnistctl freeze: a checkpoint's chosen values (the EMA
 * shadows by default, TensorFlow's variables_to_restore) as an
 * inference-only model in one self-describing file, like
 * convert_variables_to_constants.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ckpt.h"
#include "ctl.h"
#include "ctl_util.h"
#include "mlp.h"
#include "model.h"
#include "util.h"

static const char freeze_help[] =
    "Usage: mnistctl freeze [--raw] [--prefix PREFIX] [--json] CKPT|DIR -o OUT\n"
    "\n"
    "Writes an inference-only model: the values of a checkpoint under the plain\n"
    "layer names (layer<i>/weights, layer<i>/biases), without EMA twins or\n"
    "training state, in one self-describing safetensors file that 'mnistctl\n"
    "predict' (or any safetensors reader) can run. By default the values are the\n"
    "EMA shadows, as the evaluator uses them (TensorFlow's variables_to_restore);\n"
    "--raw takes the raw variables instead. Values that are NaN or infinite are\n"
    "refused, naming the tensor and the element.\n"
    "\n"
    "The metadata says what the file is: format, architecture (kept from the\n"
    "checkpoint), global_step and config (carried over), created (now),\n"
    "frozen \"true\", source (the checkpoint's file name, as mnistctl prints it)\n"
    "and ema (\"true\" or \"false\"). The checkpoint is fully validated first, and the output is\n"
    "published atomically; interrupted (SIGINT, SIGTERM, SIGHUP), freeze removes\n"
    "its temporary file.\n"
    "\n"
    "Given a directory, freezes its best checkpoint if it is the evaluator's\n"
    "eval.best_dir (the first in DIR/best.json that still exists, else the\n"
    "highest-step PREFIX-<step>.safetensors), else its latest: the one named\n"
    "by DIR/checkpoint.json (unless that file is gone), else the highest-step\n"
    "PREFIX-<step>.safetensors.\n"
    "\n"
    "Options:\n"
    "  -o, --output OUT     the file to write (required); replaced if it is a\n"
    "                       regular file (which keeps its permission bits),\n"
    "                       refused if it is anything else (a device, FIFO,\n"
    "                       directory or symbolic link) or the checkpoint being\n"
    "                       frozen (a frozen model may be); '-' writes\n"
    "                       the model to standard output and the report to\n"
    "                       standard error\n"
    "      --raw            the raw variables instead of the EMA shadows\n"
    "  -p, --prefix PREFIX  checkpoint file prefix for a directory without\n"
    "                       checkpoint.json (default: checkpoint.prefix from the\n"
    "                       configuration, model.ckpt)\n"
    "  -j, --json           describe the result as JSON\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 written, 1 error (nothing written), 2 usage error.\n"
    "\n"
    "Example:\n"
    "  mnistctl freeze /var/lib/mnistd -o fashion-mlp.safetensors\n";

static int freeze_run(const char *src, const char *prefix, const struct ctl_globals *g,
                      const char *out, bool raw, bool json)
{
	/* An escape is at most 4 bytes per byte of a name (NAME_MAX 255). */
	char path[CTL_PATH_MAX], dir[CTL_PATH_MAX], err[MN_ERRLEN], arch_s[256],
	    source[4 * 255 + 1];
	struct mn_meta extra[4];
	struct mn_ckpt *c = NULL;
	struct mn_arch arch;
	float *params = NULL;
	uint8_t *buf = NULL;
	struct iovec iov;
	const char *base, *ema, *step;
	size_t nextra = 0, len = 0;
	bool to_stdout = strcmp(out, "-") == 0;
	/* With the model itself on standard output, its description goes to standard error. */
	FILE *report = to_stdout ? stderr : stdout;
	int ex = MN_EX_FAILURE;

	base = ctl_output_path(out, dir, sizeof(dir), err, sizeof(err));
	if (!base ||
	    ctl_resolve_checkpoint(src, prefix, g, path, sizeof(path), err, sizeof(err)) < 0) {
		ctl_errorf("freeze", "%s", err);
		return MN_EX_FAILURE;
	}
	/*
	 * A checkpoint frozen onto itself would lose its training state for
	 * good; a frozen model re-frozen in place loses nothing.
	 */
	if (mn_ckpt_read(path, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err)) < 0 ||
	    (!mn_model_is_frozen(c) &&
	     ctl_check_not_source(out, path, "the checkpoint", err, sizeof(err)) < 0) ||
	    ctl_load_model(c, !raw, &arch, &params, err, sizeof(err)) < 0) {
		ctl_errorf("freeze", "%s", err);
		goto out;
	}
	/* A frozen source keeps the "ema" it recorded. */
	ema = mn_model_uses_ema(c, !raw) ? "true" : "false";
	step = mn_ckpt_meta(c, MN_META_GLOBAL_STEP);
	extra[nextra++] = (struct mn_meta){MN_META_GLOBAL_STEP, step};
	if (mn_ckpt_meta(c, MN_META_CONFIG))
		extra[nextra++] = (struct mn_meta){MN_META_CONFIG, mn_ckpt_meta(c, MN_META_CONFIG)};
	/*
	 * Metadata is UTF-8 and the file name bytes: what is not UTF-8, and what
	 * a terminal would act on, is kept visibly (\xNN), as mnistctl prints it.
	 */
	extra[nextra++] =
	    (struct mn_meta){MN_META_SOURCE, mn_escape(mn_basename(path), source, sizeof(source))};
	extra[nextra++] = (struct mn_meta){MN_META_EMA, ema};
	if (mn_model_encode_frozen(&arch, params, extra, nextra, &buf, &len, err, sizeof(err)) <
	    0) {
		ctl_errorf("freeze", "%s", err);
		goto out;
	}
	iov = (struct iovec){.iov_base = buf, .iov_len = len};
	if (ctl_write_output(dir, base, &iov, 1, false, err, sizeof(err)) < 0) {
		ctl_errorf("freeze", "%s", err);
		goto out;
	}
	mn_arch_format(&arch, arch_s, sizeof(arch_s));
	if (json) {
		cJSON *root = cJSON_CreateObject();
		int64_t stepv = 0;

		ctl_json_str(root, "file", out);
		ctl_json_str(root, "source", path);
		ctl_json_str(root, "architecture", arch_s);
		/* Checked by the reader (MN_CKPT_REQUIRE_MNISTD); never pasted in as raw JSON. */
		if (mn_model_step(c, &stepv, NULL, 0) == 0)
			ctl_json_int(root, "step", stepv);
		else
			ctl_json_add(root, "step", cJSON_CreateNull());
		ctl_json_bool(root, "ema", strcmp(ema, "true") == 0);
		if (ctl_json_fprint(report, root) < 0)
			goto out;
	} else {
		/* The paths may come from a directory's index: shown as ctl_fputs_escaped does. */
		ctl_fputs_escaped(report, out);
		fprintf(report, ": frozen %s model from ", arch_s);
		ctl_fputs_escaped(report, path);
		fprintf(report, " (step %s, %s values)\n", step,
		        strcmp(ema, "true") == 0 ? "EMA" : "raw");
	}
	ex = MN_EX_OK;
out:
	free(buf);
	free(params);
	mn_ckpt_free(c);
	return ex;
}

int ctl_freeze(int argc, char **argv, const struct ctl_globals *g)
{
	enum { OPT_RAW = 256 };
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'}, {"raw", no_argument, NULL, OPT_RAW},
	    {"prefix", required_argument, NULL, 'p'}, {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},         {0},
	};
	const char *out = NULL, *prefix = NULL;
	bool raw = false, json = g->json;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:p:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			out = optarg;
			break;
		case OPT_RAW:
			raw = true;
			break;
		case 'p':
			prefix = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(freeze_help, stdout);
			return MN_EX_OK;
		default:
			return ctl_option_error("freeze", c, argv, opts);
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("freeze", optind >= argc
		                                     ? "no CKPT or DIR given"
		                                     : "exactly one CKPT or DIR, please");
	if (!out)
		return ctl_usage_error("freeze", "no output file: -o OUT is required");
	if (prefix && ctl_check_prefix("freeze", prefix) != MN_EX_OK)
		return MN_EX_USAGE;
	return freeze_run(argv[optind], prefix, g, out, raw, json);
}
