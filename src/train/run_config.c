/* The run directory's config.ini: the options that apply to the run (its objective, from scratch or --init, with
 * or without held-out data), and the check that a resumed run continues the run its checkpoint was saved from.
 * The same INI text goes into every checkpoint (/state/train_config), so the check also holds for a checkpoint
 * given by path or copied elsewhere. */
#define _GNU_SOURCE
#include "prefopt/train.h"

#include "prefopt/opts.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int one_of(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(name, *list))
            return 1;
    return 0;
}

static int train_applies(const prefopt_train_params *p, const prefopt_objective *obj, const char *name)
{
    static const char *const arch[] = {"arch", "n-layer", "n-embd", "n-head", "n-inner", "max-position", "norm-eps",
                                       NULL};
    static const char *const llama[] = {"n-kv-head", "rope-theta", NULL};
    static const char *const eval[] = {"eval-data", "eval-interval", "eval-batch-size", NULL};
    const int scratch = !*p->init, with_ref = obj->uses_reference || obj->uses_kl;
    if (one_of(name, arch))
        return scratch;
    if (one_of(name, llama))
        return scratch && !strcmp(p->arch.arch, "llama");
    if (one_of(name, eval))
        return *p->eval_data != '\0';
    if (!strcmp(name, "init"))
        return !scratch;
    if (!strcmp(name, "tokenizer"))
        return scratch && p->tokenizer && *p->tokenizer;
    if (!strcmp(name, "ref-model"))
        return with_ref;
    if (!strcmp(name, "use-precomputed-ref"))
        return obj->uses_reference;
    if (!strcmp(name, "min-lr-ratio"))
        return strstr(p->optim.lr_scheduler, "cosine") != NULL;
    if (!strcmp(name, "warmup-ratio"))
        return p->optim.warmup_steps == 0;
    if (!strcmp(name, "epochs"))
        return p->max_steps == 0;
    if (!strcmp(name, "allow-config-change"))
        return p->allow_config_change;
    return prefopt_objective_reads_option(obj, name);
}

char *prefopt_train_config_text(const prefopt_train_params *p, const prefopt_objective *obj, const prefopt_opt *opts,
                                int nopts)
{
    prefopt_opt *kept = prefopt_xmalloc(sizeof *kept * (size_t)(nopts + 1), "config.ini");
    int n = 0;
    for (int i = 0; i < nopts; i++)
        if (train_applies(p, obj, opts[i].name))
            kept[n++] = opts[i];
    char *text = prefopt_opts_text("train", kept, n);
    free(kept);
    if (!text)
        prefopt_die("out of memory writing config.ini");
    return text;
}

/* Options that leave the trajectory unchanged (layout, memory, logging, checkpoint cadence, held-out data) and the
 * run's length (a requeued job may be given more or fewer steps; the schedule follows the new length): they may
 * change between a checkpoint and its resumption. Every other option changes the math. */
static const char *const free_keys[] = {
    "max-steps", "epochs", "run-dir", "resume", "grid-rows", "grid-cols", "dp", "micro-batch-size", "gradient-accumulation-steps",
    "pad-multiple", "activation-checkpoint", "logits-budget-mib", "completion-logits", "memory-limit",
    "use-precomputed-ref", "peak-gflops", "log-interval", "eval-data", "eval-interval", "eval-batch-size",
    "save-interval", "keep-last", "max-nonfinite", "allow-config-change",
    /* the data-parallel step's layout (the same sums within rounding, as other grids), the fp32 GEMM backend, tracing */
    "overlap-grad-reduce", "zero-stage", "grad-bucket-mib", "gemm-backend", "trace", "trace-steps", "pcontrol",
    /* the same batches, read ahead by a thread or not */
    "data-prefetch", NULL,
};

typedef struct {
    char (*key)[64];
    char **val;
    int n, cap;
} kv_list;

static int on_kv(void *user, const char *section, const char *name, const char *value)
{
    (void)section;
    kv_list *l = user;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        void *k = realloc(l->key, sizeof *l->key * (size_t)l->cap), *v = k ? realloc(l->val, sizeof *l->val * (size_t)l->cap) : NULL;
        if (!k || !v)
            prefopt_die("out of memory reading a configuration");
        l->key = k;
        l->val = v;
    }
    snprintf(l->key[l->n], sizeof l->key[l->n], "%s", name);
    l->val[l->n] = strdup(value);
    if (!l->val[l->n])
        prefopt_die("out of memory reading a configuration");
    l->n++;
    return 1;
}

static const char *lookup(const kv_list *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->key[i], key))
            return l->val[i];
    return NULL;
}

static void kv_free(kv_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->val[i]);
    free(l->key);
    free(l->val);
}

static void add_change(char *out, size_t outlen, cJSON *json, const char *key, const char *from, const char *to)
{
    size_t used = strlen(out);
    if (used + 4 < outlen)
        snprintf(out + used, outlen - used, "%s%s %s -> %s", used ? ", " : "", key, from ? from : "(unset)",
                 to ? to : "(unset)");
    if (json) {
        cJSON *c = cJSON_AddObjectToObject(json, key);
        if (from)
            cJSON_AddStringToObject(c, "from", from);
        else
            cJSON_AddNullToObject(c, "from");
        if (to)
            cJSON_AddStringToObject(c, "to", to);
        else
            cJSON_AddNullToObject(c, "to");
    }
}

int prefopt_train_config_diff(const char *old_text, const char *new_text, char *out, size_t outlen,
                              struct cJSON *json)
{
    kv_list a = {0}, b = {0};
    out[0] = '\0';
    prefopt_opts_read_text(old_text, on_kv, &a);
    prefopt_opts_read_text(new_text, on_kv, &b);
    int n = 0;
    for (int i = 0; i < b.n; i++) {
        if (one_of(b.key[i], free_keys))
            continue;
        const char *was = lookup(&a, b.key[i]);
        if (!was || strcmp(was, b.val[i]))
            add_change(out, outlen, json, b.key[i], was, b.val[i]), n++;
    }
    for (int i = 0; i < a.n; i++)
        if (!one_of(a.key[i], free_keys) && !lookup(&b, a.key[i]))
            add_change(out, outlen, json, a.key[i], a.val[i], NULL), n++;
    kv_free(&a);
    kv_free(&b);
    return n;
}

/* ---- a run directory as the input of eval ------------------------------------------------------------------ */

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

int prefopt_run_dir_model(const char *path, char *model, size_t mlen, char *ini, size_t ilen, prefopt_err *err)
{
    struct stat sb;
    char dir[4096];
    ini[0] = '\0';
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        /* a run directory: its final model, else its latest checkpoint */
        char ck[4200];
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(model, mlen, "%s/model.h5", dir);
        snprintf(ck, sizeof ck, "%s/checkpoints", dir);
        if (!is_file(model) && prefopt_ckpt_find_latest(ck, model, mlen)) {
            prefopt_err_set(err, "%s: a directory without model.h5 or checkpoints/latest (not a run directory)", path);
            return -1;
        }
    } else {
        snprintf(model, mlen, "%s", path);
        /* RUN/model.h5 or RUN/checkpoints/step-N.h5 */
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
        if (!strcmp(base, "checkpoints")) {
            if (base == dir)
                snprintf(dir, sizeof dir, ".");
            else
                dir[base - dir - 1] = '\0';
        }
    }
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.ini", dir);
    if (is_file(cfg))
        snprintf(ini, ilen, "%s", cfg);
    return 0;
}

static char *slurp(const char *path, prefopt_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, used = 0;
    char *buf = prefopt_xmalloc(cap, "config.ini");
    size_t got;
    while ((got = fread(buf + used, 1, cap - used - 1, f)) > 0) {
        used += got;
        if (used + 1 == cap) {
            char *grown = realloc(buf, cap *= 2);
            if (!grown)
                prefopt_die("out of memory reading %s", path);
            buf = grown;
        }
    }
    buf[used] = '\0';
    fclose(f);
    return buf;
}

typedef struct {
    const prefopt_opt *opts;
    int n;
    int (*take)(const char *name);
    char *taken;
    size_t takenlen;
    const char *path;
    char *err;
    size_t errlen;
    int count, failed;
} adopt_ctx;

static int on_adopt(void *user, const char *section, const char *name, const char *value)
{
    (void)section;
    adopt_ctx *c = user;
    const prefopt_opt *o = prefopt_opts_find(c->opts, c->n, name);
    if (!o || !c->take(o->name) || prefopt_opts_given(o->ptr))
        return 1;
    if (prefopt_opts_set_value(o, value, c->path, c->err, c->errlen)) {
        c->failed = 1;
        return 0;
    }
    /* listed when it differs from the default: what the run's config changed */
    char *end = NULL;
    double v = strtod(value, &end), d = o->def ? strtod(o->def, NULL) : 0;
    int same = o->type == PREFOPT_OPT_STRING ? !strcmp(value, o->def ? o->def : "") : (end != value && v == d);
    size_t used = strlen(c->taken);
    if (!same && used + 4 < c->takenlen)
        snprintf(c->taken + used, c->takenlen - used, "%s%s %s", used ? ", " : "", o->name, value);
    c->count++;
    return 1;
}

int prefopt_run_config_adopt(const char *ini_path, const prefopt_opt *opts, int nopts, int (*take)(const char *name),
                             char *taken, size_t takenlen, prefopt_err *err)
{
    taken[0] = '\0';
    char *text = slurp(ini_path, err);
    if (!text)
        return -1;
    char msg[512] = "";
    adopt_ctx c = {opts, nopts, take, taken, takenlen, ini_path, msg, sizeof msg, 0, 0};
    prefopt_opts_read_text(text, on_adopt, &c);
    free(text);
    if (c.failed) {
        prefopt_err_set(err, "%s", msg);
        return -1;
    }
    return c.count;
}

typedef struct {
    const char *key;
    char *out;
    size_t len;
} value_ctx;

static int on_value(void *user, const char *section, const char *name, const char *value)
{
    (void)section;
    value_ctx *c = user;
    if (!strcmp(name, c->key))
        snprintf(c->out, c->len, "%s", value);
    return 1;
}

int prefopt_run_config_value(const char *ini_path, const char *key, char *out, size_t len)
{
    out[0] = '\0';
    prefopt_err err = {0};
    char *text = slurp(ini_path, &err);
    if (!text)
        return -1;
    value_ctx c = {key, out, len};
    prefopt_opts_read_text(text, on_value, &c);
    free(text);
    return out[0] ? 0 : -1;
}
