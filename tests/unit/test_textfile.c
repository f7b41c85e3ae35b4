/*
 * test_textfile.c - the trainer's Prometheus textfile (daemon/textfile.c)
 * fed by a real worker training a toy network on a real libuv loop.
 *
 * Every test parses what was written as a text exposition (format 0.0.4: a
 * HELP and a TYPE per family, then its samples), so a file a scraper would
 * reject fails here whatever it holds, and compares the values with the
 * worker's own status, family by family as mnistd(8) lists them. Pausing the
 * worker holds its status still for that. The timer is observed by running
 * the loop until the file changes, with a deadline and no sleeps; failing
 * writes through the process log (log.h), sent to a file for the purpose.
 */
#include "textfile.h"

#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_uv.h"
#include "util.h"
#include "worker.h"

#define START_NS    1764090245123000000LL
#define INTERVAL_MS 100
#define N_EX        40
#define IN_DIM      16
#define OUT         4
#define MAX_FAM     20
#define MAX_SMP     48
#define NAME_LEN    128
#define NBUCKETS    11 /* checkpoint write duration bounds besides +Inf */
#define READ_MAX    (1 << 20)

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

/* The families of mnistd(8), with their types. */
static const struct family families[] = {
    {"mnistd_running", "gauge"},
    {"mnistd_process_start_time_seconds", "gauge"},
    {"mnistd_global_step", "gauge"},
    {"mnistd_max_steps", "gauge"},
    {"mnistd_loss", "gauge"},
    {"mnistd_learning_rate", "gauge"},
    {"mnistd_steps_per_second", "gauge"},
    {"mnistd_paused", "gauge"},
    {"mnistd_checkpoints_published_total", "counter"},
    {"mnistd_checkpoint_failures_total", "counter"},
    {"mnistd_checkpoint_consecutive_failures", "gauge"},
    {"mnistd_checkpoint_write_duration_seconds", "histogram"},
    {"mnistd_last_checkpoint_step", "gauge"},
    {"mnistd_last_checkpoint_timestamp_seconds", "gauge"},
};
#define NFAMILIES (sizeof(families) / sizeof(families[0]))

static uint8_t images[N_EX * IN_DIM];
static uint8_t labels[N_EX];
static char tmpdir[MN_TEST_DIRLEN], promdir[MN_TEST_DIRLEN + 8], logpath[MN_TEST_DIRLEN + 16];
static uv_loop_t loop;
static struct mn_config cfg;
static struct mnd_worker *worker;
static struct mnd_textfile *textfile;

static void on_done(void *arg, int status)
{
	(void)arg;
	(void)status;
}

static void on_reply(void *arg, const struct mnd_worker_reply *r)
{
	ck_assert_int_eq(r->status, 0);
	(*(int *)arg)++;
}

static bool counted(void *arg)
{
	return *(int *)arg > 0;
}

static void setup(void)
{
	struct mn_trainer_params p = {.batch_size = 10, .seed = 3, .init_stddev = 0.1f};
	struct mn_view v = {.images = images, .labels = labels, .count = N_EX, .dim = IN_DIM};
	struct mn_trainer *t = NULL;
	char err[MN_ERRLEN] = "";

	mn_test_fill_classes(images, labels, N_EX, IN_DIM, OUT);
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(promdir, sizeof(promdir), "%s/prom", tmpdir);
	ck_assert_int_eq(mkdir(promdir, 0755), 0);
	snprintf(logpath, sizeof(logpath), "%s/mnistd.log", tmpdir);
	ck_assert_msg(mn_log_open(logpath, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	mn_config_defaults(&cfg);
	snprintf(cfg.checkpoint.dir, sizeof(cfg.checkpoint.dir), "%s", tmpdir);
	cfg.checkpoint.every_steps = 1000000;
	cfg.train.max_steps = 1000000000;
	cfg.train.batch_size = 10;
	snprintf(cfg.metrics.textfile, sizeof(cfg.metrics.textfile), "%s/mnistd.prom", promdir);
	cfg.metrics.interval_ms = INTERVAL_MS;
	p.arch = mn_test_arch(IN_DIM, 1, (const size_t[]){8}, OUT);
	ck_assert_msg(mn_trainer_new(&p, &v, &t, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(mnd_worker_start(&loop, t, &cfg, N_EX, NULL, NULL, on_done, NULL, &worker,
	                               err, sizeof(err)) == 0,
	              "%s", err);
	textfile = NULL;
}

static void teardown(void)
{
	/* The textfile never touches the worker once closed, so the order does not matter. */
	mnd_textfile_close(textfile);
	mnd_worker_close(worker);
	/* Forget them, so that LeakSanitizer sees anything they failed to free. */
	textfile = NULL;
	worker = NULL;
	/* Both free through the loop: afterwards nothing may be left on it. */
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_log_close();
	mn_test_rmtree(tmpdir);
}

static void start(void)
{
	char err[MN_ERRLEN] = "";

	ck_assert_msg(
	    mnd_textfile_start(&loop, worker, &cfg, START_NS, &textfile, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_ptr_nonnull(textfile);
}

static bool trained(void *arg)
{
	struct mnd_worker_status st;

	(void)arg;
	mnd_worker_get_status(worker, &st);
	return st.step >= 5;
}

/* Pauses the worker after a few steps, so that its status, and so the file, holds still. */
static void pause_worker(void)
{
	int replies = 0;

	mn_test_uv_run_until(&loop, trained, NULL, 10000, "training steps");
	ck_assert_int_eq(mnd_worker_set_paused(worker, true, on_reply, &replies), 0);
	mn_test_uv_run_until(&loop, counted, &replies, 10000, "pause");
}

/* Exactly the families of the man page; run on every sample or on none. */
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
	/* Histogram: its bounds and +Inf, then _sum and _count; the rest one sample each. */
	ck_assert_uint_eq(e->nsmp, NFAMILIES - 1 + NBUCKETS + 3);
	for (size_t i = 0; i < e->nsmp; i++) {
		ck_assert_msg(e->smp[i].has_run == (run != NULL), "%s: run label %s",
		              e->smp[i].name, run ? "missing" : "present");
		if (run)
			ck_assert_str_eq(e->smp[i].run, run);
	}
}

/* Lines of the log that contain needle. */
static size_t log_lines(const char *needle)
{
	char err[MN_ERRLEN], *buf = NULL;
	size_t len, n = 0;

	ck_assert_msg(mn_read_file(logpath, READ_MAX, &buf, &len, err, sizeof(err)) == 0, "%s",
	              err);
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		n += strstr(line, needle) != NULL;
	free(buf);
	return n;
}

/*
 * The file is written at the start, before the loop turns, and every family
 * holds what the worker's status says: a paused run with one checkpoint
 * saved.
 */
START_TEST(test_values_are_the_worker_status)
{
	struct mnd_worker_status st;
	const struct mn_prom_hist *h = &st.ckpt_write;
	uint64_t cumulative = 0;
	struct expo e;
	int saved = 0;

	pause_worker();
	ck_assert_int_eq(mnd_worker_save(worker, on_reply, &saved), 0);
	mn_test_uv_run_until(&loop, counted, &saved, 10000, "save");
	mnd_worker_get_status(worker, &st);
	start();
	read_expo(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 1);
	ck_assert_double_eq(value(&e, "mnistd_process_start_time_seconds", NULL),
	                    (double)START_NS / 1e9);
	ck_assert_int_gt(st.step, 0);
	ck_assert_double_eq(value(&e, "mnistd_global_step", NULL), (double)st.step);
	ck_assert_double_eq(value(&e, "mnistd_max_steps", NULL), (double)cfg.train.max_steps);
	ck_assert(isfinite(st.loss));
	ck_assert_double_eq(value(&e, "mnistd_loss", NULL), st.loss);
	ck_assert_double_eq(value(&e, "mnistd_learning_rate", NULL), st.learning_rate);
	ck_assert_double_eq(value(&e, "mnistd_steps_per_second", NULL), st.steps_per_sec);
	ck_assert_double_eq(value(&e, "mnistd_paused", NULL), 1);
	ck_assert_int_ge(st.ckpt_published, 1);
	ck_assert_double_eq(value(&e, "mnistd_checkpoints_published_total", NULL),
	                    (double)st.ckpt_published);
	ck_assert_double_eq(value(&e, "mnistd_checkpoint_failures_total", NULL), 0);
	ck_assert_double_eq(value(&e, "mnistd_checkpoint_consecutive_failures", NULL), 0);
	ck_assert_int_eq(st.latest_step, st.step); /* the save was of the paused step */
	ck_assert_double_eq(value(&e, "mnistd_last_checkpoint_step", NULL), (double)st.latest_step);
	ck_assert_int_gt(st.latest_ns, 0);
	ck_assert_double_eq(value(&e, "mnistd_last_checkpoint_timestamp_seconds", NULL),
	                    (double)st.latest_ns / 1e9);
	/* The write durations: bucket by bucket in the order of the bounds, cumulative. */
	for (size_t i = 0, b = 0; i < e.nsmp; i++) {
		const struct sample *s = &e.smp[i];

		if (strcmp(s->name, "mnistd_checkpoint_write_duration_seconds_bucket") != 0)
			continue;
		if (b < h->nbounds) {
			ck_assert_double_eq(strtod(s->le, NULL), h->bounds[b]);
			cumulative += h->counts[b++];
		} else {
			ck_assert_str_eq(s->le, "+Inf");
			cumulative = h->count;
		}
		ck_assert_double_eq(s->value, (double)cumulative);
	}
	ck_assert_double_eq(value(&e, "mnistd_checkpoint_write_duration_seconds_count", NULL),
	                    (double)st.ckpt_published);
	ck_assert_double_eq(value(&e, "mnistd_checkpoint_write_duration_seconds_sum", NULL),
	                    h->sum);
}
END_TEST

/* metrics.run labels every sample, escaped; a clean exit's write says running 0. */
START_TEST(test_run_label_and_stopped)
{
	static const char run[] = "ru\"n\\1\nb";
	char err[MN_ERRLEN], *raw = NULL;
	struct expo e;
	size_t len;

	snprintf(cfg.metrics.run, sizeof(cfg.metrics.run), "%s", run);
	start();
	read_expo(cfg.metrics.textfile, &e);
	check_shape(&e, run);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 1);
	mnd_textfile_write(textfile, false);
	ck_assert_int_eq(mn_read_file(cfg.metrics.textfile, READ_MAX, &raw, &len, err, sizeof(err)),
	                 0);
	ck_assert_ptr_nonnull(strstr(raw, "\nmnistd_running{run=\"ru\\\"n\\\\1\\nb\"} 0\n"));
	parse(raw, &e);
	free(raw);
	check_shape(&e, run);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 0);
}
END_TEST

/* What changed() compares the file with: its last content and inode, and how often it changed. */
static struct {
	char *text;
	ino_t ino;
	int changes;
} last;

static bool changed(void *arg)
{
	char err[MN_ERRLEN], *buf = NULL;
	int want = *(int *)arg;
	struct stat st;
	size_t len;

	/* The file is never missing in between: rename replaces it in one step. */
	ck_assert_int_eq(stat(cfg.metrics.textfile, &st), 0);
	ck_assert_int_eq(mn_read_file(cfg.metrics.textfile, READ_MAX, &buf, &len, err, sizeof(err)),
	                 0);
	if (strcmp(buf, last.text) != 0) {
		/* A new content comes only with a new file. */
		ck_assert(st.st_ino != last.ino);
		free(last.text);
		last.text = buf;
		last.ino = st.st_ino;
		last.changes++;
	} else {
		free(buf);
	}
	return last.changes >= want;
}

/*
 * While training goes on, the timer rewrites the file with the progress:
 * the n-th new content comes no sooner than n metrics.interval_ms after the
 * start (libuv timers never fire early, so this is no race).
 */
START_TEST(test_timer_rewrites_every_interval)
{
	char err[MN_ERRLEN];
	struct stat st;
	struct expo e, first;
	uint64_t t0;
	size_t len;

	uv_update_time(&loop);
	t0 = uv_now(&loop);
	start();
	ck_assert_int_eq(stat(cfg.metrics.textfile, &st), 0);
	ck_assert_int_eq(
	    mn_read_file(cfg.metrics.textfile, READ_MAX, &last.text, &len, err, sizeof(err)), 0);
	last.ino = st.st_ino;
	last.changes = 0;
	read_expo(cfg.metrics.textfile, &first);
	for (int n = 1; n <= 2; n++) {
		mn_test_uv_run_until(&loop, changed, &n, 10000, "textfile rewrite");
		ck_assert_uint_ge(uv_now(&loop) - t0, (uint64_t)(n * INTERVAL_MS));
	}
	free(last.text);
	read_expo(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_gt(value(&e, "mnistd_global_step", NULL),
	                    value(&first, "mnistd_global_step", NULL));
	ck_assert_double_eq(value(&e, "mnistd_paused", NULL), 0);
}
END_TEST

/* metrics.textfile "" is off: no writer, no timer, and every function takes the NULL. */
START_TEST(test_empty_path_is_off)
{
	char err[MN_ERRLEN] = "";

	cfg.metrics.textfile[0] = '\0';
	textfile = (struct mnd_textfile *)&textfile; /* must be overwritten */
	ck_assert_int_eq(
	    mnd_textfile_start(&loop, worker, &cfg, START_NS, &textfile, err, sizeof(err)), 0);
	ck_assert_ptr_null(textfile);
	mnd_textfile_write(NULL, true);
	mnd_textfile_write(NULL, false);
	mnd_textfile_close(NULL);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 0);
}
END_TEST

static bool exists(void *arg)
{
	return access(arg, F_OK) == 0;
}

/*
 * Writes into a missing directory fail without harm, logged once; once the directory appears the
 * timer's next write succeeds, which is logged once too.
 */
START_TEST(test_missing_directory_logged_once_then_recovers)
{
	char sub[MN_TEST_DIRLEN + 16];
	struct expo e;

	snprintf(sub, sizeof(sub), "%s/later", tmpdir);
	snprintf(cfg.metrics.textfile, sizeof(cfg.metrics.textfile), "%s/mnistd.prom", sub);
	start();
	mnd_textfile_write(textfile, true);
	ck_assert_uint_eq(log_lines("metrics.textfile: "), 1);
	ck_assert_uint_eq(log_lines("No such file or directory"), 1);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	mn_test_uv_run_until(&loop, exists, cfg.metrics.textfile, 10000, "textfile after mkdir");
	read_expo(cfg.metrics.textfile, &e);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 1);
	ck_assert_uint_eq(log_lines("written again"), 1);
	ck_assert_uint_eq(log_lines("metrics.textfile: "), 2);
	/* Successes are logged only after failures. */
	mnd_textfile_write(textfile, true);
	ck_assert_uint_eq(log_lines("metrics.textfile: "), 2);
}
END_TEST

/*
 * A rewrite replaces the file (a new inode, no temporary left behind): a
 * reader that opened the old one still reads a whole exposition.
 */
START_TEST(test_rewrite_replaces_the_file)
{
	char err[MN_ERRLEN], *old = NULL;
	struct stat before, after;
	struct expo e;
	size_t len;
	int fd;

	start();
	fd = open(cfg.metrics.textfile, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &before), 0);
	mnd_textfile_write(textfile, false);
	ck_assert_int_eq(stat(cfg.metrics.textfile, &after), 0);
	ck_assert(before.st_ino != after.st_ino);
	ck_assert_int_eq(mn_read_fd(fd, "old", READ_MAX, &old, &len, err, sizeof(err)), 0);
	ck_assert_int_eq(close(fd), 0);
	parse(old, &e);
	free(old);
	check_shape(&e, NULL);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 1);
	read_expo(cfg.metrics.textfile, &e);
	ck_assert_double_eq(value(&e, "mnistd_running", NULL), 0);
	ck_assert_uint_eq(mn_test_count_entries(promdir), 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("textfile");
	TCase *tc = mn_test_tcase(s, "textfile", setup, teardown);

	MN_TEST_ADD(tc, test_values_are_the_worker_status, test_run_label_and_stopped,
	            test_timer_rewrites_every_interval, test_empty_path_is_off,
	            test_missing_directory_logged_once_then_recovers,
	            test_rewrite_replaces_the_file);
	return mn_test_run(s);
}
