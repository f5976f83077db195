"""Tests of hscc_core.present.plots: pure figure builders on synthetic runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from conftest import CLASSES, ORIGINAL, RUNS, fake_run

from hscc_core.present import plots
from hscc_core.present.dashboard import kept_fraction_figure
from hscc_core.runs.pareto import front_runs
from hscc_core.present.plots import (METHOD_STYLE, OKABE_ITO, axis_se, confusion_difference_figure, confusion_figure,
                             confusion_values, key_from_selection, overlay_figure, pareto_figure, per_class_figure,
                             run_hover)

def trace(fig: go.Figure, name: str):
    matches = [t for t in fig.data if t.name == name or (t.name or "").startswith(name)]
    assert matches, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return matches[0]


def test_methods_get_distinct_okabe_ito_colours_and_symbols():
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    seen = set()
    for method in ("hscc", "svd", "tucker"):
        name, colour, symbol = METHOD_STYLE[method]
        t = trace(fig, name)
        assert t.marker.color == colour and t.marker.symbol == symbol
        assert colour in OKABE_ITO.values()
        seen.add((colour, symbol))
    assert len(seen) == 3
    assert len({s for _, _, s in METHOD_STYLE.values()}) == len(METHOD_STYLE)  # symbols differ too


def test_points_carry_their_cache_key_and_hover_with_config_and_se():
    fig = pareto_figure(RUNS, "flops", "accuracy")
    hscc = trace(fig, "HSCC")
    keys = [cd[0] for cd in hscc.customdata]
    assert keys == [r["cache_key"] for r in RUNS if r["method"] == "hscc"]
    hover = hscc.customdata[0][1]
    assert "grid=2" in hover and "clusters=4" in hover and "± 2.00%" in hover and "FLOPs" in hover
    assert list(hscc.x) == [0.5e6, 1.0e6, 1.5e6]
    # A speed-up timed on a busy machine says so where the Pareto page shows it.
    timed = dict(RUNS[1], speedup={"b1": 1.2, "b32": 2.0}, latency_ms={"others_cpu": 0.1})
    assert "(batch 1)" in run_hover(timed) and "noisy" not in run_hover(timed)
    busy = dict(timed, latency_ms={"others_cpu": 0.5})
    assert "noisy: other processes used 50% of the CPUs while timed" in run_hover(busy)


def test_front_is_a_step_line_over_exactly_the_non_dominated_runs():
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    front = trace(fig, "Pareto front")
    expected = front_runs(RUNS, "flops", "accuracy")
    assert [r["cache_key"] for r in expected] == [RUNS[0]["cache_key"], RUNS[1]["cache_key"], RUNS[4]["cache_key"]]
    assert list(front.x) == [r["flops"] for r in expected]
    assert list(front.y) == [r["accuracy"] for r in expected]
    assert front.line.shape == "hv"
    assert front.name == "Pareto front (3)"
    assert "Pareto front" not in [t.name for t in pareto_figure(RUNS, show_front=False).data]


def test_original_is_a_reference_star_with_lines():
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    star = trace(fig, "Original")
    assert star.marker.symbol == "star" and list(star.x) == [2e6] and list(star.y) == [0.88]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 2
    # Latency of the original comes from the runs' own timings of it (median).
    lat = pareto_figure(RUNS, "latency", "accuracy", ORIGINAL)
    assert list(trace(lat, "Original").x) == [2.0]


def test_error_bars_follow_the_y_axis_se():
    fig = pareto_figure(RUNS, "flops", "meningioma_tumor_f1", error_bars=True)
    hscc = trace(fig, "HSCC")
    assert hscc.error_y.visible and list(hscc.error_y.array) == [pytest.approx(0.04)] * 3
    assert list(hscc.y) == [pytest.approx(0.60)] * 3
    assert trace(pareto_figure(RUNS, "flops", "accuracy"), "HSCC").error_y.array is None
    assert axis_se(RUNS[0], "kl_to_original") == 0.001
    assert math.isnan(axis_se(RUNS[0], "flops"))


def test_runs_without_a_value_are_left_out_and_selection_is_ringed():
    runs = RUNS + [fake_run(7, "hscc", 0.7e6, 0.75, latency_ms=None)]
    fig = pareto_figure(runs, "latency", "accuracy", selected=RUNS[1]["cache_key"])
    assert RUNS[1]["cache_key"] in [cd[0] for cd in trace(fig, "Selected").customdata]
    assert "0" * 23 + "7" not in [cd[0] for t in fig.data if t.customdata is not None for cd in t.customdata]
    assert "5 runs" in fig.layout.title.text
    assert trace(fig, "Selected").marker.symbol == "circle-open"
    assert pareto_figure(RUNS[:1], "flops", "accuracy").layout.title.text.endswith("· 1 run")  # not "1 runs"


def test_empty_run_list_gives_an_empty_figure():
    fig = pareto_figure([], "flops", "accuracy", ORIGINAL)
    assert [t.name for t in fig.data] == ["Original"]
    with pytest.raises(ValueError, match="unknown axis"):
        pareto_figure(RUNS, "flops", "nonsense")


def test_key_from_selection_reads_customdata_or_indices():
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    key = RUNS[4]["cache_key"]
    assert key_from_selection([{"customdata": [key, "hover"]}]) == key
    assert key_from_selection([{"curve_number": 0, "point_index": 2}], fig) == key
    front_index = [t.name for t in fig.data].index("Pareto front (3)")
    assert key_from_selection([{"curve_number": front_index, "point_index": 0}], fig) is None
    original_index = [t.name for t in fig.data].index("Original")
    assert key_from_selection([{"curve_number": original_index, "point_index": 0}], fig) is None
    assert key_from_selection([], fig) is None and key_from_selection(None) is None


def test_confusion_values_and_figures():
    cm = RUNS[0]["confusion_matrix"]
    norm = confusion_values(cm, True)
    np.testing.assert_allclose(norm[0], [5 / 6, 1 / 6, 0, 0])
    np.testing.assert_allclose(norm[3], 0)  # a class without support stays 0
    fig = confusion_figure(cm, CLASSES, normalise=True, title="t")
    hm = fig.data[0]
    np.testing.assert_allclose(hm.z, norm)
    assert hm.text[0][0] == "83 %" and hm.zmax == 1  # one short label per cell
    assert list(hm.x) == ["glioma tumor", "meningioma tumor", "no tumor", "pituitary tumor"]
    assert fig.layout.yaxis.autorange == "reversed"
    counts = confusion_figure(cm, CLASSES)
    assert counts.data[0].text[2][2] == "6"
    other = [[6, 0, 0, 0], [1, 4, 1, 0], [0, 0, 5, 1], [0, 0, 0, 0]]
    diff = confusion_difference_figure(other, cm, CLASSES)
    assert diff.data[0].zmid == 0 and diff.data[0].zmin == -1 and diff.data[0].text[0][0] == "+1"
    assert [row[:2] for row in diff.data[0].text[:1]] == [["+1", "-1"]]  # the labels keep the signed change


def test_difference_colours_say_better_or_worse():
    # On the diagonal one more image is one more correct answer (better); off it, one more error (worse):
    # the colour value is the change's merit, so the same +1 gets opposite colours.
    cm = RUNS[0]["confusion_matrix"]
    other = [[6, 0, 0, 0], [1, 4, 1, 0], [0, 0, 5, 1], [0, 0, 0, 0]]
    trace = confusion_difference_figure(other, cm, CLASSES).data[0]
    merit = np.asarray(trace.z)
    assert merit[0, 0] == 1 and merit[0, 1] == 1  # +1 correct (better) and -1 error (better)
    assert merit[2, 2] == -1 and merit[2, 3] == -1  # -1 correct (worse) and +1 error (worse)
    assert trace.colorscale[0][1] == plots.WORSE and trace.colorscale[-1][1] == plots.BETTER
    assert list(trace.colorbar.ticktext) == ["worse", "same", "better"]
    assert trace.customdata[2][3][1] == "worse" and trace.customdata[0][1][1] == "better"


def test_dark_theme_makes_the_background_transparent_and_black_marks_light():
    fig = pareto_figure(RUNS, "flops", "accuracy", ORIGINAL)
    assert plots.themed(fig, "light") is fig
    dark = plots.themed(fig, "dark")
    assert dark.layout.paper_bgcolor == "rgba(0,0,0,0)"
    assert dark.layout.font.color == plots.THEME_COLOURS["dark"]["text"]
    assert trace(dark, "Original").marker.color == plots.THEME_COLOURS["dark"]["text"]
    assert all(s.line.color == plots.THEME_COLOURS["dark"]["text"] for s in dark.layout.shapes)
    assert fig.layout.paper_bgcolor == "white" and trace(fig, "Original").marker.color == OKABE_ITO["black"]
    with pytest.raises(ValueError):
        plots.themed(fig, "blue")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_themed_figures_carry_no_streamlit_placeholder_colours(theme):
    """Streamlit swaps #000001-#0000ff for its theme's colours: Inferno's #000004 was drawn lavender, so
    zero Grad-CAM evidence looked lighter than small values. themed() writes such stops as rgb()."""
    image, cam = np.zeros((8, 8)), np.linspace(0, 1, 16).reshape(4, 4)
    fig = overlay_figure(image, cam, colorscale="Inferno", zmin=0, zmax=1)
    assert fig.data[1].colorscale[0][1] == "#000004"  # what plotly's Inferno starts with
    out = plots.themed(fig, theme)
    assert out.data[1].colorscale[0][1] == "rgb(0, 0, 4)" and fig.data[1].colorscale[0][1] == "#000004"
    assert [c for _, c in out.data[1].colorscale[1:]] == [c for _, c in fig.data[1].colorscale[1:]]
    assert "#0000" not in out.to_json().lower()


def test_kl_axis_is_logarithmic_when_it_spans_decades():
    spread = [dict(r, kl_to_original=10.0 ** -k) for k, r in enumerate(RUNS)]
    assert pareto_figure(spread, "flops", "kl_to_original").layout.yaxis.type == "log"
    assert pareto_figure(RUNS, "flops", "kl_to_original").layout.yaxis.type == "linear"
    assert pareto_figure(RUNS, "flops", "kl_to_original").layout.yaxis.tickformat == "~g"  # 0.7, not 7e-1


def test_per_class_bars_have_se_error_bars_and_patterns():
    fig = per_class_figure({"original": ORIGINAL, "hscc": RUNS[0]}, "f1")
    assert [t.name for t in fig.data] == ["original", "hscc"]
    assert list(fig.data[1].y) == [pytest.approx(0.55 + 0.05 * k) for k in range(4)]
    assert list(fig.data[1].error_y.array) == [pytest.approx(0.03 + 0.01 * k) for k in range(4)]
    assert fig.data[0].marker.pattern.shape != fig.data[1].marker.pattern.shape
    assert fig.layout.barmode == "group"
    with pytest.raises(ValueError):
        per_class_figure({"x": RUNS[0]}, "auc")
    # A long run name is broken into lines (plotly never wraps a legend; a half-width chart cut it).
    long = "HSCC 4x4 regions, 4 input clusters, greedy budget x6, sequential calibration"
    name = per_class_figure({"original": ORIGINAL, long: RUNS[0]}, "f1").data[1].name
    assert name.replace("<br>", " ") == long and all(len(line) <= 30 for line in name.split("<br>"))
    # The legend sits at the figure's bottom edge and the figure grows with the runs: placed at y = -0.2 of
    # the plot, four wrapped run names hid the class names' second lines on the Compare page.
    four = per_class_figure({"original": ORIGINAL, **{f"run {i}": RUNS[0] for i in range(3)}}, "f1")
    assert four.layout.legend.yref == "container" and four.layout.legend.yanchor == "bottom"
    assert four.layout.height > per_class_figure({"original": ORIGINAL, "hscc": RUNS[0]}, "f1").layout.height


def test_chart_title_wraps_and_escapes_the_subtitle():
    # A run's name under a half-width map at 1280 px lost its end: plotly neither wraps nor shrinks titles.
    long = "HSCC 4x4 regions, 1 output cluster, greedy budget x6, sequential calibration, ranks in multiples of 8"
    title = plots.chart_title("Rank kept per region · features.0", long)
    head, sub = title.split("<br><sup>")
    lines = sub.removesuffix("</sup>").split("<br>")
    assert head == "Rank kept per region · features.0" and len(lines) == 2
    assert " ".join(lines) == long and all(len(line) <= plots.SUBTITLE_WIDTH for line in lines)
    assert plots.chart_title("H", "a < b") == "H<br><sup>a &lt; b</sup>"


def test_confusion_matrices_keep_class_names_upright_and_the_change_bar_below():
    """Tilted two-line class names ran into each other (the change matrix at 1440 px, Compare at 1280 px)."""
    cm = np.array([[5, 1], [2, 4]])
    for fig in (confusion_figure(cm, ["glioma_tumor", "meningioma_tumor"]),
                confusion_difference_figure(cm, cm[::-1], ["glioma_tumor", "meningioma_tumor"])):
        assert fig.layout.xaxis.tickangle == 0 and list(fig.layout.xaxis.ticktext)[1] == "meningioma<br>tumor"
    bar = confusion_difference_figure(cm, cm[::-1], ["a", "b"]).data[0].colorbar
    assert bar.orientation == "h" and bar.yanchor == "top" and bar.y < 0  # under the matrix, not beside it


def test_bars_take_their_run_s_method_colour_in_every_chart():
    """Colours followed the runs' order: HSCC was orange in one Compare chart and blue in the next."""
    hscc, svd, black = METHOD_STYLE["hscc"][1], METHOD_STYLE["svd"][1], METHOD_STYLE["original"][1]
    assert plots.run_colours(["svd", "hscc", "hscc", "original"]) == [svd, hscc, OKABE_ITO["sky_blue"], black]
    assert len(set(plots.run_colours(["hscc"] * 6))) == 5  # four spares, then they repeat
    bars = per_class_figure({"original": ORIGINAL, "svd run": dict(RUNS[0], method="svd"), "hscc run": RUNS[0]}, "f1")
    assert [t.marker.color for t in bars.data] == [black, svd, hscc]
    kept = pd.DataFrame({"hscc run": [0.5], "svd run": [0.2]}, index=["features.0"])
    assert [t.marker.color for t in kept_fraction_figure(kept, methods=["hscc", "svd"]).data] == [hscc, svd]


def test_overlay_places_a_coarse_map_over_the_slice():
    image = np.arange(64 * 64).reshape(64, 64) % 255
    overlay = np.array([[0.1, 0.2], [0.3, np.nan]])
    fig = overlay_figure(image, overlay, opacity=0.3, regions=[(0, 1, 0, 2), (1, 2, 0, 2)],
                         region_text=["a", "b"], title="x")
    base, over = fig.data
    assert np.asarray(base.z).shape == (64, 64) and base.colorscale[0][1].startswith("rgb(0")
    assert over.dx == 32 and over.x0 == 15.5 and over.opacity == 0.3
    assert len(fig.layout.shapes) == 2 and fig.layout.shapes[1].y0 == 31.5
    assert [a.text for a in fig.layout.annotations] == ["a", "b"]
    assert fig.layout.yaxis.scaleanchor == "x"
    cats = overlay_figure(image, np.array([[0, 1], [2, 0]]), categories=3)
    assert cats.data[1].zmin == -0.5 and cats.data[1].zmax == 2.5 and len(cats.data[1].colorscale) == 6
    assert len(overlay_figure(image).data) == 1
    with pytest.raises(ValueError):
        overlay_figure(np.zeros((2, 2, 3)))


def test_titles_are_readable_and_carry_the_run():
    assert plots.run_title({"label": "hscc G2 K4 tau=0.95", "arch": "alexnet", "input_size": 224,
                            "data": "phantom"}) == "hscc G2 K4 tau=0.95 · alexnet 224 px · phantom"
    fig = pareto_figure(RUNS, "flops", "accuracy")
    assert fig.layout.font.size >= 14 and fig.layout.title.font.size >= 16
    assert "higher is better" in fig.layout.yaxis.title.text and "lower is better" in fig.layout.xaxis.title.text
