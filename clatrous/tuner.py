"""The tuner: time every configuration of every applicable variant, keep the fastest correct one.

It sits above everything else (it runs operations); what it finds goes into
the tuning database of :mod:`clatrous.params`, which later launches consult.

Every candidate is first launched once, untimed, into an output filled with
NaN, and checked against the operation's reference within
:func:`clatrous.reference.error_bound` (a candidate that leaves an element
unwritten, differs, fails to build or fails to launch is rejected and the
search goes on), then timed warm: the fastest of ``repeats`` launches of its
kernel on device-resident arrays, into one output buffer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from . import params, reference
from .arguments import prepare
from .conv import CONV2D
from .errors import BuildError, UnsupportedDeviceError
from .launch import forget_launches, get_launch
from .runtime import get_runtime
from .variants import Operation

__all__ = ["TuningResult", "tune"]


class TuningResult:
    """What :func:`tune` found: every candidate's time, and the winner."""

    def __init__(
        self,
        key: str,
        timings: list,
        rejected: list,
        winner: tuple,
        path: Path | None,
        untried: int,
        store_error: str | None = None,
    ):
        self.key = key
        self.timings = timings  # [(variant, config, seconds)], fastest first
        self.rejected = rejected  # [(variant, config, reason)]
        self.winner = winner  # (variant, config, seconds)
        self.path = path  # where the winner was stored, or None
        self.untried = untried  # candidates left when the time budget ran out
        self.store_error = store_error  # why the winner could not be stored, or None

    def __repr__(self) -> str:
        variant, config, seconds = self.winner
        return f"TuningResult({self.key!r}: {variant} {config} {seconds * 1e3:.3f} ms)"


def _progress(done: int, total: int, label: str, stream) -> None:
    width = 30
    filled = width * done // max(total, 1)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:60]:<60}")
    stream.flush()


#: A candidate whose first timed (warm) run is this many times the best so
#: far is not timed again.
HOPELESS = 3.0


def tune(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    groups=1,
    dtype=np.float32,
    device=None,
    repeats: int = 5,
    budget_s: float | None = None,
    progress: bool = True,
    store: bool = True,
    candidates: list[tuple[str, dict]] | None = None,
    op: Operation = CONV2D,
) -> TuningResult:
    """Search the variants' configurations for one shape of ``op`` on one device.

    ``x_shape`` and ``kernel_shape`` are those of :func:`clatrous.conv2d`
    (4-D) or :func:`clatrous.conv1d` (3-D).  The winner is stored in the
    per-user tuning database unless ``store`` is False; when it cannot be
    stored, the result says why (``store_error``) and nothing is lost.  With
    ``budget_s``, the search stops after that many seconds: the default
    configuration is tried first, the others in a shuffled (but repeatable)
    order, so a short budget still samples the whole space.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if budget_s is not None and not (isinstance(budget_s, (int, float)) and budget_s >= 0):
        raise ValueError(f"budget_s must be None or a non-negative number of seconds, got {budget_s!r}")
    ndim = len(x_shape) - 2
    if ndim not in (1, 2):
        raise ValueError(f"x_shape must be 3-D (conv1d) or 4-D (conv2d), got {tuple(x_shape)}")
    runtime = get_runtime(device)
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(12345)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    bias = rng.standard_normal(kernel_shape[-1]).astype(dtype)
    geometry_args = dict(strides=strides, padding=padding, dilation_rate=dilation_rate, groups=groups)
    prepared = prepare(x, kernel, bias, activation=None, ndim=ndim, **geometry_args)
    g = prepared.geometry
    if 0 in g.output_shape:
        raise ValueError(
            f"tune needs a problem with outputs, got x {tuple(x_shape)} and kernel {tuple(kernel_shape)} "
            f"(output {g.output_shape}): every candidate would pass on nothing"
        )
    if dtype == np.float64 and not runtime.info.fp64:
        raise UnsupportedDeviceError(f"device {runtime.info.name!r} has no cl_khr_fp64 for dtype float64")
    expected = op.reference(prepared).astype(np.float64)
    bound = reference.error_bound(x, kernel, dtype, ndim=ndim, **geometry_args)
    if bound.size == expected.size:  # conv1d's (N, L, C) as the launch's (N, 1, L, C)
        bound = bound.reshape(expected.shape)

    if candidates is None:
        space = params.search_candidates(runtime.info, op, g, dtype)
        name, config = op.defaults(runtime.info, g, dtype)
        first = (name, op.variant(name).complete(config))  # as the space lists it, every parameter set
        rest = [c for c in space if c != first]
        np.random.default_rng(0).shuffle(rest)
        candidates = [first, *rest] if first in space else rest
    queue = runtime.queue
    x_dev = cl_array.to_device(queue, prepared.x)
    k_dev = cl_array.to_device(queue, prepared.kernel)
    b_dev = cl_array.to_device(queue, prepared.bias)
    y_dev = cl_array.empty(queue, g.output_shape, dtype)
    buffers = (x_dev.base_data, k_dev.base_data, b_dev.base_data, y_dev.base_data)
    nan = np.array(np.nan, dtype)
    stream = sys.stderr
    timings, rejected = [], []
    started = time.perf_counter()
    untried = 0
    for index, (variant, config) in enumerate(candidates):
        if budget_s is not None and timings and time.perf_counter() - started > budget_s:
            untried = len(candidates) - index
            break
        label = f"{variant} {' '.join(f'{k}={v}' for k, v in sorted(config.items()))}"
        if progress:
            _progress(index, len(candidates), label, stream)
        try:
            # Checked, untimed: it builds the program, and a CPU driver such
            # as PoCL compiles the work-group function on a first launch.
            # The output is NaN first, so an element left unwritten fails.
            launch = get_launch(runtime, op, prepared, (variant, config))
            fill = cl.enqueue_fill_buffer(queue, y_dev.base_data, nan, 0, y_dev.nbytes)
            launch.enqueue(queue, buffers, (0,), [fill]).wait()
            out = y_dev.get()
        except BuildError as exc:
            rejected.append((variant, config, f"build failed: {str(exc).splitlines()[0]}"))
            continue
        except (cl.Error, ValueError, RuntimeError, UnsupportedDeviceError) as exc:
            rejected.append((variant, config, f"could not launch: {type(exc).__name__}: {exc}"))
            continue
        error = np.abs(out.astype(np.float64) - expected)
        if not np.all(error <= bound):  # NaN (unwritten) fails this too
            worst = "an unwritten element" if np.isnan(out).any() else f"{np.nanmax(error):.3g}"
            rejected.append((variant, config, f"differs from the reference by {worst}"))
            continue
        del out, error
        # Timed: the kernel alone, into one output buffer, launch after
        # launch.  A fresh output per call would time the allocator too: on a
        # CPU device its new pages fault inside the kernel.
        launch.enqueue(queue, buffers, (0,))  # untimed: warms the caches
        samples = []
        for _ in range(repeats):
            queue.finish()
            start = time.perf_counter()
            launch.enqueue(queue, buffers, (0,))
            queue.finish()
            samples.append(time.perf_counter() - start)
            if timings and samples[0] > HOPELESS * min(t for _, _, t in timings):
                # Far slower than the best so far: one run says enough, and
                # the budget goes to candidates that may win.
                break
        # The fastest run: interference from other work on the machine only adds time.
        timings.append((variant, config, float(min(samples))))
    if progress:
        tried = len(candidates) - untried
        label = f"budget spent: {tried} of {len(candidates)} tried" if untried else "done"
        _progress(tried, len(candidates), label, stream)
        stream.write("\n")
    if not timings:
        raise RuntimeError(f"no configuration passed the reference check: {rejected}")
    timings.sort(key=lambda item: item[2])
    winner = timings[0]
    key = params.class_key(op, g, dtype)
    path, store_error = None, None
    if store:
        entry = {
            "variant": winner[0],
            "config": winner[1],
            "best_ms": round(winner[2] * 1e3, 4),
            "shape": {"x": list(x_shape), "kernel": list(kernel_shape), "padding": repr(padding)},
            "tuned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            path = params.store(runtime.info.key, key, entry)
        except params.DatabaseError as exc:
            store_error = str(exc)
        forget_launches()
    return TuningResult(key, timings, rejected, winner, path, untried, store_error)
