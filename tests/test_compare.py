"""Comparing runs: metrics with SEs, pairwise McNemar tests with Holm's adjustment, kept FLOPs per layer."""

import numpy as np
import pytest

from conftest import table_run as fake_run
from hscc_core.measure.metrics import paired_comparison
from hscc_core.runs.compare import holm, kept_fractions, metrics_long, metrics_wide, pairwise_tests, run_names


def runs3():
    a, b, c = (fake_run(k * 24, accuracy=acc) for k, acc in (("a", 0.7), ("b", 0.8), ("c", 0.9)))
    a["method"], a["config"] = "svd", {"method": "svd", "energy": 0.5}
    c["config"] = dict(b["config"])  # two runs with one configuration stay apart
    for run, kept in zip((a, b, c), (0.5, 0.25, 1.0)):
        run["layer_flops_original"] = {"features.3": 100, "features.10": 40, "features.0": 10}
        run["layer_flops"] = {"features.3": 100 * kept, "features.10": 40 * kept, "features.0": 10}
    return [a, b, c]


def test_names_metrics_and_kept_fractions():
    runs = runs3()
    names = run_names(runs)
    # Readable names; runs of one configuration stay apart by their key.
    assert names[0] == "Global SVD, tau 0.5" and names[1] != names[2]
    assert names[1].startswith("HSCC 2x2 regions, 4 output clusters, tau 0.9 · ")
    long = metrics_long(runs)
    acc = long[long["metric"] == "accuracy"]
    assert list(acc["value"]) == [0.7, 0.8, 0.9] and list(acc["se"]) == [0.01] * 3
    assert np.isnan(long[long["metric"] == "latency b1 (ms)"]["value"]).all()
    wide = metrics_wide(runs)
    assert list(wide.columns) == names and wide.loc["accuracy", names[0]] == "70.00 % ± 1.00"
    assert wide.loc["latency b1 (ms)", names[0]] == "n/a" and "F1 no tumor" in wide.index
    kept = kept_fractions(runs)
    assert list(kept.index) == ["features.0", "features.3", "features.10"]  # network order
    assert list(kept[names[1]]) == [1.0, 0.25, 0.25]
    with pytest.raises(ValueError, match="2 to 4"):
        metrics_long(runs[:1])


def test_pairwise_tests_match_paired_comparison():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    preds = {}
    for key, p_right in (("a" * 24, 0.7), ("b" * 24, 0.8), ("c" * 24, 0.95)):
        right = rng.random(200) < p_right
        preds[key] = np.where(right, y, (y + 1) % 4)
    runs = runs3()
    table = pairwise_tests(runs, preds, y)
    names = run_names(runs)
    assert list(zip(table["a"], table["b"])) == [(names[0], names[1]), (names[0], names[2]), (names[1], names[2])]
    first = paired_comparison(y, preds["a" * 24], preds["b" * 24])
    row = table.iloc[0]
    assert row["p_value"] == first["p_value"] and row["delta"] == first["accuracy_delta"]
    assert row["a_only"] == first["discordant"]["ref_only"] and row["b_only"] == first["discordant"]["new_only"]
    assert row["accuracy_a"] == np.mean(preds["a" * 24] == y)
    assert (table["p_holm"] >= table["p_value"]).all() and table.iloc[1]["p_value"] < 1e-6
    with pytest.raises(ValueError, match="no stored predictions"):
        pairwise_tests(runs, {"a" * 24: preds["a" * 24]}, y)
    with pytest.raises(ValueError, match="test images"):
        pairwise_tests(runs, {k: v[:10] for k, v in preds.items()}, y)


def test_holm_adjustment():
    assert list(holm([0.01, 0.04, 0.03, 0.5])) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert list(holm([0.6, 0.6])) == [1.0, 1.0]
