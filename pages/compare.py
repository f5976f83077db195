"""Compare page: 2 to 4 runs side by side (metrics with SEs, paired tests on the same test images,
per-class F1, confusion matrices, FLOPs kept per layer). The runs come from the Runs page's
selection (session key ``compare_runs``) or the picker here."""

import streamlit as st

from hscc_core.present.dashboard import kept_fraction_figure
from hscc_core.present.plots import confusion_figure, per_class_figure
from hscc_core.runs.compare import (COMPARE_MAX, COMPARE_MIN, kept_fractions, metrics_wide, pairwise_tests,
                                    run_names)
from hscc_core.present.labels import pct
from hscc_core.present.text import plain
from hscc_core.runs.config import run_name
from pages import frame
from pages.frame import load_arrays, load_run

COMPARE = frame.COMPARE  # session key shared with the Runs page
ORIGINAL = "original"  # picker entry for the original model


def _picker(ctx) -> list[str]:
    runs = sorted(ctx.runs(), key=lambda r: (r.get("method", ""), run_name(r)))
    by_key = {r["cache_key"]: r for r in runs}
    options = [ORIGINAL, *by_key]
    wanted = [k for k in st.session_state.get(COMPARE, []) if k in options][:COMPARE_MAX]
    if st.session_state.get("compare_pick") != wanted:
        st.session_state["compare_pick"] = wanted  # the Runs page (or a link) changed the selection

    def changed():
        st.session_state[COMPARE] = list(st.session_state.get("compare_pick") or [])

    st.multiselect(f"Runs to compare ({COMPARE_MIN} to {COMPARE_MAX})", options, key="compare_pick",
                   max_selections=COMPARE_MAX, on_change=changed,
                   placeholder="select rows on the Runs page, or pick runs here",
                   format_func=lambda k: "original model" if k == ORIGINAL else
                   f"{run_name(by_key[k])}  ·  accuracy {pct(by_key[k]['accuracy'])}")
    return list(st.session_state.get("compare_pick") or [])


def main(ctx) -> None:
    keys = _picker(ctx)
    if len(keys) < COMPARE_MIN:
        st.info(f"Pick {COMPARE_MIN} to {COMPARE_MAX} runs (the original model is one of the choices).")
        return
    runs = [ctx.original if k == ORIGINAL else load_run(ctx, k) for k in keys]
    runs = [r for r in runs if r is not None]
    if len(runs) < COMPARE_MIN:
        st.warning("Some of these runs are no longer in the store.")
        return
    names = run_names(runs)
    classes = ctx.classes

    st.subheader("Metrics (± bootstrap SE)")
    st.dataframe(metrics_wide(runs), key="compare_metrics")

    st.subheader("Paired tests on the same test images")
    predictions = {}
    for run in runs:
        arrays = load_arrays(ctx, run["cache_key"])
        if arrays is not None and "predictions" in arrays:
            predictions[run["cache_key"]] = arrays["predictions"]
    try:
        tests = pairwise_tests(runs, predictions, ctx.ws.images().y_test)
    except ValueError as exc:
        st.warning(f"No paired tests: {plain(exc)}")
    else:
        st.dataframe(tests, hide_index=True, key="compare_tests", column_config={
            "a": "run A", "b": "run B",
            "accuracy_a": st.column_config.NumberColumn("accuracy A", format="percent"),
            "accuracy_b": st.column_config.NumberColumn("accuracy B", format="percent"),
            "delta": st.column_config.NumberColumn("B minus A", format="percent"),
            "delta_se": st.column_config.NumberColumn("± SE", format="percent"),
            "a_only": st.column_config.NumberColumn("only A right"),
            "b_only": st.column_config.NumberColumn("only B right"),
            "p_value": st.column_config.NumberColumn("p (McNemar)", format="%.3g"),
            "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3g")})
        st.caption("McNemar's exact test on the images one run classifies correctly and the other does not; "
                   "the difference's SE is a paired bootstrap. Holm's adjustment accounts for testing every pair.")

    frame.chart(per_class_figure(dict(zip(names, runs)), "f1"), "compare_f1")

    st.subheader("Confusion matrices")
    norm = st.radio("Cells", ("counts", "row-normalised (recall per true class)"), key="compare_norm",
                    horizontal=True) != "counts"
    # Two per row: four matrices in a row are too narrow for their labels at 1440 px.
    for i, (name, run) in enumerate(zip(names, runs)):
        if i % 2 == 0:
            cols = st.columns(2, gap="medium")
        frame.chart(confusion_figure(run["confusion_matrix"], classes, norm,
                                     f"{name}<br><sup>accuracy {100 * run['accuracy']:.1f} %</sup>"),
                    f"compare_confusion_{i}", cols[i % 2])

    kept = kept_fractions(runs)
    if len(kept):
        frame.chart(kept_fraction_figure(kept.dropna(axis=1, how="all")), "compare_kept")
    else:
        st.info("None of these runs has per-layer FLOPs.")


frame.show("compare", main)
