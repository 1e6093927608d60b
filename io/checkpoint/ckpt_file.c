/* The HDF5 file layer of model files and checkpoints: opening with the MPI-IO driver and its properties (collective
 * metadata, alignment, libver), scalar and string attributes, the model config and the recorded tokenizer. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "prefopt/files.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CK_FORMAT_VERSION 1
/* default cap on the aggregators of a collective write (PREFOPT_IO_CB_NODES_MAX overrides it) */
#define CK_CB_NODES_CAP 16

/* ---- files ----------------------------------------------------------------------------------------------- */

static void quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

int ck_cb_nodes_cap(void)
{
    const char *e = getenv("PREFOPT_IO_CB_NODES_MAX");
    long v = e && *e ? strtol(e, NULL, 10) : 0;
    return v > 0 && v < 1 << 20 ? (int)v : CK_CB_NODES_CAP;
}

int ck_cb_nodes(MPI_Comm comm, int *nodes)
{
    MPI_Comm node;
    int node_rank, rank;
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_free(&node);
    MPI_Comm_rank(comm, &rank);
    /* one reduction: the node leaders counted, and rank 0's cap, so that every rank passes the same hint even if
     * the environments differ (OMPIO groups the ranks by it) */
    int v[2] = {node_rank == 0, rank == 0 ? ck_cb_nodes_cap() : 0};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_SUM, comm);
    if (nodes)
        *nodes = v[0];
    return v[0] < v[1] ? v[0] : v[1];
}

/* Collective writes go through two-phase I/O with at most one aggregator per node of the writing communicator,
 * and no more than a cap (issue 17): the file system sees min(nodes, cap) writers however many ranks the grid has,
 * and every other rank ships its pieces to them over the network. ROMIO reads both (its default is one
 * aggregator per node, uncapped); OMPIO, Open MPI 4.1's default, reads cb_nodes as the number of aggregator groups
 * of consecutive ranks (one per node with by-slot mapping; `--mca io_ompio_verbose_info_parsing 1` shows it) and
 * ignores romio_cb_write. Reads keep the defaults. */
static MPI_Info write_hints(MPI_Comm comm)
{
    char v[16];
    snprintf(v, sizeof v, "%d", ck_cb_nodes(comm, NULL));
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "cb_nodes", v);
    MPI_Info_set(info, "romio_cb_write", "enable");
    return info;
}

static hid_t make_fapl(MPI_Comm comm, int write)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (comm != MPI_COMM_NULL) {
        MPI_Info info = write ? write_hints(comm) : MPI_INFO_NULL;
        H5Pset_fapl_mpio(fapl, comm, info); /* HDF5 keeps its own duplicate of info */
        if (info != MPI_INFO_NULL)
            MPI_Info_free(&info);
        /* metadata: rank 0 reads and broadcasts, the cache is flushed as one collective write (hpc-stack 2.4) */
        H5Pset_all_coll_metadata_ops(fapl, 1);
        H5Pset_coll_metadata_write(fapl, 1);
    }
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
    /* large datasets start on 1 MiB boundaries (stripe/block friendly); the threshold keeps small tensors packed */
    H5Pset_alignment(fapl, 4u << 20, 1u << 20);
    return fapl;
}

int ck_create(const char *path, MPI_Comm comm, hid_t *file, prefopt_err *err)
{
    quiet();
    hid_t fapl = make_fapl(comm, 1);
    *file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (*file < 0) {
        prefopt_err_set(err, "%s: cannot create the HDF5 file", path);
        return 1;
    }
    return 0;
}

int ck_open(const char *path, MPI_Comm comm, hid_t *file, prefopt_err *err)
{
    quiet();
    hid_t fapl = make_fapl(comm, 0);
    *file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (*file < 0) {
        prefopt_err_set(err, "%s: cannot open as HDF5 (missing, truncated or not a prefopt file)", path);
        return 1;
    }
    return 0;
}

int ck_close(hid_t file, const char *path, prefopt_err *err)
{
    if (H5Fclose(file) < 0) {
        prefopt_set_skip_finalize(); /* HDF5 keeps the file it could not close (files.h) */
        prefopt_err_set(err, "%s: closing failed (disk full?)", path);
        return 1;
    }
    return 0;
}

/* After a failed write (a full disk, a file-size limit) H5Fclose on an MPI-IO file hangs: HDF5's ranks take
 * different error paths inside it (the rank whose metadata write failed skips the flush's barrier and waits in the
 * truncate's broadcast, the others wait in the barrier). MPI_Finalize would run the same close through HDF5's
 * MPI_COMM_SELF hook. So the ranks agree on the writes before closing, and a file with a failed write is
 * abandoned: every rank prints the line, rank 0 removes the temporary file, and the job is aborted. */
int ck_close_agreed(hid_t file, const char *path, MPI_Comm comm, int failed, prefopt_err *err)
{
    if (comm == MPI_COMM_NULL)
        return ck_close(file, path, err) || failed;
    return ck_close_agreed_over(file, path, comm, comm, failed, err);
}

int ck_close_agreed_over(hid_t file, const char *path, MPI_Comm comm, MPI_Comm all, int failed, prefopt_err *err)
{
    int any = failed != 0;
    if (comm != all) /* ranks without the file wait for the writers without spinning (agree.h) */
        prefopt_barrier_idle(all);
    MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, all);
    if (!any)
        return file >= 0 ? ck_close(file, path, err) : 0;
    if (failed && !err->set)
        prefopt_err_set(err, "%s: write failed", path);
    prefopt_agree(all, err); /* the message of the lowest failing rank, everywhere */
    int rank;
    MPI_Comm_rank(all, &rank);
    fprintf(stderr, "prefopt: error: %s (disk full or over the file size limit? nothing was published)\n", err->msg);
    fflush(stderr);
    if (rank == 0)
        unlink(path);
    MPI_Barrier(all);
    MPI_Abort(comm != MPI_COMM_NULL ? comm : all, PREFOPT_EXIT_ERROR);
    return 1;
}

static int is_mpio(hid_t file)
{
    hid_t fapl = H5Fget_access_plist(file);
    int r = H5Pget_driver(fapl) == H5FD_MPIO;
    H5Pclose(fapl);
    return r;
}

static int individual_io = 0;
void ck_set_individual_io(int on) { individual_io = on; }

hid_t ck_make_dxpl(hid_t file)
{
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (is_mpio(file)) {
        H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
        /* collective call, but each rank does its own MPI-IO (no two-phase aggregation): benchmarks */
        if (individual_io)
            H5Pset_dxpl_mpio_collective_opt(dxpl, H5FD_MPIO_INDIVIDUAL_IO);
    }
    return dxpl;
}

/* ---- attributes ------------------------------------------------------------------------------------------ */

int ck_attr_int64(hid_t obj, const char *name, int64_t *v, int n, int write)
{
    hsize_t d = (hsize_t)n;
    if (write) {
        hid_t sp = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &d, NULL);
        hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        herr_t r = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, v);
        if (a >= 0)
            H5Aclose(a);
        H5Sclose(sp);
        return r < 0;
    }
    if (H5Aexists(obj, name) <= 0)
        return 1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = H5Aget_space(a);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    herr_t r = np == n ? H5Aread(a, H5T_NATIVE_INT64, v) : -1;
    H5Aclose(a);
    return r < 0;
}

static int attr_double(hid_t obj, const char *name, double *v, int write)
{
    if (write) {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(obj, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        herr_t r = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_DOUBLE, v);
        if (a >= 0)
            H5Aclose(a);
        H5Sclose(sp);
        return r < 0;
    }
    if (H5Aexists(obj, name) <= 0)
        return 1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    herr_t r = H5Aread(a, H5T_NATIVE_DOUBLE, v);
    H5Aclose(a);
    return r < 0;
}

int ck_attr_str(hid_t obj, const char *name, char *buf, size_t len, int write)
{
    if (write) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(buf) + 1);
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        herr_t r = a < 0 ? -1 : H5Awrite(a, t, buf);
        if (a >= 0)
            H5Aclose(a);
        H5Sclose(sp);
        H5Tclose(t);
        return r < 0;
    }
    if (len)
        buf[0] = '\0'; /* a failed read leaves no stale value for the caller's message */
    if (H5Aexists(obj, name) <= 0)
        return 1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t ft = H5Aget_type(a);
    size_t sz = H5Tget_size(ft);
    int rc = 1;
    if (H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0) {
        /* variable-length: h5py's default for a str attribute (in its character set, UTF-8) */
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(ft));
        hid_t sp = H5Aget_space(a);
        char *s = NULL;
        if (H5Sget_simple_extent_npoints(sp) == 1 && H5Aread(a, mt, &s) >= 0 && s) {
            snprintf(buf, len, "%s", s);
            rc = 0;
        }
        if (s)
            H5free_memory(s);
        H5Sclose(sp);
        H5Tclose(mt);
    } else if (H5Tget_class(ft) == H5T_STRING) {
        char *tmp = prefopt_xcalloc(sz + 2, 1, "attribute");
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, sz + 1); /* room for the terminator when the file's string is null-padded (h5py) */
        rc = H5Aread(a, mt, tmp) < 0;
        H5Tclose(mt);
        snprintf(buf, len, "%s", tmp);
        free(tmp);
    }
    H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

/* the names of the tokenizer's side files (checkpoint.h), here at the bottom of io/checkpoint: every file uses them */
const char *const prefopt_tokenizer_side_names[PREFOPT_TOK_NSIDE] = {"tokenizer_config.json", "special_tokens_map.json",
                                                                      "chat_template.jinja", "generation_config.json"};

/* a uint8 dataset written by rank 0 (collective call, the others select nothing) */
static int write_bytes(hid_t loc, const char *name, const void *data, size_t len, MPI_Comm comm)
{
    int rank = 0;
    if (comm != MPI_COMM_NULL)
        MPI_Comm_rank(comm, &rank);
    hsize_t d = len;
    hid_t sp = H5Screate_simple(1, &d, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(loc, name, H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    if (ds < 0) {
        H5Sclose(sp);
        return 1;
    }
    hid_t ms = H5Screate_simple(1, &d, NULL);
    if (rank != 0) {
        H5Sselect_none(sp);
        H5Sselect_none(ms);
    }
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (comm != MPI_COMM_NULL)
        H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    herr_t r = H5Dwrite(ds, H5T_NATIVE_UCHAR, ms, sp, dxpl, data);
    H5Pclose(dxpl);
    H5Sclose(ms);
    H5Sclose(sp);
    H5Dclose(ds);
    return r < 0;
}

static int read_bytes(hid_t loc, const char *name, char **data, size_t *len)
{
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) {
        *data = NULL;
        *len = 0;
        return 0;
    }
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    hid_t sp = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    *data = prefopt_xmalloc((size_t)n + 1, name);
    hid_t dxpl = ck_make_dxpl(loc);
    herr_t r = H5Dread(ds, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, dxpl, *data);
    H5Pclose(dxpl);
    H5Dclose(ds);
    (*data)[n] = '\0';
    *len = (size_t)n;
    return r < 0;
}

/* ---- config ---------------------------------------------------------------------------------------------- */

#define CFG_INTS(X)                                                                                          \
    X(vocab_size) X(hidden_size) X(num_layers) X(num_heads) X(num_kv_heads) X(head_dim) X(intermediate_size)   \
    X(max_position) X(qkv_bias) X(tie_word_embeddings) X(bos_id) X(eos_id) X(pad_id)

#define CFG_VARIANT_INTS(X)                                                                                  \
    X(qk_norm) X(norm_style) X(norm_unit_offset) X(mlp_act) X(rope_dim) X(sliding_window) X(fused_qkv)          \
    X(rope_llama3) X(rope_original_max_position)
#define CFG_VARIANT_FLOATS(X)                                                                                \
    X(embed_scale) X(attn_scale) X(attn_softcap) X(final_softcap) X(rope_local_theta) X(rope_linear_factor)     \
    X(rope_factor) X(rope_low_freq_factor) X(rope_high_freq_factor)

int ck_write_config(hid_t file, const char *kind, const prefopt_model_config *cfg, const prefopt_tokenizer_record *tok,
                    MPI_Comm comm, prefopt_err *err)
{
    int bad = 0;
    char s[96];
    snprintf(s, sizeof s, "%s", kind);
    bad |= ck_attr_str(file, "kind", s, 0, 1);
    int64_t v = CK_FORMAT_VERSION;
    bad |= ck_attr_int64(file, "format_version", &v, 1, 1);
    snprintf(s, sizeof s, "%s", cfg->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama");
    bad |= ck_attr_str(file, "arch", s, 0, 1);
    snprintf(s, sizeof s, "%s", cfg->hf_model_type);
    bad |= ck_attr_str(file, "hf_model_type", s, 0, 1);
    if (cfg->torch_dtype[0]) { /* the imported HF dtype, export's default (absent: unknown) */
        snprintf(s, sizeof s, "%s", cfg->torch_dtype);
        bad |= ck_attr_str(file, "torch_dtype", s, 0, 1);
    }
#define W(f) v = cfg->f, bad |= ck_attr_int64(file, #f, &v, 1, 1);
    CFG_INTS(W)
#undef W
    double d = cfg->norm_eps;
    bad |= attr_double(file, "norm_eps", &d, 1);
    d = cfg->rope_theta;
    bad |= attr_double(file, "rope_theta", &d, 1);
    /* the Llama family's variants (issue 20); files without them read as zeros, i.e. plain Llama */
#define W(f) v = cfg->f, bad |= ck_attr_int64(file, #f, &v, 1, 1);
    CFG_VARIANT_INTS(W)
#undef W
#define W(f) d = cfg->f, bad |= attr_double(file, #f, &d, 1);
    CFG_VARIANT_FLOATS(W)
#undef W
    if (cfg->num_layers > 0 && cfg->num_layers <= PREFOPT_MAX_LAYERS) {
        int64_t fl[PREFOPT_MAX_LAYERS];
        for (int l = 0; l < cfg->num_layers; l++)
            fl[l] = cfg->layer_flags[l];
        bad |= ck_attr_int64(file, "layer_flags", fl, cfg->num_layers, 1);
    }
    snprintf(s, sizeof s, "%s", tok && tok->json ? tok->identity : "byte");
    bad |= ck_attr_str(file, "tokenizer_identity", s, 0, 1);
    if (tok && tok->json) {
        bad |= write_bytes(file, "tokenizer.json", tok->json, tok->len, comm);
        for (int i = 0; i < PREFOPT_TOK_NSIDE; i++)
            if (tok->side[i])
                bad |= write_bytes(file, prefopt_tokenizer_side_names[i], tok->side[i], tok->side_len[i], comm);
    }
    if (bad)
        prefopt_err_set(err, "cannot write the model config attributes");
    return bad;
}

int ck_read_config(hid_t file, const char *path, prefopt_model_config *cfg, prefopt_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    char s[96];
    int64_t v = 0;
    if (ck_attr_str(file, "kind", s, sizeof s, 0)) {
        prefopt_err_set(err, "%s: attribute 'kind' missing: not a prefopt model file or checkpoint", path);
        return 1;
    }
    if (ck_attr_int64(file, "format_version", &v, 1, 0) || v != CK_FORMAT_VERSION) {
        prefopt_err_set(err, "%s: attribute 'format_version' is %lld, this prefopt reads %d", path, (long long)v,
                        CK_FORMAT_VERSION);
        return 1;
    }
    if (ck_attr_str(file, "arch", s, sizeof s, 0) || (strcmp(s, "gpt2") && strcmp(s, "llama"))) {
        prefopt_err_set(err, "%s: attribute 'arch' missing or unknown ('%s'): gpt2 and llama are supported", path, s);
        return 1;
    }
    cfg->arch = !strcmp(s, "gpt2") ? PREFOPT_ARCH_GPT2 : PREFOPT_ARCH_LLAMA;
    if (ck_attr_str(file, "hf_model_type", cfg->hf_model_type, sizeof cfg->hf_model_type, 0)) {
        prefopt_err_set(err, "%s: attribute 'hf_model_type' missing", path);
        return 1;
    }
    cfg->torch_dtype[0] = '\0';
    if (H5Aexists(file, "torch_dtype") > 0 && ck_attr_str(file, "torch_dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, 0))
        cfg->torch_dtype[0] = '\0';
#define R(f)                                                                                                   \
    if (ck_attr_int64(file, #f, &v, 1, 0)) {                                                                   \
        prefopt_err_set(err, "%s: attribute '%s' missing", path, #f);                                          \
        return 1;                                                                                              \
    }                                                                                                          \
    cfg->f = (int)v;
    CFG_INTS(R)
#undef R
    double d;
    if (attr_double(file, "norm_eps", &d, 0)) {
        prefopt_err_set(err, "%s: attribute 'norm_eps' missing", path);
        return 1;
    }
    cfg->norm_eps = (float)d;
    if (attr_double(file, "rope_theta", &d, 0)) {
        prefopt_err_set(err, "%s: attribute 'rope_theta' missing", path);
        return 1;
    }
    cfg->rope_theta = (float)d;
#define R(f)                                                                                                   \
    if (!ck_attr_int64(file, #f, &v, 1, 0))                                                                    \
        cfg->f = (int)v;
    CFG_VARIANT_INTS(R)
#undef R
#define R(f)                                                                                                   \
    if (!attr_double(file, #f, &d, 0))                                                                         \
        cfg->f = (float)d;
    CFG_VARIANT_FLOATS(R)
#undef R
    if (cfg->num_layers > 0 && cfg->num_layers <= PREFOPT_MAX_LAYERS) {
        int64_t fl[PREFOPT_MAX_LAYERS] = {0};
        if (H5Aexists(file, "layer_flags") > 0 && ck_attr_int64(file, "layer_flags", fl, cfg->num_layers, 0)) {
            prefopt_err_set(err, "%s: attribute 'layer_flags' unreadable (not %d entries?)", path, cfg->num_layers);
            return 1;
        }
        for (int l = 0; l < cfg->num_layers; l++)
            cfg->layer_flags[l] = (unsigned char)fl[l];
    }
    if (cfg->arch == PREFOPT_ARCH_GPT2 && cfg->qkv_bias != 1) { /* GPT-2's c_attn always has a bias */
        prefopt_err_set(err, "%s: attribute 'qkv_bias' is %d, but a gpt2 model has q/k/v biases (1)", path,
                        cfg->qkv_bias);
        return 1;
    }
    /* special ids name rows of the embedding (or -1: none); another value would be exported and used as such */
    const int ids[3] = {cfg->bos_id, cfg->eos_id, cfg->pad_id};
    static const char *const id_names[3] = {"bos_id", "eos_id", "pad_id"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || (cfg->vocab_size > 0 && ids[i] >= cfg->vocab_size)) {
            prefopt_err_set(err, "%s: attribute '%s' is %d, outside the vocabulary [0, %d) (-1: none)", path,
                            id_names[i], ids[i], cfg->vocab_size);
            return 1;
        }
    return 0;
}

int ck_read_tokenizer(hid_t file, const char *path, prefopt_tokenizer_record *tok, prefopt_err *err)
{
    memset(tok, 0, sizeof *tok);
    if (ck_attr_str(file, "tokenizer_identity", tok->identity, sizeof tok->identity, 0)) {
        prefopt_err_set(err, "%s: attribute 'tokenizer_identity' missing", path);
        return 1;
    }
    if (read_bytes(file, "tokenizer.json", &tok->json, &tok->len)) {
        prefopt_err_set(err, "%s: dataset 'tokenizer.json' unreadable", path);
        return 1;
    }
    for (int i = 0; i < PREFOPT_TOK_NSIDE; i++)
        if (read_bytes(file, prefopt_tokenizer_side_names[i], &tok->side[i], &tok->side_len[i])) {
            prefopt_err_set(err, "%s: dataset '%s' unreadable", path, prefopt_tokenizer_side_names[i]);
            return 1;
        }
    return 0;
}
