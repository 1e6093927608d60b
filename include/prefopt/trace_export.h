/* prefopt: the trace's files (trace.h): the OTF2 archive (libotf2), the Chrome trace JSON and the summary, written
 * from the spool files the recorder leaves in DIR/spool. */
#ifndef PREFOPT_TRACE_EXPORT_H
#define PREFOPT_TRACE_EXPORT_H

#include "prefopt/trace.h"

/* prefopt_trace_start with prefopt_trace_export as the exporter: what the subcommands call. */
int prefopt_trace_begin(const prefopt_trace_params *p, MPI_Comm world, prefopt_err *err);

/* Rebuilds DIR/otf2 (traces.otf2), DIR/trace.json, DIR/summary.{txt,json} and DIR/timeline.{dat,gp} from
 * DIR/spool (serial, on the calling process; any run, finished or not: a killed rank's spool ends at its last
 * flush). Each file appears only when complete. Prints the summary to f when f is not NULL. */
int prefopt_trace_export(const char *dir, FILE *f, prefopt_err *err);

#endif
