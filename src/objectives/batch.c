/* Objectives over micro-batches: unit layouts, global normalisation (objectives.h), metric sums. */
#include "objectives_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_units(const int32_t *u, int n, int nunits, const char *what, prefopt_err *err)
{
    if (n > 0 && !u) {
        prefopt_err_set(err, "objective: %d %s but no unit indices", n, what);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (u[i] < 0 || u[i] >= nunits) {
            prefopt_err_set(err, "objective: %s[%d] = %d is outside the %d units of the micro-batch", what, i,
                            (int)u[i], nunits);
            return -1;
        }
    return 0;
}

void prefopt_objective_count(prefopt_objective_norm *acc, const prefopt_objective *obj,
                             const prefopt_objective_batch *b)
{
    const prefopt_unit_stats *s = b->policy;
    switch (obj->layout) {
    case PREFOPT_LAYOUT_PAIRS:
        acc->pairs += b->npairs;
        for (int i = 0; i < b->npairs; i++) {
            acc->chosen_tokens += s->n_completion[b->chosen[i]];
            acc->chosen_all_tokens += s->n_all[b->chosen[i]];
        }
        break;
    case PREFOPT_LAYOUT_UNPAIRED:
        acc->examples += b->nexamples;
        break;
    case PREFOPT_LAYOUT_SFT:
        acc->examples += b->nsft;
        for (int i = 0; i < b->nsft; i++)
            acc->tokens += obj->p.sft_all_tokens ? s->n_all[b->sft[i]] : s->n_completion[b->sft[i]];
        break;
    }
}

void prefopt_objective_norm_reduce(prefopt_objective_norm *n, const prefopt_reduction *sum)
{
    double v[5] = {n->pairs, n->chosen_tokens, n->chosen_all_tokens, n->examples, n->tokens};
    prefopt_reduce_sum(sum, v, 5);
    n->pairs = v[0], n->chosen_tokens = v[1], n->chosen_all_tokens = v[2], n->examples = v[3], n->tokens = v[4];
}

static int need_norm(double v, const char *what, prefopt_err *err)
{
    if (!(v > 0)) {
        prefopt_err_set(err, "objective: the global %s of the step is %g; count the step with "
                        "prefopt_objective_count before evaluating", what, v);
        return -1;
    }
    return 0;
}

/* One sequence's NLL term (log-prob lp over ntok tokens) normalised for the whole step, and d/d lp:
 * token mean (TRL): -lp / N_tokens; sequence mean of token means (OpenRLHF): -lp / (L N_seq);
 * sequence mean of sums (NeMo): -lp / N_seq. */
static double sft_term(double *d, const prefopt_objective *o, double lp, double ntok, double n_tokens, double n_seqs)
{
    double den;
    switch (o->sft_reduction) {
    case PREFOPT_SFT_SEQ_MEAN:
        den = (ntok < 1 ? 1 : ntok) * n_seqs;
        break;
    case PREFOPT_SFT_SEQ_SUM:
        den = n_seqs;
        break;
    default:
        den = n_tokens;
        break;
    }
    *d = -1 / den;
    return -lp / den;
}

/* The nll_loss metric's sum for one sequence (adding its count), matching sft_term's reduction. */
static double sft_metric(double *count, const prefopt_objective *o, double lp, double ntok)
{
    switch (o->sft_reduction) {
    case PREFOPT_SFT_SEQ_MEAN:
        *count += 1;
        return -lp / (ntok < 1 ? 1 : ntok);
    case PREFOPT_SFT_SEQ_SUM:
        *count += 1;
        return -lp;
    default:
        *count += ntok;
        return -lp;
    }
}

typedef struct {
    double x;
    int i;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *p = a, *q = b;
    return p->x < q->x ? -1 : p->x > q->x ? 1 : (p->i > q->i) - (p->i < q->i);
}

/* AOT: the k-th smallest of one quantity is matched with the k-th smallest of another,
 * d_k = sa_k - sb_k, smoothed sigmoid on beta d_k; the gradient goes to the pairs that sit at rank k.
 * aot:          a = pi_c - pi_r,  b = ref_c - ref_r
 * aot_unpaired: a = r_c,          b = r_r
 * Returns the weighted loss sum (scale = weight / global pairs) and adds into d_c and d_ref. */
static double aot_term(double *d_c, double *d_ref, const prefopt_objective *o, prefopt_loss_kind k, double scale,
                       const prefopt_objective_batch *b)
{
    const prefopt_unit_stats *s = b->policy;
    const int n = b->npairs, unp = k == PREFOPT_LOSS_AOT_UNPAIRED;
    keyed *ka = prefopt_xmalloc(2 * (size_t)n * sizeof *ka, "aot sort keys"), *kb = ka + n;
    for (int i = 0; i < n; i++) {
        int c = b->chosen[i], r = b->rejected[i];
        double pc = s->logp_completion[c], pr = s->logp_completion[r];
        double fc = o->uses_reference ? b->ref_logp[c] : 0, fr = o->uses_reference ? b->ref_logp[r] : 0;
        ka[i] = (keyed){unp ? pc - fc : pc - pr, i};
        kb[i] = (keyed){unp ? pr - fr : fc - fr, i};
    }
    qsort(ka, (size_t)n, sizeof *ka, cmp_keyed);
    qsort(kb, (size_t)n, sizeof *kb, cmp_keyed);
    double total = 0;
    for (int j = 0; j < n; j++) {
        double dz, z = o->p.beta * (ka[j].x - kb[j].x);
        total += scale * prefopt__smoothed_sigmoid_loss(&dz, z, o->p.label_smoothing);
        double g = scale * o->p.beta * dz; /* d/d(sa_j), and -g is d/d(sb_j) */
        int ia = ka[j].i, ib = kb[j].i;
        int ca = b->chosen[ia], ra = b->rejected[ia], cb = b->chosen[ib], rb = b->rejected[ib];
        if (unp) { /* sa = pi_c - ref_c of pair ia; sb = pi_r - ref_r of pair ib */
            d_c[ca] += g;
            d_c[rb] -= g;
            if (d_ref) {
                d_ref[ca] -= g;
                d_ref[rb] += g;
            }
        } else { /* sa = pi_c - pi_r of pair ia; sb = ref_c - ref_r of pair ib */
            d_c[ca] += g;
            d_c[ra] -= g;
            if (d_ref) {
                d_ref[cb] -= g;
                d_ref[rb] += g;
            }
        }
    }
    free(ka);
    return total;
}

static int eval_pairs(double *loss, double *d_c, double *d_all, double *d_ref, prefopt_metrics *m,
                      const prefopt_objective *o, const prefopt_objective_batch *b,
                      const prefopt_objective_norm *norm, prefopt_err *err)
{
    const prefopt_unit_stats *s = b->policy;
    const double beta = o->p.beta;
    if (check_units(b->chosen, b->npairs, b->nunits, "chosen", err) ||
        check_units(b->rejected, b->npairs, b->nunits, "rejected", err))
        return -1;
    if (b->npairs == 0)
        return 0;
    if (o->uses_bco_delta && !b->bco_ready) {
        prefopt_err_set(err, "objective: bco_pair with --bco-running-mean needs prefopt_bco_update on each micro-batch "
                        "before the loss (the running mean was not updated)");
        return -1;
    }
    int has_sft = prefopt__has_term(o, PREFOPT_LOSS_SFT), has_orpo = prefopt__has_term(o, PREFOPT_LOSS_ORPO);
    if (need_norm(norm->pairs, "number of pairs", err) ||
        (has_sft && o->sft_reduction == PREFOPT_SFT_TOKEN_MEAN &&
         need_norm(norm->chosen_tokens, "number of chosen completion tokens", err)) ||
        (has_orpo && need_norm(norm->chosen_all_tokens, "number of prompt+chosen tokens", err)))
        return -1;
    double total = 0, nll_sum = 0, nll_cnt = 0, nll_all_sum = 0, lor_sum = 0, loc_sum = 0;
    for (int i = 0; i < b->npairs; i++) {
        int c = b->chosen[i], r = b->rejected[i];
        double pc = s->logp_completion[c], pr = s->logp_completion[r];
        double fc = o->uses_reference ? b->ref_logp[c] : 0, fr = o->uses_reference ? b->ref_logp[r] : 0;
        double lc = s->n_completion[c], lr = s->n_completion[r];
        for (int t = 0; t < o->nterms; t++) {
            double w = o->weight[t], g[4];
            if (o->kind[t] == PREFOPT_LOSS_SFT) {
                double d;
                total += w * sft_term(&d, o, pc, lc, norm->chosen_tokens, norm->pairs);
                d_c[c] += w * d;
                continue;
            }
            if (o->kind[t] == PREFOPT_LOSS_AOT || o->kind[t] == PREFOPT_LOSS_AOT_UNPAIRED)
                continue; /* micro-batch level, below */
            if (o->kind[t] == PREFOPT_LOSS_ORPO) {
                total += w * -s->logp_all[c] / norm->chosen_all_tokens;
                d_all[c] += -w / norm->chosen_all_tokens;
            }
            double gt = o->p.gt_reward_scale *
                        ((b->gt_reward_chosen ? b->gt_reward_chosen[i] : o->p.default_chosen_reward) -
                         (b->gt_reward_rejected ? b->gt_reward_rejected[i] : o->p.default_rejected_reward));
            double l = prefopt__pair_loss(g, o->kind[t], o, pc, pr, fc, fr, lc, lr, b->bco_delta, gt);
            double sc = w / norm->pairs;
            total += sc * l;
            d_c[c] += sc * g[0];
            d_c[r] += sc * g[1];
            if (d_ref) {
                d_ref[c] += sc * g[2];
                d_ref[r] += sc * g[3];
            }
        }
        nll_sum += sft_metric(&nll_cnt, o, pc, lc);
        nll_all_sum += -s->logp_all[c];
        if (has_orpo) {
            double ac = fmin(pc / (lc < 1 ? 1 : lc), -1e-30), ar = fmin(pr / (lr < 1 ? 1 : lr), -1e-30);
            double lo = (ac - ar) - (log1mexp(ac) - log1mexp(ar));
            lor_sum += log_sigmoid(lo);
            loc_sum += lo;
        }
        if (m) {
            double xc, xr; /* what the metrics call the log-probs */
            if (o->length_avg_metrics)
                xc = pc / (lc < 1 ? 1 : lc), xr = pr / (lr < 1 ? 1 : lr);
            else
                xc = pc, xr = pr;
            double dummy, alpha = prefopt__has_term(o, PREFOPT_LOSS_SIMPO) ? o->p.alphapo_alpha : 0;
            double wc = o->length_avg_metrics ? beta * prefopt__alphapo_reward(&dummy, alpha, xc) : beta * (pc - fc);
            double wr = o->length_avg_metrics ? beta * prefopt__alphapo_reward(&dummy, alpha, xr) : beta * (pr - fr);
            prefopt_metrics_add(m, PREFOPT_M_REWARDS_CHOSEN, wc, 1);
            prefopt_metrics_add(m, PREFOPT_M_REWARDS_REJECTED, wr, 1);
            prefopt_metrics_add(m, PREFOPT_M_REWARDS_ACCURACIES, wc > wr ? 1 : 0, 1);
            prefopt_metrics_add(m, PREFOPT_M_REWARDS_MARGINS, wc - wr, 1);
            prefopt_metrics_add(m, PREFOPT_M_LOGPS_CHOSEN, xc, 1);
            prefopt_metrics_add(m, PREFOPT_M_LOGPS_REJECTED, xr, 1);
            prefopt_metrics_add(m, PREFOPT_M_LOGITS_CHOSEN, s->logits_sum[c], lc);
            prefopt_metrics_add(m, PREFOPT_M_LOGITS_REJECTED, s->logits_sum[r], lr);
            prefopt_metrics_add(m, PREFOPT_M_MEAN_TOKEN_ACCURACY, s->argmax_hits[c], lc);
        }
    }
    for (int t = 0; t < o->nterms; t++)
        if (o->kind[t] == PREFOPT_LOSS_AOT || o->kind[t] == PREFOPT_LOSS_AOT_UNPAIRED)
            total += aot_term(d_c, d_ref, o, o->kind[t], o->weight[t] / norm->pairs, b);
    if (m) {
        if (has_orpo) {
            double n_all = 0;
            for (int i = 0; i < b->npairs; i++)
                n_all += s->n_all[b->chosen[i]];
            prefopt_metrics_add(m, PREFOPT_M_NLL_LOSS, nll_all_sum, n_all);
            prefopt_metrics_add(m, PREFOPT_M_LOG_ODDS_RATIO, lor_sum, b->npairs);
            prefopt_metrics_add(m, PREFOPT_M_LOG_ODDS_CHOSEN, loc_sum, b->npairs);
        } else if (has_sft) {
            prefopt_metrics_add(m, PREFOPT_M_NLL_LOSS, nll_sum, nll_cnt);
        }
    }
    *loss = total;
    return 0;
}

static int eval_unpaired(double *loss, double *d_c, double *d_ref, prefopt_metrics *m, const prefopt_objective *o,
                         const prefopt_objective_batch *b, const prefopt_objective_norm *norm, prefopt_err *err)
{
    const prefopt_unit_stats *s = b->policy;
    if (check_units(b->example, b->nexamples, b->nunits, "example", err))
        return -1;
    if (b->nexamples > 0 && !b->desirable) {
        prefopt_err_set(err, "objective: unpaired examples without desirable/undesirable labels");
        return -1;
    }
    if (o->uses_kl && isnan(b->kl)) {
        prefopt_err_set(err, "objective: the KTO KL estimate is NaN: a policy or reference log-prob of the mismatched "
                        "KL completions is missing or not finite");
        return -1;
    }
    if (o->uses_kl && !(b->kl >= 0)) {
        prefopt_err_set(err, "objective: the KTO KL estimate must be >= 0 (clamped), got %g", b->kl);
        return -1;
    }
    if (b->nexamples == 0)
        return 0;
    if (need_norm(norm->examples, "number of examples", err))
        return -1;
    double total = 0;
    for (int i = 0; i < b->nexamples; i++) {
        int u = b->example[i];
        double pi = s->logp_completion[u], ref = o->uses_reference ? b->ref_logp[u] : 0;
        int des = b->desirable[i] != 0;
        for (int t = 0; t < o->nterms; t++) {
            double g[2], sc = o->weight[t] / norm->examples;
            total += sc * prefopt_unpaired_loss(g, o->kind[t], o, pi, ref, des, b->kl);
            d_c[u] += sc * g[0];
            if (d_ref)
                d_ref[u] += sc * g[1];
        }
        if (m) {
            double rw = o->p.beta * (pi - ref);
            prefopt_metrics_add(m, des ? PREFOPT_M_REWARDS_CHOSEN : PREFOPT_M_REWARDS_REJECTED, rw, 1);
            prefopt_metrics_add(m, des ? PREFOPT_M_LOGPS_CHOSEN : PREFOPT_M_LOGPS_REJECTED, pi, 1);
            prefopt_metrics_add(m, des ? PREFOPT_M_LOGITS_CHOSEN : PREFOPT_M_LOGITS_REJECTED, s->logits_sum[u],
                                s->n_completion[u]);
        }
    }
    if (m) {
        m->kto = 1;
        /* the count makes it one value per micro-batch and rank, averaged over the step */
        if (o->uses_kl)
            prefopt_metrics_add(m, PREFOPT_M_KL, b->kl, 1);
    }
    *loss = total;
    return 0;
}

static int eval_sft(double *loss, double *d_c, double *d_all, prefopt_metrics *m, const prefopt_objective *o,
                    const prefopt_objective_batch *b, const prefopt_objective_norm *norm, prefopt_err *err)
{
    const prefopt_unit_stats *s = b->policy;
    if (check_units(b->sft, b->nsft, b->nunits, "sft", err))
        return -1;
    if (b->nsft == 0)
        return 0;
    if (o->sft_reduction == PREFOPT_SFT_TOKEN_MEAN ? need_norm(norm->tokens, "number of SFT tokens", err)
                                                   : need_norm(norm->examples, "number of SFT examples", err))
        return -1;
    const int all = o->p.sft_all_tokens;
    double w = o->weight[0], total = 0, nll = 0, ncnt = 0, hits = 0, ncomp = 0;
    for (int i = 0; i < b->nsft; i++) {
        int u = b->sft[i];
        double lp = all ? s->logp_all[u] : s->logp_completion[u], d;
        double ntok = all ? s->n_all[u] : s->n_completion[u];
        total += w * sft_term(&d, o, lp, ntok, norm->tokens, norm->examples);
        (all ? d_all : d_c)[u] += w * d;
        nll += sft_metric(&ncnt, o, lp, ntok);
        hits += s->argmax_hits[u];
        ncomp += s->n_completion[u];
    }
    if (m) {
        prefopt_metrics_add(m, PREFOPT_M_NLL_LOSS, nll, ncnt);
        prefopt_metrics_add(m, PREFOPT_M_MEAN_TOKEN_ACCURACY, hits, ncomp);
    }
    *loss = total;
    return 0;
}

int prefopt_objective_eval(double *loss, double *d_completion, double *d_all, double *d_ref,
                           prefopt_metrics *metrics, const prefopt_objective *obj,
                           const prefopt_objective_batch *b, const prefopt_objective_norm *norm,
                           prefopt_err *err)
{
    *loss = 0;
    if (b->nunits < 0 || (b->nunits > 0 && !b->policy)) {
        prefopt_err_set(err, "objective: a micro-batch with %d units needs the policy statistics", b->nunits);
        return -1;
    }
    for (int u = 0; u < b->nunits; u++) {
        d_completion[u] = 0;
        d_all[u] = 0;
        if (d_ref)
            d_ref[u] = 0;
    }
    if (obj->uses_reference && b->nunits > 0 && !b->ref_logp) {
        prefopt_err_set(err, "objective: \"%s\" needs reference log-probs (or --reference-free)", obj->p.loss);
        return -1;
    }
    int bad = (obj->layout != PREFOPT_LAYOUT_PAIRS && b->npairs) ||
              (obj->layout != PREFOPT_LAYOUT_UNPAIRED && b->nexamples) ||
              (obj->layout != PREFOPT_LAYOUT_SFT && b->nsft);
    if (bad) {
        static const char *names[] = {"pairs", "unpaired examples", "SFT examples"};
        prefopt_err_set(err, "objective: \"%s\" trains on %s, but the micro-batch holds %d pairs, %d unpaired and "
                        "%d SFT examples", obj->p.loss, names[obj->layout], b->npairs, b->nexamples, b->nsft);
        return -1;
    }
    int rc;
    switch (obj->layout) {
    case PREFOPT_LAYOUT_PAIRS:
        rc = eval_pairs(loss, d_completion, d_all, d_ref, metrics, obj, b, norm, err);
        break;
    case PREFOPT_LAYOUT_UNPAIRED:
        rc = eval_unpaired(loss, d_completion, d_ref, metrics, obj, b, norm, err);
        break;
    default:
        rc = eval_sft(loss, d_completion, d_all, metrics, obj, b, norm, err);
        break;
    }
    if (rc == 0 && metrics)
        prefopt_metrics_add(metrics, PREFOPT_M_LOSS, *loss, 1);
    return rc;
}
