"""The NumPy oracle: the same ``conv1d`` / ``conv2d`` as the device, no device.

Every device kernel, variant and tuned configuration is tested against these
functions.  They are public so that users can verify results too.

The computation loops over the kernel taps (a few dozen at most) and, for
each, multiplies a strided view of the input by that tap's ``(C_in, C_out)``
weight matrix, for the outputs whose tap reads the input; there is no Python
loop over pixels, so the reference is affordable on real images.

The padding rule, the same in every kernel: a tap that falls in the zero
padding contributes nothing.  It is not a multiplication by zero, so an Inf
or NaN weight meeting the padding adds nothing there (where it meets the
input, it propagates as the arithmetic says).  It accumulates in float64 and rounds
to the result dtype once at the end, which makes it at least as accurate as
any device kernel.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .arguments import (
    Prepared,
    is_device_array,
    prepare,
    prepare_branches,
    prepare_depthwise,
    to_channels_first,
    to_channels_last,
)
from .geometry import ConvGeometry, normalize_padding_mode

__all__ = [
    "apply_activation",
    "aspp",
    "conv1d",
    "conv2d",
    "conv_prepared",
    "depthwise_conv2d",
    "dilate",
    "error_bound",
    "istarlet",
    "starlet",
    "starlet_smooth",
]


def apply_activation(values: np.ndarray, activation: str) -> np.ndarray:
    """Apply a named activation to ``values`` in place and return them.

    Non-finite inputs give what the kernels give: for instance gelu and silu
    of -inf are NaN (-inf times 0), softplus of -inf is 0, elu of -inf is -1.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if activation == "relu":
            np.maximum(values, 0, out=values)
        elif activation == "sigmoid":
            np.reciprocal(1.0 + np.exp(-values), out=values)
        elif activation == "tanh":
            np.tanh(values, out=values)
        elif activation == "gelu":
            values *= 0.5 * (1.0 + _erf(values / np.sqrt(2.0)))
        elif activation == "silu":
            values /= 1.0 + np.exp(-values)
        elif activation == "elu":
            np.copyto(values, np.expm1(values), where=~(values > 0))
        elif activation == "softplus":
            np.logaddexp(0.0, values, out=values)
        elif activation == "leaky_relu":
            np.copyto(values, 0.2 * values, where=values < 0)
        elif activation != "linear":
            raise ValueError(f"unknown activation {activation!r}")
    return values


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _to_host(value):
    return value.get() if is_device_array(value) else value


def _valid_outputs(n: int, out: int, s: int, pad: int, offset: int) -> tuple[int, int]:
    """Outputs ``o`` in [lo, hi) whose tap reads input ``o*s - pad + offset`` inside [0, n)."""
    lo = max(0, -(-(pad - offset) // s))
    hi = min(out, (n - 1 + pad - offset) // s + 1)
    return lo, max(lo, hi)


#: np.pad's name for each padding_mode but zeros.
NP_PAD_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}


def _padded(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, ConvGeometry]:
    """For a border other than zeros: the input padded by np.pad, and the geometry without padding."""
    pads = ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0))
    x = np.pad(x, pads, mode=NP_PAD_MODES[g.border])
    g = dataclasses.replace(
        g, h=x.shape[1], w=x.shape[2], pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, border="zeros"
    )
    return x, g


def _tap(x_view: np.ndarray, weights: np.ndarray, groups: int) -> np.ndarray:
    """One tap: ``x_view (..., C_in)`` times ``weights (C_in // groups, C_out)``, group by group."""
    if groups == 1:
        return x_view @ weights
    cin_g, cout = weights.shape
    xs = x_view.reshape(*x_view.shape[:-1], groups, 1, cin_g)
    ws = weights.reshape(cin_g, groups, cout // groups).transpose(1, 0, 2)
    return (xs @ ws).reshape(*x_view.shape[:-1], cout)


def _conv_nhwc(x, kernel, bias, g: ConvGeometry, activation: str, dtype) -> np.ndarray:
    x = np.asarray(_to_host(x), dtype=np.float64)
    kernel = np.asarray(_to_host(kernel), dtype=np.float64)
    if g.border != "zeros":
        x, g = _padded(x, g)
    out = np.zeros((g.n, g.ho, g.wo, g.cout), dtype=np.float64)
    for ky in range(g.kh):
        r0, r1 = _valid_outputs(g.h, g.ho, g.sh, g.pad_top, ky * g.dh)
        if r0 == r1:
            continue
        rows = slice(r0 * g.sh - g.pad_top + ky * g.dh, (r1 - 1) * g.sh - g.pad_top + ky * g.dh + 1, g.sh)
        for kx in range(g.kw):
            c0, c1 = _valid_outputs(g.w, g.wo, g.sw, g.pad_left, kx * g.dw)
            if c0 == c1:
                continue
            cols = slice(
                c0 * g.sw - g.pad_left + kx * g.dw, (c1 - 1) * g.sw - g.pad_left + kx * g.dw + 1, g.sw
            )
            # Only the outputs whose tap reads the input: a tap in the padding
            # contributes nothing (so an Inf weight there gives no 0 * Inf).
            out[:, r0:r1, c0:c1, :] += _tap(x[:, rows, cols, :], kernel[ky, kx], g.groups)
    if bias is not None:
        out += np.asarray(_to_host(bias), dtype=np.float64)
    return apply_activation(out, activation).astype(dtype)


def conv_prepared(p: Prepared) -> np.ndarray:
    """A validated call (:func:`clatrous.arguments.prepare`), in ``geometry.output_shape`` (the launch's)."""
    g = p.geometry
    x = np.asarray(_to_host(p.x)).reshape(g.input_shape)
    kernel = np.asarray(_to_host(p.kernel)).reshape(g.kernel_shape)
    if g.channels_first:
        out = _conv_nhwc(np.moveaxis(x, 1, -1), kernel, p.bias, g, p.activation, p.dtype)
        return np.ascontiguousarray(np.moveaxis(out, -1, 1))
    return _conv_nhwc(x, kernel, p.bias, g, p.activation, p.dtype)


def conv2d(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    activation=None,
    groups=1,
    padding_mode="zeros",
    data_format="channels_last",
):
    """Reference 2-D dilated cross-correlation; see :func:`clatrous.conv2d`."""
    x, channels_first = to_channels_last(x, data_format, 2)
    p = prepare(
        x,
        kernel,
        bias,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        activation=activation,
        ndim=2,
        groups=groups,
        padding_mode=padding_mode,
    )
    out = _conv_nhwc(p.x, p.kernel, p.bias, p.geometry, p.activation, p.dtype)
    if channels_first:
        return to_channels_first(out)
    return out[0, :, :, 0] if p.squeeze else out


def conv1d(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    activation=None,
    groups=1,
    padding_mode="zeros",
    data_format="channels_last",
):
    """Reference 1-D dilated cross-correlation; see :func:`clatrous.conv1d`."""
    x, channels_first = to_channels_last(x, data_format, 1)
    p = prepare(
        x,
        kernel,
        bias,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        activation=activation,
        ndim=1,
        groups=groups,
        padding_mode=padding_mode,
    )
    x4 = np.asarray(_to_host(p.x))[:, None, :, :]
    k4 = np.asarray(_to_host(p.kernel))[None]
    out = _conv_nhwc(x4, k4, p.bias, p.geometry, p.activation, p.dtype)[:, 0]
    if channels_first:
        return to_channels_first(out)
    return out[0, :, 0] if p.squeeze else out


def depthwise_conv2d(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding="valid",
    padding_mode="zeros",
    dilation_rate=1,
    activation=None,
    data_format="channels_last",
):
    """Reference depthwise dilated convolution; see :func:`clatrous.depthwise_conv2d`."""
    x, channels_first = to_channels_last(x, data_format, 2)
    p = prepare_depthwise(
        x,
        kernel,
        bias,
        strides=strides,
        padding=padding,
        padding_mode=padding_mode,
        dilation_rate=dilation_rate,
        activation=activation,
    )
    out = _conv_nhwc(p.x, p.kernel, p.bias, p.geometry, p.activation, p.dtype)
    return to_channels_first(out) if channels_first else out


def aspp(x, kernels, rates, biases=None, *, activation=None):
    """Reference fused branches; see :func:`clatrous.aspp`: the branches' "same" convolutions side by side."""
    call = prepare_branches(x, kernels, rates, biases, activation)
    x = np.asarray(_to_host(call.x))
    outs = [
        _conv_nhwc(x, _to_host(p.kernel), _to_host(p.bias), p.geometry, p.activation, p.dtype)
        for p in call.branches
    ]
    return np.concatenate(outs, axis=-1)


def error_bound(
    x,
    kernel,
    dtype,
    *,
    ndim: int = 2,
    strides=1,
    padding="valid",
    dilation_rate=1,
    groups=1,
    padding_mode="zeros",
) -> np.ndarray:
    """Largest error, element by element, that a correct kernel may make.

    A dot product of K terms in floating point is off by at most about
    ``K * eps * sum(|x| * |w|)``; relu, sigmoid and tanh only shrink errors.
    The sum of magnitudes is itself a convolution, of ``|x|`` by ``|w|``.
    The tests and the tuner accept a device result when every element lies
    within this bound of :func:`conv2d` / :func:`conv1d`.  (A depthwise
    kernel ``(kh, kw, C, M)`` is bounded as the grouped one it is:
    ``kernel.reshape(kh, kw, 1, C * M)`` with ``groups=C``.)
    """
    conv = conv1d if ndim == 1 else conv2d
    x = np.abs(np.asarray(_to_host(x), np.float64))
    kernel = np.abs(np.asarray(_to_host(kernel), np.float64))
    magnitude = conv(
        x,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        padding_mode=padding_mode,
    )
    terms = int(np.prod(kernel.shape[:-1])) if kernel.ndim > ndim else int(np.prod(kernel.shape))
    eps = np.finfo(dtype).eps
    return 4 * eps * (terms + 2) * (magnitude + 1.0) + np.finfo(dtype).tiny


def dilate(kernel, rate) -> np.ndarray:
    """Insert ``rate - 1`` zeros between the taps of ``kernel`` along its spatial axes.

    Parameters
    ----------
    kernel : array_like
        A 1-D kernel, or a kernel whose leading axes are spatial (``(kh, kw)``,
        ``(kh, kw, C_in, C_out)``, ``(k, C_in, C_out)``...).
    rate : int or tuple of ints
        An int dilates the first two axes (the only axis of a 1-D kernel); a
        tuple gives one rate per leading spatial axis, e.g. ``(2,)`` for a
        conv1d kernel ``(k, C_in, C_out)``.

    Returns
    -------
    ndarray
        A new array of the kernel's dtype; a convolution with it at rate 1
        equals a convolution with ``kernel`` at ``dilation_rate=rate``.

    Raises
    ------
    TypeError
        ``kernel`` is not an array of numbers (a masked array, strings...),
        or ``rate`` is not an int or a tuple of ints.
    ValueError
        A rate below 1, or more rates than the kernel has axes.

    Examples
    --------
    >>> dilate([[10, -8], [15, -2]], 2)
    array([[10,  0, -8],
           [ 0,  0,  0],
           [15,  0, -2]])
    """
    from .geometry import normalize_tuple

    if isinstance(kernel, np.ma.MaskedArray):
        raise TypeError("kernel is a masked array; pass kernel.filled(value)")
    try:
        arr = np.asarray(kernel)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"kernel must be an array of numbers, could not convert it: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"kernel must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"kernel must have at least one axis, got shape {arr.shape}")
    if isinstance(rate, (tuple, list)):
        rates = normalize_tuple(rate, len(rate), "rate")
        if len(rates) == 0 or len(rates) > arr.ndim:
            raise ValueError(f"rate must give 1 to {arr.ndim} rates for a {arr.ndim}-D kernel, got {rate!r}")
    else:
        rates = normalize_tuple(rate, min(2, arr.ndim), "rate")
    shape = list(arr.shape)
    index = []
    for axis, r in enumerate(rates):
        shape[axis] = (arr.shape[axis] - 1) * r + 1 if arr.shape[axis] else 0
        index.append(slice(None, None, r))
    out = np.zeros(shape, dtype=arr.dtype)
    out[tuple(index)] = arr
    return out


#: The B3-spline filter of the starlet, [1, 4, 6, 4, 1] / 16.
B3 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def starlet_smooth(c: np.ndarray, level: int, padding_mode: str = "reflect") -> np.ndarray:
    """``h_level * c`` for images ``c (..., H, W)``: np.pad by ``2 * 2**level``, then the B3 filter.

    The filter's taps are ``2**level`` apart, applied along the rows and then
    the columns of the padded image (the same as the 2-D separable filter on
    the image padded on both axes, as ``np.pad`` pads each axis by itself).
    """
    mode = NP_PAD_MODES[normalize_padding_mode(padding_mode)]
    d = 2**level
    pad = 2 * d
    c = np.asarray(c, np.float64)
    lead = [(0, 0)] * (c.ndim - 2)
    padded = np.pad(c, [*lead, (pad, pad), (pad, pad)], mode=mode)
    h, w = c.shape[-2:]
    rows = sum(B3[t] * padded[..., t * d : t * d + h, :] for t in range(5))
    return sum(B3[t] * rows[..., :, t * d : t * d + w] for t in range(5))


def starlet(image, levels: int, *, generation: int = 1, padding_mode: str = "reflect") -> np.ndarray:
    """Reference starlet transform, in float64; see :func:`clatrous.starlet`."""
    image = np.asarray(image, np.float64)
    c, planes = image, []
    for j in range(levels):
        smooth = starlet_smooth(c, j, padding_mode)
        again = smooth if generation == 1 else starlet_smooth(smooth, j, padding_mode)
        planes.append(c - again)
        c = smooth
    planes.append(c)
    return np.stack(planes, axis=-3)


def istarlet(coefficients, *, generation: int = 1, padding_mode: str = "reflect") -> np.ndarray:
    """Reference inverse starlet transform, in float64; see :func:`clatrous.istarlet`."""
    coefficients = np.asarray(coefficients, np.float64)
    levels = coefficients.shape[-3] - 1
    if generation == 1:
        return coefficients.sum(axis=-3)
    c = coefficients[..., levels, :, :]
    for j in reversed(range(levels)):
        c = starlet_smooth(c, j, padding_mode) + coefficients[..., j, :, :]
    return c
