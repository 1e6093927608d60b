/* Internal to the trace exporter: decoded events of one rank and the global definitions (trace_export.c), and
 * the summary built from them (trace_summary.c). */
#ifndef PREFOPT_TRACE_SUMMARY_H
#define PREFOPT_TRACE_SUMMARY_H

#include "prefopt/common.h"

#include <stdint.h>
#include <stdio.h>

typedef struct {
    int kind, call, id, peer; /* id: global region, global comm (-1) or step number */
    uint64_t bytes;
    double t0, t1;
} pf_xev;

typedef struct {
    char name[64];
    int size;
    int32_t *members; /* world ranks in comm rank order */
} pf_xcomm;

typedef struct {
    int nranks;
    char **region;            /* region names ("layer 3"; base names too) */
    int nregion, capregion;
    pf_xcomm *comm;
    int ncomm, capcomm;
    pf_xev *ev;               /* the events of the rank being exported */
    size_t nev, capev;
} pf_export;

int pf_x_region(pf_export *x, const char *name);

typedef struct pf_summary pf_summary;
pf_summary *pf_summary_new(int nranks);
/* Adds rank's events (x->ev). */
void pf_summary_rank(pf_summary *s, pf_export *x, int rank);
/* Matches collectives over ranks (waiting vs transfer), writes DIR/summary.txt, DIR/summary.json, DIR/steps.tsv
 * and the timeline (DIR/timeline.png with gnuplot); prints the text to f when f is not NULL. */
int pf_summary_write(pf_summary *s, pf_export *x, const char *dir, FILE *f, prefopt_err *err);
void pf_summary_free(pf_summary *s);

#endif
