"""Plotly figure builders for the app and the reports: pure functions from runs/arrays to ``go.Figure``.

Nothing here computes a metric or touches the store: builders take run dicts (the JSON of
:mod:`hscc_core.runs.pipeline`) and numpy arrays and return figures, so they are unit-tested directly and
shared by the Streamlit pages and :mod:`hscc_core.present.report` (which also renders them to PNG).

Colours follow the Okabe-Ito palette (Okabe and Ito 2008, "Color Universal Design"), which stays
distinguishable under the common colour-vision deficiencies; every method also has its own marker
symbol (and bars their own fill pattern), so no information is carried by colour alone. Layouts use
readable fonts and titles that carry the configuration, so a screenshot stands on its own.
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hscc_core.measure.machine import busy_timing
from hscc_core.present.labels import class_label, si, speed_text
from hscc_core.runs.config import run_name
from hscc_core.runs.pareto import axis_value, get_axis, pareto_front

__all__ = [
    "METHOD_STYLE",
    "OKABE_ITO",
    "axis_se",
    "chart_title",
    "confusion_difference_figure",
    "confusion_figure",
    "confusion_values",
    "discrete_colorscale",
    "key_from_selection",
    "overlay_figure",
    "PARETO_COLUMNS",
    "front_points",
    "pareto_axes",
    "pareto_columns",
    "pareto_figure",
    "pareto_points",
    "per_class_figure",
    "plotted_points",
    "plotted_runs",
    "run_colours",
    "run_hover",
    "run_title",
    "themed",
]

#: The Okabe-Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: method -> (display name, colour, plotly marker symbol).
METHOD_STYLE: dict[str, tuple[str, str, str]] = {
    "hscc": ("HSCC", OKABE_ITO["blue"], "circle"),
    "svd": ("Global SVD", OKABE_ITO["vermillion"], "square"),
    "tucker": ("Tucker-2", OKABE_ITO["bluish_green"], "diamond"),
    "original": ("Original", OKABE_ITO["black"], "star"),
}
_EXTRA_STYLES = [(OKABE_ITO["reddish_purple"], "triangle-up"), (OKABE_ITO["sky_blue"], "cross"),
                 (OKABE_ITO["orange"], "x"), (OKABE_ITO["yellow"], "hexagon")]
# Colours for a second run of a method already shown (no method owns them).
_SPARE_COLOURS = [OKABE_ITO["sky_blue"], OKABE_ITO["reddish_purple"], OKABE_ITO["orange"], OKABE_ITO["yellow"]]
_BAR_PATTERNS = ["", "/", "x", "."]
_FRONT_COLOUR = OKABE_ITO["orange"]

FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 15}
_AXIS_FORMAT = {"flops": "~s", "params": "~s", "latency": ".3~f", "accuracy": ".1%", "agreement": ".1%",
                "macro_f1": ".3f", "kl_to_original": "~g"}
# A positive metric that spans more than this ratio gets a log axis (KL divergences do).
_LOG_SPAN = 30.0
_SE_FIELDS = {"accuracy": "accuracy_se", "macro_f1": "macro_f1_se", "agreement": "agreement_se",
              "kl_to_original": "kl_to_original_se"}


def _style(method: str, extra_index: int = 0) -> tuple[str, str, str]:
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    colour, symbol = _EXTRA_STYLES[extra_index % len(_EXTRA_STYLES)]
    return method, colour, symbol


def run_colours(methods: Sequence[str]) -> list[str]:
    """One colour per run, following its method as the Pareto page draws it (HSCC blue, Global SVD
    vermillion, Tucker-2 green, the original black): the first run of each method gets the method's
    colour, a further run of a method already shown (or of an unknown one) the next spare colour.
    Bars of one run then have one colour in every chart of a page, whatever the order of the runs."""
    out, used, spare = [], set(), iter(_SPARE_COLOURS * (1 + len(methods) // len(_SPARE_COLOURS)))
    for method in methods:
        colour = METHOD_STYLE[method][1] if method in METHOD_STYLE else None
        if colour is None or colour in used:
            colour = next(spare)
        used.add(colour)
        out.append(colour)
    return out


_GRID = "#E5E8EE"
_AXIS = {"gridcolor": _GRID, "linecolor": "#888", "showline": True, "automargin": True}


def _layout(fig: go.Figure, title: str, height: int = 520, **extra: Any) -> go.Figure:
    # Plotly's named templates are deep-copied and validated into every figure (about 0.1 s each),
    # which a page of six figures would feel on every rerun: "none" plus these few settings is cheap.
    fig.update_layout(template="none", font=FONT, height=height, paper_bgcolor="white", plot_bgcolor="white",
                      hoverlabel={"align": "left"},
                      xaxis=_AXIS, yaxis=_AXIS,
                      title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 18}},
                      margin={"l": 70, "r": 30, "t": 110, "b": 60}, **extra)
    return fig


#: Text, grid and line colours of Streamlit's two themes.
THEME_COLOURS = {"light": {"text": "#31333F", "grid": _GRID, "line": "#888888"},
                 "dark": {"text": "#FAFAFA", "grid": "#3B3F4A", "line": "#9A9DA6"}}


# Streamlit's chart renderer reads the colours #000001 to #0000ff as placeholders of its own theme and
# swaps them, even with theme=None: Inferno's first stop (#000004) was drawn lavender, so zero Grad-CAM
# evidence and zero output error looked lighter than small values (and tinted the whole MRI slice).
_PLACEHOLDER = re.compile(r"^#0000[0-9a-fA-F]{2}$")


def _without_theme_placeholders(fig: go.Figure) -> go.Figure:
    """``fig``, or a copy whose colour-scale stops that Streamlit would swap are written as ``rgb()``."""
    def scales(trace):
        for part in (trace, getattr(trace, "marker", None), getattr(trace, "line", None)):
            scale = getattr(part, "colorscale", None) if part is not None else None
            if scale and any(isinstance(c, str) and _PLACEHOLDER.match(c) for _, c in scale):
                yield part, scale

    if not any(True for t in fig.data for _ in scales(t)):
        return fig
    out = go.Figure(fig)
    for trace in out.data:
        for part, scale in list(scales(trace)):
            part.colorscale = [[v, f"rgb(0, 0, {int(c[5:], 16)})" if isinstance(c, str) and _PLACEHOLDER.match(c)
                                else c] for v, c in scale]
    return out


def themed(fig: go.Figure, theme: str = "light") -> go.Figure:
    """The figure for Streamlit's ``"light"`` or ``"dark"`` theme.

    The builders draw for a white page (as the report and the PNG files need); for the dark theme
    this returns a copy with a transparent background, light text and grid, and the black marks
    (the original's star and reference lines, outlines) in the text colour, so nothing is a white card.
    In either theme, colour-scale stops that Streamlit would take for its own placeholders are
    written as ``rgb()`` (:data:`_PLACEHOLDER`).
    """
    if theme not in THEME_COLOURS:
        raise ValueError(f"theme must be 'light' or 'dark', got {theme!r}")
    fig = _without_theme_placeholders(fig)
    if theme == "light":
        return fig
    c = THEME_COLOURS[theme]
    out = go.Figure(fig)
    out.update_layout(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font_color=c["text"],
                      legend_bgcolor="rgba(0,0,0,0)")
    out.update_xaxes(gridcolor=c["grid"], linecolor=c["line"], zerolinecolor=c["grid"])
    out.update_yaxes(gridcolor=c["grid"], linecolor=c["line"], zerolinecolor=c["grid"])
    black = {OKABE_ITO["black"], "black"}
    for t in out.data:
        for part in ("marker", "line", "error_y"):
            obj = getattr(t, part, None)
            if obj is not None and getattr(obj, "color", None) in black:
                obj.color = c["text"]
        if t.type == "bar" and t.marker.line is not None and t.marker.line.color in black:
            t.marker.line.color = c["text"]
    for shape in out.layout.shapes or ():
        if shape.line.color in black:
            shape.line.color = c["text"]
    return out


def run_title(run: Mapping[str, Any]) -> str:
    """Short description of a run for titles: its label plus the dataset and model."""
    label = run.get("label") or ("original model" if run.get("method") == "original" else run.get("method", "run"))
    bits = [str(label)]
    if run.get("arch"):
        bits.append(f"{run['arch']} {run.get('input_size', '')} px".strip())
    if run.get("data"):
        data = str(run["data"])
        bits.append(data if len(data) <= 40 else "..." + data[-37:])
    return " · ".join(bits)


# --------------------------------------------------------------------------------------------
# Pareto


def axis_se(run: Mapping[str, Any], name: str) -> float:
    """Bootstrap standard error of axis ``name`` for ``run``; NaN when the run has none."""
    try:
        if name in _SE_FIELDS:
            value = run[_SE_FIELDS[name]]
        elif name.endswith("_f1") and name not in ("macro_f1",):
            value = run["per_class"][name[:-3]]["f1_se"]
        else:
            return math.nan
    except (KeyError, TypeError):
        return math.nan
    return math.nan if value is None else float(value)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def run_hover(run: Mapping[str, Any]) -> str:
    """HTML hover text of a run: configuration and headline metrics with their SEs."""
    cfg = run.get("config") or {}
    lines = [f"<b>{html.escape(run_name(run))}</b>"]
    cfg_bits = [f"{k}={v}" for k, v in sorted(cfg.items()) if v is not None and k != "method"]
    if cfg_bits:
        lines.append(html.escape(", ".join(cfg_bits)))
    if run.get("energy") is not None and cfg.get("energy") is None:
        lines.append(f"energy found by budget search: {run['energy']:.4f}")
    lines.append(f"accuracy {_fmt(run.get('accuracy'), '.2%')} ± {_fmt(run.get('accuracy_se'), '.2%')}")
    lines.append(f"macro F1 {_fmt(run.get('macro_f1'), '.3f')} ± {_fmt(run.get('macro_f1_se'), '.3f')}")
    if run.get("flops") is not None:
        fo = run.get("flops_original") or run["flops"]
        lines.append(f"{si(run['flops'], 'FLOPs')} ({_fmt(1 - run['flops'] / fo, '.1%')} fewer)")
    if run.get("params") is not None:
        lines.append(f"{si(run['params'])} parameters")
    sp = run.get("speedup") or {}
    if sp.get("b1") is not None:
        lines.append(f"{speed_text(sp['b1'])} (batch 1), {speed_text(sp.get('b32'))} (batch 32)")
        if busy_timing(run.get("latency_ms")):
            lines.append(f"noisy: other processes used {run['latency_ms']['others_cpu']:.0%} of the CPUs while timed")
    if run.get("agreement") is not None:
        lines.append(f"agreement {_fmt(run['agreement'], '.1%')}, KL {_fmt(run.get('kl_to_original'), '.2e')}")
    if run.get("p_value_vs_original") is not None:
        lines.append(f"p vs original {_fmt(run['p_value_vs_original'], '.3g')}")
    return "<br>".join(lines)


def _axis_title(name: str) -> str:
    axis = get_axis(name)
    return f"{axis.label} ({'lower' if axis.direction == 'min' else 'higher'} is better)"


#: Identity of :func:`pareto_columns` for the on-disk column cache: bump when its columns or texts change.
PARETO_COLUMNS = "pareto-2"  # 2: hover says when a run's speed was timed on a busy machine


def pareto_axes(classes: Sequence[str]) -> tuple[str, ...]:
    """Every axis :func:`pareto_figure` can draw for runs with these class names."""
    return ("flops", "params", "latency", "accuracy", "macro_f1", *[f"{c}_f1" for c in classes], "agreement",
            "kl_to_original")


def pareto_columns(run: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """What the Pareto figure and page need of one run, as flat typed values (one row of a points table).

    ``key``, ``method``, ``label`` (:func:`~hscc_core.runs.config.run_name`), ``hover``
    (:func:`run_hover`), ``split``; the HSCC settings the page filters by (``grid``, ``clusters``,
    ``cluster_side``, ``calibration``: None for other methods; ``allocation``); ``speedup_b1``;
    ``latency_original`` (the original's batch-1 median timed beside it); ``data``, ``arch``,
    ``input_size`` (for the title); and for every axis of :func:`pareto_axes` its value and
    ``<axis>_se`` (NaN where the run has none). A table of these rows draws the same figure as the runs.
    """
    cfg = run.get("config") or {}
    hscc = run.get("method") == "hscc"
    row = _point(run, pareto_axes(classes), run_hover(run))
    row.update({"label": run_name(run), "split": str(run.get("split") or "official"),
                "grid": cfg.get("grid") if hscc else None, "clusters": cfg.get("clusters") if hscc else None,
                # A stored canonical config leaves out a rule at its legacy value (output side, independent).
                "cluster_side": cfg.get("cluster_side", "output") if hscc else None,
                "calibration": cfg.get("calibration", "independent") if hscc else None,
                "allocation": cfg.get("allocation", "uniform"),
                "speedup_b1": _number((run.get("speedup") or {}).get("b1"))})
    return row


def _point(run: Mapping[str, Any], axes: Sequence[str], hover: str) -> dict[str, Any]:
    """What :func:`pareto_figure` draws of one run: key, method, hover text, axis values and SEs, the
    original's latency timed beside it, and the title's data, architecture and input size."""
    lat = run.get("latency_ms")
    original = lat["original"]["b1"]["median"] if isinstance(lat, Mapping) and lat.get("original") else None
    row = {"key": run.get("cache_key", ""), "method": run.get("method"), "hover": hover,
           "latency_original": _number(original), "data": run.get("data"), "arch": run.get("arch"),
           "input_size": _text(run.get("input_size"))}
    for axis in axes:
        row[axis], row[f"{axis}_se"] = axis_value(run, axis), axis_se(run, axis)
    return row


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _text(value: Any) -> str | None:
    # An input size as text: beside runs without one, numbers would become floats ("224.0 px").
    return None if value is None else str(value)


def pareto_points(runs: Sequence[Mapping[str, Any]], axes: Sequence[str],
                  hovers: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The points table of run dicts for some axes (what :func:`pareto_columns` rows hold, fewer columns)."""
    hovers = hovers or {}
    rows = [_point(r, axes, hovers.get(r.get("cache_key")) or run_hover(r)) for r in runs]
    return pd.DataFrame.from_records(rows, columns=["key", "method", "hover", "latency_original", "data", "arch",
                                                    "input_size", *[c for a in axes for c in (a, f"{a}_se")]])


def pareto_figure(
    runs: Sequence[Mapping[str, Any]] | pd.DataFrame,
    x: str = "flops",
    y: str = "accuracy",
    original: Mapping[str, Any] | None = None,
    *,
    show_front: bool = True,
    error_bars: bool = False,
    selected: str | None = None,
    title: str | None = None,
    hovers: Mapping[str, str] | None = None,
) -> go.Figure:
    """Scatter of runs over two named axes with the Pareto front as a step line.

    Parameters
    ----------
    runs : sequence of run dicts, or a points table
        Compressed runs (any method); runs lacking either axis value are left out. Or a table of
        :func:`pareto_columns` rows (as kept on disk for 10,000 runs, read without decoding a run),
        which draws the same figure.
    x, y : str
        Axis names of :mod:`hscc_core.runs.pareto` (``flops``, ``params``, ``latency``; ``accuracy``,
        ``macro_f1``, ``<class>_f1``, ``agreement``, ``kl_to_original``).
    original : run dict, optional
        The baseline, drawn as a black star with dotted reference lines.
    show_front : bool
        Draw the non-dominated runs as a step line (the attainable region's border).
    error_bars : bool
        Vertical bootstrap SE bars where the y axis has them.
    selected : str, optional
        Cache key of a run to ring.
    title : str, optional
        Defaults to "<y> vs <x>" with the run count.
    hovers : mapping, optional
        :func:`run_hover` text by cache key for run dicts; runs it lacks get theirs here.

    Returns
    -------
    go.Figure
        One scatter trace per method (``customdata[i][0]`` is the run's cache key, used by
        :func:`key_from_selection`), then "Pareto front", "Original" and "Selected" traces.
    """
    ax_x, ax_y = get_axis(x), get_axis(y)
    points = runs if isinstance(runs, pd.DataFrame) else pareto_points(runs, list(dict.fromkeys((x, y))), hovers)
    plotted = plotted_points(points, x, y)
    fig = go.Figure()
    _method_traces(fig, plotted, x, y, error_bars)
    if show_front and len(plotted):
        _front_trace(fig, plotted, x, y)
    _original_marks(fig, original, plotted, x, y, error_bars)
    _selected_trace(fig, plotted, selected, x, y)
    if title is None:
        title = f"{ax_y.label} vs {ax_x.label} · {len(plotted)} run{'' if len(plotted) == 1 else 's'}"
        # Missing text reads back from a table as NaN (truthy): None again, as in the runs.
        first = {k: None if pd.isna(v) else v for k, v in plotted.iloc[0][["data", "arch", "input_size"]].items()} \
            if len(plotted) else {}
        if first.get("data"):
            sub = run_title({"label": "compressed runs", **first})
            title += f"<br><sup>{html.escape(sub)}</sup>"
    # The legend goes under the plot: above it, a narrow column wraps it into the title.
    _layout(fig, title, height=620,
            legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
            clickmode="event+select", hovermode="closest")
    fig.update_layout(margin={"l": 70, "r": 30, "t": 80, "b": 140})
    fig.update_xaxes(title_text=_axis_title(x), tickformat=_AXIS_FORMAT.get(x, ""), showgrid=True,
                     type=_axis_type(plotted, original, x))
    fig.update_yaxes(title_text=_axis_title(y), tickformat=_AXIS_FORMAT.get(y, ".3f"), showgrid=True,
                     type=_axis_type(plotted, original, y))
    return fig


def plotted_runs(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> list[Mapping[str, Any]]:
    """The runs :func:`pareto_figure` draws: those with a value on both axes."""
    return [r for r in runs if not (math.isnan(axis_value(r, x)) or math.isnan(axis_value(r, y)))]


def plotted_points(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows of a points table :func:`pareto_figure` draws: those with a value on both axes."""
    keep = ~(np.isnan(points[x].to_numpy(float)) | np.isnan(points[y].to_numpy(float)))
    return points[keep]


def front_points(plotted: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows of a points table on the Pareto front of ``x`` and ``y``, sorted by ``x`` ascending
    (as :func:`~hscc_core.runs.pareto.front_runs` orders runs)."""
    pts = np.column_stack([plotted[x].to_numpy(float), plotted[y].to_numpy(float)])
    idx = pareto_front(pts.reshape(-1, 2), minimise_x=get_axis(x).direction == "min",
                       maximise_y=get_axis(y).direction == "max")
    return plotted.iloc[list(idx)]


def _axis_type(plotted: pd.DataFrame, original, name: str) -> str:
    """``log`` for a divergence whose values span decades (linear ticks would read 7e-1 ... 0e+0)."""
    if name != "kl_to_original":
        return "linear"
    values = plotted[name].to_numpy(float)
    if not len(values) or values.min() <= 0:
        return "linear"
    return "log" if values.max() / values.min() > _LOG_SPAN else "linear"


def _method_traces(fig: go.Figure, plotted: pd.DataFrame, x: str, y: str, error_bars: bool) -> None:
    """One marker trace per method (customdata: cache key, hover text), in a fixed method order."""
    methods = list(dict.fromkeys(plotted["method"]))
    order = [m for m in ("hscc", "svd", "tucker") if m in methods] + [m for m in methods if m not in METHOD_STYLE]
    method_of = plotted["method"].to_numpy(object)
    for i, method in enumerate(order):
        group = plotted[method_of == method]
        name, colour, symbol = _style(method, i)
        # numpy arrays, not lists: plotly validates and copies a list element by element, which took
        # most of a second for 10,000 runs; an array is checked and copied whole.
        custom = np.empty((len(group), 2), dtype=object)
        custom[:, 0] = group["key"].to_numpy(object)
        custom[:, 1] = group["hover"].to_numpy(object)
        err = group[f"{y}_se"].to_numpy(float) if error_bars else None
        fig.add_trace(go.Scatter(
            x=group[x].to_numpy(float), y=group[y].to_numpy(float), mode="markers", name=name,
            marker={"color": colour, "symbol": symbol, "size": 11, "line": {"width": 1, "color": "white"}},
            customdata=custom, hovertemplate="%{customdata[1]}<extra></extra>",
            error_y=({"type": "data", "array": np.nan_to_num(err, nan=0.0), "visible": True,
                      "thickness": 1.2, "width": 3, "color": colour} if err is not None else None),
        ))


def _front_trace(fig: go.Figure, plotted: pd.DataFrame, x: str, y: str) -> None:
    """The non-dominated runs as a step line (the attainable region's border)."""
    front = front_points(plotted, x, y)
    if not len(front):
        return
    # Sorted by x ascending; when x is maximised the stair climbs the other way.
    shape = "vh" if get_axis(x).direction == "max" else "hv"
    fig.add_trace(go.Scatter(x=front[x].to_numpy(float).tolist(), y=front[y].to_numpy(float).tolist(),
                             mode="lines+markers", name=f"Pareto front ({len(front)})",
                             line={"color": _FRONT_COLOUR, "width": 2.5, "dash": "dash", "shape": shape},
                             marker={"color": _FRONT_COLOUR, "symbol": "circle-open", "size": 17,
                                     "line": {"width": 2}},
                             hoverinfo="skip"))


def _original_value(original: Mapping[str, Any] | None, plotted: pd.DataFrame, name: str) -> float:
    if original is None:
        return math.nan
    value = axis_value(original, name)
    if math.isnan(value) and name == "latency":
        # The original's latency is timed beside every compressed model (same process): use the median.
        lat = plotted["latency_original"].to_numpy(float)
        lat = lat[~np.isnan(lat)]
        value = float(np.median(lat)) if len(lat) else math.nan
    return value


def _original_marks(fig: go.Figure, original, plotted: pd.DataFrame, x: str, y: str, error_bars: bool) -> None:
    """The original as a black star with dotted reference lines through it."""
    if original is None:
        return
    ox, oy = _original_value(original, plotted, x), _original_value(original, plotted, y)
    if not math.isnan(oy):
        fig.add_hline(y=oy, line={"color": OKABE_ITO["black"], "width": 1, "dash": "dot"})
    if not math.isnan(ox):
        fig.add_vline(x=ox, line={"color": OKABE_ITO["black"], "width": 1, "dash": "dot"})
    if not (math.isnan(ox) or math.isnan(oy)):
        ose = axis_se(original, y) if error_bars else math.nan
        fig.add_trace(go.Scatter(
            x=[ox], y=[oy], mode="markers", name="Original",
            marker={"color": OKABE_ITO["black"], "symbol": "star", "size": 16},
            customdata=[["", run_hover(original)]], hovertemplate="%{customdata[1]}<extra></extra>",
            error_y=({"type": "data", "array": [ose], "visible": True, "color": OKABE_ITO["black"]}
                     if not math.isnan(ose) else None),
        ))


def _selected_trace(fig: go.Figure, plotted: pd.DataFrame, selected: str | None, x: str, y: str) -> None:
    """A ring around the selected run."""
    chosen = plotted[plotted["key"].to_numpy(object) == selected] if selected else plotted.iloc[:0]
    if len(chosen):
        r = chosen.iloc[0]
        fig.add_trace(go.Scatter(
            x=[float(r[x])], y=[float(r[y])], mode="markers", name="Selected run",
            marker={"color": OKABE_ITO["black"], "symbol": "circle-open", "size": 22, "line": {"width": 3}},
            customdata=[[r["key"], r["hover"]]], hovertemplate="%{customdata[1]}<extra></extra>",
        ))


def key_from_selection(points: Sequence[Mapping[str, Any]] | None, fig: go.Figure | None = None) -> str | None:
    """The cache key of the first selected run in a plotly selection event of :func:`pareto_figure`.

    Parameters
    ----------
    points : list of dict
        ``event.selection.points`` as Streamlit reports it (``customdata``, or ``curve_number`` and
        ``point_index``/``point_number``).
    fig : go.Figure, optional
        The figure, to resolve points that come without ``customdata``.

    Returns
    -------
    str or None
        None when nothing that is a run (the front, the original) was selected.
    """
    for p in points or []:
        data = p.get("customdata")
        key = None
        if isinstance(data, (list, tuple)) and data:
            key = data[0]
        elif isinstance(data, str):
            key = data
        elif fig is not None:
            curve = p.get("curve_number", p.get("curveNumber"))
            index = p.get("point_index", p.get("point_number", p.get("pointIndex")))
            if curve is not None and index is not None and 0 <= curve < len(fig.data):
                cd = fig.data[curve].customdata
                if cd is not None and 0 <= index < len(cd):
                    key = cd[index][0]
        if key:
            return str(key)
    return None


# --------------------------------------------------------------------------------------------
# Confusion matrices and per-class metrics


def confusion_values(cm: Sequence[Sequence[float]] | np.ndarray, normalise: bool = False) -> np.ndarray:
    """The matrix as floats, rows divided by their sums when ``normalise`` (empty rows stay 0)."""
    m = np.asarray(cm, dtype=np.float64)
    if not normalise:
        return m
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def _cell_text(z: np.ndarray, normalise: bool, signed: bool = False) -> list[list[str]]:
    """One short label per cell: counts, or percentages of the row (signed for differences)."""
    if normalise:
        return [[f"{100 * v:+.0f} pt" if signed else f"{100 * v:.0f} %" for v in row] for row in z]
    return [[f"{int(round(v)):+d}" if signed else f"{int(round(v))}" for v in row] for row in z]


def confusion_figure(cm, classes: Sequence[str], normalise: bool = False, title: str = "",
                     height: int = 520) -> go.Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted), one label per cell
    (the count, or the percentage of the row: ``"83 %"``); no colour bar, the labels say the values."""
    z = confusion_values(cm, normalise)
    labels = [class_label(c) for c in classes]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1 if normalise else max(float(z.max()), 1.0),
        text=_cell_text(z, normalise), texttemplate="%{text}", textfont={"size": 17}, xgap=2, ygap=2,
        showscale=False,  # every cell carries its number: a colour bar would only take the matrix's width
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
    ))
    return _matrix_layout(fig, labels, title, height)


def _matrix_layout(fig: go.Figure, labels: list[str], title: str, height: int) -> go.Figure:
    """Axes of a class-by-class matrix: each class name on two lines, so four fit side by side."""
    _layout(fig, title, height=height)
    fig.update_layout(margin={"l": 90, "r": 20, "t": 90, "b": 80})
    wrapped = [label.replace(" ", "<br>", 1) for label in labels]
    # Upright names on two lines: tilted, two-line names ran into each other (the change matrix at
    # 1440 px, every Compare matrix at 1280 px). At 12 px "meningioma" fits a 75-px column.
    fig.update_xaxes(title_text="predicted class", side="bottom", showline=False, tickangle=0,
                     tickvals=labels, ticktext=wrapped, tickfont={"size": 12})
    fig.update_yaxes(title_text="true class", autorange="reversed", showline=False, tickvals=labels, ticktext=wrapped,
                     tickfont={"size": 12})
    return fig


#: The difference matrix's two ends: better (more correct answers, fewer errors) and worse.
BETTER, WORSE = OKABE_ITO["blue"], OKABE_ITO["vermillion"]


def confusion_difference_figure(cm_new, cm_ref, classes: Sequence[str], normalise: bool = False,
                                title: str = "", height: int = 520) -> go.Figure:
    """``cm_new - cm_ref`` with colours that say better or worse.

    On the diagonal more images means more correct answers (better); off it, more errors (worse). The
    colour is therefore the change's *merit*: +change on the diagonal, -change off it, on a diverging
    scale from vermillion (worse) through white (no change) to blue (better). The cell labels keep the
    signed change in images (or points of the row's percentage), so the numbers read as they are.
    """
    z = confusion_values(cm_new, normalise) - confusion_values(cm_ref, normalise)
    merit = np.where(np.eye(z.shape[0], dtype=bool), z, -z)
    labels = [class_label(c) for c in classes]
    lim = max(float(np.abs(z).max()), 1e-9 if normalise else 1.0)
    meaning = np.where(merit > 0, "better", np.where(merit < 0, "worse", "no change"))
    kind = np.where(np.eye(z.shape[0], dtype=bool), "correct answers", "errors")
    fig = go.Figure(go.Heatmap(
        z=merit, x=labels, y=labels, colorscale=[[0.0, WORSE], [0.5, "#f7f7f7"], [1.0, BETTER]],
        zmin=-lim, zmax=lim, zmid=0, xgap=2, ygap=2,
        text=_cell_text(z, normalise, signed=True), texttemplate="%{text}", textfont={"size": 17},
        customdata=np.dstack([kind, meaning]),
        # Under the matrix, not beside it: beside it the bar took the width the class names need.
        colorbar={"orientation": "h", "thickness": 12, "len": 0.8, "x": 0.5, "xanchor": "center", "y": -0.3,
                  "yanchor": "top", "tickvals": [-lim, 0, lim], "ticktext": ["worse", "same", "better"]},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} %{customdata[0]}: %{customdata[1]}<extra></extra>",
    ))
    _matrix_layout(fig, labels, title, height + 50)
    fig.update_layout(margin={"b": 130})
    return fig


def legend_name(name: str, width: int = 30) -> str:
    """A run's name for a legend entry, broken into lines of at most ``width`` characters: plotly
    never wraps legend text, and a half-width chart cut "HSCC 4x4 regions, 4 input clusters, greedy
    bud..." at 1280 px."""
    return "<br>".join(html.escape(line) for line in textwrap.wrap(name, width)) or html.escape(name)


def per_class_figure(runs: Mapping[str, Mapping[str, Any]], metric: str = "f1", title: str | None = None) -> go.Figure:
    """Grouped bars of one per-class metric (precision, recall or f1) with bootstrap SE error bars.

    Parameters
    ----------
    runs : dict name -> run
        Usually ``{"original": ..., "<label>": ...}``; bar order follows the dict.
    metric : {"precision", "recall", "f1"}
    """
    if metric not in ("precision", "recall", "f1"):
        raise ValueError(f"metric must be precision, recall or f1, got {metric!r}")
    fig = go.Figure()
    colours = run_colours([run.get("method", "hscc") for run in runs.values()])
    for i, (name, run) in enumerate(runs.items()):
        pc = run.get("per_class") or {}
        classes = list(run.get("classes") or pc)
        fig.add_trace(go.Bar(
            x=[class_label(c).replace(" ", "<br>", 1) for c in classes], y=[pc[c][metric] for c in classes],
            name=legend_name(name),
            marker={"color": colours[i],
                    "pattern": {"shape": _BAR_PATTERNS[i % len(_BAR_PATTERNS)]}},
            error_y={"type": "data", "array": [pc[c].get(f"{metric}_se") or 0 for c in classes], "visible": True},
            hovertemplate=f"{html.escape(name)}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
        ))
    label = {"f1": "F1", "precision": "precision", "recall": "recall"}[metric]
    # The legend goes below the bars, anchored left: above them its wrapped run names ran into the title.
    # Class names take two short lines, so the axis labels stay level. The legend sits at the figure's
    # bottom edge (container coordinates) and the margin grows to hold it: placed in plot coordinates,
    # y = -0.2 of a plot that four wrapped run names had shrunk hid the class names' second lines.
    # Each legend entry takes up to three lines (wrapped run names): the figure grows with the runs so
    # that the bars keep their height.
    _layout(fig, title or f"Per-class {label} (± bootstrap SE)", height=460 + 40 * max(len(runs) - 2, 0),
            barmode="group",
            legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "xanchor": "left",
                    "x": 0.0})
    fig.update_xaxes(tickangle=0)
    fig.update_yaxes(title_text=label, range=[0, 1.08])
    return fig


# --------------------------------------------------------------------------------------------
# Overlays on MRI slices


def discrete_colorscale(n: int) -> list[list]:
    """A stepped colourscale for integer labels 0..n-1 (Okabe-Ito colours, then repeats)."""
    colours = [OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "vermillion", "sky_blue",
                                      "reddish_purple", "yellow", "black")]
    n = max(int(n), 1)
    scale = []
    for i in range(n):
        c = colours[i % len(colours)]
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


#: Characters per subtitle line: a half-width map at 1280 px holds about 60 of plotly's small type.
SUBTITLE_WIDTH = 52


def chart_title(head: str, sub: str, width: int = SUBTITLE_WIDTH) -> str:
    """A chart title: ``head``, then ``sub`` in small type wrapped every ``width`` characters.

    Plotly does not wrap titles, and a chart cuts what does not fit: a run's name under a half-width
    map at 1280 px lost its end ("... greedy budget x6, sequer"). ``sub`` is plain text (escaped here).

    Parameters
    ----------
    head : str
        The title line, kept short by the caller (plotly markup allowed).
    sub : str
        The subtitle, plain text.
    width : int
        The longest subtitle line, in characters.

    Returns
    -------
    str
        The title in plotly's markup (``<br>`` and ``<sup>``).
    """
    lines = textwrap.wrap(sub, width) or [""]
    return f"{head}<br><sup>{'<br>'.join(html.escape(line, quote=False) for line in lines)}</sup>"


def overlay_figure(
    image: np.ndarray,
    overlay: np.ndarray | None = None,
    *,
    opacity: float = 0.5,
    colorscale: Any = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str = "",
    title: str = "",
    regions: Sequence[Sequence[int]] | None = None,
    region_text: Sequence[str] | None = None,
    categories: int | None = None,
    height: int = 460,
) -> go.Figure:
    """An MRI slice in grey with a map laid over it.

    Parameters
    ----------
    image : ndarray (H, W)
        The slice (any numeric range; shown in grey).
    overlay : ndarray (h, w), optional
        Values on a grid covering the whole slice (a layer's output map, or the image's own grid);
        NaN cells are transparent.
    opacity : float
        Overlay opacity in [0, 1].
    regions : list of (h0, h1, w0, w1), optional
        Region bounds on the overlay grid, outlined in white.
    region_text : list of str, optional
        One label per region, printed at its centre.
    categories : int, optional
        Treat the overlay as integer labels 0..categories-1 with a stepped colourscale.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    hi, wi = img.shape
    fig = go.Figure(go.Heatmap(z=img, colorscale="gray", showscale=False, hoverinfo="skip", name="slice"))
    sy = sx = 1.0
    if overlay is not None:
        ov = np.asarray(overlay, dtype=np.float64)
        if ov.ndim != 2:
            raise ValueError(f"overlay must be 2-D, got shape {ov.shape}")
        h, w = ov.shape
        sy, sx = hi / h, wi / w
        if categories is not None:
            colorscale = discrete_colorscale(categories)
            zmin, zmax = -0.5, categories - 0.5
        fig.add_trace(go.Heatmap(
            z=ov, x0=(sx - 1) / 2, dx=sx, y0=(sy - 1) / 2, dy=sy, colorscale=colorscale, zmin=zmin, zmax=zmax,
            opacity=float(np.clip(opacity, 0.0, 1.0)), name="overlay", hoverongaps=False,
            # Under the image, as wide as it: a bar beside a square image drifts away from it in a wide column.
            colorbar={"title": {"text": colorbar_title, "font": {"size": 14}, "side": "top"}, "thickness": 12,
                      "orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.01, "yanchor": "top", "len": 0.9,
                      **({"tickvals": list(range(categories)), "ticktext": [str(c) for c in range(categories)]}
                         if categories else {})},
            hovertemplate=f"{html.escape(colorbar_title) or 'value'} %{{z:.3g}}<extra></extra>",
        ))
        if regions is not None:
            for i, (h0, h1, w0, w1) in enumerate(regions):
                fig.add_shape(type="rect", x0=w0 * sx - 0.5, x1=w1 * sx - 0.5, y0=h0 * sy - 0.5,
                              y1=h1 * sy - 0.5, line={"color": "white", "width": 2})
                if region_text is not None and i < len(region_text):
                    fig.add_annotation(x=(w0 + w1) / 2 * sx - 0.5, y=(h0 + h1) / 2 * sy - 0.5,
                                       text=str(region_text[i]), showarrow=False,
                                       font={"color": "white", "size": 13},
                                       bgcolor="rgba(0,0,0,0.45)")
    _layout(fig, title, height=height)
    fig.update_layout(margin={"l": 10, "r": 10, "t": 80, "b": 70 if overlay is not None else 10})
    fig.update_xaxes(visible=False, range=[-0.5, wi - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[hi - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return fig
