/* The collective HDF5 transfers of model files and checkpoints: every rank's block-cyclic pieces <-> whole logical
 * tensors (stacked per layer), regrouped into whole columns, written and read with checksums verified. Geometry and
 * checksums are in ckpt_piece.c, whole-tensor I/O (import, export) in ckpt_full.c, files and attributes in
 * ckpt_file.c, model files in ckpt_model.c, checkpoint directories in ckpt_dir.c, training checkpoints in
 * ckpt_train.c. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tensors --------------------------------------------------------------------------------------------- */

static double timers[3]; /* pack + checksum, H5Dwrite, create + attributes (benchmarks) */
void ck_get_timers(double t[3]) { memcpy(t, timers, sizeof timers); }

static long kill_after = -2, written_datasets;

void ck_kill_hook_tick(void)
{
    if (kill_after == -2) {
        const char *e = getenv("PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS");
        kill_after = e && *e ? atol(e) : -1;
    }
    if (kill_after >= 0 && ++written_datasets > kill_after) {
        fprintf(stderr, "prefopt: test hook: SIGKILL after %ld datasets\n", kill_after);
        fflush(stderr);
        raise(SIGKILL);
    }
}

int ck_plan(const char *path, ck_item *items, int n, ck_dset **out, int *nds, prefopt_err *err)
{
    ck_dset *d = prefopt_xcalloc((size_t)n + 1, sizeof *d, "dataset plan");
    int k = 0, *layer = prefopt_xmalloc(sizeof(int) * ((size_t)n + 1), "layers");
    char ds[128];
    for (int i = 0; i < n; i++) {
        layer[i] = ck_stacked_name(items[i].name, ds, sizeof ds);
        int j = 0;
        while (j < k && strcmp(d[j].ds, ds))
            j++;
        if (j == k) {
            snprintf(d[k].ds, sizeof d[k].ds, "%s", ds);
            d[k].stacked = layer[i] >= 0;
            d[k].ndim = items[i].ndim;
            d[k].shape[0] = items[i].shape[0];
            d[k].shape[1] = items[i].shape[1];
            k++;
        } else if (d[j].ndim != items[i].ndim || d[j].shape[0] != items[i].shape[0] ||
                   (items[i].ndim == 2 && d[j].shape[1] != items[i].shape[1]) || !d[j].stacked) {
            prefopt_err_set(err, "%s: tensor '%s' differs in shape from the other layers of '%s'", path,
                            items[i].name, ds);
            goto fail;
        }
        if (layer[i] + 1 > d[j].nl)
            d[j].nl = layer[i] + 1;
    }
    for (int j = 0; j < k; j++) {
        if (!d[j].stacked)
            d[j].nl = 1;
        d[j].items = prefopt_xmalloc(sizeof(int) * (size_t)d[j].nl, "layer map");
        for (int l = 0; l < d[j].nl; l++)
            d[j].items[l] = -1;
    }
    for (int i = 0; i < n; i++) {
        ck_stacked_name(items[i].name, ds, sizeof ds);
        int j = 0;
        while (strcmp(d[j].ds, ds))
            j++;
        int l = layer[i] < 0 ? 0 : layer[i];
        if (d[j].items[l] >= 0) {
            prefopt_err_set(err, "%s: tensor '%s' listed twice", path, items[i].name);
            goto fail;
        }
        d[j].items[l] = i;
    }
    for (int j = 0; j < k; j++)
        for (int l = 0; l < d[j].nl; l++)
            if (d[j].items[l] < 0) {
                prefopt_err_set(err, "%s: layer %d of '%s' has no tensor", path, l, d[j].ds);
                goto fail;
            }
    free(layer);
    *out = d;
    *nds = k;
    return 0;
fail:
    for (int j = 0; j < k; j++)
        free(d[j].items);
    free(d);
    free(layer);
    return 1;
}

void ck_free_plan(ck_dset *d, int k)
{
    for (int j = 0; j < k; j++)
        free(d[j].items);
    free(d);
}

int ck_dset_dims(const ck_dset *d, hsize_t dims[3])
{
    int r = 0;
    if (d->stacked)
        dims[r++] = (hsize_t)d->nl;
    dims[r++] = (hsize_t)d->shape[0];
    if (d->ndim == 2)
        dims[r++] = (hsize_t)d->shape[1];
    return r;
}

hid_t ck_open_group(hid_t file, const char *group, int create)
{
    if (H5Lexists(file, group, H5P_DEFAULT) > 0)
        return H5Gopen2(file, group, H5P_DEFAULT);
    if (!create)
        return -1;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(file, group, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    return g;
}

hid_t ck_create_dset(hid_t grp, const ck_dset *d)
{
    hsize_t dims[3];
    int r = ck_dset_dims(d, dims);
    hid_t sp = H5Screate_simple(r, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* every element is written: skip the fill pass, which would double the bytes written */
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    hid_t ds = H5Dcreate2(grp, d->ds, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ds;
}

int ck_write_checksum_attr(hid_t ds, const uint64_t *sums, int nl)
{
    hsize_t d = (hsize_t)nl;
    hid_t sp = H5Screate_simple(1, &d, NULL);
    if (H5Aexists(ds, "checksum") > 0)
        H5Adelete(ds, "checksum");
    hid_t a = H5Acreate2(ds, "checksum", H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_UINT64, sums);
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(sp);
    return r < 0;
}

static void pack(const ck_piece *p, float *dst)
{
    int mloc = ck_piece_mloc(p), nloc = ck_piece_nloc(p);
    if (mloc == p->lld) {
        memcpy(dst, p->data, sizeof(float) * (size_t)mloc * (size_t)nloc);
        return;
    }
    for (int jl = 0; jl < nloc; jl++)
        memcpy(dst + (size_t)jl * mloc, p->data + (size_t)jl * p->lld, sizeof(float) * (size_t)mloc);
}

static void unpack(ck_piece *p, const float *src)
{
    int mloc = ck_piece_mloc(p), nloc = ck_piece_nloc(p);
    if (mloc == p->lld) {
        memcpy(p->data, src, sizeof(float) * (size_t)mloc * (size_t)nloc);
        return;
    }
    for (int jl = 0; jl < nloc; jl++)
        memcpy(p->data + (size_t)jl * p->lld, src + (size_t)jl * mloc, sizeof(float) * (size_t)mloc);
}

/* Whole-column regrouping. With nprow > 1 a rank's piece is short runs (mb rows) of many columns: in the file
 * ([out][in] row-major, a dmat column is a contiguous file row) that is a fragmented pattern, slow through
 * MPI-IO. The ranks of a process column hold the same columns, so they exchange (one Alltoallv) until each holds
 * whole columns of a share of them and transfers long contiguous runs. */
static int regroup(const ck_piece *p) { return p->nprow > 1 && p->col != MPI_COMM_NULL; }

static void col_share(const ck_piece *p, int q, int *c0, int *c1)
{
    int nloc = ck_piece_nloc(p);
    *c0 = (int)((long)q * nloc / p->nprow);
    *c1 = (int)((long)(q + 1) * nloc / p->nprow);
}

static size_t regroup_count(const ck_piece *p)
{
    int c0, c1;
    col_share(p, p->myrow, &c0, &c1);
    return (size_t)p->m * (size_t)(c1 - c0);
}

/* file selection of my share of whole columns */
static void select_cols(hid_t space, int layer, const ck_piece *p)
{
    int c0, c1;
    col_share(p, p->myrow, &c0, &c1);
    for (int jl = c0; jl < c1;) {
        int j = ck_l2g(jl, p->nb, p->mycol, p->npcol), run = 1;
        while (jl + run < c1 && ck_l2g(jl + run, p->nb, p->mycol, p->npcol) == j + run)
            run++;
        hsize_t st[3], ct[3];
        int r = 0;
        if (layer >= 0)
            st[r] = (hsize_t)layer, ct[r++] = 1;
        st[r] = (hsize_t)j, ct[r++] = (hsize_t)run;
        st[r] = 0, ct[r++] = (hsize_t)p->m;
        H5Sselect_hyperslab(space, H5S_SELECT_OR, st, NULL, ct, NULL);
        jl += run;
    }
}

/* dir 0: my piece -> whole columns of my share into cols[m x share]; dir 1: back */
static void regroup_exchange(ck_piece *p, float *cols, int dir)
{
    int np = p->nprow, r = p->myrow, mloc = ck_piece_mloc(p);
    int *sc = calloc((size_t)np, sizeof(int)), *sd = calloc((size_t)np, sizeof(int));
    int *rc = calloc((size_t)np, sizeof(int)), *rd = calloc((size_t)np, sizeof(int));
    int myc0, myc1;
    col_share(p, r, &myc0, &myc1);
    size_t nmine = 0, nshare = 0;
    for (int q = 0; q < np; q++) {
        int c0, c1, mq = ck_numroc(p->m, p->mb, q, np);
        col_share(p, q, &c0, &c1);
        sc[q] = mloc * (c1 - c0);       /* my rows of q's columns */
        rc[q] = mq * (myc1 - myc0);     /* q's rows of my columns */
        sd[q] = (int)nmine;
        rd[q] = (int)nshare;
        nmine += (size_t)sc[q];
        nshare += (size_t)rc[q];
    }
    float *a = prefopt_xmalloc(sizeof(float) * (nmine ? nmine : 1), "regroup");
    float *b = prefopt_xmalloc(sizeof(float) * (nshare ? nshare : 1), "regroup");
    if (dir == 0) {
        /* a: my piece's columns in order, mloc rows each (== q's share order since shares are contiguous) */
        for (int jl = 0; jl < ck_piece_nloc(p); jl++)
            memcpy(a + (size_t)jl * mloc, p->data + (size_t)jl * p->lld, sizeof(float) * (size_t)mloc);
        MPI_Alltoallv(a, sc, sd, MPI_FLOAT, b, rc, rd, MPI_FLOAT, p->col);
        for (int q = 0; q < np; q++) {
            int mq = ck_numroc(p->m, p->mb, q, np);
            for (int c = 0; c < myc1 - myc0; c++)
                for (int il = 0; il < mq; il += p->mb) /* block by block: mb rows are contiguous both sides */
                    memcpy(cols + (size_t)c * p->m + (size_t)ck_l2g(il, p->mb, q, np), b + rd[q] + (size_t)c * mq + il,
                           sizeof(float) * (size_t)(mq - il < p->mb ? mq - il : p->mb));
        }
    } else {
        for (int q = 0; q < np; q++) {
            int mq = ck_numroc(p->m, p->mb, q, np);
            for (int c = 0; c < myc1 - myc0; c++)
                for (int il = 0; il < mq; il += p->mb)
                    memcpy(b + rd[q] + (size_t)c * mq + il, cols + (size_t)c * p->m + (size_t)ck_l2g(il, p->mb, q, np),
                           sizeof(float) * (size_t)(mq - il < p->mb ? mq - il : p->mb));
        }
        MPI_Alltoallv(b, rc, rd, MPI_FLOAT, a, sc, sd, MPI_FLOAT, p->col);
        for (int jl = 0; jl < ck_piece_nloc(p); jl++)
            memcpy(p->data + (size_t)jl * p->lld, a + (size_t)jl * mloc, sizeof(float) * (size_t)mloc);
    }
    free(a);
    free(b);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
}

/* Layers per collective transfer of a stacked dataset: the staging buffer holds at most about 1 GiB of the global
 * tensor (divided over the ranks), so memory stays bounded for large models; the same count on every rank. */
static int layers_per_round(const ck_dset *d)
{
    double layer = 4.0 * (double)d->shape[0] * (double)(d->ndim == 2 ? d->shape[1] : 1);
    const char *t = getenv("PREFOPT_TEST_CKPT_ROUND_BYTES"); /* tests: force one layer per transfer */
    double limit = t && *t ? atof(t) : (double)(1u << 30);
    int per = (int)(limit / (layer > 1 ? layer : 1));
    return per < 1 ? 1 : per > d->nl ? d->nl : per;
}

int ck_write_items(hid_t file, const char *path, const char *group, ck_item *items, int n, int dp_rank, int dp_size,
                   MPI_Comm sum_comm, prefopt_err *err)
{
    ck_dset *d;
    int nd;
    if (ck_plan(path, items, n, &d, &nd, err))
        return 1;
    int rc = 0;
    hid_t grp = ck_open_group(file, group, 1);
    hid_t dxpl = ck_make_dxpl(file);
    uint64_t *sums = prefopt_xcalloc((size_t)n, sizeof *sums, "checksums");
    size_t stage_cap = 0;
    float *stage = NULL;
    hid_t *dsid = prefopt_xmalloc(sizeof(hid_t) * (size_t)nd, "datasets");
    for (int j = 0; j < nd; j++) {
        double tc = prefopt_now();
        hid_t ds = dsid[j] = ck_create_dset(grp, &d[j]);
        timers[2] += prefopt_now() - tc;
        if (ds < 0) {
            prefopt_err_set(err, "%s: cannot create dataset '%s/%s'", path, group, d[j].ds);
            rc = 1;
            continue;
        }
        int per = layers_per_round(&d[j]);
        for (int l0 = 0; l0 < d[j].nl; l0 += per) {
            int l1 = l0 + per < d[j].nl ? l0 + per : d[j].nl;
            hsize_t dims[3];
            int r = ck_dset_dims(&d[j], dims);
            hid_t fs = H5Screate_simple(r, dims, NULL);
            H5Sselect_none(fs);
            double t0 = prefopt_now();
            size_t total = 0;
            for (int l = l0; l < l1; l++) {
                const ck_item *it = &items[d[j].items[l]];
                if (it->p.active && it->p.sums && (l + j) % dp_size == dp_rank)
                    total += regroup(&it->p) ? regroup_count(&it->p) : ck_piece_count(&it->p);
            }
            if (total > stage_cap) {
                free(stage);
                stage_cap = total;
                stage = prefopt_xmalloc(sizeof(float) * stage_cap, "checkpoint staging buffer");
            }
            size_t off = 0;
            for (int l = l0; l < l1; l++) {
                int i = d[j].items[l];
                const ck_item *it = &items[i];
                /* one copy of each element is written: replicated vectors by process row 0 only */
                if (!it->p.active || !it->p.sums || (l + j) % dp_size != dp_rank)
                    continue;
                sums[i] = ck_checksum_piece(&it->p);
                if (regroup(&it->p)) { /* collective over the process column, whose ranks all get here */
                    regroup_exchange((ck_piece *)&it->p, stage + off, 0);
                    select_cols(fs, d[j].stacked ? l : -1, &it->p);
                    off += regroup_count(&it->p);
                    continue;
                }
                if (ck_piece_count(&it->p) == 0)
                    continue;
                /* the file selection iterates (layer, out, in) in row-major order, which is the order of the local
                 * column-major pieces because the local-to-global maps are increasing */
                ck_select_piece(fs, d[j].stacked ? l : -1, it->ndim, &it->p);
                pack(&it->p, stage + off);
                off += ck_piece_count(&it->p);
            }
            hsize_t mdim = total ? total : 1;
            hid_t ms = H5Screate_simple(1, &mdim, NULL);
            if (!total)
                H5Sselect_none(ms);
            double t1 = prefopt_now();
            timers[0] += t1 - t0;
            if (H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, stage) < 0) {
                prefopt_err_set(err, "%s: writing dataset '%s/%s' failed", path, group, d[j].ds);
                rc = 1;
            }
            H5Sclose(ms);
            H5Sclose(fs);
            timers[1] += prefopt_now() - t1;
        }
        ck_kill_hook_tick();
    }
    free(stage);
    MPI_Allreduce(MPI_IN_PLACE, sums, n, MPI_UINT64_T, MPI_SUM, sum_comm);
    for (int j = 0; j < nd; j++) {
        if (dsid[j] < 0)
            continue;
        uint64_t *s = prefopt_xmalloc(sizeof *s * (size_t)d[j].nl, "checksums");
        for (int l = 0; l < d[j].nl; l++)
            s[l] = sums[d[j].items[l]];
        if (ck_write_checksum_attr(dsid[j], s, d[j].nl)) {
            prefopt_err_set(err, "%s: writing the checksum of '%s/%s' failed", path, group, d[j].ds);
            rc = 1;
        }
        free(s);
        H5Dclose(dsid[j]);
    }
    free(dsid);
    free(sums);
    H5Pclose(dxpl);
    if (grp >= 0)
        H5Gclose(grp);
    ck_free_plan(d, nd);
    return rc;
}

void ck_shape_str(char *buf, size_t len, const hsize_t *dims, int r)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < r && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? "," : "", (unsigned long long)dims[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

int ck_read_items(hid_t file, const char *path, const char *group, ck_item *items, int n, MPI_Comm sum_comm,
                  prefopt_err *err)
{
    ck_dset *d;
    int nd;
    if (ck_plan(path, items, n, &d, &nd, err))
        return 1;
    int rc = 0, ioerr = 0;
    hid_t grp = ck_open_group(file, group, 0);
    if (grp < 0) {
        prefopt_err_set(err, "%s: group '%s' missing (a model file has no optimizer state)", path, group);
        ck_free_plan(d, nd);
        return 1;
    }
    hid_t dxpl = ck_make_dxpl(file);
    uint64_t *sums = prefopt_xcalloc((size_t)n, sizeof *sums, "checksums");
    uint64_t *stored = prefopt_xcalloc((size_t)n, sizeof *stored, "checksums");
    int64_t *nonfinite = prefopt_xcalloc((size_t)n + 1, sizeof *nonfinite, "checksums");
    size_t stage_cap = 0;
    float *stage = NULL;
    /* errors here come from the file and the item list, which every rank shares, so all ranks leave the loop
     * at the same dataset and no collective call is left unmatched */
    for (int j = 0; j < nd && !rc; j++) {
        const ck_item *first = &items[d[j].items[0]];
        if (H5Lexists(grp, d[j].ds, H5P_DEFAULT) <= 0) {
            prefopt_err_set(err, "%s: tensor '%s' missing", path, first->name);
            rc = 1;
            break;
        }
        hid_t ds = H5Dopen2(grp, d[j].ds, H5P_DEFAULT);
        hid_t fs = H5Dget_space(ds);
        hsize_t want[3], have[3] = {0, 0, 0};
        int r = ck_dset_dims(&d[j], want), hr = H5Sget_simple_extent_ndims(fs);
        if (hr >= 0 && hr <= 3)
            H5Sget_simple_extent_dims(fs, have, NULL);
        if (hr != r || memcmp(want, have, sizeof(hsize_t) * (size_t)r)) {
            char a[64], b[64];
            ck_shape_str(a, sizeof a, have, hr < 0 || hr > 3 ? 0 : hr);
            ck_shape_str(b, sizeof b, want, r);
            prefopt_err_set(err, "%s: tensor '%s' (dataset '%s/%s'): shape %s expected %s", path, first->name,
                            group, d[j].ds, a, b);
            rc = 1;
            H5Sclose(fs);
            H5Dclose(ds);
            break;
        }
        uint64_t *s = prefopt_xcalloc((size_t)d[j].nl, sizeof *s, "checksums");
        hsize_t nl = 0;
        hid_t a = H5Aexists(ds, "checksum") > 0 ? H5Aopen(ds, "checksum", H5P_DEFAULT) : -1;
        if (a >= 0) {
            hid_t as = H5Aget_space(a);
            nl = (hsize_t)H5Sget_simple_extent_npoints(as);
            H5Sclose(as);
            if (nl == (hsize_t)d[j].nl)
                H5Aread(a, H5T_NATIVE_UINT64, s);
            H5Aclose(a);
        }
        if (nl != (hsize_t)d[j].nl) {
            prefopt_err_set(err, "%s: tensor '%s' has no checksum attribute", path, first->name);
            rc = 1;
            free(s);
            H5Sclose(fs);
            H5Dclose(ds);
            break;
        }
        for (int l = 0; l < d[j].nl; l++)
            stored[d[j].items[l]] = s[l];
        free(s);
        int per = layers_per_round(&d[j]);
        for (int l0 = 0; l0 < d[j].nl; l0 += per) {
            int l1 = l0 + per < d[j].nl ? l0 + per : d[j].nl;
            H5Sselect_none(fs);
            size_t total = 0;
            for (int l = l0; l < l1; l++) {
                const ck_item *it = &items[d[j].items[l]];
                if (it->p.active && regroup(&it->p)) {
                    select_cols(fs, d[j].stacked ? l : -1, &it->p);
                    total += regroup_count(&it->p);
                } else if (it->p.active && ck_piece_count(&it->p)) {
                    ck_select_piece(fs, d[j].stacked ? l : -1, it->ndim, &it->p);
                    total += ck_piece_count(&it->p);
                }
            }
            if (total > stage_cap) {
                free(stage);
                stage_cap = total;
                stage = prefopt_xmalloc(sizeof(float) * stage_cap, "checkpoint staging buffer");
            }
            hsize_t mdim = total ? total : 1;
            hid_t ms = H5Screate_simple(1, &mdim, NULL);
            if (!total)
                H5Sselect_none(ms);
            if (H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, stage) < 0) {
                /* may differ between ranks: recorded, agreed on below */
                prefopt_err_set(err, "%s: reading tensor '%s' failed (truncated file?)", path, first->name);
                rc = 2;
            }
            H5Sclose(ms);
            size_t off = 0;
            for (int l = l0; l < l1; l++) { /* runs after a failed read too: the regrouping is collective */
                int i = d[j].items[l];
                ck_item *it = &items[i];
                if (it->p.active && regroup(&it->p)) {
                    regroup_exchange(&it->p, stage + off, 1);
                    off += regroup_count(&it->p);
                } else if (it->p.active && ck_piece_count(&it->p)) {
                    unpack(&it->p, stage + off);
                    off += ck_piece_count(&it->p);
                } else
                    continue;
                if (it->p.sums)
                    sums[i] = ck_checksum_piece_nf(&it->p, &nonfinite[i]);
            }
        }
        H5Sclose(fs);
        H5Dclose(ds);
        if (rc == 2) { /* keep going collectively; reported after the loop */
            rc = 0;
            ioerr = 1;
        }
    }
    int failed = rc || ioerr;
    if (sum_comm != MPI_COMM_NULL && sum_comm != MPI_COMM_SELF) {
        /* a read failure on one rank makes all fail before the checksum comparison */
        MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, sum_comm);
        if (!failed) {
            MPI_Allreduce(MPI_IN_PLACE, sums, n, MPI_UINT64_T, MPI_SUM, sum_comm);
            MPI_Allreduce(MPI_IN_PLACE, nonfinite, n, MPI_INT64_T, MPI_SUM, sum_comm);
        }
    }
    if (failed && !err->set)
        prefopt_err_set(err, "%s: reading failed on another rank", path);
    for (int i = 0; i < n && !failed; i++)
        if (sums[i] != stored[i]) {
            prefopt_err_set(err, "checkpoint %s: tensor '%s' is corrupt (checksum mismatch)", path, items[i].name);
            failed = 1;
        }
    /* intact but unusable: a model saved with NaN/Inf weights would give finite-but-wrong or null results */
    for (int i = 0; i < n && !failed; i++)
        if (nonfinite[i]) {
            prefopt_err_set(err, "%s: tensor '%s' has %lld non-finite values (NaN or Inf)", path, items[i].name,
                            (long long)nonfinite[i]);
            failed = 1;
        }
    free(nonfinite);
    free(stage);
    free(sums);
    free(stored);
    H5Pclose(dxpl);
    H5Gclose(grp);
    ck_free_plan(d, nd);
    return failed;
}
