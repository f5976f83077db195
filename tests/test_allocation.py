"""Tests for hscc_core.compress.allocation: greedy rank allocation meets budgets and beats the uniform rule."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SIDES, cnn, hscc_decomposition, region_modules
from hscc_core.compress.allocation import _steps, captured_energy, greedy_budget, greedy_plan
from hscc_core.compress.budgets import search_energy
from hscc_core.compress.hscc import Plan, build_hscc, plan_at_energy, plan_macs
from hscc_core.compress.spectral import energy_rank
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)


def random_cnn(seed: int = 0) -> nn.Module:
    return cnn((12, 16, 20), ((3, 1, 1), (5, 2, 2), (3, 1, 1)), seed, head=False)


X = torch.randn(20, 3, 24, 24, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def decomps():
    model = random_cnn()
    return model, {side: hscc_decomposition(model, X, side, 2, 3) for side in SIDES}


def next_step_costs(plan):
    """For every block that still has energy left out: the MACs of its next purchase."""
    out = []
    for lp in plan.layers.values():
        d = lp.decomp
        for reg, ranks, dense in zip(d.regions, lp.ranks, lp.dense):
            area = (reg.bounds[1] - reg.bounds[0]) * (reg.bounds[3] - reg.bounds[2])
            for b, k, is_dense in zip(reg.blocks, ranks, dense):
                if is_dense or energy_rank(b.ratio, 1.0) <= k:  # nothing left that tau = 1 keeps
                    continue
                n = b.channels.size
                out.append(area * (d.side.block_macs(d, n, k + 1)[0] - d.side.block_macs(d, n, k)[0]))
    return out


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("budget", [1.5, 3.0, 6.0])
def test_greedy_meets_budget_within_one_direction(decomps, side, budget):
    model, d = decomps
    decomp = d[side]
    target = decomp.original_macs / budget
    plan = greedy_plan(decomp, target)
    assert isinstance(plan, Plan) and plan.side.name == side
    assert plan.energy is None
    macs = plan.macs()
    assert macs <= target
    pending = next_step_costs(plan)
    assert pending, "the budget should leave some energy out"
    assert target - macs < min(pending)  # nothing that is left out would still fit
    plan2, res = greedy_budget(decomp, budget)
    assert plan2.macs() == res.macs == macs and res.met and res.energy is None
    assert res.achieved_ratio == pytest.approx(decomp.original_macs / macs)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("budget", [2.0, 3.0, 6.0])
def test_greedy_captures_more_energy_than_uniform_at_no_more_macs(decomps, side, budget):
    model, d = decomps
    decomp = d[side]
    found = search_energy(lambda e: plan_macs(decomp, e), decomp.original_macs, budget)
    uniform = plan_at_energy(decomp, found.energy)
    greedy = greedy_plan(decomp, uniform.macs())
    assert greedy.macs() <= uniform.macs()
    eu, eg = captured_energy(uniform), captured_energy(greedy)
    assert sum(eg.values()) >= sum(eu.values())
    assert all(0.0 <= v <= 1.0 for v in list(eu.values()) + list(eg.values()))


@pytest.mark.parametrize("side", SIDES)
def test_greedy_plans_build_and_flops_agree(decomps, side):
    model, d = decomps
    decomp = d[side]
    plan = greedy_plan(decomp, decomp.original_macs / 4)
    json.dumps({n: s.to_json() for n, s in plan.summaries().items()})
    comp = build_hscc(model, plan)
    counted = layer_flops(comp, list(plan.layers), (1, 3, 24, 24))
    mods = region_modules(comp)
    assert set(mods) == set(plan.layers)
    for name, mod in mods.items():
        assert mod.analytical_macs() == plan.layers[name].macs
        assert abs(counted[name] - 2 * mod.analytical_macs()) <= 0.01 * counted[name]
    with torch.no_grad():
        assert torch.isfinite(comp(X)).all()


@pytest.mark.parametrize("side", SIDES)
def test_whole_budget_gives_every_energy_direction(decomps, side):
    model, d = decomps
    decomp = d[side]
    plan = greedy_plan(decomp, decomp.original_macs)
    assert all(v == pytest.approx(1.0) for v in captured_energy(plan).values())
    assert plan.macs() <= plan_at_energy(decomp, 1.0).macs() <= decomp.original_macs
    assert greedy_plan(decomp, 1).macs() == 0  # nothing fits: every block at rank 0


def test_budget_not_met_when_all_energy_is_cheap():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, 1, 1)
    with torch.no_grad():  # rank-2 weights: every block has two directions of energy
        conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 72)).view(16, 8, 3, 3))
    model = nn.Sequential(conv).eval()
    x = torch.randn(12, 8, 12, 12)
    decomp = hscc_decomposition(model, x, "output", 2, 1)
    plan, res = greedy_budget(decomp, 1.2)
    assert not res.met and "not met" in res.message
    assert plan.summaries()["0"].ranks == ((2,),) * 4
    with pytest.raises(ValueError, match="budget"):
        greedy_budget(decomp, 1.0)
    with pytest.raises(ValueError, match="target"):
        greedy_plan(decomp, 0)
    with pytest.raises(TypeError):
        greedy_plan(object(), 10)


def test_steps_iron_the_jump_to_dense():
    # k* = 3: two directions at 10 MACs, then dense for 25 - 20 = 5 MACs with the rest of the energy.
    keys, costs, kstar = _steps(np.array([0.4, 0.3, 0.2, 0.1]), 10, 25)
    assert kstar == 3 and costs.tolist() == [10, 10, 5] and costs.sum() == 25
    # 0.3 energy for 5 MACs beats the directions: the whole block is worth 1.0 / 25 per MAC.
    np.testing.assert_allclose(keys, [0.04, 0.04, 0.04])
    keys, costs, kstar = _steps(np.array([0.9, 0.05, 0.03, 0.02]), 10, 35)
    assert kstar == 4 and costs.tolist() == [10, 10, 10, 5]
    np.testing.assert_allclose(keys, [0.09, 0.005, 0.05 / 15, 0.05 / 15])  # only the tail is pooled
    assert np.all(np.diff(keys) <= 0)


# --------------------------------------------------------------------------- rank multiples, baselines, sensitivity


@pytest.mark.parametrize("side", SIDES)
def test_rank_multiples_in_every_rule(decomps, side):
    model, d = decomps
    decomp = d[side]

    def rounded(plan):
        for lp in plan.layers.values():
            for reg, ranks, dense in zip(lp.decomp.regions, lp.ranks, lp.dense):
                for b, k, is_dense in zip(reg.blocks, ranks, dense):
                    assert is_dense or k % 4 == 0 or k == b.eigvals.size, (k, b.eigvals.size)

    by_energy = plan_at_energy(decomp, 0.8, multiple=4)
    rounded(by_energy)
    assert by_energy.macs() >= plan_at_energy(decomp, 0.8).macs()  # rounding up keeps at least as much
    target = decomp.original_macs / 3
    plan = greedy_plan(decomp, target, multiple=4)
    rounded(plan)
    assert plan.macs() <= target
    comp = build_hscc(model, plan)
    counted = layer_flops(comp, list(plan.layers), (1, 3, 24, 24))
    assert sum(counted.values()) == 2 * plan.macs()
    with pytest.raises(ValueError, match="multiple"):
        greedy_plan(decomp, target, multiple=0)


@pytest.fixture(scope="module")
def baselines():
    from hscc_core.compress.svd import svd_decompose
    from hscc_core.compress.tucker import tucker_decompose

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 5, 2, 2), nn.ReLU(), nn.Conv2d(24, 48, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(48, 48, 3, 1, 1), nn.ReLU(), nn.Conv2d(48, 32, 3, 1, 1)).eval()
    shape = (1, 3, 32, 32)
    return model, shape, {"svd": svd_decompose(model, input_shape=shape),
                          "tucker": tucker_decompose(model, input_shape=shape)}


@pytest.mark.parametrize("method", ["svd", "tucker"])
@pytest.mark.parametrize("budget", [2.0, 3.0, 6.0])
def test_baseline_greedy_meets_budgets_and_builds(baselines, method, budget):
    from hscc_core.compress.methods import get_method

    model, shape, d = baselines
    decomp = d[method]
    plan, res = greedy_budget(decomp, budget)
    assert res.met, res.message
    assert plan.energy is None and res.macs == plan.macs() <= decomp.original_macs / budget
    assert all((k >= 1) if method == "svd" else min(k) >= 1 for k in plan.ranks.values())  # rank >= 1 everywhere
    comp = get_method(method).build(model, plan)
    counted = layer_flops(comp, list(plan.ranks), shape)
    assert sum(counted.values()) == 2 * plan.macs()
    json.dumps({n: s.to_json() for n, s in plan.summaries().items()})
    # Like HSCC's greedy: at the uniform rule's MACs it keeps at least as much of the weights' energy.
    method_plan = get_method(method).plan
    uniform = method_plan(decomp, search_energy(lambda e: method_plan(decomp, e).macs(), decomp.original_macs,
                                                budget).energy)
    greedy = greedy_plan(decomp, uniform.macs())
    assert greedy.macs() <= uniform.macs()
    assert sum(captured_energy(greedy).values()) >= sum(captured_energy(uniform).values()) - 1e-9


def test_baseline_greedy_gives_everything_for_the_whole_budget(baselines):
    _, _, d = baselines
    for decomp in d.values():
        plan = greedy_plan(decomp, decomp.original_macs)
        assert all(v == pytest.approx(1.0) for v in captured_energy(plan).values())
        assert plan.macs() <= decomp.original_macs
    plan, res = greedy_budget(d["svd"], 1000.0)  # below rank 1 everywhere: infeasible, said so
    assert not res.met and "infeasible" in res.message and all(k == 1 for k in plan.ranks.values())
    with pytest.raises(ValueError, match="rank multiples apply to HSCC only"):
        greedy_plan(d["tucker"], 10_000, multiple=8)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("budget", [2.0, 4.0])
def test_sensitivity_allocation_meets_budgets_like_the_other_rules(decomps, baselines, side, budget):
    model, d = decomps
    cases = [d[side], *baselines[2].values()]
    for decomp in cases:
        names = list(decomp.layers)
        weights = {n: 10.0 ** i for i, n in enumerate(names)}  # later layers priced far higher
        plan, res = greedy_budget(decomp, budget, weights=weights)
        plain, _ = greedy_budget(decomp, budget)
        assert res.met, res.message
        assert plan.macs() <= decomp.original_macs / budget
        # Pricing the last layer highest keeps at least as much of it as the plain greedy rule.
        assert captured_energy(plan)[names[-1]] >= captured_energy(plain)[names[-1]] - 1e-12
    with pytest.raises(ValueError, match="weights must be finite and > 0 for every layer"):
        greedy_plan(d[side], 100, weights={names[0]: 1.0})
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        greedy_plan(d[side], 100, weights={n: 0.0 for n in d[side].layers})
