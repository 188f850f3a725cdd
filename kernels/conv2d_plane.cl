// conv2d_plane.cl: dilated 2-D cross-correlation of one-channel images (CIN = COUT = 1).
//
// With a single channel there is nothing to vectorise along channels, so each
// work-item holds VW neighbouring output pixels of a row in one vector.  At
// stride 1 every tap is one unaligned vector load of the input row times a
// scalar weight; at other strides, and where the block meets the padding, the
// input is gathered element by element.  The KH*KW weights live in registers.
//
// Row blocking along the dilation lattice: output rows oy and oy + STEP, with
// STEP = DH / SH, read the same input rows shifted by one kernel row.  A
// work-item computes RB such rows, so it walks RB + KH - 1 input rows and
// uses each loaded input vector for up to KH output rows.  (The launch code
// passes STEP = 1 and RB = 1 when SH does not divide DH.)
//
// Layout (C-contiguous, element offsets):
//   x    (N, H, W)       input (the channel axis of length 1 dropped), from
//                        element XOFF of its buffer (the last argument)
//   w    (KH, KW)        weights
//   bias (1) or NULL     only read when HAS_BIAS
//   y    (N, HO, WO)     output
// NDRange: dim0 = ceil(WO / VW) (may be rounded up further),
//          dim1 = N * STEP * ceil(ceil(HO / STEP) / RB) exactly.
// Work-item (bx, g) computes y[n, oy0 + j*STEP, bx*VW : bx*VW + VW] for j < RB,
// where n = g / (STEP * chunks), the residue r = g % STEP and the chunk
// c = (g / STEP) % chunks give oy0 = r + c * RB * STEP.

#ifndef REAL
#define REAL float       // element type: float or double
#endif
#ifndef VW
#define VW 8             // output pixels per work-item: 2, 4, 8 or 16
#endif
#ifndef RB
#define RB 1             // output rows per work-item, STEP apart
#endif
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
#define HAS_BIAS 0       // 1: add bias[0] before the activation
#endif

#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
typedef CAT(REAL, VW) realv;
// A vector and its elements: element-wise loads that the compiler merges into
// one unaligned vector load (vloadn() is an out-of-line call on some drivers).
typedef union { realv v; REAL s[VW]; } lanes;

#if ACTIVATION == 1
// relu keeps NaN (fmax would drop it), as NumPy, PyTorch and TensorFlow do.
#define ACTIVATE(v) select((v), (realv)0, (v) < (realv)0)
#elif ACTIVATION == 2
#define ACTIVATE(v) ((realv)1 / ((realv)1 + exp(-(v))))
#elif ACTIVATION == 3
#define ACTIVATE(v) tanh(v)
#else
#define ACTIVATE(v) (v)
#endif

__kernel void conv2d_plane(__global const REAL *restrict x,
                           __global const REAL *restrict w,
                           __global const REAL *restrict bias,
                           __global REAL *restrict y,
                           const int H, const int W, const int HO, const int WO,
                           const int SH, const int SW, const int DH, const int DW,
                           const int PT, const int PL, const int STEP, const int CHUNKS,
                           const int XOFF)
{
    x += XOFF;                                      // where x starts in its buffer
    const int ox0 = (int)get_global_id(0) * VW;
    const int g = (int)get_global_id(1);
    if (ox0 >= WO) return;
    const int n = g / (STEP * CHUNKS);
    const int within = g - n * (STEP * CHUNKS);
    const int chunk = within / STEP;                // quotient and remainder spelled out
    const int oy0 = (within - chunk * STEP) + chunk * RB * STEP;
    if (oy0 >= HO) return;

    REAL wk[KH * KW];
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) wk[t] = w[t];

    realv acc[RB];
#pragma unroll
    for (int j = 0; j < RB; ++j) acc[j] = (realv)0;

    const __global REAL *ximg = x + (long)n * H * W;
    const int ix_base = ox0 * SW - PL;
    // Input row t serves output row j through kernel row ky = t - j.
#pragma unroll
    for (int t = 0; t < RB + KH - 1; ++t) {
        const int iy = oy0 * SH - PT + t * DH;
        if (iy < 0 || iy >= H) continue;            // a whole row of taps in the padding
        const __global REAL *xrow = ximg + (long)iy * W;
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
            const int ix0 = ix_base + kx * DW;
            lanes in;
            if (SW == 1 && ix0 >= 0 && ix0 + VW <= W) {
#pragma unroll
                for (int i = 0; i < VW; ++i) in.s[i] = xrow[ix0 + i];
            } else {
#pragma unroll
                for (int i = 0; i < VW; ++i) {
                    const int ix = ix0 + i * SW;
                    in.s[i] = (ix >= 0 && ix < W) ? xrow[ix] : (REAL)0;
                }
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int ky = t - j;
                if (ky >= 0 && ky < KH) acc[j] += wk[ky * KW + kx] * in.v;
            }
        }
    }

#pragma unroll
    for (int j = 0; j < RB; ++j) {
        const int oy = oy0 + j * STEP;
        if (oy >= HO) break;
        realv value = acc[j];
#if HAS_BIAS
        value += bias[0];
#endif
        lanes out;
        out.v = ACTIVATE(value);
        __global REAL *yrow = y + ((long)n * HO + oy) * WO;
        if (ox0 + VW <= WO) {
#pragma unroll
            for (int i = 0; i < VW; ++i) yrow[ox0 + i] = out.s[i];
        } else {
            for (int i = 0; i < WO - ox0; ++i) yrow[ox0 + i] = out.s[i];
        }
    }
}
