"""Explanations and spatial maps of a compression run: what was kept where, and what changed.

Pure tensor/numpy functions (plus :func:`compressed_model`, which rebuilds a stored run's model
through the pipeline) behind the app's heatmaps page:

* :func:`region_value_map`: per HSCC region, the rank kept (as a share of the layer's output
  channels) or the MACs kept (share of the region's original MACs), painted on the layer's map;
* :func:`cluster_map`: per output position, the channel cluster of its region that carries the most
  activation (sum of the post-ReLU outputs of the cluster's channels);
* :func:`relative_error_map`: per position, the error of the compressed layer's output against the
  original's, both computed from the *same* input (the original model's input to that layer), as
  ``||y_p - y'_p||_2 / sqrt(mean_p ||y_p||_2^2)``, so one number reads "error relative to the
  layer's typical output norm" and positions with near-zero output do not blow up;
* :func:`grad_cam`: Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep
  Networks via Gradient-based Localization", ICCV): ReLU of the activation maps of a layer weighted
  by the spatial mean of the class score's gradient, upsampled to the input and scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "cluster_map",
    "compressed_model",
    "grad_cam",
    "layer_io",
    "layer_reconstruction_error",
    "region_value_map",
    "region_values",
    "relative_error_map",
]


# --------------------------------------------------------------------------------------------
# What was kept, per region (from the run's JSON layer summary)


def _block_macs(rank: int, size: int, fan_in: int) -> int:
    # DESIGN 3.4/3.6: a block keeps k (I kh kw + |c|) MACs per position, or stays dense when that is
    # not cheaper; rank 0 costs nothing.
    if rank <= 0:
        return 0
    return min(rank * (fan_in + size), size * fan_in)


def region_values(layer: Mapping[str, Any], kind: str = "rank") -> tuple[np.ndarray, list[str]]:
    """One value and one label per region of a layer's summary (``run["layers"][name]``).

    Parameters
    ----------
    layer : dict
        HSCC summaries have ``regions``, ``ranks``, ``cluster_sizes``, ``rank0_channels``,
        ``out_hw`` and ``original_macs``; baseline summaries (one region: the whole map) have
        ``rank``/``full_rank`` (Global SVD) or ``rank_out``/``rank_in`` (Tucker-2), ``macs`` and
        ``original_macs``.
    kind : {"rank", "flops"}
        ``rank``: directions kept over output channels (summed over the region's clusters);
        ``flops``: MACs kept over the region's original MACs.

    Returns
    -------
    (values, labels)
        ``values`` (R,) in [0, 1] for HSCC (dense blocks count their full cost); ``labels`` short
        strings such as ``"12/32"`` or ``"41%"``.
    """
    if kind not in ("rank", "flops"):
        raise ValueError(f"kind must be 'rank' or 'flops', got {kind!r}")
    if "ranks" in layer and "cluster_sizes" in layer:
        ranks, sizes = layer["ranks"], layer["cluster_sizes"]
        rank0 = layer.get("rank0_channels") or [0] * len(ranks)
        oh, ow = layer["out_hw"]
        values, labels = [], []
        for r, (rk, sz) in enumerate(zip(ranks, sizes)):
            channels = int(sum(sz) + rank0[r])
            if kind == "rank":
                kept = int(sum(rk))
                values.append(kept / max(channels, 1))
                labels.append(f"{kept}/{channels}")
            else:
                fan_in = layer["original_macs"] / max(oh * ow * channels, 1)
                kept = sum(_block_macs(int(k), int(s), int(round(fan_in))) for k, s in zip(rk, sz))
                v = kept / max(channels * fan_in, 1e-12)
                values.append(v)
                labels.append(f"{100 * v:.0f}%")
        return np.asarray(values, dtype=np.float64), labels
    flops = layer.get("macs", 0) / max(layer.get("original_macs", 1), 1)
    if kind == "rank" and "rank" in layer and layer.get("full_rank"):
        return np.array([layer["rank"] / layer["full_rank"]]), [f"rank {layer['rank']}/{layer['full_rank']}"]
    if kind == "rank" and "rank_out" in layer:
        return np.array([flops]), [f"ranks {layer['rank_out']} x {layer['rank_in']}"]
    return np.array([flops]), [f"{100 * flops:.0f}%"]


def region_value_map(layer: Mapping[str, Any], kind: str = "rank"
                     ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[str]]:
    """:func:`region_values` painted on the layer's output grid.

    Returns
    -------
    (map, regions, labels)
        ``map`` (H_out, W_out) float; ``regions`` as (h0, h1, w0, w1) on that grid (one region
        covering the map for the baselines); ``labels`` one per region.
    """
    values, labels = region_values(layer, kind)
    oh, ow = (int(v) for v in layer["out_hw"])
    regions = [tuple(int(v) for v in b) for b in layer.get("regions") or [(0, oh, 0, ow)]]
    out = np.full((oh, ow), np.nan)
    for (h0, h1, w0, w1), v in zip(regions, values):
        out[h0:h1, w0:w1] = v
    return out, regions, labels


# --------------------------------------------------------------------------------------------
# Maps from activations


def cluster_map(activation: np.ndarray | torch.Tensor, labels: np.ndarray,
                regions: Sequence[Sequence[int]]) -> np.ndarray:
    """Per position, the cluster (of that position's region) carrying the most activation.

    Parameters
    ----------
    activation : array (O, H, W)
        The layer's output for one image (with bias, before the ReLU).
    labels : array (R, O)
        Cluster id of each output channel in each region; -1 for rank-0 channels (never active in
        the region on the calibration data), which are ignored.
    regions : list of (h0, h1, w0, w1)
        Region bounds on the (H, W) grid, in the order of ``labels``' rows.

    Returns
    -------
    ndarray (H, W) of int
        Cluster id per position (ids are local to each region), -1 where no cluster is active.
    """
    a = activation.detach().cpu().numpy() if isinstance(activation, torch.Tensor) else np.asarray(activation)
    a = np.maximum(a.astype(np.float64), 0.0)
    labels = np.asarray(labels)
    if a.ndim != 3 or labels.ndim != 2 or labels.shape[1] != a.shape[0] or labels.shape[0] != len(regions):
        raise ValueError(f"shapes do not fit: activation {a.shape}, labels {labels.shape}, {len(regions)} regions")
    out = np.full(a.shape[1:], -1, dtype=np.int64)
    for r, (h0, h1, w0, w1) in enumerate(regions):
        lab = labels[r]
        k = int(lab.max()) + 1 if lab.size else 0
        if k <= 0:
            continue
        block = a[:, h0:h1, w0:w1]  # (O, h, w)
        onehot = np.zeros((k, lab.size))
        active = lab >= 0
        onehot[lab[active], np.flatnonzero(active)] = 1.0
        per_cluster = np.tensordot(onehot, block, axes=(1, 0))  # (k, h, w)
        best = per_cluster.argmax(0)
        best[per_cluster.max(0) <= 0] = -1
        out[h0:h1, w0:w1] = best
    return out


def relative_error_map(reference: torch.Tensor | np.ndarray, approx: torch.Tensor | np.ndarray) -> np.ndarray:
    """``||y_p - y'_p||_2 / sqrt(mean_p ||y_p||_2^2)`` per position p of (O, H, W) maps."""
    y = torch.as_tensor(reference, dtype=torch.float64)
    z = torch.as_tensor(approx, dtype=torch.float64)
    if y.shape != z.shape or y.ndim != 3:
        raise ValueError(f"expected two (O, H, W) maps of one shape, got {tuple(y.shape)} and {tuple(z.shape)}")
    err = (y - z).norm(dim=0)
    scale = y.pow(2).sum(0).mean().sqrt()
    return (err / scale).numpy() if scale > 0 else err.numpy()


@torch.no_grad()
def layer_io(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of submodule ``layer`` when ``model`` runs on ``x`` (eval mode)."""
    mod = model.get_submodule(layer)
    seen: dict[str, torch.Tensor] = {}

    def hook(_m, inputs, output):
        # Clones: an in-place ReLU after the layer would otherwise overwrite what we keep.
        seen["in"], seen["out"] = inputs[0].detach().clone(), output.detach().clone()

    handle = mod.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        handle.remove()
        model.train(was)
    if "out" not in seen:
        raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
    return seen["in"], seen["out"]


@torch.no_grad()
def layer_reconstruction_error(original: nn.Module, compressed: nn.Module, layer: str,
                               x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-position relative error of the compressed ``layer`` given the original's input to it.

    Parameters
    ----------
    original, compressed : nn.Module
        The baseline and the compressed model (same qualified layer names).
    layer : str
        A compressed layer's qualified name.
    x : tensor (1, 3, H, W)
        One normalised image.

    Returns
    -------
    (error map (H_out, W_out), original output (O, H_out, W_out))
    """
    inp, out = layer_io(original, layer, x)
    approx = compressed.get_submodule(layer).eval()(inp)
    return relative_error_map(out[0], approx[0]), out[0].cpu().numpy()


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: int | None = None
             ) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of ``layer`` for class ``target`` on one image.

    Parameters
    ----------
    model : nn.Module
        Any classifier; not modified (in-place ReLUs downstream of the layer are fine: the map is
        taken from a copy of the layer's output).
    layer : str
        Qualified name of the layer whose activation maps are weighted (usually the last conv).
    x : tensor (1, C, H, W)
    target : int, optional
        Class to explain; default the model's prediction.

    Returns
    -------
    (cam, target, probabilities)
        ``cam`` (H, W) in [0, 1] (all zeros when no position supports the class), bilinearly
        upsampled to the input size.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must have shape (1, C, H, W), got {tuple(x.shape)}")
    mod = model.get_submodule(layer)
    seen: dict[str, torch.Tensor] = {}

    def hook(_m, _inputs, output):
        seen["act"] = output
        return output.clone()  # later in-place ops change the clone, not the tensor we differentiate

    handle = mod.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xr = x.detach().clone().requires_grad_(True)
            logits = model(xr)
            probs = torch.softmax(logits.detach().float(), 1)[0].cpu().numpy()
            cls = int(logits.argmax(1)) if target is None else int(target)
            if not 0 <= cls < logits.shape[1]:
                raise ValueError(f"target {cls} outside 0..{logits.shape[1] - 1}")
            act = seen["act"]
            (grad,) = torch.autograd.grad(logits[0, cls], act)
    finally:
        handle.remove()
        model.train(was)
    weights = grad[0].mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * act[0].detach()).sum(0))
    cam = F.interpolate(cam[None, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float64), cls, probs


# --------------------------------------------------------------------------------------------
# Rebuilding a stored run's model


def compressed_model(ws, run: Mapping[str, Any], progress=None) -> nn.Module:
    """The compressed model of a stored run, rebuilt from its configuration through the pipeline.

    ``pipeline.build_compressed`` redoes the deterministic part (calibration statistics come from
    the store; budget runs bisect to the same energy); a fine-tuned run is then fine-tuned again with
    its seed, which takes as long as it did the first time and is not bit-reproducible across
    machines (its trained weights are not stored). The result is in eval mode.

    Parameters
    ----------
    ws : Workspace
    run : dict
        A run of :func:`hscc_core.runs.pipeline.compress_run` (its ``config`` is used).
    progress : callable(stage, done, total), optional

    Raises
    ------
    ValueError
        For the original model's run, or a run of another baseline model than ``ws``'s.
    """
    from hscc_core.runs import pipeline

    if run.get("method") == "original" or not run.get("config"):
        raise ValueError("the original model's run has no compressed model")
    model, meta = ws.baseline(train_if_missing=False)
    if run.get("model_fingerprint") not in (None, meta["fingerprint"]):
        raise ValueError("this run was made with another baseline model than the workspace's")
    config = pipeline.RunConfig(**run["config"])
    built = pipeline.build_compressed(ws, config, progress)
    compressed = built[0] if isinstance(built, tuple) else built
    if config.finetune_epochs:
        from hscc_core.nn.training import finetune_config, train

        images = ws.images()
        tcfg = finetune_config(config.finetune_epochs, config.seed)
        compressed = train(compressed, images.x_train, images.y_train, images.mean, images.std,
                           len(images.classes), tcfg).model.cpu()
    return compressed.eval()
