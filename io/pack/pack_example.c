/* One JSONL example of pack: a parsed line's fields (text, token ids, or messages, rendered with the model's chat
 * template as TRL 1.x tokenizes them, or the ChatML fallback) -> the token ids of its prompt and completions, and
 * the label or the loss mask. Split from pack.c, which reads and checks the lines and shapes what this returns
 * (pack_internal.h); errors name the file, line and field. */
#include "pack_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int encode(ctx *c, const char *s, size_t len, int special, ids_t *out, const char *field)
{
    prefopt_err e = {0};
    if (prefopt_tokenizer_encode(c->o->tok, s, len, special, &out->v, &out->n, &out->cap, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    return 0;
}

static int encode_str(ctx *c, const char *s, int special, ids_t *out, const char *field)
{
    return encode(c, s, strlen(s), special, out, field);
}

/* mode: 0 prompt (ends with the generation prompt), 1 completion (leading assistant header omitted),
 * 2 whole conversation (no generation prompt). */
static int chat_ids(ctx *c, const cJSON *msgs, int agp, ids_t *out, const char *field);
static int render_messages(ctx *c, const cJSON *msgs, int mode, ids_t *out, const char *field)
{
    c->msgs = 1;
    if (c->o->chat) { /* a message list on its own (beside a text prompt or completion): the template renders it */
        out->n = 0;
        return chat_ids(c, msgs, mode == 0, out, field);
    }
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': message %d: expected an object with string 'role' "
                                    "and 'content'",
                            c->file, c->line, field, i);
            return 1;
        }
        if (!(mode == 1 && i == 0 && !strcmp(role->valuestring, "assistant"))) {
            if (encode_str(c, "<|im_start|>", 1, out, field) || encode_str(c, role->valuestring, 0, out, field) ||
                encode_str(c, "\n", 0, out, field))
                return 1;
        }
        if (encode_str(c, content->valuestring, 0, out, field) || encode_str(c, "<|im_end|>", 1, out, field) ||
            encode_str(c, "\n", 0, out, field))
            return 1;
    }
    if (mode == 0 && (encode_str(c, "<|im_start|>", 1, out, field) || encode_str(c, "assistant\n", 0, out, field)))
        return 1;
    return 0;
}

static int ids_from_array(ctx *c, const cJSON *a, ids_t *out, const char *field)
{
    int i = 0;
    for (const cJSON *x = a->child; x; x = x->next, i++) {
        double v = x->valuedouble;
        if (!cJSON_IsNumber(x) || v != floor(v) || v < 0 || v >= c->V) {
            if (cJSON_IsNumber(x) && v == floor(v))
                prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': token id %.0f at index %d is outside the "
                                        "vocabulary [0, %d)",
                                c->file, c->line, field, v, i, c->V);
            else
                prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': element %d is not an integer token id", c->file,
                                c->line, field, i);
            return 1;
        }
        ids_push(out, (int32_t)v);
    }
    return 0;
}

/* The special tokens Hugging Face's tokenizer(text) (add_special_tokens=True) puts around a text, from the
 * tokenizer.json post-processor (Llama-2/3: BOS first; GPT-2, Qwen: none): TRL 1.x tokenizes standard (text) prompts
 * this way. -1 where there is none or add_special_tokens is off. */
static void text_specials(const ctx *c, int *first, int *last)
{
    *first = *last = -1;
    if (c->o->add_special_tokens)
        prefopt_tokenizer_template(c->o->tok, first, last);
}

/* A field as a string, token ids, or messages; or "<name>_ids". Returns 1 on error, -1 if absent. A text prompt
 * (msg_mode 0) gets the post-processor's special tokens, as TRL's tokenizer(prompt). */
static int get_field(ctx *c, const cJSON *obj, const char *name, int msg_mode, ids_t *out);
static int text_field(ctx *c, const char *s, int msg_mode, ids_t *out, const char *fname)
{
    int first, last;
    text_specials(c, &first, &last);
    if (msg_mode != 0 || !s[0])
        first = last = -1;
    if (first >= 0)
        ids_push(out, first);
    if (encode_str(c, s, 1, out, fname))
        return 1;
    if (last >= 0)
        ids_push(out, last);
    return 0;
}


static int get_field(ctx *c, const cJSON *obj, const char *name, int msg_mode, ids_t *out)
{
    out->n = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    char idname[64];
    snprintf(idname, sizeof idname, "%s_ids", name);
    const char *fname = name;
    if (!v || cJSON_IsNull(v)) {
        v = cJSON_GetObjectItemCaseSensitive(obj, idname);
        fname = idname;
        if (!v || cJSON_IsNull(v))
            return -1;
        if (!cJSON_IsArray(v)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': expected an array of token ids", c->file, c->line,
                            fname);
            return 1;
        }
    }
    if (cJSON_IsString(v)) /* special tokens in text are the tokenizer's added tokens, as `prefopt tokenize` reads them */
        return text_field(c, v->valuestring, msg_mode, out, fname);
    if (cJSON_IsArray(v)) {
        if (v->child && cJSON_IsObject(v->child))
            return render_messages(c, v, msg_mode, out, fname);
        return ids_from_array(c, v, out, fname);
    }
    prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': expected a string, an array of token ids or a list of "
                            "messages",
                    c->file, c->line, fname);
    return 1;
}

static int has(const cJSON *o, const char *name)
{
    char idname[64];
    snprintf(idname, sizeof idname, "%s_ids", name);
    return cJSON_GetObjectItemCaseSensitive(o, name) || cJSON_GetObjectItemCaseSensitive(o, idname);
}

int prefopt_pack_line_kind(const cJSON *o)
{
    if (has(o, "chosen") || has(o, "rejected"))
        return PREFOPT_DS_PAIRS;
    if (cJSON_GetObjectItemCaseSensitive(o, "label"))
        return PREFOPT_DS_UNPAIRED;
    if (has(o, "completion") || has(o, "text") || cJSON_GetObjectItemCaseSensitive(o, "messages"))
        return PREFOPT_DS_SFT;
    return -1;
}

static int require(ctx *c, int rc, const char *name)
{
    if (rc < 0)
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s' is missing", c->file, c->line, name);
    return rc != 0;
}

/* ---- conversational examples with the model's chat template (TRL 1.x's tokenization) ------------------------- */
static int chat_ids(ctx *c, const cJSON *msgs, int agp, ids_t *out, const char *field)
{
    char *text;
    size_t len;
    prefopt_err e = {0};
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++)
        if (!cJSON_IsObject(m) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "role"))) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': message %d: expected an object with a string 'role'",
                            c->file, c->line, field, i);
            return 1;
        }
    if (prefopt_chat_template_render(c->o->chat, msgs, agp, NULL, &text, &len, NULL, NULL, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    out->n = 0;
    int bad = encode(c, text, len, 1, out, field); /* the template's markers are special tokens */
    free(text);
    return bad;
}

/* The whole conversation with the loss mask of its {% generation %} spans in mask (TRL's assistant_only_loss).
 * 2 when the template marks no span (the caller decides), 1 on error, 0 done. */
static int chat_ids_masked(ctx *c, const cJSON *msgs, ids_t *out, ids_t *mask, const char *field)
{
    char *text;
    size_t len, nspans = 0;
    prefopt_chat_span *spans = NULL;
    prefopt_err e = {0};
    if (prefopt_chat_template_render(c->o->chat, msgs, 0, NULL, &text, &len, &spans, &nspans, &e)) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
        return 1;
    }
    int rc = 2;
    if (nspans) {
        out->n = 0;
        rc = encode(c, text, len, 1, out, field);
        ids_reserve(mask, out->n);
        mask->n = out->n;
        if (!rc && prefopt_pack_span_mask(c->o->tok, text, len, out->v, out->n, spans, nspans, mask->v, &e)) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': %s", c->file, c->line, field, e.msg);
            rc = 1;
        }
        size_t ones = 0;
        for (size_t k = 0; !rc && k < mask->n; k++)
            ones += (size_t)mask->v[k];
        if (!rc && !ones) { /* TRL refuses the same */
            prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': --assistant-only-loss: the template's "
                                    "{%% generation %%} blocks mark no token of this conversation",
                            c->file, c->line, field);
            rc = 1;
        }
        c->masked = !rc;
    }
    free(text), free(spans);
    return rc;
}

static int is_messages(const cJSON *v) { return cJSON_IsArray(v) && v->child && cJSON_IsObject(v->child); }

/* the messages [from, to) of a list, as a new list of references (the arena frees it with the line) */
static cJSON *msg_slice(const cJSON *a, int from, int to, const cJSON *more)
{
    cJSON *r = cJSON_CreateArray();
    int i = 0;
    for (const cJSON *m = a ? a->child : NULL; m; m = m->next, i++)
        if (i >= from && (to < 0 || i < to))
            cJSON_AddItemReferenceToArray(r, (cJSON *)m);
    for (const cJSON *m = more ? more->child : NULL; m; m = m->next)
        cJSON_AddItemReferenceToArray(r, (cJSON *)m);
    return r;
}

/* completion ids = ids(render(prompt + completion)) without the prompt's ids (render(prompt, agp=True)) */
static int chat_completion(ctx *c, const cJSON *prompt, const ids_t *pids, const cJSON *comp, ids_t *out,
                           const char *field)
{
    cJSON *all = msg_slice(prompt, 0, -1, comp);
    int bad = chat_ids(c, all, 0, out, field);
    cJSON_Delete(all);
    if (bad)
        return 1;
    /* TRL slices at the prompt's length even when the prompt tokenizes differently at the end of the whole
     * conversation (e.g. Llama-3's "\n\n" before the answer's first word), and warns: so do we, and count them */
    if (out->n < pids->n || (pids->n && memcmp(out->v, pids->v, pids->n * sizeof(int32_t))))
        c->mismatch = 1;
    if (out->n < pids->n)
        out->n = pids->n;
    memmove(out->v, out->v + pids->n, (out->n - pids->n) * sizeof(int32_t));
    out->n -= pids->n;
    return 0;
}

/* prompt messages + completion message lists -> fl[0] and fl[1..n] */
static int chat_fields(ctx *c, const cJSON *prompt, const cJSON *const comps[], int n, const char *const names[],
                       ids_t *const fl[])
{
    if (!prompt->child) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field '%s': no prompt messages (chosen and rejected share no leading "
                                "message)",
                        c->file, c->line, names[0]);
        return 1;
    }
    c->conv = c->msgs = 1;
    if (chat_ids(c, prompt, 1, fl[0], names[0]))
        return 1;
    for (int k = 0; k < n; k++)
        if (chat_completion(c, prompt, fl[0], comps[k], fl[k + 1], names[k + 1]))
            return 1;
    return 0;
}

/* 1 error, 0 done, 2 not conversational (the caller's other paths apply) */
static int parse_chat(ctx *c, const cJSON *o, prefopt_ds_kind kind, ids_t *const fl[])
{
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (kind == PREFOPT_DS_PAIRS) {
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "chosen"), *rj = cJSON_GetObjectItemCaseSensitive(o, "rejected");
        if (!is_messages(ch) || !is_messages(rj))
            return 2;
        static const char *const names[] = {"prompt", "chosen", "rejected"};
        if (is_messages(pr)) {
            const cJSON *comps[2] = {ch, rj};
            return chat_fields(c, pr, comps, 2, names, fl);
        }
        /* implicit prompt (TRL's extract_prompt): the leading messages chosen and rejected share; a text prompt
         * beside message lists (UltraFeedback-binarized) is replaced by them, or is the user turn when none */
        int k = 0;
        const cJSON *a = ch->child, *b = rj->child;
        while (a && b && a->next && b->next && cJSON_Compare(a, b, 1))
            a = a->next, b = b->next, k++;
        cJSON *pm;
        if (!k && cJSON_IsString(pr)) {
            pm = cJSON_CreateArray();
            cJSON *u = cJSON_CreateObject();
            cJSON_AddStringToObject(u, "role", "user");
            cJSON_AddStringToObject(u, "content", pr->valuestring);
            cJSON_AddItemToArray(pm, u);
        } else {
            pm = msg_slice(ch, 0, k, NULL);
        }
        cJSON *cs = msg_slice(ch, k, -1, NULL), *rs = msg_slice(rj, k, -1, NULL);
        const cJSON *comps[2] = {cs, rs};
        int bad = chat_fields(c, pm, comps, 2, names, fl);
        cJSON_Delete(pm), cJSON_Delete(cs), cJSON_Delete(rs);
        return bad;
    }
    if (kind == PREFOPT_DS_UNPAIRED || (kind == PREFOPT_DS_SFT && !cJSON_GetObjectItemCaseSensitive(o, "messages"))) {
        const cJSON *cm = cJSON_GetObjectItemCaseSensitive(o, "completion");
        if (!is_messages(pr) || !is_messages(cm))
            return 2;
        static const char *const names[] = {"prompt", "completion"};
        const cJSON *comps[1] = {cm};
        return chat_fields(c, pr, comps, 1, names, fl);
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (kind != PREFOPT_DS_SFT || !is_messages(msgs))
        return 2;
    int n = cJSON_GetArraySize(msgs);
    const cJSON *last = cJSON_GetArrayItem(msgs, n - 1), *role = cJSON_GetObjectItemCaseSensitive(last, "role");
    if (!cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) {
        prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': expected a list of messages ending with an "
                                "'assistant' message",
                        c->file, c->line);
        return 1;
    }
    c->conv = c->msgs = 1;
    fl[0]->n = 0;
    if (!c->o->assistant_only_loss) /* TRL's language modelling on the conversation: every token */
        return chat_ids(c, msgs, 0, fl[1], "messages");
    /* TRL's assistant_only_loss: the tokens of every assistant turn, as the template's {% generation %} blocks
     * mark them; a template without such blocks (most) leaves the final turn as the completion, below */
    int rc = chat_ids_masked(c, msgs, fl[1], fl[2], "messages");
    if (rc != 2)
        return rc;
    int i = 0;
    for (const cJSON *m = msgs->child; m && m != last; m = m->next, i++) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (cJSON_IsString(r) && !strcmp(r->valuestring, "assistant")) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': message %d is an earlier assistant turn: "
                                    "--assistant-only-loss needs a chat template with {%% generation %%} blocks to "
                                    "find every assistant turn (as TRL does), and %s has none: pass one with "
                                    "--chat-template, or pack without --assistant-only-loss for TRL's all-token loss",
                            c->file, c->line, i, prefopt_chat_template_name(c->o->chat));
            return 1;
        }
    }
    static const char *const names[] = {"messages", "messages"};
    cJSON *pm = msg_slice(msgs, 0, n - 1, NULL), *cm = msg_slice(msgs, n - 1, -1, NULL);
    const cJSON *comps[1] = {cm};
    int bad = chat_fields(c, pm, comps, 1, names, fl);
    cJSON_Delete(pm), cJSON_Delete(cm);
    return bad;
}

/* Standard (text) prompt and completions, as TRL 1.x tokenizes them: a completion's ids are those of
 * prompt + completion after the prompt's length (a SentencePiece completion tokenized alone would start with a
 * lone "▁"); a completion given as ids or messages keeps its own. */
static int rejoin_text(ctx *c, const cJSON *o, const char *const names[], int n, ids_t *const fl[])
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, names[0]);
    if (!cJSON_IsString(p) || !p->valuestring[0])
        return 0;
    size_t pl = strlen(p->valuestring);
    int first, last;
    text_specials(c, &first, &last);
    for (int k = 1; k <= n; k++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, names[k]);
        if (!cJSON_IsString(x))
            continue;
        size_t xl = strlen(x->valuestring);
        char *both = prefopt_xmalloc(pl + xl + 1, "prompt + completion");
        memcpy(both, p->valuestring, pl);
        memcpy(both + pl, x->valuestring, xl + 1);
        fl[k]->n = 0;
        if (first >= 0)
            ids_push(fl[k], first);
        int bad = encode(c, both, pl + xl, 1, fl[k], names[k]);
        free(both);
        if (bad)
            return 1;
        if (last >= 0)
            ids_push(fl[k], last);
        if (fl[k]->n < fl[0]->n || (fl[0]->n && memcmp(fl[k]->v, fl[0]->v, fl[0]->n * sizeof(int32_t))))
            c->mismatch = 1;
        size_t cut = fl[k]->n < fl[0]->n ? fl[k]->n : fl[0]->n;
        memmove(fl[k]->v, fl[k]->v + cut, (fl[k]->n - cut) * sizeof(int32_t));
        fl[k]->n -= cut;
    }
    return 0;
}

/* Fills fields[0..] (prompt first) and label from one parsed line of the given kind. */
int prefopt_pack_parse_example(ctx *c, const cJSON *o, prefopt_ds_kind kind, ids_t *const fl[], uint8_t *label)
{
    c->conv = c->msgs = c->mismatch = c->masked = 0;
    int chat = 2;
    if (c->o->chat && (chat = parse_chat(c, o, kind, fl)) == 1)
        return 1;
    if (chat == 0 && kind != PREFOPT_DS_UNPAIRED)
        return 0;
    if (kind == PREFOPT_DS_PAIRS) {
        int rp = get_field(c, o, "prompt", 0, fl[0]);
        if (rp > 0)
            return 1;
        int mode = rp < 0 ? 2 : 1;
        if (require(c, get_field(c, o, "chosen", mode, fl[1]), "chosen") ||
            require(c, get_field(c, o, "rejected", mode, fl[2]), "rejected"))
            return 1;
        static const char *const names[] = {"prompt", "chosen", "rejected"};
        if (rp == 0 && rejoin_text(c, o, names, 2, fl))
            return 1;
        if (rp < 0) { /* implicit prompt: the common prefix */
            size_t k = 0;
            while (k < fl[1]->n && k < fl[2]->n && fl[1]->v[k] == fl[2]->v[k])
                k++;
            if (k == fl[1]->n && k == fl[2]->n) { /* the whole text would become the prompt */
                prefopt_err_set(c->err, "%s:%" PRId64 ": 'chosen' and 'rejected' are the same and there is no "
                                        "'prompt' to split them: nothing to prefer",
                                c->file, c->line);
                return 1;
            }
            for (size_t i = 0; i < k; i++)
                ids_push(fl[0], fl[1]->v[i]);
            for (int f = 1; f <= 2 && k; f++) { /* (k == 0: v may be NULL) */
                memmove(fl[f]->v, fl[f]->v + k, (fl[f]->n - k) * sizeof(int32_t));
                fl[f]->n -= k;
            }
        }
        return 0;
    }
    if (kind == PREFOPT_DS_UNPAIRED) {
        static const char *const names[] = {"prompt", "completion"};
        if (chat != 0 && (require(c, get_field(c, o, "prompt", 0, fl[0]), "prompt") ||
                          require(c, get_field(c, o, "completion", 1, fl[1]), "completion") ||
                          rejoin_text(c, o, names, 1, fl)))
            return 1;
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "label");
        if (cJSON_IsBool(l))
            *label = cJSON_IsTrue(l) ? 1 : 0;
        else if (cJSON_IsNumber(l) && (l->valuedouble == 0 || l->valuedouble == 1))
            *label = (uint8_t)l->valuedouble;
        else {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'label': %s", c->file, c->line,
                            l ? "expected true/false or 1/0" : "is missing");
            return 1;
        }
        return 0;
    }
    /* sft */
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (msgs) {
        int n = cJSON_GetArraySize(msgs);
        const cJSON *last = cJSON_IsArray(msgs) && n ? cJSON_GetArrayItem(msgs, n - 1) : NULL;
        const cJSON *role = last ? cJSON_GetObjectItemCaseSensitive(last, "role") : NULL;
        if (!last || !cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) {
            prefopt_err_set(c->err, "%s:%" PRId64 ": field 'messages': expected a list of messages ending with an "
                                    "'assistant' message",
                            c->file, c->line);
            return 1;
        }
        /* render the prompt from a detached copy without the last message */
        cJSON *head = cJSON_CreateArray();
        for (const cJSON *m = msgs->child; m != last; m = m->next)
            cJSON_AddItemReferenceToArray(head, (cJSON *)m);
        fl[0]->n = fl[1]->n = 0;
        int bad = render_messages(c, head, 0, fl[0], "messages");
        cJSON_Delete(head);
        if (bad)
            return 1;
        cJSON *tail = cJSON_CreateArray();
        cJSON_AddItemReferenceToArray(tail, (cJSON *)last);
        bad = render_messages(c, tail, 1, fl[1], "messages");
        cJSON_Delete(tail);
        return bad;
    }
    if (has(o, "text")) { /* TRL's SFT: tokenizer(text); a leading special (BOS) is context, not trained */
        int first, last;
        text_specials(c, &first, &last);
        fl[0]->n = 0;
        if (require(c, get_field(c, o, "text", 2, fl[1]), "text"))
            return 1;
        if (first >= 0)
            ids_push(fl[0], first);
        if (last >= 0)
            ids_push(fl[1], last);
        return 0;
    }
    static const char *const names[] = {"prompt", "completion"};
    return require(c, get_field(c, o, "prompt", 0, fl[0]), "prompt") ||
           require(c, get_field(c, o, "completion", 1, fl[1]), "completion") || rejoin_text(c, o, names, 1, fl);
}
