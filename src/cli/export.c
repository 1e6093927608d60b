/* prefopt export: a model file or checkpoint -> a Hugging Face directory (--hf) and/or a weights-only model file
 * (--out). Serial: rank 0 does the work, the other ranks wait for its verdict. */
#include "prefopt/files.h"
#include "prefopt/checkpoint.h"
#include "prefopt/hf.h"
#include "prefopt/opts.h"

#include <stdio.h>

int prefopt_cmd_export(int argc, char **argv)
{
    const char *model = NULL, *hf = NULL, *out = NULL, *dtype = NULL;
    int merge = 0;
    const prefopt_opt opts[] = {
        {"model", PREFOPT_OPT_STRING, &model, "", "prefopt model file or checkpoint (a checkpoint directory: its latest)"},
        {"hf", PREFOPT_OPT_STRING, &hf, "", "write a Hugging Face directory here (config.json, model.safetensors in "
                                            "--dtype, tokenizer.json)"},
        {"out", PREFOPT_OPT_STRING, &out, "", "write a weights-only prefopt model file here (no optimizer state)"},
        {"dtype", PREFOPT_OPT_STRING, &dtype, "",
         "dtype of the --hf safetensors: bf16 (round to nearest even) or fp32; empty: the imported model's torch_dtype "
         "(bfloat16 -> bf16, else fp32); model files and checkpoints stay fp32"},
        {"merge-lora", PREFOPT_OPT_FLAG, &merge, "0",
         "LoRA checkpoint: --hf writes the base with W + (alpha/r) B A merged in (default: a PEFT adapter directory)"},
    };
    char msg[1024];
    int rc = prefopt_opts_parse("export", "Export the policy weights of a checkpoint or model file for evaluation and "
                                          "sharing.",
                                opts, (int)(sizeof opts / sizeof opts[0]), argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    prefopt_err err = {0};
    if (rc == PREFOPT_OPTS_ERROR || !model[0] || (!hf[0] && !out[0])) {
        prefopt_err_set(&err, "%s", rc == PREFOPT_OPTS_ERROR ? msg : "export needs --model FILE and --hf DIR or --out FILE");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    const char *names[] = {"--model", "--out"};
    const char *paths[] = {model, out};
    if (prefopt_check_outputs_distinct(names, paths, 1, 2, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    if (prefopt_world_rank() == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s", model);
        /* a checkpoint directory stands for its latest checkpoint */
        if (prefopt_ckpt_find_latest(model, path, sizeof path) != 0)
            snprintf(path, sizeof path, "%s", model);
        if (hf[0] && !(merge ? prefopt_hf_export_merged(path, hf, dtype, &err) : prefopt_hf_export_dtype(path, hf, dtype, &err)))
            printf("exported %s -> %s%s\n", path, hf, merge ? " (LoRA merged)" : "");
        if (!err.set && out[0] && !prefopt_model_file_export_weights(path, out, &err))
            printf("exported weights of %s -> %s\n", path, out);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    return 0;
}
