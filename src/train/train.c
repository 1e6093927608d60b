/* The training loop of `prefopt train`: data, policy and reference on one grid per replica, objective, AdamW,
 * metrics, held-out evaluation, checkpoints, resume and the stop-signal protocol of the job scripts. */
#define _GNU_SOURCE
#include "prefopt/train.h"

#include "prefopt/banner.h"
#include "prefopt/memcheck.h"
#include "prefopt/metrics.h"
#include "prefopt/regions.h"
#include "prefopt/runctl.h"
#include "prefopt/trace.h"

#include <cJSON.h>
#include <omp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- the trainer state --------------------------------------------------------------------------------- */

typedef struct {
    prefopt_train_params *p;
    prefopt_grid g;
    prefopt_model *policy, *ref;
    prefopt_objective obj;
    prefopt_adamw adam;
    prefopt_dp_sync dps; /* data-parallel gradient reduction and the (sharded) optimizer step */
    prefopt_schedule sched;
    prefopt_dataset *ds, *eval_ds;
    prefopt_ds_loader *loader;
    prefopt_tokenizer_record tok;
    int micro, eval_micro;
    int live_ref;          /* the reference runs as a model (else: precomputed log-probs or none) */
    int lora_ref;          /* LoRA: that model is the policy with its adapters off (t->ref is NULL) */
    prefopt_lora_config lora; /* r == 0: full fine-tuning */
    long step, total_steps;
    double peak;           /* measured sgemm GFLOP/s per rank */
    char *config_text;     /* the options that apply (config.ini, checkpoints) */
    char *resumed_config;  /* the resumed checkpoint's, NULL when not resumed or saved without one */
    char resumed_from[4200];
    char ckpt_dir[4096], metrics_path[4096];
} trainer;

#define FAIL_IF(t, cond, err)                                                                                   \
    do {                                                                                                       \
        if (prefopt_agree((t)->g.world, (err)) || (cond))                                                      \
            prefopt_exit_error((err), PREFOPT_EXIT_ERROR);                                                     \
    } while (0)

static void log_line(trainer *t, cJSON *o)
{
    if (t->g.world_rank != 0) {
        cJSON_Delete(o);
        return;
    }
    char *s = cJSON_PrintUnformatted(o);
    prefopt_err e = {0};
    if (!s || prefopt_append_line(t->metrics_path, s, 0, &e))
        fprintf(stderr, "prefopt: warning: %s\n", s ? e.msg : "out of memory writing metrics");
    free(s);
    cJSON_Delete(o);
}

/* The policy's (and reference's) log-probs of one micro-batch and the objective batch over them. */
typedef struct {
    prefopt_unit_stats pol, refst;
    double *ref_logp;
    double *dcomp, *dall;
    float *fcomp, *fall;
    prefopt_objective_batch ob;
    int32_t *kl_units;
    int nkl;
} micro_state;

static void micro_prepare(micro_state *s, const trainer *t, const prefopt_ds_batch *mb)
{
    memset(s, 0, sizeof *s);
    int nu = mb->b.nunits;
    prefopt_unit_stats_alloc(&s->pol, nu);
    prefopt_unit_counts(&s->pol, &mb->b);
    s->ref_logp = prefopt_xcalloc((size_t)nu + 1, sizeof(double), "reference log-probs");
    s->dcomp = prefopt_xcalloc((size_t)nu + 1, sizeof(double), "gradients");
    s->dall = prefopt_xcalloc((size_t)nu + 1, sizeof(double), "gradients");
    s->fcomp = prefopt_xcalloc((size_t)nu + 1, sizeof(float), "gradients");
    s->fall = prefopt_xcalloc((size_t)nu + 1, sizeof(float), "gradients");
    s->kl_units = prefopt_xcalloc((size_t)mb->nexamples + 1, sizeof(int32_t), "KL units");
    prefopt_objective_batch *ob = &s->ob;
    ob->policy = &s->pol;
    ob->nunits = nu;
    ob->ref_logp = t->obj.uses_reference ? s->ref_logp : NULL;
    switch (t->obj.layout) {
    case PREFOPT_LAYOUT_PAIRS:
        ob->npairs = mb->nexamples;
        ob->chosen = mb->chosen_unit;
        ob->rejected = mb->rejected_unit;
        break;
    case PREFOPT_LAYOUT_UNPAIRED:
        ob->nexamples = mb->nexamples;
        ob->example = mb->chosen_unit;
        ob->desirable = mb->label;
        for (int k = 0; k < mb->nexamples; k++)
            if (mb->kl_unit[k] >= 0)
                s->kl_units[s->nkl++] = mb->kl_unit[k];
        break;
    case PREFOPT_LAYOUT_SFT:
        ob->nsft = mb->nexamples;
        ob->sft = mb->chosen_unit;
        break;
    }
}

static void micro_release(micro_state *s)
{
    prefopt_unit_stats_free(&s->pol);
    if (s->refst.logp_completion)
        prefopt_unit_stats_free(&s->refst);
    free(s->ref_logp);
    free(s->dcomp);
    free(s->dall);
    free(s->fcomp);
    free(s->fall);
    free(s->kl_units);
}

/* Forward passes of one micro-batch: policy stats, then reference log-probs (live or precomputed). */
static void micro_forward(trainer *t, micro_state *s, const prefopt_ds_batch *mb)
{
    prefopt_err err = {0};
    int nu = mb->b.nunits;
    prefopt_region_enter("forward");
    if (t->lora_ref && (t->obj.uses_reference || t->obj.uses_kl)) {
        /* the base is the reference: run it first, so the policy's forward below keeps its activations */
        prefopt_unit_stats_alloc(&s->refst, nu);
        prefopt_model_set_lora_enabled(t->policy, 0);
        prefopt_model_forward(t->policy, &mb->b, &s->refst, &err);
        prefopt_model_set_lora_enabled(t->policy, 1);
        if (prefopt_agree(t->g.tp, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        memcpy(s->ref_logp, s->refst.logp_completion, sizeof(double) * (size_t)nu);
    }
    prefopt_model_forward(t->policy, &mb->b, &s->pol, &err);
    prefopt_region_exit("forward");
    /* a bad batch (token id beyond the vocabulary) is reported by every rank of the grid alike */
    if (prefopt_agree(t->g.tp, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    if (!t->obj.uses_reference && !t->obj.uses_kl)
        return;
    if (t->live_ref && !t->lora_ref) {
        prefopt_unit_stats_alloc(&s->refst, nu);
        prefopt_region_enter("reference");
        prefopt_model_forward(t->ref, &mb->b, &s->refst, &err);
        prefopt_region_exit("reference");
        if (prefopt_agree(t->g.tp, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        memcpy(s->ref_logp, s->refst.logp_completion, sizeof(double) * (size_t)nu);
    } else if (mb->ref_logps) {
        memcpy(s->ref_logp, mb->ref_logps, sizeof(double) * (size_t)nu);
    }
}

static void count_norm(prefopt_objective_norm *norm, const trainer *t, const prefopt_ds_step *st)
{
    memset(norm, 0, sizeof *norm);
    for (int k = 0; k < st->nmicro; k++) {
        micro_state s;
        micro_prepare(&s, t, &st->micro[k]);
        prefopt_objective_count(norm, &t->obj, &s.ob);
        micro_release(&s);
    }
    prefopt_reduction dp = prefopt_reduction_over(&t->g.dp);
    prefopt_objective_norm_reduce(norm, &dp);
}

/* Runs the micro-batches of one global batch: forward, objective, and (when train) backward. Returns the
 * summed loss of this replica and 1 in *nonfinite when a loss or log-prob was not finite. */
static double run_step_batches(trainer *t, const prefopt_ds_step *st, prefopt_metrics *met, int train,
                               int *nonfinite, double *flops)
{
    prefopt_objective_norm norm;
    count_norm(&norm, t, st);
    if (t->lora.r > 0) /* LoRA dropout in training steps only; masks from (seed, step), so a resume redraws them */
        prefopt_model_set_lora_train(t->policy, train,
                                     (uint64_t)t->p->seed * 0x9E3779B97F4A7C15ull + (uint64_t)t->step);
    int nmax = st->nmicro;
    MPI_Allreduce(MPI_IN_PLACE, &nmax, 1, MPI_INT, MPI_MAX, t->g.dp);
    double loss_sum = 0;
    *nonfinite = 0;
    for (int k = 0; k < nmax; k++) {
        const prefopt_ds_batch *mb = k < st->nmicro ? &st->micro[k] : NULL;
        micro_state s;
        int have = mb != NULL;
        if (have) {
            micro_prepare(&s, t, mb);
            micro_forward(t, &s, mb);
            double f = prefopt_model_forward_flops(t->policy, &mb->b);
            /* a frozen LoRA base skips its weight-gradient products: backward is one forward's worth, not two */
            *flops += f * (train ? (t->lora.r > 0 ? 2.0 : 3.0) : 1.0) + (t->live_ref ? f : 0.0);
        }
        if (t->obj.uses_kl) {
            /* KTO's KL estimate is pooled over the replicas: every replica takes part, batch or not */
            double *pk = NULL, *rk = NULL;
            int n = have ? s.nkl : 0;
            if (n) {
                pk = prefopt_xmalloc(sizeof(double) * (size_t)n, "KL");
                rk = prefopt_xmalloc(sizeof(double) * (size_t)n, "KL");
                for (int j = 0; j < n; j++) {
                    pk[j] = s.pol.logp_completion[s.kl_units[j]];
                    rk[j] = s.ref_logp[s.kl_units[j]];
                }
            }
            prefopt_reduction dp = prefopt_reduction_over(&t->g.dp);
            double kl = prefopt_kto_kl(pk, rk, n, &dp);
            if (have)
                s.ob.kl = kl;
            free(pk);
            free(rk);
        }
        if (!have)
            continue;
        double loss = 0;
        prefopt_err err = {0};
        prefopt_region_enter("loss");
        if (prefopt_objective_eval(&loss, s.dcomp, s.dall, NULL, met, &t->obj, &s.ob, &norm, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR); /* a layout mismatch: the same on every rank */
        prefopt_region_exit("loss");
        int finite = isfinite(loss);
        for (int u = 0; u < mb->b.nunits && finite; u++)
            finite = isfinite(s.dcomp[u]) && isfinite(s.dall[u]);
        if (!finite)
            *nonfinite = 1;
        loss_sum += loss;
        if (train && finite) {
            for (int u = 0; u < mb->b.nunits; u++) {
                s.fcomp[u] = (float)s.dcomp[u];
                s.fall[u] = (float)s.dall[u];
            }
            if (k == nmax - 1)
                prefopt_dp_sync_begin(&t->dps); /* the last backward: buckets start as it passes them */
            prefopt_region_enter("backward");
            prefopt_model_backward(t->policy, s.fcomp, s.fall);
            prefopt_region_exit("backward");
        }
        micro_release(&s);
    }
    return loss_sum;
}

static prefopt_ds_loader *make_loader(trainer *t, prefopt_dataset *ds, int global, int micro, int shuffle,
                                      int drop_last)
{
    prefopt_ds_loader_opts lo = {0};
    lo.global_batch = global;
    lo.micro_batch = micro;
    lo.seed = (uint64_t)t->p->seed;
    lo.shuffle = shuffle;
    lo.bucket_window = shuffle ? t->p->bucket_window : 0;
    lo.drop_last = drop_last;
    lo.pad_multiple = t->p->pad_multiple;
    lo.kl_units = t->obj.uses_kl;
    prefopt_ds_loader *L = NULL;
    prefopt_err err = {0};
    prefopt_ds_loader_create(ds, &lo, t->g.dp_rank, t->g.dp_size, &L, &err);
    FAIL_IF(t, 0, &err);
    return L;
}

/* One pass over the held-out set; metrics with the "eval/" prefix. Loss: the example-weighted mean of the
 * per-batch losses (each normalised over its own batch). */
static void evaluate(trainer *t)
{
    prefopt_region_enter("eval");
    const int dp = t->g.dp_size;
    /* file order, every example once: the last batch takes the remainder (replicas may get none) */
    const int global = t->eval_micro * dp;
    prefopt_ds_loader *L = make_loader(t, t->eval_ds, global, t->eval_micro, 0, 0);
    int64_t steps = prefopt_ds_loader_steps_per_epoch(L);
    prefopt_metrics total;
    prefopt_metrics_reset(&total);
    double wloss = 0, wsum = 0, flops = 0;
    for (int64_t s = 0; s < steps; s++) {
        prefopt_ds_step st;
        prefopt_err err = {0};
        prefopt_region_enter("data_read");
        prefopt_ds_loader_next(L, &st, &err);
        prefopt_region_exit("data_read");
        FAIL_IF(t, 0, &err);
        prefopt_metrics m;
        prefopt_metrics_reset(&m);
        int nonfinite = 0;
        run_step_batches(t, &st, &m, 0, &nonfinite, &flops);
        prefopt_reduction dp = prefopt_reduction_over(&t->g.dp);
        prefopt_metrics_reduce(&m, &dp);
        double l = prefopt_metrics_value(&m, PREFOPT_M_LOSS);
        if (isfinite(l)) {
            wloss += l * st.global_examples;
            wsum += st.global_examples;
        }
        m.sum[PREFOPT_M_LOSS] = 0;
        m.count[PREFOPT_M_LOSS] = 0;
        prefopt_metrics_merge(&total, &m);
        prefopt_ds_step_free(&st);
    }
    prefopt_ds_loader_free(L);
    total.sum[PREFOPT_M_LOSS] = wsum > 0 ? wloss / wsum : NAN;
    total.count[PREFOPT_M_LOSS] = 1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", (double)t->step);
    prefopt_metrics_to_json(o, &total, "eval/");
    if (t->g.world_rank == 0) {
        if (prefopt_metrics_has(&total, PREFOPT_M_REWARDS_ACCURACIES))
            printf("eval  step %ld | loss %.4f | acc %.3f | margin %.4f | logps/chosen %.2f\n", t->step,
                   prefopt_metrics_value(&total, PREFOPT_M_LOSS),
                   prefopt_metrics_value(&total, PREFOPT_M_REWARDS_ACCURACIES),
                   prefopt_metrics_value(&total, PREFOPT_M_REWARDS_MARGINS),
                   prefopt_metrics_value(&total, PREFOPT_M_LOGPS_CHOSEN));
        else
            printf("eval  step %ld | loss %.4f | token acc %.3f\n", t->step, prefopt_metrics_value(&total, PREFOPT_M_LOSS),
                   prefopt_metrics_value(&total, PREFOPT_M_MEAN_TOKEN_ACCURACY));
        fflush(stdout);
    }
    log_line(t, o);
    prefopt_region_exit("eval");
}

/* ---- checkpoints ------------------------------------------------------------------------------------------ */

static void ref_path(char *buf, size_t len, const trainer *t, long step)
{
    snprintf(buf, len, "%s/ref-step-%08ld.h5", t->ckpt_dir, step);
}

/* TR-DPO reference files whose checkpoint was rotated away (keep-last) are removed with it. */
static void prune_refs(const trainer *t)
{
    DIR *d = opendir(t->ckpt_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long step;
        char tail[8];
        if (sscanf(e->d_name, "ref-step-%ld.h5%7s", &step, tail) != 1)
            continue;
        char ck[4200], rp[4200];
        snprintf(ck, sizeof ck, "%s/step-%08ld.h5", t->ckpt_dir, step);
        if (access(ck, F_OK) != 0) {
            ref_path(rp, sizeof rp, t, step);
            unlink(rp);
        }
    }
    closedir(d);
}

static void save_checkpoint(trainer *t)
{
    prefopt_err err = {0};
    prefopt_dp_sync_weights_ready(&t->dps);
    prefopt_train_state st = {0};
    st.step = t->step;
    st.sched_step = t->step;
    prefopt_ds_cursor c;
    prefopt_ds_loader_get_cursor(t->loader, &c);
    int64_t v[PREFOPT_DS_CURSOR_NVALUES];
    prefopt_ds_cursor_to_values(&c, v);
    st.epoch = c.epoch;
    /* seed, epoch, step, batch size, examples and bucket window: a resume on other data is refused */
    for (int i = 0; i < PREFOPT_DS_CURSOR_NVALUES; i++)
        st.cursor[i] = v[i];
    st.lr = prefopt_schedule_lr(&t->sched, t->step);
    st.train_config = t->config_text;
    if (t->live_ref && t->obj.p.ref_sync_steps > 0) {
        /* TR-DPO changes the reference: it is saved beside the checkpoint, under the same step */
        char rp[4200];
        ref_path(rp, sizeof rp, t, t->step);
        prefopt_model_file_save(t->ref, rp, &t->tok, &err);
        FAIL_IF(t, 0, &err);
    }
    prefopt_ckpt_opts o = {t->ckpt_dir, t->p->keep_last, &t->tok, t->p->init};
    char path[4200];
    double t0 = prefopt_now();
    /* whole logical moments in the file: with --zero-stage 1 the shards are gathered into the gradient buffer
     * (idle between steps) and one more buffer */
    prefopt_region_enter("checkpoint_write");
    size_t n = 0;
    float *mfull = prefopt_model_grad_data(t->policy, &n), *vfull = NULL, *mom1, *mom2;
    if (t->dps.zero && t->g.dp_size > 1)
        vfull = prefopt_xmalloc(sizeof(float) * (n + 1), "AdamW moments for the checkpoint");
    prefopt_dp_sync_full_moments(&t->dps, mfull, vfull, &mom1, &mom2);
    prefopt_ckpt_save(&o, t->policy, mom1, mom2, &st, path, sizeof path, &err);
    free(vfull);
    prefopt_region_exit("checkpoint_write");
    FAIL_IF(t, 0, &err);
    if (t->g.world_rank == 0) {
        printf("checkpoint: %s (%.2f s)\n", path, prefopt_now() - t0);
        prune_refs(t);
    }
}

static int try_resume(trainer *t)
{
    const char *r = t->p->resume;
    if (!strcmp(r, "never"))
        return 0;
    char path[4200];
    prefopt_err err = {0};
    if (!strcmp(r, "auto")) {
        char note[2048];
        int found = prefopt_ckpt_find_latest_checked(t->ckpt_dir, path, sizeof path, note, sizeof note);
        if (found == 1)
            return 0;
        if (found == 2) /* restarting would overwrite them and append a second history to metrics.jsonl */
            prefopt_err_set(&err, "%s: no usable checkpoint (%s): move them away or pass --resume never to start "
                                  "from step 1", t->ckpt_dir, note);
        FAIL_IF(t, 0, &err);
        if (note[0] && t->g.world_rank == 0)
            fprintf(stderr, "prefopt: warning: --resume auto: skipped %s; resuming from %s\n", note, path);
    } else
        snprintf(path, sizeof path, "%s", r);
    prefopt_train_state st = {0};
    size_t n = 0;
    const int sharded = t->dps.zero && t->g.dp_size > 1;
    float *mfull = sharded ? prefopt_model_grad_data(t->policy, &n) : t->adam.m, *vfull = t->adam.v;
    if (sharded) /* whole moments in the file: loaded whole, then each replica keeps its shard */
        vfull = prefopt_xmalloc(sizeof(float) * (n + 1), "AdamW moments from the checkpoint");
    prefopt_ckpt_load(path, t->policy, mfull, vfull, &st, &err);
    if (sharded && !err.set)
        prefopt_dp_sync_load_moments(&t->dps, mfull, vfull);
    if (sharded)
        free(vfull);
    if (sharded)
        prefopt_model_zero_grad(t->policy);
    FAIL_IF(t, 0, &err);
    t->resumed_config = st.train_config;
    snprintf(t->resumed_from, sizeof t->resumed_from, "%s", path);
    t->step = st.step;
    t->adam.step = st.step;
    prefopt_ds_cursor c;
    prefopt_ds_loader_get_cursor(t->loader, &c);
    int64_t v[PREFOPT_DS_CURSOR_NVALUES];
    prefopt_ds_cursor_to_values(&c, v);
    /* checkpoints before issue 22 saved 4 values: the examples and bucket window are then this run's */
    int n_saved = st.cursor[4] > 0 ? PREFOPT_DS_CURSOR_NVALUES : 4;
    for (int i = 0; i < n_saved; i++)
        v[i] = st.cursor[i];
    prefopt_ds_cursor_from_values(v, &c);
    if (prefopt_ds_loader_set_cursor(t->loader, &c, &err)) {
        prefopt_err e2 = {0};
        prefopt_err_set(&e2, "%s: resuming with --data %s: %s", path, t->p->data, err.msg);
        err = e2;
    }
    FAIL_IF(t, 0, &err);
    if (t->live_ref && t->obj.p.ref_sync_steps > 0) {
        char rp[4200];
        ref_path(rp, sizeof rp, t, st.step);
        prefopt_model_file_load(t->ref, rp, &err);
        FAIL_IF(t, 0, &err);
    }
    if (t->g.world_rank == 0)
        printf("resumed from %s at step %ld\n", path, t->step);
    return 1;
}

/* A resumed run continues the run of its checkpoint: options that change the math must match, or be allowed to
 * change (--allow-config-change, recorded in metrics.jsonl). config.ini is written only after this check, so a
 * refused resume leaves the run directory as it was. */
static void record_config(trainer *t)
{
    prefopt_err err = {0};
    if (t->resumed_config) {
        char diff[1536];
        cJSON *changes = cJSON_CreateObject();
        int n = prefopt_train_config_diff(t->resumed_config, t->config_text, diff, sizeof diff, changes);
        if (n && !t->p->allow_config_change)
            prefopt_err_set(&err, "%s: resuming with options that change the run: %s (give --allow-config-change "
                                  "to continue with them, or start another --run-dir)", t->resumed_from, diff);
        else if (n) {
            if (t->g.world_rank == 0)
                fprintf(stderr, "prefopt: warning: resumed at step %ld with changed options (--allow-config-change): "
                                "%s\n", t->step, diff);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "step", (double)t->step);
            cJSON_AddItemToObject(o, "config_change", changes);
            changes = NULL;
            log_line(t, o);
        }
        cJSON_Delete(changes);
        free(t->resumed_config);
        t->resumed_config = NULL;
    }
    FAIL_IF(t, 0, &err);
    if (t->g.world_rank == 0) {
        char path[4200], tmp[4300];
        snprintf(path, sizeof path, "%s/config.ini", t->p->run_dir);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "w");
        int bad = !f || fputs(t->config_text, f) < 0;
        if (f)
            bad |= fclose(f) != 0;
        if (bad || rename(tmp, path)) {
            unlink(tmp);
            prefopt_err_set(&err, "%s: cannot write", path);
        }
    }
    FAIL_IF(t, 0, &err);
}

/* metrics.jsonl keeps the rows of the history that led to the state trained from: those of steps after the
 * checkpoint (about to be replayed), or all of them on a fresh start, go */
static void trim_metrics(trainer *t)
{
    prefopt_err err = {0};
    long dropped = 0;
    if (t->g.world_rank == 0 && !prefopt_metrics_truncate(t->metrics_path, t->step, &dropped, &err) && dropped)
        printf("%s: dropped %ld rows after step %ld (they are trained again)\n", t->metrics_path, dropped, t->step);
    FAIL_IF(t, 0, &err);
}

/* ---- set-up ------------------------------------------------------------------------------------------------ */

static void setup(trainer *t, const prefopt_opt *opts, int nopts)
{
    prefopt_train_params *p = t->p;
    prefopt_err err = {0};
    int world;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    int tp = p->grid_rows * p->grid_cols;
    int dp = p->dp > 0 ? p->dp : (tp > 0 ? world / tp : 0);
    if (!*p->data)
        prefopt_err_set(&err, "train needs --data (an HDF5 dataset from prefopt pack)");
    else
        prefopt_train_check_params(p, &err); /* ranges, paths, aliasing: before anything runs */
    if (err.set || prefopt_grid_init(&t->g, MPI_COMM_WORLD, p->grid_rows, p->grid_cols, dp, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_precision_setup(&p->prec, &t->g, &err);
    if (prefopt_agree(t->g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_banner(stdout, &t->g);
    prefopt_stop_install();

    prefopt_objective_init(&t->obj, &p->obj, &err);
    if (!err.set)
        prefopt_train_batch_layout(p, dp, &t->micro, &err);
    t->eval_micro = p->eval_batch_size > 0 ? p->eval_batch_size : t->micro;
    FAIL_IF(t, 0, &err);

    snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", p->run_dir);
    snprintf(t->metrics_path, sizeof t->metrics_path, "%s/metrics.jsonl", p->run_dir);
    /* one run per directory (config.ini is written after the resume check: record_config) */
    if (t->g.world_rank == 0 && !prefopt_mkdirs(t->ckpt_dir, &err))
        prefopt_run_lock(p->run_dir, &err);
    FAIL_IF(t, 0, &err);
    t->config_text = prefopt_train_config_text(p, &t->obj, opts, nopts);

    /* the model config first: the dataset is checked against its vocabulary and tokenizer */
    prefopt_model_config cfg;
    int have_init = *p->init != '\0', tok_vocab = 0;
    if (have_init && p->tokenizer && *p->tokenizer)
        prefopt_err_set(&err, "--tokenizer %s: a model trained from --init keeps the tokenizer of %s (--tokenizer is "
                              "for a model trained from scratch)", p->tokenizer, p->init);
    else if (have_init) /* one rank opens the file, the others get a broadcast */
        prefopt_model_file_read_header(p->init, t->g.world, &cfg, &t->tok, &err);
    else if (p->tokenizer && *p->tokenizer)
        prefopt_train_tokenizer(p->tokenizer, &t->tok, &tok_vocab, &err);
    else
        snprintf(t->tok.identity, sizeof t->tok.identity, "byte");
    FAIL_IF(t, 0, &err);
    prefopt_ds_expect ex = {have_init ? cfg.vocab_size : tok_vocab, t->tok.identity, 0};
    prefopt_dataset_open(p->data, MPI_COMM_WORLD, &ex, &t->ds, &err);
    FAIL_IF(t, 0, &err);
    const prefopt_ds_info *info = prefopt_dataset_info(t->ds);
    /* SFT also runs on pairs (on the chosen answers: the "SFT on chosen" baseline) */
    static const prefopt_layout want[] = {PREFOPT_LAYOUT_PAIRS, PREFOPT_LAYOUT_UNPAIRED, PREFOPT_LAYOUT_SFT};
    if (want[info->kind] != t->obj.layout && !(t->obj.layout == PREFOPT_LAYOUT_SFT && info->kind == PREFOPT_DS_PAIRS))
        prefopt_err_set(&err, "%s: a '%s' dataset does not fit --loss %s", p->data, prefopt_ds_kind_name(info->kind),
                        p->obj.loss);
    if (!have_init && !err.set && !prefopt_arch_config(&cfg, &p->arch, info, &err) && tok_vocab > 0)
        cfg.vocab_size = tok_vocab; /* the tokenizer's whole vocabulary, whatever ids the data happens to use */
    if (!err.set)
        prefopt_lora_resolve(&p->lora, cfg.arch, &t->lora, &err);
    if (!err.set && t->lora.r > 0 && *p->ref_model)
        prefopt_err_set(&err, "--ref-model with --lora-r: the reference of a LoRA run is its base (--init) with the "
                              "adapters off");
    if (!err.set && t->lora.r > 0 && p->obj.ref_sync_steps > 0)
        prefopt_err_set(&err, "--ref-sync-steps (TR-DPO) with --lora-r: the reference is the frozen base");
    FAIL_IF(t, 0, &err);
    if (*p->eval_data) {
        ex.vocab_size = cfg.vocab_size; /* from scratch too: the model's vocabulary is the training data's */
        prefopt_dataset_open(p->eval_data, MPI_COMM_WORLD, &ex, &t->eval_ds, &err);
        FAIL_IF(t, 0, &err);
        prefopt_ds_kind ek = prefopt_dataset_info(t->eval_ds)->kind;
        if (ek != info->kind)
            prefopt_err_set(&err, "%s: a '%s' dataset cannot evaluate training on '%s' data (%s)", p->eval_data,
                            prefopt_ds_kind_name(ek), prefopt_ds_kind_name(info->kind), p->data);
        else if (prefopt_dataset_info(t->eval_ds)->num_examples == 0) /* found now, not after the last step */
            prefopt_err_set(&err, "%s: the dataset has no examples (--eval-data)", p->eval_data);
        FAIL_IF(t, 0, &err);
    }

    /* validated by all ranks together (each scanned a share of the tokens); from now on each replica's grid reads
     * its own batches, so a step's read is collective over tp_size ranks, not the world */
    prefopt_err eerr = {0}; /* both calls on every rank: each closes its file collectively over the world */
    prefopt_dataset_set_comm(t->ds, t->g.tp, &err);
    if (t->eval_ds && prefopt_dataset_set_comm(t->eval_ds, t->g.tp, &eerr) && !err.set)
        err = eerr;
    FAIL_IF(t, 0, &err);

    /* the reference: precomputed log-probs when the dataset has them (and nothing else needs the model) */
    int precomputed = p->use_precomputed_ref && info->has_ref && !t->obj.uses_kl && p->obj.ref_sync_steps == 0 &&
                      (!t->eval_ds || prefopt_dataset_info(t->eval_ds)->has_ref);
    t->live_ref = (t->obj.uses_reference || t->obj.uses_kl) && !precomputed;
    t->lora_ref = t->live_ref && t->lora.r > 0;

    /* State the memory the run needs and stop now, with the option that helps, if a rank cannot have it */
    double mem_limit = prefopt_mem_parse(p->memory_limit);
    if (mem_limit < 0)
        prefopt_err_set(&err, "--memory-limit '%s': expected a size such as 12G, 512M or 0", p->memory_limit);
    FAIL_IF(t, 0, &err);
    prefopt_mem_layout ml = {p->grid_rows * p->grid_cols, t->micro,
                             prefopt_mem_max_row(t->ds, t->obj.uses_kl, p->pad_multiple), t->live_ref,
                             p->activation_checkpoint, (double)p->logits_budget_mib * (1 << 20),
                             prefopt_precision_is_bf16(), !(t->obj.p.ref_sync_steps > 0), dp, p->dpsync.zero_stage,
                             p->dpsync.reduce_dtype && !strcmp(p->dpsync.reduce_dtype, "bf16"),
                             t->lora.r > 0 ? &t->lora : NULL, prefopt_mem_process_rss(), omp_get_max_threads()};
    prefopt_mem_estimate me;
    prefopt_memcheck_train(&cfg, &ml, t->g.world, mem_limit, &me, &err);
    FAIL_IF(t, 0, &err);
    if (t->g.world_rank == 0) {
        const double M = 1.0 / (1 << 20);
        if (t->lora.r > 0) {
            prefopt_mem_layout full = ml;
            full.lora = NULL;
            full.live_ref = t->live_ref;
            prefopt_mem_estimate fe;
            prefopt_mem_estimate_train(&cfg, &full, &fe);
            printf("LoRA: r %d, alpha %g (scale %g), dropout %g, targets %s | per rank: gradients + AdamW %.1f MiB "
                   "instead of %.1f, reference %.1f instead of %.1f => %.1f MiB instead of %.1f (%.1fx less)\n",
                   t->lora.r, (double)t->lora.alpha, (double)(t->lora.alpha / (float)t->lora.r),
                   (double)t->lora.dropout, *p->lora.targets ? p->lora.targets : "(PEFT default)",
                   (me.grads + me.adam) / (1 << 20), (fe.grads + fe.adam) / (1 << 20), me.reference / (1 << 20),
                   fe.reference / (1 << 20), me.total / (1 << 20), fe.total / (1 << 20), fe.total / me.total);
        }
        printf("model: %s, %d layers, hidden %d, %d heads (%d kv), vocab %d | reference: %s\n"
               "memory per rank (estimated before allocating, rows up to %lld tokens): weights %.1f MiB, grads %.1f, "
               "AdamW %.1f%s, reference %.1f, activations %.1f, dp buffers %.1f, workspace %.1f, process %.1f => %.1f MiB\n",
               cfg.hf_model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size,
               t->lora_ref ? "the base (adapters off)" : t->live_ref ? "model on the same ranks"
                                                                     : precomputed ? "precomputed log-probs" : "none",
               (long long)ml.seq_len, me.weights * M, me.grads * M, me.adam * M,
               p->dpsync.zero_stage && dp > 1 ? " (1/dp shard)" : "", me.reference * M, me.activations * M,
               me.comm * M, me.workspace * M, ml.process * M, me.total * M);
        fflush(stdout);
    }

    prefopt_model_options mo = {1, p->activation_checkpoint, 0, 0, 0, prefopt_precision_is_bf16()};
    t->policy = prefopt_model_create_lora(&cfg, &t->g, &mo, t->lora.r > 0 ? &t->lora : NULL, &err);
    FAIL_IF(t, !t->policy, &err);
    if (t->live_ref && !t->lora_ref) {
        prefopt_model_options ro = {0, 0, 0, 0, 0, prefopt_precision_is_bf16()};
        t->ref = prefopt_model_create(&cfg, &t->g, &ro, &err);
        FAIL_IF(t, !t->ref, &err);
    }
    if (p->logits_budget_mib > 0) {
        prefopt_model_set_logits_budget(t->policy, (size_t)p->logits_budget_mib << 20);
        if (t->ref)
            prefopt_model_set_logits_budget(t->ref, (size_t)p->logits_budget_mib << 20);
    }
    if (p->completion_logits && !prefopt_objective_reads_all_tokens(&t->obj)) {
        prefopt_model_set_completion_logits_only(t->policy, 1);
        if (t->ref)
            prefopt_model_set_completion_logits_only(t->ref, 1);
    }
    if (have_init)
        prefopt_model_file_load(t->policy, p->init, &err);
    else
        prefopt_model_init_random(t->policy, (uint64_t)p->seed);
    if (!err.set && t->lora.r > 0 && *p->lora.adapter)
        prefopt_lora_adapter_load(t->policy, p->lora.adapter, &err); /* e.g. an SFT adapter, for DPO */
    else if (!err.set && t->lora.r > 0)
        prefopt_model_init_lora(t->policy, (uint64_t)p->seed); /* PEFT's init: A Kaiming-uniform, B zero */
    FAIL_IF(t, 0, &err);
    if (t->live_ref && !t->lora_ref) {
        if (*p->ref_model)
            prefopt_model_file_load(t->ref, p->ref_model, &err);
        else
            prefopt_model_copy_weights(t->ref, t->policy);
        FAIL_IF(t, 0, &err);
        /* a bf16 run holds the frozen reference in bf16 only; TR-DPO mixes into it in fp32 and keeps its masters */
        if (!(t->obj.p.ref_sync_steps > 0))
            prefopt_model_keep_bf16_only(t->ref);
    }

    size_t n = 0;
    prefopt_model_train_data(t->policy, &n); /* with LoRA: the adapters only */
    int nranges = 0;
    prefopt_param_range *ranges = prefopt_param_ranges(t->policy, &nranges);
    prefopt_adamw_config ac = {p->optim.adam_beta1, p->optim.adam_beta2, p->optim.adam_eps, p->optim.weight_decay};
    prefopt_adamw_init(&t->adam, &ac, n, ranges, nranges, &err);
    free(ranges);
    FAIL_IF(t, 0, &err);
    if (prefopt_dp_sync_init(&t->dps, &p->dpsync, t->policy, &t->adam, &t->g, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);

    t->loader = make_loader(t, t->ds, p->batch_size, t->micro, 1, 1);
    int64_t spe = prefopt_ds_loader_steps_per_epoch(t->loader);
    t->total_steps = p->max_steps > 0 ? p->max_steps : (long)ceil(p->epochs * (double)spe);
    long warm = p->optim.warmup_steps > 0 ? p->optim.warmup_steps
                                         : prefopt_warmup_steps(t->total_steps, p->optim.warmup_ratio);
    prefopt_schedule_init(&t->sched, p->optim.lr_scheduler, p->optim.lr, warm, t->total_steps, p->optim.min_lr_ratio,
                          &err);
    FAIL_IF(t, 0, &err);
    t->peak = p->peak_gflops > 0 ? p->peak_gflops * 1e9 : prefopt_measure_sgemm_peak(t->g.world);
    if (t->g.world_rank == 0) {
        printf("data: %s, %lld %s examples, %lld steps/epoch of %d (micro-batch %d x %d accumulated x %d replicas) | "
               "%ld steps | %s peak %.1f GFLOP/s per rank%s\n",
               p->data, (long long)info->num_examples, prefopt_ds_kind_name(info->kind), (long long)spe,
               p->batch_size, t->micro, (p->batch_size / dp + t->micro - 1) / t->micro, dp, t->total_steps,
               prefopt_precision_is_bf16() ? "bf16 matmul" : "sgemm", t->peak * 1e-9,
               p->peak_gflops > 0 ? " (--peak-gflops)" : "");
        fflush(stdout);
    }
}

/* Start-up, slowest rank: MPI_Init, then set-up and resume (grid, files, model, memory check) up to the first step.
 * One reduction over the world; README "Scaling" lists the figures against the number of ranks. */
static void report_startup(trainer *t)
{
    double t0 = prefopt_start_time(0), t1 = prefopt_start_time(1), now = prefopt_now();
    if (t0 <= 0)
        return;
    double v[2] = {t1 - t0, now - t1};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_MAX, t->g.world);
    if (t->g.world_rank == 0) {
        printf("start-up: %.2f s (MPI_Init %.2f s, set-up %.2f s; slowest rank of %d)\n", v[0] + v[1], v[0], v[1],
               t->g.world_size);
        fflush(stdout);
    }
}

static void teardown(trainer *t)
{
    prefopt_ds_loader_free(t->loader);
    prefopt_dataset_close(t->ds);
    if (t->eval_ds)
        prefopt_dataset_close(t->eval_ds);
    prefopt_dp_sync_free(&t->dps);
    prefopt_adamw_free(&t->adam);
    prefopt_model_free(t->policy);
    if (t->ref)
        prefopt_model_free(t->ref);
    prefopt_tokenizer_record_free(&t->tok);
    free(t->config_text);
    prefopt_grid_free(&t->g);
}

/* ---- the loop ---------------------------------------------------------------------------------------------- */

static void progress(trainer *t, const prefopt_metrics *m, double lr, double tok_s, double flops_s, double t_start)
{
    double el = prefopt_now() - t_start;
    char e1[32], e2[32], what[160];
    double left = t->total_steps > t->step ? el / (double)t->step * (double)(t->total_steps - t->step) : 0;
    /* the figures that matter for the objective: preference accuracy and margin, KTO's KL, or SFT's token accuracy */
    if (prefopt_metrics_has(m, PREFOPT_M_REWARDS_ACCURACIES))
        snprintf(what, sizeof what, "acc %.3f | margin %.4f | logps/chosen %.2f",
                 prefopt_metrics_value(m, PREFOPT_M_REWARDS_ACCURACIES),
                 prefopt_metrics_value(m, PREFOPT_M_REWARDS_MARGINS), prefopt_metrics_value(m, PREFOPT_M_LOGPS_CHOSEN));
    else if (prefopt_metrics_has(m, PREFOPT_M_KL))
        snprintf(what, sizeof what, "kl %.4f | rewards/chosen %.4f", prefopt_metrics_value(m, PREFOPT_M_KL),
                 prefopt_metrics_value(m, PREFOPT_M_REWARDS_CHOSEN));
    else
        snprintf(what, sizeof what, "token acc %.3f", prefopt_metrics_value(m, PREFOPT_M_MEAN_TOKEN_ACCURACY));
    printf("step %ld/%ld | loss %.4f | %s | lr %.2e | %.0f tok/s | %.2f GFLOP/s | MFU %.3f | %s elapsed | ETA %s\n",
           t->step, t->total_steps, prefopt_metrics_value(m, PREFOPT_M_LOSS), what, lr, tok_s, flops_s * 1e-9,
           flops_s / (t->peak * t->g.world_size), prefopt_format_duration(el, e1, sizeof e1),
           prefopt_format_duration(left, e2, sizeof e2));
    fflush(stdout);
}

int prefopt_train_run(prefopt_train_params *p, const prefopt_opt *opts, int nopts)
{
    trainer T, *t = &T;
    memset(t, 0, sizeof T);
    t->p = p;
    setup(t, opts, nopts);
    try_resume(t);
    record_config(t);
    trim_metrics(t); /* after the resume check: a refused resume leaves metrics.jsonl as it was */
    report_startup(t);

    int nranges = 0;
    prefopt_param_range *ranges = prefopt_param_ranges(t->policy, &nranges);
    double t_start = prefopt_now();
    long start_step = t->step, consecutive_bad = 0, skipped = 0;
    int rc = PREFOPT_EXIT_OK;
    /* Test hook: a tiny model finishes its steps faster than a signal can be aimed at the middle of the run;
     * PREFOPT_TEST_STEP_DELAY_MS slows every step so tests of the stop protocol are not races. */
    const char *delay_env = getenv("PREFOPT_TEST_STEP_DELAY_MS");
    long delay_ms = delay_env ? atol(delay_env) : 0;
    while (t->step < t->total_steps) {
        if (delay_ms > 0)
            nanosleep(&(struct timespec){delay_ms / 1000, (delay_ms % 1000) * 1000000L}, NULL);
        if (prefopt_stop_agreed(t->g.world)) {
            /* before this run's first step there is nothing new to save (the latest checkpoint, if any, stays) */
            int fresh = t->step == start_step;
            if (t->g.world_rank == 0)
                printf("stop signal: %s at step %ld and exiting with %d (requeue)\n",
                       fresh ? "nothing to checkpoint" : "checkpointing", t->step, PREFOPT_EXIT_REQUEUE);
            if (!fresh)
                save_checkpoint(t);
            rc = PREFOPT_EXIT_REQUEUE;
            break;
        }
        prefopt_trace_step(t->step + 1);
        prefopt_region_enter("step");
        double t0 = prefopt_now();
        prefopt_ds_step st;
        prefopt_err err = {0};
        prefopt_region_enter("data_read");
        prefopt_ds_loader_next(t->loader, &st, &err);
        prefopt_region_exit("data_read");
        FAIL_IF(t, 0, &err);
        double tokens = 0, flops = 0;
        for (int k = 0; k < st.nmicro; k++)
            tokens += (double)(st.micro[k].prompt_tokens + st.micro[k].completion_tokens);
        prefopt_metrics m;
        prefopt_metrics_reset(&m);
        prefopt_model_zero_grad(t->policy);
        int nonfinite = 0;
        double t_bwd_end = 0;
        run_step_batches(t, &st, &m, 1, &nonfinite, &flops);
        t_bwd_end = prefopt_now();
        prefopt_region_enter("grad_reduce");
        double norm = prefopt_dp_sync_grads(&t->dps, ranges, nranges);
        prefopt_region_exit("grad_reduce");
        double t_sync = prefopt_now() - t_bwd_end;
        int bad = nonfinite || !isfinite(norm);
        MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, t->g.world);
        double lr = prefopt_schedule_lr(&t->sched, t->step);
        double red[2] = {tokens, flops};
        MPI_Allreduce(MPI_IN_PLACE, red, 2, MPI_DOUBLE, MPI_SUM, t->g.dp);
        prefopt_reduction dp = prefopt_reduction_over(&t->g.dp);
        prefopt_metrics_reduce(&m, &dp);
        t->step++;
        if (bad) {
            skipped++;
            consecutive_bad++;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "step", (double)t->step);
            cJSON_AddStringToObject(o, "skipped", "non-finite loss or gradient");
            /* the examples of the whole global batch: each replica holds its share, gathered over dp */
            int nloc = 0, ntot = 0;
            for (int k = 0; k < st.nmicro; k++)
                nloc += st.micro[k].nexamples;
            int64_t *loc = prefopt_xmalloc(sizeof(int64_t) * ((size_t)nloc + 1), "skipped examples");
            for (int k = 0, i = 0; k < st.nmicro; k++)
                for (int j = 0; j < st.micro[k].nexamples; j++)
                    loc[i++] = st.micro[k].example[j];
            int *cnt = prefopt_xmalloc(sizeof(int) * (size_t)t->g.dp_size, "skipped examples");
            int *disp = prefopt_xmalloc(sizeof(int) * (size_t)t->g.dp_size, "skipped examples");
            MPI_Allgather(&nloc, 1, MPI_INT, cnt, 1, MPI_INT, t->g.dp);
            for (int r = 0; r < t->g.dp_size; r++)
                disp[r] = ntot, ntot += cnt[r];
            int64_t *all = prefopt_xmalloc(sizeof(int64_t) * ((size_t)ntot + 1), "skipped examples");
            MPI_Allgatherv(loc, nloc, MPI_INT64_T, all, cnt, disp, MPI_INT64_T, t->g.dp);
            cJSON *ex = cJSON_AddArrayToObject(o, "examples");
            for (int i = 0; i < ntot; i++)
                cJSON_AddItemToArray(ex, cJSON_CreateNumber((double)all[i]));
            free(loc), free(cnt), free(disp), free(all);
            if (t->g.world_rank == 0)
                fprintf(stderr, "prefopt: warning: step %ld skipped: non-finite loss or gradient (%ld in a row; "
                                "examples in metrics.jsonl)\n", t->step, consecutive_bad);
            log_line(t, o);
            prefopt_ds_step_free(&st);
            if (consecutive_bad >= p->max_nonfinite) {
                prefopt_err_set(&err, "%ld consecutive steps had a non-finite loss or gradient (last: step %ld); "
                                      "stopping (lower --lr, check the data, or raise --max-nonfinite)",
                                consecutive_bad, t->step);
                prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
            }
            prefopt_region_exit("step");
            continue;
        }
        consecutive_bad = 0;
        prefopt_region_enter("optimizer");
        prefopt_dp_sync_step(&t->dps, lr, prefopt_clip_coef(norm, p->optim.max_grad_norm));
        prefopt_model_weights_changed(t->policy); /* bf16: the copies, once per optimizer step */
        prefopt_region_exit("optimizer");
        prefopt_gradsync_stats gst;
        prefopt_gradsync_take_stats(t->dps.gs, &gst);
        if (t->live_ref && prefopt_objective_ref_sync_due(&t->obj, t->step)) {
            prefopt_dp_sync_weights_ready(&t->dps);
            prefopt_model_mix_weights(t->ref, t->policy, (float)t->obj.p.ref_mixup_alpha);
        }
        double dt = prefopt_now() - t0;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "step", (double)t->step);
        cJSON_AddNumberToObject(o, "epoch", (double)st.epoch + (double)(st.step + 1) /
                                                  (double)prefopt_ds_loader_steps_per_epoch(t->loader));
        prefopt_metrics_to_json(o, &m, "");
        cJSON_AddNumberToObject(o, "learning_rate", lr);
        cJSON_AddNumberToObject(o, "grad_norm", norm);
        cJSON_AddNumberToObject(o, "step_time", dt);
        cJSON_AddNumberToObject(o, "tokens_per_s", red[0] / dt);
        cJSON_AddNumberToObject(o, "gflops", red[1] / dt * 1e-9);
        cJSON_AddNumberToObject(o, "mfu", red[1] / dt / (t->peak * t->g.world_size));
        if (t->g.dp_size > 1) {
            /* communication backward did not hide (polls during backward, the wait after it, the norm's reduction),
             * and the distributed optimizer's weight gather: the slowest rank's */
            double ex[3] = {gst.exposed, t_sync - gst.finish, gst.gather};
            MPI_Reduce(t->g.world_rank ? ex : MPI_IN_PLACE, ex, 3, MPI_DOUBLE, MPI_MAX, 0, t->g.world);
            cJSON_AddNumberToObject(o, "grad_comm_exposed_s", ex[0] + ex[1]);
            cJSON_AddNumberToObject(o, "param_gather_s", ex[2]);
            cJSON_AddNumberToObject(o, "grad_buckets", gst.nbuckets);
            cJSON_AddNumberToObject(o, "grad_buckets_early", gst.early); /* rank 0's: started during backward */
        }
        if (skipped)
            cJSON_AddNumberToObject(o, "skipped_steps", (double)skipped);
        log_line(t, o);
        prefopt_ds_step_free(&st);
        if (t->g.world_rank == 0 && (t->step % p->log_interval == 0 || t->step == t->total_steps ||
                                     t->step == start_step + 1))
            progress(t, &m, lr, red[0] / dt, red[1] / dt, t_start);
        if (t->eval_ds && p->eval_interval > 0 && t->step % p->eval_interval == 0)
            evaluate(t);
        if (p->save_interval > 0 && t->step % p->save_interval == 0 && t->step < t->total_steps)
            save_checkpoint(t);
        prefopt_region_exit("step");
    }
    free(ranges);
    if (rc == PREFOPT_EXIT_OK) {
        if (t->eval_ds && (p->eval_interval <= 0 || t->step % p->eval_interval))
            evaluate(t);
        save_checkpoint(t);
        char mp[4200];
        snprintf(mp, sizeof mp, "%s/model.h5", p->run_dir);
        prefopt_err err = {0};
        prefopt_dp_sync_weights_ready(&t->dps);
        if (t->lora.r > 0) /* model.h5 is a plain model (generate, eval, export); the adapters are in the checkpoint */
            prefopt_model_merge_lora(t->policy);
        prefopt_model_file_save(t->policy, mp, &t->tok, &err);
        FAIL_IF(t, 0, &err);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double rss = (double)ru.ru_maxrss / 1024.0, maxrss = 0;
        MPI_Allreduce(&rss, &maxrss, 1, MPI_DOUBLE, MPI_MAX, t->g.world);
        if (t->g.world_rank == 0)
            printf("done: %ld steps (%ld skipped) in %.1f s | model %s | peak RSS %.0f MiB per rank\n", t->step,
                   skipped, prefopt_now() - t_start, mp, maxrss);
    }
    teardown(t);
    return rc;
}
