/* libFuzzer harness: the HDF5 dataset validator and reader (io/dataset/dataset.c, io/dataset/loader.c, dataset.h).
 * Raw HDF5 bytes mostly exercise the HDF5 library; the interesting inputs are well-formed HDF5 files whose
 * contents break the format's rules. So the input is a recipe (structured fuzzing): the bytes choose the kind,
 * the root attributes (values and types), and per field whether tokens/offsets exist, their types, ranks and
 * lengths, the example lengths, corrupted offsets, token ids (some outside the vocabulary), labels and the ref
 * group. The harness writes that file with serial HDF5 and calls prefopt_dataset_open on MPI_COMM_SELF with a
 * vocabulary/tokenizer expectation also taken from the input; when the file is accepted it checks the reported
 * info and reads up to three global batches through a loader.
 * Input whose first byte is 0xFF: the rest is written verbatim as the .h5 file (raw mode; HDF5 itself parses it).
 * Checked: no crash or sanitizer report; failures fill a one-line message naming the file; an accepted file
 * agrees with its recipe (example count, token totals per field, vocabulary); no HDF5 file or object stays open
 * after an accepted or a refused file. */
#include "fuzz_common.h"
#include "dataset_internal.h"
#include "prefopt/dataset.h"

#include <math.h>

typedef struct {
    const unsigned char *p;
    size_t n;
} bytes;

static unsigned next(bytes *b)
{
    if (!b->n)
        return 0;
    b->n--;
    return *b->p++;
}

static void attr_int(hid_t loc, const char *name, hid_t type, int64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a), H5Sclose(s);
}

static void attr_double(hid_t loc, const char *name, double v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a), H5Sclose(s);
}

/* An integer attribute in the form the recipe says: int32 (the format's), int64, uint8, float64, a string, or
 * absent. Returns the integer value stored (-999 when not an integer). */
static int64_t attr_any(hid_t loc, const char *name, int64_t v, unsigned form)
{
    switch (form % 8) {
    case 0:
        return -999;
    case 1:
        attr_int(loc, name, H5T_STD_I64LE, v);
        return v;
    case 2:
        attr_int(loc, name, H5T_STD_U8LE, v & 0xff);
        return v & 0xff;
    case 3:
        attr_double(loc, name, (double)v + 0.5);
        return -999;
    case 4:
        prefopt_ds_write_str_attr(loc, name, "7");
        return -999;
    default:
        attr_int(loc, name, H5T_STD_I32LE, v);
        return v;
    }
}

/* A dataset of n elements (dims = n, or [n/2][2] when two_d) written from int64 values converted to type. */
static void dset(hid_t loc, const char *name, hid_t type, const int64_t *v, hsize_t n, int two_d)
{
    hsize_t dims[2] = {two_d ? n / 2 : n, 2};
    hid_t s = H5Screate_simple(two_d ? 2 : 1, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0 && (two_d ? dims[0] * 2 : n) > 0)
        H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    if (d >= 0)
        H5Dclose(d);
    H5Sclose(s);
}

static hid_t int_type(unsigned form, hid_t normal)
{
    switch (form % 8) {
    case 5:
        return H5T_STD_I16LE;
    case 6:
        return H5T_STD_U32LE;
    case 7:
        return H5T_IEEE_F32LE;
    default:
        return normal;
    }
}

enum { MAXN = 12, MAXLEN = 6 };

typedef struct {
    int kind, N, V, nfields;
    int64_t vattr; /* the vocab_size attribute as written */
    int64_t tokens[PREFOPT_DS_MAX_FIELDS];
    int bad_ref;   /* a reference log-prob that is no log-prob (NaN, +-Inf, > 0) was written (issue 22) */
} recipe;

static void write_recipe(const char *path, bytes *b, recipe *r)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0)
        abort();
    unsigned k = next(b);
    static const char *const kinds[5] = {"pairs", "unpaired", "sft", "pair", ""};
    r->kind = (int)(k % 5) < 3 ? (int)(k % 5) : 0;
    r->nfields = prefopt_ds_kind_nfields((prefopt_ds_kind)r->kind);
    r->N = (int)(next(b) % (MAXN + 1));
    r->V = 1 + (int)(next(b) % 40);
    unsigned fv = next(b);
    attr_any(f, "format_version", fv < 240 ? 1 : fv - 240, next(b) < 240 ? 7 : next(b));
    if ((k / 5) % 8 == 7)
        attr_int(f, "kind", H5T_STD_I32LE, 1);
    else if ((k / 5) % 8 != 6)
        prefopt_ds_write_str_attr(f, "kind", kinds[k % 5]);
    unsigned nx = next(b);
    attr_any(f, "num_examples", nx < 200 ? r->N : (int64_t)nx - 230, next(b) < 240 ? 1 : next(b));
    unsigned vx = next(b);
    r->vattr = attr_any(f, "vocab_size", vx < 220 ? r->V : (int64_t)vx - 240, next(b) < 240 ? 7 : next(b));
    const char *ids[3] = {"bos_id", "eos_id", "pad_id"};
    for (int i = 0; i < 3; i++) {
        unsigned x = next(b);
        attr_any(f, ids[i], x < 200 ? (int64_t)(x % (unsigned)(r->V + 1)) - 1 : (int64_t)x - 220 + r->V,
                 next(b) < 240 ? 7 : next(b));
    }
    unsigned tk = next(b);
    if (tk % 8 == 1)
        attr_int(f, "tokenizer", H5T_STD_I32LE, 3);
    else if (tk % 8 != 2)
        prefopt_ds_write_str_attr(f, "tokenizer", tk % 8 == 3 ? "sha256:00" : "byte");
    static const char *const fields[3][3] = {{"prompt", "chosen", "rejected"}, {"prompt", "completion", ""},
                                             {"prompt", "completion", ""}};
    int64_t off[MAXN + 2], tok[MAXN * MAXLEN + 8];
    for (int fi = 0; fi < r->nfields; fi++) {
        unsigned mode = next(b), tform = next(b), oform = next(b);
        hid_t g = H5Gcreate2(f, fields[r->kind][fi], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        off[0] = 0;
        for (int i = 0; i < r->N; i++)
            off[i + 1] = off[i] + (int64_t)(next(b) % (MAXLEN + 1));
        int64_t M = off[r->N];
        for (int64_t i = 0; i < M; i++) {
            unsigned t = next(b);
            tok[i] = t < 240 ? (int64_t)(t % (unsigned)r->V) : (int64_t)t - 245 + r->V; /* -5 .. V+10 around V */
            if (t >= 240 && t < 245)
                tok[i] = -(int64_t)(t - 239);
        }
        r->tokens[fi] = M;
        if (mode & 8) { /* corrupt one offset */
            unsigned at = next(b) % (unsigned)(r->N + 1), v = next(b);
            off[at] = (int64_t)v - 128;
        }
        int64_t olen = r->N + 1, tlen = M;
        if (mode & 16)
            olen = r->N; /* one entry short */
        if (mode & 32)
            tlen = M > 0 ? M - 1 : 0; /* the last offset points past the tokens */
        if (!(mode & 1))
            dset(g, "tokens", int_type(tform, H5T_STD_I32LE), tok, (hsize_t)tlen, (mode & 64) != 0);
        if (!(mode & 2))
            dset(g, "offsets", int_type(oform, H5T_STD_I64LE), off, (hsize_t)olen, (mode & 128) != 0);
        if (mode & 4) /* tokens as a group instead of a dataset */
            H5Gclose(H5Gcreate2(g, "tokens_group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5Gclose(g);
    }
    if (r->kind == PREFOPT_DS_UNPAIRED) {
        unsigned lm = next(b);
        int64_t lab[MAXN + 1];
        for (int i = 0; i < r->N; i++)
            lab[i] = next(b) % 9 == 8 ? 2 : next(b) & 1;
        if (lm % 4 != 1) {
            if (lm % 4 == 2) { /* h5py's bool: a 1-byte enum */
                hid_t e = H5Tenum_create(H5T_NATIVE_INT8);
                int8_t fa = 0, tr = 1;
                H5Tenum_insert(e, "FALSE", &fa);
                H5Tenum_insert(e, "TRUE", &tr);
                int8_t v8[MAXN + 1];
                for (int i = 0; i < r->N; i++)
                    v8[i] = (int8_t)(lab[i] & 1);
                hsize_t n = (hsize_t)r->N;
                hid_t s = H5Screate_simple(1, &n, NULL);
                hid_t d = H5Dcreate2(f, "label", e, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                if (n)
                    H5Dwrite(d, e, H5S_ALL, H5S_ALL, H5P_DEFAULT, v8);
                H5Dclose(d), H5Sclose(s), H5Tclose(e);
            } else
                dset(f, "label", lm % 4 == 3 ? H5T_STD_I8LE : H5T_STD_U8LE, lab, (hsize_t)(r->N - (lm & 4 ? 1 : 0)),
                     0);
        }
    }
    unsigned rm = next(b);
    if (rm % 4) {
        hid_t g = H5Gcreate2(f, "ref", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        int nr = prefopt_ds_kind_nrefs((prefopt_ds_kind)r->kind);
        for (int i = 0; i < nr; i++) {
            const char *nm = prefopt_ds_ref_name((prefopt_ds_kind)r->kind, i);
            /* mostly valid log-probs (finite, <= 0); with rm & 32, some that are not: NaN, +-Inf, > 0, -0.0 */
            static const double odd[8] = {NAN, INFINITY, -INFINITY, 5.0, 1e-300, -0.0, -1e308, 0.0};
            double v[MAXN + 1];
            int written = rm % 4 == 1 || i == 0, nw = r->N - (rm & 8 ? 1 : 0);
            for (int j = 0; j < r->N; j++) {
                unsigned x = next(b);
                v[j] = (rm & 32) && x >= 224 ? odd[x % 8] : -(double)x;
                double stored = rm & 4 ? (double)(float)v[j] : v[j]; /* as float32 holds it (1e-300 -> 0) */
                if (written && j < nw && !(isfinite(stored) && stored <= 0))
                    r->bad_ref = 1;
            }
            if (written) {
                hsize_t n = (hsize_t)nw;
                hid_t s = H5Screate_simple(1, &n, NULL);
                hid_t d = H5Dcreate2(g, nm, rm & 4 ? H5T_IEEE_F32LE : H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT,
                                     H5P_DEFAULT);
                if (d >= 0 && n > 0)
                    H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
                if (d >= 0)
                    H5Dclose(d);
                H5Sclose(s);
            }
        }
        if (rm & 16)
            prefopt_ds_write_str_attr(g, "model", "sha256:ref");
        H5Gclose(g);
    }
    H5Fclose(f);
}

static void exercise(prefopt_dataset *ds, bytes *b, const char *path)
{
    const prefopt_ds_info *in = prefopt_dataset_info(ds);
    int64_t sum[PREFOPT_DS_MAX_FIELDS] = {0};
    const int nf = prefopt_ds_kind_nfields(in->kind);
    int64_t N = in->num_examples, *idx = malloc(sizeof(int64_t) * (size_t)(N + 1));
    int64_t *len = malloc(sizeof(int64_t) * (size_t)(N + 1) * (size_t)nf);
    prefopt_err lerr = {0};
    for (int64_t i = 0; i < N; i++)
        idx[i] = i;
    if (prefopt_dataset_lengths(ds, idx, N, len, &lerr))
        abort();
    for (int f = 0; f < nf; f++)
        for (int64_t i = 0; i < N; i++) {
            int64_t l = len[i * nf + f];
            if (l < 0 || l > in->max_len[f])
                abort();
            sum[f] += l;
        }
    free(idx), free(len);
    for (int f = 0; f < prefopt_ds_kind_nfields(in->kind); f++)
        if (sum[f] != in->num_tokens[f]) {
            fprintf(stderr, "fuzz_dataset: field %d: lengths sum to %lld, %lld tokens\n", f, (long long)sum[f],
                    (long long)in->num_tokens[f]);
            abort();
        }
    if (in->num_examples == 0)
        return;
    prefopt_ds_loader_opts lo = {0};
    lo.global_batch = 1 + (int)(next(b) % (unsigned)in->num_examples);
    lo.micro_batch = 1 + (int)(next(b) % (unsigned)lo.global_batch);
    lo.seed = next(b);
    lo.shuffle = next(b) & 1;
    lo.bucket_window = (int)(next(b) % 3);
    lo.drop_last = next(b) & 1;
    lo.pad_multiple = 1 + (int)(next(b) % 8);
    lo.kl_units = in->kind == PREFOPT_DS_UNPAIRED && lo.micro_batch >= 2 && (next(b) & 1);
    prefopt_ds_loader *L = NULL;
    prefopt_err err = {0};
    int rc = prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err);
    fuzz_check_err(rc, &err);
    if (rc)
        return;
    for (int s = 0; s < 3; s++) {
        prefopt_ds_step st;
        rc = prefopt_ds_loader_next(L, &st, &err);
        fuzz_check_err(rc, &err);
        if (rc) {
            if (!strstr(err.msg, path)) {
                fprintf(stderr, "fuzz_dataset: batch error does not name the file: %s\n", err.msg);
                abort();
            }
            break;
        }
        for (int k = 0; k < st.nmicro; k++) {
            const prefopt_batch *bt = &st.micro[k].b;
            for (int64_t i = 0; i < (int64_t)bt->nrows * bt->T; i++)
                if (bt->tokens[i] < 0 || bt->tokens[i] >= in->vocab_size || bt->unit[i] >= bt->nunits) {
                    fprintf(stderr, "fuzz_dataset: batch token %d / unit %d out of range\n", bt->tokens[i],
                            bt->unit[i]);
                    abort();
                }
        }
        prefopt_ds_step_free(&st);
    }
    prefopt_ds_loader_free(L);
}

/* Whatever happened, no HDF5 file or object may stay open (a long job opens datasets again and again). */
static int no_open_handles(void)
{
    ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n > 0) {
        fprintf(stderr, "fuzz_dataset: %zd HDF5 files/objects left open\n", n);
        abort();
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the harness's own writes of malformed recipes fail quietly */
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const char *path = fuzz_tmp_path("ds.h5");
    bytes b = {data, size};
    recipe r = {0};
    int raw = size > 0 && data[0] == 0xFF;
    if (raw)
        fuzz_write_file(path, data + 1, size - 1);
    else
        write_recipe(path, &b, &r);
    unsigned e = next(&b);
    prefopt_ds_expect ex = {0, NULL, 0};
    ex.vocab_size = e % 4 == 1 ? r.V : e % 4 == 2 ? r.V + 1 : 0;
    ex.tokenizer = (e >> 2) % 3 == 1 ? "byte" : (e >> 2) % 3 == 2 ? "sha256:00" : NULL;
    ex.skip_token_scan = (e >> 4) & 1;
    prefopt_dataset *ds = NULL;
    prefopt_err err = {0};
    int rc = prefopt_dataset_open(path, MPI_COMM_SELF, &ex, &ds, &err);
    fuzz_check_err(rc, &err);
    if (rc) {
        if (!strstr(err.msg, path)) {
            fprintf(stderr, "fuzz_dataset: the message does not name the file: %s\n", err.msg);
            abort();
        }
        return no_open_handles();
    }
    const prefopt_ds_info *in = prefopt_dataset_info(ds);
    /* accepted reference log-probs are log-probs: a recipe with another value must have been refused */
    const int nr = prefopt_ds_kind_nrefs(in->kind);
    double *refv = malloc(sizeof(double) * (size_t)(in->num_examples + 1) * 2);
    int64_t *all = malloc(sizeof(int64_t) * (size_t)(in->num_examples + 1));
    for (int64_t i = 0; i < in->num_examples; i++)
        all[i] = i;
    if (in->has_ref && prefopt_ds_read_extra(ds, all, in->num_examples, NULL, refv))
        abort();
    free(all);
    for (int k = 0; in->has_ref && k < nr; k++)
        for (int64_t i = 0; i < in->num_examples; i++) {
            double x = refv[i * nr + k];
            if (!isfinite(x) || x > 0) {
                fprintf(stderr, "fuzz_dataset: accepted reference log-prob %g at example %lld\n", x, (long long)i);
                abort();
            }
        }
    free(refv);
    if (!raw && in->has_ref && r.bad_ref) {
        fprintf(stderr, "fuzz_dataset: a file with a non-log-prob reference value was accepted\n");
        abort();
    }
    if (!raw && (in->num_examples != r.N || (int)in->kind != r.kind || in->vocab_size != r.vattr)) {
        fprintf(stderr, "fuzz_dataset: accepted %lld examples of kind %d, vocab %d; the recipe had %d of %d, %lld\n",
                (long long)in->num_examples, (int)in->kind, in->vocab_size, r.N, r.kind, (long long)r.vattr);
        abort();
    }
    for (int f = 0; !raw && f < r.nfields; f++)
        if (in->num_tokens[f] != r.tokens[f]) {
            fprintf(stderr, "fuzz_dataset: field %d: accepted %lld tokens, the recipe wrote %lld\n", f,
                    (long long)in->num_tokens[f], (long long)r.tokens[f]);
            abort();
        }
    exercise(ds, &b, path);
    prefopt_dataset_close(ds);
    return no_open_handles();
}
