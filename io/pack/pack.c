/* prefopt pack: stream JSONL (getline + cJSON per line), tokenize, enforce lengths, append to chunked extendible
 * HDF5 datasets through fixed-size buffers, rename into place when complete. Input rules are in pack.h. */
#define _GNU_SOURCE
#include "prefopt/pack.h"
#include "dataset_internal.h"
#include "pack_internal.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a per-line arena for cJSON ---------------------------------------------------------------------------
 * A line of 1,500 token ids is 1,500 cJSON nodes; malloc/free of each was a third of the pack time. While pack
 * parses, cJSON allocates from blocks that are reset, not freed, after every line (free is a no-op). */
typedef struct arena_block {
    struct arena_block *next;
    size_t cap, used;
    max_align_t data[];
} arena_block;
static arena_block *arena_head;

static void *arena_malloc(size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    arena_block *b = arena_head;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = arena_head, b->cap = cap, b->used = 0;
        arena_head = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    return p;
}
static void arena_free(void *p) { (void)p; }

/* Keeps one block (the newest) for the next line. */
static void arena_reset(int release_all)
{
    arena_block *keep = release_all ? NULL : arena_head;
    arena_block *b = keep ? keep->next : arena_head;
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    if (keep)
        keep->next = NULL, keep->used = 0;
    arena_head = keep;
}

/* ---- growable id vectors --------------------------------------------------------------------------------- */
typedef struct {
    int32_t *v;
    size_t n, cap;
} ids_t;

static void ids_push(ids_t *a, int32_t x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->v = realloc(a->v, a->cap * sizeof(int32_t));
        if (!a->v)
            prefopt_die("out of memory for token ids");
    }
    a->v[a->n++] = x;
}

static void ids_reserve(ids_t *a, size_t n)
{
    if (n > a->cap) {
        a->cap = n;
        a->v = realloc(a->v, a->cap * sizeof(int32_t));
        if (!a->v)
            prefopt_die("out of memory for token ids");
    }
}

/* ---- one output file --------------------------------------------------------------------------------------- */
enum { TOK_CHUNK = 1 << 18, OFF_CHUNK = 1 << 15 };

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

static int app_create(appender *a, hid_t loc, const char *name, hid_t filetype, hid_t memtype, size_t esize,
                      hsize_t chunk)
{
    hsize_t zero = 0, unlim = H5S_UNLIMITED;
    hid_t s = H5Screate_simple(1, &zero, &unlim), p = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(p, 1, &chunk);
    a->d = H5Dcreate2(loc, name, filetype, s, H5P_DEFAULT, p, H5P_DEFAULT);
    H5Pclose(p), H5Sclose(s);
    a->written = 0, a->nbuf = 0, a->cap = chunk, a->esize = esize, a->memtype = memtype;
    a->buf = prefopt_xmalloc(chunk * esize, "pack buffer");
    return a->d < 0;
}

static int app_flush(appender *a)
{
    if (!a->nbuf)
        return 0;
    hsize_t newlen = (hsize_t)a->written + a->nbuf, off = (hsize_t)a->written, cnt = a->nbuf;
    if (H5Dset_extent(a->d, &newlen) < 0)
        return 1;
    hid_t fs = H5Dget_space(a->d), ms = H5Screate_simple(1, &cnt, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
    herr_t rc = H5Dwrite(a->d, a->memtype, ms, fs, H5P_DEFAULT, a->buf);
    H5Sclose(ms), H5Sclose(fs);
    a->written += (int64_t)a->nbuf;
    a->nbuf = 0;
    return rc < 0;
}

static int app_put(appender *a, const void *x, size_t n)
{
    const char *p = x;
    while (n) {
        size_t k = a->cap - a->nbuf < n ? a->cap - a->nbuf : n;
        memcpy((char *)a->buf + a->nbuf * a->esize, p, k * a->esize);
        a->nbuf += k, p += k * a->esize, n -= k;
        if (a->nbuf == a->cap && app_flush(a))
            return 1;
    }
    return 0;
}

static void app_close(appender *a)
{
    if (a->d > 0)
        H5Dclose(a->d);
    free(a->buf);
    a->d = -1, a->buf = NULL;
}

static int writer_open(writer *w, const char *path, prefopt_ds_kind kind, int mask, prefopt_err *err)
{
    memset(w, 0, sizeof *w);
    w->final = strdup(path);
    if (asprintf(&w->tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        prefopt_die("out of memory");
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        prefopt_err_set(err, "%s: cannot create the output file", w->tmp);
        return 1;
    }
    w->nfields = prefopt_ds_kind_nfields(kind);
    int bad = 0;
    for (int f = 0; f < w->nfields; f++) {
        hid_t g = H5Gcreate2(w->file, prefopt_ds_field_name(kind, f), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        bad |= g < 0;
        bad |= app_create(&w->tok[f], g, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 4, TOK_CHUNK);
        bad |= app_create(&w->off[f], g, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, 8, OFF_CHUNK);
        H5Gclose(g);
        int64_t zero = 0;
        bad |= app_put(&w->off[f], &zero, 1);
    }
    if (mask) { /* 0/1 per completion token, converted by HDF5 from the int32 buffer */
        w->has_mask = 1;
        bad |= app_create(&w->mask, w->file, "completion/mask", H5T_STD_U8LE, H5T_NATIVE_INT32, 4, TOK_CHUNK);
    }
    if (kind == PREFOPT_DS_UNPAIRED) {
        w->has_label = 1;
        bad |= app_create(&w->label, w->file, "label", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, OFF_CHUNK);
    }
    if (bad)
        prefopt_err_set(err, "%s: cannot create the datasets", w->tmp);
    return bad;
}

static int writer_add(writer *w, ids_t *const fields[], uint8_t label)
{
    int bad = 0;
    for (int f = 0; f < w->nfields; f++) {
        bad |= app_put(&w->tok[f], fields[f]->v, fields[f]->n);
        w->total[f] += (int64_t)fields[f]->n;
        bad |= app_put(&w->off[f], &w->total[f], 1);
    }
    if (w->has_label)
        bad |= app_put(&w->label, &label, 1);
    if (w->has_mask)
        bad |= app_put(&w->mask, fields[2]->v, fields[2]->n);
    w->n++;
    return bad;
}

static int write_int_attr(hid_t obj, const char *name, hid_t type, int64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR), a = H5Acreate2(obj, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(s);
    return rc < 0;
}

/* ok: flush, write the attributes, close and rename; !ok: close and delete. */
static int writer_finish(writer *w, int ok, prefopt_ds_kind kind, const prefopt_tokenizer *t, prefopt_err *err)
{
    if (!w->final)
        return 0;
    int bad = 0;
    if (ok && w->file >= 0) {
        for (int f = 0; f < w->nfields; f++)
            bad |= app_flush(&w->tok[f]) | app_flush(&w->off[f]);
        if (w->has_label)
            bad |= app_flush(&w->label);
        if (w->has_mask)
            bad |= app_flush(&w->mask);
        bad |= write_int_attr(w->file, "format_version", H5T_STD_I32LE, PREFOPT_DS_FORMAT_VERSION);
        bad |= prefopt_ds_write_str_attr(w->file, "kind", prefopt_ds_kind_name(kind));
        bad |= write_int_attr(w->file, "num_examples", H5T_STD_I64LE, w->n);
        bad |= write_int_attr(w->file, "vocab_size", H5T_STD_I32LE, prefopt_tokenizer_vocab_size(t));
        bad |= prefopt_ds_write_str_attr(w->file, "tokenizer", prefopt_tokenizer_identity(t));
        bad |= write_int_attr(w->file, "bos_id", H5T_STD_I32LE, prefopt_tokenizer_bos(t));
        bad |= write_int_attr(w->file, "eos_id", H5T_STD_I32LE, prefopt_tokenizer_eos(t));
        bad |= write_int_attr(w->file, "pad_id", H5T_STD_I32LE, prefopt_tokenizer_pad(t));
    }
    for (int f = 0; f < w->nfields; f++)
        app_close(&w->tok[f]), app_close(&w->off[f]);
    if (w->has_label)
        app_close(&w->label);
    if (w->has_mask)
        app_close(&w->mask);
    if (w->file >= 0)
        bad |= H5Fclose(w->file) < 0;
    if (ok && bad)
        prefopt_err_set(err, "%s: writing failed (disk full?)", w->tmp);
    if (ok && !bad && rename(w->tmp, w->final)) {
        prefopt_err_set(err, "%s: cannot rename to %s", w->tmp, w->final);
        bad = 1;
    }
    if (!ok || bad)
        unlink(w->tmp);
    free(w->tmp), free(w->final);
    w->tmp = w->final = NULL;
    return bad;
}

/* ---- one example --------------------------------------------------------------------------------------- */
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

static int encode(ctx *c, const char *s, size_t len, int special, ids_t *out, const char *field)
{
    prefopt_err e = {0};
    if (prefopt_tokenizer_encode(c->o->tok, s, len, special, &out->v, &out->n, &out->cap, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    return 0;
}

static int encode_str(ctx *c, const char *s, int special, ids_t *out, const char *field)
{
    return encode(c, s, strlen(s), special, out, field);
}

/* mode: 0 prompt (ends with the generation prompt), 1 completion (leading assistant header omitted),
 * 2 whole conversation (no generation prompt). */
static int chat_ids(ctx *c, const cJSON *msgs, int agp, ids_t *out, const char *field);
static int render_messages(ctx *c, const cJSON *msgs, int mode, ids_t *out, const char *field)
{
    c->msgs = 1;
    if (c->o->chat) { /* a message list on its own (beside a text prompt or completion): the template renders it */
        out->n = 0;
        return chat_ids(c, msgs, mode == 0, out, field);
    }
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': message %d: expected an object with string 'role' "
                                    "and 'content'",
                            c->file, c->line, field, i);
            return 1;
        }
        if (!(mode == 1 && i == 0 && !strcmp(role->valuestring, "assistant"))) {
            if (encode_str(c, "<|im_start|>", 1, out, field) || encode_str(c, role->valuestring, 0, out, field) ||
                encode_str(c, "\n", 0, out, field))
                return 1;
        }
        if (encode_str(c, content->valuestring, 0, out, field) || encode_str(c, "<|im_end|>", 1, out, field) ||
            encode_str(c, "\n", 0, out, field))
            return 1;
    }
    if (mode == 0 && (encode_str(c, "<|im_start|>", 1, out, field) || encode_str(c, "assistant\n", 0, out, field)))
        return 1;
    return 0;
}

static int ids_from_array(ctx *c, const cJSON *a, ids_t *out, const char *field)
{
    int i = 0;
    for (const cJSON *x = a->child; x; x = x->next, i++) {
        double v = x->valuedouble;
        if (!cJSON_IsNumber(x) || v != floor(v) || v < 0 || v >= c->V) {
            if (cJSON_IsNumber(x) && v == floor(v))
                prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': token id %.0f at index %d is outside the "
                                        "vocabulary [0, %d)",
                                c->file, c->line, field, v, i, c->V);
            else
                prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': element %d is not an integer token id", c->file,
                                c->line, field, i);
            return 1;
        }
        ids_push(out, (int32_t)v);
    }
    return 0;
}

/* The special tokens Hugging Face's tokenizer(text) (add_special_tokens=True) puts around a text, from the
 * tokenizer.json post-processor (Llama-2/3: BOS first; GPT-2, Qwen: none): TRL 1.x tokenizes standard (text) prompts
 * this way. -1 where there is none or add_special_tokens is off. */
static void text_specials(const ctx *c, int *first, int *last)
{
    *first = *last = -1;
    if (c->o->add_special_tokens)
        prefopt_tokenizer_template(c->o->tok, first, last);
}

/* A field as a string, token ids, or messages; or "<name>_ids". Returns 1 on error, -1 if absent. A text prompt
 * (msg_mode 0) gets the post-processor's special tokens, as TRL's tokenizer(prompt). */
static int get_field(ctx *c, const cJSON *obj, const char *name, int msg_mode, ids_t *out);
static int text_field(ctx *c, const char *s, int msg_mode, ids_t *out, const char *fname)
{
    int first, last;
    text_specials(c, &first, &last);
    if (msg_mode != 0 || !s[0])
        first = last = -1;
    if (first >= 0)
        ids_push(out, first);
    if (encode_str(c, s, 1, out, fname))
        return 1;
    if (last >= 0)
        ids_push(out, last);
    return 0;
}


static int get_field(ctx *c, const cJSON *obj, const char *name, int msg_mode, ids_t *out)
{
    out->n = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    char idname[64];
    snprintf(idname, sizeof idname, "%s_ids", name);
    const char *fname = name;
    if (!v || cJSON_IsNull(v)) {
        v = cJSON_GetObjectItemCaseSensitive(obj, idname);
        fname = idname;
        if (!v || cJSON_IsNull(v))
            return -1;
        if (!cJSON_IsArray(v)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': expected an array of token ids", c->file, c->line,
                            fname);
            return 1;
        }
    }
    if (cJSON_IsString(v)) /* special tokens in text are the tokenizer's added tokens, as `prefopt tokenize` reads them */
        return text_field(c, v->valuestring, msg_mode, out, fname);
    if (cJSON_IsArray(v)) {
        if (v->child && cJSON_IsObject(v->child))
            return render_messages(c, v, msg_mode, out, fname);
        return ids_from_array(c, v, out, fname);
    }
    prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': expected a string, an array of token ids or a list of "
                            "messages",
                    c->file, c->line, fname);
    return 1;
}

static int has(const cJSON *o, const char *name)
{
    char idname[64];
    snprintf(idname, sizeof idname, "%s_ids", name);
    return cJSON_GetObjectItemCaseSensitive(o, name) || cJSON_GetObjectItemCaseSensitive(o, idname);
}

static int line_kind(const cJSON *o)
{
    if (has(o, "chosen") || has(o, "rejected"))
        return PREFOPT_DS_PAIRS;
    if (cJSON_GetObjectItemCaseSensitive(o, "label"))
        return PREFOPT_DS_UNPAIRED;
    if (has(o, "completion") || has(o, "text") || cJSON_GetObjectItemCaseSensitive(o, "messages"))
        return PREFOPT_DS_SFT;
    return -1;
}

static int require(ctx *c, int rc, const char *name)
{
    if (rc < 0)
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s' is missing", c->file, c->line, name);
    return rc != 0;
}

/* ---- conversational examples with the model's chat template (TRL 1.x's tokenization) ------------------------- */
static int chat_ids(ctx *c, const cJSON *msgs, int agp, ids_t *out, const char *field)
{
    char *text;
    size_t len;
    prefopt_err e = {0};
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++)
        if (!cJSON_IsObject(m) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "role"))) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': message %d: expected an object with a string 'role'",
                            c->file, c->line, field, i);
            return 1;
        }
    if (prefopt_chat_template_render(c->o->chat, msgs, agp, NULL, &text, &len, NULL, NULL, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    out->n = 0;
    int bad = encode(c, text, len, 1, out, field); /* the template's markers are special tokens */
    free(text);
    return bad;
}

/* The whole conversation with the loss mask of its {% generation %} spans in mask (TRL's assistant_only_loss).
 * 2 when the template marks no span (the caller decides), 1 on error, 0 done. */
static int chat_ids_masked(ctx *c, const cJSON *msgs, ids_t *out, ids_t *mask, const char *field)
{
    char *text;
    size_t len, nspans = 0;
    prefopt_chat_span *spans = NULL;
    prefopt_err e = {0};
    if (prefopt_chat_template_render(c->o->chat, msgs, 0, NULL, &text, &len, &spans, &nspans, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    int rc = 2;
    if (nspans) {
        out->n = 0;
        rc = encode(c, text, len, 1, out, field);
        ids_reserve(mask, out->n);
        mask->n = out->n;
        if (!rc && prefopt_pack_span_mask(c->o->tok, text, len, out->v, out->n, spans, nspans, mask->v, &e)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
            rc = 1;
        }
        size_t ones = 0;
        for (size_t k = 0; !rc && k < mask->n; k++)
            ones += (size_t)mask->v[k];
        if (!rc && !ones) { /* TRL refuses the same */
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': --assistant-only-loss: the template's "
                                    "{%% generation %%} blocks mark no token of this conversation",
                            c->file, c->line, field);
            rc = 1;
        }
        c->masked = !rc;
    }
    free(text), free(spans);
    return rc;
}

static int is_messages(const cJSON *v) { return cJSON_IsArray(v) && v->child && cJSON_IsObject(v->child); }

/* the messages [from, to) of a list, as a new list of references (the arena frees it with the line) */
static cJSON *msg_slice(const cJSON *a, int from, int to, const cJSON *more)
{
    cJSON *r = cJSON_CreateArray();
    int i = 0;
    for (const cJSON *m = a ? a->child : NULL; m; m = m->next, i++)
        if (i >= from && (to < 0 || i < to))
            cJSON_AddItemReferenceToArray(r, (cJSON *)m);
    for (const cJSON *m = more ? more->child : NULL; m; m = m->next)
        cJSON_AddItemReferenceToArray(r, (cJSON *)m);
    return r;
}

/* completion ids = ids(render(prompt + completion)) without the prompt's ids (render(prompt, agp=True)) */
static int chat_completion(ctx *c, const cJSON *prompt, const ids_t *pids, const cJSON *comp, ids_t *out,
                           const char *field)
{
    cJSON *all = msg_slice(prompt, 0, -1, comp);
    int bad = chat_ids(c, all, 0, out, field);
    cJSON_Delete(all);
    if (bad)
        return 1;
    /* TRL slices at the prompt's length even when the prompt tokenizes differently at the end of the whole
     * conversation (e.g. Llama-3's "\n\n" before the answer's first word), and warns: so do we, and count them */
    if (out->n < pids->n || (pids->n && memcmp(out->v, pids->v, pids->n * sizeof(int32_t))))
        c->mismatch = 1;
    if (out->n < pids->n)
        out->n = pids->n;
    memmove(out->v, out->v + pids->n, (out->n - pids->n) * sizeof(int32_t));
    out->n -= pids->n;
    return 0;
}

/* prompt messages + completion message lists -> fl[0] and fl[1..n] */
static int chat_fields(ctx *c, const cJSON *prompt, const cJSON *const comps[], int n, const char *const names[],
                       ids_t *const fl[])
{
    if (!prompt->child) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': no prompt messages (chosen and rejected share no leading "
                                "message)",
                        c->file, c->line, names[0]);
        return 1;
    }
    c->conv = c->msgs = 1;
    if (chat_ids(c, prompt, 1, fl[0], names[0]))
        return 1;
    for (int k = 0; k < n; k++)
        if (chat_completion(c, prompt, fl[0], comps[k], fl[k + 1], names[k + 1]))
            return 1;
    return 0;
}

/* 1 error, 0 done, 2 not conversational (the caller's other paths apply) */
static int parse_chat(ctx *c, const cJSON *o, prefopt_ds_kind kind, ids_t *const fl[])
{
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (kind == PREFOPT_DS_PAIRS) {
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "chosen"), *rj = cJSON_GetObjectItemCaseSensitive(o, "rejected");
        if (!is_messages(ch) || !is_messages(rj))
            return 2;
        static const char *const names[] = {"prompt", "chosen", "rejected"};
        if (is_messages(pr)) {
            const cJSON *comps[2] = {ch, rj};
            return chat_fields(c, pr, comps, 2, names, fl);
        }
        /* implicit prompt (TRL's extract_prompt): the leading messages chosen and rejected share; a text prompt
         * beside message lists (UltraFeedback-binarized) is replaced by them, or is the user turn when none */
        int k = 0;
        const cJSON *a = ch->child, *b = rj->child;
        while (a && b && a->next && b->next && cJSON_Compare(a, b, 1))
            a = a->next, b = b->next, k++;
        cJSON *pm;
        if (!k && cJSON_IsString(pr)) {
            pm = cJSON_CreateArray();
            cJSON *u = cJSON_CreateObject();
            cJSON_AddStringToObject(u, "role", "user");
            cJSON_AddStringToObject(u, "content", pr->valuestring);
            cJSON_AddItemToArray(pm, u);
        } else {
            pm = msg_slice(ch, 0, k, NULL);
        }
        cJSON *cs = msg_slice(ch, k, -1, NULL), *rs = msg_slice(rj, k, -1, NULL);
        const cJSON *comps[2] = {cs, rs};
        int bad = chat_fields(c, pm, comps, 2, names, fl);
        cJSON_Delete(pm), cJSON_Delete(cs), cJSON_Delete(rs);
        return bad;
    }
    if (kind == PREFOPT_DS_UNPAIRED || (kind == PREFOPT_DS_SFT && !cJSON_GetObjectItemCaseSensitive(o, "messages"))) {
        const cJSON *cm = cJSON_GetObjectItemCaseSensitive(o, "completion");
        if (!is_messages(pr) || !is_messages(cm))
            return 2;
        static const char *const names[] = {"prompt", "completion"};
        const cJSON *comps[1] = {cm};
        return chat_fields(c, pr, comps, 1, names, fl);
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (kind != PREFOPT_DS_SFT || !is_messages(msgs))
        return 2;
    int n = cJSON_GetArraySize(msgs);
    const cJSON *last = cJSON_GetArrayItem(msgs, n - 1), *role = cJSON_GetObjectItemCaseSensitive(last, "role");
    if (!cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': expected a list of messages ending with an "
                                "'assistant' message",
                        c->file, c->line);
        return 1;
    }
    c->conv = c->msgs = 1;
    fl[0]->n = 0;
    if (!c->o->assistant_only_loss) /* TRL's language modelling on the conversation: every token */
        return chat_ids(c, msgs, 0, fl[1], "messages");
    /* TRL's assistant_only_loss: the tokens of every assistant turn, as the template's {% generation %} blocks
     * mark them; a template without such blocks (most) leaves the final turn as the completion, below */
    int rc = chat_ids_masked(c, msgs, fl[1], fl[2], "messages");
    if (rc != 2)
        return rc;
    int i = 0;
    for (const cJSON *m = msgs->child; m && m != last; m = m->next, i++) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (cJSON_IsString(r) && !strcmp(r->valuestring, "assistant")) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': message %d is an earlier assistant turn: "
                                    "--assistant-only-loss needs a chat template with {%% generation %%} blocks to "
                                    "find every assistant turn (as TRL does), and %s has none: pass one with "
                                    "--chat-template, or pack without --assistant-only-loss for TRL's all-token loss",
                            c->file, c->line, i, prefopt_chat_template_name(c->o->chat));
            return 1;
        }
    }
    static const char *const names[] = {"messages", "messages"};
    cJSON *pm = msg_slice(msgs, 0, n - 1, NULL), *cm = msg_slice(msgs, n - 1, -1, NULL);
    const cJSON *comps[1] = {cm};
    int bad = chat_fields(c, pm, comps, 1, names, fl);
    cJSON_Delete(pm), cJSON_Delete(cm);
    return bad;
}

/* Standard (text) prompt and completions, as TRL 1.x tokenizes them: a completion's ids are those of
 * prompt + completion after the prompt's length (a SentencePiece completion tokenized alone would start with a
 * lone "▁"); a completion given as ids or messages keeps its own. */
static int rejoin_text(ctx *c, const cJSON *o, const char *const names[], int n, ids_t *const fl[])
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, names[0]);
    if (!cJSON_IsString(p) || !p->valuestring[0])
        return 0;
    size_t pl = strlen(p->valuestring);
    int first, last;
    text_specials(c, &first, &last);
    for (int k = 1; k <= n; k++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, names[k]);
        if (!cJSON_IsString(x))
            continue;
        size_t xl = strlen(x->valuestring);
        char *both = prefopt_xmalloc(pl + xl + 1, "prompt + completion");
        memcpy(both, p->valuestring, pl);
        memcpy(both + pl, x->valuestring, xl + 1);
        fl[k]->n = 0;
        if (first >= 0)
            ids_push(fl[k], first);
        int bad = encode(c, both, pl + xl, 1, fl[k], names[k]);
        free(both);
        if (bad)
            return 1;
        if (last >= 0)
            ids_push(fl[k], last);
        if (fl[k]->n < fl[0]->n || (fl[0]->n && memcmp(fl[k]->v, fl[0]->v, fl[0]->n * sizeof(int32_t))))
            c->mismatch = 1;
        size_t cut = fl[k]->n < fl[0]->n ? fl[k]->n : fl[0]->n;
        memmove(fl[k]->v, fl[k]->v + cut, (fl[k]->n - cut) * sizeof(int32_t));
        fl[k]->n -= cut;
    }
    return 0;
}

/* Fills fields[0..] (prompt first) and label from one parsed line of the given kind. */
static int parse_example(ctx *c, const cJSON *o, prefopt_ds_kind kind, ids_t *const fl[], uint8_t *label)
{
    c->conv = c->msgs = c->mismatch = c->masked = 0;
    int chat = 2;
    if (c->o->chat && (chat = parse_chat(c, o, kind, fl)) == 1)
        return 1;
    if (chat == 0 && kind != PREFOPT_DS_UNPAIRED)
        return 0;
    if (kind == PREFOPT_DS_PAIRS) {
        int rp = get_field(c, o, "prompt", 0, fl[0]);
        if (rp > 0)
            return 1;
        int mode = rp < 0 ? 2 : 1;
        if (require(c, get_field(c, o, "chosen", mode, fl[1]), "chosen") ||
            require(c, get_field(c, o, "rejected", mode, fl[2]), "rejected"))
            return 1;
        static const char *const names[] = {"prompt", "chosen", "rejected"};
        if (rp == 0 && rejoin_text(c, o, names, 2, fl))
            return 1;
        if (rp < 0) { /* implicit prompt: the common prefix */
            size_t k = 0;
            while (k < fl[1]->n && k < fl[2]->n && fl[1]->v[k] == fl[2]->v[k])
                k++;
            for (size_t i = 0; i < k; i++)
                ids_push(fl[0], fl[1]->v[i]);
            for (int f = 1; f <= 2 && k; f++) { /* (k == 0: v may be NULL) */
                memmove(fl[f]->v, fl[f]->v + k, (fl[f]->n - k) * sizeof(int32_t));
                fl[f]->n -= k;
            }
        }
        return 0;
    }
    if (kind == PREFOPT_DS_UNPAIRED) {
        static const char *const names[] = {"prompt", "completion"};
        if (chat != 0 && (require(c, get_field(c, o, "prompt", 0, fl[0]), "prompt") ||
                          require(c, get_field(c, o, "completion", 1, fl[1]), "completion") ||
                          rejoin_text(c, o, names, 1, fl)))
            return 1;
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "label");
        if (cJSON_IsBool(l))
            *label = cJSON_IsTrue(l) ? 1 : 0;
        else if (cJSON_IsNumber(l) && (l->valuedouble == 0 || l->valuedouble == 1))
            *label = (uint8_t)l->valuedouble;
        else {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'label': %s", c->file, c->line,
                            l ? "expected true/false or 1/0" : "is missing");
            return 1;
        }
        return 0;
    }
    /* sft */
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (msgs) {
        int n = cJSON_GetArraySize(msgs);
        const cJSON *last = cJSON_IsArray(msgs) && n ? cJSON_GetArrayItem(msgs, n - 1) : NULL;
        const cJSON *role = last ? cJSON_GetObjectItemCaseSensitive(last, "role") : NULL;
        if (!last || !cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': expected a list of messages ending with an "
                                    "'assistant' message",
                            c->file, c->line);
            return 1;
        }
        /* render the prompt from a detached copy without the last message */
        cJSON *head = cJSON_CreateArray();
        for (const cJSON *m = msgs->child; m != last; m = m->next)
            cJSON_AddItemReferenceToArray(head, (cJSON *)m);
        fl[0]->n = fl[1]->n = 0;
        int bad = render_messages(c, head, 0, fl[0], "messages");
        cJSON_Delete(head);
        if (bad)
            return 1;
        cJSON *tail = cJSON_CreateArray();
        cJSON_AddItemReferenceToArray(tail, (cJSON *)last);
        bad = render_messages(c, tail, 1, fl[1], "messages");
        cJSON_Delete(tail);
        return bad;
    }
    if (has(o, "text")) { /* TRL's SFT: tokenizer(text); a leading special (BOS) is context, not trained */
        int first, last;
        text_specials(c, &first, &last);
        fl[0]->n = 0;
        if (require(c, get_field(c, o, "text", 2, fl[1]), "text"))
            return 1;
        if (first >= 0)
            ids_push(fl[0], first);
        if (last >= 0)
            ids_push(fl[1], last);
        return 0;
    }
    static const char *const names[] = {"prompt", "completion"};
    return require(c, get_field(c, o, "prompt", 0, fl[0]), "prompt") ||
           require(c, get_field(c, o, "completion", 1, fl[1]), "completion") || rejoin_text(c, o, names, 1, fl);
}

/* Returns the drop reason, or -1 to keep. */
static int shape_example(const prefopt_pack_opts *o, const prefopt_tokenizer *t, int nf, ids_t *const fl[],
                         prefopt_pack_stats *st, int conv)
{
    int bos = prefopt_tokenizer_bos(t), eos = prefopt_tokenizer_eos(t);
    /* an empty prompt (plain text) becomes [BOS] so the text's first token is predicted too */
    if (o->add_bos && bos >= 0 && (!fl[0]->n || fl[0]->v[0] != bos)) {
        ids_push(fl[0], 0);
        memmove(fl[0]->v + 1, fl[0]->v, (fl[0]->n - 1) * sizeof(int32_t));
        fl[0]->v[0] = bos;
    }
    for (int f = 1; f < nf; f++)
        if (o->append_eos && !conv && eos >= 0 && (!fl[f]->n || fl[f]->v[fl[f]->n - 1] != eos))
            ids_push(fl[f], eos);
    size_t P = fl[0]->n;
    if (o->truncation == PREFOPT_TRUNC_DROP) {
        if (o->max_prompt_len > 0 && P > (size_t)o->max_prompt_len)
            return PREFOPT_PACK_DROP_PROMPT;
        for (int f = 1; f < nf; f++)
            if (o->max_len > 0 && P + fl[f]->n > (size_t)o->max_len)
                return PREFOPT_PACK_DROP_LENGTH;
    } else {
        if (o->max_prompt_len > 0 && P > (size_t)o->max_prompt_len) {
            size_t cut = P - (size_t)o->max_prompt_len;
            memmove(fl[0]->v, fl[0]->v + cut, (size_t)o->max_prompt_len * sizeof(int32_t));
            fl[0]->n = P = (size_t)o->max_prompt_len;
            st->prompt_truncated++;
        }
        if (o->max_len > 0) {
            if (P >= (size_t)o->max_len)
                return PREFOPT_PACK_DROP_PROMPT;
            int cut = 0;
            for (int f = 1; f < nf; f++)
                if (P + fl[f]->n > (size_t)o->max_len)
                    fl[f]->n = (size_t)o->max_len - P, cut = 1;
            st->completion_truncated += cut;
        }
    }
    for (int f = 1; f < nf; f++)
        if (!fl[f]->n)
            return PREFOPT_PACK_DROP_EMPTY;
    return -1;
}

/* An sft loss mask after shape_example: a masked completion may only have been cut (the template ends its turns,
 * so no EOS was appended); an unmasked one (text, prompt/completion) trains on every token. */
static int shape_mask(const ids_t *comp, ids_t *mask, int masked)
{
    if (!masked) {
        ids_reserve(mask, comp->n);
        for (size_t k = 0; k < comp->n; k++)
            mask->v[k] = 1;
    }
    mask->n = comp->n;
    for (size_t k = 0; k < mask->n; k++)
        if (mask->v[k])
            return -1;
    return PREFOPT_PACK_DROP_EMPTY; /* truncation left no trained token */
}

static int goes_to_eval(const prefopt_pack_opts *o, int64_t line)
{
    if (!o->eval_output || o->eval_fraction <= 0)
        return 0;
    uint64_t z = o->seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(line + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 < o->eval_fraction;
}

/* Length histogram (bounded by the longest example) for exact percentiles. */
typedef struct {
    int64_t *count;
    size_t cap;
    int64_t n;
} histo;

static void histo_add(histo *h, size_t len)
{
    if (len >= h->cap) {
        size_t nc = h->cap ? h->cap : 1024;
        while (nc <= len)
            nc *= 2;
        h->count = realloc(h->count, nc * sizeof(int64_t));
        if (!h->count)
            prefopt_die("out of memory for the length histogram");
        memset(h->count + h->cap, 0, (nc - h->cap) * sizeof(int64_t));
        h->cap = nc;
    }
    h->count[len]++, h->n++;
}

static int64_t histo_pct(const histo *h, double q)
{
    if (!h->n)
        return 0;
    int64_t want = (int64_t)ceil(q * (double)h->n), acc = 0;
    if (want < 1)
        want = 1;
    for (size_t i = 0; i < h->cap; i++)
        if ((acc += h->count[i]) >= want)
            return (int64_t)i;
    return 0;
}

/* CPU time of this process: the throughput a free core gives, whatever else shares the machine. */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int prefopt_pack(const prefopt_pack_opts *o, prefopt_pack_stats *st, prefopt_err *err)
{
    memset(st, 0, sizeof *st);
    double t0 = prefopt_now(), c0 = cpu_seconds();
    int forced = -1;
    if (o->kind && strcmp(o->kind, "auto")) {
        prefopt_ds_kind k;
        if (prefopt_ds_kind_parse(o->kind, &k)) {
            prefopt_err_set(err, "--kind '%s': expected auto, pairs, unpaired or sft", o->kind);
            return 1;
        }
        forced = (int)k;
    }
    if (o->eval_fraction < 0 || o->eval_fraction > 1 || (o->eval_fraction > 0 && !o->eval_output)) {
        prefopt_err_set(err, "--eval-fraction %g needs a value in [0, 1] and --eval-out", o->eval_fraction);
        return 1;
    }
    FILE *in = fopen(o->input, "rb");
    if (!in) {
        prefopt_err_set(err, "%s: cannot open the input", o->input);
        return 1;
    }
    ctx c = {o, o->input, 0, prefopt_tokenizer_vocab_size(o->tok), err, 0, 0, 0, 0};
    ids_t store[PREFOPT_DS_MAX_FIELDS] = {0};
    ids_t *fl[PREFOPT_DS_MAX_FIELDS] = {&store[0], &store[1], &store[2]};
    writer w[2] = {0};
    int opened = 0, kind = forced, has_mask = 0;
    prefopt_ds_kind okind = PREFOPT_DS_PAIRS; /* of the output: unpaired under --unpair */
    histo h = {0};
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    H5E_auto2_t efn;
    void *edata;
    H5Eget_auto2(H5E_DEFAULT, &efn, &edata);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    cJSON_Hooks hooks = {arena_malloc, arena_free};
    cJSON_InitHooks(&hooks); /* until the loop ends: nothing else parses JSON meanwhile (pack is serial) */
    while (!err->set && (len = getline(&line, &lcap, in)) >= 0) {
        arena_reset(0);
        c.line = ++st->lines;
        st->bytes += (double)len;
        size_t a = 0;
        while (a < (size_t)len && (line[a] == ' ' || line[a] == '\t' || line[a] == '\r' || line[a] == '\n'))
            a++;
        if (a == (size_t)len) {
            st->blank++;
            continue;
        }
        cJSON *obj = cJSON_ParseWithLength(line, (size_t)len);
        if (!obj || !cJSON_IsObject(obj)) {
            const char *at = obj ? NULL : cJSON_GetErrorPtr();
            int show = 0; /* up to 20 characters of the rest of the line */
            while (at && show < 20 && at[show] && at[show] != '\n' && at[show] != '\r')
                show++;
            prefopt_err_set(err, "%s:%" PRId64 ": %s%.*s%s", o->input, c.line,
                            obj ? "expected a JSON object" : "invalid JSON near '", show, at ? at : "",
                            at ? "'" : "");
            cJSON_Delete(obj);
            break;
        }
        int lk = line_kind(obj);
        if (lk < 0)
            prefopt_err_set(err, "%s:%" PRId64 ": no known fields (expected prompt/chosen/rejected, "
                                 "prompt/completion/label, prompt/completion, text or messages)",
                            o->input, c.line);
        else if (kind >= 0 && lk != kind &&
                 !(forced == PREFOPT_DS_SFT && lk == PREFOPT_DS_UNPAIRED))
            prefopt_err_set(err, "%s:%" PRId64 ": a '%s' example in a '%s' dataset (%s)", o->input, c.line,
                            prefopt_ds_kind_name((prefopt_ds_kind)lk), prefopt_ds_kind_name((prefopt_ds_kind)kind),
                            forced >= 0 ? "--kind" : "set by the first example");
        if (err->set) {
            cJSON_Delete(obj);
            break;
        }
        if (kind < 0)
            kind = lk;
        if (!opened) {
            opened = 1;
            if (o->unpair && kind != PREFOPT_DS_PAIRS)
                prefopt_err_set(err, "%s: --unpair needs pairs (prompt, chosen, rejected), the input holds %s", o->input,
                                prefopt_ds_kind_name((prefopt_ds_kind)kind));
            okind = o->unpair ? PREFOPT_DS_UNPAIRED : (prefopt_ds_kind)kind;
            has_mask = o->assistant_only_loss && okind == PREFOPT_DS_SFT;
            if (err->set || writer_open(&w[0], o->output, okind, has_mask, err) ||
                (o->eval_output && writer_open(&w[1], o->eval_output, okind, has_mask, err))) {
                cJSON_Delete(obj);
                break;
            }
        }
        uint8_t label = 0;
        int nf = prefopt_ds_kind_nfields((prefopt_ds_kind)kind);
        int bad = parse_example(&c, obj, (prefopt_ds_kind)kind, fl, &label);
        cJSON_Delete(obj);
        if (bad)
            break;
        st->conversational += c.msgs;
        st->prompt_mismatch += c.mismatch;
        int why = shape_example(o, o->tok, nf, fl, st, c.conv);
        if (why < 0 && has_mask)
            why = shape_mask(fl[1], fl[2], c.masked);
        if (why >= 0) {
            st->dropped[why]++;
            continue;
        }
        int s = goes_to_eval(o, c.line); /* both halves of an unpaired pair go to the same split */
        for (int half = 0; half < (o->unpair ? 2 : 1); half++) {
            ids_t *out[PREFOPT_DS_MAX_FIELDS] = {fl[0], fl[1], fl[2]};
            int onf = nf;
            if (o->unpair) /* TRL's unpair_preference_dataset: (prompt, chosen, true), (prompt, rejected, false) */
                out[1] = fl[1 + half], label = (uint8_t)!half, onf = 2;
            if (writer_add(&w[s], out, label)) {
                prefopt_err_set(err, "%s: writing failed (disk full?)", w[s].tmp);
                break;
            }
            size_t rowlen = 0;
            for (int f = 0; f < onf; f++)
                st->tokens[s][f] += (int64_t)out[f]->n, rowlen += out[f]->n;
            st->kept[s]++;
            histo_add(&h, rowlen);
        }
    }
    cJSON_InitHooks(NULL);
    arena_reset(1);
    if (!err->set && ferror(in))
        prefopt_err_set(err, "%s: read error", o->input);
    if (!err->set && !opened)
        prefopt_err_set(err, "%s: no examples (the file is empty)", o->input);
    fclose(in);
    free(line);
    st->kind = okind;
    for (int s = 0; s < 2; s++)
        writer_finish(&w[s], !err->set, st->kind, o->tok, err);
    H5Eset_auto2(H5E_DEFAULT, efn, edata);
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        free(store[f].v);
    st->len_p50 = histo_pct(&h, 0.5), st->len_p90 = histo_pct(&h, 0.9), st->len_p99 = histo_pct(&h, 0.99);
    st->len_max = histo_pct(&h, 1.0);
    free(h.count);
    st->seconds = prefopt_now() - t0;
    st->cpu_seconds = cpu_seconds() - c0;
    return err->set;
}

void prefopt_pack_print_summary(FILE *f, const prefopt_pack_opts *o, const prefopt_pack_stats *st)
{
    int nf = prefopt_ds_kind_nfields(st->kind);
    int64_t dropped = st->dropped[0] + st->dropped[1] + st->dropped[2];
    fprintf(f, "pack: %s -> %s (%s, tokenizer %s)\n", o->input, o->output, prefopt_ds_kind_name(st->kind),
            prefopt_tokenizer_identity(o->tok));
    if (st->conversational) {
        if (o->chat)
            fprintf(f, "  chat template: %s (%" PRId64 " conversational examples, tokenized as TRL does)\n",
                    prefopt_chat_template_name(o->chat), st->conversational);

        else
            fprintf(f, "  chat template: ChatML fallback (the tokenizer has no chat_template; %" PRId64
                       " conversational examples; --chat-template FILE sets one)\n",
                    st->conversational);
    }
    if (st->prompt_mismatch)
        fprintf(f, "  warning: in %" PRId64 " examples the prompt's tokens are not the start of prompt + completion's "
                   "(a token spans the boundary); the completion starts after as many tokens as the prompt has, as in "
                   "TRL\n",
                st->prompt_mismatch);
    fprintf(f, "  lines %" PRId64 " (%" PRId64 " blank); kept %" PRId64 " train", st->lines, st->blank, st->kept[0]);
    if (o->eval_output)
        fprintf(f, " + %" PRId64 " eval (%s)", st->kept[1], o->eval_output);
    fprintf(f, "; dropped %" PRId64 "\n", dropped);
    fprintf(f, "  dropped: prompt too long %" PRId64 ", over max length %" PRId64 ", empty completion %" PRId64
               "; truncated: prompts %" PRId64 ", completions %" PRId64 "\n",
            st->dropped[0], st->dropped[1], st->dropped[2], st->prompt_truncated, st->completion_truncated);
    for (int s = 0; s < (o->eval_output ? 2 : 1); s++) {
        fprintf(f, "  tokens (%s):", s ? "eval" : "train");
        for (int k = 0; k < nf; k++)
            fprintf(f, " %s %" PRId64, prefopt_ds_field_name(st->kind, k), st->tokens[s][k]);
        fprintf(f, "\n");
    }
    fprintf(f, "  row length (prompt + completions): p50 %" PRId64 ", p90 %" PRId64 ", p99 %" PRId64 ", max %" PRId64
               "\n",
            st->len_p50, st->len_p90, st->len_p99, st->len_max);
    fprintf(f, "  throughput: %.1f MB of JSONL in %.2f s = %.1f MB/s (%.2f s of CPU: %.1f MB per CPU second)\n",
            st->bytes / 1e6, st->seconds, st->seconds > 0 ? st->bytes / 1e6 / st->seconds : 0.0, st->cpu_seconds,
            st->cpu_seconds > 0 ? st->bytes / 1e6 / st->cpu_seconds : 0.0);
}
