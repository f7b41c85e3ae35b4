/*
 * dist.h - data-parallel training across the ranks of an MPI job.
 *
 * `mpirun -np N mnistd` (or srun) starts N copies of the daemon. Every rank
 * holds the whole model and the whole data set; each step's global batch of
 * train.batch_size examples is split across the ranks, each rank computes
 * the gradient of its share, and one MPI_Allreduce over one contiguous
 * buffer sums them, so every rank applies the same update and the run is
 * the single-process run up to floating-point summation order.
 *
 * Rank 0 is the daemon the operator sees: it alone publishes checkpoints,
 * serves the control socket, logs progress and speaks sd_notify. Commands
 * (stop, pause, save, reload) are agreed on at every step boundary by a
 * small allreduce, so they take effect at the same step on every rank.
 *
 * MPI is initialised only when an MPI launcher started the process
 * (mnd_dist_launched); a plain mnistd never calls into MPI. In a build
 * without MPI every function here is a stub that says so.
 *
 * Threads: mnd_dist_init and mnd_dist_finalize run on the main thread; every
 * other call runs on the training thread (MPI_THREAD_SERIALIZED).
 *
 * An error from any call here may have left the ranks' collectives out of
 * step (one rank returned early, the others wait or sent): the caller ends
 * the whole job with mnd_dist_abort, as worker.c does, never retries.
 */
#ifndef MND_DIST_H
#define MND_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "idx.h"
#include "train.h"

/* What the ranks agree on at a step boundary. */
struct mnd_dist_cmd {
	bool stop;   /* any rank asked to stop (a signal reaches every rank at its own time) */
	bool pause;  /* rank 0 is paused */
	bool save;   /* rank 0 has a save request: every rank checks its parameters */
	bool reload; /* rank 0 applies a new configuration: it follows by broadcast */
};

struct mnd_dist;

/* True when an MPI launcher (Open MPI's mpirun, PMIx or PMI, as srun uses) started us. */
bool mnd_dist_launched(void);

/* True when this build can run under MPI. */
bool mnd_dist_available(void);

/*
 * Initialises MPI and returns the job's handle. Fails (-ENOTSUP) in a build
 * without MPI, or when the library cannot give MPI_THREAD_SERIALIZED.
 */
int mnd_dist_init(int *argc, char ***argv, struct mnd_dist **out, char *err, size_t errlen);

/* Finalizes MPI and frees d. Accepts NULL. */
void mnd_dist_finalize(struct mnd_dist *d);

/* Ends the whole job at once (another rank failed or diverged). */
void mnd_dist_abort(struct mnd_dist *d, int status);

/*
 * Logs (on rank 0) the time the job spent summing gradients and agreeing on
 * commands, per step, so an operator sees what scaling out costs.
 */
void mnd_dist_log_summary(const struct mnd_dist *d);

/* This process's rank and the job's size; 0 and 1 for NULL. */
int mnd_dist_rank(const struct mnd_dist *d);
int mnd_dist_size(const struct mnd_dist *d);

/* A trainer reducer (see mn_trainer_set_shard): sums buf over all ranks in place. */
int mnd_dist_allreduce(void *dist, float *buf, size_t n);

/*
 * Agrees on the commands of this boundary: stop is any rank's, the others
 * are rank 0's. When wait_quietly is set (the job is paused) ranks other
 * than 0 wait without spinning a core.
 */
int mnd_dist_agree(struct mnd_dist *d, struct mnd_dist_cmd *cmd, bool wait_quietly);

/*
 * Compares every rank's program and configuration with rank 0's before
 * anything is loaded. First build (the program's version: main passes
 * MN_VERSION), an exchange every mnistd keeps first, so that ranks of
 * other versions are named before their collectives could mismatch. Then
 * the keys a rank's own arithmetic takes from its own file, which no
 * broadcast replaces (model.hidden, train.batch_size, train.l2,
 * train.ema_decay, data.validation_size), must be equal, and the job
 * may have at most train.batch_size ranks. Otherwise
 * returns -EINVAL on every rank, with the first rank and what differs in
 * err (any other error may have left the ranks out of step: end the job).
 * A reloadable key that differs is no error (rank 0's value is broadcast
 * at the start) but the rank logs a warning naming it; the other keys are
 * the node's own (data.dir, train.threads, log.*) or used by rank 0 alone
 * (checkpoint.*, control.socket, metrics.*).
 */
int mnd_dist_check_config(struct mnd_dist *d, const char *build, const struct mn_config *cfg,
                          char *err, size_t errlen);

/*
 * Compares every rank's training set (its size and a checksum of its
 * images and labels) with rank 0's: data.dir may differ between nodes,
 * the data may not. Returns 0, or -EINVAL on every rank with the first
 * rank that differs in err.
 */
int mnd_dist_check_data(struct mnd_dist *d, const struct mn_view *train, char *err, size_t errlen);

/*
 * Sends rank 0's configuration to every other rank, which parses it into
 * *cfg (after a reload, so every rank applies the same keys).
 */
int mnd_dist_bcast_config(struct mnd_dist *d, struct mn_config *cfg, char *err, size_t errlen);

/*
 * Copies rank 0's whole training state (parameters, shadows, step, epoch,
 * permutation and its position, RNG) to every rank, so all start from one
 * state whether it was initialised or restored.
 */
int mnd_dist_bcast_state(struct mnd_dist *d, struct mn_trainer_state *s, char *err, size_t errlen);

/*
 * Compares a checksum of every rank's whole training state (parameters,
 * shadows, step, epoch, permutation and its position, RNG). Returns 0 when
 * they agree, -EPROTO with the first diverging rank named in err when not.
 * Every rank gets the same answer.
 */
int mnd_dist_check_state(struct mnd_dist *d, const struct mn_trainer_state *s, char *err,
                         size_t errlen);

#endif
