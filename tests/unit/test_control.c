/*
 * test_control.c - the daemon's control socket server (daemon/control.c) on a
 * real libuv loop and a real Unix socket in a temporary directory: how the
 * socket file is created, replaced and removed, and what clients are
 * answered, refused or dropped for.
 *
 * Clients are plain non-blocking sockets in this process. No sleeps: the
 * loop runs (mn_test_uv_run_until) until the bytes a test waits for have
 * arrived or the peer has hung up, with a deadline. The server's timers tick
 * once a second, so only the idle-timeout test takes that long.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "early.h"
#include "log.h"
#include "worker.h"

#include "mn_test.h"
#include "mn_test_uv.h"

#define N_EX        40
#define IN_DIM      16
#define OUT         4
#define DEADLINE_MS 5000
#define MAX_ANSWERS 8
#define RELOAD      "{\"cmd\":\"reload\"}\n"
#define STATUS      "{\"cmd\":\"status\"}\n"

/* A client connection and everything it has read. */
struct peer {
	int fd;
	bool closed; /* EOF or reset seen */
	size_t len;
	char buf[8192];
	cJSON *answers[MAX_ANSWERS]; /* parsed lines, freed by hang_up() */
};

static char tmpdir[MN_TEST_DIRLEN];
static char sockpath[MN_TEST_DIRLEN + 32];
static char err[MN_ERRLEN];
static uv_loop_t loop;
static size_t want_lines;

/* What the reload callback is to do, and how often it ran. */
static struct {
	int calls;
	int rc;
	const char *msg;
} reloader;

static void setup(void)
{
	/* A client that hangs up early must not kill the test when the server writes to it. */
	signal(SIGPIPE, SIG_IGN);
	mn_log_set_level(MN_LOG_ERROR);
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(sockpath, sizeof(sockpath), "%s/control.socket", tmpdir);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	memset(&reloader, 0, sizeof(reloader));
	err[0] = '\0';
}

static void teardown(void)
{
	/* Every handle, and the server's memory with it, goes through the loop. */
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	mn_test_rmtree(tmpdir);
}

static int fake_reload(void *arg, struct mn_proto_keys *applied, struct mn_proto_keys *restart,
                       struct mn_proto_keys *ignored, char *e, size_t elen)
{
	ck_assert_ptr_eq(arg, &reloader);
	reloader.calls++;
	if (reloader.rc < 0) {
		snprintf(e, elen, "%s", reloader.msg);
		return reloader.rc;
	}
	ck_assert_int_eq(mn_proto_keys_add(applied, "train.max_steps"), 0);
	ck_assert_int_eq(mn_proto_keys_add(restart, "model.hidden"), 0);
	ck_assert_int_eq(mn_proto_keys_add(ignored, "eval.textfile"), 0);
	ck_assert_int_eq(mn_proto_keys_add(ignored, "eval.use_ema"), 0);
	return 0;
}

static struct mnd_control_params params(void)
{
	return (struct mnd_control_params){
	    .path = sockpath, .reload = fake_reload, .arg = &reloader};
}

static struct mnd_control *start(const struct mnd_control_params *p)
{
	struct mnd_control *c = NULL;

	ck_assert_msg(mnd_control_start(&loop, p, &c, err, sizeof(err)) == 0, "%s", err);
	return c;
}

static void dial(struct peer *p)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	memset(p, 0, sizeof(*p));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sockpath);
	p->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(p->fd, 0);
	/* Completes at once while the backlog has room; the loop accepts it later. */
	ck_assert_msg(connect(p->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s",
	              strerror(errno));
}

static void hang_up(struct peer *p)
{
	for (size_t i = 0; i < MAX_ANSWERS; i++)
		cJSON_Delete(p->answers[i]);
	close(p->fd);
}

/* Requests here are short: the socket buffer takes them whole. */
static void say(struct peer *p, const char *s)
{
	ck_assert_int_eq(send(p->fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads whatever has arrived, without blocking. */
static void pull(struct peer *p)
{
	while (!p->closed) {
		ssize_t n;

		ck_assert_msg(p->len < sizeof(p->buf) - 1, "more answers than expected");
		n = read(p->fd, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
		if (n > 0)
			p->len += (size_t)n;
		else if (n == 0 || errno == ECONNRESET)
			p->closed = true;
		else if (errno != EINTR)
			break;
	}
	p->buf[p->len] = '\0';
}

static size_t nlines(const struct peer *p)
{
	size_t n = 0;

	for (size_t i = 0; i < p->len; i++)
		n += p->buf[i] == '\n';
	return n;
}

static bool arrived(void *arg)
{
	struct peer *p = arg;

	pull(p);
	return nlines(p) >= want_lines || p->closed;
}

/* Runs the loop until p has n answers. */
static void await_lines(struct peer *p, size_t n)
{
	want_lines = n;
	mn_test_uv_run_until(&loop, arrived, p, DEADLINE_MS, "answers");
	ck_assert_msg(nlines(p) >= n, "%zu answers wanted, got: %s", n, p->buf);
}

/* Runs the loop until the server has closed p, which must have had exactly n answers. */
static void await_close(struct peer *p, size_t n, uint64_t deadline_ms)
{
	want_lines = SIZE_MAX;
	mn_test_uv_run_until(&loop, arrived, p, deadline_ms, "the server closing");
	ck_assert_msg(nlines(p) == n, "%zu answers wanted, got: %s", n, p->buf);
}

/* The i-th answer, parsed; it must be an object with a boolean "ok" equal to ok. */
static const cJSON *answer(struct peer *p, size_t i, bool ok)
{
	const char *line = p->buf;
	const cJSON *o;
	int len;

	ck_assert_uint_lt(i, MAX_ANSWERS);
	ck_assert_uint_gt(nlines(p), i);
	for (size_t k = 0; k < i; k++)
		line = strchr(line, '\n') + 1;
	len = (int)(strchr(line, '\n') - line);
	if (!p->answers[i])
		p->answers[i] = cJSON_ParseWithLength(line, (size_t)len);
	ck_assert_msg(cJSON_IsObject(p->answers[i]), "answer %zu: %.*s", i, len, line);
	o = cJSON_GetObjectItemCaseSensitive(p->answers[i], "ok");
	ck_assert_msg(cJSON_IsBool(o) && cJSON_IsTrue(o) == ok, "answer %zu: %.*s", i, len, line);
	return p->answers[i];
}

static const char *str_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	ck_assert_msg(cJSON_IsString(v), "\"%s\" is not a string", key);
	return v->valuestring;
}

static int64_t int_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	ck_assert_msg(cJSON_IsNumber(v) && v->valuedouble == (double)(int64_t)v->valuedouble,
	              "\"%s\" is not an integer", key);
	return (int64_t)v->valuedouble;
}

static void expect_error(struct peer *p, size_t i, const char *part)
{
	const char *msg = str_of(answer(p, i, false), "error");

	ck_assert_msg(strstr(msg, part) != NULL, "answer %zu: \"%s\" lacks \"%s\"", i, msg, part);
}

/* A successful reload answer lists what fake_reload reported. */
static void expect_reloaded(struct peer *p, size_t i)
{
	const cJSON *o = answer(p, i, true);
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "applied");
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "restart_required");
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "ignored");

	ck_assert(cJSON_GetArraySize(a) == 1 && cJSON_GetArraySize(r) == 1);
	ck_assert_str_eq(cJSON_GetArrayItem(a, 0)->valuestring, "train.max_steps");
	ck_assert_str_eq(cJSON_GetArrayItem(r, 0)->valuestring, "model.hidden");
	/* The keys only other programs use, apart, in the order reported. */
	ck_assert(cJSON_IsArray(g) && cJSON_GetArraySize(g) == 2);
	ck_assert_str_eq(cJSON_GetArrayItem(g, 0)->valuestring, "eval.textfile");
	ck_assert_str_eq(cJSON_GetArrayItem(g, 1)->valuestring, "eval.use_ema");
}

/* A file made by bind() alone: a socket nobody listens on, like one a crash leaves. */
static int bind_only(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sockpath);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* bind() applies the umask; the server must end up with 0660 either way. */
START_TEST(test_socket_is_0660_whatever_the_umask_and_removed_on_close)
{
	const mode_t masks[] = {077, 0};
	struct mnd_control_params p = params();

	for (size_t i = 0; i < 2; i++) {
		mode_t old = umask(masks[i]);
		struct mnd_control *c = start(&p);
		struct stat st;

		umask(old);
		ck_assert_int_eq(lstat(sockpath, &st), 0);
		ck_assert(S_ISSOCK(st.st_mode));
		ck_assert_uint_eq(st.st_mode & 07777, 0660);
		mnd_control_close(c);
		ck_assert(!mn_test_exists(tmpdir, "control.socket"));
		mnd_control_close(NULL);
	}
}
END_TEST

/*
 * An operator may have put something else at the path: close removes only
 * its own file. (libuv's uv_close() of a pipe bound with uv_pipe_bind
 * unlinks the path whatever is there by then.)
 */
START_TEST(test_close_keeps_a_file_put_in_its_place)
{
	struct mnd_control_params p = params();
	struct mnd_control *c = start(&p);
	char other[sizeof(tmpdir) + 16];

	snprintf(other, sizeof(other), "%s/other", tmpdir);
	mn_test_write_file(other, "x", 1);
	ck_assert_int_eq(rename(other, sockpath), 0);
	mnd_control_close(c);
	ck_assert(mn_test_exists(tmpdir, "control.socket"));
}
END_TEST

START_TEST(test_stale_socket_is_replaced)
{
	struct mnd_control_params p = params();
	struct mnd_control *c;
	struct peer cl;

	close(bind_only());
	ck_assert(mn_test_exists(tmpdir, "control.socket"));
	c = start(&p);
	/* Served, so the new server really owns the path. */
	dial(&cl);
	say(&cl, RELOAD);
	await_lines(&cl, 1);
	expect_reloaded(&cl, 0);
	hang_up(&cl);
	mnd_control_close(c);
}
END_TEST

START_TEST(test_live_socket_is_left_alone)
{
	struct mnd_control_params p = params();
	struct mnd_control *c = NULL;
	int fd = bind_only(), conn;
	struct stat before, after;
	struct peer cl;

	ck_assert_int_eq(listen(fd, 4), 0);
	ck_assert_int_eq(lstat(sockpath, &before), 0);
	ck_assert_int_eq(mnd_control_start(&loop, &p, &c, err, sizeof(err)), -EADDRINUSE);
	ck_assert_ptr_null(c);
	ck_assert_msg(strstr(err, "another process") != NULL, "%s", err);
	ck_assert_int_eq(lstat(sockpath, &after), 0);
	ck_assert_uint_eq(after.st_ino, before.st_ino);
	/* Its owner still gets connections there. */
	dial(&cl);
	conn = accept(fd, NULL, NULL);
	ck_assert_int_ge(conn, 0);
	close(conn);
	hang_up(&cl);
	close(fd);
}
END_TEST

START_TEST(test_bad_paths_are_refused_and_kept)
{
	struct mnd_control_params p = params();
	struct mnd_control *c = NULL;
	char data[8] = "", longpath[200];
	FILE *f;

	mn_test_write_file(sockpath, "config", 6);
	ck_assert_int_eq(mnd_control_start(&loop, &p, &c, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_null(c);
	f = fopen(sockpath, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fread(data, 1, sizeof(data) - 1, f), 6);
	fclose(f);
	ck_assert_str_eq(data, "config");

	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	p.path = longpath;
	ck_assert_int_eq(mnd_control_start(&loop, &p, &c, err, sizeof(err)), -ENAMETOOLONG);
	ck_assert_ptr_null(c);
}
END_TEST

/*
 * Pipelined requests are answered in order; only reload works before the
 * worker is set. Commands that change state are logged at info with the
 * peer's uid and pid (this process); status is not.
 */
START_TEST(test_without_worker_only_reload_is_served)
{
	struct mnd_control_params p = params();
	char log[sizeof(tmpdir) + 16], want[128], text[4096] = "";
	struct mnd_control *c;
	struct peer cl;
	FILE *f;

	snprintf(log, sizeof(log), "%s/log", tmpdir);
	ck_assert_int_eq(mn_log_open(log, MN_LOG_TEXT, MN_LOG_INFO, err, sizeof(err)), 0);
	c = start(&p);
	dial(&cl);
	say(&cl,
	    STATUS "{\"cmd\":\"save\"}\n{\"cmd\":\"pause\"}\n" RELOAD "{\"cmd\":\"resume\"}\n");
	await_lines(&cl, 5);
	for (size_t i = 0; i < 5; i++)
		if (i != 3)
			expect_error(&cl, i, "the trainer is not running");
	expect_reloaded(&cl, 3);
	ck_assert_int_eq(reloader.calls, 1);

	mnd_control_set_stopping(c);
	say(&cl, STATUS);
	await_lines(&cl, 6);
	expect_error(&cl, 5, "the daemon is shutting down");
	hang_up(&cl);
	mnd_control_close(c);

	mn_log_close();
	f = fopen(log, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_gt(fread(text, 1, sizeof(text) - 1, f), 0);
	fclose(f);
	snprintf(want, sizeof(want), "control command cmd=reload uid=%u pid=%d", (unsigned)getuid(),
	         (int)getpid());
	ck_assert_msg(strstr(text, want) != NULL, "no \"%s\" in:\n%s", want, text);
	ck_assert_ptr_null(strstr(text, "cmd=status"));
}
END_TEST

/* A failed reload reports the callback's reason (or a generic one); none configured: an error. */
START_TEST(test_reload_errors_are_answered)
{
	struct mnd_control_params p = params();
	struct mnd_control *c = start(&p);
	struct peer cl;

	reloader.rc = -EINVAL;
	reloader.msg = "mnistd.json: train.max_steps: must be an integer";
	dial(&cl);
	say(&cl, RELOAD);
	await_lines(&cl, 1);
	expect_error(&cl, 0, "train.max_steps: must be an integer");
	reloader.msg = "";
	say(&cl, RELOAD);
	await_lines(&cl, 2);
	expect_error(&cl, 1, "reload failed");
	hang_up(&cl);
	mnd_control_close(c);

	p.reload = NULL;
	c = start(&p);
	dial(&cl);
	say(&cl, RELOAD);
	await_lines(&cl, 1);
	expect_error(&cl, 0, "reload is not available");
	hang_up(&cl);
	mnd_control_close(c);
	ck_assert_int_eq(reloader.calls, 2);
}
END_TEST

/*
 * Bad requests are answered and the connection goes on; blank lines and
 * "\r\n" are accepted; a last line without "\n" before a half-close is
 * answered, then the server closes.
 */
START_TEST(test_bad_requests_are_answered_and_the_connection_goes_on)
{
	struct mnd_control_params p = params();
	struct mnd_control *c = start(&p);
	struct peer cl;

	dial(&cl);
	say(&cl, "{oops\n\n  \r\n[1]\n{\"cmd\":\"fly\"}\n{\"cmd\":\"reload\"}\r\n");
	await_lines(&cl, 4);
	expect_error(&cl, 0, "invalid JSON");
	expect_error(&cl, 1, "must be a JSON object");
	expect_error(&cl, 2, "unknown command \"fly\"");
	expect_reloaded(&cl, 3);
	say(&cl, "{\"cmd\":\"reload\"}");
	ck_assert_int_eq(shutdown(cl.fd, SHUT_WR), 0);
	await_close(&cl, 5, DEADLINE_MS);
	expect_reloaded(&cl, 4);
	hang_up(&cl);
	mnd_control_close(c);
}
END_TEST

/* The request before an over-long line is answered; the line gets an error; nothing after. */
START_TEST(test_overlong_line_is_answered_then_closed)
{
	struct mnd_control_params p = params();
	struct mnd_control *c;
	char line[128];
	struct peer cl;

	p.max_line = 32;
	c = start(&p);
	memset(line, 'x', sizeof(line) - 2);
	line[sizeof(line) - 2] = '\n';
	line[sizeof(line) - 1] = '\0';
	dial(&cl);
	say(&cl, RELOAD);
	say(&cl, line);
	say(&cl, RELOAD);
	await_close(&cl, 2, DEADLINE_MS);
	expect_reloaded(&cl, 0);
	expect_error(&cl, 1, "longer than 32 bytes");
	ck_assert_int_eq(reloader.calls, 1);
	hang_up(&cl);
	mnd_control_close(c);
}
END_TEST

/*
 * With every slot taken, a newcomer closes the oldest client that never sent
 * a request (even though one that did is older) and is served; when every
 * slot holds a client that has spoken, the newcomer is told so and closed.
 */
START_TEST(test_full_server_evicts_the_oldest_silent_client)
{
	struct mnd_control_params p = params();
	struct mnd_control *c;
	struct peer spoke, silent1, silent2, late, refused;

	p.max_clients = 3;
	c = start(&p);
	dial(&spoke);
	say(&spoke, RELOAD);
	await_lines(&spoke, 1);
	/* The backlog keeps the order, so these are accepted in it. */
	dial(&silent1);
	dial(&silent2);
	dial(&late);
	await_close(&silent1, 1, DEADLINE_MS);
	expect_error(&silent1, 0, "closed to make room: no request was sent");
	say(&late, RELOAD);
	say(&silent2, RELOAD);
	say(&spoke, RELOAD);
	await_lines(&late, 1);
	await_lines(&silent2, 1);
	await_lines(&spoke, 2);
	expect_reloaded(&late, 0);
	expect_reloaded(&silent2, 0);
	expect_reloaded(&spoke, 1);

	dial(&refused);
	await_close(&refused, 1, DEADLINE_MS);
	expect_error(&refused, 0, "too many clients (3 connected)");
	say(&spoke, RELOAD);
	await_lines(&spoke, 3);
	expect_reloaded(&spoke, 2);
	hang_up(&spoke);
	hang_up(&silent1);
	hang_up(&silent2);
	hang_up(&late);
	hang_up(&refused);
	mnd_control_close(c);
}
END_TEST

/* A connection quiet after its request is closed by the once-a-second sweep, silently. */
START_TEST(test_idle_connection_is_closed)
{
	struct mnd_control_params p = params();
	struct mnd_control *c;
	struct peer cl;

	p.idle_timeout_ms = 1;
	c = start(&p);
	dial(&cl);
	say(&cl, RELOAD);
	await_lines(&cl, 1);
	/* Proven and not mid-request: only the idle timeout can close it this soon. */
	await_close(&cl, 1, 3000);
	hang_up(&cl);
	mnd_control_close(c);
}
END_TEST

/* The requests a client that never reads sends, a socket-bufferful per loop turn. */
static struct {
	const char *data;
	size_t len, off;
} flood;

/* True once all are sent or the server has hung up. */
static bool flood_sent(void *arg)
{
	struct peer *p = arg;
	ssize_t n = send(p->fd, flood.data + flood.off, flood.len - flood.off, MSG_NOSIGNAL);

	if (n > 0)
		flood.off += (size_t)n;
	else
		ck_assert_msg(errno == EAGAIN || errno == EPIPE || errno == ECONNRESET, "send: %s",
		              strerror(errno));
	return flood.off == flood.len || (n < 0 && errno != EAGAIN);
}

/* Hung up, seen without reading: the answers stay unread. */
static bool flood_hung_up(void *arg)
{
	struct pollfd pfd = {.fd = ((struct peer *)arg)->fd, .events = POLLIN | POLLRDHUP};

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR));
}

/* A client that sends requests and never reads the answers is dropped, not buffered for. */
START_TEST(test_client_that_does_not_read_is_dropped)
{
	enum { NREQ = 4000 };
	struct mnd_control_params p = params();
	size_t len = strlen(RELOAD);
	char *data = malloc(NREQ * len);
	struct mnd_control *c;
	struct peer cl;

	ck_assert_ptr_nonnull(data);
	for (size_t i = 0; i < NREQ; i++)
		memcpy(data + i * len, RELOAD, len);
	flood.data = data;
	flood.len = NREQ * len;
	flood.off = 0;
	p.max_output = 64;
	c = start(&p);
	dial(&cl);
	mn_test_uv_run_until(&loop, flood_sent, &cl, DEADLINE_MS, "sending");
	mn_test_uv_run_until(&loop, flood_hung_up, &cl, DEADLINE_MS, "the server hanging up");
	ck_assert_int_lt(reloader.calls, NREQ);
	hang_up(&cl);
	free(data);
	mnd_control_close(c);
}
END_TEST

static uint8_t images[N_EX * IN_DIM], labels[N_EX];
static struct mn_view data;

static int64_t step_far_ahead(void *arg)
{
	(void)arg;
	return 1000;
}

static void on_stop(const struct mnd_early_status *s, void *arg)
{
	(void)s;
	(void)arg;
}

static bool counted(void *arg)
{
	struct mnd_early_status s;

	mnd_early_get_status(arg, &s);
	return s.have_best;
}

static void on_done(void *arg, int status)
{
	(void)arg;
	(void)status;
}

/*
 * With a real worker and early stopper: a pause holds back the requests
 * after it until training has stopped at its step, so the status, save and
 * status behind it see the paused state and the checkpoint just published.
 */
START_TEST(test_worker_status_and_held_back_requests)
{
	struct mnd_control_params p = params();
	struct mnd_early_params ep = {.patience = 3,
	                              .mode = MN_WATCH_POLL,
	                              .poll_interval_ms = 5,
	                              .current_step = step_far_ahead,
	                              .on_stop = on_stop};
	char metrics[sizeof(tmpdir) + 16], ckpt[MN_CKPT_MAX_NAME + 32];
	struct mn_trainer *t = mn_test_toy_trainer(images, labels, N_EX, IN_DIM, OUT, &data);
	struct mnd_worker *w = NULL;
	struct mnd_early *e = NULL;
	struct mnd_control *c = start(&p);
	struct mn_config cfg;
	const cJSON *o;
	struct peer cl;
	int64_t step;

	snprintf(metrics, sizeof(metrics), "%s/eval.jsonl", tmpdir);
	mn_test_write_file(metrics, "{\"step\":40,\"accuracy\":0.5}\n", 27);
	ep.metrics_file = metrics;
	ck_assert_msg(mnd_early_start(&loop, &ep, &e, err, sizeof(err)) == 0, "%s", err);
	mn_test_uv_run_until(&loop, counted, e, DEADLINE_MS, "the evaluation");
	mn_test_worker_config(&cfg, tmpdir);
	ck_assert_msg(mnd_worker_start(&loop, t, &cfg, N_EX, NULL, NULL, false, on_done, NULL, &w,
	                               err, sizeof(err)) == 0,
	              "%s", err);
	mnd_control_set_worker(c, w);
	mnd_control_set_early(c, e);

	dial(&cl);
	say(&cl,
	    "{\"cmd\":\"pause\"}\n" STATUS "{\"cmd\":\"save\"}\n" STATUS "{\"cmd\":\"resume\"}\n");
	await_lines(&cl, 5);
	o = answer(&cl, 0, true);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "paused")));
	step = int_of(o, "step");

	o = answer(&cl, 1, true);
	ck_assert_str_eq(str_of(o, "state"), "paused");
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "paused")));
	ck_assert_int_eq(int_of(o, "step"), step);
	ck_assert_int_eq(int_of(o, "max_steps"), cfg.train.max_steps);
	ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "steps_per_sec")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "latest_checkpoint")));
	ck_assert_int_eq(int_of(o, "best_step"), 40);
	ck_assert(cJSON_GetObjectItemCaseSensitive(o, "best_accuracy")->valuedouble == 0.5);
	ck_assert_int_eq(int_of(o, "evals_since_best"), 0);
	ck_assert_int_eq(int_of(o, "patience"), 3);
	/* null is allowed only before the first step */
	ck_assert(step == 0 || cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "loss")));
	ck_assert(step == 0 ||
	          cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "learning_rate")));

	o = answer(&cl, 2, true);
	snprintf(ckpt, sizeof(ckpt), "model.ckpt-%lld.safetensors", (long long)step);
	ck_assert_str_eq(str_of(o, "checkpoint"), ckpt);
	ck_assert_int_eq(int_of(o, "step"), step);
	o = answer(&cl, 3, true);
	ck_assert_str_eq(str_of(o, "latest_checkpoint"), ckpt);
	ck_assert_int_eq(int_of(o, "step"), step);
	o = answer(&cl, 4, true);
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(o, "paused")));
	ck_assert_int_ge(int_of(o, "step"), step);

	mnd_control_set_stopping(c);
	say(&cl, STATUS);
	await_lines(&cl, 6);
	ck_assert_str_eq(str_of(answer(&cl, 5, true), "state"), "stopping");
	hang_up(&cl);
	mnd_control_close(c);
	mnd_early_close(e);
	mnd_worker_close(w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("control");
	TCase *tc = mn_test_tcase(s, "control", setup, teardown);

	/* Above the 5 s deadlines, so a stuck test reports what it waited for, not a timeout. */
	tcase_set_timeout(tc, 30);
	MN_TEST_ADD(tc, test_socket_is_0660_whatever_the_umask_and_removed_on_close,
	            test_stale_socket_is_replaced, test_live_socket_is_left_alone,
	            test_bad_paths_are_refused_and_kept, test_without_worker_only_reload_is_served,
	            test_reload_errors_are_answered,
	            test_bad_requests_are_answered_and_the_connection_goes_on,
	            test_overlong_line_is_answered_then_closed,
	            test_full_server_evicts_the_oldest_silent_client,
	            test_idle_connection_is_closed, test_client_that_does_not_read_is_dropped,
	            test_worker_status_and_held_back_requests);
	MN_TEST_ADD(tc, test_close_keeps_a_file_put_in_its_place);
	return mn_test_run(s);
}
