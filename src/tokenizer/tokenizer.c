/* prefopt tokenizers: the public API, the embedded byte-level tokenizer, and added/special-token matching,
 * which runs on the raw text before any model sees it (as in Hugging Face tokenizers). */
#define _GNU_SOURCE
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- added tokens ---------------------------------------------------------- */

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int is_word(unsigned char c)
{
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

/* Finds the leftmost-longest added token of one set (normalized or not, as Hugging Face's two tries) in
 * s[from..len). Returns its index in t->added or -1; mstart..mend is the span it covers including whitespace
 * absorbed by lstrip/rstrip. */
static int find_added(const prefopt_tokenizer *t, int set, const char *s, size_t from, size_t len,
                      int allow_special, size_t *mstart, size_t *mend)
{
    if (!t->nadded)
        return -1;
    for (size_t i = from; i < len; i++) {
        int k = t->added_first[set][(unsigned char)s[i]];
        if (k < 0)
            continue;
        for (; k < t->nadded && t->added[k].normalized == set && t->added[k].match[0] == s[i]; k++) {
            const tok_added *a = &t->added[k];
            if (a->special && !allow_special)
                continue;
            if (a->mlen > len - i || memcmp(s + i, a->match, a->mlen))
                continue;
            if (a->single_word && ((i > 0 && is_word((unsigned char)s[i - 1])) ||
                                   (i + a->mlen < len && is_word((unsigned char)s[i + a->mlen]))))
                continue;
            size_t b = i, e = i + a->mlen;
            if (a->lstrip)
                while (b > from && is_space((unsigned char)s[b - 1]))
                    b--;
            if (a->rstrip)
                while (e < len && is_space((unsigned char)s[e]))
                    e++;
            *mstart = b;
            *mend = e;
            return k;
        }
    }
    return -1;
}

static void byte_encode_piece(const char *s, size_t len, int32_t **ids, size_t *n, size_t *cap)
{
    for (size_t i = 0; i < len; i++)
        tok_ids_push(ids, n, cap, (unsigned char)s[i]);
}

/* Second pass over one normalized piece: split on the normalized added tokens, encode what is between. */
static int encode_normalized(const prefopt_tokenizer *t, const char *s, size_t len, int first, int allow_special,
                             int32_t **ids, size_t *n, size_t *cap, prefopt_err *err)
{
    size_t pos = 0;
    while (pos <= len) {
        size_t ms = len, me = len;
        int k = find_added(t, 1, s, pos, len, allow_special, &ms, &me);
        if (k < 0)
            ms = me = len;
        if (ms > pos && tok_bpe_encode_piece(t, s + pos, ms - pos, first && pos == 0, ids, n, cap, err))
            return 1;
        if (k < 0)
            break;
        tok_ids_push(ids, n, cap, t->added[k].id);
        pos = me;
    }
    return 0;
}

int prefopt_tokenizer_encode(const prefopt_tokenizer *t, const char *text, size_t len, int allow_special,
                             int32_t **ids, size_t *n, size_t *cap, prefopt_err *err)
{
    size_t pos = 0;
    if (t->kind != TOK_KIND_BYTE) /* checked once here, so the error can say where */
        for (size_t i = 0; i < len;) {
            if ((unsigned char)text[i] < 0x80) {
                i++;
                continue;
            }
            int l = tok_utf8_len((const unsigned char *)text + i, len - i);
            if (!l) {
                prefopt_err_set(err, "tokenizer: text is not valid UTF-8 at byte %zu (0x%02x)", i,
                                (unsigned char)text[i]);
                return 1;
            }
            i += (size_t)l;
        }
    while (pos <= len) {
        size_t ms = len, me = len;
        int k = find_added(t, 0, text, pos, len, allow_special, &ms, &me);
        if (k < 0)
            ms = me = len;
        if (ms > pos) {
            if (t->kind == TOK_KIND_BYTE) {
                byte_encode_piece(text + pos, ms - pos, ids, n, cap);
            } else {
                char *norm = NULL;
                size_t nl = ms - pos;
                if (tok_bpe_normalize(t, text + pos, ms - pos, &norm, &nl, err))
                    return 1;
                int rc = encode_normalized(t, norm ? norm : text + pos, nl, pos == 0, allow_special, ids, n, cap, err);
                free(norm);
                if (rc)
                    return 1;
            }
        }
        if (k < 0)
            break;
        tok_ids_push(ids, n, cap, t->added[k].id);
        pos = me;
    }
    return 0;
}

/* ---- decode ---------------------------------------------------------------- */

static char *byte_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                         prefopt_err *err)
{
    size_t need = 1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size) {
            prefopt_err_set(err, "decode: token id %d at position %zu is outside the vocabulary (0..%d)", ids[i], i,
                            t->vocab_size - 1);
            return NULL;
        }
        need += ids[i] < 256 ? 1 : t->toklen[ids[i]];
    }
    char *out = prefopt_xmalloc(need, "decoded text"), *p = out;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 256) {
            *p++ = (char)ids[i];
        } else if (!skip_special) {
            memcpy(p, t->tok[ids[i]], t->toklen[ids[i]]);
            p += t->toklen[ids[i]];
        }
    }
    *p = '\0';
    return out;
}

char *prefopt_tokenizer_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                               prefopt_err *err)
{
    if (t->kind == TOK_KIND_BYTE)
        return byte_decode(t, ids, n, skip_special, err);
    return tok_bpe_decode(t, ids, n, skip_special, err);
}

/* ---- the byte-level tokenizer -------------------------------------------- */

prefopt_tokenizer *prefopt_tokenizer_byte(void)
{
    static const char *specials[3] = {"<|bos|>", "<|eos|>", "<|pad|>"};
    prefopt_tokenizer *t = prefopt_xcalloc(1, sizeof *t, "byte tokenizer");
    t->kind = TOK_KIND_BYTE;
    t->vocab_size = PREFOPT_BYTE_VOCAB;
    t->bos = PREFOPT_BYTE_BOS;
    t->eos = PREFOPT_BYTE_EOS;
    t->pad = PREFOPT_BYTE_PAD;
    t->tmpl_first = t->tmpl_last = -1;
    t->unk_id = -1;
    strcpy(t->identity, "byte");
    t->tok = prefopt_xcalloc(PREFOPT_BYTE_VOCAB, sizeof *t->tok, "byte tokenizer pieces");
    t->toklen = prefopt_xcalloc(PREFOPT_BYTE_VOCAB, sizeof *t->toklen, "byte tokenizer piece lengths");
    t->is_special = prefopt_xcalloc(PREFOPT_BYTE_VOCAB, 1, "byte tokenizer special flags");
    t->arena = prefopt_xmalloc(2 * 256 + 3 * 8, "byte tokenizer strings");
    tok_strmap_init(&t->tokmap, PREFOPT_BYTE_VOCAB);
    for (int b = 0; b < 256; b++) {
        t->arena[2 * b] = (char)b;
        t->arena[2 * b + 1] = '\0';
        t->tok[b] = t->arena + 2 * b;
        t->toklen[b] = 1;
        tok_strmap_put(&t->tokmap, t->tok[b], 1, b);
    }
    t->added = prefopt_xcalloc(3, sizeof *t->added, "byte tokenizer specials");
    for (int i = 0; i < 3; i++) {
        int id = PREFOPT_BYTE_BOS + i;
        char *s = t->arena + 512 + 8 * i;
        memcpy(s, specials[i], 8);
        t->tok[id] = s;
        t->toklen[id] = 7;
        t->is_special[id] = 1;
        tok_strmap_put(&t->tokmap, s, 7, id);
        t->added[i] = (tok_added){.content = s, .len = 7, .id = id, .special = 1, .match = s, .mlen = 7};
    }
    t->nadded = 3;
    tok_added_index(t);
    return t;
}

void prefopt_tokenizer_free(prefopt_tokenizer *t)
{
    if (!t)
        return;
    if (t->kind == TOK_KIND_BPE)
        tok_bpe_free(t);
    tok_strmap_free(&t->tokmap);
    free(t->tok);
    free(t->toklen);
    free(t->is_special);
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].match != t->added[i].content)
            free(t->added[i].match);
    free(t->added);
    free(t->arena);
    free(t);
}

/* ---- accessors ------------------------------------------------------------ */

void prefopt_tokenizer_template(const prefopt_tokenizer *t, int *first, int *last)
{
    *first = t->tmpl_first;
    *last = t->tmpl_last;
}

int prefopt_tokenizer_vocab_size(const prefopt_tokenizer *t) { return t->vocab_size; }
int prefopt_tokenizer_bos(const prefopt_tokenizer *t) { return t->bos; }
int prefopt_tokenizer_eos(const prefopt_tokenizer *t) { return t->eos; }
int prefopt_tokenizer_pad(const prefopt_tokenizer *t) { return t->pad >= 0 ? t->pad : t->eos; }
const char *prefopt_tokenizer_identity(const prefopt_tokenizer *t) { return t->identity; }

const char *prefopt_tokenizer_token(const prefopt_tokenizer *t, int id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size || !t->tok[id])
        return NULL;
    /* an added token's own spelling, not the normalized form decode uses */
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].id == id) {
            *len = t->added[i].len;
            return t->added[i].content;
        }
    *len = t->toklen[id];
    return t->tok[id];
}

int prefopt_tokenizer_token_id(const prefopt_tokenizer *t, const char *token)
{
    uint32_t len = (uint32_t)strlen(token);
    for (int i = 0; i < t->nadded; i++) /* added tokens first: they override the model's ids */
        if (t->added[i].len == len && !memcmp(t->added[i].content, token, len))
            return t->added[i].id;
    return tok_strmap_get(&t->tokmap, token, len);
}
