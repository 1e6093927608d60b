/* prefopt import: a Hugging Face directory (config.json, safetensors, tokenizer.json) -> a prefopt model file.
 * Every rank validates the whole mapping from the headers (cheap, identical everywhere) before anything is written;
 * then the HF tensors are dealt round-robin over the ranks, each read, converted to fp32, transposed or split as
 * the mapping says and written independently into its slot of the (stacked) datasets: memory stays at about two
 * tensors per rank. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* JOB_SPLIT_ROWS: Phi-3's fused qkv_proj / gate_up_proj, [q; k; v] or [gate; up] rows, cut into its parts */
enum { JOB_COPY, JOB_TRANSPOSE, JOB_SPLIT3_T, JOB_SPLIT3, JOB_SPLIT_ROWS };

typedef struct {
    const prefopt_st_tensor *src;
    int kind;
    int out[3]; /* spec indices */
    int nout;
} job;

static int spec_index(const prefopt_tensor_spec *specs, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(specs[i].name, name))
            return i;
    return -1;
}

static int ignored(const prefopt_model_config *cfg, const char *name)
{
    size_t n = strlen(name);
#define ENDS(s) (n >= strlen(s) && !strcmp(name + n - strlen(s), s))
    if (cfg->arch == PREFOPT_ARCH_GPT2)
        return ENDS(".attn.bias") || ENDS(".attn.masked_bias") || !strcmp(name, "lm_head.weight");
    return ENDS(".rotary_emb.inv_freq") || (cfg->tie_word_embeddings && !strcmp(name, "lm_head.weight"));
#undef ENDS
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

/* HF name -> prefopt name and conversion; returns 0 if the name is not part of the mapping. */
static int map_name(const prefopt_model_config *cfg, const char *hf, char *out, size_t len, int *kind)
{
    *kind = JOB_COPY;
    if (cfg->arch == PREFOPT_ARCH_GPT2) {
        const char *s = !strncmp(hf, "transformer.", 12) ? hf + 12 : hf;
        if (!strcmp(s, "wte.weight") || !strcmp(s, "wpe.weight")) {
            snprintf(out, len, "%.3s", s);
            return 1;
        }
        int l, k = 0;
        if (sscanf(s, "h.%d.%n", &l, &k) == 1 && k > 0) {
            const char *r = s + k;
            if (!strcmp(r, "attn.c_attn.weight") || !strcmp(r, "attn.c_attn.bias")) {
                *kind = r[12] == 'w' ? JOB_SPLIT3_T : JOB_SPLIT3;
                snprintf(out, len, "h.%d.attn.c_attn", l);
                return 1;
            }
            if (!strcmp(r, "attn.c_proj.weight") || !strcmp(r, "mlp.c_fc.weight") || !strcmp(r, "mlp.c_proj.weight"))
                *kind = JOB_TRANSPOSE;
        }
        snprintf(out, len, "%s", s);
        return 1;
    }
    if (!strcmp(hf, "model.embed_tokens.weight")) {
        snprintf(out, len, "embed_tokens");
        return 1;
    }
    if (!strcmp(hf, "lm_head.weight")) {
        snprintf(out, len, "lm_head.weight");
        return 1;
    }
    if (!strncmp(hf, "model.", 6)) {
        snprintf(out, len, "%s", hf + 6);
        if (cfg->fused_qkv &&
            (ends_with(out, ".self_attn.qkv_proj.weight") || ends_with(out, ".mlp.gate_up_proj.weight")))
            *kind = JOB_SPLIT_ROWS;
        return 1;
    }
    return 0;
}

static void shape_text(char *b, size_t len, int ndim, const int64_t *s)
{
    size_t o = (size_t)snprintf(b, len, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(b + o, len - o, "%s%lld", d ? "," : "", (long long)s[d]);
    if (o < len)
        snprintf(b + o, len - o, "]");
}

static int check_shape(const prefopt_st_set *set, const prefopt_st_tensor *t, int ndim, int64_t a, int64_t b,
                       prefopt_err *err)
{
    int64_t want[2] = {a, b};
    if (t->ndim == ndim && t->shape[0] == a && (ndim == 1 || t->shape[1] == b))
        return 0;
    char have[96], exp[96];
    shape_text(have, sizeof have, t->ndim, t->shape);
    shape_text(exp, sizeof exp, ndim, want);
    prefopt_err_set(err, "%s: tensor '%s': shape %s expected %s", set->labels[t->file], t->name, have, exp);
    return 1;
}

static int build_jobs(const prefopt_model_config *cfg, const prefopt_st_set *set, const prefopt_tensor_spec *specs,
                      int ns, job **out, int *njobs, prefopt_err *err)
{
    job *jobs = prefopt_xcalloc((size_t)set->ntensors + 1, sizeof *jobs, "import jobs");
    int *covered = prefopt_xcalloc((size_t)ns + 1, sizeof *covered, "coverage");
    int nj = 0, rc = 0;
    for (int i = 0; i < set->ntensors && !rc; i++) {
        const prefopt_st_tensor *t = &set->t[i];
        if (ignored(cfg, t->name))
            continue;
        char name[160];
        int kind;
        if (!map_name(cfg, t->name, name, sizeof name, &kind)) {
            prefopt_err_set(err, "%s: tensor '%s' is not part of a %s model", set->labels[t->file], t->name,
                            cfg->hf_model_type);
            rc = 1;
            break;
        }
        job *j = &jobs[nj];
        j->src = t;
        j->kind = kind;
        if (kind == JOB_SPLIT3_T || kind == JOB_SPLIT3) {
            const char *qkv[3] = {"q_proj", "k_proj", "v_proj"};
            int l = atoi(name + 2);
            for (int k = 0; k < 3; k++) {
                char n2[160];
                snprintf(n2, sizeof n2, "h.%d.attn.%s.%s", l, qkv[k], kind == JOB_SPLIT3_T ? "weight" : "bias");
                j->out[k] = spec_index(specs, ns, n2);
            }
            j->nout = 3;
        } else if (kind == JOB_SPLIT_ROWS) {
            int l = atoi(name + 7), qkv = strstr(name, "qkv_proj") != NULL;
            const char *part[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
            const char *mlp[2] = {"mlp.gate_proj", "mlp.up_proj"};
            j->nout = qkv ? 3 : 2;
            for (int k = 0; k < j->nout; k++) {
                char n2[160];
                snprintf(n2, sizeof n2, "layers.%d.%s.weight", l, qkv ? part[k] : mlp[k]);
                j->out[k] = spec_index(specs, ns, n2);
            }
        } else {
            j->out[0] = spec_index(specs, ns, name);
            j->nout = 1;
        }
        for (int k = 0; k < j->nout; k++)
            if (j->out[k] < 0) {
                prefopt_err_set(err, "%s: tensor '%s' is not part of this %s model (config.json says %d layers%s)",
                                set->labels[t->file], t->name, cfg->hf_model_type, cfg->num_layers,
                                cfg->arch == PREFOPT_ARCH_LLAMA && !cfg->qkv_bias && strstr(t->name, "bias")
                                    ? ", no attention biases"
                                    : "");
                rc = 1;
                break;
            }
        if (rc)
            break;
        const prefopt_tensor_spec *s = &specs[j->out[0]];
        int64_t C = cfg->hidden_size;
        if (kind == JOB_COPY)
            rc = check_shape(set, t, s->ndim, s->shape[0], s->shape[1], err);
        else if (kind == JOB_TRANSPOSE)
            rc = check_shape(set, t, 2, s->shape[1], s->shape[0], err);
        else if (kind == JOB_SPLIT3_T)
            rc = check_shape(set, t, 2, C, 3 * C, err);
        else if (kind == JOB_SPLIT_ROWS) {
            int64_t rows = 0;
            for (int k = 0; k < j->nout; k++)
                rows += specs[j->out[k]].shape[0];
            rc = check_shape(set, t, 2, rows, C, err);
        }
        else
            rc = check_shape(set, t, 1, 3 * C, 0, err);
        for (int k = 0; k < j->nout && !rc; k++) {
            if (covered[j->out[k]]) {
                prefopt_err_set(err, "%s: tensor '%s' given twice", set->labels[t->file], t->name);
                rc = 1;
            }
            covered[j->out[k]] = 1;
        }
        nj++;
    }
    for (int i = 0; i < ns && !rc; i++)
        if (!covered[i]) {
            prefopt_err_set(err, "%s: tensor for '%s' missing", set->nfiles == 1 ? set->labels[0] : "safetensors shards",
                            specs[i].name);
            rc = 1;
        }
    free(covered);
    if (rc) {
        free(jobs);
        return 1;
    }
    *out = jobs;
    *njobs = nj;
    return 0;
}

static void transpose(const float *src, float *dst, int64_t rows, int64_t cols)
{
    /* dst[c][r] = src[r][c], in 64x64 tiles */
    for (int64_t r0 = 0; r0 < rows; r0 += 64)
        for (int64_t c0 = 0; c0 < cols; c0 += 64)
            for (int64_t r = r0; r < r0 + 64 && r < rows; r++)
                for (int64_t c = c0; c < c0 + 64 && c < cols; c++)
                    dst[c * rows + r] = src[r * cols + c];
}

static int run_job(hid_t f, const char *tmp, const prefopt_st_set *set, const job *j, const prefopt_tensor_spec *specs,
                   uint64_t *sums, prefopt_err *err)
{
    int64_t n = prefopt_st_numel(j->src);
    float *a = prefopt_xmalloc(sizeof(float) * (size_t)(n ? n : 1), j->src->name);
    if (prefopt_st_read_f32(set, j->src, a, err)) {
        free(a);
        return 1; /* bad input: the output file is still intact */
    }
    int rc = 0;
    if (j->kind == JOB_COPY)
        rc = ck_write_full(f, tmp, "model", &specs[j->out[0]], a, &sums[j->out[0]], err);
    else if (j->kind == JOB_SPLIT3)
        for (int k = 0; k < 3 && !rc; k++)
            rc = ck_write_full(f, tmp, "model", &specs[j->out[k]], a + k * (n / 3), &sums[j->out[k]], err);
    else if (j->kind == JOB_SPLIT_ROWS) /* row blocks of a row-major [out][in]: consecutive pieces */
        for (int64_t k = 0, off = 0; k < j->nout && !rc; k++) {
            rc = ck_write_full(f, tmp, "model", &specs[j->out[k]], a + off, &sums[j->out[k]], err);
            off += specs[j->out[k]].shape[0] * specs[j->out[k]].shape[1];
        }
    else {
        /* Conv1D [in][out] -> [out][in]; for c_attn the rows of the result are q, k, v in turn */
        float *b = prefopt_xmalloc(sizeof(float) * (size_t)n, "transpose");
        transpose(a, b, j->src->shape[0], j->src->shape[1]);
        for (int k = 0; k < j->nout && !rc; k++)
            rc = ck_write_full(f, tmp, "model", &specs[j->out[k]], b + k * (n / j->nout), &sums[j->out[k]], err);
        free(b);
    }
    free(a);
    return rc ? 2 : 0; /* 2: an HDF5 write failed (disk full?) */
}

/* config.json may list several eos ids (Llama-3.1: [128001, 128008, 128009]); the model config keeps the first,
 * so without a generation_config.json the list is kept as one (export writes it, generate stops at each) */
static void keep_eos_list(const char *dir, prefopt_tokenizer_record *tok)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "rb");
    if (!f)
        return;
    char *txt = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            txt = realloc(txt, cap);
            if (!txt) {
                fclose(f);
                return;
            }
        }
        size_t k = fread(txt + n, 1, 4096, f);
        n += k;
        if (!k)
            break;
    }
    fclose(f);
    txt[n] = '\0';
    cJSON *c = cJSON_Parse(txt);
    free(txt);
    const cJSON *e = c ? cJSON_GetObjectItemCaseSensitive(c, "eos_token_id") : NULL;
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) > 1) {
        cJSON *g = cJSON_CreateObject();
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(c, "bos_token_id");
        if (cJSON_IsNumber(b))
            cJSON_AddNumberToObject(g, "bos_token_id", b->valuedouble);
        cJSON_AddItemToObject(g, "eos_token_id", cJSON_Duplicate(e, 1));
        char *out = cJSON_Print(g);
        if (out) {
            size_t l = strlen(out);
            tok->side[PREFOPT_TOK_GENERATION] = prefopt_xmalloc(l + 2, "generation_config.json");
            memcpy(tok->side[PREFOPT_TOK_GENERATION], out, l);
            tok->side[PREFOPT_TOK_GENERATION][l] = '\n';
            tok->side[PREFOPT_TOK_GENERATION][l + 1] = '\0';
            tok->side_len[PREFOPT_TOK_GENERATION] = l + 1;
            free(out);
        }
        cJSON_Delete(g);
    }
    cJSON_Delete(c);
}

int prefopt_hf_import(const char *dir, const char *out_path, MPI_Comm comm, prefopt_err *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    char p[4200];
    prefopt_model_config cfg;
    prefopt_st_set *set = NULL;
    prefopt_tokenizer_record tok = {0};
    prefopt_tensor_spec *specs = NULL;
    job *jobs = NULL;
    int ns = 0, nj = 0;
    snprintf(p, sizeof p, "%s/config.json", dir);
    int rc = prefopt_hf_config_read(p, &cfg, err);
    if (!rc)
        rc = prefopt_st_open_dir(dir, &set, err);
    if (!rc) {
        ns = prefopt_model_tensor_specs(&cfg, &specs);
        rc = build_jobs(&cfg, set, specs, ns, &jobs, &nj, err);
    }
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    if (!rc && access(p, R_OK) == 0)
        rc = prefopt_tokenizer_record_load(p, &tok, err);
    if (!rc && tok.json && !tok.side[PREFOPT_TOK_GENERATION])
        keep_eos_list(dir, &tok);
    if (prefopt_agree(comm, err))
        goto out;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    hid_t f;
    ck_create(tmp, comm, &f, err);
    if (prefopt_agree(comm, err))
        goto out;
    rc = ck_write_config(f, "model", &cfg, &tok, comm, err);
    rc |= ck_create_datasets(f, tmp, "model", specs, ns, err);
    /* the structure is complete on every rank before any rank writes raw data independently */
    MPI_Barrier(comm);
    uint64_t *sums = prefopt_xcalloc((size_t)ns + 1, sizeof *sums, "checksums");
    for (int i = rank; i < nj && !rc; i += size)
        rc = run_job(f, tmp, set, &jobs[i], specs, sums, err);
    int write_failed = rc == 2, failed = rc;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, comm);
    if (!failed) {
        MPI_Allreduce(MPI_IN_PLACE, sums, ns, MPI_UINT64_T, MPI_SUM, comm);
        rc |= ck_write_checksums(f, tmp, "model", specs, ns, sums, err);
        int64_t one = 1;
        rc |= ck_attr_int64(f, "complete", &one, 1, 1);
    }
    free(sums);
    rc |= ck_close_agreed(f, tmp, comm, write_failed, err);
    if (failed && !err->set)
        prefopt_err_set(err, "%s: import failed on another rank", dir);
    if (prefopt_agree(comm, err)) {
        if (rank == 0)
            unlink(tmp);
        goto out;
    }
    if (rank == 0 && rename(tmp, out_path))
        prefopt_err_set(err, "%s: rename to %s failed", tmp, out_path);
    prefopt_agree(comm, err);
out:
    prefopt_tokenizer_record_free(&tok);
    free(jobs);
    free(specs);
    prefopt_st_free(set);
    return err->set;
}
