/*
 * report.h - a run's curves, drawn by gnuplot: the scripts that draw them
 * (as text for a terminal, as SVG for a page) and the self-contained HTML
 * page around the SVG charts. mnistctl plot and the evaluator's
 * eval.report_html both build their output here; gnuplot.h runs the script.
 *
 * The page needs nothing but itself: the charts are inline SVG, the style
 * is inline, and a Content-Security-Policy forbids every fetch. Everything
 * that comes from files (paths, checkpoint names, the configuration) is
 * HTML-escaped; gnuplot only ever sees numbers and our own titles.
 *
 * Page structure (tests and scripts rely on it): a table id="summary" whose
 * cells have ids summary-steps, summary-best-accuracy, summary-best-step,
 * summary-best-checkpoint, summary-latest-accuracy, summary-latest-step,
 * summary-steps-per-sec and summary-elapsed (data-seconds holds the
 * number); one <figure id="chart-NAME" data-points="N"> per chart, NAME one
 * of validation-accuracy, validation-loss, training-loss, learning-rate,
 * holding gnuplot's <svg> with one marker per point drawn (N of them);
 * <pre id="config">.
 *
 * Charts are of bounded size whatever the length of the run: a curve of up
 * to MN_REPORT_CHART_POINTS lines is drawn point for point; a longer one is
 * cut into MN_REPORT_CHART_POINTS / 5 buckets of equal step range, each
 * drawn as its first, lowest, highest and last value (and a gap where it
 * has a missing one), so spikes and the ends stay where they were. The
 * terminal charts do the same with one bucket per character column. A
 * curve with no finite value at all (a diverged run) is an empty chart
 * that says so.
 */
#ifndef MN_REPORT_H
#define MN_REPORT_H

#include <stddef.h>

#include "config.h"
#include "metrics.h"

/* The most points a page's chart draws (see above). */
#define MN_REPORT_CHART_POINTS 2000

/* The charts of a page. */
#define MN_REPORT_CHARTS 4

/* What a page or a chart is made of. NULL or empty series are left out. */
struct mn_report_input {
	const struct mn_metrics_series *train; /* train.metrics_file */
	const struct mn_metrics_series *eval;  /* eval.metrics_file */
	const struct mn_metrics_best *best;    /* best.json's first entry, or NULL */
	const char *train_path, *eval_path;    /* shown on the page (may be NULL) */
	const struct mn_config *config;        /* shown on the page (may be NULL) */
	int refresh_seconds;                   /* > 0: the page reloads itself this often */
	/*
	 * When not NULL, MN_REPORT_CHARTS counts: mn_report_svg_script() stores
	 * the markers of each chart it draws, and mn_report_html() takes them
	 * from there instead of reducing every series a second time (the page
	 * builds the script on a worker and the HTML on its loop).
	 */
	size_t *chart_points;
};

/*
 * The gnuplot script for a terminal: training loss and validation accuracy
 * against step, stacked, as text in cols x rows characters. Returns 0 with
 * a malloc'd script in *script (*len bytes), -ENOMEM, or -ENODATA when
 * both series are empty.
 */
int mn_report_text_script(const struct mn_report_input *in, int cols, int rows, char **script,
                          size_t *len, char *err, size_t errlen);

/* The gnuplot script that writes one SVG chart after another on its output. */
int mn_report_svg_script(const struct mn_report_input *in, char **script, size_t *len, char *err,
                         size_t errlen);

/*
 * The page, from what gnuplot printed for mn_report_svg_script() (svg,
 * svg_len bytes). -EPROTO if that output does not hold the expected charts.
 */
int mn_report_html(const struct mn_report_input *in, const char *svg, size_t svg_len, char **html,
                   size_t *len, char *err, size_t errlen);

#endif
