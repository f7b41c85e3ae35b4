/* writer.c - see writer.h. */
#include "writer.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "ckptdir.h"
#include "log.h"
#include "model.h"
#include "util.h"

/* A snapshot and where it goes. */
struct slot {
	struct mn_trainer_snapshot *snap;
	uint64_t seq;
	int64_t step;
	double snapshot_ms; /* what copying it cost the training thread */
	char dir[PATH_MAX];
	char prefix[MN_CKPT_MAX_NAME];
	size_t max_to_keep;
	int world_size;
	int64_t newest_good;
	char *config_json;
};

struct mnd_writer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake; /* a snapshot waits, or quit */
	pthread_cond_t idle; /* a write was taken or finished */
	struct slot slots[2];
	/* Under lock: the slot being written and the one waiting (NULL if none). */
	struct slot *busy, *waiting;
	uint64_t next_seq;
	bool quit;
	mnd_writer_cb done;
	void *arg;
	/* Writer thread only: the directory's versions, listed at the first write. */
	struct mn_ckptdir_versions *versions;
	int64_t failures;                 /* consecutive failed writes */
	char last_good[MN_CKPT_MAX_NAME]; /* the newest file published, "" if none yet */
};

/* The versions of s's directory: listed once, not at every write. */
static int open_versions(struct mnd_writer *wr, const struct slot *s, char *err, size_t errlen)
{
	struct mn_ckptdir_versions *v = wr->versions;

	if (v && strcmp(mn_ckptdir_versions_dir(v), s->dir) == 0 &&
	    strcmp(mn_ckptdir_versions_prefix(v), s->prefix) == 0)
		return 0;
	mn_ckptdir_versions_free(v);
	wr->versions = NULL;
	return mn_ckptdir_versions_open(s->dir, s->prefix, s->newest_good, &wr->versions, err,
	                                errlen);
}

/*
 * Writes s's state. A full disk gets room from older checkpoints that
 * retention would delete anyway, oldest first, one per retry, but never
 * from the newest good one (the index, once the file is in place, makes
 * room in mn_ckptdir_versions_publish); a keep-all directory (max_to_keep
 * 0) keeps every file and the write fails instead.
 */
static int save_slot(struct mnd_writer *wr, struct slot *s, char *name, size_t len, char *err,
                     size_t errlen)
{
	struct mn_trainer_state st;
	int rc = open_versions(wr, s, err, errlen);

	if (rc < 0)
		return rc;
	mn_trainer_snapshot_state(s->snap, &st);
	for (;;) {
		char gone[MN_CKPT_MAX_NAME], ferr[MN_ERRLEN];
		int freed;

		rc = mn_model_save_state(mn_trainer_snapshot_arch(s->snap), &st, wr->versions,
		                         s->max_to_keep, s->config_json, s->world_size, name, len,
		                         err, errlen);
		if (rc != -ENOSPC || s->max_to_keep == 0)
			return rc;
		freed = mn_ckptdir_versions_free_oldest(wr->versions, s->step, gone, sizeof(gone),
		                                        ferr, sizeof(ferr));
		if (freed <= 0)
			return rc;
		mn_log_fields(
		    MN_LOG_WARN, "disk full: removed an older checkpoint to make room",
		    (struct mn_log_field[]){MN_F_INT("step", s->step), MN_F_STR("removed", gone)},
		    2);
	}
}

/* Writes one slot (no lock held) and reports it. */
static void write_slot(struct mnd_writer *wr, struct slot *s)
{
	char name[MN_CKPT_MAX_NAME] = "", err[MN_ERRLEN] = "";
	int64_t t0 = mn_monotonic_ns(), took;
	int rc = save_slot(wr, s, name, sizeof(name), err, sizeof(err));

	took = mn_monotonic_ns() - t0;
	if (rc < 0) {
		/* Until one succeeds, the newest good checkpoint is the one the run resumed from.
		 */
		if (!wr->last_good[0] && s->newest_good >= 0)
			mn_ckptdir_filename(s->prefix, s->newest_good, wr->last_good,
			                    sizeof(wr->last_good));
		wr->failures++;
		mn_log_fields(MN_LOG_ERROR, "checkpoint failed",
		              (struct mn_log_field[]){
		                  MN_F_INT("step", s->step),
		                  MN_F_STR("error", err),
		                  MN_F_INT("consecutive_failures", wr->failures),
		                  MN_F_STR("last_good", wr->last_good[0] ? wr->last_good : "none"),
		              },
		              4);
	} else {
		if (wr->failures > 0)
			mn_log_fields(
			    MN_LOG_INFO, "checkpoints recovered",
			    (struct mn_log_field[]){MN_F_INT("step", s->step),
			                            MN_F_INT("after_failures", wr->failures)},
			    2);
		wr->failures = 0;
		snprintf(wr->last_good, sizeof(wr->last_good), "%s", name);
		mn_log_fields(MN_LOG_INFO, "checkpoint published",
		              (struct mn_log_field[]){
		                  MN_F_INT("step", s->step),
		                  MN_F_STR("file", name),
		                  MN_F_DBL("write_ms", (double)took / 1e6, 1),
		                  MN_F_DBL("snapshot_ms", s->snapshot_ms, 2),
		              },
		              4);
	}
	if (wr->done) {
		struct mnd_writer_result r = {
		    .seq = s->seq,
		    .status = rc,
		    .step = s->step,
		    .name = rc < 0 ? "" : name,
		    .error = rc < 0 ? err : "",
		    .write_ns = took,
		    .consecutive_failures = wr->failures,
		};

		wr->done(wr->arg, &r);
	}
}

static void *writer_main(void *arg)
{
	struct mnd_writer *wr = arg;

	pthread_mutex_lock(&wr->lock);
	for (;;) {
		while (!wr->waiting && !wr->quit)
			pthread_cond_wait(&wr->wake, &wr->lock);
		if (!wr->waiting)
			break;
		wr->busy = wr->waiting;
		wr->waiting = NULL;
		pthread_cond_broadcast(&wr->idle);
		pthread_mutex_unlock(&wr->lock);
		write_slot(wr, wr->busy);
		pthread_mutex_lock(&wr->lock);
		wr->busy = NULL;
		pthread_cond_broadcast(&wr->idle);
	}
	pthread_mutex_unlock(&wr->lock);
	return NULL;
}

int mnd_writer_start(const struct mn_trainer *t, mnd_writer_cb done, void *arg,
                     struct mnd_writer **out, char *err, size_t errlen)
{
	struct mnd_writer *wr = calloc(1, sizeof(*wr));
	int rc = -ENOMEM;

	*out = NULL;
	if (!wr)
		goto nomem;
	wr->done = done;
	wr->arg = arg;
	wr->next_seq = 1;
	for (int i = 0; i < 2; i++)
		if (mn_trainer_snapshot_new(t, &wr->slots[i].snap) < 0)
			goto nomem;
	pthread_mutex_init(&wr->lock, NULL);
	pthread_cond_init(&wr->wake, NULL);
	pthread_cond_init(&wr->idle, NULL);
	rc = -pthread_create(&wr->thread, NULL, writer_main, wr);
	if (rc < 0) {
		mn_errf(err, errlen, "cannot start the checkpoint writer: %s", strerror(-rc));
		pthread_cond_destroy(&wr->idle);
		pthread_cond_destroy(&wr->wake);
		pthread_mutex_destroy(&wr->lock);
		goto fail;
	}
	*out = wr;
	return 0;
nomem:
	mn_errf(err, errlen, "out of memory for checkpoint snapshots");
fail:
	if (wr)
		for (int i = 0; i < 2; i++)
			mn_trainer_snapshot_free(wr->slots[i].snap);
	free(wr);
	return rc;
}

int64_t mnd_writer_submit(struct mnd_writer *wr, struct mn_trainer *t,
                          const struct mnd_writer_target *where)
{
	char *json = strdup(where->config_json ? where->config_json : "{}");
	int64_t step = mn_trainer_global_step(t), t0;
	struct slot *s;
	uint64_t seq;

	if (!json)
		return -ENOMEM;
	pthread_mutex_lock(&wr->lock);
	while (where->wait && wr->waiting)
		pthread_cond_wait(&wr->idle, &wr->lock);
	/*
	 * Copying under the lock keeps the writer from taking a half-copied
	 * snapshot; it only ever waits for the lock when it has finished a write.
	 */
	s = wr->waiting ? wr->waiting : (wr->busy == &wr->slots[0] ? &wr->slots[1] : &wr->slots[0]);
	if (wr->waiting)
		mn_log_fields(MN_LOG_WARN, "checkpoint replaced before it was written",
		              (struct mn_log_field[]){
		                  MN_F_INT("step", s->step), MN_F_INT("by_step", step),
		                  MN_F_INT("writing_step", wr->busy ? wr->busy->step : -1)},
		              3);
	t0 = mn_monotonic_ns();
	mn_trainer_snapshot_take(s->snap, t);
	s->snapshot_ms = (double)(mn_monotonic_ns() - t0) / 1e6;
	seq = s->seq = wr->next_seq++;
	s->step = step;
	snprintf(s->dir, sizeof(s->dir), "%s", where->dir);
	snprintf(s->prefix, sizeof(s->prefix), "%s", where->prefix);
	s->max_to_keep = where->max_to_keep;
	s->world_size = where->world_size;
	s->newest_good = where->newest_good;
	free(s->config_json);
	s->config_json = json;
	wr->waiting = s;
	pthread_cond_signal(&wr->wake);
	pthread_mutex_unlock(&wr->lock);
	return (int64_t)seq;
}

void mnd_writer_drain(struct mnd_writer *wr)
{
	if (!wr)
		return;
	pthread_mutex_lock(&wr->lock);
	while (wr->busy || wr->waiting)
		pthread_cond_wait(&wr->idle, &wr->lock);
	pthread_mutex_unlock(&wr->lock);
}

void mnd_writer_free(struct mnd_writer *wr)
{
	if (!wr)
		return;
	pthread_mutex_lock(&wr->lock);
	wr->quit = true;
	pthread_cond_signal(&wr->wake);
	pthread_mutex_unlock(&wr->lock);
	/* The thread writes what still waits before it sees quit. */
	pthread_join(wr->thread, NULL);
	for (int i = 0; i < 2; i++) {
		mn_trainer_snapshot_free(wr->slots[i].snap);
		free(wr->slots[i].config_json);
	}
	mn_ckptdir_versions_free(wr->versions);
	pthread_cond_destroy(&wr->idle);
	pthread_cond_destroy(&wr->wake);
	pthread_mutex_destroy(&wr->lock);
	free(wr);
}
