"""Time the duplicate search and the clean split on a dataset folder (no model, no cache).

Stages, each timed in this process: discovering the files (SHA-256 of every file), decoding every
file at the input size and hashing it (``compute_signatures``: what the audit and the clean split
pay once per dataset and size, then cached), grouping (``find_groups``), the audit's report of the
groups (``duplicate_report``) and drawing the clean split (``clean_split``).

Usage: python benchmarks/duplicates_timing.py DATA [--size 224] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from hscc_core.data.duplicates import compute_signatures, duplicate_report, find_groups
    from hscc_core.data.folders import discover
    from hscc_core.data.splits import class_counts, clean_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args()
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}  # all threads: on a busy machine wall time says little

    def timed(name, fn, *args, **kw):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kw)
        seconds[name] = round(time.perf_counter() - start, 2)
        cpu_seconds[name] = round(time.process_time() - cpu, 2)
        return out

    index = timed("discover", discover, a.data)
    sigs = timed("signatures", compute_signatures, index, a.size)
    groups = timed("groups", find_groups, index, sigs)
    report = timed("report", duplicate_report, index, groups)
    clean = timed("clean_split", clean_split, index, groups, a.size, seed=a.seed)
    result = {"files": len(index.files), "size": a.size, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "official_test": class_counts(index, "test"), "clean_test": class_counts(clean, "test"),
              "clean_train": class_counts(clean, "train"), "groups": report["summary"],
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, Python {platform.python_version()}"}
    print(json.dumps(result, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
