/* notify.c - see notify.h. */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

bool mn_notify_enabled(void)
{
	const char *p = getenv("NOTIFY_SOCKET");

	return p && *p;
}

/* Fills sa from NOTIFY_SOCKET; returns the address length or -EINVAL. */
static int notify_address(const char *path, struct sockaddr_un *sa, char *err, size_t errlen)
{
	size_t n = strlen(path);

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (path[0] != '/' && path[0] != '@') {
		mn_errf(err, errlen, "NOTIFY_SOCKET=%s: not an absolute path or '@' name", path);
		return -EINVAL;
	}
	/* Abstract names are not NUL-terminated; paths need room for the NUL. */
	if (n > sizeof(sa->sun_path) - (path[0] == '/' ? 1 : 0) || n < 2) {
		mn_errf(err, errlen, "NOTIFY_SOCKET=%s: bad length for a Unix socket address",
		        path);
		return -EINVAL;
	}
	memcpy(sa->sun_path, path, n);
	if (path[0] == '@')
		sa->sun_path[0] = '\0';
	return (int)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/' ? 1 : 0));
}

int mn_notify(const char *state, char *err, size_t errlen)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	struct iovec iov = {.iov_base = (void *)state, .iov_len = strlen(state)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	int fd, len, rc = 1;

	if (!path || !*path)
		return 0;
	len = notify_address(path, &sa, err, errlen);
	if (len < 0)
		return len;
	msg.msg_name = &sa;
	msg.msg_namelen = (socklen_t)len;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		mn_errf(err, errlen, "NOTIFY_SOCKET: socket: %s", strerror(errno));
		return rc;
	}
	/* The event loop calls this: a stalled service manager must not stall the daemon. */
	if (sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "NOTIFY_SOCKET=%s: %s", path, strerror(errno));
	}
	close(fd);
	return rc;
}

int mn_notifyf(char *err, size_t errlen, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf)) {
		mn_errf(err, errlen, "notify message longer than %zu bytes", sizeof(buf) - 1);
		return -EMSGSIZE;
	}
	return mn_notify(buf, err, errlen);
}

/* Parses a positive decimal integer that fills the whole string. */
static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v == 0)
		return false;
	*out = v;
	return true;
}

uint64_t mn_notify_watchdog_usec(bool launched)
{
	const char *pid_s = getenv("WATCHDOG_PID");
	uint64_t usec, pid;

	if (!parse_u64(getenv("WATCHDOG_USEC"), &usec))
		return 0;
	/*
	 * The variables are inherited: a child of the service must not feed its
	 * watchdog, unless the service's main process is only the launcher that
	 * runs this one (mpirun, whose rank 0 does the service's work).
	 */
	if (pid_s && *pid_s &&
	    (!parse_u64(pid_s, &pid) ||
	     (pid != (uint64_t)getpid() && !(launched && pid == (uint64_t)getppid()))))
		return 0;
	return usec;
}
