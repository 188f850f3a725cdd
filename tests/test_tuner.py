"""The tuner: verified winners, what it rejects, its budget, its command line."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import assert_matches_reference, geometry_of

import clatrous
from clatrous import launch, params, reference, runtime, tuner
from clatrous.arguments import prepare, prepare_depthwise
from clatrous.conv import CONV2D

X_SHAPE, K_SHAPE = (1, 9, 10, 3), (3, 3, 3, 8)
GEOMETRY = dict(padding="same", dilation_rate=2)


def _geometry():
    return geometry_of(np.ones(X_SHAPE, np.float32), np.ones(K_SHAPE, np.float32), **GEOMETRY)


def _defaults(info, g):
    """The default (variant, configuration), every parameter given, as the tuner's space lists it."""
    name, config = CONV2D.defaults(info, g, np.float32)
    return name, CONV2D.variant(name).complete(config)


def test_tune_stores_a_verified_winner_that_later_calls_use(cache):
    candidates = [
        ("direct", {}),
        ("blocked", {"VW": 8, "NV": 1, "PX": 2}),
        ("blocked", {"VW": 4, "NV": 2, "PX": 4}),
    ]
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=2, candidates=candidates, **GEOMETRY)
    assert len(result.timings) == 3 and not result.rejected
    assert result.winner[:2] in [c for c in candidates]
    saved = json.loads((cache / "tuning.json").read_text())
    entry = saved["devices"][runtime.get_runtime().info.key][result.key]
    assert (entry["variant"], entry["config"]) == result.winner[:2]

    info = runtime.get_runtime().info
    assert params.choose(info, CONV2D, _geometry(), np.float32) == result.winner[:2]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    k = rng.standard_normal(K_SHAPE).astype(np.float32)
    out = clatrous.conv2d(x, k, **GEOMETRY)
    assert_matches_reference(out, x, k, **GEOMETRY)
    chosen = launch.get_launch(
        runtime.get_runtime(), CONV2D, prepare(x, k, None, ndim=2, activation=None, strides=1, **GEOMETRY)
    )
    assert chosen.plan.variant == result.winner[0]


def test_a_wrong_candidate_is_rejected(cache, monkeypatch):
    # Every result is "wrong" when the accepted error is negative.
    monkeypatch.setattr(reference, "error_bound", lambda *a, **k: np.full(1, -1.0))
    with pytest.raises(RuntimeError, match="no configuration passed"):
        tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert not (cache / "tuning.json").exists()


def test_a_newer_schema_is_never_overwritten_and_the_winner_is_not_lost(cache, capfd):
    # Found by the adversarial pass: storing rewrote a newer clatrous's file
    # from this version's cleaned view, deleting all of it.
    newer = '{"schema": 99, "devices": {"some device": {"k": {"whatever": [1, 2]}}}}'
    (cache / "tuning.json").write_text(newer)
    assert params.load_database() == {}  # not understood: not used
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert result.path is None and "newer" in result.store_error and str(cache) in result.store_error
    assert (cache / "tuning.json").read_text() == newer
    # No temporary file left (the lock file writers take turns on stays, by design).
    assert sorted(p.name for p in cache.iterdir()) == ["tuning.json", "tuning.json.lock"]
    from clatrous.__main__ import main

    assert main(["tune", "conv2d:n=1,h=8,w=8,cin=2,cout=4,k=3,d=2,padding=same", "--repeats", "1"]) == 1
    captured = capfd.readouterr()
    assert "NOT stored" in captured.err and "the winner for" in captured.out
    assert (cache / "tuning.json").read_text() == newer


def test_an_unwritable_database_is_reported_with_its_path(cache, monkeypatch):
    (cache / "tuning.json").mkdir()  # a directory where the file should be
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert result.path is None and "tuning.json" in result.store_error
    assert result.winner[:2] == ("direct", {})
    assert sorted(p.name for p in cache.iterdir()) == ["tuning.json", "tuning.json.lock"]
    monkeypatch.setenv("CLATROUS_CACHE_DIR", str(cache / "tuning.json" / "x" / "y"))
    (cache / "tuning.json").rmdir()
    (cache / "tuning.json").write_text("{}")  # the cache folder's parent is a file
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, candidates=[("direct", {})], **GEOMETRY)
    assert result.path is None and "could not write" in result.store_error


def test_tune_refuses_an_empty_problem(cache):
    for x_shape, k_shape in [((0, 9, 10, 3), K_SHAPE), (X_SHAPE, (3, 3, 3, 0))]:
        with pytest.raises(ValueError, match="needs a problem with outputs"):
            tuner.tune(x_shape, k_shape, progress=False, repeats=1, **GEOMETRY)
    assert not (cache / "tuning.json").exists()


def test_tune_command_line(cache, capfd):
    from clatrous.__main__ import main

    assert main(["tune", "conv2d:n=1,h=8,w=8,cin=2,cout=4,k=3,d=2,padding=same", "--repeats", "1"]) == 0
    out = capfd.readouterr().out
    assert "stored" in out and "ms" in out
    assert main(["tune", "--show"]) == 0
    assert "cin=2 cout=4" in capfd.readouterr().out
    assert main(["tune", "conv2d:n=1,h=8,bogus=3"]) == 2


def test_tune_command_line_tunes_a_depthwise_layer(cache, capfd):
    # g=cin: the depthwise variants, stored under the key depthwise_conv2d reads.
    from clatrous.__main__ import main

    shape = "conv2d:n=1,h=12,w=12,cin=8,cout=8,k=3,d=2,g=8,padding=same"
    assert main(["tune", shape, "--repeats", "1", "--budget", "10"]) == 0
    assert "depthwise" in capfd.readouterr().out
    stored = json.loads((cache / "tuning.json").read_text())
    entry = next(iter(stored["devices"].values()))["float32 cin=8 cout=8 k=3x3 s=1x1 d=2x2 g=8"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 12, 12, 8)).astype(np.float32)
    k = rng.standard_normal((3, 3, 8, 1)).astype(np.float32)
    g = prepare_depthwise(x, k, None, strides=1, padding="same", padding_mode="zeros", dilation_rate=2,
                          activation=None).geometry  # fmt: skip
    chosen = params.choose(runtime.get_runtime().info, CONV2D, g, np.float32)
    assert chosen == (entry["variant"], entry["config"])


def test_a_time_budget_stops_the_search_after_the_default(cache):
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=1, budget_s=0, **GEOMETRY)
    info = runtime.get_runtime().info
    assert len(result.timings) == 1 and result.untried > 0
    assert result.winner[:2] == _defaults(info, _geometry())


@pytest.mark.parametrize("hopeless, launches", [(1e9, 12), (0.0, 9)])
def test_a_far_slower_candidate_is_timed_once(cache, monkeypatch, hopeless, launches):
    # Each candidate launches once checked and once to warm up (both untimed),
    # then is timed repeats times, unless its first timed launch is already
    # _HOPELESS times the best so far.
    calls = []
    real = launch.Launch.enqueue

    def counting(self, *args, **kwargs):
        calls.append(self.plan.variant)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(launch.Launch, "enqueue", counting)
    monkeypatch.setattr(tuner, "HOPELESS", hopeless)
    candidates = [("blocked", {"VW": 4, "NV": 2, "PX": 4}), ("direct", {})]
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=4, candidates=candidates, **GEOMETRY)
    assert len(calls) == launches
    assert len(result.timings) == 2 and not result.rejected


def _variant_like_direct(name, ndrange):
    from clatrous.variants import DIRECT, Operation

    variant = dataclasses.replace(DIRECT, name=name, ndrange=ndrange)
    return Operation("test-" + name, (DIRECT, variant), reference.conv_prepared, CONV2D.defaults)


def test_the_tuner_rejects_a_candidate_that_leaves_outputs_unwritten(cache):
    # Found by the adversarial pass: the tuner did not poison its outputs, so
    # a candidate that skipped elements passed on the previous candidate's values.
    op = _variant_like_direct("lazy", lambda g, c: ((g.cout, g.wo, max(1, g.n * g.ho // 2)), None))
    result = tuner.tune(
        X_SHAPE,
        K_SHAPE,
        progress=False,
        repeats=1,
        op=op,
        candidates=[("direct", {}), ("lazy", {})],
        **GEOMETRY,
    )
    assert [r[0] for r in result.rejected] == ["lazy"] and "unwritten" in result.rejected[0][2]
    assert result.winner[0] == "direct"


def test_the_tuner_skips_a_candidate_that_fails_to_launch(cache):
    # Found by the adversarial pass: such a candidate aborted the whole search.
    op = _variant_like_direct("oversized", lambda g, c: ((g.cout, g.wo, g.n * g.ho), (1, 1, 1 << 20)))
    result = tuner.tune(
        X_SHAPE, K_SHAPE, progress=False, repeats=1, op=op, candidates=[("oversized", {}), ("direct", {})],
        **GEOMETRY,
    )  # fmt: skip
    assert [r[0] for r in result.rejected] == ["oversized"] and "could not launch" in result.rejected[0][2]
    assert result.winner[0] == "direct"


SHAPE = "conv2d:n=1,h=8,w=8,cin=2,cout=4,k=3,d=2"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["tune", f"{SHAPE},padding=full"], ["padding", "'full'"]),
        (["tune", "conv2d:n=1,h=4,w=4,cin=2,cout=2,k=3,d=3,padding=valid"], ["does not fit"]),
        (["tune", f"{SHAPE},dtype=complex64"], ["complex64"]),
        (["tune", f"{SHAPE},dtype=nonsense"], ["nonsense"]),
        (["tune", "conv2d:n=1,h=8,w=8,cin=0,cout=2"], ["channel"]),
        (["tune", SHAPE, "--repeats", "0"], ["--repeats", "0"]),
        (["tune", SHAPE, "--budget", "-1"], ["--budget", "-1"]),
        (["tune", SHAPE, "--budget", "nan"], ["--budget", "nan"]),
        (["tune", SHAPE, "--top", "-1"], ["--top", "-1"]),
        (["tune", "conv2d:n=1,h=8,w=8,cin=4,cout=4,g=3"], ["g (groups)", "g=3"]),
    ],
)
def test_every_bad_tune_argument_is_exit_2_and_one_line(cache, capfd, argv, words):
    # Found by the new-user pass (issue 15): --repeats 0 said "min() arg is
    # an empty sequence", a negative --budget or --top was taken.
    from clatrous.__main__ import main

    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert all(word in err for word in words), err
    assert not (cache / "tuning.json").exists()


def test_tune_refuses_bad_repeats_and_budget_as_a_function(cache):
    with pytest.raises(ValueError, match="repeats"):
        tuner.tune(X_SHAPE, K_SHAPE, progress=False, repeats=0, **GEOMETRY)
    with pytest.raises(ValueError, match="budget_s"):
        tuner.tune(X_SHAPE, K_SHAPE, progress=False, budget_s=-1.0, **GEOMETRY)


def test_version_on_the_command_line(capfd):
    from importlib.metadata import version

    from clatrous.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert (
        capfd.readouterr().out.strip()
        == f"clatrous {version('clatrous')}"
        == f"clatrous {clatrous.__version__}"
    )


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", ["not a regular file of valid JSON", "ignored"]),
        ('{"schema": 99, "devices": {}}', ["newer clatrous", "never overwritten"]),
        ('{"schema": 1, "devices": {"d": {"k": {"variant": "os.system", "config": {}}}}}', ["1 entries"]),
    ],
)
def test_tune_show_says_when_the_database_was_ignored(cache, capfd, content, words):
    from clatrous.__main__ import main

    (cache / "tuning.json").write_text(content)
    assert main(["tune", "--show"]) == 0
    out = capfd.readouterr().out
    assert all(word in out for word in words), out


def test_the_progress_bar_says_how_many_were_tried_when_the_budget_ends_first(cache, capfd):
    result = tuner.tune(X_SHAPE, K_SHAPE, progress=True, repeats=1, budget_s=0, **GEOMETRY)
    total = len(result.timings) + len(result.rejected) + result.untried
    line = capfd.readouterr().err.split("\r")[-1]
    assert f"budget spent: 1 of {total} tried" in line and f"{total}/{total}" not in line
