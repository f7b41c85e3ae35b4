/*
 * metrics.h - reading a run's history: the trainer's train.metrics_file,
 * the evaluator's eval.metrics_file (JSON lines) and best.json, and the
 * numbers a summary of the run shows.
 *
 * Both metrics files are read strictly: every complete line must be a JSON
 * object with the members below, of the right types, or the whole file is
 * rejected with a message that names the file and the line. A last line
 * without its newline is a record still being written and is left out.
 * So is a complete line that is a record never finished (an object never
 * closed, NUL bytes at either end cut away, or NUL bytes only): what a
 * writer that died mid-write, or a crash that zero-filled the file's end,
 * leaves behind once the next writer has ended it (jsonl.h); it is
 * counted in cut, and the lines after it still count.
 *
 * Steps can go backwards in a file: a trainer resumed after a crash
 * restarts from its last checkpoint, older than its last line, and an
 * evaluator restarted over a new run re-evaluates steps. The rule is
 * TensorBoard's: a line whose step is not greater than the step of the
 * line before it starts over at that step, and the lines kept so far at
 * that step or later are discarded. So the last line for a step wins and a
 * series is always in strictly increasing step order.
 */
#ifndef MN_METRICS_H
#define MN_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The longest line read (bytes, without its newline): a line longer than
 * this is rejected like a bad one. Real lines are a few hundred bytes; the
 * bound keeps a file without newlines from being held in memory whole.
 */
#define MN_METRICS_LINE_MAX (1 << 20)
/* Room for a checkpoint file name and its NUL. */
#define MN_METRICS_NAME_MAX 256

enum mn_metrics_kind {
	/* train.metrics_file: step, loss, learning_rate, steps_per_sec, time. */
	MN_METRICS_TRAIN,
	/* eval.metrics_file: step, accuracy in [0, 1], loss, checkpoint, time. */
	MN_METRICS_EVAL,
};

/*
 * One kept line. Members the kind does not have are NAN (NULL for
 * checkpoint). A point is small (a long run's history is hundreds of
 * thousands of them, kept by the evaluator's page): the checkpoint name,
 * which only evaluations have, is a string of the series'.
 */
struct mn_metrics_point {
	int64_t step;
	int64_t time_ms;      /* "time", milliseconds since the epoch */
	double loss;          /* training or validation loss; NAN where the file has null */
	double learning_rate; /* train */
	double steps_per_sec; /* train */
	double accuracy;      /* eval */
	char *checkpoint;     /* eval: the file name, shorter than MN_METRICS_NAME_MAX */
};

/* A file's kept lines, in increasing step order. */
struct mn_metrics_series {
	struct mn_metrics_point *points;
	size_t n;
	size_t lines; /* complete lines read, including the discarded ones */
	size_t cut;   /* of those, records never finished (left out) */
};

/*
 * Whether a complete line (len bytes, without its newline) is a record its
 * writer never finished, as described above: left out and counted in cut,
 * never an error. For other readers of the files (the early stopper), so
 * that they count such a line as these do.
 */
bool mn_metrics_line_unfinished(const char *line, size_t len);

/*
 * Parses the text of a metrics file (len bytes; name starts messages) into
 * out, which the caller frees with mn_metrics_series_free() on success.
 * A file with no complete line is -ENODATA ("has no lines yet"); a bad line
 * is -EINVAL ("train.jsonl:7: ...").
 */
int mn_metrics_parse(enum mn_metrics_kind kind, const char *text, size_t len, const char *name,
                     struct mn_metrics_series *out, char *err, size_t errlen);

/*
 * Reads and parses a file (mn_metrics_file_update() once): -ENOENT and the
 * like name it, the rest as above.
 */
int mn_metrics_load(enum mn_metrics_kind kind, const char *path, struct mn_metrics_series *out,
                    char *err, size_t errlen);

/* Frees the points and empties s. Accepts an empty series. */
void mn_metrics_series_free(struct mn_metrics_series *s);

/*
 * A metrics file read incrementally, for a reader that looks at a growing
 * file again and again (the evaluator's page, at every evaluation): each
 * update reads only the bytes appended since the one before, so its cost
 * follows what was appended, not the file's length, and memory holds the
 * kept points, never the file. The series is exactly what
 * mn_metrics_parse() makes of the whole file as it is at the update
 * (the step rule holds across updates).
 *
 * The file is known by its identity (device and inode) and by where the
 * last complete line read ends. A partial last line is not consumed: it is
 * read again, whole, once its newline is there. A file replaced under the
 * name (a new inode: an atomic rewrite, logrotate's rename and create),
 * truncated (shorter than it was at the last read), or rewritten in place (the byte
 * before the offset is no longer the newline read there) is read again
 * from the start; so is a file that could not be opened or read.
 *
 * Fill it with mn_metrics_file_init(); it is the caller's to free with
 * mn_metrics_file_free(). Members are for reading.
 */
struct mn_metrics_file {
	enum mn_metrics_kind kind;
	struct mn_metrics_series series; /* the lines kept so far */
	uint64_t offset;                 /* bytes consumed: up to the last complete line's end */
	uint64_t last_read;              /* bytes the last update read (for tests and logs) */
	/* The reader's own. */
	size_t cap;
	bool known;
	uint64_t dev, ino;
	uint64_t seen; /* the length the file had at the last read: less is a truncation */
	int rc;        /* a rejected file stays rejected (with its message) until it changes */
	char why[512];
};

void mn_metrics_file_init(struct mn_metrics_file *f, enum mn_metrics_kind kind);

/*
 * Reads what was appended to path since the last update (all of it at the
 * first, or after a change that starts over). Returns 0 with f->series
 * holding at least one point, or, with err filled: -ENODATA (no line kept
 * yet), -EINVAL for a bad line (the file is rejected as
 * mn_metrics_parse() rejects it; the series is then empty), -ENOENT and
 * the like when it cannot be opened or read (the series is emptied).
 */
int mn_metrics_file_update(struct mn_metrics_file *f, const char *path, char *err, size_t errlen);

/* Frees the series and forgets the file: the next update starts over. */
void mn_metrics_file_free(struct mn_metrics_file *f);

/* The best checkpoint as the evaluator's best.json names it (its first entry). */
struct mn_metrics_best {
	int64_t step;
	double accuracy;
	char file[MN_METRICS_NAME_MAX];
};

/*
 * Reads best.json ({"best": [{"step", "accuracy", "loss", "file", "time"},
 * ...]}, best first). Returns 1 with *out filled, 0 if the file does not
 * exist or lists nothing yet, or -errno with err filled for anything else.
 */
int mn_metrics_load_best(const char *path, struct mn_metrics_best *out, char *err, size_t errlen);

/* What a run's summary shows. Missing values are -1 (steps) and NAN. */
struct mn_metrics_summary {
	int64_t steps;        /* the last step either file reached */
	int64_t best_step;    /* the best checkpoint: best.json, else the highest accuracy */
	double best_accuracy; /* (the earliest of equal accuracies) */
	char best_checkpoint[MN_METRICS_NAME_MAX];
	int64_t latest_step; /* the last evaluation */
	double latest_accuracy;
	double steps_per_sec; /* the trainer's last line */
	double elapsed_s;     /* from the first time stamp in either file to the last */
};

/*
 * Summarises the series (either may be NULL or empty); best (NULL when
 * there is no best.json) overrides the best evaluation.
 */
void mn_metrics_summarize(const struct mn_metrics_series *train,
                          const struct mn_metrics_series *eval, const struct mn_metrics_best *best,
                          struct mn_metrics_summary *out);

/*
 * Parses an RFC 3339 time ("2026-11-25T17:22:34.153Z", or with a +hh:mm
 * offset) into milliseconds since the epoch. false if it is not one.
 */
bool mn_metrics_parse_time(const char *s, int64_t *ms);

#endif
