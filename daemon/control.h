/*
 * control.h - the daemon's control socket, served on the libuv loop.
 *
 * The protocol is proto.h's: newline-delimited JSON requests, answered in
 * order per connection. A request that cannot be answered at once (save,
 * pause, resume wait for the training thread's step boundary) holds back the
 * requests after it on the same connection, and that connection's reading,
 * until it is answered; other connections go on being served. Nothing here
 * blocks the loop: slow, idle, half-closed or vanished clients cost a slot
 * and a little memory, and are dropped when they exceed the bounds below.
 *
 * Fairness: a connection must complete a request within 5 seconds of
 * opening, and each later request within 5 seconds of its first byte, or it
 * is told so and closed; so idle and byte-a-second clients hold a slot for
 * seconds, not forever. When every slot is taken, a new connection closes
 * the oldest one that has never sent a request (it is told why) rather than
 * being refused, so an operator's status gets through however many silent
 * clients there are. Commands that change state (reload, save, pause,
 * resume) are logged at info level with the peer's uid and pid
 * (SO_PEERCRED).
 *
 * All functions run on the loop thread.
 */
#ifndef MND_CONTROL_H
#define MND_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proto.h"
#include "early.h"
#include "worker.h"

/*
 * Reloads the configuration file, for the "reload" command. Fills applied
 * and restart with the changed key paths the daemon uses, ignored with
 * those it does not (the evaluator's), and returns 0, or returns a
 * negative errno with the reason in err; then nothing changed.
 */
typedef int (*mnd_control_reload_fn)(void *arg, struct mn_proto_keys *applied,
                                     struct mn_proto_keys *restart, struct mn_proto_keys *ignored,
                                     char *err, size_t errlen);

struct mnd_control_params {
	/* Path of the socket, at most 107 bytes. */
	const char *path;
	/* Called for "reload", with arg. */
	mnd_control_reload_fn reload;
	void *arg;
	/*
	 * Connections served at once. 0: 64. When all are taken, a new one
	 * closes the oldest that never sent a request (telling it why), or is
	 * answered with an error and closed if every one has spoken.
	 */
	size_t max_clients;
	/* Longest request line; a longer one is answered with an error, then closed. 0: 64 KiB. */
	size_t max_line;
	/* Response bytes queued for a client that does not read before it is dropped. 0: 1 MiB. */
	size_t max_output;
	/*
	 * A connection without a request for this long is closed. 0: never.
	 * Checked once a second, so it takes effect up to a second late.
	 */
	uint64_t idle_timeout_ms;
};

struct mnd_control;

/*
 * Creates the socket with mode 0660 (whatever the umask) and starts
 * listening on loop. A socket file nobody listens on (left by a crash) is
 * replaced; if a process answers on it, this fails with -EADDRINUSE and a
 * message saying so, and the file is left alone. A path that exists and is
 * not a socket is never removed (-EEXIST).
 */
int mnd_control_start(uv_loop_t *loop, const struct mnd_control_params *p, struct mnd_control **out,
                      char *err, size_t errlen);

/*
 * Gives the server the worker that commands act on. Until it is set,
 * commands other than reload are answered with an error. w must outlive
 * the server or be replaced by NULL before it is freed.
 */
void mnd_control_set_worker(struct mnd_control *c, struct mnd_worker *w);

/* Gives the server the early stopper whose state status reports (NULL: off). */
void mnd_control_set_early(struct mnd_control *c, struct mnd_early *e);

/* Marks the daemon as stopping: status reports "state":"stopping". */
void mnd_control_set_stopping(struct mnd_control *c);

/*
 * Stops listening, closes every connection (queued answers are dropped)
 * and removes the socket file if it is still the one this server created.
 * The memory is released once libuv has closed the handles: run the loop
 * after this. NULL is allowed.
 */
void mnd_control_close(struct mnd_control *c);

#endif
