/* test_ckpt.c - checkpoint format, strict reader and writer. */
#include "ckpt.h"
#include "util.h"

#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mn_test.h"

#define NAME "model.ckpt-3000.safetensors"

/* The sample checkpoint: every dtype width the trainer uses, a scalar and a vector. */
static float w1[3 * 4], b1[4], w2[4 * 2];
static int64_t step = 3000;
static uint32_t rng[5] = {0xdeadbeef, 1, 2, 3, 0xffffffff};

static struct mn_tensor sample[] = {
    {.name = "layer1/weights", .dtype = MN_DTYPE_F32, .ndim = 2, .shape = {3, 4}, .data = w1},
    {.name = "layer1/biases", .dtype = MN_DTYPE_F32, .ndim = 1, .shape = {4}, .data = b1},
    {.name = "layer2/weights", .dtype = MN_DTYPE_F32, .ndim = 2, .shape = {4, 2}, .data = w2},
    {.name = "empty", .dtype = MN_DTYPE_F32, .ndim = 2, .shape = {0, 3}, .data = NULL},
    {.name = "global_step", .dtype = MN_DTYPE_I64, .ndim = 0, .data = &step},
    {.name = "train/rng", .dtype = MN_DTYPE_U32, .ndim = 1, .shape = {5}, .data = rng},
};
#define NSAMPLE (sizeof(sample) / sizeof(sample[0]))

static const struct mn_meta sample_meta[] = {
    {"format", MN_CKPT_FORMAT},
    {"global_step", "3000"},
    {"created", "2026-11-25T17:04:05.123Z"},
    {"architecture", "{\"input\":12,\"hidden\":[4],\"output\":2,\"activation\":\"relu\"}"},
};
#define NMETA (sizeof(sample_meta) / sizeof(sample_meta[0]))

static void fill_sample(void)
{
	for (size_t i = 0; i < 12; i++)
		w1[i] = (float)i * 0.25f - 1.0f;
	for (size_t i = 0; i < 4; i++)
		b1[i] = -(float)i;
	for (size_t i = 0; i < 8; i++)
		w2[i] = 1.0f / (float)(i + 1);
}

static uint8_t *encode(const struct mn_tensor *t, size_t nt, const struct mn_meta *m, size_t nm,
                       size_t *len)
{
	char err[MN_ERRLEN] = "";
	uint8_t *buf = NULL;
	int rc = mn_ckpt_encode(t, nt, m, nm, &buf, len, err, sizeof(err));

	ck_assert_msg(rc == 0, "encode: %d %s", rc, err);
	return buf;
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Asserts c holds exactly the tensors t, in order, with the same bytes. */
static void assert_tensors(const struct mn_ckpt *c, const struct mn_tensor *t, size_t nt)
{
	ck_assert_uint_eq(mn_ckpt_count(c), nt);
	for (size_t i = 0; i < nt; i++) {
		const struct mn_tensor *r = mn_ckpt_tensor(c, i);
		size_t nb = (size_t)mn_tensor_elements(&t[i]) * mn_dtype_size(t[i].dtype);

		ck_assert_ptr_nonnull(r);
		ck_assert_str_eq(r->name, t[i].name);
		ck_assert_int_eq(r->dtype, t[i].dtype);
		ck_assert_uint_eq(r->ndim, t[i].ndim);
		for (size_t d = 0; d < t[i].ndim; d++)
			ck_assert_uint_eq(r->shape[d], t[i].shape[d]);
		ck_assert_uint_eq(r->nbytes, nb);
		if (nb)
			ck_assert_int_eq(memcmp(r->data, t[i].data, nb), 0);
		ck_assert_ptr_eq(mn_ckpt_find(c, t[i].name), r);
	}
	ck_assert_ptr_null(mn_ckpt_tensor(c, nt));
}

/*
 * After one flipped byte was accepted: data, dtypes and shapes are intact.
 * A name may differ in exactly that byte, since data_crc32 covers only the
 * data buffer and a renamed tensor is still a well-formed file.
 */
static void assert_tensors_flipped(const struct mn_ckpt *c, const struct mn_tensor *t, size_t nt)
{
	ck_assert_uint_eq(mn_ckpt_count(c), nt);
	for (size_t i = 0; i < nt; i++) {
		const struct mn_tensor *r = mn_ckpt_tensor(c, i);
		size_t diff = 0;

		ck_assert_uint_eq(strlen(r->name), strlen(t[i].name));
		for (size_t k = 0; r->name[k]; k++)
			diff += r->name[k] != t[i].name[k];
		ck_assert_uint_le(diff, 1);
		ck_assert_int_eq(r->dtype, t[i].dtype);
		ck_assert_uint_eq(r->ndim, t[i].ndim);
		for (size_t d = 0; d < t[i].ndim; d++)
			ck_assert_uint_eq(r->shape[d], t[i].shape[d]);
		ck_assert_uint_eq(r->nbytes, t[i].nbytes);
		ck_assert_int_eq(memcmp(r->data, t[i].data, r->nbytes), 0);
	}
}

static void assert_sample(const struct mn_ckpt *c)
{
	assert_tensors(c, sample, NSAMPLE);
	/* The caller's entries in order, then the computed checksum. */
	ck_assert_uint_eq(mn_ckpt_meta_count(c), NMETA + 1);
	for (size_t i = 0; i < NMETA; i++) {
		ck_assert_str_eq(mn_ckpt_meta_at(c, i)->key, sample_meta[i].key);
		ck_assert_str_eq(mn_ckpt_meta_at(c, i)->value, sample_meta[i].value);
		ck_assert_str_eq(mn_ckpt_meta(c, sample_meta[i].key), sample_meta[i].value);
	}
	ck_assert_str_eq(mn_ckpt_meta_at(c, NMETA)->key, "data_crc32");
	ck_assert_ptr_null(mn_ckpt_meta(c, "nope"));
}

/* Issue #15 point 9: no message shows bytes of a file that is no checkpoint. */
START_TEST(reject_messages_never_show_file_bytes)
{
	/* What a link to /etc/shadow reads like: "root:$y$j9T$..." */
	static const char shadow[] = "root:$y$j9T$abcdefgh:19000:0:99999:7:::\n";
	char err[MN_ERRLEN] = "";
	struct mn_ckpt *c = NULL;
	char first8[9];

	memcpy(first8, shadow, 8);
	first8[8] = '\0';
	ck_assert_int_eq(mn_ckpt_parse((const uint8_t *)shadow, sizeof(shadow) - 1, NAME, 0, &c,
	                               err, sizeof(err)),
	                 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not a checkpoint"));
	ck_assert_ptr_null(strstr(err, first8));
	/* Nor as the little-endian number those bytes make. */
	uint64_t n = 0;
	char num[32];

	for (int i = 7; i >= 0; i--)
		n = n << 8 | (uint8_t)shadow[i];
	snprintf(num, sizeof(num), "%" PRIu64, n);
	ck_assert_ptr_null(strstr(err, num));
}
END_TEST

START_TEST(test_roundtrip_encode)
{
	char err[MN_ERRLEN] = "";
	struct mn_ckpt *c = NULL;
	size_t len;
	uint8_t *buf;
	int rc;

	fill_sample();
	buf = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	rc = mn_ckpt_parse(buf, len, NAME, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	/* The checkpoint keeps its own copy. */
	memset(buf, 0, len);
	free(buf);
	assert_sample(c);
	ck_assert_str_eq(mn_ckpt_name(c), NAME);
	ck_assert_uint_eq(mn_ckpt_file_size(c), len);
	mn_ckpt_free(c);
	mn_ckpt_free(NULL);
}
END_TEST

START_TEST(test_roundtrip_write)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	struct mn_ckpt *c = NULL;
	char dir[MN_TEST_DIRLEN];
	uint8_t *enc, *file;
	size_t elen, flen;
	struct stat st;
	mode_t old = umask(022);
	int rc;

	mn_test_tmpdir(dir, sizeof(dir));
	fill_sample();
	rc = mn_ckpt_write(dir, NAME, sample, NSAMPLE, sample_meta, NMETA, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	umask(old);
	snprintf(path, sizeof(path), "%s/%s", dir, NAME);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0644);
	/* No temporary left behind. */
	ck_assert_uint_eq(mn_test_count_entries(dir), 1);

	rc = mn_ckpt_read(path, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	assert_sample(c);
	ck_assert_str_eq(mn_ckpt_name(c), path);
	mn_ckpt_free(c);

	/* write and encode produce the same bytes. */
	enc = encode(sample, NSAMPLE, sample_meta, NMETA, &elen);
	ck_assert_int_eq(mn_read_file(path, 1 << 20, (char **)&file, &flen, err, sizeof(err)), 0);
	ck_assert_uint_eq(flen, elen);
	ck_assert_int_eq(memcmp(file, enc, elen), 0);
	free(enc);
	free(file);

	snprintf(path, sizeof(path), "%s/missing.safetensors", dir);
	c = (struct mn_ckpt *)1;
	ck_assert_int_eq(mn_ckpt_read(path, 0, &c, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(c);
	ck_assert_ptr_nonnull(strstr(err, "missing.safetensors"));
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_read_fd)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX];
	struct mn_ckpt *c = NULL;
	char dir[MN_TEST_DIRLEN];
	int fd, rc;

	mn_test_tmpdir(dir, sizeof(dir));
	fill_sample();
	ck_assert_int_eq(
	    mn_ckpt_write(dir, NAME, sample, NSAMPLE, sample_meta, NMETA, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/%s", dir, NAME);
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	rc = mn_ckpt_read_fd(fd, NAME, MN_CKPT_REQUIRE_MNISTD, &c, err, sizeof(err));
	close(fd);
	ck_assert_msg(rc == 0, "%s", err);
	assert_sample(c);
	mn_ckpt_free(c);
	mn_test_rmtree(dir);
}
END_TEST

/*
 * mn_ckpt_read_fd_reuse parses in the caller's buffer without a copy (the
 * tensors point into it), reuses it for the next file, and leaves it the
 * caller's when a file is bad (freed once at the end: ASan catches a double
 * free or a leak).
 */
START_TEST(test_read_fd_reuse_borrows)
{
	char err[MN_ERRLEN] = "", path[PATH_MAX], *buf = NULL, *first;
	struct mn_ckpt *c = NULL;
	char dir[MN_TEST_DIRLEN];
	const struct mn_tensor *t;
	uint8_t *enc;
	size_t cap = 0, len;
	int fd;

	mn_test_tmpdir(dir, sizeof(dir));
	fill_sample();
	ck_assert_int_eq(
	    mn_ckpt_write(dir, NAME, sample, NSAMPLE, sample_meta, NMETA, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/%s", dir, NAME);
	for (int round = 0; round < 2; round++) {
		fd = open(path, O_RDONLY);
		ck_assert_int_ge(fd, 0);
		ck_assert_msg(mn_ckpt_read_fd_reuse(fd, NAME, MN_CKPT_REQUIRE_MNISTD, &buf, &cap,
		                                    &c, err, sizeof(err)) == 0,
		              "%s", err);
		close(fd);
		assert_sample(c);
		t = mn_ckpt_tensor(c, 0);
		ck_assert((const char *)t->data > buf &&
		          (const char *)t->data < buf + mn_ckpt_file_size(c));
		if (round == 0)
			first = buf;
		else
			ck_assert_ptr_eq(buf, first);
		mn_ckpt_free(c);
	}
	/* A bad file: refused, the buffer still the caller's. */
	enc = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	enc[len - 1] ^= 1; /* the data no longer matches data_crc32 */
	mn_test_write_file(path, enc, len);
	free(enc);
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	c = (struct mn_ckpt *)1;
	ck_assert_int_lt(mn_ckpt_read_fd_reuse(fd, NAME, MN_CKPT_REQUIRE_MNISTD, &buf, &cap, &c,
	                                       err, sizeof(err)),
	                 0);
	close(fd);
	ck_assert_ptr_null(c);
	ck_assert_ptr_eq(buf, first);
	free(buf);
	mn_test_rmtree(dir);
}
END_TEST

START_TEST(test_layout)
{
	size_t len, hlen, dlen, pad = 0;
	uint8_t *buf;
	cJSON *root, *e;
	char *hdr, crc_s[16];
	const uint8_t *data;

	fill_sample();
	buf = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	hlen = (size_t)le64(buf);
	ck_assert_uint_le(8 + hlen, len);
	ck_assert_uint_eq((8 + hlen) % 8, 0);
	/* Padding is spaces only, after the closing brace, and less than 8 bytes. */
	while (pad < hlen && buf[8 + hlen - 1 - pad] == ' ')
		pad++;
	ck_assert_uint_lt(pad, 8);
	ck_assert_int_eq(buf[8 + hlen - 1 - pad], '}');
	ck_assert_int_eq(buf[8], '{');

	hdr = malloc(hlen + 1);
	ck_assert_ptr_nonnull(hdr);
	memcpy(hdr, buf + 8, hlen);
	hdr[hlen] = '\0';
	root = cJSON_Parse(hdr);
	ck_assert_ptr_nonnull(root);
	/* __metadata__ first, then the tensors in the order given. */
	ck_assert_str_eq(root->child->string, "__metadata__");
	data = buf + 8 + hlen;
	dlen = len - 8 - hlen;
	e = root->child->next;
	for (size_t i = 0; i < NSAMPLE; i++, e = e->next) {
		cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
		size_t begin = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
		size_t end = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;

		ck_assert_ptr_nonnull(e);
		ck_assert_str_eq(e->string, sample[i].name);
		ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring,
		                 mn_dtype_name(sample[i].dtype));
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e, "shape")),
		                 (int)sample[i].ndim);
		ck_assert_uint_le(end, dlen);
		if (end > begin)
			ck_assert_int_eq(memcmp(data + begin, sample[i].data, end - begin), 0);
	}
	ck_assert_ptr_null(e);
	snprintf(crc_s, sizeof(crc_s), "%08lx", crc32(0L, data, (uInt)dlen));
	ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(root->child, "data_crc32")->valuestring,
	                 crc_s);
	cJSON_Delete(root);
	free(hdr);
	free(buf);
}
END_TEST

/* Padding for every header length mod 8: names of growing length shift the header. */
START_TEST(test_alignment)
{
	char name[40], err[MN_ERRLEN];
	struct mn_ckpt *c = NULL;
	float v = 1.5f;

	for (size_t n = 1; n < 17; n++) {
		struct mn_tensor t = {.name = name, .dtype = MN_DTYPE_F32, .ndim = 0, .data = &v};
		size_t len;
		uint8_t *buf;

		memset(name, 'x', n);
		name[n] = '\0';
		buf = encode(&t, 1, NULL, 0, &len);
		ck_assert_uint_eq((8 + le64(buf)) % 8, 0);
		ck_assert_int_eq(mn_ckpt_parse(buf, len, "a", 0, &c, err, sizeof(err)), 0);
		assert_tensors(c, &t, 1);
		mn_ckpt_free(c);
		free(buf);
	}
}
END_TEST

START_TEST(test_truncate_every_length)
{
	char err[MN_ERRLEN];
	size_t len;
	uint8_t *buf;

	fill_sample();
	buf = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	for (size_t l = 0; l < len; l++) {
		/* A fresh allocation of exactly l bytes, so ASan sees any overread. */
		uint8_t *cut = malloc(l ? l : 1);
		struct mn_ckpt *c = (struct mn_ckpt *)1;
		int rc;

		ck_assert_ptr_nonnull(cut);
		memcpy(cut, buf, l);
		err[0] = '\0';
		rc = mn_ckpt_parse(cut, l, NAME, 0, &c, err, sizeof(err));
		ck_assert_msg(rc == -EINVAL, "length %zu accepted", l);
		ck_assert_ptr_null(c);
		ck_assert_msg(strncmp(err, NAME ": ", strlen(NAME) + 2) == 0, "%zu: %s", l, err);
		ck_assert_uint_gt(strlen(err), strlen(NAME) + 2);
		free(cut);
	}
	free(buf);
}
END_TEST

START_TEST(test_flip_every_byte)
{
	static const struct mn_meta meta[] = {{"format", MN_CKPT_FORMAT}, {"global_step", "7"}};
	float a[2] = {1.0f, -2.0f};
	int64_t s = 7;
	struct mn_tensor t[] = {
	    {.name = "a", .dtype = MN_DTYPE_F32, .ndim = 1, .shape = {2}, .data = a, .nbytes = 8},
	    {.name = "global_step", .dtype = MN_DTYPE_I64, .ndim = 0, .data = &s, .nbytes = 8},
	};
	static const uint8_t masks[] = {0xff, 0x01, 0x80, 0x20};
	size_t len, hlen, accepted = 0;
	uint8_t *buf;
	char err[MN_ERRLEN];

	buf = encode(t, 2, meta, 2, &len);
	hlen = (size_t)le64(buf);
	for (size_t pos = 0; pos < len; pos++) {
		for (size_t m = 0; m < sizeof(masks); m++) {
			for (unsigned flags = 0; flags <= MN_CKPT_REQUIRE_MNISTD; flags++) {
				uint8_t *mut = malloc(len);
				struct mn_ckpt *c = NULL;
				int rc;

				ck_assert_ptr_nonnull(mut);
				memcpy(mut, buf, len);
				mut[pos] ^= masks[m];
				err[0] = '\0';
				rc = mn_ckpt_parse(mut, len, "f", flags, &c, err, sizeof(err));
				if (rc == 0) {
					/* Only a neutral change may pass: the tensors are intact.
					 */
					ck_assert_msg(pos >= 8 && pos < 8 + hlen,
					              "byte %zu ^ %02x accepted", pos, masks[m]);
					assert_tensors_flipped(c, t, 2);
					mn_ckpt_free(c);
					accepted++;
				} else {
					ck_assert_int_eq(rc, -EINVAL);
					ck_assert_ptr_null(c);
					ck_assert_msg(strncmp(err, "f: ", 3) == 0 && err[3],
					              "byte %zu: \"%s\"", pos, err);
				}
				free(mut);
			}
		}
	}
	/* Sanity: some flips (e.g. inside a metadata value) are neutral. */
	ck_assert_uint_gt(accepted, 0);
	free(buf);
}
END_TEST

/* A file from a literal header (no padding) and dlen data bytes. */
static uint8_t *make_file(const char *hdr, size_t dlen, size_t *len)
{
	size_t hl = strlen(hdr);
	uint8_t *buf = calloc(1, 8 + hl + dlen);

	ck_assert_ptr_nonnull(buf);
	put_le64(buf, hl);
	memcpy(buf + 8, hdr, hl);
	for (size_t i = 0; i < dlen; i++)
		buf[8 + hl + i] = (uint8_t)i;
	*len = 8 + hl + dlen;
	return buf;
}

static void expect_reject_buf(const uint8_t *buf, size_t len, unsigned flags, const char *want)
{
	char err[MN_ERRLEN] = "";
	struct mn_ckpt *c = (struct mn_ckpt *)1;
	int rc = mn_ckpt_parse(buf, len, NAME, flags, &c, err, sizeof(err));

	ck_assert_msg(rc == -EINVAL, "accepted, expected \"%s\"", want);
	ck_assert_ptr_null(c);
	ck_assert_msg(strncmp(err, NAME ": ", strlen(NAME) + 2) == 0, "prefix: %s", err);
	ck_assert_msg(strstr(err, want), "got \"%s\", expected \"%s\"", err, want);
}

static void expect_reject(const char *hdr, size_t dlen, const char *want)
{
	size_t len;
	uint8_t *buf = make_file(hdr, dlen, &len);

	expect_reject_buf(buf, len, 0, want);
	free(buf);
}

static void expect_accept(const char *hdr, size_t dlen)
{
	char err[MN_ERRLEN] = "";
	struct mn_ckpt *c = NULL;
	size_t len;
	uint8_t *buf = make_file(hdr, dlen, &len);
	int rc = mn_ckpt_parse(buf, len, NAME, 0, &c, err, sizeof(err));

	ck_assert_msg(rc == 0, "%s: %s", hdr, err);
	mn_ckpt_free(c);
	free(buf);
}

#define T(name, dtype, shape, offs)                                                                \
	"\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}"

START_TEST(test_bad_headers)
{
	uint8_t small[20] = {0};
	size_t len;
	uint8_t *buf;

	/* The hand-made format itself is fine. */
	expect_accept("{" T("a", "F32", "[2]", "[0,8]") "}", 8);
	expect_accept("  {" T("a", "F32", "[2]", "[0,8]") "} \n\t ", 8);
	expect_accept("{}", 0);
	expect_accept("{\"__metadata__\":{}}", 0);
	expect_accept("{" T("a", "U8", "[0]", "[0,0]") "," T("b", "U8", "[1]", "[0,1]") "}", 1);

	expect_reject_buf(small, 5, 0, "truncated: file size 5");
	put_le64(small, 1234);
	expect_reject_buf(small, 20, 0,
	                  "truncated or not a checkpoint: the header length in the first 8 bytes "
	                  "exceeds the file size 20");
	put_le64(small, 15);
	expect_reject_buf(small, 20, 0, "exceeds the file size 20");
	put_le64(small, UINT64_MAX);
	expect_reject_buf(small, 20, 0, "truncated");
	expect_reject("", 0, "header is empty");
	expect_reject("        ", 0, "header is empty");
	expect_reject("{\"a\":", 0, "not valid JSON");
	expect_reject("{} x", 0, "not valid JSON");
	expect_reject("{}{}", 0, "not valid JSON");
	expect_reject("[1, 2]", 0, "not a JSON object");
	expect_reject("\"x\"", 0, "not a JSON object");
	expect_reject("{" T("a", "F31", "[2]", "[0,8]") "}", 8,
	              "tensor \"a\": unknown dtype \"F31\"");
	expect_reject("{" T("a", "f32", "[2]", "[0,8]") "}", 8, "unknown dtype");
	expect_reject("{\"layer1/weights\":{\"dtype\":\"F32\",\"shape\":[784,500],"
	              "\"data_offsets\":[0,12]}}",
	              12,
	              "tensor \"layer1/weights\": data_offsets [0, 12] hold 12 bytes but F32 "
	              "[784, 500] needs 1568000");
	expect_reject("{" T("s", "I64", "[]", "[0,4]") "}", 4, "I64 [] needs 8");
	expect_reject("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[2]", "[4,12]") "}", 12,
	              "overlap");
	expect_reject("{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[8,12]") "}", 12,
	              "gap in data buffer between byte 4 and 8");
	expect_reject("{" T("b", "F32", "[1]", "[4,8]") "}", 8,
	              "gap in data buffer between byte 0 and 4");
	expect_reject("{" T("a", "F32", "[1]", "[0,4]") "}", 8, "4 trailing bytes");
	expect_reject("{}", 3, "3 trailing bytes");
	expect_reject("{" T("a", "F32", "[2]", "[0,8]") "}", 4, "out of bounds");
	expect_reject("{" T("a", "F32", "[2]", "[8,0]") "}", 8, "end before they begin");
	expect_reject("{" T("a", "F32", "[-1]", "[0,4]") "}", 4, "shape[0] is -1, not an integer");
	expect_reject("{" T("a", "F32", "[1]", "[0,4.5]") "}", 4,
	              "data_offsets[1] is 4.5, not an integer");
	expect_reject("{" T("a", "F32", "[1]", "[-0,4]") "}", 4, "\"-0\"");
	expect_reject("{" T("a", "F32", "[1.0]", "[0,4]") "}", 4, "number \"1.0\"");
	expect_reject("{" T("a", "F32", "[1e0]", "[0,4]") "}", 4, "number \"1e0\"");
	expect_reject("{" T("a", "F32", "[01]", "[0,4]") "}", 4, "number \"01\"");
	expect_reject("{" T("a", "U8", "[9007199254740994]", "[0,4]") "}", 4, "2^53");
	expect_reject("{" T("a", "F32", "[4294967296,4294967296,4294967296]", "[0,4]") "}", 4,
	              "overflow");
	expect_reject("{" T("a", "F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4,
	              "more than 8 entries");
	expect_reject("{" T("a", "F32", "[1]", "[0,4,4]") "}", 4, "data_offsets has more than 2");
	expect_reject("{" T("a", "F32", "[1]", "[4]") "}", 4, "not [BEGIN, END]");
	expect_reject("{" T("a", "F32", "1", "[0,4]") "}", 4, "shape is not an array");
	expect_reject("{" T("a", "F32", "[\"1\"]", "[0,4]") "}", 4, "shape[0] is a string");
	expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "missing \"data_offsets\"");
	expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
	              "unexpected member \"x\"");
	expect_reject("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
	              "\"data_offsets\":[0,4]}}",
	              4, "duplicate member \"dtype\"");
	expect_reject("{\"a\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
	              "dtype is not a string");
	expect_reject("{\"a\":[]}", 0, "entry is not an object");
	expect_reject("{" T("a", "F32", "[1]", "[0,4]") "," T("a", "F32", "[1]", "[4,8]") "}", 8,
	              "duplicate name \"a\"");
	expect_reject("{\"__metadata__\":{},\"__metadata__\":{}}", 0,
	              "duplicate name \"__metadata__\"");
	expect_reject("{" T("", "F32", "[1]", "[0,4]") "}", 4, "empty name");
	expect_reject("{\"__metadata__\":{\"x\":1}}", 0, "value of \"x\" is not a string");
	expect_reject("{\"__metadata__\":{\"x\":null}}", 0, "not a string");
	expect_reject("{\"__metadata__\":[]}", 0, "__metadata__ is not an object");
	expect_reject("{\"__metadata__\":{\"x\":\"1\",\"x\":\"2\"}}", 0,
	              "duplicate __metadata__ key \"x\"");
	expect_reject("{\"__metadata__\":{\"data_crc32\":\"ABCDEF01\"}}", 0,
	              "not 8 lowercase hex digits");
	expect_reject("{\"__metadata__\":{\"data_crc32\":\"0\"}}", 0, "not 8 lowercase hex digits");
	expect_reject("{\"__metadata__\":{\"data_crc32\":\"00000001\"}}", 0,
	              "checksum mismatch: header says 00000001, data is 00000000");
	expect_reject("{\"__metadata__\":{\"x\":\"a\nb\"}}", 0, "control character");
	expect_reject("{\"__metadata__\":{\"x\":\"a\\u0000b\"}}", 0, "\\u0000");
	expect_reject("{\"a\\u0000b\":{}}", 0, "\\u0000");
	expect_reject("{\"__metadata__\":{\"x\":\"\xc3\x28\"}}", 0, "not valid UTF-8");
	expect_reject("{\"__metadata__\":{\"x\":\"\xc0\xaf\"}}", 0, "not valid UTF-8");
	expect_reject("{\"__metadata__\":{\"x\":\"\xed\xa0\x80\"}}", 0, "not valid UTF-8");

	/* A NUL inside the header, which cJSON would take for its end. */
	buf = make_file("{}      ", 0, &len);
	buf[8 + 2] = '\0';
	expect_reject_buf(buf, len, 0, "NUL byte at header byte 2");
	free(buf);

	/* Names at and beyond the limit. */
	{
		char hdr[2 * MN_CKPT_MAX_NAME], nm[MN_CKPT_MAX_NAME + 1];

		memset(nm, 'n', MN_CKPT_MAX_NAME - 1);
		nm[MN_CKPT_MAX_NAME - 1] = '\0';
		snprintf(hdr, sizeof(hdr),
		         "{\"%s\":{\"dtype\":\"U8\",\"shape\":[],"
		         "\"data_offsets\":[0,1]}}",
		         nm);
		expect_accept(hdr, 1);
		nm[MN_CKPT_MAX_NAME - 1] = 'n';
		nm[MN_CKPT_MAX_NAME] = '\0';
		snprintf(hdr, sizeof(hdr),
		         "{\"%s\":{\"dtype\":\"U8\",\"shape\":[],"
		         "\"data_offsets\":[0,1]}}",
		         nm);
		expect_reject(hdr, 1, "the limit is 255");
	}

	/* Header length beyond the limit, in a file large enough to hold it. */
	len = 8 + MN_CKPT_MAX_HEADER + 8;
	buf = calloc(1, len);
	ck_assert_ptr_nonnull(buf);
	put_le64(buf, MN_CKPT_MAX_HEADER + 1);
	expect_reject_buf(buf, len, 0, "exceeds the limit");
	free(buf);
}
END_TEST

START_TEST(test_checksum_and_require)
{
	static const struct mn_meta no_format[] = {{"global_step", "5"}};
	static const struct mn_meta bad_format[] = {{"format", "mnistd.checkpoint.v0"},
	                                            {"global_step", "5"}};
	static const struct mn_meta no_step[] = {{"format", MN_CKPT_FORMAT}};
	static const struct mn_meta bad_step[] = {{"format", MN_CKPT_FORMAT},
	                                          {"global_step", "05"}};
	char want[128], err[MN_ERRLEN];
	struct mn_ckpt *c = NULL;
	size_t len, hlen;
	uint8_t *buf;
	unsigned long good, bad;

	fill_sample();
	buf = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	hlen = (size_t)le64(buf);
	good = crc32(0L, buf + 8 + hlen, (uInt)(len - 8 - hlen));
	buf[len - 1] ^= 0x40;
	bad = crc32(0L, buf + 8 + hlen, (uInt)(len - 8 - hlen));
	snprintf(want, sizeof(want), NAME ": checksum mismatch: header says %08lx, data is %08lx",
	         good, bad);
	expect_reject_buf(buf, len, 0, want);
	free(buf);

	buf = encode(sample, NSAMPLE, no_format, 1, &len);
	expect_reject_buf(buf, len, MN_CKPT_REQUIRE_MNISTD, "no \"format\"");
	ck_assert_int_eq(mn_ckpt_parse(buf, len, NAME, 0, &c, err, sizeof(err)), 0);
	mn_ckpt_free(c);
	free(buf);
	buf = encode(sample, NSAMPLE, bad_format, 2, &len);
	expect_reject_buf(buf, len, MN_CKPT_REQUIRE_MNISTD, "unsupported format");
	free(buf);
	buf = encode(sample, NSAMPLE, no_step, 1, &len);
	expect_reject_buf(buf, len, MN_CKPT_REQUIRE_MNISTD, "no \"global_step\"");
	free(buf);
	buf = encode(sample, NSAMPLE, bad_step, 2, &len);
	expect_reject_buf(buf, len, MN_CKPT_REQUIRE_MNISTD, "global_step \"05\" is not a decimal");
	free(buf);

	/* A foreign safetensors file without data_crc32 passes only without the flag. */
	buf = make_file(
	    "{" T("a", "F32", "[1]", "[0,4]") ",\"__metadata__\":{\"format\":\"" MN_CKPT_FORMAT
	                                      "\",\"global_step\":\"1\"}}",
	    4, &len);
	expect_reject_buf(buf, len, MN_CKPT_REQUIRE_MNISTD, "no \"data_crc32\"");
	ck_assert_int_eq(mn_ckpt_parse(buf, len, NAME, 0, &c, err, sizeof(err)), 0);
	mn_ckpt_free(c);
	free(buf);
}
END_TEST

START_TEST(test_encode_rejects)
{
	static const struct mn_meta crc[] = {{"data_crc32", "00000000"}};
	static const struct mn_meta dup[] = {{"a", "1"}, {"a", "2"}};
	float v[2] = {0};
	struct mn_tensor t[2] = {
	    {.name = "a", .dtype = MN_DTYPE_F32, .ndim = 1, .shape = {2}, .data = v},
	    {.name = "a", .dtype = MN_DTYPE_F32, .ndim = 0, .data = v},
	};
	char err[MN_ERRLEN];
	uint8_t *buf = NULL;
	size_t len;

	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "duplicate tensor name \"a\""));
	t[1].name = "__metadata__";
	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), -EINVAL);
	t[1].name = "";
	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), -EINVAL);
	t[1].name = "b";
	t[1].data = NULL;
	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), -EINVAL);
	t[1].data = v;
	t[1].ndim = MN_CKPT_MAX_DIMS + 1;
	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), -EINVAL);
	t[1].ndim = 0;
	ck_assert_int_eq(mn_ckpt_encode(t, 2, crc, 1, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(mn_ckpt_encode(t, 2, dup, 2, &buf, &len, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_null(buf);
	ck_assert_int_eq(mn_ckpt_encode(t, 2, NULL, 0, &buf, &len, err, sizeof(err)), 0);
	free(buf);
}
END_TEST

START_TEST(test_copy)
{
	static const uint64_t ws[] = {3, 4}, bad[] = {3, 5}, flat[] = {12};
	char err[MN_ERRLEN] = "", small[100];
	struct mn_ckpt *c = NULL;
	float got[12];
	int64_t s = 0;
	size_t len;
	uint8_t *buf;

	fill_sample();
	buf = encode(sample, NSAMPLE, sample_meta, NMETA, &len);
	ck_assert_int_eq(mn_ckpt_parse(buf, len, NAME, 0, &c, err, sizeof(err)), 0);
	free(buf);

	ck_assert_int_eq(
	    mn_ckpt_copy(c, "layer1/weights", MN_DTYPE_F32, 2, ws, got, err, sizeof(err)), 0);
	ck_assert_int_eq(memcmp(got, w1, sizeof(w1)), 0);
	ck_assert_int_eq(
	    mn_ckpt_copy(c, "global_step", MN_DTYPE_I64, 0, NULL, &s, err, sizeof(err)), 0);
	ck_assert_int_eq(s, 3000);

	ck_assert_int_eq(mn_ckpt_copy(c, "v1_1", MN_DTYPE_F32, 2, ws, got, err, sizeof(err)),
	                 -ENOENT);
	ck_assert_str_eq(err, "tensor \"v1_1\" not found in " NAME
	                      " (it has: layer1/weights, layer1/biases, layer2/weights, empty, "
	                      "global_step, train/rng)");
	/* A list too long for the buffer still ends readably. */
	ck_assert_int_eq(mn_ckpt_copy(c, "v1_1", MN_DTYPE_F32, 2, ws, got, small, sizeof(small)),
	                 -ENOENT);
	ck_assert_msg(strstr(small, ", ...)") != NULL, "%s", small);
	ck_assert_uint_lt(strlen(small), sizeof(small));

	ck_assert_int_eq(
	    mn_ckpt_copy(c, "layer1/weights", MN_DTYPE_F32, 2, bad, got, err, sizeof(err)),
	    -EINVAL);
	ck_assert_str_eq(err, NAME ": tensor \"layer1/weights\" has shape [3, 4], expected [3, 5]");
	ck_assert_int_eq(
	    mn_ckpt_copy(c, "layer1/weights", MN_DTYPE_F32, 1, flat, got, err, sizeof(err)),
	    -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "[3, 4], expected [12]"));
	ck_assert_int_eq(
	    mn_ckpt_copy(c, "global_step", MN_DTYPE_F32, 0, NULL, &s, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, NAME ": tensor \"global_step\" has dtype I64, expected F32");
	mn_ckpt_free(c);

	/* An empty checkpoint says so. */
	buf = encode(NULL, 0, NULL, 0, &len);
	ck_assert_int_eq(mn_ckpt_parse(buf, len, "e", 0, &c, err, sizeof(err)), 0);
	free(buf);
	ck_assert_int_eq(mn_ckpt_copy(c, "x", MN_DTYPE_F32, 0, NULL, got, err, sizeof(err)),
	                 -ENOENT);
	ck_assert_str_eq(err, "tensor \"x\" not found in e (it has no tensors)");
	mn_ckpt_free(c);
}
END_TEST

START_TEST(test_shape_format)
{
	struct mn_tensor t = {.ndim = 2, .shape = {784, 500}};
	char buf[32], tiny[5];

	mn_shape_format(&t, buf, sizeof(buf));
	ck_assert_str_eq(buf, "[784, 500]");
	mn_shape_format(&t, tiny, sizeof(tiny));
	ck_assert_str_eq(tiny, "[784");
	t.ndim = 0;
	mn_shape_format(&t, buf, sizeof(buf));
	ck_assert_str_eq(buf, "[]");
	ck_assert_uint_eq(mn_tensor_elements(&t), 1);
}
END_TEST

START_TEST(test_dtypes)
{
	enum mn_dtype d;

	for (int i = MN_DTYPE_BOOL; i <= MN_DTYPE_F64; i++) {
		ck_assert_int_eq(mn_dtype_parse(mn_dtype_name((enum mn_dtype)i), &d), 0);
		ck_assert_int_eq(d, i);
	}
	ck_assert_uint_eq(mn_dtype_size(MN_DTYPE_BF16), 2);
	ck_assert_uint_eq(mn_dtype_size(MN_DTYPE_I64), 8);
	ck_assert_int_eq(mn_dtype_parse("F128", &d), -EINVAL);
	ck_assert_int_eq(mn_dtype_parse(NULL, &d), -EINVAL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ckpt");

	MN_TEST_ADD(mn_test_tcase(s, "format", NULL, NULL), test_roundtrip_encode,
	            test_roundtrip_write, test_read_fd, test_read_fd_reuse_borrows, test_layout,
	            test_alignment, test_dtypes, test_shape_format);
	MN_TEST_ADD(mn_test_tcase(s, "reject", NULL, NULL), test_truncate_every_length,
	            test_flip_every_byte, test_bad_headers, test_checksum_and_require,
	            test_encode_rejects, test_copy, reject_messages_never_show_file_bytes);
	return mn_test_run(s);
}
