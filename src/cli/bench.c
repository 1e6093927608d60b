/* prefopt bench: options to the benchmark driver in src/train/bench.c (timed DPO steps on random weights). */
#include "prefopt/agree.h"
#include "prefopt/bench.h"
#include "prefopt/opts.h"
#include "prefopt/trace_export.h"

#include <string.h>

#include <string.h>

int prefopt_cmd_bench(int argc, char **argv)
{
    static prefopt_bench_params p;
    const prefopt_opt base[] = {
        {"shape", PREFOPT_OPT_STRING, &p.shape, "gpt2-small", "gpt2-small, tiny, llama-1b, llama-7b or custom"},
        {"arch", PREFOPT_OPT_STRING, &p.arch, "gpt2", "with --shape custom: gpt2 or llama"},
        {"n-layer", PREFOPT_OPT_INT, &p.n_layer, "0", "layers (0: the shape's)"},
        {"n-embd", PREFOPT_OPT_INT, &p.n_embd, "0", "hidden size (0: the shape's)"},
        {"n-head", PREFOPT_OPT_INT, &p.n_head, "0", "attention heads (0: the shape's)"},
        {"n-kv-head", PREFOPT_OPT_INT, &p.n_kv_head, "0", "key/value heads (0: the shape's, or n-head)"},
        {"n-inner", PREFOPT_OPT_INT, &p.n_inner, "0", "MLP width (0: the shape's; custom: 4C gpt2, 8C/3 llama)"},
        {"vocab", PREFOPT_OPT_INT, &p.vocab, "0", "vocabulary (0: the shape's)"},
        {"max-position", PREFOPT_OPT_INT, &p.max_position, "0", "positions (0: the shape's)"},
        {"pairs", PREFOPT_OPT_INT, &p.pairs, "2", "preference pairs per step on each data-parallel replica"},
        {"prompt-len", PREFOPT_OPT_INT, &p.prompt_len, "128", "prompt tokens of each pair (shared by both branches)"},
        {"chosen-len", PREFOPT_OPT_INT, &p.chosen_len, "64", "chosen completion tokens"},
        {"rejected-len", PREFOPT_OPT_INT, &p.rejected_len, "64", "rejected completion tokens"},
        {"steps", PREFOPT_OPT_INT, &p.steps, "5", "measured steps (the median is reported)"},
        {"warmup", PREFOPT_OPT_INT, &p.warmup, "1", "steps run before measuring"},
        {"grid-rows", PREFOPT_OPT_INT, &p.grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &p.grid_cols, "0", "process columns (0: ranks / (grid-rows * dp))"},
        {"dp", PREFOPT_OPT_INT, &p.dp, "1", "data-parallel replicas"},
        PREFOPT_PRECISION_OPTIONS(&p.prec),
        {"activation-checkpoint", PREFOPT_OPT_FLAG, &p.activation_checkpoint, "0",
         "recompute each layer in backward (the policy)"},
        {"logits-budget-mib", PREFOPT_OPT_INT, &p.logits_budget_mib, "0",
         "LM-head logits per chunk, policy and reference (0: the engine's default; the policy recomputes chunk logits "
         "in backward when chunked)"},
        {"completion-logits", PREFOPT_OPT_INT, &p.completion_logits, "1",
         "1: LM-head logits only where completion tokens are predicted, as train does for DPO; 0: every position"},
        {"loss", PREFOPT_OPT_STRING, &p.loss, "dpo", "pair objective (objectives.h)"},
        {"beta", PREFOPT_OPT_DOUBLE, &p.beta, "0.1", "DPO beta"},
        {"lr", PREFOPT_OPT_DOUBLE, &p.lr, "1e-6", "AdamW learning rate"},
        {"seed", PREFOPT_OPT_LONG, &p.seed, "1", "seed of the weights and tokens"},
        {"lora-r", PREFOPT_OPT_INT, &p.lora_r, "0", "LoRA rank (0: full DPO); the reference is the base, adapters off"},
        {"lora-alpha", PREFOPT_OPT_DOUBLE, &p.lora_alpha, "16", "LoRA alpha"},
        {"lora-targets", PREFOPT_OPT_STRING, &p.lora_targets, "all-linear", "LoRA target modules (PEFT names)"},
        {"pcontrol", PREFOPT_OPT_STRING, &p.pcontrol, "window",
         "window: MPI_Pcontrol(1)/(0) around the measured steps (mpiP -o, TAU, Extrae); named: also "
         "MPI_Pcontrol(+1/-1, region) per region (IPM); off"},
        {"folded", PREFOPT_OPT_STRING, &p.folded, "", "write the region times as folded stacks to this file"},
        {"folded-per-rank", PREFOPT_OPT_FLAG, &p.folded_per_rank, "0", "one folded file per rank (FILE.RANK)"},
        {"table", PREFOPT_OPT_FLAG, &p.table, "1", "print the region table (min/avg/max over ranks)"},
        {"json", PREFOPT_OPT_STRING, &p.json, "", "also append the JSON line to this file"},
    };
    static prefopt_opt opts[64];
    static prefopt_trace_params tp;
    int nopts = (int)(sizeof base / sizeof base[0]);
    memcpy(opts, base, sizeof base);
    nopts += prefopt_dp_options(opts + nopts, 64 - nopts, &p.dpsync);
    nopts += prefopt_trace_options(opts + nopts, 64 - nopts, &tp, 0);
    char msg[1024];
    int rc = prefopt_opts_parse("bench",
                                "Time DPO steps (policy forward+backward, reference forward, loss, data-parallel "
                                "all-reduce, AdamW) on random weights and tokens; prints tokens/s, GFLOP/s, MFU "
                                "against the sgemm peak measured in the same run, phases (min/avg/max over ranks), "
                                "memory, and a JSON line.",
                                opts, nopts, argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err err = {0};
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    prefopt_err terr = {0};
    if (prefopt_trace_begin(&tp, MPI_COMM_WORLD, &terr))
        prefopt_exit_error(&terr, PREFOPT_EXIT_USAGE);
    rc = prefopt_bench_run(&p);
    prefopt_trace_finish();
    return rc;
}
