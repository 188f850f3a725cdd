// conv2d_blocked.cl: dilated 2-D cross-correlation, a register block per work-item.
// Two kernels: conv2d_blocked (one block per work-item) and conv2d_tiled
// (NB blocks on each of RW rows per work-item, input channels in tiles; see
// below).
//
// Each work-item computes PX neighbouring output pixels of one row times
// VW*NV output channels, held in PX*NV vector accumulators.  For every tap and
// input channel it loads NV weight vectors (contiguous along COUT) and PX input
// scalars, and does PX*NV vector multiply-adds: the input is read once per
// channel block, the weights once per pixel block.  Padding is handled inside
// the kernel: rows of taps that fall wholly into the padding are skipped, and
// only the edge blocks take the per-pixel checked path.
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)          input, from element XOFF of its buffer (a run-time
//                                argument, the last one, so a host array can be
//                                shared from an aligned address before it)
//   w    (KH, KW, CIN, COUT)     weights
//   bias (COUT) or NULL          only read when HAS_BIAS
//   y    (N, HO, WO, COUT)       output
// Requires COUT % VW == 0 (the launch code picks VW so) and a buffer start
// aligned to VW elements (OpenCL buffers are).
// NDRange: dim0 = ceil(COUT / (VW*NV)), dim1 = ceil(WO / PX) (both may be
// rounded up further), dim2 = N * HO exactly.
// Work-item (cb, bx, n*HO + oy) of conv2d_blocked computes
// y[n, oy, bx*PX : bx*PX+PX, cb*VW*NV : (cb+1)*VW*NV].

#ifndef REAL
#define REAL float       // element type: float or double
#endif
#ifndef VW
#define VW 4             // vector width along COUT: 1, 2, 4, 8 or 16
#endif
#ifndef NV
#define NV 2             // vectors per work-item: VW*NV output channels
#endif
#ifndef PX
#define PX 4             // output pixels along a row per work-item
#endif
#ifndef CT
#define CT 64            // conv2d_tiled only: input channels per tile
#endif
#ifndef NB
#define NB 4             // conv2d_tiled only: pixel blocks of PX per row
#endif
#ifndef RW
#define RW 4             // conv2d_tiled only: output rows per work-item
#endif
#ifndef PXT
#define PXT 0            // conv2d_tiled only: WO % PX, the pixels of a row's
#endif                   // short last block, computed alone
#ifndef KH
#define KH 3             // kernel rows (compile-time, so the tap loops unroll)
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif
#ifndef ACTIVATION
#define ACTIVATION 0     // 0 linear, 1 relu, 2 sigmoid, 3 tanh
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0       // 1: add bias[co] before the activation
#endif

#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#if VW == 1
typedef REAL realv;
#else
typedef CAT(REAL, VW) realv;
#endif
// Aligned vector access through a pointer cast: an inline load, where some
// drivers compile vloadn() to a function call.
#define VLOAD(p) (*(__global const realv *)(p))
#define VSTORE(p, v) (*(__global realv *)(p) = (v))

#if ACTIVATION == 1
// relu keeps NaN (fmax would drop it), as NumPy, PyTorch and TensorFlow do.
#if VW == 1
#define ACTIVATE(v) ((v) < (REAL)0 ? (REAL)0 : (v))
#else
#define ACTIVATE(v) select((v), (realv)0, (v) < (realv)0)
#endif
#elif ACTIVATION == 2
#define ACTIVATE(v) ((realv)1 / ((realv)1 + exp(-(v))))
#elif ACTIVATION == 3
#define ACTIVATE(v) tanh(v)
#else
#define ACTIVATE(v) (v)
#endif

// Adds to acc the taps of input channels [ci_begin, ci_end) for the first
// NPX (at most PX) pixels starting at output column ox0 of output row oy.
// Always inlined, and called with a constant NPX, so that the tests on NPX
// fold away and acc stays in registers (PoCL's compiler left a second call
// site out of line, with acc in memory: 3.5x slower).  No restrict here: the
// kernels' arguments carry it, and inlined restrict parameters produce an
// LLVM intrinsic that Oclgrind cannot run.
__attribute__((always_inline))
static inline void accumulate(const int NPX, realv acc[PX][NV], const __global REAL *x,
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
    for (int ky = 0; ky < KH; ++ky) {
        const int iy = oy * SH - PT + ky * DH;
        if (iy < 0 || iy >= H) continue;            // a whole row of taps in the padding
        const __global REAL *xrow = x + ((long)n * H + iy) * W * CIN;
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
            const int ix0 = ix_base + kx * DW;
            const __global REAL *wt = w + ((long)(ky * KW + kx) * CIN + ci_begin) * COUT;
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
                // Edge: pixels in the padding read zero.
                int off[PX], inside[PX];
                int any = 0;
#pragma unroll
                for (int p = 0; p < PX; ++p) {
                    const int ix = ix0 + p * SW;
                    inside[p] = p < NPX && ix >= 0 && ix < W;
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
                        if (p >= NPX) continue;
                        // Selected, not multiplied by a mask: a padded tap adds an
                        // exact zero even when the row holds NaN or Inf elsewhere.
                        const REAL xv = inside[p] ? xrow[off[p] + ci] : (REAL)0;
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
// from co0 into the output row yrow, with bias and activation; pixels past
// WO and channels past COUT (a last, partial block) are not written.
static inline void store_block(realv acc[PX][NV], __global REAL *yrow,
                               const __global REAL *restrict bias,
                               const int ox0, const int co0, const int WO, const int COUT)
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
#if HAS_BIAS
            value += VLOAD(bias + co);
#endif
            VSTORE(yrow + (long)ox * COUT + co, ACTIVATE(value));
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

    accumulate(PX, acc, x, w, cov, n, oy, ox0, 0, CIN, H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);

    store_block(acc, y + (long)row * WO * COUT, bias, ox0, co0, WO, COUT);
}

// The channel-tiled form, for many input channels: a work-item covers one
// channel block on RW output rows of one image, NB blocks of PX pixels on
// each, and walks the input channels CT at a time, each tile through every
// block, so that a CT-channel slice of the weights is read from memory once
// per RW rows and then served from the cache to all RW*NB blocks.  A block's
// sums stay in registers while a tile runs and wait in local memory between
// tiles (RW*NB*PX*NV*VW elements: the launch checks the device has that much).
// A row's last block, when WO is not a multiple of PX, computes only its PXT
// pixels (a build option, so that both block widths unroll).
// The work-group must be one work-item, which then owns that local memory.
// NDRange: dim0 = ceil(COUT / (VW*NV)), dim1 = ceil(WO / (NB*PX)) (both may
// be rounded up further), dim2 = N * ceil(HO / RW) exactly; local (1, 1, 1).
__kernel void conv2d_tiled(__global const REAL *restrict x,
                           __global const REAL *restrict w,
                           __global const REAL *restrict bias,
                           __global REAL *restrict y,
                           const int H, const int W, const int CIN, const int COUT,
                           const int HO, const int WO,
                           const int SH, const int SW, const int DH, const int DW,
                           const int PT, const int PL,
                           const int XOFF)
{
    __local realv partial[RW * NB][PX][NV];
    x += XOFF;                                      // where x starts in its buffer
    const int co0 = (int)get_global_id(0) * (VW * NV);
    const int ox_first = (int)get_global_id(1) * (NB * PX);
    const int chunks = (HO + RW - 1) / RW;          // row groups per image
    const int group = (int)get_global_id(2);        // n * chunks + chunk
    if (co0 >= COUT || ox_first >= WO) return;
    const int n = group / chunks;
    const int oy_first = (group - n * chunks) * RW;
    const int rows = min(RW, HO - oy_first);
    const int blocks = min(NB, (WO - ox_first + PX - 1) / PX);
    int cov[NV];
    channel_offsets(cov, co0, COUT);

    for (int ci0 = 0; ci0 < CIN; ci0 += CT) {
        const int ci1 = min(ci0 + CT, CIN);
        for (int r = 0; r < rows; ++r) {
            const int oy = oy_first + r;
            for (int b = 0; b < blocks; ++b) {
                __local realv (*sums)[NV] = partial[r * NB + b];
                realv acc[PX][NV];
                if (ci0 == 0) {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] = (realv)0;
                } else {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] = sums[p][v];
                }
                const int ox0 = ox_first + b * PX;
                if (PXT > 0 && WO - ox0 == PXT) {
                    // The row's last PXT pixels, short of a whole block: no
                    // work on pixels past WO.  (With any other PXT such a
                    // block runs whole, its extra pixels on the checked path
                    // and never stored.)
                    accumulate(PXT, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);
                } else {
                    accumulate(PX, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);
                }
                if (ci1 < CIN) {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) sums[p][v] = acc[p][v];
                } else {
                    store_block(acc, y + ((long)n * HO + oy) * WO * COUT, bias,
                                ox0, co0, WO, COUT);
                }
            }
        }
    }
}
