/* Tokenizer throughput on one core: encode (cold word cache: a fresh tokenizer) and decode, in MB/s of text.
 * The text is fed in documents of about 4 KB cut at line ends, as prefopt pack feeds examples.
 *   bench_tokenizer TOKENIZER_JSON_OR_DIR|byte CORPUS.txt [repeats]
 * A corpus of distinct English text, e.g. the de-duplicated lines of /usr/share/doc/STAR/copyright:
 *   cat /usr/share/doc/STAR/copyright | awk '!seen[$0]++' > /tmp/english.txt      (STAR = the glob *) */
#define _GNU_SOURCE
#include "prefopt/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of this process: on a shared machine, MB per CPU-second is the per-core speed */
static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON_OR_DIR|byte CORPUS.txt [repeats]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)sz + 1);
    if (fread(text, 1, (size_t)sz, f) != (size_t)sz) {
        fprintf(stderr, "%s: short read\n", argv[2]);
        return 1;
    }
    fclose(f);

    double best_enc = 1e30, best_dec = 1e30, best_cpu = 1e30, load_s = 0;
    size_t ntok = 0;
    for (int r = 0; r < repeats; r++) {
        prefopt_err err = {0};
        prefopt_tokenizer *t = NULL;
        double t0 = now();
        if (!strcmp(argv[1], "byte"))
            t = prefopt_tokenizer_byte();
        else if (prefopt_tokenizer_load(argv[1], &t, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        load_s = now() - t0;
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        t0 = now();
        double c0 = cpu();
        for (long off = 0; off < sz;) {
            long end = off + 4096 < sz ? off + 4096 : sz;
            while (end < sz && text[end - 1] != '\n')
                end++;
            if (prefopt_tokenizer_encode(t, text + off, (size_t)(end - off), 0, &ids, &n, &cap, &err)) {
                fprintf(stderr, "encode: %s\n", err.msg);
                return 1;
            }
            off = end;
        }
        double enc = now() - t0, enc_cpu = cpu() - c0;
        best_cpu = enc_cpu < best_cpu ? enc_cpu : best_cpu;
        t0 = now();
        size_t outb = 0;
        for (size_t i = 0; i < n; i += 1024) {
            char *s = prefopt_tokenizer_decode(t, ids + i, n - i < 1024 ? n - i : 1024, 0, &err);
            outb += s ? strlen(s) : 0;
            free(s);
        }
        double dec = now() - t0;
        best_enc = enc < best_enc ? enc : best_enc;
        best_dec = dec < best_dec ? dec : best_dec;
        ntok = n;
        free(ids);
        prefopt_tokenizer_free(t);
        (void)outb;
    }
    double mb = (double)sz / 1e6;
    printf("tokenizer %s  corpus %s: %.2f MB, %zu tokens (%.2f bytes/token)\n", argv[1], argv[2], mb, ntok,
           (double)sz / (double)(ntok ? ntok : 1));
    printf("load %.3f s   encode %.2f MB/s wall, %.2f MB per CPU-second (cold cache, best of %d)   decode %.2f MB/s\n",
           load_s, mb / best_enc, mb / best_cpu, repeats, mb / best_dec);
    free(text);
    return 0;
}
