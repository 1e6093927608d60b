/* Error messages, checked allocation and the allocator setting, clocks (no MPI: see agree.c for the rest). */
#define _GNU_SOURCE
#include "prefopt/common.h"

#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void prefopt_err_set(prefopt_err *e, const char *fmt, ...)
{
    if (!e || e->set) /* keep the first, most specific message */
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* one line whatever the input quoted in it held (file names, JSON strings): control characters become '?' */
    for (char *c = e->msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    e->set = 1;
}

void prefopt_err_clear(prefopt_err *e)
{
    e->set = 0;
    e->msg[0] = '\0';
}

/* How prefopt_die leaves: exit by default; the dist layer installs MPI_Abort (agree.h). */
static void (*die_hook)(int code);

void prefopt_set_die_hook(void (*hook)(int code)) { die_hook = hook; }

_Noreturn void prefopt_die(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "prefopt: error: %s\n", buf);
    fflush(stderr);
    if (die_hook)
        die_hook(PREFOPT_EXIT_ERROR);
    exit(PREFOPT_EXIT_ERROR);
}

void *prefopt_xmalloc(size_t bytes, const char *what)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        prefopt_die("out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *prefopt_xcalloc(size_t n, size_t size, const char *what)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        prefopt_die("out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

/* PBLAS (psgemm on a grid larger than 1x1) mallocs its work buffers (the broadcast panels, the zero-padded
 * temporary of C) and frees them on return, hundreds of times a step. Above glibc's mmap threshold each is a new
 * mapping whose pages are faulted in and zeroed again: ~100 000 page faults per rank per GPT-2-small DPO step on
 * a 1x2 grid, 2.12 -> 1.85-1.95 s with them gone (perf/README.md). Served from the heap, which is never trimmed,
 * the pages stay. The cost: memory freed is not given back to the OS, so a rank's resident size is its peak,
 * which is what the memory check (memcheck.c) budgets for anyway. */
void prefopt_malloc_keep_pages(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

double prefopt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double start_marks[2];
void prefopt_mark_start(int after_mpi_init) { start_marks[after_mpi_init != 0] = prefopt_now(); }
double prefopt_start_time(int after_mpi_init) { return start_marks[after_mpi_init != 0]; }
