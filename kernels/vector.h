// vector.h: VW elements of REAL as one vector (VW, a build option of the
// kernel that includes this, defaults to 4): the type realv, unaligned loads
// and stores of it (vloadn/vstoren, defined for any element-aligned address,
// so a buffer may start at any element), and a union to reach its lanes.
#ifndef CLATROUS_VECTOR_H
#define CLATROUS_VECTOR_H
#include "common.h"

#ifndef VW
#define VW 4
#endif
#if VW != 1 && VW != 2 && VW != 4 && VW != 8 && VW != 16
#error "VW must be 1, 2, 4, 8 or 16"
#endif

#if VW == 1
typedef REAL realv;
#define LOADV(p) (*(p))
#define STOREV(p, v) (*(p) = (v))
#else
typedef CAT(REAL, VW) realv;
#define LOADV(p) CAT(vload, VW)(0, (p))
#define STOREV(p, v) CAT(vstore, VW)((v), 0, (p))
#endif
typedef union { realv v; REAL s[VW]; } lanes;

#endif // CLATROUS_VECTOR_H
