"""Pareto page: every stored run over selectable axes, the front, click-to-select, and the table of every
run drawn (sortable, front marked, rankable by measured latency)."""

import math

import pandas as pd
import streamlit as st

from hscc_core.present.labels import class_label, method_title, speed_text, split_name
from hscc_core.present.plots import key_from_selection, pareto_figure, plotted_runs
from hscc_core.runs.config import ALLOCATION_TITLES, CALIBRATION_TITLES, LEGACY, run_name
from hscc_core.runs.pareto import axis_value, front_runs, get_axis
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


def filters(runs: list[dict]) -> list[dict]:
    """The method and HSCC-setting filters (chips that wrap); returns the runs they keep."""
    methods = sorted({r["method"] for r in runs})
    hscc = [r["config"] for r in runs if r["method"] == "hscc"]
    grids = sorted({cfg["grid"] for cfg in hscc})
    clusters = sorted({cfg["clusters"] for cfg in hscc})
    sides = sorted({cfg.get("cluster_side", "output") for cfg in hscc})
    # A stored canonical config leaves out a rule at its legacy value (uniform, independent).
    allocs = sorted({r["config"].get("allocation", LEGACY["allocation"]) for r in runs if r["method"] != "original"})
    calibs = sorted({cfg.get("calibration", LEGACY["calibration"]) for cfg in hscc})
    with st.expander("Filters", expanded=True):
        # Two rows of wide columns: a row of chips is cut off, not wrapped, when its column is too narrow.
        c = st.columns([1.3, 1, 1])
        chosen = c[0].pills("Methods", methods, selection_mode="multi", default=methods,
                            key=_key("pareto_methods", methods), format_func=method_title)
        side_sel = c[1].pills("HSCC cluster side", sides, selection_mode="multi", default=sides,
                              key=_key("pareto_sides", sides), format_func=SIDE_LABELS.get)
        alloc_sel = c[2].pills("Rank allocation", allocs, selection_mode="multi", default=allocs,
                               key=_key("pareto_allocs", allocs), format_func=ALLOCATION_TITLES.get)
        c = st.columns([1.3, 1, 1])
        grid_sel = c[0].pills("HSCC grid G", grids, selection_mode="multi", default=grids,
                              key=_key("pareto_grids", grids))
        cluster_sel = c[1].pills("HSCC clusters K", clusters, selection_mode="multi", default=clusters,
                                 key=_key("pareto_clusters", clusters))
        calib_sel = c[2].pills("HSCC calibration", calibs, selection_mode="multi", default=calibs,
                               key=_key("pareto_calibs", calibs), format_func=CALIBRATION_TITLES.get)

    def keep(r):
        cfg = r["config"]
        return r["method"] in chosen and cfg.get("allocation", LEGACY["allocation"]) in alloc_sel and (
            r["method"] != "hscc" or (
                cfg.get("grid") in grid_sel and cfg.get("clusters") in cluster_sel
                and cfg.get("cluster_side", "output") in side_sel
                and cfg.get("calibration", LEGACY["calibration"]) in calib_sel))

    return [r for r in runs if keep(r)]


def count_caption(runs: list[dict], shown: list[dict], drawn: list[dict], x: str, y: str) -> str:
    """What is drawn against what is stored, naming the runs without a value on an axis."""
    text = f"{len(drawn)} of {len(runs)} stored runs drawn"
    if len(shown) < len(runs):
        text += f" ({len(runs) - len(shown)} hidden by the filters)"
    missing = {a: sum(math.isnan(axis_value(r, a)) for r in shown) for a in dict.fromkeys((x, y))}
    gaps = [f"{n} have no {_axis_label(a).lower()}" + (" (speed not measured)" if a == "latency" else "")
            for a, n in missing.items() if n]
    if gaps:
        text += "; of the runs the filters keep, " + " and ".join(gaps)
    return text + ". Click a point to select that run for every page."


def table(shown: list[dict], front_keys: set) -> pd.DataFrame:
    """One row per run the filters keep: the front marked, metrics in %, MFLOPs and ms."""
    rows = []
    for r in shown:
        lat = ((r.get("latency_ms") or {}).get("compressed") or {}).get("b1") or {}
        sp = (r.get("speedup") or {}).get("b1")
        rows.append({"front": r["cache_key"] in front_keys, "run": run_name(r),
                     "accuracy %": 100 * r["accuracy"], "± SE": 100 * r["accuracy_se"], "macro F1": r["macro_f1"],
                     "agreement %": None if r.get("agreement") is None else 100 * r["agreement"],
                     "MFLOPs": r["flops"] / 1e6, "latency ms": lat.get("median"),
                     "speed": speed_text(sp) if sp else None, "split": split_name(r), "key": r["cache_key"]})
    return pd.DataFrame(rows)


def main(ctx: frame.Context) -> None:
    runs = ctx.run_summaries()  # without per-layer detail: one cached table blob, not a file per run
    if not runs:
        st.info("No compressed run yet: compute some on the Explorer page, or run `hscc sweep`.")
        return
    y_axes = ["accuracy", "macro_f1", *[f"{c}_f1" for c in ctx.classes], "agreement", "kl_to_original"]
    c = st.columns([1, 1.3, 1, 1, 1], vertical_alignment="bottom")
    x = c[0].selectbox("x axis", X_AXES, key="pareto_x", format_func=_axis_label)
    y = c[1].selectbox("y axis", y_axes, key="pareto_y", format_func=_axis_label)
    error_bars = c[2].checkbox("SE error bars", key="pareto_se")
    show_front = c[3].checkbox("Pareto front", value=True, key="pareto_front")
    show_original = c[4].checkbox("Original model", value=True, key="pareto_original")
    shown = filters(runs)
    fig = pareto_figure(shown, x, y, ctx.original if show_original else None, show_front=show_front,
                        error_bars=error_bars, selected=st.session_state.get(frame.SELECTED),
                        hovers=ctx.run_hovers())
    event = frame.chart(fig, "pareto_chart", on_select="rerun", selection_mode="points")
    selection = (event or {}).get("selection") or {}
    picked = key_from_selection(selection.get("points"), fig)
    by_key = {r["cache_key"]: r for r in runs}
    if picked in by_key and picked != st.session_state.get("pareto_last_pick"):
        # A new click (the chart keeps reporting its last selection on every rerun).
        st.session_state["pareto_last_pick"] = picked
        if picked != st.session_state.get(frame.SELECTED):
            frame.select_run(by_key[picked])
            st.rerun()
    drawn = plotted_runs(shown, x, y)
    st.caption(count_caption(runs, shown, drawn, x, y))
    front = {r["cache_key"] for r in front_runs(drawn, x, y)}
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
                                **{c: st.column_config.NumberColumn(format="%.2f")
                                   for c in ("accuracy %", "± SE", "agreement %", "latency ms")},
                                "MFLOPs": st.column_config.NumberColumn(format="%.1f"),
                                "speed": st.column_config.TextColumn("speed (batch 1)"),
                                "macro F1": st.column_config.NumberColumn(format="%.3f"),
                                "key": st.column_config.TextColumn("key", width="small")})


frame.show("pareto", main)
