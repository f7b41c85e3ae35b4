/*
 * report.c - gnuplot scripts for a run's curves and the HTML page around them.
 */
#include "report.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "json.h"
#include "util.h"

/* What the SVG script prints between two charts, on a line of its own. */
#define CHART_MARK "@@mnistd-chart@@"

/* A growing string; after an allocation failure every append is a no-op. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) MN_PRINTF(2, 3);

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char small[512], *big = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->failed = true;
		return;
	}
	if ((size_t)n < sizeof(small)) {
		sb_put(b, small, (size_t)n);
		return;
	}
	big = malloc((size_t)n + 1);
	if (!big) {
		b->failed = true;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb_put(b, big, (size_t)n);
	free(big);
}

/*
 * The length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates), or 0 with *bad the bytes of its maximal ill-formed
 * prefix (at least 1), which one U+FFFD stands for.
 */
static size_t utf8_len(const unsigned char *s, size_t *bad)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else {
		*bad = 1;
		return 0;
	}
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	for (i = 1; i < n; i++, lo = 0x80, hi = 0xbf) {
		if (s[i] < lo || s[i] > hi) {
			*bad = i;
			return 0;
		}
	}
	return n;
}

/*
 * Text into HTML (element content and quoted attribute values alike). Paths
 * are bytes: what is not UTF-8, and control characters, become U+FFFD, so
 * the page stays valid UTF-8 without a character a parser must recover from.
 */
static void sb_escape(struct sbuf *b, const char *s)
{
	static const char replacement[] = "\xef\xbf\xbd";

	while (*s) {
		const unsigned char c = (unsigned char)*s;
		size_t bad = 0, n;

		switch (c) {
		case '&':
			sb_put(b, "&amp;", 5);
			break;
		case '<':
			sb_put(b, "&lt;", 4);
			break;
		case '>':
			sb_put(b, "&gt;", 4);
			break;
		case '"':
			sb_put(b, "&quot;", 6);
			break;
		case '\'':
			sb_put(b, "&#39;", 5);
			break;
		case '\t':
		case '\n':
			sb_put(b, s, 1);
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				sb_put(b, replacement, 3);
				break;
			}
			n = utf8_len((const unsigned char *)s, &bad);
			if (n) {
				sb_put(b, s, n);
				s += n;
			} else {
				sb_put(b, replacement, 3);
				s += bad;
			}
			continue;
		}
		s++;
	}
}

/* Hands the string out, or reports the allocation failure. */
static int sb_finish(struct sbuf *b, char **out, size_t *len, char *err, size_t errlen)
{
	if (b->failed || !b->p) {
		free(b->p);
		mn_errf(err, errlen, "report: out of memory");
		return -ENOMEM;
	}
	*out = b->p;
	*len = b->len;
	return 0;
}

static bool has(const struct mn_metrics_series *s)
{
	return s && s->n > 0;
}

/* A number as the data blocks and the page show it: exact, "NaN" for a missing one. */
static void fmt_num(double v, char buf[MN_JSON_NUMLEN])
{
	if (isnan(v) || !isfinite(v))
		snprintf(buf, MN_JSON_NUMLEN, "NaN");
	else
		mn_json_format_double(v, -1, buf, MN_JSON_NUMLEN);
}

static double accuracy_of(const struct mn_metrics_point *p)
{
	return p->accuracy;
}

static double loss_of(const struct mn_metrics_point *p)
{
	return p->loss;
}

static double learning_rate_of(const struct mn_metrics_point *p)
{
	return p->learning_rate;
}

/* The charts of a page, in page order. */
static const struct chart {
	const char *id, *title, *ylabel;
	const char *block; /* its data block, "$" + id with '_' for '-' */
	bool eval;         /* from the evaluations, else the trainer's history */
	double (*value)(const struct mn_metrics_point *p);
	bool best; /* marks the best checkpoint */
} charts[] = {
#define CHART_VALIDATION_ACCURACY 0
#define CHART_TRAINING_LOSS       2
    {"validation-accuracy", "Validation accuracy", "accuracy", "$validation_accuracy", true,
     accuracy_of, true},
    {"validation-loss", "Validation loss", "loss", "$validation_loss", true, loss_of, false},
    {"training-loss", "Training loss (mean since the previous line)", "loss", "$training_loss",
     false, loss_of, false},
    {"learning-rate", "Learning rate", "learning rate", "$learning_rate", false, learning_rate_of,
     false},
};

#define NCHARTS (sizeof(charts) / sizeof(charts[0]))
_Static_assert(NCHARTS == MN_REPORT_CHARTS, "report.h counts the charts");

static const struct mn_metrics_series *chart_series(const struct chart *c,
                                                    const struct mn_report_input *in)
{
	return c->eval ? in->eval : in->train;
}

/* Appends index i to a bucket's picks unless it is there already. */
static void pick(size_t *picks, size_t *n, size_t i)
{
	for (size_t k = 0; k < *n; k++)
		if (picks[k] == i)
			return;
	picks[(*n)++] = i;
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Writes one bucket's points, [from, to) of s, to the block: all of them
 * when reduce is false, else its first, lowest, highest and last number
 * and its first missing value (which breaks the line there), in step
 * order. Returns the numbers written.
 */
static size_t bucket_points(struct sbuf *b, const struct chart *c,
                            const struct mn_metrics_series *s, size_t from, size_t to, bool reduce)
{
	size_t picks[5], n = 0, first = SIZE_MAX, last = SIZE_MAX, lo = SIZE_MAX, hi = SIZE_MAX;
	size_t gap = SIZE_MAX, numbers = 0;
	char v[MN_JSON_NUMLEN];

	if (!reduce) {
		for (size_t i = from; i < to; i++) {
			double y = c->value(&s->points[i]);

			fmt_num(y, v);
			sb_printf(b, "%" PRId64 " %s\n", s->points[i].step, v);
			numbers += isfinite(y) ? 1 : 0;
		}
		return numbers;
	}
	for (size_t i = from; i < to; i++) {
		double y = c->value(&s->points[i]);

		if (!isfinite(y)) {
			if (gap == SIZE_MAX)
				gap = i;
			continue;
		}
		if (first == SIZE_MAX)
			first = i;
		last = i;
		if (lo == SIZE_MAX || y < c->value(&s->points[lo]))
			lo = i;
		if (hi == SIZE_MAX || y > c->value(&s->points[hi]))
			hi = i;
	}
	if (first != SIZE_MAX) {
		pick(picks, &n, first);
		pick(picks, &n, lo);
		pick(picks, &n, hi);
		pick(picks, &n, last);
	}
	if (gap != SIZE_MAX)
		pick(picks, &n, gap);
	qsort(picks, n, sizeof(picks[0]), cmp_size);
	for (size_t k = 0; k < n; k++) {
		double y = c->value(&s->points[picks[k]]);

		fmt_num(y, v);
		sb_printf(b, "%" PRId64 " %s\n", s->points[picks[k]].step, v);
		numbers += isfinite(y) ? 1 : 0;
	}
	return numbers;
}

/*
 * The chart's data block, "step value" per line. A series longer than
 * 5 * buckets lines is reduced per bucket of equal step range (M4, as
 * time-series plotters do it): what is drawn is then the same shape at
 * the resolution of the chart, at a bounded cost whatever the run's
 * length. Returns the numbers written (the markers gnuplot draws).
 */
static size_t chart_block(struct sbuf *b, const struct chart *c, const struct mn_report_input *in,
                          size_t buckets)
{
	const struct mn_metrics_series *s = chart_series(c, in);
	size_t numbers = 0, from = 0;
	bool reduce = s->n > 5 * buckets;
	int64_t s0 = s->points[0].step, span = s->points[s->n - 1].step - s0 + 1;

	sb_printf(b, "%s << EOD\n", c->block);
	if (!reduce) {
		numbers = bucket_points(b, c, s, 0, s->n, false);
	} else {
		while (from < s->n) {
			/* Steps are increasing, so a bucket is a run of lines. */
			size_t k = (size_t)((double)(s->points[from].step - s0) * (double)buckets /
			                    (double)span),
			       to = from + 1;

			while (to < s->n && (size_t)((double)(s->points[to].step - s0) *
			                             (double)buckets / (double)span) == k)
				to++;
			numbers += bucket_points(b, c, s, from, to, true);
			from = to;
		}
	}
	sb_printf(b, "EOD\n");
	return numbers;
}

/*
 * The plot command for a chart of the given numbers; a chart with none
 * (a diverged run's losses are all null) gets a fixed y range and says so,
 * where gnuplot would fail with "all points y value undefined".
 */
static void plot_chart(struct sbuf *b, const struct chart *c, size_t numbers, const char *with)
{
	if (numbers == 0)
		sb_printf(b, "set yrange [0:1]\n"
		             "set label 2 \"no finite values\" at graph 0.5, graph 0.5 center\n");
	sb_printf(b, "plot %s using 1:2 %s\n", c->block, with);
	if (numbers == 0)
		sb_printf(b, "set autoscale y\nunset label 2\n");
}

int mn_report_text_script(const struct mn_report_input *in, int cols, int rows, char **script,
                          size_t *len, char *err, size_t errlen)
{
	struct sbuf b = {0};
	int plots = has(in->train) + has(in->eval);
	size_t train_numbers = 0, eval_numbers = 0;

	if (!plots) {
		mn_errf(err, errlen, "no metrics to plot");
		return -ENODATA;
	}
	cols = cols < 40 ? 40 : cols;
	/* At most a handful of points per character column: more would not show. */
	if (has(in->train))
		train_numbers = chart_block(&b, &charts[CHART_TRAINING_LOSS], in, (size_t)cols);
	if (has(in->eval))
		eval_numbers =
		    chart_block(&b, &charts[CHART_VALIDATION_ACCURACY], in, (size_t)cols);
	sb_printf(&b,
	          "set terminal dumb size %d,%d\n"
	          "unset key\n"
	          "set xlabel \"step\"\n"
	          "set multiplot layout %d,1\n",
	          cols, rows < 10 * plots ? 10 * plots : rows, plots);
	if (has(in->train)) {
		sb_printf(&b, "set title \"training loss\"\n");
		plot_chart(&b, &charts[CHART_TRAINING_LOSS], train_numbers, "with lines");
	}
	if (has(in->eval)) {
		sb_printf(&b, "set title \"validation accuracy\"\n");
		plot_chart(&b, &charts[CHART_VALIDATION_ACCURACY], eval_numbers,
		           "with linespoints pt \"*\"");
	}
	sb_printf(&b, "unset multiplot\n");
	return sb_finish(&b, script, len, err, errlen);
}

int mn_report_svg_script(const struct mn_report_input *in, char **script, size_t *len, char *err,
                         size_t errlen)
{
	struct mn_metrics_summary sum;
	struct sbuf b = {0};
	size_t numbers[NCHARTS] = {0};

	if (!has(in->train) && !has(in->eval)) {
		mn_errf(err, errlen, "no metrics to plot");
		return -ENODATA;
	}
	mn_metrics_summarize(in->train, in->eval, in->best, &sum);
	for (size_t i = 0; i < NCHARTS; i++)
		if (has(chart_series(&charts[i], in)))
			numbers[i] = chart_block(&b, &charts[i], in, MN_REPORT_CHART_POINTS / 5);
	if (in->chart_points)
		memcpy(in->chart_points, numbers, sizeof(numbers));
	sb_printf(&b,
	          "set terminal svg size 720,300 dynamic font \"sans,11\" background \"#ffffff\"\n"
	          "set print \"-\"\n"
	          "unset key\n"
	          "set grid lc rgb \"#dddddd\"\n"
	          "set border lc rgb \"#555555\"\n"
	          "set xlabel \"step\"\n"
	          "set style line 1 lc rgb \"#1f77b4\" lw 1.5 pt 7 ps 0.5\n");
	for (size_t i = 0; i < NCHARTS; i++) {
		const struct chart *c = &charts[i];

		if (!has(chart_series(c, in)))
			continue;
		sb_printf(&b, "set title \"%s\"\nset ylabel \"%s\"\n", c->title, c->ylabel);
		if (c->best && sum.best_step >= 0) {
			/* The label goes on the side of the line with more room. */
			bool left = sum.best_step * 2 > in->eval->points[in->eval->n - 1].step;

			sb_printf(&b,
			          "set arrow 1 from %" PRId64 ", graph 0 to %" PRId64
			          ", graph 1 nohead lc rgb \"#d62728\" dt 2\n"
			          "set label 1 \"best: step %" PRId64 "\" at %" PRId64
			          ", graph 0.06 %s offset %s,0 tc rgb \"#d62728\"\n",
			          sum.best_step, sum.best_step, sum.best_step, sum.best_step,
			          left ? "right" : "left", left ? "-0.5" : "0.5");
		}
		plot_chart(&b, c, numbers[i], "with linespoints ls 1");
		sb_printf(&b, "unset arrow 1\nunset label 1\nprint \"" CHART_MARK "\"\n");
	}
	return sb_finish(&b, script, len, err, errlen);
}

static void summary_row(struct sbuf *b, const char *id, const char *label, const char *value)
{
	sb_printf(b, "<tr><th>%s</th><td id=\"summary-%s\">", label, id);
	sb_escape(b, value);
	sb_printf(b, "</td></tr>\n");
}

static void summary_table(struct sbuf *b, const struct mn_metrics_summary *s)
{
	char v[MN_JSON_NUMLEN + 64];
	double e = s->elapsed_s;

	summary_row(b, "steps", "steps",
	            s->steps >= 0 ? (snprintf(v, sizeof(v), "%" PRId64, s->steps), v) : "-");
	fmt_num(s->best_accuracy, v);
	summary_row(b, "best-accuracy", "best accuracy", s->best_step >= 0 ? v : "-");
	snprintf(v, sizeof(v), "%" PRId64, s->best_step);
	summary_row(b, "best-step", "best at step", s->best_step >= 0 ? v : "-");
	summary_row(b, "best-checkpoint", "best checkpoint",
	            s->best_checkpoint[0] ? s->best_checkpoint : "-");
	fmt_num(s->latest_accuracy, v);
	summary_row(b, "latest-accuracy", "latest accuracy", s->latest_step >= 0 ? v : "-");
	snprintf(v, sizeof(v), "%" PRId64, s->latest_step);
	summary_row(b, "latest-step", "latest evaluation at step", s->latest_step >= 0 ? v : "-");
	fmt_num(s->steps_per_sec, v);
	summary_row(b, "steps-per-sec", "steps/s", isfinite(s->steps_per_sec) ? v : "-");
	if (isfinite(e)) {
		long t = (long)e;

		snprintf(v, sizeof(v), "%ldh %02ldm %02lds", t / 3600, t / 60 % 60, t % 60);
		sb_printf(b,
		          "<tr><th>elapsed</th><td id=\"summary-elapsed\" "
		          "data-seconds=\"%.3f\">%s</td></tr>\n",
		          e, v);
	} else {
		summary_row(b, "elapsed", "elapsed", "-");
	}
}

/* The markers a page's chart has: the numbers in its data block. */
static size_t chart_points(const struct chart *c, const struct mn_report_input *in)
{
	struct sbuf scratch = {0};
	size_t n = chart_block(&scratch, c, in, MN_REPORT_CHART_POINTS / 5);

	free(scratch.p);
	return n;
}

/* The charts from gnuplot's output, each SVG in a figure. */
static int figures(struct sbuf *b, const struct mn_report_input *in, const char *svg, size_t len,
                   char *err, size_t errlen)
{
	const char *p = svg, *end = svg + len;

	for (size_t i = 0; i < NCHARTS; i++) {
		const struct chart *c = &charts[i];
		const char *mark, *start;

		if (!has(chart_series(c, in)))
			continue;
		mark = memmem(p, (size_t)(end - p), CHART_MARK "\n", strlen(CHART_MARK) + 1);
		start = mark ? memmem(p, (size_t)(mark - p), "<svg", 4) : NULL;
		if (!start) {
			mn_errf(err, errlen, "gnuplot's output does not hold the %s chart", c->id);
			return -EPROTO;
		}
		sb_printf(b, "<figure id=\"chart-%s\" data-points=\"%zu\">\n", c->id,
		          in->chart_points ? in->chart_points[i] : chart_points(c, in));
		sb_put(b, start, (size_t)(mark - start));
		sb_printf(b, "</figure>\n");
		p = mark + strlen(CHART_MARK) + 1;
	}
	return 0;
}

static void config_section(struct sbuf *b, const struct mn_config *cfg)
{
	char *compact = cfg ? mn_config_to_json(cfg) : NULL;
	cJSON *o = compact ? cJSON_Parse(compact) : NULL;
	char *pretty = o ? cJSON_Print(o) : NULL;

	sb_printf(b, "<h2>Configuration</h2>\n<pre id=\"config\">");
	sb_escape(b, pretty ? pretty : "(not available)");
	sb_printf(b, "</pre>\n");
	cJSON_free(pretty);
	cJSON_Delete(o);
	free(compact);
}

static const char *const style =
    "body{font-family:sans-serif;margin:1.5em auto;max-width:1500px;padding:0 1em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}"
    "table{border-collapse:collapse}th,td{padding:.25em .9em;border-bottom:1px solid #ddd;"
    "text-align:left}td{font-variant-numeric:tabular-nums}"
    ".charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}"
    "figure{margin:0;border:1px solid #ddd}figure svg{width:100%;height:auto;display:block}"
    "pre{background:#f6f6f6;padding:.8em;overflow:auto}.meta{color:#666}";

/* Lines a writer never finished are left out of the curves; the page says how many. */
static void cut_note(struct sbuf *b, const struct mn_metrics_series *s)
{
	if (s->cut)
		sb_printf(b, ", %zu cut off and left out", s->cut);
}

static void head(struct sbuf *b, const struct mn_report_input *in,
                 const struct mn_metrics_summary *s)
{
	char when[MN_TIMELEN];

	sb_printf(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
	             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
	             "style-src 'unsafe-inline'\">\n");
	if (in->refresh_seconds > 0)
		sb_printf(b, "<meta http-equiv=\"refresh\" content=\"%d\">\n", in->refresh_seconds);
	sb_printf(b,
	          "<title>mnistd run: step %" PRId64
	          "</title>\n<style>%s</style>\n</head>\n<body>\n"
	          "<h1>mnistd run</h1>\n<p class=\"meta\">",
	          s->steps, style);
	mn_time_rfc3339(when);
	sb_printf(b, "Generated %s from ", when);
	if (has(in->train)) {
		sb_printf(b, "<code>");
		sb_escape(b, in->train_path ? in->train_path : "train.metrics_file");
		sb_printf(b, "</code> (%zu lines", in->train->lines);
		cut_note(b, in->train);
		sb_printf(b, ")%s", has(in->eval) ? " and " : "");
	}
	if (has(in->eval)) {
		sb_printf(b, "<code>");
		sb_escape(b, in->eval_path ? in->eval_path : "eval.metrics_file");
		sb_printf(b, "</code> (%zu lines", in->eval->lines);
		cut_note(b, in->eval);
		sb_printf(b, ")");
	}
	sb_printf(b, ".%s</p>\n", in->refresh_seconds > 0 ? " The page reloads itself." : "");
}

int mn_report_html(const struct mn_report_input *in, const char *svg, size_t svg_len, char **html,
                   size_t *len, char *err, size_t errlen)
{
	struct mn_metrics_summary s;
	struct sbuf b = {0};
	int rc;

	mn_metrics_summarize(in->train, in->eval, in->best, &s);
	head(&b, in, &s);
	sb_printf(&b, "<h2>Summary</h2>\n<table id=\"summary\">\n");
	summary_table(&b, &s);
	sb_printf(&b, "</table>\n<h2>Curves</h2>\n<div class=\"charts\">\n");
	rc = figures(&b, in, svg, svg_len, err, errlen);
	if (rc < 0) {
		free(b.p);
		return rc;
	}
	sb_printf(&b, "</div>\n");
	if (!has(in->eval))
		sb_printf(&b,
		          "<p class=\"meta\">No evaluations (eval.metrics_file) to show.</p>\n");
	if (!has(in->train))
		sb_printf(
		    &b,
		    "<p class=\"meta\">No training history (train.metrics_file) to show.</p>\n");
	config_section(&b, in->config);
	sb_printf(&b, "</body>\n</html>\n");
	return sb_finish(&b, html, len, err, errlen);
}
