"""Which variant and configuration a launch uses, per device and shape, and the tuner.

The choice comes from, in order:

1. the tuning database that ``python -m clatrous tune`` writes for this device:
   a JSON file in the per-user cache folder (``tuning.json`` in
   :func:`clatrous.runtime.cache_dir`), keyed by the device's platform, vendor,
   name and driver, then by the convolution's class (dtype, channels, kernel
   size, strides, dilation);
2. the table of defaults below, which depends on the device kind, the dtype
   and the channel counts.

The database is data, never code: it is parsed as JSON, every entry is
checked against the variants' search spaces before use, and a file that does
not parse or does not fit the schema is ignored (and replaced by the next
tuning run), never trusted.

The tuner runs every configuration of every applicable variant on the present
device, rejects any whose result differs from :mod:`clatrous.reference`
beyond :func:`clatrous.reference.error_bound`, and keeps the fastest.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import variants
from .geometry import ConvGeometry
from .runtime import DeviceInfo, cache_dir

__all__ = [
    "TuningResult",
    "choose",
    "class_key",
    "database_path",
    "default_config",
    "fits",
    "load_database",
    "search_candidates",
    "tune",
]

_SCHEMA = 1

# Widest vector along the output channels, per device kind and element size.
# CPUs: a full AVX-512 register; GPUs: 4 (one 128-bit load per work-item).
_L2_BYTES = 1 << 20
_MAX_VW = {("cpu", 4): 16, ("cpu", 8): 8, ("gpu", 4): 4, ("gpu", 8): 2, ("other", 4): 4, ("other", 8): 4}


def default_config(info: DeviceInfo, g: ConvGeometry, dtype: np.dtype) -> tuple[str, dict]:
    """The table of defaults: (variant, configuration) for a device and shape."""
    itemsize = np.dtype(dtype).itemsize
    if g.cin == 1 and g.cout == 1:
        if info.kind == "cpu":
            return "plane", {"VW": 16 if itemsize == 4 else 8, "RB": 4}
        return "plane", {"VW": 4, "RB": 2}
    max_vw = _MAX_VW.get((info.kind, itemsize), 4)
    vw = next(v for v in (16, 8, 4, 2, 1) if v <= max_vw and g.cout % v == 0)
    if info.kind != "cpu":
        return "blocked", {"VW": vw, "NV": max(1, min(2, g.cout // vw)), "PX": 2}
    # Up to 64 output channels per work-item (tuned on W3, W4 and W6: 4
    # vectors of 16 beat 2 of 16), with fewer pixels to keep the accumulators
    # in registers.
    nv = max(1, min(4, g.cout // vw, 64 // vw))
    # On a CPU, a work-item of the blocked kernel streams all its weights
    # (kh*kw*cin*VW*NV elements) from memory; past the size of a core's L2 the
    # channel-tiled kernel, which keeps a slice of them in cache for many
    # pixels, wins.
    weights = g.kh * g.kw * g.cin * vw * nv * itemsize
    if weights > _L2_BYTES and vw >= 8 and g.cin >= 64:
        tiled = _tiled_default(info, g, vw, nv, dtype)
        if tiled is not None:
            return "tiled", tiled
    return "blocked", {"VW": vw, "NV": nv, "PX": 4 if nv * vw >= 64 else 6}


def _tiled_default(info: DeviceInfo, g: ConvGeometry, vw: int, nv: int, dtype: np.dtype) -> dict | None:
    """As many pixels per work-item as leave a few work-items per core.

    Each work-item reads its weights once, so the more pixels it covers the
    less weight traffic: on W3, one row per work-item was 1.4x slower than
    half the map.  None when the device's local memory is too small for even
    a few blocks of partial sums.
    """
    px = 6
    channel_blocks = -(-g.cout // (vw * nv))

    def work_items(span):
        nb, rw = span
        return channel_blocks * -(-g.wo // (nb * px)) * g.n * -(-g.ho // rw)

    def config(span):
        return {"VW": vw, "NV": nv, "PX": px, "CT": 64, "NB": span[0], "RW": span[1]}

    block_bytes = px * nv * vw * np.dtype(dtype).itemsize
    spans = [s for s in variants.tiled_spans(g, px, block_bytes) if fits(info, "tiled", config(s), dtype)]
    if not spans:
        return None
    enough = [s for s in spans if work_items(s) >= 4 * max(1, info.compute_units)]
    if enough:
        return config(max(enough, key=lambda s: (s[0] * s[1], s[0])))
    return config(max(spans, key=work_items))


def fits(info: DeviceInfo, variant: str, config: dict, dtype: np.dtype) -> bool:
    """Whether the device has the resources (local memory) ``variant`` with ``config`` needs."""
    return variants.local_bytes(variant, config, dtype) <= info.local_mem


def search_candidates(info: DeviceInfo, g: ConvGeometry, dtype: np.dtype) -> list[tuple[str, dict]]:
    """Every (variant, configuration) the tuner may try, and so pick, for ``g`` on this device."""
    return [
        (variant, config)
        for variant in variants.VARIANTS
        for config in variants.search_space(variant, g, dtype)
        if variants.applicable(variant, g, config) and fits(info, variant, config, dtype)
    ]


# ---------------------------------------------------------------- database


def database_path() -> Path:
    return cache_dir() / "tuning.json"


def class_key(g: ConvGeometry, dtype: np.dtype) -> str:
    """Convolutions that share this key share a tuned configuration."""
    return f"{np.dtype(dtype).name} cin={g.cin} cout={g.cout} k={g.kh}x{g.kw} s={g.sh}x{g.sw} d={g.dh}x{g.dw}"


_db_lock = threading.Lock()
_db_cache: dict | None = None


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("variant") in variants.VARIANTS
        and isinstance(entry.get("config"), dict)
        and all(isinstance(k, str) and type(v) is int for k, v in entry["config"].items())
    )


def load_database(path: Path | None = None) -> dict:
    """The tuning database as ``{device key: {class key: entry}}``; empty if absent or corrupt."""
    path = path or database_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("schema") != _SCHEMA
        or not isinstance(data.get("devices"), dict)
    ):
        return {}
    clean = {}
    for device, entries in data["devices"].items():
        if isinstance(device, str) and isinstance(entries, dict):
            clean[device] = {k: e for k, e in entries.items() if isinstance(k, str) and _valid_entry(e)}
    return clean


def _database() -> dict:
    global _db_cache
    with _db_lock:
        if _db_cache is None:
            _db_cache = load_database()
        return _db_cache


def _store(device_key: str, key: str, entry: dict) -> Path:
    """Add one entry and rewrite the file atomically (a crash leaves the old file)."""
    global _db_cache
    path = database_path()
    with _db_lock:
        devices = load_database(path)
        devices.setdefault(device_key, {})[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"schema": _SCHEMA, "devices": devices}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        _db_cache = devices
    return path


def forget_cached_database() -> None:
    """Re-read the database file on the next lookup (after another process tuned)."""
    global _db_cache
    with _db_lock:
        _db_cache = None


def choose(info: DeviceInfo, g: ConvGeometry, dtype: np.dtype) -> tuple[str, dict]:
    """The (variant, configuration) a launch on ``info`` uses for ``g``."""
    entry = _database().get(info.key, {}).get(class_key(g, dtype))
    if entry is not None:
        variant, config = entry["variant"], entry["config"]
        if (
            variants.applicable(variant, g, config)
            and config in variants.search_space(variant, g, dtype)
            and fits(info, variant, config, dtype)
        ):
            return variant, dict(config)
    return default_config(info, g, dtype)


# ---------------------------------------------------------------- tuner


class TuningResult:
    """What :func:`tune` found: every candidate's time, and the winner."""

    def __init__(
        self, key: str, timings: list, rejected: list, winner: tuple, path: Path | None, untried: int
    ):
        self.key = key
        self.timings = timings  # [(variant, config, seconds)], fastest first
        self.rejected = rejected  # [(variant, config, reason)]
        self.winner = winner  # (variant, config, seconds)
        self.path = path
        self.untried = untried  # candidates left when the time budget ran out

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
_HOPELESS = 3.0


def tune(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    *,
    strides=1,
    padding="valid",
    dilation_rate=1,
    dtype=np.float32,
    device=None,
    repeats: int = 5,
    budget_s: float | None = None,
    progress: bool = True,
    store: bool = True,
    candidates: list[tuple[str, dict]] | None = None,
) -> TuningResult:
    """Search the variants' configurations for one convolution shape on one device.

    Every candidate is first run once, untimed, and checked against
    :mod:`clatrous.reference` on random data (a candidate that differs, or
    fails to build, is rejected), then timed warm: the fastest of
    ``repeats`` launches of its kernel on device-resident arrays, into one
    output buffer (one launch only when that is already three times the best
    time so far).
    The winner is stored in the per-user tuning database unless ``store`` is
    False.  With ``budget_s``, the search stops after that many seconds: the
    default configuration is tried first, the others in a shuffled (but
    repeatable) order, so a short budget still samples the whole space.
    ``x_shape`` and ``kernel_shape`` are those of :func:`conv2d` (4-D) or
    :func:`conv1d` (3-D).
    """
    import pyopencl.array as cl_array

    from . import conv, reference
    from .arguments import prepare
    from .errors import BuildError
    from .runtime import get_runtime

    ndim = len(x_shape) - 2
    runtime = get_runtime(device)
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(12345)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    bias = rng.standard_normal(kernel_shape[-1]).astype(dtype)
    geometry_args = dict(strides=strides, padding=padding, dilation_rate=dilation_rate)
    prepared = prepare(x, kernel, bias, activation=None, ndim=ndim, **geometry_args)
    g = prepared.geometry
    fn = conv.conv1d if ndim == 1 else conv.conv2d
    ref_fn = reference.conv1d if ndim == 1 else reference.conv2d
    expected = ref_fn(x, kernel, bias, **geometry_args)
    bound = reference.error_bound(x, kernel, dtype, ndim=ndim, **geometry_args)

    if candidates is None:
        space = search_candidates(runtime.info, g, dtype)
        first = default_config(runtime.info, g, dtype)
        rest = [c for c in space if c != first]
        np.random.default_rng(0).shuffle(rest)
        candidates = [first, *rest] if first in space else rest
    queue = runtime.queue
    x_dev = cl_array.to_device(queue, x)
    k_dev = cl_array.to_device(queue, kernel)
    b_dev = cl_array.to_device(queue, bias)
    y_dev = cl_array.empty(queue, g.output_shape, dtype)
    x_offset = x_dev.offset // dtype.itemsize
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
            # The checked run, through the public function, is not timed: it
            # builds the program, and a CPU driver such as PoCL compiles the
            # work-group function on a first launch.
            out = fn(x_dev, k_dev, b_dev, device=None, _choice=(variant, config), **geometry_args)
            out = out.get()
        except BuildError as exc:
            rejected.append((variant, config, f"build failed: {str(exc).splitlines()[0]}"))
            continue
        error = np.abs(out.astype(np.float64) - expected)
        if not np.all(error <= bound):
            rejected.append((variant, config, f"differs from the reference by {np.nanmax(error):.3g}"))
            continue
        del out, error
        # Timed: the kernel alone, into one output buffer, launch after
        # launch.  A fresh output per call would time the allocator too: on a
        # CPU device its new pages fault inside the kernel, which made W5's
        # runs swing between 1 and 9 ms after the check's large temporaries.
        launch = conv.plan_for(runtime, prepared, (variant, config))
        buffers = (x_dev.base_data, x_offset, k_dev.base_data, b_dev.base_data, y_dev.base_data)
        launch.enqueue(queue, *buffers)  # untimed: warms the caches
        samples = []
        for _ in range(repeats):
            queue.finish()
            start = time.perf_counter()
            launch.enqueue(queue, *buffers)
            queue.finish()
            samples.append(time.perf_counter() - start)
            if timings and samples[0] > _HOPELESS * min(t for _, _, t in timings):
                # Far slower than the best so far: one run says enough, and
                # the budget goes to candidates that may win.
                break
        # The fastest run: interference from other work on the machine only adds time.
        timings.append((variant, config, float(min(samples))))
    if progress:
        _progress(len(candidates), len(candidates), "done", stream)
        stream.write("\n")
    if not timings:
        raise RuntimeError(f"no configuration passed the reference check: {rejected}")
    timings.sort(key=lambda item: item[2])
    winner = timings[0]
    key = class_key(g, dtype)
    path = None
    if store:
        entry = {
            "variant": winner[0],
            "config": winner[1],
            "best_ms": round(winner[2] * 1e3, 4),
            "shape": {"x": list(x_shape), "kernel": list(kernel_shape), "padding": repr(padding)},
            "tuned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = _store(runtime.info.key, key, entry)
        conv.forget_launches()
    return TuningResult(key, timings, rejected, winner, path, untried)
