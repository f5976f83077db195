"""Layer-wise fidelity of a compressed model: relative reconstruction error of each layer's output.

HSCC (Vacavant et al. 2026, arXiv 2604.23375) and the baselines replace a convolution by an
approximation of its outputs; how well each replaced layer reproduces the original is measured
here, layer by layer, on held-out images. Each compressed layer is fed the *original* model's input
to that layer (captured with forward hooks), so the errors of earlier layers do not compound and
each number describes that layer's approximation alone:

    e_l = ||Y_l^compressed - Y_l^original||_F^2 / ||Y_l^original||_F^2

over all images, channels and positions (outputs include the bias). ``layer_error_map`` splits the
same quantity over output positions for heatmaps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from hscc_core.measure.costs import _eval  # eval mode with every submodule's flag restored (shared helper)

__all__ = ["layer_error_map", "layer_errors"]


class _Stop(Exception):
    """Raised once every watched layer has run: the rest of the original model is not needed."""


@torch.no_grad()
def _pairs(original: nn.Module, compressed: nn.Module, layer_names: list[str], images: torch.Tensor,
           batch_size: int) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield (name, original output, compressed layer's output on the same input), batch by batch."""
    names = list(layer_names)
    if not names:
        raise ValueError("no layer given")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError("images must have shape (M, C, H, W) with M >= 1")
    orig_mods = {n: original.get_submodule(n) for n in names}
    comp_mods = {n: compressed.get_submodule(n) for n in names}
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    capturing = [False]  # off while compressed layers run (they may be the very same modules)

    def make_hook(name: str):
        def hook(mod, inputs, output):
            if not capturing[0]:
                return
            if name not in found:  # a module run twice is compared on its first call
                # Copies: a following in-place op (AlexNet's ReLU(inplace=True)) would otherwise
                # overwrite the captured output before it is compared.
                found[name] = (inputs[0].detach().clone(), output.detach().clone())
            if len(found) == len(names):
                raise _Stop

        return hook

    handles = [orig_mods[n].register_forward_hook(make_hook(n)) for n in names]
    device = next(original.parameters()).device
    try:
        with _eval(original, compressed):
            for start in range(0, images.shape[0], batch_size):
                found.clear()
                capturing[0] = True
                try:
                    original(images[start : start + batch_size].to(device))
                except _Stop:
                    pass
                finally:
                    capturing[0] = False
                missing = [n for n in names if n not in found]
                if missing:
                    raise ValueError(f"layers not executed by the forward pass: {missing}")
                for n in names:
                    x, y = found[n]
                    dev = next(comp_mods[n].parameters(), x).device
                    yield n, y, comp_mods[n](x.to(dev)).to(y.device)
    finally:
        for h in handles:
            h.remove()


def layer_errors(
    original: nn.Module,
    compressed: nn.Module,
    layer_names: list[str],
    images: torch.Tensor,
    batch_size: int = 32,
) -> dict[str, float]:
    """Relative squared reconstruction error of each named layer's output, errors not compounded.

    Parameters
    ----------
    original, compressed : nn.Module
        The same architecture, with (some of) the named layers replaced in ``compressed``.
    layer_names : list of str
        Qualified module names present in both models.
    images : torch.Tensor
        Held-out images (M, C, H, W), normalised for the model (not the calibration images, or the
        error of a data-aware method is flattered).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict of str to float
        ||Y_c - Y_o||_F^2 / ||Y_o||_F^2 per layer (0 for identical layers; 0 when both outputs are
        all zero and inf when only the original's is), in the order of ``layer_names``.
    """
    err = {n: 0.0 for n in layer_names}
    ref = {n: 0.0 for n in layer_names}
    for n, y, yc in _pairs(original, compressed, layer_names, images, batch_size):
        y, yc = y.to(torch.float64), yc.to(torch.float64)
        err[n] += float(((yc - y) ** 2).sum())
        ref[n] += float((y**2).sum())
    return {n: err[n] / ref[n] if ref[n] > 0 else (0.0 if err[n] == 0 else float("inf"))
            for n in layer_names}


def layer_error_map(
    original: nn.Module, compressed: nn.Module, layer_name: str, image: torch.Tensor
) -> np.ndarray:
    """Per-position reconstruction error of one layer, for heatmaps over the output map.

    Parameters
    ----------
    original, compressed : nn.Module
    layer_name : str
    image : torch.Tensor
        One image (C, H, W) or a batch (N, C, H, W), normalised for the model.

    Returns
    -------
    np.ndarray
        (H_out, W_out) float64: the squared error summed over channels (and averaged over the
        batch) divided by the mean over positions of the original output's squared norm, so the
        map's mean equals the layer's relative error on these images (:func:`layer_errors`).
    """
    x = image.unsqueeze(0) if image.ndim == 3 else image
    num = ref = None
    for _, y, yc in _pairs(original, compressed, [layer_name], x, batch_size=max(1, x.shape[0])):
        y, yc = y.to(torch.float64), yc.to(torch.float64)
        num = ((yc - y) ** 2).sum(dim=1).mean(dim=0)
        ref = (y**2).sum(dim=1).mean(dim=0).mean()
    num = num.cpu().numpy()
    if ref > 0:
        return num / float(ref)
    return np.where(num == 0, 0.0, np.inf)
