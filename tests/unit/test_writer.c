/*
 * test_writer.c - the checkpoint writer thread with a real trainer and a
 * real directory: what is written is the state at the submission, and a
 * snapshot that waits behind a write in flight is replaced by a newer one.
 *
 * The done callback runs on the writer thread; holding it there keeps a
 * write "in flight" for as long as a test needs, without sleeps.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>

#include "ckpt.h"
#include "mn_test.h"
#include "writer.h"

#define N_EX     40
#define IN_DIM   16
#define OUT      4
#define PREFIX   "model.ckpt"
#define MAX_SEEN 8

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[PATH_MAX];
static struct mn_view data;
static struct mn_trainer *trainer;

/* What the done callback saw, and a gate that can hold it. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct {
	uint64_t seq;
	int status;
	int64_t step;
	char name[MN_CKPT_MAX_NAME];
} seen[MAX_SEEN];
static size_t nseen;
static bool hold;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	nseen = 0;
	hold = false;
}

static void teardown(void)
{
	mn_trainer_free(trainer);
	mn_test_rmtree(tmpdir);
}

static void done(void *arg, const struct mnd_writer_result *r)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	ck_assert_uint_lt(nseen, MAX_SEEN);
	seen[nseen].seq = r->seq;
	seen[nseen].status = r->status;
	seen[nseen].step = r->step;
	snprintf(seen[nseen].name, sizeof(seen[nseen].name), "%s", r->name);
	nseen++;
	pthread_cond_broadcast(&cond);
	while (hold)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
}

static void train_to(int64_t step)
{
	static const struct mn_hparams hp = MN_TEST_HPARAMS;
	double loss, lr;

	while (mn_trainer_global_step(trainer) < step)
		ck_assert_int_eq(mn_trainer_step(trainer, &hp, &loss, &lr), 0);
}

static const struct mnd_writer_target target = {.dir = tmpdir,
                                                .prefix = PREFIX,
                                                .max_to_keep = 0,
                                                .config_json = "{}",
                                                .world_size = 1,
                                                .newest_good = -1};

/* The raw parameters stored in dir/name. */
static float *stored_params(const char *name, size_t *n)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME + 2], err[256] = "";
	struct mn_ckpt *c = NULL;
	struct mn_arch arch;
	float *params = NULL;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_msg(mn_ckpt_read(path, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_msg(mn_model_load_params(c, false, &arch, &params, err, sizeof(err)) == 0, "%s",
	              err);
	*n = mn_arch_param_count(&arch);
	mn_ckpt_free(c);
	return params;
}

/* The file holds the state at the submission, though training went on before it was written. */
START_TEST(test_writes_the_state_at_submission)
{
	struct mnd_writer *wr = NULL;
	struct mn_trainer_state st;
	char err[256] = "";
	float *want, *got;
	size_t n;

	ck_assert_msg(mnd_writer_start(trainer, done, NULL, &wr, err, sizeof(err)) == 0, "%s", err);
	train_to(5);
	mn_trainer_state(trainer, &st);
	want = malloc(st.nparams * sizeof(float));
	ck_assert_ptr_nonnull(want);
	memcpy(want, st.params, st.nparams * sizeof(float));
	pthread_mutex_lock(&lock);
	hold = true; /* the write ends in done(), which waits: training goes on meanwhile */
	pthread_mutex_unlock(&lock);
	ck_assert_int_eq(mnd_writer_submit(wr, trainer, &target), 1);
	train_to(9);
	pthread_mutex_lock(&lock);
	while (nseen < 1)
		pthread_cond_wait(&cond, &lock);
	hold = false;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	mnd_writer_drain(wr);

	ck_assert_uint_eq(nseen, 1);
	ck_assert_uint_eq(seen[0].seq, 1);
	ck_assert_int_eq(seen[0].status, 0);
	ck_assert_int_eq(seen[0].step, 5);
	ck_assert_str_eq(seen[0].name, PREFIX "-5.safetensors");
	got = stored_params(seen[0].name, &n);
	ck_assert_uint_eq(n, st.nparams);
	ck_assert_mem_eq(got, want, n * sizeof(float));
	mn_trainer_state(trainer, &st);
	ck_assert(memcmp(st.params, want, n * sizeof(float)) != 0); /* training did move on */
	free(got);
	free(want);
	mnd_writer_free(wr);
}
END_TEST

/*
 * With a write in flight, a second snapshot waits and a third replaces it:
 * the second is never written, and the third's report covers both.
 */
START_TEST(test_newer_snapshot_replaces_the_waiting_one)
{
	struct mnd_writer *wr = NULL;
	char err[256] = "";

	ck_assert_msg(mnd_writer_start(trainer, done, NULL, &wr, err, sizeof(err)) == 0, "%s", err);
	pthread_mutex_lock(&lock);
	hold = true;
	pthread_mutex_unlock(&lock);
	train_to(2);
	ck_assert_int_eq(mnd_writer_submit(wr, trainer, &target), 1);
	pthread_mutex_lock(&lock);
	while (nseen < 1)
		pthread_cond_wait(&cond, &lock); /* the first write is done and held */
	pthread_mutex_unlock(&lock);
	train_to(4);
	ck_assert_int_eq(mnd_writer_submit(wr, trainer, &target), 2);
	train_to(6);
	ck_assert_int_eq(mnd_writer_submit(wr, trainer, &target), 3);
	pthread_mutex_lock(&lock);
	hold = false;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	mnd_writer_drain(wr);

	ck_assert_uint_eq(nseen, 2);
	ck_assert_int_eq(seen[0].step, 2);
	ck_assert_uint_eq(seen[1].seq, 3);
	ck_assert_int_eq(seen[1].step, 6);
	ck_assert_int_eq(seen[1].status, 0);
	ck_assert(mn_test_exists(tmpdir, PREFIX "-2.safetensors"));
	ck_assert(!mn_test_exists(tmpdir, PREFIX "-4.safetensors"));
	ck_assert(mn_test_exists(tmpdir, PREFIX "-6.safetensors"));
	mnd_writer_free(wr);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("writer");
	TCase *tc = mn_test_tcase(s, "writer", setup, teardown);

	MN_TEST_ADD(tc, test_writes_the_state_at_submission,
	            test_newer_snapshot_replaces_the_waiting_one);
	return mn_test_run(s);
}
