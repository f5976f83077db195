"""Setting importance: the setting that determines a metric ranks first; too few runs warn."""

import itertools

import numpy as np
import pytest

from conftest import table_run as fake_run
from hscc_core.runs.importance import MIN_RUNS, setting_importance
from hscc_core.runs.table import runs_table


def synthetic_table(n_energies=(0.8, 0.9, 0.95), noise=0.002, seed=0):
    """HSCC runs over grid x clusters x energy x side where accuracy depends on the grid alone."""
    rng = np.random.default_rng(seed)
    runs = []
    for i, (g, k, e, side) in enumerate(itertools.product((1, 2, 4, 8), (1, 2, 4), n_energies, ("output", "input"))):
        acc = 0.5 + 0.05 * np.log2(g) + rng.normal(0, noise)
        runs.append(fake_run(f"{i:024x}", grid=g, clusters=k, energy=e, side=side, accuracy=acc,
                             flops=int(rng.integers(50, 150))))
    return runs_table(runs)


@pytest.mark.parametrize("method", ["fanova", "permutation"])
def test_the_setting_that_determines_the_metric_ranks_first(method):
    table = synthetic_table()
    result = setting_importance(table, "accuracy", method, seed=0)
    ranked = list(result.importances)
    assert ranked[0] == "grid", result.importances
    assert result.importances["grid"] > 5 * max(result.importances[s] for s in ranked[1:])
    assert result.n_runs == result.n_used == len(table) == 72 and result.warning is None
    # Settings with one value among the runs are reported, not ranked.
    assert {"method", "calib_size", "budget", "finetune_epochs", "seed", "allocation"} <= set(result.constant)
    assert set(ranked) == {"grid", "clusters", "energy", "cluster_side"}
    if method == "fanova":
        assert sum(result.importances.values()) == pytest.approx(1.0)


def test_another_metric_ranks_another_setting():
    table = synthetic_table()
    table["flops"] = 1e6 * table["clusters"] + np.random.default_rng(1).normal(0, 1e3, len(table))
    assert next(iter(setting_importance(table, "flops").importances)) == "clusters"


def test_few_runs_warn_and_subsampling_is_reported():
    table = synthetic_table().iloc[:12]
    result = setting_importance(table, "accuracy")
    assert result.n_runs == 12 and result.warning and "12 runs" in result.warning
    assert result.min_runs >= MIN_RUNS
    big = synthetic_table(n_energies=(0.8, 0.85, 0.9, 0.95, 0.98, 0.99))
    sampled = setting_importance(big, "accuracy", max_runs=100)
    assert sampled.n_runs == len(big) == 144 and sampled.n_used == 100
    assert next(iter(sampled.importances)) == "grid"


def test_nothing_to_rank():
    table = synthetic_table()
    assert setting_importance(table.iloc[:2], "accuracy").importances == {}
    assert "Nothing to rank" in setting_importance(table.iloc[:2], "accuracy").warning
    # Three runs with no varying setting rank nothing.
    same = table[(table["grid"] == 2) & (table["clusters"] == 1) & (table["cluster_side"] == "output")]
    result = setting_importance(same, "accuracy", settings=("grid", "clusters"))
    assert len(same) == 3 and result.importances == {} and "no setting varies" in result.warning
    # Runs lacking the metric (no latency measured) are not counted.
    assert setting_importance(table, "latency_b1_ms").n_runs == 0
    with pytest.raises(ValueError, match="number column"):
        setting_importance(table, "label")
    with pytest.raises(ValueError, match="unknown importance method"):
        setting_importance(table, "accuracy", "magic")
