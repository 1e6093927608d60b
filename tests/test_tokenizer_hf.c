/* Real tokenizer.json files (GPT-2, Llama 3, a Llama-2-style SentencePiece BPE, Qwen3) against the ids, decoded
 * texts and re-encodings that Hugging Face tokenizers (Rust) produced for tests/data/tokenizers/corpus.json
 * (tests/tools/tokenizer_reference.js wrote reference.json). Also the special-token ids from each
 * tokenizer_config.json and the sha256 identity against sha256sum. Two variants of the llama2 file with the newer
 * Metaspace pre-tokenizer layout are derived here and in the node script the same way. */
#define _GNU_SOURCE
#include "prefopt/tokenizer.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int failures;
#define CHECK(c, ...)                                                                               \
    do {                                                                                            \
        if (!(c)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #c);                   \
            fprintf(stderr, __VA_ARGS__);                                                           \
            fputc('\n', stderr);                                                                    \
            failures++;                                                                             \
        }                                                                                           \
    } while (0)

static char *slurp_cmd(const char *cmd, size_t *len)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, p)) > 0) {
        n += got;
        if (n == cap)
            buf = realloc(buf, cap *= 2);
    }
    if (pclose(p) != 0) {
        free(buf);
        return NULL;
    }
    buf = realloc(buf, n + 1);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int ids_equal(const int32_t *a, size_t na, const cJSON *want, size_t *first_diff)
{
    size_t nw = (size_t)cJSON_GetArraySize(want), i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, want)
    {
        if (i >= na || a[i] != e->valueint)
            break;
        i++;
    }
    *first_diff = i;
    return i == nw && na == nw;
}

static void print_ids(const char *what, const int32_t *a, size_t n, size_t from)
{
    fprintf(stderr, "  %s[%zu..]:", what, from);
    for (size_t i = from; i < n && i < from + 12; i++)
        fprintf(stderr, " %d", a[i]);
    fputc('\n', stderr);
}

static void add_token(cJSON *list, int id, const char *content, int lstrip, int rstrip, int normalized, int special)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", lstrip);
    cJSON_AddBoolToObject(a, "rstrip", rstrip);
    cJSON_AddBoolToObject(a, "normalized", normalized);
    cJSON_AddBoolToObject(a, "special", special);
    cJSON_AddItemToArray(list, a);
}

/* Variants derived exactly as tokenizer_reference.js derives them: "<base>_added" adds added tokens of every kind;
 * "llama2_metaspace_*" is the newer SentencePiece-style layout (Metaspace pre-tokenizer and decoder). */
static int derive(const char *dir, const char *name)
{
    int split = strstr(name, "always") != NULL;
    const char *scheme = split ? "always" : "first";
    char path[512], cmd[600];
    snprintf(cmd, sizeof cmd, "cat %s/tokenizer.json", dir);
    size_t len;
    char *txt = slurp_cmd(cmd, &len);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!j)
        return 1;
    if (strstr(name, "_added")) {
        int base = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab"))
        base = v->valueint + 1 > base ? v->valueint + 1 : base;
        cJSON *list = cJSON_GetObjectItem(j, "added_tokens");
        add_token(list, base, "<tool>", 0, 0, 1, 0);
        add_token(list, base + 1, " [SEP] ", 0, 0, 1, 0);
        add_token(list, base + 2, "<raw>", 0, 0, 0, 0);
        add_token(list, base + 3, "<|sp|>", 1, 1, 0, 1);
    } else {
        cJSON_ReplaceItemInObject(j, "normalizer", cJSON_CreateNull());
        cJSON *pre = cJSON_CreateObject();
        cJSON_AddStringToObject(pre, "type", "Metaspace");
        cJSON_AddStringToObject(pre, "replacement", "\xe2\x96\x81");
        cJSON_AddStringToObject(pre, "prepend_scheme", scheme);
        cJSON_AddBoolToObject(pre, "split", split);
        cJSON *dec = cJSON_CreateObject(), *list = cJSON_CreateArray(), *x;
        cJSON_AddStringToObject(dec, "type", "Sequence");
        cJSON_AddItemToArray(list, cJSON_Duplicate(pre, 1));
        cJSON_AddItemToArray(list, x = cJSON_CreateObject());
        cJSON_AddStringToObject(x, "type", "ByteFallback");
        cJSON_AddItemToArray(list, x = cJSON_CreateObject());
        cJSON_AddStringToObject(x, "type", "Fuse");
        cJSON_AddItemToObject(dec, "decoders", list);
        cJSON_ReplaceItemInObject(j, "pre_tokenizer", pre);
        cJSON_ReplaceItemInObject(j, "decoder", dec);
    }
    char *out = cJSON_PrintUnformatted(j);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    int rc = !f || fputs(out, f) < 0;
    if (f)
        fclose(f);
    free(out);
    cJSON_Delete(j);
    return rc;
}

/* Several threads encoding with one tokenizer at once get the reference ids too (the cache serves one of them). */
typedef struct {
    const prefopt_tokenizer *t;
    const cJSON *cases, *texts;
    int mismatches;
} thread_job;

static void *encode_all(void *arg)
{
    thread_job *j = arg;
    int32_t *ids = NULL;
    size_t cap = 0;
    for (int round = 0; round < 3; round++) {
        int ci = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, j->cases)
        {
            const char *text = cJSON_GetArrayItem(j->texts, ci++)->valuestring;
            size_t n = 0, d;
            prefopt_err err = {0};
            if (prefopt_tokenizer_encode(j->t, text, strlen(text), 1, &ids, &n, &cap, &err) ||
                !ids_equal(ids, n, cJSON_GetObjectItem(c, "ids"), &d))
                j->mismatches++;
        }
    }
    free(ids);
    return NULL;
}

static void check_threads(const prefopt_tokenizer *t, const char *name, const cJSON *cases, const cJSON *texts)
{
    enum { NT = 4 };
    pthread_t th[NT];
    thread_job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (thread_job){t, cases, texts, 0};
        CHECK(!pthread_create(&th[i], NULL, encode_all, &jobs[i]), "pthread_create");
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].mismatches == 0, "%s: thread %d: %d texts differ", name, i, jobs[i].mismatches);
    }
}

static void check_tokenizer(const char *src, const char *name, const cJSON *cases, const cJSON *texts,
                            int want_bos, int want_eos, int want_pad)
{
    char cmd[4096], dir[256], path[512];
    char data[64];
    snprintf(data, sizeof data, "%.*s", (int)strcspn(name, "_"), name);
    snprintf(dir, sizeof dir, "tok_%s", name);
    mkdir(dir, 0755);
    snprintf(cmd, sizeof cmd, "gzip -dc '%s/tests/data/tokenizers/%s/tokenizer.json.gz' > %s/tokenizer.json && "
                              "cp '%s/tests/data/tokenizers/%s/tokenizer_config.json' %s/",
             src, data, dir, src, data, dir);
    if (system(cmd) != 0 || (strcmp(data, name) && derive(dir, name))) {
        CHECK(0, "could not unpack %s", name);
        return;
    }
    prefopt_tokenizer *t = NULL;
    prefopt_err err = {0};
    CHECK(!prefopt_tokenizer_load(dir, &t, &err), "%s: %s", name, err.msg);
    if (!t)
        return;
    CHECK(prefopt_tokenizer_bos(t) == want_bos, "%s bos %d want %d", name, prefopt_tokenizer_bos(t), want_bos);
    CHECK(prefopt_tokenizer_eos(t) == want_eos, "%s eos %d want %d", name, prefopt_tokenizer_eos(t), want_eos);
    CHECK(prefopt_tokenizer_pad(t) == want_pad, "%s pad %d want %d", name, prefopt_tokenizer_pad(t), want_pad);
    /* Hugging Face encode("hi there", add_special_tokens=True) adds <s> (1) in front for the llama2 files only */
    int first, last;
    prefopt_tokenizer_template(t, &first, &last);
    CHECK(first == (strncmp(name, "llama2", 6) ? -1 : 1) && last == -1, "%s template %d %d", name, first, last);

    snprintf(path, sizeof path, "sha256sum %s/tokenizer.json", dir);
    size_t len;
    char *sum = slurp_cmd(path, &len);
    if (sum && len >= 64) {
        char want[80];
        snprintf(want, sizeof want, "sha256:%.64s", sum);
        CHECK(!strcmp(prefopt_tokenizer_identity(t), want), "%s identity %s want %s", name,
              prefopt_tokenizer_identity(t), want);
    }
    free(sum);

    int ci = 0, bad = 0;
    const cJSON *c;
    int32_t *ids = NULL;
    size_t cap = 0;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetArrayItem(texts, ci)->valuestring;
        size_t n = 0, d;
        prefopt_err_clear(&err);
        int rc = prefopt_tokenizer_encode(t, text, strlen(text), 1, &ids, &n, &cap, &err);
        CHECK(!rc, "%s case %d: %s", name, ci, err.msg);
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        if (!ids_equal(ids, n, want, &d)) {
            CHECK(0, "%s case %d ids differ at %zu (got %zu ids, want %d): %.60s", name, ci, d, n,
                  cJSON_GetArraySize(want), text);
            print_ids("got", ids, n, d);
            bad++;
        }
        char *dec = prefopt_tokenizer_decode(t, ids, n, 0, &err);
        const char *wd = cJSON_GetObjectItem(c, "decoded")->valuestring;
        CHECK(dec && !strcmp(dec, wd), "%s case %d decode: got '%s' want '%s'", name, ci, dec ? dec : "(null)", wd);
        char *dsk = prefopt_tokenizer_decode(t, ids, n, 1, &err);
        wd = cJSON_GetObjectItem(c, "decoded_skip")->valuestring;
        CHECK(dsk && !strcmp(dsk, wd), "%s case %d decode(skip_special): got '%s' want '%s'", name, ci,
              dsk ? dsk : "(null)", wd);
        if (dec) { /* encode(decode(ids)) as Hugging Face re-encodes it */
            n = 0;
            CHECK(!prefopt_tokenizer_encode(t, dec, strlen(dec), 1, &ids, &n, &cap, &err), "%s", err.msg);
            want = cJSON_GetObjectItem(c, "reencoded");
            CHECK(ids_equal(ids, n, want, &d), "%s case %d: encode(decode(ids)) differs at %zu", name, ci, d);
        }
        free(dec);
        free(dsk);
        ci++;
    }
    CHECK(ci == cJSON_GetArraySize(texts), "%s: %d cases for %d texts", name, ci, cJSON_GetArraySize(texts));
    if (!strcmp(name, "gpt2") || !strcmp(name, "llama2"))
        check_threads(t, name, cases, texts);
    printf("%s: %d texts, %d with differing ids\n", name, ci, bad);
    free(ids);
    prefopt_tokenizer_free(t);
}

int main(void)
{
    const char *src = getenv("PREFOPT_SOURCE_DIR");
    if (!src) {
        fprintf(stderr, "PREFOPT_SOURCE_DIR is not set\n");
        return 1;
    }
    if (system("gzip --version > /dev/null 2>&1 && sha256sum --version > /dev/null 2>&1") != 0)
        return 77;
    char cmd[1024];
    size_t len;
    snprintf(cmd, sizeof cmd, "cat '%s/tests/data/tokenizers/reference.json'", src);
    char *reftxt = slurp_cmd(cmd, &len);
    snprintf(cmd, sizeof cmd, "cat '%s/tests/data/tokenizers/corpus.json'", src);
    char *corptxt = slurp_cmd(cmd, &len);
    cJSON *ref = reftxt ? cJSON_Parse(reftxt) : NULL, *corp = corptxt ? cJSON_Parse(corptxt) : NULL;
    if (!ref || !corp) {
        fprintf(stderr, "cannot read reference.json / corpus.json\n");
        return 1;
    }
    const cJSON *texts = cJSON_GetObjectItem(corp, "texts"), *toks = cJSON_GetObjectItem(ref, "tokenizers");
    /* special ids as the tokenizer_config.json files name them (ids looked up in the files by hand) */
    static const struct {
        const char *name;
        int bos, eos, pad;
    } fam[] = {
        {"gpt2", 50256, 50256, 50256},         /* <|endoftext|> for all three (pad falls back to eos) */
        {"llama3", 128000, 128001, 128001},    /* <|begin_of_text|>, <|end_of_text|> */
        {"llama2", 1, 2, 2},                   /* <s>, </s>, pad_token null */
        {"qwen3", -1, 151645, 151643},         /* bos_token null, <|im_end|>, <|endoftext|> */
        {"llama2_metaspace_first", 1, 2, 2},   /* llama2 with a Metaspace pre-tokenizer, prepend_scheme first */
        {"llama2_metaspace_always", 1, 2, 2},  /* ... prepend_scheme always, split */
        {"llama2_added", 1, 2, 2},             /* llama2 + added tokens (normalized or not, special, l/rstrip) */
        {"gpt2_added", 50256, 50256, 50256},   /* gpt2 + the same added tokens */
    };
    int seen = 0;
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        const cJSON *tk = cJSON_GetObjectItem(toks, fam[i].name);
        CHECK(tk != NULL, "reference.json has no %s", fam[i].name);
        if (!tk)
            continue;
        check_tokenizer(src, fam[i].name, cJSON_GetObjectItem(tk, "cases"), texts, fam[i].bos, fam[i].eos, fam[i].pad);
        seen++;
    }
    CHECK(seen == 8, "%d tokenizers checked", seen);
    cJSON_Delete(ref);
    cJSON_Delete(corp);
    free(reftxt);
    free(corptxt);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("test_tokenizer_hf: ok\n");
    return failures ? 1 : 0;
}
