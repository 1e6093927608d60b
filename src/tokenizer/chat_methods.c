/* prefopt: attribute and item lookup as jinja's sandbox does it, the method calls of chat templates (dispatched
 * here: str methods are chat_strings.c's, str.format this file's; dict items/keys/values/get/copy, list
 * index/count/copy), and the loop object's attributes and cycle/changed. The immutable sandbox refuses the methods that modify a list or dict (append, update, pop, ...):
 * they are known here so that calling one fails as Jinja does, with a SecurityError-like message. */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- which methods exist ---------------------------------------------------------------------------------------- */
static const char *const str_methods[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
    "startswith", "endswith", "upper", "lower", "title", "capitalize", "replace", "find", "rfind", "index",
    "rindex", "count", "join", "format", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper",
    "center", "ljust", "rjust", "zfill", "partition", "rpartition", "casefold", "removeprefix", "removesuffix",
    "isnumeric", "isdecimal", "istitle", "swapcase", "expandtabs", "encode", "format_map", "isidentifier",
    "isprintable", "isascii", "maketrans", "translate", NULL};
static const char *const dict_methods[] = {"items", "keys", "values", "get", "copy", NULL};
static const char *const dict_unsafe[] = {"pop", "popitem", "setdefault", "update", "clear", "fromkeys", NULL};
static const char *const list_methods[] = {"index", "count", "copy", NULL};
static const char *const list_unsafe[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort",
                                          "clear", NULL};

static int in_list(const char *const *l, const char *name)
{
    for (; *l; l++)
        if (!strcmp(*l, name))
            return 1;
    return 0;
}

int cj_has_method(const cj_val *self, const char *name)
{
    switch (self->type) {
    case CJ_STR: return in_list(str_methods, name);
    case CJ_DICT: return in_list(dict_methods, name) ? 1 : in_list(dict_unsafe, name) ? 2 : 0;
    case CJ_LIST:
        if (self->tuple)
            return !strcmp(name, "index") || !strcmp(name, "count");
        return in_list(list_methods, name) ? 1 : in_list(list_unsafe, name) ? 2 : 0;
    default: return 0;
    }
}

/* ---- attribute and item lookup (SandboxedEnvironment.getattr / getitem) ----------------------------------- */
static cj_val *method(cj_ctx *c, const cj_val *obj, const char *name)
{
    cj_val *m = cj_alloc(c, sizeof *m);
    m->type = CJ_METHOD;
    m->u.meth.self = (cj_val *)obj;
    m->u.meth.name = name;
    return m;
}

static const char *obj_repr(const cj_val *v)
{
    return v->type == CJ_NONE ? "None" : v->type == CJ_NS ? "jinja2.utils.Namespace object" : NULL;
}

static cj_val *no_attr(cj_ctx *c, const cj_val *obj, const cj_val *key)
{
    cj_buf b = {0};
    cj_write_repr(c, &b, key, -1);
    const char *r = obj_repr(obj);
    if (r)
        return cj_undef(c, "'%s' has no attribute %s", r, b.p);
    return cj_undef(c, "'%s object' has no attribute %s", cj_type_name(obj), b.p);
}

static cj_val *loop_attr(cj_ctx *c, const cj_val *obj, const char *name)
{
    const cj_loop *L = obj->u.loop;
    if (!strcmp(name, "index"))
        return cj_int(c, (int64_t)L->i + 1);
    if (!strcmp(name, "index0"))
        return cj_int(c, (int64_t)L->i);
    if (!strcmp(name, "revindex"))
        return cj_int(c, (int64_t)(L->n - L->i));
    if (!strcmp(name, "revindex0"))
        return cj_int(c, (int64_t)(L->n - L->i - 1));
    if (!strcmp(name, "first"))
        return cj_bool(L->i == 0);
    if (!strcmp(name, "last"))
        return cj_bool(L->i + 1 == L->n);
    if (!strcmp(name, "length"))
        return cj_int(c, (int64_t)L->n);
    if (!strcmp(name, "depth"))
        return cj_int(c, L->depth);
    if (!strcmp(name, "depth0"))
        return cj_int(c, L->depth - 1);
    if (!strcmp(name, "previtem"))
        return L->i ? L->items[L->i - 1] : cj_undef(c, "there is no previous item");
    if (!strcmp(name, "nextitem"))
        return L->i + 1 < L->n ? L->items[L->i + 1] : cj_undef(c, "there is no next item");
    if (!strcmp(name, "cycle") || !strcmp(name, "changed"))
        return method(c, obj, name);
    return cj_undef(c, "'LoopContext object' has no attribute '%s'", name);
}

cj_val *cj_getattr(cj_ctx *c, const cj_val *obj, const char *name, long pos)
{
    cj_check_undef(c, obj, pos);
    if (name[0] == '_' && name[1] == '_')
        return cj_undef(c, "access to attribute '%s' of '%s' object is unsafe", name, cj_type_name(obj));
    if (obj->type == CJ_LOOP)
        return loop_attr(c, obj, name);
    int m = cj_has_method(obj, name);
    if (m == 2) /* the immutable sandbox's unsafe_undefined: empty when printed, fails when called */
        return cj_undef(c, "access to attribute '%s' of '%s' object is unsafe.", name, cj_type_name(obj));
    if (m)
        return method(c, obj, name);
    if (obj->type == CJ_DICT || obj->type == CJ_NS) {
        cj_val *v = cj_dict_gets(obj, name);
        if (v)
            return v;
    }
    return no_attr(c, obj, cj_str0(c, name));
}

static int64_t index_of(const cj_val *key, int64_t len, int *ok)
{
    int64_t i = key->u.i;
    if (i < 0)
        i += len;
    *ok = i >= 0 && i < len;
    return i;
}

cj_val *cj_getitem(cj_ctx *c, const cj_val *obj, const cj_val *key, long pos)
{
    cj_check_undef(c, obj, pos);
    int ok;
    if (obj->type == CJ_DICT) {
        cj_val *v = cj_dict_get(obj, key);
        if (v)
            return v;
    } else if (obj->type == CJ_LIST && (key->type == CJ_INT || key->type == CJ_BOOL)) {
        int64_t i = index_of(key, (int64_t)obj->u.l.n, &ok);
        if (ok)
            return obj->u.l.v[i];
    } else if (obj->type == CJ_STR && (key->type == CJ_INT || key->type == CJ_BOOL)) {
        int64_t len = (int64_t)cj_u8_len(obj->u.s.p, obj->u.s.n);
        int64_t i = index_of(key, len, &ok);
        if (ok) {
            size_t a = cj_u8_offset(obj->u.s.p, obj->u.s.n, (size_t)i), b = a;
            cj_u8_next(obj->u.s.p, obj->u.s.n, &b);
            return cj_str(c, obj->u.s.p + a, b - a);
        }
    }
    if (key->type == CJ_STR && obj->type != CJ_DICT)
        return cj_getattr(c, obj, key->u.s.p, pos);
    if (key->type == CJ_STR && cj_has_method(obj, key->u.s.p))
        return cj_getattr(c, obj, key->u.s.p, pos);
    return no_attr(c, obj, key);
}

/* Jinja's make_attrgetter: "a.b.0" looks up a, then b, then item 0 */
cj_val *cj_attr_path(cj_ctx *c, const cj_val *obj, const cj_val *attr, long pos)
{
    if (attr->type != CJ_STR)
        return cj_getitem(c, obj, attr, pos);
    const char *p = attr->u.s.p;
    cj_val *v = (cj_val *)obj;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        cj_val *k;
        int digits = len > 0;
        for (size_t i = 0; i < len; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        if (digits) {
            long long x = 0;
            for (size_t i = 0; i < len && x < 1000000000LL; i++)
                x = x * 10 + (p[i] - '0');
            k = cj_int(c, x);
        } else {
            k = cj_str(c, p, len);
        }
        v = cj_getitem(c, v, k, pos);
        if (!dot)
            return v;
        p = dot + 1;
    }
}

static cj_val *str_format(cj_ctx *c, const cj_val *fmt, const cj_args *a, long pos)
{
    cj_buf b = {0};
    cj_put(c, &b, "", 0);
    const char *p = fmt->u.s.p;
    size_t n = fmt->u.s.n;
    int auto_idx = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '}' ) {
            if (i + 1 < n && p[i + 1] == '}') {
                cj_putc(c, &b, '}');
                i++;
                continue;
            }
            cj_fail(c, pos, "str.format: single '}' encountered in format string");
        }
        if (p[i] != '{') {
            cj_putc(c, &b, p[i]);
            continue;
        }
        if (i + 1 < n && p[i + 1] == '{') {
            cj_putc(c, &b, '{');
            i++;
            continue;
        }
        const char *close = memchr(p + i, '}', n - i);
        if (!close)
            cj_fail(c, pos, "str.format: single '{' encountered in format string");
        size_t fl = (size_t)(close - (p + i + 1));
        char *field = cj_strdup(c, p + i + 1, fl);
        i = (size_t)(close - p);
        char conv = 0, *bang = strchr(field, '!');
        if (strchr(field, ':') || strchr(field, '['))
            cj_fail(c, pos, "str.format: format specs and indexing in fields are not supported ('{%s}')", field);
        if (bang) {
            conv = bang[1];
            *bang = '\0';
        }
        char *dot = strchr(field, '.');
        if (dot)
            *dot = '\0';
        cj_val *v;
        if (!field[0]) {
            v = cj_arg(a, auto_idx++, NULL);
        } else if (field[0] >= '0' && field[0] <= '9') {
            v = cj_arg(a, atoi(field), NULL);
        } else {
            v = NULL;
            for (int k = 0; k < a->nkw; k++)
                if (!strcmp(a->kwn[k], field))
                    v = a->kwv[k];
        }
        if (!v)
            cj_fail(c, pos, "str.format: no argument for the field '{%s}'", field);
        while (dot) {
            char *nx = strchr(dot + 1, '.');
            if (nx)
                *nx = '\0';
            v = cj_getattr(c, v, dot + 1, pos);
            dot = nx;
        }
        if (conv == 'r')
            cj_write_repr(c, &b, v, pos);
        else
            cj_write_str(c, &b, v, pos);
    }
    return cj_buf_str(c, &b);
}

/* ---- calls ----------------------------------------------------------------------------------------------------- */
cj_val *cj_call_method(cj_ctx *c, const cj_val *self, const char *m, const cj_args *a, long pos)
{
    const char *const none[] = {NULL};
    if (self->type == CJ_STR)
        return strcmp(m, "format") ? cj_str_method(c, self, m, a, pos) : str_format(c, self, a, pos);
    if (self->type == CJ_LOOP) {
        cj_loop *L = self->u.loop;
        if (!strcmp(m, "cycle")) {
            if (!a->npos)
                cj_fail(c, pos, "no items for cycling given");
            return a->pos[L->i % (size_t)a->npos];
        }
        cj_val *now = cj_list(c, (size_t)a->npos, 0);
        for (int i = 0; i < a->npos; i++)
            now->u.l.v[i] = a->pos[i];
        int changed = !L->changed_called || !cj_eq(now, L->last_changed);
        L->changed_called = 1;
        L->last_changed = now;
        return cj_bool(changed);
    }
    if (cj_has_method(self, m) == 2)
        cj_fail(c, pos, "access to attribute '%s' of '%s' object is unsafe (the sandbox forbids changing it)", m,
                cj_type_name(self));
    if (self->type == CJ_DICT) {
        const cj_dict *D = self->u.d;
        if (!strcmp(m, "get")) {
            cj_args_check(c, a, 2, none, m, pos);
            cj_val *k = cj_arg(a, 0, NULL), *d = cj_arg(a, 1, NULL);
            if (!k)
                cj_fail(c, pos, "get expected at least 1 argument, got 0");
            cj_val *v = cj_dict_get(self, k);
            return v ? v : d ? d : &cj_none_v;
        }
        cj_args_check(c, a, 0, none, m, pos);
        if (!strcmp(m, "copy")) {
            cj_val *d = cj_dict_new(c, CJ_DICT);
            for (size_t i = 0; i < D->n; i++)
                cj_dict_set(c, d, D->k[i], D->v[i]);
            return d;
        }
        cj_val *l = cj_list(c, D->n, 0);
        for (size_t i = 0; i < D->n; i++) {
            if (m[0] == 'k')
                l->u.l.v[i] = D->k[i];
            else if (m[0] == 'v')
                l->u.l.v[i] = D->v[i];
            else {
                cj_val *t = cj_list(c, 2, 1);
                t->u.l.v[0] = D->k[i];
                t->u.l.v[1] = D->v[i];
                l->u.l.v[i] = t;
            }
        }
        return l;
    }
    if (self->type == CJ_LIST) {
        if (!strcmp(m, "copy")) {
            cj_args_check(c, a, 0, none, m, pos);
            return cj_list_from(c, self->u.l.v, self->u.l.n);
        }
        cj_args_check(c, a, m[0] == 'i' ? 3 : 1, none, m, pos);
        cj_val *x = cj_arg(a, 0, NULL);
        if (!x)
            cj_fail(c, pos, "%s() takes at least 1 argument", m);
        int64_t k = 0;
        for (size_t i = 0; i < self->u.l.n; i++)
            if (cj_eq(self->u.l.v[i], x)) {
                if (m[0] == 'i')
                    return cj_int(c, (int64_t)i);
                k++;
            }
        if (m[0] == 'i')
            cj_fail(c, pos, "list.index(x): x not in list");
        return cj_int(c, k);
    }
    cj_fail(c, pos, "'%s' object has no method '%s'", cj_type_name(self), m);
}

