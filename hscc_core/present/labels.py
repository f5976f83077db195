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

__all__ = ["NOTICE", "SAME_SPEED", "budget_sentence", "class_label", "duration", "method_title", "pct", "si",
           "slower_sentence", "speed_text", "split_name"]


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


def p_text(p: float | None, bare: bool = False) -> str:
    """A p-value as papers print it: ``p = 0.041``, ``p < 0.001`` (not ``p = 9.06e-14``), ``p = n/a``;
    ``bare`` leaves out the ``p`` for a table column named p (``0.041``, ``< 0.001``)."""
    if p is None or not math.isfinite(p):
        text = "= n/a"
    elif p < 0.001:
        text = "< 0.001"
    else:
        text = "= " + (f"{p:.2g}" if p < 0.01 else f"{p:.3f}".rstrip("0").rstrip("."))
    return text.removeprefix("= ") if bare else f"p {text}"


def change_pct(reduction: float) -> str:
    """A change in %, signed, from a reduction: ``0.593`` -> ``"-59.3 %"``; a change that rounds to
    nothing reads ``"+0.0 %"``, never ``"-0.0 %"`` (a Tucker-2 run that kept its parameters did)."""
    change = round(-100 * reduction, 1)
    return f"{change:+.1f} %" if change else "+0.0 %"


# Speed-ups this close to 1 read "about as fast": closer than two readings of one model usually agree.
SAME_SPEED = (0.97, 1.03)


def speed_text(ratio: float | None) -> str:
    """A measured speed-up (original time / compressed time) in words: ``3.4x faster``, ``3.4x slower``,
    ``1.03x slower`` (two digits would print it as "1x")."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return "not measured"
    if SAME_SPEED[0] <= ratio <= SAME_SPEED[1]:
        return "about as fast"
    times = max(ratio, 1 / ratio)
    text = f"{times:.2g}" if f"{times:.2g}" != "1" else f"{times:.2f}"
    return f"{text}x faster" if ratio > 1 else f"{text}x slower"


def duration(seconds: float | None) -> str:
    """``4.2`` -> ``"4.2 s"``, ``95`` -> ``"1 min 35 s"``, ``7300`` -> ``"2 h 2 min"``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def split_name(run: Mapping[str, Any]) -> str:
    """The split whose test images a run was measured on; runs stored before splits existed used the
    official one."""
    return str(run.get("split") or "official")


def budget_sentence(run: Mapping[str, Any]) -> str | None:
    """What a budget run reached, in one sentence with human units (None for a run with an energy threshold).

    ``"Budget x3 met: the compressed layers need 3.02x fewer FLOPs (48.6 MFLOPs instead of 147 MFLOPs),
    by greedy allocation (no single threshold)."`` Greedy runs have no single threshold: the sentence
    names the rule instead of an energy.
    """
    budget = run.get("budget_search")
    if not isinstance(budget, Mapping):
        return None
    ratio = budget.get("layer_flops_ratio") or run.get("layer_flops_ratio")
    rule = (run.get("config") or {}).get("allocation")
    how = (f"{'sensitivity-priced ' if rule == 'sensitivity' else ''}greedy allocation (no single threshold)"
           if run.get("energy") is None else f"one energy threshold for every block, tau = {run['energy']:.3f}")
    reached = f"the compressed layers need {ratio:.2f}x fewer FLOPs" if ratio else "an unknown reduction"
    new, old = run.get("layer_flops"), run.get("layer_flops_original")
    if isinstance(new, Mapping) and isinstance(old, Mapping) and new:
        reached += f" ({si(sum(new.values()), 'FLOPs')} instead of {si(sum(old.values()), 'FLOPs')})"
    verdict = "met" if budget.get("met") else "not met"
    return f"Budget x{budget['target']:g} {verdict}: {reached}, by {how}."


def slower_sentence(run: Mapping[str, Any]) -> str | None:
    """Why a compressed model runs slower than the original, in one sentence (None when it was not
    timed, or is faster or about as fast (:data:`SAME_SPEED`) at both batch sizes).

    The causes are the ones measured on this project's CPU (docs/performance.md): a compressed layer
    that cuts few multiply-adds (its factors run each one more slowly than the original's dense
    convolution, so a layer FLOPs ratio under 1.5 does not pay), and, at batch 1, HSCC's per-region
    factors, which a grid of 8 makes larger than the original's weights: reading them from memory
    then takes longer than the multiply-adds saved.
    """
    sp = run.get("speedup") or {}
    # Below the band that reads "about as fast": a 0.99x reading is noise, not a slower model.
    slow = [b for b in ("b1", "b32") if isinstance(sp.get(b), (int, float)) and sp[b] < SAME_SPEED[0]]
    if not slow:
        return None
    reasons = []
    ratio = run.get("layer_flops_ratio")
    if isinstance(ratio, (int, float)) and ratio < 1.01:
        reasons.append("it cuts no multiply-adds (its threshold keeps every direction), so it cannot be faster; "
                       "a lower energy threshold or a budget compresses it")
    elif isinstance(ratio, (int, float)) and ratio < 1.5:
        reasons.append(f"its compressed layers do only {ratio:.2f}x fewer multiply-adds than the original's, too "
                       "few to pay for running them as factors (a lower energy threshold or a larger budget cuts more)")
    extra = (run.get("params") or 0) - (run.get("params_original") or 0)
    grid = (run.get("config") or {}).get("grid")
    if "b1" in slow and run.get("method") == "hscc" and extra > 0 and grid:
        reasons.append(f"each of its {grid}x{grid} regions keeps its own factors ({si(extra)} more weights than the "
                       "original), and at batch 1 reading them from memory takes longer than the multiply-adds "
                       "saved (a smaller grid reads less)")
    if not reasons:
        reasons.append("its factors run each multiply-add more slowly than the original's dense convolutions on "
                       "this machine, and the multiply-adds saved do not make up for it")
    where = " and ".join(f"batch {b[1:]}" for b in slow)
    return f"Slower than the original at {where}: " + "; ".join(reasons) + ". Measured causes: docs/performance.md."
