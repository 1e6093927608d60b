/* Generation on the engine: the logits of chosen positions (evaluation, sampling without a cache) and incremental
 * decoding with a key/value cache, both on the trunk of model.c. */
#include "model_internal.h"

#include <string.h>

static void last_logits(prefopt_model *m, const int32_t *last, float *logits)
{
    const int V = m->cfg.vocab_size, C = m->cfg.hidden_size, nr = m->b.nrows, T = m->b.T;
    prefopt_dmat X, Y;
    prefopt_dmat_init(&X, m->g, nr, C, 1, m->nbh);
    prefopt_dmat_init(&Y, m->g, nr, V, 1, m->nbv);
    X.data = prefopt_xcalloc(prefopt_dmat_local_size(&X) + 1, sizeof(float), "last hidden states");
    Y.data = prefopt_xcalloc(prefopt_dmat_local_size(&Y) + 1, sizeof(float), "last logits");
    for (int il = 0; il < X.mloc; il++) {
        int r = prefopt_dmat_row_l2g(&X, il);
        if (last[r] >= 0)
            for (int jl = 0; jl < X.nloc; jl++)
                *pf_at(&X, il, jl) = *pf_at(&m->xf, il * T + last[r], jl);
    }
    pf_gemm(m->opt.bf16, 'N', 'N', 1.0f, &X, m->head->value, 0.0f, &Y);
    pf_final_softcap(m, &Y);
    float *full = prefopt_xmalloc(sizeof(float) * (size_t)nr * V + 4, "gathered logits");
    prefopt_dmat_gather(&Y, full);
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < V; v++)
            logits[(size_t)r * V + v] = full[(size_t)v * nr + r];
    free(full);
    free(X.data);
    free(Y.data);
    m->have_batch = 0; /* nothing for backward */
}

int prefopt_model_logits_at(prefopt_model *m, const prefopt_batch *b, const int32_t *last, float *logits,
                            prefopt_err *err)
{
    for (int r = 0; r < b->nrows; r++)
        if (last[r] < 0 || last[r] >= b->T || b->seg[(size_t)r * b->T + last[r]] < 0)
            return prefopt_err_set(err, "logits_at: row %d: position %d is outside the row or padding", r, last[r]),
                   -1;
    if (pf_run_trunk(m, b, err))
        return -1;
    last_logits(m, last, logits);
    return 0;
}

int prefopt_model_decode_begin(prefopt_model *m, int nrows, int max_len, prefopt_err *err)
{
    if (nrows < 0 || max_len < 1 || max_len > m->cfg.max_position)
        return prefopt_err_set(err, "decode: %d rows of up to %d tokens (max_position %d)", nrows, max_len,
                               m->cfg.max_position),
               -1;
    const int D = m->cfg.head_dim;
    prefopt_dmat probe;
    prefopt_dmat_init(&probe, m->g, nrows > 0 ? nrows : 1, m->cfg.num_kv_heads * D, 1, D);
    m->kv_nseq = nrows > 0 ? probe.mloc : 0;
    m->kv_nkb = probe.nloc / D;
    m->kv_rows = nrows;
    m->kv_max = max_len;
    size_t n = (size_t)m->cfg.num_layers * m->kv_nseq * m->kv_nkb * max_len * D;
    free(m->kv_k);
    free(m->kv_v);
    free(m->kv_len);
    m->kv_k = prefopt_xcalloc(n + 1, sizeof(float), "key cache");
    m->kv_v = prefopt_xcalloc(n + 1, sizeof(float), "value cache");
    m->kv_len = prefopt_xcalloc((size_t)nrows + 1, sizeof(int), "cache lengths");
    return 0;
}

int prefopt_model_decode_step(prefopt_model *m, const int32_t *tokens, const int32_t *n, int width, float *logits,
                              prefopt_err *err)
{
    if (!m->kv_len)
        return prefopt_err_set(err, "decode: no prefopt_model_decode_begin before decode_step"), -1;
    const int nr = m->kv_rows;
    for (int r = 0; r < nr; r++)
        if (n[r] < 0 || n[r] > width || m->kv_len[r] + n[r] > m->kv_max)
            return prefopt_err_set(err, "decode: row %d: %d new tokens (width %d) after %d cached exceed the cache of %d",
                                   r, n[r], width, m->kv_len[r], m->kv_max),
                   -1;
    if (width < 1)
        return prefopt_err_set(err, "decode: width %d < 1", width), -1;
    size_t nt = (size_t)nr * width;
    int32_t *pos = prefopt_xmalloc(sizeof(int32_t) * (3 * nt + 1) + nr * sizeof(int32_t), "decode batch");
    int32_t *par = pos + nt, *unit = par + nt, *last = unit + nt;
    int8_t *seg = prefopt_xmalloc(nt + 1, "decode batch");
    uint8_t *comp = prefopt_xcalloc(nt + 1, 1, "decode batch");
    for (int r = 0; r < nr; r++) {
        last[r] = n[r] - 1;
        for (int i = 0; i < width; i++) {
            size_t t = (size_t)r * width + i;
            seg[t] = i < n[r] ? 0 : -1;
            pos[t] = m->kv_len[r] + i;
            par[t] = unit[t] = -1;
        }
    }
    prefopt_batch b = {nr, width, 0, tokens, pos, seg, par, unit, comp};
    m->decoding = 1;
    int rc = pf_run_trunk(m, &b, err);
    m->decoding = 0;
    if (!rc) {
        last_logits(m, last, logits);
        for (int r = 0; r < nr; r++)
            m->kv_len[r] += n[r];
    }
    free(pos);
    free(seg);
    free(comp);
    return rc;
}
