"""What a run kept where: the per-region data of the Heatmaps page and of ``hscc heatmap``.

Every method describes each compressed layer with a typed
:class:`hscc_core.compress.summary.LayerSummary` (HSCC with either cluster side: one entry per region
of its grid; Global SVD and Tucker-2: one region covering the map). :func:`heatmap_data` is the one
source of what the page draws and the command prints; :func:`region_value_map` paints one value per
region onto the layer's output grid. The overlay figures of the Heatmaps and Compare pages (region
values, dominant clusters, output error, each over an MRI slice) are built here too, so both pages
draw the same thing and the Compare page can give several runs one colour scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from hscc_core.compress.summary import LayerSummary
from hscc_core.present.explain import cluster_map
from hscc_core.present.plots import overlay_figure

__all__ = ["KINDS_OF_VALUE", "REGION_LABELS", "SLICE_MAPS", "cluster_figure", "cluster_label_map", "error_figure",
           "heatmap_data", "image_choice", "layer_order", "layer_summaries", "layer_summary", "region_figure",
           "region_value_map", "region_values", "slice_map_note"]

# What a region map can show: the directions kept over the original's, or the MACs kept.
KINDS_OF_VALUE = ("rank", "flops")
#: A short label of each kind of region value, for widgets and colour bars.
REGION_LABELS = {"rank": "rank kept", "flops": "FLOPs kept"}


def layer_order(name: str) -> tuple:
    """Sort key putting layer names in forward order: numbers compare as numbers (``features.3`` before
    ``features.10``; a stored run's JSON has its keys in text order)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def layer_summaries(run: Mapping[str, Any]) -> dict[str, LayerSummary]:
    """The typed summaries of every compressed layer of a stored run, in forward order."""
    layers = run.get("layers") or {}
    return {name: LayerSummary.from_json(layers[name]) for name in sorted(layers, key=layer_order)}


def layer_summary(run: Mapping[str, Any], layer: str) -> LayerSummary:
    """The typed summary of one layer of a stored run.

    Raises
    ------
    ValueError
        When the run has no such compressed layer (naming the ones it has).
    """
    layers = run.get("layers") or {}
    if layer not in layers:
        raise ValueError(f"the run has no compressed layer {layer!r} (it has: {', '.join(layers) or 'none'})")
    return LayerSummary.from_json(layers[layer])


def region_values(summary: LayerSummary, kind: str = "rank") -> tuple[np.ndarray, list[str]]:
    """One value in [0, 1] and one short label per region of a layer.

    Parameters
    ----------
    summary : LayerSummary
    kind : {"rank", "flops"}
        ``rank``: directions kept over the original's directions in that region; ``flops``: MACs
        computed there over the original's MACs there.

    Returns
    -------
    (values, labels)
        Labels such as ``"12/64"`` (rank) or ``"41%"`` (flops).
    """
    if kind not in KINDS_OF_VALUE:
        raise ValueError(f"kind must be 'rank' or 'flops', got {kind!r}")
    if kind == "rank":
        return (np.array([r.rank_fraction for r in summary.regions], dtype=np.float64),
                [summary.region_text(r) for r in summary.regions])
    values = np.array([r.kept_fraction for r in summary.regions], dtype=np.float64)
    return values, [f"{100 * v:.0f}%" for v in values]


def region_value_map(summary: LayerSummary, kind: str = "rank"
                     ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[str]]:
    """:func:`region_values` painted on the layer's output grid.

    Returns
    -------
    (map, regions, labels)
        ``map`` (H_out, W_out) float; ``regions`` as (h0, h1, w0, w1) on that grid; ``labels`` one
        per region.
    """
    values, labels = region_values(summary, kind)
    oh, ow = summary.out_hw
    regions = [tuple(r.bounds) for r in summary.regions]
    out = np.full((oh, ow), np.nan)
    for (h0, h1, w0, w1), v in zip(regions, values):
        out[h0:h1, w0:w1] = v
    return out, regions, labels


def heatmap_data(run: Mapping[str, Any], layer: str, arrays: Mapping[str, np.ndarray] | None = None) -> dict:
    """What the Heatmaps page draws for one layer of a run (``hscc heatmap --json`` prints it).

    Parameters
    ----------
    run : dict
        A stored run.
    layer : str
        One of its compressed layers.
    arrays : dict, optional
        The run's stored arrays (``RunStore.get_arrays``): ``labels.<layer>`` gives the cluster map.

    Returns
    -------
    dict
        ``{"run", "layer", "kind", "cluster_side", "regions": [{"row", "col", "bounds", "rank_kept",
        "rank_dense", "macs", "macs_dense"}, ...], "macs", "macs_dense", "kept_fraction", "labels"}``:
        ``macs`` is what the compressed layer computes in that region, ``macs_dense`` what the
        original computes there (batch 1; the regions' ``macs`` add up to ``layer_flops[layer] / 2``);
        ``labels`` is the cluster label map (regions x clustered channels, -1 for channels left out)
        or None for the baselines, which do not cluster.
    """
    s = layer_summary(run, layer)
    labels = None
    if arrays is not None and f"labels.{layer}" in arrays:
        labels = np.asarray(arrays[f"labels.{layer}"]).tolist()
    return {"run": run.get("cache_key"), "layer": layer, "kind": s.kind, "cluster_side": s.cluster_side,
            "regions": [{"row": r.row, "col": r.col, "bounds": list(r.bounds), "rank_kept": r.rank_kept,
                         "rank_dense": r.rank_dense, "macs": r.macs, "macs_dense": r.macs_dense}
                        for r in s.regions],
            "macs": s.macs, "macs_dense": s.original_macs, "kept_fraction": s.kept_fraction, "labels": labels}


# --------------------------------------------------------------------------------------------
# Overlay figures (one colour scale per kind, so several runs' maps compare directly)


def region_figure(image: np.ndarray, summary: LayerSummary, kind: str = "rank", *, opacity: float = 0.5,
                  title: str = "", height: int = 600) -> go.Figure:
    """The region values of one layer (:func:`region_value_map`) over an MRI slice, on the fixed scale 0-1.

    Every region is outlined and labelled (``12/64`` or ``41%``); the baselines' one region covers the map.
    """
    values, regions, labels = region_value_map(summary, kind)
    return overlay_figure(image, values, opacity=opacity, zmin=0, zmax=1, regions=regions, region_text=labels,
                          colorbar_title=f"{REGION_LABELS[kind]} (share of the original)", height=height, title=title)


def cluster_label_map(activation: np.ndarray, labels: np.ndarray, summary: LayerSummary) -> tuple[np.ndarray, int]:
    """The dominant cluster per position (:func:`hscc_core.present.explain.cluster_map`) as floats, NaN where
    no cluster is active, and the number of cluster ids it uses (at least 1)."""
    cmap = cluster_map(activation, labels, [r.bounds for r in summary.regions]).astype(float)
    cmap[cmap < 0] = np.nan
    return cmap, int(np.nanmax(cmap)) + 1 if np.isfinite(cmap).any() else 1


def cluster_figure(image: np.ndarray, cmap: np.ndarray, summary: LayerSummary, *, categories: int,
                   opacity: float = 0.5, title: str = "", height: int = 600) -> go.Figure:
    """A cluster map of :func:`cluster_label_map` over an MRI slice, regions outlined.

    ``categories`` sets the stepped colour scale (ids ``0..categories-1``): give several runs the
    largest of their counts and the same id has the same colour in each.
    """
    return overlay_figure(image, cmap, opacity=opacity, categories=max(int(categories), 1),
                          regions=[r.bounds for r in summary.regions], colorbar_title="cluster (ids per region)",
                          height=height, title=title)


def error_figure(image: np.ndarray, error: np.ndarray, *, zmax: float | None = None, opacity: float = 0.5,
                 title: str = "", height: int = 600) -> go.Figure:
    """A layer's relative output error map (:func:`hscc_core.present.explain.relative_error_map`) over an
    MRI slice, from 0 to ``zmax`` (default: the map's own maximum; give several runs one ``zmax``)."""
    if zmax is None:
        # Plotly keeps its own colour range unless both ends are given: with zmin alone the scale started
        # at the map's smallest error (0.25 on a Tucker-2 layer), and a large error read as none.
        finite = np.asarray(error, dtype=float)
        finite = finite[np.isfinite(finite)]
        zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return overlay_figure(image, error, opacity=opacity, colorscale="Inferno", zmin=0, zmax=zmax,
                          colorbar_title="relative error", height=height, title=title)


#: The maps the Compare page draws for each run on one slice: kind -> widget label.
SLICE_MAPS = {"rank": "rank kept per region", "flops": "FLOPs kept per region", "clusters": "dominant cluster",
              "error": "output error"}


def slice_map_note(run: Mapping[str, Any], layer: str, kind: str, labels_stored: bool = True) -> str | None:
    """Why a run has no ``kind`` map (:data:`SLICE_MAPS`) of ``layer``, in one short sentence; None when it has one.

    The original model compressed nothing; a run may not have compressed that layer; only HSCC
    clusters channels (and needs its stored labels); the output error needs the compressed model,
    which a fine-tuned run only gets back by fine-tuning again (the Heatmaps page offers that).
    """
    if kind not in SLICE_MAPS:
        raise ValueError(f"kind must be one of {', '.join(SLICE_MAPS)}, got {kind!r}")
    if run.get("method") == "original":
        return "The original model: nothing is compressed, so there is no map."
    if layer not in (run.get("layers") or {}):
        return f"This run did not compress {layer}."
    if kind == "clusters" and run.get("method") != "hscc":
        return "No cluster map: this method does not cluster channels (HSCC does)."
    if kind == "clusters" and not labels_stored:
        return "No cluster map: the run's cluster labels are not stored."
    if kind == "error" and int((run.get("config") or {}).get("finetune_epochs") or 0):
        return ("Fine-tuned: its trained weights are not stored, so its output error needs the fine-tuning again "
                "(the Heatmaps page offers it).")
    return None


def image_choice(index: int, original: str, compressed: str) -> str:
    """A test image's entry in the Heatmaps page's image box: its number and both models' answers.

    Parameters
    ----------
    index : int
        The image's index in the test split.
    original, compressed : str
        The class each model predicts, as a reader writes it (``class_label``).

    Returns
    -------
    str
        ``"#3 · both say glioma tumor"``, or ``"#7 · original: glioma tumor, compressed: no tumor"``
        where they differ; short enough for the box at 1280 px (the longer wording was cut).
    """
    if original == compressed:
        return f"#{index} · both say {original}"
    return f"#{index} · original: {original}, compressed: {compressed}"
