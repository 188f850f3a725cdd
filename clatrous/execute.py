"""Running an operation: device checks, splitting, and launches ordered by events.

:func:`run` is what every public operation calls with a validated
:class:`clatrous.arguments.Prepared` call.  On device arrays it returns a
device Array at once, carrying the event of the kernel that fills it
(``result.events``), after enqueueing the kernel behind every event pending
on its inputs; so the next operation, on any queue of the context, waits for
it without the host waiting.  :func:`enqueue` is that step alone, with
``wait_for`` events in and the kernel's event out, for operations made of
several launches.

With host arrays the call waits for the result, and never returns (not even
by an exception or KeyboardInterrupt) while a kernel may still write into
host memory it was handed.  Every command is ordered by events, so an
out-of-order queue gives the same results.

A problem too large for the device is split (see
:mod:`clatrous.splitting`); its variant and configuration are chosen once,
for the whole problem, and every piece runs with them, so a split result
equals the one-piece result bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from . import params, splitting, staging
from .arguments import Prepared, channels_last_view, is_device_array
from .errors import DeviceMemoryError, UnsupportedDeviceError
from .launch import Launch, cached_launch, get_launch
from .runtime import Runtime, get_runtime, settings
from .variants import Operation, transpose_plan

__all__ = ["check_device", "enqueue", "limits", "poison", "run", "runtime_for"]


def runtime_for(prepared: Prepared, device) -> Runtime:
    """The runtime of ``x``'s queue when ``x`` is a device Array, else of ``device``."""
    if is_device_array(prepared.x):
        if device is not None and device is not prepared.x.queue:
            raise ValueError("device must be left out when x is a pyopencl Array (x's queue is used)")
        return get_runtime(prepared.x.queue)
    return get_runtime(device)


def check_device(runtime: Runtime, prepared: Prepared) -> None:
    """What depends on the device: float64 support, and device arrays living there."""
    if prepared.dtype == np.float64 and not runtime.info.fp64:
        raise UnsupportedDeviceError(
            f"x is float64 but device {runtime.info.name!r} ({runtime.info.platform}) has no "
            "cl_khr_fp64; pass float32 data or choose another device"
        )
    for name, value in (("x", prepared.x), ("kernel", prepared.kernel), ("bias", prepared.bias)):
        if not is_device_array(value):
            continue
        if value.dtype != prepared.dtype:
            raise TypeError(f"{name} on the device must have dtype {prepared.dtype}, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{name} on the device must be C-contiguous")
        if value.context != runtime.context:
            raise ValueError(f"{name} lives in another OpenCL context than the device used")


def limits(runtime: Runtime) -> tuple[int, int]:
    """(largest buffer, all of one launch's buffers together) for this device, as settings allow."""
    max_alloc = settings.max_alloc_bytes or runtime.info.max_alloc
    budget = settings.device_bytes or runtime.info.global_mem // 2
    return max_alloc, budget


def poison(queue: cl.CommandQueue, buf, dtype: np.dtype, nbytes: int, wait_for: list) -> list:
    """With ``settings.poison_outputs``, fill ``buf`` with NaN after ``wait_for``; the events to wait on."""
    if not settings.poison_outputs:
        return wait_for
    fill = cl.enqueue_fill_buffer(queue, buf, np.array(np.nan, dtype), 0, nbytes, wait_for=wait_for or None)
    return [fill]


def _weights(runtime: Runtime, launch: Launch, prepared: Prepared, share: bool):
    """(kernel buffer, bias buffer or None, events to wait for), small host ones kept by ``launch``."""
    dtype, kept = prepared.dtype, launch.kept
    w_buf, w_events = staging.weight_buffer(runtime, prepared.kernel, dtype, share=share, kept=kept, role="w")
    if prepared.bias is None:
        return w_buf, None, w_events
    b_buf, b_events = staging.weight_buffer(runtime, prepared.bias, dtype, share=share, kept=kept, role="b")
    return w_buf, b_buf, w_events + b_events


def enqueue(
    runtime: Runtime,
    launch: Launch,
    prepared: Prepared,
    out_shape: tuple[int, ...],
    wait_for=(),
    out: cl_array.Array | None = None,
    share: bool = False,
    hold: list | None = None,
) -> tuple[cl_array.Array, cl.Event]:
    """Launch on device-resident output: (the result Array, the kernel's event).

    Host ``kernel`` and ``bias`` are copied (the call returns before the
    kernel runs), or with ``share`` lent to a CPU device in place: only for
    a caller that waits for the kernel before returning, and keeps the
    buffers appended to ``hold`` until then (one may be the only reference
    to an aligned copy the kernel reads); the kernel waits
    for ``wait_for``, for every event pending on device inputs and on
    ``out`` (the caller's result Array, when given); the result carries the
    kernel's event.
    """
    dtype, queue = prepared.dtype, runtime.queue
    x_buf, x_offset, waits = staging.input_buffer(runtime, prepared.x, dtype, share=False)
    waits = [*wait_for, *waits]
    w_buf, b_buf, more = _weights(runtime, launch, prepared, share)
    if share:
        if hold is None:
            raise ValueError("a call that lends its host weights must hold their buffers (hold=)")
        hold += [w_buf, b_buf]
    waits += more
    if out is None:
        result = launch.small_result(queue, out_shape, dtype)
        if result is None:
            result = staging.device_empty(runtime, out_shape, dtype)
    else:
        result = out
        waits += staging.pending_events(out)  # earlier readers and writers of out first
    waits = poison(queue, result.base_data, dtype, result.nbytes, waits)
    event = launch.enqueue(queue, (x_buf, w_buf, b_buf, result.base_data), (x_offset,), waits)
    result.add_event(event)
    return result, event


def _host_call(
    runtime: Runtime, launch: Launch, prepared: Prepared, out_shape: tuple[int, ...], out=None
) -> np.ndarray:
    """One launch on host arrays, read in place where possible; waits for the result."""
    dtype, queue = prepared.dtype, runtime.queue
    x_buf, x_offset, _ = staging.input_buffer(runtime, prepared.x, dtype, share=True)
    w_buf, b_buf, _ = _weights(runtime, launch, prepared, True)
    result, y_buf, shared = staging.host_output(runtime, out_shape, dtype, out)
    pending: list[cl.Event] = []
    try:
        pending = poison(queue, y_buf, dtype, result.nbytes, [])
        pending = [launch.enqueue(queue, (x_buf, w_buf, b_buf, y_buf), (x_offset,), pending)]
        staging.read_back(queue, result, y_buf, shared, pending)
    except BaseException:
        # The kernel may be reading the caller's arrays and writing ``result``
        # in place: never leave before it is done with them.
        for event in pending:
            event.wait()
        raise
    return result


def _transpose(runtime: Runtime, src, src_offset: int, dst, shape: tuple[int, int, int], dtype, waits):
    """Enqueue ``shape`` = (batch, rows, cols) -> (batch, cols, rows), ``src`` to ``dst``, after ``waits``."""
    launch = cached_launch(runtime, ("transpose", shape, dtype), lambda: transpose_plan(*shape, dtype))
    return launch.enqueue(runtime.queue, (src, dst), (src_offset,), waits)


def _through_channels_last(runtime: Runtime, op: Operation, prepared: Prepared, out_shape, out=None):
    """A channels-first call run by the channels-last kernels, for layers where they are faster.

    Three launches chained by events, with no wait on the host between
    them: ``x`` transposed into a device buffer (N, H, W, C_in), the
    convolution into another, and that transposed into the result (N, C_out,
    Ho, Wo).  The two intermediates come from the runtime's workspace (warm
    memory call after call).  A device ``x`` gives a device result carrying
    the last event; a host call waits for it, as every host call does.
    """
    g, dtype, queue = prepared.geometry, prepared.dtype, runtime.queue
    last = dataclasses.replace(g, channels_first=False)
    on_device = is_device_array(prepared.x)
    x_buf, x_offset, waits = staging.input_buffer(runtime, prepared.x, dtype, share=not on_device)
    into_last, out_of_last = (g.n, g.cin, g.h * g.w), (g.n, g.ho * g.wo, g.cout)
    pending: list[cl.Event] = []
    held: list = []  # the lent weights' buffers, until the kernels are done
    workspace = staging.Workspace(runtime, last.input_shape, dtype)
    try:
        x_last, y_last = workspace.take(last.input_shape), workspace.take(last.output_shape)
        waits = [*waits, *staging.pending_events(x_last)]  # its last readers (a reused buffer)
        waits = poison(queue, x_last.base_data, dtype, x_last.nbytes, waits)
        pending.append(_transpose(runtime, x_buf, x_offset, x_last.base_data, into_last, dtype, waits))
        x_last.events.append(pending[-1])
        moved = dataclasses.replace(prepared, x=x_last, geometry=last)
        launch = get_launch(runtime, op, moved)
        # A host call waits for its kernels: it may lend them the host weights.
        _, event = enqueue(
            runtime, launch, moved, last.output_shape, out=y_last, share=not on_device, hold=held
        )
        pending.append(event)
        x_last.events.append(event)  # its reader: the next writer waits for it
        if on_device:
            result = out if out is not None else staging.device_empty(runtime, out_shape, dtype)
            y_buf, waits = result.base_data, [event, *staging.pending_events(result)]
        else:
            result, y_buf, shared = staging.host_output(runtime, out_shape, dtype, out)
            waits = [event]
        waits = poison(queue, y_buf, dtype, result.nbytes, waits)
        pending.append(_transpose(runtime, y_last.base_data, 0, y_buf, out_of_last, dtype, waits))
        y_last.events.append(pending[-1])
        workspace.give(x_last)
        workspace.give(y_last)
        workspace.close()
        if on_device:
            result.events.append(pending[-1])
            return result
        staging.read_back(queue, result, y_buf, shared, pending[-1:])
    except BaseException as exc:
        # A host x may be read in place: never leave while a kernel reads it.
        for event in pending:
            event.wait()
        if isinstance(exc, cl.MemoryError):
            raise _memory_error(runtime, prepared, exc) from None
        raise
    return result


def _whole(runtime: Runtime, op: Operation, prepared: Prepared, out_shape, choice, out=None):
    launch = get_launch(runtime, op, prepared, choice)
    try:
        if is_device_array(prepared.x):
            return enqueue(runtime, launch, prepared, out_shape, out=out)[0]
        return _host_call(runtime, launch, prepared, out_shape, out)
    except cl.MemoryError as exc:
        raise _memory_error(runtime, prepared, exc) from None


def _memory_error(runtime: Runtime, prepared: Prepared, exc) -> DeviceMemoryError:
    g = prepared.geometry
    return DeviceMemoryError(
        f"the device {runtime.info.name!r} could not hold a convolution of x {g.input_shape} "
        f"into {g.output_shape} ({exc}); lower clatrous.runtime.settings.device_bytes to split it further"
    )


def run(op: Operation, prepared: Prepared, device, out_shape: tuple[int, ...], out=None):
    """Compute ``prepared`` with ``op`` on ``device``: an ndarray, or a device Array for one.

    ``out`` (checked by :func:`clatrous.arguments.check_out`, of ``out_shape``)
    is written and returned instead of a new result.
    """
    runtime = runtime_for(prepared, device)
    check_device(runtime, prepared)
    dtype = prepared.dtype
    on_device = is_device_array(prepared.x)
    if 0 in out_shape:
        if out is not None:
            return out
        return cl_array.empty(runtime.queue, out_shape, dtype) if on_device else np.empty(out_shape, dtype)

    choice = params.forced_choice()
    g = prepared.geometry
    pieces = splitting.plan_pieces(g, dtype.itemsize, *limits(runtime), on_device)
    if g.channels_first:
        if len(pieces) > 1:
            # Splitting cuts bands of channels-last images: the transposed
            # view, split, and the channels moved back on the host.
            result = np.empty(out_shape, dtype) if out is None else out
            last = run(op, channels_last_view(prepared), device, (g.n, g.ho, g.wo, g.cout))
            np.copyto(result.reshape(g.output_shape), np.moveaxis(last, -1, 1))
            return result
        if choice is None and not params.channels_first_in_place(runtime.info, g):
            return _through_channels_last(runtime, op, prepared, out_shape, out)
    if len(pieces) == 1:
        return _whole(runtime, op, prepared, out_shape, choice, out)

    # Too large for one launch: one choice for the whole problem, then the
    # pieces one after the other, each with the padding its position
    # implies, into one host result.
    if choice is None:
        choice = params.choose(runtime.info, op, g, dtype)
        if not op.variant(choice[0]).band_exact and any(piece.axis for piece in pieces):
            # A band would sum its rows otherwise than the whole image does
            # (only the dense convolution has such a variant: Winograd's).
            choice = params.conv2d_defaults(runtime.info, g, dtype, winograd=False)
    result = np.empty(out_shape, dtype) if out is None else out
    whole = result.reshape(g.output_shape)
    x4 = np.asarray(prepared.x).reshape(g.n, g.h, g.w, g.cin)
    for piece in pieces:
        sub = splitting.sub_problem(prepared, x4, piece)
        whole[piece.out_index] = _whole(runtime, op, sub, sub.geometry.output_shape, choice)
    return result
