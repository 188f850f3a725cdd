"""Argument checks shared by the device path and the NumPy reference.

Everything here runs before any OpenCL call: a user's mistake becomes a
``ValueError`` or ``TypeError`` that names the argument and echoes what was
received.  Nothing here modifies the caller's arrays.

Dtype policy (one function, :func:`result_dtype`): float32 and float64 inputs
keep their dtype; bool, integer and float16 inputs compute and return
float32; Python lists, tuples and scalars of floats are float32 (as in
Keras and PyTorch, see :func:`host_array`); the kernel and bias are cast to
the result dtype.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from .geometry import ConvGeometry, conv_geometry

__all__ = [
    "ACTIVATIONS",
    "MAX_BRANCHES",
    "Prepared",
    "PreparedBranches",
    "channels_last_view",
    "check_allocator",
    "check_out",
    "host_array",
    "is_channels_first",
    "normalize_activation",
    "normalize_data_format",
    "to_channels_first",
    "to_channels_last",
    "prepare",
    "prepare_branches",
    "prepare_depthwise",
    "result_dtype",
]

#: Activation names and the code the kernels use for them (``-D ACTIVATION=``),
#: with Keras' definitions: gelu is the exact (erf) form, elu has alpha 1,
#: leaky_relu a negative slope of 0.2.
ACTIVATIONS = {
    "linear": 0,
    "relu": 1,
    "sigmoid": 2,
    "tanh": 3,
    "gelu": 4,
    "silu": 5,
    "elu": 6,
    "softplus": 7,
    "leaky_relu": 8,
}
#: Other names for the same activations (Keras calls silu "swish" too).
ACTIVATION_ALIASES = {"swish": "silu"}


_device_array_types: dict[type, bool] = {}


def is_device_array(value) -> bool:
    """True for a ``pyopencl.array.Array`` (checked without importing pyopencl)."""
    cls = type(value)
    if cls is np.ndarray:
        return False
    known = _device_array_types.get(cls)
    if known is None:
        known = any(c.__name__ == "Array" and c.__module__.startswith("pyopencl.array") for c in cls.__mro__)
        _device_array_types[cls] = known
    return known


def result_dtype(dtype, name: str = "x") -> np.dtype:
    """The dtype a convolution of an input of ``dtype`` computes and returns."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    if dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize == 2):
        return np.dtype(np.float32)
    raise TypeError(
        f"{name} must hold real numbers (bool, int or float), got dtype {dtype} ({dtype.kind!r} kind)"
    )


DATA_FORMATS = ("channels_last", "channels_first")


def normalize_data_format(data_format) -> str:
    """``"channels_last"`` (also for None, Keras' default) or ``"channels_first"``."""
    if data_format is None:
        return "channels_last"
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    return data_format.lower()


def to_channels_last(x, data_format, ndim: int):
    """(``x`` with its channels last, whether the result must move them back to axis 1).

    For what computes channels-last only (the NumPy reference, the layers
    that chain several steps): a channels-first host array is read through
    a transposed view; a device Array must be channels-last.
    """
    if not is_channels_first(data_format):
        return x, False
    if is_device_array(x):
        raise ValueError(
            "data_format='channels_first' takes host arrays here; give a device x channels-last "
            f"{'(N, L, C_in)' if ndim == 1 else '(N, H, W, C_in)'}"
        )
    x = host_array(x, "x")
    if x.ndim != ndim + 2:
        layout = "(N, C_in, L)" if ndim == 1 else "(N, C_in, H, W)"
        raise ValueError(
            f"x must be {ndim + 2}-D {layout} with data_format='channels_first', got shape {x.shape}"
        )
    return np.moveaxis(x, 1, -1), True


def is_channels_first(data_format) -> bool:
    """Whether ``data_format`` (checked) names the channels-first layout."""
    if type(data_format) is str and data_format == "channels_last":  # the default, without the checks
        return False
    return normalize_data_format(data_format) == "channels_first"


def to_channels_first(result):
    """A channels-last result as a C-contiguous channels-first array."""
    return np.ascontiguousarray(np.moveaxis(result, -1, 1))


def channels_last_view(prepared: Prepared) -> Prepared:
    """A channels-first host call as the same call on a channels-last (transposed) view of ``x``.

    For what only computes channels-last: splitting a problem too large for
    one launch.  The result comes out channels-last.
    """
    g = prepared.geometry
    x = np.asarray(prepared.x).reshape(g.input_shape)
    return dataclasses.replace(
        prepared, x=np.moveaxis(x, 1, -1), geometry=dataclasses.replace(g, channels_first=False)
    )


def check_out(out, prepared: Prepared, shape: tuple[int, ...]):
    """``out`` validated for a call whose result has ``shape`` and ``prepared.dtype``.

    A NumPy array for a host ``x``, a device Array (on x's context, starting
    at its buffer's beginning) for a device ``x``; C-contiguous, writable, of
    exactly the result's shape and dtype, and not sharing memory with ``x``,
    the kernel or the bias (the kernel would read what it is overwriting).
    """
    if out is None:
        return None
    dtype = prepared.dtype
    if is_device_array(prepared.x):
        if not is_device_array(out):
            raise TypeError(f"out must be a pyopencl Array when x is one, got {type(out).__name__}")
        if out.offset != 0:
            raise ValueError("out must start at the beginning of its buffer (a view with an offset cannot)")
        for name in ("x", "kernel", "bias"):
            value = getattr(prepared, name)
            if is_device_array(value) and value.base_data == out.base_data:
                raise ValueError(f"out must not share its buffer with {name}")
    else:
        if type(out) is not np.ndarray:
            raise TypeError(f"out must be a NumPy ndarray when x is a host array, got {type(out).__name__}")
        if not out.flags.writeable:
            raise ValueError("out must be writable")
        for name in ("x", "kernel", "bias"):
            value = getattr(prepared, name)
            if isinstance(value, np.ndarray) and np.shares_memory(value, out):
                raise ValueError(f"out must not share memory with {name}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype} (the result's), got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)} (the result's), got {tuple(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    return out


def check_allocator(allocator, prepared: Prepared, out):
    """``allocator`` validated: None, or a callable for a call on a device ``x`` without ``out``."""
    if allocator is None:
        return None
    if not callable(allocator):
        raise TypeError(
            "allocator must be callable, as pyopencl.tools.MemoryPool(...) is, "
            f"got {type(allocator).__name__}"
        )
    if not is_device_array(prepared.x):
        raise ValueError("allocator is for device results: x is a host array, so the result is an ndarray")
    if out is not None:
        raise ValueError("give out or allocator, not both: out is the result's memory already")
    return allocator


def normalize_activation(activation) -> str:
    """``None`` and ``"linear"`` mean no activation; names are case-insensitive."""
    if activation is None:
        return "linear"
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or one of {tuple(ACTIVATIONS)}, got {activation!r}")
    name = activation.lower()
    name = ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        names = (*ACTIVATIONS, *ACTIVATION_ALIASES)
        raise ValueError(f"activation must be None or one of {names}, got {activation!r}")
    return name


def _as_array(value, name: str) -> np.ndarray:
    """A read-only view or copy of ``value`` as an ndarray, with a clear error."""
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    if is_device_array(value):
        return value
    if isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    arr = host_array(value, name)
    result_dtype(arr.dtype, name)  # rejects object, str, complex, datetime...
    return arr


def host_array(value, name: str) -> np.ndarray:
    """``value`` as an ndarray (no copy when it is one), refusing what would convert wrongly.

    A masked array would lose its mask, and a tensor that requires grad
    cannot be converted at all (PyTorch raises a RuntimeError): both are a
    TypeError naming the argument and saying what to pass instead.  A Python
    list, tuple or scalar of floats becomes float32, as in Keras and PyTorch
    (NumPy would make it float64, which a device without float64 refuses).
    """
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ma.MaskedArray):
        # Converting would silently compute with the hidden values.
        raise TypeError(
            f"{name} is a masked array, whose mask a convolution cannot honour; pass "
            f"{name}.filled(value) with the value the masked elements should have"
        )
    if getattr(value, "requires_grad", False) is True:
        raise TypeError(
            f"{name} is a {type(value).__name__} that requires grad, which NumPy cannot read; "
            f"pass {name}.detach() (and .cpu() for a tensor on a GPU)"
        )
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise TypeError(f"{name} must be an array of numbers, could not convert it: {exc}") from None
    if arr.dtype == np.float64 and isinstance(value, (list, tuple, float)):
        arr = arr.astype(np.float32)
    return arr


@dataclass(frozen=True)
class Prepared:
    """A validated call: what both the device path and the reference consume.

    ``x`` is the caller's array untouched (an ndarray or a device Array);
    ``kernel`` and ``bias`` are C-contiguous in ``dtype`` when they were host
    arrays, or the caller's device Arrays otherwise.
    """

    x: object
    kernel: object
    bias: object
    geometry: ConvGeometry
    dtype: np.dtype
    activation: str
    squeeze: bool  # 2-D image with 2-D kernel (or 1-D with 1-D): return the bare map


def _cast_weights(value, name: str, dtype: np.dtype, shape: tuple[int, ...]):
    if is_device_array(value):
        if value.dtype != dtype:
            raise TypeError(f"{name} on the device must have dtype {dtype}, got {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        return value
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


# Validated geometry per call signature: a repeated call skips the checks
# that depend only on shapes, dtypes and the geometry arguments.  The key uses
# repr() so that, say, strides=True is never mistaken for strides=1, and tells
# host arrays from device Arrays, which are checked differently.
_signatures: dict[tuple, tuple[ConvGeometry, np.dtype, str, bool]] = {}
_MAX_SIGNATURES = 1024
_geometries: dict[ConvGeometry, ConvGeometry] = {}


def _signature(value):
    """(on the device?, shape, dtype) of an ndarray or device Array; None for anything else."""
    if type(value) is np.ndarray:
        return False, value.shape, value.dtype
    if is_device_array(value):
        return True, tuple(value.shape), value.dtype
    return None


def prepare(
    x,
    kernel,
    bias,
    *,
    strides,
    padding,
    dilation_rate,
    activation,
    ndim: int,
    groups=1,
    padding_mode="zeros",
    channels_first: bool = False,
) -> Prepared:
    """Validate every argument of ``conv1d`` (``ndim=1``) or ``conv2d`` (``ndim=2``).

    With ``channels_first``, ``x`` is ``(N, C_in, H, W)`` (``(N, C_in, L)``)
    and so is the result; the kernel keeps Keras' layout.
    """
    x_sig, k_sig = _signature(x), _signature(kernel)
    b_sig = () if bias is None else _signature(bias)
    args = (strides, padding, dilation_rate, activation, ndim, groups, padding_mode, bool(channels_first))
    if x_sig is None or k_sig is None or b_sig is None:
        return _prepare(x, kernel, bias, *args)
    key = (x_sig, k_sig, b_sig, *map(repr, args))
    known = _signatures.get(key)
    if known is None:
        prepared = _prepare(x, kernel, bias, *args)
        if len(_signatures) < _MAX_SIGNATURES:
            # Equal geometries of other signatures (the host and the device
            # call of one problem) become one object, so the cache keys that
            # hold it compare by identity (a field-by-field compare is 0.5 us).
            geometry = _geometries.setdefault(prepared.geometry, prepared.geometry)
            _signatures[key] = (geometry, prepared.dtype, prepared.activation, prepared.squeeze)
            if geometry is not prepared.geometry:  # this call's keys too
                prepared = dataclasses.replace(prepared, geometry=geometry)
        return prepared
    # The same shapes, dtypes and arguments passed every check before: only
    # what _prepare does to host arrays is left (device ones pass as they are).
    geometry, dtype, activation, squeeze = known
    if squeeze:  # host arrays only: the shorthand refuses device ones
        x = x.reshape((1, *x.shape, 1))
        kernel = kernel.reshape((*kernel.shape, 1, 1))
    if not k_sig[0]:
        kernel = np.ascontiguousarray(kernel, dtype=dtype)
    if bias is not None and not b_sig[0]:
        bias = np.ascontiguousarray(bias, dtype=dtype)
    return Prepared(x, kernel, bias, geometry, dtype, activation, squeeze)


def _prepare(
    x,
    kernel,
    bias,
    strides,
    padding,
    dilation_rate,
    activation,
    ndim: int,
    groups,
    padding_mode,
    channels_first,
) -> Prepared:
    activation = normalize_activation(activation)
    x = _as_array(x, "x")
    kernel = _as_array(kernel, "kernel")
    if bias is not None:
        bias = _as_array(bias, "bias")
    dtype = result_dtype(x.dtype, "x")
    result_dtype(kernel.dtype, "kernel")

    squeeze = False
    x_shape, k_shape = tuple(x.shape), tuple(kernel.shape)
    if channels_first:
        if len(x_shape) != ndim + 2:
            layout = "(N, C_in, L)" if ndim == 1 else "(N, C_in, H, W)"
            raise ValueError(
                f"x must be {ndim + 2}-D {layout} with data_format='channels_first', got shape {x_shape}"
            )
    elif len(x_shape) == ndim and len(k_shape) == ndim:
        if is_device_array(x) or is_device_array(kernel):
            raise ValueError(
                f"the {ndim}-D shorthand takes host arrays; give a device x as "
                f"{'(N, L, C_in)' if ndim == 1 else '(N, H, W, C_in)'}"
            )
        squeeze = True
        x = x.reshape((1, *x_shape, 1))
        kernel = kernel.reshape((*k_shape, 1, 1))
    elif len(x_shape) != ndim + 2:
        layout = "(N, L, C_in)" if ndim == 1 else "(N, H, W, C_in)"
        raise ValueError(
            f"x must be {ndim + 2}-D {layout} (or {ndim}-D with a {ndim}-D kernel), got shape {x_shape}"
        )

    geometry = conv_geometry(
        tuple(x.shape),
        tuple(kernel.shape),
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        ndim=ndim,
        groups=groups,
        padding_mode=padding_mode,
        channels_first=channels_first,
    )
    kernel = _cast_weights(kernel, "kernel", dtype, tuple(kernel.shape))
    if bias is not None:
        result_dtype(bias.dtype, "bias")
        if bias.ndim != 1:
            raise ValueError(f"bias must be 1-D of length {geometry.cout}, got shape {tuple(bias.shape)}")
        bias = _cast_weights(bias, "bias", dtype, (geometry.cout,))
    return Prepared(x, kernel, bias, geometry, dtype, activation, squeeze)


def prepare_depthwise(
    x, kernel, bias, *, strides, padding, padding_mode, dilation_rate, activation, channels_first=False
) -> Prepared:
    """Validate a ``depthwise_conv2d`` call, as the grouped convolution it is.

    A depthwise kernel ``(kh, kw, C_in, M)`` is, in memory, the kernel
    ``(kh, kw, 1, C_in * M)`` of a convolution with ``groups=C_in``: output
    channel ``c * M + m`` reads input channel ``c`` with ``kernel[..., c, m]``,
    the order of ``tf.nn.depthwise_conv2d`` and Keras ``DepthwiseConv2D``.
    """
    x = _as_array(x, "x")
    kernel = _as_array(kernel, "kernel")
    if len(x.shape) != 4:
        layout = "(N, C_in, H, W)" if channels_first else "(N, H, W, C_in)"
        raise ValueError(f"x must be 4-D {layout}, got shape {tuple(x.shape)}")
    if len(kernel.shape) != 4:
        raise ValueError(
            f"kernel must be 4-D (kh, kw, C_in, depth_multiplier), got shape {tuple(kernel.shape)}"
        )
    kh, kw, cin, multiplier = (int(v) for v in kernel.shape)
    x_channels = x.shape[1 if channels_first else 3]
    if cin != x_channels:
        raise ValueError(
            f"kernel expects {cin} input channels but x has {x_channels} "
            f"(x shape {tuple(x.shape)}, kernel shape {tuple(kernel.shape)})"
        )
    if multiplier < 1:
        raise ValueError(
            "kernel must have a depth multiplier (its last axis) of at least 1, "
            f"got shape {tuple(kernel.shape)}"
        )
    if not is_device_array(kernel) and not kernel.flags.c_contiguous:
        kernel = np.ascontiguousarray(kernel)
    grouped = kernel.reshape(kh, kw, 1, cin * multiplier)
    return prepare(
        x,
        grouped,
        bias,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        activation=activation,
        ndim=2,
        groups=cin,
        padding_mode=padding_mode,
        channels_first=channels_first,
    )


@dataclass(frozen=True)
class PreparedBranches:
    """A validated call of several "same", stride-1 convolutions of one input (``clatrous.aspp``).

    ``branches`` holds one :class:`Prepared` per branch, all on the same
    ``x`` (the caller's, untouched), dtype and activation.
    """

    x: object
    branches: tuple[Prepared, ...]
    dtype: np.dtype
    activation: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C_in) of the input, which is also (N, H, W) of the result."""
        g = self.branches[0].geometry
        return (g.n, g.h, g.w, g.cin)

    @property
    def channels(self) -> int:
        """Output channels of all the branches together."""
        return sum(p.geometry.cout for p in self.branches)


#: The most branches one fused call takes (the kernel's argument list is fixed).
MAX_BRANCHES = 8


def _sequence(value, name: str, count: int | None) -> list:
    """``value`` as a list: a list or tuple (of ``count`` items when given), nothing else.

    An ndarray is refused rather than iterated: a stack of kernels would be
    split along its first axis, and a (rows, cols) pair would read as two rates.
    """
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a list or tuple with one entry per branch, got {type(value).__name__}"
        )
    if count is None:
        if not 1 <= len(value) <= MAX_BRANCHES:
            raise ValueError(
                f"{name} must have 1 to {MAX_BRANCHES} entries (one per branch), got {len(value)}"
            )
    elif len(value) != count:
        raise ValueError(f"{name} must have one entry per kernel ({count}), got {len(value)}")
    return list(value)


def prepare_branches(x, kernels, rates, biases, activation) -> PreparedBranches:
    """Validate a ``clatrous.aspp`` call: every branch as :func:`prepare` checks a conv2d.

    An error names the branch's entries (``kernels[1]``, ``rates[1]``...),
    before any OpenCL call.
    """
    kernels = _sequence(kernels, "kernels", None)
    rates = _sequence(rates, "rates", len(kernels))
    biases = [None] * len(kernels) if biases is None else _sequence(biases, "biases", len(kernels))
    activation = normalize_activation(activation)
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"x must be an array of numbers, got {type(x).__name__}")
    if not is_device_array(x):
        x = host_array(x, "x")  # once, not once per branch
        result_dtype(x.dtype, "x")
    if len(x.shape) != 4:
        raise ValueError(f"x must be 4-D (N, H, W, C_in), got shape {tuple(x.shape)}")
    prepared = []
    for i, (kernel, rate, bias) in enumerate(zip(kernels, rates, biases, strict=True)):
        if kernel is not None and not is_device_array(kernel) and np.ndim(kernel) != 4:
            raise ValueError(f"kernels[{i}] must be 4-D (kh, kw, C_in, C_out), got shape {np.shape(kernel)}")
        try:
            p = prepare(
                x, kernel, bias, strides=1, padding="same", dilation_rate=rate, activation=activation, ndim=2
            )
        except (TypeError, ValueError) as exc:
            message = str(exc)
            for word, entry in (("kernel", "kernels"), ("bias", "biases"), ("dilation_rate", "rates")):
                message = re.sub(rf"\b{word}\b", f"{entry}[{i}]", message)
            raise type(exc)(f"branch {i}: {message}") from None
        prepared.append(p)
    return PreparedBranches(x, tuple(prepared), prepared[0].dtype, activation)
