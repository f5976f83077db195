"""Tests for hscc_core.compress.methods: one interface for every method, and a run's target applied."""

import pytest
import torch

from conftest import conv_stack, random_images
from hscc_core.compress.allocation import GreedyBudget
from hscc_core.compress.budgets import BudgetResult
from hscc_core.compress.methods import METHODS, Settings, get_method, make_plan
from hscc_core.compress.sensitivity import Sensitivity
from hscc_core.compress.summary import LayerSummary
from hscc_core.measure.costs import layer_flops

SHAPE = (1, 3, 48, 48)


def decomposition(method, side="output"):
    model, x = conv_stack(), random_images(16)
    m = get_method(method)
    seen = []

    def stats(s, grid, clusters):
        seen.append((s.name, grid, clusters))
        return s.compute_stats(model, x, grid, clusters, 0)

    d = m.decompose(model, SHAPE, Settings(grid=2, clusters=3, cluster_side=side), stats)
    return model, m, d, seen


def test_registry_by_name():
    assert list(METHODS) == ["hscc", "svd", "tucker"]
    assert [get_method(n).title for n in METHODS] == ["HSCC", "Global SVD", "Tucker-2"]
    assert get_method("hscc").data_aware and not get_method("svd").data_aware
    with pytest.raises(ValueError, match="unknown method 'pca' \\(allowed: hscc, svd, tucker\\)"):
        get_method("pca")


@pytest.mark.parametrize("method,side", [("hscc", "output"), ("hscc", "input"), ("svd", "output"),
                                         ("tucker", "output")])
def test_every_method_plans_builds_and_summarises_alike(method, side):
    model, m, d, seen = decomposition(method, side)
    assert seen == ([(side, 2, 3)] if method == "hscc" else [])  # weight-only methods read no data
    plan, outcome = make_plan(m, d, energy=0.8)
    assert outcome is None and plan.energy == 0.8
    comp = m.build(model, plan)
    summaries = plan.summaries()
    assert all(isinstance(s, LayerSummary) and s.kind == method for s in summaries.values())
    counted = layer_flops(comp, list(summaries), SHAPE)
    assert sum(counted.values()) == 2 * plan.macs() == 2 * sum(s.macs for s in summaries.values())
    assert m.decomposition_key(Settings(grid=2, clusters=3, cluster_side=side)) == m.decomposition_key(
        Settings(grid=2, clusters=3, cluster_side=side))


@pytest.mark.parametrize("method", ["hscc", "svd", "tucker"])
def test_budget_mode_uniform_for_every_method(method):
    model, m, d, _ = decomposition(method)
    plan, outcome = make_plan(m, d, budget=2.0)
    # Met, or (a step cost with no step in the 2 % window) the closest feasible plan, said so.
    assert isinstance(outcome, BudgetResult) and (outcome.met or "closest feasible" in outcome.message)
    assert plan.energy == outcome.energy and plan.macs() == outcome.macs <= d.original_macs / 2


@pytest.mark.parametrize("method,side", [("hscc", "input"), ("hscc", "output"), ("svd", "output"),
                                         ("tucker", "output")])
def test_greedy_and_sensitivity_for_every_method(method, side):
    model, m, d, _ = decomposition(method, side)
    curves = Sensitivity({n: [(0.1, 0.1 * (1 + i)), (0.3, 0.5 * (1 + i))]
                          for i, n in enumerate(m.plan(d, 0.9).summaries())})
    for allocation, sens in (("greedy", None), ("sensitivity", curves)):
        plan, outcome = make_plan(m, d, budget=3.0, allocation=allocation, sensitivity=sens)
        assert isinstance(outcome, GreedyBudget) and plan.energy is None and plan.macs() <= d.original_macs / 3
        comp = m.build(model, plan)
        counted = layer_flops(comp, list(plan.summaries()), SHAPE)
        assert sum(counted.values()) == 2 * plan.macs()
    with pytest.raises(ValueError, match="sensitivities go with allocation 'sensitivity'"):
        make_plan(m, d, budget=3.0, allocation="greedy", sensitivity=curves)


def test_plan_rules_every_method_refuses():
    _, svd, sd, _ = decomposition("svd")
    with pytest.raises(ValueError, match="rank multiples apply to HSCC only"):
        make_plan(svd, sd, energy=0.9, multiple=8)
    with pytest.raises(ValueError, match="weight-only"):
        svd.fit_sequential(None, None, None)
    assert get_method("hscc").calibrations == ("independent", "sequential")
    assert get_method("tucker").calibrations == ("independent",)
    with pytest.raises(ValueError, match="either an energy threshold or a budget"):
        make_plan(svd, sd, energy=0.9, budget=3.0)
    with torch.no_grad():
        assert make_plan(svd, sd, energy=1.0)[0].macs() == sd.original_macs
