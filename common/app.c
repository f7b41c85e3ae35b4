/* app.c - see app.h. */
#include "app.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "mlp.h"
#include "model.h"
#include "util.h"

/* The signals held back until the loop's handlers are there, in the order they are passed on. */
static const int early_signals[] = {SIGHUP, SIGTERM, SIGINT};
#define NEARLY_SIGNALS (sizeof(early_signals) / sizeof(early_signals[0]))

/* Which of early_signals arrived before the loop's handlers: mn_app_loop_start() passes them on. */
static volatile sig_atomic_t early_seen[NEARLY_SIGNALS];

static void on_early_signal(int signum)
{
	for (size_t i = 0; i < NEARLY_SIGNALS; i++)
		if (early_signals[i] == signum)
			early_seen[i] = 1;
}

/* Passes on the signals held back, to whatever handles them now. */
static void raise_early_signals(void)
{
	for (size_t i = 0; i < NEARLY_SIGNALS; i++) {
		if (early_seen[i]) {
			early_seen[i] = 0;
			raise(early_signals[i]);
		}
	}
}

bool mn_app_start(struct mn_app *a, const struct mn_app_start_params *p, int *ex)
{
	struct sigaction sa = {.sa_handler = on_early_signal, .sa_flags = SA_RESTART};
	enum mn_log_level level;
	char err[MN_ERRLEN];

	signal(SIGPIPE, SIG_IGN);
	/*
	 * A service is up for systemd (Type=exec) as soon as it runs, so a
	 * reload or a stop may come before the loop catches the signals: their
	 * default actions would kill the service, which must reload, or stop
	 * with its status 0. Held until then instead.
	 */
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < NEARLY_SIGNALS; i++)
		sigaction(early_signals[i], &sa, NULL);
	mn_config_defaults(&a->cfg);
	if (mn_config_load(a->config_path, &a->cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s: %s\n", a->name, err);
		*ex = MN_EX_CONFIG;
		return false;
	}
	if (p->check_only) {
		printf("%s: configuration is valid\n", a->config_path);
		*ex = MN_EX_OK;
		return false;
	}
	level = a->cfg.log.level;
	if (p->terminal && level > MN_LOG_INFO)
		level = MN_LOG_INFO;
	if (mn_log_open(p->terminal ? NULL : a->cfg.log.file, a->cfg.log.format, level, err,
	                sizeof(err)) < 0) {
		fprintf(stderr, "%s: log.file: %s\n", a->name, err);
		*ex = MN_EX_CONFIG;
		return false;
	}
	mn_blas_set_threads((int)a->cfg.train.threads);
	return true;
}

static int start_signal(struct mn_app *a, uv_signal_t *h, uv_signal_cb cb, int signum, void *data)
{
	int rc = uv_signal_init(&a->loop, h);

	if (rc == 0) {
		h->data = data;
		rc = uv_signal_start(h, cb, signum);
	}
	if (rc < 0)
		mn_log(MN_LOG_ERROR, "signal %d: %s", signum, uv_strerror(rc));
	return rc;
}

int mn_app_loop_start(struct mn_app *a, bool signals, uv_signal_cb on_stop, uv_signal_cb on_hup,
                      void *data)
{
	int rc = uv_loop_init(&a->loop);

	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "uv_loop_init: %s", uv_strerror(rc));
		return rc;
	}
	a->loop_ready = true;
	if (!signals) {
		/* A command: a hangup or a stop ends it, as it would have from the start. */
		for (size_t i = 0; i < NEARLY_SIGNALS; i++)
			signal(early_signals[i], SIG_DFL);
		raise_early_signals();
		return 0;
	}
	if ((rc = start_signal(a, &a->sig_term, on_stop, SIGTERM, data)) < 0 ||
	    (rc = start_signal(a, &a->sig_int, on_stop, SIGINT, data)) < 0 ||
	    (rc = start_signal(a, &a->sig_hup, on_hup, SIGHUP, data)) < 0)
		return rc;
	a->signals_ready = true;
	/* Now libuv's handlers take them: the callbacks run once the loop does. */
	raise_early_signals();
	return 0;
}

void mn_app_signals_unref(struct mn_app *a)
{
	if (!a->signals_ready)
		return;
	uv_unref((uv_handle_t *)&a->sig_term);
	uv_unref((uv_handle_t *)&a->sig_int);
	uv_unref((uv_handle_t *)&a->sig_hup);
}

int mn_app_load_split(struct mn_app *a, const char *what, struct mn_view *train,
                      struct mn_view *validation)
{
	struct mn_view t, v;
	char err[MN_ERRLEN];
	int rc;

	rc = mn_dataset_load_dir(a->cfg.data.dir, "train", &a->data, err, sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "cannot load the %s data: %s", what, err);
		if (rc == -ENOENT)
			return MN_EX_NOINPUT;
		/* Not the data's fault: another run may succeed. */
		if (rc == -ENOMEM || rc == -EIO || rc == -EACCES || rc == -EPERM)
			return MN_EX_FAILURE;
		return MN_EX_DATAERR;
	}
	/* Said now, as a data error, not later as every checkpoint failing to evaluate. */
	if (mn_dataset_max_label(a->data) >= MN_CLASSES) {
		mn_log(MN_LOG_ERROR, "%s: label %u is out of range for %d classes", a->cfg.data.dir,
		       mn_dataset_max_label(a->data), MN_CLASSES);
		return MN_EX_DATAERR;
	}
	rc = mn_dataset_split(a->data, (size_t)a->cfg.data.validation_size, &t, &v, err,
	                      sizeof(err));
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "data.validation_size: %s", err);
		return MN_EX_CONFIG;
	}
	if (train)
		*train = t;
	if (validation)
		*validation = v;
	return MN_EX_OK;
}

struct sort_keys {
	struct mn_app_reloaded *r;
	unsigned user;
};

static void sort_key(const char *path, bool reloadable, void *arg)
{
	struct sort_keys *s = arg;
	enum mn_config_change c = mn_config_change_for(path, s->user);

	(void)reloadable; /* part of what mn_config_change_for() says */
	/* The schema has fewer keys than a list holds. */
	if (s->r->n[c] < MN_APP_MAX_KEYS)
		s->r->keys[c][s->r->n[c]++] = path;
}

int mn_app_reload_config(struct mn_app *a, struct mn_app_reloaded *r, struct mn_config *next,
                         char *err, size_t errlen)
{
	struct sort_keys s = {r, a->user};
	int rc;

	memset(r, 0, sizeof(*r));
	*next = a->cfg;
	rc = mn_config_load(a->config_path, next, err, errlen);
	if (rc < 0) {
		mn_log(MN_LOG_ERROR, "reload rejected, keeping the running configuration: %s", err);
		return rc;
	}
	mn_config_diff(&a->cfg, next, sort_key, &s);
	mn_config_apply_reloadable(&a->cfg, next);
	mn_config_apply_unused(&a->cfg, next, a->user);
	return 0;
}

/* Appends s to a comma-separated list in buf; a list too long for buf ends in "...". */
static void list_add(char *buf, size_t len, const char *s)
{
	size_t used = strlen(buf);
	int n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", s);

	if (n < 0 || (size_t)n >= len - used)
		snprintf(buf + (len > 4 ? len - 4 : 0), len > 4 ? 4 : len, "...");
}

static void join_keys(const char *const *keys, size_t n, char *buf, size_t len)
{
	buf[0] = '\0';
	for (size_t i = 0; i < n; i++)
		list_add(buf, len, keys[i]);
}

void mn_app_log_reloaded(const struct mn_app *a, const struct mn_app_reloaded *r)
{
	char applied[1024], restart[1024], unused[1024];

	join_keys(r->keys[MN_CONFIG_APPLY], r->n[MN_CONFIG_APPLY], applied, sizeof(applied));
	join_keys(r->keys[MN_CONFIG_RESTART], r->n[MN_CONFIG_RESTART], restart, sizeof(restart));
	join_keys(r->keys[MN_CONFIG_UNUSED], r->n[MN_CONFIG_UNUSED], unused, sizeof(unused));
	mn_log_fields(r->n[MN_CONFIG_RESTART] ? MN_LOG_WARN : MN_LOG_INFO, "configuration reloaded",
	              (struct mn_log_field[]){
	                  MN_F_STR("file", a->config_path),
	                  MN_F_STR("applied", applied),
	                  MN_F_STR("restart_required", restart),
	                  MN_F_STR("ignored", unused),
	              },
	              4);
}

void mn_app_reopen_log_file(const struct mn_app *a, struct mn_app_reopen *r)
{
	char err[MN_ERRLEN];
	int rc;

	if (a->cfg.log.file[0] == '\0')
		return;
	rc = mn_log_reopen(err, sizeof(err));
	mn_app_reopen_note(r, "log.file", rc, err);
}

void mn_app_reopen_note(struct mn_app_reopen *r, const char *key, int rc, const char *err)
{
	if (rc < 0)
		mn_log(MN_LOG_WARN, "%s: %s; keeping the old descriptor", key, err);
	list_add(rc < 0 ? r->failed : r->done, rc < 0 ? sizeof(r->failed) : sizeof(r->done), key);
}

void mn_app_reopen_log(const struct mn_app_reopen *r)
{
	if (r->failed[0])
		mn_log_fields(MN_LOG_WARN, "reopen failed, keeping the old descriptor",
		              (struct mn_log_field[]){MN_F_STR("failed", r->failed),
		                                      MN_F_STR("reopened", r->done)},
		              2);
	else if (r->done[0])
		mn_log_fields(MN_LOG_INFO, "reopened",
		              (struct mn_log_field[]){MN_F_STR("files", r->done)}, 1);
}

static void close_handle(uv_handle_t *h, void *arg)
{
	/*
	 * A child's handle is left to its owner, who killed the child and
	 * closes the handle once it has exited: libuv reaps a child only while
	 * its handle is open, so closing it here would leave a zombie and skip
	 * the owner's close callback (its memory).
	 */
	if (!uv_is_closing(h) && h->type != UV_PROCESS)
		uv_close(h, NULL);
}

void mn_app_loop_close(struct mn_app *a)
{
	if (!a->loop_ready)
		return;
	uv_walk(&a->loop, close_handle, NULL);
	/*
	 * Closing the last watcher of a signal gives it back its default action,
	 * and a stop signal while the program tidies up would kill it (exit by
	 * SIGTERM instead of its own status): the stop is under way already.
	 */
	if (a->signals_ready) {
		signal(SIGTERM, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
	}
	/* A uv_stop() made outside the loop ends the first run before it starts. */
	while (uv_run(&a->loop, UV_RUN_DEFAULT) != 0)
		;
	if (uv_loop_close(&a->loop) < 0)
		mn_log(MN_LOG_WARN, "event loop closed with handles still open");
	a->loop_ready = false;
	a->signals_ready = false;
}

void mn_app_end(struct mn_app *a)
{
	mn_dataset_free(a->data);
	a->data = NULL;
	mn_log_close();
}
