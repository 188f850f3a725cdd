"""The Keras-like layers: lazy building, weights, configuration, threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import assert_matches_reference, on_oclgrind, skip_without_fp64

import clatrous

RNG = np.random.default_rng(17)


class TestConv2DLayer:
    def test_build_on_one_size_call_on_another(self):
        layer = clatrous.Conv2D(4, (3, 2), padding="same", dilation_rate=(2, 1), activation="tanh")
        layer.build((1, 7, 7, 3))
        x = RNG.standard_normal((2, 20, 17, 3)).astype(np.float32)
        kernel, bias = layer.get_weights()
        assert kernel.shape == (3, 2, 3, 4) and bias.shape == (4,)
        out = layer(x)
        assert out.shape == layer.compute_output_shape(x.shape) == (2, 20, 17, 4)
        assert_matches_reference(
            out, x, kernel, bias, padding="same", dilation_rate=(2, 1), activation="tanh"
        )

    def test_set_and_get_weights_copy(self):
        layer = clatrous.Conv2D(2, 3)
        layer.build((None, 5, 5, 1))
        kernel = RNG.standard_normal((3, 3, 1, 2))
        bias = np.array([0.5, -0.5])
        layer.set_weights([kernel, bias])
        kernel[:] = 0  # the layer keeps its own copy
        got = layer.get_weights()
        assert got[0].dtype == np.float32 and np.any(got[0] != 0)
        got[0][:] = 7  # and hands out copies
        assert np.all(layer.get_weights()[0] != 7)

    def test_weights_are_kept_where_a_cpu_device_can_read_them_in_place(self):
        layer = clatrous.Conv2D(8, 3)
        layer.build((None, 9, 9, 3))
        layer.set_weights([RNG.standard_normal((3, 3, 3, 8))[::-1], np.arange(8)])
        for array in (layer.kernel, layer.bias):
            assert array.flags.c_contiguous and array.ctypes.data % 128 == 0 and array.dtype == np.float32
        x = RNG.standard_normal((2, 9, 9, 3)).astype(np.float32)
        assert_matches_reference(layer(x), x, layer.kernel, layer.bias)

    def test_config_round_trip(self):
        layer = clatrous.Conv2D(8, 3, strides=2, padding=((1, 0), (0, 1)), dilation_rate=3, activation="relu")
        clone = clatrous.Conv2D.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        # rows: (40 + 1 + 0 - 3*(3-1) - 1) // 2 + 1 = 18
        assert clatrous.Conv2D(**layer.get_config()).compute_output_shape((None, 40, None, 2)) == (
            None, 18, None, 8,
        )  # fmt: skip

    def test_an_unbuilt_layer_shared_by_threads_builds_once(self):
        # Found by the adversarial pass: in 8 of 20 trials some calls were
        # computed with random weights the layer no longer held.
        if on_oclgrind():
            pytest.skip("Oclgrind's OpenCL runtime is not thread-safe (jrprice/Oclgrind#28); tested on PoCL")
        x = RNG.standard_normal((1, 9, 9, 3)).astype(np.float32)
        for _ in range(5):
            layer = clatrous.Conv2D(4, 3, padding="same")
            with ThreadPoolExecutor(max_workers=8) as pool:
                outs = list(pool.map(layer, [x] * 8))
            kernel, bias = layer.get_weights()
            for out in outs:
                assert_matches_reference(out, x, kernel, bias, padding="same")

    def test_no_bias_and_builds_lazily(self):
        layer = clatrous.Conv2D(3, 2, use_bias=False)
        x = RNG.standard_normal((1, 5, 6, 2))
        out = layer(x)  # float64 input, float32 layer: cast as Keras does
        assert out.dtype == np.float32 and out.shape == (1, 4, 5, 3)
        assert len(layer.get_weights()) == 1


# A separable layer's chain: Oclgrind's address-reuse reports when its compiler cache is cold.
@pytest.mark.oclgrind_reuse_false_positive
def test_warmup_compiles_ahead_so_the_first_real_call_builds_nothing():
    # Issue 15: the first call of a new specialisation compiled for seconds.
    from clatrous import launch, runtime

    launch.forget_launches()
    for layer, shape in [
        (clatrous.SeparableConv2D(3, 3, padding="same", dilation_rate=5, activation="elu"), (1, 13, 11, 2)),
        (clatrous.Conv1D(2, 3, padding="causal", dilation_rate=7, activation="softplus"), (2, 29, 3)),
    ]:
        layer.warmup(shape)
        builds = runtime.settings.build_count
        layer(np.random.default_rng(0).standard_normal(shape))
        assert runtime.settings.build_count == builds
    with pytest.raises(ValueError, match="every size"):
        clatrous.Conv2D(2, 3).warmup((None, 8, 8, 3))


# ---------------------------------------------------------------- ASPP


def _block_by_functional_calls(x, weights, rates, separable, pooling, activation="relu", lib=clatrous):
    """DeepLab's ASPP block composed of ``lib``'s conv2d / depthwise_conv2d, a mean and a concatenation.

    ``lib`` is :mod:`clatrous` or :mod:`clatrous.reference` (float64 sums):
    the layer must equal both, each to its rounding.
    """
    ws = list(weights)
    parts = [lib.conv2d(x, ws[0], ws[1], padding="same", activation=activation)]
    i = 2
    for rate in rates:
        if separable:
            middle = lib.depthwise_conv2d(
                x, ws[i], ws[i + 1], padding="same", dilation_rate=rate, activation=activation
            )
            parts.append(lib.conv2d(middle, ws[i + 2], ws[i + 3], activation=activation))
            i += 4
        else:
            parts.append(
                lib.conv2d(x, ws[i], ws[i + 1], padding="same", dilation_rate=rate, activation=activation)
            )
            i += 2
    if pooling:
        mean = x.astype(np.float64).mean(axis=(1, 2), keepdims=True).astype(x.dtype)
        pooled = lib.conv2d(mean, ws[i], ws[i + 1], activation=activation)
        parts.append(np.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
        i += 2
    assert i == len(ws) - 2, "the weights' order is not the documented one"
    return lib.conv2d(np.concatenate(parts, axis=-1), ws[i], ws[i + 1], activation=activation)


def _random_weights(layer, rng, dtype=np.float32):
    """Fresh random weights of the layer's shapes (biases too: never zeros)."""
    return [(rng.standard_normal(w.shape) * 0.5).astype(dtype) for w in layer.get_weights()]


# Each call releases its intermediates: Oclgrind's address-reuse reports (pyproject.toml).
@pytest.mark.oclgrind_reuse_false_positive
class TestASPPLayer:
    @pytest.mark.parametrize("separable", [False, True])
    @pytest.mark.parametrize("pooling", [True, False])
    def test_equals_the_block_composed_from_functional_calls(self, separable, pooling):
        rng = np.random.default_rng(30 + 2 * separable + pooling)
        layer = clatrous.ASPP(8, rates=(2, (3, 1), 5), separable=separable, image_pooling=pooling)
        x = rng.standard_normal((2, 11, 13, 5)).astype(np.float32)
        layer.build(x.shape)
        weights = _random_weights(layer, rng)
        layer.set_weights(weights)
        out = layer(x)
        assert out.shape == layer.compute_output_shape(x.shape) == (2, 11, 13, 8)
        assert out.dtype == np.float32 and not np.isnan(out).any()
        exact = _block_by_functional_calls(
            x, weights, layer.rates, separable, pooling, lib=clatrous.reference
        )
        scale = np.abs(exact).max()
        assert scale > 1  # the comparison is not between zeros
        np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5 * scale)
        composed = _block_by_functional_calls(x, weights, layer.rates, separable, pooling)
        np.testing.assert_allclose(out, composed, rtol=1e-5, atol=1e-5 * scale)

    def test_float64_and_other_activations(self):
        skip_without_fp64(np.float64)
        rng = np.random.default_rng(40)
        layer = clatrous.ASPP(4, rates=[1, 3], kernel_size=(3, 2), activation="tanh", dtype="float64")
        x = rng.standard_normal((1, 7, 6, 3))
        layer.build(x.shape)
        weights = _random_weights(layer, rng, np.float64)
        layer.set_weights(weights)
        out = layer(x)
        assert out.dtype == np.float64
        exact = _block_by_functional_calls(x, weights, layer.rates, False, True, "tanh", clatrous.reference)
        np.testing.assert_allclose(out, exact, rtol=1e-12, atol=1e-12)

    def test_device_input_gives_the_same_bits_as_host_input(self):
        import pyopencl.array as cl_array

        from clatrous import runtime

        rng = np.random.default_rng(41)
        layer = clatrous.ASPP(8, rates=(2, 4), separable=True)
        x = rng.standard_normal((1, 9, 10, 4)).astype(np.float32)
        layer.build(x.shape)
        layer.set_weights(_random_weights(layer, rng))
        on_device = layer(cl_array.to_device(runtime.get_runtime().queue, x))
        assert isinstance(on_device, np.ndarray)
        np.testing.assert_array_equal(on_device, layer(x))

    def test_new_weights_are_used_on_the_next_call(self):
        rng = np.random.default_rng(42)
        layer = clatrous.ASPP(4, rates=(2,))
        x = rng.standard_normal((1, 6, 6, 3)).astype(np.float32)
        layer.build(x.shape)
        first = _random_weights(layer, rng)
        layer.set_weights(first)
        layer(x)  # uploads the first weights to the device
        second = _random_weights(layer, rng)
        layer.set_weights(second)
        exact = _block_by_functional_calls(x, second, layer.rates, False, True, lib=clatrous.reference)
        np.testing.assert_allclose(layer(x), exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())

    def test_weights_names_shapes_and_config(self):
        layer = clatrous.ASPP(16, rates=(6, 12), separable=True, name="aspp")
        layer.build((None, None, None, 32))
        names = layer.weight_names
        assert names == (
            "conv1x1_kernel", "conv1x1_bias",
            "atrous0_depthwise_kernel", "atrous0_depthwise_bias",
            "atrous0_pointwise_kernel", "atrous0_pointwise_bias",
            "atrous1_depthwise_kernel", "atrous1_depthwise_bias",
            "atrous1_pointwise_kernel", "atrous1_pointwise_bias",
            "pooling_kernel", "pooling_bias", "projection_kernel", "projection_bias",
        )  # fmt: skip
        shapes = [w.shape for w in layer.get_weights()]
        assert shapes[:6] == [(1, 1, 32, 16), (16,), (3, 3, 32, 1), (32,), (1, 1, 32, 16), (16,)]
        assert shapes[-4:] == [(1, 1, 32, 16), (16,), (1, 1, 64, 16), (16,)]
        config = layer.get_config()
        assert config["rates"] == ((6, 6), (12, 12)) and config["name"] == "aspp"
        again = clatrous.ASPP.from_config(config)
        assert again.get_config() == config
        assert clatrous.ASPP(16, image_pooling=False).weight_names[-2:] == (
            "projection_kernel",
            "projection_bias",
        )

    @pytest.mark.parametrize("filters", [1, 3])
    @pytest.mark.parametrize("separable", [False, True])
    def test_built_weights_have_the_documented_shapes(self, filters, separable):
        # filters=1 once built its 1x1 kernels as depthwise 3x3 ones (told apart by shape).
        layer = clatrous.ASPP(filters, rates=(2, 3), separable=separable)
        layer.build((1, 6, 6, 4))
        shapes = dict(zip(layer.weight_names, (w.shape for w in layer.get_weights()), strict=True))
        assert shapes["conv1x1_kernel"] == shapes["pooling_kernel"] == (1, 1, 4, filters)
        assert shapes["projection_kernel"] == (1, 1, 4 * filters, filters)
        if separable:
            assert shapes["atrous1_depthwise_kernel"] == (3, 3, 4, 1)
            assert shapes["atrous1_pointwise_kernel"] == (1, 1, 4, filters)
        else:
            assert shapes["atrous1_kernel"] == (3, 3, 4, filters)
        layer.set_weights(layer.get_weights())  # the built weights load back

    @pytest.mark.parametrize(
        ("make", "error", "words"),
        [
            (lambda: clatrous.ASPP(8, rates=()), ValueError, ["rates", "1 to 7"]),
            (lambda: clatrous.ASPP(8, rates=tuple(range(1, 9))), ValueError, ["rates", "1 to 7", "8"]),
            (lambda: clatrous.ASPP(8, rates=6), TypeError, ["rates", "list or tuple"]),
            (lambda: clatrous.ASPP(8, rates=(6, 0)), ValueError, ["rates[1]"]),
            (lambda: clatrous.ASPP(8, rates=(6, 2.5)), TypeError, ["rates[1]"]),
            (lambda: clatrous.ASPP(0), ValueError, ["filters"]),
            (lambda: clatrous.ASPP(8, separable="yes"), TypeError, ["separable"]),
            (lambda: clatrous.ASPP(8, image_pooling=1), TypeError, ["image_pooling"]),
            (lambda: clatrous.ASPP(8, activation="softmax"), ValueError, ["activation"]),
            (lambda: clatrous.ASPP(8, kernel_initialiser="x"), TypeError, ["kernel_initialiser"]),
        ],
    )
    def test_bad_arguments_are_named(self, make, error, words):
        with pytest.raises(error) as info:
            make()
        for word in words:
            assert word in str(info.value), (word, str(info.value))

    def test_bad_weights_and_input_are_named_before_opencl(self, monkeypatch):
        from clatrous import pyramid

        layer = clatrous.ASPP(4, rates=(2,))
        layer.build((1, 5, 5, 3))
        weights = layer.get_weights()

        def refuse(*_args, **_kwargs):
            raise AssertionError("an OpenCL launch was made for a user's mistake")

        monkeypatch.setattr(pyramid, "enqueue_branches", refuse)
        with pytest.raises(ValueError, match="weights must hold 8 arrays"):
            layer.set_weights(weights[:-1])
        bad = [*weights[:2], np.ones((3, 3, 3, 5)), *weights[3:]]
        with pytest.raises(ValueError, match=r"atrous0_kernel weights must have shape \(3, 3, 3, 4\)"):
            layer.set_weights(bad)
        with pytest.raises(ValueError, match="x has 2 channels; the layer was built for 3"):
            layer(np.ones((1, 5, 5, 2), np.float32))
        with pytest.raises(ValueError, match="x must be"):
            layer(np.ones((5, 5, 3), np.float32))
        with pytest.raises(TypeError, match="x"):
            layer(np.ones((1, 5, 5, 3), complex))

    def test_empty_batch_and_warmup(self):
        layer = clatrous.ASPP(4, rates=(2,))
        layer.warmup((1, 6, 7, 3))
        assert layer(np.ones((0, 6, 7, 3), np.float32)).shape == (0, 6, 7, 4)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_a_separable_layer_keeps_its_device_arrays_call_after_call(data_format, monkeypatch):
    # A host x goes through both steps in device arrays from the runtime's
    # workspace: after the first call, no new buffer for x or the depthwise
    # result (a new 8.9 MB buffer cost D2 more than its kernel on Intel's runtime).
    from clatrous import reference, staging

    rng = np.random.default_rng(12)
    layer = clatrous.SeparableConv2D(8, 3, padding="same", dilation_rate=2, data_format=data_format)
    layer.build((1, 40, 40, 16) if data_format == "channels_last" else (1, 16, 40, 40))
    kernels = layer.get_weights()
    made = []
    real = staging.device_empty
    monkeypatch.setattr(staging, "device_empty", lambda *a, **k: made.append(a[1]) or real(*a, **k))
    for call in range(3):
        x = rng.standard_normal((1, 40, 40, 16)).astype(np.float32)
        given = x.copy() if data_format == "channels_last" else np.ascontiguousarray(np.moveaxis(x, -1, 1))
        out = layer(given)
        given[...] = np.nan  # the caller's to change once the call has returned
        middle = reference.depthwise_conv2d(x, kernels[0], padding="same", dilation_rate=2)
        expected = reference.conv2d(middle, kernels[1], kernels[2])
        if data_format == "channels_first":
            expected = np.moveaxis(expected, -1, 1)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        if call == 0:
            first = list(made)
    assert made == first, f"calls after the first made new device arrays: {made[len(first) :]}"
