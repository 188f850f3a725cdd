"""Shared fixtures: the device under test, poisoned outputs, hypothesis profiles.

Every test runs on clatrous's default device, which ``CLATROUS_DEVICE``
chooses (PoCL on the CPU in CI).  Outputs are filled with NaN before every
launch, so an element a kernel forgets to write fails the comparison.
"""

import os
import re

import pytest
from hypothesis import HealthCheck, settings

from clatrous import runtime

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


def _on_oclgrind() -> bool:
    return "oclgrind" in runtime.get_runtime().info.platform.lower()


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """NaN in every output before the launch (on Oclgrind its own tracking of
    uninitialised memory takes over: it misreads the shadow of filled buffers)."""
    before = runtime.settings.poison_outputs
    runtime.settings.poison_outputs = not _on_oclgrind()
    yield
    runtime.settings.poison_outputs = before


@pytest.fixture(scope="session")
def device_info():
    return runtime.get_runtime().info


@pytest.fixture(scope="session")
def has_fp64(device_info):
    return device_info.fp64


def pytest_report_header(config):
    try:
        info = runtime.get_runtime().info
    except Exception as exc:  # the header must never hide the test run itself
        return f"clatrous device: none ({exc})"
    return f"clatrous device: {info.platform} | {info.name} | driver {info.driver} | fp64={info.fp64}"


@pytest.fixture(autouse=True)
def oclgrind_reports(request):
    """On the Oclgrind simulator, any report it prints fails the test.

    Oclgrind writes each error (out-of-bounds access, data race, read of
    uninitialised memory) to stderr, with a "\tKernel: name" line.
    """
    if not _on_oclgrind():
        yield
        return
    capfd = request.getfixturevalue("capfd")
    yield
    err = capfd.readouterr().err
    if re.search(r"^\tKernel: ", err, re.MULTILINE):
        pytest.fail("Oclgrind reported an error:\n" + err[:6000], pytrace=False)
