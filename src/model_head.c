/* The vocab-parallel LM head and token log-probs (Megatron's vocab-parallel cross-entropy): logits = X E with
 * the vocabulary over process columns; the max and the sum of exponentials of a row are all-reduced over the
 * process row, the target logit comes from its owner. Full logits are never gathered. */
#include "model_internal.h"
#include "pf_math.h"


#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

typedef struct {
    float v;
    int i;
} val_idx; /* layout of MPI_FLOAT_INT */

/* The head runs over chunks of m->head_rows batch rows (a multiple of nprow, so a chunk starts on process row 0
 * and its local rows are a contiguous run of xf's): only one chunk's logits exist at a time. With one chunk the
 * logits are kept for backward; with several, backward recomputes each chunk's logits (one more head GEMM). */
static void chunk_logits(prefopt_model *m, prefopt_dmat *Lc, int r0, int cr)
{
    const int T = m->b.T;
    prefopt_dmat_init(Lc, m->g, cr * T, m->cfg.vocab_size, T, m->nbv);
    Lc->data = m->logits.data;
    prefopt_dmat_gemm_sub('N', 'N', Lc->m, Lc->n, m->cfg.hidden_size, 1.0f, &m->xf, r0 * T, 0, m->head->value, 0, 0,
                          0.0f, Lc, 0, 0);
}

void pf_head_forward(prefopt_model *m, prefopt_unit_stats *out)
{
    const prefopt_grid *g = m->g;
    const int T = m->b.T, V = m->cfg.vocab_size, nu = m->b.nunits;
    double *acc = prefopt_xcalloc((size_t)6 * nu + 1, sizeof *acc, "unit sums");
    for (int r0 = 0; r0 < m->b.nrows; r0 += m->head_rows) {
        int cr = m->b.nrows - r0 < m->head_rows ? m->b.nrows - r0 : m->head_rows;
        prefopt_dmat Lc, *L = &Lc;
        chunk_logits(m, L, r0, cr);
        const int nt = L->mloc, off = r0 / g->nprow * T; /* xf's local row of this chunk's first */
        float *lse = m->lse + off, *tgt = m->tgt + off;

        /* row max with its (lowest) index: MPI_MAXLOC breaks ties towards the lower index, like torch.argmax.
         * Values and indices in separate arrays and a select instead of a branch, so the loop over rows
         * vectorises (masked blends); a strict > keeps the first of equal values within a rank. */
        float *mv = prefopt_xmalloc(sizeof *mv * (nt + 1), "logit max values");
        int *mi = prefopt_xmalloc(sizeof *mi * (nt + 1), "logit argmax");
        for (int il = 0; il < nt; il++) {
            mv[il] = -FLT_MAX;
            mi[il] = INT_MAX;
        }
#pragma omp parallel for schedule(static)
        for (int rb = 0; rb < nt; rb += PF_RB)
            for (int jl = 0; jl < L->nloc; jl++) {
                const int j = prefopt_dmat_col_l2g(L, jl), re = rb + PF_RB < nt ? rb + PF_RB : nt;
                const float *col = pf_at(L, 0, jl);
                for (int il = rb; il < re; il++) {
                    const float x = col[il];
                    const int gt = x > mv[il];
                    mv[il] = gt ? x : mv[il];
                    mi[il] = gt ? j : mi[il];
                }
            }
        val_idx *mx = prefopt_xmalloc(sizeof *mx * (nt + 1), "logit max");
        for (int il = 0; il < nt; il++)
            mx[il] = (val_idx){mv[il], mi[il]};
        free(mi);
        MPI_Allreduce(MPI_IN_PLACE, mx, nt, MPI_FLOAT_INT, MPI_MAXLOC, g->row);
        /* sums[0..nt): sum of exp(logit - max); sums[nt..2nt): sum of raw logits. Contiguous per-row arrays so
         * the inner loop over rows vectorises. */
        double *sums = prefopt_xcalloc((size_t)2 * nt + 2, sizeof *sums, "logit sums");
        float *mxv = mv; /* now the row maxima over the whole vocabulary */
        for (int il = 0; il < nt; il++)
            mxv[il] = mx[il].v;
#pragma omp parallel for schedule(static)
        for (int rb = 0; rb < nt; rb += PF_RB)
            for (int jl = 0; jl < L->nloc; jl++) {
                const float *col = pf_at(L, 0, jl);
                double *se = sums, *sr = sums + nt;
                for (int il = rb, re = rb + PF_RB < nt ? rb + PF_RB : nt; il < re; il++) {
                    se[il] += pf_exp(col[il] - mxv[il]);
                    sr[il] += col[il];
                }
            }
        free(mxv);
        MPI_Allreduce(MPI_IN_PLACE, sums, 2 * nt, MPI_DOUBLE, MPI_SUM, g->row);
        for (int il = 0; il < nt; il++)
            lse[il] = mx[il].v + (float)log(sums[il]);

        /* the logit of each token at its parent's row, from the process column that owns that vocab entry */
        for (int il = 0; il < nt; il++) {
            int t = r0 * T + prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], tok = m->b.tokens[t];
            tgt[il] = 0.0f;
            if (m->b.seg[t] < 0 || p < 0 || prefopt_dmat_col_owner(L, tok) != g->mycol)
                continue;
            tgt[il] = *pf_at(L, (il / T) * T + p, prefopt_dmat_col_g2l(L, tok));
        }
        MPI_Allreduce(MPI_IN_PLACE, tgt, nt, MPI_FLOAT, MPI_SUM, g->row);

        /* per-unit sums over this process row's sequences */
        for (int il = 0; il < nt; il++) {
            int t = r0 * T + prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], u = m->b.unit[t];
            if (m->b.seg[t] < 0 || p < 0 || u < 0)
                continue;
            int pl = (il / T) * T + p;
            double lp = (double)tgt[il] - lse[pl];
            acc[nu + u] += lp;
            acc[3 * nu + u] += 1;
            if (m->b.completion[t]) {
                acc[u] += lp;
                acc[2 * nu + u] += 1;
                acc[4 * nu + u] += sums[nt + pl] / V;
                acc[5 * nu + u] += mx[pl].i == m->b.tokens[t];
            }
        }
        free(sums);
        free(mx);
    }
    MPI_Allreduce(MPI_IN_PLACE, acc, 6 * nu, MPI_DOUBLE, MPI_SUM, g->col); /* over process rows */
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
}

/* d loss / d logit[p, v] = sum over tokens i predicted from p of w_i (onehot(tok_i) - softmax(p)). Overwrites
 * a chunk's logits with their gradient, then dX_f = dL E^T into m->dn's rows and dE += X_f^T dL. */
void pf_head_backward(prefopt_model *m, const float *d_completion, const float *d_all)
{
    const int T = m->b.T, C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int r0 = 0; r0 < m->b.nrows; r0 += m->head_rows) {
        int cr = m->b.nrows - r0 < m->head_rows ? m->b.nrows - r0 : m->head_rows;
        prefopt_dmat Lc, *L = &Lc;
        if (cr == m->b.nrows) { /* one chunk: the forward's logits are still there */
            prefopt_dmat_init(L, m->g, cr * T, V, T, m->nbv);
            L->data = m->logits.data;
        } else {
            chunk_logits(m, L, r0, cr);
        }
        const int nt = L->mloc, off = r0 / m->g->nprow * T;
        const float *lse = m->lse + off;
        float *W = prefopt_xcalloc((size_t)nt + 1, sizeof *W, "head weights");
        float *w = prefopt_xcalloc((size_t)nt + 1, sizeof *w, "token weights");
        for (int il = 0; il < nt; il++) {
            int t = r0 * T + prefopt_dmat_row_l2g(L, il), p = m->b.parent[t], u = m->b.unit[t];
            if (m->b.seg[t] < 0 || p < 0 || u < 0)
                continue;
            w[il] = d_all[u] + (m->b.completion[t] ? d_completion[u] : 0.0f);
            W[(il / T) * T + p] += w[il];
        }
#pragma omp parallel for schedule(static)
        for (int jl = 0; jl < L->nloc; jl++) {
            float *col = pf_at(L, 0, jl);
            for (int il = 0; il < nt; il++)
                col[il] = W[il] != 0.0f ? -W[il] * pf_exp(col[il] - lse[il]) : 0.0f;
        }
        for (int il = 0; il < nt; il++) {
            int t = r0 * T + prefopt_dmat_row_l2g(L, il), tok = m->b.tokens[t];
            if (w[il] == 0.0f || prefopt_dmat_col_owner(L, tok) != m->g->mycol)
                continue;
            *pf_at(L, (il / T) * T + m->b.parent[t], prefopt_dmat_col_g2l(L, tok)) += w[il];
        }
        free(W);
        free(w);
        if (L->m == 0)
            continue;
        prefopt_dmat_gemm_sub('N', 'T', L->m, C, V, 1.0f, L, 0, 0, m->head->value, 0, 0, 0.0f, &m->dn, r0 * T, 0);
        prefopt_dmat_gemm_sub('T', 'N', C, V, L->m, 1.0f, &m->xf, r0 * T, 0, L, 0, 0, 1.0f, m->head->grad, 0, 0);
    }
}
