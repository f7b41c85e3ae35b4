/*
 * config.h - the configuration file: schema, defaults, strict loading, and
 * the difference between two configurations for a reload.
 *
 * The schema is one table in config.c (key path, type, range, default,
 * reloadable, the programs that use it); config/mnistd.json holds every key with its default and
 * config/README.md documents each. Loading is all or nothing: unknown keys,
 * wrong types and out-of-range values are errors whose message names the key
 * path and what is allowed, e.g.
 *   /etc/mnistd/mnistd.json: train.batch_size: must be an integer in [1, 65536], got 0
 * Keys missing from the file take their defaults.
 */
#ifndef MN_CONFIG_H
#define MN_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "mlp.h"

#define MN_CONFIG_PATH_MAX 1024
#define MN_CONFIG_NAME_MAX 128
#define MN_CONFIG_MAP_MAX  64
#define MN_CONFIG_FILE_MAX (1 << 20)

enum mn_watch_mode { MN_WATCH_AUTO, MN_WATCH_EVENTS, MN_WATCH_POLL };

/* One "<name in this model>": "<name in that file>" pair of init_from.map. */
struct mn_config_rename {
	char to[MN_CONFIG_NAME_MAX];
	char from[MN_CONFIG_NAME_MAX];
};

/* The whole configuration. A value type: copy it freely. */
struct mn_config {
	struct {
		char dir[MN_CONFIG_PATH_MAX]; /* IDX directory */
		int64_t validation_size;      /* first N training images validate */
	} data;
	struct {
		size_t nhidden;
		int64_t hidden[MN_MAX_HIDDEN]; /* units per hidden layer */
		double init_stddev;            /* truncated-normal stddev */
		uint64_t seed;                 /* RNG seed */
	} model;
	struct {
		int64_t batch_size;
		double learning_rate;
		double learning_rate_decay;
		int64_t decay_steps; /* 0: one epoch = train images / batch_size */
		double l2;
		double ema_decay;
		int64_t max_steps;
		int64_t threads;                       /* BLAS threads, 0: one per CPU */
		char metrics_file[MN_CONFIG_PATH_MAX]; /* history, JSON lines; "" when unset */
		struct {
			bool enabled;                          /* false: null, off */
			char metrics_file[MN_CONFIG_PATH_MAX]; /* the evaluator's metrics */
			int64_t patience; /* evaluations without improvement before stopping */
			double min_delta; /* accuracy gain that counts as an improvement */
		} early_stopping;
		bool stop_on_nan; /* stop, without a checkpoint, on a non-finite loss */
	} train;
	struct {
		char dir[MN_CONFIG_PATH_MAX];
		char prefix[MN_CONFIG_NAME_MAX];
		int64_t every_steps;
		int64_t max_to_keep; /* 0 keeps all */
		bool write_all;      /* training waits rather than skip a scheduled checkpoint */
		/* stop after this many failed checkpoints in a row; 0 never */
		int64_t max_failures;
		bool follow_symlinks; /* read checkpoints that are symbolic links */
		char init_from_file[MN_CONFIG_PATH_MAX]; /* "" when unset */
		size_t init_from_nmap;
		struct mn_config_rename init_from_map[MN_CONFIG_MAP_MAX];
	} checkpoint;
	struct {
		char socket[MN_CONFIG_PATH_MAX];
	} control;
	struct {
		bool use_ema;
		enum mn_watch_mode watch;
		int64_t poll_interval_ms;              /* poll mode's interval */
		char metrics_file[MN_CONFIG_PATH_MAX]; /* "" when unset */
		char textfile[MN_CONFIG_PATH_MAX];     /* Prometheus textfile, "" when off */
		char report_html[MN_CONFIG_PATH_MAX];  /* the curves page; "" when unset */
		int64_t keep_best;                     /* best checkpoints kept, 0: off */
		char best_dir[MN_CONFIG_PATH_MAX];     /* where they are kept */
	} eval;
	struct {
		enum mn_log_level level;
		enum mn_log_format format;
		char file[MN_CONFIG_PATH_MAX]; /* "" = standard output */
	} log;
	struct {
		char textfile[MN_CONFIG_PATH_MAX]; /* the trainer's Prometheus textfile, "" when off
		                                    */
		int64_t interval_ms;               /* how often the trainer rewrites it */
		char run[MN_CONFIG_NAME_MAX]; /* label run="..." on both files' samples, "" none */
	} metrics;
};

/* Fills c with every default. */
void mn_config_defaults(struct mn_config *c);

/* Parses and validates JSON text (len bytes) over the defaults. name starts messages. */
int mn_config_parse(const char *json, size_t len, const char *name, struct mn_config *c, char *err,
                    size_t errlen);

/* Reads and parses a file. On failure c is unchanged. */
int mn_config_load(const char *path, struct mn_config *c, char *err, size_t errlen);

/*
 * Whether s may be a checkpoint prefix: no '/', not starting with '.' and no
 * control characters (the length limit is the caller's).
 */
bool mn_config_plain_name(const char *s);

/*
 * The configuration as compact JSON with every key (for checkpoint
 * metadata). Returns a malloc'd string or NULL on allocation failure.
 */
char *mn_config_to_json(const struct mn_config *c);

/* The effective decay_steps: train.decay_steps, or train_count / batch_size when 0 (at least 1). */
int64_t mn_config_decay_steps(const struct mn_config *c, size_t train_count);

/* Architecture from model.hidden, with the given input and output sizes. */
void mn_config_arch(const struct mn_config *c, size_t input, size_t output, struct mn_arch *a);

/* Whether a key path ("train.learning_rate") can change without a restart. */
bool mn_config_reloadable(const char *key);

/*
 * The programs that read a key, as a set of these bits. The file is shared,
 * so a program's reload speaks only of the keys it uses (mn_config_change).
 */
enum mn_config_user {
	MN_CONFIG_TRAINER = 1u << 0,   /* mnistd */
	MN_CONFIG_EVALUATOR = 1u << 1, /* mnist-eval */
	MN_CONFIG_CTL = 1u << 2,       /* mnistctl (its defaults, and what it reads) */
};

/* The programs that read a key path, MN_CONFIG_* bits; 0 for an unknown key. */
unsigned mn_config_users(const char *key);

/* What a changed key means to the program (a MN_CONFIG_* bit) that reloads. */
enum mn_config_change {
	MN_CONFIG_APPLY,   /* it uses the key, and takes the new value now */
	MN_CONFIG_RESTART, /* it uses the key, but only a restart takes the new value */
	MN_CONFIG_UNUSED,  /* it does not use the key: the change is nothing to it */
};

/* How a change of key matters to user (one MN_CONFIG_* bit); MN_CONFIG_UNUSED for an unknown key.
 */
enum mn_config_change mn_config_change_for(const char *key, unsigned user);

/*
 * Compares two configurations key by key. For each key whose value differs,
 * calls fn(key, reloadable, arg) with the key path, in schema order.
 * Returns the number of differing keys.
 */
size_t mn_config_diff(const struct mn_config *a, const struct mn_config *b,
                      void (*fn)(const char *key, bool reloadable, void *arg), void *arg);

/*
 * Copies the reloadable keys of from into to, leaving the others as they
 * are. After a reload the daemon runs on the result.
 */
void mn_config_apply_reloadable(struct mn_config *to, const struct mn_config *from);

/*
 * Copies from into to the keys user (one MN_CONFIG_* bit) does not use, so
 * that the next diff shows only what changed since: such a change is
 * reported once, not at every reload as a key waiting for a restart is.
 */
void mn_config_apply_unused(struct mn_config *to, const struct mn_config *from, unsigned user);

#endif
