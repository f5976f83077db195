"""Reports of a run: one self-contained HTML file, and PNG figures, both usable offline.

* :func:`report_html` writes the run's configuration, metrics with bootstrap SEs against the
  original, the interactive figures (plotly.js embedded inline once, so the file opens without a
  network) and the environment (versions, machine). Every string from a run or a user is escaped.
* :func:`figure_png` renders a figure of :mod:`hscc_core.present.plots` to PNG with matplotlib (Agg, no
  browser): plotly's own static export (kaleido) needs a Chrome download, which is not possible
  offline. Scatter (markers, lines, step lines, error bars), bar (grouped, error bars, hatches),
  heatmap (colourscales, cell text, placed grids) traces, reference lines, rectangles and
  annotations are drawn; the interactive figure remains the reference.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import io
import math
import os
import platform
import re
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["NOTICE", "environment_info", "figure_png", "figures_zip", "metrics_rows", "report_html"]

NOTICE = "Research tool, not a medical device: predictions shown here must not be used for diagnosis."

_PACKAGES = ("hscc-explorer", "torch", "torchvision", "numpy", "scikit-learn", "tensorly", "plotly",
             "streamlit", "matplotlib", "pandas")


def environment_info() -> dict[str, str]:
    """Python, package versions, OS, CPU and thread count, time (UTC): what a reader needs to rerun."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": _cpu_name(), "cpu_count": str(os.cpu_count())}
    for name in _PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import torch

        info["torch_threads"] = str(torch.get_num_threads())
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - environment reporting must never fail a report
        pass
    info["generated"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
# Metrics table


def _pm(value: Any, se: Any, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    text = format(value * scale, spec)
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        text += " ± " + format(se * scale, spec.replace("+", ""))
    return text


def metrics_rows(run: Mapping[str, Any], original: Mapping[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(metric, original, compressed) rows for tables, values with their bootstrap SEs."""
    o = original or {}
    rows = [
        ("accuracy (%)", _pm(o.get("accuracy"), o.get("accuracy_se"), ".2f", 100),
         _pm(run.get("accuracy"), run.get("accuracy_se"), ".2f", 100)),
        ("macro F1", _pm(o.get("macro_f1"), o.get("macro_f1_se"), ".3f"),
         _pm(run.get("macro_f1"), run.get("macro_f1_se"), ".3f")),
    ]
    for cls, m in (run.get("per_class") or {}).items():
        om = (o.get("per_class") or {}).get(cls, {})
        for metric in ("precision", "recall", "f1"):
            rows.append((f"{cls.replace('_', ' ')}: {metric}", _pm(om.get(metric), om.get(f"{metric}_se"), ".3f"),
                         _pm(m.get(metric), m.get(f"{metric}_se"), ".3f")))
    rows += [
        ("FLOPs (whole model)", f"{run.get('flops_original', o.get('flops', 0)):,}", f"{run.get('flops', 0):,}"),
        ("parameters", f"{run.get('params_original', o.get('params', 0)):,}", f"{run.get('params', 0):,}"),
    ]
    if run.get("layer_flops"):
        rows.append(("FLOPs of the compressed layers", f"{sum(run['layer_flops_original'].values()):,}",
                     f"{sum(run['layer_flops'].values()):,}"))
    lat = run.get("latency_ms")
    if isinstance(lat, Mapping):
        for b in ("b1", "b32"):
            rows.append((f"latency, batch {b[1:]} (median / p90 ms)",
                         f"{lat['original'][b]['median']:.2f} / {lat['original'][b]['p90']:.2f}",
                         f"{lat['compressed'][b]['median']:.2f} / {lat['compressed'][b]['p90']:.2f}"))
        sp = run.get("speedup") or {}
        rows.append(("measured speed-up (batch 1 / 32)", "1",
                     f"x{sp.get('b1', float('nan')):.2f} / x{sp.get('b32', float('nan')):.2f} "
                     f"on {lat.get('device', '?')}"))
    if run.get("accuracy_delta") is not None:
        rows.append(("accuracy change (points)", "",
                     _pm(run["accuracy_delta"], run.get("accuracy_delta_se"), "+.2f", 100)
                     + f" (McNemar p = {run.get('p_value_vs_original', float('nan')):.3g})"))
    if run.get("agreement") is not None:
        rows.append(("agreement with the original (%)", "", _pm(run["agreement"], run.get("agreement_se"), ".2f", 100)))
        rows.append(("KL(original || compressed)", "",
                     _pm(run.get("kl_to_original"), run.get("kl_to_original_se"), ".2e")))
    return rows


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2em auto;max-width:1200px;color:#111;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .7em;text-align:left}
th{background:#f2f2f2} .notice{background:#fff4e0;border-left:4px solid #E69F00;padding:.6em 1em}
.fig{margin:1em 0} code{background:#f4f4f4;padding:0 .2em}
"""


def _table(rows, header=None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def report_html(run: Mapping[str, Any], original: Mapping[str, Any] | None = None,
                figures: Mapping[str, go.Figure] | None = None,
                environment: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """A self-contained HTML report of one run.

    Parameters
    ----------
    run : dict
        A compression run (or the original's run).
    original : dict, optional
        The original model's run, for the comparison columns.
    figures : dict name -> go.Figure
        Embedded interactively, in order; plotly.js is inlined once (no network needed).
    environment : dict, optional
        Defaults to :func:`environment_info`.
    title : str, optional

    Returns
    -------
    str
        The HTML document.
    """
    environment = environment_info() if environment is None else environment
    label = run.get("label") or run.get("method", "run")
    title = title or f"hscc-explorer report: {label}"
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='notice'>{html.escape(NOTICE)}</p>",
        f"<p>Data: <code>{html.escape(str(run.get('data', '?')))}</code> · "
        f"model {html.escape(str(run.get('arch', '?')))} at "
        f"{html.escape(str(run.get('input_size', '?')))} px · {html.escape(str(run.get('n', '?')))} test images · "
        f"cache key <code>{html.escape(str(run.get('cache_key', '')))}</code></p>",
        "<h2>Configuration</h2>",
        _table(sorted((k, v) for k, v in (run.get("config") or {}).items()), ("field", "value")),
    ]
    if run.get("energy") is not None:
        parts.append(f"<p>Energy threshold used: {float(run['energy']):.4f}</p>")
    budget = run.get("budget")
    if isinstance(budget, Mapping):
        parts.append(f"<p>Budget x{budget.get('target')}: {'met' if budget.get('met') else 'not met'}"
                     f" ({html.escape(str(budget.get('message', '')))}), compressed-layer FLOPs ratio "
                     f"x{budget.get('layer_flops_ratio', float('nan')):.2f}</p>")
    parts += ["<h2>Metrics</h2>",
              "<p>Standard errors (±) from 1,000 seeded bootstrap resamples of the test set; the accuracy "
              "change is paired (same test images) with McNemar's exact test.</p>",
              _table(metrics_rows(run, original), ("metric", "original", str(label)))]
    if figures:
        parts.append("<h2>Figures</h2>")
        first = True
        for name, fig in figures.items():
            parts.append(f"<div class='fig'><h3>{html.escape(name)}</h3>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                                     config={"displaylogo": False, "responsive": True}))
            parts.append("</div>")
            first = False
    parts += ["<h2>Environment</h2>", _table(sorted(environment.items()), ("what", "value")),
              f"<p class='notice'>{html.escape(NOTICE)}</p>", "</body></html>"]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# PNG through matplotlib

_MARKERS = {"circle": "o", "square": "s", "diamond": "D", "star": "*", "triangle-up": "^", "cross": "P",
            "x": "X", "hexagon": "h", "circle-open": "o"}
_HATCH = {"": "", "/": "//", "x": "xx", ".": "..", "\\": "\\\\", "-": "--", "|": "||", "+": "++"}
_DASH = {"dash": "--", "dot": ":", "dashdot": "-.", "solid": "-", None: "-"}
_TAG = re.compile(r"<[^>]+>")


def _text(value: Any) -> str:
    if value is None:
        return ""
    s = str(value).replace("<br>", "\n").replace("<br/>", "\n")
    return html.unescape(_TAG.sub("", s))


def _colormap(scale: Any):
    from matplotlib.colors import LinearSegmentedColormap, to_rgb
    from plotly.colors import get_colorscale, unlabel_rgb

    if isinstance(scale, str):
        scale = get_colorscale(scale)
    stops = []
    for pos, colour in scale:
        colour = str(colour)
        if colour.startswith("rgb"):
            rgb = tuple(v / 255 for v in unlabel_rgb(colour)[:3])
        else:
            rgb = to_rgb(colour)
        stops.append((float(pos), rgb))
    return LinearSegmentedColormap.from_list("plotly", stops)


def _errors(err) -> np.ndarray | None:
    if err is None or not err.visible or err.array is None:
        return None
    return np.asarray(err.array, dtype=float)


def _draw_scatter(ax, t) -> None:
    x = np.asarray(t.x, dtype=float)
    y = np.asarray(t.y, dtype=float)
    mode = t.mode or "markers"
    label = t.name if t.showlegend is not False and t.name else None
    if "lines" in mode:
        shape = t.line.shape if t.line else None
        ls = _DASH.get(t.line.dash if t.line else None, "-")
        colour = (t.line.color if t.line and t.line.color else None)
        width = (t.line.width if t.line and t.line.width else 2) * 0.75
        if shape in ("hv", "vh"):
            ax.step(x, y, where="post" if shape == "hv" else "pre", color=colour, linestyle=ls, linewidth=width,
                    label=label)
        else:
            ax.plot(x, y, color=colour, linestyle=ls, linewidth=width, label=label)
        label = None
    if "markers" in mode:
        m = t.marker
        symbol = m.symbol if m and isinstance(m.symbol, str) else "circle"
        colour = m.color if m and isinstance(m.color, str) else None
        size = (m.size if m and isinstance(m.size, (int, float)) else 8)
        open_marker = symbol.endswith("-open")
        ax.scatter(x, y, marker=_MARKERS.get(symbol, "o"), s=(size * 0.9) ** 2,
                   facecolors="none" if open_marker else colour, edgecolors=colour if open_marker else "white",
                   linewidths=2 if open_marker else 0.6, label=label, zorder=3)
    err = _errors(t.error_y)
    if err is not None:
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=(t.error_y.color or (t.marker.color if t.marker else None)),
                    elinewidth=1, capsize=2, zorder=2)


def _draw_bars(ax, bars) -> None:
    cats: list = []
    for t in bars:
        for c in t.x:
            if c not in cats:
                cats.append(c)
    n = len(bars)
    width = 0.8 / max(n, 1)
    for i, t in enumerate(bars):
        pos = np.array([cats.index(c) for c in t.x]) - 0.4 + width * (i + 0.5)
        m = t.marker
        hatch = _HATCH.get(m.pattern.shape if m and m.pattern and m.pattern.shape else "", "")
        ax.bar(pos, np.asarray(t.y, dtype=float), width=width, color=m.color if m else None, hatch=hatch,
               edgecolor="white" if not hatch else "black", linewidth=0.5, label=t.name,
               yerr=_errors(t.error_y), capsize=3)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([_text(c) for c in cats])


def _draw_heatmap(ax, t) -> None:
    z = np.asarray(t.z, dtype=float)
    h, w = z.shape
    cmap = _colormap(t.colorscale if t.colorscale is not None else "Viridis")
    zmin = t.zmin if t.zmin is not None else np.nanmin(z)
    zmax = t.zmax if t.zmax is not None else np.nanmax(z)
    categorical_x = t.x is not None and len(t.x) == w and isinstance(t.x[0], str)
    categorical_y = t.y is not None and len(t.y) == h and isinstance(t.y[0], str)
    x0 = 0.0 if t.x0 is None or categorical_x else float(t.x0)
    y0 = 0.0 if t.y0 is None or categorical_y else float(t.y0)
    dx = 1.0 if t.dx is None else float(t.dx)
    dy = 1.0 if t.dy is None else float(t.dy)
    extent = (x0 - dx / 2, x0 + dx * (w - 0.5), y0 + dy * (h - 0.5), y0 - dy / 2)
    im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, vmin=zmin, vmax=zmax, extent=extent, origin="upper",
                   alpha=float(t.opacity) if t.opacity is not None else None, interpolation="nearest", aspect="auto")
    if categorical_x:
        ax.set_xticks(range(w))
        ax.set_xticklabels([_text(v) for v in t.x], rotation=20)
    if categorical_y:
        ax.set_yticks(range(h))
        ax.set_yticklabels([_text(v) for v in t.y])
    if t.text is not None and t.texttemplate:
        text = np.asarray(t.text, dtype=object)
        for i in range(h):
            for j in range(w):
                v = z[i, j]
                frac = 0.5 if not np.isfinite(v) or zmax == zmin else (v - zmin) / (zmax - zmin)
                ax.text(x0 + j * dx, y0 + i * dy, _text(text[i, j]), ha="center", va="center", fontsize=12,
                        color="white" if frac > 0.6 else "black")
    if t.showscale is not False:
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if t.colorbar and t.colorbar.title and t.colorbar.title.text:
            bar.set_label(_text(t.colorbar.title.text))


def figure_png(fig: go.Figure, width: int | None = None, height: int | None = None, dpi: int = 110) -> bytes:
    """Render a figure of :mod:`hscc_core.present.plots` to PNG bytes with matplotlib (offline, no browser).

    Parameters
    ----------
    fig : go.Figure
    width, height : int, optional
        Pixels; default the figure's height and a 4:3 or square width.
    dpi : int

    Returns
    -------
    bytes
        A PNG image.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    lay = fig.layout
    height = int(height or lay.height or 500)
    is_image = any(t.type == "heatmap" and t.name == "slice" for t in fig.data)
    width = int(width or lay.width or (height if is_image else round(height * 1.45)))
    mfig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = mfig.add_subplot(1, 1, 1)
    bars = [t for t in fig.data if t.type == "bar"]
    if bars:
        _draw_bars(ax, bars)
    for t in fig.data:
        if t.type == "scatter":
            _draw_scatter(ax, t)
        elif t.type == "heatmap":
            _draw_heatmap(ax, t)
    for s in lay.shapes or ():
        colour = s.line.color if s.line and s.line.color else "black"
        ls = _DASH.get(s.line.dash if s.line else None, "-")
        if s.type == "line" and s.xref == "paper":
            ax.axhline(float(s.y0), color=colour, linestyle=ls, linewidth=1)
        elif s.type == "line" and s.yref == "paper":
            ax.axvline(float(s.x0), color=colour, linestyle=ls, linewidth=1)
        elif s.type == "rect":
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((float(s.x0), float(s.y0)), float(s.x1) - float(s.x0), float(s.y1) - float(s.y0),
                                   fill=False, edgecolor=colour, linewidth=1.5))
    for a in lay.annotations or ():
        if a.xref in (None, "x") and a.x is not None and a.y is not None:
            ax.text(float(a.x), float(a.y), _text(a.text), ha="center", va="center", fontsize=10,
                    color=(a.font.color if a.font and a.font.color else "black"),
                    bbox={"facecolor": "black", "alpha": 0.45, "linewidth": 0} if a.bgcolor else None)
    xa, ya = lay.xaxis, lay.yaxis
    if xa.visible is False:
        ax.set_xticks([])
    if ya.visible is False:
        ax.set_yticks([])
    if xa.visible is False and ya.visible is False:
        ax.set_axis_off()
    if xa.range is not None:
        ax.set_xlim(*xa.range)
    if ya.range is not None:
        ax.set_ylim(*ya.range)
    elif ya.autorange == "reversed" and not any(t.type == "heatmap" for t in fig.data):
        ax.invert_yaxis()
    if is_image:
        ax.set_aspect("equal")
    if xa.title and xa.title.text:
        ax.set_xlabel(_text(xa.title.text), fontsize=11)
    if ya.title and ya.title.text:
        ax.set_ylabel(_text(ya.title.text), fontsize=11)
    from matplotlib.ticker import EngFormatter, PercentFormatter

    for axis, fmt in ((ax.xaxis, xa.tickformat), (ax.yaxis, ya.tickformat)):
        if fmt and "%" in fmt:
            axis.set_major_formatter(PercentFormatter(1.0))
        elif fmt == "~s":
            axis.set_major_formatter(EngFormatter())
    if not is_image and not any(t.type == "heatmap" for t in fig.data):
        ax.grid(True, alpha=0.3)
    title = lay.title.text if lay.title else None
    if title:
        ax.set_title(_text(title), fontsize=12, loc="left")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=9, loc="best", framealpha=0.85)
    mfig.tight_layout()
    buf = io.BytesIO()
    mfig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figures_zip(figures: Mapping[str, go.Figure], **png_options: Any) -> bytes:
    """A zip of one PNG per figure (file names made from the figure names, never paths)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, (name, fig) in enumerate(figures.items()):
            safe = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "figure"
            zf.writestr(f"{i + 1:02d}-{safe}.png", figure_png(fig, **png_options))
    return buf.getvalue()
