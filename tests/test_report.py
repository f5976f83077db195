"""Tests of hscc_core.present.report: self-contained HTML, offline PNG rendering, metric tables."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from hscc_core.present import report
from hscc_core.present.plots import (confusion_difference_figure, confusion_figure, overlay_figure, pareto_figure,
                             per_class_figure)
from test_plots import CLASSES, ORIGINAL, RUNS

RUN = dict(RUNS[1], label="hscc <script>alert(1)</script>", data="/data/<b>mri</b>", accuracy_delta=-0.02,
           accuracy_delta_se=0.01, energy=0.9, budget={"target": 3.0, "met": True, "message": "ok",
                                                       "layer_flops_ratio": 3.02},
           layer_flops={"conv": 100}, layer_flops_original={"conv": 300},
           latency_ms={"original": {"b1": {"median": 2.0, "p90": 2.5}, "b32": {"median": 20.0, "p90": 22.0}},
                       "compressed": {"b1": {"median": 1.0, "p90": 1.2}, "b32": {"median": 12.0, "p90": 13.0}},
                       "device": "cpu"})


def figures() -> dict:
    image = (np.add.outer(np.arange(32), np.arange(32)) * 4 % 255).astype(np.uint8)
    return {
        "Pareto": pareto_figure(RUNS, "flops", "accuracy", ORIGINAL, error_bars=True, selected=RUNS[1]["cache_key"]),
        "Confusion": confusion_figure(RUNS[0]["confusion_matrix"], CLASSES, True, "Confusion"),
        "Change": confusion_difference_figure(RUNS[1]["confusion_matrix"], RUNS[0]["confusion_matrix"], CLASSES),
        "F1 / per class": per_class_figure({"original": ORIGINAL, "run": RUNS[0]}, "f1"),
        "Regions": overlay_figure(image, np.array([[0.2, 0.4], [0.6, 0.8]]), regions=[(0, 1, 0, 2), (1, 2, 0, 2)],
                                  region_text=["a", "b"], zmin=0, zmax=1, title="regions"),
        "Clusters": overlay_figure(image, np.array([[0, 1], [np.nan, 2]]), categories=3, title="clusters"),
    }


def test_html_report_is_self_contained_and_escaped():
    env = {"python": "3.11", "torch": "2.x", "machine": "<x86>"}
    text = report.report_html(RUN, ORIGINAL, figures(), env)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # plotly.js is inlined exactly once and nothing is fetched from a network.
    assert len(text) > 3_000_000
    assert text.count("plotly.js v") == 1
    assert len(re.findall(r"<script[^>]*\bsrc=", text)) == 0
    assert len(re.findall(r"<link[^>]*\bhref=", text)) == 0
    assert text.count('class="plotly-graph-div"') == len(figures())
    # Strings from runs and users are escaped.
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>mri</b>" not in text and "&lt;x86&gt;" in text
    # Config, metrics with SEs, the paired test, budget and environment are all there; and the notice.
    assert "<td>grid</td><td>2</td>" in text
    assert "85.00 ± 2.00" in text and "0.800 ± 0.030" in text
    assert "McNemar p = 0.3" in text and "-2.00 ± 1.00" in text
    assert "Budget x3.0: met" in text and "x1.50 / x1.40 on cpu" in text
    assert text.count(report.NOTICE) == 2


def test_metrics_rows_cover_every_class_and_speed():
    rows = report.metrics_rows(RUN, ORIGINAL)
    names = [r[0] for r in rows]
    for cls in CLASSES:
        for metric in ("precision", "recall", "f1"):
            assert f"{cls.replace('_', ' ')}: {metric}" in names
    assert rows[0] == ("accuracy (%)", "88.00 ± 2.00", "85.00 ± 2.00")
    assert ("latency, batch 1 (median / p90 ms)", "2.00 / 2.50", "1.00 / 1.20") in rows
    assert ("FLOPs of the compressed layers", "300", "100") in rows
    assert report.metrics_rows({"accuracy": 0.5})[0] == ("accuracy (%)", "n/a", "50.00")


@pytest.mark.parametrize("name", list(figures()))
def test_every_figure_renders_to_a_png_offline(name):
    png = report.figure_png(figures()[name], width=600, height=400, dpi=100)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.size == (600, 400)
    pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def test_png_draws_the_data_colours():
    # The HSCC markers (Okabe-Ito blue) and the original's black star show up in the picture.
    png = report.figure_png(pareto_figure(RUNS, "flops", "accuracy", ORIGINAL), width=500, height=360)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    blue = np.array([0x00, 0x72, 0xB2])
    assert (np.abs(rgb - blue).sum(axis=2) < 30).sum() > 50


def test_figures_zip_has_safe_names():
    data = report.figures_zip({"Pareto: a/b": figures()["Pareto"], "../../etc": figures()["Change"]})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == ["01-pareto-a-b.png", "02-etc.png"]
        assert zf.read(names[0])[:4] == b"\x89PNG"


def test_environment_info():
    env = report.environment_info()
    for key in ("python", "platform", "cpu_count", "torch", "numpy", "plotly", "generated"):
        assert env.get(key), key
