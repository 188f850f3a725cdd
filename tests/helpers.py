"""Shared test helpers: comparison against the reference, the geometry of a call, forced choices."""

import numpy as np
import pytest

from clatrous import params, reference, runtime
from clatrous.arguments import prepare
from clatrous.conv import CONV2D


def assert_matches_reference(out, x, kernel, bias=None, conv=reference.conv2d, **kwargs):
    """``out`` has the reference's shape and dtype, and every value within the bound."""
    kwargs = {k: v for k, v in kwargs.items() if k != "device"}
    expected = conv(x, kernel, bias, **kwargs)
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert not np.isnan(out).any() or np.isnan(expected).any(), "an output element was never written"
    geometry = {
        k: v
        for k, v in kwargs.items()
        if k in ("strides", "padding", "dilation_rate", "groups", "padding_mode")
    }
    ndim = 1 if conv is reference.conv1d else 2
    if conv is reference.depthwise_conv2d:  # bounded as the grouped convolution it is
        kh, kw, cin, multiplier = kernel.shape
        kernel, geometry["groups"] = np.reshape(kernel, (kh, kw, 1, cin * multiplier)), cin
    bound = reference.error_bound(x, kernel, out.dtype, ndim=ndim, **geometry)
    error = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else ()
    assert np.all(error <= bound), (
        f"max error {error.max():.3g} exceeds bound at {worst}: got {out[worst]}, expected {expected[worst]}"
    )


def skip_without_fp64(dtype):
    if np.dtype(dtype) == np.float64 and not runtime.get_runtime().info.fp64:
        pytest.skip("the device has no cl_khr_fp64")


def geometry_of(x, kernel, bias=None, ndim=2, **kwargs):
    """The validated geometry of a call, with conv2d's defaults for what ``kwargs`` leaves out.

    ``channels_first=True`` reads ``x`` as (N, C_in, H, W).
    """
    call = dict(strides=1, padding="valid", dilation_rate=1, activation=None) | kwargs
    return prepare(x, kernel, bias, ndim=ndim, **call).geometry


def choices(g, dtype):
    """Every (variant, configuration) the tuner could pick for geometry g on this device."""
    return params.search_candidates(runtime.get_runtime().info, CONV2D, g, dtype)


def draw_choice(data, candidates, *, default=False):
    """A (variant, configuration) of ``candidates`` drawn with hypothesis: variant first, then configuration.

    The cooperative variants have a hundred times more configurations than
    the others; drawing a pair at once would seldom reach the others.  With
    ``default``, None (the default choice) is one more variant to draw.
    """
    from hypothesis import strategies as st

    names = sorted({name for name, _ in candidates})
    name = data.draw(st.sampled_from([None, *names] if default else names), label="variant")
    if name is None:
        return None
    config = data.draw(st.sampled_from([c for n, c in candidates if n == name]), label="config")
    return name, config


def forced_call(choice, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``choice`` (variant, configuration) forced, or as chosen when None."""
    if choice is None:
        return fn(*args, **kwargs)
    with params.forced(*choice):
        return fn(*args, **kwargs)


def on_oclgrind() -> bool:
    """Whether the device under test is the Oclgrind simulator (slow: tests shrink their shapes)."""
    return "oclgrind" in runtime.get_runtime().info.platform.lower()
