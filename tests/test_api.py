"""The public API's contract: dtypes, layouts, device arrays, the layer, caching."""

import gc

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from helpers import assert_matches_reference, skip_without_fp64

import clatrous
from clatrous import reference, runtime
from clatrous.staging import aligned_copy

RNG = np.random.default_rng(7)


def _problem(n=2, h=9, w=11, cin=3, cout=4, k=3, dtype=np.float32):
    x = RNG.standard_normal((n, h, w, cin)).astype(dtype)
    kernel = RNG.standard_normal((k, k, cin, cout)).astype(dtype)
    bias = RNG.standard_normal(cout).astype(dtype)
    return x, kernel, bias


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.float16, np.float32),
        (np.int64, np.float32),
        (np.uint8, np.float32),
        (np.int32, np.float32),
        (bool, np.float32),
    ],
)
def test_result_dtype_policy(dtype, expected):
    skip_without_fp64(expected)
    x = (RNG.standard_normal((1, 6, 7, 2)) * 5).astype(dtype)
    kernel = RNG.integers(-3, 4, (2, 2, 2, 3))  # an int64 kernel is cast, as the notebook's
    out = clatrous.conv2d(x, kernel, padding="same", dilation_rate=2)
    assert out.dtype == expected
    assert_matches_reference(out, x, kernel, padding="same", dilation_rate=2)


def test_caller_arrays_are_not_modified():
    x, kernel, bias = _problem()
    copies = [a.copy() for a in (x, kernel, bias)]
    for a in (x, kernel, bias):
        a.setflags(write=False)  # any write attempt raises
    clatrous.conv2d(x, kernel, bias, padding="same", activation="relu")
    for a, b in zip((x, kernel, bias), copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_negative_strides_and_big_endian():
    x, kernel, bias = _problem(h=12, w=14)
    variants = {
        "transposed": np.transpose(np.transpose(x, (0, 2, 1, 3)).copy(), (0, 2, 1, 3)),
        "strided": np.repeat(x, 2, axis=2)[:, :, ::2, :],
        "negative": x[:, ::-1, ::-1, :],
        "fortran": np.asfortranarray(x),
        "big-endian": x.astype(">f4"),
    }
    for name, xv in variants.items():
        out = clatrous.conv2d(xv, kernel[::-1], bias.astype(">f4"), padding="same", dilation_rate=2)
        assert out.dtype == np.float32, name
        assert_matches_reference(
            out, np.array(xv), kernel[::-1].copy(), bias, padding="same", dilation_rate=2
        )


def _no_copy(*args, **kwargs):
    raise AssertionError("x was copied")


@pytest.mark.parametrize("size", ["small", "large"])
def test_host_arrays_of_every_layout_both_sides_of_the_copy_threshold(size, monkeypatch):
    # Small arrays are copied to the device; large ones are shared in place
    # when aligned, contiguous, writable and of the right dtype, and staged in
    # aligned memory otherwise.  Every case must give the reference's answer
    # and leave the caller's array as it was.
    h, w = (6, 7) if size == "small" else (64, 70)  # large: 64*70*8*4 bytes > 64 KiB
    on_cpu = runtime.get_runtime().info.host_memory
    x = RNG.standard_normal((1, h, w, 8)).astype(np.float32)
    kernel = RNG.standard_normal((3, 3, 8, 16)).astype(np.float32)
    read_only = x.copy()
    read_only.flags.writeable = False
    unaligned = np.frombuffer(np.concatenate([[0], x.ravel()]).astype(np.float32).data, np.float32, offset=4)
    layouts = {
        "aligned": aligned_copy(x, np.float32),
        "unaligned": unaligned.reshape(x.shape),
        "read-only": read_only,
        "float64": x.astype(np.float64),
        "strided": np.repeat(x, 2, axis=2)[:, :, ::2],
    }
    assert (x.nbytes > 64 * 1024) == (size == "large")
    for name, xv in layouts.items():
        before = np.array(xv, copy=True)
        with monkeypatch.context() as patch:
            if size == "large" and name in ("aligned", "unaligned", "read-only") and on_cpu:
                # These are read in place, from an aligned address at or before them.
                patch.setattr(clatrous.staging, "aligned_copy", _no_copy)
            out = clatrous.conv2d(xv, kernel, padding="same", dilation_rate=2)
        assert out.dtype == (np.float64 if name == "float64" else np.float32), name
        assert_matches_reference(out, np.asarray(xv), kernel, padding="same", dilation_rate=2)
        np.testing.assert_array_equal(np.asarray(xv), before, err_msg=name)


def test_empty_batch_gives_empty_result():
    x, kernel, bias = _problem(n=0)
    out = clatrous.conv2d(x, kernel, bias, padding="same")
    assert out.shape == (0, 9, 11, 4) and out.dtype == np.float32
    assert clatrous.conv1d(np.zeros((0, 10, 2), np.float32), np.ones((3, 2, 5))).shape == (0, 8, 5)


def test_zero_output_channels_gives_empty_result():
    x, _, _ = _problem()
    assert clatrous.conv2d(x, np.ones((3, 3, 3, 0))).shape == (2, 7, 9, 0)


def test_shorthand_2d_and_1d():
    img = RNG.standard_normal((10, 12))
    k = RNG.standard_normal((3, 2))
    out = clatrous.conv2d(img.astype(np.float32), k, dilation_rate=(2, 3))
    assert out.shape == (6, 9)
    np.testing.assert_allclose(
        out, reference.conv2d(img.astype(np.float32), k, dilation_rate=(2, 3)), rtol=1e-5
    )
    sig = RNG.standard_normal(40).astype(np.float32)
    out1 = clatrous.conv1d(sig, np.array([1.0, -2.0, 0.5]), dilation_rate=4, padding="causal")
    assert out1.shape == (40,)
    np.testing.assert_allclose(
        out1, reference.conv1d(sig, np.array([1.0, -2.0, 0.5]), dilation_rate=4, padding="causal"), rtol=1e-5
    )


def test_causal_conv1d_sees_only_the_past():
    x = RNG.standard_normal((1, 30, 2)).astype(np.float32)
    kernel = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    base = clatrous.conv1d(x, kernel, padding="causal", dilation_rate=5)
    changed = x.copy()
    changed[0, 20:] += 100
    after = clatrous.conv1d(changed, kernel, padding="causal", dilation_rate=5)
    np.testing.assert_array_equal(base[0, :20], after[0, :20])
    assert not np.allclose(base[0, 20:], after[0, 20:])


def test_same_padding_follows_tensorflow():
    # n=10, k=3, d=2, s=3: out ceil(10/3)=4, total pad (4-1)*3 + 5 - 10 = 4, split 2/2.
    # n=11: out 4, total 3, split 1 top / 2 bottom (the odd pixel at the bottom).
    x = RNG.standard_normal((1, 11, 10, 1)).astype(np.float32)
    k = RNG.standard_normal((3, 3, 1, 1)).astype(np.float32)
    out = clatrous.conv2d(x, k, strides=3, dilation_rate=2, padding="same")
    explicit = clatrous.conv2d(x, k, strides=3, dilation_rate=2, padding=((1, 2), (2, 2)))
    assert out.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(out, explicit)


def test_device_array_in_gives_array_out_on_the_same_queue():
    queue = runtime.get_runtime().queue
    x, kernel, bias = _problem()
    x_dev = cl_array.to_device(queue, x)
    out = clatrous.conv2d(x_dev, kernel, bias, padding="same", dilation_rate=2)
    assert isinstance(out, cl_array.Array) and out.queue is queue
    assert_matches_reference(out.get(), x, kernel, bias, padding="same", dilation_rate=2)
    # kernel and bias may live on the device too
    out2 = clatrous.conv2d(
        x_dev,
        cl_array.to_device(queue, kernel),
        cl_array.to_device(queue, bias),
        padding="same",
        dilation_rate=2,
    )
    np.testing.assert_array_equal(out2.get(), out.get())


def test_small_device_results_are_new_arrays_on_the_callers_queue():
    # A small result is made like an array the launch keeps (PyOpenCL's
    # empty_like is cheaper than empty); every call must still get memory of
    # its own, on the queue of its x.
    rt = runtime.get_runtime()
    other = cl.CommandQueue(rt.context, rt.device)
    _, kernel, bias = _problem()
    calls = []
    for queue in (rt.queue, rt.queue, other, rt.queue, other):
        x = RNG.standard_normal((2, 9, 11, 3)).astype(np.float32)
        out = clatrous.conv2d(cl_array.to_device(queue, x), kernel, bias, dilation_rate=2)
        assert out.queue is queue
        calls.append((x, out))
    assert len({out.base_data.int_ptr for _, out in calls}) == len(calls)
    for x, out in calls:
        assert_matches_reference(out.get(), x, kernel, bias, dilation_rate=2)


def test_device_arguments_are_checked_on_every_call():
    # Repeated calls skip the shape checks they passed before; what is checked
    # per call (contiguity, dtype, context) must still be.
    queue = runtime.get_runtime().queue
    x, kernel, _ = _problem(w=8)
    x_dev, k_dev = cl_array.to_device(queue, x), cl_array.to_device(queue, kernel)
    wide = cl_array.to_device(queue, np.repeat(x, 2, axis=2))[:, :, ::2]
    assert wide.shape == x.shape and not wide.flags.c_contiguous
    for _ in range(2):
        assert_matches_reference(clatrous.conv2d(x_dev, k_dev).get(), x, kernel)
        with pytest.raises(ValueError, match="x on the device must be C-contiguous"):
            clatrous.conv2d(wide, k_dev)
        with pytest.raises(TypeError, match="kernel on the device must have dtype float32"):
            clatrous.conv2d(x_dev, cl_array.to_device(queue, kernel.astype(np.float64)))
        with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
            clatrous.conv2d(x_dev, k_dev, cl_array.to_device(queue, np.ones(3, np.float32)))


def test_device_array_call_does_not_share_the_callers_host_arrays():
    # With x on the device the call returns before the kernel has run, so the
    # host kernel and bias must be copied, not read in place later: changing
    # or freeing them right after the call must not change the result.
    # (Shared in place, this gave NaN results or a segfault on PoCL.)
    queue = runtime.get_runtime().queue
    x = RNG.standard_normal((2, 40, 40, 32)).astype(np.float32)
    kernel = aligned_copy(RNG.standard_normal((3, 3, 32, 64)), np.float32)
    bias = aligned_copy(RNG.standard_normal(64), np.float32)
    expected_args = (x, kernel.copy(), bias.copy())
    x_dev = cl_array.to_device(queue, x)
    queue.finish()
    out = clatrous.conv2d(x_dev, kernel, bias, padding="same", dilation_rate=2)
    kernel[:] = np.nan
    bias[:] = np.nan
    assert_matches_reference(out.get(), *expected_args, padding="same", dilation_rate=2)
    # A kernel that needs converting is copied by clatrous; that copy must
    # outlive the launch too.
    kernel64 = RNG.standard_normal((3, 3, 32, 64))
    out = clatrous.conv2d(x_dev, kernel64, padding="same")
    gc.collect()
    clutter = [np.full(kernel64.shape, np.nan, np.float32) for _ in range(8)]  # reuse freed memory
    assert_matches_reference(out.get(), x, kernel64.astype(np.float32), padding="same")
    del clutter


def test_device_array_view_with_offset():
    queue = runtime.get_runtime().queue
    x, kernel, _ = _problem(n=3)
    x_dev = cl_array.to_device(queue, x)[1:]
    assert x_dev.offset > 0
    out = clatrous.conv2d(x_dev, kernel)
    assert_matches_reference(out.get(), x[1:], kernel)


def test_device_argument_forms():
    rt = runtime.get_runtime()
    x, kernel, _ = _problem()
    expected = clatrous.conv2d(x, kernel)
    for device in (rt.device, rt.context, rt.queue):
        np.testing.assert_array_equal(clatrous.conv2d(x, kernel, device=device), expected)


def test_repeated_call_builds_nothing():
    x, kernel, bias = _problem()
    clatrous.conv2d(x, kernel, bias, padding="same", dilation_rate=3)
    builds = runtime.settings.build_count
    for _ in range(5):
        clatrous.conv2d(x, kernel, bias, padding="same", dilation_rate=3)
    x2, _, _ = _problem(h=9, w=11)
    clatrous.conv2d(x2, kernel, bias, padding="same", dilation_rate=3)
    assert runtime.settings.build_count == builds


def test_activation_words():
    x, kernel, bias = _problem()
    words = (None, "linear", "relu", "sigmoid", "tanh", "ReLU", "gelu", "GELU", "silu", "swish")
    for activation in (*words, "elu", "softplus", "leaky_relu"):
        out = clatrous.conv2d(x, kernel, bias, activation=activation)
        assert_matches_reference(out, x, kernel, bias, activation=activation)


def test_float64_precision():
    skip_without_fp64(np.float64)
    x, kernel, bias = _problem(dtype=np.float64)
    out = clatrous.conv2d(x, kernel, bias, padding="same", dilation_rate=2)
    expected = reference.conv2d(x, kernel, bias, padding="same", dilation_rate=2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_devices_command_lists_the_default(capfd):
    from clatrous.__main__ import main

    assert main(["devices"]) == 0
    text = capfd.readouterr().out
    assert "*" in text and runtime.get_runtime().info.name in text
