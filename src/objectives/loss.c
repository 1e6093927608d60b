/* The per-pair and per-example kernels of the objectives: loss and gradient with respect to the sequence
 * log-probs, in double (the inputs are sums over hundreds of tokens and the losses subtract them). */
#include "objectives_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -(1-e) log sig(z) - e log sig(-z) and its derivative in z. */
double prefopt__smoothed_sigmoid_loss(double *dz, double z, double e)
{
    *dz = -(1 - e) * sigmoid(-z) + e * sigmoid(z);
    return -(1 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
}

/* AlphaPO's reward of a mean log-prob x: (1 - p^-a)/a with p = e^x, i.e. -expm1(-a x)/a; x itself at a = 0. */
double prefopt__alphapo_reward(double *deriv, double a, double x)
{
    if (a == 0) {
        *deriv = 1;
        return x;
    }
    *deriv = exp(-a * x);
    return -expm1(-a * x) / a;
}

/* The f-divergence score s = f(r) of a log-ratio and f'(r) (TRL-1.x _compute_loss). */
static double fdiv_score(double *deriv, const prefopt_objective *o, double r)
{
    switch (o->fdiv) {
    case PREFOPT_FDIV_FORWARD_KL:
        *deriv = exp(-r);
        return -exp(-r);
    case PREFOPT_FDIV_JS:
        *deriv = sigmoid(-r);
        return log_sigmoid(r);
    case PREFOPT_FDIV_ALPHA: {
        double a1 = o->p.f_alpha_divergence_coef - 1, t = a1 * r;
        if (fabs(a1) < 1e-6) /* a = 1 is reverse KL, as in TRL */
            break;
        /* TRL clamps (a-1) r at 80 (fp32) before exp; past it the score is flat and has no gradient */
        *deriv = t <= 80 ? exp(t) : 0;
        return exp(fmin(t, 80)) / a1;
    }
    default:
        break;
    }
    *deriv = 1;
    return r;
}

double prefopt_pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c,
                         double pi_r, double ref_c, double ref_r, double len_c, double len_r)
{
    const prefopt_objective_params *p = &obj->p;
    return prefopt__pair_loss(grad, k, obj, pi_c, pi_r, ref_c, ref_r, len_c, len_r, 0.0,
                              p->gt_reward_scale * (p->default_chosen_reward - p->default_rejected_reward));
}

double prefopt__pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c, double pi_r,
                          double ref_c, double ref_r, double len_c, double len_r, double bco_delta, double gt_delta)
{
    const double b = obj->p.beta, e = obj->p.label_smoothing;
    const double raw_c = pi_c - ref_c, raw_r = pi_r - ref_r;
    /* TRL-1.x passes the log-ratios through the f-divergence score first; apo_zero, apo_down's first term
     * and aot keep the raw log-ratios. fc, fr: the score's derivatives, applied to d_rc, d_rr at the end. */
    double fc, fr;
    const double rc = fdiv_score(&fc, obj, raw_c), rr = fdiv_score(&fr, obj, raw_r);
    const double delta = rc - rr, z = b * delta;
    const double lc = len_c < 1 ? 1 : len_c, lr = len_r < 1 ? 1 : len_r;
    double l, dz = 0; /* loss terms of z = beta*delta report dz; others set d_rc, d_rr directly */
    double d_rc = 0, d_rr = 0, d_raw_c = 0; /* d_raw_c: the part of d/d r_c that bypasses the score */
    int via_z = 1;
    grad[0] = grad[1] = grad[2] = grad[3] = 0;
    switch (k) {
    case PREFOPT_LOSS_DPO:
        l = prefopt__smoothed_sigmoid_loss(&dz, z, obj->p.cdpo ? e : 0.0);
        break;
    case PREFOPT_LOSS_HINGE:
        l = z < 1 ? 1 - z : 0;
        dz = z < 1 ? -1 : 0;
        break;
    case PREFOPT_LOSS_ROBUST:
        l = (-(1 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1 - 2 * e);
        dz = (-(1 - e) * sigmoid(-z) - e * sigmoid(z)) / (1 - 2 * e);
        break;
    case PREFOPT_LOSS_EXO_PAIR: {
        double qw = sigmoid(z), ql = sigmoid(-z);
        l = qw * (log_sigmoid(z) - log1p(-e)) + ql * (log_sigmoid(-z) - log(e));
        /* d/dz: qw' = -ql' = qw*ql and log sig(z) - log sig(-z) = z, the rest cancels */
        dz = qw * ql * (z - log1p(-e) + log(e));
        break;
    }
    case PREFOPT_LOSS_APO_DOWN: {
        double sc = sigmoid(b * raw_c), sz = sigmoid(z);
        l = sc + (1 - sz);
        dz = -sz * (1 - sz);
        d_raw_c = b * sc * (1 - sc);
        break;
    }
    case PREFOPT_LOSS_DISCOPOP: {
        double tau = obj->p.discopop_tau;
        double m = sigmoid(z / tau), lsz = log_sigmoid(z);
        double em = exp(log_sigmoid(z / tau) - z); /* m * exp(-z) without overflow for very negative z */
        /* dl/dz = m' log sig(z) - (1-m) sig(-z) + m' e^{-z} - m e^{-z}, m' = m(1-m)/tau, in log space */
        double dm = m * (1 - m) / tau;
        l = (1 - m) * (-lsz) + em;
        dz = dm * lsz - (1 - m) * sigmoid(-z) + exp(log_sigmoid(z / tau) + log_sigmoid(-z / tau) - z) / tau - em;
        break;
    }
    case PREFOPT_LOSS_RPO_SQ:
        l = (z - gt_delta) * (z - gt_delta);
        dz = 2 * (z - gt_delta);
        break;
    case PREFOPT_LOSS_RPO_BWD_KL: { /* KL(Bernoulli(sig g) || Bernoulli(sig z)) */
        double ag = sigmoid(gt_delta), bg = sigmoid(-gt_delta);
        l = ag * (log_sigmoid(gt_delta) - log_sigmoid(z)) + bg * (log_sigmoid(-gt_delta) - log_sigmoid(-z));
        dz = sigmoid(z) - ag;
        break;
    }
    case PREFOPT_LOSS_RPO_FWD_KL: { /* KL(Bernoulli(sig z) || Bernoulli(sig g)) */
        double az = sigmoid(z), bz = sigmoid(-z);
        l = az * (log_sigmoid(z) - log_sigmoid(gt_delta)) + bz * (log_sigmoid(-z) - log_sigmoid(-gt_delta));
        dz = az * bz * (z - gt_delta);
        break;
    }
    default:
        via_z = 0;
        break;
    }
    if (via_z) {
        d_rc = b * dz * fc + d_raw_c;
        d_rr = -b * dz * fr;
        grad[0] = d_rc, grad[1] = d_rr, grad[2] = -d_rc, grad[3] = -d_rr;
        return l;
    }
    switch (k) {
    case PREFOPT_LOSS_IPO: {
        double u = rc / lc - rr / lr - 1 / (2 * b);
        l = u * u;
        d_rc = 2 * u / lc;
        d_rr = -2 * u / lr;
        break;
    }
    case PREFOPT_LOSS_NCA_PAIR:
        l = -log_sigmoid(b * rc) - 0.5 * log_sigmoid(-b * rc) - 0.5 * log_sigmoid(-b * rr);
        d_rc = -b * sigmoid(-b * rc) + 0.5 * b * sigmoid(b * rc);
        d_rr = 0.5 * b * sigmoid(b * rr);
        break;
    case PREFOPT_LOSS_BCO_PAIR:
        l = -log_sigmoid(b * rc - bco_delta) - log_sigmoid(-(b * rr - bco_delta));
        d_rc = -b * sigmoid(-(b * rc - bco_delta));
        d_rr = b * sigmoid(b * rr - bco_delta);
        break;
    case PREFOPT_LOSS_SPPO_HARD: {
        double a = rc - 1 / (2 * b), c = rr + 1 / (2 * b);
        l = a * a + c * c;
        d_rc = 2 * a;
        d_rr = 2 * c;
        break;
    }
    case PREFOPT_LOSS_APO_ZERO: { /* raw log-ratios: undo the chain factor applied below */
        double sc = sigmoid(b * raw_c), sr = sigmoid(b * raw_r);
        l = (1 - sc) + sr;
        d_rc = -b * sc * (1 - sc);
        d_rr = b * sr * (1 - sr);
        fc = fr = 1;
        break;
    }
    case PREFOPT_LOSS_SIGMOID_NORM: {
        double x = b * (rc / lc - rr / lr);
        l = -log_sigmoid(x);
        d_rc = -b * sigmoid(-x) / lc;
        d_rr = b * sigmoid(-x) / lr;
        break;
    }
    case PREFOPT_LOSS_SIMPO: {
        double dRc, dRr;
        double Rc = prefopt__alphapo_reward(&dRc, obj->p.alphapo_alpha, pi_c / lc);
        double Rr = prefopt__alphapo_reward(&dRr, obj->p.alphapo_alpha, pi_r / lr);
        double h = b * (Rc - Rr) - obj->gamma, dh;
        l = prefopt__smoothed_sigmoid_loss(&dh, h, e);
        grad[0] = dh * b * dRc / lc;
        grad[1] = -dh * b * dRr / lr;
        return l; /* no reference */
    }
    case PREFOPT_LOSS_ORPO: {
        /* p = 0 (probability 1) makes log1mexp infinite; the gradient has a finite limit, reached numerically
         * by keeping p a hair below 0. */
        double pc = fmin(pi_c / lc, -1e-30), pr = fmin(pi_r / lr, -1e-30);
        double lo = (pc - pr) - (log1mexp(pc) - log1mexp(pr));
        l = -b * log_sigmoid(lo);
        double dlo = -b * sigmoid(-lo);
        /* d lo / d pc = 1/(1 - e^pc) = -1/expm1(pc); d lo / d pr = 1/expm1(pr) */
        grad[0] = dlo * (-1 / expm1(pc)) / lc;
        grad[1] = dlo * (1 / expm1(pr)) / lr;
        return l;
    }
    default:
        return NAN;
    }
    d_rc *= fc;
    d_rr *= fr;
    grad[0] = d_rc, grad[1] = d_rr, grad[2] = -d_rc, grad[3] = -d_rr;
    return l;
}

double prefopt_unpaired_loss(double grad[2], prefopt_loss_kind k, const prefopt_objective *obj, double pi,
                             double ref, int desirable, double kl)
{
    const double b = obj->p.beta, r = pi - ref;
    double l, dr;
    grad[0] = grad[1] = 0;
    if (k == PREFOPT_LOSS_KTO) {
        if (desirable) {
            double s = sigmoid(b * (r - kl));
            l = obj->p.desirable_weight * (1 - s);
            dr = -obj->p.desirable_weight * b * s * (1 - s);
        } else {
            double s = sigmoid(b * (kl - r));
            l = obj->p.undesirable_weight * (1 - s);
            dr = obj->p.undesirable_weight * b * s * (1 - s);
        }
    } else if (k == PREFOPT_LOSS_APO_ZERO_UNPAIRED) {
        double s = sigmoid(b * r);
        l = desirable ? 1 - s : s;
        dr = (desirable ? -1 : 1) * b * s * (1 - s);
    } else {
        return NAN;
    }
    grad[0] = dr;
    grad[1] = -dr;
    return l;
}

double prefopt_kto_kl(const double *policy_logp, const double *ref_logp, int n, const prefopt_reduction *sum)
{
    double s[2] = {0, (double)n};
    for (int i = 0; i < n; i++)
        s[0] += policy_logp[i] - ref_logp[i];
    prefopt_reduce_sum(sum, s, 2);
    if (s[1] == 0)
        return 0;
    double kl = s[0] / s[1];
    if (isnan(kl)) /* a missing reference log-prob must not be clamped into a plausible 0 */
        return NAN;
    return kl > 0 ? kl : 0;
}

double prefopt_bco_update(prefopt_bco_state *st, const prefopt_objective *obj, prefopt_objective_batch *b,
                          const prefopt_reduction *sum)
{
    /* this rank's micro-batch mean of the detached rewards [beta r_c ; beta r_r] */
    double s[2] = {0, 0};
    if (b->npairs > 0) {
        double sum = 0;
        for (int i = 0; i < b->npairs; i++) {
            int c = b->chosen[i], r = b->rejected[i];
            double fc = obj->uses_reference ? b->ref_logp[c] : 0, fr = obj->uses_reference ? b->ref_logp[r] : 0;
            sum += obj->p.beta * (b->policy->logp_completion[c] - fc) + obj->p.beta * (b->policy->logp_completion[r] - fr);
        }
        s[0] = sum / (2.0 * b->npairs);
        s[1] = 1;
    }
    prefopt_reduce_sum(sum, s, 2);
    if (s[1] > 0) { /* RunningMoments.update on one value per rank: a count-weighted running mean */
        double xs_mean = s[0] / s[1], tot = st->count + s[1];
        st->mean += (xs_mean - st->mean) * s[1] / tot;
        st->count = tot;
    }
    b->bco_delta = st->mean;
    b->bco_ready = 1;
    return st->mean;
}
