/* Unit tests for ckptdir.[ch]: file names, scan, checkpoint.json and retention. */
#include "ckptdir.h"
#include "util.h"

#include <cJSON.h>
#include <sched.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mn_test.h"

START_TEST(test_filename)
{
	static const struct {
		const char *name;
		bool ok;
		int64_t step;
	} cases[] = {
	    {"model.ckpt-0.safetensors", true, 0},
	    {"model.ckpt-3000.safetensors", true, 3000},
	    {"model.ckpt-9223372036854775807.safetensors", true, INT64_MAX},
	    {"model.ckpt-9223372036854775808.safetensors", false, 0},
	    {"model.ckpt-99999999999999999999.safetensors", false, 0},
	    {"model.ckpt-01.safetensors", false, 0},
	    {"model.ckpt-00.safetensors", false, 0},
	    {"model.ckpt--1.safetensors", false, 0},
	    {"model.ckpt-+1.safetensors", false, 0},
	    {"model.ckpt- 1.safetensors", false, 0},
	    {"model.ckpt-1a.safetensors", false, 0},
	    {"model.ckpt-.safetensors", false, 0},
	    {"model.ckpt-1.safetensors.tmp", false, 0},
	    {"model.ckpt-1.safetensor", false, 0},
	    {"model.ckpt-1.safetensors~", false, 0},
	    {".model.ckpt-1.safetensors.tmp", false, 0},
	    {"model.ckpt1.safetensors", false, 0},
	    {"model.ckpt.safetensors", false, 0},
	    {"other-1.safetensors", false, 0},
	    {"model.ckpt-1-2.safetensors", false, 0},
	    {"", false, 0},
	};
	char buf[64];
	int64_t s;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		s = -1;
		ck_assert_msg(mn_ckptdir_filename_parse("model.ckpt", cases[i].name, &s) ==
		                  cases[i].ok,
		              "%s", cases[i].name);
		if (cases[i].ok)
			ck_assert_int_eq(s, cases[i].step);
	}
	ck_assert(mn_ckptdir_filename_parse("a-b", "a-b-5.safetensors", &s) && s == 5);

	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", 3000, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "model.ckpt-3000.safetensors");
	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", 3000, buf, 27), -ENAMETOOLONG);
	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", 3000, buf, 28), 0);
	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", -1, buf, sizeof(buf)), -EINVAL);
	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", INT64_MAX, buf, sizeof(buf)), 0);
	ck_assert(mn_ckptdir_filename_parse("model.ckpt", buf, &s) && s == INT64_MAX);
}
END_TEST

static void touch(const char *dir, const char *name)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	mn_test_write_file(path, NULL, 0);
}

static void touch_step(const char *dir, int64_t s)
{
	char name[64];

	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", s, name, sizeof(name)), 0);
	touch(dir, name);
}

START_TEST(test_scan)
{
	static const char *noise[] = {
	    ".model.ckpt-7.safetensors.tmp",
	    ".model.ckpt-8.safetensors",
	    "model.ckpt-01.safetensors",
	    "other-3.safetensors",
	    "checkpoint.json",
	    "model.ckpt-3.safetensors.tmp",
	};
	char err[MN_ERRLEN], path[PATH_MAX];
	struct mn_ckptdir_entry *e = NULL;
	char dir[MN_TEST_DIRLEN];
	size_t n = 99;

	mn_test_tmpdir(dir, sizeof(dir));
	ck_assert_int_eq(mn_ckptdir_scan(dir, "model.ckpt", &e, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 0);
	free(e);
	touch_step(dir, 10000);
	touch_step(dir, 900);
	touch_step(dir, 5);
	for (size_t i = 0; i < sizeof(noise) / sizeof(noise[0]); i++)
		touch(dir, noise[i]);
	ck_assert_int_eq(mn_ckptdir_scan(dir, "model.ckpt", &e, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(e[0].name, "model.ckpt-5.safetensors");
	ck_assert_int_eq(e[0].step, 5);
	ck_assert_str_eq(e[1].name, "model.ckpt-900.safetensors");
	ck_assert_int_eq(e[1].step, 900);
	ck_assert_str_eq(e[2].name, "model.ckpt-10000.safetensors");
	ck_assert_int_eq(e[2].step, 10000);
	free(e);

	snprintf(path, sizeof(path), "%s/nope", dir);
	ck_assert_int_eq(mn_ckptdir_scan(path, "model.ckpt", &e, &n, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nope"));
	mn_test_rmtree(dir);
}
END_TEST

/* Reads checkpoint.json and checks it against latest and the kept steps. */
static void assert_index(const char *dir, const char *latest, const int64_t *kept, size_t nkept)
{
	char path[PATH_MAX], err[MN_ERRLEN], *text, got[MN_CKPT_MAX_NAME];
	cJSON *root, *all;
	size_t len;

	snprintf(path, sizeof(path), "%s/%s", dir, MN_CKPTDIR_INDEX);
	ck_assert_int_eq(mn_read_file(path, 1 << 20, &text, &len, err, sizeof(err)), 0);
	root = cJSON_Parse(text);
	ck_assert_ptr_nonnull(root);
	ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(root, "latest")->valuestring, latest);
	all = cJSON_GetObjectItemCaseSensitive(root, "all");
	ck_assert_int_eq(cJSON_GetArraySize(all), (int)nkept);
	for (size_t i = 0; i < nkept; i++) {
		char name[64];

		mn_ckptdir_filename("model.ckpt", kept[i], name, sizeof(name));
		ck_assert_str_eq(cJSON_GetArrayItem(all, (int)i)->valuestring, name);
		ck_assert(mn_test_exists(dir, name));
	}
	cJSON_Delete(root);
	free(text);
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)), 0);
	ck_assert_str_eq(got, latest);
}

START_TEST(test_publish_retention)
{
	static const int64_t newest3[] = {5000, 6000, 7000};
	char err[MN_ERRLEN] = "";
	char dir[MN_TEST_DIRLEN];
	int rc;

	mn_test_tmpdir(dir, sizeof(dir));
	for (int64_t s = 1000; s <= 7000; s += 1000)
		touch_step(dir, s);
	touch(dir, "other-1.safetensors");
	touch(dir, ".model.ckpt-8000.safetensors.tmp");
	rc = mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-7000.safetensors", 3, err,
	                              sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	assert_index(dir, "model.ckpt-7000.safetensors", newest3, 3);
	for (int64_t s = 1000; s <= 4000; s += 1000) {
		char name[64];

		mn_ckptdir_filename("model.ckpt", s, name, sizeof(name));
		ck_assert_msg(!mn_test_exists(dir, name), "%s kept", name);
	}
	/* Other files are not retention's business. */
	ck_assert(mn_test_exists(dir, "other-1.safetensors"));
	ck_assert(mn_test_exists(dir, ".model.ckpt-8000.safetensors.tmp"));
	ck_assert_uint_eq(mn_test_count_entries(dir), 6);

	/* Publishing again is idempotent. */
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-7000.safetensors",
	                                          3, err, sizeof(err)),
	                 0);
	assert_index(dir, "model.ckpt-7000.safetensors", newest3, 3);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_publish_keep_all)
{
	static const int64_t all[] = {1000, 2000, 3000, 4000, 5000, 6000, 7000};
	char err[MN_ERRLEN] = "";
	char dir[MN_TEST_DIRLEN];

	mn_test_tmpdir(dir, sizeof(dir));
	for (int64_t s = 1000; s <= 7000; s += 1000)
		touch_step(dir, s);
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-7000.safetensors",
	                                          0, err, sizeof(err)),
	                 0);
	assert_index(dir, "model.ckpt-7000.safetensors", all, 7);
	/* max_to_keep larger than what exists also keeps all. */
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-7000.safetensors",
	                                          100, err, sizeof(err)),
	                 0);
	assert_index(dir, "model.ckpt-7000.safetensors", all, 7);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_publish_latest_not_newest)
{
	static const int64_t kept[] = {2000, 6000, 7000}, only[] = {2000};
	char err[MN_ERRLEN] = "";
	char dir[MN_TEST_DIRLEN];

	mn_test_tmpdir(dir, sizeof(dir));
	for (int64_t s = 1000; s <= 7000; s += 1000)
		touch_step(dir, s);
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-2000.safetensors",
	                                          3, err, sizeof(err)),
	                 0);
	assert_index(dir, "model.ckpt-2000.safetensors", kept, 3);
	ck_assert_uint_eq(mn_test_count_entries(dir), 4);
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-2000.safetensors",
	                                          1, err, sizeof(err)),
	                 0);
	assert_index(dir, "model.ckpt-2000.safetensors", only, 1);
	ck_assert_uint_eq(mn_test_count_entries(dir), 2);

	/* An index never names a file that is not there, nor a path. */
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt", "model.ckpt-9000.safetensors",
	                                          3, err, sizeof(err)),
	                 -ENOENT);
	ck_assert_int_eq(mn_ckptdir_publish_index(dir, "model.ckpt",
	                                          "../model.ckpt-2000.safetensors", 3, err,
	                                          sizeof(err)),
	                 -EINVAL);
	assert_index(dir, "model.ckpt-2000.safetensors", only, 1);
	mn_test_rmtree(dir);
}
END_TEST

/* Publishes step through v after creating its file, as the trainer's writer does. */
static void publish_step(struct mn_ckptdir_versions *v, const char *dir, int64_t step,
                         size_t max_to_keep)
{
	char err[MN_ERRLEN] = "";

	touch_step(dir, step);
	ck_assert_msg(mn_ckptdir_versions_publish(v, step, max_to_keep, err, sizeof(err)) == 0,
	              "%s", err);
}

START_TEST(test_versions_retention_over_time)
{
	static const int64_t kept[] = {8, 9, 10};
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN];
	struct mn_ckptdir_versions *v;

	mn_test_tmpdir(dir, sizeof(dir));
	touch_step(dir, 1);
	ck_assert_int_eq(mn_ckptdir_versions_open(dir, "model.ckpt", 1, &v, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_ckptdir_versions_count(v), 1);
	for (int64_t s = 2; s <= 10; s++)
		publish_step(v, dir, s, 3);
	assert_index(dir, "model.ckpt-10.safetensors", kept, 3);
	ck_assert_uint_eq(mn_test_count_entries(dir), 4);
	ck_assert_uint_eq(mn_ckptdir_versions_count(v), 3);
	/* Republishing the same step (a save right after a periodic one) changes nothing. */
	publish_step(v, dir, 10, 3);
	assert_index(dir, "model.ckpt-10.safetensors", kept, 3);
	/* The file must be there: an index never names a missing one. */
	ck_assert_int_eq(mn_ckptdir_versions_publish(v, 11, 3, err, sizeof(err)), -ENOENT);
	assert_index(dir, "model.ckpt-10.safetensors", kept, 3);
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_versions_listed_once)
{
	static const int64_t kept[] = {3, 4};
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN];
	struct mn_ckptdir_versions *v;

	mn_test_tmpdir(dir, sizeof(dir));
	touch_step(dir, 2);
	ck_assert_int_eq(mn_ckptdir_versions_open(dir, "model.ckpt", -1, &v, err, sizeof(err)), 0);
	/*
	 * A file that appears behind the one writer's back is not seen: the
	 * directory is not listed again at each publish (what made keep-all with
	 * every_steps 1 slower at every step).
	 */
	touch_step(dir, 1);
	publish_step(v, dir, 3, 2);
	publish_step(v, dir, 4, 2);
	assert_index(dir, "model.ckpt-4.safetensors", kept, 2);
	ck_assert(mn_test_exists(dir, "model.ckpt-1.safetensors"));
	ck_assert(!mn_test_exists(dir, "model.ckpt-2.safetensors"));
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_versions_keep_all_index_bounded)
{
	const int64_t n = 2 * MN_CKPTDIR_INDEX_MAX + 500;
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN], path[PATH_MAX], *text, name[64];
	struct mn_ckptdir_versions *v;
	cJSON *root, *all;
	size_t len;

	mn_test_tmpdir(dir, sizeof(dir));
	ck_assert_int_eq(mn_ckptdir_versions_open(dir, "model.ckpt", -1, &v, err, sizeof(err)), 0);
	for (int64_t s = 1; s <= n; s++)
		publish_step(v, dir, s, 0);
	ck_assert_uint_eq(mn_test_count_entries(dir), (size_t)n + 1);
	/* What it remembers, and what the index lists, stay bounded. */
	ck_assert_uint_le(mn_ckptdir_versions_count(v), 2 * MN_CKPTDIR_INDEX_MAX);
	snprintf(path, sizeof(path), "%s/%s", dir, MN_CKPTDIR_INDEX);
	ck_assert_int_eq(mn_read_file(path, 1 << 20, &text, &len, err, sizeof(err)), 0);
	root = cJSON_Parse(text);
	all = cJSON_GetObjectItemCaseSensitive(root, "all");
	ck_assert_int_eq(cJSON_GetArraySize(all), MN_CKPTDIR_INDEX_MAX);
	mn_ckptdir_filename("model.ckpt", n - MN_CKPTDIR_INDEX_MAX + 1, name, sizeof(name));
	ck_assert_str_eq(cJSON_GetArrayItem(all, 0)->valuestring, name);
	mn_ckptdir_filename("model.ckpt", n, name, sizeof(name));
	ck_assert_str_eq(cJSON_GetArrayItem(all, MN_CKPTDIR_INDEX_MAX - 1)->valuestring, name);
	ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(root, "latest")->valuestring, name);
	cJSON_Delete(root);
	free(text);
	/* Keeping fewer later deletes the files keep-all stopped remembering too. */
	publish_step(v, dir, n + 1, 2);
	ck_assert_uint_eq(mn_test_count_entries(dir), 3);
	ck_assert(mn_test_exists(dir, name));
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

/* Sets or clears a file's immutable flag; false where the file system has none. */
static bool set_immutable(const char *path, bool on)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), flags = 0;
	bool ok;

	if (fd < 0)
		return false;
	ok = ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
	flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
	ok = ok && ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
	close(fd);
	return ok;
}

/*
 * A directory whose step 1 cannot be removed (immutable), opened for
 * versions with step 1 the newest good one; then step 3 is written. NULL
 * when the filesystem has no immutable files (tmpfs): nothing to try then.
 */
static struct mn_ckptdir_versions *open_with_immutable_step1(char *dir, size_t dirlen, char *path,
                                                             size_t pathlen)
{
	struct mn_ckptdir_versions *v;
	char err[MN_ERRLEN] = "";

	mn_test_tmpdir(dir, dirlen);
	touch_step(dir, 1);
	snprintf(path, pathlen, "%s/model.ckpt-1.safetensors", dir);
	if (!set_immutable(path, true)) {
		mn_test_rmtree(dir);
		return NULL;
	}
	ck_assert_int_eq(mn_ckptdir_versions_open(dir, "model.ckpt", 1, &v, err, sizeof(err)), 0);
	touch_step(dir, 3);
	return v;
}

START_TEST(test_versions_retention_failure_is_not_a_failed_publish)
{
	static const int64_t kept[] = {3};
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN], path[PATH_MAX];
	struct mn_ckptdir_versions *v =
	    open_with_immutable_step1(dir, sizeof(dir), path, sizeof(path));

	if (!v)
		return;
	/* Step 1 cannot go (not even root may unlink an immutable file), yet 3 is published. */
	ck_assert_msg(mn_ckptdir_versions_publish(v, 3, 1, err, sizeof(err)) == 0, "%s", err);
	assert_index(dir, "model.ckpt-3.safetensors", kept, 1);
	ck_assert(mn_test_exists(dir, "model.ckpt-1.safetensors"));
	ck_assert(set_immutable(path, false));
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

/*
 * A file retention could not remove stays on the writer's list: once it
 * can go, the next publish removes it (a directory listing would have
 * found it again too).
 */
START_TEST(test_versions_retention_retries_a_file_it_could_not_remove)
{
	static const int64_t kept[] = {4};
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN], path[PATH_MAX];
	struct mn_ckptdir_versions *v =
	    open_with_immutable_step1(dir, sizeof(dir), path, sizeof(path));

	if (!v)
		return;
	ck_assert_msg(mn_ckptdir_versions_publish(v, 3, 1, err, sizeof(err)) == 0, "%s", err);
	ck_assert(mn_test_exists(dir, "model.ckpt-1.safetensors"));
	ck_assert(set_immutable(path, false));
	touch_step(dir, 4);
	ck_assert_msg(mn_ckptdir_versions_publish(v, 4, 1, err, sizeof(err)) == 0, "%s", err);
	assert_index(dir, "model.ckpt-4.safetensors", kept, 1);
	ck_assert(!mn_test_exists(dir, "model.ckpt-1.safetensors"));
	ck_assert(!mn_test_exists(dir, "model.ckpt-3.safetensors"));
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_versions_free_oldest)
{
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN], name[64];
	struct mn_ckptdir_versions *v;

	mn_test_tmpdir(dir, sizeof(dir));
	for (int64_t s = 1; s <= 5; s++)
		touch_step(dir, s);
	/* Resumed from 3 (4 and 5 were unusable, say): 3 is the newest good one. */
	ck_assert_int_eq(mn_ckptdir_versions_open(dir, "model.ckpt", 3, &v, err, sizeof(err)), 0);
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, 6, name, sizeof(name), err, sizeof(err)), 1);
	ck_assert_str_eq(name, "model.ckpt-1.safetensors");
	ck_assert(!mn_test_exists(dir, name));
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, 6, name, sizeof(name), err, sizeof(err)), 1);
	ck_assert_str_eq(name, "model.ckpt-2.safetensors");
	/* Never the newest good one, nor the step being written. */
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, 5, name, sizeof(name), err, sizeof(err)), 1);
	ck_assert_str_eq(name, "model.ckpt-4.safetensors");
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, 5, name, sizeof(name), err, sizeof(err)), 0);
	ck_assert(mn_test_exists(dir, "model.ckpt-3.safetensors"));
	ck_assert(mn_test_exists(dir, "model.ckpt-5.safetensors"));
	/* Once 5 is published it is the one kept, and 3 may go. */
	ck_assert_int_eq(mn_ckptdir_versions_publish(v, 5, 0, err, sizeof(err)), 0);
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, -1, name, sizeof(name), err, sizeof(err)), 1);
	ck_assert_str_eq(name, "model.ckpt-3.safetensors");
	ck_assert_int_eq(
	    mn_ckptdir_versions_free_oldest(v, -1, name, sizeof(name), err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_test_count_entries(dir), 2);
	mn_ckptdir_versions_free(v);
	mn_test_rmtree(dir);
}
END_TEST

static void write_index_text(const char *dir, const char *text, size_t len)
{
	char err[MN_ERRLEN];
	struct iovec iov = {.iov_base = (void *)text, .iov_len = len};

	ck_assert_int_eq(mn_write_atomic(dir, MN_CKPTDIR_INDEX, &iov, 1, 0644, err, sizeof(err)),
	                 0);
}

START_TEST(test_index_latest)
{
	static const char *bad[] = {
	    "",
	    "not json",
	    "[]",
	    "{}",
	    "{\"latest\": 5}",
	    "{\"latest\": null}",
	    "{\"latest\": \"\"}",
	    "{\"latest\": \"../x.safetensors\"}",
	    "{\"latest\": \"a/b\"}",
	    "{\"latest\": \".model.ckpt-1.safetensors.tmp\"}",
	    "{\"latest\": \"a\", \"latest\": \"b\"}",
	    "{\"latest\": \"a\", \"all\": 3}",
	    "{\"latest\": \"a\", \"all\": [1]}",
	    "{\"latest\": \"a\"} trailing",
	};
	char err[MN_ERRLEN], got[MN_CKPT_MAX_NAME], tiny[4];
	char dir[MN_TEST_DIRLEN], *big;

	mn_test_tmpdir(dir, sizeof(dir));
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)), -ENOENT);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_index_text(dir, bad[i], strlen(bad[i]));
		err[0] = '\0';
		ck_assert_msg(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)) ==
		                  -EINVAL,
		              "accepted %s", bad[i]);
		ck_assert_msg(strstr(err, MN_CKPTDIR_INDEX) != NULL, "%s", err);
	}
	write_index_text(dir, "{\"latest\": \"a\"}\0x", 17);
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)), -EINVAL);

	big = malloc((size_t)17 << 20);
	ck_assert_ptr_nonnull(big);
	memset(big, ' ', (size_t)17 << 20);
	memcpy(big, "{\"latest\": \"a\"}", 15);
	write_index_text(dir, big, (size_t)17 << 20);
	free(big);
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)), -EINVAL);

	write_index_text(dir, "{\"latest\": \"model.ckpt-5.safetensors\", \"all\": []}\n",
	                 strlen("{\"latest\": \"model.ckpt-5.safetensors\", \"all\": []}\n"));
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, got, sizeof(got), err, sizeof(err)), 0);
	ck_assert_str_eq(got, "model.ckpt-5.safetensors");
	ck_assert_int_eq(mn_ckptdir_index_latest(dir, tiny, sizeof(tiny), err, sizeof(err)),
	                 -ENAMETOOLONG);
	mn_test_rmtree(dir);
}
END_TEST

/* A checkpoint file of step in dir, bytes long (room on a small filesystem is what counts). */
static void write_step(const char *dir, int64_t s, size_t bytes)
{
	char name[64], path[PATH_MAX];
	void *data = calloc(1, bytes);

	ck_assert_ptr_nonnull(data);
	ck_assert_int_eq(mn_ckptdir_filename("model.ckpt", s, name, sizeof(name)), 0);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	mn_test_write_file(path, data, bytes);
	free(data);
}

/* Appends to dir/filler until its filesystem is full. */
static void fill_up(const char *dir)
{
	char path[PATH_MAX], page[4096] = {0};
	int fd;

	snprintf(path, sizeof(path), "%s/filler", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	ck_assert_int_ge(fd, 0);
	while (write(fd, page, sizeof(page)) > 0)
		;
	while (write(fd, page, 1) > 0)
		;
	close(fd);
}

/*
 * A 1 MiB tmpfs at a new directory in dir (written to mnt), in a mount
 * namespace of this test's own process, so that a failed test leaves no
 * mount behind; false if this process may not mount one (not root), and
 * the test has nothing to try.
 */
static bool small_fs(const char *dir, char *mnt, size_t len)
{
	snprintf(mnt, len, "%s/small", dir);
	ck_assert_int_eq(mkdir(mnt, 0700), 0);
	if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0) {
		fprintf(stderr, "test_ckptdir: cannot mount a tmpfs (%s): full-disk test not run\n",
		        strerror(errno));
		return false;
	}
	return true;
}

/*
 * The writer makes room for a checkpoint, but the index that names it needs
 * a page more: once the new file is in place it is the newest good
 * checkpoint, so files go (retention's own first, then the oldest, the
 * previous latest included) until checkpoint.json fits. A keep-all
 * directory keeps every file and the publish fails instead.
 */
START_TEST(test_versions_full_disk_index_gets_room)
{
	char err[MN_ERRLEN] = "", dir[MN_TEST_DIRLEN], mnt[MN_TEST_DIRLEN + 16], latest[64];
	struct mn_ckptdir_versions *v;
	const size_t size = 200 * 1024;

	mn_test_tmpdir(dir, sizeof(dir));
	if (!small_fs(dir, mnt, sizeof(mnt))) {
		mn_test_rmtree(dir);
		return;
	}
	ck_assert_int_eq(mn_ckptdir_versions_open(mnt, "model.ckpt", -1, &v, err, sizeof(err)), 0);
	for (int64_t s = 1; s <= 2; s++) {
		write_step(mnt, s, size);
		ck_assert_msg(mn_ckptdir_versions_publish(v, s, 2, err, sizeof(err)) == 0, "%s",
		              err);
	}
	/* Keep-all: nothing may go, so the index cannot be written, and 3 is not published. */
	write_step(mnt, 3, size);
	fill_up(mnt);
	ck_assert_int_eq(mn_ckptdir_versions_publish(v, 3, 0, err, sizeof(err)), -ENOSPC);
	ck_assert_msg(strstr(err, "No space left on device"), "%s", err);
	ck_assert(mn_test_exists(mnt, "model.ckpt-1.safetensors"));
	ck_assert(mn_test_exists(mnt, "model.ckpt-2.safetensors"));
	ck_assert_int_eq(mn_ckptdir_index_latest(mnt, latest, sizeof(latest), err, sizeof(err)), 0);
	ck_assert_str_eq(latest, "model.ckpt-2.safetensors");

	/* Two kept: 1 is retention's anyway and goes first; that is room enough. */
	ck_assert_msg(mn_ckptdir_versions_publish(v, 3, 2, err, sizeof(err)) == 0, "%s", err);
	ck_assert(!mn_test_exists(mnt, "model.ckpt-1.safetensors"));
	ck_assert(mn_test_exists(mnt, "model.ckpt-2.safetensors"));
	ck_assert_int_eq(mn_ckptdir_index_latest(mnt, latest, sizeof(latest), err, sizeof(err)), 0);
	ck_assert_str_eq(latest, "model.ckpt-3.safetensors");

	/* Three kept, none is retention's: the oldest goes. */
	write_step(mnt, 4, size);
	fill_up(mnt);
	ck_assert_msg(mn_ckptdir_versions_publish(v, 4, 3, err, sizeof(err)) == 0, "%s", err);
	ck_assert(!mn_test_exists(mnt, "model.ckpt-2.safetensors"));
	ck_assert(mn_test_exists(mnt, "model.ckpt-3.safetensors"));
	ck_assert(mn_test_exists(mnt, "model.ckpt-4.safetensors"));
	/* One removed by someone else makes no room: the previous latest goes then. */
	write_step(mnt, 5, size);
	fill_up(mnt);
	ck_assert_int_eq(unlink(strcat(strcpy(latest, mnt), "/model.ckpt-3.safetensors")), 0);
	fill_up(mnt);
	ck_assert_msg(mn_ckptdir_versions_publish(v, 5, 3, err, sizeof(err)) == 0, "%s", err);
	ck_assert(!mn_test_exists(mnt, "model.ckpt-4.safetensors"));
	ck_assert(mn_test_exists(mnt, "model.ckpt-5.safetensors"));
	ck_assert_int_eq(mn_ckptdir_index_latest(mnt, latest, sizeof(latest), err, sizeof(err)), 0);
	ck_assert_str_eq(latest, "model.ckpt-5.safetensors");
	ck_assert_uint_eq(mn_ckptdir_versions_count(v), 1);

	/* Nothing but the new file left to take room from: the publish fails, the file stays. */
	write_step(mnt, 6, size);
	fill_up(mnt);
	ck_assert_int_eq(unlink(strcat(strcpy(latest, mnt), "/model.ckpt-5.safetensors")), 0);
	fill_up(mnt);
	ck_assert_int_eq(mn_ckptdir_versions_publish(v, 6, 3, err, sizeof(err)), -ENOSPC);
	ck_assert(mn_test_exists(mnt, "model.ckpt-6.safetensors"));

	mn_ckptdir_versions_free(v);
	ck_assert_int_eq(umount2(mnt, MNT_DETACH), 0);
	mn_test_rmtree(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ckptdir");

	MN_TEST_ADD(mn_test_tcase(s, "directory", NULL, NULL), test_filename, test_scan,
	            test_publish_retention, test_publish_keep_all, test_publish_latest_not_newest,
	            test_index_latest, test_versions_retention_over_time, test_versions_listed_once,
	            test_versions_keep_all_index_bounded, test_versions_free_oldest,
	            test_versions_retention_failure_is_not_a_failed_publish,
	            test_versions_retention_retries_a_file_it_could_not_remove,
	            test_versions_full_disk_index_gets_room);
	return mn_test_run(s);
}
