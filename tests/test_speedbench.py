"""Tests for hscc_core.runs.speed: the ``hscc bench --speed`` JSON contract on a tiny model."""

import json

import pytest
import torch

from hscc_core.measure.machine import machine_info
from hscc_core.runs.speed import default_devices, speed_table

ROW_FIELDS = ("method", "budget", "flops_ratio", "layer_flops_ratio", "speedup_b1", "speedup_b32",
              "latency_ms", "device", "efficiency_b32", "flops", "flops_original")


def test_speed_table_contract(trained_workspace):
    stages = []
    table = speed_table(trained_workspace, budgets=(3.0,), runs=2, devices=["cpu"],
                        progress=lambda stage, done, total: stages.append(stage))
    json.dumps(table)
    assert [r["method"] for r in table["rows"]] == ["hscc", "svd", "tucker"]
    for row in table["rows"]:
        for field in ROW_FIELDS:
            assert field in row, field
        assert row["budget"] == 3.0 and row["device"] == "cpu"
        # The conv layers met the 3x budget (within 2 %); the whole model gains less.
        assert row["layer_flops_ratio"] == pytest.approx(3.0, rel=0.05) or row["budget_met"] is False
        assert 1.0 < row["flops_ratio"] <= row["layer_flops_ratio"] + 1e-9
        for who in ("original", "compressed"):
            for b in ("b1", "b32"):
                lat = row["latency_ms"][who][b]
                assert 0 < lat["median"] <= lat["p90"]
        assert row["speedup_b32"] == pytest.approx(
            row["latency_ms"]["original"]["b32"]["median"] / row["latency_ms"]["compressed"]["b32"]["median"])
        assert row["efficiency_b32"] == pytest.approx(row["speedup_b32"] / row["flops_ratio"])
        assert row["latency_ms"]["memory_format"] == "channels_last"  # the original timed as the others
    assert "speed" in stages and table["machine"]["torch"] == torch.__version__
    # The workspace's cached baseline is left on the CPU and untouched.
    model, _ = trained_workspace.baseline()
    assert next(model.parameters()).device.type == "cpu"


def test_speed_table_validates(trained_workspace):
    with pytest.raises(ValueError, match="runs"):
        speed_table(trained_workspace, methods=("svd",), budgets=(3.0,), runs=0, devices=["cpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="GPU"):
            speed_table(trained_workspace, methods=("svd",), devices=["cuda"])
    assert default_devices()[0] == "cpu" and machine_info()["cores"] >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_speed_table_on_gpu(trained_workspace):
    table = speed_table(trained_workspace, budgets=(3.0,), runs=2, devices=["cuda"])
    for row in table["rows"]:  # every layer type can be captured in a CUDA graph
        assert row["device"] != "cpu" and row["speedup_b32"] > 0 and row["speedup_graph_b32"] > 0


def test_speed_table_times_greedy_hscc(trained_workspace):
    table = speed_table(trained_workspace, methods=("hscc",), budgets=(3.0,), runs=2, devices=["cpu"],
                        hscc_allocation="greedy")
    row = table["rows"][0]
    # Greedy allocation has no single energy threshold; the budget is met all the same.
    assert row["energy"] is None and row["budget_met"] is not False
    assert row["layer_flops_ratio"] == pytest.approx(3.0, rel=0.05) and row["speedup_b32"] > 0


def test_speed_table_builds_what_the_run_options_say(trained_workspace):
    """`hscc bench --speed --rank-multiple 8 --calib-size 16 ...` times those models: HSCC takes every
    setting, the weight-only baselines those they read; each row records the config it timed."""
    from hscc_core.runs.config import RunConfig

    settings = {"calib_size": 16, "seed": 3, "calib_flip": True, "calibration": "sequential", "rank_multiple": 2}
    table = speed_table(trained_workspace, methods=("hscc", "svd"), budgets=(2.0,), runs=1, devices=["cpu"],
                        settings=settings)
    hscc, svd = (RunConfig.from_canonical(r["config"]) for r in table["rows"])
    assert (hscc.rank_multiple, hscc.calibration, hscc.calib_size, hscc.seed, hscc.calib_flip) == (
        2, "sequential", 16, 3, True)
    # (Global SVD at the uniform rule reads no calibration images, so its config leaves them out.)
    assert (svd.method, svd.rank_multiple, svd.calibration, svd.seed) == ("svd", 1, "independent", 3)
