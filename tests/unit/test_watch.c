/*
 * test_watch.c - the evaluator's watcher on a real libuv loop and a real
 * directory: what each kind of change tells its owner.
 *
 * No sleeps: inotify delivers a directory's events in order, so once the
 * notification for a later publish has arrived, any notification an earlier
 * change would have caused has arrived too.
 */
#include <check.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mn_test.h"
#include "mn_test_uv.h"
#include "watch.h"

#define PREFIX   "model.ckpt"
#define MAX_SEEN 1024

static char tmpdir[PATH_MAX];
static uv_loop_t loop;
static int64_t seen[MAX_SEEN];
static size_t nseen, want;

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	nseen = 0;
}

static void teardown(void)
{
	/* Closing handles needs loop turns; then the loop must be empty. */
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_test_rmtree(tmpdir);
}

static void record(void *arg, int64_t step)
{
	(void)arg;
	ck_assert_uint_lt(nseen, MAX_SEEN);
	seen[nseen++] = step;
}

static bool have_wanted(void *arg)
{
	(void)arg;
	return nseen >= want;
}

/* Runs the loop until n notifications have arrived, failing after 10 s. */
static void run_until(size_t n)
{
	want = n;
	mn_test_uv_run_until(&loop, have_wanted, NULL, 10000, "notifications");
}

/* Publishes name into dir the way every writer must: a dot-file, then a rename. */
static void publish_in(const char *dir, const char *name)
{
	char tmp[PATH_MAX + 64], final[PATH_MAX + 64];

	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	snprintf(final, sizeof(final), "%s/%s", dir, name);
	mn_test_write_file(tmp, "x", 1);
	ck_assert_int_eq(rename(tmp, final), 0);
}

static void publish(const char *name)
{
	publish_in(tmpdir, name);
}

static struct mne_watch *start_in(const char *dir, enum mn_watch_mode mode, uint64_t poll_ms)
{
	struct mne_watch_params p = {.dir = dir,
	                             .prefix = PREFIX,
	                             .mode = mode,
	                             .poll_interval_ms = poll_ms,
	                             .on_change = record};
	struct mne_watch *w = NULL;
	char err[256] = "";

	ck_assert_msg(mne_watch_start(&loop, &p, &w, err, sizeof(err)) == 0, "%s", err);
	return w;
}

static struct mne_watch *start(enum mn_watch_mode mode, uint64_t poll_ms)
{
	return start_in(tmpdir, mode, poll_ms);
}

static size_t wanted_step_at;
static int64_t wanted_step;

static bool have_step(void *arg)
{
	(void)arg;
	for (size_t i = wanted_step_at; i < nseen; i++)
		if (seen[i] == wanted_step)
			return true;
	return false;
}

/* Runs the loop until a notification after the first `from` names step, failing after 10 s. */
static void run_until_step(size_t from, int64_t step)
{
	wanted_step_at = from;
	wanted_step = step;
	mn_test_uv_run_until(&loop, have_step, NULL, 10000, "a notification naming the step");
}

/*
 * With events, a publish names its step; temporaries, other names and
 * deletions (retention) notify nothing.
 */
START_TEST(test_events_name_the_step_and_deletions_are_silent)
{
	/* No tick during the test: a tick's look (-1) would come between the steps. */
	struct mne_watch *w = start(MN_WATCH_EVENTS, 600000);
	char path[PATH_MAX + 64];

	run_until(1);
	ck_assert_int_eq(seen[0], -1); /* the first look, for what is already there */
	publish(PREFIX "-500.safetensors");
	run_until(2);
	ck_assert_int_eq(seen[1], 500);

	snprintf(path, sizeof(path), "%s/" PREFIX "-500.safetensors", tmpdir);
	ck_assert_int_eq(unlink(path), 0);
	publish("checkpoint.json");
	publish("other-700.safetensors");
	publish(PREFIX "-700.safetensors");
	run_until(3);
	ck_assert_int_eq(seen[2], 700);

	/* A file replaced under its name is a change too. */
	publish(PREFIX "-700.safetensors");
	publish(PREFIX "-900.safetensors");
	run_until(5);
	ck_assert_int_eq(seen[3], 700);
	ck_assert_int_eq(seen[4], 900);
	ck_assert_uint_eq(nseen, 5);
	mne_watch_close(w);
}
END_TEST

/* Polling cannot tell what changed: every notification asks for a listing. */
START_TEST(test_poll_names_no_step)
{
	struct mne_watch *w = start(MN_WATCH_POLL, 5);

	publish(PREFIX "-500.safetensors");
	run_until(3);
	for (size_t i = 0; i < nseen; i++)
		ck_assert_int_eq(seen[i], -1);
	mne_watch_close(w);
}
END_TEST

/*
 * checkpoint.dir a symbolic link, repointed atomically to another
 * directory (a deployment's "current" link): the old directory gets no
 * event, yet the watch must follow the path to the new one.
 */
START_TEST(test_symlink_repointed_is_followed)
{
	char a[PATH_MAX + 8], b[PATH_MAX + 8], link[PATH_MAX + 8], tmp[PATH_MAX + 16];
	struct mne_watch *w;
	size_t before;

	snprintf(a, sizeof(a), "%s/a", tmpdir);
	snprintf(b, sizeof(b), "%s/b", tmpdir);
	snprintf(link, sizeof(link), "%s/ckpt", tmpdir);
	snprintf(tmp, sizeof(tmp), "%s/.ckpt.new", tmpdir);
	ck_assert_int_eq(mkdir(a, 0755), 0);
	ck_assert_int_eq(mkdir(b, 0755), 0);
	ck_assert_int_eq(symlink("a", link), 0);
	w = start_in(link, MN_WATCH_EVENTS, 20);
	run_until(1);
	publish_in(a, PREFIX "-100.safetensors");
	run_until_step(1, 100);
	ck_assert_int_eq(symlink("b", tmp), 0);
	ck_assert_int_eq(rename(tmp, link), 0);
	before = nseen;
	/* The watch moves to b (a look, -1), then b's publishes name their steps. */
	run_until_step(before, -1);
	publish_in(b, PREFIX "-200.safetensors");
	run_until_step(before, 200);
	mne_watch_close(w);
}
END_TEST

/*
 * Events unavailable for a while (the directory unreadable: inotify needs
 * read access; or the inotify watch limit reached): polling meanwhile, and
 * events again once they can be had, not polling (a listing per interval)
 * for the rest of the process's life.
 */
START_TEST(test_events_come_back_after_polling)
{
	struct mne_watch *w;
	int64_t step = 0;

	ck_assert_int_eq(chmod(tmpdir, 0), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	w = start(MN_WATCH_EVENTS, 50);
	run_until(2); /* polling: two looks */
	ck_assert_int_eq(seen[1], -1);
	ck_assert_int_eq(chmod(tmpdir, 0755), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	/* Only events name a step: publish until one does (polls say -1 meanwhile). */
	do {
		char name[64];

		ck_assert_msg(++step <= 40, "still polling 40 publishes after events were back");
		snprintf(name, sizeof(name), PREFIX "-%lld.safetensors", (long long)step);
		publish(name);
		run_until(nseen + 1);
	} while (seen[nseen - 1] == -1);
	ck_assert_int_eq(seen[nseen - 1], step);
	mne_watch_close(w);
}
END_TEST

static bool log_has(void *arg)
{
	const char **w = arg;

	return mn_test_count_lines(w[0], w[1]) > 0;
}

/* Runs the loop until the log file has a line containing needle, failing after 10 s. */
static void run_until_logged(const char *log, const char *needle)
{
	const char *w[2] = {log, needle};

	mn_test_uv_run_until(&loop, log_has, w, 10000, needle);
}

/*
 * A parent made unsearchable: the directory is neither gone nor replaced,
 * and the log says what it is, so that an operator looks at permissions
 * and not for a deleted directory. Reachable again, it is watched again.
 */
START_TEST(test_unreachable_directory_is_said_as_such)
{
	char sub[PATH_MAX + 8], log[PATH_MAX + 16], err[256];
	struct mne_watch *w;

	snprintf(sub, sizeof(sub), "%s/ckpt", tmpdir);
	snprintf(log, sizeof(log), "%s.log", tmpdir);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	w = start_in(sub, MN_WATCH_EVENTS, 20);
	run_until(1);
	ck_assert_int_eq(chmod(tmpdir, 0), 0);
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, false);
	run_until_logged(log, "checkpoint directory not accessible");
	mn_test_caps(1u << CAP_DAC_OVERRIDE | 1u << CAP_DAC_READ_SEARCH, true);
	ck_assert_int_eq(chmod(tmpdir, 0755), 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "gone or replaced"), 0);
	ck_assert_uint_eq(mn_test_count_lines(log, "Permission denied"), 2);
	run_until(nseen + 1); /* watched again: a look */
	mne_watch_close(w);
	mn_log_close();
	unlink(log);
}
END_TEST

/*
 * checkpoint.dir a link made before its target (the run's directory, made
 * when the run starts, elsewhere): making the target sends the link's own
 * directory no event, yet the directory has appeared.
 */
START_TEST(test_dangling_link_target_made_is_watched)
{
	char runs[PATH_MAX + 8], target[PATH_MAX + 16], link[PATH_MAX + 8], log[PATH_MAX + 16];
	char err[256];
	struct mne_watch *w;

	snprintf(log, sizeof(log), "%s.log", tmpdir);
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	snprintf(runs, sizeof(runs), "%s/runs", tmpdir);
	snprintf(target, sizeof(target), "%s/runs/r1", tmpdir);
	snprintf(link, sizeof(link), "%s/current", tmpdir);
	ck_assert_int_eq(mkdir(runs, 0755), 0);
	ck_assert_int_eq(symlink("runs/r1", link), 0);
	w = start_in(link, MN_WATCH_EVENTS, 20);
	run_until_logged(log, "waiting for the checkpoint directory");
	ck_assert_int_eq(mkdir(target, 0755), 0);
	run_until(1);
	ck_assert_int_eq(seen[0], -1);
	publish_in(target, PREFIX "-100.safetensors");
	run_until_step(1, 100);
	mne_watch_close(w);
	mn_log_close();
	unlink(log);
}
END_TEST

/*
 * inotify drops events once its queue holds fs.inotify.max_queued_events,
 * and libuv does not pass the overflow on: a publish whose events were
 * lost must still be looked for, at the next tick, since the directory
 * changed. The loop is not turned while the queue fills, as when the
 * evaluator is busy and a burst arrives.
 */
START_TEST(test_lost_events_are_made_up_by_a_look)
{
	FILE *f = fopen("/proc/sys/fs/inotify/max_queued_events", "r");
	long limit = 0;
	struct mne_watch *w;
	size_t before;

	if (!f || fscanf(f, "%ld", &limit) != 1 || limit <= 0 || limit > 200000) {
		if (f)
			fclose(f);
		fprintf(stderr, "skipped: fs.inotify.max_queued_events unreadable or too large\n");
		return;
	}
	fclose(f);
	w = start(MN_WATCH_EVENTS, 50);
	run_until(1);
	/* A creation and a deletion each: twice what the queue holds, all ignored names. */
	for (long i = 0; i < limit + 64; i++) {
		char path[PATH_MAX + 64];

		snprintf(path, sizeof(path), "%s/.n%ld", tmpdir, i);
		mn_test_write_file(path, "", 0);
		ck_assert_int_eq(unlink(path), 0);
	}
	publish(PREFIX "-500.safetensors");
	before = nseen;
	run_until(before + 1);
	/* Not the event (it was dropped): the tick's look. */
	ck_assert_int_eq(seen[before], -1);
	mne_watch_close(w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("watch");
	TCase *tc = mn_test_tcase(s, "watch", setup, teardown);

	MN_TEST_ADD(tc, test_events_name_the_step_and_deletions_are_silent, test_poll_names_no_step,
	            test_symlink_repointed_is_followed, test_events_come_back_after_polling,
	            test_unreachable_directory_is_said_as_such,
	            test_dangling_link_target_made_is_watched,
	            test_lost_events_are_made_up_by_a_look);
	return mn_test_run(s);
}
