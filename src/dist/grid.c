/* Process layout: DP replicas of one BLACS grid each, plus the row/column/DP communicators the model's
 * reductions use. */
#include "prefopt/grid.h"

#include "blacs.h"
#include "prefopt/trace.h"

#include <string.h>

int prefopt_grid_init(prefopt_grid *g, MPI_Comm world, int nprow, int npcol, int dp, prefopt_err *err)
{
    memset(g, 0, sizeof *g);
    g->world = world;
    MPI_Comm_rank(world, &g->world_rank);
    MPI_Comm_size(world, &g->world_size);
    if (nprow < 1 || npcol < 1 || dp < 1 || (long)nprow * npcol * dp != g->world_size) {
        prefopt_err_set(err,
                        "grid %dx%d with %d data-parallel replicas needs %ld ranks, but the job has %d "
                        "(set --grid-rows, --grid-cols and --dp so that rows*cols*dp = ranks)",
                        nprow, npcol, dp, (long)nprow * npcol * dp, g->world_size);
        return -1;
    }
    g->nprow = nprow;
    g->npcol = npcol;
    g->tp_size = nprow * npcol;
    g->dp_size = dp;
    g->dp_rank = g->world_rank / g->tp_size;
    g->tp_rank = g->world_rank % g->tp_size;
    MPI_Comm_split(world, g->dp_rank, g->tp_rank, &g->tp);
    MPI_Comm_split(world, g->tp_rank, g->dp_rank, &g->dp);
    g->blacs_handle = Csys2blacs_handle(g->tp);
    g->ctxt = g->blacs_handle;
    Cblacs_gridinit(&g->ctxt, "Row", nprow, npcol);
    int pr, pc;
    Cblacs_gridinfo(g->ctxt, &pr, &pc, &g->myrow, &g->mycol);
    if (pr != nprow || pc != npcol || g->myrow * npcol + g->mycol != g->tp_rank)
        prefopt_die("BLACS grid %dx%d came back as %dx%d at (%d,%d) on TP rank %d", nprow, npcol, pr, pc, g->myrow,
                    g->mycol, g->tp_rank);
    MPI_Comm_split(g->tp, g->myrow, g->mycol, &g->row);
    MPI_Comm_split(g->tp, g->mycol, g->myrow, &g->col);
    /* the trace and its summary name communicators by role; BLACS's duplicates are matched as congruent */
    prefopt_trace_name_comm(g->row, "tp_row");
    prefopt_trace_name_comm(g->col, "tp_col");
    prefopt_trace_name_comm(g->tp, "tp");
    prefopt_trace_name_comm(g->dp, "dp");
    prefopt_trace_name_comm(world, "world");
    return 0;
}

void prefopt_grid_free(prefopt_grid *g)
{
    if (g->tp == MPI_COMM_NULL || !g->tp)
        return;
    Cblacs_gridexit(g->ctxt);
    Cfree_blacs_system_handle(g->blacs_handle);
    MPI_Comm_free(&g->row);
    MPI_Comm_free(&g->col);
    MPI_Comm_free(&g->dp);
    MPI_Comm_free(&g->tp);
    memset(g, 0, sizeof *g);
}
