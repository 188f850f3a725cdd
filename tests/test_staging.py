"""Host staging: the device copies a launch keeps of small weights, and what they must never hide."""

import numpy as np
import pyopencl.array as cl_array
import pytest
from helpers import assert_matches_reference

import clatrous
from clatrous import launch, runtime, staging
from clatrous.arguments import prepare
from clatrous.conv import CONV2D

CALL = dict(padding="same", dilation_rate=2)


def _launch_of(x, kernel, bias):
    prepared = prepare(x, kernel, bias, ndim=2, activation=None, strides=1, **CALL)
    return launch.get_launch(runtime.get_runtime(), CONV2D, prepared)


@pytest.mark.parametrize("on_device", [False, True], ids=["host x", "device x"])
def test_weights_changed_in_place_between_calls_are_read_anew(on_device):
    # A launch keeps the device copy of a small host kernel and bias while the
    # caller passes the same bytes; the caller's arrays changed in place (same
    # object, same shape) must reach the kernel.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    queue = runtime.get_runtime().queue
    given = cl_array.to_device(queue, x) if on_device else x
    for _ in range(4):
        out = clatrous.conv2d(given, kernel, bias, **CALL)
        out = out.get() if on_device else out
        assert_matches_reference(out, x, kernel, bias, **CALL)
        kernel *= -1.5
        kernel[0, 0, 0, 0] += 1.0
        bias += 0.25


def test_a_launch_reuses_its_copy_of_unchanged_weights_and_only_small_ones():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    clatrous.conv2d(x, kernel, bias, **CALL)
    kept = _launch_of(x, kernel, bias).kept
    first = {role: buf for role, (_, buf) in kept.items()}
    assert set(first) == {"w", "b"}
    # Equal bytes in another array: the same copies.
    clatrous.conv2d(x, kernel.copy(), bias.copy(), **CALL)
    assert all(kept[role][1] is buf for role, buf in first.items())
    # A kernel above the limit is never kept.
    cin = staging.KEPT_BYTES // (9 * 4) + 1
    big = rng.standard_normal((3, 3, cin, 1)).astype(np.float32)
    xb = rng.standard_normal((1, 6, 6, cin)).astype(np.float32)
    out = clatrous.conv2d(xb, big, **CALL)
    assert_matches_reference(out, xb, big, **CALL)
    assert "w" not in _launch_of(xb, big, None).kept


def test_the_huge_page_threshold_is_the_drivers():
    # PoCL's buffers come from malloc, reused below glibc's 32 MiB mmap
    # threshold; Intel's runtime maps fresh memory for each (RESULTS.md, Run Z).
    import dataclasses

    info = runtime.get_runtime().info
    assert staging.huge_page_bytes(dataclasses.replace(info, compiler="pocl")) == 32 * 2**20
    assert staging.huge_page_bytes(dataclasses.replace(info, compiler="intel")) == staging.HUGE_PAGE_BYTES
    assert staging.HUGE_PAGE_BYTES == 4 * 2**20
