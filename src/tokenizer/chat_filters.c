/* prefopt: Jinja's filters and tests as chat templates use them (jinja2/filters.py, tests.py), with
 * transformers' tojson in place of Jinja's (json.dumps with ensure_ascii=False, indent, separators, sort_keys and
 * no HTML escaping). Filters convert their input with str() where Jinja's do (soft_str), so `none|upper` is
 * "NONE" and an undefined input is "". Filters Jinja has that no chat template needs (groupby, urlize, random,
 * ...) are refused when the template is parsed (cj_known_filter says which exist here). */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const filters[] = {"abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort",
    "e", "escape", "first", "float", "forceescape", "format", "indent", "int", "items", "join", "last", "length",
    "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select",
    "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount",
    NULL};
static const char *const tests[] = {"odd", "even", "divisibleby", "defined", "undefined", "none", "boolean",
    "false", "true", "integer", "float", "lower", "upper", "string", "mapping", "number", "sequence", "iterable",
    "callable", "sameas", "escaped", "in", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", "ge", ">=",
    "<", "lt", "lessthan", "<=", "le", "filter", "test", NULL};

static int member(const char *const *l, const char *n)
{
    for (; *l; l++)
        if (!strcmp(*l, n))
            return 1;
    return 0;
}
int cj_known_filter(const char *name) { return member(filters, name); }
int cj_known_test(const char *name) { return member(tests, name); }

static cj_val *soft_str(cj_ctx *c, const cj_val *v, long pos)
{
    if (v->type == CJ_UNDEF)
        return cj_str(c, "", 0);
    return cj_to_str(c, v, pos);
}

static const cj_args no_args = {0};

static cj_args args_after(const cj_args *a, int skip) /* the positional arguments after the first `skip` */
{
    cj_args r = *a;
    r.npos = a->npos > skip ? a->npos - skip : 0;
    r.pos = a->npos > skip ? a->pos + skip : NULL;
    return r;
}

/* Python int(x) / float(x) on strings, as the int and float filters try them */
static int parse_int(const cj_val *s, int64_t base, int64_t *out)
{
    const char *p = s->u.s.p, *e = p + s->u.s.n;
    while (p < e && (*p == ' ' || (*p >= '\t' && *p <= '\r')))
        p++;
    while (e > p && (e[-1] == ' ' || (e[-1] >= '\t' && e[-1] <= '\r')))
        e--;
    int neg = 0;
    if (p < e && (*p == '+' || *p == '-'))
        neg = *p++ == '-';
    if (e - p > 2 && p[0] == '0') { /* int(s, base) accepts the prefix of its base; base 0 reads it */
        char k = (char)(p[1] | 32);
        int pb = k == 'x' ? 16 : k == 'o' ? 8 : k == 'b' ? 2 : 0;
        if (pb && (base == pb || base == 0)) {
            base = pb;
            p += 2;
            if (*p == '_')
                p++;
        }
    }
    if (base == 0) {
        base = 10;
        if (e - p > 1 && p[0] == '0') /* base 0: no leading zeros except all zeros */
            for (const char *q = p; q < e; q++)
                if (*q != '0' && *q != '_')
                    return 0;
    }
    if (p >= e || *p == '_')
        return 0;
    uint64_t v = 0;
    int prev_us = 0;
    for (; p < e; p++) {
        if (*p == '_') {
            if (prev_us)
                return 0;
            prev_us = 1;
            continue;
        }
        int d = *p >= '0' && *p <= '9' ? *p - '0' : ((*p | 32) >= 'a' && (*p | 32) <= 'z') ? (*p | 32) - 'a' + 10 : 99;
        if (d >= base)
            return 0;
        prev_us = 0;
        v = v * (uint64_t)base + (uint64_t)d;
        if (v > (uint64_t)INT64_MAX)
            return 0;
    }
    if (prev_us)
        return 0;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 1;
}

static int parse_float(const cj_val *s, double *out)
{
    char buf[128];
    size_t k = 0;
    const char *p = s->u.s.p, *e = p + s->u.s.n;
    while (p < e && (*p == ' ' || (*p >= '\t' && *p <= '\r')))
        p++;
    while (e > p && (e[-1] == ' ' || (e[-1] >= '\t' && e[-1] <= '\r')))
        e--;
    if (p >= e || e - p >= (long)sizeof buf)
        return 0;
    for (const char *q = p; q < e; q++) {
        if (*q == '_') {
            if (q == p || q + 1 >= e || !(q[-1] >= '0' && q[-1] <= '9') || !(q[1] >= '0' && q[1] <= '9'))
                return 0;
            continue;
        }
        if (*q == 'x' || *q == 'X' || *q == 'p' || *q == 'P')
            return 0;
        buf[k++] = *q;
    }
    buf[k] = '\0';
    char *end;
    double d = strtod(buf, &end);
    if (*end)
        return 0;
    *out = d;
    return 1;
}

static cj_val *sorted_copy(cj_ctx *c, cj_val **items, size_t n, cj_val **keys, int reverse, long pos)
{
    /* stable insertion sort by keys (Python's sort is stable; lists here are short) */
    size_t *idx = cj_alloc(c, (n + 1) * sizeof *idx);
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0) {
            int r = cj_cmp(c, keys[idx[j - 1]], keys[i], pos, "<");
            if (reverse ? r < 0 : r > 0) {
                idx[j] = idx[j - 1];
                j--;
            } else {
                break;
            }
        }
        idx[j] = i;
        if (++c->steps > 50000000L)
            cj_fail(c, pos, "the template runs too long");
    }
    cj_val *l = cj_list(c, n, 0);
    for (size_t i = 0; i < n; i++)
        l->u.l.v[i] = items[idx[i]];
    return l;
}

static cj_val *fold_key(cj_ctx *c, cj_val *v, int case_sensitive)
{
    return !case_sensitive && v->type == CJ_STR ? cj_case(c, v, 0) : v;
}

static cj_val *html_escape(cj_ctx *c, const cj_val *s)
{
    cj_buf b = {0};
    cj_put(c, &b, "", 0);
    for (size_t i = 0; i < s->u.s.n; i++) {
        char ch = s->u.s.p[i];
        const char *r = ch == '&' ? "&amp;" : ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '"' ? "&#34;"
                        : ch == '\'' ? "&#39;" : NULL;
        if (r)
            cj_puts(c, &b, r);
        else
            cj_putc(c, &b, ch);
    }
    return cj_buf_str(c, &b);
}

static cj_val *ascii_json(cj_ctx *c, const cj_val *s) /* ensure_ascii=True: \uXXXX, surrogate pairs */
{
    cj_buf b = {0};
    for (size_t i = 0; i < s->u.s.n;) {
        if ((unsigned char)s->u.s.p[i] < 0x80) {
            cj_putc(c, &b, s->u.s.p[i++]);
            continue;
        }
        uint32_t cp = cj_u8_next(s->u.s.p, s->u.s.n, &i);
        char t[16];
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(t, sizeof t, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            snprintf(t, sizeof t, "\\u%04x", cp);
        }
        cj_puts(c, &b, t);
    }
    return cj_buf_str(c, &b);
}

static cj_val *select_common(cj_ctx *c, cj_val *in, const cj_args *a, int by_attr, int keep, long pos)
{
    size_t n;
    cj_val **items = cj_iter(c, in, &n, pos);
    cj_val *attr = NULL;
    int first_test = 0;
    if (by_attr) {
        attr = cj_arg(a, 0, NULL);
        if (!attr)
            cj_fail(c, pos, "%s needs an attribute name", keep ? "selectattr" : "rejectattr");
        first_test = 1;
    }
    cj_val *tname = cj_arg(a, first_test, NULL);
    if (tname && (tname->type != CJ_STR || !cj_known_test(tname->u.s.p)))
        cj_fail(c, pos, "no test named %s", tname->type == CJ_STR ? tname->u.s.p : "(not a string)");
    cj_args targs = args_after(a, first_test + 1);
    cj_val **out = cj_alloc(c, (n + 1) * sizeof *out);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        cj_val *v = by_attr ? cj_attr_path(c, items[i], attr, pos) : items[i];
        int r = tname ? cj_test(c, tname->u.s.p, v, &targs, pos) : cj_truthy(v);
        if (r == keep)
            out[k++] = items[i];
    }
    cj_val *l = cj_list(c, k, 0);
    if (k)
        memcpy(l->u.l.v, out, k * sizeof *out);
    return l;
}

static cj_val *join_values(cj_ctx *c, cj_val **items, size_t n, const cj_val *sep, long pos)
{
    cj_buf b = {0};
    cj_put(c, &b, "", 0);
    for (size_t i = 0; i < n; i++) {
        if (i)
            cj_put(c, &b, sep->u.s.p, sep->u.s.n);
        if (items[i]->type != CJ_UNDEF)
            cj_write_str(c, &b, items[i], pos);
    }
    return cj_buf_str(c, &b);
}

static cj_val *aggregate(cj_ctx *c, cj_val *in, const cj_args *a, int want_max, long pos)
{
    cj_args_check(c, a, 2, (const char *const[]){"case_sensitive", "attribute", NULL}, want_max ? "max" : "min", pos);
    cj_val *cs = cj_arg(a, 0, "case_sensitive"), *attr = cj_arg(a, 1, "attribute");
    size_t n;
    cj_val **items = cj_iter(c, in, &n, pos);
    if (!n)
        return cj_undef(c, "No aggregated item, sequence was empty.");
    cj_val *best = items[0], *bk = NULL;
    for (size_t i = 0; i < n; i++) {
        cj_val *k = attr && attr->type != CJ_NONE ? cj_attr_path(c, items[i], attr, pos) : items[i];
        k = fold_key(c, k, cs && cj_truthy(cs));
        if (!bk || (want_max ? cj_cmp(c, k, bk, pos, ">") == 1 : cj_cmp(c, k, bk, pos, "<") == -1)) {
            best = items[i];
            bk = k;
        }
    }
    return best;
}

cj_val *cj_filter(cj_ctx *c, const char *f, cj_val *in, const cj_args *a, long pos)
{
    const char *const none[] = {NULL};
#define IS(x) (!strcmp(f, x))
    if (IS("default") || IS("d")) {
        cj_args_check(c, a, 2, (const char *const[]){"default_value", "boolean", NULL}, f, pos);
        cj_val *dv = cj_arg(a, 0, "default_value"), *boolean = cj_arg(a, 1, "boolean");
        if (in->type == CJ_UNDEF || (boolean && cj_truthy(boolean) && !cj_truthy(in)))
            return dv ? dv : cj_str(c, "", 0);
        return in;
    }
    if (IS("tojson")) {
        cj_args_check(c, a, 4, (const char *const[]){"ensure_ascii", "indent", "separators", "sort_keys", NULL}, f,
                      pos);
        cj_val *ea = cj_arg(a, 0, "ensure_ascii"), *ind = cj_arg(a, 1, "indent"), *sep = cj_arg(a, 2, "separators"),
               *sk = cj_arg(a, 3, "sort_keys");
        const char *indent = NULL;
        if (ind && ind->type != CJ_NONE) {
            if (ind->type == CJ_STR) {
                indent = ind->u.s.p;
            } else {
                int64_t w = cj_as_int(c, ind, "tojson indent", pos);
                if (w > 1000)
                    cj_fail(c, pos, "tojson: indent too large");
                char *sp = cj_alloc(c, (size_t)(w > 0 ? w : 0) + 1);
                memset(sp, ' ', (size_t)(w > 0 ? w : 0));
                indent = sp;
            }
        }
        const char *isep = indent ? "," : ", ", *ksep = ": ";
        if (sep && sep->type != CJ_NONE) {
            size_t nn;
            cj_val **pp = cj_iter(c, sep, &nn, pos);
            if (nn != 2 || pp[0]->type != CJ_STR || pp[1]->type != CJ_STR)
                cj_fail(c, pos, "tojson: separators must be a pair of strings");
            isep = pp[0]->u.s.p;
            ksep = pp[1]->u.s.p;
        }
        cj_buf b = {0};
        cj_write_json(c, &b, in, indent, isep, ksep, sk && cj_truthy(sk), 0, pos);
        cj_val *s = cj_buf_str(c, &b);
        return ea && cj_truthy(ea) ? ascii_json(c, s) : s;
    }
    if (IS("trim")) {
        cj_args_check(c, a, 1, (const char *const[]){"chars", NULL}, f, pos);
        cj_val *ch = cj_arg(a, 0, "chars");
        if (ch && ch->type != CJ_NONE && ch->type != CJ_STR)
            cj_fail(c, pos, "trim: chars must be a string");
        return cj_strip(c, soft_str(c, in, pos), ch, 3);
    }
    if (IS("upper") || IS("lower") || IS("capitalize")) {
        cj_args_check(c, a, 0, none, f, pos);
        return cj_case(c, soft_str(c, in, pos), IS("upper") ? 1 : IS("lower") ? 0 : 2);
    }
    if (IS("title")) { /* Jinja's: words start after - white space ( { [ < */
        cj_args_check(c, a, 0, none, f, pos);
        cj_val *s = soft_str(c, in, pos);
        cj_buf b = {0};
        cj_put(c, &b, "", 0);
        int start = 1;
        for (size_t i = 0; i < s->u.s.n;) {
            uint32_t cp = cj_u8_next(s->u.s.p, s->u.s.n, &i);
            int sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || cj_isspace(cp);
            char t[8];
            uint32_t o = sep ? cp : start ? cj_upper_cp(cp) : cj_lower_cp(cp);
            if (!sep && start && cp == 0xDF)
                cj_puts(c, &b, "SS");
            else
                cj_put(c, &b, t, (size_t)cj_u8_put(t, o));
            start = sep;
        }
        return cj_buf_str(c, &b);
    }
    if (IS("replace")) {
        cj_args_check(c, a, 3, (const char *const[]){"old", "new", "count", NULL}, f, pos);
        cj_val *o = cj_arg(a, 0, "old"), *nw = cj_arg(a, 1, "new"), *cnt = cj_arg(a, 2, "count");
        if (!o || !nw)
            cj_fail(c, pos, "replace needs the old and the new string");
        return cj_replace(c, soft_str(c, in, pos), soft_str(c, o, pos), soft_str(c, nw, pos),
                          cnt && cnt->type != CJ_NONE ? cj_as_int(c, cnt, "replace count", pos) : -1);
    }
    if (IS("length") || IS("count")) {
        cj_args_check(c, a, 0, none, f, pos);
        switch (in->type) {
        case CJ_UNDEF: return cj_int(c, 0);
        case CJ_STR: return cj_int(c, (int64_t)cj_u8_len(in->u.s.p, in->u.s.n));
        case CJ_LIST: return cj_int(c, (int64_t)in->u.l.n);
        case CJ_DICT: return cj_int(c, (int64_t)in->u.d->n);
        default: cj_fail(c, pos, "object of type '%s' has no len()", cj_type_name(in));
        }
    }
    if (IS("string")) {
        cj_args_check(c, a, 0, none, f, pos);
        return soft_str(c, in, pos);
    }
    if (IS("safe")) {
        cj_args_check(c, a, 0, none, f, pos);
        return soft_str(c, in, pos);
    }
    if (IS("e") || IS("escape") || IS("forceescape")) {
        cj_args_check(c, a, 0, none, f, pos);
        return html_escape(c, soft_str(c, in, pos));
    }
    if (IS("items")) {
        cj_args_check(c, a, 0, none, f, pos);
        if (in->type == CJ_UNDEF)
            return cj_list(c, 0, 0);
        if (in->type != CJ_DICT)
            cj_fail(c, pos, "Can only get item pairs from a mapping.");
        return cj_call_method(c, in, "items", &no_args, pos);
    }
    if (IS("list")) {
        cj_args_check(c, a, 0, none, f, pos);
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        cj_val *l = cj_list(c, n, 0);
        if (n)
            memcpy(l->u.l.v, items, n * sizeof *items);
        return l;
    }
    if (IS("first") || IS("last")) {
        cj_args_check(c, a, 0, none, f, pos);
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        if (!n)
            return cj_undef(c, "No %s item, sequence was empty.", f);
        return IS("first") ? items[0] : items[n - 1];
    }
    if (IS("join")) {
        cj_args_check(c, a, 2, (const char *const[]){"d", "attribute", NULL}, f, pos);
        cj_val *d = cj_arg(a, 0, "d"), *attr = cj_arg(a, 1, "attribute");
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        if (attr && attr->type != CJ_NONE) {
            cj_val **m = cj_alloc(c, (n + 1) * sizeof *m);
            for (size_t i = 0; i < n; i++)
                m[i] = cj_attr_path(c, items[i], attr, pos);
            items = m;
        }
        return join_values(c, items, n, d ? soft_str(c, d, pos) : cj_str(c, "", 0), pos);
    }
    if (IS("int")) {
        cj_args_check(c, a, 2, (const char *const[]){"default", "base", NULL}, f, pos);
        cj_val *dv = cj_arg(a, 0, "default"), *bv = cj_arg(a, 1, "base");
        int64_t base = bv ? cj_as_int(c, bv, "int base", pos) : 10, r;
        double d;
        if (in->type == CJ_INT || in->type == CJ_BOOL)
            return cj_int(c, in->u.i);
        if (in->type == CJ_FLOAT && isfinite(in->u.f) && fabs(in->u.f) < 9.2e18)
            return cj_int(c, (int64_t)trunc(in->u.f));
        if (in->type == CJ_FLOAT)
            cj_fail(c, pos, "cannot convert float %s to integer", isnan(in->u.f) ? "NaN" : "infinity");
        if (in->type == CJ_STR) {
            if ((base == 0 || (base >= 2 && base <= 36)) && parse_int(in, base, &r))
                return cj_int(c, r);
            if (parse_float(in, &d)) {
                if (!isfinite(d) || fabs(d) >= 9.2e18)
                    cj_fail(c, pos, "cannot convert float to integer");
                return cj_int(c, (int64_t)trunc(d));
            }
        }
        return dv ? dv : cj_int(c, 0);
    }
    if (IS("float")) {
        cj_args_check(c, a, 1, (const char *const[]){"default", NULL}, f, pos);
        cj_val *dv = cj_arg(a, 0, "default");
        double d;
        if (cj_is_number(in))
            return cj_float(c, cj_num(in));
        if (in->type == CJ_STR && parse_float(in, &d))
            return cj_float(c, d);
        return dv ? dv : cj_float(c, 0.0);
    }
    if (IS("abs")) {
        cj_args_check(c, a, 0, none, f, pos);
        cj_check_undef(c, in, pos);
        if (in->type == CJ_FLOAT)
            return cj_float(c, fabs(in->u.f));
        if (in->type == CJ_INT || in->type == CJ_BOOL)
            return cj_int(c, in->u.i < 0 ? -in->u.i : in->u.i);
        cj_fail(c, pos, "bad operand type for abs(): '%s'", cj_type_name(in));
    }
    if (IS("round")) {
        cj_args_check(c, a, 2, (const char *const[]){"precision", "method", NULL}, f, pos);
        cj_val *pv = cj_arg(a, 0, "precision"), *mv = cj_arg(a, 1, "method");
        int64_t prec = pv ? cj_as_int(c, pv, "round precision", pos) : 0;
        const char *method = mv && mv->type == CJ_STR ? mv->u.s.p : "common";
        cj_check_undef(c, in, pos);
        if (!cj_is_number(in))
            cj_fail(c, pos, "round: type %s doesn't define __round__", cj_type_name(in));
        if (prec < -300 || prec > 300)
            cj_fail(c, pos, "round: precision out of range");
        double x = cj_num(in), s = pow(10.0, (double)prec);
        if (!strcmp(method, "common")) {
            if (in->type != CJ_FLOAT && prec >= 0)
                return cj_int(c, in->u.i);
            char t[400];
            if (prec >= 0) {
                snprintf(t, sizeof t, "%.*f", (int)prec, x); /* correctly rounded, half to even: Python's round */
                return cj_float(c, strtod(t, NULL));
            }
            return cj_float(c, nearbyint(x * s) / s);
        }
        if (!strcmp(method, "floor"))
            return cj_float(c, floor(x * s) / s);
        if (!strcmp(method, "ceil"))
            return cj_float(c, ceil(x * s) / s);
        cj_fail(c, pos, "method must be 'common', 'ceil' or 'floor'");
    }
    if (IS("select") || IS("reject"))
        return select_common(c, in, a, 0, IS("select"), pos);
    if (IS("selectattr") || IS("rejectattr"))
        return select_common(c, in, a, 1, IS("selectattr"), pos);
    if (IS("map")) {
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        cj_val *attr = cj_arg(a, -1, "attribute"), *dflt = cj_arg(a, -1, "default");
        cj_val *l = cj_list(c, n, 0);
        if (attr) {
            for (size_t i = 0; i < n; i++) {
                cj_val *v = cj_attr_path(c, items[i], attr, pos);
                l->u.l.v[i] = v->type == CJ_UNDEF && dflt ? dflt : v;
            }
            return l;
        }
        cj_val *fname = cj_arg(a, 0, NULL);
        if (!fname || fname->type != CJ_STR || !cj_known_filter(fname->u.s.p))
            cj_fail(c, pos, "map: no filter named %s", fname && fname->type == CJ_STR ? fname->u.s.p : "(missing)");
        cj_args fa = args_after(a, 1);
        for (size_t i = 0; i < n; i++)
            l->u.l.v[i] = cj_filter(c, fname->u.s.p, items[i], &fa, pos);
        return l;
    }
    if (IS("dictsort")) {
        cj_args_check(c, a, 3, (const char *const[]){"case_sensitive", "by", "reverse", NULL}, f, pos);
        cj_val *cs = cj_arg(a, 0, "case_sensitive"), *by = cj_arg(a, 1, "by"), *rev = cj_arg(a, 2, "reverse");
        if (in->type != CJ_DICT)
            cj_fail(c, pos, "dictsort needs a mapping, not %s", cj_type_name(in));
        int by_value = by && by->type == CJ_STR && !strcmp(by->u.s.p, "value");
        if (by && !(by->type == CJ_STR && (!strcmp(by->u.s.p, "value") || !strcmp(by->u.s.p, "key"))))
            cj_fail(c, pos, "You can only sort by either \"key\" or \"value\"");
        cj_val *pairs = cj_call_method(c, in, "items", &no_args, pos);
        size_t n = pairs->u.l.n;
        cj_val **keys = cj_alloc(c, (n + 1) * sizeof *keys);
        for (size_t i = 0; i < n; i++)
            keys[i] = fold_key(c, pairs->u.l.v[i]->u.l.v[by_value], cs && cj_truthy(cs));
        return sorted_copy(c, pairs->u.l.v, n, keys, rev && cj_truthy(rev), pos);
    }
    if (IS("sort")) {
        cj_args_check(c, a, 3, (const char *const[]){"reverse", "case_sensitive", "attribute", NULL}, f, pos);
        cj_val *rev = cj_arg(a, 0, "reverse"), *cs = cj_arg(a, 1, "case_sensitive"), *attr = cj_arg(a, 2, "attribute");
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        cj_val **keys = cj_alloc(c, (n + 1) * sizeof *keys);
        for (size_t i = 0; i < n; i++)
            keys[i] = fold_key(c, attr && attr->type != CJ_NONE ? cj_attr_path(c, items[i], attr, pos) : items[i],
                               cs && cj_truthy(cs));
        return sorted_copy(c, items, n, keys, rev && cj_truthy(rev), pos);
    }
    if (IS("unique")) {
        cj_args_check(c, a, 2, (const char *const[]){"case_sensitive", "attribute", NULL}, f, pos);
        cj_val *cs = cj_arg(a, 0, "case_sensitive"), *attr = cj_arg(a, 1, "attribute");
        size_t n, k = 0;
        cj_val **items = cj_iter(c, in, &n, pos);
        cj_val **keys = cj_alloc(c, (n + 1) * sizeof *keys), **out = cj_alloc(c, (n + 1) * sizeof *out);
        for (size_t i = 0; i < n; i++) {
            cj_val *key = fold_key(c, attr && attr->type != CJ_NONE ? cj_attr_path(c, items[i], attr, pos) : items[i],
                                   cs && cj_truthy(cs));
            int seen = 0;
            for (size_t j = 0; j < k && !seen; j++)
                seen = cj_eq(keys[j], key);
            if (!seen) {
                keys[k] = key;
                out[k++] = items[i];
            }
        }
        cj_val *l = cj_list(c, k, 0);
        if (k)
            memcpy(l->u.l.v, out, k * sizeof *out);
        return l;
    }
    if (IS("reverse")) {
        cj_args_check(c, a, 0, none, f, pos);
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        if (in->type == CJ_STR) {
            cj_buf b = {0};
            cj_put(c, &b, "", 0);
            for (size_t i = n; i-- > 0;)
                cj_put(c, &b, items[i]->u.s.p, items[i]->u.s.n);
            return cj_buf_str(c, &b);
        }
        cj_val *l = cj_list(c, n, 0);
        for (size_t i = 0; i < n; i++)
            l->u.l.v[i] = items[n - 1 - i];
        return l;
    }
    if (IS("max") || IS("min"))
        return aggregate(c, in, a, IS("max"), pos);
    if (IS("sum")) {
        cj_args_check(c, a, 2, (const char *const[]){"attribute", "start", NULL}, f, pos);
        cj_val *attr = cj_arg(a, 0, "attribute"), *start = cj_arg(a, 1, "start");
        size_t n;
        cj_val **items = cj_iter(c, in, &n, pos);
        cj_val *acc = start ? start : cj_int(c, 0);
        for (size_t i = 0; i < n; i++) {
            cj_val *v = attr && attr->type != CJ_NONE ? cj_attr_path(c, items[i], attr, pos) : items[i];
            cj_check_undef(c, v, pos);
            if (!cj_is_number(acc) || !cj_is_number(v))
                cj_fail(c, pos, "unsupported operand type(s) for +: '%s' and '%s'", cj_type_name(acc),
                        cj_type_name(v));
            if (acc->type == CJ_FLOAT || v->type == CJ_FLOAT)
                acc = cj_float(c, cj_num(acc) + cj_num(v));
            else
                acc = cj_int(c, acc->u.i + v->u.i);
        }
        return acc;
    }
    if (IS("attr")) {
        cj_args_check(c, a, 1, none, f, pos);
        cj_val *nm = cj_arg(a, 0, NULL);
        if (!nm || nm->type != CJ_STR)
            cj_fail(c, pos, "attr needs an attribute name");
        cj_check_undef(c, in, pos);
        if (in->type == CJ_NS) {
            cj_val *v = cj_dict_gets(in, nm->u.s.p);
            if (v)
                return v;
        } else if (cj_has_method(in, nm->u.s.p) || in->type == CJ_LOOP) {
            return cj_getattr(c, in, nm->u.s.p, pos);
        }
        return cj_undef(c, "'%s object' has no attribute '%s'", cj_type_name(in), nm->u.s.p);
    }
    if (IS("center")) {
        cj_args_check(c, a, 1, (const char *const[]){"width", NULL}, f, pos);
        cj_val *w = cj_arg(a, 0, "width");
        cj_args ca = {.pos = (cj_val *[]){w ? w : cj_int(c, 80)}, .npos = 1};
        return cj_call_method(c, soft_str(c, in, pos), "center", &ca, pos);
    }
    if (IS("indent")) {
        cj_args_check(c, a, 3, (const char *const[]){"width", "first", "blank", NULL}, f, pos);
        cj_val *w = cj_arg(a, 0, "width"), *first = cj_arg(a, 1, "first"), *blank = cj_arg(a, 2, "blank");
        cj_val *ind;
        if (w && w->type == CJ_STR) {
            ind = w;
        } else {
            int64_t k = w ? cj_as_int(c, w, "indent width", pos) : 4;
            if (k > 10000)
                cj_fail(c, pos, "indent width too large");
            char *sp = cj_alloc(c, (size_t)(k > 0 ? k : 0) + 1);
            memset(sp, ' ', (size_t)(k > 0 ? k : 0));
            ind = cj_str0(c, sp);
        }
        cj_buf sb = {0};
        cj_val *s = soft_str(c, in, pos);
        cj_put(c, &sb, s->u.s.p, s->u.s.n);
        cj_putc(c, &sb, '\n'); /* Jinja's quirk for splitlines */
        cj_val *lines = cj_call_method(c, cj_buf_str(c, &sb), "splitlines", &no_args, pos);
        cj_buf b = {0};
        cj_put(c, &b, "", 0);
        if (first && cj_truthy(first))
            cj_put(c, &b, ind->u.s.p, ind->u.s.n);
        for (size_t i = 0; i < lines->u.l.n; i++) {
            const cj_val *ln = lines->u.l.v[i];
            if (i) {
                cj_putc(c, &b, '\n');
                if ((blank && cj_truthy(blank)) || ln->u.s.n)
                    cj_put(c, &b, ind->u.s.p, ind->u.s.n);
            }
            cj_put(c, &b, ln->u.s.p, ln->u.s.n);
        }
        return cj_buf_str(c, &b);
    }
    if (IS("wordcount")) {
        cj_args_check(c, a, 0, none, f, pos);
        cj_val *s = soft_str(c, in, pos);
        int64_t k = 0;
        int inword = 0;
        for (size_t i = 0; i < s->u.s.n;) {
            uint32_t cp = cj_u8_next(s->u.s.p, s->u.s.n, &i);
            int w = cj_isalpha_cp(cp) || cj_isdigit_cp(cp) || cp == '_';
            k += w && !inword;
            inword = w;
        }
        return cj_int(c, k);
    }
    if (IS("format")) {
        cj_val *s = soft_str(c, in, pos);
        if (a->nkw && a->npos)
            cj_fail(c, pos, "can't handle positional and keyword arguments at the same time");
        if (a->nkw) {
            cj_val *d = cj_dict_new(c, CJ_DICT);
            for (int i = 0; i < a->nkw; i++)
                cj_dict_set(c, d, cj_str0(c, a->kwn[i]), a->kwv[i]);
            return cj_percent(c, s, d, pos);
        }
        cj_val *t = cj_list(c, (size_t)a->npos, 1);
        for (int i = 0; i < a->npos; i++)
            t->u.l.v[i] = a->pos[i];
        return cj_percent(c, s, t, pos);
    }
    if (IS("truncate")) {
        cj_args_check(c, a, 4, (const char *const[]){"length", "killwords", "end", "leeway", NULL}, f, pos);
        cj_val *lv = cj_arg(a, 0, "length"), *kw = cj_arg(a, 1, "killwords"), *ev = cj_arg(a, 2, "end"),
               *lw = cj_arg(a, 3, "leeway");
        cj_val *s = soft_str(c, in, pos), *end = ev ? soft_str(c, ev, pos) : cj_str0(c, "...");
        int64_t length = lv ? cj_as_int(c, lv, "truncate length", pos) : 255,
                leeway = lw && lw->type != CJ_NONE ? cj_as_int(c, lw, "truncate leeway", pos) : 5;
        int64_t slen = (int64_t)cj_u8_len(s->u.s.p, s->u.s.n), elen = (int64_t)cj_u8_len(end->u.s.p, end->u.s.n);
        if (length < elen)
            cj_fail(c, pos, "expected length >= %lld, got %lld", (long long)elen, (long long)length);
        if (leeway < 0)
            cj_fail(c, pos, "expected leeway >= 0, got %lld", (long long)leeway);
        if (slen <= length + leeway)
            return s;
        size_t cut = cj_u8_offset(s->u.s.p, s->u.s.n, (size_t)(length - elen));
        cj_buf b = {0};
        cj_put(c, &b, "", 0);
        if (kw && cj_truthy(kw)) {
            cj_put(c, &b, s->u.s.p, cut);
        } else { /* rsplit(" ", 1)[0] of the cut text */
            const char *sp = NULL;
            for (size_t i = cut; i-- > 0;)
                if (s->u.s.p[i] == ' ') {
                    sp = s->u.s.p + i;
                    break;
                }
            cj_put(c, &b, s->u.s.p, sp ? (size_t)(sp - s->u.s.p) : cut);
        }
        cj_put(c, &b, end->u.s.p, end->u.s.n);
        return cj_buf_str(c, &b);
    }
#undef IS
    cj_fail(c, pos, "unsupported filter '%s'", f);
}

int cj_test(cj_ctx *c, const char *t, const cj_val *v, const cj_args *a, long pos)
{
#define IS(x) (!strcmp(t, x))
    cj_val *arg = cj_arg(a, 0, NULL);
    if (IS("defined"))
        return v->type != CJ_UNDEF;
    if (IS("undefined"))
        return v->type == CJ_UNDEF;
    if (IS("none"))
        return v->type == CJ_NONE;
    if (IS("boolean"))
        return v->type == CJ_BOOL;
    if (IS("true"))
        return v->type == CJ_BOOL && v->u.i;
    if (IS("false"))
        return v->type == CJ_BOOL && !v->u.i;
    if (IS("integer"))
        return v->type == CJ_INT;
    if (IS("float"))
        return v->type == CJ_FLOAT;
    if (IS("number"))
        return cj_is_number(v);
    if (IS("string"))
        return v->type == CJ_STR;
    if (IS("mapping"))
        return v->type == CJ_DICT;
    if (IS("iterable") || IS("sequence"))
        return v->type == CJ_STR || v->type == CJ_LIST || v->type == CJ_DICT || v->type == CJ_UNDEF;
    if (IS("callable"))
        return v->type == CJ_MACRO || v->type == CJ_FUNC || v->type == CJ_METHOD || v->type == CJ_UNDEF;
    if (IS("escaped"))
        return 0;
    if (IS("lower") || IS("upper")) {
        cj_val *s = soft_str(c, v, pos);
        return cj_truthy(cj_call_method(c, s, IS("lower") ? "islower" : "isupper", &no_args, pos));
    }
    if (IS("filter") || IS("test")) {
        if (v->type != CJ_STR)
            return 0;
        return IS("filter") ? cj_known_filter(v->u.s.p) : cj_known_test(v->u.s.p);
    }
    if (IS("odd") || IS("even"))
        return (cj_as_int(c, v, t, pos) & 1) == IS("odd");
    if (!arg)
        cj_fail(c, pos, "the test '%s' needs an argument", t);
    if (IS("sameas")) {
        if (v->type == CJ_NONE || arg->type == CJ_NONE || v->type == CJ_BOOL || arg->type == CJ_BOOL)
            return v->type == arg->type && (v->type == CJ_NONE || v->u.i == arg->u.i);
        if (v->type == CJ_INT && arg->type == CJ_INT) /* CPython keeps one object per small int */
            return v->u.i == arg->u.i && v->u.i >= -5 && v->u.i <= 256;
        return v == arg;
    }
    if (IS("divisibleby")) {
        int64_t x = cj_as_int(c, v, t, pos), d = cj_as_int(c, arg, t, pos);
        if (!d)
            cj_fail(c, pos, "integer division or modulo by zero");
        return x % d == 0;
    }
    if (IS("in")) {
        if (arg->type == CJ_STR) {
            if (v->type != CJ_STR)
                cj_fail(c, pos, "'in <string>' requires string as left operand, not %s", cj_type_name(v));
            return !v->u.s.n || memmem(arg->u.s.p, arg->u.s.n, v->u.s.p, v->u.s.n) != NULL;
        }
        size_t n;
        cj_val **items = cj_iter(c, arg, &n, pos);
        for (size_t i = 0; i < n; i++)
            if (cj_eq(items[i], v))
                return 1;
        return 0;
    }
    if (IS("==") || IS("eq") || IS("equalto"))
        return cj_eq(v, arg);
    if (IS("!=") || IS("ne"))
        return !cj_eq(v, arg);
    int r = IS("<") || IS("lt") || IS("lessthan") ? -1 : IS(">") || IS("gt") || IS("greaterthan") ? 1 : 0;
    int k = cj_cmp(c, v, arg, pos, r < 0 ? "<" : r > 0 ? ">" : (IS("<=") || IS("le")) ? "<=" : ">=");
    if (k == 2)
        return 0;
    if (r)
        return k == r;
    return IS("<=") || IS("le") ? k <= 0 : k >= 0;
#undef IS
}
