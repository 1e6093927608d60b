/* Shared pieces of the engine tests: tiny configs, a batch builder for packed DPO pairs and SFT rows with
 * padding, and a loss that mixes DPO and SFT terms with its derivatives with respect to the per-unit sums. */
#ifndef PREFOPT_TEST_MODEL_UTIL_H
#define PREFOPT_TEST_MODEL_UTIL_H

#include "prefopt/model.h"

#define TB_MAX_TOK 1024
typedef struct {
    int nrows, T, nunits, npairs;
    int32_t tokens[TB_MAX_TOK], pos[TB_MAX_TOK], parent[TB_MAX_TOK], unit[TB_MAX_TOK];
    int8_t seg[TB_MAX_TOK];
    uint8_t completion[TB_MAX_TOK];
    int pair_c[32], pair_r[32]; /* units of chosen and rejected of each DPO pair */
} test_batch;

void tm_config(prefopt_model_config *c, prefopt_arch arch);
prefopt_model_options tm_options(int with_grads, int checkpoint);
/* an empty batch of nrows x T, all padding (token id 999 on purpose: padding must never be looked up) */
void tb_init(test_batch *b, int nrows, int T);
/* row r = [prompt | chosen | rejected], returns the units of chosen and rejected (chosen's unit also counts the
 * prompt tokens in logp_all) */
void tb_pair(test_batch *b, int r, const int *prompt, int np, const int *chosen, int nc, const int *rejected, int nr);
/* row r = [prompt | completion], one unit */
int tb_seq(test_batch *b, int r, const int *prompt, int np, const int *completion, int nc);
prefopt_batch tb_view(const test_batch *b);
/* the standard test batch: 3 rows of 12 with padding, two packed pairs and one SFT row; vocab >= 37 */
void tb_standard(test_batch *b);

typedef struct {
    double c[64], a[64], nc[64], na[64], ls[64], hits[64];
} tm_stats;
prefopt_unit_stats tm_stats_view(tm_stats *s);

/* loss = sum_pairs -log sigmoid(beta (c - r)) + 0.3 * mean-token SFT NLL + 0.05 * mean NLL over all tokens;
 * fills d_completion/d_all (d loss / d unit sums) when not NULL. */
double tm_loss(const test_batch *b, const tm_stats *s, float *d_completion, float *d_all);

/* every parameter's full gradient (or value) gathered, concatenated in registry order; returns the count */
size_t tm_gather_all(prefopt_model *m, int grads, float *out);
size_t tm_total_elems(prefopt_model *m);

#endif
