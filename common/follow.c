/* follow.c - see follow.h. */
#include "follow.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Bytes read per loop turn: the rest waits for the next turn, so the loop stays responsive. */
#define READ_BUDGET (1u << 20)
#define CHUNK       65536

struct mn_follow {
	uv_loop_t *loop;
	uv_fs_event_t ev; /* the file's directory */
	uv_timer_t poll;  /* the periodic check, with or without events */
	uv_timer_t soon;  /* the first check, and continuing a long read */
	int open_handles;
	bool closing;
	bool ev_active;
	dev_t dir_dev; /* identity of the watched directory */
	ino_t dir_ino;
	int fd; /* the file being read, -1 while there is none */
	dev_t dev;
	ino_t ino;
	off_t off;      /* next byte to read from fd */
	bool had_file;  /* a file was open before: the next one is a replacement */
	bool skipping;  /* inside a line longer than max_line */
	bool said_type; /* the "not a regular file" warning is logged once per episode */
	bool said_open; /* so is "cannot open" (see cannot_open) */
	char *line;     /* the partial line, max_line + 1 bytes */
	size_t len;
	size_t max_line;
	enum mn_watch_mode mode;
	uint64_t interval_ms;
	char path[PATH_MAX];
	char dir[PATH_MAX];
	const char *base;    /* the file's name in dir */
	const char *dirbase; /* dir's own name, as events on dir itself report it */
	void (*on_line)(const char *line, size_t len, void *arg);
	void (*on_reset)(const char *why, void *arg);
	void *arg;
};

static void on_event(uv_fs_event_t *h, const char *name, int events, int status);

/* Starts the directory watch when events are wanted and possible; keeps it while it is valid. */
static void ensure_events(struct mn_follow *f)
{
	struct stat st;

	if (f->mode == MN_WATCH_POLL)
		return;
	if (f->ev_active) {
		if (stat(f->dir, &st) == 0 && st.st_dev == f->dir_dev && st.st_ino == f->dir_ino)
			return;
		/* The directory went away or was replaced: the watch is on the old one. */
		uv_fs_event_stop(&f->ev);
		f->ev_active = false;
	}
	if (stat(f->dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	if (f->mode == MN_WATCH_AUTO && mn_fs_remote_name(f->dir))
		return;
	if (uv_fs_event_start(&f->ev, on_event, f->dir, 0) < 0)
		return;
	/* Taken after the watch starts, so a swap cannot slip in between. */
	if (stat(f->dir, &st) < 0) {
		uv_fs_event_stop(&f->ev);
		return;
	}
	f->ev_active = true;
	f->dir_dev = st.st_dev;
	f->dir_ino = st.st_ino;
}

static void drop_partial(struct mn_follow *f)
{
	f->len = 0;
	f->skipping = false;
}

/* Splits bytes into lines; stops early if a callback closed the follower. */
static void feed(struct mn_follow *f, const char *p, size_t n)
{
	while (n > 0 && !f->closing) {
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) : n;

		if (!f->skipping && f->len + take > f->max_line) {
			mn_log(MN_LOG_WARN, "%s: skipping a line longer than %zu bytes", f->path,
			       f->max_line);
			f->skipping = true;
			f->len = 0;
		}
		if (!f->skipping) {
			memcpy(f->line + f->len, p, take);
			f->len += take;
		}
		if (!nl)
			return;
		if (!f->skipping) {
			size_t len = f->len;

			f->line[len] = '\0';
			f->len = 0;
			f->on_line(f->line, len, f->arg);
		}
		f->len = 0;
		f->skipping = false;
		p = nl + 1;
		n -= take + 1;
	}
}

/* Reads what fd has from f->off on. Returns true if the budget ran out (more may be there). */
static bool read_some(struct mn_follow *f)
{
	char buf[CHUNK];
	size_t total = 0;

	while (!f->closing && total < READ_BUDGET) {
		ssize_t n = pread(f->fd, buf, sizeof(buf), f->off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			mn_log(MN_LOG_WARN, "%s: cannot read: %s", f->path, strerror(errno));
			return false;
		}
		if (n == 0)
			return false;
		f->off += n;
		total += (size_t)n;
		feed(f, buf, (size_t)n);
	}
	return !f->closing;
}

static void close_file(struct mn_follow *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	drop_partial(f);
}

static void reset(struct mn_follow *f, const char *why)
{
	mn_log(MN_LOG_INFO, "%s %s; reading it from the start", f->path, why);
	if (f->on_reset)
		f->on_reset(why, f->arg);
}

/*
 * The file cannot be opened (e is the errno): not there yet is no news;
 * anything else (not readable, its directory not searchable) is said once
 * per episode, since it is checked every poll interval for weeks.
 */
static void cannot_open(struct mn_follow *f, int e)
{
	if (e != ENOENT && !f->said_open)
		mn_log(MN_LOG_WARN, "%s: cannot open: %s; waiting until it can be", f->path,
		       strerror(e));
	f->said_open = e != ENOENT;
}

/* Opens the file under the name if it is a regular file. */
static void open_file(struct mn_follow *f)
{
	struct stat st;
	int fd;

	if (stat(f->path, &st) < 0) {
		cannot_open(f, errno);
		return;
	}
	if (!S_ISREG(st.st_mode))
		goto not_regular;
	/* O_NONBLOCK: if a FIFO slips in between stat and open, opening it must not hang. */
	fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		cannot_open(f, errno);
		return;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		goto not_regular;
	}
	f->said_type = false;
	f->said_open = false;
	f->fd = fd;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->off = 0;
	drop_partial(f);
	if (f->had_file)
		reset(f, "was replaced");
	f->had_file = true;
	return;
not_regular:
	if (!f->said_type)
		mn_log(MN_LOG_WARN, "%s: not a regular file; waiting for one", f->path);
	f->said_type = true;
}

static void on_timer(uv_timer_t *h);

static void schedule_more(struct mn_follow *f)
{
	if (!f->closing && !uv_is_active((uv_handle_t *)&f->soon))
		uv_timer_start(&f->soon, on_timer, 0, 0);
}

void mn_follow_check(struct mn_follow *f)
{
	struct stat st, fst;
	bool same;

	if (!f || f->closing)
		return;
	ensure_events(f);
	if (f->fd >= 0) {
		/*
		 * A name that cannot be looked at for another reason than ENOENT
		 * (its directory unsearchable for a moment) still names the file
		 * open: it is not replaced, nor read again from the start.
		 */
		if (stat(f->path, &st) == 0)
			same = st.st_dev == f->dev && st.st_ino == f->ino;
		else
			same = errno != ENOENT && errno != ENOTDIR;
		/*
		 * A partial line is read again from its start, not continued: its
		 * writer may have cut it off and written the next line in its place
		 * (jsonl.c after a short write), and continuing would glue that
		 * line's tail to the old head, a line that can parse and be wrong.
		 */
		if (!f->skipping && f->len > 0) {
			f->off -= (off_t)f->len;
			f->len = 0;
		}
		if (fstat(f->fd, &fst) == 0 && fst.st_size < f->off) {
			f->off = 0;
			drop_partial(f);
			reset(f, "was truncated");
			if (f->closing)
				return;
		}
		/* Lines written before a rename or removal still count: finish the old file first.
		 */
		if (read_some(f)) {
			schedule_more(f);
			return;
		}
		if (f->closing || same)
			return;
		close_file(f);
	}
	open_file(f);
	if (f->fd >= 0 && !f->closing && read_some(f))
		schedule_more(f);
}

int mn_follow_uses_events(const struct mn_follow *f)
{
	return f && f->ev_active;
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
	struct mn_follow *f = h->data;

	(void)events;
	if (f->closing)
		return;
	if (status < 0) {
		mn_log(MN_LOG_WARN, "%s: watch error: %s; polling until it can be watched again",
		       f->dir, uv_strerror(status));
		uv_fs_event_stop(&f->ev);
		f->ev_active = false;
		return;
	}
	if (!name || strcmp(name, f->base) == 0 || strcmp(name, f->dirbase) == 0)
		mn_follow_check(f);
}

static void on_timer(uv_timer_t *h)
{
	mn_follow_check(h->data);
}

static void on_closed(uv_handle_t *h)
{
	struct mn_follow *f = h->data;

	if (--f->open_handles == 0) {
		free(f->line);
		free(f);
	}
}

/* Splits p->path into dir and base; false if it names no file. */
static bool split_path(struct mn_follow *f, const char *path)
{
	char *slash;

	if (!path || !path[0] || strlen(path) >= sizeof(f->path) || path[strlen(path) - 1] == '/')
		return false;
	snprintf(f->path, sizeof(f->path), "%s", path);
	slash = strrchr(f->path, '/');
	if (!slash) {
		snprintf(f->dir, sizeof(f->dir), ".");
		f->base = f->path;
	} else if (slash == f->path) {
		snprintf(f->dir, sizeof(f->dir), "/");
		f->base = slash + 1;
	} else {
		snprintf(f->dir, sizeof(f->dir), "%.*s", (int)(slash - f->path), f->path);
		f->base = slash + 1;
	}
	f->dirbase = strrchr(f->dir, '/') ? strrchr(f->dir, '/') + 1 : f->dir;
	return strcmp(f->base, ".") != 0 && strcmp(f->base, "..") != 0;
}

static int init_handles(uv_loop_t *loop, struct mn_follow *f, char *err, size_t errlen)
{
	uv_handle_t *h[3] = {(uv_handle_t *)&f->poll, (uv_handle_t *)&f->soon,
	                     (uv_handle_t *)&f->ev};
	int rc = 0;

	for (int i = 0; i < 3 && rc == 0; i++) {
		rc = i < 2 ? uv_timer_init(loop, (uv_timer_t *)h[i])
		           : uv_fs_event_init(loop, (uv_fs_event_t *)h[i]);
		if (rc < 0) {
			mn_errf(err, errlen, "%s: %s", i < 2 ? "uv_timer_init" : "uv_fs_event_init",
			        uv_strerror(rc));
			break;
		}
		h[i]->data = f;
		f->open_handles++;
	}
	return rc;
}

int mn_follow_start(uv_loop_t *loop, const struct mn_follow_params *p, struct mn_follow **out,
                    char *err, size_t errlen)
{
	struct mn_follow *f;
	int rc;

	*out = NULL;
	f = calloc(1, sizeof(*f));
	if (!f) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	f->fd = -1;
	f->max_line = p->max_line ? p->max_line : MN_FOLLOW_LINE_DEFAULT;
	if (!split_path(f, p->path) || !p->on_line || p->poll_interval_ms == 0 ||
	    f->max_line > MN_FOLLOW_LINE_MAX) {
		mn_errf(err, errlen, "mn_follow_start: invalid parameters");
		free(f);
		return -EINVAL;
	}
	f->line = malloc(f->max_line + 1);
	if (!f->line) {
		mn_errf(err, errlen, "out of memory");
		free(f);
		return -ENOMEM;
	}
	f->loop = loop;
	f->mode = p->mode;
	f->interval_ms = p->poll_interval_ms;
	f->on_line = p->on_line;
	f->on_reset = p->on_reset;
	f->arg = p->arg;
	rc = init_handles(loop, f, err, errlen);
	if (rc < 0) {
		if (f->open_handles == 0) {
			free(f->line);
			free(f);
		} else {
			mn_follow_close(f);
		}
		return rc;
	}
	uv_timer_start(&f->poll, on_timer, f->interval_ms, f->interval_ms);
	uv_timer_start(&f->soon, on_timer, 0, 0);
	*out = f;
	return 0;
}

void mn_follow_close(struct mn_follow *f)
{
	uv_handle_t *h[3];
	int n;

	if (!f || f->closing)
		return;
	f->closing = true;
	if (f->ev_active)
		uv_fs_event_stop(&f->ev);
	f->ev_active = false;
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	h[0] = (uv_handle_t *)&f->poll;
	h[1] = (uv_handle_t *)&f->soon;
	h[2] = (uv_handle_t *)&f->ev;
	n = f->open_handles;
	for (int i = 0; i < n; i++)
		uv_close(h[i], on_closed);
}
