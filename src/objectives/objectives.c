/* Preference objectives and SFT (see objectives.h): names, parameters and their validation. The kernels are in
 * objectives_loss.c, micro-batches and normalisation in objectives_batch.c. */
#include "objectives_internal.h"

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
    {"rpo_sq", PREFOPT_LOSS_RPO_SQ},     {"rpo_fwd_kl", PREFOPT_LOSS_RPO_FWD_KL},
    {"rpo_bwd_kl", PREFOPT_LOSS_RPO_BWD_KL},
};
#define NLOSS_NAMES ((int)(sizeof loss_names / sizeof loss_names[0]))

const char *prefopt_loss_name(prefopt_loss_kind k)
{
    for (int i = 0; i < NLOSS_NAMES; i++)
        if (loss_names[i].kind == k)
            return loss_names[i].name;
    return "?";
}

int prefopt__is_unpaired(prefopt_loss_kind k)
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
    p->loss_weights = "";
    p->beta = 0.1;
    p->label_smoothing = 0.0;
    p->simpo_gamma = 0.5;
    p->discopop_tau = 0.05;
    p->desirable_weight = 1.0;
    p->undesirable_weight = 1.0;
    p->ref_mixup_alpha = 0.6;
    p->sft_reduction = "token";
    p->gt_reward_scale = 1.0;
    p->default_chosen_reward = 1.0;
    p->default_rejected_reward = 0.0;
    p->f_divergence = "reverse_kl";
    p->f_alpha_divergence_coef = 0.5;
}

int prefopt_objective_options(prefopt_opt *out, int max, prefopt_objective_params *p)
{
    const prefopt_opt t[] = {
        {"loss", PREFOPT_OPT_STRING, &p->loss, "dpo",
         "objective: NAME[:WEIGHT],... of sft dpo(=sigmoid) hinge ipo robust exo_pair nca_pair bco_pair sppo_hard "
         "apo_zero apo_down discopop sigmoid_norm aot aot_unpaired rpo_sq rpo_fwd_kl rpo_bwd_kl simpo orpo kto "
         "apo_zero_unpaired; e.g. dpo:1,sft:0.2 (RPO); TRL's list form [\"sigmoid\",\"sft\"] and names aot_pair, "
         "alphapo too"},
        {"loss-weights", PREFOPT_OPT_STRING, &p->loss_weights, "",
         "TRL loss_weights: one weight per --loss entry, e.g. 0.8,0.2,1.0 or [0.8, 0.2, 1.0] (empty: NAME:W or 1)"},
        {"beta", PREFOPT_OPT_DOUBLE, &p->beta, "0.1", "beta of the DPO family, KTO and SimPO; lambda of ORPO"},
        {"label-smoothing", PREFOPT_OPT_DOUBLE, &p->label_smoothing, "0",
         "epsilon of robust, exo_pair, aot, aot_unpaired, simpo, and of dpo with --cdpo"},
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
        {"gt-reward-scale", PREFOPT_OPT_DOUBLE, &p->gt_reward_scale, "1.0",
         "rpo_sq/rpo_fwd_kl/rpo_bwd_kl: scale eta of the ground-truth reward gap (NeMo gt_reward_scale)"},
        {"default-chosen-reward", PREFOPT_OPT_DOUBLE, &p->default_chosen_reward, "1.0",
         "rpo_*: ground-truth reward of a chosen completion when the data has none"},
        {"default-rejected-reward", PREFOPT_OPT_DOUBLE, &p->default_rejected_reward, "0.0",
         "rpo_*: ground-truth reward of a rejected completion when the data has none"},
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

/* TRL's loss_type values under another name here, and TRL names prefopt does not have (refused by name, with
 * what they are, instead of "unknown loss"). */
static const char *const trl_value_aliases[][2] = {
    {"aot_pair", "aot_unpaired"}, /* TRL-0.27's name of aot_unpaired */
    {"alphapo", "simpo"},         /* TRL CPO: simpo with cpo_alpha 0; the alpha is --alphapo-alpha */
};
static const char *const trl_lacking[][2] = {
    {"kto_pair", "the paired KTO loss TRL removed (use kto on unpaired data)"},
    {"bco", "BCOTrainer's unpaired BCO with its reward classifier"},
    {"grpo", "GRPOTrainer's online RL loss (completions sampled during training)"},
    {"dr_grpo", "GRPOTrainer's online RL loss (completions sampled during training)"},
    {"bnpo", "GRPOTrainer's online RL loss (completions sampled during training)"},
    {"dapo", "GRPOTrainer's online RL loss (completions sampled during training)"},
};

/* A list as TRL configs write it ("[\"sigmoid\", \"sft\"]", "['a','b']" or "a,b") as plain "a,b" in buf. */
static int plain_list(const char *what, const char *spec, char *buf, size_t len, prefopt_err *err)
{
    if (strlen(spec) >= len) {
        prefopt_err_set(err, "%s \"%.40s...\" is too long", what, spec);
        return -1;
    }
    size_t k = 0;
    for (const char *c = spec; *c; c++)
        if (*c != '[' && *c != ']' && *c != '"' && *c != '\'')
            buf[k++] = *c;
    buf[k] = '\0';
    return 0;
}

static int parse_terms(prefopt_objective *o, const char *spec, const char *weights, prefopt_err *err)
{
    char buf[512];
    if (spec && plain_list("--loss", spec, buf, sizeof buf, err))
        return -1;
    if (!spec || !buf[strspn(buf, " ,")]) {
        prefopt_err_set(err, "--loss is empty; give e.g. \"dpo\" or \"dpo:1,sft:0.2\"");
        return -1;
    }
    o->nterms = 0;
    int colons = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        char *colon = strchr(tok, ':');
        double w = 1.0;
        if (colon) {
            colons = 1;
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
        const char *name = tok;
        for (size_t i = 0; i < sizeof trl_value_aliases / sizeof *trl_value_aliases; i++)
            if (!strcmp(tok, trl_value_aliases[i][0]))
                name = trl_value_aliases[i][1];
        for (size_t i = 0; i < sizeof trl_lacking / sizeof *trl_lacking; i++)
            if (!strcmp(tok, trl_lacking[i][0])) {
                prefopt_err_set(err, "--loss \"%s\": TRL's loss_type \"%s\" (%s) is not in prefopt", spec, tok,
                                trl_lacking[i][1]);
                return -1;
            }
        int found = -1;
        for (int i = 0; i < NLOSS_NAMES; i++)
            if (strcmp(name, loss_names[i].name) == 0)
                found = i;
        if (found < 0) {
            prefopt_err_set(err, "--loss \"%s\": unknown loss \"%s\" (known: sft dpo sigmoid hinge ipo robust "
                            "exo_pair nca_pair bco_pair sppo_hard apo_zero apo_down discopop sigmoid_norm aot "
                            "aot_unpaired (aot_pair) rpo_sq rpo_fwd_kl rpo_bwd_kl simpo (alphapo) orpo kto "
                            "apo_zero_unpaired)", spec, tok);
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
    if (!weights || !*weights)
        return 0;
    /* TRL's loss_weights: one weight per loss_type entry, in order */
    char wbuf[512];
    if (plain_list("--loss-weights", weights, wbuf, sizeof wbuf, err))
        return -1;
    if (colons) {
        prefopt_err_set(err, "--loss \"%s\" has NAME:WEIGHT terms and --loss-weights \"%s\" is given too; give one",
                        spec, weights);
        return -1;
    }
    int k = 0;
    save = NULL;
    for (char *tok = strtok_r(wbuf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), k++) {
        char *end = NULL;
        double w = strtod(tok, &end);
        while (end && *end == ' ')
            end++;
        if (end == tok || *end != '\0' || !isfinite(w) || w < 0) {
            prefopt_err_set(err, "--loss-weights \"%s\": \"%s\" is not a finite number >= 0", weights, tok);
            return -1;
        }
        if (k < o->nterms)
            o->weight[k] = w;
    }
    if (k != o->nterms) {
        prefopt_err_set(err, "--loss-weights \"%s\" has %d weights for the %d losses of --loss \"%s\"", weights, k,
                        o->nterms, spec);
        return -1;
    }
    return 0;
}

int prefopt__has_term(const prefopt_objective *o, prefopt_loss_kind k)
{
    for (int i = 0; i < o->nterms; i++)
        if (o->kind[i] == k)
            return 1;
    return 0;
}

int prefopt_objective_reads_all_tokens(const prefopt_objective *obj)
{
    return prefopt__has_term(obj, PREFOPT_LOSS_ORPO) || obj->p.sft_all_tokens;
}

int prefopt_objective_init(prefopt_objective *obj, const prefopt_objective_params *p, prefopt_err *err)
{
    memset(obj, 0, sizeof *obj);
    obj->p = *p;
    if (parse_terms(obj, p->loss, p->loss_weights, err))
        return -1;
    const char *spec = p->loss;
    if (p->rpo_alpha != 0) {
        if (!(p->rpo_alpha > 0) || !isfinite(p->rpo_alpha)) {
            prefopt_err_set(err, "--rpo-alpha must be a finite number > 0, got %g", p->rpo_alpha);
            return -1;
        }
        if (prefopt__has_term(obj, PREFOPT_LOSS_SFT)) {
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
        n_unpaired += prefopt__is_unpaired(k);
        n_pair += !prefopt__is_unpaired(k) && k != PREFOPT_LOSS_SFT;
        if (k == PREFOPT_LOSS_ROBUST || k == PREFOPT_LOSS_EXO_PAIR || k == PREFOPT_LOSS_SIMPO ||
            k == PREFOPT_LOSS_AOT || k == PREFOPT_LOSS_AOT_UNPAIRED ||
            (k == PREFOPT_LOSS_DPO && p->cdpo))
            uses_eps = 1;
        if (reads_reference(k))
            only_reffree = 0;
    }
    if (n_unpaired && (n_pair || prefopt__has_term(obj, PREFOPT_LOSS_SFT))) {
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
    if (prefopt__has_term(obj, PREFOPT_LOSS_ROBUST) && !(e < 0.5)) {
        prefopt_err_set(err, "robust needs --label-smoothing in [0, 0.5) (it divides by 1 - 2e), got %g", e);
        return -1;
    }
    if (prefopt__has_term(obj, PREFOPT_LOSS_EXO_PAIR) && !(e > 0)) {
        prefopt_err_set(err, "exo_pair needs --label-smoothing > 0 (it takes log e; the EXO paper recommends 1e-3)");
        return -1;
    }
    if (prefopt__has_term(obj, PREFOPT_LOSS_DISCOPOP) && !(p->discopop_tau > 0)) {
        prefopt_err_set(err, "--discopop-tau must be > 0, got %g", p->discopop_tau);
        return -1;
    }
    if (!isfinite(p->gt_reward_scale) || !isfinite(p->default_chosen_reward) || !isfinite(p->default_rejected_reward)) {
        prefopt_err_set(err, "--gt-reward-scale, --default-chosen-reward and --default-rejected-reward must be finite");
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
    if (p->bco_running_mean && !prefopt__has_term(obj, PREFOPT_LOSS_BCO_PAIR)) {
        prefopt_err_set(err, "--bco-running-mean applies to bco_pair, which \"%s\" does not contain", spec);
        return -1;
    }
    obj->uses_bco_delta = p->bco_running_mean != 0;
    if (p->alphapo_alpha != 0 && (!isfinite(p->alphapo_alpha) || !prefopt__has_term(obj, PREFOPT_LOSS_SIMPO))) {
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
            if (k == PREFOPT_LOSS_SIMPO || k == PREFOPT_LOSS_ORPO || prefopt__is_unpaired(k) ||
                k == PREFOPT_LOSS_RPO_SQ || k == PREFOPT_LOSS_RPO_FWD_KL || k == PREFOPT_LOSS_RPO_BWD_KL ||
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
    obj->uses_kl = prefopt__has_term(obj, PREFOPT_LOSS_KTO);
    if (obj->uses_kl && p->reference_free) {
        prefopt_err_set(err, "kto needs a reference model (--reference-free is not allowed)");
        return -1;
    }
    obj->length_avg_metrics = only_reffree && obj->layout == PREFOPT_LAYOUT_PAIRS;
    return 0;
}

int prefopt_objective_describe(char *buf, size_t len, const prefopt_objective *obj)
{
    static const char *layouts[] = {"pairs", "unpaired examples", "SFT examples"};
    static const char *fdivs[] = {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"};
    char terms[512] = "", extra[256] = "";
    size_t at = 0;
    for (int i = 0; i < obj->nterms && at < sizeof terms; i++)
        at += (size_t)snprintf(terms + at, sizeof terms - at, "%s%g*%s", i ? " + " : "", obj->weight[i],
                               prefopt_loss_name(obj->kind[i]));
    at = 0;
    if (obj->p.label_smoothing != 0)
        at += (size_t)snprintf(extra + at, sizeof extra - at, " | label smoothing %g", obj->p.label_smoothing);
    if (obj->fdiv != PREFOPT_FDIV_REVERSE_KL && at < sizeof extra)
        at += (size_t)snprintf(extra + at, sizeof extra - at, " | f-divergence %s", fdivs[obj->fdiv]);
    if (obj->p.ref_sync_steps > 0 && at < sizeof extra)
        snprintf(extra + at, sizeof extra - at, " | TR-DPO every %ld steps, alpha %g", obj->p.ref_sync_steps,
                 obj->p.ref_mixup_alpha);
    return snprintf(buf, len, "%s | beta %g%s | %s | %s", terms, obj->p.beta, extra,
                    obj->uses_reference ? "reference model" : "no reference", layouts[obj->layout]);
}

int prefopt_objective_ref_sync_due(const prefopt_objective *obj, long step)
{
    return obj->p.ref_sync_steps > 0 && step > 0 && step % obj->p.ref_sync_steps == 0;
}

/* ---- which options an objective reads (run directories keep only those) ------------------------------------ */

static int reads_eps(const prefopt_objective *o)
{
    return prefopt__has_term(o, PREFOPT_LOSS_ROBUST) || prefopt__has_term(o, PREFOPT_LOSS_EXO_PAIR) ||
           prefopt__has_term(o, PREFOPT_LOSS_SIMPO) || prefopt__has_term(o, PREFOPT_LOSS_AOT) ||
           prefopt__has_term(o, PREFOPT_LOSS_AOT_UNPAIRED) || (prefopt__has_term(o, PREFOPT_LOSS_DPO) && o->p.cdpo);
}

int prefopt_objective_reads_option(const prefopt_objective *o, const char *name)
{
    const prefopt_objective_params *p = &o->p;
    int any_ref = 0, only_sft = 1;
    for (int i = 0; i < o->nterms; i++) {
        any_ref |= reads_reference(o->kind[i]);
        only_sft &= o->kind[i] == PREFOPT_LOSS_SFT;
    }
    int rpo = prefopt__has_term(o, PREFOPT_LOSS_RPO_SQ) || prefopt__has_term(o, PREFOPT_LOSS_RPO_FWD_KL) ||
              prefopt__has_term(o, PREFOPT_LOSS_RPO_BWD_KL);
    int simpo = prefopt__has_term(o, PREFOPT_LOSS_SIMPO);
    static const char *const names[] = {
        "loss-weights", "beta", "label-smoothing", "cdpo", "simpo-gamma", "simpo-gamma-beta-ratio", "alphapo-alpha",
        "discopop-tau", "desirable-weight", "undesirable-weight", "reference-free", "sft-all-tokens",
        "ref-sync-steps", "ref-mixup-alpha", "bco-running-mean", "sft-reduction", "rpo-alpha", "gt-reward-scale",
        "default-chosen-reward", "default-rejected-reward", "f-divergence", "f-alpha-divergence-coef",
    };
    const int reads[] = {
        p->loss_weights && *p->loss_weights,
        !only_sft,
        reads_eps(o),
        prefopt__has_term(o, PREFOPT_LOSS_DPO),
        simpo && p->simpo_gamma_beta_ratio == 0,
        simpo,
        simpo,
        prefopt__has_term(o, PREFOPT_LOSS_DISCOPOP),
        prefopt__has_term(o, PREFOPT_LOSS_KTO),
        prefopt__has_term(o, PREFOPT_LOSS_KTO),
        any_ref,
        o->layout == PREFOPT_LAYOUT_SFT,
        any_ref && !p->reference_free,
        p->ref_sync_steps > 0,
        prefopt__has_term(o, PREFOPT_LOSS_BCO_PAIR),
        prefopt__has_term(o, PREFOPT_LOSS_SFT),
        o->layout == PREFOPT_LAYOUT_PAIRS,
        rpo,
        rpo,
        rpo,
        o->layout == PREFOPT_LAYOUT_PAIRS && any_ref,
        o->layout == PREFOPT_LAYOUT_PAIRS && any_ref && o->fdiv == PREFOPT_FDIV_ALPHA,
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i]))
            return reads[i];
    return 1; /* "loss", and the names of other tables */
}
