"""Baseline page: the original model's metrics on the test split, with bootstrap SEs, and what that
split measures (which split, how many test images have a twin in training)."""

import pandas as pd
import streamlit as st

from hscc_core.present.labels import si, split_name
from hscc_core.present.plots import confusion_figure
from hscc_core.present.report import per_class_rows
from hscc_core.present.text import plain
from hscc_core.runs.split_overview import split_overview
from views import frame


@st.cache_data(show_spinner=False, max_entries=8)
def overview(data: str, settings: tuple, data_fingerprint: str) -> dict:
    """The split overview of a workspace (decodes every file once; cached by the data's fingerprint)."""
    return split_overview(frame.workspace_for(data)).to_dict()


def split_section(ctx: frame.Context) -> None:
    with st.spinner("Looking for test images with a twin in training (the first time only)..."):
        try:
            info = overview(frame.workspace_id(), frame.settings(), ctx.original["data_fingerprint"])
        except (OSError, ValueError) as exc:
            st.warning(f"Which test images have a twin in training could not be worked out: {plain(exc)}")
            return
    text = plain(info["sentence"])  # names the classes (folder names)
    if info["test_with_twin"]:
        share = info["test_with_twin"] / max(info["test_images"], 1)
        st.warning(f"{text} Accuracy on this split partly measures recall of images seen in training "
                   f"({100 * share:.0f} % of the test set); `hscc prepare --split clean` makes a split without "
                   "twins.", icon=":material/content_copy:")
    else:
        st.info(text, icon=":material/call_split:")


def main(ctx: frame.Context) -> None:
    run = ctx.original
    st.caption(f"{run['arch']} at {run['input_size']} px on {plain(run['data'])}, {split_name(run)} split "
               f"({run['n']} test images); standard errors from 1,000 bootstrap resamples.")
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{100 * run['accuracy']:.2f} %", help=f"SE {100 * run['accuracy_se']:.2f} points")
    cols[1].metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
    cols[2].metric("FLOPs", si(run["flops"], "FLOPs"))
    cols[3].metric("Parameters", si(run["params"]))
    split_section(ctx)
    left, right = st.columns([1.3, 1], gap="medium")
    left.subheader("Per class")
    left.dataframe(pd.DataFrame(per_class_rows(run)), hide_index=True, key="overview_per_class",
                   column_config={"class (test images)": st.column_config.TextColumn(width=155),
                                  **{c: st.column_config.TextColumn(width=92, help="± its bootstrap SE")
                                     for c in ("precision", "recall", "F1")}})
    frame.chart(confusion_figure(run["confusion_matrix"], ctx.classes, False,
                                 "Confusion matrix<br><sup>rows: true class, columns: predicted</sup>"),
                "overview_confusion", right)


frame.show("overview", main)
