/*
 * writer.h - the checkpoint writer thread.
 *
 * The training thread hands the writer a copy of the trainer's state taken
 * at a step boundary and goes on training at once; the writer thread writes
 * the file, fsyncs it, renames it, fsyncs the directory, replaces
 * checkpoint.json and applies retention (mn_model_save_state), so a slow
 * disk never stalls a step. It lists the directory once, at its first write
 * (ckptdir.h's versions), and on a full disk frees older checkpoints that
 * retention would delete before it retries. At most one write is in flight and one snapshot
 * waits: a newer snapshot replaces a waiting one, and the log says so.
 *
 * Every submission gets a sequence number. The done callback reports each
 * write with the highest number it covers (a replaced snapshot is covered
 * by the one that replaced it), so a caller waiting for submission n is
 * answered by the first report with seq >= n.
 */
#ifndef MND_WRITER_H
#define MND_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train.h"

/* One finished write, as the done callback sees it. */
struct mnd_writer_result {
	uint64_t seq;                 /* every submission up to this one is settled by this write */
	int status;                   /* 0, or -errno */
	int64_t step;                 /* global_step of the state written */
	const char *name;             /* the file published; "" on error */
	const char *error;            /* why it failed; "" on success */
	int64_t write_ns;             /* how long the write took */
	int64_t consecutive_failures; /* failed writes in a row, this one included (0 on success) */
};

/* Called on the writer thread after each write (it must not call back into the writer). */
typedef void (*mnd_writer_cb)(void *arg, const struct mnd_writer_result *r);

/* Where and how a snapshot is published; copied by mnd_writer_submit. */
struct mnd_writer_target {
	const char *dir;         /* checkpoint.dir */
	const char *prefix;      /* checkpoint.prefix */
	size_t max_to_keep;      /* checkpoint.max_to_keep (0 keeps all) */
	const char *config_json; /* the "config" metadata */
	int world_size;          /* ranks that trained it (metadata of data-parallel runs) */
	int64_t newest_good; /* step of the newest checkpoint known good (-1: none); never freed */
	bool wait;           /* wait for the waiting snapshot to be taken instead of replacing it */
};

struct mnd_writer;

/*
 * Starts the writer thread with two snapshot buffers sized for trainer t.
 * done is called after every write. Returns 0 or -errno with a message.
 */
int mnd_writer_start(const struct mn_trainer *t, mnd_writer_cb done, void *arg,
                     struct mnd_writer **out, char *err, size_t errlen);

/*
 * Copies t's current state (on the training thread, between steps) and
 * queues it for publishing at where. If a snapshot is already waiting it is
 * replaced and a log line names both steps, unless where->wait is set: then
 * this waits until the writer has taken it. Returns the submission's
 * sequence number (> 0), or -ENOMEM if the target could not be copied.
 */
int64_t mnd_writer_submit(struct mnd_writer *wr, struct mn_trainer *t,
                          const struct mnd_writer_target *where);

/* Waits until no write is in flight or waiting. Accepts NULL. */
void mnd_writer_drain(struct mnd_writer *wr);

/* Drains, stops the thread and frees the writer. Accepts NULL. */
void mnd_writer_free(struct mnd_writer *wr);

#endif
