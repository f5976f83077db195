"""Shared wiring for the app's pages: the workspace, cached loaders, the sidebar and the run selection.

Only widgets and calls into ``hscc_core`` live here; all computation stays in the core. Runs are
immutable once stored (their key is a content hash), so they are cached with ``st.cache_data`` by
(cache folder, key); run lists are cached by the store's current set of keys, so a new run shows up
at once. ``st.cache_resource`` holds loaded things only: workspaces (with their baseline model) and
rebuilt compressed models.

Every page calls :func:`sidebar` itself (AppTest may re-run a page script on its own) and
:func:`show_selection` at its end, so the sidebar shows the run the page has just selected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import streamlit as st

from hscc_core.data.folders import DataError
from hscc_core.nn.models import CheckpointError
from hscc_core.present.report import NOTICE
from hscc_core.runs.store import RunStore
from hscc_core.runs.workspace import Workspace

__all__ = ["NOTICE", "Context", "SELECTED", "baseline_ready", "baseline_run", "compressed_runs", "current_workspace",
           "load_arrays", "load_run", "page_context", "prepare_with_progress", "run_picker", "select_run",
           "selected_run", "show_selection", "sidebar", "workspace_for", "workspace_id"]

SELECTED = "selected_run"  # session key: cache key of the run every page shows
EXPLORER_PENDING = "explorer_pending"  # session key: a config the explorer should load into its widgets
USER_ERRORS = (DataError, CheckpointError, ValueError, OSError)


_ENV_SETTINGS = ("HSCC_CACHE_DIR", "HSCC_ARCH", "HSCC_INPUT_SIZE", "HSCC_EPOCHS")


def _settings() -> tuple[str, ...]:
    # Part of every cached workspace's identity, so another cache folder or model is never mixed up.
    return tuple(os.environ.get(name, "") for name in _ENV_SETTINGS)


def current_workspace() -> Workspace:
    """The workspace selected in the sidebar (data path from ``HSCC_DATA`` by default).

    Settings no workspace can have (``HSCC_INPUT_SIZE=abc``, an input too small for the model)
    stop the page with one visible message instead of a traceback.
    """
    try:
        return workspace_for(workspace_id())
    except USER_ERRORS as exc:
        st.error(f"Cannot open this workspace: {exc}")
        st.stop()


def workspace_for(data: str) -> Workspace:
    """The (cached) workspace of a data path, with the rest of its settings from the environment."""
    return _workspace(data, _settings())


def workspace_id() -> str:
    """Hashable description of the selected workspace (the data path; the rest comes from the env)."""
    return st.session_state.get("data_path", os.environ.get("HSCC_DATA", "")).strip()


@st.cache_resource(show_spinner=False)
def _workspace(data: str, settings: tuple[str, ...]) -> Workspace:
    # One Workspace per dataset: it memoises the decoded images and the loaded baseline.
    return Workspace.from_env(data=data)


@st.cache_resource(show_spinner=False)
def _ready() -> set:
    # Workspaces whose baseline has been found once: checking again would hash the checkpoint
    # (hundreds of MB for AlexNet) on every rerun.
    return set()


def baseline_run(data: str) -> dict:
    """The original model's metrics (cached in the run store and in the app)."""
    return _baseline_run(data, _settings())


@st.cache_data(show_spinner=False)
def _baseline_run(data: str, settings: tuple[str, ...]) -> dict:
    from hscc_core.runs.pipeline import original_run

    run, _, _ = original_run(_workspace(data, settings))
    return run


def baseline_ready(ws: Workspace) -> tuple[bool, str | None]:
    """(ready, error message) without training anything."""
    token = (str(ws.data), str(ws.cache_dir), ws.arch, ws.size)
    if token in _ready():
        return True, None
    try:
        ready = ws.has_baseline()
    except USER_ERRORS as exc:
        return False, str(exc)
    if ready:
        _ready().add(token)
    return ready, None


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


def sidebar():
    """Dataset choice, baseline status and headline metrics; returns the slot for the selected run."""
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
            return None
        if not ready:
            st.warning("No baseline for this dataset yet.")
            if st.button("Prepare baseline", key="sidebar_prepare"):
                try:
                    prepare_with_progress(ws)
                except USER_ERRORS as exc:
                    st.error(str(exc))
                    return None
                st.rerun()
            return None
        try:
            run = baseline_run(workspace_id())
        except USER_ERRORS as exc:
            st.error(str(exc))
            return None
        st.subheader("Baseline")
        st.metric("Baseline accuracy", f"{100 * run['accuracy']:.1f} %",
                  help=f"SE {100 * run['accuracy_se']:.1f} points (bootstrap)")
        st.metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
        slot = st.container()  # filled by show_selection() once the page has run
        st.caption(NOTICE)
        return slot


# --------------------------------------------------------------------------------------------
# Context, runs and the selection


@dataclass
class Context:
    """What a page needs once the baseline exists."""

    ws: Workspace
    meta: dict
    original: dict

    @property
    def cache_dir(self) -> str:
        return str(self.ws.cache_dir)


def page_context() -> Context | None:
    """The workspace, baseline metadata and original run; None (after a message) when not ready."""
    ws = current_workspace()
    ready, error = baseline_ready(ws)
    if error:
        st.error(error)
        return None
    if not ready:
        st.info("Prepare the baseline from the sidebar (or run `hscc prepare`) first.")
        return None
    try:
        _, meta = ws.baseline(train_if_missing=False)
        original = baseline_run(workspace_id())
    except (*USER_ERRORS, FileNotFoundError) as exc:
        st.error(str(exc))
        return None
    return Context(ws, meta, original)


@st.cache_data(show_spinner=False, max_entries=2000)
def _cached_run(cache_dir: str, key: str) -> dict:
    run = RunStore(cache_dir).get_run(key)
    if run is None:
        raise KeyError(key)  # not cached by st.cache_data: a later call looks again
    return run


def load_run(ctx: Context, key: str) -> dict | None:
    """The stored run under ``key`` if it belongs to this baseline and data, else None."""
    if not ctx.ws.store.has_run(key):
        return None
    try:
        run = _cached_run(ctx.cache_dir, key)
    except KeyError:
        return None
    if run.get("data_fingerprint") != ctx.original["data_fingerprint"] or \
            run.get("model_fingerprint") != ctx.meta["fingerprint"]:
        return None
    return run


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_arrays(cache_dir: str, key: str) -> dict:
    arrays = RunStore(cache_dir).get_arrays(key)
    if arrays is None:
        raise KeyError(key)
    return arrays


def load_arrays(ctx: Context, key: str) -> dict | None:
    """The stored arrays (predictions, probabilities, labels.<layer>, ranks.<layer>) of a run."""
    try:
        return _cached_arrays(ctx.cache_dir, key)
    except KeyError:
        return None


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_for(cache_dir: str, data_fp: str, model_fp: str, keys: tuple[str, ...]) -> list[dict]:
    # ``keys`` is the store's listing: any new or removed run changes it and so refreshes this.
    runs = RunStore(cache_dir).list_runs(data_fingerprint=data_fp)
    return [r for r in runs if r.get("method") != "original" and r.get("model_fingerprint") == model_fp]


def compressed_runs(ctx: Context) -> list[dict]:
    """Every stored compression run of this baseline and data."""
    return _runs_for(ctx.cache_dir, ctx.original["data_fingerprint"], ctx.meta["fingerprint"],
                     tuple(ctx.ws.store.keys()))


def select_run(run: dict, sync_explorer: bool = True) -> None:
    """Make ``run`` the selected run of every page (and, optionally, load it into the explorer)."""
    st.session_state[SELECTED] = run["cache_key"]
    if sync_explorer:
        st.session_state[EXPLORER_PENDING] = dict(run["config"])


def selected_run(ctx: Context) -> dict | None:
    """The selected run, if there is one for this baseline."""
    key = st.session_state.get(SELECTED)
    return load_run(ctx, key) if key else None


def run_picker(ctx: Context, page: str) -> dict | None:
    """A select box of stored runs, synced with the selection; returns the chosen run or None."""
    runs = sorted(compressed_runs(ctx), key=lambda r: (r.get("method", ""), r.get("label", "")))
    if not runs:
        st.info("No compressed run yet: compute one on the Explorer page (or with `hscc compress` / "
                "`hscc sweep`).")
        return None
    by_key = {r["cache_key"]: r for r in runs}
    widget = f"{page}_pick"
    current = st.session_state.get(SELECTED)
    if current in by_key:
        st.session_state[widget] = current
    else:
        st.session_state.pop(widget, None)

    def changed():
        choice = st.session_state.get(widget)
        if choice in by_key:
            select_run(by_key[choice])

    choice = st.selectbox("Run", list(by_key), key=widget, index=None, on_change=changed,
                          placeholder="pick a run (or click one on the Pareto page)",
                          format_func=lambda k: f"{by_key[k].get('label', k)}  ·  acc "
                                                f"{100 * by_key[k]['accuracy']:.1f} %  ·  {k[:8]}")
    return by_key.get(choice)


def show_selection(slot, ctx: Context | None) -> None:
    """Fill the sidebar slot with the selected run (label, headline metrics, a clear button)."""
    if slot is None or ctx is None:
        return
    run = selected_run(ctx)
    with slot:
        if run is None:
            st.caption("No run selected: pick one on the Explorer or Pareto page.")
            return
        st.subheader("Selected run")
        st.markdown(f"**{run.get('label', run['cache_key'])}**")
        reduction = 1 - run["flops"] / max(run["flops_original"], 1)
        st.caption(f"accuracy {100 * run['accuracy']:.1f} ± {100 * run['accuracy_se']:.1f} %, "
                   f"macro F1 {run['macro_f1']:.3f}, FLOPs -{100 * reduction:.1f} %"
                   + (f", x{run['speedup']['b1']:.2f} faster" if run.get("speedup") else "")
                   + f" · key {run['cache_key'][:10]}")
        if st.button("Clear selection", key="sidebar_clear_selection"):
            st.session_state.pop(SELECTED, None)
            st.rerun()


def fmt_pct(value: Any, digits: int = 1) -> str:
    """``0.1234`` -> ``"12.3 %"`` (``"n/a"`` for None)."""
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"
