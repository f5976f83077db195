"""Pareto page: every cached run over selectable axes, the front, and click-to-select."""

import pandas as pd
import streamlit as st

from hscc_core.present.labels import class_label, method_title
from hscc_core.runs.config import run_name
from hscc_core.present.plots import key_from_selection, pareto_figure
from hscc_core.runs.pareto import front_runs, get_axis
from pages import frame

X_AXES = ("flops", "params", "latency")


def _key(name: str, options) -> str:
    # The options are part of the keys: when new runs bring a new value, the filter starts again
    # with everything selected instead of silently hiding the new runs.
    return f"{name}_" + "_".join(str(v) for v in options)


def _axis_label(name: str) -> str:
    if name.endswith("_f1") and name != "macro_f1":
        return f"F1, {class_label(name[:-3])}"
    return get_axis(name).label


def filters(runs: list[dict]) -> list[dict]:
    """The method and HSCC-setting filters; returns the runs they keep."""
    c = st.columns(4)
    methods = sorted({r["method"] for r in runs})
    chosen = c[0].multiselect("Methods", methods, default=methods, key="pareto_methods", format_func=method_title)
    hscc = [r["config"] for r in runs if r["method"] == "hscc"]
    grids = sorted({cfg["grid"] for cfg in hscc})
    clusters = sorted({cfg["clusters"] for cfg in hscc})
    sides = sorted({cfg.get("cluster_side", "output") for cfg in hscc})
    allocs = sorted({cfg.get("allocation", "uniform") for cfg in hscc})
    grid_sel = c[1].multiselect("HSCC grid G", grids, default=grids, key=_key("pareto_grids", grids))
    cluster_sel = c[2].multiselect("HSCC clusters K", clusters, default=clusters, key=_key("pareto_clusters", clusters))
    side_sel = c[3].multiselect("HSCC cluster side", sides, default=sides, key=_key("pareto_sides", sides))
    alloc_sel = st.columns(4)[0].multiselect("HSCC rank allocation", allocs, default=allocs,
                                             key=_key("pareto_allocs", allocs))

    def keep(r):
        cfg = r["config"]
        return r["method"] in chosen and (r["method"] != "hscc" or (
            cfg.get("grid") in grid_sel and cfg.get("clusters") in cluster_sel
            and cfg.get("cluster_side", "output") in side_sel and cfg.get("allocation", "uniform") in alloc_sel))

    return [r for r in runs if keep(r)]


def main(ctx: frame.Context) -> None:
    runs = ctx.runs()
    if not runs:
        st.info("No compressed run yet: compute some on the Explorer page, or run `hscc sweep`.")
        return
    y_axes = ["accuracy", "macro_f1", *[f"{c}_f1" for c in ctx.classes], "agreement", "kl_to_original"]
    c = st.columns([1, 1.3, 1, 1, 1])
    x = c[0].selectbox("x axis", X_AXES, key="pareto_x", format_func=_axis_label)
    y = c[1].selectbox("y axis", y_axes, key="pareto_y", format_func=_axis_label)
    error_bars = c[2].checkbox("SE error bars", key="pareto_se")
    show_front = c[3].checkbox("Pareto front", value=True, key="pareto_front")
    show_original = c[4].checkbox("Original model", value=True, key="pareto_original")
    shown = filters(runs)
    fig = pareto_figure(shown, x, y, ctx.original if show_original else None, show_front=show_front,
                        error_bars=error_bars, selected=st.session_state.get(frame.SELECTED))
    event = st.plotly_chart(fig, key="pareto_chart", on_select="rerun", selection_mode="points", theme=None,
                            config={"displaylogo": False})
    selection = (event or {}).get("selection") or {}
    picked = key_from_selection(selection.get("points"), fig)
    by_key = {r["cache_key"]: r for r in runs}
    if picked in by_key and picked != st.session_state.get("pareto_last_pick"):
        # A new click (the chart keeps reporting its last selection on every rerun).
        st.session_state["pareto_last_pick"] = picked
        if picked != st.session_state.get(frame.SELECTED):
            frame.select_run(by_key[picked])
            st.rerun()
    st.caption(f"{len(shown)} of {len(runs)} cached runs pass the filters. Click a point to select that run for "
               "every page; runs lacking a value on an axis (e.g. latency when speed was not measured) are left out.")
    front = front_runs(shown, x, y)
    if front:
        st.subheader(f"On the front ({len(front)})")
        st.dataframe(pd.DataFrame([{
            "run": run_name(r), "accuracy %": 100 * r["accuracy"], "± SE": 100 * r["accuracy_se"],
            "macro F1": r["macro_f1"], "MFLOPs": r["flops"] / 1e6, "FLOPs kept %": 100 * r["flops"] / r["flops_original"],
            "speed-up b1": (r.get("speedup") or {}).get("b1"), "key": r["cache_key"]} for r in front]),
            hide_index=True, key="pareto_front_table",
            column_config={c: st.column_config.NumberColumn(format="%.2f")
                           for c in ("accuracy %", "± SE", "MFLOPs", "FLOPs kept %", "speed-up b1")}
            | {"macro F1": st.column_config.NumberColumn(format="%.3f")})


frame.show("pareto", main)
