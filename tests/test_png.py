"""Tests of hscc_core.present.png: every figure kind renders offline, with the data's colours."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import ORIGINAL, RUNS, sample_figures
from hscc_core.present.plots import pareto_figure
from hscc_core.present.png import figure_png, figures_zip


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


def test_figures_zip_has_safe_names():
    data = figures_zip({"Pareto: a/b": sample_figures()["Pareto"], "../../etc": sample_figures()["Change"]})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == ["01-pareto-a-b.png", "02-etc.png"]
        assert zf.read(names[0])[:4] == b"\x89PNG"
