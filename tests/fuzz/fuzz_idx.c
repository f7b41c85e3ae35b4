/*
 * fuzz_idx.c - libFuzzer target for the IDX readers: mn_idx_parse on memory,
 * and the file loader (plain and gzip) on the same bytes.
 *
 * Built by meson with -Dfuzzing=true (see tests/fuzz/meson.build); run by
 * scripts/fuzz.sh. Besides "never crash, never leak", it checks that
 *  - whatever mn_idx_parse accepts has a valid magic, non-zero sizes whose
 *    product is exactly the bytes after the header, and elements that start
 *    right after the header;
 *  - the file loader agrees with mn_idx_parse on every input, accepting the
 *    same files with the same sizes and bytes, whether the file is plain or
 *    gzip-compressed;
 *  - a gzip file cut short anywhere is rejected.
 */
#include "idx.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The file loader allocates what a valid header promises (up to 2 GiB)
 * before reading; that is its design, but it would trip libFuzzer's malloc
 * limit, so inputs promising more than this skip the file comparison.
 */
#define FILE_PROMISE_MAX ((uint64_t)1 << 20)

/* Files live in memfds, named through /proc so the loader can open them by path. */
static int memfd[2] = {-1, -1};

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Replaces the contents of memfd[i] and writes its path into path. */
static void put_file(int i, const void *buf, size_t len, char *path, size_t pathlen)
{
	const char *p = buf;

	if (memfd[i] < 0) {
		memfd[i] = memfd_create("fuzz_idx", MFD_CLOEXEC);
		if (memfd[i] < 0)
			abort();
	}
	if (ftruncate(memfd[i], 0) != 0)
		abort();
	for (size_t off = 0; off < len;) {
		ssize_t n = pwrite(memfd[i], p + off, len - off, (off_t)off);

		if (n <= 0)
			abort();
		off += (size_t)n;
	}
	snprintf(path, pathlen, "/proc/self/fd/%d", memfd[i]);
}

/* gzip-compresses buf into a malloc'd buffer; aborts only on allocation failure. */
static uint8_t *gzip(const uint8_t *buf, size_t len, size_t *outlen)
{
	z_stream z;
	uint8_t *out;
	size_t cap;

	memset(&z, 0, sizeof(z));
	/* The smallest window and memory: only zlib's reading side is under test. */
	if (deflateInit2(&z, 1, Z_DEFLATED, 9 + 16, 1, Z_DEFAULT_STRATEGY) != Z_OK)
		abort();
	cap = deflateBound(&z, (uLong)len) + 64;
	out = malloc(cap);
	if (!out)
		abort();
	z.next_in = (Bytef *)(uintptr_t)buf;
	z.avail_in = (uInt)len;
	z.next_out = out;
	z.avail_out = (uInt)cap;
	if (deflate(&z, Z_FINISH) != Z_STREAM_END)
		abort();
	*outlen = cap - z.avail_out;
	deflateEnd(&z);
	return out;
}

/* The element bytes a header at the start of buf would promise, or 0 if it promises nothing. */
static uint64_t promised(const uint8_t *buf, size_t len, int kind)
{
	uint64_t total = 1;

	if (len < 4 + 4 * (size_t)kind)
		return 0;
	for (int i = 0; i < kind; i++) {
		total *= be32(buf + 4 + 4 * i);
		if (total > FILE_PROMISE_MAX)
			return UINT64_MAX;
	}
	return total;
}

/*
 * The first bytes a gzip reader gets out of buf (up to len of them), as
 * gzread would: member after member. Enough to learn what its header
 * promises without inflating it all.
 */
static size_t gunzip_head(const uint8_t *buf, size_t size, uint8_t *out, size_t len)
{
	z_stream z;
	size_t got = 0;

	memset(&z, 0, sizeof(z));
	if (inflateInit2(&z, 15 + 16) != Z_OK)
		abort();
	z.next_in = (Bytef *)(uintptr_t)buf;
	z.avail_in = (uInt)size;
	while (got < len && z.avail_in > 0) {
		int zrc;

		z.next_out = out + got;
		z.avail_out = (uInt)(len - got);
		zrc = inflate(&z, Z_SYNC_FLUSH);
		got = len - z.avail_out;
		if (zrc == Z_STREAM_END)
			inflateReset(&z);
		else if (zrc != Z_OK)
			break;
	}
	inflateEnd(&z);
	return got;
}

/* Checks mn_idx_parse on one kind; returns its result and fills dims/elems. */
static int check_parse(const uint8_t *data, size_t size, int kind, uint32_t dims[3],
                       const uint8_t **elems)
{
	char err[MN_ERRLEN] = "";
	uint64_t total = 1;
	int rc;

	*elems = NULL;
	rc = mn_idx_parse(data, size, kind, "fuzz", dims, elems, err, sizeof(err));
	if (rc != 0) {
		/* A rejection is -EINVAL and names the input. */
		if (rc != -EINVAL || strncmp(err, "fuzz: ", 6) != 0 || err[6] == '\0')
			abort();
		return rc;
	}
	if (size < 4 || data[0] != 0 || data[1] != 0 || data[2] != 0x08 || data[3] != kind)
		abort();
	if (*elems != data + 4 + 4 * kind)
		abort();
	for (int i = 0; i < kind; i++) {
		if (dims[i] == 0 || dims[i] != be32(data + 4 + 4 * i))
			abort();
		total *= dims[i];
	}
	if (total > MN_IDX_MAX_BYTES || total != size - (4 + 4 * (size_t)kind))
		abort();
	return 0;
}

/* parse_rc for a file whose contents mn_idx_parse has not seen: only sanity is checked. */
#define UNJUDGED 1

/*
 * Loads the file at path as images (kind 3) or, with a matching image file
 * in front of it, as labels (kind 1), and checks the loader says what
 * mn_idx_parse said about the same bytes.
 */
static void check_load(const char *path, int kind, int parse_rc, const uint32_t dims[3],
                       const uint8_t *elems)
{
	char err[MN_ERRLEN] = "", images[64];
	struct mn_dataset *ds = NULL;
	struct mn_view v;
	uint8_t *img = NULL;
	int rc;

	if (kind == 3) {
		rc = mn_dataset_load_images(path, &ds, err, sizeof(err));
	} else {
		/* count x 1 x 1 images, so the counts agree whenever the labels are valid. */
		uint32_t count = parse_rc == 0 ? dims[0] : 1;

		img = calloc(1, 16 + (size_t)count);
		if (!img)
			abort();
		img[2] = 0x08;
		img[3] = 3;
		put_be32(img + 4, count);
		put_be32(img + 8, 1);
		put_be32(img + 12, 1);
		put_file(1, img, 16 + (size_t)count, images, sizeof(images));
		rc = mn_dataset_load(images, path, &ds, err, sizeof(err));
	}
	if (parse_rc != UNJUDGED && (rc == 0) != (parse_rc == 0))
		abort();
	if (rc != 0) {
		if (ds != NULL || strncmp(err, "/proc/self/fd/", 14) != 0)
			abort();
		goto out;
	}
	v = mn_dataset_all(ds);
	if (parse_rc == UNJUDGED) {
		if (v.count == 0 || v.dim == 0 || v.count * v.dim > MN_IDX_MAX_BYTES)
			abort();
	} else if (kind == 3) {
		if (mn_dataset_count(ds) != dims[0] || mn_dataset_rows(ds) != dims[1] ||
		    mn_dataset_cols(ds) != dims[2] || v.dim != (size_t)dims[1] * dims[2] ||
		    v.labels != NULL || memcmp(v.images, elems, v.count * v.dim) != 0)
			abort();
	} else {
		uint8_t max = 0;

		for (size_t i = 0; i < dims[0]; i++)
			max = elems[i] > max ? elems[i] : max;
		if (mn_dataset_count(ds) != dims[0] || v.labels == NULL ||
		    memcmp(v.labels, elems, dims[0]) != 0 || mn_dataset_max_label(ds) != max)
			abort();
	}
out:
	mn_dataset_free(ds);
	free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	uint32_t dims[3];
	const uint8_t *elems;

	for (int kind = 1; kind <= 3; kind += 2) {
		uint8_t *gz;
		size_t gzlen, cut;
		int rc = check_parse(data, size, kind, dims, &elems);

		if (promised(data, size, kind) > FILE_PROMISE_MAX)
			continue;
		/*
		 * zlib reads a gzip stream through, so a file that is one is
		 * not the bytes mn_idx_parse saw: it is loaded unjudged, if
		 * what it decompresses to promises little enough.
		 */
		put_file(0, data, size, path, sizeof(path));
		if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
			uint8_t head[16];
			size_t n = gunzip_head(data, size, head, sizeof(head));

			if (promised(head, n, kind) <= FILE_PROMISE_MAX)
				check_load(path, kind, UNJUDGED, dims, elems);
		} else {
			check_load(path, kind, rc, dims, elems);
		}

		gz = gzip(data, size, &gzlen);
		put_file(0, gz, gzlen, path, sizeof(path));
		check_load(path, kind, rc, dims, elems);

		/* Cut anywhere before its end, a gzip file is incomplete. */
		cut = size ? data[size - 1] * gzlen / 256 : 0;
		put_file(0, gz, cut, path, sizeof(path));
		check_load(path, kind, -EINVAL, dims, elems);
		free(gz);
	}
	return 0;
}
