"""The run-kind matrix: every kind of run the engine makes, computed for real, on every page and in
``hscc heatmap``. A new method or option that a page cannot show fails here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PAGES, RUN_KINDS, assert_page_ok, open_page, use_tiny_app_env
from hscc_core.cli.main import main as cli
from hscc_core.present.heatmaps import heatmap_data
from hscc_core.runs.config import run_name
from hscc_core.runs.pipeline import compress_run

KINDS = RUN_KINDS


@pytest.fixture(scope="module")
def kinds(trained_workspace):
    return {name: compress_run(trained_workspace, cfg, measure_speed=False)[0] for name, cfg in KINDS.items()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_page_renders_every_kind_of_run_through_a_link(trained_workspace, kinds, kind, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    run = kinds[kind]
    for page in PAGES:
        at = open_page(page, link=run["cache_key"])
        assert_page_ok(at)
        assert at.session_state["selected_run"] == run["cache_key"], page
        assert f"**{run_name(run)}**" in [m.value for m in at.sidebar.markdown], page
        assert at.query_params["run"] == [run["cache_key"]] or at.query_params["run"] == run["cache_key"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_heatmap_data_agrees_with_the_plan_and_the_counted_flops(trained_workspace, kinds, kind, capsys):
    run = kinds[kind]
    arrays = trained_workspace.store.get_arrays(run["cache_key"])
    for layer, counted in run["layer_flops"].items():
        data = heatmap_data(run, layer, arrays)
        assert sum(r["macs"] for r in data["regions"]) == data["macs"] == run["layers"][layer]["macs"]
        assert abs(2 * data["macs"] - counted) <= 0.01 * counted  # what FlopCounterMode measured
        assert sum(r["macs_dense"] for r in data["regions"]) == data["macs_dense"] == counted_original(run, layer)
        assert all(0 <= r["rank_kept"] <= r["rank_dense"] and 0 <= r["macs"] <= r["macs_dense"]
                   for r in data["regions"])
        if run["method"] == "hscc":
            side = run["config"].get("cluster_side", "output")
            labels = np.asarray(data["labels"])
            summary = run["layers"][layer]
            assert labels.shape == (len(data["regions"]), summary["in_channels" if side == "input" else "out_channels"])
        else:
            assert data["labels"] is None and len(data["regions"]) == 1
    layer = next(iter(run["layers"]))
    code = cli(["heatmap", "--run", run["cache_key"][:12], "--layer", layer, "--json",
                "--data", str(trained_workspace.data), "--cache-dir", str(trained_workspace.cache_dir),
                "--arch", "tiny", "--input-size", "32", "--epochs", "4"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(heatmap_data(run, layer, arrays)))


def counted_original(run: dict, layer: str) -> int:
    return run["layer_flops_original"][layer] // 2


def test_a_link_to_an_unknown_run_is_a_message(trained_workspace, kinds, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    at = open_page("views/confusion.py", link="0" * 24)
    assert any("not stored for this dataset" in w.value for w in at.warning)
    assert "selected_run" not in at.session_state
    at = open_page("views/pareto.py", link="not-a-key")
    assert_page_ok(at)


def test_a_new_selection_replaces_the_link(trained_workspace, kinds, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    first, second = kinds["svd energy"], kinds["hscc input energy"]
    at = open_page("views/confusion.py", link=first["cache_key"])
    at.selectbox(key="confusion_pick").set_value(second["cache_key"]).run()
    assert_page_ok(at)
    assert at.session_state["selected_run"] == second["cache_key"]
    at.run()  # the URL now names the new selection; the old link does not come back
    assert at.session_state["selected_run"] == second["cache_key"]
