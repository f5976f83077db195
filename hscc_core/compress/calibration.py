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

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "LayerStats",
    "compress_candidates",
    "compute_stats",
    "load_stats",
    "region_bounds",
    "save_stats",
]

_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Regional statistics of one convolution's pre-bias output (see module docstring).

    ``regions`` are ``(h0, h1, w0, w1)`` half-open bounds, row-major over the clamped grid
    ``grid_hw``; ``grid`` is the grid that was asked for.
    """

    name: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    grid: int
    grid_hw: tuple[int, int]
    regions: tuple[tuple[int, int, int, int], ...]
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
    def grid_clamped(self) -> bool:
        """True when the grid was reduced because the output map is smaller than G."""
        return self.grid_hw != (self.grid, self.grid)

    @property
    def total_energy(self) -> float:
        """Sum over regions of the centred scatter's trace (the energy HSCC's tau is relative to)."""
        return float(np.trace(self.gram, axis1=1, axis2=2).sum())


def region_bounds(h: int, w: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Split an ``h x w`` map into a grid of regions.

    Parameters
    ----------
    h, w : int
        Output-map size.
    grid : int
        Requested grid size G (>= 1); clamped per axis to ``h`` and ``w`` so no region is empty.

    Returns
    -------
    list of (h0, h1, w0, w1)
        Half-open bounds, row-major. Boundaries are ``linspace(0, n, G + 1)`` rounded half-up.
    """
    if grid < 1 or h < 1 or w < 1:
        raise ValueError(f"grid, h and w must be >= 1, got grid={grid}, h={h}, w={w}")

    def cuts(n: int) -> np.ndarray:
        g = min(grid, n)
        # Half-up rounding (not numpy's half-to-even) keeps the cuts strictly increasing when the
        # spacing n / g is >= 1, which the clamp guarantees.
        return np.floor(np.linspace(0, n, g + 1) + 0.5).astype(int)

    hc, wc = cuts(h), cuts(w)
    return [
        (int(hc[i]), int(hc[i + 1]), int(wc[j]), int(wc[j + 1]))
        for i in range(len(hc) - 1)
        for j in range(len(wc) - 1)
    ]


def compress_candidates(model: nn.Module) -> list[str]:
    """Qualified names of the layers HSCC and the baselines can compress (Conv2d with groups=1)."""
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Conv2d) and mod.groups == 1
    ]


def _check_layers(model: nn.Module, layers: list[str] | None) -> list[str]:
    mods = dict(model.named_modules())
    names = compress_candidates(model) if layers is None else list(layers)
    for n in names:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            raise ValueError(f"layer {n!r} is not a Conv2d with groups=1 in this model")
    if not names:
        raise ValueError("no layer to compress")
    return names


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
    names = _check_layers(model, layers)
    mods = dict(model.named_modules())
    m_images = int(images.shape[0])
    accs = {n: _Accumulator(grid, m_images) for n in names}
    device = next(model.parameters()).device

    def make_hook(name: str):
        def hook(mod: nn.Conv2d, inputs, output):
            y = output
            if mod.bias is not None:
                y = y - mod.bias.view(1, -1, 1, 1)
            accs[name].update(y, tuple(inputs[0].shape[-2:]))

        return hook

    handles = [mods[n].register_forward_hook(make_hook(n)) for n in names]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for start in range(0, m_images, batch_size):
            model(images[start : start + batch_size].to(device))
            if progress is not None:
                progress(min(start + batch_size, m_images), m_images)
    finally:
        for h in handles:
            h.remove()
        for m, was in flags:  # restore each submodule's own mode
            m.training = was

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
    path = Path(path)
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


def write_npz(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` plus ``meta`` (as a JSON string, so no pickles) to one ``.npz``, atomically:
    a temporary file in the same folder, then a rename."""
    path = Path(path)
    arrays = dict(arrays, meta=np.array([json.dumps(meta)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_stats(path: str | os.PathLike) -> dict[str, LayerStats]:
    """Read statistics written by :func:`save_stats` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][0]))
        if meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported stats format version {meta.get('version')}")
        out = {}
        for i, m in enumerate(meta["layers"]):
            out[m["name"]] = LayerStats(
                name=m["name"],
                in_hw=tuple(m["in_hw"]),
                out_hw=tuple(m["out_hw"]),
                grid=int(m["grid"]),
                grid_hw=tuple(m["grid_hw"]),
                regions=tuple(tuple(r) for r in m["regions"]),
                mean=z[f"l{i}_mean"],
                gram=z[f"l{i}_gram"],
                desc=z[f"l{i}_desc"],
                count=z[f"l{i}_count"],
                extra=m.get("extra", {}),
            )
    return out
