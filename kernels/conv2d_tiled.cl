// conv2d_tiled.cl: dilated 2-D cross-correlation, channel-tiled, for many input channels.
//
// A work-item covers one channel block on RW output rows of one image, NB
// blocks of PX pixels on each (the block of blocked.h), and walks the input
// channels CT at a time, each tile through every block, so that a CT-channel
// slice of the weights is read from memory once per RW rows and then served
// from the cache to all RW*NB blocks.  A block's sums stay in registers while
// a tile runs and wait in local memory between tiles (RW*NB*PX*NV*VW
// elements: the launch checks the device has that much).  A row's last
// block, when WO is not a multiple of PX, computes only its PXT pixels (a
// build option, so that both block widths unroll).
//
// Layout and arguments as conv2d_blocked.cl.
// NDRange: dim0 = ceil(COUT / (VW*NV)), dim1 = ceil(WO / (NB*PX)) (both may
// be rounded up further), dim2 = N * ceil(HO / RW) exactly; the work-group is
// one work-item, which owns the local memory.

#ifndef CT
#define CT 64            // input channels per tile
#endif
#ifndef NB
#define NB 4             // pixel blocks of PX per row
#endif
#ifndef RW
#define RW 4             // output rows per work-item
#endif
#ifndef PXT
#define PXT 0            // WO % PX: the pixels of a row's short last block, computed alone
#endif

#include "blocked.h"

#if CT < 1 || NB < 1 || RW < 1
#error "CT, NB and RW must be positive"
#endif
#if PXT < 0 || PXT >= PX
#error "PXT must be WO % PX, in [0, PX)"
#endif

__attribute__((reqd_work_group_size(1, 1, 1)))
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
                    accumulate(PXT, KH, KW, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);
                } else {
                    accumulate(PX, KH, KW, acc, x, w, cov, n, oy, ox0, ci0, ci1,
                               H, W, CIN, COUT, SH, SW, DH, DW, PT, PL);
                }
                if (ci1 < CIN) {
#pragma unroll
                    for (int p = 0; p < PX; ++p)
#pragma unroll
                        for (int v = 0; v < NV; ++v) sums[p][v] = acc[p][v];
                } else {
                    store_block(HAS_BIAS, acc, y + ((long)n * HO + oy) * WO * COUT, bias,
                                ox0, co0, WO, COUT, COUT);
                }
            }
        }
    }
}
