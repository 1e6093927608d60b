/* prefopt: run control shared by the long-running subcommands: stop requests from SLURM signals agreed at
 * step boundaries, the run directory, metrics.jsonl and the progress line. */
#ifndef PREFOPT_RUNCTL_H
#define PREFOPT_RUNCTL_H

#include "prefopt/agree.h"

#include <stdio.h>

/* Installs handlers for SIGTERM and SIGUSR1 that only set a flag (SLURM's --signal and preemption send them
 * to every task; the handler must not touch MPI). */
void prefopt_stop_install(void);
/* Collective over comm: 1 on every rank if any rank has received a stop signal, so all ranks stop at the
 * same step boundary. */
int prefopt_stop_agreed(MPI_Comm comm);
/* For tests: raise the flag as a signal would. */
void prefopt_stop_request(void);

/* Creates dir (and parents) if missing. Returns 0 or fills err. */
int prefopt_mkdirs(const char *dir, prefopt_err *err);

/* Appends one line to path with O_APPEND so a requeued run keeps one file; fsyncs when sync is set. */
int prefopt_append_line(const char *path, const char *line, int sync, prefopt_err *err);

/* Drops the rows of metrics.jsonl after `step` (and a torn last line), atomically (a new file renamed over it),
 * so that a resumed run does not leave two rows for a replayed step. *dropped: the rows dropped. */
int prefopt_metrics_truncate(const char *path, long step, long *dropped, prefopt_err *err);

/* Takes RUN_DIR/lock (flock, held until the process ends, whatever ends it) and records "host H, pid P" in it;
 * fails, naming the holder, when another process holds it. */
int prefopt_run_lock(const char *run_dir, prefopt_err *err);

/* Writes data to path atomically: path.tmp.<pid>, fsync, rename, fsync of the directory. */
int prefopt_write_atomic(const char *path, const void *data, size_t len, prefopt_err *err);

/* "1h02m03s" style duration into buf. */
const char *prefopt_format_duration(double seconds, char *buf, size_t len);

#endif
