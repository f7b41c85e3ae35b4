/* json.c - see json.h. */
#include "json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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
