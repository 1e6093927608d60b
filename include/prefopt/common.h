/* prefopt: the base layer's shared definitions: exit codes, error messages carried up to where the ranks agree on
 * them (prefopt/agree.h), checked allocation, clocks. No MPI here: the objectives and the tokenizer build on this
 * header alone. */
#ifndef PREFOPT_COMMON_H
#define PREFOPT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifndef PREFOPT_VERSION
#define PREFOPT_VERSION "0.0.0"
#endif

/* Exit codes, documented in README: the job scripts read them. */
enum {
    PREFOPT_EXIT_OK = 0,
    PREFOPT_EXIT_ERROR = 1,   /* bad input, bad configuration, I/O failure: one line says which */
    PREFOPT_EXIT_USAGE = 2,   /* command-line error */
    PREFOPT_EXIT_REQUEUE = 99 /* stopped early on SIGTERM/SIGUSR1 after writing a checkpoint: requeue me */
};

/* An error message being carried up to the point where all ranks agree on it.
 * Functions that can fail on bad input take a prefopt_err* and return non-zero after filling it;
 * the caller (usually a subcommand) then calls prefopt_agree() so every rank prints the same line. */
typedef struct {
    int set;
    char msg[1024];
} prefopt_err;

void prefopt_err_set(prefopt_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void prefopt_err_clear(prefopt_err *e);

/* For failures that cannot be agreed on (another rank may be inside a collective): one line, then the die hook:
 * exit(1) by default, MPI_Abort once the dist layer installed it (prefopt_agree_install_abort in agree.h), so
 * that one failing rank takes its job down at once instead of leaving the others waiting in a collective. */
_Noreturn void prefopt_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void prefopt_set_die_hook(void (*hook)(int code));

/* malloc/calloc that die with the size and purpose on failure. */
void *prefopt_xmalloc(size_t bytes, const char *what);
void *prefopt_xcalloc(size_t n, size_t size, const char *what);

/* Keeps freed memory in the process (glibc's heap, never trimmed) instead of returning large blocks to the OS;
 * called once at start-up by the prefopt executable. See common.c for why. */
void prefopt_malloc_keep_pages(void);

/* Wall-clock seconds from CLOCK_MONOTONIC (what Open MPI 4.1 reads for MPI_Wtime on Linux as well). */
double prefopt_now(void);
/* Start-up timing (issue 17): main marks the process start (before MPI_Init) and the end of MPI_Init; drivers
 * report start-up as the time from the mark to their first step. 0 when never marked (tests, tools). */
void prefopt_mark_start(int after_mpi_init);
double prefopt_start_time(int after_mpi_init);

/* A sum over some group of processes that a caller lends to code that must not know about MPI (the objectives,
 * the metrics): fn(ctx, v, n) replaces v[0..n) by its sum over the group, with the same result on every member.
 * A NULL prefopt_reduction means "this process only". The dist layer makes one over a communicator
 * (prefopt_reduction_over in agree.h). */
typedef struct {
    void (*fn)(void *ctx, double *v, int n);
    void *ctx;
} prefopt_reduction;

/* Applies r (nothing when r is NULL or r->fn is NULL). */
static inline void prefopt_reduce_sum(const prefopt_reduction *r, double *v, int n)
{
    if (r && r->fn)
        r->fn(r->ctx, v, n);
}

#endif
