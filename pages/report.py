"""Report page: export the selected run as a self-contained HTML report and as PNG figures."""

import re

import pandas as pd
import streamlit as st

from hscc_core.present.heatmaps import region_value_map
from hscc_core.present.plots import (confusion_difference_figure, confusion_figure, overlay_figure, pareto_figure,
                             per_class_figure)
from hscc_core.present.report import environment_info, figure_png, figures_zip, metrics_rows, report_html
from pages.common import NOTICE, compressed_runs, page_context, run_picker, show_selection, sidebar


def figure_names(run: dict) -> list[str]:
    """Names of the report's figures (without building them)."""
    label = run["label"]
    return ["Pareto front: accuracy vs FLOPs", "Pareto front: macro F1 vs FLOPs", "Confusion matrix, original",
            f"Confusion matrix, {label}", "Confusion change", "Per-class F1",
            *[f"Rank kept per region, {layer}" for layer in run.get("layers") or {}]]


def report_figures(ctx, run: dict, runs: list[dict]) -> dict:
    """The report's figures, titled with the run's configuration (built only when exported)."""
    original, classes = ctx.original, ctx.original["classes"]
    label = run["label"]
    figs = {
        "Pareto front: accuracy vs FLOPs": pareto_figure(
            runs, "flops", "accuracy", original, error_bars=True, selected=run["cache_key"],
            title=f"Accuracy vs FLOPs, {len(runs)} runs (ringed: {label})"),
        "Pareto front: macro F1 vs FLOPs": pareto_figure(
            runs, "flops", "macro_f1", original, error_bars=True, selected=run["cache_key"],
            title=f"Macro F1 vs FLOPs, {len(runs)} runs (ringed: {label})"),
        "Confusion matrix, original": confusion_figure(original["confusion_matrix"], classes, False,
                                                       "Original model (rows: true class)"),
        f"Confusion matrix, {label}": confusion_figure(run["confusion_matrix"], classes, False,
                                                       f"{label} (rows: true class)"),
        "Confusion change": confusion_difference_figure(run["confusion_matrix"], original["confusion_matrix"],
                                                        classes, False, f"{label} minus original"),
        "Per-class F1": per_class_figure({"original": original, label: run}, "f1",
                                         f"Per-class F1 (± bootstrap SE): original vs {label}"),
    }
    images = ctx.ws.images()
    for layer, summary in (run.get("layers") or {}).items():
        values, regions, texts = region_value_map(summary, "rank")
        figs[f"Rank kept per region, {layer}"] = overlay_figure(
            images.x_test[0], values, zmin=0, zmax=1, regions=regions, region_text=texts, colorbar_title="rank kept",
            title=f"Rank kept per region · {layer}<br><sup>{label}, test image #0</sup>")
    return figs


def main(ctx) -> None:
    run = run_picker(ctx, "report")
    if run is None:
        return
    runs = compressed_runs(ctx)
    names = figure_names(run)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", run["label"]).strip("-").lower() or "run"
    env = environment_info()
    c = st.columns(3)
    c[0].download_button("Download HTML report",
                         data=lambda: report_html(run, ctx.original, report_figures(ctx, run, runs), env),
                         file_name=f"hscc-report-{stem}.html", mime="text/html", key="report_html",
                         on_click="ignore", type="primary",
                         help="One file with interactive figures; plotly.js is embedded, so it opens offline.")
    c[1].download_button("Download PNG figures (zip)", data=lambda: figures_zip(report_figures(ctx, run, runs)),
                         file_name=f"hscc-figures-{stem}.zip", mime="application/zip", key="report_png",
                         on_click="ignore")
    st.subheader("Metrics")
    st.dataframe(pd.DataFrame(metrics_rows(run, ctx.original), columns=["metric", "original", run["label"]]),
                 hide_index=True, key="report_metrics")
    st.subheader("Configuration")
    st.json(run["config"], expanded=True)
    st.subheader("Figures in the report")
    st.write(", ".join(names) + ".")
    preview = st.selectbox("Preview a figure as PNG", names, index=None, key="report_preview",
                           placeholder="pick a figure")
    if preview:
        st.image(figure_png(report_figures(ctx, run, runs)[preview]), caption=preview)
    with st.expander("Environment"):
        st.dataframe(pd.DataFrame(sorted(env.items()), columns=["what", "value"]), hide_index=True,
                     key="report_env")


sidebar_slot = sidebar()
st.title("Report")
context = page_context()
if context is not None:
    main(context)
show_selection(sidebar_slot, context)
st.caption(NOTICE)
