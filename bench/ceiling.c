/*
 * ceiling.c - the sgemm-only ceiling of one training step: times exactly the
 * cblas_sgemm calls a step of common/mlp.c makes for a network shape, batch
 * size and thread count, with nothing else in between, and prints steps per
 * second (the median of several timed rounds).
 *
 * For every layer l (in_l x out_l) a step makes the forward product
 * (batch x in_l by in_l x out_l), the weight-gradient product
 * (in_l x batch by batch x out_l) and, for every layer but the first, the
 * product that carries the gradient back (batch x out_l by out_l x in_l).
 *
 * usage: ceiling [--input N] [--hidden H[,H...]] [--output N] [--batch N]
 *                [--threads T] [--rounds R] [--seconds S]
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LAYERS 9

struct shape {
	int layers;
	int in[MAX_LAYERS], out[MAX_LAYERS];
	int batch;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void gemm(int trans_a, int trans_b, int m, int n, int k, const float *a, const float *b,
                 float *c)
{
	cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
	            trans_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, trans_a ? m : k, b,
	            trans_b ? k : n, 0.0f, c, n);
}

/* The BLAS calls of one step, in the order mlp.c makes them. */
static void step(const struct shape *s, float **w, float **g, float **act, float **delta,
                 const float *x)
{
	int n = s->batch;

	for (int l = 0; l < s->layers; l++)
		gemm(0, 0, n, s->out[l], s->in[l], l ? act[l - 1] : x, w[l], act[l]);
	for (int l = s->layers; l-- > 0;) {
		if (l > 0)
			gemm(0, 1, n, s->in[l], s->out[l], delta[l], w[l], delta[l - 1]);
		gemm(1, 0, s->in[l], s->out[l], n, l ? act[l - 1] : x, delta[l], g[l]);
	}
}

static float *filled(size_t count)
{
	float *p = malloc(count * sizeof(float));

	if (!p) {
		fprintf(stderr, "ceiling: out of memory\n");
		exit(1);
	}
	for (size_t i = 0; i < count; i++)
		p[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
	return p;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int parse_hidden(const char *arg, struct shape *s, int input, int output)
{
	char *copy = strdup(arg), *tok, *save = NULL;
	int h[MAX_LAYERS], nh = 0;

	if (!copy)
		return -1;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (nh >= MAX_LAYERS - 1 || atoi(tok) < 1) {
			free(copy);
			return -1;
		}
		h[nh++] = atoi(tok);
	}
	free(copy);
	s->layers = nh + 1;
	for (int l = 0; l < s->layers; l++) {
		s->in[l] = l ? h[l - 1] : input;
		s->out[l] = l < nh ? h[l] : output;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *hidden = "500";
	int input = 784, output = 10, threads = 0, rounds = 5;
	double seconds = 1.0, flops = 0;
	struct shape s = {.batch = 100};
	float *w[MAX_LAYERS], *g[MAX_LAYERS], *act[MAX_LAYERS], *delta[MAX_LAYERS], *x;
	double rate[64];

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--input"))
			input = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--hidden"))
			hidden = argv[i + 1];
		else if (!strcmp(argv[i], "--output"))
			output = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--batch"))
			s.batch = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--rounds"))
			rounds = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--seconds"))
			seconds = atof(argv[i + 1]);
		else
			break;
	}
	if (argc % 2 == 0 || input < 1 || output < 1 || s.batch < 1 || rounds < 1 || rounds > 64 ||
	    parse_hidden(hidden, &s, input, output) < 0) {
		fprintf(stderr, "usage: ceiling [--input N] [--hidden H[,H...]] [--output N] "
		                "[--batch N] [--threads T] [--rounds R<=64] [--seconds S]\n");
		return 2;
	}
	if (threads <= 0)
		threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	openblas_set_num_threads(threads);
	x = filled((size_t)s.batch * (size_t)input);
	for (int l = 0; l < s.layers; l++) {
		w[l] = filled((size_t)s.in[l] * (size_t)s.out[l]);
		g[l] = filled((size_t)s.in[l] * (size_t)s.out[l]);
		act[l] = filled((size_t)s.batch * (size_t)s.out[l]);
		delta[l] = filled((size_t)s.batch * (size_t)s.out[l]);
		flops += 2.0 * s.batch * s.in[l] * s.out[l] * (l ? 3 : 2);
	}
	/* Warm up the thread pool and the caches. */
	for (int i = 0; i < 50; i++)
		step(&s, w, g, act, delta, x);
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s(), t;
		long steps = 0;

		do {
			for (int i = 0; i < 20; i++)
				step(&s, w, g, act, delta, x);
			steps += 20;
			t = now_s();
		} while (t - t0 < seconds);
		rate[r] = (double)steps / (t - t0);
	}
	qsort(rate, (size_t)rounds, sizeof(rate[0]), cmp_double);
	printf("ceiling threads=%d batch=%d hidden=%s steps_per_sec=%.1f gflops=%.1f "
	       "min=%.1f max=%.1f\n",
	       threads, s.batch, hidden, rate[rounds / 2], rate[rounds / 2] * flops / 1e9, rate[0],
	       rate[rounds - 1]);
	return 0;
}
