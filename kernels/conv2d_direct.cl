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
//   w    (KH, KW, CIN, COUT)     weights
//   bias (COUT) or NULL          only read when HAS_BIAS
//   y    (N, HO, WO, COUT)       output
// NDRange: dim0 = COUT, dim1 = WO (both may be rounded up), dim2 = N * HO exactly.
// Work-item (co, ox, n*HO + oy) computes y[n, oy, ox, co]:
//   sum over ky, kx, ci of x[n, oy*SH - PT + ky*DH, ox*SW - PL + kx*DW, ci] * w[ky, kx, ci, co]
// over the taps that read the input (a tap in the padding adds nothing); then
// bias and activation.  Build options: those of common.h only.

#include "common.h"

__kernel void conv2d_direct(__global const REAL *restrict x,
                            __global const REAL *restrict w,
                            __global const REAL *restrict bias,
                            __global REAL *restrict y,
                            const int H, const int W, const int CIN, const int COUT,
                            const int HO, const int WO, const int KH, const int KW,
                            const int SH, const int SW, const int DH, const int DW,
                            const int PT, const int PL,
                            const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int co = (int)get_global_id(0);
    const int ox = (int)get_global_id(1);
    const int row = (int)get_global_id(2);          // n * HO + oy
    if (co >= COUT || ox >= WO) return;
    const int n = row / HO;
    const int oy = row - n * HO;

    REAL acc = (REAL)0;
    for (int ky = 0; ky < KH; ++ky) {
        const int iy = border_index(oy * SH - PT + ky * DH, H);
        if (iy < 0) continue;                       // a whole row of taps in the padding
        for (int kx = 0; kx < KW; ++kx) {
            const int ix = border_index(ox * SW - PL + kx * DW, W);
            if (ix < 0) continue;
            const __global REAL *xp = x + (((long)n * H + iy) * W + ix) * CIN;
            const __global REAL *wp = w + (long)(ky * KW + kx) * CIN * COUT + co;
            for (int ci = 0; ci < CIN; ++ci) {
                acc += xp[ci] * wp[(long)ci * COUT];
            }
        }
    }
#if HAS_BIAS
    acc += bias[co];
#endif
    y[((long)row * WO + ox) * COUT + co] = ACTIVATE(acc);
}
