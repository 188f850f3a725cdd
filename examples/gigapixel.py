"""A gigapixel image through clatrous.dask: from a Zarr store to a Zarr store, block by block.

Writes a 16384x16384 float32 image (1 GiB) to ``gigapixel_input.zarr``:
scikit-image's camera man tiled 32 times each way, with Gaussian noise,
made chunk by chunk. Then smooths it with a dilated 5x5 binomial filter
(rate 2, numpy's reflect border) through ``clatrous.dask.conv2d``, block by
block with a progress bar, into ``gigapixel_output.zarr``, and saves a
zoomed crop before and after as ``gigapixel.png``. Neither the image nor
the result is ever whole in memory: dask reads, filters and writes a few
2048x2048 blocks at a time (each with its 4-pixel halo), and the result of
a stride-1 "same" filter keeps the store's chunks, so each block is
written where it was read. Every 8th block of the result is checked
against the in-memory ``clatrous.conv2d`` on the same region with its
halo.

    python examples/gigapixel.py [--size 16384] [--chunk 2048]

Set CLATROUS_DEVICE to pick the OpenCL device.
"""

import argparse
import shutil
import time

import dask
import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from dask.diagnostics import ProgressBar
from skimage import data

import clatrous
import clatrous.dask as cd
from clatrous import runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", type=int, default=16384, help="image side in pixels (default 16384)")
parser.add_argument("--chunk", type=int, default=2048, help="block side in pixels (default 2048)")
args = parser.parse_args()

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

camera = data.camera().astype(np.float32) / 255.0  # (512, 512), tiled


def make_block(block_id=None, block_info=None):
    """One chunk of the image: the camera tiles under it, and noise seeded by the chunk's place."""
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    tile = camera[np.ix_(np.arange(r0, r1) % 512, np.arange(c0, c1) % 512)]
    rng = np.random.default_rng(block_id[0] * 100_003 + block_id[1])
    return tile + rng.normal(0.0, 0.1, tile.shape).astype(np.float32)


size, chunk = args.size, args.chunk
image = da.map_blocks(
    make_block, dtype=np.float32, chunks=((chunk,) * (size // chunk), (chunk,) * (size // chunk))
)
for store in ("gigapixel_input.zarr", "gigapixel_output.zarr"):
    shutil.rmtree(store, ignore_errors=True)
print(f"writing a {size}x{size} float32 image ({size * size * 4 / 2**30:.2f} GiB) to gigapixel_input.zarr")
with dask.config.set(scheduler="threads", num_workers=2), ProgressBar():
    image.to_zarr("gigapixel_input.zarr")

binomial = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256
source = da.from_zarr("gigapixel_input.zarr")
smoothed = cd.conv2d(source, binomial, padding="same", dilation_rate=2, padding_mode="reflect")
assert smoothed.chunks == source.chunks  # stride 1, "same": each block lands where it was read
print(
    f"filtering block by block ({source.numblocks[0] * source.numblocks[1]} blocks) to gigapixel_output.zarr"
)
start = time.perf_counter()
with dask.config.set(scheduler="threads", num_workers=2), ProgressBar():
    smoothed.to_zarr("gigapixel_output.zarr")
elapsed = time.perf_counter() - start
print(
    f"filtered {size * size / 1e6:.0f} megapixels in {elapsed:.1f} s: {size * size / 1e6 / elapsed:.0f} MP/s"
)

# Check: some blocks against the in-memory call on the same region and its halo.
result = da.from_zarr("gigapixel_output.zarr")
halo = 4  # 2 * (5 - 1) / 2: the dilated filter's reach on each side

for index in range(0, result.numblocks[0] * result.numblocks[1], 8):
    i, j = divmod(index, result.numblocks[1])
    r0, c0 = i * chunk, j * chunk
    lo_r, lo_c = max(r0 - halo, 0), max(c0 - halo, 0)
    hi_r, hi_c = min(r0 + chunk + halo, size), min(c0 + chunk + halo, size)
    region = source[lo_r:hi_r, lo_c:hi_c].compute()
    pads = (
        (halo - (r0 - lo_r), halo - (hi_r - r0 - chunk)),
        (halo - (c0 - lo_c), halo - (hi_c - c0 - chunk)),
    )
    region = np.pad(region, pads, mode="reflect")  # only at the image's edges are the pads not 0
    expected = clatrous.conv2d(region, binomial, dilation_rate=2)
    got = result.blocks[i, j].compute()
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-6), f"block ({i}, {j}) differs"
print("checked every 8th block against the in-memory call")

crop = (slice(size // 2, size // 2 + 256), slice(size // 2 + 128, size // 2 + 384))
before, after = source[crop].compute(), result[crop].compute()
fig, axes = plt.subplots(1, 3, figsize=(14, 5))
axes[0].imshow(source[::64, ::64].compute(), cmap="gray", vmin=0, vmax=1)
axes[0].set_title(f"the {size}x{size} image (every 64th pixel)")
axes[1].imshow(before, cmap="gray", vmin=0, vmax=1)
axes[1].set_title("a 256x256 crop, noisy")
axes[2].imshow(after, cmap="gray", vmin=0, vmax=1)
axes[2].set_title("the same crop, smoothed block by block")
for ax in axes:
    ax.axis("off")
fig.suptitle(f"clatrous.dask: a dilated 5x5 binomial at rate 2, Zarr to Zarr ({info.name})")
fig.savefig("gigapixel.png", bbox_inches="tight", dpi=80)
print("saved gigapixel.png")
