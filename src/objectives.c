/* Preference objectives and SFT: loss and gradient with respect to sequence log-probs (see objectives.h).
 * Everything is in double: the inputs are sums over hundreds of tokens and the losses subtract them. */
#include "prefopt/objectives.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    prefopt_loss_kind kind;
} loss_names[] = {
    {"sft", PREFOPT_LOSS_SFT},           {"dpo", PREFOPT_LOSS_DPO},
    {"sigmoid", PREFOPT_LOSS_DPO},       {"hinge", PREFOPT_LOSS_HINGE},
    {"ipo", PREFOPT_LOSS_IPO},           {"robust", PREFOPT_LOSS_ROBUST},
    {"exo_pair", PREFOPT_LOSS_EXO_PAIR}, {"nca_pair", PREFOPT_LOSS_NCA_PAIR},
    {"bco_pair", PREFOPT_LOSS_BCO_PAIR}, {"sppo_hard", PREFOPT_LOSS_SPPO_HARD},
    {"apo_zero", PREFOPT_LOSS_APO_ZERO}, {"apo_down", PREFOPT_LOSS_APO_DOWN},
    {"discopop", PREFOPT_LOSS_DISCOPOP}, {"sigmoid_norm", PREFOPT_LOSS_SIGMOID_NORM},
    {"simpo", PREFOPT_LOSS_SIMPO},       {"orpo", PREFOPT_LOSS_ORPO},
    {"kto", PREFOPT_LOSS_KTO},           {"apo_zero_unpaired", PREFOPT_LOSS_APO_ZERO_UNPAIRED},
    {"aot", PREFOPT_LOSS_AOT},           {"aot_unpaired", PREFOPT_LOSS_AOT_UNPAIRED},
};
#define NLOSS_NAMES ((int)(sizeof loss_names / sizeof loss_names[0]))

const char *prefopt_loss_name(prefopt_loss_kind k)
{
    for (int i = 0; i < NLOSS_NAMES; i++)
        if (loss_names[i].kind == k)
            return loss_names[i].name;
    return "?";
}

static int is_unpaired(prefopt_loss_kind k)
{
    return k == PREFOPT_LOSS_KTO || k == PREFOPT_LOSS_APO_ZERO_UNPAIRED;
}

/* Terms whose formula has a reference log-prob in it. */
static int reads_reference(prefopt_loss_kind k)
{
    return !(k == PREFOPT_LOSS_SFT || k == PREFOPT_LOSS_SIMPO || k == PREFOPT_LOSS_ORPO);
}

/* ---- parameters ------------------------------------------------------------------------------------------ */

void prefopt_objective_params_default(prefopt_objective_params *p)
{
    memset(p, 0, sizeof *p);
    p->loss = "dpo";
    p->beta = 0.1;
    p->label_smoothing = 0.0;
    p->simpo_gamma = 0.5;
    p->discopop_tau = 0.05;
    p->desirable_weight = 1.0;
    p->undesirable_weight = 1.0;
    p->ref_mixup_alpha = 0.6;
    p->sft_reduction = "token";
    p->f_divergence = "reverse_kl";
    p->f_alpha_divergence_coef = 0.5;
}

int prefopt_objective_options(prefopt_opt *out, int max, prefopt_objective_params *p)
{
    const prefopt_opt t[] = {
        {"loss", PREFOPT_OPT_STRING, &p->loss, "dpo",
         "objective: NAME[:WEIGHT],... of sft dpo(=sigmoid) hinge ipo robust exo_pair nca_pair bco_pair sppo_hard "
         "apo_zero apo_down discopop sigmoid_norm aot aot_unpaired simpo orpo kto apo_zero_unpaired; e.g. dpo:1,sft:0.2 (RPO)"},
        {"beta", PREFOPT_OPT_DOUBLE, &p->beta, "0.1", "beta of the DPO family, KTO and SimPO; lambda of ORPO"},
        {"label-smoothing", PREFOPT_OPT_DOUBLE, &p->label_smoothing, "0",
         "epsilon of robust, exo_pair, simpo, and of dpo with --cdpo"},
        {"cdpo", PREFOPT_OPT_FLAG, &p->cdpo, "0", "apply label smoothing to dpo (cDPO, as TRL 0.27 did)"},
        {"simpo-gamma", PREFOPT_OPT_DOUBLE, &p->simpo_gamma, "0.5", "SimPO margin gamma (absolute)"},
        {"simpo-gamma-beta-ratio", PREFOPT_OPT_DOUBLE, &p->simpo_gamma_beta_ratio, "0",
         "when non-zero, SimPO gamma = ratio * beta (overrides --simpo-gamma)"},
        {"discopop-tau", PREFOPT_OPT_DOUBLE, &p->discopop_tau, "0.05", "temperature of discopop"},
        {"desirable-weight", PREFOPT_OPT_DOUBLE, &p->desirable_weight, "1.0", "KTO weight of desirable examples"},
        {"undesirable-weight", PREFOPT_OPT_DOUBLE, &p->undesirable_weight, "1.0",
         "KTO weight of undesirable examples"},
        {"reference-free", PREFOPT_OPT_FLAG, &p->reference_free, "0",
         "use a zero reference log-prob (no reference model)"},
        {"sft-all-tokens", PREFOPT_OPT_FLAG, &p->sft_all_tokens, "0",
         "plain-text SFT: the loss covers every predicted token, not only completions"},
        {"ref-sync-steps", PREFOPT_OPT_LONG, &p->ref_sync_steps, "0",
         "TR-DPO: mix the reference towards the policy every N optimizer steps (0: never)"},
        {"ref-mixup-alpha", PREFOPT_OPT_DOUBLE, &p->ref_mixup_alpha, "0.6", "TR-DPO: ref <- (1-a) ref + a policy"},
        {"alphapo-alpha", PREFOPT_OPT_DOUBLE, &p->alphapo_alpha, "0",
         "AlphaPO: simpo compares (1 - p^-alpha)/alpha of the mean token probability p (0: plain SimPO)"},
        {"bco-running-mean", PREFOPT_OPT_FLAG, &p->bco_running_mean, "0",
         "bco_pair as TRL 0.27: shift the rewards by their running mean over steps and ranks"},
        {"sft-reduction", PREFOPT_OPT_STRING, &p->sft_reduction, "token",
         "NLL of the sft term: token (mean over all tokens, TRL), sequence_mean (mean of per-sequence token "
         "means, OpenRLHF) or sequence_sum (mean of per-sequence sums, NeMo)"},
        {"rpo-alpha", PREFOPT_OPT_DOUBLE, &p->rpo_alpha, "0",
         "RPO (TRL 0.27 rpo_alpha): add the chosen NLL with this weight; the same as \",sft:ALPHA\" in --loss"},
        {"f-divergence", PREFOPT_OPT_STRING, &p->f_divergence, "reverse_kl",
         "f-DPO score of the log-ratios: reverse_kl, forward_kl, js_divergence or alpha_divergence"},
        {"f-alpha-divergence-coef", PREFOPT_OPT_DOUBLE, &p->f_alpha_divergence_coef, "0.5",
         "coefficient a of alpha_divergence (1 = reverse_kl)"},
    };
    int n = (int)(sizeof t / sizeof t[0]);
    if (n > max)
        return -1;
    memcpy(out, t, sizeof t);
    return n;
}

static int parse_terms(prefopt_objective *o, const char *spec, prefopt_err *err)
{
    if (!spec || !*spec) {
        prefopt_err_set(err, "--loss is empty; give e.g. \"dpo\" or \"dpo:1,sft:0.2\"");
        return -1;
    }
    char buf[512];
    if (strlen(spec) >= sizeof buf) {
        prefopt_err_set(err, "--loss \"%.40s...\" is too long", spec);
        return -1;
    }
    strcpy(buf, spec);
    o->nterms = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        char *colon = strchr(tok, ':');
        double w = 1.0;
        if (colon) {
            *colon = '\0';
            char *end = NULL;
            w = strtod(colon + 1, &end);
            while (end && *end == ' ')
                end++;
            if (end == colon + 1 || *end != '\0' || !isfinite(w) || w < 0) {
                prefopt_err_set(err, "--loss \"%s\": weight of \"%s\" must be a finite number >= 0, got \"%s\"",
                                spec, tok, colon + 1);
                return -1;
            }
        }
        size_t len = strlen(tok);
        while (len > 0 && tok[len - 1] == ' ')
            tok[--len] = '\0';
        int found = -1;
        for (int i = 0; i < NLOSS_NAMES; i++)
            if (strcmp(tok, loss_names[i].name) == 0)
                found = i;
        if (found < 0) {
            prefopt_err_set(err, "--loss \"%s\": unknown loss \"%s\" (known: sft dpo sigmoid hinge ipo robust "
                            "exo_pair nca_pair bco_pair sppo_hard apo_zero apo_down discopop sigmoid_norm simpo "
                            "aot aot_unpaired orpo kto apo_zero_unpaired)", spec, tok);
            return -1;
        }
        for (int j = 0; j < o->nterms; j++)
            if (o->kind[j] == loss_names[found].kind) {
                prefopt_err_set(err, "--loss \"%s\": \"%s\" appears twice", spec, tok);
                return -1;
            }
        if (o->nterms == PREFOPT_MAX_LOSS_TERMS) {
            prefopt_err_set(err, "--loss \"%s\": more than %d terms", spec, PREFOPT_MAX_LOSS_TERMS);
            return -1;
        }
        o->kind[o->nterms] = loss_names[found].kind;
        o->weight[o->nterms] = w;
        o->nterms++;
    }
    if (o->nterms == 0) {
        prefopt_err_set(err, "--loss \"%s\" names no loss", spec);
        return -1;
    }
    return 0;
}

static int has_term(const prefopt_objective *o, prefopt_loss_kind k)
{
    for (int i = 0; i < o->nterms; i++)
        if (o->kind[i] == k)
            return 1;
    return 0;
}

int prefopt_objective_init(prefopt_objective *obj, const prefopt_objective_params *p, prefopt_err *err)
{
    memset(obj, 0, sizeof *obj);
    obj->p = *p;
    if (parse_terms(obj, p->loss, err))
        return -1;
    const char *spec = p->loss;
    if (p->rpo_alpha != 0) {
        if (!(p->rpo_alpha > 0) || !isfinite(p->rpo_alpha)) {
            prefopt_err_set(err, "--rpo-alpha must be a finite number > 0, got %g", p->rpo_alpha);
            return -1;
        }
        if (has_term(obj, PREFOPT_LOSS_SFT)) {
            prefopt_err_set(err, "--rpo-alpha and an sft term in --loss \"%s\" are the same thing; give one", spec);
            return -1;
        }
        if (obj->nterms == PREFOPT_MAX_LOSS_TERMS) {
            prefopt_err_set(err, "--loss \"%s\" plus --rpo-alpha: more than %d terms", spec, PREFOPT_MAX_LOSS_TERMS);
            return -1;
        }
        obj->kind[obj->nterms] = PREFOPT_LOSS_SFT;
        obj->weight[obj->nterms++] = p->rpo_alpha;
    }
    int n_unpaired = 0, n_pair = 0, uses_eps = 0, only_reffree = 1;
    for (int i = 0; i < obj->nterms; i++) {
        prefopt_loss_kind k = obj->kind[i];
        n_unpaired += is_unpaired(k);
        n_pair += !is_unpaired(k) && k != PREFOPT_LOSS_SFT;
        if (k == PREFOPT_LOSS_ROBUST || k == PREFOPT_LOSS_EXO_PAIR || k == PREFOPT_LOSS_SIMPO ||
            k == PREFOPT_LOSS_AOT || k == PREFOPT_LOSS_AOT_UNPAIRED ||
            (k == PREFOPT_LOSS_DPO && p->cdpo))
            uses_eps = 1;
        if (reads_reference(k))
            only_reffree = 0;
    }
    if (n_unpaired && (n_pair || has_term(obj, PREFOPT_LOSS_SFT))) {
        prefopt_err_set(err, "--loss \"%s\": kto and apo_zero_unpaired train on unpaired examples and cannot be "
                        "combined with pair losses or sft", spec);
        return -1;
    }
    obj->layout = n_unpaired ? PREFOPT_LAYOUT_UNPAIRED : n_pair ? PREFOPT_LAYOUT_PAIRS : PREFOPT_LAYOUT_SFT;
    if (!(p->beta > 0) || !isfinite(p->beta)) {
        prefopt_err_set(err, "--beta must be > 0, got %g", p->beta);
        return -1;
    }
    double e = p->label_smoothing;
    if (!(e >= 0 && e <= 0.5)) {
        prefopt_err_set(err, "--label-smoothing must be in [0, 0.5], got %g", e);
        return -1;
    }
    if (e != 0 && !uses_eps) {
        prefopt_err_set(err, "--label-smoothing %g is read by none of the losses in \"%s\" (it is read by robust, "
                        "exo_pair, aot, aot_unpaired, simpo, and by dpo with --cdpo as TRL 0.27 did)", e, spec);
        return -1;
    }
    if (has_term(obj, PREFOPT_LOSS_ROBUST) && !(e < 0.5)) {
        prefopt_err_set(err, "robust needs --label-smoothing in [0, 0.5) (it divides by 1 - 2e), got %g", e);
        return -1;
    }
    if (has_term(obj, PREFOPT_LOSS_EXO_PAIR) && !(e > 0)) {
        prefopt_err_set(err, "exo_pair needs --label-smoothing > 0 (it takes log e; the EXO paper recommends 1e-3)");
        return -1;
    }
    if (has_term(obj, PREFOPT_LOSS_DISCOPOP) && !(p->discopop_tau > 0)) {
        prefopt_err_set(err, "--discopop-tau must be > 0, got %g", p->discopop_tau);
        return -1;
    }
    if (!(p->desirable_weight >= 0) || !(p->undesirable_weight >= 0)) {
        prefopt_err_set(err, "--desirable-weight and --undesirable-weight must be >= 0, got %g and %g",
                        p->desirable_weight, p->undesirable_weight);
        return -1;
    }
    if (p->ref_sync_steps < 0) {
        prefopt_err_set(err, "--ref-sync-steps must be >= 0, got %ld", p->ref_sync_steps);
        return -1;
    }
    if (p->ref_sync_steps > 0 && !(p->ref_mixup_alpha > 0 && p->ref_mixup_alpha <= 1)) {
        prefopt_err_set(err, "--ref-mixup-alpha must be in (0, 1], got %g", p->ref_mixup_alpha);
        return -1;
    }
    if (p->bco_running_mean && !has_term(obj, PREFOPT_LOSS_BCO_PAIR)) {
        prefopt_err_set(err, "--bco-running-mean applies to bco_pair, which \"%s\" does not contain", spec);
        return -1;
    }
    obj->uses_bco_delta = p->bco_running_mean != 0;
    if (p->alphapo_alpha != 0 && (!isfinite(p->alphapo_alpha) || !has_term(obj, PREFOPT_LOSS_SIMPO))) {
        prefopt_err_set(err, "--alphapo-alpha %g applies to simpo only (and must be finite)", p->alphapo_alpha);
        return -1;
    }
    obj->gamma = p->simpo_gamma_beta_ratio != 0 ? p->simpo_gamma_beta_ratio * p->beta : p->simpo_gamma;
    if (!isfinite(obj->gamma)) {
        prefopt_err_set(err, "SimPO gamma is not finite");
        return -1;
    }
    const char *sr = p->sft_reduction && *p->sft_reduction ? p->sft_reduction : "token";
    if (!strcmp(sr, "token"))
        obj->sft_reduction = PREFOPT_SFT_TOKEN_MEAN;
    else if (!strcmp(sr, "sequence_mean"))
        obj->sft_reduction = PREFOPT_SFT_SEQ_MEAN;
    else if (!strcmp(sr, "sequence_sum"))
        obj->sft_reduction = PREFOPT_SFT_SEQ_SUM;
    else {
        prefopt_err_set(err, "--sft-reduction \"%s\" is not one of token, sequence_mean, sequence_sum", sr);
        return -1;
    }
    const char *fd = p->f_divergence && *p->f_divergence ? p->f_divergence : "reverse_kl";
    if (!strcmp(fd, "reverse_kl"))
        obj->fdiv = PREFOPT_FDIV_REVERSE_KL;
    else if (!strcmp(fd, "forward_kl"))
        obj->fdiv = PREFOPT_FDIV_FORWARD_KL;
    else if (!strcmp(fd, "js_divergence"))
        obj->fdiv = PREFOPT_FDIV_JS;
    else if (!strcmp(fd, "alpha_divergence"))
        obj->fdiv = PREFOPT_FDIV_ALPHA;
    else {
        prefopt_err_set(err, "--f-divergence \"%s\" is not one of reverse_kl, forward_kl, js_divergence, "
                        "alpha_divergence", fd);
        return -1;
    }
    if (obj->fdiv == PREFOPT_FDIV_ALPHA && !isfinite(p->f_alpha_divergence_coef)) {
        prefopt_err_set(err, "--f-alpha-divergence-coef must be finite");
        return -1;
    }
    if (obj->fdiv != PREFOPT_FDIV_REVERSE_KL)
        for (int i = 0; i < obj->nterms; i++) {
            prefopt_loss_kind k = obj->kind[i];
            if (k == PREFOPT_LOSS_SIMPO || k == PREFOPT_LOSS_ORPO || is_unpaired(k) ||
                obj->layout == PREFOPT_LAYOUT_SFT) {
                prefopt_err_set(err, "--f-divergence %s applies to the DPO pair losses, not to %s", fd,
                                prefopt_loss_name(k));
                return -1;
            }
        }
    obj->uses_reference = !p->reference_free && !only_reffree;
    if (p->ref_sync_steps > 0 && !obj->uses_reference) {
        prefopt_err_set(err, "--ref-sync-steps needs a reference model, but \"%s\"%s uses none", spec,
                        p->reference_free ? " with --reference-free" : "");
        return -1;
    }
    obj->uses_kl = has_term(obj, PREFOPT_LOSS_KTO);
    if (obj->uses_kl && p->reference_free) {
        prefopt_err_set(err, "kto needs a reference model (--reference-free is not allowed)");
        return -1;
    }
    obj->length_avg_metrics = only_reffree && obj->layout == PREFOPT_LAYOUT_PAIRS;
    return 0;
}

int prefopt_objective_ref_sync_due(const prefopt_objective *obj, long step)
{
    return obj->p.ref_sync_steps > 0 && step > 0 && step % obj->p.ref_sync_steps == 0;
}

/* ---- the per-pair and per-example kernels ---------------------------------------------------------------- */

static double log_sigmoid(double x)
{
    return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
}

static double sigmoid(double x)
{
    if (x >= 0)
        return 1.0 / (1.0 + exp(-x));
    double t = exp(x);
    return t / (1.0 + t);
}

/* log(1 - e^x) for x < 0, the two-branch form of Maechler's note (switch at -ln 2). */
static double log1mexp(double x)
{
    return x < -M_LN2 ? log1p(-exp(x)) : log(-expm1(x));
}

/* -(1-e) log sig(z) - e log sig(-z) and its derivative in z. */
static double smoothed_sigmoid_loss(double *dz, double z, double e)
{
    *dz = -(1 - e) * sigmoid(-z) + e * sigmoid(z);
    return -(1 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
}

/* AlphaPO's reward of a mean log-prob x: (1 - p^-a)/a with p = e^x, i.e. -expm1(-a x)/a; x itself at a = 0. */
static double alphapo_reward(double *deriv, double a, double x)
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

static double pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c, double pi_r,
                        double ref_c, double ref_r, double len_c, double len_r, double bco_delta);

double prefopt_pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c,
                         double pi_r, double ref_c, double ref_r, double len_c, double len_r)
{
    return pair_loss(grad, k, obj, pi_c, pi_r, ref_c, ref_r, len_c, len_r, 0.0);
}

/* bco_delta: TRL-0.27's running-mean shift of bco_pair (0 in TRL-1.x). */
static double pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c, double pi_r,
                        double ref_c, double ref_r, double len_c, double len_r, double bco_delta)
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
        l = smoothed_sigmoid_loss(&dz, z, obj->p.cdpo ? e : 0.0);
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
        double Rc = alphapo_reward(&dRc, obj->p.alphapo_alpha, pi_c / lc);
        double Rr = alphapo_reward(&dRr, obj->p.alphapo_alpha, pi_r / lr);
        double h = b * (Rc - Rr) - obj->gamma, dh;
        l = smoothed_sigmoid_loss(&dh, h, e);
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

double prefopt_kto_kl(const double *policy_logp, const double *ref_logp, int n, MPI_Comm comm)
{
    double s[2] = {0, (double)n};
    for (int i = 0; i < n; i++)
        s[0] += policy_logp[i] - ref_logp[i];
    if (comm != MPI_COMM_NULL)
        MPI_Allreduce(MPI_IN_PLACE, s, 2, MPI_DOUBLE, MPI_SUM, comm);
    if (s[1] == 0)
        return 0;
    double kl = s[0] / s[1];
    return kl > 0 ? kl : 0;
}

double prefopt_bco_update(prefopt_bco_state *st, const prefopt_objective *obj, const prefopt_objective_batch *b,
                          MPI_Comm comm)
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
    if (comm != MPI_COMM_NULL)
        MPI_Allreduce(MPI_IN_PLACE, s, 2, MPI_DOUBLE, MPI_SUM, comm);
    if (s[1] > 0) { /* RunningMoments.update on one value per rank: a count-weighted running mean */
        double xs_mean = s[0] / s[1], tot = st->count + s[1];
        st->mean += (xs_mean - st->mean) * s[1] / tot;
        st->count = tot;
    }
    return st->mean;
}

/* ---- batches --------------------------------------------------------------------------------------------- */

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

void prefopt_objective_norm_allreduce(prefopt_objective_norm *n, MPI_Comm comm)
{
    double v[5] = {n->pairs, n->chosen_tokens, n->chosen_all_tokens, n->examples, n->tokens};
    MPI_Allreduce(MPI_IN_PLACE, v, 5, MPI_DOUBLE, MPI_SUM, comm);
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
        total += scale * smoothed_sigmoid_loss(&dz, z, o->p.label_smoothing);
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
    int has_sft = has_term(o, PREFOPT_LOSS_SFT), has_orpo = has_term(o, PREFOPT_LOSS_ORPO);
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
            double l = pair_loss(g, o->kind[t], o, pc, pr, fc, fr, lc, lr, b->bco_delta);
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
            double dummy, alpha = has_term(o, PREFOPT_LOSS_SIMPO) ? o->p.alphapo_alpha : 0;
            double wc = o->length_avg_metrics ? beta * alphapo_reward(&dummy, alpha, xc) : beta * (pc - fc);
            double wr = o->length_avg_metrics ? beta * alphapo_reward(&dummy, alpha, xr) : beta * (pr - fr);
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
