/* prefopt bench: timed DPO steps on random weights and tokens, the way `prefopt train` runs them (src/train/train.c):
 * per step, the policy's forward over packed pair rows [prompt | chosen | rejected], the frozen reference's
 * forward over the same rows, the DPO loss, the policy's backward, the data-parallel gradient all-reduce, the
 * global gradient norm and AdamW. Prints the median step time, tokens/s, achieved GFLOP/s against the sgemm peak
 * measured in the same run with the same threads (MFU), the time per phase as min/avg/max over ranks, peak
 * resident memory against the model-state lower bound, and one JSON line with all of it (perf/README.md).
 *
 * FLOPs. "computed" = what the engine executes for the model: 3 x forward for the policy (forward + backward) and
 * 1 x forward for the reference, forward = prefopt_model_forward_flops (2 per multiply-add, matmuls, the LM head
 * and attention as the engine computes it: full T x T score and value products, masked afterwards). The prompt
 * is computed once per pair. "TRL-equivalent" = the same model on TRL's layout (chosen and rejected as separate
 * rows of prompt + max(chosen, rejected) tokens, the prompt computed twice per model): the work a trainer without
 * prefix sharing does for the same pairs. MFU uses the computed FLOPs; activation-checkpoint recomputation is
 * not counted (model FLOPs, not hardware FLOPs). */
#include "prefopt/trace.h"
#include "prefopt/banner.h"
#include "prefopt/bench.h"
#include "prefopt/gemm_local.h"
#include "prefopt/regions.h"
#include "prefopt/runctl.h"
#include "prefopt/train.h"

#include <blis.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif


static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double rss_mib(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return NAN;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2)
        res = 0;
    fclose(f);
    return (double)res * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The shapes the README's figures use; explicit --n-* options override them. */
static int shape_config(prefopt_model_config *c, const prefopt_bench_params *p, prefopt_err *err)
{
    memset(c, 0, sizeof *c);
    int llama = 0, L = 0, C = 0, H = 0, KV = 0, F = 0, V = 0, P = 1024, tie = 1;
    if (!strcmp(p->shape, "gpt2-small"))
        L = 12, C = 768, H = 12, KV = 12, F = 3072, V = 50257;
    else if (!strcmp(p->shape, "tiny"))
        L = 2, C = 32, H = 4, KV = 4, F = 128, V = 64, P = 64;
    else if (!strcmp(p->shape, "llama-1b")) /* Llama 3.2 1B */
        llama = 1, L = 16, C = 2048, H = 32, KV = 8, F = 8192, V = 128256, P = 4096;
    else if (!strcmp(p->shape, "llama-7b")) /* Llama 2 7B */
        llama = 1, L = 32, C = 4096, H = 32, KV = 32, F = 11008, V = 32000, P = 4096, tie = 0;
    else if (strcmp(p->shape, "custom")) {
        prefopt_err_set(err, "--shape '%s': gpt2-small, tiny, llama-1b, llama-7b or custom", p->shape);
        return -1;
    } else
        llama = !strcmp(p->arch, "llama");
    if (p->n_layer > 0) L = p->n_layer;
    if (p->n_embd > 0) C = p->n_embd;
    if (p->n_head > 0) H = KV = p->n_head;
    if (p->n_kv_head > 0) KV = p->n_kv_head;
    if (p->n_inner > 0) F = p->n_inner;
    if (p->vocab > 0) V = p->vocab;
    if (p->max_position > 0) P = p->max_position;
    if (!strcmp(p->shape, "custom") && F == 0 && C > 0)
        F = llama ? ((8 * C / 3 + 31) / 32) * 32 : 4 * C;
    if (L < 1 || C < 1 || H < 1 || KV < 1 || C % H || V < 1) {
        prefopt_err_set(err, "bench: shape needs --n-layer, --n-embd, --n-head (dividing n-embd) and --vocab >= 1");
        return -1;
    }
    c->arch = llama ? PREFOPT_ARCH_LLAMA : PREFOPT_ARCH_GPT2;
    snprintf(c->hf_model_type, sizeof c->hf_model_type, "%s", llama ? "llama" : "gpt2");
    c->vocab_size = V;
    c->hidden_size = C;
    c->num_layers = L;
    c->num_heads = H;
    c->num_kv_heads = KV;
    c->head_dim = C / H;
    c->intermediate_size = F;
    c->max_position = P;
    c->norm_eps = llama ? 1e-5f : 1e-5f;
    c->rope_theta = llama ? 500000.0f : 10000.0f;
    c->qkv_bias = !llama;
    c->tie_word_embeddings = tie;
    c->bos_id = c->eos_id = c->pad_id = -1;
    return 0;
}

typedef struct {
    int32_t *tok, *pos, *parent, *unit, *chosen, *rejected;
    int8_t *seg;
    uint8_t *comp;
    prefopt_batch b;
} pair_rows;

/* pairs rows of [prompt P | chosen C | rejected R] exactly as prefopt_ds_batch_build packs pairs (dataset.h) */
static void rows_build(pair_rows *r, int pairs, int P, int C, int R)
{
    int T = P + C + R;
    size_t n = (size_t)pairs * T;
    r->tok = prefopt_xmalloc(n * 4 + 4, "bench tokens");
    r->pos = prefopt_xmalloc(n * 4 + 4, "bench tokens");
    r->parent = prefopt_xmalloc(n * 4 + 4, "bench tokens");
    r->unit = prefopt_xmalloc(n * 4 + 4, "bench tokens");
    r->seg = prefopt_xmalloc(n + 1, "bench tokens");
    r->comp = prefopt_xmalloc(n + 1, "bench tokens");
    r->chosen = prefopt_xmalloc((size_t)pairs * 4 + 4, "bench units");
    r->rejected = prefopt_xmalloc((size_t)pairs * 4 + 4, "bench units");
    for (int k = 0; k < pairs; k++) {
        for (int i = 0; i < T; i++) {
            size_t t = (size_t)k * T + i;
            int seg = i < P ? 0 : i < P + C ? 1 : 2;
            int j = seg == 0 ? i : seg == 1 ? i - P : i - P - C; /* index inside the branch */
            int parent = seg == 0 ? i - 1 : j == 0 ? P - 1 : i - 1;
            r->seg[t] = (int8_t)seg;
            r->pos[t] = seg == 0 ? i : P + j;
            r->parent[t] = parent;
            r->unit[t] = parent < 0 ? -1 : seg == 2 ? 2 * k + 1 : 2 * k;
            r->comp[t] = parent >= 0 && seg > 0;
        }
        r->chosen[k] = 2 * k;
        r->rejected[k] = 2 * k + 1;
    }
    r->b = (prefopt_batch){pairs, T, 2 * pairs, r->tok, r->pos, r->seg, r->parent, r->unit, r->comp};
}

static void rows_tokens(pair_rows *r, int V, uint64_t seed, int replica, int step)
{
    size_t n = (size_t)r->b.nrows * r->b.T;
    for (size_t t = 0; t < n; t++)
        r->tok[t] = (int32_t)(mix(seed ^ mix(((uint64_t)replica << 40) ^ ((uint64_t)step << 20) ^ t)) % (uint64_t)V);
}

static void rows_free(pair_rows *r)
{
    free(r->tok), free(r->pos), free(r->parent), free(r->unit), free(r->seg), free(r->comp);
    free(r->chosen), free(r->rejected);
}

static cJSON *mma(double mn, double avg, double mx)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "min", mn);
    cJSON_AddNumberToObject(o, "avg", avg);
    cJSON_AddNumberToObject(o, "max", mx);
    return o;
}

static void minavgmax(double v, MPI_Comm c, double out[3])
{
    int size;
    MPI_Comm_size(c, &size);
    MPI_Allreduce(&v, &out[0], 1, MPI_DOUBLE, MPI_MIN, c);
    MPI_Allreduce(&v, &out[1], 1, MPI_DOUBLE, MPI_SUM, c);
    MPI_Allreduce(&v, &out[2], 1, MPI_DOUBLE, MPI_MAX, c);
    out[1] /= size;
}

static const char *const phase_names[] = {"forward", "reference", "loss", "backward", "dp_allreduce", "optimizer"};
enum { NPHASES = 6 };

int prefopt_bench_run(const prefopt_bench_params *p)
{
    prefopt_err err = {0};
    int world;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    int dp = p->dp > 0 ? p->dp : 1, rows = p->grid_rows > 0 ? p->grid_rows : 1;
    int cols = p->grid_cols > 0 ? p->grid_cols : world / (rows * dp);
    int pcontrol = !strcmp(p->pcontrol, "off") ? PREFOPT_PCONTROL_OFF
                   : !strcmp(p->pcontrol, "named") ? PREFOPT_PCONTROL_NAMED
                                                    : PREFOPT_PCONTROL_WINDOW;
    if (strcmp(p->pcontrol, "off") && strcmp(p->pcontrol, "named") && strcmp(p->pcontrol, "window"))
        prefopt_err_set(&err, "--pcontrol '%s': window, named or off", p->pcontrol);
    else if (p->pairs < 1 || p->prompt_len < 1 || p->chosen_len < 1 || p->rejected_len < 1 || p->steps < 1 ||
             p->warmup < 0)
        prefopt_err_set(&err, "bench: --pairs, --prompt-len, --chosen-len, --rejected-len, --steps must be >= 1 and "
                              "--warmup >= 0");
    prefopt_grid g;
    if (err.set || cols < 1 || prefopt_grid_init(&g, MPI_COMM_WORLD, rows, cols, dp, &err)) {
        if (!err.set)
            prefopt_err_set(&err, "bench: %d ranks do not fill --grid-rows %d x --dp %d", world, rows, dp);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    prefopt_precision_setup(&p->prec, &g, &err);
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_banner(stdout, &g);
    prefopt_model_config cfg;
    prefopt_objective obj;
    prefopt_objective_params op;
    prefopt_objective_params_default(&op);
    op.loss = p->loss;
    op.beta = p->beta;
    if (!shape_config(&cfg, p, &err))
        prefopt_objective_init(&obj, &op, &err);
    if (!err.set && obj.layout != PREFOPT_LAYOUT_PAIRS)
        prefopt_err_set(&err, "bench: --loss %s is not a pair objective", p->loss);
    if (!err.set && p->prompt_len + p->chosen_len + p->rejected_len > cfg.max_position && cfg.arch == PREFOPT_ARCH_GPT2)
        prefopt_err_set(&err, "bench: rows of %d tokens exceed max_position %d", p->prompt_len + p->chosen_len +
                        p->rejected_len, cfg.max_position);
    prefopt_lora_config lc = {0, 0, 0, 0};
    if (!err.set && p->lora_r > 0) {
        prefopt_lora_params lp = {p->lora_r, p->lora_alpha, 0.0, p->lora_targets, ""};
        prefopt_lora_resolve(&lp, cfg.arch, &lc, &err);
    }
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    const int lora = lc.r > 0;

    prefopt_model_options mo = {1, p->activation_checkpoint, 0, 0, 0, prefopt_precision_is_bf16()},
                          ro = {0, 0, 0, 0, 0, prefopt_precision_is_bf16()};
    prefopt_model *pol = prefopt_model_create_lora(&cfg, &g, &mo, lora ? &lc : NULL, &err);
    /* LoRA: no second model; the reference is the policy with its adapters off, run before the policy (train.c) */
    prefopt_model *ref = pol && !lora ? prefopt_model_create(&cfg, &g, &ro, &err) : NULL;
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    if (p->logits_budget_mib > 0) {
        prefopt_model_set_logits_budget(pol, (size_t)p->logits_budget_mib << 20);
        if (ref)
            prefopt_model_set_logits_budget(ref, (size_t)p->logits_budget_mib << 20);
    }
    /* the LM head at completion positions only, as train does, unless the objective reads the prompt's log-probs */
    const int completion_head = p->completion_logits && !prefopt_objective_reads_all_tokens(&obj);
    if (completion_head) {
        prefopt_model_set_completion_logits_only(pol, 1);
        if (ref)
            prefopt_model_set_completion_logits_only(ref, 1);
    }
    prefopt_model_init_random(pol, (uint64_t)p->seed);
    if (ref) {
        prefopt_model_copy_weights(ref, pol);
        prefopt_model_keep_bf16_only(ref); /* a bf16 run's frozen reference: bf16 copies only (no-op in fp32) */
    }
    size_t n = 0;
    prefopt_model_train_data(pol, &n); /* with LoRA: the adapters */
    int nranges = 0;
    prefopt_param_range *ranges = prefopt_param_ranges(pol, &nranges);
    prefopt_adamw adam;
    prefopt_adamw_config ac = {0.9, 0.999, 1e-8, 0.0};
    prefopt_adamw_init(&adam, &ac, n, ranges, nranges, &err);
    if (prefopt_agree(g.world, &err)) /* every rank leaves, not only the one whose ranges failed */
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    prefopt_dp_sync dps;
    if (prefopt_dp_sync_init(&dps, &p->dpsync, pol, &adam, &g, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    int64_t nparams = 0;
    for (int i = 0; i < prefopt_model_param_count(pol); i++) {
        prefopt_param *pp = prefopt_model_param_at(pol, i);
        nparams += pp->shape[0] * (pp->ndim == 2 ? pp->shape[1] : 1);
    }

    pair_rows R;
    rows_build(&R, p->pairs, p->prompt_len, p->chosen_len, p->rejected_len);
    const int nu = 2 * p->pairs, T = R.b.T;
    prefopt_unit_stats pst, rst;
    prefopt_unit_stats_alloc(&pst, nu);
    prefopt_unit_stats_alloc(&rst, nu);
    double *dcomp = prefopt_xcalloc((size_t)nu, sizeof(double), "bench gradients");
    double *dall = prefopt_xcalloc((size_t)nu, sizeof(double), "bench gradients");
    float *fcomp = prefopt_xcalloc((size_t)nu, sizeof(float), "bench gradients");
    float *fall = prefopt_xcalloc((size_t)nu, sizeof(float), "bench gradients");
    prefopt_objective_batch ob = {0};
    ob.policy = &pst;
    ob.nunits = nu;
    ob.ref_logp = obj.uses_reference ? rst.logp_completion : NULL;
    ob.npairs = p->pairs;
    ob.chosen = R.chosen;
    ob.rejected = R.rejected;
    prefopt_unit_counts(&pst, &R.b);
    prefopt_objective_norm norm = {0};
    prefopt_objective_count(&norm, &obj, &ob);
    prefopt_reduction dp_sum = prefopt_reduction_over(&g.dp);
    prefopt_objective_norm_reduce(&norm, &dp_sum);

    /* the sgemm peak with this rank's threads while every rank runs it, then the state touched (gradients and
     * moments are calloc'd: not resident until written) and the baseline of resident memory */
    double peak_before = prefopt_sgemm_rate(g.world);
    prefopt_model_zero_grad(pol);
    memset(adam.m, 0, adam.nmom * sizeof(float));
    memset(adam.v, 0, adam.nmom * sizeof(float));
    double rss0 = rss_mib(), rss_fwd = 0, rss_ref = 0, rss_bwd = 0;

    prefopt_regions_enable(1, pcontrol);
    const int total = p->warmup + p->steps;
    double *st = prefopt_xcalloc((size_t)total + 1, sizeof(double), "step times");
    /* per step: exposed gradient communication (polls in backward + the wait after it), of which the wait, and the
     * distributed optimizer's weight gather */
    double *ex = prefopt_xcalloc(3 * ((size_t)total + 1), sizeof(double), "communication times");
    int early = 0;
    double loss_first = NAN, loss_last = NAN, gnorm = 0;
    for (int s = 0; s < total; s++) {
        rows_tokens(&R, cfg.vocab_size, (uint64_t)p->seed, g.dp_rank, s);
        MPI_Barrier(g.world);
        if (s == p->warmup) {
            prefopt_regions_reset();
            prefopt_regions_pcontrol_window(1);
        }
        prefopt_trace_step(s + 1);
        double t0 = prefopt_now();
        prefopt_region_enter("step");
        prefopt_model_zero_grad(pol);
        if (lora) {
            prefopt_region_enter("reference");
            prefopt_model_set_lora_enabled(pol, 0);
            prefopt_model_forward(pol, &R.b, &rst, &err);
            prefopt_model_set_lora_enabled(pol, 1);
            prefopt_region_exit("reference");
            if (s == 0)
                rss_ref = rss_mib();
        }
        prefopt_region_enter("forward");
        if (!err.set)
            prefopt_model_forward(pol, &R.b, &pst, &err);
        prefopt_region_exit("forward");
        if (s == 0)
            rss_fwd = rss_mib();
        if (!lora) {
            prefopt_region_enter("reference");
            if (!err.set)
                prefopt_model_forward(ref, &R.b, &rst, &err);
            prefopt_region_exit("reference");
            if (s == 0)
                rss_ref = rss_mib();
        }
        if (prefopt_agree(g.tp, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        prefopt_region_enter("loss");
        double loss = 0;
        if (prefopt_objective_eval(&loss, dcomp, dall, NULL, NULL, &obj, &ob, &norm, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        for (int u = 0; u < nu; u++) {
            fcomp[u] = (float)dcomp[u];
            fall[u] = (float)dall[u];
        }
        prefopt_region_exit("loss");
        prefopt_region_enter("backward");
        prefopt_dp_sync_begin(&dps);
        prefopt_model_backward(pol, fcomp, fall);
        prefopt_region_exit("backward");
        if (s == 0)
            rss_bwd = rss_mib();
        prefopt_region_enter("dp_allreduce");
        gnorm = prefopt_dp_sync_grads(&dps, ranges, nranges); /* the buckets' wait, then the global norm */
        prefopt_region_exit("dp_allreduce");
        prefopt_region_enter("optimizer");
        prefopt_dp_sync_step(&dps, p->lr, prefopt_clip_coef(gnorm, 1.0));
        prefopt_model_weights_changed(pol); /* bf16: the copies, once per step */
        prefopt_region_exit("optimizer");
        prefopt_gradsync_stats gst;
        prefopt_gradsync_take_stats(dps.gs, &gst);
        ex[3 * s] = gst.exposed, ex[3 * s + 1] = gst.finish, ex[3 * s + 2] = gst.gather;
        early = gst.early;
        prefopt_region_exit("step");
        st[s] = prefopt_now() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, g.dp);
        if (s == 0)
            loss_first = loss;
        loss_last = loss;
    }
    prefopt_regions_pcontrol_window(0);
    prefopt_regions_enable(0, pcontrol);
    double peak_after = prefopt_sgemm_rate(g.world), peak = fmax(peak_before, peak_after);
    MPI_Allreduce(MPI_IN_PLACE, &peak, 1, MPI_DOUBLE, MPI_SUM, g.world);
    peak /= world; /* per rank: the mean over ranks of each rank's best */
    double pk[2] = {peak_before, peak_after};
    MPI_Allreduce(MPI_IN_PLACE, pk, 2, MPI_DOUBLE, MPI_SUM, g.world);

    /* the step time of a step is the slowest rank's */
    MPI_Allreduce(MPI_IN_PLACE, st, total, MPI_DOUBLE, MPI_MAX, g.world);
    double *meas = st + p->warmup;
    double tmin = meas[0], tmax = meas[0];
    for (int s = 0; s < p->steps; s++) {
        tmin = fmin(tmin, meas[s]);
        tmax = fmax(tmax, meas[s]);
    }
    double tstep = median(meas, p->steps);
    /* exposed communication of a step: the slowest rank's; the median over the measured steps */
    MPI_Allreduce(MPI_IN_PLACE, ex, 3 * total, MPI_DOUBLE, MPI_MAX, g.world);
    double exm[3];
    for (int k = 0; k < 3; k++) {
        double *col = prefopt_xmalloc(sizeof(double) * (size_t)p->steps, "communication times");
        for (int s = 0; s < p->steps; s++)
            col[s] = ex[3 * (p->warmup + s) + k];
        exm[k] = median(col, p->steps);
        free(col);
    }

    double fwd = prefopt_model_forward_flops(pol, &R.b);
    const int Tt = p->prompt_len + (p->chosen_len > p->rejected_len ? p->chosen_len : p->rejected_len);
    prefopt_batch trl = {2 * p->pairs, Tt, 0, NULL, NULL, NULL, NULL, NULL, NULL};
    double fwd_trl = prefopt_model_forward_flops(pol, &trl); /* no token arrays: the head at every position */
    if (completion_head) /* TRL's use_logits_to_keep */
        fwd_trl -= 2.0 * cfg.hidden_size * cfg.vocab_size * trl.nrows * p->prompt_len; /* R = Tt - prompt */
    /* LoRA: the frozen base's backward has no weight-gradient products (adapter FLOPs, r/C of a layer's, not
     * counted) */
    const double passes = lora ? 3.0 : 4.0;
    double flops = passes * fwd * dp, flops_trl = passes * fwd_trl * dp;
    double tokens = (double)dp * p->pairs * T;
    double tokens_trl = (double)dp * p->pairs * (2.0 * p->prompt_len + p->chosen_len + p->rejected_len);
    double gflops = flops / tstep * 1e-9, mfu = flops / tstep / (peak * world);

    /* phases: seconds per step, min/avg/max over ranks; MPI seconds inside them when the PMPI library is loaded */
    double ph[NPHASES][3], phm[NPHASES][3], stepr[3], stepm[3];
    for (int i = 0; i < NPHASES; i++) {
        char path[64];
        snprintf(path, sizeof path, "step/%s", phase_names[i]);
        double mpi = 0, sec = prefopt_region_seconds(path, NULL, &mpi);
        minavgmax(sec / p->steps, g.world, ph[i]);
        minavgmax(mpi / p->steps, g.world, phm[i]);
    }
    double mpi_step = 0, sec_step = prefopt_region_seconds("step", NULL, &mpi_step);
    minavgmax(sec_step / p->steps, g.world, stepr);
    minavgmax(mpi_step / p->steps, g.world, stepm);
    int have_mpi = prefopt_regions_have_mpi_time();
    /* communication: every MPI call of the step when the PMPI library measures them (tensor-parallel traffic
     * inside forward/backward, psgemm's BLACS messages included); otherwise only the data-parallel all-reduce */
    double comm[3];
    memcpy(comm, have_mpi ? stepm : ph[4], sizeof comm);

    /* memory: the model-state lower bound of this rank (policy weights, gradients, two AdamW moments, the
     * reference's weights) against the peak resident set; activations from the resident growth of step 1 */
    double state_mib = ((double)prefopt_model_weight_bytes(pol) + 4.0 * (double)n + 8.0 * (double)adam.nmom +
                        (ref ? (double)prefopt_model_weight_bytes(ref) : 0.0)) / (1024.0 * 1024.0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak_rss = (double)ru.ru_maxrss / 1024.0;
    double act_pol = lora ? rss_bwd - rss_ref : (rss_fwd - rss0) + (rss_bwd - rss_ref);
    double act_ref = lora ? rss_ref - rss0 : rss_ref - rss_fwd;
    double m_state[3], m_peak[3], m_base[3], m_actp[3], m_actr[3];
    minavgmax(state_mib, g.world, m_state);
    minavgmax(peak_rss, g.world, m_peak);
    minavgmax(rss0, g.world, m_base);
    minavgmax(act_pol, g.world, m_actp);
    minavgmax(act_ref, g.world, m_actr);

    if (p->table)
        prefopt_regions_print(stdout, g.world, "bench regions over the measured steps (totals)");
    if (*p->folded && prefopt_regions_write_folded(p->folded, "prefopt_bench", p->folded_per_rank, g.world) &&
        g.world_rank == 0)
        fprintf(stderr, "prefopt: warning: cannot write folded stacks to %s\n", p->folded);

    if (g.world_rank == 0) {
        const char *shape_s = p->shape;
        printf("bench: %s (%s, %d layers, hidden %d, %d heads/%d kv, vocab %d, %.1fM params) | %d pairs x [%d | %d | "
               "%d] = %d tokens/row | %d ranks: grid %dx%d x dp %d | BLIS %s, %d threads/rank | activation "
               "checkpointing %s | LM head at %s\n",
               shape_s, cfg.hf_model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
               cfg.vocab_size, (double)nparams * 1e-6, p->pairs, p->prompt_len, p->chosen_len, p->rejected_len, T,
               world, g.nprow, g.npcol, g.dp_size, prefopt_blis_arch(), prefopt_blis_threads(),
               p->activation_checkpoint ? "on" : "off",
               completion_head ? "completion positions only" : "every position");
        printf("step %.4f s median of %d (min %.4f, max %.4f) | %.0f tokens/s (%.0f TRL-equivalent) | %.2f GFLOP/s "
               "computed (%.2f TRL-equivalent) | %s peak %.2f GFLOP/s/rank (best of before/after) | MFU %.3f | loss %.6f -> %.6f\n",
               tstep, p->steps, tmin, tmax, tokens / tstep, tokens_trl / tstep, gflops, flops_trl / tstep * 1e-9,
               prefopt_precision_is_bf16() ? "bf16 matmul" : "sgemm (faster of BLIS, oneDNN)", peak * 1e-9, mfu, loss_first, loss_last);
        printf("phases per step (s, min/avg/max over ranks):");
        for (int i = 0; i < NPHASES; i++)
            printf(" %s %.4f/%.4f/%.4f,", phase_names[i], ph[i][0], ph[i][1], ph[i][2]);
        printf(" communication %.4f/%.4f/%.4f (%s)\n", comm[0], comm[1], comm[2],
               have_mpi ? "all MPI calls of the step" : "data-parallel all-reduce only");
        if (g.dp_size > 1)
            printf("data-parallel gradients (median per step, slowest rank): exposed communication %.4f s (%.4f waiting "
                   "after backward) | %d buckets, %d started during backward | overlap %s | zero stage %d | %s on the "
                   "wire | weight all-gather %.4f s\n",
                   exm[0], exm[1], prefopt_gradsync_nbuckets(dps.gs), early, dps.overlap ? "on" : "off", dps.zero,
                   dps.bf16 ? "bf16" : "fp32", exm[2]);
        if (have_mpi)
            printf("MPI time per step (avg over ranks, from libprefopt_pmpi): step %.4f s (%.1f%%), forward %.4f, "
                   "reference %.4f, backward %.4f, dp_allreduce %.4f, optimizer %.4f\n",
                   stepm[1], 100.0 * stepm[1] / stepr[1], phm[0][1], phm[1][1], phm[3][1], phm[4][1], phm[5][1]);
        else
            printf("MPI time inside the engine: not measured (LD_PRELOAD libprefopt_pmpi.so to split it out)\n");
        printf("memory per rank (MiB, max over ranks): peak RSS %.1f | model-state lower bound %.1f (policy + grads + "
               "AdamW + reference) | baseline RSS %.1f | activations: policy %.1f, reference %.1f\n",
               m_peak[2], m_state[2], m_base[2], m_actp[2], m_actr[2]);

        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "bench", "dpo_step");
        cJSON_AddNumberToObject(o, "lora_r", lc.r);
        cJSON_AddStringToObject(o, "shape", shape_s);
        cJSON_AddStringToObject(o, "arch", cfg.hf_model_type);
        cJSON_AddNumberToObject(o, "layers", cfg.num_layers);
        cJSON_AddNumberToObject(o, "hidden", cfg.hidden_size);
        cJSON_AddNumberToObject(o, "heads", cfg.num_heads);
        cJSON_AddNumberToObject(o, "kv_heads", cfg.num_kv_heads);
        cJSON_AddNumberToObject(o, "ffn", cfg.intermediate_size);
        cJSON_AddNumberToObject(o, "vocab", cfg.vocab_size);
        cJSON_AddNumberToObject(o, "params", (double)nparams);
        cJSON_AddNumberToObject(o, "pairs_per_replica", p->pairs);
        cJSON_AddNumberToObject(o, "prompt_len", p->prompt_len);
        cJSON_AddNumberToObject(o, "chosen_len", p->chosen_len);
        cJSON_AddNumberToObject(o, "rejected_len", p->rejected_len);
        cJSON_AddNumberToObject(o, "row_tokens", T);
        cJSON_AddNumberToObject(o, "ranks", world);
        cJSON_AddNumberToObject(o, "grid_rows", g.nprow);
        cJSON_AddNumberToObject(o, "grid_cols", g.npcol);
        cJSON_AddNumberToObject(o, "dp", g.dp_size);
        cJSON_AddStringToObject(o, "blis_arch", prefopt_blis_arch());
        cJSON_AddNumberToObject(o, "blis_threads", prefopt_blis_threads());
#ifdef _OPENMP
        cJSON_AddNumberToObject(o, "omp_threads", omp_get_max_threads()); /* the engine's own loops */
#else
        cJSON_AddNumberToObject(o, "omp_threads", 1);
#endif
        cJSON_AddBoolToObject(o, "activation_checkpoint", p->activation_checkpoint != 0);
        cJSON_AddBoolToObject(o, "completion_logits", completion_head);
        cJSON_AddNumberToObject(o, "logits_budget_mib", p->logits_budget_mib);
        cJSON_AddNumberToObject(o, "steps", p->steps);
        cJSON_AddNumberToObject(o, "warmup", p->warmup);
        cJSON_AddNumberToObject(o, "step_s", tstep);
        cJSON_AddNumberToObject(o, "step_s_min", tmin);
        cJSON_AddNumberToObject(o, "step_s_max", tmax);
        cJSON_AddNumberToObject(o, "tokens_per_step", tokens);
        cJSON_AddNumberToObject(o, "tokens_per_s", tokens / tstep);
        cJSON_AddNumberToObject(o, "trl_tokens_per_step", tokens_trl);
        cJSON_AddNumberToObject(o, "trl_tokens_per_s", tokens_trl / tstep);
        cJSON_AddNumberToObject(o, "flops_forward", fwd);
        cJSON_AddNumberToObject(o, "flops_step", flops);
        cJSON_AddNumberToObject(o, "flops_forward_trl", fwd_trl);
        cJSON_AddNumberToObject(o, "flops_step_trl", flops_trl);
        cJSON_AddNumberToObject(o, "gflops", gflops);
        cJSON_AddNumberToObject(o, "gflops_trl_equivalent", flops_trl / tstep * 1e-9);
        /* in a bf16 run the peak is the bf16 matmul's (the key keeps its name for the scripts that read it) */
        cJSON_AddNumberToObject(o, "sgemm_peak_gflops_per_rank", peak * 1e-9);
        cJSON_AddStringToObject(o, "precision", prefopt_precision_is_bf16() ? "bf16" : "fp32");
        cJSON_AddStringToObject(o, "gemm_backend", prefopt_gemm_backend_name(prefopt_gemm_get_backend()));
        cJSON_AddNumberToObject(o, "sgemm_before_gflops_per_rank", pk[0] / world * 1e-9);
        cJSON_AddNumberToObject(o, "sgemm_after_gflops_per_rank", pk[1] / world * 1e-9);
        cJSON_AddNumberToObject(o, "mfu", mfu);
        cJSON_AddNumberToObject(o, "loss_first", loss_first);
        cJSON_AddNumberToObject(o, "loss_last", loss_last);
        cJSON_AddNumberToObject(o, "grad_norm_last", gnorm);
        cJSON_AddBoolToObject(o, "overlap_grad_reduce", dps.overlap != 0);
        cJSON_AddNumberToObject(o, "zero_stage", dps.zero);
        cJSON_AddStringToObject(o, "grad_reduce_dtype", dps.bf16 ? "bf16" : "fp32");
        cJSON_AddNumberToObject(o, "grad_buckets", prefopt_gradsync_nbuckets(dps.gs));
        cJSON_AddNumberToObject(o, "grad_buckets_early", early);
        cJSON_AddNumberToObject(o, "grad_comm_exposed_s", exm[0]);
        cJSON_AddNumberToObject(o, "grad_comm_wait_s", exm[1]);
        cJSON_AddNumberToObject(o, "param_gather_s", exm[2]);
        cJSON *phj = cJSON_AddObjectToObject(o, "phases_s");
        cJSON_AddItemToObject(phj, "step", mma(stepr[0], stepr[1], stepr[2]));
        for (int i = 0; i < NPHASES; i++)
            cJSON_AddItemToObject(phj, phase_names[i], mma(ph[i][0], ph[i][1], ph[i][2]));
        cJSON_AddItemToObject(phj, "communication", mma(comm[0], comm[1], comm[2]));
        cJSON_AddStringToObject(o, "communication_source", have_mpi ? "pmpi: all MPI calls in the step"
                                                                    : "dp_allreduce region only");
        if (have_mpi) {
            cJSON *mj = cJSON_AddObjectToObject(o, "mpi_s");
            cJSON_AddItemToObject(mj, "step", mma(stepm[0], stepm[1], stepm[2]));
            for (int i = 0; i < NPHASES; i++)
                cJSON_AddItemToObject(mj, phase_names[i], mma(phm[i][0], phm[i][1], phm[i][2]));
        } else
            cJSON_AddNullToObject(o, "mpi_s");
        cJSON *mem = cJSON_AddObjectToObject(o, "memory_mib");
        cJSON_AddItemToObject(mem, "peak_rss", mma(m_peak[0], m_peak[1], m_peak[2]));
        cJSON_AddItemToObject(mem, "state_lower_bound", mma(m_state[0], m_state[1], m_state[2]));
        cJSON_AddItemToObject(mem, "baseline_rss", mma(m_base[0], m_base[1], m_base[2]));
        cJSON_AddItemToObject(mem, "activations_policy", mma(m_actp[0], m_actp[1], m_actp[2]));
        cJSON_AddItemToObject(mem, "activations_reference", mma(m_actr[0], m_actr[1], m_actr[2]));
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s);
        fflush(stdout);
        if (*p->json) {
            prefopt_err e = {0};
            if (prefopt_append_line(p->json, s, 0, &e))
                fprintf(stderr, "prefopt: warning: %s\n", e.msg);
        }
        free(s);
        cJSON_Delete(o);
    }

    free(st);
    free(ex);
    prefopt_dp_sync_free(&dps);
    free(dcomp), free(dall), free(fcomp), free(fall);
    prefopt_unit_stats_free(&pst);
    prefopt_unit_stats_free(&rst);
    rows_free(&R);
    free(ranges);
    prefopt_adamw_free(&adam);
    if (ref)
        prefopt_model_free(ref);
    prefopt_model_free(pol);
    prefopt_grid_free(&g);
    return 0;
}
