"""Host staging: the buffers a launch reads and writes, aligned copies, and the read-back.

A device ``pyopencl.array.Array`` is used as it is (a view with an offset
too: the kernels take where it starts as an argument), and the events
pending on it are handed on, so the launch waits for them.  A host array up
to :data:`SMALL_BYTES` is copied to the device.  A larger one, on a device
that computes in host memory (a CPU), is read in place when the call waits
for its kernel: from its own address when it is 128-byte aligned, else from
the aligned address just before it; anything else (another dtype, not
contiguous) is first copied into aligned memory.  Nothing here writes to a
caller's array.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from .arguments import is_device_array
from .runtime import Runtime

__all__ = [
    "ALIGN",
    "SMALL_BYTES",
    "Workspace",
    "aligned_copy",
    "aligned_empty",
    "device_empty",
    "forget_workspaces",
    "host_output",
    "input_buffer",
    "pending_events",
    "read_back",
]

_MF = cl.mem_flags
# Devices that compute in host memory (CPUs) use a host array in place when
# it starts on this boundary (CL_DEVICE_MEM_BASE_ADDR_ALIGN on common drivers).
# Anything else is first copied to such memory: handing PoCL an unaligned
# array to copy made the W6 kernel 4x slower than the copy itself.
ALIGN = 128
# Arrays up to this size are simply copied to and from the device: on PoCL,
# sharing and mapping a buffer costs about 15 us more per call than copying a
# few kilobytes (W1, the notebook's 4x4 matrix, is all launch overhead).
SMALL_BYTES = 64 * 1024
#: A new device result of at least this size, on a device that computes in
#: host memory, is advised as huge pages (see :func:`device_empty`), unless
#: :data:`HUGE_PAGE_BYTES_BY_COMPILER` says otherwise for its driver.
#: Intel's CPU runtime maps fresh memory for every buffer: W5's 16 MiB
#: result on device arrays, 2.72 ms a call advised against 5.41 not, W6's
#: 5.86 against 8.11.
HUGE_PAGE_BYTES = 4 * 1024 * 1024
#: PoCL allocates a buffer with malloc, and below glibc's largest mmap
#: threshold (32 MiB) that memory is reused, already faulted in, so the
#: advice only costs its map: W5 on device arrays 1.49 ms a call from 32 MiB
#: against 1.54 from 4 MiB (1.75 against 1.51 in a first measure), W6 3.25
#: against 3.29; from 32 MiB it pays (8 channels of 3x3: 32 MiB 12.4 against
#: 17.0 ms, 128 MiB 51.7 against 68.3 ms).
HUGE_PAGE_BYTES_BY_COMPILER = {"pocl": 32 * 1024 * 1024}


def huge_page_bytes(info) -> int:
    """From what size a new device result on this device is advised as huge pages."""
    return HUGE_PAGE_BYTES_BY_COMPILER.get(info.compiler, HUGE_PAGE_BYTES)


#: A host kernel or bias up to this size is copied to the device once and
#: kept by its launch while the caller passes the same bytes (see
#: :func:`weight_buffer`): on PoCL, a new buffer for each of W1's two costs
#: about 1 us of its 85.
KEPT_BYTES = 4096
_PAGE = mmap.PAGESIZE
_MADV_HUGEPAGE = 14  # Linux only; elsewhere there is no madvise to call
_MADVISE = None
if sys.platform.startswith("linux"):
    _MADVISE = ctypes.CDLL(None).madvise
    _MADVISE.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array starting on an :data:`ALIGN`-byte boundary.

    Given as ``out=``, a CPU device writes the result straight into it; an
    ndarray from ``np.empty`` usually starts 16 bytes past such a boundary
    and is filled by a copy (1.4 ms more on W5 here).

    Raises
    ------
    TypeError, ValueError
        ``shape`` or ``dtype`` that NumPy refuses.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def device_empty(runtime: Runtime, shape: tuple[int, ...], dtype) -> cl_array.Array:
    """A new, uninitialised device Array for a result on ``runtime``'s queue.

    On a device that computes in host memory (a CPU), a large result's pages
    are advised to the kernel as huge pages (``madvise(MADV_HUGEPAGE)``, as
    NumPy does for its own large arrays) before anything touches them: PoCL
    and Intel's runtime do not ask for them, and the kernel's first write to
    each fresh 4 KiB page faults.  D1's 128 MiB result, measured here: 50 ms
    a call without, 32 ms with (both drivers).  The buffer stays the
    driver's (mapped once to learn its address, then unmapped), so its
    lifetime is the driver's business; a wrapper around host memory of ours
    would be freed by Python while a queued kernel still reads it.  The map
    goes through the runtime's side queue: on the main queue a blocking map
    would wait for every kernel queued before it, a host wait in a chain.
    """
    dtype = np.dtype(dtype)
    result = cl_array.empty(runtime.queue, shape, dtype)
    info = runtime.info
    if info.host_memory and result.nbytes >= huge_page_bytes(info) and _MADVISE is not None:
        side = runtime.side_queue
        mapped, _ = cl.enqueue_map_buffer(
            side,
            result.base_data,
            cl.map_flags.WRITE_INVALIDATE_REGION,
            0,
            (result.nbytes,),
            np.uint8,
            is_blocking=True,
        )
        try:
            start = -(-mapped.ctypes.data // _PAGE) * _PAGE
            end = (mapped.ctypes.data + result.nbytes) // _PAGE * _PAGE
            _MADVISE(start, end - start, _MADV_HUGEPAGE)  # a hint: an error changes nothing
        finally:
            mapped.base.release(side)
        side.finish()  # the unmap, before the main queue's kernels write the buffer
    return result


def aligned_copy(value, dtype) -> np.ndarray:
    """A C-contiguous copy of ``value`` in ``dtype``, in memory a CPU device can share."""
    value = np.asarray(value)
    out = aligned_empty(value.shape, np.dtype(dtype))
    np.copyto(out, value, casting="unsafe")
    return out


_COMPLETE = cl.command_execution_status.COMPLETE
_STATUS = cl.event_info.COMMAND_EXECUTION_STATUS


def pending_events(value) -> list[cl.Event]:
    """The events on a device array that have not completed yet.

    Waiting on a completed event costs PoCL about 3 us a launch (W1 on device
    arrays: 10 us of 95); asking its status costs less.  An event that failed
    (a negative status) stays, so the wait reports it.
    """
    events = value.events
    if not events:
        return []
    pending = [event for event in events if event.get_info(_STATUS) != _COMPLETE]
    if len(pending) < len(events):
        # Completed events order nothing: dropping them spares the next call
        # the status queries (W1 on device arrays: about 1 us a call).
        events[:] = pending
    return pending


def weight_buffer(
    runtime: Runtime, value, dtype: np.dtype, *, share: bool, kept: dict | None = None, role: str = ""
) -> tuple[object, list]:
    """A read-only buffer of ``value`` as contiguous ``dtype``, and the events to wait for.

    ``share`` lets a CPU device read a host array in place; only a call that
    waits for its kernel may share, since the caller (or the garbage
    collector) is free to change or free the array once the call returns.
    ``kept`` (a launch's) holds the device copy of a host array up to
    :data:`KEPT_BYTES` under ``role``, with its bytes: the next call with
    the same bytes reads that copy, which nothing writes.
    """
    if is_device_array(value):
        if value.offset == 0:
            return value.base_data, pending_events(value)
        # A view with an offset: copy on the device so vector loads stay aligned.
        buf = cl.Buffer(runtime.context, _MF.READ_ONLY, value.nbytes)
        event = cl.enqueue_copy(
            runtime.queue,
            buf,
            value.base_data,
            src_offset=value.offset,
            byte_count=value.nbytes,
            wait_for=pending_events(value) or None,
        )
        return buf, [event]
    value = np.asarray(value)
    if not runtime.info.host_memory or value.size * dtype.itemsize <= SMALL_BYTES:
        host = np.ascontiguousarray(value, dtype=dtype)
        if kept is None or host.nbytes > KEPT_BYTES:
            return cl.Buffer(runtime.context, _MF.READ_ONLY | _MF.COPY_HOST_PTR, hostbuf=host), []
        raw = host.tobytes()
        known = kept.get(role)
        if known is not None and known[0] == raw:
            return known[1], []
        buf = cl.Buffer(runtime.context, _MF.READ_ONLY | _MF.COPY_HOST_PTR, hostbuf=host)
        kept[role] = (raw, buf)
        return buf, []
    ready = (
        value.dtype == dtype
        and value.flags.c_contiguous
        and value.flags.writeable  # PyOpenCL shares only writable memory
        and value.ctypes.data % ALIGN == 0
    )
    if not ready:
        value = aligned_copy(value, dtype)
    # COPY_HOST_PTR copies before clCreateBuffer returns, so nothing of the
    # host array is read after this call.
    flags = _MF.USE_HOST_PTR if share else _MF.COPY_HOST_PTR
    return cl.Buffer(runtime.context, _MF.READ_ONLY | flags, hostbuf=value), []


def input_buffer(runtime: Runtime, value, dtype: np.dtype, *, share: bool) -> tuple[object, int, list]:
    """The buffer the kernel reads ``value`` from, the element where it starts there, and events to wait for.

    The kernels take this offset as an argument, so a device view with an
    offset is read in place, and so is a large host array that is not
    aligned (or not writable): the buffer then starts at the aligned address
    just before it, in the same memory page.  Anything else goes through
    :func:`weight_buffer`.
    """
    if is_device_array(value):
        return value.base_data, value.offset // dtype.itemsize, pending_events(value)
    value = np.asarray(value)
    if (
        share
        and runtime.info.host_memory
        and value.size * dtype.itemsize > SMALL_BYTES
        and value.dtype == dtype
        and value.flags.c_contiguous
    ):
        start = value.ctypes.data % ALIGN
        if (start or not value.flags.writeable) and start % dtype.itemsize == 0:
            # (An aligned, writable array is shared as it is by weight_buffer.)
            # A view of the memory from the aligned address on; only the part
            # from ``start`` on is read, and only while the caller waits for
            # the call, holding ``value``.
            memory = (ctypes.c_char * (start + value.nbytes)).from_address(value.ctypes.data - start)
            buf = cl.Buffer(runtime.context, _MF.READ_ONLY | _MF.USE_HOST_PTR, hostbuf=memory)
            return buf, start // dtype.itemsize, []
    buf, events = weight_buffer(runtime, value, dtype, share=share)
    return buf, 0, events


def host_output(
    runtime: Runtime, shape: tuple[int, ...], dtype: np.dtype, out: np.ndarray | None = None
) -> tuple[np.ndarray, object, bool]:
    """(result array, the buffer the kernel writes, whether that buffer is the result's memory).

    ``out``, a caller's C-contiguous array of ``shape`` and ``dtype``, is the
    result when given: written in place by a CPU device when it is aligned,
    else read back into.
    """
    if runtime.info.host_memory and math.prod(shape) * dtype.itemsize > SMALL_BYTES:
        result = aligned_empty(shape, dtype) if out is None else out
        if result.ctypes.data % ALIGN == 0:
            buf = cl.Buffer(runtime.context, _MF.WRITE_ONLY | _MF.USE_HOST_PTR, hostbuf=result)
            return result, buf, True
    result = np.empty(shape, dtype) if out is None else out
    return result, cl.Buffer(runtime.context, _MF.WRITE_ONLY, result.nbytes), False


def read_back(queue: cl.CommandQueue, result: np.ndarray, buf, shared: bool, wait_for: list) -> None:
    """Bring the kernel's output into ``result``, once ``wait_for`` has completed; blocks."""
    if shared:
        # Mapping makes the device's writes visible in ``result`` (no copy
        # when the driver used the host memory in place); then unmap.
        mapped, _ = cl.enqueue_map_buffer(
            queue, buf, cl.map_flags.READ, 0, result.shape, result.dtype, wait_for=wait_for, is_blocking=True
        )
        if mapped.ctypes.data != result.ctypes.data:
            np.copyto(result, mapped)
        mapped.base.release(queue)
    else:
        cl.enqueue_copy(queue, result, buf, wait_for=wait_for, is_blocking=True)


class Workspace:
    """The intermediate device arrays of one call, reused within it and call after call.

    Fresh memory costs a CPU device a page fault per page at its first write
    (on this project's VM a fresh 4096x4096 float32 image took longer to
    write than to filter), so a multi-step operation (the starlet, a
    channels-first call through the channels-last kernels) takes its
    intermediates from the runtime's workspace for ``(shape, dtype)`` and
    gives them back when it has enqueued its last launch; a concurrent call
    finds the workspace empty and allocates its own.  Every launch that
    writes a buffer must wait for the events on it, its last readers'
    included (:func:`pending_events` of it), so reuse is safe on any
    queue: its readers append their events, completed ones are dropped.
    """

    def __init__(self, runtime: Runtime, shape, dtype):
        self.runtime, self.key = runtime, (tuple(shape), np.dtype(dtype).str)
        with _workspace_lock:
            kept = _workspaces.pop((id(runtime), self.key), None)
        self.free: list = kept if kept is not None else []
        self.all = list(self.free)

    def take(self, shape=None):
        shape = shape or self.key[0]
        for index, array in enumerate(self.free):
            if array.shape == shape:
                array = self.free.pop(index)
                pending_events(array)  # drops its completed events: the list stays short
                return array
        array = device_empty(self.runtime, shape, np.dtype(self.key[1]))
        self.all.append(array)
        return array

    def give(self, array) -> None:
        self.free.append(array)

    def close(self) -> None:
        """Hand every scratch image back to the runtime's workspace, for the next call."""
        with _workspace_lock:
            _workspaces[(id(self.runtime), self.key)] = self.all
            while len(_workspaces) > _MAX_WORKSPACES:
                _workspaces.pop(next(iter(_workspaces)))


#: Workspaces kept: one per (runtime, shape, dtype), the most recent ones.
_MAX_WORKSPACES = 4
_workspace_lock = threading.Lock()
_workspaces: dict = {}


def forget_workspaces() -> None:
    """Release the intermediates kept for the next calls (the device memory they hold)."""
    with _workspace_lock:
        _workspaces.clear()
