"""Throughput of clatrous.dask against the in-memory call on the same image (issue 13's row).

Row G1: an 8192x8192 float32 image, a 5x5 filter at rate 2, "same",
numpy's reflect border, in megapixels per second:

- ``clatrous.conv2d`` on the whole ndarray (host in, host out);
- ``clatrous.dask.conv2d`` on 2048x2048 blocks of a dask array already in
  memory (``persist``), the result persisted too, with dask's threaded
  scheduler and one thread, then two;
- the same on a ``distributed.LocalCluster`` from :func:`clatrous.dask.cluster`
  with one worker process, then two (both on the same device here: one
  OpenCL device), the image made on the workers and persisted there first,
  so no image crosses a process boundary while timed (each round a graph
  of its own: the same keys would find the last round's results held).

Each peer is timed ``--rounds`` times after a warm-up, medians reported;
every result is checked against the in-memory one first.

    python benchmarks/bench_dask.py [--size 8192] [--rounds 5] [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import distributed
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the version and machine helpers)

import clatrous  # noqa: E402
import clatrous.dask as cd  # noqa: E402
from clatrous import runtime  # noqa: E402

KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256
CALL = dict(padding="same", dilation_rate=2, padding_mode="reflect")


def _image(size: int, chunk: int) -> da.Array:
    """The same pseudo-random image wherever it is made (each block seeded by its place)."""

    def make(block_id=None, block_info=None):
        shape = block_info[None]["chunk-shape"]
        return np.random.default_rng(block_id[0] * 1009 + block_id[1]).random(shape, dtype=np.float32)

    blocks = (chunk,) * (size // chunk)
    return da.map_blocks(make, dtype=np.float32, chunks=(blocks, blocks))


def _timed(call, rounds: int) -> float:
    call()  # warm: programs built, workers started
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", help="append the table, with machine and versions, to this Markdown file")
    args = parser.parse_args(argv)
    rt = runtime.get_runtime()
    spec = cd._device_spec(rt.device)
    header = bench.run_header(rt, f"dask {dask.__version__}, distributed {distributed.__version__}")
    print(header)
    lazy = _image(args.size, args.chunk)
    with dask.config.set(scheduler="threads"):
        image = lazy.compute()
        expected = clatrous.conv2d(image, KERNEL, **CALL)
        in_memory = lazy.persist()
    megapixels = args.size * args.size / 1e6
    rows = {
        "clatrous.conv2d, whole ndarray": _timed(lambda: clatrous.conv2d(image, KERNEL, **CALL), args.rounds)
    }
    for threads in (1, 2):
        with dask.config.set(scheduler="threads", num_workers=threads):
            result = cd.conv2d(in_memory, KERNEL, **CALL)
            np.testing.assert_allclose(result.compute(), expected, rtol=1e-5, atol=1e-6)
            rows[f"clatrous.dask, threaded, {threads} thread(s)"] = _timed(
                lambda result=result: result.persist(), args.rounds
            )
    for workers in (1, 2):
        with cd.cluster(devices=[spec] * workers) as local, distributed.Client(local) as client:
            source = client.persist(_image(args.size, args.chunk))
            distributed.wait(source)
            result = cd.conv2d(source, KERNEL, **CALL)
            np.testing.assert_allclose(client.compute(result, sync=True), expected, rtol=1e-5, atol=1e-6)

            rounds = iter(range(1, 1000))

            def run(client=client, source=source, rounds=rounds):
                # A graph of its own each round (the kernel scaled by 1 + 1e-6 r):
                # the same keys would find the last round's results still held.
                kernel = KERNEL * np.float32(1 + 1e-6 * next(rounds))
                kept = client.persist(cd.conv2d(source, kernel, **CALL))
                distributed.wait(kept)
                del kept

            rows[f"clatrous.dask, LocalCluster, {workers} worker(s)"] = _timed(run, args.rounds)
    lines = [
        f"G1: {args.size}x{args.size} float32, 5x5 at rate 2, same, reflect; blocks of "
        f"{args.chunk}x{args.chunk}; {args.rounds} rounds, medians",
        "",
        "| peer | ms | MP/s | / in-memory time |",
        "|---|---|---|---|",
    ]
    base = rows["clatrous.conv2d, whole ndarray"]
    for name, seconds in rows.items():
        lines.append(f"| {name} | {seconds * 1e3:.0f} | {megapixels / seconds:.0f} | {seconds / base:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        bench.append_record(args.record, "Dask G1", header, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
