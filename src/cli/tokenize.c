/* prefopt tokenize: print the token ids of a text (or decode ids back to text), to check a tokenizer against
 * the model's own before packing a dataset. Runs on rank 0 only; other ranks just return. */
#define _GNU_SOURCE
#include "prefopt/agree.h"
#include "prefopt/opts.h"
#include "prefopt/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path, size_t *len, prefopt_err *err)
{
    FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "rb");
    if (!f) {
        prefopt_err_set(err, "--file %s: cannot open", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = prefopt_xmalloc(cap, "text");
    for (;;) {
        if (n == cap) {
            cap *= 2;
            char *p = realloc(buf, cap);
            if (!p)
                prefopt_die("out of memory reading %s", path);
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (!got)
            break;
    }
    if (f != stdin)
        fclose(f);
    *len = n;
    return buf;
}

int prefopt_cmd_tokenize(int argc, char **argv)
{
    const char *tokpath = NULL, *text = NULL, *file = NULL, *decode = NULL;
    int pieces = 0, no_special = 0, skip_special = 0;
    const prefopt_opt opts[] = {
        {"tokenizer", PREFOPT_OPT_STRING, &tokpath, "", "tokenizer.json (or its directory); empty: byte-level"},
        {"text", PREFOPT_OPT_STRING, &text, "", "text to encode"},
        {"file", PREFOPT_OPT_STRING, &file, "", "encode this file's bytes instead (- for stdin)"},
        {"pieces", PREFOPT_OPT_FLAG, &pieces, "0", "also print, per line, each id, its token string and its decoded text"},
        {"no-special", PREFOPT_OPT_FLAG, &no_special, "0", "treat special tokens written in the text as plain text"},
        {"decode", PREFOPT_OPT_STRING, &decode, "", "decode these ids (comma or space separated) instead"},
        {"skip-special", PREFOPT_OPT_FLAG, &skip_special, "0", "with --decode: drop special tokens"},
    };
    char msg[1024];
    int rc = prefopt_opts_parse("tokenize", "Print the token ids of a text, or decode ids (checks a tokenizer).",
                                opts, (int)(sizeof opts / sizeof opts[0]), argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    prefopt_err err = {0};
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    if (prefopt_world_rank() != 0)
        return 0;
    if (!!*text + !!*file + !!*decode != 1) {
        prefopt_err_set(&err, "tokenize: give exactly one of --text, --file, --decode");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    prefopt_tokenizer *t = NULL;
    if (!*tokpath)
        t = prefopt_tokenizer_byte();
    else if (prefopt_tokenizer_load(tokpath, &t, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);

    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    if (*decode) {
        for (const char *p = decode; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) {
                if (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t') {
                    p++;
                    continue;
                }
                prefopt_err_set(&err, "--decode: '%s' is not a list of integers", decode);
                prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                ids = realloc(ids, cap * sizeof *ids);
                if (!ids)
                    prefopt_die("out of memory");
            }
            ids[n++] = (int32_t)(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
            p = end;
        }
        char *s = prefopt_tokenizer_decode(t, ids, n, skip_special, &err);
        if (!s)
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        fputs(s, stdout);
        putchar('\n');
        free(s);
    } else {
        size_t len = 0;
        char *buf = NULL;
        if (*file) {
            buf = slurp(file, &len, &err);
            if (!buf)
                prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        }
        const char *src = buf ? buf : text;
        if (!buf)
            len = strlen(text);
        if (prefopt_tokenizer_encode(t, src, len, !no_special, &ids, &n, &cap, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
        if (pieces) /* id, the vocabulary's token string, the token decoded on its own */
            for (size_t i = 0; i < n; i++) {
                size_t tl = 0;
                const char *tok = prefopt_tokenizer_token(t, ids[i], &tl);
                char *s = prefopt_tokenizer_decode(t, ids + i, 1, 0, &err);
                printf("%d\t%.*s\t%s\n", ids[i], (int)tl, tok ? tok : "", s ? s : "?");
                free(s);
            }
        free(buf);
    }
    free(ids);
    prefopt_tokenizer_free(t);
    return 0;
}
