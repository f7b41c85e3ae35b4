/*
 * ctl_predict.c - mnistctl predict: runs a frozen model or a checkpoint on
 * IDX images through the evaluator's own routine (mn_evaluate), so its
 * accuracy for a file and a split is exactly the evaluator's.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "config.h"
#include "ctl.h"
#include "ctl_util.h"
#include "evaluate.h"
#include "idx.h"
#include "mlp.h"
#include "model.h"
#include "util.h"

static const char predict_help[] =
    "Usage: mnistctl predict [--raw] [--json] [--logits] [--threads N] [--prefix PREFIX]\n"
    "                        MODEL --images IDX [--labels IDX]\n"
    "\n"
    "Runs a model on the images of an IDX file (gzip or plain). MODEL is a frozen\n"
    "model ('mnistctl freeze'), a checkpoint, or a directory: the evaluator's\n"
    "eval.best_dir (its best checkpoint: the first in best.json that still\n"
    "exists) or a checkpoint directory (its latest checkpoint); the\n"
    "architecture is read from the file. A checkpoint is run with its EMA\n"
    "shadow values, as the evaluator does, or with its raw variables given\n"
    "--raw; a frozen model has one set of values. A model with a NaN or an\n"
    "infinity among those values is refused, naming the tensor and the element.\n"
    "\n"
    "Without labels, prints one predicted class per line, in image order. With\n"
    "labels, prints the accuracy, the mean cross-entropy loss and a confusion\n"
    "matrix (rows: true class, columns: predicted class). The numbers come from\n"
    "the evaluator's own code, so the accuracy of a checkpoint on the validation\n"
    "split (the first data.validation_size training images) is exactly the one\n"
    "mnist-eval reports for that file.\n"
    "\n"
    "With --logits, each image's line holds its predicted class followed by its\n"
    "logits (the network's outputs before softmax, 9 significant digits), before\n"
    "the summary if there are labels; in JSON they are \"logits\": [[...], ...].\n"
    "\n"
    "Options:\n"
    "  -i, --images IDX     the images (required); their size must be the model's\n"
    "                       input size\n"
    "  -l, --labels IDX     the labels, one per image, each below the model's number\n"
    "                       of classes\n"
    "      --raw            a checkpoint's raw variables instead of its EMA shadows\n"
    "      --logits         also print each image's logits\n"
    "      --threads N      threads, 0 for one per CPU (default: train.threads\n"
    "                       from the configuration, as mnist-eval uses it; the\n"
    "                       rounding of the matrix products depends on it)\n"
    "  -p, --prefix PREFIX  checkpoint file prefix when MODEL is a directory without\n"
    "                       checkpoint.json (default: checkpoint.prefix from the\n"
    "                       configuration, model.ckpt)\n"
    "  -j, --json           a JSON object: {\"model\", \"architecture\", \"step\" (null\n"
    "                       if the file has no decimal global_step), \"frozen\",\n"
    "                       \"ema\", \"images\", and either \"predictions\": [...] or\n"
    "                       \"correct\", \"accuracy\", \"loss\", \"confusion\": [[...]]}\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 success, 1 error (invalid model or data, sizes that do not\n"
    "fit), 2 usage error.\n"
    "\n"
    "Examples:\n"
    "  mnistctl predict model.safetensors \\\n"
    "      --images /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\\n"
    "      --labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz\n"
    "  mnistctl predict /var/lib/mnistd --images new-images-idx3-ubyte\n";

struct predict_args {
	const char *model, *images, *labels, *prefix;
	bool raw, json, logits;
	int threads; /* -1: train.threads from the configuration */
};

/* What print_result() reports, gathered once for both forms. */
struct report {
	const char *path;   /* the model file */
	const char *arch_s; /* its architecture, formatted */
	bool has_step;      /* whether step holds a parsed global_step */
	int64_t step;
	bool frozen, ema;
	size_t k;            /* classes */
	const size_t *conf;  /* k x k confusion counts (rows: true class), NULL without labels */
	const float *logits; /* count x k logits (--logits), else NULL */
};

/* The result as one JSON document. Returns 0 or -ENOMEM (reported). */
static int print_json(const struct report *rp, const struct mn_view *v, const uint8_t *pred,
                      const struct mn_eval_result *res)
{
	cJSON *root = cJSON_CreateObject(), *arr;

	ctl_json_str(root, "model", rp->path);
	ctl_json_str(root, "architecture", rp->arch_s);
	if (rp->has_step)
		ctl_json_int(root, "step", rp->step);
	else
		ctl_json_add(root, "step", cJSON_CreateNull());
	ctl_json_bool(root, "frozen", rp->frozen);
	ctl_json_bool(root, "ema", rp->ema);
	ctl_json_int(root, "images", (int64_t)res->images);
	if (!rp->conf) {
		arr = ctl_json_add(root, "predictions", cJSON_CreateArray());
		for (size_t i = 0; i < v->count; i++)
			ctl_json_add(arr, NULL, cJSON_CreateNumber(pred[i]));
	} else {
		ctl_json_int(root, "correct", (int64_t)res->correct);
		ctl_json_num(root, "accuracy", res->accuracy);
		ctl_json_num(root, "loss", res->loss);
		arr = ctl_json_add(root, "confusion", cJSON_CreateArray());
		for (size_t t = 0; t < rp->k; t++) {
			cJSON *row = ctl_json_add(arr, NULL, cJSON_CreateArray());

			for (size_t p = 0; p < rp->k; p++)
				ctl_json_int(row, NULL, (int64_t)rp->conf[t * rp->k + p]);
		}
	}
	if (rp->logits) {
		arr = ctl_json_add(root, "logits", cJSON_CreateArray());
		for (size_t i = 0; i < v->count; i++) {
			cJSON *row = ctl_json_add(arr, NULL, cJSON_CreateArray());

			for (size_t j = 0; j < rp->k; j++)
				ctl_json_num(row, NULL, rp->logits[i * rp->k + j]);
		}
	}
	return ctl_json_print(root);
}

/*
 * The result as text: one class per line (followed by the logits with
 * --logits), then, with labels, a summary and the matrix.
 */
static void print_text(const struct predict_args *a, const struct report *rp,
                       const struct mn_view *v, const uint8_t *pred,
                       const struct mn_eval_result *res)
{
	char step_s[32] = "?";

	for (size_t i = 0; (!rp->conf || rp->logits) && i < v->count; i++) {
		printf("%u", pred[i]);
		for (size_t j = 0; rp->logits && j < rp->k; j++)
			printf(" %.9g", rp->logits[i * rp->k + j]);
		putchar('\n');
	}
	if (!rp->conf)
		return;
	if (rp->logits)
		putchar('\n');
	if (rp->has_step)
		snprintf(step_s, sizeof(step_s), "%" PRId64, rp->step);
	/* The model's path may come from a directory's index: shown as ctl_fputs_escaped does. */
	fputs("model     ", stdout);
	ctl_fputs_escaped(stdout, rp->path);
	printf(" (%s, step %s, %s%s values)\n", rp->arch_s, step_s, rp->frozen ? "frozen " : "",
	       rp->ema ? "EMA" : "raw");
	fputs("images    ", stdout);
	ctl_fputs_escaped(stdout, a->images);
	printf(" (%zu)\n", res->images);
	printf("accuracy  %.4f (%zu/%zu)\n", res->accuracy, res->correct, res->images);
	printf("loss      %.6f\n", res->loss);
	printf("\nconfusion matrix (rows: true class, columns: predicted class)\n%5s", "");
	for (size_t p = 0; p < rp->k; p++)
		printf(" %6zu", p);
	putchar('\n');
	for (size_t t = 0; t < rp->k; t++) {
		printf("%5zu", t);
		for (size_t p = 0; p < rp->k; p++)
			printf(" %6zu", rp->conf[t * rp->k + p]);
		putchar('\n');
	}
}

/* Prints the predictions (and, with labels, the confusion matrix); returns an exit status. */
static int print_result(const struct predict_args *a, const char *path, const struct mn_ckpt *c,
                        const struct mn_arch *arch, const struct mn_view *v, const uint8_t *pred,
                        const float *logits, const struct mn_eval_result *res)
{
	struct report rp = {.path = path, .k = arch->output, .logits = logits};
	char arch_s[256];
	size_t *conf = NULL;
	int ex = MN_EX_OK;

	rp.ema = mn_model_uses_ema(c, !a->raw);
	rp.frozen = mn_model_is_frozen(c);
	/* Any safetensors file can be run, so its global_step is only text until parsed. */
	rp.has_step = mn_model_step(c, &rp.step, NULL, 0) == 0;
	mn_arch_format(arch, arch_s, sizeof(arch_s));
	rp.arch_s = arch_s;
	if (v->labels) {
		conf = calloc(rp.k * rp.k, sizeof(*conf));
		if (!conf) {
			ctl_errorf("predict", "out of memory");
			return MN_EX_FAILURE;
		}
		for (size_t i = 0; i < v->count; i++)
			conf[(size_t)v->labels[i] * rp.k + pred[i]]++;
		rp.conf = conf;
	}
	if (a->json)
		ex = print_json(&rp, v, pred, res) == 0 ? MN_EX_OK : MN_EX_FAILURE;
	else
		print_text(a, &rp, v, pred, res);
	free(conf);
	return ex;
}

static int predict_run(const struct predict_args *a, const struct ctl_globals *g)
{
	char path[CTL_PATH_MAX], err[MN_ERRLEN], arch_s[256];
	int threads;
	struct mn_dataset *ds = NULL;
	struct mn_ckpt *c = NULL;
	struct mn_eval_result res;
	struct mn_arch arch;
	struct mn_view v;
	float *params = NULL, *logits = NULL;
	uint8_t *pred = NULL;
	int ex = MN_EX_FAILURE;

	if (ctl_resolve_checkpoint(a->model, a->prefix, g, path, sizeof(path), err, sizeof(err)) <
	        0 ||
	    mn_ckpt_read(path, 0, &c, err, sizeof(err)) < 0 ||
	    ctl_load_model(c, !a->raw, &arch, &params, err, sizeof(err)) < 0) {
		ctl_errorf("predict", "%s", err);
		goto out;
	}
	if ((a->labels ? mn_dataset_load(a->images, a->labels, &ds, err, sizeof(err))
	               : mn_dataset_load_images(a->images, &ds, err, sizeof(err))) < 0) {
		ctl_errorf("predict", "%s", err);
		goto out;
	}
	mn_arch_format(&arch, arch_s, sizeof(arch_s));
	v = mn_dataset_all(ds);
	if (v.dim != arch.input) {
		ctl_errorf("predict",
		           "%s takes %zu inputs (%s) but the images of %s have %zu x %zu = %zu "
		           "pixels",
		           path, arch.input, arch_s, a->images, mn_dataset_rows(ds),
		           mn_dataset_cols(ds), v.dim);
		goto out;
	}
	if (a->labels && mn_dataset_max_label(ds) >= arch.output) {
		ctl_errorf("predict", "%s has label %u but %s (%s) has only %zu classes", a->labels,
		           mn_dataset_max_label(ds), path, arch_s, arch.output);
		goto out;
	}
	pred = malloc(v.count ? v.count : 1);
	/* v.count and arch.output are both bounded far below SIZE_MAX / 4. */
	if (a->logits)
		logits = malloc(v.count ? v.count * arch.output * sizeof(float) : 1);
	if (!pred || (a->logits && !logits)) {
		ctl_errorf("predict", "out of memory for %zu predictions", v.count);
		goto out;
	}
	threads = a->threads;
	if (threads < 0) {
		struct mn_config cfg;

		if (ctl_load_config(g, true, &cfg, err, sizeof(err)) < 0) {
			ctl_errorf("predict", "%s (or give --threads)", err);
			goto out;
		}
		threads = (int)cfg.train.threads;
	}
	if (mn_evaluate_logits(&arch, params, &v, threads, pred, logits, &res, err, sizeof(err)) <
	    0) {
		ctl_errorf("predict", "%s", err);
		goto out;
	}
	ex = print_result(a, path, c, &arch, &v, pred, logits, &res);
out:
	free(logits);
	free(pred);
	free(params);
	mn_dataset_free(ds);
	mn_ckpt_free(c);
	return ex;
}

int ctl_predict(int argc, char **argv, const struct ctl_globals *g)
{
	enum { OPT_RAW = 256, OPT_THREADS, OPT_LOGITS };
	static const struct option opts[] = {
	    {"images", required_argument, NULL, 'i'},
	    {"labels", required_argument, NULL, 'l'},
	    {"raw", no_argument, NULL, OPT_RAW},
	    {"logits", no_argument, NULL, OPT_LOGITS},
	    {"threads", required_argument, NULL, OPT_THREADS},
	    {"prefix", required_argument, NULL, 'p'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct predict_args a = {.json = g->json, .threads = -1};
	char *end;
	long n;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":i:l:p:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			a.images = optarg;
			break;
		case 'l':
			a.labels = optarg;
			break;
		case OPT_RAW:
			a.raw = true;
			break;
		case OPT_LOGITS:
			a.logits = true;
			break;
		case OPT_THREADS:
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || n < 0 || n > 256)
				return ctl_usage_error("predict",
				                       "--threads wants an integer in [0, 256], "
				                       "got \"%s\"",
				                       optarg);
			a.threads = (int)n;
			break;
		case 'p':
			a.prefix = optarg;
			break;
		case 'j':
			a.json = true;
			break;
		case 'h':
			fputs(predict_help, stdout);
			return MN_EX_OK;
		default:
			return ctl_option_error("predict", c, argv, opts);
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("predict", optind >= argc ? "no MODEL given"
		                                                 : "exactly one MODEL, please");
	if (!a.images)
		return ctl_usage_error("predict", "no images: --images IDX is required");
	if (a.prefix && ctl_check_prefix("predict", a.prefix) != MN_EX_OK)
		return MN_EX_USAGE;
	a.model = argv[optind];
	return predict_run(&a, g);
}
