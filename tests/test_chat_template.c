/* Chat templates (prefopt/chat_template.h), the checks that need no reference renderer: where a model's template
 * is found (tokenizer_config.json string or list form, chat_template.jinja, chat_template.json, none), the special
 * tokens it sees (strings and AddedToken objects), the real Llama-3 and Qwen3 configs of tests/data/tokenizers
 * against strings written out by hand from the models' documented formats, {% generation %} byte spans, and the
 * errors: each one line naming the template, the line:column and the construct, budgets instead of hangs.
 * (Byte-identity with python3-jinja2 over the real templates is tests/test_chat_template_ref.sh.) */
#define _GNU_SOURCE
#include "prefopt/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;
#define CHECK(cond, ...)                                                                                            \
    do {                                                                                                            \
        if (!(cond)) {                                                                                              \
            failures++;                                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                    \
            fprintf(stderr, __VA_ARGS__);                                                                           \
            fprintf(stderr, "\n");                                                                                  \
        }                                                                                                           \
    } while (0)

static char tmpdir[256];

static void write_file(const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    if (!f || fputs(text, f) < 0 || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
}

static void rm_file(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    unlink(p);
}

static cJSON *msgs(const char *json)
{
    cJSON *m = cJSON_Parse(json);
    if (!m) {
        fprintf(stderr, "bad test JSON %s\n", json);
        exit(1);
    }
    return m;
}

/* renders src over messages; returns the text (malloc'd) or NULL with err filled */
static char *render_src(const char *src, const char *messages, int agp, prefopt_err *err)
{
    prefopt_chat_template *t;
    if (prefopt_chat_template_parse(src, strlen(src), "test", &t, err))
        return NULL;
    cJSON *m = msgs(messages);
    char *out = NULL;
    size_t len;
    if (prefopt_chat_template_render(t, m, agp, NULL, &out, &len, NULL, NULL, err))
        out = NULL;
    cJSON_Delete(m);
    prefopt_chat_template_free(t);
    return out;
}

static void expect_text(const char *src, const char *messages, int agp, const char *want)
{
    prefopt_err err = {0};
    char *got = render_src(src, messages, agp, &err);
    CHECK(got && !strcmp(got, want), "template %s\n  want %s\n  got  %s", src, want, got ? got : err.msg);
    free(got);
}

static void expect_error(const char *src, const char *messages, const char *pos, const char *words)
{
    prefopt_err err = {0};
    char *got = render_src(src, messages, 1, &err);
    CHECK(!got, "template %s should fail, rendered %s", src, got ? got : "");
    CHECK(err.set && strstr(err.msg, "chat template test") && (!pos || strstr(err.msg, pos)) &&
              strstr(err.msg, words) && !strchr(err.msg, '\n'),
          "template %s: the error should be one line naming the template, %s and '%s': got %s", src,
          pos ? pos : "(no position)", words, err.msg);
    free(got);
}

static const char *TWO_TURNS = "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
                               "{\"role\":\"assistant\",\"content\":\"Hello!\"}]";

static void test_loading(void)
{
    prefopt_err err = {0};
    prefopt_chat_template *t = NULL;
    /* no template at all: 0 and NULL (the caller falls back to ChatML and says so) */
    write_file("tokenizer_config.json", "{\"eos_token\": \"</s>\"}");
    CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(tmpdir, NULL, &t, &err) && !t, "a config without a template: %s", err.msg);
    /* the string form, with special tokens as strings and AddedToken objects */
    write_file("tokenizer_config.json",
               "{\"chat_template\": \"{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}"
               "{% endfor %}{{ pad_token }}|{{ additional_special_tokens|join(',') }}\", \"bos_token\": "
               "{\"__type\": \"AddedToken\", \"content\": \"<B>\"}, \"eos_token\": \"<E>\", \"pad_token\": null, "
               "\"additional_special_tokens\": [\"<x>\", {\"content\": \"<y>\"}]}");
    CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(tmpdir, NULL, &t, &err) && t, "string form: %s", err.msg);
    if (t) {
        cJSON *m = msgs(TWO_TURNS);
        char *out;
        size_t len;
        CHECK(!prefopt_chat_template_render(t, m, 0, NULL, &out, &len, NULL, NULL, &err), "render: %s", err.msg);
        CHECK(!strcmp(out, "<B>Be brief.<E>Hi<E>Hello!<E>|<x>,<y>"), "special tokens: got %s", out);
        CHECK(strstr(prefopt_chat_template_name(t), "tokenizer_config.json chat_template") != NULL, "name %s",
              prefopt_chat_template_name(t));
        free(out);
        cJSON_Delete(m);
        prefopt_chat_template_free(t);
    }
    /* the list form: "default", a named one, a missing name */
    write_file("tokenizer_config.json", "{\"chat_template\": [{\"name\": \"default\", \"template\": \"D\"}, "
                                        "{\"name\": \"tool_use\", \"template\": \"T\"}]}");
    const char *names[] = {NULL, "tool_use"}, *want[] = {"D", "T"};
    for (int i = 0; i < 2; i++) {
        t = NULL;
        CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(tmpdir, names[i], &t, &err) && t, "list form %d: %s", i, err.msg);
        if (t) {
            char *out;
            size_t len;
            CHECK(!prefopt_chat_template_render(t, NULL, 0, NULL, &out, &len, NULL, NULL, &err) &&
                      !strcmp(out, want[i]),
                  "list form %d rendered %s", i, out);
            free(out);
            prefopt_chat_template_free(t);
        }
    }
    CHECK(!(prefopt_err_clear(&err), 0) && prefopt_chat_template_load(tmpdir, "rag", &t, &err) && strstr(err.msg, "'rag'") &&
              strstr(err.msg, "'default', 'tool_use'"),
          "a missing name should list the names: %s", err.msg);
    write_file("tokenizer_config.json", "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}]}");
    CHECK(!(prefopt_err_clear(&err), 0) && prefopt_chat_template_load(tmpdir, NULL, &t, &err) && strstr(err.msg, "'default'"),
          "a list without default: %s", err.msg);
    /* chat_template.jinja beside the config wins (save_pretrained writes it) */
    write_file("tokenizer_config.json", "{\"chat_template\": \"config\", \"eos_token\": \"E\"}");
    write_file("chat_template.jinja", "jinja {{ eos_token }}\n");
    t = NULL;
    CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(tmpdir, NULL, &t, &err) && t, "jinja file: %s", err.msg);
    if (t) {
        char *out;
        size_t len;
        CHECK(!prefopt_chat_template_render(t, NULL, 0, NULL, &out, &len, NULL, NULL, &err) &&
                  !strcmp(out, "jinja E"),
              "chat_template.jinja should win, with one trailing newline dropped: %s", out);
        free(out);
        prefopt_chat_template_free(t);
    }
    rm_file("chat_template.jinja");
    /* a processor's chat_template.json when the config has none */
    write_file("tokenizer_config.json", "{\"bos_token\": \"B\"}");
    write_file("chat_template.json", "{\"chat_template\": \"json {{ bos_token }}\"}");
    t = NULL;
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", tmpdir);
    CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(cfg, NULL, &t, &err) && t, "chat_template.json: %s", err.msg);
    if (t) {
        char *out;
        size_t len;
        CHECK(!prefopt_chat_template_render(t, NULL, 0, NULL, &out, &len, NULL, NULL, &err) &&
                  !strcmp(out, "json B"),
              "chat_template.json: %s", out);
        free(out);
        prefopt_chat_template_free(t);
    }
    rm_file("chat_template.json");
    /* broken files name themselves */
    write_file("tokenizer_config.json", "{\"chat_template\": \n 12,");
    CHECK(!(prefopt_err_clear(&err), 0) && prefopt_chat_template_load(tmpdir, NULL, &t, &err) && strstr(err.msg, "tokenizer_config.json: line 2"),
          "bad JSON: %s", err.msg);
    write_file("tokenizer_config.json", "{\"chat_template\": \"{% for %}\"}");
    CHECK(!(prefopt_err_clear(&err), 0) && prefopt_chat_template_load(tmpdir, NULL, &t, &err) &&
              strstr(err.msg, "tokenizer_config.json chat_template: line 1:"),
          "template syntax error: %s", err.msg);
    rm_file("tokenizer_config.json");
}

/* the real configs vendored for the tokenizer tests; expected strings from the models' documented formats */
static void test_real_configs(void)
{
    const char *src = getenv("PREFOPT_SOURCE_DIR");
    char path[1024];
    const char *conv = "[{\"role\":\"system\",\"content\":\"You are terse.\"},{\"role\":\"user\",\"content\":\" Hi! \"}]";
    struct {
        const char *dir;
        int agp;
        const char *want;
    } cases[] = {
        {"llama3", 1,
         "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"qwen3", 1,
         "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n Hi! <|im_end|>\n<|im_start|>assistant\n"},
        {"qwen3", 0, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n Hi! <|im_end|>\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(path, sizeof path, "%s/tests/data/tokenizers/%s", src ? src : "..", cases[i].dir);
        prefopt_chat_template *t = NULL;
        prefopt_err err = {0};
        CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(path, NULL, &t, &err) && t, "%s: %s", path, err.msg);
        if (!t)
            continue;
        cJSON *m = msgs(conv);
        char *out = NULL;
        size_t len;
        CHECK(!prefopt_chat_template_render(t, m, cases[i].agp, NULL, &out, &len, NULL, NULL, &err), "%s: %s",
              cases[i].dir, err.msg);
        CHECK(out && !strcmp(out, cases[i].want), "%s agp=%d\n  want %s\n  got  %s", cases[i].dir, cases[i].agp,
              cases[i].want, out ? out : err.msg);
        free(out);
        cJSON_Delete(m);
        prefopt_chat_template_free(t);
    }
    /* the Llama-2 config has no template: load says so with NULL */
    snprintf(path, sizeof path, "%s/tests/data/tokenizers/llama2", src ? src : "..");
    prefopt_chat_template *t = NULL;
    prefopt_err err = {0};
    CHECK(!(prefopt_err_clear(&err), 0) && !prefopt_chat_template_load(path, NULL, &t, &err) && !t, "llama2 has no template: %s", err.msg);
}

static void test_spans(void)
{
    const char *src = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
                      "{{ m.content }}</a>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
    prefopt_chat_template *t;
    prefopt_err err = {0};
    CHECK(!prefopt_chat_template_parse(src, strlen(src), "test", &t, &err), "%s", err.msg);
    cJSON *m = msgs("[{\"role\":\"user\",\"content\":\"h\u00e9\"},{\"role\":\"assistant\",\"content\":\"\u65e5\u672c\"},"
                    "{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"\"}]");
    char *out;
    size_t len, ns;
    prefopt_chat_span *sp;
    CHECK(!prefopt_chat_template_render(t, m, 0, NULL, &out, &len, &sp, &ns, &err), "%s", err.msg);
    /* "<user>hé" is 9 bytes, "<assistant>" 11: the first span is bytes 20..30 ("日本</a>") */
    CHECK(ns == 2 && sp[0].start == 20 && sp[0].end == 30 && !memcmp(out + sp[0].start, "\xe6\x97\xa5", 3) &&
              sp[1].end - sp[1].start == 4 && !memcmp(out + sp[1].start, "</a>", 4) && sp[1].end == len,
          "spans: %zu spans, first %zu..%zu in %s", ns, ns ? sp[0].start : 0, ns ? sp[0].end : 0, out);
    free(out);
    free(sp);
    cJSON_Delete(m);
    prefopt_chat_template_free(t);
}

static void test_semantics(void)
{
    /* trim_blocks + lstrip_blocks as transformers sets them, and the - + modifiers */
    expect_text("{% for m in messages %}\n  {% if true %}\n{{ m.content }}\n  {% endif %}\n{% endfor %}",
                "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]", 0, "a\nb\n");
    expect_text("x  {{- 'y' -}}  \n z", "[]", 0, "xyz");
    expect_text("{%- if true %}  kept  {% endif -%}\n\n end", "[]", 0, "  kept  end");
    /* for-loop scopes are per iteration; namespaces carry values out */
    expect_text("{% set x = 0 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}", "[]", 0, "120");
    expect_text("{% set ns = namespace(x=0) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}",
                "[]", 0, "3");
    /* undefined: empty when printed, usable with default and tests */
    expect_text("[{{ nothing }}][{{ nothing|default('d') }}][{{ nothing is defined }}][{{ messages[3] }}]", "[]", 0,
                "[][d][False][]");
    expect_text("{{ add_generation_prompt }} {{ tools is none }} {{ documents is defined }}", "[]", 1,
                "True True True");
}

static void test_errors(void)
{
    expect_error("ok\n  {% frobnicate %}", "[]", "line 2:6", "unknown tag 'frobnicate'");
    expect_error("{{ x|shuffle }}", "[]", "line 1:6", "unsupported filter 'shuffle'");
    expect_error("{% if x is prime %}{% endif %}", "[]", "line 1:12", "unsupported test 'prime'");
    expect_error("{% include 'other.jinja' %}", "[]", "line 1:4", "{% include %}");
    expect_error("{% extends 'base' %}", "[]", "line 1:4", "{% extends %}");
    expect_error("{% for m in messages %}", "[]", "line 1:4", "no {% endfor %}");
    expect_error("{{ 'abc }}", "[]", "line 1:4", "unterminated string");
    expect_error("{{ (1 }}", "[]", NULL, "expected ')'");
    expect_error("{# never closed", "[]", "line 1:1", "missing end of comment");
    expect_error("{{ 1 ! 2 }}", "[]", "line 1:6", "unexpected char '!'");
    expect_error("{{ raise_exception('roles must alternate') }}", "[]", "line 1:19",
                 "raise_exception: roles must alternate");
    expect_error("{{ messages[0].content }}", "[]", "line 1:15", "has no attribute 0");
    expect_error("{{ nothing.attr }}", "[]", "line 1:11", "'nothing' is undefined");
    expect_error("{{ 1 + 'a' }}", "[]", "line 1:6", "unsupported operand type(s) for +: 'int' and 'str'");
    expect_error("{{ messages.append(1) }}", "[]", NULL, "unsafe");
    expect_error("{{ nothing|tojson }}", "[]", NULL, "not JSON serializable");
    expect_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "[]", NULL, "maximum recursion depth");
    expect_error("{% for a in range(100000) %}{% for b in range(100) %}{% endfor %}{% endfor %}", "[]", "line 1:",
                 "runs too long");
    expect_error("{{ range(10**9)|length }}", "[]", NULL, "MAX_RANGE");
    expect_error("{% break %}", "[]", "line 1:4", "'break' outside of a for loop");
    prefopt_err err = {0};
    prefopt_chat_template *t;
    CHECK(!(prefopt_err_clear(&err), 0) && prefopt_chat_template_parse("bad \xff byte", 10, "test", &t, &err) && strstr(err.msg, "UTF-8"),
          "invalid UTF-8: %s", err.msg);
    prefopt_err_clear(&err);
    CHECK(!prefopt_chat_template_parse("x", 1, "test", &t, &err), "parse x");
    cJSON *notarray = cJSON_CreateObject();
    char *out;
    size_t len;
    CHECK(prefopt_chat_template_render(t, notarray, 0, NULL, &out, &len, NULL, NULL, &err) &&
              strstr(err.msg, "messages must be a JSON array"),
          "messages not an array: %s", err.msg);
    cJSON_Delete(notarray);
    prefopt_chat_template_free(t);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/prefopt_chat_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_loading();
    test_real_configs();
    test_spans();
    test_semantics();
    test_errors();
    rmdir(tmpdir);
    if (failures) {
        fprintf(stderr, "test_chat_template: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_chat_template: all checks passed\n");
    return 0;
}
