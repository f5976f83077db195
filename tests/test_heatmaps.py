"""Tests of hscc_core.present.heatmaps: region maps, cluster maps, output errors, Grad-CAM, model rebuild."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hscc_core.present import heatmaps
from hscc_core.compress.calibration import compute_stats
from hscc_core.compress.hscc import decompose_hscc, plan_from_decomposition
from hscc_core.nn.models import TinyCNN

# Two regions of a 2 x 4 map, 6 output channels, fan-in 10 (original MACs 2*4*6*10 = 480).
HSCC_LAYER = {"out_hw": [2, 4], "regions": [[0, 2, 0, 2], [0, 2, 2, 4]], "ranks": [[1, 2], [0]],
              "cluster_sizes": [[2, 3], [5]], "rank0_channels": [1, 1], "original_macs": 480}


def test_region_values_rank_and_flops_by_hand():
    values, labels = heatmaps.region_values(HSCC_LAYER, "rank")
    np.testing.assert_allclose(values, [3 / 6, 0 / 6])
    assert labels == ["3/6", "0/6"]
    flops, labels = heatmaps.region_values(HSCC_LAYER, "flops")
    # Region 0: cluster of 2 at rank 1 costs min(1*(10+2), 2*10) = 12; cluster of 3 at rank 2 costs
    # min(2*(10+3), 30) = 26; over 6*10 dense MACs per position.
    np.testing.assert_allclose(flops, [38 / 60, 0.0])
    assert labels == ["63%", "0%"]
    grid, regions, _ = heatmaps.region_value_map(HSCC_LAYER, "rank")
    np.testing.assert_allclose(grid, [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    assert regions == [(0, 2, 0, 2), (0, 2, 2, 4)]
    with pytest.raises(ValueError):
        heatmaps.region_values(HSCC_LAYER, "energy")


def test_region_flops_add_up_to_the_plan_macs():
    torch.manual_seed(0)
    model = TinyCNN(4).eval()
    stats = compute_stats(model, torch.randn(12, 3, 32, 32), grid=3)
    summary = plan_from_decomposition(decompose_hscc(model, stats, clusters=3, seed=0), 0.9).layer_summary()
    for s in summary.values():
        flops, _ = heatmaps.region_values(s, "flops")
        area = np.array([(h1 - h0) * (w1 - w0) for h0, h1, w0, w1 in s["regions"]])
        per_pos_original = s["original_macs"] / (s["out_hw"][0] * s["out_hw"][1])
        assert (flops * area * per_pos_original).sum() == pytest.approx(s["macs"], rel=1e-9)
        ranks, _ = heatmaps.region_values(s, "rank")
        assert ((ranks >= 0) & (ranks <= 1)).all()


def test_baseline_layers_are_one_region():
    svd = {"rank": 3, "full_rank": 12, "out_hw": [4, 4], "macs": 50, "original_macs": 200}
    grid, regions, labels = heatmaps.region_value_map(svd, "rank")
    assert regions == [(0, 4, 0, 4)] and labels == ["rank 3/12"]
    np.testing.assert_allclose(grid, 0.25)
    tucker = {"rank_out": 2, "rank_in": 3, "out_hw": [4, 4], "macs": 80, "original_macs": 200}
    assert heatmaps.region_values(tucker, "flops")[0].tolist() == [0.4]
    assert heatmaps.region_values(tucker, "rank")[1] == ["ranks 2 x 3"]


def test_cluster_map_picks_the_cluster_with_most_activation():
    act = np.zeros((4, 2, 2))
    act[0, 0, 0] = 5.0             # cluster 0 in region 0 (channels 0, 1)
    act[2, 0, 1] = 1.0             # cluster 1 in region 0 (channels 2, 3)
    act[3, 0, 1] = 1.5
    act[1, 0, 1] = 2.0             # cluster 0: 2.0 < 2.5
    act[:, 1, :] = -1.0            # negative outputs are switched off by the ReLU: no cluster
    act[3, 1, 1] = 3.0             # region 1 ignores channel 3 (rank 0) -> still no cluster
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, -1]])
    regions = [(0, 1, 0, 2), (1, 2, 0, 2)]
    out = heatmaps.cluster_map(act, labels, regions)
    np.testing.assert_array_equal(out, [[0, 1], [-1, -1]])
    assert heatmaps.cluster_map(torch.as_tensor(act), labels, regions).dtype == np.int64
    with pytest.raises(ValueError):
        heatmaps.cluster_map(act, labels[:, :3], regions)


def test_relative_error_map():
    y = torch.zeros(2, 1, 2)
    y[0, 0, 0], y[1, 0, 1] = 3.0, 4.0      # per-position norms 3 and 4: RMS = sqrt(12.5)
    z = y.clone()
    z[1, 0, 1] = 0.0
    err = heatmaps.relative_error_map(y, z)
    np.testing.assert_allclose(err, [[0.0, 4 / np.sqrt(12.5)]])
    np.testing.assert_allclose(heatmaps.relative_error_map(y, y), 0)
    with pytest.raises(ValueError):
        heatmaps.relative_error_map(y, z[:1])


def test_layer_io_keeps_the_output_before_an_inplace_relu():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.zero_()
    x = torch.ones(1, 1, 2, 2)
    inp, out = heatmaps.layer_io(model, "0", x)
    assert torch.equal(inp, x) and (out < 0).all()
    with pytest.raises(AttributeError):
        heatmaps.layer_io(model, "7", x)


class _OneChannel(nn.Module):
    """conv (1 filter) -> in-place ReLU -> global average pool -> linear with weights (+2, -1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_matches_the_closed_form():
    torch.manual_seed(0)
    model = _OneChannel().eval()
    x = torch.randn(1, 1, 6, 6)
    a = model.conv(x)[0, 0].detach()
    # d score_c / d A = w_c / HW on active positions, so the channel weight is w_c * (share active) / HW
    # and the map is ReLU(w_c A) up to a positive factor: ReLU(A) for class 0, ReLU(-A) for class 1.
    cam, cls, probs = heatmaps.grad_cam(model, "conv", x, target=0)
    expected = torch.relu(a) / torch.relu(a).max()
    np.testing.assert_allclose(cam, expected.numpy(), atol=1e-6)
    assert cls == 0 and probs.shape == (2,) and probs.sum() == pytest.approx(1.0, abs=1e-6)
    cam1, cls1, _ = heatmaps.grad_cam(model, "conv", x, target=1)
    np.testing.assert_allclose(cam1, torch.relu(-a).numpy() / torch.relu(-a).max().item(), atol=1e-6)
    assert cls1 == 1
    default, cls_default, _ = heatmaps.grad_cam(model, "conv", x)
    assert cls_default == int(model(x).argmax())
    assert not model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        heatmaps.grad_cam(model, "conv", torch.randn(2, 1, 6, 6))
    with pytest.raises(ValueError):
        heatmaps.grad_cam(model, "conv", x, target=5)


def test_grad_cam_is_upsampled_and_bounded_on_a_cnn():
    torch.manual_seed(1)
    model = TinyCNN(4).eval()
    cam, cls, _ = heatmaps.grad_cam(model, "features.6", torch.randn(1, 3, 32, 32))
    assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1 and 0 <= cls < 4


def test_compressed_model_rebuilds_the_stored_run(trained_workspace):
    from hscc_core.measure.metrics import predict_proba
    from hscc_core.runs.pipeline import RunConfig, compress_run, original_run

    ws = trained_workspace
    run, _ = compress_run(ws, RunConfig(grid=2, clusters=2, energy=0.9), measure_speed=False)
    model = heatmaps.compressed_model(ws, run)
    images = ws.images()
    probs = predict_proba(model, images.x_test, to_input=images.to_tensor)
    stored = ws.store.get_arrays(run["cache_key"])
    np.testing.assert_array_equal(probs.argmax(1), stored["predictions"])
    np.testing.assert_allclose(probs, stored["probabilities"], atol=1e-5)
    # Every compressed layer can be compared with the original on the same input.
    x = images.to_tensor(images.x_test[:1])
    original, _ = ws.baseline()
    for layer in run["layers"]:
        err, out = heatmaps.layer_reconstruction_error(original, model, layer, x)
        assert err.shape == out.shape[1:] and np.isfinite(err).all()
    with pytest.raises(ValueError, match="original"):
        heatmaps.compressed_model(ws, original_run(ws)[0])
    with pytest.raises(ValueError, match="another baseline"):
        heatmaps.compressed_model(ws, dict(run, model_fingerprint="0" * 24))
