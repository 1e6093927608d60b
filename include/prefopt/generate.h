/* prefopt: the generation driver behind `prefopt generate` (src/train/generate.c): prompts (JSONL or a packed
 * dataset) -> completions with the engine's key/value cache on a tensor-parallel grid, data-parallel replicas taking
 * every dp-th prompt; greedy, temperature, top-k and top-p sampling; with a reference model, each completion's
 * log-prob under both (the mean log-ratio estimates KL(policy || reference)). */
#ifndef PREFOPT_GENERATE_H
#define PREFOPT_GENERATE_H

#include "prefopt/precision.h"

typedef struct {
    const char *model_path, *ref_path, *prompts_path, *out_path;
    int max_new_tokens, top_k, batch_size, add_bos, skip_special;
    double temperature, top_p;
    long seed;
    int grid_rows, grid_cols, dp; /* dp 0: ranks / (rows * cols) */
    const char *stop_ids;      /* "128009,128001": generation also stops at these ids (besides the tokenizer's EOS) */
    const char *chat_template; /* for "messages" prompts: a .jinja file, a tokenizer_config.json or its directory;
                                * its eos_token stops generation too */
    prefopt_precision_params prec;
} prefopt_generate_params;

/* Runs on MPI_COMM_WORLD; returns the exit code. Errors exit through prefopt_exit_error on every rank. */
int prefopt_generate_run(const prefopt_generate_params *p);

#endif
