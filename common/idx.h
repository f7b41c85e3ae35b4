/*
 * idx.h - IDX data sets (MNIST, Fashion-MNIST): loading, splits, batches.
 *
 * An IDX file is a big-endian header followed by the elements:
 *
 *   0x00 0x00 <type> <ndim>   magic; type 0x08 = unsigned byte
 *   ndim x uint32 BE          size of each dimension
 *   prod(sizes) bytes         the elements, row-major
 *
 * Images are ndim 3 (count, rows, cols; magic 2051), labels ndim 1 (count;
 * magic 2049). Files may be gzip-compressed or plain; both are read through
 * zlib. The loader checks the magic, the element type, ndim, every size
 * (against overflow and MN_IDX_MAX_BYTES), that the file holds exactly the
 * promised bytes (no less, no trailing data) and that the image and label
 * counts agree. Images stay uint8 in memory and are scaled to [0,1] floats
 * one batch at a time.
 */
#ifndef MN_IDX_H
#define MN_IDX_H

#include <stddef.h>
#include <stdint.h>

/* Refuse files that promise more than this many element bytes. */
#define MN_IDX_MAX_BYTES ((size_t)1 << 31)

/* A loaded image file with its labels. Opaque; owns its memory. */
struct mn_dataset;

/*
 * A read-only window of count consecutive examples of a data set. It points
 * into the data set's memory and is valid as long as the data set is.
 */
struct mn_view {
	const uint8_t *images; /* count * dim bytes, row-major */
	const uint8_t *labels; /* count bytes; NULL for an image-only data set */
	size_t count;          /* number of examples */
	size_t dim;            /* pixels per image (rows * cols) */
	/*
	 * Optional: the same images already scaled to [0,1] (mn_view_scale),
	 * for a reader that goes over all of them again and again, such as the
	 * evaluator; NULL otherwise.
	 */
	const float *scaled;
};

/*
 * Parses an IDX file held in memory. kind is 1 for labels, 3 for images.
 * On success *elems points into buf at the first element and dims[0..kind)
 * holds the sizes. name is used in messages. Exposed for tests and fuzzing.
 */
int mn_idx_parse(const uint8_t *buf, size_t len, int kind, const char *name, uint32_t dims[3],
                 const uint8_t **elems, char *err, size_t errlen);

/* Loads an image file and its label file (gzip or plain) and checks they agree. */
int mn_dataset_load(const char *images_path, const char *labels_path, struct mn_dataset **out,
                    char *err, size_t errlen);

/*
 * Loads an image file alone (gzip or plain), for predictions without labels.
 * The data set has no labels: its views have labels == NULL, its maximum
 * label is 0, and mn_view_gather() and mn_view_range() leave y untouched.
 */
int mn_dataset_load_images(const char *images_path, struct mn_dataset **out, char *err,
                           size_t errlen);

/*
 * Loads "<dir>/<set>-images-idx3-ubyte[.gz]" and "<dir>/<set>-labels-idx1-ubyte[.gz]",
 * where set is "train" or "t10k"; the .gz name is tried first.
 */
int mn_dataset_load_dir(const char *dir, const char *set, struct mn_dataset **out, char *err,
                        size_t errlen);

/* Frees a data set. Accepts NULL. */
void mn_dataset_free(struct mn_dataset *ds);

size_t mn_dataset_count(const struct mn_dataset *ds);
size_t mn_dataset_rows(const struct mn_dataset *ds);
size_t mn_dataset_cols(const struct mn_dataset *ds);

/* The largest label value in the set (so callers can check it fits the model). */
uint8_t mn_dataset_max_label(const struct mn_dataset *ds);

/* A view of the whole data set. */
struct mn_view mn_dataset_all(const struct mn_dataset *ds);

/*
 * Splits a data set TensorFlow's way: validation is the first
 * validation_size examples, train the rest. -EINVAL (with a message) if
 * validation_size leaves no training examples.
 */
int mn_dataset_split(const struct mn_dataset *ds, size_t validation_size, struct mn_view *train,
                     struct mn_view *validation, char *err, size_t errlen);

/*
 * Gathers the examples indices[0..n) of v into x (n * dim floats, pixels
 * scaled to [0,1]) and y (n labels). Indices must be < v->count.
 */
void mn_view_gather(const struct mn_view *v, const uint32_t *indices, size_t n, float *x,
                    uint8_t *y);

/*
 * Scales all of v's images to [0,1] once, exactly as mn_view_range does,
 * into a new array *out of v->count * v->dim floats (free() it) for
 * v->scaled. 0 or -ENOMEM.
 */
int mn_view_scale(const struct mn_view *v, float **out);

/* Same for the consecutive examples [first, first + n). */
void mn_view_range(const struct mn_view *v, size_t first, size_t n, float *x, uint8_t *y);

#endif
