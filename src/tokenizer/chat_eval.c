/* prefopt: the chat-template evaluator: statements and expressions over the tree of chat_parser.c, with jinja2's
 * runtime rules: scopes (a for loop's body gets a fresh scope each iteration, so a {% set %} inside it is gone
 * after it; if-blocks share the enclosing scope; macros see the scope they were defined in), the sandbox's
 * attribute lookup (obj.name tries the Python attribute first, then obj['name']; obj[key] the item first; a
 * missing one is undefined, an undefined printed is empty and fails when used), Python arithmetic and
 * comparisons, and the {% generation %} spans of transformers' AssistantTracker. */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

struct cj_scope {
    cj_scope *parent;
    cj_val *vars; /* CJ_DICT */
};

enum { FLOW_NONE, FLOW_BREAK, FLOW_CONTINUE };

static cj_scope *new_scope(cj_ctx *c, cj_scope *parent)
{
    cj_scope *s = cj_alloc(c, sizeof *s);
    s->parent = parent;
    s->vars = cj_dict_new(c, CJ_DICT);
    return s;
}

static cj_val *lookup(cj_ctx *c, cj_scope *s, const char *name)
{
    for (; s; s = s->parent) {
        cj_val *v = cj_dict_gets(s->vars, name);
        if (v)
            return v;
    }
    return cj_undef(c, "'%s' is undefined", name);
}

static void bind(cj_ctx *c, cj_scope *s, const char *name, cj_val *v) { cj_dict_set(c, s->vars, cj_str0(c, name), v); }

static void tick(cj_ctx *c, long pos)
{
    if (++c->steps > 5000000L)
        cj_fail(c, pos, "the template runs too long (more than 5 million steps)");
}

static cj_val *eval(cj_ctx *c, cj_scope *s, const cj_node *n, int *fl);
static void exec_body(cj_ctx *c, cj_scope *s, cj_node *const *body, int nbody, int *fl);

static int64_t slice_bound(cj_ctx *c, const cj_val *v, long pos)
{
    if (v->type == CJ_INT || v->type == CJ_BOOL)
        return v->u.i;
    cj_fail(c, pos, "slice indices must be integers or None, not %s", cj_type_name(v));
}

static cj_val *do_slice(cj_ctx *c, cj_scope *s, const cj_val *obj, const cj_node *sl, int *fl)
{
    cj_val *a = sl->a ? eval(c, s, sl->a, fl) : &cj_none_v, *b = sl->b ? eval(c, s, sl->b, fl) : &cj_none_v,
           *st = sl->c ? eval(c, s, sl->c, fl) : &cj_none_v;
    cj_check_undef(c, obj, sl->pos);
    if (obj->type != CJ_STR && obj->type != CJ_LIST)
        return cj_undef(c, "'%s object' is not subscriptable with a slice", cj_type_name(obj));
    int64_t len = obj->type == CJ_STR ? (int64_t)cj_u8_len(obj->u.s.p, obj->u.s.n) : (int64_t)obj->u.l.n;
    int64_t step = st->type == CJ_NONE ? 1 : slice_bound(c, st, sl->pos);
    if (step == 0)
        cj_fail(c, sl->pos, "slice step cannot be zero");
    int64_t lo, hi;
    if (a->type == CJ_NONE)
        lo = step < 0 ? len - 1 : 0;
    else {
        lo = slice_bound(c, a, sl->pos);
        if (lo < 0)
            lo += len;
        if (lo < 0)
            lo = step < 0 ? -1 : 0;
        if (lo >= len)
            lo = step < 0 ? len - 1 : len;
    }
    if (b->type == CJ_NONE)
        hi = step < 0 ? -1 : len;
    else {
        hi = slice_bound(c, b, sl->pos);
        if (hi < 0)
            hi += len;
        if (hi < 0)
            hi = step < 0 ? -1 : 0;
        if (hi >= len)
            hi = step < 0 ? len - 1 : len;
    }
    size_t cnt = 0;
    for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step)
        cnt++;
    if (obj->type == CJ_LIST) {
        cj_val *r = cj_list(c, cnt, obj->tuple);
        size_t k = 0;
        for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step)
            r->u.l.v[k++] = obj->u.l.v[i];
        return r;
    }
    size_t n;
    cj_val **chars = cj_iter(c, obj, &n, sl->pos);
    cj_buf out = {0};
    for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step)
        cj_put(c, &out, chars[i]->u.s.p, chars[i]->u.s.n);
    return cj_buf_str(c, &out);
}

/* ---- arithmetic ----------------------------------------------------------------------------------------------- */
static cj_val *arith(cj_ctx *c, int op, cj_val *a, cj_val *b, long pos)
{
    static const char *sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    cj_check_undef(c, a, pos);
    cj_check_undef(c, b, pos);
    if (cj_is_number(a) && cj_is_number(b)) {
        int ints = a->type != CJ_FLOAT && b->type != CJ_FLOAT;
        int64_t x = a->u.i, y = b->u.i, r;
        double fx = cj_num(a), fy = cj_num(b);
        switch (op) {
        case OP_ADD:
            if (ints) {
                if (__builtin_add_overflow(x, y, &r))
                    cj_fail(c, pos, "integer overflow");
                return cj_int(c, r);
            }
            return cj_float(c, fx + fy);
        case OP_SUB:
            if (ints) {
                if (__builtin_sub_overflow(x, y, &r))
                    cj_fail(c, pos, "integer overflow");
                return cj_int(c, r);
            }
            return cj_float(c, fx - fy);
        case OP_MUL:
            if (ints) {
                if (__builtin_mul_overflow(x, y, &r))
                    cj_fail(c, pos, "integer overflow");
                return cj_int(c, r);
            }
            return cj_float(c, fx * fy);
        case OP_DIV:
            if (fy == 0)
                cj_fail(c, pos, "division by zero");
            return cj_float(c, fx / fy);
        case OP_FLOORDIV:
        case OP_MOD:
            if (fy == 0)
                cj_fail(c, pos, "%s by zero", op == OP_MOD ? "modulo" : "integer division");
            if (ints) {
                if (x == INT64_MIN && y == -1)
                    cj_fail(c, pos, "integer overflow");
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                return cj_int(c, op == OP_MOD ? m : q);
            } else {
                double m = fmod(fx, fy), div = (fx - m) / fy; /* Python's float divmod */
                if (m && ((fy < 0) != (m < 0))) {
                    m += fy;
                    div -= 1.0;
                }
                if (op == OP_MOD)
                    return cj_float(c, m ? m : copysign(0.0, fy));
                double fd = floor(div);
                if (div - fd > 0.5)
                    fd += 1.0;
                return cj_float(c, div ? fd : copysign(0.0, fx / fy));
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1;
                for (int64_t k = 0; k < y; k++) {
                    if (__builtin_mul_overflow(acc, x, &acc))
                        cj_fail(c, pos, "integer overflow");
                    if (acc == 0 || acc == 1)
                        break;
                }
                return cj_int(c, acc);
            }
            return cj_float(c, pow(fx, fy));
        }
    }
    if (op == OP_ADD && a->type == CJ_STR && b->type == CJ_STR) {
        cj_buf o = {0};
        cj_put(c, &o, a->u.s.p, a->u.s.n);
        cj_put(c, &o, b->u.s.p, b->u.s.n);
        return cj_buf_str(c, &o);
    }
    if (op == OP_ADD && a->type == CJ_LIST && b->type == CJ_LIST && a->tuple == b->tuple) {
        cj_val *r = cj_list(c, a->u.l.n + b->u.l.n, a->tuple);
        if (a->u.l.n)
            memcpy(r->u.l.v, a->u.l.v, a->u.l.n * sizeof *r->u.l.v);
        if (b->u.l.n)
            memcpy(r->u.l.v + a->u.l.n, b->u.l.v, b->u.l.n * sizeof *r->u.l.v);
        return r;
    }
    if (op == OP_MUL && (a->type == CJ_STR || a->type == CJ_LIST || b->type == CJ_STR || b->type == CJ_LIST)) {
        cj_val *seq = (a->type == CJ_STR || a->type == CJ_LIST) ? a : b, *k = seq == a ? b : a;
        if (k->type == CJ_INT || k->type == CJ_BOOL) {
            int64_t times = k->u.i < 0 ? 0 : k->u.i;
            size_t unit = seq->type == CJ_STR ? seq->u.s.n : seq->u.l.n;
            if (unit && (uint64_t)times > (64u << 20) / unit)
                cj_fail(c, pos, "repetition too large");
            if (seq->type == CJ_STR) {
                cj_buf o = {0};
                cj_put(c, &o, "", 0);
                for (int64_t i = 0; i < times; i++)
                    cj_put(c, &o, seq->u.s.p, seq->u.s.n);
                return cj_buf_str(c, &o);
            }
            cj_val *r = cj_list(c, unit * (size_t)times, seq->tuple);
            for (int64_t i = 0; i < times; i++)
                if (unit)
                    memcpy(r->u.l.v + (size_t)i * unit, seq->u.l.v, unit * sizeof *r->u.l.v);
            return r;
        }
    }
    if (op == OP_MOD && a->type == CJ_STR)
        return cj_percent(c, a, b, pos);
    cj_fail(c, pos, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op], cj_type_name(a),
            cj_type_name(b));
}

static int contains(cj_ctx *c, const cj_val *needle, const cj_val *hay, long pos)
{
    if (hay->type == CJ_STR) {
        if (needle->type != CJ_STR)
            cj_fail(c, pos, "'in <string>' requires string as left operand, not %s", cj_type_name(needle));
        return needle->u.s.n == 0 || memmem(hay->u.s.p, hay->u.s.n, needle->u.s.p, needle->u.s.n) != NULL;
    }
    if (hay->type == CJ_DICT || hay->type == CJ_LIST) {
        size_t n;
        cj_val **items = cj_iter(c, hay, &n, pos);
        for (size_t i = 0; i < n; i++)
            if (cj_eq(items[i], needle))
                return 1;
        return 0;
    }
    if (hay->type == CJ_UNDEF)
        return 0;
    cj_fail(c, pos, "argument of type '%s' is not iterable", cj_type_name(hay));
}

static int compare(cj_ctx *c, int op, const cj_val *a, const cj_val *b, long pos)
{
    switch (op) {
    case OP_EQ: return cj_eq(a, b);
    case OP_NE: return !cj_eq(a, b);
    case OP_IN: return contains(c, a, b, pos);
    case OP_NOTIN: return !contains(c, a, b, pos);
    default: {
        static const char *sym[] = {"<", "<=", ">", ">="};
        int r = cj_cmp(c, a, b, pos, sym[op - OP_LT]);
        if (r == 2)
            return 0;
        return op == OP_LT ? r < 0 : op == OP_LE ? r <= 0 : op == OP_GT ? r > 0 : r >= 0;
    }
    }
}

/* ---- calls ---------------------------------------------------------------------------------------------------- */
static int uses_name(const cj_node *n, const char *name)
{
    if (!n)
        return 0;
    if (n->kind == N_NAME && !strcmp(n->name, name))
        return 1;
    if (n->kind == N_MACRO && n != NULL)
        return 0; /* a nested macro's own varargs */
    if (uses_name(n->a, name) || uses_name(n->b, name) || uses_name(n->c, name) || uses_name(n->d, name) ||
        uses_name(n->dyn_args, name) || uses_name(n->dyn_kwargs, name))
        return 1;
    for (int i = 0; i < n->nkids; i++)
        if (uses_name(n->kids[i], name))
            return 1;
    for (int i = 0; i < n->nkids2; i++)
        if (uses_name(n->kids2[i], name))
            return 1;
    if (n->kwv && n->kind != N_MACRO)
        for (int i = 0; i < n->nkw; i++)
            if (uses_name(n->kwv[i], name))
                return 1;
    return 0;
}

static int body_uses(const cj_node *m, const char *name)
{
    for (int i = 0; i < m->nkids; i++)
        if (uses_name(m->kids[i], name))
            return 1;
    for (int i = 0; i < m->nkids2; i++)
        if (uses_name(m->kids2[i], name))
            return 1;
    return 0;
}

static cj_val *call_macro(cj_ctx *c, const cj_val *mv, const cj_args *a, long pos)
{
    const cj_node *m = mv->u.m.def;
    const char *mname = m->kind == N_MACRO ? m->name : "caller";
    if (++c->depth > 100)
        cj_fail(c, pos, "macro '%s': maximum recursion depth exceeded", mname);
    cj_scope *s = new_scope(c, mv->u.m.closure);
    int np = m->nkw, ndef = m->nkids2;
    int catch_var = body_uses(m, "varargs"), catch_kw = body_uses(m, "kwargs");
    if (a->npos > np && !catch_var)
        cj_fail(c, pos, "macro '%s' takes not more than %d argument(s)", mname, np);
    cj_val **bound = cj_alloc(c, (size_t)(np + 1) * sizeof *bound);
    for (int i = 0; i < np && i < a->npos; i++)
        bound[i] = a->pos[i];
    cj_val *kw = cj_dict_new(c, CJ_DICT);
    for (int k = 0; k < a->nkw; k++) {
        int hit = -1;
        for (int i = 0; i < np; i++)
            if (!strcmp(m->kwn[i], a->kwn[k]))
                hit = i;
        if (hit >= 0) {
            if (bound[hit])
                cj_fail(c, pos, "macro '%s' got multiple values for argument '%s'", mname, a->kwn[k]);
            bound[hit] = a->kwv[k];
        } else if (!strcmp(a->kwn[k], "caller") && m->kind == N_MACRO) {
            bind(c, s, "caller", a->kwv[k]);
        } else if (catch_kw) {
            cj_dict_set(c, kw, cj_str0(c, a->kwn[k]), a->kwv[k]);
        } else {
            cj_fail(c, pos, "macro '%s' takes no keyword argument '%s'", mname, a->kwn[k]);
        }
    }
    int fl = 0;
    for (int i = 0; i < np; i++) {
        if (!bound[i]) {
            int d = i - (np - ndef);
            bound[i] = d >= 0 ? eval(c, s, m->kids2[d], &fl)
                              : cj_undef(c, "parameter '%s' was not provided", m->kwn[i]);
        }
        bind(c, s, m->kwn[i], bound[i]);
    }
    cj_val *va = cj_list(c, a->npos > np ? (size_t)(a->npos - np) : 0, 1);
    for (int i = np; i < a->npos; i++)
        va->u.l.v[i - np] = a->pos[i];
    bind(c, s, "varargs", va);
    bind(c, s, "kwargs", kw);
    if (mv->u.m.caller)
        bind(c, s, "caller", mv->u.m.caller);
    cj_buf *saved = c->out, buf = {0};
    cj_put(c, &buf, "", 0);
    c->out = &buf;
    exec_body(c, s, m->kids, m->nkids, &fl);
    c->out = saved;
    c->depth--;
    return cj_buf_str(c, &buf);
}

static cj_val *call_func(cj_ctx *c, int fn, const cj_args *a, long pos)
{
    switch (fn) {
    case CJ_FN_RANGE: {
        cj_args_check(c, a, 3, (const char *const[]){NULL}, "range()", pos);
        if (!a->npos)
            cj_fail(c, pos, "range expected at least 1 argument, got 0");
        int64_t lo = 0, hi, st = 1;
        if (a->npos == 1)
            hi = cj_as_int(c, a->pos[0], "range()", pos);
        else {
            lo = cj_as_int(c, a->pos[0], "range()", pos);
            hi = cj_as_int(c, a->pos[1], "range()", pos);
            if (a->npos == 3)
                st = cj_as_int(c, a->pos[2], "range()", pos);
        }
        if (!st)
            cj_fail(c, pos, "range() arg 3 must not be zero");
        int64_t cnt = st > 0 ? (hi > lo ? (hi - lo + st - 1) / st : 0) : (lo > hi ? (lo - hi - st - 1) / -st : 0);
        if (cnt > 100000) /* jinja's sandbox: MAX_RANGE */
            cj_fail(c, pos, "range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        cj_val *l = cj_list(c, (size_t)cnt, 0);
        for (int64_t i = 0; i < cnt; i++)
            l->u.l.v[i] = cj_int(c, lo + i * st);
        return l;
    }
    case CJ_FN_NAMESPACE:
    case CJ_FN_DICT: {
        cj_val *d = cj_dict_new(c, fn == CJ_FN_NAMESPACE ? CJ_NS : CJ_DICT);
        if (a->npos > 1)
            cj_fail(c, pos, "%s expected at most 1 positional argument", fn == CJ_FN_DICT ? "dict()" : "namespace()");
        if (a->npos) {
            const cj_val *src = a->pos[0];
            if (src->type != CJ_DICT)
                cj_fail(c, pos, "%s: the positional argument must be a mapping, not %s",
                        fn == CJ_FN_DICT ? "dict()" : "namespace()", cj_type_name(src));
            for (size_t i = 0; i < src->u.d->n; i++)
                cj_dict_set(c, d, src->u.d->k[i], src->u.d->v[i]);
        }
        for (int k = 0; k < a->nkw; k++)
            cj_dict_set(c, d, cj_str0(c, a->kwn[k]), a->kwv[k]);
        return d;
    }
    case CJ_FN_RAISE: {
        cj_buf b = {0};
        if (a->npos)
            cj_write_str(c, &b, a->pos[0], pos);
        cj_fail(c, pos, "raise_exception: %s", b.p ? b.p : "");
    }
    default: { /* strftime_now(format) */
        if (a->npos != 1 || a->pos[0]->type != CJ_STR)
            cj_fail(c, pos, "strftime_now() takes one format string");
        char out[512];
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t n = strftime(out, sizeof out, a->pos[0]->u.s.p, &tmv);
        return cj_str(c, out, n);
    }
    }
}

static cj_val *call_value(cj_ctx *c, const cj_val *f, const cj_args *a, long pos)
{
    tick(c, pos);
    switch (f->type) {
    case CJ_MACRO: return call_macro(c, f, a, pos);
    case CJ_FUNC: return call_func(c, f->u.fn, a, pos);
    case CJ_METHOD: return cj_call_method(c, f->u.meth.self, f->u.meth.name, a, pos);
    case CJ_UNDEF: cj_check_undef(c, f, pos); /* fails */
        __attribute__((fallthrough));
    default: cj_fail(c, pos, "'%s' object is not callable", cj_type_name(f));
    }
}

/* evaluates a call node's arguments */
static void eval_args(cj_ctx *c, cj_scope *s, const cj_node *n, cj_args *a, int *fl, cj_val *extra_first)
{
    int first = extra_first != NULL;
    int npos = n->nkids + first;
    size_t ndyn = 0;
    cj_val **dyn = NULL, *dynkw = NULL;
    if (n->dyn_args) {
        cj_val *d = eval(c, s, n->dyn_args, fl);
        dyn = cj_iter(c, d, &ndyn, n->pos);
    }
    if (n->dyn_kwargs) {
        dynkw = eval(c, s, n->dyn_kwargs, fl);
        if (dynkw->type != CJ_DICT)
            cj_fail(c, n->pos, "argument after ** must be a mapping, not %s", cj_type_name(dynkw));
    }
    a->npos = npos + (int)ndyn;
    a->pos = cj_alloc(c, (size_t)(a->npos + 1) * sizeof *a->pos);
    if (first)
        a->pos[0] = extra_first;
    for (int i = 0; i < n->nkids; i++)
        a->pos[i + first] = eval(c, s, n->kids[i], fl);
    for (size_t i = 0; i < ndyn; i++)
        a->pos[npos + (int)i] = dyn[i];
    int nkw = n->nkw + (dynkw ? (int)dynkw->u.d->n : 0);
    a->kwn = cj_alloc(c, (size_t)(nkw + 1) * sizeof *a->kwn);
    a->kwv = cj_alloc(c, (size_t)(nkw + 1) * sizeof *a->kwv);
    a->nkw = 0;
    for (int i = 0; i < n->nkw; i++) {
        a->kwn[a->nkw] = n->kwn[i];
        a->kwv[a->nkw++] = eval(c, s, n->kwv[i], fl);
    }
    if (dynkw)
        for (size_t i = 0; i < dynkw->u.d->n; i++) {
            if (dynkw->u.d->k[i]->type != CJ_STR)
                cj_fail(c, n->pos, "keywords must be strings");
            a->kwn[a->nkw] = dynkw->u.d->k[i]->u.s.p;
            a->kwv[a->nkw++] = dynkw->u.d->v[i];
        }
}

/* filters applied to `in` along a chain whose innermost input is NULL (block filters, {% set x | f %}) */
static cj_val *apply_filters(cj_ctx *c, cj_scope *s, const cj_node *f, cj_val *in, int *fl)
{
    if (!f)
        return in;
    cj_val *v = f->a ? apply_filters(c, s, f->a, in, fl) : in;
    cj_args a;
    eval_args(c, s, f, &a, fl, NULL);
    return cj_filter(c, f->name, v, &a, f->pos);
}

/* ---- expressions ------------------------------------------------------------------------------------------------ */
static cj_val *eval(cj_ctx *c, cj_scope *s, const cj_node *n, int *fl)
{
    tick(c, n->pos);
    switch (n->kind) {
    case N_CONST:
    case N_DATA: return n->konst;
    case N_NAME: return lookup(c, s, n->name);
    case N_GETATTR: return cj_getattr(c, eval(c, s, n->a, fl), n->name, n->pos);
    case N_GETITEM: {
        cj_val *obj = eval(c, s, n->a, fl);
        if (n->b->kind == N_SLICE)
            return do_slice(c, s, obj, n->b, fl);
        return cj_getitem(c, obj, eval(c, s, n->b, fl), n->pos);
    }
    case N_TUPLE:
    case N_LIST: {
        cj_val *l = cj_list(c, (size_t)n->nkids, n->kind == N_TUPLE);
        for (int i = 0; i < n->nkids; i++)
            l->u.l.v[i] = eval(c, s, n->kids[i], fl);
        return l;
    }
    case N_DICT: {
        cj_val *d = cj_dict_new(c, CJ_DICT);
        for (int i = 0; i + 1 < n->nkids; i += 2) {
            cj_val *k = eval(c, s, n->kids[i], fl);
            if (k->type == CJ_LIST && !k->tuple)
                cj_fail(c, n->kids[i]->pos, "unhashable type: 'list'");
            if (k->type == CJ_DICT || k->type == CJ_NS)
                cj_fail(c, n->kids[i]->pos, "unhashable type: '%s'", cj_type_name(k));
            cj_dict_set(c, d, k, eval(c, s, n->kids[i + 1], fl));
        }
        return d;
    }
    case N_BINOP: return arith(c, n->op, eval(c, s, n->a, fl), eval(c, s, n->b, fl), n->pos);
    case N_CONCAT: {
        cj_buf b = {0};
        cj_put(c, &b, "", 0);
        for (int i = 0; i < n->nkids; i++)
            cj_write_str(c, &b, eval(c, s, n->kids[i], fl), n->kids[i]->pos);
        return cj_buf_str(c, &b);
    }
    case N_AND: {
        cj_val *l = eval(c, s, n->a, fl);
        return cj_truthy(l) ? eval(c, s, n->b, fl) : l;
    }
    case N_OR: {
        cj_val *l = eval(c, s, n->a, fl);
        return cj_truthy(l) ? l : eval(c, s, n->b, fl);
    }
    case N_NOT: return cj_bool(!cj_truthy(eval(c, s, n->a, fl)));
    case N_NEG:
    case N_POS: {
        cj_val *v = eval(c, s, n->a, fl);
        cj_check_undef(c, v, n->pos);
        if (!cj_is_number(v))
            cj_fail(c, n->pos, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+',
                    cj_type_name(v));
        if (n->kind == N_POS)
            return v->type == CJ_BOOL ? cj_int(c, v->u.i) : v;
        if (v->type == CJ_FLOAT)
            return cj_float(c, -v->u.f);
        if (v->u.i == INT64_MIN)
            cj_fail(c, n->pos, "integer overflow");
        return cj_int(c, -v->u.i);
    }
    case N_COMPARE: {
        cj_val *l = eval(c, s, n->a, fl);
        for (int i = 0; i < n->nkids; i++) {
            cj_val *r = eval(c, s, n->kids[i], fl);
            if (!compare(c, n->ops[i], l, r, n->kids[i]->pos))
                return &cj_false_v;
            l = r;
        }
        return &cj_true_v;
    }
    case N_COND:
        if (cj_truthy(eval(c, s, n->a, fl)))
            return eval(c, s, n->b, fl);
        return n->c ? eval(c, s, n->c, fl)
                    : cj_undef(c, "the inline if-expression evaluated to false and no else section was defined.");
    case N_FILTER: {
        cj_val *in = eval(c, s, n->a, fl);
        cj_args a;
        eval_args(c, s, n, &a, fl, NULL);
        return cj_filter(c, n->name, in, &a, n->pos);
    }
    case N_TEST: {
        cj_val *in = eval(c, s, n->a, fl);
        cj_args a;
        eval_args(c, s, n, &a, fl, NULL);
        return cj_bool(cj_test(c, n->name, in, &a, n->pos));
    }
    case N_CALL: {
        cj_val *f = eval(c, s, n->a, fl);
        cj_args a;
        eval_args(c, s, n, &a, fl, NULL);
        return call_value(c, f, &a, n->pos);
    }
    default: cj_fail(c, n->pos, "internal error: cannot evaluate node %d", n->kind);
    }
}

/* ---- statements ------------------------------------------------------------------------------------------------ */
static void assign(cj_ctx *c, cj_scope *s, const cj_node *t, cj_val *v)
{
    if (t->kind == N_NAME) {
        bind(c, s, t->name, v);
        return;
    }
    if (t->kind == N_NSREF) {
        cj_val *ns = lookup(c, s, t->name);
        if (ns->type != CJ_NS)
            cj_fail(c, t->pos, "cannot assign attribute on non-namespace object");
        cj_dict_set(c, ns, cj_str0(c, t->attr), v);
        return;
    }
    size_t n; /* tuple unpacking */
    cj_check_undef(c, v, t->pos);
    cj_val **items = cj_iter(c, v, &n, t->pos);
    if (n != (size_t)t->nkids)
        cj_fail(c, t->pos, "%s values to unpack (expected %d, got %zu)", n < (size_t)t->nkids ? "not enough" : "too many",
                t->nkids, n);
    for (int i = 0; i < t->nkids; i++)
        assign(c, s, t->kids[i], items[i]);
}

static void output(cj_ctx *c, const cj_val *v, long pos) { cj_write_str(c, c->out, v, pos); }

static cj_val *capture(cj_ctx *c, cj_scope *s, cj_node *const *body, int nbody, int *fl)
{
    cj_buf *saved = c->out, buf = {0};
    cj_put(c, &buf, "", 0);
    c->out = &buf;
    exec_body(c, s, body, nbody, fl);
    c->out = saved;
    return cj_buf_str(c, &buf);
}

static void exec_for(cj_ctx *c, cj_scope *s, const cj_node *n, int *fl)
{
    cj_val *seq = eval(c, s, n->b, fl);
    if (seq->type == CJ_NS)
        cj_fail(c, n->b->pos, "'Namespace' object is not iterable");
    size_t cnt;
    cj_val **items = cj_iter(c, seq, &cnt, n->b->pos);
    if (n->c) { /* {% for x in seq if test %}: the loop sees the filtered items only */
        cj_val **kept = cj_alloc(c, (cnt + 1) * sizeof *kept);
        size_t k = 0;
        for (size_t i = 0; i < cnt; i++) {
            cj_scope *t = new_scope(c, s);
            assign(c, t, n->a, items[i]);
            if (cj_truthy(eval(c, t, n->c, fl)))
                kept[k++] = items[i];
        }
        items = kept;
        cnt = k;
    }
    cj_loop *L = cj_alloc(c, sizeof *L);
    L->items = items;
    L->n = cnt;
    L->depth = 1;
    cj_val *lv = cj_alloc(c, sizeof *lv);
    lv->type = CJ_LOOP;
    lv->u.loop = L;
    /* one scope reused by every iteration (emptied each time: a {% set %} in the body lasts one iteration), so a
     * long loop costs no memory per iteration */
    cj_scope *it = new_scope(c, s);
    cj_val *loop_key = cj_str0(c, "loop");
    for (size_t i = 0; i < cnt; i++) {
        L->i = i;
        tick(c, n->pos);
        it->vars->u.d->n = 0;
        cj_dict_set(c, it->vars, loop_key, lv);
        assign(c, it, n->a, items[i]);
        int f2 = FLOW_NONE;
        exec_body(c, it, n->kids, n->nkids, &f2);
        if (f2 == FLOW_BREAK)
            break;
    }
    if (!cnt && n->nkids2)
        exec_body(c, new_scope(c, s), n->kids2, n->nkids2, fl);
}

static void exec_stmt(cj_ctx *c, cj_scope *s, const cj_node *n, int *fl)
{
    tick(c, n->pos);
    switch (n->kind) {
    case N_OUTPUT:
        for (int i = 0; i < n->nkids; i++)
            output(c, eval(c, s, n->kids[i], fl), n->kids[i]->pos);
        return;
    case N_FOR: exec_for(c, s, n, fl); return;
    case N_IF:
        if (cj_truthy(eval(c, s, n->a, fl)))
            exec_body(c, s, n->kids, n->nkids, fl);
        else
            exec_body(c, s, n->kids2, n->nkids2, fl);
        return;
    case N_SET: assign(c, s, n->a, eval(c, s, n->b, fl)); return;
    case N_SETBLOCK: assign(c, s, n->a, apply_filters(c, s, n->b, capture(c, s, n->kids, n->nkids, fl), fl)); return;
    case N_MACRO: {
        cj_val *m = cj_alloc(c, sizeof *m);
        m->type = CJ_MACRO;
        m->u.m.def = n;
        m->u.m.closure = s;
        bind(c, s, n->name, m);
        return;
    }
    case N_CALLBLOCK: {
        cj_val *caller = cj_alloc(c, sizeof *caller);
        caller->type = CJ_MACRO;
        caller->u.m.def = n;
        caller->u.m.closure = s;
        const cj_node *call = n->a;
        cj_val *f = eval(c, s, call->a, fl);
        cj_args a;
        eval_args(c, s, call, &a, fl, NULL);
        if (f->type == CJ_MACRO) {
            cj_val bound = *f;
            bound.u.m.caller = caller;
            output(c, call_macro(c, &bound, &a, call->pos), n->pos);
        } else {
            cj_fail(c, n->pos, "{%% call %%} needs a macro");
        }
        return;
    }
    case N_FILTERBLOCK: output(c, apply_filters(c, s, n->b, capture(c, s, n->kids, n->nkids, fl), fl), n->pos); return;
    case N_WITH: {
        cj_scope *w = new_scope(c, s);
        for (int i = 0; i < n->nkids2; i++)
            bind(c, w, n->kids2[i]->name, eval(c, s, n->kwv[i], fl));
        exec_body(c, w, n->kids, n->nkids, fl);
        return;
    }
    case N_BREAK: *fl = FLOW_BREAK; return;
    case N_CONTINUE: *fl = FLOW_CONTINUE; return;
    case N_GENERATION: {
        /* transformers records the offsets of what the block produced in the top-level output; a block inside
         * a macro or a captured {% set %} is not a span of the output (its text may never reach it) */
        int top = c->out == c->top;
        size_t start = c->out->n;
        exec_body(c, s, n->kids, n->nkids, fl);
        if (top) {
            if (c->nspans == c->capspans) {
                size_t cap = c->capspans ? 2 * c->capspans : 16;
                prefopt_chat_span *ns = cj_alloc(c, cap * sizeof *ns);
                if (c->nspans)
                    memcpy(ns, c->spans, c->nspans * sizeof *ns);
                c->spans = ns;
                c->capspans = cap;
            }
            c->spans[c->nspans].start = start;
            c->spans[c->nspans++].end = c->out->n;
        }
        return;
    }
    default: cj_fail(c, n->pos, "internal error: cannot execute node %d", n->kind);
    }
}

static void exec_body(cj_ctx *c, cj_scope *s, cj_node *const *body, int nbody, int *fl)
{
    for (int i = 0; i < nbody && *fl == FLOW_NONE; i++)
        exec_stmt(c, s, body[i], fl);
}

void cj_render_root(cj_ctx *c, const cj_node *root, cj_val *vars)
{
    cj_scope *g = new_scope(c, NULL);
    static const struct {
        const char *name;
        int fn;
    } fns[] = {{"range", CJ_FN_RANGE}, {"namespace", CJ_FN_NAMESPACE}, {"dict", CJ_FN_DICT},
               {"raise_exception", CJ_FN_RAISE}, {"strftime_now", CJ_FN_STRFTIME}};
    for (size_t i = 0; i < sizeof fns / sizeof *fns; i++) {
        cj_val *f = cj_alloc(c, sizeof *f);
        f->type = CJ_FUNC;
        f->u.fn = fns[i].fn;
        bind(c, g, fns[i].name, f);
    }
    cj_scope *top = new_scope(c, g);
    for (size_t i = 0; i < vars->u.d->n; i++)
        cj_dict_set(c, top->vars, vars->u.d->k[i], vars->u.d->v[i]);
    cj_scope *body = new_scope(c, top);
    c->globals = g;
    int fl = FLOW_NONE;
    exec_body(c, body, root->kids, root->nkids, &fl);
}
