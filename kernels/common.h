// common.h: what every clatrous kernel shares.  Included by each .cl file;
// clatrous splices it into the source before building (so it is part of the
// program cache key), and a standalone compile finds it with -I kernels.
//
// Build options read here (each with its default):
//   PRECISION   32: float, 64: double (needs cl_khr_fp64)
//   ACTIVATION  0 linear, 1 relu, 2 sigmoid, 3 tanh, 4 gelu (erf form),
//               5 silu (swish), 6 elu, 7 softplus, 8 leaky_relu (slope 0.2)
//   HAS_BIAS    1: the kernel adds a bias before the activation
//   BORDER      what an index outside [0, n) reads: 0 zeros, 1 reflect,
//               2 replicate, 3 circular, 4 symmetric (np.pad's constant,
//               reflect, edge, wrap and symmetric, at any pad width)
//   BORDER_FAR  1: a pad may be as wide as its axis or wider (border_index
//               then reflects or wraps again and again); 0: every pad is
//               narrower, one reflection or wrap reaches every tap, and
//               border_index is straight-line code
#ifndef CLATROUS_COMMON_H
#define CLATROUS_COMMON_H

#ifndef PRECISION
#define PRECISION 32
#endif
#ifndef ACTIVATION
#define ACTIVATION 0
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef BORDER
#define BORDER 0
#endif
#ifndef BORDER_FAR
#define BORDER_FAR 1
#endif
#if BORDER < 0 || BORDER > 4
#error "BORDER must be 0 (zeros), 1 (reflect), 2 (replicate), 3 (circular) or 4 (symmetric)"
#endif
#if BORDER_FAR != 0 && BORDER_FAR != 1
#error "BORDER_FAR must be 0 or 1"
#endif

#if PRECISION == 64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define REAL double
#define REAL_MASK long          // the integer type select() pairs with REAL
#elif PRECISION == 32
#define REAL float
#define REAL_MASK int
#else
#error "PRECISION must be 32 or 64"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

// The activation, for a scalar or any vector of REAL (the vector form of the
// conditional selects lane by lane).  relu keeps NaN, as NumPy, PyTorch and
// TensorFlow do: NaN < 0 is false.
#if ACTIVATION == 0
#define ACTIVATE(v) (v)
#elif ACTIVATION == 1
#define ACTIVATE(v) (((v) < (REAL)0) ? (REAL)0 : (v))
#elif ACTIVATION == 2
#define ACTIVATE(v) ((REAL)1 / ((REAL)1 + exp(-(v))))
#elif ACTIVATION == 3
#define ACTIVATE(v) tanh(v)
#elif ACTIVATION == 4
// Keras' gelu (approximate=False) and PyTorch's default: x * Phi(x).
#define ACTIVATE(v) ((REAL)0.5 * (v) * ((REAL)1 + erf((v) * (REAL)0.70710678118654752440)))
#elif ACTIVATION == 5
#define ACTIVATE(v) ((v) / ((REAL)1 + exp(-(v))))
#elif ACTIVATION == 6
// alpha = 1, as Keras' "elu"; expm1 keeps small negative values exact.
#define ACTIVATE(v) (((v) > (REAL)0) ? (v) : expm1(v))
#elif ACTIVATION == 7
// log(1 + exp(v)) without overflow: max(v, 0) + log1p(exp(-|v|)) (NaN stays NaN).
#define ACTIVATE(v) (fmax((v), (REAL)0) + log1p(exp(-fabs(v))))
#elif ACTIVATION == 8
// Keras' leaky_relu: negative_slope 0.2 (PyTorch's default is 0.01).
#define ACTIVATE(v) (((v) < (REAL)0) ? (REAL)0.2 * (v) : (v))
#else
#error "ACTIVATION must be 0 (linear), 1 (relu), 2 (sigmoid), 3 (tanh), 4 (gelu), 5 (silu), 6 (elu), 7 (softplus) or 8 (leaky_relu)"
#endif

#if HAS_BIAS != 0 && HAS_BIAS != 1
#error "HAS_BIAS must be 0 or 1"
#endif

// Where input index i of an axis of length n reads from: an index in [0, n),
// or -1 where the tap falls in the zero padding and contributes nothing (not
// a multiply by zero: an Inf or NaN weight on a padded tap adds nothing
// either).  The other borders read real input: reflect and symmetric are
// periodic (periods 2n - 2 and 2n), which is what np.pad gives for a pad of
// any width, reflecting again and again; circular wraps, replicate clamps.
static inline int border_index(const int i, const int n)
{
#if BORDER == 0
    return (i >= 0 && i < n) ? i : -1;
#elif BORDER == 1
    // One reflection (i in [1 - n, 2n - 2]) without a branch (and without
    // -i, which becomes an llvm.abs that Oclgrind cannot run).
    int j = 2 * clamp(i, 0, n - 1) - i;
#elif BORDER == 2
    return clamp(i, 0, n - 1);
#elif BORDER == 3
    int j = i < 0 ? i + n : (i >= n ? i - n : i);  // one wrap: i in [-n, 2n - 1]
#elif BORDER == 4
    int j = i < 0 ? -1 - i : (i >= n ? 2 * n - 1 - i : i);  // one reflection: i in [-n, 2n - 1]
#endif
#if BORDER == 1 || BORDER == 3 || BORDER == 4
#if BORDER_FAR
    if (j < 0 || j >= n) {                          // more than one axis length away
        if (n == 1) return 0;
#if BORDER == 1
        const int period = 2 * n - 2;
#elif BORDER == 3
        const int period = n;
#else
        const int period = 2 * n;
#endif
        j = i % period;
        if (j < 0) j += period;
#if BORDER != 3
        j = min(j, period - (BORDER == 4) - j);     // the way back: reflect and symmetric
#endif
    }
    return j;
#else
    // Without pads as wide as the axis, only taps a kernel computes past
    // its output (and never stores) reach further: clamped, they stay in
    // the buffer.  A remainder here, even on a path never taken, made
    // Intel's compiler 4-6x slower with reflect than with zeros on W5.
    return clamp(j, 0, n - 1);
#endif
#endif
}

#endif // CLATROUS_COMMON_H
