/* prefopt: event traces. `--trace DIR` (or PREFOPT_TRACE=DIR) records, on every rank, a timeline of the regions
 * (regions.h) and of every MPI call (intercepted in the executable, src/dist/mpi_wrap.c: call, communicator,
 * peer or root, payload bytes, start and end), and writes at the end
 *   DIR/otf2/traces.otf2 (+ .def, traces/)   an OTF2 archive (libotf2): otf2-print, Vampir, Scalasca
 *   DIR/trace.json                            Chrome trace JSON: one process per rank, one track per thread
 *                                             (ui.perfetto.dev, chrome://tracing)
 *   DIR/summary.json, DIR/summary.txt         MPI time per region x call x communicator, byte histograms, per-rank
 *                                             min/mean/max, slowest rank, waiting vs transfer in collectives
 * Events are kept in a bounded buffer per rank (PREFOPT_TRACE_BUFFER_MB, default 32, at least 4 KiB) and
 * appended to DIR/spool/rank-N.bin at every step boundary (and when the buffer fills), so a run that dies leaves
 * its events up to the last flushed step: `prefopt trace-summary DIR` rebuilds the OTF2 archive, the JSON and the
 * summary from the spool files of any run, finished or not (io/trace, trace_export.h, writes the files).
 *
 * Time is seconds on CLOCK_MONOTONIC from a common start (a barrier at prefopt_trace_start); ranks on different
 * nodes agree to within the barrier's latency. Only the thread that calls MPI records (MPI_THREAD_FUNNELED). */
#ifndef PREFOPT_TRACE_H
#define PREFOPT_TRACE_H

#include "prefopt/common.h"
#include "prefopt/opts.h"

#include <mpi.h>
#include <stdio.h>

typedef struct {
    const char *dir;     /* --trace DIR ("" = off; PREFOPT_TRACE is the default) */
    const char *steps;   /* --trace-steps A:B (1-based, inclusive; "" = every step) */
    const char *pcontrol; /* --pcontrol off|window|named (regions.h) */
} prefopt_trace_params;

/* The options above, for a subcommand's option table (with_pcontrol = 0: without --pcontrol, for a subcommand that
 * has its own). Returns the number written or -1 when max is too small. */
int prefopt_trace_options(prefopt_opt *out, int max, prefopt_trace_params *p, int with_pcontrol);

/* Collective over world: parses the parameters, creates DIR and DIR/spool, turns regions on (regions.h, with the
 * --pcontrol mode) and starts recording when a step window does not say to wait. Errors (bad A:B, DIR not
 * writable) are agreed over world and returned on every rank. Without a DIR, only --pcontrol takes effect. */
int prefopt_trace_start(const prefopt_trace_params *p, MPI_Comm world, prefopt_err *err);
/* Step boundary (local, cheap): flushes the buffer to the spool and records only while A <= step <= B.
 * step is the 1-based number of the step about to run. Also brackets the window with MPI_Pcontrol(1)/(0). */
void prefopt_trace_step(long step);
/* Collective over the world given to start: flushes, then rank 0 writes the OTF2 archive, the JSON and the
 * summary from the spool files. Also called from MPI_Finalize (an agreed error exits through it). */
void prefopt_trace_finish(void);
int prefopt_trace_active(void);

/* Names a communicator for the trace and the summary ("tp_row", "tp_col", "tp", "dp", "world"). Communicators
 * the program did not name (BLACS's duplicates) get the name of a congruent named one. */
void prefopt_trace_name_comm(MPI_Comm c, const char *name);

/* What prefopt_trace_finish runs on rank 0 once every spool is complete (io/trace sets prefopt_trace_export:
 * the recorder, in src/dist, does not write the archive formats itself). */
void prefopt_trace_set_exporter(int (*fn)(const char *dir, FILE *f, prefopt_err *err));

#endif
