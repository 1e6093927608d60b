/* The geometry of model files and checkpoints: a rank's block-cyclic piece of a logical tensor, the hyperslab
 * selection that addresses it in the file, the per-layer stacking of same-shaped tensors, and the checksums that
 * ranks add up from their pieces. The collective transfers are in checkpoint.c, whole-tensor I/O in ckpt_full.c. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- checksums ------------------------------------------------------------------------------------------- */

static inline uint64_t mix(uint64_t g, uint32_t b)
{
    /* each step is a bijection of x, and b -> b*K1 + c is injective on 32-bit b: a changed element always
     * changes its term */
    uint64_t x = (uint64_t)b * 0xff51afd7ed558ccdULL + g * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
    x ^= x >> 29;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 32;
    return x;
}

uint64_t ck_checksum_piece(const ck_piece *p) { return ck_checksum_piece_nf(p, NULL); }

uint64_t ck_checksum_piece_nf(const ck_piece *p, int64_t *nonfinite)
{
    int mloc = ck_piece_mloc(p), nloc = ck_piece_nloc(p);
    uint64_t s = 0;
    int64_t nf = 0;
    for (int jl = 0; jl < nloc; jl++) {
        uint64_t j = (uint64_t)ck_l2g(jl, p->nb, p->mycol, p->npcol);
        const uint32_t *col = (const uint32_t *)(p->data + (size_t)jl * p->lld);
        if (nonfinite) /* all exponent bits set: Inf or NaN (in the same pass over the bits, nearly free) */
            for (int il = 0; il < mloc; il++)
                nf += (col[il] & 0x7f800000u) == 0x7f800000u;
        if (p->nprow == 1) {
            uint64_t g0 = j * (uint64_t)p->m;
            for (int il = 0; il < mloc; il++)
                s += mix(g0 + (uint64_t)il, col[il]);
        } else {
            for (int il = 0; il < mloc; il++)
                s += mix(j * (uint64_t)p->m + (uint64_t)ck_l2g(il, p->mb, p->myrow, p->nprow), col[il]);
        }
    }
    if (nonfinite)
        *nonfinite = nf;
    return s;
}

/* ---- pieces and selections ------------------------------------------------------------------------------- */

void ck_piece_full(ck_piece *p, int ndim, const int64_t shape[2], float *data, int active)
{
    memset(p, 0, sizeof *p);
    p->n = (int)shape[0];
    p->m = ndim == 2 ? (int)shape[1] : 1;
    p->mb = p->m > 0 ? p->m : 1;
    p->nb = p->n > 0 ? p->n : 1;
    p->nprow = p->npcol = 1;
    p->lld = p->m > 1 ? p->m : 1;
    p->data = data;
    p->active = active;
    p->sums = active;
    p->col = MPI_COMM_NULL;
}

void ck_piece_dmat(ck_piece *p, int ndim, const int64_t shape[2], const prefopt_dmat *d)
{
    (void)ndim;
    (void)shape;
    memset(p, 0, sizeof *p);
    p->m = d->m;
    p->n = d->n;
    p->mb = d->mb;
    p->nb = d->nb;
    p->npcol = d->grid->npcol;
    p->mycol = d->grid->mycol;
    if (d->rep_rows) {
        p->nprow = 1;
        p->myrow = 0;
    } else {
        p->nprow = d->grid->nprow;
        p->myrow = d->grid->myrow;
    }
    p->lld = d->lld;
    p->data = d->data;
    p->active = 1;
    p->sums = !d->rep_rows || d->grid->myrow == 0;
    p->col = d->grid->col;
}

typedef struct {
    hsize_t start, stride, count, block;
} dimsel;

/* The blocks of process p of np along one dimension: the full blocks as one strided run, the partial last block
 * (if p owns it) as a second. */
static int dim_sel(int total, int bs, int np, int p, dimsel out[2])
{
    int k = 0, nfull = total / bs, rem = total % bs;
    if (nfull > p) {
        out[k].start = (hsize_t)p * bs;
        out[k].count = (hsize_t)((nfull - p - 1) / np + 1);
        out[k].block = (hsize_t)bs;
        out[k].stride = out[k].count > 1 ? (hsize_t)np * bs : (hsize_t)bs;
        k++;
    }
    if (rem && nfull % np == p) {
        out[k].start = (hsize_t)nfull * bs;
        out[k].count = 1;
        out[k].block = out[k].stride = (hsize_t)rem;
        k++;
    }
    return k;
}

/* ORs the piece's elements, at layer (or no layer dimension when layer < 0), into a file selection. */
void ck_select_piece(hid_t space, int layer, int ndim, const ck_piece *p)
{
    dimsel rs[2], cs[2];
    int nr = 1, nc = dim_sel(p->n, p->nb, p->npcol, p->mycol, cs);
    if (ndim == 2)
        nr = dim_sel(p->m, p->mb, p->nprow, p->myrow, rs);
    else
        rs[0] = (dimsel){0, 1, 1, 1};
    for (int a = 0; a < nc; a++)
        for (int b = 0; b < nr; b++) {
            hsize_t st[3], sd[3], ct[3], bk[3];
            int r = 0;
            if (layer >= 0) {
                st[r] = (hsize_t)layer, sd[r] = 1, ct[r] = 1, bk[r] = 1;
                r++;
            }
            st[r] = cs[a].start, sd[r] = cs[a].stride, ct[r] = cs[a].count, bk[r] = cs[a].block;
            r++;
            if (ndim == 2) {
                st[r] = rs[b].start, sd[r] = rs[b].stride, ct[r] = rs[b].count, bk[r] = rs[b].block;
                r++;
            }
            H5Sselect_hyperslab(space, H5S_SELECT_OR, st, sd, ct, bk);
        }
}

static int stacking = 1;
void ck_set_stacking(int on) { stacking = on; }

int ck_stacked_name(const char *name, char *ds, size_t len)
{
    /* the first dot-separated component made only of digits is the layer index */
    const char *s = name;
    while (*s && stacking) {
        const char *e = strchr(s, '.');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        int digits = n > 0 && s != name && e;
        for (size_t i = 0; i < n && digits; i++)
            digits = isdigit((unsigned char)s[i]);
        if (digits) {
            snprintf(ds, len, "%.*s%s", (int)(s - name - 1), name, e);
            return atoi(s);
        }
        if (!e)
            break;
        s = e + 1;
    }
    snprintf(ds, len, "%s", name);
    return -1;
}
