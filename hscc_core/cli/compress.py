"""Commands that compress and compare: compress, sweep, runs, pareto, bench.

Registered on the main parser by ``cli.build_parser``; they share its options and error handling.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys

from hscc_core.runs.pareto import axis_value, front_runs, get_axis
from hscc_core.runs.pipeline import ALLOCATIONS, CLUSTER_SIDES, METHODS, RunConfig, compress_run, original_run
from hscc_core.cli.progress import StageBars, TrainBar, bars
from hscc_core.runs.executors import EXECUTORS, make_executor
from hscc_core.runs.sweeps import DEFAULT_CLUSTERS, DEFAULT_ENERGIES, DEFAULT_GRIDS, expand, run_sweep


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got '{text}'") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got '{text}'") from None


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-size", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of calibration sampling, k-means, fine-tuning")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per model and batch size")
    p.add_argument("--no-speed", action="store_true", help="skip latency measurement (faster)")


def register(sub, common) -> dict:
    """Add this module's sub-commands; returns name -> handler."""
    p = sub.add_parser("compress", help="one compression run (cached)",
                       description="Compress the baseline with one method and configuration.")
    common(p)
    p.add_argument("--method", choices=METHODS, default="hscc")
    p.add_argument("--grid", type=int, default=2, help="HSCC region grid G (G x G regions)")
    p.add_argument("--clusters", type=int, default=4, help="HSCC channel clusters K per region")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--energy", type=float, default=None, help="energy threshold tau in (0, 1] (default 0.95)")
    group.add_argument("--budget", type=float, default=None,
                       help="compress the conv layers' FLOPs by this factor (> 1); tau by bisection")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs (same recipe for all)")
    p.add_argument("--cluster-side", choices=CLUSTER_SIDES, default="output",
                   help="HSCC: cluster output channels (the paper) or input channels (HSCC+)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="HSCC ranks: one energy for every block, or greedy by energy per MAC (budget "
                        "mode only; its default there, measured better on the real data: docs/results.md)")
    _run_options(p)

    p = sub.add_parser("sweep", help="many runs over a product of settings (resumable)",
                       description="Run every combination not already in the cache.")
    common(p)
    p.add_argument("--methods", type=lambda t: t.replace(",", " ").split(), default=list(METHODS))
    p.add_argument("--grid", type=_int_list, default=list(DEFAULT_GRIDS), help="e.g. '1 2 4'")
    p.add_argument("--clusters", type=_int_list, default=list(DEFAULT_CLUSTERS), help="e.g. '1 2 4 8'")
    p.add_argument("--energy", type=_float_list, default=None,
                   help="e.g. '0.9 0.95' (default: " + " ".join(map(str, DEFAULT_ENERGIES))
                        + ", or none when --budgets is given)")
    p.add_argument("--budgets", type=_float_list, default=[], help="e.g. '3 6'")
    p.add_argument("--finetune-epochs", type=_int_list, default=[0], help="e.g. '0 2'")
    p.add_argument("--cluster-sides", type=lambda t: t.replace(",", " ").split(), default=["output"],
                   help="HSCC cluster sides, e.g. 'output input'")
    p.add_argument("--allocations", type=lambda t: t.replace(",", " ").split(), default=None,
                   help="HSCC allocations, e.g. 'uniform greedy' (greedy applies to budgets only; "
                        "default: uniform for energies, greedy for budgets)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes; with --executor ray and no --address, the CPUs of "
                        "the Ray instance started here (default: all cores)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where runs compute: local processes, or Ray tasks (docs/ray.md)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (auto, HOST:PORT or ray://HOST:PORT); default: "
                        "RAY_ADDRESS, else a local Ray started on demand")
    _run_options(p)

    p = sub.add_parser("runs", help="list (or prune) cached runs of this data and model")
    common(p)
    p.add_argument("--method", choices=METHODS, default=None)
    p.add_argument("--all-data", action="store_true", help="runs of every dataset and model in the cache")
    p.add_argument("--prune", action="store_true", help="remove the listed runs")
    p.add_argument("--csv", action="store_true", help="print the runs table as CSV (hscc_core.runs.table)")

    p = sub.add_parser("pareto", help="the non-dominated cached runs")
    common(p)
    p.add_argument("--x", default="flops", help="flops, params or latency (minimised)")
    p.add_argument("--y", default="accuracy",
                   help="accuracy, macro_f1, <class>_f1, agreement (maximised) or kl_to_original")
    p.add_argument("--method", choices=METHODS, default=None)

    p = sub.add_parser("bench", help="the paper-style table: methods at 3x and 6x, ablation ladder")
    common(p)
    p.add_argument("--budgets", type=_float_list, default=[3.0, 6.0])
    p.add_argument("--bench-grid", type=int, default=4, help="HSCC grid for the table (default 4)")
    p.add_argument("--bench-clusters", type=int, default=4, help="HSCC clusters for the table (default 4)")
    p.add_argument("--finetune-epochs", type=int, default=2,
                   help="epochs of the fine-tuned rows (0: no fine-tuned rows)")
    p.add_argument("--speed", action="store_true", help="only the speed table (original vs methods)")
    p.add_argument("--no-sweep", action="store_true", help="leave the stored sweep out of the JSON")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes for the table's runs (more than 1 needs --no-speed)")
    _run_options(p)
    return {"compress": cmd_compress, "sweep": cmd_sweep, "runs": cmd_runs, "pareto": cmd_pareto,
            "bench": cmd_bench}


def _ws_with_baseline(args):
    from hscc_core.cli.main import workspace_from  # noqa: PLC0415 - avoid an import cycle

    ws = workspace_from(args)
    if ws.has_baseline():
        return ws  # nothing loaded yet: cached runs are served without touching the model
    with bars(not args.quiet) as progress:
        ws.images(progress)
    bar = TrainBar(not args.quiet)
    try:
        ws.baseline(progress=bar)  # trains once if absent, like `hscc prepare`
    finally:
        bar.close()
    return ws


def run_summary(run: dict, original: dict | None = None) -> str:
    """One human line for a run."""
    parts = [run.get("label", run["method"]),
             f"accuracy {100 * run['accuracy']:.2f} % (SE {100 * run['accuracy_se']:.2f})"]
    if original is not None:
        parts.append(f"original {100 * original['accuracy']:.2f} %")
    if run.get("p_value_vs_original") is not None:
        parts.append(f"p={run['p_value_vs_original']:.3g}")
    if "layer_flops_ratio" in run:
        parts.append(f"conv FLOPs /{run['layer_flops_ratio']:.2f} (model /{run['flops_ratio']:.2f})")
    if run.get("speedup"):
        parts.append(f"speed-up b1 {run['speedup']['b1']:.2f}x b32 {run['speedup']['b32']:.2f}x")
    if run.get("budget_search") and not run["budget_search"]["met"]:
        parts.append(f"[{run['budget_search']['message']}]")
    clamped = [n for n, s in run.get("layers", {}).items() if s.get("grid_clamped") or s.get("clusters_clamped")]
    if clamped:
        parts.append(f"[grid/clusters clamped on {', '.join(clamped)}]")
    if run.get("cached"):
        parts.append("(cached)")
    return ", ".join(parts)


def _config(args, energy_default: float = 0.95) -> RunConfig:
    energy = args.energy if (args.energy is not None or args.budget is not None) else energy_default
    return RunConfig(method=args.method, grid=args.grid, clusters=args.clusters, energy=energy,
                     budget=args.budget, finetune_epochs=args.finetune_epochs,
                     calib_size=args.calib_size, seed=args.seed, cluster_side=args.cluster_side,
                     allocation=args.allocation or default_allocation(args.method, args.budget))


def default_allocation(method: str, budget: float | None) -> str:
    """Greedy for HSCC in budget mode (measured better on the real data), else uniform."""
    return "greedy" if method == "hscc" and budget is not None else "uniform"


def _check_runs(args):
    if args.latency_runs < 1:
        raise ValueError(f"--latency-runs must be >= 1, got {args.latency_runs}")


def cmd_compress(args) -> int:
    from hscc_core.cli.main import emit, log  # noqa: PLC0415

    config = _config(args)  # validates before any work
    _check_runs(args)
    ws = _ws_with_baseline(args)
    original, _, _ = original_run(ws)
    bars_ = StageBars(not args.quiet)
    try:
        run, _ = compress_run(ws, config, progress=bars_, measure_speed=not args.no_speed,
                              latency_runs=args.latency_runs)
    finally:
        bars_.close()
    summary = run_summary(run, original)
    if args.json:
        log(summary)  # the contract's one human line on stderr beside the JSON
    emit(args, run, summary)
    return 0


def cmd_sweep(args) -> int:
    from hscc_core.cli.main import emit, log  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    for m in args.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method '{m}' (allowed: {', '.join(METHODS)})")
    _check_runs(args)
    energies = args.energy if args.energy is not None else ([] if args.budgets else list(DEFAULT_ENERGIES))
    configs = expand(args.methods, args.grid, args.clusters, energies, args.budgets,
                     args.finetune_epochs, args.calib_size, args.seed, args.cluster_sides, args.allocations)
    executor = make_executor(args.executor, args.workers, args.address)  # bad address: exit 2 now
    ws = _ws_with_baseline(args)
    original_run(ws)  # computed once here rather than raced by the workers
    bar = None

    def progress(done, total):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="sweep", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = run_sweep(ws, configs, executor, progress, measure_speed=not args.no_speed,
                           latency_runs=args.latency_runs)
    finally:
        if bar is not None:
            bar.close()
    for f in result.failed:
        log(f"run failed: {RunConfig(**f['config']).label()}: {f['error']}")
    if result.interrupted:
        log("sweep interrupted: finished runs are stored; run the same command to resume")
    human = (f"{len(configs)} runs: {result.computed} computed, {result.cached} from the cache, "
             f"{len(result.failed)} failed, {result.seconds:.1f} s")
    log(human)
    emit(args, {"runs": result.runs, "computed": result.computed, "cached": result.cached,
                "failed": result.failed, "interrupted": result.interrupted, "seconds": result.seconds},
         "\n".join(run_summary(r) for r in result.runs))
    return 130 if result.interrupted else (1 if result.failed else 0)


def _stored_runs(args, ws) -> list[dict]:
    if getattr(args, "all_data", False):
        runs = ws.store.list_runs(method=args.method)
    else:
        model = ws.model_fingerprint()
        runs = [r for r in ws.store.list_runs(method=args.method, data_fingerprint=ws.index().fingerprint)
                if r.get("model_fingerprint") == model]
    return [r for r in runs if r["method"] != "original"]


def cmd_runs(args) -> int:
    from hscc_core.cli.main import emit, log, workspace_from  # noqa: PLC0415

    ws = workspace_from(args)
    runs = _stored_runs(args, ws)
    if args.prune:
        removed = ws.store.prune([r["cache_key"] for r in runs])
        log(f"removed {removed} runs; store now {ws.store.size_bytes() / 1e6:.1f} MB")
        emit(args, {"removed": removed, "size_bytes": ws.store.size_bytes()}, f"removed {removed} runs")
        return 0
    if args.csv:
        from hscc_core.runs.table import runs_table, to_csv  # noqa: PLC0415

        sys.stdout.write(to_csv(runs_table(runs)))
        return 0
    size = ws.store.size_bytes()
    human = "\n".join([f"{r['cache_key']}  {run_summary(r)}" for r in runs]
                      + [f"{len(runs)} runs; store {size / 1e6:.1f} MB at {ws.cache_dir}"])
    emit(args, {"runs": runs, "size_bytes": size}, human)
    return 0


def cmd_pareto(args) -> int:
    from hscc_core.cli.main import emit, workspace_from  # noqa: PLC0415

    ws = workspace_from(args)
    if args.x not in ("flops", "params", "latency"):
        raise ValueError(f"unknown x axis '{args.x}' (allowed: flops, params, latency)")
    get_axis(args.y)  # raises ValueError naming the allowed axes
    original, _, _ = original_run(ws)
    front = front_runs(_stored_runs(args, ws), args.x, args.y)
    human = "\n".join([f"{axis_value(r, args.x):>14.6g}  {axis_value(r, args.y):.4f}  {run_summary(r)}"
                       for r in front] + [f"original: {args.y} {axis_value(original, args.y):.4f}"])
    emit(args, {"runs": front, "original": original, "x": args.x, "y": args.y}, human)
    return 0


def bench_configs(budgets, grid: int, clusters: int, finetune_epochs: int, calib_size: int, seed: int):
    """(rows, ablation) configurations of the paper-style table.

    Rows: every method at every budget, without and (when ``finetune_epochs``) with fine-tuning.
    Ablation ladder (DESIGN 3.8) at the largest budget: weight-only Global SVD; data-aware global
    (G = 1, K = 1); regions only (G > 1, K = 1); clusters only (G = 1, K > 1); full HSCC.
    """
    common = {"calib_size": calib_size, "seed": seed, "energy": None}
    rows = []
    for b in budgets:
        for ft in ([0, finetune_epochs] if finetune_epochs else [0]):
            for m in METHODS:
                rows.append(RunConfig(method=m, grid=grid, clusters=clusters, budget=b, finetune_epochs=ft, **common))
    top = max(budgets)
    ablation = [("weight-only Global SVD", RunConfig(method="svd", budget=top, **common)),
                ("data-aware global (G=1, K=1)", RunConfig(method="hscc", grid=1, clusters=1, budget=top, **common)),
                (f"regions only (G={grid}, K=1)", RunConfig(method="hscc", grid=grid, clusters=1, budget=top, **common)),
                (f"clusters only (G=1, K={clusters})", RunConfig(method="hscc", grid=1, clusters=clusters, budget=top, **common)),
                (f"full HSCC (G={grid}, K={clusters})", RunConfig(method="hscc", grid=grid, clusters=clusters, budget=top, **common))]
    # HSCC+ (DESIGN 3.9): cluster side x rank allocation at the same budget.
    for side in CLUSTER_SIDES:
        for alloc in ALLOCATIONS:
            if (side, alloc) != ("output", "uniform"):
                ablation.append((f"HSCC+ {side} side, {alloc} (G={grid}, K={clusters})",
                                 RunConfig(method="hscc", grid=grid, clusters=clusters, budget=top,
                                           cluster_side=side, allocation=alloc, **common)))
    return rows, ablation


def machine_description() -> str:
    """CPU model, cores and library versions, for every published number."""
    import torch  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
            f"{gpu}, Python {platform.python_version()}")


def cmd_bench(args) -> int:
    from hscc_core.cli.main import emit, log  # noqa: PLC0415

    _check_runs(args)
    command = "hscc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "hscc bench"
    ws = _ws_with_baseline(args)
    if args.speed:
        from hscc_core.runs.speed import speed_table  # noqa: PLC0415

        table = speed_table(ws, budgets=tuple(args.budgets), hscc_grid=args.bench_grid,
                            hscc_clusters=args.bench_clusters, runs=args.latency_runs)
        human = "\n".join(f"{r['method']:7s} {r['budget']:>4g}x  conv FLOPs /{r['layer_flops_ratio']:.2f}  "
                          f"model FLOPs /{r['flops_ratio']:.2f}  speed-up b1 {r['speedup_b1']:.2f}x  "
                          f"b32 {r['speedup_b32']:.2f}x  ({r['device']})"
                          + (f"; CUDA graphs b1 {r['speedup_graph_b1']:.2f}x b32 {r['speedup_graph_b32']:.2f}x"
                             if "speedup_graph_b32" in r else "") for r in table["rows"])
        emit(args, dict(table, machine=machine_description(), command=command), human)
        return 0
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and not args.no_speed:
        # Runs timed while other runs share the cores would report a made-up speed-up.
        raise ValueError("--workers above 1 needs --no-speed (parallel runs disturb latency timing)")
    original, _, _ = original_run(ws)
    rows_cfg, ablation_cfg = bench_configs(args.budgets, args.bench_grid, args.bench_clusters,
                                           args.finetune_epochs, args.calib_size, args.seed)
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
    rows = [dict(by_label[c.label()], budget=c.budget, finetune_epochs=c.finetune_epochs) for c in rows_cfg]
    ablation = [dict(by_label[c.label()], step=name, budget=c.budget) for name, c in ablation_cfg]
    sweep = [] if args.no_sweep else _stored_runs(argparse.Namespace(method=None, all_data=False), ws)
    lines = [f"original: accuracy {100 * original['accuracy']:.2f} % (SE {100 * original['accuracy_se']:.2f}), "
             f"macro F1 {original['macro_f1']:.4f}, FLOPs {original['flops'] / 1e9:.3f} G"]
    lines += [run_summary(r) for r in rows]
    lines += ["ablation at the largest budget:"] + [f"  {a['step']}: {run_summary(a)}" for a in ablation]
    emit(args, {"original": original, "rows": rows, "ablation": ablation, "sweep": sweep,
                "machine": machine_description(), "command": command}, "\n".join(lines))
    return 0
