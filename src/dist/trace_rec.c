/* The trace recorder (trace.h): a bounded per-rank buffer of spool records (trace_internal.h), appended to
 * DIR/spool/rank-N.bin at step boundaries and when the buffer fills. Called from inside the MPI interposer
 * (mpi_wrap.c), so it calls MPI only through PMPI_* and never the rest of the layer (regions, agreement): no
 * circle, and no recursion into the interposer. */
#define _GNU_SOURCE
#include "prefopt/trace.h"

#include "trace_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PF_NAME(n, k) "MPI_" #n,
const char *const pf_trace_call_name[PF_MPI_NCALLS] = {PF_TRACE_CALLS(PF_NAME)};
#undef PF_NAME
#define PF_KIND(n, k) PF_KIND_##k,
const int pf_trace_call_kind[PF_MPI_NCALLS] = {PF_TRACE_CALLS(PF_KIND)};
#undef PF_KIND

int pf_trace_recording;

static struct {
    int on;                 /* started with a DIR */
    int finished;
    MPI_Comm world;
    int rank, size;
    long first, last;       /* step window, 1-based inclusive (0, LONG_MAX: all) */
    int in_window, pcontrol;
    int (*exporter)(const char *dir, FILE *f, prefopt_err *err);
    double t_start;
    char dir[4096], spool[4200];
    FILE *f;
    unsigned char *buf;
    size_t len, cap;
    int depth;              /* regions open, recorded or not */
    int open_rec[256];      /* per depth: the region id of a recorded enter, -1 when not recorded */
} T;

double pf_trace_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - T.t_start;
}

int prefopt_trace_active(void) { return T.on && !T.finished; }

/* ---- the buffer ------------------------------------------------------------------------------------------ */

static void spool_flush(void)
{
    if (!T.f || !T.len)
        return;
    /* a full disk loses the trace, never the run: the warning says so once */
    if (fwrite(T.buf, 1, T.len, T.f) != T.len || fflush(T.f)) {
        fprintf(stderr, "prefopt: warning: trace spool %s: %s; tracing stops on rank %d\n", T.spool, strerror(errno),
                T.rank);
        fclose(T.f);
        T.f = NULL;
        pf_trace_recording = 0;
    }
    T.len = 0;
}

static void put(const pf_trace_rec *r, const void *extra, size_t nextra)
{
    size_t need = sizeof *r + nextra;
    if (!T.f || !T.buf)
        return; /* the spool failed (disk full): the run goes on untraced */
    if (T.len + need > T.cap)
        spool_flush();
    if (T.len + need > T.cap)
        return; /* a definition larger than the buffer (never with the default size), or the flush failed */
    memcpy(T.buf + T.len, r, sizeof *r);
    if (nextra)
        memcpy(T.buf + T.len + sizeof *r, extra, nextra);
    T.len += need;
}

/* ---- definitions: regions by (name pointer, index), communicators by handle ------------------------------ */

typedef struct {
    const char *name;
    int index, id;
} region_def;
static region_def *regions;
static int nregions, capregions;
static int region_slot[4096]; /* hash of (pointer, index) -> 1 + position in regions */

static int region_id(const char *name, int index)
{
    uintptr_t h = ((uintptr_t)name >> 3) * 31u + (unsigned)index * 2654435761u;
    for (unsigned s = (unsigned)(h & 4095u);; s = (s + 1) & 4095u) {
        int k = region_slot[s];
        if (!k)
            break;
        if (regions[k - 1].name == name && regions[k - 1].index == index)
            return regions[k - 1].id;
    }
    /* new: compare by text too (the same literal may have two addresses in two translation units) */
    int id = -1;
    for (int i = 0; i < nregions; i++)
        if (regions[i].index == index && !strcmp(regions[i].name, name))
            id = regions[i].id;
    if (nregions >= 4000)
        return 0; /* a runaway number of names: the rest share the first */
    if (nregions == capregions) {
        capregions = capregions ? 2 * capregions : 64;
        region_def *n = prefopt_xcalloc((size_t)capregions, sizeof *n, "trace regions");
        if (nregions)
            memcpy(n, regions, sizeof *n * (size_t)nregions);
        free(regions);
        regions = n;
    }
    if (id < 0) {
        id = nregions;
        pf_trace_rec r = {.kind = PF_REC_DEF_REGION, .id = id, .index = index, .bytes = strlen(name)};
        put(&r, name, strlen(name));
    }
    regions[nregions] = (region_def){name, index, id};
    nregions++;
    for (unsigned s = (unsigned)(h & 4095u);; s = (s + 1) & 4095u)
        if (!region_slot[s]) {
            region_slot[s] = nregions;
            break;
        }
    return id;
}

typedef struct {
    MPI_Comm c;
    int id;
} comm_entry;
static comm_entry comms[256];
static int ncomms, next_comm_id;
typedef struct {
    MPI_Comm c;
    char name[32];
} named_comm;
static named_comm named[32];
static int nnamed;

void prefopt_trace_name_comm(MPI_Comm c, const char *name)
{
    if (c == MPI_COMM_NULL)
        return;
    for (int i = 0; i < nnamed; i++)
        if (named[i].c == c) {
            snprintf(named[i].name, sizeof named[i].name, "%s", name);
            return;
        }
    if (nnamed < 32) {
        named[nnamed].c = c;
        snprintf(named[nnamed++].name, sizeof named[0].name, "%s", name);
    }
}

void pf_trace_comm_freed(MPI_Comm c)
{
    for (int i = 0; i < ncomms; i++)
        if (comms[i].c == c) {
            comms[i] = comms[--ncomms];
            break;
        }
    for (int i = 0; i < nnamed; i++)
        if (named[i].c == c) {
            named[i] = named[--nnamed];
            break;
        }
}

static int comm_id(MPI_Comm c)
{
    if (c == MPI_COMM_NULL)
        return -1;
    for (int i = 0; i < ncomms; i++)
        if (comms[i].c == c)
            return comms[i].id;
    /* first use: its name (its own, or a congruent named one's: BLACS duplicates the grid's communicators),
     * size, my rank in it and its members' world ranks */
    const char *name = NULL;
    for (int i = 0; i < nnamed && !name; i++)
        if (named[i].c == c)
            name = named[i].name;
    for (int i = 0; i < nnamed && !name; i++) {
        int res = MPI_UNEQUAL;
        PMPI_Comm_compare(named[i].c, c, &res);
        if (res == MPI_IDENT || res == MPI_CONGRUENT)
            name = named[i].name;
    }
    int size = 1, me = 0;
    PMPI_Comm_size(c, &size);
    PMPI_Comm_rank(c, &me);
    char other[32];
    if (!name) {
        snprintf(other, sizeof other, size == 1 ? "self" : "comm%d", size);
        name = other;
    }
    MPI_Group g, wg;
    PMPI_Comm_group(c, &g);
    PMPI_Comm_group(MPI_COMM_WORLD, &wg);
    int *in = prefopt_xmalloc(sizeof(int) * (size_t)size * 2 + 16, "trace communicator");
    for (int i = 0; i < size; i++)
        in[i] = i;
    PMPI_Group_translate_ranks(g, size, in, wg, in + size);
    PMPI_Group_free(&g);
    PMPI_Group_free(&wg);
    size_t ln = strlen(name), pad = (ln + 7) & ~(size_t)7;
    size_t nextra = pad + sizeof(int32_t) * (size_t)size;
    unsigned char *extra = prefopt_xcalloc(nextra + 8, 1, "trace communicator");
    memcpy(extra, name, ln);
    for (int i = 0; i < size; i++) {
        int32_t w = in[size + i];
        memcpy(extra + pad + sizeof(int32_t) * (size_t)i, &w, sizeof w);
    }
    int id = next_comm_id++;
    pf_trace_rec r = {.kind = PF_REC_DEF_COMM, .id = id, .peer = size, .index = me, .bytes = nextra, .t1 = (double)ln};
    put(&r, extra, nextra);
    free(extra);
    free(in);
    if (ncomms == 256)
        ncomms--; /* the oldest stays; the newest is overwritten (its events then get a fresh definition) */
    comms[ncomms++] = (comm_entry){c, id};
    return id;
}

/* ---- hooks --------------------------------------------------------------------------------------------- */

void pf_trace_mpi(int call, MPI_Comm c, int peer, double bytes, double t0, double t1)
{
    pf_trace_recording = 0; /* the communicator's first use calls MPI itself */
    pf_trace_rec r = {.kind = PF_REC_MPI, .call = (uint8_t)call, .id = comm_id(c), .peer = peer,
                      .bytes = bytes > 0 ? (uint64_t)bytes : 0, .t0 = t0, .t1 = t1};
    put(&r, NULL, 0);
    pf_trace_recording = T.f != NULL;
}

void pf_trace_region(const char *name, int index, int enter)
{
    if (!T.on || T.finished)
        return;
    double t = pf_trace_now();
    if (enter) {
        int id = T.in_window && T.f ? region_id(name, index) : -1;
        if (T.depth < 256)
            T.open_rec[T.depth] = id;
        T.depth++;
        if (id >= 0) {
            pf_trace_rec r = {.kind = PF_REC_ENTER, .id = id, .t0 = t};
            put(&r, NULL, 0);
        }
    } else if (T.depth > 0) {
        /* the leave of a recorded enter is recorded even after the window closed: the timeline stays nested */
        T.depth--;
        if (T.depth < 256 && T.open_rec[T.depth] >= 0 && T.f) {
            pf_trace_rec r = {.kind = PF_REC_LEAVE, .id = T.open_rec[T.depth], .t0 = t};
            put(&r, NULL, 0);
        }
    }
}

/* ---- start, steps, finish ------------------------------------------------------------------------------- */

static void die_hook(int code)
{
    spool_flush(); /* what this rank recorded up to the error stays readable */
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Abort(MPI_COMM_WORLD, code);
}


int pf_trace_rec_open(const char *dir, MPI_Comm world, int pcontrol, prefopt_err *err)
{
    PMPI_Comm_rank(world, &T.rank);
    PMPI_Comm_size(world, &T.size);
    T.world = world;
    T.pcontrol = pcontrol;
    snprintf(T.dir, sizeof T.dir, "%s", dir);
    snprintf(T.spool, sizeof T.spool, "%s/spool/rank-%d.bin", dir, T.rank);
    T.f = fopen(T.spool, "wb");
    if (!T.f) {
        prefopt_err_set(err, "--trace: cannot write %s (%s)", T.spool, strerror(errno));
        return -1;
    }
    /* MiB, fractions allowed (tests flush inside steps with 0.004); at least 4 KiB: every definition fits */
    const char *mb = getenv("PREFOPT_TRACE_BUFFER_MB");
    double cap_mb = mb ? strtod(mb, NULL) : 32;
    T.cap = (size_t)((cap_mb > 0 ? cap_mb : 32) * 1048576.0);
    if (T.cap < 4096 + sizeof(int32_t) * (size_t)T.size)
        T.cap = 4096 + sizeof(int32_t) * (size_t)T.size;
    T.buf = prefopt_xmalloc(T.cap, "trace buffer");
    T.len = 0;
    return 0;
}

void pf_trace_rec_abandon(void)
{
    if (T.f)
        fclose(T.f);
    T.f = NULL;
    free(T.buf);
    T.buf = NULL;
}

void pf_trace_rec_go(long first)
{
    PMPI_Barrier(T.world); /* the common start of every rank's clock */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    T.t_start = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    T.on = 1;
    T.finished = 0;
    pf_trace_rec info = {.kind = PF_REC_INFO, .id = T.rank, .peer = T.size, .index = PF_SPOOL_VERSION,
                         .t0 = T.t_start};
    put(&info, NULL, 0);
    T.in_window = first <= 1;
    pf_trace_recording = T.in_window;
    prefopt_trace_name_comm(MPI_COMM_WORLD, "world");
    prefopt_trace_name_comm(T.world, "world");
    prefopt_set_die_hook(die_hook);
    spool_flush();
}

void pf_trace_rec_step(long step, int in_window)
{
    if (!T.on || T.finished)
        return;
    T.in_window = in_window;
    if (T.in_window && T.f) {
        pf_trace_rec r = {.kind = PF_REC_STEP, .id = (int32_t)step, .t0 = pf_trace_now()};
        put(&r, NULL, 0);
    }
    spool_flush();
    pf_trace_recording = T.in_window && T.f;
}

void prefopt_trace_set_exporter(int (*fn)(const char *dir, FILE *f, prefopt_err *err)) { T.exporter = fn; }

void prefopt_trace_finish(void)
{
    if (!T.on || T.finished)
        return;
    pf_trace_recording = 0;
    if (T.in_window && T.pcontrol)
        MPI_Pcontrol(0); /* the window closes for site tools too (not through regions.c: see the top) */
    T.in_window = 0;
    spool_flush();
    if (T.f)
        fclose(T.f);
    T.f = NULL;
    T.finished = 1;
    free(T.buf);
    T.buf = NULL;
    PMPI_Barrier(T.world);
    if (T.rank == 0 && T.exporter) {
        prefopt_err err = {0};
        if (T.exporter(T.dir, NULL, &err))
            fprintf(stderr, "prefopt: warning: trace: %s\n", err.msg);
        else
            printf("trace: %s/otf2/traces.otf2 (otf2-print, Vampir), %s/trace.json (ui.perfetto.dev), "
                   "%s/summary.txt\n", T.dir, T.dir, T.dir);
        fflush(stdout);
    } else if (T.rank == 0)
        printf("trace: spool files in %s/spool (prefopt trace-summary %s writes the archive)\n", T.dir, T.dir);
    PMPI_Barrier(T.world);
}
