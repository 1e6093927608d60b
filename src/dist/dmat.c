/* Block-cyclic distributed matrices on a TP grid: index maps, gather/scatter, and the PBLAS panel
 * width override (pilaenv_). */
#include "prefopt/dmat.h"

#include "blacs.h"

#include <blis.h>
#include <string.h>

/* Reference PBLAS walks the shared dimension in panels of pilaenv_() = 32 columns, so every psgemm becomes a
 * string of rank-32 updates, each with its own broadcast: about 2.5x slower than one local GEMM (hpc-stack.md
 * 1.4). Defining pilaenv_ here interposes on libscalapack's PLT call (the executables link with
 * ENABLE_EXPORTS). 512 was measured as the knee; the value must be the same on every rank. */
#define PREFOPT_DEFAULT_PANEL 512
static int panel_width = PREFOPT_DEFAULT_PANEL;
static long pilaenv_calls;

int pilaenv_(const int *ictxt, const char *prec);
int pilaenv_(const int *ictxt, const char *prec)
{
    (void)ictxt;
    (void)prec;
    pilaenv_calls++;
    return panel_width;
}

void prefopt_dmat_set_panel_width(int kb) { panel_width = kb > 0 ? kb : PREFOPT_DEFAULT_PANEL; }
int prefopt_dmat_panel_width(void) { return panel_width; }
long prefopt_dmat_pilaenv_calls(void) { return pilaenv_calls; }

static int local_count(int n, int nb, int iproc, int nprocs)
{
    int zero = 0;
    return numroc_(&n, &nb, &iproc, &zero, &nprocs);
}

void prefopt_dmat_init(prefopt_dmat *a, const prefopt_grid *g, int m, int n, int mb, int nb)
{
    memset(a, 0, sizeof *a);
    a->grid = g;
    a->m = m;
    a->n = n;
    a->mb = mb > 0 ? mb : 1;
    a->nb = nb > 0 ? nb : 1;
    a->mloc = local_count(m, a->mb, g->myrow, g->nprow);
    a->nloc = local_count(n, a->nb, g->mycol, g->npcol);
    a->lld = a->mloc > 1 ? a->mloc : 1;
    /* filled by hand rather than descinit_, which aborts-by-info on m = 0 edge cases we handle ourselves */
    int d[9] = {1, g->ctxt, m, n, a->mb, a->nb, 0, 0, a->lld};
    memcpy(a->desc, d, sizeof d);
}

void prefopt_dmat_init_rowvec(prefopt_dmat *a, const prefopt_grid *g, int n, int nb)
{
    memset(a, 0, sizeof *a);
    a->grid = g;
    a->m = 1;
    a->n = n;
    a->mb = 1;
    a->nb = nb > 0 ? nb : 1;
    a->mloc = 1;
    a->nloc = local_count(n, a->nb, g->mycol, g->npcol);
    a->lld = 1;
    a->rep_rows = 1;
    int d[9] = {1, g->ctxt, 1, n, 1, a->nb, 0, 0, 1};
    memcpy(a->desc, d, sizeof d);
}

size_t prefopt_dmat_local_size(const prefopt_dmat *a) { return (size_t)a->lld * (size_t)a->nloc; }

static int l2g(int l, int nb, int p, int np) { return (l / nb) * np * nb + p * nb + l % nb; }

int prefopt_dmat_row_l2g(const prefopt_dmat *a, int il)
{
    return a->rep_rows ? il : l2g(il, a->mb, a->grid->myrow, a->grid->nprow);
}
int prefopt_dmat_col_l2g(const prefopt_dmat *a, int jl) { return l2g(jl, a->nb, a->grid->mycol, a->grid->npcol); }
int prefopt_dmat_row_owner(const prefopt_dmat *a, int i) { return a->rep_rows ? 0 : (i / a->mb) % a->grid->nprow; }
int prefopt_dmat_col_owner(const prefopt_dmat *a, int j) { return (j / a->nb) % a->grid->npcol; }
int prefopt_dmat_row_g2l(const prefopt_dmat *a, int i)
{
    return a->rep_rows ? i : (i / (a->mb * a->grid->nprow)) * a->mb + i % a->mb;
}
int prefopt_dmat_col_g2l(const prefopt_dmat *a, int j) { return (j / (a->nb * a->grid->npcol)) * a->nb + j % a->nb; }

/* Each rank writes its blocks into a zeroed full copy and the copies are summed over the TP group: every
 * element has exactly one non-zero contributor, so the sum is exact. A row vector is contributed by process
 * row 0 only. O(m*n) per rank: meant for tests, import/export and small tensors. */
void prefopt_dmat_gather(const prefopt_dmat *a, float *full)
{
    size_t total = (size_t)a->m * (size_t)a->n;
    memset(full, 0, total * sizeof *full);
    if (!a->rep_rows || a->grid->myrow == 0) {
        for (int jl = 0; jl < a->nloc; jl++) {
            int j = prefopt_dmat_col_l2g(a, jl);
            for (int il = 0; il < a->mloc; il++)
                full[(size_t)j * a->m + prefopt_dmat_row_l2g(a, il)] = a->data[(size_t)jl * a->lld + il];
        }
    }
    /* MPI counts are int: reduce in chunks */
    const size_t chunk = (size_t)1 << 28;
    for (size_t off = 0; off < total; off += chunk) {
        size_t len = total - off < chunk ? total - off : chunk;
        MPI_Allreduce(MPI_IN_PLACE, full + off, (int)len, MPI_FLOAT, MPI_SUM, a->grid->tp);
    }
}

void prefopt_dmat_scatter(prefopt_dmat *a, const float *full)
{
    for (int jl = 0; jl < a->nloc; jl++) {
        int j = prefopt_dmat_col_l2g(a, jl);
        for (int il = 0; il < a->mloc; il++)
            a->data[(size_t)jl * a->lld + il] = full[(size_t)j * a->m + prefopt_dmat_row_l2g(a, il)];
    }
}
