/* Set-up and tear-down of `prefopt train`: grid, tokenizer, datasets (validated by all ranks, then read per
 * replica), objective, memory check, models, optimizer, data-parallel sync, loaders and schedule. */
#define _GNU_SOURCE
#include "train_internal.h"

#include <omp.h>

prefopt_ds_loader *train_make_loader(trainer *t, prefopt_dataset *ds, int global, int micro, int shuffle,
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

/* ---- set-up ------------------------------------------------------------------------------------------------ */

void train_setup(trainer *t, const prefopt_opt *opts, int nopts)
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

    t->loader = train_make_loader(t, t->ds, p->batch_size, t->micro, 1, 1);
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
               prefopt_precision_is_bf16() ? "bf16 matmul" : "sgemm (faster of BLIS, oneDNN)", t->peak * 1e-9,
               p->peak_gflops > 0 ? " (--peak-gflops)" : "");
        fflush(stdout);
    }
}

/* Start-up, slowest rank: MPI_Init, then set-up and resume (grid, files, model, memory check) up to the first step.
 * One reduction over the world; README "Scaling" lists the figures against the number of ranks. */
void train_report_startup(trainer *t)
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

void train_teardown(trainer *t)
{
    prefopt_ds_prefetch_stop(t->pf);
    t->pf = NULL;
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
