// starlet_combine.cl: out = a + SIGN * b, element by element, image by image.
//
// The starlet's wavelet planes are differences of two smoothings
// (w = c_j - c_{j+1}) and its reconstruction sums (c_j = h * c_{j+1} + w);
// each operand is a batch of N planes of HW elements, plane n starting at
// element off + n * stride of its buffer, so a plane of the coefficient
// array (N, J + 1, H, W) is read or written in place.
//
// Arguments: a, b, out (buffers), then a_off, a_stride, b_off, b_stride,
// out_off, out_stride, hw (longs, in elements).
// NDRange: dim0 >= HW (rounded up to the work-group size), dim1 = N.
// Work-item (i, n) computes element i of plane n.  out may be a or b
// (each element is read, then written, by the same work-item).
// Build options: SIGN below, and PRECISION of common.h.

#include "common.h"

#ifndef SIGN
#define SIGN -1          // -1: a difference (a wavelet plane); 1: a sum (reconstruction)
#endif
#if SIGN != 1 && SIGN != -1
#error "SIGN must be 1 or -1"
#endif

__kernel void starlet_combine(__global const REAL *a, __global const REAL *b, __global REAL *out,
                              long a_off, long a_stride, long b_off, long b_stride,
                              long out_off, long out_stride, long hw) {
    long i = get_global_id(0);
    long n = get_global_id(1);
    if (i >= hw) {
        return;
    }
    REAL left = a[a_off + n * a_stride + i];
    REAL right = b[b_off + n * b_stride + i];
#if SIGN == 1
    out[out_off + n * out_stride + i] = left + right;
#else
    out[out_off + n * out_stride + i] = left - right;
#endif
}
