/* The trace summary (trace.h, trace_summary.h): MPI time per region x call x communicator with per-rank
 * min/mean/max and the slowest rank, waiting time in collectives (from entry until the last member entered: load
 * imbalance) separated from transfer, power-of-two message-size histograms, and per step the critical path and
 * the compute / exposed communication / I/O shares of every rank. */
#define _GNU_SOURCE
#include "trace_internal.h"
#include "trace_summary.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NBINS = 48, TIMELINE_STEPS = 3 };

typedef struct {
    int path, call, comm;
    double *v; /* per rank: calls, seconds, bytes, wait (4 x nranks) */
} kstat;

typedef struct {
    int comm, key, step;
    double t0, t1;
} coll;

typedef struct {
    long step;
    double t0, t1, comm, io, wait;
    int closed;
} stepst;

typedef struct {
    float t0, t1;
    int cat; /* 0 step, 1 communication, 2 I/O */
} box;

struct pf_summary {
    int nranks;
    kstat *k;
    int nk, capk;
    char **paths;
    int npaths, cappaths;
    coll **cl;
    size_t *ncl, *capcl;
    stepst **st;
    int *nst, *capst;
    box **bx;
    size_t *nbx, *capbx;
    double hist[PF_MPI_NCALLS][NBINS];
};

#define GROW(arr, n, cap, init, what)                                                                             \
    do {                                                                                                          \
        if ((n) == (cap)) {                                                                                       \
            size_t nc_ = (cap) ? 2 * (size_t)(cap) : (init);                                                      \
            void *p_ = prefopt_xcalloc(nc_, sizeof *(arr), what);                                                 \
            if (n)                                                                                                \
                memcpy(p_, (arr), sizeof *(arr) * (size_t)(n));                                                   \
            free(arr);                                                                                            \
            (arr) = p_;                                                                                           \
            (cap) = nc_;                                                                                          \
        }                                                                                                         \
    } while (0)

pf_summary *pf_summary_new(int nranks)
{
    pf_summary *s = prefopt_xcalloc(1, sizeof *s, "trace summary");
    s->nranks = nranks;
    size_t n = (size_t)nranks + 1;
    s->cl = prefopt_xcalloc(n, sizeof *s->cl, "trace summary");
    s->ncl = prefopt_xcalloc(n, sizeof *s->ncl, "trace summary");
    s->capcl = prefopt_xcalloc(n, sizeof *s->capcl, "trace summary");
    s->st = prefopt_xcalloc(n, sizeof *s->st, "trace summary");
    s->nst = prefopt_xcalloc(n, sizeof *s->nst, "trace summary");
    s->capst = prefopt_xcalloc(n, sizeof *s->capst, "trace summary");
    s->bx = prefopt_xcalloc(n, sizeof *s->bx, "trace summary");
    s->nbx = prefopt_xcalloc(n, sizeof *s->nbx, "trace summary");
    s->capbx = prefopt_xcalloc(n, sizeof *s->capbx, "trace summary");
    return s;
}

void pf_summary_free(pf_summary *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nk; i++)
        free(s->k[i].v);
    free(s->k);
    for (int i = 0; i < s->npaths; i++)
        free(s->paths[i]);
    free(s->paths);
    for (int r = 0; r < s->nranks; r++)
        free(s->cl[r]), free(s->st[r]), free(s->bx[r]);
    free(s->cl), free(s->ncl), free(s->capcl), free(s->st), free(s->nst), free(s->capst);
    free(s->bx), free(s->nbx), free(s->capbx);
    free(s);
}

static int path_id(pf_summary *s, const char *p)
{
    for (int i = 0; i < s->npaths; i++)
        if (!strcmp(s->paths[i], p))
            return i;
    GROW(s->paths, s->npaths, s->cappaths, 64, "trace paths");
    size_t l = strlen(p) + 1;
    s->paths[s->npaths] = prefopt_xmalloc(l, "trace path");
    memcpy(s->paths[s->npaths], p, l);
    return s->npaths++;
}

static int key_id(pf_summary *s, int path, int call, int comm)
{
    for (int i = 0; i < s->nk; i++)
        if (s->k[i].path == path && s->k[i].call == call && s->k[i].comm == comm)
            return i;
    GROW(s->k, s->nk, s->capk, 64, "trace keys");
    kstat *k = &s->k[s->nk];
    k->path = path, k->call = call, k->comm = comm;
    k->v = prefopt_xcalloc((size_t)s->nranks * 4 + 1, sizeof(double), "trace keys");
    return s->nk++;
}

/* "layer 3" -> "layer": the summary adds up the layers */
static void base_name(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s", name);
    size_t l = strlen(out);
    size_t e = l;
    while (e > 0 && isdigit((unsigned char)out[e - 1]))
        e--;
    if (e < l && e > 1 && out[e - 1] == ' ')
        out[e - 1] = '\0';
}

/* I/O regions: their names end in _read or _write (data_read, checkpoint_write) */
static int is_io(const char *b)
{
    size_t l = strlen(b);
    return (l > 5 && !strcmp(b + l - 5, "_read")) || (l > 6 && !strcmp(b + l - 6, "_write"));
}

static void add_box(pf_summary *s, int r, double t0, double t1, int cat)
{
    if (s->nst[r] == 0 || s->nst[r] > TIMELINE_STEPS || s->st[r][s->nst[r] - 1].closed)
        return;
    GROW(s->bx[r], s->nbx[r], s->capbx[r], 256, "trace timeline");
    s->bx[r][s->nbx[r]++] = (box){(float)t0, (float)t1, cat};
}

static void close_step(pf_summary *s, int r, double t)
{
    if (s->nst[r] == 0)
        return;
    stepst *p = &s->st[r][s->nst[r] - 1];
    if (p->closed)
        return;
    p->t1 = t;
    p->closed = 1;
    if (s->nst[r] <= TIMELINE_STEPS) {
        GROW(s->bx[r], s->nbx[r], s->capbx[r], 256, "trace timeline");
        s->bx[r][s->nbx[r]++] = (box){(float)p->t0, (float)p->t1, 0};
    }
}

void pf_summary_rank(pf_summary *s, pf_export *x, int r)
{
    int stack[256], iost[256], depth = 0, io_depth = 0;
    double io_t0 = 0, last = 0;
    char buf[1024], b[256];
    for (size_t i = 0; i < x->nev; i++) {
        const pf_xev *v = &x->ev[i];
        int open = s->nst[r] > 0 && !s->st[r][s->nst[r] - 1].closed;
        stepst *cur = open ? &s->st[r][s->nst[r] - 1] : NULL;
        switch (v->kind) {
        case PF_REC_STEP:
            close_step(s, r, v->t0);
            GROW(s->st[r], s->nst[r], s->capst[r], 64, "trace steps");
            s->st[r][s->nst[r]++] = (stepst){.step = v->id, .t0 = v->t0};
            last = v->t0;
            break;
        case PF_REC_ENTER:
            base_name(b, sizeof b, x->region[v->id]);
            if (depth < 256) {
                snprintf(buf, sizeof buf, "%s%s%s", depth ? s->paths[stack[depth - 1]] : "", depth ? "/" : "", b);
                stack[depth] = path_id(s, buf);
                iost[depth] = is_io(b);
                if (iost[depth] && io_depth++ == 0)
                    io_t0 = v->t0;
            }
            depth++;
            last = v->t0;
            break;
        case PF_REC_LEAVE:
            if (depth == 0)
                break;
            depth--;
            last = v->t0;
            if (depth < 256 && iost[depth] && --io_depth == 0) {
                if (cur)
                    cur->io += v->t0 - io_t0;
                add_box(s, r, io_t0, v->t0, 2);
            }
            base_name(b, sizeof b, x->region[v->id]);
            if (!strcmp(b, "step"))
                close_step(s, r, v->t0);
            break;
        case PF_REC_MPI: {
            int path = depth > 0 && depth <= 256 ? stack[depth - 1] : path_id(s, "(outside regions)");
            /* communicators by role: the DP groups of every grid position are one row ("dp") */
            int cn = -1;
            for (int c = 0; v->id >= 0 && c <= v->id && cn < 0; c++)
                if (!strcmp(x->comm[c].name, x->comm[v->id].name))
                    cn = c;
            int k = key_id(s, path, v->call, cn);
            double d = v->t1 - v->t0;
            double *kv = s->k[k].v + (size_t)r * 4;
            kv[0] += 1, kv[1] += d, kv[2] += (double)v->bytes;
            int bin = v->bytes ? 1 + (int)floor(log2((double)v->bytes)) : 0;
            s->hist[v->call][bin < NBINS ? bin : NBINS - 1] += 1;
            int kind = pf_trace_call_kind[v->call];
            if (kind == PF_KIND_COLL && v->id >= 0) {
                GROW(s->cl[r], s->ncl[r], s->capcl[r], 1024, "trace collectives");
                s->cl[r][s->ncl[r]++] = (coll){v->id, k, cur ? s->nst[r] - 1 : -1, v->t0, v->t1};
            }
            if (cur && io_depth == 0) {
                if (kind == PF_KIND_IO)
                    cur->io += d;
                else
                    cur->comm += d;
            }
            if (io_depth == 0)
                add_box(s, r, v->t0, v->t1, kind == PF_KIND_IO ? 2 : 1);
            last = v->t1;
            break;
        }
        default:
            break;
        }
    }
    close_step(s, r, last);
}

/* The k-th collective on a communicator is the same operation on every member (MPI orders collectives per
 * communicator): a member waits from its entry until the last member entered, and the rest is transfer. */
static void match_collectives(pf_summary *s, const pf_export *x)
{
    for (int c = 0; c < x->ncomm; c++) {
        const pf_xcomm *cm = &x->comm[c];
        if (cm->size < 2)
            continue;
        size_t **idx = prefopt_xcalloc((size_t)cm->size, sizeof *idx, "trace matching");
        size_t *cnt = prefopt_xcalloc((size_t)cm->size, sizeof *cnt, "trace matching"), n = (size_t)-1;
        for (int m = 0; m < cm->size; m++) {
            int r = cm->members[m];
            if (r < 0 || r >= s->nranks) {
                n = 0;
                continue;
            }
            idx[m] = prefopt_xmalloc(sizeof(size_t) * (s->ncl[r] + 1), "trace matching");
            for (size_t i = 0; i < s->ncl[r]; i++)
                if (s->cl[r][i].comm == c)
                    idx[m][cnt[m]++] = i;
            if (cnt[m] < n)
                n = cnt[m]; /* a rank that died early: match what every member has */
        }
        for (size_t k = 0; k < n; k++) {
            double last = -1e300;
            for (int m = 0; m < cm->size; m++) {
                const coll *e = &s->cl[cm->members[m]][idx[m][k]];
                if (e->t0 > last)
                    last = e->t0;
            }
            for (int m = 0; m < cm->size; m++) {
                int r = cm->members[m];
                const coll *e = &s->cl[r][idx[m][k]];
                double w = last - e->t0, d = e->t1 - e->t0;
                w = w < 0 ? 0 : w > d ? d : w;
                s->k[e->key].v[(size_t)r * 4 + 3] += w;
                if (e->step >= 0)
                    s->st[r][e->step].wait += w;
            }
        }
        for (int m = 0; m < cm->size; m++)
            free(idx[m]);
        free(idx);
        free(cnt);
    }
}

static const char *comm_name(const pf_export *x, int c) { return c >= 0 ? x->comm[c].name : "-"; }

int pf_summary_write(pf_summary *s, pf_export *x, const char *dir, FILE *out, prefopt_err *err)
{
    match_collectives(s, x);
    const int P = s->nranks;
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/summary.txt", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        prefopt_err_set(err, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    cJSON *J = cJSON_CreateObject();
    cJSON_AddNumberToObject(J, "ranks", P);
    /* steps: matched by position (every rank traces the same steps) */
    int nsteps = P ? s->nst[0] : 0;
    for (int r = 1; r < P; r++)
        if (s->nst[r] < nsteps)
            nsteps = s->nst[r];
    fprintf(f, "prefopt trace summary: %d ranks, %d steps traced", P, nsteps);
    if (nsteps)
        fprintf(f, " (%ld..%ld)", s->st[0][0].step, s->st[0][nsteps - 1].step);
    fprintf(f, "\n\nper step: wall = last rank's end - first rank's start; critical path (BSP): the rank with the most "
               "compute, then its transfer and I/O; others wait for it\n");
    fprintf(f, "  %6s %9s %5s %9s %9s %9s %9s | %8s %8s %8s %8s (mean over ranks)\n", "step", "wall s", "crit",
            "compute", "transfer", "io", "wait", "compute", "comm", "wait", "io");
    cJSON *js = cJSON_AddArrayToObject(J, "steps");
    double *rc = prefopt_xcalloc((size_t)P * 5 + 1, sizeof(double), "trace summary"); /* per rank totals */
    for (int k = 0; k < nsteps; k++) {
        double b = 1e300, e = -1e300, best = -1, mc = 0, mm = 0, mw = 0, mi = 0;
        int crit = 0;
        for (int r = 0; r < P; r++) {
            const stepst *p = &s->st[r][k];
            double len = p->t1 - p->t0, comp = len - p->comm - p->io;
            b = p->t0 < b ? p->t0 : b;
            e = p->t1 > e ? p->t1 : e;
            if (comp > best)
                best = comp, crit = r;
            mc += comp / P, mm += p->comm / P, mw += p->wait / P, mi += p->io / P;
            rc[r * 5] += len, rc[r * 5 + 1] += comp, rc[r * 5 + 2] += p->comm, rc[r * 5 + 3] += p->wait;
            rc[r * 5 + 4] += p->io;
        }
        const stepst *c = &s->st[crit][k];
        double wall = e - b, tr = c->comm - c->wait;
        fprintf(f, "  %6ld %9.4f %5d %9.4f %9.4f %9.4f %9.4f | %8.4f %8.4f %8.4f %8.4f\n", c->step, wall, crit, best,
                tr, c->io, c->wait, mc, mm, mw, mi);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "step", (double)c->step);
        cJSON_AddNumberToObject(o, "wall_s", wall);
        cJSON_AddNumberToObject(o, "critical_rank", crit);
        cJSON_AddNumberToObject(o, "critical_compute_s", best);
        cJSON_AddNumberToObject(o, "critical_transfer_s", tr);
        cJSON_AddNumberToObject(o, "critical_io_s", c->io);
        cJSON_AddNumberToObject(o, "mean_compute_s", mc);
        cJSON_AddNumberToObject(o, "mean_comm_s", mm);
        cJSON_AddNumberToObject(o, "mean_wait_s", mw);
        cJSON_AddNumberToObject(o, "mean_io_s", mi);
        cJSON_AddItemToArray(js, o);
    }
    fprintf(f, "\nper rank over the traced steps (shares of step time; exposed communication = time inside MPI "
               "outside I/O, split into waiting and transfer)\n");
    fprintf(f, "  %5s %10s %8s %8s %8s %8s %8s\n", "rank", "steps s", "compute", "comm", "wait", "transfer", "io");
    cJSON *jr = cJSON_AddArrayToObject(J, "ranks_share");
    for (int r = 0; r < P && nsteps; r++) {
        double t = rc[r * 5] > 0 ? rc[r * 5] : 1;
        fprintf(f, "  %5d %10.4f %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%%\n", r, rc[r * 5], 100 * rc[r * 5 + 1] / t,
                100 * rc[r * 5 + 2] / t, 100 * rc[r * 5 + 3] / t, 100 * (rc[r * 5 + 2] - rc[r * 5 + 3]) / t,
                100 * rc[r * 5 + 4] / t);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "rank", r);
        cJSON_AddNumberToObject(o, "steps_s", rc[r * 5]);
        cJSON_AddNumberToObject(o, "compute_s", rc[r * 5 + 1]);
        cJSON_AddNumberToObject(o, "comm_s", rc[r * 5 + 2]);
        cJSON_AddNumberToObject(o, "wait_s", rc[r * 5 + 3]);
        cJSON_AddNumberToObject(o, "io_s", rc[r * 5 + 4]);
        cJSON_AddItemToArray(jr, o);
    }
    free(rc);
    fprintf(f, "\nMPI by region x call x communicator (seconds per rank over the whole trace: min / mean / max, the "
               "slowest rank; wait = from entry until the last member entered)\n");
    fprintf(f, "  %-40s %-22s %-8s %9s %12s %9s %9s %9s %5s %9s %9s\n", "region", "call", "comm", "calls", "bytes",
            "min s", "mean s", "max s", "slow", "wait", "transfer");
    cJSON *jk = cJSON_AddArrayToObject(J, "mpi");
    for (int i = 0; i < s->nk; i++) {
        const kstat *k = &s->k[i];
        double calls = 0, bytes = 0, mn = 1e300, mx = -1, sum = 0, wait = 0;
        int slow = 0;
        for (int r = 0; r < P; r++) {
            const double *v = k->v + (size_t)r * 4;
            calls += v[0], bytes += v[2], sum += v[1], wait += v[3];
            mn = v[1] < mn ? v[1] : mn;
            if (v[1] > mx)
                mx = v[1], slow = r;
        }
        fprintf(f, "  %-40s %-22s %-8s %9.0f %12.0f %9.4f %9.4f %9.4f %5d %9.4f %9.4f\n", s->paths[k->path],
                pf_trace_call_name[k->call], comm_name(x, k->comm), calls, bytes, mn, sum / P, mx, slow, wait / P,
                (sum - wait) / P);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "region", s->paths[k->path]);
        cJSON_AddStringToObject(o, "call", pf_trace_call_name[k->call]);
        cJSON_AddStringToObject(o, "comm", comm_name(x, k->comm));
        cJSON_AddNumberToObject(o, "calls", calls);
        cJSON_AddNumberToObject(o, "bytes", bytes);
        cJSON_AddNumberToObject(o, "s_min", mn);
        cJSON_AddNumberToObject(o, "s_mean", sum / P);
        cJSON_AddNumberToObject(o, "s_max", mx);
        cJSON_AddNumberToObject(o, "slowest_rank", slow);
        cJSON_AddNumberToObject(o, "wait_s_mean", wait / P);
        cJSON_AddNumberToObject(o, "transfer_s_mean", (sum - wait) / P);
        cJSON_AddItemToArray(jk, o);
    }
    fprintf(f, "\nmessage sizes per call (calls summed over ranks; bin [2^(k-1), 2^k) bytes, 0 = no payload)\n");
    cJSON *jh = cJSON_AddObjectToObject(J, "bytes_histogram");
    for (int c = 0; c < PF_MPI_NCALLS; c++) {
        int any = 0;
        for (int b = 0; b < NBINS; b++)
            any |= s->hist[c][b] > 0;
        if (!any)
            continue;
        fprintf(f, "  %-22s", pf_trace_call_name[c]);
        cJSON *o = cJSON_AddObjectToObject(jh, pf_trace_call_name[c]);
        for (int b = 0; b < NBINS; b++) {
            if (s->hist[c][b] <= 0)
                continue;
            char lab[32];
            if (b == 0)
                snprintf(lab, sizeof lab, "0");
            else
                snprintf(lab, sizeof lab, "%.0f", ldexp(1.0, b - 1));
            fprintf(f, " %s+:%.0f", lab, s->hist[c][b]);
            cJSON_AddNumberToObject(o, lab, s->hist[c][b]);
        }
        fputc('\n', f);
    }
    int bad = fclose(f) != 0;
    if (!bad)
        bad = rename(tmp, path) != 0;
    /* JSON */
    char jp[4200], jt[4300];
    snprintf(jp, sizeof jp, "%s/summary.json", dir);
    snprintf(jt, sizeof jt, "%s.tmp", jp);
    char *txt = cJSON_PrintUnformatted(J);
    cJSON_Delete(J);
    FILE *g = fopen(jt, "w");
    if (!g || !txt || fputs(txt, g) < 0 || fputc('\n', g) < 0)
        bad = 1;
    if (g && fclose(g))
        bad = 1;
    free(txt);
    if (!bad)
        bad = rename(jt, jp) != 0;
    /* the timeline of the first steps: data and gnuplot script (prefopt trace-summary draws the PNG) */
    char dp[4200], gp[4200];
    snprintf(dp, sizeof dp, "%s/timeline.dat", dir);
    snprintf(gp, sizeof gp, "%s/timeline.gp", dir);
    FILE *d = fopen(dp, "w"), *q = fopen(gp, "w");
    if (!d || !q)
        bad = 1;
    else {
        fprintf(d, "# rank t0_s t1_s category (0 step = compute background, 1 MPI communication, 2 I/O)\n");
        for (int cat = 0; cat < 3; cat++) {
            for (int r = 0; r < P; r++)
                for (size_t i = 0; i < s->nbx[r]; i++)
                    if (s->bx[r][i].cat == cat)
                        fprintf(d, "%d %.6f %.6f %d\n", r, s->bx[r][i].t0, s->bx[r][i].t1, cat);
            fprintf(d, "\n\n"); /* one gnuplot index per category */
        }
        fprintf(q, "# gnuplot timeline.gp (from DIR): the first %d traced steps, one row per rank\n"
                   "set terminal pngcairo size 1200,%d noenhanced\nset output 'timeline.png'\n"
                   "set title 'prefopt trace: compute (green), MPI communication (red), I/O (blue)'\n"
                   "set xlabel 'seconds since trace start'\nset ylabel 'rank'\nset yrange [-0.6:%d.6]\n"
                   "set ytics 1\nset key off\nset style fill solid 1.0 noborder\n"
                   "plot 'timeline.dat' index 0 using (($2+$3)/2):1:(($3-$2)/2):(0.35) with boxxyerror lc rgb "
                   "'#4caf50', '' index 1 using (($2+$3)/2):1:(($3-$2)/2):(0.35) with boxxyerror lc rgb '#e53935', "
                   "'' index 2 using (($2+$3)/2):1:(($3-$2)/2):(0.35) with boxxyerror lc rgb '#1e88e5'\n",
                TIMELINE_STEPS, 160 + 60 * P, P - 1);
    }
    if (d && fclose(d))
        bad = 1;
    if (q && fclose(q))
        bad = 1;
    if (bad) {
        prefopt_err_set(err, "%s: cannot write the summary files (%s)", dir, strerror(errno));
        return -1;
    }
    if (out) {
        FILE *t = fopen(path, "r");
        char line[1024];
        while (t && fgets(line, sizeof line, t))
            fputs(line, out);
        if (t)
            fclose(t);
    }
    return 0;
}
