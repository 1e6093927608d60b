/* libFuzzer harness: tokenizer.json (+ tokenizer_config.json) loading, then encode and decode
 * (the files of src/tokenizer/, tokenizer.h). Complements the tokenizer owner's tests/fuzz_tokenizer.c (which fixes two
 * tokenizers and fuzzes the text): here the files are the input, and decode also gets arbitrary ids.
 * Input: three parts separated by NUL bytes: tokenizer.json, tokenizer_config.json (absent when empty), text.
 * Checked: no crash or sanitizer report; failures fill a one-line message; a loaded tokenizer has bos/eos/pad
 * inside its vocabulary (or -1); encoded ids are inside the vocabulary and decode; decode of arbitrary ids
 * succeeds exactly when every id is inside the vocabulary. */
#include "fuzz_common.h"
#include "prefopt/tokenizer.h"

static const unsigned char *part(const unsigned char **p, size_t *left, size_t *len)
{
    const unsigned char *s = *p, *nul = memchr(s, 0, *left);
    *len = nul ? (size_t)(nul - s) : *left;
    *p += *len + (nul ? 1 : 0);
    *left -= *len + (nul ? 1 : 0);
    return s;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char dir[600], tj[700], tc[700];
    snprintf(dir, sizeof dir, "%s", fuzz_tmp_path("tokdir"));
    mkdir(dir, 0700);
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
    const unsigned char *p = data;
    size_t left = size, jl, cl, tl;
    const unsigned char *j = part(&p, &left, &jl), *c = part(&p, &left, &cl), *text = part(&p, &left, &tl);
    fuzz_write_file(tj, j, jl);
    if (cl)
        fuzz_write_file(tc, c, cl);
    else
        unlink(tc);
    prefopt_tokenizer *t = NULL;
    prefopt_err err = {0};
    int rc = prefopt_tokenizer_load(dir, &t, &err);
    fuzz_check_err(rc, &err);
    if (rc)
        return 0;
    const int V = prefopt_tokenizer_vocab_size(t);
    const int special[3] = {prefopt_tokenizer_bos(t), prefopt_tokenizer_eos(t), prefopt_tokenizer_pad(t)};
    for (int i = 0; i < 3; i++)
        if (special[i] < -1 || special[i] >= V) {
            fprintf(stderr, "fuzz_tokenizer_json: special id %d outside the vocabulary of %d\n", special[i], V);
            abort();
        }
    if (V <= 0 || !prefopt_tokenizer_identity(t))
        abort();
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    for (int allow = 0; allow < 2; allow++) {
        n = 0;
        rc = prefopt_tokenizer_encode(t, (const char *)text, tl, allow, &ids, &n, &cap, &err);
        fuzz_check_err(rc, &err);
        if (rc) {
            prefopt_err_clear(&err);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= V) {
                fprintf(stderr, "fuzz_tokenizer_json: encode gave id %d outside the vocabulary of %d\n", ids[i], V);
                abort();
            }
        for (int skip = 0; skip < 2; skip++) {
            char *d = prefopt_tokenizer_decode(t, ids, n, skip, &err);
            if (!d) {
                fprintf(stderr, "fuzz_tokenizer_json: ids from encode do not decode: %s\n", err.msg);
                abort();
            }
            free(d);
        }
    }
    /* arbitrary ids: the text's bytes as little-endian int16, some beyond the vocabulary or negative */
    size_t m = tl / 2;
    int32_t *any = malloc((m + 1) * sizeof(int32_t));
    int inside = 1;
    for (size_t i = 0; i < m; i++) {
        any[i] = (int16_t)(text[2 * i] | text[2 * i + 1] << 8);
        inside &= any[i] >= 0 && any[i] < V;
    }
    char *d = prefopt_tokenizer_decode(t, any, m, (int)(tl & 1), &err);
    fuzz_check_err(d == NULL, &err);
    if ((d != NULL) != inside) {
        fprintf(stderr, "fuzz_tokenizer_json: decode of %s ids %s\n", inside ? "valid" : "invalid",
                d ? "succeeded" : "failed");
        abort();
    }
    free(d);
    free(any);
    free(ids);
    char *word = malloc(tl + 1); /* the text as a token string: special or regular, -1 if absent */
    memcpy(word, text, tl);
    word[tl] = '\0';
    int id = prefopt_tokenizer_token_id(t, word);
    free(word);
    if (id < -1 || id >= V)
        abort();
    prefopt_tokenizer_free(t);
    return 0;
}
