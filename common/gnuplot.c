/*
 * gnuplot.c - gnuplot as a child process, fed and read through pipes.
 */
#include "gnuplot.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* gnuplot's messages kept for the error: the last ones, which say what went wrong. */
#define STDERR_MAX 4096

struct outbuf {
	char *data;
	size_t len, cap, max;
	bool overflow;
	bool keep_tail; /* past max, drop the oldest bytes instead of failing */
};

struct mn_gnuplot {
	uv_process_t proc;
	uv_pipe_t in, out, err;
	uv_write_t write;
	uv_timer_t timer; /* the deadline */
	bool timer_on;    /* timer initialised: it is one of the open handles */
	bool timed_out;
	uint64_t timeout_ms;
	char *script;
	size_t script_len;
	struct outbuf stdout_buf, stderr_buf;
	int open_handles;
	int64_t exit_status;
	int term_signal;
	bool cancelled;
	mn_gnuplot_cb cb;
	void *arg;
};

/* The last non-empty line of b (gnuplot ends with '"-" line 3: what is wrong'). */
static const char *last_line(struct outbuf *b)
{
	char *end;

	if (!b->len)
		return "";
	end = b->data + b->len;
	while (end > b->data && (end[-1] == '\n' || end[-1] == ' '))
		*--end = '\0';
	while (end > b->data && end[-1] != '\n')
		end--;
	return end;
}

static void finish(struct mn_gnuplot *g)
{
	char msg[MN_ERRLEN] = "";
	int status = 0;

	if (g->timed_out) {
		status = -ETIMEDOUT;
		mn_errf(msg, sizeof(msg), "gnuplot did not finish within %g s; killed",
		        (double)g->timeout_ms / 1000.0);
	} else if (g->stdout_buf.overflow) {
		status = -EFBIG;
		mn_errf(msg, sizeof(msg), "gnuplot wrote more than %d bytes",
		        MN_GNUPLOT_OUTPUT_MAX);
	} else if (g->term_signal || g->exit_status != 0) {
		status = -EIO;
		mn_errf(msg, sizeof(msg), "gnuplot failed (%s %d)%s%s",
		        g->term_signal ? "signal" : "exit status",
		        g->term_signal ? g->term_signal : (int)g->exit_status,
		        g->stderr_buf.len ? ": " : "", last_line(&g->stderr_buf));
	}
	g->cb(g->arg, status, g->stdout_buf.data ? g->stdout_buf.data : "", g->stdout_buf.len, msg);
}

static void on_close(uv_handle_t *h)
{
	struct mn_gnuplot *g = h->data;

	/* The deadline goes last, once gnuplot and its pipes are gone. */
	if (--g->open_handles == 1 && g->timer_on && !uv_is_closing((uv_handle_t *)&g->timer))
		uv_close((uv_handle_t *)&g->timer, on_close);
	if (g->open_handles > 0)
		return;
	if (!g->cancelled)
		finish(g);
	free(g->stdout_buf.data);
	free(g->stderr_buf.data);
	free(g->script);
	free(g);
}

static void close_once(uv_handle_t *h)
{
	if (!uv_is_closing(h))
		uv_close(h, on_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct mn_gnuplot *g = h->data;
	struct outbuf *b = h == (uv_handle_t *)&g->out ? &g->stdout_buf : &g->stderr_buf;
	size_t want = b->len + suggested + 1;

	if (want > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		char *p;

		while (cap < want)
			cap *= 2;
		p = realloc(b->data, cap);
		if (!p) {
			*buf = uv_buf_init(NULL, 0);
			return;
		}
		b->data = p;
		b->cap = cap;
	}
	*buf = uv_buf_init(b->data + b->len, (unsigned)(b->cap - b->len - 1));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct mn_gnuplot *g = s->data;
	struct outbuf *b = s == (uv_stream_t *)&g->out ? &g->stdout_buf : &g->stderr_buf;

	(void)buf;
	if (n > 0) {
		if (b->keep_tail) {
			b->len += (size_t)n;
			if (b->len > b->max) {
				memmove(b->data, b->data + b->len - b->max, b->max);
				b->len = b->max;
			}
		} else if (b->len + (size_t)n > b->max) {
			b->overflow = true;
		} else {
			b->len += (size_t)n;
		}
		b->data[b->len] = '\0';
		return;
	}
	/* EOF, an error, or no memory (UV_ENOBUFS): the stream is done either way. */
	if (n < 0) {
		b->overflow = b->overflow || n == UV_ENOBUFS;
		close_once((uv_handle_t *)s);
	}
}

static void on_written(uv_write_t *req, int status)
{
	struct mn_gnuplot *g = req->data;

	/* A gnuplot that died early (EPIPE) tells why on its stderr and in its status. */
	(void)status;
	close_once((uv_handle_t *)&g->in);
}

static void on_process_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
	struct mn_gnuplot *g = p->data;

	g->exit_status = exit_status;
	g->term_signal = term_signal;
	close_once((uv_handle_t *)p);
}

/* The deadline: kill gnuplot and stop waiting for its pipes, which a child of it may hold. */
static void on_timeout(uv_timer_t *t)
{
	struct mn_gnuplot *g = t->data;

	g->timed_out = true;
	if (!uv_is_closing((uv_handle_t *)&g->proc) && uv_process_kill(&g->proc, SIGKILL) < 0)
		close_once((uv_handle_t *)&g->proc);
	close_once((uv_handle_t *)&g->in);
	close_once((uv_handle_t *)&g->out);
	close_once((uv_handle_t *)&g->err);
}

static int open_pipes(int in[2], int out[2], int err[2])
{
	in[0] = in[1] = out[0] = out[1] = err[0] = err[1] = -1;
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		return -errno;
	return 0;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Wraps our ends of the pipes in libuv handles and starts the I/O. */
static void start_io(uv_loop_t *loop, struct mn_gnuplot *g, int in_w, int out_r, int err_r)
{
	uv_buf_t buf = uv_buf_init(g->script, (unsigned)g->script_len);
	uv_pipe_t *pipes[] = {&g->in, &g->out, &g->err};
	int fds[] = {in_w, out_r, err_r};

	for (int i = 0; i < 3; i++) {
		uv_pipe_init(loop, pipes[i], 0);
		pipes[i]->data = g;
		g->open_handles++;
		if (uv_pipe_open(pipes[i], fds[i]) < 0) {
			close(fds[i]);
			close_once((uv_handle_t *)pipes[i]);
		}
	}
	g->write.data = g;
	if (uv_is_closing((uv_handle_t *)&g->in) ||
	    uv_write(&g->write, (uv_stream_t *)&g->in, &buf, 1, on_written) < 0)
		close_once((uv_handle_t *)&g->in);
	if (uv_is_closing((uv_handle_t *)&g->out) ||
	    uv_read_start((uv_stream_t *)&g->out, on_alloc, on_read) < 0)
		close_once((uv_handle_t *)&g->out);
	if (uv_is_closing((uv_handle_t *)&g->err) ||
	    uv_read_start((uv_stream_t *)&g->err, on_alloc, on_read) < 0)
		close_once((uv_handle_t *)&g->err);
}

int mn_gnuplot_start_timeout(uv_loop_t *loop, const char *script, size_t len, uint64_t timeout_ms,
                             mn_gnuplot_cb cb, void *arg, struct mn_gnuplot **out, char *err,
                             size_t errlen)
{
	char *args[] = {"gnuplot", "-d", NULL};
	int in[2], o[2], e[2], rc;
	struct mn_gnuplot *g;
	uv_stdio_container_t stdio[3];
	uv_process_options_t opts = {0};

	if (out)
		*out = NULL;
	g = calloc(1, sizeof(*g));
	if (!g || !(g->script = malloc(len ? len : 1))) {
		free(g);
		mn_errf(err, errlen, "gnuplot: out of memory");
		return -ENOMEM;
	}
	memcpy(g->script, script, len);
	g->script_len = len;
	g->stdout_buf.max = MN_GNUPLOT_OUTPUT_MAX;
	g->stderr_buf.max = STDERR_MAX;
	g->stderr_buf.keep_tail = true;
	g->timeout_ms = timeout_ms ? timeout_ms : MN_GNUPLOT_TIMEOUT_MS;
	g->cb = cb;
	g->arg = arg;
	rc = open_pipes(in, o, e);
	if (rc < 0) {
		mn_errf(err, errlen, "gnuplot: cannot make a pipe: %s", strerror(-rc));
		goto fail;
	}
	stdio[0] = (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = in[0]};
	stdio[1] = (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = o[1]};
	stdio[2] = (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = e[1]};
	opts.file = args[0];
	opts.args = args;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	opts.exit_cb = on_process_exit;
	g->proc.data = g;
	rc = uv_spawn(loop, &g->proc, &opts);
	if (rc < 0) {
		if (rc == UV_ENOENT)
			mn_errf(err, errlen,
			        "gnuplot is not installed (not found in PATH; Debian: "
			        "apt-get install gnuplot-nox)");
		else
			mn_errf(err, errlen, "cannot run gnuplot: %s", uv_strerror(rc));
		/* A failed uv_spawn still initialised the handle; it must be closed. */
		close_fds((int[]){in[1], o[0], e[0]}, 3);
		close_fds((int[]){in[0], o[1], e[1]}, 3);
		g->cancelled = true;
		g->open_handles = 1;
		uv_close((uv_handle_t *)&g->proc, on_close);
		return rc;
	}
	g->open_handles = 1;
	close_fds((int[]){in[0], o[1], e[1]}, 3);
	start_io(loop, g, in[1], o[0], e[0]);
	/* Cannot fail on an initialised loop; without it there would be no deadline. */
	uv_timer_init(loop, &g->timer);
	g->timer.data = g;
	g->timer_on = true;
	g->open_handles++;
	uv_timer_start(&g->timer, on_timeout, g->timeout_ms, 0);
	if (out)
		*out = g;
	return 0;
fail:
	close_fds(in, 2);
	close_fds(o, 2);
	close_fds(e, 2);
	free(g->script);
	free(g);
	return rc;
}

int mn_gnuplot_start(uv_loop_t *loop, const char *script, size_t len, mn_gnuplot_cb cb, void *arg,
                     struct mn_gnuplot **out, char *err, size_t errlen)
{
	return mn_gnuplot_start_timeout(loop, script, len, MN_GNUPLOT_TIMEOUT_MS, cb, arg, out, err,
	                                errlen);
}

void mn_gnuplot_cancel(struct mn_gnuplot *g)
{
	if (!g || g->cancelled)
		return;
	g->cancelled = true;
	/*
	 * libuv reaps only children whose handle is open: on_process_exit closes
	 * it once gnuplot is gone. SIGKILL, because the loop now waits for that
	 * exit (a stop must not hang on a gnuplot that ignores SIGTERM) and its
	 * output is unwanted anyway. A failed kill means no exit will come.
	 */
	if (!uv_is_closing((uv_handle_t *)&g->proc) && uv_process_kill(&g->proc, SIGKILL) < 0)
		close_once((uv_handle_t *)&g->proc);
	close_once((uv_handle_t *)&g->in);
	close_once((uv_handle_t *)&g->out);
	close_once((uv_handle_t *)&g->err);
	close_once((uv_handle_t *)&g->timer);
}

struct sync_result {
	int status;
	char *out;
	size_t len;
	char msg[MN_ERRLEN];
};

static void on_sync_done(void *arg, int status, const char *out, size_t len, const char *error)
{
	struct sync_result *r = arg;

	r->status = status;
	snprintf(r->msg, sizeof(r->msg), "%s", error);
	if (status == 0 && !(r->out = malloc(len + 1))) {
		r->status = -ENOMEM;
		snprintf(r->msg, sizeof(r->msg), "gnuplot: out of memory for its output");
		return;
	}
	if (status == 0) {
		memcpy(r->out, out, len + 1);
		r->len = len;
	}
}

int mn_gnuplot_run(const char *script, size_t len, uint64_t timeout_ms, char **out, size_t *outlen,
                   char *err, size_t errlen)
{
	struct sync_result r = {.status = -EIO};
	uv_loop_t loop;
	int rc;

	*out = NULL;
	*outlen = 0;
	rc = uv_loop_init(&loop);
	if (rc < 0) {
		mn_errf(err, errlen, "gnuplot: %s", uv_strerror(rc));
		return rc;
	}
	rc = mn_gnuplot_start_timeout(&loop, script, len, timeout_ms, on_sync_done, &r, NULL, err,
	                              errlen);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	if (rc < 0)
		return rc;
	if (r.status < 0) {
		mn_errf(err, errlen, "%s", r.msg);
		free(r.out);
		return r.status;
	}
	*out = r.out;
	*outlen = r.len;
	return 0;
}
