"""Hypervolume of a two-objective front: the area it dominates up to a reference point.

The hypervolume indicator (Zitzler and Thiele 1998) measures a whole front by one number: the area
of the objective plane that is at least as bad as some front point and at least as good as the
reference point. A front that dominates another has a larger hypervolume, so it compares the front a
search finds in N trials with the full grid sweep's front, provided both use the same reference
(take the worst value of each objective over the union of both run sets: :func:`reference_point`).
For two objectives it is exact by sorting and summing rectangles, O(n log n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hscc_core.runs.pareto import axis_value, get_axis, pareto_front

__all__ = ["front_hypervolume", "hypervolume_2d", "reference_point"]


def hypervolume_2d(points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float],
                   directions: Sequence[str] = ("min", "max")) -> float:
    """Area dominated by ``points`` and bounded by ``reference``.

    Parameters
    ----------
    points
        ``(n, 2)`` objective values; rows with a NaN are ignored, dominated rows add nothing.
    reference
        ``(r0, r1)``: the worst corner. Points not strictly better than it in both objectives add
        nothing.
    directions
        ``"min"`` or ``"max"`` for each objective (default: x minimised, y maximised, as FLOPs vs
        accuracy).

    Returns
    -------
    float
        The hypervolume, 0.0 for an empty front.
    """
    if len(directions) != 2 or any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be two of 'min'/'max', got {directions!r}")
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,) or not np.isfinite(ref).all():
        raise ValueError(f"reference must be two finite numbers, got {reference!r}")
    # Turn both objectives into "smaller is better" so the reference is the upper-right corner.
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    pts, ref = arr[~np.isnan(arr).any(axis=1)] * sign, ref * sign
    pts = pts[(pts[:, 0] < ref[0]) & (pts[:, 1] < ref[1])]
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_front(pts, minimise_x=True, maximise_y=False)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]  # x ascending, so y descends
    # For x between one front point and the next, the best y reached so far is that point's:
    # the dominated region is a staircase of vertical strips.
    x_next = np.r_[front[1:, 0], ref[0]]
    area = float(np.sum((x_next - front[:, 0]) * (ref[1] - front[:, 1])))
    return float(area)


def reference_point(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[float, float]:
    """The worst value of axes ``x`` and ``y`` over ``runs`` (the nadir): a shared reference point.

    Pass the union of the run sets being compared, so both fronts are measured against it.
    """
    corner = []
    for name in (x, y):
        values = np.array([axis_value(r, name) for r in runs], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"no run has a value for {name!r}")
        corner.append(float(values.max() if get_axis(name).direction == "min" else values.min()))
    return corner[0], corner[1]


def front_hypervolume(runs: Sequence[Mapping[str, Any]], x: str, y: str, reference: Sequence[float]) -> float:
    """Hypervolume of the runs' front on the named axes (:mod:`hscc_core.runs.pareto`) up to ``reference``."""
    pts = np.array([[axis_value(r, x), axis_value(r, y)] for r in runs], dtype=float).reshape(-1, 2)
    return hypervolume_2d(pts, reference, (get_axis(x).direction, get_axis(y).direction))
