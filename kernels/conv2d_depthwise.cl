// conv2d_depthwise.cl: depthwise dilated 2-D cross-correlation (groups = CIN).
//
// Each input channel c is convolved with its own M filters (M the depth
// multiplier) into output channels c*M .. c*M + M - 1, the layout of Keras
// DepthwiseConv2D and tf.nn.depthwise_conv2d.  There is no reduction over
// channels, so the kernel is bound by memory: a work-item takes VW
// neighbouring channels (one vector load along the contiguous channel axis)
// on PX neighbouring output pixels of a row, and each tap is PX vector loads
// of input and M vector multiply-adds per pixel.  Only blocks whose taps
// reach the border take the checked path, where border_index (common.h)
// decides what a tap reads.
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, C)      input, from element XOFF of its buffer (the last argument)
//   w    (KH, KW, C, M)    weights (the grouped kernel (KH, KW, 1, C*M), in memory)
//   bias (C*M) or NULL     only read when HAS_BIAS
//   y    (N, HO, WO, C*M)  output
// Requires C % VW == 0.  Vector accesses use vloadn/vstoren, defined for any
// element-aligned address (x may start at any element of a shared buffer).
// NDRange: dim0 = C / VW, dim1 = ceil(WO / PX) (both may be rounded up),
//          dim2 = N * HO exactly.
// Work-item (cb, bx, n*HO + oy) computes y[n, oy, bx*PX + p, (cb*VW + l)*M + m]
// for p < PX, l < VW, m < M.
// Build options: VW, PX, KH, KW below, M (depthwise.h), and those of common.h.

#ifndef VW
#define VW 4             // channels per work-item, one vector: 1, 2, 4, 8 or 16
#endif
#ifndef PX
#define PX 4             // output pixels along a row per work-item
#endif
#ifndef KH
#define KH 3             // kernel rows (compile-time, so the tap loops unroll)
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif
#include "depthwise.h"

#if PX < 1 || KH < 1 || KW < 1
#error "PX, KH and KW must be positive"
#endif

__kernel void conv2d_depthwise(__global const REAL *restrict x,
                               __global const REAL *restrict w,
                               __global const REAL *restrict bias,
                               __global REAL *restrict y,
                               const int H, const int W, const int C,
                               const int HO, const int WO,
                               const int SH, const int SW, const int DH, const int DW,
                               const int PT, const int PL,
                               const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int c0 = (int)get_global_id(0) * VW;
    const int ox0 = (int)get_global_id(1) * PX;
    const int row = (int)get_global_id(2);          // n * HO + oy
    if (c0 >= C || ox0 >= WO) return;
    const int n = row / HO;
    const int oy = row - n * HO;
    const int npx = min(PX, WO - ox0);              // pixels of this block inside the row

    realv acc[PX][M];
#pragma unroll
    for (int p = 0; p < PX; ++p)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[p][m] = (realv)0;

    const int ix_base = ox0 * SW - PL;
#pragma unroll
    for (int ky = 0; ky < KH; ++ky) {
        const int iy = border_index(oy * SH - PT + ky * DH, H);
        if (iy < 0) continue;                       // a whole row of taps in the zero padding
        const __global REAL *xrow = x + ((long)n * H + iy) * W * C + c0;
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
            realv wv[M];
            load_multipliers(wv, w + ((long)(ky * KW + kx) * C + c0) * M);
            const int ix0 = ix_base + kx * DW;
            if (ix0 >= 0 && ix0 + (PX - 1) * SW < W) {
                // Interior: every pixel of the block reads real input.
#pragma unroll
                for (int p = 0; p < PX; ++p) {
                    const realv xv = LOADV(xrow + (long)(ix0 + p * SW) * C);
#pragma unroll
                    for (int m = 0; m < M; ++m) acc[p][m] += xv * wv[m];
                }
            } else {
#pragma unroll
                for (int p = 0; p < PX; ++p) {
                    const int ix = border_index(ix0 + p * SW, W);
                    if (p >= npx || ix < 0) continue;
                    const realv xv = LOADV(xrow + (long)ix * C);
#pragma unroll
                    for (int m = 0; m < M; ++m) acc[p][m] += xv * wv[m];
                }
            }
        }
    }

    realv bv[M];
#if HAS_BIAS
    load_multipliers(bv, bias + (long)c0 * M);
#endif
    __global REAL *yrow = y + ((long)row * WO + ox0) * C * M + (long)c0 * M;
#pragma unroll
    for (int p = 0; p < PX; ++p) {
        if (p >= npx) continue;                    // (not break: the loop unrolls)
        store_multipliers(yrow + (long)p * C * M, acc[p], bv);
    }
}
