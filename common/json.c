/* json.c - see json.h. */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cJSON *mn_json_int(int64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRId64, v);
	return cJSON_CreateRaw(num);
}

cJSON *mn_json_uint(uint64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRIu64, v);
	return cJSON_CreateRaw(num);
}

void mn_json_format_double(double v, int precision, char *buf, size_t len)
{
	if (precision >= 0) {
		snprintf(buf, len, "%.*f", precision > 17 ? 17 : precision, v);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, len, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

cJSON *mn_json_double(double v, int precision)
{
	char num[MN_JSON_NUMLEN];

	if (!isfinite(v))
		return cJSON_CreateNull();
	mn_json_format_double(v, precision, num, sizeof(num));
	return cJSON_CreateRaw(num);
}

bool mn_json_add(cJSON *parent, const char *key, cJSON *item)
{
	bool ok;

	if (!item)
		return false;
	ok = key ? cJSON_AddItemToObject(parent, key, item) : cJSON_AddItemToArray(parent, item);
	if (!ok)
		cJSON_Delete(item);
	return ok;
}

static int fault(const char *text, size_t at, enum mn_json_rule rule, const char *what,
                 struct mn_json_error *e)
{
	e->rule = rule;
	e->what = what;
	e->at = at;
	e->line = 1;
	e->col = 1;
	for (size_t i = 0; i < at; i++) {
		if (text[i] == '\n') {
			e->line++;
			e->col = 1;
		} else {
			e->col++;
		}
	}
	return -EINVAL;
}

/* Offset of the first byte that is not well-formed UTF-8 (RFC 3629), or n. */
static size_t utf8_invalid_at(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i];
		uint32_t cp, min;
		size_t k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			k = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return i;
		}
		if (n - i <= k)
			return i;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return i;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		/* Overlong forms and surrogates would let two spellings mean one name. */
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return i;
		i += k + 1;
	}
	return n;
}

static unsigned hex4(const char *p)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
	}
	return v;
}

/* What a pass over JSON text finds outside cJSON's view. */
struct lex {
	size_t str_at; /* first bad string byte, or SIZE_MAX */
	const char *str_why;
	size_t num_at; /* first number that is not a plain non-negative integer */
	size_t num_len;
	size_t inexact_at; /* first number a double would turn into another integer */
};

/*
 * Whether the number text s[0..n) (JSON syntax, already scanned) is one a
 * double holds as some integer it is not: an integer beyond 2^53
 * (9007199254740993 reads as ...992), or a fraction so close to an integer
 * that it reads as one (1.0000000000000001 as 1). A reader of integer keys
 * would take the rounded value for what was written.
 */
static bool inexact_integer(const char *s, size_t n)
{
	char buf[512];
	size_t i = 0, nd = 0, frac = 0, zeros = 0;
	long exp = 0;
	double d;

	if (n == 0 || n >= sizeof(buf))
		return n >= sizeof(buf);
	if (s[i] == '-')
		i++;
	/* The significant digits, how many follow the point, trailing zeros among them. */
	for (bool point = false; i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'); i++) {
		if (s[i] == '.') {
			point = true;
			continue;
		}
		if (nd == 0 && s[i] == '0' && !point)
			continue;
		nd++;
		frac += point;
		zeros = s[i] == '0' ? zeros + 1 : 0;
	}
	/* The text need not end in a NUL: read the exponent from the terminated copy. */
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		exp = strtol(buf + i + 1, NULL, 10);
		/*
		 * Past +-100000 every number is infinite or rounds to 0, decided the
		 * same way; the bound keeps the arithmetic below from overflowing.
		 */
		exp = exp > 100000 ? 100000 : exp < -100000 ? -100000 : exp;
	}
	d = strtod(buf, NULL);
	if (!isfinite(d) || d != floor(d))
		return false; /* a fraction that stays one: a reader of integers refuses it itself
		               */
	/* Exactly an integer when the digits after the point are zeros or shifted out. */
	if (nd > zeros && exp - (long)frac < 0 && exp - (long)frac + (long)zeros < 0)
		return true;
	/* 2^53 + 1 reads as 2^53 itself: only the text tells them apart. */
	if (fabs(d) == 9007199254740992.0)
		return strcmp(buf + (buf[0] == '-'), "9007199254740992") != 0;
	return fabs(d) > 9007199254740992.0;
}

/* One pass over the text, telling strings from the rest as a JSON reader does. */
static void lex_scan(const char *s, size_t n, struct lex *lx)
{
	bool in_string = false;
	size_t i = 0;

	lx->str_at = lx->num_at = lx->inexact_at = SIZE_MAX;
	lx->str_why = NULL;
	lx->num_len = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];

		if (in_string) {
			if (c == '"') {
				in_string = false;
			} else if (c == '\\') {
				if (i + 1 < n && s[i + 1] == 'u' && i + 5 < n &&
				    hex4(s + i + 2) == 0 && lx->str_at == SIZE_MAX) {
					lx->str_at = i;
					lx->str_why = "\\u0000 in a string";
				}
				i += (i + 1 < n && s[i + 1] == 'u') ? 6 : 2;
				continue;
			} else if (c < 0x20 && lx->str_at == SIZE_MAX) {
				lx->str_at = i;
				lx->str_why =
				    "raw control character in a string (use an escape such as \\n)";
			}
			i++;
			continue;
		}
		if (c == '"') {
			in_string = true;
			i++;
			continue;
		}
		if (c == '-' || (c >= '0' && c <= '9')) {
			size_t j = i;
			bool digits = true;

			while (j < n && s[j] != '\0' && strchr("0123456789+-.eE", s[j])) {
				if (s[j] < '0' || s[j] > '9')
					digits = false;
				j++;
			}
			if ((!digits || (s[i] == '0' && j - i > 1)) && lx->num_at == SIZE_MAX) {
				lx->num_at = i;
				lx->num_len = j - i;
			}
			if (lx->inexact_at == SIZE_MAX && inexact_integer(s + i, j - i))
				lx->inexact_at = i;
			i = j;
			continue;
		}
		i++;
	}
}

int mn_json_parse(const char *text, size_t len, unsigned flags, cJSON **out,
                  struct mn_json_error *e)
{
	const char *nul = memchr(text, '\0', len), *end = NULL;
	cJSON *root;
	struct lex lx;
	size_t at;
	char *copy;

	*out = NULL;
	if (nul)
		return fault(text, (size_t)(nul - text), MN_JSON_RULE_NUL, "NUL byte", e);
	at = (flags & MN_JSON_UTF8) ? utf8_invalid_at((const uint8_t *)text, len) : len;
	if (at != len)
		return fault(text, at, MN_JSON_RULE_UTF8, "invalid UTF-8", e);
	lex_scan(text, len, &lx);
	if (lx.str_at != SIZE_MAX && !(flags & MN_JSON_OPAQUE_STRINGS))
		return fault(text, lx.str_at, MN_JSON_RULE_STRING, lx.str_why, e);
	if (lx.inexact_at != SIZE_MAX && (flags & MN_JSON_EXACT_INTEGERS))
		return fault(text, lx.inexact_at, MN_JSON_RULE_NUMBER,
		             "a number that would be rounded to another integer (beyond 2^53, or "
		             "a fraction too close to an integer)",
		             e);
	/* cJSON reads up to a NUL: give it exactly these bytes, terminated. */
	copy = malloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, text, len);
	copy[len] = '\0';
	root = cJSON_ParseWithLengthOpts(copy, len + 1, &end, false);
	while (root && end < copy + len && (unsigned char)*end <= ' ')
		end++;
	if (!root || end != copy + len) {
		at = end && end >= copy && end <= copy + len ? (size_t)(end - copy) : 0;
		cJSON_Delete(root);
		free(copy);
		return fault(text, at, MN_JSON_RULE_SYNTAX, "syntax error", e);
	}
	free(copy);
	*out = root;
	return 0;
}

size_t mn_json_first_non_integer(const char *text, size_t len, size_t *nlen)
{
	struct lex lx;

	lex_scan(text, len, &lx);
	*nlen = lx.num_len;
	return lx.num_at;
}

int mn_json_members(const cJSON *obj, const struct mn_json_member *table, size_t n, bool others,
                    enum mn_json_fault *fault_out, const char **name)
{
	enum mn_json_fault f = MN_JSON_UNKNOWN;
	const char *bad = NULL;
	const cJSON *m;

	for (size_t i = 0; i < n; i++)
		*table[i].value = NULL;
	cJSON_ArrayForEach(m, obj)
	{
		const char *k = m->string ? m->string : "";
		size_t i = 0;

		while (i < n && strcmp(table[i].name, k) != 0)
			i++;
		if (i == n && others)
			continue;
		if (i == n || *table[i].value) {
			f = i == n ? MN_JSON_UNKNOWN : MN_JSON_DUPLICATE;
			bad = k;
			goto fail;
		}
		*table[i].value = m;
	}
	for (size_t i = 0; i < n; i++) {
		if (table[i].required && !*table[i].value) {
			f = MN_JSON_MISSING;
			bad = table[i].name;
			goto fail;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const cJSON *v = *table[i].value;

		if (v && table[i].type && !((v->type & 0xff) & table[i].type)) {
			f = MN_JSON_TYPE;
			bad = table[i].name;
			goto fail;
		}
	}
	return 0;
fail:
	if (fault_out)
		*fault_out = f;
	if (name)
		*name = bad;
	return -EINVAL;
}

bool mn_json_duplicate(const cJSON *obj, const cJSON *item)
{
	for (const cJSON *p = obj->child; p && p != item; p = p->next)
		if (p->string && item->string && strcmp(p->string, item->string) == 0)
			return true;
	return false;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *mn_json_first_duplicate_name(const char **names, size_t n)
{
	if (n < 2)
		return NULL;
	qsort(names, n, sizeof(*names), cmp_str);
	for (size_t i = 1; i < n; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			return names[i];
	return NULL;
}

int mn_json_first_duplicate(const cJSON *obj, const char **dup)
{
	const char **names;
	const cJSON *m;
	size_t n = 0;

	*dup = NULL;
	cJSON_ArrayForEach(m, obj) n++;
	if (n < 2)
		return 0;
	names = malloc(n * sizeof(*names));
	if (!names)
		return -ENOMEM;
	n = 0;
	cJSON_ArrayForEach(m, obj) names[n++] = m->string ? m->string : "";
	*dup = mn_json_first_duplicate_name(names, n);
	free(names);
	return 0;
}

bool mn_json_utf8(const char *s, size_t n)
{
	return utf8_invalid_at((const uint8_t *)s, n) == n;
}

const char *mn_json_type_name(int type)
{
	if (type & (cJSON_False | cJSON_True))
		return "a boolean";
	if (type & cJSON_NULL)
		return "null";
	if (type & cJSON_Number)
		return "a number";
	if (type & cJSON_String)
		return "a string";
	if (type & cJSON_Array)
		return "an array";
	if (type & cJSON_Object)
		return "an object";
	return "a JSON value";
}

bool mn_json_get_int(const cJSON *item, int64_t lo, int64_t hi, int64_t *out)
{
	double d;

	if (!cJSON_IsNumber(item))
		return false;
	d = item->valuedouble;
	/* Written so that NaN fails too. */
	if (!isfinite(d) || d != floor(d) || !(d >= (double)lo && d <= (double)hi))
		return false;
	*out = (int64_t)d;
	return true;
}
