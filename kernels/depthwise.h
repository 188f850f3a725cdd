// depthwise.h: the depth multiplier's M filters of VW neighbouring channels,
// shared by conv2d_depthwise.cl and conv2d_depthwise_local.cl.  Output (and
// weight, and bias) channel c*M + m belongs to input channel c, the layout of
// Keras DepthwiseConv2D: a vector of VW channels' filter m is every M-th
// value from c*M + m, contiguous only when M = 1.
#ifndef CLATROUS_DEPTHWISE_H
#define CLATROUS_DEPTHWISE_H
#include "vector.h"

#ifndef M
#define M 1              // depth multiplier: output channels per input channel
#endif
#if M < 1
#error "M must be positive"
#endif

// The M vectors of channels c0 .. c0 + VW - 1 at p, which holds C*M values
// per tap (weights) or in all (bias).
static inline void load_multipliers(realv out[M], const __global REAL *p)
{
#if M == 1
    out[0] = LOADV(p);
#else
#pragma unroll
    for (int m = 0; m < M; ++m) {
        lanes u;
#pragma unroll
        for (int l = 0; l < VW; ++l) u.s[l] = p[l * M + m];
        out[m] = u.v;
    }
#endif
}

// Writes one output pixel's M vectors at yp (its channel c0 * M), plus bv
// when HAS_BIAS (bv is not read otherwise), through the activation.
static inline void store_multipliers(__global REAL *yp, realv acc[M], realv bv[M])
{
#pragma unroll
    for (int m = 0; m < M; ++m) {
        realv value = acc[m];
#if HAS_BIAS
        value += bv[m];
#endif
        value = ACTIVATE(value);
#if M == 1
        STOREV(yp, value);
#else
        lanes u;
        u.v = value;
#pragma unroll
        for (int l = 0; l < VW; ++l) yp[l * M + m] = u.s[l];
#endif
    }
}

#endif // CLATROUS_DEPTHWISE_H
