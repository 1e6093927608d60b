/* Checkpoint directories and the atomic publish protocol shared by model files and checkpoints: the .tmp ->
 * fsync -> rename -> fsync of the directory sequence, the "complete" mark, DIR/step-NNNNNNNN.h5 names, finding the
 * newest complete checkpoint, DIR/latest and keep-last-N pruning. */
#define _GNU_SOURCE
#include "ckpt_io.h"
#include "prefopt/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, O_RDONLY | (dir ? O_DIRECTORY : 0));
    if (fd < 0)
        return 1;
    int r = fsync(fd);
    close(fd);
    return r != 0;
}

int ck_publish(const char *tmp, const char *final, prefopt_err *err)
{
    if (fsync_path(tmp, 0)) {
        prefopt_err_set(err, "%s: fsync failed: %s", tmp, strerror(errno));
        return 1;
    }
    if (rename(tmp, final)) {
        prefopt_err_set(err, "%s: rename to %s failed: %s", tmp, final, strerror(errno));
        return 1;
    }
    prefopt_fsync_dir_of(final);
    return 0;
}

int ck_mark_complete(hid_t f)
{
    int64_t one = 1;
    return ck_attr_int64(f, "complete", &one, 1, 1);
}

int ck_mkdirs(const char *dir)
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

int ck_write_latest(const char *dir, const char *name, prefopt_err *err)
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

void ck_prune(const char *dir, int keep, long long current)
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
