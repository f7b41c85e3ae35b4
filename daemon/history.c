/*
 * history.c - train.metrics_file lines from the worker's status.
 */
#include "history.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <cJSON.h>

#include "json.h"
#include "jsonl.h"
#include "log.h"
#include "util.h"

struct mnd_history {
	struct mn_jsonl *file;
	/* The worker's cumulative loss at the previous line: the mean since is the difference. */
	double loss_sum;
	int64_t loss_count;
	int64_t loss_nonfinite;
};

int mnd_history_open(const char *path, struct mnd_history **out, char *err, size_t errlen)
{
	struct mnd_history *h;
	int rc;

	*out = NULL;
	if (!path[0])
		return 0;
	h = calloc(1, sizeof(*h));
	if (!h) {
		mn_errf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	rc = mn_jsonl_open(path, &h->file, err, errlen);
	if (rc < 0) {
		free(h);
		return rc;
	}
	*out = h;
	return 0;
}

int mnd_history_record(struct mnd_history *h, const struct mnd_worker_status *s, char *err,
                       size_t errlen)
{
	char when[MN_TIMELEN];
	double mean;
	int64_t n;
	cJSON *o;
	int rc = -ENOMEM;

	if (!h || s->loss_count <= h->loss_count)
		return 0;
	n = s->loss_count - h->loss_count;
	/* A span with a non-finite step has no mean (null); the next span has its own. */
	mean = s->loss_nonfinite > h->loss_nonfinite ? (double)NAN
	                                             : (s->loss_sum - h->loss_sum) / (double)n;
	mn_time_rfc3339(when);
	o = cJSON_CreateObject();
	if (!o || !mn_json_add(o, "step", mn_json_int(s->step)) ||
	    !mn_json_add(o, "loss", mn_json_double(mean, 6)) ||
	    !mn_json_add(o, "learning_rate", mn_json_double(s->learning_rate, -1)) ||
	    !mn_json_add(o, "steps_per_sec", mn_json_double(s->steps_per_sec, 2)) ||
	    !cJSON_AddStringToObject(o, "time", when) ||
	    !mn_json_add(o, "max_steps", mn_json_int(s->max_steps))) {
		mn_errf(err, errlen, "train.metrics_file: out of memory for a line");
		mn_log(MN_LOG_ERROR, "%s", err);
	} else {
		rc = mn_jsonl_append(h->file, o, err, errlen);
	}
	cJSON_Delete(o);
	if (rc < 0)
		return rc;
	h->loss_sum = s->loss_sum;
	h->loss_count = s->loss_count;
	h->loss_nonfinite = s->loss_nonfinite;
	return 1;
}

int mnd_history_reopen(struct mnd_history *h, char *err, size_t errlen)
{
	return h ? mn_jsonl_reopen(h->file, err, errlen) : 0;
}

void mnd_history_close(struct mnd_history *h)
{
	if (!h)
		return;
	mn_jsonl_close(h->file);
	free(h);
}
