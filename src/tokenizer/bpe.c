/* prefopt tokenizers: the BPE pipeline of a tokenizer.json, in Hugging Face tokenizers' order:
 * normalize -> pre-tokenize (Split / ByteLevel / Metaspace) -> BPE merges per word (cached). Regular expressions
 * and Unicode properties come from PCRE2 (UTF + UCP), normalization forms from utf8proc. */
#define _GNU_SOURCE
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- merge table --------------------------------------------------------- */

static uint64_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

int tok_pair_put(prefopt_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->pair_cap - 1, i = pair_hash(key) & mask;
    while (t->pair_rank[i] >= 0) {
        if (t->pair_key[i] == key)
            return 0; /* a repeated merge keeps its first (lowest) rank, as Hugging Face does */
        i = (i + 1) & mask;
    }
    t->pair_key[i] = key;
    t->pair_rank[i] = rank;
    t->pair_id[i] = id;
    return 0;
}

static inline int pair_get(const prefopt_tokenizer *t, int32_t a, int32_t b, int32_t *id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->pair_cap - 1, i = pair_hash(key) & mask;
    while (t->pair_rank[i] >= 0) {
        if (t->pair_key[i] == key) {
            *id = t->pair_id[i];
            return t->pair_rank[i];
        }
        i = (i + 1) & mask;
    }
    return -1;
}

/* ---- word cache -------------------------------------------------------------- */

enum { CACHE_SLOTS = 1 << 16, CACHE_BYTES = 8 << 20, CACHE_MAX_WORD = 64 };

typedef struct {
    uint64_t hash;
    uint32_t off, klen, nids; /* key bytes then ids (4-byte aligned) at arena + off */
} cache_slot;

struct tok_cache {
    cache_slot *slot;
    size_t count;
    char *arena;
    size_t used;
};

static tok_cache *cache_new(void)
{
    tok_cache *c = prefopt_xcalloc(1, sizeof *c, "tokenizer word cache");
    c->slot = prefopt_xcalloc(CACHE_SLOTS, sizeof *c->slot, "tokenizer word cache slots");
    c->arena = prefopt_xmalloc(CACHE_BYTES, "tokenizer word cache arena");
    c->used = 0;
    return c;
}

static void cache_free(tok_cache *c)
{
    if (!c)
        return;
    free(c->slot);
    free(c->arena);
    free(c);
}

static const int32_t *cache_get(const tok_cache *c, uint64_t h, const char *w, uint32_t len, uint32_t *nids)
{
    size_t i = h & (CACHE_SLOTS - 1);
    while (c->slot[i].nids) {
        const cache_slot *s = &c->slot[i];
        if (s->hash == h && s->klen == len && !memcmp(c->arena + s->off, w, len)) {
            *nids = s->nids;
            return (const int32_t *)(c->arena + s->off + ((len + 3) & ~3u));
        }
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    return NULL;
}

static void cache_put(tok_cache *c, uint64_t h, const char *w, uint32_t len, const int32_t *ids, uint32_t nids)
{
    size_t need = ((len + 3) & ~3u) + (size_t)nids * 4;
    if (!nids)
        return;
    if (c->count * 2 >= CACHE_SLOTS || c->used + need > CACHE_BYTES) { /* full: start over (cheap, rare) */
        memset(c->slot, 0, CACHE_SLOTS * sizeof *c->slot);
        c->count = 0;
        c->used = 0;
    }
    size_t i = h & (CACHE_SLOTS - 1);
    while (c->slot[i].nids)
        i = (i + 1) & (CACHE_SLOTS - 1);
    memcpy(c->arena + c->used, w, len);
    memcpy(c->arena + c->used + ((len + 3) & ~3u), ids, (size_t)nids * 4);
    c->slot[i] = (cache_slot){h, (uint32_t)c->used, len, nids};
    c->used += need;
    c->count++;
}

static int put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    o[0] = (char)(0xe0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* ---- scratch: words as (buffer, offset, length) so buffers may grow ------------ */

typedef struct {
    uint32_t off, len;
    uint8_t buf;   /* 0: the normalized piece, 1: the arena */
    uint8_t first; /* starts at offset 0 of the original input (Metaspace "first") */
} word;

typedef struct {
    const char *src;
    size_t srclen;
    char *arena;
    size_t alen, acap;
    word *w, *w2;
    size_t nw, nw2, capw, capw2;
} work;

static const char *wptr(const work *k, const word *w) { return (w->buf ? k->arena : k->src) + w->off; }

static uint32_t arena_add(work *k, const char *s, size_t n)
{
    if (k->alen + n > k->acap) {
        size_t nc = k->acap ? k->acap * 2 : 4096;
        while (nc < k->alen + n)
            nc *= 2;
        char *p = realloc(k->arena, nc);
        if (!p)
            prefopt_die("out of memory in the tokenizer (%zu bytes)", nc);
        k->arena = p;
        k->acap = nc;
    }
    memcpy(k->arena + k->alen, s, n);
    k->alen += n;
    return (uint32_t)(k->alen - n);
}

static void out_word(work *k, word w)
{
    if (!w.len)
        return; /* Hugging Face drops empty splits */
    if (k->nw2 == k->capw2) {
        k->capw2 = k->capw2 ? k->capw2 * 2 : 256;
        k->w2 = realloc(k->w2, k->capw2 * sizeof *k->w2);
        if (!k->w2)
            prefopt_die("out of memory in the tokenizer (words)");
    }
    k->w2[k->nw2++] = w;
}

static void swap_words(work *k)
{
    word *tw = k->w;
    size_t tc = k->capw;
    k->w = k->w2;
    k->capw = k->capw2;
    k->nw = k->nw2;
    k->w2 = tw;
    k->capw2 = tc;
    k->nw2 = 0;
}

/* Splits every word by regex matches with a Hugging Face SplitDelimiterBehavior (same folds as
 * tokenizers/src/tokenizer/normalizer.rs), dropping empty pieces at the end as it does. */
typedef struct {
    uint32_t a, b;
    int m;
} seg;

static int split_regex(work *k, const tok_pre *p, prefopt_err *err)
{
    /* match data per call, not per tokenizer: concurrent encodes on one tokenizer must not share it */
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->re, NULL);
    if (!md)
        prefopt_die("out of memory (PCRE2 match data)");
    seg *sg = NULL, *acc = NULL;
    size_t cap = 0;
    for (size_t wi = 0; wi < k->nw; wi++) {
        word w = k->w[wi];
        const char *s = wptr(k, &w);
        size_t ns = 0, prev = 0, pos = 0;
        uint32_t opts = 0;
        for (;;) {
            if (ns + 2 > cap) {
                cap = cap ? cap * 2 : 256;
                sg = realloc(sg, cap * sizeof *sg);
                acc = realloc(acc, cap * sizeof *acc);
                if (!sg || !acc)
                    prefopt_die("out of memory in the tokenizer (splits)");
            }
            int rc = pos <= w.len ? pcre2_match(p->re, (PCRE2_SPTR)s, w.len, pos, opts, md, NULL)
                                  : PCRE2_ERROR_NOMATCH;
            opts = PCRE2_NO_UTF_CHECK;
            if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
                if (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21)
                    prefopt_err_set(err, "tokenizer: input text is not valid UTF-8 (near byte %zu of a word)",
                                    (size_t)pcre2_get_startchar(md));
                else
                    prefopt_err_set(err, "tokenizer: regular expression match failed (PCRE2 error %d)", rc);
                free(sg);
                free(acc);
                pcre2_match_data_free(md);
                return 1;
            }
            if (rc < 0)
                break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (ms != prev)
                sg[ns++] = (seg){(uint32_t)prev, (uint32_t)ms, 0};
            sg[ns++] = (seg){(uint32_t)ms, (uint32_t)me, 1};
            prev = pos = me;
            if (me == ms) { /* empty match: step over one character */
                if (me >= w.len)
                    break;
                int l = tok_utf8_len((const unsigned char *)s + me, w.len - me);
                pos = me + (l ? (size_t)l : 1);
            }
        }
        if (prev != w.len)
            sg[ns++] = (seg){(uint32_t)prev, w.len, 0};
        if (!w.len)
            sg[ns++] = (seg){0, 0, 0};
        if (p->invert)
            for (size_t i = 0; i < ns; i++)
                sg[i].m = !sg[i].m;
        size_t na = 0;
        int pm = 0;
        switch (p->behavior) {
        case TOK_SPLIT_REMOVED:
            for (size_t i = 0; i < ns; i++)
                if (!sg[i].m)
                    acc[na++] = sg[i];
            break;
        case TOK_SPLIT_ISOLATED:
            memcpy(acc, sg, ns * sizeof *sg);
            na = ns;
            break;
        case TOK_SPLIT_MERGED_PREV:
            for (size_t i = 0; i < ns; i++) {
                if (sg[i].m && !pm && na)
                    acc[na - 1].b = sg[i].b;
                else
                    acc[na++] = sg[i];
                pm = sg[i].m;
            }
            break;
        case TOK_SPLIT_MERGED_NEXT:
            for (size_t i = ns; i-- > 0;) { /* built backwards, then reversed */
                if (sg[i].m && !pm && na)
                    acc[na - 1].a = sg[i].a;
                else
                    acc[na++] = sg[i];
                pm = sg[i].m;
            }
            for (size_t i = 0; i < na / 2; i++) {
                seg x = acc[i];
                acc[i] = acc[na - 1 - i];
                acc[na - 1 - i] = x;
            }
            break;
        case TOK_SPLIT_CONTIGUOUS:
            for (size_t i = 0; i < ns; i++) {
                if (sg[i].m == pm && na)
                    acc[na - 1].b = sg[i].b;
                else
                    acc[na++] = sg[i];
                pm = sg[i].m;
            }
            break;
        }
        for (size_t i = 0; i < na; i++)
            out_word(k, (word){w.off + acc[i].a, acc[i].b - acc[i].a, w.buf, (uint8_t)(w.first && acc[i].a == 0)});
    }
    free(sg);
    free(acc);
    pcre2_match_data_free(md);
    swap_words(k);
    return 0;
}

static void prepend_word(work *k, word *w, const char *pre, size_t plen)
{
    /* copy "pre + word" into the arena (copying first: the word may itself live in the arena) */
    size_t len = w->len;
    char *tmp = prefopt_xmalloc(plen + len + 1, "tokenizer prefix");
    memcpy(tmp, pre, plen);
    memcpy(tmp + plen, wptr(k, w), len);
    w->off = arena_add(k, tmp, plen + len);
    w->len = (uint32_t)(plen + len);
    w->buf = 1;
    free(tmp);
}

static int pre_tokenize(const prefopt_tokenizer *t, work *k, prefopt_err *err)
{
    for (int pi = 0; pi < t->npre; pi++) {
        const tok_pre *p = &t->pre[pi];
        if (p->type == TOK_PRE_SPLIT) {
            if (split_regex(k, p, err))
                return 1;
        } else if (p->type == TOK_PRE_BYTELEVEL) {
            if (p->add_prefix_space)
                for (size_t i = 0; i < k->nw; i++)
                    if (wptr(k, &k->w[i])[0] != ' ')
                        prepend_word(k, &k->w[i], " ", 1);
            if (p->re && split_regex(k, p, err))
                return 1;
        } else if (p->type == TOK_PRE_METASPACE) {
            for (size_t i = 0; i < k->nw; i++) {
                word *w = &k->w[i];
                const char *s = wptr(k, w);
                size_t nsp = 0;
                for (uint32_t j = 0; j < w->len; j++)
                    nsp += s[j] == ' ';
                int pre = 0;
                /* after the replacement: a word that starts with a space already starts with it */
                if (p->prepend_scheme != TOK_PREPEND_NEVER && !(w->len && s[0] == ' ') &&
                    !(w->len >= p->replen && !memcmp(s, p->replacement, p->replen)))
                    pre = p->prepend_scheme == TOK_PREPEND_ALWAYS || w->first;
                if (!nsp && !pre)
                    continue;
                size_t nlen = w->len + nsp * (p->replen - 1) + (pre ? p->replen : 0);
                char *tmp = prefopt_xmalloc(nlen + 1, "metaspace"), *o = tmp;
                if (pre) {
                    memcpy(o, p->replacement, p->replen);
                    o += p->replen;
                }
                for (uint32_t j = 0; j < w->len; j++) {
                    if (s[j] == ' ') {
                        memcpy(o, p->replacement, p->replen);
                        o += p->replen;
                    } else {
                        *o++ = s[j];
                    }
                }
                w->off = arena_add(k, tmp, nlen);
                w->len = (uint32_t)nlen;
                w->buf = 1;
                free(tmp);
            }
            if (p->split) {
                /* MergedWithNext on the replacement: each word starts at a replacement character */
                for (size_t i = 0; i < k->nw; i++) {
                    word w = k->w[i];
                    const char *s = wptr(k, &w);
                    uint32_t start = 0;
                    for (uint32_t j = 1; j + p->replen <= w.len; j++) {
                        if (!memcmp(s + j, p->replacement, p->replen)) {
                            out_word(k, (word){w.off + start, j - start, w.buf, (uint8_t)(w.first && !start)});
                            start = j;
                        }
                    }
                    out_word(k, (word){w.off + start, w.len - start, w.buf, (uint8_t)(w.first && !start)});
                }
                swap_words(k);
            }
        }
    }
    return 0;
}

/* ---- BPE merges of one word ------------------------------------------------- */

typedef struct {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
} sym;

typedef struct {
    int32_t rank, pos, id;
} cand;

static inline int cand_less(cand a, cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        cand best = last;
        if (l < *n && cand_less(h[l], best)) {
            m = l;
            best = h[l];
        }
        if (r < *n && cand_less(h[r], best))
            m = r;
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = last;
    return top;
}

typedef struct {
    sym *s;
    cand *h;
    size_t cap_s;
} merge_buf;

static void sym_push(merge_buf *mb, size_t *n, int32_t id)
{
    if (*n == mb->cap_s) {
        mb->cap_s = mb->cap_s ? mb->cap_s * 2 : 64;
        mb->s = realloc(mb->s, mb->cap_s * sizeof *mb->s);
        /* the heap keeps stale candidates: n-1 at the start plus at most 2 per merge, so under 3n */
        mb->h = realloc(mb->h, 3 * mb->cap_s * sizeof *mb->h);
        if (!mb->s || !mb->h)
            prefopt_die("out of memory in the tokenizer (symbols)");
    }
    mb->s[*n] = (sym){id, (int32_t)*n - 1, -1, 1};
    (*n)++;
}

/* Initial symbols of a word: mapped bytes (ByteLevel) or characters with byte fallback and unk. */
static int word_symbols(const prefopt_tokenizer *t, const char *s, uint32_t len, int byte_level, merge_buf *mb,
                        size_t *ns, prefopt_err *err)
{
    *ns = 0;
    int prev_unk = 0;
    for (uint32_t i = 0; i < len;) {
        if (byte_level) {
            int id = t->byte_id[(unsigned char)s[i++]];
            if (id >= 0)
                sym_push(mb, ns, id);
            else if (t->unk_id >= 0)
                sym_push(mb, ns, t->unk_id);
            continue;
        }
        int l = tok_utf8_len((const unsigned char *)s + i, len - i);
        if (!l) {
            prefopt_err_set(err, "tokenizer: input text is not valid UTF-8 (byte 0x%02x)", (unsigned char)s[i]);
            return 1;
        }
        int32_t id = tok_strmap_get(&t->tokmap, s + i, (uint32_t)l);
        int fallback = id < 0 && t->byte_fallback;
        for (int j = 0; fallback && j < l; j++)
            fallback = t->fallback_id[(unsigned char)s[i + j]] >= 0;
        if (id >= 0) {
            sym_push(mb, ns, id);
            prev_unk = 0;
        } else if (fallback) { /* every byte of the character has its <0xNN> token */
            for (int j = 0; j < l; j++)
                sym_push(mb, ns, t->fallback_id[(unsigned char)s[i + j]]);
            prev_unk = 0;
        } else if (t->unk_id >= 0) {
            if (!(t->fuse_unk && prev_unk))
                sym_push(mb, ns, t->unk_id);
            prev_unk = 1;
        }
        i += (uint32_t)l;
    }
    return 0;
}

static void merge_word(const prefopt_tokenizer *t, merge_buf *mb, size_t ns)
{
    sym *S = mb->s;
    size_t nh = 0;
    for (size_t i = 0; i < ns; i++)
        S[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    for (size_t i = 0; i + 1 < ns; i++) {
        int32_t id = -1, r = pair_get(t, S[i].id, S[i + 1].id, &id);
        if (r >= 0)
            heap_push(mb->h, &nh, (cand){r, (int32_t)i, id});
    }
    while (nh) {
        cand c = heap_pop(mb->h, &nh);
        sym *a = &S[c.pos];
        if (!a->alive || a->next < 0)
            continue;
        sym *b = &S[a->next];
        int32_t id = -1, r = pair_get(t, a->id, b->id, &id);
        if (r != c.rank || id != c.id)
            continue; /* stale: one side was merged since */
        a->id = c.id;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0)
            S[b->next].prev = c.pos;
        if (a->prev >= 0) {
            r = pair_get(t, S[a->prev].id, a->id, &id);
            if (r >= 0)
                heap_push(mb->h, &nh, (cand){r, a->prev, id});
        }
        if (a->next >= 0) {
            r = pair_get(t, a->id, S[a->next].id, &id);
            if (r >= 0)
                heap_push(mb->h, &nh, (cand){r, c.pos, id});
        }
    }
}

static int encode_word(const prefopt_tokenizer *t, const char *s, uint32_t len, int byte_level, int use_cache,
                       merge_buf *mb, int32_t **ids, size_t *n, size_t *cap, prefopt_err *err)
{
    uint64_t h = 0;
    use_cache &= len <= CACHE_MAX_WORD;
    if (use_cache) {
        h = tok_hash(s, len);
        uint32_t nc;
        const int32_t *hit = cache_get(t->cache, h, s, len, &nc);
        if (hit) {
            for (uint32_t i = 0; i < nc; i++)
                tok_ids_push(ids, n, cap, hit[i]);
            return 0;
        }
    }
    size_t n0 = *n;
    int done = 0;
    if (t->ignore_merges) { /* Llama 3: a word that is itself a token is taken whole */
        int32_t id = -1;
        if (byte_level) {
            char stackbuf[512];
            char *m = len * 2 <= sizeof stackbuf ? stackbuf : prefopt_xmalloc((size_t)len * 2, "word");
            size_t ml = 0;
            for (uint32_t i = 0; i < len; i++)
                ml += (size_t)put_utf8(m + ml, t->byte_cp[(unsigned char)s[i]]);
            id = tok_strmap_get(&t->tokmap, m, (uint32_t)ml);
            if (m != stackbuf)
                free(m);
        } else {
            id = tok_strmap_get(&t->tokmap, s, len);
        }
        if (id >= 0) {
            tok_ids_push(ids, n, cap, id);
            done = 1;
        }
    }
    if (!done) {
        size_t ns;
        if (word_symbols(t, s, len, byte_level, mb, &ns, err))
            return 1;
        merge_word(t, mb, ns);
        for (size_t i = 0; i < ns; i = mb->s[i].next < 0 ? ns : (size_t)mb->s[i].next)
            tok_ids_push(ids, n, cap, mb->s[i].id);
    }
    if (use_cache) /* a word may give no ids (no unk token): *ids may still be NULL then */
        cache_put(t->cache, h, s, len, *n > n0 ? *ids + n0 : NULL, (uint32_t)(*n - n0));
    return 0;
}

/* ---- normalizers --------------------------------------------------------------- */

int tok_bpe_normalize(const prefopt_tokenizer *t, const char *s, size_t len, char **out, size_t *outlen,
                      prefopt_err *err)
{
    char *cur = NULL;
    size_t cl = len;
    for (int i = 0; i < t->nnorm; i++) {
        const tok_norm *m = &t->norm[i];
        const char *in = cur ? cur : s;
        char *next = NULL;
        size_t nl = 0;
        if (m->type == TOK_NORM_PREPEND) {
            if (!cl)
                continue;
            nl = cl + m->alen;
            next = prefopt_xmalloc(nl + 1, "normalized text");
            memcpy(next, m->a, m->alen);
            memcpy(next + m->alen, in, cl);
        } else if (m->type == TOK_NORM_REPLACE) {
            next = tok_replace_all(in, cl, m->a, m->alen, m->b, m->blen, &nl);
        } else { /* NFC / NFKC through utf8proc */
            utf8proc_uint8_t *dst = NULL;
            utf8proc_option_t o = UTF8PROC_STABLE | UTF8PROC_COMPOSE | (m->type == TOK_NORM_NFKC ? UTF8PROC_COMPAT : 0);
            utf8proc_ssize_t r = cl ? utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)cl, &dst, o) : 0;
            if (r < 0) {
                prefopt_err_set(err, "tokenizer: input text is not valid UTF-8 (%s normalizer: %s)",
                                m->type == TOK_NORM_NFKC ? "NFKC" : "NFC", utf8proc_errmsg(r));
                free(cur);
                return 1;
            }
            nl = (size_t)r;
            next = prefopt_xmalloc(nl + 1, "normalized text");
            if (nl)
                memcpy(next, dst, nl);
            free(dst);
        }
        free(cur);
        cur = next;
        cl = nl;
    }
    *outlen = cl;
    *out = cur;
    return 0;
}

int tok_bpe_encode_piece(const prefopt_tokenizer *t, const char *s, size_t len, int first, int32_t **ids,
                         size_t *n, size_t *cap, prefopt_err *err)
{
    if (len > (size_t)1 << 30) {
        prefopt_err_set(err, "tokenizer: a text of %zu bytes is too long to encode at once (limit 1 GiB)", len);
        return 1;
    }
    size_t nl = len;
    work k = {.src = s, .srclen = nl};
    int rc = 0, byte_level = 0;
    out_word(&k, (word){0, (uint32_t)nl, 0, (uint8_t)(first != 0)});
    swap_words(&k);
    for (int i = 0; i < t->npre; i++)
        byte_level |= t->pre[i].type == TOK_PRE_BYTELEVEL;
    if (pre_tokenize(t, &k, err))
        rc = 1;
    /* the word cache serves one encode at a time; a concurrent encode on the same tokenizer goes without it */
    atomic_flag *busy = (atomic_flag *)&t->cache_busy; /* the tokenizer is heap memory: writable */
    int use_cache = t->cache && !atomic_flag_test_and_set_explicit(busy, memory_order_acquire);
    merge_buf mb = {0};
    for (size_t i = 0; !rc && i < k.nw; i++) {
        const char *w = wptr(&k, &k.w[i]);
        uint32_t wl = k.w[i].len, start = 0;
        if (t->sp_split && !byte_level) /* cut before each run of U+2581 (see sp_split) */
            for (uint32_t j = 1; !rc && j + 3 <= wl; j++)
                if (!memcmp(w + j, "\xe2\x96\x81", 3) && (j < 3 || memcmp(w + j - 3, "\xe2\x96\x81", 3))) {
                    rc = encode_word(t, w + start, j - start, byte_level, use_cache, &mb, ids, n, cap, err);
                    start = j;
                }
        if (!rc)
            rc = encode_word(t, w + start, wl - start, byte_level, use_cache, &mb, ids, n, cap, err);
    }
    if (use_cache)
        atomic_flag_clear_explicit(busy, memory_order_release);
    free(mb.s);
    free(mb.h);
    free(k.w);
    free(k.w2);
    free(k.arena);
    return rc;
}

void tok_bpe_free(prefopt_tokenizer *t)
{
    for (int i = 0; i < t->nnorm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    free(t->norm);
    for (int i = 0; i < t->npre; i++) {
        pcre2_code_free(t->pre[i].re);
    }
    free(t->pre);
    for (int i = 0; i < t->ndec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    free(t->pair_key);
    free(t->pair_rank);
    free(t->pair_id);
    cache_free(t->cache);
}

tok_cache *tok_cache_new(void) { return cache_new(); }
