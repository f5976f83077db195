"""``hscc heatmap --run KEY --layer NAME``: the per-region data the Heatmaps page draws."""

from __future__ import annotations

from hscc_core.cli.common import add_common, add_run_option, emit, workspace_from
from hscc_core.present.heatmaps import heatmap_data
from hscc_core.runs.selection import resolve_run

__all__ = ["register"]


def register(sub) -> dict:
    """Add ``heatmap``; returns name -> handler."""
    p = sub.add_parser("heatmap", help="per-region ranks and MACs of one layer of a stored run",
                       description="Print what the app's Heatmaps page draws for one compressed layer of a "
                                   "stored run: per region the rank kept and the original's, the MACs "
                                   "computed and the original's, and the cluster label map.")
    add_common(p)
    add_run_option(p)
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="a compressed layer, e.g. features.3 (default: the run's first compressed layer)")
    return {"heatmap": cmd_heatmap}


def cmd_heatmap(args) -> int:
    ws = workspace_from(args)
    run = resolve_run(ws, args.run)
    layer = args.layer or next(iter(run.get("layers") or {}), None)
    if layer is None:
        raise ValueError(f"run {run['cache_key']} has no compressed layer")
    data = heatmap_data(run, layer, ws.store.get_arrays(run["cache_key"]))
    lines = [f"{run.get('label', run['cache_key'])} · {layer} ({data['kind']}"
             + (f", {data['cluster_side']} side" if data["cluster_side"] else "") + ")",
             f"{'row':>3} {'col':>3}  {'rank kept':>12}  {'MACs':>12}  {'of original':>12}  kept"]
    for r in data["regions"]:
        lines.append(f"{r['row']:>3} {r['col']:>3}  {r['rank_kept']:>5} / {r['rank_dense']:<5}  {r['macs']:>12,}  "
                     f"{r['macs_dense']:>12,}  {100 * r['macs'] / max(r['macs_dense'], 1):5.1f} %")
    lines.append(f"layer: {data['macs']:,} of {data['macs_dense']:,} MACs ({100 * data['kept_fraction']:.1f} % kept)")
    emit(args, data, "\n".join(lines))
    return 0
