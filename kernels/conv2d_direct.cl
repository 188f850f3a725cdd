// conv2d_direct.cl: dilated 2-D cross-correlation, one output element per work-item.
//
// The simplest correct kernel: every geometry value is a run-time argument, so
// one build serves every shape.  clatrous uses it for tiny problems (where the
// launch dominates) and as the tuner's reference configuration.
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)          input, from element XOFF of its buffer (a run-time
//                                argument, the last one, so a host array can be
//                                shared from an aligned address before it)
//   w    (KH, KW, CIN / G, COUT) weights; output channel co reads the CIN / G
//                                input channels of group co / (COUT / G)
//   bias (COUT) or NULL          only read when HAS_BIAS
//   y    (N, HO, WO, COUT)       output
// NDRange: dim0 = COUT, dim1 = WO (both may be rounded up), dim2 = N * HO exactly.
// Work-item (co, ox, n*HO + oy) computes y[n, oy, ox, co]:
//   sum over ky, kx, ci < CIN/G of
//     x[n, b(oy*SH - PT + ky*DH), b(ox*SW - PL + kx*DW), grp*CIN/G + ci] * w[ky, kx, ci, co]
// with b() the border_index of common.h (a tap in the zero padding adds
// nothing); then bias and activation.  Build options: those of common.h only.

#include "common.h"

__kernel void conv2d_direct(__global const REAL *restrict x,
                            __global const REAL *restrict w,
                            __global const REAL *restrict bias,
                            __global REAL *restrict y,
                            const int H, const int W, const int CIN, const int COUT,
                            const int HO, const int WO, const int KH, const int KW,
                            const int SH, const int SW, const int DH, const int DW,
                            const int PT, const int PL, const int G,
                            const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int co = (int)get_global_id(0);
    const int ox = (int)get_global_id(1);
    const int row = (int)get_global_id(2);          // n * HO + oy
    if (co >= COUT || ox >= WO) return;
    const int n = row / HO;
    const int oy = row - n * HO;
    const int CING = CIN / G;                       // input channels per group
    const int ci0 = (co / (COUT / G)) * CING;       // this output channel's group's first

    REAL acc = (REAL)0;
    for (int ky = 0; ky < KH; ++ky) {
        const int iy = border_index(oy * SH - PT + ky * DH, H);
        if (iy < 0) continue;                       // a whole row of taps in the padding
        for (int kx = 0; kx < KW; ++kx) {
            const int ix = border_index(ox * SW - PL + kx * DW, W);
            if (ix < 0) continue;
            const __global REAL *xp = x + (((long)n * H + iy) * W + ix) * CIN + ci0;
            const __global REAL *wp = w + (long)(ky * KW + kx) * CING * COUT + co;
            for (int ci = 0; ci < CING; ++ci) {
                acc += xp[ci] * wp[(long)ci * COUT];
            }
        }
    }
#if HAS_BIAS
    acc += bias[co];
#endif
    y[((long)row * WO + ox) * COUT + co] = ACTIVATE(acc);
}
