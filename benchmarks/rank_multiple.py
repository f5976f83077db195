"""What rounding HSCC's ranks to multiples costs in accuracy and gains in time (issue 15, item 2).

``--rank-multiple M`` makes the budget allocation buy M directions of a block at a time, so every
rank is a multiple of M (or the block's size) at the same FLOPs budget. For each configuration
(cluster side, grid, clusters, budget) this script reads the stored runs of one baseline model that
differ only in their rank multiple, rebuilds their models and times them with the original,
interleaved in one process (``measure_latency``: warm-ups, then medians of ``--runs`` rounds,
every model channels-last, one thread count per invocation). Accuracy, agreement with the
original and their standard errors are the runs' own: the same test set for every multiple.

The runs come from ``hscc sweep`` (``--no-speed`` is fine: nothing stored is timed here), one sweep
per multiple. From the repository root, for the real data:

    D=../shared/data/brain-tumor-mri
    for m in 1 8 16; do
      hscc sweep --data $D --methods hscc --grid 1 2 4 8 --clusters 1 4 --cluster-sides output input \\
          --budgets 3 6 --rank-multiple $m --no-speed --json > /dev/null
    done
    OMP_NUM_THREADS=1 python benchmarks/rank_multiple.py --data $D --out rank-multiple-1thread.json
    python benchmarks/rank_multiple.py --data $D --out rank-multiple-2threads.json

It prints a Markdown table (``--markdown PATH`` also writes it) and, with ``--out``, the rows as
JSON. A configuration some multiple of which is not stored is listed as missing and skipped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from weight_bytes import workspace_parser  # noqa: E402


def group_runs(runs: list[dict], multiples, budgets, grids, clusters, sides) -> dict:
    """The runs of each configuration by rank multiple: ``{(side, grid, clusters, budget): {m: run}}``.

    Only HSCC budget runs at the defaults of everything else (greedy allocation, independent
    calibration on 256 images without mirror images, seed 0, no fine-tuning) are compared, so that
    the rank multiple is the one difference within a configuration.

    Parameters
    ----------
    runs : list of dict
        Stored runs of one dataset and baseline model.
    multiples, budgets, grids, clusters, sides : iterables
        The values to keep.
    """
    from hscc_core.runs.config import DEFAULTS, RunConfig  # noqa: PLC0415

    out: dict = {}
    for run in runs:
        if run.get("method") != "hscc" or not run.get("config"):
            continue
        cfg = RunConfig.from_canonical(run["config"])
        if (cfg.budget is None or cfg.finetune_epochs or cfg.allocation != "greedy"
                or cfg.calibration != DEFAULTS["calibration"] or cfg.calib_size != DEFAULTS["calib_size"]
                or cfg.calib_flip or cfg.seed != DEFAULTS["seed"]):
            continue
        if (cfg.rank_multiple in multiples and float(cfg.budget) in budgets and cfg.grid in grids
                and cfg.clusters in clusters and cfg.cluster_side in sides):
            key = (cfg.cluster_side, cfg.grid, cfg.clusters, float(cfg.budget))
            out.setdefault(key, {})[cfg.rank_multiple] = run
    return out


def _row(run: dict, lat: dict, name: str, base: str) -> dict:
    """One model's row: the run's accuracy figures, its FLOPs and parameters, and its timing against
    the original and against the configuration's first multiple (``base``)."""
    models = lat["models"]
    row = {"key": run["cache_key"], "label": run["label"],
           "accuracy": run["accuracy"], "accuracy_se": run.get("accuracy_se"),
           "agreement": run.get("agreement"), "agreement_se": run.get("agreement_se"),
           "flops_ratio": run["flops_ratio"], "params": run["params"]}
    for b in ("b1", "b32"):
        t = models[name][b]["median_ms"]
        row[f"{b}_ms"] = t
        row[f"speedup_{b}"] = models["original"][b]["median_ms"] / t
        row[f"time_vs_base_{b}"] = t / models[base][b]["median_ms"]
    return row


def measure(ws, groups: dict, multiples, runs: int, warmup: int, progress=print) -> list[dict]:
    """Rebuild and time every complete configuration of ``groups``; one row per (configuration,
    multiple)."""
    from hscc_core.compress import native  # noqa: PLC0415
    from hscc_core.measure.costs import measure_latency  # noqa: PLC0415
    from hscc_core.nn.grey import input_shape  # noqa: PLC0415
    from hscc_core.runs.pipeline import rebuild_model  # noqa: PLC0415

    original, _ = ws.baseline(train_if_missing=False)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0] != "output", k[3], k[1], k[2])):
        have = groups[key]
        if any(m not in have for m in multiples):
            progress(f"missing: {key} has multiples {sorted(have)}, not all of {list(multiples)}; skipped")
            continue
        side, grid, k, budget = key
        t0 = time.perf_counter()
        models = {"original": original}
        for m in multiples:
            models[f"r{m}"] = rebuild_model(ws, have[m])
        lat = measure_latency(models, input_shape(original, ws.size), runs=runs, warmup=warmup)
        base = f"r{multiples[0]}"
        for m in multiples:
            row = _row(have[m], lat, f"r{m}", base)
            row.update(side=side, grid=grid, clusters=k, budget=budget, multiple=m,
                       kernel=native.kernel_of(models[f"r{m}"]), threads=lat["threads"],
                       original_b1_ms=lat["models"]["original"]["b1"]["median_ms"],
                       original_b32_ms=lat["models"]["original"]["b32"]["median_ms"])
            rows.append(row)
        progress(f"{side} G{grid} K{k} {budget:g}x: timed in {time.perf_counter() - t0:.0f} s "
                 f"({lat['runs']} rounds, {lat['threads']} thread(s), load {os.getloadavg()[0]:.1f})")
        del models
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    lines = ["| side | G | K | budget | multiple | accuracy (SE) | agreement | model FLOPs / | params | "
             "b1 | b32 | time vs first multiple, b1 / b32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['grid']} | {r['clusters']} | {r['budget']:g}x | {r['multiple']} | "
                     f"{100 * r['accuracy']:.1f} % ({100 * r['accuracy_se']:.1f}) | {100 * r['agreement']:.1f} % | "
                     f"{r['flops_ratio']:.2f} | {r['params'] / 1e6:.1f} M | {r['speedup_b1']:.2f}x | "
                     f"{r['speedup_b32']:.2f}x | {r['time_vs_base_b1']:.2f} / {r['time_vs_base_b32']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    # The command line's list options: --grids 1 2 4, --grids "1 2 4" and --grids 1,2,4 alike.
    from hscc_core.cli.common import float_list, int_list, list_option, word_list  # noqa: PLC0415

    p = workspace_parser(__doc__.splitlines()[0])
    list_option(p, "--multiples", int_list, [1, 8, 16], "rank multiples, the first is the reference")
    list_option(p, "--budgets", float_list, [3.0, 6.0], "budgets")
    list_option(p, "--grids", int_list, [1, 2, 4, 8], "grids G")
    list_option(p, "--clusters", int_list, [1, 4], "clusters K")
    list_option(p, "--sides", word_list, ["output", "input"], "cluster sides")
    p.add_argument("--runs", type=int, default=11, help="timed rounds per batch size (default 11)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows and the machine as JSON here")
    p.add_argument("--markdown", type=Path, help="write the Markdown table here too")
    a = p.parse_args(argv)
    multiples, budgets, grids, clusters, sides = a.multiples, a.budgets, a.grids, a.clusters, a.sides
    if a.runs < 1 or a.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")

    import torch  # noqa: PLC0415

    from hscc_core.runs.selection import baseline_runs  # noqa: PLC0415
    from hscc_core.runs.workspace import Workspace  # noqa: PLC0415

    try:
        ws = Workspace(data=a.data, cache_dir=a.cache_dir, split=a.split)
        runs = baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint(), method="hscc")
    except (OSError, ValueError) as exc:  # no dataset, no baseline yet, an unreadable store
        raise SystemExit(f"rank_multiple.py: {exc}") from None
    groups = group_runs(runs, multiples, budgets, grids, clusters, sides)
    if not groups:
        raise SystemExit("no stored HSCC budget run matches; compute them with hscc sweep (see --help)")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows = measure(ws, groups, multiples, a.runs, a.warmup, progress=log)
    table = markdown(rows)
    print(table)
    if a.markdown:
        a.markdown.write_text(table + "\n")
    if a.out:
        a.out.write_text(json.dumps({
            "command": " ".join(["python", "benchmarks/rank_multiple.py", *(argv or sys.argv[1:])]),
            "threads": torch.get_num_threads(),
            "cpu": _cpu_name(), "torch": torch.__version__, "runs": a.runs, "warmup": a.warmup,
            "load_average_end": os.getloadavg(), "rows": rows}, indent=1) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
