"""Compression runs end to end on a tiny trained workspace: fields, caching, budgets, clamping."""

from collections import OrderedDict

import pytest

import hscc_core.compress.calibration as calibration
from hscc_core.runs import pipeline
from hscc_core.runs.pipeline import RunConfig, compress_run, original_run, run_key

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
    real_stats, real_compressor = calibration.compute_stats, pipeline._compressor

    def counting_stats(*a, **k):
        calls["stats"] += 1
        return real_stats(*a, **k)

    def counting_compressor(*a, **k):
        calls["compress"] += 1
        return real_compressor(*a, **k)

    monkeypatch.setattr(calibration, "compute_stats", counting_stats)
    monkeypatch.setattr(pipeline, "_compressor", counting_compressor)
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


@pytest.mark.parametrize("kwargs,match", [
    ({"grid": 0}, "grid"), ({"clusters": 0}, "clusters"), ({"energy": 0.0}, "energy"),
    ({"energy": 1.2}, "energy"), ({"energy": None, "budget": 1.0}, "budget"), ({"method": "pca"}, "unknown method"),
    ({"energy": 0.9, "budget": 3.0}, "not both"), ({"finetune_epochs": -1}, "finetune_epochs")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_budget_int_and_float_share_a_key(trained_workspace):
    a = RunConfig("svd", energy=None, budget=3)
    b = RunConfig("svd", energy=None, budget=3.0)
    assert run_key(trained_workspace, None, a) == run_key(trained_workspace, None, b)
    # Baselines ignore HSCC-only settings.
    assert RunConfig("svd", grid=4).canonical() == RunConfig("svd", grid=1).canonical()


def test_decomposition_reused_across_energies_not_across_configurations(trained_workspace, monkeypatch):
    ws, calls = trained_workspace, []
    real = pipeline._compressor

    def counting(method, *a, **k):
        calls.append(method)
        return real(method, *a, **k)

    monkeypatch.setattr(pipeline, "_compressor", counting)
    monkeypatch.setattr(pipeline, "_DECOMPOSITIONS", OrderedDict())
    fresh = {}
    for e in (0.6, 0.9):  # a sweep's energies of one configuration: one decomposition
        plan = pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=2, energy=e, calib_size=20))[1]
        fresh[e] = plan.macs()
    assert calls == ["hscc"] and fresh[0.6] < fresh[0.9]
    pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=3, energy=0.9, calib_size=20))
    pipeline.build_compressed(ws, RunConfig("svd", energy=0.9))
    pipeline.build_compressed(ws, RunConfig("svd", energy=0.5))
    assert calls == ["hscc", "hscc", "svd"]
    # Only the last two are kept, and a kept decomposition gives what a new one gives.
    assert len(pipeline._DECOMPOSITIONS) == 2
    monkeypatch.setattr(pipeline, "_DECOMPOSITIONS", OrderedDict())
    again = pipeline.build_compressed(ws, RunConfig("hscc", grid=2, clusters=2, energy=0.6, calib_size=20))[1]
    assert again.macs() == fresh[0.6] and calls[-1] == "hscc"
