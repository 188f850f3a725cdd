"""The fused ASPP branches (rows A1, A2) against PyTorch and clatrous's own separate calls, in one run.

A1: x 1x33x33x2048 float32, three 3x3 branches of 256 channels at rates
6, 12, 18 ("same", bias, relu), DeepLabv3's output-stride-16 head; A2: the
same at 65x65 with rates 12, 24, 36 (output stride 8).  Peers, interleaved
round after round as in ``bench.py`` (each warm):

- clatrous.aspp, host arrays in and out;
- clatrous.aspp on device arrays (x already there, the result left there);
- the same with the other way of sharing launches than the device's
  default (``FUSE``: one launch for every branch, or one per branch);
- clatrous.conv2d once per branch, then np.concatenate (host), and the
  same on device arrays (three results left on the device, not concatenated);
- PyTorch (oneDNN on a CPU): three ``F.conv2d`` calls then ``torch.cat``,
  NCHW tensors made before timing, under ``torch.no_grad``.

Every clatrous result is checked against PyTorch's first.

    python benchmarks/bench_aspp.py [--rows A1,A2] [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared timing and version helpers)

import clatrous  # noqa: E402
from clatrous import params, pyramid, runtime  # noqa: E402
from clatrous.arguments import prepare_branches  # noqa: E402

ROWS = {
    "A1": dict(size=33, cin=2048, cout=256, rates=(6, 12, 18)),
    "A2": dict(size=65, cin=2048, cout=256, rates=(12, 24, 36)),
}


def _torch_call(x, kernels, biases, rates):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    ks = [torch.from_numpy(k.transpose(3, 2, 0, 1).copy()) for k in kernels]
    bs = [torch.from_numpy(b) for b in biases]

    def call():
        with torch.no_grad():
            outs = [
                F.relu(F.conv2d(xt, k, b, padding=r, dilation=r))
                for k, b, r in zip(ks, bs, rates, strict=True)
            ]
            return torch.cat(outs, dim=1)

    return call


def row(name: str, spec: dict, rt, rounds: int, budget: float) -> list[str]:
    rng = np.random.default_rng(0)
    size, cin, cout, rates = spec["size"], spec["cin"], spec["cout"], spec["rates"]
    x = rng.standard_normal((1, size, size, cin)).astype(np.float32)
    scale = 1 / np.sqrt(9 * cin)
    kernels = [(rng.standard_normal((3, 3, cin, cout)) * scale).astype(np.float32) for _ in rates]
    biases = [rng.standard_normal(cout).astype(np.float32) for _ in rates]
    rates = list(rates)

    def fused():
        return clatrous.aspp(x, kernels, rates, biases, activation="relu")

    def separate():
        return np.concatenate(
            [
                clatrous.conv2d(x, k, b, padding="same", dilation_rate=r, activation="relu")
                for k, b, r in zip(kernels, biases, rates, strict=True)
            ],
            axis=-1,
        )

    x_dev = cl_array.to_device(rt.queue, x)
    k_dev = [cl_array.to_device(rt.queue, k) for k in kernels]
    b_dev = [cl_array.to_device(rt.queue, b) for b in biases]

    def fused_device():
        out = clatrous.aspp(x_dev, k_dev, rates, b_dev, activation="relu")
        rt.queue.finish()
        return out

    # The other way of sharing launches than the device's default (FUSE),
    # on the same device arrays: the evidence for the default.
    call = prepare_branches(x_dev, k_dev, rates, b_dev, "relu")
    default = params.aspp_defaults(rt.info, call.branches[0].geometry, (cout,) * len(rates), np.float32)
    other = dict(default, FUSE=1 - default["FUSE"])
    other_name = f"clatrous.aspp FUSE={other['FUSE']} (device arrays)"
    launches = pyramid.branch_launches(rt, call, config=other)

    def other_device():
        out = cl_array.empty(rt.queue, (1, size, size, cout * len(rates)), np.float32)
        events, _ = pyramid.enqueue_branches(rt, launches, out.base_data)
        cl.wait_for_events(events)
        return out

    def separate_device():
        outs = [
            clatrous.conv2d(x_dev, k, b, padding="same", dilation_rate=r, activation="relu")
            for k, b, r in zip(k_dev, b_dev, rates, strict=True)
        ]
        rt.queue.finish()
        return outs

    calls = {
        "clatrous.aspp": fused,
        "clatrous.aspp (device arrays)": fused_device,
        other_name: other_device,
        "clatrous.conv2d x3 + concatenate": separate,
        "clatrous.conv2d x3 (device arrays)": separate_device,
    }
    torch_call = _torch_call(x, kernels, biases, rates)
    expected = None
    if torch_call is not None:
        calls["PyTorch conv2d x3 + cat"] = torch_call
        expected = torch_call().numpy().transpose(0, 2, 3, 1)
    else:
        expected = separate()
    error = float(np.abs(fused() - expected).max() / np.abs(expected).max())
    assert error < 1e-4, (name, error)
    error_dev = float(np.abs(fused_device().get() - expected).max() / np.abs(expected).max())
    assert error_dev < 1e-4, (name, error_dev)
    error_other = float(np.abs(other_device().get() - expected).max() / np.abs(expected).max())
    assert error_other < 1e-4, (name, error_other)
    times = bench.measure(calls, rounds, budget, block=2)
    medians = {peer: statistics.median(t) for peer, t in times.items()}
    torch_t = medians.get("PyTorch conv2d x3 + cat")
    lines = [
        f"{name}: x 1x{size}x{size}x{cin} float32, 3 branches 3x3 -> {cout} at rates "
        f"{'/'.join(map(str, rates))}, bias, relu; default {default}; max relative difference from "
        f"{'PyTorch' if torch_call else 'the separate calls'} {max(error, error_dev):.1e}",
        "",
        "| peer | ms | / PyTorch |",
        "|---|---|---|",
    ]
    for peer, t in medians.items():
        ratio = f"{t / torch_t:.2f}x" if torch_t else "n/a"
        lines.append(f"| {peer} | {t * 1e3:.1f} | {ratio} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="A1,A2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument(
        "--record", help="append the tables, with machine and versions, to this Markdown file"
    )
    args = parser.parse_args(argv)
    rt = runtime.get_runtime()
    try:
        import torch

        torch_threads = f"torch threads {torch.get_num_threads()}"  # (its version: bench.versions)
    except ImportError:
        torch_threads = "torch not installed"
    header = bench.run_header(rt, torch_threads)
    print(header)
    tables = []
    for name in args.rows.split(","):
        lines = row(name, ROWS[name], rt, args.rounds, args.budget)
        print("\n".join(lines), "\n", flush=True)
        tables.append("\n".join(lines))
    if args.record:
        bench.append_record(args.record, f"ASPP {args.rows}", header, "\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
