"""Problems larger than the device: split into pieces, with the same result bit for bit."""

import numpy as np
import pyopencl.array as cl_array
import pytest
from helpers import geometry_of
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import conv1d_problem, conv2d_problem

import clatrous
from clatrous import execute, params, reference, runtime, splitting
from clatrous.errors import DeviceMemoryError


@pytest.fixture
def limits():
    """Set small device limits for one test, then restore them."""
    saved = runtime.settings.max_alloc_bytes, runtime.settings.device_bytes

    def set_limits(max_alloc=None, budget=None):
        runtime.settings.max_alloc_bytes, runtime.settings.device_bytes = max_alloc, budget

    yield set_limits
    runtime.settings.max_alloc_bytes, runtime.settings.device_bytes = saved


def _pieces(x, kernel, bias, ndim=2, **kwargs):
    g = geometry_of(x, kernel, bias, ndim, **kwargs)
    return splitting.plan_pieces(g, x.dtype.itemsize, *execute.limits(runtime.get_runtime()))


def test_batch_is_split_first(limits):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12, 13, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    kwargs = dict(padding="same", dilation_rate=2, activation="relu")
    whole = clatrous.conv2d(x, kernel, bias, **kwargs)
    image = 12 * 13 * max(3, 4) * 4
    limits(max_alloc=2 * image + 100)
    pieces = _pieces(x, kernel, bias, **kwargs)
    assert [(p.n0, p.n1, p.axis) for p in pieces] == [(0, 2, 0), (2, 4, 0), (4, 5, 0)]
    np.testing.assert_array_equal(clatrous.conv2d(x, kernel, bias, **kwargs), whole)


def test_channels_first_too_large_for_one_launch_is_split_channels_last(limits):
    # Splitting cuts bands of channels-last images; a channels-first call
    # that does not fit goes through the transposed view, and equals the
    # reference (the plane kernel computes the whole in one launch).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 12, 13)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    geometry = dict(padding="same", dilation_rate=2, padding_mode="reflect")
    kwargs = dict(geometry, data_format="channels_first")
    whole = clatrous.conv2d(x, kernel, **kwargs)
    limits(max_alloc=12 * 13 * 5 * 4 + 100)
    assert len(_pieces(x, kernel, None, channels_first=True, **geometry)) > 1
    split = clatrous.conv2d(x, kernel, **kwargs)
    assert split.shape == (3, 5, 12, 13) and split.flags.c_contiguous
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split, reference.conv2d(x, kernel, **kwargs), rtol=1e-4, atol=1e-4)


@settings(max_examples=12)
@given(conv2d_problem(), st.integers(1, 6))
def test_row_bands_equal_the_whole(problem, rows):
    x, kernel, bias, kwargs = problem
    whole = clatrous.conv2d(x, kernel, bias, **kwargs)
    g = geometry_of(x, kernel, bias, 2, **kwargs)
    itemsize = x.dtype.itemsize
    # room for `rows` output rows of one image, with their halo, but not for a whole image
    halo = (rows - 1) * g.sh + g.dh * (g.kh - 1) + 1
    limit = itemsize * max(
        min(halo, g.h) * g.w * g.cin, rows * g.wo * g.cout, g.kh * g.kw * g.cin * g.cout + g.cout
    )
    runtime.settings.max_alloc_bytes = limit
    try:
        pieces = _pieces(x, kernel, bias, **kwargs)
        split = clatrous.conv2d(x, kernel, bias, **kwargs)
    finally:
        runtime.settings.max_alloc_bytes = None
    if max(g.h * g.w * g.cin, g.ho * g.wo * g.cout) * itemsize > limit:  # one image does not fit
        assert all(p.axis == 1 and p.n1 - p.n0 == 1 for p in pieces)
    np.testing.assert_array_equal(split, whole)


@settings(max_examples=12)
@given(conv1d_problem(), st.integers(1, 5))
def test_conv1d_is_split_along_the_signal(problem, columns):
    x, kernel, bias, kwargs = problem
    whole = clatrous.conv1d(x, kernel, bias, **kwargs)
    g = geometry_of(x, kernel, bias, 1, **kwargs)
    halo = (columns - 1) * g.sw + g.dw * (g.kw - 1) + 1
    need = max(min(halo, g.w) * g.cin, columns * g.cout, g.kw * g.cin * g.cout + g.cout)
    runtime.settings.max_alloc_bytes = need * x.dtype.itemsize
    try:
        split = clatrous.conv1d(x, kernel, bias, **kwargs)
    finally:
        runtime.settings.max_alloc_bytes = None
    np.testing.assert_array_equal(split, whole)


def test_a_single_output_row_at_a_stride_is_split_by_rows(limits):
    # One output row (stride 2 over 2 input rows) reads only one input row, so
    # a band of rows fits where the image does not.  Found by hypothesis: the
    # planner used to go to columns whenever there was one output row, and
    # failed when there was one output column too.
    rng = np.random.default_rng(5)
    for x_shape, k_shape, max_alloc in [((1, 2, 1, 2), (1, 1, 2, 1), 12), ((1, 2, 2, 1), (1, 1, 1, 1), 8)]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        kernel = rng.standard_normal(k_shape).astype(np.float32)
        whole = clatrous.conv2d(x, kernel, strides=2)
        limits(max_alloc=max_alloc)
        assert [(p.axis, p.o0, p.o1) for p in _pieces(x, kernel, None, strides=2)] == [(1, 0, 1)]
        np.testing.assert_array_equal(clatrous.conv2d(x, kernel, strides=2), whole)
        limits()


def test_a_layer_winograd_would_run_runs_the_direct_default_in_bands(limits):
    # Winograd's tiles are laid from a piece's first output row, so a band
    # would sum its rows otherwise than the whole image does: a problem
    # split into bands runs the defaults without it, every band alike; a
    # split by images keeps it (its tiles never cross an image).
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 40, 40, 64)).astype(np.float32)  # an image is 2.7 times the kernel
    kernel = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    kwargs = dict(padding="same", dilation_rate=2)
    info, g = runtime.get_runtime().info, geometry_of(x, kernel, **kwargs)
    if params.conv2d_defaults(info, g, np.float32)[0] != "winograd":
        pytest.skip("the defaults do not pick Winograd on this device")
    whole = clatrous.conv2d(x, kernel, **kwargs)
    with params.forced(*params.conv2d_defaults(info, g, np.float32, winograd=False)):
        direct = clatrous.conv2d(x, kernel, **kwargs)
    limits(max_alloc=x[0].nbytes + 100)  # one image a piece
    assert [p.axis for p in _pieces(x, kernel, None, **kwargs)] == [0, 0]
    np.testing.assert_array_equal(clatrous.conv2d(x, kernel, **kwargs), whole)
    limits(max_alloc=x[0].nbytes // 2)  # bands of rows
    assert all(p.axis == 1 for p in _pieces(x, kernel, None, **kwargs))
    np.testing.assert_array_equal(clatrous.conv2d(x, kernel, **kwargs), direct)


def test_what_cannot_fit_is_a_memory_error_naming_sizes(limits):
    x = np.ones((1, 16, 16, 8), np.float32)
    kernel = np.ones((3, 3, 8, 8), np.float32)
    limits(max_alloc=1000)  # the kernel alone takes 2336 bytes
    with pytest.raises(DeviceMemoryError, match=r"kernel alone.*\(3, 3, 8, 8\).*1000 bytes") as info:
        clatrous.conv2d(x, kernel)
    assert isinstance(info.value, MemoryError)
    # The kernel fits, but neither the 3 input rows of one output row nor the
    # 3 input columns of one output column.
    limits(max_alloc=2400)
    big = np.ones((1, 200, 200, 8), np.float32)
    with pytest.raises(DeviceMemoryError, match="not even one output row or column"):
        clatrous.conv2d(big, kernel, padding="same")
    # Where rows do not fit but columns do, bands of columns it is.
    wide = np.random.default_rng(2).standard_normal((1, 16, 200, 8)).astype(np.float32)
    limits()
    whole = clatrous.conv2d(wide, kernel, padding="same")
    limits(max_alloc=2400)
    assert {p.axis for p in _pieces(wide, kernel, None, padding="same")} == {2}
    np.testing.assert_array_equal(clatrous.conv2d(wide, kernel, padding="same"), whole)
    limits()
    assert clatrous.conv2d(x, kernel).shape == (1, 14, 14, 8)  # nothing left behind


def test_device_resident_input_must_fit_one_launch(limits):
    queue = runtime.get_runtime().queue
    x = cl_array.to_device(queue, np.ones((2, 16, 16, 4), np.float32))
    limits(max_alloc=4000)
    with pytest.raises(DeviceMemoryError, match="already on the device"):
        clatrous.conv2d(x, np.ones((3, 3, 4, 4), np.float32))


def test_the_budget_counts_every_buffer(limits):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10, 10, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    whole = clatrous.conv2d(x, kernel, padding="same")
    limits(budget=2 * 10 * 10 * 2 * 4 + 200)  # one image in and out, and the kernel
    assert len(_pieces(x, kernel, None, padding="same")) == 3
    np.testing.assert_array_equal(clatrous.conv2d(x, kernel, padding="same"), whole)
