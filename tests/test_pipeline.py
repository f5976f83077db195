"""Compression runs end to end on a tiny trained workspace: fields, caching, budgets, clamping."""

from collections import OrderedDict

import numpy as np
import pytest

import hscc_core.compress.hscc.stats as calibration
from conftest import RUN_KINDS
from hscc_core.measure.costs import count_flops
from hscc_core.measure.metrics import predict_proba
from hscc_core.nn.grey import input_shape
from hscc_core.present.explain import layer_reconstruction_error
from hscc_core.runs import pipeline
from hscc_core.runs.config import DEFAULTS, RunConfig
from hscc_core.runs.pipeline import compress_run, original_run, rebuild_model, run_key

RUN_FIELDS = ("method", "config", "cache_key", "cached", "accuracy", "accuracy_se", "macro_f1", "macro_f1_se",
              "per_class", "confusion_matrix", "flops", "flops_original", "layer_flops", "layer_flops_original",
              "params", "params_original", "latency_ms", "speedup", "p_value_vs_original", "seconds",
              "agreement", "agreement_se", "kl_to_original", "kl_to_original_se")


def test_run_has_contract_fields_and_measured_flops(trained_workspace):
    run, cached = compress_run(trained_workspace, RunConfig("hscc", grid=2, clusters=2, energy=0.9, calib_size=24),
                               latency_runs=2)
    for field in RUN_FIELDS:
        assert field in run, field
    assert not cached and run["cached"] is False
    assert set(run["latency_ms"]["compressed"]) == {"b1", "b32"}
    assert {"median", "p90"} <= set(run["latency_ms"]["original"]["b1"])
    # Measured (FlopCounterMode) layer FLOPs are twice the analytical MACs of the plan.
    assert sum(run["layer_flops"].values()) == pytest.approx(2 * run["analytical_layer_macs"], rel=0.01)
    assert run["flops"] < run["flops_original"]


def test_energy_one_reproduces_original_predictions(trained_workspace):
    original, arrays, _ = original_run(trained_workspace)
    for method in ("svd", "tucker"):
        run, _ = compress_run(trained_workspace, RunConfig(method, energy=1.0), measure_speed=False)
        assert run["agreement"] == 1.0 and run["accuracy"] == original["accuracy"]


def test_cache_hit_and_calibration_reuse(trained_workspace, monkeypatch):
    ws = trained_workspace
    calls = {"stats": 0, "compress": 0}
    real_stats, real_compressor = calibration.compute_stats, pipeline._decompose

    def counting_stats(*a, **k):
        calls["stats"] += 1
        return real_stats(*a, **k)

    def counting_compressor(*a, **k):
        calls["compress"] += 1
        return real_compressor(*a, **k)

    monkeypatch.setattr(calibration, "compute_stats", counting_stats)
    monkeypatch.setattr(pipeline, "_decompose", counting_compressor)
    monkeypatch.setattr(pipeline, "_DECOMPOSITIONS", OrderedDict())  # nothing kept from other tests
    cfg = RunConfig("hscc", grid=3, clusters=2, energy=0.8, calib_size=20)
    compress_run(ws, cfg, measure_speed=False)
    assert calls == {"stats": 1, "compress": 1}
    run, cached = compress_run(ws, cfg, measure_speed=False)
    assert cached and run["cached"] and calls == {"stats": 1, "compress": 1}
    # Another K and tau on the same grid: no new calibration forward pass.
    compress_run(ws, RunConfig("hscc", grid=3, clusters=4, energy=0.95, calib_size=20), measure_speed=False)
    assert calls == {"stats": 1, "compress": 2}


@pytest.mark.parametrize("method", ["hscc", "svd", "tucker"])
def test_budget_met_or_reported(trained_workspace, method):
    run, _ = compress_run(trained_workspace, RunConfig(method, grid=2, clusters=2, energy=None, budget=2.0,
                                                       calib_size=24), measure_speed=False)
    ratio = run["layer_flops_ratio"]
    assert ratio >= 2.0 * 0.999  # never over budget
    if run["budget_search"]["met"]:
        assert ratio <= 2.0 / 0.98 + 1e-6
    else:
        assert "not met" in run["budget_search"]["message"]


def test_grid_and_clusters_clamping_reported(trained_workspace):
    # The grid is bounded by the smallest map (4 x 4 at 32 px input), so only clusters clamp here;
    # a larger grid is refused before any work (tests/test_hardening.py).
    assert trained_workspace.max_grid() == 4
    run, _ = compress_run(trained_workspace, RunConfig("hscc", grid=4, clusters=64, energy=0.9, calib_size=16),
                          measure_speed=False)
    last = run["layers"]["features.6"]  # a 4 x 4 map at 32 px input
    assert not last["grid_clamped"] and last["grid_hw"] == [4, 4]
    assert last["clusters_clamped"]


def test_same_seed_same_plan(trained_workspace):
    cfg = RunConfig("hscc", grid=2, clusters=3, energy=0.9, calib_size=20, seed=1)
    ws = trained_workspace
    first, _ = compress_run(ws, cfg, measure_speed=False)
    ws.store.prune([first["cache_key"]])
    again, cached = compress_run(ws, cfg, measure_speed=False)
    assert not cached and again["layers"] == first["layers"]
    assert again["accuracy"] == first["accuracy"]


def test_finetuning_changes_weights_not_flops(trained_workspace):
    base, _ = compress_run(trained_workspace, RunConfig("svd", energy=0.7), measure_speed=False)
    tuned, _ = compress_run(trained_workspace, RunConfig("svd", energy=0.7, finetune_epochs=1), measure_speed=False)
    assert tuned["layer_flops"] == base["layer_flops"] and tuned["cache_key"] != base["cache_key"]


def test_decomposition_reused_across_energies_not_across_configurations(trained_workspace, monkeypatch):
    ws, calls = trained_workspace, []
    real = pipeline._decompose

    def counting(ws, model, meta, config, progress):
        calls.append(config.method)
        return real(ws, model, meta, config, progress)

    monkeypatch.setattr(pipeline, "_decompose", counting)
    monkeypatch.setattr(pipeline, "_DECOMPOSITIONS", OrderedDict())
    fresh = {}
    for e in (0.6, 0.9):  # a sweep's energies of one configuration: one decomposition
        plan = pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=2, energy=e, calib_size=20)).plan
        fresh[e] = plan.macs()
    assert calls == ["hscc"] and fresh[0.6] < fresh[0.9]
    pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=3, energy=0.9, calib_size=20))
    pipeline.build_compressed(ws, RunConfig("svd", energy=0.9))
    pipeline.build_compressed(ws, RunConfig("svd", energy=0.5))
    assert calls == ["hscc", "hscc", "svd"]
    # Only the last two are kept, and a kept decomposition gives what a new one gives.
    assert len(pipeline._DECOMPOSITIONS) == 2
    monkeypatch.setattr(pipeline, "_DECOMPOSITIONS", OrderedDict())
    again = pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=2, energy=0.6, calib_size=20)).plan
    assert again.macs() == fresh[0.6] and calls[-1] == "hscc"


@pytest.mark.parametrize("side", ["output", "input"])
def test_rebuilt_model_reproduces_the_stored_run(trained_workspace, side):
    ws = trained_workspace
    run, _ = compress_run(ws, RunConfig(grid=2, clusters=2, energy=0.9, cluster_side=side), measure_speed=False)
    model = rebuild_model(ws, run)
    images = ws.images()
    probs = predict_proba(model, images.x_test, to_input=images.to_tensor)
    stored = ws.store.get_arrays(run["cache_key"])
    np.testing.assert_array_equal(probs.argmax(1), stored["predictions"])
    np.testing.assert_allclose(probs, stored["probabilities"], atol=1e-5)
    # Clustered channels: conv1's one folded grey input (hscc_core.nn.grey), or its 16 outputs.
    assert stored["labels.features.0"].shape[1] == (1 if side == "input" else 16)
    # Every compressed layer can be compared with the original on the same input.
    x = images.to_tensor(images.x_test[:1])
    original, _ = ws.baseline()
    for layer in run["layers"]:
        err, inp, out = layer_reconstruction_error(original, model, layer, x)
        assert err.shape == out.shape[1:] and np.isfinite(err).all() and inp.ndim == 3
    with pytest.raises(ValueError, match="original"):
        rebuild_model(ws, original_run(ws)[0])
    with pytest.raises(ValueError, match="another baseline"):
        rebuild_model(ws, dict(run, model_fingerprint="0" * 24))


@pytest.mark.parametrize("kind", sorted(RUN_KINDS))
def test_every_kind_of_run_is_rebuilt_as_it_was_computed(trained_workspace, kind):
    # The demo, the exports and the heatmaps rebuild a run's model from its stored config. A config
    # leaves out fields at their LEGACY value: read with today's defaults, an HSCC budget run of the
    # uniform rule (the paper's) came back greedy, another model with other FLOPs.
    ws = trained_workspace
    run, _ = compress_run(ws, RUN_KINDS[kind], measure_speed=False)
    model = rebuild_model(ws, run)
    assert count_flops(model, input_shape(model, ws.size)) == run["flops"]
    images = ws.images()
    probs = predict_proba(model, images.x_test, to_input=images.to_tensor)
    np.testing.assert_array_equal(probs.argmax(1), ws.store.get_arrays(run["cache_key"])["predictions"])
    assert RunConfig.from_canonical(run["config"]) == RUN_KINDS[kind]


def test_budget_runs_default_to_greedy_and_a_baseline_can_take_every_rule(trained_workspace):
    rule = DEFAULTS["allocation"]
    run, _ = compress_run(trained_workspace, RunConfig(energy=None, budget=2.0, calib_size=24), measure_speed=False)
    assert run["allocation"] == rule and run["energy"] is None and run["budget_search"]["met"] in (True, False)
    assert run["config"]["allocation"] == rule
    tucker, _ = compress_run(trained_workspace, RunConfig("tucker", energy=None, budget=2.0, allocation="greedy"),
                             measure_speed=False)
    assert tucker["allocation"] == "greedy" and tucker["energy"] is None  # like for like: greedy has no threshold
    uniform, _ = compress_run(trained_workspace, RunConfig("svd", energy=None, budget=2.0, allocation="uniform"),
                              measure_speed=False)
    assert uniform["energy"] is not None


def test_sequential_run_same_macs_cross_statistics_stored_and_reused(trained_workspace, monkeypatch):
    ws = trained_workspace
    base = dict(grid=2, clusters=2, energy=None, budget=2.0, calib_size=24, allocation="greedy")
    ind, _ = compress_run(ws, RunConfig(**base, calibration="independent"), measure_speed=False)
    calls = []
    real = pipeline.cross_stats
    monkeypatch.setattr(pipeline, "cross_stats", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    seq, _ = compress_run(ws, RunConfig(**base, calibration="sequential"), measure_speed=False)
    assert seq["calibration"] == "sequential" and seq["config"]["calibration"] == "sequential"
    assert seq["cache_key"] != ind["cache_key"]
    assert seq["analytical_layer_macs"] == ind["analytical_layer_macs"] and seq["layers"] == ind["layers"]
    assert calls == ["features.3", "features.6"]  # every layer after the first, once
    # Rebuilding the run (the pages do) and the same fit under another run reuse the stored statistics.
    model = rebuild_model(ws, seq)
    images = ws.images()
    probs = predict_proba(model, images.x_test, to_input=images.to_tensor)
    np.testing.assert_allclose(probs, ws.store.get_arrays(seq["cache_key"])["probabilities"], atol=1e-5)
    pipeline.build_compressed(ws, RunConfig(**{**base, "seed": 0}, calibration="sequential", finetune_epochs=1))
    assert calls == ["features.3", "features.6"]


def test_sensitivity_is_measured_once_per_decomposition(trained_workspace, monkeypatch):
    ws = trained_workspace
    calls = []
    real = pipeline.layer_sensitivity
    monkeypatch.setattr(pipeline, "layer_sensitivity", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    for method in ("hscc", "tucker"):
        for budget in (2.0, 3.0):
            run, _ = compress_run(ws, RunConfig(method, grid=2, clusters=2, energy=None, budget=budget, calib_size=24,
                                                allocation="sensitivity"), measure_speed=False)
            assert run["allocation"] == "sensitivity" and set(run["sensitivity"]["points"]) == set(run["layers"])
            assert set(run["sensitivity"]["weights"]) in (set(), set(run["layers"]))  # {}: energy-greedy was best
            assert run["layer_flops_ratio"] >= budget * (1 - 1e-3) and run["energy"] is None
    assert calls == ["hscc", "tucker"]


def test_calibration_on_the_whole_split_with_mirror_images(trained_workspace, monkeypatch):
    ws = trained_workspace
    seen = []
    real = calibration.compute_stats
    monkeypatch.setattr(calibration, "compute_stats", lambda m, x, *a, **k: seen.append(len(x)) or real(m, x, *a, **k))
    run, _ = compress_run(ws, RunConfig(grid=4, clusters=1, energy=0.9, calib_size="all", calib_flip=True),
                          measure_speed=False)
    assert seen == [2 * len(ws.images().y_train)]
    assert run["config"]["calib_size"] == "all" and run["config"]["calib_flip"] is True
    # The held-out layer errors then come from test images (nothing of the training split is left).
    assert set(run["layer_errors"]) == set(run["layers"])


def test_baselines_ignore_the_calibration_size_they_leave_out_of_their_key(trained_workspace):
    """Global SVD reads no calibration data: its key and every stored field, layer errors included,
    are the same whatever --calib-size says."""
    ws = trained_workspace
    small, large = RunConfig("svd", energy=0.6, calib_size=8), RunConfig("svd", energy=0.6, calib_size=40)
    assert run_key(ws, None, small) == run_key(ws, None, large)
    a, _ = pipeline.compute_run(ws, small, measure_speed=False)
    b, _ = pipeline.compute_run(ws, large, measure_speed=False)
    assert a["layer_errors"] == b["layer_errors"]
