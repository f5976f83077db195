"""Runs page: every stored run in one table (sort, filter, search, Pareto marks, export, selection),
parallel coordinates brushed by the same filters, which setting matters, and an Optuna search."""

import numpy as np
import streamlit as st

from hscc_core.measure.machine import BUSY_SHARE
from hscc_core.present.dashboard import (DEFAULT_DIMENSIONS, column_format, column_label, constraints_for,
                                         importance_figure, in_display_units, parcoords_figure)
from hscc_core.present.text import plain
from hscc_core.runs.compare import COMPARE_MAX
from hscc_core.runs.config import ALLOCATION_TITLES, CALIBRATION_TITLES, RANK_MULTIPLES
from hscc_core.runs.importance import IMPORTANCE_METHODS, setting_importance
from hscc_core.runs.pareto import get_axis
from hscc_core.runs.search import SAMPLERS, SearchConfig, SearchSpace, default_objectives, run_search
from hscc_core.runs.store import RunStore
from hscc_core.runs.table import (SETTINGS, category_values, filter_mask, is_numeric, mark_pareto, search_mask,
                                  sort_table, to_csv, to_json)
from hscc_core.runs.table_cache import stored_runs_table
from hscc_core.runs.upgrade import time_runs, upgrade_runs
from views import frame
from views.frame import USER_ERRORS, load_run, select_run

COMPARE = frame.COMPARE  # session key: cache keys of the runs the Compare page shows
X_AXES = ("flops", "params", "latency")
Y_AXES = ("accuracy", "macro_f1", "agreement", "kl_to_original")
# Category values shown by their readable names (the table and its exports keep the identifiers).
_VALUE_TITLES = {"allocation": ALLOCATION_TITLES, "calibration": CALIBRATION_TITLES}


def _value_title(col: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return _VALUE_TITLES.get(col, {}).get(value, value)


@st.cache_data(show_spinner=False, max_entries=8)
def _table(cache_dir: str, data_fp: str, model_fp: str, classes: tuple, listing: str):
    # ``listing`` (a digest of the store's keys) changes with any new or removed run; only the
    # table is cached, not 10,000 run dicts, so a rerun unpickles one DataFrame. A fresh process
    # reads the rows from the store's table cache and only the runs it has not seen.
    return stored_runs_table(RunStore(cache_dir), classes, data_fp, model_fp)


@st.cache_data(show_spinner=False, max_entries=32)
def _importance(_table_rows, rows_digest: str, metric: str, method: str):
    return setting_importance(_table_rows, metric, method)


def _filters(table):
    """The search box and per-column filters; returns (text, ranges, categories, only_front)."""
    c = st.columns([2, 3, 1])
    text = c[0].text_input("Search", key="runs_search", placeholder="words in label, key, method, side...")
    filterable = [col for col in table.columns if col not in ("key", "label", "pareto")]
    chosen = c[1].multiselect("Filter by", filterable, key="runs_filter_cols", format_func=column_label,
                              help="Numbers get a range, categories a choice of values.")
    only_front = c[2].checkbox("Pareto only", key="runs_only_front")
    ranges, categories = {}, {}
    cols = st.columns(3) if chosen else []
    for i, col in enumerate(chosen):
        box = cols[i % 3]
        if is_numeric(table, col):
            finite = table[col].to_numpy(float)
            finite = finite[np.isfinite(finite)]
            if finite.size == 0 or finite.min() == finite.max():
                box.caption(f"{column_label(col)}: one value only")
                continue
            lo, hi = float(finite.min()), float(finite.max())
            integer = bool(np.all(finite == np.round(finite))) and hi - lo < 1e6
            lo, hi = (int(lo), int(hi)) if integer else (lo, hi)
            # The bounds are part of the key: when new runs widen them, the slider starts over.
            ranges[col] = box.slider(column_label(col), lo, hi, (lo, hi), key=f"runs_range_{col}_{lo}_{hi}")
        else:
            options = category_values(table, col)
            categories[col] = box.multiselect(column_label(col), options, default=options,
                                              key=f"runs_cat_{col}_{'_'.join(map(str, options))}",
                                              format_func=lambda v, col=col: _value_title(col, v))
    return text, ranges, categories, only_front


def _display(shown):
    config = {"key": st.column_config.TextColumn("key", width="small"),
              # Pinned: the table has dozens of columns, and a row must keep its name while it scrolls.
              "label": st.column_config.TextColumn("label", width=330, pinned=True),
              "pareto": st.column_config.CheckboxColumn("Pareto", help="on the front of the chosen axes")}
    for col in shown.columns:
        fmt = column_format(col)
        if fmt:
            config[col] = st.column_config.NumberColumn(column_label(col), format=fmt)
        elif col not in config:
            config[col] = st.column_config.Column(column_label(col))
    order = ["pareto", "label", *[c for c in shown.columns if c not in ("pareto", "label", "key")], "key"]
    readable = {col: shown[col].map(titles.get).fillna(shown[col])
                for col, titles in _VALUE_TITLES.items() if col in shown.columns}
    return in_display_units(shown.assign(**readable)[order]), config


def _handle_selection(ctx, shown, event) -> None:
    rows = list(((event or {}).get("selection") or {}).get("rows") or [])
    keys = [shown["key"].iloc[i] for i in rows if 0 <= i < len(shown)]
    if not keys or keys == st.session_state.get("runs_last_selection"):
        return  # the table reports its selection on every rerun: act on changes only
    st.session_state["runs_last_selection"] = keys
    st.session_state[COMPARE] = keys[:COMPARE_MAX]
    run = load_run(ctx, keys[0])
    if run is not None:
        select_run(run)


def _parcoords(base, ranges, categories) -> None:
    st.subheader("Parallel coordinates")
    numbers = [c for c in base.columns if c not in ("key", "label", "pareto")]
    c = st.columns([3, 1])
    dims = c[0].multiselect("Axes", numbers, default=[d for d in DEFAULT_DIMENSIONS if d in numbers],
                            key="runs_pc_dims", format_func=column_label)
    metric_options = [m for m in numbers if m not in SETTINGS and is_numeric(base, m)]
    colour = c[1].selectbox("Colour by", metric_options, index=metric_options.index("accuracy")
                            if "accuracy" in metric_options else 0, key="runs_pc_colour", format_func=column_label)
    if len(dims) < 2:
        st.info("Pick two or more axes.")
        return
    fig = parcoords_figure(base, dims, colour, constraints_for(base, ranges, categories))
    frame.chart(fig, "runs_parcoords")
    st.caption("The filters above set the brushes (pink bars) and filter the table. Dragging on an axis "
               "highlights lines in the chart only: Streamlit does not report parallel-coordinates brushes back.")


def _importance_section(shown) -> None:
    st.subheader("Which setting matters")
    metrics = [m for m in shown.columns if m not in (*SETTINGS, "key", "label", "pareto", "energy_found")
               and not m.endswith("_se") and is_numeric(shown, m)]
    c = st.columns([1, 1, 1])
    metric = c[0].selectbox("For", metrics, key="runs_imp_metric", format_func=column_label)
    method = c[1].radio("Estimator", list(IMPORTANCE_METHODS), key="runs_imp_method", horizontal=True,
                        format_func=IMPORTANCE_METHODS.get)
    # Fitting takes about a second, so the page does not pay it until asked (then once per choice).
    if not c[2].toggle("Rank the settings", key="runs_imp_on",
                       help="Fits a model of the metric on the shown runs; kept for these rows and choices."):
        return
    # The metric's values are part of the key: a run timed later keeps its key but gains a latency.
    values = shown[metric].to_numpy(float).tobytes().hex()
    result = _importance(shown, frame.listing_digest([*shown["key"].tolist(), values]), metric, method)
    if result.warning:
        st.warning(result.warning)
    if result.importances:
        frame.chart(importance_figure(result), "runs_importance")
    st.caption(f"Fitted on the {result.n_used} shown runs that carry {column_label(metric)}"
               + (f" (a seeded sample of {result.n_runs})" if result.n_used < result.n_runs else "")
               + (f"; same value for every run: {', '.join(map(column_label, result.constant))}" if result.constant
                  else "") + ". A setting a method lacks counts as its own level 'n/a' (filter to HSCC to "
               "rank HSCC's settings alone).")


def _search_section(ctx) -> None:
    with st.expander("Search with Optuna (multi-objective sampling instead of a grid)"):
        c = st.columns(4)
        use_budget = c[0].checkbox("FLOPs budget", value=True, key="runs_search_use_budget")
        budget = c[0].select_slider("Budget (x)", [2.0, 3.0, 4.0, 6.0, 8.0], value=3.0, key="runs_search_budget",
                                    disabled=not use_budget)
        trials = c[1].number_input("Trials", 1, 500, 12, key="runs_search_trials")
        seed = c[1].number_input("Seed", 0, 10_000, 0, key="runs_search_seed")
        sampler = c[2].radio("Sampler", SAMPLERS, key="runs_search_sampler", horizontal=True,
                             format_func={"tpe": "TPE", "nsga2": "NSGA-II"}.get)
        measure = c[2].checkbox("Measure speed", value=False, key="runs_search_speed",
                                help="Needed for a latency objective; each trial then also times both models.")
        axes = ["accuracy", "agreement", "macro_f1", "kl_to_original", "flops", "params", "latency"]
        default = default_objectives(budget if use_budget else None, measure)
        first = c[3].selectbox("Objective 1", axes, index=axes.index(default[0]), key="runs_search_obj1",
                               format_func=lambda a: get_axis(a).label)
        second = c[3].selectbox("Objective 2", axes, index=axes.index(default[1]), key="runs_search_obj2",
                                format_func=lambda a: get_axis(a).label)
        space = SearchSpace()
        g = st.columns(2)  # a third box in this row clipped the chips at 1280 px
        grids = g[0].multiselect("Grids G", space.grids, default=space.grids, key="runs_search_grids")
        clusters = g[1].multiselect("Clusters K", space.clusters, default=space.clusters, key="runs_search_clusters")
        multiples = st.columns(2)[0].multiselect(
            "Rank multiples", RANK_MULTIPLES, default=list(space.rank_multiples), key="runs_search_multiples",
            help="Every rank a multiple of the value (1: no constraint). On the real data 8 and 16 ran up to "
                 "11 % faster at batch 32 and cost accuracy at K = 4 (docs/performance.md, 'Rank multiples on "
                 "the real data'). Several: the search picks.")
        if st.button("Run search", key="runs_search_run", type="primary"):
            empty = [name for name, v in (("Grids G", grids), ("Clusters K", clusters), ("Rank multiples", multiples))
                     if not v]
            if empty:
                st.error(f"Search not run: pick at least one value of {', '.join(empty)}.")
                return
            try:
                config = SearchConfig(budget=budget if use_budget else None, trials=int(trials), seed=int(seed),
                                      objectives=(first, second), sampler=sampler,
                                      space=SearchSpace(grids=tuple(grids), clusters=tuple(clusters),
                                                        rank_multiples=tuple(multiples)))
                bar = st.progress(0.0, text="search: starting")
                result = run_search(ctx.ws, config, progress=lambda d, t: bar.progress(
                    d / max(t, 1), text=f"search: {d}/{t} trials"), measure_speed=measure)
            except USER_ERRORS as exc:
                st.error(f"Search not run: {plain(exc)}")
                return
            st.session_state["runs_search_result"] = (
                f"{len(result.trials)} trials: {result.computed} computed, {result.cached} from the cache, "
                f"{len(result.failed)} failed; {len(result.front)} runs on the front.")
            st.rerun()  # the table lists the new runs
        if st.session_state.get("runs_search_result"):
            st.success(st.session_state["runs_search_result"])
        st.caption("Every trial is a normal cached run; the same settings and seed again compute nothing. "
                   "From the command line: `hscc search --budget 3 --trials 30`.")


def _store_action(key: str, label: str, tip: str, verb: str, work, skipped_lead: str) -> None:
    """One button that completes stored runs without computing them again (hscc_core.runs.upgrade):
    its last outcome, the button, a progress bar while ``work(progress)`` runs, then the report's
    summary (with up to three runs it left alone and why) shown after the rerun that lists them."""
    done = st.session_state.pop(f"{key}_result", None)
    if done:
        st.success(done)
    if not label or not st.button(label, key=key, help=tip):
        return
    bar = st.progress(0.0, text=verb)
    try:
        report = work(lambda d, t: bar.progress(d / max(t, 1), text=f"{verb}: {d}/{t}"))
    except USER_ERRORS as exc:
        st.error(f"Nothing done: {plain(exc)}")
        return
    text = report.summary()
    if report.skipped:
        text += f" {skipped_lead}: " + "; ".join(f"{plain(s['label'])} ({plain(s['reason'])})"
                                                for s in report.skipped[:3])
        text += f" and {len(report.skipped) - 3} more." if len(report.skipped) > 3 else "."
    st.session_state[f"{key}_result"] = text
    st.rerun()  # the store changed (new keys, or its generation): every page lists the runs as they are now


def _upgrade_section(ctx) -> None:
    """Older runs that differ only in timing, brought up to date (``hscc runs --upgrade``)."""
    n = ctx.upgradable_runs()
    _store_action("runs_upgrade", n and f"Bring {n} older {'run' if n == 1 else 'runs'} up to date",
                  "Their accuracy and FLOPs carry over unchanged; runs that were timed are timed again against the "
                  "original, seconds each (`hscc runs --upgrade` does the same).", "upgrading older runs",
                  lambda progress: upgrade_runs(ctx.ws, progress=progress), "Left as they were")


def _timing_section(ctx, table) -> None:
    """The listed runs computed without a timing, and those timed on a busy machine, timed against the
    original (``hscc runs --time [--retime-busy]``)."""
    untimed = table.loc[table["latency_b1_ms"].isna(), "key"].tolist()
    busy = table.loc[table["others_cpu"] > BUSY_SHARE, "key"].tolist()

    def work(keys, again):
        def timed(progress):
            runs = [r for r in (ctx.ws.store.get_run(k) for k in keys) if r is not None]
            return time_runs(ctx.ws, runs, progress=progress, again_if_busy=again)
        return timed

    n, m = len(untimed), len(busy)
    _store_action("runs_time", n and f"Time {n} {'run' if n == 1 else 'runs'} without a timing",
                  "Each is timed against the original, one at a time, as a run's measure stage does: a few seconds "
                  "each (`hscc runs --time` does the same). Nothing else is computed again.", "timing runs",
                  work(untimed, False), "Not timed")
    _store_action("runs_retime", m and f"Time {m} {'run' if m == 1 else 'runs'} again: timed on a busy machine",
                  f"Other processes used more than {BUSY_SHARE:.0%} of the CPUs while "
                  f"{'it was' if m == 1 else 'they were'} timed (column \"others' CPU while timed\"). Each is "
                  "timed again against the original, a few seconds each, and keeps its earlier timing "
                  "(`hscc runs --time --retime-busy` does the same).", "timing runs again", work(busy, True),
                  "Left as they were")


def main(ctx) -> None:
    table = _table(ctx.cache_dir, ctx.original["data_fingerprint"], ctx.meta["fingerprint"],
                   tuple(ctx.original["classes"]), frame.store_digest(ctx.ws.store))
    older = ctx.older_runs_note(how="the button below")
    if table.empty:
        st.info("No compressed run yet: compute some on the Explorer page, run `hscc sweep`, or search below.")
        if older:
            st.caption(older)
        _upgrade_section(ctx)
        _search_section(ctx)
        return
    c = st.columns([1, 1, 1, 1])
    px = c[0].selectbox("Pareto x", X_AXES, key="runs_pareto_x", format_func=lambda a: get_axis(a).label)
    py = c[1].selectbox("Pareto y", Y_AXES, key="runs_pareto_y", format_func=lambda a: get_axis(a).label)
    sortable = [col for col in table.columns if col != "pareto"]
    sort_by = c[2].selectbox("Sort by", sortable, index=sortable.index("accuracy"), key="runs_sort",
                             format_func=column_label)
    descending = c[3].toggle("Descending", value=True, key="runs_sort_desc")
    table = table.assign(pareto=mark_pareto(table, px, py))
    text, ranges, categories, only_front = _filters(table)
    base_mask = search_mask(table, text) & (table["pareto"].to_numpy() if only_front else True)
    mask = filter_mask(table, ranges, categories) & base_mask
    shown = sort_table(table[mask], sort_by, descending)
    data, config = _display(shown)
    event = st.dataframe(data, key="runs_table", on_select="rerun", selection_mode="multi-row", hide_index=True,
                         # As tall as its rows up to about eleven of them (no empty rows under a few).
                         column_config=config, height=min(420, 35 * (len(data) + 1) + 3), placeholder="n/a")
    _handle_selection(ctx, shown, event)
    picked = st.session_state.get(COMPARE) or []
    st.caption(f"{len(shown)} of {len(table)} runs shown, {int(shown['pareto'].sum())} of them Pareto-optimal "
               f"({get_axis(py).label} vs {get_axis(px).label}). Select rows to select runs: the first becomes "
               f"every page's run, up to {COMPARE_MAX} go to the Compare page"
               + (f" (now {len(picked)})." if picked else ".") + (f" {older}" if older else ""))
    d = st.columns(4)
    d[0].download_button("Download CSV", data=lambda: to_csv(shown), file_name="hscc-runs.csv", mime="text/csv",
                         key="runs_csv", on_click="ignore")
    d[1].download_button("Download JSON", data=lambda: to_json(shown), file_name="hscc-runs.json",
                         mime="application/json", key="runs_json", on_click="ignore")
    _upgrade_section(ctx)
    _timing_section(ctx, table)
    _parcoords(table[base_mask], ranges, categories)
    _importance_section(shown)
    _search_section(ctx)


frame.show("runs", main)
