/* The embedded byte-level tokenizer: ids are bytes, three specials, exact round trips. */
#include "prefopt/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c)                                                                                    \
    do {                                                                                            \
        if (!(c)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                   \
            failures++;                                                                             \
        }                                                                                           \
    } while (0)

int main(void)
{
    prefopt_tokenizer *t = prefopt_tokenizer_byte();
    prefopt_err err = {0};
    CHECK(prefopt_tokenizer_vocab_size(t) == 259);
    CHECK(prefopt_tokenizer_bos(t) == 256 && prefopt_tokenizer_eos(t) == 257 && prefopt_tokenizer_pad(t) == 258);
    CHECK(!strcmp(prefopt_tokenizer_identity(t), "byte"));
    CHECK(prefopt_tokenizer_token_id(t, "<|eos|>") == 257);
    CHECK(prefopt_tokenizer_token_id(t, "<|bos|>") == 256);
    CHECK(prefopt_tokenizer_token_id(t, "<|nope|>") == -1);
    CHECK(prefopt_tokenizer_token_id(t, "A") == 65);

    /* "h\xc3\xa9<|eos|>x" : UTF-8 bytes, then the special, then a byte */
    const char *text = "h\xc3\xa9<|eos|>x<|pad";
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    CHECK(!prefopt_tokenizer_encode(t, text, strlen(text), 1, &ids, &n, &cap, &err));
    const int32_t want[] = {104, 0xc3, 0xa9, 257, 120, 60, 124, 112, 97, 100};
    CHECK(n == sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n && i < sizeof want / sizeof want[0]; i++)
        CHECK(ids[i] == want[i]);

    char *dec = prefopt_tokenizer_decode(t, ids, n, 0, &err);
    CHECK(dec && !strcmp(dec, text));
    free(dec);
    dec = prefopt_tokenizer_decode(t, ids, n, 1, &err);
    CHECK(dec && !strcmp(dec, "h\xc3\xa9x<|pad"));
    free(dec);

    /* without allow_special the literal special is plain bytes, appended after the existing ids */
    size_t before = n;
    CHECK(!prefopt_tokenizer_encode(t, "<|bos|>", 7, 0, &ids, &n, &cap, &err));
    CHECK(n == before + 7 && ids[before] == '<' && ids[before + 6] == '>');

    /* every byte value, including NUL and invalid UTF-8, round trips */
    char all[256];
    for (int b = 0; b < 256; b++)
        all[b] = (char)(255 - b);
    n = 0;
    CHECK(!prefopt_tokenizer_encode(t, all, 256, 1, &ids, &n, &cap, &err));
    CHECK(n == 256);
    dec = prefopt_tokenizer_decode(t, ids, n, 0, &err);
    CHECK(dec && !memcmp(dec, all, 256));
    free(dec);

    int32_t bad[] = {65, 259};
    CHECK(prefopt_tokenizer_decode(t, bad, 2, 0, &err) == NULL && err.set && strstr(err.msg, "259"));

    free(ids);
    prefopt_tokenizer_free(t);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("test_tokenizer_byte: ok\n");
    return failures ? 1 : 0;
}
