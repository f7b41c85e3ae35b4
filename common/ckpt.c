/* ckpt.c - see ckpt.h. */
#include "ckpt.h"

#include "json.h"

#include "util.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

/*
 * JSON numbers are doubles in most readers (cJSON, Python, JavaScript), so
 * only integers up to 2^53 mean the same thing everywhere.
 */
#define MAX_JSON_INT ((uint64_t)1 << 53)

#define METADATA_KEY "__metadata__"

struct mn_ckpt {
	uint8_t *buf; /* the whole file */
	size_t len;
	bool borrowed; /* buf is the caller's (mn_ckpt_read_fd_reuse) */
	char *name;
	struct mn_tensor *tensors; /* in data-buffer order */
	size_t ntensors;
	struct mn_meta *meta; /* in header order */
	size_t nmeta;
	char *strings; /* arena for name, tensor names and metadata */
};

static const struct {
	const char *name;
	size_t size;
} dtypes[] = {
    [MN_DTYPE_BOOL] = {"BOOL", 1}, [MN_DTYPE_U8] = {"U8", 1},   [MN_DTYPE_I8] = {"I8", 1},
    [MN_DTYPE_U16] = {"U16", 2},   [MN_DTYPE_I16] = {"I16", 2}, [MN_DTYPE_F16] = {"F16", 2},
    [MN_DTYPE_BF16] = {"BF16", 2}, [MN_DTYPE_U32] = {"U32", 4}, [MN_DTYPE_I32] = {"I32", 4},
    [MN_DTYPE_F32] = {"F32", 4},   [MN_DTYPE_U64] = {"U64", 8}, [MN_DTYPE_I64] = {"I64", 8},
    [MN_DTYPE_F64] = {"F64", 8},
};

#define NDTYPES (sizeof(dtypes) / sizeof(dtypes[0]))

const char *mn_dtype_name(enum mn_dtype d)
{
	return (unsigned)d < NDTYPES ? dtypes[d].name : "?";
}

size_t mn_dtype_size(enum mn_dtype d)
{
	return (unsigned)d < NDTYPES ? dtypes[d].size : 0;
}

int mn_dtype_parse(const char *name, enum mn_dtype *d)
{
	if (!name)
		return -EINVAL;
	for (size_t i = 0; i < NDTYPES; i++) {
		if (strcmp(name, dtypes[i].name) == 0) {
			*d = (enum mn_dtype)i;
			return 0;
		}
	}
	return -EINVAL;
}

uint64_t mn_tensor_elements(const struct mn_tensor *t)
{
	uint64_t n = 1;

	for (size_t i = 0; i < t->ndim && i < MN_CKPT_MAX_DIMS; i++) {
		/* Saturate rather than wrap: only unvalidated tensors can get here. */
		if (t->shape[i] != 0 && n > UINT64_MAX / t->shape[i])
			return UINT64_MAX;
		n *= t->shape[i];
	}
	return n;
}

void mn_shape_format(const struct mn_tensor *t, char *buf, size_t len)
{
	size_t pos = 0;
	int w;

	if (!buf || len == 0)
		return;
	buf[0] = '\0';
	w = snprintf(buf, len, "[");
	for (size_t i = 0; i < t->ndim && i < MN_CKPT_MAX_DIMS && w >= 0; i++) {
		pos += (size_t)w;
		if (pos >= len)
			return;
		w = snprintf(buf + pos, len - pos, "%s%" PRIu64, i ? ", " : "", t->shape[i]);
	}
	if (w < 0)
		return;
	pos += (size_t)w;
	if (pos < len)
		snprintf(buf + pos, len - pos, "]");
}

/*
 * Byte count of a tensor, multiplying left to right and failing on
 * overflow even if a later dimension is 0: the safetensors reference reader
 * does the same, and files must mean the same to both.
 */
static bool tensor_bytes(enum mn_dtype dtype, size_t ndim, const uint64_t *shape, uint64_t *out)
{
	uint64_t n = 1, size = mn_dtype_size(dtype);

	for (size_t i = 0; i < ndim; i++) {
		if (shape[i] != 0 && n > UINT64_MAX / shape[i])
			return false;
		n *= shape[i];
	}
	if (n > UINT64_MAX / size || n * size > SIZE_MAX)
		return false;
	*out = n * size;
	return true;
}

/* Formats "<name>: <message>" into err and returns rc, so checks read as one line. */
static int fail(char *err, size_t errlen, const char *name, int rc, const char *fmt, ...)
    MN_PRINTF(5, 6);

static int fail(char *err, size_t errlen, const char *name, int rc, const char *fmt, ...)
{
	char msg[MN_ERRLEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	mn_errf(err, errlen, "%s: %s", name, msg);
	return rc;
}

static void describe_json(const cJSON *j, char *buf, size_t len)
{
	if (cJSON_IsNumber(j))
		snprintf(buf, len, "%.17g", j->valuedouble);
	else if (cJSON_IsString(j))
		snprintf(buf, len, "a string");
	else if (cJSON_IsArray(j))
		snprintf(buf, len, "an array");
	else if (cJSON_IsObject(j))
		snprintf(buf, len, "an object");
	else if (cJSON_IsBool(j))
		snprintf(buf, len, "a boolean");
	else
		snprintf(buf, len, "null");
}

/* A tensor while parsing: name points into the cJSON tree until copied out. */
struct entry {
	struct mn_tensor t;
	uint64_t begin, end;
	size_t order;
};

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return x->order < y->order ? -1 : (x->order > y->order);
}

/* A JSON array (the caller checked the type) of at most max integers in [0, 2^53]. */
static int parse_uint_list(const cJSON *arr, const char *what, const char *tname, uint64_t *vals,
                           size_t *count, size_t max, const char *name, char *err, size_t errlen)
{
	size_t n = 0;
	const cJSON *v;

	cJSON_ArrayForEach(v, arr)
	{
		char desc[64];
		int64_t x;

		if (n >= max)
			return fail(err, errlen, name, -EINVAL,
			            "tensor \"%s\": %s has more than %zu entries", tname, what,
			            max);
		if (!mn_json_get_int(v, 0, (int64_t)MAX_JSON_INT, &x)) {
			describe_json(v, desc, sizeof(desc));
			return fail(err, errlen, name, -EINVAL,
			            "tensor \"%s\": %s[%zu] is %s, not an integer in [0, 2^53]",
			            tname, what, n, desc);
		}
		vals[n++] = (uint64_t)x;
	}
	*count = n;
	return 0;
}

/* data_offsets against the dtype, the shape and the data buffer; *need is the byte count. */
static int check_offsets(const struct entry *e, const char *tn, size_t dlen, uint64_t *need,
                         const char *name, char *err, size_t errlen)
{
	char sbuf[256];

	mn_shape_format(&e->t, sbuf, sizeof(sbuf));
	if (e->end < e->begin)
		return fail(err, errlen, name, -EINVAL,
		            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
		            "] end before they begin",
		            tn, e->begin, e->end);
	if (!tensor_bytes(e->t.dtype, e->t.ndim, e->t.shape, need))
		return fail(err, errlen, name, -EINVAL,
		            "tensor \"%s\": %s %s has too many elements (size overflows)", tn,
		            mn_dtype_name(e->t.dtype), sbuf);
	if (e->end - e->begin != *need)
		return fail(err, errlen, name, -EINVAL,
		            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
		            " bytes but %s %s needs %" PRIu64,
		            tn, e->begin, e->end, e->end - e->begin, mn_dtype_name(e->t.dtype),
		            sbuf, *need);
	if (e->end > dlen)
		return fail(err, errlen, name, -EINVAL,
		            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
		            "] out of bounds of the %zu-byte data buffer (is the file truncated?)",
		            tn, e->begin, e->end, dlen);
	return 0;
}

static int parse_tensor(const cJSON *m, struct entry *e, size_t dlen, const char *name, char *err,
                        size_t errlen)
{
	const char *tn = m->string;
	const cJSON *dtype, *shape, *offs;
	const struct mn_json_member members[] = {
	    {"dtype", cJSON_String, true, &dtype},
	    {"shape", cJSON_Array, true, &shape},
	    {"data_offsets", cJSON_Array, true, &offs},
	};
	enum mn_json_fault fault;
	const char *bad;
	uint64_t off[2], need = 0;
	size_t noff = 0, tlen = strlen(tn);
	int rc;

	if (tlen == 0)
		return fail(err, errlen, name, -EINVAL, "tensor with an empty name");
	if (tlen >= MN_CKPT_MAX_NAME)
		return fail(err, errlen, name, -EINVAL,
		            "tensor name \"%.40s...\" is %zu bytes, the limit is %d", tn, tlen,
		            MN_CKPT_MAX_NAME - 1);
	if (!cJSON_IsObject(m))
		return fail(err, errlen, name, -EINVAL, "tensor \"%s\": entry is not an object",
		            tn);
	if (mn_json_members(m, members, 3, false, &fault, &bad) < 0) {
		if (fault == MN_JSON_UNKNOWN)
			return fail(err, errlen, name, -EINVAL,
			            "tensor \"%s\": unexpected member \"%.64s\"", tn, bad);
		if (fault == MN_JSON_DUPLICATE)
			return fail(err, errlen, name, -EINVAL,
			            "tensor \"%s\": duplicate member \"%s\"", tn, bad);
		if (fault == MN_JSON_MISSING)
			return fail(err, errlen, name, -EINVAL, "tensor \"%s\": missing \"%s\"", tn,
			            bad);
		return fail(
		    err, errlen, name, -EINVAL, "tensor \"%s\": %s is not %s", tn, bad,
		    mn_json_type_name(strcmp(bad, "dtype") == 0 ? cJSON_String : cJSON_Array));
	}
	if (mn_dtype_parse(dtype->valuestring, &e->t.dtype) < 0)
		return fail(err, errlen, name, -EINVAL, "tensor \"%s\": unknown dtype \"%.32s\"",
		            tn, dtype->valuestring);
	rc = parse_uint_list(shape, "shape", tn, e->t.shape, &e->t.ndim, MN_CKPT_MAX_DIMS, name,
	                     err, errlen);
	if (rc < 0)
		return rc;
	rc = parse_uint_list(offs, "data_offsets", tn, off, &noff, 2, name, err, errlen);
	if (rc < 0)
		return rc;
	if (noff != 2)
		return fail(err, errlen, name, -EINVAL,
		            "tensor \"%s\": data_offsets has %zu entries, not [BEGIN, END]", tn,
		            noff);
	e->begin = off[0];
	e->end = off[1];
	rc = check_offsets(e, tn, dlen, &need, name, err, errlen);
	if (rc < 0)
		return rc;
	e->t.name = tn;
	e->t.nbytes = (size_t)need;
	return 0;
}

bool mn_ckpt_parse_step(const char *s, size_t n, int64_t *step)
{
	int64_t v = 0;

	if (n == 0 || (s[0] == '0' && n > 1))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		if (v > (INT64_MAX - (s[i] - '0')) / 10)
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*step = v;
	return true;
}

static uint32_t crc32_buf(uint32_t crc, const uint8_t *p, size_t n)
{
	/* zlib's crc32() takes a uInt length; feed large buffers in pieces. */
	while (n > 0) {
		uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;

		crc = (uint32_t)crc32(crc, p, chunk);
		p += chunk;
		n -= chunk;
	}
	return crc;
}

static bool is_crc_text(const char *s)
{
	if (strlen(s) != 8)
		return false;
	for (int i = 0; i < 8; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static const cJSON *meta_get(const cJSON *md, const char *key)
{
	return md ? cJSON_GetObjectItemCaseSensitive(md, key) : NULL;
}

static int check_metadata(const cJSON *md, const uint8_t *data, size_t dlen, unsigned flags,
                          const char *name, char *err, size_t errlen)
{
	const cJSON *crc = meta_get(md, MN_META_DATA_CRC32);

	if (flags & MN_CKPT_REQUIRE_MNISTD) {
		const cJSON *fmt = meta_get(md, MN_META_FORMAT),
		            *step = meta_get(md, MN_META_GLOBAL_STEP);
		int64_t s;

		if (!fmt)
			return fail(err, errlen, name, -EINVAL,
			            "not an mnistd checkpoint: __metadata__ has no \"format\"");
		if (strcmp(fmt->valuestring, MN_CKPT_FORMAT) != 0)
			return fail(err, errlen, name, -EINVAL,
			            "unsupported format \"%.64s\" (expected \"%s\")",
			            fmt->valuestring, MN_CKPT_FORMAT);
		if (!crc)
			return fail(err, errlen, name, -EINVAL, "__metadata__ has no \"%s\"",
			            MN_META_DATA_CRC32);
		if (!step)
			return fail(err, errlen, name, -EINVAL,
			            "__metadata__ has no \"global_step\"");
		if (!mn_ckpt_parse_step(step->valuestring, strlen(step->valuestring), &s))
			return fail(err, errlen, name, -EINVAL,
			            "__metadata__ global_step \"%.32s\" is not a decimal",
			            step->valuestring);
	}
	if (crc) {
		uint32_t have;

		if (!is_crc_text(crc->valuestring))
			return fail(err, errlen, name, -EINVAL,
			            "__metadata__ %s \"%.32s\" is not 8 lowercase hex digits",
			            MN_META_DATA_CRC32, crc->valuestring);
		have = crc32_buf((uint32_t)crc32(0L, Z_NULL, 0), data, dlen);
		if (strtoul(crc->valuestring, NULL, 16) != have)
			return fail(err, errlen, name, -EINVAL,
			            "checksum mismatch: header says %s, data is %08" PRIx32,
			            crc->valuestring, have);
	}
	return 0;
}

static char *arena_put(char **p, const char *s)
{
	size_t n = strlen(s) + 1;
	char *r = *p;

	memcpy(r, s, n);
	*p += n;
	return r;
}

/* What the stages of parse_impl hand on to each other. */
struct parse {
	const char *name; /* starts every message */
	char *err;
	size_t errlen;
	size_t hlen;         /* header length as stored (with padding) */
	const uint8_t *data; /* the data buffer */
	size_t dlen;
	const char *text; /* the header without padding (not NUL-terminated) */
	size_t tlen;
	cJSON *root;
	struct entry *ents; /* tensors, sorted by offset after check_layout */
	size_t nt;
	const cJSON *md; /* __metadata__, or NULL */
	size_t nm;
};

/* Stage 1: the 8-byte header length, checked against the file and the limit. */
static int parse_length(struct parse *p, const uint8_t *buf, size_t len)
{
	uint64_t n = 0;

	if (len < 8)
		return fail(p->err, p->errlen, p->name, -EINVAL,
		            "truncated: file size %zu is less than the 8-byte header length", len);
	for (int i = 7; i >= 0; i--)
		n = n << 8 | buf[i];
	/*
	 * The length is the file's first 8 bytes: printed, it would reveal
	 * them for any file that is no checkpoint (a symlink to /etc/shadow).
	 * Messages say what is wrong, never what the bytes are.
	 */
	if (n > len - 8)
		return fail(p->err, p->errlen, p->name, -EINVAL,
		            "truncated or not a checkpoint: the header length in the first 8 "
		            "bytes exceeds the file size %zu",
		            len);
	if (n > MN_CKPT_MAX_HEADER)
		return fail(p->err, p->errlen, p->name, -EINVAL,
		            "the header length in the first 8 bytes exceeds the limit of %zu bytes",
		            MN_CKPT_MAX_HEADER);
	p->hlen = (size_t)n;
	p->data = buf + 8 + p->hlen;
	p->dlen = len - 8 - p->hlen;
	return 0;
}

/* Stage 2: the header's bytes as strict JSON (json.h's rules, and UTF-8), one object. */
static int parse_header_text(struct parse *p, const uint8_t *hdr)
{
	struct mn_json_error e;
	size_t hlen = p->hlen;
	int rc;

	/* Trailing spaces are the alignment padding, not part of the JSON. */
	while (hlen > 0 && hdr[hlen - 1] == ' ')
		hlen--;
	if (hlen == 0)
		return fail(p->err, p->errlen, p->name, -EINVAL, "header is empty");
	p->text = (const char *)hdr;
	p->tlen = hlen;
	rc = mn_json_parse(p->text, hlen, MN_JSON_UTF8, &p->root, &e);
	if (rc == -ENOMEM)
		return fail(p->err, p->errlen, p->name, rc, "out of memory");
	if (rc < 0 && e.rule == MN_JSON_RULE_UTF8)
		return fail(p->err, p->errlen, p->name, rc,
		            "header is not valid UTF-8 at header byte %zu", e.at);
	if (rc < 0 && e.rule == MN_JSON_RULE_SYNTAX)
		return fail(p->err, p->errlen, p->name, rc,
		            "header is not valid JSON (error at header byte %zu)", e.at);
	if (rc < 0)
		return fail(p->err, p->errlen, p->name, rc, "header has a %s at header byte %zu",
		            e.what, e.at);
	if (!cJSON_IsObject(p->root))
		return fail(p->err, p->errlen, p->name, -EINVAL, "header is not a JSON object");
	return 0;
}

/* The first name obj has twice, or NULL; -ENOMEM reported through p. */
static int first_duplicate(struct parse *p, const cJSON *obj, const char **dup)
{
	int rc = mn_json_first_duplicate(obj, dup);

	return rc < 0 ? fail(p->err, p->errlen, p->name, rc, "out of memory") : 0;
}

/* __metadata__: an object of string values with unique keys. */
static int parse_metadata(struct parse *p, const cJSON *md)
{
	const cJSON *v;
	const char *dup;
	int rc;

	p->md = md;
	if (!cJSON_IsObject(md))
		return fail(p->err, p->errlen, p->name, -EINVAL, "__metadata__ is not an object");
	cJSON_ArrayForEach(v, md)
	{
		if (!cJSON_IsString(v) || !v->valuestring)
			return fail(p->err, p->errlen, p->name, -EINVAL,
			            "__metadata__ value of \"%.64s\" is not a string", v->string);
		p->nm++;
	}
	rc = first_duplicate(p, md, &dup);
	if (rc == 0 && dup)
		rc = fail(p->err, p->errlen, p->name, -EINVAL,
		          "duplicate __metadata__ key \"%.64s\"", dup);
	return rc;
}

/* Stage 3: the members, unique by name: each tensor entry, and the metadata. */
static int parse_members(struct parse *p)
{
	size_t nmembers = 0, at, nlen;
	const cJSON *m;
	const char *dup;
	int rc;

	cJSON_ArrayForEach(m, p->root) nmembers++;
	p->ents = calloc(nmembers + 1, sizeof(*p->ents));
	if (!p->ents)
		return fail(p->err, p->errlen, p->name, -ENOMEM, "out of memory");
	rc = first_duplicate(p, p->root, &dup);
	if (rc == 0 && dup)
		rc = fail(p->err, p->errlen, p->name, -EINVAL, "duplicate name \"%.64s\" in header",
		          dup);
	if (rc < 0)
		return rc;
	cJSON_ArrayForEach(m, p->root)
	{
		if (strcmp(m->string, METADATA_KEY) == 0) {
			rc = parse_metadata(p, m);
		} else {
			p->ents[p->nt].order = p->nt;
			rc = parse_tensor(m, &p->ents[p->nt], p->dlen, p->name, p->err, p->errlen);
			p->nt++;
		}
		if (rc < 0)
			return rc;
	}
	/* Last, so that shape and offset errors above get their more specific messages. */
	at = mn_json_first_non_integer(p->text, p->tlen, &nlen);
	if (at != SIZE_MAX)
		return fail(p->err, p->errlen, p->name, -EINVAL,
		            "header number \"%.*s\" at header byte %zu is not a plain non-negative "
		            "integer",
		            (int)(nlen > 32 ? 32 : nlen), p->text + at, at);
	return 0;
}

/* Stage 4: the tensors, in offset order, cover the data buffer without gaps or overlaps. */
static int check_layout(struct parse *p)
{
	const struct entry *e = p->ents;
	uint64_t pos = 0;

	qsort(p->ents, p->nt, sizeof(*p->ents), cmp_entry);
	for (size_t i = 0; i < p->nt; i++) {
		if (e[i].begin > pos)
			return fail(p->err, p->errlen, p->name, -EINVAL,
			            "gap in data buffer between byte %" PRIu64 " and %" PRIu64
			            " (before tensor \"%s\")",
			            pos, e[i].begin, e[i].t.name);
		if (e[i].begin < pos)
			return fail(p->err, p->errlen, p->name, -EINVAL,
			            "tensors \"%s\" [%" PRIu64 ", %" PRIu64 "] and \"%s\" [%" PRIu64
			            ", %" PRIu64 "] overlap in the data buffer",
			            e[i - 1].t.name, e[i - 1].begin, e[i - 1].end, e[i].t.name,
			            e[i].begin, e[i].end);
		pos = e[i].end;
	}
	if (pos != p->dlen)
		return fail(p->err, p->errlen, p->name, -EINVAL,
		            "%" PRIu64
		            " trailing bytes in data buffer: tensors end at byte %" PRIu64
		            " of %zu",
		            (uint64_t)p->dlen - pos, pos, p->dlen);
	return 0;
}

/*
 * Stage 5: everything checked, the checkpoint takes buf (*buf becomes NULL)
 * when owned, or a copy, and copies names and metadata out of the cJSON tree.
 */
/* What a parsed checkpoint does with the bytes it was parsed from. */
enum hold {
	HOLD_COPY,   /* copies them: they stay the caller's */
	HOLD_TAKE,   /* takes them over (read here), freed with the checkpoint or on failure */
	HOLD_BORROW, /* refers to them: the caller's, to keep until the checkpoint is freed */
};

static int build(struct parse *p, uint8_t **buf, size_t len, enum hold hold, struct mn_ckpt **out)
{
	struct mn_ckpt *c;
	size_t arena = strlen(p->name) + 1;
	const cJSON *v;
	char *ap;

	for (size_t i = 0; i < p->nt; i++)
		arena += strlen(p->ents[i].t.name) + 1;
	if (p->md) {
		cJSON_ArrayForEach(v, p->md) arena +=
		    strlen(v->string) + strlen(v->valuestring) + 2;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		goto nomem;
	c->strings = malloc(arena);
	c->tensors = calloc(p->nt + 1, sizeof(*c->tensors));
	c->meta = calloc(p->nm + 1, sizeof(*c->meta));
	c->buf = hold == HOLD_COPY ? malloc(len) : *buf;
	c->borrowed = hold == HOLD_BORROW;
	if (!c->strings || !c->tensors || !c->meta || !c->buf)
		goto nomem;
	if (hold == HOLD_TAKE)
		*buf = NULL;
	else if (hold == HOLD_COPY)
		memcpy(c->buf, *buf, len);
	c->len = len;
	ap = c->strings;
	c->name = arena_put(&ap, p->name);
	for (size_t i = 0; i < p->nt; i++) {
		c->tensors[i] = p->ents[i].t;
		c->tensors[i].name = arena_put(&ap, p->ents[i].t.name);
		c->tensors[i].data = c->buf + 8 + p->hlen + p->ents[i].begin;
	}
	c->ntensors = p->nt;
	if (p->md) {
		cJSON_ArrayForEach(v, p->md)
		{
			c->meta[c->nmeta].key = arena_put(&ap, v->string);
			c->meta[c->nmeta].value = arena_put(&ap, v->valuestring);
			c->nmeta++;
		}
	}
	*out = c;
	return 0;
nomem:
	if (c && hold != HOLD_COPY)
		c->buf = NULL; /* still the caller's, or parse_impl's to free */
	mn_ckpt_free(c);
	return fail(p->err, p->errlen, p->name, -ENOMEM, "out of memory");
}

/*
 * Validates buf; on success the checkpoint holds it as hold says. A buf
 * taken over (HOLD_TAKE) is freed on failure. The stages run in this order
 * so that each message is the most specific one the file deserves.
 */
static int parse_impl(uint8_t *buf, size_t len, enum hold hold, const char *name, unsigned flags,
                      struct mn_ckpt **out, char *err, size_t errlen)
{
	struct parse p = {.name = name ? name : "checkpoint", .err = err, .errlen = errlen};
	int rc;

	if (out)
		*out = NULL;
	if (!out || (!buf && len > 0)) {
		rc = fail(err, errlen, p.name, -EINVAL, "invalid arguments");
		goto out;
	}
	rc = parse_length(&p, buf, len);
	if (rc == 0)
		rc = parse_header_text(&p, buf + 8);
	if (rc == 0)
		rc = parse_members(&p);
	if (rc == 0)
		rc = check_layout(&p);
	if (rc == 0)
		rc = check_metadata(p.md, p.data, p.dlen, flags, p.name, err, errlen);
	if (rc == 0)
		rc = build(&p, &buf, len, hold, out);
out:
	cJSON_Delete(p.root);
	free(p.ents);
	if (hold == HOLD_TAKE)
		free(buf);
	return rc;
}

int mn_ckpt_parse(const uint8_t *buf, size_t len, const char *name, unsigned flags,
                  struct mn_ckpt **out, char *err, size_t errlen)
{
	/* Copied: parse_impl only reads buf and copies it on success. */
	return parse_impl((uint8_t *)buf, len, HOLD_COPY, name, flags, out, err, errlen);
}

/*
 * Reads fd into *buf (*cap bytes, grown as needed) and parses it, holding
 * the bytes as hold says. HOLD_TAKE: *buf is the checkpoint's or freed when
 * this returns, and set to NULL; HOLD_BORROW: it stays the caller's.
 */
static int read_impl(int fd, const char *name, unsigned flags, char **buf, size_t *cap,
                     enum hold hold, struct mn_ckpt **out, char *err, size_t errlen)
{
	size_t len = 0;
	struct stat st;
	uint8_t *data;
	int rc;

	if (out)
		*out = NULL;
	if (!name)
		name = "checkpoint";
	/* A regular file says its size: refuse a huge one before reading any of it. */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > MN_CKPT_MAX_FILE)
		return fail(err, errlen, name, -EFBIG,
		            "%" PRIu64 " bytes, more than the %zu allowed", (uint64_t)st.st_size,
		            MN_CKPT_MAX_FILE);
	rc = mn_read_fd_reuse(fd, name, MN_CKPT_MAX_FILE, buf, cap, &len, err, errlen);
	data = (uint8_t *)*buf;
	if (hold == HOLD_TAKE) {
		*buf = NULL;
		if (rc < 0)
			free(data);
	}
	if (rc < 0)
		return rc;
	return parse_impl(data, len, hold, name, flags, out, err, errlen);
}

int mn_ckpt_read_fd(int fd, const char *name, unsigned flags, struct mn_ckpt **out, char *err,
                    size_t errlen)
{
	char *buf = NULL;
	size_t cap = 0;

	return read_impl(fd, name, flags, &buf, &cap, HOLD_TAKE, out, err, errlen);
}

int mn_ckpt_read_fd_reuse(int fd, const char *name, unsigned flags, char **buf, size_t *cap,
                          struct mn_ckpt **out, char *err, size_t errlen)
{
	return read_impl(fd, name, flags, buf, cap, HOLD_BORROW, out, err, errlen);
}

int mn_ckpt_read(const char *path, unsigned flags, struct mn_ckpt **out, char *err, size_t errlen)
{
	int fd, rc;

	if (out)
		*out = NULL;
	if (!path || !out) {
		mn_errf(err, errlen, "mn_ckpt_read: invalid arguments");
		return -EINVAL;
	}
	fd = mn_open_regular(path, (flags & MN_CKPT_NOFOLLOW) ? MN_OPEN_NOFOLLOW : 0, NULL, err,
	                     errlen);
	if (fd < 0)
		return fd;
	rc = mn_ckpt_read_fd(fd, path, flags, out, err, errlen);
	close(fd);
	return rc;
}

void mn_ckpt_free(struct mn_ckpt *c)
{
	if (!c)
		return;
	if (!c->borrowed)
		free(c->buf);
	free(c->tensors);
	free(c->meta);
	free(c->strings);
	free(c);
}

const char *mn_ckpt_name(const struct mn_ckpt *c)
{
	return c->name;
}

size_t mn_ckpt_count(const struct mn_ckpt *c)
{
	return c->ntensors;
}

const struct mn_tensor *mn_ckpt_tensor(const struct mn_ckpt *c, size_t i)
{
	return i < c->ntensors ? &c->tensors[i] : NULL;
}

const struct mn_tensor *mn_ckpt_find(const struct mn_ckpt *c, const char *name)
{
	if (!c || !name)
		return NULL;
	for (size_t i = 0; i < c->ntensors; i++)
		if (strcmp(c->tensors[i].name, name) == 0)
			return &c->tensors[i];
	return NULL;
}

size_t mn_ckpt_meta_count(const struct mn_ckpt *c)
{
	return c->nmeta;
}

const struct mn_meta *mn_ckpt_meta_at(const struct mn_ckpt *c, size_t i)
{
	return i < c->nmeta ? &c->meta[i] : NULL;
}

const char *mn_ckpt_meta(const struct mn_ckpt *c, const char *key)
{
	if (!c || !key)
		return NULL;
	for (size_t i = 0; i < c->nmeta; i++)
		if (strcmp(c->meta[i].key, key) == 0)
			return c->meta[i].value;
	return NULL;
}

size_t mn_ckpt_file_size(const struct mn_ckpt *c)
{
	return c->len;
}

/* Appends to err as far as it fits; returns false once it no longer does. */
static bool err_append(char *err, size_t errlen, size_t *pos, const char *s)
{
	size_t n = strlen(s);

	if (*pos + n >= errlen)
		return false;
	memcpy(err + *pos, s, n + 1);
	*pos += n;
	return true;
}

static void missing_message(const struct mn_ckpt *c, const char *name, char *err, size_t errlen)
{
	/* Room kept for ", ...)" so a long list still ends readably. */
	const size_t tail = 7;
	size_t pos;

	if (!err || errlen == 0)
		return;
	mn_errf(err, errlen, "tensor \"%s\" not found in %s (it has", name, c->name);
	pos = strlen(err);
	if (c->ntensors == 0) {
		err_append(err, errlen, &pos, " no tensors)");
		return;
	}
	err_append(err, errlen, &pos, ": ");
	for (size_t i = 0; i < c->ntensors; i++) {
		const char *sep = i ? ", " : "";

		if (pos + strlen(sep) + strlen(c->tensors[i].name) + tail >= errlen) {
			err_append(err, errlen, &pos, i ? ", ...)" : "...)");
			return;
		}
		err_append(err, errlen, &pos, sep);
		err_append(err, errlen, &pos, c->tensors[i].name);
	}
	err_append(err, errlen, &pos, ")");
}

int mn_ckpt_check(const struct mn_ckpt *c, const char *name, enum mn_dtype dtype, size_t ndim,
                  const uint64_t *shape, const struct mn_tensor **out, char *err, size_t errlen)
{
	const struct mn_tensor *t;
	struct mn_tensor want = {0};
	char have_s[256], want_s[256];

	if (!c || !name || ndim > MN_CKPT_MAX_DIMS || (ndim > 0 && !shape)) {
		mn_errf(err, errlen, "%s: mn_ckpt_check: invalid arguments", c ? c->name : "?");
		return -EINVAL;
	}
	t = mn_ckpt_find(c, name);
	if (!t) {
		missing_message(c, name, err, errlen);
		return -ENOENT;
	}
	if (t->dtype != dtype)
		return fail(err, errlen, c->name, -EINVAL,
		            "tensor \"%s\" has dtype %s, expected %s", name,
		            mn_dtype_name(t->dtype), mn_dtype_name(dtype));
	want.ndim = ndim;
	if (ndim > 0)
		memcpy(want.shape, shape, ndim * sizeof(*shape));
	if (t->ndim != ndim || (ndim > 0 && memcmp(t->shape, shape, ndim * sizeof(*shape)) != 0)) {
		mn_shape_format(t, have_s, sizeof(have_s));
		mn_shape_format(&want, want_s, sizeof(want_s));
		return fail(err, errlen, c->name, -EINVAL,
		            "tensor \"%s\" has shape %s, expected %s", name, have_s, want_s);
	}
	if (out)
		*out = t;
	return 0;
}

int mn_ckpt_copy(const struct mn_ckpt *c, const char *name, enum mn_dtype dtype, size_t ndim,
                 const uint64_t *shape, void *dst, char *err, size_t errlen)
{
	const struct mn_tensor *t;
	int rc = mn_ckpt_check(c, name, dtype, ndim, shape, &t, err, errlen);

	if (rc < 0)
		return rc;
	if (t->nbytes > 0) {
		if (!dst)
			return fail(err, errlen, c->name, -EINVAL,
			            "tensor \"%s\": no destination buffer", name);
		memcpy(dst, t->data, t->nbytes);
	}
	return 0;
}

/*
 * Checks what the writer is given against what the reader will demand, so
 * a file that is written can always be read back. Fills sizes[i].
 */
static int check_inputs(const struct mn_tensor *tensors, size_t nt, const struct mn_meta *meta,
                        size_t nm, size_t *sizes, char *err, size_t errlen)
{
	const char **names = NULL;
	const char *dup;
	uint64_t total = 0;
	int rc = -EINVAL;

	if ((nt > 0 && !tensors) || (nm > 0 && !meta) || nt > (size_t)INT_MAX - 2) {
		mn_errf(err, errlen, "invalid arguments");
		return -EINVAL;
	}
	names = calloc((nt > nm ? nt : nm) + 1, sizeof(*names));
	if (!names) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < nt; i++) {
		const struct mn_tensor *t = &tensors[i];
		uint64_t nb;

		if (!t->name || !*t->name || strlen(t->name) >= MN_CKPT_MAX_NAME ||
		    strcmp(t->name, METADATA_KEY) == 0 || !mn_json_utf8(t->name, strlen(t->name))) {
			mn_errf(err, errlen, "tensor %zu: invalid name \"%.64s\"", i,
			        t->name ? t->name : "(null)");
			goto fail;
		}
		if ((unsigned)t->dtype >= NDTYPES || t->ndim > MN_CKPT_MAX_DIMS) {
			mn_errf(err, errlen, "tensor \"%s\": invalid dtype or ndim", t->name);
			goto fail;
		}
		for (size_t d = 0; d < t->ndim; d++) {
			if (t->shape[d] > MAX_JSON_INT) {
				mn_errf(err, errlen, "tensor \"%s\": dimension %zu too large",
				        t->name, d);
				goto fail;
			}
		}
		if (!tensor_bytes(t->dtype, t->ndim, t->shape, &nb) || nb > MAX_JSON_INT - total) {
			mn_errf(err, errlen, "tensor \"%s\": too large", t->name);
			goto fail;
		}
		if (nb > 0 && !t->data) {
			mn_errf(err, errlen, "tensor \"%s\": no data", t->name);
			goto fail;
		}
		sizes[i] = (size_t)nb;
		total += nb;
		names[i] = t->name;
	}
	dup = mn_json_first_duplicate_name(names, nt);
	if (dup) {
		mn_errf(err, errlen, "duplicate tensor name \"%.64s\"", dup);
		goto fail;
	}
	for (size_t i = 0; i < nm; i++) {
		if (!meta[i].key || !meta[i].value ||
		    !mn_json_utf8(meta[i].key, strlen(meta[i].key)) ||
		    !mn_json_utf8(meta[i].value, strlen(meta[i].value))) {
			mn_errf(err, errlen, "metadata entry %zu: invalid key or value", i);
			goto fail;
		}
		if (strcmp(meta[i].key, MN_META_DATA_CRC32) == 0) {
			mn_errf(err, errlen, "metadata must not contain %s: it is computed",
			        MN_META_DATA_CRC32);
			goto fail;
		}
		names[i] = meta[i].key;
	}
	dup = mn_json_first_duplicate_name(names, nm);
	if (dup) {
		mn_errf(err, errlen, "duplicate metadata key \"%.64s\"", dup);
		goto fail;
	}
	rc = 0;
fail:
	free(names);
	return rc;
}

/*
 * Builds the padded header (without the length prefix) into *hdr, *hlen
 * such that 8 + *hlen is a multiple of 8.
 */
static int build_header(const struct mn_tensor *tensors, size_t nt, const struct mn_meta *meta,
                        size_t nm, const size_t *sizes, uint32_t crc, char **hdr, size_t *hlen,
                        char *err, size_t errlen)
{
	cJSON *root = cJSON_CreateObject(), *md = cJSON_CreateObject();
	char crc_s[9], *s = NULL, *p;
	uint64_t off = 0;
	size_t n, pad;

	if (!root || !md || !cJSON_AddItemToObject(root, METADATA_KEY, md)) {
		cJSON_Delete(md);
		md = NULL;
		goto nomem;
	}
	for (size_t i = 0; i < nm; i++)
		if (!mn_json_add(md, meta[i].key, cJSON_CreateString(meta[i].value)))
			goto nomem;
	snprintf(crc_s, sizeof(crc_s), "%08" PRIx32, crc);
	if (!mn_json_add(md, MN_META_DATA_CRC32, cJSON_CreateString(crc_s)))
		goto nomem;
	for (size_t i = 0; i < nt; i++) {
		const struct mn_tensor *t = &tensors[i];
		cJSON *e = cJSON_CreateObject(), *shape, *offs;

		/* Each item is attached as soon as it exists, so root owns everything. */
		if (!mn_json_add(root, t->name, e) ||
		    !mn_json_add(e, "dtype", cJSON_CreateString(mn_dtype_name(t->dtype))))
			goto nomem;
		shape = cJSON_CreateArray();
		if (!mn_json_add(e, "shape", shape))
			goto nomem;
		for (size_t d = 0; d < t->ndim; d++)
			if (!mn_json_add(shape, NULL, mn_json_uint(t->shape[d])))
				goto nomem;
		offs = cJSON_CreateArray();
		if (!mn_json_add(e, "data_offsets", offs) ||
		    !mn_json_add(offs, NULL, mn_json_uint(off)) ||
		    !mn_json_add(offs, NULL, mn_json_uint(off + sizes[i])))
			goto nomem;
		off += sizes[i];
	}
	s = cJSON_PrintUnformatted(root);
	if (!s)
		goto nomem;
	n = strlen(s);
	pad = (8 - (8 + n) % 8) % 8;
	p = realloc(s, n + pad + 1);
	if (!p)
		goto nomem;
	s = p;
	memset(s + n, ' ', pad);
	s[n + pad] = '\0';
	cJSON_Delete(root);
	*hdr = s;
	*hlen = n + pad;
	return 0;
nomem:
	free(s);
	cJSON_Delete(root);
	mn_errf(err, errlen, "out of memory building the header");
	return -ENOMEM;
}

static uint32_t tensors_crc(const struct mn_tensor *tensors, size_t nt, const size_t *sizes)
{
	uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);

	for (size_t i = 0; i < nt; i++)
		if (sizes[i] > 0)
			crc = crc32_buf(crc, tensors[i].data, sizes[i]);
	return crc;
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Validates, checksums and builds the header: the part encode and write share. */
static int prepare(const struct mn_tensor *tensors, size_t nt, const struct mn_meta *meta,
                   size_t nm, size_t **sizes, char **hdr, size_t *hlen, char *err, size_t errlen)
{
	size_t *sz = calloc(nt + 1, sizeof(*sz));
	int rc;

	if (!sz) {
		mn_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	rc = check_inputs(tensors, nt, meta, nm, sz, err, errlen);
	if (rc == 0)
		rc = build_header(tensors, nt, meta, nm, sz, tensors_crc(tensors, nt, sz), hdr,
		                  hlen, err, errlen);
	if (rc < 0) {
		free(sz);
		return rc;
	}
	*sizes = sz;
	return 0;
}

int mn_ckpt_encode(const struct mn_tensor *tensors, size_t ntensors, const struct mn_meta *meta,
                   size_t nmeta, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
	size_t *sizes = NULL, hlen = 0, total;
	char *hdr = NULL;
	uint8_t *out, *p;
	int rc;

	if (!buf || !len) {
		mn_errf(err, errlen, "invalid arguments");
		return -EINVAL;
	}
	rc = prepare(tensors, ntensors, meta, nmeta, &sizes, &hdr, &hlen, err, errlen);
	if (rc < 0)
		return rc;
	total = 8 + hlen;
	for (size_t i = 0; i < ntensors; i++)
		total += sizes[i];
	out = malloc(total);
	if (!out) {
		free(hdr);
		free(sizes);
		mn_errf(err, errlen, "out of memory (%zu bytes)", total);
		return -ENOMEM;
	}
	put_le64(out, hlen);
	memcpy(out + 8, hdr, hlen);
	p = out + 8 + hlen;
	for (size_t i = 0; i < ntensors; i++) {
		if (sizes[i] > 0)
			memcpy(p, tensors[i].data, sizes[i]);
		p += sizes[i];
	}
	free(hdr);
	free(sizes);
	*buf = out;
	*len = total;
	return 0;
}

int mn_ckpt_write(const char *dir, const char *name, const struct mn_tensor *tensors,
                  size_t ntensors, const struct mn_meta *meta, size_t nmeta, char *err,
                  size_t errlen)
{
	size_t *sizes = NULL, hlen = 0;
	struct iovec *iov = NULL;
	char *hdr = NULL;
	uint8_t prefix[8];
	int rc;

	if (!dir || !name || !*name || strchr(name, '/')) {
		mn_errf(err, errlen, "%s: invalid checkpoint file name", name ? name : "(null)");
		return -EINVAL;
	}
	rc = prepare(tensors, ntensors, meta, nmeta, &sizes, &hdr, &hlen, err, errlen);
	if (rc < 0) {
		mn_errprefix(err, errlen, "%s/%s", dir, name);
		return rc;
	}
	/* The tensors go straight from the caller's memory to the file. */
	iov = calloc(ntensors + 2, sizeof(*iov));
	if (!iov) {
		rc = -ENOMEM;
		mn_errf(err, errlen, "%s/%s: out of memory", dir, name);
		goto out;
	}
	put_le64(prefix, hlen);
	iov[0].iov_base = prefix;
	iov[0].iov_len = 8;
	iov[1].iov_base = hdr;
	iov[1].iov_len = hlen;
	for (size_t i = 0; i < ntensors; i++) {
		iov[i + 2].iov_base = (void *)tensors[i].data;
		iov[i + 2].iov_len = sizes[i];
	}
	rc = mn_write_atomic(dir, name, iov, (int)ntensors + 2, 0644, err, errlen);
out:
	free(iov);
	free(hdr);
	free(sizes);
	return rc;
}
