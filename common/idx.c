/* idx.c - see idx.h. */
#include "idx.h"

#include "simd.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_TYPE_U8    0x08
#define IDX_HEADER_MAX (4 + 4 * 3)

/* The first allocation for elements; it doubles up to what the header promises. */
#define IDX_INITIAL_ALLOC ((size_t)16 << 20)

/* gzread() takes an unsigned length and returns an int, so big reads go in pieces. */
#define IDX_READ_CHUNK ((size_t)1 << 30)

/* zlib's default 8 KiB buffer means thousands of read(2) calls for a training file. */
#define IDX_GZ_BUFFER (128u * 1024u)

struct mn_dataset {
	uint8_t *images; /* count * rows * cols bytes */
	uint8_t *labels; /* count bytes */
	size_t count;
	size_t rows;
	size_t cols;
	uint8_t max_label;
};

/* The elements of one IDX file, owned by whoever holds the struct. */
struct idx_file {
	uint8_t *elems;
	size_t nbytes;
	uint32_t dims[3];
};

static const char *idx_what(int kind)
{
	return kind == 3 ? "images" : "labels";
}

static const char *idx_dim_name(int kind, int i)
{
	static const char *const image_dims[3] = {"image count", "rows", "cols"};

	return kind == 3 ? image_dims[i] : "label count";
}

static uint32_t idx_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static size_t idx_header_len(int kind)
{
	return 4 + 4 * (size_t)kind;
}

/*
 * The one place an IDX header is judged, for files and memory alike. hdr
 * holds the first have bytes of the file. Returns 0 when they contain a
 * complete, valid header (dims, *hdrlen and *nbytes are then set), a
 * positive count of header bytes still missing, or -EINVAL with a message.
 * Reporting what is missing lets the file loader read exactly the header
 * and nothing more before it knows how much data to expect.
 */
static int idx_check_header(const uint8_t *hdr, size_t have, int kind, const char *name,
                            uint32_t dims[3], size_t *hdrlen, size_t *nbytes, char *err,
                            size_t errlen)
{
	size_t need = idx_header_len(kind);
	uint64_t total = 1;
	char sizes[64];
	size_t off = 0;
	int i;

	if (have < 4)
		return (int)(4 - have);
	if (hdr[0] != 0 || hdr[1] != 0) {
		mn_errf(err, errlen,
		        "%s: not an IDX file (magic %02x %02x %02x %02x, expected 00 00 08 %02x)",
		        name, hdr[0], hdr[1], hdr[2], hdr[3], (unsigned)kind);
		return -EINVAL;
	}
	if (hdr[2] != IDX_TYPE_U8) {
		mn_errf(err, errlen, "%s: element type 0x%02x is not unsigned byte (0x08)", name,
		        hdr[2]);
		return -EINVAL;
	}
	if (hdr[3] != kind) {
		mn_errf(err, errlen, "%s: ndim is %u, expected %d for %s", name, hdr[3], kind,
		        idx_what(kind));
		return -EINVAL;
	}
	if (have < need)
		return (int)(need - have);

	for (i = 0; i < kind; i++) {
		dims[i] = idx_be32(hdr + 4 + 4 * i);
		if (dims[i] == 0) {
			mn_errf(err, errlen, "%s: %s is 0", name, idx_dim_name(kind, i));
			return -EINVAL;
		}
		off += (size_t)snprintf(sizes + off, sizeof(sizes) - off, "%s%u", i ? " x " : "",
		                        dims[i]);
	}
	/*
	 * Capping after every factor keeps the product below 2^31 * 2^32, so
	 * hostile sizes can never wrap the 64-bit arithmetic.
	 */
	for (i = 0; i < kind; i++) {
		total *= dims[i];
		if (total > MN_IDX_MAX_BYTES) {
			mn_errf(err, errlen,
			        "%s: too large: %s sizes %s exceed the limit of %zu bytes", name,
			        idx_what(kind), sizes, MN_IDX_MAX_BYTES);
			return -EINVAL;
		}
	}
	*hdrlen = need;
	*nbytes = (size_t)total;
	return 0;
}

static void idx_err_truncated(const char *name, int kind, size_t promised, size_t has, char *err,
                              size_t errlen)
{
	mn_errf(err, errlen, "%s: truncated: header promises %zu bytes of %s, file has %zu", name,
	        promised, idx_what(kind), has);
}

static void idx_err_short_header(const char *name, int kind, size_t has, char *err, size_t errlen)
{
	mn_errf(err, errlen,
	        "%s: truncated: the header of an IDX %s file is %zu bytes, file has %zu", name,
	        idx_what(kind), idx_header_len(kind), has);
}

int mn_idx_parse(const uint8_t *buf, size_t len, int kind, const char *name, uint32_t dims[3],
                 const uint8_t **elems, char *err, size_t errlen)
{
	size_t hdrlen = 0, nbytes = 0;
	int rc;

	if (!name)
		name = "(memory)";
	if (kind != 1 && kind != 3) {
		mn_errf(err, errlen, "%s: IDX kind %d is neither 1 (labels) nor 3 (images)", name,
		        kind);
		return -EINVAL;
	}
	if (!buf && len) {
		mn_errf(err, errlen, "%s: no buffer", name);
		return -EINVAL;
	}
	rc = idx_check_header(buf, len, kind, name, dims, &hdrlen, &nbytes, err, errlen);
	if (rc > 0) {
		idx_err_short_header(name, kind, len, err, errlen);
		return -EINVAL;
	}
	if (rc < 0)
		return rc;
	if (len - hdrlen < nbytes) {
		idx_err_truncated(name, kind, nbytes, len - hdrlen, err, errlen);
		return -EINVAL;
	}
	if (len - hdrlen > nbytes) {
		mn_errf(err, errlen, "%s: trailing data: %zu bytes after the %zu bytes of %s", name,
		        len - hdrlen - nbytes, nbytes, idx_what(kind));
		return -EINVAL;
	}
	*elems = buf + hdrlen;
	return 0;
}

/* Turns the error zlib recorded on gz into a message and an errno code. */
static int idx_gz_error(gzFile gz, const char *name, char *err, size_t errlen)
{
	size_t namelen = strlen(name);
	const char *msg;
	int zerr = Z_OK;

	msg = gzerror(gz, &zerr);
	if (!msg)
		msg = "unknown zlib error";
	/*
	 * zlib puts the path it was opened with in front; don't say it twice.
	 * Opened with gzdopen(), that "path" is "<fd:N>", which names nothing
	 * the user knows.
	 */
	if (strncmp(msg, name, namelen) == 0 && strncmp(msg + namelen, ": ", 2) == 0) {
		msg += namelen + 2;
	} else if (strncmp(msg, "<fd:", 4) == 0) {
		const char *end = strstr(msg, ">: ");

		if (end)
			msg = end + 3;
	}
	switch (zerr) {
	case Z_ERRNO:
		mn_errf(err, errlen, "%s: read error: %s", name, msg);
		return -EIO;
	case Z_MEM_ERROR:
		mn_errf(err, errlen, "%s: out of memory in zlib", name);
		return -ENOMEM;
	case Z_BUF_ERROR:
		mn_errf(err, errlen, "%s: truncated: compressed data ends early (%s)", name, msg);
		return -EINVAL;
	default:
		mn_errf(err, errlen, "%s: corrupt compressed data: %s", name, msg);
		return -EINVAL;
	}
}

/*
 * Reads up to len bytes; *got < len means the data ended. A gzip stream cut
 * short also just ends here (zlib returns what it has and records
 * Z_BUF_ERROR), so truncated gzip and plain files get the same message;
 * the caller checks gzerror() once the data should be complete.
 */
static int idx_read(gzFile gz, uint8_t *buf, size_t len, size_t *got, const char *name, char *err,
                    size_t errlen)
{
	*got = 0;
	while (*got < len) {
		size_t want = len - *got;
		int n;

		if (want > IDX_READ_CHUNK)
			want = IDX_READ_CHUNK;
		n = gzread(gz, buf + *got, (unsigned)want);
		if (n < 0)
			return idx_gz_error(gz, name, err, errlen);
		if (n == 0)
			break;
		*got += (size_t)n;
	}
	return 0;
}

/*
 * Loads one IDX file of the given kind. The header is read first and the
 * data buffer sized from it, so a hostile file can never make us grow a
 * buffer beyond what a valid header allows.
 */
/* Reads the header, as many bytes as it turns out to need; sets f->dims and *nbytes. */
static int idx_read_header(gzFile gz, const char *path, int kind, struct idx_file *f,
                           size_t *nbytes, char *err, size_t errlen)
{
	uint8_t hdr[IDX_HEADER_MAX];
	size_t have = 0, got = 0, hdrlen = 0;
	int rc;

	for (;;) {
		rc = idx_check_header(hdr, have, kind, path, f->dims, &hdrlen, nbytes, err, errlen);
		if (rc <= 0)
			return rc;
		rc = idx_read(gz, hdr + have, (size_t)rc, &got, path, err, errlen);
		if (rc < 0)
			return rc;
		if (got == 0) {
			idx_err_short_header(path, kind, have, err, errlen);
			return -EINVAL;
		}
		have += got;
	}
}

/*
 * Reads the nbytes of elements into a malloc'd *out, growing the buffer as
 * the data arrives instead of trusting the header's size up front: a 16-byte
 * file promising 2 GiB costs 16 MiB, not 2 GiB.
 */
static int idx_read_elements(gzFile gz, const char *path, int kind, size_t nbytes, uint8_t **out,
                             char *err, size_t errlen)
{
	uint8_t *elems = NULL, *grown;
	size_t cap = 0, filled = 0, got = 0, next;
	int rc;

	for (;;) {
		next = cap == 0 ? IDX_INITIAL_ALLOC : cap * 2;
		if (next > nbytes)
			next = nbytes;
		grown = realloc(elems, next ? next : 1);
		if (!grown) {
			mn_errf(err, errlen, "%s: out of memory for %zu bytes of %s", path, nbytes,
			        idx_what(kind));
			rc = -ENOMEM;
			goto fail;
		}
		elems = grown;
		cap = next;
		rc = idx_read(gz, elems + filled, cap - filled, &got, path, err, errlen);
		if (rc < 0)
			goto fail;
		filled += got;
		if (filled < cap) {
			idx_err_truncated(path, kind, nbytes, filled, err, errlen);
			rc = -EINVAL;
			goto fail;
		}
		if (filled == nbytes)
			break;
	}
	*out = elems;
	return 0;
fail:
	free(elems);
	return rc;
}

/* Nothing may follow the elements, and a gzip stream must end cleanly. */
static int idx_check_end(gzFile gz, const char *path, int kind, size_t nbytes, char *err,
                         size_t errlen)
{
	uint8_t extra;
	size_t got = 0;
	int rc, zerr = Z_OK;

	rc = idx_read(gz, &extra, 1, &got, path, err, errlen);
	if (rc < 0)
		return rc;
	if (got != 0) {
		mn_errf(err, errlen, "%s: trailing data after the %zu bytes of %s", path, nbytes,
		        idx_what(kind));
		return -EINVAL;
	}
	/* A gzip file cut off in its trailer yields all the data, then no clean end. */
	gzerror(gz, &zerr);
	return zerr != Z_OK ? idx_gz_error(gz, path, err, errlen) : 0;
}

static int idx_load_file(const char *path, int kind, struct idx_file *f, char *err, size_t errlen)
{
	size_t nbytes = 0;
	uint8_t *elems = NULL;
	gzFile gz;
	int fd, rc, zerr;

	/* Never gzopen(path): a FIFO in data.dir would block it forever. */
	fd = mn_open_regular(path, 0, NULL, err, errlen);
	if (fd < 0)
		return fd;
	gz = gzdopen(fd, "rb");
	if (!gz) {
		close(fd);
		mn_errf(err, errlen, "%s: cannot open: out of memory", path);
		return -ENOMEM;
	}
	if (gzbuffer(gz, IDX_GZ_BUFFER) != 0) {
		mn_errf(err, errlen, "%s: cannot set the zlib buffer size", path);
		rc = -EIO;
		goto fail;
	}
	if ((rc = idx_read_header(gz, path, kind, f, &nbytes, err, errlen)) < 0 ||
	    (rc = idx_read_elements(gz, path, kind, nbytes, &elems, err, errlen)) < 0 ||
	    (rc = idx_check_end(gz, path, kind, nbytes, err, errlen)) < 0)
		goto fail;
	zerr = gzclose(gz);
	gz = NULL;
	if (zerr != Z_OK) {
		mn_errf(err, errlen, "%s: closing failed (zlib error %d)", path, zerr);
		rc = zerr == Z_BUF_ERROR ? -EINVAL : -EIO;
		goto fail;
	}
	f->elems = elems;
	f->nbytes = nbytes;
	return 0;

fail:
	if (gz)
		gzclose(gz);
	free(elems);
	return rc;
}

/* Builds the data set, taking the buffers of img and lab on success. */
static int idx_assemble(struct idx_file *img, const char *img_name, struct idx_file *lab,
                        const char *lab_name, struct mn_dataset **out, char *err, size_t errlen)
{
	struct mn_dataset *ds;
	uint8_t max = 0;
	size_t i;

	if (img->dims[0] != lab->dims[0]) {
		mn_errf(err, errlen, "%s has %u images but %s has %u labels", img_name,
		        img->dims[0], lab_name, lab->dims[0]);
		return -EINVAL;
	}
	ds = calloc(1, sizeof(*ds));
	if (!ds) {
		mn_errf(err, errlen, "%s: out of memory", img_name);
		return -ENOMEM;
	}
	for (i = 0; i < lab->nbytes; i++)
		if (lab->elems[i] > max)
			max = lab->elems[i];
	ds->images = img->elems;
	ds->labels = lab->elems;
	ds->count = img->dims[0];
	ds->rows = img->dims[1];
	ds->cols = img->dims[2];
	ds->max_label = max;
	img->elems = NULL;
	lab->elems = NULL;
	*out = ds;
	return 0;
}

int mn_dataset_load(const char *images_path, const char *labels_path, struct mn_dataset **out,
                    char *err, size_t errlen)
{
	struct idx_file img = {0}, lab = {0};
	int rc;

	if (!images_path || !labels_path || !out) {
		mn_errf(err, errlen, "mn_dataset_load: missing argument");
		return -EINVAL;
	}
	*out = NULL;
	rc = idx_load_file(images_path, 3, &img, err, errlen);
	if (rc < 0)
		goto fail;
	rc = idx_load_file(labels_path, 1, &lab, err, errlen);
	if (rc < 0)
		goto fail;
	rc = idx_assemble(&img, images_path, &lab, labels_path, out, err, errlen);

fail:
	free(img.elems);
	free(lab.elems);
	return rc;
}

int mn_dataset_load_images(const char *images_path, struct mn_dataset **out, char *err,
                           size_t errlen)
{
	struct idx_file img = {0};
	struct mn_dataset *ds;
	int rc;

	if (!images_path || !out) {
		mn_errf(err, errlen, "mn_dataset_load_images: missing argument");
		return -EINVAL;
	}
	*out = NULL;
	rc = idx_load_file(images_path, 3, &img, err, errlen);
	if (rc < 0)
		return rc;
	ds = calloc(1, sizeof(*ds));
	if (!ds) {
		mn_errf(err, errlen, "%s: out of memory", images_path);
		free(img.elems);
		return -ENOMEM;
	}
	ds->images = img.elems;
	ds->count = img.dims[0];
	ds->rows = img.dims[1];
	ds->cols = img.dims[2];
	*out = ds;
	return 0;
}

/*
 * Loads "<dir>/<set>-<stem>-ubyte.gz", or the name without .gz when that
 * does not exist. path receives the name actually loaded.
 */
static int idx_load_either(const char *dir, const char *set, const char *stem, int kind,
                           struct idx_file *f, char *path, size_t pathlen, char *err, size_t errlen)
{
	char gzpath[PATH_MAX];
	int n, rc;

	n = snprintf(gzpath, sizeof(gzpath), "%s/%s-%s-ubyte.gz", dir, set, stem);
	if (n < 0 || (size_t)n >= sizeof(gzpath) || (size_t)n >= pathlen) {
		mn_errf(err, errlen, "%s: path too long", dir);
		return -ENAMETOOLONG;
	}
	memcpy(path, gzpath, (size_t)n + 1);
	rc = idx_load_file(gzpath, kind, f, err, errlen);
	if (rc != -ENOENT)
		return rc;
	path[n - 3] = '\0';
	rc = idx_load_file(path, kind, f, err, errlen);
	if (rc == -ENOENT)
		mn_errf(err, errlen, "no %s file: neither %s nor %s exists", idx_what(kind), gzpath,
		        path);
	return rc;
}

int mn_dataset_load_dir(const char *dir, const char *set, struct mn_dataset **out, char *err,
                        size_t errlen)
{
	struct idx_file img = {0}, lab = {0};
	char img_path[PATH_MAX], lab_path[PATH_MAX];
	int rc;

	if (!dir || !set || !*set || strchr(set, '/') || !out) {
		mn_errf(err, errlen, "mn_dataset_load_dir: bad directory or set name");
		return -EINVAL;
	}
	*out = NULL;
	rc = idx_load_either(dir, set, "images-idx3", 3, &img, img_path, sizeof(img_path), err,
	                     errlen);
	if (rc < 0)
		goto fail;
	rc = idx_load_either(dir, set, "labels-idx1", 1, &lab, lab_path, sizeof(lab_path), err,
	                     errlen);
	if (rc < 0)
		goto fail;
	rc = idx_assemble(&img, img_path, &lab, lab_path, out, err, errlen);

fail:
	free(img.elems);
	free(lab.elems);
	return rc;
}

void mn_dataset_free(struct mn_dataset *ds)
{
	if (!ds)
		return;
	free(ds->images);
	free(ds->labels);
	free(ds);
}

size_t mn_dataset_count(const struct mn_dataset *ds)
{
	return ds ? ds->count : 0;
}

size_t mn_dataset_rows(const struct mn_dataset *ds)
{
	return ds ? ds->rows : 0;
}

size_t mn_dataset_cols(const struct mn_dataset *ds)
{
	return ds ? ds->cols : 0;
}

uint8_t mn_dataset_max_label(const struct mn_dataset *ds)
{
	return ds ? ds->max_label : 0;
}

struct mn_view mn_dataset_all(const struct mn_dataset *ds)
{
	struct mn_view v = {0};

	if (!ds)
		return v;
	v.images = ds->images;
	v.labels = ds->labels;
	v.count = ds->count;
	v.dim = ds->rows * ds->cols;
	return v;
}

int mn_dataset_split(const struct mn_dataset *ds, size_t validation_size, struct mn_view *train,
                     struct mn_view *validation, char *err, size_t errlen)
{
	struct mn_view all;

	if (!ds) {
		mn_errf(err, errlen, "mn_dataset_split: no data set");
		return -EINVAL;
	}
	if (validation_size >= ds->count) {
		mn_errf(err, errlen,
		        "validation_size %zu leaves no training examples (the data set has %zu)",
		        validation_size, ds->count);
		return -EINVAL;
	}
	all = mn_dataset_all(ds);
	if (validation) {
		*validation = all;
		validation->count = validation_size;
	}
	if (train) {
		*train = all;
		train->images = all.images + validation_size * all.dim;
		train->labels = all.labels ? all.labels + validation_size : NULL;
		train->count = all.count - validation_size;
	}
	return 0;
}

/*
 * restrict lets the compiler vectorise the conversion: uint8_t is a
 * character type and would otherwise be assumed to alias the floats.
 * Division (not multiplication by 1/255) keeps the values bit-identical
 * to p / 255.0f as other implementations compute them.
 */
MN_SIMD_CLONES static void idx_scale(float *restrict dst, const uint8_t *restrict src, size_t n)
{
	size_t j;

	/* Vectorised even at -O2: the training step converts every batch here. */
#pragma omp simd
	for (j = 0; j < n; j++)
		dst[j] = (float)src[j] / 255.0f;
}

void mn_view_gather(const struct mn_view *v, const uint32_t *indices, size_t n, float *x,
                    uint8_t *y)
{
	const size_t dim = v->dim;
	size_t i;

	for (i = 0; i < n; i++) {
		size_t k = indices[i];

		/*
		 * The rows are scattered over the whole data set, so each one is a
		 * cache miss the hardware cannot predict: ask for the next row while
		 * this one is converted.
		 */
		if (i + 1 < n) {
			const uint8_t *next = v->images + (size_t)indices[i + 1] * dim;

			for (size_t off = 0; off < dim; off += 64)
				__builtin_prefetch(next + off);
		}
		idx_scale(x + i * dim, v->images + k * dim, dim);
		if (v->labels)
			y[i] = v->labels[k];
	}
}

int mn_view_scale(const struct mn_view *v, float **out)
{
	size_t n;
	float *x;

	*out = NULL;
	if (v->dim != 0 && v->count > SIZE_MAX / sizeof(float) / v->dim)
		return -ENOMEM;
	n = v->count * v->dim;
	x = malloc((n != 0 ? n : 1) * sizeof(float));
	if (!x)
		return -ENOMEM;
	idx_scale(x, v->images, n);
	*out = x;
	return 0;
}

void mn_view_range(const struct mn_view *v, size_t first, size_t n, float *x, uint8_t *y)
{
	if (n == 0)
		return;
	idx_scale(x, v->images + first * v->dim, n * v->dim);
	if (v->labels)
		memcpy(y, v->labels + first, n);
}
