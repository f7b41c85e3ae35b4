/*
 * ctl_ckpt.c - mnistctl's file tools: ls, inspect, verify and convert
 * (TensorFlow's inspect_checkpoint and partial, renamed Saver, for
 * mnistd's safetensors files).
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "best.h"
#include "ckpt.h"
#include "ckptdir.h"
#include "config.h"
#include "ctl.h"
#include "ctl_util.h"
#include "json.h"
#include "mlp.h"
#include "model.h"
#include "util.h"

#define ARCH_LEN 256

/* ------------------------------------------------------------------ */
/* What a file is, beyond a valid container: shared by verify, ls and convert. */

enum file_kind {
	KIND_CHECKPOINT, /* layers, EMA shadows and the whole training state */
	KIND_MODEL,      /* layers and EMA shadows, without (all of) the training state */
	KIND_FROZEN,     /* frozen inference model */
	KIND_TENSORS,    /* no architecture: a bag of tensors (e.g. a partial convert) */
};

struct file_info {
	enum file_kind kind;
	bool has_step;
	int64_t step;        /* metadata global_step */
	char arch[ARCH_LEN]; /* "784-500-10", or "" */
};

static const char *const kind_names[] = {"checkpoint", "model", "frozen", "tensors"};

/*
 * The model-level checks, after the container validated: the architecture
 * against the layer tensors (mn_model_arch) and the training state that is
 * present against itself and the metadata.
 */
static int check_file(const struct mn_ckpt *c, struct file_info *fi, char *err, size_t errlen)
{
	bool is_frozen = mn_model_is_frozen(c);
	struct mn_model_state st;
	struct mn_arch a;
	int rc;

	memset(fi, 0, sizeof(*fi));
	rc = mn_model_step(c, &fi->step, err, errlen);
	if (rc == -EINVAL)
		return rc;
	fi->has_step = rc == 0;
	if (!is_frozen && !mn_ckpt_meta(c, MN_META_ARCHITECTURE)) {
		fi->kind = KIND_TENSORS;
		return 0;
	}
	rc = mn_model_arch(c, &a, err, errlen);
	if (rc < 0)
		return rc;
	mn_arch_format(&a, fi->arch, sizeof(fi->arch));
	if (is_frozen) {
		fi->kind = KIND_FROZEN;
		return 0;
	}
	rc = mn_model_read_state(c, false, 0, &st, err, errlen);
	if (rc < 0)
		return rc;
	fi->kind = st.have == MN_MODEL_HAVE_ALL ? KIND_CHECKPOINT : KIND_MODEL;
	mn_model_state_free(&st);
	return 0;
}

/*
 * Reads an mnistd file (from fd when it is not negative, else from path)
 * and runs every check verify makes.
 */
static int verify_file(const char *path, int fd, struct mn_ckpt **out, struct file_info *fi,
                       char *err, size_t errlen)
{
	struct mn_ckpt *c = NULL;
	int rc = fd >= 0 ? mn_ckpt_read_fd(fd, path, MN_CKPT_REQUIRE_MNISTD, &c, err, errlen)
	                 : mn_ckpt_read(path, MN_CKPT_REQUIRE_MNISTD, &c, err, errlen);

	if (rc == 0)
		rc = check_file(c, fi, err, errlen);
	if (rc < 0 || !out)
		mn_ckpt_free(c);
	else
		*out = c;
	return rc;
}

/* Whether a message already starts with "FILE:". */
static bool names_file(const char *path, const char *err)
{
	size_t n = strlen(path);

	return strncmp(err, path, n) == 0 && err[n] == ':';
}

/* Prints "FILE: message" unless the message already starts with the file's name. */
static void print_file_error(FILE *f, const char *path, const char *err)
{
	if (!names_file(path, err)) {
		ctl_fputs_escaped(f, path);
		fputs(": ", f);
	}
	/* The message may quote the file (a tensor name, a metadata value). */
	ctl_fputs_escaped(f, err);
	fputc('\n', f);
}

/* The same as a message of cmd on standard error: "mnistctl CMD: FILE: message". */
static void file_error(const char *cmd, const char *path, const char *err)
{
	if (names_file(path, err))
		ctl_errorf(cmd, "%s", err);
	else
		ctl_errorf(cmd, "%s: %s", path, err);
}

/* ------------------------------------------------------------------ */
/* verify */

static const char verify_help[] =
    "Usage: mnistctl verify [--json] FILE...\n"
    "\n"
    "Validates mnistd checkpoint files and frozen models completely, like every\n"
    "mnistd reader does before trusting one, and says exactly what is wrong.\n"
    "\n"
    "Checked, in order: the header length against the file size (truncation);\n"
    "the JSON header, its dtypes, shapes and data offsets (in bounds, contiguous,\n"
    "consistent with dtype and shape); the metadata (format mnistd.checkpoint.v1,\n"
    "global_step, data_crc32) and the CRC-32 of the data; the architecture\n"
    "against the layer tensors (every layer<i>/weights and layer<i>/biases, and\n"
    "their ExponentialMovingAverage twins unless the file is frozen, present as\n"
    "F32 with the shapes the architecture implies); and the training state that\n"
    "is present (global_step equal to the metadata's, train/rng, train/epoch,\n"
    "train/perm_pos within train/permutation, which must be a permutation).\n"
    "A file without an architecture (a partial convert) is checked as a set of\n"
    "tensors.\n"
    "\n"
    "Prints one line per file: \"FILE: OK (step N, 784-500-10)\", with \"frozen\" or\n"
    "\"no training state\" added for such files, \"FILE: OK (step N, K tensors, no\n"
    "architecture)\" for a set of tensors, or \"FILE: <what is wrong>\".\n"
    "\n"
    "Options:\n"
    "  -j, --json   one JSON object: {\"ok\": bool, \"files\": [{\"file\", \"ok\",\n"
    "               \"kind\", \"step\", \"architecture\", \"tensors\"} or {\"file\",\n"
    "               \"ok\": false, \"error\"}]}\n"
    "  -h, --help   this help\n"
    "\n"
    "Exit status: 0 if every file is valid, 1 if any is not, 2 usage error.\n"
    "\n"
    "Example:\n"
    "  mnistctl verify /var/lib/mnistd/model.ckpt-*.safetensors\n";

int ctl_verify(int argc, char **argv, const struct ctl_globals *g)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	bool json = g->json, all_ok = true;
	cJSON *root = NULL, *files = NULL;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(verify_help, stdout);
			return MN_EX_OK;
		default:
			return ctl_option_error("verify", c, argv, opts);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("verify", "no FILE given");
	if (json) {
		root = cJSON_CreateObject();
		files = ctl_json_add(root, "files", cJSON_CreateArray());
	}
	for (int i = optind; i < argc; i++) {
		const char *path = argv[i];
		struct mn_ckpt *ck = NULL;
		struct file_info fi;
		char err[MN_ERRLEN];
		int rc = verify_file(path, -1, &ck, &fi, err, sizeof(err));
		cJSON *o = json ? ctl_json_add(files, NULL, cJSON_CreateObject()) : NULL;

		if (rc < 0) {
			all_ok = false;
			if (json) {
				ctl_json_str(o, "file", path);
				ctl_json_bool(o, "ok", false);
				ctl_json_str(o, "error", err);
			} else {
				print_file_error(stdout, path, err);
			}
			continue;
		}
		if (json) {
			ctl_json_str(o, "file", path);
			ctl_json_bool(o, "ok", true);
			ctl_json_str(o, "kind", kind_names[fi.kind]);
			ctl_json_int(o, "step", fi.step);
			ctl_json_str(o, "architecture", fi.arch[0] ? fi.arch : NULL);
			ctl_json_int(o, "tensors", (int64_t)mn_ckpt_count(ck));
		} else if (fi.kind == KIND_TENSORS) {
			ctl_fputs_escaped(stdout, path);
			printf(": OK (step %" PRId64 ", %zu tensors, no architecture)\n", fi.step,
			       mn_ckpt_count(ck));
		} else {
			ctl_fputs_escaped(stdout, path);
			printf(": OK (step %" PRId64 ", %s%s)\n", fi.step, fi.arch,
			       fi.kind == KIND_FROZEN  ? ", frozen"
			       : fi.kind == KIND_MODEL ? ", no training state"
			                               : "");
		}
		mn_ckpt_free(ck);
	}
	if (json) {
		ctl_json_bool(root, "ok", all_ok);
		if (ctl_json_print(root) < 0)
			return MN_EX_FAILURE;
	}
	return all_ok ? MN_EX_OK : MN_EX_FAILURE;
}

/* ------------------------------------------------------------------ */
/* ls */

static const char ls_help[] =
    "Usage: mnistctl ls [--json] [--prefix PREFIX] [--metrics FILE] DIR\n"
    "\n"
    "Lists the checkpoints in a checkpoint directory, oldest first: step,\n"
    "creation time, size, whether the file is valid (the checks of 'mnistctl\n"
    "verify', plus the step in the file name matching the step inside), which one\n"
    "is the latest (named by DIR/checkpoint.json, else the highest step), the\n"
    "architecture, and the validation accuracy: from DIR/best.json in the\n"
    "evaluator's eval.best_dir, else when the evaluator's metrics file has\n"
    "recorded one for that file (the last record wins). Why a file is\n"
    "invalid is printed after the table. The time of an invalid file is its\n"
    "modification time. A name that is not a regular file (a FIFO, a device, a\n"
    "directory, a dangling symlink) is listed as invalid without being read.\n"
    "\n"
    "Options:\n"
    "  -p, --prefix PREFIX  checkpoint file prefix (default: checkpoint.prefix from\n"
    "                       the configuration, model.ckpt)\n"
    "  -m, --metrics FILE   the evaluator's metrics file, JSON lines with\n"
    "                       \"checkpoint\" and \"accuracy\" (default: eval.metrics_file\n"
    "                       from the configuration; malformed lines are ignored)\n"
    "  -j, --json           a JSON object: {\"dir\", \"latest\", \"checkpoints\": [{\"file\",\n"
    "                       \"step\", \"created\", \"size\", \"valid\", \"error\", \"latest\",\n"
    "                       \"architecture\", \"accuracy\"}]}\n"
    "  -h, --help           this help\n"
    "\n"
    "The configuration is the global --config file; a missing default file is\n"
    "not an error here.\n"
    "\n"
    "Exit status: 0 listed (invalid files included), 1 the directory cannot be\n"
    "read, 2 usage error.\n"
    "\n"
    "Example:\n"
    "  mnistctl ls /var/lib/mnistd\n";

struct ls_row {
	const char *name;
	int64_t step;
	char created[MN_TIMELEN];
	int64_t size;
	bool valid;
	char err[MN_ERRLEN];
	char arch[ARCH_LEN];
	bool has_acc;
	double accuracy;
};

/* Sets the accuracy of each row from the metrics file: the last line naming it wins. */
static void ls_read_metrics(const char *path, bool explicit_path, struct ls_row *rows, size_t n)
{
	/* Non-blocking and regular files only, as for the checkpoints: a FIFO must not hang ls. */
	char why[MN_ERRLEN];
	int fd = mn_open_regular(path, 0, NULL, why, sizeof(why));
	char *line = NULL;
	size_t cap = 0;
	FILE *f = NULL;

	if (fd >= 0 && !(f = fdopen(fd, "r")))
		mn_errf(why, sizeof(why), "%s: %s", path, strerror(errno));
	if (!f) {
		if (fd >= 0)
			close(fd);
		/* The evaluator may not have written anything yet; only a named file must exist. */
		if (explicit_path)
			ctl_errorf("ls", "%s (accuracy not shown)", why);
		return;
	}
	while (getline(&line, &cap, f) > 0) {
		cJSON *o = cJSON_Parse(line);
		const cJSON *ck = cJSON_GetObjectItemCaseSensitive(o, "checkpoint");
		const cJSON *acc = cJSON_GetObjectItemCaseSensitive(o, "accuracy");

		if (cJSON_IsString(ck) && cJSON_IsNumber(acc)) {
			for (size_t i = 0; i < n; i++) {
				if (strcmp(rows[i].name, ck->valuestring) == 0) {
					rows[i].has_acc = true;
					rows[i].accuracy = acc->valuedouble;
				}
			}
		}
		cJSON_Delete(o);
	}
	if (ferror(f))
		ctl_errorf("ls", "%s: read error (accuracy may be missing)", path);
	free(line);
	fclose(f);
}

/* In the evaluator's eval.best_dir, best.json has the accuracy of every file kept there. */
static void ls_read_best(const char *dir, struct ls_row *rows, size_t n)
{
	struct mn_best_entry *best = NULL;
	char err[MN_ERRLEN];
	size_t nbest = 0;
	int rc = mn_best_load(dir, &best, &nbest, err, sizeof(err));

	if (rc == -ENOENT)
		return;
	if (rc < 0) {
		ctl_errorf("ls", "%s (accuracy not shown)", err);
		return;
	}
	for (size_t i = 0; i < nbest; i++) {
		for (size_t j = 0; j < n; j++) {
			if (strcmp(rows[j].name, best[i].file) == 0) {
				rows[j].has_acc = true;
				rows[j].accuracy = best[i].accuracy;
			}
		}
	}
	free(best);
}

/* Size and modification time, what a row shows when the file cannot be trusted. */
static void ls_set_times(struct ls_row *r, const struct stat *st)
{
	r->size = (int64_t)st->st_size;
	mn_time_rfc3339_ns((int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
	                   r->created);
}

/*
 * Fills a row with what the file holds. Returns false if the file is gone
 * (retention may delete it after the scan), so the row is not listed.
 */
static bool ls_check_row(const char *dir, bool follow, struct ls_row *r)
{
	char path[CTL_PATH_MAX];
	struct mn_ckpt *c = NULL;
	struct file_info fi;
	struct stat st;
	const char *created;
	int fd, w, rc;

	r->size = -1;
	w = snprintf(path, sizeof(path), "%s/%s", dir, r->name);
	if (w < 0 || (size_t)w >= sizeof(path)) {
		mn_errf(r->err, sizeof(r->err), "%s/%s: path too long", dir, r->name);
		return true;
	}
	/*
	 * Look first, as mn_open_regular() does: a device node is not even
	 * opened, since opening one can act (a tape rewinds, a watchdog arms).
	 * A symbolic link is left to the open below, which follows it or not.
	 */
	if ((follow ? stat(path, &st) : lstat(path, &st)) == 0 && !S_ISREG(st.st_mode) &&
	    !S_ISLNK(st.st_mode)) {
		ls_set_times(r, &st);
		mn_errf(r->err, sizeof(r->err), "%s: not a regular file", path);
		return true;
	}
	/*
	 * Non-blocking, and only regular files are read: a FIFO or a device
	 * put under a checkpoint's name since must not hang the listing or
	 * read forever.
	 */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (follow ? 0 : O_NOFOLLOW));
	if (fd < 0) {
		int e = errno;

		/* A dangling symlink is listed as invalid; a file deleted since the scan is not. */
		if (e == ENOENT && lstat(path, &st) < 0 && errno == ENOENT)
			return false;
		/* Not even its target's size or time: a link to /etc/shadow tells nothing. */
		if (e == ELOOP && !follow) {
			mn_errf(r->err, sizeof(r->err),
			        "%s: a symbolic link, not followed (checkpoint.follow_symlinks is "
			        "false)",
			        path);
			return true;
		}
		/* An unreadable file still has a size and a time to show. */
		if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
			ls_set_times(r, &st);
		mn_errf(r->err, sizeof(r->err), "%s: cannot open: %s", path, strerror(e));
		return true;
	}
	if (fstat(fd, &st) < 0) {
		mn_errf(r->err, sizeof(r->err), "%s: cannot stat: %s", path, strerror(errno));
		close(fd);
		return true;
	}
	ls_set_times(r, &st);
	if (!S_ISREG(st.st_mode)) {
		mn_errf(r->err, sizeof(r->err), "%s: not a regular file", path);
		close(fd);
		return true;
	}
	rc = verify_file(path, fd, &c, &fi, r->err, sizeof(r->err));
	close(fd);
	if (rc < 0)
		return true;
	if (!fi.has_step || fi.step != r->step) {
		mn_errf(r->err, sizeof(r->err),
		        "%s: the file name says step %" PRId64 " but global_step is %" PRId64, path,
		        r->step, fi.step);
		mn_ckpt_free(c);
		return true;
	}
	created = mn_ckpt_meta(c, MN_META_CREATED);
	if (created)
		snprintf(r->created, sizeof(r->created), "%s", created);
	snprintf(r->arch, sizeof(r->arch), "%s", fi.arch[0] ? fi.arch : "-");
	r->valid = true;
	mn_ckpt_free(c);
	return true;
}

static int ls_print(const char *dir, struct ls_row *rows, size_t n, const char *latest, bool json)
{
	size_t wname = 4, warch = 4;
	cJSON *root, *arr;

	if (json) {
		root = cJSON_CreateObject();
		ctl_json_str(root, "dir", dir);
		ctl_json_str(root, "latest", latest);
		arr = ctl_json_add(root, "checkpoints", cJSON_CreateArray());
		for (size_t i = 0; i < n; i++) {
			cJSON *o = ctl_json_add(arr, NULL, cJSON_CreateObject());

			ctl_json_str(o, "file", rows[i].name);
			ctl_json_int(o, "step", rows[i].step);
			ctl_json_str(o, "created", rows[i].created[0] ? rows[i].created : NULL);
			/* -1: not known (a link not followed): null, as for the time. */
			if (rows[i].size >= 0)
				ctl_json_int(o, "size", rows[i].size);
			else
				ctl_json_add(o, "size", cJSON_CreateNull());
			ctl_json_bool(o, "valid", rows[i].valid);
			ctl_json_str(o, "error", rows[i].valid ? NULL : rows[i].err);
			ctl_json_bool(o, "latest", latest && strcmp(latest, rows[i].name) == 0);
			ctl_json_str(o, "architecture", rows[i].valid ? rows[i].arch : NULL);
			if (rows[i].has_acc)
				ctl_json_num(o, "accuracy", rows[i].accuracy);
			else
				ctl_json_add(o, "accuracy", cJSON_CreateNull());
		}
		return ctl_json_print(root) < 0 ? MN_EX_FAILURE : MN_EX_OK;
	}
	if (n == 0) {
		fputs("no checkpoints in ", stdout);
		ctl_fputs_escaped(stdout, dir);
		fputc('\n', stdout);
		return MN_EX_OK;
	}
	for (size_t i = 0; i < n; i++) {
		if (strlen(rows[i].name) > wname)
			wname = strlen(rows[i].name);
		if (rows[i].valid && strlen(rows[i].arch) > warch)
			warch = strlen(rows[i].arch);
	}
	printf("%-*s  %10s  %-24s  %10s  %-7s  %-6s  %-*s  %s\n", (int)wname, "FILE", "STEP",
	       "CREATED", "SIZE", "VALID", "LATEST", (int)warch, "ARCH", "ACCURACY");
	for (size_t i = 0; i < n; i++) {
		const struct ls_row *r = &rows[i];
		/* created is the file's own text: what a terminal would act on is made visible. */
		char acc[32], created[4 * MN_TIMELEN], size[24] = "-";

		mn_escape(r->created[0] ? r->created : "-", created, sizeof(created));
		if (r->size >= 0)
			snprintf(size, sizeof(size), "%" PRId64, r->size);
		if (r->has_acc)
			snprintf(acc, sizeof(acc), "%.4f", r->accuracy);
		else
			snprintf(acc, sizeof(acc), "-");
		printf("%-*s  %10" PRId64 "  %-24s  %10s  %-7s  %-6s  %-*s  %s\n", (int)wname,
		       r->name, r->step, created, size, r->valid ? "yes" : "INVALID",
		       latest && strcmp(latest, r->name) == 0 ? "*" : "", (int)warch,
		       r->valid ? r->arch : "-", acc);
	}
	for (size_t i = 0; i < n; i++) {
		if (!rows[i].valid) {
			fputs("invalid: ", stdout);
			ctl_fputs_escaped(stdout, rows[i].err);
			putchar('\n');
		}
	}
	return MN_EX_OK;
}

/* The row checkpoint.json names as latest, else the newest listed (NULL if none). */
static const char *ls_latest(const char *dir, const struct ls_row *rows, size_t n)
{
	char name[MN_CKPT_MAX_NAME], err[MN_ERRLEN];

	if (mn_ckptdir_index_latest(dir, name, sizeof(name), err, sizeof(err)) == 0)
		for (size_t i = n; i-- > 0;)
			if (strcmp(rows[i].name, name) == 0)
				return rows[i].name;
	return n > 0 ? rows[n - 1].name : NULL;
}

int ctl_ls(int argc, char **argv, const struct ctl_globals *g)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"prefix", required_argument, NULL, 'p'},
	    {"metrics", required_argument, NULL, 'm'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *prefix = NULL, *metrics = NULL, *dir, *latest;
	struct mn_ckptdir_entry *list = NULL;
	struct ls_row *rows = NULL;
	char err[MN_ERRLEN];
	struct mn_config cfg;
	bool json = g->json;
	size_t n = 0, kept = 0;
	int c, rc;

	mn_config_defaults(&cfg);
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":jp:m:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'p':
			prefix = optarg;
			break;
		case 'm':
			metrics = optarg;
			break;
		case 'h':
			fputs(ls_help, stdout);
			return MN_EX_OK;
		default:
			return ctl_option_error("ls", c, argv, opts);
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("ls",
		                       optind >= argc ? "no DIR given" : "exactly one DIR, please");
	if (prefix && ctl_check_prefix("ls", prefix) != MN_EX_OK)
		return MN_EX_USAGE;
	dir = argv[optind];
	if ((!prefix || !metrics) && ctl_load_config(g, true, &cfg, err, sizeof(err)) < 0) {
		ctl_errorf("ls", "%s", err);
		return MN_EX_FAILURE;
	}
	if (!prefix)
		prefix = cfg.checkpoint.prefix;
	rc = mn_ckptdir_scan(dir, prefix, &list, &n, err, sizeof(err));
	if (rc < 0) {
		ctl_errorf("ls", "%s", err);
		return MN_EX_FAILURE;
	}
	rows = calloc(n ? n : 1, sizeof(*rows));
	if (!rows) {
		ctl_errorf("ls", "out of memory");
		free(list);
		return MN_EX_FAILURE;
	}
	for (size_t i = 0; i < n; i++) {
		struct ls_row *r = &rows[kept];

		r->name = list[i].name;
		r->step = list[i].step;
		if (ls_check_row(dir, cfg.checkpoint.follow_symlinks, r))
			kept++;
		else
			memset(r, 0, sizeof(*r));
	}
	latest = ls_latest(dir, rows, kept);
	if (metrics)
		ls_read_metrics(metrics, true, rows, kept);
	else if (cfg.eval.metrics_file[0])
		ls_read_metrics(cfg.eval.metrics_file, false, rows, kept);
	ls_read_best(dir, rows, kept);
	rc = ls_print(dir, rows, kept, latest, json);
	free(rows);
	free(list);
	return rc;
}

/* ------------------------------------------------------------------ */
/* inspect */

static const char inspect_help[] =
    "Usage: mnistctl inspect [--json] [--tensor NAME]... [--all] FILE|DIR\n"
    "\n"
    "Shows what a safetensors file holds, like TensorFlow's inspect_checkpoint:\n"
    "its metadata (format, global_step, architecture, created, frozen, config and\n"
    "any other key) and a table of its tensors with name, dtype, shape and the\n"
    "minimum, maximum, mean and L2 norm of the values. Any valid safetensors file\n"
    "can be inspected (the container and, when present, the checksum are checked;\n"
    "'mnistctl verify' checks the model too). Given a directory, inspects its\n"
    "best checkpoint when it is the evaluator's eval.best_dir (the first file\n"
    "DIR/best.json lists that still exists), else its latest, as freeze does.\n"
    "\n"
    "Options:\n"
    "  -t, --tensor NAME  print only this tensor, with all its values (repeatable):\n"
    "                     matrices one row per line, F32 with 9 significant digits\n"
    "                     (exact), F64 with 17, integers as integers\n"
    "  -a, --all          print the metadata, the table and every tensor's values\n"
    "  -j, --json         a JSON object: {\"file\", \"size\", \"metadata\": {...},\n"
    "                     \"tensors\": [{\"name\", \"dtype\", \"shape\", \"min\", \"max\",\n"
    "                     \"mean\", \"norm\"[, \"values\"]}]}; no \"metadata\" with\n"
    "                     --tensor. Statistics that are not finite (a NaN anywhere\n"
    "                     makes all four NaN) are null.\n"
    "  -h, --help         this help\n"
    "\n"
    "Exit status: 0 success, 1 the file is invalid or has no such tensor,\n"
    "2 usage error.\n"
    "\n"
    "Examples:\n"
    "  mnistctl inspect /var/lib/mnistd/model.ckpt-30000.safetensors\n"
    "  mnistctl inspect --tensor layer2/biases model.safetensors\n";

struct stats {
	double min, max, mean, norm;
};

/*
 * Any NaN makes every statistic NaN (as numpy's min and max do): a NaN
 * weight is what the table must show, wherever in the tensor it sits.
 */
static struct stats tensor_stats(const struct mn_tensor *t)
{
	const struct stats none = {NAN, NAN, NAN, NAN};
	uint64_t n = mn_tensor_elements(t);
	struct stats s = none;
	/*
	 * Wider than double where the platform has it (x86-64's 80-bit format
	 * reaches 1e4932), so F64 values near 1e308 do not overflow the sums
	 * and tiny ones do not vanish from the sum of squares.
	 */
	long double sum = 0.0L, sq = 0.0L;

	for (uint64_t i = 0; i < n; i++) {
		double v = ctl_tensor_double(t, i);

		if (isnan(v))
			return none;
		if (i == 0 || v < s.min)
			s.min = v;
		if (i == 0 || v > s.max)
			s.max = v;
		sum += v;
		sq += (long double)v * v;
	}
	if (n > 0) {
		s.mean = (double)(sum / (long double)n);
		s.norm = (double)sqrtl(sq);
	}
	/* inf + -inf is a NaN with the sign bit set on x86; print it as "nan" like the rest. */
	if (isnan(s.mean))
		s.mean = NAN;
	return s;
}

static void print_values(const struct mn_tensor *t)
{
	uint64_t n = mn_tensor_elements(t);
	uint64_t row = t->ndim ? t->shape[t->ndim - 1] : 1;
	char shape[128], v[64];

	mn_shape_format(t, shape, sizeof(shape));
	ctl_fputs_escaped(stdout, t->name);
	printf("  %s %s\n", mn_dtype_name(t->dtype), shape);
	if (n == 0) {
		printf("  (no elements)\n");
		return;
	}
	/* One line per innermost row: a matrix [r, c] prints as r lines of c values. */
	for (uint64_t i = 0; i < n; i++) {
		ctl_tensor_format(t, i, v, sizeof(v));
		printf("%s%s", i % row ? " " : "  ", v);
		if ((i + 1) % row == 0)
			putchar('\n');
	}
}

static cJSON *tensor_json(const struct mn_tensor *t, bool values)
{
	cJSON *o = cJSON_CreateObject(), *shape, *vals;
	struct stats s = tensor_stats(t);
	uint64_t n = mn_tensor_elements(t);
	char v[64];

	ctl_json_str(o, "name", t->name);
	ctl_json_str(o, "dtype", mn_dtype_name(t->dtype));
	shape = ctl_json_add(o, "shape", cJSON_CreateArray());
	for (size_t d = 0; d < t->ndim; d++) {
		snprintf(v, sizeof(v), "%" PRIu64, t->shape[d]);
		ctl_json_add(shape, NULL, cJSON_CreateRaw(v));
	}
	ctl_json_num(o, "min", s.min);
	ctl_json_num(o, "max", s.max);
	ctl_json_num(o, "mean", s.mean);
	ctl_json_num(o, "norm", s.norm);
	if (!values)
		return o;
	vals = ctl_json_add(o, "values", cJSON_CreateArray());
	for (uint64_t i = 0; i < n; i++) {
		/* Integers as exact text; floats through a double, which holds them exactly. */
		if (ctl_dtype_is_int(t->dtype) && t->dtype != MN_DTYPE_BOOL) {
			ctl_tensor_format(t, i, v, sizeof(v));
			ctl_json_add(vals, NULL, cJSON_CreateRaw(v));
		} else if (t->dtype == MN_DTYPE_BOOL) {
			ctl_json_add(vals, NULL, cJSON_CreateBool(ctl_tensor_double(t, i) != 0.0));
		} else {
			double d = ctl_tensor_double(t, i);

			ctl_json_add(vals, NULL, mn_json_double(d, -1));
		}
	}
	return o;
}

/* Metadata keys shown first, in this order; the others follow in header order. */
static const char *const meta_order[] = {MN_META_FORMAT,  MN_META_GLOBAL_STEP, MN_META_ARCHITECTURE,
                                         MN_META_CREATED, MN_META_FROZEN,      MN_META_EMA,
                                         MN_META_SOURCE,  MN_META_DATA_CRC32};

static bool is_ordered_key(const char *k)
{
	for (size_t i = 0; i < sizeof(meta_order) / sizeof(meta_order[0]); i++)
		if (strcmp(k, meta_order[i]) == 0)
			return true;
	return strcmp(k, MN_META_CONFIG) == 0;
}

static void print_meta_line(const char *key, const char *value)
{
	/* A key of any length is shown whole, and apart from its value. */
	size_t len = strlen(key) * 4 + 1;
	char *k = malloc(len);

	if (!k) {
		fputs("(out of memory)", stdout);
	} else {
		printf("%-13s ", mn_escape(key, k, len));
		free(k);
	}
	ctl_fputs_escaped(stdout, value);
	putchar('\n');
}

static void inspect_text(const char *path, const struct mn_ckpt *c)
{
	const char *archj = mn_ckpt_meta(c, MN_META_ARCHITECTURE);
	size_t w = 4;

	/* The path may be a glob's expansion or read from a directory's index. */
	printf("%-14s", "file");
	ctl_fputs_escaped(stdout, path);
	printf(" (%zu bytes, %zu tensors)\n", mn_ckpt_file_size(c), mn_ckpt_count(c));
	for (size_t i = 0; i < sizeof(meta_order) / sizeof(meta_order[0]); i++) {
		const char *v = mn_ckpt_meta(c, meta_order[i]);
		struct mn_arch a;
		char buf[ARCH_LEN + MN_ERRLEN];

		if (!v)
			continue;
		if (v == archj) {
			char s[ARCH_LEN], e[MN_ERRLEN];

			if (mn_arch_from_json(v, &a, e, sizeof(e)) == 0) {
				mn_arch_format(&a, s, sizeof(s));
				snprintf(buf, sizeof(buf), "%s  %s", s, v);
			} else {
				snprintf(buf, sizeof(buf), "%s  (invalid: %s)", v, e);
			}
			print_meta_line(meta_order[i], buf);
			continue;
		}
		print_meta_line(meta_order[i], v);
	}
	for (size_t i = 0; i < mn_ckpt_meta_count(c); i++) {
		const struct mn_meta *m = mn_ckpt_meta_at(c, i);

		if (!is_ordered_key(m->key))
			print_meta_line(m->key, m->value);
	}
	if (mn_ckpt_meta(c, MN_META_CONFIG))
		print_meta_line(MN_META_CONFIG, mn_ckpt_meta(c, MN_META_CONFIG));

	for (size_t i = 0; i < mn_ckpt_count(c); i++)
		if (strlen(mn_ckpt_tensor(c, i)->name) > w)
			w = strlen(mn_ckpt_tensor(c, i)->name);
	printf("\n%-*s  %-5s  %-12s  %13s  %13s  %13s  %13s\n", (int)w, "NAME", "DTYPE", "SHAPE",
	       "MIN", "MAX", "MEAN", "NORM");
	for (size_t i = 0; i < mn_ckpt_count(c); i++) {
		const struct mn_tensor *t = mn_ckpt_tensor(c, i);
		struct stats s = tensor_stats(t);
		char shape[128];

		mn_shape_format(t, shape, sizeof(shape));
		char name[4 * MN_CKPT_MAX_NAME];

		printf("%-*s  %-5s  %-12s  %13.6g  %13.6g  %13.6g  %13.6g\n", (int)w,
		       mn_escape(t->name, name, sizeof(name)), mn_dtype_name(t->dtype), shape,
		       s.min, s.max, s.mean, s.norm);
	}
}

/* inspect: the named tensors' values, or the summary (and with all every tensor's values). */
static void inspect_print(const char *path, const struct mn_ckpt *ck, const char **names,
                          size_t nnames, bool all)
{
	if (nnames) {
		for (size_t i = 0; i < nnames; i++)
			print_values(mn_ckpt_find(ck, names[i]));
		return;
	}
	inspect_text(path, ck);
	for (size_t i = 0; all && i < mn_ckpt_count(ck); i++) {
		putchar('\n');
		print_values(mn_ckpt_tensor(ck, i));
	}
}

/* inspect --json: the named tensors with their values, or the metadata and every tensor. */
static int inspect_json(const char *path, const struct mn_ckpt *ck, const char **names,
                        size_t nnames, bool all)
{
	cJSON *root = cJSON_CreateObject(), *meta, *arr;

	ctl_json_str(root, "file", path);
	ctl_json_int(root, "size", (int64_t)mn_ckpt_file_size(ck));
	if (!nnames) {
		meta = ctl_json_add(root, "metadata", cJSON_CreateObject());
		for (size_t i = 0; i < mn_ckpt_meta_count(ck); i++)
			ctl_json_str(meta, mn_ckpt_meta_at(ck, i)->key,
			             mn_ckpt_meta_at(ck, i)->value);
	}
	arr = ctl_json_add(root, "tensors", cJSON_CreateArray());
	if (nnames) {
		for (size_t i = 0; i < nnames; i++)
			ctl_json_add(arr, NULL, tensor_json(mn_ckpt_find(ck, names[i]), true));
	} else {
		for (size_t i = 0; i < mn_ckpt_count(ck); i++)
			ctl_json_add(arr, NULL, tensor_json(mn_ckpt_tensor(ck, i), all));
	}
	return ctl_json_print(root);
}

int ctl_inspect(int argc, char **argv, const struct ctl_globals *g)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"tensor", required_argument, NULL, 't'},
	    {"all", no_argument, NULL, 'a'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char **names = NULL;
	size_t nnames = 0;
	bool json = g->json, all = false;
	struct mn_ckpt *ck = NULL;
	char err[MN_ERRLEN], resolved[PATH_MAX];
	const char *path;
	int c, rc = MN_EX_FAILURE;

	names = calloc((size_t)argc + 1, sizeof(*names));
	if (!names) {
		ctl_errorf("inspect", "out of memory");
		return MN_EX_FAILURE;
	}
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":jt:ah", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 't':
			names[nnames++] = optarg;
			break;
		case 'a':
			all = true;
			break;
		case 'h':
			fputs(inspect_help, stdout);
			rc = MN_EX_OK;
			goto out;
		default:
			rc = ctl_option_error("inspect", c, argv, opts);
			goto out;
		}
	}
	if (optind != argc - 1) {
		rc = ctl_usage_error("inspect",
		                     optind >= argc ? "no FILE given" : "exactly one FILE, please");
		goto out;
	}
	if (all && nnames) {
		rc = ctl_usage_error("inspect", "--all and --tensor exclude each other");
		goto out;
	}
	if (ctl_resolve_checkpoint(argv[optind], NULL, g, resolved, sizeof(resolved), err,
	                           sizeof(err)) < 0) {
		ctl_errorf("inspect", "%s", err);
		goto out;
	}
	path = resolved;
	if (mn_ckpt_read(path, 0, &ck, err, sizeof(err)) < 0) {
		file_error("inspect", path, err);
		goto out;
	}
	for (size_t i = 0; i < nnames; i++) {
		if (!ctl_find_tensor(ck, names[i], err, sizeof(err))) {
			ctl_errorf("inspect", "%s", err);
			goto out;
		}
	}
	if (json) {
		rc = inspect_json(path, ck, names, nnames, all) < 0 ? MN_EX_FAILURE : MN_EX_OK;
		goto out;
	}
	inspect_print(path, ck, names, nnames, all);
	rc = MN_EX_OK;
out:
	mn_ckpt_free(ck);
	free(names);
	return rc;
}

/* ------------------------------------------------------------------ */
/* convert */

static const char convert_help[] =
    "Usage: mnistctl convert IN -o OUT [--select GLOB]... [--rename OLD=NEW]...\n"
    "\n"
    "Writes a new safetensors file holding selected tensors of IN under new\n"
    "names: the partial, renamed save of TensorFlow's Saver({\"v1\": v1}). The\n"
    "output is published atomically (interrupted by SIGINT, SIGTERM or SIGHUP,\n"
    "convert removes its temporary file), keeps IN's metadata (data_crc32 is\n"
    "recomputed), and passes 'mnistctl verify' when IN did. If the selection no\n"
    "longer forms IN's whole model, the \"architecture\" and \"frozen\" keys are\n"
    "dropped (with a note), so the file does not claim a model it does not hold;\n"
    "such a file still serves as a checkpoint.init_from source.\n"
    "\n"
    "Options:\n"
    "  -o, --output OUT     the file to write (required); replaced if it is a\n"
    "                       regular file (which keeps its permission bits),\n"
    "                       refused if it is IN or anything else (a device,\n"
    "                       FIFO, directory or symbolic link); '-' writes\n"
    "                       the file to standard output and the report to\n"
    "                       standard error\n"
    "  -s, --select GLOB    keep the tensors whose names match the fnmatch(3)\n"
    "                       pattern (repeatable; '*' also matches '/'); default all.\n"
    "                       A pattern that matches nothing is an error.\n"
    "  -r, --rename OLD=NEW store the selected tensor OLD as NEW (repeatable;\n"
    "                       applied after --select)\n"
    "  -j, --json           describe the result as JSON\n"
    "  -h, --help           this help\n"
    "\n"
    "Refused, with a message: an empty selection, renaming a tensor that is not\n"
    "selected, two tensors ending up with one name, a result that would fail\n"
    "'mnistctl verify' for another reason than the dropped architecture (IN's\n"
    "own training state broken, say: --select 'layer*' still takes the layers).\n"
    "\n"
    "Exit status: 0 written, 1 error (nothing written), 2 usage error.\n"
    "\n"
    "Example (the EMA shadows of layer 1 as plain variables, for init_from):\n"
    "  mnistctl convert model.ckpt-30000.safetensors -o layer1.safetensors \\\n"
    "      --select 'layer1/*/ExponentialMovingAverage' \\\n"
    "      --rename layer1/weights/ExponentialMovingAverage=layer1/weights \\\n"
    "      --rename layer1/biases/ExponentialMovingAverage=layer1/biases\n";

struct rename {
	const char *from, *to;
	bool used;
};

/*
 * "(it has: a, b, ...)" for messages about names the file lacks, cut from
 * the reader's own not-found message so the list is formatted in one place.
 */
static const char *names_hint(const struct mn_ckpt *c, char *buf, size_t len)
{
	const char *p;

	/* No tensor is named "" (the writer refuses it), so this always misses. */
	ctl_find_tensor(c, "", buf, len);
	p = strstr(buf, "(it has");
	return p ? p : "";
}

/* Encodes the selection; on success *buf holds the file and *out its parsed form. */
static int convert_encode(const struct mn_tensor *t, size_t nt, const struct mn_meta *meta,
                          size_t nm, const char *name, uint8_t **buf, size_t *len,
                          struct mn_ckpt **out, char *err, size_t errlen)
{
	int rc = mn_ckpt_encode(t, nt, meta, nm, buf, len, err, errlen);

	if (rc < 0)
		return rc;
	rc = mn_ckpt_parse(*buf, *len, name, 0, out, err, errlen);
	if (rc < 0) {
		free(*buf);
		*buf = NULL;
	}
	return rc;
}

/* One conversion: the source, the selection and the result. */
struct convert {
	const char *in;
	struct mn_ckpt *src, *res;
	struct mn_tensor *sel; /* the selected tensors, renamed */
	const char **orig;     /* their names in the source */
	size_t nsel;
	struct mn_meta *meta;
	size_t nmeta;
	uint8_t *buf; /* the encoded result */
	size_t len;
	bool dropped; /* architecture and frozen left out */
	char why[MN_ERRLEN];
};

/* Takes the tensors some glob matches (all without globs); every glob must match. */
static int convert_select(struct convert *cv, const char **globs, size_t nglobs)
{
	size_t n = mn_ckpt_count(cv->src);
	char err[MN_ERRLEN];

	for (size_t g = 0; g < nglobs; g++) {
		bool hit = false;

		for (size_t i = 0; i < n && !hit; i++)
			hit = fnmatch(globs[g], mn_ckpt_tensor(cv->src, i)->name, 0) == 0;
		if (!hit) {
			ctl_errorf("convert", "--select '%s' matches no tensor in %s %s", globs[g],
			           cv->in, names_hint(cv->src, err, sizeof(err)));
			return -EINVAL;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const struct mn_tensor *t = mn_ckpt_tensor(cv->src, i);
		bool take = nglobs == 0;

		for (size_t g = 0; g < nglobs && !take; g++)
			take = fnmatch(globs[g], t->name, 0) == 0;
		if (!take)
			continue;
		cv->orig[cv->nsel] = t->name;
		cv->sel[cv->nsel++] = *t;
	}
	if (cv->nsel == 0) {
		ctl_errorf("convert", "%s: nothing selected: the file has no tensors", cv->in);
		return -EINVAL;
	}
	return 0;
}

/* A selected tensor's new name and its place in the selection, to sort by name. */
struct sel_name {
	const char *name;
	size_t i;
};

static int cmp_sel_name(const void *a, const void *b)
{
	const struct sel_name *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : (x->i > y->i) - (x->i < y->i);
}

/*
 * Refuses two selected tensors with one new name. Sorted rather than
 * compared pairwise: a file may hold a million tensors, and n^2 string
 * comparisons would take hours.
 */
static int convert_check_unique(const struct convert *cv)
{
	struct sel_name *s = calloc(cv->nsel + 1, sizeof(*s));
	int rc = 0;

	if (!s) {
		ctl_errorf("convert", "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < cv->nsel; i++)
		s[i] = (struct sel_name){cv->sel[i].name, i};
	qsort(s, cv->nsel, sizeof(*s), cmp_sel_name);
	for (size_t k = 1; k < cv->nsel && rc == 0; k++) {
		if (strcmp(s[k - 1].name, s[k].name) == 0) {
			ctl_errorf("convert",
			           "two tensors would be named \"%s\": \"%s\" and \"%s\"",
			           s[k].name, cv->orig[s[k - 1].i], cv->orig[s[k].i]);
			rc = -EINVAL;
		}
	}
	free(s);
	return rc;
}

/* Applies the renames to the selection; the new names must stay unique. */
static int convert_rename(struct convert *cv, struct rename *ren, size_t nren)
{
	char err[MN_ERRLEN];

	for (size_t r = 0; r < nren; r++) {
		for (size_t i = 0; i < cv->nsel; i++) {
			if (strcmp(cv->orig[i], ren[r].from) == 0) {
				cv->sel[i].name = ren[r].to;
				ren[r].used = true;
			}
		}
		if (ren[r].used)
			continue;
		if (mn_ckpt_find(cv->src, ren[r].from))
			ctl_errorf("convert",
			           "--rename %s=%s: \"%s\" is not among the selected tensors",
			           ren[r].from, ren[r].to, ren[r].from);
		else
			ctl_errorf("convert", "--rename %s=%s: no tensor \"%s\" in %s %s",
			           ren[r].from, ren[r].to, ren[r].from, cv->in,
			           names_hint(cv->src, err, sizeof(err)));
		return -EINVAL;
	}
	return convert_check_unique(cv);
}

/*
 * Encodes the selection with the source's metadata into cv->buf and parses
 * it back into cv->res; drops "architecture" and "frozen" when the selection
 * no longer forms the model. The result must pass what verify checks.
 */
static int convert_build(struct convert *cv, const char *base)
{
	char err[MN_ERRLEN];
	struct file_info fi;
	struct mn_arch arch;

	for (size_t i = 0; i < mn_ckpt_meta_count(cv->src); i++) {
		const struct mn_meta *m = mn_ckpt_meta_at(cv->src, i);

		/* The writer computes the checksum of the new data itself. */
		if (strcmp(m->key, MN_META_DATA_CRC32) != 0)
			cv->meta[cv->nmeta++] = *m;
	}
	if (convert_encode(cv->sel, cv->nsel, cv->meta, cv->nmeta, base, &cv->buf, &cv->len,
	                   &cv->res, err, sizeof(err)) < 0)
		goto fail;
	/*
	 * Only the architecture check decides whether the selection still forms
	 * the model: any other fault (a broken training state, a bad step) must
	 * refuse below, not be laundered into a valid-looking bag of tensors.
	 */
	if (mn_ckpt_meta(cv->res, MN_META_ARCHITECTURE) &&
	    mn_model_arch(cv->res, &arch, cv->why, sizeof(cv->why)) < 0) {
		size_t k = 0;

		/* A frozen model's subset is no frozen model either. */
		for (size_t i = 0; i < cv->nmeta; i++)
			if (strcmp(cv->meta[i].key, MN_META_ARCHITECTURE) != 0 &&
			    strcmp(cv->meta[i].key, MN_META_FROZEN) != 0)
				cv->meta[k++] = cv->meta[i];
		cv->nmeta = k;
		cv->dropped = true;
		free(cv->buf);
		cv->buf = NULL;
		mn_ckpt_free(cv->res);
		cv->res = NULL;
		if (convert_encode(cv->sel, cv->nsel, cv->meta, cv->nmeta, base, &cv->buf, &cv->len,
		                   &cv->res, err, sizeof(err)) < 0)
			goto fail;
	}
	if (check_file(cv->res, &fi, err, sizeof(err)) < 0) {
		ctl_errorf("convert", "the result would not be valid: %s", err);
		return -EINVAL;
	}
	return 0;
fail:
	ctl_errorf("convert", "%s", err);
	return -EINVAL;
}

/*
 * What was written, as JSON or text on standard output (standard error when
 * the file itself went to standard output).
 */
static int convert_report(const struct convert *cv, const char *outpath, bool json)
{
	FILE *f = strcmp(outpath, "-") == 0 ? stderr : stdout;

	if (json) {
		cJSON *root = cJSON_CreateObject(), *arr;

		ctl_json_str(root, "file", outpath);
		ctl_json_str(root, "source", cv->in);
		ctl_json_bool(root, "architecture_dropped", cv->dropped);
		arr = ctl_json_add(root, "tensors", cJSON_CreateArray());
		for (size_t i = 0; i < cv->nsel; i++) {
			cJSON *o = ctl_json_add(arr, NULL, cJSON_CreateObject());

			ctl_json_str(o, "name", cv->sel[i].name);
			ctl_json_str(o, "from", cv->orig[i]);
		}
		return ctl_json_fprint(f, root);
	}
	ctl_fputs_escaped(f, outpath);
	fprintf(f, ": %zu tensor%s from ", cv->nsel, cv->nsel == 1 ? "" : "s");
	ctl_fputs_escaped(f, cv->in);
	fputc('\n', f);
	for (size_t i = 0; i < cv->nsel; i++) {
		const struct mn_tensor *t = &cv->sel[i];
		char shape[128], name[4 * MN_CKPT_MAX_NAME], was[4 * MN_CKPT_MAX_NAME];

		mn_shape_format(t, shape, sizeof(shape));
		mn_escape(t->name, name, sizeof(name));
		if (strcmp(t->name, cv->orig[i]) == 0)
			fprintf(f, "  %s  %s %s\n", name, mn_dtype_name(t->dtype), shape);
		else
			fprintf(f, "  %s  %s %s  (was %s)\n", name, mn_dtype_name(t->dtype), shape,
			        mn_escape(cv->orig[i], was, sizeof(was)));
	}
	return 0;
}

static int convert_run(const char *in, const char *outpath, const char **globs, size_t nglobs,
                       struct rename *ren, size_t nren, bool json)
{
	struct convert cv = {.in = in};
	char err[MN_ERRLEN], dir[CTL_PATH_MAX];
	struct iovec iov;
	const char *base;
	size_t n;
	int rc = MN_EX_FAILURE;

	base = ctl_output_path(outpath, dir, sizeof(dir), err, sizeof(err));
	if (!base || ctl_check_not_source(outpath, in, "the checkpoint", err, sizeof(err)) < 0) {
		ctl_errorf("convert", "%s", err);
		return MN_EX_FAILURE;
	}
	if (mn_ckpt_read(in, 0, &cv.src, err, sizeof(err)) < 0) {
		file_error("convert", in, err);
		return MN_EX_FAILURE;
	}
	n = mn_ckpt_count(cv.src);
	cv.sel = calloc(n + 1, sizeof(*cv.sel));
	cv.orig = calloc(n + 1, sizeof(*cv.orig));
	cv.meta = calloc(mn_ckpt_meta_count(cv.src) + 1, sizeof(*cv.meta));
	if (!cv.sel || !cv.orig || !cv.meta) {
		ctl_errorf("convert", "out of memory");
		goto out;
	}
	if (convert_select(&cv, globs, nglobs) < 0 || convert_rename(&cv, ren, nren) < 0 ||
	    convert_build(&cv, base) < 0)
		goto out;
	iov.iov_base = cv.buf;
	iov.iov_len = cv.len;
	if (ctl_write_output(dir, base, &iov, 1, false, err, sizeof(err)) < 0) {
		ctl_errorf("convert", "%s", err);
		goto out;
	}
	/* cv.why quotes the file's tensor names: ctl_errorf escapes them. */
	if (cv.dropped)
		ctl_errorf("convert",
		           "note: the selected tensors do not form %s's whole model, so "
		           "\"architecture\" (and \"frozen\") were left out of %s's metadata (%s)",
		           in, outpath, cv.why);
	if (convert_report(&cv, outpath, json) < 0)
		goto out;
	rc = MN_EX_OK;
out:
	free(cv.buf);
	mn_ckpt_free(cv.res);
	mn_ckpt_free(cv.src);
	free(cv.sel);
	free(cv.orig);
	free(cv.meta);
	return rc;
}

/*
 * Parses one --rename OLD=NEW into ren[*n] (the copy it points into goes to
 * owned[*n], which the caller frees). An exit status: MN_EX_OK, or the error
 * already reported.
 */
static int add_rename(const char *arg, struct rename *ren, char **owned, size_t *n)
{
	const char *eq = strchr(arg, '=');
	char *copy;

	if (!eq || eq == arg || !eq[1])
		return ctl_usage_error("convert", "--rename wants OLD=NEW, got \"%s\"", arg);
	/* Said here, not as the writer's "tensor 0: invalid name" later. */
	if (strcmp(eq + 1, "__metadata__") == 0 || strlen(eq + 1) >= MN_CKPT_MAX_NAME ||
	    !mn_json_utf8(eq + 1, strlen(eq + 1)))
		return ctl_usage_error("convert",
		                       "--rename %.*s=...: NEW must be a tensor name of "
		                       "at most %d bytes of UTF-8 other than __metadata__",
		                       (int)(eq - arg), arg, MN_CKPT_MAX_NAME - 1);
	copy = strdup(arg);
	if (!copy) {
		ctl_errorf("convert", "out of memory");
		return MN_EX_FAILURE;
	}
	owned[*n] = copy;
	copy[eq - arg] = '\0';
	ren[*n].from = copy;
	ren[*n].to = copy + (eq - arg) + 1;
	(*n)++;
	for (size_t i = 0; i + 1 < *n; i++)
		if (strcmp(ren[i].from, copy) == 0)
			return ctl_usage_error("convert", "\"%s\" is renamed twice", copy);
	return MN_EX_OK;
}

int ctl_convert(int argc, char **argv, const struct ctl_globals *g)
{
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'}, {"select", required_argument, NULL, 's'},
	    {"rename", required_argument, NULL, 'r'}, {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},         {0},
	};
	const char **globs = calloc((size_t)argc + 1, sizeof(*globs));
	struct rename *ren = calloc((size_t)argc + 1, sizeof(*ren));
	char **owned = calloc((size_t)argc + 1, sizeof(*owned));
	const char *out = NULL;
	size_t nglobs = 0, nren = 0;
	bool json = g->json;
	int c, rc;

	if (!globs || !ren || !owned) {
		ctl_errorf("convert", "out of memory");
		rc = MN_EX_FAILURE;
		goto done;
	}
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:s:r:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			out = optarg;
			break;
		case 's':
			globs[nglobs++] = optarg;
			break;
		case 'r':
			rc = add_rename(optarg, ren, owned, &nren);
			if (rc != MN_EX_OK)
				goto done;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(convert_help, stdout);
			rc = MN_EX_OK;
			goto done;
		default:
			rc = ctl_option_error("convert", c, argv, opts);
			goto done;
		}
	}
	if (optind != argc - 1) {
		rc = ctl_usage_error("convert", optind >= argc ? "no IN file given"
		                                               : "exactly one IN file, please");
		goto done;
	}
	if (!out) {
		rc = ctl_usage_error("convert", "no output file: -o OUT is required");
		goto done;
	}
	rc = convert_run(argv[optind], out, globs, nglobs, ren, nren, json);
done:
	for (size_t i = 0; owned && i < nren; i++)
		free(owned[i]);
	free(owned);
	free(globs);
	free(ren);
	return rc;
}
