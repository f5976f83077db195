"""Layer sensitivity: what an error in each layer costs at the output, for sensitivity-aware allocation.

Greedy allocation (:mod:`hscc_core.compress.allocation`, HSCC+ of DESIGN 3.9 on HSCC, Vacavant et
al. 2026, arXiv 2604.23375) buys directions by relative energy per MAC, which weighs a lost percent
of energy alike in every layer. It is not alike: on the real data an error in conv1 costs far more
than the same relative error in conv5 (docs/results.md). Here each layer is priced by its measured
effect on the output, in the spirit of sensitivity-based mixed-precision allocation (e.g. Dong et
al. 2019, "HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision"): only layer l
is truncated, with the method's own rule, at a few energy thresholds tau; the mean KL divergence
from the original's class probabilities on calibration images is measured against the fraction d
of the layer's energy the truncation discards. That gives each layer a measured curve KL_l(d)
(piecewise linear through the origin and the measured points, :meth:`Sensitivity.kl`), and the
output KL of a plan is modelled as their sum (errors assumed additive).

The curves are far from linear (on the phantom conv1's KL grows 46-fold when d triples from 0.04),
so no single price per layer fits every budget. :func:`sensitivity_plan` linearises them where the
plan is: starting from the energy-greedy plan, it prices each layer by the slope of its curve at the
energy the plan discards there, re-plans greedily with those prices, and repeats; of the plans it
visits it keeps the one with the lowest modelled KL, so it never does worse than energy-greedy
under the model. The curves are measured once per model, method decomposition and calibration set
(the caller caches :class:`Sensitivity`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.compress.allocation import greedy_plan

__all__ = ["ITERATIONS", "SENSITIVITY_ENERGIES", "SENSITIVITY_IMAGES", "Sensitivity", "layer_sensitivity",
           "sensitivity_plan"]

# Thresholds at which each layer alone is truncated: the budgets' operating points (the 3x and 6x
# budgets keep 80-98 % of a layer's energy) without reaching the collapse of tau 0.5.
SENSITIVITY_ENERGIES = (0.8, 0.9, 0.95, 0.98)
# Calibration images the KL is measured on (a seeded subset when the calibration set is larger).
SENSITIVITY_IMAGES = 128
# Re-plannings of sensitivity_plan (each a greedy plan: cheap next to one forward pass).
ITERATIONS = 4
_FLOOR = 1e-3  # smallest price, relative to the largest: no layer is ever free


@dataclass(frozen=True)
class Sensitivity:
    """Per layer, the measured (discarded energy fraction, KL) points; ``weights`` are the layers'
    prices at the plan a run used (set by :func:`sensitivity_plan`; empty as measured)."""

    points: dict[str, list[tuple[float, float]]]
    weights: dict[str, float] | None = None

    def kl(self, name: str, discarded: float) -> float:
        """KL_l(d): piecewise linear through (0, 0) and the measured points, extended by the last slope."""
        d, k = self._curve(name)
        if discarded <= d[-1]:
            return float(np.interp(discarded, d, k))
        return float(k[-1] + self._slopes(d, k)[-1] * (discarded - d[-1]))

    def slope(self, name: str, discarded: float) -> float:
        """dKL_l/dd at ``discarded`` (the segment it lies on; the first segment at 0, the last beyond)."""
        d, k = self._curve(name)
        i = int(np.clip(np.searchsorted(d, discarded, side="right") - 1, 0, d.size - 2))
        return float(self._slopes(d, k)[i])

    def prices(self, discarded: Mapping[str, float]) -> dict[str, float]:
        """Each layer's slope at its discarded fraction, floored at 1e-3 of the largest (and a layer
        whose curve is flat there at the floor)."""
        raw = {n: max(self.slope(n, d), 0.0) for n, d in discarded.items()}
        top = max(raw.values(), default=0.0) or 1.0
        return {n: max(v, _FLOOR * top) for n, v in raw.items()}

    def _curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        d, k = self._measured(name)
        if d.size > 1:
            return d, k
        # Never truncated at the measured thresholds (it stays dense there): as steep as the steepest
        # measured layer, so that it is not starved on no evidence.
        steep = max((kk[-1] / dd[-1] for dd, kk in (self._measured(n) for n in self.points) if dd.size > 1),
                    default=1.0)
        return np.array([0.0, 1.0]), np.array([0.0, steep])

    def _measured(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The measured curve through the origin, one point per discarded fraction, non-decreasing
        (more discarded never costs less: a dip is measurement noise)."""
        best: dict[float, float] = {0.0: 0.0}
        for a, b in self.points[name]:
            if a > 0:
                best[float(a)] = max(best.get(float(a), 0.0), float(b))
        d = np.array(sorted(best))
        return d, np.maximum.accumulate(np.array([best[x] for x in d]))

    @staticmethod
    def _slopes(d: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.diff(k) / np.diff(d)

    def modelled_kl(self, discarded: Mapping[str, float]) -> float:
        """The plan's output KL under the additive model: sum of KL_l(d_l)."""
        return float(sum(self.kl(n, d) for n, d in discarded.items()))

    def to_json(self) -> dict:
        return {"weights": None if self.weights is None else dict(self.weights),
                "points": {n: [list(p) for p in ps] for n, ps in self.points.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Sensitivity:
        weights = data.get("weights")
        return cls({n: [(float(d), float(k)) for d, k in ps] for n, ps in data["points"].items()},
                   None if weights is None else {n: float(w) for n, w in weights.items()})


def _discarded(plan) -> dict[str, float]:
    return {n: 1.0 - c for n, c in plan.captured_energy().items()}


def sensitivity_plan(decomp, target_macs: float, sens: Sensitivity, multiple: int = 1,
                     iterations: int = ITERATIONS):
    """The greedy plan within ``target_macs`` that the measured sensitivities favour (module docstring).

    Parameters
    ----------
    decomp
        Any decomposition :func:`hscc_core.compress.allocation.greedy_plan` takes.
    target_macs : float
        MAC budget of the compressed layers.
    sens : Sensitivity
        The layers' measured curves (every layer of ``decomp``).
    multiple : int
        As for ``greedy_plan``.
    iterations : int
        Re-plannings after the energy-greedy start.

    Returns
    -------
    (plan, prices)
        The plan with the lowest modelled KL among those visited, and the layer prices it was made
        with (empty when that is the energy-greedy start).
    """
    plan = greedy_plan(decomp, target_macs, None, multiple)
    best, best_kl, best_prices = plan, sens.modelled_kl(_discarded(plan)), {}
    prices = None
    for _ in range(iterations):
        new = sens.prices(_discarded(plan))
        # Geometric damping between successive prices keeps the iteration from oscillating.
        prices = new if prices is None else {n: float(np.sqrt(prices[n] * new[n])) for n in new}
        plan = greedy_plan(decomp, target_macs, prices, multiple)
        kl = sens.modelled_kl(_discarded(plan))
        if kl < best_kl:
            best, best_kl, best_prices = plan, kl, prices
    return best, best_prices


@torch.no_grad()
def _log_probs(model: nn.Module, images, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, int(images.shape[0]), batch_size):
        out.append(F.log_softmax(model(images[start:start + batch_size]).double(), dim=1))
    return torch.cat(out)


def layer_sensitivity(method, model: nn.Module, decomp, images, energies=SENSITIVITY_ENERGIES,
                      batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> Sensitivity:
    """Measure every layer's KL curve (see module docstring).

    Parameters
    ----------
    method : Method
        Any method of :mod:`hscc_core.compress.methods` (its ``plan`` and ``build``); plans must
        offer ``restrict(names)`` and ``captured_energy()``.
    model : nn.Module
        The original model (not modified).
    decomp
        ``method.decompose(...)`` of ``model``.
    images : tensor (M, C, H, W) or an object that slices like one
        Calibration images, normalised for the model.
    energies : tuple of float
        Thresholds in (0, 1) at which each layer alone is truncated.
    progress : callable(done, total), optional

    Returns
    -------
    Sensitivity
        The measured points (no prices yet: :func:`sensitivity_plan` derives them for a budget).
    """
    if not energies or not all(0 < e < 1 for e in energies):
        raise ValueError(f"energies must be thresholds in (0, 1), got {energies}")
    was = model.training
    model.eval()
    try:
        ref = _log_probs(model, images, batch_size)
        plans = {e: method.plan(decomp, e) for e in energies}
        names = list(plans[energies[0]].captured_energy())
        total, done = len(names) * len(energies), 0
        points: dict[str, list[tuple[float, float]]] = {}
        for name in names:
            points[name] = []
            for e in energies:
                plan = plans[e].restrict([name])
                discarded = 1.0 - plan.captured_energy()[name]
                if discarded <= 0:
                    kl = 0.0  # nothing truncated: the layer is the original's (dense) at this threshold
                else:
                    truncated = method.build(model, plan).eval()
                    lp = _log_probs(truncated, images, batch_size)
                    kl = float((ref.exp() * (ref - lp)).sum(dim=1).mean())
                points[name].append((float(discarded), max(kl, 0.0)))
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        model.train(was)
    return Sensitivity(points)
