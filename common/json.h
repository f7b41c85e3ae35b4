/*
 * json.h - exact numbers and checked insertion for the cJSON documents
 * mnistd writes (checkpoint headers, configuration, log lines, control
 * responses, mnistctl --json).
 *
 * cJSON prints numbers with %.15g: integers above 10^15 come out rounded
 * (2^53 as 9.00719925474099e+15) and doubles lose their last digits. These
 * constructors emit exact text instead, and non-finite doubles, which JSON
 * cannot express, as null.
 */
#ifndef MN_JSON_H
#define MN_JSON_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

/* Big enough for "%.17f" of any double. */
#define MN_JSON_NUMLEN 400

/* An exact integer. NULL on allocation failure. */
cJSON *mn_json_int(int64_t v);
cJSON *mn_json_uint(uint64_t v);

/*
 * A double: with precision >= 0, that many digits after the point; with -1,
 * the shortest text that reads back as exactly v. null if v is not finite.
 */
cJSON *mn_json_double(double v, int precision);

/*
 * Formats a double as mn_json_double does (without the null case) into buf
 * of MN_JSON_NUMLEN bytes, for text output that must match the JSON.
 */
void mn_json_format_double(double v, int precision, char *buf, size_t len);

/*
 * Adds item to parent under key (to an array when key is NULL). Returns
 * false, freeing item, if item is NULL or cannot be added, so calls chain:
 * if (!mn_json_add(o, "a", x) || !mn_json_add(o, "b", y)) goto fail;
 */
bool mn_json_add(cJSON *parent, const char *key, cJSON *item);

#endif
