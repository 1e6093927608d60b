/* prefopt export: a model file or checkpoint -> a Hugging Face directory (config.json, model.safetensors in fp32,
 * tokenizer.json when recorded). Tensors are read one at a time (checksums verified) and streamed into the
 * safetensors file in the order its header declares; GPT-2's q/k/v are fused back into c_attn and the Conv1D
 * weights transposed back to [in][out]. */
#define _GNU_SOURCE
#include "ckpt_io.h"
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
    int kind;   /* 0 copy, 1 transpose, 2 fuse q/k/v weights (transposed), 3 fuse q/k/v biases */
    int src[3]; /* spec indices */
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

int prefopt_hf_export(const char *model_path, const char *dir, prefopt_err *err)
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
    prefopt_st_writer *w = rc ? NULL : prefopt_st_writer_open(p, no, names, ndims, (const int64_t(*)[2])shapes, err);
    rc |= !w;
    for (int i = 0; i < no && !rc; i++) {
        out_tensor *t = &o[i];
        const prefopt_tensor_spec *s = &specs[t->src[0]];
        size_t n = numel(s), total = t->kind >= 2 ? 3 * n : n;
        float *a = prefopt_xmalloc(sizeof(float) * (total ? total : 1), "tensor");
        for (int k = 0; k < (t->kind >= 2 ? 3 : 1) && !rc; k++)
            rc = ck_read_full(f, model_path, "model", &specs[t->src[k]], a + k * n, err);
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
