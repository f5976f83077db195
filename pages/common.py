"""Shared wiring for the app's pages: the workspace in session state, cached loaders, sidebar.

Only widgets and calls into ``hscc_core`` live here; all computation stays in the core.
"""

from __future__ import annotations

import os
import streamlit as st

from hscc_core.data import DataError
from hscc_core.models import CheckpointError
from hscc_core.workspace import Workspace

NOTICE = "Research tool, not a medical device: predictions shown here must not be used for diagnosis."


def current_workspace() -> Workspace:
    """The workspace selected in the sidebar (data path from ``HSCC_DATA`` by default)."""
    return _workspace(workspace_id())


def workspace_id() -> str:
    """Hashable description of the selected workspace (the data path; the rest comes from the env)."""
    return st.session_state.get("data_path", os.environ.get("HSCC_DATA", "")).strip()


@st.cache_resource(show_spinner=False)
def _workspace(data: str) -> Workspace:
    # One Workspace per dataset: it memoises the decoded images and the loaded baseline.
    return Workspace.from_env(data=data)


@st.cache_data(show_spinner=False)
def baseline_run(data: str) -> dict:
    """The original model's metrics (cached in the run store and in the app)."""
    from hscc_core.pipeline import original_run

    run, _, _ = original_run(_workspace(data))
    return run


def baseline_ready(ws: Workspace) -> tuple[bool, str | None]:
    """(ready, error message) without training anything."""
    try:
        return ws.has_baseline(), None
    except (DataError, CheckpointError, ValueError, OSError) as exc:
        return False, str(exc)


def prepare_with_progress(ws: Workspace) -> None:
    """Decode the data and train the baseline with a progress bar and stage messages."""
    bar = st.progress(0.0, text="preparing data")

    def stage(name, done, total):
        bar.progress(min(done / max(total, 1), 1.0), text=f"{name}: {done}/{total}")

    def training(info):
        done = (info["epoch"] - 1) * info["batches"] + info["batch"]
        frac = done / (info["epochs"] * info["batches"])
        bar.progress(min(frac, 1.0), text=f"training epoch {info['epoch']}/{info['epochs']}, "
                                           f"loss {info['loss']:.3f}, accuracy {info['acc']:.3f}")

    ws.images(stage)
    ws.baseline(progress=training)
    bar.empty()


def sidebar() -> None:
    """Dataset choice, baseline status and headline metrics."""
    with st.sidebar:
        st.header("Dataset")
        st.text_input("Data folder (empty: embedded MRI phantom)", key="data_path",
                      value=st.session_state.get("data_path", os.environ.get("HSCC_DATA", "")),
                      help="An ImageFolder layout: ROOT/Training/<class>/, ROOT/Testing/<class>/ "
                           "or ROOT/<class>/. Also settable with the HSCC_DATA environment variable.")
        ws = current_workspace()
        st.caption(ws.data_label())
        ready, error = baseline_ready(ws)
        if error:
            st.error(error)
            return
        if not ready:
            st.warning("No baseline for this dataset yet.")
            if st.button("Prepare baseline", key="sidebar_prepare"):
                try:
                    prepare_with_progress(ws)
                except (DataError, CheckpointError, ValueError, OSError) as exc:
                    st.error(str(exc))
                    return
                st.rerun()
            return
        run = baseline_run(workspace_id())
        st.metric("Baseline accuracy", f"{100 * run['accuracy']:.1f} %",
                  help=f"SE {100 * run['accuracy_se']:.1f} points (bootstrap)")
        st.metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
        st.caption(NOTICE)
