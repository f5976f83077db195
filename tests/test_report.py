"""Tests of hscc_core.present.report: self-contained HTML, metric tables, the report's figures."""

from __future__ import annotations

import re

from conftest import CLASSES, ORIGINAL, RUNS, sample_figures
from hscc_core.present import report

RUN = dict(RUNS[1], config=dict(RUNS[1]["config"], cluster_side="<script>alert(1)</script>"),
           data="/data/<b>mri</b>", accuracy_delta=-0.02,
           accuracy_delta_se=0.01, energy=0.9, budget_search={"target": 3.0, "met": True, "message": "ok",
                                                              "layer_flops_ratio": 3.02},
           layer_flops={"conv": 100}, layer_flops_original={"conv": 300},
           latency_ms={"original": {"b1": {"median": 2.0, "p90": 2.5}, "b32": {"median": 20.0, "p90": 22.0}},
                       "compressed": {"b1": {"median": 1.0, "p90": 1.2}, "b32": {"median": 12.0, "p90": 13.0}},
                       "device": "cpu"})


def test_html_report_is_self_contained_and_escaped():
    env = {"python": "3.11", "torch": "2.x", "machine": "<x86>"}
    text = report.report_html(RUN, ORIGINAL, sample_figures(), env)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # plotly.js is inlined exactly once and nothing is fetched from a network.
    assert len(text) > 3_000_000
    assert text.count("plotly.js v") == 1
    assert len(re.findall(r"<script[^>]*\bsrc=", text)) == 0
    assert len(re.findall(r"<link[^>]*\bhref=", text)) == 0
    assert text.count('class="plotly-graph-div"') == len(sample_figures())
    # Strings from runs and users are escaped.
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>mri</b>" not in text and "&lt;x86&gt;" in text
    # Config, metrics with SEs, the paired test, budget and environment are all there; and the notice.
    assert "<td>grid</td><td>2</td>" in text
    assert "85.00 ± 2.00" in text and "0.800 ± 0.030" in text
    assert "McNemar p = 0.3" in text and "-2.00 ± 1.00" in text
    assert "Budget x3 met: 3.02x fewer FLOPs in the compressed layers, by energy threshold 0.9000" in text
    assert "x1.50 / x1.40 on cpu" in text
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


def test_environment_info():
    env = report.environment_info()
    for key in ("python", "platform", "cpu_count", "torch", "numpy", "plotly", "generated"):
        assert env.get(key), key
