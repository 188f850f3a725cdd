// transpose.cl: B matrices (R, C) -> (C, R), moving the channels between the
// second and the last axis: (N, C, H, W) -> (N, H, W, C) is B = N, R = C,
// C = H * W; (N, H, W, C) -> (N, C, H, W) is B = N, R = H * W, C = C.
//
// A work-group moves a TILE x TILE tile through local memory: its work-items
// read along the source's rows and write along the destination's rows, so
// both sides are contiguous runs (coalesced on a GPU, whole cache lines on
// a CPU).  Each work-item moves TILE / (TILE / ROWS) = ROWS elements each way.
// The tile's rows are padded by one element, so the column reads of the
// second half do not all fall in one bank of local memory.
//
// Layout (C-contiguous, element offsets):
//   x  (B, R, C)   input, from element XOFF of its buffer (the last argument)
//   y  (B, C, R)   output
// NDRange: dim0 = ceil(C / TILE) * TILE, dim1 = ceil(R / TILE) * (TILE / ROWS),
//          dim2 = B; work-group (TILE, TILE / ROWS, 1), as required below.
// Build options: TILE, ROWS below, and PRECISION of common.h.

#ifndef TILE
#define TILE 32          // the tile's side
#endif
#ifndef ROWS
#define ROWS 8           // rows of the tile each work-item moves (TILE / ROWS work-items down)
#endif
#include "common.h"

#if TILE < 1 || ROWS < 1 || TILE % ROWS != 0
#error "TILE and ROWS must be positive, ROWS dividing TILE"
#endif

__kernel __attribute__((reqd_work_group_size(TILE, TILE / ROWS, 1)))
void transpose(__global const REAL *restrict x, __global REAL *restrict y,
               const int R, const int C, const int XOFF)
{
    __local REAL tile[TILE][TILE + 1];
    const int tx = (int)get_local_id(0);
    const int ty = (int)get_local_id(1);
    const int c0 = (int)get_group_id(0) * TILE;
    const int r0 = (int)get_group_id(1) * TILE;
    const long b = (long)get_global_id(2);
    const __global REAL *src = x + XOFF + b * R * C;
    __global REAL *dst = y + b * R * C;
    // tile[i][j] holds src[r0 + i][c0 + j].
    for (int i = ty; i < TILE; i += TILE / ROWS) {
        if (r0 + i < R && c0 + tx < C) tile[i][tx] = src[(long)(r0 + i) * C + c0 + tx];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    // dst[c0 + i][r0 + j] = src[r0 + j][c0 + i] = tile[j][i]: only the
    // entries written above are read (the same two bounds).
    for (int i = ty; i < TILE; i += TILE / ROWS) {
        if (c0 + i < C && r0 + tx < R) dst[(long)(c0 + i) * R + r0 + tx] = tile[tx][i];
    }
}
