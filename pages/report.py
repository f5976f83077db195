"""Report page: export the selected run as a self-contained HTML report and as PNG figures."""

import re

import pandas as pd
import streamlit as st

from hscc_core.runs.config import run_name
from hscc_core.present.png import figure_png, figures_zip
from hscc_core.present.report import environment_info, metrics_rows, report_figures, report_html
from pages import frame


def main(ctx: frame.Context) -> None:
    run = frame.run_picker(ctx, "report")
    if run is None:
        return
    runs = ctx.runs()
    slice_ = ctx.ws.images().x_test[0]
    figures = lambda: report_figures(run, ctx.original, runs, slice_)  # noqa: E731 - built only when exported
    names = list(report_figures(run, ctx.original, runs, slice_, names_only=True))
    stem = re.sub(r"[^A-Za-z0-9]+", "-", run.get("label", "run")).strip("-").lower() or "run"
    env = environment_info()
    c = st.columns(3)
    c[0].download_button("Download HTML report", data=lambda: report_html(run, ctx.original, figures(), env),
                         file_name=f"hscc-report-{stem}.html", mime="text/html", key="report_html",
                         on_click="ignore", type="primary",
                         help="One file with interactive figures; plotly.js is embedded, so it opens offline.")
    c[1].download_button("Download PNG figures (zip)", data=lambda: figures_zip(figures()),
                         file_name=f"hscc-figures-{stem}.zip", mime="application/zip", key="report_png",
                         on_click="ignore")
    st.subheader("Metrics")
    st.dataframe(pd.DataFrame(metrics_rows(run, ctx.original), columns=["metric", "original", run_name(run)]),
                 hide_index=True, key="report_metrics")
    st.subheader("Configuration")
    st.json(run["config"], expanded=True)
    st.subheader("Figures in the report")
    st.write(", ".join(names) + ".")
    preview = st.selectbox("Preview a figure as PNG", names, index=None, key="report_preview",
                           placeholder="pick a figure")
    if preview:
        st.image(figure_png(figures()[preview]), caption=preview)
    with st.expander("Environment"):
        st.dataframe(pd.DataFrame(sorted(env.items()), columns=["what", "value"]), hide_index=True, key="report_env")


frame.show("report", main)
