"""Tests for hscc_core.compress.svd and hscc_core.compress.tucker: the baselines as real factorised modules."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import cnn
from hscc_core.compress.summary import LayerSummary
from hscc_core.compress.svd import LowRankConv2d, build_svd, plan_svd, plan_svd_macs, svd_decompose
from hscc_core.compress.tucker import Tucker2Conv2d, build_tucker, plan_tucker, plan_tucker_macs, tucker_decompose
from hscc_core.nn.layers import layer_shapes
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)
SHAPE = (1, 3, 32, 32)
ENERGIES = [0.2, 0.5, 0.8, 0.9, 0.97, 1.0]


def tiny_cnn(seed: int = 0) -> nn.Module:
    return cnn((16, 32, 24), ((3, 1, 1), (5, 2, 2), (11, 4, 2)), seed)


def x_in(n=4, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def weight_error(model, comp, name):
    """|| W - W_hat ||_F^2 with W_hat recovered by feeding the factorised layer impulses."""
    conv = model.get_submodule(name)
    w = conv.weight.detach().double()
    mod = comp.get_submodule(name)
    if isinstance(mod, LowRankConv2d):
        a, b = mod[0].weight.double(), mod[1].weight.double()[:, :, 0, 0]
        w_hat = torch.einsum("ok,kihw->oihw", b, a)
    elif isinstance(mod, Tucker2Conv2d):
        f_in, core, f_out = mod[0].weight.double()[:, :, 0, 0], mod[1].weight.double(), mod[2].weight.double()[:, :, 0, 0]
        w_hat = torch.einsum("oa,abhw,bi->oihw", f_out, core, f_in)
    else:
        w_hat = mod.weight.detach().double()
    return ((w - w_hat) ** 2).sum().item()


def test_layer_shapes():
    sh = layer_shapes(tiny_cnn(), SHAPE)
    assert [(s.in_hw, s.out_hw) for s in sh.values()] == [
        ((32, 32), (32, 32)), ((32, 32), (16, 16)), ((16, 16), (3, 3))]
    with pytest.raises(ValueError):
        layer_shapes(tiny_cnn(), SHAPE, ["1"])


@pytest.mark.parametrize("method", ["svd", "tucker"])
def test_energy_one_reproduces(method):
    model, x = tiny_cnn(), x_in()
    if method == "svd":
        comp = build_svd(model, plan_svd(svd_decompose(model, input_shape=SHAPE), 1.0))
    else:
        comp = build_tucker(model, plan_tucker(tucker_decompose(model, input_shape=SHAPE), 1.0))
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)


def low_rank_model():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 32, 3, 2, 1)
    with torch.no_grad():
        core = torch.randn(3, 2, 3, 3)
        conv.weight.copy_(torch.einsum("oa,abhw,ib->oihw", torch.randn(32, 3), core, torch.randn(16, 2)))
    return nn.Sequential(conv).eval()


@pytest.mark.parametrize("method", ["svd", "tucker"])
def test_low_rank_weights_factorised_exactly(method):
    model = low_rank_model()
    shape = (1, 16, 20, 20)
    if method == "svd":
        plan = plan_svd(svd_decompose(model, input_shape=shape), 1.0)
        assert plan.ranks == {"0": 3} and not plan.is_dense("0")  # O x (I kh kw) unfolding has rank 3
        comp = build_svd(model, plan)
        assert isinstance(comp[0], LowRankConv2d)
    else:
        plan = plan_tucker(tucker_decompose(model, input_shape=shape), 1.0)
        assert plan.ranks == {"0": (3, 2)} and not plan.is_dense("0")
        comp = build_tucker(model, plan)
        assert isinstance(comp[0], Tucker2Conv2d)
    x = torch.randn(3, 16, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-4, atol=1e-4)
    assert 2 * plan.macs() == layer_flops(comp, ["0"], shape)["0"]


@pytest.mark.parametrize("method", ["svd", "tucker"])
def test_flops_closed_form_and_monotone(method):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if method == "svd":
        decomp, plan_fn, build, cost = svd_decompose(model, input_shape=SHAPE), plan_svd, build_svd, plan_svd_macs
    else:
        decomp, plan_fn, build, cost = (tucker_decompose(model, input_shape=SHAPE), plan_tucker,
                                        build_tucker, plan_tucker_macs)
    names = ["0", "2", "4"]
    totals, errors = [], []
    for e in ENERGIES:
        plan = plan_fn(decomp, e)
        comp = build(model, plan)
        counted = layer_flops(comp, names, SHAPE)
        for n in names:
            assert counted[n] == 2 * plan.layer_macs(n)
        assert plan.macs() == cost(decomp, e)
        totals.append(sum(counted.values()))
        errors.append(sum(weight_error(model, comp, n) for n in names))
        summ = plan.summaries()
        assert set(summ) == set(names) and all(s.macs <= s.original_macs for s in summ.values())
        for name, s in summ.items():
            assert s.kind == method and len(s.regions) == 1 and s.regions[0].macs == s.macs == plan.layer_macs(name)
            assert s.regions[0].bounds == (0, *s.out_hw[:1], 0, *s.out_hw[1:])
            assert LayerSummary.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert totals[0] < totals[-1] == 2 * decomp.original_macs
    assert all(a <= b for a, b in zip(totals, totals[1:]))
    assert all(b <= a * (1 + 1e-6) + 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0 and errors[-1] < 1e-8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(type(model[i]) is nn.Conv2d for i in (0, 2, 4))


def test_alexnet_baselines_at_64px():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=4).eval()
    shape = (1, 3, 64, 64)
    x = x_in(2, 64)
    decomp = svd_decompose(model, input_shape=shape)
    assert list(decomp.layers) == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    assert plan_svd(decomp, 1.0).macs() == decomp.original_macs  # every layer dense at tau = 1
    with torch.no_grad():
        ref = model(x)
        plan = plan_svd(decomp, 0.6)
        comp = build_svd(model, plan)
        assert comp(x).shape == ref.shape
    counted = layer_flops(comp, list(plan.ranks), shape)
    assert sum(counted.values()) == 2 * plan.macs() < 2 * decomp.original_macs


def test_energy_validation():
    d = svd_decompose(tiny_cnn(), input_shape=SHAPE)
    for bad in (0.0, 1.01):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            plan_svd(d, bad)
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            plan_tucker(tucker_decompose(tiny_cnn(), input_shape=SHAPE), bad)
    assert np.isfinite(plan_svd_macs(d, 0.5))


@pytest.mark.parametrize("kind, ranks", [("svd", {"rank": 3, "full_rank": 8}),
                                         ("tucker", {"rank_out": 5, "rank_in": 1})])
def test_dense_layer_labels_say_dense(kind, ranks):
    """A baseline layer left dense ran none of its planned ranks: its table text and heat-map label say
    so (a Tucker-2 conv1 kept dense was labelled '49x1' on the heat maps)."""
    from hscc_core.compress.weightonly import baseline_summary
    from hscc_core.nn.layers import ConvShape

    shape = ConvShape(in_channels=1, out_channels=8, kernel_size=(3, 3), out_hw=(6, 6), in_hw=(8, 8))
    dense = baseline_summary(kind, shape, shape.original_macs, True, 8, 8, **ranks)
    assert dense.rank_text() == "dense"
    assert dense.region_text(dense.regions[0]) == "dense"
    cut = baseline_summary(kind, shape, shape.original_macs // 2, False, 3, 8, **ranks)
    assert "dense" not in cut.rank_text() and "dense" not in cut.region_text(cut.regions[0])
