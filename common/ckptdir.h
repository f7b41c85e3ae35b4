/*
 * ckptdir.h - a directory of checkpoint versions: their file names, the scan
 * that lists them, the checkpoint.json index and retention. The files
 * themselves are ckpt.h's.
 *
 * Layout: "<dir>/<prefix>-<step>.safetensors" per version,
 * "<dir>/checkpoint.json" = {"latest": "<file>", "all": [oldest .. newest]}
 * (at most MN_CKPTDIR_INDEX_MAX of them).
 * Temporary files are dot-files; readers ignore them.
 */
#ifndef MN_CKPTDIR_H
#define MN_CKPTDIR_H

#include "ckpt.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MN_CKPTDIR_INDEX "checkpoint.json"
/* The writer's lock file, a dot-file so that readers ignore it. */
#define MN_CKPTDIR_LOCK ".mnistd.lock"

/* "<prefix>-<step>.safetensors" into buf; -ENAMETOOLONG if it does not fit. */
int mn_ckptdir_filename(const char *prefix, int64_t step, char *buf, size_t len);

/*
 * True if name is exactly "<prefix>-<step>.safetensors" with step a
 * non-negative decimal without sign or leading zeros (except "0"); sets *step.
 */
bool mn_ckptdir_filename_parse(const char *prefix, const char *name, int64_t *step);

/* One checkpoint file found in a directory. */
struct mn_ckptdir_entry {
	char name[MN_CKPT_MAX_NAME];
	int64_t step;
};

/*
 * Lists the checkpoint files of dir with the given prefix, sorted by step
 * ascending, into a malloc'd array (free() it). Dot-files and other names
 * are ignored. -ENOENT if dir does not exist.
 */
int mn_ckptdir_scan(const char *dir, const char *prefix, struct mn_ckptdir_entry **out, size_t *n,
                    char *err, size_t errlen);

/*
 * checkpoint.json's "all" names at most this many files: the newest kept
 * ones (and latest). A keep-all directory holds more; scan it to see them.
 */
#define MN_CKPTDIR_INDEX_MAX 1000

/*
 * The checkpoint versions of one directory as its one writer (the lock
 * holder, see mn_ckptdir_lock) knows them: listed once when opened, then
 * kept up to date by each publish, so that publishing costs the same at the
 * millionth checkpoint as at the first.
 */
struct mn_ckptdir_versions;

/*
 * Lists dir's checkpoints with the given prefix. latest is the step of the
 * newest good checkpoint already there (the one a trainer resumed from), or
 * -1: mn_ckptdir_versions_free_oldest never takes it. -ENOENT if dir does
 * not exist.
 */
int mn_ckptdir_versions_open(const char *dir, const char *prefix, int64_t latest,
                             struct mn_ckptdir_versions **out, char *err, size_t errlen);

/* Accepts NULL. */
void mn_ckptdir_versions_free(struct mn_ckptdir_versions *v);

const char *mn_ckptdir_versions_dir(const struct mn_ckptdir_versions *v);
const char *mn_ckptdir_versions_prefix(const struct mn_ckptdir_versions *v);
/* The checkpoint files it tracks (a keep-all run tracks only the newest). */
size_t mn_ckptdir_versions_count(const struct mn_ckptdir_versions *v);

/*
 * After the file of step was published: writes checkpoint.json atomically,
 * naming it latest, with the files that retention keeps, then deletes every
 * checkpoint file beyond the newest max_to_keep (0 keeps all), never
 * latest. Files that vanish meanwhile are not errors, and one that cannot
 * be removed is logged (a warning): the checkpoint is published all the
 * same. On a full disk (the index cannot be written) other checkpoint
 * files go, logged, oldest first and the previous latest included, until
 * the index fits, unless max_to_keep is 0: step's file, durable, is then
 * the newest good one. -ENOENT if step's file is not there (an index
 * never names a missing file).
 */
int mn_ckptdir_versions_publish(struct mn_ckptdir_versions *v, int64_t step, size_t max_to_keep,
                                char *err, size_t errlen);

/*
 * For a full disk: deletes the oldest checkpoint file that is neither the
 * latest published nor step keep (-1: none), writing its name to name.
 * Returns 1 if a file went, 0 if there is none to free, or -errno.
 */
int mn_ckptdir_versions_free_oldest(struct mn_ckptdir_versions *v, int64_t keep, char *name,
                                    size_t len, char *err, size_t errlen);

/* Opens dir's versions, publishes latest (a file name) and frees them: for one-off writers. */
int mn_ckptdir_publish_index(const char *dir, const char *prefix, const char *latest,
                             size_t max_to_keep, char *err, size_t errlen);

/*
 * Makes this process the one writer of dir: takes an exclusive flock(2) on
 * "<dir>/.mnistd.lock" and writes its pid there. The kernel releases the
 * lock when the descriptor is closed or the process dies, so a SIGKILL
 * never leaves a stale lock. Returns the descriptor, to keep open while
 * writing; -EWOULDBLOCK if another process holds the lock, with a message
 * naming it (its pid, as it wrote it); another negative errno otherwise.
 */
int mn_ckptdir_lock(const char *dir, char *err, size_t errlen);

/*
 * Whether a file can be created in dir (by creating and removing a
 * dot-file): checked at start, so that an unwritable directory is an error
 * then rather than a failure at every checkpoint. 0 or -errno with a message.
 */
int mn_ckptdir_check_writable(const char *dir, char *err, size_t errlen);

/*
 * Reads "<dir>/checkpoint.json": the latest file name into latest (len
 * bytes). -ENOENT if there is none; -EINVAL if malformed, or if it is not a
 * regular file (a symbolic link is not followed: the writer never makes one).
 */
int mn_ckptdir_index_latest(const char *dir, char *latest, size_t len, char *err, size_t errlen);

#endif
