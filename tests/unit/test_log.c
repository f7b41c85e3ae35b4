/* test_log.c - text and JSON lines, escaping, levels, reopen, concurrent writers. */
#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#include "mn_test.h"

#define TIME_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

static char tmpdir[MN_TEST_DIRLEN];
static char logpath[128];

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(logpath, sizeof(logpath), "%s/mnistd.log", tmpdir);
}

static void teardown(void)
{
	/* Back to the state before any mn_log_open, for CK_FORK=no runs. */
	ck_assert_int_eq(mn_log_open(NULL, MN_LOG_TEXT, MN_LOG_INFO, NULL, 0), 0);
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

/* noinline: GCC 12 inlines it and then misreports the result as dangling. */
__attribute__((noinline)) static char *slurp(const char *path)
{
	char err[MN_ERRLEN];
	char *buf = NULL;
	size_t len;
	int rc = mn_read_file(path, 1 << 26, &buf, &len, err, sizeof(err));

	ck_assert_msg(rc == 0, "%s", err);
	return buf;
}

static void open_log(enum mn_log_format format, enum mn_log_level level)
{
	char err[MN_ERRLEN];

	ck_assert_msg(mn_log_open(logpath, format, level, err, sizeof(err)) == 0, "%s", err);
}

static bool matches(const char *re, const char *s)
{
	regex_t r;
	int rc;

	ck_assert_int_eq(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
	rc = regexec(&r, s, 0, NULL, 0);
	regfree(&r);
	return rc == 0;
}

/* The text after "TIME " of a one-line log, after checking the time stamp. */
static const char *after_time(const char *line)
{
	ck_assert_msg(matches("^" TIME_RE " ", line), "bad time stamp: %s", line);
	return line + strlen("2026-11-25T17:04:05.123Z ");
}

START_TEST(test_text_format)
{
	struct mn_log_field f[] = {
	    MN_F_INT("step", 3000),
	    MN_F_DBL("accuracy", 0.88123, 4),
	    MN_F_DBL("loss", 0.5, -1),
	    MN_F_DBL("big", 1e300, -1),
	    MN_F_BOOL("ema", true),
	    MN_F_BOOL("paused", false),
	    MN_F_STR("plain", "model.ckpt-3000.safetensors"),
	    MN_F_STR("space", "a b"),
	    MN_F_STR("empty", ""),
	    MN_F_STR("eq", "x=y"),
	    MN_F_STR("quote", "say \"hi\" \\o/"),
	    MN_F_STR("ctl", "a\nb\tc\x01"),
	    MN_F_STR("slash", "a\\b"),
	    MN_F_INT("neg", -9223372036854775807 - 1),
	};
	char *text;

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	mn_log_fields(MN_LOG_INFO, "evaluated", f, sizeof(f) / sizeof(f[0]));
	mn_log(MN_LOG_WARN, "disk %d%% full\nreally", 93);
	mn_log_fields(MN_LOG_ERROR, "no fields", NULL, 0);
	text = slurp(logpath);
	ck_assert(matches("^" TIME_RE " info evaluated step=3000 [^\n]*\n" TIME_RE
	                  " warn [^\n]*\n" TIME_RE " error no fields\n$",
	                  text));
	*strchr(text, '\n') = '\0';
	ck_assert_str_eq(after_time(text),
	                 "info evaluated step=3000 accuracy=0.8812 loss=0.5 big=1e+300 ema=true "
	                 "paused=false plain=model.ckpt-3000.safetensors space=\"a b\" empty=\"\" "
	                 "eq=\"x=y\" quote=\"say \\\"hi\\\" \\\\o/\" ctl=\"a\\nb\\tc\\x01\" "
	                 "slash=a\\b neg=-9223372036854775808");
	{
		char *second = text + strlen(text) + 1;

		*strchr(second, '\n') = '\0';
		ck_assert_str_eq(after_time(second), "warn disk 93% full\\nreally");
	}
	free(text);
}
END_TEST

START_TEST(test_json_format)
{
	struct mn_log_field f[] = {
	    MN_F_INT("step", 3000),
	    MN_F_DBL("accuracy", 0.88123, 4),
	    MN_F_DBL("loss", 0.25, -1),
	    MN_F_DBL("nan", NAN, 4),
	    MN_F_DBL("inf", -INFINITY, -1),
	    MN_F_BOOL("ema", true),
	    MN_F_STR("file", "say \"hi\"\n"),
	    MN_F_STR("none", NULL),
	    MN_F_INT("huge", 9007199254740993LL),
	};
	char *text, *nl;
	cJSON *o;

	open_log(MN_LOG_JSON, MN_LOG_DEBUG);
	mn_log_fields(MN_LOG_INFO, "evaluated", f, sizeof(f) / sizeof(f[0]));
	mn_log(MN_LOG_DEBUG, "tab\there %s", "x");
	text = slurp(logpath);
	nl = strchr(text, '\n');
	ck_assert_ptr_nonnull(nl);
	*nl = '\0';
	ck_assert_msg(matches("^\\{\"time\":\"" TIME_RE "\",\"level\":\"info\",", text), "%s",
	              text);
	ck_assert_str_eq(strstr(text, ",\"level\""),
	                 ",\"level\":\"info\",\"msg\":\"evaluated\",\"step\":3000,"
	                 "\"accuracy\":0.8812,\"loss\":0.25,\"nan\":null,\"inf\":null,\"ema\":true,"
	                 "\"file\":\"say \\\"hi\\\"\\n\",\"none\":null,\"huge\":9007199254740993}");
	o = cJSON_Parse(text);
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(cJSON_GetObjectItem(o, "file")->valuestring, "say \"hi\"\n");
	cJSON_Delete(o);

	ck_assert_str_eq(strstr(nl + 1, ",\"level\""),
	                 ",\"level\":\"debug\",\"msg\":\"tab\\there x\"}\n");
	ck_assert_ptr_null(strchr(strchr(nl + 1, '\n') + 1, '\n'));
	free(text);
}
END_TEST

/*
 * A process-wide tag (an MPI rank's number): every line carries it as its
 * last field, in both formats, so the lines of several processes sharing
 * one log file say whose they are; a line with a field of that name keeps
 * its own; NULL removes the tag.
 */
START_TEST(test_tag)
{
	struct mn_log_field mine[] = {MN_F_INT("rank", 0), MN_F_INT("world_size", 2)};
	char *text, *line[4], *p;
	cJSON *o;

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	mn_log_set_tag("rank", 3);
	mn_log(MN_LOG_WARN, "disk full");
	mn_log_fields(MN_LOG_INFO, "step", (struct mn_log_field[]){MN_F_INT("step", 7)}, 1);
	mn_log_fields(MN_LOG_INFO, "data-parallel job", mine, 2);
	mn_log_set_tag(NULL, 0);
	mn_log(MN_LOG_INFO, "untagged");
	text = slurp(logpath);
	p = text;
	for (int i = 0; i < 4; i++) {
		line[i] = p;
		p = strchr(p, '\n');
		ck_assert_ptr_nonnull(p);
		*p++ = '\0';
	}
	ck_assert_str_eq(p, "");
	ck_assert_str_eq(after_time(line[0]), "warn disk full rank=3");
	ck_assert_str_eq(after_time(line[1]), "info step step=7 rank=3");
	ck_assert_str_eq(after_time(line[2]), "info data-parallel job rank=0 world_size=2");
	ck_assert_str_eq(after_time(line[3]), "info untagged");
	free(text);

	ck_assert_int_eq(unlink(logpath), 0);
	open_log(MN_LOG_JSON, MN_LOG_INFO);
	mn_log_set_tag("rank", 1);
	mn_log(MN_LOG_ERROR, "cannot read");
	mn_log_set_tag(NULL, 0);
	text = slurp(logpath);
	ck_assert_str_eq(strstr(text, ",\"level\""),
	                 ",\"level\":\"error\",\"msg\":\"cannot read\",\"rank\":1}\n");
	o = cJSON_Parse(text);
	ck_assert_ptr_nonnull(o);
	cJSON_Delete(o);
	free(text);
}
END_TEST

START_TEST(test_levels)
{
	char *text;

	ck_assert_str_eq(mn_log_level_name(MN_LOG_DEBUG), "debug");
	ck_assert_str_eq(mn_log_level_name(MN_LOG_INFO), "info");
	ck_assert_str_eq(mn_log_level_name(MN_LOG_WARN), "warn");
	ck_assert_str_eq(mn_log_level_name(MN_LOG_ERROR), "error");
	ck_assert_int_eq(mn_log_get_level(), MN_LOG_INFO);

	open_log(MN_LOG_TEXT, MN_LOG_WARN);
	ck_assert_int_eq(mn_log_get_level(), MN_LOG_WARN);
	mn_log(MN_LOG_DEBUG, "d1");
	mn_log(MN_LOG_INFO, "i1");
	mn_log(MN_LOG_WARN, "w1");
	mn_log(MN_LOG_ERROR, "e1");
	mn_log_set_level(MN_LOG_DEBUG);
	ck_assert_int_eq(mn_log_get_level(), MN_LOG_DEBUG);
	mn_log(MN_LOG_DEBUG, "d2");
	mn_log_set_level(MN_LOG_ERROR);
	mn_log_fields(MN_LOG_WARN, "w2", NULL, 0);
	mn_log(MN_LOG_ERROR, "e2");
	text = slurp(logpath);
	ck_assert_msg(matches("^" TIME_RE " warn w1\n" TIME_RE " error e1\n" TIME_RE
	                      " debug d2\n" TIME_RE " error e2\n$",
	                      text),
	              "%s", text);
	free(text);
}
END_TEST

START_TEST(test_open_errors)
{
	char err[MN_ERRLEN], bad[256];
	char *text;

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	snprintf(bad, sizeof(bad), "%s/no/such/dir/x.log", tmpdir);
	ck_assert_int_eq(mn_log_open(bad, MN_LOG_JSON, MN_LOG_DEBUG, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, bad));
	/* The old log, format and level stay. */
	mn_log(MN_LOG_DEBUG, "hidden");
	mn_log(MN_LOG_INFO, "kept");
	text = slurp(logpath);
	ck_assert(matches("^" TIME_RE " info kept\n$", text));
	free(text);
	ck_assert_int_eq(mn_log_open(logpath, (enum mn_log_format)7, MN_LOG_INFO, err, sizeof(err)),
	                 -EINVAL);
}
END_TEST

START_TEST(test_file_mode)
{
	struct stat st;
	mode_t old = umask(0);

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	umask(old);
	ck_assert_int_eq(stat(logpath, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0640);
}
END_TEST

START_TEST(test_reopen)
{
	char rotated[192], err[MN_ERRLEN];
	char *text;

	/* Standard output: nothing to reopen. */
	ck_assert_int_eq(mn_log_open(NULL, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_log_reopen(err, sizeof(err)), 0);

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	mn_log(MN_LOG_INFO, "one");
	snprintf(rotated, sizeof(rotated), "%s.1", logpath);
	ck_assert_int_eq(rename(logpath, rotated), 0);
	ck_assert_int_eq(mn_log_reopen(err, sizeof(err)), 0);
	mn_log(MN_LOG_INFO, "two");
	text = slurp(rotated);
	ck_assert_msg(matches("^" TIME_RE " info one\n$", text), "%s", text);
	free(text);
	text = slurp(logpath);
	ck_assert_msg(matches("^" TIME_RE " info two\n$", text), "%s", text);
	free(text);

	/*
	 * Moved aside without a SIGHUP (logrotate without postrotate): the next
	 * line goes to a new file under the name, not where no one looks.
	 */
	ck_assert_int_eq(unlink(rotated), 0);
	ck_assert_int_eq(rename(logpath, rotated), 0);
	mn_log(MN_LOG_INFO, "three");
	text = slurp(rotated);
	ck_assert_msg(matches("^" TIME_RE " info two\n$", text), "%s", text);
	free(text);
	text = slurp(logpath);
	ck_assert_msg(matches("^" TIME_RE " info three\n" TIME_RE
	                      " warn log file was moved or removed: lines go to a new file under "
	                      "its name\n$",
	                      text),
	              "%s", text);
	free(text);

	/* A failed reopen (a directory now has the name) keeps logging to the old file. */
	ck_assert_int_eq(rename(logpath, rotated), 0);
	ck_assert_int_eq(mkdir(logpath, 0700), 0);
	ck_assert_int_eq(mn_log_reopen(err, sizeof(err)), -EISDIR);
	ck_assert_ptr_nonnull(strstr(err, logpath));
	mn_log(MN_LOG_INFO, "four");
	text = slurp(rotated);
	ck_assert_msg(matches("^" TIME_RE " info three\n" TIME_RE " warn log file was moved or "
	                      "removed: [^\n]*\n" TIME_RE " info four\n$",
	                      text),
	              "%s", text);
	free(text);
	ck_assert_int_eq(rmdir(logpath), 0);
}
END_TEST

/*
 * A log file its previous writer left mid-line (a crash, a disk that filled
 * up): the first line starts with a newline, so it is not glued onto that
 * one. At open and at a reopen onto such a file.
 */
START_TEST(test_file_cut_mid_line)
{
	char err[MN_ERRLEN], *text;

	mn_test_write_file(logpath, "{\"time\":\"2026", 13);
	open_log(MN_LOG_JSON, MN_LOG_INFO);
	mn_log(MN_LOG_INFO, "one");
	text = slurp(logpath);
	ck_assert_msg(matches("^\\{\"time\":\"2026\n\\{[^\n]*\"msg\":\"one\"}\n$", text), "%s",
	              text);
	free(text);
	mn_test_write_file(logpath, "x", 1);
	ck_assert_int_eq(mn_log_reopen(err, sizeof(err)), 0);
	mn_log(MN_LOG_INFO, "two");
	text = slurp(logpath);
	ck_assert_msg(matches("^x\n\\{[^\n]*\"msg\":\"two\"}\n$", text), "%s", text);
	free(text);
}
END_TEST

START_TEST(test_stderr_before_open)
{
	char path[192];
	char *text;
	int fd, saved;

	snprintf(path, sizeof(path), "%s/stderr", tmpdir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	saved = dup(STDERR_FILENO);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	mn_log(MN_LOG_DEBUG, "not shown");
	mn_log(MN_LOG_INFO, "before open");
	open_log(MN_LOG_JSON, MN_LOG_DEBUG);
	mn_log_close();
	mn_log(MN_LOG_DEBUG, "after close");
	ck_assert_int_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	close(fd);
	text = slurp(path);
	ck_assert_msg(matches("^" TIME_RE " info before open\n\\{\"time\":\"" TIME_RE
	                      "\",\"level\":\"debug\",\"msg\":\"after close\"\\}\n$",
	                      text),
	              "%s", text);
	free(text);
}
END_TEST

START_TEST(test_truncation)
{
	size_t n = 100000;
	char *big = malloc(n + 1);
	struct mn_log_field f[3];
	char *text, *line2;
	cJSON *o;

	ck_assert_ptr_nonnull(big);
	/* Multi-byte characters, so a cut could split one. */
	for (size_t i = 0; i < n; i += 2)
		memcpy(big + i, "\xc3\xa9", 2);
	big[n] = '\0';
	f[0] = MN_F_STR("s", big);
	f[1] = MN_F_INT("i", 1);
	f[2] = MN_F_STR("t", "x\"y");

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	mn_log_fields(MN_LOG_INFO, "long", f, 3);
	mn_log(MN_LOG_INFO, "%s", big);
	text = slurp(logpath);
	line2 = strchr(text, '\n') + 1;
	ck_assert_uint_le((size_t)(line2 - text), 16384);
	ck_assert(matches("^" TIME_RE " info long s=(\xc3\xa9)+\\.\\.\\.\n", text));
	ck_assert_uint_le(strlen(line2), 16384);
	ck_assert(matches("^" TIME_RE " info (\xc3\xa9)+\\.\\.\\.\n$", line2));
	free(text);

	mn_log_close();
	ck_assert_int_eq(unlink(logpath), 0);
	open_log(MN_LOG_JSON, MN_LOG_INFO);
	mn_log_fields(MN_LOG_INFO, "long", f, 3);
	mn_log(MN_LOG_INFO, "%s", big);
	/* Control characters escape to six bytes each: the worst case. */
	memset(big, '\x01', 20000);
	big[20000] = '\0';
	mn_log(MN_LOG_INFO, "%s", big);
	text = slurp(logpath);
	for (char *line = text, *end; *line; line = end + 1) {
		end = strchr(line, '\n');
		ck_assert_ptr_nonnull(end);
		ck_assert_uint_le((size_t)(end - line) + 1, 16384);
		*end = '\0';
		o = cJSON_Parse(line);
		ck_assert_msg(o != NULL, "invalid JSON line");
		ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(o, "truncated")));
		ck_assert(cJSON_IsString(cJSON_GetObjectItem(o, "msg")));
		cJSON_Delete(o);
	}
	free(text);
	free(big);
}
END_TEST

#define THREADS 4
#define LINES   1000

static void *writer(void *arg)
{
	int id = (int)(intptr_t)arg;

	for (int i = 0; i < LINES; i++) {
		struct mn_log_field f[] = {
		    MN_F_INT("thread", id),
		    MN_F_INT("i", i),
		    MN_F_STR("pad", "the quick brown fox jumps over the lazy dog"),
		};

		mn_log_fields(MN_LOG_INFO, "tick", f, 3);
	}
	return NULL;
}

START_TEST(test_concurrent)
{
	static bool seen[THREADS][LINES];
	pthread_t t[THREADS];
	size_t lines = 0;
	char *text, *line, *end;
	regex_t re;

	open_log(MN_LOG_TEXT, MN_LOG_INFO);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, writer, (void *)(intptr_t)i), 0);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	text = slurp(logpath);
	ck_assert_int_eq(regcomp(&re,
	                         "^" TIME_RE
	                         " info tick thread=[0-9] i=[0-9]+ pad=\"the quick brown "
	                         "fox jumps over the lazy dog\"$",
	                         REG_EXTENDED | REG_NOSUB),
	                 0);
	for (line = text; *line; line = end + 1) {
		int id, i;

		end = strchr(line, '\n');
		ck_assert_ptr_nonnull(end);
		*end = '\0';
		ck_assert_msg(regexec(&re, line, 0, NULL, 0) == 0, "torn line: %s", line);
		ck_assert_int_eq(sscanf(strstr(line, "thread="), "thread=%d i=%d", &id, &i), 2);
		ck_assert(id >= 0 && id < THREADS && i >= 0 && i < LINES);
		ck_assert_msg(!seen[id][i], "line twice");
		seen[id][i] = true;
		lines++;
	}
	regfree(&re);
	ck_assert_uint_eq(lines, THREADS * LINES);
	free(text);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("log");

	MN_TEST_ADD(mn_test_tcase(s, "core", setup, teardown), test_text_format, test_json_format,
	            test_tag, test_levels, test_open_errors, test_file_mode, test_reopen,
	            test_file_cut_mid_line, test_stderr_before_open, test_truncation,
	            test_concurrent);
	return mn_test_run(s);
}
