/* The trace exporter (trace.h): reads every rank's spool file (trace_internal.h) and writes the OTF2 archive
 * (libotf2, serial writer: one location per rank), the Chrome trace JSON (one process per rank, one track per
 * thread) and hands the events to the summary (trace_summary.c). Serial on one process: run at the end of a
 * traced run by rank 0, or by `prefopt trace-summary DIR` after any run. */
#define _GNU_SOURCE
#include "prefopt/trace_export.h"

#include "trace_internal.h"
#include "trace_summary.h"

#include <errno.h>
#include <otf2/otf2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- global definitions ------------------------------------------------------------------------------- */

static int intern(char ***tab, int *n, int *cap, const char *s)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp((*tab)[i], s))
            return i;
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        char **t = prefopt_xcalloc((size_t)*cap, sizeof *t, "trace strings");
        if (*n)
            memcpy(t, *tab, sizeof *t * (size_t)*n);
        free(*tab);
        *tab = t;
    }
    size_t l = strlen(s) + 1;
    (*tab)[*n] = prefopt_xmalloc(l, "trace string");
    memcpy((*tab)[*n], s, l);
    return (*n)++;
}

int pf_x_region(pf_export *x, const char *name)
{
    return intern(&x->region, &x->nregion, &x->capregion, name);
}

static int x_comm(pf_export *x, const char *name, const int32_t *mem, int size)
{
    for (int i = 0; i < x->ncomm; i++)
        if (x->comm[i].size == size && !strcmp(x->comm[i].name, name) &&
            !memcmp(x->comm[i].members, mem, sizeof(int32_t) * (size_t)size))
            return i;
    if (x->ncomm == x->capcomm) {
        x->capcomm = x->capcomm ? 2 * x->capcomm : 16;
        pf_xcomm *c = prefopt_xcalloc((size_t)x->capcomm, sizeof *c, "trace communicators");
        if (x->ncomm)
            memcpy(c, x->comm, sizeof *c * (size_t)x->ncomm);
        free(x->comm);
        x->comm = c;
    }
    pf_xcomm *c = &x->comm[x->ncomm];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->size = size;
    c->members = prefopt_xmalloc(sizeof(int32_t) * (size_t)size + 4, "trace communicator");
    memcpy(c->members, mem, sizeof(int32_t) * (size_t)size);
    return x->ncomm++;
}

/* ---- one rank's spool ----------------------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *b = prefopt_xmalloc(cap, "trace spool");
    for (;;) {
        if (n == cap) {
            cap *= 2;
            unsigned char *nb = prefopt_xmalloc(cap, "trace spool");
            memcpy(nb, b, n);
            free(b);
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    *len = n;
    return b;
}

/* Decodes rank's spool into x->ev (global ids). Returns 0, or -1 with err set. A truncated last record (a rank
 * killed while writing) ends the events there. */
static int read_rank(pf_export *x, const char *dir, int rank, prefopt_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/spool/rank-%d.bin", dir, rank);
    size_t len = 0;
    unsigned char *b = slurp(path, &len);
    if (!b) {
        prefopt_err_set(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    int *rmap = NULL, nrmap = 0, *cmap = NULL, ncmap = 0;
    x->nev = 0;
    for (size_t off = 0; off + sizeof(pf_trace_rec) <= len;) {
        pf_trace_rec r;
        memcpy(&r, b + off, sizeof r);
        size_t extra = (r.kind == PF_REC_DEF_REGION || r.kind == PF_REC_DEF_COMM) ? (size_t)r.bytes : 0;
        if (off + sizeof r + extra > len)
            break;
        /* the spool is prefopt's own file, but a damaged one must not be trusted with sizes */
        int bad = r.kind < PF_REC_INFO || r.kind > PF_REC_STEP ||
                  ((r.kind == PF_REC_DEF_REGION || r.kind == PF_REC_DEF_COMM) && (r.id < 0 || r.id > (1 << 20))) ||
                  (r.kind == PF_REC_DEF_COMM &&
                   (r.peer < 1 || r.t1 < 0 || r.t1 > 4096 ||
                    (((size_t)r.t1 + 7) & ~(size_t)7) + sizeof(int32_t) * (size_t)r.peer != extra));
        if (bad) {
            prefopt_err_set(err, "%s: damaged record at byte %zu (kind %d)", path, off, r.kind);
            free(b), free(rmap), free(cmap);
            return -1;
        }
        const unsigned char *e = b + off + sizeof r;
        off += sizeof r + extra;
        if (r.kind == PF_REC_INFO) {
            if (r.index != PF_SPOOL_VERSION || r.id != rank) {
                prefopt_err_set(err, "%s: not a prefopt trace spool of rank %d (format %d)", path, rank, r.index);
                free(b), free(rmap), free(cmap);
                return -1;
            }
            x->nranks = r.peer;
            continue;
        }
        if (r.kind == PF_REC_DEF_REGION) {
            char name[256];
            size_t l = extra < 200 ? extra : 200;
            memcpy(name, e, l);
            name[l] = '\0';
            if (r.index >= 0)
                snprintf(name + l, sizeof name - l, " %d", r.index);
            if (r.id >= nrmap) {
                int nn = r.id + 64;
                int *m = prefopt_xcalloc((size_t)nn, sizeof(int), "trace map");
                if (nrmap)
                    memcpy(m, rmap, sizeof(int) * (size_t)nrmap);
                free(rmap);
                rmap = m, nrmap = nn;
            }
            rmap[r.id] = pf_x_region(x, name);
            continue;
        }
        if (r.kind == PF_REC_DEF_COMM) {
            char name[64];
            size_t ln = (size_t)r.t1 < 31 ? (size_t)r.t1 : 63, pad = ((size_t)r.t1 + 7) & ~(size_t)7;
            memcpy(name, e, ln);
            name[ln] = '\0';
            int32_t *mem = prefopt_xmalloc(sizeof(int32_t) * (size_t)r.peer + 4, "trace communicator");
            memcpy(mem, e + pad, sizeof(int32_t) * (size_t)r.peer);
            if (r.id >= ncmap) {
                int nn = r.id + 64;
                int *m = prefopt_xcalloc((size_t)nn, sizeof(int), "trace map");
                if (ncmap)
                    memcpy(m, cmap, sizeof(int) * (size_t)ncmap);
                free(cmap);
                cmap = m, ncmap = nn;
            }
            cmap[r.id] = x_comm(x, name, mem, r.peer);
            free(mem);
            continue;
        }
        if (x->nev == x->capev) {
            x->capev = x->capev ? 2 * x->capev : 4096;
            pf_xev *n = prefopt_xmalloc(sizeof *n * x->capev, "trace events");
            if (x->nev)
                memcpy(n, x->ev, sizeof *n * x->nev);
            free(x->ev);
            x->ev = n;
        }
        pf_xev *v = &x->ev[x->nev++];
        memset(v, 0, sizeof *v);
        v->kind = r.kind;
        v->t0 = r.t0;
        v->t1 = r.kind == PF_REC_MPI ? r.t1 : r.t0;
        if (r.kind == PF_REC_ENTER || r.kind == PF_REC_LEAVE)
            v->id = r.id >= 0 && r.id < nrmap ? rmap[r.id] : 0;
        else if (r.kind == PF_REC_MPI) {
            v->call = r.call < PF_MPI_NCALLS ? r.call : 0;
            v->id = r.id >= 0 && r.id < ncmap ? cmap[r.id] : -1;
            v->peer = r.peer;
            v->bytes = r.bytes;
        } else
            v->id = r.id; /* step number */
    }
    free(b), free(rmap), free(cmap);
    return 0;
}

/* ---- OTF2 ----------------------------------------------------------------------------------------------- */

static OTF2_FlushType pre_flush(void *u, OTF2_FileType ft, OTF2_LocationRef l, void *c, bool final)
{
    (void)u, (void)ft, (void)l, (void)c, (void)final;
    return OTF2_FLUSH;
}
static OTF2_TimeStamp post_flush(void *u, OTF2_FileType ft, OTF2_LocationRef l)
{
    (void)u, (void)ft, (void)l;
    return 0;
}

static OTF2_CollectiveOp coll_op(int call)
{
    switch (call) {
    case PF_MPI_Allreduce: case PF_MPI_Iallreduce: return OTF2_COLLECTIVE_OP_ALLREDUCE;
    case PF_MPI_Reduce: return OTF2_COLLECTIVE_OP_REDUCE;
    case PF_MPI_Bcast: case PF_MPI_Ibcast: return OTF2_COLLECTIVE_OP_BCAST;
    case PF_MPI_Barrier: return OTF2_COLLECTIVE_OP_BARRIER;
    case PF_MPI_Allgather: return OTF2_COLLECTIVE_OP_ALLGATHER;
    case PF_MPI_Allgatherv: case PF_MPI_Iallgatherv: return OTF2_COLLECTIVE_OP_ALLGATHERV;
    case PF_MPI_Gather: return OTF2_COLLECTIVE_OP_GATHER;
    case PF_MPI_Gatherv: return OTF2_COLLECTIVE_OP_GATHERV;
    case PF_MPI_Scatter: return OTF2_COLLECTIVE_OP_SCATTER;
    case PF_MPI_Scatterv: return OTF2_COLLECTIVE_OP_SCATTERV;
    case PF_MPI_Alltoall: return OTF2_COLLECTIVE_OP_ALLTOALL;
    case PF_MPI_Alltoallv: case PF_MPI_Ialltoallv: return OTF2_COLLECTIVE_OP_ALLTOALLV;
    case PF_MPI_Reduce_scatter: case PF_MPI_Ireduce_scatter: return OTF2_COLLECTIVE_OP_REDUCE_SCATTER;
    case PF_MPI_Reduce_scatter_block: return OTF2_COLLECTIVE_OP_REDUCE_SCATTER_BLOCK;
    case PF_MPI_Scan: return OTF2_COLLECTIVE_OP_SCAN;
    case PF_MPI_Exscan: return OTF2_COLLECTIVE_OP_EXSCAN;
    default: return OTF2_COLLECTIVE_OP_CREATE_HANDLE; /* Comm_split / dup / create */
    }
}

static OTF2_TimeStamp ns(double t) { return t > 0 ? (OTF2_TimeStamp)(t * 1e9 + 0.5) : 0; }

/* region ids of the MPI calls: after the program's regions, fixed once every spool was read */
static uint32_t mpi_region(const pf_export *x, int call) { return (uint32_t)(x->nregion + call); }

static void otf2_rank(OTF2_Archive *a, pf_export *x, int rank, uint64_t *nevents, double *tmax)
{
    OTF2_EvtWriter *w = OTF2_Archive_GetEvtWriter(a, (OTF2_LocationRef)rank);
    int depth = 0, open[256];
    uint64_t n = 0;
    double last = 0;
    for (size_t i = 0; i < x->nev; i++) {
        const pf_xev *v = &x->ev[i];
        double t0 = v->t0 < last ? last : v->t0; /* OTF2 wants time order per location: never back */
        switch (v->kind) {
        case PF_REC_ENTER:
            OTF2_EvtWriter_Enter(w, NULL, ns(t0), (OTF2_RegionRef)v->id), n++;
            if (depth < 256)
                open[depth] = v->id;
            depth++;
            break;
        case PF_REC_LEAVE:
            if (depth > 0)
                OTF2_EvtWriter_Leave(w, NULL, ns(t0), (OTF2_RegionRef)v->id), n++, depth--;
            break;
        case PF_REC_MPI: {
            double t1 = v->t1 < t0 ? t0 : v->t1;
            OTF2_EvtWriter_Enter(w, NULL, ns(t0), mpi_region(x, v->call));
            n++;
            if (pf_trace_call_kind[v->call] == PF_KIND_COLL && v->id >= 0) {
                OTF2_EvtWriter_MpiCollectiveBegin(w, NULL, ns(t0));
                OTF2_EvtWriter_MpiCollectiveEnd(w, NULL, ns(t1), coll_op(v->call), (OTF2_CommRef)v->id,
                                                v->peer >= 0 ? (uint32_t)v->peer : OTF2_UNDEFINED_UINT32,
                                                v->bytes, v->bytes);
                n += 2;
            }
            OTF2_EvtWriter_Leave(w, NULL, ns(t1), mpi_region(x, v->call));
            n++;
            t0 = t1;
            break;
        }
        default:
            break;
        }
        last = t0;
    }
    /* regions a killed rank left open end at its last event */
    for (; depth > 0; depth--)
        if (depth <= 256)
            OTF2_EvtWriter_Leave(w, NULL, ns(last), (OTF2_RegionRef)open[depth - 1]), n++;
    OTF2_Archive_CloseEvtWriter(a, w);
    *nevents = n;
    if (last > *tmax)
        *tmax = last;
}

static void otf2_defs(OTF2_Archive *a, const pf_export *x, const uint64_t *nevents, double tmax)
{
    OTF2_GlobalDefWriter *g = OTF2_Archive_GetGlobalDefWriter(a);
    OTF2_GlobalDefWriter_WriteClockProperties(g, 1000000000u, 0, ns(tmax) + 1, OTF2_UNDEFINED_TIMESTAMP);
    uint32_t s = 0;
    /* strings: 0 "", 1 "MPI", 2 "node", 3 "machine", then regions, MPI calls, ranks, comms */
    OTF2_GlobalDefWriter_WriteString(g, s++, "");
    OTF2_GlobalDefWriter_WriteString(g, s++, "MPI");
    OTF2_GlobalDefWriter_WriteString(g, s++, "node");
    OTF2_GlobalDefWriter_WriteString(g, s++, "machine");
    OTF2_GlobalDefWriter_WriteParadigm(g, OTF2_PARADIGM_MPI, 1, OTF2_PARADIGM_CLASS_PROCESS);
    OTF2_GlobalDefWriter_WriteSystemTreeNode(g, 0, 3, 2, OTF2_UNDEFINED_SYSTEM_TREE_NODE);
    for (int i = 0; i < x->nregion; i++) {
        OTF2_GlobalDefWriter_WriteString(g, s, x->region[i]);
        OTF2_GlobalDefWriter_WriteRegion(g, (OTF2_RegionRef)i, s, s, 0, OTF2_REGION_ROLE_CODE,
                                         OTF2_PARADIGM_USER, OTF2_REGION_FLAG_NONE, 0, 0, 0);
        s++;
    }
    for (int c = 0; c < PF_MPI_NCALLS; c++) {
        OTF2_GlobalDefWriter_WriteString(g, s, pf_trace_call_name[c]);
        int k = pf_trace_call_kind[c];
        OTF2_RegionRole role = k == PF_KIND_COLL ? OTF2_REGION_ROLE_COLL_ALL2ALL
                               : k == PF_KIND_IO ? OTF2_REGION_ROLE_FILE_IO
                                                 : OTF2_REGION_ROLE_POINT2POINT;
        OTF2_GlobalDefWriter_WriteRegion(g, mpi_region(x, c), s, s, 0, role, OTF2_PARADIGM_MPI,
                                         OTF2_REGION_FLAG_NONE, 0, 0, 0);
        s++;
    }
    uint64_t *all = prefopt_xmalloc(sizeof(uint64_t) * (size_t)x->nranks + 8, "trace groups");
    for (int r = 0; r < x->nranks; r++) {
        char nm[32];
        snprintf(nm, sizeof nm, "rank %d", r);
        OTF2_GlobalDefWriter_WriteString(g, s, nm);
        OTF2_GlobalDefWriter_WriteLocationGroup(g, (OTF2_LocationGroupRef)r, s, OTF2_LOCATION_GROUP_TYPE_PROCESS, 0,
                                                OTF2_UNDEFINED_LOCATION_GROUP);
        s++;
        OTF2_GlobalDefWriter_WriteString(g, s, "main thread");
        OTF2_GlobalDefWriter_WriteLocation(g, (OTF2_LocationRef)r, s, OTF2_LOCATION_TYPE_CPU_THREAD, nevents[r],
                                           (OTF2_LocationGroupRef)r);
        s++;
        all[r] = (uint64_t)r;
    }
    /* MPI communicators: the locations group, then one group and comm each (members = world ranks) */
    OTF2_GlobalDefWriter_WriteGroup(g, 0, 1, OTF2_GROUP_TYPE_COMM_LOCATIONS, OTF2_PARADIGM_MPI,
                                    OTF2_GROUP_FLAG_NONE, (uint32_t)x->nranks, all);
    for (int c = 0; c < x->ncomm; c++) {
        uint64_t *m = prefopt_xmalloc(sizeof(uint64_t) * (size_t)x->comm[c].size + 8, "trace groups");
        for (int i = 0; i < x->comm[c].size; i++)
            m[i] = (uint64_t)x->comm[c].members[i];
        char nm[96];
        snprintf(nm, sizeof nm, "%s (%d ranks from %d)", x->comm[c].name, x->comm[c].size, x->comm[c].members[0]);
        OTF2_GlobalDefWriter_WriteString(g, s, nm);
        OTF2_GlobalDefWriter_WriteGroup(g, (OTF2_GroupRef)(c + 1), s, OTF2_GROUP_TYPE_COMM_GROUP, OTF2_PARADIGM_MPI,
                                        OTF2_GROUP_FLAG_NONE, (uint32_t)x->comm[c].size, m);
        OTF2_GlobalDefWriter_WriteComm(g, (OTF2_CommRef)c, s, (OTF2_GroupRef)(c + 1), OTF2_UNDEFINED_COMM,
                                       OTF2_COMM_FLAG_NONE);
        s++;
        free(m);
    }
    free(all);
}

/* ---- Chrome trace JSON ---------------------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c); /* names are ASCII literals; anything else is escaped, never invalid */
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_rank(FILE *f, const pf_export *x, int rank, int *first)
{
    fprintf(f, "%s\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"rank %d\"}}",
            *first ? "" : ",", rank, rank);
    *first = 0;
    fprintf(f, ",\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"sort_index\":%d}}",
            rank, rank);
    fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"main (MPI)\"}}",
            rank);
    int depth = 0;
    double last = 0;
    for (size_t i = 0; i < x->nev; i++) {
        const pf_xev *v = &x->ev[i];
        if (v->kind == PF_REC_ENTER || v->kind == PF_REC_LEAVE) {
            if (v->kind == PF_REC_LEAVE && depth == 0)
                continue;
            depth += v->kind == PF_REC_ENTER ? 1 : -1;
            fprintf(f, ",\n{\"name\":");
            json_str(f, x->region[v->id]);
            fprintf(f, ",\"cat\":\"region\",\"ph\":\"%c\",\"ts\":%.3f,\"pid\":%d,\"tid\":0}",
                    v->kind == PF_REC_ENTER ? 'B' : 'E', v->t0 * 1e6, rank);
            last = v->t0;
        } else if (v->kind == PF_REC_MPI) {
            int k = pf_trace_call_kind[v->call];
            fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":0,"
                       "\"args\":{\"comm\":",
                    pf_trace_call_name[v->call], k == PF_KIND_IO ? "mpi-io" : "mpi", v->t0 * 1e6,
                    (v->t1 - v->t0) * 1e6, rank);
            if (v->id >= 0) {
                json_str(f, x->comm[v->id].name);
                /* size and first member (world rank): which of the communicators of that name */
                fprintf(f, ",\"comm_size\":%d,\"comm_first\":%d", x->comm[v->id].size, x->comm[v->id].members[0]);
            } else
                fprintf(f, "null");
            fprintf(f, ",\"bytes\":%llu", (unsigned long long)v->bytes);
            if (v->peer >= 0)
                fprintf(f, ",\"%s\":%d", k == PF_KIND_COLL ? "root" : "peer", v->peer);
            fprintf(f, "}}");
            last = v->t1;
        } else if (v->kind == PF_REC_STEP) {
            fprintf(f, ",\n{\"name\":\"step %d\",\"cat\":\"step\",\"ph\":\"i\",\"s\":\"p\",\"ts\":%.3f,\"pid\":%d,"
                       "\"tid\":0}",
                    v->id, v->t0 * 1e6, rank);
            last = v->t0;
        }
    }
    for (; depth > 0; depth--) /* regions a killed rank left open end at its last event (E closes the innermost) */
        fprintf(f, ",\n{\"ph\":\"E\",\"ts\":%.3f,\"pid\":%d,\"tid\":0}", last * 1e6, rank);
}

int prefopt_trace_begin(const prefopt_trace_params *p, MPI_Comm world, prefopt_err *err)
{
    prefopt_trace_set_exporter(prefopt_trace_export);
    return prefopt_trace_start(p, world, err);
}

/* ---- the export ----------------------------------------------------------------------------------------- */

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* removes a previous archive directory (a re-export, or what an interrupted export left) */
static int rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st))
        return 0;
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int prefopt_trace_export(const char *dir, FILE *out, prefopt_err *err)
{
    pf_export X = {0}, *x = &X;
    /* pass 1: definitions of every rank (ids must be final before OTF2's events reference them) */
    if (read_rank(x, dir, 0, err))
        return -1;
    int nranks = x->nranks;
    for (int r = 1; r < nranks; r++)
        if (read_rank(x, dir, r, err))
            return -1;
    char tmp[4200], fin[4200], jt[4200], jf[4200];
    snprintf(tmp, sizeof tmp, "%s/otf2.tmp", dir);
    snprintf(fin, sizeof fin, "%s/otf2", dir);
    snprintf(jt, sizeof jt, "%s/trace.json.tmp", dir);
    snprintf(jf, sizeof jf, "%s/trace.json", dir);
    rm_tree(tmp);
    OTF2_Archive *a = OTF2_Archive_Open(tmp, "traces", OTF2_FILEMODE_WRITE, 1 << 20, 4 << 20, OTF2_SUBSTRATE_POSIX,
                                        OTF2_COMPRESSION_NONE);
    FILE *jfp = fopen(jt, "w");
    if (!a || !jfp) {
        prefopt_err_set(err, "%s: cannot write the trace (%s)", !a ? tmp : jt, strerror(errno));
        if (a)
            OTF2_Archive_Close(a);
        if (jfp)
            fclose(jfp);
        return -1;
    }
    OTF2_FlushCallbacks fc = {pre_flush, post_flush};
    OTF2_Archive_SetFlushCallbacks(a, &fc, NULL);
    OTF2_Archive_SetSerialCollectiveCallbacks(a);
    OTF2_Archive_SetCreator(a, "prefopt " PREFOPT_VERSION);
    OTF2_Archive_OpenEvtFiles(a);
    uint64_t *nev = prefopt_xcalloc((size_t)nranks + 1, sizeof(uint64_t), "trace counts");
    double tmax = 0;
    fprintf(jfp, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"creator\":\"prefopt " PREFOPT_VERSION "\","
                 "\"ranks\":%d},\n\"traceEvents\":[",
            nranks);
    int first = 1;
    pf_summary *S = pf_summary_new(nranks);
    /* pass 2: each rank's events to OTF2, JSON and the summary, one rank in memory at a time */
    for (int r = 0; r < nranks; r++) {
        if (r > 0 && read_rank(x, dir, r, err))
            break;
        if (r == 0 && nranks > 1 && read_rank(x, dir, 0, err))
            break;
        pf_summary_rank(S, x, r);
        otf2_rank(a, x, r, &nev[r], &tmax);
        json_rank(jfp, x, r, &first);
    }
    fprintf(jfp, "\n]}\n");
    int bad = err->set;
    if (fclose(jfp) && !bad)
        prefopt_err_set(err, "%s: %s", jt, strerror(errno)), bad = 1;
    OTF2_Archive_CloseEvtFiles(a);
    OTF2_Archive_OpenDefFiles(a);
    for (int r = 0; r < nranks; r++) {
        OTF2_DefWriter *dw = OTF2_Archive_GetDefWriter(a, (OTF2_LocationRef)r);
        OTF2_Archive_CloseDefWriter(a, dw);
    }
    OTF2_Archive_CloseDefFiles(a);
    otf2_defs(a, x, nev, tmax);
    if (OTF2_Archive_Close(a) != OTF2_SUCCESS && !bad)
        prefopt_err_set(err, "%s: OTF2 could not close the archive", tmp), bad = 1;
    free(nev);
    /* files appear only when complete */
    if (!bad && (rm_tree(fin) || rename(tmp, fin) || rename(jt, jf)))
        prefopt_err_set(err, "%s: cannot move the trace into place (%s)", dir, strerror(errno)), bad = 1;
    if (!bad && pf_summary_write(S, x, dir, out, err))
        bad = 1;
    pf_summary_free(S);
    for (int i = 0; i < x->nregion; i++)
        free(x->region[i]);
    free(x->region);
    for (int i = 0; i < x->ncomm; i++)
        free(x->comm[i].members);
    free(x->comm);
    free(x->ev);
    return bad ? -1 : 0;
}
