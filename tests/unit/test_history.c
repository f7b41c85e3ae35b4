/* test_history.c - train.metrics_file lines from the worker's status. */
#include "history.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "mn_test.h"
#include "util.h"

static char dir[MN_TEST_DIRLEN], path[MN_TEST_DIRLEN + 32];

static void setup(void)
{
	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/train.jsonl", dir);
}

static void teardown(void)
{
	mn_test_rmtree(dir);
}

/* Line i (0-based) of the file, parsed. */
static cJSON *line_of(const char *file, int i)
{
	char *text, err[MN_ERRLEN], *p;
	size_t len;
	cJSON *o;

	ck_assert_int_eq(mn_read_file(file, 1 << 20, &text, &len, err, sizeof(err)), 0);
	p = text;
	for (; i > 0 && p; i--)
		p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL;
	ck_assert_ptr_nonnull(p);
	o = cJSON_ParseWithOpts(p, NULL, false);
	free(text);
	ck_assert_ptr_nonnull(o);
	return o;
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", key);
	return v->valuedouble;
}

START_TEST(loss_is_the_mean_since_the_last_line)
{
	struct mnd_worker_status s = {.step = 4,
	                              .max_steps = 100,
	                              .learning_rate = 0.5,
	                              .loss = 1,
	                              .loss_sum = 10,
	                              .loss_count = 4,
	                              .steps_per_sec = 12.345};
	struct mnd_history *h;
	char err[MN_ERRLEN];
	cJSON *o;

	ck_assert_int_eq(mnd_history_open(path, &h, err, sizeof(err)), 0);
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	/* No step since: no line. */
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 0);
	s.step = 6;
	s.loss_sum = 16;
	s.loss_count = 6;
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	mnd_history_close(h);
	o = line_of(path, 0);
	ck_assert(num(o, "step") == 4);
	ck_assert(num(o, "loss") == 2.5);
	ck_assert(num(o, "learning_rate") == 0.5);
	ck_assert(num(o, "steps_per_sec") == 12.35);
	ck_assert(num(o, "max_steps") == 100);
	ck_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "time")));
	cJSON_Delete(o);
	o = line_of(path, 1);
	ck_assert(num(o, "step") == 6);
	ck_assert(num(o, "loss") == 3);
	cJSON_Delete(o);
}
END_TEST

/*
 * With train.stop_on_nan off a run goes on past a NaN loss: the span that
 * holds it has no mean (null), and the spans after it have their own again
 * (a NaN once made every later line null).
 */
START_TEST(a_non_finite_loss_nulls_only_its_own_line)
{
	struct mnd_worker_status s = {.step = 2, .loss_sum = 4, .loss_count = 2};
	struct mnd_history *h;
	char err[MN_ERRLEN];
	cJSON *o;

	ck_assert_int_eq(mnd_history_open(path, &h, err, sizeof(err)), 0);
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	s.step = 4;
	s.loss_sum = 5;
	s.loss_count = 4;
	s.loss_nonfinite = 1;
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	s.step = 7;
	s.loss_sum = 11;
	s.loss_count = 7;
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	mnd_history_close(h);
	o = line_of(path, 0);
	ck_assert(num(o, "loss") == 2);
	cJSON_Delete(o);
	o = line_of(path, 1);
	ck_assert(num(o, "step") == 4);
	ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "loss")));
	cJSON_Delete(o);
	o = line_of(path, 2);
	ck_assert(num(o, "loss") == 2);
	cJSON_Delete(o);
}
END_TEST

START_TEST(reopen_after_rotation)
{
	struct mnd_worker_status s = {.step = 1, .loss_sum = 1, .loss_count = 1};
	struct mnd_history *h;
	char err[MN_ERRLEN], old[sizeof(path) + 2];
	cJSON *o;

	snprintf(old, sizeof(old), "%s.1", path);
	ck_assert_int_eq(mnd_history_open(path, &h, err, sizeof(err)), 0);
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	ck_assert_int_eq(rename(path, old), 0);
	ck_assert_int_eq(mnd_history_reopen(h, err, sizeof(err)), 0);
	s.step = 2;
	s.loss_sum = 3;
	s.loss_count = 2;
	ck_assert_int_eq(mnd_history_record(h, &s, err, sizeof(err)), 1);
	mnd_history_close(h);
	o = line_of(path, 0);
	ck_assert(num(o, "step") == 2);
	ck_assert(num(o, "loss") == 2);
	cJSON_Delete(o);
	o = line_of(old, 0);
	ck_assert(num(o, "step") == 1);
	cJSON_Delete(o);
}
END_TEST

START_TEST(no_file_no_lines)
{
	struct mnd_worker_status s = {.step = 1, .loss_sum = 1, .loss_count = 1};
	struct mnd_history *h = (struct mnd_history *)1;
	char err[MN_ERRLEN], bad[sizeof(dir) + 32];

	ck_assert_int_eq(mnd_history_open("", &h, err, sizeof(err)), 0);
	ck_assert_ptr_null(h);
	ck_assert_int_eq(mnd_history_record(NULL, &s, err, sizeof(err)), 0);
	ck_assert_int_eq(mnd_history_reopen(NULL, err, sizeof(err)), 0);
	mnd_history_close(NULL);
	snprintf(bad, sizeof(bad), "%s/no/train.jsonl", dir);
	ck_assert_int_lt(mnd_history_open(bad, &h, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, bad));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("history");

	MN_TEST_ADD(mn_test_tcase(s, "history", setup, teardown),
	            loss_is_the_mean_since_the_last_line, a_non_finite_loss_nulls_only_its_own_line,
	            reopen_after_rotation, no_file_no_lines);
	return mn_test_run(s);
}
