"""Tests for the time budget of hscc_core.measure.costs.measure_latency and its use by a compression
run's measure stage (hscc_core.runs.pipeline): interleaved medians kept, fewer rounds when time is
short, the kernel that ran recorded."""

import pytest
import torch
from torch import nn

from hscc_core.measure.costs import LATENCY_BUDGET_S, measure_latency


def models():
    torch.manual_seed(0)
    return {"a": nn.Conv2d(3, 8, 3).eval(), "b": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1)).eval()}


def test_a_tiny_budget_takes_the_minimum_rounds_for_every_model_and_batch():
    lat = measure_latency(models(), (1, 3, 16, 16), batch_sizes=(1, 4), runs=20, warmup=2, budget_s=1e-6,
                          min_runs=3)
    assert lat["runs_taken"] == {"b1": 3, "b4": 3} and lat["runs"] == 3 and lat["budget_s"] == 1e-6
    assert set(lat["models"]) == {"a", "b"} and all(set(m) == {"b1", "b4"} for m in lat["models"].values())


def test_a_generous_budget_or_none_takes_every_round():
    for budget in (None, 600.0):
        lat = measure_latency(models(), (1, 3, 16, 16), batch_sizes=(1, 2), runs=6, warmup=1, budget_s=budget)
        assert lat["runs_taken"] == {"b1": 6, "b2": 6} and lat["runs"] == 6


def test_min_runs_never_exceeds_runs():
    lat = measure_latency(models(), (1, 3, 16, 16), batch_sizes=(1,), runs=2, warmup=0, budget_s=1e-6, min_runs=5)
    assert lat["runs_taken"] == {"b1": 2}


@pytest.mark.parametrize("kw", [dict(budget_s=0.0), dict(budget_s=-1.0), dict(budget_s=1.0, min_runs=0)])
def test_budget_validation(kw):
    with pytest.raises(ValueError, match="budget_s must be"):
        measure_latency(models(), (1, 3, 16, 16), runs=20, **kw)


def test_a_run_records_its_timing_budget_and_kernel(trained_workspace):
    from hscc_core.runs.config import RunConfig  # noqa: PLC0415
    from hscc_core.runs.pipeline import compute_run  # noqa: PLC0415

    run, _ = compute_run(trained_workspace, RunConfig(method="hscc", grid=2, clusters=2, energy=0.9), latency_runs=7)
    lat = run["latency_ms"]
    assert lat["budget_s"] == LATENCY_BUDGET_S and lat["kernel"] in ("native", "pytorch")
    assert lat["memory_format"] == "channels_last"  # how every model was timed (the original too)
    assert set(lat["runs_taken"]) == {"b1", "b32"} and all(5 <= n <= 7 for n in lat["runs_taken"].values())
    assert lat["runs"] == min(lat["runs_taken"].values())
    assert 0 < run["measure_seconds"] < run["seconds"]
