"""``conv1d`` and ``conv2d``: the dense dilated convolution.

The operation is declared here as data (:data:`CONV2D`: its variants, its
reference and its defaults); a call is :func:`clatrous.arguments.prepare`
(every check, no OpenCL yet) then :func:`clatrous.execute.run`.  A 1-D
convolution is computed as a 2-D one with a single row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyopencl as cl
import pyopencl.array as cl_array

from . import params, reference
from .arguments import (
    check_allocator,
    check_out,
    is_channels_first,
    is_device_array,
    prepare,
    prepare_depthwise,
)
from .execute import run, runtime_for
from .variants import CONV2D_VARIANTS, Operation

__all__ = ["CONV2D", "conv1d", "conv2d", "depthwise_conv2d"]

#: What the functions take as an array: anything NumPy converts, or a device Array.
ArrayLike = npt.ArrayLike | cl_array.Array
#: An int, or one int per spatial axis.
IntOrPair = int | Sequence[int]
#: Where to run: a Device, a Context, a CommandQueue, or None for the default.
Device = cl.Device | cl.Context | cl.CommandQueue | None
#: What the functions return: an ndarray, or a device Array for a device ``x``.
Result = np.ndarray | cl_array.Array
#: Allocates a device result's buffer of a size in bytes, as PyOpenCL's arrays take it.
Allocator = Callable[[int], cl.Buffer]

#: The dense convolution: its kernel variants, its NumPy reference, its defaults.
CONV2D = Operation("conv2d", CONV2D_VARIANTS, reference.conv_prepared, params.conv2d_defaults)


def conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: IntOrPair = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: IntOrPair = 1,
    activation: str | None = None,
    groups: int = 1,
    padding_mode: str = "zeros",
    data_format: Literal["channels_last", "channels_first"] | None = "channels_last",
    out: Result | None = None,
    allocator: Allocator | None = None,
    device: Device = None,
) -> Result:
    """Dilated (atrous) 2-D cross-correlation on an OpenCL device.

    Computes what Keras ``Conv2D(dilation_rate=...)``, TensorFlow and PyTorch
    compute: for every output pixel and output channel,
    ``sum over ky, kx, ci of x[n, oy*sh + ky*dh - pad_top, ox*sw + kx*dw - pad_left, ci]
    * kernel[ky, kx, ci, co]``, plus ``bias[co]``, through ``activation``.

    Parameters
    ----------
    x : (N, H, W, C_in) array_like or pyopencl.array.Array
        Channels last.  A 2-D image with a 2-D kernel is shorthand for one
        channel in and out, and returns a 2-D map.
    kernel : (kh, kw, C_in // groups, C_out) array_like
    bias : (C_out,) array_like, optional
    strides, dilation_rate : int or (int, int)
        Per (rows, cols).  Strides and dilation above 1 may be combined.
    padding : {"valid", "same"}, int, (int, int) or ((top, bottom), (left, right))
        ``"same"`` follows TensorFlow: output ``ceil(n/s)``, the odd pixel of
        padding at the bottom/right.  Words are case-insensitive.
    activation : str or None
        ``None``/``"linear"``, ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``
        (exact erf form), ``"silu"``/``"swish"``, ``"elu"``, ``"softplus"``,
        ``"leaky_relu"`` (slope 0.2), as Keras defines them; applied inside the kernel.
    groups : int
        Split the channels into this many groups (Keras ``groups``, PyTorch
        ``groups``): ``C_in`` and ``C_out`` must be multiples, and output
        channel ``co`` reads the ``C_in // groups`` input channels of group
        ``co // (C_out // groups)``.  ``groups=C_in`` is a depthwise
        convolution (see :func:`depthwise_conv2d` for Keras' kernel layout).
    padding_mode : {"zeros", "reflect", "replicate", "circular", "symmetric"}
        What the padding reads: exactly ``np.pad(x, pads, mode)`` with
        ``constant``, ``reflect``, ``edge``, ``wrap``, ``symmetric``, for any
        pad width (also wider than the image).  Applied inside the kernels;
        no padded copy of ``x`` is made.  See the README for how these names
        map to scipy.ndimage's and PyTorch's.
    data_format : {"channels_last", "channels_first"}
        ``"channels_first"``: ``x`` is ``(N, C_in, H, W)`` and so is the result
        ``(N, C_out, Ho, Wo)``, host arrays and device Arrays alike.  The
        plane kernel indexes that layout itself; only a host call with many
        multiply-adds per output (``kh * kw * C_in / groups`` above
        ``clatrous.params.CHANNELS_FIRST_MACS``), or one split to fit the
        device, runs on a transposed copy instead, which is faster there.
        The kernel keeps Keras' layout either way, as in Keras.
    out : ndarray or pyopencl.array.Array, optional
        Where to write the result (as scipy.ndimage's and OpenCV's ``out``):
        of the result's shape and dtype, C-contiguous, writable, sharing no
        memory with ``x``, ``kernel`` or ``bias``; an ndarray for a host
        ``x``, an Array starting at its buffer's beginning for a device one.
        It is returned.  The kernel writes it directly (channels-first aside;
        on a CPU device, in place when it starts on a 128-byte boundary, as
        :func:`clatrous.aligned_empty` makes it, else through one copy).
    allocator : callable, optional
        How a device result's buffer is allocated, as PyOpenCL's arrays take
        it; ``pyopencl.tools.MemoryPool(pyopencl.tools.ImmediateAllocator(queue))``
        lets a loop reuse the buffers of the results it dropped, instead of
        asking the driver for new memory every call.  For a device ``x``
        only, and not with ``out``.  A pool hands a dropped result's buffer
        to the next call at once, which the queue orders behind every
        command already on it; so, as with PyOpenCL's own pools, use one
        in-order queue, or finish with a result on any other queue before
        dropping it.
    device : pyopencl Device, Context or CommandQueue, optional
        Default: ``CLATROUS_DEVICE``, else ``PYOPENCL_CTX``, else the first GPU, else the first CPU.

    Returns
    -------
    (N, Ho, Wo, C_out) ndarray, or an Array on ``x``'s queue when ``x`` is one.
        float64 when ``x`` is float64, float32 otherwise.

    Raises
    ------
    TypeError
        An argument of the wrong type or dtype (complex, object, a masked
        array, a tensor that requires grad, a float64 call on a device
        without float64...), named in the message, before any OpenCL call.
    ValueError
        A shape, size or word that does not fit (channels that do not match,
        a dilated kernel larger than the padded input, a bad ``out``...),
        named in the message, before any OpenCL call.
    clatrous.DeviceNotFoundError, clatrous.BuildError, clatrous.DeviceMemoryError
        No usable device; a kernel its compiler refused (the log and the
        specialised source are attached); a problem the device cannot hold
        even split.

    Examples
    --------
    >>> import numpy as np, clatrous
    >>> simg = np.array([[4, 5, 8, 7], [1, 8, 8, 8], [3, 6, 6, 4], [6, 5, 7, 8]], np.float32)
    >>> clatrous.conv2d(simg, np.array([[10, -8], [15, -2]]), dilation_rate=2)
    array([[ 9., 76.],
           [22., 75.]], dtype=float32)
    """
    prepared = prepare(
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
        channels_first=is_channels_first(data_format),
    )
    g = prepared.geometry
    return _run_into(prepared, device, (g.ho, g.wo) if prepared.squeeze else g.output_shape, out, allocator)


def conv1d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
    activation: str | None = None,
    groups: int = 1,
    padding_mode: str = "zeros",
    data_format: Literal["channels_last", "channels_first"] | None = "channels_last",
    out: Result | None = None,
    allocator: Allocator | None = None,
    device: Device = None,
) -> Result:
    """Dilated 1-D cross-correlation on an OpenCL device, as Keras ``Conv1D``.

    Parameters
    ----------
    x : (N, L, C_in) array_like or pyopencl.array.Array
        A 1-D signal with a 1-D kernel is shorthand for one channel in and out.
    kernel : (k, C_in // groups, C_out) array_like
    bias : (C_out,) array_like, optional
    strides, dilation_rate : int
    padding : {"valid", "same", "causal"}, int or (left, right)
        ``"causal"`` pads ``dilation_rate * (k - 1)`` on the left only, as
        WaveNet does, so output ``t`` sees inputs up to ``t``.
    activation, groups, padding_mode, data_format, out, allocator, device
        As for :func:`conv2d` (channels-first: ``x`` ``(N, C_in, L)``, result ``(N, C_out, Lo)``).

    Returns
    -------
    (N, Lo, C_out) ndarray, or an Array on ``x``'s queue when ``x`` is one.

    Raises
    ------
    TypeError, ValueError, clatrous.ClatrousError
        As :func:`conv2d` raises them, naming the argument.
    """
    channels_first = is_channels_first(data_format)
    prepared = prepare(
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
        channels_first=channels_first,
    )
    g = prepared.geometry
    shape = (g.n, g.cout, g.wo) if channels_first else (g.wo,) if prepared.squeeze else (g.n, g.wo, g.cout)
    return _run_into(prepared, device, shape, out, allocator)


def depthwise_conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: IntOrPair = 1,
    padding: str | int | Sequence = "valid",
    padding_mode: str = "zeros",
    dilation_rate: IntOrPair = 1,
    activation: str | None = None,
    data_format: Literal["channels_last", "channels_first"] | None = "channels_last",
    out: Result | None = None,
    allocator: Allocator | None = None,
    device: Device = None,
) -> Result:
    """Depthwise dilated 2-D convolution, as ``tf.nn.depthwise_conv2d`` and Keras ``DepthwiseConv2D``.

    Each input channel ``c`` is convolved with its own ``M`` filters
    ``kernel[:, :, c, m]``; output channel ``c * M + m`` holds the result.
    It is :func:`conv2d` with ``groups=C_in`` and the kernel reshaped to
    ``(kh, kw, 1, C_in * M)`` (the same memory), run by a kernel of its own
    that vectorises along the channels.

    Parameters
    ----------
    x : (N, H, W, C_in) array_like or pyopencl.array.Array
    kernel : (kh, kw, C_in, M) array_like
        ``M``, the depth multiplier, at least 1.
    bias : (C_in * M,) array_like, optional
    strides, padding, padding_mode, dilation_rate, activation, data_format, out, allocator, device
        As for :func:`conv2d`.

    Returns
    -------
    (N, Ho, Wo, C_in * M) ndarray (``(N, C_in * M, Ho, Wo)`` channels-first), or an
    Array on ``x``'s queue when ``x`` is one.

    Raises
    ------
    TypeError, ValueError, clatrous.ClatrousError
        As :func:`conv2d` raises them, naming the argument.
    """
    prepared = prepare_depthwise(
        x,
        kernel,
        bias,
        strides=strides,
        padding=padding,
        padding_mode=padding_mode,
        dilation_rate=dilation_rate,
        activation=activation,
        channels_first=is_channels_first(data_format),
    )
    return _run_into(prepared, device, prepared.geometry.output_shape, out, allocator)


def _run_into(prepared, device, shape, out, allocator=None):
    """Run, in ``out`` when given, and give the result the caller's ``shape``.

    The kernels write the geometry's ``output_shape`` in the caller's
    layout; ``shape`` is the same memory as the caller sees it (a 1-D
    call's 3-D shape, or the bare map of the shorthands, which take host
    arrays only).  ``out`` is checked before any OpenCL call and written by
    the kernel itself; so is a device result from ``allocator``.
    """
    check_out(out, prepared, shape)
    if check_allocator(allocator, prepared, out) is not None:
        queue = runtime_for(prepared, device).queue  # x's, once device is checked
        out = cl_array.empty(queue, shape, prepared.dtype, allocator=allocator)
    run_shape = prepared.geometry.output_shape if prepared.squeeze else shape
    direct = out if out is None or is_device_array(out) else out.reshape(run_shape)
    result = run(CONV2D, prepared, device, run_shape, out=direct)
    if out is not None:
        return out
    return result.reshape(shape) if prepared.squeeze else result
