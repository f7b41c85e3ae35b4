/*
 * mn_test.h - what the unit tests in this directory share: the runner,
 * temporary directories, small files, a network shape and a deterministic
 * number generator.
 *
 * Each test_<module>.c is a program of its own, so everything here is static
 * inline and a test pays only for what it calls. The helpers report trouble
 * with check assertions, never with a return code, so they may be called from
 * a test or from a checked fixture (which runs in the test's process).
 */
#ifndef MN_TEST_H
#define MN_TEST_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/capability.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "config.h"
#include "mlp.h"
#include "model.h"
#include "train.h"

/*
 * Runs every test in s, prints check's summary and frees s. Returns the
 * program's exit status: EXIT_SUCCESS when no test failed, EXIT_FAILURE
 * otherwise. A test's main() ends with `return mn_test_run(s);`.
 */
static inline int mn_test_run(Suite *s)
{
	static const int stops[] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT};
	SRunner *sr = srunner_create(s);
	sigset_t unblock;
	int failed;

	/*
	 * The tests of what a stop signal does start from its default action:
	 * run under nohup, or as a background job of a shell without job
	 * control, they would inherit an ignored or blocked one.
	 */
	sigemptyset(&unblock);
	for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
		signal(stops[i], SIG_DFL);
		sigaddset(&unblock, stops[i]);
	}
	sigprocmask(SIG_UNBLOCK, &unblock, NULL);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * Creates a test case called name, appends it to s and returns it. Test cases
 * run in the order they were appended. When setup or teardown is not NULL it
 * becomes the case's checked fixture: run around every test, in the test's
 * own process.
 */
static inline TCase *mn_test_tcase(Suite *s, const char *name, void (*setup)(void),
                                   void (*teardown)(void))
{
	TCase *tc = tcase_create(name);

	if (setup || teardown)
		tcase_add_checked_fixture(tc, setup, teardown);
	suite_add_tcase(s, tc);
	return tc;
}

/* Adds the n tests at tests to tc, in order. MN_TEST_ADD is the way to call it. */
static inline void mn_test_add(TCase *tc, const TTest *const *tests, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tcase_add_test(tc, tests[i]);
}

/*
 * Adds the tests named after tc (the names given to START_TEST) to tc, in
 * order: MN_TEST_ADD(tc, test_one, test_two). tc is evaluated once.
 */
#define MN_TEST_ADD(tc, ...)                                                                       \
	mn_test_add((tc), (const TTest *const[]){__VA_ARGS__},                                     \
	            sizeof((const TTest *const[]){__VA_ARGS__}) / sizeof(const TTest *))

/* Room for any directory name mn_test_tmpdir makes (kept short for socket paths). */
#define MN_TEST_DIRLEN 64

/*
 * Creates a new, empty, private directory under /tmp and writes its name into
 * buf (len bytes, at least MN_TEST_DIRLEN is plenty). The name carries the
 * test program's name, so a directory left behind says who left it.
 */
static inline void mn_test_tmpdir(char *buf, size_t len)
{
	int n = snprintf(buf, len, "/tmp/mn-%s-XXXXXX", program_invocation_short_name);

	ck_assert_msg(n > 0 && (size_t)n < len, "temporary directory name does not fit in %zu",
	              len);
	ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp %s: %s", buf, strerror(errno));
}

/* nftw callback for mn_test_rmtree: entries come children first (FTW_DEPTH). */
static inline int mn_test_rmtree_entry(const char *path, const struct stat *st, int type,
                                       struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	return remove(path) == 0 ? 0 : errno;
}

/*
 * Removes dir and everything below it, without following symbolic links, and
 * asserts that all of it went.
 */
static inline void mn_test_rmtree(const char *dir)
{
	int rc = nftw(dir, mn_test_rmtree_entry, 16, FTW_DEPTH | FTW_PHYS);

	ck_assert_msg(rc == 0, "removing %s: %s", dir, strerror(rc > 0 ? rc : errno));
}

/* Counts the entries of dir other than "." and "..". */
static inline size_t mn_test_count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	ck_assert_msg(d != NULL, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d)) != NULL)
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	return n;
}

/* True if dir/name exists (access(F_OK): a dangling link does not). */
static inline bool mn_test_exists(const char *dir, const char *name)
{
	char path[PATH_MAX + 256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/*
 * Creates or truncates path (mode 0644 before the umask) and writes the len
 * bytes at data into it; len may be 0 (data may then be NULL) to make an empty
 * file.
 */
static inline void mn_test_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	if (len)
		ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	ck_assert_int_eq(close(fd), 0);
}

/*
 * Sets or clears the capabilities in bits (1u << CAP_DAC_OVERRIDE, ...) in
 * this process's effective set, so that a test run as root can meet the
 * permission errors an ordinary user meets (root writes into a mode 0555
 * directory otherwise). Does nothing for another user, who meets them anyway.
 */
static inline void mn_test_caps(uint32_t bits, bool on)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];

	if (geteuid() != 0)
		return;
	ck_assert_int_eq(syscall(SYS_capget, &h, d), 0);
	if (on)
		d[0].effective |= bits;
	else
		d[0].effective &= ~bits;
	ck_assert_int_eq(syscall(SYS_capset, &h, d), 0);
}

/*
 * The lines of the file at path that contain needle ("" counts every line);
 * 0 when there is no such file (a log not written yet).
 */
static inline size_t mn_test_count_lines(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, n = 0;

	if (!f) {
		ck_assert_msg(errno == ENOENT, "open %s: %s", path, strerror(errno));
		return 0;
	}
	while (getline(&line, &cap, f) >= 0)
		n += strstr(line, needle) != NULL;
	free(line);
	fclose(f);
	return n;
}

/*
 * A configuration for a worker over a toy trainer (mn_test_toy_trainer) in
 * dir: batches of 10, and neither the end of training nor a periodic
 * checkpoint within any test's reach, so only what a test asks for happens.
 */
static inline void mn_test_worker_config(struct mn_config *cfg, const char *dir)
{
	mn_config_defaults(cfg);
	snprintf(cfg->checkpoint.dir, sizeof(cfg->checkpoint.dir), "%s", dir);
	cfg->checkpoint.every_steps = 1000000;
	cfg->train.max_steps = 1000000000;
	cfg->train.batch_size = 10;
}

/*
 * The shape input-hidden[0]-...-hidden[nhidden-1]-output, with the unused
 * hidden entries zero. hidden may be NULL when nhidden is 0.
 */
static inline struct mn_arch mn_test_arch(size_t input, size_t nhidden, const size_t *hidden,
                                          size_t output)
{
	struct mn_arch a;

	ck_assert_uint_le(nhidden, MN_MAX_HIDDEN);
	memset(&a, 0, sizeof(a));
	a.input = input;
	a.nhidden = nhidden;
	for (size_t i = 0; i < nhidden; i++)
		a.hidden[i] = hidden[i];
	a.output = output;
	return a;
}

/*
 * Fills n examples of dim pixels and their labels (0..classes-1 in turn)
 * with a pattern a small network learns in a few steps.
 */
static inline void mn_test_fill_classes(uint8_t *images, uint8_t *labels, size_t n, size_t dim,
                                        size_t classes)
{
	for (size_t i = 0; i < n; i++) {
		labels[i] = (uint8_t)(i % classes);
		for (size_t j = 0; j < dim; j++)
			images[i * dim + j] = (uint8_t)((labels[i] * 61 + j * 17 + i) & 0xff);
	}
}

/* Initialises a struct mn_hparams (train.h) for tests that need a few ordinary SGD steps. */
#define MN_TEST_HPARAMS                                                                            \
	{                                                                                          \
		.learning_rate = 0.3, .learning_rate_decay = 0.99, .decay_steps = 10, .l2 = 1e-4,  \
		.ema_decay = 0.99,                                                                 \
	}

/*
 * A small trainer (one hidden layer of 8, batch 10, seed 7) on a toy data
 * set of n examples of dim pixels in classes classes, filled into images,
 * labels and *data (which must outlive the trainer). For the tests of the
 * programs' checkpoint handling (pick, keep).
 */
static inline struct mn_trainer *mn_test_toy_trainer(uint8_t *images, uint8_t *labels, size_t n,
                                                     size_t dim, size_t classes,
                                                     struct mn_view *data)
{
	struct mn_trainer_params p = {.batch_size = 10, .seed = 7, .init_stddev = 0.1f};
	struct mn_trainer *t = NULL;
	char err[256] = "";

	mn_test_fill_classes(images, labels, n, dim, classes);
	*data = (struct mn_view){.images = images, .labels = labels, .count = n, .dim = dim};
	p.arch.input = dim;
	p.arch.output = classes;
	p.arch.nhidden = 1;
	p.arch.hidden[0] = 8;
	ck_assert_msg(mn_trainer_new(&p, data, &t, err, sizeof(err)) == 0, "%s", err);
	return t;
}

/* Trains t up to step (MN_TEST_HPARAMS) and publishes a checkpoint of it into dir. */
static inline void mn_test_publish_step(struct mn_trainer *t, const char *dir, const char *prefix,
                                        int64_t step)
{
	static const struct mn_hparams hp = MN_TEST_HPARAMS;
	char name[MN_CKPT_MAX_NAME], err[256] = "";
	double loss, lr;

	while (mn_trainer_global_step(t) < step)
		ck_assert_int_eq(mn_trainer_step(t, &hp, &loss, &lr), 0);
	ck_assert_msg(
	    mn_model_save(t, dir, prefix, 0, "{}", 1, name, sizeof(name), err, sizeof(err)) == 0,
	    "%s", err);
}

/*
 * A 64-bit linear congruential generator (Knuth's MMIX constants): test data
 * that is the same on every run and independent of the library's own RNG,
 * whose output is what some tests check. Seed it by setting state.
 */
struct mn_test_lcg {
	uint64_t state;
};

/* Advances the generator and returns its whole new state. */
static inline uint64_t mn_test_lcg_next(struct mn_test_lcg *g)
{
	g->state = g->state * 6364136223846793005ULL + 1442695040888963407ULL;
	return g->state;
}

/* 31 well-mixed bits, from the top of the state (the low bits of an LCG are weak). */
static inline uint32_t mn_test_lcg_u32(struct mn_test_lcg *g)
{
	return (uint32_t)(mn_test_lcg_next(g) >> 33);
}

/* Uniform in [0, 1), on a grid of 2^-24, so every value is exact in a float. */
static inline float mn_test_lcg_uniform(struct mn_test_lcg *g)
{
	return (float)((mn_test_lcg_next(g) >> 40) * 0x1.0p-24);
}

/* Uniform in [-scale, scale). */
static inline float mn_test_lcg_sym(struct mn_test_lcg *g, float scale)
{
	return (2.0f * mn_test_lcg_uniform(g) - 1.0f) * scale;
}

#endif
