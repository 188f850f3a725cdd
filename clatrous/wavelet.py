"""The starlet: the isotropic undecimated wavelet transform, the original algorithme à trous.

Holschneider's 1989 algorithm, as Starck, Fadili and Murtagh define it
(2007): ``c_0`` is the image; ``c_{j+1} = h_j * c_j`` with ``h_j`` the
B3-spline filter ``[1, 4, 6, 4, 1] / 16`` applied along the rows and then
the columns, its taps ``2**j`` apart (the holes, "trous", between them);
the wavelet planes are ``w_{j+1} = c_j - c_{j+1}`` (first generation) or
``w_{j+1} = c_j - h_j * c_{j+1}`` (second generation).  Each filtering pads
its input by ``2 * 2**j`` on every side as ``np.pad`` does with the
``padding_mode``'s numpy name, so any image size and level count work.

It plugs into the pipeline as a chain of the dense operation's launches: each
smoothing is two :func:`clatrous.conv2d` calls on device arrays (a 5x1 then
a 1x5 kernel at rate ``2**j``, "same" padding, the border applied inside the
kernel), and each plane one launch of ``kernels/starlet_combine.cl`` that
writes it straight into its slice of the result.  Every launch waits for the
one before by its event: no scale comes back to the host until the end.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from .arguments import host_array, is_device_array, result_dtype
from .conv import Device, conv2d
from .errors import UnsupportedDeviceError
from .geometry import normalize_padding_mode
from .reference import B3
from .runtime import Runtime, get_runtime
from .staging import pending_events

__all__ = ["MAX_LEVELS", "istarlet", "starlet"]

#: The most levels a transform may have (the last filter's taps are 2**(levels - 1) apart).
MAX_LEVELS = 24

_ROWS = B3.reshape(5, 1, 1, 1)
_COLUMNS = B3.reshape(1, 5, 1, 1)


def _check(levels, generation, padding_mode) -> tuple[int, int, str]:
    if isinstance(generation, bool) or generation not in (1, 2):
        raise ValueError(f"generation must be 1 or 2, got {generation!r}")
    mode = normalize_padding_mode(padding_mode)
    if levels is None:
        return 0, int(generation), mode
    if not isinstance(levels, numbers.Integral) or isinstance(levels, (bool, np.bool_)):
        raise TypeError(f"levels must be a positive int, got {levels!r}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be from 1 to {MAX_LEVELS}, got {levels!r}")
    return int(levels), int(generation), mode


def _images(value, name: str, ndim_plain: int):
    """``value`` (host or device), its dtype, and whether it was a single image."""
    if not is_device_array(value):
        value = host_array(value, name)
    dtype = result_dtype(value.dtype, name)
    shape = tuple(value.shape)
    if len(shape) not in (ndim_plain, ndim_plain + 1):
        what = "(H, W) or a batch (N, H, W)" if ndim_plain == 2 else "(J + 1, H, W) or (N, J + 1, H, W)"
        raise ValueError(f"{name} must be {what}, got shape {shape}")
    if min(shape[-2:]) < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")
    if is_device_array(value):
        if value.dtype != dtype:
            raise TypeError(f"{name} on the device must be float32 or float64, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{name} on the device must be C-contiguous")
    return value, dtype, len(shape) == ndim_plain


_combine_lock = threading.Lock()
_combines: dict[tuple, cl.Kernel] = {}


def _combine(runtime: Runtime, dtype: np.dtype, sign: int, a, b, out, n: int, hw: int) -> None:
    """``out = a + sign * b`` on ``n`` planes of ``hw`` elements.

    Each operand is ``(array, element offset, stride between planes)``.
    """
    precision = 64 if dtype == np.float64 else 32
    key = (runtime.context.int_ptr, precision, sign)
    with _combine_lock:
        kernel = _combines.get(key)
        if kernel is None:
            program = runtime.program("starlet_combine.cl", (f"-DPRECISION={precision}", f"-DSIGN={sign}"))
            kernel = _combines[key] = cl.Kernel(program, "starlet_combine")
        waits = [*pending_events(a[0]), *pending_events(b[0]), *pending_events(out[0])]
        scalars = [np.int64(v) for operand in (a, b, out) for v in operand[1:]]
        kernel.set_args(a[0].base_data, b[0].base_data, out[0].base_data, *scalars, np.int64(hw))
        local = min(64, runtime.info.max_work_group)
        size = (-(-hw // local) * local, n)
        event = cl.enqueue_nd_range_kernel(runtime.queue, kernel, size, (local, 1), wait_for=waits or None)
    # The inputs carry the event too: the next launch that overwrites one
    # of them (the buffers are reused from level to level) waits for this read.
    for array in {id(op[0]): op[0] for op in (a, b, out)}.values():
        array.add_event(event)


class _Scratch:
    """The intermediate images of one transform, allocated once and reused level after level.

    Fresh 4096x4096 results cost a CPU device their page faults at every
    launch; reused ones do not.  Every launch writing a buffer waits for the
    events on it, which include its last readers', so an out-of-order queue
    is safe too.
    """

    def __init__(self, queue, shape, dtype):
        self.queue, self.shape, self.dtype = queue, shape, dtype
        self.free: list = []

    def take(self):
        return self.free.pop() if self.free else cl_array.empty(self.queue, self.shape, self.dtype)

    def give(self, array) -> None:
        self.free.append(array)


def _smooth(c4, level: int, mode: str, scratch: _Scratch):
    """``h_level * c`` for device images ``c4 (N, H, W, 1)``, as two chained launches into scratch."""
    d = 2**level
    rows, out = scratch.take(), scratch.take()
    conv2d(c4, _ROWS, padding="same", dilation_rate=(d, 1), padding_mode=mode, out=rows)
    conv2d(rows, _COLUMNS, padding="same", dilation_rate=(1, d), padding_mode=mode, out=out)
    # The column pass read rows: a later writer of rows waits for it.
    for event in out.events:
        rows.add_event(event)
    scratch.give(rows)
    return out


def _plane(array, index: int, planes: int, hw: int):
    """Operand ``(array, offset, stride)`` for plane ``index`` of ``array (N, planes, H, W)``."""
    base = array.offset // array.dtype.itemsize
    return (array, base + index * hw, planes * hw)


def _runtime(value, device) -> Runtime:
    if is_device_array(value):
        if device is not None and device is not value.queue:
            raise ValueError("device must be left out when the input is a pyopencl Array (its queue is used)")
        return get_runtime(value.queue)
    return get_runtime(device)


def _check_fp64(runtime: Runtime, dtype: np.dtype, name: str) -> None:
    if dtype == np.float64 and not runtime.info.fp64:
        raise UnsupportedDeviceError(
            f"{name} is float64 but device {runtime.info.name!r} has no cl_khr_fp64; pass float32 data"
        )


def starlet(
    image,
    levels: int,
    *,
    generation: int = 1,
    padding_mode: str = "reflect",
    device: Device = None,
):
    """The starlet transform of an image or a batch of images, on an OpenCL device.

    Parameters
    ----------
    image : (H, W) or (N, H, W) array_like or pyopencl.array.Array
        float32 and float64 keep their dtype; integers and bools compute in float32.
    levels : int
        The number of wavelet planes J, from 1 to :data:`MAX_LEVELS`.
    generation : {1, 2}
        1: ``w_{j+1} = c_j - c_{j+1}`` (reconstruction sums the planes);
        2: ``w_{j+1} = c_j - h_j * c_{j+1}`` (Starck, Fadili & Murtagh 2007).
    padding_mode : {"reflect", "zeros", "replicate", "circular", "symmetric"}
        How each filtering pads, as ``np.pad``'s reflect, constant, edge,
        wrap and symmetric; the default is numpy's reflect (the edge sample
        is not repeated).
    device : pyopencl Device, Context or CommandQueue, optional
        As for :func:`clatrous.conv2d` (left out for a device ``image``).

    Returns
    -------
    (J + 1, H, W) or (N, J + 1, H, W) ndarray, or an Array for a device ``image``
        ``[w_1, ..., w_J, c_J]``, the finest plane first.

    Raises
    ------
    TypeError
        ``image`` not real numbers (named ``image``), ``levels`` not an int,
        float64 on a device without it.
    ValueError
        A shape that is not one image or a batch, ``levels`` or
        ``generation`` out of range, an unknown ``padding_mode``.

    Examples
    --------
    >>> import numpy as np, clatrous
    >>> image = np.arange(64.0).reshape(8, 8)
    >>> planes = clatrous.starlet(image, 2)
    >>> planes.shape
    (3, 8, 8)
    >>> bool(np.allclose(planes.sum(axis=0), image))
    True
    """
    levels, generation, mode = _check(levels, generation, padding_mode)
    image, dtype, single = _images(image, "image", 2)
    runtime = _runtime(image, device)
    _check_fp64(runtime, dtype, "image")
    queue = runtime.queue
    on_device = is_device_array(image)
    n, h, w = (1, *image.shape) if single else tuple(image.shape)
    hw = h * w
    if on_device:
        c = image.reshape(n, h, w, 1)
    else:
        c = cl_array.to_device(queue, np.ascontiguousarray(image, dtype).reshape(n, h, w, 1))
    out = cl_array.empty(queue, (n, levels + 1, h, w), dtype)
    scratch = _Scratch(queue, (n, h, w, 1), dtype)
    for j in range(levels):
        smooth = _smooth(c, j, mode, scratch)
        subtracted = smooth if generation == 1 else _smooth(smooth, j, mode, scratch)
        _combine(runtime, dtype, -1, (c, c.offset // dtype.itemsize, hw), (subtracted, 0, hw),
                 _plane(out, j, levels + 1, hw), n, hw)  # fmt: skip
        if subtracted is not smooth:
            scratch.give(subtracted)
        if j:
            scratch.give(c)  # the image itself (level 0) is the caller's
        c = smooth
    _combine_copy(runtime, dtype, c, _plane(out, levels, levels + 1, hw), n, hw)
    if single:
        out = out.reshape(levels + 1, h, w)
    return out if on_device else out.get()


def _combine_copy(runtime: Runtime, dtype: np.dtype, c, target, n: int, hw: int) -> None:
    """The last smooth plane into its slice: one device copy per image, after c's events."""
    array, offset, stride = target
    size = dtype.itemsize
    waits = [*pending_events(c), *pending_events(array)]
    events = [
        cl.enqueue_copy(
            runtime.queue,
            array.base_data,
            c.base_data,
            byte_count=hw * size,
            src_offset=c.offset + i * hw * size,
            dst_offset=(offset + i * stride) * size,
            wait_for=waits or None,
        )  # fmt: skip
        for i in range(n)
    ]
    for event in events:
        array.add_event(event)


def istarlet(
    coefficients,
    *,
    generation: int = 1,
    padding_mode: str = "reflect",
    device: Device = None,
):
    """The image back from its starlet coefficients, on an OpenCL device.

    Parameters
    ----------
    coefficients : (J + 1, H, W) or (N, J + 1, H, W) array_like or pyopencl.array.Array
        What :func:`starlet` returns: ``[w_1, ..., w_J, c_J]``.
    generation, padding_mode, device
        As given to :func:`starlet`.  Generation 1 sums the planes;
        generation 2 reconstructs recursively, ``c_j = h_j * c_{j+1} + w_{j+1}``.

    Returns
    -------
    (H, W) or (N, H, W) ndarray, or an Array for device ``coefficients``
        Exact to rounding for the transform of the same generation and border.

    Raises
    ------
    TypeError, ValueError
        As for :func:`starlet`, naming ``coefficients``.
    """
    _, generation, mode = _check(None, generation, padding_mode)
    coefficients, dtype, single = _images(coefficients, "coefficients", 3)
    runtime = _runtime(coefficients, device)
    _check_fp64(runtime, dtype, "coefficients")
    queue = runtime.queue
    on_device = is_device_array(coefficients)
    shape = tuple(coefficients.shape)
    n, planes, h, w = (1, *shape) if single else shape
    levels, hw = planes - 1, h * w
    if on_device:
        coeffs = coefficients.reshape(n, planes, h, w)
    else:
        coeffs = cl_array.to_device(queue, np.ascontiguousarray(coefficients, dtype).reshape(n, planes, h, w))
    scratch = _Scratch(queue, (n, h, w, 1), dtype)
    c = scratch.take()
    _combine_copy_from(runtime, dtype, coeffs, levels, planes, c, n, hw)
    for j in reversed(range(levels)):
        if generation == 2:
            smooth = _smooth(c, j, mode, scratch)
            scratch.give(c)
            c = smooth
        _combine(runtime, dtype, 1, (c, 0, hw), _plane(coeffs, j, planes, hw), (c, 0, hw), n, hw)
    out = c.reshape((h, w) if single else (n, h, w))
    return out if on_device else out.get()


def _combine_copy_from(runtime: Runtime, dtype: np.dtype, coeffs, index: int, planes: int, c, n: int, hw):
    """Plane ``index`` of every image of ``coeffs`` into the contiguous ``c``."""
    size = dtype.itemsize
    base = coeffs.offset // size
    waits = pending_events(coeffs)
    for i in range(n):
        event = cl.enqueue_copy(
            runtime.queue, c.base_data, coeffs.base_data, byte_count=hw * size,
            src_offset=(base + (i * planes + index) * hw) * size, dst_offset=i * hw * size,
            wait_for=waits or None,
        )  # fmt: skip
        c.add_event(event)
