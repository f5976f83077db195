"""Tests of hscc_core.present.png: every figure kind renders offline, with the data's colours."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import ORIGINAL, RUNS, sample_figures
from hscc_core.present.plots import pareto_figure
from hscc_core.present.png import PRINT_DPI, figure_file, figure_png, figures_zip


@pytest.mark.parametrize("name", list(sample_figures()))
def test_every_figure_renders_to_a_png_offline(name):
    data = figure_png(sample_figures()[name], width=600, height=400, dpi=100)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    assert img.size == (600, 400)
    pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def test_png_draws_the_data_colours():
    # The HSCC markers (Okabe-Ito blue) and the original's black star show up in the picture.
    data = figure_png(pareto_figure(RUNS, "flops", "accuracy", ORIGINAL), width=500, height=360)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    blue = np.array([0x00, 0x72, 0xB2])
    assert (np.abs(rgb - blue).sum(axis=2) < 30).sum() > 50


def test_figures_zip_has_safe_names_and_300_dpi_png_plus_svg():
    data = figures_zip({"Pareto: a/b": sample_figures()["Pareto"], "../../etc": sample_figures()["Change"]})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == ["01-pareto-a-b.png", "01-pareto-a-b.svg", "02-etc.png", "02-etc.svg"]
        png = Image.open(io.BytesIO(zf.read(names[0])))
        assert png.format == "PNG" and round(png.info["dpi"][0]) == PRINT_DPI == 300
        assert png.size[0] >= 2000  # a report-sized figure at print resolution, not a 110-dpi screen copy
        svg = zf.read(names[1]).decode("utf-8")
        assert "<svg" in svg and "</svg>" in svg


def test_static_pareto_keeps_the_originals_reference_lines():
    # The original's dotted lines are plotly shapes spanning the plot ("x domain"/"y domain"); the
    # static figure draws them as full-width/height lines at the original's values.
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    svg = figure_file(fig, "svg").decode("utf-8")
    plain = figure_file(pareto_figure(RUNS, "flops", "accuracy", None), "svg").decode("utf-8")
    assert svg.count("stroke-dasharray") >= plain.count("stroke-dasharray") + 2


def test_overlay_colourbar_stays_under_its_image():
    # The bar is an inset of the image's own axes, so it follows the image when the figure is wider
    # than the square image (a bar at the figure's edge drifted away from it).
    image = (np.add.outer(np.arange(32), np.arange(32)) * 4 % 255).astype(np.uint8)
    fig = sample_figures()["Regions"]
    data = figure_png(fig, width=900, height=500, dpi=100)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    cols = np.flatnonzero((rgb < 250).any(axis=0))
    assert image.shape == (32, 32) and cols.max() - cols.min() < 0.48 * rgb.shape[1]  # 0.53 with the bar at the edge


def test_static_per_class_figure_has_plain_legend_names_and_a_wrapped_title():
    # The report's zip drew "<br>" inside legend names and let a run's name in the title run off the
    # figure, which squeezed the bars into its right half.
    from hscc_core.present.plots import chart_title, per_class_figure
    from hscc_core.present.png import _render

    long = "HSCC 4x4 regions, 1 output cluster, greedy budget x6, sequential calibration, ranks in multiples of 8"
    fig = per_class_figure({"original": ORIGINAL, long: RUNS[0]}, "f1",
                           chart_title("Per-class F1 (± bootstrap SE)", f"original vs {long}", 90))
    mfig = _render(fig, None, None, 110)
    ax = mfig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "original" and "<br>" not in labels[1] and labels[1].replace("\n", " ") == long
    title = ax.get_title(loc="left").split("\n")
    assert title[0] == "Per-class F1 (± bootstrap SE)" and len(title) >= 3
    assert " ".join(title[1:]) == f"original vs {long}"
    width_pt = mfig.get_figwidth() * 72
    assert all(len(line) * 12 * 0.6 <= 0.8 * width_pt + 1 for line in title)
    assert ax.get_position().width > 0.6  # the plot keeps most of the figure's width
