/* test_best.c - best.json: ranking, writing, and strict reading. */
#include "best.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mn_test.h"

static char dir[MN_TEST_DIRLEN];

static void setup(void)
{
	mn_test_tmpdir(dir, sizeof(dir));
}

static void teardown(void)
{
	mn_test_rmtree(dir);
}

static struct mn_best_entry entry(int64_t step, double acc)
{
	struct mn_best_entry e = {.step = step, .accuracy = acc, .loss = 0.5};

	snprintf(e.file, sizeof(e.file), "model.ckpt-%lld.safetensors", (long long)step);
	snprintf(e.time, sizeof(e.time), "2026-11-29T19:00:00.000Z");
	return e;
}

static void write_best(const char *text)
{
	char path[sizeof(dir) + 16];

	snprintf(path, sizeof(path), "%s/best.json", dir);
	mn_test_write_file(path, text, strlen(text));
}

START_TEST(ranking_breaks_ties_by_earlier_step)
{
	struct mn_best_entry e[4] = {entry(300, 0.8), entry(100, 0.9), entry(400, 0.9),
	                             entry(200, 0.7)};

	mn_best_sort(e, 4);
	ck_assert_int_eq(e[0].step, 100);
	ck_assert_int_eq(e[1].step, 400);
	ck_assert_int_eq(e[2].step, 300);
	ck_assert_int_eq(e[3].step, 200);
	ck_assert(mn_best_before(&e[0], &e[1]));
	ck_assert(!mn_best_before(&e[1], &e[0]));
}
END_TEST

START_TEST(save_and_load)
{
	struct mn_best_entry e[2] = {entry(100, 0.8125), entry(40, 0.75)}, *got = NULL, first;
	char err[MN_ERRLEN];
	size_t n = 0;

	e[0].loss = 0.30000000000000004;
	ck_assert_int_eq(mn_best_save(dir, e, 2, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_best_load(dir, &got, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(got[0].step, 100);
	ck_assert_double_eq(got[0].accuracy, 0.8125);
	ck_assert_double_eq(got[0].loss, 0.30000000000000004);
	ck_assert_str_eq(got[0].file, "model.ckpt-100.safetensors");
	ck_assert_str_eq(got[1].time, "2026-11-29T19:00:00.000Z");
	free(got);
	ck_assert_int_eq(mn_best_first(dir, &first, err, sizeof(err)), 0);
	ck_assert_int_eq(first.step, 100);
	/* No temporary file is left behind. */
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);

	ck_assert_int_eq(mn_best_save(dir, NULL, 0, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_best_load(dir, &got, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 0);
	free(got);
	ck_assert_int_eq(mn_best_first(dir, &first, err, sizeof(err)), -ENOENT);
}
END_TEST

START_TEST(missing_file)
{
	struct mn_best_entry *got = (struct mn_best_entry *)1;
	char err[MN_ERRLEN];
	size_t n = 7;

	ck_assert_int_eq(mn_best_load(dir, &got, &n, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(got);
	ck_assert_uint_eq(n, 0);
}
END_TEST

/*
 * best.json in a directory is never a symbolic link (the writer makes none):
 * one is refused, not followed to a list that is not this directory's (the
 * evaluator would remove the kept files it does not name). A path given as
 * such (mnistctl plot --best FILE) is the user's to point anywhere.
 */
START_TEST(a_symbolic_link_is_not_followed)
{
	struct mn_best_entry *got = NULL;
	char err[MN_ERRLEN], elsewhere[PATH_MAX + 32], link_path[PATH_MAX + 32];
	size_t n = 0;

	snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere.json", dir);
	snprintf(link_path, sizeof(link_path), "%s/best.json", dir);
	mn_test_write_file(elsewhere, "{\"best\": []}", 12);
	ck_assert_int_eq(symlink(elsewhere, link_path), 0);
	ck_assert_int_lt(mn_best_load(dir, &got, &n, err, sizeof(err)), 0);
	ck_assert_ptr_null(got);
	ck_assert_msg(strstr(err, link_path) != NULL, "%s", err);
	ck_assert_msg(strstr(err, "symbolic link") != NULL, "%s", err);
	ck_assert_int_eq(mn_best_load_file(link_path, &got, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 0);
	free(got);
}
END_TEST

static const struct {
	const char *text, *want;
} bad[] = {
    {"", "not JSON: "},
    {"{\"best\": [", "not JSON: "},
    {"{\"best\": []} x", "not JSON: "},
    {"[]", "not a JSON object"},
    {"{\"best\": {}}", "not a JSON object with one \"best\" array"},
    {"{\"best\": [], \"best\": []}", "not a JSON object with one \"best\" array"},
    {"{\"best\": [1]}", "best[0]: not an object"},
    {"{\"best\": [{\"step\": 1, \"step\": 2, \"accuracy\": 0.5, \"loss\": 1, \"file\": "
     "\"a.safetensors\", \"time\": \"t\"}]}",
     "best[0]: not an object with each member once"},
    {"{\"best\": [{\"step\": -1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"a.safetensors\", "
     "\"time\": \"t\"}]}",
     "best[0]: step must be an integer"},
    {"{\"best\": [{\"step\": 1.5, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"a.safetensors\", "
     "\"time\": \"t\"}]}",
     "best[0]: step must be an integer"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 1.5, \"loss\": 1, \"file\": \"a.safetensors\", "
     "\"time\": \"t\"}]}",
     "best[0]: accuracy must be a number in [0, 1]"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": \"x\", \"file\": "
     "\"a.safetensors\", \"time\": \"t\"}]}",
     "best[0]: loss must be a finite number"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"../a.safetensors\", "
     "\"time\": \"t\"}]}",
     "best[0]: file must be a plain name"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \".a.safetensors\", "
     "\"time\": \"t\"}]}",
     "best[0]: file must be a plain name"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"best.json\", "
     "\"time\": \"t\"}]}",
     "best[0]: file must be a plain name"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"a.safetensors\"}]}",
     "best[0]: time must be"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"a.safetensors\", "
     "\"time\": \"t\"}, {\"step\": 2, \"accuracy\": 0.5, \"loss\": 1, \"file\": "
     "\"a.safetensors\", \"time\": \"t\"}]}",
     "best[1]: a.safetensors is listed twice"},
    {"{\"best\": [{\"step\": 1, \"accuracy\": 0.5, \"loss\": 1, \"file\": \"a.safetensors\", "
     "\"time\": \"t\"}, {\"step\": 2, \"accuracy\": 0.6, \"loss\": 1, \"file\": "
     "\"b.safetensors\", \"time\": \"t\"}]}",
     "best[1]: not in order, best first"},
};

START_TEST(invalid_files_are_refused)
{
	struct mn_best_entry *got = NULL;
	char err[MN_ERRLEN];
	size_t n = 0;

	write_best(bad[_i].text);
	ck_assert_int_eq(mn_best_load(dir, &got, &n, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(got);
	ck_assert_msg(strstr(err, bad[_i].want) != NULL, "%s:\n got  %s\n want %s", bad[_i].text,
	              err, bad[_i].want);
	ck_assert_msg(strstr(err, "best.json") != NULL, "does not name the file: %s", err);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("best");
	TCase *tc = mn_test_tcase(s, "best", setup, teardown);

	MN_TEST_ADD(tc, ranking_breaks_ties_by_earlier_step, save_and_load, missing_file,
	            a_symbolic_link_is_not_followed);
	tcase_add_loop_test(tc, invalid_files_are_refused, 0, (int)(sizeof(bad) / sizeof(bad[0])));
	return mn_test_run(s);
}
