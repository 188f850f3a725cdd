// conv2d_local.cl: dilated 2-D cross-correlation (stride 1, groups 1), a
// work-group sharing input and weight tiles in local memory.
//
// The GPU-shaped form of the dense convolution.  A work-group computes a tile
// of TH x TW output pixels of one dilation phase (phase_tile.h; TH = LY*PY
// rows, TW = LX*PX columns) for LC*VW output channels.  It walks the input
// channels CT at a time: the group stages the (TH + KH - 1) x (TW + KW - 1)
// input pixels of those channels and their KH*KW*CT*(LC*VW) weights in local
// memory, each element loaded from global memory once, by one work-item, in
// the order memory holds them (channels, then output channels, contiguous);
// after a barrier every work-item adds their taps to its register block of
// PY x PX pixels times VW output channels; a second barrier, and the next
// tile.  Per output, the weights are read from global memory once per TH*TW
// outputs and the input once per LC*VW output channels (with its halo), where
// the blocked kernel reads them once per work-item.
//
// A tap that falls in the zero padding is skipped, never multiplied by zero
// (an Inf or NaN weight on it adds nothing, as in every other kernel); the
// other borders read where border_index (common.h) says.
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)        input, from element XOFF of its buffer (the last argument)
//   w    (KH, KW, CIN, COUT)   weights
//   bias (COUT) or NULL        only read when HAS_BIAS
//   y    (N, HO, WO, COUT)     output
// Requires COUT % VW == 0 and stride 1.
// NDRange, work-group (LC, LX, LY) exactly:
//   dim0 = LC * ceil(COUT / (LC*VW)),
//   dim1 = LX * PHX * TX, with PHX = min(DW, WO) phases of TX = ceil(ceil(WO / DW) / TW) tiles,
//   dim2 = LY * N * PHY * TY, with PHY = min(DH, HO) and TY = ceil(ceil(HO / DH) / TH).
// Work-item (lc, lx, ly) of group (cg, rx*TX + tx, (n*PHY + ry)*TY + ty) computes
// y[n, ry + DH*(ty*TH + ly*PY + i), rx + DW*(tx*TW + lx*PX + j), (cg*LC + lc)*VW ...]
// for i < PY, j < PX, where inside the output.
// Build options: VW, PX, PY, LC, LX, LY, CT, KH, KW below, and those of common.h.

#ifndef VW
#define VW 4             // output channels per work-item, one vector: 1, 2, 4, 8 or 16
#endif
#ifndef PX
#define PX 2             // output pixels of a tile row per work-item
#endif
#ifndef PY
#define PY 2             // tile rows per work-item
#endif
#ifndef LC
#define LC 4             // work-items along the output channels in a group
#endif
#ifndef LX
#define LX 4             // work-items along a tile row
#endif
#ifndef LY
#define LY 4             // work-items along the tile's rows
#endif
#ifndef CT
#define CT 8             // input channels staged at a time
#endif
#ifndef KH
#define KH 3             // kernel rows
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif
#include "vector.h"
#include "phase_tile.h"

#if PX < 1 || PY < 1 || LC < 1 || LX < 1 || LY < 1 || CT < 1 || KH < 1 || KW < 1
#error "PX, PY, LC, LX, LY, CT, KH and KW must be positive"
#endif

#define TH (LY * PY)                   // tile rows
#define TW (LX * PX)                   // tile columns
#define SROWS (TH + KH - 1)            // staged input rows
#define SCOLS (TW + KW - 1)            // staged input columns
#define CO (LC * VW)                   // output channels of a group
#define GROUP (LC * LX * LY)

__kernel __attribute__((reqd_work_group_size(LC, LX, LY)))
void conv2d_local(__global const REAL *restrict x,
                  __global const REAL *restrict w,
                  __global const REAL *restrict bias,
                  __global REAL *restrict y,
                  const int H, const int W, const int CIN, const int COUT,
                  const int HO, const int WO,
                  const int DH, const int DW, const int PT, const int PL,
                  const int TX, const int TY,
                  const int XOFF)
{
    __local REAL xt[SROWS][SCOLS][CT];
    __local REAL wt[KH * KW][CT][CO];
    x += XOFF;                                      // where x starts in its buffer

    const int lc = (int)get_local_id(0), lx = (int)get_local_id(1), ly = (int)get_local_id(2);
    const int flat = (ly * LX + lx) * LC + lc;
    const int cg0 = (int)get_group_id(0) * CO;
    const phase_tile tl = tile_of_group(TH, TW, TX, TY, HO, DH, DW, PT, PL);
    const __global REAL *ximg = x + (long)tl.n * H * W * CIN;

    // Which of this work-item's rows and columns of taps read real input
    // (under zeros; every tap does under the other borders).
    int row_in[PY + KH - 1], col_in[PX + KW - 1];
#pragma unroll
    for (int r = 0; r < PY + KH - 1; ++r) {
        const int iy = tl.iy0 + (ly * PY + r) * DH;
        row_in[r] = BORDER != 0 || (iy >= 0 && iy < H);
    }
#pragma unroll
    for (int c = 0; c < PX + KW - 1; ++c) {
        const int ix = tl.ix0 + (lx * PX + c) * DW;
        col_in[c] = BORDER != 0 || (ix >= 0 && ix < W);
    }

    realv acc[PY][PX];
#pragma unroll
    for (int i = 0; i < PY; ++i)
#pragma unroll
        for (int j = 0; j < PX; ++j) acc[i][j] = (realv)0;

    for (int ct0 = 0; ct0 < CIN; ct0 += CT) {
        // Stage the input tile: pixel by pixel, CT channels contiguous.
        for (int e = flat; e < SROWS * SCOLS * CT; e += GROUP) {
            const int rc = e / CT, ci = e - rc * CT;
            const int r = rc / SCOLS, col = rc - r * SCOLS;
            const int iy = border_index(tl.iy0 + r * DH, H), ix = border_index(tl.ix0 + col * DW, W);
            REAL v = (REAL)0;                       // zero padding (skipped below) or past CIN
            if (iy >= 0 && ix >= 0 && ct0 + ci < CIN) v = ximg[((long)iy * W + ix) * CIN + ct0 + ci];
            xt[r][col][ci] = v;
        }
        // Stage the weights: for each tap and channel, CO output channels contiguous.
        for (int e = flat; e < KH * KW * CT * CO; e += GROUP) {
            const int tci = e / CO, co = e - tci * CO;
            const int t = tci / CT, ci = tci - t * CT;
            REAL v = (REAL)0;
            if (ct0 + ci < CIN && cg0 + co < COUT) v = w[((long)t * CIN + ct0 + ci) * COUT + cg0 + co];
            wt[t][ci][co] = v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

#pragma unroll
        for (int ky = 0; ky < KH; ++ky) {
#pragma unroll
            for (int kx = 0; kx < KW; ++kx) {
                for (int ci = 0; ci < CT; ++ci) {
                    const realv wv = LOADV(&wt[ky * KW + kx][ci][lc * VW]);
#pragma unroll
                    for (int i = 0; i < PY; ++i) {
                        if (!row_in[i + ky]) continue;
#pragma unroll
                        for (int j = 0; j < PX; ++j) {
                            if (!col_in[j + kx]) continue;
                            acc[i][j] += xt[ly * PY + i + ky][lx * PX + j + kx][ci] * wv;
                        }
                    }
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);               // before the next tile overwrites these
    }

    const int co0 = cg0 + lc * VW;
    if (co0 >= COUT) return;
#if HAS_BIAS
    const realv bv = LOADV(bias + co0);
#endif
#pragma unroll
    for (int i = 0; i < PY; ++i) {
        const int oy = tl.ry + DH * (tl.py0 + ly * PY + i);
        if (oy >= HO) continue;                    // (not break: the loop unrolls)
        __global REAL *yrow = y + ((long)tl.n * HO + oy) * WO * COUT + co0;
#pragma unroll
        for (int j = 0; j < PX; ++j) {
            const int ox = tl.rx + DW * (tl.px0 + lx * PX + j);
            if (ox >= WO) continue;
            realv value = acc[i][j];
#if HAS_BIAS
            value += bv;
#endif
            STOREV(yrow + (long)ox * COUT, ACTIVATE(value));
        }
    }
}
