/* prefopt: the private layout of a tokenizer, shared by the files of src/tokenizer/, which call each other only
 * downwards: tables.c (maps, id arrays, byte and UTF-8 helpers) <- bpe.c (normalize, pre-tokenize, BPE merges),
 * decode.c (decoder chain) <- load.c (tokenizer.json) and tokenizer.c (the public API, byte level, added tokens). */
#ifndef PREFOPT_TOKENIZER_INTERNAL_H
#define PREFOPT_TOKENIZER_INTERNAL_H

#include "prefopt/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* String -> id map (open addressing, keys are byte strings owned elsewhere). */
typedef struct {
    const char **key;
    uint32_t *klen;
    int32_t *val;
    size_t cap, count; /* cap is a power of two */
} tok_strmap;

void tok_strmap_init(tok_strmap *m, size_t expected);
void tok_strmap_free(tok_strmap *m);
void tok_strmap_put(tok_strmap *m, const char *k, uint32_t klen, int32_t v); /* replaces an existing key */
int32_t tok_strmap_get(const tok_strmap *m, const char *k, uint32_t klen); /* -1 if absent */
uint64_t tok_hash(const char *s, size_t n);

/* An added token (tokenizer.json "added_tokens", or the byte tokenizer's specials): matched in the raw text
 * before normalization and pre-tokenization. */
typedef struct {
    char *content;
    uint32_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word;
    uint8_t normalized; /* matched in normalized text (after the normalizer), against `match` */
    char *match;        /* content, or its normalized form (malloc'd) for a normalized token */
    uint32_t mlen;
} tok_added;

/* Normalizer steps (applied in order). */
enum { TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC, TOK_NORM_NFKC };
typedef struct {
    int type;
    char *a, *b; /* Prepend: a = prepended; Replace: a -> b (literal string pattern) */
    uint32_t alen, blen;
} tok_norm;

/* Pre-tokenizer steps. */
enum { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE, TOK_PRE_DIGITS };
enum { TOK_SPLIT_ISOLATED, TOK_SPLIT_REMOVED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT, TOK_SPLIT_CONTIGUOUS };
enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
typedef struct {
    int type;
    pcre2_code *re;           /* Split (regex or escaped string), ByteLevel with use_regex */
    int behavior, invert;     /* Split */
    int add_prefix_space;     /* ByteLevel */
    char replacement[8];      /* Metaspace: the UTF-8 of its replacement char */
    uint32_t replen;
    int prepend_scheme, split; /* Metaspace */
    int individual_digits;    /* Digits */
} tok_pre;

/* Decoder steps. */
enum { TOK_DEC_BYTELEVEL, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP, TOK_DEC_METASPACE };
typedef struct {
    int type;
    char *a, *b; /* Replace a -> b; Metaspace a = replacement; Strip a = content char */
    uint32_t alen, blen;
    int start, stop;    /* Strip */
    int prepend_scheme; /* Metaspace */
} tok_dec;

/* Word cache entry (word bytes -> ids), cleared when full. */
typedef struct tok_cache tok_cache;

enum { TOK_KIND_BYTE = 0, TOK_KIND_BPE = 1 };

struct prefopt_tokenizer {
    int kind;
    int vocab_size; /* max id + 1 */
    int bos, eos, pad;
    int tmpl_first, tmpl_last; /* post_processor TemplateProcessing specials around a single text, -1 if none */
    char identity[80];

    /* id -> token string as written in the vocabulary (NULL for holes in the id range) */
    char **tok;
    uint32_t *toklen;
    uint8_t *is_special;
    tok_strmap tokmap; /* model vocabulary: token string -> id (added tokens are in `added`) */

    tok_added *added;
    int nadded;
    int added_first[2][256]; /* [normalized][byte]: index of the first added token whose match string starts
                                with this byte in `added` (sorted by normalized, first byte, longest first), or -1 */

    /* BPE model */
    char *arena; /* owns every token string */
    uint64_t *pair_key; /* merge table: (left id << 32 | right id) -> rank and merged id */
    int32_t *pair_rank, *pair_id;
    size_t pair_cap;
    int unk_id, byte_fallback, fuse_unk, ignore_merges;
    int sp_split; /* no vocabulary token has U+2581 after a non-U+2581 character: words may be cut before each
                     run of U+2581 without changing the merges (the cut lets SentencePiece-style text use the cache) */
    int byte_id[256];      /* ByteLevel: id of each byte's mapped character; <0xNN> ids for byte fallback */
    int fallback_id[256];
    uint32_t byte_cp[256]; /* ByteLevel byte -> code point, and back (-1: not a mapped code point) */
    int16_t cp_byte[0x144];

    tok_norm *norm;
    int nnorm;
    tok_pre *pre;
    int npre;
    tok_dec *dec;
    int ndec;

    tok_cache *cache;
    atomic_flag cache_busy; /* set while one encode uses the cache */
};

/* bpe.c: runs the normalizer over s; *out is NULL when nothing changed (then use s as it is). */
int tok_bpe_normalize(const prefopt_tokenizer *t, const char *s, size_t len, char **out, size_t *outlen,
                      prefopt_err *err);
/* Encodes one piece of normalized text that holds no added token (pre-tokenize, merge).
 * first: the piece starts at offset 0 of the whole input (Metaspace prepend_scheme "first"). */
int tok_bpe_encode_piece(const prefopt_tokenizer *t, const char *s, size_t len, int first, int32_t **ids,
                         size_t *n, size_t *cap, prefopt_err *err);
/* decode.c: decodes through the decoder chain (no decoder: pieces joined with spaces, as Hugging Face
 * does). */
char *tok_bpe_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special, prefopt_err *err);
void tok_bpe_free(prefopt_tokenizer *t);
/* bpe.c: the merge table and the word cache, filled while loading. */
int tok_pair_put(prefopt_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id);
tok_cache *tok_cache_new(void);

/* tables.c (with tok_hash and the tok_strmap functions above) */
/* The GPT-2 byte -> unicode code point map (bytes_to_unicode in openai/gpt-2 encoder.py). */
uint32_t tok_byte_to_cp(int b);
/* s with every occurrence of a replaced by b, malloc'd and NUL-terminated; its length in *outlen. */
char *tok_replace_all(const char *s, size_t len, const char *a, size_t alen, const char *b, size_t blen,
                      size_t *outlen);
/* Length of the UTF-8 character at s (strict), 0 if it is not valid UTF-8. */
int tok_utf8_len(const unsigned char *s, size_t avail);

void tok_ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id);
void tok_added_index(prefopt_tokenizer *t); /* sorts `added` and fills added_first */

#endif
