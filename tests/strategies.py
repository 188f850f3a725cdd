"""Hypothesis strategies for random convolution problems, small enough for PoCL."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from clatrous.geometry import conv_geometry

ACTIVATIONS = st.sampled_from(
    [None, "linear", "relu", "sigmoid", "tanh", "gelu", "silu", "elu", "softplus", "leaky_relu"]
)
DTYPES = st.sampled_from([np.float32, np.float64])


def _pair(values):
    return st.one_of(values, st.tuples(values, values))


@st.composite
def padding_2d(draw):
    small = st.integers(0, 3)
    return draw(
        st.one_of(
            st.sampled_from(["valid", "same", "VALID", "Same"]),
            small,
            st.tuples(small, small),
            st.tuples(st.tuples(small, small), st.tuples(small, small)),
        )
    )


@st.composite
def conv2d_problem(draw, max_channels=6):
    """(x, kernel, bias, kwargs) for conv2d, with a geometry that fits."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = draw(_pair(st.integers(1, 3)))
    dilation = draw(_pair(st.integers(1, 4)))
    padding = draw(padding_2d())
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    h = draw(st.integers(max(1, dh * (kh - 1) - 5), dh * (kh - 1) + 12))
    w = draw(st.integers(max(1, dw * (kw - 1) - 5), dw * (kw - 1) + 20))
    n = draw(st.integers(1, 3))
    cin = draw(st.integers(1, max_channels))
    cout = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 12, 16, 24, 32]))
    dtype = draw(DTYPES)
    kwargs = dict(strides=strides, padding=padding, dilation_rate=dilation, activation=draw(ACTIVATIONS))
    try:
        conv_geometry(
            (n, h, w, cin), (kh, kw, cin, cout), strides=strides, padding=padding, dilation_rate=dilation
        )
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, h, w, cin)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, cin, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype) if draw(st.booleans()) else None
    return x, kernel, bias, kwargs


@st.composite
def conv1d_problem(draw, max_channels=6):
    """(x, kernel, bias, kwargs) for conv1d, with a geometry that fits."""
    k = draw(st.integers(1, 5))
    strides = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 8))
    small = st.integers(0, 4)
    padding = draw(
        st.one_of(st.sampled_from(["valid", "same", "causal", "CAUSAL"]), small, st.tuples(small, small))
    )
    length = draw(st.integers(max(1, dilation * (k - 1) - 5), dilation * (k - 1) + 30))
    n = draw(st.integers(1, 3))
    cin = draw(st.integers(1, max_channels))
    cout = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    dtype = draw(DTYPES)
    kwargs = dict(strides=strides, padding=padding, dilation_rate=dilation, activation=draw(ACTIVATIONS))
    try:
        conv_geometry((n, length, cin), (k, cin, cout), strides=strides, padding=padding,
                      dilation_rate=dilation, ndim=1)  # fmt: skip
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, length, cin)).astype(dtype)
    kernel = rng.standard_normal((k, cin, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype) if draw(st.booleans()) else None
    return x, kernel, bias, kwargs


MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


@st.composite
def grouped_problem(draw, ndim=2, depthwise=False):
    """(x, kernel, bias, kwargs) for a grouped (or depthwise) convolution under any border.

    Pads reach past the image (np.pad then reflects or wraps again and
    again).  With ``depthwise``, the kernel is Keras' ``(kh, kw, C_in, M)``
    and kwargs suit :func:`clatrous.depthwise_conv2d`.
    """
    mode = draw(st.sampled_from(MODES))
    groups = draw(st.sampled_from([1, 2, 3, 4]))
    if depthwise:
        cin, multiplier = draw(st.sampled_from([1, 2, 3, 4, 8, 16])), draw(st.integers(1, 3))
        groups, cout = cin, cin * multiplier
    else:
        cin = groups * draw(st.integers(1, 3))
        cout = groups * draw(st.sampled_from([1, 2, 4, 8]))
    ks = [draw(st.integers(1, 4)) for _ in range(ndim)]
    dilation = [draw(st.integers(1, 4)) for _ in range(ndim)]
    strides = [draw(st.integers(1, 3)) for _ in range(ndim)]
    sizes = [draw(st.integers(1, 14)) for _ in range(ndim)]
    wide = st.integers(0, 12)
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same"]),
            st.tuples(*[st.tuples(wide, wide) for _ in range(ndim)]) if ndim == 2 else st.tuples(wide, wide),
        )
    )
    n = draw(st.integers(1, 2))
    dtype = draw(DTYPES)
    x_shape = (n, *sizes, cin)
    k_shape = (*ks, cin // groups, cout)
    kwargs = dict(
        strides=tuple(strides) if ndim == 2 else strides[0],
        padding=padding,
        dilation_rate=tuple(dilation) if ndim == 2 else dilation[0],
        activation=draw(ACTIVATIONS),
        padding_mode=mode,
    )
    try:
        conv_geometry(x_shape, k_shape, strides=kwargs["strides"], padding=padding,
                      dilation_rate=kwargs["dilation_rate"], ndim=ndim, groups=groups)  # fmt: skip
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(x_shape).astype(dtype)
    if depthwise:
        kernel = rng.standard_normal((*ks, cin, cout // cin)).astype(dtype)
    else:
        kernel = rng.standard_normal(k_shape).astype(dtype)
        kwargs["groups"] = groups
    bias = rng.standard_normal(cout).astype(dtype) if draw(st.booleans()) else None
    return x, kernel, bias, kwargs
