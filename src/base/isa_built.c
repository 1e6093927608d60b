/* What the compiler was allowed to use for this build of the library (PREFOPT_MARCH), in the order of
 * isa_check.c's table: "1" where the feature macro is defined, the macro's own name where it is not. Data only,
 * compiled with the library's flags; read before main by code built for baseline x86-64. */
#define PF_STR(x) #x
#define PF_XSTR(x) PF_STR(x)

const char *const prefopt_isa_built[] = {
    PF_XSTR(__SSE4_2__),       PF_XSTR(__POPCNT__),       PF_XSTR(__AVX__),         PF_XSTR(__AVX2__),
    PF_XSTR(__FMA__),          PF_XSTR(__BMI__),          PF_XSTR(__BMI2__),        PF_XSTR(__AVX512F__),
    PF_XSTR(__AVX512DQ__),     PF_XSTR(__AVX512BW__),     PF_XSTR(__AVX512VL__),    PF_XSTR(__AVX512CD__),
    PF_XSTR(__AVX512IFMA__),   PF_XSTR(__AVX512VBMI__),   PF_XSTR(__AVX512VBMI2__), PF_XSTR(__AVX512VNNI__),
    PF_XSTR(__AVX512BITALG__), PF_XSTR(__AVX512VPOPCNTDQ__), PF_XSTR(__AVX512BF16__), PF_XSTR(__GFNI__),
    PF_XSTR(__VPCLMULQDQ__),   PF_XSTR(__PCLMUL__),       PF_XSTR(__AES__),         PF_XSTR(__F16C__),
    PF_XSTR(__MOVBE__),        PF_XSTR(__VAES__),         PF_XSTR(__SHA__),         PF_XSTR(__ADX__),
    PF_XSTR(__LZCNT__),        PF_XSTR(__AVX512VP2INTERSECT__), PF_XSTR(__AVXVNNI__), 0};
