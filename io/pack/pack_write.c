/* pack's output: one HDF5 dataset file (format in dataset.h) written through fixed-size buffers into chunked
 * extendible datasets, its root attributes at the end, and the rename into place only when complete (else the
 * temporary file is removed). Split from pack.c, which drives it once per kept example (pack_internal.h). */
#define _GNU_SOURCE
#include "pack_internal.h"
#include "prefopt/files.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { TOK_CHUNK = 1 << 18, OFF_CHUNK = 1 << 15 };

static int app_create(appender *a, hid_t loc, const char *name, hid_t filetype, hid_t memtype, size_t esize,
                      hsize_t chunk)
{
    hsize_t zero = 0, unlim = H5S_UNLIMITED;
    hid_t s = H5Screate_simple(1, &zero, &unlim), p = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(p, 1, &chunk);
    a->d = H5Dcreate2(loc, name, filetype, s, H5P_DEFAULT, p, H5P_DEFAULT);
    H5Pclose(p), H5Sclose(s);
    a->written = 0, a->nbuf = 0, a->cap = chunk, a->esize = esize, a->memtype = memtype;
    a->buf = prefopt_xmalloc(chunk * esize, "pack buffer");
    return a->d < 0;
}

static int app_flush(appender *a)
{
    if (!a->nbuf)
        return 0;
    hsize_t newlen = (hsize_t)a->written + a->nbuf, off = (hsize_t)a->written, cnt = a->nbuf;
    if (H5Dset_extent(a->d, &newlen) < 0)
        return 1;
    hid_t fs = H5Dget_space(a->d), ms = H5Screate_simple(1, &cnt, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
    herr_t rc = H5Dwrite(a->d, a->memtype, ms, fs, H5P_DEFAULT, a->buf);
    H5Sclose(ms), H5Sclose(fs);
    a->written += (int64_t)a->nbuf;
    a->nbuf = 0;
    return rc < 0;
}

static int app_put(appender *a, const void *x, size_t n)
{
    const char *p = x;
    while (n) {
        size_t k = a->cap - a->nbuf < n ? a->cap - a->nbuf : n;
        memcpy((char *)a->buf + a->nbuf * a->esize, p, k * a->esize);
        a->nbuf += k, p += k * a->esize, n -= k;
        if (a->nbuf == a->cap && app_flush(a))
            return 1;
    }
    return 0;
}

static void app_close(appender *a)
{
    if (a->d > 0)
        H5Dclose(a->d);
    free(a->buf);
    a->d = -1, a->buf = NULL;
}

int prefopt_pack_writer_open(writer *w, const char *path, prefopt_ds_kind kind, int mask, prefopt_err *err)
{
    memset(w, 0, sizeof *w);
    w->final = strdup(path);
    if (asprintf(&w->tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        prefopt_die("out of memory");
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        prefopt_err_set(err, "%s: cannot create the output file", w->tmp);
        return 1;
    }
    w->nfields = prefopt_ds_kind_nfields(kind);
    int bad = 0;
    for (int f = 0; f < w->nfields; f++) {
        hid_t g = H5Gcreate2(w->file, prefopt_ds_field_name(kind, f), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        bad |= g < 0;
        bad |= app_create(&w->tok[f], g, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 4, TOK_CHUNK);
        bad |= app_create(&w->off[f], g, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, 8, OFF_CHUNK);
        H5Gclose(g);
        int64_t zero = 0;
        bad |= app_put(&w->off[f], &zero, 1);
    }
    if (mask) { /* 0/1 per completion token, converted by HDF5 from the int32 buffer */
        w->has_mask = 1;
        bad |= app_create(&w->mask, w->file, "completion/mask", H5T_STD_U8LE, H5T_NATIVE_INT32, 4, TOK_CHUNK);
    }
    if (kind == PREFOPT_DS_UNPAIRED) {
        w->has_label = 1;
        bad |= app_create(&w->label, w->file, "label", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, OFF_CHUNK);
    }
    if (bad)
        prefopt_err_set(err, "%s: cannot create the datasets", w->tmp);
    return bad;
}

int prefopt_pack_writer_add(writer *w, ids_t *const fields[], uint8_t label)
{
    int bad = 0;
    for (int f = 0; f < w->nfields; f++) {
        bad |= app_put(&w->tok[f], fields[f]->v, fields[f]->n);
        w->total[f] += (int64_t)fields[f]->n;
        bad |= app_put(&w->off[f], &w->total[f], 1);
    }
    if (w->has_label)
        bad |= app_put(&w->label, &label, 1);
    if (w->has_mask)
        bad |= app_put(&w->mask, fields[2]->v, fields[2]->n);
    w->n++;
    return bad;
}

static int write_int_attr(hid_t obj, const char *name, hid_t type, int64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR), a = H5Acreate2(obj, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(s);
    return rc < 0;
}

/* ok: flush, write the attributes, close and rename; !ok: close and delete. */
int prefopt_pack_writer_finish(writer *w, int ok, prefopt_ds_kind kind, const prefopt_tokenizer *t, prefopt_err *err)
{
    if (!w->final)
        return 0;
    int bad = 0;
    if (ok && w->file >= 0) {
        for (int f = 0; f < w->nfields; f++)
            bad |= app_flush(&w->tok[f]) | app_flush(&w->off[f]);
        if (w->has_label)
            bad |= app_flush(&w->label);
        if (w->has_mask)
            bad |= app_flush(&w->mask);
        bad |= write_int_attr(w->file, "format_version", H5T_STD_I32LE, PREFOPT_DS_FORMAT_VERSION);
        bad |= prefopt_ds_write_str_attr(w->file, "kind", prefopt_ds_kind_name(kind));
        bad |= write_int_attr(w->file, "num_examples", H5T_STD_I64LE, w->n);
        bad |= write_int_attr(w->file, "vocab_size", H5T_STD_I32LE, prefopt_tokenizer_vocab_size(t));
        bad |= prefopt_ds_write_str_attr(w->file, "tokenizer", prefopt_tokenizer_identity(t));
        bad |= write_int_attr(w->file, "bos_id", H5T_STD_I32LE, prefopt_tokenizer_bos(t));
        bad |= write_int_attr(w->file, "eos_id", H5T_STD_I32LE, prefopt_tokenizer_eos(t));
        bad |= write_int_attr(w->file, "pad_id", H5T_STD_I32LE, prefopt_tokenizer_pad(t));
    }
    for (int f = 0; f < w->nfields; f++)
        app_close(&w->tok[f]), app_close(&w->off[f]);
    if (w->has_label)
        app_close(&w->label);
    if (w->has_mask)
        app_close(&w->mask);
    if (w->file >= 0 && H5Fclose(w->file) < 0) {
        bad = 1;
        prefopt_set_skip_finalize(); /* HDF5 keeps the file it could not close (files.h) */
    }
    if (ok && bad)
        prefopt_err_set(err, "%s: writing failed (disk full?)", w->tmp);
    if (ok && !bad && rename(w->tmp, w->final)) {
        prefopt_err_set(err, "%s: cannot rename to %s", w->tmp, w->final);
        bad = 1;
    }
    if (!ok || bad)
        unlink(w->tmp);
    free(w->tmp), free(w->final);
    w->tmp = w->final = NULL;
    return bad;
}
