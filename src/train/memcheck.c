/* Memory estimate of a training run and the "does it fit" check made before the model is allocated (memcheck.h). */
#define _GNU_SOURCE
#include "prefopt/memcheck.h"

#include "prefopt/hf.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

void prefopt_mem_estimate_train(const prefopt_model_config *cfg, const prefopt_mem_layout *lay,
                                prefopt_mem_estimate *e)
{
    memset(e, 0, sizeof *e);
    const double tp = lay->tp > 0 ? lay->tp : 1;
    prefopt_tensor_spec *specs = NULL;
    int n = prefopt_model_tensor_specs(cfg, &specs);
    double params = 0, mats = 0;
    for (int i = 0; i < n; i++) {
        double numel = (double)specs[i].shape[0] * (specs[i].ndim == 2 ? (double)specs[i].shape[1] : 1.0);
        params += specs[i].ndim == 2 ? numel / tp : numel;
        mats += specs[i].ndim == 2 ? numel / tp : 0.0;
    }
    free(specs);
    e->weights = 4.0 * params + (lay->bf16 ? 2.0 * mats : 0.0);
    e->grads = 4.0 * params;
    const int dp = lay->dp > 1 ? lay->dp : 1;
    e->adam = 8.0 * params / (lay->zero_stage ? dp : 1);
    e->reference = !lay->live_ref                   ? 0.0
                   : lay->bf16 && lay->ref_bf16_only ? 2.0 * mats + 4.0 * (params - mats)
                                                     : e->weights;
    const double m = lay->micro_batch > 0 ? lay->micro_batch : 1, T = (double)(lay->seq_len > 0 ? lay->seq_len : 1);
    const double C = cfg->hidden_size, F = cfg->intermediate_size, H = cfg->num_heads, L = cfg->num_layers,
                 V = cfg->vocab_size;
    double lora_acts = 0;
    if (lay->lora && lay->lora->r > 0) {
        const double HD = (double)cfg->num_heads * cfg->head_dim, KD = (double)cfg->num_kv_heads * cfg->head_dim;
        const double io[PREFOPT_LORA_NKIND] = {C + HD, C + KD, C + KD, HD + C, C + F, C + F, F + C};
        const int has_up = cfg->arch == PREFOPT_ARCH_LLAMA;
        double ad = 0, nt = 0;
        for (int k = 0; k < PREFOPT_LORA_NKIND; k++)
            if ((lay->lora->targets & (1u << k)) && (k != 5 || has_up))
                ad += lay->lora->r * io[k] * L / tp, nt += L;
        e->weights += 4.0 * ad;
        e->grads = 4.0 * ad;
        e->adam = 8.0 * ad / (lay->zero_stage ? dp : 1);
        e->reference = 0.0;
        lora_acts = m * T * lay->lora->r * nt; /* U per targeted linear (on one process column: not / tp) */
    }
    /* data-parallel communication buffers (gradsync.h) of the trained gradients */
    e->comm = dp > 1 ? (lay->bf16_comm ? e->grads : lay->zero_stage ? e->grads / dp : 0.0) : 0.0;
    /* the variants keep q and k before their norms, and the attention and MLP outputs before theirs */
    const double qk = cfg->qk_norm ? (double)(cfg->num_heads + cfg->num_kv_heads) * cfg->head_dim : 0.0;
    const double post = cfg->norm_style != PREFOPT_NORM_PRE ? 2.0 * C : 0.0;
    /* floats of one layer: its outputs and the attention's per-row logsumexp (the blocked attention keeps no
     * probabilities) */
    const double layer = m * T * (10.0 * C + 2.0 * F + qk + post) / tp + m * H * T / tp;
    const double acts = lay->activation_checkpoint ? m * T * C * L / tp + layer : layer * L;
    /* the head runs over chunks of rows whose logits fit the budget (model.h), keeping one chunk and its gradient */
    const double budget = lay->logits_budget > 0 ? lay->logits_budget : (double)(1 << 30);
    double rows = floor(budget / (4.0 * T * V / tp));
    rows = rows < 1 ? 1 : rows > m ? m : rows;
    /* attention scratch: one worker per thread, O(T x head_dim) each (prefopt_attention_scratch_floats) */
    const double att_scratch = (lay->threads > 1 ? lay->threads : 1) * (double)prefopt_attention_scratch_floats(cfg, (int64_t)T, lay->bf16);
    e->activations = 4.0 * (acts + 2.0 * rows * T * V / tp + lora_acts + att_scratch);
    double sum = e->weights + e->grads + e->adam + e->reference + e->activations + e->comm;
    e->workspace = 0.1 * sum;
    e->total = sum + e->workspace;
}

int64_t prefopt_mem_max_row(const prefopt_dataset *ds, int kl_units, int pad_multiple)
{
    const prefopt_ds_info *in = prefopt_dataset_info(ds);
    int nf = prefopt_ds_kind_nfields(in->kind);
    /* measured at open, streamed over every example (the dataset keeps no per-example data) */
    int64_t best = in->max_row, best_completion = nf == 2 ? in->max_len[1] : 0;
    if (kl_units && in->kind == PREFOPT_DS_UNPAIRED)
        best += best_completion; /* the KL completion of another example rides on the row */
    int pm = pad_multiple > 0 ? pad_multiple : 1;
    return (best + pm - 1) / pm * pm;
}

/* ---- what a rank may use ---------------------------------------------------------------------------------- */

static double read_number_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[64] = {0};
    double v = -1;
    if (fgets(buf, sizeof buf, f) && isdigit((unsigned char)buf[0]))
        v = strtod(buf, NULL);
    fclose(f);
    return v;
}

static double meminfo_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    double v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) {
            v = strtod(line + 13, NULL) * 1024.0;
            break;
        }
    fclose(f);
    return v;
}

double prefopt_mem_process_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, res = 0;
    double v = fscanf(f, "%lu %lu", &size, &res) == 2 ? (double)res * (double)sysconf(_SC_PAGESIZE) : 0;
    fclose(f);
    return v;
}

/* Bytes this process maps (VmSize) and its data segment, from /proc/self/statm. */
static void self_usage(double *vm, double *data)
{
    *vm = *data = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return;
    unsigned long size = 0, res = 0, shr = 0, text = 0, lib = 0, dat = 0;
    if (fscanf(f, "%lu %lu %lu %lu %lu %lu", &size, &res, &shr, &text, &lib, &dat) == 6) {
        double page = (double)sysconf(_SC_PAGESIZE);
        *vm = (double)size * page;
        *data = (double)dat * page;
    }
    fclose(f);
}

static void consider(double v, const char *what, double *best, char *source, size_t len)
{
    if (v >= 0 && v < *best) {
        *best = v;
        snprintf(source, len, "%s", what);
    }
}

double prefopt_mem_available(MPI_Comm comm, double limit_bytes, char *source, size_t source_len)
{
    MPI_Comm node;
    int local = 1;
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    double best = INFINITY;
    snprintf(source, source_len, "nothing");
    if (limit_bytes > 0) {
        consider(limit_bytes, "--memory-limit", &best, source, source_len);
        return best;
    }
    double vm, data;
    self_usage(&vm, &data);
    struct rlimit rl;
    if (!getrlimit(RLIMIT_AS, &rl) && rl.rlim_cur != RLIM_INFINITY)
        consider(fmax(0.0, (double)rl.rlim_cur - vm), "RLIMIT_AS (ulimit -v)", &best, source, source_len);
    if (!getrlimit(RLIMIT_DATA, &rl) && rl.rlim_cur != RLIM_INFINITY)
        consider(fmax(0.0, (double)rl.rlim_cur - data), "RLIMIT_DATA (ulimit -d)", &best, source, source_len);
    /* cgroup v2, else v1 (whose "no limit" is a huge number) */
    double lim = read_number_file("/sys/fs/cgroup/memory.max"), cur = read_number_file("/sys/fs/cgroup/memory.current");
    if (lim < 0) {
        lim = read_number_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        cur = read_number_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
        if (lim > 1e18)
            lim = -1;
    }
    if (lim >= 0)
        consider(fmax(0.0, lim - fmax(cur, 0.0)) / local, "the cgroup memory limit", &best, source, source_len);
    double avail = meminfo_available();
    if (avail >= 0)
        consider(avail / local, "MemAvailable", &best, source, source_len);
    return best;
}

/* ---- the check ---------------------------------------------------------------------------------------------- */

int prefopt_memcheck_train(const prefopt_model_config *cfg, const prefopt_mem_layout *lay, MPI_Comm comm,
                           double limit_bytes, prefopt_mem_estimate *out, prefopt_err *err)
{
    prefopt_mem_estimate e;
    prefopt_mem_estimate_train(cfg, lay, &e);
    e.total += lay->process > 0 ? lay->process : 0;
    if (out)
        *out = e;
    char source[64];
    double avail = prefopt_mem_available(comm, limit_bytes, source, sizeof source);
    if (e.total > avail) {
        const int gib = e.total >= (double)(1u << 30);
        const double u = gib ? (double)(1u << 30) : (double)(1u << 20);
        const char *unit = gib ? "GiB" : "MiB";
        char fix[256];
        int k = snprintf(fix, sizeof fix, "use more ranks per grid (--grid-rows/--grid-cols)");
        int heavy_acts = e.activations > 0.1 * e.total;
        if (heavy_acts && !lay->activation_checkpoint)
            k += snprintf(fix + k, sizeof fix - (size_t)k, ", --activation-checkpoint");
        if (heavy_acts && lay->micro_batch > 1)
            k += snprintf(fix + k, sizeof fix - (size_t)k, ", a smaller --micro-batch-size");
        if (lay->dp > 1 && !lay->zero_stage && e.adam > 0.2 * e.total)
            k += snprintf(fix + k, sizeof fix - (size_t)k, ", --zero-stage 1");
        if (lay->live_ref)
            snprintf(fix + k, sizeof fix - (size_t)k, ", precomputed reference log-probs (prefopt eval --store-ref)");
        char proc[48] = "";
        if (lay->process > 0)
            snprintf(proc, sizeof proc, ", process %.1f", lay->process / u);
        prefopt_err_set(err,
                        "memory: training needs about %.1f %s per rank (weights %.1f, gradients %.1f, AdamW %.1f, "
                        "reference %.1f, activations %.1f, workspace %.1f%s %s) but %s allows %.1f %s: %s",
                        e.total / u, unit, e.weights / u, e.grads / u, e.adam / u, e.reference / u,
                        e.activations / u, e.workspace / u, proc, unit, source, avail / u, unit, fix);
    }
    return prefopt_agree(comm, err);
}

double prefopt_mem_parse(const char *s)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || isinf(v))
        return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        mul = 1024.0, end++;
        break;
    case 'M':
        mul = 1024.0 * 1024, end++;
        break;
    case 'G':
        mul = 1024.0 * 1024 * 1024, end++;
        break;
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024, end++;
        break;
    default:
        break;
    }
    if (mul > 1 && (!strcasecmp(end, "iB") || !strcasecmp(end, "B")))
        end += strlen(end);
    return *end ? -1 : v * mul;
}
