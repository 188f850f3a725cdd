"""Benchmark the starlet (row S1) against a SciPy formulation and the device's copy floor, in one run.

S1: a 4096x4096 float32 image, 6 levels, numpy's reflect border.  Peers,
interleaved round after round as in ``bench.py``:

- clatrous, host array in and out (the upload and the read-back included);
- clatrous on device arrays (the image already there, the result left there);
- the SciPy formulation: ``scipy.ndimage.correlate1d`` along each axis with
  the dilated B3 kernel (``mode="mirror"``, numpy's reflect), then the
  difference, level after level (float32 throughout, one thread).

The floor: each level reads and writes the image about three times (two
filter passes and the difference), so ``3 * levels`` copies of the image at
the device's copy rate.  Every result is checked against the SciPy one first.

    python benchmarks/bench_starlet.py [--size 4096] [--levels 6] [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pyopencl.array as cl_array

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared timing, ceilings and version helpers)

import clatrous  # noqa: E402
from clatrous import reference, runtime  # noqa: E402


def scipy_starlet(image: np.ndarray, levels: int) -> np.ndarray:
    from scipy import ndimage

    c, planes = image, []
    for j in range(levels):
        taps = np.zeros(4 * 2**j + 1, image.dtype)
        taps[:: 2**j] = reference.B3
        rows = ndimage.correlate1d(c, taps, axis=0, mode="mirror")
        smooth = ndimage.correlate1d(rows, taps, axis=1, mode="mirror")
        planes.append(c - smooth)
        c = smooth
    planes.append(c)
    return np.stack(planes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--record", help="append the table, with machine and versions, to this Markdown file")
    args = parser.parse_args(argv)

    rt = runtime.get_runtime()
    header = bench.run_header(rt, f"scipy {__import__('scipy').__version__}")
    print(header)
    bandwidth = bench.copy_bandwidth(rt)
    image = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    levels = args.levels
    expected = scipy_starlet(image, levels)
    got = clatrous.starlet(image, levels)
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert error < 1e-5, error
    image_dev = cl_array.to_device(rt.queue, image)

    def on_device():
        out = clatrous.starlet(image_dev, levels)
        rt.queue.finish()
        return out

    calls = {
        "clatrous": lambda: clatrous.starlet(image, levels),
        "clatrous (device arrays)": on_device,
        "SciPy correlate1d": lambda: scipy_starlet(image, levels),
    }
    times = bench.measure(calls, args.rounds, args.budget, block=2)
    medians = {name: statistics.median(t) for name, t in times.items()}
    floor = 3 * levels * image.nbytes / (bandwidth * 1e9)
    scipy_t = medians["SciPy correlate1d"]
    lines = [
        f"S1: {args.size}x{args.size} float32, {levels} levels, reflect; max relative difference "
        f"from SciPy {error:.1e}; copy {bandwidth:.1f} GB/s, floor {floor * 1e3:.1f} ms "
        f"(3 x {levels} image copies)",
        "",
        "| peer | ms | / floor | SciPy / this |",
        "|---|---|---|---|",
    ]
    for name, t in medians.items():
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / floor:.2f}x | {scipy_t / t:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        bench.append_record(args.record, "Starlet S1", header, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
