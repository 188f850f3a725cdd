// conv2d_blocked.cl: dilated 2-D cross-correlation, one register block per work-item.
//
// Each work-item computes PX neighbouring output pixels of one row times
// VW*NV output channels (the block of blocked.h, whose build options VW, NV,
// PX, KH and KW it takes, with those of common.h).
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)          input, from element XOFF of its buffer (a run-time
//                                argument, the last one, so a host array can be
//                                shared from an aligned address before it)
//   w    (KH, KW, CIN, COUT)     weights
//   bias (COUT) or NULL          only read when HAS_BIAS
//   y    (N, HO, WO, COUT)       output
// NDRange: dim0 = ceil(COUT / (VW*NV)), dim1 = ceil(WO / PX) (both may be
// rounded up further), dim2 = N * HO exactly.
// Work-item (cb, bx, n*HO + oy) computes
// y[n, oy, bx*PX : bx*PX+PX, cb*VW*NV : (cb+1)*VW*NV].

#include "blocked.h"

__kernel void conv2d_blocked(__global const REAL *restrict x,
                             __global const REAL *restrict w,
                             __global const REAL *restrict bias,
                             __global REAL *restrict y,
                             const int H, const int W, const int CIN, const int COUT,
                             const int HO, const int WO,
                             const int SH, const int SW, const int DH, const int DW,
                             const int PT, const int PL,
                             const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int co0 = (int)get_global_id(0) * (VW * NV);
    const int ox0 = (int)get_global_id(1) * PX;
    const int row = (int)get_global_id(2);          // n * HO + oy
    if (co0 >= COUT || ox0 >= WO) return;
    const int n = row / HO;
    const int oy = row - n * HO;

    int cov[NV];
    channel_offsets(cov, co0, COUT);
    realv acc[PX][NV];
#pragma unroll
    for (int p = 0; p < PX; ++p)
#pragma unroll
        for (int v = 0; v < NV; ++v) acc[p][v] = (realv)0;

    accumulate(PX, KH, KW, acc, x, w, cov, n, oy, ox0, 0, CIN, H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);

    store_block(HAS_BIAS, acc, y + (long)row * WO * COUT, bias, ox0, co0, WO, COUT, COUT);
}
