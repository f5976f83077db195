"""Speed-up of HSCC at one budget across region grids and cluster counts (CPU, this machine).

``hscc bench --speed`` times one (G, K); this scans several, on the workspace of the environment
(default: the embedded phantom and its baseline in ``cache/``), each measured like the bench: the
original and the compressed model timed in this process, 3 warm-up and 20 timed runs per batch
size, medians.

Usage: python benchmarks/speed_scan.py [--budget 6] [--configs 1x1 2x1 2x4 4x1 4x4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from hscc_core.speedbench import speed_table
    from hscc_core.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=6.0)
    p.add_argument("--configs", nargs="+", default=["1x1", "2x1", "2x4", "4x1", "4x4"], help="GxK")
    a = p.parse_args()
    ws = Workspace.from_env()
    for cfg in a.configs:
        g, k = (int(v) for v in cfg.split("x"))
        r = speed_table(ws, methods=("hscc",), budgets=(a.budget,), hscc_grid=g, hscc_clusters=k)["rows"][0]
        lat = r["latency_ms"]
        print(f"G{g} K{k} {a.budget:g}x: speed-up b1 {r['speedup_b1']:.2f}x, b32 {r['speedup_b32']:.2f}x, "
              f"efficiency b32 {r['efficiency_b32']:.2f} (model FLOPs /{r['flops_ratio']:.2f}; b32 "
              f"{lat['original']['b32']['median']:.1f} -> {lat['compressed']['b32']['median']:.1f} ms)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
