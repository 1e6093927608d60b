/* prefopt: the public chat-template API (include/prefopt/chat_template.h): parsing, loading a model's template
 * the way transformers finds it, and rendering with apply_chat_template's variables. */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct prefopt_chat_template {
    char *name;
    char *src; /* newline-normalised, without the one trailing newline Jinja drops */
    size_t srclen;
    char *orig; /* as given */
    size_t origlen;
    cj_arena arena;
    cj_node *root;
    cJSON *vars;
};

#define PARSE_LIMIT ((size_t)256 << 20)
#define RENDER_LIMIT ((size_t)1 << 30)

int prefopt_chat_template_parse(const char *source, size_t len, const char *name, prefopt_chat_template **out,
                                prefopt_err *err)
{
    *out = NULL;
    if (!name)
        name = "(string)";
    if (!cj_u8_valid(source, len) || memchr(source, '\0', len)) {
        prefopt_err_set(err, "chat template %s: not valid UTF-8 text", name);
        return 1;
    }
    prefopt_chat_template *t = calloc(1, sizeof *t);
    if (!t) {
        prefopt_err_set(err, "chat template %s: out of memory", name);
        return 1;
    }
    t->name = strdup(name);
    t->orig = malloc(len + 1);
    t->src = malloc(len + 1);
    t->vars = cJSON_CreateObject();
    if (!t->name || !t->orig || !t->src || !t->vars) {
        prefopt_chat_template_free(t);
        prefopt_err_set(err, "chat template %s: out of memory", name);
        return 1;
    }
    memcpy(t->orig, source, len);
    t->orig[len] = '\0';
    t->origlen = len;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) { /* \r\n and \r are newlines (jinja's newline_re) */
        if (source[i] == '\r') {
            t->src[k++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n')
                i++;
        } else {
            t->src[k++] = source[i];
        }
    }
    if (k && t->src[k - 1] == '\n') /* keep_trailing_newline=False */
        k--;
    t->src[k] = '\0';
    t->srclen = k;
    cj_arena_init(&t->arena, PARSE_LIMIT);
    cj_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        prefopt_chat_template_free(t);
        prefopt_err_set(err, "chat template %s: out of memory", name);
        return 1;
    }
    c->A = &t->arena;
    c->err = err;
    c->tname = t->name;
    c->src = t->src;
    c->srclen = t->srclen;
    if (setjmp(c->jb)) {
        free(c);
        prefopt_chat_template_free(t);
        return 1;
    }
    size_t ntok;
    cj_tok *toks = cj_lex(c, t->src, t->srclen, &ntok);
    t->root = cj_parse(c, toks, ntok);
    free(c);
    *out = t;
    return 0;
}

void prefopt_chat_template_free(prefopt_chat_template *t)
{
    if (!t)
        return;
    cj_arena_free(&t->arena);
    cJSON_Delete(t->vars);
    free(t->name);
    free(t->src);
    free(t->orig);
    free(t);
}

const cJSON *prefopt_chat_template_vars(const prefopt_chat_template *t) { return t->vars; }

void prefopt_chat_template_set_var(prefopt_chat_template *t, const char *name, const cJSON *value)
{
    cJSON_DeleteItemFromObjectCaseSensitive(t->vars, name);
    if (value)
        cJSON_AddItemToObject(t->vars, name, cJSON_Duplicate(value, 1));
}

const char *prefopt_chat_template_source(const prefopt_chat_template *t, size_t *len)
{
    if (len)
        *len = t->origlen;
    return t->orig;
}

const char *prefopt_chat_template_name(const prefopt_chat_template *t) { return t->name; }

int prefopt_chat_template_render(const prefopt_chat_template *t, const cJSON *messages, int add_generation_prompt,
                                 const cJSON *extra, char **text, size_t *len, prefopt_chat_span **spans,
                                 size_t *nspans, prefopt_err *err)
{
    *text = NULL;
    if (len)
        *len = 0;
    if (spans)
        *spans = NULL;
    if (nspans)
        *nspans = 0;
    if (messages && !cJSON_IsArray(messages)) {
        prefopt_err_set(err, "chat template %s: messages must be a JSON array", t->name);
        return 1;
    }
    if (extra && !cJSON_IsObject(extra)) {
        prefopt_err_set(err, "chat template %s: the extra variables must be a JSON object", t->name);
        return 1;
    }
    cj_arena arena;
    cj_arena_init(&arena, RENDER_LIMIT);
    cj_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        prefopt_err_set(err, "chat template %s: out of memory", t->name);
        return 1;
    }
    c->A = &arena;
    c->err = err;
    c->tname = t->name;
    c->src = t->src;
    c->srclen = t->srclen;
    if (setjmp(c->jb)) {
        cj_arena_free(&arena);
        free(c);
        return 1;
    }
    cj_buf top = {0};
    cj_put(c, &top, "", 0);
    c->out = c->top = &top;
    cj_val *vars = cj_dict_new(c, CJ_DICT);
    for (const cJSON *e = t->vars->child; e; e = e->next)
        cj_dict_set(c, vars, cj_str0(c, e->string), cj_from_json(c, e));
    if (extra)
        for (const cJSON *e = extra->child; e; e = e->next)
            cj_dict_set(c, vars, cj_str0(c, e->string), cj_from_json(c, e));
    cj_dict_set(c, vars, cj_str0(c, "messages"), messages ? cj_from_json(c, messages) : cj_list(c, 0, 0));
    cj_dict_set(c, vars, cj_str0(c, "tools"), &cj_none_v);
    cj_dict_set(c, vars, cj_str0(c, "documents"), &cj_none_v);
    cj_dict_set(c, vars, cj_str0(c, "add_generation_prompt"), cj_bool(add_generation_prompt));
    if (extra) /* tools/documents given by the caller win over None */
        for (const char *const *k = (const char *const[]){"tools", "documents", NULL}; *k; k++) {
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(extra, *k);
            if (e)
                cj_dict_set(c, vars, cj_str0(c, *k), cj_from_json(c, e));
        }
    cj_render_root(c, t->root, vars);
    char *o = malloc(top.n + 1);
    prefopt_chat_span *sp = NULL;
    if (spans && c->nspans)
        sp = malloc(c->nspans * sizeof *sp);
    if (!o || (spans && c->nspans && !sp)) {
        free(o);
        free(sp);
        cj_arena_free(&arena);
        free(c);
        prefopt_err_set(err, "chat template %s: out of memory", t->name);
        return 1;
    }
    memcpy(o, top.p, top.n + 1);
    *text = o;
    if (len)
        *len = top.n;
    if (spans) {
        if (c->nspans)
            memcpy(sp, c->spans, c->nspans * sizeof *sp);
        *spans = sp;
        *nspans = c->nspans;
    }
    cj_arena_free(&arena);
    free(c);
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------------------------------- */
static char *read_file(const char *path, size_t *len, prefopt_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            prefopt_err_set(err, "%s: out of memory", path);
            return NULL;
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        if (cap > ((size_t)256 << 20)) {
            free(buf);
            fclose(f);
            prefopt_err_set(err, "%s: larger than 256 MiB", path);
            return NULL;
        }
        char *nb = realloc(buf, cap * 2);
        if (!nb)
            free(buf);
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        prefopt_err_set(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static cJSON *read_json(const char *path, prefopt_err *err)
{
    size_t n;
    char *text = read_file(path, &n, err);
    if (!text)
        return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!j) {
        long line = 1;
        for (const char *p = text; end && p < end; p++)
            line += *p == '\n';
        prefopt_err_set(err, "%s: line %ld: not valid JSON", path, line);
    }
    free(text);
    return j;
}

static int is_file(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

/* a special token of tokenizer_config.json: a string, or an AddedToken object with "content" */
static const char *token_text(const cJSON *v)
{
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c))
            return c->valuestring;
    }
    return NULL;
}

static void add_special_tokens(prefopt_chat_template *t, const cJSON *cfg)
{
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                                       "cls_token", "mask_token", NULL};
    for (int i = 0; keys[i]; i++) {
        const char *s = token_text(cJSON_GetObjectItemCaseSensitive(cfg, keys[i]));
        if (s)
            cJSON_AddStringToObject(t->vars, keys[i], s);
    }
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens");
    if (cJSON_IsArray(add) && cJSON_GetArraySize(add) > 0) {
        cJSON *l = cJSON_AddArrayToObject(t->vars, "additional_special_tokens");
        for (const cJSON *e = add->child; e; e = e->next) {
            const char *s = token_text(e);
            if (s)
                cJSON_AddItemToArray(l, cJSON_CreateString(s));
        }
    }
}

/* the template in a "chat_template" member: a string or a list of {name, template} */
static int pick_template(const cJSON *ct, const char *which, const char *path, const char **src, prefopt_err *err)
{
    *src = NULL;
    if (!ct || cJSON_IsNull(ct))
        return 0;
    if (cJSON_IsString(ct)) {
        if (which && strcmp(which, "default")) {
            prefopt_err_set(err, "%s: chat_template: there is one template, not one named '%s'", path, which);
            return 1;
        }
        *src = ct->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(ct)) {
        prefopt_err_set(err, "%s: chat_template must be a string or a list of {name, template}", path);
        return 1;
    }
    const char *want = which ? which : "default";
    char names[512] = "";
    int i = 0;
    for (const cJSON *e = ct->child; e; e = e->next, i++) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name"),
                    *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (!cJSON_IsString(nm) || !cJSON_IsString(tp)) {
            prefopt_err_set(err, "%s: chat_template[%d] needs a string \"name\" and a string \"template\"", path, i);
            return 1;
        }
        if (!strcmp(nm->valuestring, want)) {
            *src = tp->valuestring;
            return 0;
        }
        size_t k = strlen(names);
        snprintf(names + k, sizeof names - k, "%s'%s'", k ? ", " : "", nm->valuestring);
    }
    prefopt_err_set(err, "%s: chat_template has no template named '%s' (it has %s)", path, want, names);
    return 1;
}

int prefopt_chat_template_load(const char *path, const char *which, prefopt_chat_template **out, prefopt_err *err)
{
    *out = NULL;
    char dir[4096], cfgpath[4200], jinja[4200], jsonp[4200];
    struct stat st;
    if (stat(path, &st)) {
        prefopt_err_set(err, "%s: %s", path, strerror(errno));
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(cfgpath, sizeof cfgpath, "%s/tokenizer_config.json", dir);
    } else {
        snprintf(dir, sizeof dir, "%s", path);
        char *sl = strrchr(dir, '/');
        if (sl)
            *sl = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        snprintf(cfgpath, sizeof cfgpath, "%s", path);
    }
    snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", dir);
    snprintf(jsonp, sizeof jsonp, "%s/chat_template.json", dir);
    cJSON *cfg = NULL;
    if (is_file(cfgpath)) {
        cfg = read_json(cfgpath, err);
        if (!cfg)
            return 1;
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            prefopt_err_set(err, "%s: not a JSON object", cfgpath);
            return 1;
        }
    }
    char name[4400];
    int rc = 1;
    prefopt_chat_template *t = NULL;
    if (is_file(jinja)) {
        /* transformers' save_pretrained writes the template here; it wins over tokenizer_config.json's */
        size_t n;
        char *text = read_file(jinja, &n, err);
        if (!text)
            goto done;
        if (which && strcmp(which, "default")) {
            prefopt_err_set(err, "%s: holds one template, not one named '%s'", jinja, which);
            free(text);
            goto done;
        }
        rc = prefopt_chat_template_parse(text, n, jinja, &t, err);
        free(text);
    } else {
        const char *src = NULL;
        if (cfg && pick_template(cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), which, cfgpath, &src, err))
            goto done;
        snprintf(name, sizeof name, "%s chat_template", cfgpath);
        cJSON *j = NULL;
        if (!src && is_file(jsonp)) { /* a processor's chat_template.json */
            j = read_json(jsonp, err);
            if (!j)
                goto done;
            if (pick_template(cJSON_GetObjectItemCaseSensitive(j, "chat_template"), which, jsonp, &src, err)) {
                cJSON_Delete(j);
                goto done;
            }
            snprintf(name, sizeof name, "%s chat_template", jsonp);
        }
        if (!src) {
            cJSON_Delete(j);
            rc = 0; /* no template */
            goto done;
        }
        rc = prefopt_chat_template_parse(src, strlen(src), name, &t, err);
        cJSON_Delete(j);
    }
    if (!rc && cfg)
        add_special_tokens(t, cfg);
done:
    cJSON_Delete(cfg);
    if (rc) {
        prefopt_chat_template_free(t);
        return 1;
    }
    *out = t;
    return 0;
}

int prefopt_chat_template_load_file(const char *template_file, const char *tokenizer_path,
                                    prefopt_chat_template **out, prefopt_err *err)
{
    *out = NULL;
    size_t n = strlen(template_file);
    if (n > 5 && !strcmp(template_file + n - 5, ".json")) { /* a tokenizer_config.json or chat_template.json */
        prefopt_chat_template *t = NULL;
        if (prefopt_chat_template_load(template_file, NULL, &t, err))
            return 1;
        if (!t) {
            prefopt_err_set(err, "%s: has no chat_template", template_file);
            return 1;
        }
        *out = t;
    } else {
        size_t len;
        char *text = read_file(template_file, &len, err);
        if (!text)
            return 1;
        int rc = prefopt_chat_template_parse(text, len, template_file, out, err);
        free(text);
        if (rc)
            return 1;
    }
    if (tokenizer_path && *tokenizer_path && !cJSON_GetArraySize((*out)->vars)) {
        /* the special tokens of the tokenizer the data is packed with */
        char cfgpath[4200];
        struct stat st;
        if (!stat(tokenizer_path, &st) && S_ISDIR(st.st_mode))
            snprintf(cfgpath, sizeof cfgpath, "%s/tokenizer_config.json", tokenizer_path);
        else {
            snprintf(cfgpath, sizeof cfgpath, "%s", tokenizer_path);
            char *sl = strrchr(cfgpath, '/');
            snprintf(sl ? sl + 1 : cfgpath, sizeof cfgpath - (size_t)(sl ? sl + 1 - cfgpath : 0),
                     "tokenizer_config.json");
        }
        if (is_file(cfgpath)) {
            cJSON *cfg = read_json(cfgpath, err);
            if (!cfg) {
                prefopt_chat_template_free(*out);
                *out = NULL;
                return 1;
            }
            add_special_tokens(*out, cfg);
            cJSON_Delete(cfg);
        }
    }
    return 0;
}
