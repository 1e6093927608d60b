/* prefopt: Hugging Face chat templates, rendered as transformers' apply_chat_template renders them.
 *
 * Debian 12 has no C Jinja library, so src/tokenizer/chat_*.c interpret the subset of Jinja2 that chat templates
 * use, with the environment transformers builds (jinja2 ImmutableSandboxedEnvironment, trim_blocks and
 * lstrip_blocks on, the loopcontrols extension, the globals raise_exception and strftime_now, transformers' own
 * tojson filter, the {% generation %} block of its AssistantTracker). The variables a render sees are those of
 * apply_chat_template: messages, add_generation_prompt, tools=None, documents=None, the special tokens of
 * tokenizer_config.json (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token,
 * additional_special_tokens) and any extra variables the caller passes. A construct outside the subset, and any
 * error Jinja would raise (raise_exception included), stops the render with one line naming the template, the
 * line:column and the construct. */
#ifndef PREFOPT_CHAT_TEMPLATE_H
#define PREFOPT_CHAT_TEMPLATE_H

#include "prefopt/common.h"

#include <cjson/cJSON.h>

typedef struct prefopt_chat_template prefopt_chat_template;

/* A byte range [start, end) of a rendered string: what one {% generation %} block produced. */
typedef struct {
    size_t start, end;
} prefopt_chat_span;

/* Parses len bytes of template source (UTF-8). name is what error messages call the template (e.g.
 * "models/x/tokenizer_config.json chat_template"). Syntax errors fail here, with the line:column. */
int prefopt_chat_template_parse(const char *source, size_t len, const char *name, prefopt_chat_template **out,
                                prefopt_err *err);

/* Loads a model's template as transformers does: path is a tokenizer directory or a tokenizer_config.json.
 * Sources, first found wins: chat_template.jinja beside the config (what save_pretrained writes), then
 * tokenizer_config.json's "chat_template" (a string, or a list of {name, template}), then a processor's
 * chat_template.json beside it.
 * which selects a named template of such a list (NULL: "default"; a list without "default" and no which is an
 * error naming the names). The special tokens of tokenizer_config.json become the render's variables.
 * Returns 0 with *out set, 0 with *out NULL when the tokenizer has no template, non-zero on error. */
int prefopt_chat_template_load(const char *path, const char *which, prefopt_chat_template **out, prefopt_err *err);

/* A template chosen by the user (e.g. `pack --chat-template FILE`): a Jinja file, or a .json file loaded as above;
 * the special tokens come from the tokenizer_config.json of tokenizer_path (a tokenizer directory or a file in
 * it; NULL or "" for none) unless the .json file had its own. */
int prefopt_chat_template_load_file(const char *template_file, const char *tokenizer_path,
                                    prefopt_chat_template **out, prefopt_err *err);

void prefopt_chat_template_free(prefopt_chat_template *t);

/* The variables every render of t sees besides messages and add_generation_prompt (a JSON object: the special
 * tokens after load; empty after parse). Changed with set_var (value copied; NULL value removes the name). */
const cJSON *prefopt_chat_template_vars(const prefopt_chat_template *t);
void prefopt_chat_template_set_var(prefopt_chat_template *t, const char *name, const cJSON *value);

/* Renders messages (a JSON array of message objects) with add_generation_prompt; extra (NULL or a JSON object)
 * adds or overrides variables. On success *text is a malloc'd NUL-terminated string of *len bytes and, when spans
 * is not NULL, *spans (malloc'd, NULL when none) and *nspans hold the byte ranges of the {% generation %} blocks
 * in order. Thread-safe for concurrent renders of one template. */
int prefopt_chat_template_render(const prefopt_chat_template *t, const cJSON *messages, int add_generation_prompt,
                                 const cJSON *extra, char **text, size_t *len, prefopt_chat_span **spans,
                                 size_t *nspans, prefopt_err *err);

/* The template's source text and name. */
const char *prefopt_chat_template_source(const prefopt_chat_template *t, size_t *len);
const char *prefopt_chat_template_name(const prefopt_chat_template *t);

#endif
