/*
 * gnuplot.h - runs gnuplot as a child process on a libuv loop: the script
 * (data inline, in $name << EOD blocks) goes to its standard input through
 * a pipe, and what it writes to standard output comes back in memory.
 *
 * The pipes are plain pipe(2)s, not the socketpairs libuv makes for
 * UV_CREATE_PIPE, so the evaluator's sandbox (RestrictAddressFamilies=none)
 * lets it run. gnuplot is looked up in PATH and runs with its default
 * settings (-d): a user's ~/.gnuplot or a system gnuplotrc would otherwise
 * change every chart (a "set datafile separator" breaks them all).
 *
 * Every run has a deadline: a gnuplot that has not finished by then (it
 * hangs, or something it started still holds its output open) is killed
 * with SIGKILL and reaped, and the run fails with -ETIMEDOUT.
 */
#ifndef MN_GNUPLOT_H
#define MN_GNUPLOT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The most output kept (bytes); more is an error. */
#define MN_GNUPLOT_OUTPUT_MAX (64 << 20)

/*
 * The default deadline (ms). The charts are of bounded size (report.h), so
 * a healthy gnuplot takes a second or two even on a loaded machine.
 */
#define MN_GNUPLOT_TIMEOUT_MS 60000

/*
 * Called once, on the loop's thread, when gnuplot has exited and its
 * output is complete. status is 0, -ENOENT when gnuplot is not installed,
 * -ETIMEDOUT when it was killed at its deadline, or another -errno (it
 * failed: error holds gnuplot's own message, its last line). out
 * (len bytes, NUL-terminated) is valid only during the call.
 */
typedef void (*mn_gnuplot_cb)(void *arg, int status, const char *out, size_t len,
                              const char *error);

/* A running gnuplot. Opaque. */
struct mn_gnuplot;

/*
 * Starts gnuplot on script (len bytes, copied), to be killed after
 * timeout_ms (> 0). If it cannot start, returns -errno with err filled and
 * cb is never called; -ENOENT means gnuplot is not in PATH. *out (may be
 * NULL) is the handle for mn_gnuplot_cancel().
 */
int mn_gnuplot_start_timeout(uv_loop_t *loop, const char *script, size_t len, uint64_t timeout_ms,
                             mn_gnuplot_cb cb, void *arg, struct mn_gnuplot **out, char *err,
                             size_t errlen);

/* mn_gnuplot_start_timeout() with MN_GNUPLOT_TIMEOUT_MS. */
int mn_gnuplot_start(uv_loop_t *loop, const char *script, size_t len, mn_gnuplot_cb cb, void *arg,
                     struct mn_gnuplot **out, char *err, size_t errlen);

/*
 * Kills a gnuplot that is still running (SIGKILL); cb is not called any
 * more. Its handles close, and its memory is freed, once gnuplot has exited
 * and been reaped, so keep running the loop until then. Accepts NULL; must
 * not be called after cb has run.
 */
void mn_gnuplot_cancel(struct mn_gnuplot *g);

/*
 * Runs gnuplot to completion (or timeout_ms) on a private loop: *out
 * (malloc'd, NUL-terminated, *len bytes) is its standard output. -ENOENT
 * when gnuplot is not installed, -ETIMEDOUT, other -errno with gnuplot's
 * message in err.
 */
int mn_gnuplot_run(const char *script, size_t len, uint64_t timeout_ms, char **out, size_t *outlen,
                   char *err, size_t errlen);

#endif
