/* dist.c - see dist.h. */
#include "dist.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "log.h"
#include "util.h"

#ifdef MN_HAVE_MPI
#include <mpi.h>
#endif

bool mnd_dist_launched(void)
{
	int size;

	return mn_launched_rank(&size) >= 0;
}

#ifndef MN_HAVE_MPI

struct mnd_dist {
	int unused;
};

bool mnd_dist_available(void)
{
	return false;
}

int mnd_dist_init(int *argc, char ***argv, struct mnd_dist **out, char *err, size_t errlen)
{
	*out = NULL;
	mn_errf(err, errlen,
	        "started by an MPI launcher, but this mnistd was built without MPI "
	        "(install libopenmpi-dev and rebuild with -Dmpi=enabled)");
	return -ENOTSUP;
}

void mnd_dist_finalize(struct mnd_dist *d)
{
}

void mnd_dist_abort(struct mnd_dist *d, int status)
{
}

void mnd_dist_log_summary(const struct mnd_dist *d)
{
}

int mnd_dist_rank(const struct mnd_dist *d)
{
	return 0;
}

int mnd_dist_size(const struct mnd_dist *d)
{
	return 1;
}

int mnd_dist_allreduce(void *dist, float *buf, size_t n)
{
	return -ENOTSUP;
}

int mnd_dist_agree(struct mnd_dist *d, struct mnd_dist_cmd *cmd, bool wait_quietly)
{
	return 0;
}

int mnd_dist_check_config(struct mnd_dist *d, const char *build, const struct mn_config *cfg,
                          char *err, size_t errlen)
{
	return 0;
}

int mnd_dist_check_data(struct mnd_dist *d, const struct mn_view *train, char *err, size_t errlen)
{
	return 0;
}

int mnd_dist_bcast_config(struct mnd_dist *d, struct mn_config *cfg, char *err, size_t errlen)
{
	return 0;
}

int mnd_dist_bcast_state(struct mnd_dist *d, struct mn_trainer_state *s, char *err, size_t errlen)
{
	return 0;
}

int mnd_dist_check_state(struct mnd_dist *d, const struct mn_trainer_state *s, char *err,
                         size_t errlen)
{
	return 0;
}

#else

struct mnd_dist {
	int rank;
	int size;
	/* Where the job's time goes, for the summary at the end. */
	int64_t allreduce_ns, agree_ns;
	int64_t allreduces, agreements;
};

bool mnd_dist_available(void)
{
	return true;
}

/* MPI's error text, for messages that say what failed. */
static void mpi_errf(char *err, size_t errlen, const char *what, int code)
{
	char text[MPI_MAX_ERROR_STRING] = "";
	int len = 0;

	if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
		snprintf(text, sizeof(text), "MPI error %d", code);
	mn_errf(err, errlen, "%s: %s", what, text);
}

int mnd_dist_init(int *argc, char ***argv, struct mnd_dist **out, char *err, size_t errlen)
{
	struct mnd_dist *d;
	int provided = MPI_THREAD_SINGLE, rc;

	*out = NULL;
	rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
	if (rc != MPI_SUCCESS) {
		mpi_errf(err, errlen, "MPI_Init_thread", rc);
		return -EIO;
	}
	/* Errors come back as codes, so a failing collective is reported, not fatal in MPI. */
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	if (provided < MPI_THREAD_SERIALIZED) {
		mn_errf(err, errlen,
		        "the MPI library gives thread level %d; the training thread needs "
		        "MPI_THREAD_SERIALIZED",
		        provided);
		MPI_Finalize();
		return -ENOTSUP;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		mn_errf(err, errlen, "out of memory");
		MPI_Finalize();
		return -ENOMEM;
	}
	MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
	MPI_Comm_size(MPI_COMM_WORLD, &d->size);
	*out = d;
	return 0;
}

void mnd_dist_finalize(struct mnd_dist *d)
{
	if (!d)
		return;
	MPI_Finalize();
	free(d);
}

void mnd_dist_abort(struct mnd_dist *d, int status)
{
	if (d)
		MPI_Abort(MPI_COMM_WORLD, status);
}

void mnd_dist_log_summary(const struct mnd_dist *d)
{
	if (!d || d->rank != 0 || d->allreduces == 0 || d->agreements == 0)
		return;
	mn_log_fields(MN_LOG_INFO, "data-parallel summary",
	              (struct mn_log_field[]){
	                  MN_F_INT("world_size", d->size),
	                  MN_F_INT("allreduces", d->allreduces),
	                  MN_F_DBL("allreduce_ms_per_step",
	                           (double)d->allreduce_ns / 1e6 / (double)d->allreduces, 3),
	                  MN_F_DBL("commands_us_per_step",
	                           (double)d->agree_ns / 1e3 / (double)d->agreements, 1),
	              },
	              4);
}

int mnd_dist_rank(const struct mnd_dist *d)
{
	return d ? d->rank : 0;
}

int mnd_dist_size(const struct mnd_dist *d)
{
	return d ? d->size : 1;
}

int mnd_dist_allreduce(void *dist, float *buf, size_t n)
{
	struct mnd_dist *d = dist;
	int64_t t0 = mn_monotonic_ns();
	int rc;

	if (n > INT32_MAX)
		return -EOVERFLOW;
	rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
	d->allreduce_ns += mn_monotonic_ns() - t0;
	d->allreduces++;
	return rc == MPI_SUCCESS ? 0 : -EIO;
}

/* Waits for a non-blocking collective, sleeping between tests instead of spinning. */
static int wait_quiet(MPI_Request *req)
{
	const struct timespec nap = {0, 2 * 1000 * 1000};
	int done = 0;

	for (;;) {
		if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
			return -EIO;
		if (done)
			return 0;
		nanosleep(&nap, NULL);
	}
}

enum { CMD_STOP, CMD_PAUSE, CMD_SAVE, CMD_RELOAD, CMD_COUNT };

int mnd_dist_agree(struct mnd_dist *d, struct mnd_dist_cmd *cmd, bool wait_quietly)
{
	int32_t v[CMD_COUNT] = {0};
	int64_t t0 = mn_monotonic_ns();
	MPI_Request req;
	int rc;

	v[CMD_STOP] = cmd->stop;
	if (d->rank == 0) {
		v[CMD_PAUSE] = cmd->pause;
		v[CMD_SAVE] = cmd->save;
		v[CMD_RELOAD] = cmd->reload;
	}
	/*
	 * Always the non-blocking form: MPI never matches a blocking collective
	 * with a non-blocking one, and a paused rank must not spin in a
	 * blocking wait.
	 */
	rc = MPI_Iallreduce(MPI_IN_PLACE, v, CMD_COUNT, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD, &req);
	if (rc != MPI_SUCCESS)
		rc = -EIO;
	else if (wait_quietly && d->rank != 0)
		rc = wait_quiet(&req);
	else
		rc = MPI_Wait(&req, MPI_STATUS_IGNORE) == MPI_SUCCESS ? 0 : -EIO;
	if (!wait_quietly) {
		d->agree_ns += mn_monotonic_ns() - t0;
		d->agreements++;
	}
	if (rc < 0)
		return rc;
	cmd->stop = v[CMD_STOP] != 0;
	cmd->pause = v[CMD_PAUSE] != 0;
	cmd->save = v[CMD_SAVE] != 0;
	cmd->reload = v[CMD_RELOAD] != 0;
	return 0;
}

/* crc32 over len bytes, in pieces zlib's uInt can count. */
static uLong crc_bytes(uLong crc, const void *p, size_t len)
{
	const unsigned char *q = p;

	while (len > 0) {
		uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;

		crc = crc32(crc, q, n);
		q += n;
		len -= n;
	}
	return crc;
}

/*
 * Sends rank 0's configuration to every rank as JSON (not as bytes: ranks
 * may run on machines whose struct layouts differ): *json (free() it) and
 * *len on every rank. Collective; a failure here may have left the ranks
 * out of step (the caller ends the job).
 */
static int bcast_json(struct mnd_dist *d, const struct mn_config *cfg, char **json_out,
                      size_t *len_out, char *err, size_t errlen)
{
	char *json = NULL;
	int64_t len = 0;

	*json_out = NULL;
	*len_out = 0;
	if (d->rank == 0) {
		json = mn_config_to_json(cfg);
		if (!json)
			len = -1;
		else
			len = (int64_t)strlen(json);
	}
	if (MPI_Bcast(&len, 1, MPI_INT64_T, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
		mn_errf(err, errlen, "cannot broadcast the configuration");
		free(json);
		return -EIO;
	}
	if (len < 0 || len > INT32_MAX) {
		mn_errf(err, errlen, "rank 0 could not serialise its configuration");
		free(json);
		return -ENOMEM;
	}
	if (d->rank != 0) {
		json = malloc((size_t)len + 1);
		if (!json) {
			/* The caller aborts the job: rank 0 is already in the broadcast. */
			mn_errf(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	if (MPI_Bcast(json, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
		mn_errf(err, errlen, "cannot broadcast the configuration");
		free(json);
		return -EIO;
	}
	json[len] = '\0';
	*json_out = json;
	*len_out = (size_t)len;
	return 0;
}

int mnd_dist_bcast_config(struct mnd_dist *d, struct mn_config *cfg, char *err, size_t errlen)
{
	struct mn_config next;
	char *json;
	size_t len;
	int rc = bcast_json(d, cfg, &json, &len, err, errlen);

	if (rc == 0 && d->rank != 0) {
		rc = mn_config_parse(json, len, "rank 0's configuration", &next, err, errlen);
		if (rc == 0)
			*cfg = next;
	}
	free(json);
	return rc;
}

/*
 * The keys every rank reads from its own file and uses in its own
 * arithmetic (the shape of the network and of its share of the batch, the
 * L2 term of its gradient, its EMA, which images are training images),
 * which nothing broadcasts: rank 0's parameters, permutation and RNG are
 * broadcast, so model.seed and model.init_stddev need not agree.
 */
static const char *const job_keys[] = {
    "data.validation_size", "model.hidden", "train.batch_size", "train.l2", "train.ema_decay",
};

struct config_diff {
	int rank;
	char first[MN_CONFIG_NAME_MAX]; /* the first job key that differs; "" none */
};

static void note_difference(const char *key, bool reloadable, void *arg)
{
	struct config_diff *c = arg;

	for (size_t i = 0; i < sizeof(job_keys) / sizeof(job_keys[0]); i++)
		if (strcmp(key, job_keys[i]) == 0 && !c->first[0])
			snprintf(c->first, sizeof(c->first), "%s", key);
	/* Rank 0's value is broadcast at the start: say so, the files differ. */
	if (reloadable && mn_config_change_for(key, MN_CONFIG_TRAINER) == MN_CONFIG_APPLY)
		mn_log(MN_LOG_WARN, "rank %d follows rank 0's %s, not its own configuration's",
		       c->rank, key);
}

/*
 * Every rank's count items of type (each size bytes) from mine, in rank
 * order, in a calloc'd array (free() it); NULL with *rc -ENOMEM or -EIO
 * and err naming what was compared. Collective.
 */
static void *gather_all(struct mnd_dist *d, const void *mine, int count, MPI_Datatype type,
                        size_t size, const char *what, int *rc, char *err, size_t errlen)
{
	void *all = calloc((size_t)d->size * (size_t)count, size);

	*rc = 0;
	if (!all) {
		/* The caller aborts the job: the others are in the gather. */
		mn_errf(err, errlen, "out of memory");
		*rc = -ENOMEM;
	} else if (MPI_Allgather(mine, count, type, all, count, type, MPI_COMM_WORLD) !=
	           MPI_SUCCESS) {
		mn_errf(err, errlen, "cannot compare the ranks' %s", what);
		free(all);
		all = NULL;
		*rc = -EIO;
	}
	return all;
}

/*
 * Shares every rank's verdict on its own start (mine: "" when fine, else a
 * message naming the rank and what is wrong) and gives every rank the
 * first failing one: -EINVAL with it in err, or 0. A rank that found a
 * fault of its own still comes here, so no rank waits for another.
 */
static int agree_verdicts(struct mnd_dist *d, const char mine[MN_ERRLEN], char *err, size_t errlen)
{
	int rc;
	char *all = gather_all(d, mine, MN_ERRLEN, MPI_CHAR, 1, "starts", &rc, err, errlen);

	if (!all)
		return rc;
	for (int r = 0; r < d->size; r++) {
		char *v = all + (size_t)r * MN_ERRLEN;

		v[MN_ERRLEN - 1] = '\0';
		if (v[0]) {
			mn_errf(err, errlen, "%s", v);
			rc = -EINVAL;
			break;
		}
	}
	free(all);
	return rc;
}

/* The longest build name the ranks compare; longer ones are compared cut. */
#define BUILD_MAX 64

/*
 * The ranks' programs: the first exchange of every mnistd, kept first in
 * every later version, so that ranks of other versions are named before
 * their collectives could mismatch.
 */
static int check_build(struct mnd_dist *d, const char *build, char *err, size_t errlen)
{
	char mine[BUILD_MAX] = "", *all;
	int rc;

	snprintf(mine, sizeof(mine), "%s", build);
	all = gather_all(d, mine, BUILD_MAX, MPI_CHAR, 1, "programs", &rc, err, errlen);
	if (!all)
		return rc;
	all[BUILD_MAX - 1] = '\0';
	for (int r = 1; r < d->size; r++) {
		char *theirs = all + (size_t)r * BUILD_MAX;

		theirs[BUILD_MAX - 1] = '\0';
		if (strcmp(theirs, all) != 0) {
			mn_errf(
			    err, errlen,
			    "rank %d runs mnistd %s, rank 0 runs mnistd %s: every rank needs the "
			    "same mnistd",
			    r, theirs, all);
			rc = -EINVAL;
			break;
		}
	}
	free(all);
	return rc;
}

int mnd_dist_check_config(struct mnd_dist *d, const char *build, const struct mn_config *cfg,
                          char *err, size_t errlen)
{
	struct config_diff diff = {.rank = d->rank};
	struct mn_config *theirs = NULL;
	char verdict[MN_ERRLEN] = "", why[MN_ERRLEN] = "", *json = NULL;
	size_t len;
	int rc;

	rc = check_build(d, build, err, errlen);
	if (rc < 0)
		return rc;
	rc = bcast_json(d, cfg, &json, &len, err, errlen);
	if (rc < 0)
		return rc;
	/* From here on every rank reaches the gather, whatever it finds. */
	if (d->rank == 0 && cfg->train.batch_size < d->size)
		snprintf(verdict, sizeof(verdict),
		         "%d ranks cannot share a batch of %" PRId64
		         " (train.batch_size): start at most %" PRId64
		         " ranks or raise train.batch_size",
		         d->size, cfg->train.batch_size, cfg->train.batch_size);
	if (d->rank != 0) {
		theirs = malloc(sizeof(*theirs));
		rc = theirs ? mn_config_parse(json, len, "rank 0's configuration", theirs, why,
		                              sizeof(why))
		            : -ENOMEM;
		if (rc == -ENOMEM && !theirs)
			snprintf(why, sizeof(why), "out of memory");
		if (rc < 0)
			snprintf(verdict, sizeof(verdict),
			         "rank %d cannot read rank 0's configuration: %s", d->rank, why);
		else
			mn_config_diff(cfg, theirs, note_difference, &diff);
		if (diff.first[0])
			snprintf(
			    verdict, sizeof(verdict),
			    "rank %d was started with another %s than rank 0: every rank needs the "
			    "same %s (one configuration file for the job, or identical copies on "
			    "every node)",
			    d->rank, diff.first, diff.first);
	}
	free(theirs);
	free(json);
	return agree_verdicts(d, verdict, err, errlen);
}

int mnd_dist_check_data(struct mnd_dist *d, const struct mn_view *train, char *err, size_t errlen)
{
	uint64_t mine[3], *all;
	uLong crc = crc32(0L, Z_NULL, 0);
	int rc = 0;

	crc = crc_bytes(crc, train->images, train->count * train->dim);
	if (train->labels)
		crc = crc_bytes(crc, train->labels, train->count);
	mine[0] = train->count;
	mine[1] = train->dim;
	mine[2] = crc;
	all = gather_all(d, mine, 3, MPI_UINT64_T, sizeof(mine[0]), "training data", &rc, err,
	                 errlen);
	if (!all)
		return rc;
	for (int r = 1; r < d->size; r++) {
		const uint64_t *theirs = all + 3 * (size_t)r;

		if (memcmp(theirs, all, sizeof(mine)) != 0) {
			mn_errf(
			    err, errlen,
			    "rank %d's data.dir holds other training data than rank 0's (%" PRIu64
			    " images of %" PRIu64 " pixels, checksum %08" PRIx64
			    "; rank 0 has %" PRIu64 " of %" PRIu64 ", %08" PRIx64
			    "): every rank needs the same data set",
			    r, theirs[0], theirs[1], theirs[2], all[0], all[1], all[2]);
			rc = -EINVAL;
			break;
		}
	}
	free(all);
	return rc;
}

static int bcast(void *buf, size_t count, MPI_Datatype type)
{
	/* Large parameter arrays go in chunks that fit MPI's int counts. */
	size_t elem = type == MPI_FLOAT || type == MPI_UINT32_T ? 4 : 8;
	char *p = buf;

	while (count > 0) {
		int n = count > (size_t)INT32_MAX ? INT32_MAX : (int)count;

		if (MPI_Bcast(p, n, type, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
			return -EIO;
		p += (size_t)n * elem;
		count -= (size_t)n;
	}
	return 0;
}

int mnd_dist_bcast_state(struct mnd_dist *d, struct mn_trainer_state *s, char *err, size_t errlen)
{
	uint64_t sizes[2] = {s->nparams, s->nperm};

	/* A rank whose configuration or data differ would be caught here, not later. */
	if (MPI_Bcast(sizes, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
		goto io;
	if (sizes[0] != s->nparams || sizes[1] != s->nperm) {
		mn_errf(err, errlen,
		        "rank %d has %zu parameters and %zu training images, rank 0 has %" PRIu64
		        " and %" PRIu64 ": every rank needs the same configuration and data",
		        d->rank, s->nparams, s->nperm, sizes[0], sizes[1]);
		return -EPROTO;
	}
	if (bcast(s->params, s->nparams, MPI_FLOAT) < 0 ||
	    bcast(s->shadow, s->nparams, MPI_FLOAT) < 0 ||
	    bcast(s->global_step, 1, MPI_INT64_T) < 0 || bcast(s->epoch, 1, MPI_INT64_T) < 0 ||
	    bcast(s->perm_pos, 1, MPI_UINT64_T) < 0 || bcast(s->perm, s->nperm, MPI_UINT32_T) < 0 ||
	    bcast(s->rng->s, 4, MPI_UINT64_T) < 0)
		goto io;
	return 0;
io:
	mn_errf(err, errlen, "cannot broadcast the training state from rank 0");
	return -EIO;
}

/*
 * Everything a step depends on: equal parameters with another epoch's
 * permutation or position would train on other examples, and the summed
 * update would keep the parameters equal, hiding it.
 */
static uint32_t state_crc(const struct mn_trainer_state *s)
{
	uLong crc = crc32(0L, Z_NULL, 0);

	crc = crc_bytes(crc, s->params, s->nparams * sizeof(float));
	crc = crc_bytes(crc, s->shadow, s->nparams * sizeof(float));
	crc = crc_bytes(crc, s->global_step, sizeof(*s->global_step));
	crc = crc_bytes(crc, s->epoch, sizeof(*s->epoch));
	crc = crc_bytes(crc, s->perm_pos, sizeof(*s->perm_pos));
	crc = crc_bytes(crc, s->perm, s->nperm * sizeof(*s->perm));
	crc = crc_bytes(crc, s->rng->s, sizeof(s->rng->s));
	return (uint32_t)crc;
}

int mnd_dist_check_state(struct mnd_dist *d, const struct mn_trainer_state *s, char *err,
                         size_t errlen)
{
	uint32_t mine = state_crc(s), *all = calloc((size_t)d->size, sizeof(*all));
	int rc = 0;

	if (!all) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (MPI_Allgather(&mine, 1, MPI_UINT32_T, all, 1, MPI_UINT32_T, MPI_COMM_WORLD) !=
	    MPI_SUCCESS) {
		mn_errf(err, errlen, "cannot compare the ranks' parameters");
		free(all);
		return -EIO;
	}
	for (int r = 1; r < d->size; r++) {
		if (all[r] != all[0]) {
			mn_errf(err, errlen,
			        "rank %d diverged from rank 0 at step %" PRId64
			        " (state checksum %08" PRIx32 ", rank 0 has %08" PRIx32 ")",
			        r, *s->global_step, all[r], all[0]);
			rc = -EPROTO;
			break;
		}
	}
	free(all);
	return rc;
}

#endif
