/* The trace's control (trace.h): the options every subcommand shares, the start (agreed over the ranks) and the
 * step window; the recording itself is trace_rec.c, the interposer mpi_wrap.c. */
#define _GNU_SOURCE
#include "prefopt/trace.h"

#include "prefopt/agree.h"
#include "prefopt/regions.h"
#include "trace_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
    long first, last;
    int pcontrol, in_window, on;
    int perf_ctl, perf_ack; /* perf record --control fifos (PREFOPT_PERF_CTL=CTL:ACK), -1 when not used */
} C = {1, 0x7fffffffL, 0, 0, 0, -1, -1};

/* perf/profile.sh samples only the step window: perf starts with its events off (-D -1) and is told "enable" /
 * "disable" through its control fifo here, acknowledged on the ack fifo. */
static void perf_window(int on)
{
    if (C.perf_ctl < 0)
        return;
    const char *cmd = on ? "enable\n" : "disable\n";
    if (write(C.perf_ctl, cmd, strlen(cmd)) < 0)
        return;
    char ack[16];
    if (C.perf_ack >= 0 && read(C.perf_ack, ack, sizeof ack) < 0)
        return;
}

static void perf_open(void)
{
    const char *e = getenv("PREFOPT_PERF_CTL");
    if (!e || !*e || C.perf_ctl >= 0)
        return;
    char ctl[4096];
    snprintf(ctl, sizeof ctl, "%s", e);
    char *colon = strchr(ctl, ':');
    if (colon)
        *colon = '\0';
    C.perf_ctl = open(ctl, O_WRONLY | O_CLOEXEC);
    C.perf_ack = colon ? open(colon + 1, O_RDONLY | O_CLOEXEC) : -1;
    if (C.perf_ctl < 0)
        fprintf(stderr, "prefopt: warning: PREFOPT_PERF_CTL %s: %s (perf samples the whole run)\n", ctl,
                strerror(errno));
}

int prefopt_trace_options(prefopt_opt *out, int max, prefopt_trace_params *p, int with_pcontrol)
{
    const char *env = getenv("PREFOPT_TRACE");
    static char def[4096];
    snprintf(def, sizeof def, "%s", env ? env : "");
    static char sdef[64];
    const char *senv = getenv("PREFOPT_TRACE_STEPS");
    snprintf(sdef, sizeof sdef, "%s", senv ? senv : "");
    const prefopt_opt o[] = {
        {"trace", PREFOPT_OPT_STRING, &p->dir, def,
         "write per-rank timelines of regions and MPI calls to DIR: OTF2 archive (DIR/otf2), Chrome/Perfetto JSON "
         "(DIR/trace.json), MPI summary (DIR/summary.txt); default $PREFOPT_TRACE"},
        {"trace-steps", PREFOPT_OPT_STRING, &p->steps, sdef,
         "trace (and MPI_Pcontrol / perf/profile.sh sample) only steps A:B (1-based, inclusive; A: = from A); "
         "default $PREFOPT_TRACE_STEPS"},
        {"pcontrol", PREFOPT_OPT_STRING, &p->pcontrol, "off",
         "MPI_Pcontrol for site tools: window = (1)/(0) around the traced steps (mpiP -o, TAU, Extrae); named = "
         "also (+1/-1, region) per region (IPM); off"},
    };
    int n = (int)(sizeof o / sizeof o[0]) - (with_pcontrol ? 0 : 1);
    if (n > max)
        return -1;
    memcpy(out, o, sizeof o[0] * (size_t)n);
    return n;
}

static int parse_steps(const char *s, long *a, long *b)
{
    *a = 1;
    *b = 0x7fffffffL;
    if (!s || !*s)
        return 0;
    char *e;
    errno = 0;
    long x = strtol(s, &e, 10);
    if (e == s || x < 1 || errno)
        return -1;
    *a = x;
    if (!*e) {
        *b = x;
        return 0;
    }
    if (*e != ':')
        return -1;
    if (!e[1])
        return 0;
    const char *f = e + 1;
    long y = strtol(f, &e, 10);
    if (e == f || *e || y < x || errno)
        return -1;
    *b = y;
    return 0;
}

int prefopt_trace_start(const prefopt_trace_params *p, MPI_Comm world, prefopt_err *err)
{
    int pc = PREFOPT_PCONTROL_OFF;
    const char *m = p->pcontrol ? p->pcontrol : "off";
    if (!strcmp(m, "window"))
        pc = PREFOPT_PCONTROL_WINDOW;
    else if (!strcmp(m, "named"))
        pc = PREFOPT_PCONTROL_NAMED;
    else if (strcmp(m, "off") && !err->set)
        prefopt_err_set(err, "--pcontrol '%s': expected off, window or named", m);
    long a, b;
    if (parse_steps(p->steps, &a, &b) && !err->set)
        prefopt_err_set(err, "--trace-steps '%s': expected A:B, A: or A (1-based steps, A <= B)", p->steps);
    int want = p->dir && *p->dir, rank = 0;
    MPI_Comm_rank(world, &rank);
    if (want && !err->set && rank == 0) {
        char sp[4200];
        snprintf(sp, sizeof sp, "%s/spool", p->dir);
        if ((mkdir(p->dir, 0777) && errno != EEXIST) || (mkdir(sp, 0777) && errno != EEXIST))
            prefopt_err_set(err, "--trace %s: cannot create the directory (%s)", p->dir, strerror(errno));
    }
    if (prefopt_agree(world, err))
        return -1;
    C.first = a, C.last = b, C.pcontrol = pc;
    /* regions are on with --trace or --pcontrol (site tools see them through MPI_Pcontrol) */
    if (want || pc != PREFOPT_PCONTROL_OFF)
        prefopt_regions_enable(1, pc);
    if (want && pf_trace_rec_open(p->dir, world, pc, err) == 0 && !err->set)
        C.on = 1;
    if (prefopt_agree(world, err)) {
        pf_trace_rec_abandon();
        C.on = 0;
        return -1;
    }
    if (C.on)
        pf_trace_rec_go(a);
    C.in_window = a <= 1;
    perf_open();
    if (C.in_window) {
        prefopt_regions_pcontrol_window(1);
        perf_window(1);
    }
    return 0;
}

void prefopt_trace_step(long step)
{
    int in = step >= C.first && step <= C.last;
    if (in != C.in_window) {
        prefopt_regions_pcontrol_window(in);
        perf_window(in);
    }
    C.in_window = in;
    if (C.on)
        pf_trace_rec_step(step, in);
}
