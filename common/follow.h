/*
 * follow.h - following a growing file of lines (JSON lines such as the
 * evaluator's eval.metrics_file) on a libuv loop, the way `tail -F` does.
 *
 * Every complete line ("...\n") is delivered once, in order, from the start
 * of the file; a partial last line is read again, from its start, until its
 * newline arrives (so a partial line that its writer cut off and wrote the
 * next line over, as jsonl.h does after a short write, is never glued to
 * that line). The follower notices new data through filesystem events on the file's
 * directory (uv_fs_event, inotify on Linux) and checks again every
 * poll_interval_ms besides, so a missed event costs at most one interval.
 * Where events cannot be trusted (mode MN_WATCH_POLL, or MN_WATCH_AUTO on a
 * network or FUSE filesystem, see mn_fs_remote_name()) or are unavailable, it
 * polls only.
 *
 * It copes with the file not existing yet (or its directory), with the file
 * being removed, truncated (copytruncate), or replaced by another file under
 * its name (logrotate's rename and create, an atomic rewrite): the rest of
 * the old file is read first, then on_reset is called and lines come again
 * from the start of the new file. A partial line left at such a switch is
 * dropped. Something other than a regular file under the name (a FIFO, a
 * directory) is never opened for reading in a way that could block: it is
 * logged once and waited out. A line longer than max_line bytes is skipped
 * (logged); the follower carries on at the next newline.
 *
 * All functions and callbacks run on the loop's thread. Reading is bounded
 * per loop turn, so a huge file does not starve the loop.
 */
#ifndef MN_FOLLOW_H
#define MN_FOLLOW_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

/* Default and upper bound of max_line. */
#define MN_FOLLOW_LINE_DEFAULT 4096
#define MN_FOLLOW_LINE_MAX     (1 << 20)

struct mn_follow_params {
	const char *path;          /* the file to follow; copied */
	enum mn_watch_mode mode;   /* auto, events or poll (eval.watch's values) */
	uint64_t poll_interval_ms; /* how often to check without events; > 0 */
	size_t max_line;           /* longest line delivered, without '\n'; 0 = the default */
	/*
	 * One complete line, without its '\n' and NUL-terminated (len excludes
	 * the NUL). The text is only valid during the call. It may contain NUL
	 * bytes: len is the truth.
	 */
	void (*on_line)(const char *line, size_t len, void *arg);
	/*
	 * The file was truncated or replaced (why says which): the lines that
	 * follow come from the start of the new content. May be NULL.
	 */
	void (*on_reset)(const char *why, void *arg);
	void *arg;
};

/* The follower. Opaque. */
struct mn_follow;

/*
 * Starts following. The first read happens on the next loop turn, so no
 * callback runs before the caller has *out. Fails only on bad parameters,
 * allocation or loop errors; a missing file is not an error.
 */
int mn_follow_start(uv_loop_t *loop, const struct mn_follow_params *p, struct mn_follow **out,
                    char *err, size_t errlen);

/* Looks at the file now (as if an event had come). Harmless at any time. */
void mn_follow_check(struct mn_follow *f);

/*
 * Whether the follower currently gets filesystem events (1) or only polls
 * (0). For logs and tests.
 */
int mn_follow_uses_events(const struct mn_follow *f);

/*
 * Stops and closes everything; no callback runs after this returns. Memory
 * is freed once libuv has closed the handles, so keep running the loop.
 * Accepts NULL.
 */
void mn_follow_close(struct mn_follow *f);

#endif
