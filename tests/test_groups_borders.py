"""Grouped and depthwise convolution, and borders beyond zeros, against clatrous.reference.

Random geometry with hypothesis: groups, depth multipliers, every padding
mode with pads wider than the image, every variant and configuration the
tuner may pick; the reference itself against an independent formulation
(np.pad, then a valid convolution per group); the split path under every
mode; the layers in Keras' weight layout.
"""

import numpy as np
import pyopencl.array as cl_array
import pytest
from helpers import (
    assert_matches_reference,
    choices,
    draw_choice,
    forced_call,
    geometry_of,
    skip_without_fp64,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import MODES, grouped_problem

import clatrous
from clatrous import reference, runtime
from clatrous.arguments import prepare_depthwise
from clatrous.geometry import border_index
from clatrous.variants import border_far

NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap",
           "symmetric": "symmetric"}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_border_index_is_np_pad_at_any_width(mode):
    for n in range(1, 7):
        values = np.arange(n) + 1
        for before in range(0, 15):
            padded = np.pad(values, (before, 15), mode=NP_MODE[mode])
            mapped = [border_index(i, n, mode) for i in range(-before, n + 15)]
            ours = np.array([values[i] if i >= 0 else 0 for i in mapped])
            np.testing.assert_array_equal(ours, padded, err_msg=f"n={n}, before={before}")


def _independent(x, kernel, bias, kwargs, ndim):
    """np.pad with the mode, then a valid dilated convolution per group by sliding windows."""
    x = x.astype(np.float64)
    if ndim == 1:
        x, kernel = x[:, None], kernel[None]
    g = geometry_of(
        x if ndim == 2 else x[:, 0], kernel if ndim == 2 else kernel[0], None, ndim,
        **{k: v for k, v in kwargs.items() if k != "activation"},
    )  # fmt: skip
    pads = ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0))
    xp = np.pad(x, pads, mode=NP_MODE[g.border])
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // g.groups
    out = np.zeros((x.shape[0], g.ho, g.wo, cout))
    for grp in range(g.groups):
        xs = xp[..., grp * cin_g : (grp + 1) * cin_g]
        for ky in range(kh):
            for kx in range(kw):
                r0, c0 = ky * g.dh, kx * g.dw
                window = xs[:, r0 : r0 + (g.ho - 1) * g.sh + 1 : g.sh, c0 : c0 + (g.wo - 1) * g.sw + 1 : g.sw]
                weights = kernel[ky, kx, :, grp * cout_g : (grp + 1) * cout_g].astype(np.float64)
                out[..., grp * cout_g : (grp + 1) * cout_g] += window @ weights
    if bias is not None:
        out += bias
    out = reference.apply_activation(out, {None: "linear"}.get(kwargs["activation"], kwargs["activation"]))
    return out[:, 0] if ndim == 1 else out


@settings(max_examples=40)
@given(grouped_problem())
def test_reference_equals_np_pad_then_a_valid_convolution_per_group(problem):
    x, kernel, bias, kwargs = problem
    expected = _independent(x, kernel, bias, kwargs, 2)
    np.testing.assert_allclose(reference.conv2d(x, kernel, bias, **kwargs), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=20)
@given(grouped_problem(ndim=1))
def test_reference_conv1d_equals_the_independent_formulation(problem):
    x, kernel, bias, kwargs = problem
    expected = _independent(x, kernel, bias, kwargs, 1)
    np.testing.assert_allclose(reference.conv1d(x, kernel, bias, **kwargs), expected, rtol=1e-5, atol=1e-5)


def test_depthwise_reference_is_the_grouped_one_in_tf_channel_order():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 7, 3))
    kernel = rng.standard_normal((3, 2, 3, 2))  # (kh, kw, C_in, M)
    out = reference.depthwise_conv2d(x, kernel, dilation_rate=2, padding="same", padding_mode="reflect")
    for c in range(3):
        for m in range(2):
            one = reference.conv2d(x[..., c : c + 1], kernel[:, :, c : c + 1, m : m + 1], dilation_rate=2,
                                   padding="same", padding_mode="reflect")  # fmt: skip
            np.testing.assert_allclose(out[..., c * 2 + m], one[..., 0], rtol=1e-12)


@given(grouped_problem(), st.data())
def test_grouped_conv2d_every_variant_and_mode(problem, data):
    x, kernel, bias, kwargs = problem
    skip_without_fp64(x.dtype)
    g = geometry_of(x, kernel, bias, **kwargs)
    choice = draw_choice(data, choices(g, x.dtype), default=True)
    out = forced_call(choice, clatrous.conv2d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, **kwargs)


@given(grouped_problem(ndim=1), st.data())
def test_grouped_conv1d_every_variant_and_mode(problem, data):
    x, kernel, bias, kwargs = problem
    skip_without_fp64(x.dtype)
    g = geometry_of(x, kernel, bias, ndim=1, **kwargs)
    choice = draw_choice(data, choices(g, x.dtype), default=True)
    out = forced_call(choice, clatrous.conv1d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, conv=reference.conv1d, **kwargs)


@given(grouped_problem(depthwise=True), st.data())
def test_depthwise_conv2d_every_variant_and_mode(problem, data):
    x, kernel, bias, kwargs = problem
    skip_without_fp64(x.dtype)
    g = prepare_depthwise(x, kernel, bias, **kwargs).geometry
    candidates = choices(g, x.dtype)
    assert any(name == "depthwise" for name, _ in candidates)
    choice = draw_choice(data, candidates, default=True)
    out = forced_call(choice, clatrous.depthwise_conv2d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, conv=reference.depthwise_conv2d, **kwargs)


# (x shape, kernel shape, padding, dilation, mode, bias): partial channel
# groups and tiles, more phases than output pixels, rows and columns of taps
# wholly in the padding, depth multipliers, every border.
LOCAL_SHAPES = [
    ((2, 9, 11, 12), (3, 3, 12, 1), "same", 2, "zeros", True),
    ((1, 5, 6, 8), (3, 3, 8, 2), "same", 4, "zeros", False),
    ((1, 7, 10, 4), (2, 3, 4, 3), ((3, 4), (2, 6)), (1, 5), "symmetric", True),
    ((1, 8, 7, 8), (3, 3, 8, 1), "same", (3, 2), "reflect", True),
    ((1, 6, 6, 4), (3, 3, 4, 1), ((5, 5), (5, 5)), 2, "circular", False),
    ((1, 4, 9, 6), (1, 3, 6, 1), "valid", 3, "replicate", True),
]
LOCAL_CONFIGS = [
    {"VW": 4, "PX": 2, "LC": 1, "LX": 2, "LY": 2},
    {"VW": 1, "PX": 1, "LC": 4, "LX": 4, "LY": 4},
    {"VW": 2, "PX": 4, "LC": 2, "LX": 1, "LY": 8},
    {"VW": 2, "PX": 1, "LC": 2, "LX": 8, "LY": 1},
]


@pytest.mark.parametrize("config", LOCAL_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("shape", LOCAL_SHAPES, ids=lambda s: f"{s[4]}-{s[1][-1]}")
def test_depthwise_local_code_paths(shape, config):
    x_shape, k_shape, padding, dilation, mode, with_bias = shape
    if x_shape[-1] % config["VW"]:
        pytest.skip("the channels are not a multiple of VW")
    rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    bias = rng.standard_normal(k_shape[2] * k_shape[3]).astype(np.float32) if with_bias else None
    kwargs = dict(padding=padding, dilation_rate=dilation, padding_mode=mode, activation="relu")
    out = forced_call(("depthwise_local", config), clatrous.depthwise_conv2d, x, kernel, bias, **kwargs)
    assert_matches_reference(out, x, kernel, bias, conv=reference.depthwise_conv2d, **kwargs)


@pytest.mark.parametrize(
    "pads",
    [((9, 12), (13, 7)), ((2, 2), (3, 3)), ((3, 2), (1, 4))],
    ids=["much-wider", "one-short-of-the-axis", "as-wide-as-the-axis"],
)
@pytest.mark.parametrize("mode", MODES)
def test_pads_much_wider_than_the_image_on_every_variant(mode, pads):
    """Pads of 3-4 image widths: np.pad reflects or wraps again and again.

    And pads one short of the axis (3 rows, 4 columns), the widest that the
    kernels' straight-line border index takes (BORDER_FAR=0), and as wide as
    the axis, where the general one takes over.
    """
    rng = np.random.default_rng(11)
    cases = [  # (x, kernel, depthwise?)
        (rng.standard_normal((1, 3, 4, 1)), rng.standard_normal((3, 3, 1, 1)), False),  # plane
        (rng.standard_normal((1, 3, 4, 5)), rng.standard_normal((3, 2, 5, 8)), False),  # blocked, direct
        (rng.standard_normal((1, 3, 4, 8)), rng.standard_normal((2, 3, 8, 2)), True),  # depthwise
    ]
    for x, kernel, depthwise in cases:
        x, kernel = x.astype(np.float32), kernel.astype(np.float32)
        kwargs = dict(padding=pads, dilation_rate=(2, 3), padding_mode=mode)
        if depthwise:
            g = prepare_depthwise(x, kernel, None, strides=1, activation=None, **kwargs).geometry
            fn, conv = clatrous.depthwise_conv2d, reference.depthwise_conv2d
        else:
            g = geometry_of(x, kernel, None, **kwargs)
            fn, conv = clatrous.conv2d, reference.conv2d
        assert border_far(g) == (mode not in ("zeros", "replicate") and pads[0] != (2, 2))
        by_variant = {}
        for name, config in choices(g, x.dtype):  # the first and last configuration of each variant
            by_variant.setdefault(name, []).append(config)
        for name, configs in by_variant.items():
            for config in {0: configs[0], 1: configs[-1]}.values():
                out = forced_call((name, config), fn, x, kernel, **kwargs)
                assert_matches_reference(out, x, kernel, conv=conv, **kwargs)


@settings(max_examples=10)
@given(grouped_problem(), st.integers(1, 4))
def test_row_bands_equal_the_whole_under_every_mode(problem, rows):
    x, kernel, bias, kwargs = problem
    skip_without_fp64(x.dtype)
    whole = clatrous.conv2d(x, kernel, bias, **kwargs)
    g = geometry_of(x, kernel, bias, **kwargs)
    halo = (rows - 1) * g.sh + g.dh * (g.kh - 1) + 1
    limit = x.dtype.itemsize * max(halo * g.w * g.cin, rows * g.wo * g.cout, kernel.size + g.cout)
    runtime.settings.max_alloc_bytes = limit
    try:
        split = clatrous.conv2d(x, kernel, bias, **kwargs)
    finally:
        runtime.settings.max_alloc_bytes = None
    np.testing.assert_array_equal(split, whole)


def test_column_bands_of_a_signal_equal_the_whole_under_every_mode():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 4)).astype(np.float32)
    kernel = rng.standard_normal((3, 2, 6)).astype(np.float32)
    for mode in MODES:
        kwargs = dict(padding=(11, 4), dilation_rate=3, groups=2, padding_mode=mode)
        whole = clatrous.conv1d(x, kernel, **kwargs)
        runtime.settings.max_alloc_bytes = 4 * 48  # the kernel and 8 output columns, not a whole image
        try:
            split = clatrous.conv1d(x, kernel, **kwargs)
        finally:
            runtime.settings.max_alloc_bytes = None
        np.testing.assert_array_equal(split, whole, err_msg=mode)
        assert_matches_reference(whole, x, kernel, conv=reference.conv1d, **kwargs)


# ---------------------------------------------------------------- layers


def test_depthwise_layer_loads_keras_weights_as_they_are():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 8, 4)).astype(np.float32)
    kernel, bias = rng.standard_normal((3, 3, 4, 2)), rng.standard_normal(8)  # Keras' shapes
    layer = clatrous.DepthwiseConv2D(3, padding="same", depth_multiplier=2, dilation_rate=2,
                                     activation="relu", padding_mode="symmetric")  # fmt: skip
    layer.set_weights([kernel, bias])
    assert [w.shape for w in layer.get_weights()] == [(3, 3, 4, 2), (8,)]
    out = layer(x)
    kwargs = dict(padding="same", dilation_rate=2, activation="relu", padding_mode="symmetric")
    assert_matches_reference(out, x, kernel.astype(np.float32), bias.astype(np.float32),
                             conv=reference.depthwise_conv2d, **kwargs)  # fmt: skip
    assert layer.compute_output_shape((None, 9, 8, 4)) == (None, 9, 8, 8)
    again = clatrous.DepthwiseConv2D.from_config(layer.get_config())
    again.set_weights(layer.get_weights())
    np.testing.assert_array_equal(again(x), out)


def test_separable_layer_is_depthwise_then_pointwise_with_keras_weights():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 11, 10, 3)).astype(np.float32)
    depthwise, pointwise = rng.standard_normal((3, 3, 3, 2)), rng.standard_normal((1, 1, 6, 5))
    bias = rng.standard_normal(5)
    layer = clatrous.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, dilation_rate=3,
                                     activation="tanh", padding_mode="reflect")  # fmt: skip
    layer.set_weights([depthwise, pointwise, bias])
    out = layer(x)
    middle = reference.depthwise_conv2d(x, depthwise, padding="same", dilation_rate=3, padding_mode="reflect")
    expected = reference.conv2d(middle.astype(np.float64), pointwise, bias, activation="tanh")
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert out.shape == layer.compute_output_shape(x.shape) == (1, 11, 10, 5)
    # On device arrays the two steps chain by events: the result carries the pointwise kernel's.
    queue = runtime.get_runtime().queue
    on_device = clatrous.SeparableConv2D.from_config(layer.get_config())
    on_device.set_weights(layer.get_weights())
    result = on_device._forward(cl_array.to_device(queue, x), on_device._weights)
    assert result.events
    np.testing.assert_allclose(result.get(), out, rtol=1e-6, atol=1e-6)


def test_conv2d_layer_with_groups():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 7, 7, 6)).astype(np.float32)
    layer = clatrous.Conv2D(4, 3, dilation_rate=2, groups=2, padding="same", padding_mode="circular")
    out = layer(x)
    assert layer.kernel.shape == (3, 3, 3, 4)
    kwargs = dict(dilation_rate=2, groups=2, padding="same", padding_mode="circular")
    assert_matches_reference(out, x, layer.kernel, layer.bias, **kwargs)
    with pytest.raises(ValueError, match="groups"):
        layer(rng.standard_normal((1, 7, 7, 5)))


# ---------------------------------------------------------------- errors


@pytest.fixture
def no_opencl(monkeypatch):
    from clatrous import execute

    def refuse(*_args, **_kwargs):
        raise AssertionError("an OpenCL call was made for a user's mistake")

    monkeypatch.setattr(execute, "get_runtime", refuse)


X = np.ones((1, 8, 8, 4), np.float32)
K = np.ones((3, 3, 4, 4))


@pytest.mark.parametrize(
    "call, error, word",
    [
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 2, 3)), groups=2), ValueError, "groups"),  # 3 % 2
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), groups=3), ValueError, "groups"),  # 4 % 3
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), groups=2), ValueError, "input channels"),
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), groups=0), ValueError, "groups"),
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), groups=1.0), TypeError, "groups"),
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), groups=True), TypeError, "groups"),
        (lambda: clatrous.conv1d(X[0], np.ones((3, 8, 3)), groups=2), ValueError, "groups"),
        (lambda: clatrous.conv2d(X, K, padding_mode="mirror"), ValueError, "padding_mode"),
        (lambda: clatrous.conv2d(X, np.ones((3, 3, 4, 4)), padding_mode=None), TypeError, "padding_mode"),
        (lambda: clatrous.depthwise_conv2d(X, np.ones((3, 3, 4, 0))), ValueError, "depth multiplier"),
        (lambda: clatrous.depthwise_conv2d(X, np.ones((3, 3, 3, 1))), ValueError, "input channels"),
        (lambda: clatrous.depthwise_conv2d(X, np.ones((3, 3, 4))), ValueError, "kernel"),
        (lambda: clatrous.depthwise_conv2d(X[0], np.ones((3, 3, 4, 1))), ValueError, "x"),
        (lambda: clatrous.depthwise_conv2d(X, np.ones((3, 3, 4, 1)), padding_mode="wrap"), ValueError,
         "padding_mode"),
        (lambda: clatrous.depthwise_conv2d(X, np.ones((3, 3, 4, 2)), np.ones(4)), ValueError, "bias"),
        (lambda: clatrous.DepthwiseConv2D(3, depth_multiplier=0), ValueError, "depth_multiplier"),
        (lambda: clatrous.SeparableConv2D(4, 3, depth_multiplier=0), ValueError, "depth_multiplier"),
        (lambda: clatrous.SeparableConv2D(4, 3, padding_mode="edge"), ValueError, "padding_mode"),
        (lambda: clatrous.Conv2D(4, 3, groups=3), ValueError, "groups"),
    ],
)  # fmt: skip
def test_bad_arguments_name_themselves_before_opencl(call, error, word, no_opencl):
    with pytest.raises(error, match=word):
        call()


def test_layers_refuse_weights_of_the_wrong_layout(no_opencl):
    layer = clatrous.SeparableConv2D(5, 3, depth_multiplier=2)
    with pytest.raises(ValueError, match="pointwise_kernel"):
        layer.set_weights([np.ones((3, 3, 4, 2)), np.ones((1, 1, 4, 5)), np.ones(5)])
    with pytest.raises(ValueError, match="3 arrays"):
        layer.set_weights([np.ones((3, 3, 4, 2)), np.ones((1, 1, 8, 5))])
    depthwise = clatrous.DepthwiseConv2D(3, depth_multiplier=2)
    with pytest.raises(ValueError, match="bias"):
        depthwise.set_weights([np.ones((3, 3, 4, 2)), np.ones(4)])
    with pytest.raises(ValueError, match="depthwise_kernel"):
        depthwise.set_weights([np.ones((3, 3, 4, 1)), np.ones(4)])
    assert not depthwise.built


def test_separable_layer_on_a_device_given_as_a_device_not_a_queue(cl_device):
    # Found in review: the host path moved x to the device's queue, then
    # passed device= again with it, which a device-array call refuses.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 6, 7, 2)).astype(np.float32)
    layer = clatrous.SeparableConv2D(3, 3, padding="same", dilation_rate=2, device=cl_device)
    out = layer(x)
    middle = reference.depthwise_conv2d(x, layer.depthwise_kernel, padding="same", dilation_rate=2)
    expected = reference.conv2d(middle.astype(np.float64), layer.pointwise_kernel, layer.bias)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
