/*
 * ckpt.h - checkpoint files: the safetensors format, strict reading and
 * writing. The directory of versions (file names, scan, checkpoint.json,
 * retention) is ckptdir.h's.
 *
 * File format (byte-compatible with safetensors):
 *
 *   offset 0      uint64 little-endian N, the header length
 *   offset 8      N bytes of UTF-8 JSON, padded with spaces (0x20) so that
 *                 8 + N is a multiple of 8 (files written here; the reader
 *                 accepts any N)
 *   offset 8 + N  the data buffer, to the end of the file
 *
 * The header is a JSON object. Each member but "__metadata__" is a tensor:
 *
 *   "layer1/weights": {"dtype": "F32", "shape": [784, 500],
 *                      "data_offsets": [BEGIN, END]}
 *
 * with offsets relative to the data buffer, END - BEGIN equal to the element
 * count times the dtype size, little-endian row-major elements, and the
 * tensors together covering the data buffer exactly (sorted by BEGIN: the
 * first starts at 0, each starts where the previous ends, the last ends at
 * the buffer's end). Shape [] is a scalar (one element). Dtypes: BOOL, U8,
 * I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64.
 *
 * "__metadata__" maps strings to strings. mnistd checkpoints carry:
 *   format        "mnistd.checkpoint.v1"
 *   global_step   decimal
 *   architecture  JSON, see mn_arch_to_json()
 *   data_crc32    zlib CRC-32 of the whole data buffer, 8 lowercase hex digits
 *   created       RFC 3339 UTC time
 *   config        the effective configuration, compact JSON
 *   world_size    decimal: the processes that trained it (mpirun -np N), 1 alone
 *   frozen        "true" only in frozen inference models
 *
 * The reader checks, before trusting anything: N within the file and within
 * MN_CKPT_MAX_HEADER; the JSON well-formed, an object, with unique names;
 * every tensor entry having exactly dtype/shape/data_offsets of the right
 * types; dtypes known; shapes non-negative and their products free of
 * overflow; offsets consistent with dtype and shape, in bounds and
 * contiguous; metadata values all strings; and data_crc32, when present,
 * matching. Model-level checks (architecture against tensors) are model.h's.
 * */
#ifndef MN_CKPT_H
#define MN_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The __metadata__ keys above, as constants, so that no reader or writer
 * spells one on its own (gguf's GGUF_KEY_* style). Frozen models also carry
 * MN_META_SOURCE (the file they were frozen from) and MN_META_EMA ("true"
 * when their values are EMA shadows).
 */
#define MN_META_FORMAT       "format"
#define MN_META_GLOBAL_STEP  "global_step"
#define MN_META_ARCHITECTURE "architecture"
#define MN_META_DATA_CRC32   "data_crc32"
#define MN_META_CREATED      "created"
#define MN_META_CONFIG       "config"
#define MN_META_FROZEN       "frozen"
#define MN_META_SOURCE       "source"
#define MN_META_EMA          "ema"
#define MN_META_WORLD_SIZE   "world_size"

#define MN_CKPT_FORMAT     "mnistd.checkpoint.v1"
#define MN_CKPT_SUFFIX     ".safetensors"
#define MN_CKPT_MAX_HEADER ((size_t)100 << 20)
/*
 * Files larger than this are refused before they are read whole: twice the
 * largest parameter set mlp.h allows (weights and EMA shadows, 2 GiB) plus
 * room for training state, and a bound on what a stray /dev/zero costs.
 */
#define MN_CKPT_MAX_FILE ((size_t)4 << 30)
#define MN_CKPT_MAX_DIMS 8
#define MN_CKPT_MAX_NAME 256

enum mn_dtype {
	MN_DTYPE_BOOL,
	MN_DTYPE_U8,
	MN_DTYPE_I8,
	MN_DTYPE_U16,
	MN_DTYPE_I16,
	MN_DTYPE_F16,
	MN_DTYPE_BF16,
	MN_DTYPE_U32,
	MN_DTYPE_I32,
	MN_DTYPE_F32,
	MN_DTYPE_U64,
	MN_DTYPE_I64,
	MN_DTYPE_F64,
};

/* "F32" etc. */
const char *mn_dtype_name(enum mn_dtype d);
/* Bytes per element. */
size_t mn_dtype_size(enum mn_dtype d);
/* Parses a dtype name; -EINVAL if unknown. */
int mn_dtype_parse(const char *name, enum mn_dtype *d);

/*
 * A tensor, to write or as read. When read, data points into the
 * checkpoint's buffer and may be unaligned: copy it out with memcpy or
 * mn_ckpt_copy().
 */
struct mn_tensor {
	const char *name;
	enum mn_dtype dtype;
	size_t ndim; /* 0 for a scalar */
	uint64_t shape[MN_CKPT_MAX_DIMS];
	const void *data; /* element count * dtype size bytes */
	size_t nbytes;    /* set by the reader; derived by the writer */
};

/* A metadata entry. */
struct mn_meta {
	const char *key;
	const char *value;
};

/* Element count of a tensor (product of its shape; 1 for a scalar). */
uint64_t mn_tensor_elements(const struct mn_tensor *t);

/* Writes a shape as "[784, 500]". */
void mn_shape_format(const struct mn_tensor *t, char *buf, size_t len);

/* A validated checkpoint in memory. Opaque; owns its buffer. */
struct mn_ckpt;

/* Reader flags. */
enum {
	/* Also require format == MN_CKPT_FORMAT, a data_crc32 and a global_step. */
	MN_CKPT_REQUIRE_MNISTD = 1 << 0,
	/*
	 * mn_ckpt_read(): refuse a symbolic link (-ELOOP) instead of following
	 * it, for files found in a directory (checkpoint.follow_symlinks).
	 */
	MN_CKPT_NOFOLLOW = 1 << 1,
};

/*
 * Parses and validates a whole file held in buf (len bytes); the checkpoint
 * keeps a copy. name (usually the file name) starts every message.
 */
int mn_ckpt_parse(const uint8_t *buf, size_t len, const char *name, unsigned flags,
                  struct mn_ckpt **out, char *err, size_t errlen);

/* Reads everything from an open descriptor, then parses as above. */
int mn_ckpt_read_fd(int fd, const char *name, unsigned flags, struct mn_ckpt **out, char *err,
                    size_t errlen);

/*
 * mn_ckpt_read_fd into the caller's buffer (util.h's mn_read_fd_reuse: *buf,
 * NULL at first, of *cap bytes, grown as needed), parsed there without a
 * copy: the checkpoint refers to *buf, which must be neither changed nor
 * freed until the checkpoint is. *buf stays the caller's on every path. For
 * a process reading one checkpoint after another (mnist-eval) in memory it
 * has already touched.
 */
int mn_ckpt_read_fd_reuse(int fd, const char *name, unsigned flags, char **buf, size_t *cap,
                          struct mn_ckpt **out, char *err, size_t errlen);

/*
 * Opens path (without blocking; only a regular file, see util.h's
 * mn_open_regular), reads, parses. -ENOENT if it does not exist (e.g.
 * removed by retention); -ELOOP for a symbolic link with MN_CKPT_NOFOLLOW.
 */
int mn_ckpt_read(const char *path, unsigned flags, struct mn_ckpt **out, char *err, size_t errlen);

/* Frees a checkpoint. Accepts NULL. */
void mn_ckpt_free(struct mn_ckpt *c);

/* The name given when it was read. */
const char *mn_ckpt_name(const struct mn_ckpt *c);
/* Number of tensors, and the i-th in data-buffer order. */
size_t mn_ckpt_count(const struct mn_ckpt *c);
const struct mn_tensor *mn_ckpt_tensor(const struct mn_ckpt *c, size_t i);
/* The tensor called name, or NULL. */
const struct mn_tensor *mn_ckpt_find(const struct mn_ckpt *c, const char *name);
/* Metadata: count, i-th entry (in header order), and lookup (NULL if absent). */
size_t mn_ckpt_meta_count(const struct mn_ckpt *c);
const struct mn_meta *mn_ckpt_meta_at(const struct mn_ckpt *c, size_t i);
const char *mn_ckpt_meta(const struct mn_ckpt *c, const char *key);
/* Size of the whole file in bytes. */
size_t mn_ckpt_file_size(const struct mn_ckpt *c);

/*
 * Checks that tensor name exists, has the dtype and exactly the shape (ndim
 * dims) given, and points *out (when not NULL) at it. Messages name the
 * file, the tensor and both shapes; a missing name (-ENOENT) lists the names
 * the file has.
 */
int mn_ckpt_check(const struct mn_ckpt *c, const char *name, enum mn_dtype dtype, size_t ndim,
                  const uint64_t *shape, const struct mn_tensor **out, char *err, size_t errlen);

/* Checks as mn_ckpt_check() does, then copies the tensor's bytes into dst. */
int mn_ckpt_copy(const struct mn_ckpt *c, const char *name, enum mn_dtype dtype, size_t ndim,
                 const uint64_t *shape, void *dst, char *err, size_t errlen);

/*
 * Serialises tensors (in the given order) and metadata into a malloc'd
 * buffer: header padded to 8 bytes, data_crc32 computed and added to the
 * metadata (the caller must not pass one). Names must be unique, non-empty
 * and not "__metadata__".
 */
int mn_ckpt_encode(const struct mn_tensor *tensors, size_t ntensors, const struct mn_meta *meta,
                   size_t nmeta, uint8_t **buf, size_t *len, char *err, size_t errlen);

/* Encodes as above and publishes "<dir>/<name>" atomically (util.h's mn_write_atomic). */
int mn_ckpt_write(const char *dir, const char *name, const struct mn_tensor *tensors,
                  size_t ntensors, const struct mn_meta *meta, size_t nmeta, char *err,
                  size_t errlen);

/*
 * The one rule for a step written as text (the global_step metadata value
 * and the step in a file name): n bytes of plain decimal, digits only, no
 * sign, no leading zero (except "0"), fitting int64. Sets *step when true.
 */
bool mn_ckpt_parse_step(const char *s, size_t n, int64_t *step);

#endif
