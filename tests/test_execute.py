"""Execution: launches ordered by events, out-of-order queues, interrupted calls, split problems.

Each test here reproduces a finding of the adversarial pass (issue 16) and
failed before its fix.
"""

import gc
import json

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from helpers import assert_matches_reference, geometry_of, on_oclgrind

import clatrous
from clatrous import launch, params, reference, runtime, staging
from clatrous.conv import CONV2D


def _sizes():
    """A layer slow enough that an unordered read would see it unfinished; small on the simulator."""
    return (1, 10, 12, 4, 4) if on_oclgrind() else (1, 64, 64, 32, 32)


def _problem(rng):
    n, h, w, cin, cout = _sizes()
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    k1 = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    k2 = rng.standard_normal((3, 3, cout, 8)).astype(np.float32)
    return x, k1, k2


@pytest.mark.oclgrind_reuse_false_positive
def test_device_results_carry_their_event_and_the_next_call_waits_for_it():
    # Found by the adversarial pass: a result used on another queue of the
    # same context was read before its kernel had finished (8 of 10 trials).
    rt = runtime.get_runtime()
    other = cl.CommandQueue(rt.context, rt.device)
    x, k1, k2 = _problem(np.random.default_rng(21))
    middle = reference.conv2d(x, k1, padding="same", dilation_rate=2)
    x_dev = cl_array.to_device(rt.queue, x)
    for _ in range(3 if on_oclgrind() else 6):
        first = clatrous.conv2d(x_dev, k1, padding="same", dilation_rate=2)
        assert first.events, "the result must carry the event of the kernel that fills it"
        second = clatrous.conv2d(first.with_queue(other), k2, padding="same")
        assert second.queue is other and second.events
        assert_matches_reference(second.get(), middle, k2, padding="same")


def test_a_large_device_result_dropped_while_the_next_kernel_reads_it_stays_valid(monkeypatch):
    # A large device result on a CPU device is advised as huge pages
    # (staging.device_empty).  A first version wrapped NumPy memory instead:
    # dropping the intermediate freed that memory while the next kernel was
    # still reading it (a segmentation fault in this very pattern).  The
    # next one mapped the new buffer on the main queue, blocking: a host
    # wait for the kernel before it, in the middle of a chain.
    rt = runtime.get_runtime()
    if on_oclgrind():
        pytest.skip("needs a result of 4 MiB; too slow on the simulator")
    monkeypatch.setattr(staging, "HUGE_PAGE_BYTES_BY_COMPILER", {})  # the path from 4 MiB on every driver
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 512, 520, 4)).astype(np.float32)
    dk = rng.standard_normal((3, 3, 4, 1)).astype(np.float32)
    pk = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    x_dev = cl_array.to_device(rt.queue, x)
    rt.queue.finish()
    blocking = []
    real_map = cl.enqueue_map_buffer

    def map_buffer(queue, *args, **kwargs):
        if queue is rt.queue and kwargs.get("is_blocking", True):
            blocking.append("enqueue_map_buffer")
        return real_map(queue, *args, **kwargs)

    monkeypatch.setattr(cl, "enqueue_map_buffer", map_buffer)
    monkeypatch.setattr(cl.CommandQueue, "finish", lambda q, _r=cl.CommandQueue.finish: (
        blocking.append("finish") if q is rt.queue else None) or _r(q))  # fmt: skip
    middle = clatrous.depthwise_conv2d(x_dev, dk, padding="same", dilation_rate=2)
    assert middle.nbytes >= staging.huge_page_bytes(rt.info)
    result = clatrous.conv2d(middle, pk)
    assert not blocking, f"the chain waited on the host: {blocking}"
    monkeypatch.undo()
    del middle  # only the queued kernel holds it now
    gc.collect()
    expected = reference.depthwise_conv2d(x, dk, padding="same", dilation_rate=2)
    assert_matches_reference(result.get(), expected, pk)


def _out_of_order_queue():
    rt = runtime.get_runtime()
    props = cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE
    if not rt.device.queue_properties & props:
        pytest.skip(f"{rt.info.name} has no out-of-order queues")
    return cl.CommandQueue(rt.context, rt.device, properties=props)


@pytest.mark.oclgrind_reuse_false_positive
def test_out_of_order_queues_give_the_same_results():
    # Found by the adversarial pass: on an out-of-order queue the read-back
    # did not wait for the kernel (1 of 30 small host calls was wrong).
    queue = _out_of_order_queue()
    rng = np.random.default_rng(22)
    for i in range(10 if on_oclgrind() else 30):
        x = rng.standard_normal((1, 7 + i % 3, 9, 3)).astype(np.float32)
        k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
        out = clatrous.conv2d(x, k, padding="same", dilation_rate=2, device=queue)
        assert_matches_reference(out, x, k, padding="same", dilation_rate=2)
    # Device arrays chained on it, host kernel and bias, a view with an offset.
    x, k1, k2 = _problem(rng)
    x_dev = cl_array.to_device(queue, np.concatenate([x, x]))[1:]
    bias = rng.standard_normal(k1.shape[-1]).astype(np.float32)
    first = clatrous.conv2d(x_dev, k1, bias, padding="same", dilation_rate=3, activation="relu")
    second = clatrous.conv2d(first, cl_array.to_device(queue, k2), padding="same")
    middle = reference.conv2d(x, k1, bias, padding="same", dilation_rate=3, activation="relu")
    assert_matches_reference(second.get(), middle, k2, padding="same")


def test_an_interrupted_call_never_leaves_a_kernel_writing_into_host_memory(monkeypatch):
    # Found by the adversarial pass: an exception (a KeyboardInterrupt, say)
    # between the enqueue and the read-back unwound the call and freed the
    # result that a CPU device's kernel was still writing in place (SIGSEGV).
    enqueued = []
    real = launch.Launch.enqueue

    def spy(self, *args, **kwargs):
        event = real(self, *args, **kwargs)
        enqueued.append(event)
        return event

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.Launch, "enqueue", spy)
    monkeypatch.setattr(staging, "read_back", interrupted)
    x, k1, _ = _problem(np.random.default_rng(23))
    with pytest.raises(KeyboardInterrupt):
        clatrous.conv2d(x, k1, padding="same", dilation_rate=2)
    assert enqueued
    complete = cl.command_execution_status.COMPLETE
    assert all(event.command_execution_status == complete for event in enqueued)


def test_a_tuned_configuration_runs_every_piece_of_a_split_problem(cache, monkeypatch):
    # Found by the adversarial pass: a stored tiled configuration failed
    # validation for a band's smaller size, so the bands ran another kernel
    # and the split result differed from the one-piece result; and a tuned
    # entry was ignored for any other image size of its class.
    info = runtime.get_runtime().info
    rng = np.random.default_rng(24)
    x = rng.standard_normal((1, 15, 13, 40)).astype(np.float32)
    k = rng.standard_normal((3, 3, 40, 16)).astype(np.float32)
    kwargs = dict(padding="same", dilation_rate=2)
    g = geometry_of(x, k, **kwargs)
    tiled = {"VW": 8, "NV": 2, "PX": 4, "CT": 16, "NB": 4, "RW": 16}  # spans more rows than a band has
    assert params.fits(info, CONV2D.variant("tiled"), tiled, np.float32, g)
    params.store(info.key, params.class_key(CONV2D, g, np.float32), {"variant": "tiled", "config": tiled})
    other_size = geometry_of(np.ones((2, 40, 50, 40), np.float32), k, **kwargs)
    assert params.choose(info, CONV2D, other_size, np.float32) == ("tiled", tiled)

    ran = []
    real = launch.Launch.enqueue

    def spy(self, *args, **kwargs):
        ran.append(self.plan.variant)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(launch.Launch, "enqueue", spy)
    whole = clatrous.conv2d(x, k, **kwargs)
    monkeypatch.setattr(runtime.settings, "max_alloc_bytes", 24000)  # the kernel (23040 bytes), ~11 rows
    split = clatrous.conv2d(x, k, **kwargs)
    assert len(ran) > 2 and set(ran) == {"tiled"}
    np.testing.assert_array_equal(split, whole)
    assert_matches_reference(split, x, k, **kwargs)
    stored = json.loads((cache / "tuning.json").read_text())
    assert stored["schema"] == params.SCHEMA


@pytest.mark.oclgrind_reuse_false_positive  # as the property test of this path (test_conv_properties.py)
def test_channels_first_through_the_transposes_reuses_its_intermediates_safely():
    # A channels-first layer with many channels runs x -> transpose ->
    # convolution -> transpose, with the two intermediates taken from the
    # runtime's workspace call after call.  Chained device calls, each on
    # new data: every result must be its own (the next call's transposes
    # wait for the last readers of the intermediates, on any queue).
    from unittest import mock

    rt = runtime.get_runtime()
    rng = np.random.default_rng(24)
    n, h, w, cin, cout = (1, 6, 7, 4, 4) if on_oclgrind() else (2, 24, 30, 16, 16)
    k = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    xs = [rng.standard_normal((n, cin, h, w)).astype(np.float32) for _ in range(4)]
    kwargs = dict(padding="same", dilation_rate=2, data_format="channels_first")
    with mock.patch.object(params, "CHANNELS_FIRST_MACS", 0):
        results = [clatrous.conv2d(cl_array.to_device(rt.queue, x), k, **kwargs) for x in xs]
        host = clatrous.conv2d(xs[0], k, **kwargs)
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.get(), reference.conv2d(x, k, **kwargs), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(host, reference.conv2d(xs[0], k, **kwargs), rtol=1e-4, atol=1e-4)


def test_channels_first_through_the_transposes_names_a_device_out_of_memory(monkeypatch):
    # Its intermediates are allocated in the chain: a driver's MemoryError
    # there is clatrous's DeviceMemoryError, as for every other launch.
    from unittest import mock

    from clatrous.errors import DeviceMemoryError

    def no_memory(*args, **kwargs):
        raise cl.MemoryError("clCreateBuffer", cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE, "out of memory")

    monkeypatch.setattr(staging, "device_empty", no_memory)
    x = np.random.default_rng(25).standard_normal((1, 4, 6, 7)).astype(np.float32)
    with (
        mock.patch.object(params, "CHANNELS_FIRST_MACS", 0),
        pytest.raises(DeviceMemoryError, match="x \\(1, 4, 6, 7\\)"),
    ):
        clatrous.conv2d(x, np.ones((3, 3, 4, 2), np.float32), data_format="channels_first")


def test_a_configuration_that_crashed_pocl_in_a_group_of_its_choosing_runs():
    # Found by the tuner (a SIGSEGV in PoCL's worker threads, the whole
    # process gone): blocked {VW 4, NV 4, PX 6} on 33x33 with 256 output
    # channels, in the 8 x 6 x 33 work-group PoCL chose itself. Given a group
    # explicitly (launch.driver_group), PoCL runs it.
    if on_oclgrind():
        pytest.skip("160 M multiply-adds: too slow on the simulator")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((1, 33, 33, 64)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 64, 256)).astype(np.float32)
    with params.forced("blocked", {"VW": 4, "NV": 4, "PX": 6}):
        out = clatrous.conv2d(x, kernel, padding="same", dilation_rate=6)
    assert_matches_reference(out, x, kernel, padding="same", dilation_rate=6)


def test_the_group_a_launch_asks_pocl_for_is_bounded_and_divides_the_ndrange():
    import dataclasses

    info = runtime.get_runtime().info
    pocl, other = dataclasses.replace(info, compiler="pocl"), dataclasses.replace(info, compiler="intel")
    assert launch.driver_group(other, (16, 6, 33), None) is None  # the driver chooses
    assert launch.driver_group(pocl, (16, 6, 33), (1, 1, 1)) == (1, 1, 1)  # the plan's own
    for size in [(16, 6, 33), (1, 4000, 4), (128, 512, 1), (7, 13, 1), (1, 1, 1)]:
        group = launch.driver_group(pocl, size, None)
        assert all(count % g == 0 for count, g in zip(size, group, strict=True)), (size, group)
        assert np.prod(group) <= launch.POCL_GROUP_MOST, (size, group)
    assert launch.driver_group(pocl, (128, 512, 1), None) == (128, 2, 1)


def test_winograd_launches_take_turns_on_their_scratch(monkeypatch):
    # Every call of one Winograd configuration on one shape runs the same
    # cached launch, whose work-items keep their partial sums in the
    # launch's scratch buffer: each launch must wait for the one before (an
    # out-of-order queue may otherwise run them at once), and must not
    # count on finding the scratch as anything but the last one left it.
    # (PoCL and Intel's runtime here run an out-of-order queue's kernels one
    # at a time, so the waits are checked as enqueued.)
    rt = runtime.get_runtime()
    enqueued = []
    real = launch.cl.enqueue_nd_range_kernel

    def spy(queue, kernel, global_size, local_size, wait_for=None, **kwargs):
        event = real(queue, kernel, global_size, local_size, wait_for=wait_for, **kwargs)
        enqueued.append((list(wait_for or ()), event))
        return event

    monkeypatch.setattr(launch.cl, "enqueue_nd_range_kernel", spy)
    rng = np.random.default_rng(41)
    n, h, w, cin, cout = (1, 9, 10, 12, 8) if on_oclgrind() else (2, 24, 24, 48, 32)
    xs = [rng.standard_normal((n, h, w, cin)).astype(np.float32) for _ in range(3 if on_oclgrind() else 6)]
    k = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    config = {"M": 3, "VW": 8, "NV": 2, "NS": 2, "NT": 12, "TB": 6, "CT": 16, "WI": 2}
    with params.forced("winograd", config):
        outs = [
            clatrous.conv2d(cl_array.to_device(rt.queue, x), k, padding="same", dilation_rate=2) for x in xs
        ]
    assert len(enqueued) == len(xs)
    for (_, before), (waits, _) in zip(enqueued, enqueued[1:], strict=False):
        assert any(e.int_ptr == before.int_ptr for e in waits), (
            "a launch did not wait for the last user of its scratch"
        )
    for x, out in zip(xs, outs, strict=True):
        assert_matches_reference(out.get(), x, k, padding="same", dilation_rate=2)


# Oclgrind: as the other tests of this path, reports at reused addresses
# after the test before it (on the blocked kernel this path then runs).
@pytest.mark.oclgrind_reuse_false_positive
def test_channels_first_through_the_transposes_holds_the_weights_it_lends():
    # A host call through the channels-last kernels lends its weights to the
    # kernel in place; weights that are not aligned are lent as an aligned
    # copy, which only the buffer kept alive, and that buffer was dropped
    # as soon as the kernel was enqueued: the kernel then read freed memory
    # (every other call wrong, found by the benchmark's channels-first row).
    rng = np.random.default_rng(43)
    n, h, w, cin, cout = (1, 6, 7, 64, 64) if on_oclgrind() else (1, 20, 20, 64, 64)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    room = np.empty(3 * 3 * cin * cout + 1, np.float32)
    kernel = room[1:].reshape(3, 3, cin, cout)  # 4 bytes past an aligned start, larger than 64 KiB
    kernel[...] = rng.standard_normal(kernel.shape) / 24
    assert kernel.nbytes > staging.SMALL_BYTES and kernel.ctypes.data % staging.ALIGN
    kwargs = dict(padding="same", dilation_rate=2, data_format="channels_first")
    g = geometry_of(x, kernel, padding="same", dilation_rate=2, channels_first=True)
    assert not params.channels_first_in_place(runtime.get_runtime().info, g)  # through the transposes
    expected = reference.conv2d(x, kernel, **kwargs)
    for _ in range(2 if on_oclgrind() else 6):
        np.testing.assert_allclose(clatrous.conv2d(x, kernel, **kwargs), expected, rtol=1e-4, atol=1e-4)
