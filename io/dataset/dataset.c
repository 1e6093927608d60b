/* Pre-tokenized HDF5 datasets: open and validate (collectively, one agreed message on failure), collective
 * hyperslab reads of chosen examples, and the reference log-prob writer. The format is documented in dataset.h. */
#define _GNU_SOURCE
#include "prefopt/dataset.h"
#include "dataset_internal.h"
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

static const char *const kind_names[] = {"pairs", "unpaired", "sft"};
static const char *const field_names[3][PREFOPT_DS_MAX_FIELDS] = {
    {"prompt", "chosen", "rejected"}, {"prompt", "completion", NULL}, {"prompt", "completion", NULL}};
static const char *const ref_names[3][2] = {
    {"chosen_logps", "rejected_logps"}, {"completion_logps", NULL}, {"completion_logps", NULL}};

const char *prefopt_ds_kind_name(prefopt_ds_kind k) { return (unsigned)k < 3 ? kind_names[k] : "?"; }
int prefopt_ds_kind_nfields(prefopt_ds_kind k) { return k == PREFOPT_DS_PAIRS ? 3 : 2; }
const char *prefopt_ds_field_name(prefopt_ds_kind k, int f) { return field_names[k][f]; }
int prefopt_ds_kind_nrefs(prefopt_ds_kind k) { return k == PREFOPT_DS_PAIRS ? 2 : 1; }
const char *prefopt_ds_ref_name(prefopt_ds_kind k, int i) { return ref_names[k][i]; }

int prefopt_ds_kind_parse(const char *name, prefopt_ds_kind *k)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, kind_names[i])) {
            *k = (prefopt_ds_kind)i;
            return 0;
        }
    return 1;
}

/* HDF5 prints its whole error stack on failure by default; we report one line of our own instead. */
typedef struct {
    H5E_auto2_t fn;
    void *data;
} quiet_h5;
static quiet_h5 h5_quiet(void)
{
    quiet_h5 q;
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}
static void h5_loud(quiet_h5 q) { H5Eset_auto2(H5E_DEFAULT, q.fn, q.data); }

struct prefopt_dataset {
    char *path;
    MPI_Comm comm;
    int rank, size;
    hid_t file, dxpl;
    hid_t tokens[PREFOPT_DS_MAX_FIELDS];
    hid_t mask;                              /* sft completion/mask, -1 when absent */
    prefopt_ds_info info;
    int nfields;
    int64_t *offsets[PREFOPT_DS_MAX_FIELDS]; /* [N+1] each */
    uint8_t *label;                          /* [N], unpaired */
    double *ref[2];                          /* [N] each, when info.has_ref */
    int last_io_mode;                        /* H5D_mpio_actual_io_mode_t of the last token read */
};

static int attr_exists(hid_t obj, const char *name) { return H5Aexists(obj, name) > 0; }

static int read_attr_i64(hid_t obj, const char *path, const char *name, int64_t *v, prefopt_err *err)
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
static int read_attr_str(hid_t obj, const char *path, const char *name, char *buf, size_t len, prefopt_err *err)
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

/* Every rank reads the whole 1-D dataset (offsets, labels, refs: 8 bytes or less per example). */
static int read_all(prefopt_dataset *ds, hid_t d, hid_t memtype, void *buf, const char *name, prefopt_err *err)
{
    if (H5Dread(d, memtype, H5S_ALL, H5S_ALL, ds->dxpl, buf) < 0) {
        prefopt_err_set(err, "%s: cannot read dataset '%s'", ds->path, name);
        return 1;
    }
    return 0;
}

/* Index of the example holding token position p of field f (binary search in the offsets). */
static int64_t example_of(const prefopt_dataset *ds, int f, int64_t p)
{
    int64_t lo = 0, hi = ds->info.num_examples; /* offsets[lo] <= p < offsets[hi] */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (ds->offsets[f][mid] <= p)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static int check_ids(const prefopt_dataset *ds, int f, const int32_t *ids, int64_t n, int64_t first_pos,
                     prefopt_err *err)
{
    const int32_t V = ds->info.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            int64_t p = first_pos + i;
            prefopt_err_set(err, "%s: dataset '%s/tokens': token id %d at position %" PRId64 " (example %" PRId64
                                 ") is outside the vocabulary [0, %d)",
                            ds->path, field_names[ds->info.kind][f], ids[i], p, example_of(ds, f, p), V);
            return 1;
        }
    return 0;
}

/* A loss mask holds 0 or 1 per completion token. */
static int check_mask(const prefopt_dataset *ds, int f, const int32_t *m, int64_t n, int64_t first_pos,
                      prefopt_err *err)
{
    for (int64_t i = 0; i < n; i++)
        if (m[i] != 0 && m[i] != 1) {
            int64_t p = first_pos + i;
            prefopt_err_set(err, "%s: dataset 'completion/mask': value %d at position %" PRId64 " (example %" PRId64
                                 "), expected 0 or 1",
                            ds->path, m[i], p, example_of(ds, f, p));
            return 1;
        }
    return 0;
}

/* Each rank checks a contiguous slice of every token array, in collective reads of at most 4M ids. */
static void scan_tokens(prefopt_dataset *ds, prefopt_err *err)
{
    const int64_t CH = 1 << 22;
    int32_t *buf = prefopt_xmalloc((size_t)CH * sizeof(int32_t), "token scan");
    for (int f = 0; f < ds->nfields; f++) {
        int64_t M = ds->info.num_tokens[f];
        int64_t lo = M * ds->rank / ds->size, hi = M * (ds->rank + 1) / ds->size;
        int64_t maxshare = (M + ds->size - 1) / ds->size;
        int64_t iters = (maxshare + CH - 1) / CH;
        hid_t fs = H5Dget_space(ds->tokens[f]);
        for (int64_t it = 0; it < iters; it++) {
            int64_t a = lo + it * CH, b = a + CH < hi ? a + CH : hi;
            hsize_t cnt = a < b ? (hsize_t)(b - a) : 0, off = (hsize_t)a;
            hsize_t one = cnt ? cnt : 1;
            hid_t ms = H5Screate_simple(1, &one, NULL);
            if (cnt && !err->set)
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
            else
                H5Sselect_none(fs), H5Sselect_none(ms), cnt = 0;
            if (H5Dread(ds->tokens[f], H5T_NATIVE_INT32, ms, fs, ds->dxpl, buf) < 0)
                prefopt_err_set(err, "%s: cannot read dataset '%s/tokens'", ds->path, field_names[ds->info.kind][f]);
            else if (cnt)
                check_ids(ds, f, buf, (int64_t)cnt, a, err);
            H5Sclose(ms);
        }
        H5Sclose(fs);
    }
    free(buf);
}

static void validate(prefopt_dataset *ds, const prefopt_ds_expect *ex, prefopt_err *err)
{
    const char *path = ds->path;
    prefopt_ds_info *in = &ds->info;
    int64_t v = 0;
    char kind[32];
    if (read_attr_i64(ds->file, path, "format_version", &v, err))
        return;
    if (v != PREFOPT_DS_FORMAT_VERSION) {
        prefopt_err_set(err, "%s: format_version %" PRId64 " is not supported (this prefopt reads version %d)", path,
                        v, PREFOPT_DS_FORMAT_VERSION);
        return;
    }
    if (read_attr_str(ds->file, path, "kind", kind, sizeof kind, err))
        return;
    if (prefopt_ds_kind_parse(kind, &in->kind)) {
        prefopt_err_set(err, "%s: attribute 'kind' is '%s', expected pairs, unpaired or sft", path, kind);
        return;
    }
    ds->nfields = prefopt_ds_kind_nfields(in->kind);
    if (read_attr_i64(ds->file, path, "num_examples", &in->num_examples, err))
        return;
    if (in->num_examples < 0) {
        prefopt_err_set(err, "%s: attribute 'num_examples' is negative", path);
        return;
    }
    const char *ints[4] = {"vocab_size", "bos_id", "eos_id", "pad_id"};
    int *dst[4] = {&in->vocab_size, &in->bos_id, &in->eos_id, &in->pad_id};
    for (int i = 0; i < 4; i++) {
        if (read_attr_i64(ds->file, path, ints[i], &v, err))
            return;
        if (v < (i ? -1 : 1) || v > INT32_MAX) {
            prefopt_err_set(err, "%s: attribute '%s' = %" PRId64 " is out of range", path, ints[i], v);
            return;
        }
        *dst[i] = (int)v;
    }
    if (read_attr_str(ds->file, path, "tokenizer", in->tokenizer, sizeof in->tokenizer, err))
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
        const char *fn = field_names[in->kind][f];
        snprintf(name, sizeof name, "%s/tokens", fn);
        ds->tokens[f] = open_checked(ds->file, path, name, H5T_INTEGER, 4, 1, -1, &in->num_tokens[f], err);
        if (ds->tokens[f] < 0)
            return;
        snprintf(name, sizeof name, "%s/offsets", fn);
        int64_t len;
        hid_t d = open_checked(ds->file, path, name, H5T_INTEGER, 8, -1, N + 1, &len, err);
        if (d < 0)
            return;
        ds->offsets[f] = prefopt_xmalloc((size_t)(N + 1) * sizeof(int64_t), "offsets");
        int bad = read_all(ds, d, H5T_NATIVE_INT64, ds->offsets[f], name, err);
        H5Dclose(d);
        if (bad)
            return;
        const int64_t *o = ds->offsets[f];
        if (o[0] != 0) {
            prefopt_err_set(err, "%s: dataset '%s' starts at %" PRId64 ", expected 0", path, name, o[0]);
            return;
        }
        for (int64_t i = 0; i < N; i++)
            if (o[i + 1] < o[i]) {
                prefopt_err_set(err, "%s: dataset '%s' is not monotonic at example %" PRId64 " (%" PRId64
                                     " after %" PRId64 ")",
                                path, name, i, o[i + 1], o[i]);
                return;
            }
        if (o[N] != in->num_tokens[f]) {
            prefopt_err_set(err, "%s: dataset '%s' ends at %" PRId64 " but '%s/tokens' has %" PRId64 " entries",
                            path, name, o[N], fn, in->num_tokens[f]);
            return;
        }
    }
    if (H5Lexists(ds->file, "completion", H5P_DEFAULT) > 0 &&
        H5Lexists(ds->file, "completion/mask", H5P_DEFAULT) > 0) {
        if (in->kind != PREFOPT_DS_SFT) {
            prefopt_err_set(err, "%s: dataset 'completion/mask' in a '%s' dataset (only sft datasets carry loss "
                                 "masks)",
                            path, kind_names[in->kind]);
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
        hid_t d = open_checked(ds->file, path, "label", H5T_INTEGER, 1, 0, N, &len, err);
        if (d < 0)
            return;
        ds->label = prefopt_xmalloc((size_t)N + 1, "labels");
        /* read in the file's own 1-byte type: HDF5 converts no enum to an integer */
        hid_t ft = H5Dget_type(d), mt = H5Tget_native_type(ft, H5T_DIR_ASCEND);
        int bad = read_all(ds, d, mt, ds->label, "label", err);
        H5Tclose(mt), H5Tclose(ft);
        H5Dclose(d);
        if (bad)
            return;
        for (int64_t i = 0; i < N; i++)
            if (ds->label[i] > 1) {
                prefopt_err_set(err, "%s: dataset 'label': value %d at example %" PRId64 ", expected 0 or 1", path,
                                ds->label[i], i);
                return;
            }
    }
    if (H5Lexists(ds->file, "ref", H5P_DEFAULT) > 0) {
        int nr = prefopt_ds_kind_nrefs(in->kind);
        for (int r = 0; r < nr; r++) {
            char name[64];
            int64_t len;
            snprintf(name, sizeof name, "ref/%s", ref_names[in->kind][r]);
            hid_t d = open_checked(ds->file, path, name, H5T_FLOAT, 8, -1, N, &len, err);
            if (d < 0)
                return;
            ds->ref[r] = prefopt_xmalloc((size_t)N * sizeof(double) + 8, "ref log-probs");
            int bad = read_all(ds, d, H5T_NATIVE_DOUBLE, ds->ref[r], name, err);
            H5Dclose(d);
            if (bad)
                return;
            /* summed log-probs are finite and <= 0: anything else (an h5py edit, another tool's output) would
             * train on nonsense without a word */
            for (int64_t i = 0; i < N; i++)
                if (!isfinite(ds->ref[r][i]) || ds->ref[r][i] > 0) {
                    prefopt_err_set(err, "%s: dataset '%s': value %g at example %" PRId64 " is not a log-probability "
                                         "(finite and <= 0)", path, name, ds->ref[r][i], i);
                    return;
                }
        }
        hid_t g = H5Gopen2(ds->file, "ref", H5P_DEFAULT);
        if (g >= 0 && attr_exists(g, "model"))
            read_attr_str(g, path, "model", in->ref_model, sizeof in->ref_model, err);
        if (g >= 0)
            H5Gclose(g);
        in->has_ref = 1;
    }
}

void prefopt_dataset_close(prefopt_dataset *ds)
{
    if (!ds)
        return;
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++) {
        if (ds->tokens[f] >= 0)
            H5Dclose(ds->tokens[f]);
        free(ds->offsets[f]);
    }
    if (ds->mask >= 0)
        H5Dclose(ds->mask);
    if (ds->dxpl >= 0)
        H5Pclose(ds->dxpl);
    if (ds->file >= 0)
        H5Fclose(ds->file);
    free(ds->label), free(ds->ref[0]), free(ds->ref[1]), free(ds->path);
    free(ds);
}

int prefopt_dataset_open(const char *path, MPI_Comm comm, const prefopt_ds_expect *expect, prefopt_dataset **out,
                         prefopt_err *err)
{
    *out = NULL;
    prefopt_dataset *ds = prefopt_xcalloc(1, sizeof *ds, "dataset");
    ds->path = strdup(path);
    ds->comm = comm;
    ds->file = ds->dxpl = ds->mask = -1;
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        ds->tokens[f] = -1;
    MPI_Comm_rank(comm, &ds->rank);
    MPI_Comm_size(comm, &ds->size);
    quiet_h5 q = h5_quiet();
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
    /* The steps above fail on metadata every rank sees identically; the scan below sees different data per rank. */
    if (!prefopt_agree(comm, err) && !(expect && expect->skip_token_scan)) {
        scan_tokens(ds, err);
        prefopt_agree(comm, err);
    }
    h5_loud(q);
    if (err->set) {
        prefopt_dataset_close(ds);
        return 1;
    }
    *out = ds;
    return 0;
}

int prefopt_dataset_set_comm(prefopt_dataset *ds, MPI_Comm comm, prefopt_err *err)
{
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        if (ds->tokens[f] >= 0) {
            H5Dclose(ds->tokens[f]);
            ds->tokens[f] = -1;
        }
    int had_mask = ds->mask >= 0; /* every dataset handle kept open must be reopened below */
    if (had_mask)
        H5Dclose(ds->mask);
    ds->mask = -1;
    if (ds->file >= 0)
        H5Fclose(ds->file);
    ds->comm = comm;
    MPI_Comm_rank(comm, &ds->rank);
    MPI_Comm_size(comm, &ds->size);
    quiet_h5 q = h5_quiet();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    ds->file = H5Fopen(ds->path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (ds->file < 0)
        prefopt_err_set(err, "%s: cannot reopen (removed while the run started?)", ds->path);
    for (int f = 0; f < ds->nfields && ds->file >= 0; f++) {
        char name[64];
        snprintf(name, sizeof name, "%s/tokens", field_names[ds->info.kind][f]);
        ds->tokens[f] = H5Dopen2(ds->file, name, H5P_DEFAULT);
        if (ds->tokens[f] < 0)
            prefopt_err_set(err, "%s: cannot reopen dataset '%s'", ds->path, name);
    }
    if (had_mask && ds->file >= 0 && (ds->mask = H5Dopen2(ds->file, "completion/mask", H5P_DEFAULT)) < 0)
        prefopt_err_set(err, "%s: cannot reopen dataset 'completion/mask'", ds->path);
    h5_loud(q);
    return prefopt_agree(comm, err);
}

const prefopt_ds_info *prefopt_dataset_info(const prefopt_dataset *ds) { return &ds->info; }

int64_t prefopt_dataset_len(const prefopt_dataset *ds, int f, int64_t i)
{
    return ds->offsets[f][i + 1] - ds->offsets[f][i];
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void prefopt_dataset_describe(FILE *f, const prefopt_dataset *ds)
{
    const prefopt_ds_info *in = &ds->info;
    fprintf(f, "%s: prefopt dataset v%d, kind %s, %" PRId64 " examples\n", ds->path, PREFOPT_DS_FORMAT_VERSION,
            kind_names[in->kind], in->num_examples);
    fprintf(f, "  vocab_size %d, tokenizer %s, bos %d, eos %d, pad %d\n", in->vocab_size, in->tokenizer, in->bos_id,
            in->eos_id, in->pad_id);
    const int64_t N = in->num_examples;
    int64_t *len = prefopt_xmalloc((size_t)(N ? N : 1) * sizeof(int64_t), "lengths");
    for (int k = 0; k < ds->nfields; k++) {
        for (int64_t i = 0; i < N; i++)
            len[i] = ds->offsets[k][i + 1] - ds->offsets[k][i];
        qsort(len, (size_t)N, sizeof(int64_t), cmp_i64);
        fprintf(f, "  %-10s %" PRId64 " tokens", field_names[in->kind][k], in->num_tokens[k]);
        if (N)
            fprintf(f, "; length min %" PRId64 ", p50 %" PRId64 ", p90 %" PRId64 ", max %" PRId64, len[0],
                    len[(N - 1) / 2], len[(N - 1) * 9 / 10], len[N - 1]);
        fprintf(f, "\n");
    }
    free(len);
    if (in->has_mask)
        fprintf(f, "  loss mask: completion/mask (only the tokens it marks are trained: --assistant-only-loss)\n");
    if (in->kind == PREFOPT_DS_UNPAIRED) {
        int64_t pos = 0;
        for (int64_t i = 0; i < in->num_examples; i++)
            pos += ds->label[i];
        fprintf(f, "  labels: %" PRId64 " desirable, %" PRId64 " undesirable\n", pos, in->num_examples - pos);
    }
    if (in->has_ref)
        fprintf(f, "  reference log-probs: present (model %s)\n", in->ref_model[0] ? in->ref_model : "unnamed");
    else
        fprintf(f, "  reference log-probs: none\n");
}

int prefopt_ds_last_io_mode(const prefopt_dataset *ds) { return ds->last_io_mode; }

const char *prefopt_ds_path(const prefopt_dataset *ds) { return ds->path; }
MPI_Comm prefopt_ds_comm(const prefopt_dataset *ds) { return ds->comm; }
const uint8_t *prefopt_ds_labels(const prefopt_dataset *ds) { return ds->label; }
const double *prefopt_ds_ref(const prefopt_dataset *ds, int r) { return ds->info.has_ref ? ds->ref[r] : NULL; }

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

int prefopt_dataset_read(prefopt_dataset *ds, const int64_t *idx, int n, int32_t *tokens[PREFOPT_DS_MAX_FIELDS],
                         int64_t *start[PREFOPT_DS_MAX_FIELDS], prefopt_err *out_err)
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
    quiet_h5 q = h5_quiet();
    for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
        tokens[f] = NULL, start[f] = NULL;
    /* the fields, then an sft dataset's loss mask with the completion's selection (into tokens[nfields]) */
    const int nread = ds->nfields + ds->info.has_mask;
    for (int f = 0; f < nread; f++) {
        const int is_mask = f == ds->nfields, of = is_mask ? 1 : f;
        const hid_t dset = is_mask ? ds->mask : ds->tokens[f];
        const int64_t *o = ds->offsets[of];
        int64_t total = 0;
        start[f] = prefopt_xmalloc((size_t)(n + 1) * sizeof(int64_t), "example starts");
        for (int j = 0; j < n; j++)
            total += o[idx[j] + 1] - o[idx[j]];
        int32_t *sorted = prefopt_xmalloc((size_t)(total ? total : 1) * sizeof(int32_t), "tokens");
        tokens[f] = prefopt_xmalloc((size_t)(total ? total : 1) * sizeof(int32_t), "tokens");
        hid_t fs = H5Dget_space(dset);
        H5Sselect_none(fs);
        for (int j = 0; j < n;) {
            /* merge runs of adjacent examples into one hyperslab */
            int64_t a = o[ord[2 * j]], b = o[ord[2 * j] + 1];
            int k = j + 1;
            while (k < n && o[ord[2 * k]] == b)
                b = o[ord[2 * k] + 1], k++;
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
        if (H5Dread(dset, H5T_NATIVE_INT32, ms, fs, ds->dxpl, sorted) < 0)
            prefopt_err_set(err, "%s: cannot read dataset '%s/%s'", ds->path, field_names[ds->info.kind][of],
                            is_mask ? "mask" : "tokens");
        H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
        H5Pget_mpio_actual_io_mode(ds->dxpl, &mode);
        ds->last_io_mode = (int)mode;
        H5Sclose(ms), H5Sclose(fs);
        /* sorted holds the examples in ascending order; lay them out in the caller's order */
        int64_t *at = prefopt_xmalloc((size_t)(n ? n : 1) * sizeof(int64_t), "positions");
        int64_t p = 0;
        for (int j = 0; j < n; j++) {
            int64_t e = ord[2 * j];
            at[ord[2 * j + 1]] = p;
            p += o[e + 1] - o[e];
        }
        int64_t w = 0;
        for (int j = 0; j < n; j++) {
            int64_t len = o[idx[j] + 1] - o[idx[j]];
            start[f][j] = w;
            memcpy(tokens[f] + w, sorted + at[j], (size_t)len * sizeof(int32_t));
            if (!err->set)
                (is_mask ? check_mask : check_ids)(ds, of, tokens[f] + w, len, o[idx[j]], err);
            w += len;
        }
        start[f][n] = w;
        free(at), free(sorted);
    }
    h5_loud(q);
    free(ord);
    if (prefopt_agree(ds->comm, err)) {
        prefopt_err_set(out_err, "%s", e.msg);
        for (int f = 0; f < PREFOPT_DS_MAX_FIELDS; f++)
            free(tokens[f]), free(start[f]), tokens[f] = NULL, start[f] = NULL;
        return 1;
    }
    return 0;
}

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
        hid_t d = H5Dcreate2(g, ref_names[k][r], H5T_IEEE_F64LE, fs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
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
    quiet_h5 q = h5_quiet();
    int64_t N = 0;
    prefopt_ds_kind k = PREFOPT_DS_PAIRS;
    if (rank == 0) {
        char kind[32] = "";
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file < 0)
            prefopt_err_set(err, "%s: cannot open to read its size and kind", path);
        else if (!read_attr_i64(file, path, "num_examples", &N, err) &&
                 !read_attr_str(file, path, "kind", kind, sizeof kind, err) && prefopt_ds_kind_parse(kind, &k))
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
    h5_loud(q);
    return prefopt_agree(comm, err);
}

int prefopt_ds_write_str_attr(hid_t obj, const char *name, const char *val)
{
    return write_fixed_str_attr(obj, name, val) < 0;
}
