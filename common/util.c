/* util.c - see util.h. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

void mn_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void mn_errprefix(char *err, size_t errlen, const char *fmt, ...)
{
	char prefix[MN_ERRLEN], old[MN_ERRLEN];
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	snprintf(old, sizeof(old), "%s", err);
	snprintf(err, errlen, "%s: %s", prefix, old);
}

int64_t mn_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t mn_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void mn_time_rfc3339_ns(int64_t ns, char buf[MN_TIMELEN])
{
	time_t secs = (time_t)(ns / 1000000000);
	int ms = (int)((ns % 1000000000) / 1000000);
	struct tm tm;

	if (ms < 0) {
		ms += 1000;
		secs -= 1;
	}
	gmtime_r(&secs, &tm);
	size_t n = strftime(buf, MN_TIMELEN, "%Y-%m-%dT%H:%M:%S", &tm);

	snprintf(buf + n, MN_TIMELEN - n, ".%03dZ", ms % 1000);
}

void mn_time_rfc3339(char buf[MN_TIMELEN])
{
	mn_time_rfc3339_ns(mn_realtime_ns(), buf);
}

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s)
{
	size_t n = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (n == 0 || s[0] > 0xF4)
		return 0;
	cp = s[0] & (0x7F >> n);
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3F);
	}
	/* Overlong forms, surrogates and beyond U+10FFFF are not UTF-8. */
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return n;
}

char *mn_escape(const char *src, char *dst, size_t dstlen)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t o = 0;

	if (!dst || dstlen == 0)
		return dst;
	while (*s) {
		char piece[8];
		size_t n = utf8_seq(s), plen;

		if (n == 1 && *s >= 0x20 && *s != 0x7F) {
			piece[0] = (char)*s;
			plen = 1;
		} else if (n == 1) {
			plen = (size_t)snprintf(piece, sizeof(piece), "%s",
			                        *s == '\n'   ? "\\n"
			                        : *s == '\r' ? "\\r"
			                        : *s == '\t' ? "\\t"
			                                     : "");
			if (plen == 0)
				plen = (size_t)snprintf(piece, sizeof(piece), "\\x%02x", *s);
		} else if (n == 2 && s[0] == 0xC2 && s[1] < 0xA0) {
			plen = (size_t)snprintf(piece, sizeof(piece), "\\u%04x", s[1]);
		} else if (n == 0) {
			n = 1;
			plen = (size_t)snprintf(piece, sizeof(piece), "\\x%02x", *s);
		} else {
			memcpy(piece, s, n);
			plen = n;
		}
		if (o + plen >= dstlen)
			break;
		memcpy(dst + o, piece, plen);
		o += plen;
		s += n;
	}
	dst[o] = '\0';
	return dst;
}

bool mn_errno_is_resource(int rc)
{
	return rc == -ENOMEM || rc == -EAGAIN || rc == -EMFILE || rc == -ENFILE;
}

const char *mn_basename(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

const char *mn_split_path(const char *path, char *dir, size_t dirlen, char *err, size_t errlen)
{
	const char *slash = strrchr(path, '/');
	size_t n;

	if (!*path || (slash && !slash[1])) {
		mn_errf(err, errlen, "\"%s\" does not name a file", path);
		return NULL;
	}
	if (!slash) {
		snprintf(dir, dirlen, ".");
		return path;
	}
	n = slash == path ? 1 : (size_t)(slash - path);
	if (n >= dirlen) {
		mn_errf(err, errlen, "%s: path too long", path);
		return NULL;
	}
	memcpy(dir, path, n);
	dir[n] = '\0';
	return slash + 1;
}

static int join_path(char *out, size_t len, const char *dir, const char *name, const char *pre,
                     const char *post)
{
	int n = snprintf(out, len, "%s/%s%s%s", dir, pre, name, post);

	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

int mn_write_iov(int fd, const struct iovec *iov, int iovcnt)
{
	for (int i = 0; i < iovcnt; i++) {
		const char *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;

		while (left > 0) {
			ssize_t w = write(fd, p, left);

			if (w < 0) {
				if (errno == EINTR)
					continue;
				return -errno;
			}
			p += w;
			left -= (size_t)w;
		}
	}
	return 0;
}

int mn_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = -errno;
	close(fd);
	return rc;
}

/* What a file that is not a regular one is, for messages. */
static const char *file_kind(mode_t m)
{
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISSOCK(m))
		return "a socket";
	if (S_ISCHR(m))
		return "a character device";
	if (S_ISBLK(m))
		return "a block device";
	if (S_ISLNK(m))
		return "a symbolic link";
	return "of an unknown type";
}

/*
 * Moves tmp to final without ever replacing a file there: -EEXIST if one
 * exists. renameat2(RENAME_NOREPLACE) where the filesystem has it (EINVAL
 * where it does not); else link(2), which fails with EEXIST too, and the
 * temporary's name removed; else, on a filesystem without hard links, a
 * look right before a plain rename, which narrows the race to that gap.
 */
static int publish_noreplace(const char *tmp, const char *final)
{
	struct stat st;

	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	if (link(tmp, final) == 0) {
		(void)unlink(tmp);
		return 0;
	}
	if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOSYS)
		return -errno;
	if (lstat(final, &st) == 0)
		return -EEXIST;
	return rename(tmp, final) < 0 ? -errno : 0;
}

int mn_write_atomic_opts(const char *dir, const char *name, const struct iovec *iov, int iovcnt,
                         const struct mn_write_opts *o, char *err, size_t errlen)
{
	static atomic_uint seq;
	char tmp[PATH_MAX], final[PATH_MAX], suffix[48];
	bool noreplace = o->flags & MN_WRITE_NOREPLACE;
	/* fchmod the temporary file to keep: the mode asked for, or the replaced file's. */
	bool set_mode = o->flags & MN_WRITE_EXACT_MODE;
	mode_t keep = o->mode & 07777;
	struct stat st;
	int fd = -1, rc;

	if (!dir || !*dir) {
		mn_errf(err, errlen, "%s: no directory to write it into", name ? name : "(null)");
		return -EINVAL;
	}
	snprintf(suffix, sizeof(suffix), ".%ld-%u.tmp", (long)getpid(), atomic_fetch_add(&seq, 1));
	if (join_path(tmp, sizeof(tmp), dir, name, ".", suffix) < 0 ||
	    join_path(final, sizeof(final), dir, name, "", "") < 0) {
		mn_errf(err, errlen, "%s/%s: path too long", dir, name);
		return -ENAMETOOLONG;
	}
	/*
	 * rename() replaces whatever the name holds: /dev/null would become a
	 * regular file, a FIFO or a symlink would vanish. Only a regular file
	 * is ours to replace.
	 */
	if (lstat(final, &st) == 0) {
		if (!S_ISREG(st.st_mode)) {
			mn_errf(err, errlen,
			        "%s: exists and is %s, not a regular file: not replaced", final,
			        file_kind(st.st_mode));
			return -EEXIST;
		}
		if (noreplace) {
			mn_errf(err, errlen, "%s: exists: not replaced", final);
			return -EEXIST;
		}
		/* Its permission bits, not the set-id ones: the new file has a new owner. */
		if (!set_mode)
			keep = st.st_mode & 0777;
		set_mode = true;
	}
	/*
	 * Messages name the final file, not the temporary: its name changes at
	 * every write, and a caller that logs a repeated failure once compares them.
	 *
	 * A crashed writer's temp is removed and ours created exclusively, so a
	 * symlink or hard link planted under the temp name is replaced, never
	 * written through (truncating whatever it points to). Should the unlink
	 * fail, the exclusive open reports why.
	 */
	if (o->temp_hook)
		o->temp_hook(tmp, o->temp_arg);
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, o->mode);
	if (fd < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot create its temporary file: %s", final,
		        strerror(-rc));
		goto fail;
	}
	/* fchmod, unlike open, is not subject to the umask: these bits exactly. */
	if (set_mode && fchmod(fd, keep) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot set its mode %04o: %s", final, (unsigned)keep,
		        strerror(-rc));
		goto fail;
	}
	rc = mn_write_iov(fd, iov, iovcnt);
	if (rc < 0) {
		mn_errf(err, errlen, "%s: writing its temporary file failed: %s", final,
		        strerror(-rc));
		goto fail;
	}
	if (!(o->flags & MN_WRITE_NO_SYNC) && fsync(fd) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: fsync of its temporary file failed: %s", final,
		        strerror(-rc));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		rc = -errno;
		mn_errf(err, errlen, "%s: closing its temporary file failed: %s", final,
		        strerror(-rc));
		goto fail;
	}
	fd = -1;
	rc = noreplace ? publish_noreplace(tmp, final) : (rename(tmp, final) < 0 ? -errno : 0);
	if (rc == -EEXIST && noreplace) {
		mn_errf(err, errlen, "%s: exists (it appeared while being written): not replaced",
		        final);
		goto fail;
	}
	if (rc < 0) {
		mn_errf(err, errlen, "%s: renaming its temporary file into place failed: %s", final,
		        strerror(-rc));
		goto fail;
	}
	if (o->temp_hook)
		o->temp_hook(NULL, o->temp_arg);
	rc = o->flags & MN_WRITE_NO_SYNC ? 0 : mn_fsync_dir(dir);
	if (rc < 0) {
		/* The file is complete under its final name; only its durability is in doubt. */
		mn_errf(err, errlen, "%s: directory fsync failed: %s", dir, strerror(-rc));
		return rc;
	}
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	if (o->temp_hook)
		o->temp_hook(NULL, o->temp_arg);
	return rc;
}

int mn_write_atomic(const char *dir, const char *name, const struct iovec *iov, int iovcnt,
                    unsigned mode, char *err, size_t errlen)
{
	return mn_write_atomic_opts(dir, name, iov, iovcnt, &(struct mn_write_opts){.mode = mode},
	                            err, errlen);
}

/* Unlinks the entries of dir that stale(entry name, arg) picks; the count removed or -errno. */
static int remove_temps(const char *dir, bool (*stale)(const char *name, const void *arg),
                        const void *arg, char *err, size_t errlen)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int removed = 0;

	if (!d) {
		int rc = -errno;

		mn_errf(err, errlen, "%s: cannot open directory: %s", dir, strerror(-rc));
		return rc;
	}
	while ((e = readdir(d)) != NULL) {
		char path[PATH_MAX];

		if (!stale(e->d_name, arg) ||
		    join_path(path, sizeof(path), dir, e->d_name, "", "") < 0)
			continue;
		if (unlink(path) == 0)
			removed++;
	}
	closedir(d);
	return removed;
}

/* Any ".*.tmp": a directory only mnistd writes. */
static bool any_temp(const char *name, const void *arg)
{
	size_t len = strlen(name);

	(void)arg;
	return name[0] == '.' && len > 5 && strcmp(name + len - 4, ".tmp") == 0;
}

int mn_remove_stale_temps(const char *dir, char *err, size_t errlen)
{
	return remove_temps(dir, any_temp, NULL, err, errlen);
}

/* The writer's pid in a temporary name "<pid>-<n>.tmp" (after ".<name>."), or 0. */
static long temp_pid(const char *tail)
{
	char *end;
	long pid;

	if (*tail < '1' || *tail > '9')
		return 0;
	errno = 0;
	pid = strtol(tail, &end, 10);
	if (errno || pid <= 0 || pid > INT_MAX || *end != '-' || end[1] < '0' || end[1] > '9')
		return 0;
	for (end++; *end >= '0' && *end <= '9'; end++)
		;
	return strcmp(end, ".tmp") == 0 ? pid : 0;
}

/* ".<of>.<pid>-<n>.tmp" of this process or of one that is gone. */
static bool own_dead_temp(const char *name, const void *arg)
{
	const char *of = arg;
	size_t nlen = strlen(of);
	long pid;

	if (name[0] != '.' || strncmp(name + 1, of, nlen) != 0 || name[1 + nlen] != '.')
		return false;
	pid = temp_pid(name + 2 + nlen);
	/* kill(pid, 0): ESRCH is gone; EPERM is alive, another user's. */
	return pid != 0 && (pid == (long)getpid() || (kill((pid_t)pid, 0) < 0 && errno == ESRCH));
}

int mn_remove_stale_temps_of(const char *dir, const char *name, char *err, size_t errlen)
{
	return remove_temps(dir, own_dead_temp, name, err, errlen);
}

int mn_mkdir_p(const char *dir, unsigned mode, char *err, size_t errlen)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(path)) {
		mn_errf(err, errlen, "invalid directory path \"%s\"", dir);
		return -EINVAL;
	}
	memcpy(path, dir, len + 1);
	for (char *p = path + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;

		*p = '\0';
		if (mkdir(path, mode) < 0 && errno != EEXIST) {
			int rc = -errno;

			mn_errf(err, errlen, "%s: cannot create directory: %s", path,
			        strerror(-rc));
			return rc;
		}
		*p = saved;
		if (saved == '\0')
			break;
	}
	struct stat st;

	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		mn_errf(err, errlen, "%s: not a directory", dir);
		return -ENOTDIR;
	}
	return 0;
}

/* Grows *buf to hold want data bytes and a NUL; -ENOMEM leaves it as it was. */
static int grow(char **buf, size_t *cap, size_t want)
{
	char *n;

	if (want <= *cap && *buf)
		return 0;
	n = realloc(*buf, want + 1);
	if (!n)
		return -ENOMEM;
	*buf = n;
	*cap = want;
	return 0;
}

int mn_read_fd_reuse(int fd, const char *name, size_t max, char **buf, size_t *cap, size_t *len,
                     char *err, size_t errlen)
{
	size_t used = 0, want = 65536;
	struct stat st;

	if (max > SIZE_MAX / 4)
		max = SIZE_MAX / 4; /* so that max + 1 and doubling never wrap */
	/* A regular file says its size: one allocation, and one more read to see the end. */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
		want = (size_t)st.st_size + 1;
	if (want > max + 1)
		want = max + 1;
	if (grow(buf, cap, want < *cap ? *cap : want) < 0)
		goto nomem;
	for (;;) {
		if (used > max) {
			mn_errf(err, errlen, "%s: larger than %zu bytes", name, max);
			return -EFBIG;
		}
		/* One byte past max tells "exactly max" from "too large". */
		if (used == *cap && grow(buf, cap, *cap * 2 > max ? max + 1 : *cap * 2) < 0)
			goto nomem;
		ssize_t r = read(fd, *buf + used, *cap - used);

		if (r < 0) {
			int rc = -errno;

			if (errno == EINTR)
				continue;
			mn_errf(err, errlen, "%s: read failed: %s", name, strerror(-rc));
			return rc;
		}
		if (r == 0)
			break;
		used += (size_t)r;
	}
	(*buf)[used] = '\0';
	*len = used;
	return 0;
nomem:
	mn_errf(err, errlen, "%s: out of memory", name);
	return -ENOMEM;
}

int mn_read_fd(int fd, const char *name, size_t max, char **buf, size_t *len, char *err,
               size_t errlen)
{
	char *data = NULL;
	size_t cap = 0;
	int rc = mn_read_fd_reuse(fd, name, max, &data, &cap, len, err, errlen);

	if (rc < 0) {
		free(data);
		return rc;
	}
	*buf = data;
	return 0;
}

/* Clears O_NONBLOCK again: it was only for the open, reads and writes want to wait. */
static void set_blocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl >= 0 && (fl & O_NONBLOCK))
		(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

static int open_failed(const char *path, unsigned flags, char *err, size_t errlen)
{
	int rc = -errno;

	if (rc == -ELOOP && (flags & MN_OPEN_NOFOLLOW))
		mn_errf(err, errlen, "%s: is a symbolic link, which is not followed here", path);
	else
		mn_errf(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
	return rc;
}

int mn_open_regular(const char *path, unsigned flags, struct stat *st, char *err, size_t errlen)
{
	int oflags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
	struct stat sb;
	int fd;

	if (flags & MN_OPEN_NOFOLLOW)
		oflags |= O_NOFOLLOW;
	/*
	 * Look first, so a device node is not even opened (opening some has
	 * side effects); the fstat below is what counts, since the name may
	 * change in between.
	 */
	if (((flags & MN_OPEN_NOFOLLOW) ? lstat(path, &sb) : stat(path, &sb)) == 0 &&
	    !S_ISREG(sb.st_mode)) {
		if (S_ISLNK(sb.st_mode)) {
			errno = ELOOP;
			return open_failed(path, flags, err, errlen);
		}
		mn_errf(err, errlen, "%s: not a regular file (%s)", path, file_kind(sb.st_mode));
		return -EINVAL;
	}
	fd = open(path, oflags);
	if (fd < 0)
		return open_failed(path, flags, err, errlen);
	if (fstat(fd, &sb) < 0) {
		int rc = -errno;

		mn_errf(err, errlen, "%s: cannot stat: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	if (!S_ISREG(sb.st_mode)) {
		mn_errf(err, errlen, "%s: not a regular file (%s)", path, file_kind(sb.st_mode));
		close(fd);
		return -EINVAL;
	}
	set_blocking(fd);
	if (st)
		*st = sb;
	return fd;
}

/*
 * Read through /proc, which reopens the same file even if it has been
 * renamed (fd itself is open for writing only); a file that cannot be read
 * is taken as whole.
 */
bool mn_fd_ends_mid_line(int fd)
{
	char proc[64], last = '\n';
	struct stat st;
	int rfd;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
		return false;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	rfd = open(proc, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (rfd < 0)
		return false;
	if (pread(rfd, &last, 1, st.st_size - 1) != 1)
		last = '\n';
	close(rfd);
	return last != '\n';
}

int mn_path_names_fd(const char *path, int fd)
{
	struct stat ps, fs;

	if (fstat(fd, &fs) < 0)
		return -errno;
	if (stat(path, &ps) < 0)
		return errno == ENOENT ? 0 : -errno;
	return ps.st_dev == fs.st_dev && ps.st_ino == fs.st_ino;
}

int mn_open_append(const char *path, unsigned mode, char *err, size_t errlen)
{
	struct stat st;
	int fd, rc;

	/* Non-blocking: a FIFO without a reader fails (ENXIO) instead of waiting for one. */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);
	if (fd < 0) {
		rc = -errno;
		if (rc == -ENXIO)
			mn_errf(err, errlen, "%s: not a regular file (a FIFO or socket)", path);
		else
			mn_errf(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		return rc == -ENXIO ? -EINVAL : rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot stat: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode)) {
		mn_errf(err, errlen, "%s: not a regular file (%s)", path, file_kind(st.st_mode));
		close(fd);
		return -EINVAL;
	}
	set_blocking(fd);
	return fd;
}

int mn_read_file(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen)
{
	int fd = mn_open_regular(path, 0, NULL, err, errlen);
	int rc;

	if (fd < 0)
		return fd;
	rc = mn_read_fd(fd, path, max, buf, len, err, errlen);
	close(fd);
	return rc;
}

void mn_printable(char *dst, size_t len, const char *src, size_t max)
{
	size_t i = 0;

	if (len == 0)
		return;
	for (; src && src[i] && i < max && i + 4 < len; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	if (src && src[i] && i + 4 < len) {
		memcpy(dst + i, "...", 3);
		i += 3;
	}
	dst[i] = '\0';
}

/*
 * Filesystems whose inotify sees only this machine's changes (network and
 * cluster filesystems) or none at all (FUSE): values of statfs' f_type.
 */
static const struct {
	unsigned long magic;
	const char *name;
} remote_fs[] = {
    {0x6969, "nfs"},          {0x517B, "smb"},        {0xFF534D42, "cifs"}, {0xFE534D42, "smb2"},
    {0x65735546, "fuse"},     {0x73757245, "coda"},   {0x5346414F, "afs"},  {0x6B414653, "kafs"},
    {0x00C36400, "ceph"},     {0x01021997, "9p"},     {0x01161970, "gfs2"}, {0x7461636F, "ocfs2"},
    {0x0000564C, "ncp"},      {0x0BD00BD0, "lustre"}, {0x47504653, "gpfs"}, {0x786F4256, "vboxsf"},
    {0x20030528, "orangefs"},
};

const char *mn_fs_remote_name(const char *path)
{
	struct statfs sfs;

	if (statfs(path, &sfs) < 0)
		return NULL;
	for (size_t i = 0; i < sizeof(remote_fs) / sizeof(remote_fs[0]); i++)
		if ((unsigned long)(unsigned int)sfs.f_type == remote_fs[i].magic)
			return remote_fs[i].name;
	return NULL;
}

/* A non-negative decimal int in the environment variable name, else -1. */
static int env_count(const char *name)
{
	const char *v = getenv(name);
	char *end;
	long n;

	if (!v || !*v)
		return -1;
	errno = 0;
	n = strtol(v, &end, 10);
	return errno == 0 && *end == '\0' && n >= 0 && n <= INT_MAX ? (int)n : -1;
}

int mn_launched_rank(int *size)
{
	static const char *const ranks[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
	static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
	bool launched = false;
	int rank = -1;

	*size = 0;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		int n = env_count(sizes[i]);

		launched = launched || getenv(sizes[i]);
		if (*size == 0 && n > 0)
			*size = n;
	}
	for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
		launched = launched || getenv(ranks[i]);
		if (rank < 0)
			rank = env_count(ranks[i]);
	}
	if (!launched)
		return -1;
	/* A launcher that says no usable rank still started this process: as the first. */
	return rank < 0 ? 0 : rank;
}
