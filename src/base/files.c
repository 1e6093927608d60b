/* Room checks, whole-file copies, aliasing and path checks for the writers (see files.h). */
#define _GNU_SOURCE
#include "prefopt/files.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

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

/* "1.5 MiB", or "40 KiB" below a MiB (a limit of 40 KiB is not "0.0 MiB") */
static const char *size_str(double bytes, char *buf, size_t len)
{
    if (bytes < 1024.0 * 1024.0)
        snprintf(buf, len, "%.0f KiB", bytes / 1024.0);
    else
        snprintf(buf, len, "%.1f MiB", bytes / (1024.0 * 1024.0));
    return buf;
}

int prefopt_check_room(const char *path, const char *what, double bytes, prefopt_err *err)
{
    if (getenv("PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK")) /* tests: reach the failure in the middle of the write */
        return 0;
    char dir[4096], a[32], b[32];
    dir_of(path, dir, sizeof dir);
    struct rlimit rl;
    struct statvfs vfs;
    if (!getrlimit(RLIMIT_FSIZE, &rl) && rl.rlim_cur != RLIM_INFINITY && bytes > (double)rl.rlim_cur) {
        prefopt_err_set(err, "%s: it needs about %s but the file size limit (ulimit -f) is %s (nothing was written)",
                        what, size_str(bytes, a, sizeof a), size_str((double)rl.rlim_cur, b, sizeof b));
        return 1;
    }
    if (!statvfs(dir, &vfs) && bytes > (double)vfs.f_bavail * (double)vfs.f_frsize) {
        prefopt_err_set(err, "%s: it needs about %s but the file system of %s has %s free (nothing was written)",
                        what, size_str(bytes, a, sizeof a), dir,
                        size_str((double)vfs.f_bavail * (double)vfs.f_frsize, b, sizeof b));
        return 1;
    }
    return 0;
}

int prefopt_copy_file(const char *src, const char *dst, prefopt_err *err)
{
    int in = open(src, O_RDONLY);
    if (in < 0) {
        prefopt_err_set(err, "%s: cannot open: %s", src, strerror(errno));
        return 1;
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) {
        prefopt_err_set(err, "%s: cannot create: %s", dst, strerror(errno));
        close(in);
        return 1;
    }
    int bad = 0, saved = 0;
    /* copy_file_range shares extents where the file system can (a reflink), else copies in the kernel; where it
     * is not supported (before any byte was copied), read and write */
    int64_t done = 0;
    ssize_t k;
    while ((k = copy_file_range(in, NULL, out, NULL, 1 << 30, 0)) > 0)
        done += k;
    char *buf = NULL;
    if (k < 0 && !done && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        buf = prefopt_xmalloc(1 << 20, "file copy");
        ssize_t r;
        while (!bad && (r = read(in, buf, 1 << 20)) != 0) {
            if (r < 0) {
                bad = 1, saved = errno;
                break;
            }
            for (ssize_t o = 0; o < r;) {
                ssize_t w = write(out, buf + o, (size_t)(r - o));
                if (w <= 0) {
                    bad = 1, saved = w < 0 ? errno : ENOSPC;
                    break;
                }
                o += w;
            }
        }
    } else if (k < 0)
        bad = 1, saved = errno;
    free(buf);
    if (!bad && fsync(out))
        bad = 1, saved = errno;
    if (close(out) && !bad)
        bad = 1, saved = errno;
    close(in);
    if (bad) {
        prefopt_err_set(err, "%s: copying %s failed: %s", dst, src, strerror(saved ? saved : EIO));
        unlink(dst);
    }
    return bad;
}

void prefopt_fsync_dir_of(const char *path)
{
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int64_t prefopt_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

/* The resolved directory and base name of a path whose file may not exist yet. */
static int resolve(const char *p, char *out, size_t len)
{
    char dir[4096], base[4096], rd[PATH_MAX];
    dir_of(p, dir, sizeof dir);
    const char *b = strrchr(p, '/');
    snprintf(base, sizeof base, "%s", b ? b + 1 : p);
    if (!realpath(dir, rd))
        return 1;
    snprintf(out, len, "%s/%s", rd, base);
    return 0;
}

int prefopt_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!stat(a, &sa) && !stat(b, &sb))
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    char ra[8300], rb[8300];
    if (resolve(a, ra, sizeof ra) || resolve(b, rb, sizeof rb))
        return !strcmp(a, b);
    return !strcmp(ra, rb);
}

int prefopt_check_outputs_distinct(const char *const *names, const char *const *paths, int n_in, int n,
                                   prefopt_err *err)
{
    for (int o = n_in; o < n; o++) {
        if (!paths[o] || !*paths[o])
            continue;
        for (int i = 0; i < o; i++)
            if (paths[i] && *paths[i] && prefopt_same_file(paths[o], paths[i])) {
                prefopt_err_set(err, "%s '%s' is the same file as %s '%s' (%s)", names[o], paths[o], names[i],
                                paths[i], i < n_in ? "an output must not overwrite an input" : "two outputs");
                return 1;
            }
    }
    return 0;
}

int prefopt_check_path_chars(const char *option, const char *path, prefopt_err *err)
{
    for (const unsigned char *c = (const unsigned char *)path; *c; c++)
        if (*c < 0x20 || *c == 0x7f) {
            prefopt_err_set(err, "%s: the path contains a control character (byte 0x%02x at offset %d); rename it",
                            option, *c, (int)(c - (const unsigned char *)path));
            return 1;
        }
    return 0;
}

static int skip_finalize;

void prefopt_set_skip_finalize(void) { skip_finalize = 1; }

int prefopt_skip_finalize(void) { return skip_finalize; }
