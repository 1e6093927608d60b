/* prefopt: shared definitions: error reporting that every rank agrees on, checked allocation, timing. */
#ifndef PREFOPT_COMMON_H
#define PREFOPT_COMMON_H

#include <mpi.h>
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

/* Collective over comm. Returns 1 if any rank has e->set; then every rank's e holds the message of the
 * lowest-numbered failing rank. Returns 0 when no rank failed. */
int prefopt_agree(MPI_Comm comm, prefopt_err *e);

/* Prints "prefopt: error: <msg>" on this rank to stderr, finalizes MPI if initialized, exits with code. */
_Noreturn void prefopt_exit_error(const prefopt_err *e, int code);

/* For failures that cannot be agreed on (another rank may be inside a collective): one line, then MPI_Abort. */
_Noreturn void prefopt_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* malloc/calloc that die with the size and purpose on failure. */
void *prefopt_xmalloc(size_t bytes, const char *what);
void *prefopt_xcalloc(size_t n, size_t size, const char *what);

/* Keeps freed memory in the process (glibc's heap, never trimmed) instead of returning large blocks to the OS;
 * called once at start-up by the prefopt executable. See common.c for why. */
void prefopt_malloc_keep_pages(void);

/* Wall-clock seconds (MPI_Wtime when MPI is initialized, else clock_gettime). */
double prefopt_now(void);

/* Rank in MPI_COMM_WORLD, 0 before MPI_Init. */
int prefopt_world_rank(void);

#endif
