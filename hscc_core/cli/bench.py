"""``hscc bench``: the paper-style table (every method at 3x and 6x, the ablation ladder) and ``--speed``."""

from __future__ import annotations

import argparse
import shlex
import sys

from hscc_core.cli.common import (add_common, emit, float_list, list_option, log, run_summary, word_list,
                                  workspace_with_baseline)
from hscc_core.compress.methods import get_method
from hscc_core.cli.compress import check_runs, check_workers, run_options, run_settings, stored_runs
from hscc_core.measure.machine import machine_description
from hscc_core.runs.config import ALLOCATIONS, CLUSTER_SIDES, DEFAULTS, METHOD_NAMES, RunConfig
from hscc_core.runs.executors import make_executor
from hscc_core.runs.pipeline import original_run
from hscc_core.runs.speed import speed_table
from hscc_core.runs.sweeps import run_sweep

__all__ = ["bench_configs", "register"]


def register(sub) -> dict:
    """Add ``bench``; returns name -> handler."""
    p = sub.add_parser("bench", help="the paper-style table: methods at 3x and 6x, ablation ladder")
    add_common(p)
    list_option(p, "--budgets", float_list, [3.0, 6.0], "budgets, e.g. --budgets 3 6")
    list_option(p, "--allocations", word_list, ["uniform"],
                "allocation rules of the table's rows, each applied to every method alike (like for like), "
                "e.g. --allocations uniform greedy sensitivity (default: uniform, the paper's rule)")
    p.add_argument("--bench-grid", type=int, default=4, help="HSCC grid for the table (default 4)")
    p.add_argument("--bench-clusters", type=int, default=4, help="HSCC clusters for the table (default 4)")
    p.add_argument("--finetune-epochs", type=int, default=2,
                   help="epochs of the fine-tuned rows (0: no fine-tuned rows)")
    p.add_argument("--speed", action="store_true", help="only the speed table (original vs methods)")
    p.add_argument("--no-sweep", action="store_true", help="leave the stored sweep out of the JSON")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes for the table's runs (more than 1 needs --no-speed)")
    run_options(p)
    return {"bench": cmd_bench}


def bench_configs(budgets, grid: int, clusters: int, finetune_epochs: int, calib_size, seed: int,
                  allocations=("uniform",), calibration: str | None = None, calib_flip: bool = DEFAULTS["calib_flip"],
                  rank_multiple: int = DEFAULTS["rank_multiple"]):
    """(rows, ablation) configurations of the paper-style table.

    Rows: every method at every budget, without and (when ``finetune_epochs``) with fine-tuning,
    under each rule of ``allocations`` applied to every method alike (default: the paper's rule, one
    energy threshold per method found by bisection), HSCC with ``calibration``. Ablation ladder
    (DESIGN 3.8) at the largest budget, with the paper's rule: weight-only Global SVD; data-aware
    global (G = 1, K = 1); regions only (G > 1, K = 1); clusters only (G = 1, K > 1); full HSCC; then
    HSCC+ (DESIGN 3.9): cluster side x rank allocation. Every HSCC run takes ``calibration`` and
    ``rank_multiple``.
    """
    for rule in allocations:
        if rule not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {rule!r}")
    common = {"calib_size": calib_size, "seed": seed, "energy": None, "allocation": "uniform",
              "calib_flip": calib_flip}

    def hscc_only(method):
        return {"calibration": calibration, "rank_multiple": rank_multiple} if get_method(method).data_aware else {}

    rows = [RunConfig(method=m, grid=grid, clusters=clusters, budget=b, finetune_epochs=ft,
                      **{**common, "allocation": rule}, **hscc_only(m))
            for rule in allocations for b in budgets for ft in ([0, finetune_epochs] if finetune_epochs else [0])
            for m in METHOD_NAMES]
    top = max(budgets)
    hscc = {**common, **hscc_only("hscc")}
    ablation = [("weight-only Global SVD", RunConfig(method="svd", budget=top, **common)),
                ("data-aware global (G=1, K=1)", RunConfig(method="hscc", grid=1, clusters=1, budget=top, **hscc)),
                (f"regions only (G={grid}, K=1)", RunConfig(method="hscc", grid=grid, clusters=1, budget=top, **hscc)),
                (f"clusters only (G=1, K={clusters})",
                 RunConfig(method="hscc", grid=1, clusters=clusters, budget=top, **hscc)),
                (f"full HSCC (G={grid}, K={clusters})",
                 RunConfig(method="hscc", grid=grid, clusters=clusters, budget=top, **hscc))]
    for side in CLUSTER_SIDES:
        for alloc in ("uniform", "greedy"):
            if (side, alloc) != ("output", "uniform"):
                ablation.append((f"HSCC+ {side} side, {alloc} (G={grid}, K={clusters})",
                                 RunConfig(method="hscc", grid=grid, clusters=clusters, budget=top, cluster_side=side,
                                           **{**hscc, "allocation": alloc})))
    return rows, ablation


def _speed(args, ws, command: str) -> int:
    if len(args.allocations) != 1:
        raise ValueError("--speed times one allocation rule: give one to --allocations")
    table = speed_table(ws, budgets=tuple(args.budgets), hscc_grid=args.bench_grid,
                        hscc_clusters=args.bench_clusters, hscc_allocation=args.allocations[0],
                        runs=args.latency_runs, settings=run_settings(args))
    human = "\n".join(f"{r['method']:7s} {r['budget']:>4g}x  conv FLOPs /{r['layer_flops_ratio']:.2f}  "
                      f"model FLOPs /{r['flops_ratio']:.2f}  speed-up b1 {r['speedup_b1']:.2f}x  "
                      f"b32 {r['speedup_b32']:.2f}x  ({r['device']})"
                      + (f"; CUDA graphs b1 {r['speedup_graph_b1']:.2f}x b32 {r['speedup_graph_b32']:.2f}x"
                         if "speedup_graph_b32" in r else "") for r in table["rows"])
    emit(args, dict(table, machine=machine_description(), command=command), human)
    return 0


def cmd_bench(args) -> int:
    check_runs(args)
    check_workers(args)  # also with --speed, which runs no table (--workers 0 ran it)
    command = "hscc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "hscc bench"
    ws = workspace_with_baseline(args)
    if args.speed:
        return _speed(args, ws, command)
    original, _, _ = original_run(ws)
    rows_cfg, ablation_cfg = bench_configs(args.budgets, args.bench_grid, args.bench_clusters,
                                           args.finetune_epochs, args.calib_size, args.seed, args.allocations,
                                           args.calibration, args.calib_flip, args.rank_multiple)
    configs = rows_cfg + [c for _, c in ablation_cfg]
    result = run_sweep(ws, configs, make_executor("local", args.workers), measure_speed=not args.no_speed,
                       latency_runs=args.latency_runs,
                       progress=(lambda d, t: log(f"bench: {d}/{t} runs computed")) if not args.quiet else None)
    if result.interrupted:
        # A partial table would read like a complete one: say what is kept and stop.
        log(f"bench interrupted after {result.computed} of its runs: they are stored; "
            "run the same command to resume")
        return 130
    if result.failed:
        for f in result.failed:
            log(f"run failed: {RunConfig(**f['config']).label()}: {f['error']}")
        raise ValueError(f"{len(result.failed)} bench runs failed")
    by_label = {r["label"]: r for r in result.runs}
    # Every row names its allocation rule and calibration (fields of the run, repeated here).
    rows = [dict(by_label[c.label()], budget=c.budget, finetune_epochs=c.finetune_epochs, allocation=c.allocation,
                 calibration=c.calibration) for c in rows_cfg]
    ablation = [dict(by_label[c.label()], step=name, budget=c.budget) for name, c in ablation_cfg]
    sweep = [] if args.no_sweep else stored_runs(argparse.Namespace(method=None, all_data=False), ws)
    lines = [f"original: accuracy {100 * original['accuracy']:.2f} % (SE {100 * original['accuracy_se']:.2f}), "
             f"macro F1 {original['macro_f1']:.4f}, FLOPs {original['flops'] / 1e9:.3f} G"]
    lines += [f"[{r['allocation']} allocation, {r['calibration']} calibration] {run_summary(r)}" for r in rows]
    lines += ["ablation at the largest budget:"] + [f"  {a['step']}: {run_summary(a)}" for a in ablation]
    emit(args, {"original": original, "rows": rows, "ablation": ablation, "sweep": sweep,
                "machine": machine_description(), "command": command}, "\n".join(lines))
    return 0
