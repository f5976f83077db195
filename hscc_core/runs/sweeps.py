"""Sweeps: many compression runs over a Cartesian product of settings, resumable and cached.

The sweep logic (expanding configurations, skipping what the store already holds, counting,
reporting) is separate from *where* runs execute: an ``Executor`` maps a picklable task function over
tasks and yields results as they finish. ``LocalExecutor`` runs them in this process or in a pool of
local processes; a cluster engine (Ray, Dask) plugs in by implementing the same two-method protocol.

Runs sharing a grid reuse its calibration statistics through the run store (computed once under a
lock, whichever worker gets there first); tasks are ordered by grid so this happens early.

Concurrent sweeps on one cache split the work: a run is claimed in the store
(``RunStore.try_claim``) just before it is handed to a worker and released once stored, and
executors take tasks lazily (about one per worker in flight), so a second sweep skips what the
first is computing, computes the rest, then waits for the first one's runs and reports them as
cached. A claim dies with its process, so a killed sweep's runs are picked up by the other.
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Iterable, Iterator, Protocol

from hscc_core.compress.hscc import cluster_side
from hscc_core.compress.methods import get_method
from hscc_core.runs.config import ALLOCATIONS, DEFAULTS, METHOD_NAMES, RunConfig
from hscc_core.runs.pipeline import calibration_stats, compute_run, original_run, run_key
from hscc_core.runs.store import Claim, RunStore
from hscc_core.runs.workspace import Workspace

DEFAULT_GRIDS = (1, 2, 4)
DEFAULT_CLUSTERS = (1, 2, 4, 8)
DEFAULT_ENERGIES = (0.8, 0.9, 0.95, 0.98, 0.995)


def expand(methods: Iterable[str] = METHOD_NAMES, grids: Iterable[int] = DEFAULT_GRIDS,
           clusters: Iterable[int] = DEFAULT_CLUSTERS, energies: Iterable[float] = DEFAULT_ENERGIES,
           budgets: Iterable[float] = (), finetune_epochs: Iterable[int] = (0,),
           calib_size: int | str = DEFAULTS["calib_size"], seed: int = 0, cluster_sides: Iterable[str] = ("output",),
           allocations: Iterable[str] | None = None, calibration: str | None = None,
           calib_flip: bool = DEFAULTS["calib_flip"], rank_multiple: int | Iterable[int] = DEFAULTS["rank_multiple"]
           ) -> list[RunConfig]:
    """Every configuration of the product, once each, HSCC grids grouped together.

    ``rank_multiple`` is one rank multiple or several (HSCC runs are made for each; the speed
    constraint of ``docs/performance.md``, section "Rank multiples on the real data").
    Baselines ignore grid, cluster count, cluster side, calibration and rank multiples, so they get
    one run per energy/budget, allocation and fine-tuning setting; the budget allocations (greedy,
    sensitivity) only pair with budgets. With ``allocations=None`` each target gets its default:
    uniform for energies, :func:`~hscc_core.runs.config.default_allocation` for budgets. Invalid
    values raise ``ValueError`` (from ``RunConfig``) before anything runs.
    """
    targets = [{"energy": float(e), "budget": None} for e in energies]
    targets += [{"energy": None, "budget": float(b)} for b in budgets]
    if not targets:
        raise ValueError("a sweep needs at least one energy or budget")
    methods, grids, clusters = list(methods), list(grids), list(clusters)
    finetune_epochs, cluster_sides = list(finetune_epochs), list(cluster_sides)
    # An empty list or an unknown allocation made no run and a "0 runs" success: refused instead.
    for name, values in (("methods", methods), ("grid", grids), ("clusters", clusters),
                         ("finetune-epochs", finetune_epochs), ("cluster-sides", cluster_sides)):
        if not values:
            raise ValueError(f"a sweep needs at least one value of --{name}")
    if allocations is not None:
        allocations = list(allocations)
        if not allocations:
            raise ValueError("a sweep needs at least one value of --allocations")
        unknown = [a for a in allocations if a not in ALLOCATIONS]
        if unknown:
            raise ValueError(f"unknown allocation {unknown[0]!r} (allowed: {', '.join(ALLOCATIONS)})")
        if all(a != "uniform" for a in allocations) and not budgets:
            raise ValueError(f"allocation {allocations[0]!r} spends a budget: give --budgets (energy thresholds "
                             "are the uniform rule)")
    multiples = [rank_multiple] if isinstance(rank_multiple, int) else list(dict.fromkeys(rank_multiple))
    if not multiples:
        raise ValueError("a sweep needs at least one rank multiple")
    seen, out = set(), []
    for method in methods:
        data_aware = get_method(method).data_aware
        shapes = itertools.product(grids, clusters) if data_aware else [(1, 1)]
        allocs = list(allocations) if allocations is not None else [None]
        sides = cluster_sides if data_aware else [DEFAULTS["cluster_side"]]
        own = [{"calibration": calibration, "rank_multiple": m} for m in multiples] if data_aware else [{}]
        for (g, k), t, ft, side, alloc, extra in itertools.product(list(shapes), targets, finetune_epochs, sides,
                                                                    allocs, own):
            if alloc not in (None, "uniform") and t["budget"] is None:
                continue  # greedy rules spend a budget; energy thresholds are the uniform rule
            cfg = RunConfig(method=method, grid=int(g), clusters=int(k), finetune_epochs=int(ft),
                            calib_size=calib_size, seed=seed, cluster_side=side, allocation=alloc,
                            calib_flip=calib_flip, **extra, **t)
            ident = tuple(sorted(cfg.canonical().items()))
            if ident not in seen:
                seen.add(ident)
                out.append(cfg)
    return sorted(out, key=lambda c: (c.method != "hscc", c.grid if c.method == "hscc" else 0))


# ---- execution --------------------------------------------------------------------------------

class Executor(Protocol):
    """Where sweep tasks run. ``submit_all`` yields ``(task, result or exception)`` as tasks finish.

    ``tasks`` is an iterable taken lazily, about one task per free worker (the sweep claims each
    run as it is taken, so a concurrent sweep can take the others).
    """

    def submit_all(self, fn: Callable[[Any], Any], tasks: Iterable) -> Iterator[tuple[Any, Any]]: ...

    def shutdown(self) -> None: ...


class LocalExecutor:
    """Run tasks in this process (``workers=1``) or in a pool of spawned local processes."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit_all(self, fn, tasks):
        if self.workers == 1:
            for task in tasks:
                try:
                    yield task, fn(task)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported per task, the sweep goes on
                    yield task, exc
            return
        todo = iter(tasks)
        pending: dict = {}

        def top_up() -> None:
            # One task per worker in flight: the rest stay unclaimed for a concurrent sweep.
            for task in itertools.islice(todo, self.workers - len(pending)):
                if self._pool is None:
                    # spawn, not fork: forking a process that has started torch's thread pool can
                    # deadlock. Started on the first task, so a pass with nothing to do costs nothing.
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                     initializer=_init_worker, initargs=(self.workers,))
                pending[self._pool.submit(fn, task)] = task

        top_up()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                exc = fut.exception()
                yield task, (exc if exc is not None else fut.result())
            top_up()
        self.shutdown()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _init_worker(workers: int) -> None:
    import torch  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - installed with scikit-learn

    # Share the machine's cores between workers instead of oversubscribing them: torch's pool and
    # also numpy's BLAS and scikit-learn's OpenMP pools (SVD, Tucker-2's HOOI, k-means), which
    # otherwise each start one thread per core in every worker. Measured on a 16-core machine with
    # 8 workers: a Tucker-2 run took 190 s and a Global SVD run 57 s that way.
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


@dataclass(frozen=True)
class SweepTask:
    """A picklable unit of work: the workspace description and one configuration."""

    workspace: dict
    config: dict
    measure_speed: bool = True
    latency_runs: int = 20
    key: str = ""  # the run's cache key (the sweep's claim), unused by workers


_WORKSPACES: dict[str, Workspace] = {}


def run_task(task: SweepTask) -> tuple[dict, dict]:
    """Compute one run without storing it; returns ``(run, arrays)`` for the sweep's single writer.

    The workspace is built once per worker process and reused across its tasks.
    """
    ident = repr(sorted(task.workspace.items()))
    ws = _WORKSPACES.get(ident)
    if ws is None:
        ws = _WORKSPACES[ident] = Workspace.from_spec(task.workspace)
    return compute_run(ws, RunConfig(**task.config), measure_speed=task.measure_speed,
                       latency_runs=task.latency_runs)


def prepare_shared(ws: Workspace, configs: list[RunConfig]) -> None:
    """Compute, once and in this process, what every task reads: the original's run and each set of
    calibration statistics the data-aware runs need (workers then only read them from the store)."""
    original_run(ws)
    model, meta = ws.baseline(train_if_missing=False)
    needed = {}
    for c in configs:
        if get_method(c.method).data_aware:
            side = cluster_side(c.cluster_side)
            ident = (side.name, tuple(sorted(side.stats_key(c.grid, c.clusters).items())), str(c.calib_size),
                     c.seed, c.calib_flip)
            needed.setdefault(ident, (side, c))
    for _, (side, c) in sorted(needed.items(), key=lambda item: item[0]):
        calibration_stats(ws, model, meta, side, c.grid, c.clusters, c.calib_size, c.seed, flip=c.calib_flip)


@dataclass
class SweepResult:
    """What a sweep did: every run it covers, and how many were computed, cached or failed.

    ``computed`` counts only the runs this sweep computed and stored; runs another process
    computed meanwhile count as ``cached`` and also as ``elsewhere``.
    """

    runs: list[dict] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    elsewhere: int = 0


def run_sweep(ws: Workspace, configs: list[RunConfig], executor: Executor | None = None,
              progress: Callable[[int, int], None] | None = None, measure_speed: bool = True,
              latency_runs: int = 20) -> SweepResult:
    """Run every configuration not already stored; return all of them.

    Parameters
    ----------
    ws : Workspace
        Must have its baseline (``hscc prepare``).
    configs : list of RunConfig
    executor : Executor, optional
        Default: ``LocalExecutor(1)``, in this process.
    progress : callable, optional
        ``progress(done, total)`` over the runs that need computing.

    Returns
    -------
    SweepResult
        On Ctrl-C the runs finished so far are returned with ``interrupted=True``; they are stored,
        so running the same sweep again resumes where it stopped.
    """
    start = time.perf_counter()
    executor = executor or LocalExecutor(1)
    result = SweepResult()
    todo: list[SweepTask] = []
    repeats: list[str] = []  # a configuration given twice (the bench's rows and ablation share one)
    for cfg in configs:
        key = run_key(ws, None, cfg)  # also refuses a grid beyond the model's max_grid, before any work
        stored = ws.store.get_run(key)
        if stored is not None:
            result.runs.append(dict(stored, cached=True))
            result.cached += 1
        elif key in {t.key for t in todo}:
            repeats.append(key)
        else:
            todo.append(SweepTask(ws.spec(), asdict(cfg), measure_speed, latency_runs, key))
    total, done = len(todo), 0
    if progress is not None:
        progress(0, total)

    def took_elsewhere(stored: dict) -> None:
        nonlocal done
        result.runs.append(dict(stored, cached=True))
        result.cached += 1
        result.elsewhere += 1
        done += 1
        if progress is not None:
            progress(done, total)

    claims: dict[str, Claim] = {}
    try:
        if todo:
            prepare_shared(ws, [RunConfig(**t.config) for t in todo])
        while todo:
            held: list[SweepTask] = []  # claimed by another process right now
            tasks = _claimed(ws.store, todo, claims, held, took_elsewhere)
            for task, outcome in executor.submit_all(run_task, tasks):
                claim = claims.pop(task.key)
                try:
                    if isinstance(outcome, BaseException):
                        result.failed.append({"config": task.config,
                                              "error": f"{type(outcome).__name__}: {outcome}"})
                    else:
                        # The one writer: workers compute, only this process stores (under its claim).
                        ws.store.put_run(task.key, *outcome)
                        result.runs.append(dict(ws.store.get_run(task.key), cached=False))
                        result.computed += 1
                finally:
                    claim.release()
                done += 1
                if progress is not None:
                    progress(done, total)
            if held:
                # Everything else is done: wait until the holder of one of these releases it (it
                # stored the run, or it died and the run is ours to compute), then look again.
                with ws.store.lock(held[0].key):
                    pass
            todo = held
    except KeyboardInterrupt:
        result.interrupted = True
        executor.shutdown()
    finally:
        for claim in claims.values():
            claim.release()
    for key in repeats:  # computed once above: served from the store
        stored = ws.store.get_run(key)
        if stored is not None:
            result.runs.append(dict(stored, cached=True))
            result.cached += 1
    result.seconds = time.perf_counter() - start
    return result


def _claimed(store: RunStore, tasks: list[SweepTask], claims: dict[str, Claim], held: list[SweepTask],
             took_elsewhere: Callable[[dict], None]) -> Iterator[SweepTask]:
    """Yield the tasks this process claims, lazily (as the executor has room for them).

    A task another process holds goes to ``held``; one whose run appeared meanwhile (another
    sweep stored it) is passed to ``took_elsewhere`` instead of being computed again.
    """
    for task in tasks:
        claim = store.try_claim(task.key)
        if claim is None:
            held.append(task)
            continue
        stored = store.get_run(task.key)
        if stored is not None:
            claim.release()
            took_elsewhere(stored)
            continue
        claims[task.key] = claim
        yield task
