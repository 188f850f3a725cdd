// starlet_combine.cl: out = a + b, element by element, image by image.
//
// The inverse starlet adds each wavelet plane back: c_j = c_{j+1} + w_{j+1}
// (generation 1), or c_j = h_j * c_{j+1} + w_{j+1} (generation 2, the
// smoothing done by starlet_pass.cl first).  Each operand is a batch of N
// planes of HW elements, plane n starting at element off + n * stride of its
// buffer, so a plane of the coefficient array (N, J + 1, H, W) is read in place.
//
// Arguments: a, b, out (buffers), then a_off, a_stride, b_off, b_stride,
// out_off, out_stride, hw (longs, in elements).
// NDRange: dim0 >= HW (rounded up to the work-group size), dim1 = N.
// Work-item (i, n) computes element i of plane n.  out may be a or b
// (each element is read, then written, by the same work-item).
// Build options: PRECISION of common.h.

#include "common.h"

__kernel void starlet_combine(__global const REAL *a, __global const REAL *b, __global REAL *out,
                              long a_off, long a_stride, long b_off, long b_stride,
                              long out_off, long out_stride, long hw) {
    long i = get_global_id(0);
    long n = get_global_id(1);
    if (i >= hw) {
        return;
    }
    out[out_off + n * out_stride + i] = a[a_off + n * a_stride + i] + b[b_off + n * b_stride + i];
}
