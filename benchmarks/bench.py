"""Benchmark clatrous against its peers, interleaved in one run on one machine.

For each workload every available peer is timed in turn, round after round,
in blocks of back-to-back calls (the first of each block untimed, so each
peer is measured warm, as in a user's loop), so that a noisy machine slows
them all alike; the table shows median times,
GFLOP/s (2*N*Ho*Wo*Cout*Cin*kh*kw) and the time ratio to PyTorch measured in
the same run (below 1: clatrous is faster).  It also measures the device's
two ceilings: a large buffer copy (the floor of a memory-bound workload) and
the best GFLOP/s any clatrous row reached.

Peers, each when installed (``pip install ".[bench]"``): PyTorch (oneDNN on a
CPU; where CUDA is available, also on the GPU, waited for with
torch.cuda.synchronize, with a column of clatrous's device-array time over
it), tinygrad on OpenCL, CLBlast's convgemm (the C library through ctypes:
Debian's libclblast-dev, or CLBLAST_LIBRARY=path), the naive
one-output-per-work-item kernel (clatrous's ``direct`` variant), and the NumPy
reference on the small workloads (timed after the others, not interleaved).
Every clatrous result is checked against the reference before it is timed.
Two more clatrous rows time the host call in the loops users write: one that
keeps each result (the last 32; each call then writes fresh memory) and one
that writes into the same ``out=`` array every call; one more, the device
arrays' loop with each result from a ``pyopencl.tools.MemoryPool``
(``allocator=``).

    python benchmarks/bench.py                      # the standard workloads
    python benchmarks/bench.py --only W4,W6 --rounds 20
    python benchmarks/bench.py --workload "mine:conv2d:n=2,h=128,w=128,cin=32,cout=64,k=3,d=4,padding=same"
    python benchmarks/bench.py --record benchmarks/RESULTS.md
    git worktree add /tmp/before 3e908c2 && python benchmarks/bench.py --before /tmp/before

Set CLATROUS_DEVICE (or --device) to choose the OpenCL device.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

import clatrous
from clatrous import params, reference, runtime
from clatrous.geometry import conv_geometry


@dataclass
class Workload:
    """A benchmark row.

    ``kind``: conv2d, conv1d, depthwise (``cout = cin * M``) or separable (a
    depthwise 3x3 with M = 1, then a 1x1 to ``cout`` channels, as DeepLabv3+'s
    separable ASPP branch).  ``mode`` is the padding_mode.
    """

    name: str
    kind: str
    n: int
    h: int
    w: int
    cin: int
    cout: int
    kh: int
    kw: int
    d: int
    s: int = 1
    padding: str = "same"
    note: str = ""
    mode: str = "zeros"
    arrays: dict = field(default_factory=dict, repr=False)

    @property
    def kwargs(self):
        extra = {} if self.mode == "zeros" else {"padding_mode": self.mode}
        return dict(strides=self.s, padding=self.padding, dilation_rate=self.d, **extra)

    @property
    def dense(self) -> bool:
        """A dense conv2d/conv1d with zero padding: what every peer computes."""
        return self.kind in ("conv1d", "conv2d") and self.mode == "zeros"

    @property
    def flops(self) -> int:
        g = self.geometry()
        if self.kind == "separable":
            return g.flops + 2 * g.n * g.ho * g.wo * self.cin * self.cout
        return g.flops

    @property
    def out_elements(self) -> int:
        g = self.geometry()
        return g.n * g.ho * g.wo * (self.cout if self.kind == "separable" else g.cout)

    def geometry(self):
        """The geometry of the (first) convolution."""
        if self.kind in ("depthwise", "separable"):
            cout = self.cout if self.kind == "depthwise" else self.cin
            return conv_geometry(
                (self.n, self.h, self.w, self.cin),
                (self.kh, self.kw, 1, cout),
                groups=self.cin,
                **self.kwargs,
            )
        if self.kind == "conv1d":
            return conv_geometry(
                (self.n, self.w, self.cin), (self.kw, self.cin, self.cout), ndim=1, **self.kwargs
            )
        return conv_geometry(
            (self.n, self.h, self.w, self.cin), (self.kh, self.kw, self.cin, self.cout), **self.kwargs
        )

    def make_arrays(self, rng):
        if self.kind in ("depthwise", "separable"):
            multiplier = self.cout // self.cin if self.kind == "depthwise" else 1
            x = rng.standard_normal((self.n, self.h, self.w, self.cin), dtype=np.float32)
            k = rng.standard_normal((self.kh, self.kw, self.cin, multiplier), dtype=np.float32) / 3
            self.arrays = dict(x=x, k=k, b=rng.standard_normal(self.cin * multiplier, dtype=np.float32))
            if self.kind == "separable":
                pk = rng.standard_normal((1, 1, self.cin, self.cout), dtype=np.float32)
                pk /= np.float32(self.cin**0.5)
                self.arrays.update(pk=pk, b=rng.standard_normal(self.cout, dtype=np.float32))
            return
        if self.kind == "conv1d":
            x = rng.standard_normal((self.n, self.w, self.cin), dtype=np.float32)
            k = rng.standard_normal((self.kw, self.cin, self.cout), dtype=np.float32)
        else:
            x = rng.standard_normal((self.n, self.h, self.w, self.cin), dtype=np.float32)
            k = rng.standard_normal((self.kh, self.kw, self.cin, self.cout), dtype=np.float32)
        k /= np.sqrt(k[..., 0].size)
        b = rng.standard_normal(self.cout, dtype=np.float32)
        self.arrays = dict(x=x, k=k, b=b)


WORKLOADS = [
    Workload(
        "W1", "conv2d", 1, 4, 4, 1, 1, 2, 2, 2, padding="valid", note="the notebook's 4x4 matrix, per call"
    ),
    Workload("W3-d6", "conv2d", 1, 33, 33, 2048, 256, 3, 3, 6, note="ASPP branch"),
    Workload("W3-d12", "conv2d", 1, 33, 33, 2048, 256, 3, 3, 12, note="ASPP branch"),
    Workload("W3-d18", "conv2d", 1, 33, 33, 2048, 256, 3, 3, 18, note="ASPP branch"),
    Workload("W4", "conv2d", 8, 64, 64, 64, 64, 3, 3, 2),
    Workload("W5", "conv2d", 1, 2048, 2048, 1, 1, 5, 5, 4, note="one-channel image"),
    Workload("W6", "conv1d", 4, 1, 16000, 64, 64, 1, 2, 256, padding="causal", note="WaveNet layer"),
    Workload("D1", "depthwise", 8, 128, 128, 256, 256, 3, 3, 2, note="depthwise 3x3, rate 2"),
    Workload("D2", "separable", 1, 33, 33, 2048, 256, 3, 3, 12, note="separable ASPP branch"),
    Workload("D3", "conv2d", 1, 2048, 2048, 1, 1, 5, 5, 4, mode="reflect", note="W5, reflect border"),
]


def parse_workload(text: str) -> Workload:
    """``name:kind:key=value,...``, the shape grammar of ``python -m clatrous tune``."""
    from clatrous.__main__ import parse_shape

    name, sep, shape = text.partition(":")
    try:
        if not sep:
            raise ValueError(f"--workload wants name:conv2d|conv1d:key=value,..., got {text!r}")
        kind, x_shape, k_shape, geometry, dtype = parse_shape(shape)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if dtype != "float32":
        raise SystemExit(f"--workload: the benchmark runs float32 only, got dtype={dtype}")
    strides, padding, d = geometry["strides"], geometry["padding"], geometry["dilation_rate"]
    if kind == "conv1d":
        (n, w, cin), (kw, _, cout) = x_shape, k_shape
        return Workload(name, kind, n, 1, w, cin, cout, 1, kw, d, strides, padding)
    (n, h, w, cin), (kh, kw, _, cout) = x_shape, k_shape
    return Workload(name, kind, n, h, w, cin, cout, kh, kw, d, strides, padding)


# ---------------------------------------------------------------- peers


def _function(wl, lib):
    """The function of ``lib`` (clatrous, an earlier clatrous) that computes a workload of one call."""
    return {"conv1d": lib.conv1d, "conv2d": lib.conv2d}.get(wl.kind) or lib.depthwise_conv2d


def _clatrous_call(wl, lib, device=None, **layout):
    """``call(x)`` computing the workload with the clatrous package ``lib`` (weights bound).

    ``layout`` is empty, or more keywords of the call: ``data_format="channels_first"``
    for x in (N, C, H, W), ``allocator=`` for device results from a pool.
    """
    a = wl.arrays
    if wl.kind == "separable":
        layer = lib.SeparableConv2D(
            wl.cout, (wl.kh, wl.kw), padding=wl.padding, dilation_rate=wl.d, strides=wl.s, device=device,
            **layout,
        )  # fmt: skip
        layer.set_weights([a["k"], a["pk"], a["b"]])
        if device is None:  # device arrays: the layer's two steps, without the final read back
            return lambda x: layer._forward(x, layer._weights)
        return layer
    fn = _function(wl, lib)
    if device is None:
        return lambda x, k=a["k"], b=a["b"]: fn(x, k, b, **wl.kwargs, **layout)
    return lambda x: fn(x, a["k"], a["b"], device=device, **wl.kwargs, **layout)


def clatrous_host(wl, rt):
    call = _clatrous_call(wl, clatrous, rt.queue)
    return lambda: call(wl.arrays["x"])


def clatrous_device(wl, rt, **extra):
    """The device-array loop; ``extra`` keywords go to each call (``allocator=``)."""
    call = _clatrous_call(wl, clatrous, **extra)
    x = cl_array.to_device(rt.queue, wl.arrays["x"])
    # The weights on the device too (a separable layer holds its own).
    names = () if wl.kind == "separable" else ("k", "b")
    weights = tuple(cl_array.to_device(rt.queue, wl.arrays[n]) for n in names)

    def run():
        out = call(x, *weights)
        rt.queue.finish()
        return out

    return run


def clatrous_pooled(wl, rt):
    """Device arrays as in ``clatrous_device``, each result's buffer from a PyOpenCL MemoryPool."""
    if wl.kind == "separable":
        return None
    import pyopencl.tools as cl_tools

    return clatrous_device(wl, rt, allocator=cl_tools.MemoryPool(cl_tools.ImmediateAllocator(rt.queue)))


def clatrous_zeros(wl, rt):
    """A row with another border, computed with zeros instead: what the border costs, in the same run."""
    if wl.mode == "zeros":
        return None
    call = _clatrous_call(replace(wl, mode="zeros"), clatrous, rt.queue)
    return lambda: call(wl.arrays["x"])


def clatrous_kept(wl, rt):
    """The host call in a loop that keeps its results (the last 32): each needs fresh memory."""
    if wl.kind == "separable":
        return None
    call = _clatrous_call(wl, clatrous, rt.queue)
    kept = collections.deque(maxlen=32)
    return lambda: kept.append(call(wl.arrays["x"]))


def clatrous_out(wl, rt):
    """The host call writing into one ``out=`` array, call after call."""
    if wl.kind == "separable":
        return None
    a = wl.arrays
    fn = _function(wl, clatrous)
    first = fn(a["x"], a["k"], a["b"], device=rt.queue, **wl.kwargs)
    out = clatrous.aligned_empty(first.shape, first.dtype)  # written in place by a CPU device
    return lambda: fn(a["x"], a["k"], a["b"], device=rt.queue, out=out, **wl.kwargs)


def clatrous_channels_first(wl, rt):
    """The host call on channels-first data (N, C, H, W), PyTorch's layout: x transposed before timing."""
    x = np.ascontiguousarray(np.moveaxis(wl.arrays["x"], -1, 1))
    layer_or_call = _clatrous_call(wl, clatrous, rt.queue, data_format="channels_first")
    call = lambda: layer_or_call(x)  # noqa: E731
    expected = np.moveaxis(clatrous_host(wl, rt)(), -1, 1)
    got = call()
    scale = np.max(np.abs(expected)) + 1e-30
    if not np.max(np.abs(got - expected)) / scale < 1e-4:
        raise SystemExit(f"{wl.name}: clatrous channels-first differs from channels-last")
    return call


def clatrous_direct(wl, rt):
    if wl.kind == "separable":
        return None
    call = _clatrous_call(wl, clatrous, rt.queue)

    def run():
        with params.forced("direct", {}):
            return call(wl.arrays["x"])

    return run


#: An earlier clatrous (``--before DIR``), imported under another name, so
#: that a change is measured against what it replaced in one run.
BEFORE = None


def load_before(path: str):
    """Import the clatrous of the checkout at ``path`` as the package ``clatrous_before``.

    Its package and kernels are copied into a scratch folder as
    ``clatrous_before/`` with ``clatrous_before/kernels/``, and its lookup of
    the packaged kernels is pointed there, so it builds its own sources.
    """
    import importlib
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="clatrous-before-"))
    package = root / "clatrous_before"
    shutil.copytree(Path(path) / "clatrous", package)
    shutil.copytree(Path(path) / "kernels", package / "kernels")
    (package / "kernels" / "__init__.py").write_text("")
    for source in package.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        source.write_text(text.replace('"clatrous.kernels"', '"clatrous_before.kernels"'), encoding="utf-8")
    sys.path.insert(0, str(root))
    return importlib.import_module("clatrous_before")


def before_host(wl, rt):
    if BEFORE is None or not wl.dense:
        return None
    a = wl.arrays
    fn = BEFORE.conv1d if wl.kind == "conv1d" else BEFORE.conv2d
    return lambda: fn(a["x"], a["k"], a["b"], device=rt.queue, **wl.kwargs)


def before_device(wl, rt):
    if BEFORE is None or not wl.dense:
        return None
    a = wl.arrays
    fn = BEFORE.conv1d if wl.kind == "conv1d" else BEFORE.conv2d
    x, k, b = (cl_array.to_device(rt.queue, a[name]) for name in ("x", "k", "b"))

    def call():
        out = fn(x, k, b, **wl.kwargs)
        rt.queue.finish()
        return out

    return call


def _reference(wl):
    a = wl.arrays
    if wl.kind == "separable":
        middle = reference.depthwise_conv2d(a["x"], a["k"], **wl.kwargs)
        return reference.conv2d(middle, a["pk"], a["b"])
    fn = _function(wl, reference)
    return fn(a["x"], a["k"], a["b"], **wl.kwargs)


def numpy_reference(wl, rt):
    if wl.flops > 3e9:
        return None
    return lambda: _reference(wl)


def _explicit_pads(wl):
    g = wl.geometry()
    return (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right)


def _pytorch_on(wl, device: str):
    """PyTorch's conv on ``device`` ("cpu": oneDNN; "cuda": cuDNN), tensors made before timing."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        torch.backends.cudnn.benchmark = True  # its fastest algorithm, picked on the warm-up call
    a = wl.arrays
    (pt, pb), (pl, pr) = _explicit_pads(wl)
    b = torch.from_numpy(a["b"]).to(device)
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if wl.kind in ("depthwise", "separable"):
        x = torch.from_numpy(a["x"].transpose(0, 3, 1, 2).copy()).to(device)  # N, C, H, W
        kh, kw, cin, m = a["k"].shape
        k = torch.from_numpy(a["k"].reshape(kh, kw, cin * m).transpose(2, 0, 1)[:, None].copy()).to(device)
        if wl.kind == "separable":
            pk = torch.from_numpy(a["pk"][0, 0].T.copy()[:, :, None, None]).to(device)  # O, I, 1, 1

        def call():
            with torch.no_grad():
                xp = x if (pt, pb, pl, pr) == (0, 0, 0, 0) else F.pad(x, (pl, pr, pt, pb))
                if wl.kind == "depthwise":
                    out = F.conv2d(xp, k, b, stride=wl.s, dilation=wl.d, groups=cin)
                else:  # PyTorch's two calls
                    out = F.conv2d(F.conv2d(xp, k, None, stride=wl.s, dilation=wl.d, groups=cin), pk, b)
            wait()
            return out

        return call
    if wl.mode != "zeros":
        torch_mode = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}.get(wl.mode)
        if torch_mode is None or wl.kind != "conv2d":
            return None
        x = torch.from_numpy(a["x"].transpose(0, 3, 1, 2).copy()).to(device)
        k = torch.from_numpy(a["k"].transpose(3, 2, 0, 1).copy()).to(device)

        def call():
            with torch.no_grad():
                out = F.conv2d(F.pad(x, (pl, pr, pt, pb), mode=torch_mode), k, b, stride=wl.s, dilation=wl.d)
            wait()
            return out

        return call
    if wl.kind == "conv1d":
        x = torch.from_numpy(a["x"].transpose(0, 2, 1).copy()).to(device)  # N, C, L
        k = torch.from_numpy(a["k"].transpose(2, 1, 0).copy()).to(device)  # O, I, k

        def call():
            with torch.no_grad():
                out = F.conv1d(F.pad(x, (pl, pr)), k, b, stride=wl.s, dilation=wl.d)
            wait()
            return out

        return call
    x = torch.from_numpy(a["x"].transpose(0, 3, 1, 2).copy()).to(device)  # N, C, H, W
    k = torch.from_numpy(a["k"].transpose(3, 2, 0, 1).copy()).to(device)  # O, I, kh, kw
    symmetric = pt == pb and pl == pr

    def call():
        with torch.no_grad():
            if symmetric:
                out = F.conv2d(x, k, b, stride=wl.s, padding=(pt, pl), dilation=wl.d)
            else:
                out = F.conv2d(F.pad(x, (pl, pr, pt, pb)), k, b, stride=wl.s, dilation=wl.d)
        wait()
        return out

    return call


def pytorch(wl, rt):
    return _pytorch_on(wl, "cpu")


def pytorch_cuda(wl, rt):
    """On a machine with an NVIDIA GPU: the peer for clatrous on that GPU's OpenCL driver."""
    return _pytorch_on(wl, "cuda")


def tinygrad(wl, rt):
    if not wl.dense:
        return None
    os.environ.setdefault("DEV", "CL")
    try:
        from tinygrad import Tensor
    except ImportError:
        return None
    a = wl.arrays
    (pt, pb), (pl, pr) = _explicit_pads(wl)
    if wl.kind == "conv1d":
        x_np = a["x"].transpose(0, 2, 1)[:, :, None, :].copy()
        k_np = a["k"].transpose(2, 1, 0)[:, :, None, :].copy()
    else:
        x_np = a["x"].transpose(0, 3, 1, 2).copy()
        k_np = a["k"].transpose(3, 2, 0, 1).copy()
    k = Tensor(k_np).realize()
    b = Tensor(a["b"]).realize()

    def call():  # host in, host out, as the other rows
        x = Tensor(x_np)
        return x.conv2d(k, b, stride=wl.s, dilation=wl.d, padding=(pl, pr, pt, pb)).numpy()

    return call


def _load_clblast():
    """CLBlast's C library (Debian's libclblast-dev, or CLBLAST_LIBRARY), or None."""
    import ctypes
    import ctypes.util

    path = os.environ.get("CLBLAST_LIBRARY") or ctypes.util.find_library("clblast")
    if not path:
        return None
    lib = ctypes.CDLL(path)
    fn = lib.CLBlastSconvgemm
    size_t = ctypes.c_size_t
    fn.argtypes = (
        [ctypes.c_int]
        + [size_t] * 13
        + [ctypes.c_void_p, size_t] * 3
        + [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
        ]
    )
    fn.restype = ctypes.c_int
    return fn


def clblast(wl, rt):
    """CLBlast's convgemm (im2col fused into its GEMM), NCHW, symmetric padding only."""
    import ctypes

    try:
        convgemm = _load_clblast()
    except OSError:
        return None
    if convgemm is None or not wl.dense:
        return None
    if wl.kind == "conv1d":
        h, kh, (pt, pb) = 1, 1, (0, 0)
    else:
        h, kh, (pt, pb) = wl.h, wl.kh, _explicit_pads(wl)[0]
    pl, pr = _explicit_pads(wl)[1]
    if pt != pb or pl != pr:
        return None
    a = wl.arrays
    g = wl.geometry()
    # Layouts: im (batch, C_in, H, W), kernel (C_out, C_in, kh, kw), result (batch, C_out, Ho, Wo).
    if wl.kind == "conv1d":
        x_np, k_np = a["x"].transpose(0, 2, 1), a["k"].transpose(2, 1, 0)
    else:
        x_np, k_np = a["x"].transpose(0, 3, 1, 2), a["k"].transpose(3, 2, 0, 1)
    x = cl_array.to_device(rt.queue, np.ascontiguousarray(x_np))
    k = cl_array.to_device(rt.queue, np.ascontiguousarray(k_np))
    y = cl_array.empty(rt.queue, (g.n, g.cout, g.ho, g.wo), np.float32)
    queue = ctypes.c_void_p(rt.queue.int_ptr)
    sh, dh = (1, 1) if wl.kind == "conv1d" else (wl.s, wl.d)
    args = (
        151, wl.cin, h, wl.w, kh, wl.kw, pt, pl, sh, wl.s, dh, wl.d, wl.cout, wl.n,
        x.data.int_ptr, 0, k.data.int_ptr, 0, y.data.int_ptr, 0,
    )  # fmt: skip

    def call(keep_alive=(x, k, y)):  # args holds raw pointers only
        status = convgemm(*args, ctypes.byref(queue), None)
        if status != 0:
            raise RuntimeError(f"CLBlastSconvgemm returned status {status}")
        rt.queue.finish()

    return call


PEERS = {
    "clatrous": clatrous_host,
    "clatrous (device arrays)": clatrous_device,
    "clatrous (pooled device arrays)": clatrous_pooled,
    "clatrous (zeros border)": clatrous_zeros,
    "clatrous (results kept)": clatrous_kept,
    "clatrous (out=)": clatrous_out,
    "clatrous (channels-first)": clatrous_channels_first,
    "PyTorch": pytorch,
    "PyTorch (CUDA)": pytorch_cuda,
    "tinygrad (CL)": tinygrad,
    "CLBlast convgemm": clblast,
    "naive kernel": clatrous_direct,
    "before": before_host,
    "before (device arrays)": before_device,
    "NumPy reference": numpy_reference,
}


# ---------------------------------------------------------------- timing


def measure(calls: dict, rounds: int, budget_s: float, block: int = 4) -> dict[str, list[float]]:
    """Interleaved timings, each peer warm.

    Every round runs each peer in turn for a block of back-to-back calls and
    keeps the times of all but the first: a user calls one library in a loop,
    and right after another library ran, a peer pays for threads that still
    spin or have gone to sleep (OpenMP runtimes and OpenCL drivers both do).
    The rounds interleave the peers, so machine noise falls on all of them,
    and each round starts one peer further on, so that every peer follows
    every other equally often: PyTorch's OpenMP threads spin on after it
    returns, and the peer right after it paid for that (D3 with reflect
    measured 1.45x its zeros row behind PyTorch, 1.12x without PyTorch).
    Peers slower than 0.2 s a call run one call per round, timed.
    """
    times = {name: [] for name in calls}
    sizes = {}
    for name, call in list(calls.items()):
        try:
            call()  # build, tune caches, warm up
            t0 = time.perf_counter()
            call()
            sizes[name] = block if time.perf_counter() - t0 < 0.2 else 1
        except Exception as exc:  # a peer that fails is reported, not fatal
            print(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
            del calls[name], times[name]
    started = time.perf_counter()
    order = list(calls.items())
    for r in range(rounds):
        shift = r % len(order) if order else 0
        for name, call in order[shift:] + order[:shift]:
            if sizes[name] > 1:
                call()  # the switch from the previous peer is paid here, untimed
            for _ in range(max(1, sizes[name] - 1)):
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - started > budget_s:
            break
    return times


def copy_bandwidth(rt, nbytes=256 * 2**20) -> float:
    """GB/s of a device buffer-to-buffer copy (bytes copied once, not read plus write)."""
    nbytes = min(nbytes, rt.info.max_alloc // 2)
    src = cl.Buffer(rt.context, cl.mem_flags.READ_WRITE, nbytes)
    dst = cl.Buffer(rt.context, cl.mem_flags.READ_WRITE, nbytes)
    cl.enqueue_fill_buffer(rt.queue, src, np.float32(1), 0, nbytes)
    best = float("inf")
    for _ in range(5):
        rt.queue.finish()
        t0 = time.perf_counter()
        cl.enqueue_copy(rt.queue, dst, src, byte_count=nbytes)
        rt.queue.finish()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def check(wl, rt) -> float:
    """Largest relative error of clatrous against the reference on this workload."""
    got = clatrous_host(wl, rt)()
    if wl.flops > 3e10:
        return float("nan")  # the reference would take minutes; the tests cover correctness
    want = _reference(wl)
    err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))
    if not err < 1e-4:
        raise SystemExit(f"{wl.name}: clatrous differs from the reference (relative error {err:.2e})")
    return err


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def versions() -> str:
    names = ["clatrous", "pyopencl", "numpy", "torch", "tinygrad"]
    commit = _git_commit()
    found = [f"clatrous commit {commit}"] if commit else []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    import ctypes.util

    clblast_lib = os.environ.get("CLBLAST_LIBRARY") or ctypes.util.find_library("clblast")
    if clblast_lib:
        found.append(f"CLBlast ({clblast_lib})")
    return ", ".join(found)


def run_header(rt, extra: str = "") -> str:
    """The device, machine and versions of a run, as the scripts print and record them."""
    return (
        f"device: {rt.info.platform} | {rt.info.name} | driver {rt.info.driver}\n"
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}\n"
        f"versions: Python {platform.python_version()}, {versions()}{', ' + extra if extra else ''}"
    )


def append_record(path: str, title: str, header: str, body: str) -> None:
    """Append a run (its title stamped with the time, its header, its tables) to a Markdown file."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {title}, {stamp}\n\n```\n{header}\n```\n\n{body}\n")
    print(f"appended to {path}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument(
        "--workload", action="append", default=[], help="name:kind:key=value,... (repeatable)"
    )
    parser.add_argument("--device", help="device name substring or platform:device indices")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per workload, at most")
    parser.add_argument("--block", type=int, default=4, help="back-to-back calls per peer per round")
    parser.add_argument("--peers", help="comma-separated peer names to run (default: all installed)")
    parser.add_argument("--record", help="append the table, with machine and versions, to this Markdown file")
    parser.add_argument("--label", default="", help="a title for the recorded run (e.g. 'defaults', 'tuned')")
    parser.add_argument(
        "--before", help="a checkout of an earlier clatrous (a git worktree) to time beside this one"
    )
    args = parser.parse_args(argv)

    device = runtime.find_device(args.device) if args.device else None
    rt = runtime.get_runtime(device)
    workloads = [parse_workload(t) for t in args.workload] or WORKLOADS
    if args.only:
        wanted = set(args.only.split(","))
        workloads = [w for w in workloads if w.name in wanted]
    peers = {k: v for k, v in PEERS.items() if not args.peers or k in args.peers.split(",")}

    global BEFORE
    if args.before:
        BEFORE = load_before(args.before)

    tuned = params.load_database().get(rt.info.key, {})
    header = (
        f"device: {rt.info.platform} | {rt.info.name} | driver {rt.info.driver}\n"
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}\n"
        f"versions: Python {platform.python_version()}, {versions()}\n"
        f"tuning database: {len(tuned)} entries for this device in {params.database_path()}"
    )
    print(header)
    bandwidth = copy_bandwidth(rt)
    print(f"copy ceiling: {bandwidth:.1f} GB/s (one device buffer to another)")

    rng = np.random.default_rng(0)
    rows = []
    for wl in workloads:
        wl.make_arrays(rng)
        g = wl.geometry()
        err = check(wl, rt)
        calls = {name: make(wl, rt) for name, make in peers.items()}
        calls = {name: c for name, c in calls.items() if c is not None}
        print(
            f"{wl.name}: {wl.flops / 1e9:.3f} GFLOP, max relative error {err:.1e}; peers: {', '.join(calls)}"
        )
        # The NumPy reference is an oracle, not a competitor: timed on its
        # own, after the others, because for a few hundred milliseconds after
        # its BLAS calls the other peers ran up to 2x slower (clatrous on W6:
        # 4.2-5.7 ms interleaved with it, 2.5-2.6 ms without it).
        oracle = {name: calls.pop(name) for name in ["NumPy reference"] if name in calls}
        times = measure(calls, args.rounds, args.budget, args.block)
        times.update(measure(oracle, args.rounds, args.budget, args.block))
        medians = {name: statistics.median(t) for name, t in times.items()}
        # a copy of B bytes reads B and writes B: reading x and writing y is one copy of (x + y) / 2
        floor = (wl.arrays["x"].nbytes + wl.out_elements * 4) / 2 / (bandwidth * 1e9)
        rows.append((wl, g, medians, floor))
        torch_t = medians.get("PyTorch")
        for name, t in medians.items():
            ratio = f"{t / torch_t:6.2f}x PyTorch" if torch_t else ""
            print(f"  {name:26s} {t * 1e3:10.3f} ms {wl.flops / t / 1e9:8.1f} GFLOP/s {ratio}")

    best = max(
        (
            wl.flops / m["clatrous (device arrays)"] / 1e9
            for wl, _, m, _ in rows
            if "clatrous (device arrays)" in m
        ),
        default=float("nan"),
    )
    table = render(rows, peers, bandwidth, best)
    print()
    print(table)
    if args.record:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.record, "a", encoding="utf-8") as f:
            title = f"{args.label}, {stamp}" if args.label else stamp
            f.write(f"\n## {title}\n\n```\n{header}\n```\n\n{table}\n")
        print(f"appended to {args.record}")
    return 0


def render(rows, peers, bandwidth, best) -> str:
    names = [p for p in peers if any(p in m for _, _, m, _ in rows)]
    cuda = "PyTorch (CUDA)" in names  # on a GPU: device-resident clatrous against cuDNN
    head = ["workload", "GFLOP", *[f"{n} ms" for n in names], "clatrous GFLOP/s", "clatrous / PyTorch"]
    border = "clatrous (zeros border)" in names  # a row with another border: its cost over zeros
    if border:
        head.append("border / zeros")
    first = "clatrous (channels-first)" in names  # PyTorch's own layout, both sides
    if first:
        head.append("channels-first / PyTorch")
    if cuda:
        head.append("clatrous (device arrays) / PyTorch (CUDA)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl, _g, m, _floor in rows:
        cells = [f"{wl.name}", f"{wl.flops / 1e9:.3g}"]
        for n in names:
            cells.append(f"{m[n] * 1e3:.3f}" if n in m else "-")
        main_t = m.get("clatrous")
        cells.append(f"{wl.flops / main_t / 1e9:.1f}" if main_t else "-")
        torch_t = m.get("PyTorch")
        cells.append(f"{main_t / torch_t:.2f}x" if main_t and torch_t else "-")
        if border:
            zeros_t = m.get("clatrous (zeros border)")
            cells.append(f"{main_t / zeros_t:.2f}x" if main_t and zeros_t else "-")
        if first:
            first_t = m.get("clatrous (channels-first)")
            cells.append(f"{first_t / torch_t:.2f}x" if first_t and torch_t else "-")
        if cuda:
            device_t, cuda_t = m.get("clatrous (device arrays)"), m.get("PyTorch (CUDA)")
            cells.append(f"{device_t / cuda_t:.2f}x" if device_t and cuda_t else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Ceilings on this device: copy {bandwidth:.1f} GB/s; best clatrous rate {best:.1f} GFLOP/s "
        "(device arrays). Floors, from the copy rate, for reading the input and writing the output: "
        + ", ".join(f"{wl.name} {floor * 1e3:.2f} ms" for wl, _, _, floor in rows)
        + "."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
