/* Per-example data on demand (issue 17): offsets, labels and reference log-probs are read for the examples a
 * batch needs (point selections, collective like the token reads), and the open-time checks over every example
 * are streamed in bounded chunks split over the ranks. Nothing of size N is held on any rank, so a 10M-example
 * dataset costs a rank its batch and a 64K-example chunk, not 8 bytes per example and field. */
#include "prefopt/dataset.h"
#include "dataset_internal.h"
#include "prefopt/agree.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Examples per streamed chunk at open: 64K x 8 bytes, the same whatever N is. */
#define CHUNK ((int64_t)1 << 16)
#define DXPL(ds) ((ds)->dxpl >= 0 ? (ds)->dxpl : H5P_DEFAULT)

void prefopt_ds_hold(prefopt_dataset *ds, int64_t bytes)
{
    ds->held += bytes;
    if (ds->held > ds->peak)
        ds->peak = ds->held;
}

int64_t prefopt_ds_peak_bytes(const prefopt_dataset *ds) { return ds->peak; }

typedef struct {
    int64_t p, j;
} pos_ix;

static int by_pos(const void *a, const void *b)
{
    const pos_ix *x = a, *y = b;
    return (x->p > y->p) - (x->p < y->p);
}

int prefopt_ds_read_points(prefopt_dataset *ds, hid_t d, hid_t memtype, size_t esz, const int64_t *pos, int64_t n,
                           void *out)
{
    /* ascending, without repeats: the file selection is in file order anyway, and HDF5 rejects repeated points */
    pos_ix *s = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof *s, "point read");
    hsize_t *u = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof *u, "point read");
    int64_t *slot = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof *slot, "point read");
    for (int64_t j = 0; j < n; j++)
        s[j] = (pos_ix){pos[j], j};
    qsort(s, (size_t)n, sizeof *s, by_pos);
    int64_t k = 0;
    for (int64_t j = 0; j < n; j++) {
        if (!k || (hsize_t)s[j].p != u[k - 1])
            u[k++] = (hsize_t)s[j].p;
        slot[s[j].j] = k - 1;
    }
    char *buf = prefopt_xmalloc((size_t)(k ? k : 1) * esz, "point read");
    const int64_t bytes = n * (int64_t)(sizeof *s + sizeof *u + sizeof *slot) + k * (int64_t)esz;
    prefopt_ds_hold(ds, bytes);
    hid_t fs = H5Dget_space(d);
    hsize_t mlen = k ? (hsize_t)k : 1;
    hid_t ms = H5Screate_simple(1, &mlen, NULL);
    int bad = 0;
    if (k)
        bad |= H5Sselect_elements(fs, H5S_SELECT_SET, (size_t)k, u) < 0;
    else
        H5Sselect_none(fs), H5Sselect_none(ms);
    /* every rank joins, whatever it selected; except from a dataset of no elements (a dataset of 0 examples),
     * which all ranks see alike, and whose storage HDF5 never allocated: a collective read of it fails */
    if (H5Sget_simple_extent_npoints(fs) > 0)
        bad |= H5Dread(d, memtype, ms, fs, DXPL(ds), buf) < 0;
    H5Sclose(ms), H5Sclose(fs);
    for (int64_t j = 0; j < n && !bad; j++)
        memcpy((char *)out + (size_t)j * esz, buf + (size_t)slot[j] * esz, esz);
    prefopt_ds_hold(ds, -bytes);
    free(buf), free(slot), free(u), free(s);
    return bad;
}

int prefopt_ds_read_bounds(prefopt_dataset *ds, int f, const int64_t *idx, int64_t n, int64_t *lo, int64_t *hi)
{
    int64_t *pos = prefopt_xmalloc((size_t)(2 * n + 1) * sizeof *pos, "offsets");
    int64_t *v = prefopt_xmalloc((size_t)(2 * n + 1) * sizeof *v, "offsets");
    prefopt_ds_hold(ds, 32 * n);
    for (int64_t j = 0; j < n; j++)
        pos[2 * j] = idx[j], pos[2 * j + 1] = idx[j] + 1;
    int bad = prefopt_ds_read_points(ds, ds->offs[f], H5T_NATIVE_INT64, sizeof(int64_t), pos, 2 * n, v);
    for (int64_t j = 0; j < n; j++)
        lo[j] = bad ? 0 : v[2 * j], hi[j] = bad ? 0 : v[2 * j + 1];
    prefopt_ds_hold(ds, -32 * n);
    free(pos), free(v);
    return bad;
}

/* The label dataset's own 1-byte type as memory type: HDF5 converts no enum (h5py's bool) to an integer. */
static hid_t label_memtype(hid_t d)
{
    hid_t ft = H5Dget_type(d), mt = H5Tget_native_type(ft, H5T_DIR_ASCEND);
    H5Tclose(ft);
    return mt;
}

int prefopt_ds_read_extra(prefopt_dataset *ds, const int64_t *idx, int64_t n, uint8_t *label, double *ref)
{
    int bad = 0;
    if (label && ds->label >= 0) {
        hid_t mt = label_memtype(ds->label);
        bad |= prefopt_ds_read_points(ds, ds->label, mt, 1, idx, n, label);
        H5Tclose(mt);
    }
    const int nr = prefopt_ds_kind_nrefs(ds->info.kind);
    if (ref && ds->info.has_ref) {
        double *v = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof *v, "ref log-probs");
        prefopt_ds_hold(ds, 8 * n);
        for (int r = 0; r < nr; r++) {
            bad |= prefopt_ds_read_points(ds, ds->ref[r], H5T_NATIVE_DOUBLE, sizeof(double), idx, n, v);
            for (int64_t j = 0; j < n; j++)
                ref[(size_t)j * nr + r] = v[j];
        }
        prefopt_ds_hold(ds, -8 * n);
        free(v);
    }
    return bad;
}

/* A contiguous range [a, a+cnt) of a 1-D dataset, or nothing (cnt 0): every rank calls it the same number of
 * times, since the read is collective. */
static int read_range(prefopt_dataset *ds, hid_t d, hid_t memtype, int64_t a, int64_t cnt, void *buf)
{
    hid_t fs = H5Dget_space(d);
    hsize_t off = (hsize_t)a, c = (hsize_t)cnt, one = cnt ? c : 1;
    hid_t ms = H5Screate_simple(1, &one, NULL);
    if (cnt)
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &c, NULL);
    else
        H5Sselect_none(fs), H5Sselect_none(ms);
    int bad = H5Dread(d, memtype, ms, fs, DXPL(ds), buf) < 0;
    H5Sclose(ms), H5Sclose(fs);
    return bad;
}

/* This rank's share [lo, hi) of n items, and the number of chunked reads every rank makes over its share. */
static int64_t share(const prefopt_dataset *ds, int64_t n, int64_t *lo, int64_t *hi)
{
    *lo = n * ds->rank / ds->size, *hi = n * (ds->rank + 1) / ds->size;
    int64_t most = (n + ds->size - 1) / ds->size;
    return (most + CHUNK - 1) / CHUNK;
}

int prefopt_ds_check_offsets(prefopt_dataset *ds, int f, const char *name, prefopt_err *err)
{
    const int64_t N = ds->info.num_examples, M = ds->info.num_tokens[f];
    const char *path = ds->path, *fn = prefopt_ds_field_name(ds->info.kind, f);
    int64_t lo, hi, iters = share(ds, N, &lo, &hi);
    if (N == 0) /* one entry, offsets[0] == offsets[N]: rank 0 reads it */
        lo = 0, hi = 0, iters = 1;
    int64_t *o = prefopt_xmalloc((size_t)(CHUNK + 1) * sizeof *o, "offsets chunk");
    prefopt_ds_hold(ds, 8 * (CHUNK + 1));
    for (int64_t it = 0; it < iters; it++) {
        /* examples [a, b): entries a..b, the last one shared with the next chunk (monotonic across the seam) */
        int64_t a = lo + it * CHUNK, b = a + CHUNK < hi ? a + CHUNK : hi;
        int64_t cnt = b > a ? b - a + 1 : (N == 0 && ds->rank == 0 ? 1 : 0);
        if (read_range(ds, ds->offs[f], H5T_NATIVE_INT64, a, err->set ? 0 : cnt, o)) {
            prefopt_err_set(err, "%s: cannot read dataset '%s'", path, name);
            continue;
        }
        if (err->set || !cnt)
            continue;
        if (a == 0 && o[0] != 0)
            prefopt_err_set(err, "%s: dataset '%s' starts at %" PRId64 ", expected 0", path, name, o[0]);
        for (int64_t i = 0; i + 1 < cnt && !err->set; i++)
            if (o[i + 1] < o[i])
                prefopt_err_set(err, "%s: dataset '%s' is not monotonic at example %" PRId64 " (%" PRId64
                                     " after %" PRId64 ")",
                                path, name, a + i, o[i + 1], o[i]);
        if (a + cnt - 1 == N && o[cnt - 1] != M)
            prefopt_err_set(err, "%s: dataset '%s' ends at %" PRId64 " but '%s/tokens' has %" PRId64 " entries",
                            path, name, o[cnt - 1], fn, M);
    }
    prefopt_ds_hold(ds, -8 * (CHUNK + 1));
    free(o);
    return prefopt_ds_agree(ds, err);
}

int prefopt_ds_check_labels(prefopt_dataset *ds, prefopt_err *err)
{
    const int64_t N = ds->info.num_examples;
    int64_t lo, hi, iters = share(ds, N, &lo, &hi), pos = 0;
    uint8_t *v = prefopt_xmalloc((size_t)CHUNK, "labels chunk");
    prefopt_ds_hold(ds, CHUNK);
    hid_t mt = label_memtype(ds->label);
    for (int64_t it = 0; it < iters; it++) {
        int64_t a = lo + it * CHUNK, b = a + CHUNK < hi ? a + CHUNK : hi, cnt = b > a && !err->set ? b - a : 0;
        if (read_range(ds, ds->label, mt, a, cnt, v)) {
            prefopt_err_set(err, "%s: cannot read dataset 'label'", ds->path);
            continue;
        }
        for (int64_t i = 0; i < cnt && !err->set; i++) {
            if (v[i] > 1)
                prefopt_err_set(err, "%s: dataset 'label': value %d at example %" PRId64 ", expected 0 or 1",
                                ds->path, v[i], a + i);
            pos += v[i];
        }
    }
    H5Tclose(mt);
    prefopt_ds_hold(ds, -CHUNK);
    free(v);
    if (prefopt_ds_agree(ds, err))
        return 1;
    if (ds->comm != MPI_COMM_NULL)
        MPI_Allreduce(MPI_IN_PLACE, &pos, 1, MPI_INT64_T, MPI_SUM, ds->comm);
    ds->info.desirable = pos;
    return 0;
}

int prefopt_ds_check_ref(prefopt_dataset *ds, int r, const char *name, prefopt_err *err)
{
    const int64_t N = ds->info.num_examples;
    int64_t lo, hi, iters = share(ds, N, &lo, &hi);
    double *v = prefopt_xmalloc((size_t)CHUNK * sizeof *v, "ref chunk");
    prefopt_ds_hold(ds, 8 * CHUNK);
    for (int64_t it = 0; it < iters; it++) {
        int64_t a = lo + it * CHUNK, b = a + CHUNK < hi ? a + CHUNK : hi, cnt = b > a && !err->set ? b - a : 0;
        if (read_range(ds, ds->ref[r], H5T_NATIVE_DOUBLE, a, cnt, v)) {
            prefopt_err_set(err, "%s: cannot read dataset '%s'", ds->path, name);
            continue;
        }
        /* summed log-probs are finite and <= 0: anything else (an h5py edit, another tool's output) would
         * train on nonsense without a word */
        for (int64_t i = 0; i < cnt && !err->set; i++)
            if (!isfinite(v[i]) || v[i] > 0)
                prefopt_err_set(err, "%s: dataset '%s': value %g at example %" PRId64 " is not a log-probability "
                                     "(finite and <= 0)", ds->path, name, v[i], a + i);
    }
    prefopt_ds_hold(ds, -8 * CHUNK);
    free(v);
    return prefopt_ds_agree(ds, err);
}

int prefopt_ds_length_stats(prefopt_dataset *ds, prefopt_err *err)
{
    const int64_t N = ds->info.num_examples;
    const int nf = ds->nfields;
    int64_t lo, hi, iters = share(ds, N, &lo, &hi);
    int64_t *o = prefopt_xmalloc((size_t)nf * (CHUNK + 1) * sizeof *o, "offsets chunk");
    prefopt_ds_hold(ds, 8 * nf * (CHUNK + 1));
    int64_t mx[PREFOPT_DS_MAX_FIELDS + 1] = {0}; /* per field, then the row */
    for (int64_t it = 0; it < iters; it++) {
        int64_t a = lo + it * CHUNK, b = a + CHUNK < hi ? a + CHUNK : hi, cnt = b > a && !err->set ? b - a + 1 : 0;
        for (int f = 0; f < nf; f++)
            if (read_range(ds, ds->offs[f], H5T_NATIVE_INT64, a, cnt, o + (size_t)f * (CHUNK + 1)))
                prefopt_err_set(err, "%s: cannot read dataset '%s/offsets'", ds->path,
                                prefopt_ds_field_name(ds->info.kind, f));
        for (int64_t i = 0; i + 1 < cnt && !err->set; i++) {
            int64_t row = 0;
            for (int f = 0; f < nf; f++) {
                const int64_t *of = o + (size_t)f * (CHUNK + 1), len = of[i + 1] - of[i];
                row += len;
                mx[f] = len > mx[f] ? len : mx[f];
            }
            mx[PREFOPT_DS_MAX_FIELDS] = row > mx[PREFOPT_DS_MAX_FIELDS] ? row : mx[PREFOPT_DS_MAX_FIELDS];
        }
    }
    prefopt_ds_hold(ds, -8 * nf * (CHUNK + 1));
    free(o);
    if (prefopt_ds_agree(ds, err))
        return 1;
    if (ds->comm != MPI_COMM_NULL)
        MPI_Allreduce(MPI_IN_PLACE, mx, PREFOPT_DS_MAX_FIELDS + 1, MPI_INT64_T, MPI_MAX, ds->comm);
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        ds->info.max_len[f] = mx[f];
    ds->info.max_row = mx[PREFOPT_DS_MAX_FIELDS];
    return 0;
}

int64_t prefopt_ds_example_of(prefopt_dataset *ds, int f, int64_t p)
{
    int64_t lo = 0, hi = ds->info.num_examples; /* offsets[lo] <= p < offsets[hi] */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2, v = 0;
        if (prefopt_ds_read_points(ds, ds->offs[f], H5T_NATIVE_INT64, sizeof v, &mid, 1, &v))
            return -1;
        if (v <= p)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

void prefopt_ds_scan_tokens(prefopt_dataset *ds, prefopt_err *err)
{
    /* Each rank checks a contiguous slice of every token array, in collective reads of at most 4M ids; the first
     * bad id (of the lowest rank that has one, as prefopt_agree would choose) is then located in the offsets by
     * all ranks together, so the message names the example without any rank holding the offsets. */
    const int64_t CH = 1 << 22;
    const int32_t V = ds->info.vocab_size;
    int32_t *buf = prefopt_xmalloc((size_t)CH * sizeof(int32_t), "token scan");
    int64_t bad[3] = {-1, 0, 0}; /* field, position, id */
    for (int f = 0; f < ds->nfields; f++) {
        int64_t M = ds->info.num_tokens[f];
        int64_t lo = M * ds->rank / ds->size, hi = M * (ds->rank + 1) / ds->size;
        int64_t maxshare = (M + ds->size - 1) / ds->size;
        int64_t iters = (maxshare + CH - 1) / CH;
        for (int64_t it = 0; it < iters; it++) {
            int64_t a = lo + it * CH, b = a + CH < hi ? a + CH : hi;
            int64_t cnt = a < b && !err->set && bad[0] < 0 ? b - a : 0;
            if (read_range(ds, ds->tokens[f], H5T_NATIVE_INT32, a, cnt, buf))
                prefopt_err_set(err, "%s: cannot read dataset '%s/tokens'", ds->path,
                                prefopt_ds_field_name(ds->info.kind, f));
            for (int64_t i = 0; i < cnt && !err->set; i++)
                if (buf[i] < 0 || buf[i] >= V) {
                    bad[0] = f, bad[1] = a + i, bad[2] = buf[i];
                    break;
                }
        }
    }
    free(buf);
    if (ds->comm == MPI_COMM_NULL && bad[0] < 0)
        return;
    int mine = err->set || bad[0] >= 0 ? ds->rank : ds->size, first = mine;
    if (ds->comm != MPI_COMM_NULL)
        MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, ds->comm);
    if (first == ds->size)
        return;
    int64_t b[4] = {err->set, bad[0], bad[1], bad[2]};
    if (ds->comm != MPI_COMM_NULL)
        MPI_Bcast(b, 4, MPI_INT64_T, first, ds->comm);
    if (b[0]) /* a read failed there: the caller's agreement carries its message */
        return;
    int f = (int)b[1];
    int64_t e = prefopt_ds_example_of(ds, f, b[2]);
    prefopt_err_clear(err);
    prefopt_err_set(err, "%s: dataset '%s/tokens': token id %d at position %" PRId64 " (example %" PRId64
                         ") is outside the vocabulary [0, %d)",
                    ds->path, prefopt_ds_field_name(ds->info.kind, f), (int)b[3], b[2], e, V);
}
