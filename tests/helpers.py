"""Comparison against the reference with an error bound derived from the data."""

import numpy as np
import pytest

from clatrous import reference, runtime


def assert_matches_reference(out, x, kernel, bias=None, conv=reference.conv2d, **kwargs):
    """``out`` has the reference's shape and dtype, and every value within the bound."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "_choice")}
    expected = conv(x, kernel, bias, **kwargs)
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert not np.isnan(out).any() or np.isnan(expected).any(), "an output element was never written"
    geometry = {k: v for k, v in kwargs.items() if k in ("strides", "padding", "dilation_rate")}
    ndim = 1 if conv is reference.conv1d else 2
    bound = reference.error_bound(x, kernel, out.dtype, ndim=ndim, **geometry)
    error = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else ()
    assert np.all(error <= bound), (
        f"max error {error.max():.3g} exceeds bound at {worst}: got {out[worst]}, expected {expected[worst]}"
    )


def skip_without_fp64(dtype):
    if np.dtype(dtype) == np.float64 and not runtime.get_runtime().info.fp64:
        pytest.skip("the device has no cl_khr_fp64")
