"""Baseline page: the original model's metrics on the test split, with bootstrap SEs."""

import pandas as pd
import streamlit as st

from hscc_core.present.labels import class_label, si
from hscc_core.present.plots import confusion_figure
from pages import frame


def main(ctx: frame.Context) -> None:
    run = ctx.original
    st.caption(f"{run['arch']} at {run['input_size']} px on {run['data']} "
               f"({run['n']} test images); standard errors from 1,000 bootstrap resamples.")
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{100 * run['accuracy']:.2f} %", help=f"SE {100 * run['accuracy_se']:.2f}")
    cols[1].metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
    cols[2].metric("FLOPs", si(run["flops"], "FLOPs"))
    cols[3].metric("Parameters", si(run["params"]))
    table = pd.DataFrame([{"class": class_label(name), "precision": m["precision"], "± SE (P)": m["precision_se"],
                           "recall": m["recall"], "± SE (R)": m["recall_se"], "F1": m["f1"], "± SE (F1)": m["f1_se"],
                           "test images": m["support"]} for name, m in run["per_class"].items()])
    left, right = st.columns([1.1, 1])
    left.subheader("Per class")
    left.dataframe(table, hide_index=True, key="overview_per_class",
                   column_config={c: st.column_config.NumberColumn(format="%.3f")
                                  for c in table.columns if c not in ("class", "test images")})
    right.plotly_chart(confusion_figure(run["confusion_matrix"], ctx.classes, False,
                                        "Confusion matrix<br><sup>rows: true class, columns: predicted</sup>"),
                       key="overview_confusion", theme=None)


frame.show("overview", main)
