/* prefopt: JSONL examples -> pre-tokenized HDF5 dataset files (format in dataset.h). Serial and streaming:
 * memory does not grow with the input.
 *
 * Input, one JSON object a line (blank lines are skipped):
 *   pairs:     {"prompt", "chosen", "rejected"}; without "prompt", the longest common token prefix of chosen
 *              and rejected is the prompt (HH-RLHF style)
 *   unpaired:  {"prompt", "completion", "label"}  label: true/false or 1/0
 *   sft:       {"prompt", "completion"} or {"text"} (empty prompt) or {"messages": [...]} (the last message,
 *              from the assistant, is the completion; the ones before are the prompt)
 * Each of prompt/chosen/rejected/completion/text may be a string (tokenized; special tokens written in the text are
 * matched as the tokenizer's added tokens, as Hugging Face tokenizers and `prefopt tokenize` do), an array of token
 * ids, or a list of chat messages {"role", "content"}; "<field>_ids" may give the ids instead. A text completion
 * after a text prompt is tokenized as TRL 1.x does: the ids of prompt + completion after the prompt's length.
 * With the model's chat template (opts.chat, prefopt/chat_template.h) messages are tokenized as TRL 1.x does: the
 * prompt rendered with add_generation_prompt=True, each completion's ids = ids(render(prompt + completion)) minus
 * the prompt's ids (cut at the prompt's length, as TRL does, when a token spans the boundary; the summary counts
 * those), no EOS appended (the template ends the turn); an implicit prompt (no "prompt", or a text "prompt"
 * beside message lists, the UltraFeedback layout) is the longest common run of leading messages of chosen and
 * rejected; sft "messages" are, as TRL's SFT does by default, one completion of the whole rendered conversation
 * (loss on every token, empty prompt); with assistant_only_loss, as TRL's assistant_only_loss does, the loss mask
 * (completion/mask) marks the tokens of the template's {% generation %} blocks (every assistant turn; transformers'
 * return_assistant_tokens_mask); with a template that has no such block the prompt is every message but the last
 * and the completion the final assistant turn (a conversation with an earlier assistant turn is then refused).
 * Under assistant_only_loss every sft example gets a mask (all ones for text and prompt/completion lines).
 * Without a template (opts.chat NULL) messages are rendered with the ChatML template:
 *   every message:       <|im_start|>{role}\n{content}<|im_end|>\n
 *   a prompt ends with:  <|im_start|>assistant\n   (the generation prompt)
 *   a completion list starting with an assistant message omits that message's header (the prompt holds it).
 * The markers are tokenized with special tokens allowed (one id each where the tokenizer defines them), the
 * contents without.
 * Then: BOS is prepended to the prompt, even an empty one (add_bos), EOS appended to each completion not already ending in it
 * (append_eos), and lengths are enforced: truncation "keep_end" keeps the last max_prompt_len tokens of the prompt
 * and cuts each completion to max_len - prompt (examples whose prompt alone reaches max_len are dropped);
 * truncation "drop" drops any example over either limit. Examples with an empty completion are dropped.
 * unpair turns each pair into two KTO examples, (prompt, chosen, desirable) and (prompt, rejected, undesirable),
 * as TRL's unpair_preference_dataset does; kept/token counts then count the unpaired examples. */
#ifndef PREFOPT_PACK_H
#define PREFOPT_PACK_H

#include "prefopt/chat_template.h"
#include "prefopt/dataset.h"
#include "prefopt/tokenizer.h"

#include <stdio.h>

enum { PREFOPT_TRUNC_KEEP_END = 0, PREFOPT_TRUNC_DROP = 1 };

typedef struct {
    const char *input;       /* JSONL file */
    const char *output;      /* HDF5 file, written as <output>.tmp.<pid> and renamed when complete */
    const char *eval_output; /* held-out split, or NULL */
    double eval_fraction;    /* each line goes to eval_output with this probability, decided by (seed, line) */
    uint64_t seed;
    const char *kind;        /* "auto" (from the first example), "pairs", "unpaired" or "sft" */
    int max_prompt_len;      /* 0: no limit */
    int max_len;             /* prompt + each completion; 0: no limit */
    int truncation;          /* PREFOPT_TRUNC_* */
    int append_eos, add_bos;
    const prefopt_tokenizer *tok;
    int unpair;              /* pairs input -> unpaired output: (prompt, chosen, 1) and (prompt, rejected, 0) */
    const prefopt_chat_template *chat; /* the model's chat template; NULL: the ChatML rendering above */
    int assistant_only_loss; /* sft "messages": loss on the assistant turns only (else, TRL's default, on all) */
    int add_special_tokens;  /* text prompts and sft texts get the tokenizer.json post-processor's special tokens
                              * (Llama: BOS), as TRL 1.x's tokenizer(prompt) does; chat renders never do */
} prefopt_pack_opts;

enum { PREFOPT_PACK_DROP_PROMPT = 0, PREFOPT_PACK_DROP_LENGTH, PREFOPT_PACK_DROP_EMPTY, PREFOPT_PACK_NDROP };

typedef struct {
    int64_t lines, blank;
    int64_t kept[2];                        /* train, eval */
    int64_t dropped[PREFOPT_PACK_NDROP];    /* by reason */
    int64_t prompt_truncated, completion_truncated;
    int64_t tokens[2][PREFOPT_DS_MAX_FIELDS];
    int64_t len_p50, len_p90, len_p99, len_max; /* packed row length (prompt + all completions) of kept examples */
    int64_t conversational;                     /* examples whose messages were rendered with a chat template */
    int64_t prompt_mismatch; /* of those, examples whose prompt ids are not the start of prompt + completion's */
    prefopt_ds_kind kind;
    double bytes, seconds, cpu_seconds; /* input bytes, wall and CPU time of prefopt_pack */
} prefopt_pack_stats;

/* Serial. On bad input fills err ("file:line: field 'x': ...") and leaves no output file. */
int prefopt_pack(const prefopt_pack_opts *o, prefopt_pack_stats *st, prefopt_err *err);
void prefopt_pack_print_summary(FILE *f, const prefopt_pack_opts *o, const prefopt_pack_stats *st);

#endif
