/* test_jsonl.c - appending JSON lines, reopening after rotation, errors. */
#include "jsonl.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mn_test.h"
#include "util.h"

static char dir[MN_TEST_DIRLEN];

static void setup(void)
{
	mn_test_tmpdir(dir, sizeof(dir));
}

static void teardown(void)
{
	mn_test_rmtree(dir);
}

static void append_step(struct mn_jsonl *f, int step)
{
	char err[MN_ERRLEN];
	cJSON *o = cJSON_CreateObject();

	ck_assert_ptr_nonnull(cJSON_AddNumberToObject(o, "step", step));
	ck_assert_int_eq(mn_jsonl_append(f, o, err, sizeof(err)), 0);
	cJSON_Delete(o);
}

static char *slurp(const char *path)
{
	char *buf, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_read_file(path, 1 << 20, &buf, &len, err, sizeof(err)), 0);
	return buf;
}

/* The file at path holds exactly want. */
static void expect_text(const char *path, const char *want)
{
	char *text = slurp(path);

	ck_assert_str_eq(text, want);
	free(text);
}

START_TEST(appends_whole_lines)
{
	char path[256], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(path, sizeof(path), "%s/m.jsonl", dir);
	mn_test_write_file(path, "{\"step\":0}\n", 11);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), 0);
	append_step(f, 1);
	append_step(f, 2);
	mn_jsonl_close(f);
	expect_text(path, "{\"step\":0}\n{\"step\":1}\n{\"step\":2}\n");
}
END_TEST

START_TEST(reopen_follows_rotation)
{
	char path[256], old[300], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(path, sizeof(path), "%s/m.jsonl", dir);
	snprintf(old, sizeof(old), "%s.1", path);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), 0);
	append_step(f, 1);
	ck_assert_int_eq(rename(path, old), 0);
	ck_assert_int_eq(mn_jsonl_reopen(f, err, sizeof(err)), 0);
	append_step(f, 2);
	mn_jsonl_close(f);
	expect_text(old, "{\"step\":1}\n");
	expect_text(path, "{\"step\":2}\n");
}
END_TEST

/*
 * A file moved aside or removed without a SIGHUP (logrotate without
 * postrotate, an operator's rm) must not swallow every later line: the
 * next line goes to a new file under the name, as readers follow the name.
 */
START_TEST(moved_or_removed_file_is_created_again)
{
	char path[256], old[300], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(path, sizeof(path), "%s/m.jsonl", dir);
	snprintf(old, sizeof(old), "%s.1", path);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), 0);
	append_step(f, 1);
	ck_assert_int_eq(rename(path, old), 0);
	append_step(f, 2);
	expect_text(path, "{\"step\":2}\n");
	ck_assert_int_eq(unlink(path), 0);
	append_step(f, 3);
	expect_text(path, "{\"step\":3}\n");
	/* Replaced by another file (logrotate's create): that one gets the lines. */
	ck_assert_int_eq(rename(path, old), 0);
	mn_test_write_file(path, "", 0);
	append_step(f, 4);
	append_step(f, 5);
	mn_jsonl_close(f);
	expect_text(path, "{\"step\":4}\n{\"step\":5}\n");
	expect_text(old, "{\"step\":3}\n");
}
END_TEST

START_TEST(failed_reopen_keeps_the_old_file)
{
	char path[300], sub[200], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(sub, sizeof(sub), "%s/sub", dir);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	snprintf(path, sizeof(path), "%s/m.jsonl", sub);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), 0);
	mn_test_rmtree(sub);
	ck_assert_int_eq(mn_jsonl_reopen(f, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "cannot open metrics file"));
	append_step(f, 1); /* still writes, to the unlinked file */
	mn_jsonl_close(f);
}
END_TEST

START_TEST(empty_path_is_no_file)
{
	char err[MN_ERRLEN];
	struct mn_jsonl *f = (struct mn_jsonl *)1;

	ck_assert_int_eq(mn_jsonl_open("", &f, err, sizeof(err)), 0);
	ck_assert_ptr_null(f);
	ck_assert_int_eq(mn_jsonl_append(NULL, NULL, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_jsonl_reopen(NULL, err, sizeof(err)), 0);
	mn_jsonl_close(NULL);
}
END_TEST

START_TEST(open_error_names_the_file)
{
	char path[256], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(path, sizeof(path), "%s/no/such/m.jsonl", dir);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(f);
	ck_assert_ptr_nonnull(strstr(err, path));
}
END_TEST

/*
 * A file that ends in the middle of a line (its writer died mid-write, a
 * crash left it cut off) gets that line ended before the next record, so
 * the record is not glued to it: at open, and at a reopen onto such a file.
 */
START_TEST(a_file_cut_mid_line_gets_its_line_ended)
{
	char path[256], err[MN_ERRLEN];
	struct mn_jsonl *f;

	snprintf(path, sizeof(path), "%s/m.jsonl", dir);
	mn_test_write_file(path, "{\"step\":0}\n{\"step\":1,\"lo", 24);
	ck_assert_int_eq(mn_jsonl_open(path, &f, err, sizeof(err)), 0);
	append_step(f, 2);
	append_step(f, 3);
	expect_text(path, "{\"step\":0}\n{\"step\":1,\"lo\n{\"step\":2}\n{\"step\":3}\n");
	/* Replaced under the name by another cut-off file: the same at the reopen. */
	mn_test_write_file(path, "{\"ste", 5);
	ck_assert_int_eq(mn_jsonl_reopen(f, err, sizeof(err)), 0);
	append_step(f, 4);
	mn_jsonl_close(f);
	expect_text(path, "{\"ste\n{\"step\":4}\n");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("jsonl");

	MN_TEST_ADD(mn_test_tcase(s, "jsonl", setup, teardown), appends_whole_lines,
	            reopen_follows_rotation, moved_or_removed_file_is_created_again,
	            failed_reopen_keeps_the_old_file, empty_path_is_no_file,
	            open_error_names_the_file, a_file_cut_mid_line_gets_its_line_ended);
	return mn_test_run(s);
}
