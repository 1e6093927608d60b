/* prefopt export: a model file or checkpoint -> a Hugging Face directory (config.json, model.safetensors in fp32,
 * tokenizer.json when recorded). Tensors are read one at a time (checksums verified) and streamed into the
 * safetensors file in the order its header declares; GPT-2's q/k/v are fused back into c_attn and the Conv1D
 * weights transposed back to [in][out]. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "hf_lora.h"
#include "prefopt/files.h"

#include <dirent.h>
#include <fcntl.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

typedef struct {
    char hf[160];
    int ndim;
    int64_t shape[2];
    int kind;   /* 0 copy, 1 transpose, 2 fuse q/k/v weights (transposed), 3 fuse q/k/v biases, 4 stack rows */
    int src[3]; /* spec indices */
    int nsrc;
} out_tensor;

static int find(const prefopt_tensor_spec *s, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name))
            return i;
    return -1;
}

static int plan(const prefopt_model_config *cfg, const prefopt_tensor_spec *specs, int ns, out_tensor **out)
{
    out_tensor *o = prefopt_xcalloc((size_t)ns + 1, sizeof *o, "export plan");
    int n = 0;
    for (int i = 0; i < ns; i++) {
        const prefopt_tensor_spec *s = &specs[i];
        out_tensor *t = &o[n];
        t->ndim = s->ndim;
        t->shape[0] = s->shape[0];
        t->shape[1] = s->shape[1];
        t->src[0] = i;
        t->nsrc = 1;
        if (cfg->arch == PREFOPT_ARCH_LLAMA && cfg->fused_qkv) { /* Phi-3: qkv_proj = [q; k; v], gate_up = [gate; up] */
            int l, k = 0;
            if (sscanf(s->name, "layers.%d.%n", &l, &k) == 1 && k > 0) {
                const char *r = s->name + k;
                if (!strcmp(r, "self_attn.k_proj.weight") || !strcmp(r, "self_attn.v_proj.weight") ||
                    !strcmp(r, "mlp.up_proj.weight"))
                    continue;
                int qkv = !strcmp(r, "self_attn.q_proj.weight");
                if (qkv || !strcmp(r, "mlp.gate_proj.weight")) {
                    char nm[96];
                    snprintf(t->hf, sizeof t->hf, "model.layers.%d.%s", l,
                             qkv ? "self_attn.qkv_proj.weight" : "mlp.gate_up_proj.weight");
                    t->nsrc = qkv ? 3 : 2;
                    for (int p = 1; p < t->nsrc; p++) {
                        snprintf(nm, sizeof nm, "layers.%d.%s.weight", l,
                                 qkv ? (p == 1 ? "self_attn.k_proj" : "self_attn.v_proj") : "mlp.up_proj");
                        t->src[p] = find(specs, ns, nm);
                        t->shape[0] += specs[t->src[p]].shape[0];
                    }
                    t->kind = 4;
                    n++;
                    continue;
                }
            }
        }
        if (cfg->arch == PREFOPT_ARCH_LLAMA) {
            if (!strcmp(s->name, "embed_tokens"))
                snprintf(t->hf, sizeof t->hf, "model.embed_tokens.weight");
            else if (!strcmp(s->name, "lm_head.weight"))
                snprintf(t->hf, sizeof t->hf, "lm_head.weight");
            else
                snprintf(t->hf, sizeof t->hf, "model.%s", s->name);
            n++;
            continue;
        }
        int l, k = 0;
        if (!strcmp(s->name, "wte") || !strcmp(s->name, "wpe")) {
            snprintf(t->hf, sizeof t->hf, "transformer.%s.weight", s->name);
        } else if (sscanf(s->name, "h.%d.attn.%n", &l, &k) == 1 && k > 0 &&
                   (!strncmp(s->name + k, "k_proj", 6) || !strncmp(s->name + k, "v_proj", 6))) {
            continue; /* fused into c_attn with q_proj */
        } else if (k > 0 && !strncmp(s->name + k, "q_proj", 6)) {
            int w = !strcmp(s->name + k + 6, ".weight");
            snprintf(t->hf, sizeof t->hf, "transformer.h.%d.attn.c_attn.%s", l, w ? "weight" : "bias");
            char nm[96];
            snprintf(nm, sizeof nm, "h.%d.attn.k_proj.%s", l, w ? "weight" : "bias");
            t->src[1] = find(specs, ns, nm);
            snprintf(nm, sizeof nm, "h.%d.attn.v_proj.%s", l, w ? "weight" : "bias");
            t->src[2] = find(specs, ns, nm);
            t->kind = w ? 2 : 3;
            t->nsrc = 3;
            if (w) {
                t->shape[0] = s->shape[1];
                t->shape[1] = 3 * s->shape[0];
            } else
                t->shape[0] = 3 * s->shape[0];
        } else {
            snprintf(t->hf, sizeof t->hf, "transformer.%s", s->name);
            size_t len = strlen(s->name);
            if (s->ndim == 2 && len > 7 && !strcmp(s->name + len - 7, ".weight")) { /* Conv1D */
                t->kind = 1;
                t->shape[0] = s->shape[1];
                t->shape[1] = s->shape[0];
            }
        }
        n++;
    }
    *out = o;
    return n;
}

static size_t numel(const prefopt_tensor_spec *s) { return (size_t)s->shape[0] * (size_t)(s->ndim == 2 ? s->shape[1] : 1); }

static void transpose(const float *src, float *dst, int64_t rows, int64_t cols)
{
    for (int64_t r0 = 0; r0 < rows; r0 += 64)
        for (int64_t c0 = 0; c0 < cols; c0 += 64)
            for (int64_t r = r0; r < r0 + 64 && r < rows; r++)
                for (int64_t c = c0; c < c0 + 64 && c < cols; c++)
                    dst[c * rows + r] = src[r * cols + c];
}

/* mkdir -p */
static int mkdir_parents(const char *dir, prefopt_err *err)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *q = p + 1; *q; q++)
        if (*q == '/') {
            *q = '\0';
            if (mkdir(p, 0777) && errno != EEXIST) {
                prefopt_err_set(err, "%s: cannot create the directory: %s", p, strerror(errno));
                return 1;
            }
            *q = '/';
        }
    struct stat st;
    if ((mkdir(p, 0777) && errno != EEXIST) || stat(p, &st) || !S_ISDIR(st.st_mode)) {
        prefopt_err_set(err, "%s: cannot create the directory: %s", p, errno == EEXIST ? "a file has that name" : strerror(errno));
        return 1;
    }
    return 0;
}

/* dir/name in the staging directory (nothing else reads it before it is published) */
static int write_file(const char *dir, const char *name, const char *data, size_t len, prefopt_err *err)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *tf = fopen(p, "wb");
    int bad = !tf || fwrite(data, 1, len, tf) != len;
    if (tf && (fflush(tf) || fsync(fileno(tf))))
        bad = 1;
    if (tf && fclose(tf))
        bad = 1;
    if (bad) {
        prefopt_err_set(err, "%s: cannot write: %s", p, strerror(errno ? errno : EIO));
        return 1;
    }
    return 0;
}

/* Removes a staging directory and the plain files in it (export writes no subdirectories). */
static void remove_stage(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(dir);
}

/* The whole directory is written as DIR.tmp.<pid> beside DIR, then published: renamed to DIR, or, when DIR exists,
 * exchanged with it in one step (renameat2 RENAME_EXCHANGE) and the old one removed, so a reader (or a kill -9, or
 * a full disk) sees the complete old export or the complete new one. Files of the old directory that export does
 * not write (a README, a model card) are carried over as hard links first. */
static int publish_dir(const char *stage, const char *dir, prefopt_err *err)
{
    struct stat st;
    if (stat(dir, &st)) {
        if (rename(stage, dir)) {
            prefopt_err_set(err, "%s: rename to %s failed: %s", stage, dir, strerror(errno));
            return 1;
        }
        prefopt_fsync_dir_of(dir);
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) {
        prefopt_err_set(err, "%s: exists and is not a directory", dir);
        return 1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        prefopt_err_set(err, "%s: cannot read the directory: %s", dir, strerror(errno));
        return 1;
    }
    int sfd = open(stage, O_RDONLY | O_DIRECTORY), bad = sfd < 0;
    struct dirent *e;
    while (!bad && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat es;
        if (fstatat(sfd, e->d_name, &es, AT_SYMLINK_NOFOLLOW) == 0)
            continue; /* written by this export */
        if (fstatat(dirfd(d), e->d_name, &es, AT_SYMLINK_NOFOLLOW) || S_ISDIR(es.st_mode)) {
            prefopt_err_set(err, "%s: holds the directory '%s', which export would not keep: export to a new "
                                 "directory (nothing was changed)", dir, e->d_name);
            bad = 1;
        } else if (linkat(dirfd(d), e->d_name, sfd, e->d_name, 0)) {
            prefopt_err_set(err, "%s: cannot carry '%s' over to the new export: %s (nothing was changed)", dir,
                            e->d_name, strerror(errno));
            bad = 1;
        }
    }
    closedir(d);
    if (sfd >= 0)
        close(sfd);
    if (!bad && renameat2(AT_FDCWD, stage, AT_FDCWD, dir, RENAME_EXCHANGE)) {
        prefopt_err_set(err, "%s: exchanging with %s failed: %s", stage, dir, strerror(errno));
        bad = 1;
    }
    if (bad)
        return 1;
    prefopt_fsync_dir_of(dir);
    remove_stage(stage); /* now the old export */
    return 0;
}

/* config and tokenizer from model_path, weights from the "model" group of wf (model_path's own file, or with
 * LoRA the base's) plus L's adapters merged in when L is given; the safetensors in dtype */
static int export_dir(const char *model_path, hid_t wf, const char *wpath, hf_lora *L, const char *dir,
                      const char *dtype, prefopt_err *err);

/* export --dtype: empty (the imported torch_dtype), or one of the two prefopt writes */
static int bad_dtype(const char *dtype, prefopt_err *err)
{
    if (dtype && *dtype && strcmp(dtype, "fp32") && strcmp(dtype, "float32") && strcmp(dtype, "bf16") &&
        strcmp(dtype, "bfloat16"))
        return prefopt_err_set(err, "export --dtype '%s': expected bf16 or fp32", dtype), 1;
    return 0;
}

int prefopt_hf_export(const char *model_path, const char *dir, prefopt_err *err)
{
    return prefopt_hf_export_dtype(model_path, dir, "", err);
}

int prefopt_hf_export_dtype(const char *model_path, const char *dir, const char *dtype, prefopt_err *err)
{
    if (bad_dtype(dtype, err))
        return 1;
    hf_lora L;
    int lr = hf_lora_open(model_path, &L, err);
    if (lr < 0)
        return 1;
    if (lr == 0) { /* a LoRA checkpoint has adapters, not weights: PEFT's adapter directory */
        hf_lora_close(&L);
        return prefopt_hf_export_peft(model_path, dir, err);
    }
    hid_t f;
    if (ck_open(model_path, MPI_COMM_NULL, &f, err))
        return 1;
    int rc = export_dir(model_path, f, model_path, NULL, dir, dtype, err);
    H5Fclose(f);
    return rc;
}

int prefopt_hf_export_merged(const char *ckpt, const char *dir, const char *dtype, prefopt_err *err)
{
    if (bad_dtype(dtype, err))
        return 1;
    hf_lora L;
    int lr = hf_lora_open(ckpt, &L, err);
    if (lr)
        return lr > 0 ? (prefopt_err_set(err, "%s: --merge-lora needs a LoRA checkpoint (this file has no adapters)",
                                         ckpt), 1)
                      : 1;
    hid_t b;
    int rc = ck_open(L.base, MPI_COMM_NULL, &b, err);
    if (!rc) {
        prefopt_model_config bc;
        rc = ck_read_config(b, L.base, &bc, err);
        if (!rc && (bc.hidden_size != L.cfg.hidden_size || bc.num_layers != L.cfg.num_layers ||
                    bc.vocab_size != L.cfg.vocab_size || bc.arch != L.cfg.arch)) {
            prefopt_err_set(err, "%s: the base model %s has another architecture than the checkpoint", ckpt, L.base);
            rc = 1;
        }
        if (!rc)
            rc = hf_lora_check_base(&L, b, err);
        if (!rc)
            rc = export_dir(ckpt, b, L.base, &L, dir, dtype, err);
        H5Fclose(b);
    }
    hf_lora_close(&L);
    return rc;
}

static int export_dir(const char *model_path, hid_t wf, const char *wpath, hf_lora *L, const char *dir,
                      const char *dtype, prefopt_err *err)
{
    hid_t f;
    if (ck_open(model_path, MPI_COMM_NULL, &f, err))
        return 1;
    prefopt_model_config cfg;
    prefopt_tokenizer_record tok = {0};
    if (ck_read_config(f, model_path, &cfg, err) || ck_check_model_tensors(f, model_path, &cfg, err) ||
        ck_read_tokenizer(f, model_path, &tok, err)) {
        H5Fclose(f);
        return 1;
    }
    /* the dtype asked for, else the imported one; only bf16 and fp32 are written (float16 models export fp32) */
    const char *want = dtype && *dtype ? dtype : cfg.torch_dtype;
    const int bf16 = !strcmp(want, "bf16") || !strcmp(want, "bfloat16");
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", bf16 ? "bfloat16" : "float32");
    /* everything goes into a staging directory beside dir, published only when complete (publish_dir) */
    char stage[4200], parent[4200];
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    snprintf(stage, sizeof stage, "%.*s.tmp.%d", (int)dl, dir, (int)getpid());
    snprintf(parent, sizeof parent, "%s", stage);
    char *sl = strrchr(parent, '/');
    if (sl && sl != parent)
        *sl = '\0';
    if ((sl && sl != parent && mkdir_parents(parent, err)) || mkdir_parents(stage, err)) {
        prefopt_tokenizer_record_free(&tok);
        H5Fclose(f);
        return 1;
    }
    prefopt_tensor_spec *specs;
    int ns = prefopt_model_tensor_specs(&cfg, &specs);
    double need = 65536.0 + (double)tok.len;
    for (int i = 0; i < ns; i++)
        need += 4.0 * (double)numel(&specs[i]) + 128.0;
    for (int i = 0; i < PREFOPT_TOK_NSIDE; i++)
        need += (double)tok.side_len[i];
    char p[4400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    int rc = prefopt_check_room(stage, p, need, err);
    snprintf(p, sizeof p, "%s/config.json", stage);
    if (!rc)
        rc = prefopt_hf_config_write(p, &cfg, err);
    out_tensor *o = NULL;
    int no = plan(&cfg, specs, ns, &o);
    const char **names = prefopt_xmalloc(sizeof(char *) * (size_t)no, "names");
    int *ndims = prefopt_xmalloc(sizeof(int) * (size_t)no, "ndims");
    int64_t(*shapes)[2] = prefopt_xmalloc(sizeof *shapes * (size_t)no, "shapes");
    for (int i = 0; i < no; i++) {
        names[i] = o[i].hf;
        ndims[i] = o[i].ndim;
        shapes[i][0] = o[i].shape[0];
        shapes[i][1] = o[i].shape[1];
    }
    snprintf(p, sizeof p, "%s/model.safetensors", stage);
    prefopt_st_writer *w = rc ? NULL
                              : prefopt_st_writer_open_dtype(p, no, names, ndims, (const int64_t(*)[2])shapes,
                                                             bf16 ? PREFOPT_ST_BF16 : PREFOPT_ST_F32, err);
    rc |= !w;
    for (int i = 0; i < no && !rc; i++) {
        out_tensor *t = &o[i];
        const prefopt_tensor_spec *s = &specs[t->src[0]];
        size_t total = 0;
        for (int k = 0; k < t->nsrc; k++)
            total += numel(&specs[t->src[k]]);
        float *a = prefopt_xmalloc(sizeof(float) * (total ? total : 1), "tensor");
        for (size_t k = 0, off = 0; k < (size_t)t->nsrc && !rc; off += numel(&specs[t->src[k]]), k++) {
            rc = ck_read_full(wf, wpath, "model", &specs[t->src[k]], a + off, err);
            if (!rc && L && hf_lora_merge(L, specs[t->src[k]].name, a + off, err) < 0)
                rc = 1;
        }
        if (!rc && (t->kind == 1 || t->kind == 2)) {
            /* [out][in] (for c_attn: q, k, v rows stacked) -> Conv1D [in][out] */
            float *b = prefopt_xmalloc(sizeof(float) * total, "transpose");
            int64_t in = s->shape[1];
            transpose(a, b, (int64_t)(total / (size_t)in), in);
            free(a);
            a = b;
        }
        if (!rc)
            rc = prefopt_st_writer_put(w, t->hf, a, err);
        free(a);
    }
    if (w)
        rc |= prefopt_st_writer_close(w, rc ? NULL : err);
    if (!rc && tok.json)
        rc = write_file(stage, "tokenizer.json", tok.json, tok.len, err);
    /* what transformers and serving stacks read besides: the tokenizer's config (chat template, special tokens),
     * its special-token map, a chat_template.jinja, and generation_config.json (every eos id) */
    for (int i = 0; i < PREFOPT_TOK_NSIDE && !rc; i++)
        if (tok.side[i])
            rc = write_file(stage, prefopt_tokenizer_side_names[i], tok.side[i], tok.side_len[i], err);
    if (!rc && !tok.side[PREFOPT_TOK_GENERATION]) { /* none imported: the ids of the config */
        char g[256];
        int n = snprintf(g, sizeof g, "{\n  \"_from_model_config\": true");
        if (cfg.bos_id >= 0)
            n += snprintf(g + n, sizeof g - (size_t)n, ",\n  \"bos_token_id\": %d", cfg.bos_id);
        if (cfg.eos_id >= 0)
            n += snprintf(g + n, sizeof g - (size_t)n, ",\n  \"eos_token_id\": %d", cfg.eos_id);
        if (cfg.pad_id >= 0)
            n += snprintf(g + n, sizeof g - (size_t)n, ",\n  \"pad_token_id\": %d", cfg.pad_id);
        n += snprintf(g + n, sizeof g - (size_t)n, "\n}\n");
        rc = write_file(stage, "generation_config.json", g, (size_t)n, err);
    }
    if (!rc)
        rc = publish_dir(stage, dir, err);
    if (rc)
        remove_stage(stage);
    free(names);
    free(ndims);
    free(shapes);
    free(o);
    free(specs);
    prefopt_tokenizer_record_free(&tok);
    H5Fclose(f);
    return rc;
}
