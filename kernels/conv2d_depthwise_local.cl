// conv2d_depthwise_local.cl: depthwise dilated 2-D cross-correlation (groups = CIN,
// stride 1), a work-group sharing one input tile in local memory.
//
// The GPU-shaped form of conv2d_depthwise.cl.  A work-group takes a tile of
// TH x TW output pixels of one dilation phase (phase_tile.h; TH = LY rows,
// TW = LX*PX columns) and LC*VW channels, and stages the (TH + KH - 1) x
// (TW + KW - 1) input pixels they read, plus its weights, in local memory,
// each loaded from global memory once by one work-item.  After one barrier
// each work-item computes PX pixels of one row of the tile for its VW
// channels from local memory.  Neighbouring work-items (dim 0) take
// neighbouring channels, so the global loads of a group are contiguous
// along the channel axis.
//
// A tap that falls in the zero padding is skipped, never multiplied by zero
// (an Inf or NaN weight on it adds nothing, as in every other kernel); the
// other borders read where border_index (common.h) says.
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, C)      input, from element XOFF of its buffer (the last argument)
//   w    (KH, KW, C, M)    weights
//   bias (C*M) or NULL     only read when HAS_BIAS
//   y    (N, HO, WO, C*M)  output
// Requires C % VW == 0 and stride 1.
// NDRange, work-group (LC, LX, LY) exactly:
//   dim0 = LC * ceil(C / (LC*VW)),
//   dim1 = LX * PHX * TX, with PHX = min(DW, WO) phases of TX = ceil(ceil(WO / DW) / TW) tiles,
//   dim2 = LY * N * PHY * TY, with PHY = min(DH, HO) and TY = ceil(ceil(HO / DH) / TH).
// Group (cg, rx*TX + tx, (n*PHY + ry)*TY + ty) computes y[n, ry + DH*(ty*TH + i), rx + DW*(tx*TW + j), ...]
// for the tile's i < TH, j < TW that fall inside the output.
// Build options: VW, PX, LC, LX, LY, KH, KW below, M (depthwise.h), and those of common.h.

#ifndef VW
#define VW 4             // channels per work-item, one vector: 1, 2, 4, 8 or 16
#endif
#ifndef PX
#define PX 2             // output pixels of a tile row per work-item
#endif
#ifndef LC
#define LC 4             // work-items along the channels in a group
#endif
#ifndef LX
#define LX 4             // work-items along a tile row
#endif
#ifndef LY
#define LY 4             // work-items along the tile's rows (one row each)
#endif
#ifndef KH
#define KH 3             // kernel rows
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif
#include "depthwise.h"
#include "phase_tile.h"

#if PX < 1 || LC < 1 || LX < 1 || LY < 1 || KH < 1 || KW < 1
#error "PX, LC, LX, LY, KH and KW must be positive"
#endif

#define TH LY                          // tile rows
#define TW (LX * PX)                   // tile columns
#define SROWS (TH + KH - 1)            // staged input rows
#define SCOLS (TW + KW - 1)            // staged input columns
#define GROUP (LC * LX * LY)

__kernel __attribute__((reqd_work_group_size(LC, LX, LY)))
void conv2d_depthwise_local(__global const REAL *restrict x,
                            __global const REAL *restrict w,
                            __global const REAL *restrict bias,
                            __global REAL *restrict y,
                            const int H, const int W, const int C,
                            const int HO, const int WO,
                            const int DH, const int DW, const int PT, const int PL,
                            const int TX, const int TY,
                            const int XOFF)
{
    // One vector of VW channels per staged pixel and weight, the M filters
    // of a channel lane after another (w's own order).
    __local realv tile[SROWS][SCOLS][LC];
    __local REAL wtile[KH * KW][LC * VW * M];
    x += XOFF;                                      // where x starts in its buffer

    const int lc = (int)get_local_id(0), lx = (int)get_local_id(1), ly = (int)get_local_id(2);
    const int flat = (ly * LX + lx) * LC + lc;      // channel-fastest: contiguous loads
    const int cg0 = (int)get_group_id(0) * (LC * VW);
    const phase_tile tl = tile_of_group(TH, TW, TX, TY, HO, DH, DW, PT, PL);
    const int n = tl.n, ry = tl.ry, rx = tl.rx, py0 = tl.py0, px0 = tl.px0, iy0 = tl.iy0, ix0 = tl.ix0;

    // Stage the input tile: every (row, column, channel vector), one each.
    const __global REAL *ximg = x + (long)n * H * W * C;
    for (int e = flat; e < SROWS * SCOLS * LC; e += GROUP) {
        const int rc = e / LC, c = e - rc * LC;
        const int r = rc / SCOLS, col = rc - r * SCOLS;
        const int iy = border_index(iy0 + r * DH, H), ix = border_index(ix0 + col * DW, W);
        const int ch = cg0 + c * VW;
        realv v = (realv)0;                         // zero padding (skipped below) or past C
        if (iy >= 0 && ix >= 0 && ch < C) v = LOADV(ximg + ((long)iy * W + ix) * C + ch);
        tile[r][col][c] = v;
    }
    // Stage the weights of the group's channels.
    const int wcount = min(LC * VW, C - cg0) * M;  // C % VW == 0: whole vectors only
    for (int e = flat; e < KH * KW * LC * VW * M; e += GROUP) {
        const int t = e / (LC * VW * M), k = e - t * (LC * VW * M);
        wtile[t][k] = k < wcount ? w[((long)t * C + cg0) * M + k] : (REAL)0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    const int ch0 = cg0 + lc * VW;
    const int oy = ry + DH * (py0 + ly);
    if (ch0 >= C || oy >= HO) return;               // after the barrier: nothing more to wait for

    realv acc[PX][M];
#pragma unroll
    for (int p = 0; p < PX; ++p)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[p][m] = (realv)0;

#pragma unroll
    for (int ky = 0; ky < KH; ++ky) {
        if (BORDER == 0 && iy0 + (ly + ky) * DH < 0) continue;    // a row of taps in the padding
        if (BORDER == 0 && iy0 + (ly + ky) * DH >= H) continue;
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
            realv wv[M];
#pragma unroll
            for (int m = 0; m < M; ++m) {
#if M == 1
                wv[0] = LOADV(&wtile[ky * KW + kx][lc * VW]);
#else
                lanes u;
#pragma unroll
                for (int l = 0; l < VW; ++l) u.s[l] = wtile[ky * KW + kx][(lc * VW + l) * M + m];
                wv[m] = u.v;
#endif
            }
#pragma unroll
            for (int p = 0; p < PX; ++p) {
                const int col = lx * PX + p + kx;
                const int ix = ix0 + col * DW;
                if (BORDER == 0 && (ix < 0 || ix >= W)) continue;
                const realv xv = tile[ly + ky][col][lc];
#pragma unroll
                for (int m = 0; m < M; ++m) acc[p][m] += xv * wv[m];
            }
        }
    }

    realv bv[M];
#if HAS_BIAS
    load_multipliers(bv, bias + (long)ch0 * M);
#endif
    __global REAL *yrow = y + (((long)n * HO + oy) * WO) * C * M + (long)ch0 * M;
#pragma unroll
    for (int p = 0; p < PX; ++p) {
        const int ox = rx + DW * (px0 + lx * PX + p);
        if (ox >= WO) continue;                    // (not break: the loop unrolls)
        store_multipliers(yrow + (long)ox * C * M, acc[p], bv);
    }
}
