"""Dashboard figures: parallel coordinates (encoding, brushes both ways), importance and kept-FLOPs bars."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from conftest import table_run as fake_run
from hscc_core.present.dashboard import (NA, brush_mask, constraints_for, constraints_from_figure,
                                         constraints_from_restyle, encode_column, importance_figure,
                                         kept_fraction_figure, parcoords_figure)
from hscc_core.runs.importance import Importance
from hscc_core.runs.table import filter_mask, runs_table


@pytest.fixture
def table():
    runs = [fake_run(f"{i:024x}", grid=g, clusters=k, accuracy=0.5 + 0.05 * i, flops=100 + 10 * i)
            for i, (g, k) in enumerate([(1, 1), (2, 4), (4, 8), (2, 2)])]
    runs += [fake_run("f" * 24, method="svd", accuracy=0.3, flops=90)]
    return runs_table(runs)


def test_categories_become_ticks_and_missing_values_an_na_tick(table):
    values, axis = encode_column(table, "method")
    assert axis["ticktext"] == ["hscc", "svd"] and list(values) == [0, 0, 0, 0, 1]
    values, axis = encode_column(table, "grid")
    assert axis["ticktext"][0] == NA and values[4] == axis["tickvals"][0] < 1  # the svd run sits below
    assert list(values[:4]) == [1, 2, 4, 2] and axis["range"][0] < values[4]
    values, axis = encode_column(table, "cluster_side")
    assert axis["ticktext"] == ["output", NA]


def test_axis_ends_and_crowded_setting_ticks_are_readable():
    # Plotly prints each axis's range ends with the axis's format: by default FLOPs read 1.32652G and
    # accuracies 0.730964; and energies 0.98, 0.99 and 0.995 printed over each other.
    runs = [fake_run(f"{i:024x}", energy=e, accuracy=0.730964 - 0.01 * i, flops=1.32652e9 - 1e7 * i)
            for i, e in enumerate([0.8, 0.9, 0.95, 0.98, 0.99, 0.995])]
    t = runs_table(runs)
    assert encode_column(t, "flops")[1]["tickformat"] == ".3~s"
    assert encode_column(t, "accuracy")[1]["tickformat"] == ".1%"  # 73.1%, not 0.731
    t.loc[0, "accuracy"] = np.nan  # a run without the metric: its n/a tick stays, the others read in %
    _, axis = encode_column(t, "accuracy")
    assert axis["ticktext"][0] == NA and all(x.endswith("%") for x in axis["ticktext"][1:])
    _, axis = encode_column(t, "energy")
    assert axis["ticktext"] == ["0.8", "0.9", "0.95", "0.98", "0.995"] and axis["tickformat"] == ".3~g"
    assert min(np.diff(axis["tickvals"])) >= (0.995 - 0.8) / 25


def test_parcoords_figure_dimensions_and_colour(table):
    fig = parcoords_figure(table, ["method", "grid", "flops", "accuracy", "missing_column"], color="flops")
    trace = fig.data[0]
    assert isinstance(trace, go.Parcoords) and len(trace.dimensions) == 4
    assert list(trace.meta) == ["method", "grid", "flops", "accuracy"]
    assert list(trace.dimensions[0].ticktext) == ["hscc", "svd"]
    assert trace.line.reversescale is True  # fewer FLOPs is better: the bright end stays "better"
    by_accuracy = parcoords_figure(table, ["grid", "accuracy"], color="accuracy").data[0]
    assert by_accuracy.line.reversescale is False
    assert all(d.constraintrange is None for d in trace.dimensions)
    # The colour bar reads in the axis's units: accuracy in %, beside an accuracy axis in %.
    assert by_accuracy.line.colorbar.tickformat == ".0%" and by_accuracy.dimensions[1].tickformat == ".1%"
    assert trace.line.colorbar.tickformat != ".0%"


@pytest.mark.parametrize("ranges, categories", [
    ({"accuracy": (0.55, 0.65)}, {}),
    ({}, {"method": ["svd"]}),
    ({"flops": (105, 200)}, {"grid": [2, None], "method": ["hscc", "svd"]}),
    ({}, {"cluster_side": [None]}),
    ({}, {"method": []}),
])
def test_brushes_from_the_filters_select_the_filtered_rows(table, ranges, categories):
    cols = ["method", "grid", "cluster_side", "flops", "accuracy"]
    fig = parcoords_figure(table, cols, constraints=constraints_for(table, ranges, categories))
    brushes = constraints_from_figure(fig)
    assert set(brushes) == set(ranges) | set(categories)
    # What the figure holds (also in its dict form, as a browser keeps it) filters like the table does.
    expected = filter_mask(table, ranges, categories)
    assert (brush_mask(table, brushes) == expected).all()
    assert (brush_mask(table, constraints_from_figure(fig.to_dict())) == expected).all()


def test_restyle_events_set_and_clear_brushes(table):
    cols = ["method", "grid", "accuracy"]
    events = [{"dimensions[2].constraintrange": [[0.52, 0.62]]},
              {"dimensions[0].constraintrange": [[[-0.25, 0.25]]]},
              {"dimensions[1].constraintrange": [[[1.5, 2.5], [3.5, 4.5]]]},
              {"dimensions[1].constraintrange": [None]},
              {"dimensions[7].constraintrange": [[0, 1]], "line.color": [1]}]
    brushes = constraints_from_restyle(events, cols)
    assert brushes == {"accuracy": [[0.52, 0.62]], "method": [[-0.25, 0.25]]}
    assert list(brush_mask(table, brushes)) == [False, True, True, False, False]  # accuracy 0.55 and 0.6, HSCC
    multi = constraints_from_restyle(events[2:3], cols)
    assert list(brush_mask(table, multi)) == [False, True, True, True, False]
    with pytest.raises(ValueError):
        brush_mask(table, {"nope": [[0, 1]]})


def test_importance_and_kept_figures():
    result = Importance("accuracy", "fanova", {"grid": 0.7, "clusters": 0.3}, n_runs=12, n_used=12,
                        warning="Only 12 runs")
    fig = importance_figure(result)
    assert list(fig.data[0].y) == ["clusters", "grid"]  # largest on top
    assert "12 of 12 runs" in fig.layout.title.text and "Only 12 runs" in fig.layout.title.text
    kept = pd.DataFrame({"run A": [0.5, 0.25], "run B": [1.0, np.nan]}, index=["features.0", "features.3"])
    fig = kept_fraction_figure(kept)
    assert [t.name for t in fig.data] == ["run A", "run B"] and list(fig.data[0].x) == ["features.0", "features.3"]
