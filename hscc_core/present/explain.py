"""What changed inside a compressed model, on one image: cluster, error and Grad-CAM maps.

Pure tensor/numpy functions behind the app's Heatmaps page and the report:

* :func:`cluster_map`: per output position, the channel cluster of its region that carries the most
  activation (sum of the post-ReLU activations of the cluster's channels);
* :func:`relative_error_map`: per position, the error of the compressed layer's output against the
  original's, both computed from the *same* input (the original model's input to that layer), as
  ``||y_p - y'_p||_2 / sqrt(mean_p ||y_p||_2^2)``, so one number reads "error relative to the
  layer's typical output norm" and positions with near-zero output do not blow up;
* :func:`grad_cam` / :func:`grad_cam_result`: Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual
  Explanations from Deep Networks via Gradient-based Localization", ICCV): ReLU of the activation
  maps of a layer weighted by the spatial mean of the class score's gradient, upsampled to the input
  and scaled to [0, 1]. When no position has positive weighted evidence the map is empty (all
  zeros); :func:`grad_cam_result` says so (``empty``) and :func:`empty_cam_message` explains it and
  names an earlier layer, where evidence is less pooled.

Grad-CAM is written here rather than taken from the ``grad-cam`` package (PyPI): the formula is a
dozen lines; the package would add OpenCV and ttach to the dependencies, it rescales every map to
[0, 1] by its own min and max (so an empty map and a faint one look alike: the very case people
must be told about), and its forward hook stores the layer's output tensor itself, which the
in-place ReLU of torchvision's AlexNet then overwrites on the CPU (the map is then taken after the
ReLU), whereas here a copy feeds the rest of the network and the layer's own output is weighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CamResult", "cluster_activation", "cluster_map", "earlier_layers", "empty_cam_message", "grad_cam",
           "grad_cam_result", "layer_io", "layer_reconstruction_error", "relative_error_map"]


# --------------------------------------------------------------------------------------------
# Maps from activations


def cluster_map(activation: np.ndarray | torch.Tensor, labels: np.ndarray,
                regions: Sequence[Sequence[int]]) -> np.ndarray:
    """Per position, the cluster (of that position's region) carrying the most activation.

    Parameters
    ----------
    activation : array (C, H, W)
        Activations of the clustered channels on the layer's output grid (:func:`cluster_activation`).
    labels : array (R, C)
        Cluster id of each clustered channel in each region; -1 for the channels left out (never
        active in the region on the calibration data), which are ignored.
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


def cluster_activation(cluster_side: str, layer_input: torch.Tensor | np.ndarray,
                       layer_output: torch.Tensor | np.ndarray) -> np.ndarray:
    """What :func:`cluster_map` weighs, on the layer's output grid, for one image.

    Output-side clusters group output channels: the layer's output (O, H, W). Input-side clusters
    group input channels: the layer's input (I, H_in, W_in) averaged onto the output grid, so each
    output position sees the input channels around its receptive field.
    """
    out = torch.as_tensor(layer_output, dtype=torch.float64)
    if cluster_side == "output":
        return out.numpy()
    if cluster_side != "input":
        raise ValueError(f"cluster side must be 'output' or 'input', got {cluster_side!r}")
    inp = torch.as_tensor(layer_input, dtype=torch.float64)
    return F.adaptive_avg_pool2d(inp[None], tuple(out.shape[-2:]))[0].numpy()


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
                               x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-position relative error of the compressed ``layer`` given the original's input to it.

    Parameters
    ----------
    original, compressed : nn.Module
        The baseline and the compressed model (same qualified layer names).
    layer : str
        A compressed layer's qualified name.
    x : tensor (1, C, H, W)
        One normalised image.

    Returns
    -------
    (error map (H_out, W_out), the layer's input (I, H_in, W_in), its original output (O, H_out, W_out))
    """
    inp, out = layer_io(original, layer, x)
    approx = compressed.get_submodule(layer).eval()(inp)
    return relative_error_map(out[0], approx[0]), inp[0].cpu().numpy(), out[0].cpu().numpy()


@dataclass(frozen=True)
class CamResult:
    """A Grad-CAM map and what it rests on.

    Attributes
    ----------
    cam : ndarray (H, W)
        In [0, 1] at the input's size; all zeros when :attr:`empty`.
    target : int
        The class explained.
    probabilities : ndarray
        The model's class probabilities on the image.
    layer : str
        The layer whose activations are weighted.
    peak : float
        The largest positive weighted activation before scaling; 0 when no position supports the class.
    """

    cam: np.ndarray
    target: int
    probabilities: np.ndarray
    layer: str
    peak: float

    @property
    def empty(self) -> bool:
        """No position of the layer carries positive evidence for the class: nothing to show."""
        return not self.peak > 0


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: int | None = None
             ) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of ``layer`` for class ``target`` on one image: ``(cam, target, probabilities)``,
    the first fields of :func:`grad_cam_result`."""
    r = grad_cam_result(model, layer, x, target)
    return r.cam, r.target, r.probabilities


def grad_cam_result(model: nn.Module, layer: str, x: torch.Tensor, target: int | None = None) -> CamResult:
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
    CamResult
        ``cam`` (H, W) in [0, 1] (all zeros when no position supports the class: ``empty``),
        bilinearly upsampled to the input size.
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
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return CamResult(cam.cpu().numpy().astype(np.float64), cls, probs, layer, max(top, 0.0))


def earlier_layers(candidates: Sequence[str], layer: str) -> list[str]:
    """The layers before ``layer`` in ``candidates`` (forward order), nearest first."""
    names = list(candidates)
    return names[:names.index(layer)][::-1] if layer in names else []


def empty_cam_message(class_name: str, layer: str, earlier: str | None = None) -> str:
    """Why a Grad-CAM map is empty, in words, and what to try."""
    text = (f"No positive evidence for {class_name} at layer {layer}: weighted by how much they raise the "
            f"{class_name} score, this layer's activations add up to zero or less everywhere, so Grad-CAM "
            "(which keeps positive evidence only) has nothing to show. The answer then rests on what the "
            "layer does not see, or on evidence too spread out to survive its pooling.")
    if earlier:
        text += f" The earlier layer {earlier} keeps finer detail and usually shows where the evidence lies."
    return text
