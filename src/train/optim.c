/* AdamW on flat buffers, HF learning-rate schedules, global gradient norm (see optim.h). */
#include "prefopt/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- AdamW ------------------------------------------------------------------------------------------------- */

static int cmp_range(const void *a, const void *b)
{
    const prefopt_param_range *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int prefopt_adamw_init(prefopt_adamw *opt, const prefopt_adamw_config *cfg, size_t n,
                       const prefopt_param_range *ranges, int nranges, prefopt_err *err)
{
    memset(opt, 0, sizeof *opt);
    if (!(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1)) {
        prefopt_err_set(err, "AdamW betas must be in [0, 1), got %g and %g", cfg->beta1, cfg->beta2);
        return -1;
    }
    if (!(cfg->eps > 0) || !(cfg->weight_decay >= 0) || !isfinite(cfg->weight_decay)) {
        prefopt_err_set(err, "AdamW needs eps > 0 and weight_decay >= 0, got %g and %g", cfg->eps, cfg->weight_decay);
        return -1;
    }
    if (nranges < 0 || (nranges > 0 && !ranges)) {
        prefopt_err_set(err, "AdamW: %d parameter ranges without a list", nranges);
        return -1;
    }
    prefopt_param_range *r = prefopt_xmalloc(((size_t)nranges + 1) * sizeof *r, "AdamW ranges");
    if (nranges)
        memcpy(r, ranges, (size_t)nranges * sizeof *r);
    qsort(r, (size_t)nranges, sizeof *r, cmp_range);
    /* sorted, checked, and the gaps between ranges filled in with no decay */
    prefopt_param_range *all = prefopt_xmalloc((2 * (size_t)nranges + 1) * sizeof *all, "AdamW ranges");
    int na = 0;
    size_t pos = 0;
    for (int i = 0; i < nranges; i++) {
        if (r[i].offset > n || r[i].count > n - r[i].offset) {
            prefopt_err_set(err, "AdamW: parameter range [%zu, %zu) is outside the buffer of %zu elements", r[i].offset,
                            r[i].offset + r[i].count, n);
            free(r);
            free(all);
            return -1;
        }
        if (r[i].count == 0) /* a tensor with no local piece on this rank (any offset: it holds nothing) */
            continue;
        if (r[i].offset < pos) {
            prefopt_err_set(err, "AdamW: parameter ranges overlap at element %zu", r[i].offset);
            free(r);
            free(all);
            return -1;
        }
        if (r[i].offset > pos)
            all[na++] = (prefopt_param_range){pos, r[i].offset - pos, 0, 1};
        if (r[i].count > 0)
            all[na++] = r[i];
        pos = r[i].offset + r[i].count;
    }
    if (pos < n)
        all[na++] = (prefopt_param_range){pos, n - pos, 0, 1};
    free(r);
    opt->cfg = *cfg;
    opt->n = n;
    opt->ranges = all;
    opt->nranges = na;
    opt->m = prefopt_xcalloc(n ? n : 1, sizeof(float), "AdamW first moments");
    opt->v = prefopt_xcalloc(n ? n : 1, sizeof(float), "AdamW second moments");
    opt->nmom = n;
    opt->npieces = na;
    opt->pieces = prefopt_xmalloc(((size_t)na + 1) * sizeof *opt->pieces, "AdamW pieces");
    opt->piece_mom = prefopt_xmalloc(((size_t)na + 1) * sizeof *opt->piece_mom, "AdamW pieces");
    memcpy(opt->pieces, all, (size_t)na * sizeof *all);
    for (int i = 0; i < na; i++)
        opt->piece_mom[i] = all[i].offset;
    return 0;
}

void prefopt_adamw_set_shard(prefopt_adamw *opt, const size_t *off, const size_t *cnt, int nseg)
{
    size_t total = 0;
    int np = 0;
    for (int s = 0; s < nseg; s++)
        for (int r = 0; r < opt->nranges; r++)
            np += opt->ranges[r].offset < off[s] + cnt[s] && off[s] < opt->ranges[r].offset + opt->ranges[r].count;
    free(opt->pieces);
    free(opt->piece_mom);
    opt->pieces = prefopt_xmalloc(((size_t)np + 1) * sizeof *opt->pieces, "AdamW pieces");
    opt->piece_mom = prefopt_xmalloc(((size_t)np + 1) * sizeof *opt->piece_mom, "AdamW pieces");
    opt->npieces = 0;
    for (int s = 0; s < nseg; s++) {
        for (int r = 0; r < opt->nranges; r++) {
            const prefopt_param_range *q = &opt->ranges[r];
            size_t lo = q->offset > off[s] ? q->offset : off[s];
            size_t hi = q->offset + q->count < off[s] + cnt[s] ? q->offset + q->count : off[s] + cnt[s];
            if (lo >= hi)
                continue;
            opt->pieces[opt->npieces] = (prefopt_param_range){lo, hi - lo, q->weight_decay, q->in_norm};
            opt->piece_mom[opt->npieces++] = total + (lo - off[s]);
        }
        total += cnt[s];
    }
    free(opt->m);
    free(opt->v);
    opt->nmom = total;
    opt->m = prefopt_xcalloc(total + 1, sizeof(float), "AdamW first moments (shard)");
    opt->v = prefopt_xcalloc(total + 1, sizeof(float), "AdamW second moments (shard)");
}

void prefopt_adamw_free(prefopt_adamw *opt)
{
    free(opt->m);
    free(opt->v);
    free(opt->ranges);
    free(opt->pieces);
    free(opt->piece_mom);
    memset(opt, 0, sizeof *opt);
}

/* One range. keep = 1 - lr wd, or exactly 1 where no decay applies (p * 1.0f == p, so no branch is needed).
 * The pointers do not alias, which lets the loop vectorise. */
static void adamw_range(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                        float keep, float gs, float b1, float omb1, float b2, float omb2, float step_size,
                        float bc2_sqrt, float eps)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * keep - step_size * (mi / (__builtin_sqrtf(vi) / bc2_sqrt + eps));
    }
}

void prefopt_adamw_step(prefopt_adamw *opt, float *params, const float *grads, double lr, double grad_scale)
{
    const long t = opt->step + 1;
    const double b1 = opt->cfg.beta1, b2 = opt->cfg.beta2;
    /* scalar factors in double, once; the per-element arithmetic is fp32 as in PyTorch */
    const float step_size = (float)(lr / (1 - pow(b1, (double)t)));
    const float bc2_sqrt = (float)sqrt(1 - pow(b2, (double)t));
    const float eps = (float)opt->cfg.eps, fb1 = (float)b1, fb2 = (float)b2;
    const float omb1 = (float)(1 - b1), omb2 = (float)(1 - b2), gs = (float)grad_scale;
    const float decay = (float)(1 - lr * opt->cfg.weight_decay);
    for (int r = 0; r < opt->npieces; r++) {
        const size_t lo = opt->pieces[r].offset, mo = opt->piece_mom[r];
        const float keep = opt->pieces[r].weight_decay && opt->cfg.weight_decay != 0 ? decay : 1.0f;
        adamw_range(params + lo, grads + lo, opt->m + mo, opt->v + mo, opt->pieces[r].count, keep, gs, fb1, omb1, fb2,
                    omb2, step_size, bc2_sqrt, eps);
    }
    opt->step = t;
}

/* ---- schedules --------------------------------------------------------------------------------------------- */

int prefopt_schedule_init(prefopt_schedule *s, const char *kind, double lr, long warmup_steps, long total_steps,
                          double min_lr_ratio, prefopt_err *err)
{
    memset(s, 0, sizeof *s);
    if (!kind)
        kind = "";
    if (!strcmp(kind, "constant") || !strcmp(kind, "constant_with_warmup"))
        s->kind = PREFOPT_SCHED_CONSTANT;
    else if (!strcmp(kind, "linear"))
        s->kind = PREFOPT_SCHED_LINEAR;
    else if (!strcmp(kind, "cosine") || !strcmp(kind, "cosine_with_min_lr"))
        s->kind = PREFOPT_SCHED_COSINE;
    else {
        prefopt_err_set(err, "--lr-scheduler \"%s\" is not one of constant, linear, cosine", kind);
        return -1;
    }
    if (!(lr >= 0) || !isfinite(lr)) {
        prefopt_err_set(err, "--lr must be a finite number >= 0, got %g", lr);
        return -1;
    }
    if (warmup_steps < 0 || total_steps < 0) {
        prefopt_err_set(err, "warmup steps (%ld) and total steps (%ld) must be >= 0", warmup_steps, total_steps);
        return -1;
    }
    if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) {
        prefopt_err_set(err, "--min-lr-ratio must be in [0, 1], got %g", min_lr_ratio);
        return -1;
    }
    if (min_lr_ratio != 0 && s->kind != PREFOPT_SCHED_COSINE) {
        prefopt_err_set(err, "--min-lr-ratio applies to the cosine schedule only, not to \"%s\"", kind);
        return -1;
    }
    s->lr = lr;
    s->warmup_steps = warmup_steps;
    s->total_steps = total_steps;
    s->min_lr_ratio = min_lr_ratio;
    return 0;
}

double prefopt_schedule_lr(const prefopt_schedule *s, long step)
{
    const double W = (double)s->warmup_steps, T = (double)s->total_steps, x = (double)step;
    if (step < s->warmup_steps)
        return s->lr * x / fmax(1.0, W);
    double decay_len = fmax(1.0, T - W), f;
    switch (s->kind) {
    case PREFOPT_SCHED_LINEAR:
        f = fmax(0.0, (T - x) / decay_len);
        break;
    case PREFOPT_SCHED_COSINE: {
        double progress = (x - W) / decay_len;
        f = 0.5 * (1.0 + cos(M_PI * progress));
        f = fmax(0.0, f * (1 - s->min_lr_ratio) + s->min_lr_ratio);
        break;
    }
    default:
        f = 1.0;
        break;
    }
    return s->lr * f;
}

long prefopt_warmup_steps(long total_steps, double warmup_ratio)
{
    return (long)ceil((double)total_steps * warmup_ratio);
}

/* ---- gradient norm ----------------------------------------------------------------------------------------- */

/* Blocks of this many elements are summed in order, then the block sums in order: the result does not
 * depend on the number of threads. */
#define SUMSQ_BLOCK 8192

double prefopt_sumsq(const float *x, const prefopt_param_range *ranges, int nranges)
{
    double total = 0;
    for (int r = 0; r < nranges; r++) {
        if (!ranges[r].in_norm || ranges[r].count == 0)
            continue;
        const float *p = x + ranges[r].offset;
        const size_t n = ranges[r].count, nb = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
        double *part = prefopt_xmalloc(nb * sizeof *part, "sum-of-squares partials");
#pragma omp parallel for schedule(static)
        for (size_t b = 0; b < nb; b++) {
            size_t lo = b * SUMSQ_BLOCK, hi = lo + SUMSQ_BLOCK < n ? lo + SUMSQ_BLOCK : n;
            /* 16 running sums in a fixed order: the loop vectorises and the result still depends only on the
             * data and SUMSQ_BLOCK, not on the thread count */
            double s[16] = {0}, t = 0;
            size_t i = lo;
            for (; i + 16 <= hi; i += 16)
                for (int l = 0; l < 16; l++)
                    s[l] += (double)p[i + l] * p[i + l];
            for (; i < hi; i++)
                t += (double)p[i] * p[i];
            for (int l = 0; l < 16; l++)
                t += s[l];
            part[b] = t;
        }
        for (size_t b = 0; b < nb; b++)
            total += part[b];
        free(part);
    }
    return total;
}

double prefopt_adamw_shard_sumsq(const prefopt_adamw *opt, const float *x)
{
    return prefopt_sumsq(x, opt->pieces, opt->npieces);
}

double prefopt_global_norm(double local_sumsq, MPI_Comm comm)
{
    double s = local_sumsq;
    if (comm != MPI_COMM_NULL)
        MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_SUM, comm);
    return sqrt(s);
}

double prefopt_clip_coef(double norm, double max_norm)
{
    if (!(max_norm > 0))
        return 1.0;
    double c = max_norm / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

/* ---- options ----------------------------------------------------------------------------------------------- */

void prefopt_optim_params_default(prefopt_optim_params *p)
{
    memset(p, 0, sizeof *p);
    p->lr = 1e-6;
    p->lr_scheduler = "linear";
    p->adam_beta1 = 0.9;
    p->adam_beta2 = 0.999;
    p->adam_eps = 1e-8;
    p->max_grad_norm = 1.0;
}

int prefopt_optim_options(prefopt_opt *out, int max, prefopt_optim_params *p)
{
    const prefopt_opt t[] = {
        {"lr", PREFOPT_OPT_DOUBLE, &p->lr, "1e-6", "peak learning rate (TRL DPOConfig default)"},
        {"lr-scheduler", PREFOPT_OPT_STRING, &p->lr_scheduler, "linear", "constant, linear or cosine, with warmup"},
        {"warmup-steps", PREFOPT_OPT_LONG, &p->warmup_steps, "0", "linear warmup steps"},
        {"warmup-ratio", PREFOPT_OPT_DOUBLE, &p->warmup_ratio, "0",
         "warmup as a fraction of the total steps (ceil), used when --warmup-steps is 0"},
        {"min-lr-ratio", PREFOPT_OPT_DOUBLE, &p->min_lr_ratio, "0", "cosine: floor of the lr as a fraction of --lr"},
        {"adam-beta1", PREFOPT_OPT_DOUBLE, &p->adam_beta1, "0.9", "AdamW beta1"},
        {"adam-beta2", PREFOPT_OPT_DOUBLE, &p->adam_beta2, "0.999", "AdamW beta2"},
        {"adam-eps", PREFOPT_OPT_DOUBLE, &p->adam_eps, "1e-8", "AdamW epsilon"},
        {"weight-decay", PREFOPT_OPT_DOUBLE, &p->weight_decay, "0",
         "decoupled weight decay (matrices and embeddings only)"},
        {"max-grad-norm", PREFOPT_OPT_DOUBLE, &p->max_grad_norm, "1.0", "clip the global gradient norm (0: off)"},
    };
    int n = (int)(sizeof t / sizeof t[0]);
    if (n > max)
        return -1;
    memcpy(out, t, sizeof t);
    return n;
}
