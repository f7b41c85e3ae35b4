/* control.c - see control.h. */
#include "control.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define DEFAULT_MAX_CLIENTS 64
#define DEFAULT_MAX_OUTPUT  (1u << 20)
#define READ_BUF_SIZE       (64 * 1024)
#define LISTEN_BACKLOG      128
#define SWEEP_MS            1000
/* A client whose queued answers have not moved for this long is gone. */
#define WRITE_STALL_MS 30000
/*
 * A request must be complete this long after the connection opened or its
 * first byte arrived: idle and byte-a-second clients cannot hold slots.
 */
#define REQUEST_DEADLINE_MS 5000
#define SOCKET_MODE         0660

enum wait_kind {
	WAIT_NONE,  /* ready for the next request */
	WAIT_SAVE,  /* a checkpoint is being written for it */
	WAIT_PAUSE, /* pause/resume is waiting for the step boundary */
};

struct client {
	uv_pipe_t pipe; /* pipe.data points back here */
	uv_shutdown_t shutdown;
	struct mnd_control *srv;
	struct client *prev, *next;
	struct mn_framer *framer;
	enum wait_kind wait;
	bool want_paused; /* what the pause/resume being waited for asked */
	bool reading;
	bool eof;                  /* the peer will send nothing more */
	bool finishing;            /* shutting down after the queued answers */
	bool closing;              /* uv_close called */
	bool closed;               /* close_cb ran while a worker request was pending */
	bool worker_pending;       /* the worker still holds a pointer to this client */
	bool proven;               /* has sent a complete request */
	uint64_t connected_ms;     /* when it was accepted */
	uint64_t partial_since_ms; /* when an incomplete request began (0: none) */
	uint64_t last_request_ms;
	uint64_t stalled_since_ms; /* 0: nothing queued, or writes are moving */
	pid_t pid;                 /* the peer's credentials (SO_PEERCRED), -1 if unknown */
	uid_t uid;
};

/* A connection over the limit: answered with one line, then closed. */
struct refused {
	uv_pipe_t pipe;
	struct mnd_control *srv;
};

struct write_req {
	uv_write_t req;
	char *line;
};

struct mnd_control {
	uv_loop_t *loop;
	uv_pipe_t listener;
	uv_timer_t sweep;
	size_t open_handles; /* the struct is freed when this reaches 0 after close */
	bool closing;
	bool stopping;
	bool bound;
	dev_t dev;
	ino_t ino;
	struct mnd_worker *worker;
	struct mnd_early *early; /* NULL unless train.early_stopping is on */
	struct client *clients;
	size_t nclients;
	size_t nrefused; /* since the last sweep, for one log line */
	size_t nevicted; /* likewise */
	size_t nexpired; /* likewise */
	mnd_control_reload_fn reload;
	void *reload_arg;
	size_t max_clients, max_line, max_output;
	uint64_t idle_timeout_ms;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	/* Every read is consumed before the next one, so one buffer serves all clients. */
	char readbuf[READ_BUF_SIZE];
};

static void pump(struct client *cl);

static void handle_closed(struct mnd_control *srv)
{
	if (--srv->open_handles == 0 && srv->closing)
		free(srv);
}

static void on_handle_closed(uv_handle_t *h)
{
	handle_closed(h->data);
}

static void on_client_closed(uv_handle_t *h)
{
	struct client *cl = h->data;
	struct mnd_control *srv = cl->srv;

	if (cl->prev)
		cl->prev->next = cl->next;
	else
		srv->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	srv->nclients--;
	mn_framer_free(cl->framer);
	cl->framer = NULL;
	cl->srv = NULL;
	/* The worker will call back with this pointer; worker_answered() frees it then. */
	if (cl->worker_pending)
		cl->closed = true;
	else
		free(cl);
	handle_closed(srv);
}

/* Closes at once; queued answers are dropped. */
static void drop(struct client *cl)
{
	if (cl->closing)
		return;
	cl->closing = true;
	uv_close((uv_handle_t *)&cl->pipe, on_client_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	drop(req->handle->data);
}

/* Closes once the queued answers are written. */
static void finish(struct client *cl)
{
	if (cl->closing || cl->finishing)
		return;
	cl->finishing = true;
	if (cl->reading) {
		uv_read_stop((uv_stream_t *)&cl->pipe);
		cl->reading = false;
	}
	if (uv_shutdown(&cl->shutdown, (uv_stream_t *)&cl->pipe, on_shutdown) < 0)
		drop(cl);
}

static void on_write(uv_write_t *req, int status)
{
	struct write_req *wr = (struct write_req *)req;
	uv_stream_t *stream = req->handle;
	struct client *cl = stream->data;

	free(wr->line);
	free(wr);
	if (status == UV_ECANCELED)
		return;
	if (status < 0) {
		mn_log(MN_LOG_DEBUG, "control: dropping a client: %s", uv_strerror(status));
		drop(cl);
		return;
	}
	cl->stalled_since_ms = uv_stream_get_write_queue_size(stream) ? uv_now(cl->srv->loop) : 0;
}

/* Queues one answer; takes ownership of resp (which may be NULL: out of memory). */
static void reply(struct client *cl, cJSON *resp)
{
	static const char oom[] = "{\"ok\":false,\"error\":\"out of memory\"}\n";
	struct mnd_control *srv = cl->srv;
	struct write_req *wr;
	uv_buf_t buf;
	size_t len = 0;
	char *line = resp ? mn_proto_line(resp, &len) : NULL;
	int rc;

	cJSON_Delete(resp);
	if (cl->closing || cl->finishing) {
		free(line);
		return;
	}
	wr = malloc(sizeof(*wr));
	if (!line) {
		line = malloc(sizeof(oom));
		if (line) {
			memcpy(line, oom, sizeof(oom));
			len = sizeof(oom) - 1;
		}
	}
	if (!wr || !line) {
		free(wr);
		free(line);
		drop(cl);
		return;
	}
	wr->line = line;
	buf = uv_buf_init(line, (unsigned)len);
	rc = uv_write(&wr->req, (uv_stream_t *)&cl->pipe, &buf, 1, on_write);
	if (rc < 0) {
		free(wr->line);
		free(wr);
		drop(cl);
		return;
	}
	if (uv_stream_get_write_queue_size((uv_stream_t *)&cl->pipe) > srv->max_output) {
		mn_log(MN_LOG_WARN,
		       "control: dropping a client that does not read its answers (over %zu bytes "
		       "queued)",
		       srv->max_output);
		drop(cl);
		return;
	}
	if (uv_stream_get_write_queue_size((uv_stream_t *)&cl->pipe) && !cl->stalled_since_ms)
		cl->stalled_since_ms = uv_now(srv->loop);
}

static void reply_error(struct client *cl, const char *fmt, ...) MN_PRINTF(2, 3);

static void reply_error(struct client *cl, const char *fmt, ...)
{
	char msg[MN_ERRLEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	reply(cl, mn_proto_error(msg));
}

static const char *unavailable(const struct mnd_control *srv)
{
	return srv->stopping ? "the daemon is shutting down" : "the trainer is not running";
}

static void do_status(struct client *cl)
{
	struct mnd_control *srv = cl->srv;
	struct mnd_worker_status ws;
	struct mn_proto_status ps;

	mnd_worker_get_status(srv->worker, &ws);
	ps = (struct mn_proto_status){
	    .step = ws.step,
	    .max_steps = ws.max_steps,
	    .learning_rate = ws.learning_rate,
	    .loss = ws.loss,
	    .steps_per_sec = ws.steps_per_sec,
	    .paused = ws.paused,
	    .stopping = srv->stopping || ws.finished,
	    .latest_checkpoint = ws.latest,
	    .checkpoint_failures = ws.ckpt_failing,
	    .checkpoint_error = ws.ckpt_error,
	};
	if (srv->early) {
		struct mnd_early_status es;

		mnd_early_get_status(srv->early, &es);
		ps.early_stopping = true;
		ps.best_accuracy = es.have_best ? es.best_accuracy : NAN;
		ps.best_step = es.have_best ? es.best_step : -1;
		ps.evals_since_best = es.since_best;
		ps.patience = es.patience;
	}
	reply(cl, mn_proto_status(&ps));
}

/*
 * The reload answer: applied and restart_required (the contract), and
 * ignored, the changed keys the daemon does not use (an extension).
 */
static cJSON *reload_answer(const struct mn_proto_keys *applied,
                            const struct mn_proto_keys *restart,
                            const struct mn_proto_keys *ignored)
{
	cJSON *o = mn_proto_reload(applied, restart);
	cJSON *a = cJSON_CreateArray();

	if (!o || !mn_json_add(o, "ignored", a))
		goto fail;
	for (size_t i = 0; i < ignored->n; i++)
		if (!mn_json_add(a, NULL, cJSON_CreateString(ignored->keys[i])))
			goto fail;
	return o;
fail:
	if (!o)
		cJSON_Delete(a);
	cJSON_Delete(o);
	return NULL;
}

static void do_reload(struct client *cl)
{
	struct mnd_control *srv = cl->srv;
	struct mn_proto_keys applied = {0}, restart = {0}, ignored = {0};
	char err[MN_ERRLEN] = "";

	if (!srv->reload) {
		reply_error(cl, "reload is not available");
		return;
	}
	if (srv->reload(srv->reload_arg, &applied, &restart, &ignored, err, sizeof(err)) < 0)
		reply(cl, mn_proto_error(err[0] ? err : "reload failed"));
	else
		reply(cl, reload_answer(&applied, &restart, &ignored));
}

/*
 * The worker answered this client's request. Returns false if the client
 * is gone (then it may have been freed); otherwise it is ready for its
 * next request.
 */
static bool worker_answered(struct client *cl)
{
	cl->worker_pending = false;
	if (cl->closed) {
		free(cl);
		return false;
	}
	if (cl->closing)
		return false; /* on_client_closed frees it */
	cl->wait = WAIT_NONE;
	return true;
}

static void on_saved(void *arg, const struct mnd_worker_reply *r)
{
	struct client *cl = arg;

	if (!worker_answered(cl))
		return;
	if (r->status < 0)
		reply_error(cl, "save failed: %s", r->error[0] ? r->error : strerror(-r->status));
	else
		reply(cl, mn_proto_saved(r->name, r->step));
	pump(cl);
}

static void do_save(struct client *cl)
{
	int rc = mnd_worker_save(cl->srv->worker, on_saved, cl);

	if (rc < 0) {
		reply_error(cl, "save: %s",
		            rc == -ESHUTDOWN ? "the daemon is shutting down" : strerror(-rc));
		return;
	}
	cl->worker_pending = true;
	cl->wait = WAIT_SAVE;
}

/*
 * The step boundary after this client's pause or resume. A later pause or
 * resume from anyone decides the state; this one is answered as carried out.
 */
static void on_paused(void *arg, const struct mnd_worker_reply *r)
{
	struct client *cl = arg;

	if (!worker_answered(cl))
		return;
	if (r->status < 0) {
		reply_error(cl, "%s", unavailable(cl->srv));
	} else {
		mn_log_fields(MN_LOG_INFO, cl->want_paused ? "training paused" : "training resumed",
		              (struct mn_log_field[]){MN_F_INT("step", r->step)}, 1);
		reply(cl, mn_proto_paused(cl->want_paused, r->step));
	}
	pump(cl);
}

static void do_pause(struct client *cl, bool paused)
{
	struct mnd_control *srv = cl->srv;
	int rc = mnd_worker_set_paused(srv->worker, paused, on_paused, cl);

	if (rc < 0) {
		reply_error(cl, "%s", rc == -ESHUTDOWN ? unavailable(srv) : strerror(-rc));
		return;
	}
	cl->worker_pending = true;
	cl->wait = WAIT_PAUSE;
	cl->want_paused = paused;
}

static void handle_request(struct client *cl, const char *line, size_t len)
{
	struct mnd_control *srv = cl->srv;
	enum mn_proto_cmd cmd;
	char err[MN_ERRLEN];

	if (mn_proto_parse(line, len, &cmd, err, sizeof(err)) < 0) {
		reply(cl, mn_proto_error(err));
		return;
	}
	if (cmd == MN_PROTO_STATUS)
		mn_log(MN_LOG_DEBUG, "control: %s", mn_proto_cmd_name(cmd));
	else
		/* Who paused training (or reloaded, saved, resumed) is an operator's question. */
		mn_log_fields(MN_LOG_INFO, "control command",
		              (struct mn_log_field[]){MN_F_STR("cmd", mn_proto_cmd_name(cmd)),
		                                      MN_F_INT("uid", (int64_t)cl->uid),
		                                      MN_F_INT("pid", (int64_t)cl->pid)},
		              3);
	if (cmd != MN_PROTO_RELOAD && !srv->worker) {
		reply_error(cl, "%s", unavailable(srv));
		return;
	}
	switch (cmd) {
	case MN_PROTO_RELOAD:
		do_reload(cl);
		break;
	case MN_PROTO_STATUS:
		do_status(cl);
		break;
	case MN_PROTO_SAVE:
		do_save(cl);
		break;
	case MN_PROTO_PAUSE:
		do_pause(cl, true);
		break;
	case MN_PROTO_RESUME:
		do_pause(cl, false);
		break;
	}
}

static bool blank(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t')
			return false;
	return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct client *cl = h->data;

	*buf = uv_buf_init(cl->srv->readbuf, sizeof(cl->srv->readbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/*
 * Answers the buffered lines in order until one has to wait. Reading stops
 * while a request waits, so a client cannot make the server buffer more
 * than one read beyond the line limit.
 */
static void pump(struct client *cl)
{
	struct mnd_control *srv = cl->srv;

	while (!cl->closing && !cl->finishing && cl->wait == WAIT_NONE) {
		char *line;
		size_t len;
		int rc = mn_framer_next(cl->framer, &line, &len);

		if (rc == 0)
			break;
		if (rc < 0) {
			reply_error(cl,
			            "request line longer than %zu bytes; closing the connection",
			            srv->max_line);
			finish(cl);
			return;
		}
		if (blank(line, len))
			continue;
		cl->last_request_ms = uv_now(srv->loop);
		cl->proven = true;
		handle_request(cl, line, len);
	}
	if (cl->closing || cl->finishing)
		return;
	/* The deadline runs from an incomplete request's first byte, not while one waits. */
	if (cl->wait != WAIT_NONE || mn_framer_pending(cl->framer) == 0)
		cl->partial_since_ms = 0;
	else if (!cl->partial_since_ms)
		cl->partial_since_ms = uv_now(srv->loop);
	if (cl->wait != WAIT_NONE) {
		if (cl->reading) {
			uv_read_stop((uv_stream_t *)&cl->pipe);
			cl->reading = false;
		}
		return;
	}
	if (cl->eof) {
		finish(cl);
		return;
	}
	if (!cl->reading) {
		if (uv_read_start((uv_stream_t *)&cl->pipe, on_alloc, on_read) < 0) {
			drop(cl);
			return;
		}
		cl->reading = true;
	}
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct client *cl = s->data;

	if (nread == 0)
		return;
	if (nread == UV_EOF) {
		/* Half-closed: answer what was sent, a last line without "\n" included. */
		cl->eof = true;
		uv_read_stop(s);
		cl->reading = false;
		if (mn_framer_pending(cl->framer) > 0 &&
		    mn_framer_push(cl->framer, "\n", 1) == -ENOMEM) {
			drop(cl);
			return;
		}
		pump(cl);
		return;
	}
	if (nread < 0) {
		mn_log(MN_LOG_DEBUG, "control: client read: %s", uv_strerror((int)nread));
		drop(cl);
		return;
	}
	if (mn_framer_push(cl->framer, buf->base, (size_t)nread) == -ENOMEM) {
		mn_log(MN_LOG_WARN,
		       "control: out of memory buffering a request; dropping the client");
		drop(cl);
		return;
	}
	pump(cl);
}

static void on_refused_closed(uv_handle_t *h)
{
	struct refused *r = h->data;
	struct mnd_control *srv = r->srv;

	free(r);
	handle_closed(srv);
}

static void refuse(struct mnd_control *srv, uv_stream_t *server, const char *why)
{
	struct refused *r = calloc(1, sizeof(*r));
	size_t len = 0;
	char *line = NULL;
	cJSON *resp;

	if (!r) {
		mn_log(MN_LOG_ERROR, "control: out of memory refusing a connection");
		return;
	}
	if (uv_pipe_init(srv->loop, &r->pipe, 0) < 0) {
		free(r);
		return;
	}
	r->pipe.data = r;
	r->srv = srv;
	srv->open_handles++;
	if (uv_accept(server, (uv_stream_t *)&r->pipe) == 0) {
		resp = mn_proto_error(why);
		line = resp ? mn_proto_line(resp, &len) : NULL;
		cJSON_Delete(resp);
		/* A fresh socket's buffer always takes one short line: no write queue needed. */
		if (line)
			uv_try_write((uv_stream_t *)&r->pipe, &(uv_buf_t){.base = line, .len = len},
			             1);
		free(line);
		srv->nrefused++;
	}
	uv_close((uv_handle_t *)&r->pipe, on_refused_closed);
}

/* The peer's uid and pid, for the log of state-changing commands. */
static void peer_credentials(struct client *cl)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uv_os_fd_t fd;

	cl->pid = -1;
	cl->uid = (uid_t)-1;
	if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
		cl->pid = cred.pid;
		cl->uid = cred.uid;
	}
}

/* Clients not on their way out: a closing one's slot is as good as free. */
static size_t live_clients(const struct mnd_control *srv)
{
	size_t n = 0;

	for (const struct client *cl = srv->clients; cl; cl = cl->next)
		n += !cl->closing && !cl->finishing;
	return n;
}

/*
 * Makes room for a new connection by closing the oldest one that has never
 * sent a complete request: a slot held by a silent client is worth less than
 * an operator's status. Returns false if every slot holds a client that has
 * spoken.
 */
static bool evict_silent(struct mnd_control *srv)
{
	struct client *victim = NULL;

	for (struct client *cl = srv->clients; cl; cl = cl->next)
		if (!cl->closing && !cl->finishing && !cl->proven && cl->wait == WAIT_NONE &&
		    (!victim || cl->connected_ms <= victim->connected_ms))
			victim = cl;
	if (!victim)
		return false;
	reply_error(victim, "closed to make room: no request was sent");
	finish(victim);
	srv->nevicted++;
	return true;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct mnd_control *srv = server->data;
	struct client *cl;

	if (status < 0) {
		mn_log(MN_LOG_WARN, "control: accept: %s", uv_strerror(status));
		return;
	}
	if (live_clients(srv) >= srv->max_clients && !evict_silent(srv)) {
		char msg[128];

		snprintf(msg, sizeof(msg), "too many clients (%zu connected); try again later",
		         live_clients(srv));
		refuse(srv, server, msg);
		return;
	}
	cl = calloc(1, sizeof(*cl));
	if (!cl || mn_framer_new(srv->max_line, &cl->framer) < 0) {
		free(cl);
		/* libuv stops accepting until this connection is taken; take and close it. */
		refuse(srv, server, "out of memory");
		return;
	}
	if (uv_pipe_init(srv->loop, &cl->pipe, 0) < 0) {
		mn_framer_free(cl->framer);
		free(cl);
		refuse(srv, server, "out of memory");
		return;
	}
	cl->pipe.data = cl;
	cl->srv = srv;
	cl->connected_ms = uv_now(srv->loop);
	cl->last_request_ms = cl->connected_ms;
	cl->next = srv->clients;
	if (srv->clients)
		srv->clients->prev = cl;
	srv->clients = cl;
	srv->nclients++;
	srv->open_handles++;
	if (uv_accept(server, (uv_stream_t *)&cl->pipe) < 0) {
		drop(cl);
		return;
	}
	peer_credentials(cl);
	pump(cl);
}

/* A silent connection, or a request begun and not finished, past the deadline. */
static bool request_overdue(const struct client *cl, uint64_t now)
{
	if (cl->partial_since_ms)
		return now - cl->partial_since_ms > REQUEST_DEADLINE_MS;
	return !cl->proven && now - cl->connected_ms > REQUEST_DEADLINE_MS;
}

static void on_sweep(uv_timer_t *t)
{
	struct mnd_control *srv = t->data;
	uint64_t now = uv_now(srv->loop);
	struct client *cl;

	for (cl = srv->clients; cl; cl = cl->next) {
		if (cl->closing)
			continue;
		if (cl->stalled_since_ms && now - cl->stalled_since_ms > WRITE_STALL_MS) {
			mn_log(MN_LOG_WARN, "control: dropping a client that stopped reading");
			drop(cl);
		} else if (cl->wait == WAIT_NONE && !cl->finishing && request_overdue(cl, now)) {
			reply_error(cl, "no complete request within %d ms; closing the connection",
			            REQUEST_DEADLINE_MS);
			finish(cl);
			srv->nexpired++;
		} else if (srv->idle_timeout_ms && cl->wait == WAIT_NONE && !cl->finishing &&
		           now - cl->last_request_ms > srv->idle_timeout_ms) {
			mn_log(MN_LOG_DEBUG, "control: closing an idle connection");
			finish(cl);
		}
	}
	if (srv->nrefused || srv->nevicted || srv->nexpired) {
		mn_log_fields(MN_LOG_WARN, "control: connections closed",
		              (struct mn_log_field[]){
		                  MN_F_INT("refused_full", (int64_t)srv->nrefused),
		                  MN_F_INT("evicted_silent", (int64_t)srv->nevicted),
		                  MN_F_INT("request_timeout", (int64_t)srv->nexpired),
		                  MN_F_INT("clients", (int64_t)live_clients(srv)),
		              },
		              4);
		srv->nrefused = srv->nevicted = srv->nexpired = 0;
	}
}

/*
 * Returns 1 if a process accepts connections on path, 0 if nobody does (a
 * stale file), or -errno if that cannot be told.
 */
static int probe_listener(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	/* Non-blocking: a live daemon with a full backlog must not hang this start. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (rc == 0 || errno == EAGAIN || errno == EINPROGRESS)
		rc = 1;
	else if (errno == ECONNREFUSED || errno == ENOENT)
		rc = 0;
	else
		rc = -errno;
	close(fd);
	return rc;
}

/*
 * Binds a socket to path and gives it to the listener: -errno on failure.
 * Not uv_pipe_bind(): libuv then unlinks whatever is at the path when the
 * handle closes, even a socket another process has bound there since.
 * Removing the file is mnd_control_close's, which checks it is still ours.
 */
static int bind_path(struct mnd_control *srv)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", srv->path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	rc = uv_pipe_open(&srv->listener, fd);
	if (rc < 0) {
		close(fd);
		unlink(srv->path);
	}
	return rc;
}

static int bind_socket(struct mnd_control *srv, char *err, size_t errlen)
{
	struct stat st;
	int rc = bind_path(srv);

	if (rc == -EADDRINUSE) {
		if (lstat(srv->path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
			mn_errf(err, errlen, "control.socket %s: exists and is not a socket",
			        srv->path);
			return -EEXIST;
		}
		rc = probe_listener(srv->path);
		if (rc > 0) {
			mn_errf(err, errlen,
			        "control.socket %s: another process (another mnistd?) is listening "
			        "there; stop it or set another control.socket",
			        srv->path);
			return -EADDRINUSE;
		}
		if (rc < 0) {
			mn_errf(err, errlen,
			        "control.socket %s: cannot tell whether it is in use: %s",
			        srv->path, strerror(-rc));
			return rc;
		}
		mn_log(MN_LOG_INFO, "control: replacing the stale socket %s", srv->path);
		if (unlink(srv->path) < 0 && errno != ENOENT) {
			rc = -errno;
			mn_errf(err, errlen,
			        "control.socket %s: cannot remove the stale socket: %s", srv->path,
			        strerror(errno));
			return rc;
		}
		rc = bind_path(srv);
	}
	if (rc < 0) {
		mn_errf(err, errlen, "control.socket %s: %s", srv->path, strerror(-rc));
		return rc;
	}
	/* Its identity, so that close removes it only while it is still this one. */
	if (lstat(srv->path, &st) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "control.socket %s: cannot look at the socket just bound: %s",
		        srv->path, strerror(errno));
		return rc;
	}
	srv->bound = true;
	srv->dev = st.st_dev;
	srv->ino = st.st_ino;
	/*
	 * bind() applied the umask; set the mode before listen(), so nobody can
	 * connect while it is wrong (connecting needs write permission).
	 */
	if (chmod(srv->path, SOCKET_MODE) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "control.socket %s: chmod: %s", srv->path, strerror(errno));
		return rc;
	}
	rc = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
	if (rc < 0) {
		mn_errf(err, errlen, "control.socket %s: listen: %s", srv->path, uv_strerror(rc));
		return rc;
	}
	return 0;
}

int mnd_control_start(uv_loop_t *loop, const struct mnd_control_params *p, struct mnd_control **out,
                      char *err, size_t errlen)
{
	struct mnd_control *srv;
	int rc;

	if (!p->path || !p->path[0] ||
	    strlen(p->path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		mn_errf(err, errlen, "control.socket: the path must be 1 to %zu bytes",
		        sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		return -ENAMETOOLONG;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	srv->loop = loop;
	snprintf(srv->path, sizeof(srv->path), "%s", p->path);
	srv->reload = p->reload;
	srv->reload_arg = p->arg;
	srv->max_clients = p->max_clients ? p->max_clients : DEFAULT_MAX_CLIENTS;
	srv->max_line = p->max_line ? p->max_line : MN_PROTO_MAX_LINE;
	srv->max_output = p->max_output ? p->max_output : DEFAULT_MAX_OUTPUT;
	srv->idle_timeout_ms = p->idle_timeout_ms;

	rc = uv_pipe_init(loop, &srv->listener, 0);
	if (rc < 0) {
		mn_errf(err, errlen, "control: %s", uv_strerror(rc));
		free(srv);
		return rc;
	}
	srv->listener.data = srv;
	srv->open_handles++;
	uv_timer_init(loop, &srv->sweep);
	srv->sweep.data = srv;
	srv->open_handles++;

	rc = bind_socket(srv, err, errlen);
	if (rc < 0) {
		mnd_control_close(srv);
		return rc;
	}
	uv_timer_start(&srv->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
	uv_unref((uv_handle_t *)&srv->sweep);
	mn_log_fields(MN_LOG_INFO, "control socket listening",
	              (struct mn_log_field[]){MN_F_STR("path", srv->path)}, 1);
	*out = srv;
	return 0;
}

void mnd_control_set_worker(struct mnd_control *c, struct mnd_worker *w)
{
	c->worker = w;
}

void mnd_control_set_early(struct mnd_control *c, struct mnd_early *e)
{
	c->early = e;
}

void mnd_control_set_stopping(struct mnd_control *c)
{
	c->stopping = true;
}

void mnd_control_close(struct mnd_control *c)
{
	struct stat st;

	if (!c || c->closing)
		return;
	c->closing = true;
	/* Only our own socket: an operator may have moved another one into place. */
	if (c->bound && lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
	for (struct client *cl = c->clients; cl; cl = cl->next)
		drop(cl);
	uv_close((uv_handle_t *)&c->listener, on_handle_closed);
	uv_close((uv_handle_t *)&c->sweep, on_handle_closed);
}
