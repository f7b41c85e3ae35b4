/*
 * test_dist.c - data-parallel training across MPI ranks (daemon/dist.c),
 * with real ranks: meson runs this program under mpirun -np 2, and every
 * rank runs the same suite in the same order.
 *
 * What is covered: the job's rank and size; the gradient allreduce (exact
 * sums, an empty buffer, a buffer large enough for Open MPI's segmented
 * algorithms, counts MPI cannot express); the step-boundary agreement (stop
 * is any rank's, pause, save and reload are rank 0's); the configuration
 * and training-state broadcasts from rank 0; the start's comparison of the
 * settings and of the training data with rank 0's; the parameter check that must
 * see a divergence on any rank and give every rank the same answer; a real
 * sharded trainer that stays in step across ranks; and the summary line.
 *
 * How: check runs without fork (MPI cannot cross a fork), so a failed
 * ck_assert would leave its test early and strand the other rank in the
 * next collective. Tests therefore record failures with EXPECT (which never
 * leaves the test) and end with settle(), which shares every rank's verdict
 * so that a failure on one rank fails the test on all of them, and the
 * program's exit status (hence mpirun's) on every rank. A watchdog alarm
 * turns a collective that never completes into a quick failure instead of
 * a hang until meson's timeout.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <mpi.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dist.h"
#include "log.h"
#include "train.h"
#include "util.h"

#include "mn_test.h"

/* Seconds one test may take before the watchdog ends the job. */
#define WATCHDOG_S 30

static struct mnd_dist *dist;
static int rank, size;
static char err[MN_ERRLEN];

/*
 * Allreduce calls this program made that reached MPI, so the summary's
 * count can be checked whatever order the tests ran in.
 */
static int64_t allreduces;

/* This rank's failures in the current test, and the first one's text. */
static int nfailed;
static char failure[512];

MN_PRINTF(4, 5)
static void expect_at(bool ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ok || nfailed++ > 0)
		return;
	n = snprintf(failure, sizeof(failure), "%s:%d: ", file, line);
	if (n < 0 || (size_t)n >= sizeof(failure))
		return;
	va_start(ap, fmt);
	vsnprintf(failure + n, sizeof(failure) - (size_t)n, fmt, ap);
	va_end(ap);
}

/* Records a failure without leaving the test: the other ranks still wait in its collectives. */
#define EXPECT(cond, ...) expect_at((cond), __FILE__, __LINE__, __VA_ARGS__)
#define EXPECT_INT_EQ(a, b)                                                                        \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		EXPECT(a_ == b_, "%s == %s (%lld != %lld)", #a, #b, a_, b_);                       \
	} while (0)

/*
 * Ends a test on every rank with one verdict: each rank learns which ranks
 * failed, and fails too if any did. Plain MPI, not the module under test,
 * carries the verdicts, so a broken dist.c cannot hide its own failures.
 */
static void settle(void)
{
	int mine = nfailed > 0, all[64] = {0}, bad = -1;

	ck_assert_int_le(size, 64);
	ck_assert_int_eq(MPI_Allgather(&mine, 1, MPI_INT, all, 1, MPI_INT, MPI_COMM_WORLD),
	                 MPI_SUCCESS);
	nfailed = 0;
	for (int r = 0; r < size && bad < 0; r++)
		if (all[r])
			bad = r;
	ck_assert_msg(bad < 0, "rank %d: %s", mine ? rank : bad,
	              mine ? failure : "failed there (see its output)");
}

/* Written by the watchdog; formatted in main, since a signal handler cannot format. */
static char watchdog_msg[128];

static void on_watchdog(int sig)
{
	ssize_t unused = write(STDERR_FILENO, watchdog_msg, strlen(watchdog_msg));

	(void)sig;
	(void)unused;
	/* Exiting without MPI_Finalize makes mpirun end the other ranks and fail. */
	_exit(3);
}

static void setup(void)
{
	nfailed = 0;
	failure[0] = '\0';
	err[0] = '\0';
	/*
	 * Installed here, not in main: srunner_run_all puts in its own SIGALRM
	 * handler (fork mode or not), which would kill the whole process
	 * group, mpirun included, without a word.
	 */
	signal(SIGALRM, on_watchdog);
	alarm(WATCHDOG_S);
}

static void teardown(void)
{
	alarm(0);
}

/* mnd_dist_allreduce, counted: the trainer's reducer in the sharded-training test. */
static int counted_allreduce(void *ctx, float *buf, size_t n)
{
	if (n <= INT32_MAX)
		allreduces++;
	return mnd_dist_allreduce(ctx, buf, n);
}

/* The value rank r puts at i: distinct per element and exact as a float, summed over ranks. */
static float contribution(int r, size_t i)
{
	return (float)((i % 4096) * (size_t)(r + 1));
}

/* The exact sum over all ranks of contribution(r, i). */
static float total(size_t i)
{
	return (float)((i % 4096) * (size_t)(size * (size + 1) / 2));
}

START_TEST(test_rank_and_size)
{
	int ranks[64] = {0};

	/* meson starts exactly two ranks; more would still pass everything else. */
	EXPECT_INT_EQ(size, 2);
	EXPECT(rank >= 0 && rank < size, "rank %d of %d", rank, size);
	EXPECT(mnd_dist_launched(), "mpirun set no launcher variable the module knows");
	EXPECT(mnd_dist_available(), "built with MPI, yet not available");
	/* Every rank number appears exactly once. */
	ck_assert_int_eq(MPI_Allgather(&rank, 1, MPI_INT, ranks, 1, MPI_INT, MPI_COMM_WORLD),
	                 MPI_SUCCESS);
	for (int r = 0; r < size; r++)
		EXPECT_INT_EQ(ranks[r], r);
	settle();
}
END_TEST

START_TEST(test_null_handle_is_a_single_process)
{
	/* The worker passes its handle, NULL in a plain mnistd, to all of these. */
	EXPECT_INT_EQ(mnd_dist_rank(NULL), 0);
	EXPECT_INT_EQ(mnd_dist_size(NULL), 1);
	mnd_dist_log_summary(NULL);
	mnd_dist_abort(NULL, 1);
	mnd_dist_finalize(NULL);
	settle();
}
END_TEST

START_TEST(test_allreduce_sums_exactly)
{
	enum { N = 1000 };
	float buf[N];

	for (size_t i = 0; i < N; i++)
		buf[i] = contribution(rank, i);
	EXPECT_INT_EQ(counted_allreduce(dist, buf, N), 0);
	for (size_t i = 0; i < N; i++)
		if (buf[i] != total(i)) {
			EXPECT(false, "buf[%zu] = %g, want %g", i, buf[i], total(i));
			break;
		}
	/* A second call sums afresh: nothing of the first remains. */
	for (size_t i = 0; i < N; i++)
		buf[i] = rank == 0 ? 1.0f : 0.5f;
	EXPECT_INT_EQ(counted_allreduce(dist, buf, N), 0);
	EXPECT(buf[0] == 1.5f && buf[N - 1] == 1.5f, "second sum %g, %g, want 1.5", buf[0],
	       buf[N - 1]);
	settle();
}
END_TEST

START_TEST(test_allreduce_of_nothing)
{
	float sentinel = 42.0f;

	/* A model has parameters, but an empty buffer must still be a valid collective. */
	EXPECT_INT_EQ(counted_allreduce(dist, &sentinel, 0), 0);
	EXPECT(sentinel == 42.0f, "n = 0 changed the buffer to %g", sentinel);
	settle();
}
END_TEST

START_TEST(test_allreduce_large_buffer)
{
	/* 16 MiB: past Open MPI's eager limits, so segmented and pipelined algorithms run. */
	const size_t n = (size_t)4 << 20;
	float *buf = malloc(n * sizeof(*buf));
	size_t bad = n;

	ck_assert_ptr_nonnull(buf);
	for (size_t i = 0; i < n; i++)
		buf[i] = contribution(rank, i) + (float)(i / 4096);
	EXPECT_INT_EQ(counted_allreduce(dist, buf, n), 0);
	for (size_t i = 0; i < n && bad == n; i++)
		if (buf[i] != total(i) + (float)size * (float)(i / 4096))
			bad = i;
	EXPECT(bad == n, "buf[%zu] = %g, want %g", bad, bad < n ? buf[bad] : 0.0f,
	       bad < n ? total(bad) + (float)size * (float)(bad / 4096) : 0.0f);
	free(buf);
	settle();
}
END_TEST

START_TEST(test_allreduce_rejects_counts_mpi_cannot_express)
{
	float one = 1.0f;

	/*
	 * MPI counts are ints. The check comes before any MPI call (every rank
	 * sees the same n), so no rank is left in a collective and the buffer,
	 * far too short for n, is never read.
	 */
	EXPECT_INT_EQ(counted_allreduce(dist, &one, (size_t)INT32_MAX + 1), -EOVERFLOW);
	EXPECT_INT_EQ(counted_allreduce(dist, &one, SIZE_MAX), -EOVERFLOW);
	EXPECT(one == 1.0f, "an oversized count changed the buffer to %g", one);
	settle();
}
END_TEST

/* One agreement: what each rank asks for and what every rank must end up with. */
struct agree_case {
	const char *what;
	struct mnd_dist_cmd rank0, rank1, want;
};

static void run_agree_cases(bool rank0_quiet, bool others_quiet)
{
	static const struct agree_case cases[] = {
	    {"nothing asked", {0}, {0}, {0}},
	    {"stop on rank 1 only", {0}, {.stop = true}, {.stop = true}},
	    {"stop on rank 0 only", {.stop = true}, {0}, {.stop = true}},
	    {"stop on both", {.stop = true}, {.stop = true}, {.stop = true}},
	    /* Only rank 0 serves the control socket: others' commands are noise. */
	    {"pause, save and reload on rank 1 only",
	     {0},
	     {.pause = true, .save = true, .reload = true},
	     {0}},
	    {"pause on rank 0", {.pause = true}, {0}, {.pause = true}},
	    {"save on rank 0", {.save = true}, {0}, {.save = true}},
	    {"reload on rank 0", {.reload = true}, {0}, {.reload = true}},
	    {"pause on rank 0, save on rank 1", {.pause = true}, {.save = true}, {.pause = true}},
	    {"everything on rank 0, stop on rank 1",
	     {.pause = true, .save = true, .reload = true},
	     {.stop = true},
	     {.stop = true, .pause = true, .save = true, .reload = true}},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct agree_case *c = &cases[i];
		/* Ranks above 1 ask for nothing, so the same answer holds for any size. */
		struct mnd_dist_cmd cmd = rank == 0   ? c->rank0
		                          : rank == 1 ? c->rank1
		                                      : (struct mnd_dist_cmd){0};
		bool quiet = rank == 0 ? rank0_quiet : others_quiet;
		int rc = mnd_dist_agree(dist, &cmd, quiet);

		EXPECT(
		    rc == 0 && cmd.stop == c->want.stop && cmd.pause == c->want.pause &&
		        cmd.save == c->want.save && cmd.reload == c->want.reload,
		    "%s (quiet %d/%d): rc %d, stop %d pause %d save %d reload %d; want %d %d %d %d",
		    c->what, rank0_quiet, others_quiet, rc, cmd.stop, cmd.pause, cmd.save,
		    cmd.reload, c->want.stop, c->want.pause, c->want.save, c->want.reload);
	}
}

START_TEST(test_agree_stop_is_anyones_the_rest_rank0s)
{
	run_agree_cases(false, false);
	settle();
}
END_TEST

START_TEST(test_agree_while_paused)
{
	/*
	 * A paused job: non-zero ranks wait quietly (polling) while rank 0
	 * waits in MPI_Wait; both forms must match and give the same answers.
	 */
	run_agree_cases(true, true);
	/* Ranks may disagree on being paused (rank 0 learns first): still one collective. */
	run_agree_cases(false, true);
	run_agree_cases(true, false);
	settle();
}
END_TEST

/* The configuration rank 0 runs on in test_bcast_config, version v. */
static void rank0_config(struct mn_config *c, int v)
{
	mn_config_defaults(c);
	c->train.batch_size = 50 + v;
	c->train.learning_rate = 0.125 * (v + 1);
	c->train.max_steps = 1234 + v;
	c->model.nhidden = 2;
	c->model.hidden[0] = 32;
	c->model.hidden[1] = 16 + v;
	snprintf(c->checkpoint.dir, sizeof(c->checkpoint.dir), "/var/lib/mnistd/run-%d", v);
}

START_TEST(test_bcast_config_follows_rank0)
{
	struct mn_config want, cfg;

	for (int v = 0; v < 2; v++) {
		/* Rank 0's values, known to every rank for checking; the others start elsewhere. */
		rank0_config(&want, v);
		if (rank == 0) {
			cfg = want;
		} else {
			mn_config_defaults(&cfg);
			cfg.train.learning_rate = 0.001 * rank;
		}
		err[0] = '\0';
		EXPECT_INT_EQ(mnd_dist_bcast_config(dist, &cfg, err, sizeof(err)), 0);
		EXPECT(err[0] == '\0', "version %d: %s", v, err);
		/* Rank 0 keeps its own; every other rank now has exactly rank 0's keys. */
		EXPECT_INT_EQ(mn_config_diff(&want, &cfg, NULL, NULL), 0);
		EXPECT(strcmp(cfg.checkpoint.dir, want.checkpoint.dir) == 0, "version %d: dir %s",
		       v, cfg.checkpoint.dir);
	}
	settle();
}
END_TEST

/*
 * The job's settings: a key no broadcast overrides, on rank 1 alone, gives
 * every rank -EINVAL naming rank 1 and the key; a reloadable key (rank 0's
 * is broadcast) or a node's own (data.dir, train.threads) is no error.
 */
START_TEST(test_check_config_names_the_rank_and_key)
{
	static const struct {
		const char *key;
		int rc;
	} cases[] = {
	    {"", 0},
	    {"train.batch_size", -EINVAL},
	    {"train.l2", -EINVAL},
	    {"train.ema_decay", -EINVAL},
	    {"model.hidden", -EINVAL},
	    {"data.validation_size", -EINVAL},
	    {"train.learning_rate", 0},
	    {"data.dir", 0},
	    {"train.threads", 0},
	    {"checkpoint.dir", 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *key = cases[i].key;
		struct mn_config cfg;
		char want[256];
		int rc;

		mn_config_defaults(&cfg);
		if (rank == 1) {
			if (strcmp(key, "train.batch_size") == 0)
				cfg.train.batch_size = 50;
			else if (strcmp(key, "train.l2") == 0)
				cfg.train.l2 = 0.5;
			else if (strcmp(key, "train.ema_decay") == 0)
				cfg.train.ema_decay = 0.5;
			else if (strcmp(key, "model.hidden") == 0)
				cfg.model.hidden[0] = 7;
			else if (strcmp(key, "data.validation_size") == 0)
				cfg.data.validation_size = 1;
			else if (strcmp(key, "train.learning_rate") == 0)
				cfg.train.learning_rate = 0.5;
			else if (strcmp(key, "data.dir") == 0)
				snprintf(cfg.data.dir, sizeof(cfg.data.dir), "/srv/node1/data");
			else if (strcmp(key, "train.threads") == 0)
				cfg.train.threads = 3;
			else if (strcmp(key, "checkpoint.dir") == 0)
				snprintf(cfg.checkpoint.dir, sizeof(cfg.checkpoint.dir),
				         "/elsewhere");
		}
		err[0] = '\0';
		rc = mnd_dist_check_config(dist, "1.0", &cfg, err, sizeof(err));
		EXPECT(rc == cases[i].rc, "%s: %d, want %d (%s)", key[0] ? key : "(none)", rc,
		       cases[i].rc, err);
		snprintf(want, sizeof(want), "rank 1 was started with another %s than rank 0", key);
		if (cases[i].rc < 0)
			EXPECT(strstr(err, want) != NULL, "%s: message \"%s\"", key, err);
	}
	settle();
}
END_TEST

/* More ranks than examples in a batch: a configuration error every rank sees. */
START_TEST(test_check_config_more_ranks_than_a_batch)
{
	struct mn_config cfg;
	char want[128];

	mn_config_defaults(&cfg);
	cfg.train.batch_size = size - 1 > 0 ? size - 1 : 1;
	snprintf(want, sizeof(want), "%d ranks cannot share a batch of %" PRId64, size,
	         cfg.train.batch_size);
	err[0] = '\0';
	EXPECT_INT_EQ(mnd_dist_check_config(dist, "1.0", &cfg, err, sizeof(err)),
	              size > 1 ? -EINVAL : 0);
	if (size > 1)
		EXPECT(strstr(err, want) != NULL, "message \"%s\"", err);
	cfg.train.batch_size = size;
	EXPECT_INT_EQ(mnd_dist_check_config(dist, "1.0", &cfg, err, sizeof(err)), 0);
	settle();
}
END_TEST

/* Ranks of other mnistd versions are named before any other exchange. */
START_TEST(test_check_config_names_another_version)
{
	struct mn_config cfg;

	mn_config_defaults(&cfg);
	err[0] = '\0';
	EXPECT_INT_EQ(
	    mnd_dist_check_config(dist, rank == 1 ? "0.9" : "1.0", &cfg, err, sizeof(err)),
	    -EINVAL);
	EXPECT(strstr(err, "rank 1 runs mnistd 0.9, rank 0 runs mnistd 1.0") != NULL,
	       "message \"%s\"", err);
	/* The exchange is over on every rank: the next one starts in step. */
	EXPECT_INT_EQ(mnd_dist_check_config(dist, "1.0", &cfg, err, sizeof(err)), 0);
	settle();
}
END_TEST

/* The training sets: equal on every rank, or -EINVAL naming rank 1 on every rank. */
START_TEST(test_check_data_names_the_rank)
{
	uint8_t images[6 * 4], labels[6];
	struct mn_view v = {.images = images, .labels = labels, .count = 6, .dim = 4};

	for (size_t i = 0; i < sizeof(images); i++)
		images[i] = (uint8_t)(i * 7);
	for (size_t i = 0; i < sizeof(labels); i++)
		labels[i] = (uint8_t)(i % 10);
	EXPECT_INT_EQ(mnd_dist_check_data(dist, &v, err, sizeof(err)), 0);
	/* One pixel, one label, the shape: each is another data set. */
	for (int c = 0; c < 3; c++) {
		struct mn_view w = v;

		if (rank == 1 && c == 0)
			images[5] ^= 1;
		if (rank == 1 && c == 1)
			labels[2] ^= 1;
		if (rank == 1 && c == 2)
			w.count = 5;
		err[0] = '\0';
		EXPECT_INT_EQ(mnd_dist_check_data(dist, &w, err, sizeof(err)), -EINVAL);
		EXPECT(strstr(err, "rank 1's data.dir holds other training data") != NULL,
		       "case %d: message \"%s\"", c, err);
		if (rank == 1 && c == 0)
			images[5] ^= 1;
		if (rank == 1 && c == 1)
			labels[2] ^= 1;
	}
	settle();
}
END_TEST

/*
 * A training state of our own making, past the eager limit of Open MPI's
 * shared-memory transport, so the broadcasts take the rendezvous path.
 */
#define NPARAMS 100003
#define NPERM   5000

struct fake {
	float params[NPARAMS], shadow[NPARAMS];
	int64_t step, epoch;
	uint64_t perm_pos;
	uint32_t perm[NPERM];
	struct mn_rng rng;
};

static struct fake mine, rank0s;

/* The state as rank `who` would hold it: every field differs between ranks. */
static void fake_fill(struct fake *f, int who)
{
	for (size_t i = 0; i < NPARAMS; i++) {
		f->params[i] = (float)i * 0.25f + (float)who * 1000.0f;
		f->shadow[i] = (float)i * -0.5f + (float)who;
	}
	f->step = 3000 + who;
	f->epoch = 7 + who;
	f->perm_pos = 123 + (uint64_t)who;
	for (size_t i = 0; i < NPERM; i++)
		f->perm[i] = (uint32_t)((i * 7 + (size_t)who) % NPERM);
	mn_rng_seed(&f->rng, 99 + (uint64_t)who);
}

static struct mn_trainer_state fake_view(struct fake *f)
{
	return (struct mn_trainer_state){
	    .params = f->params,
	    .shadow = f->shadow,
	    .nparams = NPARAMS,
	    .global_step = &f->step,
	    .epoch = &f->epoch,
	    .perm_pos = &f->perm_pos,
	    .perm = f->perm,
	    .nperm = NPERM,
	    .rng = &f->rng,
	};
}

START_TEST(test_bcast_state_copies_everything_from_rank0)
{
	struct mn_trainer_state s = fake_view(&mine);

	fake_fill(&mine, rank);
	fake_fill(&rank0s, 0);
	EXPECT_INT_EQ(mnd_dist_bcast_state(dist, &s, err, sizeof(err)), 0);
	/* Field by field, so a failure names what was not copied. */
	EXPECT(memcmp(mine.params, rank0s.params, sizeof(rank0s.params)) == 0, "params differ");
	EXPECT(memcmp(mine.shadow, rank0s.shadow, sizeof(rank0s.shadow)) == 0, "shadows differ");
	EXPECT_INT_EQ(mine.step, rank0s.step);
	EXPECT_INT_EQ(mine.epoch, rank0s.epoch);
	EXPECT_INT_EQ(mine.perm_pos, rank0s.perm_pos);
	EXPECT(memcmp(mine.perm, rank0s.perm, sizeof(rank0s.perm)) == 0, "permutations differ");
	EXPECT(memcmp(&mine.rng, &rank0s.rng, sizeof(rank0s.rng)) == 0, "RNG states differ");
	settle();
}
END_TEST

/* Runs the check and expects every rank to get rc, with a message naming rank 1 on failure. */
static void expect_check(int rc, const char *what)
{
	struct mn_trainer_state s = fake_view(&mine);
	int got;

	err[0] = '\0';
	got = mnd_dist_check_state(dist, &s, err, sizeof(err));
	EXPECT(got == rc, "%s: check gave %d, want %d (%s)", what, got, rc, err);
	if (rc < 0)
		EXPECT(strstr(err, "rank 1 diverged") != NULL, "%s: message \"%s\"", what, err);
}

START_TEST(test_check_state_sees_divergence_on_every_rank)
{
	fake_fill(&mine, 0);
	expect_check(0, "identical states");

	/* One float on one rank, at each end of both arrays, and the other fields it covers. */
	if (rank == 1)
		mine.params[NPARAMS - 1] += 1.0f;
	expect_check(-EPROTO, "last parameter on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.params[0] = -mine.params[0] - 1.0f;
	expect_check(-EPROTO, "first parameter on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.shadow[0] += 0.5f;
	expect_check(-EPROTO, "first shadow on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.shadow[NPARAMS - 1] += 0.5f;
	expect_check(-EPROTO, "last shadow on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.step++;
	expect_check(-EPROTO, "step on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.rng.s[3] ^= 1;
	expect_check(-EPROTO, "RNG on rank 1");
	/* The data order: equal parameters would hide another permutation until too late. */
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.epoch++;
	expect_check(-EPROTO, "epoch on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1)
		mine.perm_pos++;
	expect_check(-EPROTO, "permutation position on rank 1");
	fake_fill(&mine, 0);
	if (rank == 1) {
		uint32_t t = mine.perm[0];

		mine.perm[0] = mine.perm[NPERM - 1];
		mine.perm[NPERM - 1] = t;
	}
	expect_check(-EPROTO, "permutation on rank 1");
	/* Rank 0 is the reference, but a change there is a divergence all the same. */
	fake_fill(&mine, 0);
	if (rank == 0)
		mine.params[NPARAMS / 2] += 1.0f;
	expect_check(-EPROTO, "a parameter on rank 0");

	/* Once the states agree again, so does the check. */
	fake_fill(&mine, 0);
	expect_check(0, "states restored");
	settle();
}
END_TEST

START_TEST(test_sharded_trainers_stay_in_step)
{
	enum { N_EX = 40, IN_DIM = 16, OUT = 4, STEPS = 5 };
	static const struct mn_hparams hp = MN_TEST_HPARAMS;
	static uint8_t images[N_EX * IN_DIM], labels[N_EX];
	struct mn_trainer_params p = {.batch_size = 10, .init_stddev = 0.1f};
	struct mn_view v = {.images = images, .labels = labels, .count = N_EX, .dim = IN_DIM};
	struct mn_trainer *t = NULL;
	struct mn_trainer_state s;
	double loss = 0, lr = 0, losses[64];

	/* The daemon's start-up, as worker.c does it, from trainers seeded apart on purpose. */
	mn_test_fill_classes(images, labels, N_EX, IN_DIM, OUT);
	p.seed = 7 + (uint64_t)rank;
	p.arch = mn_test_arch(IN_DIM, 1, (const size_t[]){8}, OUT);
	ck_assert_int_eq(mn_trainer_new(&p, &v, &t, err, sizeof(err)), 0);
	EXPECT_INT_EQ(mn_trainer_set_shard(t, (size_t)rank, (size_t)size, counted_allreduce, dist),
	              0);
	mn_trainer_state(t, &s);
	EXPECT_INT_EQ(mnd_dist_check_state(dist, &s, err, sizeof(err)), -EPROTO);
	EXPECT_INT_EQ(mnd_dist_bcast_state(dist, &s, err, sizeof(err)), 0);
	EXPECT_INT_EQ(mnd_dist_check_state(dist, &s, err, sizeof(err)), 0);

	/* Each rank's half-batch gradient, summed, gives every rank the same update and loss. */
	for (int i = 0; i < STEPS; i++)
		EXPECT_INT_EQ(mn_trainer_step(t, &hp, &loss, &lr), 0);
	EXPECT_INT_EQ(mn_trainer_global_step(t), STEPS);
	err[0] = '\0';
	EXPECT(mnd_dist_check_state(dist, &s, err, sizeof(err)) == 0, "after training: %s", err);
	ck_assert_int_eq(MPI_Allgather(&loss, 1, MPI_DOUBLE, losses, 1, MPI_DOUBLE, MPI_COMM_WORLD),
	                 MPI_SUCCESS);
	for (int r = 1; r < size; r++)
		EXPECT(losses[r] == losses[0], "rank %d's loss %.9g, rank 0's %.9g", r, losses[r],
		       losses[0]);
	mn_trainer_free(t);
	settle();
}
END_TEST

START_TEST(test_log_summary_on_rank0_only)
{
	char dir[MN_TEST_DIRLEN], path[MN_TEST_DIRLEN + 16], want[64];
	struct mnd_dist_cmd cmd = {0};
	float x = 1.0f;
	size_t lines;

	/* One allreduce and one agreement: the summary is due whatever ran before. */
	EXPECT_INT_EQ(counted_allreduce(dist, &x, 1), 0);
	EXPECT_INT_EQ(mnd_dist_agree(dist, &cmd, false), 0);

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/log", dir);
	EXPECT_INT_EQ(mn_log_open(path, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	mnd_dist_log_summary(dist);
	mn_log_close();

	/* Rank 0 speaks for the job: one line, with the size and every allreduce counted. */
	lines = mn_test_count_lines(path, "data-parallel summary");
	EXPECT(lines == (rank == 0 ? 1u : 0u), "%zu summary lines", lines);
	if (rank == 0) {
		EXPECT_INT_EQ(mn_test_count_lines(path, "world_size=2 "), 1);
		snprintf(want, sizeof(want), "allreduces=%lld ", (long long)allreduces);
		EXPECT(mn_test_count_lines(path, want) == 1, "no \"%s\" in the summary", want);
		EXPECT_INT_EQ(mn_test_count_lines(path, "allreduce_ms_per_step="), 1);
		EXPECT_INT_EQ(mn_test_count_lines(path, "commands_us_per_step="), 1);
	}
	mn_test_rmtree(dir);
	settle();
}
END_TEST

static Suite *dist_suite(void)
{
	Suite *s = suite_create("dist");
	/* Check's timeouts need fork: the watchdog the fixture arms bounds each test instead. */
	TCase *tc = mn_test_tcase(s, "dist", setup, teardown);

	MN_TEST_ADD(tc, test_rank_and_size, test_null_handle_is_a_single_process,
	            test_allreduce_sums_exactly, test_allreduce_of_nothing,
	            test_allreduce_large_buffer, test_allreduce_rejects_counts_mpi_cannot_express,
	            test_agree_stop_is_anyones_the_rest_rank0s, test_agree_while_paused,
	            test_bcast_config_follows_rank0, test_check_config_names_the_rank_and_key,
	            test_check_config_names_another_version,
	            test_check_config_more_ranks_than_a_batch, test_check_data_names_the_rank,
	            test_bcast_state_copies_everything_from_rank0,
	            test_check_state_sees_divergence_on_every_rank,
	            test_sharded_trainers_stay_in_step, test_log_summary_on_rank0_only);
	return s;
}

int main(int argc, char **argv)
{
	char ierr[MN_ERRLEN] = "";
	SRunner *sr;
	int failed;

	if (mnd_dist_init(&argc, &argv, &dist, ierr, sizeof(ierr)) < 0) {
		fprintf(stderr, "test_dist: %s\n", ierr);
		return EXIT_FAILURE;
	}
	rank = mnd_dist_rank(dist);
	size = mnd_dist_size(dist);
	snprintf(
	    watchdog_msg, sizeof(watchdog_msg),
	    "test_dist: rank %d: a test ran past %d s (a collective some rank never joined?)\n",
	    rank, WATCHDOG_S);

	sr = srunner_create(dist_suite());
	/* MPI cannot be used across fork: every test runs in this process. */
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	alarm(0);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);

	/* settle() made the verdicts agree, so every rank exits with the same status. */
	mnd_dist_finalize(dist);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
