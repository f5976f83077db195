"""A compression run's configuration, and the one source of every default.

The CLI, the app and the benchmarks all build :class:`RunConfig` and read their defaults from here,
so "the default allocation" or "the default calibration size" means the same thing everywhere. A
config's canonical JSON, with the model and data fingerprints and the algorithm version, makes a
run's cache key (:func:`hscc_core.runs.pipeline.run_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hscc_core.compress.hscc import CLUSTER_SIDES
from hscc_core.compress.methods import ALLOCATIONS, METHODS, Settings, get_method

__all__ = ["ALLOCATIONS", "CLUSTER_SIDES", "DEFAULTS", "METHOD_NAMES", "RunConfig", "default_allocation",
           "describe_config", "run_name"]

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
}


def default_allocation(method: str, budget: float | None) -> str:
    """The allocation a run gets when none is asked for: greedy for HSCC in budget mode (it kept
    more agreement with the original than the uniform rule in every pair measured on the real
    data, docs/results.md), uniform otherwise (energy mode has one threshold by definition)."""
    return "greedy" if budget is not None and "greedy" in get_method(method).allocations else "uniform"


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
    calib_size : int
        Calibration images drawn (seeded) from the training split (>= 1).
    seed : int
        Seeds calibration sampling, k-means and fine-tuning.
    cluster_side : {"output", "input"}
        HSCC: cluster each region's output channels (the paper) or its input channels (HSCC+).
    allocation : {"uniform", "greedy"} or None
        Budget mode: one energy threshold for every block found by bisection, or directions bought
        across all blocks by captured relative energy per MAC. None (the default) resolves to
        :func:`default_allocation`.
    """

    method: str = DEFAULTS["method"]
    grid: int = DEFAULTS["grid"]
    clusters: int = DEFAULTS["clusters"]
    energy: float | None = DEFAULTS["energy"]
    budget: float | None = None
    finetune_epochs: int = DEFAULTS["finetune_epochs"]
    calib_size: int = DEFAULTS["calib_size"]
    seed: int = DEFAULTS["seed"]
    cluster_side: str = DEFAULTS["cluster_side"]
    allocation: str | None = None

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
        if self.budget is not None and not self.budget > 1:
            raise ValueError(f"budget must be > 1 (a compression factor), got {self.budget}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs}")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise ValueError(f"calib_size must be an integer >= 1, got {self.calib_size}")
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
        if self.allocation == "greedy" and self.budget is None:
            raise ValueError("allocation 'greedy' needs a budget (it spends one)")
        # 3 and 3.0 are the same budget: store floats so they share one cache key.
        for name in ("energy", "budget"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def mode(self) -> str:
        """``"energy"`` (a threshold is given) or ``"budget"`` (a FLOPs budget is given)."""
        return "energy" if self.budget is None else "budget"

    def settings(self) -> Settings:
        """What the method reads of this configuration."""
        return Settings(grid=self.grid, clusters=self.clusters, seed=self.seed, cluster_side=self.cluster_side)

    def canonical(self) -> dict:
        """The fields that matter for this method (the weight-only baselines ignore grid, clusters
        and calibration); the cache key is made of it."""
        d = asdict(self)
        if not get_method(self.method).data_aware:
            for name in ("grid", "clusters", "calib_size"):
                d.pop(name)
        # Defaults are left out so the cache keys of earlier runs stay valid.
        for name, default in (("cluster_side", "output"), ("allocation", "uniform")):
            if d[name] == default:
                d.pop(name)
        return d

    def label(self) -> str:
        """Short unique description, e.g. ``hscc G4 K8 tau=0.95`` (stored with the run)."""
        parts = [self.method]
        if self.method == "hscc":
            parts += [f"G{self.grid}", f"K{self.clusters}"]
            if self.cluster_side == "input":
                parts.append("in")
            if self.allocation == "greedy":
                parts.append("greedy")
        parts.append(f"{self.budget:g}x" if self.budget is not None else f"tau={self.energy:g}")
        if self.finetune_epochs:
            parts.append(f"ft{self.finetune_epochs}")
        return " ".join(parts)


def describe_config(config: Mapping[str, Any]) -> str:
    """A readable name of a run configuration, e.g. ``HSCC 2x2 regions, 4 input clusters, tau 0.95``."""
    method = config.get("method", "hscc")
    parts = [get_method(method).title if method in METHODS else str(method)]
    if method in METHODS and METHODS[method].data_aware:
        g, k = config.get("grid"), config.get("clusters")
        side = config.get("cluster_side") or "output"
        parts = [f"{parts[0]} {g}x{g} region{'s' if g != 1 else ''}, "
                 f"{k} {side} cluster{'s' if k != 1 else ''}"]
    if config.get("budget") is not None:
        rule = "greedy " if config.get("allocation") == "greedy" else ""
        parts.append(f"{rule}budget x{config['budget']:g}")
    elif config.get("energy") is not None:
        parts.append(f"tau {config['energy']:g}")
    epochs = config.get("finetune_epochs") or 0
    text = ", ".join(parts)
    return text + (f", {epochs} fine-tuning epoch{'s' if epochs != 1 else ''}" if epochs else "")


def run_name(run: Mapping[str, Any]) -> str:
    """The readable name of a stored run (``"Original model"`` for the original's)."""
    if run.get("method") == "original":
        return "Original model"
    return describe_config({**(run.get("config") or {}), "method": run.get("method", "hscc")})
