/*
 * ctl_export.c - mnistctl export: a checkpoint's chosen values (the EMA
 * shadows by default, as freeze takes them) as an ONNX model, the file
 * serving stacks load (ctl_onnx.h has the graph).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "ckpt.h"
#include "ctl.h"
#include "ctl_onnx.h"
#include "ctl_util.h"
#include "mlp.h"
#include "mn_build_config.h"
#include "model.h"
#include "util.h"

static const char export_help[] =
    "Usage: mnistctl export [--raw] [--force] [--prefix PREFIX] [--json] CKPT|DIR -o OUT\n"
    "\n"
    "Writes a checkpoint or a frozen model as an ONNX model (IR version 7, opset\n"
    "13), the format ONNX Runtime, Triton, OpenVINO and TensorRT load. By\n"
    "default the values are the EMA shadows, as the evaluator and 'mnistctl\n"
    "freeze' use them; --raw takes the raw variables instead.\n"
    "\n"
    "The graph takes the input \"images\", float [N, input] with N any batch size\n"
    "and pixels scaled to [0, 1] (byte / 255) as in training, and computes per\n"
    "hidden layer MatMul, Add and Relu, then a last MatMul and Add giving the\n"
    "output \"logits\" [N, classes], and Softmax giving \"probabilities\". The\n"
    "initializers keep the checkpoint's tensor names (layer<i>/weights,\n"
    "layer<i>/biases). producer_name is mnistd, model_version the global step,\n"
    "and metadata_props hold source (the file's name, as mnistctl prints it),\n"
    "global_step, architecture, data_crc32 (the source's) and ema.\n"
    "\n"
    "The checkpoint is fully validated first, and values that are NaN or\n"
    "infinite are refused (ONNX runtimes would give NaN for every image). The\n"
    "output is published atomically; an existing OUT, even one created while\n"
    "the model is written, is replaced only with --force, only if it is a\n"
    "regular file other than the checkpoint, and keeps its permission bits. Interrupted (SIGINT, "
    "SIGTERM, SIGHUP), export removes its\n"
    "temporary file.\n"
    "\n"
    "Given a directory, exports its best checkpoint if it is the evaluator's\n"
    "eval.best_dir (the first in DIR/best.json that still exists, else the\n"
    "highest-step PREFIX-<step>.safetensors), else its latest: the one named\n"
    "by DIR/checkpoint.json (unless that file is gone), else the highest-step\n"
    "PREFIX-<step>.safetensors.\n"
    "\n"
    "Options:\n"
    "  -o, --output OUT     the file to write (required); '-' writes the model to\n"
    "                       standard output and the report to standard error\n"
    "      --raw            the raw variables instead of the EMA shadows\n"
    "  -f, --force          replace OUT if it exists\n"
    "  -p, --prefix PREFIX  checkpoint file prefix for a directory without\n"
    "                       checkpoint.json (default: checkpoint.prefix from the\n"
    "                       configuration, model.ckpt)\n"
    "  -j, --json           describe the result as JSON: file, source,\n"
    "                       architecture, step, ema, bytes, ir_version, opset,\n"
    "                       inputs, outputs\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 written, 1 error (nothing written), 2 usage error.\n"
    "\n"
    "Example:\n"
    "  mnistctl export /var/lib/mnistd -o fashion-mlp.onnx\n";

struct export_args {
	const char *src, *out, *prefix;
	bool raw, force, json;
};

/* What was exported, for the report. */
struct export_info {
	char path[CTL_PATH_MAX];
	char arch_s[256];
	const char *step; /* the "global_step" text */
	int64_t stepv;    /* its value, when has_step */
	bool has_step, ema;
	size_t bytes;
};

/*
 * The atomic writer renames over whatever OUT is, so a device, a FIFO, a
 * directory or a symbolic link there would be replaced rather than written:
 * only a regular file may be, and only when asked to.
 */
static int check_target(const char *out, bool force, char *err, size_t errlen)
{
	struct stat st;
	int rc;

	if (strcmp(out, "-") == 0)
		return 0; /* standard output */
	if (lstat(out, &st) < 0) {
		rc = -errno;
		if (rc == -ENOENT)
			return 0;
		mn_errf(err, errlen, "%s: %s", out, strerror(-rc));
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		mn_errf(err, errlen, "%s exists and is not a regular file; not replacing it", out);
		return -EEXIST;
	}
	if (!force) {
		mn_errf(err, errlen, "%s exists (--force replaces it)", out);
		return -EEXIST;
	}
	return 0;
}

/* Encodes the model and its description; *buf and *len as ctl_onnx_encode gives them. */
static int encode(const struct mn_ckpt *c, const struct mn_arch *arch, const float *params,
                  struct export_info *info, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
	/* An escape is at most 4 bytes per byte of a name (NAME_MAX 255). */
	char arch_json[512], doc[2048], source[4 * 255 + 1];
	const char *crc = mn_ckpt_meta(c, MN_META_DATA_CRC32);
	struct mn_meta props[5];
	struct ctl_onnx_desc d = {.producer_version = MN_VERSION, .props = props};
	int n, rc;

	if (mn_arch_to_json(arch, arch_json, sizeof(arch_json)) < 0) {
		mn_errf(err, errlen, "%s: architecture too long to describe", info->path);
		return -EINVAL;
	}
	/*
	 * The file name is bytes, ONNX strings are UTF-8: what is not UTF-8, and
	 * what a terminal would act on, is written visibly (\xNN), as mnistctl
	 * prints it.
	 */
	mn_escape(mn_basename(info->path), source, sizeof(source));
	if (info->has_step)
		d.model_version = info->stepv;
	props[d.nprops++] = (struct mn_meta){MN_META_SOURCE, source};
	props[d.nprops++] = (struct mn_meta){MN_META_GLOBAL_STEP, info->step};
	props[d.nprops++] = (struct mn_meta){MN_META_ARCHITECTURE, arch_json};
	if (crc)
		props[d.nprops++] = (struct mn_meta){MN_META_DATA_CRC32, crc};
	props[d.nprops++] = (struct mn_meta){MN_META_EMA, info->ema ? "true" : "false"};
	n = snprintf(doc, sizeof(doc),
	             "mnistd MLP %s exported from %s (global step %s, data_crc32 %s, %s values). "
	             "Input \"images\": float [N, %zu], pixels scaled to [0, 1]. Outputs "
	             "\"logits\" and \"probabilities\": float [N, %zu].",
	             info->arch_s, source, info->step, crc ? crc : "none",
	             info->ema ? "EMA" : "raw", arch->input, arch->output);
	/* Never cut: a cut could split a UTF-8 sequence (the sizes above leave room). */
	if (n < 0 || (size_t)n >= sizeof(doc)) {
		mn_errf(err, errlen, "%s: description too long", info->path);
		return -EINVAL;
	}
	d.doc_string = doc;
	rc = ctl_onnx_encode(arch, params, &d, buf, len, err, errlen);
	if (rc == -EINVAL)
		mn_errprefix(err, errlen, "%s (%s values)", info->path, info->ema ? "EMA" : "raw");
	return rc;
}

static int report(const struct export_args *a, const struct export_info *info)
{
	/* With the model itself on standard output, its description goes to standard error. */
	FILE *f = strcmp(a->out, "-") == 0 ? stderr : stdout;
	cJSON *root, *arr;

	if (!a->json) {
		/* The paths may come from a directory's index: printed as ctl_fputs_escaped shows
		 * them. */
		ctl_fputs_escaped(f, a->out);
		fprintf(f, ": ONNX model (IR %d, opset %d, %zu bytes) of %s from ",
		        CTL_ONNX_IR_VERSION, CTL_ONNX_OPSET, info->bytes, info->arch_s);
		ctl_fputs_escaped(f, info->path);
		fprintf(f, " (step %s, %s values)\n", info->step, info->ema ? "EMA" : "raw");
		return MN_EX_OK;
	}
	root = cJSON_CreateObject();
	ctl_json_str(root, "file", a->out);
	ctl_json_str(root, "source", info->path);
	ctl_json_str(root, "architecture", info->arch_s);
	if (info->has_step)
		ctl_json_int(root, "step", info->stepv);
	else
		ctl_json_add(root, "step", cJSON_CreateNull());
	ctl_json_bool(root, "ema", info->ema);
	ctl_json_int(root, "bytes", (int64_t)info->bytes);
	ctl_json_int(root, "ir_version", CTL_ONNX_IR_VERSION);
	ctl_json_int(root, "opset", CTL_ONNX_OPSET);
	arr = ctl_json_add(root, "inputs", cJSON_CreateArray());
	ctl_json_str(arr, NULL, "images");
	arr = ctl_json_add(root, "outputs", cJSON_CreateArray());
	ctl_json_str(arr, NULL, "logits");
	ctl_json_str(arr, NULL, "probabilities");
	return ctl_json_fprint(f, root) < 0 ? MN_EX_FAILURE : MN_EX_OK;
}

static int export_run(const struct export_args *a, const struct ctl_globals *g)
{
	char dir[CTL_PATH_MAX], err[MN_ERRLEN];
	struct export_info info = {0};
	struct mn_ckpt *c = NULL;
	struct mn_arch arch;
	struct iovec iov;
	float *params = NULL;
	uint8_t *buf = NULL;
	const char *base;
	struct stat st;
	int ex = MN_EX_FAILURE, rc;

	base = ctl_output_path(a->out, dir, sizeof(dir), err, sizeof(err));
	if (!base || check_target(a->out, a->force, err, sizeof(err)) < 0 ||
	    ctl_resolve_checkpoint(a->src, a->prefix, g, info.path, sizeof(info.path), err,
	                           sizeof(err)) < 0 ||
	    ctl_check_not_source(a->out, info.path, "the checkpoint", err, sizeof(err)) < 0 ||
	    mn_ckpt_read(info.path, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err)) < 0 ||
	    ctl_load_model(c, !a->raw, &arch, &params, err, sizeof(err)) < 0) {
		ctl_errorf("export", "%s", err);
		goto out;
	}
	mn_arch_format(&arch, info.arch_s, sizeof(info.arch_s));
	info.step = mn_ckpt_meta(c, MN_META_GLOBAL_STEP);
	info.has_step = mn_model_step(c, &info.stepv, NULL, 0) == 0;
	info.ema = mn_model_uses_ema(c, !a->raw);
	if (encode(c, &arch, params, &info, &buf, &info.bytes, err, sizeof(err)) < 0) {
		ctl_errorf("export", "%s", err);
		goto out;
	}
	iov = (struct iovec){.iov_base = buf, .iov_len = info.bytes};
	if ((rc = ctl_write_output(dir, base, &iov, 1, !a->force, err, sizeof(err))) < 0) {
		/* Created since check_target() looked: still only --force replaces it. */
		if (rc == -EEXIST && !a->force && lstat(a->out, &st) == 0 && S_ISREG(st.st_mode))
			ctl_errorf("export", "%s exists (--force replaces it)", a->out);
		else
			ctl_errorf("export", "%s", err);
		goto out;
	}
	ex = report(a, &info);
out:
	free(buf);
	free(params);
	mn_ckpt_free(c);
	return ex;
}

int ctl_export(int argc, char **argv, const struct ctl_globals *g)
{
	enum { OPT_RAW = 256 };
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"raw", no_argument, NULL, OPT_RAW},
	    {"force", no_argument, NULL, 'f'},
	    {"prefix", required_argument, NULL, 'p'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct export_args a = {.json = g->json};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:fp:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			a.out = optarg;
			break;
		case OPT_RAW:
			a.raw = true;
			break;
		case 'f':
			a.force = true;
			break;
		case 'p':
			a.prefix = optarg;
			break;
		case 'j':
			a.json = true;
			break;
		case 'h':
			fputs(export_help, stdout);
			return MN_EX_OK;
		default:
			return ctl_option_error("export", c, argv, opts);
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("export", optind >= argc
		                                     ? "no CKPT or DIR given"
		                                     : "exactly one CKPT or DIR, please");
	if (!a.out)
		return ctl_usage_error("export", "no output file: -o OUT is required");
	if (a.prefix && ctl_check_prefix("export", a.prefix) != MN_EX_OK)
		return MN_EX_USAGE;
	a.src = argv[optind];
	return export_run(&a, g);
}
