/* libFuzzer harness: chat templates (src/tokenizer/chat_*.c, prefopt/chat_template.h).
 * Input: template source bytes -> prefopt_chat_template_parse, then a render over a fixed multi-turn conversation
 * (unicode, empty content, an assistant turn), with and without add_generation_prompt.
 * Checked: no crash, hang or sanitizer report (the interpreter's step, recursion and memory budgets stop runaway
 * templates); a failure fills a one-line message naming the template; an accepted render is valid UTF-8 with the
 * length it reports, its {% generation %} spans are ordered and inside it, and a second render gives the same
 * bytes (no state leaks between renders). */
#include "fuzz_common.h"
#include "prefopt/chat_template.h"

static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char b = s[i];
        size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static cJSON *conversation;

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (!conversation)
        conversation = cJSON_Parse("[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":"
                                   "\"h\\u00e9 \\u65e5 <|im_end|>\"},{\"role\":\"assistant\",\"content\":\"\"},"
                                   "{\"role\":\"user\",\"content\":\"  x\\n\"}]");
    prefopt_err err = {0};
    prefopt_chat_template *t = NULL;
    int rc = prefopt_chat_template_parse((const char *)data, size, "fuzz", &t, &err);
    fuzz_check_err(rc, &err);
    if (rc) {
        if (!strstr(err.msg, "chat template fuzz")) {
            fprintf(stderr, "fuzz_chat_template: the message does not name the template: %s\n", err.msg);
            abort();
        }
        return 0;
    }
    for (int agp = 0; agp < 2; agp++) {
        char *out = NULL, *again = NULL;
        size_t len = 0, len2 = 0, ns = 0, ns2 = 0;
        prefopt_chat_span *sp = NULL, *sp2 = NULL;
        prefopt_err_clear(&err);
        rc = prefopt_chat_template_render(t, conversation, agp, NULL, &out, &len, &sp, &ns, &err);
        fuzz_check_err(rc, &err);
        if (rc) {
            if (!strstr(err.msg, "chat template fuzz")) {
                fprintf(stderr, "fuzz_chat_template: the message does not name the template: %s\n", err.msg);
                abort();
            }
            continue;
        }
        if (!valid_utf8((const unsigned char *)out, len) || out[len] != '\0') {
            fprintf(stderr, "fuzz_chat_template: the render is not NUL-terminated valid UTF-8 of its length\n");
            abort();
        }
        for (size_t i = 0; i < ns; i++)
            if (sp[i].start > sp[i].end || sp[i].end > len || (i && sp[i].start < sp[i - 1].end)) {
                fprintf(stderr, "fuzz_chat_template: span %zu (%zu..%zu) out of order or outside %zu bytes\n", i,
                        sp[i].start, sp[i].end, len);
                abort();
            }
        prefopt_err_clear(&err);
        if (prefopt_chat_template_render(t, conversation, agp, NULL, &again, &len2, &sp2, &ns2, &err) ||
            len2 != len || memcmp(again, out, len) || ns2 != ns || (ns && memcmp(sp, sp2, ns * sizeof *sp))) {
            /* strftime_now can change between the two renders at a second boundary: only a change of length
             * or of success is an error then */
            if (!strstr((const char *)data, "strftime_now") || len2 != len) {
                fprintf(stderr, "fuzz_chat_template: a second render differs (%s)\n", err.set ? err.msg : "bytes");
                abort();
            }
        }
        free(out);
        free(again);
        free(sp);
        free(sp2);
    }
    prefopt_chat_template_free(t);
    return 0;
}
