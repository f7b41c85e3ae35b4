/*
 * mn_test_threads.h - fault injection for thread creation: while
 * mn_test_fail_threads is true, pthread_create called from the program
 * fails with EAGAIN, as it does when a process is out of threads.
 *
 * This defines pthread_create itself, ahead of the C library's (which it
 * calls otherwise), so a program includes it from one file only.
 */
#ifndef MN_TEST_THREADS_H
#define MN_TEST_THREADS_H

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

static bool mn_test_fail_threads;

typedef int (*mn_test_pthread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *),
                                         void *);

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	mn_test_pthread_create_fn real =
	    (mn_test_pthread_create_fn)dlsym(RTLD_NEXT, "pthread_create");

	/* Not a check assertion: the BLAS library starts threads before any test runs. */
	if (!real)
		abort();
	return mn_test_fail_threads ? EAGAIN : real(t, attr, fn, arg);
}

#endif
