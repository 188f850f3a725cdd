"""The starlet, the original algorithme à trous, on the Hubble deep field.

First figure: the five wavelet planes w_1 ... w_5 and the smooth plane c_5
of scikit-image's Hubble deep field (grey levels): each plane holds the
structures of one size, stars in the finest, galaxies in the coarser ones.

Second figure: starlet denoising.  Gaussian noise (sigma 0.08) is added; the
noise level is estimated from the finest plane by the MAD rule
(sigma = median |w_1| / 0.6745, divided by that plane's response to unit
white noise); every coefficient below k * sigma_j of its plane is set to
zero (k = 4 in the finest plane, 3 in the others, sigma_j the noise's
standard deviation in plane j); the image is the sum of what remains.
Original, noisy and denoised side by side, with their PSNR.

Saves starlet_scales.png and starlet_denoising.png in the current folder.
Set CLATROUS_DEVICE to pick the OpenCL device.

    python examples/starlet.py
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage import color, data

import clatrous
from clatrous import reference, runtime

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

image = color.rgb2gray(data.hubble_deep_field()).astype(np.float32)  # (872, 1000) in [0, 1]
levels = 5
clatrous.starlet(image, levels)  # build and warm up
start = time.perf_counter()
planes = clatrous.starlet(image, levels)
elapsed = time.perf_counter() - start
error = float(np.abs(planes - reference.starlet(image, levels)).max())
assert error < 1e-5, error
print(f"starlet of {image.shape[0]}x{image.shape[1]}, {levels} levels: {elapsed * 1e3:.1f} ms, "
      f"max difference from the reference {error:.1e}")  # fmt: skip
assert np.abs(planes.sum(axis=0) - image).max() < 1e-5  # generation 1: the planes sum to the image

fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
for j, ax in enumerate(axes.flat):
    plane = planes[j]
    limit = np.percentile(np.abs(plane), 99.5)
    if j < levels:
        ax.imshow(plane, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"w_{j + 1}: structures about {2 ** (j + 1)} px across")
    else:
        ax.imshow(plane, cmap="gray")
        ax.set_title(f"c_{levels}: what is left, smooth")
    ax.axis("off")
fig.suptitle(f"Starlet planes of the Hubble deep field ({info.name})")
fig.savefig("starlet_scales.png", bbox_inches="tight", dpi=60)
print("saved starlet_scales.png")

# ---- denoising
rng = np.random.default_rng(0)
sigma = 0.08
noisy = (image + rng.normal(0, sigma, image.shape)).astype(np.float32)
# The noise's standard deviation in each plane, for white noise of sigma 1.
unit = clatrous.starlet(rng.standard_normal((1024, 1024)).astype(np.float32), levels)
response = unit[:levels].std(axis=(1, 2))
coefficients = clatrous.starlet(noisy, levels)
estimated = float(np.median(np.abs(coefficients[0])) / 0.6745 / response[0])
print(f"noise sigma {sigma}, estimated from w_1 by the MAD rule: {estimated:.4f}")
for j in range(levels):
    k = 4.0 if j == 0 else 3.0
    plane = coefficients[j]
    plane[np.abs(plane) < k * estimated * response[j]] = 0
denoised = clatrous.istarlet(coefficients)


def psnr(a):
    return 10 * np.log10(1.0 / np.mean((a - image) ** 2))


print(f"PSNR noisy {psnr(noisy):.2f} dB, denoised {psnr(denoised):.2f} dB")
assert psnr(denoised) > psnr(noisy) + 5

fig, axes = plt.subplots(1, 3, figsize=(18, 6.2))
for ax, shown, title in zip(
    axes,
    (image, noisy, denoised),
    (
        "original",
        f"noisy: PSNR {psnr(noisy):.1f} dB",
        f"starlet hard threshold: PSNR {psnr(denoised):.1f} dB",
    ),
    strict=True,
):
    ax.imshow(np.clip(shown, 0, 1)[200:500, 300:700], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
fig.suptitle("Starlet denoising (a 300x400 crop), k = 4 sigma in w_1, 3 sigma in w_2 .. w_5")
fig.savefig("starlet_denoising.png", bbox_inches="tight", dpi=60)
print("saved starlet_denoising.png")
