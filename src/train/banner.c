/* The start-up banner. It exists so that a job log says exactly which libraries ran: a cluster where
 * ScaLAPACK silently picked up another BLAS is found from the first lines of the log. */
#define _GNU_SOURCE
#include "prefopt/banner.h"

#include "prefopt/precision.h"

#include <blis.h>
#include <dlfcn.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

/* isa_check.c's constructor lives in a static library: this reference links it into every program that prints
 * the banner (every subcommand), so it runs before main. */
void prefopt_isa_check(void);
__attribute__((used)) static void (*const isa_check_linked)(void) = prefopt_isa_check;

/* sgemm_ (declared by blis.h) is the Fortran BLAS symbol ScaLAPACK calls; its address tells who provides it. */

const char *prefopt_sgemm_provider(void)
{
    Dl_info info;
    if (dladdr((void *)sgemm_, &info) && info.dli_fname)
        return info.dli_fname;
    return "unknown";
}

static const char *arch_note = "";

/* the widest vector instructions this build's own loops may use (PREFOPT_MARCH; isa_check.c enforces it) */
static const char *built_simd(void)
{
#if defined(__AVX512F__)
    return "AVX-512";
#elif defined(__AVX2__)
    return "AVX2";
#elif defined(__SSE4_2__)
    return "SSE4.2";
#else
    return "baseline x86-64";
#endif
}

void prefopt_blis_select_arch(void)
{
    /* BLIS 0.9 (Debian 12) has no zen4 configuration and maps AMD CPUs with AVX-512 to "generic", whose
     * sgemm runs about 5x below the skx kernels on the same core. The skx kernels need exactly
     * AVX-512 F/DQ/BW/VL, so select them when the CPU has those and the user chose nothing. */
    if (getenv("BLIS_ARCH_TYPE"))
        return;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        char id[16];
        snprintf(id, sizeof id, "%d", (int)BLIS_ARCH_SKX);
        setenv("BLIS_ARCH_TYPE", id, 0);
        arch_note = ", selected by prefopt for AVX-512";
    }
}

const char *prefopt_blis_version(void) { return bli_info_get_version_str(); }
const char *prefopt_blis_arch(void) { return bli_arch_string(bli_arch_query_id()); }

int prefopt_blis_threads(void)
{
    int n = (int)bli_thread_get_num_threads();
    return n > 0 ? n : 1;
}

void prefopt_banner(FILE *f, const prefopt_grid *g)
{
    if (g->world_rank != 0)
        return;
    char mpiver[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpiver, &len);
    char *nl = strchr(mpiver, '\n');
    if (nl)
        *nl = '\0';
    char *comma = strchr(mpiver, ',');
    if (comma)
        *comma = '\0';
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
    const char *job = getenv("SLURM_JOB_ID");
    fprintf(f,
            "prefopt %s (-march=%s, %s) | %s, %d ranks | grid %dx%d x dp %d | BLIS %s (%s%s), %d threads/rank | sgemm_ from %s | "
            "HDF5 %u.%u.%u | %s%s%s\n",
            PREFOPT_VERSION, PREFOPT_MARCH_NAME, built_simd(), mpiver, g->world_size, g->nprow, g->npcol, g->dp_size, prefopt_blis_version(),
            prefopt_blis_arch(), arch_note, prefopt_blis_threads(), prefopt_sgemm_provider(), maj, min, rel, prefopt_precision_describe(),
            job ? " | SLURM job " : "", job ? job : "");
    fflush(f);
}
