"""The frame every page shares, drawn once by ``app.py`` around the page ``st.navigation`` runs.

Around each page the frame draws the sidebar (dataset, baseline status and headline metrics, the
selected run, the research-tool notice), the page title, and the reason a page cannot show anything
yet (no baseline, a bad data folder); it opens the page's :class:`Context`, follows ``?run=<cache
key>`` deep links and writes the selected run back into the URL, and turns a page's unexpected
exception into one visible message with an error id (the traceback goes to the server log).

Pages hold widgets and layout only: each is a ``main(ctx)`` function handed to :func:`show`, which
runs it inside the frame app.py drew (or draws the frame itself when Streamlit runs the page file
alone, as AppTest does on every page switch); they pick runs with :func:`run_picker` and select one
with :func:`select_run`. All computation is in ``hscc_core``. Runs are immutable once
stored (their key is a content hash), so they are cached with ``st.cache_data`` by (cache folder,
key); run lists are cached by the store's current set of keys, so a new run shows up at once.
``st.cache_resource`` holds loaded things (workspaces with their baseline model), the run summaries
of :meth:`Context.run_summaries` and the Pareto page's columns of :meth:`Context.pareto_points`
(10,000 runs: too many to copy out of ``st.cache_data`` per rerun).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from hscc_core.data.folders import DataError
from hscc_core.nn.models import CheckpointError
from hscc_core.present.errors import log_exception, viewer_message
from hscc_core.present.labels import NOTICE, pct, speed_text
from hscc_core.present.plots import PARETO_COLUMNS, pareto_columns, themed
from hscc_core.present.text import plain
from hscc_core.runs import jobs
from hscc_core.runs.config import run_name
from hscc_core.runs.pipeline import original_run, rebuild_model
from hscc_core.runs.selection import baseline_runs, upgraded_to
from hscc_core.runs.settings import DataSettings, data_choices, data_settings, resolve_data_folder
from hscc_core.runs.store import RunStore
from hscc_core.runs.table_cache import older_runs_count, stored_run_columns, stored_run_summaries
from hscc_core.runs.versions import older_runs_note
from hscc_core.runs.workspace import Workspace

__all__ = ["NOTICE", "PAGES", "Context", "SELECTED", "app", "baseline_ready", "baseline_run", "begin", "chart",
           "compressed_model", "finish", "listing_digest", "store_digest", "load_arrays", "load_run", "prepare_with_progress",
           "run_page", "run_picker", "select_run", "selected_run", "settings", "show", "theme", "workspace_for",
           "workspace_id"]

# The pages, in navigation order: file stem, navigation label, page title, icon.
PAGES = [
    ("overview", "Baseline", "Baseline model", ":material/home:"),
    ("explorer", "Explorer", "Explorer", ":material/tune:"),
    ("pareto", "Pareto", "Pareto fronts", ":material/scatter_plot:"),
    ("confusion", "Confusion", "Confusion matrices", ":material/grid_on:"),
    ("heatmaps", "Heatmaps", "Heatmaps", ":material/local_fire_department:"),
    ("report", "Report", "Report", ":material/description:"),
    ("runs", "Runs", "Runs", ":material/table_rows:"),
    ("compare", "Compare", "Compare runs", ":material/compare_arrows:"),
    ("demo", "Demo", "Clinician demo", ":material/stethoscope:"),
]
TITLES = {stem: title for stem, _, title, _ in PAGES}

SELECTED = "selected_run"  # session key: cache key of the run every page shows
EXPLORER_PENDING = "explorer_pending"  # session key: a config the explorer should load into its widgets
COMPARE = "compare_runs"  # session key: cache keys of the runs the Compare page shows (Runs page rows)
_CONTEXT = "_frame_context"  # session key: the context the frame opened for this script run
_SLOT = "_frame_slot"
_FRAMED = "_frame_open"  # session key: app.py opened the frame in this script run (the page consumes it)
_WRITTEN = "_frame_link"  # session key: the ?run= value the frame itself last wrote into the URL
USER_ERRORS = (DataError, CheckpointError, ValueError, OSError)
_ENV_SETTINGS = ("HSCC_CACHE_DIR", "HSCC_ARCH", "HSCC_INPUT_SIZE", "HSCC_EPOCHS", "HSCC_SPLIT")


# --------------------------------------------------------------------------------------------
# Workspace and baseline (cached)


def _settings() -> tuple[str, ...]:
    # Part of every cached workspace's identity, so another cache folder or model is never mixed up.
    return tuple(os.environ.get(name, "") for name in _ENV_SETTINGS)


def _operator() -> DataSettings:
    """What the operator allows (data folders, preparing baselines): from the server's environment."""
    return data_settings()


def _default_data() -> str:
    default = _operator().default
    return "" if default is None else str(default)


def settings() -> tuple[str, ...]:
    """The environment settings that, with :func:`workspace_id`, identify the workspace (cache keys)."""
    return _settings()


def workspace_id() -> str:
    """Hashable description of the selected workspace (the data path; the rest comes from the env)."""
    return str(st.session_state.get("data_path", _default_data())).strip()


def workspace_for(data: str) -> Workspace:
    """The (cached) workspace of a data path, with the rest of its settings from the environment.

    Raises
    ------
    DataAccessError
        A folder outside what the operator allows (``HSCC_DATA``, ``HSCC_DATA_ROOTS``).
    """
    folder = resolve_data_folder(data, _operator())
    return _workspace("" if folder is None else str(folder), _settings())


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
        bar.progress(min(done / (info["epochs"] * info["batches"]), 1.0),
                     text=f"training epoch {info['epoch']}/{info['epochs']}, loss {info['loss']:.3f}, "
                          f"accuracy {info['acc']:.3f}")

    ws.images(stage)
    ws.baseline(progress=training)
    bar.empty()


@st.cache_resource(show_spinner=False)
def _opened() -> set:
    # Workspaces whose page context opened once in this server process: later pages need no
    # "loading" message (the model, the data and the original's metrics are in memory).
    return set()


# --------------------------------------------------------------------------------------------
# Charts in the theme of the app


def theme() -> str:
    """``"dark"`` or ``"light"``: the theme the browser shows (light when Streamlit does not say)."""
    try:
        kind = getattr(st.context.theme, "type", None)
    except Exception:  # noqa: BLE001 - no browser context (AppTest, bare mode)
        kind = None
    return "dark" if kind == "dark" else "light"


def chart(fig, key: str, where=None, **kwargs):
    """``st.plotly_chart`` of a figure of ``hscc_core.present`` in the app's theme (light or dark).

    The figures carry their own colours (Okabe-Ito marks, readable fonts), so Streamlit's plotly theme
    is off; :func:`hscc_core.present.plots.themed` gives them the dark theme's background and text.
    """
    return (where or st).plotly_chart(themed(fig, theme()), key=key, theme=None,
                                      config={"displaylogo": False, **kwargs.pop("config", {})}, **kwargs)


# --------------------------------------------------------------------------------------------
# The context of a page


@dataclass
class Context:
    """What a page needs once the baseline exists."""

    ws: Workspace
    meta: dict
    original: dict

    @property
    def cache_dir(self) -> str:
        return str(self.ws.cache_dir)

    @property
    def classes(self) -> list[str]:
        return list(self.original["classes"])

    def runs(self) -> list[dict]:
        """Every stored compression run of this baseline and data, whole (every run file is read: with
        thousands of runs, list them with :meth:`run_summaries` and :func:`load_run` the ones shown)."""
        return _runs_for(self.cache_dir, self.original["data_fingerprint"], self.meta["fingerprint"],
                         store_digest(self.ws.store))

    def run_summaries(self) -> list[dict]:
        """Every stored compression run of this baseline and data without its per-layer detail
        (:data:`hscc_core.runs.table_cache.DETAIL_FIELDS`), from the store's table cache: what a page
        that draws every run reads, without reading every run file. Shared, read-only: do not modify."""
        return _summaries_for(*self._listing())

    def pareto_points(self):
        """The Pareto page's table of every run of :meth:`run_summaries` (``pareto_columns`` rows, in the
        same order): typed columns kept on disk and updated run by run, so a first visit reads columns
        instead of decoding 10,000 summaries. Shared, read-only: do not modify."""
        return _pareto_for(*self._listing())

    def older_runs_note(self, how: str = "the button on the Runs page") -> str:
        """One sentence naming the stored runs of this model that an older pipeline version computed
        (left out of every listing; "" when there are none), for the pages that list runs; ``how``
        names what brings the upgradable ones up to date from where the note is shown."""
        return older_runs_note(*_older_for(*self._listing()), how=how)

    def upgradable_runs(self) -> int:
        """How many of those older runs :mod:`hscc_core.runs.upgrade` can bring up to date."""
        return _older_for(*self._listing())[1]

    def _listing(self) -> tuple:
        return (self.cache_dir, self.original["data_fingerprint"], self.meta["fingerprint"], tuple(self.classes),
                store_digest(self.ws.store))


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_for(cache_dir: str, data_fp: str, model_fp: str, digest: str) -> list[dict]:
    # ``digest`` is the store's (store_digest): any new, removed or rewritten run changes it and so refreshes this.
    return baseline_runs(RunStore(cache_dir), data_fp, model_fp)


def listing_digest(keys, generation: int = 0) -> str:
    """A short digest of a store's listing (its run keys) and write generation
    (:meth:`~hscc_core.runs.store.RunStore.generation`): cache entries keyed by it follow new and
    removed runs, and runs rewritten under their own key (``hscc runs --time``)."""
    return hashlib.sha256(("\n".join(keys) + f"\n#{generation}").encode()).hexdigest()


def store_digest(store: RunStore) -> str:
    """:func:`listing_digest` of ``store`` as it is now (one directory listing and one stat)."""
    return listing_digest(store.keys(), store.generation())


@st.cache_resource(show_spinner=False, max_entries=4)
def _summaries_for(cache_dir: str, data_fp: str, model_fp: str, classes: tuple, listing: str) -> list[dict]:
    # A resource, not cache_data: copying 10,000 dicts out of the cache on every rerun would cost more
    # than the page itself. The pages only read them.
    return stored_run_summaries(RunStore(cache_dir), classes, data_fp, model_fp)


@st.cache_data(show_spinner=False, max_entries=8)
def _older_for(cache_dir: str, data_fp: str, model_fp: str, classes: tuple, listing: str) -> tuple[int, int]:
    store = RunStore(cache_dir)  # (older runs, how many of them can be upgraded)
    return (older_runs_count(store, classes, data_fp, model_fp),
            older_runs_count(store, classes, data_fp, model_fp, upgradable=True))


@st.cache_resource(show_spinner=False, max_entries=4)
def _pareto_for(cache_dir: str, data_fp: str, model_fp: str, classes: tuple, listing: str):
    return stored_run_columns(RunStore(cache_dir), classes, PARETO_COLUMNS, lambda r: pareto_columns(r, classes),
                              data_fp, model_fp)


def _open_context() -> Context | None:
    """The page context, or None after a visible message saying why there is none."""
    try:
        ws = workspace_for(workspace_id())
    except USER_ERRORS as exc:
        st.error(f"Cannot open this workspace: {plain(exc)}")
        return None
    ready, error = baseline_ready(ws)
    if error:
        st.error(plain(error))
        return None
    if not ready:
        st.info("Prepare the baseline from the sidebar (or run `hscc prepare`) first.")
        return None
    try:
        with st.spinner("Loading the baseline model..."):
            _, meta = ws.baseline(train_if_missing=False)
            original = baseline_run(workspace_id())
    except (*USER_ERRORS, FileNotFoundError) as exc:
        st.error(plain(exc))
        return None
    return Context(ws, meta, original)


# --------------------------------------------------------------------------------------------
# Runs and the selection


@st.cache_data(show_spinner=False, max_entries=2000)
def _cached_run(cache_dir: str, key: str, generation: int) -> dict:
    # ``generation``: a run timed later is stored again under its key (RunStore.generation).
    run = RunStore(cache_dir).get_run(key)
    if run is None:
        raise KeyError(key)  # not cached by st.cache_data: a later call looks again
    return run


def load_run(ctx: Context, key: str) -> dict | None:
    """The stored run under ``key`` if it belongs to this baseline and data, else None (a link to an
    older run brought up to date since follows it to its new key)."""
    try:
        if not ctx.ws.store.has_run(key):
            key = upgraded_to(ctx.run_summaries(), str(key))
            if key is None:
                return None
        run = _cached_run(ctx.cache_dir, key, ctx.ws.store.generation())
    except (KeyError, ValueError):  # unknown or malformed key (a hand-edited link)
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
    """The stored arrays (predictions, probabilities, labels.<layer>) of a run."""
    try:
        return _cached_arrays(ctx.cache_dir, key)
    except KeyError:
        return None


@st.cache_resource(show_spinner="Rebuilding the compressed model...", max_entries=4)
def _compressed(data: str, settings: tuple[str, ...], cache_dir: str, key: str):
    return rebuild_model(_workspace(data, settings), RunStore(cache_dir).get_run(key))


def compressed_model(cache_dir: str, key: str):
    """The compressed model of a stored run of this session's workspace, rebuilt once per run (a
    resource). A fine-tuned run is fine-tuned again (its weights are not stored): pages ask first."""
    return _compressed(workspace_id(), _settings(), str(cache_dir), key)


def select_run(run: dict, sync_explorer: bool = True) -> None:
    """Make ``run`` the selected run of every page (and, optionally, load it into the explorer)."""
    st.session_state[SELECTED] = run["cache_key"]
    if sync_explorer:
        st.session_state[EXPLORER_PENDING] = dict(run["config"], method=run["method"])


def selected_run(ctx: Context) -> dict | None:
    """The selected run, if there is one for this baseline."""
    key = st.session_state.get(SELECTED)
    return load_run(ctx, key) if key else None


def run_picker(ctx: Context, page: str) -> dict | None:
    """A select box of stored runs, synced with the selection; returns the chosen run or None."""
    runs = sorted(ctx.run_summaries(), key=lambda r: (r.get("method", ""), run_name(r)))
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
                          format_func=lambda k: f"{run_name(by_key[k])}  ·  accuracy {pct(by_key[k]['accuracy'])}")
    return load_run(ctx, choice) if choice in by_key else None  # the whole run: pages draw its layers


# --------------------------------------------------------------------------------------------
# Drawing the frame (app.py)


def _data_picker(operator: DataSettings) -> None:
    """The data folder: a choice among what the operator allows, or a text box where they allow one.

    The choice lives in ``data_path``; the widget has its own key and is created with the current
    choice as its default. A widget whose value is only pushed through its session key has a fixed
    default (the first option), and a browser that sends a rerun while the sidebar is being redrawn
    (a run picked right after a page opens) can report that default as a change: the session then
    switched to the embedded phantom, and the page said there was no baseline.
    """
    help_text = ("An ImageFolder layout: ROOT/Training/<class>/, ROOT/Testing/<class>/ or ROOT/<class>/. "
                 "The server's operator decides which folders the app may open (HSCC_DATA, HSCC_DATA_ROOTS).")
    current = st.session_state.setdefault("data_path", _default_data())
    if operator.allow_input:
        typed = st.text_input("Data folder (empty: embedded MRI phantom)", value=current, key="data_box_text",
                              help=help_text)
        st.session_state["data_path"] = typed
        return
    choices = data_choices(operator)
    if current not in choices:
        current = st.session_state["data_path"] = _default_data()
    chosen = st.selectbox("Data folder", choices, index=choices.index(current), key="data_box", help=help_text,
                          format_func=lambda c: c or "embedded MRI phantom")
    st.session_state["data_path"] = chosen


def _sidebar() -> None:
    """Dataset choice, baseline status and headline metrics; a slot for the selected run."""
    with st.sidebar:
        st.header("Dataset")
        try:
            operator = _operator()
        except ValueError as exc:  # a switch set to neither on nor off
            st.error(plain(exc))
            return
        _data_picker(operator)
        try:
            ws = workspace_for(workspace_id())
        except USER_ERRORS:
            return  # the main area says why
        st.caption(plain(ws.data_label()))
        ready, error = baseline_ready(ws)
        if error:
            return
        if not ready:
            st.warning("No baseline for this dataset yet.")
            if not operator.allow_prepare:
                st.caption("The operator prepares baselines on this server (`hscc prepare`, or "
                           "HSCC_ALLOW_PREPARE=1 to allow it from the app).")
                return
            if st.button("Prepare baseline", key="sidebar_prepare"):
                try:
                    prepare_with_progress(ws)
                except USER_ERRORS as exc:
                    st.error(plain(exc))
                    return
                st.rerun()
            return
        try:
            run = baseline_run(workspace_id())
        except USER_ERRORS:
            return
        st.subheader("Baseline")
        st.metric("Baseline accuracy", pct(run["accuracy"], 2),
                  help=f"SE {100 * run['accuracy_se']:.1f} points (bootstrap)")
        st.metric("Macro F1", f"{run['macro_f1']:.3f}", help=f"SE {run['macro_f1_se']:.3f}")
        st.session_state[_SLOT] = st.container()  # filled by finish() once the page has run
        st.caption(NOTICE)


def _follow_link(ctx: Context) -> None:
    """Select the run a ``?run=<cache key>`` link names (a new link wins over the session's selection)."""
    key = st.query_params.get("run")
    if not key or key in (st.session_state.get(SELECTED), st.session_state.get(_WRITTEN)):
        return  # no link, or the one this session wrote itself (the selection has moved on since)
    run = load_run(ctx, key)
    if run is None:
        st.warning("The link names a run that is not stored for this dataset and baseline model; "
                   "showing the page without it.")
        del st.query_params["run"]
        return
    select_run(run)


def begin(title: str) -> bool:
    """Draw the frame's top (title, sidebar) and open the page's context; True when the page can run.

    The first page of a server process loads the baseline model, the data and the original's metrics
    (half a minute for the real AlexNet): a message says so instead of a blank page.
    """
    st.session_state.pop(_SLOT, None)
    st.session_state.pop(_CONTEXT, None)
    st.title(title)
    loading = st.empty()
    wid = (workspace_id(), _settings())
    if wid not in _opened():
        loading.info("Loading the baseline model and the data: the first page after the server starts takes a "
                     "little while (up to a minute for the real dataset); then pages open at once.",
                     icon=":material/hourglass_top:")
    _sidebar()
    ctx = _open_context()
    loading.empty()
    if ctx is None:
        return False
    _opened().add(wid)
    _follow_link(ctx)
    st.session_state[_CONTEXT] = ctx
    return True


def app(default: str | None = None) -> None:
    """The whole app: navigation, and the frame around the page it picks (``app.py`` calls this).

    ``default`` names the page shown when the URL names none (the first page by default).
    """
    here = Path(__file__).resolve().parent
    nav, titles = [], {}
    for stem, label, title, icon in PAGES:
        if (here / f"{stem}.py").is_file():  # the clinician demo is optional
            page = st.Page(str(here / f"{stem}.py"), title=label, icon=icon,
                           default=stem == default if default else not nav)
            titles[page.url_path] = title
            nav.append(page)
    current = st.navigation(nav)
    if begin(titles[current.url_path]):
        run_page(current)
    finish()


def show(stem: str, main) -> None:
    """Run a page's ``main(ctx)`` inside the frame :func:`app` opened in this script run.

    AppTest runs a page file alone on page switches: the page then runs the app, which draws the
    frame and runs this page again inside it. (The pages live in ``views/``, not ``pages/``: a
    ``pages/`` folder beside app.py puts Streamlit in its pages-directory mode until app.py first
    runs, so a deep link as a server's first request showed the raw page list and "Page not found".)
    """
    if st.session_state.pop(_FRAMED, False):
        main(st.session_state[_CONTEXT])
    else:
        app(default=stem)


def run_page(page) -> None:
    """Run the page; an unexpected exception becomes one message with an error id (traceback to the log)."""
    st.session_state[_FRAMED] = True
    try:
        page.run()
    except Exception as exc:  # noqa: BLE001 - Streamlit's stop/rerun signals are BaseExceptions and pass through
        st.error(viewer_message(log_exception(exc)) + " The other pages keep working.")
    finally:
        st.session_state.pop(_FRAMED, None)


def seen_job(job_id: int) -> None:
    """Mark a finished background run as seen by this session (the sidebar stops listing it)."""
    st.session_state[f"_seen_job_{job_id}"] = True


def _background_list(ctx: Context) -> None:
    queue = jobs.queue_for(ctx.ws)
    shown = [j for j in queue.jobs() if j.active or not st.session_state.get(f"_seen_job_{j.id}")][:5]
    if any(j.active for j in shown):
        # Redrawn every two seconds while something computes; a full rerun when it finishes (a new run).
        st.session_state["_jobs_active"] = True
    elif st.session_state.pop("_jobs_active", False):
        st.rerun()
    if not shown:
        return
    st.subheader("Background runs")
    for job in shown:
        name = describe(job.config)
        if job.active:
            state = job.status()
            st.progress(state.fraction, text=f"{name}: " + (state.text() if job.state == "running" else "queued"))
        elif job.state == "done":
            c = st.columns([3, 1], vertical_alignment="center")
            c[0].caption(f":material/check_circle: {name}: ready")
            if c[1].button("Open", key=f"_open_job_{job.id}", help="Select this run and show it on the Explorer"):
                seen_job(job.id)
                run = load_run(ctx, job.key)
                if run is not None:
                    select_run(run)
                st.switch_page("views/explorer.py")
        else:
            c = st.columns([3, 1], vertical_alignment="center")
            c[0].caption(f":material/error: {name}: failed ({job.error})")
            if c[1].button("Hide", key=f"_hide_job_{job.id}"):
                seen_job(job.id)
                st.rerun(scope="fragment")


def background_runs(ctx: Context) -> None:
    """The background runs of this workspace in the sidebar (on every page), with their progress."""
    active = bool(jobs.queue_for(ctx.ws).active())
    st.fragment(run_every=2.0 if active else None)(_background_list)(ctx)


def describe(config) -> str:
    return run_name({"method": config.method, "config": config.canonical()})


def finish() -> None:
    """Draw the frame's bottom: the selected run in the sidebar, the URL's ``?run=``, the notice."""
    ctx = st.session_state.get(_CONTEXT)
    slot = st.session_state.get(_SLOT)
    run = selected_run(ctx) if ctx is not None else None
    if run is not None:
        st.query_params["run"] = st.session_state[_WRITTEN] = run["cache_key"]  # page switches clear it
    if slot is not None and ctx is not None:
        with slot:
            background_runs(ctx)
            if run is None:
                st.caption("No run selected: pick one on the Explorer or Pareto page.")
            else:
                st.subheader("Selected run")
                st.markdown(f"**{run_name(run)}**")
                reduction = 1 - run["flops"] / max(run["flops_original"], 1)
                speed = (run.get("speedup") or {}).get("b1")
                st.caption(f"accuracy {pct(run['accuracy'])} ± {100 * run['accuracy_se']:.1f}, "
                           f"macro F1 {run['macro_f1']:.3f}, {100 * reduction:.1f} % fewer FLOPs"
                           + (f", {speed_text(speed)} (batch 1)" if speed else "") + f" · key {run['cache_key'][:10]}")
                if st.button("Clear selection", key="sidebar_clear_selection"):
                    st.session_state.pop(SELECTED, None)
                    if "run" in st.query_params:
                        del st.query_params["run"]
                    st.rerun()
    st.caption(NOTICE)
