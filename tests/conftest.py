"""Shared fixtures: every test on every OpenCL device, poisoned outputs, hypothesis profiles.

Every test runs once per usable OpenCL device (PyOpenCL's
``pytest_generate_tests_for_pyopencl`` habit), or only on the device
``CLATROUS_DEVICE`` names (CI runs the suite once per implementation that
way).  During a test that device is clatrous's default; with
``CLATROUS_TEST_QUEUE=out-of-order``, an out-of-order queue of it is.  Outputs are filled
with NaN before every launch, so an element a kernel forgets to write fails
the comparison.
"""

import os
import re

import pyopencl as cl
import pytest
from helpers import on_oclgrind
from hypothesis import HealthCheck, settings

from clatrous import launch, params, runtime

# "ci" (the default) draws the same examples on every run, so that CI's verdict
# does not depend on luck; "thorough" explores afresh each time and more widely
# (HYPOTHESIS_PROFILE=thorough).
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=400, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _devices_under_test():
    if os.environ.get(runtime.ENV_DEVICE, "").strip():
        return [runtime.default_device()]
    return runtime.usable_devices()


def _label(device) -> str:
    info = runtime.device_info(device)
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{info.platform.split()[0]}-{info.name}")[:40]


def pytest_generate_tests(metafunc):
    if "cl_device" in metafunc.fixturenames:
        devices = _devices_under_test()
        metafunc.parametrize("cl_device", devices, ids=[_label(d) for d in devices], scope="session")


#: CLATROUS_TEST_QUEUE=out-of-order runs every test on an out-of-order queue
#: of the device (CI does so for the sweep and the property tests).
QUEUE_MODE = os.environ.get("CLATROUS_TEST_QUEUE", "in-order")
_queues = {}


def _default_for(device):
    if QUEUE_MODE == "in-order":
        return device
    if QUEUE_MODE != "out-of-order":
        raise pytest.UsageError(f"CLATROUS_TEST_QUEUE must be in-order or out-of-order, got {QUEUE_MODE!r}")
    if device.int_ptr not in _queues:
        props = cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE
        if not device.queue_properties & props:
            pytest.skip(f"{device.name} has no out-of-order queues")
        # The context is kept with its queue: Intel's CPU runtime does not
        # retain a queue's context, so a queue whose Context was collected
        # answers INVALID_CONTEXT.
        context = cl.Context([device])
        _queues[device.int_ptr] = (context, cl.CommandQueue(context, device, properties=props))
    return _queues[device.int_ptr][1]


@pytest.fixture(autouse=True)
def default_device_under_test(cl_device):
    """The device of this run of the test is clatrous's default while it runs."""
    before = runtime.default_device()
    runtime.set_default_device(_default_for(cl_device))
    yield cl_device
    runtime.set_default_device(before)


@pytest.fixture(autouse=True)
def poisoned_outputs(default_device_under_test):
    """NaN in every output before the launch (on Oclgrind its own tracking of
    uninitialised memory takes over: it misreads the shadow of filled buffers)."""
    before = runtime.settings.poison_outputs
    runtime.settings.poison_outputs = not on_oclgrind()
    yield
    runtime.settings.poison_outputs = before


def pytest_report_header(config):
    try:
        devices = _devices_under_test()
    except Exception as exc:  # the header must never hide the test run itself
        return f"clatrous devices: none ({exc})"
    lines = []
    for device in devices:
        info = runtime.device_info(device)
        lines.append(
            f"clatrous device: {info.platform} | {info.name} | driver {info.driver} | fp64={info.fp64}"
        )
    return lines


@pytest.fixture(autouse=True)
def oclgrind_reports(request, default_device_under_test):
    """On the Oclgrind simulator, any report it prints fails the test.

    Oclgrind writes each error (out-of-bounds access, data race, read of
    uninitialised memory) to stderr, with a "\\tKernel: name" line.
    """
    if not on_oclgrind():
        yield
        return
    capfd = request.getfixturevalue("capfd")
    yield
    err = capfd.readouterr().err
    if request.node.get_closest_marker("oclgrind_reuse_false_positive"):
        # Only the uninitialised-value reports are set aside (see the marker
        # in pyproject.toml); any other report still fails the test.
        err = re.sub(r"[^\n\t]*[Uu]ninitiali[sz]ed value[^\n]*\n(\t[^\n]*\n|\n)*", "", err)
    if re.search(r"^\tKernel: ", err, re.MULTILINE):
        pytest.fail("Oclgrind reported an error:\n" + err[:6000], pytrace=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder (for the tuning database), with launches re-planned before and after."""
    monkeypatch.setenv("CLATROUS_CACHE_DIR", str(tmp_path))
    params.forget_cached_database()
    launch.forget_launches()
    yield tmp_path
    params.forget_cached_database()
    launch.forget_launches()
