/* Test helper (not a test itself): renders the cases of a chat-template case file with prefopt, in the result
 * format of tests/tools/render_chat_template.py, so that tests/test_chat_template_ref.sh can compare the two.
 * usage: chat_template_tool CASES.json OUT.json */
#include "prefopt/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(b);
        return NULL;
    }
    b[n] = '\0';
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: chat_template_tool CASES.json OUT.json\n");
        return 2;
    }
    char *text = slurp(argv[1]);
    cJSON *spec = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!spec) {
        fprintf(stderr, "chat_template_tool: cannot read %s\n", argv[1]);
        return 1;
    }
    const cJSON *templates = cJSON_GetObjectItem(spec, "templates"), *cases = cJSON_GetObjectItem(spec, "cases");
    int nt = cJSON_GetArraySize(templates);
    prefopt_chat_template **tp = calloc((size_t)nt + 1, sizeof *tp);
    char **terr = calloc((size_t)nt + 1, sizeof *terr);
    const char **tname = calloc((size_t)nt + 1, sizeof *tname);
    int i = 0;
    for (const cJSON *t = templates->child; t; t = t->next, i++) {
        prefopt_err err = {0};
        tname[i] = t->string;
        const cJSON *file = cJSON_GetObjectItem(t, "file"), *which = cJSON_GetObjectItem(t, "which");
        int rc;
        if (file) {
            rc = prefopt_chat_template_load(file->valuestring, which ? which->valuestring : NULL, &tp[i], &err);
            if (!rc && !tp[i]) {
                rc = 1;
                prefopt_err_set(&err, "no template in %s", file->valuestring);
            }
        } else {
            const char *src = cJSON_GetObjectItem(t, "source")->valuestring;
            rc = prefopt_chat_template_parse(src, strlen(src), t->string, &tp[i], &err);
            const cJSON *vars = cJSON_GetObjectItem(t, "vars");
            for (const cJSON *v = vars ? vars->child : NULL; !rc && v; v = v->next)
                prefopt_chat_template_set_var(tp[i], v->string, v);
        }
        if (rc)
            terr[i] = strdup(err.msg);
    }
    cJSON *out = cJSON_CreateArray();
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *t = cJSON_GetObjectItem(c, "t")->valuestring;
        int k = 0;
        while (k < nt && strcmp(tname[k], t))
            k++;
        cJSON *r = cJSON_CreateObject(), *spans = cJSON_CreateArray();
        if (k == nt || terr[k]) {
            cJSON_AddNullToObject(r, "text");
            cJSON_AddStringToObject(r, "error", k == nt ? "no such template" : terr[k]);
        } else {
            prefopt_err err = {0};
            char *s = NULL;
            size_t len = 0, ns = 0;
            prefopt_chat_span *sp = NULL;
            const cJSON *agp = cJSON_GetObjectItem(c, "agp");
            if (prefopt_chat_template_render(tp[k], cJSON_GetObjectItem(c, "messages"), cJSON_IsTrue(agp),
                                             cJSON_GetObjectItem(c, "extra"), &s, &len, &sp, &ns, &err)) {
                cJSON_AddNullToObject(r, "text");
                cJSON_AddStringToObject(r, "error", err.msg);
            } else if (strlen(s) != len) {
                cJSON_AddNullToObject(r, "text");
                cJSON_AddStringToObject(r, "error", "output holds a NUL byte (not representable here)");
            } else {
                cJSON_AddStringToObject(r, "text", s);
                cJSON_AddNullToObject(r, "error");
                for (size_t j = 0; j < ns; j++) {
                    cJSON *p = cJSON_CreateArray();
                    cJSON_AddItemToArray(p, cJSON_CreateNumber((double)sp[j].start));
                    cJSON_AddItemToArray(p, cJSON_CreateNumber((double)sp[j].end));
                    cJSON_AddItemToArray(spans, p);
                }
            }
            free(s);
            free(sp);
        }
        cJSON_AddItemToObject(r, "spans", spans);
        cJSON_AddItemToArray(out, r);
    }
    char *o = cJSON_PrintUnformatted(out);
    FILE *f = fopen(argv[2], "wb");
    if (!f || fputs(o, f) < 0 || fclose(f)) {
        fprintf(stderr, "chat_template_tool: cannot write %s\n", argv[2]);
        return 1;
    }
    free(o);
    cJSON_Delete(out);
    for (int j = 0; j < nt; j++) {
        prefopt_chat_template_free(tp[j]);
        free(terr[j]);
    }
    free(tp);
    free(terr);
    free(tname);
    cJSON_Delete(spec);
    return 0;
}
