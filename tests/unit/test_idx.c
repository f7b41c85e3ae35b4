/* test_idx.c - unit tests for common/idx.c: IDX parsing, loading, splits, batches. */
#include "idx.h"
#include "util.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mn_test.h"

#define IMG_NAME "train-images-idx3-ubyte"
#define LAB_NAME "train-labels-idx1-ubyte"
#define REAL_DIR "/usr/share/datasets/fashion-mnist"
#define MEM_NAME "mem.idx"

static char tmpdir[PATH_MAX];
static char err[MN_ERRLEN];

struct blob {
	uint8_t *p;
	size_t len;
};

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	err[0] = '\0';
}

static void teardown(void)
{
	mn_test_rmtree(tmpdir);
}

/* A path inside the test's temporary directory (one of a few rotating buffers). */
static const char *tpath(const char *name)
{
	static char bufs[4][PATH_MAX + 256];
	static int next;
	char *b = bufs[next++ % 4];

	snprintf(b, sizeof(bufs[0]), "%s/%s", tmpdir, name);
	return b;
}

static uint8_t pixel_at(size_t i, size_t j)
{
	return (uint8_t)((i * 131u + j * 7u) & 0xffu);
}

static uint8_t label_at(size_t i)
{
	return (uint8_t)(i * 3u % 10u);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* An IDX file image: header for dims, then nelems bytes from elems (zeros if NULL). */
static struct blob make_raw(uint8_t type, uint8_t ndim, const uint32_t *dims, const uint8_t *elems,
                            size_t nelems)
{
	struct blob b;
	size_t hdr = 4 + 4 * (size_t)ndim;

	b.len = hdr + nelems;
	b.p = calloc(1, b.len + 1);
	ck_assert_ptr_nonnull(b.p);
	b.p[2] = type;
	b.p[3] = ndim;
	for (size_t i = 0; i < ndim; i++)
		put_be32(b.p + 4 + 4 * i, dims[i]);
	if (elems && nelems)
		memcpy(b.p + hdr, elems, nelems);
	return b;
}

static struct blob make_images(size_t count, size_t rows, size_t cols)
{
	uint32_t dims[3] = {(uint32_t)count, (uint32_t)rows, (uint32_t)cols};
	size_t dim = rows * cols;
	struct blob b = make_raw(0x08, 3, dims, NULL, count * dim);

	for (size_t i = 0; i < count; i++)
		for (size_t j = 0; j < dim; j++)
			b.p[16 + i * dim + j] = pixel_at(i, j);
	return b;
}

static struct blob make_labels(size_t count)
{
	uint32_t dims[1] = {(uint32_t)count};
	struct blob b = make_raw(0x08, 1, dims, NULL, count);

	for (size_t i = 0; i < count; i++)
		b.p[8 + i] = label_at(i);
	return b;
}

static void write_gz(const char *path, const void *data, size_t len)
{
	gzFile gz = gzopen(path, "wb");

	ck_assert_ptr_nonnull(gz);
	if (len)
		ck_assert_int_eq(gzwrite(gz, data, (unsigned)len), (int)len);
	ck_assert_int_eq(gzclose(gz), Z_OK);
}

static void write_file(const char *path, struct blob b, int gz)
{
	if (gz)
		write_gz(path, b.p, b.len);
	else
		mn_test_write_file(path, b.p, b.len);
}

static struct blob read_whole(const char *path)
{
	struct blob b;
	char *buf = NULL;
	size_t len = 0;

	ck_assert_int_eq(mn_read_file(path, 1 << 24, &buf, &len, err, sizeof(err)), 0);
	b.p = (uint8_t *)buf;
	b.len = len;
	return b;
}

/* Writes "<set>-images-idx3-ubyte[.gz]" and the matching labels into tmpdir. */
static void write_set(const char *set, size_t count, size_t rows, size_t cols, int gz_images,
                      int gz_labels)
{
	char name[128];
	struct blob img = make_images(count, rows, cols), lab = make_labels(count);

	snprintf(name, sizeof(name), "%s-images-idx3-ubyte%s", set, gz_images ? ".gz" : "");
	write_file(tpath(name), img, gz_images);
	snprintf(name, sizeof(name), "%s-labels-idx1-ubyte%s", set, gz_labels ? ".gz" : "");
	write_file(tpath(name), lab, gz_labels);
	free(img.p);
	free(lab.p);
}

/* Checks a loaded data set holds exactly the pattern make_images/make_labels wrote. */
static void check_pattern(const struct mn_dataset *ds, size_t count, size_t rows, size_t cols)
{
	struct mn_view all = mn_dataset_all(ds);
	uint8_t max = 0;

	ck_assert_uint_eq(mn_dataset_count(ds), count);
	ck_assert_uint_eq(mn_dataset_rows(ds), rows);
	ck_assert_uint_eq(mn_dataset_cols(ds), cols);
	ck_assert_uint_eq(all.count, count);
	ck_assert_uint_eq(all.dim, rows * cols);
	for (size_t i = 0; i < count; i++) {
		for (size_t j = 0; j < rows * cols; j++)
			ck_assert_uint_eq(all.images[i * all.dim + j], pixel_at(i, j));
		ck_assert_uint_eq(all.labels[i], label_at(i));
		if (label_at(i) > max)
			max = label_at(i);
	}
	ck_assert_uint_eq(mn_dataset_max_label(ds), max);
}

/* Loads tmpdir's train files and expects failure with code rc and msg in the message. */
static void expect_load_fail(const char *images, const char *labels, int rc, const char *msg)
{
	struct mn_dataset *ds = (struct mn_dataset *)&ds;

	err[0] = '\0';
	ck_assert_int_eq(mn_dataset_load(images, labels, &ds, err, sizeof(err)), rc);
	ck_assert_ptr_null(ds);
	if (msg)
		ck_assert_msg(strstr(err, msg), "message \"%s\" lacks \"%s\"", err, msg);
}

/* ---- loading valid files ---- */

START_TEST(test_load_plain_8x8)
{
	struct mn_dataset *ds = NULL;

	write_set("train", 10, 8, 8, 0, 0);
	ck_assert_int_eq(mn_dataset_load(tpath(IMG_NAME), tpath(LAB_NAME), &ds, err, sizeof(err)),
	                 0);
	ck_assert_ptr_nonnull(ds);
	check_pattern(ds, 10, 8, 8);
	ck_assert_uint_eq(mn_dataset_max_label(ds), 9);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_load_gzip_28x28)
{
	struct mn_dataset *ds = NULL;
	struct blob raw;

	write_set("train", 10, 28, 28, 1, 1);
	raw = read_whole(tpath(IMG_NAME ".gz"));
	/* Make sure the file really is compressed, so the gzip path is what is tested. */
	ck_assert_uint_ge(raw.len, 2);
	ck_assert_uint_eq(raw.p[0], 0x1f);
	ck_assert_uint_eq(raw.p[1], 0x8b);
	free(raw.p);

	ck_assert_int_eq(
	    mn_dataset_load(tpath(IMG_NAME ".gz"), tpath(LAB_NAME ".gz"), &ds, err, sizeof(err)),
	    0);
	check_pattern(ds, 10, 28, 28);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_load_rectangular)
{
	struct mn_dataset *ds = NULL;

	/* rows != cols catches swapped dimensions; 3 labels give max_label 6. */
	write_set("train", 3, 3, 5, 1, 0);
	ck_assert_int_eq(
	    mn_dataset_load(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), &ds, err, sizeof(err)), 0);
	check_pattern(ds, 3, 3, 5);
	ck_assert_uint_eq(mn_dataset_max_label(ds), 6);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_null_dataset)
{
	struct mn_view v;

	mn_dataset_free(NULL);
	ck_assert_uint_eq(mn_dataset_count(NULL), 0);
	v = mn_dataset_all(NULL);
	ck_assert_uint_eq(v.count, 0);
	ck_assert_ptr_null(v.images);
}
END_TEST

/* ---- batches: gather and range ---- */

/* Four 2x2 images with chosen pixels, labels 7 1 4 0. */
static struct mn_dataset *load_chosen(void)
{
	static const uint8_t px[16] = {0,  0,   0,   0, 255, 255, 255, 255,
	                               51, 102, 128, 1, 204, 153, 17,  254};
	static const uint8_t lb[4] = {7, 1, 4, 0};
	uint32_t idims[3] = {4, 2, 2}, ldims[1] = {4};
	struct blob img = make_raw(0x08, 3, idims, px, sizeof(px));
	struct blob lab = make_raw(0x08, 1, ldims, lb, sizeof(lb));
	struct mn_dataset *ds = NULL;

	write_file(tpath(IMG_NAME), img, 0);
	write_file(tpath(LAB_NAME), lab, 1);
	free(img.p);
	free(lab.p);
	ck_assert_int_eq(mn_dataset_load(tpath(IMG_NAME), tpath(LAB_NAME), &ds, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(mn_dataset_max_label(ds), 7);
	return ds;
}

START_TEST(test_gather_exact_values)
{
	struct mn_dataset *ds = load_chosen();
	struct mn_view all = mn_dataset_all(ds);
	const uint32_t idx[5] = {2, 0, 3, 1, 2};
	float x[5 * 4 + 1];
	uint8_t y[5 + 1];

	x[20] = -7.0f;
	y[5] = 99;
	mn_view_gather(&all, idx, 5, x, y);
	/* image 2 */
	ck_assert_float_eq(x[0], 0.2f);
	ck_assert_float_eq(x[1], 0.4f);
	ck_assert_float_eq(x[2], 128.0f / 255.0f);
	ck_assert_float_eq(x[3], 1.0f / 255.0f);
	/* image 0: 0 -> 0.0 */
	for (int j = 4; j < 8; j++)
		ck_assert_float_eq(x[j], 0.0f);
	/* image 3 */
	ck_assert_float_eq(x[8], 0.8f);
	ck_assert_float_eq(x[9], 0.6f);
	ck_assert_float_eq(x[10], 17.0f / 255.0f);
	ck_assert_float_eq(x[11], 254.0f / 255.0f);
	/* image 1: 255 -> exactly 1.0 */
	for (int j = 12; j < 16; j++)
		ck_assert_float_eq(x[j], 1.0f);
	for (int j = 16; j < 20; j++)
		ck_assert_float_eq(x[j], x[j - 16]);
	ck_assert_uint_eq(y[0], 4);
	ck_assert_uint_eq(y[1], 7);
	ck_assert_uint_eq(y[2], 0);
	ck_assert_uint_eq(y[3], 1);
	ck_assert_uint_eq(y[4], 4);
	/* Nothing written past n examples. */
	ck_assert_float_eq(x[20], -7.0f);
	ck_assert_uint_eq(y[5], 99);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_range_exact_values)
{
	struct mn_dataset *ds = load_chosen();
	struct mn_view all = mn_dataset_all(ds);
	float x[2 * 4 + 1];
	uint8_t y[3];

	x[8] = -7.0f;
	y[2] = 99;
	mn_view_range(&all, 1, 2, x, y);
	for (int j = 0; j < 4; j++)
		ck_assert_float_eq(x[j], 1.0f);
	ck_assert_float_eq(x[4], 0.2f);
	ck_assert_float_eq(x[5], 0.4f);
	ck_assert_float_eq(x[6], 128.0f / 255.0f);
	ck_assert_float_eq(x[7], 1.0f / 255.0f);
	ck_assert_uint_eq(y[0], 1);
	ck_assert_uint_eq(y[1], 4);
	ck_assert_float_eq(x[8], -7.0f);
	ck_assert_uint_eq(y[2], 99);
	/* n == 0 touches nothing. */
	mn_view_range(&all, 4, 0, NULL, NULL);
	/* Scaling the whole view once gives what a range gives, bit for bit. */
	{
		float *scaled, row[4];

		ck_assert_int_eq(mn_view_scale(&all, &scaled), 0);
		for (size_t i = 0; i < all.count; i++) {
			mn_view_range(&all, i, 1, row, y);
			ck_assert_mem_eq(scaled + i * 4, row, sizeof(row));
		}
		free(scaled);
	}
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_all_pixels_scale)
{
	/* One 16x16 image holding every byte value: p -> p / 255.0f for all p. */
	uint8_t px[256];
	uint32_t idims[3] = {1, 16, 16}, ldims[1] = {1};
	uint8_t lb = 3;
	struct blob img, lab;
	struct mn_dataset *ds = NULL;
	struct mn_view all;
	const uint32_t idx = 0;
	float x[256];
	uint8_t y;

	for (int p = 0; p < 256; p++)
		px[p] = (uint8_t)p;
	img = make_raw(0x08, 3, idims, px, sizeof(px));
	lab = make_raw(0x08, 1, ldims, &lb, 1);
	write_file(tpath(IMG_NAME), img, 1);
	write_file(tpath(LAB_NAME), lab, 0);
	free(img.p);
	free(lab.p);
	ck_assert_int_eq(mn_dataset_load(tpath(IMG_NAME), tpath(LAB_NAME), &ds, err, sizeof(err)),
	                 0);
	all = mn_dataset_all(ds);
	mn_view_gather(&all, &idx, 1, x, &y);
	for (int p = 0; p < 256; p++) {
		ck_assert_float_eq(x[p], (float)p / 255.0f);
		ck_assert(x[p] >= 0.0f && x[p] <= 1.0f);
	}
	ck_assert_float_eq(x[0], 0.0f);
	ck_assert_float_eq(x[255], 1.0f);
	ck_assert_uint_eq(y, 3);
	mn_dataset_free(ds);
}
END_TEST

/* ---- splits ---- */

START_TEST(test_split_sizes)
{
	struct mn_dataset *ds = NULL;
	struct mn_view all, train, val;

	write_set("train", 10, 8, 8, 0, 0);
	ck_assert_int_eq(mn_dataset_load(tpath(IMG_NAME), tpath(LAB_NAME), &ds, err, sizeof(err)),
	                 0);
	all = mn_dataset_all(ds);

	ck_assert_int_eq(mn_dataset_split(ds, 3, &train, &val, err, sizeof(err)), 0);
	ck_assert_uint_eq(val.count, 3);
	ck_assert_uint_eq(train.count, 7);
	ck_assert_uint_eq(val.dim, 64);
	ck_assert_uint_eq(train.dim, 64);
	/* Validation is the FIRST validation_size examples, train the rest. */
	ck_assert_ptr_eq(val.images, all.images);
	ck_assert_ptr_eq(val.labels, all.labels);
	ck_assert_ptr_eq(train.images, all.images + 3 * 64);
	ck_assert_ptr_eq(train.labels, all.labels + 3);
	ck_assert_uint_eq(train.images[0], pixel_at(3, 0));
	ck_assert_uint_eq(train.images[1], pixel_at(3, 1));
	ck_assert_uint_eq(train.labels[6], label_at(9));
	ck_assert_uint_eq(val.labels[2], label_at(2));

	ck_assert_int_eq(mn_dataset_split(ds, 0, &train, &val, err, sizeof(err)), 0);
	ck_assert_uint_eq(val.count, 0);
	ck_assert_uint_eq(train.count, 10);
	ck_assert_ptr_eq(train.images, all.images);

	ck_assert_int_eq(mn_dataset_split(ds, 9, &train, &val, err, sizeof(err)), 0);
	ck_assert_uint_eq(val.count, 9);
	ck_assert_uint_eq(train.count, 1);
	ck_assert_ptr_eq(train.labels, all.labels + 9);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_split_views_batch)
{
	struct mn_dataset *ds = NULL;
	struct mn_view train, val;
	const uint32_t first = 0, third = 2;
	float x[2 * 64];
	uint8_t y[2];

	write_set("train", 10, 8, 8, 1, 1);
	ck_assert_int_eq(
	    mn_dataset_load(tpath(IMG_NAME ".gz"), tpath(LAB_NAME ".gz"), &ds, err, sizeof(err)),
	    0);
	ck_assert_int_eq(mn_dataset_split(ds, 3, &train, &val, err, sizeof(err)), 0);

	/* Index 0 of the train view is example 3 of the file. */
	mn_view_gather(&train, &first, 1, x, y);
	for (size_t j = 0; j < 64; j++)
		ck_assert_float_eq(x[j], (float)pixel_at(3, j) / 255.0f);
	ck_assert_uint_eq(y[0], label_at(3));

	mn_view_range(&train, 5, 2, x, y);
	for (size_t j = 0; j < 64; j++) {
		ck_assert_float_eq(x[j], (float)pixel_at(8, j) / 255.0f);
		ck_assert_float_eq(x[64 + j], (float)pixel_at(9, j) / 255.0f);
	}
	ck_assert_uint_eq(y[0], label_at(8));
	ck_assert_uint_eq(y[1], label_at(9));

	mn_view_gather(&val, &third, 1, x, y);
	for (size_t j = 0; j < 64; j++)
		ck_assert_float_eq(x[j], (float)pixel_at(2, j) / 255.0f);
	ck_assert_uint_eq(y[0], label_at(2));
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_split_rejects_too_big)
{
	struct mn_dataset *ds = NULL;
	struct mn_view train, val;
	const size_t bad[] = {10, 11, SIZE_MAX};

	write_set("train", 10, 8, 8, 0, 0);
	ck_assert_int_eq(mn_dataset_load(tpath(IMG_NAME), tpath(LAB_NAME), &ds, err, sizeof(err)),
	                 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		ck_assert_int_eq(mn_dataset_split(ds, bad[i], &train, &val, err, sizeof(err)),
		                 -EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "validation_size"));
		ck_assert_ptr_nonnull(strstr(err, "no training examples"));
	}
	ck_assert_ptr_nonnull(strstr(err, "has 10"));
	mn_dataset_free(ds);
}
END_TEST

/* ---- mn_idx_parse: in-memory validation ---- */

/* Parses a copy of exactly len bytes, so ASan catches any read past the end. */
static int parse_copy(const uint8_t *p, size_t len, int kind, uint32_t dims[3],
                      const uint8_t **elems)
{
	uint8_t *copy = malloc(len ? len : 1);
	int rc;

	ck_assert_ptr_nonnull(copy);
	if (len)
		memcpy(copy, p, len);
	err[0] = '\0';
	*elems = NULL;
	rc = mn_idx_parse(copy, len, kind, MEM_NAME, dims, elems, err, sizeof(err));
	if (rc == 0)
		ck_assert_ptr_eq(*elems,
		                 copy + len - (dims[0] * (kind == 3 ? dims[1] * dims[2] : 1)));
	free(copy);
	return rc;
}

static void expect_parse_fail(struct blob b, int kind, const char *msg)
{
	uint32_t dims[3];
	const uint8_t *elems;

	ck_assert_int_eq(parse_copy(b.p, b.len, kind, dims, &elems), -EINVAL);
	ck_assert_ptr_null(elems);
	ck_assert_msg(strstr(err, MEM_NAME ": ") == err, "message \"%s\" does not name the file",
	              err);
	ck_assert_msg(strstr(err, msg), "message \"%s\" lacks \"%s\"", err, msg);
}

START_TEST(test_parse_valid)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(10);
	uint32_t dims[3] = {0, 0, 0};
	const uint8_t *elems = NULL;

	ck_assert_int_eq(mn_idx_parse(img.p, img.len, 3, MEM_NAME, dims, &elems, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(dims[0], 10);
	ck_assert_uint_eq(dims[1], 8);
	ck_assert_uint_eq(dims[2], 8);
	ck_assert_ptr_eq(elems, img.p + 16);
	ck_assert_int_eq(mn_idx_parse(lab.p, lab.len, 1, MEM_NAME, dims, &elems, err, sizeof(err)),
	                 0);
	ck_assert_uint_eq(dims[0], 10);
	ck_assert_ptr_eq(elems, lab.p + 8);
	ck_assert_int_eq(parse_copy(img.p, img.len, 3, dims, &elems), 0);
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_parse_bad_magic)
{
	struct blob b = make_images(2, 4, 4);

	b.p[0] = 0x01;
	expect_parse_fail(b, 3, "not an IDX file");
	b.p[0] = 0x00;
	b.p[1] = 0x08;
	expect_parse_fail(b, 3, "not an IDX file");
	/* A gzip file handed to the in-memory parser is not IDX either. */
	b.p[0] = 0x1f;
	b.p[1] = 0x8b;
	expect_parse_fail(b, 3, "magic 1f 8b");
	free(b.p);
}
END_TEST

START_TEST(test_parse_bad_type)
{
	struct blob b = make_images(2, 4, 4);

	b.p[2] = 0x0d; /* float */
	expect_parse_fail(b, 3, "element type 0x0d is not unsigned byte");
	b.p[2] = 0x09; /* signed byte */
	expect_parse_fail(b, 3, "element type 0x09");
	free(b.p);
}
END_TEST

START_TEST(test_parse_bad_ndim)
{
	struct blob img = make_images(2, 4, 4), lab = make_labels(2);

	expect_parse_fail(img, 1, "ndim is 3, expected 1 for labels");
	expect_parse_fail(lab, 3, "ndim is 1, expected 3 for images");
	img.p[3] = 2;
	expect_parse_fail(img, 3, "ndim is 2");
	img.p[3] = 0;
	expect_parse_fail(img, 3, "ndim is 0");
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_parse_bad_kind)
{
	struct blob b = make_images(2, 4, 4);
	uint32_t dims[3];
	const uint8_t *elems = NULL;

	ck_assert_int_eq(mn_idx_parse(b.p, b.len, 2, MEM_NAME, dims, &elems, err, sizeof(err)),
	                 -EINVAL);
	ck_assert_int_eq(mn_idx_parse(b.p, b.len, 0, MEM_NAME, dims, &elems, err, sizeof(err)),
	                 -EINVAL);
	ck_assert_int_eq(mn_idx_parse(NULL, 0, 3, MEM_NAME, dims, &elems, err, sizeof(err)),
	                 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "truncated"));
	free(b.p);
}
END_TEST

START_TEST(test_parse_zero_sizes)
{
	const struct {
		int kind;
		uint32_t dims[3];
		const char *msg;
	} cases[] = {
	    {3, {10, 0, 8}, "rows is 0"},
	    {3, {10, 8, 0}, "cols is 0"},
	    {3, {0, 8, 8}, "image count is 0"},
	    {1, {0}, "label count is 0"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct blob b = make_raw(0x08, (uint8_t)cases[i].kind, cases[i].dims, NULL, 0);

		expect_parse_fail(b, cases[i].kind, cases[i].msg);
		free(b.p);
	}
}
END_TEST

START_TEST(test_parse_huge_sizes)
{
	const struct {
		int kind;
		uint32_t dims[3];
		const char *msg;
	} cases[] = {
	    /* 2^96: wraps any 64-bit product that is not capped as it goes. */
	    {3, {0xffffffffu, 0xffffffffu, 0xffffffffu}, "4294967295 x 4294967295 x 4294967295"},
	    /* 2^64 exactly: wraps to 0 in unchecked 64-bit arithmetic. */
	    {3, {65536, 65536, 0x1000000u}, "too large"},
	    /* 2^32: wraps to 0 in 32-bit arithmetic. */
	    {3, {65536, 256, 256}, "too large"},
	    {3, {1, 65536, 32769}, "limit of 2147483648 bytes"},
	    {1, {0xffffffffu}, "too large: labels"},
	    {1, {0x80000001u}, "too large"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct blob b = make_raw(0x08, (uint8_t)cases[i].kind, cases[i].dims, NULL, 0);

		expect_parse_fail(b, cases[i].kind, cases[i].msg);
		/* The same header on disk is refused before anything is allocated for it. */
		mn_test_write_file(tpath(cases[i].kind == 3 ? IMG_NAME : LAB_NAME), b.p, b.len);
		if (cases[i].kind == 3) {
			expect_load_fail(tpath(IMG_NAME), tpath(LAB_NAME), -EINVAL, "too large");
			ck_assert_ptr_nonnull(strstr(err, IMG_NAME ": too large"));
		}
		free(b.p);
	}
}
END_TEST

START_TEST(test_parse_at_limit_is_not_too_large)
{
	/* Exactly MN_IDX_MAX_BYTES is allowed by the header; it fails only for missing data. */
	uint32_t idims[3] = {1, 65536, 32768}, ldims[1] = {0x80000000u};
	struct blob img = make_raw(0x08, 3, idims, NULL, 0),
	            lab = make_raw(0x08, 1, ldims, NULL, 0);

	expect_parse_fail(img, 3,
	                  "truncated: header promises 2147483648 bytes of images, file has 0");
	expect_parse_fail(lab, 1,
	                  "truncated: header promises 2147483648 bytes of labels, file has 0");
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_parse_truncated_every_prefix)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(10);
	uint32_t dims[3];
	const uint8_t *elems;

	for (size_t len = 0; len < img.len; len++) {
		ck_assert_int_eq(parse_copy(img.p, len, 3, dims, &elems), -EINVAL);
		ck_assert_msg(strstr(err, MEM_NAME ": truncated") == err, "len %zu: \"%s\"", len,
		              err);
	}
	for (size_t len = 0; len < lab.len; len++) {
		ck_assert_int_eq(parse_copy(lab.p, len, 1, dims, &elems), -EINVAL);
		ck_assert_msg(strstr(err, MEM_NAME ": truncated") == err, "len %zu: \"%s\"", len,
		              err);
	}
	ck_assert_int_eq(parse_copy(img.p, 16 + 100, 3, dims, &elems), -EINVAL);
	ck_assert_str_eq(err,
	                 MEM_NAME ": truncated: header promises 640 bytes of images, file has 100");
	ck_assert_int_eq(parse_copy(img.p, 10, 3, dims, &elems), -EINVAL);
	ck_assert_str_eq(err, MEM_NAME
	                 ": truncated: the header of an IDX images file is 16 bytes, file has 10");
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_parse_trailing)
{
	struct blob img = make_images(10, 8, 8);

	img.len++; /* make_raw allocates one spare byte */
	expect_parse_fail(img, 3, "trailing data: 1 bytes after the 640 bytes of images");
	free(img.p);
}
END_TEST

/* ---- files: rejection ---- */

/* Writes prefixes of full[] to path and checks each one is refused as truncated. */
static void check_file_prefixes(const char *name, const struct blob full, int images)
{
	char path[PATH_MAX + 256];

	/* tpath() buffers rotate, so keep our own copy across the loop. */
	snprintf(path, sizeof(path), "%s", name);
	for (size_t len = 0; len < full.len; len++) {
		mn_test_write_file(path, full.p, len);
		if (images)
			expect_load_fail(path, tpath(LAB_NAME), -EINVAL, NULL);
		else
			expect_load_fail(tpath(IMG_NAME), path, -EINVAL, NULL);
		ck_assert_msg(strstr(err, path) == err && strstr(err, ": truncated"),
		              "prefix %zu of %zu: \"%s\"", len, full.len, err);
	}
}

START_TEST(test_file_truncated_every_prefix_plain)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(10);

	write_file(tpath(IMG_NAME), img, 0);
	check_file_prefixes(tpath(LAB_NAME), lab, 0);
	write_file(tpath(LAB_NAME), lab, 0);
	check_file_prefixes(tpath(IMG_NAME), img, 1);

	mn_test_write_file(tpath(IMG_NAME), img.p, 16 + 100);
	expect_load_fail(tpath(IMG_NAME), tpath(LAB_NAME), -EINVAL, NULL);
	ck_assert_str_eq(strstr(err, IMG_NAME ":"),
	                 IMG_NAME ": truncated: header promises 640 bytes of images, file has 100");
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_file_truncated_every_prefix_gzip)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(10), gz_img, gz_lab;

	write_file(tpath("img.gz"), img, 1);
	write_file(tpath("lab.gz"), lab, 1);
	gz_img = read_whole(tpath("img.gz"));
	gz_lab = read_whole(tpath("lab.gz"));

	write_file(tpath(IMG_NAME), img, 0);
	check_file_prefixes(tpath(LAB_NAME ".gz"), gz_lab, 0);
	write_file(tpath(LAB_NAME), lab, 0);
	check_file_prefixes(tpath(IMG_NAME ".gz"), gz_img, 1);

	/* Well-formed gzip around a short IDX file: the message counts decompressed bytes. */
	write_gz(tpath(IMG_NAME ".gz"), img.p, 16 + 100);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, NULL);
	ck_assert_str_eq(strstr(err, IMG_NAME ".gz:"), IMG_NAME
	                 ".gz: truncated: header promises 640 bytes of images, file has 100");
	free(img.p);
	free(lab.p);
	free(gz_img.p);
	free(gz_lab.p);
}
END_TEST

START_TEST(test_file_trailing)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(10);

	write_file(tpath(LAB_NAME), lab, 0);
	/* make_raw allocates one spare (zero) byte to serve as the garbage */
	img.len++;
	lab.len++;
	write_file(tpath(IMG_NAME), img, 0);
	expect_load_fail(tpath(IMG_NAME), tpath(LAB_NAME), -EINVAL, "trailing data");
	ck_assert_ptr_nonnull(strstr(err, IMG_NAME));
	write_file(tpath(IMG_NAME ".gz"), img, 1);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, "trailing data");
	ck_assert_ptr_nonnull(strstr(err, IMG_NAME ".gz"));

	img.len--;
	write_file(tpath(IMG_NAME), img, 0);
	write_file(tpath(LAB_NAME ".gz"), lab, 1);
	expect_load_fail(tpath(IMG_NAME), tpath(LAB_NAME ".gz"), -EINVAL, "trailing data");
	ck_assert_ptr_nonnull(strstr(err, LAB_NAME ".gz"));
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_file_bad_headers)
{
	struct blob img = make_images(4, 8, 8), lab = make_labels(4);

	write_file(tpath(LAB_NAME), lab, 0);
	img.p[1] = 0x08;
	write_file(tpath(IMG_NAME ".gz"), img, 1);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, "not an IDX file");
	img.p[1] = 0;
	img.p[2] = 0x0b;
	write_file(tpath(IMG_NAME ".gz"), img, 1);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, "element type 0x0b");
	img.p[2] = 0x08;
	img.p[11] = 0; /* rows = 0 */
	write_file(tpath(IMG_NAME), img, 0);
	expect_load_fail(tpath(IMG_NAME), tpath(LAB_NAME), -EINVAL, IMG_NAME ": rows is 0");
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_file_swapped)
{
	write_set("train", 4, 8, 8, 0, 1);
	expect_load_fail(tpath(LAB_NAME ".gz"), tpath(IMG_NAME), -EINVAL,
	                 LAB_NAME ".gz: ndim is 1, expected 3 for images");
}
END_TEST

START_TEST(test_file_count_mismatch)
{
	struct blob img = make_images(10, 8, 8), lab = make_labels(9);
	char want[3 * PATH_MAX];

	write_file(tpath(IMG_NAME ".gz"), img, 1);
	write_file(tpath(LAB_NAME), lab, 0);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, NULL);
	snprintf(want, sizeof(want), "%s has 10 images but %s has 9 labels", tpath(IMG_NAME ".gz"),
	         tpath(LAB_NAME));
	ck_assert_str_eq(err, want);
	free(img.p);
	free(lab.p);
}
END_TEST

START_TEST(test_file_corrupt_gzip)
{
	struct blob img = make_images(10, 28, 28), gz;

	write_set("train", 10, 28, 28, 0, 0);
	write_file(tpath("img.gz"), img, 1);
	gz = read_whole(tpath("img.gz"));
	ck_assert_uint_gt(gz.len, 20);

	/* Wrong CRC in the trailer. */
	gz.p[gz.len - 6] ^= 0x55;
	mn_test_write_file(tpath(IMG_NAME ".gz"), gz.p, gz.len);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL,
	                 "corrupt compressed data");
	/* zlib's reason, without the "<fd:N>" name zlib gives a descriptor it reads. */
	ck_assert_str_eq(strstr(err, IMG_NAME ".gz:"),
	                 IMG_NAME ".gz: corrupt compressed data: incorrect data check");
	gz.p[gz.len - 6] ^= 0x55;

	/* Wrong length in the trailer. */
	gz.p[gz.len - 2] ^= 0x01;
	mn_test_write_file(tpath(IMG_NAME ".gz"), gz.p, gz.len);
	expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL,
	                 "corrupt compressed data");
	gz.p[gz.len - 2] ^= 0x01;

	/* Damage in the deflate stream: however zlib sees it, it is refused. */
	for (size_t off = 10; off < gz.len - 8; off += 7) {
		gz.p[off] ^= 0xa5;
		mn_test_write_file(tpath(IMG_NAME ".gz"), gz.p, gz.len);
		expect_load_fail(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), -EINVAL, IMG_NAME ".gz: ");
		ck_assert_msg(!strstr(err, "<fd:"), "message \"%s\" names a descriptor", err);
		gz.p[off] ^= 0xa5;
	}

	/* Undamaged, it loads. */
	{
		struct mn_dataset *ds = NULL;

		mn_test_write_file(tpath(IMG_NAME ".gz"), gz.p, gz.len);
		ck_assert_int_eq(
		    mn_dataset_load(tpath(IMG_NAME ".gz"), tpath(LAB_NAME), &ds, err, sizeof(err)),
		    0);
		check_pattern(ds, 10, 28, 28);
		mn_dataset_free(ds);
	}
	free(img.p);
	free(gz.p);
}
END_TEST

START_TEST(test_file_nonexistent)
{
	write_set("train", 4, 8, 8, 0, 0);
	expect_load_fail(tpath("nope-images"), tpath(LAB_NAME), -ENOENT, tpath("nope-images"));
	expect_load_fail(tpath(IMG_NAME), tpath("nope-labels"), -ENOENT, tpath("nope-labels"));
	ck_assert_ptr_nonnull(strstr(err, strerror(ENOENT)));
}
END_TEST

START_TEST(test_file_empty_and_directory)
{
	write_set("train", 4, 8, 8, 0, 0);
	mn_test_write_file(tpath("empty"), "", 0);
	expect_load_fail(tpath("empty"), tpath(LAB_NAME), -EINVAL, "file has 0");
	ck_assert_int_eq(mkdir(tpath("adir"), 0700), 0);
	expect_load_fail(tpath("adir"), tpath(LAB_NAME), -EINVAL,
	                 "not a regular file (a directory)");
	rmdir(tpath("adir"));
	/* A FIFO in data.dir is refused at once, not waited on for a writer. */
	ck_assert_int_eq(mkfifo(tpath("fifo"), 0600), 0);
	expect_load_fail(tpath("fifo"), tpath(LAB_NAME), -EINVAL, "not a regular file (a FIFO)");
	unlink(tpath("fifo"));
}
END_TEST

/* ---- mn_dataset_load_images ---- */

START_TEST(test_load_images_only)
{
	struct mn_dataset *ds = NULL;
	struct mn_view all, train, val;
	float x[2 * 12];
	uint8_t y[2] = {77, 77};

	for (int gz = 0; gz < 2; gz++) {
		struct blob img = make_images(5, 3, 4);

		write_file(tpath("img"), img, gz);
		free(img.p);
		ck_assert_int_eq(mn_dataset_load_images(tpath("img"), &ds, err, sizeof(err)), 0);
		ck_assert_uint_eq(mn_dataset_count(ds), 5);
		ck_assert_uint_eq(mn_dataset_rows(ds), 3);
		ck_assert_uint_eq(mn_dataset_cols(ds), 4);
		ck_assert_uint_eq(mn_dataset_max_label(ds), 0);
		all = mn_dataset_all(ds);
		ck_assert_ptr_null(all.labels);
		ck_assert_uint_eq(all.dim, 12);
		for (size_t i = 0; i < 5; i++)
			for (size_t j = 0; j < 12; j++)
				ck_assert_uint_eq(all.images[i * 12 + j], pixel_at(i, j));
		/* Views without labels scale pixels and leave y alone. */
		mn_view_range(&all, 3, 2, x, y);
		ck_assert_float_eq(x[12 + 5], (float)pixel_at(4, 5) / 255.0f);
		mn_view_gather(&all, (uint32_t[]){4, 0}, 2, x, y);
		ck_assert_float_eq(x[7], (float)pixel_at(4, 7) / 255.0f);
		ck_assert_uint_eq(y[0], 77);
		ck_assert_uint_eq(y[1], 77);
		ck_assert_int_eq(mn_dataset_split(ds, 2, &train, &val, err, sizeof(err)), 0);
		ck_assert_ptr_null(train.labels);
		ck_assert_uint_eq(train.count, 3);
		mn_dataset_free(ds);
		ds = NULL;
	}
}
END_TEST

START_TEST(test_load_images_rejects)
{
	struct mn_dataset *ds = (struct mn_dataset *)1;
	struct blob lab = make_labels(4);
	struct blob img = make_images(4, 2, 2);

	ck_assert_int_eq(mn_dataset_load_images(tpath("nope"), &ds, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(ds);
	ck_assert_ptr_nonnull(strstr(err, tpath("nope")));
	/* A label file is not an image file. */
	write_file(tpath("lab"), lab, 0);
	ck_assert_int_eq(mn_dataset_load_images(tpath("lab"), &ds, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "ndim is 1, expected 3"));
	/* A truncated image file. */
	mn_test_write_file(tpath("short"), img.p, img.len - 1);
	ck_assert_int_eq(mn_dataset_load_images(tpath("short"), &ds, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "truncated"));
	ck_assert_int_eq(mn_dataset_load_images(NULL, &ds, err, sizeof(err)), -EINVAL);
	free(lab.p);
	free(img.p);
}
END_TEST

/* ---- mn_dataset_load_dir ---- */

START_TEST(test_load_dir_gz)
{
	struct mn_dataset *ds = NULL;

	write_set("train", 10, 8, 8, 1, 1);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), 0);
	check_pattern(ds, 10, 8, 8);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_load_dir_plain)
{
	struct mn_dataset *ds = NULL;

	write_set("t10k", 7, 28, 28, 0, 0);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "t10k", &ds, err, sizeof(err)), 0);
	check_pattern(ds, 7, 28, 28);
	mn_dataset_free(ds);
	/* The other set is not there. */
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(ds);
}
END_TEST

START_TEST(test_load_dir_mixed)
{
	struct mn_dataset *ds = NULL;

	write_set("train", 5, 8, 8, 0, 1);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), 0);
	check_pattern(ds, 5, 8, 8);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_load_dir_prefers_gz)
{
	struct mn_dataset *ds = NULL;

	write_set("train", 5, 8, 8, 0, 0);
	write_set("train", 10, 8, 8, 1, 1);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_dataset_count(ds), 10);
	mn_dataset_free(ds);
}
END_TEST

START_TEST(test_load_dir_bad_gz_no_fallback)
{
	struct mn_dataset *ds = (struct mn_dataset *)&ds;

	/* A damaged .gz must be reported, not silently replaced by the plain file. */
	write_set("train", 5, 8, 8, 0, 0);
	mn_test_write_file(tpath(IMG_NAME ".gz"), "\x1f\x8b\x08", 3);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(ds);
	ck_assert_ptr_nonnull(strstr(err, IMG_NAME ".gz: truncated"));
}
END_TEST

START_TEST(test_load_dir_missing)
{
	struct mn_dataset *ds = (struct mn_dataset *)&ds;
	char want[4 * PATH_MAX];
	struct blob img = make_images(3, 8, 8);

	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(ds);
	snprintf(want, sizeof(want), "no images file: neither %s nor %s exists",
	         tpath(IMG_NAME ".gz"), tpath(IMG_NAME));
	ck_assert_str_eq(err, want);

	/* Images present, labels missing: the message names both label paths. */
	write_file(tpath(IMG_NAME), img, 0);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "train", &ds, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "no labels file: neither %s nor %s exists",
	         tpath(LAB_NAME ".gz"), tpath(LAB_NAME));
	ck_assert_str_eq(err, want);

	ck_assert_int_eq(mn_dataset_load_dir(tpath("no-such-dir"), "train", &ds, err, sizeof(err)),
	                 -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "no-such-dir/" IMG_NAME ".gz"));
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "", &ds, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(mn_dataset_load_dir(tmpdir, "../x", &ds, err, sizeof(err)), -EINVAL);
	free(img.p);
}
END_TEST

/* ---- the real data set, when the Debian package is installed ---- */

START_TEST(test_real_fashion_mnist)
{
	struct mn_dataset *ds = NULL;
	struct mn_view train, val;

	if (access(REAL_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0)
		return; /* dataset-fashion-mnist not installed */
	ck_assert_int_eq(mn_dataset_load_dir(REAL_DIR, "train", &ds, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_dataset_count(ds), 60000);
	ck_assert_uint_eq(mn_dataset_rows(ds), 28);
	ck_assert_uint_eq(mn_dataset_cols(ds), 28);
	ck_assert_uint_eq(mn_dataset_max_label(ds), 9);
	ck_assert_int_eq(mn_dataset_split(ds, 5000, &train, &val, err, sizeof(err)), 0);
	ck_assert_uint_eq(train.count, 55000);
	ck_assert_uint_eq(val.count, 5000);
	mn_dataset_free(ds);
	ck_assert_int_eq(mn_dataset_load_dir(REAL_DIR, "t10k", &ds, err, sizeof(err)), 0);
	ck_assert_uint_eq(mn_dataset_count(ds), 10000);
	mn_dataset_free(ds);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("idx");
	TCase *tc;

	MN_TEST_ADD(mn_test_tcase(s, "load", setup, teardown), test_load_plain_8x8,
	            test_load_gzip_28x28, test_load_rectangular, test_null_dataset);
	MN_TEST_ADD(mn_test_tcase(s, "batch", setup, teardown), test_gather_exact_values,
	            test_range_exact_values, test_all_pixels_scale);
	MN_TEST_ADD(mn_test_tcase(s, "split", setup, teardown), test_split_sizes,
	            test_split_views_batch, test_split_rejects_too_big);
	MN_TEST_ADD(mn_test_tcase(s, "parse", setup, teardown), test_parse_valid,
	            test_parse_bad_magic, test_parse_bad_type, test_parse_bad_ndim,
	            test_parse_bad_kind, test_parse_zero_sizes, test_parse_huge_sizes,
	            test_parse_at_limit_is_not_too_large, test_parse_truncated_every_prefix,
	            test_parse_trailing);
	tc = mn_test_tcase(s, "reject", setup, teardown);
	tcase_set_timeout(tc, 60);
	MN_TEST_ADD(tc, test_file_truncated_every_prefix_plain,
	            test_file_truncated_every_prefix_gzip, test_file_trailing,
	            test_file_bad_headers, test_file_swapped, test_file_count_mismatch,
	            test_file_corrupt_gzip, test_file_nonexistent, test_file_empty_and_directory,
	            test_load_images_only, test_load_images_rejects);
	MN_TEST_ADD(mn_test_tcase(s, "load_dir", setup, teardown), test_load_dir_gz,
	            test_load_dir_plain, test_load_dir_mixed, test_load_dir_prefers_gz,
	            test_load_dir_bad_gz_no_fallback, test_load_dir_missing);
	tc = mn_test_tcase(s, "real", NULL, NULL);
	tcase_set_timeout(tc, 120);
	MN_TEST_ADD(tc, test_real_fashion_mnist);
	return mn_test_run(s);
}
