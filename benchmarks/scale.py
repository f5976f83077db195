"""Scale benchmarks of the run store and the Pareto front: 10,000 runs and 10,000 points.

Timings, not tests (the test suite asserts behaviour only; these machines are shared): the best of
three listings of a store holding ``--runs`` entries, and the best of three Pareto fronts of as many
random points. Usage: ``python benchmarks/scale.py [--runs 10000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hscc_core.runs.pareto import pareto_front  # noqa: E402
from hscc_core.runs.store import RunStore, cache_key  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="hscc-scale-", dir=shm))
    try:
        store = RunStore(root)
        arrays = {"predictions": np.zeros(4, dtype=np.int64)}
        write_start = time.perf_counter()
        for i in range(a.runs):
            run = {"method": "hscc" if i % 2 else "svd", "config": {"seed": i}, "data_fingerprint": "d0",
                   "accuracy": (i % 97) / 97, "flops": 1e9 + i}
            store.put_run(cache_key("run", {"i": i}), run, arrays)
        write = time.perf_counter() - write_start
        listing = best_of(store.list_runs)
        points = np.random.default_rng(2).integers(0, 300, size=(a.runs, 2)).astype(float)
        front = best_of(lambda: pareto_front(points))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"runs": a.runs, "write_s": write, "list_runs_s": listing, "pareto_front_s": front,
           "folder": "memory (/dev/shm)" if shm else "disk"}
    print(json.dumps(out) if a.json else
          f"{a.runs} runs: written in {write:.1f} s, listed in {listing:.2f} s; Pareto front of {a.runs} "
          f"points in {front * 1000:.1f} ms ({out['folder']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
