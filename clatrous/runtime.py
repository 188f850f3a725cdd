"""Device choice, capability checks, program build and cache.

One :class:`Runtime` per command queue holds the programs built for its
context.  A program is keyed by (source file, build options) inside its
context and built once per process, even when many threads ask for it at
the same moment; PyOpenCL keeps the compiled binaries on disk too, keyed by
source, options and device, so a new process skips the compiler.

Device choice, in order: the ``device=`` argument (a ``pyopencl`` Device,
Context or CommandQueue), the ``CLATROUS_DEVICE`` environment variable (a
case-insensitive substring of a platform or device name, or
``platform:device`` indices), else the first GPU, the first CPU, then any
device, skipping devices whose compiler cannot build a trivial kernel.
The variable is matched as text, never evaluated.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pyopencl as cl

from .errors import BuildError, DeviceNotFoundError

__all__ = [
    "DeviceInfo",
    "Runtime",
    "cache_dir",
    "default_device",
    "device_info",
    "find_device",
    "get_runtime",
    "list_devices",
    "settings",
]

ENV_DEVICE = "CLATROUS_DEVICE"
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
    """The per-user folder for clatrous's own files (tuning database, build logs)."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clatrous"


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

    @property
    def key(self) -> str:
        """Identity for caches: the same key means the same compiled code."""
        return f"{self.platform} | {self.vendor} | {self.name} | {self.driver}"


_info_cache: dict[int, DeviceInfo] = {}


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
        )
        _info_cache[device.int_ptr] = info
    return info


def _host_unified(device: cl.Device) -> bool:
    try:
        return bool(device.host_unified_memory)
    except cl.Error:  # deprecated query; a driver may refuse it
        return False


def list_devices() -> list[tuple[int, int, cl.Platform, cl.Device]]:
    """Every (platform index, device index, platform, device) the ICD loader sees."""
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


def find_device(spec: str) -> cl.Device:
    """The device named by ``spec``: ``"P:D"`` indices or a name substring."""
    devices = list_devices()
    text = spec.strip()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    for pi, di, platform, device in devices:
        if match:
            if (pi, di) == (int(match.group(1)), int(match.group(2))):
                return device
        elif text.casefold() in platform.name.casefold() or text.casefold() in device.name.casefold():
            return device
    listing = "; ".join(f"{pi}:{di} {p.name.strip()} / {d.name.strip()}" for pi, di, p, d in devices)
    raise DeviceNotFoundError(
        f"no OpenCL device matches {spec!r}; available: {listing or 'none (no OpenCL platform found)'}"
    )


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


def default_device() -> cl.Device:
    """The device used when ``device=None`` (see the module's docstring)."""
    global _default
    with _default_lock:
        if _default is None:
            spec = os.environ.get(ENV_DEVICE, "").strip()
            if spec:
                _default = find_device(spec)
            else:
                devices = sorted(list_devices(), key=lambda item: _preference(item[3]))
                if not devices:
                    raise DeviceNotFoundError(
                        "no OpenCL device found: install a driver, e.g. pip install "
                        "'clatrous[pocl]' or Debian's pocl-opencl-icd for the CPU"
                    )
                usable = [d for _, _, _, d in devices if _can_build(d)]
                if not usable:
                    names = ", ".join(d.name.strip() for _, _, _, d in devices)
                    raise DeviceNotFoundError(f"no OpenCL device can build a kernel here (tried {names})")
                _default = usable[0]
        return _default


# ---------------------------------------------------------------- programs


_SOURCES: dict[str, str] = {}


def _kernel_file(name: str):
    """The ``.cl`` file ``name``: inside the installed package, else in the checkout."""
    try:
        packaged = importlib.resources.files("clatrous.kernels").joinpath(name)
        if packaged.is_file():
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "kernels" / name


def kernel_source(name: str) -> str:
    source = _SOURCES.get(name)
    if source is None:
        source = _kernel_file(name).read_text(encoding="utf-8")
        _SOURCES[name] = source
    return source


class Runtime:
    """A command queue, its device's facts, and the programs built for it."""

    def __init__(self, queue: cl.CommandQueue):
        self.queue = queue
        self.context = queue.context
        self.device = queue.device
        self.info = device_info(self.device)

    def program(self, source: str, options: tuple[str, ...]) -> cl.Program:
        """``source`` built with ``options`` for this device, built at most once per process."""
        return _build(self.context, self.device, source, options)


_program_cache: dict[tuple, cl.Program] = {}
_program_lock = threading.Lock()


def _build(context: cl.Context, device: cl.Device, source: str, options: tuple[str, ...]) -> cl.Program:
    key = (context.int_ptr, source, options)
    with _program_lock:
        program = _program_cache.get(key)
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
        _program_cache[key] = program
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


_runtimes: dict[int, Runtime] = {}
_queues_by_context: dict[int, cl.CommandQueue] = {}
_runtime_lock = threading.Lock()


def _queue_for_context(context: cl.Context) -> cl.CommandQueue:
    queue = _queues_by_context.get(context.int_ptr)
    if queue is None:
        queue = cl.CommandQueue(context, context.devices[0])
        _queues_by_context[context.int_ptr] = queue
    return queue


_device_contexts: dict[int, cl.Context] = {}


def get_runtime(device=None) -> Runtime:
    """The :class:`Runtime` for ``device`` (None, Device, Context or CommandQueue)."""
    if device is None:
        device = default_device()
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
            runtime = Runtime(queue)
            _runtimes[queue.int_ptr] = runtime
        return runtime
