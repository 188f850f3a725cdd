// starlet_pass.cl: one pass of the starlet's B3-spline filter along one axis,
// its taps D apart, optionally writing the wavelet plane in the same pass.
//
//   y[n, i, j] = sum_t h[t] * x[n, b(i + (t - 2) D), j]    (AXIS 0, along the rows)
//   y[n, i, j] = sum_t h[t] * x[n, i, b(j + (t - 2) D)]    (AXIS 1, along the columns)
//
// with h = [1, 4, 6, 4, 1] / 16 and b the border index of common.h (BORDER:
// what np.pad's mode reads beyond an edge, at any distance; with zeros, a tap
// outside adds nothing).  With DIFF 1 it also writes w[n, i, j] =
// c[n, i, j] - y[n, i, j]: the column pass of a level writes c_{j+1} and
// w_{j+1} while the values are in registers, so a level reads and writes
// the image three times in all.
//
// Each work-item computes VW neighbouring pixels of a row with vector loads
// (vloadn: any element alignment); only a block whose taps cross an edge,
// or the last, partial block of a row, takes the per-pixel path.
//
// Arguments: x, y, c, w (buffers; c and w only used with DIFF), then for each
// of x, y, c, w its element offset and the stride between images (longs),
// then H, W, D (ints).  Images are (H, W), C-contiguous.
// NDRange: dim0 >= ceil(W / VW) (rounded up to the work-group size),
//          dim1 = H, dim2 = N.
// Build options: AXIS, DIFF, VW below, and PRECISION and BORDER of common.h.

#include "common.h"

#ifndef AXIS
#define AXIS 0           // 0: filter along the rows (vertical taps), 1: along the columns
#endif
#ifndef DIFF
#define DIFF 0           // 1: also write w = c - y
#endif
#ifndef VW
#define VW 8             // pixels per work-item: 2, 4, 8 or 16
#endif

#define REALV CAT(REAL, VW)
#define VLOAD CAT(vload, VW)
#define VSTORE CAT(vstore, VW)

#define H0 ((REAL)0.0625)
#define H1 ((REAL)0.25)
#define H2 ((REAL)0.375)

// The B3 weight of tap t (0..4).
static inline REAL b3(const int t) { return t == 2 ? H2 : (t == 1 || t == 3) ? H1 : H0; }

// y at pixel (i, j) of one image, tap by tap through the border index.
static inline REAL edge_pixel(__global const REAL *image, const int i, const int j, const int H,
                              const int W, const int D) {
    REAL acc = (REAL)0;
    for (int t = 0; t < 5; ++t) {
#if AXIS == 0
        const int k = border_index(i + (t - 2) * D, H);
        if (k >= 0) acc += b3(t) * image[(long)k * W + j];
#else
        const int k = border_index(j + (t - 2) * D, W);
        if (k >= 0) acc += b3(t) * image[(long)i * W + k];
#endif
    }
    return acc;
}

__kernel void starlet_pass(__global const REAL *x, __global REAL *y, __global const REAL *c,
                           __global REAL *w, long x_off, long x_stride, long y_off, long y_stride,
                           long c_off, long c_stride, long w_off, long w_stride, int H, int W, int D) {
    const int j0 = get_global_id(0) * VW;
    const int i = get_global_id(1);
    const long n = get_global_id(2);
    if (j0 >= W) {
        return;
    }
    __global const REAL *image = x + x_off + n * x_stride;
    const long row = (long)i * W;
    const bool full = j0 + VW <= W;
#if AXIS == 0
    const bool inside = full;  // a vertical tap reads a whole row: only the row index needs the border
#else
    const bool inside = full && j0 - 2 * D >= 0 && j0 + VW - 1 + 2 * D < W;
#endif
    REALV acc;
    if (inside) {
        acc = (REALV)(0);
#if AXIS == 0
        if (i - 2 * D >= 0 && i + 2 * D < H) {
            __global const REAL *at = image + (long)(i - 2 * D) * W + j0;
            const long step = (long)D * W;
            acc = H0 * VLOAD(0, at) + H1 * VLOAD(0, at + step) + H2 * VLOAD(0, at + 2 * step)
                + H1 * VLOAD(0, at + 3 * step) + H0 * VLOAD(0, at + 4 * step);
        } else {
            for (int t = 0; t < 5; ++t) {
                const int k = border_index(i + (t - 2) * D, H);
                if (k >= 0) acc += b3(t) * VLOAD(0, image + (long)k * W + j0);
            }
        }
#else
        __global const REAL *at = image + row + j0 - 2 * D;
        acc = H0 * VLOAD(0, at) + H1 * VLOAD(0, at + D) + H2 * VLOAD(0, at + 2 * D)
            + H1 * VLOAD(0, at + 3 * D) + H0 * VLOAD(0, at + 4 * D);
#endif
    } else {
        REAL lanes[VW];
        for (int l = 0; l < VW; ++l) {
            lanes[l] = j0 + l < W ? edge_pixel(image, i, j0 + l, H, W, D) : (REAL)0;
        }
        acc = VLOAD(0, lanes);
    }
    __global REAL *out = y + y_off + n * y_stride + row + j0;
#if DIFF
    __global const REAL *minuend = c + c_off + n * c_stride + row + j0;
    __global REAL *plane = w + w_off + n * w_stride + row + j0;
#endif
    if (full) {
        VSTORE(acc, 0, out);
#if DIFF
        VSTORE(VLOAD(0, minuend) - acc, 0, plane);
#endif
    } else {
        REAL lanes[VW];
        VSTORE(acc, 0, lanes);
        for (int l = 0; j0 + l < W; ++l) {
            out[l] = lanes[l];
#if DIFF
            plane[l] = minuend[l] - lanes[l];
#endif
        }
    }
}
