/* test_config.c - the configuration schema, strict loading, JSON, diff and reload. */
#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "util.h"

#include "mn_test.h"

#define P53 ((int64_t)1 << 53)

static char tmpdir[MN_TEST_DIRLEN];

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
}

static void teardown(void)
{
	mn_test_rmtree(tmpdir);
}

static int parse(const char *json, struct mn_config *c, char *err)
{
	mn_config_defaults(c);
	return mn_config_parse(json, strlen(json), "test.json", c, err, MN_ERRLEN);
}

static size_t count_diff(const struct mn_config *a, const struct mn_config *b)
{
	return mn_config_diff(a, b, NULL, NULL);
}

START_TEST(test_defaults)
{
	struct mn_config c;

	memset(&c, 0x5a, sizeof(c));
	mn_config_defaults(&c);
	ck_assert_str_eq(c.data.dir, "/usr/share/datasets/fashion-mnist");
	ck_assert_int_eq(c.data.validation_size, 5000);
	ck_assert_uint_eq(c.model.nhidden, 1);
	ck_assert_int_eq(c.model.hidden[0], 500);
	ck_assert_double_eq(c.model.init_stddev, 0.1);
	ck_assert_uint_eq(c.model.seed, 42);
	ck_assert_int_eq(c.train.batch_size, 100);
	ck_assert_double_eq(c.train.learning_rate, 0.8);
	ck_assert_double_eq(c.train.learning_rate_decay, 0.99);
	ck_assert_int_eq(c.train.decay_steps, 0);
	ck_assert_double_eq(c.train.l2, 1e-4);
	ck_assert_double_eq(c.train.ema_decay, 0.99);
	ck_assert_int_eq(c.train.max_steps, 30000);
	ck_assert_int_eq(c.train.threads, 0);
	ck_assert_str_eq(c.checkpoint.dir, "/var/lib/mnistd");
	ck_assert_str_eq(c.checkpoint.prefix, "model.ckpt");
	ck_assert_int_eq(c.checkpoint.every_steps, 1000);
	ck_assert_int_eq(c.checkpoint.max_to_keep, 5);
	ck_assert(!c.checkpoint.write_all);
	ck_assert_str_eq(c.checkpoint.init_from_file, "");
	ck_assert_uint_eq(c.checkpoint.init_from_nmap, 0);
	ck_assert_str_eq(c.control.socket, "/run/mnistd/control.sock");
	ck_assert(c.eval.use_ema);
	ck_assert_int_eq(c.eval.watch, MN_WATCH_AUTO);
	ck_assert_int_eq(c.eval.poll_interval_ms, 1000);
	ck_assert_str_eq(c.eval.metrics_file, "");
	ck_assert_int_eq(c.eval.keep_best, 1);
	ck_assert_str_eq(c.eval.best_dir, "/var/lib/mnist-eval");
	ck_assert(!c.train.early_stopping.enabled);
	ck_assert_int_eq(c.log.level, MN_LOG_INFO);
	ck_assert_int_eq(c.log.format, MN_LOG_TEXT);
	ck_assert_str_eq(c.log.file, "");
}
END_TEST

START_TEST(test_shipped_file)
{
	const char *src = getenv("MN_TEST_SRCDIR");
	struct mn_config c, d;
	char path[PATH_MAX], err[MN_ERRLEN];
	char *a, *b;
	int rc;

	ck_assert_msg(src != NULL, "MN_TEST_SRCDIR is not set");
	snprintf(path, sizeof(path), "%s/../../config/mnistd.json", src);
	memset(&c, 0, sizeof(c));
	rc = mn_config_load(path, &c, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	mn_config_defaults(&d);
	ck_assert_uint_eq(count_diff(&c, &d), 0);
	a = mn_config_to_json(&c);
	b = mn_config_to_json(&d);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_str_eq(a, b);
	free(a);
	free(b);
}
END_TEST

struct bad_case {
	const char *json;
	const char *want;
};

static const struct bad_case bad_cases[] = {
    {"{\"train\":{\"batchsize\":1}}",
     "test.json: train.batchsize: unknown key (train has: batch_size, learning_rate, "
     "learning_rate_decay, decay_steps, l2, ema_decay, max_steps, threads, metrics_file, "
     "early_stopping, stop_on_nan)"},
    {"{\"eval\":{\"textfile\":\"/var/lib/node-exporter/eval.txt\"}}",
     "test.json: eval.textfile: must be \"\" or a path of at most 1023 bytes whose file name ends "
     "in \".prom\" and does not start with '.', got \"/var/lib/node-exporter/eval.txt\""},
    {"{\"metrics\":{\"textfile\":\"/d/.mnistd.prom\"}}", "metrics.textfile: must be \"\" or"},
    {"{\"metrics\":{\"textfile\":\"/d/.prom\"}}", "metrics.textfile: must be \"\" or"},
    {"{\"metrics\":{\"interval_ms\":99}}",
     "metrics.interval_ms: must be an integer in [100, 3600000], got 99"},
    {"{\"trian\":{}}",
     "test.json: trian: unknown section (sections: data, model, train, checkpoint, control, "
     "eval, log, metrics)"},
    {"{\"train\":{\"batch_size\":\"100\"}}",
     "test.json: train.batch_size: must be an integer in [1, 65536], got \"100\""},
    {"{\"train\":{\"batch_size\":0}}",
     "test.json: train.batch_size: must be an integer in [1, 65536], got 0"},
    {"{\"train\":{\"batch_size\":65537}}",
     "train.batch_size: must be an integer in [1, 65536], got 65537"},
    {"{\"train\":{\"batch_size\":1.5}}",
     "train.batch_size: must be an integer in [1, 65536], got 1.5"},
    {"{\"train\":{\"batch_size\":null}}", "train.batch_size: must be an integer"},
    {"{\"train\":{\"max_steps\":1e400}}", "train.max_steps: must be an integer in [1, "
                                          "9007199254740992]"},
    {"{\"model\":{\"seed\":-1}}",
     "model.seed: must be an integer in [0, 9007199254740992], got -1"},
    /* Rounded by a double: refused as written, not taken as the rounded value (issue #15). */
    {"{\"model\":{\"seed\":9007199254740994}}", "rounded to another integer"},
    {"{\"model\":{\"seed\":9007199254740993}}",
     "line 1, column 18 (byte 17): a number that would be rounded"},
    {"{\"train\":{\"batch_size\":100.0000000000000001}}", "rounded to another integer"},
    {"{\"train\":{\"max_steps\":1e300}}", "rounded to another integer"},
    /* What start would refuse, validation refuses (issue #15). */
    {"{\"model\":{\"hidden\":[1048576,1048576]}}", "model.hidden: "},
    {"{\"model\":{\"hidden\":[1048576]},\"train\":{\"batch_size\":65536}}",
     "train.batch_size: 65536 rows of a network with 1048586 units exceed"},
    {"{\"train\":{\"decay_steps\":2147483649}}",
     "train.decay_steps: must be an integer in [0, 2147483648], got 2147483649"},
    {"{\"train\":{\"learning_rate\":0}}",
     "train.learning_rate: must be a number in (0, 100], got 0"},
    {"{\"train\":{\"learning_rate\":100.5}}",
     "train.learning_rate: must be a number in (0, 100], got 100.5"},
    {"{\"train\":{\"learning_rate\":\"fast\"}}",
     "train.learning_rate: must be a number in (0, 100], got \"fast\""},
    {"{\"train\":{\"ema_decay\":1}}", "train.ema_decay: must be a number in [0, 1), got 1"},
    {"{\"train\":{\"l2\":-0.5}}", "train.l2: must be a number in [0, 1], got -0.5"},
    {"{\"model\":{\"hidden\":[1,2,3,4,5,6,7,8,9]}}",
     "model.hidden: must be an array of at most 8 integers in [1, 1048576], got "
     "[1,2,3,4,5,6,7,8,9]"},
    {"{\"model\":{\"hidden\":500}}", "model.hidden: must be an array of at most 8 integers"},
    {"{\"model\":{\"hidden\":[500,0]}}",
     "model.hidden[1]: must be an integer in [1, 1048576], got 0"},
    {"{\"model\":{\"hidden\":[500,1048577]}}", "model.hidden[1]: must be an integer"},
    {"{\"model\":{\"hidden\":[2.5]}}", "model.hidden[0]: must be an integer"},
    {"{\"log\":{\"level\":\"verbose\"}}",
     "log.level: must be one of \"debug\", \"info\", \"warn\", \"error\", got \"verbose\""},
    {"{\"log\":{\"format\":1}}", "log.format: must be one of \"text\", \"json\", got 1"},
    {"{\"eval\":{\"watch\":\"inotify\"}}", "eval.watch: must be one of \"auto\", \"events\""},
    {"{\"eval\":{\"use_ema\":1}}", "eval.use_ema: must be true or false, got 1"},
    {"{\"eval\":{\"poll_interval_ms\":9}}", "eval.poll_interval_ms: must be an integer in [10, "
                                            "3600000], got 9"},
    {"{\"data\":{\"dir\":\"\"}}", "data.dir: must be a non-empty string of at most 1023 bytes"},
    {"{\"data\":{\"dir\":7}}", "data.dir: must be a non-empty string of at most 1023 bytes, got 7"},
    {"{\"checkpoint\":{\"prefix\":\"a/b\"}}",
     "checkpoint.prefix: must be a plain file name (1 to 100 bytes, no '/' or control "
     "characters, not starting with '.'), got \"a/b\""},
    {"{\"checkpoint\":{\"prefix\":\"model\\nckpt\"}}",
     "checkpoint.prefix: must be a plain file name"},
    {"{\"checkpoint\":{\"prefix\":\"\\u001b]0;x\\u0007\"}}",
     "checkpoint.prefix: must be a plain file name"},
    {"{\"checkpoint\":{\"prefix\":\"m\\u007f\"}}", "checkpoint.prefix: must be a plain file name"},
    {"{\"checkpoint\":{\"prefix\":\".hidden\"}}", "checkpoint.prefix: must be a plain file name"},
    {"{\"checkpoint\":{\"prefix\":\"\"}}", "checkpoint.prefix: must be a plain file name"},
    {"{\"checkpoint\":{\"init_from\":5}}", "checkpoint.init_from: must be null or an object"},
    {"{\"checkpoint\":{\"init_from\":\"x.safetensors\"}}",
     "checkpoint.init_from: must be null or an object"},
    {"{\"checkpoint\":{\"init_from\":{}}}", "checkpoint.init_from.file: missing"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"\"}}}",
     "checkpoint.init_from.file: must be a non-empty string"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"extra\":1}}}",
     "checkpoint.init_from.extra: unknown key (init_from has: file, map)"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"map\":[]}}}",
     "checkpoint.init_from.map: must be an object"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"map\":{\"w\":1}}}}",
     "checkpoint.init_from.map.w: must be a name of 1 to 127 bytes, got 1"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"map\":{\"w\":\"\"}}}}",
     "checkpoint.init_from.map.w: must be a name"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"map\":{\"\":\"w\"}}}}",
     "checkpoint.init_from.map: names must be 1 to 127 bytes"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"map\":{\"w\":\"x\",\"w\":\"y\"}}}}",
     "checkpoint.init_from.map.w: duplicate key"},
    {"{\"checkpoint\":{\"init_from\":{\"file\":\"a\",\"file\":\"b\"}}}",
     "checkpoint.init_from.file: duplicate key"},
    {"{\"train\":{\"batch_size\":1,\"batch_size\":2}}", "train.batch_size: duplicate key"},
    {"{\"train\":{\"early_stopping\":true}}", "train.early_stopping: must be null or an object"},
    {"{\"train\":{\"early_stopping\":{}}}", "train.early_stopping.metrics_file: missing"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"m\",\"patience\":0}}}",
     "train.early_stopping.patience: must be an integer in [1, 1000000], got 0"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"m\",\"min_delta\":-1}}}",
     "train.early_stopping.min_delta: must be a number in [0, 1], got -1"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"\"}}}",
     "train.early_stopping.metrics_file: must be a non-empty string"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"m\",\"wait\":1}}}",
     "train.early_stopping.wait: unknown key (early_stopping has: metrics_file, patience, "
     "min_delta)"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"m\",\"metrics_file\":\"n\"}}}",
     "train.early_stopping.metrics_file: duplicate key"},
    {"{\"eval\":{\"keep_best\":-1}}", "eval.keep_best: must be an integer in [0, 1000], got -1"},
    {"{\"eval\":{\"best_dir\":\"\"}}", "eval.best_dir: must be a non-empty string"},
    {"{\"data\":{\"dir\":\"/srv/caf\xe9\"}}", "test.json: invalid JSON at line 1, column 25 "
                                              "(byte 24): invalid UTF-8"},
    {"{\"metrics\":{\"textfile\":\"/t/m.prom\"},\"eval\":{\"textfile\":\"/t/m.prom\"}}",
     "test.json: eval.textfile: is also metrics.textfile (\"/t/m.prom\")"},
    {"{\"train\":{\"metrics_file\":\"m\"},\"eval\":{\"metrics_file\":\"m\"}}",
     "eval.metrics_file: is also train.metrics_file"},
    {"{\"eval\":{\"metrics_file\":\"m\",\"report_html\":\"m\"}}",
     "eval.report_html: is also eval.metrics_file"},
    {"{\"log\":{\"file\":\"x.prom\"},\"eval\":{\"textfile\":\"x.prom\"}}",
     "log.file: is also eval.textfile"},
    {"{\"train\":{\"metrics_file\":\"h\",\"early_stopping\":{\"metrics_file\":\"h\"}}}",
     "train.early_stopping.metrics_file: is train.metrics_file (\"h\"), which has no "
     "accuracies; it must be the evaluator's eval.metrics_file"},
    {"{\"train\":{\"early_stopping\":{\"metrics_file\":\"r\"}},\"eval\":{\"report_html\":\"r\"}}",
     "train.early_stopping.metrics_file: is eval.report_html"},
    {"{\"train\":{},\"train\":{}}", "train: duplicate section"},
    {"{\n \"train\": {\n  \"batch_size\": 1,\n }\n}", "test.json: invalid JSON at line 4"},
    {"{} x", "test.json: invalid JSON at line 1"},
    {"", "test.json: invalid JSON at line 1, column 1 (byte 0)"},
    {"[1]", "test.json: the top level must be an object, got [1]"},
    {"\"x\"", "the top level must be an object"},
    {"{\"train\":5}", "test.json: train: must be an object, got 5"},
    {"{\"data\":{\"dir\":\"a\\u0000b\"}}",
     "test.json: invalid JSON at line 1, column 18 (byte 17): \\u0000 in a string"},
    {"{\"data\":{\"dir\":\"a\tb\"}}", "control character in a string"},
    {"{\"data\\u0000x\":{}}", "\\u0000 in a string"},
};

START_TEST(test_errors)
{
	const struct bad_case *t = &bad_cases[_i];
	struct mn_config c;
	char err[MN_ERRLEN] = "";
	int rc = parse(t->json, &c, err);

	ck_assert_msg(rc == -EINVAL, "%s: rc %d", t->json, rc);
	ck_assert_msg(strstr(err, t->want) != NULL, "%s:\n  got  %s\n  want %s", t->json, err,
	              t->want);
	ck_assert_msg(strncmp(err, "test.json: ", 11) == 0, "not prefixed: %s", err);
}
END_TEST

/* Builds {"section":{"key":"<n times ch>"}}. */
static char *long_string(const char *section, const char *key, size_t n, char ch)
{
	size_t len = strlen(section) + strlen(key) + n + 32;
	char *s = malloc(len), *v = malloc(n + 1);

	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(v);
	memset(v, ch, n);
	v[n] = '\0';
	snprintf(s, len, "{\"%s\":{\"%s\":\"%s\"}}", section, key, v);
	free(v);
	return s;
}

START_TEST(test_string_lengths)
{
	struct mn_config c;
	char err[MN_ERRLEN];
	char *j;

	j = long_string("data", "dir", 1023, 'a');
	ck_assert_int_eq(parse(j, &c, err), 0);
	ck_assert_uint_eq(strlen(c.data.dir), 1023);
	free(j);
	j = long_string("data", "dir", 1024, 'a');
	ck_assert_int_eq(parse(j, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "data.dir: must be a non-empty string of at most 1023 "
	                                  "bytes, got \"aaaa"));
	ck_assert_uint_lt(strlen(err), 300);
	free(j);

	j = long_string("control", "socket", 107, 's');
	ck_assert_int_eq(parse(j, &c, err), 0);
	free(j);
	j = long_string("control", "socket", 108, 's');
	ck_assert_int_eq(parse(j, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(
	    strstr(err, "control.socket: must be a non-empty string of at most 107 bytes"));
	free(j);

	j = long_string("checkpoint", "prefix", 100, 'p');
	ck_assert_int_eq(parse(j, &c, err), 0);
	free(j);
	j = long_string("checkpoint", "prefix", 101, 'p');
	ck_assert_int_eq(parse(j, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "checkpoint.prefix: must be a plain file name"));
	free(j);

	j = long_string("log", "file", 1024, 'f');
	ck_assert_int_eq(parse(j, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "log.file: must be a string of at most 1023 bytes"));
	free(j);
}
END_TEST

START_TEST(test_init_from_limits)
{
	char json[16384], name[200];
	struct mn_config c;
	char err[MN_ERRLEN];
	size_t used;

	/* 64 entries load; 65 do not. */
	for (int n = 64; n <= 65; n++) {
		used =
		    (size_t)snprintf(json, sizeof(json),
		                     "{\"checkpoint\":{\"init_from\":{\"file\":\"w.st\",\"map\":{");
		for (int i = 0; i < n; i++)
			used += (size_t)snprintf(json + used, sizeof(json) - used,
			                         "%s\"to%d\":\"from%d\"", i ? "," : "", i, i);
		snprintf(json + used, sizeof(json) - used, "}}}}");
		if (n == 64) {
			ck_assert_int_eq(parse(json, &c, err), 0);
			ck_assert_uint_eq(c.checkpoint.init_from_nmap, 64);
			ck_assert_str_eq(c.checkpoint.init_from_map[63].to, "to63");
			ck_assert_str_eq(c.checkpoint.init_from_map[63].from, "from63");
		} else {
			ck_assert_int_eq(parse(json, &c, err), -EINVAL);
			ck_assert_ptr_nonnull(
			    strstr(err, "checkpoint.init_from.map: more than 64 entries"));
		}
	}

	/* Names of 127 bytes load; 128 do not, on either side. */
	memset(name, 'n', 128);
	name[127] = '\0';
	snprintf(json, sizeof(json),
	         "{\"checkpoint\":{\"init_from\":{\"file\":\"w.st\",\"map\":{\"%s\":\"%s\"}}}}",
	         name, name);
	ck_assert_int_eq(parse(json, &c, err), 0);
	name[127] = 'n';
	name[128] = '\0';
	snprintf(json, sizeof(json),
	         "{\"checkpoint\":{\"init_from\":{\"file\":\"w.st\",\"map\":{\"%s\":\"x\"}}}}",
	         name);
	ck_assert_int_eq(parse(json, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(
	    strstr(err, "checkpoint.init_from.map: names must be 1 to 127 bytes"));
	snprintf(json, sizeof(json),
	         "{\"checkpoint\":{\"init_from\":{\"file\":\"w.st\",\"map\":{\"x\":\"%s\"}}}}",
	         name);
	ck_assert_int_eq(parse(json, &c, err), -EINVAL);
	ck_assert_ptr_nonnull(
	    strstr(err, "checkpoint.init_from.map.x: must be a name of 1 to 127"));

	/* A file without a map; then null resets to unset. */
	ck_assert_int_eq(parse("{\"checkpoint\":{\"init_from\":{\"file\":\"w.st\"}}}", &c, err), 0);
	ck_assert_str_eq(c.checkpoint.init_from_file, "w.st");
	ck_assert_uint_eq(c.checkpoint.init_from_nmap, 0);
	ck_assert_int_eq(parse("{\"checkpoint\":{\"init_from\":null}}", &c, err), 0);
	ck_assert_str_eq(c.checkpoint.init_from_file, "");
}
END_TEST

START_TEST(test_values)
{
	struct mn_config c;
	char err[MN_ERRLEN];
	int rc;

	/* Integral numbers written with a fraction or exponent are integers. */
	rc = parse("{\"train\":{\"batch_size\":100.0,\"max_steps\":2e3},"
	           "\"model\":{\"hidden\":[],\"seed\":9007199254740992}}",
	           &c, err);
	ck_assert_msg(rc == 0, "%s", err);
	ck_assert_int_eq(c.train.batch_size, 100);
	ck_assert_int_eq(c.train.max_steps, 2000);
	ck_assert_uint_eq(c.model.nhidden, 0);
	ck_assert_uint_eq(c.model.seed, (uint64_t)P53);

	rc = parse("{\"model\":{\"hidden\":[1,2,3,4,5,6,7,1048576]},\"train\":{\"ema_decay\":0,"
	           "\"learning_rate_decay\":1,\"decay_steps\":2147483648},"
	           "\"eval\":{\"watch\":\"poll\",\"use_ema\":false},"
	           "\"log\":{\"level\":\"debug\",\"format\":\"json\"}}",
	           &c, err);
	ck_assert_msg(rc == 0, "%s", err);
	ck_assert_uint_eq(c.model.nhidden, 8);
	ck_assert_int_eq(c.model.hidden[7], 1048576);
	ck_assert_double_eq(c.train.ema_decay, 0);
	ck_assert_double_eq(c.train.learning_rate_decay, 1);
	ck_assert_int_eq(c.train.decay_steps, (int64_t)1 << 31);
	ck_assert_int_eq(c.eval.watch, MN_WATCH_POLL);
	ck_assert(!c.eval.use_ema);
	ck_assert_int_eq(c.log.level, MN_LOG_DEBUG);
	ck_assert_int_eq(c.log.format, MN_LOG_JSON);

	rc = parse("{\"train\":{\"early_stopping\":{\"metrics_file\":\"/m.jsonl\"}},"
	           "\"eval\":{\"keep_best\":3,\"best_dir\":\"/b\"}}",
	           &c, err);
	ck_assert_msg(rc == 0, "%s", err);
	ck_assert(c.train.early_stopping.enabled);
	ck_assert_str_eq(c.train.early_stopping.metrics_file, "/m.jsonl");
	ck_assert_int_eq(c.train.early_stopping.patience, 5);
	ck_assert_double_eq(c.train.early_stopping.min_delta, 0);
	ck_assert_int_eq(c.eval.keep_best, 3);
	ck_assert_str_eq(c.eval.best_dir, "/b");
	rc = parse("{\"train\":{\"early_stopping\":{\"metrics_file\":\"m\",\"patience\":2,"
	           "\"min_delta\":0.001}}}",
	           &c, err);
	ck_assert_msg(rc == 0, "%s", err);
	ck_assert_int_eq(c.train.early_stopping.patience, 2);
	ck_assert_double_eq(c.train.early_stopping.min_delta, 0.001);
	ck_assert_int_eq(parse("{\"train\":{\"early_stopping\":null}}", &c, err), 0);
	ck_assert(!c.train.early_stopping.enabled);

	/* Empty sections and an empty object are fine; whitespace around it too. */
	ck_assert_int_eq(parse(" \n{ \"data\": {}, \"log\": {} }\n\n", &c, err), 0);
}
END_TEST

START_TEST(test_partial_file)
{
	struct mn_config c, d;
	char path[PATH_MAX], err[MN_ERRLEN];
	const char *json = "{\"train\": {\"max_steps\": 5000}}\n";

	snprintf(path, sizeof(path), "%s/partial.json", tmpdir);
	mn_test_write_file(path, json, strlen(json));
	mn_config_defaults(&d);
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(mn_config_load(path, &c, err, sizeof(err)), 0);
	ck_assert_int_eq(c.train.max_steps, 5000);
	d.train.max_steps = 5000;
	ck_assert_uint_eq(count_diff(&c, &d), 0);
}
END_TEST

START_TEST(test_load_failures)
{
	struct mn_config c, before;
	char path[PATH_MAX], err[MN_ERRLEN];
	const char *bad = "{\"train\": {\"max_steps\": 9, \"batch_size\": 0}}";
	size_t big = MN_CONFIG_FILE_MAX + 1;
	char *data;

	/* A non-default start, so "unchanged" differs from "reset to defaults". */
	ck_assert_int_eq(
	    parse("{\"train\":{\"max_steps\":7},\"log\":{\"level\":\"warn\"}}", &c, err), 0);
	memcpy(&before, &c, sizeof(c));

	snprintf(path, sizeof(path), "%s/bad.json", tmpdir);
	mn_test_write_file(path, bad, strlen(bad));
	ck_assert_int_eq(mn_config_load(path, &c, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_ptr_nonnull(strstr(err, ": train.batch_size: must be an integer in [1, 65536], "
	                                  "got 0"));
	ck_assert_int_eq(memcmp(&before, &c, sizeof(c)), 0);

	ck_assert_int_eq(mn_config_parse(bad, strlen(bad), "x", &c, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(memcmp(&before, &c, sizeof(c)), 0);

	snprintf(path, sizeof(path), "%s/missing.json", tmpdir);
	ck_assert_int_eq(mn_config_load(path, &c, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_int_eq(memcmp(&before, &c, sizeof(c)), 0);

	/* A valid object padded with spaces to one byte over the limit. */
	data = malloc(big);
	ck_assert_ptr_nonnull(data);
	memset(data, ' ', big);
	data[0] = '{';
	data[big - 1] = '}';
	snprintf(path, sizeof(path), "%s/big.json", tmpdir);
	mn_test_write_file(path, data, big);
	ck_assert_int_eq(mn_config_load(path, &c, err, sizeof(err)), -EFBIG);
	ck_assert_ptr_nonnull(strstr(err, "larger than"));
	ck_assert_int_eq(mn_config_parse(data, big, "big", &c, err, sizeof(err)), -EFBIG);
	ck_assert_int_eq(memcmp(&before, &c, sizeof(c)), 0);
	free(data);

	/* A NUL byte in the text. */
	ck_assert_int_eq(mn_config_parse("{}\0{}", 5, "nul", &c, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "nul: invalid JSON at line 1, column 3 (byte 2): NUL"));
}
END_TEST

/* Every key away from its default, with awkward values. */
static void unusual(struct mn_config *c)
{
	mn_config_defaults(c);
	snprintf(c->data.dir, sizeof(c->data.dir), "/data/with \"quotes\" and \\ and é");
	c->data.validation_size = 0;
	c->model.nhidden = 3;
	c->model.hidden[0] = 1;
	c->model.hidden[1] = 1048576;
	c->model.hidden[2] = 7;
	c->model.init_stddev = 0.30000000000000004;
	c->model.seed = (uint64_t)P53;
	c->train.batch_size = 1000; /* at most 1023 rows for a network of 1048594 units */
	c->train.learning_rate = 1e-300;
	c->train.learning_rate_decay = 0.1 + 0.2;
	c->train.decay_steps = (int64_t)1 << 31;
	c->train.l2 = 0;
	c->train.ema_decay = 0.9999999999999999;
	c->train.max_steps = P53;
	c->train.threads = 256;
	snprintf(c->checkpoint.dir, sizeof(c->checkpoint.dir), "ckpt");
	snprintf(c->checkpoint.prefix, sizeof(c->checkpoint.prefix), "m");
	c->checkpoint.every_steps = 1;
	c->checkpoint.max_to_keep = 0;
	snprintf(c->checkpoint.init_from_file, sizeof(c->checkpoint.init_from_file), "/w.st");
	c->checkpoint.init_from_nmap = 2;
	snprintf(c->checkpoint.init_from_map[0].to, MN_CONFIG_NAME_MAX, "layer1/weights");
	snprintf(c->checkpoint.init_from_map[0].from, MN_CONFIG_NAME_MAX, "hidden1/weights");
	snprintf(c->checkpoint.init_from_map[1].to, MN_CONFIG_NAME_MAX, "layer1/biases");
	snprintf(c->checkpoint.init_from_map[1].from, MN_CONFIG_NAME_MAX, "hidden1/biases");
	snprintf(c->control.socket, sizeof(c->control.socket), "/tmp/s");
	c->eval.use_ema = false;
	c->eval.watch = MN_WATCH_EVENTS;
	c->eval.poll_interval_ms = 3600000;
	snprintf(c->eval.metrics_file, sizeof(c->eval.metrics_file), "/tmp/m.jsonl");
	c->eval.keep_best = 1000;
	snprintf(c->eval.best_dir, sizeof(c->eval.best_dir), "best");
	c->train.early_stopping.enabled = true;
	snprintf(c->train.early_stopping.metrics_file, sizeof(c->train.early_stopping.metrics_file),
	         "/tmp/m.jsonl");
	c->train.early_stopping.patience = 1000000;
	c->train.early_stopping.min_delta = 0.1 + 0.2;
	c->log.level = MN_LOG_ERROR;
	c->log.format = MN_LOG_JSON;
	snprintf(c->log.file, sizeof(c->log.file), "/tmp/l\nog");
}

START_TEST(test_json_round_trip)
{
	struct mn_config a, b;
	char err[MN_ERRLEN];
	char *j1, *j2;
	int rc;

	mn_config_defaults(&a);
	j1 = mn_config_to_json(&a);
	ck_assert_ptr_nonnull(j1);
	ck_assert_ptr_nonnull(strstr(j1, "\"model\":{\"hidden\":[500],\"init_stddev\":0.1,"
	                                 "\"seed\":42}"));
	ck_assert_ptr_nonnull(strstr(j1, "\"init_from\":null"));
	ck_assert_ptr_nonnull(strstr(j1, "\"early_stopping\":null"));
	ck_assert_ptr_null(strchr(j1, '\n'));
	free(j1);

	unusual(&a);
	j1 = mn_config_to_json(&a);
	ck_assert_ptr_nonnull(j1);
	ck_assert_ptr_nonnull(strstr(j1, "\"seed\":9007199254740992"));
	ck_assert_ptr_nonnull(strstr(j1, "\"max_steps\":9007199254740992"));
	ck_assert_ptr_nonnull(strstr(j1, "\"init_from\":{\"file\":\"/w.st\",\"map\":{"
	                                 "\"layer1/weights\":\"hidden1/weights\","
	                                 "\"layer1/biases\":\"hidden1/biases\"}}"));
	ck_assert_ptr_nonnull(strstr(j1,
	                             "\"early_stopping\":{\"metrics_file\":\"/tmp/m.jsonl\","
	                             "\"patience\":1000000,\"min_delta\":0.30000000000000004}"));
	memset(&b, 0, sizeof(b));
	rc = mn_config_parse(j1, strlen(j1), "round", &b, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s\n%s", err, j1);
	ck_assert_uint_eq(count_diff(&a, &b), 0);
	ck_assert(a.model.init_stddev == b.model.init_stddev);
	ck_assert(a.train.learning_rate == b.train.learning_rate);
	ck_assert(a.train.ema_decay == b.train.ema_decay);
	ck_assert_str_eq(a.data.dir, b.data.dir);
	ck_assert_str_eq(a.log.file, b.log.file);
	j2 = mn_config_to_json(&b);
	ck_assert_ptr_nonnull(j2);
	ck_assert_str_eq(j1, j2);
	free(j1);
	free(j2);
}
END_TEST

struct seen {
	char keys[64][64];
	bool reloadable[64];
	size_t n;
};

static void record(const char *key, bool reloadable, void *arg)
{
	struct seen *s = arg;

	ck_assert_uint_lt(s->n, 64);
	snprintf(s->keys[s->n], sizeof(s->keys[s->n]), "%s", key);
	s->reloadable[s->n] = reloadable;
	s->n++;
}

START_TEST(test_diff)
{
	struct mn_config a, b;
	struct seen s = {.n = 0};
	static const struct {
		const char *key;
		bool reloadable;
	} want[] = {
	    {"model.hidden", false},         {"train.batch_size", false},
	    {"train.learning_rate", true},   {"checkpoint.max_to_keep", true},
	    {"checkpoint.init_from", false}, {"log.level", true},
	};

	mn_config_defaults(&a);
	mn_config_defaults(&b);
	ck_assert_uint_eq(mn_config_diff(&a, &b, record, &s), 0);
	ck_assert_uint_eq(s.n, 0);

	b.log.level = MN_LOG_DEBUG;
	b.train.learning_rate = 0.5;
	b.model.hidden[0] = 256;
	b.train.batch_size = 50;
	b.checkpoint.max_to_keep = 0;
	snprintf(b.checkpoint.init_from_file, sizeof(b.checkpoint.init_from_file), "x");
	ck_assert_uint_eq(mn_config_diff(&a, &b, record, &s), 6);
	ck_assert_uint_eq(s.n, 6);
	for (size_t i = 0; i < 6; i++) {
		ck_assert_str_eq(s.keys[i], want[i].key);
		ck_assert_int_eq(s.reloadable[i], want[i].reloadable);
	}

	/* Composite keys compare as a whole: a longer list or another map entry differs. */
	mn_config_defaults(&b);
	b.model.nhidden = 2;
	b.model.hidden[1] = 10;
	ck_assert_uint_eq(count_diff(&a, &b), 1);
	/* Entries past the count do not matter. */
	mn_config_defaults(&b);
	b.model.hidden[5] = 10;
	ck_assert_uint_eq(count_diff(&a, &b), 0);
	mn_config_defaults(&a);
	unusual(&a);
	memcpy(&b, &a, sizeof(b));
	snprintf(b.checkpoint.init_from_map[1].from, MN_CONFIG_NAME_MAX, "other");
	s.n = 0;
	ck_assert_uint_eq(mn_config_diff(&a, &b, record, &s), 1);
	ck_assert_str_eq(s.keys[0], "checkpoint.init_from");
}
END_TEST

START_TEST(test_apply_reloadable)
{
	struct mn_config to, from, d;
	struct seen s = {.n = 0};

	mn_config_defaults(&to);
	mn_config_defaults(&d);
	unusual(&from);
	mn_config_apply_reloadable(&to, &from);

	/* What changed from the defaults is exactly the reloadable keys... */
	mn_config_diff(&d, &to, record, &s);
	ck_assert_uint_eq(s.n, 8);
	for (size_t i = 0; i < s.n; i++)
		ck_assert_msg(s.reloadable[i], "%s is not reloadable", s.keys[i]);
	ck_assert_double_eq(to.train.learning_rate, from.train.learning_rate);
	ck_assert_int_eq(to.log.level, MN_LOG_ERROR);
	ck_assert(!to.eval.use_ema);

	/* ...and what still differs from the new file is exactly the rest. */
	s.n = 0;
	mn_config_diff(&to, &from, record, &s);
	ck_assert_uint_gt(s.n, 0);
	for (size_t i = 0; i < s.n; i++)
		ck_assert_msg(!s.reloadable[i], "%s was not applied", s.keys[i]);
	ck_assert_int_eq(to.train.batch_size, 100);
	ck_assert_uint_eq(to.model.nhidden, 1);
	ck_assert_str_eq(to.checkpoint.init_from_file, "");
}
END_TEST

START_TEST(test_reloadable)
{
	static const char *const yes[] = {
	    "train.learning_rate",    "train.learning_rate_decay",
	    "train.decay_steps",      "train.max_steps",
	    "checkpoint.every_steps", "checkpoint.max_to_keep",
	    "checkpoint.write_all",   "log.level",
	    "eval.use_ema",
	};
	static const char *const no[] = {
	    "model.hidden",
	    "train.batch_size",
	    "model.seed",
	    "data.dir",
	    "checkpoint.init_from",
	    "log.format",
	    "log.file",
	    "control.socket",
	    "train.threads",
	    "train.l2",
	    "nonsense.key",
	    "train",
	    "",
	};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		ck_assert_msg(mn_config_reloadable(yes[i]), "%s", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		ck_assert_msg(!mn_config_reloadable(no[i]), "%s", no[i]);
	ck_assert(!mn_config_reloadable(NULL));
}
END_TEST

/* Every key of the schema, in its order, from the defaults' JSON: n of them into paths. */
static size_t all_keys(char paths[][64], size_t max)
{
	struct mn_config c;
	char *json;
	cJSON *root, *sec, *item;
	size_t n = 0;

	mn_config_defaults(&c);
	json = mn_config_to_json(&c);
	ck_assert_ptr_nonnull(json);
	root = cJSON_Parse(json);
	ck_assert_ptr_nonnull(root);
	cJSON_ArrayForEach(sec, root)
	{
		cJSON_ArrayForEach(item, sec)
		{
			ck_assert_uint_lt(n, max);
			snprintf(paths[n++], 64, "%s.%s", sec->string, item->string);
		}
	}
	cJSON_Delete(root);
	free(json);
	return n;
}

START_TEST(test_users)
{
	char paths[64][64];
	size_t n = all_keys(paths, 64);
	unsigned all = MN_CONFIG_TRAINER | MN_CONFIG_EVALUATOR | MN_CONFIG_CTL;

	/* Every key is some program's, and read by mnistd or mnist-eval (whose reloads report it).
	 */
	ck_assert_uint_gt(n, 30);
	for (size_t i = 0; i < n; i++) {
		unsigned u = mn_config_users(paths[i]);

		ck_assert_msg(u != 0 && (u & ~all) == 0, "%s: users %#x", paths[i], u);
		ck_assert_msg(u & (MN_CONFIG_TRAINER | MN_CONFIG_EVALUATOR), "%s: only mnistctl's",
		              paths[i]);
	}
	ck_assert_uint_eq(mn_config_users("train.learning_rate"), MN_CONFIG_TRAINER);
	ck_assert_uint_eq(mn_config_users("eval.textfile"), MN_CONFIG_EVALUATOR);
	ck_assert_uint_eq(mn_config_users("log.level"), MN_CONFIG_TRAINER | MN_CONFIG_EVALUATOR);
	/* The trainer follows the evaluator's metrics for early stopping as eval.watch says. */
	ck_assert_uint_eq(mn_config_users("eval.poll_interval_ms"), all);
	ck_assert_uint_eq(mn_config_users("control.socket"), MN_CONFIG_TRAINER | MN_CONFIG_CTL);
	ck_assert_uint_eq(mn_config_users("model.hidden"), MN_CONFIG_TRAINER);
	ck_assert_uint_eq(mn_config_users("nonsense.key"), 0);
	ck_assert_uint_eq(mn_config_users(""), 0);
	ck_assert_uint_eq(mn_config_users(NULL), 0);

	/* What a change is to each program. */
	ck_assert_int_eq(mn_config_change_for("train.max_steps", MN_CONFIG_TRAINER),
	                 MN_CONFIG_APPLY);
	ck_assert_int_eq(mn_config_change_for("train.max_steps", MN_CONFIG_EVALUATOR),
	                 MN_CONFIG_UNUSED);
	ck_assert_int_eq(mn_config_change_for("eval.use_ema", MN_CONFIG_EVALUATOR),
	                 MN_CONFIG_APPLY);
	ck_assert_int_eq(mn_config_change_for("eval.use_ema", MN_CONFIG_TRAINER), MN_CONFIG_UNUSED);
	ck_assert_int_eq(mn_config_change_for("eval.textfile", MN_CONFIG_TRAINER),
	                 MN_CONFIG_UNUSED);
	ck_assert_int_eq(mn_config_change_for("eval.textfile", MN_CONFIG_EVALUATOR),
	                 MN_CONFIG_RESTART);
	ck_assert_int_eq(mn_config_change_for("log.level", MN_CONFIG_EVALUATOR), MN_CONFIG_APPLY);
	ck_assert_int_eq(mn_config_change_for("data.dir", MN_CONFIG_TRAINER), MN_CONFIG_RESTART);
	ck_assert_int_eq(mn_config_change_for("nonsense.key", MN_CONFIG_TRAINER), MN_CONFIG_UNUSED);
}
END_TEST

START_TEST(test_apply_unused)
{
	static const unsigned programs[] = {MN_CONFIG_TRAINER, MN_CONFIG_EVALUATOR};
	struct mn_config to, from;
	struct seen s;

	unusual(&from);
	for (size_t p = 0; p < 2; p++) {
		mn_config_defaults(&to);
		mn_config_apply_unused(&to, &from, programs[p]);
		/* What still differs is the program's own keys: the others are taken over. */
		s.n = 0;
		mn_config_diff(&to, &from, record, &s);
		for (size_t i = 0; i < s.n; i++)
			ck_assert_msg(mn_config_users(s.keys[i]) & programs[p],
			              "%s, not used by %#x, was not copied", s.keys[i],
			              programs[p]);
	}
	/* The trainer does not take the evaluator's best_dir; the evaluator not train.batch_size.
	 */
	mn_config_defaults(&to);
	mn_config_apply_unused(&to, &from, MN_CONFIG_TRAINER);
	ck_assert_str_eq(to.eval.best_dir, "best");
	ck_assert_int_eq(to.train.batch_size, 100);
	mn_config_defaults(&to);
	mn_config_apply_unused(&to, &from, MN_CONFIG_EVALUATOR);
	ck_assert_int_eq(to.train.batch_size, 1000);
	ck_assert_str_eq(to.eval.best_dir, "/var/lib/mnist-eval");
}
END_TEST

START_TEST(test_decay_steps_and_arch)
{
	struct mn_config c;
	struct mn_arch a;

	mn_config_defaults(&c);
	ck_assert_int_eq(mn_config_decay_steps(&c, 55000), 550);
	ck_assert_int_eq(mn_config_decay_steps(&c, 50), 1);
	ck_assert_int_eq(mn_config_decay_steps(&c, 0), 1);
	c.train.decay_steps = 1234;
	ck_assert_int_eq(mn_config_decay_steps(&c, 55000), 1234);

	memset(&a, 0x5a, sizeof(a));
	mn_config_arch(&c, 784, 10, &a);
	ck_assert_uint_eq(a.input, 784);
	ck_assert_uint_eq(a.output, 10);
	ck_assert_uint_eq(a.nhidden, 1);
	ck_assert_uint_eq(a.hidden[0], 500);
	ck_assert_uint_eq(a.hidden[1], 0);
	c.model.nhidden = 0;
	mn_config_arch(&c, 4, 3, &a);
	ck_assert_uint_eq(a.nhidden, 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = mn_test_tcase(s, "core", setup, teardown);

	MN_TEST_ADD(tc, test_defaults, test_shipped_file);
	tcase_add_loop_test(tc, test_errors, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	MN_TEST_ADD(tc, test_string_lengths, test_init_from_limits, test_values, test_partial_file,
	            test_load_failures, test_json_round_trip, test_diff, test_apply_reloadable,
	            test_reloadable, test_users, test_apply_unused, test_decay_steps_and_arch);
	return mn_test_run(s);
}
