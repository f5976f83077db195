"""Figures as static files, without a browser: PNG (and SVG/PDF) through matplotlib.

:func:`figure_png` renders a figure of :mod:`hscc_core.present.plots` with matplotlib (Agg): plotly's
own static export (kaleido) needs a Chrome download, which is not possible offline. Scatter (markers,
lines, step lines, error bars), bar (grouped, error bars, hatches), heatmap (colourscales, cell text,
placed grids) traces, reference lines, rectangles and annotations are drawn; the interactive figure
remains the reference.
"""

from __future__ import annotations

import html
import io
import re
import textwrap
import zipfile
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
import plotly.graph_objects as go

matplotlib.use("Agg", force=False)  # no display, no browser: files only

from matplotlib.colors import LinearSegmentedColormap, to_rgb  # noqa: E402 - after choosing the backend
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import EngFormatter, PercentFormatter  # noqa: E402
from plotly.colors import get_colorscale, unlabel_rgb  # noqa: E402

__all__ = ["FORMATS", "PRINT_DPI", "SCREEN_DPI", "figure_file", "figure_png", "figures_zip"]

FORMATS = ("png", "svg", "pdf")
SCREEN_DPI = 110  # previews; sizes are pixels at this resolution
PRINT_DPI = 300  # exported files: the same figure, sharper


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


def _title_lines(title: str, width_in: float, fontsize: float = 12) -> str:
    """A title wrapped to a static figure ``width_in`` inches wide: its first line (the head), then the
    rest (the subtitle) as one text. Plotly titles break their lines for a browser's width; as they
    were, a run's name ran off the static figure, and matplotlib squeezed the plot to make room."""
    # A character is about 0.6 em wide, and the title starts at the plot's left edge, not the figure's.
    chars = max(int(0.8 * width_in * 72 / (fontsize * 0.6)), 20)
    head, _, rest = title.partition("\n")
    lines = textwrap.wrap(head, chars) or [""]
    if rest.strip():
        lines += textwrap.wrap(" ".join(rest.split()), chars)
    return "\n".join(lines)


def _colormap(scale: Any):
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
    label = _text(t.name) if t.showlegend is not False and t.name else None  # legend names carry <br>
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
               edgecolor="white" if not hatch else "black", linewidth=0.5, label=_text(t.name) if t.name else None,
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
        horizontal = bool(t.colorbar and t.colorbar.orientation == "h")
        if t.name == "overlay":
            # An inset axes follows the image's box after its aspect is fixed, so the bar stays beside
            # (or under) the image instead of at the figure's edge.
            cax = ax.inset_axes([0.05, -0.075, 0.9, 0.035] if horizontal else [1.03, 0.0, 0.04, 1.0])
            bar = ax.figure.colorbar(im, cax=cax, orientation="horizontal" if horizontal else "vertical")
        else:
            bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if t.colorbar and t.colorbar.tickvals is not None and t.colorbar.ticktext is not None:
            bar.set_ticks(list(t.colorbar.tickvals), labels=[_text(v) for v in t.colorbar.ticktext])
        if t.colorbar and t.colorbar.title and t.colorbar.title.text:
            bar.set_label(_text(t.colorbar.title.text))


def figure_png(fig: go.Figure, width: int | None = None, height: int | None = None, dpi: int = SCREEN_DPI) -> bytes:
    """Render a figure of :mod:`hscc_core.present.plots` to PNG bytes with matplotlib (offline, no browser).

    Parameters
    ----------
    fig : go.Figure
    width, height : int, optional
        Pixels at 110 dpi (the figure keeps its proportions at other dpi); default the figure's
        height and a 4:3 or square width.
    dpi : int

    Returns
    -------
    bytes
        A PNG image.
    """
    return figure_file(fig, "png", width, height, dpi)


def figure_file(fig: go.Figure, fmt: str = "png", width: int | None = None, height: int | None = None,
                dpi: int = SCREEN_DPI) -> bytes:
    """:func:`figure_png` in another format: ``"png"``, ``"svg"`` or ``"pdf"`` (vector formats ignore dpi)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    _render(fig, width, height, dpi).savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def _render(fig: go.Figure, width: int | None, height: int | None, dpi: int) -> Figure:
    """The matplotlib figure :func:`figure_file` saves."""
    lay = fig.layout
    height = int(height or lay.height or 500)
    is_image = any(t.type == "heatmap" and t.name == "slice" for t in fig.data)
    width = int(width or lay.width or (height if is_image else round(height * 1.45)))
    # Sizes are pixels at 110 dpi: a 300-dpi file is the same figure, sharper.
    mfig = Figure(figsize=(width / min(dpi, SCREEN_DPI), height / min(dpi, SCREEN_DPI)), dpi=dpi)
    ax = mfig.add_subplot(1, 1, 1)
    bars = [t for t in fig.data if t.type == "bar"]
    if bars:
        _draw_bars(ax, bars)
    for t in fig.data:
        if t.type == "scatter":
            _draw_scatter(ax, t)
        elif t.type == "heatmap":
            _draw_heatmap(ax, t)
    _draw_shapes(ax, lay)
    _draw_annotations(ax, lay)
    _style_axes(ax, fig, is_image)
    mfig.tight_layout()
    if is_image and any(t.type == "heatmap" and t.name == "overlay" and t.colorbar and t.colorbar.orientation == "h"
                        for t in fig.data):
        mfig.subplots_adjust(bottom=max(mfig.subplotpars.bottom, 0.13))  # room for the bar under the image
    return mfig


def _draw_shapes(ax, lay) -> None:
    """Reference lines (the original's) and rectangles (region outlines)."""
    for s in lay.shapes or ():
        colour = s.line.color if s.line and s.line.color else "black"
        ls = _DASH.get(s.line.dash if s.line else None, "-")
        # add_hline/add_vline span the plot with "x domain" / "y domain" (older plotly: "paper").
        if s.type == "line" and str(s.xref).endswith(("paper", "domain")):
            ax.axhline(float(s.y0), color=colour, linestyle=ls, linewidth=1, zorder=1)
        elif s.type == "line" and str(s.yref).endswith(("paper", "domain")):
            ax.axvline(float(s.x0), color=colour, linestyle=ls, linewidth=1, zorder=1)
        elif s.type == "rect":
            ax.add_patch(Rectangle((float(s.x0), float(s.y0)), float(s.x1) - float(s.x0), float(s.y1) - float(s.y0),
                                   fill=False, edgecolor=colour, linewidth=1.5))


def _draw_annotations(ax, lay) -> None:
    """Data-placed labels (region labels on heat maps)."""
    for a in lay.annotations or ():
        if a.xref in (None, "x") and a.x is not None and a.y is not None:
            ax.text(float(a.x), float(a.y), _text(a.text), ha="center", va="center", fontsize=10,
                    color=(a.font.color if a.font and a.font.color else "black"),
                    bbox={"facecolor": "black", "alpha": 0.45, "linewidth": 0} if a.bgcolor else None)


def _style_axes(ax, fig: go.Figure, is_image: bool) -> None:
    """Ranges, labels, tick formats, grid, title and legend as the plotly figure has them."""
    lay = fig.layout
    xa, ya = lay.xaxis, lay.yaxis
    if xa.visible is False:
        ax.set_xticks([])
    if ya.visible is False:
        ax.set_yticks([])
    if xa.visible is False and ya.visible is False:
        ax.set_axis_off()
    if xa.type == "log":
        ax.set_xscale("log")
    if ya.type == "log":
        ax.set_yscale("log")
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
    for axis, fmt in ((ax.xaxis, xa.tickformat), (ax.yaxis, ya.tickformat)):
        if fmt and "%" in fmt:
            axis.set_major_formatter(PercentFormatter(1.0))
        elif fmt == "~s":
            axis.set_major_formatter(EngFormatter())
    if not is_image and not any(t.type == "heatmap" for t in fig.data):
        ax.grid(True, alpha=0.3)
    title = lay.title.text if lay.title else None
    if title:
        ax.set_title(_title_lines(_text(title), ax.figure.get_figwidth()), fontsize=12, loc="left")
    handles, _ = ax.get_legend_handles_labels()
    if handles and any(t.type == "bar" for t in fig.data):
        # Under the bars, as in the app: inside, wrapped run names covered them.
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=2, frameon=False)
    elif handles:
        ax.legend(fontsize=9, loc="best", framealpha=0.85)


def figures_zip(figures: Mapping[str, go.Figure], formats: tuple[str, ...] = ("png", "svg"), dpi: int = PRINT_DPI,
                **options: Any) -> bytes:
    """A zip of every figure in each of ``formats`` (PNG at ``dpi``, 300 by default; SVG/PDF are vector), file
    names made from the figure names, never paths: ``01-pareto-front.png``, ``01-pareto-front.svg``, ..."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, (name, fig) in enumerate(figures.items()):
            safe = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "figure"
            for fmt in formats:
                zf.writestr(f"{i + 1:02d}-{safe}.{fmt}", figure_file(fig, fmt, dpi=dpi, **options))
    return buf.getvalue()
