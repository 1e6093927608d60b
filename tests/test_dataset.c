/* Dataset reader tests under MPI: JSONL -> pack -> reader round trip for every kind, the packed batch layout
 * element by element, dp replicas covering an epoch exactly once, resume from a cursor giving identical batches,
 * reference log-probs stored collectively and served in batches. */
#define _GNU_SOURCE
#include "prefopt/dataset.h"
#include "prefopt/pack.h"
#include "dataset_internal.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_mpi_check.h"

static char dir[256];

/* Packs a fixture on rank 0 (serial, as `prefopt pack` does) into dir/name.h5. */
static void pack(const char *fixture, const char *name, int max_prompt, int max_len, int trunc)
{
    char in[512], out[512];
    snprintf(in, sizeof in, "%s/tests/data/%s", getenv("PREFOPT_SOURCE_DIR"), fixture);
    snprintf(out, sizeof out, "%s/%s.h5", dir, name);
    prefopt_err err = {0};
    if (rank == 0) {
        prefopt_tokenizer *t = prefopt_tokenizer_byte();
        prefopt_pack_opts o = {in, out, NULL, 0, 0, "auto", max_prompt, max_len, trunc, 1, 0, t, 0, NULL, 0, 1};
        prefopt_pack_stats st;
        prefopt_pack(&o, &st, &err);
        prefopt_tokenizer_free(t);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, 1);
}

static prefopt_dataset *open_ds(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s.h5", dir, name);
    prefopt_ds_expect ex = {PREFOPT_BYTE_VOCAB, "byte", 0};
    prefopt_dataset *ds = NULL;
    prefopt_err err = {0};
    if (prefopt_dataset_open(p, MPI_COMM_WORLD, &ex, &ds, &err))
        prefopt_exit_error(&err, 1);
    return ds;
}

/* Expected token ids of a byte string plus EOS. */
static int bytes_eos(const char *s, int32_t *out)
{
    int n = 0;
    for (; *s; s++)
        out[n++] = (unsigned char)*s;
    out[n++] = PREFOPT_BYTE_EOS;
    return n;
}

static void expect_example(prefopt_dataset *ds, int64_t e, const char *const want[], int eos_from)
{
    int32_t *tok[PREFOPT_DS_MAX_FIELDS];
    int64_t *start[PREFOPT_DS_MAX_FIELDS];
    prefopt_err err = {0};
    CHECK(!prefopt_dataset_read(ds, &e, 1, tok, start, &err), "%s", err.msg);
    int nf = prefopt_ds_kind_nfields(prefopt_dataset_info(ds)->kind);
    for (int f = 0; f < nf; f++) {
        int32_t w[256];
        int n = 0;
        if (f >= eos_from)
            n = bytes_eos(want[f], w);
        else
            for (const char *s = want[f]; *s; s++)
                w[n++] = (unsigned char)*s;
        CHECK(start[f][1] == n, "example %ld field %d: %ld tokens, want %d", (long)e, f, (long)start[f][1], n);
        for (int i = 0; i < n && i < start[f][1]; i++)
            CHECK(tok[f][i] == w[i], "example %ld field %d token %d: %d, want %d", (long)e, f, i, tok[f][i], w[i]);
        free(tok[f]), free(start[f]);
    }
}

static void test_pairs_roundtrip(void)
{
    pack("pairs.jsonl", "pairs", 0, 0, PREFOPT_TRUNC_KEEP_END);
    prefopt_dataset *ds = open_ds("pairs");
    const prefopt_ds_info *in = prefopt_dataset_info(ds);
    CHECK(in->kind == PREFOPT_DS_PAIRS && in->num_examples == 5, "kind %d n %ld", in->kind, (long)in->num_examples);
    expect_example(ds, 0, (const char *const[]){"ab", "cd", "e"}, 1);
    expect_example(ds, 1, (const char *const[]){"Q?", "yes!", "no"}, 1);
    /* ids: EOS (257) already ends the rejected ids, so only chosen gains one */
    expect_example(ds, 2, (const char *const[]){"\x01\x02\x03", "\x04\x05", "\x06"}, 1);
    /* implicit prompt = the common prefix */
    expect_example(ds, 3, (const char *const[]){"Human: hi Assistant: ", "hello", "go"}, 1);
    /* chat: ChatML, generation prompt in the prompt, the assistant header omitted in completions */
    expect_example(ds, 4,
                   (const char *const[]){"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "A<|im_end|>\n",
                                         "B<|im_end|>\n"},
                   1);

    /* the packed-pair batch of examples {0, 1}, element by element */
    prefopt_ds_loader_opts lo = {.global_batch = 2 * size, .micro_batch = 2, .shuffle = 0, .drop_last = 1,
                                 .pad_multiple = 4};
    prefopt_ds_loader *L;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &L, &err), "%s", err.msg);
    prefopt_ds_step st;
    CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
    if (rank == 0) {
        const prefopt_ds_batch *b = &st.micro[0];
        CHECK(st.nmicro == 1 && b->b.nrows == 2 && b->b.nunits == 4, "nmicro %d rows %d", st.nmicro, b->b.nrows);
        /* row 0: [a b | c d EOS | e EOS], row 1: [Q ? | y e s ! EOS | n o EOS] = 12 -> T = 12 */
        CHECK(b->b.T == 12, "T %d", b->b.T);
        const int E = PREFOPT_BYTE_EOS, PAD = PREFOPT_BYTE_PAD;
        int32_t tok0[12] = {'a', 'b', 'c', 'd', E, 'e', E, PAD, PAD, PAD, PAD, PAD};
        int32_t pos0[12] = {0, 1, 2, 3, 4, 2, 3, 0, 0, 0, 0, 0};
        int8_t seg0[12] = {0, 0, 1, 1, 1, 2, 2, -1, -1, -1, -1, -1};
        int32_t par0[12] = {-1, 0, 1, 2, 3, 1, 5, -1, -1, -1, -1, -1};
        int32_t unit0[12] = {-1, 0, 0, 0, 0, 1, 1, -1, -1, -1, -1, -1};
        uint8_t comp0[12] = {0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
        int32_t tok1[12] = {'Q', '?', 'y', 'e', 's', '!', E, 'n', 'o', E, PAD, PAD};
        int32_t pos1[12] = {0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 0, 0};
        int8_t seg1[12] = {0, 0, 1, 1, 1, 1, 1, 2, 2, 2, -1, -1};
        int32_t par1[12] = {-1, 0, 1, 2, 3, 4, 5, 1, 7, 8, -1, -1};
        int32_t unit1[12] = {-1, 2, 2, 2, 2, 2, 2, 3, 3, 3, -1, -1};
        uint8_t comp1[12] = {0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
        for (int i = 0; i < 12; i++) {
            CHECK(b->b.tokens[i] == tok0[i] && b->b.tokens[12 + i] == tok1[i], "token %d", i);
            CHECK(b->b.pos[i] == pos0[i] && b->b.pos[12 + i] == pos1[i], "pos %d", i);
            CHECK(b->b.seg[i] == seg0[i] && b->b.seg[12 + i] == seg1[i], "seg %d", i);
            CHECK(b->b.parent[i] == par0[i] && b->b.parent[12 + i] == par1[i], "parent %d: %d %d", i,
                  b->b.parent[i], b->b.parent[12 + i]);
            CHECK(b->b.unit[i] == unit0[i] && b->b.unit[12 + i] == unit1[i], "unit %d", i);
            CHECK(b->b.completion[i] == comp0[i] && b->b.completion[12 + i] == comp1[i], "completion %d", i);
        }
        CHECK(b->chosen_unit[1] == 2 && b->rejected_unit[1] == 3 && b->kl_unit[0] == -1 && !b->label &&
                  !b->ref_logps && b->example[0] == 0 && b->example[1] == 1,
              "unit roles / metadata");
    }
    prefopt_ds_step_free(&st);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
}

static void test_unpaired_and_sft(void)
{
    pack("unpaired.jsonl", "unpaired", 0, 0, PREFOPT_TRUNC_KEEP_END);
    prefopt_dataset *ds = open_ds("unpaired");
    CHECK(prefopt_dataset_info(ds)->kind == PREFOPT_DS_UNPAIRED, "kind");
    expect_example(ds, 1, (const char *const[]){"p1", "bad"}, 1);
    /* one micro-batch of all 4 on every replica (dp = size, B = 4*size needs N >= 4*size: use dp 1 view) */
    prefopt_ds_loader_opts lo = {.global_batch = 4, .micro_batch = 4, .drop_last = 1, .pad_multiple = 1,
                                 .kl_units = 1};
    prefopt_ds_loader *L;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    prefopt_ds_step st;
    CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
    const prefopt_ds_batch *b = &st.micro[0];
    CHECK(b->b.nunits == 8 && b->label && b->label[0] == 1 && b->label[1] == 0 && b->label[2] == 1 &&
              b->label[3] == 0,
          "labels");
    /* row 0 = [p0 | good EOS | KL: completion of example 3 = meh EOS] */
    const int32_t want[] = {'p', '0', 'g', 'o', 'o', 'd', PREFOPT_BYTE_EOS, 'm', 'e', 'h', PREFOPT_BYTE_EOS};
    for (int i = 0; i < 11; i++)
        CHECK(b->b.tokens[i] == want[i], "KTO row 0 token %d: %d", i, b->b.tokens[i]);
    CHECK(b->b.parent[7] == 1 && b->b.pos[7] == 2 && b->b.seg[7] == 2 && b->b.unit[7] == 1 && b->kl_unit[0] == 1 &&
              b->chosen_unit[0] == 0 && b->rejected_unit[0] == -1,
          "KL branch layout");
    prefopt_ds_step_free(&st);
    prefopt_ds_loader_free(L);
    prefopt_ds_loader_opts bad = lo;
    bad.micro_batch = 1;
    prefopt_err_clear(&err);
    CHECK(prefopt_ds_loader_create(ds, &bad, 0, 1, &L, &err) && strstr(err.msg, "at least 2"), "KL with m=1: %s",
          err.msg);
    prefopt_dataset_close(ds);

    pack("sft.jsonl", "sft", 0, 0, PREFOPT_TRUNC_KEEP_END);
    ds = open_ds("sft");
    CHECK(prefopt_dataset_info(ds)->kind == PREFOPT_DS_SFT && prefopt_dataset_info(ds)->num_examples == 4, "sft");
    expect_example(ds, 0, (const char *const[]){"x=", "1"}, 1);
    expect_example(ds, 1, (const char *const[]){"", "plain text"}, 1);
    expect_example(ds, 2,
                   (const char *const[]){"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                                         "<|im_start|>assistant\n",
                                         "A<|im_end|>\n"},
                   1);
    expect_example(ds, 3, (const char *const[]){"\x0a\x0b", "\x0c"}, 1);
    lo = (prefopt_ds_loader_opts){.global_batch = 2, .micro_batch = 2, .drop_last = 1, .pad_multiple = 1};
    prefopt_err_clear(&err);
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
    b = &st.micro[0];
    /* plain text row 1: every token but the first is a completion token of unit 1 */
    CHECK(b->b.nunits == 2 && b->b.parent[b->b.T] == -1 && b->b.completion[b->b.T] == 0 &&
              b->b.unit[b->b.T] == -1,
          "plain text first token");
    for (int i = 1; i < 11; i++)
        CHECK(b->b.completion[b->b.T + i] == 1 && b->b.unit[b->b.T + i] == 1 && b->b.parent[b->b.T + i] == i - 1,
              "plain text token %d", i);
    prefopt_ds_step_free(&st);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
}

/* A larger generated pairs file for sampling tests: example i has prompt length 1 + i % 7. */
static void make_big(int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/big.jsonl", dir);
    if (rank == 0) {
        FILE *f = fopen(path, "w");
        for (int i = 0; i < n; i++) {
            fprintf(f, "{\"prompt_ids\": [");
            for (int j = 0; j <= i % 7; j++)
                fprintf(f, "%s%d", j ? "," : "", (i + j) % 256);
            fprintf(f, "], \"chosen_ids\": [%d], \"rejected_ids\": [%d, %d]}\n", i % 256, (i / 256) % 256, 7);
        }
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    prefopt_err err = {0};
    char out[512];
    snprintf(out, sizeof out, "%s/big.h5", dir);
    if (rank == 0) {
        prefopt_tokenizer *t = prefopt_tokenizer_byte();
        prefopt_pack_opts o = {path, out, NULL, 0, 0, "auto", 0, 0, 0, 0, 0, t, 0, NULL, 0, 1};
        prefopt_pack_stats st;
        prefopt_pack(&o, &st, &err);
        prefopt_tokenizer_free(t);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, 1);
}

/* Example ids of one step on this replica, and a checksum of all its batch contents. */
static uint64_t step_digest(const prefopt_ds_step *st, int64_t *ids, int *nids)
{
    uint64_t h = 1469598103934665603ULL;
#define MIX(x) (h = (h ^ (uint64_t)(x)) * 1099511628211ULL)
    *nids = 0;
    for (int b = 0; b < st->nmicro; b++) {
        const prefopt_batch *x = &st->micro[b].b;
        MIX(x->nrows), MIX(x->T);
        for (int i = 0; i < x->nrows * x->T; i++)
            MIX(x->tokens[i]), MIX(x->pos[i]), MIX(x->parent[i]), MIX(x->unit[i]), MIX(x->seg[i]);
        for (int k = 0; k < st->micro[b].nexamples; k++)
            ids[(*nids)++] = st->micro[b].example[k], MIX(st->micro[b].example[k]);
    }
    return h;
}

static void test_sampling(int bucket)
{
    const int N = 203, B = 8;
    prefopt_dataset *ds = open_ds("big");
    prefopt_ds_loader_opts lo = {.global_batch = B, .micro_batch = 2, .seed = 42, .shuffle = 1,
                                 .bucket_window = bucket, .drop_last = 0, .pad_multiple = 1};
    /* each replica: world rank r is replica r (dp = size) */
    prefopt_ds_loader *L, *R;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &L, &err), "%s", err.msg);
    int64_t steps = prefopt_ds_loader_steps_per_epoch(L);
    CHECK(steps == (N + B - 1) / B, "steps %ld", (long)steps);
    /* two epochs; save the cursor after step 5 of epoch 1 */
    int total = (int)(2 * steps);
    uint64_t *dig = calloc((size_t)total, sizeof *dig);
    int64_t saved[PREFOPT_DS_CURSOR_NVALUES];
    int *seen = calloc((size_t)N, sizeof(int));
    int64_t ids[64];
    int64_t first_epoch_order[2][8] = {{0}};
    for (int s = 0; s < total; s++) {
        if (s == steps + 5) {
            prefopt_ds_cursor c;
            prefopt_ds_loader_get_cursor(L, &c);
            prefopt_ds_cursor_to_values(&c, saved);
        }
        prefopt_ds_step st;
        CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
        int n = 0;
        dig[s] = step_digest(&st, ids, &n);
        CHECK(st.epoch == s / steps && st.step == s % steps, "epoch/step %ld/%ld at %d", (long)st.epoch,
              (long)st.step, s);
        /* gather every replica's examples of this step */
        int counts[64], displs[64], all_n = 0;
        MPI_Allgather(&n, 1, MPI_INT, counts, 1, MPI_INT, MPI_COMM_WORLD);
        for (int r = 0; r < size; r++)
            displs[r] = all_n, all_n += counts[r];
        int64_t all[64];
        MPI_Allgatherv(ids, n, MPI_INT64_T, all, counts, displs, MPI_INT64_T, MPI_COMM_WORLD);
        CHECK(all_n == st.global_examples, "step %d: %d examples, global %d", s, all_n, st.global_examples);
        if (n > 0)
            CHECK(prefopt_ds_last_io_mode(ds) & H5D_MPIO_CHUNK_COLLECTIVE, "step %d: token read was not collective "
                  "(mode %d)", s, prefopt_ds_last_io_mode(ds));
        if (s < steps)
            for (int k = 0; k < all_n; k++)
                seen[all[k]]++;
        if (s == 0 || s == steps)
            for (int k = 0; k < all_n && k < 8; k++)
                first_epoch_order[s ? 1 : 0][k] = all[k];
        /* bucketing groups similar lengths: in a full batch, lengths span a narrow range */
        prefopt_ds_step_free(&st);
    }
    for (int i = 0; i < N; i++)
        CHECK(seen[i] == 1, "epoch 0: example %d seen %d times", i, seen[i]);
    CHECK(memcmp(first_epoch_order[0], first_epoch_order[1], sizeof first_epoch_order[0]),
          "epochs 0 and 1 start with the same examples: no reshuffle");
    /* resume: a fresh loader from the saved integers continues with identical batches */
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &R, &err), "%s", err.msg);
    prefopt_ds_cursor c;
    prefopt_ds_cursor_from_values(saved, &c);
    CHECK(!prefopt_ds_loader_set_cursor(R, &c, &err), "%s", err.msg);
    for (int s = (int)steps + 5; s < total; s++) {
        prefopt_ds_step st;
        CHECK(!prefopt_ds_loader_next(R, &st, &err), "%s", err.msg);
        int n;
        CHECK(step_digest(&st, ids, &n) == dig[s], "resumed step %d differs", s);
        prefopt_ds_step_free(&st);
    }
    /* a cursor from another batch size is refused */
    prefopt_ds_cursor other = c;
    other.global_batch = 16;
    prefopt_err_clear(&err);
    CHECK(prefopt_ds_loader_set_cursor(R, &other, &err) && strstr(err.msg, "global batch"), "%s", err.msg);
    /* a cursor of the order before issue 17 (checkpoints store 0 there) is refused: it would deal other batches */
    other = c;
    other.order = 0;
    prefopt_err_clear(&err);
    CHECK(prefopt_ds_loader_set_cursor(R, &other, &err) && strstr(err.msg, "sample order version 0"), "%s", err.msg);
    prefopt_ds_loader_free(R);
    prefopt_ds_loader_free(L);
    free(dig), free(seen);
    prefopt_dataset_close(ds);
}

static void test_bucketing_groups_lengths(void)
{
    prefopt_dataset *ds = open_ds("big");
    prefopt_ds_loader_opts lo = {.global_batch = 8, .micro_batch = 8, .seed = 7, .shuffle = 1, .bucket_window = 10,
                                 .drop_last = 1, .pad_multiple = 1};
    prefopt_ds_loader *L;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    long spread = 0;
    for (int s = 0; s < 10; s++) {
        prefopt_ds_step st;
        CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
        int64_t lo_len = 1 << 30, hi_len = 0, lens[3 * 8];
        CHECK(!prefopt_dataset_lengths(ds, st.micro[0].example, st.micro[0].nexamples, lens, &err), "%s", err.msg);
        for (int k = 0; k < st.micro[0].nexamples; k++) {
            int64_t len = 0;
            for (int f = 0; f < 3; f++)
                len += lens[3 * k + f];
            lo_len = len < lo_len ? len : lo_len, hi_len = len > hi_len ? len : hi_len;
        }
        spread += (long)(hi_len - lo_len);
        prefopt_ds_step_free(&st);
    }
    /* 80 examples, lengths 4..10 in equal shares: sorted batches span at most 1 length, random ones about 6 */
    CHECK(spread <= 10, "bucketed batches span %ld length units over 10 batches", spread);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
}

/* A token id beyond the vocabulary, written with the HDF5 API: caught by the open scan, and by the batch read when
 * the scan is skipped; either way every rank fails with the same message. */
static void test_bad_token(void)
{
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s/pairs.h5", dir);
    snprintf(dst, sizeof dst, "%s/badtok.h5", dir);
    if (rank == 0) {
        FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
        char buf[4096];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, a)) > 0)
            fwrite(buf, 1, k, b);
        fclose(a), fclose(b);
        hid_t f = H5Fopen(dst, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "chosen/tokens", H5P_DEFAULT);
        hid_t fs = H5Dget_space(d);
        hsize_t off = 1, cnt = 1;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
        hid_t ms = H5Screate_simple(1, &cnt, NULL);
        int32_t v = 999;
        CHECK(H5Dwrite(d, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, &v) >= 0, "writing the bad token");
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    prefopt_dataset *ds = NULL;
    prefopt_err err = {0};
    prefopt_ds_expect ex = {PREFOPT_BYTE_VOCAB, "byte", 0};
    CHECK(prefopt_dataset_open(dst, MPI_COMM_WORLD, &ex, &ds, &err) &&
              strstr(err.msg, "'chosen/tokens': token id 999 at position 1 (example 0)"),
          "open scan: %s", err.msg);
    ex.skip_token_scan = 1;
    prefopt_err_clear(&err);
    CHECK(!prefopt_dataset_open(dst, MPI_COMM_WORLD, &ex, &ds, &err), "%s", err.msg);
    /* replica r of size reads example r only: the bad example 0 is on rank 0, rank 1 must fail with it too */
    prefopt_ds_loader_opts lo = {.global_batch = size, .micro_batch = 1, .drop_last = 1, .pad_multiple = 1};
    prefopt_ds_loader *L;
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &L, &err), "%s", err.msg);
    prefopt_ds_step st;
    CHECK(prefopt_ds_loader_next(L, &st, &err) && strstr(err.msg, "token id 999 at position 1 (example 0)"),
          "batch read: %s", err.msg);
    /* the same read by a prefetch thread: the replica holding example 0 gets the message, which the caller then
     * agrees on (train does so over the world), so every rank ends with it */
    prefopt_ds_loader *F;
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &F, &err), "%s", err.msg);
    prefopt_ds_prefetch *pf = NULL;
    prefopt_err_clear(&err);
    CHECK(!prefopt_ds_prefetch_start(ds, F, &pf, &err), "%s", err.msg);
    prefopt_ds_cursor after;
    int bad = pf && prefopt_ds_prefetch_next(pf, &st, &after, &err);
    CHECK(bad == (rank == 0), "prefetch error on rank %d: %d (%s)", rank, bad, err.msg);
    if (!bad)
        prefopt_ds_step_free(&st);
    CHECK(prefopt_agree(MPI_COMM_WORLD, &err) && strstr(err.msg, "token id 999 at position 1 (example 0)"),
          "prefetch: %s", err.msg);
    prefopt_ds_prefetch_stop(pf);
    prefopt_ds_loader_free(F);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
}


/* The prefetch thread (a local handle, a loader one step ahead) deals the steps loader_next deals, across an epoch
 * boundary and with bucketing, with the cursor after each; a bad token it meets comes back as the step's error. */
static void test_prefetch(int bucket)
{
    prefopt_dataset *ds = open_ds("big");
    prefopt_ds_loader_opts lo = {.global_batch = 8, .micro_batch = 3, .seed = 5, .shuffle = 1,
                                 .bucket_window = bucket, .drop_last = 0, .pad_multiple = 1};
    prefopt_ds_loader *L, *M;
    prefopt_err err = {0};
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &L, &err), "%s", err.msg);
    CHECK(!prefopt_ds_loader_create(ds, &lo, rank, size, &M, &err), "%s", err.msg);
    prefopt_ds_prefetch *pf = NULL;
    CHECK(!prefopt_ds_prefetch_start(ds, M, &pf, &err), "%s", err.msg);
    const int64_t steps = prefopt_ds_loader_steps_per_epoch(L);
    int64_t ids[64];
    for (int64_t s = 0; s < steps + 4 && pf; s++) {
        prefopt_ds_step a, b;
        prefopt_ds_cursor ca, cb;
        int n;
        CHECK(!prefopt_ds_prefetch_next(pf, &b, &cb, &err), "%s", err.msg);
        /* the thread now reads the next step: HDF5 is not thread-safe, so wait before this thread reads */
        prefopt_ds_prefetch_wait(pf);
        CHECK(!prefopt_ds_loader_next(L, &a, &err), "%s", err.msg);
        prefopt_ds_loader_get_cursor(L, &ca);
        CHECK(step_digest(&a, ids, &n) == step_digest(&b, ids, &n) && a.epoch == b.epoch && a.step == b.step,
              "prefetched step %ld differs", (long)s);
        CHECK(!memcmp(&ca, &cb, sizeof ca), "cursor after step %ld differs", (long)s);
        prefopt_ds_step_free(&a), prefopt_ds_step_free(&b);
    }
    prefopt_ds_prefetch_stop(pf);
    prefopt_ds_loader_free(L), prefopt_ds_loader_free(M);
    prefopt_dataset_close(ds);
}

static void test_ref(void)
{
    char p[512];
    snprintf(p, sizeof p, "%s/pairs.h5", dir);
    prefopt_dataset *ds = open_ds("pairs");
    int64_t N = prefopt_dataset_info(ds)->num_examples;
    prefopt_dataset_close(ds);
    /* ranks store interleaved examples: example i on rank i % size, value -(i + 0.25) and -(10 i + 0.5) */
    int64_t idx[16];
    double c[16], r[16];
    int n = 0;
    for (int64_t i = rank; i < N; i += size)
        idx[n] = i, c[n] = -(double)i - 0.25, r[n] = -10.0 * (double)i - 0.5, n++;
    prefopt_err err = {0};
    CHECK(!prefopt_dataset_store_ref(p, MPI_COMM_WORLD, n, idx, (const double *const[]){c, r}, "test-model", &err),
          "%s", err.msg);
    /* storing again replaces the group */
    for (int k = 0; k < n; k++)
        c[k] -= 1.0;
    CHECK(!prefopt_dataset_store_ref(p, MPI_COMM_WORLD, n, idx, (const double *const[]){c, r}, "test-model", &err),
          "%s", err.msg);
    ds = open_ds("pairs");
    CHECK(prefopt_dataset_info(ds)->has_ref && !strcmp(prefopt_dataset_info(ds)->ref_model, "test-model"), "ref");
    prefopt_ds_loader_opts lo = {.global_batch = 5, .micro_batch = 5, .drop_last = 1, .pad_multiple = 1};
    prefopt_ds_loader *L;
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    prefopt_ds_step st;
    CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
    const prefopt_ds_batch *b = &st.micro[0];
    for (int k = 0; k < 5 && b->ref_logps; k++)
        CHECK(b->ref_logps[2 * k] == -(double)k - 1.25 && b->ref_logps[2 * k + 1] == -10.0 * k - 0.5,
              "ref of example %d: %g %g", k, b->ref_logps[2 * k], b->ref_logps[2 * k + 1]);
    CHECK(b->ref_logps != NULL, "no ref in batch");
    prefopt_ds_step_free(&st);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
    /* an incomplete cover is refused on every rank */
    prefopt_err_clear(&err);
    CHECK(prefopt_dataset_store_ref(p, MPI_COMM_WORLD, n > 0 ? n - 1 : 0, idx, (const double *const[]){c, r}, NULL,
                                    &err) &&
              strstr(err.msg, "reference log-probs given"),
          "%s", err.msg);
}

/* The builder alone: a pair with an empty prompt has nothing to predict its branches' first tokens from. */
static void test_empty_prompt_pair(void)
{
    int32_t p[1] = {0}, c[2] = {1, 2}, r[1] = {3};
    int64_t sp[2] = {0, 0}, sc[2] = {0, 2}, sr[2] = {0, 1}, ex = 7;
    int32_t *tok[3] = {p, c, r};
    int64_t *start[3] = {sp, sc, sr};
    double ref[2] = {-1.5, -2.5};
    prefopt_ds_batch b;
    prefopt_ds_batch_build(PREFOPT_DS_PAIRS, 1, &ex, tok, start, NULL, ref, 0, 99, 4, &b);
    const int32_t wt[4] = {1, 2, 3, 99}, wpos[4] = {0, 1, 0, 0}, wpar[4] = {-1, 0, -1, -1}, wu[4] = {-1, 0, -1, -1};
    const int8_t ws[4] = {1, 1, 2, -1};
    const uint8_t wc[4] = {0, 1, 0, 0};
    CHECK(b.b.T == 4 && b.b.nrows == 1 && b.b.nunits == 2 && b.example[0] == 7, "shape T %d", b.b.T);
    for (int i = 0; i < 4 && b.b.T == 4; i++)
        CHECK(b.b.tokens[i] == wt[i] && b.b.pos[i] == wpos[i] && b.b.parent[i] == wpar[i] && b.b.unit[i] == wu[i] &&
                  b.b.seg[i] == ws[i] && b.b.completion[i] == wc[i],
              "cell %d", i);
    CHECK(b.ref_logps && b.ref_logps[0] == -1.5 && b.ref_logps[1] == -2.5, "ref");
    CHECK(b.prompt_tokens == 0 && b.completion_tokens == 3 && b.pad_tokens == 1, "token counts");
    prefopt_ds_batch_free(&b);
}

/* sft with a loss mask (pack --assistant-only-loss through a template with {% generation %} blocks): the reader
 * hands the mask to the builder, only marked tokens are completion tokens; a mask value other than 0/1 is refused
 * on every rank, by dataset, position and example. */
static void test_sft_mask(void)
{
    char in[512], out[512], tf[512];
    snprintf(in, sizeof in, "%s/aol.jsonl", dir);
    snprintf(out, sizeof out, "%s/aol.h5", dir);
    snprintf(tf, sizeof tf, "%s/tests/data/chat_templates/chatml_generation.jinja", getenv("PREFOPT_SOURCE_DIR"));
    prefopt_err err = {0};
    if (rank == 0) {
        FILE *f = fopen(in, "w");
        fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"u1\"}, {\"role\": \"assistant\", \"content\": "
              "\"A\"}, {\"role\": \"user\", \"content\": \"u2\"}, {\"role\": \"assistant\", \"content\": \"BC\"}]}\n"
              "{\"text\": \"xy\"}\n",
              f);
        fclose(f);
        prefopt_tokenizer *t = prefopt_tokenizer_byte();
        prefopt_chat_template *ct = NULL;
        if (prefopt_chat_template_load_file(tf, NULL, &ct, &err) == 0) {
            prefopt_pack_opts o = {in, out, NULL, 0, 0, "auto", 0, 0, PREFOPT_TRUNC_KEEP_END, 1, 0, t, 0, ct, 1, 1};
            prefopt_pack_stats st;
            prefopt_pack(&o, &st, &err);
        }
        prefopt_chat_template_free(ct);
        prefopt_tokenizer_free(t);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, 1);
    prefopt_dataset *ds = open_ds("aol");
    CHECK(prefopt_dataset_info(ds)->has_mask, "no mask read");
    /* the reads below go through a reopened file, as train's are (each replica's grid; here each rank alone): the
     * mask's handle must come back with the tokens' */
    CHECK(!prefopt_dataset_set_comm(ds, MPI_COMM_SELF, &err), "set_comm: %s", err.msg);
    prefopt_ds_loader_opts lo = {.global_batch = 2, .micro_batch = 2, .drop_last = 1, .pad_multiple = 1};
    prefopt_ds_loader *L;
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    prefopt_ds_step st;
    CHECK(!prefopt_ds_loader_next(L, &st, &err), "%s", err.msg);
    const prefopt_ds_batch *b = &st.micro[0];
    for (int r = 0; r < 2; r++) {
        int row = b->example[r] == 0 ? r : -1;
        if (row < 0)
            continue;
        /* the byte-level text of the conversation; trained: "A<|im_end|>" and "BC<|im_end|>" (bytes) */
        char text[256] = {0}, want[256] = {0};
        int n = 0;
        for (int i = 0; i < b->b.T && b->b.seg[(size_t)row * b->b.T + i] >= 0; i++, n++) {
            text[n] = (char)b->b.tokens[(size_t)row * b->b.T + i];
            want[n] = b->b.completion[(size_t)row * b->b.T + i] ? (char)text[n] : '.';
        }
        const char *w = "<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
                        "<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\nBC<|im_end|>\n";
        CHECK(!strcmp(text, w), "conversation bytes: %s", text);
        int a = (int)(strstr(w, "A<|im_end|>") - w), c = (int)(strstr(w, "BC<|im_end|>") - w), ok = 1;
        for (int i = 0; i < n; i++) {
            int in_a = i >= a && i < a + 11, in_c = i >= c && i < c + 12;
            ok &= (want[i] != '.') == (in_a || in_c);
        }
        CHECK(ok, "trained bytes: %s", want);
    }
    for (int r = 0; r < 2; r++) /* the text line: every token but the first is trained */
        if (b->example[r] == 1)
            CHECK(b->b.completion[(size_t)r * b->b.T] == 0 && b->b.completion[(size_t)r * b->b.T + 1] == 1 &&
                      b->b.completion[(size_t)r * b->b.T + 2] == 1,
                  "text line mask");
    prefopt_ds_step_free(&st);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
    MPI_Barrier(MPI_COMM_WORLD); /* the reads above were each rank's own (MPI_COMM_SELF): all done before the edit */
    if (rank == 0) { /* a mask value of 2 */
        hid_t f = H5Fopen(out, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "completion/mask", H5P_DEFAULT);
        hid_t fs = H5Dget_space(d);
        hsize_t off = 3, cnt = 1;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL);
        hid_t ms = H5Screate_simple(1, &cnt, NULL);
        int32_t v = 2;
        CHECK(H5Dwrite(d, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, &v) >= 0, "writing the bad mask");
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    ds = open_ds("aol");
    lo.global_batch = lo.micro_batch = 1;
    prefopt_err_clear(&err);
    CHECK(!prefopt_ds_loader_create(ds, &lo, 0, 1, &L, &err), "%s", err.msg);
    int seen = 0;
    for (int s = 0; s < 2 && !seen; s++) {
        int bad = prefopt_ds_loader_next(L, &st, &err);
        if (bad)
            seen = strstr(err.msg, "'completion/mask': value 2 at position 3 (example 0), expected 0 or 1") != NULL;
        else
            prefopt_ds_step_free(&st);
    }
    CHECK(seen, "bad mask: %s", err.msg);
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (!getenv("PREFOPT_SOURCE_DIR")) {
        fprintf(stderr, "PREFOPT_SOURCE_DIR is not set\n");
        return 1;
    }
    if (rank == 0) {
        snprintf(dir, sizeof dir, "/tmp/prefopt_test_dataset.XXXXXX");
        if (!mkdtemp(dir))
            return 1;
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    test_empty_prompt_pair();
    test_pairs_roundtrip();
    test_unpaired_and_sft();
    make_big(203);
    test_sampling(0);
    test_sampling(3);
    test_bucketing_groups_lengths();
    test_bad_token();
    test_prefetch(0);
    test_prefetch(3);
    test_ref();
    test_sft_mask();
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
        printf("%s: %d failures\n", all ? "FAIL" : "PASS", all);
    }
    MPI_Finalize();
    return all ? 1 : 0;
}
