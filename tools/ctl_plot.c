/*
 * ctl_plot.c - mnistctl plot: a run's curves from the trainer's and the
 * evaluator's metrics files, drawn by gnuplot as text on a terminal or as a
 * self-contained HTML page (report.h builds both).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <uv.h>

#include "ctl.h"
#include "ctl_util.h"
#include "follow.h"
#include "gnuplot.h"
#include "metrics.h"
#include "report.h"
#include "util.h"

static const char plot_help[] =
    "Usage: mnistctl plot [--train FILE] [--eval FILE] [--best FILE]\n"
    "                     [--terminal | -o REPORT.html | --watch]\n"
    "\n"
    "Draws a run's curves with gnuplot (Debian package gnuplot-nox) from the\n"
    "trainer's history (train.metrics_file) and the evaluator's metrics\n"
    "(eval.metrics_file), both JSON lines. Without --train or --eval both come\n"
    "from the configuration; with either, only the files given are read.\n"
    "\n"
    "--terminal (the default when standard output is a terminal) draws training\n"
    "loss and validation accuracy against step as text, sized to the terminal.\n"
    "-o writes one self-contained HTML page (inline SVG, no network access\n"
    "needed): validation accuracy and loss, training loss and learning rate\n"
    "against step, the best checkpoint marked, a summary table and the\n"
    "configuration. The page is replaced atomically; '-o -' prints it.\n"
    "--watch draws the terminal charts again, over the screen, as lines arrive\n"
    "in either file (filesystem events), at most 4 times a second, until\n"
    "SIGINT (Ctrl-C) or SIGTERM; a file that is missing or empty is waited for.\n"
    "\n"
    "A line whose step is not greater than the one before it (a resumed run)\n"
    "replaces the lines at that step and later. A line whose writer died\n"
    "mid-write is left out. A missing, empty or malformed file, or a missing\n"
    "gnuplot, is an error.\n"
    "\n"
    "Options:\n"
    "  -t, --train FILE   the trainer's history\n"
    "  -e, --eval FILE    the evaluator's metrics\n"
    "  -b, --best FILE    best.json, whose first entry is marked as the best\n"
    "                     checkpoint (default: the highest validation accuracy)\n"
    "  -T, --terminal     text charts on standard output\n"
    "  -o, --output FILE  the HTML page to write (never a file it is drawn from)\n"
    "  -w, --watch        redraw the terminal charts as the files grow\n"
    "  -h, --help         this help\n"
    "\n"
    "Exit status: 0 drawn (--watch: ended by a signal), 1 error (nothing\n"
    "written), 2 usage error.\n"
    "\n"
    "Examples:\n"
    "  mnistctl plot\n"
    "  mnistctl plot -o /tmp/report.html\n"
    "  mnistctl plot --watch\n";

struct plot_opts {
	const char *train, *eval, *best, *output;
	bool terminal, watch;
};

/* A plot: its options, configuration, the files it reads and what they hold. */
struct plot {
	struct plot_opts o;
	struct mn_config cfg;
	bool have_cfg;
	const char *train_path, *eval_path; /* NULL: not read */
	/* As read so far: --watch reads only what was appended since its last drawing. */
	struct mn_metrics_file train, eval;
	struct mn_metrics_best best;
	bool have_best;
};

/* The configuration and the files to read; an exit status (errors printed). */
static int plot_setup(const struct ctl_globals *g, struct plot *p)
{
	char err[MN_ERRLEN];
	struct stat st;

	if (ctl_load_config(g, true, &p->cfg, err, sizeof(err)) < 0) {
		ctl_errorf("plot", "%s", err);
		return MN_EX_FAILURE;
	}
	p->have_cfg = stat(g->config_path, &st) == 0;
	p->train_path = p->o.train;
	p->eval_path = p->o.eval;
	if (p->train_path || p->eval_path)
		return MN_EX_OK;
	p->train_path = p->cfg.train.metrics_file[0] ? p->cfg.train.metrics_file : NULL;
	p->eval_path = p->cfg.eval.metrics_file[0] ? p->cfg.eval.metrics_file : NULL;
	if (p->train_path || p->eval_path)
		return MN_EX_OK;
	ctl_errorf("plot",
	           "no metrics files: %s sets neither train.metrics_file nor eval.metrics_file; "
	           "give --train or --eval",
	           g->config_path);
	return MN_EX_FAILURE;
}

/*
 * Reads what was appended to one metrics file. With yet, a file that is
 * missing or has no lines yet (--watch waits for it) is no error: f's
 * series is then empty.
 */
static int load_series(struct mn_metrics_file *f, const char *path, bool yet, char *err,
                       size_t errlen)
{
	int rc;

	if (!path)
		return 0;
	rc = mn_metrics_file_update(f, path, err, errlen);
	if (rc < 0 && yet && (rc == -ENOENT || rc == -ENODATA))
		return 0;
	return rc;
}

/*
 * Reads what was appended to the files. 0, or -errno with err filled. With yet (--watch),
 * missing or empty files are not errors as long as one file has lines, and
 * a missing best.json is only not marked.
 */
static int plot_load(struct plot *p, bool yet, char *err, size_t errlen)
{
	int rc = 0;

	p->have_best = false;
	if ((rc = load_series(&p->train, p->train_path, yet, err, errlen)) < 0 ||
	    (rc = load_series(&p->eval, p->eval_path, yet, err, errlen)) < 0)
		return rc;
	if (yet && p->train.series.n == 0 && p->eval.series.n == 0) {
		mn_errf(err, errlen, "%s%s%s: no lines yet", p->train_path ? p->train_path : "",
		        p->train_path && p->eval_path ? ", " : "",
		        p->eval_path ? p->eval_path : "");
		return -ENODATA;
	}
	if (p->o.best) {
		rc = mn_metrics_load_best(p->o.best, &p->best, err, errlen);
		if (rc == 0 && yet)
			return 0;
		if (rc == 0) {
			mn_errf(err, errlen, "%s: no such file or no entry in it", p->o.best);
			rc = -ENOENT;
		}
		if (rc < 0)
			return rc;
		p->have_best = true;
	}
	return 0;
}

static struct mn_report_input plot_input(const struct plot *p)
{
	return (struct mn_report_input){
	    .train = &p->train.series,
	    .eval = &p->eval.series,
	    .best = p->have_best ? &p->best : NULL,
	    .train_path = p->train_path,
	    .eval_path = p->eval_path,
	    .config = p->have_cfg ? &p->cfg : NULL,
	};
}

static void plot_free(struct plot *p)
{
	mn_metrics_file_free(&p->train);
	mn_metrics_file_free(&p->eval);
}

/* The terminal's size, else $COLUMNS x $LINES, else 80 x 24. */
static void terminal_size(int *cols, int *rows)
{
	struct winsize ws;
	const char *c = getenv("COLUMNS"), *l = getenv("LINES");

	*cols = 80;
	*rows = 24;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
		*cols = ws.ws_col;
		*rows = ws.ws_row;
		return;
	}
	if (c && atoi(c) > 0)
		*cols = atoi(c);
	if (l && atoi(l) > 0)
		*rows = atoi(l);
}

/*
 * The text charts for a terminal of cols x rows: gnuplot's output in *buf
 * (malloc'd; free it), *text and *len the charts in it without the form
 * feed that starts a page. 0, or -errno with err filled.
 */
static int render_text(const struct mn_report_input *in, int cols, int rows, char **buf,
                       const char **text, size_t *len, char *err, size_t errlen)
{
	char *script = NULL;
	size_t slen;
	int rc;

	*buf = NULL;
	rc = mn_report_text_script(in, cols, rows, &script, &slen, err, errlen);
	if (rc == 0)
		rc = mn_gnuplot_run(script, slen, MN_GNUPLOT_TIMEOUT_MS, buf, len, err, errlen);
	free(script);
	if (rc < 0)
		return rc;
	*text = *buf;
	if (*len > 0 && (*buf)[0] == '\f') {
		(*text)++;
		(*len)--;
	}
	return 0;
}

static int draw_terminal(const struct mn_report_input *in)
{
	char *buf, err[MN_ERRLEN];
	const char *text;
	size_t len;
	int cols, rows, rc;

	terminal_size(&cols, &rows);
	/* One line less than the screen, so the shell's prompt does not scroll a chart away. */
	if (render_text(in, cols, rows - 1, &buf, &text, &len, err, sizeof(err)) < 0) {
		ctl_errorf("plot", "%s", err);
		return MN_EX_FAILURE;
	}
	rc = mn_write_iov(STDOUT_FILENO, &(struct iovec){.iov_base = (void *)text, .iov_len = len},
	                  1);
	free(buf);
	if (rc < 0) {
		ctl_errorf("plot", "standard output: %s", strerror(-rc));
		return MN_EX_FAILURE;
	}
	return MN_EX_OK;
}

static int write_page(const char *path, const char *html, size_t len)
{
	char dir[4096], err[MN_ERRLEN];
	const char *name;
	struct iovec iov = {.iov_base = (void *)html, .iov_len = len};

	/* "-" too: the writer sends it to standard output and reports a failed write. */
	name = ctl_output_path(path, dir, sizeof(dir), err, sizeof(err));
	if (!name || ctl_write_output(dir, name, &iov, 1, false, err, sizeof(err)) < 0) {
		ctl_errorf("plot", "%s", err);
		return MN_EX_FAILURE;
	}
	return MN_EX_OK;
}

static int draw_page(const struct mn_report_input *in, const char *path)
{
	char *script = NULL, *svg = NULL, *html = NULL, err[MN_ERRLEN];
	size_t len, svglen, htmllen;
	int ex = MN_EX_FAILURE;

	if (mn_report_svg_script(in, &script, &len, err, sizeof(err)) < 0 ||
	    mn_gnuplot_run(script, len, MN_GNUPLOT_TIMEOUT_MS, &svg, &svglen, err, sizeof(err)) <
	        0 ||
	    mn_report_html(in, svg, svglen, &html, &htmllen, err, sizeof(err)) < 0) {
		ctl_errorf("plot", "%s", err);
		goto out;
	}
	ex = write_page(path, html, htmllen);
out:
	free(script);
	free(svg);
	free(html);
	return ex;
}

/*
 * --watch: the terminal charts, drawn again over the screen whenever a
 * metrics file grows (common/follow.h notices). The files are then read
 * again whole, so a resumed run's repeated steps resolve as in any plot.
 */
struct watch {
	struct plot *p;
	uv_loop_t loop;
	uv_timer_t settle;
	uv_signal_t sig_int, sig_term, sig_winch;
	struct mn_follow *follow[2];
	bool tty, stopping;
};

/*
 * Lines come in bursts (a whole file at the start, a resumed run): the first
 * line of a burst starts the timer and the rest ride on it, so a file that
 * grows without pause is still drawn, at most 1000 / WATCH_SETTLE_MS times a
 * second.
 */
#define WATCH_SETTLE_MS 250

/* Draws what the files hold now; a file that is malformed for now is said on the screen. */
static void watch_draw(uv_timer_t *t)
{
	struct watch *w = t->data;
	struct mn_report_input in;
	char *buf = NULL, err[MN_ERRLEN];
	const char *text = NULL;
	size_t len = 0;
	int cols, rows, rc;

	/* Asked for at every drawing, so a SIGWINCH only has to ask for one. */
	terminal_size(&cols, &rows);
	rc = plot_load(w->p, true, err, sizeof(err));
	if (rc == 0) {
		in = plot_input(w->p);
		/* The screen's last line says what this is. */
		rc = render_text(&in, cols, rows - 1, &buf, &text, &len, err, sizeof(err));
	}
	fputs(w->tty ? "\033[H\033[2J" : "\f", stdout); /* home and clear, or a new page */
	if (rc == 0)
		fwrite(text, 1, len, stdout);
	else {
		/* err may quote a file's name. */
		fputs("waiting: ", stdout);
		ctl_fputs_escaped(stdout, err);
		fputc('\n', stdout);
	}
	printf("mnistctl plot --watch: drawn again as lines arrive; Ctrl-C ends");
	fflush(stdout);
	free(buf);
}

static void watch_schedule(struct watch *w)
{
	if (!w->stopping && !uv_is_active((uv_handle_t *)&w->settle))
		uv_timer_start(&w->settle, watch_draw, WATCH_SETTLE_MS, 0);
}

static void on_watch_line(const char *line, size_t len, void *arg)
{
	(void)line;
	(void)len;
	watch_schedule(arg);
}

static void on_watch_reset(const char *why, void *arg)
{
	(void)why;
	watch_schedule(arg);
}

static void on_watch_winch(uv_signal_t *h, int signum)
{
	(void)signum;
	watch_schedule(h->data);
}

static void close_watch_handle(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

/* SIGINT, SIGTERM or a failed start: closes everything, so uv_run returns. */
static void on_watch_stop(uv_signal_t *h, int signum)
{
	struct watch *w = h->data;

	(void)signum;
	w->stopping = true;
	for (int i = 0; i < 2; i++) {
		mn_follow_close(w->follow[i]);
		w->follow[i] = NULL;
	}
	uv_walk(&w->loop, close_watch_handle, NULL);
}

/* Starts the timer, the signals and following the files. 0 or -errno with err. */
static int watch_start(struct watch *w, char *err, size_t errlen)
{
	const char *paths[2] = {w->p->train_path, w->p->eval_path};
	uv_signal_t *sigs[3] = {&w->sig_int, &w->sig_term, &w->sig_winch};
	const int signums[3] = {SIGINT, SIGTERM, SIGWINCH};
	int64_t poll = w->p->cfg.eval.poll_interval_ms;
	int rc;

	uv_timer_init(&w->loop, &w->settle);
	w->settle.data = w;
	for (int i = 0; i < 3; i++) {
		uv_signal_init(&w->loop, sigs[i]);
		sigs[i]->data = w;
		rc = uv_signal_start(sigs[i], i == 2 ? on_watch_winch : on_watch_stop, signums[i]);
		if (rc < 0) {
			mn_errf(err, errlen, "signal %d: %s", signums[i], uv_strerror(rc));
			return rc;
		}
	}
	for (int i = 0; i < 2; i++) {
		struct mn_follow_params fp = {
		    .path = paths[i],
		    .mode = w->p->cfg.eval.watch,
		    .poll_interval_ms = poll > 0 ? (uint64_t)poll : 1000,
		    .on_line = on_watch_line,
		    .on_reset = on_watch_reset,
		    .arg = w,
		};

		if (paths[i] &&
		    (rc = mn_follow_start(&w->loop, &fp, &w->follow[i], err, errlen)) < 0)
			return rc;
	}
	watch_schedule(w);
	return 0;
}

/*
 * Runs until SIGINT or SIGTERM (exit 0). A malformed file or no gnuplot is
 * an error at once, before the screen is taken; files that do not exist or
 * are empty yet are waited for.
 */
static int ctl_plot_watch(struct plot *p)
{
	struct watch w = {.p = p, .tty = isatty(STDOUT_FILENO)};
	char *out = NULL, err[MN_ERRLEN];
	size_t len;
	int rc;

	rc = plot_load(p, true, err, sizeof(err));
	if ((rc < 0 && rc != -ENODATA) ||
	    (rc = mn_gnuplot_run("", 0, MN_GNUPLOT_TIMEOUT_MS, &out, &len, err, sizeof(err))) < 0) {
		ctl_errorf("plot", "%s", err);
		return MN_EX_FAILURE;
	}
	free(out);
	rc = uv_loop_init(&w.loop);
	if (rc < 0) {
		ctl_errorf("plot", "%s", uv_strerror(rc));
		return MN_EX_FAILURE;
	}
	rc = watch_start(&w, err, sizeof(err));
	if (rc < 0) {
		ctl_errorf("plot", "%s", err);
		on_watch_stop(&w.sig_int, SIGINT);
	}
	uv_run(&w.loop, UV_RUN_DEFAULT);
	uv_loop_close(&w.loop);
	if (rc == 0)
		fputs("\n", stdout);
	return rc < 0 ? MN_EX_FAILURE : MN_EX_OK;
}

/* 0 to go on, -1 after --help, else the exit status of a usage error. */
static int parse_args(int argc, char **argv, struct plot_opts *o)
{
	static const struct option opts[] = {
	    {"train", required_argument, NULL, 't'},  {"eval", required_argument, NULL, 'e'},
	    {"best", required_argument, NULL, 'b'},   {"terminal", no_argument, NULL, 'T'},
	    {"output", required_argument, NULL, 'o'}, {"watch", no_argument, NULL, 'w'},
	    {"help", no_argument, NULL, 'h'},         {0},
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":t:e:b:To:wh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			o->train = optarg;
			break;
		case 'e':
			o->eval = optarg;
			break;
		case 'b':
			o->best = optarg;
			break;
		case 'T':
			o->terminal = true;
			break;
		case 'o':
			o->output = optarg;
			break;
		case 'w':
			o->watch = true;
			break;
		case 'h':
			fputs(plot_help, stdout);
			return -1;
		default:
			return ctl_option_error("plot", c, argv, opts);
		}
	}
	if (optind < argc)
		return ctl_usage_error("plot", "unexpected argument \"%s\"", argv[optind]);
	if (o->terminal && o->output)
		return ctl_usage_error("plot", "--terminal and -o exclude each other");
	if (o->watch && o->output)
		return ctl_usage_error("plot", "--watch draws on the terminal: it excludes -o");
	if (o->watch)
		o->terminal = true;
	if (!o->terminal && !o->output) {
		if (!isatty(STDOUT_FILENO))
			return ctl_usage_error("plot", "standard output is not a terminal: give "
			                               "--terminal or -o REPORT.html");
		o->terminal = true;
	}
	return 0;
}

int ctl_plot(int argc, char **argv, const struct ctl_globals *g)
{
	struct plot p = {0};
	struct mn_report_input in;
	char err[MN_ERRLEN];
	int ex;

	mn_metrics_file_init(&p.train, MN_METRICS_TRAIN);
	mn_metrics_file_init(&p.eval, MN_METRICS_EVAL);
	ex = parse_args(argc, argv, &p.o);
	if (ex != 0)
		return ex < 0 ? MN_EX_OK : ex;
	/* gnuplot dying early must be an error message, not a silent SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	ex = plot_setup(g, &p);
	if (ex != MN_EX_OK)
		return ex;
	/* A page written over a file it is drawn from would take that run's history. */
	if (p.o.output &&
	    (ctl_check_not_source(p.o.output, p.train_path, "the trainer's history", err,
	                          sizeof(err)) < 0 ||
	     ctl_check_not_source(p.o.output, p.eval_path, "the evaluator's metrics", err,
	                          sizeof(err)) < 0 ||
	     ctl_check_not_source(p.o.output, p.o.best, "best.json", err, sizeof(err)) < 0)) {
		ctl_errorf("plot", "%s", err);
		return MN_EX_FAILURE;
	}
	if (p.o.watch) {
		ex = ctl_plot_watch(&p);
		plot_free(&p);
		return ex;
	}
	if (plot_load(&p, false, err, sizeof(err)) < 0) {
		ctl_errorf("plot", "%s", err);
		plot_free(&p);
		return MN_EX_FAILURE;
	}
	in = plot_input(&p);
	ex = p.o.terminal ? draw_terminal(&in) : draw_page(&in, p.o.output);
	plot_free(&p);
	return ex;
}
