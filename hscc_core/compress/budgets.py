"""Compression budgets: the energy threshold that meets "compress to B x" (DESIGN 3.7).

A budget B asks that the compressed layers' MACs be at most their original MACs / B and within
``tol`` (2 %) of that target. Every method here (HSCC, Vacavant et al. 2026, arXiv 2604.23375; Global
SVD; Tucker-2) has MACs that are a monotone non-decreasing step function of the energy threshold
tau, so the largest feasible tau is found by bisection on a cost function tau -> MACs. Because the
cost is a step function, no tau may land inside the 2 % window; the closest feasible plan is then
reported with ``met=False`` and a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BudgetResult", "MIN_ENERGY", "search_energy"]

# Lowest energy tried: below 1 / (largest block size) every block already has rank 1.
MIN_ENERGY = 1e-6


@dataclass(frozen=True)
class BudgetResult:
    """Outcome of a budget search: the chosen ``energy`` and its ``macs`` against ``target_macs``."""

    energy: float
    macs: int
    target_macs: float
    original_macs: int
    met: bool
    message: str

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.original_macs <= 0 or self.target_macs <= 0:
            raise ValueError("original_macs and target_macs must be > 0")

    @property
    def achieved_ratio(self) -> float:
        """original_macs / macs (the compression actually reached)."""
        return self.original_macs / self.macs if self.macs else float("inf")


def search_energy(
    cost_fn: Callable[[float], int],
    original_macs: int,
    budget: float,
    tol: float = 0.02,
    iters: int = 40,
) -> BudgetResult:
    """Largest energy whose MACs fit ``original_macs / budget``, by bisection.

    Parameters
    ----------
    cost_fn : callable(energy) -> int
        MACs of the compressed layers at an energy in (0, 1]; monotone non-decreasing.
    original_macs : int
        MACs of the same layers uncompressed.
    budget : float
        Compression factor B > 1.
    tol : float
        Relative window below the target that still counts as meeting it (0 <= tol < 1).
    iters : int
        Bisection steps (40 resolves tau to ~1e-12).

    Returns
    -------
    BudgetResult
        ``met`` is True when ``target * (1 - tol) <= macs <= target``. When no energy is feasible
        the cheapest plan (energy ``MIN_ENERGY``) is returned with ``met=False``.
    """
    if not budget > 1.0:
        raise ValueError(f"budget must be > 1, got {budget}")
    if not 0.0 <= tol < 1.0:
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    if original_macs <= 0:
        raise ValueError(f"original_macs must be > 0, got {original_macs}")
    target = original_macs / budget
    floor = target * (1.0 - tol)

    def result(energy: float, macs: int, met: bool, message: str) -> BudgetResult:
        return BudgetResult(float(energy), int(macs), target, int(original_macs), met, message)

    lo, c_lo = MIN_ENERGY, int(cost_fn(MIN_ENERGY))
    if c_lo > target:
        return result(
            lo, c_lo, False,
            f"budget {budget:g}x infeasible: the cheapest plan needs {c_lo} MACs "
            f"(x{original_macs / c_lo:.2f}) > target {target:.0f}; returning the cheapest plan",
        )
    hi, c_hi = 1.0, int(cost_fn(1.0))
    if c_hi <= target:
        met = c_hi >= floor
        msg = (
            f"budget {budget:g}x met at energy 1"
            if met
            else f"budget {budget:g}x not met: even energy 1 gives only {c_hi} MACs, "
            f"below the target window [{floor:.0f}, {target:.0f}]"
        )
        return result(1.0, c_hi, met, msg)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        c = int(cost_fn(mid))
        if c <= target:
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
    if c_lo >= floor:
        return result(lo, c_lo, True, f"budget {budget:g}x met: {c_lo} MACs at energy {lo:.6f}")
    return result(
        lo, c_lo, False,
        f"budget {budget:g}x not met within {tol:.0%}: no energy lands in [{floor:.0f}, {target:.0f}] "
        f"MACs; closest feasible plan has {c_lo} MACs ({c_lo / target:.1%} of target) at energy "
        f"{lo:.6f}, the next step up has {c_hi} MACs",
    )
