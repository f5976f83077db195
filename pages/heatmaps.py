"""Heatmaps page: what the selected run kept where, and what changed, overlaid on an MRI slice."""

import numpy as np
import streamlit as st

from hscc_core.nn.layers import compress_candidates
from hscc_core.present import explain
from hscc_core.present.heatmaps import layer_summaries, region_value_map
from hscc_core.present.labels import class_label
from hscc_core.runs.config import run_name
from hscc_core.present.plots import overlay_figure
from hscc_core.runs.pipeline import rebuild_model
from hscc_core.runs.store import RunStore
from pages import frame

KINDS = {"rank kept": "rank", "FLOPs kept": "flops"}


@st.cache_resource(show_spinner="Rebuilding the compressed model...", max_entries=4)
def compressed(data: str, cache_dir: str, key: str):
    """The run's compressed model, rebuilt once per run (a loaded model: a resource)."""
    return rebuild_model(frame.workspace_for(data), RunStore(cache_dir).get_run(key))


@st.cache_data(show_spinner=False, max_entries=64)
def image_maps(data: str, cache_dir: str, key: str, layer: str, cluster_side: str | None, index: int,
               target: int | None) -> dict:
    """Reconstruction error, cluster activations and Grad-CAM of both models for one test image."""
    ws = frame.workspace_for(data)
    model, _ = ws.baseline(train_if_missing=False)
    comp = compressed(data, cache_dir, key)
    images = ws.images()
    x = images.to_tensor(images.x_test[index:index + 1])
    error, layer_in, layer_out = explain.layer_reconstruction_error(model, comp, layer, x)
    cam_layer = compress_candidates(model)[-1]
    cam_o, cls, probs_o = explain.grad_cam(model, cam_layer, x, target)
    cam_c, _, probs_c = explain.grad_cam(comp, cam_layer, x, cls)
    activation = explain.cluster_activation(cluster_side, layer_in, layer_out) if cluster_side else None
    return {"error": error, "activation": activation, "cam_original": cam_o, "cam_compressed": cam_c,
            "target": cls, "probs_original": probs_o, "probs_compressed": probs_c, "cam_layer": cam_layer}


def region_figure(run, summary, layer, kind, opacity, slice_, key):
    values, regions, labels = region_value_map(summary, KINDS[kind])
    return st.plotly_chart(overlay_figure(
        slice_, values, opacity=opacity, zmin=0, zmax=1, regions=regions, region_text=labels, colorbar_title=kind,
        title=f"{kind.capitalize()} · {layer}<br><sup>per region; {run_name(run)}</sup>"), key=key, theme=None)


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
    c = st.columns([1, 1, 2])
    layer = c[0].selectbox("Layer", list(summaries), key="heatmaps_layer")
    true_cls = c[1].selectbox("True class", range(len(classes)), key="heatmaps_class",
                              format_func=lambda k: class_label(classes[k]))
    idx = np.flatnonzero(images.y_test == true_cls).tolist()
    if not idx:
        st.info("No test image of that class.")
        return
    index = c[2].selectbox(
        "Test image", idx, key=f"heatmaps_image_{run['cache_key']}",
        format_func=lambda i: f"#{i}: original says {class_label(classes[orig_pred[i]])}, "
                              f"compressed says {class_label(classes[pred[i]])}")
    c = st.columns([2, 2, 2])
    opacity = c[0].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="heatmaps_opacity")
    kind = c[1].radio("Regions coloured by", tuple(KINDS), key="heatmaps_kind", horizontal=True)
    target = c[2].selectbox("Grad-CAM for class", [None, *range(len(classes))], key="heatmaps_target",
                            format_func=lambda k: "the original's prediction" if k is None
                            else class_label(classes[k]))
    summary = summaries[layer]
    epochs = int(run["config"].get("finetune_epochs") or 0)
    if epochs and not st.session_state.get(f"heatmaps_ft_{run['cache_key']}"):
        st.warning(f"{run_name(run)} was fine-tuned for {epochs} epoch(s). Its trained weights are not stored, so "
                   "its maps need the fine-tuning again (as long as it took the first time, and not bit-identical "
                   "across machines). The region map below needs no model.")
        if st.button("Rebuild it with fine-tuning", key="heatmaps_finetune"):
            st.session_state[f"heatmaps_ft_{run['cache_key']}"] = True
            st.rerun()
        region_figure(run, summary, layer, kind, opacity, images.x_test[index], "heatmaps_regions_only")
        return
    st.info(f"Test image #{index}, true class **{class_label(classes[true_cls])}**: the original model predicts "
            f"**{class_label(classes[orig_pred[index]])}**, the compressed model predicts "
            f"**{class_label(classes[pred[index]])}**. {frame.NOTICE}")
    maps = image_maps(frame.workspace_id(), ctx.cache_dir, run["cache_key"], layer, summary.cluster_side,
                      int(index), target)
    if int(maps["probs_compressed"].argmax()) != int(pred[index]):
        st.warning("The rebuilt compressed model predicts differently from the stored run on this image "
                   "(fine-tuning is not bit-reproducible across machines).")
    draw(run, arrays, summary, layer, kind, opacity, images.x_test[index], maps, classes)


def draw(run, arrays, summary, layer, kind, opacity, slice_, maps, classes) -> None:
    """The five overlays: regions, clusters, output error, and Grad-CAM of both models."""
    left, middle, right = st.columns(3)
    with left:
        region_figure(run, summary, layer, kind, opacity, slice_, "heatmaps_regions")
    labels = arrays.get(f"labels.{layer}")
    if labels is not None and maps["activation"] is not None:
        regions = [r.bounds for r in summary.regions]
        cmap = explain.cluster_map(maps["activation"], labels, regions).astype(float)
        cmap[cmap < 0] = np.nan
        k = int(np.nanmax(cmap)) + 1 if np.isfinite(cmap).any() else 1
        middle.plotly_chart(overlay_figure(
            slice_, cmap, opacity=opacity, categories=k, regions=regions, colorbar_title="cluster",
            title=f"Dominant {summary.cluster_side}-channel cluster · {layer}<br><sup>per position; "
                  "ids are per region</sup>"), key="heatmaps_clusters", theme=None)
    else:
        middle.info("Cluster maps exist for HSCC runs only (the baselines do not cluster channels).")
    right.plotly_chart(overlay_figure(
        slice_, maps["error"], opacity=opacity, colorscale="Inferno", zmin=0, colorbar_title="error",
        title=f"Output error · {layer}<br><sup>||y - y'|| / RMS ||y||, same input; "
              f"mean {float(np.mean(maps['error'])):.3f}</sup>"), key="heatmaps_error", theme=None)
    tgt = class_label(classes[maps["target"]])
    left, right = st.columns(2)
    for col, which, title in ((left, "original", "original"), (right, "compressed", "compressed")):
        col.plotly_chart(overlay_figure(
            slice_, maps[f"cam_{which}"], opacity=opacity, colorscale="Inferno", zmin=0, zmax=1,
            colorbar_title="Grad-CAM",
            title=f"Grad-CAM, {title} · class {tgt}<br><sup>layer {maps['cam_layer']}, "
                  f"p = {maps[f'probs_{which}'][maps['target']]:.2f}</sup>"), key=f"heatmaps_cam_{which}", theme=None)


frame.show("heatmaps", main)
