"""Heatmaps page: what the selected run kept where, and what changed, overlaid on an MRI slice."""

import numpy as np
import streamlit as st

from hscc_core.nn.layers import compress_candidates
from hscc_core.present import explain
from hscc_core.present.heatmaps import (REGION_LABELS, cluster_figure, cluster_label_map, error_figure, image_choice,
                                        layer_summaries, region_figure)
from hscc_core.present.labels import class_label
from hscc_core.runs.config import run_name
from hscc_core.present.plots import chart_title, overlay_figure
from hscc_core.present.text import plain
from views import frame

KINDS = {label: kind for kind, label in REGION_LABELS.items()}  # widget label -> kind of region value


@st.cache_data(show_spinner=False, max_entries=64)
def image_maps(data: str, cache_dir: str, key: str, layer: str, cluster_side: str | None, index: int,
               target: int | None, cam_layer: str) -> dict:
    """Reconstruction error, cluster activations and Grad-CAM of both models for one test image."""
    ws = frame.workspace_for(data)
    model, _ = ws.baseline(train_if_missing=False)
    comp = frame.compressed_model(cache_dir, key)
    images = ws.images()
    x = images.to_tensor(images.x_test[index:index + 1])
    error, layer_in, layer_out = explain.layer_reconstruction_error(model, comp, layer, x)
    cam_o = explain.grad_cam_result(model, cam_layer, x, target)
    cam_c = explain.grad_cam_result(comp, cam_layer, x, cam_o.target)
    activation = explain.cluster_activation(cluster_side, layer_in, layer_out) if cluster_side else None
    return {"error": error, "activation": activation, "cam_original": cam_o, "cam_compressed": cam_c,
            "target": cam_o.target, "cam_layer": cam_layer}


HEIGHT = 600  # two maps side by side at 1280-1440 px: each about 560 px square


def draw_regions(run, summary, layer, kind, opacity, slice_, key):
    return frame.chart(region_figure(
        slice_, summary, KINDS[kind], opacity=opacity, height=HEIGHT,
        title=chart_title(f"{kind.capitalize()} per region · {layer}", run_name(run))), key=key)


def main(ctx: frame.Context) -> None:
    run = frame.run_picker(ctx, "heatmaps")
    if run is None:
        return
    arrays = frame.load_arrays(ctx, run["cache_key"])
    summaries = layer_summaries(run)
    if arrays is None or not summaries:
        st.warning("This run has no stored layer summary or arrays to draw.")
        return
    images = ctx.ws.images()
    classes = ctx.classes
    orig_pred = frame.load_arrays(ctx, ctx.original["cache_key"])["predictions"]
    pred = arrays["predictions"]
    c = st.columns([1, 1, 2.6])  # the test-image box names two answers: it was cut at 1280 px
    layer = c[0].selectbox("Layer", list(summaries), key="heatmaps_layer")
    true_cls = c[1].selectbox("True class", range(len(classes)), key="heatmaps_class",
                              format_func=lambda k: class_label(classes[k]))
    idx = np.flatnonzero(images.y_test == true_cls).tolist()
    if not idx:
        st.info("No test image of that class.")
        return
    index = c[2].selectbox(
        "Test image", idx, key=f"heatmaps_image_{run['cache_key']}",
        format_func=lambda i: image_choice(i, class_label(classes[orig_pred[i]]), class_label(classes[pred[i]])))
    cams = compress_candidates(ctx.ws.baseline(train_if_missing=False)[0])
    c = st.columns([2, 2, 2, 2])
    opacity = c[0].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="heatmaps_opacity")
    kind = c[1].radio("Regions coloured by", tuple(KINDS), key="heatmaps_kind", horizontal=True)
    target = c[2].selectbox("Grad-CAM for class", [None, *range(len(classes))], key="heatmaps_target",
                            format_func=lambda k: "the original's prediction" if k is None
                            else class_label(classes[k]))
    if st.session_state.get("heatmaps_cam_layer") not in cams:
        st.session_state["heatmaps_cam_layer"] = cams[-1]
    cam_layer = c[3].selectbox("Grad-CAM layer", cams[::-1], key="heatmaps_cam_layer",
                               format_func=lambda n: f"{n} (last conv)" if n == cams[-1] else n,
                               help="Grad-CAM weighs this layer's activations; the last conv layer is usual, "
                                    "earlier ones are finer and show evidence the last one pools away.")
    summary = summaries[layer]
    epochs = int(run["config"].get("finetune_epochs") or 0)
    if epochs and not st.session_state.get(f"heatmaps_ft_{run['cache_key']}"):
        st.warning(f"{run_name(run)} was fine-tuned for {epochs} epoch{'s' if epochs != 1 else ''}. Its trained "
                   "weights are not stored, so its maps need the fine-tuning again (as long as it took the first "
                   "time, and not bit-identical across machines). The region map below needs no model.")
        if st.button("Rebuild it with fine-tuning", key="heatmaps_finetune"):
            st.session_state[f"heatmaps_ft_{run['cache_key']}"] = True
            st.rerun()
        draw_regions(run, summary, layer, kind, opacity, images.x_test[index], "heatmaps_regions_only")
        return
    st.info(f"Test image #{index}, true class **{plain(class_label(classes[true_cls]))}**: the original model "
            f"predicts **{plain(class_label(classes[orig_pred[index]]))}**, the compressed model predicts "
            f"**{plain(class_label(classes[pred[index]]))}**. {frame.NOTICE}")
    maps = image_maps(frame.workspace_id(), ctx.cache_dir, run["cache_key"], layer, summary.cluster_side,
                      int(index), target, cam_layer)
    if int(maps["cam_compressed"].probabilities.argmax()) != int(pred[index]):
        st.warning("The rebuilt compressed model predicts differently from the stored run on this image "
                   "(fine-tuning is not bit-reproducible across machines).")
    draw(run, arrays, summary, layer, kind, opacity, images.x_test[index], maps, classes, cams)


def draw(run, arrays, summary, layer, kind, opacity, slice_, maps, classes, cams) -> None:
    """The five overlays, two per row: regions and clusters, output error, Grad-CAM of both models."""
    left, right = st.columns(2, gap="medium")
    with left:
        draw_regions(run, summary, layer, kind, opacity, slice_, "heatmaps_regions")
    labels = arrays.get(f"labels.{layer}")
    if labels is not None and maps["activation"] is not None:
        cmap, k = cluster_label_map(maps["activation"], labels, summary)
        frame.chart(cluster_figure(
            slice_, cmap, summary, categories=k, opacity=opacity, height=HEIGHT,
            # Short title (a half-width chart at 1280 px cut "... cluster · features"); the side goes below.
            title=chart_title(f"Dominant cluster · {layer}", f"per position: the {summary.cluster_side}-channel "
                                                             "cluster with the most activation")),
            key="heatmaps_clusters", where=right)
    else:
        right.info("Cluster maps exist for HSCC runs only (the baselines do not cluster channels).")
    left, right = st.columns(2, gap="medium")
    frame.chart(error_figure(
        slice_, maps["error"], opacity=opacity, height=HEIGHT,
        title=chart_title(f"Output error · {layer}", f"||y - y'|| / RMS ||y||, same input; "
                                                    f"mean {float(np.mean(maps['error'])):.3f}")),
        key="heatmaps_error", where=left)
    right.markdown(f"**Grad-CAM** below: where each model finds evidence for "
                   f"**{class_label(classes[maps['target']])}** "
                   f"at layer {maps['cam_layer']} (Selvaraju et al. 2017). Brighter means more positive evidence; "
                   "each map is scaled to its own maximum.")
    tgt = class_label(classes[maps["target"]])
    left, right = st.columns(2, gap="medium")
    for col, which in ((left, "original"), (right, "compressed")):
        cam = maps[f"cam_{which}"]
        with col:
            frame.chart(overlay_figure(
                slice_, cam.cam, opacity=opacity, colorscale="Inferno", zmin=0, zmax=1, colorbar_title="Grad-CAM",
                height=HEIGHT, title=chart_title(f"Grad-CAM, {which} model", f"class {tgt}, layer {cam.layer}, "
                                                 f"probability {100 * cam.probabilities[cam.target]:.0f} %")),
                key=f"heatmaps_cam_{which}")
            if cam.empty:
                earlier = explain.earlier_layers(cams, cam.layer)
                st.warning(plain(explain.empty_cam_message(tgt, cam.layer, earlier[0] if earlier else None)),
                           icon=":material/visibility_off:")
                if earlier:
                    st.button(f"Show Grad-CAM at {earlier[0]}", key=f"heatmaps_earlier_{which}",
                              on_click=st.session_state.__setitem__, args=("heatmaps_cam_layer", earlier[0]))


frame.show("heatmaps", main)
