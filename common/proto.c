/* proto.c - see proto.h. */
#include "proto.h"

#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct mn_framer {
	char *buf;
	size_t cap;
	size_t start; /* first byte not yet returned */
	size_t scan;  /* bytes before this (from start) hold no newline */
	size_t end;   /* one past the last byte buffered */
	size_t max_line;
	bool broken; /* an over-long line was seen */
};

static const char *const cmd_names[] = {
    [MN_PROTO_STATUS] = "status", [MN_PROTO_RELOAD] = "reload", [MN_PROTO_SAVE] = "save",
    [MN_PROTO_PAUSE] = "pause",   [MN_PROTO_RESUME] = "resume",
};

#define NCMDS (sizeof(cmd_names) / sizeof(cmd_names[0]))

int mn_framer_new(size_t max_line, struct mn_framer **out)
{
	struct mn_framer *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	f->max_line = max_line;
	*out = f;
	return 0;
}

void mn_framer_free(struct mn_framer *f)
{
	if (!f)
		return;
	free(f->buf);
	free(f);
}

int mn_framer_push(struct mn_framer *f, const char *data, size_t len)
{
	if (f->broken)
		return -EMSGSIZE;
	if (len == 0)
		return 0;
	if (f->start > 0) {
		/* Returned lines are dead; keep the buffer from creeping forward. */
		memmove(f->buf, f->buf + f->start, f->end - f->start);
		f->end -= f->start;
		f->scan -= f->start;
		f->start = 0;
	}
	if (len > SIZE_MAX - f->end - 1)
		return -ENOMEM;
	/* One spare byte so a line at the very end can still be NUL-terminated. */
	if (f->end + len + 1 > f->cap) {
		size_t cap = f->cap ? f->cap : 256;
		char *nb;

		while (cap < f->end + len + 1)
			cap = cap > SIZE_MAX / 2 ? f->end + len + 1 : cap * 2;
		nb = realloc(f->buf, cap);
		if (!nb)
			return -ENOMEM;
		f->buf = nb;
		f->cap = cap;
	}
	memcpy(f->buf + f->end, data, len);
	f->end += len;
	return 0;
}

int mn_framer_next(struct mn_framer *f, char **line, size_t *len)
{
	char *nl;
	size_t n;

	if (f->broken)
		return -EMSGSIZE;
	if (f->start == f->end)
		return 0;
	nl = memchr(f->buf + f->scan, '\n', f->end - f->scan);
	if (!nl) {
		size_t partial = f->end - f->start;

		f->scan = f->end;
		/* max_line bytes plus a '\r' may still turn out to be a valid line. */
		if (partial > f->max_line + 1 ||
		    (partial == f->max_line + 1 && f->buf[f->end - 1] != '\r'))
			f->broken = true;
		return f->broken ? -EMSGSIZE : 0;
	}
	n = (size_t)(nl - (f->buf + f->start));
	if (n > 0 && f->buf[f->start + n - 1] == '\r')
		n--;
	if (n > f->max_line) {
		f->broken = true;
		return -EMSGSIZE;
	}
	*line = f->buf + f->start;
	(*line)[n] = '\0';
	*len = n;
	f->start = (size_t)(nl - f->buf) + 1;
	f->scan = f->start;
	return 1;
}

size_t mn_framer_pending(const struct mn_framer *f)
{
	return f->end - f->start;
}

/* The request's "cmd" member, read by json.h's rules; *root holds it (free it either way). */
static int request_cmd(const char *line, size_t len, cJSON **root, const cJSON **c, char *err,
                       size_t errlen)
{
	const struct mn_json_member members[] = {{"cmd", cJSON_String, true, c}};
	struct mn_json_error e;
	enum mn_json_fault fault;
	/* Exactly len bytes: the caller's buffer need not be NUL-terminated. */
	int rc = mn_json_parse(line, len, MN_JSON_EXACT_INTEGERS, root, &e);

	if (rc == -ENOMEM) {
		mn_errf(err, errlen, "out of memory");
		return rc;
	}
	if (rc < 0 && e.rule == MN_JSON_RULE_NUL)
		mn_errf(err, errlen, "request contains a NUL byte");
	else if (rc < 0 && e.rule != MN_JSON_RULE_SYNTAX)
		/* The configuration's rules: \u0000, raw control characters, rounded numbers. */
		mn_errf(err, errlen, "invalid request at byte %zu: %s", e.at, e.what);
	else if (rc < 0)
		mn_errf(err, errlen, "invalid JSON; expected a request like {\"cmd\":\"status\"}");
	else if (!cJSON_IsObject(*root))
		mn_errf(err, errlen, "a request must be a JSON object like {\"cmd\":\"status\"}");
	else if (mn_json_members(*root, members, 1, true, &fault, NULL) < 0)
		mn_errf(err, errlen, "%s",
		        fault == MN_JSON_MISSING     ? "missing \"cmd\""
		        : fault == MN_JSON_DUPLICATE ? "\"cmd\" given twice"
		                                     : "\"cmd\" must be a string");
	else
		return 0;
	return -EINVAL;
}

int mn_proto_parse(const char *line, size_t len, enum mn_proto_cmd *cmd, char *err, size_t errlen)
{
	const cJSON *c = NULL;
	cJSON *root = NULL;
	char name[40];
	int rc = request_cmd(line, len, &root, &c, err, errlen);

	if (rc < 0)
		goto out;
	rc = -EINVAL;
	for (size_t i = 0; i < NCMDS; i++) {
		if (strcmp(c->valuestring, cmd_names[i]) == 0) {
			*cmd = (enum mn_proto_cmd)i;
			rc = 0;
			goto out;
		}
	}
	mn_printable(name, sizeof(name), c->valuestring, 32);
	mn_errf(err, errlen,
	        "unknown command \"%s\"; commands are status, reload, save, pause, resume", name);
out:
	cJSON_Delete(root);
	return rc;
}

const char *mn_proto_cmd_name(enum mn_proto_cmd cmd)
{
	return (size_t)cmd < NCMDS ? cmd_names[cmd] : "unknown";
}

int mn_proto_keys_add(struct mn_proto_keys *k, const char *key)
{
	if (k->n >= MN_PROTO_MAX_KEYS)
		return -ENOSPC;
	k->keys[k->n++] = key;
	return 0;
}

static cJSON *new_ok(void)
{
	cJSON *o = cJSON_CreateObject();

	if (o && !cJSON_AddTrueToObject(o, "ok")) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

cJSON *mn_proto_error(const char *message)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	if (!cJSON_AddFalseToObject(o, "ok") || !cJSON_AddStringToObject(o, "error", message)) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

cJSON *mn_proto_status(const struct mn_proto_status *s)
{
	cJSON *o = new_ok();
	const char *state = s->stopping ? "stopping" : s->paused ? "paused" : "training";
	bool ok;

	if (!o)
		return NULL;
	ok = cJSON_AddStringToObject(o, "state", state) &&
	     mn_json_add(o, "step", mn_json_int(s->step)) &&
	     mn_json_add(o, "max_steps", mn_json_int(s->max_steps)) &&
	     mn_json_add(o, "learning_rate", mn_json_double(s->learning_rate, -1)) &&
	     mn_json_add(o, "loss", mn_json_double(s->loss, -1)) &&
	     mn_json_add(o, "steps_per_sec", mn_json_double(s->steps_per_sec, -1)) &&
	     cJSON_AddBoolToObject(o, "paused", s->paused);
	if (ok) {
		if (s->latest_checkpoint && s->latest_checkpoint[0])
			ok = cJSON_AddStringToObject(o, "latest_checkpoint", s->latest_checkpoint);
		else
			ok = cJSON_AddNullToObject(o, "latest_checkpoint");
	}
	ok = ok && mn_json_add(o, "checkpoint_failures", mn_json_int(s->checkpoint_failures));
	if (ok) {
		if (s->checkpoint_failures > 0 && s->checkpoint_error && s->checkpoint_error[0])
			ok = cJSON_AddStringToObject(o, "checkpoint_error", s->checkpoint_error);
		else
			ok = cJSON_AddNullToObject(o, "checkpoint_error");
	}
	if (ok && s->early_stopping)
		ok = mn_json_add(o, "best_accuracy", mn_json_double(s->best_accuracy, -1)) &&
		     mn_json_add(o, "best_step",
		                 s->best_step < 0 ? cJSON_CreateNull()
		                                  : mn_json_int(s->best_step)) &&
		     mn_json_add(o, "evals_since_best", mn_json_int(s->evals_since_best)) &&
		     mn_json_add(o, "patience", mn_json_int(s->patience));
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

static bool add_keys(cJSON *o, const char *name, const struct mn_proto_keys *k)
{
	cJSON *a = cJSON_AddArrayToObject(o, name);

	if (!a)
		return false;
	for (size_t i = 0; k && i < k->n; i++) {
		cJSON *s = cJSON_CreateString(k->keys[i]);

		if (!s || !cJSON_AddItemToArray(a, s)) {
			cJSON_Delete(s);
			return false;
		}
	}
	return true;
}

cJSON *mn_proto_reload(const struct mn_proto_keys *applied, const struct mn_proto_keys *restart)
{
	cJSON *o = new_ok();

	if (o && (!add_keys(o, "applied", applied) || !add_keys(o, "restart_required", restart))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

cJSON *mn_proto_saved(const char *checkpoint, int64_t step)
{
	cJSON *o = new_ok();

	if (o && (!cJSON_AddStringToObject(o, "checkpoint", checkpoint) ||
	          !mn_json_add(o, "step", mn_json_int(step)))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

cJSON *mn_proto_paused(bool paused, int64_t step)
{
	cJSON *o = new_ok();

	if (o && (!cJSON_AddBoolToObject(o, "paused", paused) ||
	          !mn_json_add(o, "step", mn_json_int(step)))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

char *mn_proto_line(const cJSON *response, size_t *len)
{
	char *s = cJSON_PrintUnformatted(response), *line;
	size_t n;

	if (!s)
		return NULL;
	n = strlen(s);
	/* A copy rather than realloc: s comes from cJSON's allocator hooks. */
	line = malloc(n + 2);
	if (line) {
		memcpy(line, s, n);
		line[n] = '\n';
		line[n + 1] = '\0';
		*len = n + 1;
	}
	cJSON_free(s);
	return line;
}
