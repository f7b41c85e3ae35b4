/*
 * ioerr.c - a fault for the appender tests to inject: preloaded, write(2)
 * to a file whose name ends in MN_IOERR_AT fails with EIO for as long as
 * the file MN_IOERR exists, as on a disk that has gone bad. With
 * MN_IOERR_SHORT=N, a write first gets N bytes through and reports them
 * (a short write) and the write after it fails; ftruncate(2) of the file
 * fails too, so a partial line cannot be cut off again. Built by the test
 * with cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int cut_fd = -1; /* the descriptor whose last write was let through short */

static int faulted(int fd)
{
	const char *flag = getenv("MN_IOERR"), *at = getenv("MN_IOERR_AT");
	char link[64], path[4096];
	ssize_t n;
	size_t s;

	if (!flag || !at || access(flag, F_OK) != 0)
		return 0;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n < 0)
		return 0;
	path[n] = '\0';
	s = strlen(at);
	return (size_t)n >= s && strcmp(path + n - s, at) == 0;
}

ssize_t write(int fd, const void *buf, size_t count)
{
	ssize_t (*real)(int, const void *, size_t) =
	    (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
	const char *shortn = getenv("MN_IOERR_SHORT");
	size_t n = shortn ? (size_t)strtoul(shortn, NULL, 10) : 0;

	if (!faulted(fd))
		return real(fd, buf, count);
	if (n > 0 && n < count && cut_fd != fd) {
		cut_fd = fd;
		return real(fd, buf, n);
	}
	cut_fd = -1;
	errno = EIO;
	return -1;
}

static int trunc_call(const char *name, int fd, off_t length)
{
	int (*real)(int, off_t) = (int (*)(int, off_t))dlsym(RTLD_NEXT, name);

	if (faulted(fd)) {
		errno = EIO;
		return -1;
	}
	return real(fd, length);
}

int ftruncate(int fd, off_t length)
{
	return trunc_call("ftruncate", fd, length);
}

int ftruncate64(int fd, off64_t length)
{
	return trunc_call("ftruncate64", fd, length);
}
