/* pick.c - see pick.h. */
#include "pick.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckptdir.h"
#include "log.h"
#include "model.h"
#include "util.h"

/* Outcome of trying one file. */
/*
 * Outcome of trying one file. TRY_FAILED: this machine could not evaluate
 * it (mn_errno_is_resource), or the directory could not be searched for
 * it, which says nothing of the file: the look ends with the error and the
 * file is tried again at the next one.
 */
enum attempt { TRY_DONE, TRY_SKIPPED, TRY_BAD, TRY_CANCELED, TRY_FAILED };

/* What ended a look with TRY_FAILED. */
struct trouble {
	int rc;
	char *err;
	size_t errlen;
};

void mne_pick_state_init(struct mne_pick_state *s)
{
	memset(s, 0, sizeof(*s));
	s->last_step = -1;
}

void mne_pick_state_free(struct mne_pick_state *s)
{
	free(s->failed);
	s->failed = NULL;
	s->nfailed = s->capfailed = 0;
	free(s->file);
	s->file = NULL;
	s->file_cap = 0;
	free(s->params);
	s->params = NULL;
	s->params_cap = 0;
	mn_eval_ws_free(s->ws);
	s->ws = NULL;
}

void mne_pick_result_close(struct mne_pick_result *res)
{
	if (res->fd >= 0)
		close(res->fd);
	res->fd = -1;
}

static int64_t ctime_ns(const struct stat *st)
{
	return (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static struct mne_pick_failure identity(int64_t step, const struct stat *st)
{
	return (struct mne_pick_failure){
	    .step = step,
	    .dev = st->st_dev,
	    .ino = st->st_ino,
	    .size = (int64_t)st->st_size,
	    .mtime_ns = mtime_ns(st),
	    .ctime_ns = ctime_ns(st),
	};
}

/* Index of the first failure with a step >= step (binary search). */
static size_t failure_slot(const struct mne_pick_state *s, int64_t step)
{
	size_t lo = 0, hi = s->nfailed;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->failed[mid].step < step)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool known_bad(const struct mne_pick_state *s, int64_t step, const struct stat *st)
{
	size_t i = failure_slot(s, step);
	struct mne_pick_failure id = identity(step, st);
	const struct mne_pick_failure *f = i < s->nfailed ? &s->failed[i] : NULL;

	return f && f->step == step && f->dev == id.dev && f->ino == id.ino && f->size == id.size &&
	       f->mtime_ns == id.mtime_ns && f->ctime_ns == id.ctime_ns;
}

/*
 * Remembers a bad file, however many there are (one entry per step, the
 * latest identity wins). Out of memory, it is only not remembered: read
 * again next time, which is slower but not wrong.
 */
static void remember_bad(struct mne_pick_state *s, int64_t step, const struct stat *st)
{
	size_t i = failure_slot(s, step);

	s->rejected++;
	if (i < s->nfailed && s->failed[i].step == step) {
		s->failed[i] = identity(step, st);
		return;
	}
	if (s->nfailed == s->capfailed) {
		size_t cap = s->capfailed ? s->capfailed * 2 : 64;
		struct mne_pick_failure *grown = realloc(s->failed, cap * sizeof(*grown));

		if (!grown)
			return;
		s->failed = grown;
		s->capfailed = cap;
	}
	memmove(&s->failed[i + 1], &s->failed[i], (s->nfailed - i) * sizeof(*s->failed));
	s->failed[i] = identity(step, st);
	s->nfailed++;
}

/* Failures at or below the last evaluated step can never be candidates again. */
static void forget_old(struct mne_pick_state *s)
{
	size_t kept = 0;

	for (size_t i = 0; i < s->nfailed; i++)
		if (s->failed[i].step > s->last_step)
			s->failed[kept++] = s->failed[i];
	s->nfailed = kept;
}

static void log_bad(const char *path, const char *what)
{
	mn_log_fields(MN_LOG_ERROR, "invalid checkpoint",
	              (struct mn_log_field[]){MN_F_STR("checkpoint", mn_basename(path)),
	                                      MN_F_STR("error", what)},
	              2);
}

static void warn_step_mismatch(const struct mn_ckpt *c, const char *name, int64_t step)
{
	int64_t meta;

	/* The reader required a plain decimal global_step (MN_CKPT_REQUIRE_MNISTD). */
	if (mn_model_step(c, &meta, NULL, 0) == 0 && meta != step)
		mn_log(MN_LOG_WARN,
		       "%s: __metadata__ global_step is %" PRId64
		       "; reporting the file name's %" PRId64,
		       name, meta, step);
}

/*
 * Records why this machine could not evaluate path (what names it
 * already, or says why only) and returns TRY_FAILED.
 */
static enum attempt cannot_evaluate(struct trouble *t, int rc, const char *path, const char *what)
{
	t->rc = rc;
	if (strncmp(what, path, strlen(path)) == 0)
		snprintf(t->err, t->errlen, "cannot evaluate %s", what);
	else
		snprintf(t->err, t->errlen, "cannot evaluate %s: %s", path, what);
	return TRY_FAILED;
}

/* Reads, validates and evaluates one open file, in the memory s keeps. */
static enum attempt evaluate_fd(const struct mne_pick_params *p, struct mne_pick_state *s, int fd,
                                const char *path, const struct mn_ckptdir_entry *e,
                                struct mne_pick_result *res, struct trouble *t)
{
	struct mn_ckpt *c = NULL;
	struct mn_arch arch;
	char err[MN_ERRLEN];
	enum attempt out = TRY_BAD;
	int64_t start;
	int rc;

	start = mn_monotonic_ns();
	rc = mn_ckpt_read_fd_reuse(fd, path, MN_CKPT_REQUIRE_MNISTD, &s->file, &s->file_cap, &c,
	                           err, sizeof(err));
	if (rc == 0)
		rc = mn_model_load_params_reuse(c, p->use_ema, &arch, &s->params, &s->params_cap,
		                                err, sizeof(err));
	res->read_ns = mn_monotonic_ns() - start;
	if (rc < 0)
		goto failed;
	if (arch.input != p->data->dim) {
		char arch_s[256];

		mn_arch_format(&arch, arch_s, sizeof(arch_s));
		mn_errf(err, sizeof(err),
		        "%s: the model (%s) takes %zu inputs but the validation images have %zu "
		        "pixels; it was trained on other data than data.dir",
		        path, arch_s, arch.input, p->data->dim);
		log_bad(path, err);
		goto out;
	}
	start = mn_monotonic_ns();
	rc = s->ws ? 0 : mn_eval_ws_new(&s->ws);
	if (rc < 0)
		mn_errf(err, sizeof(err), "out of memory for an evaluation workspace");
	else
		rc = mn_evaluate_ws(s->ws, &arch, s->params, p->data, p->threads, p->cancel,
		                    &res->eval, err, sizeof(err));
	res->eval_ns = mn_monotonic_ns() - start;
	if (rc == -ECANCELED) {
		out = TRY_CANCELED;
		goto out;
	}
	if (rc < 0) {
		mn_errprefix(err, sizeof(err), "%s", path);
		goto failed;
	}
	res->done_ns = mn_realtime_ns();
	warn_step_mismatch(c, path, e->step);
	snprintf(res->name, sizeof(res->name), "%s", e->name);
	res->step = e->step;
	res->ema = p->use_ema && !mn_model_is_frozen(c);
	out = TRY_DONE;
	goto out;
failed:
	if (mn_errno_is_resource(rc)) {
		out = cannot_evaluate(t, rc, path, err);
	} else {
		log_bad(path, err);
	}
out:
	mn_ckpt_free(c);
	return out;
}

static enum attempt try_file(const struct mne_pick_params *p, struct mne_pick_state *s,
                             const struct mn_ckptdir_entry *e, struct mne_pick_result *res,
                             struct trouble *t)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME], msg[MN_ERRLEN];
	struct stat st, fst;
	enum attempt out;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", p->dir, e->name);
	/*
	 * Look before opening: a known bad file is not opened again, and a FIFO
	 * never; a symbolic link is not followed unless configured (lstat).
	 */
	if (lstat(path, &st) < 0) {
		int rc = -errno;

		if (rc == -ENOENT)
			return TRY_SKIPPED; /* retention got there first */
		/*
		 * Only the directory was looked at (searched): its trouble (not
		 * searchable, replaced by a file, I/O) is every file's, not this
		 * one's. The look ends with it, logged once by the runner, rather
		 * than every file being called invalid at every look.
		 */
		return cannot_evaluate(t, rc, path, strerror(-rc));
	}
	if (p->follow_symlinks && S_ISLNK(st.st_mode) && stat(path, &st) < 0) {
		int rc = -errno;

		if (rc == -ENOENT)
			return TRY_SKIPPED; /* a dangling link: its target may come */
		if (mn_errno_is_resource(rc))
			return cannot_evaluate(t, rc, path, strerror(-rc));
		log_bad(path, strerror(-rc));
		return TRY_SKIPPED;
	}
	if (known_bad(s, e->step, &st))
		return TRY_SKIPPED;
	if (S_ISLNK(st.st_mode)) {
		log_bad(path,
		        "a symbolic link, not followed (checkpoint.follow_symlinks is false)");
		remember_bad(s, e->step, &st);
		return TRY_BAD;
	}
	if (!S_ISREG(st.st_mode)) {
		log_bad(path, "not a regular file");
		remember_bad(s, e->step, &st);
		return TRY_BAD;
	}
	fd = mn_open_regular(path, p->follow_symlinks ? 0 : MN_OPEN_NOFOLLOW, &fst, msg,
	                     sizeof(msg));
	if (fd == -ENOENT)
		return TRY_SKIPPED;
	/* Replaced since the lstat (by a FIFO, a link): judged again at the next look. */
	if (fd == -EINVAL || fd == -ELOOP)
		return TRY_SKIPPED;
	if (mn_errno_is_resource(fd))
		return cannot_evaluate(t, fd, path, msg);
	if (fd < 0) {
		log_bad(path, msg);
		remember_bad(s, e->step, &st);
		return TRY_BAD;
	}
	res->opened_ns = mn_realtime_ns();
	res->published_ns = ctime_ns(&fst);
	/* An event about an earlier file started this look: this one's began at its publication. */
	if (res->event_ns < res->published_ns)
		res->event_ns = res->published_ns;
	mn_log_fields(MN_LOG_DEBUG, "evaluating",
	              (struct mn_log_field[]){MN_F_STR("checkpoint", e->name)}, 1);
	out = evaluate_fd(p, s, fd, path, e, res, t);
	/* The caller makes it the last step evaluated. */
	if (out == TRY_DONE)
		s->last_mtime_ns = mtime_ns(&fst);
	if (out == TRY_DONE && p->keep_open) {
		res->fd = fd;
		snprintf(res->path, sizeof(res->path), "%s", path);
	} else {
		close(fd);
	}
	if (out == TRY_BAD)
		remember_bad(s, e->step, &fst);
	return out;
}

/* Grows *buf to at least want bytes and touches every page of it. */
static bool grow_touched(void **buf, size_t *cap, size_t want)
{
	void *b = *cap >= want ? *buf : realloc(*buf, want);

	if (!b)
		return false;
	memset(b, 0, want);
	*buf = b;
	if (*cap < want)
		*cap = want;
	return true;
}

void mne_pick_warm(struct mne_pick_state *s, const struct mne_pick_params *p,
                   const struct mn_arch *arch, size_t file_bytes)
{
	struct mn_eval_result res;
	char err[MN_ERRLEN];
	size_t count, params_bytes;
	void *params;

	if (mn_arch_validate(arch, err, sizeof(err)) < 0 || arch->input != p->data->dim)
		return;
	count = mn_arch_param_count(arch);
	params = s->params;
	params_bytes = s->params_cap * sizeof(float);
	if (!grow_touched(&params, &params_bytes, count * sizeof(float)))
		return;
	s->params = params;
	s->params_cap = params_bytes / sizeof(float);
	if (file_bytes) {
		void *file = s->file;
		size_t cap = s->file_cap ? s->file_cap + 1 : 0;

		/* mn_read_fd_reuse's buffer holds cap data bytes and a NUL. */
		if (grow_touched(&file, &cap, file_bytes + 1)) {
			s->file = file;
			s->file_cap = cap - 1;
		}
	}
	if (!s->ws && mn_eval_ws_new(&s->ws) < 0)
		return;
	/* Zero weights: only the pass's memory and threads matter, not its result. */
	(void)mn_evaluate_ws(s->ws, arch, s->params, p->data, p->threads, p->cancel, &res, err,
	                     sizeof(err));
}

/*
 * Whether e, older than the last step evaluated, was written after that
 * step's file: a new run (or a resumed one) rather than what is left of
 * this run once its newer files were deleted. A file that cannot be looked
 * at is judged at the next look.
 */
static bool written_since_last(const struct mne_pick_params *p, const struct mne_pick_state *s,
                               const struct mn_ckptdir_entry *e)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", p->dir, e->name);
	if ((p->follow_symlinks ? stat(path, &st) : lstat(path, &st)) < 0)
		return false;
	/* Equal times cannot tell (a coarse clock): following is the lesser harm. */
	return mtime_ns(&st) >= s->last_mtime_ns;
}

int mne_pick_evaluate(const struct mne_pick_params *p, struct mne_pick_state *s,
                      struct mne_pick_result *res, char *err, size_t errlen)
{
	struct mn_ckptdir_entry *list = NULL;
	struct trouble t = {.err = err, .errlen = errlen};
	size_t n = 0;
	int rc;

	memset(res, 0, sizeof(*res));
	res->fd = -1;
	res->event_ns = p->event_ns ? p->event_ns : mn_realtime_ns();
	if (p->hint_step > 0 && p->hint_step > s->last_step) {
		struct mn_ckptdir_entry hinted = {.step = p->hint_step};
		enum attempt a = TRY_SKIPPED;

		if (mn_ckptdir_filename(p->prefix, p->hint_step, hinted.name,
		                        sizeof(hinted.name)) == 0)
			a = try_file(p, s, &hinted, res, &t);
		if (a == TRY_CANCELED) {
			mn_errf(err, errlen, "cancelled");
			return -ECANCELED;
		}
		if (a == TRY_FAILED)
			return t.rc;
		if (a == TRY_DONE) {
			s->last_step = hinted.step;
			forget_old(s);
			return 1;
		}
		/* Gone or bad: older files may be good, and only a listing finds them. */
	}
	rc = mn_ckptdir_scan(p->dir, p->prefix, &list, &n, err, errlen);
	if (rc < 0)
		return rc;
	rc = 0;
	/*
	 * Steps only go up within a run; a newest step below the last one
	 * evaluated, written after it, means the directory now holds another
	 * run (replaced, or rolled back): say so and follow it rather than wait
	 * for it to pass the old step, which may never happen. Written before
	 * it, the newest file is an older one of this run whose newer files
	 * were deleted: nothing new, and evaluating it again would be a step
	 * evaluated twice.
	 */
	if (n > 0 && list[n - 1].step < s->last_step && !written_since_last(p, s, &list[n - 1])) {
		free(list);
		return 0;
	}
	if (n > 0 && list[n - 1].step < s->last_step) {
		mn_log_fields(MN_LOG_WARN, "new run in the checkpoint directory",
		              (struct mn_log_field[]){
		                  MN_F_STR("dir", p->dir),
		                  MN_F_INT("newest_step", list[n - 1].step),
		                  MN_F_INT("last_evaluated_step", s->last_step),
		              },
		              3);
		s->last_step = -1;
	}
	for (size_t i = n; i-- > 0 && list[i].step > s->last_step;) {
		enum attempt a;

		if (p->cancel && atomic_load(p->cancel)) {
			rc = -ECANCELED;
			break;
		}
		a = try_file(p, s, &list[i], res, &t);
		if (a == TRY_CANCELED) {
			rc = -ECANCELED;
			break;
		}
		if (a == TRY_FAILED) {
			rc = t.rc;
			break;
		}
		if (a == TRY_DONE) {
			s->last_step = list[i].step;
			forget_old(s);
			rc = 1;
			break;
		}
	}
	free(list);
	if (rc == -ECANCELED)
		mn_errf(err, errlen, "cancelled");
	return rc;
}

int mne_pick_evaluate_file(const struct mne_pick_params *p, const char *dir,
                           const struct mn_ckptdir_entry *e, struct mne_pick_result *res)
{
	struct mne_pick_params q = *p;
	struct mne_pick_state s;
	char why[MN_ERRLEN];
	struct trouble t = {.err = why, .errlen = sizeof(why)};
	enum attempt a;

	q.dir = dir;
	q.keep_open = false;
	mne_pick_state_init(&s);
	memset(res, 0, sizeof(*res));
	res->fd = -1;
	res->event_ns = mn_realtime_ns();
	a = try_file(&q, &s, e, res, &t);
	/* A bad file was remembered in s: nobody asks again. */
	mne_pick_state_free(&s);
	if (a == TRY_FAILED)
		mn_log(MN_LOG_ERROR, "%s", why);
	return a == TRY_DONE       ? 0
	       : a == TRY_CANCELED ? -ECANCELED
	       : a == TRY_FAILED   ? t.rc
	                           : -EINVAL;
}
