/* test_keep.c - keeping the best checkpoints (evaluator/keep.c) on real files. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "best.h"
#include "ckptdir.h"
#include "keep.h"
#include "model.h"
#include "train.h"
#include "util.h"

#include "mn_test.h"
#include "mn_test_threads.h"

#define N_EX   40
#define IN_DIM 16
#define OUT    4
#define PREFIX "model.ckpt"

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[MN_TEST_DIRLEN], ckdir[PATH_MAX], bestdir[PATH_MAX];
static char err[MN_ERRLEN];
static struct mn_view data;
static struct mn_trainer *trainer;
static struct mne_pick_params eval;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(ckdir, sizeof(ckdir), "%s/ckpt", tmpdir);
	snprintf(bestdir, sizeof(bestdir), "%s/best", tmpdir);
	ck_assert_int_eq(mkdir(ckdir, 0755), 0);
	trainer = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	eval = (struct mne_pick_params){.data = &data, .use_ema = true};
}

static void teardown(void)
{
	mn_trainer_free(trainer);
	trainer = NULL;
	mn_test_rmtree(tmpdir);
}

static const char *in(const char *dir, int64_t step)
{
	static char bufs[4][PATH_MAX + 64];
	static int next;
	char *b = bufs[next++ % 4];

	snprintf(b, sizeof(bufs[0]), "%s/" PREFIX "-%lld.safetensors", dir, (long long)step);
	return b;
}

/* Trains up to step and publishes a checkpoint of it into dir. */
static void publish_step(const char *dir, int64_t step)
{
	mn_test_publish_step(trainer, dir, PREFIX, step);
}

static struct mne_keep *open_keep(size_t keep)
{
	struct mne_keep_params p = {
	    .dir = bestdir, .keep = keep, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = NULL;

	ck_assert_msg(mne_keep_open(&p, &k, err, sizeof(err)) == 0, "%s", err);
	return k;
}

/* Offers the checkpoint of step in ckdir as if it had evaluated to accuracy. */
static int offer(struct mne_keep *k, int64_t step, double accuracy)
{
	struct mne_pick_result r = {.step = step,
	                            .eval = {.accuracy = accuracy, .loss = 1 - accuracy}};
	int fd, rc;

	snprintf(r.name, sizeof(r.name), "%s", mn_basename(in(ckdir, step)));
	r.done_ns = mn_realtime_ns();
	fd = open(in(ckdir, step), O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	rc = mne_keep_offer(k, fd, in(ckdir, step), &r, err, sizeof(err));
	close(fd);
	return rc;
}

/* best.json lists exactly these steps, in this order, and best_dir holds exactly their files. */
static void assert_set(const int64_t *steps, size_t n)
{
	struct mn_best_entry *e = NULL;
	size_t m = 0;

	ck_assert_msg(mn_best_load(bestdir, &e, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(m, n);
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(e[i].step, steps[i]);
		ck_assert_str_eq(e[i].file, mn_basename(in(bestdir, steps[i])));
		ck_assert_int_eq(access(in(bestdir, steps[i]), R_OK), 0);
	}
	free(e);
	ck_assert_uint_eq(mn_test_count_entries(bestdir), n + 1);
}

static const char *tpath_best(void)
{
	static char buf[PATH_MAX + 16];

	snprintf(buf, sizeof(buf), "%s/best.json", bestdir);
	return buf;
}

static bool same_inode(const char *a, const char *b)
{
	struct stat sa, sb;

	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
	       sa.st_dev == sb.st_dev;
}

START_TEST(top_k_with_ties_to_the_earlier_step)
{
	struct mne_keep *k = open_keep(2);

	for (int64_t s = 1; s <= 5; s++)
		publish_step(ckdir, s);
	ck_assert_int_eq(offer(k, 1, 0.5), 1);
	ck_assert_int_eq(offer(k, 2, 0.75), 1);
	assert_set((int64_t[]){2, 1}, 2);
	/* Ties with 2, beats 1: 1 falls out and its file goes. */
	ck_assert_int_eq(offer(k, 3, 0.75), 1);
	assert_set((int64_t[]){2, 3}, 2);
	/* Ties with 3 but is later: not kept. Worse: not kept. */
	ck_assert_int_eq(offer(k, 4, 0.75), 0);
	ck_assert_int_eq(offer(k, 5, 0.25), 0);
	assert_set((int64_t[]){2, 3}, 2);
	/* The same file again, no better: nothing changes. */
	ck_assert_int_eq(offer(k, 2, 0.75), 0);
	ck_assert_uint_eq(mne_keep_count(k), 2);
	/*
	 * The same file better (a restart that evaluates raw weights now):
	 * its record improves; the link it already is stays, and no
	 * temporary file is left beside it.
	 */
	ck_assert_int_eq(offer(k, 3, 0.8), 1);
	assert_set((int64_t[]){3, 2}, 2);
	/* Linked on the same filesystem. */
	ck_assert(same_inode(in(bestdir, 2), in(ckdir, 2)));
	mne_keep_free(k);
}
END_TEST

/* The evaluated file is what is kept, even when its name was replaced or deleted since. */
START_TEST(copies_the_evaluated_file_when_the_name_moved_on)
{
	struct mne_keep *k = open_keep(3);
	struct mne_pick_result r = {.step = 7, .eval = {.accuracy = 0.5}};
	char *want, *got;
	size_t wlen, glen;
	int fd;

	publish_step(ckdir, 7);
	ck_assert_int_eq(mn_read_file(in(ckdir, 7), 1 << 20, &want, &wlen, err, sizeof(err)), 0);
	fd = open(in(ckdir, 7), O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	/* Another file under the name. */
	ck_assert_int_eq(unlink(in(ckdir, 7)), 0);
	mn_test_write_file(in(ckdir, 7), "impostor", 8);
	snprintf(r.name, sizeof(r.name), "%s", mn_basename(in(ckdir, 7)));
	ck_assert_int_eq(mne_keep_offer(k, fd, in(ckdir, 7), &r, err, sizeof(err)), 1);
	ck_assert_int_eq(mn_read_file(in(bestdir, 7), 1 << 20, &got, &glen, err, sizeof(err)), 0);
	ck_assert_uint_eq(glen, wlen);
	ck_assert_int_eq(memcmp(got, want, wlen), 0);
	ck_assert(!same_inode(in(bestdir, 7), in(ckdir, 7)));
	free(got);
	/* Retention got there first: no name at all. */
	ck_assert_int_eq(unlink(in(ckdir, 7)), 0);
	r.step = 8;
	snprintf(r.name, sizeof(r.name), "%s", mn_basename(in(ckdir, 8)));
	r.eval.accuracy = 0.6;
	ck_assert_int_eq(mne_keep_offer(k, fd, in(ckdir, 8), &r, err, sizeof(err)), 1);
	ck_assert_int_eq(mn_read_file(in(bestdir, 8), 1 << 20, &got, &glen, err, sizeof(err)), 0);
	ck_assert_uint_eq(glen, wlen);
	ck_assert_int_eq(memcmp(got, want, wlen), 0);
	free(got);
	free(want);
	close(fd);
	assert_set((int64_t[]){8, 7}, 2);
	mne_keep_free(k);
}
END_TEST

START_TEST(a_failed_publish_leaves_the_previous_set)
{
	struct mne_keep *k = open_keep(1);
	char tmp[PATH_MAX + 64], *before, *after;
	size_t blen, alen;

	publish_step(ckdir, 1);
	publish_step(ckdir, 2);
	ck_assert_int_eq(offer(k, 1, 0.5), 1);
	ck_assert_int_eq(mn_read_file(tpath_best(), 1 << 16, &before, &blen, err, sizeof(err)), 0);
	/* A directory where the temporary file must go: neither link nor copy can make it. */
	snprintf(tmp, sizeof(tmp), "%s/." PREFIX "-2.safetensors.tmp", bestdir);
	ck_assert_int_eq(mkdir(tmp, 0755), 0);
	ck_assert_int_lt(offer(k, 2, 0.9), 0);
	ck_assert_ptr_nonnull(strstr(err, "the previous best stay"));
	ck_assert_int_eq(rmdir(tmp), 0);
	ck_assert_int_eq(mn_read_file(tpath_best(), 1 << 16, &after, &alen, err, sizeof(err)), 0);
	ck_assert_uint_eq(alen, blen);
	ck_assert_int_eq(memcmp(before, after, blen), 0);
	assert_set((int64_t[]){1}, 1);
	free(before);
	free(after);
	/* And the next offer works. */
	ck_assert_int_eq(offer(k, 2, 0.9), 1);
	assert_set((int64_t[]){2}, 1);
	mne_keep_free(k);
}
END_TEST

START_TEST(reopening_keeps_and_repairs_the_set)
{
	struct mne_keep *k = open_keep(3);

	for (int64_t s = 1; s <= 3; s++) {
		publish_step(ckdir, s);
		ck_assert_int_eq(offer(k, s, 0.1 * (double)s), 1);
	}
	mne_keep_free(k);
	/* A restart: the same set. */
	k = open_keep(3);
	ck_assert_uint_eq(mne_keep_count(k), 3);
	assert_set((int64_t[]){3, 2, 1}, 3);
	mne_keep_free(k);
	/* A listed file gone, a file best.json does not list (a crash before it was written). */
	ck_assert_int_eq(unlink(in(bestdir, 2)), 0);
	ck_assert_int_eq(link(in(ckdir, 1), in(bestdir, 9)), 0);
	k = open_keep(3);
	assert_set((int64_t[]){3, 1}, 2);
	mne_keep_free(k);
	/* keep_best lowered: the surplus goes. */
	k = open_keep(1);
	assert_set((int64_t[]){3}, 1);
	mne_keep_free(k);
}
END_TEST

START_TEST(a_corrupt_best_json_is_rebuilt_by_evaluating)
{
	struct mne_pick_result r;
	struct mne_keep *k;
	struct mn_best_entry first;
	double acc[3];

	ck_assert_int_eq(mkdir(bestdir, 0755), 0);
	for (int64_t s = 1; s <= 3; s++) {
		struct mn_ckptdir_entry e = {.step = s * 10};

		publish_step(bestdir, s * 10);
		snprintf(e.name, sizeof(e.name), "%s", mn_basename(in(bestdir, s * 10)));
		ck_assert_int_eq(mne_pick_evaluate_file(&eval, bestdir, &e, &r), 0);
		acc[s - 1] = r.eval.accuracy;
	}
	mn_test_write_file(tpath_best(), "{\"best\": [", 10);
	k = open_keep(2);
	ck_assert_uint_eq(mne_keep_count(k), 2);
	ck_assert_int_eq(mn_best_first(bestdir, &first, err, sizeof(err)), 0);
	for (int i = 0; i < 3; i++)
		ck_assert(first.accuracy >= acc[i]);
	/* The third file fell out; checkpoint.json (of mn_model_save) is none of keep's business.
	 */
	ck_assert_uint_eq(mn_test_count_entries(bestdir), 4);
	ck_assert_int_eq(access(in(bestdir, 10), F_OK) + access(in(bestdir, 20), F_OK) +
	                     access(in(bestdir, 30), F_OK),
	                 -1);
	mne_keep_free(k);
	/* Missing with checkpoints there: rebuilt too. */
	ck_assert_int_eq(unlink(tpath_best()), 0);
	k = open_keep(2);
	ck_assert_uint_eq(mne_keep_count(k), 2);
	ck_assert_int_eq(access(tpath_best(), R_OK), 0);
	mne_keep_free(k);
}
END_TEST

/*
 * Rebuilding best.json when the machine cannot evaluate (no thread for the
 * forward pass) fails without removing a single file: they are not bad.
 */
START_TEST(a_rebuild_that_cannot_evaluate_removes_nothing)
{
	struct mne_keep_params p = {
	    .dir = bestdir, .keep = 1, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = NULL;

	ck_assert_int_eq(mkdir(bestdir, 0755), 0);
	publish_step(bestdir, 10);
	publish_step(bestdir, 20);
	mn_test_write_file(tpath_best(), "{\"best\": [", 10);
	eval.threads = 2;
	mn_test_fail_threads = true;
	ck_assert_int_eq(mne_keep_open(&p, &k, err, sizeof(err)), -EAGAIN);
	mn_test_fail_threads = false;
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(err, "cannot rebuild"));
	ck_assert_int_eq(access(in(bestdir, 10), F_OK), 0);
	ck_assert_int_eq(access(in(bestdir, 20), F_OK), 0);
	/* Once it can, the rebuild keeps one and removes the other. */
	k = open_keep(1);
	ck_assert_uint_eq(mne_keep_count(k), 1);
	ck_assert_int_eq(access(in(bestdir, 10), F_OK) + access(in(bestdir, 20), F_OK), -1);
	mne_keep_free(k);
}
END_TEST

START_TEST(best_dir_must_not_be_checkpoint_dir)
{
	struct mne_keep_params p = {
	    .dir = ckdir, .keep = 1, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = NULL;

	ck_assert_int_eq(mne_keep_open(&p, &k, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(err, "eval.best_dir is checkpoint.dir"));
	p.dir = bestdir;
	p.keep = 0;
	ck_assert_int_eq(mne_keep_open(&p, &k, err, sizeof(err)), -EINVAL);
	mne_keep_free(NULL);
}
END_TEST

/*
 * best_dir set to another run's checkpoint.dir (a copied configuration): a
 * rebuild there would have removed every checkpoint of that run but the
 * best, and kept files would replace its own of the same name. Whatever
 * trainer wrote it, running or not, its lock file says whose it is.
 */
START_TEST(best_dir_must_not_be_a_trainer_s_directory)
{
	char other[PATH_MAX + 16];
	struct mne_keep_params p = {
	    .dir = other, .keep = 1, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = NULL;
	int fd;

	snprintf(other, sizeof(other), "%s/other-run", tmpdir);
	ck_assert_int_eq(mkdir(other, 0755), 0);
	fd = mn_ckptdir_lock(other, err, sizeof(err));
	ck_assert_msg(fd >= 0, "%s", err);
	ck_assert_int_eq(close(fd), 0);
	for (int64_t s = 1; s <= 3; s++)
		publish_step(other, s);
	ck_assert_int_eq(mne_keep_open(&p, &k, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(err, other));
	ck_assert_ptr_nonnull(strstr(err, "checkpoint.dir"));
	for (int64_t s = 1; s <= 3; s++)
		ck_assert_int_eq(access(in(other, s), F_OK), 0);
	ck_assert(!mn_test_exists(other, "best.json"));
}
END_TEST

/*
 * Two evaluators on one best_dir (two runs, one copied configuration) each
 * rewrote best.json with its own set: one run's best went unlisted, and the
 * next start removed it. One keeper per best_dir: the second is refused,
 * naming the directory, until the first is gone.
 */
START_TEST(one_keeper_per_best_dir)
{
	struct mne_keep_params p = {
	    .dir = bestdir, .keep = 1, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = open_keep(1), *k2 = NULL;

	publish_step(ckdir, 1);
	ck_assert_int_eq(offer(k, 1, 0.5), 1);
	ck_assert_int_eq(mne_keep_open(&p, &k2, err, sizeof(err)), -EWOULDBLOCK);
	ck_assert_ptr_null(k2);
	ck_assert_ptr_nonnull(strstr(err, bestdir));
	ck_assert_ptr_nonnull(strstr(err, "another mnist-eval"));
	assert_set((int64_t[]){1}, 1);
	/* best_dir removed and made again by the next offer: still this keeper's alone. */
	mn_test_rmtree(bestdir);
	publish_step(ckdir, 2);
	ck_assert_msg(offer(k, 2, 0.5) == 1, "%s", err);
	ck_assert_int_eq(mne_keep_open(&p, &k2, err, sizeof(err)), -EWOULDBLOCK);
	mne_keep_free(k);
	k = open_keep(1);
	assert_set((int64_t[]){2}, 1);
	mne_keep_free(k);
}
END_TEST

/*
 * best_dir removed while the evaluator runs (rm -rf, a cleanup), or a kept
 * file deleted: what is gone is no longer the best kept, so the next
 * evaluation is kept again, in a best_dir made afresh, as a restart would.
 * best.json deleted is written again.
 */
START_TEST(a_removed_best_dir_or_file_is_kept_again)
{
	struct mne_keep *k = open_keep(2);

	for (int64_t s = 1; s <= 3; s++)
		publish_step(ckdir, s);
	ck_assert_int_eq(offer(k, 1, 0.75), 1);
	assert_set((int64_t[]){1}, 1);
	mn_test_rmtree(bestdir);
	ck_assert_msg(offer(k, 2, 0.5) == 1, "%s", err);
	assert_set((int64_t[]){2}, 1);
	ck_assert_int_eq(unlink(in(bestdir, 2)), 0);
	ck_assert_msg(offer(k, 3, 0.25) == 1, "%s", err);
	assert_set((int64_t[]){3}, 1);
	/* best.json deleted: written again at the next offer, even one that keeps nothing. */
	ck_assert_int_eq(unlink(tpath_best()), 0);
	ck_assert_msg(offer(k, 3, 0.25) == 0, "%s", err); /* already kept: nothing new */
	assert_set((int64_t[]){3}, 1);
	ck_assert_uint_eq(mne_keep_count(k), 1);
	mne_keep_free(k);
}
END_TEST

/*
 * best.json replaced by a symbolic link to a list that is not this
 * directory's (an empty one here): it was followed, and every kept file it
 * did not name was removed before its rewrite was refused. Now it is
 * refused as it is read: nothing is removed.
 */
START_TEST(a_best_json_symlink_removes_nothing)
{
	struct mne_keep_params p = {
	    .dir = bestdir, .keep = 1, .prefix = PREFIX, .ckpt_dir = ckdir, .eval = &eval};
	struct mne_keep *k = open_keep(1);
	char elsewhere[PATH_MAX + 32];

	publish_step(ckdir, 1);
	ck_assert_int_eq(offer(k, 1, 0.5), 1);
	mne_keep_free(k);
	k = NULL;
	snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere.json", tmpdir);
	mn_test_write_file(elsewhere, "{\"best\": []}", 12);
	ck_assert_int_eq(unlink(tpath_best()), 0);
	ck_assert_int_eq(symlink(elsewhere, tpath_best()), 0);
	ck_assert_int_lt(mne_keep_open(&p, &k, err, sizeof(err)), 0);
	ck_assert_ptr_null(k);
	ck_assert_msg(strstr(err, tpath_best()) != NULL, "%s", err);
	ck_assert_int_eq(access(in(bestdir, 1), F_OK), 0);
}
END_TEST

/*
 * A diverged checkpoint (a non-finite validation loss, accuracy at chance)
 * is never the best, even of an empty set: best.json's loss is a number
 * every reader requires, and a NaN model is no model to serve. A rebuild
 * leaves such a file out too.
 */
START_TEST(a_diverged_checkpoint_is_never_kept)
{
	struct mne_keep *k = open_keep(3);
	struct mne_pick_result r = {.step = 2, .eval = {.accuracy = 0.9, .loss = NAN}};
	struct mn_trainer_state ts;
	struct mn_best_entry first;
	int fd;

	for (int64_t s = 1; s <= 3; s++)
		publish_step(ckdir, s);
	snprintf(r.name, sizeof(r.name), "%s", mn_basename(in(ckdir, 2)));
	r.done_ns = mn_realtime_ns();
	fd = open(in(ckdir, 2), O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	/* Into an empty set: nothing is kept, and no best.json lists it. */
	ck_assert_int_eq(mne_keep_offer(k, fd, in(ckdir, 2), &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(mne_keep_count(k), 0);
	ck_assert(!mn_test_exists(bestdir, mn_basename(in(bestdir, 2))));
	ck_assert_int_eq(offer(k, 1, 0.5), 1);
	r.eval.loss = INFINITY;
	ck_assert_int_eq(mne_keep_offer(k, fd, in(ckdir, 2), &r, err, sizeof(err)), 0);
	r.eval.loss = -INFINITY;
	ck_assert_int_eq(mne_keep_offer(k, fd, in(ckdir, 2), &r, err, sizeof(err)), 0);
	close(fd);
	assert_set((int64_t[]){1}, 1);
	mne_keep_free(k);
	/* A rebuild evaluates a NaN model in best_dir and leaves it out. */
	mn_trainer_state(trainer, &ts);
	for (size_t i = 0; i < ts.nparams; i++)
		ts.params[i] = ts.shadow[i] = NAN;
	publish_step(bestdir, 5);
	ck_assert_int_eq(unlink(tpath_best()), 0);
	k = open_keep(3);
	ck_assert_uint_eq(mne_keep_count(k), 1);
	ck_assert_msg(mn_best_first(bestdir, &first, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(first.step, 1);
	ck_assert(!mn_test_exists(bestdir, mn_basename(in(bestdir, 5))));
	mne_keep_free(k);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("keep");
	TCase *tc = mn_test_tcase(s, "keep", setup, teardown);

	MN_TEST_ADD(tc, top_k_with_ties_to_the_earlier_step,
	            copies_the_evaluated_file_when_the_name_moved_on,
	            a_failed_publish_leaves_the_previous_set, reopening_keeps_and_repairs_the_set,
	            a_corrupt_best_json_is_rebuilt_by_evaluating,
	            a_rebuild_that_cannot_evaluate_removes_nothing,
	            best_dir_must_not_be_checkpoint_dir, best_dir_must_not_be_a_trainer_s_directory,
	            one_keeper_per_best_dir, a_best_json_symlink_removes_nothing,
	            a_removed_best_dir_or_file_is_kept_again, a_diverged_checkpoint_is_never_kept);
	return mn_test_run(s);
}
