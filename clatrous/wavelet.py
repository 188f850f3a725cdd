"""The starlet: the isotropic undecimated wavelet transform, the original algorithme à trous.

Holschneider's 1989 algorithm, as Starck, Fadili and Murtagh define it
(2007): ``c_0`` is the image; ``c_{j+1} = h_j * c_j`` with ``h_j`` the
B3-spline filter ``[1, 4, 6, 4, 1] / 16`` applied along the rows and then
the columns, its taps ``2**j`` apart (the holes, "trous", between them);
the wavelet planes are ``w_{j+1} = c_j - c_{j+1}`` (first generation) or
``w_{j+1} = c_j - h_j * c_{j+1}`` (second generation).  Each filtering pads
its input by ``2 * 2**j`` on every side as ``np.pad`` does with the
``padding_mode``'s numpy name, so any image size and level count work.

Each smoothing is two launches of ``kernels/starlet_pass.cl`` (the B3
filter along the rows, then along the columns, taps ``2**j`` apart, the
border applied inside the kernel through ``border_index``); the column pass
also writes the wavelet plane straight into its slice of the result, so a
level reads and writes the image three times.  The reconstruction adds
planes with ``kernels/starlet_combine.cl``.  Every launch waits for the ones
before by their events, into scratch images reused from level to level: no
scale comes back to the host until the end.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from .arguments import host_array, is_device_array, result_dtype
from .conv import Device
from .errors import UnsupportedDeviceError
from .geometry import BORDERS, normalize_padding_mode
from .runtime import Runtime, get_runtime
from .staging import Workspace, device_empty, forget_workspaces, pending_events

__all__ = ["MAX_LEVELS", "forget_workspaces", "istarlet", "starlet"]

#: The most levels a transform may have (the last filter's taps are 2**(levels - 1) apart).
MAX_LEVELS = 24


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


_kernel_lock = threading.Lock()
_kernels: dict[tuple, cl.Kernel] = {}


def _launch(runtime: Runtime, source: str, options: tuple[str, ...], operands, scalars, size, local, written):
    """Launch ``source``'s kernel on ``operands`` ``(array, element offset, stride)``, ordered by events.

    The launch waits for every event pending on its operands and leaves its
    own on each of them, readers included: the next launch that overwrites
    one (the buffers are reused from level to level) waits for this one.
    An operand it writes (the indices ``written``) keeps only this event,
    which follows all the others; an operand it reads adds it.  (PyOpenCL's
    ``add_event`` would wait on the host once an array holds 12 events.)
    """
    key = (runtime.context.int_ptr, source, options)
    with _kernel_lock:
        kernel = _kernels.get(key)
        if kernel is None:
            kernel = _kernels[key] = cl.Kernel(runtime.program(source, options), source[:-3])
        arrays = list({id(op[0]): op[0] for op in operands}.values())
        waits = [event for array in arrays for event in pending_events(array)]
        offsets = [np.int64(v) for op in operands for v in op[1:]]
        kernel.set_args(*(op[0].base_data for op in operands), *offsets, *scalars)
        event = cl.enqueue_nd_range_kernel(runtime.queue, kernel, size, local, wait_for=waits or None)
    writes = {id(operands[i][0]) for i in written}
    for array in arrays:
        if id(array) in writes:
            array.events[:] = [event]
        else:
            array.events[:] = [*pending_events(array), event]


def _precision(dtype: np.dtype) -> str:
    return f"-DPRECISION={64 if dtype == np.float64 else 32}"


def _add(runtime: Runtime, dtype: np.dtype, a, b, out, n: int, hw: int) -> None:
    """``out = a + b`` on ``n`` planes of ``hw`` elements (operands as for :func:`_launch`)."""
    local = min(64, runtime.info.max_work_group)
    size = (-(-hw // local) * local, n)
    options = (_precision(dtype),)
    _launch(runtime, "starlet_combine.cl", options, (a, b, out), [np.int64(hw)], size, (local, 1), (2,))


#: Pixels per work-item of the filter passes (one vector load a tap).
VW = 8


def _pass(runtime: Runtime, dtype, mode: str, axis: int, x, y, shape, d: int, c=None, w=None) -> None:
    """One filter pass along ``axis`` from ``x`` into ``y``; with ``c`` and ``w``, also ``w = c - y``."""
    n, h, width = shape
    diff = c is not None
    options = (
        _precision(dtype), f"-DBORDER={BORDERS[mode]}", f"-DAXIS={axis}", f"-DDIFF={int(diff)}", f"-DVW={VW}"
    )  # fmt: skip
    operands = (x, y, c or x, w or y)  # unused when DIFF is 0
    local = min(16, runtime.info.max_work_group)
    blocks = -(-width // VW)
    size = (-(-blocks // local) * local, h, n)
    scalars = [np.int32(h), np.int32(width), np.int32(d)]
    written = (1, 3) if diff else (1,)
    _launch(runtime, "starlet_pass.cl", options, operands, scalars, size, (local, 1, 1), written)


def _image(array):
    """Operand ``(array, offset, stride)`` for a contiguous batch of images ``(N, H, W)``."""
    n = array.shape[0]
    return (array, array.offset // array.dtype.itemsize, array.size // max(n, 1))


def _smooth(runtime, dtype, mode, x, level: int, scratch: Workspace, shape, diff=None):
    """``h_level * x`` into a scratch image, a pass along each axis.

    With ``diff = (c, w)`` the column pass also writes ``w = c - h_level * x``.
    """
    d = 2**level
    rows, out = scratch.take(), scratch.take()
    _pass(runtime, dtype, mode, 0, x, _image(rows), shape, d)
    c, w = diff if diff is not None else (None, None)
    _pass(runtime, dtype, mode, 1, _image(rows), _image(out), shape, d, c=c, w=w)
    scratch.give(rows)
    return out


def _plane(array, index: int, planes: int, hw: int):
    """Operand ``(array, offset, stride)`` for plane ``index`` of ``array (N, planes, H, W)``."""
    base = array.offset // array.dtype.itemsize
    return (array, base + index * hw, planes * hw)


def _stage(value, name: str, ndim_plain: int, device):
    """(``value`` on the device with a leading batch axis, dtype, single?, runtime, was on the device?).

    Everything about ``value`` itself is checked before any OpenCL call; a
    host array is uploaded once, a device Array used where it is (its queue).
    """
    value, dtype, single = _images(value, name, ndim_plain)
    on_device = is_device_array(value)
    if on_device:
        if device is not None and device is not value.queue:
            raise ValueError(f"device must be left out when {name} is a pyopencl Array (its queue is used)")
        runtime = get_runtime(value.queue)
    else:
        runtime = get_runtime(device)
    if dtype == np.float64 and not runtime.info.fp64:
        raise UnsupportedDeviceError(
            f"{name} is float64 but device {runtime.info.name!r} has no cl_khr_fp64; pass float32 data"
        )
    shape = (1, *value.shape) if single else tuple(value.shape)
    if on_device:
        batch = value.reshape(shape)
    else:
        batch = cl_array.to_device(runtime.queue, np.ascontiguousarray(value, dtype).reshape(shape))
    return batch, dtype, single, runtime, on_device


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
    c, dtype, single, runtime, on_device = _stage(image, "image", 2, device)
    shape = n, h, w = c.shape
    hw = h * w
    scratch = Workspace(runtime, shape, dtype)
    # A result that is read back can be a scratch buffer too (warm memory).
    out_shape = (n, levels + 1, h, w)
    out = device_empty(runtime, out_shape, dtype) if on_device else scratch.take(out_shape)
    operand = _image(c)
    for j in range(levels):
        plane = _plane(out, j, levels + 1, hw)
        if generation == 1:  # the column pass writes c_{j+1} and w_{j+1} = c_j - c_{j+1}
            smooth = _smooth(runtime, dtype, mode, operand, j, scratch, shape, diff=(operand, plane))
        else:  # w_{j+1} = c_j - h_j * c_{j+1}
            smooth = _smooth(runtime, dtype, mode, operand, j, scratch, shape)
            again = _smooth(runtime, dtype, mode, _image(smooth), j, scratch, shape, diff=(operand, plane))
            scratch.give(again)
        if j:
            scratch.give(c)  # the image itself (level 0) is the caller's
        c, operand = smooth, _image(smooth)
    _copy_planes(runtime, dtype, _image(c), _plane(out, levels, levels + 1, hw), n, hw)
    if not on_device:
        result = out.get()  # waits for the whole chain
        scratch.give(out)
        scratch.close()
        return result[0] if single else result
    scratch.close()
    return out.reshape(levels + 1, h, w) if single else out


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
    coeffs, dtype, single, runtime, on_device = _stage(coefficients, "coefficients", 3, device)
    n, planes, h, w = coeffs.shape
    levels, hw = planes - 1, h * w
    shape = (n, h, w)
    scratch = Workspace(runtime, shape, dtype)
    c = scratch.take()
    _copy_planes(runtime, dtype, _plane(coeffs, levels, planes, hw), _image(c), n, hw)
    for j in reversed(range(levels)):
        if generation == 2:
            smooth = _smooth(runtime, dtype, mode, _image(c), j, scratch, shape)
            scratch.give(c)
            c = smooth
        _add(runtime, dtype, (c, 0, hw), _plane(coeffs, j, planes, hw), (c, 0, hw), n, hw)
    if on_device:
        scratch.all = [a for a in scratch.all if a is not c]  # c is the result: the caller's now
        scratch.close()
        return c.reshape((h, w) if single else (n, h, w))
    result = c.get()
    scratch.close()
    return result[0] if single else result


def _copy_planes(runtime: Runtime, dtype: np.dtype, src, dst, n: int, hw: int) -> None:
    """Plane by plane, ``n`` planes of ``hw`` elements from operand ``src`` to ``dst``, after their events.

    One copy per plane (the planes of a coefficient array are strided), then
    one marker that both arrays carry: the next writer of either waits for it.
    """
    size = dtype.itemsize
    waits = [*pending_events(src[0]), *pending_events(dst[0])]
    copies = [
        cl.enqueue_copy(
            runtime.queue,
            dst[0].base_data,
            src[0].base_data,
            byte_count=hw * size,
            src_offset=(src[1] + i * src[2]) * size,
            dst_offset=(dst[1] + i * dst[2]) * size,
            wait_for=waits or None,
        )  # fmt: skip
        for i in range(n)
    ]
    marker = cl.enqueue_marker(runtime.queue, wait_for=copies)
    dst[0].events[:] = [*pending_events(dst[0]), marker]  # other planes of dst may still be written
    src[0].events[:] = [*pending_events(src[0]), marker]
