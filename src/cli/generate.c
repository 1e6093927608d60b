/* prefopt generate: options (command line and INI job file) to the generation driver in src/train/generate.c. */
#include "prefopt/files.h"
#include "prefopt/agree.h"
#include "prefopt/generate.h"
#include "prefopt/opts.h"
#include "prefopt/trace_export.h"

#include <string.h>

#include <stdio.h>

int prefopt_cmd_generate(int argc, char **argv)
{
    static prefopt_generate_params q;
    prefopt_generate_params *p = &q;
    const prefopt_opt base[] = {
        {"model", PREFOPT_OPT_STRING, &p->model_path, "", "model file or checkpoint (required)"},
        {"ref", PREFOPT_OPT_STRING, &p->ref_path, "", "reference model: score each completion under both (KL estimate)"},
        {"prompts", PREFOPT_OPT_STRING, &p->prompts_path, "",
         "JSONL with \"prompt\" (text), \"prompt_ids\" or \"messages\" (chat, needs --chat-template), or a "
         "packed dataset (.h5: its prompts) (required)"},
        {"out", PREFOPT_OPT_STRING, &p->out_path, "", "output JSONL (index, prompt, completion, ids) (required)"},
        {"max-new-tokens", PREFOPT_OPT_INT, &p->max_new_tokens, "64", "generated tokens per prompt at most"},
        {"temperature", PREFOPT_OPT_DOUBLE, &p->temperature, "0", "0: greedy; > 0: sample from softmax(logits/T)"},
        {"top-k", PREFOPT_OPT_INT, &p->top_k, "0", "sample among the k most likely tokens (0: all)"},
        {"top-p", PREFOPT_OPT_DOUBLE, &p->top_p, "1", "nucleus sampling mass (1: off)"},
        {"seed", PREFOPT_OPT_LONG, &p->seed, "1234", "sampling seed (draws depend on seed, example and position only)"},
        {"batch-size", PREFOPT_OPT_INT, &p->batch_size, "32", "prompts generated together on one replica"},
        {"add-bos", PREFOPT_OPT_FLAG, &p->add_bos, "0", "prepend BOS to text prompts (match how the data was packed)"},
        {"skip-special", PREFOPT_OPT_FLAG, &p->skip_special, "1", "leave special tokens out of the completion text"},
        {"grid-rows", PREFOPT_OPT_INT, &p->grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &p->grid_cols, "1", "process columns of each tensor-parallel grid"},
        {"dp", PREFOPT_OPT_INT, &p->dp, "0", "data-parallel replicas (0: ranks / (rows*cols))"},
        PREFOPT_PRECISION_OPTIONS(&p->prec),
        {"stop-ids", PREFOPT_OPT_STRING, &p->stop_ids, "",
         "comma-separated token ids that end a completion besides the tokenizer's EOS (e.g. 128009 for <|eot_id|>)"},
        {"chat-template", PREFOPT_OPT_STRING, &p->chat_template, "",
         "chat template for \"messages\" prompts (rendered with add_generation_prompt): a .jinja file, or a "
         "tokenizer_config.json / tokenizer directory; its eos_token also stops generation"},
    };
    static prefopt_opt opts[64];
    static prefopt_trace_params tp;
    int nopts = (int)(sizeof base / sizeof base[0]);
    memcpy(opts, base, sizeof base);
    nopts += prefopt_trace_options(opts + nopts, 64 - nopts, &tp, 1);
    char msg[1024];
    prefopt_err err = {0};
    int rc = prefopt_opts_parse(
        "generate", "Generate completions for prompts (JSONL or a packed dataset) with a model; greedy or sampled.",
        opts, nopts, argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_OK && (!*p->model_path || !*p->prompts_path || !*p->out_path))
        snprintf(msg, sizeof msg, "generate needs --model, --prompts and --out"), rc = PREFOPT_OPTS_ERROR;
    if (rc == PREFOPT_OPTS_OK &&
        (p->batch_size < 1 || p->max_new_tokens < 0 || p->temperature < 0 || p->top_p <= 0 || p->top_p > 1))
        snprintf(msg, sizeof msg, "generate: need --batch-size >= 1, --max-new-tokens >= 0, --temperature >= 0 and "
                                  "0 < --top-p <= 1"), rc = PREFOPT_OPTS_ERROR;
    if (rc == PREFOPT_OPTS_OK && p->top_k < 0)
        snprintf(msg, sizeof msg, "generate: --top-k %d: must be >= 0 (0: all tokens)", p->top_k), rc = PREFOPT_OPTS_ERROR;
    if (rc == PREFOPT_OPTS_OK) {
        const char *names[] = {"--model", "--ref", "--prompts", "--chat-template", "--out"};
        const char *paths[] = {p->model_path, p->ref_path, p->prompts_path, p->chat_template, p->out_path};
        if (prefopt_check_outputs_distinct(names, paths, 4, 5, &err)) {
            snprintf(msg, sizeof msg, "%s", err.msg), rc = PREFOPT_OPTS_ERROR;
            prefopt_err_clear(&err);
        }
    }
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    prefopt_err terr = {0};
    if (prefopt_trace_begin(&tp, MPI_COMM_WORLD, &terr))
        prefopt_exit_error(&terr, PREFOPT_EXIT_USAGE);
    rc = prefopt_generate_run(p);
    prefopt_trace_finish();
    return rc;
}
