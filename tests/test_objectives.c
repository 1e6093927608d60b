/* Objectives: every loss against the formula sheet (objectives.md, written out again here with plain math),
 * gradients against central finite differences in double, edge cases, parameter validation, combination
 * weights, global normalisation (k micro-batches == one batch), KTO and SFT layouts, metrics. */
#include "prefopt/objectives.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            failures++;                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                              \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
        }                                                                                                     \
    } while (0)

static int close_to(double a, double b, double tol)
{
    return fabs(a - b) <= tol * (1 + fabs(b));
}

/* ---- the sheet, in naive double math (valid for moderate arguments) --------------------------------------- */

static double sig(double x) { return 1 / (1 + exp(-x)); }
static double lsig(double x) { return log(sig(x)); }

typedef struct {
    double beta, eps, gamma, tau;
    int cdpo;
    int fdiv; /* 0 reverse_kl, 1 forward_kl, 2 js_divergence, 3 alpha_divergence */
    double alpha;
    double alphapo;
} sheet_params;

static double fscore(const sheet_params *s, double r)
{
    switch (s->fdiv) {
    case 1:
        return -exp(-r);
    case 2:
        return lsig(r);
    case 3:
        return exp((s->alpha - 1) * r) / (s->alpha - 1);
    default:
        return r;
    }
}

static double sheet_pair(prefopt_loss_kind k, const sheet_params *s, const double x[4], double lc, double lr)
{
    double b = s->beta, e = s->eps;
    double raw_c = x[0] - x[2], raw_r = x[1] - x[3];
    double rc = fscore(s, raw_c), rr = fscore(s, raw_r), D = rc - rr, z = b * D;
    lc = lc < 1 ? 1 : lc;
    lr = lr < 1 ? 1 : lr;
    switch (k) {
    case PREFOPT_LOSS_DPO:
        return s->cdpo ? -(1 - e) * lsig(z) - e * lsig(-z) : -lsig(z);
    case PREFOPT_LOSS_HINGE:
        return fmax(0, 1 - z);
    case PREFOPT_LOSS_IPO: {
        double u = rc / lc - rr / lr - 1 / (2 * b);
        return u * u;
    }
    case PREFOPT_LOSS_ROBUST:
        return (-(1 - e) * lsig(z) + e * lsig(-z)) / (1 - 2 * e);
    case PREFOPT_LOSS_EXO_PAIR:
        return sig(z) * (lsig(z) - log(1 - e)) + sig(-z) * (lsig(-z) - log(e));
    case PREFOPT_LOSS_NCA_PAIR:
        return -lsig(b * rc) - 0.5 * lsig(-b * rc) - 0.5 * lsig(-b * rr);
    case PREFOPT_LOSS_BCO_PAIR:
        return -lsig(b * rc) - lsig(-b * rr);
    case PREFOPT_LOSS_SPPO_HARD:
        return pow(rc - 1 / (2 * b), 2) + pow(rr + 1 / (2 * b), 2);
    case PREFOPT_LOSS_APO_ZERO: /* raw log-ratios whatever the f-divergence */
        return (1 - sig(b * raw_c)) + sig(b * raw_r);
    case PREFOPT_LOSS_APO_DOWN:
        return sig(b * raw_c) + (1 - sig(z));
    case PREFOPT_LOSS_DISCOPOP: {
        double m = sig(z / s->tau);
        return (1 - m) * -lsig(z) + m * exp(-z);
    }
    case PREFOPT_LOSS_SIGMOID_NORM:
        return -lsig(b * (rc / lc - rr / lr));
    case PREFOPT_LOSS_SIMPO: {
        double pc = x[0] / lc, pr = x[1] / lr;
        if (s->alphapo != 0) { /* AlphaPO: R = (1 - p^-alpha) / alpha with p the mean token probability */
            pc = (1 - pow(exp(pc), -s->alphapo)) / s->alphapo;
            pr = (1 - pow(exp(pr), -s->alphapo)) / s->alphapo;
        }
        double h = b * (pc - pr) - s->gamma;
        return -(1 - e) * lsig(h) - e * lsig(-h);
    }
    case PREFOPT_LOSS_RPO_SQ: /* NeMo-Aligner with the default rewards 1 and 0, gt_reward_scale 1: g = 1 */
        return pow(z - 1.0, 2);
    case PREFOPT_LOSS_RPO_BWD_KL:
        return sig(1.0) * (lsig(1.0) - lsig(z)) + sig(-1.0) * (lsig(-1.0) - lsig(-z));
    case PREFOPT_LOSS_RPO_FWD_KL:
        return sig(z) * (lsig(z) - lsig(1.0)) + sig(-z) * (lsig(-z) - lsig(-1.0));
    case PREFOPT_LOSS_ORPO: {
        double pc = x[0] / lc, pr = x[1] / lr;
        double lo = (pc - pr) - (log(1 - exp(pc)) - log(1 - exp(pr)));
        return -b * lsig(lo);
    }
    default:
        return NAN;
    }
}

static const prefopt_loss_kind pair_kinds[] = {
    PREFOPT_LOSS_DPO,      PREFOPT_LOSS_HINGE,    PREFOPT_LOSS_IPO,      PREFOPT_LOSS_ROBUST,
    PREFOPT_LOSS_EXO_PAIR, PREFOPT_LOSS_NCA_PAIR, PREFOPT_LOSS_BCO_PAIR, PREFOPT_LOSS_SPPO_HARD,
    PREFOPT_LOSS_APO_ZERO, PREFOPT_LOSS_APO_DOWN, PREFOPT_LOSS_DISCOPOP, PREFOPT_LOSS_SIGMOID_NORM,
    PREFOPT_LOSS_SIMPO,    PREFOPT_LOSS_ORPO,     PREFOPT_LOSS_RPO_SQ,   PREFOPT_LOSS_RPO_FWD_KL,
    PREFOPT_LOSS_RPO_BWD_KL,
};
#define NPAIR_KINDS ((int)(sizeof pair_kinds / sizeof pair_kinds[0]))

static const char *fdiv_names[4] = {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"};

static int make_obj_f(prefopt_objective *o, const char *loss, double beta, double eps, int cdpo, int fdiv,
                      double alpha)
{
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = loss;
    p.f_divergence = fdiv_names[fdiv];
    p.f_alpha_divergence_coef = alpha;
    p.beta = beta;
    p.label_smoothing = eps;
    p.cdpo = cdpo;
    prefopt_err err = {0};
    if (prefopt_objective_init(o, &p, &err)) {
        fprintf(stderr, "init(%s, beta %g, eps %g): %s\n", loss, beta, eps, err.msg);
        return -1;
    }
    return 0;
}

static int make_obj(prefopt_objective *o, const char *loss, double beta, double eps, int cdpo)
{
    return make_obj_f(o, loss, beta, eps, cdpo, 0, 0.5);
}

/* Every pair loss: value against the sheet, gradient against finite differences of the sheet formula. */
static void test_pair_losses(void)
{
    const double pts[][6] = {
        {-12.5, -15.25, -13.0, -14.0, 5, 7}, /* chosen up, rejected down: D = 1.75 */
        {-40, -30, -38, -33, 20, 11},        /* wrong way: D = -5 */
        {-3, -3, -3, -3, 2, 2},              /* all equal: D = 0 */
        {-7.5, -9, -6, -12, 3, 1},           /* both below... D = -4.5 */
        {-2.0, -6.5, -2.5, -5.9, 0, 4},      /* empty chosen completion: L clamped to 1 */
    };
    const double betas[] = {0.1, 0.5, 2.0};
    const double epss[] = {0.1, 0.3};
    /* f-divergences: reverse KL, forward KL, JS, alpha 0.5 and alpha 1.7 */
    const int fds[5] = {0, 1, 2, 3, 3};
    const double alphas[5] = {0.5, 0.5, 0.5, 0.5, 1.7};
    for (int ki = 0; ki < NPAIR_KINDS; ki++)
        for (int fi = 0; fi < 5; fi++) {
            prefopt_loss_kind k = pair_kinds[ki];
            if (fi > 0 && (k == PREFOPT_LOSS_SIMPO || k == PREFOPT_LOSS_ORPO || k == PREFOPT_LOSS_RPO_SQ ||
                           k == PREFOPT_LOSS_RPO_FWD_KL || k == PREFOPT_LOSS_RPO_BWD_KL))
                continue;
            for (int bi = 0; bi < 3; bi++)
                for (int ei = 0; ei < 2; ei++)
                    for (int pi = 0; pi < (int)(sizeof pts / sizeof pts[0]); pi++) {
                        int reads_eps = k == PREFOPT_LOSS_ROBUST || k == PREFOPT_LOSS_EXO_PAIR ||
                                        k == PREFOPT_LOSS_SIMPO || k == PREFOPT_LOSS_DPO;
                        double eps = reads_eps ? epss[ei] : 0;
                        prefopt_objective o;
                        if (make_obj_f(&o, prefopt_loss_name(k), betas[bi], eps, k == PREFOPT_LOSS_DPO, fds[fi],
                                       alphas[fi])) {
                            failures++;
                            continue;
                        }
                        sheet_params sp = {betas[bi], eps, o.gamma, o.p.discopop_tau, k == PREFOPT_LOSS_DPO, fds[fi],
                                           alphas[fi], 0};
                        const double *x = pts[pi];
                        double g[4];
                        double l = prefopt_pair_loss(g, k, &o, x[0], x[1], x[2], x[3], x[4], x[5]);
                        double want = sheet_pair(k, &sp, x, x[4], x[5]);
                        CHECK(close_to(l, want, 1e-12), "%s (%s %g) beta %g eps %g point %d: loss %.15g, sheet %.15g",
                              prefopt_loss_name(k), fdiv_names[fds[fi]], alphas[fi], betas[bi], eps, pi, l, want);
                        for (int j = 0; j < 4; j++) {
                            double xp[4], xm[4], h = 1e-6 * fmax(1, fabs(x[j]));
                            memcpy(xp, x, sizeof xp);
                            memcpy(xm, x, sizeof xm);
                            xp[j] += h;
                            xm[j] -= h;
                            double fd = (sheet_pair(k, &sp, xp, x[4], x[5]) - sheet_pair(k, &sp, xm, x[4], x[5])) / (2 * h);
                            CHECK(fabs(g[j] - fd) <= 1e-6 * (1 + fabs(fd)),
                                  "%s (%s %g) beta %g eps %g point %d: d/dx%d = %.12g, finite difference %.12g",
                                  prefopt_loss_name(k), fdiv_names[fds[fi]], alphas[fi], betas[bi], eps, pi, j, g[j], fd);
                        }
                    }
        }
}

/* Edge cases of the issue: beta -> small, equal log-probs, label smoothing 0 and 0.5. */
static void test_edge_cases(void)
{
    prefopt_objective o;
    double g[4];
    /* equal log-probs: D = 0 */
    make_obj(&o, "dpo", 0.1, 0, 0);
    double l = prefopt_pair_loss(g, PREFOPT_LOSS_DPO, &o, -5, -5, -5, -5, 3, 3);
    CHECK(close_to(l, log(2.0), 1e-15), "dpo at D=0: %.17g, want log 2", l);
    CHECK(close_to(g[0], -0.05, 1e-15) && close_to(g[1], 0.05, 1e-15) && close_to(g[2], 0.05, 1e-15) &&
              close_to(g[3], -0.05, 1e-15),
          "dpo at D=0: grad (%g %g %g %g), want beta/2 * (-1, 1, 1, -1)", g[0], g[1], g[2], g[3]);
    make_obj(&o, "hinge", 0.1, 0, 0);
    l = prefopt_pair_loss(g, PREFOPT_LOSS_HINGE, &o, -5, -5, -5, -5, 3, 3);
    CHECK(l == 1 && g[0] == -0.1 && g[1] == 0.1, "hinge at D=0: %g, grad %g %g", l, g[0], g[1]);
    make_obj(&o, "ipo", 0.1, 0, 0);
    l = prefopt_pair_loss(g, PREFOPT_LOSS_IPO, &o, -5, -5, -5, -5, 4, 2);
    CHECK(close_to(l, 25.0, 1e-15), "ipo at D=0, beta 0.1: %g, want (1/(2 beta))^2 = 25", l);
    CHECK(close_to(g[0], 2 * -5.0 / 4, 1e-15) && close_to(g[1], -2 * -5.0 / 2, 1e-15),
          "ipo at D=0: grad %g %g, want 2u/Lc = -2.5, -2u/Lr = 5", g[0], g[1]);
    make_obj(&o, "sppo_hard", 0.5, 0, 0);
    l = prefopt_pair_loss(g, PREFOPT_LOSS_SPPO_HARD, &o, -5, -5, -5, -5, 3, 3);
    CHECK(close_to(l, 2.0, 1e-15), "sppo_hard at r=0, beta 0.5: %g, want 1 + 1", l);

    /* beta -> small: dpo -> log 2 - beta D / 2, gradient -> beta/2 */
    make_obj(&o, "dpo", 1e-8, 0, 0);
    double D = (-10 - -12) - (-20 - -11); /* 11 */
    l = prefopt_pair_loss(g, PREFOPT_LOSS_DPO, &o, -10, -20, -12, -11, 5, 5);
    CHECK(close_to(l, log(2.0) - 1e-8 * D / 2, 1e-15), "dpo beta 1e-8: %.17g, want %.17g", l,
          log(2.0) - 1e-8 * D / 2);
    CHECK(close_to(g[0], -0.5e-8, 1e-6), "dpo beta 1e-8: d/dpi_c %.17g, want -beta/2", g[0]);
    /* ipo with small beta: the 1/(2 beta) target dominates and stays finite */
    make_obj(&o, "ipo", 1e-4, 0, 0);
    l = prefopt_pair_loss(g, PREFOPT_LOSS_IPO, &o, -10, -20, -12, -11, 5, 5);
    double u = 2.0 / 5 - (-9.0) / 5 - 5000;
    CHECK(close_to(l, u * u, 1e-14), "ipo beta 1e-4: %.17g, want %.17g", l, u * u);

    /* label smoothing 0: cdpo is plain dpo; 0.5: the cDPO loss is symmetric, its gradient is 0 at D = 0
     * and it equals log 2 + |z|/2-ish: -0.5 (log sig z + log sig -z) */
    prefopt_objective a, b;
    make_obj(&a, "dpo", 0.3, 0, 1);
    make_obj(&b, "dpo", 0.3, 0, 0);
    double ga[4], gb[4];
    double la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, -9, -14, -10, -11, 5, 5);
    double lb = prefopt_pair_loss(gb, PREFOPT_LOSS_DPO, &b, -9, -14, -10, -11, 5, 5);
    CHECK(la == lb && ga[0] == gb[0], "cdpo with eps 0 differs from dpo: %g vs %g", la, lb);
    make_obj(&a, "dpo", 0.3, 0.5, 1);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, -9, -9, -9, -9, 5, 5);
    CHECK(close_to(la, log(2.0), 1e-15) && ga[0] == 0, "cdpo eps 0.5 at D=0: %g grad %g", la, ga[0]);
    double z = 0.3 * 4; /* D = 1 - (-3) = 4 */
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, -9, -14, -10, -11, 5, 5);
    CHECK(close_to(la, -0.5 * (log(sig(z)) + log(sig(-z))), 1e-14), "cdpo eps 0.5: %g", la);
    /* exo_pair at eps 0.5 is the KL from sigmoid(z) to the uniform label: 0 at z = 0 */
    make_obj(&a, "exo_pair", 0.3, 0.5, 0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_EXO_PAIR, &a, -9, -9, -9, -9, 5, 5);
    CHECK(fabs(la) < 1e-15 && fabs(ga[0]) < 1e-15, "exo_pair eps 0.5 at D=0: %g grad %g, want 0", la, ga[0]);
    /* robust at eps 0: plain dpo */
    make_obj(&a, "robust", 0.3, 0, 0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_ROBUST, &a, -9, -14, -10, -11, 5, 5);
    CHECK(close_to(la, lb, 1e-15), "robust eps 0 %g != dpo %g", la, lb);

    /* every pair loss stays finite (loss and gradient) far in both tails, z = beta D = +-2000 */
    for (int ki = 0; ki < NPAIR_KINDS; ki++) {
        prefopt_loss_kind k = pair_kinds[ki];
        int reads_eps = k == PREFOPT_LOSS_ROBUST || k == PREFOPT_LOSS_EXO_PAIR || k == PREFOPT_LOSS_SIMPO;
        make_obj(&a, prefopt_loss_name(k), 1.0, reads_eps ? 0.1 : 0, 0);
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            la = prefopt_pair_loss(ga, k, &a, sgn * -1.0, sgn * -2001.0, -1, -1, 4000, 1);
            CHECK(isfinite(la) && isfinite(ga[0]) && isfinite(ga[1]) && isfinite(ga[2]) && isfinite(ga[3]),
                  "%s at z = %d: loss %g grad %g %g %g %g", prefopt_loss_name(k), sgn * 2000, la, ga[0], ga[1], ga[2],
                  ga[3]);
        }
    }
    make_obj(&a, "dpo", 1.0, 0, 0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, -2001, -1, 0, 0, 1, 1);
    CHECK(close_to(la, 2000, 1e-15) && close_to(ga[0], -1, 1e-15), "dpo at z = -2000: %.17g, grad %.17g", la, ga[0]);
    /* discopop far in the tails stays finite */
    make_obj(&a, "discopop", 0.1, 0, 0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DISCOPOP, &a, -9000, -10, 0, 0, 5, 5);
    CHECK(isfinite(la) && isfinite(ga[0]), "discopop at z = -899: %g grad %g", la, ga[0]);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DISCOPOP, &a, -10, -9000, 0, 0, 5, 5);
    CHECK(isfinite(la) && la >= 0 && la < 1e-300 + 1e-200 && isfinite(ga[0]), "discopop at z = 899: %g", la);
    /* alpha_divergence with a = 1 is reverse KL; past TRL's clamp (a-1) r > 80 the score is flat */
    make_obj_f(&a, "dpo", 0.3, 0, 0, 3, 1.0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, -9, -14, -10, -11, 5, 5);
    CHECK(la == lb && ga[0] == gb[0], "alpha_divergence a=1: %g, reverse KL %g", la, lb);
    make_obj_f(&a, "dpo", 1e-35, 0, 0, 3, 3.0); /* a tiny beta keeps beta * e^80 / 2 in sigmoid's range */
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_DPO, &a, 50, -14, 0, -11, 5, 5); /* (a-1) r_c = 100 */
    double sr = exp(2.0 * -3) / 2, zc = 1e-35 * (exp(80.0) / 2 - sr);
    CHECK(close_to(la, -log(sig(zc)), 1e-12) && ga[0] == 0 && ga[1] != 0,
          "alpha_divergence clamp: loss %g (want %g), d/dpi_c %g (want 0)", la, -log(sig(zc)), ga[0]);
    /* AlphaPO: the sheet's R(y) = (1 - p^-alpha)/alpha of the mean token probability, and its gradient */
    {
        prefopt_objective_params pp;
        prefopt_objective_params_default(&pp);
        pp.loss = "simpo";
        pp.beta = 2.0;
        pp.alphapo_alpha = 0.25;
        pp.label_smoothing = 0.1;
        prefopt_err err = {0};
        CHECK(prefopt_objective_init(&a, &pp, &err) == 0, "alphapo: %s", err.msg);
        sheet_params sp = {2.0, 0.1, a.gamma, 0.05, 0, 0, 0.5, 0.25};
        const double x[4] = {-6, -9, 0, 0};
        la = prefopt_pair_loss(ga, PREFOPT_LOSS_SIMPO, &a, x[0], x[1], 0, 0, 4, 3);
        double w = sheet_pair(PREFOPT_LOSS_SIMPO, &sp, x, 4, 3);
        CHECK(close_to(la, w, 1e-13), "alphapo: %.15g, sheet %.15g", la, w);
        for (int j = 0; j < 2; j++) {
            double xp[4], xm[4];
            memcpy(xp, x, sizeof xp);
            memcpy(xm, x, sizeof xm);
            xp[j] += 1e-6;
            xm[j] -= 1e-6;
            double fd = (sheet_pair(PREFOPT_LOSS_SIMPO, &sp, xp, 4, 3) - sheet_pair(PREFOPT_LOSS_SIMPO, &sp, xm, 4, 3)) / 2e-6;
            CHECK(fabs(ga[j] - fd) <= 1e-7 * (1 + fabs(fd)), "alphapo d/dx%d %.12g, finite difference %.12g", j, ga[j], fd);
        }
        pp.loss = "dpo";
        pp.label_smoothing = 0;
        err.set = 0;
        CHECK(prefopt_objective_init(&a, &pp, &err) != 0 && strstr(err.msg, "simpo only"), "alphapo on dpo");
    }
    /* orpo at probability 1 (mean log-prob 0): finite loss and gradient */
    make_obj(&a, "orpo", 0.1, 0, 0);
    la = prefopt_pair_loss(ga, PREFOPT_LOSS_ORPO, &a, 0, -5, 0, 0, 5, 5);
    CHECK(isfinite(la) && isfinite(ga[0]) && isfinite(ga[1]), "orpo at p_c = 1: %g grad %g %g", la, ga[0], ga[1]);
}

static void expect_error(const char *loss, double eps, int cdpo, const char *needle)
{
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = loss;
    p.label_smoothing = eps;
    p.cdpo = cdpo;
    prefopt_objective o;
    prefopt_err err = {0};
    int rc = prefopt_objective_init(&o, &p, &err);
    CHECK(rc != 0 && strstr(err.msg, needle), "init(\"%s\", eps %g): rc %d msg \"%s\", want \"%s\"", loss, eps, rc,
          err.msg, needle);
}

static void test_parse(void)
{
    prefopt_objective o;
    CHECK(make_obj(&o, "dpo:1,sft:0.2", 0.1, 0, 0) == 0 && o.nterms == 2 && o.kind[0] == PREFOPT_LOSS_DPO &&
              o.weight[0] == 1 && o.kind[1] == PREFOPT_LOSS_SFT && o.weight[1] == 0.2 &&
              o.layout == PREFOPT_LAYOUT_PAIRS && o.uses_reference,
          "parse dpo:1,sft:0.2");
    CHECK(make_obj(&o, "sigmoid:0.8, bco_pair:0.2 ,sft", 0.1, 0, 0) == 0 && o.nterms == 3 &&
              o.kind[0] == PREFOPT_LOSS_DPO && o.weight[2] == 1.0, "parse the MPO example");
    CHECK(make_obj(&o, "sft", 0.1, 0, 0) == 0 && o.layout == PREFOPT_LAYOUT_SFT && !o.uses_reference, "parse sft");
    CHECK(make_obj(&o, "kto", 0.1, 0, 0) == 0 && o.layout == PREFOPT_LAYOUT_UNPAIRED && o.uses_kl, "parse kto");
    CHECK(make_obj(&o, "simpo", 2.0, 0, 0) == 0 && !o.uses_reference && o.length_avg_metrics && o.gamma == 0.5,
          "parse simpo");
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = "simpo";
    p.beta = 2.0;
    p.simpo_gamma_beta_ratio = 0.25;
    prefopt_err err = {0};
    CHECK(prefopt_objective_init(&o, &p, &err) == 0 && o.gamma == 0.5, "gamma from gamma_beta_ratio: %g", o.gamma);
    p.loss = "dpo";
    p.reference_free = 1;
    CHECK(prefopt_objective_init(&o, &p, &err) == 0 && !o.uses_reference, "dpo --reference-free");

    expect_error("exo_pair", 0, 0, "exo_pair needs --label-smoothing > 0");
    expect_error("robust", 0.5, 0, "robust needs --label-smoothing in [0, 0.5)");
    expect_error("dpo", 0.1, 0, "read by none of the losses");
    expect_error("dpo", 0.7, 1, "must be in [0, 0.5]");
    expect_error("kto,dpo", 0, 0, "cannot be combined");
    expect_error("kto,sft", 0, 0, "cannot be combined");
    expect_error("dpo,foo", 0, 0, "unknown loss \"foo\"");
    expect_error("dpo:x", 0, 0, "weight of \"dpo\"");
    expect_error("dpo:-1", 0, 0, "weight of \"dpo\"");
    expect_error("dpo,dpo:2", 0, 0, "appears twice");
    expect_error("", 0, 0, "empty");
    /* TRL's loss_type values: the list form, aot_pair and alphapo, names prefopt lacks refused by name */
    CHECK(make_obj(&o, "[\"sigmoid\", 'bco_pair', \"sft\"]", 0.1, 0, 0) == 0 && o.nterms == 3 &&
              o.kind[0] == PREFOPT_LOSS_DPO && o.kind[1] == PREFOPT_LOSS_BCO_PAIR && o.kind[2] == PREFOPT_LOSS_SFT,
          "TRL's list form");
    CHECK(make_obj(&o, "aot_pair", 0.1, 0, 0) == 0 && o.kind[0] == PREFOPT_LOSS_AOT_UNPAIRED, "aot_pair");
    CHECK(make_obj(&o, "alphapo", 2.0, 0, 0) == 0 && o.kind[0] == PREFOPT_LOSS_SIMPO, "alphapo");
    expect_error("aot_pair,aot_unpaired", 0, 0, "appears twice");
    expect_error("sigmoid,bco", 0, 0, "TRL's loss_type \"bco\" (BCOTrainer");
    expect_error("grpo", 0, 0, "TRL's loss_type \"grpo\"");
    expect_error("[]", 0, 0, "empty");
    prefopt_objective_params_default(&p);
    p.loss = "[\"sigmoid\", \"bco_pair\", \"sft\"]";
    p.loss_weights = "[0.8, 0.2, 1.0]";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) == 0 && o.weight[0] == 0.8 && o.weight[1] == 0.2 && o.weight[2] == 1.0,
          "loss_weights: %s", err.msg);
    p.loss_weights = "0.8,0.2";
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "has 2 weights for the 3 losses"), "count");
    p.loss = "dpo:0.5,sft";
    p.loss_weights = "1,1";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "give one"), "NAME:W and loss_weights");
    p.loss = "dpo";
    p.loss_weights = "-1";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "\"-1\" is not a finite number >= 0"),
          "negative loss_weights");
    /* the options an objective reads (config.ini keeps those) */
    CHECK(make_obj(&o, "dpo", 0.1, 0, 0) == 0 && prefopt_objective_reads_option(&o, "beta") &&
              prefopt_objective_reads_option(&o, "f-divergence") && !prefopt_objective_reads_option(&o, "simpo-gamma") &&
              !prefopt_objective_reads_option(&o, "desirable-weight") &&
              !prefopt_objective_reads_option(&o, "label-smoothing") && prefopt_objective_reads_option(&o, "lr"),
          "dpo reads beta and f-divergence, not simpo-gamma, desirable-weight or label-smoothing");
    CHECK(make_obj(&o, "kto", 0.1, 0, 0) == 0 && prefopt_objective_reads_option(&o, "desirable-weight") &&
              !prefopt_objective_reads_option(&o, "f-divergence") && !prefopt_objective_reads_option(&o, "rpo-alpha"),
          "kto reads its weights");
    CHECK(make_obj(&o, "sft", 0.1, 0, 0) == 0 && !prefopt_objective_reads_option(&o, "beta") &&
              prefopt_objective_reads_option(&o, "sft-reduction") && prefopt_objective_reads_option(&o, "sft-all-tokens"),
          "sft reads no beta");
    prefopt_objective_params_default(&p);
    p.loss = "simpo";
    p.f_divergence = "js_divergence";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "not to simpo"), "f-divergence on simpo");
    p.loss = "dpo";
    p.f_divergence = "tv";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "\"tv\""), "unknown f-divergence");
    prefopt_objective_params_default(&p);
    p.beta = 0;
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "--beta"), "beta 0 accepted");
    prefopt_objective_params_default(&p);
    p.loss = "simpo";
    p.ref_sync_steps = 10;
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "needs a reference"), "TR-DPO with simpo");

    /* rpo_alpha appends the sft term (TRL 0.27's RPO) */
    prefopt_objective_params_default(&p);
    p.rpo_alpha = 0.25;
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) == 0 && o.nterms == 2 && o.kind[1] == PREFOPT_LOSS_SFT &&
              o.weight[1] == 0.25 && o.layout == PREFOPT_LAYOUT_PAIRS, "rpo_alpha: %s", err.msg);
    p.loss = "dpo,sft:1";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "same thing"), "rpo_alpha with sft");
    p.loss = "kto";
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) != 0 && strstr(err.msg, "cannot be combined"), "rpo_alpha with kto");

    /* the log line */
    char line[512];
    make_obj(&o, "dpo:1,sft:0.2", 0.1, 0, 0);
    prefopt_objective_describe(line, sizeof line, &o);
    CHECK(!strcmp(line, "1*dpo + 0.2*sft | beta 0.1 | reference model | pairs"), "describe: \"%s\"", line);

    /* TR-DPO schedule */
    prefopt_objective_params_default(&p);
    p.ref_sync_steps = 4;
    err.set = 0;
    CHECK(prefopt_objective_init(&o, &p, &err) == 0, "ref sync init: %s", err.msg);
    CHECK(!prefopt_objective_ref_sync_due(&o, 0) && !prefopt_objective_ref_sync_due(&o, 3) &&
              prefopt_objective_ref_sync_due(&o, 4) && prefopt_objective_ref_sync_due(&o, 8) &&
              !prefopt_objective_ref_sync_due(&o, 9), "ref sync every 4 steps");

    /* the option table carries the sheet's defaults */
    prefopt_opt t[32];
    int n = prefopt_objective_options(t, 32, &p);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        if (!strcmp(t[i].name, "beta") && !strcmp(t[i].def, "0.1"))
            seen |= 1;
        if (!strcmp(t[i].name, "discopop-tau") && !strcmp(t[i].def, "0.05"))
            seen |= 2;
        if (!strcmp(t[i].name, "ref-mixup-alpha") && !strcmp(t[i].def, "0.6"))
            seen |= 4;
    }
    CHECK(n > 10 && seen == 7, "option table: %d entries, defaults seen %d", n, seen);
    CHECK(prefopt_objective_options(t, 3, &p) == -1, "option table overflow not reported");
}

/* ---- batches ----------------------------------------------------------------------------------------------- */

#define MAXU 32
typedef struct {
    double lp[MAXU], la[MAXU], nc[MAXU], na[MAXU], lg[MAXU], hits[MAXU], ref[MAXU];
    prefopt_unit_stats st;
    int nunits;
} units;

static void units_init(units *u, int n, unsigned seed)
{
    memset(u, 0, sizeof *u);
    u->nunits = n;
    srand(seed);
    for (int i = 0; i < n; i++) {
        u->nc[i] = 1 + rand() % 9;
        u->na[i] = u->nc[i] + rand() % 6;
        u->lp[i] = -u->nc[i] * (0.3 + 2.0 * rand() / RAND_MAX);
        u->la[i] = u->lp[i] - (u->na[i] - u->nc[i]) * (0.5 + 2.0 * rand() / RAND_MAX);
        u->ref[i] = u->lp[i] + 2.0 * rand() / RAND_MAX - 1.0;
        u->lg[i] = u->nc[i] * (-1.0 + 2.0 * rand() / RAND_MAX);
        u->hits[i] = rand() % (int)(u->nc[i] + 1);
    }
    u->st = (prefopt_unit_stats){u->lp, u->la, u->nc, u->na, u->lg, u->hits};
}

static double eval_loss(const prefopt_objective *o, prefopt_objective_batch *b, const prefopt_objective_norm *n)
{
    double loss, dc[MAXU], da[MAXU];
    prefopt_err err = {0};
    if (prefopt_objective_eval(&loss, dc, da, NULL, NULL, o, b, n, &err)) {
        fprintf(stderr, "eval: %s\n", err.msg);
        return NAN;
    }
    return loss;
}

/* The batch loss's gradient against finite differences in logp_completion, logp_all and ref_logp. */
static void check_batch_grads(const char *what, const prefopt_objective *o, units *u, prefopt_objective_batch *b,
                              const prefopt_objective_norm *n)
{
    double loss, dc[MAXU], da[MAXU], dr[MAXU];
    prefopt_err err = {0};
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, NULL, o, b, n, &err) == 0, "%s: %s", what, err.msg);
    double *vars[3] = {u->lp, u->la, u->ref};
    double *grads[3] = {dc, da, dr};
    for (int v = 0; v < 3; v++)
        for (int i = 0; i < u->nunits; i++) {
            double x = vars[v][i], h = 1e-6 * fmax(1, fabs(x));
            vars[v][i] = x + h;
            double lp = eval_loss(o, b, n);
            vars[v][i] = x - h;
            double lm = eval_loss(o, b, n);
            vars[v][i] = x;
            double fd = (lp - lm) / (2 * h);
            CHECK(fabs(grads[v][i] - fd) <= 1e-7 * (1 + fabs(fd)), "%s: d/d%s[%d] = %.12g, finite difference %.12g",
                  what, v == 0 ? "logp_completion" : v == 1 ? "logp_all" : "ref_logp", i, grads[v][i], fd);
        }
}

/* "dpo:1,sft:0.2" (RPO) and "orpo" by hand on a 3-pair batch, and their gradients. */
static void test_combination(void)
{
    units u;
    units_init(&u, 6, 7);
    int32_t ch[3] = {0, 2, 4}, rj[3] = {1, 3, 5};
    prefopt_objective_batch b = {.policy = &u.st, .nunits = 6, .ref_logp = u.ref, .npairs = 3, .chosen = ch,
                                 .rejected = rj};
    prefopt_objective o;
    make_obj(&o, "dpo:1,sft:0.2", 0.1, 0, 0);
    prefopt_objective_norm n = {0};
    prefopt_objective_count(&n, &o, &b);
    CHECK(n.pairs == 3 && n.chosen_tokens == u.nc[0] + u.nc[2] + u.nc[4], "count: %g pairs %g tokens", n.pairs,
          n.chosen_tokens);
    double want = 0, ntok = u.nc[0] + u.nc[2] + u.nc[4];
    for (int i = 0; i < 3; i++) {
        double D = (u.lp[ch[i]] - u.ref[ch[i]]) - (u.lp[rj[i]] - u.ref[rj[i]]);
        want += log1p(exp(-0.1 * D)) / 3 + 0.2 * -u.lp[ch[i]] / ntok;
    }
    double got = eval_loss(&o, &b, &n);
    CHECK(close_to(got, want, 1e-13), "dpo:1,sft:0.2: %.15g, by hand %.15g", got, want);
    check_batch_grads("dpo:1,sft:0.2", &o, &u, &b, &n);

    make_obj(&o, "orpo", 0.25, 0, 0);
    memset(&n, 0, sizeof n);
    prefopt_objective_count(&n, &o, &b);
    want = 0;
    double nall = u.na[0] + u.na[2] + u.na[4];
    for (int i = 0; i < 3; i++) {
        double pc = u.lp[ch[i]] / u.nc[ch[i]], pr = u.lp[rj[i]] / u.nc[rj[i]];
        double lo = (pc - pr) - (log(1 - exp(pc)) - log(1 - exp(pr)));
        want += -u.la[ch[i]] / nall - 0.25 * log(sig(lo)) / 3;
    }
    got = eval_loss(&o, &b, &n);
    CHECK(close_to(got, want, 1e-13), "orpo: %.15g, by hand %.15g", got, want);
    check_batch_grads("orpo", &o, &u, &b, &n);

    const char *mixes[] = {"sigmoid:0.8,bco_pair:0.2,sft:1", "ipo", "simpo,sft:1", "hinge:0.5,nca_pair:2",
                           "apo_zero,apo_down,sppo_hard", "discopop", "sigmoid_norm:3"};
    for (int i = 0; i < (int)(sizeof mixes / sizeof mixes[0]); i++) {
        make_obj(&o, mixes[i], 0.2, 0, 0);
        memset(&n, 0, sizeof n);
        prefopt_objective_count(&n, &o, &b);
        check_batch_grads(mixes[i], &o, &u, &b, &n);
    }
    /* NeMo's reward-aware PO with per-pair ground-truth rewards from the batch and eta = 2 */
    {
        double Rc[3] = {0.9, 0.2, 3.0}, Rr[3] = {0.1, 0.7, 1.0};
        const char *rpos[3] = {"rpo_sq", "rpo_fwd_kl", "rpo_bwd_kl"};
        for (int v = 0; v < 3; v++) {
            prefopt_objective_params pr;
            prefopt_objective_params_default(&pr);
            pr.loss = rpos[v];
            pr.beta = 0.4;
            pr.gt_reward_scale = 2.0;
            prefopt_err er = {0};
            CHECK(prefopt_objective_init(&o, &pr, &er) == 0, "%s: %s", rpos[v], er.msg);
            prefopt_objective_batch br = b;
            br.gt_reward_chosen = Rc;
            br.gt_reward_rejected = Rr;
            memset(&n, 0, sizeof n);
            prefopt_objective_count(&n, &o, &br);
            want = 0;
            for (int i = 0; i < 3; i++) {
                double zz = 0.4 * ((u.lp[ch[i]] - u.ref[ch[i]]) - (u.lp[rj[i]] - u.ref[rj[i]]));
                double gg = 2.0 * (Rc[i] - Rr[i]);
                double li = v == 0   ? pow(zz - gg, 2)
                            : v == 1 ? sig(zz) * (lsig(zz) - lsig(gg)) + sig(-zz) * (lsig(-zz) - lsig(-gg))
                                     : sig(gg) * (lsig(gg) - lsig(zz)) + sig(-gg) * (lsig(-gg) - lsig(-zz));
                want += li / 3;
            }
            got = eval_loss(&o, &br, &n);
            CHECK(close_to(got, want, 1e-13), "%s with rewards: %.15g, by hand %.15g", rpos[v], got, want);
            check_batch_grads(rpos[v], &o, &u, &br, &n);
        }
    }
    /* RPO with OpenRLHF's per-sequence mean NLL */
    prefopt_objective_params ps;
    prefopt_objective_params_default(&ps);
    ps.loss = "dpo,sft:0.3";
    ps.sft_reduction = "sequence_mean";
    prefopt_err e2 = {0};
    CHECK(prefopt_objective_init(&o, &ps, &e2) == 0, "sequence_mean: %s", e2.msg);
    memset(&n, 0, sizeof n);
    prefopt_objective_count(&n, &o, &b);
    want = 0;
    for (int i = 0; i < 3; i++) {
        double D = (u.lp[ch[i]] - u.ref[ch[i]]) - (u.lp[rj[i]] - u.ref[rj[i]]);
        want += log1p(exp(-0.1 * D)) / 3 + 0.3 * -(u.lp[ch[i]] / u.nc[ch[i]]) / 3;
    }
    got = eval_loss(&o, &b, &n);
    CHECK(close_to(got, want, 1e-13), "dpo,sft:0.3 sequence_mean: %.15g, by hand %.15g", got, want);
    check_batch_grads("dpo,sft:0.3 sequence_mean", &o, &u, &b, &n);
    ps.sft_reduction = "median";
    e2.set = 0;
    CHECK(prefopt_objective_init(&o, &ps, &e2) != 0 && strstr(e2.msg, "median"), "unknown sft reduction");

    /* aot / aot_unpaired: sort within the micro-batch, by hand with an insertion sort */
    for (int unp = 0; unp < 2; unp++) {
        make_obj(&o, unp ? "aot_unpaired:0.7" : "aot:0.7", 0.2, 0.1, 0);
        memset(&n, 0, sizeof n);
        prefopt_objective_count(&n, &o, &b);
        double a[3], c[3];
        for (int i = 0; i < 3; i++) {
            double pc = u.lp[ch[i]], pr = u.lp[rj[i]], fc = u.ref[ch[i]], fr = u.ref[rj[i]];
            a[i] = unp ? pc - fc : pc - pr;
            c[i] = unp ? pr - fr : fc - fr;
        }
        for (int i = 1; i < 3; i++)
            for (int j = i; j > 0; j--) {
                if (a[j] < a[j - 1]) {
                    double t = a[j]; a[j] = a[j - 1]; a[j - 1] = t;
                }
                if (c[j] < c[j - 1]) {
                    double t = c[j]; c[j] = c[j - 1]; c[j - 1] = t;
                }
            }
        want = 0;
        for (int i = 0; i < 3; i++) {
            double zz = 0.2 * (a[i] - c[i]);
            want += 0.7 * (-(1 - 0.1) * log(sig(zz)) - 0.1 * log(sig(-zz))) / 3;
        }
        got = eval_loss(&o, &b, &n);
        CHECK(close_to(got, want, 1e-13), "%s: %.15g, by hand %.15g", unp ? "aot_unpaired" : "aot", got, want);
        check_batch_grads(unp ? "aot_unpaired" : "aot", &o, &u, &b, &n);
        double g4[4];
        CHECK(isnan(prefopt_pair_loss(g4, o.kind[0], &o, -1, -2, -1, -2, 1, 1)), "aot has no per-pair form");
    }
    /* TRL-0.27 bco_pair: the running mean of the rewards, updated before use, shifts both terms */
    {
        prefopt_objective_params pb;
        prefopt_objective_params_default(&pb);
        pb.loss = "bco_pair";
        pb.beta = 0.3;
        pb.bco_running_mean = 1;
        prefopt_err eb = {0};
        CHECK(prefopt_objective_init(&o, &pb, &eb) == 0 && o.uses_bco_delta, "bco running mean: %s", eb.msg);
        prefopt_bco_state st = {0, 0};
        double m1 = 0, m2 = 0;
        for (int i = 0; i < 3; i++)
            m1 += 0.3 * (u.lp[ch[i]] - u.ref[ch[i]]) + 0.3 * (u.lp[rj[i]] - u.ref[rj[i]]);
        m1 /= 6;
        double d1 = prefopt_bco_update(&st, &o, &b, NULL);
        CHECK(close_to(d1, m1, 1e-14) && st.count == 1, "bco running mean after one update: %.15g, want %.15g", d1, m1);
        /* a second micro-batch: only pair 0 */
        prefopt_objective_batch b0 = b;
        b0.npairs = 1;
        m2 = (0.3 * (u.lp[0] - u.ref[0]) + 0.3 * (u.lp[1] - u.ref[1])) / 2;
        double d2 = prefopt_bco_update(&st, &o, &b0, NULL);
        CHECK(close_to(d2, (m1 + m2) / 2, 1e-14), "bco running mean after two updates: %.15g, want %.15g", d2,
              (m1 + m2) / 2);
        CHECK(b0.bco_ready && b0.bco_delta == d2, "prefopt_bco_update stores the mean in the batch");
        b.bco_delta = d2;
        memset(&n, 0, sizeof n);
        prefopt_objective_count(&n, &o, &b);
        want = 0;
        for (int i = 0; i < 3; i++) {
            double rc = 0.3 * (u.lp[ch[i]] - u.ref[ch[i]]), rr = 0.3 * (u.lp[rj[i]] - u.ref[rj[i]]);
            want += (-log(sig(rc - d2)) - log(sig(-(rr - d2)))) / 3;
        }
        got = eval_loss(&o, &b, &n);
        CHECK(close_to(got, want, 1e-13), "bco_pair with running mean: %.15g, by hand %.15g", got, want);
        check_batch_grads("bco_pair running mean", &o, &u, &b, &n);
        prefopt_objective_batch nb = b;
        nb.bco_ready = 0;
        double lx, dcx[MAXU], dax[MAXU];
        eb.set = 0;
        CHECK(prefopt_objective_eval(&lx, dcx, dax, NULL, NULL, &o, &nb, &n, &eb) != 0 &&
                  strstr(eb.msg, "prefopt_bco_update"), "bco batch without an update accepted");
        b.bco_delta = 0;
        b.bco_ready = 0;
        pb.loss = "dpo";
        eb.set = 0;
        CHECK(prefopt_objective_init(&o, &pb, &eb) != 0 && strstr(eb.msg, "bco_pair"), "bco running mean on dpo");
    }
    /* the MPO combination equals the weighted sum of the separately evaluated terms */
    prefopt_objective t1, t2, t3, mix;
    make_obj(&mix, "sigmoid:0.8,bco_pair:0.2,sft:1", 0.2, 0, 0);
    make_obj(&t1, "sigmoid", 0.2, 0, 0);
    make_obj(&t2, "bco_pair", 0.2, 0, 0);
    make_obj(&t3, "dpo:0,sft", 0.2, 0, 0);
    memset(&n, 0, sizeof n);
    prefopt_objective_count(&n, &mix, &b);
    double lm = eval_loss(&mix, &b, &n), l1 = eval_loss(&t1, &b, &n), l2 = eval_loss(&t2, &b, &n),
           l3 = eval_loss(&t3, &b, &n);
    CHECK(close_to(lm, 0.8 * l1 + 0.2 * l2 + l3, 1e-14), "MPO %.15g != 0.8*%g + 0.2*%g + %g", lm, l1, l2, l3);

    /* reference-free: the reference array is not read, rewards are beta * pi */
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.reference_free = 1;
    prefopt_err err = {0};
    prefopt_objective_init(&o, &p, &err);
    b.ref_logp = NULL;
    memset(&n, 0, sizeof n);
    prefopt_objective_count(&n, &o, &b);
    want = 0;
    for (int i = 0; i < 3; i++)
        want += log1p(exp(-0.1 * (u.lp[ch[i]] - u.lp[rj[i]]))) / 3;
    got = eval_loss(&o, &b, &n);
    CHECK(close_to(got, want, 1e-13), "reference-free dpo: %.15g, by hand %.15g", got, want);

    /* errors: missing reference, index out of range, uncounted step, wrong layout */
    make_obj(&o, "dpo", 0.1, 0, 0);
    double loss, dc[MAXU], da[MAXU];
    err.set = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, NULL, &o, &b, &n, &err) && strstr(err.msg, "reference"),
          "missing reference accepted");
    b.ref_logp = u.ref;
    rj[1] = 6;
    err.set = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, NULL, &o, &b, &n, &err) && strstr(err.msg, "rejected[1] = 6"),
          "out-of-range unit accepted: %s", err.msg);
    rj[1] = 3;
    prefopt_objective_norm zero = {0};
    err.set = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, NULL, &o, &b, &zero, &err) && strstr(err.msg, "pairs"),
          "zero normaliser accepted");
    make_obj(&o, "kto", 0.1, 0, 0);
    err.set = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, NULL, &o, &b, &n, &err) && strstr(err.msg, "unpaired"),
          "pairs given to kto accepted");
}

/* k micro-batches (uneven sizes) with the global normaliser == one batch, for every layout. */
static void test_accumulation(void)
{
    units u;
    units_init(&u, 12, 11);
    const char *specs[] = {"dpo", "dpo:1,sft:0.2", "orpo", "ipo", "simpo,sft:1", "robust", "kto", "sft",
                           "dpo,sft:0.5", "sft", "sft"};
    const double eps[] = {0, 0, 0, 0, 0.1, 0.2, 0, 0, 0, 0, 0};
    const char *reds[] = {"token", "token", "token", "token", "token", "token", "token", "token",
                          "sequence_mean", "sequence_mean", "sequence_sum"};
    for (int si = 0; si < (int)(sizeof specs / sizeof specs[0]); si++)
        for (int all = 0; all < 2; all++) {
            if (all && strcmp(specs[si], "sft"))
                continue;
            prefopt_objective o;
            prefopt_objective_params p;
            prefopt_objective_params_default(&p);
            p.loss = specs[si];
            p.label_smoothing = eps[si];
            p.sft_all_tokens = all;
            p.sft_reduction = reds[si];
            prefopt_err err = {0};
            if (prefopt_objective_init(&o, &p, &err)) {
                CHECK(0, "%s: %s", specs[si], err.msg);
                continue;
            }
            /* the full batch: pairs (2i, 2i+1), or 12 examples, or 12 SFT rows */
            int32_t idx[12], ch[6], rj[6];
            uint8_t des[12];
            for (int i = 0; i < 12; i++)
                idx[i] = i, des[i] = (i % 3) != 0;
            for (int i = 0; i < 6; i++)
                ch[i] = 2 * i, rj[i] = 2 * i + 1;
            prefopt_objective_batch full = {.policy = &u.st, .nunits = 12, .ref_logp = u.ref, .kl = 0.37};
            int nitems = o.layout == PREFOPT_LAYOUT_PAIRS ? 6 : 12;
            if (o.layout == PREFOPT_LAYOUT_PAIRS)
                full.npairs = 6, full.chosen = ch, full.rejected = rj;
            else if (o.layout == PREFOPT_LAYOUT_UNPAIRED)
                full.nexamples = 12, full.example = idx, full.desirable = des;
            else
                full.nsft = 12, full.sft = idx;
            prefopt_objective_norm n = {0};
            prefopt_objective_count(&n, &o, &full);
            double L, dc[MAXU], da[MAXU];
            prefopt_metrics mf, mk;
            prefopt_metrics_reset(&mf);
            prefopt_metrics_reset(&mk);
            CHECK(prefopt_objective_eval(&L, dc, da, NULL, &mf, &o, &full, &n, &err) == 0, "%s: %s", specs[si],
                  err.msg);

            /* split into 3 micro-batches of 1/6, 2/6, 3/6 of the items, each with its own unit numbering */
            int cuts[4] = {0, nitems / 6, nitems / 2, nitems};
            double Lk = 0, dck[MAXU] = {0}, dak[MAXU] = {0};
            for (int mb = 0; mb < 3; mb++) {
                int lo = cuts[mb], cnt = cuts[mb + 1] - lo;
                int upi = o.layout == PREFOPT_LAYOUT_PAIRS ? 2 : 1; /* units per item */
                int base = lo * upi, nu = cnt * upi;
                prefopt_unit_stats st = {u.lp + base, u.la + base, u.nc + base, u.na + base, u.lg + base,
                                         u.hits + base};
                int32_t lidx[12], lch[6], lrj[6];
                for (int i = 0; i < cnt; i++)
                    lidx[i] = i, lch[i] = 2 * i, lrj[i] = 2 * i + 1;
                prefopt_objective_batch mbb = {.policy = &st, .nunits = nu, .ref_logp = u.ref + base, .kl = 0.37};
                if (o.layout == PREFOPT_LAYOUT_PAIRS)
                    mbb.npairs = cnt, mbb.chosen = lch, mbb.rejected = lrj;
                else if (o.layout == PREFOPT_LAYOUT_UNPAIRED)
                    mbb.nexamples = cnt, mbb.example = lidx, mbb.desirable = des + lo;
                else
                    mbb.nsft = cnt, mbb.sft = lidx;
                double l, c[MAXU], a[MAXU];
                CHECK(prefopt_objective_eval(&l, c, a, NULL, &mk, &o, &mbb, &n, &err) == 0, "%s mb %d: %s",
                      specs[si], mb, err.msg);
                Lk += l;
                for (int i = 0; i < nu; i++)
                    dck[base + i] += c[i], dak[base + i] += a[i];
            }
            CHECK(close_to(Lk, L, 1e-14), "%s%s: 3 micro-batches give loss %.17g, one batch %.17g", specs[si],
                  all ? " (all tokens)" : "", Lk, L);
            for (int i = 0; i < 12; i++)
                CHECK(close_to(dck[i], dc[i], 1e-14) && close_to(dak[i], da[i], 1e-14),
                      "%s: unit %d gradient %.17g/%.17g (micro-batches) vs %.17g/%.17g", specs[si], i, dck[i],
                      dak[i], dc[i], da[i]);
            for (int k = 0; k < PREFOPT_M_COUNT; k++) {
                if (k == PREFOPT_M_KL) /* one value per micro-batch, averaged: the same constant here */
                    continue;
                double vf = prefopt_metrics_value(&mf, (prefopt_metric)k), vk = prefopt_metrics_value(&mk, (prefopt_metric)k);
                CHECK((isnan(vf) && isnan(vk)) || close_to(vf, vk, 1e-13), "%s: metric %s %.17g (one batch) vs %.17g",
                      specs[si], prefopt_metric_name((prefopt_metric)k), vf, vk);
            }
        }
}

/* KTO by hand, with an all-desirable batch, and the KL estimate clamped at 0 on one rank. */
static void test_kto(void)
{
    units u;
    units_init(&u, 4, 3);
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = "kto";
    p.beta = 0.2;
    p.desirable_weight = 1.5;
    p.undesirable_weight = 0.75;
    prefopt_objective o;
    prefopt_err err = {0};
    CHECK(prefopt_objective_init(&o, &p, &err) == 0, "kto: %s", err.msg);
    int32_t ex[4] = {0, 1, 2, 3};
    uint8_t des[4] = {1, 1, 1, 1};
    double kl = 0.4;
    prefopt_objective_batch b = {.policy = &u.st, .nunits = 4, .ref_logp = u.ref, .nexamples = 4, .example = ex,
                                 .desirable = des, .kl = kl};
    prefopt_objective_norm n = {0};
    prefopt_objective_count(&n, &o, &b);
    double want = 0, rsum = 0;
    for (int i = 0; i < 4; i++) {
        double r = u.lp[i] - u.ref[i];
        want += 1.5 * (1 - sig(0.2 * (r - kl))) / 4;
        rsum += 0.2 * r;
    }
    prefopt_metrics m;
    prefopt_metrics_reset(&m);
    double loss, dc[MAXU], da[MAXU], dr[MAXU];
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, &m, &o, &b, &n, &err) == 0, "kto eval: %s", err.msg);
    CHECK(close_to(loss, want, 1e-14), "kto all desirable: %.15g, by hand %.15g", loss, want);
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_CHOSEN), rsum / 4, 1e-14), "kto rewards/chosen");
    CHECK(!prefopt_metrics_has(&m, PREFOPT_M_REWARDS_REJECTED) && !prefopt_metrics_has(&m, PREFOPT_M_REWARDS_MARGINS) &&
              !prefopt_metrics_has(&m, PREFOPT_M_REWARDS_ACCURACIES),
          "kto all desirable: rejected/margins/accuracies must be absent");
    CHECK(prefopt_metrics_value(&m, PREFOPT_M_KL) == kl, "kto kl metric");
    check_batch_grads("kto all desirable", &o, &u, &b, &n);
    /* mixed labels: hand value and margins = chosen - rejected */
    des[1] = des[3] = 0;
    want = 0;
    for (int i = 0; i < 4; i++) {
        double r = u.lp[i] - u.ref[i];
        want += (des[i] ? 1.5 * (1 - sig(0.2 * (r - kl))) : 0.75 * (1 - sig(0.2 * (kl - r)))) / 4;
    }
    prefopt_metrics_reset(&m);
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, &m, &o, &b, &n, &err) == 0, "kto eval: %s", err.msg);
    CHECK(close_to(loss, want, 1e-14), "kto mixed: %.15g, by hand %.15g", loss, want);
    double mc = 0.2 * ((u.lp[0] - u.ref[0]) + (u.lp[2] - u.ref[2])) / 2;
    double mr = 0.2 * ((u.lp[1] - u.ref[1]) + (u.lp[3] - u.ref[3])) / 2;
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_MARGINS), mc - mr, 1e-14), "kto margins");
    check_batch_grads("kto mixed", &o, &u, &b, &n);
    b.kl = -0.1;
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, NULL, &o, &b, &n, &err) != 0, "negative (unclamped) kl accepted");

    /* the KL estimate on this rank alone: mean of (policy - reference), clamped at 0 */
    double pol[3] = {-10, -12, -7}, ref[3] = {-11, -12.5, -7.25}, ref2[3] = {-9, -11, -6};
    CHECK(close_to(prefopt_kto_kl(pol, ref, 3, NULL), (1 + 0.5 + 0.25) / 3, 1e-15), "kto kl mean");
    CHECK(prefopt_kto_kl(pol, ref2, 3, NULL) == 0, "kto kl not clamped at 0");
    CHECK(prefopt_kto_kl(pol, ref2, 0, NULL) == 0, "kto kl of no units");
    double refnan[3] = {-11, NAN, -7.25};
    double klnan = prefopt_kto_kl(pol, refnan, 3, NULL);
    CHECK(isnan(klnan), "kto kl with a missing reference log-prob: %g, want NaN (not clamped to 0)", klnan);
    b.kl = klnan;
    err.set = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, NULL, &o, &b, &n, &err) != 0 && strstr(err.msg, "NaN"),
          "NaN KL accepted: %s", err.msg);
    b.kl = kl;

    /* apo_zero_unpaired: desirable 1 - sig(beta r), undesirable sig(beta r) */
    p.loss = "apo_zero_unpaired";
    CHECK(prefopt_objective_init(&o, &p, &err) == 0 && !o.uses_kl, "apo_zero_unpaired: %s", err.msg);
    want = 0;
    for (int i = 0; i < 4; i++) {
        double s = sig(0.2 * (u.lp[i] - u.ref[i]));
        want += (des[i] ? 1 - s : s) / 4;
    }
    b.kl = 0;
    CHECK(prefopt_objective_eval(&loss, dc, da, dr, NULL, &o, &b, &n, &err) == 0 && close_to(loss, want, 1e-14),
          "apo_zero_unpaired: %.15g, by hand %.15g", loss, want);
    check_batch_grads("apo_zero_unpaired", &o, &u, &b, &n);
}

/* SFT: token mean over completion tokens (or all tokens in plain-text mode). */
static void test_sft(void)
{
    units u;
    units_init(&u, 3, 5);
    int32_t idx[3] = {0, 1, 2};
    const char *reds[3] = {"token", "sequence_mean", "sequence_sum"};
    for (int all = 0; all < 2; all++)
        for (int ri = 0; ri < 3; ri++) {
            prefopt_objective_params p;
            prefopt_objective_params_default(&p);
            p.loss = "sft";
            p.sft_all_tokens = all;
            p.sft_reduction = reds[ri];
            prefopt_objective o;
            prefopt_err err = {0};
            CHECK(prefopt_objective_init(&o, &p, &err) == 0, "sft %s: %s", reds[ri], err.msg);
            prefopt_objective_batch b = {.policy = &u.st, .nunits = 3, .nsft = 3, .sft = idx};
            prefopt_objective_norm n = {0};
            prefopt_objective_count(&n, &o, &b);
            const double *lp = all ? u.la : u.lp, *cnt = all ? u.na : u.nc;
            double want = ri == 0   ? -(lp[0] + lp[1] + lp[2]) / (cnt[0] + cnt[1] + cnt[2])
                          : ri == 1 ? -(lp[0] / cnt[0] + lp[1] / cnt[1] + lp[2] / cnt[2]) / 3
                                    : -(lp[0] + lp[1] + lp[2]) / 3;
            prefopt_metrics m;
            prefopt_metrics_reset(&m);
            double loss, dc[MAXU], da[MAXU];
            CHECK(prefopt_objective_eval(&loss, dc, da, NULL, &m, &o, &b, &n, &err) == 0, "sft: %s", err.msg);
            CHECK(close_to(loss, want, 1e-14), "sft%s %s: %.15g, by hand %.15g", all ? " all tokens" : "", reds[ri],
                  loss, want);
            CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_NLL_LOSS), want, 1e-14), "sft nll_loss metric");
            CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_MEAN_TOKEN_ACCURACY),
                           (u.hits[0] + u.hits[1] + u.hits[2]) / (u.nc[0] + u.nc[1] + u.nc[2]), 1e-14),
                  "sft mean_token_accuracy");
            check_batch_grads(all ? "sft all tokens" : "sft", &o, &u, &b, &n);
        }
}

/* DPO metrics by hand: rewards, ties as 0 in accuracies, token-weighted logits. */
static void test_pair_metrics(void)
{
    units u;
    units_init(&u, 4, 9);
    /* pair 1 is a tie: identical log-ratios */
    u.lp[2] = -5, u.ref[2] = -6, u.lp[3] = -8, u.ref[3] = -9;
    int32_t ch[2] = {0, 2}, rj[2] = {1, 3};
    prefopt_objective o;
    make_obj(&o, "dpo,sft:0.5", 0.1, 0, 0);
    prefopt_objective_batch b = {.policy = &u.st, .nunits = 4, .ref_logp = u.ref, .npairs = 2, .chosen = ch,
                                 .rejected = rj};
    prefopt_objective_norm n = {0};
    prefopt_objective_count(&n, &o, &b);
    prefopt_metrics m;
    prefopt_metrics_reset(&m);
    double loss, dc[MAXU], da[MAXU];
    prefopt_err err = {0};
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, &m, &o, &b, &n, &err) == 0, "metrics eval: %s", err.msg);
    double rc0 = 0.1 * (u.lp[0] - u.ref[0]), rr0 = 0.1 * (u.lp[1] - u.ref[1]);
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_CHOSEN), (rc0 + 0.1) / 2, 1e-14), "rewards/chosen");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_REJECTED), (rr0 + 0.1) / 2, 1e-14),
          "rewards/rejected");
    CHECK(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_ACCURACIES) == (rc0 > rr0 ? 0.5 : 0.0),
          "rewards/accuracies with a tie: %g", prefopt_metrics_value(&m, PREFOPT_M_REWARDS_ACCURACIES));
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_MARGINS), (rc0 - rr0) / 2, 1e-14), "rewards/margins");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_LOGPS_CHOSEN), (u.lp[0] - 5) / 2, 1e-14), "logps/chosen");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_LOGITS_CHOSEN), (u.lg[0] + u.lg[2]) / (u.nc[0] + u.nc[2]),
                   1e-14), "logits/chosen is token-weighted");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_LOGITS_REJECTED), (u.lg[1] + u.lg[3]) / (u.nc[1] + u.nc[3]),
                   1e-14), "logits/rejected is token-weighted");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_NLL_LOSS), -(u.lp[0] - 5) / (u.nc[0] + u.nc[2]), 1e-14),
          "nll_loss");
    CHECK(prefopt_metrics_value(&m, PREFOPT_M_LOSS) == loss, "loss metric");
    CHECK(!prefopt_metrics_has(&m, PREFOPT_M_KL) && !prefopt_metrics_has(&m, PREFOPT_M_LOG_ODDS_RATIO),
          "kl/log_odds present for dpo");
    /* merging two micro-batches' accumulators equals accumulating both into one */
    prefopt_metrics ma, mb, mab;
    prefopt_metrics_reset(&ma);
    prefopt_metrics_reset(&mb);
    prefopt_metrics_reset(&mab);
    prefopt_objective_batch b1 = b, b2 = b;
    b1.npairs = 1;
    b2.npairs = 1, b2.chosen = ch + 1, b2.rejected = rj + 1;
    double l1, l2;
    prefopt_objective_eval(&l1, dc, da, NULL, &ma, &o, &b1, &n, &err);
    prefopt_objective_eval(&l2, dc, da, NULL, &mb, &o, &b2, &n, &err);
    prefopt_objective_eval(&l1, dc, da, NULL, &mab, &o, &b1, &n, &err);
    prefopt_objective_eval(&l2, dc, da, NULL, &mab, &o, &b2, &n, &err);
    prefopt_metrics_merge(&ma, &mb);
    CHECK(memcmp(ma.sum, mab.sum, sizeof ma.sum) == 0 && memcmp(ma.count, mab.count, sizeof ma.count) == 0,
          "prefopt_metrics_merge differs from accumulating");
    CHECK(close_to(prefopt_metrics_value(&ma, PREFOPT_M_LOSS), loss, 1e-14), "merged loss %.17g, batch loss %.17g",
          prefopt_metrics_value(&ma, PREFOPT_M_LOSS), loss);
    char *js = prefopt_metrics_json_string(&m, "eval_", 12);
    CHECK(js && strstr(js, "\"step\":12") && strstr(js, "\"eval_rewards/accuracies\":") &&
              strstr(js, "\"eval_loss\":") && !strstr(js, "eval_kl"), "json: %s", js ? js : "(null)");
    free(js);

    /* SimPO/ORPO metrics are length-averaged and reference-free */
    make_obj(&o, "orpo", 0.1, 0, 0);
    prefopt_metrics_reset(&m);
    b.ref_logp = NULL;
    memset(&n, 0, sizeof n);
    prefopt_objective_count(&n, &o, &b);
    CHECK(prefopt_objective_eval(&loss, dc, da, NULL, &m, &o, &b, &n, &err) == 0, "orpo metrics: %s", err.msg);
    double pc0 = u.lp[0] / u.nc[0], pc1 = -5 / u.nc[2], pr0 = u.lp[1] / u.nc[1], pr1 = -8 / u.nc[3];
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_REWARDS_CHOSEN), 0.1 * (pc0 + pc1) / 2, 1e-14),
          "orpo rewards/chosen = beta * mean logp");
    double lo0 = (pc0 - pr0) - (log(1 - exp(pc0)) - log(1 - exp(pr0)));
    double lo1 = (pc1 - pr1) - (log(1 - exp(pc1)) - log(1 - exp(pr1)));
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_LOG_ODDS_CHOSEN), (lo0 + lo1) / 2, 1e-13), "log_odds_chosen");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_LOG_ODDS_RATIO), (log(sig(lo0)) + log(sig(lo1))) / 2, 1e-13),
          "log_odds_ratio");
    CHECK(close_to(prefopt_metrics_value(&m, PREFOPT_M_NLL_LOSS), -(u.la[0] + u.la[2]) / (u.na[0] + u.na[2]), 1e-14),
          "orpo nll_loss over prompt+chosen");
}

int main(void)
{
    test_pair_losses();
    test_edge_cases();
    test_parse();
    test_combination();
    test_accumulation();
    test_kto();
    test_sft();
    test_pair_metrics();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("objectives: all checks passed\n");
    return 0;
}
