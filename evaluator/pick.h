/*
 * pick.h - choosing the checkpoint to evaluate and evaluating it: the
 * synchronous core of mnist-eval, shared by the watching loop (run off the
 * loop thread) and --once.
 *
 * Rules. Only final checkpoint names count ("<prefix>-<step>.safetensors";
 * dot-files and anything else are ignored), whoever wrote them. Of the
 * steps newer than the last one evaluated, the newest is tried first, so a
 * burst collapses to its newest file; if that file is bad, the next older
 * one is tried, and so on. A step is never evaluated twice and the
 * evaluated steps only go up, within one run: when the directory's newest
 * step falls below the last one evaluated and its file was written after
 * the last one evaluated (the directory was replaced by a fresh run
 * starting again from a lower step, or the trainer resumed from an older
 * checkpoint), that is logged and the new run is evaluated from its newest
 * checkpoint; an older file written before it (the newer ones were
 * deleted) is not new. Each file is opened once and read, validated and
 * evaluated from that descriptor, so retention deleting it meanwhile is
 * harmless; a file that vanishes before it is opened is skipped quietly. A
 * bad file is logged as an error naming it and what is wrong, and is
 * remembered, however many there are, so it is read once and not again
 * until it is replaced or changed (another inode, size, modification or
 * change time under the same name: a chmod that makes an unreadable file
 * readable counts). A symbolic link is not followed (it is bad) unless
 * follow_symlinks is set. A directory that cannot be searched ends the look
 * with its error: that is no file's fault.
 */
#ifndef MNE_PICK_H
#define MNE_PICK_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ckpt.h"
#include "ckptdir.h"
#include "evaluate.h"
#include "idx.h"

/* A file that failed, identified so that a replacement is retried. */
struct mne_pick_failure {
	int64_t step;
	dev_t dev;
	ino_t ino;
	int64_t size;
	int64_t mtime_ns;
	/*
	 * The change time too: a chmod that makes an unreadable file readable
	 * changes nothing else, and must not leave it rejected for good.
	 */
	int64_t ctime_ns;
};

/*
 * What has been done so far, and the memory the next evaluation reuses.
 * Start with mne_pick_state_init(), end with mne_pick_state_free().
 */
struct mne_pick_state {
	int64_t last_step; /* newest step evaluated, -1 before the first */
	/*
	 * Modification time of last_step's file: an older step written before
	 * it is what is left of the same run (its newer files deleted), not a
	 * new run.
	 */
	int64_t last_mtime_ns;
	uint64_t rejected; /* bad files logged so far (a replaced one counts again) */
	size_t nfailed, capfailed;
	struct mne_pick_failure *failed; /* sorted by step, one per step */
	/*
	 * The last file's bytes, its parameters and the forward pass's
	 * workspace (threads included), kept because an evaluation that
	 * allocated them afresh spent 20-30 ms faulting in new pages whenever
	 * the allocator handed out new memory (each libuv worker thread has an
	 * arena of its own).
	 */
	char *file;
	size_t file_cap;
	float *params;
	size_t params_cap;
	struct mn_eval_ws *ws;
};

struct mne_pick_result;

struct mne_pick_params {
	const char *dir;            /* checkpoint.dir */
	const char *prefix;         /* checkpoint.prefix */
	const struct mn_view *data; /* the validation split, with labels */
	int threads;                /* of the forward passes (train.threads; 0: one per CPU) */
	bool use_ema;               /* evaluate the EMA shadows (if the file has them) */
	bool follow_symlinks;       /* read checkpoints that are symbolic links */
	const atomic_bool *cancel;  /* checked between files and batches; may be NULL */
	/*
	 * Leave the evaluated file open in the result (fd, path), for the
	 * caller to keep a copy of that very file (keep.h) once the result is
	 * out, then mne_pick_result_close(). Otherwise it is closed.
	 */
	bool keep_open;
	/* Wall-clock time of the event that asked for this look (0: when it starts). */
	int64_t event_ns;
	/*
	 * The newest step the events that asked for this look named, or 0 (or
	 * less) to list the directory. A named step above the last one evaluated is
	 * tried first without listing, so a look costs the same in a directory
	 * of 100 000 checkpoints as in one of five; if that file is gone or
	 * bad, or the step is not new, the directory is listed as always.
	 */
	int64_t hint_step;
};

struct mne_pick_result {
	char name[MN_CKPT_MAX_NAME];            /* file name, without the directory */
	char path[PATH_MAX + MN_CKPT_MAX_NAME]; /* dir/name */
	int fd;                                 /* the file, open if keep_open was set; else -1 */
	int64_t step;                           /* from the file name */
	bool ema;                               /* whether EMA shadows were evaluated */
	struct mn_eval_result eval;
	/*
	 * Where the time went, wall clock: published (the file's change time,
	 * set by the rename), the event that asked for a look, the file open,
	 * then read, verified and loaded (read_ns), evaluated (eval_ns), done.
	 */
	int64_t published_ns;
	int64_t event_ns;
	int64_t opened_ns;
	int64_t read_ns; /* reading, verifying and loading the parameters */
	int64_t eval_ns; /* the forward passes alone */
	int64_t done_ns; /* when the result was ready */
};

/* Closes res->fd if it is open. */
void mne_pick_result_close(struct mne_pick_result *res);

void mne_pick_state_init(struct mne_pick_state *s);

/* Frees the memory of bad files and the kept buffers, and stops the workspace's threads. */
void mne_pick_state_free(struct mne_pick_state *s);

/*
 * Prepares s for checkpoints of shape arch, while there is nothing to
 * evaluate yet: starts the forward pass's threads and touches its memory
 * with one pass of zero weights over p->data, and makes the parameter array
 * and a file buffer of file_bytes. The first evaluation then costs what the
 * others do, not 20-30 ms more for fresh pages. If a checkpoint has
 * another shape, or anything fails here, the first evaluation does it all.
 */
void mne_pick_warm(struct mne_pick_state *s, const struct mne_pick_params *p,
                   const struct mn_arch *arch, size_t file_bytes);

/*
 * Evaluates the newest valid checkpoint newer than s->last_step. Returns 1
 * with *res filled (and s->last_step advanced), 0 if there is nothing new and
 * valid, -ENOENT if the directory does not exist, -ECANCELED when cancelled,
 * a resource error (mn_errno_is_resource: memory, threads, descriptors)
 * when this machine could not evaluate a file (it is not judged, the next
 * look tries it again), or
 * another negative errno when the directory cannot be read or searched
 * (with a message in err). Bad files are logged here, not returned.
 */
int mne_pick_evaluate(const struct mne_pick_params *p, struct mne_pick_state *s,
                      struct mne_pick_result *res, char *err, size_t errlen);

/*
 * Evaluates the one checkpoint e in dir (p's dir is ignored, the file is
 * closed whatever keep_open says). Returns 0 with *res filled, -ECANCELED,
 * -EINVAL if the file is missing or bad, or a resource error
 * (mn_errno_is_resource) when this machine could not evaluate it (both
 * logged).
 */
int mne_pick_evaluate_file(const struct mne_pick_params *p, const char *dir,
                           const struct mn_ckptdir_entry *e, struct mne_pick_result *res);

#endif
