/* prefopt: Python's str methods as chat templates call them (strip/split/rsplit/splitlines, startswith/endswith
 * with tuples and bounds, find/count/replace, join, case, padding, partition, removeprefix), printf-style `%`
 * formatting, and the argument binding every filter and method uses. Counts and offsets are in code points, as
 * Python's; the bytes stay UTF-8. */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arguments ------------------------------------------------------------------------------------------------ */
cj_val *cj_arg(const cj_args *a, int i, const char *name)
{
    if (i >= 0 && i < a->npos)
        return a->pos[i];
    if (name)
        for (int k = 0; k < a->nkw; k++)
            if (!strcmp(a->kwn[k], name))
                return a->kwv[k];
    return NULL;
}

void cj_args_check(cj_ctx *c, const cj_args *a, int maxpos, const char *const *names, const char *what, long pos)
{
    if (a->npos > maxpos)
        cj_fail(c, pos, "%s takes at most %d positional argument(s) (%d given)", what, maxpos, a->npos);
    for (int k = 0; k < a->nkw; k++) {
        int ok = 0, idx = 0;
        for (const char *const *n = names; *n; n++, idx++)
            if (!strcmp(*n, a->kwn[k])) {
                ok = 1;
                if (idx < a->npos)
                    cj_fail(c, pos, "%s got multiple values for argument '%s'", what, a->kwn[k]);
            }
        if (!ok)
            cj_fail(c, pos, "%s got an unexpected keyword argument '%s'", what, a->kwn[k]);
    }
}

int64_t cj_as_int(cj_ctx *c, const cj_val *v, const char *what, long pos)
{
    cj_check_undef(c, v, pos);
    if (v->type != CJ_INT && v->type != CJ_BOOL)
        cj_fail(c, pos, "%s: '%s' object cannot be interpreted as an integer", what, cj_type_name(v));
    return v->u.i;
}

const cj_val *cj_want_str(cj_ctx *c, const cj_val *v, const char *what, long pos)
{
    cj_check_undef(c, v, pos);
    if (v->type != CJ_STR)
        cj_fail(c, pos, "%s: must be str, not %s", what, cj_type_name(v));
    return v;
}

/* ---- string helpers -------------------------------------------------------------------------------------------- */
static int in_chars(const cj_val *chars, uint32_t cp)
{
    size_t i = 0;
    while (i < chars->u.s.n)
        if (cj_u8_next(chars->u.s.p, chars->u.s.n, &i) == cp)
            return 1;
    return 0;
}

/* str.strip/lstrip/rstrip(chars=None): which 1 left, 2 right, 3 both */
cj_val *cj_strip(cj_ctx *c, const cj_val *s, const cj_val *chars, int which)
{
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, a = 0, b = n;
    int ws = !chars || chars->type == CJ_NONE;
    if (which & 1)
        while (a < n) {
            size_t j = a;
            uint32_t cp = cj_u8_next(p, n, &j);
            if (ws ? !cj_isspace(cp) : !in_chars(chars, cp))
                break;
            a = j;
        }
    if (which & 2)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            size_t j = st;
            uint32_t cp = cj_u8_next(p, n, &j);
            if (ws ? !cj_isspace(cp) : !in_chars(chars, cp))
                break;
            b = st;
        }
    return cj_str(c, p + a, b - a);
}

cj_val *cj_list_from(cj_ctx *c, cj_val **items, size_t n)
{
    cj_val *l = cj_list(c, n, 0);
    if (n)
        memcpy(l->u.l.v, items, n * sizeof *items);
    return l;
}

static cj_val *do_split(cj_ctx *c, const cj_val *s, const cj_val *sep, int64_t maxsplit, int right, long pos)
{
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, cap = 16, k = 0;
    cj_val **parts = cj_alloc(c, cap * sizeof *parts);
#define ADD(ptr, len)                                                                                               \
    do {                                                                                                            \
        if (k == cap) {                                                                                             \
            cj_val **np = cj_alloc(c, 2 * cap * sizeof *np);                                                        \
            memcpy(np, parts, cap * sizeof *np);                                                                    \
            parts = np;                                                                                             \
            cap *= 2;                                                                                               \
        }                                                                                                           \
        parts[k++] = cj_str(c, (ptr), (len));                                                                       \
    } while (0)
    if (!sep || sep->type == CJ_NONE) { /* runs of white space, none at the ends */
        /* collect words with their spans, then honour maxsplit from the chosen side */
        size_t wcap = 16, nw = 0, *ws = cj_alloc(c, wcap * 2 * sizeof *ws);
        for (size_t i = 0; i < n;) {
            size_t j = i;
            uint32_t cp = cj_u8_next(p, n, &j);
            if (cj_isspace(cp)) {
                i = j;
                continue;
            }
            size_t st = i;
            while (i < n) {
                j = i;
                if (cj_isspace(cj_u8_next(p, n, &j)))
                    break;
                i = j;
            }
            if (nw == wcap) {
                size_t *nws = cj_alloc(c, wcap * 4 * sizeof *nws);
                memcpy(nws, ws, wcap * 2 * sizeof *nws);
                ws = nws;
                wcap *= 2;
            }
            ws[2 * nw] = st;
            ws[2 * nw + 1] = i;
            nw++;
        }
        if (maxsplit < 0 || (size_t)maxsplit + 1 >= nw) {
            for (size_t w = 0; w < nw; w++)
                ADD(p + ws[2 * w], ws[2 * w + 1] - ws[2 * w]);
        } else if (!right) {
            for (size_t w = 0; w < (size_t)maxsplit; w++)
                ADD(p + ws[2 * w], ws[2 * w + 1] - ws[2 * w]);
            size_t st = ws[2 * maxsplit];
            size_t en = n;
            while (en > st) { /* the rest keeps inner white space but not the trailing run */
                size_t b = en - 1;
                while (b > st && ((unsigned char)p[b] & 0xC0) == 0x80)
                    b--;
                size_t j = b;
                if (!cj_isspace(cj_u8_next(p, n, &j)))
                    break;
                en = b;
            }
            ADD(p + st, en - st);
        } else {
            size_t first = nw - (size_t)maxsplit;
            ADD(p, ws[2 * (first - 1) + 1]);
            size_t st = 0;
            while (st < ws[2 * (first - 1) + 1]) {
                size_t j = st;
                if (!cj_isspace(cj_u8_next(p, n, &j)))
                    break;
                st = j;
            }
            parts[0] = cj_str(c, p + st, ws[2 * (first - 1) + 1] - st);
            for (size_t w = first; w < nw; w++)
                ADD(p + ws[2 * w], ws[2 * w + 1] - ws[2 * w]);
        }
        return cj_list_from(c, parts, k);
    }
    cj_want_str(c, sep, "split() separator", pos);
    size_t m = sep->u.s.n;
    if (!m)
        cj_fail(c, pos, "empty separator");
    if (!right) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *hit = maxsplit >= 0 && done >= maxsplit ? NULL : memmem(p + i, n - i, sep->u.s.p, m);
            if (!hit) {
                ADD(p + i, n - i);
                break;
            }
            ADD(p + i, (size_t)(hit - (p + i)));
            i = (size_t)(hit - p) + m;
            done++;
        }
        return cj_list_from(c, parts, k);
    }
    /* rsplit: find from the right */
    size_t end = n;
    int64_t done = 0;
    for (;;) {
        size_t hit = (size_t)-1;
        if (!(maxsplit >= 0 && done >= maxsplit) && end >= m)
            for (size_t q = end - m + 1; q-- > 0;)
                if (!memcmp(p + q, sep->u.s.p, m)) {
                    hit = q;
                    break;
                }
        if (hit == (size_t)-1) {
            ADD(p, end);
            break;
        }
        ADD(p + hit + m, end - hit - m);
        end = hit;
        done++;
    }
    for (size_t i = 0; i < k / 2; i++) {
        cj_val *t = parts[i];
        parts[i] = parts[k - 1 - i];
        parts[k - 1 - i] = t;
    }
    return cj_list_from(c, parts, k);
#undef ADD
}

cj_val *cj_replace(cj_ctx *c, const cj_val *s, const cj_val *old, const cj_val *new_, int64_t count)
{
    cj_buf b = {0};
    cj_put(c, &b, "", 0);
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, m = old->u.s.n;
    int64_t done = 0;
    if (!m) { /* Python inserts new_ before every character and at the end */
        size_t i = 0;
        while (i <= n && (count < 0 || done < count)) {
            cj_put(c, &b, new_->u.s.p, new_->u.s.n);
            done++;
            if (i == n) {
                i++;
                break;
            }
            size_t st = i;
            cj_u8_next(p, n, &i);
            cj_put(c, &b, p + st, i - st);
        }
        if (i <= n)
            cj_put(c, &b, p + i, n - i);
        return cj_buf_str(c, &b);
    }
    size_t i = 0;
    for (;;) {
        const char *hit = (count >= 0 && done >= count) ? NULL : memmem(p + i, n - i, old->u.s.p, m);
        if (!hit)
            break;
        cj_put(c, &b, p + i, (size_t)(hit - (p + i)));
        cj_put(c, &b, new_->u.s.p, new_->u.s.n);
        i = (size_t)(hit - p) + m;
        done++;
    }
    cj_put(c, &b, p + i, n - i);
    return cj_buf_str(c, &b);
}

/* code-point bounds start/end of Python's str methods, as byte offsets */
static void bounds(cj_ctx *c, const cj_val *s, const cj_args *a, int first, size_t *lo, size_t *hi, long pos)
{
    int64_t len = (int64_t)cj_u8_len(s->u.s.p, s->u.s.n), st = 0, en = len;
    cj_val *x = cj_arg(a, first, NULL), *y = cj_arg(a, first + 1, NULL);
    if (x && x->type != CJ_NONE)
        st = cj_as_int(c, x, "start", pos);
    if (y && y->type != CJ_NONE)
        en = cj_as_int(c, y, "end", pos);
    if (st < 0)
        st = st + len < 0 ? 0 : st + len;
    if (en < 0)
        en = en + len < 0 ? 0 : en + len;
    if (st > len)
        st = len + 1; /* an empty range past the end */
    if (en > len)
        en = len;
    *lo = st > len ? s->u.s.n + 1 : cj_u8_offset(s->u.s.p, s->u.s.n, (size_t)st);
    *hi = cj_u8_offset(s->u.s.p, s->u.s.n, (size_t)en);
}

static int affix(cj_ctx *c, const cj_val *s, const cj_args *a, int suffix, long pos)
{
    size_t lo, hi;
    bounds(c, s, a, 1, &lo, &hi, pos);
    cj_val *x = cj_arg(a, 0, NULL);
    if (!x)
        cj_fail(c, pos, "%s() takes at least 1 argument", suffix ? "endswith" : "startswith");
    size_t n = 1;
    cj_val *const *opts = &x;
    if (x->type == CJ_LIST && x->tuple) {
        opts = x->u.l.v;
        n = x->u.l.n;
    }
    for (size_t i = 0; i < n; i++) {
        const cj_val *o = cj_want_str(c, opts[i], suffix ? "endswith" : "startswith", pos);
        if (lo > hi || hi - lo < o->u.s.n)
            continue;
        const char *at = suffix ? s->u.s.p + hi - o->u.s.n : s->u.s.p + lo;
        if (!memcmp(at, o->u.s.p, o->u.s.n))
            return 1;
    }
    return 0;
}

static int64_t find(const cj_val *s, const cj_val *sub, size_t lo, size_t hi, int right)
{
    if (lo > hi || hi - lo < sub->u.s.n)
        return -1;
    size_t m = sub->u.s.n;
    size_t best = (size_t)-1;
    for (size_t q = lo; q + m <= hi; q++)
        if (!memcmp(s->u.s.p + q, sub->u.s.p, m)) {
            best = q;
            if (!right)
                break;
        }
    if (best == (size_t)-1)
        return -1;
    return (int64_t)cj_u8_len(s->u.s.p, best);
}

static cj_val *pad(cj_ctx *c, const cj_val *s, int64_t width, const char *fill, int mode) /* 0 left, 1 right, 2 center */
{
    int64_t len = (int64_t)cj_u8_len(s->u.s.p, s->u.s.n);
    if (width <= len)
        return (cj_val *)s;
    int64_t total = width - len, left = mode == 0 ? 0 : mode == 1 ? total : total / 2 + (total & width & 1);
    cj_buf b = {0};
    for (int64_t i = 0; i < left; i++)
        cj_puts(c, &b, fill);
    cj_put(c, &b, s->u.s.p, s->u.s.n);
    for (int64_t i = 0; i < total - left; i++)
        cj_puts(c, &b, fill);
    return cj_buf_str(c, &b);
}

/* str.format with plain fields: {}, {0}, {name}, {name.attr}, {{ and }}, conversions !s !r; no format specs */
/* ---- str methods (format is chat_methods.c's: it looks attributes up) ------------------------------------ */
cj_val *cj_str_method(cj_ctx *c, const cj_val *s, const char *m, const cj_args *a, long pos)
{
    const char *const none[] = {NULL};
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        cj_args_check(c, a, 1, none, m, pos);
        cj_val *ch = cj_arg(a, 0, NULL);
        if (ch && ch->type != CJ_NONE)
            cj_want_str(c, ch, m, pos);
        return cj_strip(c, s, ch, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3);
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        cj_args_check(c, a, 2, (const char *const[]){"sep", "maxsplit", NULL}, m, pos);
        cj_val *sep = cj_arg(a, 0, "sep"), *mx = cj_arg(a, 1, "maxsplit");
        return do_split(c, s, sep, mx ? cj_as_int(c, mx, m, pos) : -1, m[0] == 'r', pos);
    }
    if (!strcmp(m, "splitlines")) {
        cj_args_check(c, a, 1, (const char *const[]){"keepends", NULL}, m, pos);
        cj_val *ke = cj_arg(a, 0, "keepends");
        int keep = ke && cj_truthy(ke);
        cj_val **parts = cj_alloc(c, (s->u.s.n + 1) * sizeof *parts);
        size_t k = 0, i = 0, st = 0;
        const char *p = s->u.s.p;
        while (i < s->u.s.n) {
            size_t j = i;
            uint32_t cp = cj_u8_next(p, s->u.s.n, &j);
            int brk = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D ||
                      cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
            if (brk) {
                if (cp == '\r' && j < s->u.s.n && p[j] == '\n')
                    j++;
                parts[k++] = cj_str(c, p + st, (keep ? j : i) - st);
                st = j;
            }
            i = j;
        }
        if (st < s->u.s.n)
            parts[k++] = cj_str(c, p + st, s->u.s.n - st);
        return cj_list_from(c, parts, k);
    }
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        cj_args_check(c, a, 3, none, m, pos);
        return cj_bool(affix(c, s, a, m[0] == 'e', pos));
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") || !strcmp(m, "capitalize") ||
        !strcmp(m, "casefold")) {
        cj_args_check(c, a, 0, none, m, pos);
        int mode = m[0] == 'u' ? 1 : m[0] == 't' ? 3 : (m[0] == 'c' && m[1] == 'a' && m[2] == 'p') ? 2 : 0;
        return cj_case(c, s, mode);
    }
    if (!strcmp(m, "replace")) {
        cj_args_check(c, a, 3, none, m, pos);
        cj_val *o = cj_arg(a, 0, NULL), *nw = cj_arg(a, 1, NULL), *cnt = cj_arg(a, 2, NULL);
        if (!o || !nw)
            cj_fail(c, pos, "replace() takes at least 2 arguments");
        return cj_replace(c, s, cj_want_str(c, o, m, pos), cj_want_str(c, nw, m, pos), cnt ? cj_as_int(c, cnt, m, pos) : -1);
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex") ||
        !strcmp(m, "count")) {
        cj_args_check(c, a, 3, none, m, pos);
        cj_val *sub = cj_arg(a, 0, NULL);
        if (!sub)
            cj_fail(c, pos, "%s() takes at least 1 argument", m);
        cj_want_str(c, sub, m, pos);
        size_t lo, hi;
        bounds(c, s, a, 1, &lo, &hi, pos);
        if (!strcmp(m, "count")) {
            if (lo > hi)
                return cj_int(c, 0);
            if (!sub->u.s.n)
                return cj_int(c, (int64_t)cj_u8_len(s->u.s.p + lo, hi - lo) + 1);
            int64_t k = 0;
            for (size_t q = lo; q + sub->u.s.n <= hi;) {
                if (!memcmp(s->u.s.p + q, sub->u.s.p, sub->u.s.n)) {
                    k++;
                    q += sub->u.s.n;
                } else {
                    q++;
                }
            }
            return cj_int(c, k);
        }
        int64_t r = find(s, sub, lo, hi, m[0] == 'r');
        if (r < 0 && strstr(m, "index"))
            cj_fail(c, pos, "substring not found");
        return cj_int(c, r);
    }
    if (!strcmp(m, "join")) {
        cj_args_check(c, a, 1, none, m, pos);
        cj_val *it = cj_arg(a, 0, NULL);
        if (!it)
            cj_fail(c, pos, "join() takes exactly one argument");
        size_t n;
        cj_val **items = cj_iter(c, it, &n, pos);
        cj_buf b = {0};
        cj_put(c, &b, "", 0);
        for (size_t i = 0; i < n; i++) {
            if (items[i]->type != CJ_STR)
                cj_fail(c, pos, "sequence item %zu: expected str instance, %s found", i, cj_type_name(items[i]));
            if (i)
                cj_put(c, &b, s->u.s.p, s->u.s.n);
            cj_put(c, &b, items[i]->u.s.p, items[i]->u.s.n);
        }
        return cj_buf_str(c, &b);
    }
    if (!strncmp(m, "is", 2) && strcmp(m, "isnumeric") && strcmp(m, "isdecimal") && strcmp(m, "istitle") &&
        strcmp(m, "isidentifier") && strcmp(m, "isprintable") && strcmp(m, "isascii")) {
        cj_args_check(c, a, 0, none, m, pos);
        if (!s->u.s.n)
            return &cj_false_v;
        int any_cased = 0, ok = 1;
        for (size_t i = 0; i < s->u.s.n && ok;) {
            uint32_t cp = cj_u8_next(s->u.s.p, s->u.s.n, &i);
            int lo = cj_lower_cp(cp) == cp && cj_upper_cp(cp) != cp, up = cj_upper_cp(cp) == cp && cj_lower_cp(cp) != cp;
            if (!strcmp(m, "isdigit"))
                ok = cj_isdigit_cp(cp);
            else if (!strcmp(m, "isalpha"))
                ok = cj_isalpha_cp(cp);
            else if (!strcmp(m, "isalnum"))
                ok = cj_isalpha_cp(cp) || cj_isdigit_cp(cp);
            else if (!strcmp(m, "isspace"))
                ok = cj_isspace(cp);
            else if (!strcmp(m, "islower")) {
                ok = !up;
                any_cased |= lo;
            } else if (!strcmp(m, "isupper")) {
                ok = !lo;
                any_cased |= up;
            }
        }
        if (!strcmp(m, "islower") || !strcmp(m, "isupper"))
            ok = ok && any_cased;
        return cj_bool(ok);
    }
    if (!strcmp(m, "center") || !strcmp(m, "ljust") || !strcmp(m, "rjust")) {
        cj_args_check(c, a, 2, none, m, pos);
        cj_val *w = cj_arg(a, 0, NULL), *f = cj_arg(a, 1, NULL);
        if (!w)
            cj_fail(c, pos, "%s() takes at least 1 argument", m);
        const char *fill = " ";
        if (f) {
            cj_want_str(c, f, m, pos);
            if (cj_u8_len(f->u.s.p, f->u.s.n) != 1)
                cj_fail(c, pos, "The fill character must be exactly one character long");
            fill = f->u.s.p;
        }
        return pad(c, s, cj_as_int(c, w, m, pos), fill, m[0] == 'l' ? 0 : m[0] == 'r' ? 1 : 2);
    }
    if (!strcmp(m, "zfill")) {
        cj_args_check(c, a, 1, none, m, pos);
        cj_val *w = cj_arg(a, 0, NULL);
        if (!w)
            cj_fail(c, pos, "zfill() takes exactly one argument");
        int64_t width = cj_as_int(c, w, m, pos), len = (int64_t)cj_u8_len(s->u.s.p, s->u.s.n);
        if (width <= len)
            return (cj_val *)s;
        cj_buf b = {0};
        size_t st = 0;
        if (s->u.s.n && (s->u.s.p[0] == '+' || s->u.s.p[0] == '-')) {
            cj_putc(c, &b, s->u.s.p[0]);
            st = 1;
        }
        for (int64_t i = 0; i < width - len; i++)
            cj_putc(c, &b, '0');
        cj_put(c, &b, s->u.s.p + st, s->u.s.n - st);
        return cj_buf_str(c, &b);
    }
    if (!strcmp(m, "partition") || !strcmp(m, "rpartition")) {
        cj_args_check(c, a, 1, none, m, pos);
        cj_val *sep = cj_arg(a, 0, NULL);
        if (!sep)
            cj_fail(c, pos, "%s() takes exactly one argument", m);
        cj_want_str(c, sep, m, pos);
        if (!sep->u.s.n)
            cj_fail(c, pos, "empty separator");
        int64_t at = find(s, sep, 0, s->u.s.n, m[0] == 'r');
        cj_val *t = cj_list(c, 3, 1);
        cj_val *empty = cj_str(c, "", 0);
        if (at < 0) {
            t->u.l.v[0] = m[0] == 'r' ? empty : (cj_val *)s;
            t->u.l.v[1] = empty;
            t->u.l.v[2] = m[0] == 'r' ? (cj_val *)s : empty;
            return t;
        }
        size_t b = cj_u8_offset(s->u.s.p, s->u.s.n, (size_t)at);
        t->u.l.v[0] = cj_str(c, s->u.s.p, b);
        t->u.l.v[1] = (cj_val *)sep;
        t->u.l.v[2] = cj_str(c, s->u.s.p + b + sep->u.s.n, s->u.s.n - b - sep->u.s.n);
        return t;
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        cj_args_check(c, a, 1, none, m, pos);
        cj_val *x = cj_arg(a, 0, NULL);
        if (!x)
            cj_fail(c, pos, "%s() takes exactly one argument", m);
        cj_want_str(c, x, m, pos);
        size_t k = x->u.s.n;
        if (k <= s->u.s.n) {
            if (m[6] == 'p' && !memcmp(s->u.s.p, x->u.s.p, k))
                return cj_str(c, s->u.s.p + k, s->u.s.n - k);
            if (m[6] == 's' && !memcmp(s->u.s.p + s->u.s.n - k, x->u.s.p, k))
                return cj_str(c, s->u.s.p, s->u.s.n - k);
        }
        return (cj_val *)s;
    }
    cj_fail(c, pos, "the str method '%s' is not supported", m);
}

/* ---- printf-style formatting (str % args) --------------------------------------------------------------------- */
cj_val *cj_percent(cj_ctx *c, const cj_val *fmt, const cj_val *args, long pos)
{
    cj_val *const *items = (cj_val *const *)&args;
    size_t nitems = 1, used = 0;
    if (args->type == CJ_LIST && args->tuple) {
        items = args->u.l.v;
        nitems = args->u.l.n;
    }
    const cj_val *mapping = args->type == CJ_DICT ? args : NULL;
    cj_buf b = {0};
    cj_put(c, &b, "", 0);
    const char *p = fmt->u.s.p;
    size_t n = fmt->u.s.n;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            cj_putc(c, &b, p[i]);
            continue;
        }
        if (++i >= n)
            cj_fail(c, pos, "incomplete format");
        const cj_val *v = NULL;
        if (p[i] == '(') {
            const char *close = memchr(p + i, ')', n - i);
            if (!close || !mapping)
                cj_fail(c, pos, "format requires a mapping");
            cj_val *key = cj_str(c, p + i + 1, (size_t)(close - p - i - 1));
            v = cj_dict_get(mapping, key);
            if (!v)
                cj_fail(c, pos, "KeyError: '%s'", key->u.s.p);
            i = (size_t)(close - p) + 1;
        }
        char spec[32];
        size_t k = 0;
        spec[k++] = '%';
        while (i < n && strchr("-+ #0", p[i]) && k < 8)
            spec[k++] = p[i++];
        while (i < n && p[i] >= '0' && p[i] <= '9' && k < 16)
            spec[k++] = p[i++];
        if (i < n && p[i] == '.') {
            spec[k++] = p[i++];
            while (i < n && p[i] >= '0' && p[i] <= '9' && k < 24)
                spec[k++] = p[i++];
        }
        if (i >= n)
            cj_fail(c, pos, "incomplete format");
        char conv = p[i];
        if (conv == '%') {
            cj_putc(c, &b, '%');
            continue;
        }
        if (!v) {
            if (mapping)
                v = args;
            else if (used < nitems)
                v = items[used++];
            else
                cj_fail(c, pos, "not enough arguments for format string");
        }
        char out[512];
        if (conv == 's' || conv == 'r' || conv == 'a') {
            cj_buf t = {0};
            cj_put(c, &t, "", 0);
            if (conv == 's')
                cj_write_str(c, &t, v, pos);
            else
                cj_write_repr(c, &t, v, pos);
            spec[k] = '\0';
            int left = strchr(spec, '-') != NULL;
            const char *w = spec + 1;
            while (*w && strchr("-+ #0", *w))
                w++;
            long width = atol(w), prec = -1;
            const char *dotp = strchr(spec, '.');
            if (dotp)
                prec = atol(dotp + 1);
            size_t len = cj_u8_len(t.p, t.n), bytes = t.n;
            if (prec >= 0 && (size_t)prec < len) {
                bytes = cj_u8_offset(t.p, t.n, (size_t)prec);
                len = (size_t)prec;
            }
            for (long q = (long)len; !left && q < width; q++)
                cj_putc(c, &b, ' ');
            cj_put(c, &b, t.p, bytes);
            for (long q = (long)len; left && q < width; q++)
                cj_putc(c, &b, ' ');
            continue;
        }
        cj_check_undef(c, v, pos);
        if (!cj_is_number(v))
            cj_fail(c, pos, "%%%c format: a real number is required, not %s", conv, cj_type_name(v));
        if (strchr("diuxXoc", conv)) {
            long long iv = v->type == CJ_FLOAT ? (long long)trunc(v->u.f) : (long long)v->u.i;
            if (conv == 'i' || conv == 'u')
                conv = 'd';
            if (conv == 'c') {
                char u8[5] = {0};
                cj_u8_put(u8, (uint32_t)iv);
                cj_puts(c, &b, u8);
                continue;
            }
            spec[k++] = 'l';
            spec[k++] = 'l';
            spec[k++] = conv;
            spec[k] = '\0';
            snprintf(out, sizeof out, spec, iv);
        } else if (strchr("eEfFgG", conv)) {
            spec[k++] = conv;
            spec[k] = '\0';
            snprintf(out, sizeof out, spec, cj_num(v));
        } else {
            cj_fail(c, pos, "unsupported format character '%c'", conv);
        }
        cj_puts(c, &b, out);
    }
    if (!mapping && used < nitems && args->type == CJ_LIST && args->tuple)
        cj_fail(c, pos, "not all arguments converted during string formatting");
    if (!mapping && used == 0 && !(args->type == CJ_LIST && args->tuple))
        cj_fail(c, pos, "not all arguments converted during string formatting");
    return cj_buf_str(c, &b);
}
