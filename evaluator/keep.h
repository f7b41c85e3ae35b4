/*
 * keep.h - keeping the best checkpoints by validation accuracy in
 * eval.best_dir, safe from the trainer's retention (issue 12).
 *
 * After each evaluation, mne_keep_offer() is given the checkpoint that was
 * just evaluated, still open. If it makes the top k (by accuracy; a tie keeps
 * the earlier step), it is published into best_dir atomically: a hard link
 * when the filesystem allows it and the name still holds the evaluated file,
 * else a copy made from the open descriptor (so retention deleting the file
 * meanwhile does not matter), fsynced, renamed from a dot-file, the
 * directory fsynced. Then best.json is rewritten atomically (best.h), then
 * the files that fell out of the top k are removed. If any step before the
 * new best.json fails (a full disk), the new file is removed again and the
 * previous set stays exactly as it was.
 *
 * At open, best_dir is locked (flock on the directory): one keeper per
 * best_dir, so two evaluators never rewrite each other's best.json. It must
 * not be checkpoint.dir, nor hold a trainer's lock file (another run's
 * checkpoint.dir). Then best.json is read, so the set survives restarts
 * and never gets worse by one; entries whose file is missing are dropped,
 * and checkpoint files in best_dir that best.json does not list (a crash
 * between publish and best.json) are removed. A corrupt best.json, or checkpoint files with
 * none, is rebuilt by evaluating those files, with a warning.
 *
 * While running, each offer first looks at the disk the same way: best_dir
 * removed meanwhile is made again, and kept files that are gone are
 * dropped from the set (with a warning), so the next good checkpoint takes
 * their place rather than being refused for a file that is no longer there;
 * best.json removed is written again.
 *
 * Not thread-safe: one thread at a time (the evaluator's job runs one at a
 * time).
 */
#ifndef MNE_KEEP_H
#define MNE_KEEP_H

#include <stddef.h>
#include <stdint.h>

#include "pick.h"

struct mne_keep_params {
	const char *dir;      /* eval.best_dir; copied; created if missing */
	size_t keep;          /* eval.keep_best, 1 to MN_BEST_MAX */
	const char *prefix;   /* checkpoint.prefix: the names managed in dir; copied */
	const char *ckpt_dir; /* checkpoint.dir: must not be the same directory as dir */
	/* For a rebuild: how to evaluate (data, use_ema, cancel); dir and prefix are ignored. */
	const struct mne_pick_params *eval;
};

/* The best set. Opaque. */
struct mne_keep;

/*
 * Opens (creating dir) and loads or rebuilds the set. Fails with a message
 * if dir cannot be created or read, is checkpoint.dir itself or another
 * run's (-EINVAL), or another process keeps in it (-EWOULDBLOCK).
 */
int mne_keep_open(const struct mne_keep_params *p, struct mne_keep **out, char *err, size_t errlen);

/*
 * Offers the evaluated checkpoint res, open as fd, found at path. Returns 1
 * if it was kept, 0 if it does not make the top k (or is already kept with
 * a result at least as good), or a negative errno with a message if keeping
 * it failed (the previous set is intact).
 */
int mne_keep_offer(struct mne_keep *k, int fd, const char *path, const struct mne_pick_result *res,
                   char *err, size_t errlen);

/* The number of checkpoints kept now. */
size_t mne_keep_count(const struct mne_keep *k);

/* Frees the set (the files stay). Accepts NULL. */
void mne_keep_free(struct mne_keep *k);

#endif
