"""Tests of hscc_core.present.report: self-contained HTML, metric tables, the report's figures."""

from __future__ import annotations

import re

import pytest

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
    assert "<td>grid</td><td>2</td>" in text and "<td>method</td><td>HSCC</td>" in text
    assert "85.00 ± 2.00" in text and "0.800 ± 0.030" in text
    assert "McNemar p = 0.3" in text and "-2.00 ± 1.00" in text
    assert ("Budget x3 met: the compressed layers need 3.02x fewer FLOPs (100 FLOPs instead of 300 FLOPs), "
            "by one energy threshold for every block, tau = 0.900") in text
    assert "1.5x faster / 1.4x faster on cpu" in text and "test images of the official split" in text
    assert text.count(report.NOTICE) == 2


def test_metrics_rows_cover_every_class_and_speed():
    rows = report.metrics_rows(RUN, ORIGINAL)
    names = [r[0] for r in rows]
    for cls in CLASSES:
        for metric in ("precision", "recall", "f1"):
            assert f"{cls.replace('_', ' ')}: {metric}" in names
    assert rows[0] == ("accuracy (%)", "88.00 ± 2.00", "85.00 ± 2.00")
    assert ("latency, batch 1 (median / p90 ms)", "2.00 / 2.50", "1.00 / 1.20") in rows
    assert ("FLOPs of the compressed layers", "300 FLOPs", "100 FLOPs") in rows
    assert ("FLOPs (whole model)", "2 MFLOPs", "1 MFLOPs") in rows
    assert report.metrics_rows({"accuracy": 0.5})[0] == ("accuracy (%)", "n/a", "50.00")
    # A speed-up timed on a busy machine says so wherever the report goes.
    def speed(share):
        run = dict(RUN, latency_ms=dict(RUN["latency_ms"], others_cpu=share))
        rows = {r[0]: r[2] for r in report.metrics_rows(run)}
        return rows["measured speed (batch 1 / 32)"], rows.get("speed noisy: timed on a busy machine")

    assert speed(None) == speed(0.2) == ("1.5x faster / 1.4x faster on cpu", None)
    assert speed(0.4) == ("1.5x faster / 1.4x faster on cpu", "other processes used 40% of the CPUs")


def test_config_rows_read_as_words():
    """Every setting the method reads, at the value the run used: a stored config leaves out its
    LEGACY values (uniform allocation, output side, rank multiple 1), and the report still names them."""
    rows = dict(report.config_rows({"method": "svd", "energy": None, "budget": 6.0, "calib_size": 256,
                                    "finetune_epochs": 0}))
    assert rows == {"method": "Global SVD", "target": "FLOPs budget x6 (compressed layers)",
                    "rank allocation": "uniform tau", "fine-tuning epochs": "0", "seed": "0"}
    hscc = dict(report.config_rows({"method": "hscc", "grid": 4, "clusters": 2, "energy": 0.9, "calib_size": 64}))
    assert hscc["clusters"] == "2 per region, of output channels" and hscc["regions"] == "4 x 4 grid"
    assert hscc["target"] == "energy threshold tau = 0.9" and hscc["ranks in multiples of"] == "1 (no constraint)"
    assert hscc["calibration"].startswith("independent") and hscc["calibration images"] == "64 calibration images"
    sens = dict(report.config_rows({"method": "tucker", "energy": None, "budget": 3.0, "allocation": "sensitivity",
                                    "calib_size": "all", "calib_flip": True}))
    assert sens["rank allocation"] == "greedy (sensitivity-priced)"
    assert sens["calibration images"] == "all training images and their mirror images" and "clusters" not in sens
    # A config that no longer parses is shown as stored, not dropped.
    assert dict(report.config_rows({"method": "hscc", "grid": 0, "energy": 0.9})) == \
        {"method": "HSCC", "grid": "0", "energy": "0.9"}


def test_environment_info():
    env = report.environment_info()
    for key in ("python", "platform", "cpu_count", "torch", "numpy", "plotly", "generated"):
        assert env.get(key), key


def test_report_of_a_real_run_has_maps_grad_cam_and_the_layer_table(trained_workspace, tmp_path):
    import io
    import zipfile

    from PIL import Image

    from conftest import copy_workspace
    from hscc_core.nn.layers import compress_candidates
    from hscc_core.present.heatmaps import layer_order
    from hscc_core.present.png import figures_zip
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import compress_run, original_run, rebuild_model

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    run = compress_run(ws, RunConfig(grid=2, clusters=2, energy=0.9), measure_speed=False)[0]
    original = original_run(ws)[0]
    model, _ = ws.baseline()
    images = ws.images()
    layers = sorted(run["layers"], key=layer_order)
    assert layer_order("features.3") < layer_order("features.10")
    maps = report.image_maps(model, rebuild_model(ws, run), images.to_tensor(images.x_test[:1]), layers,
                             compress_candidates(model)[-1])
    assert set(maps["error"]) == set(layers) and maps["cam_original"].cam.shape == images.x_test[0].shape
    figures = report.report_figures(run, original, [run], images.x_test[0], maps=maps)
    names = list(figures)
    assert [n for n in names if n.startswith("Output error")] == [f"Output error, {layer}" for layer in layers]
    assert "Grad-CAM, original model" in names and "Grad-CAM, compressed model" in names
    assert names == list(report.report_figures(run, original, [run], images.x_test[0], names_only=True,
                                               maps={"error": dict.fromkeys(layers)}))
    rows = report.layer_table(run)
    assert [r["layer"] for r in rows] == [f"conv {i} · {name}" for i, name in enumerate(layers, 1)]
    # The output error in the unit of the error maps: ||Y'-Y||/||Y||, the root of the stored squared error
    # (the table read 0.048 beside a map whose mean was 0.215); one cluster count when regions agree.
    for row, name in zip(rows, layers):
        assert row["output error"] == pytest.approx(run["layer_errors"][name] ** 0.5)
        assert row["clusters used"] == "2" and row["FLOPs kept %"] <= 100
    assert "kept %" not in rows[0]
    text = report.report_html(run, original, {}, {"python": "3"})
    assert "<h2>Per layer</h2>" in text and rows[0]["layer"] in text and rows[0]["ranks kept"] in text
    with zipfile.ZipFile(io.BytesIO(figures_zip({"Grad-CAM": figures["Grad-CAM, original model"]}))) as zf:
        assert zf.namelist() == ["01-grad-cam.png", "01-grad-cam.svg"]
        assert round(Image.open(io.BytesIO(zf.read("01-grad-cam.png"))).info["dpi"][0]) == 300


def test_per_class_rows_put_each_se_beside_its_value():
    # The Baseline page's table had seven columns (each SE its own) and was cut at 1280 px.
    run = {"per_class": {"no_tumor": {"precision": 0.7213, "precision_se": 0.0411, "recall": 0.8, "recall_se": 0.039,
                                      "f1": 0.758, "f1_se": 0.032, "support": 100},
                         "glioma_tumor": {"precision": 1.0, "precision_se": 0.0, "recall": None, "support": 3}}}
    rows = report.per_class_rows(run)
    assert rows[0] == {"class (test images)": "no tumor (100)", "precision": "0.721 ± 0.041",
                       "recall": "0.800 ± 0.039", "F1": "0.758 ± 0.032"}
    assert rows[1]["precision"] == "1.000 ± 0.000" and rows[1]["recall"] == "n/a" and rows[1]["F1"] == "n/a"
    assert report.per_class_rows({}) == []
