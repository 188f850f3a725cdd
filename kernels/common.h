// common.h: what every clatrous kernel shares.  Included by each .cl file;
// clatrous splices it into the source before building (so it is part of the
// program cache key), and a standalone compile finds it with -I kernels.
//
// Build options read here (each with its default):
//   PRECISION   32: float, 64: double (needs cl_khr_fp64)
//   ACTIVATION  0 linear, 1 relu, 2 sigmoid, 3 tanh
//   HAS_BIAS    1: the kernel adds a bias before the activation
//   BORDER      how an index outside [0, n) reads: 0 zeros (the only mode so far)
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
#else
#error "ACTIVATION must be 0 (linear), 1 (relu), 2 (sigmoid) or 3 (tanh)"
#endif

#if HAS_BIAS != 0 && HAS_BIAS != 1
#error "HAS_BIAS must be 0 or 1"
#endif

// Where input index i of an axis of length n reads from, or -1 where the tap
// falls in the padding and contributes nothing (not a multiply by zero: an
// Inf or NaN weight on a padded tap adds nothing either).  A border mode
// other than zeros will map i back into [0, n) here.
#if BORDER == 0
static inline int border_index(const int i, const int n) { return (i >= 0 && i < n) ? i : -1; }
#else
#error "BORDER must be 0 (zeros)"
#endif

#endif // CLATROUS_COMMON_H
