/*
 * notify.h - the systemd notify protocol (sd_notify(3)), spoken directly.
 *
 * A service started with Type=notify (or notify-reload) finds the path of
 * the service manager's datagram socket in NOTIFY_SOCKET: a file system path
 * ("/run/systemd/notify") or, with a leading '@', a Linux abstract socket
 * name. Each message is one datagram of newline-separated VAR=value
 * assignments ("READY=1", "STATUS=step 1200/30000"). Without NOTIFY_SOCKET
 * nothing is sent and nothing fails, so the daemon runs the same under a
 * shell. Delivery is best effort: callers log failures and carry on.
 */
#ifndef MN_NOTIFY_H
#define MN_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Whether NOTIFY_SOCKET is set, i.e. whether a service manager is listening. */
bool mn_notify_enabled(void);

/*
 * Sends state (one or more "VAR=value" lines) as one datagram to the socket
 * named by NOTIFY_SOCKET. Returns 1 if sent, 0 if NOTIFY_SOCKET is unset,
 * or a negative errno with a message in err: -EINVAL for an unusable
 * address (not absolute, not '@', too long), or the error of socket/sendmsg.
 * Never blocks: a full socket buffer is -EAGAIN.
 */
int mn_notify(const char *state, char *err, size_t errlen);

/* As mn_notify, with the state formatted printf-style (at most 1 KiB). */
int mn_notifyf(char *err, size_t errlen, const char *fmt, ...) MN_PRINTF(3, 4);

/*
 * The watchdog interval in microseconds that the service manager asked for
 * through WATCHDOG_USEC, or 0 when there is none: unset, not a positive
 * decimal number, or WATCHDOG_PID set to a process other than this one.
 * launched: this process works for the service on behalf of its parent, a
 * launcher that is the service's main process (rank 0 under mpirun), so a
 * WATCHDOG_PID naming the parent is this process's to feed too.
 * Send "WATCHDOG=1" at about half this interval.
 */
uint64_t mn_notify_watchdog_usec(bool launched);

#endif
