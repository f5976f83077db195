"""Input-side calibration statistics for HSCC+ (DESIGN 3.9, ``cluster side = input``).

Extends Hierarchical Spatio-Channel Clustering (Vacavant et al. 2026, arXiv 2604.23375). Per region r
the layer's *input* channels are clustered, and the layer output is written as a sum of partial
outputs, one per input cluster c::

    y_r = b + sum_c Y_{r,c},     Y_{r,c} = (W[:, c] * x[c]) on the positions of r  (O x M|r|).

:func:`compute_input_stats` makes two forward passes. Pass 1 collects, per region, each input
channel's mean over the region's receptive window per calibration image (the k-means descriptor,
centred and unit-normalised as on the output side) and the window energies; k-means then fixes the
clusters. Pass 2 streams the per-(region, cluster) partial-output statistics, accumulated in float64
(each partial output is computed in the layer's own precision, as the layer computes it). Unlike
the output side these depend on K and the seed, because the clusters decide which partial outputs
exist. Forward passes stop after the last hooked layer (the classifier never runs).

Storage trick: Y_{r,c} = W_c X_c with X_c the im2col rows of c's channels (d = |c| kh kw of them).
When d < O the scatter of X_c (d x d) is stored instead of the O x O scatter of Y_{r,c}; the
eigenvectors follow from an SVD of W_c L (L L^T = scatter of X_c) in
:mod:`hscc_core.compress.hscc.decomposition`. Both give the same subspace, but with many clusters
this is K-fold less memory and compute, and rank(Y_{r,c}) <= d anyway.

Inactive input channels: a channel that is zero over region r's whole receptive window on every
calibration image (relative energy <= 1e-12 of the region's largest: dead ReLUs) adds nothing to
the region's outputs; it is left out of the clustering and of the compressed module (label -1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress.hscc.npz import read_layers, write_npz
from hscc_core.compress.hscc.regions import GridLayout, im2col, out_size, region_bounds, window, window_span
from hscc_core.compress.spectral import cluster_channels
from hscc_core.nn.layers import conv_paddings, resolve_layers, run_hooked

__all__ = ["InputBlockStats", "InputLayerStats", "compute_input_stats", "load_input_stats", "save_input_stats"]

_FORMAT_VERSION = 1
# Relative window energy below which an input channel counts as inactive in a region.
_INACTIVE_RTOL = 1e-12
# Largest im2col chunk (bytes) held at once while streaming pass 2.
_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class InputBlockStats:
    """Centred calibration statistics of one partial output Y_{r,c}.

    ``basis == "output"``: ``scatter`` (O, O) and ``mean`` (O,) of Y_{r,c} itself.
    ``basis == "input"``: ``scatter`` (d, d) and ``mean`` (d,) of the cluster's im2col rows X_c
    (d = |c| kh kw < O), from which Y_{r,c} = W_c X_c's statistics follow exactly.
    Scatter = covariance x sample count (not normalised).
    """

    channels: np.ndarray  # (n,) input-channel indices, ascending
    basis: str
    scatter: np.ndarray
    mean: np.ndarray


@dataclass(frozen=True, eq=False)
class InputLayerStats(GridLayout):
    """Per-region input clusters and partial-output statistics of one convolution."""

    clusters: int  # K asked for
    seed: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    labels: np.ndarray  # (R, I) cluster id per input channel, -1 inactive
    blocks: tuple[tuple[InputBlockStats, ...], ...]  # per region, ordered by cluster id
    count: np.ndarray  # (R,) samples per region (M |r|)

    def __post_init__(self) -> None:
        r = len(self.regions)
        if r != self.grid_hw[0] * self.grid_hw[1] or len(self.blocks) != r:
            raise ValueError(f"{self.name}: {r} regions for a {self.grid_hw} grid")
        if self.labels.shape != (r, self.in_channels) or self.count.shape != (r,):
            raise ValueError(f"{self.name}: inconsistent statistic shapes")


class _InputAccumulator:
    """Streaming statistics of one layer: descriptors (pass 1), then block scatters (pass 2)."""

    def __init__(self, conv: nn.Conv2d, grid: int, num_images: int) -> None:
        self.conv = conv
        self.grid = grid
        self.num_images = num_images
        self.pads = conv_paddings(conv)
        self.seen = 0
        self.regions: list[tuple[int, int, int, int]] | None = None

    # ---- pass 1: descriptors and window energy per input channel
    def update_desc(self, inputs: tuple) -> None:
        x = inputs[0]
        n, i = x.shape[:2]
        x = x.detach().to(torch.float64)
        in_hw = tuple(x.shape[-2:])
        if self.regions is None:
            self.in_hw, self.out_hw = in_hw, out_size(in_hw, self.conv)
            self.regions = region_bounds(*self.out_hw, self.grid)
            self.spans = [
                window_span(b, self.conv.kernel_size, self.conv.stride, self.conv.dilation, self.pads)
                for b in self.regions
            ]
            r = len(self.regions)
            self.desc = torch.zeros(r, i, self.num_images, dtype=torch.float64)
            self.energy = torch.zeros(r, i, dtype=torch.float64)
        elif in_hw != self.in_hw:
            raise ValueError("all calibration images must give the same input size")
        hin, win = in_hw
        for k, (top, bottom, left, right) in enumerate(self.spans):
            a, b, c, e = max(top, 0), min(bottom, hin), max(left, 0), min(right, win)
            if a >= b or c >= e:  # window entirely in the padding: zeros
                continue
            block = x[:, :, a:b, c:e]
            # Mean over the in-map part: padding zeros would only rescale every channel alike.
            self.desc[k, :, self.seen : self.seen + n] = block.mean(dim=(2, 3)).T.cpu()
            self.energy[k] += (block * block).sum(dim=(0, 2, 3)).cpu()
        self.seen += n

    # ---- clustering between the passes
    def cluster(self, clusters: int, seed: int) -> None:
        conv = self.conv
        kh, kw = conv.kernel_size
        o = conv.out_channels
        desc, energy = self.desc.numpy(), self.energy.numpy()
        self.labels = np.full((len(self.regions), conv.in_channels), -1, dtype=np.int64)
        # Per region: its active input channels in cluster order (the window is reordered once),
        # and per cluster its channel slice in that order, its basis and, for output-basis
        # blocks, W[:, c] as an O x |c| kh kw matrix (applied to the cluster's im2col rows).
        self.plan: list[tuple[torch.Tensor, list]] = []
        for k in range(len(self.regions)):
            e = energy[k]
            scale = e.max(initial=0.0)
            active = np.flatnonzero(e > _INACTIVE_RTOL * scale) if scale > 0 else np.array([], int)
            if clusters >= active.size:  # one cluster per channel: no k-means needed
                self.labels[k, active] = np.arange(active.size)
            else:
                self.labels[k, active] = cluster_channels(desc[k][active], clusters, seed)
            order, blocks = [], []
            for c in range(self.labels[k].max(initial=-1) + 1):
                ch = np.flatnonzero(self.labels[k] == c)
                if ch.size == 0:
                    continue
                basis = "input" if ch.size * kh * kw < o else "output"
                wc = None
                if basis == "output":
                    wc = conv.weight.detach()[:, torch.as_tensor(ch)].reshape(o, -1).contiguous()
                blocks.append([ch, len(order), len(order) + ch.size, basis, wc])
                order.extend(ch.tolist())
            self.plan.append((torch.as_tensor(np.asarray(order, dtype=np.int64)), blocks))
        # Shifted sums (shift = the first chunk's mean): numerically close to the centred scatter,
        # one in-place addmm per chunk, and exactly zero for exactly constant data.
        self.shift = [[None] * len(b) for _, b in self.plan]
        self.sum = [[None] * len(b) for _, b in self.plan]
        self.sumsq = [[None] * len(b) for _, b in self.plan]
        self.count = [0] * len(self.regions)

    # ---- pass 2: per-(region, cluster) scatter, accumulated in float64
    def update_blocks(self, inputs: tuple) -> None:
        x = inputs[0]
        conv = self.conv
        n = x.shape[0]
        kh, kw = conv.kernel_size
        area = kh * kw
        x = x.detach()
        for k, ((h0, h1, w0, w1), span, (perm, blocks)) in enumerate(
                zip(self.regions, self.spans, self.plan)):
            if not blocks:
                continue
            size = (h1 - h0) * (w1 - w0)
            chunk = max(1, _CHUNK_BYTES // (8 * max(perm.numel() * kh * kw, conv.out_channels) * size))
            for s in range(0, n, chunk):
                # Only this region's window, only its active channels, already in cluster order,
                # so each cluster's im2col rows are one contiguous slice.
                win = window(x[s : s + chunk], span).index_select(1, perm.to(x.device))
                cols = im2col(win, conv)
                for j, (_, ca, cb, basis, wc) in enumerate(blocks):
                    xc = cols[ca * area : cb * area]
                    # Inputs are copied exactly; a partial output is computed in the layer's own
                    # precision (as the layer computes it). Both are accumulated in float64.
                    v = (xc if basis == "input" else wc @ xc).to(torch.float64)
                    if self.shift[k][j] is None:
                        self.shift[k][j] = v.mean(dim=1)
                        self.sum[k][j] = torch.zeros_like(self.shift[k][j])
                        self.sumsq[k][j] = v.new_zeros(v.shape[0], v.shape[0])
                    v = v - self.shift[k][j][:, None]
                    self.sumsq[k][j].addmm_(v, v.T)
                    self.sum[k][j] += v.sum(dim=1)
                self.count[k] += win.shape[0] * size

    def result(self, name: str, clusters: int, seed: int) -> InputLayerStats:
        conv = self.conv
        blocks = []
        for k, (_, bl) in enumerate(self.plan):
            reg = []
            for j, (ch, _, _, basis, _) in enumerate(bl):
                cnt, s1 = self.count[k], self.sum[k][j]
                scatter = self.sumsq[k][j] - torch.outer(s1, s1) / cnt
                mean = self.shift[k][j] + s1 / cnt
                reg.append(InputBlockStats(ch, basis, scatter.cpu().numpy(), mean.cpu().numpy()))
            blocks.append(tuple(reg))
        return InputLayerStats(
            name=name, in_hw=self.in_hw, out_hw=self.out_hw, grid=self.grid,
            grid_hw=(min(self.grid, self.out_hw[0]), min(self.grid, self.out_hw[1])),
            regions=tuple(self.regions), clusters=clusters, seed=seed,
            in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size), labels=self.labels, blocks=tuple(blocks),
            count=np.asarray(self.count, dtype=np.int64),
        )


@torch.no_grad()
def compute_input_stats(
    model: nn.Module,
    images: torch.Tensor,
    grid: int,
    clusters: int,
    seed: int = 0,
    layers: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 32,
) -> dict[str, InputLayerStats]:
    """Cluster each layer's input channels per region and collect partial-output statistics.

    Two forward passes over the calibration images: the first gathers the clustering descriptors
    (each input channel's mean over the region's receptive window, per image) and the window
    energies; k-means (``seed``) then fixes the clusters; the second streams, in float64, the
    centred scatter and mean of every (region, input cluster) partial output.

    Parameters
    ----------
    model : nn.Module
        The network (not modified; run in eval mode, each submodule's mode restored).
    images : torch.Tensor
        Calibration images (M, C, H, W), already normalised for the model.
    grid : int
        Grid size G (>= 1), clamped per layer to the output map.
    clusters : int
        Input clusters K per region (>= 1), clamped to the number of active input channels
        (when K reaches it every channel is its own cluster, without k-means).
    seed : int
        k-means ``random_state``.
    layers : list of str, optional
        Conv2d (groups=1) layers; default every such layer.
    progress : callable(done, total), optional
        Called after each batch; ``total`` is 2 M (two passes).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict of str to InputLayerStats
        In the order of ``layers``.
    """
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
    if not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be an integer >= 1, got {clusters!r}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError("images must have shape (M, C, H, W) with M >= 1")
    names = resolve_layers(model, layers)
    mods = dict(model.named_modules())
    m_images = int(images.shape[0])
    accs = {n: _InputAccumulator(mods[n], grid, m_images) for n in names}
    report = progress or (lambda done, total: None)

    run_hooked(model, images, {n: a.update_desc for n, a in accs.items()}, batch_size,
               lambda d: report(d, 2 * m_images), pre=True)
    for n, a in accs.items():
        if a.regions is None:
            raise ValueError(f"layer {n!r} was not executed by the model's forward pass")
    # k-means problems are tiny; one thread avoids OpenMP start-up and contention (see decomposition.py).
    with threadpool_limits(limits=1):
        for a in accs.values():
            a.cluster(clusters, seed)
    run_hooked(model, images, {n: a.update_blocks for n, a in accs.items()}, batch_size,
               lambda d: report(m_images + d, 2 * m_images), pre=True)
    return {n: accs[n].result(n, clusters, seed) for n in names}


def save_input_stats(path: str | os.PathLike, stats: dict[str, InputLayerStats]) -> None:
    """Write statistics to one ``.npz`` (no pickles; metadata as JSON, ragged blocks flattened),
    atomically."""
    meta = {"version": _FORMAT_VERSION, "layers": []}
    arrays: dict[str, np.ndarray] = {}
    for i, (name, s) in enumerate(stats.items()):
        flat = [b for reg in s.blocks for b in reg]
        meta["layers"].append({
            "name": name, "in_hw": list(s.in_hw), "out_hw": list(s.out_hw), "grid": s.grid,
            "grid_hw": list(s.grid_hw), "regions": [list(r) for r in s.regions],
            "clusters": s.clusters, "seed": s.seed, "in_channels": s.in_channels,
            "out_channels": s.out_channels, "kernel_size": list(s.kernel_size),
            "blocks_per_region": [len(reg) for reg in s.blocks],
            "basis": [b.basis for b in flat],
        })
        arrays[f"l{i}_labels"] = s.labels
        arrays[f"l{i}_count"] = s.count
        arrays[f"l{i}_sizes"] = np.array([b.channels.size for b in flat], dtype=np.int64)
        arrays[f"l{i}_dims"] = np.array([b.mean.size for b in flat], dtype=np.int64)
        arrays[f"l{i}_channels"] = np.concatenate([b.channels for b in flat] or [np.zeros(0, np.int64)])
        arrays[f"l{i}_mean"] = np.concatenate([b.mean for b in flat] or [np.zeros(0)])
        arrays[f"l{i}_scatter"] = np.concatenate([b.scatter.ravel() for b in flat] or [np.zeros(0)])
    write_npz(path, meta, arrays)


def load_input_stats(path: str | os.PathLike) -> dict[str, InputLayerStats]:
    """Read statistics written by :func:`save_input_stats` (``allow_pickle=False``)."""
    return read_layers(path, _FORMAT_VERSION, "input-statistics", _layer_from_npz)


def _layer_from_npz(m: dict, z, i: int) -> InputLayerStats:
    sizes, dims = z[f"l{i}_sizes"], z[f"l{i}_dims"]
    ch_flat, mean_flat, sc_flat = z[f"l{i}_channels"], z[f"l{i}_mean"], z[f"l{i}_scatter"]
    flat, pc, pm, ps = [], 0, 0, 0
    for size, dim, basis in zip(sizes.tolist(), dims.tolist(), m["basis"]):
        flat.append(InputBlockStats(ch_flat[pc : pc + size], basis,
                                    sc_flat[ps : ps + dim * dim].reshape(dim, dim), mean_flat[pm : pm + dim]))
        pc, pm, ps = pc + size, pm + dim, ps + dim * dim
    blocks, pos = [], 0
    for nb in m["blocks_per_region"]:
        blocks.append(tuple(flat[pos : pos + nb]))
        pos += nb
    return InputLayerStats(
        name=m["name"], in_hw=tuple(m["in_hw"]), out_hw=tuple(m["out_hw"]), grid=int(m["grid"]),
        grid_hw=tuple(m["grid_hw"]), regions=tuple(tuple(r) for r in m["regions"]),
        clusters=int(m["clusters"]), seed=int(m["seed"]), in_channels=int(m["in_channels"]),
        out_channels=int(m["out_channels"]), kernel_size=tuple(m["kernel_size"]),
        labels=z[f"l{i}_labels"], blocks=tuple(blocks), count=z[f"l{i}_count"],
    )
