/*
 * ctl_control.c - mnistctl's control commands: status, reload, save, pause
 * and resume, each one request on the daemon's control socket (proto.h).
 */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "ctl.h"
#include "ctl_util.h"
#include "mn_build_config.h"
#include "util.h"

#define DEFAULT_TIMEOUT_S 60
#define MAX_ANSWER        (1 << 20)
#define BAR_WIDTH         30

struct command_info {
	const char *name;
	const char *summary;
	const char *details;
};

static const struct command_info info_status = {
    "status", "show where training stands",
    "Prints the state, the step with a progress bar, the learning rate, the loss,\n"
    "the speed, the estimated time to max_steps and the latest checkpoint.\n"
    "--json prints the daemon's answer as it is: {\"ok\":true,\"step\":...}.\n"};
static const struct command_info info_reload = {
    "reload", "re-read the daemon's configuration file",
    "The daemon validates the whole file first: an invalid file changes nothing\n"
    "and its error is printed (exit status 1). Otherwise the reloadable keys that\n"
    "changed apply from the next step, and changed keys that need a restart are\n"
    "listed and not applied. Changed keys mnistd does not use (mnist-eval's) are\n"
    "listed as ignored, once.\n"};
static const struct command_info info_save = {
    "save", "publish a checkpoint now",
    "Answers once the checkpoint of the current step is durable, with its file name.\n"};
static const struct command_info info_pause = {
    "pause", "pause training at the next step",
    "Answers once the training thread has stopped at a step boundary. status, save,\n"
    "reload and SIGTERM keep working while paused.\n"};
static const struct command_info info_resume = {"resume", "resume paused training",
                                                "Answers once training has resumed.\n"};

static void usage(FILE *f, const struct command_info *ci)
{
	fprintf(f,
	        "Usage: mnistctl [--config PATH] [--socket PATH] %s [--json] [--timeout SECONDS]\n"
	        "\n"
	        "%s: %s.\n"
	        "%s"
	        "\n"
	        "  -j, --json             print the daemon's JSON answer\n"
	        "  -t, --timeout SECONDS  wait at most this long for the answer (default %d;\n"
	        "                         0 waits forever)\n"
	        "  -h, --help             this help\n"
	        "\n"
	        "The socket is --socket PATH, else control.socket of the configuration\n"
	        "(--config, default " MN_DEFAULT_CONFIG ").\n"
	        "Exit status: 0 success, 1 the daemon reported an error, 2 usage error,\n"
	        "3 no daemon reachable on the socket.\n",
	        ci->name, ci->name, ci->summary, ci->details, DEFAULT_TIMEOUT_S);
}

struct call {
	const struct command_info *ci;
	bool json;
	bool help;       /* --help: print the usage and succeed */
	bool show_usage; /* the error is a bad command line: the usage follows its message */
	long timeout_s;
	char path[MN_CONFIG_PATH_MAX];
};

/* Parses the subcommand's options; returns 0, or -EINVAL with the message in err. */
static int parse_args(int argc, char **argv, const struct ctl_globals *g, struct call *call,
                      char *err, size_t errlen)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"timeout", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	char *end;
	int c;

	call->json = g->json;
	call->timeout_s = DEFAULT_TIMEOUT_S;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:jt:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			call->json = true;
			break;
		case 't':
			errno = 0;
			call->timeout_s = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || call->timeout_s < 0 ||
			    call->timeout_s > 86400) {
				mn_errf(err, errlen,
				        "--timeout must be whole seconds in [0, 86400], got \"%s\"",
				        optarg);
				return -EINVAL;
			}
			break;
		case 'h':
			call->help = true;
			return 0;
		default:
			ctl_option_message(c, argv, opts, err, errlen);
			call->show_usage = true;
			return -EINVAL;
		}
	}
	if (optind < argc) {
		mn_errf(err, errlen, "unexpected argument \"%s\"", argv[optind]);
		call->show_usage = true;
		return -EINVAL;
	}
	return 0;
}

/*
 * The socket path: --socket, else control.socket of the configuration. A
 * missing default configuration file means the default socket, so mnistctl
 * works on a host that runs mnistd with its built-in defaults. Returns 0,
 * or -EINVAL with the message in err.
 */
static int socket_path(const struct ctl_globals *g, struct call *call, char *err, size_t errlen)
{
	struct mn_config cfg;
	char why[MN_ERRLEN];

	if (g->socket_path) {
		snprintf(call->path, sizeof(call->path), "%s", g->socket_path);
		return 0;
	}
	if (ctl_load_config(g, true, &cfg, why, sizeof(why)) < 0) {
		mn_errf(err, errlen, "%s\n(pass --socket PATH to name the socket directly)", why);
		return -EINVAL;
	}
	snprintf(call->path, sizeof(call->path), "%s", cfg.control.socket);
	return 0;
}

static const char *connect_hint(int e)
{
	switch (e) {
	case ENOENT:
	case ECONNREFUSED:
		return " (is mnistd running?)";
	case EACCES:
		return " (are you in the daemon's group?)";
	default:
		return "";
	}
}

/*
 * Reads until the first newline. Returns 0 with the line in *answer
 * (malloc'd, NUL-terminated, without the newline), or -errno with the
 * message in err. send_errno is why sending the request failed (0 if it
 * did not): a daemon that refused the connection may still have answered.
 */
static int read_answer(const struct call *call, int fd, int send_errno, char **answer, char *err,
                       size_t errlen)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc;

	for (;;) {
		ssize_t got;
		char *nl;

		if (cap - len < 4096) {
			char *nb;

			if (cap >= MAX_ANSWER) {
				mn_errf(err, errlen, "the answer from %s exceeds %d bytes",
				        call->path, MAX_ANSWER);
				rc = -EMSGSIZE;
				goto fail;
			}
			cap = cap ? cap * 2 : 8192;
			nb = realloc(buf, cap);
			if (!nb) {
				mn_errf(err, errlen, "out of memory");
				rc = -ENOMEM;
				goto fail;
			}
			buf = nb;
		}
		got = recv(fd, buf + len, cap - len - 1, 0);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0 && send_errno && errno == ECONNRESET)
			got = 0;
		if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			mn_errf(err, errlen, "no answer from %s within %ld s", call->path,
			        call->timeout_s);
			rc = -ETIMEDOUT;
			goto fail;
		}
		if (got < 0) {
			rc = -errno;
			mn_errf(err, errlen, "reading from %s: %s", call->path, strerror(errno));
			goto fail;
		}
		if (got == 0 && send_errno) {
			mn_errf(err, errlen, "cannot send to %s: %s", call->path,
			        strerror(send_errno));
			rc = -send_errno;
			goto fail;
		}
		if (got == 0) {
			mn_errf(err, errlen, "%s closed the connection without an answer",
			        call->path);
			rc = -ECONNRESET;
			goto fail;
		}
		nl = memchr(buf + len, '\n', (size_t)got);
		len += (size_t)got;
		if (nl) {
			*nl = '\0';
			*answer = buf;
			return 0;
		}
	}
fail:
	free(buf);
	return rc;
}

/*
 * Sends one request and reads the answer line into *answer (see
 * read_answer). Returns 0, or -errno with the message in err.
 */
static int roundtrip(const struct call *call, char **answer, char *err, size_t errlen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = call->timeout_s};
	char req[64];
	int fd, rc, n, send_errno = 0;

	if (strlen(call->path) >= sizeof(sa.sun_path)) {
		mn_errf(err, errlen, "socket path %s is longer than %zu bytes", call->path,
		        sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, call->path, strlen(call->path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		mn_errf(err, errlen, "socket: %s", strerror(errno));
		return rc;
	}
	/* Unix sockets honour the send timeout in connect() (a full backlog) too. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "setsockopt: %s", strerror(errno));
		goto out;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = -errno;
		mn_errf(err, errlen, "cannot connect to %s: %s%s", call->path, strerror(-rc),
		        connect_hint(-rc));
		goto out;
	}
	n = snprintf(req, sizeof(req), "{\"cmd\":\"%s\"}\n", call->ci->name);
	/*
	 * A daemon that refuses the connection (too many clients) answers and
	 * closes at once, so the send may fail while its answer waits unread.
	 */
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
		send_errno = errno;
	rc = read_answer(call, fd, send_errno, answer, err, errlen);
out:
	close(fd);
	return rc;
}

/*
 * Parses the answer into *out. Returns 0, -EPROTO if it is not a protocol
 * answer, or -EREMOTEIO if the daemon said no (*out is set for both of
 * those last two too when it is an object), with the message in err.
 */
static int parse_answer(const struct call *call, const char *answer, cJSON **out, char *err,
                        size_t errlen)
{
	cJSON *o = cJSON_Parse(answer);
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(o, "ok");
	const cJSON *e;

	*out = o;
	if (!cJSON_IsObject(o) || !cJSON_IsBool(ok)) {
		mn_errf(err, errlen, "unexpected answer from %s: %.200s", call->path, answer);
		return -EPROTO;
	}
	if (cJSON_IsTrue(ok))
		return 0;
	e = cJSON_GetObjectItemCaseSensitive(o, "error");
	mn_errf(err, errlen, "%s",
	        cJSON_IsString(e) ? e->valuestring : "the daemon reported an error");
	return -EREMOTEIO;
}

/*
 * The one place where a control command's outcome becomes its exit status:
 * prints the message of a failure (and the usage after a bad command
 * line), and maps the error to MN_EX_USAGE for the command line or the
 * configuration, MN_EX_FAILURE when the daemon said no, answered nonsense
 * or too much, or memory ran out, and MN_EX_UNREACHABLE for the rest
 * (connecting, sending or waiting for the answer failed).
 */
static int exit_status(const struct call *call, int rc, const char *err)
{
	if (rc == 0)
		return MN_EX_OK;
	ctl_errorf(call->ci->name, "%s", err);
	if (call->show_usage) {
		fputc('\n', stderr);
		usage(stderr, call->ci);
	}
	switch (-rc) {
	case EINVAL:
	case ENAMETOOLONG:
		return MN_EX_USAGE;
	case EREMOTEIO:
	case EPROTO:
	case EMSGSIZE:
	case ENOMEM:
		return MN_EX_FAILURE;
	default:
		return MN_EX_UNREACHABLE;
	}
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void format_duration(double s, char *buf, size_t len)
{
	long long t;

	if (!isfinite(s) || s < 0 || s > 1e12) {
		snprintf(buf, len, "-");
		return;
	}
	t = (long long)(s + 0.5);
	if (t < 1)
		snprintf(buf, len, "<1s");
	else if (t < 60)
		snprintf(buf, len, "%llds", t);
	else if (t < 3600)
		snprintf(buf, len, "%lldm %02llds", t / 60, t % 60);
	else if (t < 86400)
		snprintf(buf, len, "%lldh %02lldm", t / 3600, t % 3600 / 60);
	else
		snprintf(buf, len, "%lldd %02lldh", t / 86400, t % 86400 / 3600);
}

/* Present only when train.early_stopping is on. */
static void print_early(const cJSON *o)
{
	double best = num(o, "best_accuracy"), step = num(o, "best_step");
	double since = num(o, "evals_since_best"), patience = num(o, "patience");

	if (!cJSON_GetObjectItemCaseSensitive(o, "evals_since_best"))
		return;
	if (!isfinite(best) || !isfinite(step))
		printf("best accuracy  - (no evaluation yet)\n");
	else
		printf("best accuracy  %.4f at step %.0f\n", best, step);
	printf("since best     %.0f of %.0f evaluations (early stopping)\n",
	       isfinite(since) ? since : 0.0, isfinite(patience) ? patience : 0.0);
}

static void print_status(const cJSON *o)
{
	double step = num(o, "step"), max = num(o, "max_steps"), lr = num(o, "learning_rate");
	double loss = num(o, "loss"), sps = num(o, "steps_per_sec"), frac = 0;
	const cJSON *paused = cJSON_GetObjectItemCaseSensitive(o, "paused");
	const char *state = str(o, "state"), *latest = str(o, "latest_checkpoint");
	const char *ckpt_error = str(o, "checkpoint_error");
	double failing = num(o, "checkpoint_failures");
	char bar[BAR_WIDTH + 1], eta[32];
	int fill;

	if (!state)
		state = cJSON_IsTrue(paused) ? "paused" : "training";
	if (isfinite(step) && isfinite(max) && max > 0)
		frac = step >= max ? 1.0 : step <= 0 ? 0.0 : step / max;
	fill = (int)(frac * BAR_WIDTH);
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, '.', (size_t)(BAR_WIDTH - fill));
	bar[BAR_WIDTH] = '\0';
	if (isfinite(step) && isfinite(max) && step >= max)
		snprintf(eta, sizeof(eta), "done");
	else if (cJSON_IsTrue(paused))
		snprintf(eta, sizeof(eta), "- (paused)");
	else if (strcmp(state, "stopping") == 0)
		snprintf(eta, sizeof(eta), "- (stopping)");
	else if (isfinite(sps) && sps > 0 && isfinite(step) && isfinite(max))
		format_duration((max - step) / sps, eta, sizeof(eta));
	else
		snprintf(eta, sizeof(eta), "-");

	printf("state          ");
	ctl_fputs_escaped(stdout, state);
	fputc('\n', stdout);
	printf("step           %.0f / %.0f  [%s] %5.1f%%\n", step, max, bar, frac * 100);
	if (isfinite(lr))
		printf("learning rate  %.6g\n", lr);
	else
		printf("learning rate  -\n");
	if (isfinite(loss))
		printf("loss           %.4f\n", loss);
	else
		printf("loss           - (no step yet)\n");
	printf("speed          %.1f steps/s\n", isfinite(sps) ? sps : 0.0);
	printf("ETA            %s\n", eta);
	printf("checkpoint     ");
	ctl_fputs_escaped(stdout, latest ? latest : "- (none yet)");
	fputc('\n', stdout);
	if (isfinite(failing) && failing > 0) {
		char shown[MN_ERRLEN];

		/* The message names paths from the daemon's configuration: shown, never obeyed. */
		mn_escape(ckpt_error ? ckpt_error : "(no message)", shown, sizeof(shown));
		printf("FAILING        %.0f checkpoint%s in a row: %s\n", failing,
		       failing == 1 ? "" : "s", shown);
	}
	print_early(o);
}

static void print_keys(const char *title, const cJSON *arr)
{
	const cJSON *k;
	bool first = true;

	if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0)
		return;
	printf("%s: ", title);
	cJSON_ArrayForEach(k, arr)
	{
		if (cJSON_IsString(k)) {
			fputs(first ? "" : ", ", stdout);
			ctl_fputs_escaped(stdout, k->valuestring);
			first = false;
		}
	}
	printf("\n");
}

static void print_reload(const cJSON *o)
{
	const cJSON *applied = cJSON_GetObjectItemCaseSensitive(o, "applied");
	const cJSON *restart = cJSON_GetObjectItemCaseSensitive(o, "restart_required");
	/* The file is mnist-eval's too: its keys are listed apart (once), so none looks lost. */
	const cJSON *ignored = cJSON_GetObjectItemCaseSensitive(o, "ignored");

	if (cJSON_GetArraySize(applied) == 0 && cJSON_GetArraySize(restart) == 0 &&
	    cJSON_GetArraySize(ignored) == 0) {
		printf("configuration reloaded: nothing changed\n");
		return;
	}
	printf("configuration reloaded\n");
	print_keys("applied", applied);
	print_keys("changed but needs a restart (not applied)", restart);
	print_keys("changed but not used by mnistd (ignored)", ignored);
}

/*
 * The answer's strings are shown escaped (ctl_fputs_escaped): whatever
 * listens at the socket path, a terminal only ever displays them.
 */
static void print_answer(const struct call *call, const cJSON *o)
{
	const struct command_info *ci = call->ci;

	if (ci == &info_status) {
		print_status(o);
	} else if (ci == &info_reload) {
		print_reload(o);
	} else if (ci == &info_save) {
		const char *name = str(o, "checkpoint");

		printf("checkpoint ");
		ctl_fputs_escaped(stdout, name ? name : "?");
		printf(" published at step %.0f\n", num(o, "step"));
	} else {
		printf("training %s at step %.0f\n", ci == &info_pause ? "paused" : "resumed",
		       num(o, "step"));
	}
}

static int run(int argc, char **argv, const struct ctl_globals *g, const struct command_info *ci)
{
	struct call call = {.ci = ci};
	char *answer = NULL, err[2 * MN_ERRLEN];
	cJSON *o = NULL;
	int rc;

	rc = parse_args(argc, argv, g, &call, err, sizeof(err));
	if (rc == 0 && call.help) {
		usage(stdout, ci);
		return MN_EX_OK;
	}
	if (rc == 0)
		rc = socket_path(g, &call, err, sizeof(err));
	if (rc == 0)
		rc = roundtrip(&call, &answer, err, sizeof(err));
	if (rc == 0) {
		rc = parse_answer(&call, answer, &o, err, sizeof(err));
		/* --json shows the daemon's answer as it is, a refusal included. */
		if (rc != -EPROTO && call.json)
			printf("%s\n", answer);
	}
	if (rc == 0 && !call.json)
		print_answer(&call, o);
	cJSON_Delete(o);
	free(answer);
	return exit_status(&call, rc, err);
}

int ctl_status(int argc, char **argv, const struct ctl_globals *g)
{
	return run(argc, argv, g, &info_status);
}

int ctl_reload(int argc, char **argv, const struct ctl_globals *g)
{
	return run(argc, argv, g, &info_reload);
}

int ctl_save(int argc, char **argv, const struct ctl_globals *g)
{
	return run(argc, argv, g, &info_save);
}

int ctl_pause(int argc, char **argv, const struct ctl_globals *g)
{
	return run(argc, argv, g, &info_pause);
}

int ctl_resume(int argc, char **argv, const struct ctl_globals *g)
{
	return run(argc, argv, g, &info_resume);
}
