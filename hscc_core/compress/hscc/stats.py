"""Regional calibration statistics for HSCC (Vacavant et al. 2026, arXiv 2604.23375, steps 1-2).

For every compressed convolution the output map (H x W) is split into a G x G grid of regions. One
forward pass over M calibration images collects, per region r and in float64:

* ``mean``  mu_r (O,): the mean pre-bias output over the region's (image, position) samples;
* ``gram``  C_r (O, O): the *centred scatter* sum_s (y_s - mu_r)(y_s - mu_r)^T, i.e. the covariance
  times ``count`` (not normalised, so eigenvalues are squared singular values of the centred data);
* ``desc``  (O, M): each channel's mean activation in r, per image (the clustering descriptor);
* ``count`` the number of (image, position) samples, M |r|.

Pre-bias means the convolution's output minus its bias. Batches are merged with the pairwise
(Chan et al.) update so nothing but the running statistics is ever held, and so that an exactly
constant channel gets an exactly zero variance (which HSCC relies on to find rank-0 channels).
The statistics depend only on (model, calibration images, G); they are computed once and reused
for every cluster count K and energy threshold tau.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hscc_core.compress.hscc.npz import read_layers, write_npz
from hscc_core.compress.hscc.regions import GridLayout, region_bounds
from hscc_core.nn.layers import resolve_layers, run_hooked

__all__ = ["LayerStats", "compute_stats", "load_stats", "save_stats"]

_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class LayerStats(GridLayout):
    """Regional statistics of one convolution's pre-bias output (see module docstring)."""

    mean: np.ndarray  # (R, O) float64
    gram: np.ndarray  # (R, O, O) float64, centred scatter (covariance x count)
    desc: np.ndarray  # (R, O, M) float64
    count: np.ndarray  # (R,) int64
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = len(self.regions)
        if r != self.grid_hw[0] * self.grid_hw[1]:
            raise ValueError(f"{self.name}: {r} regions for a {self.grid_hw} grid")
        o = self.mean.shape[1]
        if self.mean.shape != (r, o) or self.gram.shape != (r, o, o) or self.desc.shape[:2] != (r, o):
            raise ValueError(f"{self.name}: inconsistent statistic shapes")
        if self.count.shape != (r,):
            raise ValueError(f"{self.name}: count must have shape ({r},)")

    @property
    def out_channels(self) -> int:
        return int(self.mean.shape[1])

    @property
    def num_images(self) -> int:
        return int(self.desc.shape[2])

    @property
    def total_energy(self) -> float:
        """Sum over regions of the centred scatter's trace (the energy HSCC's tau is relative to)."""
        return float(np.trace(self.gram, axis1=1, axis2=2).sum())


class _Accumulator:
    """Streaming float64 regional statistics for one layer."""

    def __init__(self, grid: int, num_images: int) -> None:
        self.grid = grid
        self.num_images = num_images
        self.seen = 0
        self.regions: list[tuple[int, int, int, int]] | None = None

    def update(self, y: torch.Tensor, in_hw: tuple[int, int]) -> None:
        n, o, h, w = y.shape
        y = y.detach().to(torch.float64)
        if self.regions is None:
            self.in_hw, self.out_hw = in_hw, (h, w)
            self.regions = region_bounds(h, w, self.grid)
            r = len(self.regions)
            dev = y.device
            self.mean = torch.zeros(r, o, dtype=torch.float64, device=dev)
            self.gram = torch.zeros(r, o, o, dtype=torch.float64, device=dev)
            self.desc = torch.zeros(r, o, self.num_images, dtype=torch.float64, device=dev)
            self.count = [0] * r
        elif (h, w) != self.out_hw:
            raise ValueError("all calibration images must give the same output size")
        for i, (h0, h1, w0, w1) in enumerate(self.regions):
            block = y[:, :, h0:h1, w0:w1]
            self.desc[i, :, self.seen : self.seen + n] = block.mean(dim=(2, 3)).T
            samples = block.permute(1, 0, 2, 3).reshape(o, -1)
            nb = samples.shape[1]
            mb = samples.mean(dim=1)
            centred = samples - mb[:, None]
            gb = centred @ centred.T
            na = self.count[i]
            tot = na + nb
            delta = mb - self.mean[i]
            # Pairwise merge of (count, mean, scatter): stable and exact for constant channels.
            self.gram[i] += gb + torch.outer(delta, delta) * (na * nb / tot)
            self.mean[i] += delta * (nb / tot)
            self.count[i] = tot
        self.seen += n


@torch.no_grad()
def compute_stats(
    model: nn.Module,
    images: torch.Tensor,
    grid: int,
    layers: list[str] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LayerStats]:
    """Collect regional statistics of each layer's pre-bias output in one forward pass.

    Parameters
    ----------
    model : nn.Module
        The network (not modified; it is run in eval mode and its mode restored).
    images : torch.Tensor
        Calibration images, shape (M, C, H, W), already normalised for the model.
    grid : int
        Grid size G (>= 1), clamped per layer to the output map.
    layers : list of str, optional
        Qualified names of Conv2d (groups=1) layers; default every such layer.
    batch_size : int
        Images per forward pass.
    progress : callable(done, total), optional
        Called after each batch.

    Returns
    -------
    dict of str to LayerStats
        In the order of ``layers``.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError("images must have shape (M, C, H, W) with M >= 1")
    names = resolve_layers(model, layers)
    m_images = int(images.shape[0])
    accs = {n: _Accumulator(grid, m_images) for n in names}

    def make_hook(name: str):
        def hook(inputs, output):
            conv = model.get_submodule(name)
            y = output if conv.bias is None else output - conv.bias.view(1, -1, 1, 1)
            accs[name].update(y, tuple(inputs[0].shape[-2:]))
        return hook

    run_hooked(model, images, {n: make_hook(n) for n in names}, batch_size,
               None if progress is None else (lambda done: progress(done, m_images)))

    out: dict[str, LayerStats] = {}
    for n in names:
        a = accs[n]
        if a.regions is None:
            raise ValueError(f"layer {n!r} was not executed by the model's forward pass")
        gh = min(grid, a.out_hw[0])
        gw = min(grid, a.out_hw[1])
        out[n] = LayerStats(
            name=n,
            in_hw=a.in_hw,
            out_hw=a.out_hw,
            grid=grid,
            grid_hw=(gh, gw),
            regions=tuple(a.regions),
            mean=a.mean.cpu().numpy(),
            gram=a.gram.cpu().numpy(),
            desc=a.desc.cpu().numpy(),
            count=np.asarray(a.count, dtype=np.int64),
        )
    return out


def save_stats(path: str | os.PathLike, stats: dict[str, LayerStats]) -> None:
    """Write statistics to one ``.npz`` (no pickles; metadata as a JSON string), atomically."""
    meta = {"version": _FORMAT_VERSION, "layers": []}
    arrays: dict[str, np.ndarray] = {}
    for i, (name, s) in enumerate(stats.items()):
        meta["layers"].append(
            {
                "name": name,
                "in_hw": list(s.in_hw),
                "out_hw": list(s.out_hw),
                "grid": s.grid,
                "grid_hw": list(s.grid_hw),
                "grid_clamped": s.grid_clamped,
                "regions": [list(r) for r in s.regions],
                "extra": s.extra,
            }
        )
        arrays[f"l{i}_mean"] = s.mean
        arrays[f"l{i}_gram"] = s.gram
        arrays[f"l{i}_desc"] = s.desc
        arrays[f"l{i}_count"] = s.count
    write_npz(path, meta, arrays)


def load_stats(path: str | os.PathLike) -> dict[str, LayerStats]:
    """Read statistics written by :func:`save_stats` (``allow_pickle=False``)."""
    return read_layers(path, _FORMAT_VERSION, "statistics", _layer_from_npz)


def _layer_from_npz(m: dict, z, i: int) -> LayerStats:
    return LayerStats(name=m["name"], in_hw=tuple(m["in_hw"]), out_hw=tuple(m["out_hw"]), grid=int(m["grid"]),
                      grid_hw=tuple(m["grid_hw"]), regions=tuple(tuple(r) for r in m["regions"]),
                      mean=z[f"l{i}_mean"], gram=z[f"l{i}_gram"], desc=z[f"l{i}_desc"], count=z[f"l{i}_count"],
                      extra=m.get("extra", {}))
