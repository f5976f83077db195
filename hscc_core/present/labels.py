"""Words and units for people: run names, class names, FLOPs, speed.

One way to name each thing on every page, in the report and in the demo: a run is "HSCC 2x2
regions, 4 input clusters, tau 0.95", a class is "meningioma tumor", a cost is "1.23 GFLOPs", a
speed-up below one is "3.4x slower".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hscc_core.compress.methods import METHODS

# One wording of the research-tool notice, everywhere a prediction or a metric is shown.
NOTICE = "Research tool, not a medical device: predictions shown here must not be used for diagnosis."

__all__ = ["NOTICE", "budget_sentence", "class_label", "method_title", "pct", "si", "speed_text"]


def class_label(name: str) -> str:
    """Class folder name for people (``meningioma_tumor`` -> ``meningioma tumor``)."""
    return str(name).replace("_", " ")


def method_title(method: str) -> str:
    """``hscc`` -> ``HSCC``, ``svd`` -> ``Global SVD``; ``original`` -> ``Original``."""
    if method in METHODS:
        return METHODS[method].title
    return "Original" if method == "original" else str(method)


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """``1.234e9, "FLOPs"`` -> ``"1.23 GFLOPs"``; ``None`` -> ``"n/a"``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    value = float(value)
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def pct(value: float | None, digits: int = 1) -> str:
    """``0.1234`` -> ``"12.3 %"`` (``"n/a"`` for None)."""
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def speed_text(ratio: float | None) -> str:
    """A measured speed-up (original time / compressed time) in words: ``3.4x faster``, ``3.4x slower``."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return "not measured"
    if 0.97 <= ratio <= 1.03:
        return "about as fast"
    return f"{ratio:.2g}x faster" if ratio > 1 else f"{1 / ratio:.2g}x slower"


def budget_sentence(run: Mapping[str, Any]) -> str | None:
    """What a budget run reached, in one sentence (None for a run with an energy threshold).

    Greedy runs have no single threshold: the sentence names the rule instead of an energy.
    """
    budget = run.get("budget_search")
    if not isinstance(budget, Mapping):
        return None
    ratio = budget.get("layer_flops_ratio") or run.get("layer_flops_ratio")
    how = ("greedy allocation (no single threshold)" if run.get("energy") is None
           else f"energy threshold {run['energy']:.4f}")
    reached = f"{ratio:.2f}x fewer FLOPs in the compressed layers" if ratio else "an unknown reduction"
    verdict = "met" if budget.get("met") else "not met"
    return f"Budget x{budget['target']:g} {verdict}: {reached}, by {how}."
