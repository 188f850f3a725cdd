"""The tuner, its per-user JSON database and the launch's use of it."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import assert_matches_reference

import clatrous
from clatrous import conv, reference, runtime, tuning, variants
from clatrous.arguments import prepare

X_SHAPE, K_SHAPE = (1, 9, 10, 3), (3, 3, 3, 8)
GEOMETRY = dict(padding="same", dilation_rate=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder, and launches re-planned before and after."""
    monkeypatch.setenv("CLATROUS_CACHE_DIR", str(tmp_path))
    tuning.forget_cached_database()
    conv.forget_launches()
    yield tmp_path
    tuning.forget_cached_database()
    conv.forget_launches()


def _geometry():
    x = np.ones(X_SHAPE, np.float32)
    return prepare(
        x, np.ones(K_SHAPE, np.float32), None, ndim=2, activation=None, strides=1, **GEOMETRY
    ).geometry


def test_tune_stores_a_verified_winner_that_later_calls_use(cache):
    candidates = [
        ("direct", {}),
        ("blocked", {"VW": 8, "NV": 1, "PX": 2}),
        ("blocked", {"VW": 4, "NV": 2, "PX": 4}),
    ]
    result = tuning.tune(X_SHAPE, K_SHAPE, progress=False, repeats=2, candidates=candidates, **GEOMETRY)
    assert len(result.timings) == 3 and not result.rejected
    assert result.winner[:2] in [c for c in candidates]
    saved = json.loads((cache / "tuning.json").read_text())
    entry = saved["devices"][runtime.get_runtime().info.key][result.key]
    assert (entry["variant"], entry["config"]) == result.winner[:2]

    info = runtime.get_runtime().info
    assert tuning.choose(info, _geometry(), np.float32) == result.winner[:2]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    k = rng.standard_normal(K_SHAPE).astype(np.float32)
    out = clatrous.conv2d(x, k, **GEOMETRY)
    assert_matches_reference(out, x, k, **GEOMETRY)
    launch = conv.plan_for(
        runtime.get_runtime(), prepare(x, k, None, ndim=2, activation=None, strides=1, **GEOMETRY)
    )
    assert launch.plan.variant == result.winner[0]


def test_a_wrong_candidate_is_rejected(cache, monkeypatch):
    # Every result is "wrong" when the accepted error is negative.
    monkeypatch.setattr(reference, "error_bound", lambda *a, **k: np.full(1, -1.0))
    with pytest.raises(RuntimeError, match="no configuration passed"):
        tuning.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert not (cache / "tuning.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        "not json at all {",
        "[1, 2, 3]",
        '{"schema": 99, "devices": {}}',
        '{"schema": 1, "devices": {"x": {"k": {"variant": "os.system", "config": {}}}}}',
        '{"schema": 1, "devices": {"x": {"k": {"variant": "blocked", "config": {"VW": "16"}}}}}',
        "\x00\xff\xfe garbage",
    ],
)
def test_a_corrupt_database_is_ignored_then_rebuilt(cache, content):
    (cache / "tuning.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert all(not entries for entries in tuning.load_database().values())
    info = runtime.get_runtime().info
    assert tuning.choose(info, _geometry(), np.float32) == tuning.default_config(
        info, _geometry(), np.float32
    )
    tuning.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert json.loads((cache / "tuning.json").read_text())["schema"] == 1


def test_an_entry_outside_the_search_space_is_not_used(cache):
    info = runtime.get_runtime().info
    g = _geometry()
    bogus = {"variant": "blocked", "config": {"VW": 3, "NV": 1, "PX": 2}}
    data = {"schema": 1, "devices": {info.key: {tuning.class_key(g, np.float32): bogus}}}
    (cache / "tuning.json").write_text(json.dumps(data))
    assert tuning.choose(info, g, np.float32) == tuning.default_config(info, g, np.float32)


def test_default_table_picks_applicable_configurations():
    info = runtime.get_runtime().info
    for cin, cout, k in [(1, 1, 5), (3, 8, 3), (64, 64, 3), (2048, 256, 3), (5, 7, 2), (256, 96, 3)]:
        x = np.ones((1, 12, 12, cin), np.float32)
        g = prepare(x, np.ones((k, k, cin, cout), np.float32), None, ndim=2, activation=None,
                    strides=1, padding="same", dilation_rate=2).geometry  # fmt: skip
        variant, config = tuning.default_config(info, g, np.float32)
        assert variants.applicable(variant, g, config)
        assert config in variants.search_space(variant, g, np.float32)


def test_tune_command_line(cache, capfd):
    from clatrous.__main__ import main

    assert main(["tune", "conv2d:n=1,h=8,w=8,cin=2,cout=4,k=3,d=2,padding=same", "--repeats", "1"]) == 0
    out = capfd.readouterr().out
    assert "stored" in out and "ms" in out
    assert main(["tune", "--show"]) == 0
    assert "cin=2 cout=4" in capfd.readouterr().out
    assert main(["tune", "conv2d:n=1,h=8,bogus=3"]) == 2


def test_a_time_budget_stops_the_search_after_the_default(cache):
    result = tuning.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, budget_s=0, **GEOMETRY)
    info = runtime.get_runtime().info
    assert len(result.timings) == 1 and result.untried > 0
    assert result.winner[:2] == tuning.default_config(info, _geometry(), np.float32)


@pytest.mark.parametrize("hopeless, launches", [(1e9, 12), (0.0, 9)])
def test_a_far_slower_candidate_is_timed_once(cache, monkeypatch, hopeless, launches):
    # Each candidate launches once checked and once to warm up (both untimed),
    # then is timed repeats times, unless its first timed launch is already
    # _HOPELESS times the best so far.
    calls = []
    real = conv.Launch.enqueue

    def counting(self, *args, **kwargs):
        calls.append(self.plan.variant)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(conv.Launch, "enqueue", counting)
    monkeypatch.setattr(tuning, "_HOPELESS", hopeless)
    candidates = [("blocked", {"VW": 4, "NV": 2, "PX": 4}), ("direct", {})]
    result = tuning.tune(X_SHAPE, K_SHAPE, progress=False, repeats=4, candidates=candidates, **GEOMETRY)
    assert len(calls) == launches
    assert len(result.timings) == 2 and not result.rejected


def test_tiled_partial_sums_stay_bounded_on_long_rows():
    # A tiled work-item keeps its partial sums in local memory between channel
    # tiles: a whole 16000-pixel row times many rows would not fit.
    x = np.ones((1, 1, 16000, 40), np.float32)
    g = prepare(x, np.ones((1, 2, 40, 16), np.float32), None, ndim=2, activation=None,
                strides=1, padding="same", dilation_rate=256).geometry  # fmt: skip
    configs = variants.search_space("tiled", g, np.float32)
    assert configs
    assert max(variants.local_bytes("tiled", c, np.float32) for c in configs) <= variants.TILED_LOCAL_BYTES
    info = runtime.get_runtime().info
    widest = max(
        (c for c in configs if tuning.fits(info, "tiled", c, np.float32)), key=lambda c: c["NB"] * c["PX"]
    )
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 700, 40)).astype(np.float32)  # longer than the widest NB*PX
    k = rng.standard_normal((1, 2, 40, 16)).astype(np.float32)
    for config in (widest, {**widest, "NB": 2, "RW": 2}):  # one row, and row groups with a partial last one
        out = clatrous.conv2d(x, k, padding="same", dilation_rate=256, _choice=("tiled", config))
        assert_matches_reference(out, x, k, padding="same", dilation_rate=256)


def test_local_memory_decides_what_a_device_can_run():
    info = runtime.get_runtime().info
    x = np.ones((1, 33, 33, 2048), np.float32)
    g = prepare(x, np.ones((3, 3, 2048, 256), np.float32), None, ndim=2, activation=None,
                strides=1, padding="same", dilation_rate=6).geometry  # fmt: skip
    roomy = dataclasses.replace(info, kind="cpu", local_mem=1 << 20, compute_units=2)
    variant, config = tuning.default_config(roomy, g, np.float32)
    assert variant == "tiled" and tuning.fits(roomy, variant, config, np.float32)
    # A device with little local memory gets a smaller span, or the blocked kernel.
    for local_mem in (32 * 1024, 2 * 1024):
        small = dataclasses.replace(roomy, local_mem=local_mem)
        variant, config = tuning.default_config(small, g, np.float32)
        assert tuning.fits(small, variant, config, np.float32)
        assert variants.applicable(variant, g, config)
    assert (
        tuning.default_config(dataclasses.replace(roomy, local_mem=2 * 1024), g, np.float32)[0] == "blocked"
    )
    # Forcing a configuration the device cannot hold fails before any build.
    too_big = {"VW": 8, "NV": 1, "PX": 8, "CT": 32, "NB": 64, "RW": 1024}
    builds = runtime.settings.build_count
    xs = np.ones((1, 3, 5, 40), np.float32)
    with pytest.raises(clatrous.UnsupportedDeviceError, match="local memory"):
        clatrous.conv2d(xs, np.ones((1, 1, 40, 8), np.float32), _choice=("tiled", too_big))
    assert runtime.settings.build_count == builds


def test_forced_choices_are_cached_per_configuration(cache):
    # The tuner times each candidate through plan_for: a key that ignored the
    # configuration would time one kernel under every candidate's name.
    rt = runtime.get_runtime()
    x = np.ones(X_SHAPE, np.float32)
    prepared = prepare(x, np.ones(K_SHAPE, np.float32), None, ndim=2, activation=None, strides=1, **GEOMETRY)
    wide, narrow = {"VW": 8, "NV": 1, "PX": 2}, {"VW": 4, "NV": 1, "PX": 2}
    first = conv.plan_for(rt, prepared, ("blocked", wide))
    # The same configuration with its keys in another order: the same launch.
    assert conv.plan_for(rt, prepared, ("blocked", {"PX": 2, "NV": 1, "VW": 8})) is first
    other = conv.plan_for(rt, prepared, ("blocked", narrow))
    assert other is not first
    assert dict(first.plan.config) == wide and dict(other.plan.config) == narrow
    default = conv.plan_for(rt, prepared)
    assert (default.plan.variant, dict(default.plan.config)) == tuning.choose(
        rt.info, prepared.geometry, np.float32
    )
