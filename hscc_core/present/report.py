"""Reports of a run: one self-contained HTML file, and PNG figures, both usable offline.

* :func:`report_html` writes the run's configuration, metrics with bootstrap SEs against the
  original, the interactive figures (plotly.js embedded inline once, so the file opens without a
  network) and the environment (versions, machine). Every string from a run or a user is escaped.
* :func:`report_figures` builds the report's figures for a run (the Report page previews the same
  ones; :mod:`hscc_core.present.png` turns them into 300-dpi PNG and SVG files): Pareto fronts with
  the original's reference lines, confusion matrices and their change, per-class F1, the rank kept per
  region of every compressed layer and, given :func:`image_maps`, each layer's output error and both
  models' Grad-CAM on one test image.
* :func:`layer_table` is the per-layer table (the Explorer shows the same rows).

Every number names the split whose test images measured it (runs stored before splits existed used
the official split).
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

from hscc_core.compress.methods import get_method
from hscc_core.measure.machine import busy_timing, cpu_name
from hscc_core.present import explain
from hscc_core.present.dashboard import column_label
from hscc_core.present.heatmaps import error_figure, layer_summaries, region_value_map
from hscc_core.present.labels import (NOTICE, budget_sentence, class_label, method_title, p_text, si, speed_text,
                                      split_name)
from hscc_core.present.plots import (chart_title, confusion_difference_figure, confusion_figure, overlay_figure,
                                     pareto_figure, per_class_figure)
from hscc_core.runs.config import (ALLOCATION_TITLES, CALIBRATION_TITLES, RunConfig, describe_calibration_set,
                                     run_name)

__all__ = ["NOTICE", "config_rows", "environment_info", "image_maps", "layer_table", "metrics_rows", "per_class_rows",
           "report_figures", "report_html"]


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


def per_class_rows(run: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per class: its name with its number of test images, and precision, recall and F1 with
    their bootstrap SEs in one cell each ("0.988 ± 0.012").

    Four columns fit half a page at 1280 px; seven (each SE a column of its own, and the count) were
    cut there. ``run`` is a run or the original, with ``per_class`` as :func:`hscc_core.runs` stores it.
    """
    return [{"class (test images)": f"{class_label(cls)} ({m.get('support', '?')})",
             **{name: _pm(m.get(metric), m.get(f"{metric}_se"), ".3f")
                for name, metric in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"))}}
            for cls, m in (run.get("per_class") or {}).items()]


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
            rows.append((f"{class_label(cls)}: {metric}", _pm(om.get(metric), om.get(f"{metric}_se"), ".3f"),
                         _pm(m.get(metric), m.get(f"{metric}_se"), ".3f")))
    rows += [
        ("FLOPs (whole model)", si(run.get("flops_original", o.get("flops", 0)), "FLOPs"),
         si(run.get("flops", 0), "FLOPs")),
        ("parameters", si(run.get("params_original", o.get("params", 0))), si(run.get("params", 0))),
    ]
    if run.get("layer_flops"):
        rows.append(("FLOPs of the compressed layers", si(sum(run["layer_flops_original"].values()), "FLOPs"),
                     si(sum(run["layer_flops"].values()), "FLOPs")))
    lat = run.get("latency_ms")
    if isinstance(lat, Mapping):
        for b in ("b1", "b32"):
            rows.append((f"latency, batch {b[1:]} (median / p90 ms)",
                         f"{lat['original'][b]['median']:.2f} / {lat['original'][b]['p90']:.2f}",
                         f"{lat['compressed'][b]['median']:.2f} / {lat['compressed'][b]['p90']:.2f}"))
        sp = run.get("speedup") or {}
        rows.append(("measured speed (batch 1 / 32)", "",
                     f"{speed_text(sp.get('b1'))} / {speed_text(sp.get('b32'))} on {lat.get('device', '?')}"))
        if busy_timing(lat):  # a row of its own: a table cell would cut the sentence off
            rows.append(("speed noisy: timed on a busy machine", "",
                         f"other processes used {lat['others_cpu']:.0%} of the CPUs"))
    if run.get("accuracy_delta") is not None:
        rows.append(("accuracy change (points)", "",
                     _pm(run["accuracy_delta"], run.get("accuracy_delta_se"), "+.2f", 100)
                     + f" (McNemar {p_text(run.get('p_value_vs_original'))})"))
    if run.get("agreement") is not None:
        rows.append(("agreement with the original (%)", "", _pm(run["agreement"], run.get("agreement_se"), ".2f", 100)))
        rows.append(("KL(original || compressed)", "",
                     _pm(run.get("kl_to_original"), run.get("kl_to_original_se"), ".3g")))
    return rows


def config_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A run's settings as ``(setting, value)`` rows in words, for the report page and the HTML file.

    Every setting the run's method reads is shown at the value the run used, those a stored config
    leaves out at their default included (a canonical config omits its :data:`LEGACY` values, so an
    output-side run has no ``cluster_side``): a report reader sees the whole recipe. Settings the
    method does not read (an SVD run's grid) are left out. A config that no longer parses (an older
    or hand-edited run) is shown field by field as stored.
    """
    try:
        cfg = RunConfig.from_canonical(config)
    except (TypeError, ValueError):
        return [(column_label(k), _word(k, v)) for k, v in sorted(config.items())]
    method = get_method(cfg.method)
    rows = [("method", method.title)]
    if method.data_aware:
        rows += [("regions", f"{cfg.grid} x {cfg.grid} grid"),
                 ("clusters", f"{cfg.clusters} per region, of {cfg.cluster_side} channels")]
    if cfg.budget is not None:
        rows += [("target", f"FLOPs budget x{cfg.budget:g} (compressed layers)"),
                 ("rank allocation", ALLOCATION_TITLES.get(cfg.allocation, cfg.allocation))]
    else:
        rows += [("target", f"energy threshold tau = {cfg.energy:g}"),
                 ("rank allocation", "one energy threshold everywhere")]
    if method.rank_multiples:
        multiple = cfg.rank_multiple
        rows.append(("ranks in multiples of", "1 (no constraint)" if multiple == 1 else str(multiple)))
    if method.data_aware:
        rows.append(("calibration", CALIBRATION_TITLES.get(cfg.calibration, cfg.calibration)
                     + (" (each layer on the original's inputs)" if cfg.calibration == "independent"
                        else " (in forward order, on the compressed model's inputs)")))
    if cfg.reads_calibration:
        rows.append(("calibration images", describe_calibration_set(cfg.calib_size, cfg.calib_flip)))
    rows += [("fine-tuning epochs", str(cfg.finetune_epochs)), ("seed", str(cfg.seed))]
    return rows


def _word(key: str, value: Any) -> str:
    """One stored config value in words (the fallback of :func:`config_rows`)."""
    if value is None:
        return "not used"
    if key == "method":
        return method_title(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def layer_table(run: Mapping[str, Any]) -> list[dict]:
    """One row per compressed layer, in forward order: FLOPs in MFLOPs, the share of FLOPs kept, the
    grid, clusters and ranks, and the output error. Layers are named ``conv 1 · features.0`` so that
    sorting the text keeps the order.

    The output error is ``||Y' - Y|| / ||Y||``, the square root of the run's stored ``layer_errors``
    (relative squared errors): the same unit as the Heatmaps page's per-position error map, whose
    root mean square over positions it is (on other images).
    """
    rows = []
    errors = run.get("layer_errors") or {}
    for i, (name, s) in enumerate(layer_summaries(run).items(), 1):
        used = sorted(set(s.clusters_used or ()))
        squared = errors.get(name)
        rows.append({"layer": f"conv {i:d} · {name}",
                     "original MFLOPs": (run.get("layer_flops_original") or {}).get(name, 0) / 1e6,
                     "compressed MFLOPs": (run.get("layer_flops") or {}).get(name, 0) / 1e6,
                     "FLOPs kept %": 100 * s.kept_fraction,
                     "regions": "x".join(map(str, s.grid_hw)) if s.grid_hw else "1",
                     # One number when every region used as many clusters, else the range over regions.
                     "clusters used": "-".join(map(str, (used[0], used[-1]) if len(used) > 1 else used)),
                     "ranks kept": s.rank_text(),
                     "output error": math.sqrt(squared) if squared is not None else None})
    return rows


def _layer_rows_text(rows: list[dict]) -> list[list[str]]:
    def cell(v):
        if v is None:
            return "n/a"
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1 else (f"{v:.1f}" if isinstance(v, float) else v)

    return [[cell(v) for v in row.values()] for row in rows]


def image_maps(original, compressed, x, layers: list[str], cam_layer: str) -> dict:
    """What the report draws on one test image ``x`` (1, C, S, S): each compressed layer's output error
    (the same input fed to both layers) and both models' Grad-CAM for the original's answer.

    Returns
    -------
    dict
        ``{"error": {layer: (H, W) map}, "cam_original": CamResult, "cam_compressed": CamResult}``.
    """
    errors = {name: explain.layer_reconstruction_error(original, compressed, name, x)[0] for name in layers}
    cam_o = explain.grad_cam_result(original, cam_layer, x)
    return {"error": errors, "cam_original": cam_o,
            "cam_compressed": explain.grad_cam_result(compressed, cam_layer, x, cam_o.target)}


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2em auto;max-width:1200px;color:#111;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .7em;text-align:left}
td+td{white-space:nowrap}
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
        f"{html.escape(str(run.get('input_size', '?')))} px · {html.escape(str(run.get('n', '?')))} test images "
        f"of the {html.escape(split_name(run))} split · "
        f"cache key <code>{html.escape(str(run.get('cache_key', '')))}</code></p>",
        "<h2>Configuration</h2>",
        _table(config_rows(run.get("config") or {}), ("setting", "value")),
    ]
    sentence = budget_sentence(run)
    if sentence:
        parts.append(f"<p>{html.escape(sentence)}</p>")
    elif run.get("energy") is not None:
        parts.append(f"<p>Energy threshold used: tau = {float(run['energy']):.3f}</p>")
    parts += ["<h2>Metrics</h2>",
              "<p>Standard errors (±) from 1,000 seeded bootstrap resamples of the test set; the accuracy "
              "change is paired (same test images) with McNemar's exact test.</p>",
              _table(metrics_rows(run, original), ("metric", "original", str(label)))]
    rows = layer_table(run)
    if rows:
        parts += ["<h2>Per layer</h2>",
                  "<p>FLOPs counted on the real modules (batch 1); output error: the compressed layer's relative "
                  "output error ||Y' - Y|| / ||Y|| on held-out training images, the original's input fed to "
                  "both.</p>",
                  _table(_layer_rows_text(rows), list(rows[0]))]
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


# Subtitle line length of the report's figures: they span the report's page (up to 1200 px), where a
# run's name in one title line could still be cut (a narrower window, the PNG export's fixed width).
_WRAP = 90


def report_figures(run: Mapping[str, Any], original: Mapping[str, Any], runs: list[Mapping[str, Any]],
                   slice_: np.ndarray, names_only: bool = False, maps: Mapping[str, Any] | None = None,
                   image_label: str = "test image #0") -> dict[str, go.Figure | None]:
    """The report's figures of ``run``: Pareto fronts among ``runs``, confusion matrices, per-class F1,
    the rank kept per region of every compressed layer over ``slice_`` (a test image) and, with
    ``maps`` (:func:`image_maps` of that image), each layer's output error and both models' Grad-CAM.

    With ``names_only`` the names come back with None values and nothing is built.
    """
    name, classes = run_name(run), original["classes"]
    builders = {
        "Pareto front: accuracy vs FLOPs": lambda: pareto_figure(
            runs, "flops", "accuracy", original, error_bars=True, selected=run.get("cache_key"),
            title=chart_title(f"Accuracy vs FLOPs, {len(runs)} runs", f"ringed: {name}", _WRAP)),
        "Pareto front: macro F1 vs FLOPs": lambda: pareto_figure(
            runs, "flops", "macro_f1", original, error_bars=True, selected=run.get("cache_key"),
            title=chart_title(f"Macro F1 vs FLOPs, {len(runs)} runs", f"ringed: {name}", _WRAP)),
        "Confusion matrix, original": lambda: confusion_figure(original["confusion_matrix"], classes, False,
                                                               "Original model (rows: true class)"),
        "Confusion matrix, compressed": lambda: confusion_figure(run["confusion_matrix"], classes, False, chart_title(
            "Compressed model (rows: true class)", name, _WRAP)),
        "Confusion change": lambda: confusion_difference_figure(run["confusion_matrix"], original["confusion_matrix"],
                                                                classes, False, "Compressed minus original<br><sup>"
                                                                "images; blue better, vermillion worse</sup>"),
        "Per-class F1": lambda: per_class_figure({"original": original, name: run}, "f1", chart_title(
            "Per-class F1 (± bootstrap SE)", f"original vs {name}", _WRAP)),
    }
    for layer, summary in layer_summaries(run).items():
        def regions(layer=layer, summary=summary):
            values, bounds, texts = region_value_map(summary, "rank")
            return overlay_figure(slice_, values, zmin=0, zmax=1, regions=bounds, region_text=texts,
                                  colorbar_title="rank kept (share of the original's)", height=560,
                                  title=chart_title(f"Rank kept per region · {layer}", f"{name}, {image_label}",
                                                    _WRAP))
        builders[f"Rank kept per region, {layer}"] = regions
        if maps is not None and layer in maps.get("error", {}):
            def error(layer=layer):
                err = maps["error"][layer]
                # From 0 (error_figure): with zmin alone plotly started the scale at the smallest error.
                return error_figure(slice_, err, height=560, title=chart_title(
                    f"Output error · {layer}", f"{name}, {image_label}; mean {float(np.mean(err)):.3f}", _WRAP))
            builders[f"Output error, {layer}"] = error
    if maps is not None:
        for which in ("original", "compressed"):
            def cam(which=which):
                c = maps[f"cam_{which}"]
                target = class_label(classes[c.target])
                note = "; empty: no positive evidence at this layer" if c.empty else ""
                sub = f"layer {c.layer}, {image_label}, probability {100 * c.probabilities[c.target]:.0f} %{note}"
                return overlay_figure(slice_, c.cam, colorscale="Inferno", zmin=0, zmax=1, colorbar_title="Grad-CAM",
                                      height=560, title=chart_title(f"Grad-CAM, {which} model · {target}", sub,
                                                                    _WRAP))
            builders[f"Grad-CAM, {which} model"] = cam
    return {k: None if names_only else build() for k, build in builders.items()}
