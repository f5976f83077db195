"""Reports of a run: one self-contained HTML file, and PNG figures, both usable offline.

* :func:`report_html` writes the run's configuration, metrics with bootstrap SEs against the
  original, the interactive figures (plotly.js embedded inline once, so the file opens without a
  network) and the environment (versions, machine). Every string from a run or a user is escaped.
* :func:`report_figures` builds the report's figures for a run (the Report page previews the same
  ones; :mod:`hscc_core.present.png` turns them into static files).
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import math
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from hscc_core.measure.machine import cpu_name
from hscc_core.present.heatmaps import layer_summaries, region_value_map
from hscc_core.present.labels import NOTICE, budget_sentence
from hscc_core.runs.config import run_name
from hscc_core.present.plots import (confusion_difference_figure, confusion_figure, overlay_figure, pareto_figure,
                                     per_class_figure)

__all__ = ["NOTICE", "environment_info", "metrics_rows", "report_figures", "report_html"]


_PACKAGES = ("hscc-explorer", "torch", "torchvision", "numpy", "scikit-learn", "tensorly", "plotly",
             "streamlit", "matplotlib", "pandas")


def environment_info() -> dict[str, str]:
    """Python, package versions, OS, CPU and thread count, time (UTC): what a reader needs to rerun."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": cpu_name(), "cpu_count": str(os.cpu_count())}
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
    label = run_name(run)
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
    sentence = budget_sentence(run)
    if sentence:
        parts.append(f"<p>{html.escape(sentence)} {html.escape(str(run['budget_search'].get('message', '')))}</p>")
    elif run.get("energy") is not None:
        parts.append(f"<p>Energy threshold used: {float(run['energy']):.4f}</p>")
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


def report_figures(run: Mapping[str, Any], original: Mapping[str, Any], runs: list[Mapping[str, Any]],
                   slice_: np.ndarray, names_only: bool = False) -> dict[str, go.Figure | None]:
    """The report's figures of ``run``: Pareto fronts among ``runs``, confusion matrices, per-class F1
    and the rank kept per region of every compressed layer over ``slice_`` (a test image).

    With ``names_only`` the names come back with None values and nothing is built.
    """
    name, classes = run_name(run), original["classes"]
    builders = {
        "Pareto front: accuracy vs FLOPs": lambda: pareto_figure(
            runs, "flops", "accuracy", original, error_bars=True, selected=run.get("cache_key"),
            title=f"Accuracy vs FLOPs, {len(runs)} runs (ringed: {name})"),
        "Pareto front: macro F1 vs FLOPs": lambda: pareto_figure(
            runs, "flops", "macro_f1", original, error_bars=True, selected=run.get("cache_key"),
            title=f"Macro F1 vs FLOPs, {len(runs)} runs (ringed: {name})"),
        "Confusion matrix, original": lambda: confusion_figure(original["confusion_matrix"], classes, False,
                                                               "Original model (rows: true class)"),
        "Confusion matrix, compressed": lambda: confusion_figure(run["confusion_matrix"], classes, False,
                                                                 f"{name} (rows: true class)"),
        "Confusion change": lambda: confusion_difference_figure(run["confusion_matrix"], original["confusion_matrix"],
                                                                classes, False, "Compressed minus original"),
        "Per-class F1": lambda: per_class_figure({"original": original, name: run}, "f1",
                                                 f"Per-class F1 (± bootstrap SE): original vs {name}"),
    }
    for layer, summary in layer_summaries(run).items():
        def regions(layer=layer, summary=summary):
            values, bounds, texts = region_value_map(summary, "rank")
            return overlay_figure(slice_, values, zmin=0, zmax=1, regions=bounds, region_text=texts,
                                  colorbar_title="rank kept",
                                  title=f"Rank kept per region · {layer}<br><sup>{name}, test image #0</sup>")
        builders[f"Rank kept per region, {layer}"] = regions
    return {k: None if names_only else build() for k, build in builders.items()}
