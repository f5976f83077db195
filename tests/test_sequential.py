"""Tests for hscc_core.compress.hscc.sequential: sequential (asymmetric) calibration is exact at tau = 1 and
reduces the compounded layer-by-layer error of independent calibration at equal MACs, on both cluster sides."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SIDES, hscc_decomposition, random_images, region_modules
from hscc_core.compress.hscc import build_hscc, plan_at_energy
from hscc_core.compress.hscc.sequential import cross_stats, fit_sequential, load_cross, save_cross
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)
NAMES = ["0", "2", "4", "6"]


def net() -> nn.Module:
    """Four convs; conv '4' has 48 outputs and a 1x1 kernel after it, so input-side clusters of a few
    channels are fitted in the im2col basis (|c| kh kw < O) as well as the output basis."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 16, 5, 2, 2), nn.ReLU(),
                         nn.Conv2d(16, 48, 3, 1, 1), nn.ReLU(), nn.Conv2d(48, 40, 1), nn.ReLU()).eval()


X = random_images(64, 24)
HELD = random_images(32, 24, seed=7)


def outputs(model, x):
    """Each conv's output in a full forward pass (errors compound, as at inference)."""
    out = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone()))
             for n in NAMES]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def errors(reference, model, x):
    o, c = outputs(reference, x), outputs(model, x)
    return np.array([float(((c[n] - o[n]) ** 2).sum() / (o[n] ** 2).sum()) for n in NAMES])


def source(model, calls=None):
    def cross(name, prefix, lp, ident):
        if calls is not None:
            calls.append((name, ident))
        return cross_stats(model, prefix, name, lp, X, batch_size=16)
    return cross


@pytest.mark.parametrize("side", SIDES)
def test_sequential_is_exact_at_energy_one(side):
    model = net()
    plan = plan_at_energy(hscc_decomposition(model, X, side, 2, 3), 1.0)
    comp = build_hscc(model, fit_sequential(model, plan, source(model)))
    with torch.no_grad():
        for x in (X, HELD):
            torch.testing.assert_close(comp(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side,grid,clusters,energy", [("output", 1, 1, 0.7), ("output", 2, 3, 0.8),
                                                       ("input", 2, 4, 0.7), ("input", 1, 1, 0.8)])
def test_sequential_reduces_the_compounded_error_at_equal_macs(side, grid, clusters, energy):
    model = net()
    plan = plan_at_energy(hscc_decomposition(model, X, side, grid, clusters), energy)
    calls = []
    fitted = fit_sequential(model, plan, source(model, calls))
    # The fit changes directions, never ranks: same MACs, same dense blocks, same summaries.
    assert fitted.macs() == plan.macs() and fitted.energy == plan.energy
    assert {n: s.to_json() for n, s in fitted.summaries().items()} == {n: s.to_json() for n, s in plan.summaries().items()}
    independent, sequential = build_hscc(model, plan), build_hscc(model, fitted)
    counted = layer_flops(sequential, NAMES, (1, 3, 24, 24))
    for name, mod in region_modules(sequential).items():
        assert counted[name] == 2 * mod.analytical_macs() == 2 * plan.layers[name].macs
    # Every layer after the first is fitted on the compressed prefix, whose identity is the earlier ranks.
    assert [c[0] for c in calls] == NAMES[1:]
    assert [[entry[0] for entry in ident] for _, ident in calls] == [NAMES[:i] for i in range(1, 4)]
    assert calls[0][1][0][1] == [list(r) for r in plan.layers["0"].ranks]
    for x in (X, HELD):  # calibration images and held-out images
        e_ind, e_seq = errors(model, independent, x), errors(model, sequential, x)
        assert e_seq[0] == pytest.approx(e_ind[0])  # the first layer sees the original's inputs either way
        # Never worse, and better from the first layer whose inputs carry an earlier layer's error on.
        assert np.all(e_seq <= e_ind * (1 + 1e-6) + 1e-12), (e_ind, e_seq)
        first_err = int(np.argmax(e_ind > 1e-9))  # round-off (1e-14) is no error
        assert np.all(e_seq[first_err + 1:] < e_ind[first_err + 1:]), (e_ind, e_seq)


def test_cross_statistics_round_trip_and_the_im2col_basis(tmp_path):
    model = net()
    plan = plan_at_energy(hscc_decomposition(model, X, "input", 2, 4), 0.7)
    prefix = build_hscc(model, plan.restrict(["0", "2"]))
    stats = cross_stats(model, prefix, "4", plan.layers["4"], X)
    bases = {c.basis for row in stats for c in row if c is not None}
    assert bases == {"input", "output"}  # small clusters of 3x3 inputs < 48 outputs, large ones not
    save_cross(tmp_path / "c.npz", stats)
    back = load_cross(tmp_path / "c.npz")
    for row, row2 in zip(stats, back):
        for a, b in zip(row, row2):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.basis == b.basis and [m.count for m in a.folds] == [m.count for m in b.folds]
                for m, m2 in zip(a.folds, b.folds):
                    for field in ("mean_a", "mean_b", "scatter_a", "scatter_b", "cross"):
                        np.testing.assert_array_equal(getattr(m, field), getattr(m2, field))
    # Two halves of the images (even, odd), merged exactly into the moments of all of them.
    c = next(c for row in stats for c in row if c is not None and c.basis == "output")
    assert c.folds[0].count == c.folds[1].count == c.all.count // 2
    # With the original as its own prefix the predictor is the target: the cross moments are the scatter.
    same = cross_stats(model, model, "2", plan.layers["2"], X)
    for c in (c for row in same for c in row if c is not None):
        for m in (*c.folds, c.all):
            np.testing.assert_allclose(m.cross, m.scatter_b, rtol=1e-9, atol=1e-9 * np.abs(m.scatter_b).max())
            np.testing.assert_allclose(m.scatter_a, m.scatter_b, rtol=1e-9, atol=1e-9 * np.abs(m.scatter_b).max())


def test_a_sample_starved_fit_is_not_worse_than_the_independent_one_on_held_out_images():
    # 12 calibration images, 2 x 2 positions per region, 48 channels: fewer samples than coefficients per
    # block. Cross-validation over the two halves of the images keeps what generalises (here, the
    # independent blocks) instead of an overfitted refit.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 48, 3, 1, 1),
                          nn.ReLU(), nn.Conv2d(48, 48, 3, 1, 1), nn.ReLU()).eval()
    x, held = random_images(12, 24), random_images(64, 24, seed=5)
    plan = plan_at_energy(hscc_decomposition(model, x, "output", 4, 1), 0.8)
    fitted = fit_sequential(model, plan, lambda n, p, lp, ident: cross_stats(model, p, n, lp, x))
    with torch.no_grad():
        ref = model(held)
        e_ind = float(((build_hscc(model, plan)(held) - ref) ** 2).sum())
        e_seq = float(((build_hscc(model, fitted)(held) - ref) ** 2).sum())
    assert e_seq <= 1.01 * e_ind
