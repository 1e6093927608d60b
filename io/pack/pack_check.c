/* Checks of one JSONL line that cJSON's API cannot express (issue 22; pack.h): NUL characters, which its
 * NUL-terminated strings would silently cut at, and duplicate keys, of which cJSON returns the first and Python's
 * json the last. Both are refused with the line and column rather than read as something the user did not write. */
#include "prefopt/pack.h"

#include <cjson/cJSON.h>

#include <inttypes.h>
#include <string.h>

int prefopt_jsonl_check_nul(const char *line, size_t len, const char *file, int64_t lineno, prefopt_err *err)
{
    const char *z = memchr(line, '\0', len);
    if (z) {
        prefopt_err_set(err, "%s:%" PRId64 ": a NUL byte at column %zu (JSON text holds none: is it UTF-16 or "
                             "binary?)", file, lineno, (size_t)(z - line) + 1);
        return 1;
    }
    /* the escape \u0000 inside a string (a backslash that is itself escaped does not start one) */
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = line[i];
        if (!in_str) {
            in_str = ch == '"';
            continue;
        }
        if (ch == '"') {
            in_str = 0;
        } else if (ch == '\\' && i + 1 < len) {
            if (line[i + 1] == 'u' && i + 5 < len && !memcmp(line + i + 2, "0000", 4)) {
                prefopt_err_set(err, "%s:%" PRId64 ": a string holds \\u0000 (a NUL character) at column %zu: "
                                     "prefopt's strings end at NUL, the text would be cut there; remove it",
                                file, lineno, i + 1);
                return 1;
            }
            i++; /* the escaped character */
        }
    }
    return 0;
}

int prefopt_jsonl_check_keys(const struct cJSON *v, const char *file, int64_t lineno, prefopt_err *err)
{
    for (const cJSON *a = v ? v->child : NULL; a; a = a->next) {
        if (cJSON_IsObject(v))
            for (const cJSON *b = a->next; b; b = b->next)
                if (a->string && b->string && !strcmp(a->string, b->string)) {
                    prefopt_err_set(err, "%s:%" PRId64 ": key '%s' appears twice in one object (Python's json "
                                         "takes the last, cJSON the first): keep one",
                                    file, lineno, a->string);
                    return 1;
                }
        if ((cJSON_IsObject(a) || cJSON_IsArray(a)) && prefopt_jsonl_check_keys(a, file, lineno, err))
            return 1;
    }
    return 0;
}
