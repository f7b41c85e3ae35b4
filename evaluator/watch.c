/* watch.c - see watch.h. */
#include "watch.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "ckptdir.h"
#include "log.h"
#include "util.h"

/* Bound on re-settling while directories appear under us in one go. */
#define SETTLE_ROUNDS 16

enum state { ST_NONE, ST_WAITING, ST_EVENTS, ST_POLL };

struct mne_watch {
	uv_loop_t *loop;
	uv_fs_event_t ev; /* the directory, or its nearest existing parent while waiting */
	/*
	 * Polling (the directory, or for it while waiting); with events, the
	 * check that the path still names the watched directory.
	 */
	uv_timer_t timer;
	enum state state;
	bool ev_active;
	bool events_failed; /* polling because events could not be set up: retried */
	bool closing;
	int open_handles;  /* handles still to be closed before freeing */
	bool said_waiting; /* the "waiting" line is logged once per absence */
	dev_t dev;         /* identity of the directory being watched */
	ino_t ino;
	/*
	 * With events: the directory's modification time at the last tick.
	 * inotify drops events when its queue overflows (and libuv does not
	 * pass IN_Q_OVERFLOW on), so a tick that finds it changed asks for a
	 * look of its own: at most one listing per interval, and only while
	 * the directory changes.
	 */
	struct timespec mtime;
	char dir[PATH_MAX];
	const char *base; /* the name libuv reports for events on dir itself */
	char prefix[MN_CONFIG_NAME_MAX];
	char parent[PATH_MAX]; /* the watched parent while waiting */
	enum mn_watch_mode mode;
	uint64_t interval_ms;
	void (*on_change)(void *arg, int64_t step);
	void *arg;
};

static bool is_dir(const char *path, struct stat *st)
{
	return stat(path, st) == 0 && S_ISDIR(st->st_mode);
}

/* Writes the nearest existing ancestor directory of w->dir into buf. */
static void nearest_parent(const struct mne_watch *w, char *buf, size_t len)
{
	struct stat st;
	size_t n;

	snprintf(buf, len, "%s", w->dir);
	for (;;) {
		char *slash;

		n = strlen(buf);
		while (n > 1 && buf[n - 1] == '/')
			buf[--n] = '\0';
		slash = strrchr(buf, '/');
		if (!slash) {
			snprintf(buf, len, ".");
			return;
		}
		if (slash == buf) {
			buf[1] = '\0';
			return;
		}
		*slash = '\0';
		if (is_dir(buf, &st))
			return;
	}
}

static void stop_all(struct mne_watch *w)
{
	if (w->ev_active) {
		uv_fs_event_stop(&w->ev);
		w->ev_active = false;
	}
	uv_timer_stop(&w->timer);
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status);
static void on_timer(uv_timer_t *h);

static int start_events(struct mne_watch *w, const char *path)
{
	int rc = uv_fs_event_start(&w->ev, on_event, path, 0);

	if (rc == 0)
		w->ev_active = true;
	return rc;
}

static void start_poll(struct mne_watch *w)
{
	uv_timer_start(&w->timer, on_timer, w->interval_ms, w->interval_ms);
}

/*
 * Events are on for the directory whose identity st holds. A symbolic link
 * repointed, or a mount over the path, sends the watched directory no
 * event: the timer checks the path's identity (a stat) every interval.
 */
static void events_on(struct mne_watch *w, const struct stat *st)
{
	w->dev = st->st_dev;
	w->ino = st->st_ino;
	w->mtime = st->st_mtim;
	w->state = ST_EVENTS;
	w->events_failed = false;
	start_poll(w);
	mn_log_fields(
	    MN_LOG_INFO, "watching",
	    (struct mn_log_field[]){MN_F_STR("dir", w->dir), MN_F_STR("method", "events")}, 2);
	w->on_change(w->arg, -1);
}

/* Watches the existing directory; returns false if it vanished meanwhile (settle again). */
static bool enter_watching(struct mne_watch *w)
{
	const char *remote = w->mode == MN_WATCH_AUTO ? mn_fs_remote_name(w->dir) : NULL;
	const char *why = "eval.watch is poll";
	struct stat st;
	int rc;

	w->said_waiting = false;
	w->events_failed = false;
	if (w->mode != MN_WATCH_POLL && !remote) {
		rc = start_events(w, w->dir);
		/* The identity is taken after the watch starts, so a swap cannot slip between. */
		if (rc == UV_ENOENT || rc == UV_ENOTDIR || (rc == 0 && !is_dir(w->dir, &st)))
			return false;
		if (rc == 0) {
			events_on(w, &st);
			return true;
		}
		mn_log(MN_LOG_WARN, "%s: filesystem events unavailable (%s%s); polling instead",
		       w->dir, uv_strerror(rc),
		       rc == UV_ENOSPC ? ": inotify watch limit, see fs.inotify.max_user_watches"
		                       : "");
		why = "events unavailable";
		w->events_failed = true;
	} else if (remote) {
		why = remote;
	}
	if (!is_dir(w->dir, &st))
		return false;
	w->dev = st.st_dev;
	w->ino = st.st_ino;
	w->state = ST_POLL;
	start_poll(w);
	mn_log_fields(MN_LOG_INFO, "watching",
	              (struct mn_log_field[]){
	                  MN_F_STR("dir", w->dir),
	                  MN_F_STR("method", "poll"),
	                  MN_F_INT("interval_ms", (int64_t)w->interval_ms),
	                  MN_F_STR("reason", why),
	              },
	              4);
	w->on_change(w->arg, -1);
	return true;
}

/* Why the directory cannot be looked at (a parent not searchable...), or 0 if it is not there. */
static int unreachable(const struct mne_watch *w)
{
	struct stat st;
	int e = stat(w->dir, &st) < 0 ? errno : 0;

	return e == ENOENT || e == ENOTDIR ? 0 : e;
}

/* Waits for the directory; returns true if it turned out to exist after all. */
static bool enter_waiting(struct mne_watch *w)
{
	char parent[PATH_MAX], again[PATH_MAX];
	struct stat st;

	w->state = ST_WAITING;
	if (!w->said_waiting) {
		int e = unreachable(w);

		mn_log_fields(MN_LOG_INFO, "waiting for the checkpoint directory",
		              (struct mn_log_field[]){MN_F_STR("dir", w->dir),
		                                      MN_F_STR("error", e ? strerror(e) : "")},
		              e ? 2 : 1);
		w->said_waiting = true;
	}
	nearest_parent(w, parent, sizeof(parent));
	if (w->mode == MN_WATCH_POLL || (w->mode == MN_WATCH_AUTO && mn_fs_remote_name(parent)) ||
	    start_events(w, parent) < 0) {
		start_poll(w);
		return false;
	}
	snprintf(w->parent, sizeof(w->parent), "%s", parent);
	/*
	 * The parent's events miss a directory that appears elsewhere: the
	 * target of a link made before it (a run's directory behind a
	 * "current" link). The timer looks for it every interval (stats only).
	 */
	start_poll(w);
	/* Whatever appeared between the look and the watch would go unseen: look again. */
	nearest_parent(w, again, sizeof(again));
	return is_dir(w->dir, &st) || strcmp(again, parent) != 0;
}

/* Waiting with events on a parent: true if the directory or a nearer parent has appeared. */
static bool appeared(const struct mne_watch *w)
{
	char parent[PATH_MAX];
	struct stat st;

	if (is_dir(w->dir, &st))
		return true;
	nearest_parent(w, parent, sizeof(parent));
	return strcmp(parent, w->parent) != 0;
}

/* Works out from scratch what to watch and how. */
static void settle(struct mne_watch *w)
{
	struct stat st;

	for (int round = 0; round < SETTLE_ROUNDS && !w->closing; round++) {
		stop_all(w);
		if (is_dir(w->dir, &st)) {
			if (enter_watching(w))
				return;
			continue;
		}
		if (!enter_waiting(w))
			return;
	}
	/* The tree keeps changing under us: fall back to polling for it. */
	stop_all(w);
	w->state = ST_WAITING;
	start_poll(w);
}

/* True if the path still names the directory we watch. */
/* Whether w->dir still names the directory watched; *st gets its stat if so. */
static bool same_dir_stat(const struct mne_watch *w, struct stat *st)
{
	return is_dir(w->dir, st) && st->st_dev == w->dev && st->st_ino == w->ino;
}

static bool same_dir(const struct mne_watch *w)
{
	struct stat st;

	return same_dir_stat(w, &st);
}

/*
 * True if dir/name no longer exists: the event was a deletion (retention),
 * which never makes anything new to evaluate.
 */
static bool gone(const struct mne_watch *w, const char *name)
{
	char path[PATH_MAX];
	struct stat st;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", w->dir, name) >= sizeof(path))
		return false;
	return lstat(path, &st) != 0 && errno == ENOENT;
}

static void lost_dir(struct mne_watch *w)
{
	int e = unreachable(w);

	/* Not "gone" when it is there but out of reach: the operator must look at permissions. */
	if (e)
		mn_log_fields(MN_LOG_WARN, "checkpoint directory not accessible",
		              (struct mn_log_field[]){MN_F_STR("dir", w->dir),
		                                      MN_F_STR("error", strerror(e))},
		              2);
	else
		mn_log_fields(MN_LOG_WARN, "checkpoint directory gone or replaced",
		              (struct mn_log_field[]){MN_F_STR("dir", w->dir)}, 1);
	settle(w);
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
	struct mne_watch *w = h->data;
	int64_t step;

	if (w->closing)
		return;
	if (status < 0) {
		mn_log(MN_LOG_WARN, "%s: watch error: %s",
		       w->state == ST_EVENTS ? w->dir : w->parent, uv_strerror(status));
		settle(w);
		return;
	}
	if (w->state == ST_WAITING) {
		settle(w);
		return;
	}
	/* Temporaries are dot-files; but the directory itself may have a dot-name. */
	if (name && name[0] == '.' && strcmp(name, w->base) != 0)
		return;
	/*
	 * The directory itself removed or moved (libuv reports it by its base
	 * name). Its identity cannot tell a replacement made at once: ext4 gives
	 * the new directory the freed inode number, while the watch died with the
	 * old one. So watch afresh; a child of the same name costs a re-watch.
	 */
	if (name && strcmp(name, w->base) == 0 && (events & UV_RENAME)) {
		if (same_dir(w))
			settle(w);
		else
			lost_dir(w);
		return;
	}
	if (name && mn_ckptdir_filename_parse(w->prefix, name, &step)) {
		if (!gone(w, name))
			w->on_change(w->arg, step);
		else if (!same_dir(w))
			lost_dir(w);
		return;
	}
	/* Other names: checkpoint.json, or the directory itself being removed or moved. */
	if (!same_dir(w))
		lost_dir(w);
}

/*
 * Polling for want of events: tries them again (the directory made
 * readable again, inotify watches freed), quietly; true if they are on.
 */
static bool retry_events(struct mne_watch *w)
{
	struct stat st;

	if (start_events(w, w->dir) < 0)
		return false;
	if (!is_dir(w->dir, &st) || st.st_dev != w->dev || st.st_ino != w->ino) {
		/* Replaced meanwhile: the next tick's identity check settles afresh. */
		uv_fs_event_stop(&w->ev);
		w->ev_active = false;
		return false;
	}
	uv_timer_stop(&w->timer);
	events_on(w, &st);
	return true;
}

static void on_timer(uv_timer_t *h)
{
	struct mne_watch *w = h->data;

	if (w->closing)
		return;
	if (w->state == ST_EVENTS || w->state == ST_POLL) {
		struct stat st;
		bool changed;

		if (!same_dir_stat(w, &st)) {
			lost_dir(w);
			return;
		}
		changed =
		    st.st_mtim.tv_sec != w->mtime.tv_sec || st.st_mtim.tv_nsec != w->mtime.tv_nsec;
		w->mtime = st.st_mtim;
		if (w->state == ST_POLL && !(w->events_failed && retry_events(w)))
			w->on_change(w->arg, -1);
		else if (w->state == ST_EVENTS && changed)
			w->on_change(w->arg, -1); /* whatever events were lost: a full look */
		return;
	}
	/* Waiting: with events on a parent, settle only when there is something new. */
	if (!w->ev_active || appeared(w))
		settle(w);
}

void mne_watch_recheck(struct mne_watch *w)
{
	if (!w || w->closing || w->state == ST_WAITING || w->state == ST_NONE)
		return;
	if (!same_dir(w))
		lost_dir(w);
}

static void on_first(uv_timer_t *h)
{
	settle(h->data);
}

int mne_watch_start(uv_loop_t *loop, const struct mne_watch_params *p, struct mne_watch **out,
                    char *err, size_t errlen)
{
	struct mne_watch *w;
	int rc;

	*out = NULL;
	if (!p->dir || !p->dir[0] || strlen(p->dir) >= sizeof(w->dir) || !p->prefix ||
	    strlen(p->prefix) >= sizeof(w->prefix) || !p->on_change || p->poll_interval_ms == 0) {
		mn_errf(err, errlen, "mne_watch_start: invalid parameters");
		return -EINVAL;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	w->loop = loop;
	snprintf(w->dir, sizeof(w->dir), "%s", p->dir);
	w->base = strrchr(w->dir, '/') ? strrchr(w->dir, '/') + 1 : w->dir;
	snprintf(w->prefix, sizeof(w->prefix), "%s", p->prefix);
	w->mode = p->mode;
	w->interval_ms = p->poll_interval_ms;
	w->on_change = p->on_change;
	w->arg = p->arg;
	rc = uv_timer_init(loop, &w->timer);
	if (rc < 0) {
		mn_errf(err, errlen, "uv_timer_init: %s", uv_strerror(rc));
		free(w);
		return rc;
	}
	w->timer.data = w;
	w->open_handles = 1;
	rc = uv_fs_event_init(loop, &w->ev);
	if (rc < 0) {
		mn_errf(err, errlen, "uv_fs_event_init: %s", uv_strerror(rc));
		mne_watch_close(w);
		return rc;
	}
	w->ev.data = w;
	w->open_handles = 2;
	/* Settle on the next loop turn, so no callback runs before the caller has *out. */
	uv_timer_start(&w->timer, on_first, 0, 0);
	*out = w;
	return 0;
}

static void on_closed(uv_handle_t *h)
{
	struct mne_watch *w = h->data;

	if (--w->open_handles == 0)
		free(w);
}

void mne_watch_close(struct mne_watch *w)
{
	if (!w || w->closing)
		return;
	w->closing = true;
	stop_all(w);
	uv_close((uv_handle_t *)&w->timer, on_closed);
	if (w->open_handles == 2)
		uv_close((uv_handle_t *)&w->ev, on_closed);
}
