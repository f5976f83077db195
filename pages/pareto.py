"""Pareto page: every cached run over selectable axes, the front, and click-to-select."""

import pandas as pd
import streamlit as st

from hscc_core.runs.pareto import front_runs, get_axis
from hscc_core.present.plots import METHOD_STYLE, class_label, key_from_selection, pareto_figure
from pages.common import (NOTICE, SELECTED, compressed_runs, page_context, select_run, show_selection,
                          sidebar)

X_AXES = ("flops", "params", "latency")


def _key(name: str, options) -> str:
    return f"{name}_" + "_".join(str(v) for v in options)


def main(ctx) -> None:
    runs = compressed_runs(ctx)
    if not runs:
        st.info("No compressed run yet: compute some on the Explorer page, or run `hscc sweep`.")
        return
    classes = ctx.original["classes"]
    y_axes = ["accuracy", "macro_f1", *[f"{c}_f1" for c in classes], "agreement", "kl_to_original"]
    c = st.columns([1, 1.3, 1, 1, 1])
    x = c[0].selectbox("x axis", X_AXES, key="pareto_x", format_func=lambda a: get_axis(a).label)
    y = c[1].selectbox("y axis", y_axes, key="pareto_y",
                       format_func=lambda a: get_axis(a).label if a in ("accuracy", "macro_f1", "agreement",
                                                                         "kl_to_original")
                       else f"F1, {class_label(a[:-3])}")
    methods = sorted({r["method"] for r in runs})
    chosen = c[2].multiselect("Methods", methods, default=methods, key="pareto_methods",
                              format_func=lambda m: METHOD_STYLE.get(m, (m,))[0])
    grids = sorted({r["config"]["grid"] for r in runs if "grid" in r["config"]})
    clusters = sorted({r["config"]["clusters"] for r in runs if "clusters" in r["config"]})
    sides = sorted({r["config"].get("cluster_side", "output") for r in runs if r["method"] == "hscc"})
    allocs = sorted({r["config"].get("allocation", "uniform") for r in runs if r["method"] == "hscc"})
    # The options are part of the keys: when new runs bring a new value, the filter starts again
    # with everything selected instead of silently hiding the new runs.
    grid_sel = c[3].multiselect("HSCC grid G", grids, default=grids, key=_key("pareto_grids", grids))
    cluster_sel = c[4].multiselect("HSCC clusters K", clusters, default=clusters,
                                   key=_key("pareto_clusters", clusters))
    o = st.columns([1, 1, 1, 1.5, 1.5])
    error_bars = o[0].checkbox("SE error bars", key="pareto_se")
    show_front = o[1].checkbox("Pareto front", value=True, key="pareto_front")
    show_original = o[2].checkbox("Original model", value=True, key="pareto_original")
    side_sel = o[3].multiselect("HSCC cluster side", sides, default=sides, key=_key("pareto_sides", sides))
    alloc_sel = o[4].multiselect("HSCC rank allocation", allocs, default=allocs,
                                 key=_key("pareto_allocs", allocs))

    def keep(r):
        if r["method"] not in chosen:
            return False
        cfg = r["config"]
        return r["method"] != "hscc" or (
            cfg.get("grid") in grid_sel and cfg.get("clusters") in cluster_sel
            and cfg.get("cluster_side", "output") in side_sel and cfg.get("allocation", "uniform") in alloc_sel)

    shown = [r for r in runs if keep(r)]
    fig = pareto_figure(shown, x, y, ctx.original if show_original else None, show_front=show_front,
                        error_bars=error_bars, selected=st.session_state.get(SELECTED))
    event = st.plotly_chart(fig, key="pareto_chart", on_select="rerun", selection_mode="points", theme=None,
                            config={"displaylogo": False})
    selection = (event or {}).get("selection") or {}
    picked = key_from_selection(selection.get("points"), fig)
    by_key = {r["cache_key"]: r for r in runs}
    if picked in by_key and picked != st.session_state.get("pareto_last_pick"):
        # A new click (the chart keeps reporting its last selection on every rerun).
        st.session_state["pareto_last_pick"] = picked
        if picked != st.session_state.get(SELECTED):
            select_run(by_key[picked])
            st.rerun()
    st.caption(f"{len(shown)} of {len(runs)} cached runs shown. Click a point to select that run for every page; "
               "runs lacking a value on an axis (e.g. latency when speed was not measured) are left out.")
    front = front_runs(shown, x, y)
    if front:
        st.subheader(f"On the front ({len(front)})")
        st.dataframe(pd.DataFrame([{
            "run": r.get("label"), "accuracy %": round(100 * r["accuracy"], 2),
            "± SE": round(100 * r["accuracy_se"], 2), "macro F1": round(r["macro_f1"], 3),
            "FLOPs": r["flops"], "FLOPs kept %": round(100 * r["flops"] / r["flops_original"], 1),
            "speed-up b1": (r.get("speedup") or {}).get("b1"), "key": r["cache_key"]} for r in front]),
            hide_index=True, key="pareto_front_table")


sidebar_slot = sidebar()
st.title("Pareto fronts")
context = page_context()
if context is not None:
    main(context)
show_selection(sidebar_slot, context)
st.caption(NOTICE)
