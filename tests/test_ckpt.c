/* Checkpoints on 4 ranks:
 * (a) resharding: a checkpoint saved on a 2x1 grid with DP=2 (replica 0's grid writes) loads on 1x1 and on 1x2
 *     grids: weights and AdamW moments bit-identical to the saved logical tensors, state restored, and log-probs
 *     bit-identical to a model initialised directly on the loading grid (GPT-2 and Qwen2-like Llama);
 * (b) resume: 6 AdamW steps uninterrupted vs 3 steps, checkpoint, a fresh model and optimizer (other seed),
 *     load, 3 steps: bit-identical losses (2x1 grid, DP=2);
 * (c) a byte flipped inside one layer of a stacked dataset: loads, export and weights-only export fail naming
 *     exactly that tensor; model/config mismatches and a model file without moments fail with named keys;
 * (d) keep-last-N, latest and the removal of .tmp leftovers. */
#include "prefopt/checkpoint.h"
#include "prefopt/optim.h"
#include "test_model_util.h"

#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;
#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        failures++;                                                                                          \
        fprintf(stderr, "rank %d: ", prefopt_world_rank());                                                  \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
    } while (0)

static char dir[256];

static prefopt_model *make(prefopt_arch arch, const prefopt_grid *g, int grads, uint64_t seed)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(grads, 0);
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(&cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, seed);
    return m;
}

/* moment k (0: m, 1: v) of parameter i, element e of the logical tensor: grid-independent test values */
static float moment_value(int k, int i, size_t e) { return k ? 1e-3f * (float)(1 + (e * 7 + (size_t)i) % 13) : (float)sin(0.37 * (double)e + i); }

static void fill_moments(prefopt_model *m, float *buf, int k)
{
    float *base = prefopt_model_param_data(m, NULL);
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        prefopt_dmat d = *p->value;
        d.data = buf + (p->value->data - base);
        size_t n = (size_t)d.m * d.n;
        float *full = malloc(sizeof(float) * n);
        for (size_t e = 0; e < n; e++)
            full[e] = moment_value(k, i, e);
        prefopt_dmat_scatter(&d, full);
        free(full);
    }
}

static void check_moments(prefopt_model *m, float *buf, int k, const char *what)
{
    float *base = prefopt_model_param_data(m, NULL);
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        prefopt_dmat d = *p->value;
        d.data = buf + (p->value->data - base);
        size_t n = (size_t)d.m * d.n;
        float *full = malloc(sizeof(float) * n);
        prefopt_dmat_gather(&d, full);
        for (size_t e = 0; e < n; e++)
            if (full[e] != moment_value(k, i, e)) {
                FAIL("%s: moment %c of %s element %zu: %g expected %g", what, k ? 'v' : 'm', p->name, e, full[e],
                     moment_value(k, i, e));
                break;
            }
        free(full);
    }
}

static void logprobs(prefopt_model *m, tm_stats *s)
{
    test_batch tb;
    tb_standard(&tb);
    prefopt_batch b = tb_view(&tb);
    memset(s, 0, sizeof *s); /* only the batch's units are written */
    prefopt_unit_stats us = tm_stats_view(s);
    prefopt_err err = {0};
    if (prefopt_model_forward(m, &b, &us, &err))
        FAIL("forward: %s", err.msg);
}

static prefopt_train_state make_state(int rank)
{
    prefopt_train_state st;
    memset(&st, 0, sizeof st);
    st.step = 3;
    st.sched_step = 3;
    st.epoch = 1;
    st.tokens_seen = 123456789012LL;
    for (int k = 0; k < 8; k++)
        st.cursor[k] = 5 + k;
    for (int k = 0; k < 4; k++)
        st.rng[k] = 0x1234567890abcdefULL ^ (uint64_t)(rank * 16 + k);
    st.lr = 2.5e-4;
    st.train_config = "[train]\nbeta = 0.1\nloss = sigmoid\n";
    return st;
}

static void test_reshard(prefopt_arch arch)
{
    const char *an = arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama";
    /* Llama: one layer per collective transfer (the bounded-memory path large models take) */
    if (arch == PREFOPT_ARCH_LLAMA)
        setenv("PREFOPT_TEST_CKPT_ROUND_BYTES", "1", 1);
    else
        unsetenv("PREFOPT_TEST_CKPT_ROUND_BYTES");
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, 2, 1, 2, &err))
        MPI_Abort(MPI_COMM_WORLD, 1);
    prefopt_model *m = make(arch, &g, 0, 777);
    size_t n;
    prefopt_model_param_data(m, &n);
    float *mb = calloc(n, sizeof(float)), *vb = calloc(n, sizeof(float));
    fill_moments(m, mb, 0);
    fill_moments(m, vb, 1);
    size_t total = tm_total_elems(m);
    float *saved = malloc(sizeof(float) * total);
    tm_gather_all(m, 0, saved);
    tm_stats ref_2x1;
    logprobs(m, &ref_2x1);
    prefopt_train_state st = make_state(g.world_rank);
    char sub[300], path[512];
    snprintf(sub, sizeof sub, "%s/reshard-%s", dir, an);
    prefopt_ckpt_opts o = {.dir = sub, .keep_last = 2, .tok = NULL};
    if (prefopt_ckpt_save(&o, m, mb, vb, &st, path, sizeof path, &err))
        FAIL("%s: save: %s", an, err.msg);
    prefopt_model_free(m);
    prefopt_grid_free(&g);
    free(mb);
    free(vb);

    /* rank 0 and rank 3: 1x1 grids each; ranks 1 and 2: one 1x2 grid */
    int r = prefopt_world_rank(), color = r == 0 ? 0 : r == 3 ? 2 : 1;
    MPI_Comm c;
    MPI_Comm_split(MPI_COMM_WORLD, color, r, &c);
    int np = color == 1 ? 2 : 1;
    if (prefopt_grid_init(&g, c, 1, np, 1, &err))
        MPI_Abort(MPI_COMM_WORLD, 1);
    char what[64];
    snprintf(what, sizeof what, "%s on 1x%d", an, np);
    prefopt_model *l = make(arch, &g, 0, 1); /* other weights: the load must overwrite every one */
    prefopt_model_param_data(l, &n);
    mb = calloc(n, sizeof(float));
    vb = calloc(n, sizeof(float));
    prefopt_train_state got;
    memset(&got, 0, sizeof got);
    if (prefopt_ckpt_load(path, l, mb, vb, &got, &err))
        FAIL("%s: load: %s", what, err.msg);
    float *loaded = malloc(sizeof(float) * total);
    tm_gather_all(l, 0, loaded);
    if (memcmp(saved, loaded, sizeof(float) * total))
        FAIL("%s: loaded weights differ from the saved ones", what);
    check_moments(l, mb, 0, what);
    check_moments(l, vb, 1, what);
    prefopt_train_state want = make_state(0); /* another world size: every rank gets rank 0's generator */
    if (got.step != want.step || got.sched_step != want.sched_step || got.epoch != want.epoch ||
        got.tokens_seen != want.tokens_seen || memcmp(got.cursor, want.cursor, sizeof want.cursor) ||
        got.lr != want.lr || memcmp(got.rng, want.rng, sizeof want.rng))
        FAIL("%s: training state not restored", what);
    if (!got.train_config || strcmp(got.train_config, want.train_config))
        FAIL("%s: train_config not restored: %s", what, got.train_config ? got.train_config : "(null)");
    free(got.train_config);
    tm_stats a, b;
    logprobs(l, &a);
    prefopt_model *fresh = make(arch, &g, 0, 777);
    logprobs(fresh, &b);
    if (memcmp(a.c, b.c, sizeof a.c) || memcmp(a.a, b.a, sizeof a.a))
        FAIL("%s: log-probs of the loaded model differ from a model initialised on this grid", what);
    for (int u = 0; u < 5; u++)
        if (fabs(a.c[u] - ref_2x1.c[u]) > 1e-5 * (1 + fabs(ref_2x1.c[u])))
            FAIL("%s: unit %d log-prob %.9g vs %.9g on the saving 2x1 grid", what, u, a.c[u], ref_2x1.c[u]);
    prefopt_model_free(fresh);
    prefopt_model_free(l);
    prefopt_grid_free(&g);
    MPI_Comm_free(&c);
    free(mb);
    free(vb);
    free(saved);
    free(loaded);
}

/* ---- (b) resume ---- */

static prefopt_param_range *ranges_of(prefopt_model *m, int *nr)
{
    float *base = prefopt_model_param_data(m, NULL);
    int np = prefopt_model_param_count(m);
    prefopt_param_range *r = calloc((size_t)np, sizeof *r);
    for (int i = 0; i < np; i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        r[i].offset = (size_t)(p->value->data - base);
        r[i].count = prefopt_dmat_local_size(p->value);
        r[i].weight_decay = p->weight_decay;
        r[i].in_norm = !p->value->rep_rows || p->value->grid->myrow == 0;
    }
    *nr = np;
    return r;
}

static void steps(prefopt_model *m, prefopt_adamw *opt, int from, int to, double *losses)
{
    test_batch tb;
    tb_standard(&tb);
    prefopt_batch b = tb_view(&tb);
    float *w = prefopt_model_param_data(m, NULL), *gr = prefopt_model_grad_data(m, NULL);
    for (int s = from; s < to; s++) {
        tm_stats st;
        prefopt_unit_stats us = tm_stats_view(&st);
        prefopt_err err = {0};
        prefopt_model_forward(m, &b, &us, &err);
        float dc[64], da[64];
        losses[s] = tm_loss(&tb, &st, dc, da);
        prefopt_model_zero_grad(m);
        prefopt_model_backward(m, dc, da);
        prefopt_model_allreduce_grads(m);
        prefopt_adamw_step(opt, w, gr, 1e-2, 0.5);
    }
}

static void test_resume(prefopt_arch arch)
{
    prefopt_err err = {0};
    if (arch == PREFOPT_ARCH_LLAMA)
        setenv("PREFOPT_TEST_CKPT_ROUND_BYTES", "1", 1);
    else
        unsetenv("PREFOPT_TEST_CKPT_ROUND_BYTES");
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, 2, 1, 2, &err))
        MPI_Abort(MPI_COMM_WORLD, 1);
    prefopt_adamw_config ac = {0.9, 0.999, 1e-8, 0.01};
    double a[6], b[6];
    int nr;
    size_t n;

    prefopt_model *m = make(arch, &g, 1, 4242);
    prefopt_model_param_data(m, &n);
    prefopt_param_range *rg = ranges_of(m, &nr);
    prefopt_adamw opt;
    prefopt_adamw_init(&opt, &ac, n, rg, nr, &err);
    steps(m, &opt, 0, 6, a);
    prefopt_adamw_free(&opt);
    prefopt_model_free(m);
    free(rg);

    char sub[300], path[512];
    snprintf(sub, sizeof sub, "%s/resume-%d", dir, (int)arch);
    m = make(arch, &g, 1, 4242);
    rg = ranges_of(m, &nr);
    prefopt_adamw_init(&opt, &ac, n, rg, nr, &err);
    steps(m, &opt, 0, 3, b);
    prefopt_train_state st = make_state(g.world_rank);
    st.step = opt.step;
    prefopt_ckpt_opts o = {.dir = sub, .keep_last = 1, .tok = NULL};
    if (prefopt_ckpt_save(&o, m, opt.m, opt.v, &st, path, sizeof path, &err))
        FAIL("resume: save: %s", err.msg);
    prefopt_adamw_free(&opt);
    prefopt_model_free(m);
    free(rg);

    m = make(arch, &g, 1, 99); /* different weights and zero moments until the load */
    rg = ranges_of(m, &nr);
    prefopt_adamw_init(&opt, &ac, n, rg, nr, &err);
    char latest[512];
    if (prefopt_ckpt_find_latest(sub, latest, sizeof latest) || strcmp(latest, path))
        FAIL("resume: latest is not %s", path);
    prefopt_train_state got;
    memset(&got, 0, sizeof got);
    if (prefopt_ckpt_load(latest, m, opt.m, opt.v, &got, &err))
        FAIL("resume: load: %s", err.msg);
    if (memcmp(got.rng, st.rng, sizeof st.rng))
        FAIL("resume: this rank's rng state not restored on the same world size");
    free(got.train_config);
    opt.step = (long)got.step;
    steps(m, &opt, 3, 6, b);
    for (int s = 0; s < 6; s++)
        if (memcmp(&a[s], &b[s], sizeof a[s]))
            FAIL("resume (%s): step %d loss %.17g interrupted vs %.17g uninterrupted", arch ? "llama" : "gpt2", s, b[s],
                 a[s]);
    if (!(a[5] < a[0]))
        FAIL("resume: the loss did not go down (%g -> %g): the steps did nothing", a[0], a[5]);
    prefopt_adamw_free(&opt);
    prefopt_model_free(m);
    free(rg);
    prefopt_grid_free(&g);
}

/* ---- (c) corruption and mismatches ---- */

static void flip_byte(const char *path, const char *dset, size_t byte)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    if (off == HADDR_UNDEF) {
        FAIL("no offset for %s", dset);
        return;
    }
    int fd = open(path, O_RDWR);
    unsigned char c;
    pread(fd, &c, 1, (off_t)(off + byte));
    c ^= 0x10;
    pwrite(fd, &c, 1, (off_t)(off + byte));
    close(fd);
}

static void expect(const prefopt_err *e, int rc, const char *want, const char *what)
{
    if (!rc || !e->set || strcmp(e->msg, want))
        FAIL("%s: expected error '%s', got rc %d '%s'", what, want, rc, e->set ? e->msg : "");
}

static void test_corrupt(void)
{
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, 2, 1, 2, &err))
        MPI_Abort(MPI_COMM_WORLD, 1);
    prefopt_model *m = make(PREFOPT_ARCH_GPT2, &g, 0, 5);
    size_t n;
    prefopt_model_param_data(m, &n);
    float *mb = calloc(n, sizeof(float)), *vb = calloc(n, sizeof(float));
    prefopt_train_state st = make_state(g.world_rank);
    char sub[300], path[512], bad[600], want[900], mf[600];
    snprintf(sub, sizeof sub, "%s/corrupt", dir);
    prefopt_ckpt_opts o = {.dir = sub, .keep_last = 2, .tok = NULL};
    if (prefopt_ckpt_save(&o, m, mb, vb, &st, path, sizeof path, &err))
        FAIL("corrupt: save: %s", err.msg);
    snprintf(mf, sizeof mf, "%s/model.h5", sub);
    if (prefopt_model_file_save(m, mf, NULL, &err))
        FAIL("model file save: %s", err.msg);
    /* the clean files load */
    if (prefopt_model_file_load(m, path, &err) || prefopt_model_file_load(m, mf, &err))
        FAIL("clean load: %s", err.msg);
    snprintf(bad, sizeof bad, "%s/bad.h5", sub);
    if (g.world_rank == 0) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, bad);
        if (system(cmd))
            FAIL("cp");
        /* layer 1 of model/h.mlp.c_fc.weight [2][64][16]: element 100 of that layer */
        flip_byte(bad, "model/h.mlp.c_fc.weight", (64 * 16 + 100) * 4 + 2);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    snprintf(want, sizeof want, "checkpoint %s: tensor 'h.1.mlp.c_fc.weight' is corrupt (checksum mismatch)", bad);
    prefopt_err e = {0};
    expect(&e, prefopt_ckpt_load(bad, m, mb, vb, NULL, &e), want, "checkpoint load");
    prefopt_err_clear(&e);
    expect(&e, prefopt_model_file_load(m, bad, &e), want, "model file load");
    if (g.world_rank == 0) {
        char out[700];
        snprintf(out, sizeof out, "%s/hf-out", sub);
        prefopt_err_clear(&e);
        expect(&e, prefopt_hf_export(bad, out, &e), want, "hf export");
        snprintf(out, sizeof out, "%s/w.h5", sub);
        prefopt_err_clear(&e);
        expect(&e, prefopt_model_file_export_weights(bad, out, &e), want, "weights export");
        if (access(out, F_OK) == 0)
            FAIL("weights export of a corrupt checkpoint left %s", out);
        /* the weights-only export of the clean checkpoint has no optimizer state and loads */
        prefopt_err_clear(&e);
        if (prefopt_model_file_export_weights(path, out, &e))
            FAIL("weights export: %s", e.msg);
        hid_t f = H5Fopen(out, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0 || H5Lexists(f, "optim", H5P_DEFAULT) != 0 || H5Lexists(f, "model", H5P_DEFAULT) != 1)
            FAIL("weights export: optim present or model missing");
        if (f >= 0)
            H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    {
        char out[700];
        snprintf(out, sizeof out, "%s/w.h5", sub);
        prefopt_err_clear(&e);
        if (prefopt_model_file_load(m, out, &e))
            FAIL("load of the weights export: %s", e.msg);
    }
    /* a model file has no moments */
    prefopt_err_clear(&e);
    snprintf(want, sizeof want, "%s: group 'optim/m' missing (a model file has no optimizer state)", mf);
    expect(&e, prefopt_ckpt_load(mf, m, mb, vb, NULL, &e), want, "moments from a model file");
    /* another config */
    prefopt_model_config c2;
    tm_config(&c2, PREFOPT_ARCH_GPT2);
    c2.num_layers = 3;
    prefopt_model_options mo = tm_options(0, 0);
    prefopt_model *m3 = prefopt_model_create(&c2, &g, &mo, &e);
    prefopt_err_clear(&e);
    snprintf(want, sizeof want, "%s: config 'num_layers' is 2 in the file, 3 in the model", path);
    expect(&e, prefopt_model_file_load(m3, path, &e), want, "config mismatch");
    prefopt_model_free(m3);
    /* not a file at all */
    prefopt_err_clear(&e);
    snprintf(want, sizeof want, "%s/none.h5: cannot open as HDF5 (missing, truncated or not a prefopt file)", sub);
    char none[600];
    snprintf(none, sizeof none, "%s/none.h5", sub);
    expect(&e, prefopt_model_file_load(m, none, &e), want, "missing file");
    prefopt_model_free(m);
    prefopt_grid_free(&g);
    free(mb);
    free(vb);
}

/* ---- (d) keep-last-N, latest, leftovers ---- */

static void test_rotation(void)
{
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, 1, 2, 2, &err))
        MPI_Abort(MPI_COMM_WORLD, 1);
    prefopt_model *m = make(PREFOPT_ARCH_LLAMA, &g, 0, 8);
    char sub[300], p[600];
    snprintf(sub, sizeof sub, "%s/rot", dir);
    prefopt_ckpt_opts o = {.dir = sub, .keep_last = 2, .tok = NULL};
    for (int s = 10; s <= 40; s += 10) {
        if (s == 40 && g.world_rank == 0) { /* a leftover of a writer killed at step 35 */
            snprintf(p, sizeof p, "%s/step-00000035.h5.tmp", sub);
            FILE *f = fopen(p, "w");
            fclose(f);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        prefopt_train_state st = make_state(g.world_rank);
        st.step = s;
        st.train_config = NULL;
        if (prefopt_ckpt_save(&o, m, NULL, NULL, &st, NULL, 0, &err))
            FAIL("rotation save %d: %s", s, err.msg);
    }
    const int expect_present[] = {0, 0, 1, 1}; /* steps 10 20 30 40 */
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/step-%08d.h5", sub, 10 * (i + 1));
        if ((access(p, F_OK) == 0) != expect_present[i])
            FAIL("keep_last=2: %s %s", p, expect_present[i] ? "missing" : "not removed");
    }
    snprintf(p, sizeof p, "%s/step-00000035.h5.tmp", sub);
    if (access(p, F_OK) == 0)
        FAIL("leftover %s not removed", p);
    char latest[600], want[600];
    snprintf(want, sizeof want, "%s/step-00000040.h5", sub);
    if (prefopt_ckpt_find_latest(sub, latest, sizeof latest) || strcmp(latest, want))
        FAIL("latest: %s, expected %s", latest, want);
    prefopt_train_state got;
    memset(&got, 0, sizeof got);
    if (prefopt_ckpt_load(latest, m, NULL, NULL, &got, &err) || got.step != 40 || got.train_config)
        FAIL("load of latest: step %lld %s", (long long)got.step, err.msg);
    prefopt_model_free(m);
    prefopt_grid_free(&g);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 4) {
        fprintf(stderr, "test_ckpt runs on 4 ranks\n");
        MPI_Finalize();
        return 77;
    }
    if (prefopt_world_rank() == 0) {
        snprintf(dir, sizeof dir, "ckpt_test.XXXXXX");
        if (!mkdtemp(dir))
            MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    test_reshard(PREFOPT_ARCH_GPT2);
    test_reshard(PREFOPT_ARCH_LLAMA);
    test_resume(PREFOPT_ARCH_GPT2);
    test_resume(PREFOPT_ARCH_LLAMA);
    unsetenv("PREFOPT_TEST_CKPT_ROUND_BYTES");
    test_corrupt();
    test_rotation();
    int total = failures;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (prefopt_world_rank() == 0) {
        if (!total) {
            char cmd[300];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
            if (system(cmd))
                fprintf(stderr, "could not remove %s\n", dir);
        }
        printf("test_ckpt: %d failures\n", total);
    }
    MPI_Finalize();
    return total ? 1 : 0;
}
