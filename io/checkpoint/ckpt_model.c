/* Tokenizer records and model files on top of the HDF5 layer (checkpoint.c): a prefopt_model's parameters (and
 * AdamW moments with the same flat layout) as block-cyclic pieces; reading a file's config and tokenizer, load,
 * save and export of model files. Checkpoint directories are ckpt_dir.c, training checkpoints ckpt_train.c. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "prefopt/files.h"

#include <errno.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- tokenizer records ----------------------------------------------------------------------------------- */

void prefopt_tokenizer_record_free(prefopt_tokenizer_record *t)
{
    free(t->json);
    t->json = NULL;
    t->len = 0;
    for (int i = 0; i < PREFOPT_TOK_NSIDE; i++) {
        free(t->side[i]);
        t->side[i] = NULL;
        t->side_len[i] = 0;
    }
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? prefopt_xmalloc((size_t)n + 1, path) : NULL;
    *len = b ? fread(b, 1, (size_t)n, f) : 0;
    if (b)
        b[*len] = '\0';
    fclose(f);
    return b;
}

int prefopt_tokenizer_record_load(const char *path, prefopt_tokenizer_record *t, prefopt_err *err)
{
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    t->json = prefopt_xmalloc((size_t)n + 1, "tokenizer.json");
    t->len = fread(t->json, 1, (size_t)n, f);
    fclose(f);
    t->json[t->len] = '\0';
    struct sha256_ctx c;
    uint8_t dig[SHA256_DIGEST_SIZE];
    sha256_init(&c);
    sha256_update(&c, t->len, (const uint8_t *)t->json);
    sha256_digest(&c, sizeof dig, dig);
    int o = snprintf(t->identity, sizeof t->identity, "sha256:");
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        o += snprintf(t->identity + o, sizeof t->identity - (size_t)o, "%02x", dig[i]);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *sl = strrchr(dir, '/');
    if (sl)
        *sl = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    for (int i = 0; i < PREFOPT_TOK_NSIDE; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, prefopt_tokenizer_side_names[i]);
        t->side[i] = slurp(p, &t->side_len[i]);
    }
    return 0;
}

/* ---- model files ----------------------------------------------------------------------------------------- */

typedef struct {
    char (*names)[128];
    int n;
    const char *path;
    const prefopt_model_config *cfg;
    prefopt_err *err;
} extra_ctx;

static herr_t extra_cb(hid_t g, const char *name, const H5L_info_t *info, void *data)
{
    (void)g, (void)info;
    extra_ctx *c = data;
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->names[i], name))
            return 0;
    prefopt_err_set(c->err, "%s: dataset 'model/%s' is not a tensor of the model its attributes describe (arch %s, "
                            "qkv_bias %d, tie_word_embeddings %d): the attributes or the tensors are wrong",
                    c->path, name, c->cfg->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama", c->cfg->qkv_bias,
                    c->cfg->tie_word_embeddings);
    return 1;
}

int ck_check_model_tensors(hid_t f, const char *path, const prefopt_model_config *cfg, prefopt_err *err)
{
    if (H5Lexists(f, "model", H5P_DEFAULT) <= 0)
        return 0; /* reported as missing tensors when read */
    prefopt_tensor_spec *specs;
    int n = prefopt_model_tensor_specs(cfg, &specs);
    extra_ctx c = {prefopt_xcalloc((size_t)n + 1, sizeof *c.names, "tensor names"), n, path, cfg, err};
    for (int i = 0; i < n; i++)
        ck_stacked_name(specs[i].name, c.names[i], sizeof c.names[i]);
    hid_t g = H5Gopen2(f, "model", H5P_DEFAULT);
    herr_t r = g < 0 ? 0 : H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, extra_cb, &c);
    if (g >= 0)
        H5Gclose(g);
    free(c.names);
    free(specs);
    return r != 0;
}

int prefopt_model_file_read_config(const char *path, prefopt_model_config *cfg, prefopt_err *err)
{
    hid_t f;
    if (ck_open(path, MPI_COMM_NULL, &f, err))
        return 1;
    int rc = ck_read_config(f, path, cfg, err) || ck_check_model_tensors(f, path, cfg, err);
    H5Fclose(f);
    return rc;
}

int prefopt_model_file_read_tokenizer(const char *path, prefopt_tokenizer_record *tok, prefopt_err *err)
{
    hid_t f;
    if (ck_open(path, MPI_COMM_NULL, &f, err))
        return 1;
    int rc = ck_read_tokenizer(f, path, tok, err);
    H5Fclose(f);
    return rc;
}

static void bcast_bytes(char **buf, size_t *len, int rank, MPI_Comm comm)
{
    long long n = *buf ? (long long)*len : -1;
    MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, comm);
    if (rank != 0) {
        *buf = n >= 0 ? prefopt_xmalloc((size_t)n + 1, "tokenizer record") : NULL;
        *len = n >= 0 ? (size_t)n : 0;
    }
    const long long chunk = 1 << 30;
    for (long long off = 0; off < n; off += chunk)
        MPI_Bcast(*buf + off, (int)(n - off < chunk ? n - off : chunk), MPI_CHAR, 0, comm);
    if (rank != 0 && *buf)
        (*buf)[n] = '\0';
}

int prefopt_model_file_read_header(const char *path, MPI_Comm comm, prefopt_model_config *cfg,
                                   prefopt_tokenizer_record *tok, prefopt_err *err)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    memset(cfg, 0, sizeof *cfg);
    if (tok)
        memset(tok, 0, sizeof *tok);
    if (rank == 0 && !prefopt_model_file_read_config(path, cfg, err) && tok)
        prefopt_model_file_read_tokenizer(path, tok, err);
    if (prefopt_agree(comm, err)) {
        if (tok)
            prefopt_tokenizer_record_free(tok);
        return 1;
    }
    MPI_Bcast(cfg, (int)sizeof *cfg, MPI_BYTE, 0, comm);
    if (tok) {
        MPI_Bcast(tok->identity, (int)sizeof tok->identity, MPI_CHAR, 0, comm);
        bcast_bytes(&tok->json, &tok->len, rank, comm);
        for (int i = 0; i < PREFOPT_TOK_NSIDE; i++)
            bcast_bytes(&tok->side[i], &tok->side_len[i], rank, comm);
    }
    return 0;
}

ck_item *ck_model_items(prefopt_model *m, const float *buf, int *n, int which)
{
    size_t count;
    float *base = prefopt_model_train_data(m, &count);
    int np = prefopt_model_param_count(m), k = 0;
    ck_item *it = prefopt_xcalloc((size_t)np + 1, sizeof *it, "checkpoint items");
    for (int i = 0; i < np; i++) {
        int lora = prefopt_model_param_is_lora(m, i);
        if (which == CK_ITEMS_BASE ? lora : which == CK_ITEMS_LORA ? !lora : !prefopt_model_param_trained(m, i))
            continue;
        prefopt_param *p = prefopt_model_param_at(m, i);
        snprintf(it[k].name, sizeof it[k].name, "%s", p->name);
        it[k].ndim = p->ndim;
        it[k].shape[0] = p->shape[0];
        it[k].shape[1] = p->shape[1];
        prefopt_dmat d = *p->value;
        if (buf)
            d.data = (float *)buf + (d.data - base);
        ck_piece_dmat(&it[k].p, p->ndim, p->shape, &d);
        k++;
    }
    *n = k;
    return it;
}

uint64_t prefopt_model_base_checksum(prefopt_model *m)
{
    int n;
    ck_item *it = ck_model_items(m, NULL, &n, CK_ITEMS_BASE);
    uint64_t *s = prefopt_xcalloc((size_t)n + 1, sizeof *s, "checksums");
    for (int i = 0; i < n; i++)
        s[i] = it[i].p.sums ? ck_checksum_piece(&it[i].p) : 0;
    MPI_Allreduce(MPI_IN_PLACE, s, n, MPI_UINT64_T, MPI_SUM, prefopt_model_get_grid(m)->tp);
    uint64_t total = ck_combine_checksums(s, n);
    free(s);
    free(it);
    return total;
}

int ck_config_matches(const char *path, const prefopt_model_config *f, const prefopt_model_config *m,
                      prefopt_err *err)
{
    if (f->arch != m->arch) {
        prefopt_err_set(err, "%s: arch is %s, the model is %s", path, f->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama",
                        m->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama");
        return 1;
    }
#define CMP(x)                                                                                                 \
    if (f->x != m->x) {                                                                                        \
        prefopt_err_set(err, "%s: config '%s' is %d in the file, %d in the model", path, #x, (int)f->x, (int)m->x); \
        return 1;                                                                                              \
    }
    CMP(vocab_size) CMP(hidden_size) CMP(num_layers) CMP(num_heads) CMP(num_kv_heads) CMP(head_dim)
    CMP(intermediate_size) CMP(max_position) CMP(qkv_bias) CMP(tie_word_embeddings)
#undef CMP
    return 0;
}

void ck_bcast_replicas(const prefopt_grid *g, float *buf, size_t count)
{
    if (g->dp_size == 1 || !buf)
        return;
    const size_t chunk = (size_t)1 << 28; /* MPI counts are int */
    for (size_t off = 0; off < count; off += chunk)
        MPI_Bcast(buf + off, (int)(count - off < chunk ? count - off : chunk), MPI_FLOAT, 0, g->dp);
}

int ck_close_tmp_agreed(hid_t f, const char *tmp, const prefopt_grid *g, int failed, prefopt_err *err)
{
    int rc = ck_close_agreed_over(f, tmp, ck_is_io_rank(g) ? g->tp : MPI_COMM_NULL, g->world, failed, err);
    if (rc && !err->set)
        prefopt_err_set(err, "%s: write failed", tmp);
    if (prefopt_agree_idle(g->world, err)) {
        if (g->world_rank == 0)
            unlink(tmp);
        return 1;
    }
    return 0;
}

int prefopt_model_file_load(prefopt_model *m, const char *path, prefopt_err *err)
{
    const prefopt_grid *g = prefopt_model_get_grid(m);
    int rc = 0;
    if (ck_is_io_rank(g)) {
        hid_t f;
        rc = ck_open(path, g->tp, &f, err);
        if (!rc) {
            prefopt_model_config fc;
            rc = ck_read_config(f, path, &fc, err) || ck_config_matches(path, &fc, prefopt_model_get_config(m), err);
            if (!rc && H5Aexists(f, "lora") > 0) {
                prefopt_err_set(err, "%s: a LoRA checkpoint holds adapters, not weights: use the run's model.h5 "
                                     "(adapters merged), or export --hf DIR --merge-lora", path);
                rc = 1;
            }
            if (!rc) {
                int n;
                ck_item *it = ck_model_items(m, NULL, &n, CK_ITEMS_BASE);
                rc = ck_read_items(f, path, "model", it, n, g->tp, err);
                free(it);
            }
            H5Fclose(f);
        }
    }
    if (prefopt_agree_idle(g->world, err))
        return 1;
    size_t count;
    float *w = prefopt_model_param_data(m, &count);
    ck_bcast_replicas(g, w, count);
    return rc;
}

int prefopt_model_file_save(prefopt_model *m, const char *path, const prefopt_tokenizer_record *tok, prefopt_err *err)
{
    const prefopt_grid *g = prefopt_model_get_grid(m);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* replica 0's grid writes; the others hold the same weights. Every rank makes the same calls over the world
     * (two agreements), so a failure on a writer reaches all ranks */
    hid_t f = -1;
    if (ck_is_io_rank(g))
        ck_create(tmp, g->tp, &f, err);
    if (prefopt_agree_idle(g->world, err))
        return 1;
    int rc = 0;
    if (ck_is_io_rank(g)) {
        rc = ck_write_config(f, "model", prefopt_model_get_config(m), tok, g->tp, err);
        int n;
        ck_item *it = ck_model_items(m, NULL, &n, CK_ITEMS_BASE); /* a LoRA model's base: merge the adapters first */
        rc |= ck_write_items(f, tmp, "model", it, n, 0, 1, g->tp, err);
        free(it);
        rc |= ck_mark_complete(f);
    }
    if (ck_close_tmp_agreed(f, tmp, g, rc, err))
        return 1;
    if (g->world_rank == 0)
        ck_publish(tmp, path, err);
    return prefopt_agree_idle(g->world, err);
}

int prefopt_model_file_export_weights(const char *src, const char *dst, prefopt_err *err)
{
    hid_t in, out;
    if (ck_open(src, MPI_COMM_NULL, &in, err))
        return 1;
    prefopt_model_config cfg;
    prefopt_tokenizer_record tok;
    if (ck_read_config(in, src, &cfg, err) || ck_check_model_tensors(in, src, &cfg, err) ||
        ck_read_tokenizer(in, src, &tok, err)) {
        H5Fclose(in);
        return 1;
    }
    /* Every tensor is read (checksum and finiteness verified: an export must not launder a corrupt checkpoint) and
     * written to the new file one at a time. Not H5Ocopy: on a full disk it crashes inside HDF5 (1.10). */
    prefopt_tensor_spec *specs;
    int n = prefopt_model_tensor_specs(&cfg, &specs), rc = 0;
    double bytes = 16384.0; /* the tensors and about HDF5's overhead: root attributes, a header per dataset */
    for (int i = 0; i < n; i++)
        bytes += 4.0 * (double)specs[i].shape[0] * (double)(specs[i].ndim == 2 ? specs[i].shape[1] : 1) + 256.0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    rc = prefopt_check_room(dst, dst, bytes, err);
    if (!rc)
        rc = ck_create(tmp, MPI_COMM_NULL, &out, err);
    if (!rc) {
        uint64_t *sums = prefopt_xcalloc((size_t)n + 1, sizeof *sums, "checksums");
        rc = ck_write_config(out, "model", &cfg, &tok, MPI_COMM_NULL, err) ||
             ck_create_datasets(out, tmp, "model", specs, n, err);
        for (int i = 0; i < n && !rc; i++) {
            size_t cnt = (size_t)specs[i].shape[0] * (size_t)(specs[i].ndim == 2 ? specs[i].shape[1] : 1);
            float *buf = prefopt_xmalloc(sizeof(float) * (cnt ? cnt : 1), "tensor");
            rc = ck_read_full(in, src, "model", &specs[i], buf, err) ||
                 ck_write_full(out, tmp, "model", &specs[i], buf, &sums[i], err);
            free(buf);
        }
        if (!rc)
            rc = ck_write_checksums(out, tmp, "model", specs, n, sums, err);
        free(sums);
        rc |= ck_mark_complete(out);
        rc |= ck_close(out, tmp, err);
        if (!rc)
            rc = ck_publish(tmp, dst, err);
        else
            unlink(tmp);
    }
    free(specs);
    prefopt_tokenizer_record_free(&tok);
    H5Fclose(in);
    return rc;
}
