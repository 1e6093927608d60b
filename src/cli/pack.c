/* prefopt pack: JSONL -> HDF5 dataset (see pack.h for the input layouts, dataset.h for the file format).
 * Serial: rank 0 does the work; under mpiexec the other ranks wait and every rank reports the same outcome. */
#include "prefopt/opts.h"
#include "prefopt/pack.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int prefopt_cmd_pack(int argc, char **argv)
{
    const char *input = NULL, *output = NULL, *eval_out = NULL, *kind = NULL, *tokenizer = NULL, *trunc = NULL,
               *chat_file = NULL;
    int max_prompt = 0, max_len = 0, append_eos = 1, add_bos = 0, quiet = 0, unpair = 0, assistant_only = 0,
        add_special = 1;
    long seed = 0;
    double eval_fraction = 0;
    const prefopt_opt opts[] = {
        {"input", PREFOPT_OPT_STRING, &input, "", "JSONL file, one example a line"},
        {"output", PREFOPT_OPT_STRING, &output, "", "HDF5 dataset to write (appears only when complete)"},
        {"kind", PREFOPT_OPT_STRING, &kind, "auto", "auto (from the first example), pairs, unpaired or sft"},
        {"tokenizer", PREFOPT_OPT_STRING, &tokenizer, "", "tokenizer.json (file or directory); empty: byte-level"},
        {"chat-template", PREFOPT_OPT_STRING, &chat_file, "",
         "chat template for messages: a .jinja file or a tokenizer_config.json; empty: the tokenizer's own "
         "(tokenizer_config.json / chat_template.jinja beside it), ChatML when it has none"},
        {"max-prompt-len", PREFOPT_OPT_INT, &max_prompt, "0", "prompt token limit (0: none)"},
        {"max-len", PREFOPT_OPT_INT, &max_len, "0", "limit on prompt + each completion (0: none)"},
        {"truncation", PREFOPT_OPT_STRING, &trunc, "keep_end",
         "keep_end: keep the end of the prompt, cut completions; drop: drop over-long examples"},
        {"append-eos", PREFOPT_OPT_FLAG, &append_eos, "1", "append EOS to completions not ending with it"},
        {"add-bos", PREFOPT_OPT_FLAG, &add_bos, "0", "prepend BOS to prompts (an empty prompt becomes [BOS])"},
        {"eval-fraction", PREFOPT_OPT_DOUBLE, &eval_fraction, "0", "fraction of lines held out to --eval-out"},
        {"eval-out", PREFOPT_OPT_STRING, &eval_out, "", "HDF5 file for the held-out split"},
        {"seed", PREFOPT_OPT_LONG, &seed, "0", "seed of the held-out split (decided per line: it streams)"},
        {"assistant-only-loss", PREFOPT_OPT_FLAG, &assistant_only, "0",
         "sft messages: loss on the assistant turns only, as the template's {% generation %} blocks mark them "
         "(without such blocks: the final turn); default: every token, as TRL's SFT"},
        {"add-special-tokens", PREFOPT_OPT_FLAG, &add_special, "1",
         "text prompts and sft texts get the tokenizer's post-processor tokens (Llama: BOS), as TRL's "
         "tokenizer(prompt); chat renders never"},
        {"unpair", PREFOPT_OPT_FLAG, &unpair, "0", "pairs in, unpaired (KTO) out: chosen desirable, rejected not"},
        {"quiet", PREFOPT_OPT_FLAG, &quiet, "0", "no summary"},
    };
    char msg[1024];
    int rc = prefopt_opts_parse("pack", "Tokenize JSONL examples into an HDF5 dataset (one file per split).", opts,
                                (int)(sizeof opts / sizeof opts[0]), argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    prefopt_err err = {0};
    if (rc == PREFOPT_OPTS_ERROR)
        prefopt_err_set(&err, "%s", msg);
    else if (!*input || !*output)
        prefopt_err_set(&err, "pack needs --input FILE.jsonl and --output FILE.h5");
    else if (strcmp(trunc, "keep_end") && strcmp(trunc, "drop"))
        prefopt_err_set(&err, "--truncation '%s': expected keep_end or drop", trunc);
    else if (max_prompt < 0 || max_len < 0)
        prefopt_err_set(&err, "--max-prompt-len and --max-len must be >= 0");
    if (err.set)
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    if (prefopt_world_rank() == 0) {
        prefopt_tokenizer *tok = NULL;
        if (!*tokenizer)
            tok = prefopt_tokenizer_byte();
        else
            prefopt_tokenizer_load(tokenizer, &tok, &err);
        prefopt_chat_template *chat = NULL;
        if (!err.set && *chat_file)
            prefopt_chat_template_load_file(chat_file, tokenizer, &chat, &err);
        else if (!err.set && *tokenizer) { /* the template beside the tokenizer (a directory, or a file in one) */
            char dir[4096];
            snprintf(dir, sizeof dir, "%s", tokenizer);
            struct stat sb;
            if (!stat(dir, &sb) && !S_ISDIR(sb.st_mode)) {
                char *sl = strrchr(dir, '/');
                if (sl)
                    *sl = '\0';
                else
                    snprintf(dir, sizeof dir, ".");
            }
            prefopt_chat_template_load(dir, NULL, &chat, &err);
        }
        if (!err.set) {
            prefopt_pack_opts o = {input, output, *eval_out ? eval_out : NULL, eval_fraction, (uint64_t)seed, kind,
                                   max_prompt, max_len, strcmp(trunc, "drop") ? PREFOPT_TRUNC_KEEP_END
                                                                              : PREFOPT_TRUNC_DROP,
                                   append_eos, add_bos, tok, unpair, chat, assistant_only, add_special};
            prefopt_pack_stats st;
            if (!prefopt_pack(&o, &st, &err) && !quiet)
                prefopt_pack_print_summary(stdout, &o, &st);
        }
        if (tok)
            prefopt_tokenizer_free(tok);
        prefopt_chat_template_free(chat);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    return 0;
}
