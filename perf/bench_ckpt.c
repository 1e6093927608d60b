/* Checkpoint write/read bandwidth for a GPT-2 124M policy with AdamW moments (3 x 124M fp32 = 1.49 GB), with the
 * per-layer stacking of checkpoint.h (18 datasets per group) and, with --no-stack, one dataset per tensor
 * (148 per group), against a plain dd-style write+fsync of the same number of bytes from rank 0 (the disk),
 * measured right before each save.
 *
 *   mpiexec -n P perf/bench_ckpt [--rows R] [--dp D] [--layers L] [--dir DIR] [--no-stack] [--individual-io]
 *                                [--reps N]
 */
#include "prefopt/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void ck_set_stacking(int on); /* io/checkpoint/ckpt_io.h: benchmark switches */
void ck_get_timers(double t[3]);
void ck_set_individual_io(int on);

static const char *dir_ready(const char *dir)
{
    mkdir(dir, 0777);
    return dir;
}

/* one writer, 64 MiB writes, fsync: what the disk gives a plain sequential file */
static double disk_write(const char *dir, size_t bytes)
{
    char p[600];
    snprintf(p, sizeof p, "%s/dd.bin", dir);
    size_t chunk = (size_t)64 << 20;
    char *buf = malloc(chunk);
    memset(buf, 1, chunk);
    double t0 = prefopt_now();
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t done = 0; done < bytes; done += chunk)
        if (write(fd, buf, bytes - done < chunk ? bytes - done : chunk) < 0)
            break;
    fsync(fd);
    close(fd);
    double t = prefopt_now() - t0;
    unlink(p);
    free(buf);
    return t;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rows = 0, dp = 1, layers = 12, stack = 1, reps = 2;
    const char *dir = "bench_ckpt.dir";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dp") && i + 1 < argc)
            dp = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc)
            layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-stack"))
            stack = 0;
        else if (!strcmp(argv[i], "--individual-io"))
            ck_set_individual_io(1);
    }
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int tp = size / dp;
    if (rows <= 0)
        rows = tp;
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, rows, tp / rows, dp, &err))
        prefopt_exit_error(&err, 2);
    prefopt_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = PREFOPT_ARCH_GPT2;
    c.vocab_size = 50257;
    c.hidden_size = 768;
    c.num_layers = layers;
    c.num_heads = c.num_kv_heads = 12;
    c.head_dim = 64;
    c.intermediate_size = 3072;
    c.max_position = 1024;
    c.norm_eps = 1e-5f;
    c.qkv_bias = 1;
    c.tie_word_embeddings = 1;
    c.bos_id = c.eos_id = 50256;
    c.pad_id = -1;
    strcpy(c.hf_model_type, "gpt2");
    prefopt_model_options o = {0};
    prefopt_model *m = prefopt_model_create(&c, &g, &o, &err);
    if (!m)
        prefopt_exit_error(&err, 1);
    prefopt_model_init_random(m, 1);
    size_t n;
    float *w = prefopt_model_param_data(m, &n);
    float *mb = malloc(sizeof(float) * n), *vb = malloc(sizeof(float) * n);
    for (size_t e = 0; e < n; e++) {
        mb[e] = 0.1f * w[e];
        vb[e] = w[e] * w[e];
    }
    ck_set_stacking(stack);
    size_t logical = 0;
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        logical += (size_t)p->value->m * (size_t)p->value->n;
    }
    double bytes = 3.0 * (double)logical * 4;
    if (rank == 0)
        printf("bench_ckpt: GPT-2 %d layers, %d tensors, %.1f M params, checkpoint %.2f GB (weights + m + v), "
               "grid %dx%d, dp %d, %s\n", layers, prefopt_model_param_count(m), logical / 1e6, bytes / 1e9, g.nprow,
               g.npcol, dp, stack ? "stacked per-layer datasets" : "one dataset per tensor");
    prefopt_ckpt_opts co = {.dir = dir, .keep_last = 1, .tok = NULL};
    prefopt_train_state st;
    memset(&st, 0, sizeof st);
    for (int r = 0; r < reps; r++) {
        st.step = r + 1;
        /* the disk reference right before each save: the VM disk's speed drifts with the host's cache state */
        double td = rank == 0 ? disk_write(dir_ready(dir), (size_t)bytes) : 0;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = prefopt_now(), before[3], after[3];
        ck_get_timers(before);
        char path[600];
        if (prefopt_ckpt_save(&co, m, mb, vb, &st, path, sizeof path, &err))
            prefopt_exit_error(&err, 1);
        double ts = prefopt_now() - t0;
        ck_get_timers(after);
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = prefopt_now();
        if (prefopt_ckpt_load(path, m, mb, vb, NULL, &err))
            prefopt_exit_error(&err, 1);
        double tl = prefopt_now() - t0;
        struct stat sb;
        stat(path, &sb);
        if (rank == 0)
            printf("  rep %d: dd+fsync %.2f s = %.0f MB/s; save %.2f s = %.0f MB/s = %.0f%% of dd (file %.2f GB, includes "
                   "fsync + rename), load+verify %.2f s = %.0f MB/s\n         rank 0: pack+checksum %.2f s, H5Dwrite %.2f s, dataset creation %.3f s, rest "
                "(close, fsync, rename) %.2f s\n", r, td, bytes / td / 1e6, ts, bytes / ts / 1e6, 100 * td / ts, sb.st_size / 1e9, tl, bytes / tl / 1e6,
                after[0] - before[0], after[1] - before[1], after[2] - before[2],
                ts - (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2]));
    }
    if (rank == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd))
            fprintf(stderr, "could not remove %s\n", dir);
    }
    free(mb);
    free(vb);
    prefopt_model_free(m);
    prefopt_grid_free(&g);
    MPI_Finalize();
    return 0;
}
