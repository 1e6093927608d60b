/* prefopt internal: the HDF5 layer shared by model files, checkpoints, import and export (ckpt_piece.c for
 * geometry and checksums, checkpoint.c for the collective transfers, ckpt_full.c for whole tensors, ckpt_file.c
 * for files and attributes; ckpt_model.c, ckpt_dir.c and ckpt_train.c build model files, checkpoint directories
 * and training checkpoints on it).
 *
 * A logical tensor "prefix.<L>.rest" (L a decimal layer index) is stored as layer L of the stacked dataset
 * "<group>/prefix.rest" of shape [nlayers][out][in] (or [nlayers][n] for vectors); any other name is stored as
 * its own dataset of its logical shape. Each dataset has the attribute "checksum" (uint64[nlayers] or uint64[1]):
 * per logical tensor, sum over elements of mix(row-major index, float bits) mod 2^64 -- order-independent, so
 * ranks add up their block-cyclic pieces with one MPI_Allreduce, and a change of any single element always
 * changes it (mix is a bijection of the bits for a fixed index). */
#ifndef PREFOPT_CKPT_IO_H
#define PREFOPT_CKPT_IO_H

#include "prefopt/checkpoint.h"

#include <hdf5.h>

/* One rank's block-cyclic piece of a logical tensor, in dmat.h's terms: the tensor [out][in] is the
 * column-major m = in by n = out matrix (vectors: m = 1). */
typedef struct {
    int m, n, mb, nb;
    int nprow, npcol, myrow, mycol; /* a rep_rows vector uses nprow = 1, myrow = 0 */
    int lld;
    float *data;                    /* lld x nloc column-major */
    int active;                     /* this rank transfers this piece */
    int sums;                       /* this rank holds the primary copy: it writes it and its elements count
                                     * toward the checksum (0 on process rows > 0 for replicated vectors) */
    MPI_Comm col;                   /* the ranks of my process column (nprow > 1): pieces are regrouped into
                                     * whole columns over it so that each rank transfers long contiguous runs */
} ck_piece;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    ck_piece p;
} ck_item;

/* Local sizes of a piece (ScaLAPACK's numroc), local -> global index along one dimension, elements held. */
static inline int ck_numroc(int n, int nb, int p, int np)
{
    int nblocks = n / nb, c = (nblocks / np) * nb, extra = nblocks % np;
    if (p < extra)
        c += nb;
    else if (p == extra)
        c += n % nb;
    return c;
}

static inline int ck_l2g(int l, int nb, int p, int np) { return (l / nb) * np * nb + p * nb + l % nb; }

static inline int ck_piece_mloc(const ck_piece *p) { return ck_numroc(p->m, p->mb, p->myrow, p->nprow); }
static inline int ck_piece_nloc(const ck_piece *p) { return ck_numroc(p->n, p->nb, p->mycol, p->npcol); }

static inline size_t ck_piece_count(const ck_piece *p) { return (size_t)ck_piece_mloc(p) * (size_t)ck_piece_nloc(p); }

/* ORs the piece's elements, at layer (or no layer dimension when layer < 0), into a file selection. */
void ck_select_piece(hid_t space, int layer, int ndim, const ck_piece *p);

/* The datasets a list of items maps to (stacked per layer where names allow), for the writers and readers. */
typedef struct {
    char ds[128];
    int nl;        /* layers (1 when not stacked) */
    int stacked;
    int ndim;
    int64_t shape[2];
    int *items;    /* [nl] item index per layer, -1 if absent */
} ck_dset;

int ck_plan(const char *path, ck_item *items, int n, ck_dset **out, int *nds, prefopt_err *err);
void ck_free_plan(ck_dset *d, int k);
int ck_dset_dims(const ck_dset *d, hsize_t dims[3]);
hid_t ck_open_group(hid_t file, const char *group, int create);
hid_t ck_create_dset(hid_t grp, const ck_dset *d);
int ck_write_checksum_attr(hid_t ds, const uint64_t *sums, int nl);
void ck_shape_str(char *buf, size_t len, const hsize_t *dims, int r);

/* A whole tensor on one rank (nprow = npcol = 1). */
void ck_piece_full(ck_piece *p, int ndim, const int64_t shape[2], float *data, int active);
/* A dmat's piece; active/sums for a rep_rows vector only on process row 0. */
void ck_piece_dmat(ck_piece *p, int ndim, const int64_t shape[2], const prefopt_dmat *d);

/* Benchmarks only (perf/bench_ckpt --no-stack): 0 stores every tensor as its own dataset. Files written so do
 * not load with stacking on. */
void ck_set_stacking(int on);
/* Seconds spent so far in ck_write_items: [0] packing + checksums, [1] H5Dwrite, [2] dataset creation. */
void ck_get_timers(double t[3]);
/* Benchmarks: 1 makes the collective transfers do independent MPI-IO underneath (H5FD_MPIO_INDIVIDUAL_IO). */
void ck_set_individual_io(int on);

/* Dataset name and layer of a logical tensor ("h.3.attn.q_proj.weight" -> "h.attn.q_proj.weight", 3; -1 if none). */
int ck_stacked_name(const char *name, char *ds, size_t len);

/* File access: comm != MPI_COMM_NULL opens with the MPI-IO driver (collective), else with the serial driver.
 * HDF5's own error printing is silenced; messages come back in err. */
int ck_create(const char *path, MPI_Comm comm, hid_t *file, prefopt_err *err);
/* ck_create's MPI-IO hints on a parallel file: cb_nodes = ck_cb_nodes(comm) and romio_cb_write = enable (bounded
 * aggregators, ckpt_file.c). ck_cb_nodes: min(the number of shared-memory nodes among comm's ranks, rank 0's
 * ck_cb_nodes_cap()), the node count in *nodes (may be NULL); collective over comm. ck_cb_nodes_cap: this rank's
 * PREFOPT_IO_CB_NODES_MAX (a positive integer), else 16. */
int ck_cb_nodes(MPI_Comm comm, int *nodes);
int ck_cb_nodes_cap(void);
int ck_open(const char *path, MPI_Comm comm, hid_t *file, prefopt_err *err);
int ck_close(hid_t file, const char *path, prefopt_err *err);
/* Collective close of a file being written (comm: the file's communicator, MPI_COMM_NULL for a serial file):
 * agrees on failed (non-zero on a rank whose HDF5 writes failed) first; when any rank failed, prints the error on
 * every rank, removes path and aborts the job, because HDF5 cannot close such a file in parallel (ckpt_file.c).
 * Other errors (bad input read before writing) pass failed = 0: the file closes normally. */
int ck_close_agreed(hid_t file, const char *path, MPI_Comm comm, int failed, prefopt_err *err);
/* The same when only some ranks hold the file (replica 0's grid, comm = its communicator): every rank of all calls it,
 * those without the file with file < 0 and comm = MPI_COMM_NULL; the agreement, the line on every rank and the
 * abort are over all. */
int ck_close_agreed_over(hid_t file, const char *path, MPI_Comm comm, MPI_Comm all, int failed, prefopt_err *err);
/* A transfer property list: collective on an MPI-IO file, default on a serial one. */
hid_t ck_make_dxpl(hid_t file);

/* Root attributes: kind ("model" or "checkpoint"), format version, the model config, the tokenizer. */
int ck_write_config(hid_t file, const char *kind, const prefopt_model_config *cfg, const prefopt_tokenizer_record *tok,
                    MPI_Comm comm, prefopt_err *err);
int ck_read_config(hid_t file, const char *path, prefopt_model_config *cfg, prefopt_err *err);
/* Every dataset of the file's model group is a tensor of cfg (a GPT-2 file with qkv_bias 0 holding q/k/v biases
 * would load and ignore them). */
int ck_check_model_tensors(hid_t file, const char *path, const prefopt_model_config *cfg, prefopt_err *err);
int ck_read_tokenizer(hid_t file, const char *path, prefopt_tokenizer_record *tok, prefopt_err *err);
int ck_attr_int64(hid_t obj, const char *name, int64_t *v, int n, int write);
int ck_attr_str(hid_t obj, const char *name, char *buf, size_t len, int write);

/* Writes (collectively over the file's communicator) the items of one group; every rank passes the same list of
 * names and shapes, each with its own piece. Replica dp_rank writes only the logical tensors it owns
 * ((layer + dataset index) mod dp_size), so replicas share the writing. Checksums are summed over sum_comm. */
int ck_write_items(hid_t file, const char *path, const char *group, ck_item *items, int n, int dp_rank, int dp_size,
                   MPI_Comm sum_comm, prefopt_err *err);
/* Reads them back (each rank its own pieces, any layout) and verifies every checksum, summed over sum_comm. */
int ck_read_items(hid_t file, const char *path, const char *group, ck_item *items, int n, MPI_Comm sum_comm,
                  prefopt_err *err);

/* Creates the (stacked) datasets of specs in group, for writers that fill them tensor by tensor (import). */
int ck_create_datasets(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *specs, int n,
                       prefopt_err *err);
/* Writes one whole tensor independently (no other rank takes part) and returns its checksum. */
int ck_write_full(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *spec, const float *data,
                  uint64_t *checksum, prefopt_err *err);
/* Stores checksums (one per spec, same order) as the datasets' attributes; collective. */
int ck_write_checksums(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *specs, int n,
                       const uint64_t *sums, prefopt_err *err);
/* Reads one whole tensor and verifies its checksum (serial readers: export, tests). */
int ck_read_full(hid_t file, const char *path, const char *group, const prefopt_tensor_spec *spec, float *data,
                 prefopt_err *err);

uint64_t ck_checksum_piece(const ck_piece *p);
/* The same, and the count of non-finite elements (NaN, Inf) in *nonfinite: readers refuse such weights even when
 * the checksum matches (a file written with them is intact, not usable). */
uint64_t ck_checksum_piece_nf(const ck_piece *p, int64_t *nonfinite);

/* ckpt_lora.c: a LoRA checkpoint's root attributes (checkpoint.h) */
int ck_write_lora_attrs(hid_t file, const prefopt_lora_config *l, const char *base, uint64_t base_sum);
/* the checksum of a list of tensors from their checksums (prefopt_model_base_checksum) */
uint64_t ck_combine_checksums(const uint64_t *sums, int n);
/* 1: no LoRA record; 0: read; -1: malformed (err) */
int ck_read_lora_attrs(hid_t file, const char *path, prefopt_lora_config *lora, char *base, size_t base_len,
                       uint64_t *base_checksum, prefopt_err *err);

/* ckpt_model.c: what model files and training checkpoints (ckpt_train.c) share */
/* Which parameters a list of items holds: the base's (every tensor of a model without LoRA), the trained ones
 * (the moments' layout: prefopt_model_train_data), or the LoRA adapters. */
enum { CK_ITEMS_BASE, CK_ITEMS_TRAINED, CK_ITEMS_LORA };
/* The model's parameters as items (which: CK_ITEMS_*); with buf != NULL, pieces point into buf (a flat buffer of
 * the trained part's layout: the moments) instead of the weights. Free the result. */
ck_item *ck_model_items(prefopt_model *m, const float *buf, int *n, int which);
/* 0 when the file's config f is the model's m; else 1 and err names the first difference. */
int ck_config_matches(const char *path, const prefopt_model_config *f, const prefopt_model_config *m,
                      prefopt_err *err);
/* Who touches the file (issue 17): the replicas hold identical weights, moments and layouts, so only replica 0's
 * grid opens a model file or checkpoint (the MPI-IO driver on its TP communicator: collective metadata, the
 * two-phase writes and the aggregators among tp_size ranks, not the world). A read is then handed to the other
 * replicas by one broadcast per flat buffer over the DP communicator (a tree: log2(dp) steps), so the time of a
 * save or a load grows with the grid, not with the number of replicas. */
static inline int ck_is_io_rank(const prefopt_grid *g) { return g->dp_rank == 0; }
/* replica 0's copy of a flat local buffer (params or a moment: the same layout on every replica) to all replicas */
void ck_bcast_replicas(const prefopt_grid *g, float *buf, size_t count);
/* The end of a write by replica 0's grid (f < 0 on the other ranks), on every rank of the world: closes tmp
 * (ck_close_agreed_over), then agrees; on a failure anywhere rank 0 removes tmp and every rank returns 1 with err
 * set ("TMP: write failed" when nothing said more). */
int ck_close_tmp_agreed(hid_t f, const char *tmp, const prefopt_grid *g, int failed, prefopt_err *err);

/* ckpt_dir.c: publishing files and checkpoint directories */
/* Rank 0 after the collective close: make the data durable (fsync tmp), then publish the name atomically (rename
 * to final, fsync of its directory). */
int ck_publish(const char *tmp, const char *final, prefopt_err *err);
/* The root attribute complete = 1, written last: checkpoint readers (find_latest, prefopt_ckpt_load) take only
 * files so marked. */
int ck_mark_complete(hid_t f);
/* mkdir -p; non-zero (errno set) when dir cannot be created. */
int ck_mkdirs(const char *dir);
/* DIR/latest := name, atomically (latest.tmp, fsync, rename, fsync of dir). */
int ck_write_latest(const char *dir, const char *name, prefopt_err *err);
/* Removes all but the newest keep (at least 1) checkpoints of dir, never current, and the .tmp leftovers of
 * writers killed mid-write. */
void ck_prune(const char *dir, int keep, long long current);

/* Test hook: PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=k makes every rank SIGKILL itself after writing k datasets. */
void ck_kill_hook_tick(void);

#endif
