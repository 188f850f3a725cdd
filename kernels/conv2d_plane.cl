// conv2d_plane.cl: dilated 2-D cross-correlation of channels-first images (N, C, H, W),
// written channels-first; the one-channel image (CIN = COUT = 1) is its simplest case,
// where the channels-last and channels-first layouts are the same memory.
//
// Along the rows of a channel plane there is something to vectorise whatever
// the channel count, so each work-item holds VW neighbouring output pixels of
// a row in one vector, for CB output channels.  A work-item whose every tap
// reads real input (at stride 1) takes a path with no checks at all: each tap
// is one unaligned vector load times a weight.  The others, near the padding
// or at other strides, check each tap: a vector wholly in the padding is
// skipped; at stride 1 one wholly inside a row is still one load; only one
// that straddles the edge, or a strided one, is gathered lane by lane (from
// clamped addresses, then masked).  Keeping that rare path cheap matters:
// with a scalar, branchy gather there, the 3% of work-items at the edges of
// W5 took as long as all the others.
//
// Row blocking along the dilation lattice: output rows oy and oy + STEP, with
// STEP = DH / SH, read the same input rows shifted by one kernel row.  A
// work-item computes RB such rows, so it walks RB + KH - 1 input rows and
// uses each loaded input vector for up to KH output rows and CB output
// channels.  (The launch code passes STEP = 1 and RB = 1 when SH does not
// divide DH.)
//
// Layout (C-contiguous, element offsets):
//   x    (N, CIN, H, W)            input, from element XOFF of its buffer (the last argument)
//   w    (KH, KW, CING, COUT)      weights (Keras' layout, whatever the data's);
//                                  output channel co reads the CING input channels
//                                  of group co / COUTG
//   bias (COUT) or NULL            only read when HAS_BIAS
//   y    (N, COUT, HO, WO)         output
// NDRange: dim0 = ceil(WO / VW) (may be rounded up further),
//          dim1 = STEP * ceil(ceil(HO / STEP) / RB), dim2 = N * COUT / CB, both exactly.
// Work-item (bx, g, n * COUT / CB + b) computes y[n, b*CB : b*CB + CB, oy0 + j*STEP,
// bx*VW : bx*VW + VW] for j < RB, where the residue r = g % STEP and the chunk
// c = g / STEP give oy0 = r + c * RB * STEP.
// Build options: VW, RB, CB, CING, COUT, COUTG, KH, KW, SH, SW below, and those of
// common.h (every size that shapes the loops or divides an index is compile-time).

#ifndef VW
#define VW 8             // output pixels per work-item: 2, 4, 8 or 16
#endif
#ifndef RB
#define RB 1             // output rows per work-item, STEP apart
#endif
#ifndef CB
#define CB 1             // output channels per work-item (CB divides COUTG)
#endif
#ifndef CING
#define CING 1           // input channels per group (compile-time: one, the
#endif                   // one-channel image, leaves no loop at all)
#ifndef COUT
#define COUT 1           // output channels
#endif
#ifndef COUTG
#define COUTG COUT       // output channels per group (COUT / COUTG groups)
#endif
#define CIN (COUT / COUTG * CING)
#ifndef KH
#define KH 3             // kernel rows (compile-time, so the tap loops unroll)
#endif
#ifndef KW
#define KW 3             // kernel columns
#endif
#ifndef SH
#define SH 1             // row stride (compile-time, like the kernel size: the
#endif                   // unchecked path exists only at SW = 1, and the
#ifndef SW               // compiler drops it for other strides)
#define SW 1             // column stride
#endif
#include "common.h"

#if VW != 2 && VW != 4 && VW != 8 && VW != 16
#error "VW must be 2, 4, 8 or 16"
#endif
#if RB < 1 || CB < 1 || CING < 1 || COUTG < 1 || KH < 1 || KW < 1 || SH < 1 || SW < 1
#error "RB, CB, CING, COUTG, KH, KW, SH and SW must be positive"
#endif
#if COUT % COUTG != 0 || COUTG % CB != 0
#error "COUTG must divide COUT, and CB must divide COUTG"
#endif

typedef CAT(REAL, VW) realv;
typedef REAL_MASK maskt;
typedef CAT(REAL_MASK, VW) maskv;    // what select() takes with realv
// Unaligned vector access: vloadn/vstoren, the form the OpenCL standard
// defines for any element-aligned address.  On PoCL each is one unaligned
// load or store: W5 ran as fast as with a cast through a reduced-alignment
// pointer type, which leans on the compiler honouring such a typedef.
#define LOADU(p) CAT(vload, VW)(0, (p))
#define STOREU(p, v) CAT(vstore, VW)((v), 0, (p))
// A vector and its elements, for the lane-by-lane paths.
typedef union { realv v; REAL s[VW]; } lanes;

// Adds one loaded input vector, input row t of the work-item and kernel
// column kx, to every output row it serves (kernel row ky = t - j).  Always
// inlined with constant t and kx, so the tests fold away and acc stays in
// registers.
__attribute__((always_inline))
static inline void add_tap(realv acc[CB][RB], const REAL wk[CB][KH * KW], const int t, const int kx,
                           const realv in)
{
#pragma unroll
    for (int b = 0; b < CB; ++b) {
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int ky = t - j;
            if (ky >= 0 && ky < KH) acc[b][j] = fma((realv)wk[b][ky * KW + kx], in, acc[b][j]);
        }
    }
}

// The same for a vector of which some lanes fall in the padding (where skip
// is set): those lanes keep their sums, so an Inf or NaN weight adds nothing
// there, as in every other kernel.
__attribute__((always_inline))
static inline void add_tap_masked(realv acc[CB][RB], const REAL wk[CB][KH * KW], const int t,
                                  const int kx, const realv in, const maskv skip)
{
#pragma unroll
    for (int b = 0; b < CB; ++b) {
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int ky = t - j;
            if (ky >= 0 && ky < KH)
                acc[b][j] = select(fma((realv)wk[b][ky * KW + kx], in, acc[b][j]), acc[b][j], skip);
        }
    }
}

__kernel void conv2d_plane(__global const REAL *restrict x,
                           __global const REAL *restrict w,
                           __global const REAL *restrict bias,
                           __global REAL *restrict y,
                           const int H, const int W, const int HO, const int WO,
                           const int DH, const int DW,
                           const int PT, const int PL, const int STEP,
                           const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int ox0 = (int)get_global_id(0) * VW;
    const int within = (int)get_global_id(1);       // chunk * STEP + residue
    const int z = (int)get_global_id(2);            // n * (COUT / CB) + channel block
    if (ox0 >= WO) return;
    const int chunk = within / STEP;                // quotient and remainder spelled out
    const int oy0 = (within - chunk * STEP) + chunk * RB * STEP;
    if (oy0 >= HO) return;
    const int n = z / (COUT / CB);                  // compile-time divisors: with one channel
    const int co0 = (z - n * (COUT / CB)) * CB;     // in and out, all of this folds away
    const int ci0 = (co0 / COUTG) * CING;           // the first input channel of co0's group

    realv acc[CB][RB];
#pragma unroll
    for (int b = 0; b < CB; ++b)
#pragma unroll
        for (int j = 0; j < RB; ++j) acc[b][j] = (realv)0;

    for (int ci = 0; ci < CING; ++ci) {
        REAL wk[CB][KH * KW];
#pragma unroll
        for (int b = 0; b < CB; ++b)
#pragma unroll
            for (int t = 0; t < KH * KW; ++t) wk[b][t] = w[((long)t * CING + ci) * COUT + co0 + b];

        const __global REAL *ximg = x + ((long)n * CIN + ci0 + ci) * H * W;
        const int iy_base = oy0 * SH - PT;          // input row of kernel row 0, output row j = 0
        const int ix_base = ox0 * SW - PL;          // input column of kernel column 0, lane 0
        if (SW == 1 && ix_base >= 0 && ix_base + (KW - 1) * DW + VW <= W &&
            iy_base >= 0 && iy_base + (RB + KH - 2) * DH < H) {
            // Every tap of every row reads real input: no checks.  (Rows past HO
            // are computed too, from real input, and not stored.)
            const __global REAL *xrow = ximg + (long)iy_base * W + ix_base;
#pragma unroll
            for (int t = 0; t < RB + KH - 1; ++t) {
#pragma unroll
                for (int kx = 0; kx < KW; ++kx) {
                    add_tap(acc, wk, t, kx, LOADU(xrow + kx * DW));
                }
                xrow += (long)DH * W;
            }
        } else {
#pragma unroll
            for (int t = 0; t < RB + KH - 1; ++t) {
                const int iy = border_index(iy_base + t * DH, H);
                if (iy < 0) continue;                   // a whole row of taps in the zero padding
                const __global REAL *xrow = ximg + (long)iy * W;
#pragma unroll
                for (int kx = 0; kx < KW; ++kx) {
                    const int ix0 = ix_base + kx * DW;
                    const int ix_last = ix0 + (VW - 1) * SW;
                    if (BORDER == 0 && (ix_last < 0 || ix0 >= W)) {
                        continue;                       // every lane in the zero padding
                    } else if (SW == 1 && ix0 >= 0 && ix_last < W) {
                        add_tap(acc, wk, t, kx, LOADU(xrow + ix0));
                    } else if (BORDER == 0) {
                        // Straddles the edge, or strided: every lane loads from a
                        // clamped address (NaN or Inf at the border pixel then
                        // sits in padded lanes too), and the padded lanes keep
                        // their sums unchanged.
                        lanes u;
                        union { maskv v; maskt s[VW]; } lane_ix;
#pragma unroll
                        for (int i = 0; i < VW; ++i) {
                            const int ix = ix0 + i * SW;
                            u.s[i] = xrow[clamp(ix, 0, W - 1)];
                            lane_ix.s[i] = ix;
                        }
                        add_tap_masked(acc, wk, t, kx, u.v, lane_ix.v < 0 || lane_ix.v >= W);
                    } else {
                        // Another border: every lane reads real input, where
                        // border_index maps it.
                        // (border_index is straight-line code unless a pad
                        // is as wide as the axis: BORDER_FAR in common.h.)
                        lanes u;
#pragma unroll
                        for (int i = 0; i < VW; ++i) u.s[i] = xrow[border_index(ix0 + i * SW, W)];
                        add_tap(acc, wk, t, kx, u.v);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int b = 0; b < CB; ++b) {
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int oy = oy0 + j * STEP;
            if (oy >= HO) break;
            realv value = acc[b][j];
#if HAS_BIAS
            value += bias[co0 + b];
#endif
            value = ACTIVATE(value);
            __global REAL *yrow = y + (((long)n * COUT + co0 + b) * HO + oy) * WO;
            if (ox0 + VW <= WO) {
                STOREU(yrow + ox0, value);
            } else {
                lanes out;
                out.v = value;
                for (int i = 0; i < WO - ox0; ++i) yrow[ox0 + i] = out.s[i];
            }
        }
    }
}
