"""Keras configs and layouts (issue 15): a Keras layer's config and weights load as they are.

The configs below are what Keras 3.15's ``get_config()`` returns; the last
tests build real Keras layers (torch backend) when Keras is installed.
"""

import os

import numpy as np
import pytest
from helpers import assert_matches_reference

import clatrous
from clatrous import reference

POLICY = {
    "module": "keras",
    "class_name": "DTypePolicy",
    "config": {"name": "float32"},
    "registered_name": None,
}
GLOROT = {
    "module": "keras.initializers",
    "class_name": "GlorotUniform",
    "config": {"seed": None, "input_axes": None, "output_axes": None},
    "registered_name": None,
}
ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}

KERAS_CONV2D = {
    "name": "conv2d",
    "trainable": True,
    "dtype": POLICY,
    "filters": 4,
    "kernel_size": (3, 3),
    "strides": (1, 1),
    "padding": "same",
    "data_format": "channels_last",
    "dilation_rate": (2, 2),
    "groups": 1,
    "activation": "gelu",
    "use_bias": True,
    "kernel_initializer": GLOROT,
    "bias_initializer": ZEROS,
    "kernel_regularizer": None,
    "bias_regularizer": None,
    "activity_regularizer": None,
    "kernel_constraint": None,
    "bias_constraint": None,
}
KERAS_SEPARABLE = {
    "name": "separable_conv2d",
    "trainable": True,
    "dtype": POLICY,
    "depth_multiplier": 2,
    "filters": 4,
    "kernel_size": (3, 3),
    "strides": (1, 1),
    "padding": "valid",
    "data_format": "channels_last",
    "dilation_rate": (2, 2),
    "activation": "linear",
    "use_bias": True,
    "depthwise_initializer": GLOROT,
    "pointwise_initializer": GLOROT,
    "bias_initializer": ZEROS,
    "depthwise_regularizer": None,
    "pointwise_regularizer": None,
    "bias_regularizer": None,
    "activity_regularizer": None,
    "depthwise_constraint": None,
    "pointwise_constraint": None,
    "bias_constraint": None,
}
KERAS_DEPTHWISE = {
    k: v for k, v in KERAS_SEPARABLE.items() if k != "filters" and not k.startswith("pointwise")
} | {"name": "depthwise_conv2d"}


@pytest.mark.parametrize(
    "cls, config",
    [
        (clatrous.Conv2D, KERAS_CONV2D),
        (clatrous.SeparableConv2D, KERAS_SEPARABLE),
        (clatrous.DepthwiseConv2D, KERAS_DEPTHWISE),
    ],
)
def test_a_keras_config_loads_and_its_training_keys_are_kept(cls, config):
    # Found by the new-user pass: from_config failed on the first key (name).
    layer = cls.from_config(config)
    assert layer.dtype == np.float32 and layer.dilation_rate == (2, 2)
    again = layer.get_config()
    for key in ("name", "trainable", "activity_regularizer", "bias_initializer"):
        assert again[key] == config[key]
    assert cls.from_config(again).get_config() == again
    x = np.random.default_rng(0).standard_normal((1, 9, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer(x).shape, layer.compute_output_shape(x.shape))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"lora_rank": 4}, ["lora_rank"]),
        ({"dtype": {"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}}, ["dtype", "mixed"]),
        ({"dtype": "int8"}, ["dtype"]),
        ({"data_format": "channels_middle"}, ["data_format"]),
        ({"activation": "softmax"}, ["activation"]),
        ({"padding": "causal"}, ["padding"]),
        ({"some_new_key": 1}, ["some_new_key"]),
    ],
)
def test_a_keras_config_value_clatrous_cannot_honour_names_the_key(change, words):
    with pytest.raises((ValueError, TypeError)) as info:
        clatrous.Conv2D.from_config({**KERAS_CONV2D, **change})
    assert all(word in str(info.value) for word in words), str(info.value)


def test_training_only_keywords_in_the_constructor_and_a_typo_is_refused():
    layer = clatrous.Conv2D(2, 3, name="first", kernel_initializer="he_normal")
    assert layer.get_config()["name"] == "first"
    with pytest.raises(TypeError, match="kernel_initialiser"):
        clatrous.Conv2D(2, 3, kernel_initialiser="he_normal")


# ---------------------------------------------------------------- channels_first


def _nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def test_channels_first_functional_calls_equal_the_transposed_channels_last_ones():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 10, 3)).astype(np.float32)
    kernel, bias = rng.standard_normal((3, 2, 3, 4)), rng.standard_normal(4)
    kwargs = dict(padding="same", dilation_rate=(2, 3), activation="silu")
    out = clatrous.conv2d(_nchw(x), kernel, bias, data_format="channels_first", **kwargs)
    assert out.shape == (2, 4, 9, 10) and out.flags.c_contiguous
    assert_matches_reference(np.moveaxis(out, 1, -1), x, kernel, bias, **kwargs)
    np.testing.assert_allclose(
        out,
        reference.conv2d(_nchw(x), kernel, bias, data_format="channels_first", **kwargs),
        rtol=1e-5,
        atol=1e-6,
    )
    depthwise = rng.standard_normal((3, 3, 3, 2))
    out = clatrous.depthwise_conv2d(_nchw(x), depthwise, data_format="channels_first", dilation_rate=2)
    expected = reference.depthwise_conv2d(x, depthwise, dilation_rate=2)
    np.testing.assert_allclose(out, _nchw(expected), rtol=1e-5, atol=1e-5)
    signal = rng.standard_normal((2, 20, 3)).astype(np.float32)
    k1 = rng.standard_normal((3, 3, 5))
    out = clatrous.conv1d(_nchw(signal), k1, padding="causal", dilation_rate=4, data_format="channels_first")
    expected = reference.conv1d(signal, k1, padding="causal", dilation_rate=4)
    np.testing.assert_allclose(out, _nchw(expected), rtol=1e-5, atol=1e-5)


def test_channels_first_layers_and_their_shapes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 9, 8, 4)).astype(np.float32)
    for cls, args in [
        (clatrous.Conv2D, (6, 3)),
        (clatrous.SeparableConv2D, (6, 3)),
        (clatrous.DepthwiseConv2D, (3,)),
    ]:
        last = cls(*args, padding="same", dilation_rate=2)
        first = cls(*args, padding="same", dilation_rate=2, data_format="channels_first")
        first.build((None, 4, 9, 8))
        last.set_weights(first.get_weights())
        out = first(_nchw(x))
        np.testing.assert_allclose(out, _nchw(last(x)), rtol=1e-6, atol=1e-6)
        assert out.shape == first.compute_output_shape((1, 4, 9, 8))
        assert first.get_config()["data_format"] == "channels_first"


# Oclgrind reported uninitialised values in conv2d_blocked (the pointwise
# step) when a separable layer ran twice in one process; they went away when
# the layer stopped making new device buffers each call (its workspace), so
# this test and the real Keras case below run without the address-reuse marker.
def test_a_channels_first_separable_layer_with_many_channels_equals_the_channels_last_one():
    # Its pointwise step (C_in * M = 264 multiply-adds an output) runs on a
    # transposed view, as a dense host call with many channels does.
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 7, 6, 132)).astype(np.float32)
    last = clatrous.SeparableConv2D(5, 3, padding="same", dilation_rate=2, depth_multiplier=2)
    first = clatrous.SeparableConv2D(5, 3, padding="same", dilation_rate=2, depth_multiplier=2,
                                     data_format="channels_first")  # fmt: skip
    first.build((None, 132, 7, 6))
    last.set_weights(first.get_weights())
    np.testing.assert_allclose(first(_nchw(x)), _nchw(last(x)), rtol=1e-5, atol=1e-5)


def test_channels_first_is_computed_in_place_without_a_transposed_copy(monkeypatch):
    # Issue 15: the channels-first layout was a transposed copy in (and
    # another out); the plane kernel now indexes (N, C, H, W) itself, so a
    # large aligned host x is read where it is and the result written as is.
    from clatrous import launch, runtime, staging

    rng = np.random.default_rng(11)
    x = staging.aligned_copy(rng.standard_normal((2, 6, 40, 72)), np.float32)  # 138 KB: shared
    kernel, bias = rng.standard_normal((3, 3, 3, 8)).astype(np.float32), rng.standard_normal(8)
    kwargs = dict(padding="same", dilation_rate=2, groups=2, padding_mode="reflect", activation="relu")
    ran = []
    real = launch.get_launch

    def spy(rt, op, prepared, choice=None):
        found = real(rt, op, prepared, choice)
        ran.append(found.plan.variant)
        return found

    with monkeypatch.context() as patch:
        patch.setattr(launch, "get_launch", spy)
        patch.setattr(clatrous.execute, "get_launch", spy)
        if runtime.get_runtime().info.host_memory:

            def no_copy(*args):
                raise AssertionError("x was copied")

            patch.setattr(staging, "aligned_copy", no_copy)
        out = clatrous.conv2d(x, kernel, bias, data_format="channels_first", **kwargs)
    assert ran == ["plane"]
    assert out.shape == (2, 8, 40, 72) and out.flags.c_contiguous
    assert_matches_reference(np.moveaxis(out, 1, -1), np.moveaxis(x, 1, -1), kernel, bias, **kwargs)


def test_channels_first_with_many_multiply_adds_runs_channels_last_and_equals_the_reference(monkeypatch):
    # Above CHANNELS_FIRST_MACS a host call runs the channels-last kernels on
    # a transposed view (faster there); the result is channels-first all the same.
    from clatrous import launch, params

    ran = []
    real = launch.get_launch

    def spy(rt, op, prepared, choice=None):
        ran.append(prepared.geometry.channels_first)
        return real(rt, op, prepared, choice)

    monkeypatch.setattr(clatrous.execute, "get_launch", spy)
    rng = np.random.default_rng(14)
    cin = params.CHANNELS_FIRST_MACS // 3 + 1  # k = 3 taps: just above the limit
    signal, k1 = rng.standard_normal((2, cin, 40)), rng.standard_normal((3, cin, 6))
    kwargs = dict(padding="causal", dilation_rate=3, data_format="channels_first")
    out = clatrous.conv1d(signal.astype(np.float32), k1, **kwargs)
    assert out.shape == (2, 6, 40) and ran == [False]
    np.testing.assert_allclose(out, reference.conv1d(signal, k1, **kwargs), rtol=1e-4, atol=1e-4)
    x, k2 = rng.standard_normal((1, 30, 9, 10)), rng.standard_normal((3, 3, 30, 4))
    out = clatrous.conv2d(x.astype(np.float32), k2, padding="same", data_format="channels_first")
    assert out.shape == (1, 4, 9, 10) and ran == [False, False]
    expected = reference.conv2d(x, k2, padding="same", data_format="channels_first")
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_channels_first_on_device_arrays_stays_on_the_device():
    # Refused before (the kernels indexed channels-last only): now device
    # Arrays go in and come out channels-first, chained without the host.
    import pyopencl.array as cl_array

    from clatrous import runtime

    rng = np.random.default_rng(12)
    queue = runtime.get_runtime().queue
    x = rng.standard_normal((2, 4, 13, 17)).astype(np.float32)
    k1, k2 = rng.standard_normal((3, 3, 4, 6)).astype(np.float32), rng.standard_normal((2, 2, 6, 3))
    first = clatrous.conv2d(cl_array.to_device(queue, x), k1, padding="same", dilation_rate=2,
                            data_format="channels_first")  # fmt: skip
    assert isinstance(first, cl_array.Array) and first.shape == (2, 6, 13, 17)
    second = clatrous.conv2d(first, k2.astype(np.float32), dilation_rate=(1, 3), data_format="channels_first")
    middle = reference.conv2d(x, k1, padding="same", dilation_rate=2, data_format="channels_first")
    expected = reference.conv2d(middle, k2, dilation_rate=(1, 3), data_format="channels_first")
    assert second.shape == expected.shape
    np.testing.assert_allclose(second.get(), expected, rtol=1e-4, atol=1e-4)
    signal = cl_array.to_device(queue, rng.standard_normal((2, 3, 30)).astype(np.float32))
    k1d = rng.standard_normal((3, 3, 5)).astype(np.float32)
    out = clatrous.conv1d(signal, k1d, padding="causal", dilation_rate=4, data_format="channels_first")
    assert out.shape == (2, 5, 30)
    causal = dict(padding="causal", dilation_rate=4, data_format="channels_first")
    expected = reference.conv1d(signal.get(), k1d, **causal)
    np.testing.assert_allclose(out.get(), expected, rtol=1e-4, atol=1e-4)


def test_channels_first_refuses_a_wrong_rank_and_layout_word():
    with pytest.raises(ValueError, match="channels_first"):
        clatrous.conv2d(np.ones((3, 8, 8)), np.ones((3, 3, 3, 2)), data_format="channels_first")
    with pytest.raises(ValueError, match="data_format"):
        clatrous.conv2d(np.ones((1, 8, 8, 3)), np.ones((3, 3, 3, 2)), data_format="NCHW")
    with pytest.raises(ValueError, match="kernel expects 3 input channels but x has 8"):
        clatrous.conv2d(np.ones((1, 8, 8, 3)), np.ones((3, 3, 3, 2)), data_format="channels_first")


# ---------------------------------------------------------------- real Keras


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras", reason="Keras is not installed (pip install 'clatrous[interop]')")


@pytest.mark.parametrize(
    "name, args, kwargs",
    [
        ("Conv2D", (5, 3), dict(padding="same", dilation_rate=2, activation="gelu")),
        (
            "Conv2D",
            (4, (3, 2)),
            dict(padding="valid", dilation_rate=(1, 3), groups=2, activation="leaky_relu"),
        ),
        ("Conv2D", (4, 3), dict(strides=2, padding="same", activation="swish", data_format="channels_first")),
        (
            "DepthwiseConv2D",
            (3,),
            dict(padding="same", dilation_rate=3, depth_multiplier=2, activation="elu"),
        ),
        (
            "SeparableConv2D",
            (6, 3),
            dict(padding="same", dilation_rate=2, depth_multiplier=2, activation="relu"),
        ),
    ],
)
def test_a_real_keras_layer_loads_by_config_and_weights_and_computes_the_same(keras, name, args, kwargs):
    rng = np.random.default_rng(11)
    channels_first = kwargs.get("data_format") == "channels_first"
    x = rng.standard_normal((2, 4, 11, 10) if channels_first else (2, 11, 10, 4)).astype(np.float32)
    theirs = getattr(keras.layers, name)(*args, **kwargs, bias_initializer="random_normal")
    expected = keras.ops.convert_to_numpy(theirs(x))
    ours = getattr(clatrous, name).from_config(theirs.get_config())
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-5)
    assert ours.compute_output_shape(x.shape) == tuple(theirs.compute_output_shape(x.shape))


# ---------------------------------------------------------------- Conv1D


def test_conv1d_layer_is_causal_wavenet_style_and_matches_the_reference():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 30, 3)).astype(np.float32)
    layer = clatrous.Conv1D(4, 2, padding="causal", dilation_rate=4, activation="tanh")
    out = layer(x)
    assert layer.kernel.shape == (2, 3, 4) and out.shape == layer.compute_output_shape(x.shape) == (2, 30, 4)
    expected = reference.conv1d(
        x, layer.kernel, layer.bias, padding="causal", dilation_rate=4, activation="tanh"
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Causal: changing the future changes nothing before it.
    later = x.copy()
    later[:, 20:] += 1
    np.testing.assert_array_equal(layer(later)[:, :20], out[:, :20])
    assert clatrous.Conv1D.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="3-D"):
        layer(np.ones((1, 5, 5, 3)))


def test_a_real_keras_conv1d_loads_and_computes_the_same(keras):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 40, 3)).astype(np.float32)
    for kwargs in [dict(padding="causal", dilation_rate=8), dict(padding="same", strides=2, groups=3)]:
        theirs = keras.layers.Conv1D(6, 3, activation="softplus", bias_initializer="random_normal", **kwargs)
        expected = keras.ops.convert_to_numpy(theirs(x))
        ours = clatrous.Conv1D.from_config(theirs.get_config())
        ours.set_weights(theirs.get_weights())
        np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-5)
