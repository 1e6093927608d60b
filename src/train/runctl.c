/* Run control: signal flags agreed over MPI, run directories, append-only metrics, atomic small files. */
#define _GNU_SOURCE
#include "prefopt/runctl.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag = 0;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

void prefopt_stop_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

void prefopt_stop_request(void) { stop_flag = 1; }

int prefopt_stop_agreed(MPI_Comm comm)
{
    int mine = stop_flag ? 1 : 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, comm);
    return any;
}

int prefopt_mkdirs(const char *dir, prefopt_err *err)
{
    char buf[4096];
    if (strlen(dir) >= sizeof buf) {
        prefopt_err_set(err, "%s: path too long", dir);
        return -1;
    }
    strcpy(buf, dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) && errno != EEXIST) {
            prefopt_err_set(err, "%s: cannot create directory: %s", buf, strerror(errno));
            return -1;
        }
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) {
        prefopt_err_set(err, "%s: cannot create directory: %s", buf, strerror(errno));
        return -1;
    }
    /* an existing file of that name is not a directory (EEXIST says only that the name is taken), and a
     * directory the run cannot write to fails now, not at the first checkpoint after hours of training */
    struct stat st;
    if (stat(buf, &st) || !S_ISDIR(st.st_mode)) {
        prefopt_err_set(err, "%s: exists and is not a directory", buf);
        return -1;
    }
    if (access(buf, W_OK | X_OK)) {
        prefopt_err_set(err, "%s: cannot write into the directory: %s", buf, strerror(errno));
        return -1;
    }
    return 0;
}

int prefopt_append_line(const char *path, const char *line, int sync, prefopt_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        prefopt_err_set(err, "%s: cannot open for appending: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(line);
    /* One write() per line: O_APPEND makes it land whole even if another process appends too. */
    char *buf = prefopt_xmalloc(len + 1, "metrics line");
    memcpy(buf, line, len);
    buf[len] = '\n';
    ssize_t w = write(fd, buf, len + 1);
    free(buf);
    int bad = w != (ssize_t)(len + 1) || (sync && fsync(fd));
    int saved = errno;
    if (close(fd))
        bad = 1;
    if (bad) {
        prefopt_err_set(err, "%s: write failed: %s", path, strerror(saved ? saved : EIO));
        return -1;
    }
    return 0;
}

int prefopt_write_atomic(const char *path, const void *data, size_t len, prefopt_err *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        prefopt_err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
        return -1;
    }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w <= 0) {
            prefopt_err_set(err, "%s: write failed: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        prefopt_err_set(err, "%s: fsync/close failed: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path)) {
        prefopt_err_set(err, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    /* The rename itself is durable only once the directory entry is on disk. */
    char dirbuf[4200];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int prefopt_metrics_truncate(const char *path, long step, long *dropped, prefopt_err *err)
{
    *dropped = 0;
    FILE *in = fopen(path, "r");
    if (!in)
        return 0; /* none yet */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) {
        prefopt_err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
        fclose(in);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int bad = 0;
    while ((n = getline(&line, &cap, in)) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *s = o ? cJSON_GetObjectItemCaseSensitive(o, "step") : NULL;
        /* a row of a step after the checkpoint will be written again by the resumed run; a torn last line (a
         * kill in the middle of a write) goes too */
        int keep = o && (!cJSON_IsNumber(s) || s->valuedouble <= (double)step);
        cJSON_Delete(o);
        if (!keep) {
            (*dropped)++;
            continue;
        }
        if (fwrite(line, 1, (size_t)n, out) != (size_t)n || (line[n - 1] != '\n' && fputc('\n', out) == EOF))
            bad = 1;
    }
    free(line);
    fclose(in);
    if (fflush(out) || fsync(fileno(out)))
        bad = 1;
    if (fclose(out))
        bad = 1;
    if (bad || (*dropped && rename(tmp, path))) {
        prefopt_err_set(err, "%s: rewriting failed: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (!*dropped)
        unlink(tmp); /* nothing to drop: the file stays as it is */
    return 0;
}

int prefopt_run_lock(const char *run_dir, prefopt_err *err)
{
    char p[4200], host[256] = "?";
    snprintf(p, sizeof p, "%s/lock", run_dir);
    int fd = open(p, O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        prefopt_err_set(err, "%s: cannot create the run's lock file: %s", p, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK) {
            char who[300] = "";
            ssize_t k = pread(fd, who, sizeof who - 1, 0);
            who[k > 0 ? k : 0] = '\0';
            who[strcspn(who, "\n")] = '\0';
            prefopt_err_set(err, "%s: the run directory is in use by another prefopt train (%s); wait for it to end "
                                 "or use another --run-dir", run_dir, who[0] ? who : "owner unknown");
            close(fd);
            return -1;
        }
        /* a file system without flock (some network mounts): run unlocked rather than not at all */
        fprintf(stderr, "prefopt: warning: %s: cannot lock (%s); two runs on this directory would not be "
                        "stopped\n", p, strerror(errno));
    }
    gethostname(host, sizeof host - 1);
    char who[400];
    int len = snprintf(who, sizeof who, "host %s, pid %d\n", host, (int)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, who, (size_t)len, 0) != len)
        fprintf(stderr, "prefopt: warning: %s: cannot record the owner\n", p);
    /* the descriptor stays open: the lock lasts as long as this process, and goes with it however it ends */
    return 0;
}

const char *prefopt_format_duration(double s, char *buf, size_t len)
{
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, len, "?");
        return buf;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ldh%02ldm%02lds", t / 3600, (t / 60) % 60, t % 60);
    else if (t >= 60)
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, len, "%lds", t);
    return buf;
}
