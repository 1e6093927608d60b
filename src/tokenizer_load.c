/* prefopt: tokenizer.json loading. Placeholder until the BPE loader lands: fails with a clear message. */
#include "tokenizer_internal.h"

int prefopt_tokenizer_load(const char *path, prefopt_tokenizer **out, prefopt_err *err)
{
    *out = NULL;
    prefopt_err_set(err, "%s: tokenizer.json loading is not built yet (only the byte-level tokenizer)", path);
    return 1;
}

int tok_bpe_encode_piece(const prefopt_tokenizer *t, const char *s, size_t len, int first, int32_t **ids,
                         size_t *n, size_t *cap, prefopt_err *err)
{
    (void)t, (void)s, (void)len, (void)first, (void)ids, (void)n, (void)cap;
    prefopt_err_set(err, "BPE encoding is not built yet");
    return 1;
}

char *tok_bpe_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special, prefopt_err *err)
{
    (void)t, (void)ids, (void)n, (void)skip_special;
    prefopt_err_set(err, "BPE decoding is not built yet");
    return NULL;
}

void tok_bpe_free(prefopt_tokenizer *t) { (void)t; }
