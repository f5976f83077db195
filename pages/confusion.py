"""Confusion page: the original and the selected run side by side, their difference, per-class metrics."""

import streamlit as st

from hscc_core.runs.config import run_name
from hscc_core.present.plots import confusion_difference_figure, confusion_figure, per_class_figure
from pages import frame


def main(ctx: frame.Context) -> None:
    run = frame.run_picker(ctx, "confusion")
    if run is None:
        return
    original, classes, name = ctx.original, ctx.classes, run_name(run)
    norm = st.radio("Cells", ("counts", "row-normalised (recall per true class)"), key="confusion_norm",
                    horizontal=True) != "counts"
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(original["confusion_matrix"], classes, norm,
                                       f"Original model<br><sup>accuracy {100 * original['accuracy']:.1f} "
                                       f"± {100 * original['accuracy_se']:.1f} %</sup>"),
                      key="confusion_original", theme=None)
    right.plotly_chart(confusion_figure(run["confusion_matrix"], classes, norm,
                                        f"{name}<br><sup>accuracy {100 * run['accuracy']:.1f} "
                                        f"± {100 * run['accuracy_se']:.1f} %</sup>"),
                       key="confusion_run", theme=None)
    left, right = st.columns(2)
    left.plotly_chart(confusion_difference_figure(run["confusion_matrix"], original["confusion_matrix"], classes, norm,
                                                  "Change: compressed minus original"
                                                  "<br><sup>orange: more images in that cell, blue: fewer</sup>"),
                      key="confusion_diff", theme=None)
    pair = {"original": original, name: run}
    right.plotly_chart(per_class_figure(pair, "f1"), key="confusion_f1", theme=None)
    left, right = st.columns(2)
    for col, metric in zip((left, right), ("precision", "recall")):
        col.plotly_chart(per_class_figure(pair, metric), key=f"confusion_{metric}", theme=None)


frame.show("confusion", main)
