/*
 * test_eval_textfile.c - the evaluator's Prometheus textfile
 * (evaluator/textfile.c) read back from a real file.
 *
 * Every test parses what was written as a text exposition (format 0.0.4: a
 * HELP and a TYPE per family, then its samples), so a file that a scraper
 * would reject fails here whatever values it holds; the values are then
 * compared with what was recorded, family by family as mnist-eval(8) lists
 * them. Failing writes are observed through the process log (log.h), sent to
 * a file for the purpose.
 */
#include "textfile.h"

#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <linux/capability.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "mn_test.h"
#include "util.h"

#define START_NS 1764090245123000000LL
#define MAX_FAM  16
#define MAX_SMP  48
#define NAME_LEN 128
#define NBUCKETS 12 /* latency bounds besides +Inf */
#define READ_MAX (1 << 20)

/* One sample line, its labels decoded. Only run and le may appear. */
struct sample {
	char name[NAME_LEN];
	bool has_run, has_le;
	char run[NAME_LEN], le[32];
	double value;
};

struct family {
	char name[NAME_LEN];
	char type[16];
};

struct expo {
	struct family fam[MAX_FAM];
	struct sample smp[MAX_SMP];
	size_t nfam, nsmp;
};

static char tmpdir[MN_TEST_DIRLEN], path[PATH_MAX], logpath[PATH_MAX];

/* The families of mnist-eval(8), with their types. */
static const struct family families[] = {
    {"mnist_eval_running", "gauge"},
    {"mnist_eval_process_start_time_seconds", "gauge"},
    {"mnist_eval_step", "gauge"},
    {"mnist_eval_validation_accuracy_ratio", "gauge"},
    {"mnist_eval_validation_loss", "gauge"},
    {"mnist_eval_best_validation_accuracy_ratio", "gauge"},
    {"mnist_eval_best_step", "gauge"},
    {"mnist_eval_latency_seconds", "histogram"},
    {"mnist_eval_evaluations_total", "counter"},
    {"mnist_eval_rejected_files_total", "counter"},
    {"mnist_eval_last_evaluation_timestamp_seconds", "gauge"},
};
#define NFAMILIES (sizeof(families) / sizeof(families[0]))

static void setup(void)
{
	char err[MN_ERRLEN];

	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(path, sizeof(path), "%s/mnist-eval.prom", tmpdir);
	snprintf(logpath, sizeof(logpath), "%s/eval.log", tmpdir);
	ck_assert_msg(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)) == 0, "%s",
	              err);
}

static void teardown(void)
{
	/* Back to standard error, as before any mn_log_open (CK_FORK=no runs on). */
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

/* A metric or label name; returns the first byte after it. */
static const char *parse_name(const char *p, char *out, bool colon, int line)
{
	size_t n = 0;

	ck_assert_msg(isalpha((unsigned char)*p) || *p == '_' || (colon && *p == ':'),
	              "line %d: no name at '%s'", line, p);
	while (isalnum((unsigned char)p[n]) || p[n] == '_' || (colon && p[n] == ':'))
		n++;
	ck_assert_msg(n < NAME_LEN, "line %d: name too long", line);
	memcpy(out, p, n);
	out[n] = '\0';
	return p + n;
}

/* A quoted label value (p at the opening quote), unescaped into out. */
static const char *parse_quoted(const char *p, char *out, size_t len, int line)
{
	size_t n = 0;

	ck_assert_msg(*p++ == '"', "line %d: label value not quoted", line);
	for (; *p != '"'; p++) {
		char c = *p;

		ck_assert_msg(c && c != '\n', "line %d: unterminated label value", line);
		if (c == '\\') {
			c = *++p;
			/* The only escapes the format has. */
			ck_assert_msg(c == '\\' || c == '"' || c == 'n', "line %d: bad escape \\%c",
			              line, c);
			c = c == 'n' ? '\n' : c;
		}
		ck_assert_uint_lt(n + 1, len);
		out[n++] = c;
	}
	out[n] = '\0';
	return p + 1;
}

/* A sample's value; strtod reads NaN, +Inf and -Inf as the format spells them. */
static double parse_value(const char *s, int line)
{
	char *end;
	double v = strtod(s, &end);

	ck_assert_msg(end != s && *end == '\0', "line %d: bad value '%s'", line, s);
	return v;
}

/* The sample line at p (NUL-terminated) of family f. */
static void parse_sample(const char *p, const struct family *f, struct sample *s, int line)
{
	char lname[NAME_LEN], suffix[NAME_LEN];

	memset(s, 0, sizeof(*s));
	p = parse_name(p, s->name, true, line);
	/* A sample belongs to the family just declared; a histogram's carry their suffix. */
	snprintf(suffix, sizeof(suffix), "%s", s->name + strlen(f->name));
	ck_assert_msg(
	    strncmp(s->name, f->name, strlen(f->name)) == 0 &&
	        (!suffix[0] || (strcmp(f->type, "histogram") == 0 &&
	                        (strcmp(suffix, "_bucket") == 0 || strcmp(suffix, "_sum") == 0 ||
	                         strcmp(suffix, "_count") == 0))),
	    "line %d: %s outside its family %s", line, s->name, f->name);
	if (*p == '{') {
		do {
			p = parse_name(p + 1, lname, false, line);
			ck_assert_msg(*p == '=', "line %d: no '=' after label %s", line, lname);
			if (strcmp(lname, "run") == 0 && !s->has_run) {
				p = parse_quoted(p + 1, s->run, sizeof(s->run), line);
				s->has_run = true;
			} else if (strcmp(lname, "le") == 0 && !s->has_le) {
				p = parse_quoted(p + 1, s->le, sizeof(s->le), line);
				s->has_le = true;
			} else {
				ck_abort_msg("line %d: unexpected label %s", line, lname);
			}
		} while (*p == ',');
		ck_assert_msg(*p++ == '}', "line %d: labels not closed", line);
	}
	ck_assert_msg(s->has_le == (strcmp(suffix, "_bucket") == 0), "line %d: le misplaced", line);
	ck_assert_msg(*p++ == ' ', "line %d: no space before the value", line);
	s->value = parse_value(p, line);
}

/*
 * Parses a whole exposition: each family a HELP, then a TYPE, then its
 * samples, declared once; the text ends with a newline.
 */
static void parse(char *text, struct expo *e)
{
	struct family *f = NULL;
	char name[NAME_LEN];
	int line = 0;

	memset(e, 0, sizeof(*e));
	ck_assert_msg(text[0] && text[strlen(text) - 1] == '\n', "not a whole exposition");
	for (char *p = text, *nl; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		*nl = '\0';
		line++;
		if (strncmp(p, "# HELP ", 7) == 0) {
			p = (char *)parse_name(p + 7, name, true, line);
			ck_assert_msg(p[0] == ' ' && p[1], "line %d: HELP without text", line);
			ck_assert_uint_lt(e->nfam, MAX_FAM);
			for (size_t i = 0; i < e->nfam; i++)
				ck_assert_msg(strcmp(e->fam[i].name, name) != 0,
				              "line %d: %s declared twice", line, name);
			f = &e->fam[e->nfam++];
			snprintf(f->name, sizeof(f->name), "%s", name);
		} else if (strncmp(p, "# TYPE ", 7) == 0) {
			p = (char *)parse_name(p + 7, name, true, line);
			ck_assert_msg(f && strcmp(f->name, name) == 0 && !f->type[0],
			              "line %d: TYPE %s without its HELP", line, name);
			ck_assert_msg(strcmp(p, " gauge") == 0 || strcmp(p, " counter") == 0 ||
			                  strcmp(p, " histogram") == 0,
			              "line %d: bad type '%s'", line, p);
			snprintf(f->type, sizeof(f->type), "%s", p + 1);
		} else {
			ck_assert_msg(f && f->type[0], "line %d: sample without a TYPE", line);
			ck_assert_uint_lt(e->nsmp, MAX_SMP);
			parse_sample(p, f, &e->smp[e->nsmp++], line);
		}
	}
}

/* Reads path and parses it. */
static void read_expo(const char *file, struct expo *e)
{
	char err[MN_ERRLEN], *buf = NULL;
	size_t len;

	ck_assert_msg(mn_read_file(file, READ_MAX, &buf, &len, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(strlen(buf), len);
	parse(buf, e);
	free(buf);
}

/* The one sample called name (with le="le" when le is not NULL). */
static double value(const struct expo *e, const char *name, const char *le)
{
	const struct sample *found = NULL;

	for (size_t i = 0; i < e->nsmp; i++) {
		const struct sample *s = &e->smp[i];

		if (strcmp(s->name, name) == 0 && (!le || strcmp(s->le, le) == 0)) {
			ck_assert_msg(!found, "%s{le=%s} twice", name, le ? le : "");
			found = s;
		}
	}
	ck_assert_msg(found != NULL, "no sample %s{le=%s}", name, le ? le : "");
	return found->value;
}

/* Exactly the families of the man page, with their types; run on every sample or on none. */
static void check_shape(const struct expo *e, const char *run)
{
	ck_assert_uint_eq(e->nfam, NFAMILIES);
	for (size_t i = 0; i < NFAMILIES; i++) {
		size_t j = 0;

		while (j < e->nfam && strcmp(e->fam[j].name, families[i].name) != 0)
			j++;
		ck_assert_msg(j < e->nfam, "family %s missing", families[i].name);
		ck_assert_str_eq(e->fam[j].type, families[i].type);
	}
	/* Histogram: 12 bounds and +Inf, then _sum and _count; the rest one sample each. */
	ck_assert_uint_eq(e->nsmp, NFAMILIES - 1 + NBUCKETS + 3);
	for (size_t i = 0; i < e->nsmp; i++) {
		ck_assert_msg(e->smp[i].has_run == (run != NULL), "%s: run label %s",
		              e->smp[i].name, run ? "missing" : "present");
		if (run)
			ck_assert_str_eq(e->smp[i].run, run);
	}
}

/* Cumulative latency buckets: le bound -> expected count (with +Inf = the count). */
static void check_latency(const struct expo *e, const char *const *les, const double *want,
                          size_t n, double sum)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_double_eq(value(e, "mnist_eval_latency_seconds_bucket", les[i]), want[i]);
	ck_assert_double_eq(value(e, "mnist_eval_latency_seconds_bucket", "+Inf"),
	                    value(e, "mnist_eval_latency_seconds_count", NULL));
	ck_assert_double_eq_tol(value(e, "mnist_eval_latency_seconds_sum", NULL), sum, 1e-12);
}

static struct mne_textfile *make(const char *run)
{
	struct mne_textfile *t = NULL;
	char err[MN_ERRLEN] = "";

	ck_assert_msg(mne_textfile_new(path, run, START_NS, &t, err, sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_nonnull(t);
	return t;
}

static struct mne_pick_result result(int64_t step, double accuracy, double loss, int64_t done_ns)
{
	struct mne_pick_result r;

	memset(&r, 0, sizeof(r));
	r.step = step;
	r.eval.accuracy = accuracy;
	r.eval.loss = loss;
	r.done_ns = done_ns;
	return r;
}

/* Lines of the log that contain needle. */
static size_t log_lines(const char *needle)
{
	char err[MN_ERRLEN], *buf = NULL;
	size_t len, n = 0;
	int rc = mn_read_file(logpath, READ_MAX, &buf, &len, err, sizeof(err));

	if (rc == -ENOENT)
		return 0;
	ck_assert_msg(rc == 0, "%s", err);
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		n += strstr(line, needle) != NULL;
	free(buf);
	return n;
}

/* Before any evaluation: the file says so (NaN, -1, zero counts), with every family. */
START_TEST(test_initial_exposition)
{
	struct mne_textfile *t = make("");
	struct expo e;

	/* Nothing is written until asked (the evaluator writes at its start). */
	ck_assert_int_eq(access(path, F_OK), -1);
	mne_textfile_write(t, true);
	read_expo(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnist_eval_running", NULL), 1);
	ck_assert_double_eq(value(&e, "mnist_eval_process_start_time_seconds", NULL),
	                    (double)START_NS / 1e9);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), -1);
	ck_assert(isnan(value(&e, "mnist_eval_validation_accuracy_ratio", NULL)));
	ck_assert(isnan(value(&e, "mnist_eval_validation_loss", NULL)));
	ck_assert(isnan(value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL)));
	ck_assert_double_eq(value(&e, "mnist_eval_best_step", NULL), -1);
	ck_assert_double_eq(value(&e, "mnist_eval_evaluations_total", NULL), 0);
	ck_assert_double_eq(value(&e, "mnist_eval_rejected_files_total", NULL), 0);
	ck_assert(isnan(value(&e, "mnist_eval_last_evaluation_timestamp_seconds", NULL)));
	check_latency(&e, (const char *const[]){"0.01", "60"}, (const double[]){0, 0}, 2, 0);
	mne_textfile_free(t);
}
END_TEST

/*
 * Results and rejections show at the next write: the latest result, the best
 * one (which a worse later result does not replace), the counters and the
 * latency histogram.
 */
START_TEST(test_counters_move_with_results_and_rejections)
{
	struct mne_textfile *t = make("");
	struct mne_pick_result r1 = result(1000, 0.8125, 0.5, 1764090300250000000LL);
	struct mne_pick_result r2 = result(2000, 0.75, 0.625, 1764090400500000000LL);
	struct expo e;

	mne_textfile_result(t, &r1, 0.03);
	mne_textfile_write(t, true);
	read_expo(path, &e);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), 1000);
	ck_assert_double_eq(value(&e, "mnist_eval_evaluations_total", NULL), 1);
	ck_assert_double_eq(value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL), 0.8125);

	mne_textfile_result(t, &r2, 2);
	mne_textfile_rejected(t, 3);
	mne_textfile_write(t, true);
	read_expo(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), 2000);
	ck_assert_double_eq(value(&e, "mnist_eval_validation_accuracy_ratio", NULL), 0.75);
	ck_assert_double_eq(value(&e, "mnist_eval_validation_loss", NULL), 0.625);
	ck_assert_double_eq(value(&e, "mnist_eval_best_validation_accuracy_ratio", NULL), 0.8125);
	ck_assert_double_eq(value(&e, "mnist_eval_best_step", NULL), 1000);
	ck_assert_double_eq(value(&e, "mnist_eval_evaluations_total", NULL), 2);
	ck_assert_double_eq(value(&e, "mnist_eval_rejected_files_total", NULL), 3);
	ck_assert_double_eq(value(&e, "mnist_eval_last_evaluation_timestamp_seconds", NULL),
	                    (double)r2.done_ns / 1e9);
	/* 0.03 s falls in (0.025, 0.05], 2 s in (1, 2.5]; buckets are cumulative. */
	check_latency(&e, (const char *const[]){"0.025", "0.05", "1", "2.5", "60"},
	              (const double[]){0, 1, 1, 2, 2}, 5, 2.03);
	ck_assert_double_eq(value(&e, "mnist_eval_latency_seconds_count", NULL), 2);

	/* The rejected total is set, not added to. */
	mne_textfile_rejected(t, 4);
	mne_textfile_write(t, true);
	read_expo(path, &e);
	ck_assert_double_eq(value(&e, "mnist_eval_rejected_files_total", NULL), 4);
	mne_textfile_free(t);
}
END_TEST

/*
 * metrics.run labels every sample, histogram buckets included, and a value
 * with quotes, backslashes and a newline is escaped so the line still parses
 * back to it.
 */
START_TEST(test_run_label_on_every_sample_escaped)
{
	static const char run[] = "night\"ly\\b\nx";
	struct mne_textfile *t = make(run);
	char err[MN_ERRLEN], *raw = NULL;
	struct expo e;
	size_t len;

	mne_textfile_write(t, true);
	ck_assert_int_eq(mn_read_file(path, READ_MAX, &raw, &len, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(raw, "{run=\"night\\\"ly\\\\b\\nx\",le=\"0.01\"} 0\n"));
	free(raw);
	read_expo(path, &e);
	check_shape(&e, run);
	mne_textfile_free(t);
}
END_TEST

/* A clean exit writes running 0 and leaves the rest as it was. */
START_TEST(test_stopped_writes_running_zero)
{
	struct mne_textfile *t = make("r");
	struct mne_pick_result r = result(500, 0.5, 1.5, 1764090300000000000LL);
	struct expo e;

	mne_textfile_result(t, &r, 0.2);
	mne_textfile_write(t, false);
	read_expo(path, &e);
	check_shape(&e, "r");
	ck_assert_double_eq(value(&e, "mnist_eval_running", NULL), 0);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), 500);
	ck_assert_double_eq(value(&e, "mnist_eval_evaluations_total", NULL), 1);
	mne_textfile_free(t);
}
END_TEST

/* eval.textfile "" is off: no writer, no file, and every function takes the NULL. */
START_TEST(test_empty_path_is_off)
{
	struct mne_textfile *t = (struct mne_textfile *)&t; /* must be overwritten */
	struct mne_pick_result r = result(1, 0.5, 1, 1);
	char err[MN_ERRLEN] = "";

	ck_assert_int_eq(mne_textfile_new("", "r", START_NS, &t, err, sizeof(err)), 0);
	ck_assert_ptr_null(t);
	mne_textfile_result(NULL, &r, 1);
	mne_textfile_rejected(NULL, 1);
	mne_textfile_write(NULL, true);
	mne_textfile_write(NULL, false);
	mne_textfile_free(NULL);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 1); /* the log alone */
}
END_TEST

/*
 * Sets whether this process may write where the permission bits forbid it:
 * as root, a mode 0555 directory is read-only only without CAP_DAC_OVERRIDE.
 */
static void dac_override(bool on)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];

	if (geteuid() != 0)
		return;
	ck_assert_int_eq(syscall(SYS_capget, &h, d), 0);
	if (on)
		d[0].effective |= 1u << CAP_DAC_OVERRIDE;
	else
		d[0].effective &= ~(1u << CAP_DAC_OVERRIDE);
	ck_assert_int_eq(syscall(SYS_capset, &h, d), 0);
}

/*
 * A write into a missing directory, then into a read-only one, fails without
 * harm and is logged once per distinct error; once the directory is writable
 * the next write succeeds, which is logged once too.
 */
START_TEST(test_failing_writes_logged_once_then_recover)
{
	char sub[MN_TEST_DIRLEN + 16];
	struct mne_textfile *t;
	struct expo e;

	snprintf(sub, sizeof(sub), "%s/textfiles", tmpdir);
	snprintf(path, sizeof(path), "%s/mnist-eval.prom", sub);
	t = make("");
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	ck_assert_uint_eq(log_lines("eval.textfile: "), 1);
	ck_assert_uint_eq(log_lines("No such file or directory"), 1);

	ck_assert_int_eq(mkdir(sub, 0555), 0);
	dac_override(false);
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	dac_override(true);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_uint_eq(log_lines("eval.textfile: "), 2);
	ck_assert_uint_eq(log_lines("Permission denied"), 1);

	ck_assert_int_eq(chmod(sub, 0755), 0);
	mne_textfile_rejected(t, 7);
	mne_textfile_write(t, true);
	mne_textfile_write(t, true);
	read_expo(path, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnist_eval_rejected_files_total", NULL), 7);
	ck_assert_uint_eq(log_lines("written again"), 1);
	ck_assert_uint_eq(log_lines("eval.textfile: "), 3);
	mne_textfile_free(t);
}
END_TEST

/*
 * A rewrite replaces the file (a new inode under the name, no temporary left
 * behind): a reader that opened the old one still reads a whole exposition.
 */
START_TEST(test_rewrite_replaces_the_file)
{
	struct mne_textfile *t = make("");
	struct mne_pick_result r = result(100, 0.5, 1, 1764090300000000000LL);
	char err[MN_ERRLEN], *old = NULL;
	struct stat before, after;
	struct expo e;
	size_t len;
	int fd;

	mne_textfile_write(t, true);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &before), 0);
	mne_textfile_result(t, &r, 0.1);
	mne_textfile_write(t, true);
	ck_assert_int_eq(stat(path, &after), 0);
	ck_assert(before.st_ino != after.st_ino);
	ck_assert_int_eq(mn_read_fd(fd, "old", READ_MAX, &old, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(close(fd), 0);
	parse(old, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), -1);
	free(old);
	read_expo(path, &e);
	ck_assert_double_eq(value(&e, "mnist_eval_step", NULL), 100);
	ck_assert_uint_eq(mn_test_count_entries(tmpdir), 2); /* the file and the log */
	mne_textfile_free(t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("eval_textfile");
	TCase *tc = mn_test_tcase(s, "eval_textfile", setup, teardown);

	MN_TEST_ADD(tc, test_initial_exposition, test_counters_move_with_results_and_rejections,
	            test_run_label_on_every_sample_escaped, test_stopped_writes_running_zero,
	            test_empty_path_is_off, test_failing_writes_logged_once_then_recover,
	            test_rewrite_replaces_the_file);
	return mn_test_run(s);
}
