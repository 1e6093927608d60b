/* Shared by the libFuzzer harnesses of tests/fuzz: every parser of outside input reads files, so a harness writes
 * its input to a per-process temporary file and calls the real entry point on it.
 *
 * The invariant every harness checks besides "no crash, no sanitizer report": a call that fails has filled its
 * error message, and the message is one line (prefopt_exit_error prints it as the single line every rank agrees
 * on; a newline inside it would break the job scripts' and tests' parsing). */
#ifndef PREFOPT_FUZZ_COMMON_H
#define PREFOPT_FUZZ_COMMON_H

#define _GNU_SOURCE
#include "prefopt/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A path under $TMPDIR (or /tmp) unique to this process and tag; the directory is created once. */
static inline const char *fuzz_tmp_path(const char *tag)
{
    static char dir[256];
    static char path[8][512];
    static const char *tags[8];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/prefopt_fuzz_%d", t && *t ? t : "/tmp", (int)getpid());
        mkdir(dir, 0700);
    }
    for (int i = 0; i < 8; i++) {
        if (tags[i] && !strcmp(tags[i], tag))
            return path[i];
        if (!tags[i]) {
            tags[i] = tag;
            snprintf(path[i], sizeof path[i], "%s/%s", dir, tag);
            return path[i];
        }
    }
    abort();
}

static inline void fuzz_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (len && fwrite(data, 1, len, f) != len)
        abort();
    if (fclose(f))
        abort();
}

/* A failure must say why, on one line. */
static inline void fuzz_check_err(int rc, const prefopt_err *e)
{
    if (!rc)
        return;
    if (!e->set || !e->msg[0]) {
        fprintf(stderr, "fuzz: call failed without an error message\n");
        abort();
    }
    if (strchr(e->msg, '\n')) {
        fprintf(stderr, "fuzz: error message spans lines: %s\n", e->msg);
        abort();
    }
}

#endif
