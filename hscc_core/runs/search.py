"""Multi-objective search over HSCC settings with Optuna, every trial a normal cached run.

Instead of the full product of a sweep, a sampler from Optuna (Akiba et al. 2019) proposes
configurations: multi-objective TPE (Ozaki et al. 2020, "Multiobjective tree-structured Parzen
estimator for computationally expensive optimization problems") by default, or NSGA-II (Deb et al.
2002). Every proposal becomes a :class:`~hscc_core.runs.pipeline.RunConfig`, executed by
:func:`hscc_core.runs.sweeps.run_sweep` (so the local process pool and Ray both work) and stored
like any other run; the study itself is not stored.

Resumable. The sampler is seeded and only sees the objective values of the runs, which the store
returns unchanged, so a rerun with the same settings proposes the same configurations in the same
order and finds every one of them in the store: it computes nothing. An interrupted search, rerun,
replays the stored trials and continues where it stopped.

Search space (:class:`SearchSpace`). Every setting takes values from a finite list (categorical
distributions), so trials land on the same configurations a grid sweep uses and reuse its runs.

* With a FLOPs budget ``B`` (the usual case): method HSCC, grid G, clusters K, cluster side,
  rank allocation (uniform energy found by bisection, or greedy) and calibration size. The budget
  fixes the compressed layers' FLOPs (within 2 %), so FLOPs is no objective: the settings trade
  accuracy (or agreement with the original) against what the budget leaves free, chiefly measured
  latency (regions and clusters cost kernel launches and memory traffic the FLOP count does not
  see) and parameters (factors per region and cluster add weights). Default objectives: accuracy
  vs latency (batch 1), or accuracy vs params when speed is not measured.
* Without a budget: the energy threshold joins the space (uniform allocation only) and FLOPs is
  free again: default objectives accuracy vs FLOPs.

The baselines are not searched: at a budget Global SVD and Tucker-2 have no setting left (one run
each: ``hscc sweep --methods "svd tucker" --budgets B``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from hscc_core.runs.pareto import axis_value, front_runs, get_axis
from hscc_core.runs.config import ALLOCATIONS, CLUSTER_SIDES, RunConfig
from hscc_core.runs.pipeline import run_key
from hscc_core.runs.sweeps import DEFAULT_ENERGIES, Executor, run_sweep
from hscc_core.runs.workspace import Workspace

__all__ = ["SAMPLERS", "SearchConfig", "SearchResult", "SearchSpace", "default_objectives", "front_axes", "run_search"]

SAMPLERS = ("tpe", "nsga2")


@dataclass(frozen=True)
class SearchSpace:
    """The values each HSCC setting may take (each a non-empty tuple).

    ``energies`` is used only without a budget; greedy allocation only with one. ``rank_multiples``
    (HSCC's speed constraint: every rank a multiple of the value) is searched only when it holds
    more than the default ``(1,)``, so a search of the default space proposes what it always did.
    """

    grids: tuple = (1, 2, 4, 8)
    clusters: tuple = (1, 2, 4, 8, 16)
    cluster_sides: tuple = CLUSTER_SIDES
    allocations: tuple = ALLOCATIONS
    calib_sizes: tuple = (128, 256, 512)
    energies: tuple = DEFAULT_ENERGIES
    rank_multiples: tuple = (1,)

    def __post_init__(self):
        for name in ("grids", "clusters", "cluster_sides", "allocations", "calib_sizes", "energies", "rank_multiples"):
            values = tuple(dict.fromkeys(getattr(self, name)))  # no repeats, order kept
            if not values:
                raise ValueError(f"search space: {name} needs at least one value")
            object.__setattr__(self, name, values)
        for name in ("grids", "clusters", "calib_sizes", "rank_multiples"):
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in getattr(self, name)):
                raise ValueError(f"search space: {name} must be integers >= 1, got {getattr(self, name)}")
        if any(v not in CLUSTER_SIDES for v in self.cluster_sides):
            raise ValueError(f"search space: cluster sides must be among {', '.join(CLUSTER_SIDES)}")
        if any(v not in ALLOCATIONS for v in self.allocations):
            raise ValueError(f"search space: allocations must be among {', '.join(ALLOCATIONS)}")
        if any(not 0 < float(v) <= 1 for v in self.energies):
            raise ValueError(f"search space: energies must be in (0, 1], got {self.energies}")
        object.__setattr__(self, "energies", tuple(float(v) for v in self.energies))


def default_objectives(budget: float | None, measure_speed: bool = True) -> tuple[str, str]:
    """Accuracy vs latency (or params without speed) at a budget; accuracy vs FLOPs without one."""
    if budget is None:
        return ("accuracy", "flops")
    return ("accuracy", "latency") if measure_speed else ("accuracy", "params")


@dataclass(frozen=True)
class SearchConfig:
    """One search: what is searched, for how long, and how.

    Attributes
    ----------
    budget : float or None
        Conv-FLOPs compression factor (> 1) every trial meets; None searches energy thresholds.
    trials : int
        Number of trials (>= 1); a trial that proposes a configuration already run is a cache hit.
    seed : int
        Seeds the sampler and every run (calibration sampling, k-means).
    objectives : tuple of two str or None
        Pareto axis names (:func:`hscc_core.runs.pareto.get_axis`), each minimised or maximised by
        its direction; None: :func:`default_objectives`.
    sampler : {"tpe", "nsga2"}
    batch_size : int
        Trials proposed at once and run together (in parallel with a pool or Ray). Part of what
        makes a rerun identical: keep it when resuming.
    startup_trials : int
        TPE: random trials before the model takes over; NSGA-II: the population size. Fixed
        rather than derived from ``trials``, so raising ``trials`` continues the same sequence.
    finetune_epochs : int
    space : SearchSpace
    """

    budget: float | None = None
    trials: int = 20
    seed: int = 0
    objectives: tuple | None = None
    sampler: str = "tpe"
    batch_size: int = 4
    startup_trials: int = 8
    finetune_epochs: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self):
        if self.budget is not None and not 1 < float(self.budget) < math.inf:  # before any trial runs
            raise ValueError(f"budget must be a finite number > 1 (a compression factor), got {self.budget}")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be an integer >= 1, got {self.trials}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r} (allowed: {', '.join(SAMPLERS)})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        if not isinstance(self.startup_trials, int) or self.startup_trials < 2:
            raise ValueError(f"startup_trials must be an integer >= 2, got {self.startup_trials}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs}")
        if self.objectives is not None:
            objectives = tuple(self.objectives)
            if len(objectives) != 2 or objectives[0] == objectives[1]:
                raise ValueError(f"give two different objectives, got {list(objectives)}")
            for name in objectives:
                get_axis(name)  # ValueError naming the allowed axes
            object.__setattr__(self, "objectives", objectives)
        if self.budget is not None:
            object.__setattr__(self, "budget", float(self.budget))
        elif self.space.allocations == ("greedy",):
            raise ValueError("greedy allocation needs a budget: give --budget or allow uniform allocation")

    def distributions(self) -> dict:
        """The Optuna distributions of the space (categorical: trials map onto sweep configurations)."""
        from optuna.distributions import CategoricalDistribution  # noqa: PLC0415

        s = self.space
        dists = {"grid": s.grids, "clusters": s.clusters, "cluster_side": s.cluster_sides,
                 "calib_size": s.calib_sizes}
        if self.budget is None:
            dists["energy"] = s.energies  # energy thresholds are the uniform rule
        else:
            dists["allocation"] = s.allocations
        if s.rank_multiples != (1,):  # a new parameter would change the default space's proposals
            dists["rank_multiple"] = s.rank_multiples
        return {name: CategoricalDistribution(list(values)) for name, values in dists.items()}

    def run_config(self, params: dict) -> RunConfig:
        """The run a trial's parameters describe."""
        return RunConfig(method="hscc", grid=int(params["grid"]), clusters=int(params["clusters"]),
                         cluster_side=params["cluster_side"], calib_size=int(params["calib_size"]),
                         energy=None if self.budget is not None else float(params["energy"]),
                         budget=self.budget, allocation=params.get("allocation", "uniform"),
                         finetune_epochs=self.finetune_epochs, seed=self.seed,
                         rank_multiple=int(params.get("rank_multiple", 1)))


@dataclass
class SearchResult:
    """What a search did, in the shape of a sweep's result plus its trials and front.

    ``runs`` holds each distinct run once, in trial order; ``trials`` one entry per trial
    (``number``, ``config``, ``cache_key``, ``values``, ``state``); ``front`` the runs on the
    Pareto front of the two objectives.
    """

    objectives: tuple
    runs: list = field(default_factory=list)
    trials: list = field(default_factory=list)
    front: list = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    failed: list = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False


def _sampler(config: SearchConfig):
    import optuna  # noqa: PLC0415

    if config.sampler == "nsga2":
        # Optuna's default population of 50 would make a 20-trial search a random one.
        return optuna.samplers.NSGAIISampler(population_size=config.startup_trials, seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials,
                                      multivariate=True, constant_liar=config.batch_size > 1)


def run_search(ws: Workspace, config: SearchConfig, executor: Executor | None = None,
               progress: Callable[[int, int], None] | None = None, measure_speed: bool = True,
               latency_runs: int = 20) -> SearchResult:
    """Run ``config.trials`` trials proposed by the sampler; each is a cached run.

    Parameters
    ----------
    ws : Workspace
        Must have its baseline.
    config : SearchConfig
    executor : Executor, optional
        Where runs compute (:func:`hscc_core.runs.executors.make_executor`); default in process.
    progress : callable, optional
        ``progress(trials_done, trials)``.
    measure_speed, latency_runs
        As for a sweep; a latency objective needs ``measure_speed``.

    Returns
    -------
    SearchResult
        ``computed`` + ``cached`` count trials (a configuration proposed twice is a cache hit the
        second time). A trial whose run failed or lacks an objective (a run stored without
        latency) is told to the sampler as failed and listed in ``failed``.
    """
    import optuna  # noqa: PLC0415

    objectives = config.objectives or default_objectives(config.budget, measure_speed)
    if "latency" in objectives and not measure_speed:
        raise ValueError("a latency objective needs speed measurement (drop --no-speed or pick another objective)")
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["minimize" if get_axis(o).direction == "min" else "maximize" for o in objectives]
    study = optuna.create_study(directions=directions, sampler=_sampler(config))
    dists = config.distributions()
    result = SearchResult(objectives=tuple(objectives))
    by_key: dict[str, dict] = {}
    done = 0
    if progress is not None:
        progress(0, config.trials)
    while done < config.trials and not result.interrupted:
        batch = [study.ask(dists) for _ in range(min(config.batch_size, config.trials - done))]
        configs = [config.run_config(t.params) for t in batch]
        unique = list({run_key(ws, None, c): c for c in configs}.values())
        sweep = run_sweep(ws, unique, executor, measure_speed=measure_speed, latency_runs=latency_runs)
        result.interrupted = sweep.interrupted
        runs = {r["cache_key"]: r for r in sweep.runs}
        errors = {run_key(ws, None, RunConfig(**f["config"])): f["error"] for f in sweep.failed}
        computed_now = {k for k, r in runs.items() if not r.get("cached")}
        for trial, cfg in zip(batch, configs):
            result.trials.append(_tell(study, trial, cfg, run_key(ws, None, cfg), runs, errors, computed_now,
                                       objectives, result, by_key))
            done += 1
        if progress is not None:
            progress(done, config.trials)
    x, y = front_axes(objectives)
    result.front = front_runs(result.runs, x, y)
    result.seconds = time.perf_counter() - start
    return result


def _tell(study, trial, cfg: RunConfig, key: str, runs: dict, errors: dict, computed_now: set, objectives,
          result: SearchResult, by_key: dict) -> dict:
    """Tell the sampler one trial's outcome; count it, keep its run, and return its trial entry."""
    from optuna.trial import TrialState  # noqa: PLC0415 - optuna is imported with the search

    run = runs.get(key)
    entry = {"number": trial.number, "config": asdict(cfg), "cache_key": key, "values": None}
    if run is None:
        # Interrupted before this run finished, or it failed: the sampler learns nothing from it.
        entry["state"] = "fail"
        error = errors.get(key, "interrupted before the run finished")
        if not result.interrupted or key in errors:
            result.failed.append({"config": asdict(cfg), "error": error})
        study.tell(trial, state=TrialState.FAIL)
        return entry
    values = [axis_value(run, o) for o in objectives]
    if key in computed_now:
        result.computed += 1
        computed_now.discard(key)  # a repeat within the batch is a cache hit
    else:
        result.cached += 1
    if key not in by_key:
        by_key[key] = run
        result.runs.append(run)
    if all(math.isfinite(v) for v in values):
        entry.update(values=values, state="complete")
        study.tell(trial, values)
    else:
        missing = [o for o, v in zip(objectives, values) if not math.isfinite(v)]
        entry["state"] = "fail"
        result.failed.append({"config": asdict(cfg), "error": f"the stored run has no {', '.join(missing)} "
                                                               "(computed without speed measurement?)"})
        study.tell(trial, state=TrialState.FAIL)
    return entry


def front_axes(objectives: Sequence[str]) -> tuple[str, str]:
    """``(x, y)`` for plotting two objectives: a cost (FLOPs, params, latency) goes on x."""
    costs = ("flops", "params", "latency")
    a, b = objectives
    return (b, a) if b in costs and a not in costs else (a, b)
