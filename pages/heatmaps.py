"""Heatmaps page: what the selected run kept where, and what changed, overlaid on an MRI slice."""

import numpy as np
import streamlit as st

from hscc_core.present import heatmaps
from hscc_core.compress.calibration import compress_candidates
from hscc_core.present.plots import class_label, overlay_figure
from hscc_core.runs.store import RunStore
from pages.common import (NOTICE, load_arrays, page_context, run_picker, show_selection, sidebar,
                          workspace_for, workspace_id)


@st.cache_resource(show_spinner="Rebuilding the compressed model...", max_entries=4)
def compressed(data: str, cache_dir: str, key: str):
    """The run's compressed model, rebuilt once per run (a loaded model: a resource)."""
    return heatmaps.compressed_model(workspace_for(data), RunStore(cache_dir).get_run(key))


@st.cache_data(show_spinner=False, max_entries=64)
def image_maps(data: str, cache_dir: str, key: str, layer: str, index: int, target: int | None) -> dict:
    """Reconstruction error, layer output and Grad-CAM of both models for one test image."""
    ws = workspace_for(data)
    model, _ = ws.baseline(train_if_missing=False)
    comp = compressed(data, cache_dir, key)
    images = ws.images()
    x = images.to_tensor(images.x_test[index:index + 1])
    error, output = heatmaps.layer_reconstruction_error(model, comp, layer, x)
    cam_layer = compress_candidates(model)[-1]
    cam_o, cls, probs_o = heatmaps.grad_cam(model, cam_layer, x, target)
    cam_c, _, probs_c = heatmaps.grad_cam(comp, cam_layer, x, cls)
    return {"error": error, "output": output, "cam_original": cam_o, "cam_compressed": cam_c, "target": cls,
            "probs_original": probs_o, "probs_compressed": probs_c, "cam_layer": cam_layer}


def main(ctx) -> None:
    run = run_picker(ctx, "heatmaps")
    if run is None:
        return
    arrays = load_arrays(ctx, run["cache_key"])
    layers = list(run.get("layers") or {})
    if arrays is None or not layers:
        st.warning("This run has no stored layer summary or arrays to draw.")
        return
    images = ctx.ws.images()
    classes = list(images.classes)
    orig_pred = load_arrays(ctx, ctx.original["cache_key"])["predictions"]
    pred = arrays["predictions"]
    c = st.columns([1, 1, 2])
    layer = c[0].selectbox("Layer", layers, key="heatmaps_layer")
    true_cls = c[1].selectbox("True class", range(len(classes)), key="heatmaps_class",
                              format_func=lambda k: class_label(classes[k]))
    idx = np.flatnonzero(images.y_test == true_cls).tolist()
    if not idx:
        st.info("No test image of that class.")
        return
    index = c[2].selectbox(
        "Test image", idx, key="heatmaps_image",
        format_func=lambda i: f"#{i}: original says {class_label(classes[orig_pred[i]])}, "
                              f"compressed says {class_label(classes[pred[i]])}")
    c = st.columns([2, 2, 2])
    opacity = c[0].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="heatmaps_opacity")
    kind = c[1].radio("Regions coloured by", ("rank kept", "FLOPs kept"), key="heatmaps_kind", horizontal=True)
    target = c[2].selectbox("Grad-CAM for class", [None, *range(len(classes))], key="heatmaps_target",
                            format_func=lambda k: "the original's prediction" if k is None
                            else class_label(classes[k]))
    epochs = int(run["config"].get("finetune_epochs") or 0)
    if epochs and not st.session_state.get(f"heatmaps_ft_{run['cache_key']}"):
        st.warning(f"{run['label']} was fine-tuned for {epochs} epoch(s). Its trained weights are not stored, so "
                   "its maps need the fine-tuning again (as long as it took the first time, and not bit-identical "
                   "across machines). The region map below needs no model.")
        if st.button("Rebuild it with fine-tuning", key="heatmaps_finetune"):
            st.session_state[f"heatmaps_ft_{run['cache_key']}"] = True
            st.rerun()
        values, regions, labels = heatmaps.region_value_map(run["layers"][layer],
                                                            "rank" if kind == "rank kept" else "flops")
        st.plotly_chart(overlay_figure(images.x_test[index], values, opacity=opacity, zmin=0, zmax=1,
                                       regions=regions, region_text=labels, colorbar_title=kind,
                                       title=f"{kind.capitalize()} · {layer}<br><sup>{run['label']}</sup>"),
                        key="heatmaps_regions_only", theme=None)
        return
    st.info(f"Test image #{index}, true class **{class_label(classes[true_cls])}**: the original model predicts "
            f"**{class_label(classes[orig_pred[index]])}**, {run['label']} predicts "
            f"**{class_label(classes[pred[index]])}**. {NOTICE}")
    try:
        maps = image_maps(workspace_id(), ctx.cache_dir, run["cache_key"], layer, int(index), target)
    except Exception as exc:  # noqa: BLE001 - shown on the page; nothing is stored
        st.error(f"Could not compute the maps: {exc}")
        return
    if int(maps["probs_compressed"].argmax()) != int(pred[index]):
        st.warning("The rebuilt compressed model predicts differently from the stored run on this image "
                   "(fine-tuning is not bit-reproducible across machines).")
    try:
        draw(run, arrays, layer, kind, opacity, images.x_test[index], maps, classes)
    except (ValueError, KeyError, IndexError) as exc:
        st.error(f"Could not draw the maps of this run: {exc}")


def draw(run, arrays, layer, kind, opacity, slice_, maps, classes) -> None:
    """The five overlays: regions, clusters, output error, and Grad-CAM of both models."""
    summary = run["layers"][layer]
    values, regions, labels = heatmaps.region_value_map(summary, "rank" if kind == "rank kept" else "flops")
    left, middle, right = st.columns(3)
    left.plotly_chart(overlay_figure(
        slice_, values, opacity=opacity, zmin=0, zmax=1, regions=regions, region_text=labels,
        colorbar_title="rank kept" if kind == "rank kept" else "FLOPs kept",
        title=f"{kind.capitalize()} · {layer}<br><sup>per region; {run['label']}</sup>"),
        key="heatmaps_regions", theme=None)
    label_key = f"labels.{layer}"
    if label_key in arrays:
        cmap = heatmaps.cluster_map(maps["output"], arrays[label_key], regions).astype(float)
        cmap[cmap < 0] = np.nan
        k = int(np.nanmax(cmap)) + 1 if np.isfinite(cmap).any() else 1
        middle.plotly_chart(overlay_figure(
            slice_, cmap, opacity=opacity, categories=k, regions=regions, colorbar_title="cluster",
            title=f"Dominant cluster · {layer}<br><sup>per position; ids are per region</sup>"),
            key="heatmaps_clusters", theme=None)
    else:
        middle.info("Cluster maps exist for HSCC runs only (the baselines do not cluster channels).")
    right.plotly_chart(overlay_figure(
        slice_, maps["error"], opacity=opacity, colorscale="Inferno", zmin=0,
        colorbar_title="error",
        title=f"Output error · {layer}<br><sup>||y - y'|| / RMS ||y||, same input; "
              f"mean {float(np.mean(maps['error'])):.3f}</sup>"), key="heatmaps_error", theme=None)
    tgt = class_label(classes[maps["target"]])
    left, right = st.columns(2)
    left.plotly_chart(overlay_figure(
        slice_, maps["cam_original"], opacity=opacity, colorscale="Inferno", zmin=0, zmax=1, colorbar_title="Grad-CAM",
        title=f"Grad-CAM, original · class {tgt}<br><sup>layer {maps['cam_layer']}, "
              f"p = {maps['probs_original'][maps['target']]:.2f}</sup>"), key="heatmaps_cam_original", theme=None)
    right.plotly_chart(overlay_figure(
        slice_, maps["cam_compressed"], opacity=opacity, colorscale="Inferno", zmin=0, zmax=1,
        colorbar_title="Grad-CAM",
        title=f"Grad-CAM, {run['label']} · class {tgt}<br><sup>layer {maps['cam_layer']}, "
              f"p = {maps['probs_compressed'][maps['target']]:.2f}</sup>"), key="heatmaps_cam_compressed", theme=None)


sidebar_slot = sidebar()
st.title("Heatmaps")
context = page_context()
if context is not None:
    main(context)
show_selection(sidebar_slot, context)
st.caption(NOTICE)
