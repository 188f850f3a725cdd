"""``conv1d`` and ``conv2d``: validate, plan, launch.

The path of a call: :func:`clatrous.arguments.prepare` checks every argument
(no OpenCL yet); :func:`clatrous.runtime.get_runtime` finds the queue; the
launch plan for (device, geometry, dtype, activation, bias) comes from a
per-process cache, filled on first use from :mod:`clatrous.tuning`; then the
inputs are uploaded, the kernel runs and the output comes back.  A repeated
call builds nothing and allocates only its inputs and output.
"""

from __future__ import annotations

import ctypes
import math
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from . import splitting, tuning, variants
from .arguments import Prepared, is_device_array, prepare
from .errors import DeviceMemoryError, UnsupportedDeviceError
from .runtime import Runtime, get_runtime, settings

__all__ = ["conv1d", "conv2d"]

_MF = cl.mem_flags
_launches: dict[tuple, Launch] = {}
_launches_lock = threading.Lock()


def conv2d(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    activation=None,
    device=None,
    _choice=None,
):
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
    kernel : (kh, kw, C_in, C_out) array_like
    bias : (C_out,) array_like, optional
    strides, dilation_rate : int or (int, int)
        Per (rows, cols).  Strides and dilation above 1 may be combined.
    padding : {"valid", "same"}, int, (int, int) or ((top, bottom), (left, right))
        ``"same"`` follows TensorFlow: output ``ceil(n/s)``, the odd pixel of
        padding at the bottom/right.  Words are case-insensitive.
    activation : {None, "linear", "relu", "sigmoid", "tanh"}
        Applied inside the kernel.
    device : pyopencl Device, Context or CommandQueue, optional
        Default: ``CLATROUS_DEVICE``, else the first GPU, else the first CPU.

    Returns
    -------
    (N, Ho, Wo, C_out) ndarray, or an Array on ``x``'s queue when ``x`` is one.
        float64 when ``x`` is float64, float32 otherwise.

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
    )
    out = _execute(prepared, device, prepared.geometry.output_shape, _choice)
    return out[0, :, :, 0] if prepared.squeeze else out


def conv1d(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    activation=None,
    device=None,
    _choice=None,
):
    """Dilated 1-D cross-correlation on an OpenCL device, as Keras ``Conv1D``.

    Parameters
    ----------
    x : (N, L, C_in) array_like or pyopencl.array.Array
        A 1-D signal with a 1-D kernel is shorthand for one channel in and out.
    kernel : (k, C_in, C_out) array_like
    bias : (C_out,) array_like, optional
    strides, dilation_rate : int
    padding : {"valid", "same", "causal"}, int or (left, right)
        ``"causal"`` pads ``dilation_rate * (k - 1)`` on the left only, as
        WaveNet does, so output ``t`` sees inputs up to ``t``.
    activation, device
        As for :func:`conv2d`.

    Returns
    -------
    (N, Lo, C_out) ndarray, or an Array on ``x``'s queue when ``x`` is one.
    """
    prepared = prepare(
        x,
        kernel,
        bias,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        activation=activation,
        ndim=1,
    )
    g = prepared.geometry
    out = _execute(prepared, device, (g.n, g.wo, g.cout), _choice)
    return out[0, :, 0] if prepared.squeeze else out


# ---------------------------------------------------------------- launch


def _runtime_for(prepared: Prepared, device) -> Runtime:
    if is_device_array(prepared.x):
        if device is not None and device is not prepared.x.queue:
            raise ValueError("device must be left out when x is a pyopencl Array (x's queue is used)")
        return get_runtime(prepared.x.queue)
    return get_runtime(device)


def forget_launches() -> None:
    """Drop the cached launches, so the next calls ask :mod:`clatrous.tuning` again."""
    with _launches_lock:
        _launches.clear()


class Launch:
    """A plan with its own kernel object, whose geometry arguments are set once.

    Setting a scalar kernel argument costs microseconds on some drivers, so
    each plan keeps a kernel whose scalars never change; a call sets only the
    four buffers, under the lock, then enqueues.  For small results on the
    device it also keeps an array to make the next result like (see
    :meth:`device_result`).
    """

    __slots__ = ("plan", "kernel", "lock", "x_offset", "result_like")

    def __init__(self, runtime: Runtime, plan: variants.Plan):
        self.plan = plan
        self.kernel = cl.Kernel(runtime.program(plan.source, plan.options), plan.kernel_name)
        for index, value in enumerate(plan.scalars, start=4):
            self.kernel.set_arg(index, value)
        # The last argument: where x starts in its buffer, in elements.  Set
        # again only when a call's differs from the previous call's.
        self.x_offset = 0
        self.kernel.set_arg(4 + len(plan.scalars), np.int32(0))
        self.lock = threading.Lock()
        self.result_like = None

    def device_result(self, queue: cl.CommandQueue, shape: tuple[int, ...], dtype: np.dtype):
        """A new device Array for a result.

        PyOpenCL's ``empty`` spends about 9 us checking the shape, while
        ``empty_like`` of a kept array of that shape takes about 1 us: a tenth
        of a small call's time (W1).  Only a small result keeps such a
        template, so a plan holds at most ``_SMALL_BYTES`` of device memory.
        """
        like = self.result_like
        if like is not None and like.queue is queue and like.shape == shape and like.dtype == dtype:
            return cl_array.empty_like(like)
        result = cl_array.empty(queue, shape, dtype)
        if result.nbytes <= _SMALL_BYTES:
            self.result_like = cl_array.empty(queue, shape, dtype)
        return result

    def enqueue(self, queue: cl.CommandQueue, x_buf, x_offset: int, w_buf, b_buf, y_buf) -> cl.Event:
        """Set the four buffers (and where x starts in its own) and enqueue the kernel."""
        plan, kernel = self.plan, self.kernel
        with self.lock:
            if x_offset != self.x_offset:
                kernel.set_arg(4 + len(plan.scalars), np.int32(x_offset))
                self.x_offset = x_offset
            kernel.set_arg(0, x_buf)
            kernel.set_arg(1, w_buf)
            kernel.set_arg(2, b_buf)
            kernel.set_arg(3, y_buf)
            return cl.enqueue_nd_range_kernel(queue, kernel, plan.global_size, plan.local_size)


def plan_for(runtime: Runtime, prepared: Prepared, choice: tuple[str, dict] | None = None) -> Launch:
    """The launch for this runtime and call, cached for the process.

    ``choice`` forces a (variant, configuration), as the tuner, the tests and
    the benchmark's naive-kernel row do; otherwise
    :func:`clatrous.tuning.choose` decides.
    """
    g = prepared.geometry
    has_bias = prepared.bias is not None
    if choice is not None and not tuning.fits(runtime.info, *choice, prepared.dtype):
        raise UnsupportedDeviceError(
            f"{choice[0]} {choice[1]} needs {variants.local_bytes(*choice, prepared.dtype)} bytes of "
            f"local memory; device {runtime.info.name!r} has {runtime.info.local_mem}"
        )
    forced = None if choice is None else (choice[0], tuple(sorted(choice[1].items())))
    key = (runtime.queue.int_ptr, g, prepared.dtype, prepared.activation, has_bias, forced)
    launch = _launches.get(key)
    if launch is None:
        variant, config = choice if choice is not None else tuning.choose(runtime.info, g, prepared.dtype)
        plan = variants.make_plan(variant, config, g, prepared.dtype, prepared.activation, has_bias)
        launch = Launch(runtime, plan)
        with _launches_lock:
            launch = _launches.setdefault(key, launch)
    return launch


def _check_device(runtime: Runtime, prepared: Prepared) -> None:
    """What depends on the device: float64 support, and device arrays living there."""
    if prepared.dtype == np.float64 and not runtime.info.fp64:
        raise UnsupportedDeviceError(
            f"x is float64 but device {runtime.info.name!r} ({runtime.info.platform}) has no "
            "cl_khr_fp64; pass float32 data or choose another device"
        )
    for name in ("x", "kernel", "bias"):
        value = getattr(prepared, name)
        if not is_device_array(value):
            continue
        if value.dtype != prepared.dtype:
            raise TypeError(f"{name} on the device must have dtype {prepared.dtype}, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{name} on the device must be C-contiguous")
        if value.context != runtime.context:
            raise ValueError(f"{name} lives in another OpenCL context than the device used")


# Devices that compute in host memory (CPUs) use a host array in place when
# it starts on this boundary (CL_DEVICE_MEM_BASE_ADDR_ALIGN on common drivers).
# Anything else is first copied to such memory: handing PoCL an unaligned
# array to copy made the W6 kernel 4x slower than the copy itself.
_ALIGN = 128
# Arrays up to this size are simply copied to and from the device: on PoCL,
# sharing and mapping a buffer costs about 15 us more per call than copying a
# few kilobytes (W1, the notebook's 4x4 matrix, is all launch overhead).
_SMALL_BYTES = 64 * 1024


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(value, dtype) -> np.ndarray:
    """A C-contiguous copy of ``value`` in ``dtype``, in memory a CPU device can share."""
    value = np.asarray(value)
    out = _aligned_empty(value.shape, np.dtype(dtype))
    np.copyto(out, value, casting="unsafe")
    return out


def _device_buffer(runtime: Runtime, value, dtype: np.dtype, *, share: bool):
    """A read-only buffer of ``value`` (host array or checked device Array) as contiguous ``dtype``.

    The caller's array is never written: the kernels only read these buffers,
    and a host array that needs converting is copied first.  ``share`` lets a
    CPU device read a host array in place; only a call that waits for its
    kernel may share, since the caller (or the garbage collector) is free to
    change or free the array once the call returns.
    """
    if is_device_array(value):
        if value.offset == 0:
            return value.base_data
        # A view with an offset: copy on the device so vector loads stay aligned.
        buf = cl.Buffer(runtime.context, _MF.READ_ONLY, value.nbytes)
        cl.enqueue_copy(runtime.queue, buf, value.base_data, src_offset=value.offset, byte_count=value.nbytes)
        return buf
    value = np.asarray(value)
    if not runtime.info.host_memory or value.size * dtype.itemsize <= _SMALL_BYTES:
        host = np.ascontiguousarray(value, dtype=dtype)
        return cl.Buffer(runtime.context, _MF.READ_ONLY | _MF.COPY_HOST_PTR, hostbuf=host)
    ready = (
        value.dtype == dtype
        and value.flags.c_contiguous
        and value.flags.writeable  # PyOpenCL shares only writable memory
        and value.ctypes.data % _ALIGN == 0
    )
    if not ready:
        value = aligned_copy(value, dtype)
    # COPY_HOST_PTR copies before clCreateBuffer returns, so nothing of the
    # host array is read after this call.
    flags = _MF.USE_HOST_PTR if share else _MF.COPY_HOST_PTR
    return cl.Buffer(runtime.context, _MF.READ_ONLY | flags, hostbuf=value)


def _input_buffer(runtime: Runtime, value, dtype: np.dtype, *, share: bool):
    """The buffer the kernel reads ``x`` from, and the element where ``x`` starts in it.

    The kernels take this offset as an argument, so a device view with an
    offset is read in place, and so is a large host array that is not
    aligned (or not writable): the buffer then starts at the aligned address
    just before it, in the same memory page.  Anything else goes through
    :func:`_device_buffer`.
    """
    if is_device_array(value):
        return value.base_data, value.offset // dtype.itemsize
    value = np.asarray(value)
    if (
        share
        and runtime.info.host_memory
        and value.size * dtype.itemsize > _SMALL_BYTES
        and value.dtype == dtype
        and value.flags.c_contiguous
    ):
        start = value.ctypes.data % _ALIGN
        if (start or not value.flags.writeable) and start % dtype.itemsize == 0:
            # (An aligned, writable array is shared as it is by _device_buffer.)
            # A view of the memory from the aligned address on; only the part
            # from ``start`` on is read, and only while the caller waits for
            # the call, holding ``value``.
            memory = (ctypes.c_char * (start + value.nbytes)).from_address(value.ctypes.data - start)
            buf = cl.Buffer(runtime.context, _MF.READ_ONLY | _MF.USE_HOST_PTR, hostbuf=memory)
            return buf, start // dtype.itemsize
    return _device_buffer(runtime, value, dtype, share=share), 0


def _execute(prepared: Prepared, device, out_shape: tuple[int, ...], choice=None):
    runtime = _runtime_for(prepared, device)
    dtype = prepared.dtype
    on_device = is_device_array(prepared.x)
    _check_device(runtime, prepared)

    if 0 in out_shape:
        if on_device:
            return cl_array.empty(runtime.queue, out_shape, dtype)
        return np.empty(out_shape, dtype)

    g = prepared.geometry
    pieces = splitting.plan_pieces(g, dtype.itemsize, *_limits(runtime), resident_input=on_device)
    if len(pieces) == 1:
        return _launch(runtime, prepared, out_shape, choice)

    # Too large for one launch: run the pieces one after the other, each
    # with the padding its position implies, into one host result.
    result = np.empty(out_shape, dtype)
    whole = result.reshape(g.output_shape)
    x4 = np.asarray(prepared.x).reshape(g.n, g.h, g.w, g.cin)
    for piece in pieces:
        sub = splitting.sub_problem(prepared, x4, piece)
        whole[piece.out_index] = _launch(runtime, sub, sub.geometry.output_shape, choice)
    return result


def _limits(runtime: Runtime) -> tuple[int, int]:
    max_alloc = settings.max_alloc_bytes or runtime.info.max_alloc
    budget = settings.device_bytes or runtime.info.global_mem // 2
    return max_alloc, budget


def _launch(runtime: Runtime, prepared: Prepared, out_shape: tuple[int, ...], choice):
    """One kernel launch for the whole of ``prepared``."""
    dtype = prepared.dtype
    on_device = is_device_array(prepared.x)
    launch = plan_for(runtime, prepared, choice)
    queue = runtime.queue
    shared_output = (
        not on_device and runtime.info.host_memory and math.prod(out_shape) * dtype.itemsize > _SMALL_BYTES
    )
    try:
        # A call on device arrays returns before its kernel runs: it must not
        # leave the kernel reading host memory it does not own.
        share = not on_device
        x_buf, x_offset = _input_buffer(runtime, prepared.x, dtype, share=share)
        w_buf = _device_buffer(runtime, prepared.kernel, dtype, share=share)
        b_buf = None if prepared.bias is None else _device_buffer(runtime, prepared.bias, dtype, share=share)
        if on_device:
            result = launch.device_result(queue, out_shape, dtype)
            y_buf = result.base_data
        elif shared_output:
            result = _aligned_empty(out_shape, dtype)
            y_buf = cl.Buffer(runtime.context, _MF.WRITE_ONLY | _MF.USE_HOST_PTR, hostbuf=result)
        else:
            result = np.empty(out_shape, dtype)
            y_buf = cl.Buffer(runtime.context, _MF.WRITE_ONLY, result.nbytes)
        if settings.poison_outputs:
            cl.enqueue_fill_buffer(queue, y_buf, np.array(np.nan, dtype), 0, result.nbytes)

        launch.enqueue(queue, x_buf, x_offset, w_buf, b_buf, y_buf)
        if on_device:
            return result
        if shared_output:
            # Mapping makes the device's writes visible in ``result`` (no copy
            # when the driver used the host memory in place); then unmap.
            mapped, _ = cl.enqueue_map_buffer(
                queue, y_buf, cl.map_flags.READ, 0, out_shape, dtype, is_blocking=True
            )
            if mapped.ctypes.data != result.ctypes.data:
                np.copyto(result, mapped)
            mapped.base.release(queue)
        else:
            cl.enqueue_copy(queue, result, y_buf, is_blocking=True)
        return result
    except cl.MemoryError as exc:
        g = prepared.geometry
        raise DeviceMemoryError(
            f"the device {runtime.info.name!r} could not hold a convolution of x {(g.n, g.h, g.w, g.cin)} "
            f"into {g.output_shape} ({exc}); lower clatrous.runtime.settings.device_bytes to split it further"
        ) from None
