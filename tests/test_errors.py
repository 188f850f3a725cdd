"""Bad input: a ValueError or TypeError naming the argument, before any OpenCL call."""

import numpy as np
import pytest

import clatrous
from clatrous import execute, reference

X = np.ones((1, 8, 8, 2), np.float32)
K = np.ones((3, 3, 2, 4), np.float32)


@pytest.fixture
def no_opencl(monkeypatch):
    """Any attempt to reach a device fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("an OpenCL call was made for a user's mistake")

    monkeypatch.setattr(execute, "get_runtime", refuse)


CASES = [
    # (kwargs for conv2d, exception, words the message must hold)
    (dict(x=np.ones((8, 8, 2))), ValueError, ["x", "4-D", "(8, 8, 2)"]),
    (dict(x=np.ones((1, 1, 8, 8, 2))), ValueError, ["x", "4-D"]),
    (dict(kernel=np.ones((3, 3, 2))), ValueError, ["kernel", "4-D"]),
    (dict(kernel=np.ones((3, 3, 5, 4))), ValueError, ["5 input channels", "x has 2"]),
    (dict(strides=0), ValueError, ["strides", "positive", "0"]),
    (dict(strides=(1, -2)), ValueError, ["strides", "(1, -2)"]),
    (dict(strides=1.5), TypeError, ["strides", "1.5"]),
    (dict(strides=(1, 2, 3)), ValueError, ["strides", "(1, 2, 3)"]),
    (dict(strides="2"), TypeError, ["strides"]),
    (dict(dilation_rate=(2, 0)), ValueError, ["dilation_rate", "(2, 0)"]),
    (dict(dilation_rate=2.0), TypeError, ["dilation_rate", "2.0"]),
    (dict(dilation_rate=True), TypeError, ["dilation_rate", "True"]),
    (dict(padding="full"), ValueError, ["padding", "'full'"]),
    (dict(padding="causal"), ValueError, ["padding", "'causal'"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(padding=((1, 2), (3,))), ValueError, ["padding"]),
    (dict(padding=1.5), TypeError, ["padding", "1.5"]),
    (dict(padding=None), TypeError, ["padding", "None"]),
    (dict(activation="softmax"), ValueError, ["activation", "'softmax'"]),
    (dict(activation=np.tanh), TypeError, ["activation"]),
    (dict(dilation_rate=4), ValueError, ["does not fit", "(8, 8)"]),
    (dict(bias=np.ones(3)), ValueError, ["bias", "(4,)", "(3,)"]),
    (dict(bias=np.ones((4, 1))), ValueError, ["bias", "1-D"]),
    (dict(x=X.astype(np.complex64)), TypeError, ["x", "complex64"]),
    (dict(kernel=K.astype(complex)), TypeError, ["kernel", "complex128"]),
    (dict(bias=np.ones(4, complex)), TypeError, ["bias", "complex"]),
    (dict(x=np.array([["a"]])), TypeError, ["x", "<U1"]),
    (dict(x="image"), TypeError, ["x", "str"]),
    (dict(x=None), TypeError, ["x", "None"]),
    (dict(x=[[1, 2], [3]]), TypeError, ["x"]),
    (dict(x=np.empty((1, 8, 8, 2), object)), TypeError, ["x", "object"]),
    (dict(x=np.ones((1, 0, 8, 2))), ValueError, ["x", "spatial", "(1, 0, 8, 2)"]),
    (dict(x=np.ones((1, 8, 8, 0)), kernel=np.ones((3, 3, 0, 4))), ValueError, ["x", "channel"]),
    (dict(kernel=np.ones((0, 3, 2, 4))), ValueError, ["kernel", "spatial"]),
    # Found by the adversarial pass: OverflowError from inside the launch code.
    (dict(strides=2**31), ValueError, ["strides", "2**30"]),
    (dict(dilation_rate=2**40, padding="same"), ValueError, ["dilation_rate", "2**30"]),
    (dict(padding=2**31), ValueError, ["padding", "2**30"]),
    (dict(padding=((0, 2**31), (0, 0))), ValueError, ["padding", "2**30"]),
    (dict(x=np.ma.masked_array(X, mask=X > 0)), TypeError, ["x", "masked", ".filled("]),
    (dict(kernel=np.ma.masked_array(K)), TypeError, ["kernel", "masked"]),
]


@pytest.mark.parametrize("kwargs, error, words", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_rejects_bad_input_before_opencl(kwargs, error, words, no_opencl):
    call = dict(x=X, kernel=K, bias=None) | kwargs
    with pytest.raises(error) as info:
        clatrous.conv2d(call.pop("x"), call.pop("kernel"), call.pop("bias"), **call)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    # The reference applies the very same checks.
    call = dict(x=X, kernel=K, bias=None) | kwargs
    with pytest.raises(error):
        reference.conv2d(call.pop("x"), call.pop("kernel"), call.pop("bias"), **call)


def test_bad_device_argument():
    with pytest.raises(TypeError, match="device must be None, a pyopencl Device"):
        clatrous.conv2d(X, K, device="gpu")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(x=np.ones((1, 8))), ValueError, ["x", "3-D"]),
        (dict(padding="SAME-ish"), ValueError, ["padding"]),
        (dict(padding=(1, 2, 3)), ValueError, ["padding"]),
        (dict(strides=(1, 1)), ValueError, ["strides", "(1, 1)"]),
        (dict(dilation_rate=0), ValueError, ["dilation_rate"]),
        (dict(kernel=np.ones((3, 3, 2, 1))), ValueError, ["kernel", "3-D"]),
        (dict(dilation_rate=2**30, padding="causal"), ValueError, ["dilation_rate", "2**30"]),
        (dict(dilation_rate=2**29, padding="causal"), ValueError, ["padding", "'causal'", "2**30"]),
        (dict(x=np.ma.masked_array(np.ones((1, 10, 2)))), TypeError, ["x", "masked"]),
    ],
)
def test_conv1d_rejects_bad_input(kwargs, error, words, no_opencl):
    call = dict(x=np.ones((1, 10, 2)), kernel=np.ones((3, 2, 1))) | kwargs
    with pytest.raises(error) as info:
        clatrous.conv1d(call.pop("x"), call.pop("kernel"), **call)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "args, error, word",
    [
        ((1.5, 3), TypeError, "filters"),
        ((0, 3), ValueError, "filters"),
        ((2, (3, 0)), ValueError, "kernel_size"),
        ((2, 3, 1, "full"), ValueError, "padding"),
        ((2, 3, 1, "valid", 1, "softmax"), ValueError, "activation"),
        ((2, 3, 1, "valid", 1, None, "yes"), TypeError, "use_bias"),
        ((2, 3, 1, "valid", 1, None, True, "int8"), TypeError, "dtype"),
    ],
)
def test_layer_rejects_bad_arguments(args, error, word):
    with pytest.raises(error, match=word):
        clatrous.Conv2D(*args)


def test_indices_past_32_bits_are_refused_not_wrapped(no_opencl):
    # Found by the adversarial pass: this returned 30003 instead of 3 on every variant.
    kernel = np.array([1, 10, 100, 1000, 10000.0]).reshape(5, 1, 1)
    with pytest.raises(ValueError, match="dilation_rate"):
        clatrous.conv1d([[[3.0]]], kernel, dilation_rate=2**30, padding=(0, 2**32))
    with pytest.raises(ValueError, match="padding"):
        clatrous.conv1d([[[3.0]]], kernel, dilation_rate=2**20, padding=(0, 2**32))


def test_the_largest_geometry_allowed_computes_right():
    kernel = np.array([1, 10, 100, 1000, 10000.0]).reshape(5, 1, 1)
    kwargs = dict(dilation_rate=2**27, padding=(0, 2**29))  # extent 2**29 + 1: only the first tap is real
    out = clatrous.conv1d(np.full((1, 1, 1), 3.0, np.float32), kernel, **kwargs)
    np.testing.assert_array_equal(out, [[[3.0]]])
    np.testing.assert_array_equal(
        reference.conv1d(np.full((1, 1, 1), 3.0, np.float32), kernel, **kwargs), out
    )


@pytest.mark.parametrize(
    "input_shape, error",
    [(4, TypeError), ((None, 4, 4, True), TypeError), ((1, 4.0, 4, 2), TypeError), ((1, 4, 4), ValueError),
     ((1, -1, 4, 2), ValueError), ((1, 4, 4, 0), ValueError)],
)  # fmt: skip
def test_layer_shapes_are_checked(input_shape, error):
    # Found by the adversarial pass: build(4) said "'int' object is not
    # iterable", a bool channel count was accepted, and a float size came back.
    layer = clatrous.Conv2D(2, 3)
    with pytest.raises(error, match="input_shape"):
        layer.build(input_shape)
    with pytest.raises(error, match="input_shape"):
        layer.compute_output_shape(input_shape)
    assert layer.compute_output_shape((1, 4, 4, 2)) == (1, 2, 2, 2)


def test_layer_rejects_bad_weights_and_inputs(no_opencl):
    layer = clatrous.Conv2D(4, 3)
    layer.build((1, 8, 8, 2))
    with pytest.raises(ValueError, match="kernel weights"):
        layer.set_weights([np.ones((3, 3, 3, 4)), np.zeros(4)])
    with pytest.raises(ValueError, match="bias weights"):
        layer.set_weights([np.ones((3, 3, 2, 4)), np.zeros(5)])
    with pytest.raises(ValueError, match="2 arrays"):
        layer.set_weights([np.ones((3, 3, 2, 4))])
    with pytest.raises(TypeError, match="weights must be a list"):
        layer.set_weights(np.ones((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="x must be 4-D"):
        layer(np.ones((8, 8, 2)))
    with pytest.raises(ValueError, match="input channels"):
        layer(np.ones((1, 8, 8, 3)))


@pytest.mark.parametrize(
    "kernel, rate, error",
    [
        ([[1, 2]], 0, ValueError),
        ([[1, 2]], 1.5, TypeError),
        ([[1, 2]], (2, 2, 2), ValueError),
        (np.ones((2, 2), complex), 2, TypeError),
        (5, 2, ValueError),
        ([[1, 2], [3]], 2, TypeError),  # numpy's own error used to escape, naming nothing
        (np.ma.masked_array([[1.0, 2.0]]), 2, TypeError),
    ],
)
def test_dilate_rejects_bad_input(kernel, rate, error):
    with pytest.raises(error, match="rate|kernel"):
        clatrous.dilate(kernel, rate)


def test_dilate_per_axis_rates():
    k = np.arange(6).reshape(3, 2, 1)  # a conv1d kernel (k, C_in, C_out)
    out = clatrous.dilate(k, (3,))
    assert out.shape == (7, 2, 1)
    np.testing.assert_array_equal(out[::3], k)
    assert clatrous.dilate(np.ones(3), 2).tolist() == [1, 0, 1, 0, 1]
    assert clatrous.dilate(np.ones((2, 2, 3, 4)), (2, 3)).shape == (3, 4, 3, 4)
