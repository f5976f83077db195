"""AppTest of the Runs and Compare pages: the table sorts, filters and searches, its selection reaches the
Compare page, the parallel coordinates carry the filters as brushes, and the search button stores runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import copy_workspace, use_tiny_app_env
from hscc_core.runs.config import ALLOCATION_TITLES, RunConfig, describe_config
from hscc_core.runs.pipeline import compress_run, run_key
from hscc_core.runs.store import cache_key

APP = Path(__file__).resolve().parents[1] / "app.py"
REAL = (RunConfig(grid=2, clusters=2, energy=0.9), RunConfig(method="svd", energy=0.9))


@pytest.fixture
def page_env(trained_workspace, tmp_path, monkeypatch):
    """A copy of the tiny workspace with 2 computed runs and 8 stored copies under other configurations."""
    cache = tmp_path / "cache"
    ws = copy_workspace(trained_workspace, cache)
    meta = ws.baseline()[1]
    base = compress_run(ws, REAL[0], measure_speed=False)[0]
    compress_run(ws, REAL[1], measure_speed=False)
    arrays = ws.store.get_arrays(base["cache_key"])
    for i, (g, k) in enumerate([(1, 1), (1, 4), (2, 4), (4, 1), (4, 2), (4, 4), (3, 2), (3, 3)]):
        cfg = RunConfig(grid=g, clusters=k, energy=0.95)
        run = {key: v for key, v in base.items() if key not in ("cache_key", "cached")}
        run.update(config=cfg.canonical(), label=cfg.label(), accuracy=0.3 + 0.07 * i,
                   flops=int(base["flops"] * (1 - 0.05 * ((i * 3) % 8))))
        ws.store.put_run(run_key(ws, meta, cfg), run, arrays)
    use_tiny_app_env(monkeypatch, trained_workspace.data, cache)
    return ws


def open_runs() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    return at


def table(at):
    return at.dataframe[0].value


def by_label(elements, label):
    return next(e for e in elements if e.label == label)


def test_table_lists_every_run_and_sorts(page_env):
    at = open_runs()
    t = table(at)
    assert len(t) == 10 and {"pareto", "label", "accuracy", "accuracy_se", "flops", "key"} <= set(t.columns)
    assert list(t["accuracy"]) == sorted(t["accuracy"], reverse=True)  # default: accuracy, descending
    assert t["pareto"].any()
    at.selectbox(key="runs_sort").set_value("flops")
    at.toggle(key="runs_sort_desc").set_value(False).run()
    assert not at.exception
    assert list(table(at)["flops"]) == sorted(table(at)["flops"])
    assert any("10 of 10 runs shown" in c.value for c in at.caption)


def test_every_metric_column_has_a_readable_format(page_env):
    # 158M FLOPs, 1.36x, 7.44 ms, 86.75 %: no metric reads as 158113280 or 1.3577 (the exports keep them).
    from hscc_core.present.dashboard import column_format
    from hscc_core.runs.table import SETTINGS

    metrics = [c for c in table(open_runs()).columns if c not in (*SETTINGS, "key", "label", "pareto")]
    assert "others_cpu" in metrics and "no_tumor_f1_se" in metrics
    assert [c for c in metrics if column_format(c) is None] == []
    assert [column_format(c) for c in ("speedup_b32", "params", "others_cpu", "accuracy_se", "grid")] == \
        ["%.2fx", "compact", "percent", "percent", None]


def test_accuracy_changes_read_in_points_and_se_columns_by_name(page_env):
    """A 20-point drop read "-20%" (a relative change to a reader); the table shows "-20.0 pts" and
    keeps the fraction in its exports. SE columns are named after their metric."""
    import pandas as pd

    from hscc_core.present.dashboard import column_format, column_label, in_display_units

    assert column_format("accuracy_delta") == "%+.1f pts" and column_format("accuracy_delta_se") == "%.1f pts"
    assert [column_label(c) for c in ("accuracy_se", "accuracy_delta_se", "kl_to_original_se", "macro_f1_se")] == \
        ["accuracy SE", "accuracy change SE", "KL to original SE", "macro F1 SE"]
    raw = pd.DataFrame({"accuracy": [0.6525], "accuracy_delta": [-0.2], "accuracy_delta_se": [0.021]})
    shown = in_display_units(raw)
    assert list(shown.iloc[0]) == pytest.approx([0.6525, -20.0, 2.1]) and raw["accuracy_delta"][0] == -0.2
    at = open_runs()
    data = table(at)
    runs = {r["cache_key"]: r for r in page_env.store.list_runs()}
    for key, delta in zip(data["key"], data["accuracy_delta"]):
        assert delta == pytest.approx(100 * runs[key]["accuracy_delta"])


def test_runs_of_an_older_pipeline_are_counted_not_lost(page_env):
    """A run stored by an older version of the pipeline is not listed, and the Runs and Pareto pages say so."""
    from hscc_core.runs.versions import RUN_VERSION

    ws = page_env
    meta = ws.baseline()[1]
    base = next(r for r in ws.store.list_runs() if r.get("method") == "hscc")
    cfg = RunConfig(grid=1, clusters=2, energy=0.5)
    old = {key: v for key, v in base.items() if key not in ("cache_key", "cached")}
    old.update(config=cfg.canonical(), label=cfg.label(), version=RUN_VERSION - 1)
    # Under the key that version gave it (the version is part of a run's key).
    old_key = cache_key("run", {"config": cfg.canonical(), "model": meta["fingerprint"], "data": ws.index().fingerprint,
                                "version": RUN_VERSION - 1})
    ws.store.put_run(old_key, old, ws.store.get_arrays(base["cache_key"]))
    at = open_runs()
    assert len(table(at)) == 10  # the older run is not among the listed ones
    assert any("10 of 10 runs shown" in c.value and "1 stored run of this model comes from an older version" in c.value
               for c in at.caption)
    at.switch_page("views/pareto.py").run()  # the other page that lists every run says it too
    assert not at.exception, at.exception
    assert any("of 10 stored runs drawn" in c.value and "1 stored run of this model comes from an older version"
               in c.value for c in at.caption)
    # It differs only in how it was timed: the Runs page brings it up to date in place, and lists it.
    at.switch_page("views/runs.py").run()
    by_label(at.button, "Bring 1 older run up to date").click().run()
    assert not at.exception, at.exception
    assert len(table(at)) == 11 and "HSCC 1x1 region, 2 output clusters, tau 0.5" in set(table(at)["label"])
    assert run_key(ws, meta, cfg) in set(table(at)["key"]) and not ws.store.has_run(old_key)
    assert any("1 older run brought up to date" in s.value for s in at.success)
    assert not [b for b in at.button if b.label.startswith("Bring ")]
    assert not any("older version" in c.value for c in at.caption)
    # A link that named the older run opens the run it became.
    link = AppTest.from_file(str(APP), default_timeout=120)
    link.query_params["run"] = old_key
    link.run()
    assert not link.exception and not [w for w in link.warning if "link names a run" in w.value]
    assert link.session_state["selected_run"] == run_key(ws, meta, cfg)


def test_filters_search_and_pareto_only(page_env):
    at = open_runs()
    at.multiselect(key="runs_filter_cols").set_value(["method", "accuracy"]).run()
    assert not at.exception
    by_label(at.multiselect, "method").set_value(["svd"]).run()
    assert list(table(at)["method"]) == ["svd"]
    by_label(at.multiselect, "method").set_value(["hscc", "svd"]).run()
    slider = by_label(at.slider, "accuracy")
    slider.set_value((0.5, slider.max)).run()
    assert not at.exception and (table(at)["accuracy"] >= 0.5).all() and len(table(at)) < 10
    # The parallel coordinates carry the same filters as brushes.
    assert "constraintrange" in at.get("plotly_chart")[0].proto.spec
    at.multiselect(key="runs_filter_cols").set_value([]).run()
    at.text_input(key="runs_search").set_value("1x1").run()
    assert set(table(at)["label"]) == {describe_config(RunConfig(grid=1, clusters=k, energy=0.95).canonical())
                                       for k in (1, 4)}
    at.text_input(key="runs_search").set_value("").run()
    at.checkbox(key="runs_only_front").check().run()
    assert table(at)["pareto"].all() and 0 < len(table(at)) < 10


def test_allocation_and_calibration_read_as_words(page_env):
    """The table names each run's allocation and calibration rule (not its identifier); the
    filters offer the same words."""
    ws = page_env
    meta = ws.baseline()[1]
    base = ws.store.get_run(run_key(ws, meta, REAL[0]))
    cfg = RunConfig(grid=2, clusters=2, energy=None, budget=2.0, allocation="sensitivity", calibration="sequential")
    run = {k: v for k, v in base.items() if k not in ("cache_key", "cached")}
    run.update(config=cfg.canonical(), label=cfg.label(), allocation="sensitivity", calibration="sequential")
    ws.store.put_run(run_key(ws, meta, cfg), run, ws.store.get_arrays(base["cache_key"]))
    at = open_runs()
    t = table(at)
    row = t[t["label"] == describe_config(cfg.canonical())]
    assert list(row["allocation"]) == [ALLOCATION_TITLES["sensitivity"]] and list(row["calibration"]) == ["sequential"]
    assert set(t["allocation"].dropna()) == {ALLOCATION_TITLES["uniform"], ALLOCATION_TITLES["sensitivity"]}
    at.multiselect(key="runs_filter_cols").set_value(["allocation"]).run()
    assert not at.exception
    assert ALLOCATION_TITLES["sensitivity"] in by_label(at.multiselect, "allocation").options


def test_importance_section_warns_on_few_runs(page_env):
    at = open_runs()
    assert not any("Which setting matters" in c.proto.spec for c in at.get("plotly_chart"))  # not until asked
    at.toggle(key="runs_imp_on").set_value(True).run()
    assert any("Only 10 runs" in w.value for w in at.warning)
    assert any("Which setting matters" in c.proto.spec for c in at.get("plotly_chart"))
    at.radio(key="runs_imp_method").set_value("permutation").run()
    assert not at.exception


def test_selection_reaches_the_compare_page(page_env):
    at = open_runs()
    keys = list(table(at)["key"])
    # What Streamlit reports when rows are selected (on_select="rerun", selection_mode="multi-row").
    at.session_state["runs_table"] = {"selection": {"rows": [0, 2], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    assert at.session_state["compare_runs"] == [keys[0], keys[2]]
    assert at.session_state["selected_run"] == keys[0]
    at.switch_page("views/compare.py").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="compare_pick").value == [keys[0], keys[2]]
    metrics = at.dataframe[0].value
    assert "accuracy" in metrics.index and len(metrics.columns) == 2
    tests = at.dataframe[1].value
    p = tests["p_value"].iloc[0]  # text as papers print it: "0.042", "< 0.001"
    assert len(tests) == 1 and (p == "< 0.001" or 0 <= float(p) <= 1)
    # Per-class F1, two confusion matrices, kept FLOPs, and the two runs' maps on one slice.
    assert len(at.get("plotly_chart")) == 1 + 2 + 1 + 2
    # The original model can join; four is the most.
    at.multiselect(key="compare_pick").set_value(["original", keys[0], keys[2]]).run()
    assert not at.exception and len(at.dataframe[1].value) == 3
    assert at.session_state["compare_runs"] == ["original", keys[0], keys[2]]


def test_compare_page_without_a_selection_asks_for_runs(page_env):
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception and any("Pick 2 to 4 runs" in i.value for i in at.info)


def test_compare_page_starts_with_the_selected_run_against_the_original(page_env):
    key = next(r["cache_key"] for r in page_env.store.list_runs() if r.get("method") == "hscc")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["selected_run"] = key
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception and at.multiselect(key="compare_pick").value == [key, "original"]
    assert list(at.dataframe[0].value.columns) == ["#1", "#2"]
    at.multiselect(key="compare_pick").set_value([]).run()  # emptied by the user: it stays empty
    at.run()
    assert at.multiselect(key="compare_pick").value == [] and any("Pick 2 to 4 runs" in i.value for i in at.info)


def test_search_button_stores_its_trials(page_env):
    at = open_runs()
    before = len(page_env.store.keys())
    at.number_input(key="runs_search_trials").set_value(1)
    at.select_slider(key="runs_search_budget").set_value(2.0)
    at.multiselect(key="runs_search_grids").set_value([1])
    at.multiselect(key="runs_search_clusters").set_value([1])
    at.multiselect(key="runs_search_multiples").set_value([8])  # the speed constraint, searched like the rest
    at.button(key="runs_search_run").click().run()
    assert not at.exception, at.exception
    assert len(page_env.store.keys()) == before + 1
    assert any("1 trials: 1 computed" in s.value for s in at.success)
    assert len(table(at)) == 11
    new = [page_env.store.get_run(k) for k in page_env.store.keys()]
    assert sum(r.get("config", {}).get("rank_multiple") == 8 for r in new if r) == 1
    # An empty choice is a visible message, not a traceback or a run.
    at.multiselect(key="runs_search_multiples").set_value([])
    at.button(key="runs_search_run").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Search not run: pick at least one value of Rank multiples."]
    assert len(page_env.store.keys()) == before + 1


def test_runs_without_a_timing_are_timed_from_the_page_and_every_page_sees_it(page_env, monkeypatch):
    # A run is stored again under its own key when it is timed: the pages' caches, keyed by the store's
    # listing, must still see the new latency (RunStore.generation), whether the page or the
    # command line timed it.
    from hscc_core.measure import costs
    from hscc_core.runs.selection import baseline_runs
    from hscc_core.runs.upgrade import time_runs

    # Every timing here counts as quiet, whatever else this machine runs meanwhile (a busy timing
    # would add a "time it again" button this test only expects where it makes one itself).
    monkeypatch.setattr(costs, "others_share", lambda before, after: 0.03)
    ws = page_env
    at = open_runs()
    assert table(at)["latency_b1_ms"].isna().all()
    svd = next(r for r in baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint())
               if r["method"] == "svd")
    assert [t["key"] for t in time_runs(ws, [svd], latency_runs=3).timed] == [svd["cache_key"]]
    at.run()  # timed outside the app, as `hscc runs --time` does
    timed = table(at).set_index("key")["latency_b1_ms"]
    assert timed.notna().sum() == 1 and timed[svd["cache_key"]] > 0
    # The 8 stored copies carry another configuration's layout: rebuilt, they differ, and are left untimed.
    by_label(at.button, "Time 9 runs without a timing").click().run()
    assert not at.exception, at.exception
    assert any("1 run timed against the original; 8 left without a timing" in s.value for s in at.success), \
        [s.value for s in at.success]
    assert table(at)["latency_b1_ms"].notna().sum() == 2
    assert [b.label for b in at.button if b.label.startswith("Time ")] == ["Time 8 runs without a timing"]
    # A timing taken on a busy machine: the table says how busy, and a button times it again.
    body, arrays = ws.store.get_entry(svd["cache_key"])
    body = {k: v for k, v in body.items() if k not in ("cache_key", "cached")}
    ws.store.put_run(svd["cache_key"], dict(body, latency_ms=dict(body["latency_ms"], others_cpu=0.7)), arrays)
    at.run()
    assert table(at).set_index("key")["others_cpu"][svd["cache_key"]] == 0.7
    assert [b.label for b in at.button if b.label.startswith("Time ")] == [
        "Time 8 runs without a timing", "Time 1 run again: timed on a busy machine"]
    by_label(at.button, "Time 1 run again: timed on a busy machine").click().run()
    assert not at.exception, at.exception
    assert any("1 run timed again against the original (its earlier timing" in s.value for s in at.success)
    assert table(at).set_index("key")["others_cpu"][svd["cache_key"]] == 0.03
    assert [b.label for b in at.button if b.label.startswith("Time ")] == ["Time 8 runs without a timing"]
