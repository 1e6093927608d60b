/* prefopt: preference objectives (DPO family, KTO, ORPO, SimPO) and SFT, as loss + gradient with respect to
 * sequence log-probs. Formulas, names and defaults: /work/shared/reference/objectives.md (TRL-1.x unless noted).
 *
 * How it plugs into the engine (model.h): the forward gives per-unit sums (prefopt_unit_stats); an objective
 * maps them (plus the reference log-probs) to the loss of one micro-batch and to
 *   d_completion[u] = dLoss/d logp_completion[u],   d_all[u] = dLoss/d logp_all[u],
 * which prefopt_model_backward takes (convert to float). Units a micro-batch does not use get 0.
 *
 * Global normalisation. Every term is a mean over the whole optimizer step (all micro-batches, all
 * data-parallel ranks): pair terms divide by the global number of pairs, token-mean terms (sft, ORPO's NLL)
 * by the global number of tokens, KTO by the global number of examples. The caller counts them before the
 * step (prefopt_objective_count + prefopt_objective_norm_reduce), so that summing micro-batch losses and
 * gradients over micro-batches and ranks (the gradient all-reduce is a SUM) gives exactly the loss and
 * gradient of one big batch. TRL instead averages per micro-batch and divides by the accumulation steps,
 * which weights unevenly filled micro-batches wrongly.
 *
 * Loss specification: "NAME[:WEIGHT],NAME[:WEIGHT],..." e.g. "dpo", "dpo:1,sft:0.2" (RPO with rpo_alpha 0.2),
 * "dpo:0.8,bco_pair:0.2,sft:1" (TRL's MPO example). loss = sum_k w_k * term_k (TRL-1.x).
 *
 *   name          TRL name        per pair (r = pi - ref, D = r_c - r_r, z = beta*D)
 *   dpo|sigmoid   sigmoid         -log sig(z); with --cdpo (TRL-0.27): -(1-e) log sig(z) - e log sig(-z)
 *   hinge         hinge           max(0, 1 - z)
 *   ipo           ipo             (r_c/L_c - r_r/L_r - 1/(2 beta))^2, L clamped to >= 1
 *   robust        robust          [-(1-e) log sig(z) + e log sig(-z)] / (1 - 2e), e in [0, 0.5)
 *   exo_pair      exo_pair        sig(z)(log sig(z) - log(1-e)) + sig(-z)(log sig(-z) - log e), e > 0
 *   nca_pair      nca_pair        -log sig(beta r_c) - 1/2 log sig(-beta r_c) - 1/2 log sig(-beta r_r)
 *   bco_pair      bco_pair        -log sig(beta r_c) - log sig(-beta r_r)   (TRL-1.x: no running-mean shift;
 *                                 bco_running_mean: -log sig(beta r_c - d) - log sig(-(beta r_r - d)), TRL-0.27)
 *   sppo_hard     sppo_hard       (r_c - 1/(2 beta))^2 + (r_r + 1/(2 beta))^2
 *   apo_zero      apo_zero        (1 - sig(beta r_c)) + sig(beta r_r)
 *   apo_down      apo_down        sig(beta r_c) + (1 - sig(z))
 *   discopop      discopop        m = sig(z/tau): (1-m)(-log sig(z)) + m exp(-z)
 *   sigmoid_norm  sigmoid_norm    -log sig(beta (r_c/L_c - r_r/L_r))   (keeps the reference)
 *   aot           aot             d_k = sort(pi_c - pi_r)_k - sort(ref_c - ref_r)_k over the pairs of the
 *                                 micro-batch; -(1-e) log sig(beta d_k) - e log sig(-beta d_k)
 *   aot_unpaired  aot_unpaired    the same with d_k = sort(r_c)_k - sort(r_r)_k
 *                                 (both sort within one micro-batch of one rank, as TRL sorts within the
 *                                 per-device batch, so they are the one exception to micro-batch invariance)
 *   rpo_sq        NeMo rpo_sq     (z - g)^2, g = eta (R_c - R_r): ground-truth rewards of the pair (batch arrays,
 *                                 or default_chosen_reward / default_rejected_reward), eta = gt_reward_scale
 *   rpo_fwd_kl    NeMo rpo_fwd_kl sum over y in {c, r} of sig(+-z) (log sig(+-z) - log sig(+-g))
 *   rpo_bwd_kl    NeMo rpo_bwd_kl sum over y in {c, r} of sig(+-g) (log sig(+-g) - log sig(+-z))
 *   simpo         CPO "simpo"     -(1-e) log sig(h) - e log sig(-h), h = beta (pi_c/L_c - pi_r/L_r) - gamma;
 *                                 no reference; CPO-SimPO = "simpo,sft:1" (cpo_alpha 1); AlphaPO with
 *                                 alphapo_alpha a != 0 uses R = (1 - e^{-a pi/L})/a in place of pi/L
 *   orpo          ORPO            NLL(prompt+chosen, token mean) - beta * mean log sig(log_odds), log_odds from
 *                                 length-averaged completion log-probs; no reference; beta is ORPO's lambda
 *   sft           sft             token-mean NLL of the chosen completions (alone: of the SFT examples'
 *                                 completions, or of every predicted token with sft_all_tokens); other
 *                                 reductions with sft_reduction
 *   kto           KTO "kto"       desirable w_D (1 - sig(beta (r - kl))), undesirable w_U (1 - sig(beta (kl - r)))
 *   apo_zero_unpaired             desirable 1 - sig(beta r), undesirable sig(beta r)
 * CPO (reference-free sigmoid + NLL) is "dpo,sft:1" with reference_free.
 *
 * Not supported: WPO weighting and LD-DPO (they need per-token data the engine does not return), TRL-0.27's
 * f-divergence parameterisation, and TRL-0.27's IPO that length-normalises every loss of the list. */
#ifndef PREFOPT_OBJECTIVES_H
#define PREFOPT_OBJECTIVES_H

#include <stdint.h>

#include "prefopt/common.h"
#include "prefopt/metrics.h"
#include "prefopt/opts.h"
#include "prefopt/unit_stats.h"

typedef enum {
    PREFOPT_LOSS_SFT = 0,
    PREFOPT_LOSS_DPO,
    PREFOPT_LOSS_HINGE,
    PREFOPT_LOSS_IPO,
    PREFOPT_LOSS_ROBUST,
    PREFOPT_LOSS_EXO_PAIR,
    PREFOPT_LOSS_NCA_PAIR,
    PREFOPT_LOSS_BCO_PAIR,
    PREFOPT_LOSS_SPPO_HARD,
    PREFOPT_LOSS_APO_ZERO,
    PREFOPT_LOSS_APO_DOWN,
    PREFOPT_LOSS_DISCOPOP,
    PREFOPT_LOSS_SIGMOID_NORM,
    PREFOPT_LOSS_SIMPO,
    PREFOPT_LOSS_ORPO,
    PREFOPT_LOSS_KTO,
    PREFOPT_LOSS_APO_ZERO_UNPAIRED,
    PREFOPT_LOSS_AOT,          /* micro-batch level: sorts, see below */
    PREFOPT_LOSS_AOT_UNPAIRED,
    PREFOPT_LOSS_RPO_SQ,       /* NeMo-Aligner reward-aware PO, against ground-truth rewards */
    PREFOPT_LOSS_RPO_FWD_KL,
    PREFOPT_LOSS_RPO_BWD_KL,
    PREFOPT_LOSS_NKINDS
} prefopt_loss_kind;

const char *prefopt_loss_name(prefopt_loss_kind k);

/* Command-line / INI parameters (prefopt_objective_options lists them with their defaults). */
typedef struct {
    const char *loss;              /* "dpo" */
    double beta;                   /* 0.1 (TRL DPO/KTO/CPO/ORPO default) */
    double label_smoothing;        /* 0: read by robust, exo_pair, aot, aot_unpaired, simpo, dpo under cdpo */
    int cdpo;                      /* 0: 1 applies label smoothing to dpo as TRL-0.27 did (cDPO) */
    double simpo_gamma;            /* 0.5: absolute margin gamma of SimPO */
    double simpo_gamma_beta_ratio; /* 0: when non-zero, gamma = ratio * beta (the SimPO repo's knob) */
    double alphapo_alpha;          /* 0: AlphaPO (TRL CPO alpha): simpo on R = (1 - p^-alpha)/alpha, p = e^mean_logp */
    double discopop_tau;           /* 0.05 */
    double desirable_weight;       /* 1.0 (KTO w_D) */
    double undesirable_weight;     /* 1.0 (KTO w_U) */
    int reference_free;            /* 0: 1 sets the reference log-probs to 0 (TRL-0.27 reference_free) */
    int sft_all_tokens;            /* 0: plain-text SFT, the loss covers every predicted token (logp_all) */
    long ref_sync_steps;           /* 0 = off; TR-DPO: every N optimizer steps ref <- (1-a) ref + a policy */
    double ref_mixup_alpha;        /* 0.6 (TRL ref_model_mixup_alpha) */
    double rpo_alpha;              /* 0: TRL-0.27 rpo_alpha, the same as appending ",sft:ALPHA" to the loss */
    double gt_reward_scale;        /* 1.0: eta of the rpo_* losses (NeMo gt_reward_scale) */
    double default_chosen_reward;  /* 1.0: R_c of the rpo_* losses when the batch carries no rewards */
    double default_rejected_reward; /* 0.0: R_r likewise */
    const char *sft_reduction;     /* "token" (TRL), "sequence_mean" (OpenRLHF), "sequence_sum" (NeMo) */
    int bco_running_mean;          /* 0: 1 gives TRL-0.27's bco_pair, shifted by a running reward mean */
    const char *f_divergence;      /* "reverse_kl": or forward_kl, js_divergence, alpha_divergence (TRL-1.x) */
    double f_alpha_divergence_coef; /* 0.5 (TRL-1.x default) */
    const char *loss_weights;      /* "" or NULL: weights from "NAME:W" terms; else TRL loss_weights, one per term */
} prefopt_objective_params;

/* f-DPO (TRL-1.x): pair losses see the score s = f(r) of each log-ratio instead of r. reverse_kl: s = r;
 * forward_kl: s = -exp(-r); js_divergence: s = log sig(r); alpha_divergence (a): s = exp(min((a-1) r, 80))/(a-1),
 * a = 1 meaning reverse_kl. As in TRL, apo_zero, the first term of apo_down and aot/aot_unpaired keep the raw
 * log-ratios; the rewards metrics are always beta * r. */
/* How the sft term (and SFT training) reduces the NLL: over all tokens of the step, as the mean over sequences
 * of each sequence's token mean, or as the mean over sequences of each sequence's sum. ORPO's NLL is always the
 * token mean over prompt+chosen. */
typedef enum { PREFOPT_SFT_TOKEN_MEAN = 0, PREFOPT_SFT_SEQ_MEAN, PREFOPT_SFT_SEQ_SUM } prefopt_sft_reduction;

typedef enum { PREFOPT_FDIV_REVERSE_KL = 0, PREFOPT_FDIV_FORWARD_KL, PREFOPT_FDIV_JS, PREFOPT_FDIV_ALPHA } prefopt_fdiv;

/* Fills out[0..n) with the option-table entries of the parameters above (names "loss", "beta",
 * "label-smoothing", "cdpo", "simpo-gamma", "simpo-gamma-beta-ratio", "discopop-tau", "desirable-weight",
 * "undesirable-weight", "reference-free", "sft-all-tokens", "ref-sync-steps", "ref-mixup-alpha", "alphapo-alpha",
 * "bco-running-mean", "sft-reduction", "rpo-alpha", "gt-reward-scale", "default-chosen-reward",
 * "default-rejected-reward", "f-divergence", "f-alpha-divergence-coef", "loss-weights") pointing into
 * p, for a subcommand to append to its own table. Returns n, or -1 if max is too small. */
int prefopt_objective_options(prefopt_opt *out, int max, prefopt_objective_params *p);
/* The defaults, as the option table would set them. */
void prefopt_objective_params_default(prefopt_objective_params *p);

typedef enum {
    PREFOPT_LAYOUT_PAIRS = 0, /* pair i = (chosen unit, rejected unit) */
    PREFOPT_LAYOUT_UNPAIRED,  /* KTO: labelled examples, plus mismatched units for the KL estimate */
    PREFOPT_LAYOUT_SFT        /* SFT examples */
} prefopt_layout;

#define PREFOPT_MAX_LOSS_TERMS 8

typedef struct {
    prefopt_objective_params p; /* validated copy (p.loss points to the caller's string) */
    int nterms;
    prefopt_loss_kind kind[PREFOPT_MAX_LOSS_TERMS];
    double weight[PREFOPT_MAX_LOSS_TERMS];
    prefopt_layout layout;
    int uses_reference; /* some term reads reference log-probs and reference_free is off */
    int uses_kl;        /* kto: the caller passes the KL estimate (prefopt_kto_kl) in each batch */
    int uses_bco_delta; /* bco_running_mean: the caller runs prefopt_bco_update on each batch before eval */
    int length_avg_metrics; /* CPO/ORPO-style metrics: rewards = beta * mean logp, logps averaged */
    double gamma;       /* effective SimPO gamma */
    prefopt_fdiv fdiv;
    prefopt_sft_reduction sft_reduction;
} prefopt_objective;

/* Parses p->loss and validates every parameter the terms read. Errors name the offending item. */
int prefopt_objective_init(prefopt_objective *obj, const prefopt_objective_params *p, prefopt_err *err);

/* One line for logs and run banners, e.g. "1*dpo + 0.2*sft | beta 0.1 | reference model | pairs". Returns the
 * snprintf-style length. */
int prefopt_objective_describe(char *buf, size_t len, const prefopt_objective *obj);
/* 0 when the objective reads nothing of option NAME of prefopt_objective_options (simpo-gamma without simpo,
 * desirable-weight without kto, ...), 1 otherwise (also for names that are not objective options): run
 * directories record only the options that applied. */
int prefopt_objective_reads_option(const prefopt_objective *obj, const char *name);
/* 1 when some term reads log-probs of prompt tokens (logp_all: ORPO's NLL, SFT with sft_all_tokens); otherwise
 * the model may form logits at completion positions only (prefopt_model_set_completion_logits_only). */
int prefopt_objective_reads_all_tokens(const prefopt_objective *obj);

/* One micro-batch of this rank. Unit indices refer to the policy stats arrays [0, nunits). */
typedef struct {
    const prefopt_unit_stats *policy;
    int nunits;
    const double *ref_logp; /* [nunits] reference logp_completion; NULL when obj->uses_reference is 0 */
    /* PREFOPT_LAYOUT_PAIRS */
    int npairs;
    const int32_t *chosen, *rejected; /* [npairs] */
    /* PREFOPT_LAYOUT_UNPAIRED */
    int nexamples;
    const int32_t *example;    /* [nexamples] */
    const uint8_t *desirable;  /* [nexamples] 1 desirable, 0 undesirable */
    double kl;                 /* kto: the detached, averaged and clamped KL estimate (prefopt_kto_kl) */
    double bco_delta;          /* PAIRS with bco_running_mean: set by prefopt_bco_update; 0 otherwise */
    int bco_ready;             /* set by prefopt_bco_update; eval refuses a bco_running_mean batch without it */
    const double *gt_reward_chosen, *gt_reward_rejected; /* [npairs] rpo_* ground-truth rewards; NULL: defaults */
    /* PREFOPT_LAYOUT_SFT */
    int nsft;
    const int32_t *sft;        /* [nsft] */
} prefopt_objective_batch;

/* Global sizes of one optimizer step; a count a term does not use may stay 0. */
typedef struct {
    double pairs;             /* PAIRS */
    double chosen_tokens;     /* PAIRS: sum of n_completion over chosen units (sft term) */
    double chosen_all_tokens; /* PAIRS: sum of n_all over chosen units (ORPO's NLL) */
    double examples;          /* UNPAIRED; SFT: examples (for the sequence reductions) */
    double tokens;            /* SFT: sum of n_completion (n_all with sft_all_tokens) */
} prefopt_objective_norm;

/* Adds this micro-batch's counts to acc. Reads only policy->n_completion and policy->n_all, so it can run on
 * counts taken from the batch layout before any forward. */
void prefopt_objective_count(prefopt_objective_norm *acc, const prefopt_objective *obj,
                             const prefopt_objective_batch *b);
/* In-place sum through sum (the caller's reduction over the data-parallel replicas; NULL: this process only). */
void prefopt_objective_norm_reduce(prefopt_objective_norm *n, const prefopt_reduction *sum);

/* The loss of one micro-batch, normalised by the global sizes in norm, and its gradient:
 * d_completion, d_all [nunits] are overwritten; d_ref [nunits] (optional, may be NULL) receives
 * dLoss/d ref_logp (tests; the reference is frozen). metrics (optional) accumulates this micro-batch's
 * sums and counts. Returns non-zero with err set on a layout/objective mismatch, an out-of-range unit index, a
 * missing reference or a zero normaliser. */
int prefopt_objective_eval(double *loss, double *d_completion, double *d_all, double *d_ref,
                           prefopt_metrics *metrics, const prefopt_objective *obj,
                           const prefopt_objective_batch *b, const prefopt_objective_norm *norm,
                           prefopt_err *err);

/* One pair term on its own (no weight, no normalisation): loss and grad[4] = d/d(pi_c, pi_r, ref_c, ref_r),
 * with len_c, len_r the completion token counts (used by ipo, sigmoid_norm, simpo, orpo). For orpo this is the
 * odds-ratio part only, -beta * log sig(log_odds); the rpo_* losses use the default ground-truth rewards. Returns NAN for sft, aot, aot_unpaired and the unpaired
 * kinds. */
double prefopt_pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c,
                         double pi_r, double ref_c, double ref_r, double len_c, double len_r);

/* One unpaired (kto, apo_zero_unpaired) example: loss and grad[2] = d/d(pi, ref); kl is held constant. */
double prefopt_unpaired_loss(double grad[2], prefopt_loss_kind k, const prefopt_objective *obj, double pi,
                             double ref, int desirable, double kl);

/* KTO's KL estimate: the mean over the mismatched units of every rank of comm of (policy - reference)
 * completion log-probs, clamped at 0 (TRL: gather(mean).mean().clamp(min=0); pooling sums and counts equals
 * that when ranks hold the same number of units, and stays right when they do not). sum: the reduction over the
 * data-parallel replicas, NULL for this process only. Treat the result as a constant (no gradient flows through it). NaN when any
 * input is NaN (e.g. a reference log-prob that was never computed), which prefopt_objective_eval rejects.
 * Collective. */
double prefopt_kto_kl(const double *policy_logp, const double *ref_logp, int n, const prefopt_reduction *sum);

/* TRL-0.27 bco_pair: the running mean of the detached rewards [beta r_c ; beta r_r], over every micro-batch of
 * every rank so far (RunningMoments: each update adds one value per rank, the rank's micro-batch mean). Its two
 * numbers are training state: save them in checkpoints to resume exactly. Zero-initialise. */
typedef struct {
    double mean;
    double count;
} prefopt_bco_state;

/* Updates st with this micro-batch (through sum, the reduction over the data-parallel replicas; NULL: this
 * process only; a rank with no pairs adds nothing; every rank calls it once per micro-batch round) and stores the
 * new mean in b->bco_delta (b->bco_ready = 1) for prefopt_objective_eval: TRL updates before use. Needs the
 * policy and reference log-probs of the batch. Returns the new mean. */
double prefopt_bco_update(prefopt_bco_state *st, const prefopt_objective *obj, prefopt_objective_batch *b,
                          const prefopt_reduction *sum);

/* TR-DPO: 1 when the reference must be mixed towards the policy after optimizer step `step` (1-based):
 * ref_sync_steps > 0 and step % ref_sync_steps == 0. Then call
 * prefopt_model_mix_weights(ref, policy, obj->p.ref_mixup_alpha). */
int prefopt_objective_ref_sync_due(const prefopt_objective *obj, long step);

#endif
