/*
 * fuzz_proto.c - libFuzzer target for the control protocol: the line framer
 * fed arbitrary chunks, request parsing, and the responses built from what
 * a client sent.
 *
 * Built by meson with -Dfuzzing=true (see tests/fuzz/meson.build); run by
 * scripts/fuzz.sh. The input is
 *   byte 0     the framer's line limit (0 .. 255 bytes)
 *   byte 1     seed of the chunk sizes; bit 7 set: some pushes are not
 *              followed by taking lines out (as while the daemon waits)
 *   the rest   the byte stream a client sends
 * and the whole input is also parsed as one request. Besides "never crash,
 * never leak", it checks the framer against a model of the stream:
 *  - every line it yields is the next line of the stream, without its
 *    "\n" or "\r\n", NUL-terminated, and never longer than the limit;
 *  - it reports an over-long line only when that line cannot end within the
 *    limit, and refuses everything afterwards;
 *  - otherwise it yields every complete line and keeps exactly the rest;
 * and that every request, accepted or not, gets a response that is one
 * well-formed JSON line.
 */
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The stream the framer has been given, and how much of it came out as lines. */
struct model {
	const char *s;
	size_t pushed;
	size_t consumed;
	size_t max_line;
	bool broken;
};

/*
 * A copy of the input that ends right before an inaccessible page. cJSON
 * is a system library without ASan instrumentation, so only a fault can
 * show it reading past the len bytes mn_proto_parse promises to stay in.
 */
static const char *guarded(const uint8_t *data, size_t size)
{
	static char *map;
	static size_t maplen;
	size_t page = (size_t)sysconf(_SC_PAGESIZE), need = (size / page + 2) * page;

	if (need > maplen) {
		if (map)
			munmap(map, maplen);
		map = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (map == MAP_FAILED || mprotect(map + need - page, page, PROT_NONE) != 0)
			abort();
		maplen = need;
	}
	memcpy(map + maplen - page - size, data, size);
	return map + maplen - page - size;
}

/* Length of a line of n bytes once a final '\r' is dropped. */
static size_t stripped(const char *line, size_t n)
{
	return n > 0 && line[n - 1] == '\r' ? n - 1 : n;
}

/* Serialises a response and checks it is exactly one JSON object line. */
static cJSON *check_line(cJSON *response)
{
	cJSON *back;
	size_t len = 0;
	char *line;

	if (!response)
		abort();
	line = mn_proto_line(response, &len);
	if (!line || len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1) ||
	    strlen(line) != len)
		abort();
	back = cJSON_ParseWithLength(line, len);
	if (!cJSON_IsObject(back))
		abort();
	free(line);
	cJSON_Delete(response);
	return back;
}

/* A string field of a response must read back as what went in (up to a NUL). */
static void check_string(const cJSON *o, const char *key, const char *want)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0)
		abort();
}

static void check_request(const char *line, size_t len, unsigned small, bool echo)
{
	enum mn_proto_cmd cmd = (enum mn_proto_cmd) - 1, again;
	char err[MN_ERRLEN] = "", tiny[16], req[32];
	struct mn_proto_status st = {.latest_checkpoint = line};
	cJSON *back;
	int rc;

	rc = mn_proto_parse(line, len, &cmd, err, sizeof(err));
	/* A short message buffer truncates the message, never the verdict. */
	if (mn_proto_parse(line, len, &again, tiny, 1 + small % sizeof(tiny)) != rc)
		abort();
	if (rc == 0) {
		if ((unsigned)cmd > MN_PROTO_RESUME || again != cmd)
			abort();
		snprintf(req, sizeof(req), "{\"cmd\":\"%s\"}", mn_proto_cmd_name(cmd));
		if (mn_proto_parse(req, strlen(req), &again, err, sizeof(err)) != 0 || again != cmd)
			abort();
	} else {
		if (rc != -EINVAL || err[0] == '\0')
			abort();
		/* The message goes back to the client; it must stay one line. */
		for (const char *p = err; *p; p++)
			if ((unsigned char)*p < 0x20)
				abort();
		back = check_line(mn_proto_error(err));
		check_string(back, "error", err);
		cJSON_Delete(back);
	}
	if (!echo)
		return;
	/* Strings the daemon echoes (checkpoint names) cannot break the framing either. */
	back = check_line(mn_proto_status(&st));
	if (line[0])
		check_string(back, "latest_checkpoint", line);
	cJSON_Delete(back);
	back = check_line(mn_proto_saved(line, len));
	check_string(back, "checkpoint", line);
	cJSON_Delete(back);
}

/* Takes out lines until the framer has none, checking each against the model. */
static void drain(struct mn_framer *f, struct model *m, unsigned small)
{
	for (;;) {
		const char *rest = m->s + m->consumed;
		size_t avail = m->pushed - m->consumed;
		const char *nl = memchr(rest, '\n', avail);
		char *line = NULL;
		size_t len = 0;
		int rc = mn_framer_next(f, &line, &len);

		if (m->broken) {
			if (rc != -EMSGSIZE)
				abort();
			return;
		}
		if (rc == 1) {
			if (!nl || len != stripped(rest, (size_t)(nl - rest)) ||
			    len > m->max_line || line[len] != '\0' || memcmp(line, rest, len) != 0)
				abort();
			m->consumed += (size_t)(nl - rest) + 1;
			if (mn_framer_pending(f) != m->pushed - m->consumed)
				abort();
			check_request(line, len, small, false);
			continue;
		}
		if (rc == 0) {
			/* Nothing complete left, and what is left can still become a line. */
			if (nl || mn_framer_pending(f) != avail || avail > m->max_line + 1 ||
			    (avail == m->max_line + 1 && rest[avail - 1] != '\r'))
				abort();
			return;
		}
		if (rc != -EMSGSIZE)
			abort();
		if (nl ? stripped(rest, (size_t)(nl - rest)) <= m->max_line
		       : avail < m->max_line + 1 ||
		             (avail == m->max_line + 1 && rest[avail - 1] == '\r'))
			abort();
		m->broken = true;
	}
}

static void check_framer(const uint8_t *data, size_t size)
{
	struct model m = {0};
	struct mn_framer *f = NULL;
	unsigned seed, lazy;
	size_t n;
	char *s;

	if (size < 2)
		return;
	m.max_line = data[0];
	seed = data[1];
	lazy = data[1] & 0x80;
	n = size - 2;
	/* One spare byte: the "\n" the daemon adds to a last line at end of file. */
	s = malloc(n + 1);
	if (!s || mn_framer_new(m.max_line, &f) != 0)
		abort();
	memcpy(s, data + 2, n);
	s[n] = '\n';
	m.s = s;

	while (m.pushed < n) {
		size_t chunk;
		int rc;

		seed = seed * 1103515245u + 12345u;
		chunk = 1 + (seed >> 16) % 64;
		if (chunk > n - m.pushed)
			chunk = n - m.pushed;
		rc = mn_framer_push(f, s + m.pushed, chunk);
		if (rc != (m.broken ? -EMSGSIZE : 0))
			abort();
		if (m.broken)
			break;
		m.pushed += chunk;
		if (!lazy || (seed >> 24) % 3 == 0)
			drain(f, &m, seed);
	}
	if (!m.broken) {
		drain(f, &m, seed);
		if (!m.broken && mn_framer_pending(f) > 0) {
			if (mn_framer_push(f, s + m.pushed, 1) != 0)
				abort();
			m.pushed++;
			drain(f, &m, seed);
			if (!m.broken && mn_framer_pending(f) != 0)
				abort();
		}
	}
	mn_framer_free(f);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy;

	check_framer(data, size);
	/*
	 * The whole input as one request, not NUL-terminated: the parser must
	 * not read past len. check_request wants a NUL-terminated string for
	 * the echoed fields, so it gets a terminated copy.
	 */
	{
		enum mn_proto_cmd cmd;
		char err[MN_ERRLEN];

		mn_proto_parse(guarded(data, size), size, &cmd, err, sizeof(err));
	}
	copy = malloc(size + 1);
	if (!copy)
		abort();
	memcpy(copy, data, size);
	copy[size] = '\0';
	check_request(copy, size, size, true);
	free(copy);
	return 0;
}
