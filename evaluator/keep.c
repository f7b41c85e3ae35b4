/* keep.c - see keep.h. */
#include "keep.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "best.h"
#include "ckptdir.h"
#include "config.h"
#include "log.h"
#include "util.h"

struct mne_keep {
	char dir[PATH_MAX];
	char prefix[MN_CONFIG_NAME_MAX];
	size_t keep;
	size_t n;
	int lock_fd;                /* best_dir itself, flock'ed: one keeper per best_dir; or -1 */
	struct mn_best_entry *e;    /* keep entries, best first */
	struct mn_best_entry *next; /* keep + 1 entries: the set being built by an offer */
};

static void path_in(const struct mne_keep *k, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", k->dir, name);
}

static bool is_file(const struct mne_keep *k, const char *name)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME];
	struct stat st;

	path_in(k, name, path, sizeof(path));
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_gone(const struct mne_keep *k, const char *name)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME];
	struct stat st;

	path_in(k, name, path, sizeof(path));
	return lstat(path, &st) < 0 && errno == ENOENT;
}

static void remove_file(const struct mne_keep *k, const char *name)
{
	char path[PATH_MAX + MN_CKPT_MAX_NAME];

	path_in(k, name, path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		mn_log(MN_LOG_WARN, "%s: cannot remove: %s", path, strerror(errno));
}

static ssize_t find(const struct mn_best_entry *e, size_t n, const char *file)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(e[i].file, file) == 0)
			return (ssize_t)i;
	return -1;
}

/* Copies fd (from its start) into a new file at tmp, fsynced. */
static int copy_fd(int fd, const char *tmp, char *err, size_t errlen)
{
	char buf[65536];
	off_t off = 0;
	int out, rc = 0;

	out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (out < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot create: %s", tmp, strerror(-rc));
		return rc;
	}
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), off), w = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : 0;
			break;
		}
		while (w < n) {
			ssize_t m = write(out, buf + w, (size_t)(n - w));

			if (m < 0 && errno == EINTR)
				continue;
			if (m < 0) {
				rc = -errno;
				goto fail;
			}
			w += m;
		}
		off += n;
	}
	if (rc == 0 && fsync(out) < 0)
		rc = -errno;
fail:
	if (close(out) < 0 && rc == 0)
		rc = -errno;
	if (rc < 0) {
		mn_errf(err, errlen, "%s: cannot copy: %s", tmp, strerror(-rc));
		unlink(tmp);
	}
	return rc;
}

/*
 * Publishes the evaluated file (open as fd, found at src) as "<dir>/<name>":
 * a hard link if the name still holds that very file and the filesystem
 * allows it, else a copy from fd.
 */
static int publish(const struct mne_keep *k, int fd, const char *src, const char *name,
                   bool *linked, char *err, size_t errlen)
{
	char tmp[PATH_MAX + MN_CKPT_MAX_NAME + 8], dst[PATH_MAX + MN_CKPT_MAX_NAME];
	struct stat fst, st;
	int rc;

	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", k->dir, name);
	path_in(k, name, dst, sizeof(dst));
	*linked = false;
	if (fstat(fd, &fst) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: %s", src, strerror(-rc));
		return rc;
	}
	/*
	 * Kept already as this very file (a better result for it: evaluated
	 * raw now): a rename of a link onto the same file would do nothing and
	 * leave the link behind.
	 */
	if (stat(dst, &st) == 0 && st.st_dev == fst.st_dev && st.st_ino == fst.st_ino) {
		*linked = true;
		return 0;
	}
	unlink(tmp);
	if (link(src, tmp) == 0) {
		if (stat(tmp, &st) == 0 && st.st_dev == fst.st_dev && st.st_ino == fst.st_ino)
			*linked = true;
		else
			unlink(tmp); /* the name was replaced after the evaluation */
	}
	if (!*linked) {
		rc = copy_fd(fd, tmp, err, errlen);
		if (rc < 0)
			return rc;
	}
	if (rename(tmp, dst) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot rename into place: %s", dst, strerror(-rc));
		unlink(tmp);
		return rc;
	}
	rc = mn_fsync_dir(k->dir);
	if (rc < 0)
		mn_errf(err, errlen, "%s: fsync: %s", k->dir, strerror(-rc));
	return rc;
}

size_t mne_keep_count(const struct mne_keep *k)
{
	return k ? k->n : 0;
}

/*
 * A diverged checkpoint (NaN or infinite validation loss) is never the best,
 * whatever its accuracy: its loss cannot be written as the number every
 * best.json reader requires, and no one wants to serve it. Logged, naming
 * the file.
 */
static bool diverged(const struct mne_keep *k, const char *name, int64_t step, double accuracy,
                     double loss)
{
	if (isfinite(loss))
		return false;
	mn_log_fields(MN_LOG_WARN, "not kept as a best checkpoint: its loss is not finite",
	              (struct mn_log_field[]){
	                  MN_F_STR("file", name),
	                  MN_F_INT("step", step),
	                  MN_F_DBL("accuracy", accuracy, 4),
	                  MN_F_DBL("loss", isnan(loss) ? NAN : loss, 4), /* "nan", not "-nan" */
	                  MN_F_STR("dir", k->dir),
	              },
	              5);
	return true;
}

/* Builds k->next from the set with c in place of the entry of the same file; its length. */
static size_t with_candidate(const struct mne_keep *k, const struct mn_best_entry *c, ssize_t same)
{
	size_t m = 0;

	for (size_t i = 0; i < k->n; i++)
		if ((ssize_t)i != same)
			k->next[m++] = k->e[i];
	k->next[m++] = *c;
	mn_best_sort(k->next, m);
	return m;
}

/*
 * One keeper per best_dir: two evaluators (two runs, one copied
 * configuration) would each write best.json with its own set, and the files
 * of the other run's set, then unlisted, would be removed at the next start.
 * The lock is on the directory itself (no file in it), released by the
 * kernel when the process dies. Returns the descriptor, -EWOULDBLOCK with a
 * message when another process holds it, or -1 when the filesystem cannot
 * lock a directory (then it is not enforced: logged).
 */
static int lock_dir(const char *dir, char *err, size_t errlen)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		mn_log(MN_LOG_WARN, "%s: cannot open to lock: %s", dir, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return fd;
	if (errno == EWOULDBLOCK) {
		mn_errf(err, errlen,
		        "%s: another mnist-eval keeps its best checkpoints here; give each run an "
		        "eval.best_dir of its own",
		        dir);
		close(fd);
		return -EWOULDBLOCK;
	}
	mn_log(MN_LOG_WARN, "%s: cannot lock (%s): a second evaluator on it would not be refused",
	       dir, strerror(errno));
	close(fd);
	return -1;
}

/*
 * The set as the disk has it now: best_dir removed while running (rm -rf, a
 * cleanup) is made again, and entries whose file is gone are dropped, as
 * at open, so that what is gone does not stand in the way of what comes;
 * best.json removed is due again. Returns 0, 1 if best.json must be
 * rewritten, or a negative errno.
 */
static int refresh(struct mne_keep *k, char *err, size_t errlen)
{
	struct stat st;
	size_t kept = 0;
	int rc;

	if (stat(k->dir, &st) < 0 && errno == ENOENT) {
		rc = mn_mkdir_p(k->dir, 0755, err, errlen);
		if (rc < 0)
			return rc;
		mn_log_fields(MN_LOG_WARN, "eval.best_dir was removed; made it again",
		              (struct mn_log_field[]){MN_F_STR("dir", k->dir)}, 1);
		/* The lock went with the old directory: this one is to be ours alone too. */
		if (k->lock_fd >= 0)
			close(k->lock_fd);
		k->lock_fd = lock_dir(k->dir, err, errlen);
		if (k->lock_fd == -EWOULDBLOCK) {
			k->lock_fd = -1;
			return -EWOULDBLOCK;
		}
	}
	for (size_t i = 0; i < k->n; i++) {
		/* Only what is surely gone: best_dir unreadable for a moment drops nothing. */
		if (!is_gone(k, k->e[i].file)) {
			k->e[kept++] = k->e[i];
			continue;
		}
		mn_log(MN_LOG_WARN, "%s/%s: kept but gone; dropped from %s", k->dir, k->e[i].file,
		       MN_BEST_FILE);
	}
	rc = kept < k->n;
	k->n = kept;
	/* best.json deleted (the files are there): the set is still known, so say it again. */
	if (k->n > 0 && is_gone(k, MN_BEST_FILE)) {
		mn_log_fields(MN_LOG_WARN, "best.json was removed; writing it again",
		              (struct mn_log_field[]){MN_F_STR("dir", k->dir)}, 1);
		rc = 1;
	}
	return rc;
}

/* An offer that keeps nothing: best.json stops listing the files refresh() dropped. */
static int save_dropped(struct mne_keep *k, bool dropped, char *err, size_t errlen)
{
	int rc = dropped ? mn_best_save(k->dir, k->e, k->n, err, errlen) : 0;

	return rc < 0 ? rc : 0;
}

int mne_keep_offer(struct mne_keep *k, int fd, const char *path, const struct mne_pick_result *res,
                   char *err, size_t errlen)
{
	struct mn_best_entry c = {
	    .step = res->step, .accuracy = res->eval.accuracy, .loss = res->eval.loss};
	ssize_t same, rank;
	size_t m, kept;
	bool linked, dropped;
	int rc;

	snprintf(c.file, sizeof(c.file), "%s", res->name);
	mn_time_rfc3339_ns(res->done_ns, c.time);
	rc = refresh(k, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "keeping %s in eval.best_dir", c.file);
		return rc;
	}
	dropped = rc == 1;
	if (diverged(k, c.file, c.step, c.accuracy, c.loss))
		return save_dropped(k, dropped, err, errlen);
	same = find(k->e, k->n, c.file);
	/* Already kept, as good or better (an evaluator restart re-evaluates). */
	if (same >= 0 && !mn_best_before(&c, &k->e[same]))
		return save_dropped(k, dropped, err, errlen);
	m = with_candidate(k, &c, same);
	kept = m < k->keep ? m : k->keep;
	rank = find(k->next, kept, c.file);
	if (rank < 0)
		return save_dropped(k, dropped, err, errlen);
	rc = publish(k, fd, path, c.file, &linked, err, errlen);
	if (rc == 0)
		rc = mn_best_save(k->dir, k->next, kept, err, errlen);
	if (rc < 0) {
		/* The old best.json still stands; a new file it does not list must go. */
		if (same < 0)
			remove_file(k, c.file);
		mn_errprefix(err, errlen, "keeping %s in eval.best_dir (the previous best stay)",
		             c.file);
		return rc;
	}
	for (size_t i = kept; i < m; i++)
		remove_file(k, k->next[i].file);
	if (m > kept)
		mn_fsync_dir(k->dir);
	memcpy(k->e, k->next, kept * sizeof(*k->e));
	k->n = kept;
	mn_log_fields(MN_LOG_INFO, "kept best checkpoint",
	              (struct mn_log_field[]){
	                  MN_F_INT("step", c.step),
	                  MN_F_DBL("accuracy", c.accuracy, 4),
	                  MN_F_INT("rank", (int64_t)rank + 1),
	                  MN_F_INT("kept", (int64_t)kept),
	                  MN_F_STR("method", linked ? "link" : "copy"),
	                  MN_F_STR("dir", k->dir),
	              },
	              6);
	return 1;
}

/* Evaluates the checkpoint files in dir into k->e (best first, at most keep). */
static int rebuild(struct mne_keep *k, const struct mne_pick_params *eval, char *err, size_t errlen)
{
	struct mn_ckptdir_entry *list = NULL;
	struct mn_best_entry *all = NULL;
	size_t n = 0, m = 0;
	int rc;

	rc = mn_ckptdir_scan(k->dir, k->prefix, &list, &n, err, errlen);
	if (rc < 0)
		return rc;
	all = calloc(n ? n : 1, sizeof(*all));
	if (!all) {
		free(list);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		struct mne_pick_result r;

		rc = mne_pick_evaluate_file(eval, k->dir, &list[i], &r);
		if (rc == -ECANCELED)
			break;
		/* Bad: logged; not listed, so removed as unlisted. */
		if (rc == -EINVAL)
			continue;
		/* Out of memory, threads or descriptors, not the file's fault: nothing may go for
		 * it. */
		if (rc < 0)
			break;
		/* Not listed, so removed as unlisted, as a bad file is. */
		if (diverged(k, r.name, r.step, r.eval.accuracy, r.eval.loss))
			continue;
		all[m] = (struct mn_best_entry){
		    .step = r.step, .accuracy = r.eval.accuracy, .loss = r.eval.loss};
		snprintf(all[m].file, sizeof(all[m].file), "%s", r.name);
		mn_time_rfc3339_ns(r.done_ns, all[m].time);
		m++;
	}
	mn_best_sort(all, m);
	k->n = m < k->keep ? m : k->keep;
	memcpy(k->e, all, k->n * sizeof(*all));
	free(all);
	free(list);
	if (rc == -ECANCELED) {
		mn_errf(err, errlen, "cancelled");
		return rc;
	}
	if (rc < 0 && rc != -EINVAL) {
		mn_errf(err, errlen, "cannot rebuild best.json in %s: %s", k->dir, strerror(-rc));
		return rc;
	}
	mn_log_fields(MN_LOG_WARN, "rebuilt best.json from the checkpoints in best_dir",
	              (struct mn_log_field[]){MN_F_STR("dir", k->dir),
	                                      MN_F_INT("files", (int64_t)n),
	                                      MN_F_INT("kept", (int64_t)k->n)},
	              3);
	return 0;
}

/* Removes checkpoint files the set does not list; true if any went. */
static bool remove_unlisted(struct mne_keep *k)
{
	struct mn_ckptdir_entry *list = NULL;
	char err[MN_ERRLEN];
	size_t n = 0;
	bool any = false;

	if (mn_ckptdir_scan(k->dir, k->prefix, &list, &n, err, sizeof(err)) < 0) {
		mn_log(MN_LOG_WARN, "%s", err);
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (find(k->e, k->n, list[i].name) >= 0)
			continue;
		mn_log_fields(MN_LOG_INFO, "removing a checkpoint that best.json does not list",
		              (struct mn_log_field[]){MN_F_STR("dir", k->dir),
		                                      MN_F_STR("file", list[i].name)},
		              2);
		remove_file(k, list[i].name);
		any = true;
	}
	free(list);
	return any;
}

/* Loads best.json into k, or rebuilds it; *changed if best.json must be rewritten. */
static int load(struct mne_keep *k, const struct mne_pick_params *eval, bool *changed, char *err,
                size_t errlen)
{
	struct mn_best_entry *e = NULL;
	struct mn_ckptdir_entry *list = NULL;
	size_t n = 0, nfiles = 0;
	int rc;

	*changed = false;
	rc = mn_best_load(k->dir, &e, &n, err, errlen);
	if (rc == -ENOENT) {
		rc = mn_ckptdir_scan(k->dir, k->prefix, &list, &nfiles, err, errlen);
		free(list);
		if (rc < 0 || nfiles == 0)
			return rc;
		mn_log(MN_LOG_WARN, "%s/%s is missing but checkpoints are there", k->dir,
		       MN_BEST_FILE);
		*changed = true;
		return rebuild(k, eval, err, errlen);
	}
	if (rc == -EINVAL) {
		mn_log(MN_LOG_WARN, "%s; rebuilding it", err);
		*changed = true;
		return rebuild(k, eval, err, errlen);
	}
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++) {
		if (!is_file(k, e[i].file)) {
			mn_log(MN_LOG_WARN, "%s/%s: listed in %s but missing; dropped", k->dir,
			       e[i].file, MN_BEST_FILE);
			*changed = true;
			continue;
		}
		if (k->n == k->keep) {
			remove_file(k, e[i].file); /* eval.keep_best was lowered */
			*changed = true;
			continue;
		}
		k->e[k->n++] = e[i];
	}
	free(e);
	return 0;
}

static bool same_dir(const char *a, const char *b)
{
	struct stat sa, sb;

	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
	       sa.st_ino == sb.st_ino;
}

static bool has_trainer_lock(const char *dir)
{
	char path[PATH_MAX + sizeof(MN_CKPTDIR_LOCK)];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, MN_CKPTDIR_LOCK);
	return lstat(path, &st) == 0;
}

int mne_keep_open(const struct mne_keep_params *p, struct mne_keep **out, char *err, size_t errlen)
{
	struct mne_keep *k;
	bool changed = false;
	int rc;

	*out = NULL;
	if (!p->dir || !p->dir[0] || strlen(p->dir) >= sizeof(k->dir) || !p->prefix ||
	    strlen(p->prefix) >= sizeof(k->prefix) || p->keep < 1 || p->keep > MN_BEST_MAX ||
	    !p->eval) {
		mn_errf(err, errlen, "mne_keep_open: invalid parameters");
		return -EINVAL;
	}
	rc = mn_mkdir_p(p->dir, 0755, err, errlen);
	if (rc < 0)
		return rc;
	if (p->ckpt_dir && same_dir(p->dir, p->ckpt_dir)) {
		mn_errf(err, errlen,
		        "%s: eval.best_dir is checkpoint.dir; it needs a directory of its own",
		        p->dir);
		return -EINVAL;
	}
	/*
	 * Another run's checkpoint.dir (its trainer's lock file is there, running
	 * or not): a rebuild would remove all of that run's checkpoints but the
	 * best, and a kept file would replace its own of the same name.
	 */
	if (has_trainer_lock(p->dir)) {
		mn_errf(err, errlen,
		        "%s: eval.best_dir is an mnistd checkpoint.dir (it holds %s); it needs a "
		        "directory of its own",
		        p->dir, MN_CKPTDIR_LOCK);
		return -EINVAL;
	}
	k = calloc(1, sizeof(*k));
	if (k)
		k->lock_fd = -1;
	if (!k || !(k->e = calloc(p->keep, sizeof(*k->e))) ||
	    !(k->next = calloc(p->keep + 1, sizeof(*k->next)))) {
		mne_keep_free(k);
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* Before anything in best_dir is read or touched. */
	k->lock_fd = lock_dir(p->dir, err, errlen);
	if (k->lock_fd == -EWOULDBLOCK) {
		k->lock_fd = -1;
		mne_keep_free(k);
		return -EWOULDBLOCK;
	}
	snprintf(k->dir, sizeof(k->dir), "%s", p->dir);
	snprintf(k->prefix, sizeof(k->prefix), "%s", p->prefix);
	k->keep = p->keep;
	mn_remove_stale_temps(k->dir, NULL, 0);
	rc = load(k, p->eval, &changed, err, errlen);
	if (rc == 0 && (remove_unlisted(k) || changed))
		rc = mn_best_save(k->dir, k->e, k->n, err, errlen);
	if (rc < 0) {
		mne_keep_free(k);
		return rc;
	}
	*out = k;
	return 0;
}

void mne_keep_free(struct mne_keep *k)
{
	if (!k)
		return;
	if (k->lock_fd >= 0)
		close(k->lock_fd);
	free(k->e);
	free(k->next);
	free(k);
}
