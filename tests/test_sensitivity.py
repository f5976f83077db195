"""Tests for hscc_core.compress.sensitivity: each layer's measured KL curve, for every method, and the
sensitivity-priced greedy plan that follows from it."""

import pytest
import torch

from conftest import conv_stack, random_images
from hscc_core.compress.allocation import greedy_plan
from hscc_core.compress.methods import Settings, get_method, make_plan
from hscc_core.compress.sensitivity import Sensitivity, layer_sensitivity, sensitivity_plan

torch.set_num_threads(2)
SHAPE = (1, 3, 48, 48)


def decomposition(method, side="output"):
    model, x = conv_stack(), random_images(16)
    m = get_method(method)
    d = m.decompose(model, SHAPE, Settings(grid=2, clusters=2, cluster_side=side),
                    lambda s, g, k: s.compute_stats(model, x, g, k, 0))
    return model, x, m, d


@pytest.mark.parametrize("method,side", [("hscc", "output"), ("hscc", "input"), ("svd", "output"),
                                         ("tucker", "output")])
def test_every_layer_gets_a_measured_curve_and_the_plan_meets_the_budget(method, side):
    model, x, m, d = decomposition(method, side)
    sens = layer_sensitivity(m, model, d, x, energies=(0.5, 0.8, 0.95))
    names = list(m.plan(d, 0.9).summaries())
    assert list(sens.points) == names and sens.weights is None
    for name, points in sens.points.items():
        assert len(points) == 3 and all(0 <= dd <= 1 and kl >= 0 for dd, kl in points)
    # Truncating a layer changes the output: some layer has a measured KL.
    assert any(kl > 0 for ps in sens.points.values() for _, kl in ps)
    assert Sensitivity.from_json(sens.to_json()) == sens
    plan, outcome = make_plan(m, d, budget=3.0, allocation="sensitivity", sensitivity=sens)
    assert outcome.energy is None and plan.macs() <= d.original_macs / 3 and set(outcome.prices or names) == set(names)
    # Never worse than the energy-greedy plan under the additive KL model it minimises.
    greedy = greedy_plan(d, d.original_macs / 3)
    model_kl = lambda p: sens.modelled_kl({n: 1 - c for n, c in p.captured_energy().items()})  # noqa: E731
    assert model_kl(plan) <= model_kl(greedy) + 1e-12
    with torch.no_grad():  # the original is left as it was
        torch.testing.assert_close(model(x), conv_stack()(x))
    with pytest.raises(ValueError, match="sensitivities go with allocation 'sensitivity'"):
        make_plan(m, d, budget=3.0, allocation="sensitivity")


def test_the_curve_is_piecewise_linear_and_its_slope_prices_a_layer_where_the_plan_is():
    sens = Sensitivity({"a": [(0.1, 0.1), (0.2, 0.5), (0.05, 0.02)], "b": [(0.1, 0.2), (0.2, 0.15)],
                        "c": [(0.0, 0.0)]})
    assert sens.kl("a", 0.0) == 0 and sens.kl("a", 0.05) == pytest.approx(0.02)
    assert sens.kl("a", 0.15) == pytest.approx(0.3) and sens.kl("a", 0.3) == pytest.approx(0.9)  # last slope on
    assert sens.slope("a", 0.01) == pytest.approx(0.4) and sens.slope("a", 0.15) == pytest.approx(4.0)
    assert sens.kl("b", 0.2) == pytest.approx(0.2)  # a dip is noise: the curve never falls
    # A layer never truncated at the measured thresholds is as steep as the steepest measured one.
    assert sens.slope("c", 0.1) == pytest.approx(max(0.5 / 0.2, 0.2 / 0.2))
    prices = sens.prices({"a": 0.15, "b": 0.15, "c": 0.0})
    assert prices["a"] == pytest.approx(4.0) and prices["b"] == pytest.approx(4e-3)  # flat there: the floor
    assert sens.modelled_kl({"a": 0.15, "b": 0.1, "c": 0.0}) == pytest.approx(0.3 + 0.2)


def test_sensitivity_plan_moves_energy_to_the_layer_whose_curve_is_steep():
    model, x, m, d = decomposition("svd")
    greedy = greedy_plan(d, d.original_macs / 3)
    starved = min(greedy.captured_energy().items(), key=lambda item: item[1])[0]  # what energy-greedy cuts most
    steep = {n: [(0.05, 10.0 if n == starved else 0.01), (0.5, 20.0 if n == starved else 0.02)] for n in d.layers}
    plan, prices = sensitivity_plan(d, d.original_macs / 3, Sensitivity(steep))
    assert prices and prices[starved] == max(prices.values())
    assert plan.captured_energy()[starved] > greedy.captured_energy()[starved]
    assert plan.macs() <= d.original_macs / 3
    with pytest.raises(ValueError, match="thresholds in \\(0, 1\\)"):
        layer_sensitivity(m, model, d, x, energies=(1.0,))
