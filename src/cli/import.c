/* prefopt import: a Hugging Face model directory -> a prefopt model file (runs on any number of ranks; the
 * tensors are split over them). */
#include "prefopt/files.h"
#include "prefopt/hf.h"
#include "prefopt/opts.h"

#include <stdio.h>

int prefopt_cmd_import(int argc, char **argv)
{
    const char *hf = NULL, *out = NULL;
    const prefopt_opt opts[] = {
        {"hf", PREFOPT_OPT_STRING, &hf, "", "Hugging Face model directory (config.json, model.safetensors or "
                                            "model.safetensors.index.json, tokenizer.json)"},
        {"out", PREFOPT_OPT_STRING, &out, "", "prefopt model file to write (HDF5)"},
    };
    char msg[1024];
    int rc = prefopt_opts_parse("import", "Convert a Hugging Face directory (GPT-2, Llama, Mistral, Qwen2/3, OLMo 2, "
                                          "Gemma 2/3, Phi-3, SmolLM3; fp32, fp16 or bf16 safetensors) to a prefopt "
                                          "model file.",
                                opts, (int)(sizeof opts / sizeof opts[0]), argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    prefopt_err err = {0};
    if (rc == PREFOPT_OPTS_ERROR || !hf[0] || !out[0]) {
        prefopt_err_set(&err, "%s", rc == PREFOPT_OPTS_ERROR ? msg : "import needs --hf DIR and --out FILE");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    /* the output must not be one of the files read */
    static const char *const inputs[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                         "tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; i < 6; i++) {
        char in[4200];
        snprintf(in, sizeof in, "%s/%s", hf, inputs[i]);
        const char *names[] = {"--hf", "--out"};
        const char *paths[] = {in, out};
        if (prefopt_check_outputs_distinct(names, paths, 1, 2, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    double t0 = prefopt_now();
    if (prefopt_hf_import(hf, out, MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    if (prefopt_world_rank() == 0)
        printf("imported %s -> %s in %.2f s\n", hf, out, prefopt_now() - t0);
    return 0;
}
