"""Tests of hscc_core.present.explain: cluster maps (both sides), output errors, Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hscc_core.nn.models import TinyCNN
from hscc_core.present import explain as heatmaps

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


def test_cluster_activation_for_each_side():
    inp, out = np.random.default_rng(0).random((3, 8, 8)), np.random.default_rng(1).random((5, 4, 4))
    np.testing.assert_array_equal(heatmaps.cluster_activation("output", inp, out), out)
    pooled = heatmaps.cluster_activation("input", inp, out)  # input channels on the output grid
    assert pooled.shape == (3, 4, 4)
    np.testing.assert_allclose(pooled[:, 0, 0], inp[:, :2, :2].mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="cluster side"):
        heatmaps.cluster_activation("both", inp, out)


def _no_evidence_model() -> nn.Module:
    # One conv, ReLU, mean pool and a linear head whose class-1 weights are all negative: every positive
    # activation lowers the class-1 score, so Grad-CAM for class 1 has no positive evidence anywhere.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(0.1)
        model[4].weight[0] = 1.0
        model[4].weight[1] = -1.0
    return model.eval()


def test_empty_grad_cam_is_detected_and_explained():
    model = _no_evidence_model()
    x = torch.rand(1, 1, 8, 8) + 0.1
    empty = heatmaps.grad_cam_result(model, "0", x, target=1)
    assert empty.empty and empty.peak == 0 and not empty.cam.any()
    full = heatmaps.grad_cam_result(model, "0", x, target=0)
    assert not full.empty and full.peak > 0 and full.cam.max() == pytest.approx(1.0)
    cam, target, probs = heatmaps.grad_cam(model, "0", x, 1)  # the tuple form is the same map
    assert target == 1 and not cam.any() and probs.shape == (2,)
    message = heatmaps.empty_cam_message("glioma tumor", "features.10", "features.8")
    assert message.startswith("No positive evidence for glioma tumor at layer features.10")
    assert "earlier layer features.8" in message
    assert "earlier" not in heatmaps.empty_cam_message("glioma tumor", "features.0")
    assert heatmaps.earlier_layers(["a", "b", "c"], "c") == ["b", "a"]
    assert heatmaps.earlier_layers(["a", "b", "c"], "a") == [] == heatmaps.earlier_layers(["a"], "zz")
