/* The option table of `prefopt train` (command line, INI job files, --help, config.ini): train's own options,
 * then the objective's and the optimizer's. */
#include "prefopt/train.h"
#include "prefopt/precision.h"

#include <string.h>

int prefopt_train_options(prefopt_opt *o, int max, prefopt_train_params *p)
{
    const prefopt_opt base[] = {
        {"data", PREFOPT_OPT_STRING, &p->data, "", "training dataset (HDF5, from prefopt pack) (required)"},
        {"eval-data", PREFOPT_OPT_STRING, &p->eval_data, "", "held-out dataset evaluated every --eval-interval steps"},
        {"init", PREFOPT_OPT_STRING, &p->init, "", "model file or checkpoint to start from (empty: from scratch)"},
        {"ref-model", PREFOPT_OPT_STRING, &p->ref_model, "", "reference model file (default: the --init weights)"},
        {"run-dir", PREFOPT_OPT_STRING, &p->run_dir, "runs/train", "run directory: metrics, checkpoints, model.h5"},
        {"resume", PREFOPT_OPT_STRING, &p->resume, "auto",
         "auto: continue from RUN_DIR/checkpoints/latest if present; never; or a checkpoint path"},
        {"tokenizer", PREFOPT_OPT_STRING, &p->tokenizer, "",
         "from scratch: tokenizer.json (or its directory) the data was packed with: the model's vocabulary, and the "
         "model file carries it (empty: byte level)"},
        {"arch", PREFOPT_OPT_STRING, &p->arch.arch, "gpt2", "from scratch: gpt2 or llama"},
        {"n-layer", PREFOPT_OPT_INT, &p->arch.n_layer, "4", "from scratch: layers"},
        {"n-embd", PREFOPT_OPT_INT, &p->arch.n_embd, "128", "from scratch: hidden size"},
        {"n-head", PREFOPT_OPT_INT, &p->arch.n_head, "4", "from scratch: attention heads"},
        {"n-kv-head", PREFOPT_OPT_INT, &p->arch.n_kv_head, "0", "from scratch (llama): key/value heads (0 = n-head)"},
        {"n-inner", PREFOPT_OPT_INT, &p->arch.n_inner, "0", "from scratch: MLP width (0 = 4C gpt2, 8C/3 llama)"},
        {"max-position", PREFOPT_OPT_INT, &p->arch.max_position, "256", "from scratch: positions (gpt2 wpe rows)"},
        {"norm-eps", PREFOPT_OPT_DOUBLE, &p->arch.norm_eps, "0", "from scratch: norm epsilon (0 = 1e-5 / 1e-6)"},
        {"rope-theta", PREFOPT_OPT_DOUBLE, &p->arch.rope_theta, "10000", "from scratch (llama): RoPE base"},
        {"grid-rows", PREFOPT_OPT_INT, &p->grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &p->grid_cols, "1", "process columns of each tensor-parallel grid"},
        {"dp", PREFOPT_OPT_INT, &p->dp, "0", "data-parallel replicas (0: ranks / (rows*cols))"},
        PREFOPT_PRECISION_OPTIONS(&p->prec),
        {"batch-size", PREFOPT_OPT_INT, &p->batch_size, "8", "examples (pairs) per optimizer step, all replicas"},
        {"micro-batch-size", PREFOPT_OPT_INT, &p->micro_batch_size, "0",
         "examples per forward/backward on one replica (0: batch-size/dp, no accumulation); TRL: "
         "per_device_train_batch_size"},
        {"gradient-accumulation-steps", PREFOPT_OPT_INT, &p->gradient_accumulation_steps, "0",
         "micro-batches per replica and step, as TRL: batch-size = micro-batch-size x this x dp (0: from "
         "--batch-size / --micro-batch-size)"},
        {"pad-multiple", PREFOPT_OPT_INT, &p->pad_multiple, "8", "pad each micro-batch's length to a multiple"},
        {"bucket-window", PREFOPT_OPT_INT, &p->bucket_window, "0", "group similar lengths within windows of N batches"},
        {"data-prefetch", PREFOPT_OPT_FLAG, &p->data_prefetch, "1",
         "read the next step's batch in a thread while this step computes (the same batches either way)"},
        {"max-steps", PREFOPT_OPT_LONG, &p->max_steps, "0", "optimizer steps (0: from --epochs)"},
        {"epochs", PREFOPT_OPT_DOUBLE, &p->epochs, "1", "epochs when --max-steps is 0"},
        {"seed", PREFOPT_OPT_LONG, &p->seed, "1234", "seed of data order and from-scratch init"},
        {"activation-checkpoint", PREFOPT_OPT_FLAG, &p->activation_checkpoint, "0",
         "recompute each layer in backward instead of keeping its activations"},
        {"logits-budget-mib", PREFOPT_OPT_INT, &p->logits_budget_mib, "0",
         "LM-head logits kept per chunk of rows (0: 1024); smaller saves memory, backward recomputes chunk logits"},
        {"completion-logits", PREFOPT_OPT_INT, &p->completion_logits, "1",
         "1: LM-head logits only where completion tokens are predicted, when the loss reads nothing else (not "
         "ORPO, --sft-all-tokens); 0: at every position"},
        {"memory-limit", PREFOPT_OPT_STRING, &p->memory_limit, "0",
         "memory one rank may use, e.g. 12G (0: RLIMIT_AS/DATA, cgroup and MemAvailable decide); checked at start"},
        {"use-precomputed-ref", PREFOPT_OPT_FLAG, &p->use_precomputed_ref, "1",
         "use reference log-probs stored in the dataset (prefopt eval --store-ref) instead of a reference model"},
        {"peak-gflops", PREFOPT_OPT_DOUBLE, &p->peak_gflops, "0",
         "sgemm GFLOP/s of one rank that MFU divides by (0: measured at start-up, best of 7 products)"},
        {"log-interval", PREFOPT_OPT_INT, &p->log_interval, "10", "progress line every N steps"},
        {"eval-interval", PREFOPT_OPT_INT, &p->eval_interval, "0", "evaluate --eval-data every N steps (0: at end)"},
        {"eval-batch-size", PREFOPT_OPT_INT, &p->eval_batch_size, "0", "micro-batch of evaluation (0: micro-batch)"},
        {"save-interval", PREFOPT_OPT_INT, &p->save_interval, "0", "checkpoint every N steps (0: only at the end)"},
        {"keep-last", PREFOPT_OPT_INT, &p->keep_last, "2", "checkpoints kept"},
        {"max-nonfinite", PREFOPT_OPT_INT, &p->max_nonfinite, "5",
         "stop after this many consecutive steps skipped for a non-finite loss or gradient"},
        {"allow-config-change", PREFOPT_OPT_FLAG, &p->allow_config_change, "0",
         "resume although options that change the math (objective, beta, lr, data, ...) differ from the "
         "checkpoint's; metrics.jsonl gets a config_change row"},
    };
    int n = (int)(sizeof base / sizeof base[0]);
    if (n > max)
        return -1;
    memcpy(o, base, sizeof base);
    int k = prefopt_objective_options(o + n, max - n, &p->obj);
    if (k < 0)
        return -1;
    n += k;
    k = prefopt_optim_options(o + n, max - n, &p->optim);
    if (k < 0)
        return -1;
    n += k;
    k = prefopt_dp_options(o + n, max - n, &p->dpsync);
    if (k < 0)
        return -1;
    n += k;
    k = prefopt_lora_options(o + n, max - n, &p->lora);
    if (k < 0)
        return -1;
    return n + k;
}
