/* test_report.c - gnuplot scripts and the HTML page around gnuplot's SVG. */
#include "report.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gnuplot.h"
#include "mn_test.h"
#include "util.h"

static const char train_text[] =
    "{\"step\":10,\"loss\":2.5,\"learning_rate\":0.5,\"steps_per_sec\":100,"
    "\"time\":\"2026-11-29T10:00:00.000Z\"}\n"
    "{\"step\":20,\"loss\":null,\"learning_rate\":0.25,\"steps_per_sec\":100,"
    "\"time\":\"2026-11-29T10:00:05.000Z\"}\n"
    "{\"step\":30,\"loss\":1.5,\"learning_rate\":0.125,\"steps_per_sec\":98.5,"
    "\"time\":\"2026-11-29T10:01:05.000Z\"}\n";
static const char eval_text[] =
    "{\"step\":20,\"accuracy\":0.5,\"loss\":1,\"checkpoint\":\"<m&20>\",\"time\":"
    "\"2026-11-29T10:00:06.000Z\"}\n"
    "{\"step\":30,\"accuracy\":0.75,\"loss\":0.5,\"checkpoint\":\"m-30\",\"time\":"
    "\"2026-11-29T10:00:07.000Z\"}\n";

static struct mn_metrics_series train, eval;

static void setup(void)
{
	char err[MN_ERRLEN];

	ck_assert_int_eq(mn_metrics_parse(MN_METRICS_TRAIN, train_text, strlen(train_text), "t",
	                                  &train, err, sizeof(err)),
	                 0);
	ck_assert_int_eq(mn_metrics_parse(MN_METRICS_EVAL, eval_text, strlen(eval_text), "e", &eval,
	                                  err, sizeof(err)),
	                 0);
}

static void teardown(void)
{
	mn_metrics_series_free(&train);
	mn_metrics_series_free(&eval);
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

START_TEST(text_script_sized_to_the_terminal)
{
	struct mn_report_input in = {.train = &train, .eval = &eval};
	char *script, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_report_text_script(&in, 100, 30, &script, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(strlen(script), len);
	ck_assert_ptr_nonnull(strstr(script, "set terminal dumb size 100,30\n"));
	ck_assert_ptr_nonnull(strstr(script, "set multiplot layout 2,1\n"));
	ck_assert_ptr_nonnull(
	    strstr(script, "$training_loss << EOD\n10 2.5\n20 NaN\n30 1.5\nEOD\n"));
	ck_assert_ptr_nonnull(
	    strstr(script, "$validation_accuracy << EOD\n20 0.5\n30 0.75\nEOD\n"));
	free(script);
	/* Only what there is; nothing at all is an error. */
	in.eval = NULL;
	ck_assert_int_eq(mn_report_text_script(&in, 100, 30, &script, &len, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(script, "set multiplot layout 1,1\n"));
	ck_assert_ptr_null(strstr(script, "$validation"));
	free(script);
	in.train = NULL;
	ck_assert_int_eq(mn_report_text_script(&in, 100, 30, &script, &len, err, sizeof(err)),
	                 -ENODATA);
}
END_TEST

START_TEST(svg_script_has_a_chart_per_curve)
{
	struct mn_report_input in = {.train = &train, .eval = &eval};
	char *script, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_report_svg_script(&in, &script, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(count(script, "\nplot "), 4);
	ck_assert_uint_eq(count(script, "print \"@@mnistd-chart@@\""), 4);
	/* The best evaluation is marked. */
	ck_assert_ptr_nonnull(strstr(script, "set arrow 1 from 30, graph 0 to 30, graph 1"));
	free(script);
}
END_TEST

/* What gnuplot prints for n charts. */
static char *fake_svg(int n)
{
	static const char one[] = "<?xml version=\"1.0\"?>\n<svg viewBox=\"0 0 9 9\"><use/></svg>\n"
	                          "@@mnistd-chart@@\n";
	char *s = calloc((size_t)n + 1, sizeof(one));

	ck_assert_ptr_nonnull(s);
	for (int i = 0; i < n; i++)
		strcat(s, one);
	return s;
}

START_TEST(page_escapes_and_holds_the_charts)
{
	struct mn_config cfg;
	struct mn_metrics_best best = {.step = 20, .accuracy = 0.5, .file = "b\"est"};
	struct mn_report_input in = {.train = &train,
	                             .eval = &eval,
	                             .best = &best,
	                             .train_path = "/tmp/a<b>&'c'.jsonl",
	                             .eval_path = "e.jsonl",
	                             .config = &cfg,
	                             .refresh_seconds = 15};
	char *svg = fake_svg(4), *html, err[MN_ERRLEN];
	size_t len;

	mn_config_defaults(&cfg);
	snprintf(cfg.log.file, sizeof(cfg.log.file), "</pre><script>x</script>");
	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &html, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(strlen(html), len);
	ck_assert_ptr_nonnull(
	    strstr(html, "<code>/tmp/a&lt;b&gt;&amp;&#39;c&#39;.jsonl</code> (3 lines)"));
	ck_assert_ptr_nonnull(strstr(html, "&lt;/pre&gt;&lt;script&gt;x&lt;/script&gt;"));
	ck_assert_ptr_null(strstr(html, "<script"));
	ck_assert_ptr_nonnull(strstr(html, "<meta http-equiv=\"refresh\" content=\"15\">"));
	ck_assert_ptr_nonnull(strstr(html, "Content-Security-Policy"));
	ck_assert_uint_eq(count(html, "<figure id=\"chart-"), 4);
	ck_assert_uint_eq(count(html, "<svg"), 4);
	ck_assert_ptr_null(strstr(html, "<?xml"));
	ck_assert_ptr_null(strstr(html, "@@mnistd-chart@@"));
	/* A null loss is no point. */
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-training-loss\" data-points=\"2\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-learning-rate\" data-points=\"3\">"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-steps\">30</td>"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-best-accuracy\">0.5</td>"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-best-checkpoint\">b&quot;est</td>"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-latest-accuracy\">0.75</td>"));
	ck_assert_ptr_nonnull(strstr(html, "<td id=\"summary-steps-per-sec\">98.5</td>"));
	ck_assert_ptr_nonnull(strstr(html, "data-seconds=\"65.000\">0h 01m 05s</td>"));
	free(html);
	/* Lines left out as never finished are owned up to. */
	train.cut = 2;
	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &html, &len, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(html, ".jsonl</code> (3 lines, 2 cut off and left out)"));
	free(html);
	free(svg);
}
END_TEST

/*
 * A path is bytes: one that is not UTF-8, or holds control characters,
 * still gives a page that is valid UTF-8 HTML, each bad byte shown as
 * U+FFFD.
 */
START_TEST(page_text_is_always_utf8)
{
	struct mn_report_input in = {.train = &train,
	                             .eval = &eval,
	                             .train_path =
	                                 "/tmp/\xff\x01\x1b[31m\xc3\xa9\xe2\x82<b>.jsonl"};
	char *svg = fake_svg(4), *html, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &html, &len, err, sizeof(err)), 0);
	ck_assert_msg(strstr(html, "<code>/tmp/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd[31m\xc3\xa9"
	                           "\xef\xbf\xbd&lt;b&gt;.jsonl</code>"),
	              "%s", html);
	free(html);
	free(svg);
}
END_TEST

START_TEST(page_rejects_missing_charts)
{
	struct mn_report_input in = {.train = &train, .eval = &eval};
	char *svg = fake_svg(3), *html = NULL, err[MN_ERRLEN];
	size_t len;

	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &html, &len, err, sizeof(err)),
	                 -EPROTO);
	ck_assert_ptr_nonnull(strstr(err, "learning-rate"));
	ck_assert_ptr_null(html);
	free(svg);
	/* With only the evaluations, two charts are all there is to find. */
	svg = fake_svg(2);
	in.train = NULL;
	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &html, &len, err, sizeof(err)), 0);
	ck_assert_uint_eq(count(html, "<figure"), 2);
	ck_assert_ptr_nonnull(strstr(html, "(not available)"));
	ck_assert_ptr_null(strstr(html, "http-equiv=\"refresh\""));
	free(html);
	free(svg);
}
END_TEST

/* A long run: n lines of a noisy, falling loss, with a spike at step 10 * spike. */
static void long_series(struct mn_metrics_series *s, size_t n, size_t spike, bool eval_kind)
{
	s->points = calloc(n, sizeof(*s->points));
	ck_assert_ptr_nonnull(s->points);
	s->n = s->lines = n;
	for (size_t i = 0; i < n; i++) {
		struct mn_metrics_point *p = &s->points[i];

		p->step = (int64_t)(i + 1) * 10;
		p->time_ms = 1800000000000 + (int64_t)i * 1000;
		p->loss = 2.0 / (1.0 + (double)i / 1000.0) + (double)(i % 7) / 100.0;
		if (i == spike)
			p->loss = 50.0;
		if (i % 1000 == 999)
			p->loss = NAN;
		p->learning_rate = eval_kind ? NAN : 0.5;
		p->steps_per_sec = eval_kind ? NAN : 100;
		p->accuracy = eval_kind ? 0.5 + (double)i / (4.0 * (double)n) : NAN;
		if (eval_kind) {
			/* The series owns its points' names (metrics.h). */
			p->checkpoint = malloc(32);
			ck_assert_ptr_nonnull(p->checkpoint);
			snprintf(p->checkpoint, 32, "m-%zu", i);
		}
	}
}

/* The lines of the data block named name in script: "step value" each. */
static size_t block_lines(const char *script, const char *name, double *max, int64_t *max_step)
{
	char head[64];
	const char *p;
	size_t n = 0;

	snprintf(head, sizeof(head), "%s << EOD\n", name);
	p = strstr(script, head);
	ck_assert_msg(p, "no block %s", name);
	*max = -1;
	for (p += strlen(head); strncmp(p, "EOD\n", 4) != 0; p = strchr(p, '\n') + 1) {
		long long step;
		double v;

		ck_assert_int_eq(sscanf(p, "%lld %lf", &step, &v), 2);
		if (v > *max) {
			*max = v;
			*max_step = step;
		}
		n++;
	}
	return n;
}

/*
 * A run of hundreds of thousands of lines gives charts of a bounded number
 * of points, and keeps what matters: the spike, the first and the last step.
 */
START_TEST(long_runs_give_bounded_charts)
{
	struct mn_metrics_series t = {0}, e = {0};
	struct mn_report_input in = {.train = &t, .eval = &e};
	char *script, err[MN_ERRLEN];
	size_t len, n;
	int64_t at = 0;
	double max;

	long_series(&t, 300000, 123457, false);
	long_series(&e, 30000, 20000, true);
	ck_assert_int_eq(mn_report_svg_script(&in, &script, &len, err, sizeof(err)), 0);
	ck_assert_uint_lt(len, 400000);
	n = block_lines(script, "$training_loss", &max, &at);
	ck_assert_uint_le(n, MN_REPORT_CHART_POINTS);
	ck_assert_uint_ge(n, MN_REPORT_CHART_POINTS / 5);
	ck_assert_double_eq(max, 50.0);
	ck_assert_int_eq(at, 1234580);
	ck_assert_ptr_nonnull(strstr(script, "$training_loss << EOD\n10 "));
	ck_assert_ptr_nonnull(strstr(script, "\n3000000 "));
	n = block_lines(script, "$validation_accuracy", &max, &at);
	ck_assert_uint_le(n, MN_REPORT_CHART_POINTS);
	ck_assert_int_eq(at, 300000);
	free(script);
	ck_assert_int_eq(mn_report_text_script(&in, 80, 24, &script, &len, err, sizeof(err)), 0);
	ck_assert_uint_lt(len, 100000);
	ck_assert_uint_le(block_lines(script, "$training_loss", &max, &at), 5 * 80);
	ck_assert_double_eq(max, 50.0);
	free(script);
	mn_metrics_series_free(&t);
	mn_metrics_series_free(&e);
}
END_TEST

/*
 * gnuplot itself draws such a run quickly into a page of bounded size,
 * with one marker per point it was given.
 */
START_TEST(long_runs_give_a_bounded_page)
{
	struct mn_metrics_series t = {0}, e = {0};
	struct mn_report_input in = {.train = &t, .eval = &e};
	char *script, *svg, *html, err[MN_ERRLEN];
	size_t len, svglen, hlen;
	uint64_t t0;

	long_series(&t, 300000, 5, false);
	long_series(&e, 30000, 5, true);
	ck_assert_int_eq(mn_report_svg_script(&in, &script, &len, err, sizeof(err)), 0);
	t0 = mn_monotonic_ns();
	ck_assert_msg(mn_gnuplot_run(script, len, MN_GNUPLOT_TIMEOUT_MS, &svg, &svglen, err,
	                             sizeof(err)) == 0,
	              "%s", err);
	ck_assert_uint_lt(mn_monotonic_ns() - t0, 20ull * 1000000000);
	ck_assert_int_eq(mn_report_html(&in, svg, svglen, &html, &hlen, err, sizeof(err)), 0);
	ck_assert_uint_lt(hlen, 4u << 20);
	free(script);
	free(svg);
	free(html);
	mn_metrics_series_free(&t);
	mn_metrics_series_free(&e);
}
END_TEST

/*
 * The page takes each chart's marker count from the script when given room
 * for it (the evaluator makes the script on a worker and the page on its
 * loop), and it is the count the page finds by itself.
 */
START_TEST(page_takes_the_scripts_marker_counts)
{
	struct mn_metrics_series t = {0}, e = {0};
	size_t counted[MN_REPORT_CHARTS] = {0};
	struct mn_report_input in = {.train = &t, .eval = &e}, given = in;
	const char *chart = "<svg x='1'></svg>\n@@mnistd-chart@@\n";
	char *script, *alone, *with, err[MN_ERRLEN], svg[256] = "";
	size_t len, alen, wlen;

	long_series(&t, 300000, 7, false);
	long_series(&e, 3000, 5, true);
	given.chart_points = counted;
	ck_assert_int_eq(mn_report_svg_script(&given, &script, &len, err, sizeof(err)), 0);
	free(script);
	for (size_t i = 0; i < MN_REPORT_CHARTS; i++) {
		ck_assert_uint_gt(counted[i], 0);
		ck_assert_uint_le(counted[i], MN_REPORT_CHART_POINTS);
		strcat(svg, chart);
	}
	ck_assert_int_eq(mn_report_html(&in, svg, strlen(svg), &alone, &alen, err, sizeof(err)), 0);
	ck_assert_int_eq(mn_report_html(&given, svg, strlen(svg), &with, &wlen, err, sizeof(err)),
	                 0);
	/* The same figures, from the first on (the head has the time it was made). */
	ck_assert_ptr_nonnull(strstr(alone, "<figure"));
	ck_assert_str_eq(strstr(alone, "<figure"), strstr(with, "<figure"));
	for (size_t i = 0; i < MN_REPORT_CHARTS; i++) {
		char want[48];

		snprintf(want, sizeof(want), "data-points=\"%zu\"", counted[i]);
		ck_assert_ptr_nonnull(strstr(with, want));
	}
	free(alone);
	free(with);
	mn_metrics_series_free(&t);
	mn_metrics_series_free(&e);
}
END_TEST

/*
 * A diverged run, whose every loss is null, still gets its page and its
 * terminal charts: the chart says it has no finite values instead of
 * gnuplot failing on "all points y value undefined".
 */
START_TEST(a_curve_without_a_finite_value_is_drawn_empty)
{
	static const char nan_text[] =
	    "{\"step\":10,\"loss\":null,\"learning_rate\":null,\"steps_per_sec\":1,"
	    "\"time\":\"2026-11-29T10:00:00.000Z\"}\n"
	    "{\"step\":20,\"loss\":null,\"learning_rate\":null,\"steps_per_sec\":1,"
	    "\"time\":\"2026-11-29T10:00:05.000Z\"}\n";
	struct mn_metrics_series t = {0};
	struct mn_report_input in = {.train = &t, .eval = &eval};
	char *script, *out, *html, err[MN_ERRLEN];
	size_t len, outlen, hlen;

	ck_assert_int_eq(mn_metrics_parse(MN_METRICS_TRAIN, nan_text, strlen(nan_text), "t", &t,
	                                  err, sizeof(err)),
	                 0);
	ck_assert_int_eq(mn_report_text_script(&in, 80, 24, &script, &len, err, sizeof(err)), 0);
	ck_assert_msg(mn_gnuplot_run(script, len, MN_GNUPLOT_TIMEOUT_MS, &out, &outlen, err,
	                             sizeof(err)) == 0,
	              "%s", err);
	ck_assert_ptr_nonnull(strstr(out, "no finite values"));
	free(out);
	free(script);
	ck_assert_int_eq(mn_report_svg_script(&in, &script, &len, err, sizeof(err)), 0);
	ck_assert_msg(mn_gnuplot_run(script, len, MN_GNUPLOT_TIMEOUT_MS, &out, &outlen, err,
	                             sizeof(err)) == 0,
	              "%s", err);
	ck_assert_int_eq(mn_report_html(&in, out, outlen, &html, &hlen, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-training-loss\" data-points=\"0\">"));
	ck_assert_ptr_nonnull(
	    strstr(html, "<figure id=\"chart-validation-accuracy\" data-points=\"2\">"));
	free(html);
	free(out);
	free(script);
	mn_metrics_series_free(&t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("report");

	MN_TEST_ADD(mn_test_tcase(s, "report", setup, teardown), text_script_sized_to_the_terminal,
	            svg_script_has_a_chart_per_curve, page_escapes_and_holds_the_charts,
	            page_rejects_missing_charts, page_text_is_always_utf8,
	            long_runs_give_bounded_charts, long_runs_give_a_bounded_page,
	            page_takes_the_scripts_marker_counts,
	            a_curve_without_a_finite_value_is_drawn_empty);
	return mn_test_run(s);
}
