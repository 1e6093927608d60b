/* libFuzzer harness: tokenizer.json loading, then encode and decode of arbitrary bytes.
 * Input: byte 0 picks the mode.
 *   even: bytes 1.. up to the first NUL are a tokenizer.json, the rest is the text;
 *   low bits 01: the rest is text for one of two fixed tokenizers (byte-level BPE with a Split regex, and
 *         SentencePiece-style with Prepend/Replace, byte fallback and unk);
 *   3 (low two bits set): each bit of the rest is an 'a' or 'b' for a dense {a,b} vocabulary (long merge chains).
 * Build and run (clang):
 *   CC=clang cmake -S . -B build-fuzz -DPREFOPT_FUZZ=ON && cmake --build build-fuzz --target fuzz_tokenizer
 *   mkdir -p /tmp/fz && build-fuzz/tests/fuzz_tokenizer -max_total_time=60 -max_len=4096 /tmp/fz
 * (tests/fuzz/run_fuzz.sh BUILD_DIR runs it with the other harnesses.) */
#define _GNU_SOURCE
#include "prefopt/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const fixed_json[2] = {
    "{\"added_tokens\":[{\"id\":9,\"content\":\"<|x|>\",\"special\":true,\"lstrip\":true},"
    "{\"id\":10,\"content\":\"yy\",\"special\":false,\"rstrip\":true,\"single_word\":true}],"
    "\"normalizer\":{\"type\":\"NFKC\"},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"(?i:'s|'t)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":false}]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"a\":0,\"b\":1,\"\\u0120\":2,\"ab\":3,\"\\u0120a\":4,"
    "\"\\u0120ab\":5,\"aa\":6,\"aaa\":7,\"bb\":8},\"merges\":[\"a b\",\"\\u0120 a\",\"\\u0120a b\",\"a a\",\"aa a\",\"b b\"]}}",
    "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
    "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true},"
    "\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true}],"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<unk>\":0,\"<0x41>\":1,\"<0xC3>\":2,\"\\u2581\":3,\"a\":4,\"\\u2581a\":5,"
    "\"\\u2581\\u2581\":6},\"merges\":[[\"\\u2581\",\"a\"],[\"\\u2581\",\"\\u2581\"]],\"unk_token\":\"<unk>\","
    "\"byte_fallback\":true,\"fuse_unk\":true},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
    "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
    "\"start\":1,\"stop\":0},{\"type\":\"Metaspace\"}]}}",
};

/* Every string over {a,b} up to 6 long and every merge of two of them: long words keep the merge loop busy (a
 * heap overflow hid there until a 262k-token vocabulary found it). */
static char *ab_json(void)
{
    static char toks[126][7];
    int nt = 0;
    for (int len = 1; len <= 6; len++)
        for (int bits = 0; bits < (1 << len); bits++) {
            for (int i = 0; i < len; i++)
                toks[nt][i] = (bits >> (len - 1 - i)) & 1 ? 'b' : 'a';
            toks[nt++][len] = '\0';
        }
    char *json = malloc(1 << 20), *o = json;
    o += sprintf(o, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int i = 0; i < nt; i++)
        o += sprintf(o, "%s\"%s\":%d", i ? "," : "", toks[i], i);
    o += sprintf(o, "},\"merges\":[");
    int first = 1;
    for (size_t len = 2; len <= 6; len++)
        for (int x = 0; x < nt; x++)
            for (int y = 0; y < nt; y++)
                if (strlen(toks[x]) + strlen(toks[y]) == len) {
                    o += sprintf(o, "%s\"%s %s\"", first ? "" : ",", toks[x], toks[y]);
                    first = 0;
                }
    sprintf(o, "]}}");
    return json;
}

static prefopt_tokenizer *load_bytes(const char *json, size_t len)
{
    static char path[64];
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/fuzz_tokenizer_%d.json", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(json, 1, len, f);
    fclose(f);
    prefopt_tokenizer *t = NULL;
    prefopt_err err = {0};
    if (prefopt_tokenizer_load(path, &t, &err) && !err.set)
        abort(); /* a failure must say why */
    unlink(path); /* load keeps nothing open */
    return t;
}

static void exercise(const prefopt_tokenizer *t, const char *text, size_t len)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    prefopt_err err = {0};
    for (int special = 0; special < 2; special++) {
        n = 0;
        if (prefopt_tokenizer_encode(t, text, len, special, &ids, &n, &cap, &err)) {
            if (!err.set)
                abort();
            prefopt_err_clear(&err);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= prefopt_tokenizer_vocab_size(t))
                abort();
        char *d = prefopt_tokenizer_decode(t, ids, n, special, &err);
        if (!d)
            abort(); /* ids from encode always decode */
        free(d);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static prefopt_tokenizer *fixed[3];
    if (!fixed[0]) {
        for (int i = 0; i < 2; i++)
            if (!(fixed[i] = load_bytes(fixed_json[i], strlen(fixed_json[i]))))
                abort();
        char *ab = ab_json();
        if (!(fixed[2] = load_bytes(ab, strlen(ab))))
            abort();
        free(ab);
    }
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1;
    if ((data[0] & 3) == 3) { /* the {a,b} vocabulary: each input bit is one letter */
        char *w = malloc(len * 8 + 1);
        for (size_t i = 0; i < len * 8; i++)
            w[i] = (p[i / 8] >> (i % 8)) & 1 ? 'b' : 'a';
        exercise(fixed[2], w, len * 8);
        free(w);
        return 0;
    }
    if (data[0] & 1) {
        exercise(fixed[(data[0] >> 2) & 1], p, len);
        return 0;
    }
    const char *nul = memchr(p, '\0', len);
    size_t jlen = nul ? (size_t)(nul - p) : len;
    prefopt_tokenizer *t = load_bytes(p, jlen);
    if (t) {
        exercise(t, p + jlen + (nul ? 1 : 0), len - jlen - (nul ? 1 : 0));
        prefopt_tokenizer_free(t);
    }
    return 0;
}
