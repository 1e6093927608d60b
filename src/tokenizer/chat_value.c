/* prefopt: chat-template values with Python's semantics (str, repr, ==, <, truthiness, json.dumps), the arena
 * they live in, and the UTF-8/Unicode helpers the interpreter needs (chat_internal.h). */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ------------------------------------------------------------------------------------------------ */
struct cj_chunk {
    cj_chunk *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
};

void cj_arena_init(cj_arena *a, size_t limit)
{
    a->head = NULL;
    a->total = 0;
    a->limit = limit;
}

void cj_arena_free(cj_arena *a)
{
    for (cj_chunk *k = a->head, *nx; k; k = nx) {
        nx = k->next;
        free(k);
    }
    a->head = NULL;
    a->total = 0;
}

void *cj_alloc(cj_ctx *c, size_t n)
{
    cj_arena *a = c->A;
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->size - a->head->used < n) {
        size_t sz = n > 65536 ? n : 65536;
        if (a->total + sz > a->limit)
            cj_fail(c, -1, "the template uses more than %zu MiB of memory", a->limit >> 20);
        cj_chunk *k = malloc(sizeof *k + sz);
        if (!k)
            cj_fail(c, -1, "out of memory (%zu bytes)", sz);
        k->next = a->head;
        k->used = 0;
        k->size = sz;
        a->head = k;
        a->total += sz;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

char *cj_strdup(cj_ctx *c, const char *p, size_t n)
{
    char *s = cj_alloc(c, n + 1);
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

void cj_fail(cj_ctx *c, long pos, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *q = msg; *q; q++) /* one line, whatever the template put in a message */
        if (*q == '\n' || *q == '\r')
            *q = ' ';
    if (pos >= 0 && c->src) {
        long line = 1, col = 1;
        for (long i = 0; i < pos && (size_t)i < c->srclen; i++) {
            if (c->src[i] == '\n') {
                line++;
                col = 1;
            } else if (((unsigned char)c->src[i] & 0xC0) != 0x80) {
                col++;
            }
        }
        prefopt_err_set(c->err, "chat template %s: line %ld:%ld: %s", c->tname, line, col, msg);
    } else {
        prefopt_err_set(c->err, "chat template %s: %s", c->tname, msg);
    }
    longjmp(c->jb, 1);
}

/* ---- constructors ----------------------------------------------------------------------------------------- */
cj_val cj_undefined = {.type = CJ_UNDEF};
cj_val cj_none_v = {.type = CJ_NONE};
cj_val cj_true_v = {.type = CJ_BOOL, .u.i = 1};
cj_val cj_false_v = {.type = CJ_BOOL, .u.i = 0};

cj_val *cj_undef(cj_ctx *c, const char *fmt, ...)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_UNDEF;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->u.hint = cj_strdup(c, msg, strlen(msg));
    return v;
}

cj_val *cj_bool(int b) { return b ? &cj_true_v : &cj_false_v; }

/* small ints are shared (loops over range() then cost no memory per item); filled before main */
static cj_val small_ints[1024];
__attribute__((constructor)) static void init_small_ints(void)
{
    for (int i = 0; i < 1024; i++) {
        small_ints[i].type = CJ_INT;
        small_ints[i].u.i = i;
    }
}

cj_val *cj_int(cj_ctx *c, int64_t i)
{
    if (i >= 0 && i < 1024)
        return &small_ints[i];
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_INT;
    v->u.i = i;
    return v;
}

cj_val *cj_float(cj_ctx *c, double f)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_FLOAT;
    v->u.f = f;
    return v;
}

cj_val *cj_str(cj_ctx *c, const char *p, size_t n)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_STR;
    v->u.s.p = cj_strdup(c, p, n);
    v->u.s.n = n;
    return v;
}

cj_val *cj_str0(cj_ctx *c, const char *p) { return cj_str(c, p, strlen(p)); }

cj_val *cj_list(cj_ctx *c, size_t n, int tuple)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_LIST;
    v->tuple = (uint8_t)tuple;
    v->u.l.v = n ? cj_alloc(c, n * sizeof *v->u.l.v) : NULL;
    v->u.l.n = n;
    return v;
}

cj_val *cj_dict_new(cj_ctx *c, int type)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = (uint8_t)type;
    v->u.d = cj_alloc(c, sizeof *v->u.d);
    return v;
}

cj_val *cj_dict_get(const cj_val *d, const cj_val *k)
{
    const cj_dict *D = d->u.d;
    for (size_t i = 0; i < D->n; i++)
        if (cj_eq(D->k[i], k))
            return D->v[i];
    return NULL;
}

cj_val *cj_dict_gets(const cj_val *d, const char *k)
{
    const cj_dict *D = d->u.d;
    size_t n = strlen(k);
    for (size_t i = 0; i < D->n; i++)
        if (D->k[i]->type == CJ_STR && D->k[i]->u.s.n == n && !memcmp(D->k[i]->u.s.p, k, n))
            return D->v[i];
    return NULL;
}

void cj_dict_set(cj_ctx *c, cj_val *d, cj_val *k, cj_val *v)
{
    cj_dict *D = d->u.d;
    for (size_t i = 0; i < D->n; i++)
        if (cj_eq(D->k[i], k)) {
            D->v[i] = v;
            return;
        }
    if (D->n == D->cap) {
        size_t cap = D->cap ? 2 * D->cap : 8;
        cj_val **nk = cj_alloc(c, cap * sizeof *nk), **nv = cj_alloc(c, cap * sizeof *nv);
        if (D->n) {
            memcpy(nk, D->k, D->n * sizeof *nk);
            memcpy(nv, D->v, D->n * sizeof *nv);
        }
        D->k = nk;
        D->v = nv;
        D->cap = cap;
    }
    D->k[D->n] = k;
    D->v[D->n] = v;
    D->n++;
}

cj_val *cj_from_json(cj_ctx *c, const cJSON *j)
{
    if (!j || cJSON_IsNull(j))
        return &cj_none_v;
    if (cJSON_IsBool(j))
        return cj_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        /* JSON integers become Python ints, as json.loads makes them (cJSON keeps the double) */
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.007199254740992e15) {
            const char *t = NULL;
            (void)t;
            return cj_int(c, (int64_t)d);
        }
        return cj_float(c, d);
    }
    if (cJSON_IsString(j))
        return cj_str0(c, j->valuestring);
    if (cJSON_IsArray(j)) {
        cj_val *l = cj_list(c, (size_t)cJSON_GetArraySize(j), 0);
        size_t i = 0;
        for (const cJSON *e = j->child; e; e = e->next)
            l->u.l.v[i++] = cj_from_json(c, e);
        return l;
    }
    cj_val *d = cj_dict_new(c, CJ_DICT);
    for (const cJSON *e = j->child; e; e = e->next)
        cj_dict_set(c, d, cj_str0(c, e->string ? e->string : ""), cj_from_json(c, e));
    return d;
}

/* ---- buffers ------------------------------------------------------------------------------------------------ */
void cj_put(cj_ctx *c, cj_buf *b, const char *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = cj_alloc(c, cap);
        if (b->n)
            memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void cj_puts(cj_ctx *c, cj_buf *b, const char *s) { cj_put(c, b, s, strlen(s)); }
void cj_putc(cj_ctx *c, cj_buf *b, char ch) { cj_put(c, b, &ch, 1); }

cj_val *cj_buf_str(cj_ctx *c, cj_buf *b)
{
    cj_val *v = cj_alloc(c, sizeof *v);
    v->type = CJ_STR;
    if (!b->p)
        cj_put(c, b, "", 0);
    v->u.s.p = b->p;
    v->u.s.n = b->n;
    return v;
}

static void put_cp(cj_ctx *c, cj_buf *b, uint32_t cp)
{
    char t[4];
    cj_put(c, b, t, (size_t)cj_u8_put(t, cp));
}

cj_val *cj_case(cj_ctx *c, const cj_val *s, int mode)
{
    cj_buf b = {0};
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0;
    int first = 1, prev_cased = 0;
    while (i < n) {
        uint32_t cp = cj_u8_next(p, n, &i);
        int up;
        if (mode == 0)
            up = 0;
        else if (mode == 1)
            up = 1;
        else if (mode == 2)
            up = first;
        else
            up = !prev_cased;
        if (up && cp == 0xDF)
            cj_puts(c, &b, mode == 1 ? "SS" : "Ss");
        else
            put_cp(c, &b, up ? cj_upper_cp(cp) : cj_lower_cp(cp));
        prev_cased = cj_cased(cp);
        first = 0;
    }
    return cj_buf_str(c, &b);
}

/* ---- str and repr ---------------------------------------------------------------------------------------------- */
void cj_float_repr(double f, char out[40])
{
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) { /* the shortest digits that read back as f: Python's repr */
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    digits[nd] = '\0';
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = '\0';
    int ex = atoi(q + 1);
    char *o = out;
    if (neg)
        *o++ = '-';
    if (ex >= -4 && ex < 16) {
        int decpt = ex + 1;
        if (decpt <= 0) {
            o += sprintf(o, "0.");
            for (int k = 0; k < -decpt; k++)
                *o++ = '0';
            o += sprintf(o, "%s", digits);
        } else if (decpt >= nd) {
            o += sprintf(o, "%s", digits);
            for (int k = nd; k < decpt; k++)
                *o++ = '0';
            o += sprintf(o, ".0");
        } else {
            o += sprintf(o, "%.*s.%s", decpt, digits, digits + decpt);
        }
    } else {
        *o++ = digits[0];
        if (nd > 1)
            o += sprintf(o, ".%s", digits + 1);
        o += sprintf(o, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    }
    *o = '\0';
}

static void write_str_repr(cj_ctx *c, cj_buf *b, const char *p, size_t n)
{
    int sq = memchr(p, '\'', n) != NULL, dq = memchr(p, '"', n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    cj_putc(c, b, quote);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        uint32_t cp = cj_u8_next(p, n, &i);
        char t[16];
        if (cp == (uint32_t)quote || cp == '\\') {
            cj_putc(c, b, '\\');
            cj_putc(c, b, (char)cp);
        } else if (cp == '\n') {
            cj_puts(c, b, "\\n");
        } else if (cp == '\r') {
            cj_puts(c, b, "\\r");
        } else if (cp == '\t') {
            cj_puts(c, b, "\\t");
        } else if (!cj_printable(cp)) {
            snprintf(t, sizeof t, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", cp);
            cj_puts(c, b, t);
        } else {
            cj_put(c, b, p + st, i - st);
        }
    }
    cj_putc(c, b, quote);
}

static void write_any(cj_ctx *c, cj_buf *b, const cj_val *v, int repr, long pos)
{
    char t[48];
    switch (v->type) {
    case CJ_UNDEF:
        if (repr)
            cj_puts(c, b, "Undefined");
        return;
    case CJ_NONE:
        cj_puts(c, b, "None");
        return;
    case CJ_BOOL:
        cj_puts(c, b, v->u.i ? "True" : "False");
        return;
    case CJ_INT:
        snprintf(t, sizeof t, "%lld", (long long)v->u.i);
        cj_puts(c, b, t);
        return;
    case CJ_FLOAT:
        cj_float_repr(v->u.f, t);
        cj_puts(c, b, t);
        return;
    case CJ_STR:
        if (repr)
            write_str_repr(c, b, v->u.s.p, v->u.s.n);
        else
            cj_put(c, b, v->u.s.p, v->u.s.n);
        return;
    case CJ_LIST:
        cj_putc(c, b, v->tuple ? '(' : '[');
        for (size_t i = 0; i < v->u.l.n; i++) {
            if (i)
                cj_puts(c, b, ", ");
            write_any(c, b, v->u.l.v[i], 1, pos);
        }
        if (v->tuple && v->u.l.n == 1)
            cj_putc(c, b, ',');
        cj_putc(c, b, v->tuple ? ')' : ']');
        return;
    case CJ_DICT:
    case CJ_NS:
        if (v->type == CJ_NS)
            cj_puts(c, b, "<Namespace ");
        cj_putc(c, b, '{');
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i)
                cj_puts(c, b, ", ");
            write_any(c, b, v->u.d->k[i], 1, pos);
            cj_puts(c, b, ": ");
            write_any(c, b, v->u.d->v[i], 1, pos);
        }
        cj_putc(c, b, '}');
        if (v->type == CJ_NS)
            cj_putc(c, b, '>');
        return;
    default:
        cj_fail(c, pos, "cannot print a %s (Python would print its address)", cj_type_name(v));
    }
}

void cj_write_str(cj_ctx *c, cj_buf *b, const cj_val *v, long pos) { write_any(c, b, v, 0, pos); }
void cj_write_repr(cj_ctx *c, cj_buf *b, const cj_val *v, long pos) { write_any(c, b, v, 1, pos); }

cj_val *cj_to_str(cj_ctx *c, const cj_val *v, long pos)
{
    if (v->type == CJ_STR)
        return (cj_val *)v;
    cj_buf b = {0};
    cj_write_str(c, &b, v, pos);
    return cj_buf_str(c, &b);
}

const char *cj_type_name(const cj_val *v)
{
    switch (v->type) {
    case CJ_UNDEF: return "Undefined";
    case CJ_NONE: return "NoneType";
    case CJ_BOOL: return "bool";
    case CJ_INT: return "int";
    case CJ_FLOAT: return "float";
    case CJ_STR: return "str";
    case CJ_LIST: return v->tuple ? "tuple" : "list";
    case CJ_DICT: return "dict";
    case CJ_NS: return "Namespace";
    case CJ_MACRO: return "Macro";
    case CJ_FUNC: return "function";
    case CJ_METHOD: return "builtin_function_or_method";
    default: return "LoopContext";
    }
}

/* ---- truth, equality, order ---------------------------------------------------------------------------------- */
int cj_truthy(const cj_val *v)
{
    switch (v->type) {
    case CJ_UNDEF:
    case CJ_NONE: return 0;
    case CJ_BOOL:
    case CJ_INT: return v->u.i != 0;
    case CJ_FLOAT: return v->u.f != 0;
    case CJ_STR: return v->u.s.n != 0;
    case CJ_LIST: return v->u.l.n != 0;
    case CJ_DICT: return v->u.d->n != 0;
    default: return 1;
    }
}

int cj_is_number(const cj_val *v) { return v->type == CJ_INT || v->type == CJ_FLOAT || v->type == CJ_BOOL; }
double cj_num(const cj_val *v) { return v->type == CJ_FLOAT ? v->u.f : (double)v->u.i; }

int cj_eq(const cj_val *a, const cj_val *b)
{
    if (a == b)
        return a->type != CJ_FLOAT || a->u.f == a->u.f;
    if (cj_is_number(a) && cj_is_number(b)) {
        if (a->type != CJ_FLOAT && b->type != CJ_FLOAT)
            return a->u.i == b->u.i;
        return cj_num(a) == cj_num(b);
    }
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case CJ_UNDEF:
    case CJ_NONE: return 1;
    case CJ_STR: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case CJ_LIST:
        if (a->tuple != b->tuple || a->u.l.n != b->u.l.n)
            return 0;
        for (size_t i = 0; i < a->u.l.n; i++)
            if (!cj_eq(a->u.l.v[i], b->u.l.v[i]))
                return 0;
        return 1;
    case CJ_DICT:
        if (a->u.d->n != b->u.d->n)
            return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            cj_val *o = cj_dict_get(b, a->u.d->k[i]);
            if (!o || !cj_eq(a->u.d->v[i], o))
                return 0;
        }
        return 1;
    case CJ_MACRO: return a->u.m.def == b->u.m.def && a->u.m.closure == b->u.m.closure;
    case CJ_FUNC: return a->u.fn == b->u.fn;
    default: return 0;
    }
}

int cj_cmp(cj_ctx *c, const cj_val *a, const cj_val *b, long pos, const char *op)
{
    if (cj_is_number(a) && cj_is_number(b)) {
        if (a->type != CJ_FLOAT && b->type != CJ_FLOAT)
            return a->u.i < b->u.i ? -1 : a->u.i > b->u.i;
        double x = cj_num(a), y = cj_num(b);
        return x < y ? -1 : x > y ? 1 : x == y ? 0 : 2; /* 2: unordered (NaN): every comparison false */
    }
    if (a->type == CJ_STR && b->type == CJ_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, n);
        return r ? (r < 0 ? -1 : 1) : a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    if (a->type == CJ_LIST && b->type == CJ_LIST && a->tuple == b->tuple) {
        for (size_t i = 0; i < a->u.l.n && i < b->u.l.n; i++)
            if (!cj_eq(a->u.l.v[i], b->u.l.v[i]))
                return cj_cmp(c, a->u.l.v[i], b->u.l.v[i], pos, op);
        return a->u.l.n < b->u.l.n ? -1 : a->u.l.n > b->u.l.n;
    }
    if (a->type == CJ_UNDEF)
        cj_check_undef(c, a, pos);
    if (b->type == CJ_UNDEF)
        cj_check_undef(c, b, pos);
    cj_fail(c, pos, "'%s' not supported between instances of '%s' and '%s'", op, cj_type_name(a), cj_type_name(b));
}

void cj_check_undef(cj_ctx *c, const cj_val *v, long pos)
{
    if (v->type == CJ_UNDEF)
        cj_fail(c, pos, "%s", v->u.hint ? v->u.hint : "undefined value");
}

cj_val **cj_iter(cj_ctx *c, const cj_val *v, size_t *n, long pos)
{
    switch (v->type) {
    case CJ_UNDEF:
        *n = 0;
        return NULL;
    case CJ_LIST:
        *n = v->u.l.n;
        return v->u.l.v;
    case CJ_DICT: {
        *n = v->u.d->n;
        return v->u.d->k;
    }
    case CJ_STR: {
        size_t k = cj_u8_len(v->u.s.p, v->u.s.n), i = 0, j = 0;
        cj_val **out = k ? cj_alloc(c, k * sizeof *out) : NULL;
        while (i < v->u.s.n) {
            size_t st = i;
            cj_u8_next(v->u.s.p, v->u.s.n, &i);
            out[j++] = cj_str(c, v->u.s.p + st, i - st);
        }
        *n = k;
        return out;
    }
    default:
        cj_fail(c, pos, "'%s' object is not iterable", cj_type_name(v));
    }
}

/* ---- JSON (transformers' tojson = json.dumps(ensure_ascii=False, ...)) -------------------------------------- */
static void json_str(cj_ctx *c, cj_buf *b, const char *p, size_t n)
{
    cj_putc(c, b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        const char *esc = NULL;
        char t[8];
        if (ch == '"')
            esc = "\\\"";
        else if (ch == '\\')
            esc = "\\\\";
        else if (ch == '\n')
            esc = "\\n";
        else if (ch == '\r')
            esc = "\\r";
        else if (ch == '\t')
            esc = "\\t";
        else if (ch == '\b')
            esc = "\\b";
        else if (ch == '\f')
            esc = "\\f";
        else if (ch < 0x20) {
            snprintf(t, sizeof t, "\\u%04x", ch);
            esc = t;
        }
        if (esc) {
            cj_put(c, b, p + i - run, run);
            run = 0;
            cj_puts(c, b, esc);
        } else {
            run++;
        }
    }
    cj_put(c, b, p + n - run, run);
    cj_putc(c, b, '"');
}

static void json_key(cj_ctx *c, cj_buf *b, const cj_val *k, long pos)
{
    char t[48];
    switch (k->type) {
    case CJ_STR: json_str(c, b, k->u.s.p, k->u.s.n); return;
    case CJ_BOOL: json_str(c, b, k->u.i ? "true" : "false", k->u.i ? 4 : 5); return;
    case CJ_NONE: json_str(c, b, "null", 4); return;
    case CJ_INT: snprintf(t, sizeof t, "%lld", (long long)k->u.i); break;
    case CJ_FLOAT:
        if (isnan(k->u.f))
            strcpy(t, "NaN");
        else if (isinf(k->u.f))
            strcpy(t, k->u.f < 0 ? "-Infinity" : "Infinity");
        else
            cj_float_repr(k->u.f, t);
        break;
    default: cj_fail(c, pos, "keys must be str, int, float, bool or None, not %s", cj_type_name(k));
    }
    json_str(c, b, t, strlen(t));
}

static int key_order(const void *x, const void *y, void *cx)
{
    cj_ctx *c = cx;
    const cj_val *const *a = x, *const *b = y;
    return cj_cmp(c, a[0], b[0], -1, "<");
}

void cj_write_json(cj_ctx *c, cj_buf *b, const cj_val *v, const char *indent, const char *isep, const char *ksep,
                   int sort_keys, int level, long pos)
{
    char t[48];
    if (++c->steps > 200000000L)
        cj_fail(c, pos, "the template runs too long");
    switch (v->type) {
    case CJ_NONE: cj_puts(c, b, "null"); return;
    case CJ_BOOL: cj_puts(c, b, v->u.i ? "true" : "false"); return;
    case CJ_INT:
        snprintf(t, sizeof t, "%lld", (long long)v->u.i);
        cj_puts(c, b, t);
        return;
    case CJ_FLOAT:
        if (isnan(v->u.f))
            cj_puts(c, b, "NaN");
        else if (isinf(v->u.f))
            cj_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else {
            cj_float_repr(v->u.f, t);
            cj_puts(c, b, t);
        }
        return;
    case CJ_STR: json_str(c, b, v->u.s.p, v->u.s.n); return;
    case CJ_LIST:
    case CJ_DICT: {
        int isdict = v->type == CJ_DICT;
        size_t n = isdict ? v->u.d->n : v->u.l.n;
        if (level > 200)
            cj_fail(c, pos, "tojson: nesting too deep");
        if (!n) {
            cj_puts(c, b, isdict ? "{}" : "[]");
            return;
        }
        cj_putc(c, b, isdict ? '{' : '[');
        size_t *order = cj_alloc(c, n * sizeof *order);
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        if (isdict && sort_keys) {
            const cj_val **pairs = cj_alloc(c, n * 2 * sizeof *pairs);
            for (size_t i = 0; i < n; i++) {
                pairs[2 * i] = v->u.d->k[i];
                pairs[2 * i + 1] = (const cj_val *)(uintptr_t)i;
            }
            qsort_r(pairs, n, 2 * sizeof *pairs, key_order, c);
            for (size_t i = 0; i < n; i++)
                order[i] = (size_t)(uintptr_t)pairs[2 * i + 1];
        }
        for (size_t k = 0; k < n; k++) {
            if (k)
                cj_puts(c, b, isep);
            if (indent) {
                cj_putc(c, b, '\n');
                for (int l = 0; l <= level; l++)
                    cj_puts(c, b, indent);
            }
            size_t i = order[k];
            if (isdict) {
                json_key(c, b, v->u.d->k[i], pos);
                cj_puts(c, b, ksep);
                cj_write_json(c, b, v->u.d->v[i], indent, isep, ksep, sort_keys, level + 1, pos);
            } else {
                cj_write_json(c, b, v->u.l.v[i], indent, isep, ksep, sort_keys, level + 1, pos);
            }
        }
        if (indent) {
            cj_putc(c, b, '\n');
            for (int l = 0; l < level; l++)
                cj_puts(c, b, indent);
        }
        cj_putc(c, b, isdict ? '}' : ']');
        return;
    }
    default:
        cj_fail(c, pos, "tojson: Object of type %s is not JSON serializable", cj_type_name(v));
    }
}
