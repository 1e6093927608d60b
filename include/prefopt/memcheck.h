/* prefopt: memory needed by a training run, estimated before anything large is allocated, and compared with what
 * each rank may use, so that a run that cannot fit stops at start-up with one line saying what does not fit and
 * which option would make it fit, instead of dying in malloc (or being OOM-killed) minutes later.
 *
 * The estimate (bytes per rank, float32 unless bf16; tp = grid rows * cols):
 *   weights      matrices / tp + vectors (norm weights, biases: counted whole); bf16 runs add the matrices' bf16
 *                copies (2 bytes each)
 *   grads        the fp32 weights again;  AdamW: twice them (divided by dp with --zero-stage 1);  reference: the
 *                weights again when it runs live, in a bf16 run its bf16 copies and fp32 vectors only (unless
 *                TR-DPO mixes into it: then as the policy);  communication buffers of gradsync.h (zero 1:
 *                grads / dp; bf16 communication: grads again)
 *   activations  kept for backward, per micro-batch of m rows of T tokens (T = the longest packed row, rounded
 *                up to the pad multiple) over L layers:
 *                  m*T * L * (10*C + 2*F) / tp  +  m * H * T * L / tp        (layer outputs, attention lse)
 *                with activation checkpointing only the layer inputs m*T*C*L / tp plus one layer's full set;
 *                plus logits and their gradient 2 * r*T*V / tp for the r <= m rows of one head chunk (the logits
 *                budget); plus the blocked attention's scratch, threads * (8*T*D + 3*64*64 + T) (one worker per
 *                OpenMP thread; prefopt_attention_scratch_floats), never T x T
 *   workspace    10% of the above (batch copies, staging buffers, BLAS/ScaLAPACK work)
 * With LoRA: weights + the adapters (r (in + out) per targeted linear, / tp), gradients the adapters, AdamW twice
 * the adapters, reference 0 (the base with its adapters off), activations + the adapters' U (m T r per target).
 * What a rank may use: the smallest of --memory-limit, RLIMIT_AS and RLIMIT_DATA (less what the process already
 * maps), and, shared by the ranks of the node, the cgroup memory limit and MemAvailable. */
#ifndef PREFOPT_MEMCHECK_H
#define PREFOPT_MEMCHECK_H

#include "prefopt/dataset.h"
#include "prefopt/model.h"

typedef struct {
    double weights, grads, adam, reference, activations, workspace; /* bytes per rank */
    double total;
    double comm; /* data-parallel communication buffers (in total; see gradsync.h) */
} prefopt_mem_estimate;

typedef struct {
    int tp;                    /* grid rows * cols */
    int micro_batch;           /* examples per micro-batch on one replica */
    int64_t seq_len;           /* T: tokens of the longest packed row (see prefopt_mem_max_row) */
    int live_ref;              /* a reference model runs on the same ranks */
    int activation_checkpoint;
    double logits_budget;      /* bytes of LM-head logits per chunk (--logits-budget-mib); 0: the engine's 1 GiB */
    int bf16;                  /* bf16 mixed precision: weight copies (and activations as in fp32: they stay fp32) */
    int ref_bf16_only;         /* bf16: the reference holds bf16 copies only (prefopt_model_keep_bf16_only) */
    int dp;                    /* data-parallel replicas (0 or 1: none) */
    int zero_stage;            /* 1: AdamW moments sharded over the dp replicas (AdamW / dp) */
    int bf16_comm;             /* bf16 gradient communication buffers */
    const prefopt_lora_config *lora; /* NULL or r == 0: full fine-tuning. Else gradients and AdamW cover the
                                      * adapters only, and the reference (the base with adapters off) costs none */
    double process;            /* bytes the process holds before the model exists (MPI, libraries, dataset index:
                                * prefopt_mem_process_rss); 0: not counted. Issue 17: at 64 ranks on a node
                                * this baseline, not the model, is what fills the memory */
    int threads;               /* OpenMP threads per rank (attention workers, each with its scratch); 0: 1 */
} prefopt_mem_layout;

/* This process's resident set now (VmRSS), in bytes; 0 when unknown. Local. */
double prefopt_mem_process_rss(void);

/* The estimate above for cfg and layout. Local. */
void prefopt_mem_estimate_train(const prefopt_model_config *cfg, const prefopt_mem_layout *lay,
                                prefopt_mem_estimate *e);

/* Length of the longest packed row of a dataset (pairs: prompt + chosen + rejected; unpaired with KL units:
 * prompt + 2 completions; else prompt + completion), rounded up to pad_multiple. Local (offsets are in memory). */
int64_t prefopt_mem_max_row(const prefopt_dataset *ds, int kl_units, int pad_multiple);

/* Bytes this rank may still allocate, and what sets it ("--memory-limit", "RLIMIT_AS", "RLIMIT_DATA",
 * "the cgroup memory limit", "MemAvailable"; "nothing" and +infinity when no limit is known). limit_bytes > 0 is
 * --memory-limit (per rank). Collective over comm (counts the ranks sharing this node). */
double prefopt_mem_available(MPI_Comm comm, double limit_bytes, char *source, size_t source_len);

/* Collective over comm: estimates, compares with prefopt_mem_available and, when the run does not fit, fills err
 * (the same on every rank) with e.g.
 *   "memory: training needs about 5.2 GiB per rank (weights 1.1, gradients 1.1, AdamW 2.2, reference 0, activations
 *    0.4, workspace 0.5 GiB) but RLIMIT_AS allows 3.0 GiB: use more ranks per grid (--grid-rows/--grid-cols),
 *    --activation-checkpoint, or a smaller --micro-batch-size"
 * naming only the options that reduce what is too large. Returns non-zero when it does not fit. e may be NULL. */
int prefopt_memcheck_train(const prefopt_model_config *cfg, const prefopt_mem_layout *lay, MPI_Comm comm,
                           double limit_bytes, prefopt_mem_estimate *e, prefopt_err *err);

/* "12G", "512M", "1.5GiB", "800000K", "0" (no limit) -> bytes; -1 when malformed. For a --memory-limit option. */
double prefopt_mem_parse(const char *s);

#endif
