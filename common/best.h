/*
 * best.h - best.json, the record of the best checkpoints that mnist-eval
 * keeps in eval.best_dir (evaluator/keep.h keeps them; mnistctl reads them).
 *
 * Format: {"best": [{"step": 7000, "accuracy": 0.8871, "loss": 0.319,
 * "file": "model.ckpt-7000.safetensors", "time": "2026-11-29T19:02:09.123Z"},
 * ...]}, best first: by accuracy, higher first, and on equal accuracy the
 * earlier step first. file is a plain name in the same directory; time is
 * when the checkpoint was evaluated. Other members are ignored, so the
 * format can grow.
 */
#ifndef MN_BEST_H
#define MN_BEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "util.h"

#define MN_BEST_FILE "best.json"
/* Entries a best.json may hold (eval.keep_best's maximum). */
#define MN_BEST_MAX 1000

struct mn_best_entry {
	int64_t step;
	double accuracy; /* in [0, 1] */
	double loss;
	char file[MN_CKPT_MAX_NAME];
	char time[MN_TIMELEN];
};

/* Whether a ranks before b: higher accuracy, or equal accuracy and an earlier step. */
bool mn_best_before(const struct mn_best_entry *a, const struct mn_best_entry *b);

/* Sorts entries best first. */
void mn_best_sort(struct mn_best_entry *e, size_t n);

/*
 * Reads "<dir>/best.json" into a malloc'd array (*out, *n entries, in the
 * file's order). -ENOENT if there is none; -EINVAL with a message naming
 * the file and what is wrong if it is not valid (malformed JSON, a member of
 * the wrong type or out of range, a file that is not a plain
 * "*.safetensors" name, a file listed twice, more than MN_BEST_MAX entries,
 * entries not best first); other negative errnos if it cannot be read.
 */
int mn_best_load(const char *dir, struct mn_best_entry **out, size_t *n, char *err, size_t errlen);

/* The same, from a best.json given by its own path (mnistctl plot --best FILE). */
int mn_best_load_file(const char *path, struct mn_best_entry **out, size_t *n, char *err,
                      size_t errlen);

/* The best entry of "<dir>/best.json" alone, as mn_best_load() reports errors; -ENOENT if empty. */
int mn_best_first(const char *dir, struct mn_best_entry *out, char *err, size_t errlen);

/* Publishes "<dir>/best.json" atomically (mn_write_atomic) with the n entries as given. */
int mn_best_save(const char *dir, const struct mn_best_entry *e, size_t n, char *err,
                 size_t errlen);

#endif
