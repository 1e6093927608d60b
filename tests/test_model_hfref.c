/* Forward against an independent implementation of the Hugging Face architectures: this program writes tiny
 * models (GPT-2; a Qwen2-like Llama with GQA, QKV bias and an untied head; a plain Llama with multi-query
 * attention, no bias and a tied head; one with Llama 3.1 rope_scaling), the standard test batch and the engine's per-unit results; then
 * tests/test_model_hfref.py recomputes every unit in float64 with numpy, written from the HF modeling code
 * (GPT2LMHeadModel, LlamaForCausalLM), running each branch as its own unpacked sequence with HF's default
 * position ids. Runs on a 2x2 grid when started on 4 ranks (the engine side), 1x1 otherwise. Exits 77 when
 * numpy is missing. With the argument "bf16" the engine runs in bf16 mixed precision and the script checks the
 * log-probs against the float64 reference within the derived bf16 bound (test_model_bf16.c); exits 77 on a CPU
 * without bf16 instructions. */
#include "test_model_util.h"

#include "prefopt/gemm_local.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int use_bf16;

static void dump(const char *dir, const char *tag, prefopt_model_config *cfg, const prefopt_grid *g, int rank)
{
    prefopt_model_options opt = tm_options(0, 0);
    opt.bf16 = use_bf16;
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, 99);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.txt", dir, tag);
    FILE *f = rank == 0 ? fopen(path, "w") : NULL;
    if (f)
        fprintf(f, "config %s %d %d %d %d %d %d %d %d %.9g %.9g %d %d\n", cfg->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama",
                cfg->vocab_size, cfg->hidden_size, cfg->num_layers, cfg->num_heads, cfg->num_kv_heads, cfg->head_dim,
                cfg->intermediate_size, cfg->max_position, (double)cfg->norm_eps, (double)cfg->rope_theta,
                cfg->qkv_bias, cfg->tie_word_embeddings);
    if (f && cfg->rope_llama3)
        fprintf(f, "rope_llama3 %.9g %.9g %.9g %d\n", (double)cfg->rope_factor, (double)cfg->rope_low_freq_factor,
                (double)cfg->rope_high_freq_factor, cfg->rope_original_max_position);
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        size_t n = (size_t)p->value->m * p->value->n;
        float *full = malloc(sizeof(float) * n);
        prefopt_dmat_gather(p->value, full);
        /* norms and biases away from 1 and 0, and somewhat larger weights, so that every piece matters */
        for (size_t e = 0; e < n; e++)
            full[e] = p->ndim == 1 ? full[e] + 0.1f * (float)sin(0.9 * e + i) : 3.0f * full[e];
        prefopt_dmat_scatter(p->value, full);
        if (f) {
            fprintf(f, "param %s %d %lld %lld", p->name, p->ndim, (long long)p->shape[0],
                    (long long)(p->ndim == 2 ? p->shape[1] : 1));
            for (size_t e = 0; e < n; e++) /* [out][in] row-major == column-major in x out: same order */
                fprintf(f, " %.9g", full[e]);
            fputc('\n', f);
        }
        free(full);
    }
    test_batch tb;
    tb_standard(&tb);
    prefopt_batch b = tb_view(&tb);
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (f) {
        fprintf(f, "batch %d %d %d\n", tb.nrows, tb.T, tb.nunits);
        const char *names[] = {"tokens", "seg", "unit"};
        for (int k = 0; k < 3; k++) {
            fprintf(f, "%s", names[k]);
            for (int t = 0; t < tb.nrows * tb.T; t++)
                fprintf(f, " %d", k == 0 ? tb.tokens[t] : k == 1 ? tb.seg[t] : tb.unit[t]);
            fputc('\n', f);
        }
        for (int u = 0; u < tb.nunits; u++)
            fprintf(f, "result %d %.12g %.12g %g %g %.12g %g\n", u, s.c[u], s.a[u], s.nc[u], s.na[u], s.ls[u],
                    s.hits[u]);
        fclose(f);
    }
    prefopt_model_free(m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    use_bf16 = argc > 1 && !strcmp(argv[1], "bf16");
    char cpu[64];
    if (use_bf16 && !prefopt_cpu_has_bf16(cpu, sizeof cpu)) {
        if (rank == 0)
            printf("test_model_hfref: bf16 skipped: this CPU has no bf16 instructions (%s)\n", cpu);
        MPI_Finalize();
        return 77;
    }
    if (use_bf16)
        setenv("PREFOPT_HFREF_BF16", "1", 1);
    int ok = rank == 0 ? system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0 : 1;
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!ok) {
        if (rank == 0)
            printf("test_model_hfref: skipped: /usr/bin/python3 with numpy not found\n");
        MPI_Finalize();
        return 77;
    }
    prefopt_grid g;
    prefopt_err err = {0};
    int pr = size == 4 ? 2 : 1;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, pr, size / pr, 1, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    char dir[] = "/tmp/prefopt_hfref_XXXXXX";
    if (rank == 0 && !mkdtemp(dir))
        MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    prefopt_model_config c;
    tm_config(&c, PREFOPT_ARCH_GPT2);
    dump(dir, "gpt2", &c, &g, rank);
    tm_config(&c, PREFOPT_ARCH_LLAMA);
    dump(dir, "qwen2", &c, &g, rank);
    tm_config(&c, PREFOPT_ARCH_LLAMA);
    c.num_kv_heads = 1;
    c.qkv_bias = 0;
    c.tie_word_embeddings = 1;
    c.rope_theta = 500000.0f;
    c.norm_eps = 1e-6f;
    dump(dir, "llama_mqa", &c, &g, rank);
    /* Llama 3.1-style rope_scaling with frequencies in all three regimes (D = 8, theta 1e4: wavelengths 6.3,
     * 63, 628, 6283 against 256/8 = 32 and 256/1 = 256) */
    tm_config(&c, PREFOPT_ARCH_LLAMA);
    c.num_heads = 2;
    c.num_kv_heads = 1;
    c.head_dim = 8;
    c.qkv_bias = 0;
    c.rope_llama3 = 1;
    c.rope_factor = 8.0f;
    c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 8.0f;
    c.rope_original_max_position = 256;
    dump(dir, "llama3_rope", &c, &g, rank);
    int rc = 0;
    if (rank == 0) {
        const char *src = getenv("PREFOPT_SOURCE_DIR");
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/test_model_hfref.py %s/gpt2.txt %s/qwen2.txt %s/llama_mqa.txt "
                 "%s/llama3_rope.txt", src ? src : "..", dir, dir, dir, dir);
        rc = system(cmd) != 0;
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    prefopt_grid_free(&g);
    MPI_Finalize();
    return rc;
}
