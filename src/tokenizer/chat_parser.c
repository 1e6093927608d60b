/* prefopt: the chat-template parser: tokens -> tree, by jinja2's grammar (parser.py) and precedence:
 * condexpr < or < and < not < compare (==, !=, <, <=, >, >=, in, not in) < + - < ~ < * / // % < ** < unary - +
 * < postfix (.attr, [item], [a:b:c], call) < filters and tests, which bind to the operand before them.
 * Statements: for (else, if-filter), if/elif/else, set (also block set and namespace attributes), macro, call,
 * filter, with, print, break/continue (loopcontrols) and transformers' {% generation %}. Jinja's template
 * inheritance and loading tags (block, extends, include, import, from) stop with an error naming the tag, and so
 * do filters and tests this interpreter does not implement (Jinja too refuses an unknown name at compile time). */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <string.h>

typedef struct {
    cj_ctx *c;
    const cj_tok *t;
    size_t n, i;
    int loops; /* for-loops around the current statement (break/continue need one) */
} parser;

static const cj_tok *cur(parser *P) { return &P->t[P->i]; }
static const cj_tok *look(parser *P) { return &P->t[P->i + 1 < P->n ? P->i + 1 : P->i]; }
static void next(parser *P)
{
    if (P->i + 1 < P->n)
        P->i++;
}

static int is_name(const cj_tok *t, const char *s)
{
    return t->type == T_NAME && t->n == strlen(s) && !memcmp(t->s, s, t->n);
}
static int is_op(const cj_tok *t, const char *s)
{
    return t->type == T_OP && t->n == strlen(s) && !memcmp(t->s, s, t->n);
}

static const char *describe(parser *P, const cj_tok *t)
{
    static const char *names[] = {"end of template", "template data", "'{{'", "'}}'", "'{%'", "'%}'",
                                  "name", "string", "integer", "float", "operator"};
    if (t->type == T_NAME || t->type == T_OP) {
        char *s = cj_alloc(P->c, t->n + 3);
        s[0] = '\'';
        memcpy(s + 1, t->s, t->n);
        s[t->n + 1] = '\'';
        return s;
    }
    return names[t->type];
}

static void expect_op(parser *P, const char *op, const char *what)
{
    if (!is_op(cur(P), op))
        cj_fail(P->c, cur(P)->pos, "expected '%s' %s, got %s", op, what, describe(P, cur(P)));
    next(P);
}

static void expect_type(parser *P, int type, const char *what)
{
    if (cur(P)->type != type) {
        if (type == T_BLOCK_END && cur(P)->type != T_EOF)
            cj_fail(P->c, cur(P)->pos, "expected the end of the %s statement ('%%}'), got %s", what,
                    describe(P, cur(P)));
        cj_fail(P->c, cur(P)->pos, "expected %s, got %s", what, describe(P, cur(P)));
    }
    next(P);
}

static const char *name_str(parser *P, const cj_tok *t) { return cj_strdup(P->c, t->s, t->n); }

static const char *expect_name(parser *P, const char *what)
{
    if (cur(P)->type != T_NAME)
        cj_fail(P->c, cur(P)->pos, "expected a name %s, got %s", what, describe(P, cur(P)));
    const char *s = name_str(P, cur(P));
    next(P);
    return s;
}

static cj_node *mk(parser *P, int kind, long pos)
{
    cj_node *n = cj_alloc(P->c, sizeof *n);
    n->kind = kind;
    n->pos = pos;
    return n;
}

typedef struct {
    cj_node **v;
    int n, cap;
} nodevec;
static void push(parser *P, nodevec *v, cj_node *x)
{
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 8;
        cj_node **nv = cj_alloc(P->c, (size_t)cap * sizeof *nv);
        if (v->n)
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

static cj_node *parse_expression(parser *P, int with_condexpr);
static cj_node *parse_tuple(parser *P, int simplified, int with_condexpr, const char *extra_end,
                            int explicit_parens);
static cj_node *parse_unary(parser *P, int with_filter);
static cj_node *parse_primary(parser *P);
static cj_node *parse_postfix(parser *P, cj_node *node);
static cj_node *parse_filter(parser *P, cj_node *node, int start_inline);

/* ---- expressions ---------------------------------------------------------------------------------------------- */
static cj_node *parse_condexpr(parser *P)
{
    cj_node *e1 = parse_expression(P, 0);
    while (is_name(cur(P), "if")) {
        long pos = cur(P)->pos;
        next(P);
        cj_node *e2 = parse_expression(P, 0), *e3 = NULL;
        if (is_name(cur(P), "else")) {
            next(P);
            e3 = parse_condexpr(P);
        }
        cj_node *n = mk(P, N_COND, pos);
        n->a = e2;
        n->b = e1;
        n->c = e3;
        e1 = n;
    }
    return e1;
}

static cj_node *parse_compare(parser *P);
static cj_node *parse_not(parser *P)
{
    if (is_name(cur(P), "not")) {
        cj_node *n = mk(P, N_NOT, cur(P)->pos);
        next(P);
        n->a = parse_not(P);
        return n;
    }
    return parse_compare(P);
}

static cj_node *parse_and(parser *P)
{
    cj_node *l = parse_not(P);
    while (is_name(cur(P), "and")) {
        cj_node *n = mk(P, N_AND, cur(P)->pos);
        next(P);
        n->a = l;
        n->b = parse_not(P);
        l = n;
    }
    return l;
}

static cj_node *parse_or(parser *P)
{
    cj_node *l = parse_and(P);
    while (is_name(cur(P), "or")) {
        cj_node *n = mk(P, N_OR, cur(P)->pos);
        next(P);
        n->a = l;
        n->b = parse_and(P);
        l = n;
    }
    return l;
}

static cj_node *parse_expression(parser *P, int with_condexpr)
{
    if (++P->c->steps > 100000)
        cj_fail(P->c, cur(P)->pos, "template too large or nested too deep");
    return with_condexpr ? parse_condexpr(P) : parse_or(P);
}

static cj_node *binop(parser *P, int op, long pos, cj_node *l, cj_node *r)
{
    cj_node *n = mk(P, N_BINOP, pos);
    n->op = op;
    n->a = l;
    n->b = r;
    return n;
}

static cj_node *parse_pow(parser *P)
{
    cj_node *l = parse_unary(P, 1);
    while (is_op(cur(P), "**")) {
        long pos = cur(P)->pos;
        next(P);
        l = binop(P, OP_POW, pos, l, parse_unary(P, 1));
    }
    return l;
}

static cj_node *parse_math2(parser *P)
{
    cj_node *l = parse_pow(P);
    for (;;) {
        int op = is_op(cur(P), "*") ? OP_MUL : is_op(cur(P), "/") ? OP_DIV : is_op(cur(P), "//") ? OP_FLOORDIV
                 : is_op(cur(P), "%") ? OP_MOD : -1;
        if (op < 0)
            return l;
        long pos = cur(P)->pos;
        next(P);
        l = binop(P, op, pos, l, parse_pow(P));
    }
}

static cj_node *parse_concat(parser *P)
{
    long pos = cur(P)->pos;
    cj_node *first = parse_math2(P);
    if (!is_op(cur(P), "~"))
        return first;
    nodevec v = {0};
    push(P, &v, first);
    while (is_op(cur(P), "~")) {
        next(P);
        push(P, &v, parse_math2(P));
    }
    cj_node *n = mk(P, N_CONCAT, pos);
    n->kids = v.v;
    n->nkids = v.n;
    return n;
}

static cj_node *parse_math1(parser *P)
{
    cj_node *l = parse_concat(P);
    for (;;) {
        int op = is_op(cur(P), "+") ? OP_ADD : is_op(cur(P), "-") ? OP_SUB : -1;
        if (op < 0)
            return l;
        long pos = cur(P)->pos;
        next(P);
        l = binop(P, op, pos, l, parse_concat(P));
    }
}

static cj_node *parse_compare(parser *P)
{
    long pos = cur(P)->pos;
    cj_node *e = parse_math1(P);
    nodevec v = {0};
    int ops[64], nops = 0;
    for (;;) {
        const cj_tok *t = cur(P);
        int op = -1;
        if (is_op(t, "=="))
            op = OP_EQ;
        else if (is_op(t, "!="))
            op = OP_NE;
        else if (is_op(t, "<"))
            op = OP_LT;
        else if (is_op(t, "<="))
            op = OP_LE;
        else if (is_op(t, ">"))
            op = OP_GT;
        else if (is_op(t, ">="))
            op = OP_GE;
        else if (is_name(t, "in"))
            op = OP_IN;
        else if (is_name(t, "not") && is_name(look(P), "in")) {
            op = OP_NOTIN;
            next(P);
        }
        if (op < 0)
            break;
        if (nops == 64)
            cj_fail(P->c, t->pos, "too many chained comparisons");
        next(P);
        ops[nops++] = op;
        push(P, &v, parse_math1(P));
    }
    if (!nops)
        return e;
    cj_node *n = mk(P, N_COMPARE, pos);
    n->a = e;
    n->kids = v.v;
    n->nkids = v.n;
    n->ops = cj_alloc(P->c, (size_t)nops * sizeof *n->ops);
    memcpy(n->ops, ops, (size_t)nops * sizeof *ops);
    return n;
}

/* (args, key=value, *args, **kwargs) */
static void parse_call_args(parser *P, cj_node *n)
{
    long pos = cur(P)->pos;
    expect_op(P, "(", "to open the arguments");
    nodevec args = {0}, kwv = {0};
    const char *kwn[64];
    int nkw = 0, require_comma = 0;
    while (!is_op(cur(P), ")")) {
        if (require_comma) {
            expect_op(P, ",", "between arguments");
            if (is_op(cur(P), ")"))
                break;
        }
        if (is_op(cur(P), "*")) {
            if (n->dyn_args || n->dyn_kwargs)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            next(P);
            n->dyn_args = parse_expression(P, 1);
        } else if (is_op(cur(P), "**")) {
            if (n->dyn_kwargs)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            next(P);
            n->dyn_kwargs = parse_expression(P, 1);
        } else if (cur(P)->type == T_NAME && is_op(look(P), "=")) {
            if (n->dyn_kwargs || nkw == 64)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            kwn[nkw++] = name_str(P, cur(P));
            next(P);
            next(P);
            push(P, &kwv, parse_expression(P, 1));
        } else {
            if (n->dyn_args || n->dyn_kwargs || nkw)
                cj_fail(P->c, pos, "invalid syntax for function call expression (positional argument after a "
                                   "keyword argument)");
            push(P, &args, parse_expression(P, 1));
        }
        require_comma = 1;
    }
    expect_op(P, ")", "to close the arguments");
    n->kids = args.v;
    n->nkids = args.n;
    n->kwv = kwv.v;
    n->nkw = nkw;
    if (nkw) {
        n->kwn = cj_alloc(P->c, (size_t)nkw * sizeof *n->kwn);
        memcpy(n->kwn, kwn, (size_t)nkw * sizeof *kwn);
    }
}

static cj_node *parse_subscribed(parser *P)
{
    long pos = cur(P)->pos;
    cj_node *args[3] = {NULL, NULL, NULL};
    if (is_op(cur(P), ":")) {
        next(P);
    } else {
        cj_node *e = parse_expression(P, 1);
        if (!is_op(cur(P), ":"))
            return e;
        next(P);
        args[0] = e;
    }
    if (!is_op(cur(P), ":") && !is_op(cur(P), "]") && !is_op(cur(P), ","))
        args[1] = parse_expression(P, 1);
    if (is_op(cur(P), ":")) {
        next(P);
        if (!is_op(cur(P), "]") && !is_op(cur(P), ","))
            args[2] = parse_expression(P, 1);
    }
    cj_node *n = mk(P, N_SLICE, pos);
    n->a = args[0];
    n->b = args[1];
    n->c = args[2];
    return n;
}

static cj_node *parse_postfix(parser *P, cj_node *node)
{
    for (;;) {
        const cj_tok *t = cur(P);
        if (is_op(t, ".")) {
            next(P);
            const cj_tok *a = cur(P);
            if (a->type == T_NAME) {
                cj_node *n = mk(P, N_GETATTR, t->pos);
                n->a = node;
                n->name = name_str(P, a);
                next(P);
                node = n;
            } else if (a->type == T_INT) {
                cj_node *n = mk(P, N_GETITEM, t->pos), *k = mk(P, N_CONST, a->pos);
                k->konst = cj_int(P->c, a->i);
                n->a = node;
                n->b = k;
                next(P);
                node = n;
            } else {
                cj_fail(P->c, a->pos, "expected a name or number after '.'");
            }
        } else if (is_op(t, "[")) {
            next(P);
            nodevec v = {0};
            while (!is_op(cur(P), "]")) {
                if (v.n)
                    expect_op(P, ",", "between subscripts");
                push(P, &v, parse_subscribed(P));
            }
            expect_op(P, "]", "to close the subscript");
            if (!v.n)
                cj_fail(P->c, t->pos, "expected a subscript expression");
            cj_node *n = mk(P, N_GETITEM, t->pos);
            n->a = node;
            if (v.n == 1) {
                n->b = v.v[0];
            } else {
                cj_node *tu = mk(P, N_TUPLE, t->pos);
                tu->kids = v.v;
                tu->nkids = v.n;
                n->b = tu;
            }
            node = n;
        } else if (is_op(t, "(")) {
            cj_node *n = mk(P, N_CALL, t->pos);
            n->a = node;
            parse_call_args(P, n);
            node = n;
        } else {
            return node;
        }
    }
}

static const char *dotted_name(parser *P, const char *what)
{
    const char *name = expect_name(P, what);
    while (is_op(cur(P), ".")) {
        next(P);
        const char *more = expect_name(P, what);
        size_t a = strlen(name), b = strlen(more);
        char *s = cj_alloc(P->c, a + b + 2);
        memcpy(s, name, a);
        s[a] = '.';
        memcpy(s + a + 1, more, b + 1);
        name = s;
    }
    return name;
}

static cj_node *parse_filter(parser *P, cj_node *node, int start_inline)
{
    while (is_op(cur(P), "|") || start_inline) {
        if (!start_inline)
            next(P);
        long pos = cur(P)->pos;
        cj_node *n = mk(P, N_FILTER, pos);
        n->name = dotted_name(P, "for the filter");
        if (!cj_known_filter(n->name))
            cj_fail(P->c, pos, "unsupported filter '%s'", n->name);
        if (is_op(cur(P), "("))
            parse_call_args(P, n);
        n->a = node;
        node = n;
        start_inline = 0;
    }
    return node;
}

static cj_node *parse_test(parser *P, cj_node *node)
{
    long pos = cur(P)->pos;
    next(P); /* is */
    int negated = 0;
    if (is_name(cur(P), "not")) {
        next(P);
        negated = 1;
    }
    cj_node *n = mk(P, N_TEST, pos);
    long npos = cur(P)->pos;
    n->name = dotted_name(P, "for the test");
    if (!cj_known_test(n->name))
        cj_fail(P->c, npos, "unsupported test '%s'", n->name);
    const cj_tok *t = cur(P);
    if (is_op(t, "(")) {
        parse_call_args(P, n);
    } else if ((t->type == T_NAME || t->type == T_STRING || t->type == T_INT || t->type == T_FLOAT ||
                is_op(t, "[") || is_op(t, "{")) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is"))
            cj_fail(P->c, t->pos, "you cannot chain multiple tests with is");
        cj_node *arg = parse_postfix(P, parse_primary(P));
        n->kids = cj_alloc(P->c, sizeof *n->kids);
        n->kids[0] = arg;
        n->nkids = 1;
    }
    n->a = node;
    if (negated) {
        cj_node *no = mk(P, N_NOT, pos);
        no->a = n;
        return no;
    }
    return n;
}

static cj_node *parse_unary(parser *P, int with_filter)
{
    const cj_tok *t = cur(P);
    cj_node *node;
    if (is_op(t, "-") || is_op(t, "+")) {
        node = mk(P, is_op(t, "-") ? N_NEG : N_POS, t->pos);
        next(P);
        node->a = parse_unary(P, 0);
    } else {
        node = parse_primary(P);
    }
    node = parse_postfix(P, node);
    if (!with_filter)
        return node;
    for (;;) {
        if (is_op(cur(P), "|"))
            node = parse_filter(P, node, 0);
        else if (is_name(cur(P), "is"))
            node = parse_test(P, node);
        else if (is_op(cur(P), "(")) {
            cj_node *n = mk(P, N_CALL, cur(P)->pos);
            n->a = node;
            parse_call_args(P, n);
            node = n;
        } else
            return node;
    }
}

static cj_node *parse_primary(parser *P)
{
    const cj_tok *t = cur(P);
    cj_node *n;
    if (t->type == T_NAME) {
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            n = mk(P, N_CONST, t->pos);
            n->konst = cj_bool(is_name(t, "true") || is_name(t, "True"));
        } else if (is_name(t, "none") || is_name(t, "None")) {
            n = mk(P, N_CONST, t->pos);
            n->konst = &cj_none_v;
        } else {
            n = mk(P, N_NAME, t->pos);
            n->name = name_str(P, t);
        }
        next(P);
        return n;
    }
    if (t->type == T_STRING) {
        cj_buf b = {0};
        n = mk(P, N_CONST, t->pos);
        while (cur(P)->type == T_STRING) { /* adjacent literals concatenate */
            cj_put(P->c, &b, cur(P)->s, cur(P)->n);
            next(P);
        }
        n->konst = cj_buf_str(P->c, &b);
        return n;
    }
    if (t->type == T_INT || t->type == T_FLOAT) {
        n = mk(P, N_CONST, t->pos);
        n->konst = t->type == T_INT ? cj_int(P->c, t->i) : cj_float(P->c, t->f);
        next(P);
        return n;
    }
    if (is_op(t, "(")) {
        next(P);
        n = parse_tuple(P, 0, 1, NULL, 1);
        expect_op(P, ")", "to close the parenthesis");
        return n;
    }
    if (is_op(t, "[")) {
        next(P);
        nodevec v = {0};
        while (!is_op(cur(P), "]")) {
            if (v.n)
                expect_op(P, ",", "between list items");
            if (is_op(cur(P), "]"))
                break;
            push(P, &v, parse_expression(P, 1));
        }
        expect_op(P, "]", "to close the list");
        n = mk(P, N_LIST, t->pos);
        n->kids = v.v;
        n->nkids = v.n;
        return n;
    }
    if (is_op(t, "{")) {
        next(P);
        nodevec v = {0};
        while (!is_op(cur(P), "}")) {
            if (v.n)
                expect_op(P, ",", "between dict items");
            if (is_op(cur(P), "}"))
                break;
            push(P, &v, parse_expression(P, 1));
            expect_op(P, ":", "after a dict key");
            push(P, &v, parse_expression(P, 1));
        }
        expect_op(P, "}", "to close the dict");
        n = mk(P, N_DICT, t->pos);
        n->kids = v.v;
        n->nkids = v.n;
        return n;
    }
    cj_fail(P->c, t->pos, "unexpected %s", describe(P, t));
}

static int tuple_end(parser *P, const char *extra)
{
    const cj_tok *t = cur(P);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || is_op(t, ")"))
        return 1;
    return extra && is_name(t, extra);
}

static cj_node *parse_tuple(parser *P, int simplified, int with_condexpr, const char *extra, int explicit_parens)
{
    long pos = cur(P)->pos;
    nodevec v = {0};
    int is_tuple = 0;
    for (;;) {
        if (v.n)
            expect_op(P, ",", "between tuple items");
        if (tuple_end(P, extra))
            break;
        push(P, &v, simplified ? parse_primary(P) : parse_expression(P, with_condexpr));
        if (is_op(cur(P), ","))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (v.n)
            return v.v[0];
        if (!explicit_parens)
            cj_fail(P->c, cur(P)->pos, "expected an expression, got %s", describe(P, cur(P)));
    }
    cj_node *n = mk(P, N_TUPLE, pos);
    n->kids = v.v;
    n->nkids = v.n;
    return n;
}

/* ---- statements ------------------------------------------------------------------------------------------------ */
static cj_node **subparse(parser *P, const char *const *end, int *nout);

/* a body up to one of the end tags; leaves the end tag's name as the current token */
static cj_node **parse_body(parser *P, const char *const *end, int *n, const char *what, long open_pos)
{
    if (is_op(cur(P), ":"))
        next(P);
    expect_type(P, T_BLOCK_END, what);
    cj_node **body = subparse(P, end, n);
    if (cur(P)->type == T_EOF)
        cj_fail(P->c, open_pos, "unexpected end of template: the {%% %s %%} opened here has no {%% %s %%}", what,
                end[0]);
    return body;
}

static void assignable(parser *P, cj_node *t)
{
    if (t->kind == N_NAME) {
        if (!strcmp(t->name, "true") || !strcmp(t->name, "false") || !strcmp(t->name, "none"))
            cj_fail(P->c, t->pos, "can't assign to '%s'", t->name);
        return;
    }
    if (t->kind == N_TUPLE) {
        for (int i = 0; i < t->nkids; i++)
            assignable(P, t->kids[i]);
        return;
    }
    if (t->kind != N_NSREF)
        cj_fail(P->c, t->pos, "can't assign to this expression");
}

static void parse_signature(parser *P, cj_node *n)
{
    expect_op(P, "(", "to open the parameters");
    nodevec defs = {0};
    const char *names[64];
    int nn = 0;
    while (!is_op(cur(P), ")")) {
        if (nn)
            expect_op(P, ",", "between parameters");
        if (nn == 64)
            cj_fail(P->c, cur(P)->pos, "too many parameters");
        names[nn++] = expect_name(P, "for a parameter");
        if (is_op(cur(P), "=")) {
            next(P);
            push(P, &defs, parse_expression(P, 1));
        } else if (defs.n) {
            cj_fail(P->c, cur(P)->pos, "non-default argument follows default argument");
        }
    }
    expect_op(P, ")", "to close the parameters");
    n->nkw = nn;
    n->kwn = cj_alloc(P->c, (size_t)(nn ? nn : 1) * sizeof *n->kwn);
    memcpy(n->kwn, names, (size_t)nn * sizeof *names);
    n->kids2 = defs.v;
    n->nkids2 = defs.n;
}

static cj_node *parse_statement(parser *P)
{
    const cj_tok *t = cur(P);
    long pos = t->pos;
    if (t->type != T_NAME)
        cj_fail(P->c, pos, "tag name expected, got %s", describe(P, t));
    static const char *const for_end[] = {"endfor", "else", NULL}, *const endfor[] = {"endfor", NULL},
                             *const if_end[] = {"endif", "elif", "else", NULL}, *const endif[] = {"endif", NULL},
                             *const endset[] = {"endset", NULL}, *const endmacro[] = {"endmacro", NULL},
                             *const endcall[] = {"endcall", NULL}, *const endfilter[] = {"endfilter", NULL},
                             *const endwith[] = {"endwith", NULL}, *const endgen[] = {"endgeneration", NULL};
    cj_node *n;
    if (is_name(t, "for")) {
        n = mk(P, N_FOR, pos);
        next(P);
        n->a = parse_tuple(P, 1, 1, "in", 0);
        assignable(P, n->a);
        if (!is_name(cur(P), "in"))
            cj_fail(P->c, cur(P)->pos, "expected 'in' in the for statement, got %s", describe(P, cur(P)));
        next(P);
        n->b = parse_tuple(P, 0, 0, "recursive", 0);
        if (is_name(cur(P), "if")) {
            next(P);
            n->c = parse_expression(P, 1);
        }
        if (is_name(cur(P), "recursive"))
            cj_fail(P->c, cur(P)->pos, "recursive for loops are not supported");
        P->loops++;
        n->kids = parse_body(P, for_end, &n->nkids, "for", pos);
        P->loops--;
        if (is_name(cur(P), "else")) {
            next(P);
            n->kids2 = parse_body(P, endfor, &n->nkids2, "for", pos);
        }
        next(P);
        return n;
    }
    if (is_name(t, "if")) {
        cj_node *root = mk(P, N_IF, pos), *node = root;
        next(P);
        for (;;) {
            node->a = parse_tuple(P, 0, 0, NULL, 0);
            node->kids = parse_body(P, if_end, &node->nkids, "if", pos);
            if (is_name(cur(P), "elif")) {
                cj_node *e = mk(P, N_IF, cur(P)->pos);
                next(P);
                node->kids2 = cj_alloc(P->c, sizeof *node->kids2);
                node->kids2[0] = e;
                node->nkids2 = 1;
                node = e;
                continue;
            }
            if (is_name(cur(P), "else")) {
                next(P);
                node->kids2 = parse_body(P, endif, &node->nkids2, "if", pos);
            }
            next(P);
            return root;
        }
    }
    if (is_name(t, "set")) {
        next(P);
        cj_node *target;
        if (cur(P)->type == T_NAME && is_op(look(P), ".")) {
            target = mk(P, N_NSREF, cur(P)->pos);
            target->name = name_str(P, cur(P));
            next(P);
            next(P);
            target->attr = expect_name(P, "for the namespace attribute");
        } else {
            target = parse_tuple(P, 1, 1, NULL, 0);
        }
        assignable(P, target);
        if (is_op(cur(P), "=")) {
            next(P);
            n = mk(P, N_SET, pos);
            n->a = target;
            n->b = parse_tuple(P, 0, 1, NULL, 0);
            return n;
        }
        n = mk(P, N_SETBLOCK, pos);
        n->a = target;
        n->b = parse_filter(P, NULL, 0);
        n->kids = parse_body(P, endset, &n->nkids, "set", pos);
        next(P);
        return n;
    }
    if (is_name(t, "macro")) {
        n = mk(P, N_MACRO, pos);
        next(P);
        n->name = expect_name(P, "for the macro");
        parse_signature(P, n);
        int saved = P->loops;
        P->loops = 0;
        n->kids = parse_body(P, endmacro, &n->nkids, "macro", pos);
        P->loops = saved;
        next(P);
        return n;
    }
    if (is_name(t, "call")) {
        n = mk(P, N_CALLBLOCK, pos);
        next(P);
        if (is_op(cur(P), "("))
            parse_signature(P, n);
        else
            n->kwn = cj_alloc(P->c, sizeof *n->kwn);
        n->a = parse_expression(P, 1);
        if (n->a->kind != N_CALL)
            cj_fail(P->c, pos, "expected a call in the {%% call %%} tag");
        int saved = P->loops;
        P->loops = 0;
        n->kids = parse_body(P, endcall, &n->nkids, "call", pos);
        P->loops = saved;
        next(P);
        return n;
    }
    if (is_name(t, "filter")) {
        n = mk(P, N_FILTERBLOCK, pos);
        next(P);
        n->b = parse_filter(P, NULL, 1);
        n->kids = parse_body(P, endfilter, &n->nkids, "filter", pos);
        next(P);
        return n;
    }
    if (is_name(t, "with")) {
        n = mk(P, N_WITH, pos);
        next(P);
        nodevec targets = {0}, values = {0};
        while (cur(P)->type != T_BLOCK_END) {
            if (targets.n)
                expect_op(P, ",", "between with assignments");
            cj_node *tg = mk(P, N_NAME, cur(P)->pos);
            tg->name = expect_name(P, "for the with target");
            push(P, &targets, tg);
            expect_op(P, "=", "in the with statement");
            push(P, &values, parse_expression(P, 1));
        }
        n->kids2 = targets.v;
        n->nkids2 = targets.n;
        n->kwv = values.v;
        n->kids = parse_body(P, endwith, &n->nkids, "with", pos);
        next(P);
        return n;
    }
    if (is_name(t, "print")) {
        n = mk(P, N_OUTPUT, pos);
        next(P);
        nodevec v = {0};
        while (cur(P)->type != T_BLOCK_END) {
            if (v.n)
                expect_op(P, ",", "between print arguments");
            push(P, &v, parse_expression(P, 1));
        }
        n->kids = v.v;
        n->nkids = v.n;
        return n;
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        if (!P->loops)
            cj_fail(P->c, pos, "'%s' outside of a for loop", is_name(t, "break") ? "break" : "continue");
        n = mk(P, is_name(t, "break") ? N_BREAK : N_CONTINUE, pos);
        next(P);
        return n;
    }
    if (is_name(t, "generation")) {
        n = mk(P, N_GENERATION, pos);
        next(P);
        n->kids = parse_body(P, endgen, &n->nkids, "generation", pos);
        next(P);
        return n;
    }
    static const char *const unsupported[] = {"block", "extends", "include", "import", "from", "autoescape",
                                              "trans", "do", "debug", NULL};
    for (int i = 0; unsupported[i]; i++)
        if (is_name(t, unsupported[i]))
            cj_fail(P->c, pos, "the {%% %s %%} tag is not supported in chat templates", unsupported[i]);
    cj_fail(P->c, pos, "unknown tag '%.*s' (or an end tag that closes nothing open here)", (int)t->n, t->s);
}

static cj_node **subparse(parser *P, const char *const *end, int *nout)
{
    nodevec body = {0}, data = {0};
    for (;;) {
        const cj_tok *t = cur(P);
        if (t->type == T_EOF)
            break;
        if (t->type == T_DATA) {
            cj_node *d = mk(P, N_DATA, t->pos);
            d->konst = cj_str(P->c, t->s, t->n);
            push(P, &data, d);
            next(P);
        } else if (t->type == T_VAR_BEGIN) {
            next(P);
            push(P, &data, parse_tuple(P, 0, 1, NULL, 0));
            expect_type(P, T_VAR_END, "'}}' to close the expression");
        } else if (t->type == T_BLOCK_BEGIN) {
            if (data.n) {
                cj_node *o = mk(P, N_OUTPUT, data.v[0]->pos);
                o->kids = data.v;
                o->nkids = data.n;
                push(P, &body, o);
                data = (nodevec){0};
            }
            next(P);
            if (end)
                for (int i = 0; end[i]; i++)
                    if (is_name(cur(P), end[i])) {
                        *nout = body.n;
                        return body.v;
                    }
            cj_node *s = parse_statement(P);
            push(P, &body, s);
            const char *what = s->kind == N_SET ? "set" : s->kind == N_OUTPUT ? "print" : "block";
            expect_type(P, T_BLOCK_END, what);
        } else {
            cj_fail(P->c, t->pos, "unexpected %s", describe(P, t));
        }
    }
    if (data.n) {
        cj_node *o = mk(P, N_OUTPUT, data.v[0]->pos);
        o->kids = data.v;
        o->nkids = data.n;
        push(P, &body, o);
    }
    *nout = body.n;
    return body.v;
}

cj_node *cj_parse(cj_ctx *c, const cj_tok *toks, size_t ntok)
{
    parser P = {.c = c, .t = toks, .n = ntok};
    cj_node *root = mk(&P, N_OUTPUT, 0);
    root->kind = N_WITH; /* the template body: a list of statements (kids), no targets */
    root->kids = subparse(&P, NULL, &root->nkids);
    return root;
}
