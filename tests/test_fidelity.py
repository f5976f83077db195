"""Tests for hscc_core.measure.fidelity: per-layer relative reconstruction errors and error maps."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import cnn, hscc_decomposition
from hscc_core.compress.hscc import build_hscc, plan_at_energy
from hscc_core.measure.fidelity import layer_error_map, layer_errors

torch.set_num_threads(2)

NAMES = ["0", "2", "4"]


def small_cnn(seed: int = 0) -> nn.Module:
    # In-place ReLUs as in AlexNet: captured outputs must not be overwritten.
    return cnn((8, 16, 12), ((3, 1, 1), (5, 2, 2), (3, 1, 1)), seed, inplace=True)


def images(m: int, seed: int) -> torch.Tensor:
    return torch.randn(m, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


CALIB, HELD_OUT = images(32, 1), images(12, 2)


class WithUnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.unused = small_cnn(), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.net(x)


def test_identical_models_have_zero_error():
    model = small_cnn()
    assert layer_errors(model, model, NAMES, HELD_OUT) == {n: 0.0 for n in NAMES}
    assert layer_errors(model, copy.deepcopy(model), NAMES, HELD_OUT, batch_size=5) == {n: 0.0 for n in NAMES}
    m = layer_error_map(model, copy.deepcopy(model), "2", HELD_OUT[0])
    assert m.shape == (12, 12) and not m.any()


def test_error_decreases_as_energy_rises():
    model = small_cnn()
    decomp = hscc_decomposition(model, CALIB, "output", 2, 2)
    errs = [layer_errors(model, build_hscc(model, plan_at_energy(decomp, e)), NAMES, HELD_OUT)
            for e in (0.3, 0.6, 0.9, 0.99)]
    for n in NAMES:
        seq = [e[n] for e in errs]
        assert all(b <= a * (1 + 1e-6) + 1e-12 for a, b in zip(seq, seq[1:])), (n, seq)
        assert seq[0] > 10 * seq[-1] and 0 < seq[0] < 1
    # At tau = 1 on the calibration images the layers are reproduced (the promise of tau = 1).
    exact = layer_errors(model, build_hscc(model, plan_at_energy(decomp, 1.0)), NAMES, CALIB)
    assert all(v < 1e-10 for v in exact.values())


def test_errors_do_not_compound_and_work_for_input_side():
    model = small_cnn()
    decomp = hscc_decomposition(model, CALIB, "input", 2, 2, layers=["0"])
    comp = build_hscc(model, plan_at_energy(decomp, 0.5))
    errs = layer_errors(model, comp, NAMES, HELD_OUT)
    # Only layer 0 is compressed; later layers get the original's inputs, so they stay exact even
    # though the compressed model's own activations have drifted.
    assert errs["0"] > 1e-3 and errs["2"] == 0.0 and errs["4"] == 0.0
    with torch.no_grad():
        assert not torch.allclose(comp[:4](HELD_OUT), model[:4](HELD_OUT))


def test_error_map_mean_is_the_layer_error():
    model = small_cnn()
    decomp = hscc_decomposition(model, CALIB, "output", 3, 2)
    comp = build_hscc(model, plan_at_energy(decomp, 0.7))
    for x in (HELD_OUT[3], HELD_OUT[:4]):
        m = layer_error_map(model, comp, "2", x)
        batch = x.unsqueeze(0) if x.ndim == 3 else x
        assert m.shape == (12, 12) and m.dtype == np.float64 and (m >= 0).all() and m.max() > 0
        assert m.mean() == pytest.approx(layer_errors(model, comp, ["2"], batch)["2"], rel=1e-9)


def test_models_restored_and_bad_layers_rejected():
    model, comp = small_cnn().train(), small_cnn().train()
    layer_errors(model, comp, NAMES, HELD_OUT)
    assert all(m.training for m in model.modules()) and all(m.training for m in comp.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(AttributeError):
        layer_errors(model, comp, ["nope"], HELD_OUT)
    with pytest.raises(ValueError, match="not executed"):
        unused = WithUnusedLayer()
        layer_errors(unused, copy.deepcopy(unused), ["unused"], HELD_OUT)
    with pytest.raises(ValueError, match="no layer"):
        layer_errors(model, comp, [], HELD_OUT)
