"""An ASPP block on a photograph: what each atrous rate's branch responds to.

DeepLab's atrous spatial pyramid pooling looks at one input through several
rates at once. Here the input is scikit-image's 512x512 astronaut (three
colour channels), and every atrous branch holds the same nine weights: a
centre-surround filter on the luminance, which answers where a pixel is
brighter than its eight neighbours ``rate`` pixels away. So each rate's
branch picks out bright structures about ``rate`` pixels across: thin lines
and edges at rate 2, the buttons and letters of the suit at rate 8, whole
features at rate 24. ``clatrous.aspp`` computes the branches side by side
in one call; ``clatrous.ASPP`` is DeepLabv3's whole block (the branches, the
image-pooling branch and the 1x1 projection), here with weights that add the
three rates' rectified responses.

Top row: the photograph and each rate's branch. Bottom row: the block's
output and each branch's footprint (its impulse response: nine taps spread
over (2 * rate + 1) pixels a side). Every result is checked against
``clatrous.reference``.

Saves aspp.png in the current folder. Set CLATROUS_DEVICE to pick the
OpenCL device.

    python examples/aspp.py
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage import data

import clatrous
from clatrous import reference, runtime

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

x = (data.astronaut().astype(np.float32) / 255.0)[None]  # (1, 512, 512, 3)
luminance = np.array([0.299, 0.587, 0.114], np.float32)
surround = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32) / 8
# The branch kernels, Keras' layout (kh, kw, C_in, C_out): the centre-surround
# filter applied to the luminance, one output channel per branch.
centre_surround = surround[:, :, None, None] * luminance[None, None, :, None]
rates = (2, 8, 24)

kernels = [centre_surround] * len(rates)
clatrous.aspp(x, kernels, list(rates), activation="relu")  # compile and warm up
start = time.perf_counter()
branches = clatrous.aspp(x, kernels, list(rates), activation="relu")  # (1, 512, 512, 3)
elapsed = time.perf_counter() - start
expected = reference.aspp(x, kernels, list(rates), activation="relu")
assert np.allclose(branches, expected, rtol=1e-4, atol=1e-5), "aspp differs from the reference"
print(f"aspp: {len(rates)} branches at rates {rates} on 512x512x3 in {elapsed * 1e3:.1f} ms")

# The whole block: the 1x1 branch and the image pooling see the luminance,
# and the projection adds the three atrous branches only.
block = clatrous.ASPP(1, rates=rates, image_pooling=True, activation="relu")
block.build(x.shape)
one_by_one = luminance.reshape(1, 1, 3, 1)
weights = [one_by_one, np.zeros(1)]
for _ in rates:
    weights += [centre_surround, np.zeros(1)]
weights += [one_by_one, np.zeros(1)]  # the image pooling branch
weights += [np.array([0, 1, 1, 1, 0], np.float32).reshape(1, 1, 5, 1), np.zeros(1)]  # the projection
block.set_weights(weights)
block(x)  # compile and warm up
start = time.perf_counter()
output = block(x)[0, :, :, 0]
elapsed = time.perf_counter() - start
assert np.allclose(output, expected[0].sum(axis=-1), rtol=1e-4, atol=1e-5), "the block differs"
print(f"ASPP block (5 branches, projection): {elapsed * 1e3:.1f} ms, output {output.shape}")

impulse = np.zeros((61, 61), np.float32)
impulse[30, 30] = 1.0
fig, axes = plt.subplots(2, len(rates) + 1, figsize=(13, 6.8))
axes[0, 0].imshow(x[0])
axes[0, 0].set_title("astronaut, 512x512x3")
axes[1, 0].imshow(output, cmap="magma", vmax=np.percentile(output, 99.5))
axes[1, 0].set_title("ASPP block output")
for col, rate in enumerate(rates, start=1):
    response = branches[0, :, :, col - 1]
    footprint = clatrous.conv2d(impulse, surround[::-1, ::-1], padding="same", dilation_rate=rate)
    extent = 2 * rate + 1
    print(f"rate {rate:2d}: receptive field {extent}x{extent} pixels, 9 taps")
    axes[0, col].imshow(response, cmap="magma", vmax=np.percentile(response, 99.5))
    axes[0, col].set_title(f"branch at rate {rate} (relu)")
    # The centre tap (1) saturates; the scale shows the eight surround taps (-1/8).
    axes[1, col].imshow(footprint, cmap="RdBu_r", vmin=-0.15, vmax=0.15, interpolation="nearest")
    axes[1, col].set_title(f"its footprint: {extent}x{extent} of 61x61")
for ax in axes.flat:
    ax.axis("off")
fig.suptitle(f"One input, three rates: what each ASPP branch responds to ({info.name})")
fig.savefig("aspp.png", bbox_inches="tight", dpi=80)
print("saved aspp.png")
