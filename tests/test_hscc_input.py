"""Tests for hscc_core.compress.hscc_input: statistics, exactness at tau = 1, FLOPs, inactive inputs, I/O."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import conv_stack, layer_tensor, random_images
from hscc_core.compress.calibration import compute_stats, region_bounds
from hscc_core.compress.hscc import HSCCConv2d, build_hscc, decompose_hscc, plan_from_decomposition
from hscc_core.compress.hscc_input import (
    HSCCInputConv2d,
    build_hscc_input,
    compute_input_stats,
    decompose_hscc_input,
    input_block_macs,
    load_input_stats,
    plan_input,
    plan_input_macs,
    save_input_stats,
)
from hscc_core.measure.costs import layer_flops

torch.set_num_threads(2)


def input_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, HSCCInputConv2d)}


@pytest.mark.parametrize("grid,clusters", [(1, 1), (4, 3)])
def test_energy_one_reproduces_tiny_cnn(grid, clusters):
    model, x = conv_stack(), random_images()
    stats = compute_input_stats(model, x, grid, clusters, seed=0, batch_size=16)
    plan = plan_input(decompose_hscc_input(model, stats), 1.0)
    comp = build_hscc_input(model, plan)
    assert set(input_modules(comp)) == {"0", "2", "4", "6"}
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
        if plan.macs() == plan.original_macs():  # every block dense: exact on any input
            fresh = random_images(4, seed=7)
            torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-5, atol=1e-5)


def test_energy_one_reproduces_alexnet_on_calibration_images():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=4).eval()
    model.classifier = nn.Linear(256 * 6 * 6, 4)  # the head is not compressed; keep copies cheap
    x = random_images(6, 64)
    stats = compute_input_stats(model, x, grid=2, clusters=3, seed=0)
    plan = plan_input(decompose_hscc_input(model, stats), 1.0)
    assert list(plan.layers) == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    # 6 images make the deeper partial outputs rank-deficient: tau = 1 factorises, yet stays exact
    # on the calibration data (the least-squares reconstruction of every partial output).
    assert plan.macs() < plan.original_macs()
    comp = build_hscc_input(model, plan)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(comp(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    counted = layer_flops(comp, list(plan.layers), (1, 3, 64, 64))
    for name, mod in input_modules(comp).items():
        assert counted[name] == 2 * mod.analytical_macs() == 2 * plan.layers[name].macs


def test_streaming_block_statistics_match_brute_force():
    """Both storage bases give the partial outputs' exact mean and centred scatter."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 20, 3, stride=2, padding=1)
    model = nn.Sequential(conv).eval()
    x = torch.randn(10, 6, 11, 11)
    stats = compute_input_stats(model, x, grid=2, clusters=3, seed=0, batch_size=3)["0"]
    bases = set()
    with torch.no_grad():
        for r, (h0, h1, w0, w1) in enumerate(stats.regions):
            for blk in stats.blocks[r]:
                mask = torch.zeros(6)
                mask[torch.as_tensor(blk.channels)] = 1
                y = F.conv2d(x * mask.view(1, -1, 1, 1), conv.weight, None, 2, 1)[:, :, h0:h1, w0:w1]
                y = y.double().permute(1, 0, 2, 3).reshape(20, -1).numpy()
                mu = y.mean(1)
                scatter = (y - mu[:, None]) @ (y - mu[:, None]).T
                if blk.basis == "input":  # (|c| kh kw)-dim im2col statistics; map them through W_c
                    rows = (blk.channels[:, None] * 9 + np.arange(9)).ravel()
                    wc = conv.weight.detach().double().numpy().reshape(20, -1)[:, rows]
                    got_mu, got_sc = wc @ blk.mean, wc @ blk.scatter @ wc.T
                else:
                    got_mu, got_sc = blk.mean, blk.scatter
                bases.add(blk.basis)
                np.testing.assert_allclose(got_mu, mu, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(got_sc, scatter, rtol=1e-4, atol=1e-4 * np.abs(scatter).max())
        assert stats.count.tolist() == [10 * (h1 - h0) * (w1 - w0) for h0, h1, w0, w1 in stats.regions]
    assert bases == {"input", "output"}  # 1-channel clusters (9 < 20 rows) and wider ones


def test_counted_flops_equal_closed_form():
    model, x = conv_stack(), random_images()
    stats = compute_input_stats(model, x, 3, 3, seed=0, batch_size=24)
    decomp = decompose_hscc_input(model, stats)
    for energy in (0.3, 0.9):
        plan = plan_input(decomp, energy)
        assert plan.macs() == plan_input_macs(decomp, energy)
        comp = build_hscc_input(model, plan)
        counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
        assert sum(counted.values()) < 2 * plan.original_macs()
        for name, mod in input_modules(comp).items():
            closed = plan.layer_summary()[name]["macs"]
            assert mod.analytical_macs() == closed and mod.analytical_macs(batch=3) == 3 * closed
            assert abs(counted[name] - 2 * closed) <= 0.01 * 2 * closed


def test_macs_monotone_in_energy_and_error_vanishes():
    model, x = conv_stack(), random_images()
    stats = compute_input_stats(model, x, 2, 3, seed=0, layers=["2"], batch_size=24)
    decomp = decompose_hscc_input(model, stats)
    xin = layer_tensor(model, "2", x, side="input")
    with torch.no_grad():
        ref = model[2](xin)
    macs, errs = [], []
    for e in [0.1, 0.5, 0.9, 0.99, 1.0]:
        plan = plan_input(decomp, e)
        macs.append(plan.macs())
        with torch.no_grad():
            y = build_hscc_input(model, plan).get_submodule("2")(xin)
        errs.append(float(((y - ref).double() ** 2).sum() / (ref.double() ** 2).sum()))
    assert all(a <= b for a, b in zip(macs, macs[1:]))
    assert macs[0] < macs[-1]
    assert errs[0] > 100 * (errs[-1] + 1e-12) and errs[-1] < 1e-10


def test_cluster_cost_is_not_repeated():
    """Input clusters split the k x k stage: per kept direction |r| (|c| kh kw + O)."""
    assert input_block_macs(0, 8, 9, 64) == (0, False)
    assert input_block_macs(2, 8, 9, 64) == (2 * (72 + 64), False)
    assert input_block_macs(5, 8, 9, 64) == (5 * 136, False)
    assert input_block_macs(4, 1, 9, 64) == (4 * 73, False)  # unlike the output side, 1 channel can pay
    assert input_block_macs(8, 1, 9, 64) == (64 * 9, True)


def test_factorised_blocks_exact_for_low_rank_weights():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, 1, 1)
    with torch.no_grad():  # every partial output lives in the 2-d column span of A, for any input
        conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 72)).view(16, 8, 3, 3))
    model = nn.Sequential(conv).eval()
    x = torch.randn(12, 8, 12, 12)
    stats = compute_input_stats(model, x, grid=2, clusters=2, seed=0)
    plan = plan_input(decompose_hscc_input(model, stats), 1.0)
    summ = plan.layer_summary()["0"]
    assert all(r == [2, 2] for r in summ["ranks"]) and not any(any(d) for d in summ["dense"])
    comp = build_hscc_input(model, plan)
    with torch.no_grad():
        fresh = torch.randn(3, 8, 12, 12)
        torch.testing.assert_close(comp(fresh), model(fresh), rtol=1e-4, atol=1e-4)


def test_inactive_inputs_left_out_and_constant_regions():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 1, 1)
    model = nn.Sequential(conv).eval()
    x = torch.randn(10, 4, 16, 16)
    x[:, 0] = 0  # a dead input channel everywhere
    x[:, :, :10, :10] = 0  # region 0 (rows/cols 0..7, window up to 8) sees only zeros
    stats = compute_input_stats(model, x, grid=2, clusters=2, seed=0)
    plan = plan_input(decompose_hscc_input(model, stats), 1.0)
    summ = plan.layer_summary()["0"]
    assert summ["labels"][0] == [-1] * 4 and summ["ranks"][0] == []
    assert all(lab[0] == -1 for lab in summ["labels"]) and summ["rank0_channels"][1:] == [1, 1, 1]
    comp = build_hscc_input(model, plan)
    mod = comp.get_submodule("0")
    assert mod.regions[0].macs_per_position() == 0  # no convolution at all in region 0
    with torch.no_grad():
        y = mod(x)
        assert torch.equal(y[:, :, :8, :8], conv.bias.view(1, 6, 1, 1).expand(10, 6, 8, 8))
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_window_entirely_in_padding_and_asymmetric_same_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1, padding=2), nn.Conv2d(5, 6, 4, padding="same")).eval()
    x = torch.randn(8, 3, 6, 6)
    stats = compute_input_stats(model, x, grid=5, clusters=2, seed=0)
    assert stats["0"].out_hw == (10, 10)
    comp = build_hscc_input(model, plan_input(decompose_hscc_input(model, stats), 1.0))
    with torch.no_grad():
        torch.testing.assert_close(comp(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="calibrated"):
        comp(torch.randn(1, 3, 8, 8))


def test_summary_matches_output_side_keys_and_clamping():
    model, x = conv_stack(), random_images(8)
    stats = compute_input_stats(model, x, grid=6, clusters=100, seed=0, layers=["0", "4"])
    plan = plan_input(decompose_hscc_input(model, stats), 0.9)
    summ = plan.layer_summary()
    json.dumps(summ)
    out_stats = compute_stats(model, x, 1, layers=["4"])
    out_plan = plan_from_decomposition(decompose_hscc(model, out_stats, 2), 0.9)
    assert set(out_plan.layer_summary()["4"]) <= set(summ["4"])
    assert summ["0"]["grid_hw"] == [6, 6] and not summ["0"]["grid_clamped"]
    assert summ["4"]["grid_hw"] == [5, 5] and summ["4"]["grid_clamped"] and len(summ["4"]["ranks"]) == 25
    for name, i in [("0", 3), ("4", 16)]:
        s = summ[name]
        assert s["cluster_side"] == "input" and s["clusters_clamped"] and max(s["clusters_used"]) <= i
        assert all(len(lab) == i for lab in s["labels"])
        assert s["regions"] == [list(b) for b in region_bounds(*s["out_hw"], 6)]
        # K >= active channels: one channel per cluster
        assert all(sorted(lab) == list(range(i)) for lab in s["labels"] if min(lab) >= 0)
    assert plan.energy == 0.9 and plan.macs() == sum(s["macs"] for s in summ.values())


def test_same_seed_same_plan_model_untouched_and_progress():
    model = conv_stack().train()
    x = random_images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    a = compute_input_stats(model, x, 2, 3, seed=5, batch_size=10, progress=lambda d, t: calls.append((d, t)))
    b = compute_input_stats(model, x, 2, 3, seed=5, batch_size=24)
    assert calls == [(10, 48), (20, 48), (24, 48), (34, 48), (44, 48), (48, 48)]
    pa = plan_input(decompose_hscc_input(model, a), 0.9).layer_summary()
    assert pa == plan_input(decompose_hscc_input(model, b), 0.9).layer_summary()
    assert any(max(lab) > 0 for s in pa.values() for lab in s["labels"])  # clusters really formed
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    build_hscc_input(model, plan_input(decompose_hscc_input(model, a), 0.9))
    assert isinstance(model[2], nn.Conv2d) and not isinstance(model[2], HSCCConv2d)


def test_save_load_round_trip(tmp_path):
    model, x = conv_stack(), random_images(8)
    stats = compute_input_stats(model, x, grid=3, clusters=3, seed=0)
    path = tmp_path / "sub" / "input_stats.npz"
    save_input_stats(path, stats)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    with np.load(path, allow_pickle=False) as z:  # no object arrays inside
        assert all(z[k].dtype != object for k in z.files)
    back = load_input_stats(path)
    assert list(back) == list(stats)
    for name, s in stats.items():
        b = back[name]
        assert (b.in_hw, b.out_hw, b.grid, b.grid_hw, b.regions, b.clusters, b.seed, b.kernel_size) == (
            s.in_hw, s.out_hw, s.grid, s.grid_hw, s.regions, s.clusters, s.seed, s.kernel_size)
        np.testing.assert_array_equal(b.labels, s.labels)
        np.testing.assert_array_equal(b.count, s.count)
        for rb, rs in zip(b.blocks, s.blocks):
            assert len(rb) == len(rs)
            for bb, bs in zip(rb, rs):
                assert bb.basis == bs.basis
                for f in ("channels", "scatter", "mean"):
                    np.testing.assert_array_equal(getattr(bb, f), getattr(bs, f))
    p1 = plan_input(decompose_hscc_input(model, stats), 0.8).layer_summary()
    assert plan_input(decompose_hscc_input(model, back), 0.8).layer_summary() == p1


def test_validation_errors():
    model, x = conv_stack(), random_images(2)
    for bad in (dict(grid=0, clusters=1), dict(grid=1, clusters=0)):
        with pytest.raises(ValueError, match="must be"):
            compute_input_stats(model, x, seed=0, **bad)
    with pytest.raises(ValueError, match="not a Conv2d"):
        compute_input_stats(model, x, 1, 1, layers=["1"])
    stats = compute_input_stats(model, x, 1, 1, layers=["0"])
    with pytest.raises(ValueError, match="energy"):
        plan_input(decompose_hscc_input(model, stats), 0.0)
    with pytest.raises(ValueError, match="do not match"):
        decompose_hscc_input(conv_stack(), {"2": stats["0"]})


def test_fast_paths_match_reference_and_support_autograd(monkeypatch):
    """Convolution-only and GEMM-only forwards equal the module path and count the same FLOPs."""
    import hscc_core.compress.hscc_input as hi

    model, x = conv_stack(), random_images(12)
    stats = compute_input_stats(model, x, 3, 3, seed=0)
    plan = plan_input(decompose_hscc_input(model, stats), 0.6)
    comp = build_hscc_input(model, plan)
    inputs = {name: layer_tensor(model, name, x, side="input") for name in plan.layers}
    for limit in (0, 1 << 40):  # every region as convolutions, then every region as GEMMs
        monkeypatch.setattr(hi, "_GEMM_MAX_ELEMENTS", limit)
        for name, mod in input_modules(comp).items():
            with torch.no_grad():
                torch.testing.assert_close(mod(inputs[name]), mod.forward_reference(inputs[name]),
                                           rtol=1e-5, atol=1e-5)
        counted = layer_flops(comp, list(plan.layers), (1, 3, 48, 48))
        assert all(counted[n] == 2 * plan.layers[n].macs for n in plan.layers)
    comp.train()
    comp(x).sum().backward()
    assert all(p.grad is not None for p in comp.get_submodule("2").parameters())


def test_both_sides_refuse_an_input_of_another_size():
    model, x = conv_stack(), random_images()
    inp = build_hscc_input(model, plan_input(decompose_hscc_input(
        model, compute_input_stats(model, x, 2, 2, seed=0)), 0.9))
    out = build_hscc(model, plan_from_decomposition(
        decompose_hscc(model, compute_stats(model, x, 2), 2), 0.9))
    bigger = random_images(2, size=64)
    for comp, name in ((inp, "HSCCInputConv2d"), (out, "HSCCConv2d")):
        with pytest.raises(ValueError, match=f"{name} was calibrated for a \\(48, 48\\) output map"):
            comp(bigger)
