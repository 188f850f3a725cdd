"""``aspp``: several atrous convolutions of one input, each straight into its channel slice (DeepLab's ASPP).

A call is :func:`clatrous.arguments.prepare_branches` (every check, each
branch as ``conv2d`` checks it, no OpenCL yet), then ``kernels/aspp.cl``,
which skips the taps that fall wholly in the padding and writes each branch
straight into its channel slice of one result (no concatenation copy).  How
the branches share launches is a knob of the configuration, ``FUSE``: one
launch for every branch (their work-items in one NDRange, reading each
input tile while it is in cache: the shape a GPU wants, and the default
there), or a launch per branch, chained by events (the default on a CPU,
where one NDRange measured 6-7% slower than three on A1 and A2: the
kernel is bound by its multiply-adds there, not by reading the input).

:func:`branch_launches` and :func:`enqueue_branches` are the launches alone,
on device buffers, with the output's pixel width, where each slice starts
and a per-image bias as parameters: :func:`aspp_block` (DeepLab's whole
block, :class:`clatrous.ASPP`) builds its projection on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from . import params, staging
from .arguments import PreparedBranches, is_device_array, prepare_branches
from .conv import ArrayLike, Device, IntOrPair, Result, conv2d, depthwise_conv2d
from .errors import DeviceMemoryError, UnsupportedDeviceError
from .execute import check_device, limits, poison, runtime_for
from .launch import Launch, cached_launch
from .runtime import Runtime
from .variants import MAX_BRANCHES, Branch, aspp_local_bytes, aspp_plan, mean_plan

__all__ = ["aspp", "aspp_block", "branch_launches", "enqueue_branches", "spatial_mean"]


def branch_launches(
    runtime: Runtime,
    call: PreparedBranches,
    *,
    channels: int | None = None,
    offsets: Sequence[int] | None = None,
    bias_stride: int = 0,
    config: dict | None = None,
) -> list[tuple[PreparedBranches, Launch]]:
    """The cached launches computing ``call``'s branches, each with the part of ``call`` it computes.

    Into pixels of ``channels`` elements (default: all the branches'
    channels), branch ``i`` from channel ``offsets[i]`` on (default: one
    after the other); with ``bias_stride`` elements between the images' biases
    (0: one bias for the batch).  ``config`` forces a configuration of the
    kernel (the tests walk its space); by default :func:`clatrous.params.aspp_defaults`.
    Its ``FUSE`` says whether one launch computes every branch (1) or each
    branch has a launch of its own (0); either way each writes its slices.
    """
    couts = tuple(p.geometry.cout for p in call.branches)
    if offsets is None:
        offsets = tuple(int(v) for v in np.cumsum((0, *couts[:-1])))
    channels = sum(couts) if channels is None else channels
    branches = tuple(
        Branch.of(p.geometry, offset, p.bias is not None)
        for p, offset in zip(call.branches, offsets, strict=True)
    )
    if config is None:
        config = params.aspp_defaults(
            runtime.info, call.branches[0].geometry, couts, call.dtype, (*offsets, channels)
        )
    elif aspp_local_bytes(config, call.dtype) > runtime.info.local_mem:
        raise UnsupportedDeviceError(
            f"aspp {config} needs {aspp_local_bytes(config, call.dtype)} bytes of local memory; "
            f"device {runtime.info.name!r} has {runtime.info.local_mem}"
        )
    count = len(branches)
    groups = [range(count)] if config.get("FUSE", 1) else [range(i, i + 1) for i in range(count)]
    launches = []
    for group in groups:
        part = branches[group.start : group.stop]
        key = (
            "aspp",
            part,
            call.shape,
            channels,
            call.dtype,
            call.activation,
            bias_stride,
            tuple(sorted(config.items())),
        )
        launch = cached_launch(
            runtime,
            key,
            lambda part=part: aspp_plan(
                part, config, call.shape, channels, call.dtype, call.activation, bias_stride
            ),
        )
        launches.append((replace(call, branches=call.branches[group.start : group.stop]), launch))
    return launches


def enqueue_branches(runtime: Runtime, launches, y, wait_for=(), share=False) -> tuple[list, list]:
    """Enqueue ``launches`` (:func:`branch_launches`) writing buffer ``y``: (their events, the buffers read).

    Each waits for ``wait_for``; device inputs are read in place after the
    events pending on them; host ones are copied (or, with ``share``, read
    in place by a CPU device: only for a caller that holds the returned
    buffers until the kernels are done, since a shared buffer may be an
    aligned copy that only they keep alive).  The launches write disjoint
    slices of ``y`` and may run in any order.
    """
    events, held = [], []
    try:
        _enqueue_each(runtime, launches, y, wait_for, share, events, held)
    except BaseException:
        # A later launch failed: the earlier ones may be reading the caller's
        # (shared) arrays, so none is left running when the error leaves.
        for event in events:
            event.wait()
        raise
    return events, held


def _enqueue_each(runtime: Runtime, launches, y, wait_for, share, events: list, held: list) -> None:
    for call, launch in launches:
        dtype = call.dtype
        x_buf, x_offset, waits = staging.input_buffer(runtime, call.x, dtype, share=share)
        waits = [*wait_for, *waits]
        weights, biases = [], []
        for p in call.branches:
            buf, more = staging.weight_buffer(runtime, p.kernel, dtype, share=share)
            weights.append(buf)
            waits += more
            if p.bias is None:
                biases.append(None)
            else:
                buf, more = staging.weight_buffer(runtime, p.bias, dtype, share=share)
                biases.append(buf)
                waits += more
        unused = MAX_BRANCHES - len(weights)
        # Unused weight arguments: any buffer (never read); unused biases: none.
        buffers = (x_buf, *weights, *[x_buf] * unused, *biases, *[None] * unused, y)
        events.append(launch.enqueue(runtime.queue, buffers, (x_offset,), waits))
        held.append(buffers)


def aspp(
    x: ArrayLike,
    kernels: Sequence[ArrayLike],
    rates: Sequence[IntOrPair],
    biases: Sequence[ArrayLike | None] | None = None,
    *,
    activation: str | None = None,
    device: Device = None,
) -> Result:
    """Several "same" dilated convolutions of one input, in one pass, their results side by side.

    The branches of DeepLab's atrous spatial pyramid pooling: the result
    equals ``np.concatenate([conv2d(x, kernels[i], biases[i], padding="same",
    dilation_rate=rates[i], activation=activation) for i ...], axis=-1)``,
    computed by one launch that reads each input tile once for every
    branch, skips the taps that fall wholly in the padding, and writes each
    branch straight into its channel slice.

    Parameters
    ----------
    x : (N, H, W, C_in) array_like or pyopencl.array.Array
    kernels : list or tuple of 1 to 8 arrays (kh_i, kw_i, C_in, C_out_i)
        Any sizes, a 1x1 included.
    rates : list or tuple of ints or (rows, cols) pairs, one per kernel
        Each branch's ``dilation_rate``.
    biases : list or tuple of (C_out_i,) arrays or None, one per kernel, optional
    activation : str or None
        As for :func:`clatrous.conv2d`, applied to every branch.
    device : pyopencl Device, Context or CommandQueue, optional
        As for :func:`clatrous.conv2d` (left out for a device ``x``).

    Returns
    -------
    (N, H, W, sum C_out_i) ndarray, or an Array on ``x``'s queue when ``x`` is one.

    Raises
    ------
    TypeError, ValueError
        As :func:`clatrous.conv2d` raises them, naming the branch and its
        entry (``kernels[1]``, ``rates[2]``...); sequences of the wrong type
        or length; before any OpenCL call.
    clatrous.DeviceMemoryError
        A problem the device cannot hold (the fused call is not split).

    Examples
    --------
    >>> import numpy as np, clatrous
    >>> x = np.ones((1, 5, 5, 1), np.float32)
    >>> k = np.ones((3, 3, 1, 1), np.float32)
    >>> y = clatrous.aspp(x, [k, k], rates=[1, 2])
    >>> y.shape
    (1, 5, 5, 2)
    >>> y[0, 2, :, 1]  # rate 2: the taps two pixels out fall in the padding at the edges
    array([6., 6., 9., 6., 6.], dtype=float32)
    """
    call = prepare_branches(x, kernels, rates, biases, activation)
    runtime = runtime_for(call.branches[0], device)
    for p in call.branches:
        check_device(runtime, p)
    n, h, w, _ = call.shape
    shape = (n, h, w, call.channels)
    dtype, queue = call.dtype, runtime.queue
    on_device = is_device_array(call.x)
    if 0 in shape:
        return cl_array.empty(queue, shape, dtype) if on_device else np.empty(shape, dtype)
    _check_fits(runtime, call, shape)
    try:
        launches = branch_launches(runtime, call)
        if on_device:
            result = staging.device_empty(runtime, shape, dtype)
            waits = poison(queue, result.base_data, dtype, result.nbytes, [])
            events, _ = enqueue_branches(runtime, launches, result.base_data, waits)
            result.events.extend(events)
            return result
        return _host_call(runtime, launches, shape)
    except cl.MemoryError as exc:
        raise DeviceMemoryError(
            f"the device {runtime.info.name!r} could not hold the branches of x {call.shape} "
            f"into {shape} ({exc}); the fused call is not split: call conv2d per branch"
        ) from None


def _host_call(runtime: Runtime, launches, shape) -> np.ndarray:
    """The launches on host arrays, read in place where possible; waits for the result."""
    dtype, queue = launches[0][0].dtype, runtime.queue
    result, y_buf, shared = staging.host_output(runtime, shape, dtype)
    pending: list[cl.Event] = []
    try:
        pending = poison(queue, y_buf, dtype, result.nbytes, [])
        # ``buffers`` holds the aligned host copies the kernels read in
        # place until they are done (freed at once, they were read freed).
        pending, buffers = enqueue_branches(runtime, launches, y_buf, pending, share=True)
        staging.read_back(queue, result, y_buf, shared, pending)
        del buffers
    except BaseException:
        # The kernels may be reading the caller's arrays: never leave before they are done.
        for event in pending:
            event.wait()
        raise
    return result


def _check_fits(runtime: Runtime, call: PreparedBranches, shape) -> None:
    """A DeviceMemoryError, before any allocation, for buffers past what the device may hold."""
    itemsize = call.dtype.itemsize
    sizes = [math.prod(call.shape) * itemsize, math.prod(shape) * itemsize]
    sizes += [math.prod(p.geometry.kernel_shape) * itemsize for p in call.branches]
    max_alloc, budget = limits(runtime)
    if max(sizes) > max_alloc or sum(sizes) > budget:
        raise DeviceMemoryError(
            f"the branches of x {call.shape} into {shape} need buffers of {max(sizes)} bytes, "
            f"{sum(sizes)} in all; the device {runtime.info.name!r} takes {max_alloc} at most in one, "
            f"{budget} in all (the fused call is not split: call conv2d per branch, which splits)"
        )


def spatial_mean(runtime: Runtime, x: cl_array.Array) -> cl_array.Array:
    """Each image's mean over its pixels: device ``x`` (N, H, W, C) -> (N, 1, 1, C), after ``x``'s events.

    One launch of ``kernels/spatial_mean.cl`` (row sums, then their sum);
    the result carries its event and is not waited for.
    """
    n, h, w, c = x.shape
    launch = cached_launch(
        runtime,
        ("spatial_mean", tuple(x.shape), x.dtype),
        lambda: mean_plan(tuple(x.shape), x.dtype, runtime.info.max_work_group),
    )
    result = cl_array.empty(runtime.queue, (n, 1, 1, c), x.dtype)
    waits = poison(runtime.queue, result.base_data, x.dtype, result.nbytes, staging.pending_events(x))
    event = launch.enqueue(
        runtime.queue, (x.base_data, result.base_data), (x.offset // x.dtype.itemsize,), waits
    )
    result.events.append(event)
    return result


def _into(runtime: Runtime, call: PreparedBranches, y: cl_array.Array, offsets, bias_stride: int = 0) -> None:
    """Launch ``call``'s branches into their slices of device ``y``, after every event pending on it.

    ``y``'s events gain the launch's, so a later reader of ``y`` waits for
    every slice (``events`` grows by hand: PyOpenCL's ``add_event`` would
    wait on the host once it holds a dozen).
    """
    channels = y.shape[-1]
    launches = branch_launches(runtime, call, channels=channels, offsets=offsets, bias_stride=bias_stride)
    events, _ = enqueue_branches(runtime, launches, y.base_data, staging.pending_events(y))
    y.events.extend(events)


def aspp_block(
    runtime: Runtime,
    x: cl_array.Array,
    *,
    pointwise: tuple,
    atrous: Sequence[tuple],
    rates: Sequence[IntOrPair],
    pooling: tuple | None,
    projection: tuple,
    activation: str,
) -> cl_array.Array:
    """DeepLab's ASPP block on device ``x`` (N, H, W, C_in): the device result (N, H, W, F), not waited for.

    ``pointwise`` is the 1x1 branch's (kernel, bias); ``atrous`` one entry
    per rate: (kernel, bias) for a dense branch, or (depthwise kernel,
    depthwise bias, pointwise kernel, pointwise bias) for a separable one;
    ``pooling`` the image-pooling branch's (kernel, bias) or None;
    ``projection`` (the kernel's rows of the 1x1 and atrous branches
    ``(1, 1, (1 + R) * F, F)``, the rows of the pooling branch ``(1, 1, F,
    F)`` or None, bias).  Each convolution is followed by ``activation``.
    The weights may be host or device arrays of ``x``'s dtype.

    Every launch waits for the ones it reads by their events; none waits
    on the host.  The dense branches are one fused launch writing their
    slices of one buffer; each separable branch is a depthwise launch, then
    a 1x1 launch into its slice.  The pooling branch, constant over the
    pixels, enters the projection as a per-image bias (``projection bias +
    its rows of the projection kernel times the branch's output``): the
    concatenation holds the other branches only, and the projection is one
    more fused launch reading it with that bias.
    """
    n, h, w, _ = x.shape
    features = pointwise[0].shape[-1]
    dtype, queue = x.dtype, runtime.queue
    concat = staging.device_empty(runtime, (n, h, w, features * (1 + len(rates))), dtype)
    concat.events.extend(poison(queue, concat.base_data, dtype, concat.nbytes, []))
    if all(len(branch) == 2 for branch in atrous):  # dense: one launch for every branch
        kernels = [pointwise[0], *(branch[0] for branch in atrous)]
        biases = [pointwise[1], *(branch[1] for branch in atrous)]
        call = prepare_branches(x, kernels, [1, *rates], biases, activation)
        _into(runtime, call, concat, [features * i for i in range(1 + len(rates))])
    else:
        _into(runtime, prepare_branches(x, [pointwise[0]], [1], [pointwise[1]], activation), concat, [0])
        for i, ((dk, db, pk, pb), rate) in enumerate(zip(atrous, rates, strict=True), start=1):
            middle = depthwise_conv2d(x, dk, db, padding="same", dilation_rate=rate, activation=activation)
            _into(runtime, prepare_branches(middle, [pk], [1], [pb], activation), concat, [features * i])
    rows, pooled_rows, bias = projection
    bias_stride = 0
    if pooling is not None:
        mean = spatial_mean(runtime, x)
        pooled = conv2d(mean, pooling[0], pooling[1], activation=activation)
        bias = conv2d(pooled, pooled_rows, bias)  # (N, 1, 1, F): one bias per image
        bias_stride = features
    call = prepare_branches(concat, [rows], [1], [projection[2]], activation)
    call = replace(call, branches=(replace(call.branches[0], bias=bias),))
    result = staging.device_empty(runtime, (n, h, w, features), dtype)
    result.events.extend(poison(queue, result.base_data, dtype, result.nbytes, []))
    _into(runtime, call, result, [0], bias_stride)
    return result
