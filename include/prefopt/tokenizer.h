/* prefopt: tokenizers. The embedded default is byte-level (ids 0-255 are bytes, then three specials);
 * Hugging Face tokenizer.json files with a BPE model load through prefopt_tokenizer_load. */
#ifndef PREFOPT_TOKENIZER_H
#define PREFOPT_TOKENIZER_H

#include "prefopt/common.h"

/* Byte-level default vocabulary. */
enum {
    PREFOPT_BYTE_BOS = 256, /* "<|bos|>" */
    PREFOPT_BYTE_EOS = 257, /* "<|eos|>" */
    PREFOPT_BYTE_PAD = 258, /* "<|pad|>" */
    PREFOPT_BYTE_VOCAB = 259
};

typedef struct prefopt_tokenizer prefopt_tokenizer;

/* The byte-level tokenizer; never fails. */
prefopt_tokenizer *prefopt_tokenizer_byte(void);

/* Loads a tokenizer.json (path to the file, or to a directory holding one). Unsupported models, pre-tokenizers
 * or normalizers fail with a message naming them. Supported: model BPE (string or pair-list merges, byte_fallback,
 * fuse_unk, ignore_merges, unk_token); normalizers Sequence, Prepend, Replace (string), NFC, NFKC; pre-tokenizers
 * Sequence, Split (regex or string, every behavior, invert), ByteLevel, Metaspace; decoders Sequence, ByteLevel,
 * ByteFallback, Fuse, Replace (string), Strip, Metaspace. bos/eos/pad come from tokenizer_config.json beside the
 * file when there is one, else from the usual token names. Known difference from Hugging Face: split patterns use
 * Debian 12's PCRE2 (Unicode 14), so letters first assigned in Unicode 15-16 (CJK Ext. H/I, Egyptian Hieroglyphs
 * Ext.-A, ...) are not \p{L} and texts holding them may split differently. */
int prefopt_tokenizer_load(const char *path, prefopt_tokenizer **out, prefopt_err *err);
void prefopt_tokenizer_free(prefopt_tokenizer *t);

/* Encodes len bytes of UTF-8 text, appending ids to *ids (grown with realloc; *n and *cap updated).
 * Special tokens written literally in the text (e.g. "<|endoftext|>") are matched when allow_special is set.
 * Adds no BOS/EOS (Hugging Face's add_special_tokens=False): callers add prefopt_tokenizer_bos/eos themselves.
 * Fails (non-zero, err filled) on text that is not valid UTF-8, except with the byte-level tokenizer.
 * Thread-safe: threads may encode with one tokenizer at once (one of them at a time uses the word cache, the others
 * run without it, so one tokenizer per thread is faster). Load and free are not concurrent with anything. */
int prefopt_tokenizer_encode(const prefopt_tokenizer *t, const char *text, size_t len, int allow_special,
                             int32_t **ids, size_t *n, size_t *cap, prefopt_err *err);

/* Decodes n ids to a NUL-terminated malloc'd string (invalid UTF-8 from byte pieces is kept as bytes).
 * Returns NULL and fills err for an id outside the vocabulary. skip_special drops special tokens. */
char *prefopt_tokenizer_decode(const prefopt_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                               prefopt_err *err);

/* A valid UTF-8 copy of s (malloc'd, NUL-terminated) for outputs a user parses (JSON): each maximal invalid
 * subpart becomes one U+FFFD, as Hugging Face's decode (Rust's from_utf8_lossy) and Python's errors="replace" do.
 * *replaced: how many. */
char *prefopt_utf8_sanitize(const char *s, size_t *replaced);

/* The special tokens Hugging Face's encode(add_special_tokens=True) puts around one text, from the tokenizer.json
 * post_processor (TemplateProcessing, also inside a Sequence): *first before the text, *last after it, -1 where
 * there is none (e.g. Llama 2: 1 and -1; GPT-2, Qwen2: -1 and -1; the byte-level tokenizer: -1 and -1). */
void prefopt_tokenizer_template(const prefopt_tokenizer *t, int *first, int *last);

int prefopt_tokenizer_vocab_size(const prefopt_tokenizer *t);
int prefopt_tokenizer_bos(const prefopt_tokenizer *t); /* -1 if none */
int prefopt_tokenizer_eos(const prefopt_tokenizer *t); /* -1 if none */
int prefopt_tokenizer_pad(const prefopt_tokenizer *t); /* falls back to eos, -1 if neither */
/* Identity recorded in datasets and checkpoints: "byte" or "sha256:<hex of the tokenizer.json bytes>". */
const char *prefopt_tokenizer_identity(const prefopt_tokenizer *t);
/* The token string of an id as the vocabulary spells it (e.g. "\u0120world" for GPT-2, "\u2581Hello" for Llama 2;
 * the byte itself for ids 0-255 of the byte-level tokenizer), its length in *len; NULL for an id outside it. */
const char *prefopt_tokenizer_token(const prefopt_tokenizer *t, int id, size_t *len);
/* Id of a token string (special or regular), -1 if absent. */
int prefopt_tokenizer_token_id(const prefopt_tokenizer *t, const char *token);

#endif
