/* prefopt pack: stream JSONL (getline + cJSON per line, the line checks), tokenize each example (pack_example.c),
 * enforce lengths, split train/eval, append to chunked extendible HDF5 datasets through fixed-size buffers and
 * rename into place when complete (pack_write.c); the statistics and the summary. Input rules are in pack.h. */
#define _GNU_SOURCE
#include "pack_internal.h"
#include "prefopt/files.h"

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
        if (prefopt_jsonl_check_nul(line, (size_t)len, o->input, c.line, err))
            break;
        cJSON *obj = cJSON_ParseWithLength(line, (size_t)len);
        if (obj && prefopt_jsonl_check_keys(obj, o->input, c.line, err)) {
            cJSON_Delete(obj);
            break;
        }
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
        int lk = prefopt_pack_line_kind(obj);
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
            if (err->set || prefopt_pack_writer_open(&w[0], o->output, okind, has_mask, err) ||
                (o->eval_output && prefopt_pack_writer_open(&w[1], o->eval_output, okind, has_mask, err))) {
                cJSON_Delete(obj);
                break;
            }
        }
        uint8_t label = 0;
        int nf = prefopt_ds_kind_nfields((prefopt_ds_kind)kind);
        int bad = prefopt_pack_parse_example(&c, obj, (prefopt_ds_kind)kind, fl, &label);
        cJSON_Delete(obj);
        if (bad)
            break;
        if (kind == PREFOPT_DS_PAIRS && fl[1]->n == fl[2]->n &&
            (!fl[1]->n || !memcmp(fl[1]->v, fl[2]->v, fl[1]->n * sizeof(int32_t))))
            st->identical_pairs++; /* a tie carries no preference: counted, and said in the summary */
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
            if (prefopt_pack_writer_add(&w[s], out, label)) {
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
        prefopt_pack_writer_finish(&w[s], !err->set, st->kind, o->tok, err);
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
    if (st->identical_pairs)
        fprintf(f, "  warning: %" PRId64 " pairs have the same chosen and rejected tokens (they carry no preference)\n",
                st->identical_pairs);
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
