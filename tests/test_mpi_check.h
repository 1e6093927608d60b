/* The check macro of the MPI dataset tests: a failed check prints the rank, the place and a message, and counts;
 * the test ends non-zero when any rank counted one. Included once per test program (it defines the counters). */
#ifndef PREFOPT_TEST_MPI_CHECK_H
#define PREFOPT_TEST_MPI_CHECK_H
#include <stdio.h>

static int rank, size, failures;
#define CHECK(c, ...)                                                                                          \
    do {                                                                                                       \
        if (!(c)) {                                                                                            \
            failures++;                                                                                        \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", rank, __FILE__, __LINE__, #c);               \
            fprintf(stderr, __VA_ARGS__);                                                                      \
            fprintf(stderr, "\n");                                                                             \
        }                                                                                                      \
    } while (0)
#endif
