/* Internals shared by the objectives' files (objectives.c: parameters; objectives_loss.c: the per-pair and
 * per-example kernels; objectives_batch.c: micro-batches, normalisation, metrics). */
#ifndef PREFOPT_OBJECTIVES_INTERNAL_H
#define PREFOPT_OBJECTIVES_INTERNAL_H

#include <math.h>

#include "prefopt/objectives.h"

static inline double log_sigmoid(double x)
{
    return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
}

static inline double sigmoid(double x)
{
    if (x >= 0)
        return 1.0 / (1.0 + exp(-x));
    double t = exp(x);
    return t / (1.0 + t);
}

/* log(1 - e^x) for x < 0, the two-branch form of Maechler's note (switch at -ln 2). */
static inline double log1mexp(double x)
{
    return x < -M_LN2 ? log1p(-exp(x)) : log(-expm1(x));
}

int prefopt__is_unpaired(prefopt_loss_kind k);
int prefopt__has_term(const prefopt_objective *o, prefopt_loss_kind k);

/* -(1-e) log sig(z) - e log sig(-z) and its derivative in z. */
double prefopt__smoothed_sigmoid_loss(double *dz, double z, double e);
/* AlphaPO's reward of a mean log-prob and its derivative (the identity at a = 0). */
double prefopt__alphapo_reward(double *deriv, double a, double x);
/* prefopt_pair_loss with TRL-0.27's running-mean shift bco_delta of bco_pair (0 in TRL-1.x) and the ground-truth
 * reward gap gt_delta = eta (R_c - R_r) of the rpo_* losses. */
double prefopt__pair_loss(double grad[4], prefopt_loss_kind k, const prefopt_objective *obj, double pi_c, double pi_r,
                          double ref_c, double ref_r, double len_c, double len_r, double bco_delta, double gt_delta);

#endif
