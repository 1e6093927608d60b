/* gradsync (src/dist/gradsync.c) on 3 ranks, against sums written from the definitions: every rank's input is
 * gathered and summed here in double (fp32 modes: within fp32 rounding), or (bf16) each input rounded to bf16 by
 * hand, summed in fp32 in rank order and, for zero 0, rounded once more: bit for bit. Buckets close at layer-like
 * boundaries; 3 ranks make shards of unequal size. Overlapped (buckets started through the ready hook, in pieces)
 * and blocking runs give bit-identical results. The weight all-gather and the shard gather/copy round trip. */
#include "prefopt/gemm_local.h"
#include "prefopt/gradsync.h"

#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            failures++;                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                              \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
        }                                                                                                     \
    } while (0)

enum { N = 10007 };
static const size_t bounds[] = {1500, 1600, 4000, 4001, 7000, N};
enum { NB = sizeof bounds / sizeof bounds[0] };

static float input(int rank, size_t i)
{
    uint64_t h = (uint64_t)rank * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 32;
    return (float)((double)(h & 0xffffff) / 0x1000000 - 0.5) * (i % 7 == 0 ? 100.0f : 1.0f);
}

static uint16_t bf16_by_hand(float x)
{
    /* nearest even: compare the dropped 16 bits with half an ulp */
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t hi = u >> 16, lo = u & 0xffff;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1)))
        hi++;
    return (uint16_t)hi;
}

/* Runs one reduction of every rank's input; overlap feeds readiness in steps of 997 elements. */
static void reduce(float *g, MPI_Comm comm, int zero, int bf16, int overlap, size_t bucket, prefopt_gradsync **out)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    for (size_t i = 0; i < N; i++)
        g[i] = input(rank, i);
    prefopt_gradsync_opts o = {bucket, overlap, zero, bf16};
    prefopt_gradsync *gs = prefopt_gradsync_create(g, N, bounds, NB, comm, &o);
    prefopt_gradsync_begin(gs);
    for (size_t r = 0; r < N; r += 997)
        prefopt_gradsync_ready(gs, r);
    prefopt_gradsync_ready(gs, N);
    prefopt_gradsync_finish(gs);
    *out = gs;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* bf16 rounding: ties to even, NaN and infinity kept */
    CHECK(prefopt_bf16_round(1.0f) == 0x3f80 && prefopt_bf16_value(0x3f80) == 1.0f, "bf16 of 1");
    CHECK(prefopt_bf16_round(1.0f + 0x1p-8f) == 0x3f80, "1 + 2^-8 (a tie) rounds to even 1");
    CHECK(prefopt_bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "just above the tie rounds up");
    CHECK(prefopt_bf16_round(1.0f + 3 * 0x1p-8f) == 0x3f82, "1 + 3*2^-8 (a tie) rounds to even 1 + 2^-6");
    CHECK(isnan(prefopt_bf16_value(prefopt_bf16_round(NAN))) && isinf(prefopt_bf16_value(prefopt_bf16_round(INFINITY))),
          "NaN and infinity");
    int agree = 1;
    for (uint32_t k = 0; k < 200000; k++) {
        float x = input(7, k) * 1e3f;
        agree &= prefopt_bf16_round(x) == bf16_by_hand(x);
    }
    CHECK(agree, "bf16 rounding == by hand on 200000 values");

    /* the exact sums over the ranks */
    double *ref = malloc(sizeof(double) * N), *refabs = malloc(sizeof(double) * N);
    float *bref = malloc(sizeof(float) * N);
    for (size_t i = 0; i < N; i++) {
        double s = 0, sa = 0;
        float b = 0;
        for (int r = 0; r < size; r++) {
            s += input(r, i);
            sa += fabs(input(r, i));
            b += prefopt_bf16_value(bf16_by_hand(input(r, i)));
        }
        ref[i] = s;
        refabs[i] = sa;
        bref[i] = b;
    }
    float *g = malloc(sizeof(float) * N), *g2 = malloc(sizeof(float) * N);
    for (int bf16 = 0; bf16 <= 1; bf16++)
        for (int zero = 0; zero <= 1; zero++) {
            prefopt_gradsync *a, *b;
            reduce(g, MPI_COMM_WORLD, zero, bf16, 1, 2000, &a);
            reduce(g2, MPI_COMM_WORLD, zero, bf16, 0, 2000, &b);
            /* a bucket closes at the first boundary at least 2000 floats past its start: [0,4000) [4000,7000)
             * [7000,N) */
            CHECK(prefopt_gradsync_nbuckets(a) == 3, "buckets %d", prefopt_gradsync_nbuckets(a));
            prefopt_gradsync_stats st;
            prefopt_gradsync_take_stats(a, &st);
            CHECK(st.early == 3, "overlap: all 3 buckets started through ready (%d)", st.early);
            prefopt_gradsync_take_stats(b, &st);
            CHECK(st.early == 0, "blocking: none started through ready (%d)", st.early);
            const size_t *off, *cnt;
            int nseg = prefopt_gradsync_shard(a, &off, &cnt);
            CHECK(nseg == (zero ? 3 : 1), "segments %d", nseg);
            int ok = 1, same = 1;
            size_t owned = 0;
            for (int s = 0; s < nseg; s++)
                for (size_t i = off[s]; i < off[s] + cnt[s]; i++, owned++) {
                    double want = bf16 ? (zero ? (double)bref[i] : (double)prefopt_bf16_value(bf16_by_hand(bref[i])))
                                       : ref[i];
                    /* fp32: size - 1 additions in some order, each off by at most 2^-24 of a partial sum */
                    double tol = bf16 ? 0 : (double)size * 0x1p-24 * refabs[i];
                    ok &= fabs(g[i] - want) <= tol;
                    same &= g[i] == g2[i];
                }
            CHECK(ok, "bf16 %d zero %d: the reduced values match the definition", bf16, zero);
            CHECK(same, "bf16 %d zero %d: overlapped == blocking, bit for bit", bf16, zero);
            long tot = (long)owned;
            MPI_Allreduce(MPI_IN_PLACE, &tot, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
            CHECK(tot == (long)N * (zero ? 1 : size), "shards cover the buffer once (%ld)", tot);
            if (zero) {
                /* all-gather: each rank writes rank-tagged values in its shard; everyone ends with every owner's */
                float *w = malloc(sizeof(float) * N), *sh = malloc(sizeof(float) * (owned + 1));
                for (size_t i = 0; i < N; i++)
                    w[i] = -1;
                for (int s = 0; s < nseg; s++)
                    for (size_t i = off[s]; i < off[s] + cnt[s]; i++)
                        w[i] = (float)i + 0.25f * (float)rank;
                prefopt_gradsync_gather(a, w);
                int gath = 1;
                for (size_t i = 0; i < N; i++)
                    gath &= w[i] >= (float)i && w[i] < (float)i + 1;
                CHECK(gath, "weight all-gather fills every element from its owner");
                /* the gather overlapped with forward: after need(lo) every element >= lo is in place */
                for (int s = 0; s < nseg; s++)
                    for (size_t i = off[s]; i < off[s] + cnt[s]; i++)
                        w[i] = -(float)i - 1 - 0.25f * (float)rank; /* the earlier values were positive */
                prefopt_gradsync_gather_start(a, w);
                int staged = 1;
                for (long lo = 9000; lo >= 0; lo -= 1500) {
                    prefopt_gradsync_need(a, (size_t)lo);
                    for (size_t i = (size_t)lo; i < N; i++)
                        staged &= w[i] <= -(float)i - 1 && w[i] > -(float)i - 2;
                }
                prefopt_gradsync_gather_finish(a);
                CHECK(staged, "deferred gather: need(lo) completes every weight at or past lo");
                prefopt_gradsync_copy_shard(a, w, sh);
                float *w2 = calloc(N, sizeof(float));
                prefopt_gradsync_gather_shards(a, sh, w2);
                CHECK(!memcmp(w, w2, sizeof(float) * N), "shard copy + gather round trip");
                free(w), free(w2), free(sh);
            }
            prefopt_gradsync_free(a);
            prefopt_gradsync_free(b);
        }
    free(ref), free(refabs), free(bref), free(g), free(g2);
    int all = failures;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf(all ? "test_gradsync: %d failures\n" : "test_gradsync: all checks passed\n", all);
    MPI_Finalize();
    return all != 0;
}
