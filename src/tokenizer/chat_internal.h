/* prefopt: the private layout of the chat-template interpreter (include/prefopt/chat_template.h), shared by
 * src/tokenizer/chat_*.c, which call each other downwards only:
 *   chat_unicode.c (UTF-8, Python's white space and printable characters, case mappings)
 *   <- chat_value.c (arena, values, Python str/repr, comparisons, JSON)
 *   <- chat_strings.c (argument binding, Python str methods, % formatting)
 *   <- chat_methods.c (attribute/item lookup, method calls: dict/list/loop, str.format)
 *   <- chat_filters.c (filters and tests)  <- chat_lexer.c (source -> tokens, Jinja's whitespace rules),
 *      chat_parser.c (tokens -> tree; asks chat_filters.c which filter and test names exist)
 *   <- chat_eval.c (statements, expressions, scopes, macros, loops)  <- chat_template.c (the public API).
 *
 * Memory: everything a parse or a render allocates comes from one arena, freed as a whole; errors longjmp to the
 * entry point (the arena makes that leak-free), so the interpreter's code has no error returns. */
#ifndef PREFOPT_CHAT_INTERNAL_H
#define PREFOPT_CHAT_INTERNAL_H

#include "prefopt/chat_template.h"

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena and failure ------------------------------------------------------------------------------------ */
typedef struct cj_chunk cj_chunk;
typedef struct {
    cj_chunk *head;
    size_t total, limit; /* bytes taken from malloc; a render past limit fails ("uses too much memory") */
} cj_arena;

typedef struct cj_node cj_node;
typedef struct cj_scope cj_scope;
typedef struct cj_val cj_val;

/* What a parse or a render carries: the arena, where to jump on failure, the message, the budgets. */
typedef struct cj_ctx {
    cj_arena *A;
    jmp_buf jb;
    prefopt_err *err;
    const char *tname; /* the template's name in messages */
    const char *src;   /* the (newline-normalised) source, for line:column */
    size_t srclen;
    /* render state (chat_eval.c) */
    struct cj_buf *out;  /* where output goes now */
    struct cj_buf *top;  /* the render's own output (spans are recorded only there) */
    prefopt_chat_span *spans;
    size_t nspans, capspans;
    long steps;  /* evaluation budget: a runaway template fails instead of hanging */
    int depth;   /* macro call depth (Python's recursion limit would stop it too) */
    int in_loop; /* for break/continue */
    cj_scope *globals;
} cj_ctx;

void cj_arena_init(cj_arena *a, size_t limit);
void cj_arena_free(cj_arena *a);
void *cj_alloc(cj_ctx *c, size_t n);   /* zeroed */
char *cj_strdup(cj_ctx *c, const char *p, size_t n); /* NUL-terminated copy */

/* Fails the parse or render: "<template>: line L:C: <message>" (pos is a byte offset in the source, or -1). */
_Noreturn void cj_fail(cj_ctx *c, long pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- values --------------------------------------------------------------------------------------------- */
enum { CJ_UNDEF, CJ_NONE, CJ_BOOL, CJ_INT, CJ_FLOAT, CJ_STR, CJ_LIST, CJ_DICT, CJ_NS, CJ_MACRO, CJ_FUNC, CJ_METHOD,
       CJ_LOOP };

typedef struct {
    cj_val **k, **v;
    size_t n, cap;
} cj_dict;

typedef struct cj_loop {
    cj_val **items;
    size_t n, i;
    int depth;
    cj_val *last_changed; /* loop.changed() */
    int changed_called;
} cj_loop;

struct cj_val {
    uint8_t type;
    uint8_t tuple; /* CJ_LIST: a Python tuple (repr "(1, 2)") */
    union {
        int64_t i; /* CJ_BOOL (0/1), CJ_INT */
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        struct {
            cj_val **v;
            size_t n;
        } l;
        cj_dict *d;       /* CJ_DICT, CJ_NS */
        const char *hint; /* CJ_UNDEF: what Jinja says when it is used, NULL = "undefined value" */
        struct {
            const cj_node *def;
            cj_scope *closure;
            cj_val *caller; /* a {% call %} body bound to this invocation */
        } m;
        int fn; /* CJ_FUNC: a global function */
        struct {
            cj_val *self;
            const char *name;
        } meth; /* CJ_METHOD: a method of a str/dict/list/loop, bound */
        cj_loop *loop;
    } u;
};

extern cj_val cj_undefined, cj_none_v, cj_true_v, cj_false_v;
enum { CJ_FN_RANGE, CJ_FN_NAMESPACE, CJ_FN_DICT, CJ_FN_RAISE, CJ_FN_STRFTIME };

cj_val *cj_undef(cj_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cj_val *cj_bool(int b);
cj_val *cj_int(cj_ctx *c, int64_t i);
cj_val *cj_float(cj_ctx *c, double f);
cj_val *cj_str(cj_ctx *c, const char *p, size_t n); /* copies */
cj_val *cj_str0(cj_ctx *c, const char *p);
cj_val *cj_list(cj_ctx *c, size_t n, int tuple); /* n NULL slots to fill */
cj_val *cj_list_from(cj_ctx *c, cj_val **items, size_t n); /* a list of copies of the n pointers */
cj_val *cj_dict_new(cj_ctx *c, int type);       /* CJ_DICT or CJ_NS */
void cj_dict_set(cj_ctx *c, cj_val *d, cj_val *k, cj_val *v);
cj_val *cj_dict_get(const cj_val *d, const cj_val *k); /* NULL if absent */
cj_val *cj_dict_gets(const cj_val *d, const char *k);
cj_val *cj_from_json(cj_ctx *c, const cJSON *j);

/* growable byte buffer in the arena */
typedef struct cj_buf {
    char *p;
    size_t n, cap;
} cj_buf;
void cj_put(cj_ctx *c, cj_buf *b, const char *p, size_t n);
void cj_puts(cj_ctx *c, cj_buf *b, const char *s);
void cj_putc(cj_ctx *c, cj_buf *b, char ch);
cj_val *cj_buf_str(cj_ctx *c, cj_buf *b);

/* Python semantics */
void cj_write_str(cj_ctx *c, cj_buf *b, const cj_val *v, long pos); /* str(v) */
void cj_write_repr(cj_ctx *c, cj_buf *b, const cj_val *v, long pos);
cj_val *cj_to_str(cj_ctx *c, const cj_val *v, long pos); /* str(v) as a value (v itself for a str) */
void cj_float_repr(double f, char out[40]);
int cj_truthy(const cj_val *v);
int cj_eq(const cj_val *a, const cj_val *b);
int cj_cmp(cj_ctx *c, const cj_val *a, const cj_val *b, long pos, const char *op); /* <0, 0, >0; fails if unordered */
int cj_is_number(const cj_val *v); /* int, float or bool */
double cj_num(const cj_val *v);
const char *cj_type_name(const cj_val *v); /* Python's type(v).__name__ */
/* transformers' tojson: json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) */
void cj_write_json(cj_ctx *c, cj_buf *b, const cj_val *v, const char *indent, const char *item_sep,
                   const char *key_sep, int sort_keys, int level, long pos);
/* an iterable as a list of items: list/tuple as they are, str as characters, dict/namespace as keys,
 * undefined as nothing; fails for anything else */
cj_val **cj_iter(cj_ctx *c, const cj_val *v, size_t *n, long pos);
void cj_check_undef(cj_ctx *c, const cj_val *v, long pos); /* fails with the undefined's message */

/* UTF-8 and Unicode (chat_unicode.c) */
uint32_t cj_u8_next(const char *p, size_t n, size_t *i); /* decodes at *i (valid UTF-8 assumed), advances */
int cj_u8_put(char *out, uint32_t cp);                    /* returns bytes written (1-4) */
size_t cj_u8_len(const char *p, size_t n);                /* code points */
size_t cj_u8_offset(const char *p, size_t n, size_t cps); /* byte offset of code point cps (n if past the end) */
int cj_u8_valid(const char *p, size_t n);
int cj_isspace(uint32_t cp); /* Python str.isspace */
uint32_t cj_lower_cp(uint32_t cp);
uint32_t cj_upper_cp(uint32_t cp); /* simple mappings; U+00DF upper is handled by the callers ("SS") */
int cj_isalpha_cp(uint32_t cp);
int cj_cased(uint32_t cp);     /* has a case mapping */
int cj_printable(uint32_t cp); /* Python str.isprintable, for repr */
int cj_isdigit_cp(uint32_t cp);
cj_val *cj_case(cj_ctx *c, const cj_val *s, int mode); /* 0 lower, 1 upper, 2 capitalize, 3 title (str.title) */

/* ---- tokens and tree ------------------------------------------------------------------------------------ */
enum { T_EOF, T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT,
       T_OP };
typedef struct {
    int type;
    long pos;      /* byte offset in the source */
    const char *s; /* DATA/NAME/OP text, STRING value (decoded) */
    size_t n;
    int64_t i;
    double f;
} cj_tok;
cj_tok *cj_lex(cj_ctx *c, const char *src, size_t n, size_t *ntok);

enum { /* statements */
       N_OUTPUT, N_DATA, N_FOR, N_IF, N_SET, N_SETBLOCK, N_MACRO, N_CALLBLOCK, N_FILTERBLOCK, N_WITH, N_BREAK,
       N_CONTINUE, N_GENERATION,
       /* expressions */
       N_CONST, N_NAME, N_NSREF, N_GETATTR, N_GETITEM, N_SLICE, N_TUPLE, N_LIST, N_DICT, N_BINOP, N_CONCAT, N_AND,
       N_OR, N_NOT, N_NEG, N_POS, N_COMPARE, N_COND, N_FILTER, N_TEST, N_CALL };
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN,
       OP_NOTIN };

struct cj_node {
    int kind;
    long pos;
    int op;
    const char *name; /* NAME, NSREF (namespace), GETATTR attribute, FILTER/TEST name, MACRO name */
    const char *attr; /* NSREF attribute */
    cj_val *konst;    /* CONST, DATA */
    cj_node *a, *b, *c, *d;
    cj_node **kids; /* bodies, items, positional args, compare operands */
    int nkids;
    cj_node **kids2; /* else bodies, macro defaults */
    int nkids2;
    const char **kwn; /* call keyword names / macro parameter names */
    cj_node **kwv;
    int nkw;
    int *ops; /* COMPARE operators */
    cj_node *dyn_args, *dyn_kwargs;
};
cj_node *cj_parse(cj_ctx *c, const cj_tok *toks, size_t ntok);

/* ---- calls --------------------------------------------------------------------------------------------- */
typedef struct {
    cj_val **pos;
    int npos;
    const char **kwn;
    cj_val **kwv;
    int nkw;
} cj_args;
/* Python-style parameter binding: param i named `name` (positional index i or keyword), NULL when absent. */
cj_val *cj_arg(const cj_args *a, int i, const char *name);
/* fails on more than maxpos positional arguments or a keyword outside names (NULL-terminated) */
void cj_args_check(cj_ctx *c, const cj_args *a, int maxpos, const char *const *names, const char *what, long pos);
int64_t cj_as_int(cj_ctx *c, const cj_val *v, const char *what, long pos);

const cj_val *cj_want_str(cj_ctx *c, const cj_val *v, const char *what, long pos); /* fails unless a str */
cj_val *cj_str_method(cj_ctx *c, const cj_val *s, const char *m, const cj_args *a, long pos); /* chat_strings.c */
cj_val *cj_call_method(cj_ctx *c, const cj_val *self, const char *name, const cj_args *a, long pos);
int cj_has_method(const cj_val *self, const char *name); /* 1 safe, 2 unsafe (mutating), 0 none */
cj_val *cj_strip(cj_ctx *c, const cj_val *s, const cj_val *chars, int which); /* 1 left, 2 right, 3 both */
cj_val *cj_replace(cj_ctx *c, const cj_val *s, const cj_val *old, const cj_val *new_, int64_t count);
cj_val *cj_percent(cj_ctx *c, const cj_val *fmt, const cj_val *args, long pos); /* str % args */
cj_val *cj_filter(cj_ctx *c, const char *name, cj_val *in, const cj_args *a, long pos);
int cj_test(cj_ctx *c, const char *name, const cj_val *v, const cj_args *a, long pos);
int cj_known_filter(const char *name);
int cj_known_test(const char *name);

/* chat_methods.c: jinja's getattr / getitem, and the attribute paths of filters ("a.b.0") */
cj_val *cj_getattr(cj_ctx *c, const cj_val *obj, const char *name, long pos);
cj_val *cj_getitem(cj_ctx *c, const cj_val *obj, const cj_val *key, long pos);
cj_val *cj_attr_path(cj_ctx *c, const cj_val *obj, const cj_val *attr, long pos); /* "a.b.0" like Jinja's */

/* chat_eval.c: renders root with the given variables (a dict value) into c->top */
void cj_render_root(cj_ctx *c, const cj_node *root, cj_val *vars);

#endif
