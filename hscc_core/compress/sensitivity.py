"""Layer sensitivity: what an error in each layer costs at the output, for sensitivity-aware allocation.

Greedy allocation (:mod:`hscc_core.compress.allocation`, HSCC+ of DESIGN 3.9 on HSCC, Vacavant et
al. 2026, arXiv 2604.23375) buys directions by relative energy per MAC, which weighs a lost percent
of energy alike in every layer. It is not alike: on the real data an error in conv1 costs far more
than the same relative error in conv5 (docs/results.md). Here each layer is priced by its measured
effect on the output, in the spirit of sensitivity-based mixed-precision allocation (e.g. Dong et
al. 2019, "HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision"): only layer l
is truncated, with the method's own rule, at a few energy thresholds tau; the mean KL divergence
from the original's class probabilities on calibration images is measured against the fraction d_l
of the layer's energy the truncation discards, and a line through the origin is fitted,

    KL_l(d) ~= s_l d        (least squares: s_l = sum KL d / sum d^2).

KL is about quadratic in a small perturbation of the logits, whose size grows like sqrt(d), so a
linear model in d is the first-order one. Summed over layers (errors assumed additive), the output
KL of a plan is about sum_l s_l d_l: greedy allocation with layer weights s_l minimises it for a MAC
budget. The fit is made once per model, method decomposition and calibration set (the caller caches
:class:`Sensitivity`). A layer whose truncations at these thresholds discard nothing (it stays
dense) gets the largest weight measured (it is treated as the most sensitive, never starved), and
weights are floored at 1e-3 of the largest so that no layer is priced at nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SENSITIVITY_ENERGIES", "SENSITIVITY_IMAGES", "Sensitivity", "layer_sensitivity"]

# Thresholds at which each layer alone is truncated: around the budgets' operating points (the 3x and
# 6x budgets keep 80-97 % of a layer's energy on the real data) without reaching the collapse of tau 0.5.
SENSITIVITY_ENERGIES = (0.7, 0.85, 0.95)
# Calibration images the KL is measured on (a seeded subset when the calibration set is larger).
SENSITIVITY_IMAGES = 128
_FLOOR = 1e-3


@dataclass(frozen=True)
class Sensitivity:
    """Per layer: the fitted weight s_l and the measured (discarded energy fraction, KL) points."""

    weights: dict[str, float]
    points: dict[str, list[tuple[float, float]]]

    def to_json(self) -> dict:
        return {"weights": dict(self.weights), "points": {n: [list(p) for p in ps] for n, ps in self.points.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Sensitivity:
        return cls({n: float(w) for n, w in data["weights"].items()},
                   {n: [(float(d), float(k)) for d, k in ps] for n, ps in data["points"].items()})


@torch.no_grad()
def _log_probs(model: nn.Module, images, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, int(images.shape[0]), batch_size):
        out.append(F.log_softmax(model(images[start:start + batch_size]).double(), dim=1))
    return torch.cat(out)


def _fit(points: list[tuple[float, float]]) -> float:
    d = np.array([p[0] for p in points])
    kl = np.array([p[1] for p in points])
    den = float((d * d).sum())
    return float((kl * d).sum() / den) if den > 0 else float("nan")


def layer_sensitivity(method, model: nn.Module, decomp, images, energies=SENSITIVITY_ENERGIES,
                      batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> Sensitivity:
    """Fit every layer's price of relative energy (see module docstring).

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
    slopes = {n: _fit(p) for n, p in points.items()}
    measured = [s for s in slopes.values() if np.isfinite(s) and s > 0]
    top = max(measured) if measured else 1.0
    weights = {n: max(s if np.isfinite(s) else top, _FLOOR * top) for n, s in slopes.items()}
    return Sensitivity(weights, points)
