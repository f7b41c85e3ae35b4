/*
 * test_ctl_util.c - the helpers every mnistctl command uses (tools/ctl_util.h):
 * escaping for terminals and JSON, messages and option errors, the JSON
 * builders, the configuration, output paths and their atomic publication
 * (signals included), the refusal to write over the file being read,
 * checkpoint resolution in a directory, loading a model, and tensor values.
 * Everything runs on the real filesystem in a temporary directory.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "best.h"
#include "ckpt.h"
#include "ckptdir.h"
#include "ctl_util.h"
#include "json.h"
#include "model.h"
#include "util.h"

#include "mn_build_config.h"
#include "mn_test.h"

static char tmpdir[MN_TEST_DIRLEN];
static char err[MN_ERRLEN];

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	err[0] = '\0';
	umask(022);
}

static void teardown(void)
{
	mn_test_rmtree(tmpdir);
}

/* "<tmpdir>/name", in one of four rotating buffers (a call may need several). */
static const char *tpath(const char *name)
{
	static char buf[4][PATH_MAX + 256];
	static unsigned next;
	char *p = buf[next++ % 4];

	snprintf(p, sizeof(buf[0]), "%s/%s", tmpdir, name);
	return p;
}

/* The whole of a small file, NUL-terminated, in a malloc'd buffer. */
static char *slurp(const char *path, size_t *lenp)
{
	char *buf = NULL;
	size_t len = 0;
	int rc = mn_read_file(path, 1 << 24, &buf, &len, err, sizeof(err));

	ck_assert_msg(rc == 0, "%s", err);
	buf = realloc(buf, len + 1);
	ck_assert_ptr_nonnull(buf);
	buf[len] = '\0';
	if (lenp)
		*lenp = len;
	return buf;
}

/*
 * Redirecting a standard descriptor (1 or 2) into a file for a while: what
 * ctl_errorf, ctl_usage_error and "-" write is read back as bytes.
 */
struct capture {
	int fd, saved;
	char path[PATH_MAX + 256];
};

static void capture_begin(struct capture *c, int fd)
{
	int f;

	c->fd = fd;
	snprintf(c->path, sizeof(c->path), "%s/.capture-%d", tmpdir, fd);
	fflush(fd == 1 ? stdout : stderr);
	f = open(c->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(f, 0);
	c->saved = dup(fd);
	ck_assert_int_ge(c->saved, 0);
	ck_assert_int_eq(dup2(f, fd), fd);
	close(f);
}

/* Restores the descriptor and returns what was written (malloc'd). */
static char *capture_end(struct capture *c)
{
	char *s;

	fflush(c->fd == 1 ? stdout : stderr);
	ck_assert_int_eq(dup2(c->saved, c->fd), c->fd);
	close(c->saved);
	s = slurp(c->path, NULL);
	unlink(c->path);
	return s;
}

/* What ctl_fputs_escaped writes for s (malloc'd). */
static char *escaped(const char *s)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	ck_assert_ptr_nonnull(f);
	ctl_fputs_escaped(f, s);
	ck_assert_int_eq(fclose(f), 0);
	return out;
}

/*
 * Well-formed UTF-8 by the byte ranges of the Unicode Standard's table 3-7,
 * written independently of both validators the code uses.
 */
static bool ref_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xBF;
		size_t k;

		if (c <= 0x7F) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			k = 1;
		else if (c == 0xE0)
			k = 2, lo = 0xA0;
		else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
			k = 2;
		else if (c == 0xED)
			k = 2, hi = 0x9F;
		else if (c == 0xF0)
			k = 3, lo = 0x90;
		else if (c >= 0xF1 && c <= 0xF3)
			k = 3;
		else if (c == 0xF4)
			k = 3, hi = 0x8F;
		else
			return false;
		if (n - i <= k || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t j = 2; j <= k; j++)
			if (s[i + j] < 0x80 || s[i + j] > 0xBF)
				return false;
		i += k + 1;
	}
	return true;
}

/* ---- ctl_fputs_escaped ---- */

START_TEST(test_fputs_escaped)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"", ""},
	    {"model.ckpt-7.safetensors", "model.ckpt-7.safetensors"},
	    {"a\nb\rc\td", "a\\nb\\rc\\td"},
	    {"\x1b[31mred\x07", "\\x1b[31mred\\x07"},
	    {"\x01\x1f\x7f", "\\x01\\x1f\\x7f"},
	    /* Well-formed UTF-8 is kept, up to U+10FFFF and U+FFFF. */
	    {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xef\xbf\xbf",
	     "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xef\xbf\xbf"},
	    /* C1 controls (U+0080..U+009F) as \u, U+00A0 kept. */
	    {"\xc2\x80\xc2\x9b\xc2\x9f\xc2\xa0", "\\u0080\\u009b\\u009f\xc2\xa0"},
	    /* Stray continuation bytes and bytes never in UTF-8. */
	    {"\x80\xbf\xfe\xff", "\\x80\\xbf\\xfe\\xff"},
	    /* Truncated sequences, at the end and before ASCII. */
	    {"a\xc3", "a\\xc3"},
	    {"\xe2\x82", "\\xe2\\x82"},
	    {"\xf0\x9f\x98", "\\xf0\\x9f\\x98"},
	    {"\xe2\x82x", "\\xe2\\x82x"},
	    /* Overlong forms of '/' and of NUL. */
	    {"\xc0\xaf", "\\xc0\\xaf"},
	    {"\xc1\xbf", "\\xc1\\xbf"},
	    {"\xe0\x80\xaf", "\\xe0\\x80\\xaf"},
	    {"\xe0\x9f\xbf", "\\xe0\\x9f\\xbf"},
	    {"\xf0\x80\x80\xaf", "\\xf0\\x80\\x80\\xaf"},
	    {"\xf0\x8f\xbf\xbf", "\\xf0\\x8f\\xbf\\xbf"},
	    /* Surrogates, alone and as a CESU-8 pair. */
	    {"\xed\xa0\x80", "\\xed\\xa0\\x80"},
	    {"\xed\xbf\xbf", "\\xed\\xbf\\xbf"},
	    {"\xed\xa0\xbd\xed\xb8\x80", "\\xed\\xa0\\xbd\\xed\\xb8\\x80"},
	    /* Beyond U+10FFFF, and 5- and 6-byte forms. */
	    {"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"},
	    {"\xf5\x80\x80\x80", "\\xf5\\x80\\x80\\x80"},
	    {"\xf8\x88\x80\x80\x80", "\\xf8\\x88\\x80\\x80\\x80"},
	    {"\xfc\x84\x80\x80\x80\x80", "\\xfc\\x84\\x80\\x80\\x80\\x80"},
	    /* A bad byte does not swallow the good character after it. */
	    {"\xc3\xc3\xa9", "\\xc3\xc3\xa9"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out = escaped(cases[i].in);

		ck_assert_msg(strcmp(out, cases[i].out) == 0, "case %zu: got \"%s\"", i, out);
		ck_assert(mn_json_utf8(out, strlen(out)));
		free(out);
	}
}
END_TEST

/* Escaping is never cut short: the worst case (every byte 4 times longer) in full. */
START_TEST(test_fputs_escaped_long)
{
	enum { N = 70000 };
	char *in = malloc(N + 1), *out;

	ck_assert_ptr_nonnull(in);
	for (size_t i = 0; i < N; i++)
		in[i] = (i % 3 == 0) ? '\x01' : (i % 3 == 1) ? '\xff' : 'z';
	in[N] = '\0';
	out = escaped(in);
	ck_assert_uint_eq(strlen(out), (size_t)(N / 3 + 1) * 4 + (N / 3) * 4 + N / 3);
	ck_assert(strncmp(out, "\\x01\\xffz\\x01", 13) == 0);
	ck_assert(strcmp(out + strlen(out) - 5, "z\\x01") == 0);
	free(out);

	/* C1 controls: 2 bytes become 6, three times as long. */
	for (size_t i = 0; i + 1 < N; i += 2)
		in[i] = '\xc2', in[i + 1] = '\x85';
	in[N] = '\0';
	out = escaped(in);
	ck_assert_uint_eq(strlen(out), (size_t)N * 3);
	free(out);
	free(in);
}
END_TEST

/* ---- ctl_errorf, ctl_usage_error ---- */

START_TEST(test_errorf)
{
	struct capture cap;
	char *out, *big;

	capture_begin(&cap, 2);
	ctl_errorf("inspect", "%s: bad tensor \"%s\" (%d)", "f.safetensors", "x\x1b]0;pwn\x07\xff",
	           7);
	out = capture_end(&cap);
	ck_assert_str_eq(out,
	                 "mnistctl inspect: f.safetensors: bad tensor \"x\\x1b]0;pwn\\x07\\xff\" "
	                 "(7)\n");
	free(out);

	/* A message longer than the buffer is cut, still on one line. */
	big = malloc(4 * MN_ERRLEN);
	ck_assert_ptr_nonnull(big);
	memset(big, 'm', 4 * MN_ERRLEN - 1);
	big[4 * MN_ERRLEN - 1] = '\0';
	capture_begin(&cap, 2);
	ctl_errorf("ls", "%s", big);
	out = capture_end(&cap);
	ck_assert_uint_eq(strlen(out), strlen("mnistctl ls: ") + 2 * MN_ERRLEN - 1 + 1);
	ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1);
	free(out);
	free(big);
}
END_TEST

START_TEST(test_usage_error)
{
	struct capture cap;
	char *out;

	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_usage_error("export", "%s needs %d arguments", "it", 2), MN_EX_USAGE);
	out = capture_end(&cap);
	ck_assert_str_eq(out,
	                 "mnistctl export: it needs 2 arguments\nTry 'mnistctl export --help'.\n");
	free(out);
}
END_TEST

/* ---- ctl_option_message, ctl_option_error ---- */

enum { OPT_RAW = 256, OPT_THREADS };
static const struct option opts[] = {
    {"output", required_argument, NULL, 'o'},
    {"json", no_argument, NULL, 'j'},
    {"raw", no_argument, NULL, OPT_RAW},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"prefix", required_argument, NULL, 'p'},
    {"help", no_argument, NULL, 'h'},
    {"logits", no_argument, NULL, 'L'},
    {"labels", required_argument, NULL, 'l'},
    {0},
};

/*
 * Runs getopt_long over args (NULL-terminated, after the command's name) as
 * the commands do, and returns the message for the first error, or "" if
 * every option was accepted.
 */
static const char *option_message(const char *const *args)
{
	static char msg[256];
	char *argv[16];
	int argc = 0, c;

	argv[argc++] = (char *)"cmd";
	for (size_t i = 0; args[i]; i++)
		argv[argc++] = (char *)args[i];
	argv[argc] = NULL;
	optind = 0; /* glibc: start over, as for a new argv */
	opterr = 0;
	msg[0] = '\0';
	while ((c = getopt_long(argc, argv, ":o:jp:hLl:", opts, NULL)) != -1) {
		if (c == '?' || c == ':') {
			ctl_option_message(c, argv, opts, msg, sizeof(msg));
			break;
		}
	}
	return msg;
}

#define OPTMSG(...) option_message((const char *const[]){__VA_ARGS__, NULL})

START_TEST(test_option_message)
{
	ck_assert_str_eq(OPTMSG("-j", "-o", "x", "--raw", "--threads=2", "in"), "");
	ck_assert_str_eq(OPTMSG("-x"), "unknown option -x");
	/* Inside a cluster, before its end (optind has not moved) and at it. */
	ck_assert_str_eq(OPTMSG("-xj"), "unknown option -x");
	ck_assert_str_eq(OPTMSG("-jx"), "unknown option -x");
	/* After a long option, whose argument argv[optind - 1] still is. */
	ck_assert_str_eq(OPTMSG("--json", "-xj"), "unknown option -x");
	ck_assert_str_eq(OPTMSG("--json", "-Xj"), "unknown option -X");
	ck_assert_str_eq(OPTMSG("--bogus"), "unknown option --bogus");
	ck_assert_str_eq(OPTMSG("--bogus=secret", "x"), "unknown option --bogus");
	ck_assert_str_eq(OPTMSG("-o"), "option -o needs a value");
	ck_assert_str_eq(OPTMSG("-jo"), "option -o needs a value");
	ck_assert_str_eq(OPTMSG("in", "--output"), "option --output needs a value");
	/* An abbreviation is named in full. */
	ck_assert_str_eq(OPTMSG("--out"), "option --output needs a value");
	ck_assert_str_eq(OPTMSG("--threads"), "option --threads needs a value");
	ck_assert_str_eq(OPTMSG("--json=1"), "option --json takes no value");
	ck_assert_str_eq(OPTMSG("--raw=yes"), "option --raw takes no value");
	ck_assert_str_eq(OPTMSG("--js=1"), "option --json takes no value");
	/* A byte that is not printable is not echoed. */
	ck_assert_str_eq(OPTMSG("-\x1b"), "unknown option");
	ck_assert_str_eq(OPTMSG("-\xff"), "unknown option");
}
END_TEST

START_TEST(test_option_error)
{
	char *argv[] = {(char *)"cmd", (char *)"--nope", NULL};
	struct capture cap;
	char *out;
	int c;

	optind = 0;
	opterr = 0;
	c = getopt_long(2, argv, ":o:j", opts, NULL);
	ck_assert_int_eq(c, '?');
	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_option_error("freeze", c, argv, opts), MN_EX_USAGE);
	out = capture_end(&cap);
	ck_assert_str_eq(out, "mnistctl freeze: unknown option --nope\n"
	                      "Try 'mnistctl freeze --help'.\n");
	free(out);
}
END_TEST

/*
 * Usage errors quote arguments, and an argument may be a file's name (a
 * glob's expansion): escaped as ctl_errorf escapes, one line each.
 */
START_TEST(test_usage_error_escaped)
{
	char *argv[] = {(char *)"cmd", (char *)"--\x1b]0;owned\x07=\xff", NULL};
	struct capture cap;
	char *out;

	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_usage_error("plot", "unexpected argument \"%s\"", "m\x1b[2J\n\xc3("),
	                 MN_EX_USAGE);
	out = capture_end(&cap);
	ck_assert_str_eq(out, "mnistctl plot: unexpected argument \"m\\x1b[2J\\n\\xc3(\"\n"
	                      "Try 'mnistctl plot --help'.\n");
	free(out);

	optind = 0;
	opterr = 0;
	ck_assert_int_eq(getopt_long(2, argv, ":o:j", opts, NULL), '?');
	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_option_error("ls", '?', argv, opts), MN_EX_USAGE);
	out = capture_end(&cap);
	ck_assert_str_eq(out, "mnistctl ls: unknown option --\\x1b]0;owned\\x07\n"
	                      "Try 'mnistctl ls --help'.\n");
	free(out);

	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_check_prefix("ls", ".\x1b[31m"), MN_EX_USAGE);
	out = capture_end(&cap);
	ck_assert_msg(strstr(out, "--prefix \".\\x1b[31m\"") && !strchr(out, '\x1b'), "%s", out);
	free(out);
}
END_TEST

/* ---- JSON builders ---- */

/* Prints root with ctl_json_fprint and returns the text (malloc'd); asserts success. */
static char *json_text(cJSON *root)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(ctl_json_fprint(f, root), 0);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_uint_gt(len, 0);
	ck_assert_int_eq(out[len - 1], '\n');
	/* JSON text is UTF-8 (RFC 8259 section 8.1), whatever went in. */
	ck_assert_msg(mn_json_utf8(out, len), "not UTF-8: %s", out);
	return out;
}

/* Builds {"k": value} with ctl_json_str, prints, parses, returns the string read back (malloc'd).
 */
static char *json_str_round_trip(const char *value)
{
	cJSON *root = cJSON_CreateObject(), *back, *item;
	char *text, *s;

	ctl_json_str(root, "k", value);
	text = json_text(root);
	back = cJSON_Parse(text);
	ck_assert_msg(back != NULL, "cJSON cannot parse: %s", text);
	item = cJSON_GetObjectItemCaseSensitive(back, "k");
	ck_assert_ptr_nonnull(item);
	if (!value) {
		ck_assert(cJSON_IsNull(item));
		s = NULL;
	} else {
		ck_assert(cJSON_IsString(item));
		s = strdup(item->valuestring);
		ck_assert_ptr_nonnull(s);
	}
	cJSON_Delete(back);
	free(text);
	return s;
}

/* What ctl_json_str must store for v: v itself if it is UTF-8, else v as escaped for a terminal. */
static void check_json_str(const char *v)
{
	char *back = json_str_round_trip(v);

	if (ref_utf8((const unsigned char *)v, strlen(v))) {
		ck_assert_msg(strcmp(back, v) == 0, "UTF-8 \"%s\" came back as \"%s\"", v, back);
	} else {
		char *e = escaped(v);

		ck_assert_msg(strcmp(back, e) == 0, "\"%s\" came back as \"%s\"", e, back);
		free(e);
	}
	free(back);
}

START_TEST(test_json_str)
{
	static const char *const values[] = {
	    "",
	    "plain",
	    /* JSON escapes for what is UTF-8: quotes, backslashes, controls, DEL, C1. */
	    "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f",
	    "\xc2\x85 \xc2\x9f \xe2\x80\xa8 \xe2\x80\xa9",
	    "caf\xc3\xa9 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xef\xbf\xbe \xed\x9f\xbf \xee\x80\x80",
	    /* Not UTF-8: each kind, alone and among good text. */
	    "\x80",
	    "name-\xff.safetensors",
	    "\xc3",
	    "ab\xe2\x82",
	    "\xf0\x9f\x98.safetensors",
	    "\xc0\x80",
	    "\xc1\xbf",
	    "\xe0\x80\x80",
	    "\xe0\x9f\xbf",
	    "\xf0\x80\x80\x80",
	    "\xf0\x8f\xbf\xbf",
	    "\xed\xa0\x80",
	    "\xed\xaf\xbf\xed\xbf\xbf",
	    "\xf4\x90\x80\x80",
	    "\xf7\xbf\xbf\xbf",
	    "\xf8\x88\x80\x80\x80",
	    "\xfe\xff",
	    /* Not UTF-8 and with controls: the controls are escaped too, visibly. */
	    "\xff\n\x1b[2J\"q\"\\",
	};
	char *back;

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
		check_json_str(values[i]);
	/* The same exactly, not just by the reference: a literal check of two. */
	back = json_str_round_trip("a\nb\x01");
	ck_assert_str_eq(back, "a\nb\x01");
	free(back);
	back = json_str_round_trip("x\xed\xa0\x80\ny\"");
	ck_assert_str_eq(back, "x\\xed\\xa0\\x80\\ny\"");
	free(back);
	ck_assert_ptr_null(json_str_round_trip(NULL));
}
END_TEST

/*
 * Every string of one and two bytes, and every three- and four-byte lead
 * with the continuation bytes at each boundary of table 3-7: the document
 * is always UTF-8 and parses, and the value is kept exactly when it is
 * UTF-8.
 */
START_TEST(test_json_str_exhaustive)
{
	static const unsigned char edge[] = {0x00, 0x01, 0x41, 0x7f, 0x80, 0x8f, 0x90,
	                                     0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xe0, 0xff};
	const size_t ne = sizeof(edge);
	cJSON *root = cJSON_CreateArray(), *back;
	unsigned char s[5];
	size_t n = 0, i = 0;
	char **values;
	char *text;

	values = calloc(256 * 256 + 256 * ne * ne * ne, sizeof(*values));
	ck_assert_ptr_nonnull(values);
	for (unsigned a = 1; a < 256; a++) {
		for (unsigned b = 0; b < 256; b++) {
			s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = 0;
			values[n] = strdup((char *)s);
			ck_assert_ptr_nonnull(values[n]);
			ctl_json_str(root, NULL, values[n++]);
		}
	}
	for (unsigned a = 0xe0; a < 256; a++) {
		for (size_t x = 0; x < ne; x++) {
			for (size_t y = 0; y < ne; y++) {
				for (size_t z = 0; z < ne; z++) {
					s[0] = (unsigned char)a, s[1] = edge[x], s[2] = edge[y];
					s[3] = edge[z], s[4] = 0;
					values[n] = strdup((char *)s);
					ck_assert_ptr_nonnull(values[n]);
					ctl_json_str(root, NULL, values[n++]);
				}
			}
		}
	}
	text = json_text(root);
	back = cJSON_Parse(text);
	ck_assert_ptr_nonnull(back);
	ck_assert_int_eq(cJSON_GetArraySize(back), (int)n);
	for (cJSON *it = back->child; it; it = it->next, i++) {
		const char *v = values[i];

		ck_assert(cJSON_IsString(it));
		if (ref_utf8((const unsigned char *)v, strlen(v))) {
			ck_assert_msg(strcmp(it->valuestring, v) == 0, "value %zu changed", i);
		} else {
			char *e = escaped(v);

			ck_assert_msg(strcmp(it->valuestring, e) == 0,
			              "value %zu: \"%s\" not \"%s\"", i, it->valuestring, e);
			free(e);
		}
	}
	cJSON_Delete(back);
	free(text);
	for (i = 0; i < n; i++)
		free(values[i]);
	free(values);
}
END_TEST

START_TEST(test_json_scalars)
{
	cJSON *root = cJSON_CreateObject(), *back;
	static const double nums[] = {0.1, -2.5, 1e300, 5e-324, 0.0, 123456789.0, -1.0 / 3.0};
	char key[16], *text;

	ctl_json_int(root, "max", INT64_MAX);
	ctl_json_int(root, "min", INT64_MIN);
	ctl_json_int(root, "big", 9007199254740993); /* 2^53 + 1: not a double */
	ctl_json_int(root, "zero", 0);
	ctl_json_num(root, "nan", NAN);
	ctl_json_num(root, "inf", INFINITY);
	ctl_json_num(root, "ninf", -INFINITY);
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		snprintf(key, sizeof(key), "n%zu", i);
		ctl_json_num(root, key, nums[i]);
	}
	ctl_json_bool(root, "yes", true);
	ctl_json_bool(root, "no", false);
	text = json_text(root);
	/* Integers as exact text, beyond what a double holds. */
	ck_assert_ptr_nonnull(strstr(text, "\"max\":\t9223372036854775807"));
	ck_assert_ptr_nonnull(strstr(text, "\"min\":\t-9223372036854775808"));
	ck_assert_ptr_nonnull(strstr(text, "\"big\":\t9007199254740993"));
	back = cJSON_Parse(text);
	ck_assert_ptr_nonnull(back);
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(back, "nan")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(back, "inf")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(back, "ninf")));
	ck_assert_int_eq(cJSON_GetObjectItem(back, "zero")->valuedouble, 0);
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		cJSON *it;

		snprintf(key, sizeof(key), "n%zu", i);
		it = cJSON_GetObjectItem(back, key);
		ck_assert(cJSON_IsNumber(it));
		/* The shortest text that reads back as exactly the value. */
		ck_assert_msg(it->valuedouble == nums[i], "%s: %.17g != %.17g", key,
		              it->valuedouble, nums[i]);
	}
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(back, "yes")));
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(back, "no")));
	cJSON_Delete(back);
	free(text);
}
END_TEST

START_TEST(test_json_add)
{
	cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray(), *it;
	char *text;

	ck_assert_ptr_eq(ctl_json_add(root, "a", arr), arr);
	it = cJSON_CreateString("x");
	ck_assert_ptr_eq(ctl_json_add(arr, NULL, it), it);
	ctl_json_str(arr, NULL, "y");
	ctl_json_int(arr, NULL, -3);
	text = json_text(root);
	ck_assert_str_eq(text, "{\n\t\"a\":\t[\"x\", \"y\", -3]\n}\n");
	free(text);
}
END_TEST

/*
 * A builder that failed (here: no object to add to, as after an
 * allocation failure up the tree) is remembered: the document is not
 * printed, the failure is reported, and the tree is still freed.
 */
START_TEST(test_json_failure)
{
	cJSON *root = cJSON_CreateObject();
	char *out = NULL;
	size_t len = 0;
	struct capture cap;
	FILE *f;
	char *msg;

	ctl_json_str(root, "ok", "fine");
	ck_assert_ptr_null(ctl_json_add(NULL, "lost", cJSON_CreateString("x")));
	ctl_json_int(root, "after", 1);
	f = open_memstream(&out, &len);
	ck_assert_ptr_nonnull(f);
	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_json_fprint(f, root), -ENOMEM);
	msg = capture_end(&cap);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_uint_eq(len, 0);
	ck_assert_str_eq(msg, "mnistctl: out of memory building the JSON output\n");
	free(msg);
	free(out);
}
END_TEST

/* A NULL item (a failed cJSON_Create*) fails the document as well; so does printing NULL. */
START_TEST(test_json_failure_null_item)
{
	cJSON *root = cJSON_CreateObject();
	struct capture cap;
	char *msg;

	ck_assert_ptr_null(ctl_json_add(root, "k", NULL));
	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_json_print(root), -ENOMEM);
	msg = capture_end(&cap);
	ck_assert_ptr_nonnull(strstr(msg, "out of memory"));
	free(msg);
}
END_TEST

START_TEST(test_json_print_null)
{
	struct capture cap;
	char *msg;

	capture_begin(&cap, 2);
	ck_assert_int_eq(ctl_json_print(NULL), -ENOMEM);
	msg = capture_end(&cap);
	ck_assert_ptr_nonnull(strstr(msg, "out of memory"));
	free(msg);
}
END_TEST

START_TEST(test_json_print_stdout)
{
	cJSON *root = cJSON_CreateObject();
	struct capture cap;
	char *out;

	ctl_json_str(root, "file", "m\xff");
	capture_begin(&cap, 1);
	ck_assert_int_eq(ctl_json_print(root), 0);
	out = capture_end(&cap);
	ck_assert_str_eq(out, "{\n\t\"file\":\t\"m\\\\xff\"\n}\n");
	free(out);
}
END_TEST

/* ---- ctl_load_config ---- */

static struct ctl_globals globals(const char *config)
{
	return (struct ctl_globals){.config_path = config};
}

START_TEST(test_load_config)
{
	static const char good[] =
	    "{\"checkpoint\": {\"prefix\": \"run\", \"follow_symlinks\": true}}";
	struct ctl_globals g;
	struct mn_config cfg, def;

	mn_config_defaults(&def);
	mn_test_write_file(tpath("good.json"), good, strlen(good));
	g = globals(tpath("good.json"));
	ck_assert_int_eq(ctl_load_config(&g, false, &cfg, err, sizeof(err)), 0);
	ck_assert_str_eq(cfg.checkpoint.prefix, "run");
	ck_assert(cfg.checkpoint.follow_symlinks);
	ck_assert_int_eq(cfg.checkpoint.every_steps, def.checkpoint.every_steps);

	/* A named file must exist, tolerated or not. */
	g = globals(tpath("missing.json"));
	memset(&cfg, 0x5a, sizeof(cfg));
	ck_assert_int_eq(ctl_load_config(&g, true, &cfg, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "missing.json"));
	ck_assert_int_eq(ctl_load_config(&g, false, &cfg, err, sizeof(err)), -ENOENT);

	/* Invalid: the message names the file. */
	mn_test_write_file(tpath("bad.json"), "{\"checkpoint\": {\"prefix\": 3}}", 29);
	g = globals(tpath("bad.json"));
	ck_assert_int_eq(ctl_load_config(&g, true, &cfg, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "bad.json"));
	mn_test_write_file(tpath("trunc.json"), "{\"checkpoint\": {", 16);
	g = globals(tpath("trunc.json"));
	ck_assert_int_lt(ctl_load_config(&g, false, &cfg, err, sizeof(err)), 0);

	/* Not a regular file: refused, never read (a FIFO would block). */
	ck_assert_int_eq(mkfifo(tpath("fifo.json"), 0600), 0);
	g = globals(tpath("fifo.json"));
	ck_assert_int_lt(ctl_load_config(&g, true, &cfg, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "fifo.json"));
	g = globals(tmpdir);
	ck_assert_int_lt(ctl_load_config(&g, true, &cfg, err, sizeof(err)), 0);
}
END_TEST

/* Only the compiled-in default may be missing, and only when the caller tolerates it. */
START_TEST(test_load_config_default_missing)
{
	struct ctl_globals g = globals(MN_DEFAULT_CONFIG);
	struct mn_config cfg, def;
	struct stat st;

	if (stat(MN_DEFAULT_CONFIG, &st) == 0 || errno != ENOENT) {
		fprintf(stderr, "note: %s exists; its absence is not tested\n", MN_DEFAULT_CONFIG);
		return;
	}
	mn_config_defaults(&def);
	memset(&cfg, 0x5a, sizeof(cfg));
	ck_assert_int_eq(ctl_load_config(&g, true, &cfg, err, sizeof(err)), 0);
	ck_assert_str_eq(cfg.checkpoint.prefix, def.checkpoint.prefix);
	ck_assert_int_eq(cfg.checkpoint.follow_symlinks, def.checkpoint.follow_symlinks);
	ck_assert_int_eq(ctl_load_config(&g, false, &cfg, err, sizeof(err)), -ENOENT);
}
END_TEST

/* ---- ctl_check_prefix ---- */

/* ctl_check_prefix's result, with what it printed in *msg (malloc'd). */
static int check_prefix(const char *prefix, char **msg)
{
	struct capture cap;
	int rc;

	capture_begin(&cap, 2);
	rc = ctl_check_prefix("ls", prefix);
	*msg = capture_end(&cap);
	return rc;
}

START_TEST(test_check_prefix)
{
	char name[MN_CKPT_MAX_NAME], longest[MN_CKPT_MAX_NAME], said[32], *msg;
	size_t max;

	ck_assert_int_eq(check_prefix("model.ckpt", &msg), MN_EX_OK);
	ck_assert_str_eq(msg, "");
	free(msg);
	ck_assert_int_eq(check_prefix("a", &msg), MN_EX_OK);
	free(msg);
	ck_assert_int_eq(check_prefix("x..y", &msg), MN_EX_OK);
	free(msg);

	static const char *const bad[] = {
	    "",   "a/b",     "/abs",      "dir/",  ".hidden",       ".",
	    "..", "m\nckpt", "a\x1b[31m", "m\x7f", "\x01model.ckpt"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(check_prefix(bad[i], &msg), MN_EX_USAGE);
		ck_assert_msg(strstr(msg, "mnistctl ls: --prefix") == msg, "%s", msg);
		ck_assert_ptr_nonnull(strstr(msg, "Try 'mnistctl ls --help'."));
		free(msg);
	}

	/* The longest prefix whose highest step still names a file: exactly the limit it states. */
	max = MN_CKPT_MAX_NAME - 1 - strlen("-9223372036854775807" MN_CKPT_SUFFIX);
	memset(longest, 'p', max);
	longest[max] = '\0';
	ck_assert_int_eq(check_prefix(longest, &msg), MN_EX_OK);
	free(msg);
	ck_assert_int_eq(mn_ckptdir_filename(longest, INT64_MAX, name, sizeof(name)), 0);
	longest[max] = 'p';
	longest[max + 1] = '\0';
	ck_assert_int_eq(check_prefix(longest, &msg), MN_EX_USAGE);
	snprintf(said, sizeof(said), "of at most %zu bytes", max);
	ck_assert_msg(strstr(msg, said) != NULL, "%s", msg);
	free(msg);
}
END_TEST

/* ---- ctl_output_path ---- */

START_TEST(test_output_path)
{
	char dir[CTL_PATH_MAX], sub[PATH_MAX];
	const char *base;

	/* Standard output. */
	strcpy(dir, "junk");
	base = ctl_output_path("-", dir, sizeof(dir), err, sizeof(err));
	ck_assert_str_eq(base, "-");
	ck_assert_str_eq(dir, "");
	ck_assert_str_eq(ctl_output_path("-", NULL, 0, err, sizeof(err)), "-");

	/* A new file, in the current directory or another. */
	base = ctl_output_path("new.onnx", dir, sizeof(dir), err, sizeof(err));
	ck_assert_str_eq(base, "new.onnx");
	ck_assert_str_eq(dir, ".");
	base = ctl_output_path(tpath("new.onnx"), dir, sizeof(dir), err, sizeof(err));
	ck_assert_str_eq(base, "new.onnx");
	ck_assert_str_eq(dir, tmpdir);
	/* An existing regular file is replaced. */
	mn_test_write_file(tpath("old.onnx"), "x", 1);
	ck_assert_ptr_nonnull(
	    ctl_output_path(tpath("old.onnx"), dir, sizeof(dir), err, sizeof(err)));
	/* Through a symbolic link to a directory. */
	ck_assert_int_eq(symlink(tmpdir, tpath("dirlink")), 0);
	ck_assert_str_eq(ctl_output_path(tpath("dirlink/x"), dir, sizeof(dir), err, sizeof(err)),
	                 "x");
	ck_assert_str_eq(dir, tpath("dirlink"));

	/* No file named. */
	ck_assert_ptr_null(ctl_output_path("", dir, sizeof(dir), err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "does not name a file"));
	ck_assert_ptr_null(ctl_output_path(tpath("sub/"), dir, sizeof(dir), err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "does not name a file"));

	/* The directory the user named, not a temporary file, is what the message names. */
	snprintf(sub, sizeof(sub), "%s/nodir", tmpdir);
	ck_assert_ptr_null(ctl_output_path(tpath("nodir/out"), dir, sizeof(dir), err, sizeof(err)));
	ck_assert_msg(strstr(err, "cannot write into") && strstr(err, sub) &&
	                  strstr(err, "No such file or directory"),
	              "%s", err);
	ck_assert_ptr_null(strstr(err, ".tmp"));
	ck_assert_ptr_null(
	    ctl_output_path(tpath("old.onnx/out"), dir, sizeof(dir), err, sizeof(err)));
	ck_assert_msg(strstr(err, "not a directory") || strstr(err, "Not a directory"), "%s", err);
}
END_TEST

/* What exists and is not a regular file is never replaced (rename would). */
START_TEST(test_output_path_not_regular)
{
	char dir[CTL_PATH_MAX];
	const char *const names[] = {"fifo", "sub", "link", "dangling", "sock"};

	ck_assert_int_eq(mkfifo(tpath("fifo"), 0600), 0);
	ck_assert_int_eq(mkdir(tpath("sub"), 0700), 0);
	mn_test_write_file(tpath("target"), "t", 1);
	ck_assert_int_eq(symlink("target", tpath("link")), 0);
	ck_assert_int_eq(symlink("nothing", tpath("dangling")), 0);
	ck_assert_int_eq(mknod(tpath("sock"), S_IFSOCK | 0600, 0), 0);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		ck_assert_ptr_null(
		    ctl_output_path(tpath(names[i]), dir, sizeof(dir), err, sizeof(err)));
		ck_assert_msg(strstr(err, "exists and is not a regular file"), "%s: %s", names[i],
		              err);
		ck_assert_ptr_nonnull(strstr(err, tpath(names[i])));
	}
	ck_assert_ptr_null(ctl_output_path("/dev/null", dir, sizeof(dir), err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "/dev/null: exists and is not a regular file"));
	ck_assert_ptr_null(ctl_output_path(tpath("."), dir, sizeof(dir), err, sizeof(err)));
	ck_assert_ptr_null(ctl_output_path("..", dir, sizeof(dir), err, sizeof(err)));
	/* All still there. */
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 6);
}
END_TEST

/*
 * Over-long paths are refused before any work, naming the path: a name
 * longer than NAME_MAX, a directory longer than dir's buffer, a whole path
 * beyond PATH_MAX.
 */
START_TEST(test_output_path_too_long)
{
	char dir[CTL_PATH_MAX], small[8], *path;
	size_t n = 3 * PATH_MAX;

	path = malloc(n);
	ck_assert_ptr_nonnull(path);

	/* A directory that cannot be searched: the write could not create its file. */
	ck_assert_int_eq(mkdir(tpath("locked"), 0600), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	ck_assert_ptr_null(
	    ctl_output_path(tpath("locked/out"), dir, sizeof(dir), err, sizeof(err)));
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_msg(strstr(err, "locked/out: Permission denied"), "%s", err);

	/* A directory that does not fit the caller's buffer. */
	ck_assert_ptr_null(ctl_output_path(tpath("out"), small, sizeof(small), err, sizeof(err)));
	ck_assert_ptr_nonnull(err[0] ? err : NULL);

	/* A last component longer than NAME_MAX. */
	snprintf(path, n, "%s/", tmpdir);
	memset(path + strlen(path), 'n', NAME_MAX + 1);
	path[strlen(tmpdir) + 1 + NAME_MAX + 1] = '\0';
	err[0] = '\0';
	ck_assert_ptr_null(ctl_output_path(path, dir, sizeof(dir), err, sizeof(err)));
	ck_assert_msg(strstr(err, "too long"), "%s", err);

	/* A directory beyond PATH_MAX (made of many short components). */
	snprintf(path, n, "%s", tmpdir);
	while (strlen(path) < PATH_MAX + 10)
		strcat(path, "/./.");
	strcat(path, "/out");
	err[0] = '\0';
	ck_assert_ptr_null(ctl_output_path(path, dir, sizeof(dir), err, sizeof(err)));
	ck_assert_msg(err[0] != '\0', "no message");

	/* A short directory whose path plus the name passes PATH_MAX. */
	snprintf(path, n, "%s", tmpdir);
	while (strlen(path) < PATH_MAX - 100)
		strcat(path, "/./.");
	strcat(path, "/");
	n = strlen(path);
	memset(path + n, 'q', 200);
	path[n + 200] = '\0';
	err[0] = '\0';
	ck_assert_ptr_null(ctl_output_path(path, dir, sizeof(dir), err, sizeof(err)));
	/* The message (cut: MN_ERRLEN) names the path. */
	ck_assert(strncmp(err, path, 100) == 0);
	free(path);
}
END_TEST

/* ---- ctl_write_output ---- */

static int write_str(const char *dir, const char *base, const char *s, bool noreplace)
{
	struct iovec iov = {.iov_base = (void *)s, .iov_len = strlen(s)};

	return ctl_write_output(dir, base, &iov, 1, noreplace, err, sizeof(err));
}

static mode_t file_mode(const char *path)
{
	struct stat st;

	ck_assert_int_eq(lstat(path, &st), 0);
	return st.st_mode & 07777;
}

static void check_content(const char *path, const char *want)
{
	char *got = slurp(path, NULL);

	ck_assert_str_eq(got, want);
	free(got);
}

START_TEST(test_write_output)
{
	struct iovec iov[3] = {{(void *)"ab", 2}, {(void *)"", 0}, {(void *)"cde", 3}};

	/* A new file: 0644 under the umask, and nothing else left in the directory. */
	ck_assert_int_eq(write_str(tmpdir, "out", "first", false), 0);
	check_content(tpath("out"), "first");
	ck_assert_uint_eq(file_mode(tpath("out")), 0644);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 1);

	/* Replaced, keeping its own mode. */
	ck_assert_int_eq(chmod(tpath("out"), 0600), 0);
	ck_assert_int_eq(ctl_write_output(tmpdir, "out", iov, 3, false, err, sizeof(err)), 0);
	check_content(tpath("out"), "abcde");
	ck_assert_uint_eq(file_mode(tpath("out")), 0600);

	/* noreplace: an existing file stays as it was; a new one is written. */
	ck_assert_int_eq(write_str(tmpdir, "out", "second", true), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err, tpath("out")));
	check_content(tpath("out"), "abcde");
	ck_assert_int_eq(write_str(tmpdir, "new", "n", true), 0);
	check_content(tpath("new"), "n");
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 2);

	/* An empty output is a file too. */
	ck_assert_int_eq(write_str(tmpdir, "empty", "", false), 0);
	check_content(tpath("empty"), "");
}
END_TEST

START_TEST(test_write_output_errors)
{
	/* What is not a regular file, even if it appeared after ctl_output_path looked. */
	ck_assert_int_eq(mkfifo(tpath("fifo"), 0600), 0);
	ck_assert_int_eq(write_str(tmpdir, "fifo", "x", false), -EEXIST);
	ck_assert_int_eq(mkdir(tpath("sub"), 0700), 0);
	ck_assert_int_eq(write_str(tmpdir, "sub", "x", false), -EEXIST);
	mn_test_write_file(tpath("target"), "keep", 4);
	ck_assert_int_eq(symlink("target", tpath("link")), 0);
	ck_assert_int_eq(write_str(tmpdir, "link", "x", false), -EEXIST);
	check_content(tpath("target"), "keep");

	/* A directory that is gone, or is not one. */
	ck_assert_int_lt(write_str(tpath("gone"), "out", "x", false), 0);
	ck_assert_ptr_nonnull(strstr(err, "gone/out"));
	ck_assert_int_lt(write_str(tpath("target"), "out", "x", false), 0);
	/* No directory at all (only "-" has none). */
	ck_assert_int_eq(write_str("", "out", "x", false), -EINVAL);

	/* An unwritable directory: the error, and no temporary file left. */
	ck_assert_int_eq(chmod(tpath("sub"), 0555), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE, false);
	ck_assert_int_eq(write_str(tpath("sub"), "out", "x", false), -EACCES);
	mn_test_caps(1u << CAP_DAC_OVERRIDE, true);
	ck_assert_ptr_nonnull(strstr(err, "sub/out"));
	ck_assert_uint_eq(mn_test_count_entries(tpath("sub")), 0);
	ck_assert_int_eq(chmod(tpath("sub"), 0700), 0);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 4);
}
END_TEST

START_TEST(test_write_output_stdout)
{
	struct iovec iov[2] = {{(void *)"model ", 6}, {(void *)"bytes\n", 6}};
	struct capture cap;
	char dir[CTL_PATH_MAX];
	const char *base = ctl_output_path("-", dir, sizeof(dir), err, sizeof(err));
	char *out;

	capture_begin(&cap, 1);
	ck_assert_int_eq(ctl_write_output(dir, base, iov, 2, true, err, sizeof(err)), 0);
	out = capture_end(&cap);
	ck_assert_str_eq(out, "model bytes\n");
	free(out);
	/* A file called "-" in a directory is a file. */
	ck_assert_int_eq(write_str(tmpdir, "-", "dash", false), 0);
	check_content(tpath("-"), "dash");

	/* A closed standard output is an error, named. */
	{
		int saved = dup(1);

		ck_assert_int_ge(saved, 0);
		close(1);
		ck_assert_int_eq(ctl_write_output("", "-", iov, 2, false, err, sizeof(err)),
		                 -EBADF);
		ck_assert_int_eq(dup2(saved, 1), 1);
		close(saved);
		ck_assert_ptr_nonnull(strstr(err, "standard output"));
	}
}
END_TEST

static void on_signal(int sig)
{
	(void)sig;
}

/* The handlers ctl_write_output installs are gone afterwards; ignored signals stay ignored. */
START_TEST(test_write_output_restores_signals)
{
	struct sigaction sa = {.sa_handler = on_signal}, cur;

	sigemptyset(&sa.sa_mask);
	ck_assert_int_eq(sigaction(SIGHUP, &sa, NULL), 0);
	ck_assert_ptr_ne(signal(SIGINT, SIG_IGN), SIG_ERR);
	ck_assert_ptr_ne(signal(SIGTERM, SIG_DFL), SIG_ERR);
	ck_assert_int_eq(write_str(tmpdir, "out", "x", false), 0);
	ck_assert_int_eq(write_str(tmpdir, "out", "x", true), -EEXIST);
	ck_assert_int_eq(sigaction(SIGHUP, NULL, &cur), 0);
	ck_assert_ptr_eq(cur.sa_handler, on_signal);
	ck_assert_int_eq(sigaction(SIGINT, NULL, &cur), 0);
	ck_assert_ptr_eq(cur.sa_handler, SIG_IGN);
	ck_assert_int_eq(sigaction(SIGTERM, NULL, &cur), 0);
	ck_assert_ptr_eq(cur.sa_handler, SIG_DFL);
}
END_TEST

/*
 * A signal that arrives while the output is written. This program's own
 * fsync(), which the atomic writer calls on the complete temporary file
 * before renaming it into place, raises the signal there: the temporary
 * file certainly exists then, and nothing holds a lock the handler needs.
 */
static volatile sig_atomic_t fsync_raise; /* the signal to raise at the next fsync, 0 none */
static volatile sig_atomic_t fsync_saw_temp;

/* Whether dir holds exactly one entry, a temporary file for out.bin. */
static bool only_temp(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0, temps = 0;

	if (!d)
		return false;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		n++;
		temps += strncmp(e->d_name, ".out.bin.", 9) == 0 &&
		         strcmp(e->d_name + strlen(e->d_name) - 4, ".tmp") == 0;
	}
	closedir(d);
	return n == 1 && temps == 1;
}

int fsync(int fd)
{
	int sig = fsync_raise;

	if (sig) {
		fsync_raise = 0;
		fsync_saw_temp = only_temp(tmpdir);
		raise(sig);
	}
	return (int)syscall(SYS_fsync, fd);
}

START_TEST(test_write_output_signal)
{
	static const int sigs[] = {SIGHUP, SIGINT, SIGTERM};

	for (size_t i = 0; i < 3; i++) {
		pid_t pid;
		int status;

		fflush(NULL);
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			fsync_raise = sigs[i];
			write_str(tmpdir, "out.bin", "model", false);
			_exit(fsync_saw_temp ? 1 : 2); /* not killed */
		}
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		/* Killed by the signal itself, as it would have been, and the temporary file gone.
		 */
		ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == sigs[i],
		              "signal %d: status %#x", sigs[i], status);
		ck_assert_uint_eq(mn_test_count_entries(tmpdir), 0);
	}
}
END_TEST

/* An ignored signal stays ignored: the output is written, and the handler stays SIG_IGN. */
START_TEST(test_write_output_signal_ignored)
{
	struct sigaction cur;

	ck_assert_ptr_ne(signal(SIGTERM, SIG_IGN), SIG_ERR);
	fsync_raise = SIGTERM;
	ck_assert_int_eq(write_str(tmpdir, "out.bin", "model", false), 0);
	ck_assert(fsync_saw_temp);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 1);
	check_content(tpath("out.bin"), "model");
	ck_assert_int_eq(sigaction(SIGTERM, NULL, &cur), 0);
	ck_assert_ptr_eq(cur.sa_handler, SIG_IGN);
}
END_TEST

/* ---- ctl_check_not_source ---- */

START_TEST(test_check_not_source)
{
	char rel[PATH_MAX + 64];

	mn_test_write_file(tpath("ckpt"), "c", 1);
	mn_test_write_file(tpath("copy"), "c", 1);
	ck_assert_int_eq(mkdir(tpath("sub"), 0700), 0);

	ck_assert_int_eq(
	    ctl_check_not_source("-", tpath("ckpt"), "the checkpoint", err, sizeof(err)), 0);
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("new"), tpath("ckpt"), "the checkpoint", err, sizeof(err)),
	    0);
	/* Another file with the same bytes is another file. */
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("copy"), tpath("ckpt"), "the checkpoint", err, sizeof(err)),
	    0);

	/* The same name. */
	err[0] = '\0';
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("ckpt"), tpath("ckpt"), "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	ck_assert_msg(strstr(err, "is the checkpoint being read") && strstr(err, tpath("ckpt")),
	              "%s", err);
	/* A hard link. */
	ck_assert_int_eq(link(tpath("ckpt"), tpath("hard")), 0);
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("hard"), tpath("ckpt"), "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("ckpt"), tpath("hard"), "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	/* A symbolic link either way. */
	ck_assert_int_eq(symlink("ckpt", tpath("soft")), 0);
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("soft"), tpath("ckpt"), "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	ck_assert_int_eq(
	    ctl_check_not_source(tpath("ckpt"), tpath("soft"), "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	/* Through a directory that resolves to the file's: a link to it, "..", ".". */
	ck_assert_int_eq(symlink(tmpdir, tpath("sub/up")), 0);
	ck_assert_int_eq(ctl_check_not_source(tpath("sub/up/ckpt"), tpath("ckpt"), "the checkpoint",
	                                      err, sizeof(err)),
	                 -EEXIST);
	ck_assert_int_eq(ctl_check_not_source(tpath("sub/../ckpt"), tpath("./ckpt"),
	                                      "the checkpoint", err, sizeof(err)),
	                 -EEXIST);
	/* Relative to the current directory. */
	ck_assert_int_eq(chdir(tmpdir), 0);
	snprintf(rel, sizeof(rel), "%s/ckpt", tmpdir);
	ck_assert_int_eq(ctl_check_not_source("ckpt", rel, "the checkpoint", err, sizeof(err)),
	                 -EEXIST);
	ck_assert_int_eq(
	    ctl_check_not_source("./sub/up/hard", "soft", "the checkpoint", err, sizeof(err)),
	    -EEXIST);
	/* What the file is read as is named; no source at all passes. */
	ck_assert_int_eq(
	    ctl_check_not_source("ckpt", "hard", "the trainer's history", err, sizeof(err)),
	    -EEXIST);
	ck_assert_str_eq(err, "ckpt is the trainer's history being read (hard); not replacing it");
	ck_assert_int_eq(ctl_check_not_source("ckpt", NULL, "best.json", err, sizeof(err)), 0);
	ck_assert_int_eq(chdir("/"), 0);
}
END_TEST

/* ---- ctl_resolve_checkpoint ---- */

/* An empty file called name in tmpdir/sub (resolution never reads it). */
static void touch(const char *name)
{
	mn_test_write_file(tpath(name), NULL, 0);
}

static void write_text(const char *name, const char *text)
{
	mn_test_write_file(tpath(name), text, strlen(text));
}

static int resolve(const char *path, const char *prefix, const char *config, char *out, size_t len)
{
	struct ctl_globals g;

	/* By default a configuration of defaults, as the missing default file gives. */
	if (!config && !mn_test_exists(tmpdir, "defaults.json"))
		write_text("defaults.json", "{}");
	g = globals(config ? config : tpath("defaults.json"));
	err[0] = '\0';
	return ctl_resolve_checkpoint(path, prefix, &g, out, len, err, sizeof(err));
}

START_TEST(test_resolve_file)
{
	char out[CTL_PATH_MAX];

	/* A file named directly is used as it is, whatever it is: the reader judges it. */
	touch("any.bin");
	ck_assert_int_eq(resolve(tpath("any.bin"), NULL, NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("any.bin"));
	ck_assert_int_eq(symlink("any.bin", tpath("link")), 0);
	ck_assert_int_eq(resolve(tpath("link"), NULL, NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("link"));

	ck_assert_int_eq(resolve(tpath("missing"), NULL, NULL, out, sizeof(out)), -ENOENT);
	ck_assert_str_eq(err, strcat(strcpy(out, tpath("missing")), ": No such file or directory"));
	ck_assert_int_eq(resolve(tpath("any.bin/x"), NULL, NULL, out, sizeof(out)), -ENOTDIR);
	ck_assert_int_eq(symlink("loop", tpath("loop")), 0);
	ck_assert_int_eq(resolve(tpath("loop"), NULL, NULL, out, sizeof(out)), -ELOOP);

	/* A path that does not fit out. */
	ck_assert_int_eq(resolve(tpath("any.bin"), NULL, NULL, out, 8), -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(err, "path too long"));
}
END_TEST

START_TEST(test_resolve_scan)
{
	static const char cfg[] = "{\"checkpoint\": {\"prefix\": \"run\"}}";
	char out[CTL_PATH_MAX];

	ck_assert_int_eq(mkdir(tpath("d"), 0700), 0);
	/* Empty: nothing to resolve. */
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), -ENOENT);
	ck_assert_msg(strstr(err, "no checkpoint") && strstr(err, "model.ckpt-<step>.safetensors"),
	              "%s", err);

	/* The highest step by number, not by name; other prefixes and names ignored. */
	touch("d/model.ckpt-5.safetensors");
	touch("d/model.ckpt-40.safetensors");
	touch("d/model.ckpt-100.safetensors");
	touch("d/model.ckpt-7.safetensors.tmp");
	touch("d/run-9.safetensors");
	touch("d/run-10.safetensors");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/model.ckpt-100.safetensors"));
	ck_assert_int_eq(resolve(tpath("d"), "run", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/run-10.safetensors"));
	/* Without a prefix, the configuration's; a missing configuration file is an error. */
	write_text("cfg.json", cfg);
	ck_assert_int_eq(resolve(tpath("d"), NULL, tpath("cfg.json"), out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/run-10.safetensors"));
	ck_assert_int_eq(resolve(tpath("d"), NULL, tpath("nothing.json"), out, sizeof(out)),
	                 -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nothing.json"));
	/* ...and a prefix given means the configuration is never read. */
	ck_assert_int_eq(resolve(tpath("d"), "run", tpath("nothing.json"), out, sizeof(out)), 0);

	/* A result that does not fit out. */
	ck_assert_int_eq(resolve(tpath("d"), "run", NULL, out, strlen(tpath("d/run-10")) + 4),
	                 -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(err, "path too long"));

	/* An unreadable directory. */
	ck_assert_int_eq(chmod(tpath("d"), 0300), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	ck_assert_int_eq(resolve(tpath("d"), "run", NULL, out, sizeof(out)), -EACCES);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_int_eq(chmod(tpath("d"), 0700), 0);
}
END_TEST

START_TEST(test_resolve_index)
{
	char out[CTL_PATH_MAX];

	ck_assert_int_eq(mkdir(tpath("d"), 0700), 0);
	touch("d/model.ckpt-40.safetensors");
	touch("d/model.ckpt-100.safetensors");
	/* checkpoint.json's latest wins over the highest step. */
	write_text("d/checkpoint.json", "{\"latest\": \"model.ckpt-40.safetensors\"}");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/model.ckpt-40.safetensors"));
	/* A listed file that vanished: the scan. */
	ck_assert_int_eq(unlink(tpath("d/model.ckpt-40.safetensors")), 0);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/model.ckpt-100.safetensors"));
	/* A malformed index: the scan as well. */
	write_text("d/checkpoint.json", "{\"latest\": ");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("d/model.ckpt-100.safetensors"));
	/* The index's file not fitting out. */
	write_text("d/checkpoint.json", "{\"latest\": \"model.ckpt-100.safetensors\"}");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out,
	                         strlen(tpath("d/model.ckpt-100.safetensors"))),
	                 -ENAMETOOLONG);
}
END_TEST

static void write_best(const char *dir, const char *const *files, size_t n)
{
	struct mn_best_entry e[4];

	ck_assert_uint_le(n, 4);
	for (size_t i = 0; i < n; i++) {
		memset(&e[i], 0, sizeof(e[i]));
		e[i].step = (int64_t)(100 - i);
		e[i].accuracy = 0.9 - 0.1 * (double)i;
		e[i].loss = 0.3;
		snprintf(e[i].file, sizeof(e[i].file), "%s", files[i]);
		snprintf(e[i].time, sizeof(e[i].time), "2026-11-29T19:02:09.123Z");
	}
	ck_assert_msg(mn_best_save(dir, e, n, err, sizeof(err)) == 0, "%s", err);
}

START_TEST(test_resolve_best)
{
	static const char *const files[] = {
	    "model.ckpt-100.safetensors", "model.ckpt-99.safetensors", "model.ckpt-98.safetensors"};
	char out[CTL_PATH_MAX];

	ck_assert_int_eq(mkdir(tpath("b"), 0700), 0);
	touch("b/model.ckpt-99.safetensors");
	touch("b/model.ckpt-98.safetensors");
	touch("b/model.ckpt-500.safetensors");
	write_best(tpath("b"), files, 3);
	/* The best that still exists, not the latest. */
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("b/model.ckpt-99.safetensors"));
	touch("b/model.ckpt-100.safetensors");
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("b/model.ckpt-100.safetensors"));
	/* All listed files gone: the latest. */
	for (size_t i = 0; i < 3; i++) {
		char name[64];

		snprintf(name, sizeof(name), "b/%s", files[i]);
		ck_assert_int_eq(unlink(tpath(name)), 0);
	}
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, sizeof(out)), 0);
	ck_assert_str_eq(out, tpath("b/model.ckpt-500.safetensors"));
	/* Not fitting out. */
	touch("b/model.ckpt-98.safetensors");
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, strlen(tpath("b/model"))),
	                 -ENAMETOOLONG);

	/* An invalid best.json is an error, not a reason to pick another file. */
	write_text("b/best.json", "{\"best\": [{\"step\": 1}]}");
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, sizeof(out)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "best.json"));
	write_text("b/best.json", "[");
	ck_assert_int_eq(resolve(tpath("b"), "model.ckpt", NULL, out, sizeof(out)), -EINVAL);
}
END_TEST

/* What is found in a directory must be a regular file; a link only by the configuration. */
START_TEST(test_resolve_found_not_regular)
{
	static const char follow[] = "{\"checkpoint\": {\"follow_symlinks\": true}}";
	char out[CTL_PATH_MAX];

	ck_assert_int_eq(mkdir(tpath("d"), 0700), 0);
	touch("real.safetensors");
	touch("d/model.ckpt-1.safetensors");
	ck_assert_int_eq(symlink("../real.safetensors", tpath("d/model.ckpt-2.safetensors")), 0);
	write_text("follow.json", follow);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), -ELOOP);
	ck_assert_msg(strstr(err, "model.ckpt-2.safetensors: a symbolic link, not followed"), "%s",
	              err);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", tpath("follow.json"), out, sizeof(out)),
	                 0);
	ck_assert_str_eq(out, tpath("d/model.ckpt-2.safetensors"));
	/* The same for the file checkpoint.json and best.json name. */
	write_text("d/checkpoint.json", "{\"latest\": \"model.ckpt-2.safetensors\"}");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), -ELOOP);
	write_best(tpath("d"), (const char *const[]){"model.ckpt-2.safetensors"}, 1);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", NULL, out, sizeof(out)), -ELOOP);
	ck_assert_int_eq(unlink(tpath("d/best.json")), 0);
	ck_assert_int_eq(unlink(tpath("d/checkpoint.json")), 0);

	/* A FIFO would block the reader, a directory is no file. */
	ck_assert_int_eq(mkfifo(tpath("d/model.ckpt-3.safetensors"), 0600), 0);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", tpath("follow.json"), out, sizeof(out)),
	                 -EINVAL);
	ck_assert_msg(strstr(err, "model.ckpt-3.safetensors: not a regular file"), "%s", err);
	ck_assert_int_eq(symlink("model.ckpt-3.safetensors", tpath("d/model.ckpt-4.safetensors")),
	                 0);
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", tpath("follow.json"), out, sizeof(out)),
	                 -EINVAL);
	ck_assert_int_eq(mkdir(tpath("d/model.ckpt-5.safetensors"), 0700), 0);
	ck_assert_int_lt(resolve(tpath("d"), "model.ckpt", tpath("follow.json"), out, sizeof(out)),
	                 0);
	write_text("d/checkpoint.json", "{\"latest\": \"model.ckpt-5.safetensors\"}");
	ck_assert_int_eq(resolve(tpath("d"), "model.ckpt", tpath("follow.json"), out, sizeof(out)),
	                 -EINVAL);
}
END_TEST

/* ---- ctl_load_model ---- */

#define N_EX   40
#define IN_DIM 6

/* A trained checkpoint of shape IN_DIM-8-MN_CLASSES, read back (not frozen). */
static struct mn_ckpt *trained(void)
{
	static uint8_t images[N_EX * IN_DIM], labels[N_EX];
	struct mn_view data;
	struct mn_trainer *t = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, MN_CLASSES, &data);
	struct mn_ckpt *c = NULL;

	mn_test_publish_step(t, tmpdir, "model.ckpt", 3);
	mn_trainer_free(t);
	ck_assert_msg(mn_ckpt_read(tpath("model.ckpt-3.safetensors"), MN_CKPT_REQUIRE_MNISTD, &c,
	                           err, sizeof(err)) == 0,
	              "%s", err);
	return c;
}

/*
 * c with element i of tensor name set to v (F32), re-encoded and parsed
 * as "edited.safetensors". With name NULL, c unchanged but for drop (a
 * tensor left out) and arch (metadata "architecture", "" to drop it).
 */
static struct mn_ckpt *edited(const struct mn_ckpt *c, const char *name, size_t i, float v,
                              const char *drop, const char *arch)
{
	struct mn_tensor t[32];
	struct mn_meta m[16];
	float *copy = NULL;
	size_t nt = 0, nm = 0, len = 0;
	struct mn_ckpt *out = NULL;
	uint8_t *buf = NULL;

	for (size_t k = 0; k < mn_ckpt_count(c); k++) {
		const struct mn_tensor *src = mn_ckpt_tensor(c, k);

		if (drop && strcmp(src->name, drop) == 0)
			continue;
		ck_assert_uint_lt(nt, 32);
		t[nt] = *src;
		if (name && strcmp(src->name, name) == 0) {
			ck_assert_int_eq(src->dtype, MN_DTYPE_F32);
			ck_assert_uint_lt(i, mn_tensor_elements(src));
			copy = malloc(src->nbytes);
			ck_assert_ptr_nonnull(copy);
			memcpy(copy, src->data, src->nbytes);
			copy[i] = v;
			t[nt].data = copy;
		}
		nt++;
	}
	ck_assert(!name || copy);
	for (size_t k = 0; k < mn_ckpt_meta_count(c); k++) {
		const struct mn_meta *e = mn_ckpt_meta_at(c, k);

		if (strcmp(e->key, MN_META_DATA_CRC32) == 0)
			continue;
		if (arch && strcmp(e->key, "architecture") == 0) {
			if (*arch)
				m[nm++] = (struct mn_meta){e->key, arch};
			continue;
		}
		ck_assert_uint_lt(nm, 16);
		m[nm++] = *e;
	}
	ck_assert_int_eq(mn_ckpt_encode(t, nt, m, nm, &buf, &len, err, sizeof(err)), 0);
	ck_assert_msg(mn_ckpt_parse(buf, len, "edited.safetensors", 0, &out, err, sizeof(err)) == 0,
	              "%s", err);
	free(buf);
	free(copy);
	return out;
}

START_TEST(test_load_model)
{
	struct mn_ckpt *c = trained();
	struct mn_arch arch, a2;
	float *p = NULL, *q = NULL;
	size_t n;

	for (int ema = 0; ema < 2; ema++) {
		ck_assert_msg(ctl_load_model(c, ema, &arch, &p, err, sizeof(err)) == 0, "%s", err);
		ck_assert_uint_eq(arch.input, IN_DIM);
		ck_assert_uint_eq(arch.nhidden, 1);
		ck_assert_uint_eq(arch.hidden[0], 8);
		ck_assert_uint_eq(arch.output, MN_CLASSES);
		/* Exactly what the model loader gives. */
		ck_assert_int_eq(mn_model_load_params(c, ema, &a2, &q, err, sizeof(err)), 0);
		n = mn_arch_param_count(&arch);
		ck_assert(memcmp(p, q, n * sizeof(float)) == 0);
		free(p);
		free(q);
		p = q = NULL;
	}
	mn_ckpt_free(c);
}
END_TEST

/* A value that is not finite, among the values used: refused, naming file, tensor, element. */
START_TEST(test_load_model_not_finite)
{
	struct mn_ckpt *c = trained(), *e;
	struct mn_arch arch;
	float *p = (float *)(uintptr_t)1;

	/* EMA weights [2, 5] NaN: refused with EMA, fine raw. */
	e = edited(c, "layer1/weights/ExponentialMovingAverage", 2 * 8 + 5, NAN, NULL, NULL);
	ck_assert_int_eq(ctl_load_model(e, true, &arch, &p, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err, "edited.safetensors: layer1/weights/ExponentialMovingAverage[2, "
	                          "5] is nan") &&
	                  strstr(err, "not finite is not usable"),
	              "%s", err);
	ck_assert_int_eq(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), 0);
	free(p);
	mn_ckpt_free(e);

	/* Raw biases of the last layer, +inf and -inf: refused raw, fine with EMA. */
	e = edited(c, "layer2/biases", 9, INFINITY, NULL, NULL);
	ck_assert_int_eq(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err, "layer2/biases[9] is inf"), "%s", err);
	ck_assert_int_eq(ctl_load_model(e, true, &arch, &p, err, sizeof(err)), 0);
	free(p);
	mn_ckpt_free(e);
	e = edited(c, "layer2/weights", 0, -INFINITY, NULL, NULL);
	ck_assert_int_eq(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "layer2/weights[0, 0] is -inf"), "%s", err);
	mn_ckpt_free(e);
	/* The largest finite value is finite. */
	e = edited(c, "layer1/biases", 7, FLT_MAX, NULL, NULL);
	ck_assert_int_eq(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), 0);
	free(p);
	mn_ckpt_free(e);
	mn_ckpt_free(c);
}
END_TEST

/* A frozen model has one set of values: its tensors are named without the EMA suffix. */
START_TEST(test_load_model_frozen)
{
	struct mn_ckpt *c = trained(), *f = NULL;
	struct mn_arch arch;
	struct mn_meta extra[] = {{MN_META_GLOBAL_STEP, "3"}, {MN_META_EMA, "true"}};
	float *p = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	ck_assert_int_eq(ctl_load_model(c, true, &arch, &p, err, sizeof(err)), 0);
	p[IN_DIM * 8 + 3] = NAN; /* layer1/biases[3] */
	ck_assert_msg(mn_model_encode_frozen(&arch, p, extra, 2, &buf, &len, err, sizeof(err)) == 0,
	              "%s", err);
	free(p);
	p = NULL;
	ck_assert_int_eq(mn_ckpt_parse(buf, len, "frozen.safetensors", 0, &f, err, sizeof(err)), 0);
	ck_assert(mn_model_is_frozen(f));
	for (int ema = 0; ema < 2; ema++) {
		ck_assert_int_eq(ctl_load_model(f, ema, &arch, &p, err, sizeof(err)), -EINVAL);
		ck_assert_ptr_null(p);
		ck_assert_msg(strstr(err, "frozen.safetensors: layer1/biases[3] is nan"), "%s",
		              err);
	}
	free(buf);
	mn_ckpt_free(f);
	mn_ckpt_free(c);
}
END_TEST

/* What the model loader refuses comes through as it is, with nothing allocated. */
START_TEST(test_load_model_bad_file)
{
	struct mn_ckpt *c = trained(), *e;
	struct mn_arch arch;
	float *p = NULL;

	e = edited(c, NULL, 0, 0, "layer2/biases/ExponentialMovingAverage", NULL);
	ck_assert_int_eq(ctl_load_model(e, true, &arch, &p, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err, "layer2/biases/ExponentialMovingAverage"), "%s", err);
	mn_ckpt_free(e);
	e = edited(c, NULL, 0, 0, NULL, "");
	ck_assert_int_eq(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err, "architecture"), "%s", err);
	mn_ckpt_free(e);
	e = edited(c, NULL, 0, 0, NULL,
	           "{\"input\":6,\"hidden\":[9],\"output\":10,\"activation\":\"relu\"}");
	ck_assert_int_lt(ctl_load_model(e, false, &arch, &p, err, sizeof(err)), 0);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(err, "[6, 8], expected [6, 9]"), "%s", err);
	mn_ckpt_free(e);
	mn_ckpt_free(c);
}
END_TEST

/* ---- ctl_find_tensor ---- */

START_TEST(test_find_tensor)
{
	struct mn_ckpt *c = trained();
	const struct mn_tensor *t;

	t = ctl_find_tensor(c, "layer1/weights", err, sizeof(err));
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(t->name, "layer1/weights");
	ck_assert_ptr_eq(t, mn_ckpt_find(c, "layer1/weights"));
	ck_assert_ptr_null(ctl_find_tensor(c, "layer9/weights", err, sizeof(err)));
	ck_assert_msg(strstr(err, "\"layer9/weights\" not found in ") &&
	                  strstr(err, "model.ckpt-3.safetensors (it has: layer1/weights"),
	              "%s", err);
	ck_assert_ptr_nonnull(strstr(err, "global_step"));
	ck_assert_ptr_null(ctl_find_tensor(c, "", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "not found"));
	mn_ckpt_free(c);
}
END_TEST

/* ---- dtypes and tensor values ---- */

START_TEST(test_dtype_is_int)
{
	static const enum mn_dtype ints[] = {MN_DTYPE_BOOL, MN_DTYPE_U8,  MN_DTYPE_I8,
	                                     MN_DTYPE_U16,  MN_DTYPE_I16, MN_DTYPE_U32,
	                                     MN_DTYPE_I32,  MN_DTYPE_U64, MN_DTYPE_I64};
	static const enum mn_dtype floats[] = {MN_DTYPE_F16, MN_DTYPE_BF16, MN_DTYPE_F32,
	                                       MN_DTYPE_F64};

	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
		ck_assert_msg(ctl_dtype_is_int(ints[i]), "%s", mn_dtype_name(ints[i]));
	for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++)
		ck_assert_msg(!ctl_dtype_is_int(floats[i]), "%s", mn_dtype_name(floats[i]));
}
END_TEST

/*
 * Element i of a tensor of dtype d whose bytes (little endian, as in a
 * file) start one byte into a buffer, so that no element is aligned.
 */
struct value_case {
	enum mn_dtype d;
	uint64_t bits; /* the element's bytes, little endian */
	const char *text;
	double value; /* compared unless it is NaN */
};

static void check_value(const struct value_case *vc)
{
	size_t size = mn_dtype_size(vc->d);
	uint8_t raw[1 + 3 * 8];
	struct mn_tensor t = {.name = "t", .dtype = vc->d, .ndim = 1, .shape = {3}};
	char buf[64];
	double v;

	/* Elements 0 and 2 are all ones: element 1 must be read at its offset. */
	memset(raw, 0xff, sizeof(raw));
	for (size_t b = 0; b < size; b++)
		raw[1 + size + b] = (uint8_t)(vc->bits >> (8 * b));
	t.data = raw + 1;
	t.nbytes = 3 * size;
	ctl_tensor_format(&t, 1, buf, sizeof(buf));
	ck_assert_msg(strcmp(buf, vc->text) == 0, "%s %#llx: \"%s\", not \"%s\"",
	              mn_dtype_name(vc->d), (unsigned long long)vc->bits, buf, vc->text);
	v = ctl_tensor_double(&t, 1);
	if (isnan(vc->value))
		ck_assert_msg(isnan(v), "%s: %g", vc->text, v);
	else
		ck_assert_msg(v == vc->value && signbit(v) == signbit(vc->value),
		              "%s %s: %.17g, not %.17g", mn_dtype_name(vc->d), vc->text, v,
		              vc->value);
}

START_TEST(test_tensor_values)
{
	static const struct value_case cases[] = {
	    {MN_DTYPE_BOOL, 0, "false", 0},
	    {MN_DTYPE_BOOL, 1, "true", 1},
	    {MN_DTYPE_BOOL, 2, "true", 1},
	    {MN_DTYPE_U8, 0, "0", 0},
	    {MN_DTYPE_U8, 255, "255", 255},
	    {MN_DTYPE_I8, 0x80, "-128", -128},
	    {MN_DTYPE_I8, 0x7f, "127", 127},
	    {MN_DTYPE_I8, 0xff, "-1", -1},
	    {MN_DTYPE_U16, 0xffff, "65535", 65535},
	    {MN_DTYPE_U16, 0x0102, "258", 258},
	    {MN_DTYPE_I16, 0x8000, "-32768", -32768},
	    {MN_DTYPE_I16, 0x7fff, "32767", 32767},
	    {MN_DTYPE_U32, 0xffffffff, "4294967295", 4294967295.0},
	    {MN_DTYPE_I32, 0x80000000, "-2147483648", -2147483648.0},
	    {MN_DTYPE_I32, 0x01020304, "16909060", 16909060},
	    {MN_DTYPE_U64, UINT64_MAX, "18446744073709551615", 18446744073709551615.0},
	    {MN_DTYPE_U64, (1ull << 53) + 1, "9007199254740993", 9007199254740992.0},
	    {MN_DTYPE_I64, 0x8000000000000000ull, "-9223372036854775808", -9223372036854775808.0},
	    {MN_DTYPE_I64, 0x7fffffffffffffffull, "9223372036854775807", 9223372036854775807.0},
	    {MN_DTYPE_I64, (uint64_t)-5, "-5", -5},
	    /* F16: one, its sign, the smallest subnormal, the largest finite, specials. */
	    {MN_DTYPE_F16, 0x3c00, "1", 1},
	    {MN_DTYPE_F16, 0xc000, "-2", -2},
	    {MN_DTYPE_F16, 0x3555, "0.333251953", 0.333251953125},
	    {MN_DTYPE_F16, 0x0001, "5.96046448e-08", 0x1p-24},
	    {MN_DTYPE_F16, 0x03ff, "6.09755516e-05", 0x3ffp-24},
	    {MN_DTYPE_F16, 0x0400, "6.10351562e-05", 0x1p-14},
	    {MN_DTYPE_F16, 0x7bff, "65504", 65504},
	    {MN_DTYPE_F16, 0x8000, "-0", -0.0},
	    {MN_DTYPE_F16, 0x7c00, "inf", INFINITY},
	    {MN_DTYPE_F16, 0xfc00, "-inf", -INFINITY},
	    {MN_DTYPE_F16, 0x7e00, "nan", NAN},
	    {MN_DTYPE_F16, 0x7c01, "nan", NAN},
	    /* BF16: the top half of an F32. */
	    {MN_DTYPE_BF16, 0x3f80, "1", 1},
	    {MN_DTYPE_BF16, 0xc0a0, "-5", -5},
	    {MN_DTYPE_BF16, 0x3eab, "0.333984375", 0.333984375},
	    {MN_DTYPE_BF16, 0x0001, "9.18354962e-41", 0x1p-133},
	    {MN_DTYPE_BF16, 0x7f7f, "3.38953139e+38", 0x1.fep127},
	    {MN_DTYPE_BF16, 0x7f80, "inf", INFINITY},
	    {MN_DTYPE_BF16, 0xff80, "-inf", -INFINITY},
	    {MN_DTYPE_BF16, 0x7fc0, "nan", NAN},
	    /* F32 with 9 significant digits: enough to read back exactly. */
	    {MN_DTYPE_F32, 0x3dcccccd, "0.100000001", (double)0.1f},
	    {MN_DTYPE_F32, 0x7f7fffff, "3.40282347e+38", (double)FLT_MAX},
	    {MN_DTYPE_F32, 0x00000001, "1.40129846e-45", 0x1p-149},
	    {MN_DTYPE_F32, 0x80000000, "-0", -0.0},
	    {MN_DTYPE_F32, 0xff800000, "-inf", -INFINITY},
	    /* F64 with 17. */
	    {MN_DTYPE_F64, 0x3fb999999999999aull, "0.10000000000000001", 0.1},
	    {MN_DTYPE_F64, 0x7fefffffffffffffull, "1.7976931348623157e+308", DBL_MAX},
	    {MN_DTYPE_F64, 0x0000000000000001ull, "4.9406564584124654e-324", 0x1p-1074},
	    {MN_DTYPE_F64, 0xbff0000000000000ull, "-1", -1},
	    {MN_DTYPE_F64, 0x7ff0000000000000ull, "inf", INFINITY},
	    {MN_DTYPE_F64, 0x7ff8000000000000ull, "nan", NAN},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_value(&cases[i]);
}
END_TEST

/* Every F16 value reads as the float it denotes (exactly, by F32's arithmetic). */
START_TEST(test_tensor_f16_all)
{
	uint16_t h;
	struct mn_tensor t = {
	    .name = "h", .dtype = MN_DTYPE_F16, .ndim = 0, .data = &h, .nbytes = 2};

	for (uint32_t b = 0; b < 0x10000; b++) {
		int e = (b >> 10) & 0x1f, m = b & 0x3ff;
		double want = e == 0    ? ldexp(m, -24)
		              : e == 31 ? (m ? NAN : INFINITY)
		                        : ldexp(1024 + m, e - 25);
		double got;

		if (b & 0x8000)
			want = -want;
		h = (uint16_t)b;
		got = ctl_tensor_double(&t, 0);
		if (isnan(want))
			ck_assert_msg(isnan(got), "%#x", b);
		else
			ck_assert_msg(got == want && signbit(got) == signbit(want),
			              "%#x: %.17g, not %.17g", b, got, want);
	}
}
END_TEST

/* A buffer too short for the text: cut and terminated, never overrun. */
START_TEST(test_tensor_format_short)
{
	int64_t v = INT64_MIN;
	struct mn_tensor t = {
	    .name = "s", .dtype = MN_DTYPE_I64, .ndim = 0, .data = &v, .nbytes = 8};
	char buf[8];

	memset(buf, 'x', sizeof(buf));
	ctl_tensor_format(&t, 0, buf, 4);
	ck_assert_str_eq(buf, "-92");
	ck_assert_int_eq(buf[4], 'x');
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ctl_util");

	MN_TEST_ADD(mn_test_tcase(s, "escape", setup, teardown), test_fputs_escaped,
	            test_fputs_escaped_long, test_errorf, test_usage_error,
	            test_usage_error_escaped, test_option_message, test_option_error);
	MN_TEST_ADD(mn_test_tcase(s, "json", setup, teardown), test_json_str,
	            test_json_str_exhaustive, test_json_scalars, test_json_add, test_json_failure,
	            test_json_failure_null_item, test_json_print_null, test_json_print_stdout);
	MN_TEST_ADD(mn_test_tcase(s, "config", setup, teardown), test_load_config,
	            test_load_config_default_missing, test_check_prefix);
	MN_TEST_ADD(mn_test_tcase(s, "output", setup, teardown), test_output_path,
	            test_output_path_not_regular, test_output_path_too_long, test_write_output,
	            test_write_output_errors, test_write_output_stdout,
	            test_write_output_restores_signals, test_write_output_signal,
	            test_write_output_signal_ignored, test_check_not_source);
	MN_TEST_ADD(mn_test_tcase(s, "resolve", setup, teardown), test_resolve_file,
	            test_resolve_scan, test_resolve_index, test_resolve_best,
	            test_resolve_found_not_regular);
	MN_TEST_ADD(mn_test_tcase(s, "model", setup, teardown), test_load_model,
	            test_load_model_not_finite, test_load_model_frozen, test_load_model_bad_file,
	            test_find_tensor);
	MN_TEST_ADD(mn_test_tcase(s, "tensor", setup, teardown), test_dtype_is_int,
	            test_tensor_values, test_tensor_f16_all, test_tensor_format_short);
	return mn_test_run(s);
}
