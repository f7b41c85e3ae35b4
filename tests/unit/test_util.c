/* test_util.c - error messages, time stamps, durable writes, bounded reads. */
#include "util.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mn_test.h"

static char dir[MN_TEST_DIRLEN];

START_TEST(errf_and_prefix)
{
	char err[32];

	mn_errf(err, sizeof(err), "bad %s %d", "value", 7);
	ck_assert_str_eq(err, "bad value 7");
	mn_errprefix(err, sizeof(err), "file%d", 1);
	ck_assert_str_eq(err, "file1: bad value 7");
	/* Truncation keeps the buffer terminated. */
	mn_errf(err, sizeof(err), "%s", "0123456789012345678901234567890123456789");
	ck_assert_uint_eq(strlen(err), sizeof(err) - 1);
	mn_errf(NULL, 0, "ignored %d", 1);
}
END_TEST

START_TEST(rfc3339_format)
{
	char buf[MN_TIMELEN];
	regex_t re;

	mn_time_rfc3339_ns(0, buf);
	ck_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
	mn_time_rfc3339_ns(1764090245123456789LL, buf);
	ck_assert_str_eq(buf, "2025-11-25T17:04:05.123Z");
	mn_time_rfc3339(buf);
	ck_assert_int_eq(
	    regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
	            REG_EXTENDED | REG_NOSUB),
	    0);
	ck_assert_int_eq(regexec(&re, buf, 0, NULL, 0), 0);
	regfree(&re);
}
END_TEST

START_TEST(write_atomic_publishes_complete_file)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], *buf = NULL;
	struct iovec iov[2] = {{"hello ", 6}, {"world", 5}};
	struct stat st;
	size_t len;

	mn_test_tmpdir(dir, sizeof(dir));
	ck_assert_int_eq(mn_write_atomic(dir, "out.bin", iov, 2, 0640, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/out.bin", dir);
	ck_assert_int_eq(mn_read_file(path, 1024, &buf, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(len, 11);
	ck_assert_str_eq(buf, "hello world");
	free(buf);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777 & ~0640u, 0);
	/* No temporary file is left behind. */
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);
	/* Replacing keeps exactly one file with the new content. */
	iov[0] = (struct iovec){"bye", 3};
	ck_assert_int_eq(mn_write_atomic(dir, "out.bin", iov, 1, 0640, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_read_file(path, 1024, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "bye");
	free(buf);
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(write_atomic_failure_leaves_nothing)
{
	char err[MN_ERRLEN] = "", missing[PATH_MAX];
	struct iovec iov = {"x", 1};

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(missing, sizeof(missing), "%s/nope", dir);
	ck_assert_int_eq(mn_write_atomic(missing, "f", &iov, 1, 0644, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nope/f: cannot create its temporary file"));
	ck_assert_uint_eq(mn_test_count_entries(dir), 0);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(stale_temps_removed)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	const char *names[] = {".a.safetensors.tmp", ".b.tmp", "keep.tmp", ".keep",
	                       "c.safetensors"};

	mn_test_tmpdir(dir, sizeof(dir));
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		mn_test_write_file(path, NULL, 0);
	}
	ck_assert_int_eq(mn_remove_stale_temps(dir, err, sizeof(err)), 2);
	ck_assert_uint_eq(mn_test_count_entries(dir), 3);
	snprintf(path, sizeof(path), "%s/.b.tmp", dir);
	ck_assert_int_ne(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/nope", dir);
	ck_assert_int_eq(mn_remove_stale_temps(path, err, sizeof(err)), -ENOENT);
	mn_test_rmtree(dir);
}
END_TEST

/* A pid that no process has: a child's, once it has exited and been reaped. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(0);
	ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
	return pid;
}

/*
 * In a directory shared with other programs (node-exporter's), only this
 * name's temporaries, and only those whose writer is gone or is us.
 */
START_TEST(stale_temps_of_one_name_removed)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], names[10][64];
	long dead = dead_pid(), self = getpid(), parent = getppid();
	size_t n = 0;

	mn_test_tmpdir(dir, sizeof(dir));
	/* Removed: a dead writer's, and our own (we have not written yet). */
	snprintf(names[n++], sizeof(names[0]), ".m.prom.%ld-0.tmp", dead);
	snprintf(names[n++], sizeof(names[0]), ".m.prom.%ld-17.tmp", self);
	/* Kept: a live writer's, another name's, and names not of this form. */
	snprintf(names[n++], sizeof(names[0]), ".m.prom.%ld-0.tmp", parent);
	snprintf(names[n++], sizeof(names[0]), ".other.prom.%ld-0.tmp", dead);
	snprintf(names[n++], sizeof(names[0]), ".m.prom2.%ld-0.tmp", dead);
	snprintf(names[n++], sizeof(names[0]), ".m.prom.%ld-.tmp", dead);
	snprintf(names[n++], sizeof(names[0]), ".m.prom.%ld-0.tmpx", dead);
	snprintf(names[n++], sizeof(names[0]), ".m.prom.x%ld-0.tmp", dead);
	snprintf(names[n++], sizeof(names[0]), "m.prom");
	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		mn_test_write_file(path, NULL, 0);
	}
	ck_assert_int_eq(mn_remove_stale_temps_of(dir, "m.prom", err, sizeof(err)), 2);
	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		ck_assert_msg((access(path, F_OK) == 0) == (i >= 2), "%s", names[i]);
	}
	snprintf(path, sizeof(path), "%s/nope", dir);
	ck_assert_int_eq(mn_remove_stale_temps_of(path, "m.prom", err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "nope"));
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(mkdir_p_creates_parents)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], file[PATH_MAX];
	struct stat st;

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/a/b/c", dir);
	ck_assert_int_eq(mn_mkdir_p(path, 0755, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert(S_ISDIR(st.st_mode));
	ck_assert_int_eq(mn_mkdir_p(path, 0755, err, sizeof(err)), 0);
	snprintf(file, sizeof(file), "%s/file", dir);
	mn_test_write_file(file, NULL, 0);
	ck_assert_int_lt(mn_mkdir_p(file, 0755, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "file"));
	ck_assert_int_eq(mn_mkdir_p("", 0755, err, sizeof(err)), -EINVAL);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(read_file_bounds)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], *buf = NULL;
	char data[200000];
	size_t len = 0;

	mn_test_tmpdir(dir, sizeof(dir));
	memset(data, 'x', sizeof(data));
	snprintf(path, sizeof(path), "%s/big", dir);
	mn_test_write_file(path, data, sizeof(data));
	/* Exactly max bytes is accepted; one less is too large. */
	ck_assert_int_eq(mn_read_file(path, sizeof(data), &buf, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(len, sizeof(data));
	ck_assert_int_eq(buf[len], '\0');
	free(buf);
	ck_assert_int_eq(mn_read_file(path, sizeof(data) - 1, &buf, &len, err, sizeof(err)),
	                 -EFBIG);
	ck_assert_ptr_nonnull(strstr(err, "larger than"));
	ck_assert_int_eq(mn_read_file(path, 10, &buf, &len, err, sizeof(err)), -EFBIG);
	snprintf(path, sizeof(path), "%s/missing", dir);
	ck_assert_int_eq(mn_read_file(path, 10, &buf, &len, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "missing"));
	mn_test_rmtree(dir);
}
END_TEST

/* Opens path for reading. */
static int open_ro(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	return fd;
}

/*
 * mn_read_fd_reuse reads into the caller's buffer: kept when the file fits,
 * grown when it does not, and the caller's on every path (freed once at the
 * end: a double free or a leak fails under ASan).
 */
START_TEST(read_fd_reuse_keeps_the_buffer)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], *buf = NULL, *first;
	static char big[300000];
	size_t cap = 0, len = 0;
	int fd, pipefd[2];

	mn_test_tmpdir(dir, sizeof(dir));
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	snprintf(path, sizeof(path), "%s/f", dir);
	mn_test_write_file(path, big, 1000);
	fd = open_ro(path);
	ck_assert_int_eq(mn_read_fd_reuse(fd, "f", 1 << 20, &buf, &cap, &len, err, sizeof(err)), 0);
	close(fd);
	ck_assert_uint_eq(len, 1000);
	ck_assert_uint_ge(cap, 1000);
	ck_assert_mem_eq(buf, big, 1000);
	ck_assert_int_eq(buf[len], '\0');
	first = buf;

	/* A smaller file: the same memory. */
	mn_test_write_file(path, big + 1, 10);
	fd = open_ro(path);
	ck_assert_int_eq(mn_read_fd_reuse(fd, "f", 1 << 20, &buf, &cap, &len, err, sizeof(err)), 0);
	close(fd);
	ck_assert_ptr_eq(buf, first);
	ck_assert_uint_eq(len, 10);
	ck_assert_mem_eq(buf, big + 1, 10);
	ck_assert_int_eq(buf[len], '\0');

	/* A larger one: grown to fit it. */
	mn_test_write_file(path, big, sizeof(big));
	fd = open_ro(path);
	ck_assert_int_eq(mn_read_fd_reuse(fd, "f", 1 << 20, &buf, &cap, &len, err, sizeof(err)), 0);
	close(fd);
	ck_assert_uint_eq(len, sizeof(big));
	ck_assert_uint_ge(cap, sizeof(big));
	ck_assert_mem_eq(buf, big, sizeof(big));

	/* Too large: refused, and the buffer is still the caller's. */
	fd = open_ro(path);
	ck_assert_int_eq(
	    mn_read_fd_reuse(fd, "f", sizeof(big) - 1, &buf, &cap, &len, err, sizeof(err)), -EFBIG);
	close(fd);
	ck_assert_ptr_nonnull(strstr(err, "larger than"));

	/* A pipe says no size: read to its end all the same. */
	ck_assert_int_eq(pipe(pipefd), 0);
	ck_assert_int_eq(write(pipefd[1], big, 5000), 5000);
	close(pipefd[1]);
	ck_assert_int_eq(
	    mn_read_fd_reuse(pipefd[0], "pipe", 1 << 20, &buf, &cap, &len, err, sizeof(err)), 0);
	close(pipefd[0]);
	ck_assert_uint_eq(len, 5000);
	ck_assert_mem_eq(buf, big, 5000);
	free(buf);
	mn_test_rmtree(dir);
}
END_TEST

/* Point 1 of the hardening issue: the writer renames over regular files only. */
START_TEST(write_atomic_refuses_non_regular_targets)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], target[PATH_MAX];
	struct iovec iov = {"data", 4};
	struct stat st;

	mn_test_tmpdir(dir, sizeof(dir));
	/* A FIFO, a symbolic link (to a regular file) and a directory stay what they are. */
	snprintf(path, sizeof(path), "%s/fifo", dir);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	ck_assert_int_eq(mn_write_atomic(dir, "fifo", &iov, 1, 0644, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err, "a FIFO"));
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert(S_ISFIFO(st.st_mode));
	snprintf(target, sizeof(target), "%s/real", dir);
	mn_test_write_file(target, "keep", 4);
	snprintf(path, sizeof(path), "%s/link", dir);
	ck_assert_int_eq(symlink(target, path), 0);
	ck_assert_int_eq(mn_write_atomic(dir, "link", &iov, 1, 0644, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err, "symbolic link"));
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert(S_ISLNK(st.st_mode));
	snprintf(path, sizeof(path), "%s/sub", dir);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(mn_write_atomic(dir, "sub", &iov, 1, 0644, err, sizeof(err)), -EEXIST);
	/* Nothing was left behind: fifo, real, link, sub. */
	ck_assert_uint_eq(mn_test_count_entries(dir), 4);
	/* A regular file is still replaced. */
	ck_assert_int_eq(mn_write_atomic(dir, "real", &iov, 1, 0644, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(target, &st), 0);
	ck_assert_int_eq(st.st_size, 4);
	mn_test_rmtree(dir);
}
END_TEST

/* Point 2: no open of a named path blocks, and only regular files are read. */
START_TEST(open_regular_never_blocks)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], link[PATH_MAX], *buf = NULL;
	struct stat st;
	size_t len;
	int fd, fl;

	mn_test_tmpdir(dir, sizeof(dir));
	/* A FIFO without a writer: a blocking open would hang this test (CK timeout). */
	snprintf(path, sizeof(path), "%s/fifo", dir);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	ck_assert_int_eq(mn_open_regular(path, 0, NULL, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not a regular file (a FIFO)"));
	ck_assert_int_eq(mn_read_file(path, 100, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(mn_open_regular(dir, 0, NULL, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "a directory"));
	ck_assert_int_eq(mn_open_regular("/dev/null", 0, NULL, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "a character device"));
	/* A regular file opens, in blocking mode, with its fstat. */
	snprintf(path, sizeof(path), "%s/file", dir);
	mn_test_write_file(path, "abc", 3);
	fd = mn_open_regular(path, 0, &st, err, sizeof(err));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(st.st_size, 3);
	fl = fcntl(fd, F_GETFL);
	ck_assert_int_eq(fl & O_NONBLOCK, 0);
	close(fd);
	/* A link to it is followed unless MN_OPEN_NOFOLLOW says otherwise. */
	snprintf(link, sizeof(link), "%s/link", dir);
	ck_assert_int_eq(symlink(path, link), 0);
	fd = mn_open_regular(link, 0, NULL, err, sizeof(err));
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(mn_open_regular(link, MN_OPEN_NOFOLLOW, NULL, err, sizeof(err)), -ELOOP);
	ck_assert_ptr_nonnull(strstr(err, "symbolic link"));
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(open_append_never_blocks)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	int fd;

	mn_test_tmpdir(dir, sizeof(dir));
	/* A FIFO nobody reads: a blocking open for writing would wait for a reader. */
	snprintf(path, sizeof(path), "%s/fifo", dir);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	ck_assert_int_eq(mn_open_append(path, 0600, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
	ck_assert_int_eq(mn_open_append(dir, 0600, err, sizeof(err)) < 0, 1);
	/* A regular file (created) and a character device are fine. */
	snprintf(path, sizeof(path), "%s/log", dir);
	fd = mn_open_append(path, 0600, err, sizeof(err));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	close(fd);
	fd = mn_open_append("/dev/null", 0600, err, sizeof(err));
	ck_assert_int_ge(fd, 0);
	close(fd);
	mn_test_rmtree(dir);
}
END_TEST

/* Resource errors are told from verdicts on a file. */
START_TEST(resource_errors)
{
	ck_assert(mn_errno_is_resource(-ENOMEM));
	ck_assert(mn_errno_is_resource(-EAGAIN));
	ck_assert(mn_errno_is_resource(-EMFILE));
	ck_assert(mn_errno_is_resource(-ENFILE));
	ck_assert(!mn_errno_is_resource(-EINVAL));
	ck_assert(!mn_errno_is_resource(-EIO));
	ck_assert(!mn_errno_is_resource(-ENOENT));
	ck_assert(!mn_errno_is_resource(0));
}
END_TEST

START_TEST(basename_of_paths)
{
	ck_assert_str_eq(mn_basename("/a/b/c.safetensors"), "c.safetensors");
	ck_assert_str_eq(mn_basename("plain"), "plain");
	ck_assert_str_eq(mn_basename("dir/"), "");
}
END_TEST

/* A file to write: its directory ("." or "/" when the path has none) and its name. */
START_TEST(split_path_of_files)
{
	char parent[8], err[MN_ERRLEN];

	ck_assert_str_eq(mn_split_path("a/b/c.prom", parent, sizeof(parent), err, sizeof(err)),
	                 "c.prom");
	ck_assert_str_eq(parent, "a/b");
	ck_assert_str_eq(mn_split_path("c.prom", parent, sizeof(parent), err, sizeof(err)),
	                 "c.prom");
	ck_assert_str_eq(parent, ".");
	ck_assert_str_eq(mn_split_path("/c.prom", parent, sizeof(parent), err, sizeof(err)),
	                 "c.prom");
	ck_assert_str_eq(parent, "/");
	ck_assert_ptr_null(mn_split_path("a/b/", parent, sizeof(parent), err, sizeof(err)));
	ck_assert_str_eq(err, "\"a/b/\" does not name a file");
	ck_assert_ptr_null(mn_split_path("", parent, sizeof(parent), err, sizeof(err)));
	/* "abcdefgh" and its NUL do not fit in 8 bytes. */
	ck_assert_ptr_null(mn_split_path("abcdefgh/c", parent, sizeof(parent), err, sizeof(err)));
	ck_assert_str_eq(err, "abcdefgh/c: path too long");
}
END_TEST

/* An empty directory would make the final name "/NAME", a file at the root. */
START_TEST(write_atomic_refuses_an_empty_dir)
{
	char err[MN_ERRLEN] = "", name[64], root[80];
	struct iovec iov = {"x", 1};

	snprintf(name, sizeof(name), "mn-test-empty-dir-%ld", (long)getpid());
	snprintf(root, sizeof(root), "/%s", name);
	int rc = mn_write_atomic("", name, &iov, 1, 0644, err, sizeof(err));
	bool written = access(root, F_OK) == 0;

	(void)unlink(root);
	ck_assert_msg(!written, "%s was written", root);
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no directory"));
	ck_assert_int_eq(mn_write_atomic(NULL, name, &iov, 1, 0644, err, sizeof(err)), -EINVAL);
}
END_TEST

/* A replaced file keeps its permission bits: a private file stays private. */
START_TEST(write_atomic_keeps_the_replaced_mode)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	struct iovec iov = {"new", 3};
	struct stat st;
	mode_t old = umask(022);

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/private", dir);
	mn_test_write_file(path, "old", 3);
	ck_assert_int_eq(chmod(path, 0600), 0);
	ck_assert_int_eq(mn_write_atomic(dir, "private", &iov, 1, 0644, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	ck_assert_int_eq(st.st_size, 3);
	/* Bits the umask would clear are kept too; set-id bits are not. */
	ck_assert_int_eq(chmod(path, 04666), 0);
	ck_assert_int_eq(mn_write_atomic(dir, "private", &iov, 1, 0644, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0666);
	/* A new file gets the mode asked for, less the umask. */
	ck_assert_int_eq(mn_write_atomic(dir, "fresh", &iov, 1, 0666, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/fresh", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	umask(old);
	mn_test_rmtree(dir);
}
END_TEST

/* MN_WRITE_EXACT_MODE: the mode asked for, neither less the umask nor the replaced file's. */
START_TEST(write_atomic_exact_mode)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	struct iovec iov = {"new", 3};
	struct mn_write_opts o = {.mode = 0644, .flags = MN_WRITE_EXACT_MODE};
	struct stat st;
	mode_t old = umask(027);

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/shared", dir);
	ck_assert_int_eq(mn_write_atomic_opts(dir, "shared", &iov, 1, &o, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	ck_assert_int_eq(chmod(path, 0600), 0);
	ck_assert_int_eq(mn_write_atomic_opts(dir, "shared", &iov, 1, &o, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	umask(old);
	mn_test_rmtree(dir);
}
END_TEST

struct hook_log {
	char path[PATH_MAX];
	int calls, nulls;
	const char *plant; /* created under the final name when the temporary's is announced */
};

static void hook(const char *tmp, void *arg)
{
	struct hook_log *h = arg;

	if (!tmp) {
		h->nulls++;
		return;
	}
	h->calls++;
	snprintf(h->path, sizeof(h->path), "%s", tmp);
	if (h->plant)
		mn_test_write_file(h->plant, "planted", 7);
}

/* MN_WRITE_NOREPLACE: an existing file, even one that appears meanwhile, stays. */
START_TEST(write_atomic_noreplace)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], *buf = NULL;
	struct iovec iov = {"new", 3};
	struct hook_log h = {.plant = NULL};
	struct mn_write_opts o = {
	    .mode = 0644, .flags = MN_WRITE_NOREPLACE, .temp_hook = hook, .temp_arg = &h};
	size_t len;

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/out", dir);
	/* A new name is published, and the hook hears of the temporary and its end. */
	ck_assert_msg(mn_write_atomic_opts(dir, "out", &iov, 1, &o, err, sizeof(err)) == 0, "%s",
	              err);
	ck_assert_int_eq(h.calls, 1);
	ck_assert_int_eq(h.nulls, 1);
	ck_assert_ptr_nonnull(strstr(h.path, "/.out."));
	ck_assert_int_ne(access(h.path, F_OK), 0);
	ck_assert_int_eq(mn_read_file(path, 100, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "new");
	free(buf);
	/* One that exists already is refused before anything is written. */
	mn_test_write_file(path, "old", 3);
	ck_assert_int_eq(mn_write_atomic_opts(dir, "out", &iov, 1, &o, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err, "exists"));
	/* One that appears while the temporary is written is refused at the rename. */
	ck_assert_int_eq(unlink(path), 0);
	h.plant = path;
	ck_assert_int_eq(mn_write_atomic_opts(dir, "out", &iov, 1, &o, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err, "exists"));
	ck_assert_int_eq(mn_read_file(path, 100, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "planted");
	free(buf);
	ck_assert_int_eq(h.nulls, h.calls);
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);
	/* Without the flag it is replaced, as ever. */
	o.flags = 0;
	ck_assert_int_eq(mn_write_atomic_opts(dir, "out", &iov, 1, &o, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_read_file(path, 100, &buf, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(buf, "new");
	free(buf);
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(path_names_fd_follows_the_name)
{
	char path[PATH_MAX], moved[PATH_MAX];
	int fd, other;

	mn_test_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/f.log", dir);
	snprintf(moved, sizeof(moved), "%s/f.log.1", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(mn_path_names_fd(path, fd), 1);
	/* Moved aside: the name is gone, then another file takes it. */
	ck_assert_int_eq(rename(path, moved), 0);
	ck_assert_int_eq(mn_path_names_fd(path, fd), 0);
	ck_assert_int_eq(mn_path_names_fd(moved, fd), 1);
	other = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(other, 0);
	ck_assert_int_eq(mn_path_names_fd(path, fd), 0);
	ck_assert_int_eq(mn_path_names_fd(path, other), 1);
	/* What cannot be told is not "gone". */
	ck_assert_int_eq(mn_path_names_fd(path, -1), -EBADF);
	close(other);
	close(fd);
	mn_test_rmtree(dir);
}
END_TEST

/* The launchers' variables: each names a rank, or a size, or both. */
START_TEST(launched_rank_from_each_launcher)
{
	static const char *const all[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
	                                  "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
	static const struct {
		const char *env[4]; /* name=value pairs, NULL-terminated */
		int rank, size;
	} cases[] = {
	    {{NULL}, -1, 0},
	    {{"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2", NULL}, 1, 2},
	    {{"OMPI_COMM_WORLD_SIZE=4", NULL}, 0, 4},
	    {{"PMIX_RANK=3", NULL}, 3, 0},
	    {{"PMI_RANK=0", "PMI_SIZE=8", NULL}, 0, 8},
	    /* Malformed values still mean a launcher started us: as the first rank, size unknown.
	     */
	    {{"PMI_RANK=x", "PMI_SIZE=-2", NULL}, 0, 0},
	    {{"OMPI_COMM_WORLD_RANK=99999999999", NULL}, 0, 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int size = -7;

		for (size_t k = 0; k < sizeof(all) / sizeof(all[0]); k++)
			unsetenv(all[k]);
		for (size_t k = 0; cases[i].env[k]; k++)
			ck_assert_int_eq(putenv((char *)cases[i].env[k]), 0);
		ck_assert_int_eq(mn_launched_rank(&size), cases[i].rank);
		ck_assert_msg(size == cases[i].size, "case %zu: size %d", i, size);
	}
	for (size_t k = 0; k < sizeof(all) / sizeof(all[0]); k++)
		unsetenv(all[k]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("util");

	MN_TEST_ADD(
	    mn_test_tcase(s, "util", NULL, NULL), errf_and_prefix, rfc3339_format,
	    write_atomic_publishes_complete_file, write_atomic_failure_leaves_nothing,
	    stale_temps_removed, stale_temps_of_one_name_removed, mkdir_p_creates_parents,
	    read_file_bounds, read_fd_reuse_keeps_the_buffer, resource_errors, basename_of_paths,
	    split_path_of_files, write_atomic_refuses_non_regular_targets,
	    open_regular_never_blocks, open_append_never_blocks, write_atomic_refuses_an_empty_dir,
	    write_atomic_keeps_the_replaced_mode, write_atomic_exact_mode, write_atomic_noreplace,
	    path_names_fd_follows_the_name, launched_rank_from_each_launcher);
	return mn_test_run(s);
}
