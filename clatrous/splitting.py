"""Splitting a convolution too large for one launch into pieces that fit.

A piece must keep each buffer under the device's largest allocation, all of
them together under a memory budget (see ``clatrous.runtime.settings``), and
every index the kernels keep in 32 bits within range.  The batch is split
first; when one image is still too large, its output is cut into bands of
rows (of columns for a 1-D signal), each computed from the input rows it
reads, its dilated halo included, with the padding its position implies.

Under a border other than zeros, a band's input is its rows (or columns)
gathered through the same index map the kernels use
(:func:`clatrous.geometry.border_index`), halo included, so that a band
near the edge reads exactly what the whole image would; the band then needs
no padding along its axis.

Each output element is computed by the same kernel from the same taps in the
same order as in one piece, so the split result equals the one-piece result
bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .arguments import Prepared
from .errors import DeviceMemoryError
from .geometry import ConvGeometry, border_index, conv_geometry

__all__ = ["Piece", "plan_pieces", "sub_problem"]

_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Piece:
    """Images ``n0:n1``, and output rows (axis 1) or columns (axis 2) ``o0:o1``."""

    n0: int
    n1: int
    axis: int = 0  # 0: whole images
    o0: int = 0
    o1: int = 0

    @property
    def out_index(self) -> tuple[slice, ...]:
        index = [slice(self.n0, self.n1), slice(None), slice(None)]
        if self.axis:
            index[self.axis] = slice(self.o0, self.o1)
        return tuple(index)


def _axis(g: ConvGeometry, axis: int):
    """(input size, kernel size, stride, dilation, pad before, output size) along an axis."""
    if axis == 1:
        return g.h, g.kh, g.sh, g.dh, g.pad_top, g.ho
    return g.w, g.kw, g.sw, g.dw, g.pad_left, g.wo


def _input_range(g: ConvGeometry, axis: int, o0: int, o1: int) -> tuple[int, int, int]:
    """Input indices [start, end) that outputs o0:o1 read (may pass the edges), and the size."""
    size, k, s, d, pad, _ = _axis(g, axis)
    start = o0 * s - pad
    end = (o1 - 1) * s - pad + d * (k - 1) + 1
    return start, end, size


def _fits(g: ConvGeometry, itemsize: int, weights: int, max_alloc: int, budget: int, n, h, w, ho, wo) -> bool:
    """Whether ``n`` images of ``h x w`` into ``ho x wo`` fit the limits (a plain function: W1 calls it)."""
    x_bytes = n * h * w * g.cin * itemsize
    y_bytes = n * ho * wo * g.cout * itemsize
    return (
        max(x_bytes, y_bytes, weights) <= max_alloc
        and x_bytes + y_bytes + weights <= budget
        and max(n * ho, h * w, w * g.cin, wo * g.cout) <= _INT_MAX
    )


@functools.lru_cache(maxsize=256)
def plan_pieces(
    g: ConvGeometry, itemsize: int, max_alloc: int, budget: int, resident_input: bool = False
) -> tuple[Piece, ...]:
    """The pieces to launch, in order; one piece when the whole problem fits.

    Kept for the most recent 256 problems (a repeated small call, W1, would
    otherwise plan again each time); a problem that does not fit raises
    every time.
    """
    return tuple(_plan_pieces(g, itemsize, max_alloc, budget, resident_input))


def _plan_pieces(g: ConvGeometry, itemsize: int, max_alloc: int, budget: int, resident_input: bool):
    weights = (g.kh * g.kw * g.cin_per_group * g.cout + g.cout) * itemsize
    if _fits(g, itemsize, weights, max_alloc, budget, g.n, g.h, g.w, g.ho, g.wo):
        return [Piece(0, g.n)]

    def fits(n: int, h: int, w: int, ho: int, wo: int) -> bool:
        return _fits(g, itemsize, weights, max_alloc, budget, n, h, w, ho, wo)

    sizes = (
        f"x {(g.n, g.h, g.w, g.cin)}, kernel {g.kernel_shape}, output {g.output_shape}, "
        f"{itemsize}-byte elements; largest buffer {max_alloc} bytes, budget {budget} bytes"
    )
    if resident_input:
        raise DeviceMemoryError(f"a convolution with x already on the device must fit one launch: {sizes}")
    if weights > max_alloc or weights >= budget:
        raise DeviceMemoryError(f"the kernel alone does not fit the device: {sizes}")

    if fits(1, g.h, g.w, g.ho, g.wo):
        per = max(n for n in range(1, g.n + 1) if n == 1 or fits(n, g.h, g.w, g.ho, g.wo))
        return [Piece(n0, min(n0 + per, g.n)) for n0 in range(0, g.n, per)]

    def band_fits(axis: int, count: int) -> bool:
        start, end, size = _input_range(g, axis, 0, count)
        reads = min(end - start, size) if g.border == "zeros" else end - start
        if axis == 1:
            return fits(1, reads, g.w, count, g.wo)
        return fits(1, g.h, reads, g.ho, count)

    def largest_band(axis: int) -> int:
        lo, hi = 0, g.ho if axis == 1 else g.wo  # by bisection: band_fits is monotonic
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if band_fits(axis, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    # Bands of output rows first (even a single output row may read fewer
    # input rows than the image has, at a stride), then of columns.
    axis = 1
    lo = largest_band(axis)
    if lo == 0:
        axis = 2
        lo = largest_band(axis)
    if lo == 0:
        raise DeviceMemoryError(f"not even one output row or column fits: {sizes}")
    total = g.ho if axis == 1 else g.wo

    bands = []
    for o0 in range(0, total, lo):
        bands.append([o0, min(o0 + lo, total)])
    # A band whose outputs read only padding has no input to send: merge it
    # into its neighbour towards the middle (only possible at the edges).
    merged = []
    for band in bands:
        start, end, size = _input_range(g, axis, *band)
        if g.border == "zeros" and max(start, 0) >= min(end, size) and merged:
            merged[-1][1] = band[1]
        else:
            merged.append(band)
    if len(merged) > 1 and g.border == "zeros":
        start, end, size = _input_range(g, axis, *merged[0])
        if max(start, 0) >= min(end, size):
            merged[1][0] = merged[0][0]
            merged.pop(0)
    return [Piece(n, n + 1, axis, o0, o1) for n in range(g.n) for o0, o1 in merged]


def sub_problem(prepared: Prepared, x4: np.ndarray, piece: Piece) -> Prepared:
    """The convolution that computes ``piece``: a view of the input and its own padding."""
    g = prepared.geometry
    pads = [[g.pad_top, g.pad_bottom], [g.pad_left, g.pad_right]]
    index = [slice(piece.n0, piece.n1), slice(None), slice(None)]
    if piece.axis:
        start, end, size = _input_range(g, piece.axis, piece.o0, piece.o1)
        a, b = max(start, 0), min(end, size)
        index[piece.axis] = slice(a, b)
        pads[piece.axis - 1] = [a - start, end - b]
    x = x4[tuple(index)]
    if piece.axis and g.border != "zeros":
        # The band's input through the border map, halo included: no padding along the axis.
        taken = [border_index(i, size, g.border) for i in range(start, end)]
        x = np.take(x4[piece.n0 : piece.n1], taken, axis=piece.axis)
        pads[piece.axis - 1] = [0, 0]
    kernel = prepared.kernel.reshape(g.kernel_shape)
    geometry = conv_geometry(
        x.shape,
        kernel.shape,
        strides=(g.sh, g.sw),
        padding=tuple(tuple(p) for p in pads),
        dilation_rate=(g.dh, g.dw),
        groups=g.groups,
        padding_mode=g.border,
    )
    return Prepared(x, kernel, prepared.bias, geometry, prepared.dtype, prepared.activation, False)
