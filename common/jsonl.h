/*
 * jsonl.h - an append-only JSON-lines file: the evaluator's eval.metrics_file
 * and the trainer's train.metrics_file.
 *
 * Each record is one compact JSON object and its newline, written with one
 * write(2) on a descriptor opened with O_APPEND, so a reader following the
 * file never sees half a line and two writers never interleave inside one.
 * A short write (the disk filled up mid-line) is cut off again with
 * ftruncate so the next record starts on a line of its own; only if that
 * fails is the next record preceded by a newline that ends the torn one;
 * so is the first record written to a file that already ends in a partial
 * line (its previous writer died mid-line, or a crash cut it off).
 * mn_jsonl_reopen() is for logrotate: the rotated file has been moved
 * aside, and the next records go to a new file under the same path. A file
 * moved aside or removed without it (logrotate without postrotate, an
 * operator's rm) is noticed at the next record, which goes to a new file
 * under the path (the one readers follow), with a warning in the log.
 *
 * Not thread-safe: one thread (the loop's) owns a writer.
 */
#ifndef MN_JSONL_H
#define MN_JSONL_H

#include <cJSON.h>
#include <stddef.h>

/* An open JSON-lines file. Opaque. */
struct mn_jsonl;

/*
 * Opens (creating it with mode 0640 before the umask) path for appending.
 * An empty path means "no file": *out is NULL and the result 0, and every
 * function below accepts that NULL and does nothing.
 */
int mn_jsonl_open(const char *path, struct mn_jsonl **out, char *err, size_t errlen);

/*
 * Appends obj as one line. Returns 0, -ENOMEM, -ENOSPC for a short write
 * (the partial line has been removed if it could be) or the -errno of
 * write(2); err names the file. A failure is also logged (log.h), once: the
 * lines that fail after it for the same reason (a disk that stays full)
 * are not, and the first line written again logs a warning that says how
 * many lines were lost ("<path>: writing again; 3 lines were not written").
 * Callers need not log what this returns.
 */
int mn_jsonl_append(struct mn_jsonl *f, const cJSON *obj, char *err, size_t errlen);

/* Opens the path again; on failure the old descriptor stays in use. */
int mn_jsonl_reopen(struct mn_jsonl *f, char *err, size_t errlen);

/* Closes the file. Accepts NULL. */
void mn_jsonl_close(struct mn_jsonl *f);

#endif
