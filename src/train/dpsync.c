/* The data-parallel step of train and bench: options, the gradient buckets hooked to the policy's backward, the
 * global norm and AdamW on the whole buffer or (ZeRO stage 1) on this replica's shard, and whole moments for
 * checkpoints. The communication itself is src/dist/gradsync.c. */
#include "prefopt/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int prefopt_dp_options(prefopt_opt *out, int max, prefopt_dp_params *p)
{
    const prefopt_opt t[] = {
        {"overlap-grad-reduce", PREFOPT_OPT_INT, &p->overlap, "-1",
         "1: each gradient bucket's reduction starts when backward has passed its layers and progresses while "
         "backward continues; 0: after backward (same sums); -1: on when dp > 1"},
        {"zero-stage", PREFOPT_OPT_INT, &p->zero_stage, "0",
         "1: distributed optimizer (gradients reduce-scattered, AdamW moments of a 1/dp shard per replica, weights "
         "all-gathered); 0: all-reduce, full moments on every replica"},
        {"grad-reduce-dtype", PREFOPT_OPT_STRING, &p->reduce_dtype, "fp32",
         "fp32, or bf16: gradients cross the network as bf16 and are summed in fp32"},
        {"grad-bucket-mib", PREFOPT_OPT_DOUBLE, &p->bucket_mib, "32",
         "fp32 gradient MiB per reduction bucket (buckets hold whole layers, last layer first)"},
    };
    int n = (int)(sizeof t / sizeof t[0]);
    if (n > max)
        return -1;
    memcpy(out, t, sizeof t);
    return n;
}

int prefopt_dp_sync_init(prefopt_dp_sync *s, const prefopt_dp_params *p, prefopt_model *m, prefopt_adamw *adam,
                         const prefopt_grid *g, prefopt_err *err)
{
    memset(s, 0, sizeof *s);
    const char *dt = p->reduce_dtype ? p->reduce_dtype : "fp32";
    if (p->overlap < -1 || p->overlap > 1)
        prefopt_err_set(err, "--overlap-grad-reduce %d: expected 0, 1 or -1 (auto)", p->overlap);
    else if (p->zero_stage != 0 && p->zero_stage != 1)
        prefopt_err_set(err, "--zero-stage %d: expected 0 or 1 (optimizer state sharding)", p->zero_stage);
    else if (strcmp(dt, "fp32") && strcmp(dt, "bf16"))
        prefopt_err_set(err, "--grad-reduce-dtype '%s': expected fp32 or bf16", dt);
    else if (!(p->bucket_mib > 0) || !isfinite(p->bucket_mib) || p->bucket_mib > 8192)
        prefopt_err_set(err, "--grad-bucket-mib %g: expected a size in (0, 8192]", p->bucket_mib);
    if (prefopt_agree(g->world, err))
        return -1;
    s->m = m;
    s->adam = adam;
    s->g = g;
    s->zero = p->zero_stage;
    s->overlap = p->overlap < 0 ? g->dp_size > 1 : p->overlap;
    s->bf16 = !strcmp(dt, "bf16");
    int nb = prefopt_model_grad_boundaries(m, NULL);
    size_t *bounds = prefopt_xmalloc(sizeof *bounds * (size_t)nb, "gradient boundaries");
    prefopt_model_grad_boundaries(m, bounds);
    size_t n = 0;
    float *grads = prefopt_model_grad_data(m, &n);
    size_t bf = (size_t)(p->bucket_mib * (1 << 20) / sizeof(float));
    prefopt_gradsync_opts o = {bf ? bf : 1, s->overlap, s->zero, s->bf16};
    s->gs = prefopt_gradsync_create(grads, n, bounds, nb, g->dp, &o);
    free(bounds);
    prefopt_model_set_grad_ready_hook(m, prefopt_gradsync_ready, s->gs);
    prefopt_model_set_param_need_hook(m, prefopt_gradsync_need, s->gs);
    if (s->zero && g->dp_size > 1) {
        const size_t *off, *cnt;
        int nseg = prefopt_gradsync_shard(s->gs, &off, &cnt);
        prefopt_adamw_set_shard(adam, off, cnt, nseg);
    }
    return 0;
}

void prefopt_dp_sync_free(prefopt_dp_sync *s)
{
    if (s->m) {
        prefopt_model_set_grad_ready_hook(s->m, NULL, NULL);
        prefopt_model_set_param_need_hook(s->m, NULL, NULL);
    }
    prefopt_gradsync_free(s->gs);
    memset(s, 0, sizeof *s);
}

void prefopt_dp_sync_begin(prefopt_dp_sync *s) { prefopt_gradsync_begin(s->gs); }

double prefopt_dp_sync_grads(prefopt_dp_sync *s, const prefopt_param_range *ranges, int nranges)
{
    prefopt_gradsync_finish(s->gs);
    if (s->zero && s->g->dp_size > 1) {
        /* each replica holds the reduced gradient of its shard only: the norm sums the shards of every rank */
        size_t n = 0;
        const float *grads = prefopt_model_grad_data(s->m, &n);
        return prefopt_global_norm(prefopt_adamw_shard_sumsq(s->adam, grads), s->g->world);
    }
    size_t n = 0;
    const float *grads = prefopt_model_grad_data(s->m, &n);
    return prefopt_global_norm(prefopt_sumsq(grads, ranges, nranges), s->g->tp);
}

void prefopt_dp_sync_step(prefopt_dp_sync *s, double lr, double grad_scale)
{
    size_t n = 0;
    float *params = prefopt_model_train_data(s->m, &n); /* with LoRA: the adapters */
    const float *grads = prefopt_model_grad_data(s->m, &n);
    prefopt_adamw_step(s->adam, params, grads, lr, grad_scale);
    if (s->overlap) /* zero 1: the next forward waits for each bucket's weights as it reaches them */
        prefopt_gradsync_gather_start(s->gs, params);
    else
        prefopt_gradsync_gather(s->gs, params);
}

void prefopt_dp_sync_weights_ready(prefopt_dp_sync *s) { prefopt_gradsync_gather_finish(s->gs); }

void prefopt_dp_sync_full_moments(prefopt_dp_sync *s, float *m_full, float *v_full, float **m, float **v)
{
    if (!(s->zero && s->g->dp_size > 1)) {
        *m = s->adam->m;
        *v = s->adam->v;
        return;
    }
    prefopt_gradsync_gather_shards(s->gs, s->adam->m, m_full);
    prefopt_gradsync_gather_shards(s->gs, s->adam->v, v_full);
    *m = m_full;
    *v = v_full;
}

void prefopt_dp_sync_load_moments(prefopt_dp_sync *s, const float *m_full, const float *v_full)
{
    if (!(s->zero && s->g->dp_size > 1))
        return;
    prefopt_gradsync_copy_shard(s->gs, m_full, s->adam->m);
    prefopt_gradsync_copy_shard(s->gs, v_full, s->adam->v);
}
