"""Real-browser test: ``streamlit run app.py`` on a free localhost port, every page in headless Chromium.

Uses Debian's Chromium (``make test`` installs it when absent) driven by Playwright with
``executable_path``; no browser is ever downloaded. Skips only when no Chromium binary exists.
Screenshots go to a temporary folder; set ``HSCC_SCREENSHOTS=DIR`` to keep them (the ones in
``docs/screenshots/`` were made that way).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import tiny_env
from test_app import LOW, SVD, populate, stored_runs  # noqa: F401 - stored_runs is a fixture

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("Baseline", "Baseline model"), ("Explorer", "Explorer"), ("Pareto", "Pareto fronts"),
         ("Confusion", "Confusion matrices"), ("Heatmaps", "Heatmaps"), ("Report", "Report")]
# Each page's main element, as a JavaScript condition.
MAIN = {"Baseline": "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 4",
        "Explorer": "[...document.querySelectorAll('h3')].some(h => h.textContent.includes('tau='))",
        "Pareto": "document.querySelectorAll('.js-plotly-plot').length >= 1",
        "Confusion": "document.querySelectorAll('.js-plotly-plot').length >= 6",
        "Heatmaps": "document.querySelectorAll('.js-plotly-plot').length >= 4",
        "Report": "[...document.querySelectorAll('button')].some(b => b.textContent.includes('Download HTML'))"}


def chromium() -> str:
    for candidate in (os.environ.get("HSCC_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium binary (looked for chromium, /usr/bin/chromium, chromium-browser, google-chrome); "
                "`make test` installs Debian's chromium with apt-get when it can")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(trained_workspace, stored_runs, tmp_path):  # noqa: F811 - the imported fixture
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


@contextlib.contextmanager
def streamlit_server(script: Path, env: dict, log_path: Path, start_timeout: float = 90):
    """Run ``streamlit run script`` headless on a free 127.0.0.1 port until the block ends; yields
    its URL once the health check answers (the test fails with the log's end if it never does)."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats",
             "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("streamlit did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_idle(page, timeout=60_000) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def test_every_page_in_headless_chromium(server, tmp_path, stored_runs):  # noqa: F811
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
            page.set_default_timeout(60_000)
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
            page.get_by_role("heading", name="hscc G2 K4 tau=0.95").wait_for()
            assert page.get_by_text("nothing recomputed").first.is_visible()
            thumb = page.get_by_role("slider").nth(2)  # G, K, then tau
            thumb.wait_for()
            page.screenshot(path=str(shots / "explorer.jpg"), type="jpeg", quality=70)
            thumb.focus()
            start = time.perf_counter()
            page.keyboard.press("ArrowRight")
            page.get_by_role("heading", name="hscc G2 K4 tau=0.96").wait_for()
            timings["slider"] = time.perf_counter() - start
            wait_idle(page)

            # Pareto: click the one Global SVD point; the sidebar then shows it as the selected run.
            open_page("Pareto", "Pareto fronts")
            page.locator(".js-plotly-plot").first.wait_for()
            page.screenshot(path=str(shots / "pareto.jpg"), type="jpeg", quality=70)
            svd_point = page.locator(".js-plotly-plot .scatterlayer .trace").nth(1).locator("path.point").first
            svd_point.click(force=True)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text(stored_runs[SVD]["label"], exact=True).wait_for()
            wait_idle(page)

            open_page("Confusion", "Confusion matrices")
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 6")
            page.screenshot(path=str(shots / "confusion.jpg"), type="jpeg", quality=70)

            # Heatmaps of the selected SVD run: regions, error and two Grad-CAMs (no clusters).
            open_page("Heatmaps", "Heatmaps")
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4")
            assert page.get_by_text("HSCC runs only").first.is_visible()
            page.locator("[data-testid='stSelectbox']").first.click()  # back to an HSCC run: type its key
            page.keyboard.type(stored_runs[LOW]["cache_key"][:8])
            page.get_by_role("option", name=stored_runs[LOW]["cache_key"][:8]).click()
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
            assert "plotly.js v" in html and stored_runs[LOW]["label"] in html

            # Page switches once every page has been visited (its caches warm), as a user moves around.
            for title, heading in PAGES[::-1][1:] + PAGES[1:]:
                timings[title] = open_page(title, heading)
        finally:
            context.close()
    print("\nbrowser timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    assert all((shots / f"{name.lower()}.jpg").stat().st_size > 10_000 for name, _ in PAGES)
    # Timings are reported, not asserted: in a browser they follow the machine's load (the in-process
    # budgets are asserted in tests/test_app.py); measured numbers are in docs/app-performance.md.
    assert set(timings) == {"slider", *(name for name, _ in PAGES)}
