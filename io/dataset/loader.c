/* The data loader: a deterministic order of examples per (seed, epoch), optionally bucketed by length, dealt as
 * global batches to the data-parallel replicas; a cursor of plain integers to resume exactly. */
#include "prefopt/dataset.h"
#include "dataset_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct prefopt_ds_loader {
    prefopt_dataset *ds;
    prefopt_ds_loader_opts o;
    int dp_rank, dp_size;
    int64_t N, steps;
    prefopt_ds_cursor cur;
    /* the permutation of an epoch is a keyed bijection evaluated per position (nothing of size N is built) */
    int half_bits;       /* the Feistel network permutes [0, 4^half_bits) >= N; cycle-walking maps into [0, N) */
    uint64_t key_epoch;  /* epoch the round keys are for, (uint64)-1: none */
    uint64_t keys[6];
    /* bucketing: the order of one window of bucket_window global batches, sorted by length (lengths read on
     * demand for that window only) */
    int64_t win_epoch, win_index, win_n;
    int64_t *win;        /* [bucket_window * B] example at each position of the window */
    int64_t *idx;        /* [B] this replica's examples of the current step */
};

const char *const prefopt_ds_cursor_names[PREFOPT_DS_CURSOR_NVALUES] = {
    "seed", "epoch", "step", "global_batch", "num_examples", "bucket_window", "order"};

void prefopt_ds_cursor_to_values(const prefopt_ds_cursor *c, int64_t v[PREFOPT_DS_CURSOR_NVALUES])
{
    int64_t s;
    memcpy(&s, &c->seed, sizeof s);
    v[0] = s, v[1] = c->epoch, v[2] = c->step, v[3] = c->global_batch, v[4] = c->num_examples;
    v[5] = c->bucket_window, v[6] = c->order;
}

void prefopt_ds_cursor_from_values(const int64_t v[PREFOPT_DS_CURSOR_NVALUES], prefopt_ds_cursor *c)
{
    memcpy(&c->seed, &v[0], sizeof c->seed);
    c->epoch = v[1], c->step = v[2], c->global_batch = v[3], c->num_examples = v[4], c->bucket_window = v[5];
    c->order = v[6];
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) by multiply-shift: deterministic and the same on every platform with __int128. */
static uint64_t below(uint64_t *s, uint64_t n) { return (uint64_t)(((unsigned __int128)splitmix64(s) * n) >> 64); }

/* Fisher-Yates with the multiply-shift draws above (the batches of a bucketing window). */
static void shuffle(int64_t *a, int64_t n, uint64_t state)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)below(&state, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j], a[j] = t;
    }
}

static uint64_t stream(uint64_t seed, uint64_t epoch, uint64_t what)
{
    uint64_t s = seed ^ 0x243f6a8885a308d3ULL;
    uint64_t a = splitmix64(&s) ^ epoch;
    uint64_t b = splitmix64(&a) ^ what;
    return splitmix64(&b);
}

typedef struct {
    int64_t len, pos, ex;
} len_key;

static int by_length(const void *a, const void *b)
{
    const len_key *x = a, *y = b; /* longest first; ties by position so the order is total */
    if (x->len != y->len)
        return x->len < y->len ? 1 : -1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Order version 2 (issue 17): the example at position p of an epoch is perm(p), a balanced Feistel network of
 * 6 rounds on 2*half_bits bits keyed by (seed, epoch), cycle-walked into [0, N): a bijection of [0, N) computed in
 * O(1) expected time per position (the domain is < 4N, so fewer than 4 rounds of walking on average), the same on
 * every rank and for every dp and grid. */
#define FEISTEL_ROUNDS 6
static void set_keys(prefopt_ds_loader *L, int64_t epoch)
{
    if (L->key_epoch == (uint64_t)epoch)
        return;
    uint64_t s = stream(L->o.seed, (uint64_t)epoch, 0);
    for (int r = 0; r < FEISTEL_ROUNDS; r++)
        L->keys[r] = splitmix64(&s);
    L->key_epoch = (uint64_t)epoch;
}

static uint64_t feistel(const prefopt_ds_loader *L, uint64_t x)
{
    const int h = L->half_bits;
    const uint64_t mask = (1ULL << h) - 1;
    uint64_t l = x >> h, r = x & mask;
    for (int i = 0; i < FEISTEL_ROUNDS; i++) {
        uint64_t t = L->keys[i] ^ r, f = splitmix64(&t) & mask;
        uint64_t nl = r;
        r = l ^ f, l = nl;
    }
    return (l << h) | r;
}

static int64_t perm(const prefopt_ds_loader *L, int64_t p)
{
    uint64_t x = (uint64_t)p;
    do
        x = feistel(L, x);
    while (x >= (uint64_t)L->N);
    return (int64_t)x;
}

/* The order of window w of the epoch: its positions' examples sorted by total length, cut into batches of B,
 * whose order is then shuffled (a partial last batch stays last). Collective over the dataset's communicator:
 * every rank of every replica builds the same window at the same step. */
static int build_window(prefopt_ds_loader *L, int64_t epoch, int64_t w, prefopt_err *err)
{
    const int64_t B = L->o.global_batch, W = (int64_t)L->o.bucket_window * B;
    const int64_t used = L->steps * B < L->N ? L->steps * B : L->N, w0 = w * W;
    const int64_t n = used - w0 < W ? used - w0 : W;
    const int nf = prefopt_ds_kind_nfields(prefopt_dataset_info(L->ds)->kind);
    len_key *keys = prefopt_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *keys, "bucketing");
    int64_t *ex = prefopt_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *ex, "bucketing");
    int64_t *len = prefopt_xmalloc((size_t)(n > 0 ? n : 1) * nf * sizeof *len, "bucketing");
    for (int64_t i = 0; i < n; i++)
        ex[i] = perm(L, w0 + i);
    int bad = prefopt_dataset_lengths(L->ds, ex, n > 0 ? n : 0, len, err);
    for (int64_t i = 0; i < n && !bad; i++) {
        int64_t t = 0;
        for (int f = 0; f < nf; f++)
            t += len[i * nf + f];
        keys[i] = (len_key){t, i, ex[i]};
    }
    if (!bad) {
        qsort(keys, (size_t)n, sizeof *keys, by_length);
        int64_t nbat = (n + B - 1) / B;
        int64_t *nb = prefopt_xmalloc((size_t)(nbat > 0 ? nbat : 1) * sizeof *nb, "bucketing");
        for (int64_t b = 0; b < nbat; b++)
            nb[b] = b;
        /* a partial last batch stays last so the epoch's step count and shares do not change */
        shuffle(nb, n % B ? nbat - 1 : nbat, stream(L->o.seed, (uint64_t)epoch, 1 + (uint64_t)w));
        int64_t p = 0;
        for (int64_t b = 0; b < nbat; b++)
            for (int64_t i = nb[b] * B; i < (nb[b] + 1) * B && i < n; i++)
                L->win[p++] = keys[i].ex;
        free(nb);
        L->win_epoch = epoch, L->win_index = w, L->win_n = n;
    }
    free(keys), free(ex), free(len);
    return bad;
}

/* Example at position p of the epoch (p < the positions the epoch deals). */
static int64_t example_at(const prefopt_ds_loader *L, int64_t p)
{
    if (!L->o.shuffle)
        return p;
    if (L->o.bucket_window > 0)
        return L->win[p - L->win_index * (int64_t)L->o.bucket_window * L->o.global_batch];
    return perm(L, p);
}

/* Round keys of the epoch, and the bucketing window holding position g0 (collective when it is built). */
static int prepare(prefopt_ds_loader *L, int64_t epoch, int64_t g0, prefopt_err *err)
{
    if (!L->o.shuffle)
        return 0;
    set_keys(L, epoch);
    const int64_t W = (int64_t)L->o.bucket_window * L->o.global_batch;
    if (W > 0 && (L->win_epoch != epoch || L->win_index != g0 / W))
        return build_window(L, epoch, g0 / W, err);
    return 0;
}

int prefopt_ds_loader_batch_examples(prefopt_ds_loader *L, int64_t epoch, int64_t step, int64_t *out, int *n,
                                     prefopt_err *err)
{
    const int64_t B = L->o.global_batch, g0 = step * B;
    *n = 0;
    if (step < 0 || step >= L->steps) {
        prefopt_err_set(err, "step %" PRId64 " is outside an epoch of %" PRId64 " steps", step, L->steps);
        return 1;
    }
    if (prepare(L, epoch, g0, err))
        return 1;
    *n = (int)(g0 + B <= L->N ? B : L->N - g0);
    for (int j = 0; j < *n; j++)
        out[j] = example_at(L, g0 + j);
    return 0;
}

int prefopt_ds_loader_create(prefopt_dataset *ds, const prefopt_ds_loader_opts *o, int dp_rank, int dp_size,
                             prefopt_ds_loader **out, prefopt_err *err)
{
    *out = NULL;
    const prefopt_ds_info *in = prefopt_dataset_info(ds);
    const int64_t N = in->num_examples;
    if (o->global_batch < 1 || o->micro_batch < 1) {
        prefopt_err_set(err, "global batch (%d) and micro-batch (%d) must be at least 1", o->global_batch,
                        o->micro_batch);
        return 1;
    }
    if (dp_size < 1 || o->global_batch % dp_size) {
        prefopt_err_set(err, "global batch %d is not divisible by the %d data-parallel replicas", o->global_batch,
                        dp_size);
        return 1;
    }
    if (in->kind == PREFOPT_DS_UNPAIRED && o->kl_units && o->micro_batch < 2) {
        prefopt_err_set(err, "KTO KL units pair each example with another of its micro-batch: the micro-batch must "
                             "hold at least 2 examples (it is %d)",
                        o->micro_batch);
        return 1;
    }
    if (N == 0) {
        prefopt_err_set(err, "%s: the dataset has no examples", prefopt_ds_path(ds));
        return 1;
    }
    if (o->drop_last && N < o->global_batch) {
        prefopt_err_set(err, "%s: the dataset has %" PRId64 " examples, fewer than one global batch of %d",
                        prefopt_ds_path(ds), N, o->global_batch);
        return 1;
    }
    prefopt_ds_loader *L = prefopt_xcalloc(1, sizeof *L, "loader");
    L->ds = ds, L->o = *o, L->dp_rank = dp_rank, L->dp_size = dp_size, L->N = N;
    if (L->o.pad_multiple < 1)
        L->o.pad_multiple = 1;
    L->steps = o->drop_last ? N / o->global_batch : (N + o->global_batch - 1) / o->global_batch;
    L->cur = (prefopt_ds_cursor){o->seed, 0, 0, o->global_batch, N, o->shuffle ? o->bucket_window : -1,
                                 PREFOPT_DS_ORDER_VERSION};
    while ((1ULL << (2 * L->half_bits)) < (uint64_t)N)
        L->half_bits++;
    if (L->half_bits < 1)
        L->half_bits = 1;
    L->key_epoch = (uint64_t)-1;
    L->win_epoch = L->win_index = -1;
    if (o->shuffle && o->bucket_window > 0)
        L->win = prefopt_xmalloc((size_t)o->bucket_window * (size_t)o->global_batch * sizeof(int64_t), "bucketing");
    L->idx = prefopt_xmalloc((size_t)o->global_batch * sizeof(int64_t), "batch examples");
    *out = L;
    return 0;
}

int prefopt_ds_loader_clone(const prefopt_ds_loader *from, prefopt_dataset *ds, prefopt_ds_loader **out,
                            prefopt_err *err)
{
    if (prefopt_ds_loader_create(ds, &from->o, from->dp_rank, from->dp_size, out, err))
        return 1;
    (*out)->cur = from->cur;
    return 0;
}

void prefopt_ds_loader_free(prefopt_ds_loader *L)
{
    if (L)
        free(L->win), free(L->idx);
    free(L);
}

int64_t prefopt_ds_loader_held_bytes(const prefopt_ds_loader *L)
{
    int64_t B = L->o.global_batch;
    return (int64_t)sizeof *L + 8 * B + (L->win ? 8 * (int64_t)L->o.bucket_window * B : 0);
}

int64_t prefopt_ds_loader_steps_per_epoch(const prefopt_ds_loader *L) { return L->steps; }
void prefopt_ds_loader_get_cursor(const prefopt_ds_loader *L, prefopt_ds_cursor *c) { *c = L->cur; }

int prefopt_ds_loader_set_cursor(prefopt_ds_loader *L, const prefopt_ds_cursor *c, prefopt_err *err)
{
    const prefopt_ds_cursor *m = &L->cur;
    /* file order (no shuffle) is the same in every version */
    if (c->order != m->order && m->bucket_window != -1) {
        prefopt_err_set(err, "the data cursor was saved with sample order version %" PRId64 " (%s); this prefopt "
                             "deals order version %d (a keyed per-position permutation, issue 17): resuming would "
                             "not give the same batches; start the run again, or finish it with the prefopt that "
                             "wrote the checkpoint",
                        c->order, c->order == 0 ? "a prefopt before the change" : "unknown",
                        PREFOPT_DS_ORDER_VERSION);
        return 1;
    }
    if (c->seed != m->seed || c->global_batch != m->global_batch || c->num_examples != m->num_examples ||
        c->bucket_window != m->bucket_window) {
        prefopt_err_set(err, "the data cursor was saved with seed %" PRIu64 ", global batch %" PRId64
                             ", %" PRId64 " examples, bucket window %" PRId64 "; this run has %" PRIu64 ", %" PRId64
                             ", %" PRId64 ", %" PRId64 ": resuming would not give the same batches",
                        c->seed, c->global_batch, c->num_examples, c->bucket_window, m->seed, m->global_batch,
                        m->num_examples, m->bucket_window);
        return 1;
    }
    if (c->epoch < 0 || c->step < 0 || c->step > L->steps) {
        prefopt_err_set(err, "the data cursor (epoch %" PRId64 ", step %" PRId64 ") is outside an epoch of %" PRId64
                             " steps",
                        c->epoch, c->step, L->steps);
        return 1;
    }
    L->cur = *c;
    L->cur.order = m->order;
    return 0;
}

int prefopt_ds_loader_next(prefopt_ds_loader *L, prefopt_ds_step *step, prefopt_err *err)
{
    memset(step, 0, sizeof *step);
    if (L->cur.step >= L->steps)
        L->cur.epoch++, L->cur.step = 0;
    const int64_t B = L->o.global_batch, s = L->cur.step;
    const int64_t g0 = s * B, gn = (g0 + B <= L->N ? B : L->N - g0);
    if (prepare(L, L->cur.epoch, g0, err))
        return 1;
    const int64_t lo = g0 + gn * L->dp_rank / L->dp_size, hi = g0 + gn * (L->dp_rank + 1) / L->dp_size;
    const int n = (int)(hi - lo);
    int64_t *idx = L->idx;
    for (int j = 0; j < n; j++)
        idx[j] = example_at(L, lo + j);
    const prefopt_ds_info *in = prefopt_dataset_info(L->ds);
    const int nr = prefopt_ds_kind_nrefs(in->kind), nf = prefopt_ds_kind_nfields(in->kind) + in->has_mask;
    /* this replica's labels and reference log-probs, read with its tokens (nothing per example is kept) */
    uint8_t *labels = in->kind == PREFOPT_DS_UNPAIRED ? prefopt_xmalloc((size_t)n + 1, "labels") : NULL;
    double *refs = in->has_ref ? prefopt_xmalloc((size_t)n * nr * sizeof(double) + 8, "ref") : NULL;
    int32_t *tok[PREFOPT_DS_MAX_FIELDS];
    int64_t *start[PREFOPT_DS_MAX_FIELDS];
    if (prefopt_ds_read_examples(L->ds, idx, n, tok, start, labels, refs, err)) {
        free(labels), free(refs);
        return 1;
    }
    const int m = L->o.micro_batch;
    step->epoch = L->cur.epoch, step->step = s, step->global_examples = (int)gn;
    step->nmicro = (n + m - 1) / m;
    step->micro = prefopt_xcalloc((size_t)(step->nmicro ? step->nmicro : 1), sizeof *step->micro, "micro-batches");
    uint8_t *lab = prefopt_xmalloc((size_t)m + 1, "labels");
    double *ref = prefopt_xmalloc((size_t)m * 2 * sizeof(double) + 8, "ref");
    int64_t *sub_start[PREFOPT_DS_MAX_FIELDS];
    for (int f = 0; f < nf; f++)
        sub_start[f] = prefopt_xmalloc((size_t)(m + 1) * sizeof(int64_t), "starts");
    for (int b = 0; b < step->nmicro; b++) {
        int j0 = b * m, k = n - j0 < m ? n - j0 : m;
        int32_t *sub_tok[PREFOPT_DS_MAX_FIELDS] = {0};
        for (int f = 0; f < nf; f++) {
            sub_tok[f] = tok[f] + start[f][j0];
            for (int j = 0; j <= k; j++)
                sub_start[f][j] = start[f][j0 + j] - start[f][j0];
        }
        for (int j = 0; j < k; j++) {
            int64_t e = idx[j0 + j];
            (void)e;
            if (labels)
                lab[j] = labels[j0 + j];
            for (int r = 0; r < nr && in->has_ref; r++)
                ref[(size_t)j * nr + r] = refs[(size_t)(j0 + j) * nr + r];
        }
        int pad = in->pad_id >= 0 ? in->pad_id : (in->eos_id >= 0 ? in->eos_id : 0);
        prefopt_ds_batch_build(in->kind, k, idx + j0, sub_tok, sub_start, labels ? lab : NULL,
                               in->has_ref ? ref : NULL, L->o.kl_units, pad, L->o.pad_multiple, &step->micro[b]);
    }
    for (int f = 0; f < nf; f++)
        free(sub_start[f]), free(tok[f]), free(start[f]);
    free(lab), free(ref), free(labels), free(refs);
    L->cur.step++;
    if (L->cur.step >= L->steps)
        L->cur.epoch++, L->cur.step = 0;
    return 0;
}

void prefopt_ds_step_free(prefopt_ds_step *step)
{
    if (!step)
        return;
    for (int b = 0; b < step->nmicro; b++)
        prefopt_ds_batch_free(&step->micro[b]);
    free(step->micro);
    memset(step, 0, sizeof *step);
}
