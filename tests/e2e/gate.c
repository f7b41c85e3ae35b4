/*
 * gate.c - preloaded into mnistd by test_control.py: holds the process at a
 * chosen point for as long as a gate file exists, so that a test can act
 * while the daemon is provably there (in its setup, in its final checkpoint)
 * instead of hoping to be quick enough. MN_GATE names the gate file;
 * MN_GATE_AT says where: "fsync" (every fsync), "open:SUFFIX" (an open of
 * a name ending in SUFFIX) or "rename:SUFFIX" (a rename to a name ending in
 * SUFFIX: a file published atomically is then complete under its temporary
 * name). On arrival it creates "<MN_GATE>.held", which
 * the test waits for; removing the gate lets the process go on. Built by the
 * test with cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*open_fn)(const char *, int, ...);

static void hold(void)
{
	const char *gate = getenv("MN_GATE");
	char held[4096];
	open_fn real_open = (open_fn)dlsym(RTLD_NEXT, "open");
	struct timespec tick = {0, 10 * 1000 * 1000};
	int fd;

	if (!gate || access(gate, F_OK) != 0)
		return;
	snprintf(held, sizeof(held), "%s.held", gate);
	fd = real_open(held, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0)
		close(fd);
	while (access(gate, F_OK) == 0)
		nanosleep(&tick, NULL);
}

static int at(const char *what, const char *path)
{
	const char *where = getenv("MN_GATE_AT");
	size_t n, s;

	if (!where)
		return 0;
	if (!path)
		return strcmp(where, what) == 0;
	n = strlen(what);
	if (strncmp(where, what, n) != 0 || where[n] != ':')
		return 0;
	where += n + 1;
	n = strlen(path);
	s = strlen(where);
	return n >= s && strcmp(path + n - s, where) == 0;
}

int fsync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");

	if (at("fsync", NULL))
		hold();
	return real(fd);
}

#define WRAP(name)                                                                                 \
	int name(const char *path, int flags, ...)                                                 \
	{                                                                                          \
		open_fn real = (open_fn)dlsym(RTLD_NEXT, #name);                                   \
		mode_t mode = 0;                                                                   \
		va_list ap;                                                                        \
                                                                                                   \
		va_start(ap, flags);                                                               \
		if (flags & (O_CREAT | O_TMPFILE))                                                 \
			mode = va_arg(ap, mode_t);                                                 \
		va_end(ap);                                                                        \
		if (at("open", path))                                                              \
			hold();                                                                    \
		return real(path, flags, mode);                                                    \
	}

WRAP(open)
WRAP(open64)

int rename(const char *from, const char *to)
{
	int (*real)(const char *, const char *) =
	    (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");

	if (at("rename", to))
		hold();
	return real(from, to);
}
