/* early.c - see early.h. */
#include "early.h"

#include <cJSON.h>
#include <errno.h>
#include <unistd.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "follow.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* Garbage lines logged one by one before only every GARBAGE_EVERY-th is. */
#define GARBAGE_LOGGED 10
#define GARBAGE_EVERY  1000
/* A line the follower delivers, its newline and the NUL. */
#define LINE_BUF (MN_FOLLOW_LINE_DEFAULT + 2)

struct mnd_early {
	struct mnd_early_params p;
	char path[MN_CONFIG_PATH_MAX];
	struct mn_follow *follow;
	struct mnd_early_status s;
	int64_t last_step; /* newest step counted, -1 before the first */
	uint64_t garbage;
};

/* The step and accuracy of a metrics line; false if it is not an evaluation. */
static bool parse_line(const char *line, size_t len, int64_t *step, double *accuracy)
{
	const cJSON *st = NULL, *acc = NULL;
	struct mn_json_member members[] = {
	    {.name = "step", .type = cJSON_Number, .required = true, .value = &st},
	    {.name = "accuracy", .type = cJSON_Number, .required = true, .value = &acc},
	};
	struct mn_json_error je;
	cJSON *o = NULL;
	bool ok;

	if (mn_json_parse(line, len, 0, &o, &je) < 0)
		return false;
	ok = cJSON_IsObject(o) && mn_json_members(o, members, 2, true, NULL, NULL) == 0 &&
	     mn_json_get_int(st, 0, (int64_t)1 << 53, step) && isfinite(acc->valuedouble) &&
	     acc->valuedouble >= 0 && acc->valuedouble <= 1;
	if (ok)
		*accuracy = acc->valuedouble;
	cJSON_Delete(o);
	return ok;
}

static void log_garbage(struct mnd_early *e, const char *line, size_t len)
{
	e->garbage++;
	if (e->garbage > GARBAGE_LOGGED && e->garbage % GARBAGE_EVERY != 0)
		return;
	mn_log(MN_LOG_WARN, "%s: ignoring a line that is not an evaluation (%llu so far): %.60s%s",
	       e->path, (unsigned long long)e->garbage, line, len > 60 ? "..." : "");
}

/* Counts one evaluation of this run; true if patience ran out with it. Logged unless quiet. */
static bool count(struct mnd_early *e, int64_t step, double accuracy, bool quiet)
{
	struct mnd_early_status *s = &e->s;

	e->last_step = step;
	s->evaluations++;
	if (!s->have_best || accuracy > s->best_accuracy + e->p.min_delta) {
		s->have_best = true;
		s->best_accuracy = accuracy;
		s->best_step = step;
		s->since_best = 0;
	} else {
		s->since_best++;
	}
	if (quiet)
		return s->since_best >= s->patience;
	mn_log_fields(MN_LOG_INFO, "early stopping: evaluation",
	              (struct mn_log_field[]){
	                  MN_F_INT("step", step),
	                  MN_F_DBL("accuracy", accuracy, 4),
	                  MN_F_INT("best_step", s->best_step),
	                  MN_F_DBL("best_accuracy", s->best_accuracy, 4),
	                  MN_F_INT("since_best", s->since_best),
	                  MN_F_INT("patience", s->patience),
	              },
	              6);
	return s->since_best >= s->patience;
}

/* Judges one line (the follower's, or the verdict's); true if patience ran out with it. */
static bool judge(struct mnd_early *e, const char *line, size_t len, bool quiet)
{
	int64_t step, now;
	double accuracy;

	if (!parse_line(line, len, &step, &accuracy)) {
		/*
		 * A record cut short (a full or failing disk under the evaluator)
		 * is what the other readers of the file leave out quietly too.
		 */
		if (mn_metrics_line_unfinished(line, len)) {
			if (!quiet)
				mn_log(MN_LOG_DEBUG,
				       "%s: passing over a record its writer never finished",
				       e->path);
		} else if (!quiet) {
			log_garbage(e, line, len);
		}
		return false;
	}
	if (step <= e->last_step)
		return false; /* counted already, or older than what was */
	now = e->p.current_step(e->p.arg);
	if (step > now) {
		if (!quiet)
			mn_log(MN_LOG_DEBUG, "%s: step %lld is beyond this run's %lld; not counted",
			       e->path, (long long)step, (long long)now);
		return false;
	}
	return count(e, step, accuracy, quiet);
}

static void on_line(const char *line, size_t len, void *arg)
{
	struct mnd_early *e = arg;

	if (e->s.stopped)
		return;
	if (judge(e, line, len, false)) {
		e->s.stopped = true;
		e->p.on_stop(&e->s, e->p.arg);
	}
}

static bool valid_params(const struct mnd_early_params *p)
{
	return p->metrics_file && p->metrics_file[0] &&
	       strlen(p->metrics_file) < MN_CONFIG_PATH_MAX && p->patience >= 1 &&
	       p->min_delta >= 0 && p->current_step && p->on_stop;
}

static void init(struct mnd_early *e, const struct mnd_early_params *p)
{
	e->p = *p;
	snprintf(e->path, sizeof(e->path), "%s", p->metrics_file);
	e->p.metrics_file = e->path;
	e->s.patience = p->patience;
	e->s.best_step = -1;
	e->last_step = -1;
}

int mnd_early_verdict(const struct mnd_early_params *p, struct mnd_early_status *s, char *err,
                      size_t errlen)
{
	struct mnd_early *e;
	char *line;
	bool long_line = false;
	FILE *f;
	int fd, rc = 0;

	if (!valid_params(p)) {
		mn_errf(err, errlen, "mnd_early_verdict: invalid parameters");
		return -EINVAL;
	}
	e = calloc(1, sizeof(*e) + LINE_BUF);
	if (!e) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	line = (char *)(e + 1);
	init(e, p);
	fd = mn_open_regular(e->path, 0, NULL, err, errlen);
	if (fd == -ENOENT) {
		*s = e->s;
		free(e);
		return 0;
	}
	if (fd < 0) {
		free(e);
		return fd;
	}
	f = fdopen(fd, "r");
	if (!f) {
		rc = -errno;
		mn_errf(err, errlen, "%s: %s", e->path, strerror(-rc));
		close(fd);
		free(e);
		return rc;
	}
	/*
	 * Complete lines only (a partial last one is not a line yet), and none
	 * longer than the follower delivers: those are skipped to their newline
	 * in bounded pieces, so no line, however long, is held in memory.
	 */
	while (!e->s.stopped && fgets(line, LINE_BUF, f)) {
		size_t n = strlen(line);

		if (n == 0 || line[n - 1] != '\n') {
			long_line = long_line || n == LINE_BUF - 1;
			continue; /* a long line's piece, or the partial last line */
		}
		line[--n] = '\0';
		if (!long_line && judge(e, line, n, true))
			e->s.stopped = true;
		long_line = false;
	}
	if (ferror(f)) {
		rc = -EIO;
		mn_errf(err, errlen, "%s: cannot read", e->path);
	}
	fclose(f);
	*s = e->s;
	free(e);
	if (rc < 0)
		return rc;
	return s->stopped ? 1 : 0;
}

int mnd_early_start(uv_loop_t *loop, const struct mnd_early_params *p, struct mnd_early **out,
                    char *err, size_t errlen)
{
	struct mn_follow_params fp = {
	    .mode = p->mode,
	    .poll_interval_ms = p->poll_interval_ms,
	    .on_line = on_line,
	};
	struct mnd_early *e;
	int rc;

	*out = NULL;
	if (!valid_params(p)) {
		mn_errf(err, errlen, "mnd_early_start: invalid parameters");
		return -EINVAL;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	init(e, p);
	fp.path = e->path;
	fp.arg = e;
	rc = mn_follow_start(loop, &fp, &e->follow, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "train.early_stopping.metrics_file");
		free(e);
		return rc;
	}
	*out = e;
	return 0;
}

void mnd_early_get_status(const struct mnd_early *e, struct mnd_early_status *s)
{
	*s = e->s;
}

void mnd_early_close(struct mnd_early *e)
{
	if (!e)
		return;
	mn_follow_close(e->follow);
	free(e);
}
