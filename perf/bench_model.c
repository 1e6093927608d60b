/* Engine throughput: forward and forward+backward of a GPT-2-small-shaped (or Llama-shaped) model with a
 * reduced layer count on random tokens, median of several steps; prints tokens/s, GFLOP/s (matmul+attention
 * FLOPs of prefopt_model_forward_flops, x3 for forward+backward) and a JSON line.
 *
 *   mpiexec -n P perf/bench_model [--arch gpt2|llama] [--layers L] [--rows R] [--T T] [--grid-rows PR] [--reps N]
 */
#include "prefopt/banner.h"
#include "prefopt/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    prefopt_blis_select_arch();
    MPI_Init(&argc, &argv);
    int size, rank, L = 2, rows = 2, T = 256, pr = 1, reps = 3, llama = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--layers")) L = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rows")) rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--T")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--grid-rows")) pr = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--arch")) llama = !strcmp(argv[i + 1], "llama");
    }
    if (reps < 1 || reps > 50)
        reps = 3;
    prefopt_grid g;
    prefopt_err err = {0};
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, pr, size / (pr > 0 ? pr : 1), 1, &err))
        prefopt_exit_error(&err, 2);
    prefopt_model_config c = {0};
    if (llama) { /* a Llama-3.2-1B-like block, narrower vocab */
        c = (prefopt_model_config){.arch = PREFOPT_ARCH_LLAMA, .vocab_size = 32000, .hidden_size = 2048,
                                   .num_layers = L, .num_heads = 32, .num_kv_heads = 8, .head_dim = 64,
                                   .intermediate_size = 8192, .max_position = 4096, .norm_eps = 1e-5f,
                                   .rope_theta = 500000.0f, .tie_word_embeddings = 1, .bos_id = -1, .eos_id = -1,
                                   .pad_id = -1, .hf_model_type = "llama"};
    } else { /* GPT-2 small */
        c = (prefopt_model_config){.arch = PREFOPT_ARCH_GPT2, .vocab_size = 50257, .hidden_size = 768,
                                   .num_layers = L, .num_heads = 12, .num_kv_heads = 12, .head_dim = 64,
                                   .intermediate_size = 3072, .max_position = 1024, .norm_eps = 1e-5f,
                                   .qkv_bias = 1, .tie_word_embeddings = 1, .bos_id = -1, .eos_id = -1,
                                   .pad_id = -1, .hf_model_type = "gpt2"};
    }
    prefopt_model_options o = {.with_grads = 1};
    prefopt_model *m = prefopt_model_create(&c, &g, &o, &err);
    if (!m)
        prefopt_exit_error(&err, 1);
    prefopt_model_init_random(m, 1);
    size_t n = (size_t)rows * T;
    int32_t *tok = malloc(n * 4), *pos = malloc(n * 4), *par = malloc(n * 4), *unit = malloc(n * 4);
    int8_t *seg = malloc(n);
    uint8_t *comp = malloc(n);
    for (size_t t = 0; t < n; t++) {
        int i = (int)(t % T);
        tok[t] = (int32_t)((t * 2654435761u) % c.vocab_size);
        pos[t] = i;
        seg[t] = i < T / 2 ? 0 : 1;
        par[t] = i - 1;
        unit[t] = i ? (int)(t / T) : -1;
        comp[t] = i >= T / 2;
    }
    prefopt_batch b = {rows, T, rows, tok, pos, seg, par, unit, comp};
    double st[6][64];
    prefopt_unit_stats us = {st[0], st[1], st[2], st[3], st[4], st[5]};
    float dc[64], da[64];
    for (int u = 0; u < rows; u++)
        dc[u] = -1.0f / T, da[u] = 0;
    double tf[50], tb[50];
    for (int r = -1; r < reps; r++) {
        MPI_Barrier(g.world);
        double t0 = MPI_Wtime();
        if (prefopt_model_forward(m, &b, &us, &err))
            prefopt_exit_error(&err, 1);
        double t1 = MPI_Wtime();
        prefopt_model_zero_grad(m);
        prefopt_model_backward(m, dc, da);
        MPI_Barrier(g.world);
        double t2 = MPI_Wtime();
        if (r >= 0)
            tf[r] = t1 - t0, tb[r] = t2 - t0;
    }
    qsort(tf, reps, sizeof *tf, cmp);
    qsort(tb, reps, sizeof *tb, cmp);
    double flops = prefopt_model_forward_flops(m, &b), f = tf[reps / 2], fb = tb[reps / 2];
    if (rank == 0) {
        printf("bench_model: %s L=%d rows=%d T=%d on %d ranks (grid %dx%d), BLIS arch %s: forward %.3f s (%.0f tok/s, "
               "%.1f GF/s), forward+backward %.3f s (%.0f tok/s, %.1f GF/s)\n",
               llama ? "llama" : "gpt2", L, rows, T, size, g.nprow, g.npcol, prefopt_blis_arch(), f, n / f,
               flops / f * 1e-9, fb, n / fb, 3 * flops / fb * 1e-9);
        printf("{\"bench\":\"model\",\"arch\":\"%s\",\"layers\":%d,\"rows\":%d,\"T\":%d,\"ranks\":%d,\"grid\":\"%dx%d\","
               "\"fwd_s\":%.5f,\"fwdbwd_s\":%.5f,\"fwd_gflops\":%.2f,\"fwdbwd_gflops\":%.2f}\n",
               llama ? "llama" : "gpt2", L, rows, T, size, g.nprow, g.npcol, f, fb, flops / f * 1e-9,
               3 * flops / fb * 1e-9);
    }
    prefopt_model_free(m);
    free(tok), free(pos), free(par), free(unit), free(seg), free(comp);
    prefopt_grid_free(&g);
    MPI_Finalize();
    return 0;
}
