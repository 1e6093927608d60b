/* The local GEMM backends (prefopt/gemm_local.h): BLIS or oneDNN sgemm for fp32, oneDNN's matmul primitive for
 * bf16 inputs with fp32 accumulation and output.
 *
 * Column-major to oneDNN. oneDNN's matrices are row-major, so the column-major C (m x n, ldc) is the row-major
 * C^T (n x m, row stride ldc) and C^T = op(B)^T op(A)^T: oneDNN's src is op(B)^T (n x k), its weights op(A)^T
 * (k x m). A transpose is a swap of the two strides of a memory descriptor; leading dimensions are the other
 * stride. Writing C^T row-major is what the brgemm kernels want (dst in plain "ab"); the operands may be either
 * order. alpha is an output scale and beta a sum post-op, both attributes of the primitive, so they are part of
 * the key. */
#include "prefopt/gemm_local.h"

#include "prefopt/common.h"

#include <blis.h>
#include <cpuid.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static prefopt_gemm_backend backend = PREFOPT_GEMM_BLIS;

int prefopt_gemm_backend_parse(const char *s)
{
    if (!strcmp(s, "blis"))
        return PREFOPT_GEMM_BLIS;
    if (!strcmp(s, "onednn"))
        return PREFOPT_GEMM_ONEDNN;
    if (!strcmp(s, "auto"))
        return PREFOPT_GEMM_AUTO;
    return -1;
}

const char *prefopt_gemm_backend_name(prefopt_gemm_backend b)
{
    return b == PREFOPT_GEMM_ONEDNN ? "onednn" : b == PREFOPT_GEMM_AUTO ? "auto" : "blis";
}

void prefopt_gemm_set_backend(prefopt_gemm_backend b) { backend = b == PREFOPT_GEMM_ONEDNN ? b : PREFOPT_GEMM_BLIS; }
prefopt_gemm_backend prefopt_gemm_get_backend(void) { return backend; }

void prefopt_sgemm_with(prefopt_gemm_backend be, char ta, char tb, int m, int n, int k, float alpha, const float *a,
                        int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (be == PREFOPT_GEMM_ONEDNN) {
        /* row-major C^T = op(B)^T op(A)^T: the same bytes, operands swapped */
        dnnl_status_t st = dnnl_sgemm(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
        if (st != dnnl_success)
            prefopt_die("dnnl_sgemm(%c, %c, %d, %d, %d) failed with status %d", tb, ta, n, m, k, (int)st);
        return;
    }
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

void prefopt_sgemm_local(char ta, char tb, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc)
{
    prefopt_sgemm_with(backend, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* ---- bf16 ------------------------------------------------------------------------------------------------ */

void prefopt_bf16_from_f32(uint16_t *dst, const float *src, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        dst[i] = prefopt_bf16_round(src[i]);
}

void prefopt_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        dst[i] = prefopt_bf16_value(src[i]);
}

/* cpuid leaf 7: AMX-BF16 (subleaf 0, edx bit 22) and AVX512_BF16 (subleaf 1, eax bit 5) */
static void cpuid_bf16(int *avx512, int *amx)
{
    unsigned a = 0, b = 0, c = 0, d = 0;
    *avx512 = *amx = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        *amx = (d >> 22) & 1;
        if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d))
            *avx512 = (a >> 5) & 1;
    }
}

int prefopt_cpu_avx512_bf16(void)
{
    /* asked by every attention worker: cpuid once (it traps to the hypervisor in a VM); threads may race to
     * store the same value */
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        int amx;
        cpuid_bf16(&v, &amx);
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}

int prefopt_cpu_has_bf16(char *what, size_t len)
{
    int avx512, amx;
    cpuid_bf16(&avx512, &amx);
    const char *pretend = getenv("PREFOPT_BF16_PRETEND_MISSING");
    if (pretend && *pretend && strcmp(pretend, "0"))
        avx512 = amx = 0;
    if (what && len)
        snprintf(what, len, "%s", amx && avx512 ? "amx_bf16 avx512_bf16" : amx ? "amx_bf16" : avx512 ? "avx512_bf16"
                                                                                  : "avx512_bf16 and amx_bf16 missing");
    return avx512 || amx;
}

typedef struct {
    char ta, tb;
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
    long last_use;
} bf16_entry;

/* The engine multiplies a few dozen shapes (per layer kind, forward and backward, the head's chunks); 128 entries
 * hold them all, and the least recently used one is replaced beyond that. */
#define BF16_CACHE 128
static bf16_entry cache[BF16_CACHE];
static int ncache;
static long uses, created, calls;
static dnnl_engine_t engine;
static dnnl_stream_t stream;
static char impl[128];

const char *prefopt_gemm_bf16_impl(void) { return impl; }
long prefopt_gemm_bf16_created(void) { return created; }
long prefopt_gemm_bf16_calls(void) { return calls; }

#define DNNL_CHECK(call, what)                                                                                     \
    do {                                                                                                           \
        dnnl_status_t st_ = (call);                                                                                \
        if (st_ != dnnl_success)                                                                                   \
            prefopt_die("oneDNN bf16 matmul (%c%c m=%d n=%d k=%d): %s failed with status %d", e->ta, e->tb, e->m, \
                        e->n, e->k, what, (int)st_);                                                               \
    } while (0)

static void bf16_create(bf16_entry *e)
{
    if (!engine) {
        if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
            dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success)
            prefopt_die("oneDNN: cannot create the CPU engine");
    }
    const int tA = e->ta == 'T' || e->ta == 't', tB = e->tb == 'T' || e->tb == 't';
    /* src = op(B)^T (n x k): element (j, p) = op(B)(p, j) */
    dnnl_dims_t sd = {e->n, e->k}, ss = {tB ? 1 : e->ldb, tB ? e->ldb : 1};
    /* weights = op(A)^T (k x m): element (p, i) = op(A)(i, p) */
    dnnl_dims_t wd = {e->k, e->m}, ws = {tA ? 1 : e->lda, tA ? e->lda : 1};
    /* dst = C^T (n x m), row stride ldc */
    dnnl_dims_t dd = {e->n, e->m}, ds = {e->ldc, 1};
    dnnl_memory_desc_t smd, wmd, dmd;
    DNNL_CHECK(dnnl_memory_desc_init_by_strides(&smd, 2, sd, dnnl_bf16, ss), "src descriptor");
    DNNL_CHECK(dnnl_memory_desc_init_by_strides(&wmd, 2, wd, dnnl_bf16, ws), "weights descriptor");
    DNNL_CHECK(dnnl_memory_desc_init_by_strides(&dmd, 2, dd, dnnl_f32, ds), "dst descriptor");
    dnnl_matmul_desc_t md;
    DNNL_CHECK(dnnl_matmul_desc_init(&md, &smd, &wmd, NULL, &dmd), "matmul descriptor");
    dnnl_primitive_attr_t attr;
    DNNL_CHECK(dnnl_primitive_attr_create(&attr), "attributes");
    if (e->alpha != 1.0f)
        DNNL_CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &e->alpha), "output scale");
    dnnl_post_ops_t po = NULL;
    if (e->beta != 0.0f) {
        DNNL_CHECK(dnnl_post_ops_create(&po), "post-ops");
        DNNL_CHECK(dnnl_post_ops_append_sum(po, e->beta), "sum post-op");
        DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, po), "post-ops attribute");
    }
    dnnl_primitive_desc_t pd;
    DNNL_CHECK(dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL), "primitive descriptor");
    const char *name = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name)
        snprintf(impl, sizeof impl, "%s", name);
    DNNL_CHECK(dnnl_primitive_create(&e->prim, pd), "primitive");
    DNNL_CHECK(dnnl_memory_create(&e->src, &smd, engine, DNNL_MEMORY_NONE), "src memory");
    DNNL_CHECK(dnnl_memory_create(&e->wei, &wmd, engine, DNNL_MEMORY_NONE), "weights memory");
    DNNL_CHECK(dnnl_memory_create(&e->dst, &dmd, engine, DNNL_MEMORY_NONE), "dst memory");
    dnnl_primitive_desc_destroy(pd);
    if (po)
        dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    created++;
}

static void bf16_destroy(bf16_entry *e)
{
    dnnl_primitive_destroy(e->prim);
    dnnl_memory_destroy(e->src);
    dnnl_memory_destroy(e->wei);
    dnnl_memory_destroy(e->dst);
}

static bf16_entry *bf16_lookup(char ta, char tb, int m, int n, int k, int lda, int ldb, int ldc, float alpha,
                               float beta)
{
    bf16_entry *victim = NULL;
    for (int i = 0; i < ncache; i++) {
        bf16_entry *e = &cache[i];
        if (e->ta == ta && e->tb == tb && e->m == m && e->n == n && e->k == k && e->lda == lda && e->ldb == ldb &&
            e->ldc == ldc && e->alpha == alpha && e->beta == beta)
            return e;
        if (!victim || e->last_use < victim->last_use)
            victim = e;
    }
    if (ncache < BF16_CACHE)
        victim = &cache[ncache++];
    else
        bf16_destroy(victim);
    *victim = (bf16_entry){.ta = ta, .tb = tb, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .ldc = ldc,
                           .alpha = alpha, .beta = beta};
    bf16_create(victim);
    return victim;
}

void prefopt_gemm_bf16(char ta, char tb, int m, int n, int k, float alpha, const uint16_t *a, int lda,
                       const uint16_t *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) { /* C := beta C (oneDNN refuses empty shared dimensions) */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
                c[(size_t)j * ldc + i] = beta == 0.0f ? 0.0f : beta * c[(size_t)j * ldc + i];
        return;
    }
    ta = (ta == 't') ? 'T' : (ta == 'n') ? 'N' : ta;
    tb = (tb == 't') ? 'T' : (tb == 'n') ? 'N' : tb;
    bf16_entry *e = bf16_lookup(ta, tb, m, n, k, lda, ldb, ldc, alpha, beta);
    e->last_use = ++uses;
    DNNL_CHECK(dnnl_memory_set_data_handle(e->src, (void *)b), "src handle");
    DNNL_CHECK(dnnl_memory_set_data_handle(e->wei, (void *)a), "weights handle");
    DNNL_CHECK(dnnl_memory_set_data_handle(e->dst, c), "dst handle");
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
    DNNL_CHECK(dnnl_primitive_execute(e->prim, stream, 3, args), "execute");
    DNNL_CHECK(dnnl_stream_wait(stream), "stream wait");
    calls++;
}

/* ---- rates ------------------------------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double prefopt_gemm_rate(int kind, int m, int n, int k, int reps)
{
    size_t na = (size_t)m * k, nb = (size_t)k * n, nc = (size_t)m * n;
    float *a = prefopt_xmalloc(sizeof(float) * (na + nb + nc) + 64, "gemm rate buffers"), *b = a + na, *c = b + nb;
    uint16_t *ha = prefopt_xmalloc(sizeof(uint16_t) * (na + nb) + 64, "gemm rate bf16 buffers"), *hb = ha + na;
    for (size_t i = 0; i < na + nb; i++)
        a[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    prefopt_bf16_from_f32(ha, a, na + nb);
    double best = 0;
    for (int r = 0; r <= reps; r++) {
        double t0 = now_s();
        if (kind == 2)
            prefopt_gemm_bf16('N', 'N', m, n, k, 1.0f, ha, m, hb, k, 0.0f, c, m);
        else
            prefopt_sgemm_with(kind == 1 ? PREFOPT_GEMM_ONEDNN : PREFOPT_GEMM_BLIS, 'N', 'N', m, n, k, 1.0f, a, m, b,
                               k, 0.0f, c, m);
        double dt = now_s() - t0, rate = 2.0 * m * n * (double)k / dt;
        if (r > 0 && rate > best) /* r = 0 warms up (and creates the bf16 primitive) */
            best = rate;
    }
    free(a);
    free(ha);
    return best;
}
