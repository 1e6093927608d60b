/* Pieces of the training driver that eval and bench share: unit statistics, from-scratch model configs,
 * optimizer ranges from the parameter registry, and the measured sgemm peak that MFU is reported against. */
#include "prefopt/train.h"

#include "prefopt/gemm_local.h"
#include "prefopt/precision.h"
#include "prefopt/opts.h"
#include "prefopt/tokenizer.h"

#include <blis.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void prefopt_unit_stats_alloc(prefopt_unit_stats *s, int n)
{
    double *a = prefopt_xcalloc((size_t)(n > 0 ? n : 1) * 6, sizeof(double), "unit statistics");
    s->logp_completion = a;
    s->logp_all = a + n;
    s->n_completion = a + 2 * n;
    s->n_all = a + 3 * n;
    s->logits_sum = a + 4 * n;
    s->argmax_hits = a + 5 * n;
}

void prefopt_unit_stats_free(prefopt_unit_stats *s)
{
    free(s->logp_completion);
    memset(s, 0, sizeof *s);
}

void prefopt_unit_counts(prefopt_unit_stats *s, const prefopt_batch *b)
{
    memset(s->n_completion, 0, sizeof(double) * (size_t)b->nunits);
    memset(s->n_all, 0, sizeof(double) * (size_t)b->nunits);
    for (size_t i = 0; i < (size_t)b->nrows * (size_t)b->T; i++) {
        int u = b->unit[i];
        if (u < 0 || b->parent[i] < 0)
            continue;
        s->n_all[u] += 1;
        if (b->completion[i])
            s->n_completion[u] += 1;
    }
}

int prefopt_arch_config(prefopt_model_config *cfg, const prefopt_arch_params *a, const prefopt_ds_info *ds,
                        prefopt_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    int gpt2 = !strcmp(a->arch, "gpt2"), llama = !strcmp(a->arch, "llama");
    if (!gpt2 && !llama) {
        prefopt_err_set(err, "--arch '%s' is not supported (gpt2 or llama)", a->arch);
        return -1;
    }
    if (a->n_layer < 1 || a->n_embd < 1 || a->n_head < 1 || a->n_embd % a->n_head) {
        prefopt_err_set(err, "--n-layer %d --n-embd %d --n-head %d: need n_layer, n_head >= 1 and n_embd divisible "
                             "by n_head", a->n_layer, a->n_embd, a->n_head);
        return -1;
    }
    int kv = a->n_kv_head > 0 ? a->n_kv_head : a->n_head;
    if (gpt2 && kv != a->n_head) {
        prefopt_err_set(err, "--n-kv-head %d: GPT-2 has no grouped-query attention (leave it 0)", a->n_kv_head);
        return -1;
    }
    if (a->n_head % kv) {
        prefopt_err_set(err, "--n-kv-head %d must divide --n-head %d", kv, a->n_head);
        return -1;
    }
    cfg->arch = gpt2 ? PREFOPT_ARCH_GPT2 : PREFOPT_ARCH_LLAMA;
    snprintf(cfg->hf_model_type, sizeof cfg->hf_model_type, "%s", gpt2 ? "gpt2" : "llama");
    cfg->vocab_size = ds->vocab_size;
    cfg->hidden_size = a->n_embd;
    cfg->num_layers = a->n_layer;
    cfg->num_heads = a->n_head;
    cfg->num_kv_heads = kv;
    cfg->head_dim = a->n_embd / a->n_head;
    /* Llama's default MLP width: 8/3 C rounded up to a multiple of 32, as in the Llama reference code. */
    cfg->intermediate_size = a->n_inner > 0 ? a->n_inner : gpt2 ? 4 * a->n_embd : ((8 * a->n_embd / 3 + 31) / 32) * 32;
    cfg->max_position = a->max_position;
    cfg->norm_eps = (float)(a->norm_eps > 0 ? a->norm_eps : gpt2 ? 1e-5 : 1e-6);
    cfg->rope_theta = (float)a->rope_theta;
    cfg->qkv_bias = gpt2;
    cfg->tie_word_embeddings = 1;
    cfg->bos_id = ds->bos_id;
    cfg->eos_id = ds->eos_id;
    cfg->pad_id = ds->pad_id;
    return 0;
}

int prefopt_train_tokenizer(const char *path, prefopt_tokenizer_record *rec, int *vocab, prefopt_err *err)
{
    char file[4200];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
    else
        snprintf(file, sizeof file, "%s", path);
    prefopt_tokenizer *tk = NULL;
    if (prefopt_tokenizer_load(file, &tk, err))
        return -1;
    *vocab = prefopt_tokenizer_vocab_size(tk);
    prefopt_tokenizer_free(tk);
    return prefopt_tokenizer_record_load(file, rec, err) ? -1 : 0;
}

int prefopt_train_batch_layout(prefopt_train_params *p, int dp, int *micro, prefopt_err *err)
{
    const int G = p->gradient_accumulation_steps;
    if (G < 0) {
        prefopt_err_set(err, "--gradient-accumulation-steps must be >= 0, got %d", G);
        return -1;
    }
    if (G > 0) {
        if (prefopt_opts_given(&p->micro_batch_size) && p->micro_batch_size > 0) {
            long global = (long)p->micro_batch_size * G * dp;
            if (global > 1L << 30) {
                prefopt_err_set(err, "--micro-batch-size %d x --gradient-accumulation-steps %d x %d replicas is too "
                                     "large", p->micro_batch_size, G, dp);
                return -1;
            }
            if (prefopt_opts_given(&p->batch_size) && p->batch_size != global) {
                prefopt_err_set(err, "--batch-size %d disagrees with --micro-batch-size (per_device_train_batch_size) "
                                     "%d x --gradient-accumulation-steps %d x %d replicas = %ld; give two of the three",
                                p->batch_size, p->micro_batch_size, G, dp, global);
                return -1;
            }
            p->batch_size = (int)global;
        } else {
            if (p->batch_size < 1 || p->batch_size % (G * dp)) {
                prefopt_err_set(err, "--batch-size %d is not divisible by --gradient-accumulation-steps %d x %d "
                                     "replicas (or give --micro-batch-size)", p->batch_size, G, dp);
                return -1;
            }
            p->micro_batch_size = p->batch_size / (G * dp);
        }
    }
    if (p->batch_size < 1 || p->batch_size % dp) {
        prefopt_err_set(err, "--batch-size %d is not divisible by the %d data-parallel replicas", p->batch_size, dp);
        return -1;
    }
    *micro = p->micro_batch_size > 0 ? p->micro_batch_size : p->batch_size / dp;
    if (*micro < 1) {
        prefopt_err_set(err, "--micro-batch-size must be >= 1");
        return -1;
    }
    return 0;
}

prefopt_param_range *prefopt_param_ranges(prefopt_model *m, int *n)
{
    int np = prefopt_model_param_count(m);
    size_t total = 0;
    float *base = prefopt_model_train_data(m, &total);
    const prefopt_grid *g = prefopt_model_get_grid(m);
    prefopt_param_range *r = prefopt_xcalloc((size_t)np + 1, sizeof *r, "parameter ranges");
    int k = 0;
    for (int i = 0; i < np; i++) {
        if (!prefopt_model_param_trained(m, i)) /* a frozen LoRA base */
            continue;
        prefopt_param *p = prefopt_model_param_at(m, i);
        r[k].offset = (size_t)(p->value->data - base);
        r[k].count = prefopt_dmat_local_size(p->value);
        r[k].weight_decay = p->weight_decay;
        /* a row vector is replicated over process rows: only process row 0 counts it in the norm */
        r[k].in_norm = !p->value->rep_rows || g->myrow == 0;
        k++;
    }
    *n = k;
    return r;
}

/* 1024^3 products, the fastest of 7 after a warm-up (first touch, packing buffers, the bf16 primitive). The fastest,
 * not the median: other work on the node only ever slows a product down, and a peak measured low while the node
 * was busy would report an MFU above 1 for the rest of the run. */
static double rate_1024(int kind) { return prefopt_gemm_rate(kind, 1024, 1024, 1024, 7); }

double prefopt_sgemm_rate(MPI_Comm comm)
{
    MPI_Barrier(comm);
    if (prefopt_precision_is_bf16()) /* a bf16 run's MFU counts against the bf16 matmul, measured alike */
        return rate_1024(2);
    /* fp32 against the faster of the machine's fp32 GEMMs (BLIS sgemm, oneDNN sgemm), whichever the engine uses,
     * so that the figure never flatters the slower kernel (on recent Intel cores oneDNN is 1.5x BLIS 0.9) */
    double blis = rate_1024(0), dnn = rate_1024(1);
    return blis > dnn ? blis : dnn;
}

double prefopt_measure_sgemm_peak(MPI_Comm comm)
{
    double mine = prefopt_sgemm_rate(comm), sum = 0;
    int size;
    MPI_Comm_size(comm, &size);
    MPI_Allreduce(&mine, &sum, 1, MPI_DOUBLE, MPI_SUM, comm);
    return sum / size;
}
