/* early.c - see early.h. */
#include "early.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "follow.h"
#include "json.h"
#include "log.h"
#include "util.h"

/* Garbage lines logged one by one before only every GARBAGE_EVERY-th is. */
#define GARBAGE_LOGGED 10
#define GARBAGE_EVERY  1000

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

/* Counts one evaluation of this run; true if patience ran out with it. */
static bool count(struct mnd_early *e, int64_t step, double accuracy)
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

static void on_line(const char *line, size_t len, void *arg)
{
	struct mnd_early *e = arg;
	int64_t step, now;
	double accuracy;

	if (e->s.stopped)
		return;
	if (!parse_line(line, len, &step, &accuracy)) {
		log_garbage(e, line, len);
		return;
	}
	if (step <= e->last_step)
		return; /* counted already, or older than what was */
	now = e->p.current_step(e->p.arg);
	if (step > now) {
		mn_log(MN_LOG_DEBUG, "%s: step %lld is beyond this run's %lld; not counted",
		       e->path, (long long)step, (long long)now);
		return;
	}
	if (count(e, step, accuracy)) {
		e->s.stopped = true;
		e->p.on_stop(&e->s, e->p.arg);
	}
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
	if (!p->metrics_file || !p->metrics_file[0] ||
	    strlen(p->metrics_file) >= MN_CONFIG_PATH_MAX || p->patience < 1 ||
	    !(p->min_delta >= 0) || !p->current_step || !p->on_stop) {
		mn_errf(err, errlen, "mnd_early_start: invalid parameters");
		return -EINVAL;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	e->p = *p;
	snprintf(e->path, sizeof(e->path), "%s", p->metrics_file);
	e->p.metrics_file = e->path;
	e->s.patience = p->patience;
	e->s.best_step = -1;
	e->last_step = -1;
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
