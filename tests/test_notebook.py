"""Every cell of the lecture notebook, reproduced with clatrous, with its numbers.

The notebook (4.9 - Atrous convolutions) uses Keras ``Conv2D``; here the same
cells run through ``clatrous.Conv2D`` / ``clatrous.conv2d`` on the OpenCL
device.  Its 32x32 picture has no license, so the image cells use an image
that scikit-image ships, prepared the way the notebook prepares its own.
"""

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_matches_reference, skip_without_fp64

import clatrous
from clatrous import reference

SIMG = np.r_[[[4, 5, 8, 7], [1, 8, 8, 8], [3, 6, 6, 4], [6, 5, 7, 8]]].astype(np.float32)
KERNEL = np.r_[[[10, -8], [15, -2]]]  # int64, as in the notebook
REGULAR = np.array([[-1, 90, 128], [-21, 94, 98], [62, 73, 117]], np.float32)
DILATED = np.array([[9, 76], [22, 75]], np.float32)
FILTERS = np.r_[
    [-1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0],
].reshape(3, 3, 1, 2)


def test_dilate_inserts_zeros_between_taps():
    expected = np.array([[10, 0, -8], [0, 0, 0], [15, 0, -2]])
    out = clatrous.dilate(KERNEL, 2)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == KERNEL.dtype


def test_receptive_field_sums():
    assert (SIMG[:2, :2] * KERNEL).sum() == -1.0
    assert (SIMG[:3, :3] * clatrous.dilate(KERNEL, 2)).sum() == 9.0


def test_regular_convolution_of_the_matrix():
    out = clatrous.conv2d(SIMG, KERNEL)
    np.testing.assert_array_equal(out, REGULAR)
    assert out.dtype == np.float32


def test_dilated_convolution_of_the_matrix():
    np.testing.assert_array_equal(clatrous.conv2d(SIMG, KERNEL, dilation_rate=2), DILATED)


def test_zero_inserted_filter_equals_dilation_rate():
    ddkernel = clatrous.dilate(KERNEL, 2)
    np.testing.assert_array_equal(clatrous.conv2d(SIMG, ddkernel), DILATED)


@pytest.mark.parametrize("kernel, expected", [(KERNEL, REGULAR), (clatrous.dilate(KERNEL, 2), DILATED)])
def test_keras_cells_with_the_layer(kernel, expected):
    # The notebook's own calls, transposes included.
    c1 = clatrous.Conv2D(filters=1, kernel_size=kernel.shape, padding="VALID", activation="linear")
    c1.build(input_shape=[None, *SIMG[:, :, None].shape])
    c1.set_weights([kernel.T[:, :, None, None], np.r_[0]])
    out = c1(SIMG.T[None, :, :, None]).T[0, :, :, 0]
    np.testing.assert_array_equal(out, expected)


def notebook_image(image: np.ndarray) -> np.ndarray:
    """The notebook's preparation: grayscale, 32x32, scaled to [0, 1], shape (1, 32, 32, 1)."""
    from skimage.color import rgb2gray
    from skimage.transform import resize

    img = image.astype(np.float64)
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    if img.shape != (32, 32):
        img = resize(img, (32, 32), anti_aliasing=True)
    img = (img - np.min(img)) / (np.max(img) - np.min(img))
    return img.reshape(1, *img.shape, 1)


def image_cells(img: np.ndarray) -> None:
    """The three image cells of the notebook's "Intuition" section, checked against the reference."""
    skip_without_fp64(np.float64)
    from skimage.transform import resize

    for rate, shape in ((1, (1, 30, 30, 2)), (2, (1, 28, 28, 2))):
        c = clatrous.Conv2D(
            filters=FILTERS.shape[-1], kernel_size=FILTERS.shape[:2], dilation_rate=rate,
            activation="sigmoid", padding="VALID", dtype=np.float64,
        )  # fmt: skip
        c.build(input_shape=(1, 7, 7, FILTERS.shape[2]))  # any shape would do here
        c.set_weights([FILTERS, np.zeros(2)])
        cimg = c(img)
        assert cimg.shape == shape and cimg.dtype == np.float64
        assert_matches_reference(cimg, img, FILTERS, np.zeros(2), dilation_rate=rate, activation="sigmoid")
        assert 0 < cimg.min() and cimg.max() < 1  # sigmoid outputs

    n = 30
    simg = resize(img[0, :, :, 0], (n, n)).reshape(1, n, n, 1)
    assert simg.shape == (1, 30, 30, 1)
    c = clatrous.Conv2D(FILTERS.shape[-1], FILTERS.shape[:2], activation="sigmoid", dtype=np.float64)
    c.build(input_shape=(1, 7, 7, 1))
    c.set_weights([FILTERS, np.zeros(2)])
    csimg = c(simg)
    assert csimg.shape == (1, 28, 28, 2)
    assert_matches_reference(csimg, simg, FILTERS, np.zeros(2), activation="sigmoid")


def test_image_cells_on_a_scikit_image_picture():
    from skimage import data

    image_cells(notebook_image(data.camera()))


def test_image_cells_on_the_notebook_picture_when_present():
    # The notebook's own picture is not in this repository (it has no license);
    # the workplace keeps a copy beside it for cross-checks.
    path = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "notebook" / "sample_img.png"
    if not path.is_file():
        pytest.skip(f"the notebook's picture is not at {path} (only a cross-check)")
    from skimage import io

    image_cells(notebook_image(io.imread(path)))


def test_reference_prints_the_notebook_numbers():
    np.testing.assert_array_equal(reference.conv2d(SIMG, KERNEL), REGULAR)
    np.testing.assert_array_equal(reference.conv2d(SIMG, KERNEL, dilation_rate=2), DILATED)
