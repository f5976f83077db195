"""Real-browser test: ``streamlit run app.py`` on a free localhost port, every page in headless Chromium.

Uses Debian's Chromium (``make test`` installs it when absent) driven by Playwright with
``executable_path``; no browser is ever downloaded. Skips only when no Chromium binary exists.
Screenshots go to a temporary folder; set ``HSCC_SCREENSHOTS=DIR`` to keep them (the ones in
``docs/screenshots/`` were made that way).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import BROWSER_TIMEOUT_MS, CHROMIUM_FLAGS, ROOT, chromium, populate, streamlit_server, tiny_env, wait_idle
from hscc_core.runs.config import RunConfig, describe_config, run_name
from hscc_core.runs.pipeline import compress_run

pytestmark = pytest.mark.browser

LOW = RunConfig(grid=2, clusters=2, energy=0.9)
SVD = RunConfig(method="svd", energy=0.9)
DEFAULT = RunConfig()  # what the Explorer opens on
PAGES = [("Baseline", "Baseline model"), ("Explorer", "Explorer"), ("Pareto", "Pareto fronts"),
         ("Confusion", "Confusion matrices"), ("Heatmaps", "Heatmaps"), ("Report", "Report")]
# Each page's main element, as a JavaScript condition.
MAIN = {"Baseline": "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 4",
        "Explorer": "[...document.querySelectorAll('h3')].some(h => h.textContent.includes('tau '))",
        "Pareto": "document.querySelectorAll('.js-plotly-plot').length >= 1",
        "Confusion": "document.querySelectorAll('.js-plotly-plot').length >= 6",
        "Heatmaps": "document.querySelectorAll('.js-plotly-plot').length >= 4",
        "Report": "[...document.querySelectorAll('button')].some(b => b.textContent.includes('Download HTML'))"}


@pytest.fixture
def stored_runs(trained_workspace):
    return {cfg: compress_run(trained_workspace, cfg, measure_speed=False)[0] for cfg in (LOW, SVD)}


@pytest.fixture
def server(trained_workspace, stored_runs, tmp_path):
    """The app on 127.0.0.1 with a store of 100+ runs; yields its URL."""
    from hscc_core.runs.workspace import Workspace

    cache = tmp_path / "cache"
    shutil.copytree(trained_workspace.cache_dir, cache)
    ws = Workspace.from_env(env=tiny_env(trained_workspace.data, cache))
    base = stored_runs[LOW]
    populate(ws, base, ws.store.get_arrays(base["cache_key"]))
    env = dict(os.environ, **tiny_env(trained_workspace.data, cache), PYTHONUNBUFFERED="1")
    with streamlit_server(ROOT / "app.py", env, tmp_path / "streamlit.log") as url:
        yield url


def test_every_page_in_headless_chromium(server, tmp_path, stored_runs):
    from playwright.sync_api import sync_playwright

    exe = chromium()
    shots = Path(os.environ.get("HSCC_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1500}, accept_downloads=True)
        try:
            page = context.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            # A deep link as the server's first request opens its page, with no "Page not found"
            # (a pages/ folder beside app.py made Streamlit answer that before app.py ran).
            page.goto(server + "/confusion")
            page.locator("h1", has_text="Confusion matrices").wait_for()
            wait_idle(page)
            assert page.get_by_text("Page not found").count() == 0
            page.goto(server)
            page.locator("h1", has_text="Baseline model").wait_for()
            wait_idle(page)
            assert page.get_by_text("not a medical device").first.is_visible()
            page.screenshot(path=str(shots / "baseline.jpg"), type="jpeg", quality=70)

            def open_page(title: str, heading: str) -> float:
                start = time.perf_counter()
                page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
                page.locator("h1", has_text=heading).wait_for()
                page.wait_for_function(f"() => {MAIN[title]}")
                seconds = time.perf_counter() - start
                wait_idle(page)
                return seconds

            # Explorer: the default configuration is cached, so it shows at once; a slider step too.
            open_page("Explorer", "Explorer")
            page.get_by_role("heading", name=describe_config(DEFAULT.canonical())).wait_for()
            assert page.get_by_text("nothing recomputed").first.is_visible()
            thumb = page.get_by_role("slider").nth(2)  # G, K, then tau
            thumb.wait_for()
            page.screenshot(path=str(shots / "explorer.jpg"), type="jpeg", quality=70)
            thumb.focus()
            start = time.perf_counter()
            page.keyboard.press("ArrowRight")
            page.get_by_role("heading", name=describe_config(RunConfig(energy=0.96).canonical())).wait_for()
            timings["slider"] = time.perf_counter() - start
            wait_idle(page)

            # Pareto: click the one Global SVD point; the sidebar then shows it as the selected run.
            open_page("Pareto", "Pareto fronts")
            page.locator(".js-plotly-plot").first.wait_for()
            page.screenshot(path=str(shots / "pareto.jpg"), type="jpeg", quality=70)
            svd_point = page.locator(".js-plotly-plot .scatterlayer .trace").nth(1).locator("path.point").first
            svd_point.click(force=True)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text(run_name(stored_runs[SVD]), exact=True).wait_for()
            wait_idle(page)

            open_page("Confusion", "Confusion matrices")
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 6")
            page.screenshot(path=str(shots / "confusion.jpg"), type="jpeg", quality=70)

            # Heatmaps of the selected SVD run: regions, error and two Grad-CAMs (no clusters).
            open_page("Heatmaps", "Heatmaps")
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4")
            assert page.get_by_text("HSCC runs only").first.is_visible()
            page.locator("[data-testid='stMain'] [data-testid='stSelectbox']").first.click()  # back to an HSCC run: type its name
            page.keyboard.type(run_name(stored_runs[LOW]))
            page.get_by_role("option").filter(has_text=run_name(stored_runs[LOW])).first.click()
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 5")
            wait_idle(page)
            page.screenshot(path=str(shots / "heatmaps.jpg"), type="jpeg", quality=70)

            # Report: the HTML download is one self-contained file.
            open_page("Report", "Report")
            button = page.get_by_role("button", name="Download HTML report")
            button.wait_for()
            page.screenshot(path=str(shots / "report.jpg"), type="jpeg", quality=70)
            with page.expect_download() as info:
                button.click()
            html = Path(info.value.path()).read_text(encoding="utf-8")
            assert "plotly.js v" in html and run_name(stored_runs[LOW]) in html

            # Page switches once every page has been visited (its caches warm), as a user moves around.
            for title, heading in PAGES[::-1][1:] + PAGES[1:]:
                timings[title] = open_page(title, heading)
        finally:
            context.close()
    print("\nbrowser timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    assert all((shots / f"{name.lower()}.jpg").stat().st_size > 10_000 for name, _ in PAGES)
    # Timings are reported, not asserted: they follow the machine's load; measured numbers are in
    # docs/app-performance.md (benchmarks/app_speed.py).
    assert set(timings) == {"slider", *(name for name, _ in PAGES)}
