"""Baseline page: the original model's metrics on the test split, with bootstrap SEs."""

import pandas as pd
import streamlit as st

from pages.common import (NOTICE, baseline_ready, baseline_run, current_workspace, page_context, show_selection,
                          sidebar, workspace_id)

sidebar_slot = sidebar()

st.title("Baseline model")
ws = current_workspace()
ready, error = baseline_ready(ws)
if error:
    st.error(error)
elif not ready:
    st.info("Prepare the baseline from the sidebar (or run `hscc prepare`) to see its metrics.")
else:
    run = baseline_run(workspace_id())
    st.caption(f"{run['arch']} at {run['input_size']} px on {run['data']} "
               f"({run['n']} test images); standard errors from 1,000 bootstrap resamples.")
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{100 * run['accuracy']:.2f} %", help=f"SE {100 * run['accuracy_se']:.2f}")
    cols[1].metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
    cols[2].metric("FLOPs", f"{run['flops'] / 1e9:.3f} G")
    cols[3].metric("Parameters", f"{run['params'] / 1e6:.2f} M")
    table = pd.DataFrame({name: {"precision": f"{m['precision']:.3f} ± {m['precision_se']:.3f}",
                                 "recall": f"{m['recall']:.3f} ± {m['recall_se']:.3f}",
                                 "F1": f"{m['f1']:.3f} ± {m['f1_se']:.3f}", "support": m["support"]}
                          for name, m in run["per_class"].items()}).T
    st.subheader("Per class")
    st.dataframe(table, key="overview_per_class")
    st.subheader("Confusion matrix (rows: true class)")
    st.dataframe(pd.DataFrame(run["confusion_matrix"], index=run["classes"], columns=run["classes"]),
                 key="overview_confusion")
show_selection(sidebar_slot, page_context() if ready else None)
st.caption(NOTICE)
