/* prefopt: the chat-template lexer. It reproduces jinja2's Lexer (lexer.py) for the environment transformers
 * uses: the source's newlines normalised and one trailing newline dropped (keep_trailing_newline=False), data
 * between tags, `-` stripping all white space on its side, `+` keeping it, lstrip_blocks (white space from the
 * start of a line to a block or comment tag is dropped) and trim_blocks (the first newline after a block or
 * comment tag is dropped), {% raw %}, and inside tags the token rules in jinja's order (whitespace, float,
 * integer, name, string, operator) with end tags recognised only while brackets are balanced. */
#define _GNU_SOURCE
#include "chat_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    cj_ctx *c;
    const char *s;
    size_t n;
    cj_tok *t;
    size_t nt, cap;
} lexer;

static void emit(lexer *L, int type, long pos, const char *s, size_t n)
{
    if (L->nt == L->cap) {
        size_t cap = L->cap ? 2 * L->cap : 256;
        cj_tok *nt = cj_alloc(L->c, cap * sizeof *nt);
        if (L->nt)
            memcpy(nt, L->t, L->nt * sizeof *nt);
        L->t = nt;
        L->cap = cap;
    }
    cj_tok *k = &L->t[L->nt++];
    memset(k, 0, sizeof *k);
    k->type = type;
    k->pos = pos;
    k->s = s;
    k->n = n;
}

/* length of the white space (Python \s) at p, 0 if none */
static size_t ws_at(const lexer *L, size_t p)
{
    size_t i = p;
    while (i < L->n) {
        size_t j = i;
        uint32_t cp = cj_u8_next(L->s, L->n, &j);
        if (!cj_isspace(cp))
            break;
        i = j;
    }
    return i - p;
}

/* Python str.rstrip(): the length of s[0:n] without its trailing white space */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80)
            st--;
        size_t j = st;
        if (!cj_isspace(cj_u8_next(s, n, &j)))
            break;
        end = st;
    }
    return end;
}

/* the data before a tag, after `-` or lstrip_blocks: returns its new length */
static size_t strip_data(const lexer *L, size_t start, size_t len, char sign, int is_var)
{
    const char *text = L->s + start;
    if (sign == '-')
        return rstrip_len(text, len);
    if (sign == '+' || is_var)
        return len;
    size_t lpos = len;
    while (lpos > 0 && text[lpos - 1] != '\n')
        lpos--;
    int line_starting = start == 0 || L->s[start - 1] == '\n';
    if (lpos > 0 || line_starting) {
        size_t k = lpos;
        while (k < len) {
            size_t j = k;
            if (!cj_isspace(cj_u8_next(text, len, &j)))
                return len;
            k = j;
        }
        if (len > lpos)
            return lpos;
    }
    return len;
}

static int starts(const lexer *L, size_t p, const char *lit)
{
    size_t k = strlen(lit);
    return p + k <= L->n && !memcmp(L->s + p, lit, k);
}

/* block end at p: returns the end offset or 0 */
static size_t block_end_at(const lexer *L, size_t p)
{
    if (starts(L, p, "+%}"))
        return p + 3;
    if (starts(L, p, "-%}"))
        return p + 3 + ws_at(L, p + 3);
    if (starts(L, p, "%}"))
        return p + 2 + (p + 2 < L->n && L->s[p + 2] == '\n');
    return 0;
}

/* `{%` sign? \s* word \s* then a block end: returns the end offset or 0 (the raw / endraw tags) */
static size_t word_tag_at(const lexer *L, size_t p, const char *word, int end_variants, char *sign)
{
    if (!starts(L, p, "{%"))
        return 0;
    size_t q = p + 2;
    *sign = 0;
    if (q < L->n && (L->s[q] == '-' || L->s[q] == '+'))
        *sign = L->s[q++];
    q += ws_at(L, q);
    if (!starts(L, q, word))
        return 0;
    q += strlen(word);
    q += ws_at(L, q);
    if (!end_variants) { /* raw_begin: `-%}\s*` or `%}` */
        if (starts(L, q, "-%}"))
            return q + 3 + ws_at(L, q + 3);
        if (starts(L, q, "%}"))
            return q + 2;
        return 0;
    }
    return block_end_at(L, q);
}

static size_t digit_run(const lexer *L, size_t p) /* (\d+_)*\d+ */
{
    size_t i = p;
    if (i >= L->n || L->s[i] < '0' || L->s[i] > '9')
        return 0;
    for (;;) {
        while (i < L->n && L->s[i] >= '0' && L->s[i] <= '9')
            i++;
        if (i + 1 < L->n && L->s[i] == '_' && L->s[i + 1] >= '0' && L->s[i + 1] <= '9')
            i++;
        else
            return i - p;
    }
}

static size_t float_at(const lexer *L, size_t p)
{
    if (p > 0 && L->s[p - 1] == '.')
        return 0;
    size_t d = digit_run(L, p);
    if (!d)
        return 0;
    size_t q = p + d, f = 0;
    if (q < L->n && L->s[q] == '.')
        f = digit_run(L, q + 1);
    /* fraction? then exponent (required in this alternative) */
    size_t e0 = f ? q + 1 + f : q;
    for (int with_frac = f ? 1 : 0; with_frac >= 0; with_frac--) {
        size_t e = with_frac ? e0 : q;
        if (e < L->n && (L->s[e] == 'e' || L->s[e] == 'E')) {
            size_t k = e + 1;
            if (k < L->n && (L->s[k] == '+' || L->s[k] == '-'))
                k++;
            size_t x = digit_run(L, k);
            if (x)
                return k + x - p;
        }
    }
    return f ? q + 1 + f - p : 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 32;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

static size_t int_at(const lexer *L, size_t p, int64_t *val)
{
    const char *s = L->s;
    size_t n = L->n, i = p;
    int base = 10;
    if (s[p] == '0' && p + 1 < n && ((s[p + 1] | 32) == 'b' || (s[p + 1] | 32) == 'o' || (s[p + 1] | 32) == 'x')) {
        base = (s[p + 1] | 32) == 'b' ? 2 : (s[p + 1] | 32) == 'o' ? 8 : 16;
        size_t k = p + 2, cnt = 0;
        for (;;) {
            size_t k2 = k + (k < n && s[k] == '_');
            int h = k2 < n ? hexval(s[k2]) : -1;
            if (h < 0 || h >= base)
                break;
            k = k2 + 1;
            cnt++;
        }
        if (cnt)
            i = k;
        else
            base = 10;
    }
    if (base == 10) {
        if (s[p] >= '1' && s[p] <= '9') {
            i = p + 1;
            for (;;) {
                size_t k2 = i + (i < n && s[i] == '_');
                if (k2 < n && s[k2] >= '0' && s[k2] <= '9')
                    i = k2 + 1;
                else
                    break;
            }
        } else if (s[p] == '0') {
            i = p + 1;
            for (;;) {
                size_t k2 = i + (i < n && s[i] == '_');
                if (k2 < n && s[k2] == '0')
                    i = k2 + 1;
                else
                    break;
            }
        } else {
            return 0;
        }
    }
    uint64_t v = 0;
    for (size_t k = p + (base != 10 ? 2 : 0); k < i; k++) {
        if (s[k] == '_')
            continue;
        uint64_t nv = v * (uint64_t)base + (uint64_t)hexval(s[k]);
        if (nv / (uint64_t)base != v || nv > (uint64_t)INT64_MAX)
            cj_fail(L->c, (long)p, "integer literal too large");
        v = nv;
    }
    *val = (int64_t)v;
    return i - p;
}

/* Python's unicode-escape decoding of a string literal's body, after jinja's backslashreplace encoding */
static void decode_string(lexer *L, size_t start, size_t end, cj_tok *t)
{
    cj_buf b = {0};
    const char *s = L->s;
    for (size_t i = start; i < end;) {
        if (s[i] != '\\') {
            size_t st = i;
            cj_u8_next(s, end, &i);
            cj_put(L->c, &b, s + st, i - st);
            continue;
        }
        char e = s[i + 1];
        size_t at = i;
        i += 2;
        uint32_t cp = 0;
        int hex = 0;
        switch (e) {
        case '\n': continue;
        case '\\': cj_putc(L->c, &b, '\\'); continue;
        case '\'': cj_putc(L->c, &b, '\''); continue;
        case '"': cj_putc(L->c, &b, '"'); continue;
        case 'a': cj_putc(L->c, &b, '\a'); continue;
        case 'b': cj_putc(L->c, &b, '\b'); continue;
        case 'f': cj_putc(L->c, &b, '\f'); continue;
        case 'n': cj_putc(L->c, &b, '\n'); continue;
        case 'r': cj_putc(L->c, &b, '\r'); continue;
        case 't': cj_putc(L->c, &b, '\t'); continue;
        case 'v': cj_putc(L->c, &b, '\v'); continue;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        case 'N': cj_fail(L->c, (long)at, "\\N{...} escapes in string literals are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i < end && s[i] >= '0' && s[i] <= '7'; k++)
                    cp = cp * 8 + (uint32_t)(s[i++] - '0');
                break;
            }
            if ((unsigned char)e >= 0x80) { /* backslashreplace made it \xhh/\uhhhh: the backslash stays */
                size_t j = i - 1;
                uint32_t c2 = cj_u8_next(s, end, &j);
                char t2[16];
                snprintf(t2, sizeof t2, c2 < 0x100 ? "\\x%02x" : c2 < 0x10000 ? "\\u%04x" : "\\U%08x", c2);
                cj_puts(L->c, &b, t2);
                i = j;
                continue;
            }
            cj_putc(L->c, &b, '\\'); /* unknown escape: kept as it is */
            cj_putc(L->c, &b, e);
            continue;
        }
        for (int k = 0; k < hex; k++) {
            int h = i < end ? hexval(s[i]) : -1;
            if (h < 0)
                cj_fail(L->c, (long)at, "truncated \\%c escape in a string literal", e);
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10FFFF)
            cj_fail(L->c, (long)at, "illegal Unicode character in a string literal");
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cj_fail(L->c, (long)at, "a surrogate escape (\\u%04x) cannot be rendered as UTF-8", cp);
        char t3[4];
        cj_put(L->c, &b, t3, (size_t)cj_u8_put(t3, cp));
    }
    if (!b.p)
        cj_put(L->c, &b, "", 0);
    t->s = b.p;
    t->n = b.n;
}

static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<="};

/* the tokens of one {% %} or {{ }} tag from p; returns the offset after its end */
static size_t lex_tag(lexer *L, size_t p, int is_block, long open_pos)
{
    char stack[256];
    int depth = 0;
    for (;;) {
        if (!depth) {
            size_t e = 0;
            if (is_block)
                e = block_end_at(L, p);
            else if (starts(L, p, "-}}"))
                e = p + 3 + ws_at(L, p + 3);
            else if (starts(L, p, "}}"))
                e = p + 2;
            if (e) {
                emit(L, is_block ? T_BLOCK_END : T_VAR_END, (long)p, NULL, 0);
                return e;
            }
        }
        if (p >= L->n)
            cj_fail(L->c, open_pos, "unexpected end of template: the %s opened here is not closed",
                    is_block ? "{% tag" : "{{ expression");
        size_t w = ws_at(L, p);
        if (w) {
            p += w;
            continue;
        }
        size_t k;
        int64_t iv;
        if ((k = float_at(L, p))) {
            char *t = cj_alloc(L->c, k + 1), *o = t;
            for (size_t i = p; i < p + k; i++)
                if (L->s[i] != '_')
                    *o++ = L->s[i];
            emit(L, T_FLOAT, (long)p, L->s + p, k);
            errno = 0;
            L->t[L->nt - 1].f = strtod(t, NULL);
            p += k;
            continue;
        }
        if ((k = int_at(L, p, &iv))) {
            emit(L, T_INT, (long)p, L->s + p, k);
            L->t[L->nt - 1].i = iv;
            p += k;
            continue;
        }
        unsigned char ch = (unsigned char)L->s[p];
        if (ch == '_' || ((ch | 32) >= 'a' && (ch | 32) <= 'z')) {
            k = p + 1;
            while (k < L->n && (L->s[k] == '_' || ((L->s[k] | 32) >= 'a' && (L->s[k] | 32) <= 'z') ||
                                (L->s[k] >= '0' && L->s[k] <= '9')))
                k++;
            if (k < L->n && (unsigned char)L->s[k] >= 0x80)
                cj_fail(L->c, (long)p, "identifiers with non-ASCII characters are not supported");
            emit(L, T_NAME, (long)p, L->s + p, k - p);
            p = k;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            size_t q = p + 1;
            while (q < L->n && L->s[q] != (char)ch) {
                if (L->s[q] == '\\') {
                    if (q + 1 >= L->n)
                        break;
                    q++;
                    cj_u8_next(L->s, L->n, &q);
                } else {
                    q++;
                }
            }
            if (q >= L->n)
                cj_fail(L->c, (long)p, "unterminated string literal (unexpected char %c)", ch);
            emit(L, T_STRING, (long)p, NULL, 0);
            decode_string(L, p + 1, q, &L->t[L->nt - 1]);
            p = q + 1;
            continue;
        }
        k = 0;
        for (size_t i = 0; i < sizeof ops2 / sizeof *ops2; i++)
            if (starts(L, p, ops2[i]))
                k = 2;
        if (!k && ch && strchr("+-/*%~[](){}><=.:|,;", ch))
            k = 1;
        if (!k) {
            if (ch >= 0x80)
                cj_fail(L->c, (long)p, "unexpected character in a tag (non-ASCII)");
            cj_fail(L->c, (long)p, "unexpected char '%c' in a tag", ch);
        }
        if (k == 1 && strchr("([{", ch)) {
            if (depth == (int)sizeof stack)
                cj_fail(L->c, (long)p, "brackets nested too deep");
            stack[depth++] = ch == '(' ? ')' : ch == '[' ? ']' : '}';
        } else if (k == 1 && strchr(")]}", ch)) {
            if (!depth)
                cj_fail(L->c, (long)p, "unexpected '%c'", ch);
            if (stack[depth - 1] != (char)ch)
                cj_fail(L->c, (long)p, "unexpected '%c', expected '%c'", ch, stack[depth - 1]);
            depth--;
        }
        emit(L, T_OP, (long)p, L->s + p, k);
        p += k;
    }
}

cj_tok *cj_lex(cj_ctx *c, const char *src, size_t n, size_t *ntok)
{
    lexer L = {.c = c, .s = src, .n = n};
    size_t pos = 0;
    while (pos < n) {
        size_t i = pos;
        const char *hit = NULL;
        while ((hit = memchr(src + i, '{', n - i))) {
            i = (size_t)(hit - src);
            if (i + 1 < n && (src[i + 1] == '{' || src[i + 1] == '%' || src[i + 1] == '#'))
                break;
            i++;
            hit = NULL;
            if (i >= n)
                break;
        }
        if (!hit) {
            emit(&L, T_DATA, (long)pos, src + pos, n - pos);
            break;
        }
        char kind = src[i + 1], sign = 0;
        size_t j = i + 2;
        size_t raw_end = 0;
        char rsign = 0;
        if (kind == '%')
            raw_end = word_tag_at(&L, i, "raw", 0, &rsign);
        if (j < n && (src[j] == '-' || src[j] == '+'))
            sign = src[j++];
        size_t dlen = strip_data(&L, pos, i - pos, raw_end ? rsign : sign, kind == '{');
        if (dlen)
            emit(&L, T_DATA, (long)pos, src + pos, dlen);
        if (raw_end) {
            size_t k = raw_end, end = 0;
            char esign = 0;
            for (; k < n; k++)
                if (src[k] == '{' && (end = word_tag_at(&L, k, "endraw", 1, &esign)))
                    break;
            if (!end)
                cj_fail(c, (long)i, "missing end of raw directive");
            size_t rl = strip_data(&L, raw_end, k - raw_end, esign, 0);
            if (rl)
                emit(&L, T_DATA, (long)raw_end, src + raw_end, rl);
            pos = end;
        } else if (kind == '#') {
            size_t k = j, end = 0;
            for (; k < n && !end; k++) {
                if (starts(&L, k, "+#}"))
                    end = k + 3;
                else if (starts(&L, k, "-#}"))
                    end = k + 3 + ws_at(&L, k + 3);
                else if (starts(&L, k, "#}"))
                    end = k + 2 + (k + 2 < n && src[k + 2] == '\n');
            }
            if (!end)
                cj_fail(c, (long)i, "missing end of comment tag");
            pos = end;
        } else {
            emit(&L, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, (long)i, NULL, 0);
            pos = lex_tag(&L, j, kind == '%', (long)i);
        }
    }
    emit(&L, T_EOF, (long)n, NULL, 0);
    *ntok = L.nt;
    return L.t;
}
