/* memcheck (issue 11): the per-rank memory estimate against hand-computed values, the "does not fit" message, its
 * agreement over ranks, RLIMIT_AS detection, --memory-limit parsing and the longest packed row of a dataset.
 * Run under mpiexec -n 2. */
#define _GNU_SOURCE
#include "prefopt/memcheck.h"
#include "prefopt/pack.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int fails;
#define CHECK(c, ...)                                                                                             \
    do {                                                                                                          \
        if (!(c)) {                                                                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                  \
            fprintf(stderr, __VA_ARGS__);                                                                         \
            fputc('\n', stderr);                                                                                  \
            fails++;                                                                                              \
        }                                                                                                         \
    } while (0)

/* GPT-2, vocabulary 259, 2 layers, hidden 32, 2 heads, MLP 128, 256 positions:
 *   matrices: wte 259*32 + wpe 256*32 + 2 * (q,k,v,c_proj 4*32*32 + c_fc 128*32 + mlp c_proj 32*128) = 41056
 *   vectors:  2 * (q,k,v,c_proj biases 4*32 + ln_1, ln_2 4*32 + c_fc bias 128 + mlp c_proj bias 32) + ln_f 64 = 896 */
static prefopt_model_config tiny(void)
{
    prefopt_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = PREFOPT_ARCH_GPT2;
    c.vocab_size = 259, c.hidden_size = 32, c.num_layers = 2, c.num_heads = 2, c.num_kv_heads = 2, c.head_dim = 16;
    c.intermediate_size = 128, c.max_position = 256, c.norm_eps = 1e-5f, c.qkv_bias = 1, c.tie_word_embeddings = 1;
    c.bos_id = c.eos_id = c.pad_id = -1;
    snprintf(c.hf_model_type, sizeof c.hf_model_type, "gpt2");
    return c;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    prefopt_model_config cfg = tiny();

    /* the estimate */
    prefopt_mem_layout lay = {1, 2, 16, 0, 0, 0, 0, 0, 0, 0, 0, NULL, 0, 0};
    prefopt_mem_estimate e;
    prefopt_mem_estimate_train(&cfg, &lay, &e);
    CHECK(e.weights == 4.0 * (41056 + 896), "weights %.0f", e.weights);
    CHECK(e.grads == e.weights && e.adam == 2 * e.weights && e.reference == 0, "grads/adam/reference");
    /* per layer 2*16*(10*32 + 2*128) + 2*2*16 (lse) = 18496 floats, 2 layers, logits 2 * 2*16*259 = 16576, one
     * attention worker's scratch (backward: 8*16*16 head copies + 3*64*64 score blocks + 16) = 14352; no T x T */
    CHECK(prefopt_attention_scratch_floats(&cfg, 16, 0) == 14352, "attention scratch %zu",
          prefopt_attention_scratch_floats(&cfg, 16, 0));
    /* bf16 adds backward's operand forms (T rounded up to the block, 64; 8 pairs; 16 columns): 5*64*8 rows and
     * transposed-word forms + 3*32*16 pair forms + 2*64*32 block forms = 8192 */
    CHECK(prefopt_attention_scratch_floats(&cfg, 16, 1) == 14352 + 8192, "bf16 attention scratch %zu",
          prefopt_attention_scratch_floats(&cfg, 16, 1));
    CHECK(e.activations == 4.0 * (2 * 18496 + 16576 + 14352), "activations %.0f", e.activations);
    CHECK(fabs(e.total - 1.1 * (4 * e.weights + e.activations)) < 1e-6, "total %.1f", e.total);
    /* a logits budget of one row (16*259*4 bytes = 16.2 KiB; 20 KiB) keeps one row's logits and gradient */
    prefopt_mem_layout lay1 = {1, 2, 16, 0, 0, 20480, 0, 0, 0, 0, 0, NULL, 0, 0};
    prefopt_mem_estimate_train(&cfg, &lay1, &e);
    CHECK(e.activations == 4.0 * (2 * 18496 + 8288 + 14352), "activations, logits budget of one row %.0f",
          e.activations);
    /* a 2048-token row, 2 threads: 2 layers of 2*2048*576 + 2*2*2048 (lse), logits 2 * 2*2048*259, two workers'
     * scratch 2 * (8*2048*16 + 3*64*64 + 2048); the T x T probabilities would have been 2*2*2048*2048 per layer */
    prefopt_mem_layout lt = lay;
    lt.seq_len = 2048, lt.threads = 2;
    prefopt_mem_estimate_train(&cfg, &lt, &e);
    CHECK(e.activations == 4.0 * (2 * 2367488 + 2121728 + 552960), "activations at T 2048 %.0f", e.activations);
    prefopt_mem_layout lay2 = {2, 2, 16, 1, 1, 0, 0, 0, 0, 0, 0, NULL, 0, 0};
    prefopt_mem_estimate_train(&cfg, &lay2, &e);
    CHECK(e.weights == 4.0 * (41056 / 2 + 896) && e.reference == e.weights, "tp 2 weights %.0f", e.weights);
    /* bf16: the policy adds 2-byte copies of its matrices; the frozen reference is those copies and fp32 vectors */
    prefopt_mem_layout lay3 = {2, 2, 16, 1, 1, 0, 1, 1, 0, 0, 0, NULL, 0, 0};
    prefopt_mem_estimate e3;
    prefopt_mem_estimate_train(&cfg, &lay3, &e3);
    CHECK(e3.weights == 4.0 * (41056 / 2 + 896) + 2.0 * 41056 / 2 && e3.grads == 4.0 * (41056 / 2 + 896) &&
              e3.reference == 2.0 * 41056 / 2 + 4.0 * 896,
          "bf16 weights %.0f grads %.0f reference %.0f", e3.weights, e3.grads, e3.reference);
    /* checkpointing: inputs 2*16*32*2 / 2 + one layer 18496 / 2 (+ logits, attention scratch) */
    CHECK(e.activations == 4.0 * (1024 + 9248 + 8288 + 14352), "checkpointed activations %.0f", e.activations);
    /* the distributed optimizer over 4 replicas: a quarter of the moments, plus a shard-sized receive buffer;
     * bf16 communication: 2 + 2 bytes per gradient element */
    prefopt_mem_layout lz = {1, 2, 16, 0, 0, 0, 0, 0, 4, 1, 0, NULL, 0, 0};
    prefopt_mem_estimate_train(&cfg, &lz, &e);
    CHECK(e.adam == 2 * e.weights / 4 && e.comm == e.grads / 4, "zero 1 dp 4: adam %.0f comm %.0f", e.adam, e.comm);
    prefopt_mem_layout lb = {1, 2, 16, 0, 0, 0, 0, 0, 4, 0, 1, NULL, 0, 0};
    prefopt_mem_estimate_train(&cfg, &lb, &e);
    CHECK(e.adam == 2 * e.weights && e.comm == e.grads, "bf16 dp 4: adam %.0f comm %.0f", e.adam, e.comm);

    /* fits */
    prefopt_err err = {0};
    CHECK(prefopt_memcheck_train(&cfg, &lay, MPI_COMM_WORLD, 1e9, &e, &err) == 0 && !err.set, "fits: %s", err.msg);
    /* does not fit: the message names the limit and the options that help */
    const char *want = "memory: training needs about 1.0 MiB per rank (weights 0.2, gradients 0.2, AdamW 0.3, "
                       "reference 0.0, activations 0.3, workspace 0.1 MiB) but --memory-limit allows 0.1 MiB: use "
                       "more ranks per grid (--grid-rows/--grid-cols), --activation-checkpoint, a smaller "
                       "--micro-batch-size";
    CHECK(prefopt_memcheck_train(&cfg, &lay, MPI_COMM_WORLD, 100000, &e, &err) == 1 && !strcmp(err.msg, want),
          "message:\n  got  %s\n  want %s", err.msg, want);
    /* the process's own baseline counts (issue 17): 10 MiB of it do not fit 5 MiB, whatever the model */
    prefopt_mem_layout lay4 = lay;
    lay4.process = 10.0 * (1 << 20);
    prefopt_err_clear(&err);
    const char *want3 = "memory: training needs about 11.0 MiB per rank (weights 0.2, gradients 0.2, AdamW 0.3, "
                        "reference 0.0, activations 0.3, workspace 0.1, process 10.0 MiB) but --memory-limit allows "
                        "5.0 MiB: use more ranks per grid (--grid-rows/--grid-cols)"; /* activations are no longer the load */
    CHECK(prefopt_memcheck_train(&cfg, &lay4, MPI_COMM_WORLD, 5.0 * (1 << 20), &e, &err) == 1 &&
              !strcmp(err.msg, want3) && e.total > 10.0 * (1 << 20),
          "process baseline:\n  got  %s\n  want %s", err.msg, want3);
    CHECK(prefopt_mem_process_rss() > (1 << 20), "the process's RSS is read (%.0f bytes)", prefopt_mem_process_rss());
    /* one rank short of memory: every rank gets its message */
    prefopt_err_clear(&err);
    int r = prefopt_memcheck_train(&cfg, &lay2, MPI_COMM_WORLD, rank == 1 ? 100000 : 1e9, &e, &err);
    const char *want2 = "memory: training needs about 0.6 MiB per rank (weights 0.1, gradients 0.1, AdamW 0.2, "
                        "reference 0.1, activations 0.1, workspace 0.1 MiB) but --memory-limit allows 0.1 MiB: use "
                        "more ranks per grid (--grid-rows/--grid-cols), a smaller --micro-batch-size, precomputed "
                        "reference log-probs (prefopt eval --store-ref)";
    CHECK(r == 1 && !strcmp(err.msg, want2), "agreed message on rank %d:\n  got  %s\n  want %s", rank, err.msg, want2);

    /* RLIMIT_AS is seen, less what the process maps already */
    struct rlimit old;
    getrlimit(RLIMIT_AS, &old);
    long page = sysconf(_SC_PAGESIZE);
    unsigned long vm = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f && fscanf(f, "%lu", &vm) == 1, "statm");
    if (f)
        fclose(f);
    struct rlimit lim = {(rlim_t)vm * (rlim_t)page + (64u << 20), old.rlim_max};
    char src[64];
    if (setrlimit(RLIMIT_AS, &lim) == 0) {
        double a = prefopt_mem_available(MPI_COMM_WORLD, 0, src, sizeof src);
        CHECK(!strcmp(src, "RLIMIT_AS (ulimit -v)") && a > (48u << 20) && a <= (64u << 20), "RLIMIT_AS: %s %.0f",
              src, a);
        setrlimit(RLIMIT_AS, &old);
    }
    double a = prefopt_mem_available(MPI_COMM_WORLD, 123456, src, sizeof src);
    CHECK(a == 123456 && !strcmp(src, "--memory-limit"), "--memory-limit: %s %.0f", src, a);

    /* --memory-limit values */
    CHECK(prefopt_mem_parse("12G") == 12.0 * (1u << 30), "12G");
    CHECK(prefopt_mem_parse("1.5GiB") == 1.5 * (1u << 30), "1.5GiB");
    CHECK(prefopt_mem_parse("512m") == 512.0 * (1u << 20), "512m");
    CHECK(prefopt_mem_parse("800000K") == 800000.0 * 1024, "800000K");
    CHECK(prefopt_mem_parse("0") == 0 && prefopt_mem_parse("100") == 100, "plain bytes");
    CHECK(prefopt_mem_parse("x") < 0 && prefopt_mem_parse("5Q") < 0 && prefopt_mem_parse("-1G") < 0 &&
              prefopt_mem_parse("1GX") < 0 && prefopt_mem_parse("inf") < 0,
          "malformed values rejected");

    /* the longest packed row: prompt + chosen + rejected, rounded up to the pad multiple */
    char dir[] = "/tmp/test_memcheck.XXXXXX", in[64], out[64];
    if (rank == 0)
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    snprintf(in, sizeof in, "%s/p.jsonl", dir);
    snprintf(out, sizeof out, "%s/p.h5", dir);
    prefopt_err_clear(&err);
    if (rank == 0) {
        FILE *j = fopen(in, "w");
        fprintf(j, "{\"prompt\": \"abc\", \"chosen\": \"de\", \"rejected\": \"f\"}\n"
                   "{\"prompt\": \"a\", \"chosen\": \"0123456789\", \"rejected\": \"xyz\"}\n");
        fclose(j);
        prefopt_tokenizer *t = prefopt_tokenizer_byte();
        prefopt_pack_opts o = {0};
        o.input = in, o.output = out, o.kind = "auto", o.tok = t;
        prefopt_pack_stats st;
        CHECK(prefopt_pack(&o, &st, &err) == 0, "pack: %s", err.msg);
        prefopt_tokenizer_free(t);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    prefopt_dataset *ds = NULL;
    prefopt_err_clear(&err);
    CHECK(prefopt_dataset_open(out, MPI_COMM_WORLD, NULL, &ds, &err) == 0, "open: %s", err.msg);
    if (ds) {
        CHECK(prefopt_mem_max_row(ds, 0, 1) == 14, "max row %lld", (long long)prefopt_mem_max_row(ds, 0, 1));
        CHECK(prefopt_mem_max_row(ds, 0, 8) == 16, "max row padded %lld", (long long)prefopt_mem_max_row(ds, 0, 8));
        prefopt_dataset_close(ds);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        unlink(in), unlink(out), rmdir(dir);
    }
    int all = 0;
    MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf(all ? "test_memcheck: %d failure(s)\n" : "test_memcheck: all checks passed\n", all);
    MPI_Finalize();
    return all ? 1 : 0;
}
