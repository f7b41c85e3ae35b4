/* config.c - see config.h. */
#include "config.h"

#include "json.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"

/*
 * The schema. Every operation (defaults, loading, JSON output, diff, the
 * reloadable copy) walks this one table; adding a key means adding a row
 * here, to config/mnistd.json and to config/README.md.
 */

enum key_type {
	KT_INT,       /* int64_t in [min, max] */
	KT_UINT,      /* uint64_t in [min, max], min >= 0 */
	KT_DOUBLE,    /* double in dmin..dmax, ends open or closed per flags */
	KT_BOOL,      /* bool */
	KT_ENUM,      /* an enum stored as int, one of names[] */
	KT_STRING,    /* char[size], length in [min, max] */
	KT_INT_ARRAY, /* size_t count at offset, int64_t[amax] at aoffset */
	KT_INIT_FROM, /* checkpoint.init_from: file and rename map */
	KT_EARLY,     /* train.early_stopping: null or an object of early_keys */
};

#define KF_RELOAD     0x1u  /* can change without a restart */
#define KF_MIN_OPEN   0x2u  /* KT_DOUBLE: the minimum is excluded */
#define KF_MAX_OPEN   0x4u  /* KT_DOUBLE: the maximum is excluded */
#define KF_PLAIN_NAME 0x8u  /* KT_STRING: a file name, no '/', no leading '.', no controls */
#define KF_PROM_FILE  0x10u /* KT_STRING: "" or a path whose file name ends in .prom */

struct key {
	const char *path; /* "section.name" */
	enum key_type type;
	unsigned flags;
	unsigned users; /* the programs that read it: MN_CONFIG_* bits */
	size_t offset;  /* of the value; for composite types of its first field */
	size_t size;    /* bytes the value spans in struct mn_config */
	int64_t min, max;
	double dmin, dmax;
	int64_t idef;
	double ddef;
	const char *sdef;
	const char *const *names; /* KT_ENUM, NULL-terminated */
	size_t aoffset, amax;     /* KT_INT_ARRAY elements */
	const int64_t *adef;
	size_t nadef;
};

#define P53 ((int64_t)1 << 53)

/* offsetof and sizeof of a field, which must have type T (a compile error otherwise). */
#define FIELD(f, T)                                                                                \
	.offset = offsetof(struct mn_config, f) +                                                  \
	          0 * sizeof(_Generic(((struct mn_config *)0)->f, T : 0)),                         \
	.size = sizeof(((struct mn_config *)0)->f)
#define SPAN(first, last)                                                                          \
	.offset = offsetof(struct mn_config, first),                                               \
	.size = offsetof(struct mn_config, last) + sizeof(((struct mn_config *)0)->last) -         \
	        offsetof(struct mn_config, first)

#define INT(p, f, lo, hi, def, fl, u)                                                              \
	{                                                                                          \
		.path = (p), .type = KT_INT, .flags = (fl), .users = (u), FIELD(f, int64_t),       \
		.min = (lo), .max = (hi), .idef = (def)                                            \
	}
#define UINT(p, f, lo, hi, def, fl, u)                                                             \
	{                                                                                          \
		.path = (p), .type = KT_UINT, .flags = (fl), .users = (u), FIELD(f, uint64_t),     \
		.min = (lo), .max = (hi), .idef = (def)                                            \
	}
#define DBL(p, f, lo, hi, def, fl, u)                                                              \
	{                                                                                          \
		.path = (p), .type = KT_DOUBLE, .flags = (fl), .users = (u), FIELD(f, double),     \
		.dmin = (lo), .dmax = (hi), .ddef = (def)                                          \
	}
#define BOOL(p, f, def, fl, u)                                                                     \
	{                                                                                          \
		.path = (p), .type = KT_BOOL, .flags = (fl), .users = (u), FIELD(f, bool),         \
		.idef = (def)                                                                      \
	}
#define ENUM(p, f, T, nm, def, fl, u)                                                              \
	{                                                                                          \
		.path = (p), .type = KT_ENUM, .flags = (fl), .users = (u), FIELD(f, T),            \
		.names = (nm), .idef = (def)                                                       \
	}
#define STR(p, f, lo, hi, def, fl, u)                                                              \
	{                                                                                          \
		.path = (p), .type = KT_STRING, .flags = (fl), .users = (u), FIELD(f, char *),     \
		.min = (lo), .max = (hi), .sdef = (def)                                            \
	}

static const char *const watch_names[] = {"auto", "events", "poll", NULL};
static const int64_t hidden_default[] = {500};

_Static_assert(sizeof(enum mn_watch_mode) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum mn_log_level) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum mn_log_format) == sizeof(int), "enums are stored as int");
_Static_assert(MN_MAX_UNITS <= P53, "model.hidden bound");

/*
 * Who reads a key, for a reload's report: a program's reload speaks only of
 * the keys it uses, though all programs share the file. The evaluator sizes
 * its first buffers from model.hidden but takes the architecture from each
 * file, so that key is the trainer's alone.
 */
#define TR MN_CONFIG_TRAINER
#define EV MN_CONFIG_EVALUATOR
#define CT MN_CONFIG_CTL

/* The longest Unix socket path: sizeof(sun_path) - 1. */
#define SOCKET_PATH_MAX 107
/* The longest checkpoint prefix, leaving room for "-<step>.safetensors" in a name. */
#define PREFIX_MAX 100

static const struct key keys[] = {
    STR("data.dir", data.dir, 1, MN_CONFIG_PATH_MAX - 1, "/usr/share/datasets/fashion-mnist", 0,
        TR | EV),
    INT("data.validation_size", data.validation_size, 0, 1000000, 5000, 0, TR | EV),
    {
        .path = "model.hidden",
        .users = TR,
        .type = KT_INT_ARRAY,
        SPAN(model.nhidden, model.hidden),
        .min = 1,
        .max = MN_MAX_UNITS,
        .aoffset = offsetof(struct mn_config, model.hidden),
        .amax = MN_MAX_HIDDEN,
        .adef = hidden_default,
        .nadef = sizeof(hidden_default) / sizeof(hidden_default[0]),
    },
    DBL("model.init_stddev", model.init_stddev, 0, 10, 0.1, KF_MIN_OPEN, TR),
    UINT("model.seed", model.seed, 0, P53, 42, 0, TR),
    INT("train.batch_size", train.batch_size, 1, 65536, 100, 0, TR),
    DBL("train.learning_rate", train.learning_rate, 0, 100, 0.8, KF_MIN_OPEN | KF_RELOAD, TR),
    DBL("train.learning_rate_decay", train.learning_rate_decay, 0, 1, 0.99, KF_MIN_OPEN | KF_RELOAD,
        TR),
    INT("train.decay_steps", train.decay_steps, 0, (int64_t)1 << 31, 0, KF_RELOAD, TR),
    DBL("train.l2", train.l2, 0, 1, 1e-4, 0, TR),
    DBL("train.ema_decay", train.ema_decay, 0, 1, 0.99, KF_MAX_OPEN, TR),
    INT("train.max_steps", train.max_steps, 1, P53, 30000, KF_RELOAD, TR),
    INT("train.threads", train.threads, 0, 256, 0, 0, TR | EV | CT),
    STR("train.metrics_file", train.metrics_file, 0, MN_CONFIG_PATH_MAX - 1, "", 0, TR | EV | CT),
    {
        .path = "train.early_stopping",
        .users = TR,
        .type = KT_EARLY,
        SPAN(train.early_stopping.enabled, train.early_stopping.min_delta),
    },
    BOOL("train.stop_on_nan", train.stop_on_nan, true, KF_RELOAD, TR),
    STR("checkpoint.dir", checkpoint.dir, 1, MN_CONFIG_PATH_MAX - 1, "/var/lib/mnistd", 0, TR | EV),
    STR("checkpoint.prefix", checkpoint.prefix, 1, PREFIX_MAX, "model.ckpt", KF_PLAIN_NAME,
        TR | EV | CT),
    INT("checkpoint.every_steps", checkpoint.every_steps, 1, P53, 1000, KF_RELOAD, TR),
    INT("checkpoint.max_to_keep", checkpoint.max_to_keep, 0, 1000000, 5, KF_RELOAD, TR),
    BOOL("checkpoint.write_all", checkpoint.write_all, false, KF_RELOAD, TR),
    INT("checkpoint.max_failures", checkpoint.max_failures, 0, P53, 10, KF_RELOAD, TR),
    BOOL("checkpoint.follow_symlinks", checkpoint.follow_symlinks, false, 0, TR | EV | CT),
    {
        .path = "checkpoint.init_from",
        .users = TR,
        .type = KT_INIT_FROM,
        SPAN(checkpoint.init_from_file, checkpoint.init_from_map),
    },
    STR("control.socket", control.socket, 1, SOCKET_PATH_MAX, "/run/mnistd/control.sock", 0,
        TR | CT),
    BOOL("eval.use_ema", eval.use_ema, true, KF_RELOAD, EV),
    ENUM("eval.watch", eval.watch, enum mn_watch_mode, watch_names, MN_WATCH_AUTO, 0, TR | EV | CT),
    INT("eval.poll_interval_ms", eval.poll_interval_ms, 10, 3600000, 1000, 0, TR | EV | CT),
    STR("eval.metrics_file", eval.metrics_file, 0, MN_CONFIG_PATH_MAX - 1, "", 0, EV | CT),
    STR("eval.textfile", eval.textfile, 0, MN_CONFIG_PATH_MAX - 1, "", KF_PROM_FILE, EV),
    STR("eval.report_html", eval.report_html, 0, MN_CONFIG_PATH_MAX - 1, "", 0, EV),
    INT("eval.keep_best", eval.keep_best, 0, 1000, 1, 0, EV),
    STR("eval.best_dir", eval.best_dir, 1, MN_CONFIG_PATH_MAX - 1, "/var/lib/mnist-eval", 0, EV),
    ENUM("log.level", log.level, enum mn_log_level, mn_log_level_names, MN_LOG_INFO, KF_RELOAD,
         TR | EV),
    ENUM("log.format", log.format, enum mn_log_format, mn_log_format_names, MN_LOG_TEXT, 0,
         TR | EV),
    STR("log.file", log.file, 0, MN_CONFIG_PATH_MAX - 1, "", 0, TR | EV),
    STR("metrics.textfile", metrics.textfile, 0, MN_CONFIG_PATH_MAX - 1, "", KF_PROM_FILE, TR),
    INT("metrics.interval_ms", metrics.interval_ms, 100, 3600000, 10000, 0, TR),
    STR("metrics.run", metrics.run, 0, MN_CONFIG_NAME_MAX - 1, "", 0, TR | EV),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* The members of train.early_stopping when it is an object; metrics_file is required. */
static const struct key early_keys[] = {
    STR("train.early_stopping.metrics_file", train.early_stopping.metrics_file, 1,
        MN_CONFIG_PATH_MAX - 1, "", 0, TR),
    INT("train.early_stopping.patience", train.early_stopping.patience, 1, 1000000, 5, 0, TR),
    DBL("train.early_stopping.min_delta", train.early_stopping.min_delta, 0, 1, 0, 0, TR),
};

#define NEARLY (sizeof(early_keys) / sizeof(early_keys[0]))

/* ---- small helpers ---- */

/*
 * node-exporter's textfile collector reads only "*.prom" files, and a
 * dot-file would collide with mn_write_atomic's temporary names.
 */
static bool prom_file_name(const char *path)
{
	const char *name = strrchr(path, '/');
	size_t len;

	name = name ? name + 1 : path;
	len = strlen(name);
	return name[0] != '.' && len > 5 && strcmp(name + len - 5, ".prom") == 0;
}

/*
 * A checkpoint prefix is part of every file name, log line, metric label and
 * index entry the run writes: a control character there (a pasted newline,
 * an escape) is a mistake that would break each of them.
 */
bool mn_config_plain_name(const char *s)
{
	if (strchr(s, '/') || s[0] == '.')
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static size_t section_len(const char *path)
{
	const char *dot = strchr(path, '.');

	return dot ? (size_t)(dot - path) : strlen(path);
}

static bool same_section(const char *a, const char *b)
{
	size_t la = section_len(a);

	return la == section_len(b) && strncmp(a, b, la) == 0;
}

static bool is_section(const struct key *k, const char *name)
{
	size_t len = section_len(k->path);

	return strlen(name) == len && strncmp(k->path, name, len) == 0;
}

static const struct key *find_key(const char *path)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].path, path) == 0)
			return &keys[i];
	return NULL;
}

static void *field(struct mn_config *c, size_t offset)
{
	return (char *)c + offset;
}

static const void *cfield(const struct mn_config *c, size_t offset)
{
	return (const char *)c + offset;
}

static int64_t get_i64(const struct mn_config *c, const struct key *k)
{
	int64_t v;

	memcpy(&v, cfield(c, k->offset), sizeof(v));
	return v;
}

static uint64_t get_u64(const struct mn_config *c, const struct key *k)
{
	uint64_t v;

	memcpy(&v, cfield(c, k->offset), sizeof(v));
	return v;
}

static double get_dbl(const struct mn_config *c, const struct key *k)
{
	double v;

	memcpy(&v, cfield(c, k->offset), sizeof(v));
	return v;
}

static bool get_bool(const struct mn_config *c, const struct key *k)
{
	bool v;

	memcpy(&v, cfield(c, k->offset), sizeof(v));
	return v;
}

static int get_enum(const struct mn_config *c, const struct key *k)
{
	int v;

	memcpy(&v, cfield(c, k->offset), sizeof(v));
	return v;
}

static size_t get_count(const struct mn_config *c, const struct key *k)
{
	size_t n;

	memcpy(&n, cfield(c, k->offset), sizeof(n));
	return n;
}

static size_t enum_count(const struct key *k)
{
	size_t n = 0;

	while (k->names[n])
		n++;
	return n;
}

/* A key or section name for a message (at most 64 bytes of it). */
static void safe_name(char *dst, size_t len, const char *src)
{
	mn_printable(dst, len, src, 64);
}

/* The JSON text of a value for a message, shortened when long. */
static void describe(const cJSON *item, char *buf, size_t len)
{
	char *s = cJSON_PrintUnformatted(item);

	if (!s) {
		snprintf(buf, len, "(a value)");
		return;
	}
	for (char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = '?';
	if (strlen(s) > 60)
		snprintf(buf, len, "%.56s...", s);
	else
		snprintf(buf, len, "%s", s);
	cJSON_free(s);
}

/* The value described for "must be ..." messages. */
static void format_range(const struct key *k, char *buf, size_t len)
{
	switch (k->type) {
	case KT_INT:
	case KT_UINT:
		snprintf(buf, len, "an integer in [%" PRId64 ", %" PRId64 "]", k->min, k->max);
		break;
	case KT_DOUBLE:
		snprintf(buf, len, "a number in %c%.15g, %.15g%c",
		         (k->flags & KF_MIN_OPEN) ? '(' : '[', k->dmin, k->dmax,
		         (k->flags & KF_MAX_OPEN) ? ')' : ']');
		break;
	case KT_BOOL:
		snprintf(buf, len, "true or false");
		break;
	case KT_ENUM: {
		size_t used = (size_t)snprintf(buf, len, "one of");

		for (size_t i = 0; k->names[i] && used < len; i++)
			used += (size_t)snprintf(buf + used, len - used, "%s \"%s\"", i ? "," : "",
			                         k->names[i]);
		break;
	}
	case KT_STRING:
		if (k->flags & KF_PLAIN_NAME)
			snprintf(buf, len,
			         "a plain file name (1 to %" PRId64
			         " bytes, no '/' or control characters, not starting with '.')",
			         k->max);
		else if (k->flags & KF_PROM_FILE)
			snprintf(
			    buf, len,
			    "\"\" or a path of at most %" PRId64
			    " bytes whose file name ends in \".prom\" and does not start with '.'",
			    k->max);
		else if (k->min > 0)
			snprintf(buf, len, "a non-empty string of at most %" PRId64 " bytes",
			         k->max);
		else
			snprintf(buf, len, "a string of at most %" PRId64 " bytes", k->max);
		break;
	case KT_INT_ARRAY:
		snprintf(buf, len, "an array of at most %zu integers in [%" PRId64 ", %" PRId64 "]",
		         k->amax, k->min, k->max);
		break;
	case KT_INIT_FROM:
		snprintf(
		    buf, len,
		    "null or an object {\"file\": \"...\", \"map\": {\"name\": \"name\", ...}}");
		break;
	case KT_EARLY:
		snprintf(buf, len,
		         "null or an object {\"metrics_file\": \"...\", \"patience\": N, "
		         "\"min_delta\": X}");
		break;
	}
}

static int bad_value(const struct key *k, const char *path, const cJSON *item, char *err,
                     size_t errlen)
{
	char range[160], got[80];

	format_range(k, range, sizeof(range));
	describe(item, got, sizeof(got));
	mn_errf(err, errlen, "%s: must be %s, got %s", path, range, got);
	return -EINVAL;
}

/* A string of length in [lo, hi] (already free of NUL bytes, see scan_text). */
static bool json_str(const cJSON *item, size_t lo, size_t hi)
{
	size_t n;

	if (!cJSON_IsString(item) || !item->valuestring)
		return false;
	n = strlen(item->valuestring);
	return n >= lo && n <= hi;
}

/* ---- type handlers: set one key from JSON ---- */

/* init_from.map: "<name in this model>": "<name in that file>" pairs, into c; *n of them. */
static int set_rename_map(struct mn_config *c, const char *path, const cJSON *map, size_t *count,
                          char *err, size_t errlen)
{
	char name[80], got[80];
	const cJSON *e;
	size_t n = 0;

	cJSON_ArrayForEach(e, map)
	{
		struct mn_config_rename *r = &c->checkpoint.init_from_map[n];
		size_t klen = strlen(e->string);

		if (n == MN_CONFIG_MAP_MAX) {
			mn_errf(err, errlen, "%s.map: more than %d entries", path,
			        MN_CONFIG_MAP_MAX);
			return -EINVAL;
		}
		safe_name(name, sizeof(name), e->string);
		if (klen == 0 || klen >= MN_CONFIG_NAME_MAX) {
			mn_errf(err, errlen, "%s.map: names must be 1 to %d bytes, got \"%s\"",
			        path, MN_CONFIG_NAME_MAX - 1, name);
			return -EINVAL;
		}
		if (mn_json_duplicate(map, e)) {
			mn_errf(err, errlen, "%s.map.%s: duplicate key", path, name);
			return -EINVAL;
		}
		if (!json_str(e, 1, MN_CONFIG_NAME_MAX - 1)) {
			describe(e, got, sizeof(got));
			mn_errf(err, errlen, "%s.map.%s: must be a name of 1 to %d bytes, got %s",
			        path, name, MN_CONFIG_NAME_MAX - 1, got);
			return -EINVAL;
		}
		memcpy(r->to, e->string, klen + 1);
		memcpy(r->from, e->valuestring, strlen(e->valuestring) + 1);
		n++;
	}
	*count = n;
	return 0;
}

static int set_init_from(struct mn_config *c, const char *path, const cJSON *item, char *err,
                         size_t errlen)
{
	const cJSON *file, *map;
	const struct mn_json_member members[] = {
	    {"file", 0, true, &file},
	    {"map", 0, false, &map},
	};
	enum mn_json_fault fault;
	const char *bad;
	char name[80], got[80];
	size_t n = 0;
	int rc;

	c->checkpoint.init_from_file[0] = '\0';
	c->checkpoint.init_from_nmap = 0;
	memset(c->checkpoint.init_from_map, 0, sizeof(c->checkpoint.init_from_map));
	if (cJSON_IsNull(item))
		return 0;
	if (!cJSON_IsObject(item))
		return bad_value(find_key(path), path, item, err, errlen);
	if (mn_json_members(item, members, 2, false, &fault, &bad) < 0) {
		safe_name(name, sizeof(name), bad);
		if (fault == MN_JSON_DUPLICATE)
			mn_errf(err, errlen, "%s.%s: duplicate key", path, name);
		else if (fault == MN_JSON_UNKNOWN)
			mn_errf(err, errlen, "%s.%s: unknown key (init_from has: file, map)", path,
			        name);
		else
			mn_errf(err, errlen,
			        "%s.file: missing (required when init_from is an object)", path);
		return -EINVAL;
	}
	if (!json_str(file, 1, MN_CONFIG_PATH_MAX - 1)) {
		describe(file, got, sizeof(got));
		mn_errf(err, errlen,
		        "%s.file: must be a non-empty string of at most %d bytes, got %s", path,
		        MN_CONFIG_PATH_MAX - 1, got);
		return -EINVAL;
	}
	if (map && !cJSON_IsObject(map)) {
		describe(map, got, sizeof(got));
		mn_errf(
		    err, errlen,
		    "%s.map: must be an object of at most %d \"name\": \"name\" entries, got %s",
		    path, MN_CONFIG_MAP_MAX, got);
		return -EINVAL;
	}
	rc = set_rename_map(c, path, map, &n, err, errlen);
	if (rc < 0)
		return rc;
	memcpy(c->checkpoint.init_from_file, file->valuestring, strlen(file->valuestring) + 1);
	c->checkpoint.init_from_nmap = n;
	return 0;
}

static int set_int_array(const struct key *k, const char *path, const cJSON *item,
                         struct mn_config *c, char *err, size_t errlen)
{
	int64_t vals[MN_MAX_HIDDEN];
	size_t n = 0;
	const cJSON *e;

	if (!cJSON_IsArray(item) || (size_t)cJSON_GetArraySize(item) > k->amax)
		return bad_value(k, path, item, err, errlen);
	cJSON_ArrayForEach(e, item)
	{
		if (n >= k->amax || n >= MN_MAX_HIDDEN)
			return bad_value(k, path, item, err, errlen);
		if (!mn_json_get_int(e, k->min, k->max, &vals[n])) {
			char got[80];

			describe(e, got, sizeof(got));
			mn_errf(err, errlen,
			        "%s[%zu]: must be an integer in [%" PRId64 ", %" PRId64 "], got %s",
			        path, n, k->min, k->max, got);
			return -EINVAL;
		}
		n++;
	}
	memset(field(c, k->offset), 0, k->size);
	memcpy(field(c, k->offset), &n, sizeof(n));
	memcpy(field(c, k->aoffset), vals, n * sizeof(vals[0]));
	return 0;
}

static int set_value(const struct key *k, const char *path, const cJSON *item, struct mn_config *c,
                     char *err, size_t errlen);
static void set_default(const struct key *k, struct mn_config *c);

/* Each member is checked like a key of its own, so messages name "train.early_stopping.patience".
 */
static int set_early(const struct key *k, const char *path, const cJSON *item, struct mn_config *c,
                     char *err, size_t errlen)
{
	const cJSON *vals[NEARLY];
	struct mn_json_member members[NEARLY];
	enum mn_json_fault fault;
	const char *bad;
	char name[80];
	int rc;

	memset(field(c, k->offset), 0, k->size);
	for (size_t i = 0; i < NEARLY; i++) {
		set_default(&early_keys[i], c);
		/* Types are left to set_value, whose messages give the range. */
		members[i] = (struct mn_json_member){
		    .name = early_keys[i].path + strlen("train.early_stopping."),
		    .required = i == 0,
		    .value = &vals[i],
		};
	}
	if (cJSON_IsNull(item))
		return 0;
	if (!cJSON_IsObject(item))
		return bad_value(k, path, item, err, errlen);
	if (mn_json_members(item, members, NEARLY, false, &fault, &bad) < 0) {
		safe_name(name, sizeof(name), bad);
		if (fault == MN_JSON_DUPLICATE)
			mn_errf(err, errlen, "%s.%s: duplicate key", path, name);
		else if (fault == MN_JSON_UNKNOWN)
			mn_errf(err, errlen,
			        "%s.%s: unknown key (early_stopping has: metrics_file, patience, "
			        "min_delta)",
			        path, name);
		else
			mn_errf(err, errlen,
			        "%s.%s: missing (required when early_stopping is an object)", path,
			        name);
		return -EINVAL;
	}
	for (size_t i = 0; i < NEARLY; i++) {
		rc = vals[i]
		         ? set_value(&early_keys[i], early_keys[i].path, vals[i], c, err, errlen)
		         : 0;
		if (rc < 0)
			return rc;
	}
	c->train.early_stopping.enabled = true;
	return 0;
}

static int set_value(const struct key *k, const char *path, const cJSON *item, struct mn_config *c,
                     char *err, size_t errlen)
{
	void *p = field(c, k->offset);
	int64_t i;

	switch (k->type) {
	case KT_INT:
		if (!mn_json_get_int(item, k->min, k->max, &i))
			return bad_value(k, path, item, err, errlen);
		memcpy(p, &i, sizeof(i));
		return 0;
	case KT_UINT: {
		uint64_t u;

		if (!mn_json_get_int(item, k->min, k->max, &i))
			return bad_value(k, path, item, err, errlen);
		u = (uint64_t)i;
		memcpy(p, &u, sizeof(u));
		return 0;
	}
	case KT_DOUBLE: {
		double d;

		if (!cJSON_IsNumber(item))
			return bad_value(k, path, item, err, errlen);
		d = item->valuedouble;
		if (!isfinite(d) || d < k->dmin || d > k->dmax ||
		    ((k->flags & KF_MIN_OPEN) && d == k->dmin) ||
		    ((k->flags & KF_MAX_OPEN) && d == k->dmax))
			return bad_value(k, path, item, err, errlen);
		memcpy(p, &d, sizeof(d));
		return 0;
	}
	case KT_BOOL: {
		bool b;

		if (!cJSON_IsBool(item))
			return bad_value(k, path, item, err, errlen);
		b = cJSON_IsTrue(item);
		memcpy(p, &b, sizeof(b));
		return 0;
	}
	case KT_ENUM:
		if (cJSON_IsString(item) && item->valuestring) {
			for (int v = 0; k->names[v]; v++) {
				if (strcmp(k->names[v], item->valuestring) == 0) {
					memcpy(p, &v, sizeof(v));
					return 0;
				}
			}
		}
		return bad_value(k, path, item, err, errlen);
	case KT_STRING: {
		const char *s;

		if (!json_str(item, (size_t)k->min, (size_t)k->max))
			return bad_value(k, path, item, err, errlen);
		s = item->valuestring;
		if ((k->flags & KF_PLAIN_NAME) && !mn_config_plain_name(s))
			return bad_value(k, path, item, err, errlen);
		if ((k->flags & KF_PROM_FILE) && *s && !prom_file_name(s))
			return bad_value(k, path, item, err, errlen);
		memset(p, 0, k->size);
		memcpy(p, s, strlen(s) + 1);
		return 0;
	}
	case KT_INT_ARRAY:
		return set_int_array(k, path, item, c, err, errlen);
	case KT_INIT_FROM:
		return set_init_from(c, path, item, err, errlen);
	case KT_EARLY:
		return set_early(k, path, item, c, err, errlen);
	}
	mn_errf(err, errlen, "%s: internal error: unknown type", path);
	return -EINVAL;
}

static void set_default(const struct key *k, struct mn_config *c)
{
	void *p = field(c, k->offset);

	switch (k->type) {
	case KT_INT:
		memcpy(p, &k->idef, sizeof(k->idef));
		break;
	case KT_UINT: {
		uint64_t u = (uint64_t)k->idef;

		memcpy(p, &u, sizeof(u));
		break;
	}
	case KT_DOUBLE:
		memcpy(p, &k->ddef, sizeof(k->ddef));
		break;
	case KT_BOOL: {
		bool b = k->idef != 0;

		memcpy(p, &b, sizeof(b));
		break;
	}
	case KT_ENUM: {
		int v = (int)k->idef;

		memcpy(p, &v, sizeof(v));
		break;
	}
	case KT_STRING:
		memset(p, 0, k->size);
		snprintf(p, k->size, "%s", k->sdef);
		break;
	case KT_INT_ARRAY:
		memset(p, 0, k->size);
		memcpy(p, &k->nadef, sizeof(k->nadef));
		memcpy(field(c, k->aoffset), k->adef, k->nadef * sizeof(k->adef[0]));
		break;
	case KT_INIT_FROM:
		memset(p, 0, k->size);
		break;
	case KT_EARLY:
		memset(p, 0, k->size);
		for (size_t i = 0; i < NEARLY; i++)
			set_default(&early_keys[i], c);
		break;
	}
}

/* ---- public API ---- */

void mn_config_defaults(struct mn_config *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NKEYS; i++)
		set_default(&keys[i], c);
}

static int unknown_section(const char *name, char *err, size_t errlen)
{
	char list[256], sname[80];
	size_t used = 0;

	list[0] = '\0';
	for (size_t i = 0; i < NKEYS && used < sizeof(list); i++) {
		if (i > 0 && same_section(keys[i - 1].path, keys[i].path))
			continue;
		used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%.*s", i ? ", " : "",
		                         (int)section_len(keys[i].path), keys[i].path);
	}
	safe_name(sname, sizeof(sname), name);
	mn_errf(err, errlen, "%s: unknown section (sections: %s)", sname, list);
	return -EINVAL;
}

static int unknown_key(const char *section, const char *path, char *err, size_t errlen)
{
	char list[256];
	size_t used = 0;
	size_t slen = strlen(section);

	list[0] = '\0';
	for (size_t i = 0; i < NKEYS && used < sizeof(list); i++) {
		if (!is_section(&keys[i], section))
			continue;
		used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "",
		                         keys[i].path + slen + 1);
	}
	mn_errf(err, errlen, "%s: unknown key (%s has: %s)", path, section, list);
	return -EINVAL;
}

static int apply_section(const cJSON *sec, struct mn_config *c, char *err, size_t errlen)
{
	char sname[80], kname[80], path[200], got[80];
	const cJSON *item;

	safe_name(sname, sizeof(sname), sec->string);
	if (!cJSON_IsObject(sec)) {
		describe(sec, got, sizeof(got));
		mn_errf(err, errlen, "%s: must be an object, got %s", sname, got);
		return -EINVAL;
	}
	cJSON_ArrayForEach(item, sec)
	{
		const struct key *k = NULL;
		int rc;

		safe_name(kname, sizeof(kname), item->string);
		snprintf(path, sizeof(path), "%s.%s", sname, kname);
		if (mn_json_duplicate(sec, item)) {
			mn_errf(err, errlen, "%s: duplicate key", path);
			return -EINVAL;
		}
		/* Look up by the raw names: a sanitised name must not match a key. */
		for (size_t i = 0; i < NKEYS && !k; i++) {
			size_t slen = section_len(keys[i].path);

			if (is_section(&keys[i], sec->string) &&
			    strcmp(keys[i].path + slen + 1, item->string) == 0)
				k = &keys[i];
		}
		if (!k)
			return unknown_key(sname, path, err, errlen);
		rc = set_value(k, k->path, item, c, err, errlen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int apply_root(const cJSON *root, struct mn_config *c, char *err, size_t errlen)
{
	const cJSON *sec;

	if (!cJSON_IsObject(root)) {
		char got[80];

		describe(root, got, sizeof(got));
		mn_errf(err, errlen, "the top level must be an object, got %s", got);
		return -EINVAL;
	}
	cJSON_ArrayForEach(sec, root)
	{
		bool known = false;
		int rc;

		for (size_t i = 0; i < NKEYS && !known; i++)
			known = is_section(&keys[i], sec->string);
		if (!known)
			return unknown_section(sec->string, err, errlen);
		if (mn_json_duplicate(root, sec)) {
			char sname[80];

			safe_name(sname, sizeof(sname), sec->string);
			mn_errf(err, errlen, "%s: duplicate section", sname);
			return -EINVAL;
		}
		rc = apply_section(sec, c, err, errlen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * The checks the trainer makes on the network at start, made here so that
 * --check-config and a reload refuse what start would: the parameter count
 * and the batch rows the workspace can index. The input layer's size comes
 * from the data, so it counts as 1 here; start checks again with the real one.
 */
static int check_network(const struct mn_config *c, char *err, size_t errlen)
{
	struct mn_arch a;
	char why[MN_ERRLEN];
	size_t units = 0;

	mn_config_arch(c, 1, MN_CLASSES, &a);
	if (mn_arch_validate(&a, why, sizeof(why)) < 0) {
		mn_errf(err, errlen, "model.hidden: %s", why);
		return -EINVAL;
	}
	for (size_t l = 0; l < mn_arch_layers(&a); l++)
		units += mn_arch_layer_out(&a, l);
	if ((uint64_t)c->train.batch_size > (uint64_t)(INT32_MAX / 2) / units) {
		mn_errf(err, errlen,
		        "train.batch_size: %" PRId64 " rows of a network with %zu units exceed the "
		        "%d values a BLAS matrix may hold; at most %zu rows",
		        c->train.batch_size, units, INT32_MAX / 2, (size_t)(INT32_MAX / 2) / units);
		return -EINVAL;
	}
	return 0;
}

/*
 * The files the programs write must be distinct: two writers of one path
 * replace or interleave each other's contents (a trainer's textfile
 * overwritten by the evaluator's makes the metrics flap). log.file may be
 * shared: both programs append whole lines to it. Compared as written; the
 * copy-and-paste mistake is the common one.
 */
static int check_outputs(const struct mn_config *c, char *err, size_t errlen)
{
	const struct {
		const char *key, *path;
	} out[] = {
	    {"train.metrics_file", c->train.metrics_file},
	    {"metrics.textfile", c->metrics.textfile},
	    {"eval.metrics_file", c->eval.metrics_file},
	    {"eval.textfile", c->eval.textfile},
	    {"eval.report_html", c->eval.report_html},
	    {"log.file", c->log.file},
	};
	size_t n = sizeof(out) / sizeof(out[0]);

	for (size_t i = 0; i < n; i++) {
		for (size_t j = i + 1; j < n && out[i].path[0]; j++) {
			if (strcmp(out[i].path, out[j].path) != 0)
				continue;
			mn_errf(err, errlen,
			        "%s: is also %s (\"%s\"); each output needs a file of its own",
			        out[j].key, out[i].key, out[j].path);
			return -EINVAL;
		}
	}
	/*
	 * The early stopper reads the evaluator's accuracies: any other of
	 * these files (the trainer's own history, a near name) has none, and
	 * training would never stop early, with only a warning per line.
	 */
	for (size_t i = 0; c->train.early_stopping.enabled && i < n; i++) {
		if (out[i].path == c->eval.metrics_file ||
		    strcmp(out[i].path, c->train.early_stopping.metrics_file) != 0)
			continue;
		mn_errf(err, errlen,
		        "train.early_stopping.metrics_file: is %s (\"%s\"), which has no "
		        "accuracies; it "
		        "must be the evaluator's eval.metrics_file",
		        out[i].key, out[i].path);
		return -EINVAL;
	}
	return 0;
}

int mn_config_parse(const char *json, size_t len, const char *name, struct mn_config *c, char *err,
                    size_t errlen)
{
	struct mn_config *tmp = NULL;
	struct mn_json_error e;
	cJSON *root = NULL;
	int rc;

	if (!name)
		name = "(config)";
	if (len > MN_CONFIG_FILE_MAX) {
		mn_errf(err, errlen, "%s: larger than %d bytes", name, MN_CONFIG_FILE_MAX);
		return -EFBIG;
	}
	tmp = malloc(sizeof(*tmp));
	/*
	 * JSON text is UTF-8 (RFC 8259), and the configuration travels on as
	 * UTF-8 in every checkpoint's metadata: bytes that are not would pass
	 * here and fail every checkpoint write later.
	 */
	rc = tmp ? mn_json_parse(json, len, MN_JSON_EXACT_INTEGERS | MN_JSON_UTF8, &root, &e)
	         : -ENOMEM;
	if (rc == -ENOMEM) {
		mn_errf(err, errlen, "%s: out of memory", name);
		goto out;
	}
	if (rc < 0 && e.rule == MN_JSON_RULE_SYNTAX) {
		mn_errf(err, errlen, "%s: invalid JSON at line %zu, column %zu (byte %zu)", name,
		        e.line, e.col, e.at);
		goto out;
	}
	if (rc < 0) {
		mn_errf(err, errlen, "%s: invalid JSON at line %zu, column %zu (byte %zu): %s",
		        name, e.line, e.col, e.at, e.what);
		goto out;
	}
	mn_config_defaults(tmp);
	rc = apply_root(root, tmp, err, errlen);
	if (rc == 0)
		rc = check_network(tmp, err, errlen);
	if (rc == 0)
		rc = check_outputs(tmp, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "%s", name);
		goto out;
	}
	*c = *tmp;
out:
	cJSON_Delete(root);
	free(tmp);
	return rc;
}

int mn_config_load(const char *path, struct mn_config *c, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	rc = mn_read_file(path, MN_CONFIG_FILE_MAX, &buf, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = mn_config_parse(buf, len, path, c, err, errlen);
	free(buf);
	return rc;
}

static cJSON *init_from_json(const struct mn_config *c)
{
	cJSON *o, *map;

	if (c->checkpoint.init_from_file[0] == '\0')
		return cJSON_CreateNull();
	o = cJSON_CreateObject();
	if (!o)
		return NULL;
	map = cJSON_CreateObject();
	if (!mn_json_add(o, "file", cJSON_CreateString(c->checkpoint.init_from_file)) ||
	    !mn_json_add(o, "map", map))
		goto fail;
	for (size_t i = 0; i < c->checkpoint.init_from_nmap && i < MN_CONFIG_MAP_MAX; i++) {
		const struct mn_config_rename *r = &c->checkpoint.init_from_map[i];

		if (!mn_json_add(map, r->to, cJSON_CreateString(r->from)))
			goto fail;
	}
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

static cJSON *value_json(const struct key *k, const struct mn_config *c);

static cJSON *early_json(const struct mn_config *c)
{
	cJSON *o;

	if (!c->train.early_stopping.enabled)
		return cJSON_CreateNull();
	o = cJSON_CreateObject();
	for (size_t i = 0; o && i < NEARLY; i++) {
		const struct key *sub = &early_keys[i];

		if (!mn_json_add(o, sub->path + strlen("train.early_stopping."),
		                 value_json(sub, c))) {
			cJSON_Delete(o);
			return NULL;
		}
	}
	return o;
}

static cJSON *value_json(const struct key *k, const struct mn_config *c)
{
	switch (k->type) {
	case KT_INT:
		return mn_json_int(get_i64(c, k));
	case KT_UINT:
		return mn_json_uint(get_u64(c, k));
	case KT_DOUBLE:
		return mn_json_double(get_dbl(c, k), -1);
	case KT_BOOL:
		return cJSON_CreateBool(get_bool(c, k));
	case KT_ENUM: {
		int v = get_enum(c, k);

		if (v < 0 || (size_t)v >= enum_count(k))
			return cJSON_CreateNull();
		return cJSON_CreateString(k->names[v]);
	}
	case KT_STRING: {
		char s[MN_CONFIG_PATH_MAX];

		snprintf(s, sizeof(s), "%.*s", (int)k->size - 1,
		         (const char *)cfield(c, k->offset));
		return cJSON_CreateString(s);
	}
	case KT_INT_ARRAY: {
		cJSON *a = cJSON_CreateArray();
		size_t n = get_count(c, k);
		const int64_t *v = cfield(c, k->aoffset);

		for (size_t i = 0; a && i < n && i < k->amax; i++) {
			if (!mn_json_add(a, NULL, mn_json_int(v[i]))) {
				cJSON_Delete(a);
				return NULL;
			}
		}
		return a;
	}
	case KT_INIT_FROM:
		return init_from_json(c);
	case KT_EARLY:
		return early_json(c);
	}
	return NULL;
}

char *mn_config_to_json(const struct mn_config *c)
{
	cJSON *root = cJSON_CreateObject(), *sec = NULL;
	char sname[32];
	char *out = NULL;

	if (!root)
		return NULL;
	for (size_t i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];
		size_t slen = section_len(k->path);

		if (i == 0 || !same_section(keys[i - 1].path, k->path)) {
			snprintf(sname, sizeof(sname), "%.*s", (int)slen, k->path);
			sec = cJSON_CreateObject();
			if (!mn_json_add(root, sname, sec))
				goto out;
		}
		if (!mn_json_add(sec, k->path + slen + 1, value_json(k, c)))
			goto out;
	}
	out = cJSON_PrintUnformatted(root);
out:
	cJSON_Delete(root);
	return out;
}

int64_t mn_config_decay_steps(const struct mn_config *c, size_t train_count)
{
	int64_t steps;

	if (c->train.decay_steps > 0)
		return c->train.decay_steps;
	if (c->train.batch_size <= 0)
		steps = (int64_t)train_count;
	else
		steps = (int64_t)(train_count / (uint64_t)c->train.batch_size);
	return steps < 1 ? 1 : steps;
}

void mn_config_arch(const struct mn_config *c, size_t input, size_t output, struct mn_arch *a)
{
	memset(a, 0, sizeof(*a));
	a->input = input;
	a->output = output;
	a->nhidden = c->model.nhidden < MN_MAX_HIDDEN ? c->model.nhidden : MN_MAX_HIDDEN;
	for (size_t i = 0; i < a->nhidden; i++)
		a->hidden[i] = c->model.hidden[i] > 0 ? (size_t)c->model.hidden[i] : 0;
}

bool mn_config_reloadable(const char *key)
{
	const struct key *k = key ? find_key(key) : NULL;

	return k && (k->flags & KF_RELOAD);
}

unsigned mn_config_users(const char *key)
{
	const struct key *k = key ? find_key(key) : NULL;

	return k ? k->users : 0;
}

static enum mn_config_change change_for(const struct key *k, unsigned user)
{
	if (!(k->users & user))
		return MN_CONFIG_UNUSED;
	return (k->flags & KF_RELOAD) ? MN_CONFIG_APPLY : MN_CONFIG_RESTART;
}

enum mn_config_change mn_config_change_for(const char *key, unsigned user)
{
	const struct key *k = key ? find_key(key) : NULL;

	return k ? change_for(k, user) : MN_CONFIG_UNUSED;
}

static bool init_from_equal(const struct mn_config *a, const struct mn_config *b)
{
	size_t n = a->checkpoint.init_from_nmap;

	if (strcmp(a->checkpoint.init_from_file, b->checkpoint.init_from_file) != 0 ||
	    n != b->checkpoint.init_from_nmap)
		return false;
	for (size_t i = 0; i < n && i < MN_CONFIG_MAP_MAX; i++) {
		const struct mn_config_rename *ra = &a->checkpoint.init_from_map[i];
		const struct mn_config_rename *rb = &b->checkpoint.init_from_map[i];

		if (strcmp(ra->to, rb->to) != 0 || strcmp(ra->from, rb->from) != 0)
			return false;
	}
	return true;
}

static bool value_equal(const struct key *k, const struct mn_config *a, const struct mn_config *b);

static bool early_equal(const struct mn_config *a, const struct mn_config *b)
{
	if (a->train.early_stopping.enabled != b->train.early_stopping.enabled)
		return false;
	for (size_t i = 0; a->train.early_stopping.enabled && i < NEARLY; i++)
		if (!value_equal(&early_keys[i], a, b))
			return false;
	return true;
}

static bool value_equal(const struct key *k, const struct mn_config *a, const struct mn_config *b)
{
	switch (k->type) {
	case KT_INT:
		return get_i64(a, k) == get_i64(b, k);
	case KT_UINT:
		return get_u64(a, k) == get_u64(b, k);
	case KT_DOUBLE:
		return get_dbl(a, k) == get_dbl(b, k);
	case KT_BOOL:
		return get_bool(a, k) == get_bool(b, k);
	case KT_ENUM:
		return get_enum(a, k) == get_enum(b, k);
	case KT_STRING:
		return strncmp(cfield(a, k->offset), cfield(b, k->offset), k->size) == 0;
	case KT_INT_ARRAY: {
		size_t n = get_count(a, k);

		if (n != get_count(b, k))
			return false;
		return memcmp(cfield(a, k->aoffset), cfield(b, k->aoffset),
		              (n < k->amax ? n : k->amax) * sizeof(int64_t)) == 0;
	}
	case KT_INIT_FROM:
		return init_from_equal(a, b);
	case KT_EARLY:
		return early_equal(a, b);
	}
	return true;
}

size_t mn_config_diff(const struct mn_config *a, const struct mn_config *b,
                      void (*fn)(const char *key, bool reloadable, void *arg), void *arg)
{
	size_t n = 0;

	for (size_t i = 0; i < NKEYS; i++) {
		if (value_equal(&keys[i], a, b))
			continue;
		n++;
		if (fn)
			fn(keys[i].path, (keys[i].flags & KF_RELOAD) != 0, arg);
	}
	return n;
}

void mn_config_apply_reloadable(struct mn_config *to, const struct mn_config *from)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (keys[i].flags & KF_RELOAD)
			memcpy(field(to, keys[i].offset), cfield(from, keys[i].offset),
			       keys[i].size);
}

void mn_config_apply_unused(struct mn_config *to, const struct mn_config *from, unsigned user)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (change_for(&keys[i], user) == MN_CONFIG_UNUSED)
			memcpy(field(to, keys[i].offset), cfield(from, keys[i].offset),
			       keys[i].size);
}
