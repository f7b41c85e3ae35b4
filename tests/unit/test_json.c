/* test_json.c - exact numbers and checked insertion. */
#include "json.h"

#include <check.h>
#include <errno.h>
#include <stdint.h>
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

static enum mn_json_rule parse_fault(const char *text, size_t len, unsigned flags, size_t *at)
{
	struct mn_json_error e;
	cJSON *root = NULL;

	ck_assert_int_eq(mn_json_parse(text, len, flags, &root, &e), -EINVAL);
	ck_assert_ptr_null(root);
	ck_assert_ptr_nonnull(e.what);
	*at = e.at;
	return e.rule;
}

START_TEST(strict_parse_rules)
{
	struct mn_json_error e;
	cJSON *root = NULL;
	size_t at;

	/* Exactly len bytes, whatever follows; whitespace after the value is fine. */
	ck_assert_int_eq(mn_json_parse("{\"a\":[1,\"x\"]} \r\nJUNK", 15, 0, &root, &e), 0);
	ck_assert(cJSON_IsObject(root));
	cJSON_Delete(root);
	ck_assert_int_eq(parse_fault("{\"a\":1}\0{}", 10, 0, &at), MN_JSON_RULE_NUL);
	ck_assert_uint_eq(at, 7);
	ck_assert_int_eq(parse_fault("\"a\xc0\xaf\"", 5, MN_JSON_UTF8, &at), MN_JSON_RULE_UTF8);
	ck_assert_uint_eq(at, 2);
	ck_assert_int_eq(mn_json_parse("\"a\xc0\xaf\"", 5, 0, &root, &e), 0);
	cJSON_Delete(root);
	ck_assert_int_eq(parse_fault("\"a\tb\"", 5, 0, &at), MN_JSON_RULE_STRING);
	ck_assert_uint_eq(at, 2);
	ck_assert_int_eq(parse_fault("[\"a\\u0000b\"]", 12, 0, &at), MN_JSON_RULE_STRING);
	ck_assert_uint_eq(at, 3);
	/* A reader that only compares names may take such strings as they are. */
	ck_assert_int_eq(mn_json_parse("\"a\tb\"", 5, MN_JSON_OPAQUE_STRINGS, &root, &e), 0);
	cJSON_Delete(root);
	ck_assert_int_eq(parse_fault("{} {}", 5, 0, &at), MN_JSON_RULE_SYNTAX);
	ck_assert_uint_eq(at, 3);
	ck_assert_int_eq(parse_fault("{\n\"a\":", 6, 0, &at), MN_JSON_RULE_SYNTAX);
	ck_assert_int_eq(parse_fault("", 0, 0, &at), MN_JSON_RULE_SYNTAX);
	/* Positions come as lines and columns too. */
	ck_assert_int_eq(mn_json_parse("{\n \"a\": \"\x01\"}", 11, 0, &root, &e), -EINVAL);
	ck_assert_uint_eq(e.line, 2);
	ck_assert_uint_eq(e.col, 8);
}
END_TEST

START_TEST(integers_read)
{
	cJSON *a = cJSON_Parse("[7, -3, 2.5, 9007199254740992, \"7\", null, 1e400]");
	int64_t v = 0;

	ck_assert(mn_json_get_int(cJSON_GetArrayItem(a, 0), 0, 10, &v) && v == 7);
	ck_assert(!mn_json_get_int(cJSON_GetArrayItem(a, 0), 0, 6, &v));
	ck_assert(mn_json_get_int(cJSON_GetArrayItem(a, 1), -5, 0, &v) && v == -3);
	ck_assert(!mn_json_get_int(cJSON_GetArrayItem(a, 1), 0, 10, &v));
	ck_assert(!mn_json_get_int(cJSON_GetArrayItem(a, 2), 0, 10, &v));
	ck_assert(mn_json_get_int(cJSON_GetArrayItem(a, 3), 0, (int64_t)1 << 53, &v) &&
	          v == (int64_t)1 << 53);
	for (int i = 4; i < 7; i++)
		ck_assert(!mn_json_get_int(cJSON_GetArrayItem(a, i), INT32_MIN, INT32_MAX, &v));
	cJSON_Delete(a);
}
END_TEST

START_TEST(non_integers_found)
{
	const char *t = "{\"a\":[0,12,\"-1\"],\"b\":1.5,\"c\":-2}";
	size_t n;

	ck_assert_uint_eq(mn_json_first_non_integer(t, strlen(t), &n), 21);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(mn_json_first_non_integer("[0,7,10]", 8, &n), SIZE_MAX);
	ck_assert_uint_eq(mn_json_first_non_integer("[01]", 4, &n), 1);
	ck_assert_uint_eq(mn_json_first_non_integer("[1e2]", 5, &n), 1);
}
END_TEST

/*
 * The scan that finds rounded integers reads a number's exponent: it must
 * stop at the text's end, which need not be followed by a NUL (a line in a
 * socket buffer, a header inside a checkpoint file), and survive exponents
 * no long holds. (Both were found by fuzz_ckpt and fuzz_proto.)
 */
START_TEST(number_scan_stays_in_bounds)
{
	const char *cases[] = {"1e5",
	                       "-7E+3",
	                       "[2e",
	                       "1.5e-99999999999999999999",
	                       "[1.25e99999999999999999999]",
	                       "0.5e-9223372036854775808"};
	struct mn_json_error e;
	cJSON *root = NULL;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i]);
		/* Exactly the text's bytes on the heap, no terminator: ASan sees a read past them.
		 */
		char *text = malloc(n);

		ck_assert_ptr_nonnull(text);
		memcpy(text, cases[i], n);
		(void)mn_json_parse(text, n, MN_JSON_EXACT_INTEGERS, &root, &e);
		cJSON_Delete(root);
		root = NULL;
		free(text);
	}
	/* A fraction too small to survive reads as 0, which it is not: refused as rounded. */
	ck_assert_int_eq(
	    mn_json_parse("1.5e-99999999999999999999", 25, MN_JSON_EXACT_INTEGERS, &root, &e),
	    -EINVAL);
	ck_assert_int_eq(e.rule, MN_JSON_RULE_NUMBER);
	ck_assert_int_eq(
	    mn_json_parse("0e-99999999999999999999", 23, MN_JSON_EXACT_INTEGERS, &root, &e), 0);
	cJSON_Delete(root);
}
END_TEST

static int members(const char *text, bool others, enum mn_json_fault *fault, const char **name)
{
	static cJSON *root;
	static const cJSON *a, *b;
	const struct mn_json_member table[] = {
	    {"a", cJSON_String, true, &a},
	    {"b", cJSON_Array | cJSON_NULL, false, &b},
	};

	cJSON_Delete(root);
	root = cJSON_Parse(text);
	ck_assert_ptr_nonnull(root);
	*name = NULL;
	return mn_json_members(root, table, 2, others, fault, name);
}

START_TEST(members_table)
{
	enum mn_json_fault f = 0;
	const char *name;

	ck_assert_int_eq(members("{\"b\":[],\"a\":\"x\"}", false, &f, &name), 0);
	ck_assert_int_eq(members("{\"a\":\"x\",\"b\":null}", false, &f, &name), 0);
	ck_assert_int_eq(members("{\"a\":\"x\",\"z\":1}", false, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_UNKNOWN);
	ck_assert_str_eq(name, "z");
	ck_assert_int_eq(members("{\"a\":\"x\",\"z\":1}", true, &f, &name), 0);
	ck_assert_int_eq(members("{\"a\":\"x\",\"a\":\"y\"}", true, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_DUPLICATE);
	ck_assert_str_eq(name, "a");
	ck_assert_int_eq(members("{\"b\":[]}", false, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_MISSING);
	ck_assert_str_eq(name, "a");
	/* Names before presence, presence before types. */
	ck_assert_int_eq(members("{\"b\":1,\"q\":1}", false, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_UNKNOWN);
	ck_assert_int_eq(members("{\"b\":1}", false, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_MISSING);
	ck_assert_int_eq(members("{\"a\":1,\"b\":1}", false, &f, &name), -EINVAL);
	ck_assert_int_eq(f, MN_JSON_TYPE);
	ck_assert_str_eq(name, "a");
	ck_assert_str_eq(mn_json_type_name(cJSON_String), "a string");
	ck_assert_str_eq(mn_json_type_name(cJSON_Array | cJSON_NULL), "null");
}
END_TEST

START_TEST(duplicates_found)
{
	cJSON *o = cJSON_Parse("{\"b\":1,\"a\":2,\"c\":3,\"b\":4,\"a\":5}");
	const char *dup = "x";
	const char *names[] = {"q", "p", "q"};

	ck_assert_int_eq(mn_json_first_duplicate(o, &dup), 0);
	ck_assert_str_eq(dup, "a");
	ck_assert(!mn_json_duplicate(o, o->child->next));
	ck_assert(mn_json_duplicate(o, o->child->next->next->next));
	cJSON_Delete(o);
	o = cJSON_Parse("{\"a\":1}");
	ck_assert_int_eq(mn_json_first_duplicate(o, &dup), 0);
	ck_assert_ptr_null(dup);
	cJSON_Delete(o);
	ck_assert_str_eq(mn_json_first_duplicate_name(names, 3), "q");
	ck_assert(mn_json_utf8("caf\xc3\xa9", 5));
	ck_assert(!mn_json_utf8("\xed\xa0\x80", 3));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("json");

	MN_TEST_ADD(mn_test_tcase(s, "json", NULL, NULL), integers_are_exact, doubles_round_trip,
	            add_frees_on_failure, strict_parse_rules, integers_read, non_integers_found,
	            members_table, duplicates_found, number_scan_stays_in_bounds);
	return mn_test_run(s);
}
