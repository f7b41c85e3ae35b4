/* best.c - see best.h. */
#include "best.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "json.h"

/* Far more than MN_BEST_MAX entries take. */
#define BEST_FILE_MAX ((size_t)4 << 20)

bool mn_best_before(const struct mn_best_entry *a, const struct mn_best_entry *b)
{
	if (a->accuracy != b->accuracy)
		return a->accuracy > b->accuracy;
	return a->step < b->step;
}

static int compare(const void *pa, const void *pb)
{
	const struct mn_best_entry *a = pa, *b = pb;

	if (mn_best_before(a, b))
		return -1;
	return mn_best_before(b, a) ? 1 : 0;
}

void mn_best_sort(struct mn_best_entry *e, size_t n)
{
	if (n > 1)
		qsort(e, n, sizeof(*e), compare);
}

static bool plain_name(const char *s)
{
	size_t n = strlen(s), sfx = strlen(MN_CKPT_SUFFIX);

	return n > sfx && n < MN_CKPT_MAX_NAME && s[0] != '.' && !strchr(s, '/') &&
	       strcmp(s + n - sfx, MN_CKPT_SUFFIX) == 0;
}

static bool number_in(const cJSON *v, double lo, double hi, double *out)
{
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
	    v->valuedouble > hi)
		return false;
	*out = v->valuedouble;
	return true;
}

/* Whether an object has a member twice (readers taking the first or the last would disagree). */
static bool duplicated(const cJSON *o)
{
	const cJSON *m;

	cJSON_ArrayForEach(m, o)
	{
		if (mn_json_duplicate(o, m))
			return true;
	}
	return false;
}

/* Fills e from one member of "best"; the message says what is wrong. */
static int parse_entry(const cJSON *o, struct mn_best_entry *e, char *err, size_t errlen)
{
	const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
	const cJSON *file = cJSON_GetObjectItemCaseSensitive(o, "file");
	const cJSON *time = cJSON_GetObjectItemCaseSensitive(o, "time");
	memset(e, 0, sizeof(*e));
	if (!cJSON_IsObject(o) || duplicated(o)) {
		mn_errf(err, errlen, "not an object with each member once");
		return -EINVAL;
	}
	if (!mn_json_get_int(step, 0, (int64_t)1 << 53, &e->step)) {
		mn_errf(err, errlen, "step must be an integer >= 0");
		return -EINVAL;
	}
	if (!number_in(cJSON_GetObjectItemCaseSensitive(o, "accuracy"), 0, 1, &e->accuracy)) {
		mn_errf(err, errlen, "accuracy must be a number in [0, 1]");
		return -EINVAL;
	}
	if (!number_in(cJSON_GetObjectItemCaseSensitive(o, "loss"), -HUGE_VAL, HUGE_VAL,
	               &e->loss)) {
		mn_errf(err, errlen, "loss must be a finite number");
		return -EINVAL;
	}
	if (!cJSON_IsString(file) || !plain_name(file->valuestring)) {
		mn_errf(err, errlen, "file must be a plain name ending in %s", MN_CKPT_SUFFIX);
		return -EINVAL;
	}
	snprintf(e->file, sizeof(e->file), "%s", file->valuestring);
	if (!cJSON_IsString(time) || strlen(time->valuestring) >= sizeof(e->time)) {
		mn_errf(err, errlen, "time must be an RFC 3339 time stamp");
		return -EINVAL;
	}
	snprintf(e->time, sizeof(e->time), "%s", time->valuestring);
	return 0;
}

static int parse(const char *text, size_t len, struct mn_best_entry **out, size_t *n, char *err,
                 size_t errlen)
{
	struct mn_json_error je;
	const cJSON *list, *o;
	struct mn_best_entry *e = NULL;
	cJSON *root = NULL;
	size_t count = 0, i = 0;
	int rc;

	rc = mn_json_parse(text, len, MN_JSON_UTF8, &root, &je);
	if (rc == -ENOMEM) {
		mn_errf(err, errlen, "out of memory");
		return rc;
	}
	if (rc < 0) {
		mn_errf(err, errlen, "not JSON: %s at line %zu, column %zu", je.what, je.line,
		        je.col);
		return rc;
	}
	rc = -EINVAL;
	list = cJSON_GetObjectItemCaseSensitive(root, "best");
	if (!cJSON_IsObject(root) || !cJSON_IsArray(list) || duplicated(root)) {
		mn_errf(err, errlen, "not a JSON object with one \"best\" array");
		goto out;
	}
	count = (size_t)cJSON_GetArraySize(list);
	if (count > MN_BEST_MAX) {
		mn_errf(err, errlen, "more than %d entries", MN_BEST_MAX);
		goto out;
	}
	e = calloc(count ? count : 1, sizeof(*e));
	if (!e) {
		mn_errf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto out;
	}
	cJSON_ArrayForEach(o, list)
	{
		if (parse_entry(o, &e[i], err, errlen) < 0) {
			mn_errprefix(err, errlen, "best[%zu]", i);
			goto out;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(e[j].file, e[i].file) == 0) {
				mn_errf(err, errlen, "best[%zu]: %s is listed twice", i, e[i].file);
				goto out;
			}
		}
		if (i > 0 && mn_best_before(&e[i], &e[i - 1])) {
			mn_errf(err, errlen, "best[%zu]: not in order, best first", i);
			goto out;
		}
		i++;
	}
	*out = e;
	*n = count;
	e = NULL;
	rc = 0;
out:
	free(e);
	cJSON_Delete(root);
	return rc;
}

static int load(const char *path, unsigned flags, struct mn_best_entry **out, size_t *n, char *err,
                size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int fd, rc;

	*out = NULL;
	*n = 0;
	fd = mn_open_regular(path, flags, NULL, err, errlen);
	if (fd < 0)
		return fd;
	rc = mn_read_fd(fd, path, BEST_FILE_MAX, &text, &len, err, errlen);
	close(fd);
	if (rc < 0)
		return rc;
	rc = parse(text, len, out, n, err, errlen);
	free(text);
	if (rc < 0)
		mn_errprefix(err, errlen, "%s", path);
	return rc;
}

int mn_best_load_file(const char *path, struct mn_best_entry **out, size_t *n, char *err,
                      size_t errlen)
{
	return load(path, 0, out, n, err, errlen);
}

int mn_best_load(const char *dir, struct mn_best_entry **out, size_t *n, char *err, size_t errlen)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", dir, MN_BEST_FILE);
	/* The writer never makes a link: one points at a list that is not this directory's. */
	return load(path, MN_OPEN_NOFOLLOW, out, n, err, errlen);
}

int mn_best_first(const char *dir, struct mn_best_entry *out, char *err, size_t errlen)
{
	struct mn_best_entry *e = NULL;
	size_t n = 0;
	int rc = mn_best_load(dir, &e, &n, err, errlen);

	if (rc == 0 && n == 0) {
		mn_errf(err, errlen, "%s/%s lists no checkpoint", dir, MN_BEST_FILE);
		rc = -ENOENT;
	}
	if (rc == 0)
		*out = e[0];
	free(e);
	return rc;
}

static cJSON *entry_json(const struct mn_best_entry *e)
{
	cJSON *o = cJSON_CreateObject();

	if (!o || !mn_json_add(o, "step", mn_json_int(e->step)) ||
	    !mn_json_add(o, "accuracy", mn_json_double(e->accuracy, -1)) ||
	    !mn_json_add(o, "loss", mn_json_double(e->loss, -1)) ||
	    !mn_json_add(o, "file", cJSON_CreateString(e->file)) ||
	    !mn_json_add(o, "time", cJSON_CreateString(e->time))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

int mn_best_save(const char *dir, const struct mn_best_entry *e, size_t n, char *err, size_t errlen)
{
	cJSON *root = cJSON_CreateObject(), *list = cJSON_CreateArray();
	char *text = NULL;
	int rc = -ENOMEM;

	if (!root) {
		cJSON_Delete(list);
		goto out;
	}
	if (!mn_json_add(root, "best", list))
		goto out;
	for (size_t i = 0; i < n; i++)
		if (!mn_json_add(list, NULL, entry_json(&e[i])))
			goto out;
	text = cJSON_Print(root);
	if (!text)
		goto out;
	{
		size_t len = strlen(text);
		struct iovec iov[2] = {{text, len}, {"\n", 1}};

		rc = mn_write_atomic(dir, MN_BEST_FILE, iov, 2, 0644, err, errlen);
	}
out:
	if (rc == -ENOMEM)
		mn_errf(err, errlen, "%s/%s: out of memory", dir, MN_BEST_FILE);
	cJSON_free(text);
	cJSON_Delete(root);
	return rc;
}
