"""Tests for hscc_core.compress.hscc.input_stats: input-side streaming statistics, progress, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import conv_stack, random_images
from hscc_core.compress.hscc import INPUT, plan_at_energy
from hscc_core.compress.hscc.input_stats import compute_input_stats, load_input_stats, save_input_stats

torch.set_num_threads(2)


def test_progress_counts_both_passes_and_leaves_the_model_alone():
    model = conv_stack().train()
    x = random_images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    compute_input_stats(model, x, 2, 3, seed=5, batch_size=10, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(10, 48), (20, 48), (24, 48), (34, 48), (44, 48), (48, 48)]
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


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
    p1 = plan_at_energy(INPUT.decompose(model, stats, 3, 0), 0.8).summaries()
    assert plan_at_energy(INPUT.decompose(model, back, 3, 0), 0.8).summaries() == p1


def test_validation_errors():
    model, x = conv_stack(), random_images(2)
    for bad in (dict(grid=0, clusters=1), dict(grid=1, clusters=0)):
        with pytest.raises(ValueError, match="must be"):
            compute_input_stats(model, x, seed=0, **bad)
    with pytest.raises(ValueError, match="not a Conv2d"):
        compute_input_stats(model, x, 1, 1, layers=["1"])
    stats = compute_input_stats(model, x, 1, 1, layers=["0"])
    with pytest.raises(ValueError, match="energy"):
        plan_at_energy(INPUT.decompose(model, stats, 1, 0), 0.0)
    with pytest.raises(ValueError, match="do not match"):
        INPUT.decompose(conv_stack(), {"2": stats["0"]}, 1, 0)
    with pytest.raises(ValueError, match="K=1, seed 0, not K=2"):
        INPUT.decompose(model, stats, 2, 0)
