/* Pre-tokenized HDF5 datasets: open and validate (collectively, one agreed message on failure) and collective
 * hyperslab reads of chosen examples. Per-example offsets, labels and reference log-probs are read on demand
 * (index.c); the reference log-prob writer is store_ref.c. The format is documented in dataset.h. */
#define _GNU_SOURCE
#include "prefopt/dataset.h"
#include "dataset_internal.h"
#include "prefopt/agree.h"

#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static int attr_exists(hid_t obj, const char *name) { return H5Aexists(obj, name) > 0; }

int prefopt_ds_read_attr_i64(hid_t obj, const char *path, const char *name, int64_t *v, prefopt_err *err)
{
    if (!attr_exists(obj, name)) {
        prefopt_err_set(err, "%s: attribute '%s' is missing", path, name);
        return 1;
    }
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = H5Aget_type(a), s = H5Aget_space(a);
    int ok = H5Tget_class(t) == H5T_INTEGER && H5Sget_simple_extent_npoints(s) == 1 &&
             H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    H5Sclose(s), H5Tclose(t), H5Aclose(a);
    if (!ok)
        prefopt_err_set(err, "%s: attribute '%s' must be one integer", path, name);
    return !ok;
}

/* Strings may be fixed-length (prefopt, h5dump-friendly) or variable-length (h5py's default for str). */
int prefopt_ds_read_attr_str(hid_t obj, const char *path, const char *name, char *buf, size_t len, prefopt_err *err)
{
    if (!attr_exists(obj, name)) {
        prefopt_err_set(err, "%s: attribute '%s' is missing", path, name);
        return 1;
    }
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = H5Aget_type(a);
    int ok = 0;
    if (H5Tget_class(t) == H5T_STRING) {
        if (H5Tis_variable_str(t) > 0) {
            hid_t mt = H5Tcopy(H5T_C_S1); /* the character set must match (h5py writes UTF-8) */
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(t));
            char *s = NULL;
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, len, "%s", s);
                H5free_memory(s);
                ok = 1;
            }
            H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(t);
            char *tmp = prefopt_xcalloc(n + 1, 1, "attribute");
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, n);
            H5Tset_cset(mt, H5Tget_cset(t));
            if (H5Aread(a, mt, tmp) >= 0) {
                snprintf(buf, len, "%s", tmp);
                ok = 1;
            }
            H5Tclose(mt);
            free(tmp);
        }
    }
    H5Tclose(t), H5Aclose(a);
    if (!ok)
        prefopt_err_set(err, "%s: attribute '%s' must be a string", path, name);
    return !ok;
}

static const char *type_desc(hid_t t, char *buf, size_t len)
{
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (c == H5T_INTEGER)
        snprintf(buf, len, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * sz);
    else if (c == H5T_FLOAT)
        snprintf(buf, len, "float%zu", 8 * sz);
    else if (c == H5T_STRING)
        snprintf(buf, len, "string");
    else
        snprintf(buf, len, "a non-numeric type (class %d)", (int)c);
    return buf;
}

/* Opens a 1-D dataset and checks its type: cls/size/sign (sign -1: either) and, when want_len >= 0, its length. */
static hid_t open_checked(hid_t file, const char *path, const char *name, H5T_class_t cls, size_t size, int sign,
                          int64_t want_len, int64_t *len, prefopt_err *err)
{
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0 || H5Oexists_by_name(file, name, H5P_DEFAULT) <= 0) {
        prefopt_err_set(err, "%s: dataset '%s' is missing", path, name);
        return -1;
    }
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) {
        prefopt_err_set(err, "%s: '%s' is not a dataset", path, name);
        return -1;
    }
    hid_t t = H5Dget_type(d), s = H5Dget_space(d);
    char want[32], got[64];
    snprintf(want, sizeof want, "%s%s%zu", cls == H5T_FLOAT ? "float" : (sign == 0 ? "uint" : "int"), "",
             8 * size);
    int ok = H5Tget_class(t) == cls && H5Tget_size(t) == size &&
             (cls != H5T_INTEGER || sign < 0 || (H5Tget_sign(t) == H5T_SGN_NONE) == (sign == 0));
    /* h5py stores numpy bool as a 1-byte enum {FALSE, TRUE}: as good as uint8 for labels */
    if (!ok && cls == H5T_INTEGER && size == 1 && H5Tget_class(t) == H5T_ENUM && H5Tget_size(t) == 1)
        ok = 1;
    if (!ok)
        prefopt_err_set(err, "%s: dataset '%s' has type %s, expected %s", path, name, type_desc(t, got, sizeof got),
                        want);
    int nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[8] = {0};
    if (ok && nd != 1) {
        prefopt_err_set(err, "%s: dataset '%s' has %d dimensions, expected 1", path, name, nd);
        ok = 0;
    }
    if (ok) {
        H5Sget_simple_extent_dims(s, dims, NULL);
        *len = (int64_t)dims[0];
        if (want_len >= 0 && *len != want_len) {
            prefopt_err_set(err, "%s: dataset '%s' has %" PRId64 " entries, expected %" PRId64, path, name, *len,
                            want_len);
            ok = 0;
        }
    }
    H5Sclose(s), H5Tclose(t);
    if (!ok) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

/* Token ids of example e (field f, positions first_pos...) against the vocabulary, as they are read. */
static int check_ids(const prefopt_dataset *ds, int f, const int32_t *ids, int64_t n, int64_t first_pos, int64_t e,
                     prefopt_err *err)
{
    const int32_t V = ds->info.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            prefopt_err_set(err, "%s: dataset '%s/tokens': token id %d at position %" PRId64 " (example %" PRId64
                                 ") is outside the vocabulary [0, %d)",
                            ds->path, prefopt_ds_field_name(ds->info.kind, f), ids[i], first_pos + i, e, V);
            return 1;
        }
    return 0;
}

/* A loss mask holds 0 or 1 per completion token. */
static int check_mask(const prefopt_dataset *ds, int f, const int32_t *m, int64_t n, int64_t first_pos, int64_t e,
                      prefopt_err *err)
{
    (void)f;
    for (int64_t i = 0; i < n; i++)
        if (m[i] != 0 && m[i] != 1) {
            prefopt_err_set(err, "%s: dataset 'completion/mask': value %d at position %" PRId64 " (example %" PRId64
                                 "), expected 0 or 1",
                            ds->path, m[i], first_pos + i, e);
            return 1;
        }
    return 0;
}

static void validate(prefopt_dataset *ds, const prefopt_ds_expect *ex, prefopt_err *err)
{
    const char *path = ds->path;
    prefopt_ds_info *in = &ds->info;
    int64_t v = 0;
    char kind[32];
    if (prefopt_ds_read_attr_i64(ds->file, path, "format_version", &v, err))
        return;
    if (v != PREFOPT_DS_FORMAT_VERSION) {
        prefopt_err_set(err, "%s: format_version %" PRId64 " is not supported (this prefopt reads version %d)", path,
                        v, PREFOPT_DS_FORMAT_VERSION);
        return;
    }
    if (prefopt_ds_read_attr_str(ds->file, path, "kind", kind, sizeof kind, err))
        return;
    if (prefopt_ds_kind_parse(kind, &in->kind)) {
        prefopt_err_set(err, "%s: attribute 'kind' is '%s', expected pairs, unpaired or sft", path, kind);
        return;
    }
    ds->nfields = prefopt_ds_kind_nfields(in->kind);
    if (prefopt_ds_read_attr_i64(ds->file, path, "num_examples", &in->num_examples, err))
        return;
    if (in->num_examples < 0) {
        prefopt_err_set(err, "%s: attribute 'num_examples' is negative", path);
        return;
    }
    const char *ints[4] = {"vocab_size", "bos_id", "eos_id", "pad_id"};
    int *dst[4] = {&in->vocab_size, &in->bos_id, &in->eos_id, &in->pad_id};
    for (int i = 0; i < 4; i++) {
        if (prefopt_ds_read_attr_i64(ds->file, path, ints[i], &v, err))
            return;
        if (v < (i ? -1 : 1) || v > INT32_MAX) {
            prefopt_err_set(err, "%s: attribute '%s' = %" PRId64 " is out of range", path, ints[i], v);
            return;
        }
        *dst[i] = (int)v;
    }
    if (prefopt_ds_read_attr_str(ds->file, path, "tokenizer", in->tokenizer, sizeof in->tokenizer, err))
        return;
    for (int i = 1; i < 4; i++)
        if (*dst[i] >= in->vocab_size) {
            prefopt_err_set(err, "%s: attribute '%s' = %d is not below vocab_size %d", path, ints[i], *dst[i],
                            in->vocab_size);
            return;
        }
    /* a model may have more embedding rows than its tokenizer has tokens (Qwen2/2.5 pad 151669 to 151936, Llama-3
     * reserves ids): the data fits when every id has a row; which tokenizer it is, is the identity check below */
    if (ex && ex->vocab_size > 0 && in->vocab_size > ex->vocab_size) {
        prefopt_err_set(err, "%s: vocabulary size %d is larger than the model's %d rows (packed with another "
                             "tokenizer?)",
                        path, in->vocab_size, ex->vocab_size);
        return;
    }
    if (ex && ex->tokenizer && strcmp(ex->tokenizer, in->tokenizer)) {
        prefopt_err_set(err, "%s: tokenizer '%s' does not match the model's '%s'", path, in->tokenizer,
                        ex->tokenizer);
        return;
    }
    const int64_t N = in->num_examples;
    for (int f = 0; f < ds->nfields; f++) {
        char name[64];
        const char *fn = prefopt_ds_field_name(in->kind, f);
        snprintf(name, sizeof name, "%s/tokens", fn);
        ds->tokens[f] = open_checked(ds->file, path, name, H5T_INTEGER, 4, 1, -1, &in->num_tokens[f], err);
        if (ds->tokens[f] < 0)
            return;
        snprintf(name, sizeof name, "%s/offsets", fn);
        int64_t len;
        hid_t d = open_checked(ds->file, path, name, H5T_INTEGER, 8, -1, N + 1, &len, err);
        if (d < 0)
            return;
        ds->offs[f] = d;
        if (prefopt_ds_check_offsets(ds, f, name, err))
            return;
    }
    if (H5Lexists(ds->file, "completion", H5P_DEFAULT) > 0 &&
        H5Lexists(ds->file, "completion/mask", H5P_DEFAULT) > 0) {
        if (in->kind != PREFOPT_DS_SFT) {
            prefopt_err_set(err, "%s: dataset 'completion/mask' in a '%s' dataset (only sft datasets carry loss "
                                 "masks)",
                            path, prefopt_ds_kind_name(in->kind));
            return;
        }
        int64_t len;
        ds->mask = open_checked(ds->file, path, "completion/mask", H5T_INTEGER, 1, -1, in->num_tokens[1], &len, err);
        if (ds->mask < 0)
            return;
        in->has_mask = 1;
    }
    if (in->kind == PREFOPT_DS_UNPAIRED) {
        int64_t len;
        ds->label = open_checked(ds->file, path, "label", H5T_INTEGER, 1, 0, N, &len, err);
        if (ds->label < 0 || prefopt_ds_check_labels(ds, err))
            return;
    }
    if (H5Lexists(ds->file, "ref", H5P_DEFAULT) > 0) {
        int nr = prefopt_ds_kind_nrefs(in->kind);
        for (int r = 0; r < nr; r++) {
            char name[64];
            int64_t len;
            snprintf(name, sizeof name, "ref/%s", prefopt_ds_ref_name(in->kind, r));
            ds->ref[r] = open_checked(ds->file, path, name, H5T_FLOAT, 8, -1, N, &len, err);
            if (ds->ref[r] < 0 || prefopt_ds_check_ref(ds, r, name, err))
                return;
        }
        hid_t g = H5Gopen2(ds->file, "ref", H5P_DEFAULT);
        if (g >= 0 && attr_exists(g, "model"))
            prefopt_ds_read_attr_str(g, path, "model", in->ref_model, sizeof in->ref_model, err);
        if (g >= 0)
            H5Gclose(g);
        in->has_ref = 1;
    }
    prefopt_ds_length_stats(ds, err);
}

static void close_handles(prefopt_dataset *ds)
{
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++) {
        if (ds->tokens[f] >= 0)
            H5Dclose(ds->tokens[f]);
        if (ds->offs[f] >= 0)
            H5Dclose(ds->offs[f]);
        ds->tokens[f] = ds->offs[f] = -1;
    }
    hid_t *one[3] = {&ds->mask, &ds->label, &ds->ref[0]};
    for (int i = 0; i < 3; i++)
        if (*one[i] >= 0)
            H5Dclose(*one[i]), *one[i] = -1;
    if (ds->ref[1] >= 0)
        H5Dclose(ds->ref[1]), ds->ref[1] = -1;
    if (ds->file >= 0)
        H5Fclose(ds->file), ds->file = -1;
}

/* Opens the datasets a validated file's reads use (set_comm, open_local); non-zero if one is missing. */
static int open_handles(prefopt_dataset *ds, prefopt_err *err)
{
    const prefopt_ds_info *in = &ds->info;
    char names[10][64];
    hid_t *dst[10];
    int n = 0;
    for (int f = 0; f < ds->nfields; f++) {
        snprintf(names[n], 64, "%s/tokens", prefopt_ds_field_name(in->kind, f)), dst[n++] = &ds->tokens[f];
        snprintf(names[n], 64, "%s/offsets", prefopt_ds_field_name(in->kind, f)), dst[n++] = &ds->offs[f];
    }
    if (in->has_mask)
        snprintf(names[n], 64, "completion/mask"), dst[n++] = &ds->mask;
    if (in->kind == PREFOPT_DS_UNPAIRED)
        snprintf(names[n], 64, "label"), dst[n++] = &ds->label;
    for (int r = 0; in->has_ref && r < prefopt_ds_kind_nrefs(in->kind); r++)
        snprintf(names[n], 64, "ref/%s", prefopt_ds_ref_name(in->kind, r)), dst[n++] = &ds->ref[r];
    for (int i = 0; i < n; i++)
        if ((*dst[i] = H5Dopen2(ds->file, names[i], H5P_DEFAULT)) < 0) {
            prefopt_err_set(err, "%s: cannot reopen dataset '%s'", ds->path, names[i]);
            return 1;
        }
    return 0;
}

void prefopt_dataset_close(prefopt_dataset *ds)
{
    if (!ds)
        return;
    close_handles(ds);
    if (ds->dxpl >= 0)
        H5Pclose(ds->dxpl);
    free(ds->path);
    free(ds);
}

static prefopt_dataset *new_dataset(const char *path, MPI_Comm comm)
{
    prefopt_dataset *ds = prefopt_xcalloc(1, sizeof *ds, "dataset");
    ds->path = strdup(path);
    ds->comm = comm;
    ds->file = ds->dxpl = ds->mask = ds->label = ds->ref[0] = ds->ref[1] = -1;
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        ds->tokens[f] = ds->offs[f] = -1;
    ds->size = 1;
    if (comm != MPI_COMM_NULL) {
        MPI_Comm_rank(comm, &ds->rank);
        MPI_Comm_size(comm, &ds->size);
    }
    return ds;
}

int prefopt_dataset_open(const char *path, MPI_Comm comm, const prefopt_ds_expect *expect, prefopt_dataset **out,
                         prefopt_err *err)
{
    *out = NULL;
    prefopt_dataset *ds = new_dataset(path, comm);
    prefopt_ds_quiet q = prefopt_ds_h5_quiet();
    /* Every metadata operation below is made by all ranks in the same order, so rank 0 may read metadata
     * for everyone (all_coll_metadata_ops): one reader instead of a storm of small reads at scale. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    ds->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (ds->file < 0)
        prefopt_err_set(err, "%s: cannot open as an HDF5 file (missing, unreadable or not HDF5)", path);
    else {
        ds->dxpl = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_dxpl_mpio(ds->dxpl, H5FD_MPIO_COLLECTIVE);
        validate(ds, expect, err);
    }
    /* The metadata steps fail identically on every rank, the streamed checks agree as they go; the scan below sees
     * different data per rank. */
    if (!prefopt_agree(comm, err) && !(expect && expect->skip_token_scan)) {
        prefopt_ds_scan_tokens(ds, err);
        prefopt_agree(comm, err);
    }
    prefopt_ds_h5_loud(q);
    if (err->set) {
        prefopt_dataset_close(ds);
        return 1;
    }
    *out = ds;
    return 0;
}

/* Opens a validated file again (with the access properties fapl) and the datasets its reads use: the one reopen
 * of set_comm (another communicator) and open_local (the prefetch thread's serial handle). */
static int reopen(prefopt_dataset *ds, hid_t fapl, prefopt_err *err)
{
    prefopt_ds_quiet q = prefopt_ds_h5_quiet();
    ds->file = H5Fopen(ds->path, H5F_ACC_RDONLY, fapl);
    if (ds->file < 0)
        prefopt_err_set(err, "%s: cannot reopen (removed while the run started?)", ds->path);
    else
        open_handles(ds, err);
    prefopt_ds_h5_loud(q);
    return err->set;
}

int prefopt_dataset_set_comm(prefopt_dataset *ds, MPI_Comm comm, prefopt_err *err)
{
    close_handles(ds); /* every dataset handle kept open must be reopened by open_handles */
    ds->comm = comm;
    MPI_Comm_rank(comm, &ds->rank);
    MPI_Comm_size(comm, &ds->size);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    reopen(ds, fapl, err);
    H5Pclose(fapl);
    return prefopt_agree(comm, err);
}

int prefopt_dataset_open_local(const prefopt_dataset *src, prefopt_dataset **out, prefopt_err *err)
{
    *out = NULL;
    prefopt_dataset *ds = new_dataset(src->path, MPI_COMM_NULL);
    ds->info = src->info;
    ds->nfields = src->nfields;
    /* the serial (sec2) driver: an HDF5 file object of its own beside the MPI-IO one, read without MPI */
    if (reopen(ds, H5P_DEFAULT, err)) {
        prefopt_dataset_close(ds);
        return 1;
    }
    *out = ds;
    return 0;
}

const prefopt_ds_info *prefopt_dataset_info(const prefopt_dataset *ds) { return &ds->info; }

int prefopt_dataset_lengths(prefopt_dataset *ds, const int64_t *idx, int64_t n, int64_t *len, prefopt_err *out_err)
{
    prefopt_err e = {0}, *err = &e;
    const int64_t N = ds->info.num_examples;
    for (int64_t j = 0; j < n && !err->set; j++)
        if (idx[j] < 0 || idx[j] >= N)
            prefopt_err_set(err, "%s: example %" PRId64 " requested, the file has %" PRId64, ds->path, idx[j], N);
    if (err->set)
        n = 0; /* still take part in the collective reads */
    int64_t *lo = prefopt_xmalloc((size_t)(n + 1) * sizeof *lo, "lengths");
    int64_t *hi = prefopt_xmalloc((size_t)(n + 1) * sizeof *hi, "lengths");
    prefopt_ds_hold(ds, 16 * n);
    prefopt_ds_quiet q = prefopt_ds_h5_quiet();
    for (int f = 0; f < ds->nfields; f++) {
        if (prefopt_ds_read_bounds(ds, f, idx, n, lo, hi))
            prefopt_err_set(err, "%s: cannot read dataset '%s/offsets'", ds->path,
                            prefopt_ds_field_name(ds->info.kind, f));
        for (int64_t j = 0; j < n; j++)
            len[j * ds->nfields + f] = hi[j] - lo[j];
    }
    prefopt_ds_h5_loud(q);
    prefopt_ds_hold(ds, -16 * n);
    free(lo), free(hi);
    if (prefopt_ds_agree(ds, err)) {
        prefopt_err_set(out_err, "%s", e.msg);
        return 1;
    }
    return 0;
}

int64_t prefopt_dataset_peak_bytes(const prefopt_dataset *ds) { return prefopt_ds_peak_bytes(ds); }

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void prefopt_dataset_describe(FILE *f, prefopt_dataset *ds)
{
    const prefopt_ds_info *in = &ds->info;
    const int p0 = ds->rank == 0;
    if (p0) {
        fprintf(f, "%s: prefopt dataset v%d, kind %s, %" PRId64 " examples\n", ds->path, PREFOPT_DS_FORMAT_VERSION,
                prefopt_ds_kind_name(in->kind), in->num_examples);
        fprintf(f, "  vocab_size %d, tokenizer %s, bos %d, eos %d, pad %d\n", in->vocab_size, in->tokenizer,
                in->bos_id, in->eos_id, in->pad_id);
    }
    /* the quantiles need every length: rank 0 reads them (8 bytes per example, once, in `prefopt inspect`) while
     * the others join the collective reads with nothing selected */
    const int64_t N = in->num_examples, CH = (int64_t)1 << 16;
    int64_t *len = prefopt_xmalloc((size_t)(p0 && N ? N : 1) * sizeof(int64_t), "lengths");
    int64_t *o = prefopt_xmalloc((size_t)(CH + 1) * sizeof(int64_t), "offsets chunk");
    for (int k = 0; k < ds->nfields; k++) {
        int bad = 0;
        for (int64_t a = 0; a < N; a += CH) {
            int64_t b = a + CH < N ? a + CH : N;
            hid_t fs = H5Dget_space(ds->offs[k]);
            hsize_t off = (hsize_t)a, cnt = (hsize_t)(b - a + 1);
            hid_t ms = H5Screate_simple(1, &cnt, NULL);
            if (p0)
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
            else
                H5Sselect_none(fs), H5Sselect_none(ms);
            bad |= H5Dread(ds->offs[k], H5T_NATIVE_INT64, ms, fs, ds->dxpl >= 0 ? ds->dxpl : H5P_DEFAULT, o) < 0;
            H5Sclose(ms), H5Sclose(fs);
            for (int64_t i = a; p0 && i < b; i++)
                len[i] = o[i - a + 1] - o[i - a];
        }
        if (!p0)
            continue;
        qsort(len, (size_t)N, sizeof(int64_t), cmp_i64);
        fprintf(f, "  %-10s %" PRId64 " tokens", prefopt_ds_field_name(in->kind, k), in->num_tokens[k]);
        if (N && !bad)
            fprintf(f, "; length min %" PRId64 ", p50 %" PRId64 ", p90 %" PRId64 ", max %" PRId64, len[0],
                    len[(N - 1) / 2], len[(N - 1) * 9 / 10], len[N - 1]);
        fprintf(f, "\n");
    }
    free(len), free(o);
    if (!p0)
        return;
    if (in->has_mask)
        fprintf(f, "  loss mask: completion/mask (only the tokens it marks are trained: --assistant-only-loss)\n");
    if (in->kind == PREFOPT_DS_UNPAIRED)
        fprintf(f, "  labels: %" PRId64 " desirable, %" PRId64 " undesirable\n", in->desirable,
                in->num_examples - in->desirable);
    if (in->has_ref)
        fprintf(f, "  reference log-probs: present (model %s)\n", in->ref_model[0] ? in->ref_model : "unnamed");
    else
        fprintf(f, "  reference log-probs: none\n");
}

int prefopt_ds_last_io_mode(const prefopt_dataset *ds) { return ds->last_io_mode; }

const char *prefopt_ds_path(const prefopt_dataset *ds) { return ds->path; }
MPI_Comm prefopt_ds_comm(const prefopt_dataset *ds) { return ds->comm; }

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

int prefopt_dataset_read(prefopt_dataset *ds, const int64_t *idx, int n, int32_t *tokens[PREFOPT_DS_MAX_FIELDS],
                         int64_t *start[PREFOPT_DS_MAX_FIELDS], prefopt_err *out_err)
{
    return prefopt_ds_read_examples(ds, idx, n, tokens, start, NULL, NULL, out_err);
}

int prefopt_ds_read_examples(prefopt_dataset *ds, const int64_t *idx, int n, int32_t *tokens[PREFOPT_DS_MAX_FIELDS],
                             int64_t *start[PREFOPT_DS_MAX_FIELDS], uint8_t *label, double *ref, prefopt_err *out_err)
{
    prefopt_err e = {0}, *err = &e; /* whatever the caller's err holds, this read agrees on its own outcome */
    const int64_t N = ds->info.num_examples;
    /* The file selection of a hyperslab union is in file order whatever order it was built in, so read in
     * ascending example order (offsets are monotonic) and then place each example where the caller wants it. */
    int64_t *ord = prefopt_xmalloc((size_t)(n ? n : 1) * 2 * sizeof(int64_t), "read order");
    for (int j = 0; j < n; j++) {
        if (idx[j] < 0 || idx[j] >= N)
            prefopt_err_set(err, "%s: example %" PRId64 " requested, the file has %" PRId64, ds->path, idx[j], N);
        ord[2 * j] = idx[j], ord[2 * j + 1] = j;
    }
    if (err->set)
        n = 0; /* still take part in the collective reads */
    qsort(ord, (size_t)n, 2 * sizeof(int64_t), cmp_pair);
    prefopt_ds_quiet q = prefopt_ds_h5_quiet();
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        tokens[f] = NULL, start[f] = NULL;
    /* this batch's offsets (lo, hi per example and field), read now for these examples only */
    int64_t *olo = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "offsets");
    int64_t *ohi = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "offsets");
    int64_t *slo = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "offsets");
    int64_t *shi = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "offsets");
    prefopt_ds_hold(ds, 32 * (int64_t)n);
    /* the fields, then an sft dataset's loss mask with the completion's selection (into tokens[nfields]) */
    const int nread = ds->nfields + ds->info.has_mask;
    for (int f = 0; f < nread; f++) {
        const int is_mask = f == ds->nfields, of = is_mask ? 1 : f;
        const hid_t dset = is_mask ? ds->mask : ds->tokens[f];
        if (!is_mask && prefopt_ds_read_bounds(ds, f, idx, n, olo, ohi))
            prefopt_err_set(err, "%s: cannot read dataset '%s/offsets'", ds->path,
                            prefopt_ds_field_name(ds->info.kind, f));
        /* the same bounds in ascending order */
        for (int j = 0; j < n; j++)
            slo[j] = olo[ord[2 * j + 1]], shi[j] = ohi[ord[2 * j + 1]];
        int64_t total = 0;
        start[f] = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "example starts");
        for (int j = 0; j < n; j++)
            total += ohi[j] - olo[j];
        int32_t *sorted = prefopt_xmalloc((size_t)(total ? total : 1) * sizeof(int32_t), "tokens");
        tokens[f] = prefopt_xmalloc((size_t)(total ? total : 1) * sizeof(int32_t), "tokens");
        hid_t fs = H5Dget_space(dset);
        H5Sselect_none(fs);
        for (int j = 0; j < n;) {
            /* merge runs of adjacent examples into one hyperslab */
            int64_t a = slo[j], b = shi[j];
            int k = j + 1;
            while (k < n && slo[k] == b)
                b = shi[k], k++;
            if (b > a) {
                hsize_t off = (hsize_t)a, cnt = (hsize_t)(b - a);
                H5Sselect_hyperslab(fs, H5S_SELECT_OR, &off, NULL, &cnt, NULL);
            }
            j = k;
        }
        hsize_t mlen = total ? (hsize_t)total : 1;
        hid_t ms = H5Screate_simple(1, &mlen, NULL);
        if (!total)
            H5Sselect_none(ms);
        if (H5Dread(dset, H5T_NATIVE_INT32, ms, fs, ds->dxpl >= 0 ? ds->dxpl : H5P_DEFAULT, sorted) < 0)
            prefopt_err_set(err, "%s: cannot read dataset '%s/%s'", ds->path, prefopt_ds_field_name(ds->info.kind, of),
                            is_mask ? "mask" : "tokens");
        H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
        if (ds->dxpl >= 0)
            H5Pget_mpio_actual_io_mode(ds->dxpl, &mode);
        ds->last_io_mode = (int)mode;
        H5Sclose(ms), H5Sclose(fs);
        /* sorted holds the examples in ascending order; lay them out in the caller's order */
        int64_t *at = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof(int64_t), "positions");
        int64_t p = 0;
        for (int j = 0; j < n; j++) {
            at[ord[2 * j + 1]] = p;
            p += shi[j] - slo[j];
        }
        int64_t w = 0;
        for (int j = 0; j < n; j++) {
            int64_t len = ohi[j] - olo[j];
            start[f][j] = w;
            memcpy(tokens[f] + w, sorted + at[j], (size_t)len * sizeof(int32_t));
            if (!err->set)
                (is_mask ? check_mask : check_ids)(ds, of, tokens[f] + w, len, olo[j], idx[j], err);
            w += len;
        }
        start[f][n] = w;
        free(at), free(sorted);
    }
    prefopt_ds_hold(ds, -32 * (int64_t)n);
    free(olo), free(ohi), free(slo), free(shi);
    if ((label || ref) && prefopt_ds_read_extra(ds, idx, n, label, ref))
        prefopt_err_set(err, "%s: cannot read the labels or reference log-probs", ds->path);
    prefopt_ds_h5_loud(q);
    free(ord);
    if (prefopt_ds_agree(ds, err)) {
        prefopt_err_set(out_err, "%s", e.msg);
        for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
            free(tokens[f]), free(start[f]), tokens[f] = NULL, start[f] = NULL;
        return 1;
    }
    return 0;
}
