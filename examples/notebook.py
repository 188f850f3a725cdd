"""The lecture notebook "4.9 - Atrous convolutions", cell by cell, with clatrous.

Prints the notebook's numbers and saves its figures as PNG files in the
current folder.  The notebook's 32x32 picture of a car has no license, so
this script uses scikit-image's camera man, prepared the same way (grayscale,
32x32, scaled to [0, 1]).

Runs on whatever OpenCL device clatrous picks; set CLATROUS_DEVICE (a device
or platform name substring, or "platform:device" indices) to choose one.

    python examples/notebook.py
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from skimage.transform import resize

import clatrous
from clatrous import runtime

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

# --- the 4x4 matrix and the 2x2 filter --------------------------------------
simg = np.r_[[[4, 5, 8, 7], [1, 8, 8, 8], [3, 6, 6, 4], [6, 5, 7, 8]]].astype(np.float32)
kernel = np.r_[[[10, -8], [15, -2]]]

ddkernel = clatrous.dilate(kernel, 2)
print("filter\n", kernel)
print("dilated filter\n", ddkernel)

print("regular convolution")
c1 = clatrous.Conv2D(filters=1, kernel_size=kernel.shape, padding="VALID", activation="linear")
c1.build(input_shape=[None, *simg[:, :, None].shape])
c1.set_weights([kernel.T[:, :, None, None], np.r_[0]])
print(repr(c1(simg.T[None, :, :, None]).T[0, :, :, 0]))

print("dilated convolution")
c1 = clatrous.Conv2D(filters=1, kernel_size=ddkernel.shape, padding="VALID", activation="linear")
c1.build(input_shape=[None, *simg[:, :, None].shape])
c1.set_weights([ddkernel.T[:, :, None, None], np.r_[0]])
print(repr(c1(simg.T[None, :, :, None]).T[0, :, :, 0]))

print("(simg[:2,:2]*kernel).sum() =", (simg[:2, :2] * kernel).sum())
print("(simg[:3,:3]*ddkernel).sum() =", (simg[:3, :3] * ddkernel).sum())

print("the same result with dilation_rate=2 and the original filter")
print(repr(clatrous.conv2d(simg, kernel, dilation_rate=2)))
print(repr(simg))

# --- intuition: a small image, two 3x3 filters -------------------------------
img = resize(data.camera().astype(np.float64), (32, 32), anti_aliasing=True)
img = (img - np.min(img)) / (np.max(img) - np.min(img))
img = img.reshape(1, *img.shape, 1)
f = np.r_[
    [-1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0],
].reshape(3, 3, 1, 2)


def panel(position, picture, title=None, cmap=plt.cm.Greys_r):
    """One subplot, as the notebook draws them: no axes, optional title."""
    plt.subplot(position)
    plt.imshow(picture, cmap=cmap)
    plt.axis("off")
    if title:
        plt.title(title)


plt.figure(figsize=(5, 2))
panel(131, img[0, :, :, 0])
panel(132, f[:, :, 0, 0], cmap=None)
panel(133, f[:, :, 0, 1], cmap=None)
plt.savefig("notebook_filters.png", bbox_inches="tight")
plt.close()

dtype = np.float64 if info.fp64 else np.float32  # the notebook computes in float64
if not info.fp64:
    print(f"note: {info.name} has no float64; computing in float32")


def three_panels(original, result, name):
    plt.figure(figsize=(10, 6))
    panel(131, original[0, :, :, 0], "original")
    panel(132, result[0, :, :, 0], "conv filter 0")
    panel(133, result[0, :, :, 1], "conv filter 1")
    plt.savefig(name, bbox_inches="tight")
    plt.close()


results = {}
for rate in (1, 2):
    c = clatrous.Conv2D(
        filters=f.shape[-1], kernel_size=f.shape[:2], dilation_rate=rate,
        activation="sigmoid", padding="VALID", dtype=dtype,
    )  # fmt: skip
    c.build(input_shape=(1, 7, 7, f.shape[2]))  # any shape would do here, just initializing weights
    c.set_weights([f, np.zeros(2)])
    cimg = c(img)
    print(f"dilation_rate={rate}:", cimg.shape)
    three_panels(img, cimg, f"notebook_rate{rate}.png")
    results[rate] = cimg

n = 30
simg = resize(img[0, :, :, 0], (n, n)).reshape(1, n, n, 1)
print("resized:", simg.shape)
c = clatrous.Conv2D(f.shape[-1], f.shape[:2], activation="sigmoid", padding="VALID", dtype=dtype)
c.build(input_shape=(1, 7, 7, f.shape[2]))
c.set_weights([f, np.zeros(2)])
csimg = c(simg)
print("resized, then dilation_rate=1:", csimg.shape)
three_panels(simg, csimg, "notebook_resized.png")

plt.figure(figsize=(10, 4))
comparison = [
    ("original", img),
    ("rate 1", results[1]),
    ("rate 2", results[2]),
    ("resize to 30, rate 1", csimg),
]
for i, (title, picture) in enumerate(comparison):
    panel(141 + i, picture[0, :, :, 0], title)
plt.savefig("notebook_comparison.png", bbox_inches="tight")
plt.close()

check = clatrous.reference.conv2d(img, f, np.zeros(2), dilation_rate=2, activation="sigmoid")
print("largest difference from clatrous.reference (rate 2):", float(np.abs(results[2] - check).max()))
print("saved notebook_filters.png, notebook_rate1.png, notebook_rate2.png, notebook_resized.png")
print("and notebook_comparison.png")
