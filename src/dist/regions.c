/* Region timers (regions.h): a call tree of named regions, summarised over ranks and written as folded stacks. */
#define _GNU_SOURCE
#include "prefopt/regions.h"

#include "prefopt/common.h"
#include "trace_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DEPTH 64

typedef struct {
    const char *name;     /* the caller's string (compared by pointer first) */
    char path[192];
    int parent, first_child, last_child, next_sibling, depth;
    double incl, mpi;     /* inclusive seconds and MPI seconds */
    long calls;
    double t_enter, mpi_enter;
} node;

static node *nodes;
static int nnodes, capnodes;
static int stack[MAX_DEPTH], depth;
static int enabled, pcontrol_mode, looked_up;
static double (*mpi_seconds_fn)(void);
static void (*pmpi_region_fn)(const char *, int);

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int new_node(int parent, const char *name)
{
    if (nnodes == capnodes) {
        capnodes = capnodes ? 2 * capnodes : 32;
        node *nn = prefopt_xcalloc((size_t)capnodes, sizeof *nn, "region table");
        if (nnodes)
            memcpy(nn, nodes, sizeof *nn * (size_t)nnodes);
        free(nodes);
        nodes = nn;
    }
    int i = nnodes++;
    node *n = &nodes[i];
    memset(n, 0, sizeof *n);
    n->name = name;
    n->parent = parent;
    n->first_child = n->last_child = n->next_sibling = -1;
    if (parent >= 0) {
        node *p = &nodes[parent];
        n->depth = p->depth + 1;
        char pp[sizeof p->path];
        memcpy(pp, p->path, sizeof pp);
        size_t lp = strnlen(pp, sizeof pp - 1), ln = strlen(name);
        pp[lp] = '\0';
        if (lp + 1 + ln + 1 > sizeof n->path)
            prefopt_die("region path too long: %s/%s", pp, name);
        if (lp) {
            memcpy(n->path, pp, lp);
            n->path[lp] = '/';
            memcpy(n->path + lp + 1, name, ln + 1);
        } else
            memcpy(n->path, name, ln + 1);
        if (p->last_child >= 0)
            nodes[p->last_child].next_sibling = i;
        else
            p->first_child = i;
        p->last_child = i;
    }
    return i;
}

static void ensure_root(void)
{
    if (!nnodes) {
        new_node(-1, "");
        stack[0] = 0;
        depth = 1;
    }
}

void prefopt_regions_enable(int on, int pcontrol)
{
    ensure_root();
    if (!looked_up) {
        looked_up = 1;
        void *f = dlsym(RTLD_DEFAULT, "prefopt_pmpi_mpi_seconds");
        void *g = dlsym(RTLD_DEFAULT, "prefopt_pmpi_region");
        memcpy(&mpi_seconds_fn, &f, sizeof f);
        memcpy(&pmpi_region_fn, &g, sizeof g);
    }
    enabled = on;
    pcontrol_mode = pcontrol;
}

int prefopt_regions_enabled(void) { return enabled; }
int prefopt_regions_have_mpi_time(void) { return mpi_seconds_fn != NULL; }
double prefopt_regions_mpi_seconds(void) { return mpi_seconds_fn ? mpi_seconds_fn() : 0.0; }

void prefopt_regions_reset(void)
{
    if (depth > 1)
        prefopt_die("prefopt_regions_reset inside region '%s'", nodes[stack[depth - 1]].path);
    for (int i = 0; i < nnodes; i++) {
        nodes[i].incl = nodes[i].mpi = 0;
        nodes[i].calls = 0;
    }
}

void prefopt_regions_pcontrol_window(int on)
{
    if (pcontrol_mode != PREFOPT_PCONTROL_OFF)
        MPI_Pcontrol(on ? 1 : 0);
}

void prefopt_region_enter(const char *name) { prefopt_region_enter_n(name, -1); }

void prefopt_region_enter_n(const char *name, int index)
{
    if (!enabled)
        return;
    pf_trace_region(name, index, 1);
    ensure_root();
    if (depth >= MAX_DEPTH)
        prefopt_die("region '%s': nesting deeper than %d", name, MAX_DEPTH);
    int cur = stack[depth - 1], c;
    for (c = nodes[cur].first_child; c >= 0; c = nodes[c].next_sibling)
        if (nodes[c].name == name || !strcmp(nodes[c].name, name))
            break;
    if (c < 0)
        c = new_node(cur, name);
    stack[depth++] = c;
    if (pcontrol_mode == PREFOPT_PCONTROL_NAMED)
        MPI_Pcontrol(1, name);
    if (pmpi_region_fn)
        pmpi_region_fn(name, 1);
    nodes[c].mpi_enter = mpi_seconds_fn ? mpi_seconds_fn() : 0.0;
    nodes[c].t_enter = now();
}

void prefopt_region_exit(const char *name)
{
    if (!enabled)
        return;
    double t = now();
    if (depth <= 1)
        prefopt_die("region exit '%s' without an enter", name);
    node *n = &nodes[stack[depth - 1]];
    if (n->name != name && strcmp(n->name, name))
        prefopt_die("region exit '%s' while '%s' is open", name, n->path);
    n->incl += t - n->t_enter;
    n->calls++;
    if (mpi_seconds_fn)
        n->mpi += mpi_seconds_fn() - n->mpi_enter;
    if (pmpi_region_fn)
        pmpi_region_fn(name, 0);
    if (pcontrol_mode == PREFOPT_PCONTROL_NAMED)
        MPI_Pcontrol(-1, name);
    depth--;
    pf_trace_region(name, -1, 0);
}

static int find_path(const char *path)
{
    for (int i = 1; i < nnodes; i++)
        if (!strcmp(nodes[i].path, path))
            return i;
    return -1;
}

double prefopt_region_seconds(const char *path, long *calls, double *mpi_seconds)
{
    int i = find_path(path);
    if (calls)
        *calls = i < 0 ? 0 : nodes[i].calls;
    if (mpi_seconds)
        *mpi_seconds = i < 0 ? 0.0 : nodes[i].mpi;
    return i < 0 ? 0.0 : nodes[i].incl;
}

/* local values of a node: incl, excl, mpi, calls, mpi_excl */
enum { V_INCL, V_EXCL, V_MPI, V_CALLS, V_MPIX, NV };

static void local_values(int i, double *v)
{
    const node *n = &nodes[i];
    double ci = 0, cm = 0;
    for (int c = n->first_child; c >= 0; c = nodes[c].next_sibling) {
        ci += nodes[c].incl;
        cm += nodes[c].mpi;
    }
    v[V_INCL] = n->incl;
    v[V_EXCL] = n->incl - ci > 0 ? n->incl - ci : 0;
    v[V_MPI] = n->mpi;
    v[V_CALLS] = (double)n->calls;
    v[V_MPIX] = n->mpi - cm > 0 ? n->mpi - cm : 0;
}

static void dfs_paths(int i, char **buf, size_t *len, size_t *cap)
{
    if (i > 0) {
        size_t l = strlen(nodes[i].path) + 1;
        if (*len + l + 1 > *cap) {
            *cap = 2 * (*cap + l) + 256;
            char *nb = prefopt_xmalloc(*cap, "region paths");
            if (*len)
                memcpy(nb, *buf, *len);
            free(*buf);
            *buf = nb;
        }
        memcpy(*buf + *len, nodes[i].path, l);
        *len += l;
    }
    for (int c = nodes[i].first_child; c >= 0; c = nodes[c].next_sibling)
        dfs_paths(c, buf, len, cap);
}

/* The union of every rank's paths (rank 0's depth-first order first), and the values reduced over ranks:
 * red[k*NV*3 + v*3 + {0,1,2}] = min, sum, max. */
static int gather_union(MPI_Comm comm, char ***paths_out, double **red_out)
{
    ensure_root();
    int size;
    MPI_Comm_size(comm, &size);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    dfs_paths(0, &buf, &len, &cap);
    int mylen = (int)len, *lens = prefopt_xcalloc((size_t)size, sizeof(int), "region paths");
    int *displs = prefopt_xcalloc((size_t)size, sizeof(int), "region paths");
    MPI_Allgather(&mylen, 1, MPI_INT, lens, 1, MPI_INT, comm);
    int total = 0;
    for (int r = 0; r < size; r++) {
        displs[r] = total;
        total += lens[r];
    }
    char *all = prefopt_xmalloc((size_t)total + 1, "region paths");
    MPI_Allgatherv(buf ? buf : "", mylen, MPI_CHAR, all, lens, displs, MPI_CHAR, comm);
    free(buf);
    free(lens);
    free(displs);
    int nu = 0;
    char **paths = prefopt_xcalloc((size_t)total + 1, sizeof(char *), "region paths");
    for (int off = 0; off < total;) {
        char *p = all + off;
        off += (int)strlen(p) + 1;
        int seen = 0;
        for (int k = 0; k < nu && !seen; k++)
            seen = !strcmp(paths[k], p);
        if (!seen) {
            size_t l = strlen(p) + 1;
            paths[nu] = prefopt_xmalloc(l, "region path");
            memcpy(paths[nu++], p, l);
        }
    }
    free(all);
    double *loc = prefopt_xcalloc((size_t)nu * NV + 1, sizeof(double), "region values");
    for (int k = 0; k < nu; k++) {
        int i = find_path(paths[k]);
        if (i >= 0)
            local_values(i, loc + (size_t)k * NV);
    }
    size_t n = (size_t)nu * NV;
    double *mn = prefopt_xmalloc(sizeof(double) * (n + 1), "region values");
    double *sm = prefopt_xmalloc(sizeof(double) * (n + 1), "region values");
    double *mx = prefopt_xmalloc(sizeof(double) * (n + 1), "region values");
    MPI_Allreduce(loc, mn, (int)n, MPI_DOUBLE, MPI_MIN, comm);
    MPI_Allreduce(loc, sm, (int)n, MPI_DOUBLE, MPI_SUM, comm);
    MPI_Allreduce(loc, mx, (int)n, MPI_DOUBLE, MPI_MAX, comm);
    double *red = prefopt_xmalloc(sizeof(double) * (3 * n + 1), "region values");
    for (size_t e = 0; e < n; e++) {
        red[3 * e] = mn[e];
        red[3 * e + 1] = sm[e];
        red[3 * e + 2] = mx[e];
    }
    free(loc), free(mn), free(sm), free(mx);
    *paths_out = paths;
    *red_out = red;
    return nu;
}

int prefopt_regions_summarize(MPI_Comm comm, prefopt_region_stat **out)
{
    char **paths;
    double *red;
    int size;
    MPI_Comm_size(comm, &size);
    int nu = gather_union(comm, &paths, &red);
    prefopt_region_stat *s = prefopt_xcalloc((size_t)nu + 1, sizeof *s, "region summary");
    for (int k = 0; k < nu; k++) {
        snprintf(s[k].path, sizeof s[k].path, "%s", paths[k]);
        for (const char *c = paths[k]; *c; c++)
            s[k].depth += *c == '/';
        const double *v = red + (size_t)k * NV * 3;
        for (int j = 0; j < 3; j++) {
            double div = j == 1 ? size : 1;
            s[k].incl[j] = v[V_INCL * 3 + j] / div;
            s[k].excl[j] = v[V_EXCL * 3 + j] / div;
            s[k].mpi[j] = v[V_MPI * 3 + j] / div;
        }
        s[k].calls = v[V_CALLS * 3 + 2];
        free(paths[k]);
    }
    free(paths);
    free(red);
    *out = s;
    return nu;
}

void prefopt_regions_print(FILE *f, MPI_Comm comm, const char *title)
{
    prefopt_region_stat *s;
    int n = prefopt_regions_summarize(comm, &s), rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (rank == 0) {
        fprintf(f, "%s (%d ranks; seconds, min / avg / max over ranks; imbalance = max/avg)\n", title, size);
        fprintf(f, "  %-36s %7s %10s %10s %10s %6s %10s\n", "region", "calls", "min", "avg", "max", "imb",
                mpi_seconds_fn ? "MPI avg" : "MPI");
        for (int k = 0; k < n; k++) {
            const char *leaf = strrchr(s[k].path, '/');
            char label[64];
            if (snprintf(label, sizeof label, "%*s%s", 2 * s[k].depth, "", leaf ? leaf + 1 : s[k].path) >=
                (int)sizeof label)
                label[sizeof label - 2] = '~'; /* long names are cut, visibly, to keep the table's columns */
            char mpi[32];
            if (mpi_seconds_fn)
                snprintf(mpi, sizeof mpi, "%10.4f", s[k].mpi[1]);
            else
                snprintf(mpi, sizeof mpi, "%10s", "n/a");
            fprintf(f, "  %-36s %7.0f %10.4f %10.4f %10.4f %6.2f %s\n", label, s[k].calls, s[k].incl[0],
                    s[k].incl[1], s[k].incl[2], s[k].incl[1] > 0 ? s[k].incl[2] / s[k].incl[1] : 1.0, mpi);
        }
        fflush(f);
    }
    free(s);
}

static void folded_line(FILE *f, const char *prefix, const char *path, const char *suffix, double sec)
{
    long us = (long)(sec * 1e6 + 0.5);
    if (us <= 0)
        return;
    fputs(prefix, f);
    for (const char *c = path; *c; c++)
        fputc(*c == '/' ? ';' : *c, f);
    fprintf(f, "%s %ld\n", suffix, us);
}

int prefopt_regions_write_folded(const char *path, const char *prefix, int per_rank, MPI_Comm comm)
{
    int rank, rc = 0;
    MPI_Comm_rank(comm, &rank);
    char pre[256];
    if (per_rank) {
        snprintf(pre, sizeof pre, "%s%srank%d;", prefix ? prefix : "", prefix && *prefix ? ";" : "", rank);
        char p[4200];
        snprintf(p, sizeof p, "%s.%d", path, rank);
        FILE *f = fopen(p, "w");
        if (!f)
            rc = errno ? errno : 1;
        else {
            for (int i = 1; i < nnodes; i++) {
                double v[NV];
                local_values(i, v);
                folded_line(f, pre, nodes[i].path, "", v[V_EXCL] - v[V_MPIX]);
                folded_line(f, pre, nodes[i].path, ";MPI", v[V_MPIX]);
            }
            if (fclose(f))
                rc = errno ? errno : 1;
        }
        MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, comm);
        return rc ? -1 : 0;
    }
    char **paths;
    double *red;
    int nu = gather_union(comm, &paths, &red);
    if (rank == 0) {
        snprintf(pre, sizeof pre, "%s%s", prefix ? prefix : "", prefix && *prefix ? ";" : "");
        FILE *f = fopen(path, "w");
        if (!f)
            rc = errno ? errno : 1;
        else {
            for (int k = 0; k < nu; k++) {
                const double *v = red + (size_t)k * NV * 3;
                folded_line(f, pre, paths[k], "", v[V_EXCL * 3 + 1] - v[V_MPIX * 3 + 1]);
                folded_line(f, pre, paths[k], ";MPI", v[V_MPIX * 3 + 1]);
            }
            if (fclose(f))
                rc = errno ? errno : 1;
        }
    }
    for (int k = 0; k < nu; k++)
        free(paths[k]);
    free(paths);
    free(red);
    MPI_Bcast(&rc, 1, MPI_INT, 0, comm);
    return rc ? -1 : 0;
}
