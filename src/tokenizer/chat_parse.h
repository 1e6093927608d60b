/* prefopt: what the two halves of the chat-template parser share: the token cursor, node allocation, and the
 * expression parser (chat_parse_expr.c) that the statement parser (chat_parser.c) calls. */
#ifndef PREFOPT_CHAT_PARSE_H
#define PREFOPT_CHAT_PARSE_H

#include "chat_internal.h"

#include <string.h>

typedef struct {
    cj_ctx *c;
    const cj_tok *t;
    size_t n, i;
    int loops; /* for-loops around the current statement (break/continue need one) */
} parser;

static inline const cj_tok *cur(parser *P) { return &P->t[P->i]; }
static inline const cj_tok *look(parser *P) { return &P->t[P->i + 1 < P->n ? P->i + 1 : P->i]; }
static inline void next(parser *P)
{
    if (P->i + 1 < P->n)
        P->i++;
}

static inline int is_name(const cj_tok *t, const char *s)
{
    return t->type == T_NAME && t->n == strlen(s) && !memcmp(t->s, s, t->n);
}
static inline int is_op(const cj_tok *t, const char *s)
{
    return t->type == T_OP && t->n == strlen(s) && !memcmp(t->s, s, t->n);
}

static inline const char *name_str(parser *P, const cj_tok *t) { return cj_strdup(P->c, t->s, t->n); }

static inline cj_node *mk(parser *P, int kind, long pos)
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
static inline void push(parser *P, nodevec *v, cj_node *x)
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

const char *cj_parse_describe(parser *P, const cj_tok *t);
void cj_parse_expect_op(parser *P, const char *op, const char *what);
void cj_parse_expect_type(parser *P, int type, const char *what);
const char *cj_parse_expect_name(parser *P, const char *what);
cj_node *cj_parse_expression(parser *P, int with_condexpr);
cj_node *cj_parse_tuple(parser *P, int simplified, int with_condexpr, const char *extra_end, int explicit_parens);
cj_node *cj_parse_primary(parser *P);
cj_node *cj_parse_filter(parser *P, cj_node *node, int start_inline);

#endif
