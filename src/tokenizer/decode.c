/* prefopt tokenizers: decoding ids through a tokenizer.json decoder chain (ByteLevel, Replace, ByteFallback, Fuse,
 * Strip, Metaspace), step by step on the list of token strings as Hugging Face tokenizers does. One difference on
 * purpose: bytes (ByteLevel or byte fallback) that do not form valid UTF-8 are kept as they are (Hugging Face writes
 * U+FFFD), so with a ByteLevel decoder, decoding ids one by one and joining the results gives the same bytes as
 * decoding them together (SentencePiece-style chains strip or drop a leading space per call, so not there). */
#define _GNU_SOURCE
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <utf8proc.h>
#include <string.h>

/* ---- decoding ------------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t len;
} piece;

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

char *tok_bpe_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special, prefopt_err *err)
{
    piece *p = prefopt_xcalloc(n + 1, sizeof *p, "decode pieces");
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->tok[ids[i]]) {
            prefopt_err_set(err, "decode: token id %d at position %zu is not in the vocabulary (size %d)", ids[i], i,
                            t->vocab_size);
            for (size_t j = 0; j < np; j++)
                free(p[j].s);
            free(p);
            return NULL;
        }
        if (skip_special && t->is_special[ids[i]])
            continue;
        p[np].len = t->toklen[ids[i]];
        p[np].s = prefopt_xmalloc(p[np].len + 1, "decode piece");
        memcpy(p[np].s, t->tok[ids[i]], p[np].len);
        np++;
    }
    if (!t->ndec && np > 1) { /* no decoder: Hugging Face joins tokens with spaces */
        size_t tot = 0;
        for (size_t i = 0; i < np; i++)
            tot += p[i].len + 1;
        char *j = prefopt_xmalloc(tot, "decoded text"), *o = j;
        for (size_t i = 0; i < np; i++) {
            if (i)
                *o++ = ' ';
            memcpy(o, p[i].s, p[i].len);
            o += p[i].len;
            free(p[i].s);
        }
        p[0] = (piece){j, (size_t)(o - j)};
        np = 1;
    }
    for (int d = 0; d < t->ndec; d++) {
        const tok_dec *dc = &t->dec[d];
        for (size_t i = 0; i < np && dc->type != TOK_DEC_FUSE; i++) {
            piece *q = &p[i];
            if (dc->type == TOK_DEC_BYTELEVEL) {
                /* map each character back to its byte; a piece with an unmapped character stays as it is */
                char *o = prefopt_xmalloc(q->len + 1, "decode"), *w = o;
                size_t j = 0;
                int ok = 1;
                while (j < q->len && ok) {
                    const unsigned char *u = (const unsigned char *)q->s + j;
                    int l = tok_utf8_len(u, q->len - j);
                    uint32_t cp = l == 1 ? u[0] : l == 2 ? ((u[0] & 31u) << 6 | (u[1] & 63u)) : 0xffffffffu;
                    int b = cp < 0x144 ? t->cp_byte[cp] : -1;
                    if (b < 0)
                        ok = 0;
                    else
                        *w++ = (char)b;
                    j += l ? (size_t)l : 1;
                }
                if (ok) {
                    free(q->s);
                    q->s = o;
                    q->len = (size_t)(w - o);
                } else {
                    free(o);
                }
            } else if (dc->type == TOK_DEC_REPLACE || dc->type == TOK_DEC_METASPACE) {
                size_t nl;
                char *r = tok_replace_all(q->s, q->len, dc->a, dc->alen, dc->type == TOK_DEC_REPLACE ? dc->b : " ",
                                      dc->type == TOK_DEC_REPLACE ? dc->blen : 1, &nl);
                if (dc->type == TOK_DEC_METASPACE && i == 0 && dc->prepend_scheme != TOK_PREPEND_NEVER) {
                    free(r); /* the first piece loses its replacement characters (Hugging Face Metaspace) */
                    r = tok_replace_all(q->s, q->len, dc->a, dc->alen, "", 0, &nl);
                }
                free(q->s);
                q->s = r;
                q->len = nl;
            } else if (dc->type == TOK_DEC_BYTEFALLBACK) {
                if (q->len == 6 && !memcmp(q->s, "<0x", 3) && q->s[5] == '>' && hexval(q->s[3]) >= 0 &&
                    hexval(q->s[4]) >= 0) {
                    q->s[0] = (char)(hexval(q->s[3]) * 16 + hexval(q->s[4])); /* kept as a raw byte */
                    q->len = 1;
                }
            } else if (dc->type == TOK_DEC_STRIP) {
                size_t a = 0, b = q->len;
                for (int c = 0; c < dc->start && a < b && q->s[a] == dc->a[0]; c++)
                    a++;
                for (int c = 0; c < dc->stop && b > a && q->s[b - 1] == dc->a[0]; c++)
                    b--;
                memmove(q->s, q->s + a, b - a);
                q->len = b - a;
            }
        }
        if (dc->type == TOK_DEC_FUSE && np > 1) {
            size_t tot = 0;
            for (size_t i = 0; i < np; i++)
                tot += p[i].len;
            char *j = prefopt_xmalloc(tot + 1, "decoded text"), *o = j;
            for (size_t i = 0; i < np; i++) {
                memcpy(o, p[i].s, p[i].len);
                o += p[i].len;
                free(p[i].s);
            }
            p[0] = (piece){j, tot};
            np = 1;
        }
    }
    size_t tot = 0;
    for (size_t i = 0; i < np; i++)
        tot += p[i].len;
    char *out = prefopt_xmalloc(tot + 1, "decoded text"), *o = out;
    for (size_t i = 0; i < np; i++) {
        memcpy(o, p[i].s, p[i].len);
        o += p[i].len;
        free(p[i].s);
    }
    *o = '\0';
    free(p);
    return out;
}

/* Bytes after an invalid lead that still form the start of a valid sequence: one U+FFFD covers the lead and them
 * (Unicode's "maximal subpart", what Rust's from_utf8_lossy and Python's errors="replace" do). */
static size_t maximal_subpart(const unsigned char *p, size_t n)
{
    unsigned b = p[0];
    size_t want = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 1;
    size_t k = 1;
    while (k < want && k < n) {
        unsigned lo = 0x80, hi = 0xbf, c = p[k];
        if (k == 1) /* the second byte's narrower ranges: no overlong forms, surrogates or values past U+10FFFF */
            lo = b == 0xe0 ? 0xa0 : b == 0xf0 ? 0x90 : 0x80, hi = b == 0xed ? 0x9f : b == 0xf4 ? 0x8f : 0xbf;
        if (c < lo || c > hi)
            break;
        k++;
    }
    return k;
}

char *prefopt_utf8_sanitize(const char *s, size_t *replaced)
{
    size_t n = strlen(s), o = 0, bad = 0;
    char *out = prefopt_xmalloc(3 * n + 1, "UTF-8 text"); /* a byte becomes at most the 3 bytes of U+FFFD */
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k > 0) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k, i += (size_t)k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, bad++;
            i += maximal_subpart(p + i, n - i);
        }
    }
    out[o] = '\0';
    if (replaced)
        *replaced = bad;
    return out;
}
