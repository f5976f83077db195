"""Report page: export the selected run as a self-contained HTML report and as figure files (300-dpi PNG
and SVG), with its heat maps, Grad-CAM maps and per-layer table."""

import re

import pandas as pd
import streamlit as st

from hscc_core.nn.layers import compress_candidates
from hscc_core.present.labels import class_label, split_name
from hscc_core.present.png import PRINT_DPI, figure_png, figures_zip
from hscc_core.present.report import (config_rows, environment_info, image_maps, layer_table, metrics_rows,
                                      report_figures, report_html)
from hscc_core.runs.config import run_name
from views import frame, tables


@st.cache_data(show_spinner="Computing the error and Grad-CAM maps...", max_entries=16)
def maps_of(data: str, cache_dir: str, key: str, index: int) -> dict:
    """Output error of every compressed layer and both models' Grad-CAM on one test image."""
    ws = frame.workspace_for(data)
    model, _ = ws.baseline(train_if_missing=False)
    images = ws.images()
    layers = list(ws.store.get_run(key).get("layers") or {})
    return image_maps(model, frame.compressed_model(cache_dir, key), images.to_tensor(images.x_test[index:index + 1]),
                      layers, compress_candidates(model)[-1])


def main(ctx: frame.Context) -> None:
    run = frame.run_picker(ctx, "report")
    if run is None:
        return
    runs = ctx.run_summaries()  # the report's Pareto fronts draw every run: summaries suffice
    images = ctx.ws.images()
    classes = ctx.classes
    fine_tuned = int(run["config"].get("finetune_epochs") or 0) > 0
    c = st.columns([2, 1])
    index = c[0].selectbox("Test image for the heat maps and Grad-CAM", range(len(images.y_test)), key="report_image",
                           format_func=lambda i: f"#{i} · labelled {class_label(classes[images.y_test[i]])}")
    with_maps = c[1].toggle("Error and Grad-CAM maps", value=not fine_tuned, key="report_maps", disabled=fine_tuned,
                            help="Needs the compressed model rebuilt (a fine-tuned run would be fine-tuned again, "
                                 "so its report has the region maps only).")
    slice_ = images.x_test[index]
    label = f"test image #{index} ({class_label(classes[images.y_test[index]])})"
    layers = list(run.get("layers") or {})

    def figures():  # built only when exported or previewed
        maps = maps_of(frame.workspace_id(), ctx.cache_dir, run["cache_key"], int(index)) if with_maps else None
        return report_figures(run, ctx.original, runs, slice_, maps=maps, image_label=label)

    names = list(report_figures(run, ctx.original, runs, slice_, names_only=True, image_label=label,
                                maps={"error": dict.fromkeys(layers)} if with_maps else None))
    stem = re.sub(r"[^A-Za-z0-9]+", "-", run.get("label", "run")).strip("-").lower() or "run"
    env = environment_info()
    c = st.columns(3)
    c[0].download_button("Download HTML report", data=lambda: report_html(run, ctx.original, figures(), env),
                         file_name=f"hscc-report-{stem}.html", mime="text/html", key="report_html",
                         on_click="ignore", type="primary",
                         help="One file with interactive figures; plotly.js is embedded, so it opens offline.")
    c[1].download_button("Download figures (PNG + SVG, zip)", data=lambda: figures_zip(figures()),
                         file_name=f"hscc-figures-{stem}.zip", mime="application/zip", key="report_png",
                         on_click="ignore", help=f"Every figure as a {PRINT_DPI}-dpi PNG and as an SVG.")
    st.caption(f"Measured on the {split_name(run)} split's {run.get('n', '?')} test images.")
    st.subheader("Metrics")
    # The run's name heads its column in the downloaded report; here it is in the Run box above, and as a
    # header it was cut at 1280 and 1440 px. The metric column is as wide as its longest name.
    st.dataframe(pd.DataFrame(metrics_rows(run, ctx.original), columns=["metric", "original", run_name(run)]),
                 hide_index=True, key="report_metrics", height="content",
                 column_config={"metric": st.column_config.TextColumn(width=280),
                                "original": st.column_config.TextColumn(width=160),
                                run_name(run): st.column_config.TextColumn("this run", help=run_name(run))})
    rows = layer_table(run)
    if rows:
        st.subheader("Per layer")
        tables.layer_table(rows, key="report_layers")
    st.subheader("Configuration")
    st.dataframe(pd.DataFrame(config_rows(run["config"]), columns=["setting", "value"]), hide_index=True,
                 key="report_config", height="content")
    st.subheader("Figures in the report")
    st.write(", ".join(names) + ".")
    preview = st.selectbox("Preview a figure as PNG", names, index=None, key="report_preview",
                           placeholder="pick a figure")
    if preview:
        st.image(figure_png(figures()[preview]), caption=preview)
    with st.expander("Environment"):
        st.dataframe(pd.DataFrame(sorted(env.items()), columns=["what", "value"]), hide_index=True, key="report_env")


frame.show("report", main)
