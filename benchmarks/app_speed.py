"""Time the app on the store it is pointed at: slider to a cached result, and page switches.

Runs the app in process with Streamlit's AppTest (the same script runs a browser session
triggers, without network and drawing), on the workspace of the environment (``HSCC_DATA``,
``HSCC_CACHE_DIR``; default: the embedded phantom in ``cache/``). It needs cached HSCC runs at
G = 2, K = 4 over several energies (``hscc sweep`` makes them) and computes nothing: a slider
position without a stored run is reported and skipped.

Usage: python benchmarks/app_speed.py [--grid 2] [--clusters 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGES = ["views/overview.py", "views/explorer.py", "views/pareto.py", "views/confusion.py",
         "views/heatmaps.py", "views/report.py"]


def main() -> int:
    from streamlit.testing.v1 import AppTest

    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import run_key
    from hscc_core.runs.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--clusters", type=int, default=4)
    a = p.parse_args()
    ws = Workspace.from_env()
    meta = ws.baseline(train_if_missing=False)[1]
    runs = ws.store.list_runs()
    energies = sorted(r["config"]["energy"] for r in runs
                      if r["method"] == "hscc" and r["config"].get("energy") is not None
                      and r["config"]["grid"] == a.grid and r["config"]["clusters"] == a.clusters
                      and r["config"].get("cluster_side", "output") == "output"
                      and not r["config"].get("finetune_epochs")
                      and r.get("model_fingerprint") == meta["fingerprint"])
    if len(energies) < 2:
        print(f"need cached runs at G={a.grid}, K={a.clusters} over two or more energies", file=sys.stderr)
        return 2
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/explorer.py").run()
    at.slider(key="explorer_grid").set_value(a.grid)
    at.slider(key="explorer_clusters").set_value(a.clusters)
    at.checkbox(key="explorer_measure").uncheck()
    at.select_slider(key="explorer_energy").set_value(energies[0]).run()
    slider = []
    for e in energies[1:] + energies[:1]:
        t = time.perf_counter()
        at.select_slider(key="explorer_energy").set_value(e).run()
        slider.append(time.perf_counter() - t)
        shown = [s.value for s in at.subheader]
        expected = RunConfig(grid=a.grid, clusters=a.clusters, energy=e).label()
        assert not at.exception and expected in shown, (expected, shown, at.exception)
        assert ws.store.has_run(run_key(ws, meta, RunConfig(grid=a.grid, clusters=a.clusters, energy=e)))
    for page in PAGES[2:] + PAGES[:2]:  # first visits fill the per-page caches
        at.switch_page(page).run()
    switch: dict[str, float] = {}
    for _ in range(3):
        for page in PAGES[2:] + PAGES[:2]:
            t = time.perf_counter()
            at.switch_page(page).run()
            assert not at.exception, at.exception
            switch.setdefault(page, []).append(time.perf_counter() - t)
    print(f"{len(runs)} runs in the store; slider over {len(slider)} cached energies at G={a.grid}, "
          f"K={a.clusters}: median {statistics.median(slider):.3f} s, max {max(slider):.3f} s")
    print("page switch (median of 3 tours after a first visit): "
          + ", ".join(f"{Path(p).stem} {statistics.median(v):.3f} s" for p, v in switch.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
