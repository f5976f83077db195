"""``hscc search`` (multi-objective sampling with Optuna) and ``hscc export-study`` (runs as a study).

They share the common options and error handling of :mod:`hscc_core.cli.common`.
"""

from __future__ import annotations

import os
from pathlib import Path

from hscc_core.cli.common import (add_common, emit, float_list, int_list, list_option, log, run_summary,
                                  word_list, workspace_from, workspace_with_baseline)
from hscc_core.cli.compress import check_runs, check_workers, stored_runs
from hscc_core.cli.progress import StageBars
from hscc_core.runs.config import ALLOCATIONS, CLUSTER_SIDES, METHOD_NAMES, RunConfig
from hscc_core.runs.executors import EXECUTORS, make_executor
from hscc_core.runs.pareto import axis_value
from hscc_core.runs.pipeline import original_run
from hscc_core.runs.search import SAMPLERS, SearchConfig, SearchSpace, front_axes, run_search
from hscc_core.runs.study import STUDY_NAME, export_study, sqlite_url
from hscc_core.runs.sweeps import DEFAULT_ENERGIES

__all__ = ["register", "search_config"]

_SPACE = SearchSpace()


def register(sub) -> dict:
    """Add ``search`` and ``export-study``; returns name -> handler."""
    p = sub.add_parser(
        "search", help="multi-objective sampling (Optuna) instead of a grid; trials are cached runs",
        description="Let Optuna's multi-objective sampler propose HSCC configurations; every trial is a "
                    "normal cached run, so a rerun with the same seed computes nothing (docs/cli.md).")
    add_common(p)
    p.add_argument("--budget", type=float, default=None,
                   help="conv-FLOPs compression factor every trial meets (> 1); without it the energy "
                        "threshold is searched and FLOPs becomes an objective")
    p.add_argument("--trials", type=int, required=True, help="number of trials")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every run")
    list_option(p, "--objectives", word_list, None,
                "two axes, e.g. --objectives accuracy latency (default: accuracy and latency with a budget, "
                "accuracy and params with --no-speed, accuracy and flops without a budget)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="multi-objective TPE or NSGA-II")
    p.add_argument("--batch", type=int, default=4,
                   help="trials proposed and run together (keep it when resuming; default 4)")
    p.add_argument("--startup-trials", type=int, default=8,
                   help="TPE: random trials before its model takes over; NSGA-II: population size (default 8)")
    list_option(p, "--grid", int_list, list(_SPACE.grids), "grids to search, e.g. --grid 1 2 4 8")
    list_option(p, "--clusters", int_list, list(_SPACE.clusters), "e.g. --clusters 1 2 4 8 16")
    list_option(p, "--cluster-sides", word_list, list(_SPACE.cluster_sides), f"e.g. {' '.join(CLUSTER_SIDES)}")
    list_option(p, "--allocations", word_list, list(_SPACE.allocations),
                f"e.g. {' '.join(ALLOCATIONS)} (with --budget only)")
    list_option(p, "--calib-sizes", int_list, list(_SPACE.calib_sizes), "e.g. --calib-sizes 128 256 512")
    list_option(p, "--energy", float_list, list(DEFAULT_ENERGIES), "energy thresholds to search without --budget")
    list_option(p, "--rank-multiples", int_list, list(_SPACE.rank_multiples),
                "rank multiples to search, e.g. --rank-multiples 1 8 16 (the speed constraint; default 1 only)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs of every trial")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (more than 1 needs --no-speed)")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="local processes or Ray (docs/ray.md)")
    p.add_argument("--address", default=None, help="Ray cluster address (see hscc sweep)")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per model and batch size")
    p.add_argument("--no-speed", action="store_true", help="skip latency measurement (then no latency objective)")

    p = sub.add_parser(
        "export-study", help="the stored runs as an Optuna study (SQLite) for optuna-dashboard",
        description="Write the stored runs of this data and model as one Optuna study: one completed "
                    "trial per run, settings as parameters, accuracy and FLOPs as values. Open it with "
                    "`optuna-dashboard sqlite:///PATH.db`.")
    add_common(p)
    p.add_argument("--out", type=Path, required=True, metavar="PATH.db", help="SQLite file (created or updated)")
    p.add_argument("--study-name", default=None, help="study name (default: hscc-runs); an existing one is replaced")
    p.add_argument("--method", choices=METHOD_NAMES, default=None, help="only runs of this method")
    p.add_argument("--all-data", action="store_true", help="runs of every dataset and model in the cache")
    return {"search": cmd_search, "export-study": cmd_export_study}


def search_config(args) -> SearchConfig:
    """The SearchConfig the options describe (ValueError on bad values, before any work)."""
    space = SearchSpace(grids=tuple(args.grid), clusters=tuple(args.clusters),
                        cluster_sides=tuple(args.cluster_sides), allocations=tuple(args.allocations),
                        calib_sizes=tuple(args.calib_sizes), energies=tuple(args.energy),
                        rank_multiples=tuple(args.rank_multiples))
    if args.budget is None and "uniform" not in args.allocations:
        raise ValueError("without --budget only uniform allocation applies: add it to --allocations")
    return SearchConfig(budget=args.budget, trials=args.trials, seed=args.seed,
                        objectives=tuple(args.objectives) if args.objectives else None, sampler=args.sampler,
                        batch_size=args.batch, startup_trials=args.startup_trials, finetune_epochs=args.finetune_epochs, space=space)


def cmd_search(args) -> int:
    config = search_config(args)
    check_runs(args)
    check_workers(args)
    if config.objectives and "latency" in config.objectives and args.no_speed:
        raise ValueError("a latency objective needs speed measurement: drop --no-speed")
    executor = make_executor(args.executor, args.workers, args.address)
    ws = workspace_with_baseline(args)
    original_run(ws)
    bars_ = StageBars(not args.quiet)
    try:
        result = run_search(ws, config, executor, lambda done, total: bars_("search trials", done, total),
                            measure_speed=not args.no_speed, latency_runs=args.latency_runs)
    finally:
        bars_.close()
    for f in result.failed:
        log(f"trial failed: {RunConfig(**f['config']).label()}: {f['error']}")
    if result.interrupted:
        log("search interrupted: finished runs are stored; run the same command to resume")
    x, y = front_axes(result.objectives)
    log(f"{len(result.trials)} trials: {result.computed} computed, {result.cached} from the cache, "
        f"{len(result.failed)} failed; {len(result.runs)} distinct runs, {len(result.front)} on the "
        f"{y} vs {x} front; {result.seconds:.1f} s")
    human = "\n".join([f"front ({y} vs {x}):"]
                      + [f"  {axis_value(r, x):>12.6g}  {axis_value(r, y):.4f}  {run_summary(r)}" for r in result.front])
    emit(args, {"runs": result.runs, "computed": result.computed, "cached": result.cached,
                "failed": result.failed, "interrupted": result.interrupted, "seconds": result.seconds,
                "objectives": list(result.objectives), "trials": result.trials,
                "front": [r["cache_key"] for r in result.front],
                "search": {"budget": config.budget, "trials": config.trials, "seed": config.seed,
                           "sampler": config.sampler, "batch": config.batch_size,
                           "startup_trials": config.startup_trials}}, human)
    return 130 if result.interrupted else (1 if result.failed else 0)


def cmd_export_study(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_file():
        raise ValueError(f"--out is not a file: {out}")
    folder = out.parent.expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"folder of --out does not exist: {out.parent}")
    # An existing file is only ever added to when it is an SQLite database (a study store); checked
    # here, it is one line instead of SQLAlchemy's traceback, and the file is left as it was.
    if out.exists() and out.stat().st_size and out.read_bytes()[:16] != b"SQLite format 3\x00":
        raise ValueError(f"--out exists and is not an SQLite database (an Optuna study store): {out}")
    if not os.access(folder if not out.exists() else out, os.W_OK):
        raise ValueError(f"cannot write {out}: permission denied")
    if args.study_name is not None and not args.study_name.strip():
        raise ValueError("--study-name is empty")
    ws = workspace_from(args)
    runs = stored_runs(args, ws)
    url = sqlite_url(out)
    name = args.study_name or STUDY_NAME
    from sqlalchemy.exc import SQLAlchemyError  # optuna's storage layer; imported only for this command

    try:
        study, skipped = export_study(runs, url, name, attrs={"data": ws.data_label()})
    except SQLAlchemyError as exc:  # a locked, read-only or damaged database, a full disk
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise ValueError(f"cannot write the study to {out}: {reason}") from None
    n = len(study.trials)
    if skipped:
        log(f"{skipped} runs lack an objective value and were left out")
    emit(args, {"storage": url, "study_name": name, "trials": n, "skipped": skipped,
                "objectives": ["accuracy", "flops"]},
         f"{n} runs written as study '{name}' to {out}; open it with: optuna-dashboard {url}")
    return 0
