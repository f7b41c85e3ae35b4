/* ctl_util.c - see ctl_util.h. */
#include "ctl_util.h"

#include "best.h"
#include "ckptdir.h"
#include "json.h"
#include "model.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mn_build_config.h"

void ctl_fputs_escaped(FILE *f, const char *s)
{
	/* An escape is at most 6 bytes for 1 or 2 input bytes: 4 per byte is enough. */
	size_t len = strlen(s) * 4 + 1;
	char *buf = malloc(len);

	if (!buf) {
		fputs("(out of memory)", f);
		return;
	}
	fputs(mn_escape(s, buf, len), f);
	free(buf);
}

void ctl_errorf(const char *cmd, const char *fmt, ...)
{
	char msg[2 * MN_ERRLEN];
	va_list ap;

	fprintf(stderr, "mnistctl %s: ", cmd);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ctl_fputs_escaped(stderr, msg);
	fputc('\n', stderr);
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[2 * MN_ERRLEN];
	va_list ap;

	/* Arguments are quoted, and a glob's expansion makes file names arguments. */
	fprintf(stderr, "mnistctl %s: ", cmd);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ctl_fputs_escaped(stderr, msg);
	fprintf(stderr, "\nTry 'mnistctl %s --help'.\n", cmd);
	return MN_EX_USAGE;
}

/* The long option whose val is v, or NULL. */
static const struct option *long_option(const struct option *opts, int v)
{
	for (size_t i = 0; opts && opts[i].name; i++)
		if (opts[i].val == v)
			return &opts[i];
	return NULL;
}

void ctl_option_message(int c, char **argv, const struct option *opts, char *buf, size_t len)
{
	/*
	 * A long option always moves optind past itself; a short one only when
	 * it ends its cluster, so argv[optind - 1] is the offending argument for
	 * long options and for ':' (which only the last argument can cause).
	 */
	const char *arg = optind > 0 ? argv[optind - 1] : "";
	bool is_long = strncmp(arg, "--", 2) == 0;
	const struct option *o = long_option(opts, optopt);

	if (c == ':') {
		if (is_long && o)
			snprintf(buf, len, "option --%s needs a value", o->name);
		else if (is_long)
			snprintf(buf, len, "option %s needs a value", arg);
		else
			snprintf(buf, len, "option -%c needs a value", optopt);
	} else if (optopt == 0) {
		/* An unknown long option: name it without any "=VALUE". */
		snprintf(buf, len, "unknown option %.*s", (int)strcspn(arg, "="), arg);
	} else if (o && is_long) {
		/* A known option that still failed: "--json=1" for one that takes no value. */
		snprintf(buf, len, "option --%s takes no value", o->name);
	} else if (optopt > ' ' && optopt < 127) {
		snprintf(buf, len, "unknown option -%c", optopt);
	} else {
		snprintf(buf, len, "unknown option");
	}
}

int ctl_option_error(const char *cmd, int c, char **argv, const struct option *opts)
{
	char msg[256];

	ctl_option_message(c, argv, opts, msg, sizeof(msg));
	return ctl_usage_error(cmd, "%s", msg);
}

static bool json_failed;

cJSON *ctl_json_add(cJSON *obj, const char *key, cJSON *item)
{
	bool ok;

	if (!obj || !item) {
		json_failed = true;
		cJSON_Delete(item);
		return NULL;
	}
	ok = key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item);
	if (!ok) {
		json_failed = true;
		cJSON_Delete(item);
		return NULL;
	}
	return item;
}

void ctl_json_str(cJSON *obj, const char *key, const char *value)
{
	char *shown;

	if (!value || mn_json_utf8(value, strlen(value))) {
		ctl_json_add(obj, key, value ? cJSON_CreateString(value) : cJSON_CreateNull());
		return;
	}
	/* cJSON copies bytes as they are, and JSON text is UTF-8: escaped as for a terminal. */
	shown = malloc(strlen(value) * 4 + 1);
	ctl_json_add(obj, key,
	             shown ? cJSON_CreateString(mn_escape(value, shown, strlen(value) * 4 + 1))
	                   : NULL);
	free(shown);
}

void ctl_json_int(cJSON *obj, const char *key, int64_t value)
{
	ctl_json_add(obj, key, mn_json_int(value));
}

void ctl_json_num(cJSON *obj, const char *key, double value)
{
	ctl_json_add(obj, key, mn_json_double(value, -1));
}

void ctl_json_bool(cJSON *obj, const char *key, bool value)
{
	ctl_json_add(obj, key, cJSON_CreateBool(value));
}

int ctl_json_fprint(FILE *f, cJSON *item)
{
	char *s = item && !json_failed ? cJSON_Print(item) : NULL;

	cJSON_Delete(item);
	if (!s) {
		fprintf(stderr, "mnistctl: out of memory building the JSON output\n");
		return -ENOMEM;
	}
	fprintf(f, "%s\n", s);
	free(s);
	return 0;
}

int ctl_json_print(cJSON *item)
{
	return ctl_json_fprint(stdout, item);
}

int ctl_load_config(const struct ctl_globals *g, bool tolerate_missing, struct mn_config *cfg,
                    char *err, size_t errlen)
{
	struct stat st;

	mn_config_defaults(cfg);
	if (tolerate_missing && strcmp(g->config_path, MN_DEFAULT_CONFIG) == 0 &&
	    stat(g->config_path, &st) < 0 && errno == ENOENT)
		return 0;
	return mn_config_load(g->config_path, cfg, err, errlen);
}

int ctl_check_prefix(const char *cmd, const char *prefix)
{
	char name[MN_CKPT_MAX_NAME];

	/* The longest name a checkpoint of this prefix can have must fit. */
	if (!*prefix || !mn_config_plain_name(prefix) ||
	    mn_ckptdir_filename(prefix, INT64_MAX, name, sizeof(name)) < 0)
		return ctl_usage_error(cmd,
		                       "--prefix \"%s\": not a checkpoint file prefix (a plain "
		                       "file name, not starting with '.', without control "
		                       "characters, of at most %zu bytes)",
		                       prefix, sizeof(name) - 1 - strlen("-" MN_CKPT_SUFFIX) - 19);
	return MN_EX_OK;
}

const char *ctl_output_path(const char *path, char *dir, size_t dirlen, char *err, size_t errlen)
{
	const char *base;
	struct stat st;

	if (strcmp(path, "-") == 0) {
		if (dirlen > 0)
			dir[0] = '\0';
		return path;
	}
	base = mn_split_path(path, dir, dirlen, err, errlen);
	if (!base)
		return NULL;
	/* Said before any work; mn_write_atomic() refuses it again at the end. */
	if (lstat(path, &st) == 0) {
		if (!S_ISREG(st.st_mode)) {
			mn_errf(
			    err, errlen,
			    "%s: exists and is not a regular file: not replaced (-o - writes to "
			    "standard output)",
			    path);
			return NULL;
		}
	} else if (errno != ENOENT && errno != ENOTDIR) {
		/*
		 * A name or path too long, a symlink loop, a directory that cannot
		 * be searched: the write would fail too, but only after all the work.
		 * (ENOENT and ENOTDIR: the directory's own check below says which.)
		 */
		mn_errf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (stat(dir, &st) < 0) {
		mn_errf(err, errlen, "%s: cannot write into %s: %s", path, dir, strerror(errno));
		return NULL;
	}
	if (!S_ISDIR(st.st_mode)) {
		mn_errf(err, errlen, "%s: cannot write into %s: not a directory", path, dir);
		return NULL;
	}
	return base;
}

/*
 * The temporary file being written, for the signal handler: armed only
 * while the path is complete, so the handler never reads a half-copied one.
 */
static char temp_path[PATH_MAX];
static volatile sig_atomic_t temp_armed;

static const int fatal_signals[] = {SIGHUP, SIGINT, SIGTERM};

/*
 * Async-signal-safe: unlink and raise only. SA_RESETHAND has restored the
 * default action, and the signal stays blocked until the handler returns,
 * so it then kills the process and the exit status names it.
 */
static void on_fatal_signal(int sig)
{
	int saved = errno;

	if (temp_armed)
		(void)unlink(temp_path);
	(void)raise(sig);
	errno = saved;
}

static void record_temp(const char *tmp, void *arg)
{
	(void)arg;
	temp_armed = 0;
	atomic_signal_fence(memory_order_seq_cst);
	if (!tmp || strlen(tmp) >= sizeof(temp_path))
		return;
	memcpy(temp_path, tmp, strlen(tmp) + 1);
	atomic_signal_fence(memory_order_seq_cst);
	temp_armed = 1;
}

int ctl_write_output(const char *dir, const char *base, const struct iovec *iov, int iovcnt,
                     bool noreplace, char *err, size_t errlen)
{
	enum { NSIG_FATAL = sizeof(fatal_signals) / sizeof(fatal_signals[0]) };
	struct mn_write_opts o = {
	    .mode = 0644,
	    .flags = noreplace ? MN_WRITE_NOREPLACE : 0,
	    .temp_hook = record_temp,
	};
	struct sigaction sa = {.sa_handler = on_fatal_signal, .sa_flags = SA_RESETHAND},
	                 old[NSIG_FATAL];
	bool installed[NSIG_FATAL] = {false};
	int rc;

	/* "-" as ctl_output_path() splits it: no file, so nothing to publish or clean up. */
	if (!dir[0] && strcmp(base, "-") == 0) {
		rc = mn_write_iov(STDOUT_FILENO, iov, iovcnt);
		if (rc < 0)
			mn_errf(err, errlen, "standard output: %s", strerror(-rc));
		return rc;
	}
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < NSIG_FATAL; i++)
		sigaddset(&sa.sa_mask, fatal_signals[i]);
	for (size_t i = 0; i < NSIG_FATAL; i++) {
		/* An ignored signal (nohup, a background job) is left ignored. */
		if (sigaction(fatal_signals[i], NULL, &old[i]) == 0 && old[i].sa_handler != SIG_IGN)
			installed[i] = sigaction(fatal_signals[i], &sa, NULL) == 0;
	}
	rc = mn_write_atomic_opts(dir, base, iov, iovcnt, &o, err, errlen);
	for (size_t i = 0; i < NSIG_FATAL; i++)
		if (installed[i])
			(void)sigaction(fatal_signals[i], &old[i], NULL);
	return rc;
}

int ctl_check_not_source(const char *out, const char *src, const char *what, char *err,
                         size_t errlen)
{
	struct stat so, ss;

	if (!src || strcmp(out, "-") == 0 || stat(out, &so) < 0 || stat(src, &ss) < 0)
		return 0;
	if (so.st_dev == ss.st_dev && so.st_ino == ss.st_ino) {
		mn_errf(err, errlen, "%s is %s being read (%s); not replacing it", out, what, src);
		return -EEXIST;
	}
	return 0;
}

int ctl_load_model(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch, float **params,
                   char *err, size_t errlen)
{
	char what[MN_ERRLEN];
	int rc = mn_model_load_params(c, use_ema, arch, params, err, errlen);

	if (rc < 0)
		return rc;
	rc = mn_model_check_finite(arch, *params, use_ema && !mn_model_is_frozen(c), what,
	                           sizeof(what));
	if (rc < 0) {
		mn_errf(err, errlen,
		        "%s: %s: a model with a value that is not finite is not usable",
		        mn_ckpt_name(c), what);
		free(*params);
		*params = NULL;
	}
	return rc;
}

int ctl_resolve_checkpoint(const char *path, const char *prefix, const struct ctl_globals *g,
                           char *out, size_t len, char *err, size_t errlen)
{
	struct mn_config cfg;
	char latest[MN_CKPT_MAX_NAME], ierr[MN_ERRLEN];
	struct mn_ckptdir_entry *list = NULL;
	struct mn_best_entry *best = NULL;
	struct stat st, fst;
	size_t n = 0, nbest = 0;
	int rc, w;

	if (stat(path, &st) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	if (!S_ISDIR(st.st_mode)) {
		w = snprintf(out, len, "%s", path);
		goto done;
	}
	/*
	 * The evaluator's eval.best_dir: its best checkpoint that still exists.
	 * A listed file may vanish (the evaluator replacing its best), as one
	 * checkpoint.json names may: the next entry, else a scan, as below.
	 */
	rc = mn_best_load(path, &best, &nbest, ierr, sizeof(ierr));
	if (rc < 0 && rc != -ENOENT) {
		mn_errf(err, errlen, "%s", ierr);
		return rc;
	}
	for (size_t i = 0; rc == 0 && i < nbest; i++) {
		w = snprintf(out, len, "%s/%s", path, best[i].file);
		if (w < 0 || (size_t)w >= len || lstat(out, &fst) == 0 || errno != ENOENT) {
			free(best);
			goto done;
		}
	}
	free(best);
	rc = mn_ckptdir_index_latest(path, latest, sizeof(latest), ierr, sizeof(ierr));
	if (rc == 0) {
		w = snprintf(out, len, "%s/%s", path, latest);
		/* An index naming a vanished file (retention, a stale copy): scan instead. */
		if (w < 0 || (size_t)w >= len || lstat(out, &fst) == 0 || errno != ENOENT)
			goto done;
	}
	/* No usable index (an older or hand-made directory): the highest step wins. */
	if (!prefix) {
		rc = ctl_load_config(g, true, &cfg, err, errlen);
		if (rc < 0)
			return rc;
		prefix = cfg.checkpoint.prefix;
	}
	rc = mn_ckptdir_scan(path, prefix, &list, &n, err, errlen);
	if (rc < 0)
		return rc;
	if (n == 0) {
		free(list);
		mn_errf(err, errlen, "%s: no checkpoint (no %s and no %s-<step>%s files)", path,
		        MN_CKPTDIR_INDEX, prefix, MN_CKPT_SUFFIX);
		return -ENOENT;
	}
	w = snprintf(out, len, "%s/%s", path, list[n - 1].name);
	free(list);
done:
	if (w < 0 || (size_t)w >= len) {
		mn_errf(err, errlen, "%s: path too long", path);
		return -ENAMETOOLONG;
	}
	/* A link found in a directory is followed only if the configuration says so. */
	if (S_ISDIR(st.st_mode) && lstat(out, &fst) == 0 && S_ISLNK(fst.st_mode)) {
		rc = ctl_load_config(g, true, &cfg, err, errlen);
		if (rc < 0)
			return rc;
		if (!cfg.checkpoint.follow_symlinks) {
			mn_errf(err, errlen,
			        "%s: a symbolic link, not followed (checkpoint.follow_symlinks is "
			        "false)",
			        out);
			return -ELOOP;
		}
	}
	/* A name found in a directory may be a FIFO or a device, which would block or never end. */
	if (S_ISDIR(st.st_mode) && stat(out, &fst) == 0 && !S_ISREG(fst.st_mode)) {
		mn_errf(err, errlen, "%s: not a regular file", out);
		return -EINVAL;
	}
	return 0;
}

const struct mn_tensor *ctl_find_tensor(const struct mn_ckpt *c, const char *name, char *err,
                                        size_t errlen)
{
	const struct mn_tensor *t = mn_ckpt_find(c, name);

	/* mn_ckpt_copy owns the "not found ... (it has: ...)" message; a miss only formats it. */
	if (!t)
		mn_ckpt_copy(c, name, MN_DTYPE_F32, 0, NULL, NULL, err, errlen);
	return t;
}

bool ctl_dtype_is_int(enum mn_dtype d)
{
	return d != MN_DTYPE_F16 && d != MN_DTYPE_BF16 && d != MN_DTYPE_F32 && d != MN_DTYPE_F64;
}

static float half_to_float(uint16_t h)
{
	int e = (h >> 10) & 0x1f, m = h & 0x3ff;
	float v;

	if (e == 0)
		v = ldexpf((float)m, -24);
	else if (e == 31)
		v = m ? NAN : INFINITY;
	else
		v = ldexpf((float)(m | 0x400), e - 25);
	return (h & 0x8000) ? -v : v;
}

/* Element i as a float for the floating-point dtypes narrower than F64. */
static float narrow_float(const struct mn_tensor *t, const uint8_t *p)
{
	uint16_t h;
	uint32_t bits;
	float f;

	switch (t->dtype) {
	case MN_DTYPE_F16:
		memcpy(&h, p, 2);
		return half_to_float(h);
	case MN_DTYPE_BF16:
		memcpy(&h, p, 2);
		bits = (uint32_t)h << 16;
		memcpy(&f, &bits, 4);
		return f;
	default:
		memcpy(&f, p, 4);
		return f;
	}
}

/* Integer dtypes widened: signed ones into *s, unsigned ones into *u. Returns true if signed. */
static bool widen_int(const struct mn_tensor *t, const uint8_t *p, int64_t *s, uint64_t *u)
{
	int8_t i8;
	int16_t i16;
	int32_t i32;
	uint16_t u16;
	uint32_t u32;

	switch (t->dtype) {
	case MN_DTYPE_I8:
		memcpy(&i8, p, 1);
		*s = i8;
		return true;
	case MN_DTYPE_I16:
		memcpy(&i16, p, 2);
		*s = i16;
		return true;
	case MN_DTYPE_I32:
		memcpy(&i32, p, 4);
		*s = i32;
		return true;
	case MN_DTYPE_I64:
		memcpy(s, p, 8);
		return true;
	case MN_DTYPE_U16:
		memcpy(&u16, p, 2);
		*u = u16;
		return false;
	case MN_DTYPE_U32:
		memcpy(&u32, p, 4);
		*u = u32;
		return false;
	case MN_DTYPE_U64:
		memcpy(u, p, 8);
		return false;
	default: /* U8, BOOL */
		*u = *p;
		return false;
	}
}

double ctl_tensor_double(const struct mn_tensor *t, uint64_t i)
{
	const uint8_t *p = (const uint8_t *)t->data + i * mn_dtype_size(t->dtype);
	int64_t s = 0;
	uint64_t u = 0;
	double d;

	if (t->dtype == MN_DTYPE_F64) {
		memcpy(&d, p, 8);
		return d;
	}
	if (!ctl_dtype_is_int(t->dtype))
		return narrow_float(t, p);
	if (t->dtype == MN_DTYPE_BOOL)
		return *p ? 1.0 : 0.0;
	return widen_int(t, p, &s, &u) ? (double)s : (double)u;
}

void ctl_tensor_format(const struct mn_tensor *t, uint64_t i, char *buf, size_t len)
{
	const uint8_t *p = (const uint8_t *)t->data + i * mn_dtype_size(t->dtype);
	int64_t s = 0;
	uint64_t u = 0;
	double d;

	if (t->dtype == MN_DTYPE_F64) {
		memcpy(&d, p, 8);
		snprintf(buf, len, "%.17g", d);
	} else if (!ctl_dtype_is_int(t->dtype)) {
		snprintf(buf, len, "%.9g", (double)narrow_float(t, p));
	} else if (t->dtype == MN_DTYPE_BOOL) {
		snprintf(buf, len, "%s", *p ? "true" : "false");
	} else if (widen_int(t, p, &s, &u)) {
		snprintf(buf, len, "%" PRId64, s);
	} else {
		snprintf(buf, len, "%" PRIu64, u);
	}
}
