"""Speed-up of HSCC at one budget across region grids and cluster counts (CPU, this machine).

``hscc bench --speed`` times one (G, K); this scans several, on the workspace of the environment
(default: the embedded phantom and its baseline in ``cache/``), each measured like the bench: the
original and the compressed model timed in this process, 3 warm-up and 20 timed runs per batch
size, medians.

Usage: python benchmarks/speed_scan.py [--budget 6] [--configs 1x1 2x1 2x4 4x1 4x4] [--devices cpu cuda]
       [--allocation uniform|greedy] [--json rows.json]

On a GPU each row also gives the speed-up with both models replayed from CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from hscc_core.runs.speed import speed_table
    from hscc_core.runs.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=6.0)
    p.add_argument("--configs", nargs="+", default=["1x1", "2x1", "2x4", "4x1", "4x4"], help="GxK")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--allocation", choices=("uniform", "greedy"), default="uniform")
    p.add_argument("--json", type=Path, default=None, help="also write every row here")
    a = p.parse_args()
    ws = Workspace.from_env()
    rows = []
    for cfg in a.configs:
        g, k = (int(v) for v in cfg.split("x"))
        table = speed_table(ws, methods=("hscc",), budgets=(a.budget,), hscc_grid=g, hscc_clusters=k,
                            hscc_allocation=a.allocation, devices=a.devices)
        for r in table["rows"]:
            lat = r["latency_ms"]
            graph = (f"; CUDA graphs b1 {r['speedup_graph_b1']:.2f}x b32 {r['speedup_graph_b32']:.2f}x"
                     if "speedup_graph_b32" in r else "")
            print(f"G{g} K{k} {a.allocation} {a.budget:g}x on {r['device']}: speed-up b1 {r['speedup_b1']:.2f}x, "
                  f"b32 {r['speedup_b32']:.2f}x, efficiency b32 {r['efficiency_b32']:.2f} (model FLOPs "
                  f"/{r['flops_ratio']:.2f}; b32 {lat['original']['b32']['median']:.2f} -> "
                  f"{lat['compressed']['b32']['median']:.2f} ms){graph}", flush=True)
            rows.append(dict(r, grid=g, clusters=k, allocation=a.allocation, machine=table["machine"]))
        if a.json is not None:  # after every config, so a cut run keeps what it measured
            a.json.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
