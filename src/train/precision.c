/* The arithmetic of a run: --precision and --gemm-backend resolved once at start-up, the same on every rank. */
#include "prefopt/precision.h"

#include "prefopt/gemm_local.h"
#include "prefopt/model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int use_bf16;
static char described[256] = "precision fp32 | local GEMM fp32 blis";

int prefopt_precision_is_bf16(void) { return use_bf16; }
const char *prefopt_precision_describe(void) { return described; }

/* The mean over the world of each backend's rate at two of the engine's shapes (GPT-2-small's 512 tokens x 768
 * -> 768 and -> 3072): every rank gets the same sums, so every rank picks the same backend. */
static prefopt_gemm_backend faster_fp32(MPI_Comm comm, double rates[2])
{
    double r[2] = {0, 0};
    for (int kind = 0; kind < 2; kind++)
        r[kind] = 5.0 / (1.0 / prefopt_gemm_rate(kind, 512, 768, 768, 5) + 4.0 / prefopt_gemm_rate(kind, 512, 3072, 768, 3));
    MPI_Allreduce(r, rates, 2, MPI_DOUBLE, MPI_SUM, comm);
    return rates[1] > rates[0] ? PREFOPT_GEMM_ONEDNN : PREFOPT_GEMM_BLIS;
}

int prefopt_precision_setup(const prefopt_precision_params *p, const prefopt_grid *g, prefopt_err *err)
{
    const char *prec = p->precision && *p->precision ? p->precision : "auto";
    const char *gb = p->gemm_backend && *p->gemm_backend ? p->gemm_backend : "blis";
    int be = prefopt_gemm_backend_parse(gb);
    if (be < 0) {
        prefopt_err_set(err, "--gemm-backend: '%s' is not blis, onednn or auto", gb);
        return -1;
    }
    if (strcmp(prec, "fp32") && strcmp(prec, "bf16") && strcmp(prec, "auto")) {
        prefopt_err_set(err, "--precision: '%s' is not fp32, bf16 or auto", prec);
        return -1;
    }
    char what[64];
    int has = prefopt_cpu_has_bf16(what, sizeof what);
    /* every rank must run the same arithmetic: a node without bf16 in a mixed allocation stops the job */
    int all = has;
    MPI_Allreduce(&has, &all, 1, MPI_INT, MPI_MIN, g->world);
    if (!strcmp(prec, "bf16") && !has) {
        prefopt_err_set(err, "--precision bf16: rank %d's CPU lacks bf16 instructions (%s); use --precision fp32 or auto",
                        g->world_rank, what);
        return -1;
    }
    if (!strcmp(prec, "bf16") && !all) {
        prefopt_err_set(err, "--precision bf16: another rank's CPU lacks bf16 instructions (avx512_bf16 and amx_bf16); "
                             "use --precision fp32");
        return -1;
    }
    use_bf16 = !strcmp(prec, "bf16") || (!strcmp(prec, "auto") && all);
    double rates[2] = {0, 0};
    if (be == PREFOPT_GEMM_AUTO)
        be = faster_fp32(g->world, rates);
    prefopt_gemm_set_backend((prefopt_gemm_backend)be);
    char timed[96] = "";
    if (rates[0] > 0)
        snprintf(timed, sizeof timed, " (auto: blis %.0f, onednn %.0f GFLOP/s per rank)", rates[0] / g->world_size * 1e-9,
                 rates[1] / g->world_size * 1e-9);
    snprintf(described, sizeof described, "precision %s%s (CPU bf16: %s) | local GEMM fp32 %s%s%s", use_bf16 ? "bf16" : "fp32",
             !strcmp(prec, "auto") ? " by auto" : "", what, prefopt_gemm_backend_name((prefopt_gemm_backend)be), timed,
             !use_bf16                        ? ""
             : prefopt_attention_bf16_kernel() ? ", bf16 oneDNN matmul, attention bf16 avx512_bf16 kernel"
                                               : ", bf16 oneDNN matmul, attention fp32 BLIS (no avx512_bf16)");
    return use_bf16;
}
