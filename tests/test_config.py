"""Tests for hscc_core.runs.config: validation naming the allowed values, canonical keys, one source of defaults."""

import pytest

from hscc_core.runs.config import DEFAULTS, RunConfig, default_allocation


@pytest.mark.parametrize("kwargs,match", [
    ({"grid": 0}, "grid"), ({"clusters": 0}, "clusters"), ({"energy": 0.0}, "energy"),
    ({"energy": 1.2}, "energy"), ({"energy": None, "budget": 1.0}, "budget"),
    ({"method": "pca"}, "unknown method 'pca' \\(allowed: hscc, svd, tucker\\)"),
    ({"energy": 0.9, "budget": 3.0}, "not both"), ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"cluster_side": "diagonal"}, "cluster_side must be one of output, input"),
    ({"allocation": "random"}, "allocation must be one of uniform, greedy, sensitivity"),
    ({"allocation": "greedy"}, "needs a budget"), ({"allocation": "sensitivity"}, "needs a budget"),
    ({"method": "svd", "calibration": "sequential"}, "not available for Global SVD .*weight-only"),
    ({"calibration": "chained"}, "calibration must be one of independent, sequential"),
    ({"calib_size": 0}, "calib_size must be an integer >= 1 or 'all'"), ({"calib_size": "most"}, "calib_size"),
    ({"calib_flip": "yes"}, "calib_flip"), ({"rank_multiple": 0}, "rank_multiple must be an integer >= 1"),
    ({"method": "tucker", "rank_multiple": 8}, "rank_multiple applies to method 'hscc' only"),
    ({"method": "tucker", "cluster_side": "input"}, "applies to method 'hscc' only")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_defaults_come_from_one_place():
    c = RunConfig()
    assert (c.method, c.grid, c.clusters, c.energy, c.calib_size, c.cluster_side) == (
        DEFAULTS["method"], DEFAULTS["grid"], DEFAULTS["clusters"], DEFAULTS["energy"], DEFAULTS["calib_size"],
        DEFAULTS["cluster_side"])
    assert (c.calibration, c.calib_flip, c.rank_multiple) == (
        DEFAULTS["calibration"], DEFAULTS["calib_flip"], DEFAULTS["rank_multiple"])
    # The allocation follows the target: the budget rule for every method in budget mode (like for
    # like), uniform otherwise.
    assert c.allocation == "uniform" and c.mode == "energy"
    assert RunConfig(energy=None, budget=3).allocation == DEFAULTS["allocation"] == default_allocation("hscc", 3.0)
    # The weight-only baselines keep one threshold: greedy energy per MAC starves Global SVD's conv2 and
    # costs Tucker-2 5-7 points on the real data (docs/fidelity.md).
    assert RunConfig("svd", energy=None, budget=3).allocation == "uniform" == default_allocation("svd", 3.0)
    assert RunConfig("tucker", energy=None, budget=3).allocation == "uniform" == default_allocation("tucker", 3.0)
    assert RunConfig("svd", energy=None, budget=3, allocation="greedy").allocation == "greedy"
    assert RunConfig(energy=None, budget=3, allocation="uniform").allocation == "uniform"
    # Weight-only baselines are never calibrated sequentially.
    assert RunConfig("tucker").calibration == "independent"


def test_canonical_keys():
    assert RunConfig("svd", energy=None, budget=3).canonical() == RunConfig("svd", energy=None, budget=3.0).canonical()
    # Baselines ignore HSCC-only settings; defaults are left out so earlier keys stay valid.
    assert RunConfig("svd", grid=4).canonical() == RunConfig("svd", grid=1).canonical()
    assert "cluster_side" not in RunConfig().canonical() and "allocation" not in RunConfig().canonical()
    assert RunConfig(energy=None, budget=3, allocation="greedy").canonical()["allocation"] == "greedy"
    assert RunConfig(cluster_side="input", energy=None, budget=6, allocation="greedy",
                     calibration="independent").label() == "hscc G2 K4 in greedy 6x"
    # New fields at the value runs had before they existed stay out of the key (LEGACY) ...
    old = {"method": "hscc", "grid": 2, "clusters": 4, "energy": 0.9, "budget": None, "finetune_epochs": 0,
           "calib_size": 256, "seed": 0}
    assert RunConfig(energy=0.9, calibration="independent", calib_flip=False, rank_multiple=1).canonical() == old
    # ... and any other value is in it, and in the label.
    seq = RunConfig(energy=None, budget=6, calibration="sequential", allocation="sensitivity", calib_size="all",
                    calib_flip=True, rank_multiple=8)
    assert {k: seq.canonical()[k] for k in ("calibration", "allocation", "calib_size", "calib_flip",
                                             "rank_multiple")} == {
        "calibration": "sequential", "allocation": "sensitivity", "calib_size": "all", "calib_flip": True,
        "rank_multiple": 8}
    assert seq.label() == "hscc G2 K4 sens seq Mall flip r8 6x"
    # A weight-only baseline reads calibration images only to measure its sensitivities.
    assert "calib_size" not in RunConfig("svd", energy=None, budget=3, allocation="greedy").canonical()
    sens = RunConfig("svd", energy=None, budget=3, allocation="sensitivity", calib_size=64)
    assert sens.canonical()["calib_size"] == 64 and "calibration" not in sens.canonical()
    assert sens.label() == "svd sens M64 3x"
    assert RunConfig(calib_size=300).canonical() != RunConfig(calib_size=256).canonical()
