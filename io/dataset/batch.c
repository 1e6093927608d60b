/* Micro-batch rows for the model (prefopt_batch): shared-prompt packing of pairs, SFT rows, KTO rows with the
 * mismatched KL completion. The layout is specified at the top of dataset.h. */
#include "prefopt/dataset.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t *tok, *pos, *parent, *unit;
    int8_t *seg;
    uint8_t *comp;
} row_out;

/* Appends one branch of n tokens starting at row index at; positions continue from pos0; the first token's
 * parent is first_parent (-1: not predicted). Returns the new row length. */
static int put_branch(row_out *r, int at, const int32_t *ids, int n, int seg, int pos0, int first_parent, int unit,
                      int completion, const int32_t *mask)
{
    for (int j = 0; j < n; j++) {
        int i = at + j, parent = j ? i - 1 : first_parent;
        r->tok[i] = ids[j];
        r->pos[i] = pos0 + j;
        r->seg[i] = (int8_t)seg;
        r->parent[i] = parent;
        r->unit[i] = parent < 0 ? -1 : unit;
        r->comp[i] = parent < 0 ? 0 : (uint8_t)(mask ? completion && mask[j] : completion);
    }
    return at + n;
}

void prefopt_ds_batch_build(prefopt_ds_kind kind, int n, const int64_t *example, int32_t *const tokens[],
                            int64_t *const start[], const uint8_t *label, const double *ref, int kl_units, int pad_id,
                            int pad_multiple, prefopt_ds_batch *out)
{
    memset(out, 0, sizeof *out);
    const int kl = kind == PREFOPT_DS_UNPAIRED && kl_units && n > 0;
    const int two = kind == PREFOPT_DS_PAIRS || kl; /* units per example */
#define LEN(f, k) ((int)(start[f][(k) + 1] - start[f][k]))
#define IDS(f, k) (tokens[f] + start[f][k])
    int T = 0;
    for (int k = 0; k < n; k++) {
        int len = LEN(0, k) + LEN(1, k);
        if (kind == PREFOPT_DS_PAIRS)
            len += LEN(2, k);
        else if (kl)
            len += LEN(1, (k + n - 1) % n);
        T = len > T ? len : T;
    }
    if (pad_multiple > 1)
        T = (T + pad_multiple - 1) / pad_multiple * pad_multiple;
    size_t cells = (size_t)n * (size_t)T;
    row_out r = {prefopt_xmalloc(cells * 4 + 4, "batch tokens"), prefopt_xmalloc(cells * 4 + 4, "batch pos"),
                 prefopt_xmalloc(cells * 4 + 4, "batch parent"), prefopt_xmalloc(cells * 4 + 4, "batch unit"),
                 prefopt_xmalloc(cells + 1, "batch seg"), prefopt_xmalloc(cells + 1, "batch completion")};
    out->nexamples = n;
    out->example = prefopt_xmalloc((size_t)n * sizeof(int64_t) + 8, "batch examples");
    out->chosen_unit = prefopt_xmalloc((size_t)n * 4 + 4, "batch units");
    out->rejected_unit = prefopt_xmalloc((size_t)n * 4 + 4, "batch units");
    out->kl_unit = prefopt_xmalloc((size_t)n * 4 + 4, "batch units");
    const int nunits = two ? 2 * n : n;
    if (label) {
        out->label = prefopt_xmalloc((size_t)n + 1, "batch labels");
        memcpy(out->label, label, (size_t)n);
    }
    if (ref) {
        out->ref_logps = prefopt_xmalloc((size_t)nunits * sizeof(double) + 8, "batch ref");
        for (int u = 0; u < nunits; u++)
            out->ref_logps[u] = NAN;
    }
    for (int k = 0; k < n; k++) {
        row_out row = {r.tok + (size_t)k * T, r.pos + (size_t)k * T, r.parent + (size_t)k * T,
                       r.unit + (size_t)k * T, r.seg + (size_t)k * T, r.comp + (size_t)k * T};
        int P = LEN(0, k), C = LEN(1, k);
        int u0 = two ? 2 * k : k;
        const int32_t *mask = kind == PREFOPT_DS_SFT && tokens[2] ? IDS(2, k) : NULL; /* sft loss mask */
        int at = put_branch(&row, 0, IDS(0, k), P, 0, 0, -1, u0, 0, NULL);
        at = put_branch(&row, at, IDS(1, k), C, 1, P, P - 1, u0, 1, mask);
        if (kind == PREFOPT_DS_PAIRS)
            at = put_branch(&row, at, IDS(2, k), LEN(2, k), 2, P, P - 1, u0 + 1, 1, NULL);
        else if (kl) {
            int m = (k + n - 1) % n; /* TRL: (x1, y_n), (x2, y1), ... */
            at = put_branch(&row, at, IDS(1, m), LEN(1, m), 2, P, P - 1, u0 + 1, 1, NULL);
        }
        for (int i = at; i < T; i++) {
            row.tok[i] = pad_id;
            row.pos[i] = 0;
            row.seg[i] = -1;
            row.parent[i] = -1;
            row.unit[i] = -1;
            row.comp[i] = 0;
        }
        out->example[k] = example[k];
        out->chosen_unit[k] = u0;
        out->rejected_unit[k] = kind == PREFOPT_DS_PAIRS ? u0 + 1 : -1;
        out->kl_unit[k] = kl ? u0 + 1 : -1;
        if (ref) {
            out->ref_logps[u0] = ref[(size_t)k * (kind == PREFOPT_DS_PAIRS ? 2 : 1)];
            if (kind == PREFOPT_DS_PAIRS)
                out->ref_logps[u0 + 1] = ref[(size_t)k * 2 + 1];
        }
        out->prompt_tokens += P;
        out->completion_tokens += at - P;
        out->pad_tokens += T - at;
    }
#undef LEN
#undef IDS
    out->b = (prefopt_batch){.nrows = n, .T = T, .nunits = nunits, .tokens = r.tok, .pos = r.pos, .seg = r.seg,
                             .parent = r.parent, .unit = r.unit, .completion = r.comp};
}

void prefopt_ds_batch_free(prefopt_ds_batch *b)
{
    if (!b)
        return;
    free((void *)b->b.tokens), free((void *)b->b.pos), free((void *)b->b.seg), free((void *)b->b.parent);
    free((void *)b->b.unit), free((void *)b->b.completion);
    free(b->example), free(b->chosen_unit), free(b->rejected_unit), free(b->kl_unit), free(b->label);
    free(b->ref_logps);
    memset(b, 0, sizeof *b);
}
