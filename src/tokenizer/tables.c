/* prefopt tokenizers: the tables and string helpers every part of the tokenizer uses (the vocabulary's string
 * map, growing id arrays, the added-token index, the GPT-2 byte <-> code point map, UTF-8 and replacement). The
 * bottom of the tokenizer folder: it calls nothing else in it, so the loader, the BPE pipeline, the decoder and the
 * public API (tokenizer.c) all build on it without calling each other in circles. */
#define _GNU_SOURCE
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- string map ---------------------------------------------------------- */

uint64_t tok_hash(const char *s, size_t n)
{
    /* FNV-1a with a final mix: vocabularies hold many near-identical short keys */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

void tok_strmap_init(tok_strmap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2)
        cap <<= 1;
    m->cap = cap;
    m->count = 0;
    m->key = prefopt_xcalloc(cap, sizeof *m->key, "tokenizer map keys");
    m->klen = prefopt_xcalloc(cap, sizeof *m->klen, "tokenizer map key lengths");
    m->val = prefopt_xcalloc(cap, sizeof *m->val, "tokenizer map values");
}

void tok_strmap_free(tok_strmap *m)
{
    free(m->key);
    free(m->klen);
    free(m->val);
    memset(m, 0, sizeof *m);
}

static void strmap_grow(tok_strmap *m)
{
    tok_strmap old = *m;
    tok_strmap_init(m, old.cap);
    for (size_t i = 0; i < old.cap; i++)
        if (old.key[i])
            tok_strmap_put(m, old.key[i], old.klen[i], old.val[i]);
    tok_strmap_free(&old);
}

void tok_strmap_put(tok_strmap *m, const char *k, uint32_t klen, int32_t v)
{
    if ((m->count + 1) * 2 > m->cap)
        strmap_grow(m);
    size_t mask = m->cap - 1, i = tok_hash(k, klen) & mask;
    while (m->key[i]) {
        if (m->klen[i] == klen && !memcmp(m->key[i], k, klen)) {
            m->val[i] = v;
            return;
        }
        i = (i + 1) & mask;
    }
    m->key[i] = k;
    m->klen[i] = klen;
    m->val[i] = v;
    m->count++;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *k, uint32_t klen)
{
    if (!m->cap)
        return -1;
    size_t mask = m->cap - 1, i = tok_hash(k, klen) & mask;
    while (m->key[i]) {
        if (m->klen[i] == klen && !memcmp(m->key[i], k, klen))
            return m->val[i];
        i = (i + 1) & mask;
    }
    return -1;
}

void tok_ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        int32_t *p = realloc(*ids, nc * sizeof *p);
        if (!p)
            prefopt_die("out of memory growing a token id array to %zu ids", nc);
        *ids = p;
        *cap = nc;
    }
    (*ids)[(*n)++] = id;
}

/* ---- added tokens ---------------------------------------------------------- */

static int added_cmp(const void *pa, const void *pb)
{
    const tok_added *a = pa, *b = pb;
    int fa = (unsigned char)a->match[0], fb = (unsigned char)b->match[0];
    if (a->normalized != b->normalized)
        return a->normalized - b->normalized;
    if (fa != fb)
        return fa - fb;
    if (a->mlen != b->mlen)
        return a->mlen > b->mlen ? -1 : 1; /* longest first: leftmost-longest matching */
    return a->id - b->id;
}

void tok_added_index(prefopt_tokenizer *t)
{
    qsort(t->added, (size_t)t->nadded, sizeof *t->added, added_cmp);
    for (int c = 0; c < 256; c++)
        t->added_first[0][c] = t->added_first[1][c] = -1;
    for (int i = t->nadded - 1; i >= 0; i--)
        t->added_first[t->added[i].normalized][(unsigned char)t->added[i].match[0]] = i;
}

/* ---- bytes and UTF-8 -------------------------------------------------------- */

uint32_t tok_byte_to_cp(int b)
{
    /* printable Latin-1 bytes map to themselves; the rest, in order, to U+0100.. (openai/gpt-2 encoder.py) */
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)))
            n++;
    return 256u + (uint32_t)n;
}

/* Length of the UTF-8 character at s (strict: no overlongs, surrogates or values past U+10FFFF), 0 if invalid. */
int tok_utf8_len(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || (size_t)n > avail)
        return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if (n == 2 && c < 0xc2)
        return 0;
    if (n == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)))
        return 0;
    if (n == 4 && ((c == 0xf0 && s[1] < 0x90) || c > 0xf4 || (c == 0xf4 && s[1] >= 0x90)))
        return 0;
    return n;
}

char *tok_replace_all(const char *s, size_t len, const char *a, size_t alen, const char *b, size_t blen,
                         size_t *outlen)
{
    size_t cnt = 0;
    for (size_t i = 0; alen && i + alen <= len;)
        if (!memcmp(s + i, a, alen)) {
            cnt++;
            i += alen;
        } else {
            i++;
        }
    size_t nl = len + cnt * blen - cnt * alen;
    char *o = prefopt_xmalloc(nl + 1, "replace"), *p = o;
    for (size_t i = 0; i < len;) {
        if (alen && i + alen <= len && !memcmp(s + i, a, alen)) {
            memcpy(p, b, blen);
            p += blen;
            i += alen;
        } else {
            *p++ = s[i++];
        }
    }
    *outlen = nl;
    return o;
}
