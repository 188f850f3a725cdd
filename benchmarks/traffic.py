"""Global-memory traffic of each kernel variant, counted by the Oclgrind simulator.

Oclgrind's instruction counter (``OCLGRIND_INST_COUNTS=1``) totals the bytes
every ``load global`` and ``store global`` instruction of a kernel moves:
what the kernel asks of global memory, before any cache, on any device.  The
lower bound is reading the input, the weights and the bias once and writing
the output once; a variant's traffic over it says how much its blocking
re-reads (a GPU's caches absorb some of that, a CPU's most of it).

The simulator runs about a million work-item instructions a second, so the
workloads are the benchmark's rows with fewer images and smaller maps, the
channels, image sizes and rates kept (``W4/1`` is W4 on one of its eight
images, ``D1/1`` D1 on one): the bytes per output element are those of the
full rows, and the lower bound per output nearly so (W4's weights are shared
by eight images there, by one here: 8.07 against 8.56 bytes an output).

    python benchmarks/traffic.py                    # every workload and variant
    python benchmarks/traffic.py --record benchmarks/RESULTS.md

Each measurement runs in a child process of its own, since the counter is
switched on by an environment variable the simulator reads when it loads.
Oclgrind must be registered (see the README); the child picks it with
``CLATROUS_DEVICE=Oclgrind``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

# (name, kind, x shape, kernel shape, dilation): stride 1, "same" padding.
WORKLOADS = [
    ("W4/1", "conv2d", (1, 64, 64, 64), (3, 3, 64, 64), 2),
    ("D1/1", "depthwise", (1, 128, 128, 256), (3, 3, 256, 1), 2),
]
# (variant, configuration, what it is), per workload kind; None: the default.
VARIANTS = {
    "conv2d": [
        ("direct", {}, "one output a work-item"),
        ("blocked", {"VW": 4, "NV": 2, "PX": 2}, "GPU default"),
        ("blocked", {"VW": 16, "NV": 4, "PX": 4}, "CPU blocked"),
        ("tiled", {"VW": 16, "NV": 4, "PX": 6, "CT": 64, "NB": 1, "RW": 16}, "CPU default (tiled)"),
        ("local", {"VW": 4, "PX": 2, "PY": 2, "LC": 16, "LX": 4, "LY": 4, "CT": 8}, "coop. 8x8 tile"),
        ("local", {"VW": 4, "PX": 4, "PY": 4, "LC": 16, "LX": 4, "LY": 4, "CT": 8}, "coop. 16x16 tile"),
        ("local", {"VW": 8, "PX": 4, "PY": 4, "LC": 8, "LX": 8, "LY": 4, "CT": 4}, "coop. 16x32 tile"),
        # Its partial sums and transformed slices live in a global scratch
        # buffer (a CPU's L2), which the counter counts as global memory.
        (
            "winograd",
            {"M": 3, "VW": 16, "NV": 4, "NS": 1, "NT": 72, "TB": 6, "CT": 64},
            "CPU default (Winograd F(3x3))",
        ),
    ],
    "depthwise": [
        ("depthwise", {"VW": 4, "PX": 4}, "GPU default"),
        ("depthwise", {"VW": 16, "PX": 4}, "CPU default"),
        ("depthwise_local", {"VW": 1, "PX": 2, "LC": 32, "LX": 4, "LY": 2}, "cooperative, GPU-shaped"),
        ("depthwise_local", {"VW": 4, "PX": 2, "LC": 8, "LX": 4, "LY": 4}, "cooperative, 16x8 tile"),
        ("depthwise_local", {"VW": 4, "PX": 4, "LC": 4, "LX": 4, "LY": 8}, "cooperative, 16x8 tile, 16 ch"),
    ],
}
_COUNT = re.compile(r"^\s*(\d+)\s+-\s+(load|store) global \((\d+) bytes\)", re.MULTILINE)
# vloadn/vstoren are counted as calls: "call _Z6vload4mPU3AS1Kf()" is vload4 of
# floats from address space 1 (global).
_VECTOR_CALL = re.compile(r"^\s*(\d+)\s+-\s+call _Z\d+v(load|store)(\d+)\w*?PU3AS1K?([fd])\(\)", re.MULTILINE)


def child(name: str, variant: str, config: dict) -> None:
    """Run one call (in a process where Oclgrind counts); print the lower bound as JSON."""
    import clatrous
    from clatrous import params

    kind, x_shape, k_shape, d = next((k, x, ks, d) for n, k, x, ks, d in WORKLOADS if n == name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    k = rng.standard_normal(k_shape).astype(np.float32)
    b = rng.standard_normal(k_shape[2] * k_shape[3] if kind == "depthwise" else k_shape[3]).astype(np.float32)
    fn = clatrous.depthwise_conv2d if kind == "depthwise" else clatrous.conv2d
    with params.forced(variant, config):
        y = fn(x, k, b, padding="same", dilation_rate=d)
    print(json.dumps({"bound": x.nbytes + k.nbytes + b.nbytes + y.nbytes, "outputs": y.size}))


def measure(name: str, variant: str, config: dict) -> dict:
    env = {**os.environ, "CLATROUS_DEVICE": "Oclgrind", "OCLGRIND_INST_COUNTS": "1"}
    for key in ("OCLGRIND_DATA_RACES", "OCLGRIND_UNINITIALIZED"):  # counting only: faster
        env.pop(key, None)
    run = subprocess.run(
        [sys.executable, __file__, "--child", name, variant, json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{name} {variant} {config}: {run.stderr[-2000:]}")
    # Oclgrind prints its counts on the process's standard output, before the JSON line.
    info = json.loads(run.stdout.strip().splitlines()[-1])
    moved = {"load": 0, "store": 0}
    for _count, op, nbytes in _COUNT.findall(run.stdout):
        moved[op] += int(nbytes)
    for count, op, width, element in _VECTOR_CALL.findall(run.stdout):
        moved[op] += int(count) * int(width) * (4 if element == "f" else 8)
    if not moved["load"] or not moved["store"]:
        tail = (run.stdout + run.stderr)[-800:]
        raise RuntimeError(f"no instruction counts from Oclgrind for {name} {variant}: {tail}")
    return {**info, **moved}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--record", help="append the table to this Markdown file")
    parser.add_argument("--only", help="comma-separated workload names")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]))
        return 0
    lines = [
        "| workload | variant | configuration | what | loaded MB | stored MB | bytes per output "
        "| traffic / lower bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kind, *_ in WORKLOADS:
        if args.only and name not in args.only.split(","):
            continue
        for variant, config, what in VARIANTS[kind]:
            started = time.perf_counter()
            m = measure(name, variant, config)
            total = m["load"] + m["store"]
            row = (
                f"| {name} | {variant} | {json.dumps(config)} | {what} | {m['load'] / 1e6:.2f} | "
                f"{m['store'] / 1e6:.2f} | {total / m['outputs']:.1f} | {total / m['bound']:.2f}x |"
            )
            print(row, f"({time.perf_counter() - started:.0f} s)", flush=True)
            lines.append(row)
        bound = m["bound"]
        lines.append(f"| {name} | lower bound | | x, w, bias read once, y written once | | | "
                     f"{bound / m['outputs']:.1f} | 1.00x |")  # fmt: skip
    table = "\n".join(lines)
    print()
    print(table)
    if args.record:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.record, "a", encoding="utf-8") as f:
            f.write(f"\n## Global-memory traffic per variant (Oclgrind --inst-counts), {stamp}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
