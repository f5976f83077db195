"""``hscc compress``, ``hscc sweep``, ``hscc runs`` and ``hscc pareto``: compressing and comparing."""

from __future__ import annotations

import argparse
import math
import sys

from tqdm import tqdm

from hscc_core.cli.common import (add_common, emit, float_list, int_list, list_option, log, positive_int,
                                  run_summary, word_list, workspace_from, workspace_with_baseline)
from hscc_core.cli.progress import StageBars
from hscc_core.compress.methods import get_method
from hscc_core.runs.config import ALLOCATIONS, CALIBRATIONS, CLUSTER_SIDES, DEFAULTS, METHOD_NAMES, RunConfig
from hscc_core.runs.executors import EXECUTORS, make_executor
from hscc_core.runs.pareto import axis_value, front_runs, get_axis
from hscc_core.runs.pipeline import compress_run, original_run
from hscc_core.runs.selection import baseline_runs, older_baseline_runs
from hscc_core.runs.table import runs_table, to_csv
from hscc_core.runs.upgrade import time_runs, upgrade_runs
from hscc_core.runs.versions import older_runs_note
from hscc_core.runs.sweeps import DEFAULT_CLUSTERS, DEFAULT_ENERGIES, DEFAULT_GRIDS, expand, run_sweep

__all__ = ["check_runs", "register", "run_options", "run_settings", "stored_runs"]


def calib_size(text: str) -> int | str:
    """``--calib-size``: a count >= 1, or ``all`` (the whole training split)."""
    if text == "all":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'all', got '{text}'") from None


def _multiples(text: str) -> list[int]:
    """``--rank-multiple 1 8`` of a sweep: whole numbers >= 1."""
    values = int_list(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got '{text}'")
    return values


def run_options(p: argparse.ArgumentParser, several_multiples: bool = False) -> None:
    """Options of every command that computes runs (a sweep takes several rank multiples)."""
    p.add_argument("--calib-size", type=calib_size, default=DEFAULTS["calib_size"],
                   help=f"calibration images, or 'all' for the whole training split (default "
                        f"{DEFAULTS['calib_size']})")
    p.add_argument("--calib-flip", action=argparse.BooleanOptionalAction, default=DEFAULTS["calib_flip"],
                   help="also calibrate on the images' mirror images, as training augments "
                        f"(default {'on' if DEFAULTS['calib_flip'] else 'off'})")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=None,
                   help="HSCC: fit each layer on the original's inputs (independent, the paper) or in forward "
                        "order on the compressed model's inputs (sequential; docs/fidelity.md); default "
                        f"{DEFAULTS['calibration']} (the weight-only baselines are never sequential)")
    what = ("HSCC: every rank a multiple of this, within a budget or rounded up at an energy threshold "
            f"(8 or 16 fill the kernel's vectors; default {DEFAULTS['rank_multiple']}, no constraint)")
    if several_multiples:
        list_option(p, "--rank-multiple", _multiples, [DEFAULTS["rank_multiple"]],
                    what + "; several make a run for each, e.g. --rank-multiple 1 8 16")
    else:
        p.add_argument("--rank-multiple", type=positive_int, default=DEFAULTS["rank_multiple"], help=what)
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of calibration sampling, k-means, fine-tuning")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per model and batch size")
    p.add_argument("--no-speed", action="store_true", help="skip latency measurement (faster)")


def run_settings(args) -> dict:
    """The RunConfig fields :func:`run_options` set (one rank multiple), for commands that build
    their own configurations."""
    return {"calib_size": args.calib_size, "seed": args.seed, "calib_flip": args.calib_flip,
            "calibration": args.calibration, "rank_multiple": args.rank_multiple}


def register(sub) -> dict:
    """Add this module's sub-commands; returns name -> handler."""
    p = sub.add_parser("compress", help="one compression run (cached)",
                       description="Compress the baseline with one method and configuration.")
    add_common(p)
    p.add_argument("--method", choices=METHOD_NAMES, default=DEFAULTS["method"])
    # No parser default: a grid or cluster count given for a baseline is refused (_config), not ignored.
    p.add_argument("--grid", type=int, default=None,
                   help=f"HSCC region grid G (G x G regions; default {DEFAULTS['grid']})")
    p.add_argument("--clusters", type=int, default=None,
                   help=f"HSCC channel clusters K per region (default {DEFAULTS['clusters']})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--energy", type=float, default=None,
                       help=f"energy threshold tau in (0, 1] (default {DEFAULTS['energy']})")
    group.add_argument("--budget", type=float, default=None,
                       help="compress the conv layers' FLOPs by this factor (> 1)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs (same recipe for all)")
    p.add_argument("--cluster-side", choices=CLUSTER_SIDES, default=DEFAULTS["cluster_side"],
                   help="HSCC: cluster output channels (the paper) or input channels (HSCC+)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="budget mode: one energy for every block (uniform), greedy by relative energy per MAC, "
                        "or greedy with each layer priced by its measured sensitivity (docs/fidelity.md); "
                        f"default {DEFAULTS['allocation']} for every method")
    run_options(p)

    p = sub.add_parser("sweep", help="many runs over a product of settings (resumable)",
                       description="Run every combination not already in the cache.")
    add_common(p)
    list_option(p, "--methods", word_list, list(METHOD_NAMES), "methods, e.g. --methods hscc svd")
    list_option(p, "--grid", int_list, list(DEFAULT_GRIDS), "HSCC grids, e.g. --grid 1 2 4")
    list_option(p, "--clusters", int_list, list(DEFAULT_CLUSTERS), "HSCC clusters, e.g. --clusters 1 2 4 8")
    list_option(p, "--energy", float_list, None, "energies, e.g. --energy 0.9 0.95 (default: "
                + " ".join(map(str, DEFAULT_ENERGIES)) + ", or none when --budgets is given)")
    list_option(p, "--budgets", float_list, [], "budgets, e.g. --budgets 3 6")
    list_option(p, "--finetune-epochs", int_list, [0], "fine-tuning epochs, e.g. --finetune-epochs 0 2")
    list_option(p, "--cluster-sides", word_list, [DEFAULTS["cluster_side"]],
                "HSCC cluster sides, e.g. --cluster-sides output input")
    list_option(p, "--allocations", word_list, None,
                "allocations, e.g. --allocations uniform greedy sensitivity (greedy and sensitivity apply to "
                f"budgets only; default: uniform for energies, {DEFAULTS['allocation']} for budgets)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes; with --executor ray and no --address, the CPUs of "
                        "the Ray instance started here (default: all cores)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where runs compute: local processes, or Ray tasks (docs/ray.md)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (auto, HOST:PORT or ray://HOST:PORT); default: "
                        "RAY_ADDRESS, else a local Ray started on demand")
    run_options(p, several_multiples=True)

    p = sub.add_parser("runs", help="list (or prune) cached runs of this data and model")
    add_common(p)
    p.add_argument("--method", choices=METHOD_NAMES, default=None)
    p.add_argument("--all-data", action="store_true", help="runs of every dataset and model in the cache")
    p.add_argument("--prune", action="store_true", help="remove the listed runs")
    p.add_argument("--csv", action="store_true", help="print the runs table as CSV (hscc_core.runs.table)")
    p.add_argument("--upgrade", action="store_true",
                   help="bring this model's runs of an older pipeline version that differ only in timing up to "
                        "date without computing them again (timed runs are timed again; docs/cli.md)")
    p.add_argument("--time", action="store_true",
                   help="time the listed runs that have no timing (computed with --no-speed, e.g. by a parallel "
                        "sweep) against the original, one at a time (docs/cli.md)")
    p.add_argument("--retime-busy", action="store_true",
                   help="with --time: also time again the runs timed while other processes used more than a "
                        "quarter of the CPUs (latency_ms.others_cpu; the earlier timing is kept)")
    p.add_argument("--no-speed", action="store_true",
                   help="with --upgrade: drop the older timings instead of timing again (no time spent)")
    p.add_argument("--latency-runs", type=int, default=20,
                   help="with --upgrade or --time: timed runs per model and batch size")

    p = sub.add_parser("pareto", help="the non-dominated cached runs")
    add_common(p)
    p.add_argument("--x", default="flops", help="flops, params or latency (minimised)")
    p.add_argument("--y", default="accuracy",
                   help="accuracy, macro_f1, <class>_f1, agreement (maximised) or kl_to_original")
    p.add_argument("--method", choices=METHOD_NAMES, default=None)
    return {"compress": cmd_compress, "sweep": cmd_sweep, "runs": cmd_runs, "pareto": cmd_pareto}


def check_runs(args) -> None:
    """``--latency-runs`` of any command that times models, checked before any work."""
    if args.latency_runs < 1:
        raise ValueError(f"--latency-runs must be >= 1, got {args.latency_runs}")


def check_workers(args) -> None:
    """``--workers`` of a command that runs several runs (sweep, bench, search), checked before any work."""
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and not args.no_speed:
        # Runs timed while other runs share the cores would report a made-up speed-up.
        raise ValueError("--workers above 1 needs --no-speed (parallel runs disturb latency timing)")


def _config(args) -> RunConfig:
    given = [f"--{name}" for name in ("grid", "clusters") if getattr(args, name) is not None]
    if given and not get_method(args.method).data_aware:
        # The baselines have no regions or clusters: ignoring the options made a run the user did not ask for.
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{' and '.join(given)} {verb} to --method hscc only ({get_method(args.method).title} "
                         "compresses each whole layer)")
    grid = DEFAULTS["grid"] if args.grid is None else args.grid
    clusters = DEFAULTS["clusters"] if args.clusters is None else args.clusters
    energy = args.energy if (args.energy is not None or args.budget is not None) else DEFAULTS["energy"]
    return RunConfig(method=args.method, grid=grid, clusters=clusters, energy=energy,
                     budget=args.budget, finetune_epochs=args.finetune_epochs, cluster_side=args.cluster_side,
                     allocation=args.allocation, **run_settings(args))


def cmd_compress(args) -> int:
    config = _config(args)  # validates before any work
    check_runs(args)
    ws = workspace_with_baseline(args)
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
    for m in args.methods:
        if m not in METHOD_NAMES:
            raise ValueError(f"unknown method '{m}' (allowed: {', '.join(METHOD_NAMES)})")
    check_runs(args)
    check_workers(args)  # the docs said parallel sweeps must skip timing; the command did not check it
    energies = args.energy if args.energy is not None else ([] if args.budgets else list(DEFAULT_ENERGIES))
    configs = expand(args.methods, args.grid, args.clusters, energies, args.budgets,
                     args.finetune_epochs, args.calib_size, args.seed, args.cluster_sides, args.allocations,
                     args.calibration, args.calib_flip, args.rank_multiple)
    executor = make_executor(args.executor, args.workers, args.address)  # bad address: exit 2 now
    ws = workspace_with_baseline(args)
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


def stored_runs(args, ws) -> list[dict]:
    """The stored compression runs of this data and model (of every one with ``--all-data``)."""
    if getattr(args, "all_data", False):
        return [r for r in ws.store.list_runs(method=args.method) if r["method"] != "original"]
    return baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint(), args.method)


def cmd_runs(args) -> int:
    ws = workspace_from(args)
    if args.upgrade and args.time:
        raise ValueError("give --upgrade or --time, not both (upgrade first, then time what has no timing)")
    if args.retime_busy and not args.time:
        raise ValueError("--retime-busy applies to --time only")
    # --csv is a listing: with --prune it was ignored and every listed run removed, with --json it broke
    # the one-JSON-object rule. Refused before anything is read or removed.
    if args.csv and (args.prune or args.upgrade or args.time):
        raise ValueError("--csv prints the runs table: it does not go with --prune, --upgrade or --time")
    if args.csv and args.json:
        raise ValueError("give --csv (the runs table as CSV) or --json (one JSON object), not both")
    if args.upgrade:
        return _upgrade(args, ws)
    if args.no_speed:
        raise ValueError("--no-speed applies to --upgrade only")
    if args.time:
        return _time(args, ws)
    runs = stored_runs(args, ws)
    if args.prune:
        removed = ws.store.prune([r["cache_key"] for r in runs])
        log(f"removed {removed} runs; store now {ws.store.size_bytes() / 1e6:.1f} MB")
        emit(args, {"removed": removed, "size_bytes": ws.store.size_bytes()}, f"removed {removed} runs")
        return 0
    if args.csv:
        sys.stdout.write(to_csv(runs_table(runs)))
        return 0
    size = ws.store.size_bytes()
    # Runs of an older pipeline version stay on disk but are not listed: say how many (--all-data
    # lists every run, so nothing is left out there).
    found = {} if getattr(args, "all_data", False) else {
        u: older_baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint(), args.method, upgradable=u)
        for u in (False, True)}
    older = found.get(False, 0)
    note = older_runs_note(older, found.get(True, 0))
    human = "\n".join([f"{r['cache_key']}  {run_summary(r)}" for r in runs]
                      + [f"{len(runs)} runs; store {size / 1e6:.1f} MB at {ws.cache_dir}"] + ([note] if note else []))
    emit(args, {"runs": runs, "size_bytes": size, "older_runs": older, "upgradable_runs": found.get(True, 0)}, human)
    return 0


def _bar(args, desc: str):
    """A tqdm bar on stderr and the ``progress(done, total)`` callback that moves it."""
    bar = tqdm(total=0, desc=desc, file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def _time(args, ws) -> int:
    """``hscc runs --time``: the listed runs without a timing (and with ``--retime-busy`` those timed on a
    busy machine), timed against the original."""
    if args.prune or args.csv or args.all_data:
        raise ValueError("--time works on the runs of this data and model: leave out --prune, --csv and --all-data")
    check_runs(args)
    bar, progress = _bar(args, "timing runs")
    try:
        report = time_runs(ws, stored_runs(args, ws), latency_runs=args.latency_runs, progress=progress,
                           again_if_busy=args.retime_busy)
    finally:
        bar.close()
    human = "\n".join([f"{t['key']}  {t['label']}: " + ", ".join(
                           f"{v:.2f}x at batch {b[1:]}" for b, v in (t["speedup"] or {}).items())
                        + ("  (timed again)" if t["again"] else "") for t in report.timed]
                       + [f"{s['key']}  {s['label']}: not timed: {s['reason']}" for s in report.skipped]
                       + [report.summary()])
    emit(args, {"timed": report.timed, "skipped": report.skipped}, human)
    return 0


def _upgrade(args, ws) -> int:
    """``hscc runs --upgrade``: older runs that differ only in timing, brought up to date (hscc_core.runs.upgrade)."""
    if args.prune or args.csv or args.all_data or args.method:
        raise ValueError("--upgrade works on every run of this data and model: leave out --prune, --csv, "
                         "--all-data and --method")
    check_runs(args)
    if not ws.has_baseline():
        raise ValueError("this workspace has no baseline model yet, so no runs to upgrade (`hscc prepare` trains it)")
    bar, progress = _bar(args, "upgrading runs")
    try:
        report = upgrade_runs(ws, retime=not args.no_speed, latency_runs=args.latency_runs, progress=progress)
    finally:
        bar.close()
    human = "\n".join([f"{u['from']} -> {u['to']}  {u['label']}" + ("  (timed again)" if u["retimed"] else "")
                       + ("  (already stored: older copy removed)" if u["already_current"] else "")
                       for u in report.upgraded]
                      + [f"{s['key']}  {s['label']}: left as it was: {s['reason']}" for s in report.skipped]
                      + [report.summary()])
    emit(args, {"upgraded": report.upgraded, "skipped": report.skipped}, human)
    return 0


def cmd_pareto(args) -> int:
    ws = workspace_from(args)
    if args.x not in ("flops", "params", "latency"):
        raise ValueError(f"unknown x axis '{args.x}' (allowed: flops, params, latency)")
    get_axis(args.y)  # raises ValueError naming the allowed axes
    classes = list(ws.index().classes)
    if args.y.endswith("_f1") and args.y != "macro_f1" and args.y[:-3] not in classes:
        # An unknown class gave an empty front and "original: foo_f1 nan" with exit 0.
        raise ValueError(f"unknown class in --y {args.y!r} (this data's classes: {', '.join(classes)})")
    original, _, _ = original_run(ws)
    front = front_runs(stored_runs(args, ws), args.x, args.y)
    reference = axis_value(original, args.y)  # none for agreement and KL (the original is the reference)
    human = "\n".join([f"{axis_value(r, args.x):>14.6g}  {axis_value(r, args.y):.4f}  {run_summary(r)}"
                       for r in front] + ([f"original: {args.y} {reference:.4f}"] if math.isfinite(reference) else []))
    emit(args, {"runs": front, "original": original, "x": args.x, "y": args.y}, human)
    return 0
