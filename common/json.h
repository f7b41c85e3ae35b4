/*
 * json.h - strict reading of the JSON mnistd is given (checkpoint headers,
 * the architecture, checkpoint.json, the configuration, control requests),
 * and exact numbers and checked insertion for the JSON it writes
 * (checkpoint headers, configuration, log lines, control responses,
 * mnistctl --json).
 *
 * Reading: cJSON accepts what JSON forbids. It stops at a NUL byte and
 * judges the text by what came before, lets raw control characters into
 * strings, decodes \u0000 into a C string that then ends early, and keeps
 * every duplicate member (a reader that took the first and one that took
 * the last would disagree). mn_json_parse() refuses all of that, and
 * mn_json_members() checks an object against a table of the members it may
 * have, so that every reader applies the same rules.
 *
 * Writing:
 * cJSON prints numbers with %.15g: integers above 10^15 come out rounded
 * (2^53 as 9.00719925474099e+15) and doubles lose their last digits. These
 * constructors emit exact text instead, and non-finite doubles, which JSON
 * cannot express, as null.
 */
#ifndef MN_JSON_H
#define MN_JSON_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
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

/* The rules mn_json_parse() applies, in the order it applies them. */
enum mn_json_rule {
	MN_JSON_RULE_NUL = 1, /* a NUL byte anywhere */
	MN_JSON_RULE_UTF8,    /* ill-formed UTF-8 (with MN_JSON_UTF8) */
	MN_JSON_RULE_STRING,  /* a raw control character or \u0000 in a string */
	MN_JSON_RULE_NUMBER,  /* a number a double rounds to another integer (with
	                         MN_JSON_EXACT_INTEGERS) */
	MN_JSON_RULE_SYNTAX,  /* not one JSON value followed by whitespace only */
};

/* Where and why a text is not strict JSON. */
struct mn_json_error {
	enum mn_json_rule rule;
	const char *what; /* "NUL byte", "raw control character in a string", ... */
	size_t at;        /* byte offset of the fault in the text */
	size_t line, col; /* the same as a 1-based line and column */
};

/* mn_json_parse() flags. */
enum {
	/* The text must be well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates). */
	MN_JSON_UTF8 = 1 << 0,
	/*
	 * Strings may hold raw control characters and \u0000: for a reader that
	 * only compares them with names it knows (a control request), where
	 * such a string is simply no known name.
	 */
	MN_JSON_OPAQUE_STRINGS = 1 << 1,
	/*
	 * Refuse a number that cJSON's double would turn into an integer other
	 * than the one written: an integer beyond 2^53, or a fraction such as
	 * 1.0000000000000001 that reads as 1. For readers of integer values
	 * (the configuration), which would otherwise use the rounded value.
	 */
	MN_JSON_EXACT_INTEGERS = 1 << 2,
};

/*
 * Parses exactly len bytes of text (which need not be NUL-terminated) as
 * one JSON value followed by nothing but whitespace, refusing a NUL byte
 * anywhere, a raw control character or a \u0000 escape in a string, and
 * with MN_JSON_UTF8 ill-formed UTF-8. On success *out is the tree (free it
 * with cJSON_Delete). -EINVAL with e filled if the text breaks a rule (the
 * first fault in that order); -ENOMEM. Duplicate members are the business
 * of mn_json_members() and mn_json_first_duplicate().
 */
int mn_json_parse(const char *text, size_t len, unsigned flags, cJSON **out,
                  struct mn_json_error *e);

/*
 * Offset of the first number in len bytes of JSON text that is not a plain
 * non-negative integer ("-1", "01", "1.0", "1e2" all are not), and its
 * length in *nlen; SIZE_MAX if there is none. cJSON reads all of those as
 * integers; a reader that wants exact counts and offsets refuses them.
 */
size_t mn_json_first_non_integer(const char *text, size_t len, size_t *nlen);

/* How an object fails its table (mn_json_members). */
enum mn_json_fault {
	MN_JSON_UNKNOWN = 1, /* a member the table does not name */
	MN_JSON_DUPLICATE,   /* a member given twice */
	MN_JSON_MISSING,     /* a required member absent */
	MN_JSON_TYPE,        /* a member of another type than the table's */
};

/* One member an object may have. */
struct mn_json_member {
	const char *name;
	int type;            /* cJSON_String, cJSON_Number, ... (a mask); 0: any */
	bool required;       /* absent is a fault */
	const cJSON **value; /* set to the member, or to NULL when absent */
};

/*
 * Checks obj against n table entries: first every member in document order
 * (one the table does not name, unless others allows it, or a second of
 * one the table names), then the required ones in table order, then the
 * types in table order, and reports the first fault in *fault with the
 * member's name in *name (either may be NULL). Returns 0, with every value
 * set, or -EINVAL.
 */
int mn_json_members(const cJSON *obj, const struct mn_json_member *table, size_t n, bool others,
                    enum mn_json_fault *fault, const char **name);

/* Whether a member of obj before item has item's name. */
bool mn_json_duplicate(const cJSON *obj, const cJSON *item);

/*
 * For objects with many members (a checkpoint header): the first name, in
 * byte order, that occurs twice among obj's members, in *dup (NULL when
 * none). O(n log n), where checking each member against those before it
 * would let a large header cost quadratic time. -ENOMEM.
 */
int mn_json_first_duplicate(const cJSON *obj, const char **dup);

/*
 * The integer a JSON number holds, if it is one (finite, no fraction) in
 * [lo, hi]. cJSON keeps numbers as doubles, so keep lo and hi within
 * [-2^53, 2^53], where every integer is exact.
 */
bool mn_json_get_int(const cJSON *item, int64_t lo, int64_t hi, int64_t *out);

/* Whether n bytes of s are well-formed UTF-8 (the MN_JSON_UTF8 rule). */
bool mn_json_utf8(const char *s, size_t n);

/*
 * The first name, in byte order, that occurs twice among n names (sorts
 * names in place), or NULL: mn_json_first_duplicate() for names not yet in
 * a tree (a writer's).
 */
const char *mn_json_first_duplicate_name(const char **names, size_t n);

/* "a string", "a number", "an object", ... for a cJSON type mask's lowest type. */
const char *mn_json_type_name(int type);

#endif
