/* ckptdir.c - see ckptdir.h. */
#include "ckptdir.h"

#include "json.h"
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

static int write_index(const char *dir, const char *latest, const struct mn_ckptdir_entry *ents,
                       const bool *keep, size_t n, char *err, size_t errlen)
{
	cJSON *root = cJSON_CreateObject(), *all = cJSON_CreateArray();
	struct iovec iov[2];
	char *s = NULL;
	int rc;

	if (!root || !all || !mn_json_add(root, "latest", cJSON_CreateString(latest))) {
		cJSON_Delete(all);
		goto nomem;
	}
	/* add_item frees all if it fails, so from here root owns it either way. */
	if (!mn_json_add(root, "all", all))
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		cJSON *f;

		if (!keep[i])
			continue;
		f = cJSON_CreateString(ents[i].name);
		if (!f || !cJSON_AddItemToArray(all, f)) {
			cJSON_Delete(f);
			goto nomem;
		}
	}
	s = cJSON_PrintUnformatted(root);
	if (!s)
		goto nomem;
	iov[0].iov_base = s;
	iov[0].iov_len = strlen(s);
	iov[1].iov_base = "\n";
	iov[1].iov_len = 1;
	rc = mn_write_atomic(dir, MN_CKPTDIR_INDEX, iov, 2, 0644, err, errlen);
	free(s);
	cJSON_Delete(root);
	return rc;
nomem:
	cJSON_Delete(root);
	mn_errf(err, errlen, "%s/%s: out of memory", dir, MN_CKPTDIR_INDEX);
	return -ENOMEM;
}

int mn_ckptdir_publish_index(const char *dir, const char *prefix, const char *latest,
                             size_t max_to_keep, char *err, size_t errlen)
{
	struct mn_ckptdir_entry *ents = NULL;
	bool *keep = NULL;
	size_t n = 0, li = SIZE_MAX, kept = 0;
	int rc, first = 0;

	if (!plain_name(latest)) {
		mn_errf(err, errlen, "%s: latest \"%s\" is not a plain file name",
		        dir ? dir : "(null)", latest ? latest : "(null)");
		return -EINVAL;
	}
	rc = mn_ckptdir_scan(dir, prefix, &ents, &n, err, errlen);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		if (strcmp(ents[i].name, latest) == 0)
			li = i;
	/* An index must never point at a file that is not there. */
	if (li == SIZE_MAX) {
		mn_errf(err, errlen, "%s/%s: not found among the checkpoints of %s", dir, latest,
		        dir);
		rc = -ENOENT;
		goto out;
	}
	keep = calloc(n + 1, sizeof(*keep));
	if (!keep) {
		mn_errf(err, errlen, "%s: out of memory", dir);
		rc = -ENOMEM;
		goto out;
	}
	/*
	 * Keep latest plus the newest others up to max_to_keep in total: latest
	 * is normally the newest, but after resuming from an older file it is
	 * not, and it must survive anyway.
	 */
	keep[li] = true;
	kept = 1;
	for (size_t i = n; i-- > 0;) {
		if (i == li)
			continue;
		if (max_to_keep != 0 && kept >= max_to_keep)
			break;
		keep[i] = true;
		kept++;
	}
	rc = write_index(dir, latest, ents, keep, n, err, errlen);
	if (rc < 0)
		goto out;
	/* Only after the index stops listing them, so readers never follow it to a gap. */
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX];
		int w;

		if (keep[i])
			continue;
		w = snprintf(path, sizeof(path), "%s/%s", dir, ents[i].name);
		if (w < 0 || (size_t)w >= sizeof(path))
			continue;
		if (unlink(path) < 0 && errno != ENOENT && first == 0) {
			first = -errno;
			mn_errf(err, errlen, "%s: cannot remove: %s", path, strerror(-first));
		}
	}
	rc = first;
out:
	free(keep);
	free(ents);
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
