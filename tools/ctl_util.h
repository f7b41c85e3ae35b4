/*
 * ctl_util.h - helpers shared by mnistctl's offline tools: messages, option
 * errors, JSON output, configuration, paths and tensor values.
 */
#ifndef CTL_UTIL_H
#define CTL_UTIL_H

#include <cJSON.h>
#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/uio.h>

#include "ckpt.h"
#include "config.h"
#include "mlp.h"
#include "ctl.h"
#include "util.h"

#define CTL_PATH_MAX 4096

/*
 * Writes s to f with what a terminal would act on made visible (util.h's
 * mn_escape): for every string that comes from a file (tensor names,
 * metadata values, names in a directory, messages quoting them).
 */
void ctl_fputs_escaped(FILE *f, const char *s);

/*
 * Prints "mnistctl CMD: message" and a newline on standard error; the
 * message is escaped as by ctl_fputs_escaped(), since it may quote a file.
 */
void ctl_errorf(const char *cmd, const char *fmt, ...) MN_PRINTF(2, 3);

/*
 * Reports a bad command line ("mnistctl CMD: message" and a pointer to
 * CMD --help) and returns MN_EX_USAGE. The message is escaped as by
 * ctl_errorf(): the arguments it quotes may be file names.
 */
int ctl_usage_error(const char *cmd, const char *fmt, ...) MN_PRINTF(2, 3);

/*
 * Describes what getopt_long() (with opterr = 0 and a ':' leading the short
 * options) rejected, as "unknown option -x", "option --output needs a value"
 * or "option --json takes no value": c is its return value ('?' or ':'),
 * argv the command's arguments and opts the long options it was given.
 * getopt's optind does not always point past the offending argument (not
 * inside a cluster like -jx), so the option is named from optopt and opts.
 */
void ctl_option_message(int c, char **argv, const struct option *opts, char *buf, size_t len);

/* Reports ctl_option_message() as a usage error of cmd; returns MN_EX_USAGE. */
int ctl_option_error(const char *cmd, int c, char **argv, const struct option *opts);

/*
 * JSON output. The builders below never fail outright: an allocation
 * failure is remembered, and ctl_json_print() then reports it instead of
 * printing a partial document.
 */

/* Adds item to obj under key (to an array when key is NULL); returns item. */
cJSON *ctl_json_add(cJSON *obj, const char *key, cJSON *item);

/*
 * Adds a string member; a NULL value becomes null. A value that is not
 * well-formed UTF-8 (a file name, say) is written as ctl_fputs_escaped()
 * shows it, so the document stays JSON.
 */
void ctl_json_str(cJSON *obj, const char *key, const char *value);

/* Adds an integer member as exact decimal text (cJSON numbers are doubles). */
void ctl_json_int(cJSON *obj, const char *key, int64_t value);

/* Adds a number member; NaN and infinities become null. */
void ctl_json_num(cJSON *obj, const char *key, double value);

/* Adds a boolean member. */
void ctl_json_bool(cJSON *obj, const char *key, bool value);

/*
 * Prints item as formatted JSON and a newline on standard output, then
 * frees it. Returns -ENOMEM (with a message) if any builder failed.
 */
int ctl_json_print(cJSON *item);

/* ctl_json_print() to f. */
int ctl_json_fprint(FILE *f, cJSON *item);

/*
 * Loads the configuration named by the global --config option into cfg.
 * When tolerate_missing is set and the default file does not exist, cfg
 * keeps its defaults (an explicitly named file must exist). Returns 0 or a
 * negative errno with a message in err.
 */
int ctl_load_config(const struct ctl_globals *g, bool tolerate_missing, struct mn_config *cfg,
                    char *err, size_t errlen);

/*
 * Checks a --prefix given to cmd by checkpoint.prefix's rule: a plain file
 * name (not empty, no '/', not starting with '.') short enough for
 * "<prefix>-<step>.safetensors" to be a checkpoint's name. Returns MN_EX_OK,
 * or reports a usage error and returns MN_EX_USAGE.
 */
int ctl_check_prefix(const char *cmd, const char *prefix);

/*
 * Splits path, a file about to be written, into its directory (written to
 * dir, "." when there is none) and returns its last component, or NULL
 * (with a message) if path names no file (empty or ending in '/'), its
 * directory does not exist, or it cannot be looked up (a name or path too
 * long, a directory that cannot be searched): the message then names the
 * path or directory the user gave rather than the temporary file the atomic
 * writer would fail to create after all the work.
 * Also refuses a path that exists and is not a regular file (a device, a
 * FIFO, a symbolic link, a directory), which the atomic writer would
 * replace; "-" (standard output) is returned as it is, with dir "".
 */
const char *ctl_output_path(const char *path, char *dir, size_t dirlen, char *err, size_t errlen);

/*
 * Publishes an offline command's output file "<dir>/<base>" (as split by
 * ctl_output_path; for "-", writes to standard output instead) with
 * mn_write_atomic_opts() and mode 0644 (a
 * replaced file keeps its own). With noreplace (no --force), an existing
 * file is never replaced, not even one created while the output is
 * written: -EEXIST. Should SIGHUP, SIGINT or SIGTERM arrive while it is
 * written, the temporary file is removed and the signal then kills the
 * process as it would have (signals that are ignored stay ignored).
 * Returns 0 or a negative errno with a message in err.
 */
int ctl_write_output(const char *dir, const char *base, const struct iovec *iov, int iovcnt,
                     bool noreplace, char *err, size_t errlen);

/*
 * Refuses (-EEXIST, with a message naming src as what, e.g. "the checkpoint")
 * an output path out that is the file src a command reads (the same file
 * under any name, a hard link included): writing it would replace a
 * checkpoint, training state and all, or a run's history, with what was made
 * of it. "-", a NULL src and an out that does not exist pass.
 */
int ctl_check_not_source(const char *out, const char *src, const char *what, char *err,
                         size_t errlen);

/*
 * Resolves CKPT|DIR: a file is used as it is; for a directory the best
 * checkpoint its best.json lists that still exists (the evaluator's
 * eval.best_dir, whose listed files vanish when it replaces its best; an
 * invalid best.json is an error), else the file named by its checkpoint.json (unless that file no
 * longer exists: readers tolerate a listed file vanishing), or else its highest-step
 * "<prefix>-<step>.safetensors", where prefix, when NULL, is
 * checkpoint.prefix from the configuration (see ctl_load_config; only read
 * when needed). The path is written to out. A file found in the directory
 * that is a symbolic link is refused (-ELOOP) unless the configuration sets
 * checkpoint.follow_symlinks; one named directly is the user's choice.
 */
int ctl_resolve_checkpoint(const char *path, const char *prefix, const struct ctl_globals *g,
                           char *out, size_t len, char *err, size_t errlen);

/*
 * mn_model_load_params() for a command that runs or serves the model
 * (predict, freeze, export): a NaN or an infinity among the values used is
 * refused, naming the file, the tensor and the element, since mlp.c would
 * quietly compute around it (its ReLU turns a NaN into 0) and no other
 * runtime does.
 */
int ctl_load_model(const struct mn_ckpt *c, bool use_ema, struct mn_arch *arch, float **params,
                   char *err, size_t errlen);

/* The tensor called name, or NULL with the reader's message listing the names there are. */
const struct mn_tensor *ctl_find_tensor(const struct mn_ckpt *c, const char *name, char *err,
                                        size_t errlen);

/* Whether a dtype holds integers (or booleans) rather than floating point. */
bool ctl_dtype_is_int(enum mn_dtype d);

/* Element i of t as a double (integers beyond 2^53 are rounded). */
double ctl_tensor_double(const struct mn_tensor *t, uint64_t i);

/*
 * Formats element i of t exactly as text: integers in decimal, F32, F16 and
 * BF16 with 9 significant digits, F64 with 17, BOOL as true/false.
 */
void ctl_tensor_format(const struct mn_tensor *t, uint64_t i, char *buf, size_t len);

#endif
