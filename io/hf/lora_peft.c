/* LoRA adapters in PEFT's format: a LoRA checkpoint's adapters -> DIR/adapter_config.json +
 * DIR/adapter_model.safetensors, a PEFT adapter directory -> a model's adapters (train --lora-adapter), and the
 * merge W + (alpha / r) B A that export --merge-lora streams into a full Hugging Face directory (export.c).
 *
 * PEFT's tensors: base_model.model.<module>.lora_A.weight [r][in] and .lora_B.weight [out][r], with <module> the
 * transformers module path (model.layers.L.self_attn.q_proj, transformer.h.L.mlp.c_fc). prefopt keeps A
 * transposed ("<linear>.lora_AT" [in][r]) and B as PEFT does. GPT-2 fuses q, k, v into one c_attn Conv1D, so its
 * three adapters are written as one of rank 3r: A = [A_q; A_k; A_v] and B block-diagonal, with rank_pattern and
 * alpha_pattern {c_attn: 3r, 3 alpha} keeping the scale; reading back, a block-diagonal c_attn of rank 3r splits
 * exactly, and one of rank r (PEFT's own GPT-2 adapters) gives q, k and v the same A. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "hf_lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* prefopt's weight name suffix (after "h.L." / "layers.L.") and the HF module path suffix of each kind */
static const char *const gpt2_w[PREFOPT_LORA_NKIND] = {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj",
                                                       "mlp.c_fc",    NULL,          "mlp.c_proj"};
static const char *const llama_w[PREFOPT_LORA_NKIND] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                        "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                        "mlp.down_proj"};

static const char *weight_stem(const prefopt_model_config *cfg, int k)
{
    return cfg->arch == PREFOPT_ARCH_GPT2 ? gpt2_w[k] : llama_w[k];
}

/* in/out features of kind k */
static void kind_dims(const prefopt_model_config *c, int k, int64_t *in, int64_t *out)
{
    const int64_t C = c->hidden_size, HD = (int64_t)c->num_heads * c->head_dim,
                  KD = (int64_t)c->num_kv_heads * c->head_dim, F = c->intermediate_size;
    const int64_t io[PREFOPT_LORA_NKIND][2] = {{C, HD}, {C, KD}, {C, KD}, {HD, C}, {C, F}, {C, F}, {F, C}};
    *in = io[k][0];
    *out = io[k][1];
}

static int has_kind(const prefopt_model_config *c, const prefopt_lora_config *l, int k)
{
    return (l->targets & (1u << k)) && weight_stem(c, k);
}

static void spec_of(const prefopt_model_config *c, const prefopt_lora_config *l, int layer, int k, int b,
                    prefopt_tensor_spec *s)
{
    int64_t in, out;
    kind_dims(c, k, &in, &out);
    snprintf(s->name, sizeof s->name, "%s.%d.%s.%s", c->arch == PREFOPT_ARCH_GPT2 ? "h" : "layers", layer,
             weight_stem(c, k), b ? "lora_B" : "lora_AT");
    s->ndim = 2;
    s->shape[0] = b ? out : in;
    s->shape[1] = l->r;
}

/* ---- reading a LoRA checkpoint --------------------------------------------------------------------------- */

int hf_lora_open(const char *ckpt, hf_lora *L, prefopt_err *err)
{
    memset(L, 0, sizeof *L);
    L->f = -1;
    if (ck_open(ckpt, MPI_COMM_NULL, &L->f, err))
        return -1;
    snprintf(L->path, sizeof L->path, "%s", ckpt);
    int rc = ck_read_lora_attrs(L->f, ckpt, &L->lora, L->base, sizeof L->base, &L->base_sum, err);
    if (!rc)
        rc = ck_read_config(L->f, ckpt, &L->cfg, err) ? -1 : 0;
    if (rc) {
        H5Fclose(L->f);
        L->f = -1;
    }
    return rc; /* 1: not a LoRA checkpoint */
}

void hf_lora_close(hf_lora *L)
{
    if (L->f >= 0)
        H5Fclose(L->f);
    L->f = -1;
}

/* A (PEFT's [r][in]) and B ([out][r]) of layer/kind, malloc'd */
static int read_ab(hf_lora *L, int layer, int k, float **A, float **B, prefopt_err *err)
{
    prefopt_tensor_spec sa, sb;
    spec_of(&L->cfg, &L->lora, layer, k, 0, &sa);
    spec_of(&L->cfg, &L->lora, layer, k, 1, &sb);
    const int64_t r = L->lora.r, in = sa.shape[0], out = sb.shape[0];
    float *at = prefopt_xmalloc(sizeof(float) * (size_t)(in * r) + 4, "lora A");
    *A = prefopt_xmalloc(sizeof(float) * (size_t)(in * r) + 4, "lora A");
    *B = prefopt_xmalloc(sizeof(float) * (size_t)(out * r) + 4, "lora B");
    int rc = ck_read_full(L->f, L->path, "lora", &sa, at, err) || ck_read_full(L->f, L->path, "lora", &sb, *B, err);
    for (int64_t i = 0; i < in; i++) /* [in][r] -> [r][in] */
        for (int64_t j = 0; j < r; j++)
            (*A)[j * in + i] = at[i * r + j];
    free(at);
    return rc;
}

int hf_lora_merge(hf_lora *L, const char *weight_name, float *w, prefopt_err *err)
{
    int layer, n = 0;
    char stem[96];
    const char *pre = L->cfg.arch == PREFOPT_ARCH_GPT2 ? "h.%d.%95[^ ]" : "layers.%d.%95[^ ]";
    if (sscanf(weight_name, pre, &layer, stem) != 2)
        return 0;
    size_t len = strlen(stem);
    if (len < 8 || strcmp(stem + len - 7, ".weight"))
        return 0;
    stem[len - 7] = '\0';
    for (int k = 0; k < PREFOPT_LORA_NKIND; k++) {
        if (!has_kind(&L->cfg, &L->lora, k) || strcmp(stem, weight_stem(&L->cfg, k)))
            continue;
        float *A, *B;
        if (read_ab(L, layer, k, &A, &B, err)) {
            free(A), free(B);
            return -1;
        }
        int64_t in, out;
        kind_dims(&L->cfg, k, &in, &out);
        const double s = (double)L->lora.alpha / L->lora.r;
        for (int64_t o = 0; o < out; o++) /* w [out][in] += s B A, summed in double, rounded once */
            for (int64_t i = 0; i < in; i++) {
                double acc = 0;
                for (int64_t j = 0; j < L->lora.r; j++)
                    acc += (double)B[o * L->lora.r + j] * A[j * in + i];
                w[o * in + i] = (float)((double)w[o * in + i] + s * acc);
            }
        free(A);
        free(B);
        n++;
    }
    return n;
}

/* the checksum of the base file's weights, as prefopt_model_base_checksum computes it on a model */
int hf_lora_check_base(hf_lora *L, hid_t base, prefopt_err *err)
{
    prefopt_tensor_spec *specs;
    int ns = prefopt_model_tensor_specs(&L->cfg, &specs), rc = 0;
    uint64_t *sums = prefopt_xcalloc((size_t)ns + 1, sizeof *sums, "checksums");
    for (int i = 0; i < ns && !rc; i++) {
        size_t cnt = (size_t)specs[i].shape[0] * (size_t)(specs[i].ndim == 2 ? specs[i].shape[1] : 1);
        float *buf = prefopt_xmalloc(sizeof(float) * (cnt ? cnt : 1), "tensor");
        rc = ck_read_full(base, L->base, "model", &specs[i], buf, err);
        ck_piece p;
        ck_piece_full(&p, specs[i].ndim, specs[i].shape, buf, 1);
        sums[i] = ck_checksum_piece(&p);
        free(buf);
    }
    uint64_t total = ck_combine_checksums(sums, ns);
    if (!rc && total != L->base_sum) {
        prefopt_err_set(err, "%s: the base model %s has checksum %016llx, the adapters were trained on %016llx: "
                             "it changed since training", L->path, L->base, (unsigned long long)total,
                        (unsigned long long)L->base_sum);
        rc = 1;
    }
    free(sums);
    free(specs);
    return rc;
}

/* ---- PEFT adapter directory out ---------------------------------------------------------------------------- */

static int write_text(const char *dir, const char *name, const char *text, prefopt_err *err)
{
    char p[4200], tmp[4300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", p, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    size_t n = strlen(text);
    int bad = !f || fwrite(text, 1, n, f) != n;
    if (f && fclose(f))
        bad = 1;
    if (bad || rename(tmp, p)) {
        prefopt_err_set(err, "%s: cannot write: %s", p, strerror(errno));
        unlink(tmp);
        return 1;
    }
    return 0;
}

static void module_path(const prefopt_model_config *c, int layer, int k, char *buf, size_t len)
{
    if (c->arch == PREFOPT_ARCH_GPT2)
        snprintf(buf, len, "transformer.h.%d.%s", layer, k <= PF_LV_KIND ? "attn.c_attn" : gpt2_w[k]);
    else
        snprintf(buf, len, "model.layers.%d.%s", layer, llama_w[k]);
}

int prefopt_hf_export_peft(const char *ckpt, const char *dir, prefopt_err *err)
{
    hf_lora L;
    int rc = hf_lora_open(ckpt, &L, err);
    if (rc) {
        if (rc == 1)
            prefopt_err_set(err, "%s: not a LoRA checkpoint (no adapters to export)", ckpt);
        return 1;
    }
    const prefopt_model_config *c = &L.cfg;
    const int gpt2 = c->arch == PREFOPT_ARCH_GPT2, r = L.lora.r, nl = c->num_layers;
    const int qkv = gpt2 && (L.lora.targets & (PREFOPT_LORA_Q | PREFOPT_LORA_K | PREFOPT_LORA_V));
    struct stat st;
    if (stat(dir, &st) && mkdir(dir, 0777) && errno != EEXIST) {
        prefopt_err_set(err, "%s: cannot create the directory: %s", dir, strerror(errno));
        hf_lora_close(&L);
        return 1;
    }
    /* adapter_config.json */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(o, "base_model_name_or_path", L.base);
    cJSON_AddNumberToObject(o, "r", r);
    cJSON_AddNumberToObject(o, "lora_alpha", (double)L.lora.alpha);
    cJSON_AddNumberToObject(o, "lora_dropout", (double)L.lora.dropout);
    cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddBoolToObject(o, "fan_in_fan_out", gpt2); /* GPT-2's Conv1D */
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    cJSON_AddBoolToObject(o, "use_rslora", 0);
    cJSON_AddBoolToObject(o, "use_dora", 0);
    cJSON_AddStringToObject(o, "init_lora_weights", "true");
    cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
    cJSON *rp = cJSON_AddObjectToObject(o, "rank_pattern"), *ap = cJSON_AddObjectToObject(o, "alpha_pattern");
    if (qkv) {
        cJSON_AddItemToArray(tm, cJSON_CreateString("c_attn"));
        cJSON_AddNumberToObject(rp, "c_attn", 3 * r);
        cJSON_AddNumberToObject(ap, "c_attn", 3.0 * L.lora.alpha);
    }
    for (int k = 0; k < PREFOPT_LORA_NKIND; k++)
        if (has_kind(c, &L.lora, k) && !(gpt2 && k <= PF_LV_KIND))
            cJSON_AddItemToArray(tm, cJSON_CreateString(gpt2 ? gpt2_w[k] : llama_w[k] + (k <= 3 ? 10 : 4)));
    cJSON_AddNullToObject(o, "modules_to_save");
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    rc = write_text(dir, "adapter_config.json", text, err);
    free(text);
    /* the tensors: declared first (safetensors' header), then streamed in order */
    int cap = 2 * PREFOPT_LORA_NKIND * nl + 2, nt = 0;
    char(*names)[160] = prefopt_xcalloc((size_t)cap, sizeof *names, "names");
    const char **np = prefopt_xcalloc((size_t)cap, sizeof *np, "names");
    int *nd = prefopt_xcalloc((size_t)cap, sizeof *nd, "ndims");
    int64_t(*sh)[2] = prefopt_xcalloc((size_t)cap, sizeof *sh, "shapes");
    int *tk = prefopt_xcalloc((size_t)cap, sizeof *tk, "kinds");
    int *tl = prefopt_xcalloc((size_t)cap, sizeof *tl, "layers");
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < PREFOPT_LORA_NKIND; k++) {
            int fused = gpt2 && k <= PF_LV_KIND;
            if (fused ? !(qkv && k == 0) : !has_kind(c, &L.lora, k))
                continue;
            int64_t in, out;
            kind_dims(c, k, &in, &out);
            char mp[128];
            module_path(c, l, k, mp, sizeof mp);
            for (int b = 0; b < 2; b++) {
                snprintf(names[nt], sizeof names[nt], "base_model.model.%s.lora_%s.weight", mp, b ? "B" : "A");
                np[nt] = names[nt];
                nd[nt] = 2;
                sh[nt][0] = b ? (fused ? 3 * out : out) : (fused ? 3 * r : r);
                sh[nt][1] = b ? (fused ? 3 * r : r) : in;
                tk[nt] = k + (b ? 100 : 0);
                tl[nt] = l;
                nt++;
            }
        }
    char p[4200];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    prefopt_st_writer *w = rc ? NULL : prefopt_st_writer_open(p, nt, np, nd, (const int64_t(*)[2])sh, err);
    rc |= !w;
    for (int i = 0; i < nt && !rc; i++) {
        const int b = tk[i] >= 100, k = tk[i] % 100, l = tl[i];
        const size_t cnt = (size_t)(sh[i][0] * sh[i][1]);
        float *t = prefopt_xcalloc(cnt + 4, sizeof(float), "adapter");
        if (gpt2 && k == 0) { /* c_attn: q, k, v stacked (A) or on the block diagonal (B) */
            int64_t in, out;
            kind_dims(c, 0, &in, &out);
            for (int q = 0; q < 3 && !rc; q++) {
                if (!has_kind(c, &L.lora, q))
                    continue;
                float *A, *B;
                rc = read_ab(&L, l, q, &A, &B, err);
                for (int64_t row = 0; !rc && row < (b ? out : r); row++)
                    for (int64_t col = 0; col < (b ? r : in); col++)
                        if (b)
                            t[(q * out + row) * 3 * r + q * r + col] = B[row * r + col];
                        else
                            t[(q * r + row) * in + col] = A[row * in + col];
                free(A);
                free(B);
            }
        } else {
            float *A, *B;
            rc = read_ab(&L, l, k, &A, &B, err);
            memcpy(t, b ? B : A, cnt * sizeof(float));
            free(A);
            free(B);
        }
        if (!rc)
            rc = prefopt_st_writer_put(w, np[i], t, err);
        free(t);
    }
    if (w)
        rc |= prefopt_st_writer_close(w, rc ? NULL : err);
    free(names), free(np), free(nd), free(sh), free(tk), free(tl);
    hf_lora_close(&L);
    return rc;
}

/* ---- PEFT adapter directory in ----------------------------------------------------------------------------- */

static int json_number(const cJSON *o, const char *key, double *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x))
        return 1;
    *v = x->valuedouble;
    return 0;
}

/* a module's rank or alpha: rank_pattern / alpha_pattern keys match a module path's suffix */
static double pattern(const cJSON *pat, const char *module, double dflt)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, pat)
    {
        size_t kl = strlen(e->string), ml = strlen(module);
        if (cJSON_IsNumber(e) && kl <= ml && !strcmp(module + ml - kl, e->string) &&
            (kl == ml || module[ml - kl - 1] == '.'))
            return e->valuedouble;
    }
    return dflt;
}

int prefopt_lora_peft_config(const char *dir, prefopt_arch arch, prefopt_lora_config *out, prefopt_err *err)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    FILE *f = fopen(p, "rb");
    if (!f)
        return prefopt_err_set(err, "%s: cannot open: %s", p, strerror(errno)), -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = prefopt_xmalloc((size_t)(n > 0 ? n : 0) + 1, "adapter_config.json");
    size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
    buf[got] = '\0';
    fclose(f);
    cJSON *o = cJSON_Parse(buf);
    free(buf);
    int rc = -1;
    double r = 0, alpha = 0;
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(o, "bias");
    memset(out, 0, sizeof *out);
    if (!o)
        prefopt_err_set(err, "%s: not valid JSON", p);
    else if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA"))
        prefopt_err_set(err, "%s: peft_type is not \"LORA\"", p);
    else if (json_number(o, "r", &r) || r < 1 || r != floor(r) || r > 65536)
        prefopt_err_set(err, "%s: field 'r' must be a positive integer", p);
    else if (json_number(o, "lora_alpha", &alpha) || !(alpha > 0))
        prefopt_err_set(err, "%s: field 'lora_alpha' must be a number > 0", p);
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_rslora")) ||
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_dora")))
        prefopt_err_set(err, "%s: use_rslora / use_dora adapters are not supported", p);
    else if (bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        prefopt_err_set(err, "%s: field 'bias' must be \"none\" (trained biases are not supported)", p);
    else if (!cJSON_IsArray(tm) && !cJSON_IsString(tm))
        prefopt_err_set(err, "%s: field 'target_modules' must be a list of module names", p);
    else {
        char list[1024] = "";
        size_t at = 0;
        if (cJSON_IsString(tm))
            snprintf(list, sizeof list, "%s", tm->valuestring);
        const cJSON *e;
        const cJSON *arr = cJSON_IsArray(tm) ? tm : NULL;
        cJSON_ArrayForEach(e, arr)
        {
            if (!cJSON_IsString(e))
                continue;
            const char *s = strrchr(e->valuestring, '.'); /* "attn.c_proj" -> c_proj's kinds, checked below */
            at += (size_t)snprintf(list + at, sizeof list - at, "%s%s", at ? "," : "", s ? s + 1 : e->valuestring);
            if (at >= sizeof list)
                break;
        }
        unsigned t = 0;
        if (!prefopt_lora_parse_targets(list, arch, &t, err)) {
            /* GPT-2 "attn.c_proj" or "mlp.c_proj" alone: keep only the one named */
            if (arch == PREFOPT_ARCH_GPT2 && cJSON_IsArray(tm)) {
                int attn = 0, mlp = 0, bare = 0;
                cJSON_ArrayForEach(e, tm)
                {
                    if (!cJSON_IsString(e))
                        continue;
                    attn |= !strcmp(e->valuestring, "attn.c_proj");
                    mlp |= !strcmp(e->valuestring, "mlp.c_proj");
                    bare |= !strcmp(e->valuestring, "c_proj");
                }
                if (!bare && attn != mlp)
                    t &= ~(unsigned)(attn ? PREFOPT_LORA_DOWN : PREFOPT_LORA_O);
            }
            const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rank_pattern"),
                        *ap = cJSON_GetObjectItemCaseSensitive(o, "alpha_pattern");
            /* one scale for every module: patterns may change r and alpha only together */
            for (int k = 0; k < PREFOPT_LORA_NKIND && !err->set; k++) {
                const char *mod = arch != PREFOPT_ARCH_GPT2 ? llama_w[k] : k <= PF_LV_KIND ? "attn.c_attn" : gpt2_w[k];
                if (!(t & (1u << k)) || !mod)
                    continue;
                double rk = pattern(rp, mod, r), ak = pattern(ap, mod, alpha);
                int gpt2_fused = arch == PREFOPT_ARCH_GPT2 && k <= PF_LV_KIND;
                if (fabs(ak / rk - alpha / r) > 1e-6 * (alpha / r) ||
                    (rk != r && !(gpt2_fused && rk == 3 * r)))
                    prefopt_err_set(err, "%s: module %s has r %g, alpha %g; prefopt needs one rank and one scale for "
                                         "every module (r %g, alpha %g%s)", p, mod, rk, ak, r, alpha,
                                    gpt2_fused ? "; GPT-2's c_attn: r or 3r" : "");
            }
            if (!err->set) {
                out->r = (int)r;
                out->alpha = (float)alpha;
                out->targets = t;
                rc = 0;
            }
        }
    }
    cJSON_Delete(o);
    return rc;
}

int prefopt_lora_adapter_load(prefopt_model *m, const char *dir, prefopt_err *err)
{
    const prefopt_model_config *c = prefopt_model_get_config(m);
    const prefopt_lora_config *lc = prefopt_model_lora(m);
    const prefopt_grid *g = prefopt_model_get_grid(m);
    const int gpt2 = c->arch == PREFOPT_ARCH_GPT2, r = lc->r;
    prefopt_st_set *set = NULL;
    char p[4200];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    prefopt_lora_config fc;
    int rc = prefopt_lora_peft_config(dir, c->arch, &fc, err) ? 1 : 0;
    if (!rc && (fc.r != r || fc.targets != lc->targets || fabsf(fc.alpha / (float)fc.r - lc->alpha / (float)r) >
                                                               1e-6f * lc->alpha / (float)r)) {
        prefopt_err_set(err, "%s: adapter r %d, alpha %g, targets 0x%x differ from the run's (r %d, alpha %g, "
                             "targets 0x%x)", dir, fc.r, (double)fc.alpha, fc.targets, r, (double)lc->alpha,
                        lc->targets);
        rc = 1;
    }
    if (!rc)
        rc = prefopt_st_open_file(p, &set, err) ? 1 : 0;
    for (int l = 0; l < c->num_layers && !rc; l++)
        for (int k = 0; k < PREFOPT_LORA_NKIND && !rc; k++) {
            if (!has_kind(c, lc, k))
                continue;
            int64_t in, out;
            kind_dims(c, k, &in, &out);
            const int fused = gpt2 && k <= PF_LV_KIND;
            char mp[128], na[200], nb[200];
            module_path(c, l, k, mp, sizeof mp);
            snprintf(na, sizeof na, "base_model.model.%s.lora_A.weight", mp);
            snprintf(nb, sizeof nb, "base_model.model.%s.lora_B.weight", mp);
            const prefopt_st_tensor *ta = prefopt_st_find(set, na), *tb = prefopt_st_find(set, nb);
            int64_t fr = fused && ta && ta->ndim == 2 ? ta->shape[0] : r; /* c_attn: r or 3r */
            int64_t fout = fused ? 3 * out : out;
            if (!ta || !tb || ta->ndim != 2 || tb->ndim != 2 || ta->shape[0] != fr || ta->shape[1] != in ||
                tb->shape[0] != fout || tb->shape[1] != fr || (fr != r && fr != 3 * r)) {
                prefopt_err_set(err, "%s: %s / %s missing or not [%lld][%lld] / [%lld][%lld]", p, na, nb,
                                (long long)fr, (long long)in, (long long)fout, (long long)fr);
                rc = 1;
                break;
            }
            float *A = prefopt_xmalloc(sizeof(float) * (size_t)(fr * in) + 4, "lora A");
            float *B = prefopt_xmalloc(sizeof(float) * (size_t)(fout * fr) + 4, "lora B");
            rc = prefopt_st_read_f32(set, ta, A, err) || prefopt_st_read_f32(set, tb, B, err);
            const int q = fused ? k : 0;    /* which third of c_attn */
            const int64_t j0 = fr == r ? 0 : (int64_t)q * r; /* block-diagonal: my block of the rank */
            for (int64_t o = 0; fused && fr != r && !rc && o < fout; o++)
                for (int64_t j = 0; j < fr; j++)
                    if (B[o * fr + j] != 0.0f && j / r != o / out) {
                        prefopt_err_set(err, "%s: %s has rank %lld = 3r but is not block-diagonal over q, k, v", p,
                                        nb, (long long)fr);
                        rc = 1;
                        break;
                    }
            float *at = prefopt_xmalloc(sizeof(float) * (size_t)(in * r) + 4, "lora AT");
            float *bm = prefopt_xmalloc(sizeof(float) * (size_t)(out * r) + 4, "lora B");
            for (int64_t j = 0; j < r; j++) {
                for (int64_t i = 0; i < in; i++) /* dmat r x in column-major: (j, i) at i r + j */
                    at[i * r + j] = A[(j0 + j) * in + i];
                for (int64_t o = 0; o < out; o++) /* dmat r x out column-major = [out][r] */
                    bm[o * r + j] = B[((int64_t)q * out * (fused ? 1 : 0) + o) * fr + j0 + j];
            }
            prefopt_tensor_spec sa, sb;
            spec_of(c, lc, l, k, 0, &sa);
            spec_of(c, lc, l, k, 1, &sb);
            prefopt_param *pa = prefopt_model_param_by_name(m, sa.name), *pb = prefopt_model_param_by_name(m, sb.name);
            if (!rc && (!pa || !pb)) {
                prefopt_err_set(err, "internal: the model has no %s / %s", sa.name, sb.name);
                rc = 1;
            }
            if (!rc) {
                prefopt_dmat_scatter(pa->value, at);
                prefopt_dmat_scatter(pb->value, bm);
            }
            free(A), free(B), free(at), free(bm);
        }
    prefopt_st_free(set);
    (void)g;
    return rc;
}
