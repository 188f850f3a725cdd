"""Which variant and configuration a launch uses: defaults per device, and the tuning database.

The choice for an operation on a device and geometry comes from, in order:

1. a choice forced for the current thread with :func:`forced` (the tuner,
   the tests and the benchmark's naive-kernel row use it);
2. the tuning database that ``python -m clatrous tune`` writes for this
   device: a JSON file in the per-user cache folder (``tuning.json`` in
   :func:`clatrous.runtime.cache_dir`), keyed by the device's platform,
   vendor, name and driver, then by the operation's class (dtype, channels,
   kernel size, strides, dilation);
3. the operation's table of defaults (:func:`conv2d_defaults` for the dense
   convolution), which depends on the device kind, the dtype and the
   channel counts.

The database is data, never code.  Only a regular file of at most
:data:`MAX_DATABASE_BYTES` is read; it is parsed as JSON; an entry is used
only when its variant belongs to the operation and its configuration is
valid for that variant (:meth:`clatrous.variants.Variant.valid`) and fits the
device.  A file that cannot be read or parsed is ignored and replaced by the
next tuning run.  Entries this version does not understand are kept, never
used and written back untouched; a file written by a newer schema is never
overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent tuners may lose entries there
    fcntl = None

from .geometry import ConvGeometry
from .runtime import DeviceInfo, cache_dir
from .variants import Operation, Variant, tiled_spans, variant_names

__all__ = [
    "MAX_DATABASE_BYTES",
    "DatabaseError",
    "aspp_defaults",
    "choose",
    "class_key",
    "conv2d_defaults",
    "database_path",
    "fits",
    "forced",
    "forced_choice",
    "forget_cached_database",
    "inspect_database",
    "load_database",
    "search_candidates",
    "store",
]

SCHEMA = 1
#: A tuning database larger than this is not read (it is ignored, as a corrupt one).
MAX_DATABASE_BYTES = 4 * 2**20


class DatabaseError(OSError):
    """The tuning database could not be written (the message says where and why)."""


# ---------------------------------------------------------------- forced choices

_forced = threading.local()
# How many threads are inside ``forced`` now: while none is, every call
# skips the thread-local lookup (0.35 us of a W1 call's 90).
_forcing = 0
_forcing_lock = threading.Lock()


@contextlib.contextmanager
def forced(variant: str, config: dict):
    """Within the block, this thread's launches use ``variant`` with ``config``.

    >>> from clatrous import params
    >>> with params.forced("direct", {}):
    ...     pass  # clatrous.conv2d(...) here runs the direct kernel
    """
    global _forcing
    before = getattr(_forced, "choice", None)
    _forced.choice = (variant, dict(config))
    with _forcing_lock:
        _forcing += 1
    try:
        yield
    finally:
        _forced.choice = before
        with _forcing_lock:
            _forcing -= 1


def forced_choice() -> tuple[str, dict] | None:
    """The (variant, configuration) forced on this thread, or None."""
    if not _forcing:
        return None
    return getattr(_forced, "choice", None)


# ---------------------------------------------------------------- defaults

# Widest vector along the output channels, per device kind and element size.
# CPUs: a full AVX-512 register; GPUs: 4 (one 128-bit load per work-item).
_TILED_BYTES = 512 * 1024
_TILED_TAPS_BYTES = 128 * 1024
_MAX_VW = {("cpu", 4): 16, ("cpu", 8): 8, ("gpu", 4): 4, ("gpu", 8): 2, ("other", 4): 4, ("other", 8): 4}


def fits(info: DeviceInfo, variant: Variant, config: dict, dtype: np.dtype, g: ConvGeometry) -> bool:
    """Whether the device has the resources (local memory) ``variant`` with ``config`` needs on ``g``."""
    return variant.local_bytes(g, variant.complete(config), dtype) <= info.local_mem


#: A channels-first call with more multiply-adds per output than this (taps x
#: input channels per group) runs faster transposed to channels-last, through
#: the channels-last kernels, than in the plane kernel.  Measured on PoCL on
#: this project's 2-core Xeon (RESULTS.md, Runs V and X): at 27 (3 -> 16
#: channels, 3x3) and on depthwise layers the plane kernel was 4-23x faster;
#: at 128 (WaveNet's 1x2, 64 -> 64) 1.6x; at 144 even; at 288 the transposes
#: 1.1x faster, at 576 (W4) 2x, at 18432 (W3) 6x.
CHANNELS_FIRST_MACS = 256


def channels_first_in_place(info: DeviceInfo, g: ConvGeometry) -> bool:
    """Whether a channels-first call runs the plane kernel on the caller's layout.

    Otherwise it is transposed on the device, through the channels-last
    kernels, and back (:func:`clatrous.execute.run`).
    """
    return g.kh * g.kw * g.cin_per_group <= CHANNELS_FIRST_MACS


def _planar_defaults(info: DeviceInfo, g: ConvGeometry, itemsize: int) -> dict:
    """The plane kernel on channels-first data: vectors along the rows, CB output channels each.

    Measured on PoCL (3 -> 16 and 16 -> 32 channels, 3x3; WaveNet's 1x2 64 ->
    64): RB=2 rows and CB=4 channels beat the other shapes within 128
    accumulator elements; a single output row (conv1d) has no rows to share,
    and CB=8 there ran 1.6x faster than RB=2, CB=4.
    """
    per_group = g.cout // g.groups
    single_row = g.ho == 1
    cb = max(b for b in ((1, 2, 4, 8) if single_row else (1, 2, 4)) if per_group % b == 0)
    if info.kind == "cpu":
        vw = 16 if itemsize == 4 else 8
        # Rows narrower than a vector waste its lanes: the narrowest that covers a row.
        vw = next((v for v in (4, 8) if v >= g.wo and v < vw), vw)
    else:
        vw = 4
    rb = 1 if single_row else 4 if cb == 1 else 2
    return {"VW": vw, "RB": rb, "CB": cb}  # at most 16 x 8 accumulator elements: the space's limit


def conv2d_defaults(
    info: DeviceInfo, g: ConvGeometry, dtype: np.dtype, winograd: bool = True
) -> tuple[str, dict]:
    """The dense convolution's table of defaults: (variant, configuration) for a device and shape.

    ``winograd=False`` leaves the Winograd variant out (a problem split into
    bands of rows: see :func:`clatrous.execute.run`).
    """
    from .variants import TILED  # the one variant whose default depends on its own space

    itemsize = np.dtype(dtype).itemsize
    max_vw = _MAX_VW.get((info.kind, itemsize), 4)
    if g.channels_first and not (g.cin == 1 and g.cout == 1):
        return "plane", _planar_defaults(info, g, itemsize)
    if g.groups > 1:
        if g.groups == g.cin:  # depthwise: vectors along the channels
            vw = next(v for v in (16, 8, 4, 2, 1) if v <= max_vw and g.cin % v == 0)
            multiplier = g.cout // g.cin
            return "depthwise", {"VW": vw, "PX": 4 if multiplier <= 2 else 2}
        return "direct", {}
    if g.cin == 1 and g.cout == 1:
        if info.kind == "cpu":
            return "plane", {"VW": 16 if itemsize == 4 else 8, "RB": 4, "CB": 1}
        return "plane", {"VW": 4, "RB": 2, "CB": 1}
    vw = next(v for v in (16, 8, 4, 2, 1) if v <= max_vw and g.cout % v == 0)
    if info.kind != "cpu":
        return "blocked", {"VW": vw, "NV": max(1, min(2, g.cout // vw)), "PX": 2}
    # Up to 64 output channels per work-item (tuned on W3, W4 and W6: 4
    # vectors of 16 beat 2 of 16), with fewer pixels to keep the accumulators
    # in registers.
    nv = max(v for v in (1, 2, 4) if v <= max(1, min(4, g.cout // vw, 64 // vw)))
    # On a CPU, a work-item of the blocked kernel streams all its weights
    # (kh*kw*cin*VW*NV elements) through the cache for a few pixels; the
    # channel-tiled kernel keeps a slice of them hot for many.  Measured on
    # PoCL and Intel's runtime (2 MiB L2 a core): from 512 KiB of weights a
    # work-item the blocked kernel falls off a cliff (1x1 2048->256 on 33x33,
    # DeepLab's separable ASPP branch: 10.3 against 4.4 ms; 3x3 256->256:
    # 47 against 15 ms); from 128 KiB with more than one tap the tiled one is
    # 8-10% faster (W4), while with 1x1 it is 7-9% slower there.
    if winograd and info.kind == "cpu" and vw >= 8:
        fast = _winograd_default(info, g, vw, nv, dtype)
        if fast is not None:
            return "winograd", fast
    weights = g.kh * g.kw * g.cin * vw * nv * itemsize
    many_taps = g.kh * g.kw > 1 and weights >= _TILED_TAPS_BYTES
    if (weights >= _TILED_BYTES or many_taps) and vw >= 8 and g.cin >= 64:
        tiled = _tiled_default(info, TILED, g, vw, nv, dtype)
        if tiled is not None:
            return "tiled", tiled
    config = {"VW": vw, "NV": nv, "PX": 4 if nv * vw >= 64 else 6}
    if info.compiler == "intel" and g.wo >= 4 * config["PX"]:
        # Intel's runtime runs a work-group's work-items as vector lanes; a
        # group of 4 neighbouring pixel blocks measured 10-15% faster than
        # its own choice on W6 (4.7-4.8 against 5.5-5.7 ms) and 6-12% on a
        # 16 -> 32 layer (kernel alone), and even on W4's shape.
        config.update(LC=1, LX=4)
    return "blocked", config


#: Winograd's multiplications must be this many times fewer than the direct
#: kernels' (the taps that read the image) for its default, and the layer
#: must have this many input channels: the transforms cost the rest.
#: Measured on PoCL and Intel's runtime (RESULTS.md, Run AB): at 2.1x fewer
#: (W3-d6, F(3x3)) 1.4-1.6x faster than the channel-tiled kernel, at 1.56x
#: (rate 12) 1.28x, at 2.95x (65x65x256, rate 2) 1.8x; on W4 (64 channels,
#: 3.7x fewer) only 1.17x; at rate 18 on 33x33 it needs more (0.77x) and lost.
WINOGRAD_GAIN = 1.4
WINOGRAD_MIN_CIN = 64


def _ceil(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _direct_taps(size: int, k: int, d: int, pad: int, out: int) -> int:
    """Taps along an axis that read the image (not the zero padding), summed over its outputs."""
    return sum(1 for o in range(out) for t in range(k) if 0 <= o - pad + t * d < size)


def _winograd_default(info: DeviceInfo, g: ConvGeometry, vw: int, nv: int, dtype: np.dtype) -> dict | None:
    """F(M x M, 3 x 3), M 2 or 3 (4 only tuned), where its multiplications are far fewer than direct taps.

    One job covers up to 256 output channels (NS blocks of VW*NV), so the
    input is transformed once for them, and as many tiles as spread the jobs
    over the compute units, at most 72 (fewer jobs read the weights fewer
    times).
    """
    from .variants import WINOGRAD, winograd_span, winograd_tiles

    if not (g.kh == g.kw == 3 and g.sh == g.sw == 1 and g.groups == 1 and g.cin >= WINOGRAD_MIN_CIN):
        return None
    if g.border != "zeros":
        direct = g.kh * g.kw * g.ho * g.wo
    else:
        direct = _direct_taps(g.h, 3, g.dh, g.pad_top, g.ho) * _direct_taps(g.w, 3, g.dw, g.pad_left, g.wo)

    def tiles(m: int) -> int:
        return winograd_tiles(g.ho, g.dh, m) * winograd_tiles(g.wo, g.dw, m)

    m = min((2, 3), key=lambda m: (m + 2) ** 2 * tiles(m))
    if direct < WINOGRAD_GAIN * (m + 2) ** 2 * tiles(m):
        return None
    # As many runs of tiles as compute units (a power of two, up to 16), at most 72 tiles each.
    parts = next((p for p in (1, 2, 4, 8) if p >= info.compute_units), 16)
    tb = 6
    nt = winograd_span(g, m, tb, parts)
    ns = max(1, min(256 // (vw * nv), _ceil(g.cout, vw * nv)))
    ns = max(v for v in (1, 2, 4, 8, 16) if v <= ns)
    config = {"M": m, "VW": vw, "NV": nv, "NS": ns, "NT": nt, "TB": tb, "CT": 64 if g.cin >= 64 else 32}
    return config if WINOGRAD.valid(config) and WINOGRAD.computes(g, config) else None


def _tiled_default(
    info: DeviceInfo, tiled: Variant, g: ConvGeometry, vw: int, nv: int, dtype: np.dtype
) -> dict | None:
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
    spans = [s for s in tiled_spans(g, px, block_bytes) if fits(info, tiled, config(s), dtype, g)]
    if not spans:
        return None
    enough = [s for s in spans if work_items(s) >= 4 * max(1, info.compute_units)]
    if enough:
        return config(max(enough, key=lambda s: (s[0] * s[1], s[0])))
    return config(max(spans, key=work_items))


def aspp_defaults(
    info: DeviceInfo,
    g: ConvGeometry,
    couts: tuple[int, ...],
    dtype: np.dtype,
    multiples: tuple[int, ...] = (),
) -> dict:
    """The configuration of the branches' launches (``kernels/aspp.cl``) for a device.

    ``g`` is any branch's geometry (they share the input), ``couts`` every
    branch's output channels, ``multiples`` other numbers the vector width
    must divide (where the slices start, the output pixel's width).  On a
    CPU, a launch per branch (``FUSE = 0``: one NDRange for three branches
    measured 6-7% slower than three launches on A1 and A2 with PoCL), each
    shaped as the dense convolution's default shapes it: the widest vector
    that divides them all; with many input channels, the channel-tiled form
    with the span :func:`_tiled_default` picks for the widest branch;
    otherwise one tile (``CT = 0``), one block per work-item.  Elsewhere (a
    GPU), every branch in one launch, one tile, no local memory: the shape
    the kernel was written for there, not yet measured on one.
    """
    from .variants import TILED

    itemsize = np.dtype(dtype).itemsize
    max_vw = _MAX_VW.get((info.kind, itemsize), 4)
    vw = next(v for v in (16, 8, 4, 2, 1) if v <= max_vw and all(c % v == 0 for c in (*couts, *multiples)))
    fewest = min(couts)
    if info.kind != "cpu":
        return {"FUSE": 1, "VW": vw, "NV": max(1, min(2, fewest // vw)), "PX": 2, "CT": 0, "NB": 1, "RW": 1}
    nv = max(v for v in (1, 2, 4) if v <= max(1, min(4, fewest // vw, 64 // vw)))
    if vw >= 8 and g.cin >= 64:
        tiled = _tiled_default(info, TILED, replace(g, cout=max(couts)), vw, nv, dtype)
        if tiled is not None:
            return {"FUSE": 0, **tiled}
    return {"FUSE": 0, "VW": vw, "NV": nv, "PX": 4 if nv * vw >= 64 else 6, "CT": 0, "NB": 1, "RW": 1}


def search_candidates(
    info: DeviceInfo, op: Operation, g: ConvGeometry, dtype: np.dtype
) -> list[tuple[str, dict]]:
    """Every (variant, configuration) the tuner may try, and so pick, for ``g`` on this device."""
    return [
        (variant.name, variant.complete(config))  # every parameter given, as the defaults are compared
        for variant in op.variants
        if info.kind == "cpu" or not variant.cpu_only
        for config in variant.candidates(g, dtype)
        if fits(info, variant, config, dtype, g)
    ]


# ---------------------------------------------------------------- database


def database_path() -> Path:
    return cache_dir() / "tuning.json"


def class_key(op: Operation, g: ConvGeometry, dtype: np.dtype) -> str:
    """Calls that share this key share a tuned configuration."""
    key = f"{np.dtype(dtype).name} cin={g.cin} cout={g.cout} k={g.kh}x{g.kw} s={g.sh}x{g.sw} d={g.dh}x{g.dw}"
    if g.groups > 1:
        key += f" g={g.groups}"
    if g.channels_first:
        key += " channels_first"
    return key if op.name == "conv2d" else f"{op.name} {key}"


def _read_raw(path: Path):
    """The parsed file, or None: only a regular file, of bounded size, that parses as JSON.

    Opened without blocking, so a FIFO in its place answers at once, and
    checked to be a regular file after opening (a link to ``/dev/zero`` is
    a character device).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_DATABASE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_DATABASE_BYTES + 1)
        if len(data) > MAX_DATABASE_BYTES:
            return None
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    finally:
        os.close(fd)


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("variant") in variant_names()
        and isinstance(entry.get("config"), dict)
        and all(isinstance(k, str) and type(v) is int for k, v in entry["config"].items())
    )


def load_database(path: Path | None = None) -> dict:
    """The usable part of the database, ``{device key: {class key: entry}}``; empty if absent or corrupt.

    An entry is kept here when it has the form of one (the name of a variant
    this version defines and a configuration of ints); whether it may run is
    decided at :func:`choose`.
    """
    return inspect_database(path)[0]


def inspect_database(path: Path | None = None) -> tuple[dict, str | None]:
    """(the usable part of the database, what was wrong with the file or None).

    An absent file is nothing wrong; a corrupt one, one of another schema,
    and entries that are not valid are each said, in words, for ``tune --show``.
    """
    path = path or database_path()
    if not os.path.lexists(path):
        return {}, None
    data = _read_raw(path)
    if data is None:
        return {}, (
            f"not a regular file of valid JSON of at most {MAX_DATABASE_BYTES} bytes: "
            "ignored, and the next tuning run writes it anew"
        )
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA or not isinstance(data.get("devices"), dict):
        if isinstance(schema, int) and schema > SCHEMA:
            return {}, (
                f"written by a newer clatrous (schema {schema}; this one reads {SCHEMA}): "
                "ignored, and never overwritten"
            )
        return {}, f"not a tuning database of schema {SCHEMA}: ignored, and the next tuning run replaces it"
    clean, skipped = {}, 0
    for device, entries in data["devices"].items():
        if isinstance(device, str) and isinstance(entries, dict):
            clean[device] = {k: e for k, e in entries.items() if isinstance(k, str) and _valid_entry(e)}
            skipped += len(entries) - len(clean[device])
        else:
            skipped += 1
    if skipped:
        return clean, f"{skipped} entries are not valid for this version: skipped (and kept in the file)"
    return clean, None


_db_lock = threading.Lock()
_db_cache: dict | None = None


def _database() -> dict:
    global _db_cache
    with _db_lock:
        if _db_cache is None:
            _db_cache = load_database()
        return _db_cache


def forget_cached_database() -> None:
    """Re-read the database file on the next lookup (after another process tuned)."""
    global _db_cache
    with _db_lock:
        _db_cache = None


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive advisory lock on ``path``'s lock file, so writers take turns.

    The lock file (``tuning.json.lock`` beside it) is never replaced, so every
    process locks the same inode; the database itself is replaced atomically.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path.with_name(path.name + ".lock"), flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def store(device_key: str, key: str, entry: dict, path: Path | None = None) -> Path:
    """Add one entry: read, merge and rewrite the file under a lock, atomically.

    Writers in other processes take turns on a lock file beside the database,
    and each merges its entry into what is on disk at that moment, so
    concurrent tuners keep each other's entries; the file is replaced in one
    step, so a process killed mid-write leaves the previous version.
    Everything else in the file is kept as it was, entries this version does
    not understand included, and so are the file's permission bits.  Raises
    :class:`DatabaseError`, naming the path, when the file holds a newer
    schema or cannot be written; no temporary file is left behind.
    """
    global _db_cache
    path = path or database_path()
    try:
        with _db_lock, _locked(path):
            _merge_and_replace(path, device_key, key, entry)
            _db_cache = None  # re-read, through the same checks, on the next lookup
    except DatabaseError:
        raise
    except OSError as exc:
        raise DatabaseError(f"could not write the tuning database {path}: {exc}") from None
    return path


def _merge_and_replace(path: Path, device_key: str, key: str, entry: dict) -> None:
    raw = _read_raw(path)
    if isinstance(raw, dict) and isinstance(raw.get("schema"), int) and raw["schema"] > SCHEMA:
        raise DatabaseError(
            f"{path} was written by a newer clatrous (schema {raw['schema']}, this one writes "
            f"{SCHEMA}); not overwriting it: set CLATROUS_CACHE_DIR to tune into another folder"
        )
    if not (isinstance(raw, dict) and raw.get("schema") == SCHEMA and isinstance(raw.get("devices"), dict)):
        raw = {"schema": SCHEMA, "devices": {}}  # absent or corrupt: rebuilt
    devices = raw["devices"]
    if not isinstance(devices.get(device_key), dict):
        devices[device_key] = {}
    devices[device_key][key] = entry
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.is_file() else None
    except OSError:
        mode = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def choose(info: DeviceInfo, op: Operation, g: ConvGeometry, dtype: np.dtype) -> tuple[str, dict]:
    """The (variant, configuration) a launch of ``op`` on ``info`` uses for ``g``.

    A tuned entry applies to every geometry of its class on which its
    configuration can run, whatever the image size.
    """
    entry = _database().get(info.key, {}).get(class_key(op, g, dtype))
    if entry is not None:
        variant = op.by_name.get(entry["variant"])
        config = entry["config"]
        if (
            variant is not None
            and variant.valid(config)
            and variant.computes(g, variant.complete(config))
            and fits(info, variant, config, dtype, g)
        ):
            return variant.name, dict(config)
    return op.defaults(info, g, dtype)
