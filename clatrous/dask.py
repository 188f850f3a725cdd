"""Images and batches of any size through Dask: the operations on ``dask.array.Array``.

``pip install "clatrous[dask]"``.  :func:`conv2d`, :func:`conv1d`,
:func:`depthwise_conv2d` and :func:`starlet` take a ``dask.array.Array``
where the in-memory functions take an ndarray, with the same arguments, and
return a lazy ``dask.array.Array`` whose ``.compute()`` equals the in-memory
function on the whole array (to float tolerance; bit for bit where the same
kernel configuration computes every block, as under
:func:`clatrous.params.forced`).  Each block is one call of the in-memory
function on the block and its halo, on the worker's device: a worker
process makes its OpenCL context and queue once (``clatrous.runtime``
keeps them) and reuses them for every block.

How a block is exact (the convolutions): along each spatial axis, an
output belongs to the block that holds its tap ``c = min(pad before, d * (k
- 1))`` from the first (so a stride-1 "same" or "causal" result is chunked
as the input), and the block reads its own elements with a halo of ``c``
before and ``d * (k - 1) - c`` after them (dask's ``overlap`` with
``boundary="none"``).  Under ``padding_mode="zeros"`` the
blocks at the edges of the image get the call's own padding there, so a
padded tap is skipped exactly as in one piece; under the other modes the
image is first padded along each axis as ``np.pad`` pads it, at any width,
by slabs gathered from the image (wrap included), and the blocks compute
"valid" convolutions.  With strides each block starts at the first tap of
its first output, so no block origin needs aligning.  The channel axis is
never split: it is rechunked whole (a block needs every input channel).

The starlet's halo is the reach of all its levels, ``2 * (2**J - 1)`` on
every side (``3 * 2**J - 2`` for generation 2, whose planes smooth once
more); a block at the image's edge starts at the edge, so each level
pads there as in one piece, and the circular border takes its halo from the
far side (dask's ``boundary="periodic"``).

:func:`cluster` starts a ``distributed.LocalCluster`` with one worker
process per OpenCL device, each pinned to its device.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from . import conv as _conv
from . import wavelet as _wavelet
from .arguments import normalize_activation, prepare, result_dtype
from .geometry import conv_geometry, normalize_padding_mode
from .reference import apply_activation
from .runtime import list_devices, usable_devices

__all__ = ["cluster", "conv1d", "conv2d", "depthwise_conv2d", "starlet"]


def _check_dask(x, name: str = "x") -> None:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array (the in-memory functions take ndarrays), "
            f"got {type(x).__name__}"
        )


_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap", "symmetric": "symmetric"}


def _pad_axis(x: da.Array, axis: int, before: int, after: int, mode: str) -> da.Array:
    """``x`` padded along ``axis`` as ``np.pad`` pads it with ``mode``'s numpy name, at any width.

    The padding is gathered from the image by the index map ``np.pad`` gives
    ``np.arange(n)``: two slabs, concatenated around ``x``.
    """
    if before == 0 and after == 0:
        return x
    n = x.shape[axis]
    index = np.pad(np.arange(n), (before, after), mode=_NUMPY_MODE[mode])
    parts = [da.take(x, index[:before], axis=axis)] if before else []
    parts.append(x)
    if after:
        parts.append(da.take(x, index[before + n :], axis=axis))
    return da.concatenate(parts, axis=axis)


def _owned(bounds: list[tuple[int, int]], s: int, shift: int, count: int) -> list[tuple[int, int]]:
    """For each block ``[a, b)`` of an axis, the outputs ``[o0, o1)`` whose anchor tap it holds.

    Output ``o``'s anchor is at ``o * s - shift``; the first block also owns
    the outputs anchored before the axis, the last those anchored after it.
    """
    owned = []
    for j, (a, b) in enumerate(bounds):
        o0 = 0 if j == 0 else min(count, max(0, -(-(a + shift) // s)))
        o1 = count if j == len(bounds) - 1 else min(count, max(0, -(-(b + shift) // s)))
        owned.append((o0, max(o0, o1)))
    return owned


def _bounds(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _convolve(function, x, kernel, bias, *, ndim, strides, padding, dilation_rate, padding_mode, **call):
    """The blockwise form of ``function`` (conv1d/conv2d/depthwise_conv2d) on dask ``x``."""
    _check_dask(x)
    plain = x.ndim == ndim and np.ndim(kernel) == ndim
    if plain:  # an image (or signal) with a plain kernel: one channel in and out
        x = x[(None, ..., None)]
        kernel = np.asarray(kernel)[(..., None, None)]
    kernel = np.asarray(kernel)
    depthwise = function is _conv.depthwise_conv2d
    shape_kernel = (*kernel.shape[:-2], 1, kernel.shape[-2] * kernel.shape[-1]) if depthwise else kernel.shape
    mode = normalize_padding_mode(padding_mode)
    groups = kernel.shape[-2] if depthwise else call.get("groups", 1)
    geometry = conv_geometry(
        tuple(x.shape), tuple(shape_kernel), strides=strides, padding=padding,
        dilation_rate=dilation_rate, ndim=ndim, groups=groups, padding_mode=mode,
    )  # fmt: skip
    dtype = result_dtype(x.dtype, "x")
    # Every other check of the in-memory call, before any graph is built:
    # on a zero-stride stand-in for a block as large as the dilated kernel.
    extent = [geometry.dh * (geometry.kh - 1) + 1, geometry.dw * (geometry.kw - 1) + 1][2 - ndim :]
    probe = np.broadcast_to(np.zeros((), dtype), (1, *extent, x.shape[-1]))
    kw = dict(call, strides=strides, dilation_rate=dilation_rate)
    prepare_kw = {k: v for k, v in kw.items() if k in ("strides", "dilation_rate", "activation", "groups")}
    if depthwise:
        prepare(probe, kernel.reshape(shape_kernel), bias, padding="valid", ndim=2, **{
            **prepare_kw, "groups": groups})  # fmt: skip
    else:
        prepare(probe, kernel, bias, padding="valid", ndim=ndim, **prepare_kw)
    call["activation"] = normalize_activation(call.get("activation"))

    spatial = list(range(1, ndim + 1))
    sizes = [geometry.h, geometry.w][2 - ndim :]
    outs = [geometry.ho, geometry.wo][2 - ndim :]
    steps = [geometry.sh, geometry.sw][2 - ndim :]
    taps = [geometry.dh * (geometry.kh - 1), geometry.dw * (geometry.kw - 1)][2 - ndim :]
    pads = [(geometry.pad_top, geometry.pad_bottom), (geometry.pad_left, geometry.pad_right)][2 - ndim :]
    if x.dtype != dtype:
        x = x.astype(dtype)
    x = x.rechunk({x.ndim - 1: -1})  # every input channel in each block
    # Output o belongs to the block holding its tap at c = min(pad before,
    # d * (k - 1)) from its first: a stride-1 "same" or "causal" result is
    # then chunked as x, and the halo is c before and d * (k - 1) - c after.
    anchors = [min(before, tap) for (before, _), tap in zip(pads, taps, strict=True)]
    if mode != "zeros":  # the border as np.pad makes it, then "valid" blocks
        for axis, (before, after) in zip(spatial, pads, strict=True):
            chunks = list(x.chunks[axis])
            x = _pad_axis(x, axis, before, after, mode)
            chunks[0] += before
            chunks[-1] += after
            x = x.rechunk({axis: tuple(chunks)})  # the slabs in the edge blocks: blocks as x's
        sizes = [n + a + b for n, (a, b) in zip(sizes, pads, strict=True)]
        pads = [(0, 0)] * ndim
    # Chunks shorter than the halo merged with a neighbour first (dask's
    # overlap would rechunk them itself, under the plans below).
    halos = [(c, tap - c) for c, tap in zip(anchors, taps, strict=True)]
    x = x.rechunk(
        {axis: tuple(_at_least(x.chunks[axis], max(h))) for axis, h in zip(spatial, halos, strict=True)}
    )
    depth = dict(zip(spatial, halos, strict=True))
    extended = da.overlap.overlap(x, depth=depth, boundary={axis: "none" for axis in spatial})
    # Per spatial axis and block: (outputs, the window read in the extended
    # block [start, stop), the local pads before and after).
    plans = []
    for axis, n, s, tap, c, (before, _), count in zip(
        spatial, sizes, steps, taps, anchors, pads, outs, strict=True
    ):
        bounds = _bounds(x.chunks[axis])
        axis_plans = []
        for j, ((a, _b), (o0, o1)) in enumerate(
            zip(bounds, _owned(bounds, s, before - c, count), strict=True)
        ):
            if o1 == o0:
                axis_plans.append((0, 0, 0, 0, 0))
                continue
            first, last = o0 * s - before, (o1 - 1) * s - before + tap + 1  # [first, last) in the input
            lo, hi = max(first, 0), min(last, n)
            start = a - c if j else a  # where the extended block begins (no halo before the first)
            axis_plans.append((o1 - o0, lo - start, hi - start, lo - first, last - hi))
        plans.append(axis_plans)
    cout = shape_kernel[-1]

    def block(xb, block_id=None):
        spans = [plans[i][block_id[axis]] for i, axis in enumerate(spatial)]
        out_shape = (xb.shape[0], *(span[0] for span in spans), cout)
        if 0 in out_shape:
            return np.empty(out_shape, dtype)
        if any(span[2] <= span[1] for span in spans):
            # Every tap of these outputs is in the zero padding: skipped, as in one piece.
            constant = np.zeros(cout) if bias is None else np.asarray(bias, np.float64)
            return np.broadcast_to(apply_activation(constant, call["activation"]).astype(dtype), out_shape)
        window = (slice(None), *(slice(span[1], span[2]) for span in spans), slice(None))
        local = tuple((span[3], span[4]) for span in spans)
        return function(
            np.ascontiguousarray(xb[window]), kernel, bias, padding=local if ndim == 2 else local[0],
            padding_mode="zeros", **kw,
        )  # fmt: skip

    chunks = (x.chunks[0], *(tuple(p[0] for p in axis_plans) for axis_plans in plans), (cout,))
    result = extended.map_blocks(block, dtype=dtype, chunks=chunks, meta=np.empty((0,) * x.ndim, dtype))
    return result[(0, ..., 0)] if plain else result


def conv2d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1, activation=None,
           groups=1, padding_mode="zeros", device=None):  # fmt: skip
    """:func:`clatrous.conv2d` on a dask array ``x`` (N, H, W, C_in), or an (H, W) image with a 2-D kernel.

    Returns a lazy ``dask.array.Array`` of the in-memory result's shape,
    chunked as ``x`` along the batch and, along the rows and columns, by the
    outputs whose anchor tap each block of ``x`` holds (as ``x`` for a
    stride-1 "same" convolution, once any chunk shorter than the halo is
    merged with a neighbour).  Arguments as for
    :func:`clatrous.conv2d` (channels last; ``device`` is each worker's
    default, so it is not taken here: see :func:`cluster`).

    Raises
    ------
    TypeError, ValueError
        As :func:`clatrous.conv2d` raises them, when the graph is built
        (before any block runs); ``x`` not a dask array is a TypeError.
    """
    _no_device(device)
    return _convolve(
        _conv.conv2d, x, kernel, bias, ndim=2, strides=strides, padding=padding,
        dilation_rate=dilation_rate, padding_mode=padding_mode, activation=activation, groups=groups,
    )  # fmt: skip


def conv1d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1, activation=None,
           groups=1, padding_mode="zeros", device=None):  # fmt: skip
    """:func:`clatrous.conv1d` on a dask array ``x`` (N, L, C_in), or an (L,) signal with a 1-D kernel.

    As :func:`conv2d`, along one axis (``padding="causal"`` too).

    Raises
    ------
    TypeError, ValueError
        As :func:`clatrous.conv1d` raises them, when the graph is built.
    """
    _no_device(device)
    return _convolve(
        _conv.conv1d, x, kernel, bias, ndim=1, strides=strides, padding=padding,
        dilation_rate=dilation_rate, padding_mode=padding_mode, activation=activation, groups=groups,
    )  # fmt: skip


def depthwise_conv2d(x, kernel, bias=None, *, strides=1, padding="valid", padding_mode="zeros",
                     dilation_rate=1, activation=None, device=None):  # fmt: skip
    """:func:`clatrous.depthwise_conv2d` on a dask array ``x`` (N, H, W, C_in).

    As :func:`conv2d`; the kernel is ``(kh, kw, C_in, M)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`clatrous.depthwise_conv2d` raises them, when the graph is built.
    """
    _no_device(device)
    return _convolve(
        _conv.depthwise_conv2d, x, kernel, bias, ndim=2, strides=strides, padding=padding,
        dilation_rate=dilation_rate, padding_mode=padding_mode, activation=activation,
    )  # fmt: skip


def starlet(image, levels, *, generation=1, padding_mode="reflect", device=None):
    """:func:`clatrous.starlet` on a dask array ``image`` (H, W) or a batch (N, H, W).

    Returns a lazy ``dask.array.Array`` ``(levels + 1, H, W)`` (a batch:
    ``(N, levels + 1, H, W)``), chunked as ``image`` along the batch and the
    pixels.  Each block is computed with a halo of ``2 * (2**levels - 1)``
    pixels (generation 2: ``3 * 2**levels - 2``), the reach of all the
    levels; a chunk smaller than that is merged with a neighbour first.

    Raises
    ------
    TypeError, ValueError
        As :func:`clatrous.starlet` raises them, when the graph is built.
    """
    _no_device(device)
    _check_dask(image, "image")
    levels, generation, mode = _wavelet._check(levels, generation, padding_mode)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or a batch (N, H, W), got shape {image.shape}")
    if min(image.shape[-2:]) < 1:
        raise ValueError(f"image must have at least one row and one column, got shape {image.shape}")
    dtype = result_dtype(image.dtype, "image")
    plain = image.ndim == 2
    x = image[None] if plain else image
    if x.dtype != dtype:
        x = x.astype(dtype)
    # c_J reaches 2 * (2**J - 1) pixels; generation 2's last plane smooths
    # c_J once more (h_{J-1} * c_J), 2**J further.
    reach = 2 * (2**levels - 1) + (2**levels if generation == 2 else 0)
    spatial = (1, 2)
    # A halo past the axis is the whole axis: clip it (dask refuses a deeper one).
    depth = {axis: min(reach, x.shape[axis]) for axis in spatial}
    boundary = "periodic" if mode == "circular" else "none"
    x = x.rechunk({axis: tuple(_at_least(x.chunks[axis], depth[axis])) for axis in spatial})
    extended = da.overlap.overlap(x, depth=depth, boundary={axis: boundary for axis in spatial})
    cores = [_bounds(x.chunks[axis]) for axis in spatial]

    def block(xb, block_id=None):
        planes = _wavelet.starlet(np.ascontiguousarray(xb), levels, generation=generation, padding_mode=mode)
        window = [slice(None), slice(None)]
        for i, axis in enumerate(spatial):
            a, b = cores[i][block_id[axis + 1]]  # the result has the levels axis before the pixels
            start = depth[axis] if boundary == "periodic" else a - max(0, a - depth[axis])
            window.append(slice(start, start + b - a))
        return planes[tuple(window)]

    chunks = (x.chunks[0], (levels + 1,), x.chunks[1], x.chunks[2])
    result = extended.map_blocks(
        block, dtype=dtype, chunks=chunks, new_axis=1, meta=np.empty((0,) * 4, dtype)
    )
    return result[0] if plain else result


def _at_least(chunks: tuple[int, ...], size: int) -> list[int]:
    """``chunks`` merged, neighbour into neighbour, until each is at least ``size`` (or the whole axis)."""
    merged: list[int] = []
    for chunk in chunks:
        if merged and merged[-1] < size:
            merged[-1] += chunk
        else:
            merged.append(chunk)
    if len(merged) > 1 and merged[-1] < size:
        last = merged.pop()
        merged[-1] += last
    return merged


def _no_device(device) -> None:
    if device is not None:
        raise ValueError(
            "device is each worker's default in clatrous.dask (set CLATROUS_DEVICE, or start "
            "clatrous.dask.cluster(devices=...)); leave it out"
        )


def cluster(devices=None, **kwargs):
    """A ``distributed.LocalCluster`` with one worker process per OpenCL device, each pinned to it.

    ``devices``: the devices to use, as ``pyopencl.Device`` objects or
    ``CLATROUS_DEVICE`` strings (``"1:0"``, ``"intel"``); by default every
    usable device.  Each worker has one thread and its own
    ``CLATROUS_DEVICE``, so it makes one OpenCL context and queue for its
    device and keeps them for every block.  Other keywords go to the
    cluster (``dashboard_address``, say).  Use it with
    ``distributed.Client(cluster)``; close both when done.

    Raises
    ------
    ValueError
        No devices, or a device that is not among the platforms' devices.
    """
    import distributed

    specs = [_device_spec(d) for d in (usable_devices() if devices is None else devices)]
    if not specs:
        raise ValueError("devices must name at least one OpenCL device")
    kwargs.setdefault("dashboard_address", None)
    local = distributed.LocalCluster(n_workers=0, threads_per_worker=1, processes=True, **kwargs)
    for i, spec in enumerate(specs):
        local.worker_spec[f"clatrous-{i}-{spec}"] = {
            "cls": distributed.Nanny,
            "options": {"nthreads": 1, "env": {"CLATROUS_DEVICE": spec}},
        }
    local.sync(local._correct_state)
    local.wait_for_workers(len(specs))
    return local


def _device_spec(device) -> str:
    """A ``CLATROUS_DEVICE`` string naming ``device`` (``"platform:device"`` indices)."""
    if isinstance(device, str):
        if not device.strip():
            raise ValueError("devices must not hold an empty name")
        return device
    for platform_index, device_index, _platform, known in list_devices():
        if known.int_ptr == getattr(device, "int_ptr", None):
            return f"{platform_index}:{device_index}"
    raise ValueError(f"devices holds {device!r}, which is not among this machine's OpenCL devices")
