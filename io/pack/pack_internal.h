/* Private to io/pack. */
#ifndef PREFOPT_PACK_INTERNAL_H
#define PREFOPT_PACK_INTERNAL_H

#include "prefopt/chat_template.h"
#include "prefopt/tokenizer.h"

/* mask[k] (k < n) = 1 for the tokens of ids (the tokenization of text) that hold a byte of one of the spans, as
 * transformers' return_assistant_tokens_mask marks them; 0 elsewhere. Fails with err set when the tokenizer's
 * decode does not reproduce the text, so that the tokens cannot be placed (span_mask.c). */
int prefopt_pack_span_mask(const prefopt_tokenizer *t, const char *text, size_t len, const int32_t *ids, size_t n,
                           const prefopt_chat_span *spans, size_t nspans, int32_t *mask, prefopt_err *err);

#endif
