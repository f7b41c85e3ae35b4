/*
 * util.h - error messages, time stamps and durable file writes shared by
 * every mnistd module.
 *
 * Conventions used across libmnistd: a function that can fail returns 0 on
 * success or a negative errno-style code (-EINVAL for bad input, -ENOMEM,
 * -ENOENT, -EIO, ...) and, when given a buffer, writes a one-line message
 * into it that names the file or key involved. Nothing in the library calls
 * exit() or abort().
 */
#ifndef MN_UTIL_H
#define MN_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

/* Size of the error-message buffers passed around the library. */
#define MN_ERRLEN 512

/*
 * The programs' exit statuses, the one set all three use (sysexits.h values
 * where one fits). A variable holding one is called ex (or *_ex), never rc,
 * which holds 0 or a negative errno.
 */
#define MN_EX_OK          0 /* success */
#define MN_EX_FAILURE     1 /* runtime error; mnistctl: the daemon said no, a file is invalid */
#define MN_EX_USAGE       2 /* bad command line */
#define MN_EX_UNREACHABLE 3 /* mnistctl: no daemon answers on the control socket */
#define MN_EX_DATAERR     65 /* the data set is invalid: not IDX, a label out of range (EX_DATAERR) */
#define MN_EX_NOINPUT     66 /* the data set was not found (EX_NOINPUT) */
#define MN_EX_CONFIG      78 /* configuration error (EX_CONFIG) */

/* Length of an RFC 3339 UTC time stamp with milliseconds, plus NUL. */
#define MN_TIMELEN 32

#if defined(__GNUC__)
#define MN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MN_PRINTF(f, a)
#endif

/* Formats a message into err (errlen bytes). Does nothing if err is NULL. */
void mn_errf(char *err, size_t errlen, const char *fmt, ...) MN_PRINTF(3, 4);

/*
 * Prefixes an existing message in err with "fmt: ", so callers can add
 * context ("model.ckpt-3000.safetensors: ") to a message from below.
 */
void mn_errprefix(char *err, size_t errlen, const char *fmt, ...) MN_PRINTF(3, 4);

/* Writes the current UTC time as "2026-11-25T17:04:05.123Z". */
void mn_time_rfc3339(char buf[MN_TIMELEN]);

/* Formats a wall-clock time given in nanoseconds since the epoch, as above. */
void mn_time_rfc3339_ns(int64_t ns, char buf[MN_TIMELEN]);

/* Wall-clock time in nanoseconds since the epoch. */
int64_t mn_realtime_ns(void);

/* Monotonic time in nanoseconds. */
int64_t mn_monotonic_ns(void);

/*
 * Publishes a file atomically and durably: writes the iovecs to the
 * dot-file "<dir>/.<name>.<pid>-<n>.tmp" (unique to this writer: this
 * process and a counter, so two writers never remove or overwrite each
 * other's), fsyncs it, renames it to "<dir>/<name>" and fsyncs the
 * directory. On any failure the temporary file is removed and the
 * final name is untouched. mode is the mode of a new file (before the
 * umask); a regular file that is replaced keeps its permission bits
 * (0777, not set-id bits, not its owner), so a private file stays private.
 * dir must name a directory: NULL or "" is refused with -EINVAL (its
 * final name would be "/<name>", at the root of the filesystem).
 *
 * An existing "<dir>/<name>" is replaced only if it is a regular file: a
 * device node, FIFO, socket, directory or symbolic link there is refused
 * with -EEXIST before anything is written, because renaming over it would
 * replace /dev/null (say) with a regular file rather than write to it.
 */
int mn_write_atomic(const char *dir, const char *name, const struct iovec *iov, int iovcnt,
                    unsigned mode, char *err, size_t errlen);

/* Flags for struct mn_write_opts. */
enum {
	/*
	 * Never replace an existing "<dir>/<name>": -EEXIST if one exists
	 * before the write, and also if one appears while the temporary file
	 * is written, since the final step itself refuses to replace
	 * (renameat2's RENAME_NOREPLACE; link(2) and unlink where the
	 * filesystem lacks it; a last look before a plain rename where it has
	 * no hard links either).
	 */
	MN_WRITE_NOREPLACE = 1 << 0,
	/*
	 * The file gets exactly the mode asked for: neither the umask nor a
	 * replaced file's mode applies. For a file that another user must
	 * read whatever the writer's umask (node-exporter's textfiles).
	 */
	MN_WRITE_EXACT_MODE = 1 << 1,
	/*
	 * Atomic but not durable: no fsync of the file or the directory, so
	 * the call never waits for the disk (which can take seconds behind
	 * other writeback). For a file that is rewritten often and at every
	 * start, from a thread that must not block (the textfiles); after a
	 * crash it may be the old version, or empty.
	 */
	MN_WRITE_NO_SYNC = 1 << 2,
};

/* How mn_write_atomic_opts() writes. */
struct mn_write_opts {
	unsigned mode;  /* the mode of a new file, before the umask */
	unsigned flags; /* MN_WRITE_* */
	/*
	 * When not NULL, called with the temporary file's path just before it
	 * is created, and with NULL once it no longer exists (renamed into
	 * place or removed): a program that may be killed meanwhile records
	 * the path for a signal handler to unlink.
	 */
	void (*temp_hook)(const char *tmp, void *arg);
	void *temp_arg; /* passed to temp_hook */
};

/* mn_write_atomic() with options; mn_write_atomic() is this with {.mode = mode}. */
int mn_write_atomic_opts(const char *dir, const char *name, const struct iovec *iov, int iovcnt,
                         const struct mn_write_opts *opts, char *err, size_t errlen);

/* fsyncs a directory, making renames and unlinks in it durable. 0 or -errno. */
int mn_fsync_dir(const char *dir);

/*
 * Writes the iovecs whole to fd (retrying short writes and EINTR), for an
 * output that is a stream rather than a file to publish: 0 or -errno.
 */
int mn_write_iov(int fd, const struct iovec *iov, int iovcnt);

/* Removes "<dir>/.*.tmp" files left by a crashed writer. Returns the count or -errno. */
int mn_remove_stale_temps(const char *dir, char *err, size_t errlen);

/*
 * Removes the temporary files of "<dir>/<name>" that a killed writer left
 * ("<dir>/.<name>.<pid>-<n>.tmp", mn_write_atomic's names), for a
 * directory shared with other programs, where mn_remove_stale_temps would
 * take theirs: only this name's, and only those of this process or of a
 * process that no longer exists (a live writer's, or one of another
 * user's, whose liveness cannot be told, stays). Call it before this
 * process first writes the file. Returns the count removed or -errno.
 */
int mn_remove_stale_temps_of(const char *dir, const char *name, char *err, size_t errlen);

/* Creates dir and its missing parents with the given mode. 0 if it exists. */
int mn_mkdir_p(const char *dir, unsigned mode, char *err, size_t errlen);

/* Flags for mn_open_regular(). */
enum {
	/* Refuse a symbolic link as the last path component (-ELOOP). */
	MN_OPEN_NOFOLLOW = 1 << 0,
};

/*
 * Opens a file that a user or a directory names, for reading, without ever
 * blocking: the open is non-blocking (a FIFO would otherwise wait for a
 * writer, forever), and the descriptor must then be a regular file (fstat),
 * else -EINVAL "not a regular file" (a FIFO, device, socket or directory).
 * The descriptor is returned in blocking mode. st, when not NULL, receives
 * its fstat. Returns the descriptor or a negative errno, with a message
 * naming path in err.
 */
int mn_open_regular(const char *path, unsigned flags, struct stat *st, char *err, size_t errlen);

/*
 * Opens (creating with mode) a file to append lines to, such as a log or
 * a metrics file, without ever blocking: a FIFO or a socket under the name
 * is refused with -EINVAL instead of waiting for a reader. A regular file
 * or a character device (/dev/null, a terminal) is accepted. Returns the
 * descriptor (blocking, close-on-exec) or a negative errno with a message.
 */
int mn_open_append(const char *path, unsigned mode, char *err, size_t errlen);

/*
 * Whether the regular file fd is open on ends in a partial line (its last
 * byte is not a newline): its writer died mid-line, a crash cut it off, or
 * a disk filled up mid-write. An appender's next line must then start with
 * a newline, so as not to be glued onto that one.
 */
bool mn_fd_ends_mid_line(int fd);

/*
 * Whether path still names the file fd is open on: 1 if it does, 0 if it
 * does not (removed, or another file under the name: moved aside by a
 * logrotate without SIGHUP), or a negative errno when that cannot be told
 * (fd unusable, the directory unsearchable for a moment).
 */
int mn_path_names_fd(const char *path, int fd);

/*
 * Reads a whole regular file (at most max bytes, else -EFBIG) into a
 * malloc'd buffer with a NUL byte after the data. *len excludes the NUL.
 * The file is opened with mn_open_regular(), so a FIFO is refused, never
 * waited on.
 */
int mn_read_file(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen);

/* Same, from an open descriptor (read from its current position). */
int mn_read_fd(int fd, const char *name, size_t max, char **buf, size_t *len, char *err,
               size_t errlen);

/*
 * mn_read_fd into the caller's buffer: *buf (NULL at first) holds *cap data
 * bytes and a NUL, and is grown with realloc when the file needs more. It
 * stays the caller's on every path, to reuse for the next file and free in
 * the end: a process reading one file after another then reuses memory it
 * has already touched instead of faulting in fresh pages every time.
 */
int mn_read_fd_reuse(int fd, const char *name, size_t max, char **buf, size_t *cap, size_t *len,
                     char *err, size_t errlen);

/*
 * The name of path's filesystem type ("nfs", "fuse", ...) when inotify
 * cannot be trusted there: network and cluster filesystems, whose events
 * show only this machine's changes, and FUSE, which shows none. NULL for a
 * local filesystem or when statfs fails. Watchers poll where this is not
 * NULL.
 */
const char *mn_fs_remote_name(const char *path);

/*
 * Copies src into dst (dstlen bytes, always terminated, cut if it does not
 * fit) with every byte a terminal or a log reader could act on made
 * visible: C0 controls and DEL as \n, \r, \t or \xNN, C1 controls
 * (U+0080..U+009F, which some terminals obey) as \u0080..\u009f, and
 * bytes that are not well-formed UTF-8 as \xNN. For strings that come
 * from files (tensor names, metadata values, file names) on their way to
 * a terminal or a log line: a crafted checkpoint cannot inject escape
 * sequences or start a forged line. Returns dst.
 */
char *mn_escape(const char *src, char *dst, size_t dstlen);

/* The last path component of path (a pointer into path). */
const char *mn_basename(const char *path);

/*
 * Splits the path of a file to write into its directory (copied to dir:
 * "." when there is none, "/" for "/name") and its last component, which
 * is returned (a pointer into path). NULL, with err filled, when path
 * names no file (empty, or ending in '/') or its directory does not fit in
 * dirlen bytes.
 */
const char *mn_split_path(const char *path, char *dir, size_t dirlen, char *err, size_t errlen);

/*
 * Whether a negative errno is this process's or machine's trouble (out of
 * memory, threads or descriptors) rather than a verdict on the file or data
 * at hand: such a file is tried again later, never judged bad for it.
 */
bool mn_errno_is_resource(int rc);

/*
 * Copies an untrusted name (a JSON key, a command) into dst (len bytes) for
 * a message: at most max bytes of it, "..." after when it was longer, every
 * byte outside printable ASCII as '?', so that a message (and the JSON or
 * log line that carries it) never holds control bytes or broken UTF-8.
 * src may be NULL (an empty name).
 */
void mn_printable(char *dst, size_t len, const char *src, size_t max);

/*
 * The rank an MPI launcher gave this process, read from the environment it
 * sets (Open MPI's mpirun; PMIx, as srun --mpi=pmix and prterun; PMI-1/2,
 * as srun --mpi=pmi2), and in *size the job's size where the launcher says
 * it (else 0). -1 when no launcher started the process. For mnistd's
 * decision to start MPI, and for programs that must not run as N copies.
 */
int mn_launched_rank(int *size);

#endif
