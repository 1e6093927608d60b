/* prefopt: the start-up banner (rank 0): versions, layout, and which library really provides sgemm_. */
#ifndef PREFOPT_BANNER_H
#define PREFOPT_BANNER_H

#include "prefopt/grid.h"
#include <stdio.h>

/* Prints the banner to f on world rank 0 of g's world (collective: no; rank 0 only writes). */
void prefopt_banner(FILE *f, const prefopt_grid *g);

/* Path of the shared object that provides sgemm_ (from dladdr), "unknown" if it cannot be told. */
const char *prefopt_sgemm_provider(void);
/* Call before BLIS initialises (first thing in main): picks BLIS's AVX-512 kernels on CPUs that BLIS 0.9
 * does not recognise, unless BLIS_ARCH_TYPE is set. */
void prefopt_blis_select_arch(void);
/* BLIS version string, architecture and thread count as BLIS sees them. */
const char *prefopt_blis_version(void);
const char *prefopt_blis_arch(void);
int prefopt_blis_threads(void);

#endif
