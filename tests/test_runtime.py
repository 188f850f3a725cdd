"""Device choice, capability checks and the program cache."""

import dataclasses

import numpy as np
import pytest

import clatrous
from clatrous import runtime
from clatrous.errors import BuildError, DeviceNotFoundError, UnsupportedDeviceError


@pytest.fixture
def fresh_default(monkeypatch):
    """Let a test choose the default device again, then restore the real one."""
    before = runtime.default_device()
    runtime.set_default_device(None)
    yield
    runtime.set_default_device(before)


def test_environment_variable_picks_by_name(monkeypatch, fresh_default):
    info = runtime.get_runtime().info
    monkeypatch.setenv("CLATROUS_DEVICE", info.name[-6:].upper())
    assert runtime.device_info(runtime.default_device()).name.casefold().endswith(info.name[-6:].casefold())


def test_environment_variable_picks_by_indices(monkeypatch, fresh_default):
    pi, di, _, device = runtime.list_devices()[-1]
    monkeypatch.setenv("CLATROUS_DEVICE", f"{pi}:{di}")
    assert runtime.default_device().int_ptr == device.int_ptr


def test_environment_variable_without_match_lists_devices(monkeypatch, fresh_default):
    monkeypatch.setenv("CLATROUS_DEVICE", "__import__('os').system('false')")
    with pytest.raises(DeviceNotFoundError, match="no OpenCL device matches") as info:
        runtime.default_device()
    assert "available:" in str(info.value)


def test_float64_on_a_device_without_fp64_is_a_clear_error(monkeypatch):
    rt = runtime.get_runtime()
    monkeypatch.setattr(rt, "info", dataclasses.replace(rt.info, fp64=False))
    x = np.ones((1, 5, 5, 1))
    with pytest.raises(UnsupportedDeviceError, match="float64") as info:
        clatrous.conv2d(x, np.ones((2, 2, 1, 1)))
    assert rt.info.name in str(info.value)
    assert isinstance(info.value, TypeError)
    # float32 still works on such a device
    assert clatrous.conv2d(x.astype(np.float32), np.ones((2, 2, 1, 1))).dtype == np.float32


def test_build_failure_carries_log_options_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("CLATROUS_CACHE_DIR", str(tmp_path))
    rt = runtime.get_runtime()
    options = ("-DPRECISION=16", "-DACTIVATION=0")
    with pytest.raises(BuildError) as info:
        rt.program("conv2d_direct.cl", options)
    err = info.value
    assert err.options == options
    assert "PRECISION must be 32 or 64" in err.log  # the header's #error
    assert "-DPRECISION=16" in str(err) and err.source_path in str(err)
    saved = open(err.source_path).read()
    assert saved.startswith("// conv2d_direct.cl built with: -DPRECISION=16")
    assert "#define PRECISION 16" in saved
    assert "#ifndef CLATROUS_COMMON_H" in saved  # the header spliced in: the file replays alone


def test_each_program_builds_once():
    rt = runtime.get_runtime()
    options = ("-DPRECISION=32", "-DACTIVATION=1", "-DHAS_BIAS=1")
    first = rt.program("conv2d_direct.cl", options)
    count = runtime.settings.build_count
    assert rt.program("conv2d_direct.cl", options) is first
    assert runtime.settings.build_count == count


def test_every_kernel_source_compiles_alone_with_its_defaults():
    # Every .cl file in kernels/ (one kernel per file, named as the file).
    names = [name[:-3] for name in runtime.kernel_files()]
    assert len(names) >= 6 and "starlet_combine" in names and "conv2d_depthwise" in names
    rt = runtime.get_runtime()
    for name in names:
        assert getattr(rt.program(f"{name}.cl", ()), name).num_args > 4


def test_drivers_are_found_by_their_short_names(monkeypatch, fresh_default):
    # Found by the adversarial pass: CLATROUS_DEVICE=pocl matched nothing
    # (the platform calls itself "Portable Computing Language").
    platforms = {p.name for _, _, p, _ in runtime.list_devices()}
    if "Portable Computing Language" not in platforms:
        pytest.skip("no PoCL platform here")
    monkeypatch.setenv("CLATROUS_DEVICE", "pocl")
    assert runtime.default_device().platform.name == "Portable Computing Language"


class _Named:
    def __init__(self, name, vendor, version=""):
        self.name, self.vendor, self.version = name, vendor, version


def test_a_platform_that_matches_wins_over_a_device_name_that_does(monkeypatch):
    # On an Intel CPU, PoCL's device is "pthread-...-Intel(R) Xeon(R)": with
    # both drivers registered, CLATROUS_DEVICE=Intel chose PoCL.
    pocl = _Named("Portable Computing Language", "The pocl project", "OpenCL 3.0 PoCL 3.1")
    intel = _Named("Intel(R) OpenCL", "Intel(R) Corporation", "OpenCL 3.0 LINUX")
    on_pocl = _Named("pthread-skylake-avx512-Intel(R) Xeon(R) Processor", "GenuineIntel")
    on_intel = _Named("Intel(R) Xeon(R) Processor", "Intel(R) Corporation")
    listing = [(0, 0, pocl, on_pocl), (1, 0, intel, on_intel)]
    monkeypatch.setattr(runtime, "list_devices", lambda: listing)
    assert runtime.find_device("Intel") is on_intel
    assert runtime.find_device("pocl") is on_pocl
    assert runtime.find_device("pthread") is on_pocl
    assert runtime.find_device("xeon") is on_pocl  # only devices match: the first
    assert runtime.find_device("1:0") is on_intel


def test_a_long_device_name_is_not_echoed_whole(monkeypatch, fresh_default):
    monkeypatch.setenv("CLATROUS_DEVICE", "x" * 100_000)
    with pytest.raises(DeviceNotFoundError) as info:
        runtime.default_device()
    assert len(str(info.value)) < 2000 and "100000 characters" in str(info.value)


def test_a_queue_whose_context_was_collected_works_or_names_device(cl_device):
    """Intel's CPU runtime does not keep a queue's context alive once the
    Context object is gone; clatrous says so instead of a LogicError."""
    import gc

    import pyopencl as cl

    queue = cl.CommandQueue(cl.Context([cl_device]), cl_device)
    gc.collect()
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    k = np.ones((2, 2, 1, 1), np.float32)
    try:
        y = clatrous.conv2d(x, k, device=queue)
    except ValueError as exc:
        assert "device" in str(exc) and "context" in str(exc)
    else:
        np.testing.assert_allclose(y, clatrous.reference.conv2d(x, k), rtol=1e-6)


def test_pyopencl_ctx_is_honoured_when_clatrous_device_is_unset(monkeypatch, fresh_default):
    # Found by the new-user pass (issue 15): PYOPENCL_CTX was ignored.
    monkeypatch.delenv("CLATROUS_DEVICE", raising=False)
    pi, di, platform, device = runtime.list_devices()[-1]
    monkeypatch.setenv("PYOPENCL_CTX", f"{pi}:{di}")
    assert runtime.default_device().int_ptr == device.int_ptr
    runtime.set_default_device(None)
    # Names as PyOpenCL takes them: a platform substring, a device index.
    monkeypatch.setenv("PYOPENCL_CTX", f"{platform.name[:6].lower()}:{di}")
    chosen = runtime.default_device()
    assert chosen.platform.name.startswith(platform.name[:6])
    # CLATROUS_DEVICE wins over it.
    runtime.set_default_device(None)
    first_pi, first_di, _, first = runtime.list_devices()[0]
    monkeypatch.setenv("CLATROUS_DEVICE", f"{first_pi}:{first_di}")
    assert runtime.default_device().int_ptr == first.int_ptr


@pytest.mark.parametrize("spec", ["99", "0:99", "no such platform", "0:no such device"])
def test_a_pyopencl_ctx_that_matches_nothing_names_the_variable(monkeypatch, fresh_default, spec):
    monkeypatch.delenv("CLATROUS_DEVICE", raising=False)
    monkeypatch.setenv("PYOPENCL_CTX", spec)
    with pytest.raises(DeviceNotFoundError, match="PYOPENCL_CTX") as info:
        runtime.default_device()
    assert "available:" in str(info.value)


def test_the_cache_folder_comes_from_platformdirs(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv("CLATROUS_CACHE_DIR", raising=False)
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name, appauthor=None: str(tmp_path / name))
    assert runtime.cache_dir() == tmp_path / "clatrous"
    monkeypatch.setenv("CLATROUS_CACHE_DIR", str(tmp_path / "mine"))
    assert runtime.cache_dir() == tmp_path / "mine"


def test_the_compiler_is_read_from_the_platform_name():
    names = {
        "Portable Computing Language": "pocl",
        "Intel(R) OpenCL": "intel",
        "Intel(R) OpenCL Graphics": "intel",
        "NVIDIA CUDA": "nvidia",
        "AMD Accelerated Parallel Processing": "amd",
        "Apple": "apple",
        "Oclgrind": "oclgrind",
        "rusticl": "other",
    }
    assert {name: runtime.compiler_of(name) for name in names} == names
    info = runtime.get_runtime().info
    assert info.compiler == runtime.compiler_of(info.platform)
