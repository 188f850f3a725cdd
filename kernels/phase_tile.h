// phase_tile.h: where a work-group's tile of one dilation phase lies, for the
// kernels that share an input tile in local memory (conv2d_local.cl,
// conv2d_depthwise_local.cl).
//
// At stride 1, a rate-(DH, DW) convolution is DH*DW ordinary ones on
// interleaved sub-images ("phases"): output pixels (oy, ox) with the same
// (oy % DH, ox % DW) read input pixels of the same phase only, KH x KW
// neighbours apart in it.  A tile of TH x TW outputs of one phase reads
// (TH + KH - 1) x (TW + KW - 1) input pixels of that phase: a halo of
// KH - 1 rows and KW - 1 columns at any rate, where a tile of neighbouring
// pixels would need DH*(KH - 1) rows.
//
// Groups along dim 1 are (rx, tx): PHX = min(DW, WO) phases of TX tiles;
// along dim 2 (n, ry, ty): N images of PHY = min(DH, HO) phases of TY tiles.
#ifndef CLATROUS_PHASE_TILE_H
#define CLATROUS_PHASE_TILE_H

typedef struct {
    int n;        // image
    int ry, rx;   // the phase: output rows ry + DH*i, columns rx + DW*j
    int py0, px0; // the tile's first output in phase coordinates (i, j)
    int iy0, ix0; // the input row and column its first tap reads (before the border)
} phase_tile;

// Quotients and remainders spelled out: LLVM's own pairing of / and % emits
// a "freeze" instruction that Oclgrind 21.10 cannot run.
static inline phase_tile tile_of_group(const int TH, const int TW, const int TX, const int TY,
                                       const int HO, const int DH, const int DW,
                                       const int PT, const int PL)
{
    phase_tile t;
    const int gx = (int)get_group_id(1);            // rx * TX + tx
    const int gz = (int)get_group_id(2);            // (n * PHY + ry) * TY + ty
    const int rx = gx / TX, tx = gx - rx * TX;
    const int nry = gz / TY, ty = gz - nry * TY;
    const int phy = min(DH, HO);
    t.n = nry / phy;
    t.ry = nry - t.n * phy;
    t.rx = rx;
    t.py0 = ty * TH;
    t.px0 = tx * TW;
    t.iy0 = t.ry - PT + DH * t.py0;
    t.ix0 = t.rx - PL + DW * t.px0;
    return t;
}

#endif // CLATROUS_PHASE_TILE_H
