/* prefopt eval: summed completion log-probs of every example under a model (and a reference), the preference
 * metrics over the set, and --store-ref, which writes the model's log-probs into the dataset as precomputed
 * reference log-probs so that training needs no reference model. */
#include "prefopt/banner.h"
#include "prefopt/checkpoint.h"
#include "prefopt/dataset.h"
#include "prefopt/eval.h"
#include "prefopt/regions.h"
#include "prefopt/trace.h"
#include "prefopt/metrics.h"
#include "prefopt/objectives.h"
#include "prefopt/opts.h"
#include "prefopt/runctl.h"
#include "prefopt/train.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Per example: index, then up to two policy sums, two reference sums and a label. */
enum { REC = 6 };

static void fail_if(const prefopt_grid *g, prefopt_err *err)
{
    if (prefopt_agree(g->world, err))
        prefopt_exit_error(err, PREFOPT_EXIT_ERROR);
}

static prefopt_model *load_model(const char *path, const prefopt_model_config *cfg, const prefopt_grid *g,
                                 prefopt_err *err)
{
    prefopt_model_options mo = {0, 0, 0, 0, 0, prefopt_precision_is_bf16()};
    prefopt_model *m = prefopt_model_create(cfg, g, &mo, err);
    if (m && !prefopt_model_file_load(m, path, err))
        prefopt_model_keep_bf16_only(m); /* bf16: the frozen weights as bf16 copies only */
    return m;
}

int prefopt_eval_run(const prefopt_eval_params *p)
{
    const char *model_path = p->model_path, *ref_path = p->ref_path, *data_path = p->data_path,
               *out_path = p->out_path;
    const int grid_rows = p->grid_rows, grid_cols = p->grid_cols, dp = p->dp, batch = p->batch_size,
              store_ref = p->store_ref;
    const prefopt_objective_params op = p->obj;
    prefopt_err err = {0};
    int world;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    int tp = grid_rows * grid_cols;
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, grid_rows, grid_cols, dp > 0 ? dp : (tp > 0 ? world / tp : 0), &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_precision_setup(&p->prec, &g, &err);
    if (prefopt_agree(g.world, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_banner(stderr, &g);

    prefopt_model_config cfg;
    prefopt_tokenizer_record tok = {0};
    /* one rank opens the file, the rest get its config and tokenizer by broadcast (issue 17) */
    prefopt_model_file_read_header(model_path, g.world, &cfg, &tok, &err);
    fail_if(&g, &err);
    prefopt_dataset *ds = NULL;
    prefopt_ds_expect ex = {cfg.vocab_size, tok.identity, 0};
    prefopt_dataset_open(data_path, MPI_COMM_WORLD, &ex, &ds, &err);
    fail_if(&g, &err);
    const prefopt_ds_info info = *prefopt_dataset_info(ds);
    const int paired = info.kind == PREFOPT_DS_PAIRS;

    /* the objective is only for the summary metrics; one that does not fit the data is left out, and says why */
    prefopt_objective obj;
    char obj_text[512] = "", left_out[1200] = "";
    int use_obj = !prefopt_objective_init(&obj, &op, &err);
    if (use_obj)
        prefopt_objective_describe(obj_text, sizeof obj_text, &obj);
    else
        snprintf(left_out, sizeof left_out, "the objective's metrics: %s", err.msg);
    prefopt_err_clear(&err);
    /* the run's own reference when neither --ref nor a stored reference gives one */
    int run_ref_used = 0;
    if (use_obj && !*ref_path && !info.has_ref && (obj.uses_reference || obj.uses_kl) && p->run_ref &&
        *p->run_ref && access(p->run_ref, R_OK) == 0)
        ref_path = p->run_ref, run_ref_used = 1;

    prefopt_model *m = load_model(model_path, &cfg, &g, &err), *ref = NULL;
    fail_if(&g, &err);
    if (*ref_path) {
        ref = load_model(ref_path, &cfg, &g, &err);
        fail_if(&g, &err);
    }
    const int have_ref = ref != NULL || info.has_ref;
    static const prefopt_layout want[] = {PREFOPT_LAYOUT_PAIRS, PREFOPT_LAYOUT_UNPAIRED, PREFOPT_LAYOUT_SFT};
    static const char *const kinds[] = {"pairs", "unpaired", "sft"};
    if (use_obj && want[info.kind] != obj.layout && !(obj.layout == PREFOPT_LAYOUT_SFT && paired)) {
        snprintf(left_out, sizeof left_out, "eval/loss, eval/rewards/*: --loss %s does not fit a '%s' dataset",
                 op.loss, kinds[info.kind]);
        use_obj = 0;
    } else if (use_obj && obj.uses_reference && !have_ref) {
        snprintf(left_out, sizeof left_out, "eval/loss, eval/rewards/* (%s reads reference log-probs): no reference "
                 "(give --ref, store one in the dataset with eval --store-ref, or evaluate a run trained with "
                 "--init); reported without it: eval/logps/*", op.loss);
        use_obj = 0;
    } else if (use_obj && obj.uses_kl) {
        snprintf(left_out, sizeof left_out, "eval/loss, eval/kl, eval/rewards/*: %s's KL estimate is made from "
                 "training batches (mismatched pairs); reported: eval/logps/*", op.loss);
        use_obj = 0;
    }
    if (g.world_rank == 0) {
        if (p->run_config)
            fprintf(stderr, "eval: objective %s, options not given here from %s%s%s%s\n", *obj_text ? obj_text : op.loss,
                    p->run_config, p->run_config_taken && *p->run_config_taken ? " (" : " (all at their defaults",
                    p->run_config_taken && *p->run_config_taken ? p->run_config_taken : "", ")");
        if (run_ref_used)
            fprintf(stderr, "eval: reference %s (the run's)\n", ref_path);
        if (*left_out)
            fprintf(stderr, "eval: left out: %s\n", left_out);
    }

    prefopt_ds_loader_opts lo = {batch * g.dp_size, batch, 0, 0, 0, 0, 8, 0};
    prefopt_ds_loader *L = NULL;
    prefopt_ds_loader_create(ds, &lo, g.dp_rank, g.dp_size, &L, &err);
    fail_if(&g, &err);
    int64_t steps = prefopt_ds_loader_steps_per_epoch(L);
    double *rec = prefopt_xmalloc(sizeof(double) * REC * (size_t)(info.num_examples / g.dp_size + batch + 1), "results");
    int nrec = 0;
    prefopt_metrics total;
    prefopt_metrics_reset(&total);
    double wloss = 0, wsum = 0, t0 = prefopt_now();
    for (int64_t s = 0; s < steps; s++) {
        prefopt_trace_step(s + 1);
        prefopt_region_enter("step");
        prefopt_ds_step st;
        prefopt_region_enter("data_read");
        prefopt_ds_loader_next(L, &st, &err);
        prefopt_region_exit("data_read");
        fail_if(&g, &err);
        prefopt_metrics mstep;
        prefopt_metrics_reset(&mstep);
        prefopt_objective_norm norm;
        memset(&norm, 0, sizeof norm);
        prefopt_unit_stats *pol = prefopt_xcalloc((size_t)st.nmicro + 1, sizeof *pol, "stats");
        double **rl = prefopt_xcalloc((size_t)st.nmicro + 1, sizeof *rl, "stats");
        prefopt_objective_batch *ob = prefopt_xcalloc((size_t)st.nmicro + 1, sizeof *ob, "batches");
        for (int k = 0; k < st.nmicro; k++) {
            const prefopt_ds_batch *mb = &st.micro[k];
            int nu = mb->b.nunits;
            prefopt_unit_stats_alloc(&pol[k], nu);
            prefopt_region_enter("forward");
            prefopt_model_forward(m, &mb->b, &pol[k], &err);
            prefopt_region_exit("forward");
            fail_if(&g, &err);
            rl[k] = prefopt_xcalloc((size_t)nu + 1, sizeof(double), "reference");
            if (ref) {
                prefopt_unit_stats rs;
                prefopt_unit_stats_alloc(&rs, nu);
                prefopt_region_enter("reference");
                prefopt_model_forward(ref, &mb->b, &rs, &err);
                prefopt_region_exit("reference");
                fail_if(&g, &err);
                memcpy(rl[k], rs.logp_completion, sizeof(double) * (size_t)nu);
                prefopt_unit_stats_free(&rs);
            } else if (mb->ref_logps)
                memcpy(rl[k], mb->ref_logps, sizeof(double) * (size_t)nu);
            for (int j = 0; j < mb->nexamples; j++) {
                double *r = rec + REC * nrec++;
                int cu = mb->chosen_unit[j], ru = mb->rejected_unit[j];
                r[0] = (double)mb->example[j];
                r[1] = pol[k].logp_completion[cu];
                r[2] = paired ? pol[k].logp_completion[ru] : NAN;
                r[3] = have_ref ? rl[k][cu] : NAN;
                r[4] = have_ref && paired ? rl[k][ru] : NAN;
                r[5] = mb->label ? mb->label[j] : -1;
            }
            ob[k] = (prefopt_objective_batch){.policy = &pol[k], .nunits = nu, .ref_logp = have_ref ? rl[k] : NULL};
            if (paired && obj.layout == PREFOPT_LAYOUT_SFT) /* SFT on the chosen answers of pairs */
                ob[k].nsft = mb->nexamples, ob[k].sft = mb->chosen_unit;
            else if (paired)
                ob[k].npairs = mb->nexamples, ob[k].chosen = mb->chosen_unit, ob[k].rejected = mb->rejected_unit;
            else if (info.kind == PREFOPT_DS_UNPAIRED)
                ob[k].nexamples = mb->nexamples, ob[k].example = mb->chosen_unit, ob[k].desirable = mb->label;
            else
                ob[k].nsft = mb->nexamples, ob[k].sft = mb->chosen_unit;
            if (use_obj)
                prefopt_objective_count(&norm, &obj, &ob[k]);
        }
        if (use_obj) {
            prefopt_reduction dp = prefopt_reduction_over(&g.dp);
            prefopt_objective_norm_reduce(&norm, &dp);
            for (int k = 0; k < st.nmicro; k++) {
                int nu = st.micro[k].b.nunits;
                double loss, *dc = prefopt_xmalloc(sizeof(double) * (size_t)(nu + 1), "grad"),
                             *da = prefopt_xmalloc(sizeof(double) * (size_t)(nu + 1), "grad");
                if (prefopt_objective_eval(&loss, dc, da, NULL, &mstep, &obj, &ob[k], &norm, &err))
                    prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
                free(dc), free(da);
            }
            prefopt_metrics_reduce(&mstep, &dp);
            double l = prefopt_metrics_value(&mstep, PREFOPT_M_LOSS);
            if (isfinite(l))
                wloss += l * st.global_examples, wsum += st.global_examples;
            mstep.sum[PREFOPT_M_LOSS] = mstep.count[PREFOPT_M_LOSS] = 0;
            prefopt_metrics_merge(&total, &mstep);
        }
        for (int k = 0; k < st.nmicro; k++)
            prefopt_unit_stats_free(&pol[k]), free(rl[k]);
        free(pol), free(rl), free(ob);
        prefopt_ds_step_free(&st);
        prefopt_region_exit("step");
    }
    double dt = prefopt_now() - t0;
    prefopt_ds_loader_free(L);
    prefopt_dataset_close(ds);

    /* one copy of each example's result: tp rank 0 of each replica */
    int send = g.tp_rank == 0 ? nrec : 0, *cnt = prefopt_xcalloc((size_t)world, sizeof(int), "counts");
    int *dsp = prefopt_xcalloc((size_t)world, sizeof(int), "displs");
    MPI_Allgather(&send, 1, MPI_INT, cnt, 1, MPI_INT, g.world);
    int all = 0;
    for (int r = 0; r < world; r++)
        dsp[r] = all * REC, all += cnt[r], cnt[r] *= REC;
    double *allrec = prefopt_xmalloc(sizeof(double) * REC * (size_t)(all + 1), "results");
    MPI_Allgatherv(rec, send * REC, MPI_DOUBLE, allrec, cnt, dsp, MPI_DOUBLE, g.world);

    if (store_ref) {
        /* the model just scored becomes the reference of this dataset */
        int64_t *idx = prefopt_xmalloc(sizeof(int64_t) * (size_t)(send + 1), "store-ref");
        double *v0 = prefopt_xmalloc(sizeof(double) * (size_t)(send + 1), "store-ref");
        double *v1 = prefopt_xmalloc(sizeof(double) * (size_t)(send + 1), "store-ref");
        for (int i = 0; i < send; i++)
            idx[i] = (int64_t)rec[REC * i], v0[i] = rec[REC * i + 1], v1[i] = rec[REC * i + 2];
        const double *vals[2] = {v0, v1};
        prefopt_dataset_store_ref(data_path, g.world, send, idx, vals, model_path, &err);
        fail_if(&g, &err);
        if (g.world_rank == 0)
            fprintf(stderr, "eval: stored reference log-probs of %s into %s\n", model_path, data_path);
        free(idx), free(v0), free(v1);
    }

    if (use_obj) {
        total.sum[PREFOPT_M_LOSS] = wsum > 0 ? wloss / wsum : NAN;
        total.count[PREFOPT_M_LOSS] = 1;
    }
    if (g.world_rank == 0 && *out_path) {
        /* sort by example index: replicas hold strided shares */
        double *ord = prefopt_xmalloc(sizeof(double) * REC * (size_t)(info.num_examples + 1), "order");
        for (int i = 0; i < all; i++)
            memcpy(ord + REC * (size_t)allrec[REC * i], allrec + REC * i, sizeof(double) * REC);
        size_t cap = 1 << 16, used = 0;
        char *buf = prefopt_xmalloc(cap, "output");
        for (int64_t i = 0; i < info.num_examples; i++) {
            const double *r = ord + REC * i;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "index", (double)i);
            cJSON_AddNumberToObject(o, paired ? "chosen_logps" : "completion_logps", r[1]);
            if (paired)
                cJSON_AddNumberToObject(o, "rejected_logps", r[2]);
            if (have_ref) {
                cJSON_AddNumberToObject(o, paired ? "ref_chosen_logps" : "ref_completion_logps", r[3]);
                if (paired)
                    cJSON_AddNumberToObject(o, "ref_rejected_logps", r[4]);
            }
            if (r[5] >= 0)
                cJSON_AddBoolToObject(o, "label", r[5] > 0);
            char *line = cJSON_PrintUnformatted(o);
            size_t l = strlen(line);
            while (used + l + 2 > cap)
                cap *= 2, buf = realloc(buf, cap);
            if (!buf)
                prefopt_die("out of memory writing %s", out_path);
            memcpy(buf + used, line, l), used += l, buf[used++] = '\n';
            free(line), cJSON_Delete(o);
        }
        prefopt_write_atomic(out_path, buf, used, &err);
        free(buf);
        cJSON *sum = cJSON_CreateObject();
        cJSON_AddStringToObject(sum, "model", model_path);
        cJSON_AddStringToObject(sum, "data", data_path);
        cJSON_AddNumberToObject(sum, "examples", (double)info.num_examples);
        if (*obj_text)
            cJSON_AddStringToObject(sum, "objective", obj_text);
        cJSON_AddStringToObject(sum, "objective_from", p->run_config ? p->run_config : "options");
        if (ref_path && *ref_path)
            cJSON_AddStringToObject(sum, "reference", ref_path);
        else if (info.has_ref)
            cJSON_AddStringToObject(sum, "reference", "stored in the dataset");
        if (use_obj)
            prefopt_metrics_to_json(sum, &total, "eval/");
        else if (paired || info.kind == PREFOPT_DS_UNPAIRED) {
            /* what needs no reference: the mean summed completion log-probs (TRL's logps/chosen, logps/rejected) */
            double sc = 0, sr = 0;
            for (int64_t i = 0; i < info.num_examples; i++)
                sc += ord[REC * i + 1], sr += paired ? ord[REC * i + 2] : 0;
            double n = info.num_examples > 0 ? (double)info.num_examples : NAN;
            cJSON_AddNumberToObject(sum, paired ? "eval/logps/chosen" : "eval/logps/completion", sc / n);
            if (paired)
                cJSON_AddNumberToObject(sum, "eval/logps/rejected", sr / n);
        }
        if (*left_out)
            cJSON_AddStringToObject(sum, "left_out", left_out);
        char *s = cJSON_PrintUnformatted(sum);
        char sp[4200];
        snprintf(sp, sizeof sp, "%s.summary.json", out_path);
        if (!err.set)
            prefopt_write_atomic(sp, s, strlen(s), &err);
        if (!err.set)
            printf("%s\n", s);
        fprintf(stderr, "eval: %lld examples in %.2f s -> %s\n", (long long)info.num_examples, dt, out_path);
        free(s), cJSON_Delete(sum), free(ord);
    }
    fail_if(&g, &err);
    free(rec), free(allrec), free(cnt), free(dsp);
    prefopt_model_free(m);
    if (ref)
        prefopt_model_free(ref);
    prefopt_tokenizer_record_free(&tok);
    prefopt_grid_free(&g);
    return 0;
}
