/* Training checkpoints (prefopt_ckpt_save, prefopt_ckpt_load): the weights or LoRA adapters, the AdamW moments
 * and the training state (step counters, data cursor, lr, per-rank generator rows, the INI text), written by
 * replica 0's grid and handed to the other replicas on load; the room check before a save. */
#define _GNU_SOURCE
#include "ckpt_io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

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
    if (g->world_rank == 0 && ck_mkdirs(o->dir))
        prefopt_err_set(err, "%s: cannot create the checkpoint directory: %s", o->dir, strerror(errno));
    if (g->world_rank == 0 && !err->set && !getenv("PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK")) /* tests: mid-write */
        check_room(o->dir, name, prefopt_model_get_config(policy), 1 + (adam_m != NULL) + (adam_v != NULL), err);
    if (prefopt_agree_idle(g->world, err))
        return 1;
    /* each rank's generator state to its grid position's writer in replica 0 (a gather over the DP communicator) */
    uint64_t *rng_rows = ck_is_io_rank(g) ? prefopt_xcalloc((size_t)g->dp_size * 4, sizeof *rng_rows, "rng") : NULL;
    MPI_Gather(st->rng, 4, MPI_UINT64_T, rng_rows, 4, MPI_UINT64_T, 0, g->dp);
    /* replica 0's grid writes (see ck_is_io_rank); the same calls over the world on every rank, as in
     * model_file_save */
    hid_t f = -1;
    if (ck_is_io_rank(g))
        ck_create(tmp, g->tp, &f, err);
    if (prefopt_agree_idle(g->world, err)) {
        free(rng_rows);
        return 1;
    }
    int rc = 0;
    if (ck_is_io_rank(g)) {
        rc = ck_write_config(f, "checkpoint", prefopt_model_get_config(policy), o->tok, g->tp, err);
        int n;
        const prefopt_lora_config *lora = prefopt_model_lora(policy);
        ck_item *it;
        if (lora->r > 0) { /* the adapters and the base's identity; the base itself is --init's file */
            uint64_t sum = prefopt_model_base_checksum(policy); /* collective over replica 0's grid */
            rc |= ck_write_lora_attrs(f, lora, o->base_model ? o->base_model : "", sum);
            it = ck_model_items(policy, NULL, &n, CK_ITEMS_LORA);
            rc |= ck_write_items(f, tmp, "lora", it, n, 0, 1, g->tp, err);
        } else {
            it = ck_model_items(policy, NULL, &n, CK_ITEMS_BASE);
            rc |= ck_write_items(f, tmp, "model", it, n, 0, 1, g->tp, err);
        }
        free(it);
        if (adam_m) {
            it = ck_model_items(policy, adam_m, &n, CK_ITEMS_TRAINED);
            rc |= ck_write_items(f, tmp, "optim/m", it, n, 0, 1, g->tp, err);
            free(it);
        }
        if (adam_v) {
            it = ck_model_items(policy, adam_v, &n, CK_ITEMS_TRAINED);
            rc |= ck_write_items(f, tmp, "optim/v", it, n, 0, 1, g->tp, err);
            free(it);
        }
        rc |= write_state(f, st, rng_rows, g, err);
        rc |= ck_mark_complete(f);
    }
    free(rng_rows);
    if (ck_close_tmp_agreed(f, tmp, g, rc, err))
        return 1;
    if (g->world_rank == 0 && !ck_publish(tmp, final, err) && !ck_write_latest(o->dir, name, err))
        ck_prune(o->dir, o->keep_last, step);
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
    uint64_t *rng_rows = ck_is_io_rank(g) ? prefopt_xcalloc((size_t)g->dp_size * 4, sizeof *rng_rows, "rng") : NULL;
    if (st)
        memset(st, 0, sizeof *st);
    if (ck_is_io_rank(g)) { /* replica 0's grid reads; the weights, moments and state go to the others below */
        hid_t f;
        int rc = ck_open(path, g->tp, &f, err);
        if (!rc) {
            prefopt_model_config fc;
            int64_t complete = 0;
            rc = ck_read_config(f, path, &fc, err) ||
                 ck_config_matches(path, &fc, prefopt_model_get_config(policy), err);
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
                ck_item *it = ck_model_items(policy, NULL, &n, lora->r > 0 ? CK_ITEMS_LORA : CK_ITEMS_BASE);
                rc = ck_read_items(f, path, lora->r > 0 ? "lora" : "model", it, n, g->tp, err);
                free(it);
            }
            if (!rc && adam_m) {
                ck_item *it = ck_model_items(policy, adam_m, &n, CK_ITEMS_TRAINED);
                rc = ck_read_items(f, path, "optim/m", it, n, g->tp, err);
                free(it);
            }
            if (!rc && adam_v) {
                ck_item *it = ck_model_items(policy, adam_v, &n, CK_ITEMS_TRAINED);
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
    ck_bcast_replicas(g, w, count);
    ck_bcast_replicas(g, adam_m, count);
    ck_bcast_replicas(g, adam_v, count);
    if (st && g->dp_size > 1) {
        uint64_t rng[4];
        MPI_Scatter(rng_rows, 4, MPI_UINT64_T, rng, 4, MPI_UINT64_T, 0, g->dp);
        char *cfg = st->train_config;
        long long len = cfg ? (long long)strlen(cfg) : -1;
        MPI_Bcast(st, (int)sizeof *st, MPI_BYTE, 0, g->dp); /* scalars and cursor: the same on every replica */
        MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, g->dp);
        if (!ck_is_io_rank(g))
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
