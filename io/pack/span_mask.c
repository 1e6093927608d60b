/* Which tokens of a rendered chat hold the {% generation %} spans of its template: the mask transformers'
 * apply_chat_template(return_assistant_tokens_mask=True) returns and TRL's assistant_only_loss trains on.
 * transformers marks, for each span [a, b) of the text, the tokens from char_to_token(a) to char_to_token(b - 1).
 * prefopt's tokenizer keeps no offsets, so a token's place in the text is recovered from decoding: token k ends
 * where decode(ids[0..k]) ends, for every tokenizer whose decode of a prefix is a prefix of the text (byte-level
 * BPE exactly; Metaspace/SentencePiece, whose decoder undoes the prepended "▁"). That is checked at every point
 * used, and a tokenizer for which it fails is refused by name rather than given a wrong mask. */
#include "pack_internal.h"

#include <stdlib.h>
#include <string.h>

/* bytes of text covered by ids[0..k] (k + 1 tokens); -1 with err set when the decode is not a prefix of text */
static long prefix_end(const prefopt_tokenizer *t, const char *text, size_t len, const int32_t *ids, size_t k,
                       prefopt_err *err)
{
    char *d = prefopt_tokenizer_decode(t, ids, k + 1, 0, err);
    if (!d)
        return -1;
    size_t m = strlen(d);
    long r = m <= len && !memcmp(d, text, m) ? (long)m : -1;
    free(d);
    if (r < 0)
        prefopt_err_set(err, "the tokenizer's decode of the first %zu tokens is not the start of the rendered text "
                             "(a normalizer rewrites it), so the assistant tokens cannot be located",
                        k + 1);
    return r;
}

/* the first token holding byte c (the smallest k with end(k) > c); n when c lies past the last token */
static long token_at(const prefopt_tokenizer *t, const char *text, size_t len, const int32_t *ids, size_t n,
                     size_t c, prefopt_err *err)
{
    size_t lo = 0, hi = n; /* answer in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        long e = prefix_end(t, text, len, ids, mid, err);
        if (e < 0)
            return -1;
        if ((size_t)e > c)
            hi = mid;
        else
            lo = mid + 1;
    }
    return (long)lo;
}

int prefopt_pack_span_mask(const prefopt_tokenizer *t, const char *text, size_t len, const int32_t *ids, size_t n,
                           const prefopt_chat_span *spans, size_t nspans, int32_t *mask, prefopt_err *err)
{
    memset(mask, 0, n * sizeof *mask);
    for (size_t s = 0; s < nspans; s++) {
        if (spans[s].end <= spans[s].start) /* an empty block marks nothing (transformers' range is empty too) */
            continue;
        long a = token_at(t, text, len, ids, n, spans[s].start, err);
        long b = a < 0 ? -1 : token_at(t, text, len, ids, n, spans[s].end - 1, err);
        if (a < 0 || b < 0)
            return 1;
        for (long k = a; k <= b && k < (long)n; k++)
            mask[k] = 1;
    }
    return 0;
}
