/* Pack and reader throughput. Rank 0 writes a JSONL of token-id pairs, packs it (MB/s of JSONL, one core), then
 * every rank opens the file and reads one shuffled, bucketed epoch as dp = world size replicas (examples/s and
 * MB/s of tokens through collective hyperslab reads).
 *   mpiexec -n 2 build/perf/bench_pack [examples=20000] [prompt_len=200] [completion_len=300] [global_batch=64] */
#define _GNU_SOURCE
#include "prefopt/dataset.h"
#include "prefopt/pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void ids(FILE *f, int n, uint64_t *s)
{
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        fprintf(f, "%s%d", i ? ", " : "", (int)((*s >> 33) % 256));
    }
    fputc(']', f);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int N = argc > 1 ? atoi(argv[1]) : 20000, P = argc > 2 ? atoi(argv[2]) : 200;
    int C = argc > 3 ? atoi(argv[3]) : 300, B = argc > 4 ? atoi(argv[4]) : 64;
    char jsonl[200], h5[256];
    snprintf(jsonl, sizeof jsonl, "/tmp/bench_pack.%d.jsonl", (int)getpid());
    MPI_Bcast(jsonl, sizeof jsonl, MPI_CHAR, 0, MPI_COMM_WORLD);
    snprintf(h5, sizeof h5, "%s.h5", jsonl);
    prefopt_err err = {0};
    if (rank == 0) {
        FILE *f = fopen(jsonl, "w");
        uint64_t s = 1;
        for (int i = 0; i < N; i++) {
            fputs("{\"prompt_ids\": ", f), ids(f, P / 2 + (i % 7) * P / 6, &s);
            fputs(", \"chosen_ids\": ", f), ids(f, C / 2 + (i % 5) * C / 4, &s);
            fputs(", \"rejected_ids\": ", f), ids(f, C / 2 + (i % 3) * C / 2, &s);
            fputs("}\n", f);
        }
        fclose(f);
        prefopt_tokenizer *t = prefopt_tokenizer_byte();
        prefopt_pack_opts o = {jsonl, h5, NULL, 0, 0, "auto", 0, 0, 0, 1, 0, t, 0, NULL, 0, 1};
        prefopt_pack_stats st;
        if (!prefopt_pack(&o, &st, &err))
            printf("pack: %d examples, %.1f MB of JSONL in %.2f s = %.1f MB/s (one core)\n", N, st.bytes / 1e6,
                   st.seconds, st.bytes / 1e6 / st.seconds);
        prefopt_tokenizer_free(t);
        unlink(jsonl);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, 1);
    double t0 = prefopt_now();
    prefopt_dataset *ds;
    prefopt_ds_expect ex = {PREFOPT_BYTE_VOCAB, "byte", 0};
    if (prefopt_dataset_open(h5, MPI_COMM_WORLD, &ex, &ds, &err))
        prefopt_exit_error(&err, 1);
    double t_open = prefopt_now() - t0;
    prefopt_ds_loader_opts lo = {.global_batch = B, .micro_batch = 4, .seed = 1, .shuffle = 1, .bucket_window = 8,
                                 .drop_last = 1, .pad_multiple = 8};
    prefopt_ds_loader *L;
    if (prefopt_ds_loader_create(ds, &lo, rank, size, &L, &err))
        prefopt_exit_error(&err, 1);
    int64_t steps = prefopt_ds_loader_steps_per_epoch(L);
    long long tokens = 0, pads = 0;
    t0 = prefopt_now();
    for (int64_t s = 0; s < steps; s++) {
        prefopt_ds_step st;
        if (prefopt_ds_loader_next(L, &st, &err))
            prefopt_exit_error(&err, 1);
        for (int b = 0; b < st.nmicro; b++)
            tokens += st.micro[b].prompt_tokens + st.micro[b].completion_tokens, pads += st.micro[b].pad_tokens;
        prefopt_ds_step_free(&st);
    }
    double dt = prefopt_now() - t0;
    long long all_tokens = 0, all_pads = 0;
    MPI_Reduce(&tokens, &all_tokens, 1, MPI_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&pads, &all_pads, 1, MPI_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("open + validate (token scan over %d ranks): %.3f s\n", size, t_open);
        printf("read: %lld steps of %d examples over %d replicas in %.2f s = %.0f examples/s, %.1f MB/s of tokens, "
               "%.2f ms/step; padding %.1f%% of batch cells\n",
               (long long)steps, B, size, dt, (double)(steps * B) / dt, 4.0 * (double)all_tokens / 1e6 / dt,
               1e3 * dt / (double)steps, 100.0 * (double)all_pads / (double)(all_tokens + all_pads));
    }
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
    if (rank == 0)
        unlink(h5);
    MPI_Finalize();
    return 0;
}
