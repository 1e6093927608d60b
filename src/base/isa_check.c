/* Refuses, before main, to run a binary built for instructions this CPU lacks (PREFOPT_MARCH, CMakeLists.txt).
 * Without it a build for -march=native on an AVX-512 login node dies of SIGILL somewhere in the first layer on
 * an older compute node, which reads like a crash of prefopt. This file is compiled for baseline x86-64; what the
 * rest of the library was allowed to use is recorded by isa_built.c, compiled with the library's flags.
 * PREFOPT_ISA_PRETEND_MISSING (tests only) names a feature to treat as absent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void prefopt_isa_check(void);

#if defined(__x86_64__)
extern const char *const prefopt_isa_built[];

static const char *const isa_names[] = {
    "sse4.2",       "popcnt",   "avx",        "avx2",       "fma",         "bmi",        "bmi2",
    "avx512f",      "avx512dq", "avx512bw",   "avx512vl",   "avx512cd",    "avx512ifma", "avx512vbmi",
    "avx512vbmi2",  "avx512vnni", "avx512bitalg", "avx512vpopcntdq", "avx512bf16", "gfni", "vpclmulqdq",
    "pclmul",       "aes",      "f16c",       "movbe",      "vaes",        "sha",        "adx",
    "lzcnt",        "avx512vp2intersect", "avxvnni"};

/* __builtin_cpu_supports takes literals: one case per feature, in the order of isa_names */
static int cpu_has(int i)
{
    switch (i) {
#define HAS(k, name)                                                                                               \
    case k:                                                                                                        \
        return __builtin_cpu_supports(name) != 0;
        HAS(0, "sse4.2") HAS(1, "popcnt") HAS(2, "avx") HAS(3, "avx2") HAS(4, "fma") HAS(5, "bmi") HAS(6, "bmi2")
        HAS(7, "avx512f") HAS(8, "avx512dq") HAS(9, "avx512bw") HAS(10, "avx512vl") HAS(11, "avx512cd")
        HAS(12, "avx512ifma") HAS(13, "avx512vbmi") HAS(14, "avx512vbmi2") HAS(15, "avx512vnni")
        HAS(16, "avx512bitalg") HAS(17, "avx512vpopcntdq") HAS(18, "avx512bf16") HAS(19, "gfni")
        HAS(20, "vpclmulqdq") HAS(21, "pclmul") HAS(22, "aes")
#ifndef __clang__ /* names clang 14's builtin does not know */
        HAS(23, "f16c") HAS(24, "movbe") HAS(25, "vaes") HAS(26, "sha") HAS(27, "adx") HAS(28, "lzcnt")
        HAS(29, "avx512vp2intersect") HAS(30, "avxvnni")
#endif
#undef HAS
    }
    return 1;
}

__attribute__((constructor)) void prefopt_isa_check(void)
{
    __builtin_cpu_init();
    char missing[256] = "";
    size_t len = 0;
    const char *pretend = getenv("PREFOPT_ISA_PRETEND_MISSING");
    for (int i = 0; prefopt_isa_built[i] && i < (int)(sizeof isa_names / sizeof *isa_names); i++)
        if (prefopt_isa_built[i][0] == '1' && (!cpu_has(i) || (pretend && !strcmp(pretend, isa_names[i]))) &&
            len + 24 < sizeof missing)
            len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%s", len ? " " : "", isa_names[i]);
    if (!len)
        return;
    fprintf(stderr,
            "prefopt: this binary was built with -march=%s but this CPU lacks %s; rebuild on this node or with "
            "-DPREFOPT_MARCH=x86-64-v2 (or -v3 for AVX2 nodes)\n",
            PREFOPT_MARCH_NAME, missing);
    exit(1);
}
#else
void prefopt_isa_check(void) {}
#endif
