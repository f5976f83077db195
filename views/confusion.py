"""Confusion page: the original and the selected run side by side, their difference, per-class metrics."""

import streamlit as st

from hscc_core.present.labels import split_name
from hscc_core.present.plots import chart_title, confusion_difference_figure, confusion_figure, per_class_figure
from hscc_core.runs.config import run_name
from views import frame


def main(ctx: frame.Context) -> None:
    run = frame.run_picker(ctx, "confusion")
    if run is None:
        return
    original, classes, name = ctx.original, ctx.classes, run_name(run)
    norm = st.radio("Cells", ("counts", "row-normalised (recall per true class)"), key="confusion_norm",
                    horizontal=True) != "counts"
    st.caption(f"{original.get('n', '?')} test images of the {split_name(run)} split; rows: true class, "
               "columns: predicted class.")
    left, right = st.columns(2, gap="medium")
    # The run's name and accuracy go under the title, wrapped: a name longer than the chart is wide was cut
    # at 1440 px. Three subtitle lines need a taller top margin, the same on both so the matrices align.
    matrices = [
        confusion_figure(original["confusion_matrix"], classes, norm, chart_title(
            "Original model", f"accuracy {100 * original['accuracy']:.1f} ± {100 * original['accuracy_se']:.1f} %")),
        confusion_figure(run["confusion_matrix"], classes, norm, chart_title(
            "Compressed model", f"{name} · accuracy {100 * run['accuracy']:.1f} ± {100 * run['accuracy_se']:.1f} %"))]
    for fig in matrices:  # the title from the top edge down (plotly centres it in the margin by default)
        fig.update_layout(margin_t=118, title_y=0.985, title_yanchor="top")
    frame.chart(matrices[0], "confusion_original", left)
    frame.chart(matrices[1], "confusion_run", right)
    left, right = st.columns(2, gap="medium")
    unit = "points of each row's share" if norm else "images"
    frame.chart(confusion_difference_figure(
        run["confusion_matrix"], original["confusion_matrix"], classes, norm,
        f"Change: compressed minus original<br><sup>{unit}; blue better, vermillion worse</sup>"),
        "confusion_diff", left)
    left.caption("On the diagonal more images means more correct answers (blue); off it, more errors (vermillion). "
                 "The numbers are the change itself.")
    pair = {"original": original, name: run}
    frame.chart(per_class_figure(pair, "f1"), "confusion_f1", right)
    left, right = st.columns(2, gap="medium")
    for col, metric in zip((left, right), ("precision", "recall")):
        frame.chart(per_class_figure(pair, metric), f"confusion_{metric}", col)


frame.show("confusion", main)
