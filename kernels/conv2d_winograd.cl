// conv2d_winograd.cl: dilated 3x3 cross-correlation, stride 1, by Winograd's
// minimal filtering F(M x M, 3 x 3) on the dilation's phases.
//
// At rate D, outputs D apart read inputs D apart: output rows oy and oy + D
// share two of their three input rows.  So M outputs D apart along each axis
// (a tile) are computed as Winograd computes M neighbouring outputs of an
// undilated 3x3 kernel, from the ALPHA x ALPHA inputs D apart (ALPHA = M + 2)
// around them: with ALPHA*ALPHA multiplications for M*M outputs of every
// (input channel, output channel) pair, where the direct kernels make 9*M*M.
// The transforms are the Toom-Cook ones on the points 0, 1, -1 (M = 2),
// then 2 (M = 3), then -2 (M = 4):
//   y = AT [(G g GT) * (BT d B)] A        (the tables below)
// Tiles are numbered along each axis in runs of D: run b, phase p starts at
// output b*M*D + p and covers outputs D apart; a tile row or column that
// starts past the output is not numbered, so only the last run of each axis
// may compute (and not store) outputs past it.
//
// A job is VW*NV*NS output channels of NT consecutive tiles (in (n, tile row,
// tile column) order); each work-item runs jobs get_global_size(0) apart.
// A job walks the input channels CT at a time.  For each slice it transforms
// its channels' weights (into ut) and its tiles' inputs (into vt, vectors
// along the channels), then multiplies them: ALPHA*ALPHA small matrix
// products, TB tiles by VW*NV channels held in registers (NS such blocks of
// channels one after the other), each product's partial sums waiting in
// memory (part) between slices.  After the last slice it transforms the sums
// back to outputs, adds the bias and applies the activation.  part, vt and ut are the work-item's own region of
// `scratch` (a global buffer: a CPU driver offers less local memory than
// they need, and on a CPU both are the same caches).
//
// Non-finite values: a transform mixes the inputs of a tile, so an Inf or
// NaN in x or w could reach outputs the direct sum keeps finite (and an Inf
// meets an Inf of the other sign as NaN).  Every output whose transformed sum
// is not finite is therefore summed again directly, skipping taps in the zero
// padding as every other kernel does: which outputs are finite, and their
// values, are those of the direct kernels.  (An input that is not finite
// reaches, through the transforms, every output whose receptive field holds
// it, so no output that should be non-finite comes out finite.)
//
// Layout (channels last, C-contiguous, element offsets):
//   x    (N, H, W, CIN)          input, from element XOFF of its buffer (any alignment)
//   w    (3, 3, CIN, COUT)       weights (aligned to VW elements: OpenCL buffers are)
//   bias (COUT) or NULL          only read when HAS_BIAS
//   y    (N, HO, WO, COUT)       output, HO = H + PT + PB - 2*DH (stride 1)
//   scratch                      SCRATCH elements a work-item (below), for each work-item
// Requires COUT % VW == 0, CT % VW == 0 and NT % TB == 0.
// NDRange: dim0 = any number of work-items up to the jobs,
// ceil(COUT / (VW*NV*NS)) * ceil(N*TY*TX / NT); the work-group is one work-item.
//
// Build options (besides those of common.h), with their defaults:
#ifndef M
#define M 2              // outputs per tile along each axis: 2, 3 or 4
#endif
#ifndef VW
#define VW 16            // vector width along COUT (and along CIN in the input transform)
#endif
#ifndef NV
#define NV 4             // vectors of a register block: VW*NV output channels
#endif
#ifndef NS
#define NS 1             // register blocks of VW*NV channels a job covers, one after the other
#endif
#ifndef NT
#define NT 24            // tiles per job
#endif
#ifndef TB
#define TB 6             // tiles per register block of the products
#endif
#ifndef CT
#define CT 32            // input channels per slice
#endif

#include "vector.h"

#if M < 2 || M > 4
#error "M must be 2, 3 or 4"
#endif
#if NV < 1 || NS < 1 || NT < 1 || TB < 1 || CT < VW
#error "NV, NS, NT and TB must be positive, CT at least VW"
#endif
#if NT % TB != 0 || CT % VW != 0
#error "NT must be a multiple of TB, CT of VW"
#endif

#define ALPHA (M + 2)
#define A2 (ALPHA * ALPHA)
#define NVS (NV * NS)     // vectors of channels a job covers
#define SCRATCH (A2 * (NT * VW * NVS + NT * CT + CT * VW * NVS))

// The transforms, one axis at a time: o = T v for the tables (rows of T)
//   M = 2: BT {1,0,-1,0} {0,1,1,0} {0,-1,1,0} {0,1,0,-1}
//          G  {1,0,0} {1/2,1/2,1/2} {1/2,-1/2,1/2} {0,0,1}
//          AT {1,1,1,0} {0,1,-1,-1}
//   M = 3: BT {2,-1,-2,1,0} {0,-2,-1,1,0} {0,2,-3,1,0} {0,-1,0,1,0} {0,2,-1,-2,1}
//          G  {1/2,0,0} {-1/2,-1/2,-1/2} {-1/6,1/6,-1/6} {1/6,1/3,2/3} {0,0,1}
//          AT {1,1,1,1,0} {0,1,-1,2,0} {0,1,1,4,1}
//   M = 4: BT {4,0,-5,0,1,0} {0,-4,-4,1,1,0} {0,4,-4,-1,1,0} {0,-2,-1,2,1,0}
//             {0,2,-1,-2,1,0} {0,4,0,-5,0,1}
//          G  {1/4,0,0} {-1/6,-1/6,-1/6} {-1/6,1/6,-1/6} {1/24,1/12,1/6}
//             {1/24,-1/12,1/6} {0,0,1}
//          AT {1,1,1,1,1,0} {0,1,-1,2,-2,0} {0,1,1,4,4,0} {0,1,-1,8,-8,1}
// written out term by term, zeros left out.
#if M == 2
#define APPLY_BT(v, o)                                                 \
    do {                                                               \
        o[0] = v[0] - v[2];                                            \
        o[1] = v[1] + v[2];                                            \
        o[2] = -v[1] + v[2];                                           \
        o[3] = v[1] - v[3];                                            \
    } while (0)
#define APPLY_G(v, o)                                                  \
    do {                                                               \
        o[0] = v[0];                                                   \
        o[1] = ((REAL)1 / 2) * v[0] + ((REAL)1 / 2) * v[1] + ((REAL)1 / 2) * v[2]; \
        o[2] = ((REAL)1 / 2) * v[0] - ((REAL)1 / 2) * v[1] + ((REAL)1 / 2) * v[2]; \
        o[3] = v[2];                                                   \
    } while (0)
#define APPLY_AT(v, o)                                                 \
    do {                                                               \
        o[0] = v[0] + v[1] + v[2];                                     \
        o[1] = v[1] - v[2] - v[3];                                     \
    } while (0)
#elif M == 3
#define APPLY_BT(v, o)                                                 \
    do {                                                               \
        o[0] = (REAL)2 * v[0] - v[1] - (REAL)2 * v[2] + v[3];          \
        o[1] = -(REAL)2 * v[1] - v[2] + v[3];                          \
        o[2] = (REAL)2 * v[1] - (REAL)3 * v[2] + v[3];                 \
        o[3] = -v[1] + v[3];                                           \
        o[4] = (REAL)2 * v[1] - v[2] - (REAL)2 * v[3] + v[4];          \
    } while (0)
#define APPLY_G(v, o)                                                  \
    do {                                                               \
        o[0] = ((REAL)1 / 2) * v[0];                                   \
        o[1] = -((REAL)1 / 2) * v[0] - ((REAL)1 / 2) * v[1] - ((REAL)1 / 2) * v[2]; \
        o[2] = -((REAL)1 / 6) * v[0] + ((REAL)1 / 6) * v[1] - ((REAL)1 / 6) * v[2]; \
        o[3] = ((REAL)1 / 6) * v[0] + ((REAL)1 / 3) * v[1] + ((REAL)2 / 3) * v[2]; \
        o[4] = v[2];                                                   \
    } while (0)
#define APPLY_AT(v, o)                                                 \
    do {                                                               \
        o[0] = v[0] + v[1] + v[2] + v[3];                              \
        o[1] = v[1] - v[2] + (REAL)2 * v[3];                           \
        o[2] = v[1] + v[2] + (REAL)4 * v[3] + v[4];                    \
    } while (0)
#elif M == 4
#define APPLY_BT(v, o)                                                 \
    do {                                                               \
        o[0] = (REAL)4 * v[0] - (REAL)5 * v[2] + v[4];                 \
        o[1] = -(REAL)4 * v[1] - (REAL)4 * v[2] + v[3] + v[4];         \
        o[2] = (REAL)4 * v[1] - (REAL)4 * v[2] - v[3] + v[4];          \
        o[3] = -(REAL)2 * v[1] - v[2] + (REAL)2 * v[3] + v[4];         \
        o[4] = (REAL)2 * v[1] - v[2] - (REAL)2 * v[3] + v[4];          \
        o[5] = (REAL)4 * v[1] - (REAL)5 * v[3] + v[5];                 \
    } while (0)
#define APPLY_G(v, o)                                                  \
    do {                                                               \
        o[0] = ((REAL)1 / 4) * v[0];                                   \
        o[1] = -((REAL)1 / 6) * v[0] - ((REAL)1 / 6) * v[1] - ((REAL)1 / 6) * v[2]; \
        o[2] = -((REAL)1 / 6) * v[0] + ((REAL)1 / 6) * v[1] - ((REAL)1 / 6) * v[2]; \
        o[3] = ((REAL)1 / 24) * v[0] + ((REAL)1 / 12) * v[1] + ((REAL)1 / 6) * v[2]; \
        o[4] = ((REAL)1 / 24) * v[0] - ((REAL)1 / 12) * v[1] + ((REAL)1 / 6) * v[2]; \
        o[5] = v[2];                                                   \
    } while (0)
#define APPLY_AT(v, o)                                                 \
    do {                                                               \
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4];                       \
        o[1] = v[1] - v[2] + (REAL)2 * v[3] - (REAL)2 * v[4];          \
        o[2] = v[1] + v[2] + (REAL)4 * v[3] + (REAL)4 * v[4];          \
        o[3] = v[1] - v[2] + (REAL)8 * v[3] - (REAL)8 * v[4] + v[5];   \
    } while (0)
#endif

#define VLOAD(p) (*(__global const realv *)(p))
#if VW == 1
#define NONFINITE(v) (isinf(v) || isnan(v))
#else
#define NONFINITE(v) any(isinf(v) || isnan(v))
#endif

// Where a tile's first output lies along an axis: run b = t / D, phase t % D.
static inline int tile_start(const int t, const int D)
{
    const int b = t / D;
    return b * M * D + (t - b * D);
}

// One output's VW channels from co, summed directly (the non-finite case):
// taps in the zero padding are skipped, others read where border_index says.
static realv direct_sum(const __global REAL *x, const __global REAL *w, const int n, const int oy,
                        const int ox, const int co, const int H, const int W, const int CIN,
                        const int COUT, const int DH, const int DW, const int PT, const int PL)
{
    realv acc = (realv)0;
    for (int ky = 0; ky < 3; ++ky) {
        const int iy = border_index(oy - PT + ky * DH, H);
        if (iy < 0) continue;
        for (int kx = 0; kx < 3; ++kx) {
            const int ix = border_index(ox - PL + kx * DW, W);
            if (ix < 0) continue;
            const __global REAL *xp = x + (((long)n * H + iy) * W + ix) * CIN;
            const __global REAL *wp = w + (long)(ky * 3 + kx) * CIN * COUT + co;
            for (int ci = 0; ci < CIN; ++ci) acc += xp[ci] * VLOAD(wp + (long)ci * COUT);
        }
    }
    return acc;
}

// The transformed inputs of one tile, VW channels: vt[xi] = (BT d B)[xi],
// the products' operand `stride` vectors apart.
__attribute__((always_inline))
static inline void input_transform(realv d[ALPHA][ALPHA], __global realv *vt, const int stride)
{
    realv dd[ALPHA][ALPHA];
#pragma unroll
    for (int j = 0; j < ALPHA; ++j) {
        realv col[ALPHA], out[ALPHA];
#pragma unroll
        for (int i = 0; i < ALPHA; ++i) col[i] = d[i][j];
        APPLY_BT(col, out);
#pragma unroll
        for (int i = 0; i < ALPHA; ++i) dd[i][j] = out[i];
    }
#pragma unroll
    for (int i = 0; i < ALPHA; ++i) {
        realv out[ALPHA];
        APPLY_BT(dd[i], out);
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) vt[(i * ALPHA + j) * stride] = out[j];
    }
}

__attribute__((reqd_work_group_size(1, 1, 1)))
__kernel void conv2d_winograd(__global const REAL *restrict x,
                              __global const REAL *restrict w,
                              __global const REAL *restrict bias,
                              __global REAL *restrict y,
                              __global REAL *restrict scratch,
                              const int H, const int W, const int CIN, const int COUT,
                              const int HO, const int WO,
                              const int DH, const int DW, const int PT, const int PL,
                              const int TY, const int TX, const int TILES,
                              const int XOFF)
{
    __global REAL *mine = scratch + (long)get_global_id(0) * SCRATCH;
    __global realv (*part)[NT][NVS] = (__global realv (*)[NT][NVS])mine;  // the products' partial sums
    __global realv (*vt)[NT][CT / VW] = (__global realv (*)[NT][CT / VW])(mine + A2 * NT * VW * NVS);
    __global realv (*ut)[CT][NVS] = (__global realv (*)[CT][NVS])(mine + A2 * NT * (VW * NVS + CT));
    x += XOFF;
    const int blocks_of_channels = (COUT + VW * NVS - 1) / (VW * NVS);
    const int jobs = blocks_of_channels * ((TILES + NT - 1) / NT);

    for (int job = (int)get_global_id(0); job < jobs; job += (int)get_global_size(0)) {
    const int run = job / blocks_of_channels;       // (a remainder here becomes an LLVM freeze,
    const int co0 = (job - run * blocks_of_channels) * (VW * NVS);  // which Oclgrind cannot run)
    const int t0 = run * NT;
    const int tiles = min(NT, TILES - t0);
    const int blocks = (tiles + TB - 1) / TB;        // register blocks; the last may run past `tiles`
    int cov[NVS];
#pragma unroll
    for (int v = 0; v < NVS; ++v) cov[v] = min(co0 + v * VW, COUT - VW);  // a last, partial block: clamped

    for (int ci0 = 0; ci0 < CIN; ci0 += CT) {
        const int cn = min(CT, CIN - ci0);

        // Weights: ut[xi][c] = (G g G^T)[xi] for input channel ci0 + c.
        for (int c = 0; c < cn; ++c) {
#pragma unroll
            for (int v = 0; v < NVS; ++v) {
                const __global REAL *wp = w + (long)(ci0 + c) * COUT + cov[v];
                realv g[3][3], gg[ALPHA][3];
#pragma unroll
                for (int k = 0; k < 9; ++k) g[k / 3][k % 3] = VLOAD(wp + (long)k * CIN * COUT);
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    realv col[3] = {g[0][kx], g[1][kx], g[2][kx]}, out[ALPHA];
                    APPLY_G(col, out);
#pragma unroll
                    for (int i = 0; i < ALPHA; ++i) gg[i][kx] = out[i];
                }
#pragma unroll
                for (int i = 0; i < ALPHA; ++i) {
                    realv out[ALPHA];
                    APPLY_G(gg[i], out);
#pragma unroll
                    for (int j = 0; j < ALPHA; ++j) ut[i * ALPHA + j][c][v] = out[j];
                }
            }
        }

        // Inputs: vt[xi][t][c] = (BT d B)[xi], VW channels at a time.  A tap
        // in the zero padding reads a clamped address and takes zero; tiles
        // past `tiles` up to the last register block are all zeros.
        for (int t = 0; t < blocks * TB; ++t) {
            const int tt = min(t0 + t, TILES - 1);
            const int n = tt / (TY * TX);
            const int rest = tt - n * (TY * TX);
            const int ty = rest / TX;
            const int iy0 = tile_start(ty, DH) - PT;
            const int ix0 = tile_start(rest - ty * TX, DW) - PL;
            int rows[ALPHA], cols[ALPHA];
#pragma unroll
            for (int i = 0; i < ALPHA; ++i) {
                rows[i] = t < tiles ? border_index(iy0 + i * DH, H) : -1;
                cols[i] = border_index(ix0 + i * DW, W);
            }
            const __global REAL *xt = x + (long)n * H * W * CIN + ci0;
            int c = 0;
            for (; c + VW <= cn; c += VW) {
                realv d[ALPHA][ALPHA];
#pragma unroll
                for (int i = 0; i < ALPHA; ++i)
#pragma unroll
                    for (int j = 0; j < ALPHA; ++j) {
                        const realv loaded = LOADV(xt + ((long)max(rows[i], 0) * W + max(cols[j], 0)) * CIN + c);
                        d[i][j] = rows[i] >= 0 && cols[j] >= 0 ? loaded : (realv)0;
                    }
                input_transform(d, &vt[0][t][c / VW], NT * (CT / VW));
            }
            if (c < cn) {                            // the slice's last, partial vector
                realv d[ALPHA][ALPHA];
#pragma unroll
                for (int i = 0; i < ALPHA; ++i)
#pragma unroll
                    for (int j = 0; j < ALPHA; ++j) {
                        lanes l;
                        const __global REAL *xp = xt + ((long)max(rows[i], 0) * W + max(cols[j], 0)) * CIN;
#pragma unroll
                        for (int k = 0; k < VW; ++k)
                            l.s[k] = rows[i] >= 0 && cols[j] >= 0 && c + k < cn ? xp[c + k] : (REAL)0;
                        d[i][j] = l.v;
                    }
                input_transform(d, &vt[0][t][c / VW], NT * (CT / VW));
            }
        }

        // The products: part[xi][t] += sum over c of vt[xi][t][c] * ut[xi][c].
        for (int xi = 0; xi < A2; ++xi) {
            for (int sb = 0; sb < NS * blocks; ++sb) {
                const int s = sb / blocks, b = sb - s * blocks;  // channel block s, tile block b
                realv acc[TB][NV];
#pragma unroll
                for (int p = 0; p < TB; ++p)
#pragma unroll
                    for (int v = 0; v < NV; ++v)
                        acc[p][v] = ci0 == 0 ? (realv)0 : part[xi][b * TB + p][s * NV + v];
                for (int c = 0; c < cn; ++c) {
                    realv wv[NV];
#pragma unroll
                    for (int v = 0; v < NV; ++v) wv[v] = ut[xi][c][s * NV + v];
#pragma unroll
                    for (int p = 0; p < TB; ++p) {
                        const REAL xv = ((__global const REAL *)vt[xi][b * TB + p])[c];
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
                    }
                }
#pragma unroll
                for (int p = 0; p < TB; ++p)
#pragma unroll
                    for (int v = 0; v < NV; ++v) part[xi][b * TB + p][s * NV + v] = acc[p][v];
            }
        }
    }

    // Outputs: AT m A for every tile and channel vector; bias, activation.
    for (int t = 0; t < tiles; ++t) {
        const int tt = t0 + t;
        const int n = tt / (TY * TX);
        const int rest = tt - n * (TY * TX);
        const int ty = rest / TX;
        const int oy0 = tile_start(ty, DH);
        const int ox0 = tile_start(rest - ty * TX, DW);
        for (int v = 0; v < NVS; ++v) {
            const int co = co0 + v * VW;
            if (co >= COUT) break;
            realv mm[M][ALPHA];
#pragma unroll
            for (int j = 0; j < ALPHA; ++j) {
                realv col[ALPHA], out[M];
#pragma unroll
                for (int i = 0; i < ALPHA; ++i) col[i] = part[i * ALPHA + j][t][v];
                APPLY_AT(col, out);
#pragma unroll
                for (int i = 0; i < M; ++i) mm[i][j] = out[i];
            }
#pragma unroll
            for (int a = 0; a < M; ++a) {
                const int oy = oy0 + a * DH;
                if (oy >= HO) break;
                realv row[M];
                APPLY_AT(mm[a], row);
#pragma unroll
                for (int b = 0; b < M; ++b) {
                    const int ox = ox0 + b * DW;
                    if (ox >= WO) break;
                    realv value = row[b];
                    if (NONFINITE(value))           // see the head of this file
                        value = direct_sum(x, w, n, oy, ox, co, H, W, CIN, COUT, DH, DW, PT, PL);
                    if (HAS_BIAS) value += VLOAD(bias + co);
                    *(__global realv *)(y + (((long)n * HO + oy) * WO + ox) * COUT + co) = ACTIVATE(value);
                }
            }
        }
    }
    }
}
