/*
 * gnuplot.h - runs gnuplot as a child process on a libuv loop: the script
 * (data inline, in $name << EOD blocks) goes to its standard input through
 * a pipe, and what it writes to standard output comes back in memory.
 *
 * The pipes are plain pipe(2)s, not the socketpairs libuv makes for
 * UV_CREATE_PIPE, so the evaluator's sandbox (RestrictAddressFamilies=none)
 * lets it run. gnuplot is looked up in PATH.
 */
#ifndef MN_GNUPLOT_H
#define MN_GNUPLOT_H

#include <stddef.h>
#include <uv.h>

/* The most output kept (bytes); more is an error. */
#define MN_GNUPLOT_OUTPUT_MAX (64 << 20)

/*
 * Called once, on the loop's thread, when gnuplot has exited and its
 * output is complete. status is 0, -ENOENT when gnuplot is not installed,
 * or another -errno (it failed: error holds gnuplot's own message). out
 * (len bytes, NUL-terminated) is valid only during the call.
 */
typedef void (*mn_gnuplot_cb)(void *arg, int status, const char *out, size_t len,
                              const char *error);

/* A running gnuplot. Opaque. */
struct mn_gnuplot;

/*
 * Starts gnuplot on script (len bytes, copied). If it cannot start, returns
 * -errno with err filled and cb is never called; -ENOENT means gnuplot is
 * not in PATH. *out (may be NULL) is the handle for mn_gnuplot_cancel().
 */
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
 * Runs gnuplot to completion on a private loop: *out (malloc'd, NUL-
 * terminated, *len bytes) is its standard output. -ENOENT when gnuplot is
 * not installed, other -errno with gnuplot's message in err.
 */
int mn_gnuplot_run(const char *script, size_t len, char **out, size_t *outlen, char *err,
                   size_t errlen);

#endif
