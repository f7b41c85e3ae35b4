/* test_metrics.c - strict metrics files, the step rule, best.json, the summary. */
#include "metrics.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mn_test.h"
#include "util.h"

#define T(step, loss)                                                                              \
	"{\"step\":" #step ",\"loss\":" #loss ",\"learning_rate\":0.5,\"steps_per_sec\":10,"       \
	"\"time\":\"2026-11-29T10:00:0" #step ".000Z\",\"max_steps\":9}\n"
#define E(step, acc)                                                                               \
	"{\"step\":" #step ",\"accuracy\":" #acc ",\"loss\":0.3,\"checkpoint\":\"m-" #step         \
	"\",\"ema\":true,\"time\":\"2026-11-29T10:00:0" #step ".500Z\",\"latency_ms\":1}\n"

static char dir[MN_TEST_DIRLEN];

static void setup(void)
{
	mn_test_tmpdir(dir, sizeof(dir));
}

static void teardown(void)
{
	mn_test_rmtree(dir);
}

static int parse(enum mn_metrics_kind kind, const char *text, struct mn_metrics_series *s,
                 char *err)
{
	return mn_metrics_parse(kind, text, strlen(text), "f.jsonl", s, err, MN_ERRLEN);
}

START_TEST(train_lines_parse)
{
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, 2.5) T(2, 1.25), &s, err), 0);
	ck_assert_uint_eq(s.n, 2);
	ck_assert_uint_eq(s.lines, 2);
	ck_assert_int_eq(s.points[1].step, 2);
	ck_assert(s.points[1].loss == 1.25);
	ck_assert(s.points[0].learning_rate == 0.5);
	ck_assert(s.points[0].steps_per_sec == 10);
	ck_assert(isnan(s.points[0].accuracy));
	ck_assert_int_eq(s.points[1].time_ms - s.points[0].time_ms, 1000);
	mn_metrics_series_free(&s);
}
END_TEST

START_TEST(backwards_step_starts_over)
{
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	/* A crash after step 3, a resume from 2: 2 and 3 are replaced, 1 is kept. */
	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, 1) T(2, 2) T(3, 3) T(2, 5) T(4, 6), &s, err),
	                 0);
	ck_assert_uint_eq(s.n, 3);
	ck_assert_uint_eq(s.lines, 5);
	ck_assert_int_eq(s.points[0].step, 1);
	ck_assert_int_eq(s.points[1].step, 2);
	ck_assert(s.points[1].loss == 5);
	ck_assert_int_eq(s.points[2].step, 4);
	mn_metrics_series_free(&s);
	/* The last line for a repeated step wins. */
	ck_assert_int_eq(parse(MN_METRICS_EVAL, E(1, 0.5) E(1, 0.75), &s, err), 0);
	ck_assert_uint_eq(s.n, 1);
	ck_assert(s.points[0].accuracy == 0.75);
	ck_assert_str_eq(s.points[0].checkpoint, "m-1");
	mn_metrics_series_free(&s);
}
END_TEST

START_TEST(unfinished_last_line_is_left_out)
{
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	ck_assert_int_eq(parse(MN_METRICS_EVAL, E(1, 0.5) "{\"step\":2,\"accu", &s, err), 0);
	ck_assert_uint_eq(s.n, 1);
	mn_metrics_series_free(&s);
}
END_TEST

/*
 * A line its writer never finished (it died mid-write, or a crash cut the
 * file and zero-filled its end) and that a later writer ended with a
 * newline is left out and counted, not a reason to refuse the whole
 * history: the lines after it are the run that went on.
 */
START_TEST(cut_off_lines_are_left_out)
{
	static const char text[] =
	    T(1, 1) "{\"step\":2,\"loss\":0.5,\"lea\n" T(3, 3) "\0\0\0\0\n"
	                                                       "{\"step\":4,\"lo\0\0\0\n"
	                                                       "\0\0" T(5, 5);
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	ck_assert_msg(mn_metrics_parse(MN_METRICS_TRAIN, text, sizeof(text) - 1, "f.jsonl", &s, err,
	                               sizeof(err)) == 0,
	              "%s", err);
	ck_assert_uint_eq(s.n, 3);
	ck_assert_uint_eq(s.lines, 6);
	ck_assert_uint_eq(s.cut, 3);
	ck_assert_int_eq(s.points[1].step, 3);
	ck_assert_int_eq(s.points[2].step, 5);
	mn_metrics_series_free(&s);
	/* A line that is whole but wrong is still an error, as is text that is no record. */
	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, 1) "{\"step\":2,oops}\n" T(3, 3), &s, err),
	                 -EINVAL);
	ck_assert_msg(strstr(err, "f.jsonl:2: not a JSON object"), "%s", err);
	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, 1) "garbage {\"step\":2\n", &s, err),
	                 -EINVAL);
	ck_assert_msg(strstr(err, "f.jsonl:2: not a JSON object"), "%s", err);
	/* Nothing but cut-off lines is no lines yet. */
	ck_assert_int_eq(parse(MN_METRICS_TRAIN, "{\"step\":1\n", &s, err), -ENODATA);
}
END_TEST

START_TEST(bad_lines_name_the_line)
{
	static const struct {
		enum mn_metrics_kind kind;
		const char *text, *want;
	} cases[] = {
	    {MN_METRICS_TRAIN, "", "f.jsonl: has no lines yet"},
	    {MN_METRICS_TRAIN, "{\"step\":1", "f.jsonl: has no lines yet"},
	    {MN_METRICS_TRAIN, T(1, 1) "garbage\n", "f.jsonl:2: not a JSON object"},
	    {MN_METRICS_TRAIN, "[1]\n", "f.jsonl:1: not a JSON object"},
	    {MN_METRICS_TRAIN, "\n", "f.jsonl:1: not a JSON object"},
	    {MN_METRICS_TRAIN, "{\"step\":1.5}\n", "f.jsonl:1: \"step\" must be an integer"},
	    {MN_METRICS_TRAIN, "{\"step\":-1}\n", "f.jsonl:1: \"step\" must be an integer"},
	    {MN_METRICS_TRAIN, "{\"step\":1,\"loss\":\"x\"}\n", "f.jsonl:1: \"loss\" must be"},
	    {MN_METRICS_TRAIN, "{\"step\":1,\"loss\":1,\"time\":\"yesterday\"}\n",
	     "f.jsonl:1: \"time\" must be an RFC 3339 time"},
	    {MN_METRICS_TRAIN,
	     "{\"step\":1,\"loss\":1,\"time\":\"2026-11-29T10:00:00Z\",\"learning_rate\":1}\n",
	     "f.jsonl:1: \"steps_per_sec\" must be"},
	    {MN_METRICS_EVAL,
	     "{\"step\":1,\"loss\":1,\"time\":\"2026-11-29T10:00:00Z\",\"accuracy\":1.5}\n",
	     "f.jsonl:1: \"accuracy\" must be a number in [0, 1]"},
	    {MN_METRICS_EVAL,
	     "{\"step\":1,\"loss\":1,\"time\":\"2026-11-29T10:00:00Z\",\"accuracy\":1}\n",
	     "f.jsonl:1: \"checkpoint\" must be"},
	    /* A training history is not an evaluation file. */
	    {MN_METRICS_EVAL, T(1, 1), "f.jsonl:1: \"accuracy\" must be"},
	};
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = parse(cases[i].kind, cases[i].text, &s, err);

		ck_assert_msg(rc < 0, "case %zu accepted", i);
		ck_assert_msg(strncmp(err, cases[i].want, strlen(cases[i].want)) == 0,
		              "case %zu: got \"%s\", want \"%s...\"", i, err, cases[i].want);
		ck_assert_ptr_null(s.points);
	}
	ck_assert_int_eq(parse(MN_METRICS_TRAIN, "", &s, err), -ENODATA);
}
END_TEST

START_TEST(null_loss_is_nan)
{
	struct mn_metrics_series s;
	char err[MN_ERRLEN];

	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, null), &s, err), 0);
	ck_assert(isnan(s.points[0].loss));
	mn_metrics_series_free(&s);
}
END_TEST

START_TEST(times)
{
	int64_t ms;

	ck_assert(mn_metrics_parse_time("1970-01-01T00:00:01.5Z", &ms));
	ck_assert_int_eq(ms, 1500);
	ck_assert(mn_metrics_parse_time("1970-01-01T01:00:00+01:00", &ms));
	ck_assert_int_eq(ms, 0);
	ck_assert(mn_metrics_parse_time("2026-11-29T19:05:52.330Z", &ms));
	ck_assert_int_eq(ms, 1795979152330LL);
	ck_assert(!mn_metrics_parse_time("2026-11-29 19:05:52Z", &ms));
	ck_assert(!mn_metrics_parse_time("2026-11-29T19:05:52", &ms));
	ck_assert(!mn_metrics_parse_time("2026-13-29T19:05:52Z", &ms));
	ck_assert(!mn_metrics_parse_time("2026-11-29T19:05:52.Z", &ms));
	ck_assert(!mn_metrics_parse_time("2026-11-29T19:05:52Zx", &ms));
}
END_TEST

START_TEST(summary_of_both_files)
{
	struct mn_metrics_series t, e;
	struct mn_metrics_summary s;
	struct mn_metrics_best b = {.step = 2, .accuracy = 0.5, .file = "kept-2"};
	char err[MN_ERRLEN];

	ck_assert_int_eq(parse(MN_METRICS_TRAIN, T(1, 1) T(2, 2) T(5, 3), &t, err), 0);
	ck_assert_int_eq(
	    parse(MN_METRICS_EVAL, E(1, 0.5) E(3, 0.75) E(4, 0.75) E(6, 0.625), &e, err), 0);
	mn_metrics_summarize(&t, &e, NULL, &s);
	ck_assert_int_eq(s.steps, 6);
	ck_assert_int_eq(s.best_step, 3); /* the earliest of equals */
	ck_assert(s.best_accuracy == 0.75);
	ck_assert_str_eq(s.best_checkpoint, "m-3");
	ck_assert_int_eq(s.latest_step, 6);
	ck_assert(s.latest_accuracy == 0.625);
	ck_assert(s.steps_per_sec == 10);
	ck_assert(s.elapsed_s == 5.5); /* 10:00:01.000 to 10:00:06.500 */
	mn_metrics_summarize(&t, &e, &b, &s);
	ck_assert_int_eq(s.best_step, 2);
	ck_assert_str_eq(s.best_checkpoint, "kept-2");
	mn_metrics_summarize(&t, NULL, NULL, &s);
	ck_assert_int_eq(s.steps, 5);
	ck_assert_int_eq(s.best_step, -1);
	ck_assert(isnan(s.latest_accuracy));
	ck_assert(s.elapsed_s == 4);
	mn_metrics_summarize(NULL, NULL, NULL, &s);
	ck_assert_int_eq(s.steps, -1);
	ck_assert(isnan(s.elapsed_s));
	mn_metrics_series_free(&t);
	mn_metrics_series_free(&e);
}
END_TEST

START_TEST(best_json)
{
	char path[300], err[MN_ERRLEN];
	struct mn_metrics_best b;
	static const char good[] = "{\"best\":[{\"step\":3000,\"accuracy\":0.875,\"loss\":0.3,"
	                           "\"file\":\"model.ckpt-3000.safetensors\",\"time\":\"t\"},"
	                           "{\"step\":2000,\"accuracy\":0.8,\"loss\":0.4,"
	                           "\"file\":\"model.ckpt-2000.safetensors\",\"time\":\"t\"}]}";

	snprintf(path, sizeof(path), "%s/best.json", dir);
	ck_assert_int_eq(mn_metrics_load_best(path, &b, err, sizeof(err)), 0);
	mn_test_write_file(path, good, strlen(good));
	ck_assert_int_eq(mn_metrics_load_best(path, &b, err, sizeof(err)), 1);
	ck_assert_int_eq(b.step, 3000);
	ck_assert(b.accuracy == 0.875);
	ck_assert_str_eq(b.file, "model.ckpt-3000.safetensors");
	mn_test_write_file(path, "{\"best\":[]}", 11);
	ck_assert_int_eq(mn_metrics_load_best(path, &b, err, sizeof(err)), 0);
	mn_test_write_file(path, "{\"best\":[{\"step\":1}]}", 21);
	ck_assert_int_eq(mn_metrics_load_best(path, &b, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "best.json"));
	mn_test_write_file(path, "garbage", 7);
	ck_assert_int_eq(mn_metrics_load_best(path, &b, err, sizeof(err)), -EINVAL);
}
END_TEST

START_TEST(load_names_a_missing_file)
{
	char path[300], err[MN_ERRLEN];
	struct mn_metrics_series s;

	snprintf(path, sizeof(path), "%s/none.jsonl", dir);
	ck_assert_int_eq(mn_metrics_load(MN_METRICS_EVAL, path, &s, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, path));
	mn_test_write_file(path, E(1, 0.5), strlen(E(1, 0.5)));
	ck_assert_int_eq(mn_metrics_load(MN_METRICS_EVAL, path, &s, err, sizeof(err)), 0);
	ck_assert_uint_eq(s.n, 1);
	mn_metrics_series_free(&s);
}
END_TEST

/* Appends text to path, as a writer adds lines. */
static void append(const char *path, const char *text)
{
	FILE *f = fopen(path, "a");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(text, f), 0);
	ck_assert_int_eq(fclose(f), 0);
}

/* Appends len bytes (NUL bytes too). */
static void append_bytes(const char *path, const char *data, size_t len)
{
	FILE *f = fopen(path, "a");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

static int update(struct mn_metrics_file *f, const char *path, char *err)
{
	return mn_metrics_file_update(f, path, err, MN_ERRLEN);
}

/* f's series is what a whole-file parse of path makes (or both fail alike). */
static void same_as_whole_file(const struct mn_metrics_file *f, int rc, const char *path)
{
	struct mn_metrics_series w;
	char err[MN_ERRLEN];
	int wrc = mn_metrics_load(f->kind, path, &w, err, sizeof(err));

	ck_assert_int_eq(rc, wrc);
	ck_assert_uint_eq(f->series.n, w.n);
	if (rc < 0)
		return;
	ck_assert_uint_eq(f->series.lines, w.lines);
	ck_assert_uint_eq(f->series.cut, w.cut);
	for (size_t i = 0; i < w.n; i++) {
		const struct mn_metrics_point *a = &f->series.points[i], *b = &w.points[i];

		ck_assert_int_eq(a->step, b->step);
		ck_assert_int_eq(a->time_ms, b->time_ms);
		ck_assert(a->loss == b->loss || (isnan(a->loss) && isnan(b->loss)));
		ck_assert(a->accuracy == b->accuracy || (isnan(a->accuracy) && isnan(b->accuracy)));
		ck_assert_str_eq(a->checkpoint ? a->checkpoint : "",
		                 b->checkpoint ? b->checkpoint : "");
	}
	mn_metrics_series_free(&w);
}

/*
 * An update reads only what was appended since the one before; a partial
 * last line is not consumed until its newline is there, then read whole.
 */
START_TEST(update_reads_only_what_was_appended)
{
	char path[300], err[MN_ERRLEN];
	const char *more = T(3, 0.5) T(4, 0.25), *line = T(5, 0.125);
	struct mn_metrics_file f;
	size_t half = strlen(line) / 2;
	uint64_t size;

	snprintf(path, sizeof(path), "%s/train.jsonl", dir);
	mn_metrics_file_init(&f, MN_METRICS_TRAIN);
	append(path, T(1, 2) T(2, 1));
	size = strlen(T(1, 2) T(2, 1));
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, size);
	ck_assert_uint_eq(f.offset, size);
	ck_assert_uint_eq(f.series.n, 2);

	ck_assert_int_eq(update(&f, path, err), 0); /* nothing new: nothing read */
	ck_assert_uint_eq(f.last_read, 0);

	append(path, more);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(more));
	size += strlen(more);
	ck_assert_uint_eq(f.offset, size);
	ck_assert_uint_eq(f.series.n, 4);
	ck_assert_int_eq(f.series.points[3].step, 4);

	/* Half a line: read, not consumed, left out. */
	append_bytes(path, line, half);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, half);
	ck_assert_uint_eq(f.offset, size);
	ck_assert_uint_eq(f.series.n, 4);
	ck_assert_uint_eq(f.series.lines, 4);
	append(path, line + half);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(line));
	ck_assert_uint_eq(f.series.n, 5);
	ck_assert(f.series.points[4].loss == 0.125);
	same_as_whole_file(&f, 0, path);
	mn_metrics_file_free(&f);
}
END_TEST

/* The step rule holds across updates: a resume's lines replace what they repeat. */
START_TEST(update_keeps_the_step_rule)
{
	char path[300], err[MN_ERRLEN];
	struct mn_metrics_file f;

	snprintf(path, sizeof(path), "%s/eval.jsonl", dir);
	mn_metrics_file_init(&f, MN_METRICS_EVAL);
	append(path, E(1, 0.5) E(2, 0.6) E(3, 0.7));
	ck_assert_int_eq(update(&f, path, err), 0);
	append(path, E(2, 0.75));
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.series.n, 2);
	ck_assert_uint_eq(f.series.lines, 4);
	ck_assert(f.series.points[1].accuracy == 0.75);
	append(path, E(2, 0.8) E(4, 0.9));
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.series.n, 3);
	ck_assert(f.series.points[1].accuracy == 0.8);
	ck_assert_str_eq(f.series.points[2].checkpoint, "m-4");
	same_as_whole_file(&f, 0, path);
	mn_metrics_file_free(&f);
}
END_TEST

/*
 * Whatever a writer does between updates (lines, halves of lines, cut-off
 * records, null losses, resumes), the incremental series is the one a
 * whole-file read makes at that moment.
 */
START_TEST(update_agrees_with_a_whole_file_read)
{
	static const char *const pieces[] = {
	    T(1, 1),
	    T(2, null),
	    T(3, 3),
	    "{\"step\":4,\"lo",
	    "\n",
	    "\0\0\0\n",
	    T(2, 5),
	    T(5, 6),
	    "{\"step\":6,\"loss\":1,",
	    "\"learning_rate\":0.5,\"steps_per_sec\":10,",
	    "\"time\":\"2026-11-29T10:00:06.000Z\"}\n",
	    T(1, 7),
	    T(7, 8),
	};
	char path[300], err[MN_ERRLEN];
	struct mn_metrics_file f;
	int rc;

	snprintf(path, sizeof(path), "%s/train.jsonl", dir);
	mn_metrics_file_init(&f, MN_METRICS_TRAIN);
	mn_test_write_file(path, "", 0);
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		/* The NUL bytes of a zero-filled end are bytes of the file. */
		append_bytes(path, pieces[i], pieces[i][0] ? strlen(pieces[i]) : 4);
		rc = update(&f, path, err);
		ck_assert_msg(rc == 0 || rc == -ENODATA, "%s", err);
		same_as_whole_file(&f, rc, path);
	}
	ck_assert_uint_eq(f.series.cut, 2);
	mn_metrics_file_free(&f);
}
END_TEST

/*
 * A file replaced under its name, truncated, or truncated and written past
 * its old length is read again from its first byte.
 */
START_TEST(update_starts_over_on_a_new_file)
{
	char path[300], tmp[310], err[MN_ERRLEN];
	const char *first = T(1, 1) T(2, 2), *second = T(5, 2.5) T(6, 2.5) T(7, 2.5);
	struct mn_metrics_file f;

	snprintf(path, sizeof(path), "%s/train.jsonl", dir);
	snprintf(tmp, sizeof(tmp), "%s/new.jsonl", dir);
	mn_metrics_file_init(&f, MN_METRICS_TRAIN);
	mn_test_write_file(path, first, strlen(first));
	ck_assert_int_eq(update(&f, path, err), 0);

	/* Replaced (rename over it): a new inode. */
	mn_test_write_file(tmp, second, strlen(second));
	ck_assert_int_eq(rename(tmp, path), 0);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(second));
	ck_assert_uint_eq(f.series.n, 3);
	ck_assert_int_eq(f.series.points[0].step, 5);
	same_as_whole_file(&f, 0, path);

	/* Truncated (copytruncate) and a line written again. */
	ck_assert_int_eq(truncate(path, 0), 0);
	append(path, T(1, 9));
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(T(1, 9)));
	ck_assert_uint_eq(f.series.n, 1);
	ck_assert(f.series.points[0].loss == 9);
	same_as_whole_file(&f, 0, path);

	/* Rewritten in place, longer than before: the same inode, a different file. */
	ck_assert_int_eq(truncate(path, 0), 0);
	append(path, second);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(second));
	ck_assert_uint_eq(f.series.n, 3);
	same_as_whole_file(&f, 0, path);

	/* Removed: an error naming it, and nothing kept; back: read from the start. */
	ck_assert_int_eq(unlink(path), 0);
	ck_assert_int_eq(update(&f, path, err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_uint_eq(f.series.n, 0);
	append(path, first);
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.last_read, strlen(first));
	ck_assert_uint_eq(f.series.n, 2);
	mn_metrics_file_free(&f);
}
END_TEST

/*
 * A bad line rejects the file at every update, with the same message, until
 * the file is replaced; lines appended after it change nothing.
 */
START_TEST(update_rejects_until_the_file_changes)
{
	char path[300], err[MN_ERRLEN];
	struct mn_metrics_file f;
	char *big;

	snprintf(path, sizeof(path), "%s/train.jsonl", dir);
	mn_metrics_file_init(&f, MN_METRICS_TRAIN);
	append(path, T(1, 1));
	ck_assert_int_eq(update(&f, path, err), 0);
	append(path, "{\"step\":2}\n");
	ck_assert_int_eq(update(&f, path, err), -EINVAL);
	ck_assert_msg(strstr(err, "train.jsonl:2: \"loss\""), "%s", err);
	ck_assert_uint_eq(f.series.n, 0);
	append(path, T(3, 1));
	err[0] = '\0';
	ck_assert_int_eq(update(&f, path, err), -EINVAL);
	ck_assert_msg(strstr(err, "train.jsonl:2: \"loss\""), "%s", err);
	same_as_whole_file(&f, -EINVAL, path);
	mn_test_write_file(path, T(1, 1), strlen(T(1, 1)));
	ck_assert_int_eq(update(&f, path, err), 0);
	ck_assert_uint_eq(f.series.n, 1);

	/* A line without end longer than any record: rejected, not held in memory. */
	big = malloc(MN_METRICS_LINE_MAX + 2);
	ck_assert_ptr_nonnull(big);
	memset(big, ' ', MN_METRICS_LINE_MAX + 1);
	big[MN_METRICS_LINE_MAX + 1] = '\0';
	append(path, big);
	free(big);
	ck_assert_int_eq(update(&f, path, err), -EINVAL);
	ck_assert_msg(strstr(err, "train.jsonl:2: longer than"), "%s", err);
	mn_metrics_file_free(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("metrics");

	MN_TEST_ADD(mn_test_tcase(s, "parse", NULL, NULL), train_lines_parse,
	            cut_off_lines_are_left_out, backwards_step_starts_over,
	            unfinished_last_line_is_left_out, bad_lines_name_the_line, null_loss_is_nan,
	            times, summary_of_both_files);
	MN_TEST_ADD(mn_test_tcase(s, "files", setup, teardown), best_json,
	            load_names_a_missing_file, update_reads_only_what_was_appended,
	            update_keeps_the_step_rule, update_agrees_with_a_whole_file_read,
	            update_starts_over_on_a_new_file, update_rejects_until_the_file_changes);
	return mn_test_run(s);
}
