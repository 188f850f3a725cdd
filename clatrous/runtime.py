"""Device choice, capability checks, program build and cache.

One :class:`Runtime` per command queue holds the programs built for its
context.  A program is keyed by (source file, build options) inside its
context and built once per process, even when many threads ask for it at
the same moment; PyOpenCL keeps the compiled binaries on disk too, keyed by
source, options and device, so a new process skips the compiler.

Device choice, in order: the ``device=`` argument (a ``pyopencl`` Device,
Context or CommandQueue), the ``CLATROUS_DEVICE`` environment variable (a
case-insensitive substring of a platform's or a device's name, vendor or
version, platforms first; or ``platform:device`` indices), PyOpenCL's own ``PYOPENCL_CTX`` (read as
``pyopencl.create_some_context`` reads it: ``platform:device``, each an
index or a name substring; the first device named), else the first GPU, the
first CPU, then any device, skipping devices whose compiler cannot build a
trivial kernel.  The variables are matched as text, never evaluated.

Kernel sources live in ``kernels/`` (inside the wheel as
``clatrous.kernels``); a ``#include "name.h"`` line is replaced by that
header's text before the build, so the headers are part of every program's
source and of PyOpenCL's cache key.  Caches of runtimes and programs are
bounded: a program is released with the least recently used context.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import pyopencl as cl

from .errors import BuildError, DeviceNotFoundError

__all__ = [
    "DeviceInfo",
    "Runtime",
    "cache_dir",
    "default_device",
    "device_info",
    "find_device",
    "find_pyopencl_ctx",
    "get_runtime",
    "kernel_files",
    "kernel_source",
    "list_devices",
    "live_runtimes",
    "usable_devices",
    "set_default_device",
    "settings",
]

ENV_DEVICE = "CLATROUS_DEVICE"
ENV_PYOPENCL = "PYOPENCL_CTX"
ENV_CACHE = "CLATROUS_CACHE_DIR"


class _Settings:
    """Process-wide switches, for tests and debugging.

    poison_outputs : fill every output buffer with NaN before the launch, so an
        element a kernel forgot to write shows up as NaN.
    build_count : programs compiled by this process (tests check it stays put).
    max_alloc_bytes : the largest single buffer to ask for; None means the
        device's CL_DEVICE_MAX_MEM_ALLOC_SIZE.  Larger problems are split.
    device_bytes : what one launch's buffers may take together; None means
        half the device's global memory.
    """

    def __init__(self) -> None:
        self.poison_outputs = False
        self.build_count = 0
        self.max_alloc_bytes: int | None = None
        self.device_bytes: int | None = None


settings = _Settings()


def cache_dir() -> Path:
    """The per-user folder for clatrous's own files (tuning database, build logs).

    ``CLATROUS_CACHE_DIR`` when set, else the platform's user cache folder
    (``platformdirs``: ``$XDG_CACHE_HOME/clatrous`` or ``~/.cache/clatrous``
    on Linux, ``~/Library/Caches/clatrous`` on macOS, ``%LOCALAPPDATA%``
    on Windows).
    """
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_cache_dir("clatrous", appauthor=False))


# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceInfo:
    """What the launch code needs to know about a device, read once."""

    name: str
    platform: str
    vendor: str
    driver: str
    kind: str  # "gpu", "cpu" or "other"
    fp64: bool
    max_alloc: int
    global_mem: int
    max_work_group: int
    local_mem: int
    compute_units: int
    host_memory: bool  # a CPU computing in host memory: buffers may alias host arrays
    compiler: str = "other"  # whose OpenCL implementation: see COMPILERS

    @property
    def key(self) -> str:
        """Identity for caches: the same key means the same compiled code."""
        return f"{self.platform} | {self.vendor} | {self.name} | {self.driver}"


_info_cache: dict[int, DeviceInfo] = {}

#: ``DeviceInfo.compiler``: a word of the platform's name -> the implementation,
#: for what depends on the compiler and driver rather than on the device kind.
COMPILERS = {
    "portable computing language": "pocl",
    "intel": "intel",
    "nvidia": "nvidia",
    "amd": "amd",
    "apple": "apple",
    "oclgrind": "oclgrind",
}


def compiler_of(platform_name: str) -> str:
    """The implementation a platform's name says (:data:`COMPILERS`), else ``"other"``."""
    name = platform_name.casefold()
    return next((compiler for word, compiler in COMPILERS.items() if word in name), "other")


def device_info(device: cl.Device) -> DeviceInfo:
    info = _info_cache.get(device.int_ptr)
    if info is None:
        dtype = device.type
        is_cpu, is_gpu = bool(dtype & cl.device_type.CPU), bool(dtype & cl.device_type.GPU)
        kind = "cpu" if is_cpu and not is_gpu else "gpu" if is_gpu and not is_cpu else "other"
        info = DeviceInfo(
            name=device.name.strip(),
            platform=device.platform.name.strip(),
            vendor=device.vendor.strip(),
            driver=device.driver_version.strip(),
            kind=kind,
            fp64="cl_khr_fp64" in device.extensions.split(),
            max_alloc=int(device.max_mem_alloc_size),
            global_mem=int(device.global_mem_size),
            max_work_group=int(device.max_work_group_size),
            local_mem=int(device.local_mem_size),
            compute_units=int(device.max_compute_units),
            host_memory=kind == "cpu" and _host_unified(device),
            compiler=compiler_of(device.platform.name),
        )
        _info_cache[device.int_ptr] = info
    return info


def _host_unified(device: cl.Device) -> bool:
    try:
        return bool(device.host_unified_memory)
    except cl.Error:  # deprecated query; a driver may refuse it
        return False


def list_devices() -> list[tuple[int, int, cl.Platform, cl.Device]]:
    """Every OpenCL device the ICD loader sees, as ``clatrous.devices()``.

    Returns
    -------
    list of (platform index, device index, pyopencl.Platform, pyopencl.Device)
        In the loader's order; the indices are what ``CLATROUS_DEVICE=P:D``
        and ``PYOPENCL_CTX=P:D`` take.  Empty when there is no OpenCL
        platform at all (never an exception); a platform whose devices
        cannot be listed is left out.

    Examples
    --------
    >>> import clatrous
    >>> for p, d, platform, device in clatrous.devices():  # doctest: +SKIP
    ...     print(p, d, platform.name, device.name)
    """
    found = []
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return found
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for di, device in enumerate(devices):
            found.append((pi, di, platform, device))
    return found


def _names(platform: cl.Platform, device: cl.Device) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a name in ``CLATROUS_DEVICE`` is matched against (casefolded): (the platform's, the device's).

    The platform's name, vendor and version string (which is where most
    drivers give their short name: PoCL's platform is "Portable Computing
    Language", its version "OpenCL 3.0 PoCL 3.1"), then the device's name
    and vendor.
    """
    groups = []
    for reads in (
        (lambda: platform.name, lambda: platform.vendor, lambda: platform.version),
        (lambda: device.name, lambda: device.vendor),
    ):
        texts = []
        for read in reads:
            try:
                texts.append(read().casefold())
            except cl.Error:  # a driver may refuse a query; match on the others
                continue
        groups.append(tuple(texts))
    return groups[0], groups[1]


def _echo(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def find_device(spec: str) -> cl.Device:
    """The device named by ``spec``: ``"P:D"`` indices or a name substring."""
    devices = list_devices()
    text = spec.strip()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match:
        for pi, di, _, device in devices:
            if (pi, di) == (int(match.group(1)), int(match.group(2))):
                return device
    elif wanted := text.casefold():
        # A platform that matches wins over a device that does: on an Intel
        # CPU, "Intel" is Intel's runtime, not PoCL's "pthread-...-Intel(R)
        # Xeon(R)" device (which "pthread" or "pocl" name).
        names = [(_names(platform, device), device) for _, _, platform, device in devices]
        for level in (0, 1):
            for texts, device in names:
                if any(wanted in t for t in texts[level]):
                    return device
    raise DeviceNotFoundError(
        f"no OpenCL device matches {ENV_DEVICE}={_echo(spec)}; available: {_listing(devices)}"
    )


def _listing(devices) -> str:
    """The devices, as a one-line list for an error message."""
    listing = "; ".join(f"{pi}:{di} {p.name.strip()} / {d.name.strip()}" for pi, di, p, d in devices)
    return listing or "none (no OpenCL platform found)"


def find_pyopencl_ctx(spec: str) -> cl.Device:
    """The device ``PYOPENCL_CTX=spec`` names, as ``pyopencl.create_some_context`` reads it.

    ``platform[:device]``: each part an index or a case-insensitive substring
    of the name (for the platform, the last that matches, as PyOpenCL does);
    no device part means the platform's first device, and of a
    comma-separated list of devices the first is taken.
    """
    platform_part, _, device_part = spec.partition(":")
    found = list_devices()
    platforms: dict[int, list] = {}
    for pi, _di, platform, device in found:
        platforms.setdefault(pi, [platform]).append(device)
    chosen = _pick([entry[0] for entry in platforms.values()], platform_part, last=True)
    if chosen is None:
        why = f"no platform matches {platform_part.strip()!r}" if found else "no OpenCL device found"
    else:
        devices = next(entry[1:] for entry in platforms.values() if entry[0] is chosen)
        device = _pick(devices, device_part.split(",")[0], last=False)
        if device is not None:
            return device
        why = f"no device of {chosen.name.strip()!r} matches {device_part.strip()!r}"
    raise DeviceNotFoundError(f"{ENV_PYOPENCL}={_echo(spec)}: {why}; available: {_listing(found)}")


def _pick(items: list, part: str, *, last: bool):
    """The item ``part`` names, as PyOpenCL reads one: the first if empty, an index, or a name substring."""
    part = part.strip()
    if not items:
        return None
    if not part:
        return items[0]
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    matches = [item for item in items if part.casefold() in item.name.casefold()]
    return (matches[-1] if last else matches[0]) if matches else None


_usable_cache: dict[int, bool] = {}


def _can_build(device: cl.Device) -> bool:
    """Whether the device's compiler builds a trivial kernel (some drivers cannot)."""
    ok = _usable_cache.get(device.int_ptr)
    if ok is None:
        try:
            ctx = cl.Context([device])
            cl.Program(ctx, "__kernel void probe(__global int *a) { a[0] = 1; }").build()
            ok = True
        except cl.Error:
            ok = False
        _usable_cache[device.int_ptr] = ok
    return ok


def _preference(device: cl.Device) -> int:
    kind = device_info(device).kind
    return {"gpu": 0, "cpu": 1}.get(kind, 2)


_default_lock = threading.Lock()
_default: cl.Device | None = None
_default_queue: cl.CommandQueue | None = None


def usable_devices() -> list[cl.Device]:
    """Every device whose compiler builds a trivial kernel: GPUs first, then CPUs, then the rest."""
    devices = sorted(list_devices(), key=lambda item: _preference(item[3]))
    return [d for _, _, _, d in devices if _can_build(d)]


def default_device() -> cl.Device:
    """The device that ``device=None`` calls run on, chosen once per process.

    In order: the device set with :func:`set_default_device`;
    ``CLATROUS_DEVICE`` (a name substring or ``platform:device`` indices);
    ``PYOPENCL_CTX``, read as PyOpenCL reads it; else the first GPU, the
    first CPU, then any device, skipping those whose compiler cannot build a
    trivial kernel.  The variables are matched as text, never evaluated.

    Raises
    ------
    clatrous.DeviceNotFoundError
        No OpenCL platform, no device that can build, or a variable that
        names no device (the message lists the devices there are).
    """
    global _default
    device = _default
    if device is not None:  # read once: set_default_device may change it meanwhile
        return device
    with _default_lock:
        if _default is None:
            spec = os.environ.get(ENV_DEVICE, "").strip()
            pyopencl_spec = os.environ.get(ENV_PYOPENCL, "").strip()
            if spec:
                _default = find_device(spec)
            elif pyopencl_spec:
                _default = find_pyopencl_ctx(pyopencl_spec)
            else:
                found = list_devices()
                if not found:
                    raise DeviceNotFoundError(
                        "no OpenCL device found: install a driver, e.g. pip install "
                        "'clatrous[pocl]' or Debian's pocl-opencl-icd for the CPU"
                    )
                usable = usable_devices()
                if not usable:
                    names = ", ".join(d.name.strip() for _, _, _, d in found)
                    raise DeviceNotFoundError(f"no OpenCL device can build a kernel here (tried {names})")
                _default = usable[0]
        return _default


def set_default_device(device: cl.Device | cl.CommandQueue | None) -> None:
    """Make ``device`` the default of ``device=None`` calls; None chooses afresh.

    A CommandQueue makes ``device=None`` calls run on that very queue (the
    test suite runs on an out-of-order queue this way).  For test suites and
    scripts that run the same code on several devices (``tests/conftest.py``
    runs every test on every device this way).
    """
    global _default, _default_queue
    with _default_lock:
        if isinstance(device, cl.CommandQueue):
            _default, _default_queue = device.device, device
        else:
            _default, _default_queue = device, None


# ---------------------------------------------------------------- programs


_SOURCES: dict[str, str] = {}


def _kernel_folder():
    """Where the kernel sources are: inside the installed package, else in the checkout (``kernels/``)."""
    try:
        packaged = importlib.resources.files("clatrous.kernels")
        if packaged.joinpath("common.h").is_file():
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "kernels"


def _kernel_file(name: str):
    """The kernel source or header ``name``."""
    return _kernel_folder().joinpath(name)


def kernel_files() -> list[str]:
    """The names of the ``.cl`` sources."""
    return sorted(p.name for p in _kernel_folder().iterdir() if p.name.endswith(".cl"))


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([A-Za-z0-9_.]+)"[ \t]*$', re.MULTILINE)


def kernel_source(name: str) -> str:
    """The text of ``kernels/name`` with its ``#include "x.h"`` lines replaced by those headers.

    Each header is spliced in once (the headers have include guards too), so
    the text handed to the driver is self-contained and changes whenever a
    header does.
    """
    source = _SOURCES.get(name)
    if source is None:
        seen: set[str] = set()

        def splice(match: re.Match) -> str:
            header = match.group(1)
            if header in seen:
                return f"// {header}: already included"
            seen.add(header)
            text = _kernel_file(header).read_text(encoding="utf-8")
            return f"// ---- {header}\n{_INCLUDE.sub(splice, text)}\n// ---- end of {header}"

        source = _INCLUDE.sub(splice, _kernel_file(name).read_text(encoding="utf-8"))
        _SOURCES[name] = source
    return source


class Runtime:
    """A command queue, its device's facts, and the programs built for its context.

    ``launches`` is the cache of :mod:`clatrous.launch` for this queue; it
    lives here so that it goes when the runtime does.
    """

    def __init__(self, queue: cl.CommandQueue):
        self.queue = queue
        try:
            self.context = queue.context
        except cl.LogicError as exc:  # e.g. Intel's CPU runtime, once the Context object is collected
            raise ValueError(
                "device: this command queue's context is no longer alive; keep a reference"
                " to the pyopencl.Context the queue was made with"
            ) from exc
        self.device = queue.device
        self.info = device_info(self.device)
        self.launches: OrderedDict = OrderedDict()
        self.launch_lock = threading.Lock()

    @property
    def side_queue(self) -> cl.CommandQueue:
        """A second queue of this context and device, made on first use.

        For a blocking command that must not wait behind the kernels queued
        on :attr:`queue` (mapping a new buffer to advise its pages): a chain
        of launches never waits on the host between its steps.
        """
        with self.launch_lock:
            side = self.__dict__.get("_side_queue")
            if side is None:
                side = self._side_queue = cl.CommandQueue(self.context, self.device)
            return side

    def program(self, source: str, options: tuple[str, ...]) -> cl.Program:
        """``source`` built with ``options`` for this device, built at most once per process."""
        return _build(self.context, self.device, source, options)


#: How many contexts keep their programs, queues their runtimes (and so
#: their cached launches), least recently used first out.
MAX_CONTEXTS = 16

_programs: OrderedDict[int, tuple[cl.Context, dict]] = OrderedDict()
_program_lock = threading.Lock()


def _context_programs(context: cl.Context) -> dict:
    """The programs built for ``context`` (the caller holds ``_program_lock``)."""
    entry = _programs.get(context.int_ptr)
    if entry is None:
        entry = (context, {})  # holding the context keeps its address from being reused
        _programs[context.int_ptr] = entry
        while len(_programs) > MAX_CONTEXTS:
            _programs.popitem(last=False)
    else:
        _programs.move_to_end(context.int_ptr)
    return entry[1]


def forget_programs() -> None:
    """Drop every built program, so the next calls build them again (for tests)."""
    with _program_lock:
        _programs.clear()


def _build(context: cl.Context, device: cl.Device, source: str, options: tuple[str, ...]) -> cl.Program:
    key = (device.int_ptr, source, options)
    with _program_lock:
        programs = _context_programs(context)
        program = programs.get(key)
        if program is not None:
            return program
        text = kernel_source(source)
        try:
            program = cl.Program(context, text).build(options=list(options), devices=[device])
        except cl.Error as exc:
            # PyOpenCL's message holds the compiler's log for each device.
            path = _save_failed_source(source, text, options)
            raise BuildError(
                f"building {source} for {device.name.strip()} failed\n"
                f"options: {' '.join(options)}\nspecialised source: {path}\n{exc}",
                log=str(exc),
                options=options,
                source_path=str(path),
            ) from None
        settings.build_count += 1
        programs[key] = program
        return program


def _save_failed_source(name: str, text: str, options: tuple[str, ...]) -> Path:
    """Write the source with its options as #defines, so the failure can be replayed."""
    header = "".join(f"#define {opt[2:].replace('=', ' ', 1)}\n" for opt in options if opt.startswith("-D"))
    specialised = f"// {name} built with: {' '.join(options)}\n{header}{text}"
    digest = hashlib.sha256(specialised.encode()).hexdigest()[:16]
    folder = cache_dir() / "failed-builds"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{Path(name).stem}-{digest}.cl"
        path.write_text(specialised, encoding="utf-8")
    except OSError:
        path = Path(f"<unwritable: {folder}>")
    return path


# ---------------------------------------------------------------- runtimes


_runtimes: OrderedDict[int, Runtime] = OrderedDict()
_queues_by_context: OrderedDict[int, cl.CommandQueue] = OrderedDict()
_device_contexts: dict[int, cl.Context] = {}  # one per device: as many as there are devices
_runtime_lock = threading.Lock()


def _remember(cache: OrderedDict, key: int, value):
    cache[key] = value
    while len(cache) > MAX_CONTEXTS:
        cache.popitem(last=False)
    return value


def _queue_for_context(context: cl.Context) -> cl.CommandQueue:
    queue = _queues_by_context.get(context.int_ptr)
    if queue is None:
        queue = _remember(_queues_by_context, context.int_ptr, cl.CommandQueue(context, context.devices[0]))
    return queue


def live_runtimes() -> list[Runtime]:
    """The runtimes kept now (the most recently used last)."""
    with _runtime_lock:
        return list(_runtimes.values())


def get_runtime(device=None) -> Runtime:
    """The :class:`Runtime` for ``device`` (None, Device, Context or CommandQueue).

    Runtimes (and the queues made for a Context) are kept for the
    :data:`MAX_CONTEXTS` most recently used; an older one is made anew.
    """
    if device is None:
        device = _default_queue or default_device()
    last = _last
    if last[0] is device:  # the same device as the previous call: no lock, no lookups
        return last[1]
    with _runtime_lock:
        if isinstance(device, cl.CommandQueue):
            queue = device
        elif isinstance(device, cl.Context):
            queue = _queue_for_context(device)
        elif isinstance(device, cl.Device):
            context = _device_contexts.get(device.int_ptr)
            if context is None:
                context = cl.Context([device])
                _device_contexts[device.int_ptr] = context
            queue = _queue_for_context(context)
        else:
            raise TypeError(
                "device must be None, a pyopencl Device, Context or CommandQueue, "
                f"got {type(device).__name__}"
            )
        runtime = _runtimes.get(queue.int_ptr)
        if runtime is None:
            # The cached runtime holds its queue, so no other queue can have its address.
            runtime = _remember(_runtimes, queue.int_ptr, Runtime(queue))
        else:
            _runtimes.move_to_end(queue.int_ptr)
        _remember_last(device, runtime)
        return runtime


_last: tuple[object, Runtime | None] = (object(), None)


def _remember_last(device, runtime: Runtime) -> None:
    global _last
    _last = (device, runtime)  # one assignment: readers see the old pair or the new one
