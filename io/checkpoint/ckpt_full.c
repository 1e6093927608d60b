/* Whole tensors, one at a time, with no other rank taking part: the writers and readers of import and export,
 * which hold one complete tensor at a time instead of a block-cyclic piece (checkpoint.c does the collective
 * transfers). */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- whole tensors, one at a time (import, export) ------------------------------------------------------- */

static int spec_items(const prefopt_tensor_spec *specs, int n, ck_item **out)
{
    ck_item *it = prefopt_xcalloc((size_t)n + 1, sizeof *it, "items");
    for (int i = 0; i < n; i++) {
        snprintf(it[i].name, sizeof it[i].name, "%s", specs[i].name);
        it[i].ndim = specs[i].ndim;
        it[i].shape[0] = specs[i].shape[0];
        it[i].shape[1] = specs[i].shape[1];
    }
    *out = it;
    return n;
}

int ck_create_datasets(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *specs, int n,
                       prefopt_err *err)
{
    ck_item *items;
    spec_items(specs, n, &items);
    ck_dset *d;
    int nd, rc = 0;
    if (ck_plan(path, items, n, &d, &nd, err)) {
        free(items);
        return 1;
    }
    hid_t grp = ck_open_group(file, group, 1);
    for (int j = 0; j < nd; j++) {
        hid_t ds = ck_create_dset(grp, &d[j]);
        if (ds < 0) {
            prefopt_err_set(err, "%s: cannot create dataset '%s/%s'", path, group, d[j].ds);
            rc = 1;
            break;
        }
        H5Dclose(ds);
    }
    H5Gclose(grp);
    ck_free_plan(d, nd);
    free(items);
    return rc;
}

static hid_t open_full(hid_t file, const char *group, const prefopt_tensor_spec *spec, hid_t *fs, int *layer)
{
    char ds[128], full[256];
    *layer = ck_stacked_name(spec->name, ds, sizeof ds);
    snprintf(full, sizeof full, "%s/%s", group, ds);
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0 || H5Lexists(file, full, H5P_DEFAULT) <= 0)
        return -1;
    hid_t d = H5Dopen2(file, full, H5P_DEFAULT);
    *fs = H5Dget_space(d);
    return d;
}

int ck_write_full(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *spec, const float *data,
                  uint64_t *checksum, prefopt_err *err)
{
    hid_t fs;
    int layer;
    hid_t ds = open_full(file, group, spec, &fs, &layer);
    if (ds < 0) {
        prefopt_err_set(err, "%s: no dataset for tensor '%s'", path, spec->name);
        return 1;
    }
    ck_piece p;
    ck_piece_full(&p, spec->ndim, spec->shape, (float *)data, 1);
    H5Sselect_none(fs);
    ck_select_piece(fs, layer, spec->ndim, &p);
    hsize_t cnt = ck_piece_count(&p) ? ck_piece_count(&p) : 1;
    hid_t ms = H5Screate_simple(1, &cnt, NULL);
    if (!ck_piece_count(&p)) {
        H5Sselect_none(ms);
        H5Sselect_none(fs);
    }
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER); /* independent: the other ranks write other tensors meanwhile */
    herr_t r = H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, data);
    H5Pclose(dxpl);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(ds);
    if (r < 0) {
        prefopt_err_set(err, "%s: writing tensor '%s' failed", path, spec->name);
        return 1;
    }
    *checksum = ck_checksum_piece(&p);
    return 0;
}

int ck_write_checksums(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *specs, int n,
                       const uint64_t *sums, prefopt_err *err)
{
    ck_item *items;
    spec_items(specs, n, &items);
    ck_dset *d;
    int nd, rc = 0;
    if (ck_plan(path, items, n, &d, &nd, err)) {
        free(items);
        return 1;
    }
    hid_t grp = ck_open_group(file, group, 0);
    for (int j = 0; j < nd && !rc; j++) {
        hid_t ds = H5Dopen2(grp, d[j].ds, H5P_DEFAULT);
        uint64_t *s = prefopt_xmalloc(sizeof *s * (size_t)d[j].nl, "checksums");
        for (int l = 0; l < d[j].nl; l++)
            s[l] = sums[d[j].items[l]];
        if (ds < 0 || ck_write_checksum_attr(ds, s, d[j].nl)) {
            prefopt_err_set(err, "%s: writing the checksum of '%s/%s' failed", path, group, d[j].ds);
            rc = 1;
        }
        free(s);
        if (ds >= 0)
            H5Dclose(ds);
    }
    H5Gclose(grp);
    ck_free_plan(d, nd);
    free(items);
    return rc;
}

int ck_read_full(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *spec, float *data,
                 prefopt_err *err)
{
    ck_item it;
    memset(&it, 0, sizeof it);
    snprintf(it.name, sizeof it.name, "%s", spec->name);
    it.ndim = spec->ndim;
    it.shape[0] = spec->shape[0];
    it.shape[1] = spec->shape[1];
    ck_piece_full(&it.p, spec->ndim, spec->shape, data, 1);
    /* one logical tensor of a stacked dataset: read it as the only "layer" we ask for */
    hid_t fs;
    int layer;
    hid_t ds = open_full(file, group, spec, &fs, &layer);
    if (ds < 0) {
        prefopt_err_set(err, "%s: tensor '%s' missing", path, spec->name);
        return 1;
    }
    int r = H5Sget_simple_extent_ndims(fs);
    hsize_t have[3] = {0, 0, 0};
    H5Sget_simple_extent_dims(fs, have, NULL);
    int off = layer >= 0 ? 1 : 0;
    int ok = r == off + spec->ndim && (layer < 0 || (hsize_t)layer < have[0]) && have[off] == (hsize_t)spec->shape[0] &&
             (spec->ndim == 1 || have[off + 1] == (hsize_t)spec->shape[1]);
    if (!ok) {
        char a[64];
        ck_shape_str(a, sizeof a, have, r < 0 || r > 3 ? 0 : r);
        prefopt_err_set(err, "%s: tensor '%s': dataset shape %s does not hold [%lld%s%lld]", path, spec->name, a,
                        (long long)spec->shape[0], spec->ndim == 2 ? "," : "",
                        spec->ndim == 2 ? (long long)spec->shape[1] : 0LL);
        H5Sclose(fs);
        H5Dclose(ds);
        return 1;
    }
    uint64_t *sums = prefopt_xcalloc(layer >= 0 ? have[0] : 1, sizeof *sums, "checksums");
    hid_t a = H5Aexists(ds, "checksum") > 0 ? H5Aopen(ds, "checksum", H5P_DEFAULT) : -1;
    int have_sum = a >= 0 && H5Aread(a, H5T_NATIVE_UINT64, sums) >= 0;
    if (a >= 0)
        H5Aclose(a);
    H5Sselect_none(fs);
    ck_select_piece(fs, layer, spec->ndim, &it.p);
    hsize_t cnt = ck_piece_count(&it.p) ? ck_piece_count(&it.p) : 1;
    hid_t ms = H5Screate_simple(1, &cnt, NULL);
    if (!ck_piece_count(&it.p)) {
        H5Sselect_none(ms);
        H5Sselect_none(fs);
    }
    hid_t dxpl = ck_make_dxpl(file);
    herr_t rr = H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, data);
    H5Pclose(dxpl);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(ds);
    int rc = 0;
    if (rr < 0) {
        prefopt_err_set(err, "%s: reading tensor '%s' failed (truncated file?)", path, spec->name);
        rc = 1;
    } else if (!have_sum) {
        prefopt_err_set(err, "%s: tensor '%s' has no checksum attribute", path, spec->name);
        rc = 1;
    } else {
        int64_t nf = 0;
        if (ck_checksum_piece_nf(&it.p, &nf) != sums[layer >= 0 ? layer : 0]) {
            prefopt_err_set(err, "checkpoint %s: tensor '%s' is corrupt (checksum mismatch)", path, spec->name);
            rc = 1;
        } else if (nf) {
            prefopt_err_set(err, "%s: tensor '%s' has %lld non-finite values (NaN or Inf)", path, spec->name,
                            (long long)nf);
            rc = 1;
        }
    }
    free(sums);
    return rc;
}
