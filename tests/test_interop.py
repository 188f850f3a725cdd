"""What a user coming from Keras or PyTorch passes in (issue 15).

Each test failed before its change.
"""

import numpy as np
import pytest
import scipy.special
from helpers import assert_matches_reference, skip_without_fp64

import clatrous
from clatrous import execute, reference


@pytest.fixture
def no_opencl(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("an OpenCL call was made for a user's mistake")

    monkeypatch.setattr(execute, "get_runtime", refuse)


class GradTensor:
    """What matters of a ``torch.Tensor`` with ``requires_grad=True``: NumPy cannot read it."""

    requires_grad = True

    def __init__(self, value):
        self.value = np.asarray(value)

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy()")

    def detach(self):
        return self.value


X = np.arange(2 * 6 * 6 * 2, dtype=np.float32).reshape(2, 6, 6, 2) / 7
K = np.linspace(-1, 1, 3 * 3 * 2 * 3).reshape(3, 3, 2, 3)


@pytest.mark.parametrize("name", ["x", "kernel", "bias"])
def test_a_tensor_that_requires_grad_is_a_type_error_naming_it(name, no_opencl):
    args = dict(x=X, kernel=K, bias=np.ones(3))
    args[name] = GradTensor(args[name])
    with pytest.raises(TypeError, match=rf"^{name} is a GradTensor that requires grad.*\.detach\(\)"):
        clatrous.conv2d(**args)


def test_a_layer_refuses_grad_tensors_in_weights_and_input(no_opencl):
    layer = clatrous.Conv2D(3, 3)
    with pytest.raises(TypeError, match=r"kernel weights .*detach"):
        layer.set_weights([GradTensor(K), np.zeros(3)])
    layer.set_weights([K, np.zeros(3)])
    with pytest.raises(TypeError, match=r"^x .*detach"):
        layer(GradTensor(X))


def test_real_torch_tensors_that_require_grad():
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    with pytest.raises(TypeError, match="detach"):
        clatrous.conv2d(x, K)
    out = clatrous.conv2d(x.detach(), K)
    assert_matches_reference(out, X, K)
    weight = torch.nn.Parameter(torch.tensor(K))
    with pytest.raises(TypeError, match="kernel weights"):
        clatrous.Conv2D(3, 3).set_weights([weight, np.zeros(3)])


def test_python_lists_and_floats_compute_in_float32():
    x = X[0, :, :, 0].tolist()
    kernel = [[0.5, -1.0], [2.0, 0.25]]
    out = clatrous.conv2d(x, kernel, dilation_rate=2)
    assert out.dtype == np.float32
    expected = clatrous.reference.conv2d(np.array(x), np.array(kernel), dilation_rate=2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # float64 NumPy arrays keep float64, as the dtype table says.
    assert clatrous.conv2d(np.array(x), kernel, dilation_rate=2).dtype == np.float64
    assert clatrous.conv1d([1.0, 2.0, 3.0, 4.0], [1.0, -1.0]).dtype == np.float32


def test_a_masked_array_is_refused_with_filled_as_the_advice(no_opencl):
    masked = np.ma.masked_greater(X, 1.0)
    with pytest.raises(TypeError, match=r"x is a masked array.*x\.filled"):
        clatrous.conv2d(masked, K)
    with pytest.raises(TypeError, match="filled"):
        clatrous.Conv2D(3, 3).set_weights([np.ma.masked_array(K), np.zeros(3)])


KERAS_ACTIVATIONS = ["gelu", "silu", "swish", "elu", "softplus", "leaky_relu"]


@pytest.mark.parametrize("activation", KERAS_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keras_activations_in_the_kernel_over_their_whole_range(activation, dtype):
    # Issue 15: the activations Keras users reach for, fused like the others.
    skip_without_fp64(dtype)
    values = np.concatenate([np.linspace(-30, 30, 241), [-1e-3, 1e-3, 0.0]]).astype(dtype)
    x = values.reshape(1, 1, -1, 1)
    out = clatrous.conv2d(x, np.ones((1, 1, 1, 1)), activation=activation)[0, 0, :, 0]
    v = values.astype(np.float64)
    independent = {
        "gelu": v * 0.5 * (1 + scipy.special.erf(v / np.sqrt(2))),
        "silu": v / (1 + np.exp(-v)),
        "elu": np.where(v > 0, v, np.expm1(v)),
        "softplus": np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0),
        "leaky_relu": np.where(v < 0, 0.2 * v, v),
    }[clatrous.arguments.normalize_activation(activation)]
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, independent, rtol=tol, atol=tol)


def test_keras_activations_agree_with_torch():
    torch = pytest.importorskip("torch")
    x = np.linspace(-8, 8, 97).reshape(1, 1, -1, 1)
    functions = {
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "elu": torch.nn.functional.elu,
        "softplus": torch.nn.functional.softplus,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.2),
    }
    for name, function in functions.items():
        out = clatrous.conv2d(x, np.ones((1, 1, 1, 1)), activation=name)
        np.testing.assert_allclose(out, function(torch.tensor(x)).numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- out=


@pytest.mark.oclgrind_reuse_false_positive  # its device chain, after the host calls' buffers were released
def test_out_is_written_in_place_for_host_and_device_calls():
    import pyopencl.array as cl_array

    from clatrous import runtime

    rng = np.random.default_rng(6)
    for shape in [(1, 9, 10, 2), (2, 70, 80, 2)]:  # small (copied back) and large (written in place)
        x = rng.standard_normal(shape).astype(np.float32)
        out = np.full((*shape[:3], 3), np.nan, np.float32)
        got = clatrous.conv2d(x, K, padding="same", dilation_rate=2, out=out)
        assert got is out
        assert_matches_reference(out, x, K, padding="same", dilation_rate=2)
    image = rng.standard_normal((12, 11)).astype(np.float32)
    plane = np.empty((10, 9), np.float32)
    assert clatrous.conv2d(image, np.ones((3, 3)), out=plane) is plane
    np.testing.assert_allclose(plane, clatrous.reference.conv2d(image, np.ones((3, 3))), rtol=1e-5, atol=1e-5)
    first = np.empty((2, 3, 4, 4), np.float32)  # channels-first: through a transposed copy
    clatrous.conv2d(np.moveaxis(X, -1, 1), K, data_format="channels_first", out=first)
    np.testing.assert_allclose(
        first, np.moveaxis(clatrous.reference.conv2d(X, K), -1, 1), rtol=1e-5, atol=1e-5
    )
    queue = runtime.get_runtime().queue
    x_dev = cl_array.to_device(queue, X)
    out_dev = cl_array.empty(queue, (2, 4, 4, 3), np.float32)
    got = clatrous.conv2d(x_dev, K, dilation_rate=1, out=out_dev)
    assert got is out_dev and out_dev.events
    assert_matches_reference(out_dev.get(), X, K)
    # Chained on device: the second call waits for the first's event on out.
    again = clatrous.conv2d(
        out_dev, np.ones((1, 1, 3, 2)), out=cl_array.empty(queue, (2, 4, 4, 2), np.float32)
    )
    np.testing.assert_allclose(again.get(), out_dev.get().sum(-1, keepdims=True).repeat(2, -1), rtol=1e-5)


@pytest.mark.parametrize(
    "out, error, words",
    [
        (np.empty((2, 4, 4, 3), np.float64), TypeError, ["out", "float32"]),
        (np.empty((2, 4, 4, 4), np.float32), ValueError, ["out", "(2, 4, 4, 3)"]),
        (np.empty((2, 4, 4, 6), np.float32)[..., ::2], ValueError, ["out", "contiguous"]),
        ([[1.0]], TypeError, ["out", "list"]),
    ],
)
def test_a_bad_out_is_refused_before_opencl(out, error, words, no_opencl):
    with pytest.raises(error) as info:
        clatrous.conv2d(X, K, out=out)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_out_sharing_memory_with_the_input_is_refused(no_opencl):
    x = np.zeros((1, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        clatrous.conv2d(x, np.ones((1, 1, 3, 3)), out=x)
    readonly = np.empty((2, 4, 4, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        clatrous.conv2d(X, K, out=readonly)


def test_an_aligned_out_is_what_a_cpu_device_writes_in_place():
    from clatrous import staging

    x = np.random.default_rng(9).standard_normal((1, 200, 180, 2)).astype(np.float32)
    out = clatrous.aligned_empty((1, 196, 176, 3), np.float32)
    assert out.ctypes.data % staging.ALIGN == 0 and out.flags.c_contiguous and out.flags.writeable
    assert clatrous.conv2d(x, K, dilation_rate=2, out=out) is out
    assert_matches_reference(out, x, K, dilation_rate=2)


# ---------------------------------------------------------------- allocator=


def test_device_results_come_from_the_callers_pool_and_reuse_dropped_buffers():
    import gc

    import pyopencl.array as cl_array
    import pyopencl.tools as cl_tools

    from clatrous import runtime

    queue = runtime.get_runtime().queue
    pool = cl_tools.MemoryPool(cl_tools.ImmediateAllocator(queue))
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 20, 24, 2)).astype(np.float32)
    x_dev = cl_array.to_device(queue, x)
    calls = [
        (clatrous.conv2d, reference.conv2d, K, {"padding": "same", "dilation_rate": 2}),
        (clatrous.depthwise_conv2d, reference.depthwise_conv2d, np.ones((3, 3, 2, 2)), {"dilation_rate": 3}),
        (clatrous.conv2d, reference.conv2d, K[:, :, :1, :2], {"groups": 2, "padding": "same"}),
    ]
    for fn, ref, kernel, kwargs in calls:
        first = fn(x_dev, kernel, allocator=pool, **kwargs)
        assert isinstance(first.base_data, cl_tools.PooledBuffer) and first.queue is queue
        np.testing.assert_allclose(first.get(), ref(x, kernel, **kwargs), rtol=1e-5, atol=1e-5)
        held = pool.held_blocks
        del first
        gc.collect()
        assert pool.held_blocks == held + 1  # the dropped result's buffer, back in the pool
        # The next result takes it, and the kernel writes all of it (poisoned first).
        again = fn(x_dev, kernel, allocator=pool, **kwargs)
        assert pool.held_blocks == held
        np.testing.assert_allclose(again.get(), ref(x, kernel, **kwargs), rtol=1e-5, atol=1e-5)
        del again
        gc.collect()
    nchw = cl_array.to_device(queue, np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    got = clatrous.conv2d(nchw, K, data_format="channels_first", allocator=pool)
    assert isinstance(got.base_data, cl_tools.PooledBuffer)
    expected = np.moveaxis(reference.conv2d(x, K), -1, 1)
    np.testing.assert_allclose(got.get(), expected, rtol=1e-5, atol=1e-5)
    signal = rng.standard_normal((2, 30, 2)).astype(np.float32)
    got = clatrous.conv1d(
        cl_array.to_device(queue, signal), K[0], padding="causal", dilation_rate=4, allocator=pool
    )
    assert isinstance(got.base_data, cl_tools.PooledBuffer)
    expected = reference.conv1d(signal, K[0], padding="causal", dilation_rate=4)
    np.testing.assert_allclose(got.get(), expected, rtol=1e-5, atol=1e-5)


def test_a_bad_allocator_is_refused_before_opencl(no_opencl):
    with pytest.raises(TypeError, match="allocator must be callable"):
        clatrous.conv2d(X, K, allocator=3)
    with pytest.raises(ValueError, match="allocator is for device results"):
        clatrous.conv2d(X, K, allocator=lambda nbytes: None)
    with pytest.raises(ValueError, match="allocator is for device results"):
        clatrous.depthwise_conv2d(X, np.ones((3, 3, 2, 1)), allocator=lambda nbytes: None)
