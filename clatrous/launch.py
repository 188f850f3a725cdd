"""Cached launches: a built kernel object per (operation, geometry, configuration), bounded.

A :class:`Launch` is a :class:`clatrous.variants.Plan` with its own kernel
object, whose scalar arguments are set once: setting a scalar costs
microseconds on some drivers, so a call sets only the buffers (and the
offsets where they changed), under the launch's lock, then enqueues.  The
plan's argument count is checked against the kernel's own when it is built.

Launches are kept per :class:`clatrous.runtime.Runtime` (so per queue), the
:data:`MAX_LAUNCHES` most recently used of each; a repeated call builds
nothing and allocates only its inputs and output.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from . import params
from .arguments import Prepared
from .errors import UnsupportedDeviceError
from .runtime import Runtime, live_runtimes
from .variants import Operation, Plan, make_plan

__all__ = [
    "MAX_LAUNCHES",
    "POCL_GROUP_MOST",
    "SMALL_RESULT_BYTES",
    "Launch",
    "cached_launch",
    "driver_group",
    "forget_launches",
    "get_launch",
]

#: Launches kept per queue, least recently used first out.
MAX_LAUNCHES = 256
#: A device result up to this size is made like a small array the launch
#: keeps (see :meth:`Launch.small_result`).
SMALL_RESULT_BYTES = 64 * 1024

_INT_MAX = 2**31 - 1
#: On PoCL, a launch whose variant leaves the work-group to the driver gets
#: one chosen here, of at most this many work-items (exact divisors of the
#: NDRange, which is unchanged).  PoCL 3.1 crashed (SIGSEGV in its worker
#: threads, the whole process gone) running some kernels in groups it chose
#: itself: blocked {VW 4, NV 4, PX 6} from 31 output rows and columns with
#: 256 output channels, in its 8 x 6 x 33 group, and the plane kernel with
#: 256 accumulators on W4's shape (why its search space stops at 128).
#: Given explicitly, groups of every size tried ran them (16 x 6 x 33 too),
#: and every blocked candidate on W3's shape; 256 measured as fast as PoCL's
#: own choice on W5, W6, D1 and a channels-first layer, where 64 slowed W5
#: by half.
POCL_GROUP_MOST = 256


def _largest_divisor(n: int, most: int) -> int:
    return next(d for d in range(max(1, min(n, most)), 0, -1) if n % d == 0)


def driver_group(info, global_size: tuple[int, ...], local_size: tuple[int, ...] | None):
    """The work-group a launch asks for: the plan's, or on PoCL a bounded one where the plan leaves it."""
    if local_size is not None or info.compiler != "pocl":
        return local_size
    group, room = [], POCL_GROUP_MOST
    for count in global_size:
        size = _largest_divisor(count, room)
        group.append(size)
        room //= size
    return tuple(group)


class Launch:
    """A plan with its own kernel object, whose scalar arguments are set once."""

    __slots__ = ("plan", "kernel", "lock", "offsets", "result_like", "kept", "local_size", "scratch", "last")

    def __init__(self, runtime: Runtime, plan: Plan):
        self.plan = plan
        kernel = cl.Kernel(runtime.program(plan.source, plan.options), plan.kernel_name)
        if kernel.num_args != plan.arg_count:
            raise RuntimeError(
                f"{plan.kernel_name} in {plan.source} takes {kernel.num_args} arguments, but its variant "
                f"describes {plan.arg_count}: buffers {plan.buffers}, {len(plan.scalars)} scalars, "
                f"offsets {plan.offsets}"
            )
        first = len(plan.buffers)
        for index, value in enumerate(plan.scalars, start=first):
            kernel.set_arg(index, value)
        # The element offsets come last; set again only when a call's differ.
        self.offsets = [0] * len(plan.offsets)
        for index in range(len(plan.offsets)):
            kernel.set_arg(first + len(plan.scalars) + index, np.int32(0))
        self.kernel = kernel
        self.local_size = driver_group(runtime.info, plan.global_size, plan.local_size)
        self.lock = threading.Lock()
        self.result_like = None
        # Small host weights' device copies, by role (see clatrous.staging.weight_buffer).
        self.kept: dict[str, tuple[bytes, cl.Buffer]] = {}
        # The variant's scratch buffer, the last argument of its buffers: one
        # launch at a time uses it, each after the one before (``last``).
        self.scratch = None
        if plan.scratch_bytes:
            self.scratch = cl.Buffer(runtime.context, cl.mem_flags.READ_WRITE, plan.scratch_bytes)
        self.last: cl.Event | None = None

    def small_result(self, queue: cl.CommandQueue, shape: tuple[int, ...], dtype: np.dtype):
        """A new device Array for a result up to :data:`SMALL_RESULT_BYTES`; None for a larger one.

        PyOpenCL's ``empty`` spends about 9 us checking the shape, while
        ``empty_like`` of a kept array of that shape takes about 1 us: a tenth
        of a small call's time (W1).  So a launch keeps one small template,
        never more than :data:`SMALL_RESULT_BYTES` of device memory.
        """
        like = self.result_like
        if like is None or like.queue is not queue or like.shape != shape or like.dtype != dtype:
            if math.prod(shape) * dtype.itemsize > SMALL_RESULT_BYTES:
                return None
            like = self.result_like = cl_array.empty(queue, shape, dtype)
        return cl_array.empty_like(like)

    def enqueue(self, queue: cl.CommandQueue, buffers, offsets=(), wait_for=None) -> cl.Event:
        """Set the buffers (in the plan's order) and offsets, and enqueue the kernel after ``wait_for``."""
        plan, kernel = self.plan, self.kernel
        with self.lock:
            if offsets:
                base = len(plan.buffers) + len(plan.scalars)
                for index, offset in enumerate(offsets):
                    if offset != self.offsets[index]:
                        if not 0 <= offset <= _INT_MAX:
                            raise ValueError(
                                f"{plan.offsets[index]} starts {offset} elements into its buffer"
                            )
                        kernel.set_arg(base + index, np.int32(offset))
                        self.offsets[index] = offset
            for index, buf in enumerate(buffers):
                kernel.set_arg(index, buf)
            if self.scratch is not None:
                kernel.set_arg(len(buffers), self.scratch)
                if self.last is not None:
                    wait_for = [*(wait_for or ()), self.last]
            event = cl.enqueue_nd_range_kernel(
                queue, kernel, plan.global_size, self.local_size, wait_for=wait_for or None
            )
            if self.scratch is not None:
                self.last = event
            return event


def forget_launches(runtime: Runtime | None = None) -> None:
    """Drop the cached launches (of one runtime, or of all), so the next calls choose again."""
    for rt in [runtime] if runtime is not None else live_runtimes():
        with rt.launch_lock:
            rt.launches.clear()


def get_launch(
    runtime: Runtime, op: Operation, prepared: Prepared, choice: tuple[str, dict] | None = None
) -> Launch:
    """The launch of ``op`` for this runtime and call, cached.

    ``choice`` forces a (variant, configuration); otherwise
    :func:`clatrous.params.choose` decides.
    """
    g = prepared.geometry
    forced = None if choice is None else (choice[0], tuple(sorted(choice[1].items())))
    key = (op.name, g, prepared.dtype, prepared.activation, prepared.bias is not None, forced)
    return cached_launch(runtime, key, lambda: _plan(runtime, op, prepared, choice))


def cached_launch(runtime: Runtime, key: tuple, plan) -> Launch:
    """The launch kept under ``key`` for this runtime, else a new one of ``plan()``, kept.

    ``key`` must say everything the plan depends on (an operation's name first).
    """
    cache = runtime.launches
    with runtime.launch_lock:
        launch = cache.get(key)
        if launch is not None:
            cache.move_to_end(key)
            return launch
    launch = Launch(runtime, plan())
    with runtime.launch_lock:
        launch = cache.setdefault(key, launch)
        cache.move_to_end(key)
        while len(cache) > MAX_LAUNCHES:
            cache.popitem(last=False)
    return launch


def _plan(runtime: Runtime, op: Operation, prepared: Prepared, choice) -> Plan:
    g = prepared.geometry
    if choice is not None:
        variant = op.variant(choice[0])
        if not variant.valid(choice[1]):
            raise ValueError(f"{choice[1]} is not a configuration of variant {variant.name!r}")
        if not params.fits(runtime.info, variant, choice[1], prepared.dtype, g):
            need = variant.local_bytes(g, variant.complete(choice[1]), prepared.dtype)
            raise UnsupportedDeviceError(
                f"{variant.name} {choice[1]} needs {need} bytes of local memory; "
                f"device {runtime.info.name!r} has {runtime.info.local_mem}"
            )
        name, config = choice
    else:
        name, config = params.choose(runtime.info, op, g, prepared.dtype)
    return make_plan(
        op.variant(name), config, g, prepared.dtype, prepared.activation, prepared.bias is not None
    )
