"""Screenshots of every page of the app, as a user opens them, for docs/screenshots/.

Starts ``streamlit run app.py`` on a free localhost port over the given data folder and run store,
opens each page in headless Chromium with the chosen run selected through its ``?run=`` link,
waits until the script has finished, and saves the first screen of the page (what a user sees
before scrolling). The Compare page gets the runs of ``--compare`` picked in its box, as a user
picks them. Nothing is computed that the store does not hold: the pages read stored runs.

Usage (the real data's workspace, from the repository root):

    python benchmarks/screenshots.py --data ../shared/data/brain-tumor-mri --cache-dir cache \\
        --run KEY --compare KEY1 KEY2 --out docs/screenshots

Needs Playwright (installed by ``make setup``) and a Chromium binary (``HSCC_CHROMIUM``, else
``chromium`` on the PATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("", "explorer", "pareto", "runs", "compare", "confusion", "heatmaps", "report", "demo")
NAMES = {"": "baseline"}  # file stem of each page (the Baseline page is the app's root)


def _chromium() -> str:
    for candidate in (os.environ.get("HSCC_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("no Chromium binary found (set HSCC_CHROMIUM)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the embedded phantom)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    p.add_argument("--run", default=None, help="cache key of the run every page shows")
    p.add_argument("--compare", nargs="+", default=[], help="cache keys the Compare page shows (2 to 4)")
    p.add_argument("--pages", nargs="+", default=list(PAGES), help="page paths ('' is the Baseline page)")
    p.add_argument("--size", type=_size, default=(1440, 900), help="window, WIDTHxHEIGHT (default 1440x900)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=int, default=82, help="JPEG quality")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for a page")
    return p


def _idle(page, timeout_ms: float) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone) and the
    charts have drawn."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    time.sleep(3)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def _pick_compare(page, labels: list[str], timeout_ms: float) -> None:
    box = page.locator('[data-testid="stMain"]').get_by_role("combobox").first
    for label in labels:
        box.click()
        page.keyboard.type(label)  # the list draws only the options in view: filter it to this one
        page.get_by_role("option").filter(has_text=label).first.click()
        _idle(page, timeout_ms)
    page.keyboard.press("Escape")
    page.locator("h1").first.click()  # close the option list and let it fade out
    page.mouse.move(0, 0)  # no hover effects (the heading's link icon) in the picture
    time.sleep(1.5)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    from playwright.sync_api import sync_playwright

    from hscc_core.runs.config import run_name
    from hscc_core.runs.workspace import Workspace

    ws = Workspace(data=a.data, cache_dir=a.cache_dir)
    names = {}
    for key in [k for k in [a.run, *a.compare] if k]:
        try:
            run = ws.store.get_run(key)
        except ValueError as exc:  # not a cache key at all
            raise SystemExit(f"--run/--compare: {exc}") from None
        if run is None:
            raise SystemExit(f"no stored run {key!r} in {a.cache_dir} for this data")
        names[key] = run_name(run)
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HSCC_CACHE_DIR=str(a.cache_dir.resolve()), PYTHONPATH=str(ROOT),
               HSCC_DATA=str(a.data.resolve()) if a.data else "")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    timeout_ms = 1000 * a.timeout
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--server.port", str(port),
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=_chromium(), headless=True,
                                            args=["--headless", "--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": a.size[0], "height": a.size[1]})
                page.set_default_timeout(timeout_ms)
                for stem in a.pages:
                    link = f"{url}/{stem}" + (f"?run={a.run}" if a.run else "")
                    page.goto(link)
                    page.locator("h1").first.wait_for()
                    _idle(page, timeout_ms)
                    if stem == "compare" and a.compare:
                        _pick_compare(page, [names[k] for k in a.compare], timeout_ms)
                        page.evaluate("() => { const m = document.querySelector('[data-testid=stMain]'); "
                                      "if (m) m.scrollTop = 0; }")
                    path = a.out / f"{NAMES.get(stem, stem)}.jpg"
                    page.screenshot(path=str(path), type="jpeg", quality=a.quality)
                    print(f"{path} ({path.stat().st_size // 1024} KB)", flush=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
