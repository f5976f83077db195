"""The front a search finds in N trials against the full grid sweep's front: hypervolume.

Reads the JSON of ``hscc sweep --json`` and of ``hscc search --json`` (both print ``runs``), keeps
the HSCC runs without fine-tuning, and measures each set's Pareto front on two axes (default:
whole-model FLOPs, minimised, against accuracy, maximised) by its hypervolume up to one shared
reference point, the worst value of each axis over both sets together
(:func:`hscc_core.runs.hypervolume.reference_point`). Also the search's hypervolume after its first
k trials, and which points of each front the other front dominates. Prints Markdown (what
docs/dashboard.md records) and, with ``--out``, the numbers as JSON.

Usage:

    hscc sweep --data D --methods hscc --grid 1 2 4 8 --clusters 1 2 4 8 16 \\
        --energy 0.5 0.7 0.8 0.9 0.95 0.99 --no-speed --json > sweep.json
    hscc search --data D --trials 30 --seed 0 --no-speed --json > search.json
    python benchmarks/search_vs_grid.py --sweep sweep.json --search search.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hscc_core.runs.config import run_name  # noqa: E402
from hscc_core.runs.hypervolume import front_hypervolume, reference_point  # noqa: E402
from hscc_core.runs.pareto import axis_value, get_axis, pareto_front  # noqa: E402


def _runs(path: Path) -> tuple[list[dict], list[str]]:
    """The HSCC runs without fine-tuning of one JSON, and the cache keys of its trials in order (a
    search's ``trials``; a sweep has none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path} as the JSON of hscc sweep/search: {exc}") from None
    runs = [r for r in data.get("runs", []) if r.get("method") == "hscc"
            and not int((r.get("config") or {}).get("finetune_epochs") or 0)]
    return runs, [t.get("cache_key") for t in data.get("trials", [])]


def _front(runs: list[dict], x: str, y: str) -> list[dict]:
    if not runs:
        return []
    pts = np.array([[axis_value(r, x), axis_value(r, y)] for r in runs], dtype=float)
    keep = pareto_front(pts, minimise_x=get_axis(x).direction == "min", maximise_y=get_axis(y).direction == "max")
    return [runs[i] for i in keep]  # indices, ordered by x


def _dominated(run: dict, others: list[dict], x: str, y: str) -> bool:
    """Whether some run of ``others`` is at least as good on both axes and better on one."""
    sx = 1 if get_axis(x).direction == "min" else -1
    sy = 1 if get_axis(y).direction == "min" else -1
    a = (sx * axis_value(run, x), sy * axis_value(run, y))
    for o in others:
        b = (sx * axis_value(o, x), sy * axis_value(o, y))
        if b[0] <= a[0] and b[1] <= a[1] and b != a:
            return True
    return False


def compare(sweep: list[dict], search: list[dict], x: str, y: str, trials: list[str] = (),
            checkpoints=(5, 10, 20)) -> dict:
    """Hypervolumes of both fronts (and of the runs of the search's first k ``trials``, cache keys in
    trial order) up to one reference."""
    ref = reference_point(sweep + search, x, y)
    out = {"x": x, "y": y, "reference": list(ref), "sweep_runs": len(sweep), "search_runs": len(search),
           "sweep_hv": front_hypervolume(sweep, x, y, ref), "search_hv": front_hypervolume(search, x, y, ref),
           "union_hv": front_hypervolume(sweep + search, x, y, ref), "search_after": {}}
    by_key = {r["cache_key"]: r for r in search}
    for k in checkpoints:
        if k < len(trials):
            first = [by_key[c] for c in dict.fromkeys(trials[:k]) if c in by_key]
            out["search_after"][k] = front_hypervolume(first, x, y, ref)
    out["search_trials"] = len(trials)
    def point(r: dict, others: list[dict]) -> dict:
        return {"cache_key": r.get("cache_key"), "label": run_name(r), "x": axis_value(r, x),
                "y": axis_value(r, y), "dominated": _dominated(r, others, x, y)}

    out["sweep_front"] = [point(r, search) for r in _front(sweep, x, y)]  # dominated: by a search run
    out["search_front"] = [point(r, sweep) for r in _front(search, x, y)]  # dominated: by a sweep run
    return out


def markdown(res: dict) -> str:
    x, y = res["x"], res["y"]
    sw, se = res["sweep_hv"], res["search_hv"]
    lines = [f"Axes: {get_axis(x).label} ({get_axis(x).direction}) against {get_axis(y).label} "
             f"({get_axis(y).direction}); reference point {res['reference'][0]:.4g}, {res['reference'][1]:.4g}.", "",
             "| run set | runs | hypervolume | share of the sweep's |", "| --- | --- | --- | --- |",
             f"| grid sweep | {res['sweep_runs']} | {sw:.4g} | 100 % |"]
    for k, hv in res["search_after"].items():
        lines.append(f"| search, first {k} trials | {k} | {hv:.4g} | {100 * hv / sw:.1f} % |")
    lines += [f"| search, all {res['search_trials']} trials | {res['search_runs']} | {se:.4g} | "
              f"{100 * se / sw:.1f} % |",
              f"| both together | {res['sweep_runs'] + res['search_runs']} | {res['union_hv']:.4g} | "
              f"{100 * res['union_hv'] / sw:.1f} % |", ""]
    for name, key, other in (("sweep", "sweep_front", "search"), ("search", "search_front", "sweep")):
        lines.append(f"Front of the {name} ({len(res[key])} runs; * = dominated by a run of the {other}): "
                     + "; ".join(f"{p['label']} ({p['x'] / 1e9:.3f} G, {100 * p['y']:.2f} %)"
                                 + (" *" if p["dominated"] else "") for p in res[key]) + ".")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, required=True, help="hscc sweep --json output")
    p.add_argument("--search", type=Path, required=True, help="hscc search --json output")
    p.add_argument("--x", default="flops")
    p.add_argument("--y", default="accuracy")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    sweep, _ = _runs(a.sweep)
    search, trials = _runs(a.search)
    res = compare(sweep, search, a.x, a.y, trials)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
