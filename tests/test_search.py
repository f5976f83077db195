"""hscc search (Optuna over cached runs, resumable) and hscc export-study (runs as an Optuna study)."""

import json

import optuna
import pytest

from conftest import copy_workspace
from hscc_core.cli.main import main
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import compress_run, run_key
from hscc_core.runs.search import SearchConfig, SearchSpace, default_objectives, run_search
from hscc_core.runs.study import export_study, sqlite_url

SPACE = SearchSpace(grids=(1, 2), clusters=(1, 2), calib_sizes=(16, 32))


@pytest.fixture
def ws(trained_workspace, tmp_path):
    """A private copy of the tiny workspace without compression runs: a test's trials are its own."""
    return copy_workspace(trained_workspace, tmp_path / "cache")


def cli_args(ws) -> list[str]:
    return ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]


def test_config_validation_and_defaults():
    assert default_objectives(3.0) == ("accuracy", "latency")
    assert default_objectives(3.0, measure_speed=False) == ("accuracy", "params")
    assert default_objectives(None) == ("accuracy", "flops")
    for bad in ({"trials": 0}, {"budget": 1.0}, {"sampler": "grid"}, {"batch_size": 0},
                {"objectives": ("accuracy",)}, {"objectives": ("accuracy", "accuracy")},
                {"objectives": ("accuracy", "speed")}, {"startup_trials": 1},
                {"space": SearchSpace(allocations=("greedy",))}):
        with pytest.raises(ValueError):
            SearchConfig(**bad)
    with pytest.raises(ValueError, match="grids"):
        SearchSpace(grids=(0, 2))
    with pytest.raises(ValueError, match="at least one"):
        SearchSpace(clusters=())
    cfg = SearchConfig(budget=3, space=SPACE)
    assert set(cfg.distributions()) == {"grid", "clusters", "cluster_side", "calib_size", "allocation"}
    assert set(SearchConfig(space=SPACE).distributions()) == {"grid", "clusters", "cluster_side", "calib_size",
                                                              "energy"}
    run = cfg.run_config({"grid": 2, "clusters": 1, "cluster_side": "input", "calib_size": 16,
                          "allocation": "greedy"})
    assert run == RunConfig(grid=2, clusters=1, cluster_side="input", calib_size=16, energy=None, budget=3.0,
                            allocation="greedy")
    # Rank multiples are searched only when the space holds more than the default (1,): the default
    # space's distributions, and so a seed's proposals, stay what they were.
    fast = SearchConfig(budget=3, space=SearchSpace(grids=(1, 2), clusters=(1, 2), rank_multiples=(1, 8, 8)))
    assert fast.space.rank_multiples == (1, 8)
    assert fast.distributions()["rank_multiple"].choices == (1, 8)
    assert fast.run_config({"grid": 2, "clusters": 1, "cluster_side": "output", "calib_size": 16,
                            "allocation": "greedy", "rank_multiple": 8}).rank_multiple == 8
    assert "rank_multiple" not in SearchConfig(budget=3).distributions()
    assert "rank_multiple" in SearchConfig(space=SearchSpace(rank_multiples=(8,))).distributions()
    for bad in ((0, 8), (), (1.5,)):
        with pytest.raises(ValueError, match="rank_multiples"):
            SearchSpace(rank_multiples=bad)


def test_trials_are_cached_runs_and_a_rerun_computes_nothing(ws):
    config = SearchConfig(budget=2.0, trials=4, seed=3, batch_size=2, startup_trials=2, space=SPACE)
    first = run_search(ws, config, measure_speed=False)
    assert first.objectives == ("accuracy", "params") and not first.failed and not first.interrupted
    assert first.computed + first.cached == 4 and first.computed >= 1 and len(first.trials) == 4
    meta = ws.baseline()[1]
    for trial in first.trials:
        cfg = RunConfig(**trial["config"])
        assert cfg.method == "hscc" and cfg.budget == 2.0
        assert trial["cache_key"] == run_key(ws, meta, cfg) and ws.store.has_run(trial["cache_key"])
        stored = ws.store.get_run(trial["cache_key"])
        assert trial["values"] == [stored["accuracy"], stored["params"]] and trial["state"] == "complete"
    assert {r["cache_key"] for r in first.runs} == {t["cache_key"] for t in first.trials}
    assert first.front and all(r in first.runs for r in first.front)
    before = set(ws.store.keys())
    again = run_search(ws, config, measure_speed=False)
    assert again.computed == 0 and again.cached == 4
    assert [t["cache_key"] for t in again.trials] == [t["cache_key"] for t in first.trials]
    assert set(ws.store.keys()) == before
    # More trials with the same seed continue the same sequence: the first four come from the cache.
    longer = run_search(ws, SearchConfig(**{**config.__dict__, "trials": 6}), measure_speed=False)
    assert [t["cache_key"] for t in longer.trials[:4]] == [t["cache_key"] for t in first.trials]
    assert longer.cached >= 4


def test_latency_objective_needs_speed(ws):
    with pytest.raises(ValueError, match="latency"):
        run_search(ws, SearchConfig(budget=2.0, trials=1, objectives=("accuracy", "latency")), measure_speed=False)


def test_cli_search_json_and_bad_input(ws, capsys):
    args = ["search", "--budget", "2", "--trials", "2", "--batch", "2", "--startup-trials", "2", "--no-speed",
            "--grid", "1 2", "--clusters", "1", "--calib-sizes", "16", "--rank-multiples", "2", "4",
            "--sampler", "nsga2", "--json", *cli_args(ws)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"runs", "computed", "cached", "trials", "front", "objectives"} <= set(out)
    assert {RunConfig.from_canonical(t["config"]).rank_multiple for t in out["trials"]} <= {2, 4}
    assert out["computed"] + out["cached"] == 2 and out["objectives"] == ["accuracy", "params"]
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["computed"] == 0 and again["cached"] == 2
    for bad in (["--trials", "0"], ["--trials", "2", "--objectives", "accuracy"],
                ["--trials", "2", "--objectives", "accuracy latency", "--no-speed"],
                ["--trials", "2", "--grid", "0"], ["--trials", "2", "--sampler", "grid"],
                ["--trials", "2", "--workers", "2"], ["--trials", "2", "--rank-multiples", "0"]):
        code = main(["search", "--budget", "2", *bad, *cli_args(ws)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("hscc: error:") and len(err.strip().splitlines()) == 1, (bad, err)


def test_exported_study_has_one_trial_per_run(ws, tmp_path, capsys):
    runs = [compress_run(ws, cfg, measure_speed=False)[0]
            for cfg in (RunConfig(grid=1, clusters=1, energy=0.9), RunConfig(method="svd", energy=0.8),
                        RunConfig(grid=2, clusters=2, budget=2.0, energy=None, allocation="greedy"))]
    path = tmp_path / "runs.db"
    study, skipped = export_study(runs, sqlite_url(path))
    loaded = optuna.load_study(study_name="hscc-runs", storage=sqlite_url(path))
    assert skipped == 0 and len(loaded.trials) == len(runs)
    assert [d.name for d in loaded.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_key = {t.user_attrs["cache_key"]: t for t in loaded.trials}
    for run in runs:
        trial = by_key[run["cache_key"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [run["accuracy"], run["flops"]]
        assert trial.params["method"] == run["method"]
    assert by_key[runs[0]["cache_key"]].params["grid"] == 1 and "grid" not in by_key[runs[1]["cache_key"]].params
    assert by_key[runs[2]["cache_key"]].params["allocation"] == "greedy"
    # The command exports every stored run of the workspace; a second export replaces the study.
    for _ in range(2):
        assert main(["export-study", "--out", str(path), "--json", *cli_args(ws)]) == 0
        out = json.loads(capsys.readouterr().out)
    stored = [r for r in ws.store.list_runs() if r["method"] != "original"]
    assert out["trials"] == len(stored) == len(optuna.load_study(study_name="hscc-runs",
                                                                 storage=sqlite_url(path)).trials)
    assert main(["export-study", "--out", str(tmp_path / "missing" / "x.db"), *cli_args(ws)]) == 2
    assert capsys.readouterr().err.startswith("hscc: error:")
