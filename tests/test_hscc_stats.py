"""Tests for hscc_core.compress.hscc.stats (and .regions, .npz): regions, streaming output-side
statistics, save/load, damaged files."""

import json

import numpy as np
import pytest
import torch


from conftest import conv_stack as tiny_cnn
from hscc_core.compress.hscc.npz import write_npz
from hscc_core.compress.hscc.regions import region_bounds
from hscc_core.compress.hscc.stats import LayerStats, compute_stats, load_stats, save_stats
from hscc_core.nn.layers import compress_candidates


def images(m: int = 10, size: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, 3, size, size, generator=torch.Generator().manual_seed(seed))


def brute_stats(model, x, name, grid):
    """Reference statistics from all activations at once (numpy, float64)."""
    conv = model.get_submodule(name)
    acts = []
    h = conv.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    y = (acts[0] - conv.bias.detach().view(1, -1, 1, 1)).double().numpy()
    regions = region_bounds(y.shape[2], y.shape[3], grid)
    means, grams, descs = [], [], []
    for h0, h1, w0, w1 in regions:
        blk = y[:, :, h0:h1, w0:w1]
        s = blk.transpose(1, 0, 2, 3).reshape(y.shape[1], -1)
        mu = s.mean(1)
        c = s - mu[:, None]
        means.append(mu)
        grams.append(c @ c.T)
        descs.append(blk.mean(axis=(2, 3)).T)
    return regions, np.stack(means), np.stack(grams), np.stack(descs)


def test_region_bounds_cover_and_round():
    assert region_bounds(5, 5, 2) == [(0, 3, 0, 3), (0, 3, 3, 5), (3, 5, 0, 3), (3, 5, 3, 5)]
    assert region_bounds(7, 4, 1) == [(0, 7, 0, 4)]
    for h, w, g in [(13, 13, 4), (55, 27, 3), (6, 9, 6)]:
        regs = region_bounds(h, w, g)
        cover = np.zeros((h, w), int)
        for h0, h1, w0, w1 in regs:
            assert h1 > h0 and w1 > w0
            cover[h0:h1, w0:w1] += 1
        assert (cover == 1).all()


def test_region_bounds_clamps_grid():
    regs = region_bounds(3, 5, 8)
    assert len(regs) == 3 * 5
    assert all(h1 - h0 == 1 and w1 - w0 == 1 for h0, h1, w0, w1 in regs)
    with pytest.raises(ValueError):
        region_bounds(4, 4, 0)


@pytest.mark.parametrize("grid", [1, 3])
def test_streaming_stats_match_brute_force(grid):
    model, x = tiny_cnn(), images()
    calls = []
    stats = compute_stats(model, x, grid, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    assert list(stats) == ["0", "2", "4", "6"]
    for name, s in stats.items():
        regions, mean, gram, desc = brute_stats(model, x, name, grid)
        assert list(s.regions) == regions
        torch.testing.assert_close(s.mean, mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s.gram, gram, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(s.desc, desc, rtol=1e-9, atol=1e-9)
        sizes = [(h1 - h0) * (w1 - w0) for h0, h1, w0, w1 in regions]
        assert s.count.tolist() == [10 * a for a in sizes]
        assert s.mean.dtype == np.float64 and s.gram.dtype == np.float64
    assert stats["0"].in_hw == (40, 40) and stats["4"].out_hw == (4, 4)


def test_dead_channels_have_exactly_zero_variance():
    model = tiny_cnn()
    with torch.no_grad():
        model[2].weight[:3] = 0
    s = compute_stats(model, images(), 2, layers=["2"], batch_size=3)["2"]
    for r in range(len(s.regions)):
        assert (np.diag(s.gram[r])[:3] == 0).all()
        assert (s.mean[r][:3] == 0).all()
        assert (np.diag(s.gram[r])[3:] > 0).all()


def test_grid_clamped_per_layer_and_model_untouched():
    model = tiny_cnn().train()
    before = [p.clone() for p in model.parameters()]
    stats = compute_stats(model, images(4), grid=8, batch_size=2)
    assert stats["0"].grid_hw == (8, 8) and not stats["0"].grid_clamped
    assert stats["4"].grid_hw == (4, 4) and stats["4"].grid_clamped
    assert len(stats["4"].regions) == 16
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_layer_selection_and_errors():
    model = tiny_cnn()
    assert compress_candidates(model) == ["0", "2", "4", "6"]
    assert list(compute_stats(model, images(2), 1, layers=["4"])) == ["4"]
    with pytest.raises(ValueError):
        compute_stats(model, images(2), 1, layers=["1"])
    with pytest.raises(ValueError):
        compute_stats(model, images(2), 0)


def test_save_load_round_trip(tmp_path):
    stats = compute_stats(tiny_cnn(), images(5), grid=8, batch_size=2)
    path = tmp_path / "sub" / "stats.npz"
    save_stats(path, stats)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    with np.load(path, allow_pickle=False) as z:  # no object arrays inside
        meta = json.loads(str(z["meta"][0]))
    assert [m["grid_clamped"] for m in meta["layers"]] == [False, False, True, True]
    back = load_stats(path)
    assert list(back) == list(stats)
    for name, s in stats.items():
        b = back[name]
        assert isinstance(b, LayerStats)
        assert (b.name, b.in_hw, b.out_hw, b.grid, b.grid_hw, b.regions) == (
            s.name, s.in_hw, s.out_hw, s.grid, s.grid_hw, s.regions)
        for f in ("mean", "gram", "desc", "count"):
            np.testing.assert_array_equal(getattr(b, f), getattr(s, f))
        assert b.total_energy == pytest.approx(s.total_energy)


def test_damaged_files_are_one_clear_error(tmp_path):
    """A checksum-valid file without the expected arrays, or of another version, is a ValueError naming it."""
    path = tmp_path / "stats.npz"
    save_stats(path, compute_stats(tiny_cnn(), images(2), grid=1))
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][0]))
    write_npz(path, meta, {"l0_mean": np.zeros((1, 8))})  # l0_gram and the rest are missing
    with pytest.raises(ValueError, match="lacks array 'l0_gram'"):
        load_stats(path)
    write_npz(path, dict(meta, version=99), {})
    with pytest.raises(ValueError, match="format version 99"):
        load_stats(path)
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="cannot read statistics"):
        load_stats(path)
