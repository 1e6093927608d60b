/* Metrics and the objectives' collectives under MPI (run with 2 ranks as data-parallel replicas):
 * metric sums reduced over ranks equal the one-rank metrics of the whole batch, the loss and gradient summed
 * over ranks equal the one-batch loss (global normalisation), KTO's KL is averaged over ranks before the clamp,
 * bco_pair's running mean pools ranks, the JSON output carries the TRL keys, and the optimizer's global gradient
 * norm counts a replicated vector once. */
#include "prefopt/agree.h"
#include "prefopt/metrics.h"
#include "prefopt/objectives.h"
#include "prefopt/optim.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* sums over MPI_COMM_WORLD, the way train lends its data-parallel reduction to the objectives */
static MPI_Comm world_comm;
static prefopt_reduction world;

static int failures;
#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            failures++;                                                                                       \
            fprintf(stderr, "FAIL rank %d %s:%d: ", rank, __FILE__, __LINE__);                                \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
        }                                                                                                     \
    } while (0)
static int rank, nranks;

static int close_to(double a, double b, double tol)
{
    return fabs(a - b) <= tol * (1 + fabs(b));
}

#define NP 8 /* pairs in the global batch */
static double lp[2 * NP], la[2 * NP], nc[2 * NP], na[2 * NP], lg[2 * NP], hits[2 * NP], ref[2 * NP];

static void make_data(void)
{
    for (int i = 0; i < 2 * NP; i++) { /* deterministic, the same on every rank */
        nc[i] = 1 + (i * 7) % 5;
        na[i] = nc[i] + (i * 3) % 4;
        lp[i] = -nc[i] * (0.4 + 0.13 * ((i * 5) % 7));
        la[i] = lp[i] - (na[i] - nc[i]) * 1.1;
        ref[i] = lp[i] + 0.3 * sin(1.7 * i);
        lg[i] = nc[i] * cos(0.9 * i);
        hits[i] = (i * 11) % (int)(nc[i] + 1);
    }
}

/* The pairs of [first, first+count) of the global batch as a micro-batch with local unit numbering. */
static int eval_range(double *loss, double *dc, prefopt_metrics *m, const prefopt_objective *o, int first, int count,
                      const prefopt_objective_norm *n, prefopt_objective_norm *count_into)
{
    int base = 2 * first;
    prefopt_unit_stats st = {lp + base, la + base, nc + base, na + base, lg + base, hits + base};
    int32_t ch[NP], rj[NP];
    for (int i = 0; i < count; i++)
        ch[i] = 2 * i, rj[i] = 2 * i + 1;
    prefopt_objective_batch b = {.policy = &st, .nunits = 2 * count, .ref_logp = ref + base, .npairs = count,
                                 .chosen = ch, .rejected = rj};
    if (count_into) {
        prefopt_objective_count(count_into, o, &b);
        return 0;
    }
    double da[2 * NP];
    prefopt_err err = {0};
    int rc = prefopt_objective_eval(loss, dc, da, NULL, m, o, &b, n, &err);
    if (rc)
        fprintf(stderr, "eval: %s\n", err.msg);
    return rc;
}

static void test_data_parallel(const char *spec)
{
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = spec;
    prefopt_objective o;
    prefopt_err err = {0};
    CHECK(prefopt_objective_init(&o, &p, &err) == 0, "%s: %s", spec, err.msg);

    /* one rank, the whole batch */
    prefopt_objective_norm n1 = {0};
    eval_range(NULL, NULL, NULL, &o, 0, NP, NULL, &n1);
    double L1, d1[2 * NP];
    prefopt_metrics m1;
    prefopt_metrics_reset(&m1);
    CHECK(eval_range(&L1, d1, &m1, &o, 0, NP, &n1, NULL) == 0, "%s: whole batch", spec);

    /* uneven split over ranks: rank r takes pairs [r*NP/(nranks+1), ...), the last rank the rest */
    int first = rank * NP / (nranks + 1), last = rank == nranks - 1 ? NP : (rank + 1) * NP / (nranks + 1);
    prefopt_objective_norm n = {0};
    eval_range(NULL, NULL, NULL, &o, first, last - first, NULL, &n);
    prefopt_objective_norm_reduce(&n, &world);
    CHECK(n.pairs == NP && n.chosen_tokens == n1.chosen_tokens, "%s: global counts %g pairs %g tokens", spec,
          n.pairs, n.chosen_tokens);
    double L, dloc[2 * NP], d[2 * NP] = {0};
    prefopt_metrics m;
    prefopt_metrics_reset(&m);
    CHECK(eval_range(&L, dloc, &m, &o, first, last - first, &n, NULL) == 0, "%s: my range", spec);
    for (int i = 0; i < 2 * (last - first); i++)
        d[2 * first + i] = dloc[i];
    MPI_Allreduce(MPI_IN_PLACE, &L, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, d, 2 * NP, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    prefopt_metrics_reduce(&m, &world);
    CHECK(close_to(L, L1, 1e-14), "%s: loss summed over ranks %.17g, one batch %.17g", spec, L, L1);
    for (int i = 0; i < 2 * NP; i++)
        CHECK(close_to(d[i], d1[i], 1e-14), "%s: unit %d gradient %.17g vs %.17g", spec, i, d[i], d1[i]);
    for (int k = 0; k < PREFOPT_M_COUNT; k++) {
        double a = prefopt_metrics_value(&m, (prefopt_metric)k), b = prefopt_metrics_value(&m1, (prefopt_metric)k);
        CHECK((isnan(a) && isnan(b)) || close_to(a, b, 1e-13), "%s: metric %s reduced %.17g, one batch %.17g", spec,
              prefopt_metric_name((prefopt_metric)k), a, b);
    }
}

/* KL: pooled mean over ranks, then the clamp (a rank with a negative local mean must not be clamped alone). */
static void test_kto_kl(void)
{
    /* rank 0: mean (pol - ref) = -1 ; rank 1: mean = +3 over 1 unit; others: nothing */
    double pol0[2] = {-10, -12}, ref0[2] = {-9, -11};
    double pol1[1] = {-4}, ref1[1] = {-7};
    double kl;
    if (rank == 0)
        kl = prefopt_kto_kl(pol0, ref0, 2, &world);
    else if (rank == 1)
        kl = prefopt_kto_kl(pol1, ref1, 1, &world);
    else
        kl = prefopt_kto_kl(NULL, NULL, 0, &world);
    double want = nranks >= 2 ? (-1 - 1 + 3) / 3.0 : 0.0; /* one rank: -1 clamped to 0 */
    CHECK(close_to(kl, want, 1e-15), "kto kl over %d ranks: %.17g, want %.17g", nranks, kl, want);
    /* every rank negative: clamped to 0 everywhere */
    double p[1] = {-5}, r[1] = {-4.5};
    kl = prefopt_kto_kl(p, r, 1, &world);
    CHECK(kl == 0, "kto kl with every rank negative: %g", kl);
    /* rank 0 positive, rank 1 more negative: the average is negative, so 0, though rank 0 alone is not */
    double q[1] = {rank == 0 ? -4.0 : -6.0}, s[1] = {-5.0};
    kl = prefopt_kto_kl(q, s, 1, &world);
    CHECK(kl == (nranks == 1 ? 1.0 : 0.0), "kto kl, rank means +1 and -1: %g", kl);
}

/* TRL-0.27 bco_pair's running mean: one value per rank and update, pooled over ranks */
static void test_bco_running_mean(void)
{
    prefopt_objective_params p;
    prefopt_objective_params_default(&p);
    p.loss = "bco_pair";
    p.bco_running_mean = 1;
    prefopt_objective o;
    prefopt_err err = {0};
    CHECK(prefopt_objective_init(&o, &p, &err) == 0, "bco: %s", err.msg);
    prefopt_bco_state st = {0, 0};
    /* rank r holds pair r (units 2r, 2r+1 of the data); rank 1 holds none in the second update */
    double expect_sum = 0;
    int expect_n = 0;
    for (int upd = 0; upd < 2; upd++) {
        int r = rank % NP;
        prefopt_unit_stats s = {lp + 2 * r, la + 2 * r, nc + 2 * r, na + 2 * r, lg + 2 * r, hits + 2 * r};
        int32_t ch[1] = {0}, rj[1] = {1};
        int have = !(upd == 1 && rank == 1);
        prefopt_objective_batch b = {.policy = &s, .nunits = 2, .ref_logp = ref + 2 * r, .npairs = have,
                                     .chosen = ch, .rejected = rj};
        double d = prefopt_bco_update(&st, &o, &b, &world);
        for (int q = 0; q < nranks; q++) {
            if (upd == 1 && q == 1)
                continue;
            int qq = q % NP;
            expect_sum += 0.1 * ((lp[2 * qq] - ref[2 * qq]) + (lp[2 * qq + 1] - ref[2 * qq + 1])) / 2;
            expect_n++;
        }
        CHECK(close_to(d, expect_sum / expect_n, 1e-14), "bco running mean, update %d: %.17g, want %.17g", upd, d,
              expect_sum / expect_n);
    }
}

/* Global gradient norm over ranks: each rank holds its shard [0, 4) plus a copy of a replicated vector [4, 6)
 * that only rank 0 counts. */
static void test_global_norm(void)
{
    float g[6] = {(float)(rank + 1), 1, 0, -2, 3, 4};
    prefopt_param_range r[2] = {{0, 4, 1, 1}, {4, 2, 0, rank == 0}};
    double norm = prefopt_global_norm(prefopt_sumsq(g, r, 2), MPI_COMM_WORLD);
    double want = 25; /* 3^2 + 4^2, once */
    for (int q = 0; q < nranks; q++)
        want += (q + 1.0) * (q + 1.0) + 1 + 4;
    CHECK(close_to(norm, sqrt(want), 1e-15), "global norm %.17g, want %.17g", norm, sqrt(want));
}

static void test_json(void)
{
    prefopt_metrics m;
    prefopt_metrics_reset(&m);
    prefopt_metrics_add(&m, PREFOPT_M_LOSS, 0.25, 1);
    prefopt_metrics_add(&m, PREFOPT_M_REWARDS_CHOSEN, 1.0 + rank, 2);
    prefopt_metrics_add(&m, PREFOPT_M_NUM_TOKENS, 100, 1);
    prefopt_metrics_reduce(&m, &world);
    char *s = prefopt_metrics_json_string(&m, "", 7);
    cJSON *o = s ? cJSON_Parse(s) : NULL;
    double rsum = 0;
    for (int r = 0; r < nranks; r++)
        rsum += 1.0 + r;
    CHECK(o != NULL, "metrics JSON does not parse: %s", s ? s : "(null)");
    if (o) {
        cJSON *loss = cJSON_GetObjectItemCaseSensitive(o, "loss");
        cJSON *rc = cJSON_GetObjectItemCaseSensitive(o, "rewards/chosen");
        cJSON *nt = cJSON_GetObjectItemCaseSensitive(o, "num_tokens");
        cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
        CHECK(cJSON_IsNumber(loss) && close_to(loss->valuedouble, 0.25 * nranks, 1e-15), "loss is a sum over ranks");
        CHECK(cJSON_IsNumber(rc) && close_to(rc->valuedouble, rsum / (2.0 * nranks), 1e-15), "rewards/chosen mean");
        CHECK(cJSON_IsNumber(nt) && nt->valuedouble == 100.0 * nranks, "num_tokens sum");
        CHECK(cJSON_IsNumber(st) && st->valuedouble == 7, "step");
        CHECK(!cJSON_GetObjectItemCaseSensitive(o, "rewards/rejected") && !cJSON_GetObjectItemCaseSensitive(o, "kl"),
              "absent metrics written: %s", s);
        cJSON_Delete(o);
    }
    free(s);
    cJSON *e = cJSON_CreateObject();
    CHECK(prefopt_metrics_to_json(e, &m, "eval_") == 0 && cJSON_GetObjectItemCaseSensitive(e, "eval_rewards/chosen") &&
              !cJSON_GetObjectItemCaseSensitive(e, "rewards/chosen"), "eval_ prefix");
    cJSON_Delete(e);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    world_comm = MPI_COMM_WORLD;
    world = prefopt_reduction_over(&world_comm);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    make_data();
    const char *specs[] = {"dpo", "dpo:1,sft:0.2", "orpo", "ipo:0.5,hinge", "simpo"};
    for (int i = 0; i < (int)(sizeof specs / sizeof specs[0]); i++)
        test_data_parallel(specs[i]);
    test_kto_kl();
    test_bco_running_mean();
    test_global_norm();
    test_json();
    int any = failures;
    MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf(any ? "metrics: %d check(s) failed\n" : "metrics: all checks passed on %d ranks\n", any ? any : nranks);
    MPI_Finalize();
    return any ? 1 : 0;
}
