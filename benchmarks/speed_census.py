"""Every timed run of a workspace against the original: speed-ups grouped by method, grid and
cluster side, and each run slower than the original at either batch size, with its FLOPs ratio
and parameters (why it is slower is usually one of the two).

The runs' own timings are read (``latency_ms``, ``speedup``: each a ratio measured interleaved with
the original in one process when the run was computed or timed by ``hscc runs --time``); nothing
is timed here. Run it after ``hscc runs --time`` to cover a sweep computed with ``--no-speed``.

Usage (the real data's workspace, from the repository root):

    python benchmarks/speed_census.py --data ../shared/data/brain-tumor-mri [--split clean] [--json]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from weight_bytes import workspace_parser  # noqa: E402


def group_of(run: dict) -> str:
    """``hscc G4 output``, ``svd``, ...: what a run's speed depends on most, besides its budget."""
    if run["method"] != "hscc":
        return run["method"]
    cfg = run["config"]
    return f"hscc G{cfg.get('grid')} {cfg.get('cluster_side', 'output')}"


def census(runs: list[dict]) -> dict:
    """Per group: runs, speed-up ranges and how many are below 1 at each batch size; the slower runs.

    Parameters
    ----------
    runs : list of dict
        Stored compression runs; those without a timing are counted apart (``untimed``).
    """
    timed = [r for r in runs if r.get("speedup") and r["method"] != "original"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in timed:
        groups[group_of(r)].append(r)

    def span(rs, key):
        vals = [r[key] if key == "flops_ratio" else r["speedup"][key] for r in rs]
        return [round(min(vals), 2), round(max(vals), 2)]

    rows = [{"group": g, "runs": len(rs), "b1": span(rs, "b1"), "b32": span(rs, "b32"),
             "slower_b1": sum(r["speedup"]["b1"] < 1 for r in rs), "slower_b32": sum(r["speedup"]["b32"] < 1 for r in rs),
             "flops_ratio": span(rs, "flops_ratio")} for g, rs in sorted(groups.items())]
    slower = [{"label": r["label"], "key": r["cache_key"], "b1": round(r["speedup"]["b1"], 3),
               "b32": round(r["speedup"]["b32"], 3), "flops_ratio": round(r["flops_ratio"], 2),
               "params_m": round(r["params"] / 1e6, 1), "params_original_m": round(r["params_original"] / 1e6, 1)}
              for r in sorted(timed, key=lambda r: min(r["speedup"].values()))
              if min(r["speedup"]["b1"], r["speedup"]["b32"]) < 1]
    machine = sorted({(r["latency_ms"].get("device"), r["latency_ms"].get("threads")) for r in timed}, key=str)
    return {"timed": len(timed), "untimed": len(runs) - len(timed), "groups": rows, "slower": slower,
            "timed_on": [{"device": d, "threads": t} for d, t in machine]}


def markdown(result: dict) -> str:
    """The census as two Markdown tables."""
    lines = ["| runs | count | speed-up b1 | slower at b1 | speed-up b32 | slower at b32 | model FLOPs / |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in result["groups"]:
        lines.append(f"| {g['group']} | {g['runs']} | {g['b1'][0]:.2f}-{g['b1'][1]:.2f}x | {g['slower_b1']} | "
                     f"{g['b32'][0]:.2f}-{g['b32'][1]:.2f}x | {g['slower_b32']} | "
                     f"{g['flops_ratio'][0]:.2f}-{g['flops_ratio'][1]:.2f} |")
    lines += ["", "| run slower than the original | b1 | b32 | model FLOPs / | params (original) |",
              "| --- | --- | --- | --- | --- |"]
    for s in result["slower"]:
        # Three decimals: a run at 0.998x is slower, and two would print it as 1.00x.
        lines.append(f"| {s['label']} | {s['b1']:.3f}x | {s['b32']:.3f}x | {s['flops_ratio']:.2f} | "
                     f"{s['params_m']:.1f} M ({s['params_original_m']:.1f} M) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = workspace_parser(__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the census as JSON instead of Markdown")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hscc_core.runs.selection import baseline_runs
    from hscc_core.runs.workspace import Workspace

    ws = Workspace(data=a.data, cache_dir=a.cache_dir, split=a.split)
    result = census(baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint()))
    print(json.dumps(result, indent=1) if a.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
