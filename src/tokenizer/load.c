/* prefopt tokenizers: loading a Hugging Face tokenizer.json (cJSON) into the BPE pipeline of tokenizer_bpe.c.
 * Everything the pipeline cannot reproduce exactly is refused with a message naming the field, so that a
 * dataset is never packed with ids that differ from the model's own tokenizer. */
#define _GNU_SOURCE
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The GPT-2 pre-tokenization pattern that ByteLevel(use_regex) applies (tokenizers' byte_level.rs). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static char *read_all(const char *path, size_t *len, prefopt_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) || st.st_size < 0 || st.st_size > (1l << 30)) {
        prefopt_err_set(err, "%s: cannot read (not a regular file, or over 1 GiB)", path);
        fclose(f);
        return NULL;
    }
    char *buf = prefopt_xmalloc((size_t)st.st_size + 1, "tokenizer file");
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (got != (size_t)st.st_size) {
        prefopt_err_set(err, "%s: short read (%zu of %lld bytes)", path, got, (long long)st.st_size);
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static char *xstrdup(const char *s) { return strcpy(prefopt_xmalloc(strlen(s) + 1, "tokenizer string"), s); }

/* A {"String": s} or {"Regex": r} pattern. Returns the text and sets *is_regex, NULL if malformed. */
static const char *jpattern(const cJSON *o, int *is_regex)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = jstr(p, "String");
    *is_regex = 0;
    if (s)
        return s;
    *is_regex = 1;
    return jstr(p, "Regex");
}

static void *grow(void *p, int n, size_t size)
{
    void *q = realloc(p, (size_t)(n + 1) * size);
    if (!q)
        prefopt_die("out of memory loading a tokenizer");
    memset((char *)q + (size_t)n * size, 0, size);
    return q;
}

/* Oniguruma (what Hugging Face tokenizers runs) reads \s as the Unicode White_Space property; PCRE2 10.42's \s
 * also takes U+180E and similar historical spaces. Spelling the property out gives Oniguruma's matches. */
static char *onig_spaces(const char *pat)
{
    size_t n = strlen(pat), cnt = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (pat[i] == '\\') {
            cnt += pat[i + 1] == 's' || pat[i + 1] == 'S';
            i++;
        }
    char *o = prefopt_xmalloc(n + cnt * 16 + 1, "pattern"), *w = o;
    for (size_t i = 0; i < n; i++) {
        if (pat[i] == '\\' && i + 1 < n) {
            if (pat[i + 1] == 's' || pat[i + 1] == 'S')
                w += sprintf(w, "\\%c{White_Space}", pat[i + 1] == 's' ? 'p' : 'P');
            else {
                *w++ = pat[i];
                *w++ = pat[i + 1];
            }
            i++;
        } else {
            *w++ = pat[i];
        }
    }
    *w = '\0';
    return o;
}

static int compile_re(tok_pre *p, const char *pat, int literal, const char *file, const char *where, prefopt_err *err)
{
    int ec;
    PCRE2_SIZE eo;
    char *px = literal ? NULL : onig_spaces(pat);
    p->re = pcre2_compile((PCRE2_SPTR)(px ? px : pat), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP), &ec, &eo, NULL);
    free(px);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        prefopt_err_set(err, "%s: %s pattern does not compile with PCRE2: %s (at offset %zu)", file, where,
                        (const char *)msg, (size_t)eo);
        return 1;
    }
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter gives the same matches */
    return 0;
}

static int prepend_scheme(const cJSON *o)
{
    const char *s = jstr(o, "prepend_scheme");
    if (s)
        return !strcmp(s, "first") ? TOK_PREPEND_FIRST : !strcmp(s, "never") ? TOK_PREPEND_NEVER : TOK_PREPEND_ALWAYS;
    return jbool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER; /* files before tokenizers 0.19 */
}

static int parse_norm(prefopt_tokenizer *t, const cJSON *n, const char *file, prefopt_err *err)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!type) {
        prefopt_err_set(err, "%s: normalizer without a \"type\"", file);
        return 1;
    }
    if (!strcmp(type, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
        if (parse_norm(t, c, file, err))
            return 1;
        return 0;
    }
    tok_norm m = {0};
    if (!strcmp(type, "Prepend") && jstr(n, "prepend")) {
        m.type = TOK_NORM_PREPEND;
        m.a = xstrdup(jstr(n, "prepend"));
    } else if (!strcmp(type, "Replace")) {
        int is_re;
        const char *pat = jpattern(n, &is_re);
        if (!pat || is_re || !jstr(n, "content") || !*pat) {
            prefopt_err_set(err, "%s: normalizer Replace with a %s pattern is not supported (string patterns only)",
                            file, is_re ? "Regex" : "missing or empty");
            return 1;
        }
        m.type = TOK_NORM_REPLACE;
        m.a = xstrdup(pat);
        m.b = xstrdup(jstr(n, "content"));
    } else if (!strcmp(type, "NFC") || !strcmp(type, "NFKC")) {
        m.type = type[2] == 'K' ? TOK_NORM_NFKC : TOK_NORM_NFC;
    } else {
        prefopt_err_set(err, "%s: normalizer type '%s' is not supported (supported: Sequence, Prepend, Replace, NFC, NFKC)",
                        file, type);
        return 1;
    }
    m.alen = m.a ? (uint32_t)strlen(m.a) : 0;
    m.blen = m.b ? (uint32_t)strlen(m.b) : 0;
    t->norm = grow(t->norm, t->nnorm, sizeof *t->norm);
    t->norm[t->nnorm++] = m;
    return 0;
}

static int parse_pre(prefopt_tokenizer *t, const cJSON *n, const char *file, prefopt_err *err)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!type) {
        prefopt_err_set(err, "%s: pre_tokenizer without a \"type\"", file);
        return 1;
    }
    if (!strcmp(type, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"))
        if (parse_pre(t, c, file, err))
            return 1;
        return 0;
    }
    if (t->npre && t->pre[t->npre - 1].type == TOK_PRE_BYTELEVEL) {
        prefopt_err_set(err, "%s: pre_tokenizer '%s' after ByteLevel is not supported (ByteLevel must come last)",
                        file, type);
        return 1;
    }
    t->pre = grow(t->pre, t->npre, sizeof *t->pre);
    tok_pre *p = &t->pre[t->npre++];
    if (!strcmp(type, "Split")) {
        static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int is_re;
        const char *pat = jpattern(n, &is_re), *beh = jstr(n, "behavior");
        p->type = TOK_PRE_SPLIT;
        p->behavior = -1;
        for (int i = 0; beh && i < 5; i++)
            if (!strcmp(beh, names[i]))
                p->behavior = i;
        if (!pat || p->behavior < 0) {
            prefopt_err_set(err, "%s: pre_tokenizer Split needs a pattern and a behavior (got behavior '%s')", file,
                            beh ? beh : "(none)");
            return 1;
        }
        p->invert = jbool(n, "invert", 0);
        return compile_re(p, pat, !is_re, file, "pre_tokenizer Split", err);
    }
    if (!strcmp(type, "ByteLevel")) {
        p->type = TOK_PRE_BYTELEVEL;
        p->add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1))
            return compile_re(p, GPT2_PATTERN, 0, file, "ByteLevel (GPT-2)", err);
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        p->type = TOK_PRE_METASPACE;
        if (!r)
            r = "\xe2\x96\x81"; /* U+2581 */
        if (!*r || strlen(r) >= sizeof p->replacement) {
            prefopt_err_set(err, "%s: pre_tokenizer Metaspace replacement must be one character", file);
            return 1;
        }
        strcpy(p->replacement, r);
        p->replen = (uint32_t)strlen(r);
        p->prepend_scheme = prepend_scheme(n);
        p->split = jbool(n, "split", 1);
        return 0;
    }
    prefopt_err_set(err, "%s: pre_tokenizer type '%s' is not supported (supported: Sequence, Split, ByteLevel, Metaspace)",
                    file, type);
    return 1;
}

static int parse_dec(prefopt_tokenizer *t, const cJSON *n, const char *file, prefopt_err *err)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!type) {
        prefopt_err_set(err, "%s: decoder without a \"type\"", file);
        return 1;
    }
    if (!strcmp(type, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(n, "decoders"))
        if (parse_dec(t, c, file, err))
            return 1;
        return 0;
    }
    tok_dec d = {0};
    if (!strcmp(type, "ByteLevel")) {
        d.type = TOK_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d.type = TOK_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d.type = TOK_DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        int is_re;
        const char *pat = jpattern(n, &is_re);
        if (!pat || is_re || !*pat || !jstr(n, "content")) {
            prefopt_err_set(err, "%s: decoder Replace with a %s pattern is not supported (string patterns only)", file,
                            is_re ? "Regex" : "missing or empty");
            return 1;
        }
        d.type = TOK_DEC_REPLACE;
        d.a = xstrdup(pat);
        d.b = xstrdup(jstr(n, "content"));
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(n, "content");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(n, "start"), *sp = cJSON_GetObjectItemCaseSensitive(n, "stop");
        if (!c || strlen(c) != 1 || !cJSON_IsNumber(st) || !cJSON_IsNumber(sp)) {
            prefopt_err_set(err, "%s: decoder Strip needs a one-byte content and numeric start/stop", file);
            return 1;
        }
        d.type = TOK_DEC_STRIP;
        d.a = xstrdup(c);
        d.start = st->valueint;
        d.stop = sp->valueint;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        d.type = TOK_DEC_METASPACE;
        d.a = xstrdup(r && *r ? r : "\xe2\x96\x81");
        d.prepend_scheme = prepend_scheme(n);
    } else {
        prefopt_err_set(err, "%s: decoder type '%s' is not supported (supported: Sequence, ByteLevel, ByteFallback, "
                             "Fuse, Replace, Strip, Metaspace)", file, type);
        return 1;
    }
    d.alen = d.a ? (uint32_t)strlen(d.a) : 0;
    d.blen = d.b ? (uint32_t)strlen(d.b) : 0;
    t->dec = grow(t->dec, t->ndec, sizeof *t->dec);
    t->dec[t->ndec++] = d;
    return 0;
}

/* post_processor: only TemplateProcessing's "single" template matters here (the specials around one text). */
static int parse_post(prefopt_tokenizer *t, const cJSON *n, const char *file, prefopt_err *err)
{
    const char *type = jstr(n, "type");
    if (!type)
        return 0;
    if (!strcmp(type, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(n, "processors"))
        if (parse_post(t, c, file, err))
            return 1;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing"))
        return 0; /* ByteLevel (offsets only), or a processor whose specials prefopt does not add */
    const cJSON *e, *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
    int seen_seq = 0;
    t->tmpl_first = t->tmpl_last = -1;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(n, "single"))
    {
        const char *name = jstr(cJSON_GetObjectItemCaseSensitive(e, "SpecialToken"), "id");
        if (!name) {
            seen_seq |= cJSON_GetObjectItemCaseSensitive(e, "Sequence") != NULL;
            continue;
        }
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, name), "ids");
        int id = cJSON_IsNumber(cJSON_GetArrayItem(ids, 0)) ? cJSON_GetArrayItem(ids, 0)->valueint
                                                             : prefopt_tokenizer_token_id(t, name);
        if (id < 0 || id >= t->vocab_size) {
            prefopt_err_set(err, "%s: post_processor special token '%s' is not in the vocabulary", file, name);
            return 1;
        }
        if (!seen_seq && t->tmpl_first < 0)
            t->tmpl_first = id;
        else if (seen_seq)
            t->tmpl_last = id;
    }
    return 0;
}

static int parse_merges(prefopt_tokenizer *t, const cJSON *merges, const char *file, prefopt_err *err)
{
    int nm = cJSON_GetArraySize(merges);
    t->pair_cap = 16;
    while (t->pair_cap < (size_t)nm * 2)
        t->pair_cap <<= 1;
    t->pair_key = prefopt_xmalloc(t->pair_cap * sizeof *t->pair_key, "merge keys");
    t->pair_rank = prefopt_xmalloc(t->pair_cap * sizeof *t->pair_rank, "merge ranks");
    t->pair_id = prefopt_xmalloc(t->pair_cap * sizeof *t->pair_id, "merge ids");
    memset(t->pair_rank, 0xff, t->pair_cap * sizeof *t->pair_rank);
    char *cat = NULL;
    size_t catcap = 0;
    int rank = 0, rc = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (cJSON_IsString(m)) { /* "a b": exactly one space (tokenizers' convert_merges_to_hashmap) */
            const char *sp = strchr(m->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = m->valuestring;
                alen = (size_t)(sp - a);
                b = sp + 1;
                blen = strlen(b);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring;
            b = cJSON_GetArrayItem(m, 1)->valuestring;
            alen = strlen(a);
            blen = strlen(b);
        }
        if (!a) {
            prefopt_err_set(err, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", file, rank);
            rc = 1;
            break;
        }
        if (alen + blen + 1 > catcap) {
            catcap = (alen + blen + 1) * 2;
            free(cat);
            cat = prefopt_xmalloc(catcap, "merge");
        }
        memcpy(cat, a, alen);
        memcpy(cat + alen, b, blen);
        int32_t ia = tok_strmap_get(&t->tokmap, a, (uint32_t)alen), ib = tok_strmap_get(&t->tokmap, b, (uint32_t)blen);
        int32_t ic = tok_strmap_get(&t->tokmap, cat, (uint32_t)(alen + blen));
        if (ia < 0 || ib < 0 || ic < 0) {
            prefopt_err_set(err, "%s: model.merges[%d] '%.*s %.*s': '%.*s' is not in model.vocab", file, rank,
                            (int)alen, a, (int)blen, b, ia < 0 ? (int)alen : ib < 0 ? (int)blen : (int)(alen + blen),
                            ia < 0 ? a : ib < 0 ? b : cat);
            rc = 1;
            break;
        }
        tok_pair_put(t, ia, ib, rank, ic);
        rank++;
    }
    free(cat);
    return rc;
}

/* bos/eos/pad from tokenizer_config.json beside the file, else the usual names of the families. */
static int config_token(const prefopt_tokenizer *t, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return s ? prefopt_tokenizer_token_id(t, s) : -1;
}

static int first_present(const prefopt_tokenizer *t, const char *const *names)
{
    for (; *names; names++) {
        int id = prefopt_tokenizer_token_id(t, *names);
        if (id >= 0)
            return id;
    }
    return -1;
}

static void find_specials(prefopt_tokenizer *t, const char *json_path)
{
    static const char *const bos[] = {"<|begin_of_text|>", "<s>", "<|endoftext|>", NULL};
    static const char *const eos[] = {"<|end_of_text|>", "</s>", "<|endoftext|>", NULL};
    t->bos = first_present(t, bos);
    t->eos = first_present(t, eos);
    t->pad = -1;
    char *dir = xstrdup(json_path), *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    else
        dir[0] = '\0';
    char *cfgpath = prefopt_xmalloc(strlen(dir) + 32, "path");
    sprintf(cfgpath, "%stokenizer_config.json", dir);
    size_t len;
    prefopt_err ignore = {0};
    FILE *probe = fopen(cfgpath, "rb");
    char *txt = NULL;
    if (probe) {
        fclose(probe);
        txt = read_all(cfgpath, &len, &ignore);
    }
    cJSON *cfg = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    if (cfg) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token");
        int id;
        if (cJSON_IsNull(b))
            t->bos = -1; /* Qwen2 has no bos */
        else if ((id = config_token(t, cfg, "bos_token")) >= 0)
            t->bos = id;
        if ((id = config_token(t, cfg, "eos_token")) >= 0)
            t->eos = id;
        t->pad = config_token(t, cfg, "pad_token");
    }
    cJSON_Delete(cfg);
    free(txt);
    free(cfgpath);
    free(dir);
}

static int load_json(prefopt_tokenizer *t, const cJSON *root, const char *file, prefopt_err *err)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        prefopt_err_set(err, "%s: model.dropout %g is not supported (BPE dropout makes ids random)", file,
                        dropout->valuedouble);
        return 1;
    }
    if (!cJSON_IsObject(model)) {
        prefopt_err_set(err, "%s: no \"model\" object (is this a Hugging Face tokenizer.json?)", file);
        return 1;
    }
    const char *mtype = jstr(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (mtype ? strcmp(mtype, "BPE") != 0 : !cJSON_IsArray(merges)) {
        prefopt_err_set(err, "%s: model.type '%s' is not supported (BPE only)", file, mtype ? mtype : "(none)");
        return 1;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        prefopt_err_set(err, "%s: model.vocab must be an object and model.merges an array", file);
        return 1;
    }
    const char *pfx = jstr(model, "continuing_subword_prefix"), *sfx = jstr(model, "end_of_word_suffix");
    if ((pfx && *pfx) || (sfx && *sfx)) {
        prefopt_err_set(err, "%s: model.%s is not supported", file, pfx && *pfx ? "continuing_subword_prefix"
                                                                               : "end_of_word_suffix");
        return 1;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    /* sizes first: the id range and the bytes of every token string */
    int maxid = -1, nv = 0, na = 0;
    size_t bytes = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (1 << 24) || e->valuedouble != e->valueint) {
            prefopt_err_set(err, "%s: model.vocab['%s'] is not an id in 0..16777215", file, e->string);
            return 1;
        }
        maxid = e->valueint > maxid ? e->valueint : maxid;
        bytes += strlen(e->string) + 1;
        nv++;
    }
    cJSON_ArrayForEach(e, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *c = jstr(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) || !c || !*c) {
            prefopt_err_set(err, "%s: added_tokens[%d] needs an id in 0..16777215 and a non-empty content", file, na);
            return 1;
        }
        maxid = id->valueint > maxid ? id->valueint : maxid;
        bytes += strlen(c) + 1;
        na++;
    }
    if (maxid < 0) {
        prefopt_err_set(err, "%s: model.vocab is empty", file);
        return 1;
    }
    t->vocab_size = maxid + 1;
    t->tok = prefopt_xcalloc((size_t)t->vocab_size, sizeof *t->tok, "token strings");
    t->toklen = prefopt_xcalloc((size_t)t->vocab_size, sizeof *t->toklen, "token lengths");
    t->is_special = prefopt_xcalloc((size_t)t->vocab_size, 1, "special flags");
    t->arena = prefopt_xmalloc(bytes + 1, "token strings");
    tok_strmap_init(&t->tokmap, (size_t)nv);
    char *a = t->arena;
    cJSON_ArrayForEach(e, vocab)
    {
        size_t l = strlen(e->string);
        memcpy(a, e->string, l + 1);
        t->tok[e->valueint] = a;
        t->toklen[e->valueint] = (uint32_t)l;
        tok_strmap_put(&t->tokmap, a, (uint32_t)l, e->valueint);
        a += l + 1;
    }
    t->added = prefopt_xcalloc((size_t)na + 1, sizeof *t->added, "added tokens");
    cJSON_ArrayForEach(e, added)
    {
        const char *c = jstr(e, "content");
        int id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        size_t l = strlen(c);
        memcpy(a, c, l + 1);
        t->tok[id] = a; /* an added token's content wins over the model's string, as in Hugging Face */
        t->toklen[id] = (uint32_t)l;
        t->is_special[id] = (uint8_t)jbool(e, "special", 0);
        int special = jbool(e, "special", 0);
        t->added[t->nadded++] = (tok_added){a, (uint32_t)l, id, (uint8_t)special, (uint8_t)jbool(e, "lstrip", 0),
                                            (uint8_t)jbool(e, "rstrip", 0), (uint8_t)jbool(e, "single_word", 0),
                                            (uint8_t)jbool(e, "normalized", !special), a, (uint32_t)l};
        a += l + 1;
    }
    if (parse_merges(t, merges, file, err))
        return 1;

    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    t->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk && (t->unk_id = tok_strmap_get(&t->tokmap, unk, (uint32_t)strlen(unk))) < 0) {
        prefopt_err_set(err, "%s: model.unk_token '%s' is not in model.vocab", file, unk);
        return 1;
    }
    for (int c = 0; c < 0x144; c++)
        t->cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        char s[8];
        t->byte_cp[b] = tok_byte_to_cp(b);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
        uint32_t cp = t->byte_cp[b];
        int l = cp < 0x80 ? (s[0] = (char)cp, 1) : (s[0] = (char)(0xc0 | cp >> 6), s[1] = (char)(0x80 | (cp & 63)), 2);
        t->byte_id[b] = tok_strmap_get(&t->tokmap, s, (uint32_t)l);
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->fallback_id[b] = tok_strmap_get(&t->tokmap, s, 6);
    }
    if (parse_norm(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), file, err) ||
        parse_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), file, err) ||
        parse_dec(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), file, err))
        return 1;
    t->tmpl_first = t->tmpl_last = -1;
    if (parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), file, err))
        return 1;
    /* a normalized added token is looked for in normalized text, so in its normalized form (as Hugging Face's
       AddedVocabulary builds its normalized trie) */
    for (int i = 0; i < t->nadded; i++) {
        tok_added *ad = &t->added[i];
        char *nm = NULL;
        size_t nl = ad->len;
        if (ad->normalized && tok_bpe_normalize(t, ad->content, ad->len, &nm, &nl, err)) {
            prefopt_err_set(err, "%s: added_tokens: '%s' does not normalize", file, ad->content);
            return 1;
        }
        if (nm && !nl) {
            free(nm);
            nm = NULL;
        }
        if (nm) {
            ad->match = nm;
            ad->mlen = (uint32_t)nl;
            /* Hugging Face also decodes it from its normalized form (through the decoder) */
            t->tok[ad->id] = nm;
            t->toklen[ad->id] = (uint32_t)nl;
        }
    }
    tok_added_index(t);
    int bytelevel = 0;
    for (int i = 0; i < t->npre; i++)
        bytelevel |= t->pre[i].type == TOK_PRE_BYTELEVEL;
    t->sp_split = !bytelevel;
    for (size_t i = 0; t->sp_split && i < t->tokmap.cap; i++) {
        const char *k = t->tokmap.key[i];
        size_t l = k ? t->tokmap.klen[i] : 0, j = 0;
        while (j + 3 <= l && !memcmp(k + j, "\xe2\x96\x81", 3))
            j += 3;
        if (j < l && memmem(k + j, l - j, "\xe2\x96\x81", 3))
            t->sp_split = 0;
    }
    t->cache = tok_cache_new();
    atomic_flag_clear(&t->cache_busy);
    return 0;
}

int prefopt_tokenizer_load(const char *path, prefopt_tokenizer **out, prefopt_err *err)
{
    *out = NULL;
    struct stat st;
    char *file = NULL;
    if (!stat(path, &st) && S_ISDIR(st.st_mode)) {
        file = prefopt_xmalloc(strlen(path) + 20, "path");
        sprintf(file, "%s/tokenizer.json", path);
    } else {
        file = xstrdup(path);
    }
    size_t len = 0;
    char *txt = read_all(file, &len, err);
    if (!txt) {
        free(file);
        return 1;
    }
    prefopt_tokenizer *t = prefopt_xcalloc(1, sizeof *t, "tokenizer");
    t->kind = TOK_KIND_BPE;
    struct sha256_ctx ctx;
    uint8_t dig[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    sha256_update(&ctx, len, (const uint8_t *)txt);
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, dig);
    char *o = t->identity + sprintf(t->identity, "sha256:");
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        o += sprintf(o, "%02x", dig[i]);

    cJSON *root = cJSON_ParseWithLength(txt, len);
    int rc = 0;
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long at = ep && ep >= txt && ep <= txt + len ? (long)(ep - txt) : -1;
        prefopt_err_set(err, "%s: not valid JSON (near byte %ld)", file, at);
        rc = 1;
    } else {
        rc = load_json(t, root, file, err);
    }
    cJSON_Delete(root);
    free(txt);
    if (!rc)
        find_specials(t, file);
    free(file);
    if (rc) {
        prefopt_tokenizer_free(t);
        return 1;
    }
    *out = t;
    return 0;
}
