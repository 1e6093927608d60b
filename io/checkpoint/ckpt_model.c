/* Model files and checkpoint directories on top of the HDF5 layer (checkpoint.c): a prefopt_model's parameters
 * (and AdamW moments with the same flat layout) as block-cyclic pieces, the atomic save protocol, latest,
 * keep-last-N, resume. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "prefopt/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/statvfs.h>

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

/* Which parameters a list of items holds: the base's (every tensor of a model without LoRA), the trained ones
 * (the moments' layout: prefopt_model_train_data), or the LoRA adapters. */
enum { ITEMS_BASE, ITEMS_TRAINED, ITEMS_LORA };

/* The model's parameters as items; with buf != NULL, pieces point into buf (a flat buffer of the trained part's
 * layout: the moments) instead of the weights. */
static ck_item *model_items(prefopt_model *m, const float *buf, int *n, int which)
{
    size_t count;
    float *base = prefopt_model_train_data(m, &count);
    int np = prefopt_model_param_count(m), k = 0;
    ck_item *it = prefopt_xcalloc((size_t)np + 1, sizeof *it, "checkpoint items");
    for (int i = 0; i < np; i++) {
        int lora = prefopt_model_param_is_lora(m, i);
        if (which == ITEMS_BASE ? lora : which == ITEMS_LORA ? !lora : !prefopt_model_param_trained(m, i))
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
    ck_item *it = model_items(m, NULL, &n, ITEMS_BASE);
    uint64_t *s = prefopt_xcalloc((size_t)n + 1, sizeof *s, "checksums");
    for (int i = 0; i < n; i++)
        s[i] = it[i].p.sums ? ck_checksum_piece(&it[i].p) : 0;
    MPI_Allreduce(MPI_IN_PLACE, s, n, MPI_UINT64_T, MPI_SUM, prefopt_model_get_grid(m)->tp);
    uint64_t total = ck_combine_checksums(s, n);
    free(s);
    free(it);
    return total;
}

static int config_matches(const char *path, const prefopt_model_config *f, const prefopt_model_config *m,
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

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, O_RDONLY | (dir ? O_DIRECTORY : 0));
    if (fd < 0)
        return 1;
    int r = fsync(fd);
    close(fd);
    return r != 0;
}

static void dir_of(const char *path, char *dir, size_t len)
{
    const char *s = strrchr(path, '/');
    if (!s)
        snprintf(dir, len, ".");
    else if (s == path)
        snprintf(dir, len, "/");
    else
        snprintf(dir, len, "%.*s", (int)(s - path), path);
}

/* Rank 0 after the collective close: make the data durable, then publish the name atomically. */
static int publish(const char *tmp, const char *final, prefopt_err *err)
{
    char dir[4096];
    dir_of(final, dir, sizeof dir);
    if (fsync_path(tmp, 0)) {
        prefopt_err_set(err, "%s: fsync failed: %s", tmp, strerror(errno));
        return 1;
    }
    if (rename(tmp, final)) {
        prefopt_err_set(err, "%s: rename to %s failed: %s", tmp, final, strerror(errno));
        return 1;
    }
    fsync_path(dir, 1);
    return 0;
}

static int mark_complete(hid_t f)
{
    int64_t one = 1;
    return ck_attr_int64(f, "complete", &one, 1, 1);
}

/* Who touches the file (issue 17): the replicas hold identical weights, moments and layouts, so only replica 0's
 * grid opens a model file or checkpoint (the MPI-IO driver on its TP communicator: collective metadata, the
 * two-phase writes and the aggregators among tp_size ranks, not the world). A read is then handed to the other
 * replicas by one broadcast per flat buffer over the DP communicator (a tree: log2(dp) steps), so the time of a
 * save or a load grows with the grid, not with the number of replicas. */
static int is_io_rank(const prefopt_grid *g) { return g->dp_rank == 0; }

/* replica 0's copy of a flat local buffer (params or a moment: the same layout on every replica) to all replicas */
static void bcast_replicas(const prefopt_grid *g, float *buf, size_t count)
{
    if (g->dp_size == 1 || !buf)
        return;
    const size_t chunk = (size_t)1 << 28; /* MPI counts are int */
    for (size_t off = 0; off < count; off += chunk)
        MPI_Bcast(buf + off, (int)(count - off < chunk ? count - off : chunk), MPI_FLOAT, 0, g->dp);
}

int prefopt_model_file_load(prefopt_model *m, const char *path, prefopt_err *err)
{
    const prefopt_grid *g = prefopt_model_get_grid(m);
    int rc = 0;
    if (is_io_rank(g)) {
        hid_t f;
        rc = ck_open(path, g->tp, &f, err);
        if (!rc) {
            prefopt_model_config fc;
            rc = ck_read_config(f, path, &fc, err) || config_matches(path, &fc, prefopt_model_get_config(m), err);
            if (!rc && H5Aexists(f, "lora") > 0) {
                prefopt_err_set(err, "%s: a LoRA checkpoint holds adapters, not weights: use the run's model.h5 "
                                     "(adapters merged), or export --hf DIR --merge-lora", path);
                rc = 1;
            }
            if (!rc) {
                int n;
                ck_item *it = model_items(m, NULL, &n, ITEMS_BASE);
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
    bcast_replicas(g, w, count);
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
    if (is_io_rank(g))
        ck_create(tmp, g->tp, &f, err);
    if (prefopt_agree_idle(g->world, err))
        return 1;
    int rc = 0;
    if (is_io_rank(g)) {
        rc = ck_write_config(f, "model", prefopt_model_get_config(m), tok, g->tp, err);
        int n;
        ck_item *it = model_items(m, NULL, &n, ITEMS_BASE); /* a LoRA model's base: merge the adapters first */
        rc |= ck_write_items(f, tmp, "model", it, n, 0, 1, g->tp, err);
        free(it);
        rc |= mark_complete(f);
    }
    rc = ck_close_agreed_over(f, tmp, is_io_rank(g) ? g->tp : MPI_COMM_NULL, g->world, rc, err);
    if (rc && !err->set)
        prefopt_err_set(err, "%s: write failed", tmp);
    if (prefopt_agree_idle(g->world, err)) {
        if (g->world_rank == 0)
            unlink(tmp);
        return 1;
    }
    if (g->world_rank == 0)
        publish(tmp, path, err);
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
        rc |= mark_complete(out);
        rc |= ck_close(out, tmp, err);
        if (!rc)
            rc = publish(tmp, dst, err);
        else
            unlink(tmp);
    }
    free(specs);
    prefopt_tokenizer_record_free(&tok);
    H5Fclose(in);
    return rc;
}

/* ---- checkpoints ----------------------------------------------------------------------------------------- */

static int mkdirs(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0777);
            *s = '/';
        }
    return mkdir(p, 0777) && errno != EEXIST;
}

static int parse_step(const char *name, long long *step, int *tmp)
{
    int len = 0;
    if (sscanf(name, "step-%lld.h5%n", step, &len) != 1 || len == 0)
        return 0;
    if (name[len] == '\0')
        *tmp = 0;
    else if (!strcmp(name + len, ".tmp"))
        *tmp = 1;
    else
        return 0;
    return 1;
}

static int cmp_desc(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Newest first; with tmps, the .tmp leftovers of killed writers instead. */
static int list_steps(const char *dir, long long **out, int tmps)
{
    DIR *d = opendir(dir);
    int n = 0, cap = 16;
    long long *v = prefopt_xmalloc(sizeof *v * (size_t)cap, "steps");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        long long s;
        int t;
        if (parse_step(e->d_name, &s, &t) && t == tmps) {
            if (n == cap)
                v = realloc(v, sizeof *v * (size_t)(cap *= 2));
            v[n++] = s;
        }
    }
    if (d)
        closedir(d);
    qsort(v, (size_t)n, sizeof *v, cmp_desc);
    *out = v;
    return n;
}

/* 1 when path opens as HDF5 and is marked complete; else 0 and, with why, the reason */
static int is_complete_why(const char *path, const char **why)
{
    hid_t f;
    prefopt_err e = {0};
    if (ck_open(path, MPI_COMM_NULL, &f, &e)) {
        if (why)
            *why = access(path, F_OK) ? "missing" : "cannot be opened as HDF5 (truncated or damaged)";
        return 0;
    }
    int64_t c = 0;
    int ok = !ck_attr_int64(f, "complete", &c, 1, 0) && c == 1;
    H5Fclose(f);
    if (!ok && why)
        *why = "not marked complete";
    return ok;
}

static int is_complete(const char *path) { return is_complete_why(path, NULL); }

int prefopt_ckpt_find_latest_checked(const char *dir, char *path, size_t len, char *note, size_t nlen)
{
    char p[4200], name[256] = "";
    size_t used = 0;
    note[0] = '\0';
    int any = 0;
    snprintf(p, sizeof p, "%s/latest", dir);
    FILE *f = fopen(p, "r");
    if (f) {
        any = 1;
        if (fgets(name, sizeof name, f))
            name[strcspn(name, "\r\n")] = '\0';
        fclose(f);
    }
    long long *steps;
    int n = list_steps(dir, &steps, 0), rc = 2;
    any |= n > 0;
    for (int i = -1; i < n && rc; i++) {
        if (i < 0 && !name[0])
            continue;
        if (i < 0)
            snprintf(p, sizeof p, "%s/%s", dir, name);
        else
            snprintf(p, sizeof p, "%s/step-%08lld.h5", dir, steps[i]);
        if (i >= 0 && name[0] && !strcmp(strrchr(p, '/') + 1, name))
            continue; /* what latest names, tried first */
        const char *why = NULL;
        if (is_complete_why(p, &why)) {
            snprintf(path, len, "%s", p);
            rc = 0;
        } else if (used + 8 < nlen)
            used += (size_t)snprintf(note + used, nlen - used, "%s%s %s", used ? "; " : "", strrchr(p, '/') + 1, why);
    }
    free(steps);
    return rc && !any ? 1 : rc;
}

int prefopt_ckpt_find_latest(const char *dir, char *path, size_t len)
{
    char p[4200], name[256] = "";
    snprintf(p, sizeof p, "%s/latest", dir);
    FILE *f = fopen(p, "r");
    if (f) {
        if (fgets(name, sizeof name, f))
            name[strcspn(name, "\r\n")] = '\0';
        fclose(f);
        snprintf(p, sizeof p, "%s/%s", dir, name);
        if (name[0] && is_complete(p)) {
            snprintf(path, len, "%s", p);
            return 0;
        }
    }
    long long *steps;
    int n = list_steps(dir, &steps, 0), rc = 1;
    for (int i = 0; i < n && rc; i++) {
        snprintf(p, sizeof p, "%s/step-%08lld.h5", dir, steps[i]);
        if (is_complete(p)) {
            snprintf(path, len, "%s", p);
            rc = 0;
        }
    }
    free(steps);
    return rc;
}

static int write_latest(const char *dir, const char *name, prefopt_err *err)
{
    char p[4200], t[4300];
    snprintf(p, sizeof p, "%s/latest", dir);
    snprintf(t, sizeof t, "%s.tmp", p);
    FILE *f = fopen(t, "w");
    if (!f || fprintf(f, "%s\n", name) < 0 || fflush(f) || fsync(fileno(f))) {
        prefopt_err_set(err, "%s: cannot write: %s", t, strerror(errno));
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    if (rename(t, p)) {
        prefopt_err_set(err, "%s: rename failed: %s", p, strerror(errno));
        return 1;
    }
    fsync_path(dir, 1);
    return 0;
}

static void prune(const char *dir, int keep, long long current)
{
    long long *steps;
    int n = list_steps(dir, &steps, 0);
    char p[4200];
    for (int i = keep > 0 ? keep : 1; i < n; i++)
        if (steps[i] != current) {
            snprintf(p, sizeof p, "%s/step-%08lld.h5", dir, steps[i]);
            unlink(p);
        }
    free(steps);
    /* leftovers of writers killed mid-write */
    n = list_steps(dir, &steps, 1);
    for (int i = 0; i < n; i++)
        if (steps[i] != current) {
            snprintf(p, sizeof p, "%s/step-%08lld.h5.tmp", dir, steps[i]);
            unlink(p);
        }
    free(steps);
}

/* Called by replica 0's grid only (the file's communicator is g->tp); rng_rows holds, on each of those ranks, the
 * rows of its grid position in every replica (gathered over g->dp: row of world rank d*tp + tp_rank is
 * rng_rows[d]). */
static int write_state(hid_t f, const prefopt_train_state *st_in, const uint64_t *rng_rows, const prefopt_grid *g,
                       prefopt_err *err)
{
    /* the scalar state is rank 0's (attributes are written collectively with identical values) */
    prefopt_train_state st = *st_in;
    int64_t v[13] = {st.step, st.sched_step, st.epoch, st.tokens_seen};
    memcpy(v + 4, st.cursor, sizeof st.cursor);
    v[12] = g->world_size;
    MPI_Bcast(v, 13, MPI_INT64_T, 0, g->tp);
    MPI_Bcast(&st.lr, 1, MPI_DOUBLE, 0, g->tp);
    hid_t grp = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = grp < 0;
    bad |= ck_attr_int64(grp, "step", &v[0], 1, 1);
    bad |= ck_attr_int64(grp, "sched_step", &v[1], 1, 1);
    bad |= ck_attr_int64(grp, "epoch", &v[2], 1, 1);
    bad |= ck_attr_int64(grp, "tokens_seen", &v[3], 1, 1);
    bad |= ck_attr_int64(grp, "cursor", &v[4], 8, 1);
    bad |= ck_attr_int64(grp, "world_size", &v[12], 1, 1);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(grp, "lr", H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    bad |= a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, &st.lr) < 0;
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(sp);
    /* rng: one row per world rank; each writer writes the rows of its grid position (stride tp_size) */
    hsize_t dims[2] = {(hsize_t)g->world_size, 4}, start[2] = {(hsize_t)g->tp_rank, 0};
    hsize_t stride[2] = {(hsize_t)g->tp_size, 1}, cnt[2] = {(hsize_t)g->dp_size, 1}, blk[2] = {1, 4};
    hid_t fs = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(grp, "rng", H5T_STD_U64LE, fs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, stride, cnt, blk);
    hsize_t mdims[2] = {(hsize_t)g->dp_size, 4};
    hid_t ms = H5Screate_simple(2, mdims, NULL);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    bad |= ds < 0 || H5Dwrite(ds, H5T_NATIVE_UINT64, ms, fs, dxpl, rng_rows) < 0;
    H5Pclose(dxpl);
    H5Sclose(ms);
    H5Sclose(fs);
    if (ds >= 0)
        H5Dclose(ds);
    /* the INI text: rank 0's copy, written by rank 0 */
    long long len = st.train_config ? (long long)strlen(st.train_config) : 0;
    MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, g->tp);
    if (len > 0) {
        hsize_t d = (hsize_t)len;
        hid_t s2 = H5Screate_simple(1, &d, NULL);
        hid_t ds2 = H5Dcreate2(grp, "train_config", H5T_STD_U8LE, s2, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        hid_t m2 = H5Screate_simple(1, &d, NULL);
        if (g->world_rank != 0) {
            H5Sselect_none(s2);
            H5Sselect_none(m2);
        }
        hid_t x2 = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_dxpl_mpio(x2, H5FD_MPIO_COLLECTIVE);
        bad |= ds2 < 0 || H5Dwrite(ds2, H5T_NATIVE_UCHAR, m2, s2, x2, st.train_config) < 0;
        H5Pclose(x2);
        H5Sclose(m2);
        H5Sclose(s2);
        if (ds2 >= 0)
            H5Dclose(ds2);
    }
    if (grp >= 0)
        H5Gclose(grp);
    if (bad)
        prefopt_err_set(err, "cannot write the training state");
    return bad;
}

/* Called by replica 0's grid only; rng_rows receives the rows of this grid position in every replica (rng_rows[d]
 * for replica d), scattered over g->dp afterwards. */
static int read_state(hid_t f, const char *path, prefopt_train_state *st, uint64_t *rng_rows, const prefopt_grid *g,
                      prefopt_err *err)
{
    memset(st, 0, sizeof *st);
    hid_t grp = H5Lexists(f, "state", H5P_DEFAULT) > 0 ? H5Gopen2(f, "state", H5P_DEFAULT) : -1;
    if (grp < 0) {
        prefopt_err_set(err, "%s: group 'state' missing (a model file, not a checkpoint?)", path);
        return 1;
    }
    int64_t ws = 0;
    const char *bad = NULL;
    if (ck_attr_int64(grp, "step", &st->step, 1, 0))
        bad = "step";
    else if (ck_attr_int64(grp, "sched_step", &st->sched_step, 1, 0))
        bad = "sched_step";
    else if (ck_attr_int64(grp, "epoch", &st->epoch, 1, 0))
        bad = "epoch";
    else if (ck_attr_int64(grp, "tokens_seen", &st->tokens_seen, 1, 0))
        bad = "tokens_seen";
    else if (ck_attr_int64(grp, "cursor", st->cursor, 8, 0))
        bad = "cursor";
    else if (ck_attr_int64(grp, "world_size", &ws, 1, 0))
        bad = "world_size";
    if (!bad) {
        hid_t a = H5Aopen(grp, "lr", H5P_DEFAULT);
        if (a < 0 || H5Aread(a, H5T_NATIVE_DOUBLE, &st->lr) < 0)
            bad = "lr";
        if (a >= 0)
            H5Aclose(a);
    }
    if (bad) {
        prefopt_err_set(err, "%s: state attribute '%s' missing", path, bad);
        H5Gclose(grp);
        return 1;
    }
    hid_t ds = H5Dopen2(grp, "rng", H5P_DEFAULT);
    /* the saving run's world size: rows of my grid position in every replica; else every rank gets row 0 */
    int same = ws == g->world_size;
    hsize_t dims[2] = {(hsize_t)(ws > 0 ? ws : 1), 4}, start[2] = {same ? (hsize_t)g->tp_rank : 0, 0};
    hsize_t stride[2] = {(hsize_t)g->tp_size, 1}, cnt[2] = {same ? (hsize_t)g->dp_size : 1, 1}, blk[2] = {1, 4};
    hid_t fs = H5Screate_simple(2, dims, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, stride, cnt, blk);
    hsize_t mdims[2] = {cnt[0], 4};
    hid_t ms = H5Screate_simple(2, mdims, NULL);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    int rc = ds < 0 || H5Dread(ds, H5T_NATIVE_UINT64, ms, fs, dxpl, rng_rows) < 0;
    if (!rc && !same)
        for (int d = 1; d < g->dp_size; d++)
            memcpy(rng_rows + 4 * (size_t)d, rng_rows, 4 * sizeof *rng_rows);
    H5Pclose(dxpl);
    H5Sclose(ms);
    H5Sclose(fs);
    if (ds >= 0)
        H5Dclose(ds);
    if (rc)
        prefopt_err_set(err, "%s: state dataset 'rng' unreadable", path);
    size_t len;
    if (!rc && H5Lexists(grp, "train_config", H5P_DEFAULT) > 0) {
        hid_t d2 = H5Dopen2(grp, "train_config", H5P_DEFAULT);
        hid_t s2 = H5Dget_space(d2);
        len = (size_t)H5Sget_simple_extent_npoints(s2);
        H5Sclose(s2);
        st->train_config = prefopt_xmalloc(len + 1, "train_config");
        hid_t x2 = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_dxpl_mpio(x2, H5FD_MPIO_COLLECTIVE);
        rc = H5Dread(d2, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, x2, st->train_config) < 0;
        H5Pclose(x2);
        H5Dclose(d2);
        st->train_config[len] = '\0';
        if (rc)
            prefopt_err_set(err, "%s: state dataset 'train_config' unreadable", path);
    }
    H5Gclose(grp);
    return rc;
}

/* A full disk (or a file-size limit) met in the middle of the collective HDF5 writes sends the ranks down different
 * error paths inside HDF5 (one flushes metadata, another truncates) and the save hangs in H5Fclose. So the room is
 * checked first, on rank 0: the save then fails cleanly and the previous checkpoint stays the latest. */
static void check_room(const char *dir, const char *name, const prefopt_model_config *cfg, int copies,
                       prefopt_err *err)
{
    prefopt_tensor_spec *specs = NULL;
    int n = prefopt_model_tensor_specs(cfg, &specs);
    double need = 1 << 20; /* attributes, state, tokenizer.json, HDF5 metadata */
    for (int i = 0; i < n; i++)
        need += 4.0 * copies * (double)specs[i].shape[0] * (specs[i].ndim == 2 ? (double)specs[i].shape[1] : 1.0);
    free(specs);
    const double mib = 1 << 20;
    struct rlimit rl;
    struct statvfs vfs;
    if (!getrlimit(RLIMIT_FSIZE, &rl) && rl.rlim_cur != RLIM_INFINITY && need > (double)rl.rlim_cur)
        prefopt_err_set(err, "%s: checkpoint %s needs about %.1f MiB but the file size limit (ulimit -f) is %.1f MiB "
                        "(the previous checkpoint is kept)", dir, name, need / mib, (double)rl.rlim_cur / mib);
    else if (!statvfs(dir, &vfs) && need > (double)vfs.f_bavail * (double)vfs.f_frsize)
        prefopt_err_set(err, "%s: no room for checkpoint %s: it needs about %.1f MiB, the file system has %.1f MiB "
                        "free (the previous checkpoint is kept)", dir, name, need / mib,
                        (double)vfs.f_bavail * (double)vfs.f_frsize / mib);
}

int prefopt_ckpt_save(const prefopt_ckpt_opts *o, prefopt_model *policy, const float *adam_m, const float *adam_v,
                      const prefopt_train_state *st, char *path_out, size_t path_len, prefopt_err *err)
{
    const prefopt_grid *g = prefopt_model_get_grid(policy);
    long long step = st->step;
    MPI_Bcast(&step, 1, MPI_LONG_LONG, 0, g->world);
    char final[4200], tmp[4300], name[64];
    snprintf(name, sizeof name, "step-%08lld.h5", step);
    snprintf(final, sizeof final, "%s/%s", o->dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    if (g->world_rank == 0 && mkdirs(o->dir))
        prefopt_err_set(err, "%s: cannot create the checkpoint directory: %s", o->dir, strerror(errno));
    if (g->world_rank == 0 && !err->set && !getenv("PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK")) /* tests: mid-write */
        check_room(o->dir, name, prefopt_model_get_config(policy), 1 + (adam_m != NULL) + (adam_v != NULL), err);
    if (prefopt_agree_idle(g->world, err))
        return 1;
    /* each rank's generator state to its grid position's writer in replica 0 (a gather over the DP communicator) */
    uint64_t *rng_rows = is_io_rank(g) ? prefopt_xcalloc((size_t)g->dp_size * 4, sizeof *rng_rows, "rng") : NULL;
    MPI_Gather(st->rng, 4, MPI_UINT64_T, rng_rows, 4, MPI_UINT64_T, 0, g->dp);
    /* replica 0's grid writes (see is_io_rank); the same calls over the world on every rank, as in model_file_save */
    hid_t f = -1;
    if (is_io_rank(g))
        ck_create(tmp, g->tp, &f, err);
    if (prefopt_agree_idle(g->world, err)) {
        free(rng_rows);
        return 1;
    }
    int rc = 0;
    if (is_io_rank(g)) {
        rc = ck_write_config(f, "checkpoint", prefopt_model_get_config(policy), o->tok, g->tp, err);
        int n;
        const prefopt_lora_config *lora = prefopt_model_lora(policy);
        ck_item *it;
        if (lora->r > 0) { /* the adapters and the base's identity; the base itself is --init's file */
            uint64_t sum = prefopt_model_base_checksum(policy); /* collective over replica 0's grid */
            rc |= ck_write_lora_attrs(f, lora, o->base_model ? o->base_model : "", sum);
            it = model_items(policy, NULL, &n, ITEMS_LORA);
            rc |= ck_write_items(f, tmp, "lora", it, n, 0, 1, g->tp, err);
        } else {
            it = model_items(policy, NULL, &n, ITEMS_BASE);
            rc |= ck_write_items(f, tmp, "model", it, n, 0, 1, g->tp, err);
        }
        free(it);
        if (adam_m) {
            it = model_items(policy, adam_m, &n, ITEMS_TRAINED);
            rc |= ck_write_items(f, tmp, "optim/m", it, n, 0, 1, g->tp, err);
            free(it);
        }
        if (adam_v) {
            it = model_items(policy, adam_v, &n, ITEMS_TRAINED);
            rc |= ck_write_items(f, tmp, "optim/v", it, n, 0, 1, g->tp, err);
            free(it);
        }
        rc |= write_state(f, st, rng_rows, g, err);
        rc |= mark_complete(f);
    }
    free(rng_rows);
    rc = ck_close_agreed_over(f, tmp, is_io_rank(g) ? g->tp : MPI_COMM_NULL, g->world, rc, err);
    if (rc && !err->set)
        prefopt_err_set(err, "%s: write failed", tmp);
    if (prefopt_agree_idle(g->world, err)) {
        if (g->world_rank == 0)
            unlink(tmp);
        return 1;
    }
    if (g->world_rank == 0 && !publish(tmp, final, err) && !write_latest(o->dir, name, err))
        prune(o->dir, o->keep_last, step);
    if (prefopt_agree_idle(g->world, err))
        return 1;
    if (path_out)
        snprintf(path_out, path_len, "%s", final);
    return 0;
}

int prefopt_ckpt_load(const char *path, prefopt_model *policy, float *adam_m, float *adam_v, prefopt_train_state *st,
                      prefopt_err *err)
{
    const prefopt_grid *g = prefopt_model_get_grid(policy);
    uint64_t *rng_rows = is_io_rank(g) ? prefopt_xcalloc((size_t)g->dp_size * 4, sizeof *rng_rows, "rng") : NULL;
    if (st)
        memset(st, 0, sizeof *st);
    if (is_io_rank(g)) { /* replica 0's grid reads; the weights, moments and state go to the others below */
        hid_t f;
        int rc = ck_open(path, g->tp, &f, err);
        if (!rc) {
            prefopt_model_config fc;
            int64_t complete = 0;
            rc = ck_read_config(f, path, &fc, err) || config_matches(path, &fc, prefopt_model_get_config(policy), err);
            if (!rc && (ck_attr_int64(f, "complete", &complete, 1, 0) || complete != 1)) {
                prefopt_err_set(err, "%s: not marked complete (an interrupted write)", path);
                rc = 1;
            }
            int n;
            const prefopt_lora_config *lora = prefopt_model_lora(policy);
            if (!rc) {
                prefopt_lora_config fl;
                char base[4096] = "";
                uint64_t fsum = 0;
                int none = ck_read_lora_attrs(f, path, &fl, base, sizeof base, &fsum, err); /* 1: no LoRA */
                if (none < 0)
                    rc = 1;
                else if (lora->r > 0 && none)
                    rc = 1, prefopt_err_set(err, "%s: a full fine-tuning checkpoint, but this run trains LoRA adapters "
                                              "(--lora-r %d)", path, lora->r);
                else if (lora->r == 0 && !none)
                    rc = 1, prefopt_err_set(err, "%s: a LoRA checkpoint (r %d on base %s): resume it with the same "
                                              "--lora-* options and --init", path, fl.r, base);
                else if (lora->r > 0 && (fl.r != lora->r || fl.targets != lora->targets || fl.alpha != lora->alpha))
                    rc = 1, prefopt_err_set(err, "%s: LoRA r %d, alpha %g, targets 0x%x in the checkpoint; this run has "
                                              "r %d, alpha %g, targets 0x%x", path, fl.r, (double)fl.alpha, fl.targets,
                                         lora->r, (double)lora->alpha, lora->targets);
                if (!rc && lora->r > 0) {
                    uint64_t sum = prefopt_model_base_checksum(policy); /* collective over replica 0's grid */
                    if (sum != fsum)
                        rc = 1, prefopt_err_set(err, "%s: trained on base %s (checksum %016llx), but the base loaded "
                                                  "now (--init) has checksum %016llx: resume on the same base model",
                                             path, base, (unsigned long long)fsum, (unsigned long long)sum);
                }
            }
            if (!rc) {
                ck_item *it = model_items(policy, NULL, &n, lora->r > 0 ? ITEMS_LORA : ITEMS_BASE);
                rc = ck_read_items(f, path, lora->r > 0 ? "lora" : "model", it, n, g->tp, err);
                free(it);
            }
            if (!rc && adam_m) {
                ck_item *it = model_items(policy, adam_m, &n, ITEMS_TRAINED);
                rc = ck_read_items(f, path, "optim/m", it, n, g->tp, err);
                free(it);
            }
            if (!rc && adam_v) {
                ck_item *it = model_items(policy, adam_v, &n, ITEMS_TRAINED);
                rc = ck_read_items(f, path, "optim/v", it, n, g->tp, err);
                free(it);
            }
            if (!rc && st)
                rc = read_state(f, path, st, rng_rows, g, err);
            H5Fclose(f);
        }
    }
    if (prefopt_agree_idle(g->world, err)) {
        free(rng_rows);
        if (st) {
            free(st->train_config);
            st->train_config = NULL;
        }
        return 1;
    }
    /* the trained part (everything, or a LoRA run's adapters: every replica loaded the base from --init) and
     * the moments, which have its layout */
    size_t count;
    float *w = prefopt_model_train_data(policy, &count);
    bcast_replicas(g, w, count);
    bcast_replicas(g, adam_m, count);
    bcast_replicas(g, adam_v, count);
    if (st && g->dp_size > 1) {
        uint64_t rng[4];
        MPI_Scatter(rng_rows, 4, MPI_UINT64_T, rng, 4, MPI_UINT64_T, 0, g->dp);
        char *cfg = st->train_config;
        long long len = cfg ? (long long)strlen(cfg) : -1;
        MPI_Bcast(st, (int)sizeof *st, MPI_BYTE, 0, g->dp); /* scalars and cursor: the same on every replica */
        MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, g->dp);
        if (!is_io_rank(g))
            cfg = len >= 0 ? prefopt_xmalloc((size_t)len + 1, "train_config") : NULL;
        if (len >= 0)
            MPI_Bcast(cfg, (int)len + 1, MPI_CHAR, 0, g->dp);
        st->train_config = cfg;
        memcpy(st->rng, rng, sizeof rng);
    } else if (st)
        memcpy(st->rng, rng_rows, sizeof st->rng);
    free(rng_rows);
    return 0;
}
