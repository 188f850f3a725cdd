"""clatrous.dask: blockwise results equal the in-memory calls, on chunkings that cut through the halo."""

import numpy as np
import pytest
from helpers import on_oclgrind
from hypothesis import given, settings
from hypothesis import strategies as st

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

import clatrous  # noqa: E402
import clatrous.dask as cd  # noqa: E402
from clatrous import execute, params, runtime  # noqa: E402

MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]


@pytest.fixture(autouse=True)
def synchronous():
    """Blocks in the test's thread (Oclgrind's runtime is not thread-safe; forced choices are per thread)."""
    with dask.config.set(scheduler="synchronous"):
        yield


def chunking(draw, n: int) -> tuple[int, ...]:
    """Random chunks of an axis of ``n``, often shorter than a halo."""
    chunks, left = [], n
    while left:
        chunk = draw(st.integers(1, max(1, left)))
        chunks.append(chunk)
        left -= chunk
    return tuple(chunks)


@st.composite
def conv_problem(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 23)), draw(st.integers(1, 23))
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    call = dict(
        strides=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        dilation_rate=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        padding=draw(
            st.one_of(
                st.sampled_from(["valid", "same"]),
                st.integers(0, 6),
                st.tuples(
                    st.tuples(st.integers(0, 9), st.integers(0, 9)),
                    st.tuples(st.integers(0, 9), st.integers(0, 9)),
                ),
            )
        ),
        padding_mode=draw(st.sampled_from(MODES)),
        activation=draw(st.sampled_from([None, "relu", "tanh"])),
        groups=groups,
    )
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, cin // groups, cout)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if draw(st.booleans()) else None
    chunks = (chunking(draw, n), chunking(draw, h), chunking(draw, w), chunking(draw, cin))
    return x, kernel, bias, call, chunks


@settings(max_examples=15)
@given(conv_problem())
def test_conv2d_blocks_equal_the_whole(problem):
    x, kernel, bias, call, chunks = problem
    try:
        expected = clatrous.conv2d(x, kernel, bias, **call)
    except ValueError:  # a geometry the in-memory call refuses: so must the blockwise one
        with pytest.raises(ValueError):
            cd.conv2d(da.from_array(x, chunks=chunks), kernel, bias, **call)
        return
    lazy = cd.conv2d(da.from_array(x, chunks=chunks), kernel, bias, **call)
    assert isinstance(lazy, da.Array) and lazy.shape == expected.shape and lazy.dtype == expected.dtype
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_bit_for_bit_when_one_configuration_computes_every_block(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 30, 27, 4)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    call = dict(padding="same", dilation_rate=(3, 5), strides=(1, 2), padding_mode=mode, activation="relu")
    with params.forced("blocked", {"VW": 4, "NV": 2, "PX": 2}):
        whole = clatrous.conv2d(x, kernel, **call)
        blocks = cd.conv2d(da.from_array(x, chunks=(1, 7, 11, 4)), kernel, **call).compute()
    np.testing.assert_array_equal(blocks, whole)


def test_an_image_with_a_plain_kernel_and_wide_borders():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((41, 37)).astype(np.float32)
    kernel = rng.standard_normal((5, 5)).astype(np.float32)
    for mode in MODES:  # pads of 16 + 20 columns on 37: np.pad reflects and wraps more than once
        call = dict(padding=((16, 4), (20, 16)), dilation_rate=4, padding_mode=mode)
        lazy = cd.conv2d(da.from_array(image, chunks=(9, 10)), kernel, **call)
        assert lazy.ndim == 2
        np.testing.assert_allclose(
            lazy.compute(), clatrous.conv2d(image, kernel, **call), rtol=1e-5, atol=1e-5
        )


def test_conv1d_causal_and_depthwise():
    rng = np.random.default_rng(3)
    signal = rng.standard_normal((2, 300, 3)).astype(np.float32)
    kernel = rng.standard_normal((2, 3, 5)).astype(np.float32)
    call = dict(padding="causal", dilation_rate=32, activation="tanh")
    lazy = cd.conv1d(da.from_array(signal, chunks=(1, 50, 3)), kernel, **call)
    np.testing.assert_allclose(lazy.compute(), clatrous.conv1d(signal, kernel, **call), rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((1, 33, 29, 6)).astype(np.float32)
    depthwise = rng.standard_normal((3, 3, 6, 2)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    call = dict(padding="same", dilation_rate=6, padding_mode="symmetric", strides=2)
    lazy = cd.depthwise_conv2d(da.from_array(x, chunks=(1, 8, 8, 3)), depthwise, bias, **call)
    expected = clatrous.depthwise_conv2d(x, depthwise, bias, **call)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-5)


# A starlet per block, each releasing scratch images of its own shape: Oclgrind's
# address-reuse reports, as test_starlet.py's property test (pyproject.toml).
@pytest.mark.oclgrind_reuse_false_positive
@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_starlet_blocks_equal_the_whole(generation, mode):
    rng = np.random.default_rng(4)
    images = rng.standard_normal((2, 70, 53)).astype(np.float32)
    lazy = cd.starlet(da.from_array(images, chunks=(1, 20, 17)), 3, generation=generation, padding_mode=mode)
    expected = clatrous.starlet(images, 3, generation=generation, padding_mode=mode)
    assert lazy.shape == expected.shape
    np.testing.assert_array_equal(lazy.compute(), expected)  # the same kernels on every block: the same bits


@pytest.mark.oclgrind_reuse_false_positive
def test_starlet_with_a_halo_wider_than_the_image():
    rng = np.random.default_rng(5)
    image = rng.standard_normal((19, 40)).astype(np.float32)
    lazy = cd.starlet(da.from_array(image, chunks=(5, 8)), 5)  # reach 62 pixels
    np.testing.assert_array_equal(lazy.compute(), clatrous.starlet(image, 5))


def test_threads_share_one_runtime():
    if on_oclgrind():
        pytest.skip("Oclgrind's OpenCL runtime is not thread-safe (jrprice/Oclgrind#28); tested on PoCL")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 40, 40, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    lazy = cd.conv2d(da.from_array(x, chunks=(1, 13, 17, 2)), kernel, padding="same", dilation_rate=3)
    with dask.config.set(scheduler="threads", num_workers=2):
        out = lazy.compute()
    np.testing.assert_allclose(out, clatrous.conv2d(x, kernel, padding="same", dilation_rate=3), rtol=1e-5)


@pytest.mark.oclgrind_reuse_false_positive  # its expected starlet, computed here after the others
def test_a_local_cluster_of_two_worker_processes(cl_device):
    distributed = pytest.importorskip("distributed")
    spec = cd._device_spec(cl_device)
    rng = np.random.default_rng(7)
    image = rng.standard_normal((64, 48)).astype(np.float32)
    kernel = rng.standard_normal((3, 3)).astype(np.float32)
    with cd.cluster(devices=[spec, spec]) as local, distributed.Client(local) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        devices = client.run(lambda: __import__("os").environ["CLATROUS_DEVICE"])
        assert sorted(devices.values()) == [spec, spec]
        conv = cd.conv2d(da.from_array(image, chunks=(16, 20)), kernel, padding="same", dilation_rate=5)
        planes = cd.starlet(da.from_array(image, chunks=(32, 24)), 2)
        got_conv, got_planes = client.compute([conv, planes], sync=True)
    np.testing.assert_allclose(
        got_conv, clatrous.conv2d(image, kernel, padding="same", dilation_rate=5), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(got_planes, clatrous.starlet(image, 2))


@pytest.fixture
def no_opencl(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("an OpenCL call was made for a user's mistake")

    monkeypatch.setattr(execute, "get_runtime", refuse)
    monkeypatch.setattr(runtime, "get_runtime", refuse)


X = np.ones((1, 8, 8, 2), np.float32)
K = np.ones((3, 3, 2, 4), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: cd.conv2d(X, K), TypeError, ["x", "dask.array.Array", "ndarray"]),
        (lambda: cd.conv2d(da.from_array(X), K, padding="middle"), ValueError, ["padding"]),
        (lambda: cd.conv2d(da.from_array(X), K, dilation_rate=0), ValueError, ["dilation_rate"]),
        (lambda: cd.conv2d(da.from_array(X), K, padding_mode="edge"), ValueError, ["padding_mode"]),
        (lambda: cd.conv2d(da.from_array(X), K, activation="softmax"), ValueError, ["activation"]),
        (lambda: cd.conv2d(da.from_array(X), np.ones((3, 3, 5, 4))), ValueError, ["5 input channels"]),
        (lambda: cd.conv2d(da.from_array(X), K, np.ones(3)), ValueError, ["bias"]),
        (lambda: cd.conv2d(da.from_array(X.astype(complex)), K), TypeError, ["x", "complex"]),
        (lambda: cd.conv2d(da.from_array(X), K, device="pocl"), ValueError, ["device", "CLATROUS_DEVICE"]),
        (lambda: cd.conv1d(da.from_array(X[0]), K[0], groups=3), ValueError, ["groups"]),
        (lambda: cd.starlet(da.from_array(X[0, :, :, 0]), 0), ValueError, ["levels"]),
        (lambda: cd.starlet(X[0, :, :, 0], 2), TypeError, ["image", "dask.array.Array"]),
        (lambda: cd.starlet(da.from_array(X), 2), ValueError, ["image", "(H, W)"]),
        (lambda: cd.cluster(devices=[]), ValueError, ["devices"]),
    ],
)
def test_bad_input_is_refused_when_the_graph_is_built(no_opencl, call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("mode", MODES)
def test_a_same_result_keeps_the_input_chunks(mode):
    """Stride 1 and "same" (or causal): each block's outputs are its own pixels, ready for the same store."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 50, 44, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 5, 2, 3)).astype(np.float32)
    lazy_x = da.from_array(x, chunks=(1, 17, 12, 2))  # no chunk shorter than a halo (4 rows, 6 columns)
    lazy = cd.conv2d(lazy_x, kernel, padding="same", dilation_rate=(4, 3), padding_mode=mode)
    assert lazy.chunks[1:3] == lazy_x.chunks[1:3]
    expected = clatrous.conv2d(x, kernel, padding="same", dilation_rate=(4, 3), padding_mode=mode)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-5)
    signal = da.from_array(x[:, :, 0, :], chunks=(1, 25, 2))
    causal = cd.conv1d(signal, kernel[0], padding="causal", dilation_rate=5)  # a halo of 20 before
    assert causal.chunks[1] == signal.chunks[1]
