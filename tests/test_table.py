"""The runs table: typed columns, Pareto marks, filters, sorting, CSV/JSON export and `hscc runs --csv`."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from conftest import TABLE_CLASSES as CLASSES
from conftest import copy_workspace
from conftest import table_run as fake_run
from hscc_core.runs.pareto import front_runs
from hscc_core.runs.table import (SETTINGS, category_values, filter_mask, filter_table, mark_pareto, runs_table,
                                  search_mask, sort_table, to_csv, to_json)

@pytest.fixture
def runs():
    return [fake_run("a" * 24, grid=1, accuracy=0.70, flops=50, latency=1.0),
            fake_run("b" * 24, grid=2, accuracy=0.80, flops=100, side="input"),
            fake_run("c" * 24, grid=4, accuracy=0.75, flops=120, energy=None, budget=3.0, allocation="greedy"),
            fake_run("d" * 24, method="svd", accuracy=0.40, flops=60),
            fake_run("e" * 24, method="tucker", accuracy=0.90, flops=150)]


def test_columns_are_typed_and_missing_values_are_nan(runs):
    t = runs_table(runs)
    assert list(t["key"]) == [r["cache_key"] for r in runs]
    for col in ("grid", "clusters", "calib_size", "energy", "budget", "accuracy", "accuracy_se", "flops",
                "latency_b1_ms", "speedup_b32", "glioma_tumor_f1", "no_tumor_f1_se", "energy_found"):
        assert t[col].dtype == np.float64, col
    assert t["pareto"].dtype == bool
    svd = t.iloc[3]
    # A baseline has no grid, clusters, side or calibration: missing, never the text "None"; its
    # allocation rule is a setting like HSCC's (like-for-like budget comparisons).
    assert np.isnan(svd["grid"]) and pd.isna(svd["cluster_side"]) and pd.isna(svd["calibration"])
    assert svd["allocation"] == "uniform"
    assert "None" not in to_csv(t)
    assert t.loc[1, "cluster_side"] == "input" and t.loc[0, "cluster_side"] == "output"
    assert t.loc[2, "allocation"] == "greedy" and t.loc[2, "budget"] == 3.0 and np.isnan(t.loc[2, "energy"])
    assert t.loc[2, "energy_found"] == 0.93 and np.isnan(t.loc[0, "energy_found"])
    assert t.loc[0, "latency_b1_ms"] == 1.0 and t.loc[0, "speedup_b1"] == 2.0 and np.isnan(t.loc[1, "latency_b1_ms"])
    assert t.loc[0, "flops_kept"] == 0.25
    assert t.loc[1, "no_tumor_f1"] == pytest.approx(0.70)
    assert set(SETTINGS) <= set(t.columns)
    # The fidelity settings: words for the mirror images, a number for the rank multiple; empty for baselines.
    assert list(t["calib_flip"].iloc[:3]) == ["no"] * 3 and pd.isna(svd["calib_flip"])
    assert list(t["rank_multiple"].iloc[:3]) == [1.0] * 3 and np.isnan(svd["rank_multiple"])
    flipped = dict(runs[0], config=dict(runs[0]["config"], calib_flip=True, rank_multiple=8))
    row = runs_table([flipped]).iloc[0]
    assert row["calib_flip"] == "yes" and row["rank_multiple"] == 8.0
    # What else ran while a run was timed: a share where recorded, empty where not.
    assert t["others_cpu"].dtype == np.float64 and t["others_cpu"].isna().all()
    busy = dict(runs[0], latency_ms=dict(runs[0]["latency_ms"], others_cpu=0.4))
    assert runs_table([busy]).iloc[0]["others_cpu"] == 0.4


def test_pareto_column_matches_the_front(runs):
    t = runs_table(runs)
    expected = {r["cache_key"] for r in front_runs(runs, "flops", "accuracy")}
    assert set(t.loc[t["pareto"], "key"]) == expected == {"a" * 24, "b" * 24, "e" * 24, "d" * 24} - {"d" * 24}
    # Another pair of axes; a run lacking the value (latency) is never on the front.
    lat = mark_pareto(t, "latency", "accuracy")
    assert list(t.loc[lat, "key"]) == ["a" * 24]


def test_filters_ranges_categories_and_text(runs):
    t = runs_table(runs)
    assert list(filter_table(t, ranges={"accuracy": (0.75, 0.9)})["key"].str[0]) == ["b", "c", "e"]
    # A range drops rows lacking the value (the baselines have no grid).
    assert list(filter_table(t, ranges={"grid": (1, 2)})["key"].str[0]) == ["a", "b"]
    assert list(filter_table(t, categories={"method": ["svd", "tucker"]})["key"].str[0]) == ["d", "e"]
    # None admits rows lacking the value; number columns accept exact values.
    assert list(filter_table(t, categories={"cluster_side": ["input", None]})["key"].str[0]) == ["b", "d", "e"]
    assert list(filter_table(t, categories={"grid": [4]})["key"].str[0]) == ["c"]
    assert list(filter_table(t, text="HSCC greedy")["key"].str[0]) == ["c"]  # every word, any case
    assert list(filter_table(t, text="tuck")["key"].str[0]) == ["e"]
    assert search_mask(t, "").all()
    both = filter_mask(t, ranges={"flops": (0, 110)}, categories={"method": ["hscc"]}, text="G")
    assert list(t.loc[both, "key"].str[0]) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown column"):
        filter_mask(t, ranges={"nope": (0, 1)})
    with pytest.raises(ValueError, match="empty"):
        filter_mask(t, ranges={"accuracy": (0.9, 0.1)})


def test_category_values_and_sorting(runs):
    t = runs_table(runs)
    assert category_values(t, "method") == ["hscc", "svd", "tucker"]
    assert category_values(t, "cluster_side") == ["input", "output", None]
    assert list(sort_table(t, "accuracy", descending=True)["key"].str[0]) == ["e", "b", "c", "a", "d"]
    assert list(sort_table(t, "grid")["key"].str[0]) == ["a", "b", "c", "d", "e"]  # missing last
    with pytest.raises(ValueError):
        sort_table(t, "nope")


def test_csv_has_a_header_and_one_row_per_run(runs):
    t = runs_table(runs)
    text = to_csv(t)
    lines = text.strip().split("\n")
    assert lines[0].split(",") == list(t.columns)
    assert len(lines) == 1 + len(runs)
    assert lines[1].startswith("a" * 24 + ',"HSCC 1x1 region, 4 output clusters, tau 0.9",hscc,1,4,output,uniform,independent,256,no,1,'
                               "0.9,,0,0,,0.7,")
    back = pd.read_csv(io.StringIO(text))
    assert back["accuracy"].tolist() == t["accuracy"].tolist()
    assert back["grid"].isna().tolist() == t["grid"].isna().tolist()


def test_json_export_uses_null_for_missing(runs):
    t = runs_table(runs)
    obj = json.loads(to_json(t))
    assert obj["columns"] == list(t.columns) and len(obj["rows"]) == len(runs)
    assert obj["rows"][3]["grid"] is None and obj["rows"][3]["cluster_side"] is None
    assert obj["rows"][0]["accuracy"] == 0.7 and obj["rows"][0]["pareto"] is True


def test_empty_table_has_the_columns():
    t = runs_table([], classes=CLASSES)
    assert len(t) == 0 and "accuracy" in t and "no_tumor_f1" in t and "pareto" in t
    assert to_csv(t).strip().split(",")[0] == "key"


def test_cli_runs_csv(trained_workspace, tmp_path, capsys):
    from hscc_core.cli.main import main
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import compress_run

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    stored = [compress_run(ws, RunConfig(method="svd", energy=e), measure_speed=False)[0] for e in (0.7, 0.8)]
    args = ["runs", "--csv", "--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny",
            "--input-size", "32", "--epochs", "4", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    back = pd.read_csv(io.StringIO(out))
    assert back.columns[0] == "key" and "accuracy_se" in back.columns and "pareto" in back.columns
    by_key = back.set_index("key")
    for run in stored:
        assert by_key.loc[run["cache_key"], "accuracy"] == pytest.approx(run["accuracy"])
        assert by_key.loc[run["cache_key"], "method"] == "svd"
    assert len(back) == 2  # every compression run, not the original
