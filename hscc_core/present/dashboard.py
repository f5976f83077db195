"""Figures of the runs dashboard: parallel coordinates with brushing, setting importance, kept FLOPs.

Parallel coordinates (Inselberg 1985; plotly's ``go.Parcoords``) draw one line per run across
settings and metrics. Categories (method, cluster side, allocation) become integer positions with
their names as ticks; a setting a run does not have (the grid of a Global SVD run) sits on an
``n/a`` tick just below the axis's values, so no line is dropped.

Brushing: dragging on an axis in the browser sets that dimension's ``constraintrange``. Streamlit's
``st.plotly_chart(on_select=...)`` reports box, lasso and point selections only, and parcoords
emits none of them (it announces brushes as ``plotly_restyle`` events, which Streamlit does not
forward), so the app sets the ranges from its own filter widgets (:func:`constraints_for`) and
filters the table with the same ranges. :func:`constraints_from_figure` and
:func:`constraints_from_restyle` read brushes as plotly stores or announces them, and
:func:`brush_mask` turns them into the table's row filter, so a component that does forward
restyle events can be plugged in later without new logic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hscc_core.present.plots import FONT, OKABE_ITO, class_label, run_colours
from hscc_core.runs.pareto import get_axis
from hscc_core.runs.table import SETTINGS, category_values, is_numeric

__all__ = [
    "DEFAULT_DIMENSIONS",
    "brush_mask",
    "column_format",
    "column_label",
    "constraints_for",
    "constraints_from_figure",
    "constraints_from_restyle",
    "encode_column",
    "importance_figure",
    "in_display_units",
    "kept_fraction_figure",
    "parcoords_figure",
]

#: Settings and metrics a parallel-coordinates view starts with.
DEFAULT_DIMENSIONS = ("method", "grid", "clusters", "cluster_side", "allocation", "energy", "budget",
                      "flops", "accuracy")
NA = "n/a"
_LABELS = {"calib_size": "calibration images", "calib_flip": "mirror images", "rank_multiple": "rank multiple",
           "finetune_epochs": "fine-tuning epochs",
           "cluster_side": "cluster side", "energy_found": "energy found", "flops_kept": "FLOPs kept",
           "layer_flops_ratio": "layer FLOPs ratio", "latency_b1_ms": "latency b1 (ms)",
           "latency_b32_ms": "latency b32 (ms)", "speedup_b1": "speed-up b1", "speedup_b32": "speed-up b32",
           "others_cpu": "others' CPU while timed",
           "p_value_vs_original": "p vs original", "kl_to_original": "KL to original", "flops": "FLOPs",
           "macro_f1": "macro F1", "accuracy_delta": "accuracy change"}
_PERCENT = ("accuracy", "agreement", "flops_kept", "others_cpu")
# Differences of two accuracies, stored as fractions: shown in percentage points ("-20.0 pts"), since
# "-20%" reads as a relative change.
_POINTS = ("accuracy_delta",)
# Readable numbers in a table: 158M FLOPs, 1.36x, 7.44 ms (not 158113280, 1.3577, 7.4426).
_FORMATS = {"flops": "compact", "params": "compact", "layer_flops_ratio": "%.2fx", "latency_b1_ms": "%.2f",
            "latency_b32_ms": "%.2f", "speedup_b1": "%.2fx", "speedup_b32": "%.2fx", "macro_f1": "%.3f",
            "macro_f1_se": "%.3f", "kl_to_original": "%.4f", "kl_to_original_se": "%.4f",
            "p_value_vs_original": "%.3g", "energy_found": "%.4f"}
_RESTYLE_KEY = re.compile(r"dimensions\[(\d+)\]\.constraintrange")


def column_label(column: str) -> str:
    """A short human label of a table column (``meningioma_tumor_f1`` -> ``F1 meningioma tumor``)."""
    if column in _LABELS:
        return _LABELS[column]
    if column.endswith("_se"):
        return f"{column_label(column[:-3])} SE"
    if column.endswith("_f1") and column != "macro_f1":
        return f"F1 {class_label(column[:-3])}"
    return column.replace("_", " ")


def in_display_units(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as :func:`column_format` shows it: point columns (fractions) times 100; a copy."""
    scaled = {c: table[c] * 100 for c in table.columns
              if c in _POINTS or (c.endswith("_se") and c[:-3] in _POINTS)}
    return table.assign(**scaled) if scaled else table


def column_format(column: str) -> str | None:
    """How a metric column of the runs table reads on screen: a Streamlit ``NumberColumn`` format
    (``"percent"``, ``"compact"`` or printf-style), or None for a setting shown as it is. The
    exports keep the full numbers."""
    if column in _POINTS:
        return "%+.1f pts"
    if column.endswith("_se") and column[:-3] in _POINTS:
        return "%.1f pts"
    if column in _PERCENT or (column.endswith("_se") and column[:-3] in _PERCENT):
        return "percent"
    if column.endswith("_f1") or column.endswith("_f1_se"):
        return "%.3f"
    return _FORMATS.get(column)


def _tick(value: float) -> str:
    """A short tick label: 4 significant digits, with k/M/G from ten thousand on."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= max(scale, 1e4):
            return f"{value / scale:.3g}{unit}"
    return f"{value:.4g}"


def encode_column(table: pd.DataFrame, column: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A column as the numbers a parcoords axis draws, and that axis's tick settings.

    Categories map to 0, 1, ... in :func:`~hscc_core.runs.table.category_values` order (missing
    last, ticked ``n/a``). Numbers keep their values; missing ones are placed one tenth of the
    axis's span below its minimum, on an ``n/a`` tick.

    Returns
    -------
    (values, axis)
        ``values`` float array (one per row); ``axis`` has ``range`` and, where needed,
        ``tickvals``/``ticktext``.
    """
    col = table[column]
    if not is_numeric(table, column):
        cats = category_values(table, column)
        codes = {c: i for i, c in enumerate(cats)}
        values = np.array([codes[None] if pd.isna(v) else codes[str(v)] for v in col], dtype=float)
        axis = {"range": [-0.5, len(cats) - 0.5] if cats else [0, 1],
                "tickvals": list(range(len(cats))), "ticktext": [NA if c is None else str(c) for c in cats]}
        return values, axis
    values = col.to_numpy(float).copy()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(len(values)), {"range": [-1, 1], "tickvals": [0], "ticktext": [NA]}
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    axis: dict[str, Any] = {"range": [lo, hi] if hi > lo else [lo - span / 2, hi + span / 2]}
    missing = ~np.isfinite(values)
    distinct = np.unique(finite)
    # A setting with few values gets a tick on each (but one that would overprint its neighbour:
    # energies 0.98, 0.99, 0.995 share a few pixels); metrics get evenly spaced ticks where needed.
    ticks = _spaced(list(distinct), span / 25) if column in SETTINGS and distinct.size <= 8 else None
    if missing.any():
        na_value = lo - span / 10
        values[missing] = na_value
        axis["range"] = [na_value - span / 20, axis["range"][1]]
        ticks = ticks if ticks is not None else list(np.linspace(lo, hi, 5))
        axis["tickvals"], axis["ticktext"] = [na_value, *ticks], [NA, *map(_tick, ticks)]
    elif ticks is not None:
        axis["tickvals"], axis["ticktext"] = ticks, list(map(_tick, ticks))
    # Also the format of the range's ends that plotly prints above and below an axis (with its
    # default precision, FLOPs read 1.32652G and accuracies 0.730964).
    percent = column_format(column) == "percent"  # accuracies, agreement: 90.2%, not 0.902
    axis["tickformat"] = ".1%" if percent else ".3~s" if max(abs(lo), abs(hi)) >= 1e4 else ".3~g"
    if percent and "ticktext" in axis:
        axis["ticktext"] = [NA if t == NA else f"{100 * v:.1f}%" for v, t in zip(axis["tickvals"], axis["ticktext"])]
    return values, axis


def _spaced(ticks: list[float], gap: float) -> list[float]:
    """``ticks`` (ascending) without those closer than ``gap`` to the last one kept; the largest stays."""
    kept: list[float] = []
    for t in reversed(ticks):
        if not kept or kept[-1] - t >= gap:
            kept.append(t)
    return kept[::-1]


def constraints_for(table: pd.DataFrame, ranges: Mapping[str, tuple[float, float]] | None = None,
                    categories: Mapping[str, Iterable] | None = None) -> dict[str, list[list[float]]]:
    """The table filters (:func:`hscc_core.runs.table.filter_mask`) as parcoords constraint ranges.

    Returns ``column -> [[low, high], ...]`` in the axis's encoded coordinates
    (:func:`encode_column`), ready for a dimension's ``constraintrange``.
    """
    out: dict[str, list[list[float]]] = {}
    for col, (lo, hi) in (ranges or {}).items():
        finite = table[col].to_numpy(float)
        finite = finite[np.isfinite(finite)]
        # Rows lacking the value fail a range filter: keep the brush above their n/a position.
        lo = max(float(lo), float(finite.min())) if finite.size and lo <= finite.min() else float(lo)
        out[col] = [[lo, float(hi)]]
    for col, allowed in (categories or {}).items():
        allowed = list(allowed)
        _, axis = encode_column(table, col)
        ticks = dict(zip(axis.get("ticktext", []), axis.get("tickvals", [])))
        if is_numeric(table, col):
            points = [float(a) for a in allowed if a is not None]
            if any(a is None for a in allowed) and NA in ticks:
                points.append(ticks[NA])
            out[col] = [[p - 1e-9 * max(1.0, abs(p)), p + 1e-9 * max(1.0, abs(p))] for p in sorted(points)]
        else:
            names = [NA if a is None else str(a) for a in allowed]
            out[col] = [[ticks[n] - 0.25, ticks[n] + 0.25] for n in names if n in ticks]
        if not out[col]:  # nothing allowed: a range above the axis, which no value reaches
            top = float(axis["range"][1])
            out[col] = [[top + 1, top + 2]]
    return out


def _colour_format(column: str, values: np.ndarray) -> str:
    """The colour bar's tick format: the axis's units (accuracy in %, not 0.9 beside an axis in %)."""
    if column_format(column) == "percent":
        return ".0%"
    return ".3~s" if values.size and float(np.abs(values).max()) >= 1e4 else ".3~g"


def parcoords_figure(table: pd.DataFrame, columns: Sequence[str] = DEFAULT_DIMENSIONS, color: str = "accuracy",
                     constraints: Mapping[str, Sequence] | None = None, title: str | None = None) -> go.Figure:
    """Parallel coordinates of the runs over ``columns``, lines coloured by ``color``.

    Parameters
    ----------
    table
        A runs table (:func:`hscc_core.runs.table.runs_table`), possibly filtered.
    columns
        Settings and metrics, one axis each, in order; columns the table lacks are skipped.
    color
        The metric that colours the lines (colour-blind-safe Cividis); when it is a minimised axis
        (FLOPs, KL, latency) the scale is reversed, so the bright end is always the better one.
    constraints
        ``column -> [low, high]`` or ``[[low, high], ...]`` in encoded coordinates (see
        :func:`constraints_for`): the brushes the figure starts with.

    Returns
    -------
    go.Figure
        One ``go.Parcoords`` trace; its ``meta`` holds the column of each dimension, which
        :func:`constraints_from_figure` reads back.
    """
    columns = [c for c in columns if c in table]
    constraints = constraints or {}
    dims = []
    for col in columns:
        values, axis = encode_column(table, col)
        dim = {"label": column_label(col), "values": values, **axis}
        if col in constraints and len(constraints[col]):
            dim["constraintrange"] = _normalise_ranges(constraints[col])
        dims.append(dim)
    colour_values = table[color].to_numpy(float) if color in table else np.zeros(len(table))
    finite = colour_values[np.isfinite(colour_values)]
    fill = float(finite.min()) if finite.size else 0.0
    try:
        reverse = get_axis(color).direction == "min"
    except ValueError:
        reverse = color in ("flops_kept", "latency_b1_ms", "latency_b32_ms", "p_value_vs_original")
    line = {"color": np.where(np.isfinite(colour_values), colour_values, fill), "colorscale": "Cividis",
            "reversescale": reverse, "showscale": True,
            # The colour bar reads in the axis's units (accuracy 90%, not 0.9 beside an axis in %).
            "colorbar": {"title": {"text": column_label(color)}, "tickformat": _colour_format(color, finite)}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line, meta=list(columns),
                                 labelfont={"size": 13}, tickfont={"size": 11}))
    fig.update_layout(template="none", font=FONT, height=520, paper_bgcolor="white",
                      margin={"l": 70, "r": 40, "t": 110, "b": 40},
                      title={"text": title or f"{len(table)} runs, coloured by {column_label(color)}",
                             "x": 0.01, "xanchor": "left", "font": {"size": 18}})
    return fig


def _normalise_ranges(ranges: Sequence) -> list[list[float]]:
    """``[lo, hi]`` or ``[[lo, hi], ...]`` -> ``[[lo, hi], ...]`` (plotly accepts both)."""
    ranges = list(ranges)
    if ranges and not isinstance(ranges[0], (list, tuple, np.ndarray)):
        ranges = [ranges]
    return [[float(lo), float(hi)] for lo, hi in ranges]


def constraints_from_figure(fig: go.Figure | Mapping[str, Any]) -> dict[str, list[list[float]]]:
    """The brushes a parcoords figure holds: ``column -> [[low, high], ...]`` (encoded coordinates).

    Accepts a figure built by :func:`parcoords_figure` or its dict form (``fig.to_dict()``, the
    figure state a browser session keeps); dimensions without a ``constraintrange`` are left out.
    """
    data = fig.to_dict()["data"] if isinstance(fig, go.Figure) else fig["data"]
    trace = next(t for t in data if t.get("type") == "parcoords")
    columns = trace.get("meta") or [d.get("label") for d in trace["dimensions"]]
    out = {}
    for col, dim in zip(columns, trace["dimensions"]):
        if dim.get("constraintrange") is not None and len(dim["constraintrange"]):
            out[col] = _normalise_ranges(dim["constraintrange"])
    return out


def constraints_from_restyle(events: Iterable[Mapping[str, Any]], columns: Sequence[str],
                             start: Mapping[str, Sequence] | None = None) -> dict[str, list[list[float]]]:
    """Apply plotly ``plotly_restyle`` payloads of a parcoords trace to the brushes ``start``.

    Each event maps ``"dimensions[i].constraintrange"`` to ``[ranges]`` (one entry per trace,
    ``ranges`` being ``[lo, hi]``, ``[[lo, hi], ...]`` or null when the brush was cleared);
    ``columns`` names dimension ``i``. Returns ``column -> [[low, high], ...]``.
    """
    out = {c: _normalise_ranges(r) for c, r in (start or {}).items()}
    for event in events:
        for name, value in event.items():
            m = _RESTYLE_KEY.fullmatch(name)
            if m is None or int(m.group(1)) >= len(columns):
                continue
            col = columns[int(m.group(1))]
            ranges = value[0] if isinstance(value, list) and len(value) == 1 and (
                value[0] is None or isinstance(value[0], list)) else value
            if ranges is None or not len(ranges):
                out.pop(col, None)
            else:
                out[col] = _normalise_ranges(ranges)
    return out


def brush_mask(table: pd.DataFrame, constraints: Mapping[str, Sequence]) -> np.ndarray:
    """Rows whose encoded value lies in every brushed dimension's ranges (any of its ranges).

    ``constraints`` is ``column -> [low, high]`` or ``[[low, high], ...]`` in the coordinates of
    :func:`encode_column` on this same table (as :func:`constraints_from_figure` returns them).
    """
    mask = np.ones(len(table), dtype=bool)
    for col, ranges in constraints.items():
        if col not in table:
            raise ValueError(f"unknown column {col!r}")
        values, _ = encode_column(table, col)
        hit = np.zeros(len(table), dtype=bool)
        for lo, hi in _normalise_ranges(ranges):
            hit |= (values >= lo) & (values <= hi)
        mask &= hit
    return mask


# --------------------------------------------------------------------------------------------
# Importance and kept fractions


def importance_figure(result: Any, title: str | None = None) -> go.Figure:
    """Horizontal bars of setting importances (largest on top), from an ``Importance`` result.

    The title names the metric, the method and how many runs the estimate rests on; the
    result's warning (too few runs) is printed under it.
    """
    items = sorted(result.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[column_label(k) for k, _ in items], orientation="h",
                           marker={"color": OKABE_ITO["blue"]},
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    sub = f"{result.method_label}, {result.n_used} of {result.n_runs} runs"
    if result.warning:
        sub += f"<br><span style='color:{OKABE_ITO['vermillion']}'>{result.warning}</span>"
    fig.update_layout(template="none", font=FONT, height=140 + 38 * max(len(items), 1), paper_bgcolor="white",
                      plot_bgcolor="white", margin={"l": 170, "r": 30, "t": 120, "b": 50},
                      xaxis={"title": {"text": "importance"}, "gridcolor": "#E5E8EE", "rangemode": "tozero"},
                      title={"text": (title or f"Which setting matters for {column_label(result.metric)}")
                             + f"<br><sup>{sub}</sup>", "x": 0.01, "xanchor": "left", "font": {"size": 18}})
    return fig


def kept_fraction_figure(kept: pd.DataFrame, title: str = "FLOPs kept per compressed layer",
                         methods: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars: one group per layer, one bar per run (a column of ``kept``), share of FLOPs kept.

    ``methods`` (one per column) colours each run as every chart does (:func:`run_colours`).
    """
    colours = run_colours(list(methods) if methods is not None else ["?"] * len(kept.columns))
    patterns = ["", "/", "x", "."]
    fig = go.Figure()
    for i, run in enumerate(kept.columns):
        fig.add_bar(x=list(kept.index), y=kept[run].to_numpy(float), name=str(run),
                    marker={"color": colours[i], "pattern": {"shape": patterns[i % 4]}},
                    hovertemplate=f"{run}<br>%{{x}}: %{{y:.1%}} kept<extra></extra>")
    fig.update_layout(template="none", font=FONT, height=460, barmode="group", paper_bgcolor="white",
                      plot_bgcolor="white", margin={"l": 70, "r": 30, "t": 90, "b": 60},
                      yaxis={"title": {"text": "FLOPs kept"}, "tickformat": ".0%", "gridcolor": "#E5E8EE",
                             "rangemode": "tozero"},
                      legend={"orientation": "h", "y": -0.15},
                      title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 18}})
    return fig
