"""Tests for hscc_core.runs.config: validation naming the allowed values, canonical keys, one source of defaults."""

import pytest

from hscc_core.runs.config import DEFAULTS, RunConfig, default_allocation


@pytest.mark.parametrize("kwargs,match", [
    ({"grid": 0}, "grid"), ({"clusters": 0}, "clusters"), ({"energy": 0.0}, "energy"),
    ({"energy": 1.2}, "energy"), ({"energy": None, "budget": 1.0}, "budget"),
    ({"method": "pca"}, "unknown method 'pca' \\(allowed: hscc, svd, tucker\\)"),
    ({"energy": 0.9, "budget": 3.0}, "not both"), ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"cluster_side": "diagonal"}, "cluster_side must be one of output, input"),
    ({"allocation": "random"}, "allocation must be one of uniform, greedy"),
    ({"allocation": "greedy"}, "needs a budget"),
    ({"method": "svd", "energy": None, "budget": 3.0, "allocation": "greedy"}, "not available for Global SVD"),
    ({"method": "tucker", "cluster_side": "input"}, "applies to method 'hscc' only")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_defaults_come_from_one_place():
    c = RunConfig()
    assert (c.method, c.grid, c.clusters, c.energy, c.calib_size, c.cluster_side) == (
        DEFAULTS["method"], DEFAULTS["grid"], DEFAULTS["clusters"], DEFAULTS["energy"], DEFAULTS["calib_size"],
        DEFAULTS["cluster_side"])
    # The allocation follows the target: greedy for HSCC in budget mode, uniform otherwise.
    assert c.allocation == "uniform" and c.mode == "energy"
    assert RunConfig(energy=None, budget=3).allocation == "greedy" == default_allocation("hscc", 3.0)
    assert RunConfig("svd", energy=None, budget=3).allocation == "uniform"
    assert RunConfig(energy=None, budget=3, allocation="uniform").allocation == "uniform"


def test_canonical_keys():
    assert RunConfig("svd", energy=None, budget=3).canonical() == RunConfig("svd", energy=None, budget=3.0).canonical()
    # Baselines ignore HSCC-only settings; defaults are left out so earlier keys stay valid.
    assert RunConfig("svd", grid=4).canonical() == RunConfig("svd", grid=1).canonical()
    assert "cluster_side" not in RunConfig().canonical() and "allocation" not in RunConfig().canonical()
    assert RunConfig(energy=None, budget=3).canonical()["allocation"] == "greedy"
    assert RunConfig(cluster_side="input", energy=None, budget=6).label() == "hscc G2 K4 in greedy 6x"
