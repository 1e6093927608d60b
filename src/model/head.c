/* The vocab-parallel LM head and token log-probs (Megatron's vocab-parallel cross-entropy): logits = X E with
 * the vocabulary over process columns; the max and the sum of exponentials of a row are all-reduced over the
 * process row, the target logit comes from its owner. Full logits are never gathered.
 *
 * With prefopt_model_set_completion_logits_only the head multiplies only the positions whose next-token log-prob
 * a completion sum reads (the parents of completion tokens; TRL's use_logits_to_keep, per row): their hidden
 * states are copied into a compact matrix of R rows per sequence, R the most such positions of any row of the
 * batch, so a DPO row [prompt | chosen | rejected] skips its prompt. Otherwise R = T and X is m->xf itself. */
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

static int completion_token(const prefopt_batch *b, int t)
{
    return b->seg[t] >= 0 && b->parent[t] >= 0 && b->unit[t] >= 0 && b->completion[t];
}

/* Fills row_of[r][p] (NULL: only counts) with the compact row of position p of batch row r, -1 when not kept,
 * and pos_of[r][q] (may be NULL) with the position of compact row q (-1: padding); returns R. */
static int plan_rows(const prefopt_batch *b, int *row_of, int *pos_of)
{
    const int T = b->T;
    int most = 1;
    int *mark = row_of ? row_of : prefopt_xmalloc(sizeof(int) * (size_t)T + 4, "head plan");
    for (int r = 0; r < b->nrows; r++) {
        int *k = row_of ? row_of + (size_t)r * T : mark, n = 0;
        for (int p = 0; p < T; p++)
            k[p] = -1;
        for (int i = 0; i < T; i++)
            if (completion_token(b, r * T + i))
                k[b->parent[r * T + i]] = 0;
        for (int p = 0; p < T; p++)
            if (k[p] == 0)
                k[p] = n++;
        most = n > most ? n : most;
    }
    if (!row_of)
        free(mark);
    if (pos_of)
        for (int r = 0; r < b->nrows; r++) {
            for (int q = 0; q < most; q++)
                pos_of[(size_t)r * most + q] = -1;
            for (int p = 0; p < T; p++)
                if (row_of[(size_t)r * T + p] >= 0)
                    pos_of[(size_t)r * most + row_of[(size_t)r * T + p]] = p;
        }
    return most;
}

int pf_head_rows_per_seq(const prefopt_model *m, const prefopt_batch *b)
{
    return m->head_kept_only && b->seg ? plan_rows(b, NULL, NULL) : b->T; /* no token arrays: every position */
}

/* This batch's head input: m->xf, or its kept rows copied into m->hx (each local sequence's block of R rows
 * holds that sequence's rows, so the copy is local). */
static const prefopt_dmat *head_input(prefopt_model *m)
{
    const int T = m->b.T;
    if (!m->head_kept_only) {
        m->head_R = T;
        return &m->xf;
    }
    const int R = m->head_R = plan_rows(&m->b, m->head_row, m->head_pos);
    float *data = m->hx.data;
    prefopt_dmat_init(&m->hx, m->g, m->b.nrows * R, m->cfg.hidden_size, R, m->nbh);
    m->hx.data = data;
    for (int s = 0; s < m->nloc_seq; s++) {
        const int *pos = m->head_pos + (size_t)pf_seq_row(m, s) * R;
        for (int jl = 0; jl < m->hx.nloc; jl++)
            for (int q = 0; q < R; q++)
                *pf_at(&m->hx, s * R + q, jl) = pos[q] >= 0 ? *pf_at(&m->xf, s * T + pos[q], jl) : 0.0f;
    }
    return &m->hx;
}

/* the batch row of a chunk's local sequence ls (the chunk's logits L have R rows per sequence) */
static inline int chunk_seq_row(const prefopt_dmat *L, int r0, int R, int ls)
{
    return r0 + prefopt_dmat_row_l2g(L, ls * R) / R;
}

/* does token t's log-prob enter a unit's sums (with the completion head: a completion sum)? */
static inline int scored_token(const prefopt_model *m, int t)
{
    const prefopt_batch *b = &m->b;
    return m->head_kept_only ? completion_token(b, t) : b->seg[t] >= 0 && b->parent[t] >= 0 && b->unit[t] >= 0;
}

/* The L row (local) from which token t (in-row position i of the chunk's local sequence ls) is predicted. */
static inline int parent_row(const prefopt_model *m, int ls, int r, int p)
{
    return ls * m->head_R + (m->head_kept_only ? m->head_row[(size_t)r * m->b.T + p] : p);
}

/* Gemma 2's final_logit_softcapping: logits := cap tanh(logits / cap), in place (the log-softmax, metrics and
 * generation all see the capped logits, as in HF) */
void pf_final_softcap(const prefopt_model *m, prefopt_dmat *L)
{
    const float cap = m->cfg.final_softcap;
    if (!(cap > 0))
        return;
    const size_t n = prefopt_dmat_local_size(L);
#pragma omp parallel for schedule(static)
    for (size_t e = 0; e < n; e++)
        L->data[e] = cap * tanhf(L->data[e] / cap);
}

/* The head runs over chunks of m->head_rows batch rows (a multiple of nprow, so a chunk starts on process row 0
 * and its local rows are a contiguous run of X's): only one chunk's logits exist at a time. With one chunk the
 * logits are kept for backward; with several, backward recomputes each chunk's logits (one more head GEMM). */
static void chunk_logits(prefopt_model *m, const prefopt_dmat *X, prefopt_dmat *Lc, int r0, int cr)
{
    const int R = m->head_R;
    prefopt_dmat_init(Lc, m->g, cr * R, m->cfg.vocab_size, R, m->nbv);
    Lc->data = m->logits.data;
    pf_gemm_sub(m->opt.bf16, 'N', 'N', Lc->m, Lc->n, m->cfg.hidden_size, 1.0f, X, r0 * R, m->head->value, 0, 0.0f, Lc,
                0);
    pf_final_softcap(m, Lc);
}

void pf_head_forward(prefopt_model *m, prefopt_unit_stats *out)
{
    const prefopt_grid *g = m->g;
    const int T = m->b.T, V = m->cfg.vocab_size, nu = m->b.nunits;
    const prefopt_dmat *X = head_input(m);
    const int R = m->head_R;
    double *acc = prefopt_xcalloc((size_t)6 * nu + 1, sizeof *acc, "unit sums");
    for (int r0 = 0; r0 < m->b.nrows; r0 += m->head_rows) {
        int cr = m->b.nrows - r0 < m->head_rows ? m->b.nrows - r0 : m->head_rows;
        prefopt_dmat Lc, *L = &Lc;
        chunk_logits(m, X, L, r0, cr);
        /* nt logits rows (R per local sequence), nls local sequences, ntok = nls * T of their tokens */
        const int nt = L->mloc, nls = nt / R, ntok = nls * T;
        float *lse = m->lse + r0 / g->nprow * R, *tgt = m->tgt + r0 / g->nprow * T;

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
        for (int ls = 0; ls < nls; ls++) {
            const int r = chunk_seq_row(L, r0, R, ls);
            for (int i = 0; i < T; i++) {
                int t = r * T + i, p = m->b.parent[t], tok = m->b.tokens[t];
                float *tg = &tgt[ls * T + i];
                *tg = 0.0f;
                if (m->b.seg[t] < 0 || p < 0 || (m->head_kept_only && !completion_token(&m->b, t)) ||
                    prefopt_dmat_col_owner(L, tok) != g->mycol)
                    continue;
                *tg = *pf_at(L, parent_row(m, ls, r, p), prefopt_dmat_col_g2l(L, tok));
            }
        }
        MPI_Allreduce(MPI_IN_PLACE, tgt, ntok, MPI_FLOAT, MPI_SUM, g->row);

        /* per-unit sums over this process row's sequences */
        for (int ls = 0; ls < nls; ls++) {
            const int r = chunk_seq_row(L, r0, R, ls);
            for (int i = 0; i < T; i++) {
                const int t = r * T + i, u = m->b.unit[t];
                if (!scored_token(m, t))
                    continue;
                int pl = parent_row(m, ls, r, m->b.parent[t]);
                double lp = (double)tgt[ls * T + i] - lse[pl];
                acc[nu + u] += lp;
                acc[3 * nu + u] += 1;
                if (m->b.completion[t]) {
                    acc[u] += lp;
                    acc[2 * nu + u] += 1;
                    acc[4 * nu + u] += sums[nt + pl] / V;
                    acc[5 * nu + u] += mx[pl].i == m->b.tokens[t];
                }
            }
        }
        free(sums);
        free(mx);
    }
    MPI_Allreduce(MPI_IN_PLACE, acc, 6 * nu, MPI_DOUBLE, MPI_SUM, g->col); /* over process rows */
    if (m->head_kept_only) { /* the count needs no logits: every rank has the whole batch */
        memset(acc + 3 * nu, 0, sizeof(double) * (size_t)nu);
        for (int t = 0; t < m->b.nrows * T; t++)
            if (m->b.seg[t] >= 0 && m->b.parent[t] >= 0 && m->b.unit[t] >= 0)
                acc[3 * nu + m->b.unit[t]] += 1;
    }
    for (int u = 0; u < nu; u++) {
        /* keeping completions only, the prompt's log-probs were never formed: NaN rather than a part of a sum */
        out->logp_completion[u] = acc[u];
        out->logp_all[u] = m->head_kept_only ? NAN : acc[nu + u];
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
 * a chunk's logits with their gradient, then dX = dL E^T and dE += X^T dL; dX is m->dn's rows, or with the
 * compact head m->hdn's, scattered into a zeroed m->dn at the end. */
void pf_head_backward(prefopt_model *m, const float *d_completion, const float *d_all)
{
    const int T = m->b.T, C = m->cfg.hidden_size, V = m->cfg.vocab_size, R = m->head_R;
    const prefopt_dmat *X = m->head_kept_only ? &m->hx : &m->xf;
    prefopt_dmat *dX = &m->dn;
    if (m->head_kept_only) {
        float *data = m->hdn.data;
        prefopt_dmat_init(&m->hdn, m->g, m->b.nrows * R, C, R, m->nbh);
        m->hdn.data = data;
        dX = &m->hdn;
    }
    for (int u = 0; m->head_kept_only && u < m->b.nunits; u++)
        if (d_all[u] != 0.0f) /* the objective reads log-probs the compact head never formed */
            prefopt_die("internal: a loss on all tokens' log-probs (ORPO, SFT on prompts) with the completions-only "
                        "LM head; prefopt_model_set_completion_logits_only(m, 0) is needed");
    for (int r0 = 0; r0 < m->b.nrows; r0 += m->head_rows) {
        int cr = m->b.nrows - r0 < m->head_rows ? m->b.nrows - r0 : m->head_rows;
        prefopt_dmat Lc, *L = &Lc;
        if (cr == m->b.nrows) { /* one chunk: the forward's logits are still there */
            prefopt_dmat_init(L, m->g, cr * R, V, R, m->nbv);
            L->data = m->logits.data;
        } else {
            chunk_logits(m, X, L, r0, cr);
        }
        const int nt = L->mloc, nls = nt / R;
        const float *lse = m->lse + r0 / m->g->nprow * R;
        float *W = prefopt_xcalloc((size_t)nt + 1, sizeof *W, "head weights");
        float *w = prefopt_xcalloc((size_t)nls * T + 1, sizeof *w, "token weights");
        for (int ls = 0; ls < nls; ls++) {
            const int r = chunk_seq_row(L, r0, R, ls);
            for (int i = 0; i < T; i++) {
                const int t = r * T + i, u = m->b.unit[t];
                if (!scored_token(m, t))
                    continue;
                w[ls * T + i] = d_all[u] + (m->b.completion[t] ? d_completion[u] : 0.0f);
                W[parent_row(m, ls, r, m->b.parent[t])] += w[ls * T + i];
            }
        }
        /* soft-capped logits z = cap tanh(u / cap): d/du = 1 - (z / cap)^2, read before z is overwritten (the
         * target entries' factors first, since their gradient is added after) */
        const float cap = m->cfg.final_softcap;
        float *tf = cap > 0 ? prefopt_xcalloc((size_t)nls * T + 1, sizeof *tf, "target cap factors") : NULL;
        for (int ls = 0; tf && ls < nls; ls++) {
            const int r = chunk_seq_row(L, r0, R, ls);
            for (int i = 0; i < T; i++) {
                int t = r * T + i, tok = m->b.tokens[t];
                if (w[ls * T + i] == 0.0f || prefopt_dmat_col_owner(L, tok) != m->g->mycol)
                    continue;
                float z = *pf_at(L, parent_row(m, ls, r, m->b.parent[t]), prefopt_dmat_col_g2l(L, tok)) / cap;
                tf[ls * T + i] = 1.0f - z * z;
            }
        }
#pragma omp parallel for schedule(static)
        for (int jl = 0; jl < L->nloc; jl++) {
            float *col = pf_at(L, 0, jl);
            for (int il = 0; il < nt; il++) {
                float gz = W[il] != 0.0f ? -W[il] * pf_exp(col[il] - lse[il]) : 0.0f;
                if (cap > 0) {
                    float z = col[il] / cap;
                    gz *= 1.0f - z * z;
                }
                col[il] = gz;
            }
        }
        for (int ls = 0; ls < nls; ls++) {
            const int r = chunk_seq_row(L, r0, R, ls);
            for (int i = 0; i < T; i++) {
                int t = r * T + i, tok = m->b.tokens[t];
                if (w[ls * T + i] == 0.0f || prefopt_dmat_col_owner(L, tok) != m->g->mycol)
                    continue;
                *pf_at(L, parent_row(m, ls, r, m->b.parent[t]), prefopt_dmat_col_g2l(L, tok)) +=
                    w[ls * T + i] * (tf ? tf[ls * T + i] : 1.0f);
            }
        }
        free(tf);
        free(W);
        free(w);
        if (L->m == 0)
            continue;
        pf_gemm_sub(m->opt.bf16, 'N', 'T', L->m, C, V, 1.0f, L, 0, m->head->value, 0, 0.0f, dX, r0 * R);
        if (m->head->grad) /* a frozen (LoRA base) head gets no gradient */
            pf_gemm_sub(m->opt.bf16, 'T', 'N', C, V, L->m, 1.0f, X, r0 * R, L, 0, 1.0f, m->head->grad, 0);
    }
    if (m->head_kept_only) { /* positions the head skipped get no gradient from it */
        memset(m->dn.data, 0, sizeof(float) * prefopt_dmat_local_size(&m->dn));
        for (int s = 0; s < m->nloc_seq; s++) {
            const int *pos = m->head_pos + (size_t)pf_seq_row(m, s) * R;
            for (int jl = 0; jl < m->dn.nloc; jl++)
                for (int q = 0; q < R; q++)
                    if (pos[q] >= 0)
                        *pf_at(&m->dn, s * T + pos[q], jl) = *pf_at(&m->hdn, s * R + q, jl);
        }
    }
}
