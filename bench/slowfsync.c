/*
 * slowfsync.c - a bench-only LD_PRELOAD shim that makes every fsync and
 * fdatasync take MN_SLOW_FSYNC_MS milliseconds longer (default 200), as on
 * a slow or network disk:
 *
 *   LD_PRELOAD=build-release/bench/libslowfsync.so mnistd --config ...
 *
 * Use it with a build without sanitizers (ASan insists on being the first
 * library loaded).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void slow_down(void)
{
	const char *env = getenv("MN_SLOW_FSYNC_MS");
	long ms = env ? atol(env) : 200;
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	int saved = errno;

	while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	errno = saved;
}

int fsync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");

	slow_down();
	return real ? real(fd) : 0;
}

int fdatasync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");

	slow_down();
	return real ? real(fd) : 0;
}
