"""Tests for hscc_core.compress.budgets: bisection on step-function cost curves, per method."""

import math

import pytest
import torch
from torch import nn

from hscc_core.compress.budgets import MIN_ENERGY, BudgetResult, search_energy
from hscc_core.compress.methods import Settings, get_method
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)


def steps(levels):
    """A monotone step cost: levels[i] MACs for energy in (i/n, (i+1)/n]."""
    n = len(levels)
    return lambda e: levels[min(n - 1, max(0, math.ceil(e * n) - 1))]


def test_meets_budget_and_takes_largest_feasible_energy():
    cost = steps(list(range(100, 1001, 10)))  # 91 levels, 100..1000 MACs
    r = search_energy(cost, 1000, 3.0)
    assert r.met and r.macs == 330 and r.target_macs == pytest.approx(1000 / 3)
    assert cost(r.energy) <= r.target_macs < cost(r.energy + 1e-9)
    assert r.achieved_ratio == pytest.approx(1000 / 330)
    assert "met" in r.message


def test_gap_reports_closest_feasible():
    cost = steps([100, 200, 300, 500, 800, 1000])
    r = search_energy(cost, 1000, 2.5)  # target 400: nothing in [392, 400]
    assert not r.met and r.macs == 300 and r.macs <= r.target_macs
    assert "not met" in r.message and "closest feasible" in r.message and "500" in r.message


def test_infeasible_and_full_energy_cases():
    r = search_energy(steps([600, 1000]), 1000, 2.0)
    assert not r.met and r.energy == MIN_ENERGY and r.macs == 600 and "infeasible" in r.message
    r = search_energy(lambda e: 495, 1000, 2.0)  # already cheap enough at energy 1, within 2 %
    assert r.met and r.energy == 1.0
    r = search_energy(lambda e: 300, 1000, 2.0)
    assert not r.met and r.energy == 1.0 and "even energy 1" in r.message


def test_validation():
    for bad in (1.0, 0.5, -2.0):
        with pytest.raises(ValueError, match="budget must be > 1"):
            search_energy(lambda e: 1, 100, bad)
    with pytest.raises(ValueError):
        search_energy(lambda e: 1, 0, 2.0)
    with pytest.raises(ValueError):
        BudgetResult(energy=0.0, macs=1, target_macs=1.0, original_macs=2, met=True, message="")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
    ).eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, (1, 3, 16, 16)


@pytest.mark.parametrize("method", ["hscc", "svd", "tucker"])
def test_each_method_meets_a_budget_measured_by_flop_counter(tiny, method):
    model, x, shape = tiny
    m = get_method(method)
    d = m.decompose(model, shape, Settings(grid=2, clusters=3),
                    lambda side, grid, clusters: side.compute_stats(model, x, grid, clusters, 0))
    r = search_energy(lambda e: m.plan(d, e).macs(), d.original_macs, 2.0)
    assert r.met, r.message
    comp = m.build(model, m.plan(d, r.energy))
    measured = sum(layer_flops(comp, ["0", "2", "4"], shape).values()) / 2
    assert r.target_macs * 0.98 <= measured <= r.target_macs
    far = search_energy(lambda e: m.plan(d, e).macs(), d.original_macs, 100.0)
    assert not far.met and far.macs > far.target_macs and "infeasible" in far.message
