/* Private to the dataset files (dataset.c, index.c, store_ref.c, loader.c, pack.c). */
#ifndef PREFOPT_DATASET_INTERNAL_H
#define PREFOPT_DATASET_INTERNAL_H

#include "prefopt/dataset.h"

#include <hdf5.h>

/* An open dataset. Nothing per example is kept: offsets, labels and reference log-probs are read on demand for
 * the examples a batch needs (index.c), so a rank's memory is bounded by its batch, not by the file (issue 17). */
struct prefopt_dataset {
    char *path;
    MPI_Comm comm;  /* MPI_COMM_NULL: a local handle (prefopt_dataset_open_local): serial HDF5, no MPI at all */
    int rank, size;
    hid_t file, dxpl;
    hid_t tokens[PREFOPT_DS_MAX_FIELDS];
    hid_t offs[PREFOPT_DS_MAX_FIELDS];       /* F/offsets [N+1] */
    hid_t mask;                              /* sft completion/mask, -1 when absent */
    hid_t label;                             /* unpaired label [N], -1 otherwise */
    hid_t ref[2];                            /* ref/<name> [N] each when info.has_ref, else -1 */
    prefopt_ds_info info;
    int nfields;
    int last_io_mode;                        /* H5D_mpio_actual_io_mode_t of the last token read */
    int64_t held, peak;                      /* bytes of per-example data held now, and at most (test accessor) */
};

/* HDF5 prints its whole error stack on failure by default; we report one line of our own instead. */
typedef struct {
    H5E_auto2_t fn;
    void *data;
} prefopt_ds_quiet;
prefopt_ds_quiet prefopt_ds_h5_quiet(void);
void prefopt_ds_h5_loud(prefopt_ds_quiet q);

MPI_Comm prefopt_ds_comm(const prefopt_dataset *ds);
const char *prefopt_ds_path(const prefopt_dataset *ds);             /* the file, for messages */
/* Agreement over the dataset's communicator; a local handle keeps its own outcome. */
int prefopt_ds_agree(const prefopt_dataset *ds, prefopt_err *err);
/* H5Pget_mpio_actual_io_mode of the last token read (tests check the reads really are collective). */
int prefopt_ds_last_io_mode(const prefopt_dataset *ds);
/* A scalar fixed-length string attribute (h5dump shows it plainly; h5py reads bytes). Non-zero on failure. */
int prefopt_ds_write_str_attr(hid_t obj, const char *name, const char *val);
int prefopt_ds_read_attr_i64(hid_t obj, const char *path, const char *name, int64_t *v, prefopt_err *err);
int prefopt_ds_read_attr_str(hid_t obj, const char *path, const char *name, char *buf, size_t len, prefopt_err *err);

/* prefopt_dataset_read with, in the same collective, the labels ([n], unpaired) and reference log-probs
 * (ref[j*nrefs + r]) of the examples when label / ref are not NULL (the same NULLs on every rank). */
int prefopt_ds_read_examples(prefopt_dataset *ds, const int64_t *idx, int n, int32_t *tokens[PREFOPT_DS_MAX_FIELDS],
                             int64_t *start[PREFOPT_DS_MAX_FIELDS], uint8_t *label, double *ref, prefopt_err *err);

/* ---- index.c: per-example data on demand ---------------------------------------------------------------- */
/* Bytes of per-example data a dataset holds at most at any time (buffers of the on-demand reads and of the
 * streamed validation): bounded by the batch and a fixed chunk, not by the number of examples. */
int64_t prefopt_ds_peak_bytes(const prefopt_dataset *ds);
void prefopt_ds_hold(prefopt_dataset *ds, int64_t bytes); /* +bytes held (negative: released) */
/* Values at positions pos[0..n) (any order, repeats allowed) of the 1-D dataset d, read as memtype (esz bytes)
 * into out. Collective over the dataset's communicator (n may differ, 0 included); local on a local handle.
 * Non-zero if HDF5 fails (not agreed). */
int prefopt_ds_read_points(prefopt_dataset *ds, hid_t d, hid_t memtype, size_t esz, const int64_t *pos, int64_t n,
                           void *out);
/* Offsets of field f of the listed examples: example idx[j] is tokens [lo[j], hi[j]). As read_points. */
int prefopt_ds_read_bounds(prefopt_dataset *ds, int f, const int64_t *idx, int64_t n, int64_t *lo, int64_t *hi);
/* Labels ([n], unpaired) and reference log-probs (ref[j*nrefs + r], when has_ref) of the listed examples; either
 * may be NULL. As read_points (every rank of the communicator passes the same NULLs). */
int prefopt_ds_read_extra(prefopt_dataset *ds, const int64_t *idx, int64_t n, uint8_t *label, double *ref);
/* The open-time checks of the per-example datasets, streamed in bounded chunks and split over the ranks (each
 * rank a contiguous share of the examples, every rank making the same collective reads), with today's messages:
 * the first problem in file order wins (prefopt_agree takes the lowest rank's). Collective; agreed on return. */
int prefopt_ds_check_offsets(prefopt_dataset *ds, int f, const char *name, prefopt_err *err);
int prefopt_ds_check_labels(prefopt_dataset *ds, prefopt_err *err);
int prefopt_ds_check_ref(prefopt_dataset *ds, int r, const char *name, prefopt_err *err);
/* Length statistics (info.max_len, max_row, max_completion) over every example, streamed. Collective, agreed. */
int prefopt_ds_length_stats(prefopt_dataset *ds, prefopt_err *err);
/* Every token id against vocab_size, each rank a contiguous slice; the message names the example. Collective. */
void prefopt_ds_scan_tokens(prefopt_dataset *ds, prefopt_err *err);
/* Index of the example holding token position p of field f: a binary search over the file's offsets, one point
 * read per halving (collective: every rank passes the same f and p). -1 if a read fails. */
int64_t prefopt_ds_example_of(prefopt_dataset *ds, int f, int64_t p);

#endif
