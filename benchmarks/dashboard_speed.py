"""Time the runs dashboard on 10,000 stored runs: table, parallel coordinates, Pareto data, importance.

Builds a throw-away workspace (a tiny generated dataset and tiny model, trained in seconds), computes
one real run, and stores N copies of a real AlexNet run from docs/results.json (the size of JSON a
real sweep stores) under the cache keys of N distinct HSCC configurations, with varied metrics (as
docs/app-performance.md does). Then it times, server side, in this process:

* building the runs table: from the run dicts, and from the store (the on-disk table cache:
  first build, which lists every run, then a warm read as a fresh process does it); the run
  summaries (runs without per-layer detail) from the same cache, as the Pareto page reads them;
* the parallel-coordinates figure, built and serialised to JSON (what ``st.plotly_chart`` sends);
* the Pareto data: the front marks of the table, and ``front_runs`` over the run dicts;
* setting importance (fANOVA as Optuna computes it, and permutation importance);
* the Pareto page's typed columns from the store (their on-disk blob's first build, which decodes
  every summary once, then a warm read as a fresh process does it);
* AppTest script runs of the Runs page (first visit in a process, rerun, importance switched on
  and its rerun) and of the Pareto page (first visit, rerun, and the visit after one new run is
  stored, which is removed again afterwards).

Usage: python benchmarks/dashboard_speed.py [--runs 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn, repeat: int = 3):
    """(median seconds, last result) over ``repeat`` calls."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def populate(ws, n: int) -> None:
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import compress_run, run_key

    meta = ws.baseline()[1]
    real, _ = compress_run(ws, RunConfig(grid=2, clusters=2, energy=0.9), measure_speed=False)
    arrays = ws.store.get_arrays(real["cache_key"])
    template = json.loads((ROOT / "docs" / "results.json").read_text())["rows"][0]
    template = {k: v for k, v in template.items() if k not in ("cache_key", "cached")}
    # The real run's version: listings show only runs of the current pipeline.
    template.update(data_fingerprint=real["data_fingerprint"], model_fingerprint=real["model_fingerprint"],
                    version=real["version"], classes=real["classes"], per_class={c: v for c, v in zip(real["classes"],
                                                                              template["per_class"].values())})
    rng = np.random.default_rng(0)
    energies = np.round(np.linspace(0.5, 0.999, 100), 4)
    # Grids 1-4 (the tiny model's smallest compressed map is 4 x 4), K 1-13, 100 energies, both sides.
    shapes = itertools.product(range(1, 5), range(1, 14), energies, ("output", "input"))
    start = time.perf_counter()
    for i, (g, k, e, side) in enumerate(itertools.islice(shapes, n)):
        cfg = RunConfig(grid=g, clusters=k, energy=float(e), cluster_side=side)
        if ws.store.has_run(run_key(ws, meta, cfg)):
            continue  # a store being topped up (--keep)
        run = dict(template, config=cfg.canonical(), label=cfg.label(), cluster_side=side,
                   accuracy=float(0.3 + 0.6 * e - 0.01 * g + rng.normal(0, 0.02)),
                   flops=int(template["flops_original"] * (0.2 + 0.7 * e) * (1 + 0.02 * k)),
                   agreement=float(rng.uniform(0.5, 1.0)), params=int(template["params"] * (1 + 0.05 * g)))
        ws.store.put_run(run_key(ws, meta, cfg), run, arrays)
        if (i + 1) % 1000 == 0:
            print(f"  stored {i + 1} runs ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--keep", type=Path, default=None, help="workspace folder to create or reuse")
    a = p.parse_args()

    from conftest import make_imagefolder, tiny_env
    from hscc_core.measure.machine import machine_description
    from hscc_core.present.dashboard import constraints_for, parcoords_figure
    from hscc_core.present.plots import PARETO_COLUMNS, pareto_columns
    from hscc_core.runs.importance import setting_importance
    from hscc_core.runs.pareto import front_runs
    from hscc_core.runs.table import mark_pareto, runs_table
    from hscc_core.runs.table_cache import stored_run_columns, stored_run_summaries, stored_runs_table
    from hscc_core.runs.workspace import Workspace

    root = a.keep or Path(tempfile.mkdtemp(prefix="hscc-dash-"))
    data = root / "mri"
    if not data.exists():
        make_imagefolder(data, n_train=16, n_test=6)
    env = tiny_env(data, root / "cache")
    ws = Workspace.from_env(env=env)
    ws.baseline()
    have = len(ws.store.keys())
    if have < a.runs:
        print(f"storing {a.runs} runs in {root} ...", file=sys.stderr)
        populate(ws, a.runs)
    data_fp, model_fp = ws.index().fingerprint, ws.baseline()[1]["fingerprint"]

    def listing():
        return [r for r in ws.store.list_runs(data_fingerprint=data_fp)
                if r.get("method") != "original" and r.get("model_fingerprint") == model_fp]

    rows = {}
    rows["list the store (every run.json read and verified)"], runs = timed(listing, 1)
    n = len(runs)
    rows["runs table from the run dicts"], table = timed(lambda: runs_table(runs))
    classes = runs[0]["classes"]
    import shutil  # noqa: PLC0415

    shutil.rmtree(ws.store.blobs_dir / "tables", ignore_errors=True)
    rows["runs table from the store, first build of its cache"], _ = timed(
        lambda: stored_runs_table(ws.store, classes, data_fp, model_fp), 1)
    rows["runs table from the store, cache warm"], cached = timed(
        lambda: stored_runs_table(ws.store, classes, data_fp, model_fp))
    assert len(cached) == n
    rows["run summaries from the store, cache warm (Pareto page, pickers)"], summaries = timed(
        lambda: stored_run_summaries(ws.store, classes, data_fp, model_fp))
    assert len(summaries) == n

    def pareto_columns_of_store():
        return stored_run_columns(ws.store, classes, PARETO_COLUMNS, lambda r: pareto_columns(r, classes),
                                  data_fp, model_fp)

    rows["Pareto columns from the store, first build of their blob"], _ = timed(pareto_columns_of_store, 1)
    rows["Pareto columns from the store, cache warm (Pareto page)"], points = timed(pareto_columns_of_store)
    assert len(points) == n
    cons = constraints_for(table, {"accuracy": (0.5, 0.9)}, {"cluster_side": ["output"]})
    rows["parallel coordinates (build + JSON)"], _ = timed(
        lambda: parcoords_figure(table, constraints=cons).to_json())
    rows["Pareto marks of the table"], _ = timed(lambda: mark_pareto(table, "flops", "accuracy"))
    rows["front_runs over the run dicts"], _ = timed(lambda: front_runs(runs, "flops", "accuracy"))
    for method in ("fanova", "permutation"):
        rows[f"importance, {method}"], res = timed(lambda: setting_importance(table, "accuracy", method), 1)
        print(f"  {method}: {res.n_used} of {res.n_runs} runs, {dict(list(res.importances.items())[:3])}",
              file=sys.stderr)

    import os  # noqa: PLC0415

    from streamlit.testing.v1 import AppTest  # noqa: PLC0415

    os.environ.update(env)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    t = time.perf_counter()
    at.switch_page("views/runs.py").run()
    rows["Runs page, first visit (AppTest)"] = time.perf_counter() - t
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == n, (len(at.dataframe[0].value), n)
    rows["Runs page, rerun (AppTest)"], _ = timed(lambda: at.run())
    t = time.perf_counter()
    at.toggle(key="runs_imp_on").set_value(True).run()
    rows["Runs page, importance switched on (AppTest)"] = time.perf_counter() - t
    assert not at.exception, at.exception
    rows["Runs page, rerun with importance shown (AppTest)"], _ = timed(lambda: at.run())
    t = time.perf_counter()
    at.switch_page("views/pareto.py").run()
    rows["Pareto page, first visit (AppTest)"] = time.perf_counter() - t
    assert not at.exception, at.exception
    rows["Pareto page, rerun (AppTest)"], _ = timed(lambda: at.run())
    assert not at.exception, at.exception
    # One more run (a copy of a stored one under a new key), as a finished computation adds it; removed after.
    new_key = "f" * 24
    body = {k: v for k, v in ws.store.get_run(runs[0]["cache_key"]).items() if k != "cache_key"}
    ws.store.put_run(new_key, dict(body, accuracy=0.5), ws.store.get_arrays(runs[0]["cache_key"]))
    try:
        t = time.perf_counter()
        at.run()
        rows["Pareto page, visit after one new run is stored (AppTest)"] = time.perf_counter() - t
        assert not at.exception, at.exception
        assert f"{n + 1} of {n + 1} stored runs drawn" in " ".join(c.value for c in at.caption), "new run not drawn"
    finally:
        ws.store.prune([new_key])
    print(f"{n} runs; {machine_description()}")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
