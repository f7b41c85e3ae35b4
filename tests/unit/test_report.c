/* test_report.c - gnuplot scripts and the HTML page around gnuplot's SVG. */
#include "report.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	ck_assert_ptr_nonnull(strstr(script, "$train << EOD\n10 2.5 0.5 100\n20 NaN 0.25 100\n"));
	ck_assert_ptr_nonnull(strstr(script, "$eval << EOD\n20 0.5 1\n30 0.75 0.5\nEOD\n"));
	free(script);
	/* Only what there is; nothing at all is an error. */
	in.eval = NULL;
	ck_assert_int_eq(mn_report_text_script(&in, 100, 30, &script, &len, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(script, "set multiplot layout 1,1\n"));
	ck_assert_ptr_null(strstr(script, "$eval"));
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
	ck_assert_ptr_nonnull(strstr(html, "<code>/tmp/a&lt;b&gt;&amp;&#39;c&#39;.jsonl</code>"));
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

int main(void)
{
	Suite *s = suite_create("report");

	MN_TEST_ADD(mn_test_tcase(s, "report", setup, teardown), text_script_sized_to_the_terminal,
	            svg_script_has_a_chart_per_curve, page_escapes_and_holds_the_charts,
	            page_rejects_missing_charts);
	return mn_test_run(s);
}
