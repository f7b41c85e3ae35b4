/*
 * emfile.c - a fault for test_trainer.py to inject into mnistd: preloaded,
 * every open() of a name ending in ".safetensors" fails with EMFILE, as it
 * does when the process is out of descriptors. The trainer must then refuse
 * to start rather than skip its newest checkpoint as if it were bad. Built
 * by the test with cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>

static int faulted(const char *path)
{
	size_t n = strlen(path), s = strlen(".safetensors");

	return n >= s && strcmp(path + n - s, ".safetensors") == 0;
}

static int call(const char *name, const char *path, int flags, mode_t mode)
{
	int (*real)(const char *, int, ...) =
	    (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, name);

	if (faulted(path)) {
		errno = EMFILE;
		return -1;
	}
	return real(path, flags, mode);
}

#define WRAP(name)                                                                                 \
	int name(const char *path, int flags, ...)                                                 \
	{                                                                                          \
		mode_t mode = 0;                                                                   \
		va_list ap;                                                                        \
                                                                                                   \
		va_start(ap, flags);                                                               \
		if (flags & (O_CREAT | O_TMPFILE))                                                 \
			mode = va_arg(ap, mode_t);                                                 \
		va_end(ap);                                                                        \
		return call(#name, path, flags, mode);                                             \
	}

WRAP(open)
WRAP(open64)
