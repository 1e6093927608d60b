/* prefopt: region timers. Named, nested regions (a call tree keyed by path, e.g. "step/forward") with inclusive
 * wall time, call counts and the time spent inside MPI calls, summarised over ranks as min/avg/max (the layout of
 * Caliper's mpi-runtime-report) and written as folded stacks ("step;forward;MPI 1234") for flamegraph.pl,
 * speedscope or hotspot.
 *
 * Hooks for external tools:
 *   - MPI time per region comes from the PMPI interposer perf/pmpi/pmpi_summary.c when it is loaded
 *     (LD_PRELOAD=libprefopt_pmpi.so): its prefopt_pmpi_mpi_seconds() is looked up with dlsym at the first
 *     prefopt_regions_enable() and read on every enter/exit, and regions are announced to it with
 *     prefopt_pmpi_region(name, enter) so its per-call summary is split by region too. Without it, the MPI
 *     columns are absent (has_mpi_time = 0), never guessed.
 *   - MPI_Pcontrol. PREFOPT_PCONTROL_WINDOW: the caller brackets the measured steps with MPI_Pcontrol(1) /
 *     MPI_Pcontrol(0) (prefopt_regions_pcontrol_window), the mpiP "-o" and TAU/Extrae convention of profiling
 *     only a window. PREFOPT_PCONTROL_NAMED in addition announces every region enter as MPI_Pcontrol(1, name) and
 *     every exit as MPI_Pcontrol(-1, name), IPM's region convention (IPM splits its report by these names;
 *     mpiP treats level 1 as "enable" and ignores -1, so use WINDOW with mpiP).
 * Only the thread that calls MPI (the main thread) may use regions. Not re-entrant; cheap (a pointer compare per
 * child lookup, two clock reads per region). */
#ifndef PREFOPT_REGIONS_H
#define PREFOPT_REGIONS_H

#include <mpi.h>
#include <stdio.h>

enum { PREFOPT_PCONTROL_OFF = 0, PREFOPT_PCONTROL_WINDOW = 1, PREFOPT_PCONTROL_NAMED = 2 };

/* Turns timing on (1) or off (0, the default: enter/exit return at once). pcontrol: one of the modes above. */
void prefopt_regions_enable(int on, int pcontrol);
int prefopt_regions_enabled(void);
/* Zeroes every region's totals (e.g. after warm-up steps). Must not be called inside a region. */
void prefopt_regions_reset(void);
/* Calls MPI_Pcontrol(on ? 1 : 0) when the mode is WINDOW or NAMED. */
void prefopt_regions_pcontrol_window(int on);

/* Enter / exit a region named by a string that stays valid (a literal). Exits must match enters. */
void prefopt_region_enter(const char *name);
void prefopt_region_exit(const char *name);
/* The same region, numbered (a layer): the call tree adds every index up under name, the trace (trace.h) shows
 * "name index". Exit it with prefopt_region_exit(name). */
void prefopt_region_enter_n(const char *name, int index);

/* Local inclusive seconds, calls and MPI seconds of the region at path ("step/forward"); 0 if absent. */
double prefopt_region_seconds(const char *path, long *calls, double *mpi_seconds);
/* Cumulative seconds spent in MPI calls on this rank (from the PMPI library; 0 when it is not loaded). */
double prefopt_regions_mpi_seconds(void);
/* 1 when the PMPI library was found and MPI time is measured. */
int prefopt_regions_have_mpi_time(void);

/* The summary over the ranks of comm: one entry per path present on any rank (a rank without it counts 0). */
typedef struct {
    char path[192];
    int depth;
    double calls;        /* max over ranks */
    double incl[3];      /* inclusive seconds: min, avg, max over ranks */
    double excl[3];      /* exclusive (inclusive minus children) */
    double mpi[3];       /* seconds inside MPI calls (inclusive); zero without the PMPI library */
} prefopt_region_stat;

/* Collective over comm. Returns the number of entries (depth-first order) in *out (malloc'd; free it). */
int prefopt_regions_summarize(MPI_Comm comm, prefopt_region_stat **out);
/* Prints a table (rank 0 of comm prints; collective because it summarises). */
void prefopt_regions_print(FILE *f, MPI_Comm comm, const char *title);
/* Folded stacks: "prefix;a;b <microseconds>" with each region's exclusive time, split into a trailing ";MPI"
 * frame when MPI time is known. per_rank = 0: summed over ranks, one file written by rank 0; per_rank = 1: each
 * rank writes path.RANK with "rankN" as the first frame. Collective. Returns 0 or -1 (rank 0's errno). */
int prefopt_regions_write_folded(const char *path, const char *prefix, int per_rank, MPI_Comm comm);

#endif
