"""Tests for hscc_core.compress.hscc: exactness at tau = 1, FLOPs, monotonicity, rank-0 blocks, clamping,
and the fast forward against the reference forward."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import conv_stack, layer_tensor, random_images
from hscc_core.compress.calibration import compute_stats
from hscc_core.compress.hscc import (
    HSCCConfig,
    HSCCConv2d,
    build_hscc,
    compress_hscc,
    decompose_hscc,
    plan_from_decomposition,
    plan_macs,
    replace_module,
    set_stage1_mode,
)
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)


def hscc_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, HSCCConv2d)}


def test_config_validation():
    HSCCConfig(grid=1, clusters=1, energy=1.0)
    for bad in (dict(grid=0), dict(clusters=0), dict(energy=0.0), dict(energy=1.5), dict(seed=-1)):
        with pytest.raises(ValueError, match="must be"):
            HSCCConfig(**bad)


@pytest.mark.parametrize("grid,clusters", [(1, 1), (2, 3), (4, 4)])
def test_energy_one_reproduces_tiny_cnn(grid, clusters):
    model, x = conv_stack(), random_images()
    stats = compute_stats(model, x, grid, batch_size=16)
    comp, plan = compress_hscc(model, stats, HSCCConfig(grid, clusters, 1.0))
    assert set(hscc_modules(comp)) == {"0", "2", "4", "6"}
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
        fresh = random_images(4, seed=7)
        torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-5, atol=1e-5)


def test_energy_one_reproduces_alexnet_on_calibration_images():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=4).eval()
    x = random_images(6, 64)
    stats = compute_stats(model, x, grid=2)
    comp, plan = compress_hscc(model, stats, HSCCConfig(2, 2, 1.0))
    assert list(plan.layers) == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    # With 6 images the deeper Grams are rank-deficient, so tau = 1 factorises some blocks: exact on
    # the calibration data (the least-squares reconstruction), which is what tau = 1 promises.
    assert plan.macs() < plan.original_macs()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(comp(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    counted = layer_flops(comp, list(plan.layers), (1, 3, 64, 64))
    for name, mod in hscc_modules(comp).items():
        assert counted[name] == 2 * mod.analytical_macs() == 2 * plan.layers[name].macs


def test_factorised_blocks_exact_for_low_rank_weights():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 72)).view(16, 8, 3, 3))
    model = nn.Sequential(conv).eval()
    x = torch.randn(12, 8, 12, 12)
    stats = compute_stats(model, x, grid=2)
    comp, plan = compress_hscc(model, stats, HSCCConfig(2, 1, 1.0))
    summ = plan.layer_summary()["0"]
    assert summ["ranks"] == [[2]] * 4 and summ["dense"] == [[False]] * 4
    with torch.no_grad():
        fresh = torch.randn(3, 8, 12, 12)  # outputs live in W's 2-d column span for any input
        torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("energy", [0.3, 0.95])
def test_counted_flops_equal_closed_form(energy):
    model, x = conv_stack(), random_images()
    stats = compute_stats(model, x, 3, batch_size=24)
    plan = plan_from_decomposition(decompose_hscc(model, stats, 3, seed=0), energy)
    comp = build_hscc(model, plan)
    counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
    assert sum(counted.values()) <= 2 * plan.original_macs()
    if energy < 0.9:
        assert sum(counted.values()) < 2 * plan.original_macs()
    for name, mod in hscc_modules(comp).items():
        closed = plan.layer_summary()[name]["macs"]
        assert mod.analytical_macs() == closed
        assert mod.analytical_macs(batch=4) == 4 * closed
        assert abs(counted[name] - 2 * closed) <= 0.01 * 2 * closed


@pytest.mark.parametrize("name", ["2", "4"])
def test_monotone_in_energy(name):
    model, x = conv_stack(), random_images()
    stats = compute_stats(model, x, 2, layers=[name], batch_size=24)
    decomp = decompose_hscc(model, stats, 3, seed=0)
    ref = layer_tensor(model, name, x, side="output")
    flops, errs = [], []
    for e in [0.1, 0.4, 0.7, 0.9, 0.99, 1.0]:
        comp = build_hscc(model, plan_from_decomposition(decomp, e))
        flops.append(layer_flops(comp, [name], (1, 3, 48, 48))[name])
        errs.append(((layer_tensor(comp, name, x, side="output") - ref).double() ** 2).sum().item())
        assert flops[-1] == 2 * plan_macs(decomp, e)
    assert all(a <= b for a, b in zip(flops, flops[1:]))
    assert all(b <= a * (1 + 1e-4) + 1e-6 for a, b in zip(errs, errs[1:]))
    assert errs[0] > 100 * (errs[-1] + 1e-6)  # the sweep actually compresses


def test_rank_zero_blocks_output_bias_plus_mean():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, 1, 1)
    point = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        conv.weight[:2] = 0  # channels 0, 1 never activate anywhere
    x = torch.randn(10, 4, 16, 16)
    x[:, :3, :10, :10] = 0  # conv's top-left region (rows/cols 0..7, window up to 8) sees only zeros
    x[:, 3] = 0.75  # point reads only this constant channel: every output is constant, non-zero

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.point = conv, point

        def forward(self, t):
            return torch.cat([self.conv(t[:, :3]), self.point(t[:, 3:])], 1)

    model = Two()
    stats = compute_stats(model, x, grid=2)
    comp, plan = compress_hscc(model, stats, HSCCConfig(2, 2, 0.9))
    lc = plan.layer_summary()["conv"]
    assert lc["labels"][0] == [-1] * 6 and lc["ranks"][0] == []
    assert all(lab[:2] == [-1, -1] for lab in lc["labels"])
    assert all(max(lab) >= 0 for lab in lc["labels"][1:])
    mc = comp.get_submodule("conv")
    assert mc.regions[0].stage1 is None  # no convolution at all for an all-rank-0 region
    with torch.no_grad():
        y = mc(x[:, :3])
        assert torch.equal(y[:, :2], conv.bias[:2].view(1, 2, 1, 1).expand(10, 2, 16, 16))
        assert torch.equal(y[:, :, :8, :8], conv.bias.view(1, 6, 1, 1).expand(10, 6, 8, 8))
        assert torch.equal(y[:, :, :8, :8], conv(x[:, :3])[:, :, :8, :8])
        lp = plan.layer_summary()["point"]
        assert all(lab == [-1] * 4 for lab in lp["labels"]) and lp["macs"] == 0
        yp = comp.get_submodule("point")(x[:, 3:])
        mu = stats["point"].mean[0]  # float64 pre-bias mean, the same in every region
        expect = torch.tensor(point.bias.detach().double().numpy() + mu, dtype=torch.float32)
        assert torch.equal(yp, expect.view(1, 4, 1, 1).expand(10, 4, 16, 16))
        torch.testing.assert_close(yp, point(x[:, 3:]))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_window_entirely_in_padding_and_asymmetric_same_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1, padding=2), nn.Conv2d(5, 6, 4, padding="same")).eval()
    x = torch.randn(8, 3, 6, 6)
    stats = compute_stats(model, x, grid=5)
    assert stats["0"].out_hw == (10, 10)
    comp, _ = compress_hscc(model, stats, HSCCConfig(5, 2, 1.0))
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="calibrated"):
        comp(torch.randn(1, 3, 8, 8))


def test_grid_and_cluster_clamping_reported():
    model, x = conv_stack(), random_images(12)
    stats = compute_stats(model, x, grid=6, batch_size=12)
    comp, plan = compress_hscc(model, stats, HSCCConfig(6, 100, 1.0))
    summ = plan.layer_summary()
    json.dumps(summ)
    assert summ["0"]["grid_hw"] == [6, 6] and not summ["0"]["grid_clamped"]
    assert summ["4"]["grid_hw"] == [5, 5] and summ["4"]["grid_clamped"]
    assert len(summ["4"]["ranks"]) == 25
    for s, o in [(summ["0"], 8), (summ["2"], 16), (summ["4"], 12)]:
        assert s["clusters_clamped"] and max(s["clusters_used"]) <= o
        assert all(len(lab) == o for lab in s["labels"])
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)


def test_same_seed_same_plan_and_input_untouched():
    model, x = conv_stack(), random_images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = compute_stats(model, x, 2, batch_size=24)
    a = plan_from_decomposition(decompose_hscc(model, stats, 3, seed=5), 0.9).layer_summary()
    b = plan_from_decomposition(decompose_hscc(model, stats, 3, seed=5), 0.9).layer_summary()
    assert a == b
    assert any(max(lab) > 0 for s in a.values() for lab in s["labels"])  # clusters really formed
    build_hscc(model, plan_from_decomposition(decompose_hscc(model, stats, 3, seed=5), 0.9))
    assert all(isinstance(model[i], nn.Conv2d) for i in (0, 2, 4, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_replace_module_nested_and_grid_mismatch():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1)))
    replace_module(model, "0.0", nn.Identity())
    assert isinstance(model[0][0], nn.Identity)
    m, x = conv_stack(), random_images(4)
    stats = compute_stats(m, x, 2)
    with pytest.raises(ValueError, match="grid"):
        compress_hscc(m, stats, HSCCConfig(grid=3))
    assert np.isfinite(plan_macs(decompose_hscc(m, stats, 2), 0.5))


# --------------------------------------------------------------------------- fast path


def assert_fast_equals_reference(mod: HSCCConv2d, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = mod.forward_reference(x)
        for mode in ("conv", "gemm", "auto"):
            mod.stage1_mode = mode
            fast = mod(x)
            assert fast.shape == ref.shape and fast.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))
    mod.stage1_mode = "auto"


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_equals_reference_on_random_configs(seed):
    """Random grids, clusters and energies (ranks from 0 to full, dense blocks) on every padding kind."""
    rng = np.random.default_rng(seed)
    model, x = conv_stack(seed), random_images(10, 40, seed)
    grid, clusters = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    energy = float(rng.choice([0.2, 0.6, 0.9, 0.999, 1.0]))
    stats = compute_stats(model, x, grid, batch_size=10)
    plan = plan_from_decomposition(decompose_hscc(model, stats, clusters, seed=seed), energy)
    comp = build_hscc(model, plan)
    fresh = random_images(3, 40, seed + 100)
    for name, mod in hscc_modules(comp).items():
        assert_fast_equals_reference(mod, layer_output_input(model, name, fresh))
    with torch.no_grad():
        y_fast = comp(fresh)
        set_stage1_mode(comp, "gemm")
        torch.testing.assert_close(comp(fresh), y_fast, rtol=1e-5, atol=1e-5)


def layer_output_input(model, name, x):
    got = []
    h = model.get_submodule(name).register_forward_hook(lambda m, i, o: got.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def test_fast_path_rank_zero_dense_and_full_rank_blocks():
    """A plan mixing rank-0 channels, rank-0 blocks, dense blocks and factorised blocks."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 12, 3, 1, 1)
    with torch.no_grad():
        conv.weight[:3] = 0  # never active: rank-0 channels everywhere
        conv.weight[3:6] = (torch.randn(3, 1) @ torch.randn(1, 36)).view(3, 4, 3, 3)  # rank 1
    model = nn.Sequential(conv).eval()
    x = torch.randn(20, 4, 10, 10)
    stats = compute_stats(model, x, grid=2)
    for energy in (0.3, 0.9, 1.0):
        plan = plan_from_decomposition(decompose_hscc(model, stats, 3, seed=0), energy)
        summ = plan.layer_summary()["0"]
        assert all(n == 3 for n in summ["rank0_channels"])
        mod = build_hscc(model, plan).get_submodule("0")
        assert_fast_equals_reference(mod, torch.randn(5, 4, 10, 10))
    assert any(any(r) for r in summ["dense"])  # tau = 1 keeps dense blocks dense


def test_fast_path_counts_exactly_the_analytical_macs_and_trains_on_reference():
    model, x = conv_stack(), random_images()
    stats = compute_stats(model, x, 3, batch_size=24)
    plan = plan_from_decomposition(decompose_hscc(model, stats, 3, seed=0), 0.7)
    comp = build_hscc(model, plan)
    for mode in ("conv", "gemm"):
        set_stage1_mode(comp, mode)
        counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
        for name, mod in hscc_modules(comp).items():
            assert counted[name] == 2 * mod.analytical_macs()  # no padded or masked work
    # With gradients the reference path runs (in-place GEMMs have no autograd); same parameters.
    comp.train()
    out = comp(x[:4])
    out.sum().backward()
    mod = hscc_modules(comp)["2"]
    assert mod.regions[0].stage1.weight.grad is not None and mod.regions[0].bias.grad is not None
    with pytest.raises(ValueError, match="stage1"):
        set_stage1_mode(comp, "bogus")


def test_fast_path_follows_device_and_dtype():
    model, x = conv_stack(), random_images(8)
    stats = compute_stats(model, x, 2, batch_size=8)
    comp = build_hscc(model, plan_from_decomposition(decompose_hscc(model, stats, 2, seed=0), 0.9))
    comp64 = comp.double()
    with torch.no_grad():
        torch.testing.assert_close(comp64(x.double()).float(), comp.float()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_on_cuda_equals_cpu():
    model, x = conv_stack(), random_images(8)
    stats = compute_stats(model, x, 2, batch_size=8)
    comp = build_hscc(model, plan_from_decomposition(decompose_hscc(model, stats, 3, seed=0), 0.8))
    with torch.no_grad():
        cpu = comp(x)
        gpu = comp.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
