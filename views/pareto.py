"""Pareto page: every stored run over selectable axes, the front, click-to-select, and the table of every
run drawn (sortable, front marked, rankable by measured latency)."""

import math

import numpy as np
import pandas as pd
import streamlit as st

from hscc_core.present.labels import class_label, method_title, speed_text
from hscc_core.present.plots import front_points, key_from_selection, pareto_figure, plotted_points
from hscc_core.runs.config import ALLOCATION_TITLES, CALIBRATION_TITLES
from hscc_core.runs.pareto import get_axis
from views import frame

X_AXES = ("flops", "params", "latency")
SIDE_LABELS = {"output": "output channels", "input": "input channels"}
# Table column -> (label, ascending when ranking by it)
RANKS = {"front": ("front first, then accuracy", False), "accuracy %": ("accuracy", False),
         "MFLOPs": ("FLOPs", True), "latency ms": ("measured latency (batch 1), fastest first", True),
         "agreement %": ("agreement with the original", False)}


def _key(name: str, options) -> str:
    # The options are part of the keys: when new runs bring a new value, the filter starts again
    # with everything selected instead of silently hiding the new runs.
    return f"{name}_" + "_".join(str(v) for v in options)


def _axis_label(name: str) -> str:
    if name.endswith("_f1") and name != "macro_f1":
        return f"F1, {class_label(name[:-3])}"
    return get_axis(name).label


def _values(points: pd.DataFrame, column: str, rows=None) -> list:
    """The distinct values of a column (of ``rows`` only), sorted; whole numbers as ints (chips read 2, not 2.0)."""
    col = points[column] if rows is None else points.loc[rows, column]
    return sorted({int(v) if isinstance(v, float) else v for v in col.dropna()})


def filters(points: pd.DataFrame) -> pd.DataFrame:
    """The method and HSCC-setting filters (chips that wrap); returns the rows of the runs they keep."""
    methods = _values(points, "method")
    hscc = (points["method"] == "hscc").to_numpy(bool)
    grids, clusters = _values(points, "grid", hscc), _values(points, "clusters", hscc)
    sides, calibs = _values(points, "cluster_side", hscc), _values(points, "calibration", hscc)
    allocs = _values(points, "allocation", (points["method"] != "original").to_numpy(bool))
    with st.expander("Filters: methods, rules and HSCC settings", expanded=False):  # the chart first
        # Rows of two wide columns: a row of chips is cut off, not wrapped, when its column is too narrow
        # (three rules' names need more than a third of the width at 1440 px).
        c = st.columns([1, 1.5])
        chosen = c[0].pills("Methods", methods, selection_mode="multi", default=methods,
                            key=_key("pareto_methods", methods), format_func=method_title)
        alloc_sel = c[1].pills("Rank allocation", allocs, selection_mode="multi", default=allocs,
                               key=_key("pareto_allocs", allocs), format_func=ALLOCATION_TITLES.get)
        c = st.columns([1, 1.5])
        side_sel = c[0].pills("HSCC cluster side", sides, selection_mode="multi", default=sides,
                              key=_key("pareto_sides", sides), format_func=SIDE_LABELS.get)
        calib_sel = c[1].pills("HSCC calibration", calibs, selection_mode="multi", default=calibs,
                               key=_key("pareto_calibs", calibs), format_func=CALIBRATION_TITLES.get)
        c = st.columns([1, 1.5])
        grid_sel = c[0].pills("HSCC grid G", grids, selection_mode="multi", default=grids,
                              key=_key("pareto_grids", grids))
        cluster_sel = c[1].pills("HSCC clusters K", clusters, selection_mode="multi", default=clusters,
                                 key=_key("pareto_clusters", clusters))
    keep = points["method"].isin(chosen) & points["allocation"].isin(alloc_sel) & (
        ~points["method"].eq("hscc") | (points["grid"].isin(grid_sel or []) & points["clusters"].isin(cluster_sel or [])
                                        & points["cluster_side"].isin(side_sel or [])
                                        & points["calibration"].isin(calib_sel or [])))
    return points[keep.to_numpy(bool)]


def count_caption(points: pd.DataFrame, shown: pd.DataFrame, drawn: pd.DataFrame, x: str, y: str) -> str:
    """What is drawn against what is stored, naming the runs without a value on an axis."""
    text = f"{len(drawn)} of {len(points)} stored runs drawn"
    if len(shown) < len(points):
        text += f" ({len(points) - len(shown)} hidden by the filters)"
    missing = {a: int(np.isnan(shown[a].to_numpy(float)).sum()) for a in dict.fromkeys((x, y))}
    unmeasured = " (speed not measured: `hscc runs --time` measures it)"
    gaps = [f"{n} have no {_axis_label(a).lower()}" + (unmeasured if a == "latency" else "")
            for a, n in missing.items() if n]
    if gaps:
        text += "; of the runs the filters keep, " + " and ".join(gaps)
    return text + ". Click a point to select that run for every page."


def table(shown: pd.DataFrame, front_keys: set) -> pd.DataFrame:
    """One row per run the filters keep: the front marked, metrics in %, MFLOPs and ms."""
    def number(column):
        return shown[column].to_numpy(float)

    speed = [speed_text(v) if v and not math.isnan(v) else None for v in number("speedup_b1")]
    # What the page ranks by (accuracy, latency, FLOPs) comes first, so that it is on screen at 1280 px;
    # the split only when the runs differ in it (the caption names the data).
    out = pd.DataFrame({"front": shown["key"].isin(front_keys).to_numpy(bool), "run": shown["label"].to_numpy(object),
                        "accuracy %": 100 * number("accuracy"), "± SE": 100 * number("accuracy_se"),
                        "latency ms": number("latency"), "speed": speed, "MFLOPs": number("flops") / 1e6,
                        "agreement %": 100 * number("agreement"), "macro F1": number("macro_f1"),
                        "split": shown["split"].to_numpy(object), "key": shown["key"].to_numpy(object)})
    return out if out["split"].nunique(dropna=False) > 1 else out.drop(columns="split")


def main(ctx: frame.Context) -> None:
    # Typed columns of every run, kept on disk beside the runs table: no run file or summary is decoded.
    points = ctx.pareto_points()
    older = ctx.older_runs_note()
    if not len(points):
        st.info("No compressed run yet: compute some on the Explorer page, or run `hscc sweep`.")
        if older:
            st.caption(older)
        return
    y_axes = ["accuracy", "macro_f1", *[f"{c}_f1" for c in ctx.classes], "agreement", "kl_to_original"]
    # The axis boxes get a row of their own: beside the switches, at 1280 px, "FLOPs (whole model)" and
    # "Agreement with the original model" were cut short.
    c = st.columns(2)
    x = c[0].selectbox("x axis", X_AXES, key="pareto_x", format_func=_axis_label)
    y = c[1].selectbox("y axis", y_axes, key="pareto_y", format_func=_axis_label)
    c = st.columns([1, 1, 1, 2])
    error_bars = c[0].checkbox("SE error bars", key="pareto_se")
    show_front = c[1].checkbox("Pareto front", value=True, key="pareto_front")
    show_original = c[2].checkbox("Original model", value=True, key="pareto_original")
    shown = filters(points)
    fig = pareto_figure(shown, x, y, ctx.original if show_original else None, show_front=show_front,
                        error_bars=error_bars, selected=st.session_state.get(frame.SELECTED))
    event = frame.chart(fig, "pareto_chart", on_select="rerun", selection_mode="points")
    selection = (event or {}).get("selection") or {}
    picked = key_from_selection(selection.get("points"), fig)
    if picked and picked != st.session_state.get("pareto_last_pick"):
        # A new click (the chart keeps reporting its last selection on every rerun).
        st.session_state["pareto_last_pick"] = picked
        run = frame.load_run(ctx, picked) if picked != st.session_state.get(frame.SELECTED) else None
        if run is not None:
            frame.select_run(run)
            st.rerun()
    drawn = plotted_points(shown, x, y)
    st.caption(count_caption(points, shown, drawn, x, y) + (f" {older}" if older else ""))
    front = set(front_points(drawn, x, y)["key"])
    st.subheader(f"Runs the filters keep ({len(shown)}; {len(front)} on the front)")
    rank = st.selectbox("Order by", list(RANKS), key="pareto_rank", format_func=lambda k: RANKS[k][0],
                        help="Click a column header to sort by any other column.")
    data = table(shown, front)
    if not data.empty:
        by = ["front", "accuracy %"] if rank == "front" else [rank]
        data = data.sort_values(by, ascending=RANKS[rank][1], na_position="last", kind="stable")
    st.dataframe(data, hide_index=True, key="pareto_table", placeholder="n/a",
                 column_config={"front": st.column_config.CheckboxColumn("front", help=f"non-dominated on "
                                                                         f"{_axis_label(y)} vs {_axis_label(x)}"),
                                # Pinned, so the name stays beside the numbers when the table scrolls sideways.
                                "run": st.column_config.TextColumn("run", width=370, pinned=True),
                                **{c: st.column_config.NumberColumn(format="%.2f")
                                   for c in ("accuracy %", "± SE", "agreement %", "latency ms")},
                                "MFLOPs": st.column_config.NumberColumn(format="%.1f"),
                                "speed": st.column_config.TextColumn("speed (batch 1)"),
                                "macro F1": st.column_config.NumberColumn(format="%.3f"),
                                "key": st.column_config.TextColumn("key", width="small")})


frame.show("pareto", main)
