"""Tests of hscc_core.present.heatmaps: per-region ranks and MACs of every kind of layer summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SIDES, hscc_decomposition
from hscc_core.compress.hscc import plan_at_energy
from hscc_core.compress.summary import LayerSummary, RegionSummary
from hscc_core.compress.svd import plan_svd, svd_decompose
from hscc_core.compress.tucker import plan_tucker, tucker_decompose
from hscc_core.nn.models import TinyCNN
from hscc_core.present import heatmaps

# Two regions of a 2 x 4 map, 6 output channels, fan-in 10 (original MACs 2*4*6*10 = 480).
HSCC_LAYER = LayerSummary(
    kind="hscc", cluster_side="output", in_channels=10, out_channels=6, kernel_size=(1, 1), out_hw=(2, 4),
    macs=4 * 38, original_macs=480, ranks=((1, 2), (0,)), cluster_sizes=((2, 3), (5,)),
    regions=(RegionSummary(0, 0, (0, 2, 0, 2), 3, 6, 4 * 38, 240), RegionSummary(0, 1, (0, 2, 2, 4), 0, 6, 0, 240)))


def test_region_values_rank_and_flops_by_hand():
    values, labels = heatmaps.region_values(HSCC_LAYER, "rank")
    np.testing.assert_allclose(values, [3 / 6, 0 / 6])
    assert labels == ["3/6", "0/6"]
    flops, labels = heatmaps.region_values(HSCC_LAYER, "flops")
    np.testing.assert_allclose(flops, [38 / 60, 0.0])
    assert labels == ["63%", "0%"]
    grid, regions, _ = heatmaps.region_value_map(HSCC_LAYER, "rank")
    np.testing.assert_allclose(grid, [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    assert regions == [(0, 2, 0, 2), (0, 2, 2, 4)]
    with pytest.raises(ValueError):
        heatmaps.region_values(HSCC_LAYER, "energy")


@pytest.mark.parametrize("side", SIDES)
def test_regions_add_up_to_the_plan_and_stay_in_range(side):
    """The input side's kept fractions read the plan's own MACs (not the output side's formula)."""
    torch.manual_seed(0)
    model = TinyCNN(4).eval()
    plan = plan_at_energy(hscc_decomposition(model, torch.randn(12, 3, 32, 32), side, 3, 3), 0.6)
    for name, s in plan.summaries().items():
        assert sum(r.macs for r in s.regions) == s.macs == plan.layers[name].macs
        flops, _ = heatmaps.region_values(s, "flops")
        np.testing.assert_allclose(flops, [r.macs / r.macs_dense for r in s.regions])
        ranks, labels = heatmaps.region_values(s, "rank")
        assert ((ranks >= 0) & (ranks <= 1)).all() and ((flops >= 0) & (flops <= 1)).all()
        assert all(int(a) <= int(b) for a, b in (lab.split("/") for lab in labels))
    kept = sum(s.macs for s in plan.summaries().values()) / plan.original_macs()
    assert 0 < kept < 1


def test_baseline_layers_are_one_region():
    torch.manual_seed(0)
    model = TinyCNN(4).eval()
    svd = plan_svd(svd_decompose(model, input_shape=(1, 3, 32, 32)), 0.6).summaries()["features.3"]
    grid, regions, labels = heatmaps.region_value_map(svd, "rank")
    assert regions == [(0, *svd.out_hw[:1], 0, *svd.out_hw[1:])] and labels == [f"{svd.rank}/{svd.full_rank}"]
    np.testing.assert_allclose(grid, svd.rank / svd.full_rank)
    tucker = plan_tucker(tucker_decompose(model, input_shape=(1, 3, 32, 32)), 0.6).summaries()["features.3"]
    assert heatmaps.region_values(tucker, "flops")[0].tolist() == [tucker.macs / tucker.original_macs]
    assert heatmaps.region_values(tucker, "rank")[1] == [f"{tucker.rank_out}x{tucker.rank_in}"]


def test_heatmap_data_from_a_stored_run():
    run = {"cache_key": "abc", "layers": {"conv": HSCC_LAYER.to_json()}}
    labels = np.array([[0, 1, 1, -1, 0, 1], [0, 0, 0, 0, 0, -1]], dtype=np.int32)
    data = heatmaps.heatmap_data(run, "conv", {"labels.conv": labels})
    assert data["regions"][0] == {"row": 0, "col": 0, "bounds": [0, 2, 0, 2], "rank_kept": 3, "rank_dense": 6,
                                  "macs": 152, "macs_dense": 240}
    assert data["kept_fraction"] == pytest.approx(152 / 480) and data["labels"] == labels.tolist()
    assert (data["kind"], data["cluster_side"]) == ("hscc", "output")
    assert heatmaps.heatmap_data(run, "conv")["labels"] is None
    with pytest.raises(ValueError, match="no compressed layer 'fc' \\(it has: conv\\)"):
        heatmaps.heatmap_data(run, "fc")
    with pytest.raises(ValueError, match="without a kind"):
        heatmaps.layer_summaries({"layers": {"conv": {"macs": 1}}})


def test_image_choice_names_both_answers_briefly():
    # The Heatmaps page's image box cut "#0: original says ..., compressed says ..." at 1280 px.
    assert heatmaps.image_choice(3, "glioma tumor", "glioma tumor") == "#3 · both say glioma tumor"
    differ = heatmaps.image_choice(17, "meningioma tumor", "pituitary tumor")
    assert differ == "#17 · original: meningioma tumor, compressed: pituitary tumor" and len(differ) <= 64
