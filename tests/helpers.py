"""Comparison against the reference with an error bound derived from the data."""

import numpy as np
import pytest

from clatrous import reference, runtime


def reference_bound(x, kernel, dtype, conv=reference.conv2d, **geometry):
    """Largest error a correct kernel may make, element by element.

    A dot product of K terms in floating point is off by at most about
    K * eps * sum(|x| * |w|); the activations (relu, sigmoid, tanh) only shrink
    errors.  The sum of magnitudes is itself a convolution, of |x| by |w|.
    """
    geometry = {k: v for k, v in geometry.items() if k in ("strides", "padding", "dilation_rate")}
    magnitude = conv(np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(kernel, np.float64)), **geometry)
    k = np.asarray(kernel).shape
    terms = int(np.prod(k[:-1])) if np.asarray(kernel).ndim > 2 else int(np.prod(k))
    eps = np.finfo(dtype).eps
    return 4 * eps * (terms + 2) * (magnitude + 1.0) + np.finfo(dtype).tiny


def assert_matches_reference(out, x, kernel, bias=None, conv=reference.conv2d, **kwargs):
    """``out`` has the reference's shape and dtype, and its values within the bound."""
    device_kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "_choice")}
    expected = conv(x, kernel, bias, **device_kwargs)
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert not np.isnan(out).any() or np.isnan(expected).any(), "an output element was never written"
    bound = reference_bound(x, kernel, out.dtype, conv=conv, **device_kwargs)
    error = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else ()
    assert np.all(error <= bound), (
        f"max error {error.max():.3g} exceeds bound at {worst}: got {out[worst]}, expected {expected[worst]}"
    )


def skip_without_fp64(dtype):
    if np.dtype(dtype) == np.float64 and not runtime.get_runtime().info.fp64:
        pytest.skip("the device has no cl_khr_fp64")
