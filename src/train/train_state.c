/* The run's state around the step loop of `prefopt train`: metrics.jsonl lines, the config record (config.ini,
 * and the options a resume changed), checkpoints (with TR-DPO's moving reference beside them) and resume. */
#define _GNU_SOURCE
#include "train_internal.h"

void train_log_line(trainer *t, cJSON *o)
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

void train_save_checkpoint(trainer *t)
{
    prefopt_ds_prefetch_wait(t->pf); /* HDF5 is not thread-safe: the prefetch thread is outside it from here */
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

int train_try_resume(trainer *t)
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
    v[6] = st.cursor[6]; /* the sample order's version: 0 before issue 17 (refused when shuffling) */
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
void train_record_config(trainer *t)
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
            train_log_line(t, o);
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
void train_trim_metrics(trainer *t)
{
    prefopt_err err = {0};
    long dropped = 0;
    if (t->g.world_rank == 0 && !prefopt_metrics_truncate(t->metrics_path, t->step, &dropped, &err) && dropped)
        printf("%s: dropped %ld rows after step %ld (they are trained again)\n", t->metrics_path, dropped, t->step);
    FAIL_IF(t, 0, &err);
}
