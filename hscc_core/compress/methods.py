"""Compression methods behind one small interface, looked up by name.

Every method (HSCC, Vacavant et al. 2026, arXiv 2604.23375; Global SVD; Tucker-2) takes the same
steps (DESIGN 3): ``decompose`` once per model and setting (everything that does not depend on the
energy threshold), ``plan`` the ranks for one energy threshold (cheap, so a budget is met by
bisection over it), and ``build`` a deep copy of the model with real factorised modules. A plan
reports its analytical ``macs()`` and typed per-layer ``summaries()``
(:class:`hscc_core.compress.summary.LayerSummary`). :func:`make_plan` applies a run's target: an
energy threshold, or a FLOPs budget met by one shared threshold (``uniform``) or by greedy
allocation (``greedy``: captured relative energy per MAC; ``sensitivity``: the same, each layer's
energy priced by its measured effect on the output, :mod:`hscc_core.compress.sensitivity`), for
every method alike. A data-aware method may also fit its plan sequentially (``fit_sequential``,
:mod:`hscc_core.compress.hscc.sequential`): the ranks stay, each layer is refitted in forward order
to the original's outputs from the compressed model's inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from hscc_core.compress.allocation import greedy_budget
from hscc_core.compress.budgets import search_energy
from hscc_core.compress.hscc import build_hscc, cluster_side, plan_at_energy
from hscc_core.compress.hscc.sequential import CrossSource, fit_sequential
from hscc_core.compress.sensitivity import Sensitivity, sensitivity_plan
from hscc_core.compress.svd import build_svd, plan_svd, svd_decompose
from hscc_core.compress.tucker import build_tucker, plan_tucker, tucker_decompose

__all__ = ["ALLOCATIONS", "CALIBRATIONS", "METHODS", "Method", "Settings", "StatsSource", "get_method",
           "make_plan"]

# Budget mode: one energy for every block (the paper's rule), budget-greedy by relative energy per
# MAC (DESIGN 3.9), or the same greedy with each layer's energy priced by its measured sensitivity.
ALLOCATIONS = ("uniform", "greedy", "sensitivity")
# Each layer fitted on the original's own inputs (the paper), or in forward order on the compressed
# model's inputs (Zhang et al. 2016, section 3.3).
CALIBRATIONS = ("independent", "sequential")

# (side, grid, clusters) -> the side's calibration statistics; the caller caches them.
StatsSource = Callable[[Any, int, int], dict]


@dataclass(frozen=True)
class Settings:
    """What a method reads of a run's configuration (the rest is the run's business)."""

    grid: int = 1
    clusters: int = 1
    seed: int = 0
    cluster_side: str = "output"


class Method(Protocol):
    """A compression method (see module docstring)."""

    name: str
    title: str
    data_aware: bool  # reads calibration data (grid, clusters and calibration size matter)
    allocations: tuple[str, ...]  # allocation rules it supports in budget mode
    calibrations: tuple[str, ...]  # calibration rules it supports
    rank_multiples: bool  # plans can round ranks to multiples (the speed-oriented constraint)

    def decomposition_key(self, settings: Settings) -> tuple: ...

    def decompose(self, model: nn.Module, input_shape: tuple[int, ...], settings: Settings,
                  stats: StatsSource) -> Any: ...

    def plan(self, decomp: Any, energy: float, multiple: int = 1) -> Any: ...

    def build(self, model: nn.Module, plan: Any) -> nn.Module: ...

    def fit_sequential(self, model: nn.Module, plan: Any, cross: CrossSource) -> Any: ...


class _HSCC:
    name, title, data_aware, allocations, calibrations, rank_multiples = (
        "hscc", "HSCC", True, ALLOCATIONS, CALIBRATIONS, True)

    def decomposition_key(self, s: Settings) -> tuple:
        return (s.cluster_side, s.grid, s.clusters, s.seed)

    def decompose(self, model, input_shape, s, stats):
        side = cluster_side(s.cluster_side)
        return side.decompose(model, stats(side, s.grid, s.clusters), s.clusters, s.seed)

    def plan(self, decomp, energy, multiple=1):
        return plan_at_energy(decomp, energy, multiple)

    def build(self, model, plan):
        return build_hscc(model, plan)

    def fit_sequential(self, model, plan, cross):
        return fit_sequential(model, plan, cross)


class _WeightOnly:
    """What the weight-only baselines share: no data, one calibration (none: the weights alone), no
    rank multiples. A sequential fit would read data, which is what they are the baseline against
    (docs/fidelity.md)."""

    data_aware, allocations, calibrations, rank_multiples = False, ALLOCATIONS, ("independent",), False

    def fit_sequential(self, model, plan, cross):
        raise ValueError(f"{self.title} is weight-only: it has no sequential calibration")

    @staticmethod
    def _one(multiple: int) -> None:
        if multiple != 1:
            raise ValueError("rank multiples apply to HSCC only")


class _GlobalSVD(_WeightOnly):
    name, title = "svd", "Global SVD"

    def decomposition_key(self, s: Settings) -> tuple:
        return ()  # weight-only: nothing but the model

    def decompose(self, model, input_shape, s, stats):
        return svd_decompose(model, input_shape=input_shape)

    def plan(self, decomp, energy, multiple=1):
        self._one(multiple)
        return plan_svd(decomp, energy)

    def build(self, model, plan):
        return build_svd(model, plan)


class _Tucker2(_WeightOnly):
    name, title = "tucker", "Tucker-2"

    def decomposition_key(self, s: Settings) -> tuple:
        return (s.seed,)

    def decompose(self, model, input_shape, s, stats):
        return tucker_decompose(model, input_shape=input_shape, seed=s.seed)

    def plan(self, decomp, energy, multiple=1):
        self._one(multiple)
        return plan_tucker(decomp, energy)

    def build(self, model, plan):
        return build_tucker(model, plan)


METHODS: dict[str, Method] = {m.name: m for m in (_HSCC(), _GlobalSVD(), _Tucker2())}


def get_method(name: str) -> Method:
    """The method called ``name`` (``"hscc"``, ``"svd"`` or ``"tucker"``)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}' (allowed: {', '.join(METHODS)})") from None


def make_plan(method: Method, decomp: Any, energy: float | None = None, budget: float | None = None,
              allocation: str = "uniform", sensitivity: Sensitivity | None = None,
              multiple: int = 1) -> tuple[Any, Any]:
    """The plan for a run's target, and the budget outcome (None in energy mode).

    Parameters
    ----------
    method : Method
    decomp
        ``method.decompose(...)``.
    energy : float, optional
        Energy threshold tau in (0, 1] (energy mode).
    budget : float, optional
        Compress the layers' MACs by this factor (budget mode, DESIGN 3.7).
    allocation : {"uniform", "greedy", "sensitivity"}
        Budget mode: one shared threshold found by bisection, greedy allocation, or greedy
        allocation priced by the layers' measured sensitivities.
    sensitivity : Sensitivity, optional
        ``sensitivity``: the layers' measured KL curves
        (:func:`hscc_core.compress.sensitivity.layer_sensitivity`); the outcome's ``prices`` say
        how they priced the layers for this budget.
    multiple : int
        Round every rank to a multiple of this (HSCC only; 1: no constraint).

    Returns
    -------
    (plan, outcome)
        ``outcome`` is a :class:`hscc_core.compress.budgets.BudgetResult` (uniform) or
        :class:`hscc_core.compress.allocation.GreedyBudget` (greedy, sensitivity) in budget mode.
    """
    if (energy is None) == (budget is None):
        raise ValueError("give either an energy threshold or a budget")
    if allocation not in method.allocations:
        raise ValueError(f"allocation {allocation!r} is not available for {method.title} "
                         f"(allowed: {', '.join(method.allocations)})")
    if (allocation == "sensitivity") != (sensitivity is not None):
        raise ValueError("layer sensitivities go with allocation 'sensitivity', and only with it")
    if budget is None:
        return method.plan(decomp, energy, multiple), None
    if allocation == "greedy":
        return greedy_budget(decomp, budget, multiple=multiple)
    if allocation == "sensitivity":
        return greedy_budget(decomp, budget, plan_fn=lambda t: sensitivity_plan(decomp, t, sensitivity, multiple))
    outcome = search_energy(lambda e: method.plan(decomp, e, multiple).macs(), decomp.original_macs, budget)
    return method.plan(decomp, outcome.energy, multiple), outcome
