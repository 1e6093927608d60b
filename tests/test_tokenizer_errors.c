/* tokenizer.json loading on small hand-written files: the merge forms agree, merges apply by rank, and each
 * unsupported or broken input fails with a message naming what is wrong; random bytes never crash encode. */
#define _GNU_SOURCE
#include "prefopt/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c, ...)                                                                               \
    do {                                                                                            \
        if (!(c)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #c);                   \
            fprintf(stderr, __VA_ARGS__);                                                           \
            fputc('\n', stderr);                                                                    \
            failures++;                                                                             \
        }                                                                                           \
    } while (0)

static const char *write_json(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "tokerr_%s.json", name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* A tiny byte-level BPE: vocabulary of a, b, c, space (as U+0120 "Ġ"), and merges ab, abc, Ġa. */
#define VOCAB "{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"abc\":5,\"\\u0120a\":6,\"bc\":7,\"<|x|>\":8}"
#define PRE "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define DEC "\"decoder\":{\"type\":\"ByteLevel\"}"
#define ADDED "\"added_tokens\":[{\"id\":8,\"content\":\"<|x|>\",\"special\":true}]"

static prefopt_tokenizer *load_text(const char *name, const char *json, prefopt_err *err)
{
    prefopt_tokenizer *t = NULL;
    prefopt_err_clear(err);
    if (prefopt_tokenizer_load(write_json(name, json), &t, err))
        return NULL;
    return t;
}

static void expect_error(const char *name, const char *json, const char *needle)
{
    prefopt_err err = {0};
    prefopt_tokenizer *t = load_text(name, json, &err);
    CHECK(!t && err.set && strstr(err.msg, needle), "%s: want an error mentioning '%s', got '%s'", name, needle,
          t ? "(loaded)" : err.msg);
    prefopt_tokenizer_free(t);
}

static size_t enc(prefopt_tokenizer *t, const char *s, int32_t *out, size_t max)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    prefopt_err err = {0};
    if (prefopt_tokenizer_encode(t, s, strlen(s), 1, &ids, &n, &cap, &err))
        n = 0;
    for (size_t i = 0; i < n && i < max; i++)
        out[i] = ids[i];
    free(ids);
    return n;
}

int main(void)
{
    prefopt_err err = {0};
    /* both merge forms, with "bc" ranked after "ab": "abc" must become ab+c -> abc, never a+bc */
    const char *str_form = "{\"model\":{\"type\":\"BPE\",\"vocab\":" VOCAB
                           ",\"merges\":[\"a b\",\"ab c\",\"\\u0120 a\",\"b c\"]}," PRE "," DEC "," ADDED "}";
    const char *list_form = "{\"model\":{\"type\":\"BPE\",\"vocab\":" VOCAB
                            ",\"merges\":[[\"a\",\"b\"],[\"ab\",\"c\"],[\"\\u0120\",\"a\"],[\"b\",\"c\"]]}," PRE "," DEC
                            "," ADDED "}";
    prefopt_tokenizer *ts = load_text("str", str_form, &err);
    CHECK(ts, "string merges: %s", err.msg);
    prefopt_tokenizer *tl = load_text("list", list_form, &err);
    CHECK(tl, "pair-list merges: %s", err.msg);
    if (ts && tl) {
        int32_t a[16], b[16];
        size_t na = enc(ts, "abc ac cab<|x|>bc", a, 16), nb = enc(tl, "abc ac cab<|x|>bc", b, 16);
        /* "abc" -> ab c -> abc | " ac" -> Ġa c | " cab" -> Ġ c ab | <|x|> | "bc" (the last merge) */
        const int32_t want[] = {5, 6, 2, 3, 2, 4, 8, 7};
        CHECK(na == 8 && nb == 8, "got %zu and %zu ids", na, nb);
        for (size_t i = 0; i < 8 && na == 8 && nb == 8; i++)
            CHECK(a[i] == want[i] && b[i] == want[i], "id %zu: %d / %d want %d", i, a[i], b[i], want[i]);
        char *d = prefopt_tokenizer_decode(ts, a, na, 0, &err);
        CHECK(d && !strcmp(d, "abc ac cab<|x|>bc"), "decode '%s'", d ? d : "(null)");
        free(d);
        d = prefopt_tokenizer_decode(ts, a, na, 1, &err);
        CHECK(d && !strcmp(d, "abc ac cabbc"), "decode skip '%s'", d ? d : "(null)");
        free(d);
        int32_t bad = 9;
        CHECK(!prefopt_tokenizer_decode(ts, &bad, 1, 0, &err) && strstr(err.msg, "9"), "%s", err.msg);
        CHECK(prefopt_tokenizer_token_id(ts, "<|x|>") == 8 && prefopt_tokenizer_token_id(ts, "ab") == 4, "token_id");
        size_t tl = 0;
        const char *tk = prefopt_tokenizer_token(ts, 6, &tl);
        CHECK(tk && tl == 3 && !memcmp(tk, "\xc4\xa0" "a", 3), "token(6)");
        CHECK(!prefopt_tokenizer_token(ts, 9, &tl) && !prefopt_tokenizer_token(ts, -1, &tl), "token out of range");
        CHECK(!strncmp(prefopt_tokenizer_identity(ts), "sha256:", 7) && strlen(prefopt_tokenizer_identity(ts)) == 71,
              "identity %s", prefopt_tokenizer_identity(ts));
        /* invalid UTF-8 is an error, not a crash */
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        prefopt_err_clear(&err);
        CHECK(prefopt_tokenizer_encode(ts, "ab\xff\xfe", 4, 1, &ids, &n, &cap, &err) && strstr(err.msg, "UTF-8 at byte 2"),
              "invalid UTF-8: %s", err.msg);
        free(ids);
    }
    prefopt_tokenizer_free(ts);
    prefopt_tokenizer_free(tl);

    /* a Split with a literal string pattern (PCRE2_LITERAL), behavior Removed: "abcab" -> "ab" "ab" */
    const char *lit = "{\"model\":{\"type\":\"BPE\",\"vocab\":" VOCAB ",\"merges\":[\"a b\"]},"
                      "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                      "{\"String\":\"c\"},\"behavior\":\"Removed\",\"invert\":false},{\"type\":\"ByteLevel\","
                      "\"add_prefix_space\":false,\"use_regex\":false}]}}";
    prefopt_tokenizer *tlit = load_text("literal", lit, &err);
    CHECK(tlit, "literal Split: %s", err.msg);
    if (tlit) {
        int32_t ids[8];
        size_t n = enc(tlit, "abcab", ids, 8);
        CHECK(n == 2 && ids[0] == 4 && ids[1] == 4, "literal Split: %zu ids", n);
    }
    prefopt_tokenizer_free(tlit);

    /* a long word whose merges keep making new candidates: 65 "a" -> 4 x a16 + a (the candidate heap outgrows the
       symbol count here; it once overflowed) */
    const char *pow2 = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"aa\":1,\"aaaa\":2,\"aaaaaaaa\":3,"
                       "\"aaaaaaaaaaaaaaaa\":4},\"merges\":[\"a a\",\"aa aa\",\"aaaa aaaa\",\"aaaaaaaa aaaaaaaa\"]}}";
    prefopt_tokenizer *tp = load_text("pow2", pow2, &err);
    CHECK(tp, "pow2: %s", err.msg);
    if (tp) {
        char word[66];
        memset(word, 'a', 65);
        word[65] = '\0';
        int32_t ids[8];
        size_t n = enc(tp, word, ids, 8);
        CHECK(n == 5 && ids[0] == 4 && ids[1] == 4 && ids[2] == 4 && ids[3] == 4 && ids[4] == 0, "pow2: %zu ids", n);
    }
    prefopt_tokenizer_free(tp);

    /* every string over {a,b} up to 8 long, every merge of two of them, ranked by length then lexicographically:
       on this word the candidate heap peaks at 81 entries for 64 symbols (it once overflowed at 64) */
    {
        char *json = malloc(1 << 20), *o = json;
        static char toks[510][9];
        int nt = 0, stack_len = 0;
        char cur[9];
        /* pre-order walk: a, aa, aaa, ... is lexicographic order */
        int digit[9] = {0};
        for (;;) {
            if (stack_len < 8) {
                cur[stack_len] = 'a';
                digit[stack_len++] = 0;
            } else {
                while (stack_len > 0 && digit[stack_len - 1] == 1)
                    stack_len--;
                if (!stack_len)
                    break;
                digit[stack_len - 1] = 1;
                cur[stack_len - 1] = 'b';
            }
            memcpy(toks[nt], cur, (size_t)stack_len);
            toks[nt++][stack_len] = '\0';
        }
        o += sprintf(o, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
        for (int i = 0; i < nt; i++)
            o += sprintf(o, "%s\"%s\":%d", i ? "," : "", toks[i], i);
        o += sprintf(o, "},\"merges\":[");
        int first = 1;
        for (size_t len = 2; len <= 8; len++)
            for (int x = 0; x < nt; x++)
                for (int y = 0; y < nt; y++)
                    if (strlen(toks[x]) + strlen(toks[y]) == len) {
                        o += sprintf(o, "%s\"%s %s\"", first ? "" : ",", toks[x], toks[y]);
                        first = 0;
                    }
        sprintf(o, "]}}");
        CHECK(nt == 510, "%d strings", nt);
        prefopt_tokenizer *tab = load_text("ab8", json, &err);
        CHECK(tab, "ab8: %s", err.msg);
        const char *w = "bbbbbabbabababbbabbaababababababbaaabbbbabababbaabaaababbbaabaab";
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        /* the ids and pieces Hugging Face tokenizers gives for the same file (no decoder: pieces joined by spaces) */
        static const int32_t want[12] = {495, 214, 224, 202, 161, 174, 34, 464, 177, 72, 224, 75};
        if (tab && !prefopt_tokenizer_encode(tab, w, strlen(w), 1, &ids, &n, &cap, &err)) {
            CHECK(n == 12, "ab8: %zu ids", n);
            for (size_t i = 0; i < n && n == 12; i++)
                CHECK(ids[i] == want[i], "ab8 id %zu: %d want %d", i, ids[i], want[i]);
            char *d = prefopt_tokenizer_decode(tab, ids, n, 0, &err);
            CHECK(d && !strcmp(d, "bbbbb abbabab abbb abbaab abab abababb aaab bbbab ababb aabaaab abbb aabaab"),
                  "ab8 decode '%s'", d ? d : "(null)");
            free(d);
        }
        free(ids);
        prefopt_tokenizer_free(tab);
        free(json);
    }

    expect_error("dropout", "{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{\"a\":0},\"merges\":[]}}",
                 "model.dropout 0.1 is not supported");
    expect_error("unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}}", "model.type 'Unigram' is not supported (BPE only)");
    expect_error("wordpiece", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", "'WordPiece' is not supported");
    expect_error("nomodel", "{\"version\":\"1.0\"}", "no \"model\"");
    expect_error("badjson", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0", "not valid JSON");
    expect_error("badmerge", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
                 "model.merges[0] 'a b': 'ab' is not in model.vocab");
    expect_error("badmerge2", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b c\"]}}",
                 "model.merges[0] is neither");
    expect_error("badid", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3},\"merges\":[]}}", "model.vocab['a']");
    expect_error("unk", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"unk_token\":\"<unk>\"}}",
                 "model.unk_token '<unk>'");
    expect_error("pre", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                        "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"}}", "pre_tokenizer type 'BertPreTokenizer'");
    expect_error("norm", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                         "\"normalizer\":{\"type\":\"BertNormalizer\"}}", "normalizer type 'BertNormalizer'");
    expect_error("dec", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                        "\"decoder\":{\"type\":\"WordPiece\"}}", "decoder type 'WordPiece'");
    expect_error("regex", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                          "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
                 "does not compile");
    expect_error("prefix", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],"
                           "\"continuing_subword_prefix\":\"##\"}}", "continuing_subword_prefix");
    prefopt_tokenizer *t = NULL;
    prefopt_err_clear(&err);
    CHECK(prefopt_tokenizer_load("/nonexistent/dir/tokenizer.json", &t, &err) && strstr(err.msg, "/nonexistent"),
          "%s", err.msg);

    /* random bytes (mostly invalid UTF-8) through a SentencePiece-style and a byte-level pipeline: no crash, no hang */
    const char *sp = "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
                     "\"\\u2581\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
                     "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<unk>\":0,\"<0x41>\":1,\"\\u2581\":2,\"a\":3,\"\\u2581a\":4},"
                     "\"merges\":[\"\\u2581 a\"],\"unk_token\":\"<unk>\",\"byte_fallback\":true,\"fuse_unk\":true},"
                     "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
                     "\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\","
                     "\"content\":\" \",\"start\":1,\"stop\":0}]}}";
    prefopt_tokenizer *tsp = load_text("sp", sp, &err);
    CHECK(tsp, "%s", err.msg);
    if (tsp) {
        int32_t ids[8];
        size_t n = enc(tsp, "a A bb a", ids, 8);
        /* ▁a | ▁ | A -> <0x41> | ▁ | b b -> one fused <unk> | ▁a */
        const int32_t want[] = {4, 2, 1, 2, 0, 4};
        CHECK(n == 6, "sp: %zu ids", n);
        for (size_t i = 0; i < 6 && n == 6; i++)
            CHECK(ids[i] == want[i], "sp id %zu: %d want %d", i, ids[i], want[i]);
        char *d = prefopt_tokenizer_decode(tsp, ids, n, 0, &err);
        CHECK(d && !strcmp(d, "a A <unk> a"), "sp decode '%s'", d ? d : "(null)");
        free(d);
    }
    prefopt_tokenizer *tb = load_text("str2", str_form, &err);
    uint64_t s = 12345;
    for (int round = 0; round < 300 && tsp && tb; round++) {
        char buf[257];
        size_t len = (size_t)(round % 257);
        for (size_t i = 0; i < len; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = round % 3 ? (char)(s >> 56) : "ab c<|x|>\xe2\x96\x81"[(s >> 59) % 12];
        }
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        prefopt_err_clear(&err);
        prefopt_tokenizer_encode(round & 1 ? tsp : tb, buf, len, 1, &ids, &n, &cap, &err);
        char *d = prefopt_tokenizer_decode(round & 1 ? tsp : tb, ids, n, 0, &err);
        free(d);
        free(ids);
    }
    prefopt_tokenizer_free(tsp);
    prefopt_tokenizer_free(tb);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("test_tokenizer_errors: ok\n");
    return failures ? 1 : 0;
}
