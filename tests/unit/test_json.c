/* test_json.c - exact numbers and checked insertion. */
#include "json.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mn_test.h"

static void assert_prints(cJSON *item, const char *want)
{
	char *s;

	ck_assert_ptr_nonnull(item);
	s = cJSON_PrintUnformatted(item);
	ck_assert_ptr_nonnull(s);
	ck_assert_str_eq(s, want);
	free(s);
	cJSON_Delete(item);
}

START_TEST(integers_are_exact)
{
	/* cJSON_CreateNumber would print these two as 9.00719925474099e+15. */
	assert_prints(mn_json_int(9007199254740993LL), "9007199254740993");
	assert_prints(mn_json_int(-9223372036854775807LL - 1), "-9223372036854775808");
	assert_prints(mn_json_uint(18446744073709551615ULL), "18446744073709551615");
	assert_prints(mn_json_int(0), "0");
}
END_TEST

START_TEST(doubles_round_trip)
{
	const double values[] = {0.1, 0.30000000000000004, 1e-4, 0.8, 1e300, -2.5, 1.0 / 3.0};

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		cJSON *j = mn_json_double(values[i], -1);
		char *s = cJSON_PrintUnformatted(j);

		ck_assert_double_eq(strtod(s, NULL), values[i]);
		ck_assert_uint_le(strlen(s), 24);
		free(s);
		cJSON_Delete(j);
	}
	assert_prints(mn_json_double(0.88124, 4), "0.8812");
	assert_prints(mn_json_double(0.5, -1), "0.5");
	assert_prints(mn_json_double(NAN, -1), "null");
	assert_prints(mn_json_double(-INFINITY, 3), "null");
}
END_TEST

START_TEST(add_frees_on_failure)
{
	cJSON *o = cJSON_CreateObject(), *a = cJSON_CreateArray();
	char *s;

	ck_assert(mn_json_add(o, "n", mn_json_int(7)));
	ck_assert(!mn_json_add(o, "missing", NULL));
	ck_assert(mn_json_add(a, NULL, mn_json_int(1)));
	ck_assert(mn_json_add(a, NULL, mn_json_int(2)));
	ck_assert(mn_json_add(o, "a", a));
	s = cJSON_PrintUnformatted(o);
	ck_assert_str_eq(s, "{\"n\":7,\"a\":[1,2]}");
	free(s);
	cJSON_Delete(o);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("json");

	MN_TEST_ADD(mn_test_tcase(s, "json", NULL, NULL), integers_are_exact, doubles_round_trip,
	            add_frees_on_failure);
	return mn_test_run(s);
}
