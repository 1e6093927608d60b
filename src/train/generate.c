/* prefopt generate: sample completions for prompts with a model on a tensor-parallel grid (data-parallel
 * replicas take every dp-th prompt). Greedy (temperature 0), temperature, top-k and top-p sampling; stops at EOS
 * or the length limit, decoding with the engine's key/value cache. With --ref, each completion is also scored under the policy and the reference, giving the
 * per-sample log-ratio whose mean estimates KL(policy || reference) on the generated distribution. */
#define _GNU_SOURCE
#include "prefopt/regions.h"
#include "prefopt/trace.h"
#include "prefopt/banner.h"
#include "prefopt/checkpoint.h"
#include "prefopt/dataset.h"
#include "prefopt/opts.h"
#include "prefopt/pack.h"
#include "prefopt/runctl.h"
#include "prefopt/chat_template.h"
#include "prefopt/tokenizer.h"
#include "prefopt/generate.h"
#include "prefopt/train.h"

#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int64_t index;
    char *prompt;
    int32_t *ids; /* prompt ids, then generated ids */
    int nprompt, n, cap;
    int done;
    double logp_pol, logp_ref;
} sample;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* A uniform draw that depends only on (seed, example, position): the same on every rank of a grid and the same
 * whatever the batch composition, so outputs do not depend on the layout. */
static double uniform(uint64_t seed, int64_t example, int pos)
{
    uint64_t h = mix64(seed ^ mix64((uint64_t)example * 0x100000001b3ULL + (uint64_t)pos));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct {
    float logit;
    int id;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

static int pick(const float *logits, int V, double temperature, int top_k, double top_p, double u, cand *scratch)
{
    if (temperature <= 0) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        return best;
    }
    for (int v = 0; v < V; v++)
        scratch[v] = (cand){logits[v], v};
    qsort(scratch, (size_t)V, sizeof *scratch, cmp_cand);
    int k = top_k > 0 && top_k < V ? top_k : V;
    double mx = scratch[0].logit, z = 0;
    double *pr = prefopt_xmalloc(sizeof(double) * (size_t)k, "sampling");
    for (int i = 0; i < k; i++)
        z += pr[i] = exp((scratch[i].logit - mx) / temperature);
    /* nucleus: the smallest prefix of the sorted distribution with mass >= top_p */
    if (top_p > 0 && top_p < 1) {
        double acc = 0;
        int keep = k;
        for (int i = 0; i < k; i++) {
            acc += pr[i] / z;
            if (acc >= top_p) {
                keep = i + 1;
                break;
            }
        }
        k = keep;
        z = 0;
        for (int i = 0; i < k; i++)
            z += pr[i];
    }
    double r = u * z, acc = 0;
    int id = scratch[k - 1].id;
    for (int i = 0; i < k; i++) {
        acc += pr[i];
        if (r < acc) {
            id = scratch[i].id;
            break;
        }
    }
    free(pr);
    return id;
}

/* Rows = samples, prompt then generated tokens, right-padded; one branch (seg 0), no units unless score. */
typedef struct {
    prefopt_batch b;
    int32_t *tok, *pos, *parent, *unit;
    int8_t *seg;
    uint8_t *comp;
} rows;

static void build_rows(rows *r, sample **s, int n, int pad, int score)
{
    int T = 1;
    for (int i = 0; i < n; i++)
        T = s[i]->n > T ? s[i]->n : T;
    T = (T + 7) / 8 * 8;
    size_t N = (size_t)n * (size_t)T;
    r->tok = prefopt_xmalloc(N * 4, "batch");
    r->pos = prefopt_xmalloc(N * 4, "batch");
    r->parent = prefopt_xmalloc(N * 4, "batch");
    r->unit = prefopt_xmalloc(N * 4, "batch");
    r->seg = prefopt_xmalloc(N, "batch");
    r->comp = prefopt_xmalloc(N, "batch");
    for (int i = 0; i < n; i++)
        for (int j = 0; j < T; j++) {
            size_t k = (size_t)i * T + j;
            int real = j < s[i]->n;
            r->tok[k] = real ? s[i]->ids[j] : pad;
            r->pos[k] = real ? j : 0;
            r->seg[k] = real ? 0 : -1;
            r->parent[k] = real && j > 0 ? j - 1 : -1;
            r->unit[k] = real && j > 0 && score ? i : -1;
            r->comp[k] = real && j >= s[i]->nprompt && score;
        }
    r->b = (prefopt_batch){n, T, score ? n : 0, r->tok, r->pos, r->seg, r->parent, r->unit, r->comp};
}

static void free_rows(rows *r)
{
    free(r->tok), free(r->pos), free(r->parent), free(r->unit), free(r->seg), free(r->comp);
}

static int is_stop(const int *stop, int n, int id)
{
    for (int i = 0; i < n; i++)
        if (stop[i] == id)
            return 1;
    return 0;
}

static int read_prompts(const char *path, const prefopt_tokenizer *tk, const prefopt_chat_template *chat,
                        int add_bos, sample **out, int *nout, prefopt_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open prompts file", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int n = 0, ncap = 0, lineno = 0;
    sample *s = NULL;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (prefopt_jsonl_check_nul(line, (size_t)len, path, lineno, err)) /* before the blank test: NUL ends it */
            break;
        if (line[strspn(line, " \t\r\n")] == '\0')
            continue;
        cJSON *o = cJSON_Parse(line);
        if (o && prefopt_jsonl_check_keys(o, path, lineno, err)) {
            cJSON_Delete(o);
            break;
        }
        const cJSON *pt = o ? cJSON_GetObjectItemCaseSensitive(o, "prompt") : NULL;
        const cJSON *pi = o ? cJSON_GetObjectItemCaseSensitive(o, "prompt_ids") : NULL;
        const cJSON *pm = o ? cJSON_GetObjectItemCaseSensitive(o, "messages") : NULL;
        if (!cJSON_IsArray(pm))
            pm = NULL;
        if (!o || (!cJSON_IsString(pt) && !cJSON_IsArray(pi) && !pm)) {
            prefopt_err_set(err, "%s:%d: expected a JSON object with \"prompt\" (text), \"prompt_ids\" or \"messages\"",
                            path, lineno);
            cJSON_Delete(o);
            break;
        }
        if (pm && !cJSON_IsString(pt) && !chat) {
            prefopt_err_set(err, "%s:%d: field 'messages': chat prompts need --chat-template (a .jinja file or the "
                                 "model's tokenizer_config.json)",
                            path, lineno);
            cJSON_Delete(o);
            break;
        }
        if (n == ncap) {
            ncap = ncap ? 2 * ncap : 64;
            s = realloc(s, sizeof *s * (size_t)ncap);
            if (!s)
                prefopt_die("out of memory reading prompts");
        }
        sample *x = &s[n];
        memset(x, 0, sizeof *x);
        x->index = n;
        size_t nid = 0, icap = 0;
        int32_t *ids = NULL;
        if (add_bos && prefopt_tokenizer_bos(tk) >= 0) {
            ids = prefopt_xmalloc(sizeof *ids * 16, "prompt ids");
            icap = 16;
            ids[nid++] = prefopt_tokenizer_bos(tk);
        }
        if (pm && !cJSON_IsString(pt)) { /* chat: the template's rendering with the generation prompt, as TRL */
            char *text = NULL;
            size_t tl = 0;
            prefopt_err e = {0};
            if (prefopt_chat_template_render(chat, pm, 1, NULL, &text, &tl, NULL, NULL, &e)) {
                prefopt_err_set(err, "%s:%d: field 'messages': %s", path, lineno, e.msg);
                cJSON_Delete(o);
                break;
            }
            x->prompt = text;
            if (prefopt_tokenizer_encode(tk, text, tl, 1, &ids, &nid, &icap, err)) {
                cJSON_Delete(o);
                break;
            }
        } else if (cJSON_IsString(pt)) {
            x->prompt = strdup(pt->valuestring);
            if (prefopt_tokenizer_encode(tk, pt->valuestring, strlen(pt->valuestring), 0, &ids, &nid, &icap, err)) {
                cJSON_Delete(o);
                break;
            }
        } else {
            const cJSON *it;
            cJSON_ArrayForEach(it, pi)
            {
                if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= prefopt_tokenizer_vocab_size(tk)) {
                    prefopt_err_set(err, "%s:%d: field 'prompt_ids': not a token id of the vocabulary", path, lineno);
                    break;
                }
                if (nid == icap) {
                    icap = icap ? 2 * icap : 64;
                    ids = realloc(ids, sizeof *ids * icap);
                }
                ids[nid++] = it->valueint;
            }
            if (err->set) {
                cJSON_Delete(o);
                break;
            }
            x->prompt = prefopt_tokenizer_decode(tk, ids, nid, 0, err);
        }
        cJSON_Delete(o);
        if (nid == 0) {
            prefopt_err_set(err, "%s:%d: empty prompt", path, lineno);
            break;
        }
        x->ids = ids;
        x->n = x->nprompt = (int)nid;
        x->cap = (int)icap;
        n++;
    }
    free(line);
    fclose(f);
    *out = s;
    *nout = n;
    return err->set ? -1 : 0;
}

/* Prompts from a packed dataset (any kind: field 0 is the prompt), every example in file order, index = example.
 * Collective over comm; the file is validated against the model's vocabulary and tokenizer like training data. */
static int read_prompts_dataset(const char *path, MPI_Comm comm, int vocab_size, const char *tokenizer_identity,
                                const prefopt_tokenizer *tk, sample **out, int *nout, prefopt_err *err)
{
    prefopt_dataset *ds = NULL;
    prefopt_ds_expect ex = {vocab_size, tokenizer_identity, 0};
    if (prefopt_dataset_open(path, comm, &ex, &ds, err))
        return -1;
    const int64_t n = prefopt_dataset_info(ds)->num_examples;
    if (n > INT_MAX / 2) {
        prefopt_err_set(err, "%s: %lld examples: too many prompts for one generate run", path, (long long)n);
        prefopt_dataset_close(ds);
        return -1;
    }
    int64_t *idx = prefopt_xmalloc(sizeof *idx * (size_t)(n ? n : 1), "prompt indices");
    for (int64_t i = 0; i < n; i++)
        idx[i] = i;
    int32_t *tok[PREFOPT_DS_MAX_FIELDS] = {0};
    int64_t *start[PREFOPT_DS_MAX_FIELDS] = {0};
    int rc = prefopt_dataset_read(ds, idx, (int)n, tok, start, err);
    prefopt_dataset_close(ds);
    free(idx);
    sample *smp = prefopt_xcalloc((size_t)(n ? n : 1), sizeof *smp, "prompts");
    for (int64_t i = 0; i < n && !rc; i++) {
        int len = (int)(start[0][i + 1] - start[0][i]);
        if (len == 0) {
            prefopt_err_set(err, "%s: example %lld has an empty prompt (plain-text data has no prompts)", path,
                            (long long)i);
            rc = -1;
            break;
        }
        sample *x = &smp[i];
        x->index = (int)i;
        x->cap = len;
        x->ids = prefopt_xmalloc(sizeof *x->ids * (size_t)len, "prompt ids");
        memcpy(x->ids, tok[0] + start[0][i], sizeof *x->ids * (size_t)len);
        x->n = x->nprompt = len;
        x->prompt = prefopt_tokenizer_decode(tk, x->ids, (size_t)len, 0, err);
        if (!x->prompt)
            rc = -1;
    }
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        free(tok[f]), free(start[f]);
    *out = smp;
    *nout = (int)n;
    return rc;
}

int prefopt_generate_run(const prefopt_generate_params *p)
{
    const char *model_path = p->model_path, *ref_path = p->ref_path, *prompts_path = p->prompts_path,
               *out_path = p->out_path;
    const int grid_rows = p->grid_rows, grid_cols = p->grid_cols, dp = p->dp, max_new = p->max_new_tokens,
              top_k = p->top_k, batch = p->batch_size, add_bos = p->add_bos, skip_special = p->skip_special;
    const double temperature = p->temperature, top_p = p->top_p;
    const long seed = p->seed;
    prefopt_err err = {0};
    int world;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    int tp = grid_rows * grid_cols;
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, grid_rows, grid_cols, dp > 0 ? dp : (tp > 0 ? world / tp : 0), &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_precision_setup(&p->prec, &g, &err);
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_banner(stderr, &g);

    prefopt_model_config cfg;
    prefopt_tokenizer_record rec = {0};
    prefopt_tokenizer *tk = NULL;
    /* one rank opens the file, the rest get its config and tokenizer by broadcast (issue 17) */
    if (!prefopt_model_file_read_header(model_path, g.world, &cfg, &rec, &err)) {
        if (!rec.json)
            tk = prefopt_tokenizer_byte();
        else {
            /* the tokenizer travels inside the model file; the loader reads files, so stage it in one */
            char tmp[] = "/tmp/prefopt-tokenizer-XXXXXX";
            int fd = mkstemp(tmp);
            if (fd < 0 || write(fd, rec.json, rec.len) != (ssize_t)rec.len)
                prefopt_err_set(&err, "cannot stage the tokenizer of %s in /tmp", model_path);
            if (fd >= 0)
                close(fd);
            if (!err.set)
                prefopt_tokenizer_load(tmp, &tk, &err);
            unlink(tmp);
        }
    }
    /* the chat template for "messages" prompts, and every id that ends a completion */
    prefopt_chat_template *chat = NULL;
    if (!err.set && p->chat_template && *p->chat_template) {
        struct stat sb;
        if (!stat(p->chat_template, &sb) && S_ISDIR(sb.st_mode))
            prefopt_chat_template_load(p->chat_template, NULL, &chat, &err);
        else
            prefopt_chat_template_load_file(p->chat_template, NULL, &chat, &err);
        if (!err.set && !chat)
            prefopt_err_set(&err, "--chat-template %s: no chat template there", p->chat_template);
    } else if (!err.set && (rec.side[PREFOPT_TOK_CONFIG] || rec.side[PREFOPT_TOK_CHAT_JINJA])) {
        /* the template imported with the model (tokenizer_config.json / chat_template.jinja in the model file) */
        char tdir[] = "/tmp/prefopt-chat-XXXXXX";
        if (!mkdtemp(tdir)) {
            prefopt_err_set(&err, "cannot stage the chat template of %s in /tmp", model_path);
        } else {
            for (int i = PREFOPT_TOK_CONFIG; i <= PREFOPT_TOK_CHAT_JINJA; i++)
                if (rec.side[i] && i != PREFOPT_TOK_SPECIAL_MAP) {
                    char fp[256];
                    snprintf(fp, sizeof fp, "%s/%s", tdir, prefopt_tokenizer_side_names[i]);
                    FILE *tf = fopen(fp, "wb");
                    if (!tf || fwrite(rec.side[i], 1, rec.side_len[i], tf) != rec.side_len[i])
                        prefopt_err_set(&err, "cannot stage %s in /tmp", prefopt_tokenizer_side_names[i]);
                    if (tf)
                        fclose(tf);
                }
            if (!err.set)
                prefopt_chat_template_load(tdir, NULL, &chat, &err);
            for (int i = PREFOPT_TOK_CONFIG; i <= PREFOPT_TOK_CHAT_JINJA; i++) {
                char fp[256];
                snprintf(fp, sizeof fp, "%s/%s", tdir, prefopt_tokenizer_side_names[i]);
                unlink(fp);
            }
            rmdir(tdir);
        }
    }
    int stop[64], nstop = 0;
    if (!err.set && tk && prefopt_tokenizer_eos(tk) >= 0)
        stop[nstop++] = prefopt_tokenizer_eos(tk);
    if (!err.set && chat) {
        const cJSON *et = cJSON_GetObjectItemCaseSensitive(prefopt_chat_template_vars(chat), "eos_token");
        int id = cJSON_IsString(et) ? prefopt_tokenizer_token_id(tk, et->valuestring) : -1;
        if (id >= 0)
            stop[nstop++] = id;
    }
    if (!err.set && rec.side[PREFOPT_TOK_GENERATION]) { /* generation_config.json: eos_token_id, one or a list */
        cJSON *gc = cJSON_Parse(rec.side[PREFOPT_TOK_GENERATION]);
        const cJSON *e = gc ? cJSON_GetObjectItemCaseSensitive(gc, "eos_token_id") : NULL;
        if (cJSON_IsNumber(e) && nstop < 64)
            stop[nstop++] = e->valueint;
        const cJSON *x;
        if (cJSON_IsArray(e))
            cJSON_ArrayForEach(x, e) if (cJSON_IsNumber(x) && nstop < 64) stop[nstop++] = x->valueint;
        cJSON_Delete(gc);
    }
    for (const char *q = p->stop_ids ? p->stop_ids : ""; !err.set && *q;) {
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || v < 0 || v >= cfg.vocab_size || (*end && *end != ',')) {
            prefopt_err_set(&err, "--stop-ids '%s': expected comma-separated token ids below the model's vocabulary "
                                  "size %d",
                            p->stop_ids, cfg.vocab_size);
            break;
        }
        if (nstop < 64)
            stop[nstop++] = (int)v;
        q = *end ? end + 1 : end;
    }
    sample *s = NULL;
    int ns = 0;
    /* a packed dataset (.h5) is read collectively, so every rank must take part even after a local error */
    size_t plen = strlen(prompts_path);
    int from_dataset = plen > 3 && (!strcmp(prompts_path + plen - 3, ".h5") ||
                                    (plen > 5 && !strcmp(prompts_path + plen - 5, ".hdf5")));
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    if (from_dataset)
        read_prompts_dataset(prompts_path, g.world, cfg.vocab_size, rec.identity, tk, &s, &ns, &err);
    else
        read_prompts(prompts_path, tk, chat, add_bos, &s, &ns, &err);
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    /* a prompt that fills the model's context leaves no room for a token: refused (it gave 0 tokens, exit 0);
     * one that leaves less room than --max-new-tokens is generated up to the context, and said so */
    int cut = 0;
    for (int i = 0; i < ns && !err.set; i++) {
        if (s[i].nprompt >= cfg.max_position)
            prefopt_err_set(&err, "%s: prompt %lld has %d tokens, the model's context is %d positions: no room for "
                                  "a new token (shorten the prompt)",
                            prompts_path, (long long)s[i].index, s[i].nprompt, cfg.max_position);
        cut += s[i].nprompt + p->max_new_tokens > cfg.max_position;
    }
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    if (cut && g.world_rank == 0)
        fprintf(stderr, "prefopt: warning: %d of %d prompts leave less room than --max-new-tokens %d in the model's "
                        "context of %d positions: their completions stop at the context's end\n",
                cut, ns, p->max_new_tokens, cfg.max_position);

    prefopt_model_options mo = {0, 0, 0, 0, 0, prefopt_precision_is_bf16()};
    prefopt_model *m = prefopt_model_create(&cfg, &g, &mo, &err), *ref = NULL;
    if (m)
        prefopt_model_file_load(m, model_path, &err);
    if (!err.set && *ref_path) {
        ref = prefopt_model_create(&cfg, &g, &mo, &err);
        if (ref)
            prefopt_model_file_load(ref, ref_path, &err);
    }
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    prefopt_model_keep_bf16_only(m); /* bf16: the frozen weights as bf16 copies only (no-op in fp32) */
    if (ref)
        prefopt_model_keep_bf16_only(ref);

    const int V = cfg.vocab_size;
    int pad = prefopt_tokenizer_pad(tk);
    pad = pad >= 0 ? pad : 0;
    /* this replica's prompts, in batches; every replica runs the same number of batches (collectives inside) */
    int mine = 0;
    sample **my = prefopt_xmalloc(sizeof *my * (size_t)(ns + 1), "samples");
    for (int i = g.dp_rank; i < ns; i += g.dp_size)
        my[mine++] = &s[i];
    int nb = (mine + batch - 1) / batch, nbmax = 0;
    MPI_Allreduce(&nb, &nbmax, 1, MPI_INT, MPI_MAX, g.dp);
    float *logits = prefopt_xmalloc(sizeof(float) * (size_t)batch * V, "logits");
    cand *scratch = prefopt_xmalloc(sizeof(cand) * (size_t)V, "sampling");
    double t0 = prefopt_now();
    long generated = 0;
    for (int bi = 0; bi < nbmax; bi++) {
        prefopt_trace_step(bi + 1); /* a batch of prompts is a step of the trace */
        prefopt_region_enter("step");
        int lo = bi * batch, n = lo < mine ? (mine - lo < batch ? mine - lo : batch) : 0;
        sample **bs = my + lo;
        /* KV-cache decoding: the prompts in one step, then one token per row per step */
        int maxp = 1;
        for (int i = 0; i < n; i++)
            maxp = bs[i]->nprompt > maxp ? bs[i]->nprompt : maxp;
        int max_len = maxp + max_new < cfg.max_position ? maxp + max_new : cfg.max_position;
        int32_t *feed = prefopt_xmalloc(sizeof(int32_t) * (size_t)(batch * (maxp + 1)), "decode input");
        int32_t *nfeed = prefopt_xmalloc(sizeof(int32_t) * (size_t)(batch + 1), "decode input");
        if (prefopt_model_decode_begin(m, n > 0 ? n : 1, max_len, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        for (int step = 0; step <= max_new; step++) {
            int active = 0, width = step == 0 ? maxp : 1;
            for (int i = 0; i < n; i++) {
                sample *x = bs[i];
                int go = !x->done && x->n < max_len;
                nfeed[i] = go ? (step == 0 ? x->n : 1) : 0;
                for (int j = 0; j < nfeed[i]; j++)
                    feed[(size_t)i * width + j] = x->ids[x->n - nfeed[i] + j];
                active += go;
            }
            /* every replica's grid runs the same number of steps only within itself: stop together */
            if (!active)
                break;
            prefopt_region_enter("decode");
            int dbad = prefopt_model_decode_step(m, feed, nfeed, width, logits, &err);
            prefopt_region_exit("decode");
            if (dbad)
                prefopt_exit_error(&err, PREFOPT_EXIT_ERROR); /* agreed on the grid by the engine */
            if (step == max_new)
                break;
            for (int i = 0; i < n; i++) {
                sample *x = bs[i];
                if (!nfeed[i])
                    continue;
                int id = pick(logits + (size_t)i * V, V, temperature, top_k, top_p,
                              uniform((uint64_t)seed, x->index, x->n), scratch);
                if (x->n == x->cap) {
                    x->cap = x->cap ? 2 * x->cap : 64;
                    x->ids = realloc(x->ids, sizeof *x->ids * (size_t)x->cap);
                    if (!x->ids)
                        prefopt_die("out of memory generating");
                }
                x->ids[x->n++] = id;
                generated++;
                if (is_stop(stop, nstop, id) || x->n >= max_len)
                    x->done = 1;
            }
        }
        free(feed);
        free(nfeed);
        if (ref && n > 0) {
            rows r;
            build_rows(&r, bs, n, pad, 1);
            prefopt_unit_stats a, b;
            prefopt_unit_stats_alloc(&a, n);
            prefopt_unit_stats_alloc(&b, n);
            if (prefopt_model_forward(m, &r.b, &a, &err) || prefopt_model_forward(ref, &r.b, &b, &err))
                prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
            for (int i = 0; i < n; i++) {
                bs[i]->logp_pol = a.logp_completion[i];
                bs[i]->logp_ref = b.logp_completion[i];
            }
            prefopt_unit_stats_free(&a);
            prefopt_unit_stats_free(&b);
            free_rows(&r);
        }
        prefopt_region_exit("step");
    }
    double dt = prefopt_now() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &generated, 1, MPI_LONG, MPI_SUM, g.dp);

    /* gather every sample's generated ids and scores at world rank 0 (tp rank 0 of each replica sends) */
    int send_n = g.tp_rank == 0 ? mine : 0;
    int *counts = prefopt_xcalloc((size_t)world, sizeof(int), "counts");
    MPI_Gather(&send_n, 1, MPI_INT, counts, 1, MPI_INT, 0, g.world);
    long *hdr = prefopt_xmalloc(sizeof(long) * 2 * (size_t)(send_n + 1), "gather");
    double *sc = prefopt_xmalloc(sizeof(double) * 2 * (size_t)(send_n + 1), "gather");
    int nid = 0;
    for (int i = 0; i < send_n; i++) {
        hdr[2 * i] = (long)my[i]->index;
        hdr[2 * i + 1] = my[i]->n - my[i]->nprompt;
        sc[2 * i] = my[i]->logp_pol;
        sc[2 * i + 1] = my[i]->logp_ref;
        nid += my[i]->n - my[i]->nprompt;
    }
    int32_t *ids = prefopt_xmalloc(sizeof(int32_t) * (size_t)(nid + 1), "gather");
    for (int i = 0, k = 0; i < send_n; i++)
        for (int j = my[i]->nprompt; j < my[i]->n; j++)
            ids[k++] = my[i]->ids[j];
    int total = 0;
    if (g.world_rank == 0)
        for (int r = 0; r < world; r++)
            total += counts[r];
    int *idcounts = prefopt_xcalloc((size_t)world, sizeof(int), "counts");
    MPI_Gather(&nid, 1, MPI_INT, idcounts, 1, MPI_INT, 0, g.world);
    int *d1 = prefopt_xcalloc((size_t)world, sizeof(int), "displs"), *d2 = prefopt_xcalloc((size_t)world, sizeof(int), "d");
    int *c2 = prefopt_xcalloc((size_t)world, sizeof(int), "counts");
    long *all_hdr = NULL;
    double *all_sc = NULL;
    int32_t *all_ids = NULL;
    int idtotal = 0;
    if (g.world_rank == 0) {
        for (int r = 0, a = 0, b = 0; r < world; r++) {
            c2[r] = 2 * counts[r];
            d1[r] = a;
            d2[r] = b;
            a += c2[r];
            b += idcounts[r];
            idtotal = b;
        }
        all_hdr = prefopt_xmalloc(sizeof(long) * 2 * (size_t)(total + 1), "gather");
        all_sc = prefopt_xmalloc(sizeof(double) * 2 * (size_t)(total + 1), "gather");
        all_ids = prefopt_xmalloc(sizeof(int32_t) * (size_t)(idtotal + 1), "gather");
    }
    MPI_Gatherv(hdr, 2 * send_n, MPI_LONG, all_hdr, c2, d1, MPI_LONG, 0, g.world);
    MPI_Gatherv(sc, 2 * send_n, MPI_DOUBLE, all_sc, c2, d1, MPI_DOUBLE, 0, g.world);
    MPI_Gatherv(ids, nid, MPI_INT32_T, all_ids, idcounts, d2, MPI_INT32_T, 0, g.world);

    if (g.world_rank == 0) {
        /* results in prompt order */
        int64_t *where = prefopt_xmalloc(sizeof(int64_t) * (size_t)(ns + 1), "order");
        int *len = prefopt_xmalloc(sizeof(int) * (size_t)(ns + 1), "order");
        for (int i = 0, off = 0; i < total; i++) {
            where[all_hdr[2 * i]] = off;
            len[all_hdr[2 * i]] = (int)all_hdr[2 * i + 1];
            s[all_hdr[2 * i]].logp_pol = all_sc[2 * i];
            s[all_hdr[2 * i]].logp_ref = all_sc[2 * i + 1];
            off += (int)all_hdr[2 * i + 1];
        }
        size_t cap = 1 << 16, used = 0;
        char *buf = prefopt_xmalloc(cap, "output");
        double kl = 0;
        for (int i = 0; i < ns && !err.set; i++) {
            const int32_t *gid = all_ids + where[i];
            int glen = len[i];
            int text_len = glen;
            if (skip_special && glen > 0 && is_stop(stop, nstop, gid[glen - 1]))
                text_len--;
            char *raw = prefopt_tokenizer_decode(tk, gid, (size_t)text_len, skip_special, &err);
            /* the model may emit bytes that are no UTF-8: the JSON text is valid whatever it emits (U+FFFD, as
             * Hugging Face decodes), the ids stay exact */
            size_t rep = 0, rep_p = 0;
            char *text = prefopt_utf8_sanitize(raw ? raw : "", &rep);
            char *ptext = prefopt_utf8_sanitize(s[i].prompt ? s[i].prompt : "", &rep_p);
            free(raw);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "index", i);
            cJSON_AddStringToObject(o, "prompt", ptext);
            cJSON_AddStringToObject(o, "completion", text);
            free(ptext);
            cJSON *arr = cJSON_AddArrayToObject(o, "ids");
            for (int j = 0; j < glen; j++)
                cJSON_AddItemToArray(arr, cJSON_CreateNumber(gid[j]));
            cJSON_AddBoolToObject(o, "stopped_at_eos", glen > 0 && is_stop(stop, nstop, gid[glen - 1]));
            if (ref) {
                cJSON_AddNumberToObject(o, "logp", s[i].logp_pol);
                cJSON_AddNumberToObject(o, "ref_logp", s[i].logp_ref);
                kl += s[i].logp_pol - s[i].logp_ref;
            }
            char *line = cJSON_PrintUnformatted(o);
            size_t l = strlen(line);
            if (used + l + 2 > cap) {
                while (used + l + 2 > cap)
                    cap *= 2;
                buf = realloc(buf, cap);
                if (!buf)
                    prefopt_die("out of memory writing generations");
            }
            memcpy(buf + used, line, l);
            used += l;
            buf[used++] = '\n';
            free(line);
            free(text);
            cJSON_Delete(o);
        }
        if (!err.set)
            prefopt_write_atomic(out_path, buf, used, &err);
        free(buf);
        if (!err.set) {
            fprintf(stderr, "generate: %d prompts, %ld tokens in %.2f s (%.1f tok/s) -> %s", ns, generated, dt,
                    dt > 0 ? (double)generated / dt : 0.0, out_path);
            if (ref)
                fprintf(stderr, " | KL(policy||ref) estimate %.4f nats per sample", ns ? kl / ns : 0.0);
            fprintf(stderr, "\n");
        }
        free(where), free(len);
    }
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    free(all_hdr), free(all_sc), free(all_ids), free(hdr), free(sc), free(ids), free(counts), free(idcounts);
    free(d1), free(d2), free(c2), free(logits), free(scratch), free(my);
    for (int i = 0; i < ns; i++)
        free(s[i].ids), free(s[i].prompt);
    free(s);
    prefopt_model_free(m);
    if (ref)
        prefopt_model_free(ref);
    prefopt_tokenizer_free(tk);
    prefopt_chat_template_free(chat);
    prefopt_tokenizer_record_free(&rec);
    prefopt_grid_free(&g);
    return 0;
}
