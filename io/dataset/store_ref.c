/* The reference log-prob writer (prefopt_dataset_store_ref): values gathered on rank 0 and written into a copy of
 * the dataset that is renamed over it when complete. */
#define _GNU_SOURCE
#include "prefopt/dataset.h"
#include "dataset_internal.h"
#include "prefopt/agree.h"
#include "prefopt/files.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hid_t write_fixed_str_attr(hid_t obj, const char *name, const char *val)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(val) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, t, val);
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(s), H5Tclose(t);
    return rc;
}

/* Rank 0's part of prefopt_dataset_store_ref: the whole update on a copy (path.store-ref.tmp), published by
 * rename, so that the dataset is the old file or the new one whatever happens (kill -9, a full disk at any byte).
 * vals[r] holds N values in example order. Serial HDF5 on one rank: a failed write cannot send ranks down
 * different paths inside a collective close. */
static int store_ref_copy(const char *path, int64_t N, prefopt_ds_kind k, double *const vals[2], const char *model,
                          prefopt_err *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.store-ref.tmp", path);
    int64_t size = prefopt_file_size(path);
    double need = (double)size + 16.0 * (double)N * prefopt_ds_kind_nrefs(k) + 65536.0;
    char what[4300];
    snprintf(what, sizeof what, "%s: storing reference log-probs (into a copy, renamed over the dataset when complete)",
             path);
    if (prefopt_check_room(path, what, need, err) || prefopt_copy_file(path, tmp, err))
        return 1;
    hid_t file = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    int bad = file < 0;
    if (!bad && H5Lexists(file, "ref", H5P_DEFAULT) > 0)
        bad |= H5Ldelete(file, "ref", H5P_DEFAULT) < 0;
    hid_t g = bad ? -1 : H5Gcreate2(file, "ref", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    bad |= g < 0;
    hsize_t dim = (hsize_t)N;
    for (int r = 0; r < prefopt_ds_kind_nrefs(k) && !bad; r++) {
        hid_t fs = H5Screate_simple(1, &dim, NULL);
        hid_t d = H5Dcreate2(g, prefopt_ds_ref_name(k, r), H5T_IEEE_F64LE, fs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        bad |= d < 0 || H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, vals[r]) < 0;
        if (d >= 0)
            H5Dclose(d);
        H5Sclose(fs);
    }
    if (!bad && model)
        bad |= write_fixed_str_attr(g, "model", model) < 0;
    if (g >= 0)
        H5Gclose(g);
    if (file >= 0 && H5Fclose(file) < 0) {
        bad = 1;
        prefopt_set_skip_finalize(); /* HDF5 keeps the file it could not close (files.h) */
    }
    int fd = bad ? -1 : open(tmp, O_RDONLY);
    if (!bad)
        bad |= fd < 0 || fsync(fd);
    if (fd >= 0)
        close(fd);
    if (bad) {
        prefopt_err_set(err, "%s: writing the reference log-probs failed (disk full or over the file size limit?); "
                             "the dataset is unchanged", tmp);
        unlink(tmp);
        return 1;
    }
    if (getenv("PREFOPT_TEST_KILL_BEFORE_PUBLISH")) /* tests: a kill -9 with the copy complete, not yet renamed */
        raise(SIGKILL);
    if (rename(tmp, path)) {
        prefopt_err_set(err, "%s: rename to %s failed: %s; the dataset is unchanged", tmp, path, strerror(errno));
        unlink(tmp);
        return 1;
    }
    prefopt_fsync_dir_of(path);
    return 0;
}

int prefopt_dataset_store_ref(const char *path, MPI_Comm comm, int n, const int64_t *idx, const double *const vals[],
                              const char *model, prefopt_err *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    prefopt_ds_quiet q = prefopt_ds_h5_quiet();
    int64_t N = 0;
    prefopt_ds_kind k = PREFOPT_DS_PAIRS;
    if (rank == 0) {
        char kind[32] = "";
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file < 0)
            prefopt_err_set(err, "%s: cannot open to read its size and kind", path);
        else if (!prefopt_ds_read_attr_i64(file, path, "num_examples", &N, err) &&
                 !prefopt_ds_read_attr_str(file, path, "kind", kind, sizeof kind, err) &&
                 prefopt_ds_kind_parse(kind, &k))
            prefopt_err_set(err, "%s: attribute 'kind' is '%s', expected pairs, unpaired or sft", path, kind);
        if (file >= 0)
            H5Fclose(file);
    }
    /* the values go to rank 0, which writes them (16 bytes per example there, nothing on the others) */
    int *cnt = rank == 0 ? prefopt_xcalloc((size_t)size, sizeof(int), "counts") : NULL;
    int *dsp = rank == 0 ? prefopt_xcalloc((size_t)size, sizeof(int), "displacements") : NULL;
    MPI_Gather(&n, 1, MPI_INT, cnt, 1, MPI_INT, 0, comm);
    int64_t total = 0;
    for (int r = 0; rank == 0 && r < size; r++)
        dsp[r] = (int)total, total += cnt[r];
    if (rank == 0 && !err->set && total != N)
        prefopt_err_set(err, "%s: %lld reference log-probs given for %" PRId64 " examples", path, (long long)total, N);
    int64_t *all_idx = prefopt_xmalloc(sizeof(int64_t) * (size_t)(rank == 0 ? total + 1 : 1), "store-ref");
    double *all_v[2] = {NULL, NULL}, *ordered[2] = {NULL, NULL};
    MPI_Gatherv(idx, n, MPI_INT64_T, all_idx, cnt, dsp, MPI_INT64_T, 0, comm);
    int nrefs = 2; /* every rank sends both arrays whatever the kind (rank 0 alone knows it) */
    for (int r = 0; r < nrefs; r++) {
        all_v[r] = prefopt_xmalloc(sizeof(double) * (size_t)(rank == 0 ? total + 1 : 1), "store-ref");
        MPI_Gatherv(vals[r], n, MPI_DOUBLE, all_v[r], cnt, dsp, MPI_DOUBLE, 0, comm);
    }
    if (rank == 0 && !err->set) {
        uint8_t *seen = prefopt_xcalloc((size_t)N + 1, 1, "store-ref");
        for (int r = 0; r < nrefs; r++)
            ordered[r] = prefopt_xcalloc((size_t)N + 1, sizeof(double), "store-ref");
        for (int64_t j = 0; j < total && !err->set; j++) {
            int64_t e = all_idx[j];
            for (int r = 0; r < prefopt_ds_kind_nrefs(k) && e >= 0 && e < N && !err->set; r++)
                if (!isfinite(all_v[r][j]) || all_v[r][j] > 0)
                    prefopt_err_set(err, "%s: the reference log-prob %g of example %" PRId64 " is not finite and <= 0 "
                                         "(nothing was stored)", path, all_v[r][j], e);
            if (err->set)
                break;
            if (e < 0 || e >= N || seen[e])
                prefopt_err_set(err, "%s: reference log-prob for example %" PRId64 " (%s), the file has %" PRId64,
                                path, e, e >= 0 && e < N ? "given twice" : "out of range", N);
            else {
                seen[e] = 1;
                for (int r = 0; r < nrefs; r++)
                    ordered[r][e] = all_v[r][j];
            }
        }
        free(seen);
        if (!err->set)
            store_ref_copy(path, N, k, ordered, model, err);
    }
    for (int r = 0; r < nrefs; r++)
        free(all_v[r]), free(ordered[r]);
    free(all_idx), free(cnt), free(dsp);
    prefopt_ds_h5_loud(q);
    return prefopt_agree(comm, err);
}

int prefopt_ds_write_str_attr(hid_t obj, const char *name, const char *val)
{
    return write_fixed_str_attr(obj, name, val) < 0;
}
