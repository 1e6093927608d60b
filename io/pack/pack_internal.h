/* Private to io/pack: what pack.c (the JSONL loop, lengths, split, summary), pack_example.c (one line's fields ->
 * token ids) and pack_write.c (the HDF5 output) share. */
#ifndef PREFOPT_PACK_INTERNAL_H
#define PREFOPT_PACK_INTERNAL_H

#include "dataset_internal.h"
#include "prefopt/chat_template.h"
#include "prefopt/pack.h"
#include "prefopt/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>

/* mask[k] (k < n) = 1 for the tokens of ids (the tokenization of text) that hold a byte of one of the spans, as
 * transformers' return_assistant_tokens_mask marks them; 0 elsewhere. Fails with err set when the tokenizer's
 * decode does not reproduce the text, so that the tokens cannot be placed (span_mask.c). */
int prefopt_pack_span_mask(const prefopt_tokenizer *t, const char *text, size_t len, const int32_t *ids, size_t n,
                           const prefopt_chat_span *spans, size_t nspans, int32_t *mask, prefopt_err *err);

/* ---- growable id vectors (inline: ids_push runs once per token id of the input) -------------------------- */
typedef struct {
    int32_t *v;
    size_t n, cap;
} ids_t;

static inline void ids_push(ids_t *a, int32_t x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->v = realloc(a->v, a->cap * sizeof(int32_t));
        if (!a->v)
            prefopt_die("out of memory for token ids");
    }
    a->v[a->n++] = x;
}

static inline void ids_reserve(ids_t *a, size_t n)
{
    if (n > a->cap) {
        a->cap = n;
        a->v = realloc(a->v, a->cap * sizeof(int32_t));
        if (!a->v)
            prefopt_die("out of memory for token ids");
    }
}

/* ---- one output file (pack_write.c) ----------------------------------------------------------------------- */
typedef struct {
    hid_t d;
    int64_t written; /* elements in the file */
    void *buf;
    size_t nbuf, cap, esize;
    hid_t memtype;
} appender;

typedef struct {
    char *final, *tmp;
    hid_t file;
    int nfields;
    appender tok[PREFOPT_DS_MAX_FIELDS], off[PREFOPT_DS_MAX_FIELDS], label, mask;
    int64_t total[PREFOPT_DS_MAX_FIELDS]; /* tokens so far per field */
    int64_t n;                            /* examples */
    int has_label, has_mask; /* has_mask: sft completion/mask, from fields[2] */
} writer;

/* Creates the temporary file path.tmp.<pid> with kind's groups and extendible datasets (and completion/mask when
 * mask); 1 with err set on failure. */
int prefopt_pack_writer_open(writer *w, const char *path, prefopt_ds_kind kind, int mask, prefopt_err *err);
/* Appends one example (fields[0..nfields), the label when unpaired, fields[2] as the mask); 1 when a write failed. */
int prefopt_pack_writer_add(writer *w, ids_t *const fields[], uint8_t label);
/* ok: flush, write the attributes, close and rename; !ok: close and delete. */
int prefopt_pack_writer_finish(writer *w, int ok, prefopt_ds_kind kind, const prefopt_tokenizer *t, prefopt_err *err);

/* ---- one example: a parsed line's fields -> token ids (pack_example.c) ----------------------------------- */
typedef struct {
    const prefopt_pack_opts *o;
    const char *file;
    int64_t line;
    int V;
    prefopt_err *err;
    int conv; /* this example's completions were rendered with the model's chat template (no EOS appended) */
    int msgs; /* this example held chat messages */
    int mismatch; /* the prompt's ids are not the start of render(prompt + completion)'s ids */
    int masked;   /* sft: fields[2] holds this example's loss mask from the template's {% generation %} spans */
} ctx;

/* The kind (prefopt_ds_kind) a parsed line's fields make, -1 when it has none of them. */
int prefopt_pack_line_kind(const cJSON *o);
/* Fills fields[0..] (prompt first) and label from one parsed line of the given kind. */
int prefopt_pack_parse_example(ctx *c, const cJSON *o, prefopt_ds_kind kind, ids_t *const fl[], uint8_t *label);

#endif
