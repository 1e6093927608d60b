/* prefopt: the chat-template statement parser, tokens -> tree by jinja2's grammar (parser.py; expressions are
 * chat_parse_expr.c's): for (else, if-filter), if/elif/else, set (also block set and namespace attributes),
 * macro, call, filter, with, print, break/continue (loopcontrols) and transformers' {% generation %}. Jinja's
 * template inheritance and loading tags (block, extends, include, import, from) stop with an error naming the
 * tag. */
#define _GNU_SOURCE
#include "chat_parse.h"

/* ---- statements ------------------------------------------------------------------------------------------------ */
static cj_node **subparse(parser *P, const char *const *end, int *nout);

/* a body up to one of the end tags; leaves the end tag's name as the current token */
static cj_node **parse_body(parser *P, const char *const *end, int *n, const char *what, long open_pos)
{
    if (is_op(cur(P), ":"))
        next(P);
    cj_parse_expect_type(P, T_BLOCK_END, what);
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
    cj_parse_expect_op(P, "(", "to open the parameters");
    nodevec defs = {0};
    const char *names[64];
    int nn = 0;
    while (!is_op(cur(P), ")")) {
        if (nn)
            cj_parse_expect_op(P, ",", "between parameters");
        if (nn == 64)
            cj_fail(P->c, cur(P)->pos, "too many parameters");
        names[nn++] = cj_parse_expect_name(P, "for a parameter");
        if (is_op(cur(P), "=")) {
            next(P);
            push(P, &defs, cj_parse_expression(P, 1));
        } else if (defs.n) {
            cj_fail(P->c, cur(P)->pos, "non-default argument follows default argument");
        }
    }
    cj_parse_expect_op(P, ")", "to close the parameters");
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
        cj_fail(P->c, pos, "tag name expected, got %s", cj_parse_describe(P, t));
    static const char *const for_end[] = {"endfor", "else", NULL}, *const endfor[] = {"endfor", NULL},
                             *const if_end[] = {"endif", "elif", "else", NULL}, *const endif[] = {"endif", NULL},
                             *const endset[] = {"endset", NULL}, *const endmacro[] = {"endmacro", NULL},
                             *const endcall[] = {"endcall", NULL}, *const endfilter[] = {"endfilter", NULL},
                             *const endwith[] = {"endwith", NULL}, *const endgen[] = {"endgeneration", NULL};
    cj_node *n;
    if (is_name(t, "for")) {
        n = mk(P, N_FOR, pos);
        next(P);
        n->a = cj_parse_tuple(P, 1, 1, "in", 0);
        assignable(P, n->a);
        if (!is_name(cur(P), "in"))
            cj_fail(P->c, cur(P)->pos, "expected 'in' in the for statement, got %s", cj_parse_describe(P, cur(P)));
        next(P);
        n->b = cj_parse_tuple(P, 0, 0, "recursive", 0);
        if (is_name(cur(P), "if")) {
            next(P);
            n->c = cj_parse_expression(P, 1);
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
            node->a = cj_parse_tuple(P, 0, 0, NULL, 0);
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
            target->attr = cj_parse_expect_name(P, "for the namespace attribute");
        } else {
            target = cj_parse_tuple(P, 1, 1, NULL, 0);
        }
        assignable(P, target);
        if (is_op(cur(P), "=")) {
            next(P);
            n = mk(P, N_SET, pos);
            n->a = target;
            n->b = cj_parse_tuple(P, 0, 1, NULL, 0);
            return n;
        }
        n = mk(P, N_SETBLOCK, pos);
        n->a = target;
        n->b = cj_parse_filter(P, NULL, 0);
        n->kids = parse_body(P, endset, &n->nkids, "set", pos);
        next(P);
        return n;
    }
    if (is_name(t, "macro")) {
        n = mk(P, N_MACRO, pos);
        next(P);
        n->name = cj_parse_expect_name(P, "for the macro");
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
        n->a = cj_parse_expression(P, 1);
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
        n->b = cj_parse_filter(P, NULL, 1);
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
                cj_parse_expect_op(P, ",", "between with assignments");
            cj_node *tg = mk(P, N_NAME, cur(P)->pos);
            tg->name = cj_parse_expect_name(P, "for the with target");
            push(P, &targets, tg);
            cj_parse_expect_op(P, "=", "in the with statement");
            push(P, &values, cj_parse_expression(P, 1));
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
                cj_parse_expect_op(P, ",", "between print arguments");
            push(P, &v, cj_parse_expression(P, 1));
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
            push(P, &data, cj_parse_tuple(P, 0, 1, NULL, 0));
            cj_parse_expect_type(P, T_VAR_END, "'}}' to close the expression");
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
            cj_parse_expect_type(P, T_BLOCK_END, what);
        } else {
            cj_fail(P->c, t->pos, "unexpected %s", cj_parse_describe(P, t));
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
