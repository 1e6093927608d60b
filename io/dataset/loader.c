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
    int64_t order_epoch; /* epoch that order[] was built for, -1: none */
    int64_t *order;      /* [N] example index at each position of the epoch */
};

const char *const prefopt_ds_cursor_names[PREFOPT_DS_CURSOR_NVALUES] = {
    "seed", "epoch", "step", "global_batch", "num_examples", "bucket_window"};

void prefopt_ds_cursor_to_values(const prefopt_ds_cursor *c, int64_t v[PREFOPT_DS_CURSOR_NVALUES])
{
    int64_t s;
    memcpy(&s, &c->seed, sizeof s);
    v[0] = s, v[1] = c->epoch, v[2] = c->step, v[3] = c->global_batch, v[4] = c->num_examples;
    v[5] = c->bucket_window;
}

void prefopt_ds_cursor_from_values(const int64_t v[PREFOPT_DS_CURSOR_NVALUES], prefopt_ds_cursor *c)
{
    memcpy(&c->seed, &v[0], sizeof c->seed);
    c->epoch = v[1], c->step = v[2], c->global_batch = v[3], c->num_examples = v[4], c->bucket_window = v[5];
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

static void build_order(prefopt_ds_loader *L, int64_t epoch)
{
    const int64_t N = L->N, B = L->o.global_batch;
    for (int64_t i = 0; i < N; i++)
        L->order[i] = i;
    if (L->o.shuffle) {
        shuffle(L->order, N, stream(L->o.seed, (uint64_t)epoch, 0));
        if (L->o.bucket_window > 0) {
            const int nf = prefopt_ds_kind_nfields(prefopt_dataset_info(L->ds)->kind);
            const int64_t used = L->steps * B < N ? L->steps * B : N, W = (int64_t)L->o.bucket_window * B;
            len_key *keys = prefopt_xmalloc((size_t)(W > 0 ? W : 1) * sizeof *keys, "bucketing");
            int64_t *nb = prefopt_xmalloc((size_t)L->o.bucket_window * sizeof(int64_t), "bucketing");
            int64_t *tmp = prefopt_xmalloc((size_t)(W > 0 ? W : 1) * sizeof(int64_t), "bucketing");
            for (int64_t w0 = 0, w = 0; w0 < used; w0 += W, w++) {
                int64_t n = used - w0 < W ? used - w0 : W;
                for (int64_t i = 0; i < n; i++) {
                    int64_t e = L->order[w0 + i], len = 0;
                    for (int f = 0; f < nf; f++)
                        len += prefopt_dataset_len(L->ds, f, e);
                    keys[i] = (len_key){len, i, e};
                }
                qsort(keys, (size_t)n, sizeof *keys, by_length);
                /* batches of similar length, then their order within the window shuffled */
                int64_t nbat = (n + B - 1) / B;
                for (int64_t b = 0; b < nbat; b++)
                    nb[b] = b;
                /* a partial last batch stays last so the epoch's step count and shares do not change */
                shuffle(nb, n % B ? nbat - 1 : nbat, stream(L->o.seed, (uint64_t)epoch, 1 + (uint64_t)w));
                int64_t p = 0;
                for (int64_t b = 0; b < nbat; b++)
                    for (int64_t i = nb[b] * B; i < (nb[b] + 1) * B && i < n; i++)
                        tmp[p++] = keys[i].ex;
                memcpy(L->order + w0, tmp, (size_t)n * sizeof(int64_t));
            }
            free(keys), free(nb), free(tmp);
        }
    }
    L->order_epoch = epoch;
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
        prefopt_err_set(err, "the dataset has no examples");
        return 1;
    }
    if (o->drop_last && N < o->global_batch) {
        prefopt_err_set(err, "the dataset has %" PRId64 " examples, fewer than one global batch of %d", N,
                        o->global_batch);
        return 1;
    }
    prefopt_ds_loader *L = prefopt_xcalloc(1, sizeof *L, "loader");
    L->ds = ds, L->o = *o, L->dp_rank = dp_rank, L->dp_size = dp_size, L->N = N;
    if (L->o.pad_multiple < 1)
        L->o.pad_multiple = 1;
    L->steps = o->drop_last ? N / o->global_batch : (N + o->global_batch - 1) / o->global_batch;
    L->cur = (prefopt_ds_cursor){o->seed, 0, 0, o->global_batch, N, o->shuffle ? o->bucket_window : -1};
    L->order = prefopt_xmalloc((size_t)(N ? N : 1) * sizeof(int64_t), "epoch order");
    L->order_epoch = -1;
    *out = L;
    return 0;
}

void prefopt_ds_loader_free(prefopt_ds_loader *L)
{
    if (L)
        free(L->order);
    free(L);
}

int64_t prefopt_ds_loader_steps_per_epoch(const prefopt_ds_loader *L) { return L->steps; }
void prefopt_ds_loader_get_cursor(const prefopt_ds_loader *L, prefopt_ds_cursor *c) { *c = L->cur; }

int prefopt_ds_loader_set_cursor(prefopt_ds_loader *L, const prefopt_ds_cursor *c, prefopt_err *err)
{
    const prefopt_ds_cursor *m = &L->cur;
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
    return 0;
}

int prefopt_ds_loader_next(prefopt_ds_loader *L, prefopt_ds_step *step, prefopt_err *err)
{
    memset(step, 0, sizeof *step);
    if (L->cur.step >= L->steps)
        L->cur.epoch++, L->cur.step = 0;
    if (L->order_epoch != L->cur.epoch)
        build_order(L, L->cur.epoch);
    const int64_t B = L->o.global_batch, s = L->cur.step;
    const int64_t g0 = s * B, gn = (g0 + B <= L->N ? B : L->N - g0);
    const int64_t lo = g0 + gn * L->dp_rank / L->dp_size, hi = g0 + gn * (L->dp_rank + 1) / L->dp_size;
    const int n = (int)(hi - lo);
    const int64_t *idx = L->order + lo;
    int32_t *tok[PREFOPT_DS_MAX_FIELDS];
    int64_t *start[PREFOPT_DS_MAX_FIELDS];
    if (prefopt_dataset_read(L->ds, idx, n, tok, start, err))
        return 1;
    const prefopt_ds_info *in = prefopt_dataset_info(L->ds);
    const uint8_t *labels = prefopt_ds_labels(L->ds);
    const int nr = prefopt_ds_kind_nrefs(in->kind), nf = prefopt_ds_kind_nfields(in->kind) + in->has_mask;
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
            if (labels)
                lab[j] = labels[e];
            for (int r = 0; r < nr && in->has_ref; r++)
                ref[(size_t)j * nr + r] = prefopt_ds_ref(L->ds, r)[e];
        }
        int pad = in->pad_id >= 0 ? in->pad_id : (in->eos_id >= 0 ? in->eos_id : 0);
        prefopt_ds_batch_build(in->kind, k, idx + j0, sub_tok, sub_start, labels ? lab : NULL,
                               in->has_ref ? ref : NULL, L->o.kl_units, pad, L->o.pad_multiple, &step->micro[b]);
    }
    for (int f = 0; f < nf; f++)
        free(sub_start[f]), free(tok[f]), free(start[f]);
    free(lab), free(ref);
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
