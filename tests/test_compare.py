"""Comparing runs: metrics with SEs, pairwise McNemar tests with Holm's adjustment, kept FLOPs per layer, and
the Compare page's heatmaps of every kind of run on one slice with one colour scale."""

import base64
import json

import numpy as np
import pytest

from conftest import RUN_KINDS, assert_page_ok, open_page, use_tiny_app_env
from conftest import table_run as fake_run
from hscc_core.measure.metrics import paired_comparison
from hscc_core.present.heatmaps import SLICE_MAPS, error_figure, slice_map_note
from hscc_core.present.labels import p_text, speed_text
from hscc_core.runs.compare import (compressed_layers, holm, kept_fractions, metrics_long, metrics_wide,
                                    pairwise_tests, run_names)
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import compress_run, original_run


def runs3():
    a, b, c = (fake_run(k * 24, accuracy=acc) for k, acc in (("a", 0.7), ("b", 0.8), ("c", 0.9)))
    a["method"], a["config"] = "svd", {"method": "svd", "energy": 0.5}
    c["config"] = dict(b["config"])  # two runs with one configuration stay apart
    for run, kept in zip((a, b, c), (0.5, 0.25, 1.0)):
        run["layer_flops_original"] = {"features.3": 100, "features.10": 40, "features.0": 10}
        run["layer_flops"] = {"features.3": 100 * kept, "features.10": 40 * kept, "features.0": 10}
    return [a, b, c]


def test_names_metrics_and_kept_fractions():
    runs = runs3()
    names = run_names(runs)
    # Readable names; runs of one configuration stay apart by their key.
    assert names[0] == "Global SVD, tau 0.5" and names[1] != names[2]
    assert names[1].startswith("HSCC 2x2 regions, 4 output clusters, tau 0.9 · ")
    long = metrics_long(runs)
    acc = long[long["metric"] == "accuracy"]
    assert list(acc["value"]) == [0.7, 0.8, 0.9] and list(acc["se"]) == [0.01] * 3
    assert np.isnan(long[long["metric"] == "latency b1 (ms)"]["value"]).all()
    wide = metrics_wide(runs)
    assert list(wide.columns) == names and wide.loc["accuracy", names[0]] == "70.00 % ± 1.00"
    assert wide.loc["latency b1 (ms)", names[0]] == "n/a" and "F1 no tumor" in wide.index
    # What else ran while each was timed: n/a before it was recorded, "(noisy)" above a quarter.
    timed = [dict(r, latency_ms={"others_cpu": share}) for r, share in zip(runs, (None, 0.1, 0.4))]
    assert list(metrics_wide(timed).loc["others' CPU while timed"]) == ["n/a", "10%", "40% (noisy)"]
    # Speed in the words of the Explorer when the caller gives them (0.96x read beside "1.04x slower").
    sped = [dict(r, speedup={"b1": v, "b32": 2.0}) for r, v in zip(runs, (0.96, 1.01, 2.5))]
    assert list(metrics_wide(sped).loc["speed-up b1"]) == ["0.96x", "1.01x", "2.50x"]
    assert list(metrics_wide(sped, speed_format=speed_text).loc["speed-up b1"]) == \
        ["1.04x slower", "about as fast", "2.5x faster"]
    tested = [dict(r, p_value_vs_original=p) for r, p in zip(runs, (9.06e-14, 0.0417, 0.5))]
    assert list(metrics_wide(tested, p_format=lambda p: p_text(p, bare=True)).loc["p vs original (McNemar)"]) == \
        ["< 0.001", "0.042", "0.5"]
    changed = metrics_wide([dict(runs[0], accuracy_delta=-0.14, accuracy_delta_se=0.0172), runs[1]])
    assert changed.loc["accuracy change vs original", names[0]] == "-14.00 points ± 1.72"  # points, not %
    assert all(len(c.split(" ± ")[0].split(".")[-1]) == 3 for c in wide.loc["macro F1"] if c != "n/a")
    kept = kept_fractions(runs)
    assert list(kept.index) == ["features.0", "features.3", "features.10"]  # network order
    assert list(kept[names[1]]) == [1.0, 0.25, 0.25]
    with pytest.raises(ValueError, match="2 to 4"):
        metrics_long(runs[:1])


def test_pairwise_tests_match_paired_comparison():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    preds = {}
    for key, p_right in (("a" * 24, 0.7), ("b" * 24, 0.8), ("c" * 24, 0.95)):
        right = rng.random(200) < p_right
        preds[key] = np.where(right, y, (y + 1) % 4)
    runs = runs3()
    table = pairwise_tests(runs, preds, y)
    names = run_names(runs)
    assert list(zip(table["a"], table["b"])) == [(names[0], names[1]), (names[0], names[2]), (names[1], names[2])]
    first = paired_comparison(y, preds["a" * 24], preds["b" * 24])
    row = table.iloc[0]
    assert row["p_value"] == first["p_value"] and row["delta"] == first["accuracy_delta"]
    assert row["a_only"] == first["discordant"]["ref_only"] and row["b_only"] == first["discordant"]["new_only"]
    assert row["accuracy_a"] == np.mean(preds["a" * 24] == y)
    assert (table["p_holm"] >= table["p_value"]).all() and table.iloc[1]["p_value"] < 1e-6
    with pytest.raises(ValueError, match="no stored predictions"):
        pairwise_tests(runs, {"a" * 24: preds["a" * 24]}, y)
    with pytest.raises(ValueError, match="test images"):
        pairwise_tests(runs, {k: v[:10] for k, v in preds.items()}, y)


def test_holm_adjustment():
    assert list(holm([0.01, 0.04, 0.03, 0.5])) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert list(holm([0.6, 0.6])) == [1.0, 1.0]


# --------------------------------------------------------------------------------------------
# Heatmaps of the compared runs on one slice (every kind of run)

KINDS = {**RUN_KINDS, "hscc fine-tuned": RunConfig(grid=2, clusters=2, energy=0.9, finetune_epochs=1)}
# Groups of at most four runs compared at once; together they cover every kind, and the original.
GROUPS = [("hscc output energy", "hscc input greedy budget", "svd energy", "original"),
          ("hscc output greedy budget", "hscc input energy", "tucker budget", "hscc fine-tuned"),
          ("hscc output uniform budget", "svd budget", "tucker energy")]


@pytest.fixture(scope="module")
def kinds(trained_workspace):
    runs = {name: compress_run(trained_workspace, cfg, measure_speed=False)[0] for name, cfg in KINDS.items()}
    runs["original"] = original_run(trained_workspace)[0]
    return runs


def values(z) -> np.ndarray:
    """A trace's ``z`` as plotly's JSON holds it: a list, or base64 bytes with dtype and shape."""
    if isinstance(z, dict):
        shape = [int(n) for n in str(z["shape"]).split(",")]
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape).astype(float)
    return np.asarray(z, dtype=float)


def overlays(at) -> list[dict]:
    """The overlay trace of every map drawn on the page (the slice is the other heatmap trace)."""
    out = []
    for chart in at.get("plotly_chart"):
        traces = json.loads(chart.proto.spec)["data"]
        out += [t for t in traces if t.get("name") == "overlay"]
    return out


def test_slice_map_notes_say_why_a_run_has_no_map(kinds):
    layer = next(iter(kinds["hscc output energy"]["layers"]))
    assert slice_map_note(kinds["original"], layer, "rank").startswith("The original model")
    for kind in SLICE_MAPS:
        assert slice_map_note(kinds["hscc output energy"], layer, kind) is None
        assert (slice_map_note(kinds["hscc output energy"], "features.99", kind)
                == "This run did not compress features.99.")
    assert slice_map_note(kinds["svd energy"], layer, "rank") is None
    assert "does not cluster" in slice_map_note(kinds["tucker budget"], layer, "clusters")
    assert "not stored" in slice_map_note(kinds["hscc input energy"], layer, "clusters", labels_stored=False)
    assert "fine-tuning again" in slice_map_note(kinds["hscc fine-tuned"], layer, "error")
    assert slice_map_note(kinds["hscc fine-tuned"], layer, "clusters") is None  # needs no compressed model
    with pytest.raises(ValueError, match="kind"):
        slice_map_note(kinds["svd energy"], layer, "gradcam")
    assert compressed_layers([kinds["original"], kinds["svd energy"]]) == list(kinds["svd energy"]["layers"])


def test_shared_scale_figures():
    image = np.zeros((8, 8))
    errors = [np.full((2, 2), 0.1), np.full((2, 2), 0.4)]
    figs = [error_figure(image, e, zmax=0.4) for e in errors]
    assert [f.data[1].zmax for f in figs] == [0.4, 0.4] and figs[0].data[1].zmin == 0
    # Alone: from 0 to its own maximum. Plotly ignores zmin without zmax, and the scale then started at
    # the map's smallest error (a Tucker-2 layer's error of 0.25 read as none).
    alone = error_figure(image, np.array([[0.25, 0.5], [0.75, 1.0]])).data[1]
    assert (alone.zmin, alone.zmax) == (0, 1.0)
    assert error_figure(image, np.zeros((2, 2))).data[1].zmax == 1.0  # no error: a scale that still draws


@pytest.mark.parametrize("group", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_compare_page_draws_every_kind_of_run_on_one_slice(trained_workspace, kinds, group, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    runs = [kinds[name] for name in group]
    at = open_page("views/overview.py")
    at.session_state["compare_runs"] = ["original" if r["method"] == "original" else r["cache_key"] for r in runs]
    at.switch_page("views/compare.py").run()
    assert_page_ok(at)
    # The tables name the runs #1.. (full names in the legend above them), so they fit the page.
    tags = [f"#{i + 1}" for i in range(len(runs))]
    assert list(at.dataframe[0].value.columns) == tags
    assert set(at.dataframe[1].value["a"]) | set(at.dataframe[1].value["b"]) == set(tags)
    layers = compressed_layers(runs)
    assert at.selectbox(key="compare_hm_layer").options == layers
    images = trained_workspace.images()
    for layer in (layers[0], layers[-1]):
        at.selectbox(key="compare_hm_layer").set_value(layer)
        for kind in SLICE_MAPS:
            at.radio(key="compare_hm_map").set_value(kind).run()
            assert_page_ok(at)
            arrays = {r["cache_key"]: trained_workspace.store.get_arrays(r["cache_key"]) or {} for r in runs}
            notes = [slice_map_note(r, layer, kind, f"labels.{layer}" in arrays[r["cache_key"]]) for r in runs]
            drawn = overlays(at)
            assert len(drawn) == sum(n is None for n in notes), (layer, kind)
            infos = [i.value for i in at.info]
            for note in filter(None, notes):
                assert any(note in text for text in infos), (note, infos)
            if not drawn:
                continue
            # One colour scale for every map of the page.
            assert len({(t.get("zmin"), t.get("zmax")) for t in drawn}) == 1, (kind, drawn)
            if kind in ("rank", "flops"):
                assert (drawn[0]["zmin"], drawn[0]["zmax"]) == (0, 1)
            elif kind == "error":
                assert drawn[0]["zmax"] == pytest.approx(max(np.nanmax(values(t["z"])) for t in drawn))
            else:
                top = max(np.nanmax(values(t["z"])) for t in drawn)
                assert drawn[0]["zmax"] >= top + 0.5 - 1e-9
    # Another class and image: the maps follow.
    at.selectbox(key="compare_hm_class").set_value(1).run()
    runs_key = "-".join(str(r["cache_key"])[:8] for r in runs)
    box = at.selectbox(key=f"compare_hm_image_1_{runs_key}")
    assert images.y_test[box.value] == 1
    assert_page_ok(at)
    # The image box belongs to this set of runs (its labels count their answers); the image chosen
    # stays chosen when the set changes.
    picked = [i for i in np.flatnonzero(images.y_test == 1).tolist() if i != box.value][0]
    box.set_value(picked).run()
    at.session_state["compare_runs"] = at.session_state["compare_runs"][::-1]
    at.run()
    assert_page_ok(at)
    turned = "-".join(str(r["cache_key"])[:8] for r in runs[::-1])
    assert at.selectbox(key=f"compare_hm_image_1_{turned}").value == picked
