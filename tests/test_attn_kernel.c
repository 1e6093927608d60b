/* Runs the blocked attention kernel (src/model/attention_blocked.c) on one case written by
 * tests/tools/ref_attention.py and writes its outputs back for that script to compare with its float64 reference:
 *   test_attn_kernel IN OUT
 * IN: int32 T, D, G, window; float32 scale, softcap; int8 seg[T]; int32 pos[T]; float32 q[G][T][D], k[T][D],
 *     v[T][D], dout[G][T][D]
 * OUT: float32 o[G][T][D], lse[G][T], dq[G][T][D], dk[T][D], dv[T][D] (dk, dv summed over the G query heads)
 * It also runs forward and backward a second time and fails unless the results are bit-identical.
 *   test_attn_kernel IN OUT bf16   the same with the bf16 products (exit 77, skipped, without AVX512-BF16) */
#include "attention_blocked.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void get(void *p, size_t size, size_t n, FILE *f, const char *what)
{
    if (fread(p, size, n, f) != n) {
        fprintf(stderr, "test_attn_kernel: short input reading %s\n", what);
        exit(1);
    }
}

static float *fl(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* forward of every head, then backward of every head into dk, dv (the KV group's bf16 forms made by the first
 * head of each pass and reused by the others, as attention.c does) */
static void run(const pf_attn_row *r, int G, const float *q, const float *k, const float *v, const float *dout,
                float *o, float *lse, float *dq, float *dk, float *dv)
{
    const size_t TD = (size_t)r->T * r->D;
    float *wf = fl(pf_attn_fwd_work(r)), *wb = fl(pf_attn_bwd_work(r));
    memset(dk, 0, sizeof(float) * TD);
    memset(dv, 0, sizeof(float) * TD);
    for (int h = 0; h < G; h++)
        pf_attn_forward_head(r, q + h * TD, k, v, o + h * TD, lse + (size_t)h * r->T, wf, h == 0);
    for (int h = 0; h < G; h++)
        pf_attn_backward_head(r, q + h * TD, k, v, o + h * TD, dout + h * TD, lse + (size_t)h * r->T, dq + h * TD,
                              dk, dv, wb, h == 0);
    free(wf);
    free(wb);
}

int main(int argc, char **argv)
{
    const int bf16 = argc == 4 && !strcmp(argv[3], "bf16");
    if (argc != 3 && !bf16) {
        fprintf(stderr, "usage: test_attn_kernel IN OUT [bf16]\n");
        return 2;
    }
    if (bf16 && !pf_attn_bf16_available()) {
        fprintf(stderr, "test_attn_kernel: this CPU has no AVX512-BF16: the bf16 products are not tested here\n");
        return 77;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    int32_t hdr[4];
    float par[2];
    get(hdr, sizeof hdr[0], 4, f, "header");
    get(par, sizeof par[0], 2, f, "header");
    const int T = hdr[0], D = hdr[1], G = hdr[2];
    const size_t TD = (size_t)T * D;
    int8_t *seg = malloc((size_t)T);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    float *q = fl(G * TD), *k = fl(TD), *v = fl(TD), *dout = fl(G * TD);
    get(seg, 1, (size_t)T, f, "seg");
    get(pos, sizeof(int32_t), (size_t)T, f, "pos");
    get(q, sizeof(float), G * TD, f, "q");
    get(k, sizeof(float), TD, f, "k");
    get(v, sizeof(float), TD, f, "v");
    get(dout, sizeof(float), G * TD, f, "dout");
    fclose(f);
    pf_attn_row r = {T, D, seg, pos, par[0], par[1], hdr[3], bf16};
    const size_t nout = 2 * G * TD + (size_t)G * T + 2 * TD;
    float *a = fl(nout), *b = fl(nout);
    for (int rep = 0; rep < 2; rep++) {
        float *x = rep ? b : a;
        run(&r, G, q, k, v, dout, x, x + G * TD, x + G * TD + (size_t)G * T, x + 2 * G * TD + (size_t)G * T,
            x + 2 * G * TD + (size_t)G * T + TD);
    }
    if (memcmp(a, b, sizeof(float) * nout) != 0) {
        fprintf(stderr, "test_attn_kernel: FAIL: a rerun is not bit-identical\n");
        return 1;
    }
    f = fopen(argv[2], "wb");
    if (!f || fwrite(a, sizeof(float), nout, f) != nout || fclose(f) != 0) {
        perror(argv[2]);
        return 1;
    }
    free(a), free(b), free(q), free(k), free(v), free(dout), free(seg), free(pos);
    return 0;
}
