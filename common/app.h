/*
 * app.h - the scaffolding mnistd and mnist-eval share: starting from a
 * configuration file and a log, the event loop and its signals, loading the
 * validation split, reloading the configuration, and closing everything.
 *
 * Unlike the rest of libmnistd, the functions that decide how a program
 * ends return an exit status (MN_EX_*, util.h), not 0 or -errno; their
 * descriptions say so, and callers keep such a value in a variable called
 * ex, never rc. The messages are printed or logged here, so the program
 * only has to return the status.
 */
#ifndef MN_APP_H
#define MN_APP_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "idx.h"

/*
 * A program's shared state. Set name and config_path, zero the rest, then
 * call mn_app_start(). The program keeps its own state beside this one and
 * reaches it through the data pointer given to mn_app_loop_start().
 */
struct mn_app {
	const char *name;        /* program name for messages on standard error: "mnistd" */
	const char *config_path; /* the configuration file (--config) */
	unsigned user; /* MN_CONFIG_TRAINER or MN_CONFIG_EVALUATOR: the keys a reload is about */
	struct mn_config cfg; /* the running configuration */
	uv_loop_t loop;
	bool loop_ready;    /* loop initialised: mn_app_loop_close() has work to do */
	bool signals_ready; /* the three signal handles below are running */
	uv_signal_t sig_term, sig_int, sig_hup;
	struct mn_dataset *data; /* the training file, once mn_app_load_split() loaded it */
};

struct mn_app_start_params {
	/* --check-config: validate, print that the file is valid and end. */
	bool check_only;
	/*
	 * The program runs as a command (mnist-eval --once): its lines go to
	 * standard output, not to log.file, at level info or more verbose.
	 */
	bool terminal;
};

/*
 * Everything before the event loop: ignores SIGPIPE (a dead journald reader
 * must not kill a service), holds SIGHUP, SIGTERM and SIGINT back for
 * mn_app_loop_start() (a reload that comes this early must not kill a
 * service, nor a stop end it otherwise than cleanly), loads a->config_path
 * over the defaults, opens the log and sets the BLAS thread count to
 * train.threads. Returns true to go on.
 * Returns false when the program must end now with *ex: MN_EX_OK after
 * --check-config said the file is valid, MN_EX_CONFIG after printing
 * "<name>: <what is wrong>" on standard error.
 */
bool mn_app_start(struct mn_app *a, const struct mn_app_start_params *p, int *ex);

/*
 * Initialises a->loop and, unless signals is false, starts SIGTERM and
 * SIGINT with on_stop and SIGHUP with on_hup, each handle's data set to
 * data. A signal held back since mn_app_start() reaches its callback once
 * the loop runs; without signals (a command), the three get their default
 * actions back, and one held back ends the program now. Returns 0, or a
 * negative errno after logging what failed.
 */
int mn_app_loop_start(struct mn_app *a, bool signals, uv_signal_cb on_stop, uv_signal_cb on_hup,
                      void *data);

/*
 * Keeps the signals caught (a second SIGTERM must not kill the program)
 * without letting them keep the loop alive: for a program that is stopping.
 */
void mn_app_signals_unref(struct mn_app *a);

/*
 * Loads the training file of data.dir and splits it: validation is the first
 * data.validation_size images, train the rest (either pointer may be NULL).
 * what names the data in the error message ("training", "validation").
 * Returns an exit status, after logging the reason: MN_EX_OK, MN_EX_NOINPUT
 * when the files do not exist, MN_EX_DATAERR when they are not valid IDX
 * files (or not regular files) or a label is beyond the MN_CLASSES classes,
 * MN_EX_CONFIG when data.validation_size does not fit the file,
 * MN_EX_FAILURE for any other error (out of memory, a read error). The data set is kept
 * in a->data and freed by mn_app_end().
 */
int mn_app_load_split(struct mn_app *a, const char *what, struct mn_view *train,
                      struct mn_view *validation);

/* Room for every key of the configuration schema in a list of struct mn_app_reloaded. */
#define MN_APP_MAX_KEYS 64

/*
 * The keys a reload found changed, by what they mean to the program
 * (a->user): keys[MN_CONFIG_APPLY] are applied, keys[MN_CONFIG_RESTART]
 * wait for a restart, keys[MN_CONFIG_UNUSED] belong to other programs.
 * The strings are the schema's, in its order.
 */
struct mn_app_reloaded {
	size_t n[3];
	const char *keys[3][MN_APP_MAX_KEYS];
};

/*
 * Re-reads a->config_path for a reload. The file is validated in full
 * first: if it is invalid, the rejection is logged, nothing changes and a
 * negative errno is returned with the message in err. Otherwise r lists
 * the keys that differ from a->cfg, the reloadable keys are applied to
 * a->cfg, the keys the program does not use are copied there too (so the
 * next reload lists only what changed since), next holds the whole new
 * file and 0 is returned. The program applies r's keys, then calls
 * mn_app_log_reloaded().
 */
int mn_app_reload_config(struct mn_app *a, struct mn_app_reloaded *r, struct mn_config *next,
                         char *err, size_t errlen);

/*
 * Logs "configuration reloaded" with the file and the three lists of r
 * (applied, restart_required, ignored): a warning if a key waits for a
 * restart, since the operator asked for a change that did not happen.
 */
void mn_app_log_reloaded(const struct mn_app *a, const struct mn_app_reloaded *r);

/*
 * What a SIGHUP's reopening of files (for logrotate) came to: the key
 * paths of the files reopened, and of those that could not be and stay in
 * use under their old names. Zero it, reopen and note each file, then log.
 */
struct mn_app_reopen {
	char done[256], failed[256];
};

/* Reopens log.file, if the log goes to a file, and notes it in r. */
void mn_app_reopen_log_file(const struct mn_app *a, struct mn_app_reopen *r);

/*
 * Notes the reopening of the file of key: rc is 0, or a negative errno
 * whose message err is logged as a warning.
 */
void mn_app_reopen_note(struct mn_app_reopen *r, const char *key, int rc, const char *err);

/*
 * Logs one line for the noted files, nothing if there were none: "reopened"
 * with files=, or, if any failed, a warning "reopen failed, keeping the old
 * descriptor" with failed= and reopened=. It never claims a reopen that failed.
 */
void mn_app_reopen_log(const struct mn_app_reopen *r);

/*
 * Closes every handle still open on the loop, runs it until they are
 * closed and closes it; a loop that will not close is logged. The caller
 * first stops what owns handles with close callbacks of its own, so they
 * run here. A child process's handle is not closed but waited for: its
 * owner has killed the child (mn_gnuplot_cancel) and closes it on exit. Signals it was catching are
 * ignored from then on: the program is ending. Does nothing if the loop was never initialised.
 */
void mn_app_loop_close(struct mn_app *a);

/* Frees the data set and closes the log. */
void mn_app_end(struct mn_app *a);

#endif
