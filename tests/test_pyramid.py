"""clatrous.aspp: the fused branches against the reference, every configuration, bad input."""

from dataclasses import replace

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from helpers import on_oclgrind, skip_without_fp64
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ACTIVATIONS, DTYPES

import clatrous
from clatrous import execute, pyramid, reference, runtime
from clatrous.arguments import prepare_branches


def bound(x, kernels, rates, dtype):
    """The error bound of each branch (reference.error_bound), side by side."""
    return np.concatenate(
        [
            reference.error_bound(x, k, dtype, padding="same", dilation_rate=r)
            for k, r in zip(kernels, rates, strict=True)
        ],
        axis=-1,
    )


def assert_matches(out, x, kernels, rates, biases=None, activation=None):
    expected = reference.aspp(x, kernels, rates, biases, activation=activation)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert not np.isnan(out).any(), "an output element was never written"
    error = np.abs(out.astype(np.float64) - expected)
    limit = bound(x, kernels, rates, out.dtype)
    assert np.all(error <= limit), f"max error {error.max():.3g} past the bound"


@st.composite
def branches_problem(draw):
    """(x, kernels, rates, biases, activation): 1 to 4 branches of random geometry."""
    dtype = draw(DTYPES)
    n = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 14))
    cin = draw(st.integers(1, 9))
    count = draw(st.integers(1, 4))
    kernels, rates, biases = [], [], []
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for _ in range(count):
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        cout = draw(st.sampled_from([1, 2, 3, 4, 8, 12, 16, 32]))
        rate = draw(st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5))))
        kernels.append(rng.standard_normal((kh, kw, cin, cout)).astype(dtype))
        rates.append(rate)
        biases.append(rng.standard_normal(cout).astype(dtype) if draw(st.booleans()) else None)
    x = rng.standard_normal((n, h, w, cin)).astype(dtype)
    return x, kernels, rates, biases, draw(ACTIVATIONS)


@settings(max_examples=12)  # each example builds its own programs: seconds apiece on a cold cache
@given(branches_problem())
def test_random_branches_match_the_reference(problem):
    x, kernels, rates, biases, activation = problem
    skip_without_fp64(x.dtype)
    out = clatrous.aspp(x, kernels, rates, biases, activation=activation)
    assert_matches(out, x, kernels, rates, biases, activation)


def test_equals_the_concatenated_convolutions():
    """The contract's identity, with clatrous's own conv2d (to rounding: other kernels sum in other order)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 13, 11, 8)).astype(np.float32)
    kernels = [rng.standard_normal(s).astype(np.float32) for s in [(1, 1, 8, 8), (3, 3, 8, 16), (3, 2, 8, 8)]]
    biases = [rng.standard_normal(8).astype(np.float32), None, rng.standard_normal(8).astype(np.float32)]
    rates = [1, 2, (3, 4)]
    out = clatrous.aspp(x, kernels, rates, biases, activation="relu")
    parts = [
        clatrous.conv2d(x, k, b, padding="same", dilation_rate=r, activation="relu")
        for k, b, r in zip(kernels, biases, rates, strict=True)
    ]
    np.testing.assert_allclose(out, np.concatenate(parts, axis=-1), rtol=1e-5, atol=1e-5)


def configurations(couts, cin):
    """A walk over the kernel's space: one tile and channel tiles, blocks and rows, vectors, FUSE.

    Each (vector width, tile) pair runs two of the four block shapes, in
    turn, so every shape meets every width and tile across the walk, each
    with both ways of sharing launches; 16 configurations in all (each a
    program or three to build: the walk is most of this file's time on a
    cold compiler cache).
    """
    shapes = ((1, 1, 1, 1), (2, 3, 2, 2), (4, 2, 3, 1), (6, 1, 4, 4))
    vws = [v for v in (1, 2, 4, 8, 16) if all(c % v == 0 for c in couts)]
    out = []
    for i, vw in enumerate(vws):
        for j, ct in enumerate((0, 16) if cin > 16 else (0,)):
            for k in (i + j, i + j + 2):
                px, nb, rw, nv = shapes[k % 4]
                fuse = (k - i - j) // 2  # the pair takes both ways of sharing launches
                out.append({"FUSE": fuse, "VW": vw, "NV": nv, "PX": px, "CT": ct, "NB": nb, "RW": rw})
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_configuration_matches_the_reference(dtype):
    skip_without_fp64(dtype)
    rng = np.random.default_rng(2)
    cin = 20 if not on_oclgrind() else 18
    x = rng.standard_normal((2, 7, 9, cin)).astype(dtype)
    couts = (16, 8, 32)
    kernels = [
        rng.standard_normal((k, k, cin, c)).astype(dtype) for k, c in zip((1, 3, 3), couts, strict=True)
    ]
    biases = [None, rng.standard_normal(8).astype(dtype), rng.standard_normal(32).astype(dtype)]
    rates = [1, 2, 4]
    call = prepare_branches(x, kernels, rates, biases, "tanh")
    rt = runtime.get_runtime()
    walk = configurations(couts, cin)
    if dtype == np.float64:
        walk = walk[1::2]  # the other half of float32's shapes: one per (width, tile)
    if on_oclgrind():
        walk = walk[::4]
    for config in walk:
        launches = pyramid.branch_launches(rt, call, config=config)
        assert len(launches) == (1 if config["FUSE"] else 3)
        y = cl_array.empty(rt.queue, (2, 7, 9, sum(couts)), dtype)
        y.fill(np.nan)
        events, _ = pyramid.enqueue_branches(rt, launches, y.base_data, y.events)
        cl.wait_for_events(events)
        try:
            assert_matches(y.get(), x, kernels, rates, biases, "tanh")
        except AssertionError as exc:
            raise AssertionError(f"configuration {config}: {exc}") from None


def test_slices_and_per_image_bias():
    """Into wider pixels from a given channel on, with one bias per image (what ASPP's projection uses)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 4, 8)).astype(np.float32)
    per_image = rng.standard_normal((3, 8)).astype(np.float32)
    rt = runtime.get_runtime()
    call = prepare_branches(x, [kernel], [1], [per_image[0]], None)
    bias = cl_array.to_device(rt.queue, per_image)
    call = replace(call, branches=(replace(call.branches[0], bias=bias),))  # the per-image biases
    launches = pyramid.branch_launches(rt, call, channels=24, offsets=[8], bias_stride=8)
    y = cl_array.to_device(rt.queue, np.full((3, 6, 5, 24), -7.0, np.float32))
    events, _ = pyramid.enqueue_branches(rt, launches, y.base_data, y.events)
    cl.wait_for_events(events)
    out = y.get()
    expected = np.einsum("nhwc,cd->nhwd", x, kernel[0, 0]) + per_image[:, None, None, :]
    np.testing.assert_allclose(out[..., 8:16], expected, rtol=1e-5, atol=1e-5)
    assert np.all(out[..., :8] == -7) and np.all(out[..., 16:] == -7), (
        "a channel outside the slice was written"
    )


def test_device_arrays_in_and_out():
    rng = np.random.default_rng(4)
    rt = runtime.get_runtime()
    x = rng.standard_normal((1, 9, 8, 3)).astype(np.float32)
    kernels = [rng.standard_normal((3, 3, 3, 4)).astype(np.float32) for _ in range(2)]
    x_dev = cl_array.to_device(rt.queue, x)
    k_dev = cl_array.to_device(rt.queue, kernels[1])
    out = clatrous.aspp(x_dev, [kernels[0], k_dev], [2, 3])
    assert isinstance(out, cl_array.Array) and out.queue is x_dev.queue
    assert_matches(out.get(), x, kernels, [2, 3])
    # A view of a larger buffer is read where it starts.
    big = cl_array.to_device(rt.queue, np.concatenate([x, x * 2]))
    view = big[1:]
    assert_matches(clatrous.aspp(view, kernels, [2, 3]).get(), x * 2, kernels, [2, 3])


def test_the_callers_arrays_are_untouched():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 40, 40, 16)).astype(np.float32)  # large enough to be read in place
    kernels = [rng.standard_normal((3, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    biases = [rng.standard_normal(16).astype(np.float32), None]
    copies = [x.copy(), *(k.copy() for k in kernels), biases[0].copy()]
    clatrous.aspp(x, kernels, (6, 12), biases, activation="relu")
    for before, after in zip(copies, [x, *kernels, biases[0]], strict=True):
        np.testing.assert_array_equal(before, after)


def test_float64_and_integers():
    rng = np.random.default_rng(6)
    x = rng.integers(-3, 4, (1, 6, 6, 2))
    k = rng.integers(-2, 3, (3, 3, 2, 2))
    out = clatrous.aspp(x, [k], [2])
    assert out.dtype == np.float32
    assert_matches(out, x, [k], [2])
    skip_without_fp64(np.float64)
    xf = x.astype(np.float64)
    assert clatrous.aspp(xf, [k, k], [1, 2]).dtype == np.float64


def test_empty_batch():
    out = clatrous.aspp(np.ones((0, 4, 4, 2), np.float32), [np.ones((3, 3, 2, 4))], [2])
    assert out.shape == (0, 4, 4, 4)


@pytest.fixture
def no_opencl(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("an OpenCL call was made for a user's mistake")

    monkeypatch.setattr(execute, "get_runtime", refuse)


X = np.ones((1, 8, 8, 2), np.float32)
K = np.ones((3, 3, 2, 4), np.float32)

BAD = [
    (dict(kernels=np.ones((2, 3, 3, 2, 4))), TypeError, ["kernels", "list or tuple"]),
    (dict(kernels=K), TypeError, ["kernels", "list or tuple"]),
    (dict(kernels=[]), ValueError, ["kernels", "1 to 8"]),
    (dict(kernels=[K] * 9, rates=[1] * 9), ValueError, ["kernels", "1 to 8", "9"]),
    (dict(rates=[1]), ValueError, ["rates", "one entry per kernel", "2"]),
    (dict(rates=2), TypeError, ["rates", "list or tuple"]),
    (dict(rates=[1, 0]), ValueError, ["branch 1", "rates[1]", "positive"]),
    (dict(rates=[1, 2.5]), TypeError, ["branch 1", "rates[1]", "2.5"]),
    (dict(rates=[1, True]), TypeError, ["branch 1", "rates[1]"]),
    (dict(kernels=[K, np.ones((3, 3, 5, 4))]), ValueError, ["branch 1", "5 input channels", "x has 2"]),
    (dict(kernels=[K, np.ones((3, 3, 2))]), ValueError, ["kernels[1]", "4-D"]),
    (dict(kernels=[K, None]), TypeError, ["branch 1", "kernels[1]", "None"]),
    (dict(kernels=[K, K.astype(complex)]), TypeError, ["kernels[1]", "complex"]),
    (dict(biases=[np.ones(4)]), ValueError, ["biases", "one entry per kernel"]),
    (dict(biases=[np.ones(3), None]), ValueError, ["branch 0", "biases[0]", "(4,)", "(3,)"]),
    (dict(biases=np.ones((2, 4))), TypeError, ["biases", "list or tuple"]),
    (dict(x=np.ones((8, 8, 2))), ValueError, ["x", "4-D", "(8, 8, 2)"]),
    (dict(x="image"), TypeError, ["x", "str"]),
    (dict(x=None), TypeError, ["x"]),
    (dict(x=X.astype(np.complex64)), TypeError, ["x", "complex64"]),
    (dict(x=np.ones((1, 0, 8, 2))), ValueError, ["x", "spatial"]),
    (dict(activation="softmax"), ValueError, ["activation", "'softmax'"]),
    (dict(rates=[1, 2**31]), ValueError, ["rates[1]"]),
]


@pytest.mark.parametrize(("changes", "error", "words"), BAD)
def test_bad_input_is_named_before_opencl(no_opencl, changes, error, words):
    call = dict(x=X, kernels=[K, K], rates=[1, 2], biases=None, activation=None) | changes
    x = call.pop("x")
    with pytest.raises(error) as info:
        clatrous.aspp(x, call.pop("kernels"), call.pop("rates"), call.pop("biases"), **call)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_device_x_refuses_another_device():
    rt = runtime.get_runtime()
    x = cl_array.to_device(rt.queue, X)
    other = cl.CommandQueue(rt.context)
    with pytest.raises(ValueError, match="device must be left out"):
        clatrous.aspp(x, [K], [1], device=other)


def test_device_x_refuses_host_float64_mismatch():
    rt = runtime.get_runtime()
    x = cl_array.to_device(rt.queue, X)
    k = cl_array.to_device(rt.queue, K.astype(np.float64)) if rt.info.fp64 else None
    if k is None:
        pytest.skip("the device has no cl_khr_fp64")
    with pytest.raises(TypeError, match=r"kernels\[0\]"):
        clatrous.aspp(x, [k], [1])


def test_spatial_mean_of_each_image_and_channel():
    rng = np.random.default_rng(7)
    rt = runtime.get_runtime()
    x = (rng.standard_normal((3, 17, 23, 5)) + 4).astype(np.float32)  # a large mean: rounding shows
    big = cl_array.to_device(rt.queue, np.concatenate([x[:1] * 3, x]))
    mean = pyramid.spatial_mean(rt, big[1:])  # a view: read from its offset
    assert mean.shape == (3, 1, 1, 5)
    expected = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(mean.get(), expected, rtol=2e-6)


@pytest.mark.oclgrind_reuse_false_positive
def test_the_block_chains_on_the_device_without_waiting_on_the_host(monkeypatch):
    """Every step of aspp_block is ordered by events alone: no wait, finish or read-back before the end."""
    rng = np.random.default_rng(8)
    rt = runtime.get_runtime()
    x = rng.standard_normal((2, 8, 9, 4)).astype(np.float32)
    layer = clatrous.ASPP(4, rates=(2, 3), separable=True)
    layer.build(x.shape)
    weights = [(rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    expected = layer(x)
    on_device = [cl_array.to_device(rt.queue, np.ascontiguousarray(w)) for w in weights]
    projection = weights[-2]
    rows = cl_array.to_device(rt.queue, np.ascontiguousarray(projection[:, :, :12]))
    pooled_rows = cl_array.to_device(rt.queue, np.ascontiguousarray(projection[:, :, 12:]))
    x_dev = cl_array.to_device(rt.queue, x)
    rt.queue.finish()
    waits = []
    for owner, name in ((cl.Event, "wait"), (cl.CommandQueue, "finish"), (cl_array.Array, "get")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _n=name, _r=real, **k: waits.append(_n) or _r(*a, **k))
    monkeypatch.setattr(cl, "wait_for_events", lambda *a, **k: waits.append("wait_for_events"))
    out = pyramid.aspp_block(
        rt,
        x_dev,
        pointwise=tuple(on_device[:2]),
        atrous=[tuple(on_device[2:6]), tuple(on_device[6:10])],
        rates=[2, 3],
        pooling=tuple(on_device[10:12]),
        projection=(rows, pooled_rows, on_device[13]),
        activation="relu",
    )
    assert isinstance(out, cl_array.Array) and out.events
    assert not waits, f"the block waited on the host: {waits}"
    monkeypatch.undo()
    np.testing.assert_allclose(out.get(), expected, rtol=1e-6, atol=1e-6)


def test_host_copies_the_kernel_reads_in_place_live_until_it_is_done(monkeypatch):
    """Large unaligned host kernels are copied into aligned memory a CPU device reads in place:
    those copies must outlive the launch (freed at once, the kernel read freed memory: a crash at A1)."""
    import weakref

    from clatrous import staging

    if not runtime.get_runtime().info.host_memory:
        pytest.skip("the device does not read host memory in place")
    copies, alive = [], []
    real_copy, real_read = staging.aligned_copy, staging.read_back

    def tracked_copy(value, dtype):
        out = real_copy(value, dtype)
        copies.append(weakref.ref(out))
        return out

    def checked_read(*args, **kwargs):
        alive.append([ref() is not None for ref in copies])
        return real_read(*args, **kwargs)

    monkeypatch.setattr(staging, "aligned_copy", tracked_copy)
    monkeypatch.setattr(staging, "read_back", checked_read)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 10, 12, 32)).astype(np.float32)
    memory = np.empty(3 * 3 * 32 * 64 + 1, np.float32)  # 73 KB: shared, not copied into the buffer
    kernel = memory[1:].reshape(3, 3, 32, 64)  # 4 bytes off any alignment: copied first
    kernel[...] = rng.standard_normal(kernel.shape)
    out = clatrous.aspp(x, [kernel, kernel[:, :, :, :32]], [2, 3])
    assert copies, "no aligned copy was made: the test does not test anything"
    assert alive and all(alive[0]), "an aligned copy was freed while the kernel could still read it"
    assert_matches(out, x, [kernel, kernel[:, :, :, :32]], [2, 3])


def test_a_problem_past_the_device_is_refused_before_any_allocation(no_opencl_buffers):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 16, 16, 8)).astype(np.float32)
    kernels = [rng.standard_normal((3, 3, 8, 8)).astype(np.float32)] * 2
    before = runtime.settings.max_alloc_bytes
    runtime.settings.max_alloc_bytes = 4096  # x alone is 8 KiB
    try:
        with pytest.raises(clatrous.DeviceMemoryError, match="not split"):
            clatrous.aspp(x, kernels, [1, 2])
    finally:
        runtime.settings.max_alloc_bytes = before


@pytest.fixture
def no_opencl_buffers(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a buffer was made for a problem the device cannot hold")

    monkeypatch.setattr(cl, "Buffer", refuse)


def test_a_failed_launch_leaves_none_of_the_earlier_ones_running(monkeypatch):
    """The second branch's launch fails: the first, which may read the caller's arrays, is waited for."""
    from clatrous.launch import Launch

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 9, 9, 4)).astype(np.float32)
    kernels = [rng.standard_normal((3, 3, 4, 4)).astype(np.float32)] * 3
    rt = runtime.get_runtime()
    call = prepare_branches(x, kernels, [1, 2, 3], None, None)
    config = dict(pyramid.params.aspp_defaults(rt.info, call.branches[0].geometry, (4, 4, 4), np.float32))
    launches = pyramid.branch_launches(rt, call, config=dict(config, FUSE=0))
    real, made = Launch.enqueue, []

    def second_fails(self, *args, **kwargs):
        if made:
            raise cl.MemoryError(
                "clEnqueueNDRangeKernel", cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE, "test"
            )
        made.append(real(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(Launch, "enqueue", second_fails)
    waited, real_wait = [], cl.Event.wait
    monkeypatch.setattr(cl.Event, "wait", lambda self: waited.append(self) or real_wait(self))
    y = cl_array.empty(rt.queue, (1, 9, 9, 12), np.float32)
    with pytest.raises(cl.MemoryError):
        pyramid.enqueue_branches(rt, launches, y.base_data)
    assert made and made[0] in waited, "the first launch was left running"
