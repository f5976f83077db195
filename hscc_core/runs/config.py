"""A compression run's configuration, and the one source of every default.

The CLI, the app and the benchmarks all build :class:`RunConfig` and read their defaults from here,
so "the default allocation" or "the default calibration size" means the same thing everywhere. A
config's canonical JSON, with the model and data fingerprints and the algorithm version, makes a
run's cache key (:func:`hscc_core.runs.pipeline.run_key`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hscc_core.compress.hscc import CLUSTER_SIDES
from hscc_core.compress.methods import ALLOCATIONS, CALIBRATIONS, METHODS, Settings, get_method

__all__ = ["ALLOCATIONS", "ALLOCATION_TITLES", "CALIBRATIONS", "CALIBRATION_TITLES", "CLUSTER_SIDES", "DEFAULTS",
           "LEGACY", "METHOD_NAMES", "RunConfig", "calibration_count", "default_allocation", "describe_config",
           "describe_calibration_set", "run_name"]

METHOD_NAMES = tuple(METHODS)

# Every default of a run, in one place (DESIGN 3 and the HSCC+ measurements in docs/results.md).
DEFAULTS = {
    "method": "hscc",
    "grid": 2,
    "clusters": 4,
    "energy": 0.95,
    "budget": 3.0,  # the paper's smaller budget, for a user who switches to budget mode
    "finetune_epochs": 0,
    "calib_size": 256,
    "seed": 0,
    "cluster_side": "output",  # the paper's reading
    # Budget mode's allocation, the same for every method so that budget comparisons are like for
    # like: greedy kept more agreement with the original than the uniform rule in every pair measured
    # on the real data (docs/results.md). Energy mode has one threshold by definition.
    "allocation": "greedy",
    "calibration": "independent",
    "calib_flip": False,  # calibrate on the images only, or on them and their mirror images
    "rank_multiple": 1,  # no rounding of ranks (8: the speed-oriented constraint of issue #15)
}

# The rank multiples the app offers (the Explorer, the Runs page's search): 1 is no constraint, 8 and
# 16 fill the kernel's 16-float vectors (docs/performance.md, "Rank multiples on the real data").
RANK_MULTIPLES = (1, 2, 4, 8, 16)

# What runs did before each of these fields existed: a canonical config leaves a field out when it
# has this value, so the cache keys stored before the field existed keep their meaning whatever its
# default becomes.
LEGACY = {"cluster_side": "output", "allocation": "uniform", "calibration": "independent", "calib_flip": False,
          "rank_multiple": 1}
# Fields that only a data-aware method reads (the weight-only baselines read calibration images only
# to measure sensitivity).
_DATA_FIELDS = ("grid", "clusters", "calibration")
_CALIB_FIELDS = ("calib_size", "calib_flip")


# Readable names of the allocation and calibration rules (run names, tables, the app's choices).
ALLOCATION_TITLES = {"uniform": "uniform tau", "greedy": "greedy (energy per FLOP)",
                     "sensitivity": "greedy (sensitivity-priced)"}
CALIBRATION_TITLES = {"independent": "independent", "sequential": "sequential"}


# Budget-mode rules a method gets instead of DEFAULTS["allocation"], where that rule cripples it: a
# baseline must meet HSCC at its best, not at a rule that starves it. Global SVD under greedy energy per
# MAC keeps conv2 at rank 1 of 192 (its weight spectrum is flat and each direction costs many MACs):
# on the phantom at 3x it fell to chance, 25.00 % against 61.25 % with one threshold (hscc compress
# --method svd --budget 3 --allocation greedy|uniform, 2-core CPU, docs/fidelity.md). Tucker-2 on the
# real data (CPU-trained AlexNet, official split) lost 7.1 points at 3x and 5.6 at 6x under greedy
# against one threshold (p = 6e-08 and 9e-04; benchmarks/fidelity_ablation.py --steps allocation,
# docs/fidelity.md), although greedy had helped it on the phantom: the real data decide.
_BUDGET_RULES = {"svd": "uniform", "tucker": "uniform"}


def default_allocation(method: str, budget: float | None) -> str:
    """The allocation a run gets when none is asked for: in budget mode ``DEFAULTS["allocation"]``,
    or the method's own rule where that one is measured to serve it better (:data:`_BUDGET_RULES`);
    uniform in energy mode (one threshold by definition). Every rule stays available to every method,
    so like-for-like comparisons under one rule remain one option away."""
    if budget is None:
        return "uniform"
    rule = _BUDGET_RULES.get(method, DEFAULTS["allocation"])
    return rule if rule in get_method(method).allocations else "uniform"


def calibration_count(calib_size: int | str, available: int) -> int:
    """How many training images a calibration size draws from ``available`` ("all": every one)."""
    return available if calib_size == "all" else min(int(calib_size), available)


@dataclass(frozen=True)
class RunConfig:
    """One compression run's configuration.

    Attributes
    ----------
    method : {"hscc", "svd", "tucker"}
    grid : int
        HSCC region grid G >= 1 (ignored by the baselines).
    clusters : int
        HSCC cluster count K >= 1 (ignored by the baselines).
    energy : float or None
        Energy threshold tau in (0, 1]; None when ``budget`` chooses it.
    budget : float or None
        Compress the conv layers' FLOPs by this factor (> 1).
    finetune_epochs : int
        Fine-tuning epochs after compression (>= 0), same recipe for every method.
    calib_size : int or "all"
        Calibration images drawn (seeded) from the training split (>= 1), or the whole split.
    seed : int
        Seeds calibration sampling, k-means and fine-tuning.
    cluster_side : {"output", "input"}
        HSCC: cluster each region's output channels (the paper) or its input channels (HSCC+).
    allocation : {"uniform", "greedy", "sensitivity"} or None
        Budget mode: one energy threshold for every block found by bisection; directions bought
        across all blocks (every baseline layer) by captured relative energy per MAC; or the same
        with each layer's energy priced by its measured effect on the output
        (:mod:`hscc_core.compress.sensitivity`). None (the default) resolves to
        :func:`default_allocation`.
    calibration : {"independent", "sequential"} or None
        HSCC: fit every layer on the original's own inputs (the paper), or in forward order to the
        original's outputs from the compressed model's inputs
        (:mod:`hscc_core.compress.hscc.sequential`). None resolves to ``DEFAULTS["calibration"]``
        for a data-aware method and to "independent" for a weight-only one.
    calib_flip : bool
        Calibrate on the images and their horizontal mirror images (training's flip augmentation).
    rank_multiple : int
        HSCC: round every rank up to a multiple of this (>= 1; 1: no constraint).
    """

    method: str = DEFAULTS["method"]
    grid: int = DEFAULTS["grid"]
    clusters: int = DEFAULTS["clusters"]
    energy: float | None = DEFAULTS["energy"]
    budget: float | None = None
    finetune_epochs: int = DEFAULTS["finetune_epochs"]
    calib_size: int | str = DEFAULTS["calib_size"]
    seed: int = DEFAULTS["seed"]
    cluster_side: str = DEFAULTS["cluster_side"]
    allocation: str | None = None
    calibration: str | None = None
    calib_flip: bool = DEFAULTS["calib_flip"]
    rank_multiple: int = DEFAULTS["rank_multiple"]

    def __post_init__(self):
        method = get_method(self.method)  # ValueError naming the allowed methods
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {self.grid}")
        if not isinstance(self.clusters, int) or self.clusters < 1:
            raise ValueError(f"clusters must be an integer >= 1, got {self.clusters}")
        if self.budget is None and self.energy is None:
            raise ValueError("give either an energy threshold or a budget")
        if self.budget is not None and self.energy is not None:
            raise ValueError("give an energy threshold or a budget, not both")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.budget is not None and not 1 < self.budget < math.inf:  # inf cannot key a cache entry
            raise ValueError(f"budget must be a finite number > 1 (a compression factor), got {self.budget}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs}")
        if self.calib_size != "all" and (not isinstance(self.calib_size, int) or isinstance(self.calib_size, bool)
                                         or self.calib_size < 1):
            raise ValueError(f"calib_size must be an integer >= 1 or 'all', got {self.calib_size!r}")
        if not isinstance(self.calib_flip, bool):
            raise ValueError(f"calib_flip must be true or false, got {self.calib_flip!r}")
        if not isinstance(self.rank_multiple, int) or isinstance(self.rank_multiple, bool) or self.rank_multiple < 1:
            raise ValueError(f"rank_multiple must be an integer >= 1, got {self.rank_multiple!r}")
        if self.rank_multiple != 1 and not method.rank_multiples:
            raise ValueError(f"rank_multiple applies to method 'hscc' only (got {self.rank_multiple} for "
                             f"{method.title})")
        if self.cluster_side not in CLUSTER_SIDES:
            raise ValueError(f"cluster_side must be one of {', '.join(CLUSTER_SIDES)}, got {self.cluster_side!r}")
        if self.allocation is None:
            object.__setattr__(self, "allocation", default_allocation(self.method, self.budget))
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if not method.data_aware and self.cluster_side != DEFAULTS["cluster_side"]:
            raise ValueError("cluster_side applies to method 'hscc' only")
        if self.allocation not in method.allocations:
            raise ValueError(f"allocation {self.allocation!r} is not available for {method.title} "
                             f"(allowed: {', '.join(method.allocations)})")
        if self.allocation != "uniform" and self.budget is None:
            raise ValueError(f"allocation {self.allocation!r} needs a budget (it spends one)")
        if self.calibration is None:
            object.__setattr__(self, "calibration", DEFAULTS["calibration"] if method.data_aware
                               else "independent")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if self.calibration not in method.calibrations:
            raise ValueError(f"calibration {self.calibration!r} is not available for {method.title} "
                             f"(allowed: {', '.join(method.calibrations)}; it is weight-only)")
        # 3 and 3.0 are the same budget: store floats so they share one cache key.
        for name in ("energy", "budget"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_canonical(cls, config: Mapping[str, Any]) -> RunConfig:
        """The configuration a stored canonical config stands for (a run's ``config``, :meth:`canonical`).

        A field it leaves out is at its :data:`LEGACY` value, not at today's default: a budget run
        without ``allocation`` used the uniform rule, whereas ``RunConfig(**config)`` would give it
        today's default rule (greedy) and so another model. Fields that do not apply to the method
        are left out too, and their LEGACY values are accepted for it.
        """
        return cls(**{**LEGACY, **config})

    @property
    def mode(self) -> str:
        """``"energy"`` (a threshold is given) or ``"budget"`` (a FLOPs budget is given)."""
        return "energy" if self.budget is None else "budget"

    def settings(self) -> Settings:
        """What the method reads of this configuration."""
        return Settings(grid=self.grid, clusters=self.clusters, seed=self.seed, cluster_side=self.cluster_side)

    @property
    def reads_calibration(self) -> bool:
        """True when the run reads calibration images (a data-aware method, or sensitivity allocation)."""
        return get_method(self.method).data_aware or self.allocation == "sensitivity"

    def canonical(self) -> dict:
        """The fields that matter for this run (the weight-only baselines ignore grid, clusters and
        calibration, and calibration images unless they measure sensitivity); the cache key is
        made of it."""
        d = asdict(self)
        if not get_method(self.method).data_aware:
            for name in _DATA_FIELDS:
                d.pop(name)
        if not self.reads_calibration:
            for name in _CALIB_FIELDS:
                d.pop(name)
        # Fields at the value runs had before the field existed are left out (see LEGACY).
        for name, legacy in LEGACY.items():
            if name in d and d[name] == legacy:
                d.pop(name)
        return d

    def label(self) -> str:
        """Short unique description, e.g. ``hscc G4 K8 tau=0.95`` (stored with the run)."""
        parts = [self.method]
        if self.method == "hscc":
            parts += [f"G{self.grid}", f"K{self.clusters}"]
            if self.cluster_side == "input":
                parts.append("in")
        if self.allocation != "uniform":
            parts.append({"greedy": "greedy", "sensitivity": "sens"}[self.allocation])
        if self.calibration == "sequential":
            parts.append("seq")
        if self.reads_calibration:
            if self.calib_size != DEFAULTS["calib_size"]:
                parts.append(f"M{self.calib_size}")
            if self.calib_flip:
                parts.append("flip")
        if self.rank_multiple != 1:
            parts.append(f"r{self.rank_multiple}")
        parts.append(f"{self.budget:g}x" if self.budget is not None else f"tau={self.energy:g}")
        if self.finetune_epochs:
            parts.append(f"ft{self.finetune_epochs}")
        return " ".join(parts)


def describe_calibration_set(calib_size, flip: bool = False) -> str:
    """``"512 calibration images"``, ``"all training images"``, each ``" and their mirror images"``."""
    text = "all training images" if calib_size == "all" else \
        f"{calib_size} calibration image{'s' if calib_size != 1 else ''}"
    return text + (" and their mirror images" if flip else "")


def describe_config(config: Mapping[str, Any]) -> str:
    """A readable name of a run configuration, e.g. ``HSCC 2x2 regions, 4 input clusters, tau 0.95``.

    Every choice away from its default is named (a budget's allocation rule always, since the
    default rule differs between the modes); fields missing from a stored canonical config are at
    their :data:`LEGACY` values.
    """
    method = config.get("method", "hscc")
    parts = [get_method(method).title if method in METHODS else str(method)]
    data_aware = method in METHODS and METHODS[method].data_aware
    if data_aware:
        g, k = config.get("grid"), config.get("clusters")
        side = config.get("cluster_side") or "output"
        parts = [f"{parts[0]} {g}x{g} region{'s' if g != 1 else ''}, "
                 f"{k} {side} cluster{'s' if k != 1 else ''}"]
    allocation = config.get("allocation") or LEGACY["allocation"]
    if config.get("budget") is not None:
        rule = {"uniform": "uniform-tau ", "greedy": "greedy ",
                "sensitivity": "sensitivity-greedy "}.get(allocation, "")
        parts.append(f"{rule}budget x{config['budget']:g}")
    elif config.get("energy") is not None:
        parts.append(f"tau {config['energy']:g}")
    if config.get("calibration") == "sequential":
        parts.append("sequential calibration")
    # Calibration images matter to the data-aware methods and to sensitivity allocation only.
    if (data_aware or allocation == "sensitivity") and "calib_size" in config:
        size, flip = config.get("calib_size"), bool(config.get("calib_flip"))
        if size != DEFAULTS["calib_size"] or flip != DEFAULTS["calib_flip"]:
            parts.append(describe_calibration_set(size, flip))
    if config.get("rank_multiple", 1) != 1:
        parts.append(f"ranks in multiples of {config['rank_multiple']}")
    epochs = config.get("finetune_epochs") or 0
    text = ", ".join(parts)
    return text + (f", {epochs} fine-tuning epoch{'s' if epochs != 1 else ''}" if epochs else "")


def run_name(run: Mapping[str, Any]) -> str:
    """The readable name of a stored run (``"Original model"`` for the original's)."""
    if run.get("method") == "original":
        return "Original model"
    return describe_config({**(run.get("config") or {}), "method": run.get("method", "hscc")})
