/*
 * proto.h - the control protocol spoken on mnistd's Unix socket, without
 * any I/O: line framing, request parsing and response building.
 *
 * The protocol is newline-delimited JSON. A client writes one request object
 * per line, {"cmd":"status"}, and reads one response object per line, in
 * the order of the requests: {"ok":true,...} or {"ok":false,"error":"..."}.
 * Lines may end in "\n" or "\r\n"; empty lines are ignored. A line longer
 * than the framer's limit (MN_PROTO_MAX_LINE for the daemon) is an error
 * after which the server answers once more and closes the connection.
 *
 * Responses, by command (fields beyond these may be added, never renamed):
 *   status  step, max_steps (integers), learning_rate, loss (numbers, null
 *           before the first step), steps_per_sec, paused (boolean),
 *           latest_checkpoint (file name or null), state ("training",
 *           "paused" or "stopping"); with train.early_stopping on, also
 *           best_accuracy and best_step (null before the first evaluation
 *           counted), evals_since_best and patience (integers)
 *   reload  applied, restart_required: arrays of key paths ("train.max_steps")
 *   save    checkpoint (file name), step
 *   pause   paused: true, step (where training stopped)
 *   resume  paused: false, step
 */
#ifndef MN_PROTO_H
#define MN_PROTO_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest request line the daemon accepts, in bytes without the line end. */
#define MN_PROTO_MAX_LINE (64 * 1024)

/* Room for every key of the configuration schema in a reload answer. */
#define MN_PROTO_MAX_KEYS 64

enum mn_proto_cmd {
	MN_PROTO_STATUS,
	MN_PROTO_RELOAD,
	MN_PROTO_SAVE,
	MN_PROTO_PAUSE,
	MN_PROTO_RESUME,
};

/*
 * A line-framing buffer: bytes go in as they arrive from the socket, whole
 * lines come out. It holds at most one partial line beyond the lines not yet
 * taken out, so its size is bounded by what the caller pushes between calls
 * to mn_framer_next plus the line limit.
 */
struct mn_framer;

/* Creates a framer for lines of at most max_line bytes (without the line end). */
int mn_framer_new(size_t max_line, struct mn_framer **out);

/* Frees f; NULL is allowed. */
void mn_framer_free(struct mn_framer *f);

/*
 * Appends len bytes. Returns 0, -ENOMEM, or -EMSGSIZE if the framer has
 * already seen an over-long line (it then refuses everything).
 */
int mn_framer_push(struct mn_framer *f, const char *data, size_t len);

/*
 * Takes out the next complete line. Returns 1 and sets *line (NUL-terminated,
 * without "\n" or "\r\n", valid until the next call on f) and *len; 0 if no
 * complete line is buffered; -EMSGSIZE if the next line is longer than the
 * limit, whether complete or not (it stays an error from then on). Empty
 * lines are returned too; the caller skips them.
 */
int mn_framer_next(struct mn_framer *f, char **line, size_t *len);

/* Bytes buffered and not yet returned as lines. */
size_t mn_framer_pending(const struct mn_framer *f);

/*
 * Parses one request line: exactly the len bytes at line, which need not be
 * NUL-terminated. Returns 0 and sets *cmd, or -EINVAL with a message meant
 * for the client in err (invalid JSON, a NUL byte, not an object, missing
 * or non-string "cmd", unknown command). Members other than "cmd" are
 * ignored, so clients may add fields that newer daemons understand.
 */
int mn_proto_parse(const char *line, size_t len, enum mn_proto_cmd *cmd, char *err, size_t errlen);

/* The command's name as used on the wire ("status"). */
const char *mn_proto_cmd_name(enum mn_proto_cmd cmd);

/* What a status answer reports. */
struct mn_proto_status {
	int64_t step;
	int64_t max_steps;
	double learning_rate; /* NAN: not known yet (sent as null) */
	double loss;          /* NAN before the first step (sent as null) */
	double steps_per_sec;
	bool paused;
	bool stopping;
	const char *latest_checkpoint; /* NULL or "": none yet */
	int64_t checkpoint_failures;   /* failed in a row (0: the last one succeeded) */
	const char
	    *checkpoint_error; /* the last failure's message while failing, else NULL or "" */
	/* train.early_stopping is on: best_accuracy, best_step and evals_since_best are sent. */
	bool early_stopping;
	double best_accuracy;     /* NAN before the first counted evaluation (sent as null) */
	int64_t best_step;        /* -1 before it (sent as null) */
	int64_t evals_since_best; /* counted evaluations since best_step */
	int64_t patience;         /* train.early_stopping.patience */
};

/* A list of configuration key paths; the strings are not owned. */
struct mn_proto_keys {
	size_t n;
	const char *keys[MN_PROTO_MAX_KEYS];
};

/* Appends key to k. Returns 0, or -ENOSPC when k is full. */
int mn_proto_keys_add(struct mn_proto_keys *k, const char *key);

/*
 * Response builders. Each returns a new object the caller owns (free it
 * with cJSON_Delete), or NULL when memory runs out.
 */
cJSON *mn_proto_error(const char *message);
cJSON *mn_proto_status(const struct mn_proto_status *s);
cJSON *mn_proto_reload(const struct mn_proto_keys *applied, const struct mn_proto_keys *restart);
cJSON *mn_proto_saved(const char *checkpoint, int64_t step);
cJSON *mn_proto_paused(bool paused, int64_t step);

/*
 * Serialises a response as one compact line ending in "\n". Returns a
 * malloc'd string and its length (without the NUL) in *len, or NULL when
 * memory runs out.
 */
char *mn_proto_line(const cJSON *response, size_t *len);

#endif
