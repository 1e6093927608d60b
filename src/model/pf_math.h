/* prefopt internal: an exp that vectorises. libm's expf and tanhf are scalar calls; in GELU/SiLU they were about
 * 9% of a GPT-2-small DPO step (perf/README.md). The attention softmax and the LM head's log-sum-exp use the same
 * function (measured neither faster nor slower there; one exp for the whole engine). The files that use it are
 * compiled with -fno-trapping-math (CMakeLists.txt: no FP exception flag is ever read, values are unchanged) so
 * that the clamps if-convert and the loops vectorise.
 *
 * pf_exp: Cephes expf (Cody-Waite reduction by ln 2, degree-6 polynomial), relative error below 1e-7 on
 * [-87, 88], clamped outside (exp(-87) ~ 1.6e-38: below it the result is that, not 0). A pure function of its
 * argument: no thread or grid dependence. */
#ifndef PREFOPT_PF_MATH_H
#define PREFOPT_PF_MATH_H

#include <stdint.h>
#include <string.h>

static inline float pf_exp(float y)
{
    y = y > -87.0f ? y : -87.0f; /* two selects: a nested conditional does not if-convert */
    y = y < 88.0f ? y : 88.0f;
    float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* y / ln 2 rounded to nearest */
    float r = y - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#endif
