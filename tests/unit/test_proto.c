/* test_proto.c - control protocol: line framing, request parsing, responses. */
#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "util.h"

#include "mn_test.h"

static struct mn_framer *framer(size_t max)
{
	struct mn_framer *f = NULL;

	ck_assert_int_eq(mn_framer_new(max, &f), 0);
	ck_assert_ptr_nonnull(f);
	return f;
}

static void push(struct mn_framer *f, const char *s)
{
	ck_assert_int_eq(mn_framer_push(f, s, strlen(s)), 0);
}

/* Takes the next line and checks it is want (NULL: no complete line yet). */
static void expect_line(struct mn_framer *f, const char *want)
{
	char *line = NULL;
	size_t len = 0;
	int rc = mn_framer_next(f, &line, &len);

	if (!want) {
		ck_assert_int_eq(rc, 0);
		return;
	}
	ck_assert_int_eq(rc, 1);
	ck_assert_uint_eq(len, strlen(want));
	ck_assert_str_eq(line, want);
}

START_TEST(test_framer_lines)
{
	struct mn_framer *f = framer(64);

	expect_line(f, NULL);
	/* Several requests in one write, "\r\n" and "\n" line ends, empty lines kept. */
	push(f, "{\"cmd\":\"status\"}\n{\"cmd\":\"save\"}\r\n\n\r\npartial");
	expect_line(f, "{\"cmd\":\"status\"}");
	expect_line(f, "{\"cmd\":\"save\"}");
	expect_line(f, "");
	expect_line(f, "");
	expect_line(f, NULL);
	ck_assert_uint_eq(mn_framer_pending(f), strlen("partial"));
	push(f, " line\n");
	expect_line(f, "partial line");
	ck_assert_uint_eq(mn_framer_pending(f), 0);
	expect_line(f, NULL);
	mn_framer_free(f);
	mn_framer_free(NULL);
}
END_TEST

START_TEST(test_framer_byte_by_byte)
{
	const char *stream = "{\"cmd\":\"pause\"}\r\n{\"cmd\":\"resume\"}\n";
	struct mn_framer *f = framer(64);
	int lines = 0;

	for (const char *p = stream; *p; p++) {
		char *line;
		size_t len;
		int rc;

		ck_assert_int_eq(mn_framer_push(f, p, 1), 0);
		rc = mn_framer_next(f, &line, &len);
		ck_assert_int_ge(rc, 0);
		if (rc == 1) {
			/* A line comes out exactly when its "\n" arrives. */
			ck_assert_int_eq(*p, '\n');
			ck_assert_str_eq(line, lines == 0 ? "{\"cmd\":\"pause\"}"
			                                  : "{\"cmd\":\"resume\"}");
			lines++;
		}
	}
	ck_assert_int_eq(lines, 2);
	mn_framer_free(f);
}
END_TEST

START_TEST(test_framer_limit)
{
	char line[20];
	struct mn_framer *f = framer(16);

	/* Exactly the limit is fine, with either line end. */
	memset(line, 'a', 16);
	line[16] = '\0';
	push(f, line);
	expect_line(f, NULL);
	push(f, "\r");
	expect_line(f, NULL);
	push(f, "\n");
	expect_line(f, line);
	push(f, line);
	push(f, "\n");
	expect_line(f, line);
	mn_framer_free(f);

	/* One byte over, complete: an error, and one from then on. */
	f = framer(16);
	push(f, "aaaaaaaaaaaaaaaaa\n{\"cmd\":\"status\"}\n");
	char *l;
	size_t n;

	ck_assert_int_eq(mn_framer_next(f, &l, &n), -EMSGSIZE);
	ck_assert_int_eq(mn_framer_next(f, &l, &n), -EMSGSIZE);
	ck_assert_int_eq(mn_framer_push(f, "x\n", 2), -EMSGSIZE);
	mn_framer_free(f);

	/* Over the limit without a newline yet: detected before the line ends. */
	f = framer(16);
	push(f, "aaaaaaaaaaaaaaaa");
	ck_assert_int_eq(mn_framer_next(f, &l, &n), 0);
	push(f, "a");
	ck_assert_int_eq(mn_framer_next(f, &l, &n), -EMSGSIZE);
	mn_framer_free(f);

	/* The limit counts one line, not the buffer: many short lines are fine. */
	f = framer(16);
	for (int i = 0; i < 1000; i++)
		push(f, "{\"cmd\":\"x\"}\n");
	for (int i = 0; i < 1000; i++)
		expect_line(f, "{\"cmd\":\"x\"}");
	expect_line(f, NULL);
	mn_framer_free(f);
}
END_TEST

START_TEST(test_framer_binary)
{
	struct mn_framer *f = framer(64);
	char *line;
	size_t len;

	ck_assert_int_eq(mn_framer_push(f, "a\0b\xff\n", 5), 0);
	ck_assert_int_eq(mn_framer_next(f, &line, &len), 1);
	ck_assert_uint_eq(len, 4);
	ck_assert_int_eq(memcmp(line, "a\0b\xff", 4), 0);
	ck_assert_int_eq(line[4], '\0');
	mn_framer_free(f);
}
END_TEST

static void parse_ok(const char *line, enum mn_proto_cmd want)
{
	enum mn_proto_cmd cmd = (enum mn_proto_cmd) - 1;
	char err[MN_ERRLEN] = "";

	ck_assert_msg(mn_proto_parse(line, strlen(line), &cmd, err, sizeof(err)) == 0, "%s: %s",
	              line, err);
	ck_assert_int_eq(cmd, want);
}

START_TEST(test_parse_commands)
{
	parse_ok("{\"cmd\":\"status\"}", MN_PROTO_STATUS);
	parse_ok("{\"cmd\":\"reload\"}", MN_PROTO_RELOAD);
	parse_ok("{\"cmd\":\"save\"}", MN_PROTO_SAVE);
	parse_ok("{\"cmd\":\"pause\"}", MN_PROTO_PAUSE);
	parse_ok("{\"cmd\":\"resume\"}", MN_PROTO_RESUME);
	parse_ok("  { \"cmd\" : \"status\" , \"id\": 7, \"x\": [1, {}] }  ", MN_PROTO_STATUS);
	ck_assert_str_eq(mn_proto_cmd_name(MN_PROTO_SAVE), "save");
	ck_assert_str_eq(mn_proto_cmd_name((enum mn_proto_cmd)99), "unknown");
}
END_TEST

static const struct {
	const char *line;
	size_t len; /* 0: strlen */
	const char *msg;
} bad_requests[] = {
    {"not json", 0, "invalid JSON"},
    {"{\"cmd\":\"status\"", 0, "invalid JSON"},
    {"{\"cmd\":\"status\"} trailing", 0, "invalid JSON"},
    {"{\"cmd\":\"status\"}{\"cmd\":\"save\"}", 0, "invalid JSON"},
    {"[\"status\"]", 0, "must be a JSON object"},
    {"\"status\"", 0, "must be a JSON object"},
    {"42", 0, "must be a JSON object"},
    {"null", 0, "must be a JSON object"},
    {"{}", 0, "missing \"cmd\""},
    {"{\"CMD\":\"status\"}", 0, "missing \"cmd\""},
    {"{\"cmd\":5}", 0, "\"cmd\" must be a string"},
    {"{\"cmd\":null}", 0, "\"cmd\" must be a string"},
    {"{\"cmd\":\"STATUS\"}", 0, "unknown command \"STATUS\""},
    {"{\"cmd\":\"\"}", 0, "unknown command \"\""},
    {"{\"cmd\":\"status\"}\0{\"cmd\":\"x\"}", 28, "NUL byte"},
    /* The configuration's rules (issue #15): no \u0000, no raw control bytes, no duplicates. */
    {"{\"cmd\":\"\\u0000status\"}", 0, "invalid request at byte 8: \\u0000 in a string"},
    {"{\"cmd\":\"\xff\xfe\x01\"}", 0, "raw control character in a string"},
    {"{\"cmd\":\"\xff\xfe\"}", 0, "unknown command \"??\""},
    {"{\"cmd\":\"status\",\"cmd\":\"save\"}", 0, "\"cmd\" given twice"},
    {"{\"cmd\":\"status\",\"n\":9007199254740993}", 0, "rounded to another integer"},
    {"{\"cmd\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", 0,
     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\""},
    {"", 0, "invalid JSON"},
};

START_TEST(test_parse_errors)
{
	enum mn_proto_cmd cmd;
	char err[MN_ERRLEN] = "";
	const char *line = bad_requests[_i].line;
	size_t len = bad_requests[_i].len ? bad_requests[_i].len : strlen(line);

	ck_assert_int_eq(mn_proto_parse(line, len, &cmd, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, bad_requests[_i].msg), "case %d: \"%s\" lacks \"%s\"", _i, err,
	              bad_requests[_i].msg);
}
END_TEST

START_TEST(test_parse_reads_exactly_len_bytes)
{
	static const char req[] = "{\"cmd\":\"save\"}";
	const char *junk = "{\"cmd\":\"save\"} {\"cmd\":\"x\"}";
	enum mn_proto_cmd cmd = MN_PROTO_STATUS;
	char err[MN_ERRLEN] = "";
	/* Exactly the request's bytes, no NUL after them: a read past the end is caught by ASan. */
	char *exact = malloc(sizeof(req) - 1);

	ck_assert_ptr_nonnull(exact);
	memcpy(exact, req, sizeof(req) - 1);
	ck_assert_msg(mn_proto_parse(exact, sizeof(req) - 1, &cmd, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_int_eq(cmd, MN_PROTO_SAVE);
	free(exact);
	/* A request at the head of a longer buffer is judged by its own bytes. */
	cmd = MN_PROTO_STATUS;
	ck_assert_msg(mn_proto_parse(junk, strlen(req), &cmd, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cmd, MN_PROTO_SAVE);
	ck_assert_int_eq(mn_proto_parse(junk, strlen(req) + 2, &cmd, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "invalid JSON"));
	/* Trailing whitespace of any kind cJSON skips is still fine. */
	ck_assert_int_eq(
	    mn_proto_parse("{\"cmd\":\"pause\"} \t\r", strlen(req) + 4, &cmd, err, sizeof(err)), 0);
	ck_assert_int_eq(cmd, MN_PROTO_PAUSE);
}
END_TEST

START_TEST(test_parse_deep_nesting)
{
	/* Deeper than cJSON's nesting limit: refused, not a stack overflow. */
	size_t depth = 100000;
	char *s = malloc(2 * depth + 1);
	enum mn_proto_cmd cmd;
	char err[MN_ERRLEN];

	ck_assert_ptr_nonnull(s);
	memset(s, '[', depth);
	memset(s + depth, ']', depth);
	s[2 * depth] = '\0';
	ck_assert_int_eq(mn_proto_parse(s, 2 * depth, &cmd, err, sizeof(err)), -EINVAL);
	free(s);
}
END_TEST

/* Serialises resp as a line, checks the framing, and parses it back. */
static cJSON *roundtrip(cJSON *resp)
{
	size_t len = 0;
	char *line;
	cJSON *back;

	ck_assert_ptr_nonnull(resp);
	line = mn_proto_line(resp, &len);
	cJSON_Delete(resp);
	ck_assert_ptr_nonnull(line);
	ck_assert_uint_eq(len, strlen(line));
	ck_assert_int_eq(line[len - 1], '\n');
	ck_assert_ptr_eq(strchr(line, '\n'), line + len - 1);
	back = cJSON_Parse(line);
	free(line);
	ck_assert_ptr_nonnull(back);
	return back;
}

static const cJSON *get(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	ck_assert_msg(v != NULL, "missing %s", k);
	return v;
}

START_TEST(test_error_response)
{
	cJSON *o = roundtrip(mn_proto_error("line one\nline \"two\""));

	ck_assert(cJSON_IsFalse(get(o, "ok")));
	ck_assert_str_eq(get(o, "error")->valuestring, "line one\nline \"two\"");
	cJSON_Delete(o);
}
END_TEST

START_TEST(test_status_response)
{
	struct mn_proto_status s = {
	    .step = 1234,
	    .max_steps = (int64_t)1 << 53,
	    .learning_rate = 0.5,
	    .loss = NAN,
	    .steps_per_sec = 99.5,
	    .paused = false,
	    .latest_checkpoint = NULL,
	};
	size_t len;
	cJSON *o = mn_proto_status(&s);
	char *text = mn_proto_line(o, &len);

	/* Integers go out as integers, exactly, even at 2^53 (cJSON alone rounds there). */
	ck_assert_ptr_nonnull(text);
	ck_assert_ptr_nonnull(strstr(text, "\"max_steps\":9007199254740992,"));
	ck_assert_ptr_nonnull(strstr(text, "\"step\":1234,"));
	free(text);
	o = roundtrip(o);
	ck_assert(cJSON_IsTrue(get(o, "ok")));
	ck_assert_str_eq(get(o, "state")->valuestring, "training");
	ck_assert_double_eq(get(o, "step")->valuedouble, 1234);
	ck_assert(cJSON_IsNull(get(o, "loss")));
	ck_assert(cJSON_IsNull(get(o, "latest_checkpoint")));
	ck_assert_double_eq(get(o, "learning_rate")->valuedouble, 0.5);
	ck_assert_double_eq(get(o, "steps_per_sec")->valuedouble, 99.5);
	ck_assert(cJSON_IsFalse(get(o, "paused")));
	cJSON_Delete(o);

	s.paused = true;
	s.loss = 0.25;
	s.latest_checkpoint = "model.ckpt-1000.safetensors";
	o = roundtrip(mn_proto_status(&s));
	ck_assert_str_eq(get(o, "state")->valuestring, "paused");
	ck_assert(cJSON_IsTrue(get(o, "paused")));
	ck_assert_double_eq(get(o, "loss")->valuedouble, 0.25);
	ck_assert_str_eq(get(o, "latest_checkpoint")->valuestring, "model.ckpt-1000.safetensors");
	cJSON_Delete(o);

	s.stopping = true;
	s.latest_checkpoint = "";
	s.learning_rate = INFINITY;
	o = roundtrip(mn_proto_status(&s));
	ck_assert_str_eq(get(o, "state")->valuestring, "stopping");
	ck_assert(cJSON_IsNull(get(o, "latest_checkpoint")));
	ck_assert(cJSON_IsNull(get(o, "learning_rate")));
	cJSON_Delete(o);
}
END_TEST

START_TEST(test_other_responses)
{
	struct mn_proto_keys applied = {0}, restart = {0};
	cJSON *o;

	ck_assert_int_eq(mn_proto_keys_add(&applied, "train.learning_rate"), 0);
	ck_assert_int_eq(mn_proto_keys_add(&applied, "checkpoint.every_steps"), 0);
	ck_assert_int_eq(mn_proto_keys_add(&restart, "model.hidden"), 0);
	o = roundtrip(mn_proto_reload(&applied, &restart));
	ck_assert(cJSON_IsTrue(get(o, "ok")));
	ck_assert_int_eq(cJSON_GetArraySize(get(o, "applied")), 2);
	ck_assert_str_eq(cJSON_GetArrayItem(get(o, "applied"), 1)->valuestring,
	                 "checkpoint.every_steps");
	ck_assert_str_eq(cJSON_GetArrayItem(get(o, "restart_required"), 0)->valuestring,
	                 "model.hidden");
	cJSON_Delete(o);

	o = roundtrip(mn_proto_reload(NULL, NULL));
	ck_assert(cJSON_IsArray(get(o, "applied")));
	ck_assert_int_eq(cJSON_GetArraySize(get(o, "restart_required")), 0);
	cJSON_Delete(o);

	o = roundtrip(mn_proto_saved("model.ckpt-3000.safetensors", 3000));
	ck_assert_str_eq(get(o, "checkpoint")->valuestring, "model.ckpt-3000.safetensors");
	ck_assert_double_eq(get(o, "step")->valuedouble, 3000);
	cJSON_Delete(o);

	o = roundtrip(mn_proto_paused(true, 17));
	ck_assert(cJSON_IsTrue(get(o, "paused")));
	ck_assert_double_eq(get(o, "step")->valuedouble, 17);
	cJSON_Delete(o);
	o = roundtrip(mn_proto_paused(false, 18));
	ck_assert(cJSON_IsFalse(get(o, "paused")));
	cJSON_Delete(o);
}
END_TEST

START_TEST(test_keys_full)
{
	struct mn_proto_keys k = {0};

	for (int i = 0; i < MN_PROTO_MAX_KEYS; i++)
		ck_assert_int_eq(mn_proto_keys_add(&k, "k"), 0);
	ck_assert_int_eq(mn_proto_keys_add(&k, "k"), -ENOSPC);
	ck_assert_uint_eq(k.n, MN_PROTO_MAX_KEYS);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("proto");
	TCase *tc = mn_test_tcase(s, "core", NULL, NULL);

	MN_TEST_ADD(tc, test_framer_lines, test_framer_byte_by_byte, test_framer_limit,
	            test_framer_binary, test_parse_commands);
	tcase_add_loop_test(tc, test_parse_errors, 0,
	                    (int)(sizeof(bad_requests) / sizeof(bad_requests[0])));
	MN_TEST_ADD(tc, test_parse_reads_exactly_len_bytes, test_parse_deep_nesting,
	            test_error_response, test_status_response, test_other_responses,
	            test_keys_full);
	return mn_test_run(s);
}
