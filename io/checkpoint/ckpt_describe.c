/* `prefopt inspect --file` for model files and checkpoints: the kind from the root attributes, the config, the
 * tokenizer and its side files, every dataset with shape, dtype and checksums (each logical tensor read back and its
 * checksum verified), and a checkpoint's training state. Serial HDF5 reads on the calling rank only. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int prefopt_model_file_kind(const char *path, char *kind, size_t len)
{
    kind[0] = '\0';
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return 0;
    fclose(probe);
    if (H5Fis_hdf5(path) <= 0)
        return 0;
    hid_t f;
    prefopt_err err = {0};
    if (ck_open(path, MPI_COMM_NULL, &f, &err))
        return 0;
    char s[96] = "";
    int rc = !ck_attr_str(f, "kind", s, sizeof s, 0) && (!strcmp(s, "model") || !strcmp(s, "checkpoint"));
    H5Fclose(f);
    if (rc)
        snprintf(kind, len, "%s", s);
    return rc;
}

static const char *dtype_name(hid_t t)
{
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (c == H5T_FLOAT)
        return sz == 4 ? "float32" : sz == 8 ? "float64" : sz == 2 ? "float16" : "float";
    if (c == H5T_INTEGER)
        return H5Tget_sign(t) == H5T_SGN_NONE ? (sz == 1 ? "uint8" : sz == 8 ? "uint64" : "uint")
                                               : (sz == 4 ? "int32" : sz == 8 ? "int64" : "int");
    return "other";
}

typedef struct {
    FILE *out;
    const char *group;
    int ndatasets;
} walk_ctx;

static herr_t on_dataset(hid_t grp, const char *name, const H5L_info_t *info, void *user)
{
    (void)info;
    walk_ctx *c = user;
    hid_t ds = H5Dopen2(grp, name, H5P_DEFAULT);
    if (ds < 0)
        return 0;
    hid_t sp = H5Dget_space(ds), t = H5Dget_type(ds);
    hsize_t dims[3] = {0, 0, 0};
    int r = H5Sget_simple_extent_ndims(sp);
    if (r > 0 && r <= 3)
        H5Sget_simple_extent_dims(sp, dims, NULL);
    char shape[64];
    ck_shape_str(shape, sizeof shape, dims, r > 0 && r <= 3 ? r : 0);
    fprintf(c->out, "    %s/%s %s %s", c->group, name, dtype_name(t), shape);
    if (H5Aexists(ds, "checksum") > 0) {
        hid_t a = H5Aopen(ds, "checksum", H5P_DEFAULT);
        hid_t as = H5Aget_space(a);
        hssize_t n = H5Sget_simple_extent_npoints(as);
        uint64_t *v = prefopt_xcalloc((size_t)(n > 0 ? n : 1), sizeof *v, "checksums");
        if (n > 0 && H5Aread(a, H5T_NATIVE_UINT64, v) >= 0) {
            fprintf(c->out, " checksum%s", n > 1 ? "s" : "");
            for (hssize_t i = 0; i < n; i++)
                fprintf(c->out, "%s%016" PRIx64, i ? "," : " ", v[i]);
        }
        free(v);
        H5Sclose(as);
        H5Aclose(a);
    }
    fputc('\n', c->out);
    c->ndatasets++;
    H5Tclose(t);
    H5Sclose(sp);
    H5Dclose(ds);
    return 0;
}

static void list_group(FILE *out, hid_t f, const char *group)
{
    if (H5Lexists(f, group, H5P_DEFAULT) <= 0)
        return;
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    if (g < 0)
        return;
    walk_ctx c = {out, group, 0};
    H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, on_dataset, &c);
    H5Gclose(g);
}

/* Reads every logical tensor of group back whole and verifies its checksum (one tensor in memory at a time). */
static int verify_group(hid_t f, const char *path, const char *group, const prefopt_tensor_spec *specs, int n,
                        prefopt_err *err)
{
    int64_t most = 1;
    for (int i = 0; i < n; i++) {
        int64_t c = specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1);
        if (c > most)
            most = c;
    }
    float *buf = prefopt_xmalloc(sizeof(float) * (size_t)most, "tensor check");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        rc = ck_read_full(f, path, group, &specs[i], buf, err);
    free(buf);
    return rc;
}

static void print_bytes_dataset(FILE *out, hid_t grp, const char *name, const char *indent)
{
    if (H5Lexists(grp, name, H5P_DEFAULT) <= 0)
        return;
    hid_t d = H5Dopen2(grp, name, H5P_DEFAULT);
    hid_t s = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(s);
    char *text = prefopt_xcalloc((size_t)(n > 0 ? n : 0) + 1, 1, "text");
    if (n > 0 && H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) >= 0) {
        fprintf(out, "%s", indent);
        for (char *c = text; *c; c++) {
            fputc(*c, out);
            if (*c == '\n' && c[1])
                fputs(indent, out);
        }
        if (text[strlen(text) - 1] != '\n')
            fputc('\n', out);
    }
    free(text);
    H5Sclose(s);
    H5Dclose(d);
}

static int describe(FILE *out, const char *path, prefopt_err *err);

int prefopt_model_file_describe(FILE *out, const char *path, prefopt_err *err)
{
    /* nothing is printed unless the whole file checks out */
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        prefopt_die("out of memory describing %s", path);
    int rc = describe(mem, path, err);
    fclose(mem);
    if (!rc)
        fwrite(buf, 1, len, out);
    free(buf);
    return rc;
}

static int describe(FILE *out, const char *path, prefopt_err *err)
{
    hid_t f;
    if (ck_open(path, MPI_COMM_NULL, &f, err))
        return -1;
    char kind[96] = "";
    int64_t complete = 0, version = 0;
    prefopt_model_config cfg;
    prefopt_tokenizer_record tok;
    memset(&tok, 0, sizeof tok);
    if (ck_read_config(f, path, &cfg, err) || ck_read_tokenizer(f, path, &tok, err)) {
        H5Fclose(f);
        return -1;
    }
    ck_attr_str(f, "kind", kind, sizeof kind, 0);
    ck_attr_int64(f, "format_version", &version, 1, 0);
    if (ck_attr_int64(f, "complete", &complete, 1, 0) || complete != 1) {
        prefopt_err_set(err, "%s: attribute 'complete' is not 1: the file was not finished (killed while written?)",
                        path);
        prefopt_tokenizer_record_free(&tok);
        H5Fclose(f);
        return -1;
    }
    fprintf(out, "%s: prefopt %s file v%lld, complete\n", path, kind, (long long)version);
    fprintf(out, "  config: %s (hf %s), vocab_size %d, hidden_size %d, num_layers %d, num_heads %d, num_kv_heads %d, "
                 "head_dim %d, intermediate_size %d, max_position %d, norm_eps %g, rope_theta %g, qkv_bias %d, "
                 "tie_word_embeddings %d, bos %d, eos %d, pad %d\n",
            cfg.arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama", cfg.hf_model_type, cfg.vocab_size, cfg.hidden_size,
            cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size, cfg.max_position,
            (double)cfg.norm_eps, (double)cfg.rope_theta, cfg.qkv_bias, cfg.tie_word_embeddings, cfg.bos_id,
            cfg.eos_id, cfg.pad_id);
    fprintf(out, "  tokenizer: %s", tok.identity);
    if (tok.json)
        fprintf(out, " (tokenizer.json %zu bytes)", tok.len);
    for (int i = 0; i < PREFOPT_TOK_NSIDE; i++)
        if (tok.side[i])
            fprintf(out, ", %s %zu bytes", prefopt_tokenizer_side_names[i], tok.side_len[i]);
    fputc('\n', out);
    prefopt_tokenizer_record_free(&tok);

    prefopt_tensor_spec *specs = NULL;
    int n = prefopt_model_tensor_specs(&cfg, &specs);
    int64_t params = 0;
    for (int i = 0; i < n; i++)
        params += specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1);
    int rc = verify_group(f, path, "model", specs, n, err);
    int moments = H5Lexists(f, "optim", H5P_DEFAULT) > 0;
    if (!rc && moments)
        rc = verify_group(f, path, "optim/m", specs, n, err) || verify_group(f, path, "optim/v", specs, n, err);
    free(specs);
    if (rc) {
        H5Fclose(f);
        return -1;
    }
    fprintf(out, "  tensors: %d (%lld parameters), every checksum verified%s\n", n, (long long)params,
            moments ? ", AdamW moments too" : "");
    list_group(out, f, "model");
    if (moments) {
        list_group(out, f, "optim/m");
        list_group(out, f, "optim/v");
    }
    if (H5Lexists(f, "state", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "state", H5P_DEFAULT);
        int64_t step = 0, sched = 0, epoch = 0, tokens = 0, ws = 0, cur[8] = {0};
        double lr = 0;
        ck_attr_int64(g, "step", &step, 1, 0);
        ck_attr_int64(g, "sched_step", &sched, 1, 0);
        ck_attr_int64(g, "epoch", &epoch, 1, 0);
        ck_attr_int64(g, "tokens_seen", &tokens, 1, 0);
        ck_attr_int64(g, "world_size", &ws, 1, 0);
        ck_attr_int64(g, "cursor", cur, 8, 0);
        if (H5Aexists(g, "lr") > 0) {
            hid_t a = H5Aopen(g, "lr", H5P_DEFAULT);
            H5Aread(a, H5T_NATIVE_DOUBLE, &lr);
            H5Aclose(a);
        }
        fprintf(out, "  state: step %lld, schedule step %lld, epoch %lld, tokens seen %lld, lr %g, saved by %lld ranks\n",
                (long long)step, (long long)sched, (long long)epoch, (long long)tokens, lr, (long long)ws);
        /* cursor: seed, epoch, step within the epoch, global batch (the data loader's position) */
        fprintf(out, "  data cursor: seed %lld, epoch %lld, step %lld, batch %lld\n", (long long)cur[0],
                (long long)cur[1], (long long)cur[2], (long long)cur[3]);
        if (H5Lexists(g, "train_config", H5P_DEFAULT) > 0) {
            fprintf(out, "  training options (config.ini of the run):\n");
            print_bytes_dataset(out, g, "train_config", "    ");
        }
        H5Gclose(g);
    }
    return ck_close(f, path, err) ? -1 : 0;
}
