"""Defaults, forced choices and the per-user JSON tuning database, and the launches that use them."""

import dataclasses
import json
import os

import numpy as np
import pytest
from helpers import assert_matches_reference, forced_call, geometry_of

import clatrous
from clatrous import launch, params, runtime, tuner, variants
from clatrous.arguments import prepare
from clatrous.conv import CONV2D

X_SHAPE, K_SHAPE = (1, 9, 10, 3), (3, 3, 3, 8)
GEOMETRY = dict(padding="same", dilation_rate=2)


def _geometry():
    return geometry_of(np.ones(X_SHAPE, np.float32), np.ones(K_SHAPE, np.float32), **GEOMETRY)


def _defaults(info, g):
    return CONV2D.defaults(info, g, np.float32)


@pytest.mark.parametrize(
    "content",
    [
        "not json at all {",
        "[1, 2, 3]",
        '{"schema": 1, "devices": {"x": {"k": {"variant": "os.system", "config": {}}}}}',
        '{"schema": 1, "devices": {"x": {"k": {"variant": "blocked", "config": {"VW": "16"}}}}}',
        "\x00\xff\xfe garbage",
    ],
)
def test_a_corrupt_database_is_ignored_then_rebuilt(cache, content):
    (cache / "tuning.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert all(not entries for entries in params.load_database().values())
    info = runtime.get_runtime().info
    assert params.choose(info, CONV2D, _geometry(), np.float32) == _defaults(info, _geometry())
    tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert json.loads((cache / "tuning.json").read_text())["schema"] == 1


def test_storing_keeps_entries_it_does_not_understand_and_the_file_mode(cache):
    info = runtime.get_runtime().info
    future = {"variant": "winograd", "config": {"TILE": 4}}  # a variant a newer clatrous may add
    odd_device = {"k": "not even an entry"}
    data = {"schema": 1, "devices": {info.key: {"future class": future}, "other device": odd_device}}
    path = cache / "tuning.json"
    path.write_text(json.dumps(data))
    path.chmod(0o640)
    tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    saved = json.loads(path.read_text())
    assert saved["devices"][info.key]["future class"] == future
    assert saved["devices"]["other device"] == odd_device
    assert len(saved["devices"][info.key]) == 2
    assert path.stat().st_mode & 0o777 == 0o640
    # The entry it does not understand is never chosen.
    assert params.choose(info, CONV2D, _geometry(), np.float32) == ("direct", {})


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep", "huge", "directory"])
def test_a_database_that_is_no_regular_json_file_is_ignored_at_once(cache, kind):
    # Found by the adversarial pass: a FIFO hung every call, a link to
    # /dev/zero was read without end, deeply nested JSON raised RecursionError.
    import os

    path = cache / "tuning.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "huge":
        path.write_text(
            '{"schema": 1, "devices": {}, "pad": "' + "x" * (params.MAX_DATABASE_BYTES + 1) + '"}'
        )
    else:
        path.mkdir()
    assert params.load_database() == {}
    x = np.random.default_rng(3).standard_normal(X_SHAPE).astype(np.float32)
    k = np.random.default_rng(4).standard_normal(K_SHAPE).astype(np.float32)
    assert_matches_reference(clatrous.conv2d(x, k, **GEOMETRY), x, k, **GEOMETRY)


def test_an_entry_outside_the_search_space_is_not_used(cache):
    info = runtime.get_runtime().info
    g = _geometry()
    bogus = {"variant": "blocked", "config": {"VW": 3, "NV": 1, "PX": 2}}
    data = {"schema": 1, "devices": {info.key: {params.class_key(CONV2D, g, np.float32): bogus}}}
    (cache / "tuning.json").write_text(json.dumps(data))
    assert params.choose(info, CONV2D, g, np.float32) == _defaults(info, g)


def test_default_table_picks_applicable_configurations():
    info = runtime.get_runtime().info
    for cin, cout, k in [(1, 1, 5), (3, 8, 3), (64, 64, 3), (2048, 256, 3), (5, 7, 2), (256, 96, 3)]:
        x = np.ones((1, 12, 12, cin), np.float32)
        g = geometry_of(x, np.ones((k, k, cin, cout), np.float32), padding="same", dilation_rate=2)
        name, config = _defaults(info, g)
        variant = CONV2D.variant(name)
        assert variant.valid(config) and variant.computes(g, config)
        assert variant.complete(config) in [variant.complete(c) for c in variant.candidates(g, np.float32)]
    # Channels-first data: the plane kernel, whatever the channels and groups.
    for cin, cout, groups, k in [(3, 8, 1, 3), (64, 64, 1, 3), (6, 6, 6, 3), (4, 12, 2, 5), (5, 7, 1, 2)]:
        x = np.ones((1, cin, 12, 12), np.float32)
        g = geometry_of(x, np.ones((k, k, cin // groups, cout), np.float32), padding="same", dilation_rate=2,
                        groups=groups, channels_first=True)  # fmt: skip
        name, config = _defaults(info, g)
        assert name == "plane" and config in variants.PLANE.candidates(g, np.float32), (g, config)


def test_tiled_partial_sums_stay_bounded_on_long_rows():
    # A tiled work-item keeps its partial sums in local memory between channel
    # tiles: a whole 16000-pixel row times many rows would not fit.
    x = np.ones((1, 1, 16000, 40), np.float32)
    g = geometry_of(x, np.ones((1, 2, 40, 16), np.float32), padding="same", dilation_rate=256)
    configs = variants.TILED.candidates(g, np.float32)
    assert configs
    assert max(variants.TILED.local_bytes(g, c, np.float32) for c in configs) <= variants.TILED_LOCAL_BYTES
    info = runtime.get_runtime().info
    widest = max(
        (c for c in configs if params.fits(info, variants.TILED, c, np.float32, g)),
        key=lambda c: c["NB"] * c["PX"],
    )
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 700, 40)).astype(np.float32)  # longer than the widest NB*PX
    k = rng.standard_normal((1, 2, 40, 16)).astype(np.float32)
    for config in (widest, {**widest, "NB": 2, "RW": 2}):  # one row, and row groups with a partial last one
        out = forced_call(("tiled", config), clatrous.conv2d, x, k, padding="same", dilation_rate=256)
        assert_matches_reference(out, x, k, padding="same", dilation_rate=256)


def test_local_memory_decides_what_a_device_can_run():
    info = runtime.get_runtime().info
    x = np.ones((1, 33, 33, 2048), np.float32)
    # Rate 18, where the defaults keep the channel-tiled kernel (not Winograd).
    g = geometry_of(x, np.ones((3, 3, 2048, 256), np.float32), padding="same", dilation_rate=18)
    roomy = dataclasses.replace(info, kind="cpu", local_mem=1 << 20, compute_units=2)
    variant, config = _defaults(roomy, g)
    assert variant == "tiled" and params.fits(roomy, variants.TILED, config, np.float32, g)
    # A device with little local memory gets a smaller span, or the blocked kernel.
    for local_mem in (32 * 1024, 2 * 1024):
        small = dataclasses.replace(roomy, local_mem=local_mem)
        variant, config = _defaults(small, g)
        assert params.fits(small, CONV2D.variant(variant), config, np.float32, g)
        assert CONV2D.variant(variant).applies(g, config)
    assert _defaults(dataclasses.replace(roomy, local_mem=2 * 1024), g)[0] == "blocked"
    # Forcing a configuration the device cannot hold fails before any build.
    too_big = {"VW": 8, "NV": 1, "PX": 8, "CT": 32, "NB": 64, "RW": 1024}
    builds = runtime.settings.build_count
    xs = np.ones((1, 3, 5, 40), np.float32)
    with pytest.raises(clatrous.UnsupportedDeviceError, match="local memory"):
        forced_call(("tiled", too_big), clatrous.conv2d, xs, np.ones((1, 1, 40, 8), np.float32))
    assert runtime.settings.build_count == builds


def test_forced_choices_are_cached_per_configuration(cache):
    # The tuner times each candidate through get_launch: a key that ignored the
    # configuration would time one kernel under every candidate's name.
    rt = runtime.get_runtime()
    x = np.ones(X_SHAPE, np.float32)
    prepared = prepare(x, np.ones(K_SHAPE, np.float32), None, ndim=2, activation=None, strides=1, **GEOMETRY)
    wide, narrow = {"VW": 8, "NV": 1, "PX": 2}, {"VW": 4, "NV": 1, "PX": 2}
    first = launch.get_launch(rt, CONV2D, prepared, ("blocked", wide))
    # The same configuration with its keys in another order: the same launch.
    assert launch.get_launch(rt, CONV2D, prepared, ("blocked", {"PX": 2, "NV": 1, "VW": 8})) is first
    other = launch.get_launch(rt, CONV2D, prepared, ("blocked", narrow))
    assert other is not first
    # A plan lists every parameter: those left out at their defaults.
    assert dict(first.plan.config) == {**wide, "LC": 0, "LX": 0}
    assert dict(other.plan.config) == {**narrow, "LC": 0, "LX": 0}
    default = launch.get_launch(rt, CONV2D, prepared)
    name, config = params.choose(rt.info, CONV2D, prepared.geometry, np.float32)
    assert (default.plan.variant, dict(default.plan.config)) == (name, CONV2D.variant(name).complete(config))


_WRITER = """
import sys
from clatrous import params
name, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    params.store("device " + name, f"class {i}", {"variant": "direct", "config": {}})
"""


def _writers(tmp_path, names, count):
    import subprocess
    import sys

    env = {**os.environ, "CLATROUS_CACHE_DIR": str(tmp_path)}
    return [subprocess.Popen([sys.executable, "-c", _WRITER, name, str(count)], env=env) for name in names]


def test_concurrent_tuners_keep_every_entry(tmp_path):
    # Found in review (issue 15): six processes storing 25 entries each kept
    # 111 of 150, each rewriting the file from what it had read earlier.
    names = [str(i) for i in range(6)]
    for proc in _writers(tmp_path, names, 25):
        assert proc.wait(timeout=120) == 0
    saved = params.load_database(tmp_path / "tuning.json")
    assert sorted(saved) == sorted(f"device {name}" for name in names)
    assert all(len(entries) == 25 for entries in saved.values())


def test_a_tuner_killed_mid_write_leaves_a_valid_database(tmp_path):
    import time

    (proc,) = _writers(tmp_path, ["killed"], 100000)
    path = tmp_path / "tuning.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(params.load_database(path).get("device killed", {})) < 20:
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    saved = json.loads(path.read_text())  # parses: never half written
    assert len(saved["devices"]["device killed"]) >= 20
    params.store("device other", "class 0", {"variant": "direct", "config": {}}, path)
    assert len(params.load_database(path)["device killed"]) == len(saved["devices"]["device killed"])


def test_a_forced_choice_holds_in_its_thread_only_and_ends_with_its_block():
    import threading

    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        inside.wait()
        seen["other"] = params.forced_choice()
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert params.forced_choice() is None
    with params.forced("blocked", {"VW": 4}):
        with params.forced("direct", {}):
            assert params.forced_choice() == ("direct", {})
        assert params.forced_choice() == ("blocked", {"VW": 4})
        inside.set()
        release.wait(10)
    worker.join(10)
    assert seen["other"] is None
    assert params.forced_choice() is None
    with pytest.raises(RuntimeError), params.forced("direct", {}):
        raise RuntimeError("the block ends early")
    assert params.forced_choice() is None


def test_intels_runtime_gets_its_own_work_group_for_the_blocked_kernel():
    # Intel's runtime runs a group's work-items as vector lanes: its default
    # blocked launch asks for 4 neighbouring pixel blocks a group; the other
    # drivers keep their own choice (PoCL: launch.driver_group).
    info = runtime.get_runtime().info
    x = np.ones((4, 1, 400, 64), np.float32)
    g = geometry_of(x, np.ones((1, 2, 64, 64), np.float32), padding="valid", dilation_rate=(1, 256))
    intel = dataclasses.replace(info, kind="cpu", compiler="intel")
    name, config = _defaults(intel, g)
    assert name == "blocked" and (config["LC"], config["LX"]) == (1, 4)
    plan = variants.make_plan(variants.BLOCKED, config, g, np.float32, "linear", False)
    assert plan.local_size == (1, 4, 1) and plan.global_size[1] % 4 == 0
    for compiler in ("pocl", "other"):
        name, config = _defaults(dataclasses.replace(info, kind="cpu", compiler=compiler), g)
        assert name == "blocked" and variants.BLOCKED.complete(config)["LC"] == 0
    narrow = geometry_of(np.ones((1, 1, 9, 64), np.float32), np.ones((1, 2, 64, 64), np.float32))
    assert "LC" not in _defaults(intel, narrow)[1]  # fewer than 4 pixel blocks a row


def test_the_tuner_tries_the_winograd_kernel_on_cpus_only():
    # At most 16 work-items a launch: a GPU would sit idle, and the first
    # GPU session's tuning budget would go to it.
    info = runtime.get_runtime().info
    x = np.ones((1, 33, 33, 256), np.float32)
    g = geometry_of(x, np.ones((3, 3, 256, 64), np.float32), padding="same", dilation_rate=6)
    names = {}
    for kind in ("cpu", "gpu"):
        space = params.search_candidates(dataclasses.replace(info, kind=kind), CONV2D, g, np.float32)
        names[kind] = {name for name, _ in space}
    assert "winograd" in names["cpu"] and names["gpu"] == names["cpu"] - {"winograd"}
