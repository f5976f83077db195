"""Tests for hscc_core.compress.hscc on both cluster sides: exactness at tau = 1, FLOPs, monotonicity,
rank-0 blocks, clamping, the typed summary and the fast forward against the reference forward."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import (SIDES, apply, conv_stack, hscc_decomposition, hscc_model, layer_tensor, needs_gpu,
                      random_images, region_modules)
from hscc_core.compress import native
from hscc_core.compress.hscc import (INPUT, OUTPUT, HSCCConv2d, HSCCInputConv2d, build_hscc, cluster_side,
                                     input_conv, plan_at_energy, plan_macs, set_stage1_mode)
from hscc_core.compress.hscc.regions import region_bounds
from hscc_core.compress.hscc.stats import compute_stats
from hscc_core.compress.summary import LayerSummary
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)
MODULE = {"output": HSCCConv2d, "input": HSCCInputConv2d}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("grid,clusters", [(1, 1), (2, 3), (4, 4)])
def test_energy_one_reproduces_tiny_cnn(side, grid, clusters):
    model, x = conv_stack(), random_images()
    comp, plan = hscc_model(model, x, side, grid, clusters, 1.0, batch_size=16)
    assert set(region_modules(comp)) == {"0", "2", "4", "6"}
    assert all(type(m) is MODULE[side] for m in region_modules(comp).values())
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
        if plan.macs() == plan.original_macs():  # every block dense: exact on any input
            fresh = random_images(4, seed=7)
            torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
def test_energy_one_reproduces_alexnet_on_calibration_images(side):
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=4).eval()
    model.classifier = nn.Linear(256 * 6 * 6, 4)  # the head is not compressed; keep copies cheap
    x = random_images(6, 64)
    comp, plan = hscc_model(model, x, side, 2, 2, 1.0)
    assert list(plan.layers) == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    # With 6 images the deeper statistics are rank-deficient, so tau = 1 factorises some blocks: exact
    # on the calibration data (the least-squares reconstruction), which is what tau = 1 promises.
    assert plan.macs() < plan.original_macs()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(comp(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    counted = layer_flops(comp, list(plan.layers), (1, 3, 64, 64))
    for name, mod in region_modules(comp).items():
        assert counted[name] == 2 * mod.analytical_macs() == 2 * plan.layers[name].macs


@pytest.mark.parametrize("side", SIDES)
def test_factorised_blocks_exact_for_low_rank_weights(side):
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, 1, 1)
    with torch.no_grad():  # every output (and partial output) lives in W's 2-d column span, for any input
        conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 72)).view(16, 8, 3, 3))
    model = nn.Sequential(conv).eval()
    x = torch.randn(12, 8, 12, 12)
    comp, plan = hscc_model(model, x, side, 2, 1 if side == "output" else 2, 1.0)
    s = plan.summaries()["0"]
    blocks = 1 if side == "output" else 2
    assert s.ranks == ((2,) * blocks,) * 4 and s.dense == ((False,) * blocks,) * 4
    with torch.no_grad():
        fresh = torch.randn(3, 8, 12, 12)
        torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("energy", [0.3, 0.95])
def test_counted_flops_equal_closed_form_and_summary(side, energy):
    model, x = conv_stack(), random_images()
    comp, plan = hscc_model(model, x, side, 3, 3, energy, batch_size=24)
    counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
    assert sum(counted.values()) <= 2 * plan.original_macs()
    if energy < 0.9:
        assert sum(counted.values()) < 2 * plan.original_macs()
    summaries = plan.summaries()
    for name, mod in region_modules(comp).items():
        s = summaries[name]
        assert mod.analytical_macs() == s.macs == sum(r.macs for r in s.regions)
        assert mod.analytical_macs(batch=4) == 4 * s.macs
        assert abs(counted[name] - 2 * s.macs) <= 0.01 * 2 * s.macs
        assert sum(r.macs_dense for r in s.regions) == s.original_macs
        assert all(0 <= r.rank_kept <= r.rank_dense for r in s.regions)
        assert s.kind == "hscc" and s.cluster_side == side
        assert LayerSummary.from_json(json.loads(json.dumps(s.to_json()))) == s


@pytest.mark.parametrize("side", SIDES)
def test_monotone_in_energy(side):
    model, x = conv_stack(), random_images()
    decomp = hscc_decomposition(model, x, side, 2, 3, layers=["2"], batch_size=24)
    xin, ref = layer_tensor(model, "2", x, side="input"), layer_tensor(model, "2", x)
    flops, errs = [], []
    for e in [0.1, 0.4, 0.7, 0.9, 0.99, 1.0]:
        comp = build_hscc(model, plan_at_energy(decomp, e))
        flops.append(layer_flops(comp, ["2"], (1, 3, 48, 48))["2"])
        assert flops[-1] == 2 * plan_macs(decomp, e)
        with torch.no_grad():
            y = comp.get_submodule("2")(xin)
        errs.append(float(((y - ref).double() ** 2).sum() / (ref.double() ** 2).sum()))
    assert all(a <= b for a, b in zip(flops, flops[1:]))
    assert all(b <= a * (1 + 1e-4) + 1e-9 for a, b in zip(errs, errs[1:]))
    assert errs[0] > 100 * (errs[-1] + 1e-12) and errs[-1] < 1e-8  # the sweep compresses; tau = 1 is exact


def test_output_side_rank_zero_blocks_output_bias_plus_mean():
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
    plan = plan_at_energy(OUTPUT.decompose(model, stats, 2, 0), 0.9)
    comp = build_hscc(model, plan)
    labels = plan.layers["conv"].labels()
    assert labels[0].tolist() == [-1] * 6 and plan.summaries()["conv"].ranks[0] == ()
    assert all(lab[:2].tolist() == [-1, -1] for lab in labels) and all(lab.max() >= 0 for lab in labels[1:])
    mc = comp.get_submodule("conv")
    assert mc.regions[0].stage1 is None  # no convolution at all for an all-rank-0 region
    with torch.no_grad():
        y = mc(x[:, :3])
        assert torch.equal(y[:, :2], conv.bias[:2].view(1, 2, 1, 1).expand(10, 2, 16, 16))
        assert torch.equal(y[:, :, :8, :8], conv.bias.view(1, 6, 1, 1).expand(10, 6, 8, 8))
        assert torch.equal(y[:, :, :8, :8], conv(x[:, :3])[:, :, :8, :8])
        assert (plan.layers["point"].labels() == -1).all() and plan.layers["point"].macs == 0
        yp = comp.get_submodule("point")(x[:, 3:])
        mu = stats["point"].mean[0]  # float64 pre-bias mean, the same in every region
        expect = torch.tensor(point.bias.detach().double().numpy() + mu, dtype=torch.float32)
        assert torch.equal(yp, expect.view(1, 4, 1, 1).expand(10, 4, 16, 16))
        torch.testing.assert_close(yp, point(x[:, 3:]))


def test_input_side_inactive_inputs_left_out_and_constant_regions():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 1, 1)
    model = nn.Sequential(conv).eval()
    x = torch.randn(10, 4, 16, 16)
    x[:, 0] = 0  # a dead input channel everywhere
    x[:, :, :10, :10] = 0  # region 0 (rows/cols 0..7, window up to 8) sees only zeros
    comp, plan = hscc_model(model, x, "input", 2, 2, 1.0)
    labels, s = plan.layers["0"].labels(), plan.summaries()["0"]
    assert labels[0].tolist() == [-1] * 4 and s.ranks[0] == ()
    assert all(lab[0] == -1 for lab in labels) and s.rank0_channels[1:] == (1, 1, 1)
    mod = comp.get_submodule("0")
    assert mod.regions[0].macs_per_position() == 0  # no convolution at all in region 0
    with torch.no_grad():
        y = mod(x)
        assert torch.equal(y[:, :, :8, :8], conv.bias.view(1, 6, 1, 1).expand(10, 6, 8, 8))
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_window_entirely_in_padding_and_asymmetric_same_padding(side):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1, padding=2), nn.Conv2d(5, 6, 4, padding="same")).eval()
    x = torch.randn(8, 3, 6, 6)
    comp, plan = hscc_model(model, x, side, 5, 2, 1.0)
    assert plan.layers["0"].decomp.out_hw == (10, 10)
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"{MODULE[side].__name__} was calibrated for a \\(10, 10\\) output map"):
        comp(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("side", SIDES)
def test_grid_and_cluster_clamping_reported(side):
    model, x = conv_stack(), random_images(12)
    comp, plan = hscc_model(model, x, side, 6, 100, 1.0, batch_size=12)
    s = plan.summaries()
    json.dumps({n: v.to_json() for n, v in s.items()})
    assert s["0"].grid_hw == (6, 6) and not s["0"].grid_clamped
    assert s["4"].grid_hw == (5, 5) and s["4"].grid_clamped and len(s["4"].ranks) == 25
    assert [r.bounds for r in s["4"].regions] == region_bounds(*s["4"].out_hw, 6)
    channels = {"output": {"0": 8, "2": 16, "4": 12}, "input": {"0": 3, "2": 8, "4": 16}}[side]
    for name, n in channels.items():
        assert s[name].clusters_clamped and max(s[name].clusters_used) <= n
        assert plan.layers[name].labels().shape == (len(s[name].regions), n)
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
def test_same_seed_same_plan_and_model_untouched(side):
    model, x = conv_stack(), random_images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = plan_at_energy(hscc_decomposition(model, x, side, 2, 3, seed=5, batch_size=24), 0.9)
    b = plan_at_energy(hscc_decomposition(model, x, side, 2, 3, seed=5, batch_size=10), 0.9)
    assert a.summaries() == b.summaries()
    assert all(np.array_equal(a.layers[n].labels(), b.layers[n].labels()) for n in a.layers)
    assert any(lp.labels().max() > 0 for lp in a.layers.values())  # clusters really formed
    build_hscc(model, a)
    assert all(type(model[i]) is nn.Conv2d for i in (0, 2, 4, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_sides_cost_one_direction_as_the_design_says():
    """Output side: k (I kh kw + |c|); input side: k (|c| kh kw + O), so clusters split the k x k stage."""
    model, x = conv_stack(), random_images(8)
    geom = hscc_decomposition(model, x, "output", 1, 1, layers=["2"]).layers["2"]  # 8 -> 16, 5x5
    assert (geom.in_channels, geom.out_channels, geom.kernel_area) == (8, 16, 25)
    assert OUTPUT.block_macs(geom, 4, 0) == (0, False)
    assert OUTPUT.block_macs(geom, 4, 2) == (2 * (200 + 4), False)
    assert OUTPUT.block_macs(geom, 4, 4) == (4 * 200, True)  # k (fan_in + |c|) >= |c| fan_in: dense
    assert INPUT.block_macs(geom, 2, 3) == (3 * (50 + 16), False)
    assert INPUT.block_macs(geom, 1, 4) == (4 * (25 + 16), False)  # one input channel can pay
    assert INPUT.block_macs(geom, 1, 20) == (16 * 25, True)
    assert (OUTPUT.max_rank(geom, 4), INPUT.max_rank(geom, 1), INPUT.max_rank(geom, 2)) == (4, 16, 16)
    assert cluster_side("input") is INPUT
    with pytest.raises(ValueError, match="output, input"):
        cluster_side("diagonal")


# --------------------------------------------------------------------------- fast path


def assert_fast_equals_reference(mod, x: torch.Tensor, monkeypatch) -> None:
    """Every execution choice of the PyTorch fast path equals the reference forward (the native
    kernel, which would otherwise take the call, is tested in test_native.py)."""
    with torch.no_grad(), native.disabled():
        ref = mod.forward_reference(x)
        tol = dict(rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))
        if isinstance(mod, HSCCConv2d):
            for mode in ("conv", "gemm", "auto"):
                mod.stage1_mode = mode
                fast = mod(x)
                assert fast.shape == ref.shape and fast.is_contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(fast, ref, **tol)
        else:
            for limit in (0, 1 << 40):  # every region as convolutions, then every region as GEMMs
                monkeypatch.setattr(input_conv, "_GEMM_MAX_ELEMENTS", limit)
                torch.testing.assert_close(mod(x), ref, **tol)
            monkeypatch.undo()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("seed", range(3))
def test_fast_path_equals_reference_on_random_configs(side, seed, monkeypatch):
    """Random grids, clusters and energies (ranks from 0 to full, dense blocks) on every padding kind,
    odd map sizes, batch 1 and 7."""
    rng = np.random.default_rng(seed)
    model, x = conv_stack(seed), random_images(10, 41, seed)
    grid, clusters = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    energy = float(rng.choice([0.2, 0.6, 0.9, 0.999, 1.0]))
    comp, plan = hscc_model(model, x, side, grid, clusters, energy, seed=seed, batch_size=10)
    for batch in (1, 7):
        fresh = random_images(batch, 41, seed + 100)
        for name, mod in region_modules(comp).items():
            assert_fast_equals_reference(mod, layer_tensor(model, name, fresh, side="input"), monkeypatch)


@pytest.mark.parametrize("side", SIDES)
def test_fast_path_rank_zero_dense_and_factorised_blocks(side, monkeypatch):
    """A plan mixing rank-0 channels, rank-0 blocks, dense blocks and factorised blocks."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 12, 3, 1, 1)
    with torch.no_grad():
        conv.weight[:3] = 0  # never active: rank-0 output channels everywhere
        conv.weight[3:6] = (torch.randn(3, 1) @ torch.randn(1, 36)).view(3, 4, 3, 3)  # rank 1
    model = nn.Sequential(conv).eval()
    x = torch.randn(20, 4, 10, 10)
    x[:, 3, :5] = 0  # an input channel dead in the top regions
    decomp = hscc_decomposition(model, x, side, 2, 3)
    for energy in (0.3, 0.9, 1.0):
        plan = plan_at_energy(decomp, energy)
        mod = build_hscc(model, plan).get_submodule("0")
        assert_fast_equals_reference(mod, torch.randn(5, 4, 10, 10), monkeypatch)
    assert any(any(r) for r in plan.summaries()["0"].dense)  # tau = 1 keeps dense blocks dense


@pytest.mark.parametrize("side", SIDES)
def test_fast_path_counts_exactly_the_analytical_macs_and_trains_on_reference(side):
    model, x = conv_stack(), random_images()
    comp, plan = hscc_model(model, x, side, 3, 3, 0.7, batch_size=24)
    for mode in ("conv", "gemm"):
        set_stage1_mode(comp, mode)
        with native.disabled():  # the PyTorch path; the kernel's count is tested in test_native.py
            counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
        for name, mod in region_modules(comp).items():
            assert counted[name] == 2 * mod.analytical_macs()  # no padded or masked work
    # With gradients the reference path runs; the same parameters learn.
    comp.train()
    comp(x[:4]).sum().backward()
    assert all(p.grad is not None for p in comp.get_submodule("2").parameters())
    with pytest.raises(ValueError, match="stage1"):
        set_stage1_mode(comp, "bogus")


@pytest.mark.parametrize("side", SIDES)
def test_fast_path_follows_device_and_dtype(side):
    model, x = conv_stack(), random_images(8)
    comp, _ = hscc_model(model, x, side, 2, 2, 0.9, batch_size=8)
    comp64 = comp.double()
    with torch.no_grad():
        torch.testing.assert_close(comp64(x.double()).float(), comp.float()(x), rtol=1e-4, atol=1e-4)


@apply(needs_gpu)
@pytest.mark.parametrize("side", SIDES)
def test_fast_path_on_cuda_equals_cpu(side):
    model, x = conv_stack(), random_images(8)
    comp, _ = hscc_model(model, x, side, 2, 3, 0.8, batch_size=8)
    with torch.no_grad():
        cpu = comp(x)
        gpu = comp.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
