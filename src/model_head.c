/* The vocab-parallel LM head and token log-probs (Megatron's vocab-parallel cross-entropy): logits = X E with
 * the vocabulary over process columns; the max and the sum of exponentials of a row are all-reduced over the
 * process row, the target logit comes from its owner. Full logits are never gathered. */
#include "model_internal.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

typedef struct {
    float v;
    int i;
} val_idx; /* layout of MPI_FLOAT_INT */

void pf_head_forward(prefopt_model *m, prefopt_unit_stats *out)
{
    prefopt_dmat *L = &m->logits;
    const prefopt_grid *g = m->g;
    const int T = m->b.T, V = m->cfg.vocab_size, nt = L->mloc, nu = m->b.nunits;
    prefopt_dmat_gemm('N', 'N', 1.0f, &m->xf, m->head->value, 0.0f, L);

    /* row max with its (lowest) index: MPI_MAXLOC breaks ties towards the lower index, like torch.argmax */
    val_idx *mx = prefopt_xmalloc(sizeof *mx * (nt + 1), "logit max");
    for (int il = 0; il < nt; il++) {
        mx[il].v = -FLT_MAX;
        mx[il].i = INT_MAX;
    }
#pragma omp parallel for schedule(static)
    for (int rb = 0; rb < nt; rb += PF_RB)
        for (int jl = 0; jl < L->nloc; jl++) {
            int j = prefopt_dmat_col_l2g(L, jl), re = rb + PF_RB < nt ? rb + PF_RB : nt;
            const float *col = pf_at(L, 0, jl);
            for (int il = rb; il < re; il++)
                if (col[il] > mx[il].v) {
                    mx[il].v = col[il];
                    mx[il].i = j;
                }
        }
    MPI_Allreduce(MPI_IN_PLACE, mx, nt, MPI_FLOAT_INT, MPI_MAXLOC, g->row);
    double *sums = prefopt_xcalloc((size_t)2 * nt + 2, sizeof *sums, "logit sums"); /* sum exp, sum raw */
#pragma omp parallel for schedule(static)
    for (int rb = 0; rb < nt; rb += PF_RB)
        for (int jl = 0; jl < L->nloc; jl++) {
            const float *col = pf_at(L, 0, jl);
            for (int il = rb, re = rb + PF_RB < nt ? rb + PF_RB : nt; il < re; il++) {
                sums[2 * il] += expf(col[il] - mx[il].v);
                sums[2 * il + 1] += col[il];
            }
        }
    MPI_Allreduce(MPI_IN_PLACE, sums, 2 * nt, MPI_DOUBLE, MPI_SUM, g->row);
    for (int il = 0; il < nt; il++)
        m->lse[il] = mx[il].v + (float)log(sums[2 * il]);

    /* the logit of each token at its parent's row, from the process column that owns that vocab entry */
    for (int il = 0; il < nt; il++) {
        int t = prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], tok = m->b.tokens[t];
        m->tgt[il] = 0.0f;
        if (m->b.seg[t] < 0 || p < 0 || prefopt_dmat_col_owner(L, tok) != g->mycol)
            continue;
        m->tgt[il] = *pf_at(L, (il / T) * T + p, prefopt_dmat_col_g2l(L, tok));
    }
    MPI_Allreduce(MPI_IN_PLACE, m->tgt, nt, MPI_FLOAT, MPI_SUM, g->row);

    /* per-unit sums over this process row's sequences, then over process rows */
    double *acc = prefopt_xcalloc((size_t)6 * nu + 1, sizeof *acc, "unit sums");
    for (int il = 0; il < nt; il++) {
        int t = prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], u = m->b.unit[t];
        if (m->b.seg[t] < 0 || p < 0 || u < 0)
            continue;
        int pl = (il / T) * T + p;
        double lp = (double)m->tgt[il] - m->lse[pl];
        acc[nu + u] += lp;
        acc[3 * nu + u] += 1;
        if (m->b.completion[t]) {
            acc[u] += lp;
            acc[2 * nu + u] += 1;
            acc[4 * nu + u] += sums[2 * pl + 1] / V;
            acc[5 * nu + u] += mx[pl].i == m->b.tokens[t];
        }
    }
    MPI_Allreduce(MPI_IN_PLACE, acc, 6 * nu, MPI_DOUBLE, MPI_SUM, g->col);
    for (int u = 0; u < nu; u++) {
        out->logp_completion[u] = acc[u];
        out->logp_all[u] = acc[nu + u];
        out->n_completion[u] = acc[2 * nu + u];
        out->n_all[u] = acc[3 * nu + u];
        if (out->logits_sum)
            out->logits_sum[u] = acc[4 * nu + u];
        if (out->argmax_hits)
            out->argmax_hits[u] = acc[5 * nu + u];
    }
    free(acc);
    free(sums);
    free(mx);
}

/* d loss / d logit[p, v] = sum over tokens i predicted from p of w_i (onehot(tok_i) - softmax(p)). Overwrites
 * the logits with their gradient, then dX_f = dL E^T into m->dn and dE += X_f^T dL. */
void pf_head_backward(prefopt_model *m, const float *d_completion, const float *d_all)
{
    prefopt_dmat *L = &m->logits;
    const int T = m->b.T, nt = L->mloc;
    float *W = prefopt_xcalloc((size_t)nt + 1, sizeof *W, "head weights");
    float *w = prefopt_xcalloc((size_t)nt + 1, sizeof *w, "token weights");
    for (int il = 0; il < nt; il++) {
        int t = prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], u = m->b.unit[t];
        if (m->b.seg[t] < 0 || p < 0 || u < 0)
            continue;
        w[il] = d_all[u] + (m->b.completion[t] ? d_completion[u] : 0.0f);
        W[(il / T) * T + p] += w[il];
    }
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < L->nloc; jl++) {
        float *col = pf_at(L, 0, jl);
        for (int il = 0; il < nt; il++)
            col[il] = W[il] != 0.0f ? -W[il] * expf(col[il] - m->lse[il]) : 0.0f;
    }
    for (int il = 0; il < nt; il++) {
        int t = prefopt_dmat_row_l2g(L, il), tok = m->b.tokens[t];
        if (w[il] == 0.0f || prefopt_dmat_col_owner(L, tok) != m->g->mycol)
            continue;
        *pf_at(L, (il / T) * T + m->b.parent[t], prefopt_dmat_col_g2l(L, tok)) += w[il];
    }
    free(W);
    free(w);
    prefopt_dmat_gemm('N', 'T', 1.0f, L, m->head->value, 0.0f, &m->dn);
    prefopt_dmat_gemm('T', 'N', 1.0f, &m->xf, L, 1.0f, m->head->grad);
}
