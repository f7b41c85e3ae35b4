/* ckptdir.c - see ckptdir.h. */
#include "ckptdir.h"

#include "json.h"
#include "log.h"
#include "util.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* checkpoint.json lists every kept file; this is far beyond any real index. */
#define INDEX_MAX_BYTES ((size_t)16 << 20)

int mn_ckptdir_filename(const char *prefix, int64_t step, char *buf, size_t len)
{
	int n;

	if (!prefix || step < 0)
		return -EINVAL;
	n = snprintf(buf, len, "%s-%" PRId64 "%s", prefix, step, MN_CKPT_SUFFIX);
	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

bool mn_ckptdir_filename_parse(const char *prefix, const char *name, int64_t *step)
{
	size_t pl, nl, sl = strlen(MN_CKPT_SUFFIX);
	int64_t s;

	if (!prefix || !name)
		return false;
	pl = strlen(prefix);
	nl = strlen(name);
	if (nl < pl + 1 + sl || strncmp(name, prefix, pl) != 0 || name[pl] != '-' ||
	    strcmp(name + nl - sl, MN_CKPT_SUFFIX) != 0)
		return false;
	if (!mn_ckpt_parse_step(name + pl + 1, nl - pl - 1 - sl, &s))
		return false;
	if (step)
		*step = s;
	return true;
}

static int cmp_entry_step(const void *a, const void *b)
{
	const struct mn_ckptdir_entry *x = a, *y = b;

	return x->step < y->step ? -1 : (x->step > y->step);
}

int mn_ckptdir_scan(const char *dir, const char *prefix, struct mn_ckptdir_entry **out, size_t *n,
                    char *err, size_t errlen)
{
	struct mn_ckptdir_entry *list = NULL, *grown;
	size_t count = 0, cap = 0;
	struct dirent *e;
	DIR *d;
	int rc;

	if (!dir || !prefix || !out || !n) {
		mn_errf(err, errlen, "mn_ckptdir_scan: invalid arguments");
		return -EINVAL;
	}
	*out = NULL;
	*n = 0;
	d = opendir(dir);
	if (!d) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot open directory: %s", dir, strerror(-rc));
		return rc;
	}
	for (;;) {
		int64_t step;

		errno = 0;
		e = readdir(d);
		if (!e) {
			if (errno != 0) {
				rc = -errno;
				mn_errf(err, errlen, "%s: cannot read directory: %s", dir,
				        strerror(-rc));
				goto fail;
			}
			break;
		}
		/* Dot-files are temporaries still being written. */
		if (e->d_name[0] == '.' || e->d_type == DT_DIR ||
		    strlen(e->d_name) >= MN_CKPT_MAX_NAME ||
		    !mn_ckptdir_filename_parse(prefix, e->d_name, &step))
			continue;
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			grown = realloc(list, cap * sizeof(*list));
			if (!grown) {
				rc = -ENOMEM;
				mn_errf(err, errlen, "%s: out of memory", dir);
				goto fail;
			}
			list = grown;
		}
		snprintf(list[count].name, sizeof(list[count].name), "%s", e->d_name);
		list[count].step = step;
		count++;
	}
	closedir(d);
	/* Strict names make steps unique, so this order is total. */
	if (count > 1)
		qsort(list, count, sizeof(*list), cmp_entry_step);
	*out = list;
	*n = count;
	return 0;
fail:
	closedir(d);
	free(list);
	return rc;
}

/* A bare file name: no directory part, not a dot-file. */
static bool plain_name(const char *s)
{
	return s && *s && s[0] != '.' && !strchr(s, '/');
}

/*
 * checkpoint.json lists at most this many files (the newest kept ones, and
 * latest): an index that grew with every checkpoint of a keep-all run would
 * make each publish slower than the last and outgrow INDEX_MAX_BYTES.
 */
#define INDEX_MAX_FILES MN_CKPTDIR_INDEX_MAX

struct mn_ckptdir_versions {
	char dir[PATH_MAX];
	char prefix[MN_CKPT_MAX_NAME];
	/* Steps of the checkpoint files, ascending, in steps[head .. head + n). */
	int64_t *steps;
	size_t head, n, cap;
	int64_t latest; /* the step checkpoint.json names, -1 before the first publish */
	/*
	 * Keep-all forgets all but the newest files (they are never deleted);
	 * set once it has, so that a later max_to_keep looks at the directory again.
	 */
	bool forgot_old;
};

static int versions_scan(struct mn_ckptdir_versions *v, char *err, size_t errlen)
{
	struct mn_ckptdir_entry *ents = NULL;
	size_t n = 0;
	int rc = mn_ckptdir_scan(v->dir, v->prefix, &ents, &n, err, errlen);

	if (rc < 0)
		return rc;
	if (n > v->cap) {
		int64_t *grown = realloc(v->steps, n * sizeof(*grown));

		if (!grown) {
			free(ents);
			mn_errf(err, errlen, "%s: out of memory", v->dir);
			return -ENOMEM;
		}
		v->steps = grown;
		v->cap = n;
	}
	for (size_t i = 0; i < n; i++)
		v->steps[i] = ents[i].step;
	v->head = 0;
	v->n = n;
	v->forgot_old = false;
	free(ents);
	return 0;
}

int mn_ckptdir_versions_open(const char *dir, const char *prefix, int64_t latest,
                             struct mn_ckptdir_versions **out, char *err, size_t errlen)
{
	struct mn_ckptdir_versions *v;
	int rc;

	*out = NULL;
	if (!dir || !prefix || strlen(dir) >= sizeof(v->dir) ||
	    strlen(prefix) >= sizeof(v->prefix)) {
		mn_errf(err, errlen, "mn_ckptdir_versions_open: invalid arguments");
		return -EINVAL;
	}
	v = calloc(1, sizeof(*v));
	if (!v) {
		mn_errf(err, errlen, "%s: out of memory", dir);
		return -ENOMEM;
	}
	snprintf(v->dir, sizeof(v->dir), "%s", dir);
	snprintf(v->prefix, sizeof(v->prefix), "%s", prefix);
	v->latest = latest < 0 ? -1 : latest;
	rc = versions_scan(v, err, errlen);
	if (rc < 0) {
		mn_ckptdir_versions_free(v);
		return rc;
	}
	*out = v;
	return 0;
}

void mn_ckptdir_versions_free(struct mn_ckptdir_versions *v)
{
	if (!v)
		return;
	free(v->steps);
	free(v);
}

const char *mn_ckptdir_versions_dir(const struct mn_ckptdir_versions *v)
{
	return v->dir;
}

const char *mn_ckptdir_versions_prefix(const struct mn_ckptdir_versions *v)
{
	return v->prefix;
}

size_t mn_ckptdir_versions_count(const struct mn_ckptdir_versions *v)
{
	return v->n;
}

/* Records step in order; usually the newest, so an append. */
static int versions_insert(struct mn_ckptdir_versions *v, int64_t step)
{
	int64_t *s;
	size_t lo = 0, hi = v->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v->steps[v->head + mid] < step)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < v->n && v->steps[v->head + lo] == step)
		return 0;
	if (v->head + v->n == v->cap) {
		/* Slide down what retention left at the front, or grow. */
		if (v->head >= v->cap / 2 && v->head > 0) {
			memmove(v->steps, v->steps + v->head, v->n * sizeof(*v->steps));
			v->head = 0;
		} else {
			size_t cap = v->cap ? v->cap * 2 : 16;
			int64_t *grown = realloc(v->steps, cap * sizeof(*grown));

			if (!grown)
				return -ENOMEM;
			v->steps = grown;
			v->cap = cap;
		}
	}
	s = v->steps + v->head;
	memmove(s + lo + 1, s + lo, (v->n - lo) * sizeof(*s));
	s[lo] = step;
	v->n++;
	return 0;
}

/*
 * Takes the oldest step that is neither keep_a nor keep_b off the list:
 * sorted, so it is one of the first three. Returns -1 if there is none.
 */
static int64_t versions_pop_oldest(struct mn_ckptdir_versions *v, int64_t keep_a, int64_t keep_b)
{
	int64_t *s = v->steps + v->head, victim;
	size_t i = 0;

	while (i < v->n && (s[i] == keep_a || s[i] == keep_b))
		i++;
	if (i == v->n)
		return -1;
	victim = s[i];
	/* What it skipped moves up one place, so the front is what goes. */
	memmove(s + 1, s, i * sizeof(*s));
	v->head++;
	v->n--;
	return victim;
}

/* checkpoint.json naming latest_step as latest, and the newest files of the list. */
static int write_index(const struct mn_ckptdir_versions *v, int64_t latest_step, char *err,
                       size_t errlen)
{
	cJSON *root = cJSON_CreateObject(), *all = cJSON_CreateArray();
	const int64_t *s = v->steps + v->head;
	size_t first = v->n > INDEX_MAX_FILES ? v->n - INDEX_MAX_FILES : 0;
	char latest[MN_CKPT_MAX_NAME], name[MN_CKPT_MAX_NAME];
	struct iovec iov[2];
	char *text = NULL;
	int rc;

	if (mn_ckptdir_filename(v->prefix, latest_step, latest, sizeof(latest)) < 0) {
		mn_errf(err, errlen, "%s: checkpoint name too long", v->dir);
		cJSON_Delete(root);
		cJSON_Delete(all);
		return -ENAMETOOLONG;
	}
	if (!root || !all || !mn_json_add(root, "latest", cJSON_CreateString(latest))) {
		cJSON_Delete(all);
		goto nomem;
	}
	/* add_item frees all if it fails, so from here root owns it either way. */
	if (!mn_json_add(root, "all", all))
		goto nomem;
	/* latest is in "all" even when it is older than the newest others. */
	if (first > 0 && latest_step < s[first] &&
	    !cJSON_AddItemToArray(all, cJSON_CreateString(latest)))
		goto nomem;
	for (size_t i = first; i < v->n; i++) {
		cJSON *f;

		mn_ckptdir_filename(v->prefix, s[i], name, sizeof(name));
		f = cJSON_CreateString(name);
		if (!f || !cJSON_AddItemToArray(all, f)) {
			cJSON_Delete(f);
			goto nomem;
		}
	}
	text = cJSON_PrintUnformatted(root);
	if (!text)
		goto nomem;
	iov[0].iov_base = text;
	iov[0].iov_len = strlen(text);
	iov[1].iov_base = "\n";
	iov[1].iov_len = 1;
	rc = mn_write_atomic(v->dir, MN_CKPTDIR_INDEX, iov, 2, 0644, err, errlen);
	free(text);
	cJSON_Delete(root);
	return rc;
nomem:
	cJSON_Delete(root);
	mn_errf(err, errlen, "%s/%s: out of memory", v->dir, MN_CKPTDIR_INDEX);
	return -ENOMEM;
}

/* Deletes the checkpoint file of step; one that is already gone is not an error. */
static int remove_step(const struct mn_ckptdir_versions *v, int64_t step, char *name, size_t len,
                       char *err, size_t errlen)
{
	char path[PATH_MAX];
	int w;

	if (mn_ckptdir_filename(v->prefix, step, name, len) < 0)
		return -ENAMETOOLONG;
	w = snprintf(path, sizeof(path), "%s/%s", v->dir, name);
	if (w < 0 || (size_t)w >= sizeof(path))
		return -ENAMETOOLONG;
	if (unlink(path) < 0 && errno != ENOENT) {
		int rc = -errno;

		mn_errf(err, errlen, "%s: cannot remove: %s", path, strerror(-rc));
		return rc;
	}
	return 0;
}

/*
 * A full disk had room for step's file but not for the index that names it
 * (its temporary needs a page more). The file is in place and durable, so
 * it is the newest good checkpoint now: the others go, the *ndrop that
 * retention drops anyway first (gone, oldest first; *ndrop counts those
 * left), then the oldest, the previous latest included, until the index
 * fits. Returns write_index's last status.
 */
static int room_for_index(struct mn_ckptdir_versions *v, int64_t step, int64_t *gone, size_t *ndrop,
                          char *err, size_t errlen)
{
	int rc = -ENOSPC;

	while (rc == -ENOSPC) {
		char name[MN_CKPT_MAX_NAME], rerr[MN_ERRLEN];
		int64_t victim;

		if (*ndrop > 0) {
			victim = gone[0];
			memmove(gone, gone + 1, --*ndrop * sizeof(*gone));
		} else {
			victim = versions_pop_oldest(v, step, step);
			if (victim < 0)
				return rc;
		}
		if (remove_step(v, victim, name, sizeof(name), rerr, sizeof(rerr)) < 0) {
			/* Still there: listed again, and no room made; the error is the disk's. */
			(void)versions_insert(v, victim);
			mn_log(MN_LOG_WARN, "disk full: %s", rerr);
			return rc;
		}
		mn_log_fields(
		    MN_LOG_WARN, "disk full: removed an older checkpoint to make room",
		    (struct mn_log_field[]){MN_F_INT("step", step), MN_F_STR("removed", name)}, 2);
		rc = write_index(v, step, err, errlen);
	}
	return rc;
}

int mn_ckptdir_versions_publish(struct mn_ckptdir_versions *v, int64_t step, size_t max_to_keep,
                                char *err, size_t errlen)
{
	char name[MN_CKPT_MAX_NAME], path[PATH_MAX];
	struct stat st;
	int rc, w;

	if (mn_ckptdir_filename(v->prefix, step, name, sizeof(name)) < 0) {
		mn_errf(err, errlen, "%s: checkpoint name too long", v->dir);
		return -ENAMETOOLONG;
	}
	/* An index must never point at a file that is not there. */
	w = snprintf(path, sizeof(path), "%s/%s", v->dir, name);
	if (w < 0 || (size_t)w >= sizeof(path) || lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
		mn_errf(err, errlen, "%s: not found among the checkpoints of %s", path, v->dir);
		return -ENOENT;
	}
	/* Files a keep-all run forgot are retention's again once it keeps fewer. */
	if (v->forgot_old && max_to_keep != 0) {
		rc = versions_scan(v, err, errlen);
		if (rc < 0)
			return rc;
	}
	if (versions_insert(v, step) < 0) {
		mn_errf(err, errlen, "%s: out of memory", v->dir);
		return -ENOMEM;
	}
	/*
	 * Keep latest plus the newest others up to max_to_keep in total: latest
	 * is normally the newest, but after resuming from an older file it is
	 * not, and it must survive anyway. Taken off the list first, so that
	 * the index stops listing them before they go and readers never follow
	 * it to a gap.
	 */
	size_t drop = max_to_keep != 0 && v->n > max_to_keep ? v->n - max_to_keep : 0;
	int64_t *gone = NULL;

	if (drop > 0 && !(gone = malloc(drop * sizeof(*gone)))) {
		mn_errf(err, errlen, "%s: out of memory", v->dir);
		return -ENOMEM;
	}
	for (size_t i = 0; i < drop; i++)
		gone[i] = versions_pop_oldest(v, step, step);
	rc = write_index(v, step, err, errlen);
	if (rc == -ENOSPC && max_to_keep != 0)
		rc = room_for_index(v, step, gone, &drop, err, errlen);
	if (rc < 0) {
		/* Still on disk, so still retention's: listed again (room was just made). */
		for (size_t i = 0; i < drop; i++)
			(void)versions_insert(v, gone[i]);
		free(gone);
		return rc;
	}
	v->latest = step;
	/* Keep-all deletes nothing, so only the files the index lists are worth remembering. */
	if (max_to_keep == 0 && v->n > 2 * INDEX_MAX_FILES) {
		while (v->n > INDEX_MAX_FILES)
			versions_pop_oldest(v, step, step);
		v->forgot_old = true;
	}
	/*
	 * The new checkpoint is published whatever happens here: a file
	 * retention cannot remove is worth a warning, not a failed checkpoint.
	 * It is still there, so it goes back on the list and the next publish
	 * tries again, as a listing of the directory would have.
	 */
	for (size_t i = 0; i < drop; i++) {
		char gname[MN_CKPT_MAX_NAME], gerr[MN_ERRLEN];

		if (remove_step(v, gone[i], gname, sizeof(gname), gerr, sizeof(gerr)) < 0) {
			mn_log(MN_LOG_WARN, "retention: %s", gerr);
			(void)versions_insert(v, gone[i]);
		}
	}
	free(gone);
	return 0;
}

int mn_ckptdir_versions_free_oldest(struct mn_ckptdir_versions *v, int64_t keep, char *name,
                                    size_t len, char *err, size_t errlen)
{
	int64_t victim;
	int rc;

	if (v->forgot_old) {
		rc = versions_scan(v, err, errlen);
		if (rc < 0)
			return rc;
	}
	victim = versions_pop_oldest(v, v->latest, keep);
	if (victim < 0)
		return 0;
	/*
	 * The index is rewritten first when it can be; on a full disk it may
	 * not, and readers tolerate a listed file that vanished.
	 */
	if (v->latest >= 0) {
		char ierr[MN_ERRLEN];

		(void)write_index(v, v->latest, ierr, sizeof(ierr));
	}
	rc = remove_step(v, victim, name, len, err, errlen);
	if (rc < 0) {
		/* Still there: still a candidate, for retention or the next full disk. */
		(void)versions_insert(v, victim);
		return rc;
	}
	return 1;
}

int mn_ckptdir_publish_index(const char *dir, const char *prefix, const char *latest,
                             size_t max_to_keep, char *err, size_t errlen)
{
	struct mn_ckptdir_versions *v;
	int64_t step;
	int rc;

	if (!plain_name(latest) || !mn_ckptdir_filename_parse(prefix, latest, &step)) {
		mn_errf(err, errlen, "%s: latest \"%s\" is not a plain checkpoint file name",
		        dir ? dir : "(null)", latest ? latest : "(null)");
		return -EINVAL;
	}
	rc = mn_ckptdir_versions_open(dir, prefix, -1, &v, err, errlen);
	if (rc < 0)
		return rc;
	rc = mn_ckptdir_versions_publish(v, step, max_to_keep, err, errlen);
	mn_ckptdir_versions_free(v);
	return rc;
}

/* Absent, or an array of strings. */
static bool names_array(const cJSON *all)
{
	const cJSON *v;
	bool ok = !all || cJSON_IsArray(all);

	cJSON_ArrayForEach(v, all) ok = ok && cJSON_IsString(v);
	return ok;
}

int mn_ckptdir_index_latest(const char *dir, char *latest, size_t len, char *err, size_t errlen)
{
	char path[PATH_MAX], *text = NULL;
	const cJSON *l, *all;
	const struct mn_json_member members[] = {
	    {"latest", cJSON_String, true, &l},
	    {"all", 0, false, &all},
	};
	struct mn_json_error e;
	const char *bad = NULL;
	cJSON *root = NULL;
	size_t tlen = 0;
	int rc, w;

	if (!dir || !latest || len == 0) {
		mn_errf(err, errlen, "mn_ckptdir_index_latest: invalid arguments");
		return -EINVAL;
	}
	w = snprintf(path, sizeof(path), "%s/%s", dir, MN_CKPTDIR_INDEX);
	if (w < 0 || (size_t)w >= sizeof(path)) {
		mn_errf(err, errlen, "%s/%s: path too long", dir, MN_CKPTDIR_INDEX);
		return -ENAMETOOLONG;
	}
	rc = mn_open_regular(path, MN_OPEN_NOFOLLOW, NULL, err, errlen);
	if (rc >= 0) {
		int fd = rc;

		rc = mn_read_fd(fd, path, INDEX_MAX_BYTES, &text, &tlen, err, errlen);
		close(fd);
	}
	if (rc == -EFBIG || rc == -ELOOP)
		return -EINVAL;
	if (rc < 0)
		return rc;
	rc = mn_json_parse(text, tlen, 0, &root, &e);
	if (rc == -ENOMEM) {
		mn_errf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	if (rc < 0 && e.rule == MN_JSON_RULE_NUL) {
		mn_errf(err, errlen, "%s: contains a NUL byte", path);
		goto out;
	}
	if (rc < 0 || !cJSON_IsObject(root)) {
		mn_errf(err, errlen, "%s: not a JSON object", path);
		rc = -EINVAL;
		goto out;
	}
	rc = -EINVAL;
	if (mn_json_members(root, members, 2, true, NULL, &bad) < 0 ||
	    !plain_name(l->valuestring) || !names_array(all)) {
		if (bad && strcmp(bad, "all") == 0)
			mn_errf(err, errlen, "%s: \"all\" must be an array of file names", path);
		else if (bad || !plain_name(l->valuestring))
			mn_errf(err, errlen, "%s: \"latest\" must be one plain file name", path);
		else
			mn_errf(err, errlen, "%s: \"all\" must be an array of file names", path);
		goto out;
	}
	if (strlen(l->valuestring) >= len) {
		mn_errf(err, errlen, "%s: latest file name too long", path);
		rc = -ENAMETOOLONG;
		goto out;
	}
	memcpy(latest, l->valuestring, strlen(l->valuestring) + 1);
	rc = 0;
out:
	cJSON_Delete(root);
	free(text);
	return rc;
}

/* The holder's pid as it wrote it, for the message; "unknown" if unreadable. */
static void lock_holder(int fd, char *buf, size_t len)
{
	char text[32];
	ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
	long pid;
	char *end;

	snprintf(buf, len, "unknown");
	if (n <= 0)
		return;
	text[n] = '\0';
	pid = strtol(text, &end, 10);
	if (end != text && pid > 0 && (*end == '\n' || *end == '\0'))
		snprintf(buf, len, "%ld", pid);
}

int mn_ckptdir_lock(const char *dir, char *err, size_t errlen)
{
	char path[PATH_MAX], holder[32], pid[32];
	struct stat st;
	int fd, rc, w;

	w = snprintf(path, sizeof(path), "%s/%s", dir, MN_CKPTDIR_LOCK);
	if (w < 0 || (size_t)w >= sizeof(path)) {
		mn_errf(err, errlen, "%s: path too long", dir);
		return -ENAMETOOLONG;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0644);
	if (fd < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot open the lock file: %s", path, strerror(-rc));
		return rc;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		mn_errf(err, errlen, "%s: not a regular file", path);
		return -EINVAL;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = -errno;
		if (rc == -EWOULDBLOCK) {
			lock_holder(fd, holder, sizeof(holder));
			mn_errf(err, errlen,
			        "%s is in use by another mnistd (pid %s holds %s); stop it or set "
			        "another checkpoint.dir",
			        dir, holder, path);
		} else {
			mn_errf(err, errlen, "%s: cannot lock: %s", path, strerror(-rc));
		}
		close(fd);
		return rc;
	}
	w = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)w, 0) != w) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot write the pid: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	return fd;
}

int mn_ckptdir_check_writable(const char *dir, char *err, size_t errlen)
{
	char path[PATH_MAX];
	int fd, rc, w;

	/* A ".tmp" dot-file: readers ignore it, and a crash leaves it to the stale-temp sweep. */
	w = snprintf(path, sizeof(path), "%s/.mnistd-probe-%ld.tmp", dir, (long)getpid());
	if (w < 0 || (size_t)w >= sizeof(path)) {
		mn_errf(err, errlen, "%s: path too long", dir);
		return -ENAMETOOLONG;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
	if (fd < 0) {
		rc = -errno;
		mn_errf(err, errlen,
		        "%s is not writable (%s): no checkpoint could be published there", dir,
		        strerror(-rc));
		return rc;
	}
	close(fd);
	if (unlink(path) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot remove %s: %s", dir, path, strerror(-rc));
		return rc;
	}
	return 0;
}
