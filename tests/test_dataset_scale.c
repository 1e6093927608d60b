/* Issue 17: a rank's memory for a dataset does not grow with the number of examples. Two sft datasets of tiny
 * examples (100K and 1.5M, written here with serial HDF5) are opened on every rank: the per-example data the
 * dataset holds at its peak (offset, label and ref buffers, through prefopt_dataset_peak_bytes) and the loader's
 * order state are the same for both and far below the 16 bytes per example the replicated offsets took. The order
 * is a permutation of every example each epoch, with and without length bucketing, and different per epoch; the
 * replicas' shares of a step are the global batch's slices. Defects deep in the big file (a non-monotonic offset,
 * a token id beyond the vocabulary) are reported with the example on every rank, although no rank read the whole
 * offsets. */
#define _GNU_SOURCE
#include "prefopt/agree.h"
#include "prefopt/dataset.h"
#include "dataset_internal.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_mpi_check.h"

static int plen(int64_t i) { return (int)(i % 2); }            /* prompt 0..1 tokens */
static int clen(int64_t i) { return 1 + (int)((i * 7919) % 3); } /* completion 1..3 tokens */

static void put_i64_attr(hid_t f, const char *name, int64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR), a = H5Acreate2(f, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a), H5Sclose(s);
}

static void put_field(hid_t f, const char *grp, int64_t N, int (*len)(int64_t))
{
    hid_t g = H5Gcreate2(f, grp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t *o = malloc(sizeof(int64_t) * (size_t)(N + 1));
    o[0] = 0;
    for (int64_t i = 0; i < N; i++)
        o[i + 1] = o[i] + len(i);
    int32_t *t = malloc(sizeof(int32_t) * (size_t)(o[N] + 1));
    for (int64_t p = 0; p < o[N]; p++)
        t[p] = (int32_t)(p % 250);
    hsize_t dn = (hsize_t)(N + 1), dt = (hsize_t)o[N];
    hid_t s1 = H5Screate_simple(1, &dn, NULL), s2 = H5Screate_simple(1, &dt, NULL);
    hid_t d1 = H5Dcreate2(g, "offsets", H5T_STD_I64LE, s1, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t d2 = H5Dcreate2(g, "tokens", H5T_STD_I32LE, s2, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d1, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, o);
    if (dt)
        H5Dwrite(d2, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, t);
    H5Dclose(d1), H5Dclose(d2), H5Sclose(s1), H5Sclose(s2), H5Gclose(g);
    free(o), free(t);
}

static void write_sft(const char *path, int64_t N)
{
    if (rank == 0) {
        hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        put_i64_attr(f, "format_version", 1), put_i64_attr(f, "num_examples", N);
        put_i64_attr(f, "vocab_size", 259), put_i64_attr(f, "bos_id", 256), put_i64_attr(f, "eos_id", 257);
        put_i64_attr(f, "pad_id", 258);
        prefopt_ds_write_str_attr(f, "kind", "sft");
        prefopt_ds_write_str_attr(f, "tokenizer", "byte");
        put_field(f, "prompt", N, plen);
        put_field(f, "completion", N, clen);
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* One value of a dataset changed in place (rank 0, serial). */
static void poke(const char *path, const char *dset, int64_t at, int64_t v)
{
    if (rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, dset, H5P_DEFAULT), fs = H5Dget_space(d);
        hsize_t off = (hsize_t)at, one = 1;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &one, NULL);
        hid_t ms = H5Screate_simple(1, &one, NULL);
        H5Dwrite(d, H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, &v);
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static prefopt_dataset *open_ds(const char *path, int scan, prefopt_err *err)
{
    prefopt_ds_expect ex = {259, "byte", !scan};
    prefopt_dataset *ds = NULL;
    prefopt_dataset_open(path, MPI_COMM_WORLD, &ex, &ds, err);
    return ds;
}

/* Every example exactly once per epoch (a bitmap over N), epochs 0 and 1 in different orders. */
static void check_permutation(prefopt_dataset *ds, int bucket, int64_t *held)
{
    const int64_t N = prefopt_dataset_info(ds)->num_examples;
    const int B = 1000;
    prefopt_ds_loader_opts lo = {.global_batch = B, .micro_batch = 250, .seed = 1234, .shuffle = 1,
                                 .bucket_window = bucket, .drop_last = 0, .pad_multiple = 1};
    prefopt_ds_loader *L;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    *held = prefopt_ds_loader_held_bytes(L);
    int64_t steps = prefopt_ds_loader_steps_per_epoch(L), *ex = malloc(sizeof(int64_t) * B), first[2][16];
    uint8_t *seen = malloc((size_t)N);
    for (int e = 0; e < 2; e++) {
        memset(seen, 0, (size_t)N);
        int64_t dup = 0, total = 0;
        for (int64_t s = 0; s < steps; s++) {
            int n = 0;
            CHECK(!prefopt_ds_loader_batch_examples(L, e, s, ex, &n, &err), "%s", err.msg);
            for (int j = 0; j < n; j++) {
                if (ex[j] < 0 || ex[j] >= N || seen[ex[j]]++)
                    dup++;
                if (s == 0 && j < 16)
                    first[e][j] = ex[j];
            }
            total += n;
        }
        CHECK(total == N && dup == 0, "N %lld, bucket %d, epoch %d: %lld dealt, %lld repeated or out of range",
              (long long)N, bucket, e, (long long)total, (long long)dup);
    }
    CHECK(memcmp(first[0], first[1], sizeof first[0]), "epochs 0 and 1 start alike");
    CHECK(memcmp(first[0], (int64_t[16]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, sizeof first[0]),
          "not shuffled");
    /* replica r of size takes the r-th slice of each global batch, whatever dp is (here dp = size) */
    prefopt_ds_loader *R;
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &R, &err), "%s", err.msg);
    for (int s = 0; s < 3; s++) {
        prefopt_ds_step st;
        int n = 0;
        CHECK(!prefopt_ds_loader_batch_examples(L, 0, s, ex, &n, &err), "%s", err.msg);
        CHECK(!prefopt_ds_loader_next(R, &st, &err), "%s", err.msg);
        int j = B * rank / size;
        for (int b = 0; b < st.nmicro; b++)
            for (int k = 0; k < st.micro[b].nexamples; k++, j++)
                CHECK(st.micro[b].example[k] == ex[j], "step %d: replica %d's example %d", s, rank, j);
        CHECK(j == B * (rank + 1) / size, "step %d: replica %d got %d examples", s, rank, j - B * rank / size);
        prefopt_ds_step_free(&st);
    }
    prefopt_ds_loader_free(R);
    prefopt_ds_loader_free(L);
    free(ex), free(seen);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    prefopt_agree_install_abort();
    const int64_t Ns[2] = {100000, 1500000};
    int64_t peak[2], held[2][2];
    char path[2][64];
    for (int k = 0; k < 2; k++) {
        snprintf(path[k], sizeof path[k], "scale%d.h5", k);
        double tw = MPI_Wtime();
        write_sft(path[k], Ns[k]);
        tw = MPI_Wtime() - tw;
        prefopt_err err = {0};
        double to = MPI_Wtime();
        prefopt_dataset *ds = open_ds(path[k], 1, &err);
        if (rank == 0)
            printf("N %lld: written in %.2f s, opened (validated, token scan) in %.2f s\n", (long long)Ns[k], tw,
                   MPI_Wtime() - to);
        CHECK(ds, "open %s: %s", path[k], err.msg);
        if (!ds)
            break;
        const prefopt_ds_info *in = prefopt_dataset_info(ds);
        CHECK(in->max_len[0] == 1 && in->max_len[1] == 3 && in->max_row == 4, "stats %lld %lld %lld",
              (long long)in->max_len[0], (long long)in->max_len[1], (long long)in->max_row);
        double t0 = MPI_Wtime();
        check_permutation(ds, 0, &held[k][0]);
        double t1 = MPI_Wtime();
        check_permutation(ds, 4, &held[k][1]);
        if (rank == 0)
            printf("N %lld: permutation checks %.2f s without bucketing, %.2f s with\n", (long long)Ns[k], t1 - t0,
                   MPI_Wtime() - t1);
        peak[k] = prefopt_dataset_peak_bytes(ds);
        if (rank == 0)
            printf("N %lld: dataset peak %lld bytes (replicated offsets: %lld), loader %lld / %lld bytes\n",
                   (long long)Ns[k], (long long)peak[k], (long long)(16 * (Ns[k] + 1)), (long long)held[k][0],
                   (long long)held[k][1]);
        prefopt_dataset_close(ds);
    }
    /* the same bound for 15x the examples: the 64K-example chunk and a window of 4 batches of 1000 */
    CHECK(peak[1] == peak[0] && peak[1] < 3 * 1024 * 1024, "peak %lld vs %lld bytes", (long long)peak[1],
          (long long)peak[0]);
    CHECK(held[1][0] == held[0][0] && held[1][1] == held[0][1], "loader bytes grow with N");
    /* a defect deep in the big file: every rank names it, the example found by the ranks together */
    prefopt_err err = {0};
    poke(path[1], "completion/offsets", 1234567, 5); /* far below its neighbours */
    CHECK(!open_ds(path[1], 1, &err) && strstr(err.msg, "'completion/offsets' is not monotonic at example 1234566"),
          "%s", err.msg);
    int64_t o = 0;
    for (int64_t i = 0; i < 1234567; i++)
        o += clen(i);
    poke(path[1], "completion/offsets", 1234567, o);
    prefopt_err_clear(&err);
    prefopt_dataset *ds = open_ds(path[1], 1, &err);
    CHECK(ds, "restored: %s", err.msg);
    prefopt_dataset_close(ds);
    /* a token id 999 at the first completion token of example 1400001 */
    int64_t at = 0;
    for (int64_t i = 0; i < 1400001; i++)
        at += clen(i);
    if (rank == 0) {
        hid_t f = H5Fopen(path[1], H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "completion/tokens", H5P_DEFAULT);
        hid_t fs = H5Dget_space(d);
        hsize_t off = (hsize_t)at, one = 1;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &one, NULL);
        hid_t ms = H5Screate_simple(1, &one, NULL);
        int32_t v = 999;
        H5Dwrite(d, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, &v);
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    prefopt_err_clear(&err);
    char want[128];
    snprintf(want, sizeof want, "token id 999 at position %lld (example 1400001)", (long long)at);
    CHECK(!open_ds(path[1], 1, &err) && strstr(err.msg, want), "want %s: %s", want, err.msg);
    if (rank == 0)
        unlink(path[0]), unlink(path[1]);
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_dataset_scale: %s\n", all ? "FAILED" : "ok");
    MPI_Finalize();
    return all ? 1 : 0;
}
