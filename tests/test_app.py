"""AppTest of the Streamlit app on a tiny trained workspace: every page, the selection, cache hits."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import (APP, PAGES, assert_page_ok, make_imagefolder, open_page, shown, tiny_env,
                      use_tiny_app_env)
from hscc_core.runs.config import DEFAULTS, RunConfig, describe_config, run_name
from hscc_core.runs import jobs, pipeline
from hscc_core.runs.pipeline import compress_run, run_key
from hscc_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
LOW = RunConfig(grid=2, clusters=2, energy=0.9)
HIGH = RunConfig(grid=2, clusters=2, energy=0.99)
SVD = RunConfig(method="svd", energy=0.9)


@pytest.fixture(scope="module")
def stored_runs(trained_workspace):
    """Three real runs in the shared tiny workspace's store (no speed measurement: fast)."""
    return {cfg: compress_run(trained_workspace, cfg, measure_speed=False)[0] for cfg in (LOW, HIGH, SVD)}


@pytest.fixture
def app_env(trained_workspace, stored_runs, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    return trained_workspace


@pytest.fixture
def counters(monkeypatch):
    """Counts of compressions started and runs written while the app runs (same process)."""
    counts = {"compress": 0, "put": 0}
    real_compressor, real_put = pipeline._decompose, RunStore._put_run

    def compressor(*args, **kwargs):
        counts["compress"] += 1
        return real_compressor(*args, **kwargs)

    def put(self, *args, **kwargs):
        counts["put"] += 1
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_decompose", compressor)
    monkeypatch.setattr(RunStore, "_put_run", put)
    return counts


def explorer_config(at: AppTest, cfg: RunConfig) -> AppTest:
    at.selectbox(key="explorer_method").set_value(cfg.method)
    if cfg.method == "hscc":
        at.slider(key="explorer_grid").set_value(cfg.grid)
        at.slider(key="explorer_clusters").set_value(cfg.clusters)
    at.select_slider(key="explorer_energy").set_value(cfg.energy)
    at.number_input(key="explorer_seed").set_value(cfg.seed)
    at.checkbox(key="explorer_measure").uncheck()
    return at.run()


def texts(elements) -> list[str]:
    return [shown(e.value) for e in elements]


# --------------------------------------------------------------------------------------------
# Shell and baseline


def test_overview_shows_real_baseline_metrics(app_env):
    from hscc_core.runs.pipeline import original_run

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert_page_ok(at)
    expected = original_run(app_env)[0]
    accuracy = [m for m in at.main.metric if m.label == "Accuracy"][0]
    assert accuracy.value == f"{100 * expected['accuracy']:.2f} %"
    assert "not a medical device" in " ".join(c.value for c in at.caption)
    # Which split the numbers come from, and how many test images have a twin in training.
    from hscc_core.runs.split_overview import split_overview

    sentence = split_overview(app_env).sentence()
    assert sentence.startswith("Official split") and sentence in " ".join(texts([*at.info, *at.warning]))
    assert "official split" in " ".join(c.value for c in at.caption)


def test_missing_baseline_offers_prepare_button_where_the_operator_allows_it(tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "d", n_train=4, n_test=2)
    for name, value in tiny_env(data, tmp_path / "cache", epochs=1).items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert_page_ok(at)
    assert not any(b.label == "Prepare baseline" for b in at.sidebar.button)  # off unless the operator says
    assert any("The operator prepares baselines" in c.value for c in at.sidebar.caption)
    monkeypatch.setenv("HSCC_ALLOW_PREPARE", "1")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert any(b.label == "Prepare baseline" for b in at.sidebar.button)
    at.sidebar.button[0].click().run()
    assert_page_ok(at)
    assert any(m.label == "Accuracy" for m in at.main.metric)


def test_data_folders_come_from_the_server_side(app_env, tmp_path, monkeypatch):
    """No free-text box unless the operator turns it on; then a folder outside the allowed roots
    (the server's /etc, a '..' escape) is one message that says nothing about it."""
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.sidebar.text_input and at.sidebar.selectbox(key="data_box").options
    monkeypatch.setenv("HSCC_ALLOW_DATA_INPUT", "1")
    for folder in ("/etc", str(app_env.data) + "/../../.."):
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        at.sidebar.text_input(key="data_box_text").set_value(folder).run()
        assert_page_ok(at)
        assert any("does not open that data folder" in e.value for e in at.error)
        assert not any(b.label == "Prepare baseline" for b in at.sidebar.button)


def test_bad_data_path_is_a_visible_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCC_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("HSCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT))
    assert_every_page_shows_error("does not exist")


def assert_every_page_shows_error(text: str) -> None:
    """The app and every page run without an exception and show ``text`` in an error box."""
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert_page_ok(at)
    assert any(text in e.value for e in at.error)
    for page in PAGES[1:]:  # every page degrades to the same message
        at.switch_page(page).run()
        assert_page_ok(at)
        assert any(text in e.value for e in at.error)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_a_selected_run(app_env, stored_runs, page):
    run = stored_runs[LOW]
    at = open_page(page, selected=run["cache_key"])
    assert at.title, "page has a title"
    # The sidebar shows the selected run on every page, and the research-tool notice is there.
    assert f"**{run_name(run)}**" in texts(at.sidebar.markdown)
    assert any("not a medical device" in c for c in texts(at.caption))


def test_pages_without_a_selection_offer_a_picker(app_env, stored_runs):
    for page in ("views/confusion.py", "views/heatmaps.py", "views/report.py"):
        at = open_page(page)
        picker = at.selectbox(key=f"{page.split('/')[1][:-3]}_pick")
        assert picker.value is None
        picker.set_value(stored_runs[SVD]["cache_key"]).run()
        assert_page_ok(at)
        assert at.session_state["selected_run"] == stored_runs[SVD]["cache_key"]


# --------------------------------------------------------------------------------------------
# Explorer


def test_cached_run_is_shown_without_recomputation(app_env, stored_runs, counters):
    at = explorer_config(open_page("views/explorer.py"), LOW)
    assert_page_ok(at)
    assert describe_config(LOW.canonical()) in texts(at.subheader)
    assert any("nothing recomputed" in c for c in texts(at.caption))
    assert counters == {"compress": 0, "put": 0}
    labels = [m.label for m in at.main.metric]
    for card in ("FLOPs (whole model)", "Parameters", "Measured speed (batch 1)", "Accuracy", "Macro F1",
                 "vs original"):
        assert card in labels
    accuracy = [m for m in at.main.metric if m.label == "Accuracy"][0]
    run = stored_runs[LOW]
    assert accuracy.value == f"{100 * run['accuracy']:.2f} ± {100 * run['accuracy_se']:.2f} %"
    assert at.session_state["selected_run"] == run["cache_key"]
    flops = [m for m in at.main.metric if m.label == "FLOPs (whole model)"][0]
    assert flops.delta == f"{-100 * (1 - run['flops'] / run['flops_original']):+.1f} %"


def test_an_about_as_fast_card_has_no_arrow_and_no_colour(trained_workspace, tmp_path, monkeypatch):
    """A red down-arrow sat under "about as fast"; faster and slower keep theirs."""
    from streamlit.proto.Metric_pb2 import Metric

    from conftest import copy_workspace, use_tiny_app_env

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    use_tiny_app_env(monkeypatch, ws.data, ws.cache_dir)
    run = compress_run(ws, LOW, latency_runs=2)[0]
    body, arrays = ws.store.get_entry(run["cache_key"])
    body = {k: v for k, v in body.items() if k not in ("cache_key", "cached")}
    for b1, direction, colour in ((0.99, Metric.NONE, Metric.GRAY), (0.8, Metric.DOWN, Metric.RED),
                                  (1.5, Metric.UP, Metric.GREEN)):
        ws.store.put_run(run["cache_key"], dict(body, speedup=dict(body["speedup"], b1=b1)), arrays)
        at = explorer_config(open_page("views/explorer.py"), LOW)
        card = [m for m in at.main.metric if m.label == "Measured speed (batch 1)"][0].proto
        assert (card.direction, card.color) == (direction, colour), b1




def test_a_run_timed_on_a_busy_machine_says_so(trained_workspace, tmp_path, monkeypatch):
    # Each timing records the share of the CPUs other processes used (latency_ms.others_cpu); the
    # Explorer says when it was too much to trust the speed-up, and says nothing otherwise.
    from conftest import copy_workspace, use_tiny_app_env
    from hscc_core.measure import costs

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    use_tiny_app_env(monkeypatch, ws.data, ws.cache_dir)
    monkeypatch.setattr(costs, "_warned_busy", True)  # the CLI's one-line warning is tested elsewhere
    shown_warnings = {}
    for share, cfg in ((0.6, LOW), (0.05, HIGH)):
        monkeypatch.setattr(costs, "others_share", lambda before, after, share=share: share)
        run = compress_run(ws, cfg, measure_speed=True, latency_runs=2)[0]
        assert run["latency_ms"]["others_cpu"] == share
        at = explorer_config(open_page("views/explorer.py"), cfg)
        assert at.session_state["selected_run"] == run["cache_key"]
        shown_warnings[share] = [w.value for w in at.warning]
    assert any("Other processes used 60% of the CPUs" in w for w in shown_warnings[0.6])
    assert not any("Other processes used" in w for w in shown_warnings[0.05])
    assert [b.label for b in at.button if b.label == "Time it again"] == []  # the quiet run offers nothing
    # The busy one offers to time it again; once quieter, the warning goes and the old timing is kept.
    at = explorer_config(open_page("views/explorer.py"), LOW)
    busy = ws.store.get_run(at.session_state["selected_run"])
    at.button(key="explorer_retime").click().run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Timed again: ") and "at batch 32" in s.value for s in at.success), \
        [s.value for s in at.success]
    assert not any("Other processes used" in w.value for w in at.warning)
    assert [b.label for b in at.button if b.label == "Time it again"] == []
    now = ws.store.get_run(busy["cache_key"])
    assert now["latency_ms"]["others_cpu"] == 0.05 and now["timed_later"]["replaced"]["latency_ms"] == \
        busy["latency_ms"]
    assert at.session_state["selected_run"] == busy["cache_key"]


def test_a_run_slower_than_the_original_says_why(trained_workspace, tmp_path, monkeypatch):
    # A compressed model slower than the original is shown with the measured cause, not only "slower".
    from conftest import copy_workspace, use_tiny_app_env

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    use_tiny_app_env(monkeypatch, ws.data, ws.cache_dir)
    run = compress_run(ws, LOW, measure_speed=True, latency_runs=2)[0]
    body, arrays = ws.store.get_entry(run["cache_key"])
    body = {k: v for k, v in body.items() if k not in ("cache_key", "cached")}
    infos = {}
    for b1 in (1.3, 0.8):
        ws.store.put_run(run["cache_key"], dict(body, speedup={"b1": b1, "b32": 1.5}), arrays)
        at = explorer_config(open_page("views/explorer.py"), LOW)
        assert not at.exception, at.exception
        infos[b1] = [i.value for i in at.info if i.value.startswith("Slower than the original")]
    assert infos[1.3] == [] and len(infos[0.8]) == 1
    assert infos[0.8][0].startswith("Slower than the original at batch 1:")


def test_moving_a_slider_changes_the_shown_run(app_env, stored_runs, counters):
    at = explorer_config(open_page("views/explorer.py"), LOW)
    assert describe_config(LOW.canonical()) in texts(at.subheader)
    at.select_slider(key="explorer_energy").set_value(0.99).run()
    assert_page_ok(at)
    assert describe_config(HIGH.canonical()) in texts(at.subheader)
    assert describe_config(LOW.canonical()) not in texts(at.subheader)
    assert at.session_state["selected_run"] == stored_runs[HIGH]["cache_key"]
    at.selectbox(key="explorer_method").set_value("svd")
    at.select_slider(key="explorer_energy").set_value(0.9).run()
    assert describe_config(SVD.canonical()) in texts(at.subheader)
    assert at.slider(key="explorer_grid").disabled
    assert counters == {"compress": 0, "put": 0}


def finish_background_runs(at: AppTest) -> AppTest:
    """Wait for the background queue (its worker thread computes in this process), then rerun the page."""
    assert jobs.wait_all(timeout=120), "the background run did not finish"
    return at.run()


def test_run_button_computes_in_the_background_and_then_hits_the_cache(app_env, counters):
    cfg = RunConfig(grid=1, clusters=1, energy=0.9, seed=7)
    at = explorer_config(open_page("views/explorer.py"), cfg)
    assert any("has not been computed" in i for i in texts(at.info))
    assert counters["compress"] == 0
    at.button(key="explorer_run").click().run()
    assert_page_ok(at)
    # The prompt is replaced at once: no "has not been computed" nor Run button above the progress.
    assert not any("has not been computed" in i for i in texts(at.info))
    assert not [b for b in at.button if b.key == "explorer_run"]
    at = finish_background_runs(at)
    assert_page_ok(at)
    assert counters == {"compress": 1, "put": 1}
    assert any("Computed and stored" in s for s in texts(at.success))
    assert describe_config(cfg.canonical()) in texts(at.subheader)
    assert not any("has not been computed" in i for i in texts(at.info))
    assert not [b for b in at.button if b.key == "explorer_run"]
    key = run_key(app_env, app_env.baseline()[1], cfg)
    assert app_env.store.has_run(key)
    # A fresh session finds it in the store: no second computation.
    at2 = explorer_config(open_page("views/explorer.py"), cfg)
    assert describe_config(cfg.canonical()) in texts(at2.subheader)
    assert any("nothing recomputed" in c for c in texts(at2.caption))
    assert counters == {"compress": 1, "put": 1}


def test_failed_run_is_a_message_and_leaves_the_store_intact(app_env, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decomposition exploded")

    monkeypatch.setattr(pipeline, "_decompose", broken)
    before = app_env.store.keys()
    at = explorer_config(open_page("views/explorer.py"), RunConfig(grid=3, clusters=2, energy=0.9, seed=8))
    at.button(key="explorer_run").click().run()
    at = finish_background_runs(at)
    assert_page_ok(at)
    assert any("decomposition exploded" in e for e in texts(at.error))
    assert at.button(key="explorer_run").label == "Try again"
    assert app_env.store.keys() == before
    at.switch_page("views/pareto.py").run()  # the app keeps working
    assert_page_ok(at)
    assert at.get("plotly_chart")


def test_each_target_mode_keeps_its_own_value(app_env):
    at = open_page("views/explorer.py")
    # Defaults as documented, in either mode.
    assert at.select_slider(key="explorer_energy").value == DEFAULTS["energy"]
    at.select_slider(key="explorer_energy").set_value(0.9).run()
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert_page_ok(at)
    assert at.select_slider(key="explorer_budget").value == DEFAULTS["budget"]
    at.select_slider(key="explorer_budget").set_value(6.0).run()
    at.radio(key="explorer_mode").set_value("energy threshold").run()
    assert at.select_slider(key="explorer_energy").value == 0.9  # not reset to the slider's first step
    at.switch_page("views/pareto.py").run()  # widgets of another page come and go too
    at.switch_page("views/explorer.py").run()
    assert at.select_slider(key="explorer_energy").value == 0.9
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert at.select_slider(key="explorer_budget").value == 6.0
    assert any("greedy budget x6** has not been computed" in i for i in texts(at.info))


def test_queued_runs_compute_one_after_another_while_the_app_stays_usable(app_env, counters):
    first = RunConfig(grid=1, clusters=2, energy=0.8, seed=11)
    second = RunConfig(grid=1, clusters=2, energy=0.7, seed=11)
    at = explorer_config(open_page("views/explorer.py"), first)
    at.button(key="explorer_run").click().run()
    at.select_slider(key="explorer_energy").set_value(0.7).run()  # another setting while the first computes
    assert_page_ok(at)
    at.button(key="explorer_run").click().run()
    queue = jobs.queue_for(app_env)
    keys = {run_key(app_env, app_env.baseline()[1], cfg) for cfg in (first, second)}
    assert keys <= {j.key for j in queue.jobs()}
    at.switch_page("views/confusion.py").run()  # other pages work meanwhile, and show the queue
    assert_page_ok(at)
    at = finish_background_runs(at)
    assert all(app_env.store.has_run(k) for k in keys)
    assert counters["put"] == 2
    done = [j for j in queue.jobs() if j.key in keys]
    assert all(j.state == "done" for j in done) and done[0].started >= done[1].finished  # one at a time
    sidebar = " ".join(texts(at.sidebar.caption))
    assert "Background runs" in texts(at.sidebar.subheader) and "ready" in sidebar
    at.switch_page("views/explorer.py").run()
    assert describe_config(second.canonical()) in texts(at.subheader)  # the result appeared when ready


def test_grid_slider_stops_at_the_models_largest_grid(app_env):
    """The tiny CNN's smallest compressed map is 4 x 4: the slider offers G = 1 .. 4 (Workspace.max_grid),
    and a remembered larger G (another workspace's) comes down to 4."""
    assert app_env.max_grid() == 4
    at = open_page("views/explorer.py")
    assert at.slider(key="explorer_grid").max == 4
    at.session_state["explorer_values"]["grid"] = 8
    at.run()
    assert_page_ok(at)
    assert at.slider(key="explorer_grid").value == 4 and at.session_state["explorer_values"]["grid"] == 4


def test_budget_mode_needs_no_energy(app_env):
    at = open_page("views/explorer.py")
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert_page_ok(at)
    assert at.select_slider(key="explorer_budget").value == 3.0
    assert any("greedy budget x3** has not been computed" in i for i in texts(at.info))


def test_hscc_plus_switches_change_the_run(app_env, stored_runs):
    at = open_page("views/explorer.py")
    assert at.radio(key="explorer_alloc").disabled  # energy thresholds are the uniform rule
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert_page_ok(at)
    assert not at.radio(key="explorer_alloc").disabled and at.radio(key="explorer_alloc").value == "greedy"
    assert any("4 output clusters, greedy budget x3** has not been computed" in i for i in texts(at.info))
    at.radio(key="explorer_side").set_value("input").run()
    assert_page_ok(at)
    assert any("4 input clusters, greedy budget x3** has not been computed" in i for i in texts(at.info))
    at.radio(key="explorer_alloc").set_value("uniform").run()
    assert any("4 input clusters, uniform-tau budget x3** has not been computed" in i for i in texts(at.info))


def test_sequential_calibration_chosen_in_the_explorer_is_the_stored_run(app_env, counters):
    """The Advanced choices reach the run: sequential calibration, rank multiples and the whole split
    with mirror images are named in the heading and stored in the run's config."""
    cfg = RunConfig(grid=1, clusters=2, energy=0.8, seed=5, calibration="sequential", rank_multiple=2,
                    calib_size="all", calib_flip=True)
    at = explorer_config(open_page("views/explorer.py"), RunConfig(grid=1, clusters=2, energy=0.8, seed=5))
    at.radio(key="explorer_calibration").set_value("sequential").run()
    at.selectbox(key="explorer_multiple").set_value(2).run()
    at.selectbox(key="explorer_calib").set_value("all").run()
    at.checkbox(key="explorer_flip").check().run()
    assert_page_ok(at)
    name = describe_config(cfg.canonical())
    assert "sequential calibration" in name and "all training images and their mirror images" in name
    assert any(f"{name}** has not been computed" in i for i in texts(at.info))
    at.button(key="explorer_run").click().run()
    at = finish_background_runs(at)
    assert_page_ok(at)
    key = run_key(app_env, None, cfg)
    stored = app_env.store.get_run(key)
    assert stored["config"]["calibration"] == "sequential" and stored["calibration"] == "sequential"
    assert stored["config"]["calib_size"] == "all" and stored["config"]["calib_flip"] is True
    assert stored["config"]["rank_multiple"] == 2
    assert name in texts(at.subheader)
    # Chosen again from the sidebar's store, the run brings its settings back into the widgets.
    at.radio(key="explorer_calibration").set_value("independent").run()
    assert name not in texts(at.subheader)
    at.session_state["explorer_pending"] = dict(stored["config"], method="hscc")
    at.run()
    assert at.radio(key="explorer_calibration").value == "sequential" and name in texts(at.subheader)


def test_baselines_get_every_budget_allocation_in_the_explorer(app_env):
    """Global SVD in budget mode: the allocation choice is open (like for like with HSCC, uniform by default), the
    HSCC-only settings are not, and sensitivity allocation opens the calibration images."""
    at = open_page("views/explorer.py")
    at.selectbox(key="explorer_method").set_value("svd").run()
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert_page_ok(at)
    # Global SVD starts from its own default rule, one threshold (greedy starves its conv2).
    assert not at.radio(key="explorer_alloc").disabled and at.radio(key="explorer_alloc").value == "uniform"
    assert at.radio(key="explorer_calibration").disabled and at.selectbox(key="explorer_multiple").disabled
    assert at.selectbox(key="explorer_calib").disabled
    assert any("Global SVD, uniform-tau budget x3** has not been computed" in i for i in texts(at.info))
    at.radio(key="explorer_alloc").set_value("greedy").run()
    assert any("Global SVD, greedy budget x3** has not been computed" in i for i in texts(at.info))
    at.radio(key="explorer_alloc").set_value("sensitivity").run()
    assert not at.selectbox(key="explorer_calib").disabled
    assert any("Global SVD, sensitivity-greedy budget x3** has not been computed" in i for i in texts(at.info))
    at.radio(key="explorer_mode").set_value("energy threshold").run()  # the budget's rule waits for budget mode
    at.radio(key="explorer_mode").set_value("FLOPs budget").run()
    assert at.radio(key="explorer_alloc").value == "sensitivity"
    at.selectbox(key="explorer_method").set_value("hscc").run()  # HSCC starts from greedy again
    assert at.radio(key="explorer_alloc").value == "greedy"


# --------------------------------------------------------------------------------------------
# Pareto and the selection shared by every page


def test_pareto_click_selects_the_run_for_every_page(app_env, stored_runs):
    at = open_page("views/pareto.py")
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = charts[0].proto.spec
    for run in stored_runs.values():
        assert run["cache_key"] in spec  # every run is a point carrying its key
    target = stored_runs[HIGH]
    # What Streamlit reports when a point is clicked (on_select="rerun", selection_mode="points").
    at.session_state["pareto_chart"] = {"selection": {"points": [{"curve_number": 0, "point_index": 0,
                                                                  "customdata": [target["cache_key"], ""]}],
                                                      "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    assert_page_ok(at)
    assert at.session_state["selected_run"] == target["cache_key"]
    assert f"**{run_name(target)}**" in texts(at.sidebar.markdown)
    # The explorer loads the clicked run's configuration into its widgets.
    at.switch_page("views/explorer.py").run()
    assert_page_ok(at)
    assert at.select_slider(key="explorer_energy").value == 0.99
    assert describe_config(target["config"]) in texts(at.subheader)
    at.switch_page("views/confusion.py").run()
    assert at.selectbox(key="confusion_pick").value == target["cache_key"]


def pills(at: AppTest, label: str):
    return [p for p in at.pills if p.label == label][0]


def test_pareto_axes_and_filters(app_env, stored_runs):
    at = open_page("views/pareto.py")
    at.selectbox(key="pareto_y").set_value("kl_to_original")
    at.selectbox(key="pareto_x").set_value("params")
    at.checkbox(key="pareto_se").check().run()
    assert_page_ok(at)
    pills(at, "Methods").set_value(["svd"]).run()
    assert_page_ok(at)
    spec = at.get("plotly_chart")[0].proto.spec
    assert stored_runs[SVD]["cache_key"] in spec
    assert stored_runs[LOW]["cache_key"] not in spec
    # The fixture's runs have no latency: the page still renders, draws only timed runs and says why.
    # (Other tests of the session may have stored timed Global SVD runs in the shared workspace.)
    from hscc_core.runs.selection import baseline_runs
    ws = app_env
    timed = sum(r.get("latency_ms") is not None
                for r in baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint(), method="svd"))
    at.selectbox(key="pareto_x").set_value("latency").run()
    assert_page_ok(at)
    caption = " ".join(texts(at.caption))
    assert f"{timed} of" in caption and "have no latency, batch 1 (ms) (speed not measured: `hscc runs --time`" in caption
    at.selectbox(key="pareto_x").set_value("flops")
    pills(at, "Methods").set_value(["hscc", "svd"]).run()
    sides = pills(at, "HSCC cluster side")
    assert "output" in sides.value  # (other tests of the session may have stored input-side runs)
    sides.set_value([]).run()  # no HSCC side chosen: only the baseline is left
    spec = at.get("plotly_chart")[0].proto.spec
    assert stored_runs[SVD]["cache_key"] in spec and stored_runs[LOW]["cache_key"] not in spec


def test_pareto_table_lists_every_run_drawn_with_the_front_marked(app_env, stored_runs):
    at = open_page("views/pareto.py")
    table = at.dataframe[0].value
    runs = {r["cache_key"] for r in stored_runs.values()}
    assert runs <= set(table["key"])  # every run the filters keep, not only the front
    caption = " ".join(texts(at.caption))
    assert f"{len(table)} of {len(table)} stored runs drawn" in caption
    assert table["front"].any() and not table["front"].all() or len(table) == 1
    assert set(table["run"]) >= {run_name(r) for r in stored_runs.values()}
    # What the page ranks by comes right after the name (on screen at 1280 px); one split: no split column.
    assert list(table.columns[:6]) == ["front", "run", "accuracy %", "± SE", "latency ms", "speed"]
    assert "split" not in table.columns
    at.selectbox(key="pareto_rank").set_value("MFLOPs").run()
    ranked = at.dataframe[0].value
    assert list(ranked["MFLOPs"]) == sorted(ranked["MFLOPs"])
    at.selectbox(key="pareto_rank").set_value("latency ms").run()
    ranked = at.dataframe[0].value["latency ms"].dropna()
    assert list(ranked) == sorted(ranked)


def test_confusion_page_counts_and_normalised(app_env, stored_runs):
    at = open_page("views/confusion.py", selected=stored_runs[LOW]["cache_key"])
    assert len(at.get("plotly_chart")) == 6  # original, run, difference, F1, precision, recall
    assert_page_ok(at)
    at.radio(key="confusion_norm").set_value("row-normalised (recall per true class)").run()
    assert_page_ok(at)
    assert re.search(r'"\d+ %"', at.get("plotly_chart")[0].proto.spec)  # row shares, one label per cell


def test_heatmaps_page_draws_all_overlays(app_env, stored_runs):
    run = stored_runs[LOW]
    at = open_page("views/heatmaps.py", selected=run["cache_key"])
    assert not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) == 5  # regions, clusters, error, Grad-CAM x2
    assert_page_ok(at)
    # No colour Streamlit's renderer would swap for its theme's (Inferno's #000004 became lavender).
    assert not any(re.search(r"#0000[0-9a-f]{2}\b", c.proto.spec, re.I) for c in at.get("plotly_chart"))
    assert any("not a medical device" in i for i in texts(at.info))
    at.radio(key="heatmaps_kind").set_value("FLOPs kept")
    at.selectbox(key="heatmaps_layer").set_value(list(run["layers"])[1])
    at.slider(key="heatmaps_opacity").set_value(0.8).run()
    assert not at.exception and not at.error
    assert "FLOPs kept" in at.get("plotly_chart")[0].proto.spec
    # A baseline run has no clusters: a message replaces that map.
    at.selectbox(key="heatmaps_pick").set_value(stored_runs[SVD]["cache_key"]).run()
    assert_page_ok(at)
    assert len(at.get("plotly_chart")) == 4
    assert any("HSCC runs only" in i for i in texts(at.info))


def test_heatmaps_of_a_fine_tuned_run_ask_before_fine_tuning_again(trained_workspace, stored_runs, tmp_path,
                                                                   monkeypatch, counters):
    from hscc_core.runs.workspace import Workspace

    cache = tmp_path / "cache"
    shutil.copytree(trained_workspace.cache_dir, cache)
    ws = Workspace.from_env(env=tiny_env(trained_workspace.data, cache))
    cfg = RunConfig(grid=2, clusters=2, energy=0.9, finetune_epochs=3)
    base = stored_runs[LOW]
    run = {k: v for k, v in base.items() if k not in ("cache_key", "cached")}
    key = run_key(ws, ws.baseline()[1], cfg)
    ws.store.put_run(key, dict(run, config=cfg.canonical(), label=cfg.label()), ws.store.get_arrays(base["cache_key"]))
    use_tiny_app_env(monkeypatch, trained_workspace.data, cache)
    at = open_page("views/heatmaps.py", selected=key)
    assert any("fine-tuned for 3 epoch" in w for w in texts(at.warning))
    assert len(at.get("plotly_chart")) == 1  # the region map needs no model
    assert counters["compress"] == 0  # nothing rebuilt until asked
    assert at.button(key="heatmaps_finetune")


def test_report_page_offers_html_and_png(app_env, stored_runs):
    at = open_page("views/report.py", selected=stored_runs[LOW]["cache_key"])
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download HTML report", "Download figures (PNG + SVG, zip)"]
    assert_page_ok(at)
    assert "official split" in " ".join(texts(at.caption))
    at.selectbox(key="report_preview").set_value("Per-class F1").run()
    assert_page_ok(at)
    assert len(at.get("image")) == 1
    at.selectbox(key="report_preview").set_value("Grad-CAM, compressed model").run()  # maps of the selected run
    assert_page_ok(at)
    assert len(at.get("image")) == 1


def test_heatmaps_say_when_a_grad_cam_map_is_empty(app_env, stored_runs, monkeypatch):
    import streamlit as st

    from hscc_core.present import explain

    real = explain.grad_cam_result

    def no_evidence(*args, **kwargs):  # what Grad-CAM returns when no position supports the class
        r = real(*args, **kwargs)
        return explain.CamResult(r.cam * 0, r.target, r.probabilities, r.layer, 0.0)

    monkeypatch.setattr(explain, "grad_cam_result", no_evidence)
    st.cache_data.clear()  # the maps of this image may be cached from another test
    at = open_page("views/heatmaps.py", selected=stored_runs[LOW]["cache_key"])
    warnings = [w for w in texts(at.warning) if w.startswith("No positive evidence")]
    assert len(warnings) == 2 and "earlier layer" in warnings[0]  # one per model, naming an earlier layer
    last = at.selectbox(key="heatmaps_cam_layer").value
    at.button(key="heatmaps_earlier_original").click().run()
    assert_page_ok(at)
    assert at.selectbox(key="heatmaps_cam_layer").value != last
    st.cache_data.clear()


@pytest.mark.parametrize("size", ["5", "abc"])
def test_bad_input_size_setting_is_a_visible_message(tmp_path, monkeypatch, size):
    use_tiny_app_env(monkeypatch, make_imagefolder(tmp_path / "d", n_train=2, n_test=2), tmp_path / "cache")
    monkeypatch.setenv("HSCC_INPUT_SIZE", size)
    assert_every_page_shows_error("Cannot open this workspace")
