// spatial_mean.cl: the mean of each image's channels over its pixels,
// (N, H, W, C) -> (N, C): the global average pooling of ASPP's image branch.
//
// Work-item (c, n) sums channel c of image n row by row: each row's W
// pixels into a row sum, then the rows into the total, so the rounding
// error grows with H + W rather than H * W.  Neighbouring work-items read
// neighbouring channels of the same pixel (coalesced on a GPU).  The order
// of the additions is fixed: the result is the same bits on every run.
//
// Layout (channels last, C-contiguous, element offsets):
//   x  (N, H, W, C)  input, from element XOFF of its buffer (the last argument)
//   y  (N, C)        output
// Arguments: x, y (buffers), then H, W, C (ints), then XOFF.
// NDRange: dim0 >= C (rounded up to the work-group size), dim1 = N.
// Build options: PRECISION of common.h.

#include "common.h"

__kernel void spatial_mean(__global const REAL *restrict x, __global REAL *restrict y,
                           const int H, const int W, const int C, const int XOFF)
{
    const int c = (int)get_global_id(0);
    const int n = (int)get_global_id(1);
    if (c >= C) return;
    const __global REAL *p = x + XOFF + (long)n * H * W * C + c;
    REAL total = (REAL)0;
    for (int row = 0; row < H; ++row) {
        REAL sum = (REAL)0;
        for (int col = 0; col < W; ++col) sum += p[((long)row * W + col) * C];
        total += sum;
    }
    y[(long)n * C + c] = total / (REAL)((long)H * W);
}
