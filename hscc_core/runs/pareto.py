"""Exact Pareto (non-dominated) fronts of runs over two objectives.

A point is dominated when another point is at least as good in both objectives and strictly
better in at least one; identical points therefore never dominate each other and are all kept.
The front is found in O(n log n) by sorting on the first objective and sweeping the running best
of the second (Kung, Luccio and Preparata 1975, "On finding the maxima of a set of vectors").

Run fields are reached through named axes (:data:`AXES`), each with a direction, so a plot or the
``hscc pareto`` command can say ``x="flops", y="meningioma_f1"`` without knowing run layouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = ["AXES", "Axis", "as_float", "axis_value", "front_runs", "get_axis", "pareto_front", "register_axis"]

Direction = Literal["min", "max"]


class Axis(NamedTuple):
    """A named objective: how to read it from a run, which way is better, and its label."""

    getter: Callable[[Mapping[str, Any]], Any]
    direction: Direction
    label: str


def pareto_front(
    points: Sequence[Sequence[float | None]] | np.ndarray,
    minimise_x: bool = True,
    maximise_y: bool = True,
) -> np.ndarray:
    """Indices of the non-dominated points.

    Parameters
    ----------
    points
        ``n`` pairs ``(x, y)`` (a sequence or an ``(n, 2)`` array). Pairs with a NaN or ``None``
        are left out; infinities are ordinary values.
    minimise_x, maximise_y
        Which way each objective improves.

    Returns
    -------
    np.ndarray
        Integer indices into ``points`` of every non-dominated point (ties kept), ordered by
        ``x`` ascending, then by index.
    """
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return np.empty(0, dtype=np.intp)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {arr.shape}")
    valid = np.flatnonzero(~np.isnan(arr).any(axis=1))
    if valid.size == 0:
        return np.empty(0, dtype=np.intp)
    # Turn both objectives into "smaller is better".
    a = arr[valid, 0] if minimise_x else -arr[valid, 0]
    b = -arr[valid, 1] if maximise_y else arr[valid, 1]
    order = np.lexsort((b, a))  # by a, then b
    a_s, b_s = a[order], b[order]
    # Groups of equal a: within a group only the points with its smallest b can survive, and
    # they survive iff that b beats (strictly) the best b of every group with a smaller a.
    new_group = np.r_[True, a_s[1:] != a_s[:-1]]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    best_before = np.minimum.accumulate(b_s)[starts[1:] - 1]  # for groups 1, 2, ...
    group_min = b_s[starts]
    beats_before = np.r_[True, group_min[1:] < best_before]  # the first group has no rival
    keep = (b_s == group_min[group]) & beats_before[group]
    idx = valid[order[keep]]
    x = arr[idx, 0]
    return idx[np.lexsort((idx, x))]


def _get_path(*path: str) -> Callable[[Mapping[str, Any]], Any]:
    def getter(run: Mapping[str, Any]) -> Any:
        value: Any = run
        for part in path:
            value = value[part]
        return value

    getter.__doc__ = "run" + "".join(f"[{p!r}]" for p in path)
    return getter


#: name -> Axis. ``<class>_f1`` (e.g. ``meningioma_f1``) is resolved dynamically from
#: ``run["per_class"][<class>]["f1"]``; extend with :func:`register_axis`.
AXES: dict[str, Axis] = {
    "flops": Axis(_get_path("flops"), "min", "FLOPs (whole model)"),
    "params": Axis(_get_path("params"), "min", "Parameters"),
    "latency": Axis(
        _get_path("latency_ms", "compressed", "b1", "median"), "min", "Latency, batch 1 (ms)"
    ),
    "accuracy": Axis(_get_path("accuracy"), "max", "Accuracy"),
    "macro_f1": Axis(_get_path("macro_f1"), "max", "Macro F1"),
    "agreement": Axis(_get_path("agreement"), "max", "Agreement with the original model"),
    "kl_to_original": Axis(_get_path("kl_to_original"), "min", "KL divergence to the original"),
}


def register_axis(
    name: str, getter: Callable[[Mapping[str, Any]], Any], direction: Direction, label: str
) -> None:
    """Add (or replace) a named axis; ``direction`` is ``"min"`` or ``"max"``."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    AXES[name] = Axis(getter, direction, label)


def get_axis(name: str) -> Axis:
    """The :class:`Axis` called ``name``, including the dynamic ``<class>_f1`` axes.

    Raises
    ------
    ValueError
        For an unknown name, listing the allowed ones.
    """
    if name in AXES:
        return AXES[name]
    if isinstance(name, str) and name.endswith("_f1") and len(name) > 3:
        cls = name[:-3]
        return Axis(_get_path("per_class", cls, "f1"), "max", f"F1, {cls.replace('_', ' ')}")
    allowed = ", ".join(sorted(AXES)) + ", <class>_f1"
    raise ValueError(f"unknown axis {name!r}; allowed: {allowed}")


def axis_value(run: Mapping[str, Any], name: str) -> float:
    """The value of axis ``name`` for ``run`` as a float; NaN when the run lacks it.

    Mapping: ``flops`` -> ``run["flops"]``, ``params`` -> ``run["params"]``, ``latency`` ->
    ``run["latency_ms"]["compressed"]["b1"]["median"]``, ``accuracy``, ``macro_f1``,
    ``agreement``, ``kl_to_original`` -> the field of that name, ``<class>_f1`` ->
    ``run["per_class"][<class>]["f1"]``.
    """
    getter = get_axis(name).getter
    try:
        value = getter(run)
    except (KeyError, IndexError, TypeError):
        return math.nan
    return as_float(value)


def as_float(value: Any) -> float:
    """``value`` as a float; NaN for None, booleans and anything that is not a number."""
    if type(value) is float:  # the common case, first (tables of 10,000 runs call this 400,000 times)
        return value
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def front_runs(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> list[Mapping[str, Any]]:
    """The runs on the Pareto front of axes ``x`` and ``y``, sorted by ``x`` ascending.

    Each axis's direction comes from :func:`get_axis` (e.g. FLOPs and KL are minimised, accuracy
    maximised). Runs lacking either value are left out. Unknown axes raise ``ValueError``.
    """
    ax, ay = get_axis(x), get_axis(y)
    pts = np.array([[axis_value(r, x), axis_value(r, y)] for r in runs], dtype=float)
    idx = pareto_front(
        pts.reshape(-1, 2), minimise_x=ax.direction == "min", maximise_y=ay.direction == "max"
    )
    return [runs[i] for i in idx]
