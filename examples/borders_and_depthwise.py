"""Borders beyond zeros, and a depthwise dilated filter on a colour photograph.

Top row: scikit-image's 512x512 astronaut blurred by one dilated 5x5 box
filter at rate 24 (a 97x97 footprint) under each padding mode.  Zeros darken
a 48-pixel frame; reflect, replicate, circular and symmetric read real
pixels there, each its own way (circular brings the opposite edge in).
Bottom row: the top-left corner of each, where they differ most.

The blur is a depthwise convolution: each of the three colour channels by its
own copy of the filter (kernel (5, 5, 3, 1), Keras' DepthwiseConv2D layout),
one launch for the three.  Every result is checked against
clatrous.reference, which pads with np.pad.

Saves borders_and_depthwise.png in the current folder.  Set CLATROUS_DEVICE
to pick the OpenCL device.

    python examples/borders_and_depthwise.py
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

image = data.astronaut().astype(np.float32)[None] / 255.0  # (1, 512, 512, 3)
kernel = np.full((5, 5, 3, 1), 1 / 25, np.float32)  # one box filter per channel
rate = 24
modes = ("zeros", "reflect", "replicate", "circular", "symmetric")

fig, axes = plt.subplots(2, len(modes), figsize=(17, 7.5))
for col, mode in enumerate(modes):
    kwargs = dict(padding="same", dilation_rate=rate, padding_mode=mode)
    clatrous.depthwise_conv2d(image, kernel, **kwargs)  # build and warm up
    start = time.perf_counter()
    blurred = clatrous.depthwise_conv2d(image, kernel, **kwargs)
    elapsed = time.perf_counter() - start
    expected = reference.depthwise_conv2d(image, kernel, **kwargs)
    error = float(np.abs(blurred - expected).max())
    assert error < 1e-5, f"{mode}: {error}"
    print(f"{mode:10s} {elapsed * 1e3:7.2f} ms, max difference from the reference {error:.1e}")
    shown = np.clip(blurred[0], 0, 1)
    axes[0, col].imshow(shown)
    axes[0, col].set_title(f'padding_mode="{mode}"')
    axes[1, col].imshow(shown[:128, :128], interpolation="nearest")
    axes[1, col].set_title("top-left 128x128")
for ax in axes.flat:
    ax.axis("off")
fig.suptitle(
    f"A 5x5 box at rate {rate} ({4 * rate + 1}x{4 * rate + 1} footprint), depthwise over RGB ({info.name})"
)
fig.savefig("borders_and_depthwise.png", bbox_inches="tight", dpi=70)
print("saved borders_and_depthwise.png")
