// blocked.h: the register block shared by conv2d_blocked.cl and conv2d_tiled.cl.
//
// A block is PX neighbouring output pixels of one row times VW*NV output
// channels, held in PX*NV vector accumulators.  For every tap and input
// channel it loads NV weight vectors (contiguous along COUT) and PX input
// scalars, and does PX*NV vector multiply-adds: the input is read once per
// channel block, the weights once per pixel block.  Rows of taps that fall
// wholly into the padding are skipped, and only the edge blocks take the
// per-pixel checked path, where a padded tap adds nothing (it is skipped, not
// multiplied by zero, so an Inf or NaN weight there adds nothing either).
//
// Layout (channels last, C-contiguous): x (N, H, W, CIN), w (KH, KW, CIN, COUT),
// y (N, HO, WO, COUT).  Requires COUT % VW == 0 (the launch code picks VW so)
// and buffers aligned to VW elements (OpenCL buffers are).
//
// Build options (besides those of common.h), with their defaults:
#ifndef CLATROUS_BLOCKED_H
#define CLATROUS_BLOCKED_H
#include "common.h"

#ifndef VW
#define VW 4             // vector width along COUT: 1, 2, 4, 8 or 16
#endif
#ifndef NV
#define NV 2             // vectors per work-item: VW*NV output channels
#endif
#ifndef PX
#define PX 4             // output pixels along a row per block
#endif
#ifndef KH
#define KH 3             // kernel rows (compile-time, so the tap loops unroll)
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif

#if VW != 1 && VW != 2 && VW != 4 && VW != 8 && VW != 16
#error "VW must be 1, 2, 4, 8 or 16"
#endif
#if NV < 1 || PX < 1 || KH < 1 || KW < 1
#error "NV, PX, KH and KW must be positive"
#endif

#if VW == 1
typedef REAL realv;
#else
typedef CAT(REAL, VW) realv;
#endif
// Aligned vector access through a pointer cast: an inline load, where some
// drivers compile vloadn() to a function call.
#define VLOAD(p) (*(__global const realv *)(p))
#define VSTORE(p, v) (*(__global realv *)(p) = (v))

// Adds to acc the taps of input channels [ci_begin, ci_end) for the first
// NPX (at most PX) pixels starting at output column ox0 of output row oy,
// for a KROWS x KCOLS kernel (the kernels pass KH and KW; aspp.cl each
// branch's own).  Always inlined, and called with constant NPX, KROWS and
// KCOLS, so that the tests on NPX fold away, the tap loops unroll and acc
// stays in registers (PoCL's compiler left a second call
// site out of line, with acc in memory: 3.5x slower).  No restrict here: the
// kernels' arguments carry it, and inlined restrict parameters produce an
// LLVM intrinsic that Oclgrind cannot run.
__attribute__((always_inline))
static inline void accumulate(const int NPX, const int KROWS, const int KCOLS,
                              realv acc[PX][NV], const __global REAL *x,
                              const __global REAL *w, const int cov[NV],
                              const int n, const int oy, const int ox0,
                              const int ci_begin, const int ci_end,
                              const int H, const int W, const int CIN, const int COUT,
                              const int SH, const int SW, const int DH, const int DW,
                              const int PT, const int PL)
{
    const int xstep = SW * CIN;                     // between neighbouring output pixels
    const int ix_base = ox0 * SW - PL;
#pragma unroll
    for (int ky = 0; ky < KROWS; ++ky) {
        const int iy = border_index(oy * SH - PT + ky * DH, H);
        if (iy < 0) continue;                       // a whole row of taps in the zero padding
        const __global REAL *xrow = x + ((long)n * H + iy) * W * CIN;
#pragma unroll
        for (int kx = 0; kx < KCOLS; ++kx) {
            const int ix0 = ix_base + kx * DW;
            const __global REAL *wt = w + ((long)(ky * KCOLS + kx) * CIN + ci_begin) * COUT;
            if (ix0 >= 0 && ix0 + (NPX - 1) * SW < W) {
                // Interior: all NPX pixels read real input.
                const __global REAL *xp = xrow + (long)ix0 * CIN;
                for (int ci = ci_begin; ci < ci_end; ++ci) {
                    realv wv[NV];
#pragma unroll
                    for (int v = 0; v < NV; ++v) wv[v] = VLOAD(wt + cov[v]);
#pragma unroll
                    for (int p = 0; p < PX; ++p) {
                        if (p >= NPX) continue;     // folds away: NPX is a constant
                        const REAL xv = xp[p * xstep + ci];
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
                    }
                    wt += COUT;
                }
            } else {
                // Edge: pixels whose tap falls in the zero padding skip it;
                // under another border the tap reads where border_index says.
                int off[PX], inside[PX];
                int any = 0;
#pragma unroll
                for (int p = 0; p < PX; ++p) {
                    const int ix = border_index(ix0 + p * SW, W);
                    inside[p] = p < NPX && ix >= 0;
                    off[p] = inside[p] ? ix * CIN : 0;
                    any |= inside[p];
                }
                if (!any) continue;                 // every pixel of the block in the padding
                for (int ci = ci_begin; ci < ci_end; ++ci) {
                    realv wv[NV];
#pragma unroll
                    for (int v = 0; v < NV; ++v) wv[v] = VLOAD(wt + cov[v]);
#pragma unroll
                    for (int p = 0; p < PX; ++p) {
                        if (!inside[p]) continue;
                        const REAL xv = xrow[off[p] + ci];
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
                    }
                    wt += COUT;
                }
            }
        }
    }
}

// Writes the block of PX pixels from output column ox0 and VW*NV channels
// from co0 into the output row yrow, whose pixels are ystride elements apart
// (COUT, except where a branch of aspp.cl writes its slice of wider
// pixels), adding the bias when HB (a constant at every call: HAS_BIAS, or
// an aspp.cl branch's own), then the activation; pixels past WO and
// channels past COUT (a last, partial block) are not written.
__attribute__((always_inline))
static inline void store_block(const int HB, realv acc[PX][NV], __global REAL *yrow,
                               const __global REAL *bias, const int ox0, const int co0,
                               const int WO, const int COUT, const int ystride)
{
#pragma unroll
    for (int p = 0; p < PX; ++p) {
        const int ox = ox0 + p;
        if (ox >= WO) break;
#pragma unroll
        for (int v = 0; v < NV; ++v) {
            const int co = co0 + v * VW;
            if (co >= COUT) break;
            realv value = acc[p][v];
            if (HB) value += VLOAD(bias + co);
            VSTORE(yrow + (long)ox * ystride + co, ACTIVATE(value));
        }
    }
}

// Channel offsets of the NV vectors, clamped so that the loads of a last,
// partial channel block stay inside w; those lanes are never stored.
static inline void channel_offsets(int cov[NV], const int co0, const int COUT)
{
#pragma unroll
    for (int v = 0; v < NV; ++v) cov[v] = min(co0 + v * VW, COUT - VW);
}

#endif // CLATROUS_BLOCKED_H
