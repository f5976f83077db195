"""Compare page: 2 to 4 runs side by side (metrics with SEs, paired tests on the same test images,
per-class F1, confusion matrices, FLOPs kept per layer, and their heatmaps on one MRI slice with one
colour scale). The runs come from the Runs page's selection (session key ``compare_runs``) or the
picker here."""

from collections import Counter

import numpy as np
import streamlit as st

from hscc_core.present import explain
from hscc_core.present.dashboard import kept_fraction_figure
from hscc_core.present.heatmaps import (SLICE_MAPS, cluster_figure, cluster_label_map, error_figure, layer_summary,
                                        region_figure, slice_map_note)
from hscc_core.present.plots import chart_title, confusion_figure, per_class_figure
from hscc_core.runs.compare import (COMPARE_MAX, COMPARE_MIN, compressed_layers, kept_fractions, metrics_wide,
                                    pairwise_tests, run_names)
from hscc_core.present.labels import class_label, p_text, pct, speed_text
from hscc_core.present.text import plain
from hscc_core.runs.config import run_name
from views import frame
from views.frame import load_arrays, load_run

COMPARE = frame.COMPARE  # session key shared with the Runs page
ORIGINAL = "original"  # picker entry for the original model


def _picker(ctx) -> list[str]:
    runs = sorted(ctx.run_summaries(), key=lambda r: (r.get("method", ""), run_name(r)))
    by_key = {r["cache_key"]: r for r in runs}
    options = [ORIGINAL, *by_key]
    if COMPARE not in st.session_state and st.session_state.get(frame.SELECTED) in by_key:
        # A first visit with a run selected on another page compares it with the original at once.
        st.session_state[COMPARE] = [st.session_state[frame.SELECTED], ORIGINAL]
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
    # Tables name the runs #1..#4: four full names side by side are wider than the page, and a
    # table that scrolls sideways hides its last columns (the p-values).
    tags = {name: f"#{i + 1}" for i, name in enumerate(names)}
    classes = ctx.classes

    st.markdown("  \n".join(f"**{tags[name]}** {plain(name)}" for name in names))
    st.subheader("Metrics (± bootstrap SE)")
    # Speed and p-values in the words of the other pages.
    metrics = metrics_wide(runs, speed_format=speed_text, p_format=lambda p: p_text(p, bare=True)).rename(columns=tags)
    st.dataframe(metrics, key="compare_metrics", height=35 * (len(metrics) + 1) + 3,  # every row, no scrolling
                 column_config={tag: st.column_config.TextColumn(tag, help=name) for name, tag in tags.items()})

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
        # Accuracies in %, their difference in percentage points (a relative "-20%" would mislead).
        shown = tests.replace({"a": tags, "b": tags})
        shown = shown.assign(**{c: shown[c] * 100 for c in ("accuracy_a", "accuracy_b", "delta", "delta_se")},
                             **{c: shown[c].map(lambda p: p_text(p, bare=True)) for c in ("p_value", "p_holm")})
        st.dataframe(shown, hide_index=True, key="compare_tests", column_config={
            "a": "run A", "b": "run B",
            "accuracy_a": st.column_config.NumberColumn("accuracy A", format="%.1f %%"),
            "accuracy_b": st.column_config.NumberColumn("accuracy B", format="%.1f %%"),
            "delta": st.column_config.NumberColumn("B minus A", format="%+.1f pts"),
            "delta_se": st.column_config.NumberColumn("± SE", format="%.1f pts"),
            "a_only": st.column_config.NumberColumn("only A right"),
            "b_only": st.column_config.NumberColumn("only B right"),
            "p_value": st.column_config.TextColumn("p (McNemar)"),
            "p_holm": st.column_config.TextColumn("p (Holm)")})
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
                                     chart_title(f"{tags[name]} · accuracy {100 * run['accuracy']:.1f} %", name)),
                    f"compare_confusion_{i}", cols[i % 2])

    kept = kept_fractions(runs)
    if len(kept):
        kept = kept.dropna(axis=1, how="all")
        method_of = {name: run.get("method", "hscc") for name, run in zip(names, runs)}
        frame.chart(kept_fraction_figure(kept, methods=[method_of.get(c, "?") for c in kept.columns]),
                    "compare_kept")
    else:
        st.info("None of these runs has per-layer FLOPs.")
    heatmaps(ctx, runs, names, tags, predictions)


HEIGHT = 560  # two maps per row at 1280-1440 px


@st.cache_data(show_spinner=False, max_entries=64)
def _activation(data: str, model_fp: str, layer: str, side: str, index: int) -> np.ndarray:
    # What the cluster map weighs: the original model's activations at the layer (the same for every
    # run of one cluster side), so no compressed model is needed. ``model_fp`` keys the cache.
    ws = frame.workspace_for(data)
    images = ws.images()
    inp, out = explain.layer_io(ws.baseline(train_if_missing=False)[0], layer,
                                images.to_tensor(images.x_test[index:index + 1]))
    return explain.cluster_activation(side, inp[0], out[0])


@st.cache_data(show_spinner=False, max_entries=64)
def _error(data: str, cache_dir: str, key: str, layer: str, index: int) -> np.ndarray:
    # The compressed layer's relative output error, given the original's input to it.
    ws = frame.workspace_for(data)
    images = ws.images()
    return explain.layer_reconstruction_error(ws.baseline(train_if_missing=False)[0],
                                              frame.compressed_model(cache_dir, key), layer,
                                              images.to_tensor(images.x_test[index:index + 1]))[0]


def _image_picker(ctx, runs, predictions, slot) -> int | None:
    """True class and test image, as on the Heatmaps page; the image list says what each model predicts."""
    classes = ctx.classes
    y_test = ctx.ws.images().y_test
    true_cls = slot[0].selectbox("True class", range(len(classes)), key="compare_hm_class",
                                 format_func=lambda k: class_label(classes[k]))
    idx = np.flatnonzero(y_test == true_cls).tolist()
    if not idx:
        st.info("No test image of that class.")
        return None
    original = (load_arrays(ctx, ctx.original["cache_key"]) or {}).get("predictions")
    compared = [predictions[r["cache_key"]] for r in runs
                if r["method"] != "original" and r["cache_key"] in predictions]

    def describe(i):
        said = Counter(class_label(classes[p[i]]) for p in compared)
        runs_say = ", ".join(name if n == 1 else f"{name} ({n})" for name, n in said.most_common())
        head = f"#{i}: original says {class_label(classes[original[i]])}" if original is not None else f"#{i}"
        return head + (f"; runs say {runs_say}" if runs_say else "")

    # The labels count the compared runs' answers. With one key for every set of runs, the box kept
    # showing the label of the runs before (Streamlit re-labels a kept value only on the next rerun):
    # the key names the runs, and the image chosen follows from one set of runs to the next.
    runs_key = "-".join(str(r["cache_key"])[:8] for r in runs)
    last = st.session_state.get("compare_hm_image_last")
    chosen = slot[1].selectbox("Test image", idx, index=idx.index(last) if last in idx else 0,
                               key=f"compare_hm_image_{true_cls}_{runs_key}", format_func=describe)
    st.session_state["compare_hm_image_last"] = chosen
    return chosen


def heatmaps(ctx, runs, names, tags, predictions) -> None:
    """The runs' maps of one layer on one test image, side by side, with one colour scale per kind of map."""
    st.subheader("Heatmaps on the same slice")
    layers = compressed_layers(runs)
    if not layers:
        st.info("None of these runs compressed a layer (the original model has no maps).")
        return
    c = st.columns([1, 1, 2.4])
    layer = c[0].selectbox("Layer", layers, key="compare_hm_layer")
    index = _image_picker(ctx, runs, predictions, c[1:])
    if index is None:
        return
    c = st.columns([3, 1])
    kind = c[0].radio("Map", tuple(SLICE_MAPS), key="compare_hm_map", horizontal=True, format_func=SLICE_MAPS.get)
    opacity = c[1].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="compare_hm_opacity")
    slice_ = ctx.ws.images().x_test[index]
    panels = {}  # run name -> a map, or the note saying why it has none
    for name, run in zip(names, runs):
        arrays = load_arrays(ctx, run["cache_key"]) or {}
        note = slice_map_note(run, layer, kind, labels_stored=f"labels.{layer}" in arrays)
        if note is not None:
            panels[name] = note
            continue
        summary = layer_summary(run, layer)
        if kind == "clusters":
            activation = _activation(frame.workspace_id(), ctx.meta["fingerprint"], layer, summary.cluster_side,
                                     int(index))
            panels[name] = (summary, *cluster_label_map(activation, arrays[f"labels.{layer}"], summary))
        elif kind == "error":
            with st.spinner(f"Output error of {name}..."):
                panels[name] = (summary, _error(frame.workspace_id(), ctx.cache_dir, run["cache_key"], layer,
                                                int(index)))
        else:
            panels[name] = (summary,)
    drawn = [p for p in panels.values() if not isinstance(p, str)]
    # One scale for every map: clusters share the largest id count, errors the largest error.
    categories = max((p[2] for p in drawn), default=1) if kind == "clusters" else None
    zmax = max((float(np.nanmax(p[1])) for p in drawn), default=1.0) if kind == "error" else None
    for i, (name, panel) in enumerate(panels.items()):
        if i % 2 == 0:
            cols = st.columns(2, gap="medium")
        if isinstance(panel, str):
            cols[i % 2].info(f"**{tags[name]}** {plain(name)} · {layer}: {panel}")
            continue
        summary, sub = panel[0], name
        if kind == "error":
            sub += f" · mean {float(np.mean(panel[1])):.3f}"
        title = chart_title(f"{tags[name]} · {SLICE_MAPS[kind]} · {layer}", sub)
        if kind == "clusters":
            fig = cluster_figure(slice_, panel[1], summary, categories=categories, opacity=opacity, title=title,
                                 height=HEIGHT)
        elif kind == "error":
            fig = error_figure(slice_, panel[1], zmax=zmax, opacity=opacity, title=title, height=HEIGHT)
        else:
            fig = region_figure(slice_, summary, kind, opacity=opacity, title=title, height=HEIGHT)
        frame.chart(fig, f"compare_map_{i}", cols[i % 2])
    st.caption(f"Every map is drawn on the same test image (#{index}) with one colour scale: rank and FLOPs kept "
               "from 0 to 1, cluster ids with the same colours, output errors from 0 to the largest of them. Cluster "
               "ids are numbered per region: colours compare the layout of clusters, not which channels they hold.")


frame.show("compare", main)
