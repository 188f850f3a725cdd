// aspp.cl: several dilated convolutions of one input in one launch, each
// writing its own channel slice of one output (the branches of an ASPP).
//
// Branch b (0 <= b < NBR) is a stride-1 "same" convolution of x with
// weights wb (KHb, KWb, CIN, COb) at dilation (DHb, DWb), padded PTb rows
// on top and PLb columns on the left (zeros), plus bias bb when HBb, through
// ACTIVATION; it writes channels [OFFb, OFFb + COb) of y.  The work-items of
// all branches share one NDRange: along dim0 the channel blocks of branch
// 0, then those of branch 1, and so on, so neighbouring work-items compute
// the same pixels for every branch and read the same input rows while they
// are in cache.  Taps that fall wholly in the padding are skipped (whole
// rows of taps, and at the edges tap by tap), not multiplied by zero.
//
// A work-item is the one of conv2d_tiled.cl: one channel block of VW*NV
// channels on RW output rows of one image, NB blocks of PX pixels on each,
// the input channels CT at a time with the partial sums in local memory
// between tiles (CT = 0: every channel in one go, no local memory, any
// work-group size, as a GPU wants it).
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)       input, from element XOFF of its buffer
//   wb   (KHb, KWb, CIN, COb) branch b's weights (unused arguments: any buffer)
//   bb   (COb), or per image (N, COb) when BSTRIDE = COb; read only when HBb
//   y    (N, H, W, YC)        output, YC = OFF[NBR-1] + CO[NBR-1] or more
// Requires COb % VW == 0 and OFFb % VW == 0 (aligned vector stores).
// NDRange: dim0 >= the sum over b of ceil(COb / (VW*NV)), dim1 >=
// ceil(W / (NB*PX)), dim2 = N * ceil(H / RW) exactly.
//
// Build options, besides VW, NV, PX of blocked.h and those of common.h
// (HAS_BIAS is not read: each branch says HBb), with their defaults:

#ifndef CT
#define CT 64            // input channels per tile; 0: all of them at once
#endif
#ifndef NB
#define NB 4             // pixel blocks of PX per row
#endif
#ifndef RW
#define RW 4             // output rows per work-item
#endif
#ifndef NBR
#define NBR 1            // branches, 1 to 8
#endif
#ifndef PXT
#define PXT 0            // W % PX: the pixels of a row's short last block, computed alone
#endif
#ifndef YC
#define YC CO0           // channels of an output pixel
#endif
#ifndef KH0              // branch 0 (the others have no defaults)
#define KH0 3
#define KW0 3
#define DH0 1
#define DW0 1
#define PT0 1
#define PL0 1
#define CO0 16
#define OFF0 0
#define HB0 0
#endif

#include "blocked.h"

#if CT < 0 || NB < 1 || RW < 1
#error "CT must be 0 or positive, NB and RW positive"
#endif
#if NBR < 1 || NBR > 8
#error "NBR must be from 1 to 8"
#endif
#if PXT < 0 || PXT >= PX
#error "PXT must be W % PX, in [0, PX)"
#endif

#define BLOCKS(c) (((c) + VW * NV - 1) / (VW * NV))

#if CT > 0
#define TILE CT
#else
#define TILE 0x7fffffff  // one tile: every input channel
#endif

// One branch's work-item: channels [co0, co0 + VW*NV) of the branch, rows
// [oy_first, oy_first + RW) of image n, pixels from ox_first.  KROWS and
// KCOLS are constants at every call (one call per branch), so the tap loops
// of accumulate unroll for each branch's kernel size.
__attribute__((always_inline))
static inline void branch(const int KROWS, const int KCOLS, const int DH, const int DW,
                          const int PT, const int PL, const int COUT, const int HB,
                          const __global REAL *x, const __global REAL *w,
                          const __global REAL *bias, __global REAL *y,
                          const int co0, const int n, const int oy_first, const int ox_first,
                          const int H, const int W, const int CIN,
                          __local realv (*partial)[PX][NV])
{
    const int rows = min(RW, H - oy_first);
    const int blocks = min(NB, (W - ox_first + PX - 1) / PX);
    int cov[NV];
    channel_offsets(cov, co0, COUT);
    for (int ci0 = 0; ci0 < CIN; ci0 += TILE) {
        const int ci1 = min(ci0 + TILE, CIN);
        for (int r = 0; r < rows; ++r) {
            const int oy = oy_first + r;
            for (int b = 0; b < blocks; ++b) {
                realv acc[PX][NV];
#if CT > 0
                __local realv (*sums)[NV] = partial[r * NB + b];
                if (ci0 > 0) {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] = sums[p][v];
                } else
#endif
                {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] = (realv)0;
                }
                const int ox0 = ox_first + b * PX;
                if (PXT > 0 && W - ox0 == PXT) {
                    // The row's last PXT pixels, short of a whole block: no
                    // work on pixels past W (as conv2d_tiled.cl).
                    accumulate(PXT, KROWS, KCOLS, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, 1, 1, DH, DW, PT, PL);
                } else {
                    accumulate(PX, KROWS, KCOLS, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, 1, 1, DH, DW, PT, PL);
                }
                if (ci1 < CIN) {
#if CT > 0
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) sums[p][v] = acc[p][v];
#endif
                } else {
                    store_block(HB, acc, y + ((long)n * H + oy) * W * YC, bias, ox0, co0, W, COUT, YC);
                }
            }
        }
    }
}

#if CT > 0
__attribute__((reqd_work_group_size(1, 1, 1)))
#endif
__kernel void aspp(__global const REAL *restrict x,
                   __global const REAL *restrict w0, __global const REAL *restrict w1,
                   __global const REAL *restrict w2, __global const REAL *restrict w3,
                   __global const REAL *restrict w4, __global const REAL *restrict w5,
                   __global const REAL *restrict w6, __global const REAL *restrict w7,
                   __global const REAL *restrict b0, __global const REAL *restrict b1,
                   __global const REAL *restrict b2, __global const REAL *restrict b3,
                   __global const REAL *restrict b4, __global const REAL *restrict b5,
                   __global const REAL *restrict b6, __global const REAL *restrict b7,
                   __global REAL *restrict y,
                   const int H, const int W, const int CIN, const int BSTRIDE,
                   const int XOFF)
{
#if CT > 0
    __local realv partial[RW * NB][PX][NV];
#else
    __local realv (*partial)[PX][NV] = 0;
#endif
    x += XOFF;                                      // where x starts in its buffer
    int cb = (int)get_global_id(0);                 // channel block, over every branch
    const int ox_first = (int)get_global_id(1) * (NB * PX);
    const int chunks = (H + RW - 1) / RW;           // row groups per image
    const int group = (int)get_global_id(2);        // n * chunks + chunk
    if (ox_first >= W) return;
    const int n = group / chunks;
    const int oy_first = (group - n * chunks) * RW;

// The work-item belongs to branch b when cb counts fewer than its blocks;
// otherwise it moves past them.
#define TRY(i)                                                                   \
    if (cb < BLOCKS(CO##i)) {                                                    \
        branch(KH##i, KW##i, DH##i, DW##i, PT##i, PL##i, CO##i, HB##i, x, w##i,  \
               HB##i ? b##i + (long)n * BSTRIDE : b##i, y + OFF##i,              \
               cb * (VW * NV), n, oy_first, ox_first, H, W, CIN, partial);       \
        return;                                                                  \
    }                                                                            \
    cb -= BLOCKS(CO##i);

    TRY(0)
#if NBR > 1
    TRY(1)
#endif
#if NBR > 2
    TRY(2)
#endif
#if NBR > 3
    TRY(3)
#endif
#if NBR > 4
    TRY(4)
#endif
#if NBR > 5
    TRY(5)
#endif
#if NBR > 6
    TRY(6)
#endif
#if NBR > 7
    TRY(7)
#endif
}
