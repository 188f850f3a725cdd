"""How the receptive field grows with the dilation rate, on a full-size photograph.

The same 3x3 filter (nine weights, nine multiply-adds per pixel) is applied to
scikit-image's 512x512 camera man at rates 1, 4 and 16.  Top row: what each
rate responds to; bottom row: the filter's footprint on the image, found by
convolving a single bright pixel (the impulse response), which spreads to
(2*rate + 1) pixels a side while the cost stays nine taps.

Saves receptive_field.png in the current folder.  Set CLATROUS_DEVICE to pick
the OpenCL device.

    python examples/receptive_field.py
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage import data

import clatrous
from clatrous import runtime

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

image = data.camera().astype(np.float32) / 255.0  # (512, 512)
laplacian = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)
impulse = np.zeros((37, 37), np.float32)
impulse[18, 18] = 1.0

rates = (1, 4, 16)
fig, axes = plt.subplots(2, len(rates) + 1, figsize=(13, 6.5))
axes[0, 0].imshow(image, cmap="gray")
axes[0, 0].set_title("camera, 512x512")
axes[1, 0].imshow(laplacian, cmap="RdBu_r", vmin=-8, vmax=8)
axes[1, 0].set_title("the 3x3 filter")
for col, rate in enumerate(rates, start=1):
    clatrous.conv2d(image, laplacian, padding="same", dilation_rate=rate)  # build and warm up
    start = time.perf_counter()
    response = clatrous.conv2d(image, laplacian, padding="same", dilation_rate=rate)
    elapsed = time.perf_counter() - start
    footprint = clatrous.conv2d(impulse, laplacian[::-1, ::-1], padding="same", dilation_rate=rate)
    extent = 2 * rate + 1
    print(f"rate {rate:2d}: receptive field {extent}x{extent} pixels, 9 taps, {elapsed * 1e3:.2f} ms")
    axes[0, col].imshow(np.abs(response), cmap="magma", vmax=np.percentile(np.abs(response), 99.5))
    axes[0, col].set_title(f"|response|, rate {rate}")
    axes[1, col].imshow(footprint, cmap="RdBu_r", vmin=-8, vmax=8, interpolation="nearest")
    axes[1, col].set_title(f"footprint: {extent}x{extent} of 37x37")
for ax in axes.flat:
    ax.axis("off")
fig.suptitle(f"Same nine weights, growing receptive field ({info.name})")
fig.savefig("receptive_field.png", bbox_inches="tight", dpi=80)
print("saved receptive_field.png")
