/* The training loop of `prefopt train`: data, policy and reference on one grid per replica, objective, AdamW,
 * metrics, held-out evaluation and the stop-signal protocol of the job scripts. Set-up and tear-down are in
 * train_setup.c, checkpoints, resume and the config record in train_state.c. */
#define _GNU_SOURCE
#include "train_internal.h"

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


/* One pass over the held-out set; metrics with the "eval/" prefix. Loss: the example-weighted mean of the
 * per-batch losses (each normalised over its own batch). */
static void evaluate(trainer *t)
{
    prefopt_ds_prefetch_wait(t->pf); /* HDF5 is not thread-safe: the prefetch thread is outside it from here */
    prefopt_region_enter("eval");
    const int dp = t->g.dp_size;
    /* file order, every example once: the last batch takes the remainder (replicas may get none) */
    const int global = t->eval_micro * dp;
    prefopt_ds_loader *L = train_make_loader(t, t->eval_ds, global, t->eval_micro, 0, 0);
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
    train_log_line(t, o);
    prefopt_region_exit("eval");
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
    train_setup(t, opts, nopts);
    train_try_resume(t);
    train_record_config(t);
    train_trim_metrics(t); /* after the resume check: a refused resume leaves metrics.jsonl as it was */
    train_report_startup(t);

    if (t->p->data_prefetch) { /* from the resumed cursor: the thread reads the first step now */
        prefopt_err err = {0};
        prefopt_ds_prefetch_start(t->ds, t->loader, &t->pf, &err);
        FAIL_IF(t, 0, &err);
    }
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
                train_save_checkpoint(t);
            rc = PREFOPT_EXIT_REQUEUE;
            break;
        }
        prefopt_trace_step(t->step + 1);
        prefopt_region_enter("step");
        double t0 = prefopt_now();
        prefopt_ds_step st;
        prefopt_err err = {0};
        prefopt_region_enter("data_read");
        if (t->pf) { /* read while the last step ran; the main loader follows, so checkpoints store this position */
            prefopt_ds_cursor after;
            if (!prefopt_ds_prefetch_next(t->pf, &st, &after, &err))
                prefopt_ds_loader_set_cursor(t->loader, &after, &err);
        } else
            prefopt_ds_loader_next(t->loader, &st, &err);
        prefopt_region_exit("data_read");
        const double t_data = prefopt_now() - t0; /* the step's wait for its batch */
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
            train_log_line(t, o);
            prefopt_ds_step_free(&st);
            if (consecutive_bad >= p->max_nonfinite) {
                prefopt_err_set(&err, "%ld consecutive steps had a non-finite loss or gradient (last: step %ld); "
                                      "stopping (lower --lr, check the data, or raise --max-nonfinite)",
                                consecutive_bad, t->step);
                prefopt_ds_prefetch_wait(t->pf);
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
        /* the wait for the batch (with --data-prefetch only what the thread had not read yet), the communication
         * backward did not hide (polls during backward, the wait after it, the norm's reduction), and the
         * distributed optimizer's weight gather: the slowest rank's */
        double ex[4] = {gst.exposed, t_sync - gst.finish, gst.gather, t_data};
        MPI_Reduce(t->g.world_rank ? ex : MPI_IN_PLACE, ex, 4, MPI_DOUBLE, MPI_MAX, 0, t->g.world);
        cJSON_AddNumberToObject(o, "data_s", ex[3]);
        if (t->g.dp_size > 1) {
            cJSON_AddNumberToObject(o, "grad_comm_exposed_s", ex[0] + ex[1]);
            cJSON_AddNumberToObject(o, "param_gather_s", ex[2]);
            cJSON_AddNumberToObject(o, "grad_buckets", gst.nbuckets);
            cJSON_AddNumberToObject(o, "grad_buckets_early", gst.early); /* rank 0's: started during backward */
        }
        if (skipped)
            cJSON_AddNumberToObject(o, "skipped_steps", (double)skipped);
        train_log_line(t, o);
        prefopt_ds_step_free(&st);
        if (t->g.world_rank == 0 && (t->step % p->log_interval == 0 || t->step == t->total_steps ||
                                     t->step == start_step + 1))
            progress(t, &m, lr, red[0] / dt, red[1] / dt, t_start);
        if (t->eval_ds && p->eval_interval > 0 && t->step % p->eval_interval == 0)
            evaluate(t);
        if (p->save_interval > 0 && t->step % p->save_interval == 0 && t->step < t->total_steps)
            train_save_checkpoint(t);
        prefopt_region_exit("step");
    }
    free(ranges);
    prefopt_ds_prefetch_wait(t->pf); /* the step it read ahead is not used; HDF5 is the main thread's again */
    if (rc == PREFOPT_EXIT_OK) {
        if (t->eval_ds && (p->eval_interval <= 0 || t->step % p->eval_interval))
            evaluate(t);
        train_save_checkpoint(t);
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
    train_teardown(t);
    return rc;
}
