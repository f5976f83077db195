"""Older runs that differ only in timing are brought up to date without computing them again
(hscc_core.runs.upgrade, ``hscc runs --upgrade``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PAGES, RUN_KINDS, copy_workspace, open_page, use_tiny_app_env
from hscc_core.cli.main import main
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import compress_run
from hscc_core.runs.selection import baseline_runs, older_baseline_runs, resolve_run
from hscc_core.runs.store import cache_key
from hscc_core.runs.table_cache import older_runs_count
from hscc_core.measure.machine import busy_timing
from hscc_core.runs.upgrade import config_of, time_runs, upgradable_runs, upgrade_runs
from hscc_core.runs.versions import RUN_VERSION, TIMING_ONLY_VERSIONS, older_runs_note

OLD = min(TIMING_ONLY_VERSIONS)
CONFIG = RunConfig(grid=2, clusters=2, energy=0.9)


@pytest.fixture
def ws(trained_workspace, tmp_path):
    return copy_workspace(trained_workspace, tmp_path / "cache")


def age(ws, run: dict, version: int = OLD, **changes) -> str:
    """Store ``run`` as an older pipeline version would have (its own key) in place of the current one."""
    body = {k: v for k, v in run.items() if k not in ("cache_key", "cached")}
    body.update(version=version, **changes)
    key = cache_key("run", {"config": body["config"], "model": ws.model_fingerprint(), "data": ws.index().fingerprint,
                            "version": version})
    arrays = ws.store.get_arrays(run["cache_key"])
    ws.store.prune([run["cache_key"]])
    ws.store.put_run(key, body, arrays)
    return key


def counts(ws) -> tuple[int, int]:
    args = (ws.store, ws.index().fingerprint, ws.model_fingerprint())
    return older_baseline_runs(*args), older_baseline_runs(*args, upgradable=True)


def test_a_timed_run_is_timed_again_and_listed_under_the_current_key(ws):
    run = compress_run(ws, CONFIG, latency_runs=3)[0]
    old_key = age(ws, run)
    assert baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint()) == []
    assert counts(ws) == (1, 1)
    classes = ws.images().classes
    assert older_runs_count(ws.store, classes, ws.index().fingerprint, ws.model_fingerprint(), upgradable=True) == 1

    report = upgrade_runs(ws, latency_runs=3)
    assert report.skipped == [] and len(report.upgraded) == 1
    done = report.upgraded[0]
    assert done["from"] == old_key and done["to"] == run["cache_key"] and done["retimed"]
    new = ws.store.get_run(run["cache_key"])
    assert new["version"] == RUN_VERSION and not ws.store.has_run(old_key)
    for field in ("accuracy", "flops", "params", "layers", "layer_errors", "confusion_matrix", "config", "label"):
        assert new[field] == run[field], field
    assert new["latency_ms"]["memory_format"] == "channels_last" and new["speedup"]["b1"] > 0
    assert "others_cpu" in new["latency_ms"]  # what else ran while it was timed
    seconds = new["upgraded_from"].pop("seconds")
    assert seconds > 0 and new["measure_seconds"] == run["measure_seconds"]
    assert new["upgraded_from"] == {"cache_key": old_key, "version": OLD, "latency_ms": run["latency_ms"],
                                    "speedup": run["speedup"], "retimed": True}
    assert [r["cache_key"] for r in baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint())] \
        == [run["cache_key"]]
    assert counts(ws) == (0, 0)
    # A link or command naming the old key still finds the run.
    assert resolve_run(ws, old_key)["cache_key"] == run["cache_key"]
    assert resolve_run(ws, old_key[:8])["cache_key"] == run["cache_key"]
    # Nothing left to do; the same settings asked for again come from the cache.
    assert upgrade_runs(ws).upgraded == []
    assert compress_run(ws, CONFIG, latency_runs=3)[1] is True


def test_without_retiming_the_old_timing_is_dropped_not_kept_as_current(ws):
    run = compress_run(ws, CONFIG, latency_runs=3)[0]
    age(ws, run)
    report = upgrade_runs(ws, retime=False)
    assert [u["retimed"] for u in report.upgraded] == [False]
    new = ws.store.get_run(run["cache_key"])
    assert new["latency_ms"] is None and new["speedup"] is None
    assert new["upgraded_from"]["latency_ms"] == run["latency_ms"]


def test_an_untimed_run_is_re_keyed_without_building_anything(ws, monkeypatch):
    run = compress_run(ws, CONFIG, measure_speed=False)[0]
    age(ws, run)
    import hscc_core.runs.upgrade as upgrade

    monkeypatch.setattr(upgrade, "build_compressed", lambda *a, **k: pytest.fail("nothing to time"))
    report = upgrade_runs(ws)
    assert [u["retimed"] for u in report.upgraded] == [False]
    assert ws.store.get_run(run["cache_key"])["latency_ms"] is None


def test_runs_it_cannot_vouch_for_are_left_alone(ws):
    run = compress_run(ws, CONFIG, latency_runs=3)[0]
    other = compress_run(ws, RunConfig("svd", energy=0.8), measure_speed=False)[0]
    # A stored layout the settings no longer rebuild, and a version that changed more than timing.
    bad_key = age(ws, run, layers={})
    older_key = age(ws, other, version=OLD - 1)
    assert counts(ws) == (2, 1)
    report = upgrade_runs(ws)
    assert report.upgraded == []
    assert [(s["key"], "differs from the stored one" in s["reason"]) for s in report.skipped] == [(bad_key, True)]
    assert report.summary() == f"0 older runs brought up to date (version {RUN_VERSION}); 1 left as it was."
    assert ws.store.has_run(bad_key) and ws.store.has_run(older_key)  # nothing removed
    assert counts(ws) == (2, 1)
    assert "Compute the other 1 again" in older_runs_note(*counts(ws))


def test_a_run_already_computed_again_only_loses_its_older_copy(ws):
    run = compress_run(ws, CONFIG, measure_speed=False)[0]
    old_key = age(ws, run)
    again = compress_run(ws, CONFIG, measure_speed=False)[0]  # computed anew under the current key
    report = upgrade_runs(ws)
    assert [(u["from"], u["to"], u["already_current"]) for u in report.upgraded] \
        == [(old_key, again["cache_key"], True)]
    assert not ws.store.has_run(old_key)
    assert ws.store.get_run(again["cache_key"]) == {k: v for k, v in again.items() if k != "cached"}


def test_settings_stored_before_a_default_changed_are_read_as_recorded():
    # Budget runs stored their config without "allocation" while the uniform rule was the default;
    # the run records which rule ran, and that decides the upgraded key.
    cfg = RunConfig(grid=2, clusters=2, energy=None, budget=3.0, allocation="uniform").canonical()
    stored = {k: v for k, v in cfg.items() if k != "allocation"}
    assert config_of({"config": stored, "allocation": "uniform"}).allocation == "uniform"
    assert config_of({"config": cfg, "allocation": "uniform", "cluster_side": "output"}).canonical() == cfg
    with pytest.raises(ValueError, match="read differently today"):
        config_of({"config": cfg, "allocation": "greedy"})
    with pytest.raises(ValueError):
        config_of({"config": {**cfg, "no_such_setting": 1}})


def test_cli_upgrade_contract(capsys, ws):
    args = ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]
    run = compress_run(ws, CONFIG, latency_runs=3)[0]
    old_key = age(ws, run)
    assert main(["runs", *args, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["older_runs"] == 1 and listed["upgradable_runs"] == 1 and listed["runs"] == []
    assert main(["runs", *args]) == 0
    assert "hscc runs --upgrade" in capsys.readouterr().out
    for bad in (["--no-speed"], ["--upgrade", "--prune"], ["--upgrade", "--method", "svd"],
                ["--upgrade", "--latency-runs", "0"]):
        assert main(["runs", *args, *bad]) == 2, bad
        assert "Traceback" not in capsys.readouterr().err
    assert main(["runs", *args, "--upgrade", "--latency-runs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(u["from"], u["to"], u["retimed"]) for u in out["upgraded"]] == [(old_key, run["cache_key"], True)]
    assert out["skipped"] == []
    assert main(["runs", *args, "--upgrade"]) == 0
    assert capsys.readouterr().out.strip() == "No older run to bring up to date."
    assert upgradable_runs(ws) == []


def test_runs_computed_without_timing_are_timed_afterwards(ws):
    # A parallel sweep must run with --no-speed (timings side by side disturb each other); the runs
    # get their timing afterwards, one at a time, without computing anything else again.
    plain = compress_run(ws, CONFIG, measure_speed=False)[0]
    tuned = compress_run(ws, RunConfig("svd", energy=0.8, finetune_epochs=1), measure_speed=False)[0]
    timed = compress_run(ws, RunConfig(grid=1, clusters=2, energy=0.9), latency_runs=3)[0]
    before = {r["cache_key"]: ws.store.get_arrays(r["cache_key"]) for r in (plain, tuned)}
    report = time_runs(ws, baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint()), latency_runs=3)
    assert sorted(t["key"] for t in report.timed) == sorted([plain["cache_key"], tuned["cache_key"]])
    assert report.skipped == [] and "2 runs timed" in report.summary()
    for run, finetuned in ((plain, False), (tuned, True)):
        now = ws.store.get_run(run["cache_key"])
        assert now["latency_ms"]["memory_format"] == "channels_last" and now["speedup"]["b32"] > 0
        assert now["timed_later"]["finetuned"] is finetuned and now["timed_later"]["seconds"] > 0
        rest = {k: v for k, v in now.items() if k not in ("latency_ms", "speedup", "timed_later")}
        assert rest == {k: v for k, v in run.items() if k not in ("latency_ms", "speedup", "cached")}
        after = ws.store.get_arrays(run["cache_key"])  # predictions, probabilities, the plan's arrays: kept
        assert after.keys() == before[run["cache_key"]].keys()
        assert all(np.array_equal(after[k], before[run["cache_key"]][k]) for k in after)
    assert ws.store.get_run(timed["cache_key"]) == {k: v for k, v in timed.items() if k != "cached"}
    assert time_runs(ws, baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint())).timed == []


def disturb(ws, run: dict, share: float) -> dict:
    """``run`` stored again as if other processes had used ``share`` of the CPUs while it was timed."""
    body, arrays = ws.store.get_entry(run["cache_key"])
    body = {k: v for k, v in body.items() if k not in ("cache_key", "cached")}
    body["latency_ms"] = dict(body["latency_ms"], others_cpu=share)
    ws.store.put_run(run["cache_key"], body, arrays)
    return ws.store.get_run(run["cache_key"])


def test_runs_timed_on_a_busy_machine_are_timed_again_on_request(ws, monkeypatch):
    from hscc_core.measure import costs

    monkeypatch.setattr(costs, "others_share", lambda before, after: 0.02)  # this machine's load is not the test
    busy = disturb(ws, compress_run(ws, CONFIG, latency_runs=3)[0], 0.6)
    quiet = disturb(ws, compress_run(ws, RunConfig("svd", energy=0.8), latency_runs=3)[0], 0.1)
    untimed = compress_run(ws, RunConfig(grid=1, clusters=2, energy=0.9), measure_speed=False)[0]
    assert busy_timing(busy["latency_ms"]) and not busy_timing(quiet["latency_ms"])
    assert not busy_timing(untimed["latency_ms"]) and not busy_timing(dict(quiet["latency_ms"], others_cpu=None))
    listed = lambda: baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint())  # noqa: E731
    # Without the request only the run without a timing is timed: a busy timing is still a timing.
    report = time_runs(ws, listed(), latency_runs=3)
    assert [(t["key"], t["again"]) for t in report.timed] == [(untimed["cache_key"], False)]
    assert ws.store.get_run(busy["cache_key"]) == {k: v for k, v in busy.items() if k != "cached"}
    report = time_runs(ws, listed(), latency_runs=3, again_if_busy=True)
    assert [(t["key"], t["again"]) for t in report.timed] == [(busy["cache_key"], True)]
    assert report.summary() == \
        "1 run timed again against the original (its earlier timing had been taken on a busy machine)."
    now = ws.store.get_run(busy["cache_key"])
    # Nothing lost: the busy timing is kept beside the new one, and nothing else changed.
    assert now["timed_later"]["replaced"] == {"latency_ms": busy["latency_ms"], "speedup": busy["speedup"]}
    assert now["latency_ms"]["others_cpu"] == 0.02 and now["latency_ms"]["runs"] == 3
    rest = {k: v for k, v in now.items() if k not in ("latency_ms", "speedup", "timed_later")}
    assert rest == {k: v for k, v in busy.items() if k not in ("latency_ms", "speedup", "cached")}
    assert ws.store.get_run(quiet["cache_key"]) == {k: v for k, v in quiet.items() if k != "cached"}
    assert time_runs(ws, listed(), again_if_busy=True).summary() == \
        "No run without a timing or timed on a busy machine."


def test_timing_report_says_which_runs_were_timed_again():
    from hscc_core.runs.upgrade import TimingReport

    run = {"key": "k", "label": "l", "speedup": {"b1": 1.0, "b32": 1.0}}
    mixed = TimingReport(timed=[dict(run, again=True), dict(run, again=False), dict(run, again=False)],
                         skipped=[{"key": "s", "label": "l", "reason": "r"}], again_if_busy=True)
    assert mixed.summary() == ("3 runs timed against the original (1 of them again: their earlier timing had been "
                               "taken on a busy machine); 1 left as it was.")
    assert TimingReport(timed=[dict(run, again=True)] * 2).summary() == \
        "2 runs timed again against the original (their earlier timing had been taken on a busy machine)."
    assert TimingReport(skipped=[{"key": "s", "label": "l", "reason": "r"}] * 2).summary() == \
        "0 runs timed against the original; 2 left without a timing."
    assert TimingReport().summary() == "No run without a timing."


def test_cli_time_contract(capsys, ws, monkeypatch):
    from hscc_core.measure import costs

    # Every timing counts as quiet: on a busy machine the first timing of a run would be "busy" too,
    # and --retime-busy would time it again beside the one this test disturbs (seen under load).
    monkeypatch.setattr(costs, "others_share", lambda before, after: 0.02)
    args = ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]
    svd = compress_run(ws, RunConfig("svd", energy=0.8), measure_speed=False)[0]
    hscc = compress_run(ws, CONFIG, measure_speed=False)[0]
    for bad in (["--time", "--upgrade"], ["--time", "--prune"], ["--time", "--latency-runs", "0"],
                ["--retime-busy"], ["--upgrade", "--retime-busy"]):
        assert main(["runs", *args, *bad]) == 2, bad
        assert "Traceback" not in capsys.readouterr().err
    assert main(["runs", *args, "--time", "--method", "svd", "--latency-runs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in out["timed"]] == [svd["cache_key"]] and out["skipped"] == []
    assert ws.store.get_run(hscc["cache_key"])["latency_ms"] is None  # --method kept it out
    assert main(["runs", *args, "--time", "--latency-runs", "3"]) == 0
    text = capsys.readouterr().out
    assert hscc["cache_key"] in text and "x at batch 1" in text and "1 run timed against the original." in text
    # --retime-busy: the runs timed on a busy machine as well, each marked as timed again.
    disturb(ws, ws.store.get_run(svd["cache_key"]), 0.9)
    assert main(["runs", *args, "--time", "--latency-runs", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timed"] == []
    assert main(["runs", *args]) == 0  # the listing marks it
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(svd["cache_key"])]
    assert len(listed) == 1 and listed[0].endswith("[timed while other processes used 90% of the CPUs]")
    assert main(["runs", *args, "--time", "--retime-busy", "--latency-runs", "3"]) == 0
    text = capsys.readouterr().out
    assert f"{svd['cache_key']}  " in text and "(timed again)" in text and "1 run timed again against" in text


def test_every_page_shows_an_upgraded_run_and_a_run_timed_later(trained_workspace, tmp_path, monkeypatch):
    # Both carry a field no computed run has (upgraded_from, timed_later) and a timing taken apart
    # from their computation: each page opens on them as on any run.
    ws = copy_workspace(trained_workspace, tmp_path / "pages")
    upgraded = compress_run(ws, RUN_KINDS["hscc output uniform budget"], latency_runs=3)[0]
    age(ws, upgraded)
    assert len(upgrade_runs(ws, latency_runs=3).upgraded) == 1
    later = compress_run(ws, RUN_KINDS["hscc input greedy budget"], measure_speed=False)[0]
    assert len(time_runs(ws, [later], latency_runs=3).timed) == 1
    # Timed on a busy machine: one left so (warnings, notes, the Compare row), one timed again since.
    busy = disturb(ws, compress_run(ws, RUN_KINDS["svd budget"], latency_runs=3)[0], 0.6)
    again = disturb(ws, compress_run(ws, RUN_KINDS["hscc output greedy budget"], latency_runs=3)[0], 0.7)
    assert [t["again"] for t in time_runs(ws, [again], latency_runs=3, again_if_busy=True).timed] == [True]
    use_tiny_app_env(monkeypatch, trained_workspace.data, ws.cache_dir)
    for key in (upgraded["cache_key"], later["cache_key"], busy["cache_key"], again["cache_key"]):
        assert ws.store.get_run(key)["speedup"]["b1"] > 0
        for page in PAGES:
            at = open_page(page, link=key)
            assert at.session_state["selected_run"] == key, page
