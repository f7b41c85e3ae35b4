/*
 * watch.h - noticing that a checkpoint directory may have new files, by
 * filesystem events (libuv's uv_fs_event, inotify on Linux) or by polling.
 *
 * The watcher never reads checkpoints; it only tells its owner "look now".
 * It copes with a directory that does not exist yet (it watches the nearest
 * existing parent until the directory appears, and looks for it every
 * poll_interval_ms besides, since a link's target can appear where the
 * parent's events do not see it; or polls), with a directory
 * that is removed or renamed away (it goes back to waiting), with a path
 * that comes to name another directory without an event (a symbolic link
 * repointed, a mount over it: the path's identity is checked every
 * poll_interval_ms), with events lost (inotify's queue overflowing: a
 * directory whose modification time changed since the last check gets a
 * look of its own), with events unavailable for a while (it polls, and
 * tries events again at each poll), and with
 * filesystems whose inotify does not see other clients' writes (NFS, CIFS,
 * FUSE, ...: statfs tells), where auto mode polls instead.
 *
 * Events for dot-files (temporaries), for names that are not final
 * checkpoint names ("<prefix>-<step>.safetensors") and for checkpoints that
 * no longer exist (retention deleting them) are ignored, so one atomic
 * publish produces one notification and a deletion none. Notifications are not
 * coalesced here: the owner schedules one look for any number of them.
 *
 * All functions run on the loop's thread.
 */
#ifndef MNE_WATCH_H
#define MNE_WATCH_H

#include <stdint.h>
#include <uv.h>

#include "config.h"

struct mne_watch_params {
	const char *dir;           /* the directory to watch; copied */
	const char *prefix;        /* checkpoint.prefix; copied */
	enum mn_watch_mode mode;   /* auto, events or poll */
	uint64_t poll_interval_ms; /* poll period, also used while waiting without events */
	/*
	 * Called when the directory's checkpoints may have changed (or it
	 * appeared). step is the step of the checkpoint an event named, or -1
	 * when the watcher cannot tell (a poll, the directory appearing).
	 */
	void (*on_change)(void *arg, int64_t step);
	void *arg;
};

/* The watcher. Opaque. */
struct mne_watch;

/*
 * Starts watching. The first on_change comes as soon as the directory
 * exists (at once if it does), so files published before the watch began
 * are seen too. Fails only on allocation or loop errors.
 */
int mne_watch_start(uv_loop_t *loop, const struct mne_watch_params *p, struct mne_watch **out,
                    char *err, size_t errlen);

/*
 * Tells the watcher that the directory seemed to be missing (a scan failed
 * with ENOENT): it checks, and if the directory is really gone or replaced,
 * goes back to waiting for it. Harmless when all is well.
 */
void mne_watch_recheck(struct mne_watch *w);

/* Stops and closes everything; memory is freed once libuv has closed the handles. Accepts NULL. */
void mne_watch_close(struct mne_watch *w);

#endif
