/*
 * jsonl.c - appending JSON lines, one write(2) per record.
 */
#include "jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct mn_jsonl {
	int fd;
	bool torn;      /* the file ends in a partial line */
	bool lost_name; /* the name is gone and a new file cannot be made: said once */
	int failing;    /* the errno of the last failure; 0 while lines get written */
	uint64_t lost;  /* lines not written since that failure */
	char *path;
};

static int open_fd(const char *path, int *fd, char *err, size_t errlen)
{
	char why[MN_ERRLEN];
	size_t n = strlen(path);

	/* Never blocks: a FIFO under the name is refused, not waited on for a reader. */
	*fd = mn_open_append(path, 0640, why, sizeof(why));
	if (*fd < 0) {
		int rc = *fd;

		*fd = -1;
		/* "<path>: <why>" from util, said as "<path>: cannot open metrics file: <why>". */
		if (strncmp(why, path, n) == 0 && why[n] == ':')
			memmove(why, why + n + 2, strlen(why + n + 2) + 1);
		if (strncmp(why, "cannot open: ", 13) == 0)
			memmove(why, why + 13, strlen(why + 13) + 1);
		mn_errf(err, errlen, "%s: cannot open metrics file: %s", path, why);
		return rc;
	}
	return 0;
}

int mn_jsonl_open(const char *path, struct mn_jsonl **out, char *err, size_t errlen)
{
	struct mn_jsonl *f;
	int rc;

	*out = NULL;
	if (!path[0])
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(path))) {
		free(f);
		mn_errf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	rc = open_fd(path, &f->fd, err, errlen);
	if (rc < 0) {
		free(f->path);
		free(f);
		return rc;
	}
	f->torn = mn_fd_ends_mid_line(f->fd);
	*out = f;
	return 0;
}

int mn_jsonl_reopen(struct mn_jsonl *f, char *err, size_t errlen)
{
	int fd, rc;

	if (!f)
		return 0;
	rc = open_fd(f->path, &fd, err, errlen);
	if (rc < 0)
		return rc;
	close(f->fd);
	f->fd = fd;
	/* A fresh file (logrotate's create) has no partial line to end; another may. */
	f->torn = mn_fd_ends_mid_line(fd);
	return 0;
}

/*
 * Whether the path still names the file being written: if it was moved
 * aside or removed without a SIGHUP (logrotate without postrotate, an
 * operator's rm), every later line would go where no reader looks, so the
 * next goes to a new file under the name, as readers follow the name.
 */
static void follow_name(struct mn_jsonl *f)
{
	char err[MN_ERRLEN];

	if (mn_path_names_fd(f->path, f->fd) != 0)
		return; /* still it, or not known to be gone */
	if (mn_jsonl_reopen(f, err, sizeof(err)) < 0) {
		if (!f->lost_name)
			mn_log(MN_LOG_ERROR, "%s; lines go to the file it named", err);
		f->lost_name = true;
		return;
	}
	f->lost_name = false;
	mn_log(MN_LOG_WARN, "%s was moved or removed: lines go to a new file under its name",
	       f->path);
}

/*
 * Cuts a partial line off again, so the file stays one whole JSON object
 * per line. Only if that fails is the next line started afresh.
 */
static bool drop_partial_line(struct mn_jsonl *f, size_t written)
{
	struct stat st;

	if (fstat(f->fd, &st) == 0 && (uintmax_t)st.st_size >= written &&
	    ftruncate(f->fd, st.st_size - (off_t)written) == 0)
		return true;
	f->torn = true;
	return false;
}

/*
 * A full disk fails every line until there is room again: logged at the
 * first failure, not at every line (nor at every change of reason: a bad
 * disk can alternate short writes and EIO), and the first line written
 * again says how many were lost.
 */
static int said(struct mn_jsonl *f, int rc, const char *err)
{
	if (rc < 0) {
		f->lost++;
		if (!f->failing)
			mn_log(MN_LOG_ERROR, "%s; lines are not written until this passes", err);
		f->failing = -rc;
	} else if (f->failing) {
		mn_log(MN_LOG_WARN, "%s: writing again; %llu line%s not written", f->path,
		       (unsigned long long)f->lost, f->lost == 1 ? " was" : "s were");
		f->failing = 0;
		f->lost = 0;
	}
	return rc;
}

int mn_jsonl_append(struct mn_jsonl *f, const cJSON *obj, char *err, size_t errlen)
{
	char *text = NULL, *line = NULL, *p;
	size_t len;
	ssize_t n;
	int rc = -ENOMEM;

	if (!f)
		return 0;
	text = cJSON_PrintUnformatted(obj);
	if (!text || !(line = malloc(strlen(text) + 2))) {
		mn_errf(err, errlen, "%s: out of memory for a metrics line", f->path);
		goto out;
	}
	follow_name(f);
	/* After a partial line that could not be removed, end that one first. */
	p = line;
	if (f->torn)
		*p++ = '\n';
	len = strlen(text);
	memcpy(p, text, len);
	p += len;
	*p++ = '\n';
	len = (size_t)(p - line);
	n = write(f->fd, line, len);
	if (n < 0) {
		rc = -errno;
		mn_errf(err, errlen, "%s: cannot write: %s", f->path, strerror(-rc));
	} else if ((size_t)n != len) {
		rc = -ENOSPC;
		mn_errf(err, errlen, "%s: short write (%zd of %zu bytes; disk full?)", f->path, n,
		        len);
		if (n > 0 && !drop_partial_line(f, (size_t)n))
			mn_errf(
			    err, errlen,
			    "%s: short write (%zd of %zu bytes; disk full?), and the partial line "
			    "cannot be removed: %s",
			    f->path, n, len, strerror(errno));
	} else {
		f->torn = false;
		rc = 0;
	}
out:
	free(line);
	cJSON_free(text);
	return said(f, rc, err);
}

void mn_jsonl_close(struct mn_jsonl *f)
{
	if (!f)
		return;
	close(f->fd);
	free(f->path);
	free(f);
}
