/*
 * fuzz_metrics.c - libFuzzer target for the readers of the files a run
 * leaves for people and tools: the metrics JSON-lines files
 * (train.metrics_file, eval.metrics_file: mnistctl plot, the trainer's
 * history on resume) and the evaluator's best.json (mnistctl freeze,
 * predict, plot). Operators edit, truncate and concatenate these.
 *
 * The first byte picks the reader; the rest is the file. Besides "never
 * crash, never leak", it checks what the headers promise:
 *  - a parsed series is in strictly increasing step order and has no more
 *    points than complete lines;
 *  - best.json accepted has at most MN_BEST_MAX entries, best first, no
 *    file twice, accuracies in [0, 1];
 *  - a rejected file fills the message;
 *  - an RFC 3339 time accepted formats back to an accepted time.
 */
#include "best.h"
#include "metrics.h"
#include "util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* best.json is read by path: a memfd named through /proc. */
static int memfd = -1;

static void put_file(const uint8_t *buf, size_t len, char *path, size_t pathlen)
{
	if (memfd < 0 && (memfd = memfd_create("fuzz_metrics", MFD_CLOEXEC)) < 0)
		abort();
	if (ftruncate(memfd, 0) != 0)
		abort();
	for (size_t off = 0; off < len;) {
		ssize_t n = pwrite(memfd, buf + off, len - off, (off_t)off);

		if (n <= 0)
			abort();
		off += (size_t)n;
	}
	snprintf(path, pathlen, "/proc/self/fd/%d", memfd);
}

static void check_series(enum mn_metrics_kind kind, const uint8_t *text, size_t len)
{
	struct mn_metrics_series s = {0};
	struct mn_metrics_summary sum;
	char err[MN_ERRLEN] = "";

	if (mn_metrics_parse(kind, (const char *)text, len, "fuzz.jsonl", &s, err, sizeof(err)) <
	    0) {
		if (!err[0] || s.points || s.n)
			abort();
		return;
	}
	if (s.n > s.lines)
		abort();
	for (size_t i = 1; i < s.n; i++)
		if (s.points[i].step <= s.points[i - 1].step)
			abort();
	mn_metrics_summarize(kind == MN_METRICS_TRAIN ? &s : NULL,
	                     kind == MN_METRICS_EVAL ? &s : NULL, NULL, &sum);
	mn_metrics_series_free(&s);
}

static void check_best(const uint8_t *text, size_t len)
{
	struct mn_best_entry *e = NULL;
	struct mn_metrics_best first;
	char path[64], err[MN_ERRLEN] = "";
	size_t n = 0;
	int rc;

	put_file(text, len, path, sizeof(path));
	rc = mn_best_load_file(path, &e, &n, err, sizeof(err));
	if (rc < 0) {
		if (!err[0] || e || n)
			abort();
	} else {
		if (n > MN_BEST_MAX)
			abort();
		for (size_t i = 0; i < n; i++) {
			if (!(e[i].accuracy >= 0.0 && e[i].accuracy <= 1.0))
				abort();
			if (i > 0 && mn_best_before(&e[i], &e[i - 1]))
				abort();
			for (size_t j = 0; j < i; j++)
				if (strcmp(e[i].file, e[j].file) == 0)
					abort();
		}
		free(e);
	}
	err[0] = '\0';
	if (mn_metrics_load_best(path, &first, err, sizeof(err)) < 0 && !err[0])
		abort();
}

static void check_time(const uint8_t *text, size_t len)
{
	char s[64], back[MN_TIMELEN];
	int64_t ms, again;

	if (len >= sizeof(s))
		len = sizeof(s) - 1;
	memcpy(s, text, len);
	s[len] = '\0';
	/* Nanoseconds in an int64_t reach 2262: beyond, there is nothing to format back. */
	if (!mn_metrics_parse_time(s, &ms) || ms < 0 || ms > INT64_MAX / 1000000)
		return;
	mn_time_rfc3339_ns(ms * 1000000, back);
	if (!mn_metrics_parse_time(back, &again) || again != ms)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 4) {
	case 0:
		check_series(MN_METRICS_TRAIN, data + 1, size - 1);
		break;
	case 1:
		check_series(MN_METRICS_EVAL, data + 1, size - 1);
		break;
	case 2:
		check_best(data + 1, size - 1);
		break;
	default:
		check_time(data + 1, size - 1);
		break;
	}
	return 0;
}
