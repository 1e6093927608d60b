/* prefopt: the chat-template expression parser, by jinja2's grammar (parser.py) and precedence:
 * condexpr < or < and < not < compare (==, !=, <, <=, >, >=, in, not in) < + - < ~ < * / // % < ** < unary - +
 * < postfix (.attr, [item], [a:b:c], call) < filters and tests, which bind to the operand before them.
 * Filters and tests this interpreter does not implement stop the parse with their name (Jinja too refuses an
 * unknown name at compile time). */
#define _GNU_SOURCE
#include "chat_parse.h"

const char *cj_parse_describe(parser *P, const cj_tok *t)
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

void cj_parse_expect_op(parser *P, const char *op, const char *what)
{
    if (!is_op(cur(P), op))
        cj_fail(P->c, cur(P)->pos, "expected '%s' %s, got %s", op, what, cj_parse_describe(P, cur(P)));
    next(P);
}

void cj_parse_expect_type(parser *P, int type, const char *what)
{
    if (cur(P)->type != type) {
        if (type == T_BLOCK_END && cur(P)->type != T_EOF)
            cj_fail(P->c, cur(P)->pos, "expected the end of the %s statement ('%%}'), got %s", what,
                    cj_parse_describe(P, cur(P)));
        cj_fail(P->c, cur(P)->pos, "expected %s, got %s", what, cj_parse_describe(P, cur(P)));
    }
    next(P);
}

const char *cj_parse_expect_name(parser *P, const char *what)
{
    if (cur(P)->type != T_NAME)
        cj_fail(P->c, cur(P)->pos, "expected a name %s, got %s", what, cj_parse_describe(P, cur(P)));
    const char *s = name_str(P, cur(P));
    next(P);
    return s;
}

static cj_node *parse_unary(parser *P, int with_filter);
static cj_node *parse_postfix(parser *P, cj_node *node);
/* ---- expressions ---------------------------------------------------------------------------------------------- */
static cj_node *parse_condexpr(parser *P)
{
    cj_node *e1 = cj_parse_expression(P, 0);
    while (is_name(cur(P), "if")) {
        long pos = cur(P)->pos;
        next(P);
        cj_node *e2 = cj_parse_expression(P, 0), *e3 = NULL;
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

cj_node *cj_parse_expression(parser *P, int with_condexpr)
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
    cj_parse_expect_op(P, "(", "to open the arguments");
    nodevec args = {0}, kwv = {0};
    const char *kwn[64];
    int nkw = 0, require_comma = 0;
    while (!is_op(cur(P), ")")) {
        if (require_comma) {
            cj_parse_expect_op(P, ",", "between arguments");
            if (is_op(cur(P), ")"))
                break;
        }
        if (is_op(cur(P), "*")) {
            if (n->dyn_args || n->dyn_kwargs)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            next(P);
            n->dyn_args = cj_parse_expression(P, 1);
        } else if (is_op(cur(P), "**")) {
            if (n->dyn_kwargs)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            next(P);
            n->dyn_kwargs = cj_parse_expression(P, 1);
        } else if (cur(P)->type == T_NAME && is_op(look(P), "=")) {
            if (n->dyn_kwargs || nkw == 64)
                cj_fail(P->c, pos, "invalid syntax for function call expression");
            kwn[nkw++] = name_str(P, cur(P));
            next(P);
            next(P);
            push(P, &kwv, cj_parse_expression(P, 1));
        } else {
            if (n->dyn_args || n->dyn_kwargs || nkw)
                cj_fail(P->c, pos, "invalid syntax for function call expression (positional argument after a "
                                   "keyword argument)");
            push(P, &args, cj_parse_expression(P, 1));
        }
        require_comma = 1;
    }
    cj_parse_expect_op(P, ")", "to close the arguments");
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
        cj_node *e = cj_parse_expression(P, 1);
        if (!is_op(cur(P), ":"))
            return e;
        next(P);
        args[0] = e;
    }
    if (!is_op(cur(P), ":") && !is_op(cur(P), "]") && !is_op(cur(P), ","))
        args[1] = cj_parse_expression(P, 1);
    if (is_op(cur(P), ":")) {
        next(P);
        if (!is_op(cur(P), "]") && !is_op(cur(P), ","))
            args[2] = cj_parse_expression(P, 1);
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
                    cj_parse_expect_op(P, ",", "between subscripts");
                push(P, &v, parse_subscribed(P));
            }
            cj_parse_expect_op(P, "]", "to close the subscript");
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
    const char *name = cj_parse_expect_name(P, what);
    while (is_op(cur(P), ".")) {
        next(P);
        const char *more = cj_parse_expect_name(P, what);
        size_t a = strlen(name), b = strlen(more);
        char *s = cj_alloc(P->c, a + b + 2);
        memcpy(s, name, a);
        s[a] = '.';
        memcpy(s + a + 1, more, b + 1);
        name = s;
    }
    return name;
}

cj_node *cj_parse_filter(parser *P, cj_node *node, int start_inline)
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
        cj_node *arg = parse_postfix(P, cj_parse_primary(P));
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
        node = cj_parse_primary(P);
    }
    node = parse_postfix(P, node);
    if (!with_filter)
        return node;
    for (;;) {
        if (is_op(cur(P), "|"))
            node = cj_parse_filter(P, node, 0);
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

cj_node *cj_parse_primary(parser *P)
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
        n = cj_parse_tuple(P, 0, 1, NULL, 1);
        cj_parse_expect_op(P, ")", "to close the parenthesis");
        return n;
    }
    if (is_op(t, "[")) {
        next(P);
        nodevec v = {0};
        while (!is_op(cur(P), "]")) {
            if (v.n)
                cj_parse_expect_op(P, ",", "between list items");
            if (is_op(cur(P), "]"))
                break;
            push(P, &v, cj_parse_expression(P, 1));
        }
        cj_parse_expect_op(P, "]", "to close the list");
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
                cj_parse_expect_op(P, ",", "between dict items");
            if (is_op(cur(P), "}"))
                break;
            push(P, &v, cj_parse_expression(P, 1));
            cj_parse_expect_op(P, ":", "after a dict key");
            push(P, &v, cj_parse_expression(P, 1));
        }
        cj_parse_expect_op(P, "}", "to close the dict");
        n = mk(P, N_DICT, t->pos);
        n->kids = v.v;
        n->nkids = v.n;
        return n;
    }
    cj_fail(P->c, t->pos, "unexpected %s", cj_parse_describe(P, t));
}

static int tuple_end(parser *P, const char *extra)
{
    const cj_tok *t = cur(P);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || is_op(t, ")"))
        return 1;
    return extra && is_name(t, extra);
}

cj_node *cj_parse_tuple(parser *P, int simplified, int with_condexpr, const char *extra, int explicit_parens)
{
    long pos = cur(P)->pos;
    nodevec v = {0};
    int is_tuple = 0;
    for (;;) {
        if (v.n)
            cj_parse_expect_op(P, ",", "between tuple items");
        if (tuple_end(P, extra))
            break;
        push(P, &v, simplified ? cj_parse_primary(P) : cj_parse_expression(P, with_condexpr));
        if (is_op(cur(P), ","))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (v.n)
            return v.v[0];
        if (!explicit_parens)
            cj_fail(P->c, cur(P)->pos, "expected an expression, got %s", cj_parse_describe(P, cur(P)));
    }
    cj_node *n = mk(P, N_TUPLE, pos);
    n->kids = v.v;
    n->nkids = v.n;
    return n;
}

