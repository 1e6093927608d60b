/* prefopt: pre-tokenized datasets in HDF5, and the reader that turns them into model batches.
 *
 * FILE FORMAT, version 1 (an interface: users and other tools may write these files; h5py and h5dump read them).
 * One HDF5 file per split. Ragged token sequences are stored CSR-style (HDF5 cannot write variable-length data
 * in parallel): for each field F of the kind, a group F with
 *     F/tokens   int32 [total tokens of F]    the token ids of every example, concatenated in example order
 *     F/offsets  int64 [num_examples + 1]     example i is F/tokens[offsets[i] : offsets[i+1]];
 *                                             offsets[0] == 0, non-decreasing, offsets[N] == len(F/tokens)
 * Fields by kind:
 *     "pairs"     prompt, chosen, rejected    (DPO family; a completion never repeats the prompt)
 *     "unpaired"  prompt, completion, and     label  uint8 [N]  1 = desirable, 0 = undesirable (KTO)
 *     "sft"       prompt, completion          (plain text: every prompt empty, the text is the completion)
 *                 and optionally  completion/mask  uint8 [len(completion/tokens)]: 1 = the token is trained,
 *                 0 = it is context only (TRL's assistant_only_loss: the tokens of every assistant turn); without
 *                 it every completion token is trained
 * Root attributes (scalars):
 *     format_version int32 = 1;  kind string ("pairs" | "unpaired" | "sft");  num_examples int64;
 *     vocab_size int32;  tokenizer string (prefopt_tokenizer_identity: "byte" or "sha256:<hex>");
 *     bos_id, eos_id, pad_id int32 (-1 when the tokenizer has none; readers pad with pad_id, else eos_id, else 0)
 * Optional precomputed reference log-probs (written by prefopt_dataset_store_ref, e.g. from `prefopt eval
 * --store-ref`), group "ref" with float64 [N] datasets:
 *     pairs: ref/chosen_logps, ref/rejected_logps;   unpaired, sft: ref/completion_logps
 *     attribute ref.model (string): identity of the reference model that produced them.
 * The sum is over completion tokens only (the prompt is never scored), the same sums prefopt_model_forward gives.
 * label may also be h5py's numpy-bool enum. String attributes may be fixed- or variable-length (h5py's str).
 * prefopt pack writes chunked, unfiltered datasets; any layout, chunking or filter a writer chooses is readable.
 * Writing one without prefopt (h5py):
 *     f.attrs.update(format_version=1, kind="sft", num_examples=N, vocab_size=V, tokenizer="byte",
 *                    bos_id=256, eos_id=257, pad_id=258)
 *     f["completion/tokens"] = np.concatenate(seqs).astype(np.int32)
 *     f["completion/offsets"] = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)   (same for prompt)
 *
 * READER. prefopt_dataset_open validates everything above collectively (and, unless told not to, scans every
 * token id against vocab_size, the scan split over the ranks); any problem stops every rank of the
 * communicator with the same message. A loader deals global batches of B examples from a deterministic
 * permutation of (seed, epoch); replica r of dp takes the contiguous share [r*B/dp, (r+1)*B/dp) of each batch
 * and cuts it into micro-batches. All token reads are collective hyperslab reads on the file's communicator
 * (ranks of one tensor-parallel group read the same selection). The cursor (a few integers) is what a checkpoint
 * stores to resume with the identical sequence of batches. Ranks of one tensor-parallel group pass the same
 * dp_rank and get the same batches. dp size and micro-batch may change between runs: the global batches do not.
 *
 * BATCH LAYOUT (prefopt_batch in model.h). Row k of a micro-batch holds example k:
 *     pairs:     [prompt | chosen | rejected], seg 0/1/2; unit 2k = chosen (prompt tokens count here with
 *                completion=0), unit 2k+1 = rejected; rejected positions restart after the prompt; the first
 *                token of each branch has parent = the last prompt token.
 *     sft:       [prompt | completion], seg 0/1, unit k. Plain text (empty prompt): every token but the first
 *                is a completion token. With a loss mask, a completion token is one only where its mask is 1.
 *     unpaired:  [prompt | completion | KL completion], seg 0/1/2; unit 2k = the completion, unit 2k+1 = the KL
 *                unit: the completion of example (k-1) mod m of the same micro-batch (TRL's rotation:
 *                (x1,y_m),(x2,y1),...). Without KL units (kl_units = 0): [prompt | completion], unit k.
 * Tokens with parent -1 (the first token of a row) have unit -1 and completion 0. Padding: token pad_id,
 * pos 0, seg -1, parent -1, unit -1, completion 0. T is the longest row rounded up to pad_multiple.
 */
#ifndef PREFOPT_DATASET_H
#define PREFOPT_DATASET_H

#include "prefopt/common.h"
#include "prefopt/model.h"

#include <stdio.h>

#define PREFOPT_DS_FORMAT_VERSION 1

typedef enum { PREFOPT_DS_PAIRS = 0, PREFOPT_DS_UNPAIRED = 1, PREFOPT_DS_SFT = 2 } prefopt_ds_kind;

/* Field indices; a kind uses fields 0..nfields-1 in this order: pairs {prompt, chosen, rejected},
 * unpaired and sft {prompt, completion}. */
enum { PREFOPT_DS_MAX_FIELDS = 3 };
const char *prefopt_ds_kind_name(prefopt_ds_kind k);
int prefopt_ds_kind_parse(const char *name, prefopt_ds_kind *k); /* 0 on success */
int prefopt_ds_kind_nfields(prefopt_ds_kind k);
const char *prefopt_ds_field_name(prefopt_ds_kind k, int field);
/* Names of the ref datasets of a kind (without "ref/"): pairs 2, others 1. */
int prefopt_ds_kind_nrefs(prefopt_ds_kind k);
const char *prefopt_ds_ref_name(prefopt_ds_kind k, int i);

typedef struct {
    prefopt_ds_kind kind;
    int64_t num_examples;
    int vocab_size, bos_id, eos_id, pad_id;
    char tokenizer[192];
    int has_ref;          /* the ref group is present and complete */
    int has_mask;         /* sft: completion/mask is present */
    char ref_model[192];  /* ref.model attribute, "" if none */
    int64_t num_tokens[PREFOPT_DS_MAX_FIELDS];
    /* measured at open (streamed over every example): the longest example per field, and the longest
     * prompt + completions row (the sum over the fields of one example) */
    int64_t max_len[PREFOPT_DS_MAX_FIELDS], max_row;
    int64_t desirable;    /* unpaired: examples with label 1 */
} prefopt_ds_info;

typedef struct prefopt_dataset prefopt_dataset;

/* What the caller checks the file against. vocab_size 0 and tokenizer NULL skip those checks. */
typedef struct {
    int vocab_size;        /* the model's vocabulary size */
    const char *tokenizer; /* expected tokenizer identity */
    int skip_token_scan;   /* 1: do not read every token at open (they are still checked as batches are read) */
} prefopt_ds_expect;

/* Collective over comm. Opens and validates the file; on failure every rank of comm returns non-zero with the
 * same message in err. Nothing per example is kept in memory: offsets, labels and ref log-probs are read on demand
 * for the examples of each read, and the checks over every example at open (monotonic offsets, labels 0/1, ref
 * values) are streamed in chunks of 64K examples split over the ranks of comm (issue 17). */
int prefopt_dataset_open(const char *path, MPI_Comm comm, const prefopt_ds_expect *expect, prefopt_dataset **out,
                         prefopt_err *err);
void prefopt_dataset_close(prefopt_dataset *ds); /* collective */
/* Moves the per-batch reads to comm, a communicator inside the one the dataset was opened on (a replica's grid,
 * whose ranks all read the same examples): the file is closed (collective over the old communicator) and reopened
 * on comm (collective over it), so that a step's read involves one grid, not the world (issue 17). The offsets,
 * labels and reference log-probs read at open are kept. Errors (the file vanished) are agreed on over comm. */
int prefopt_dataset_set_comm(prefopt_dataset *ds, MPI_Comm comm, prefopt_err *err);
const prefopt_ds_info *prefopt_dataset_info(const prefopt_dataset *ds);
/* A second handle on the same validated file for one thread of one rank: serial HDF5 (no MPI call at all, so a
 * prefetch thread may use it under MPI_THREAD_FUNNELED), reads independent of other ranks, errors not agreed
 * (the caller agrees). HDF5 is not thread-safe: no other HDF5 call may run while it reads. Close it with
 * prefopt_dataset_close (local). */
int prefopt_dataset_open_local(const prefopt_dataset *ds, prefopt_dataset **out, prefopt_err *err);
/* Human-readable summary: kind, counts, attributes, token totals, ref presence (prefopt inspect --file).
 * Collective over the dataset's communicator (every rank calls it; rank 0 prints, holding the lengths for the
 * quantiles). */
void prefopt_dataset_describe(FILE *f, prefopt_dataset *ds);
/* Collective over the dataset's communicator (n may differ per rank): token counts of the listed examples,
 * len[j * nfields + f] for field f of example idx[j]. Agreed error. */
int prefopt_dataset_lengths(prefopt_dataset *ds, const int64_t *idx, int64_t n, int64_t *len, prefopt_err *err);
/* Most bytes of per-example data (offsets, labels, ref values and their index buffers) the dataset has held at
 * once since it was opened: bounded by the largest read and the 64K-example chunk, not by the file (tests). */
int64_t prefopt_dataset_peak_bytes(const prefopt_dataset *ds);

/* Collective over comm: reads the tokens of the listed examples (any order, no duplicates; n may be 0 on some
 * ranks) for every field. tokens[f] (malloc'd, caller frees) receives the examples' tokens concatenated in the
 * order of idx, start[f][j] (malloc'd, n+1 entries) where example idx[j] begins. An sft dataset with a loss mask
 * also fills tokens[2]/start[2] with the mask (0/1) of every completion token, laid out as tokens[1]. */
int prefopt_dataset_read(prefopt_dataset *ds, const int64_t *idx, int n, int32_t *tokens[PREFOPT_DS_MAX_FIELDS],
                         int64_t *start[PREFOPT_DS_MAX_FIELDS], prefopt_err *err);

/* Collective over comm: adds (or replaces) the ref group of an existing, closed dataset file. Each rank passes
 * n of (idx[j], vals[r][j]) for r < prefopt_ds_kind_nrefs(kind); together the ranks must cover every example
 * exactly once (pass n = 0 on ranks that duplicate another's examples, e.g. tp_rank != 0); vals[0] and vals[1]
 * must both point to n values (vals[1] unused for one-completion kinds). Rank 0 gathers them and writes a copy of
 * the file (PATH.store-ref.tmp) with the new ref group, then renames it over PATH: the dataset is the old file or
 * the new one whatever happens (kill -9, a full disk at any byte), at the cost of room for one more copy (checked
 * first). model names the reference model. */
int prefopt_dataset_store_ref(const char *path, MPI_Comm comm, int n, const int64_t *idx, const double *const vals[],
                              const char *model, prefopt_err *err);

/* ---- the loader ---------------------------------------------------------------------------------------- */

typedef struct {
    int global_batch;   /* B: examples per optimizer step over all replicas */
    int micro_batch;    /* m: examples per micro-batch on one replica (the last one of a step may be shorter) */
    uint64_t seed;
    int shuffle;        /* 0: file order (eval) */
    int bucket_window;  /* k > 0: inside windows of k global batches, group examples of similar length */
    int drop_last;      /* 1: an epoch has floor(N/B) steps; 0: the last step takes the remainder */
    int pad_multiple;   /* T is rounded up to a multiple of this (>= 1) */
    int kl_units;       /* unpaired only: add KL units (needs micro-batches of >= 2 examples) */
} prefopt_ds_loader_opts;

/* Where a loader stands: the checkpoint stores it. Resuming needs the same dataset and loader options; the
 * fingerprint fields are checked by prefopt_ds_loader_set_cursor. */
typedef struct {
    uint64_t seed;
    int64_t epoch;
    int64_t step;          /* global batches already taken in this epoch */
    int64_t global_batch;  /* fingerprint */
    int64_t num_examples;  /* fingerprint */
    int64_t bucket_window; /* fingerprint (-1 when shuffle is off) */
    int64_t order;         /* the sample order's version (PREFOPT_DS_ORDER_VERSION; 0 in older checkpoints) */
} prefopt_ds_cursor;

/* The sample order: 2 = the keyed per-position permutation of issue 17 (before it, an [N] Fisher-Yates array on
 * every rank). A cursor of another version is refused when shuffling (file order is the same in every version). */
#define PREFOPT_DS_ORDER_VERSION 2

/* The cursor as plain integers, e.g. HDF5 attributes "data.<name>": seed is stored bit for bit as int64. */
enum { PREFOPT_DS_CURSOR_NVALUES = 7 };
extern const char *const prefopt_ds_cursor_names[PREFOPT_DS_CURSOR_NVALUES];
void prefopt_ds_cursor_to_values(const prefopt_ds_cursor *c, int64_t v[PREFOPT_DS_CURSOR_NVALUES]);
void prefopt_ds_cursor_from_values(const int64_t v[PREFOPT_DS_CURSOR_NVALUES], prefopt_ds_cursor *c);

/* Unit roles, and per-batch metadata for objectives and logging. */
typedef struct {
    prefopt_batch b;            /* the rows; every pointer below and in b is owned by the batch */
    int nexamples;
    int64_t *example;           /* [nexamples] index of each row's example in the file */
    int32_t *chosen_unit;       /* [nexamples] pairs: 2k; sft: k; unpaired: the completion's unit */
    int32_t *rejected_unit;     /* [nexamples] pairs: 2k+1; else -1 */
    int32_t *kl_unit;           /* [nexamples] unpaired with KL units: 2k+1; else -1 */
    uint8_t *label;             /* [nexamples] unpaired: 1 desirable, 0 undesirable; NULL for other kinds */
    double *ref_logps;          /* [nunits] precomputed reference sums (NaN for KL units); NULL if absent */
    int64_t prompt_tokens, completion_tokens, pad_tokens;
} prefopt_ds_batch;

typedef struct {
    int64_t epoch, step;        /* of this global batch */
    int global_examples;        /* examples in the global batch (B, or fewer for a last partial step) */
    int nmicro;
    prefopt_ds_batch *micro;    /* [nmicro] this replica's micro-batches */
} prefopt_ds_step;

typedef struct prefopt_ds_loader prefopt_ds_loader;

/* Local: checks the options (B divisible by dp, ...); fails with a message naming the option. */
int prefopt_ds_loader_create(prefopt_dataset *ds, const prefopt_ds_loader_opts *o, int dp_rank, int dp_size,
                             prefopt_ds_loader **out, prefopt_err *err);
void prefopt_ds_loader_free(prefopt_ds_loader *L);
/* The examples of global batch `step` of `epoch` in the loader's order (out: [global batch], *n of them), reading
 * no tokens. Collective over the dataset's communicator when bucketing (the window's lengths are read), local
 * otherwise. The loader's own position is not moved (tests check the order is a permutation over 1M+ examples). */
int prefopt_ds_loader_batch_examples(prefopt_ds_loader *L, int64_t epoch, int64_t step, int64_t *out, int *n,
                                     prefopt_err *err);
/* Bytes the loader holds for the order: the bucketing window and one batch of example indices, never O(N). */
int64_t prefopt_ds_loader_held_bytes(const prefopt_ds_loader *L);
int64_t prefopt_ds_loader_steps_per_epoch(const prefopt_ds_loader *L);
void prefopt_ds_loader_get_cursor(const prefopt_ds_loader *L, prefopt_ds_cursor *c);
int prefopt_ds_loader_set_cursor(prefopt_ds_loader *L, const prefopt_ds_cursor *c, prefopt_err *err);
/* Collective over the dataset's communicator (every rank of every replica calls it): reads this replica's share of
 * the next global batch, builds its micro-batches and advances the cursor (at the end of an epoch it moves to
 * step 0 of the next). step is overwritten; free it with prefopt_ds_step_free. */
int prefopt_ds_loader_next(prefopt_ds_loader *L, prefopt_ds_step *step, prefopt_err *err);
void prefopt_ds_step_free(prefopt_ds_step *step);
/* Local: a loader with from's options, replica and cursor, reading through ds (another handle on the same file). */
int prefopt_ds_loader_clone(const prefopt_ds_loader *from, prefopt_dataset *ds, prefopt_ds_loader **out,
                            prefopt_err *err);

/* ---- prefetch (prefetch.c): the next step read by a thread while this one computes ------------------------- */
typedef struct prefopt_ds_prefetch prefopt_ds_prefetch;
/* Local (no MPI): opens a local handle of ds (prefopt_dataset_open_local), a loader like `from` at from's cursor
 * on it, and a thread that reads from's next step at once. */
int prefopt_ds_prefetch_start(prefopt_dataset *ds, const prefopt_ds_loader *from, prefopt_ds_prefetch **out,
                              prefopt_err *err);
/* Waits for the step being read and hands it over (free with prefopt_ds_step_free), with the cursor after it (to
 * set on `from` so that a checkpoint stores the consumed position), and starts reading the next one. Non-zero
 * with err on a read error (not agreed: the caller agrees, e.g. over the world); no further read is made. */
int prefopt_ds_prefetch_next(prefopt_ds_prefetch *pf, prefopt_ds_step *step, prefopt_ds_cursor *after,
                             prefopt_err *err);
/* Waits until the thread is outside HDF5 (the step it reads is complete and kept): call it before any HDF5 call of
 * the calling thread (checkpoints, evaluation, model files), since HDF5 is not thread-safe here. NULL: no-op. */
void prefopt_ds_prefetch_wait(prefopt_ds_prefetch *pf);
/* Waits, joins the thread and frees everything (a step read ahead is dropped). NULL: no-op. */
void prefopt_ds_prefetch_stop(prefopt_ds_prefetch *pf);

/* The batch builder alone (dataset_batch.c): builds one micro-batch from n examples whose tokens are given per
 * field as in prefopt_dataset_read (an sft loss mask in tokens[2], or tokens[2] NULL). label may be NULL (not unpaired); ref is [n][nrefs] or NULL. */
void prefopt_ds_batch_build(prefopt_ds_kind kind, int n, const int64_t *example, int32_t *const tokens[],
                            int64_t *const start[], const uint8_t *label, const double *ref, int kl_units, int pad_id,
                            int pad_multiple, prefopt_ds_batch *out);
void prefopt_ds_batch_free(prefopt_ds_batch *b);

#endif
