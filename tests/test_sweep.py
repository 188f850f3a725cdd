"""Every kernel variant through each of its code paths, on small shapes.

Deterministic cases chosen to reach every branch of every kernel: sizes that
are not multiples of the tiles (partial pixel blocks, partial channel blocks
whose loads are clamped, a last partial channel tile, a last partial row
chunk or row group), strides, dilations large enough that whole rows and blocks of taps
fall into the padding, strides that do and do not divide the dilation, both
dtypes, conv1d and conv2d, bias and every activation.

CI also runs this file on the Oclgrind simulator with its data-race and
uninitialised-memory checks (see conftest.py and .ci/run), which fails on
any out-of-bounds access, race or read of uninitialised memory.
"""

import zlib

import numpy as np
import pytest
from helpers import assert_matches_reference, forced_call, skip_without_fp64

import clatrous
from clatrous import reference

# (label, x shape, kernel shape, strides, padding, dilation, activation, bias)
SHAPES_2D = [
    ("edges", (2, 7, 9, 3), (3, 3, 3, 8), 1, "same", 2, "relu", True),
    ("strided", (1, 11, 10, 5), (2, 3, 5, 12), (2, 3), ((1, 0), (2, 1)), (2, 1), "tanh", False),
    ("all-padding", (1, 5, 6, 2), (3, 3, 2, 4), 1, "same", 4, "sigmoid", True),
    ("stride-not-dividing", (1, 9, 8, 1), (3, 2, 1, 1), (2, 1), "same", (3, 2), None, True),
]
SHAPES_TILED = [
    ("tiles", (1, 5, 7, 40), (3, 3, 40, 24), 1, "same", 2, "relu", True),
    ("tiles-strided", (2, 9, 7, 40), (3, 2, 40, 16), (2, 1), "same", 3, "sigmoid", False),
]
SHAPES_PLANE = [
    ("plane-lattice", (2, 13, 21, 1), (3, 3, 1, 1), 1, "same", 2, "sigmoid", True),
    ("plane-strided", (1, 12, 19, 1), (2, 3, 1, 1), (2, 2), 1, 3, None, False),
]
SHAPES_LOCAL = [  # stride 1 only
    ("local-edges", (2, 7, 9, 3), (3, 3, 3, 8), 1, "same", 2, "relu", True),
    ("local-phases", (1, 5, 6, 6), (3, 3, 6, 4), 1, "same", 4, "sigmoid", True),  # more phases than rows
    ("local-tiles", (1, 11, 10, 13), (2, 3, 13, 12), 1, ((1, 0), (2, 1)), (3, 1), "tanh", False),
]
CASES = [
    ("direct", {}, SHAPES_2D),
    ("direct", {"LOCAL0": 1, "LOCAL1": 8}, SHAPES_2D[:1]),
    ("blocked", {"VW": 4, "NV": 2, "PX": 4}, SHAPES_2D[:3]),
    ("blocked", {"VW": 8, "NV": 2, "PX": 6}, SHAPES_2D[:1]),
    ("blocked", {"VW": 1, "NV": 1, "PX": 2}, SHAPES_2D),
    ("blocked", {"VW": 2, "NV": 4, "PX": 1}, SHAPES_2D[1:2]),
    ("tiled", {"VW": 8, "NV": 2, "PX": 4, "CT": 16, "NB": 2, "RW": 2}, SHAPES_TILED),
    ("tiled", {"VW": 8, "NV": 1, "PX": 6, "CT": 32, "NB": 2, "RW": 1}, SHAPES_TILED[:1]),
    ("tiled", {"VW": 8, "NV": 1, "PX": 2, "CT": 32, "NB": 4, "RW": 9}, SHAPES_TILED),
    ("plane", {"VW": 8, "RB": 4}, SHAPES_PLANE + SHAPES_2D[3:]),
    ("plane", {"VW": 4, "RB": 1}, SHAPES_PLANE[:1]),
    ("local", {"VW": 4, "PX": 2, "PY": 2, "LC": 2, "LX": 2, "LY": 2, "CT": 4}, SHAPES_LOCAL),
    ("local", {"VW": 1, "PX": 1, "PY": 1, "LC": 8, "LX": 4, "LY": 4, "CT": 8}, SHAPES_LOCAL[:2]),
    ("local", {"VW": 2, "PX": 4, "PY": 2, "LC": 1, "LX": 2, "LY": 8, "CT": 16}, SHAPES_LOCAL[2:]),
]
PARAMS = [
    pytest.param(
        variant,
        config,
        shape,
        dtype,
        id=f"{variant}-{'-'.join(map(str, config.values()))}-{shape[0]}-{dtype.__name__}",
    )
    for variant, config, shapes in CASES
    for shape in shapes
    for dtype in (np.float32, np.float64)
]


@pytest.mark.parametrize("variant, config, shape, dtype", PARAMS)
def test_variant_code_paths(variant, config, shape, dtype):
    skip_without_fp64(dtype)
    _, x_shape, k_shape, strides, padding, dilation, activation, with_bias = shape
    rng = np.random.default_rng(zlib.crc32(f"{variant} {config} {shape[0]}".encode()))
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(k_shape).astype(dtype)
    bias = rng.standard_normal(k_shape[-1]).astype(dtype) if with_bias else None
    kwargs = dict(strides=strides, padding=padding, dilation_rate=dilation, activation=activation)
    out = forced_call((variant, config), clatrous.conv2d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, **kwargs)


@pytest.mark.parametrize("variant, config", [("direct", {}), ("blocked", {"VW": 4, "NV": 2, "PX": 4})])
@pytest.mark.parametrize("padding", ["causal", "same", (3, 1)])
def test_conv1d_code_paths(variant, config, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 23, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    kwargs = dict(strides=2, padding=padding, dilation_rate=4, activation="tanh")
    out = forced_call((variant, config), clatrous.conv1d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, conv=reference.conv1d, **kwargs)
