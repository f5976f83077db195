"""HSCC decompositions: everything that does not depend on the energy threshold, for either side.

Vacavant et al. 2026, arXiv 2604.23375 (DESIGN 3.3-3.4 and 3.9). A decomposition holds, per
compressed layer and region, the channel clusters and, per (region, cluster) block, the
eigen-decomposition of the centred calibration scatter of the block's outputs:

* output side (the paper): the block is a cluster of *output* channels; its outputs are those
  channels (``eigvecs`` |c| x |c|, ``mean`` mu_{r,c} over |c|);
* input side (HSCC+): the block is a cluster of *input* channels; its outputs are the partial output
  Y_{r,c} = W[:, c] * x[c] over all O channels (``eigvecs`` O x n with n = min(O, |c| kh kw)).

One block, region, layer and decomposition type serves both sides; the side (a
:class:`hscc_core.compress.hscc.sides.ClusterSide`) is a value carried by each layer, and it knows
what one kept direction of a block costs. Rank-0 channels (output side: a channel whose output is
constant over a region's calibration samples; input side: an input that is zero over the region's
whole window) are left out of the clusters (label -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress.hscc.input_stats import InputBlockStats, InputLayerStats
from hscc_core.compress.hscc.stats import LayerStats
from hscc_core.compress.spectral import cluster_channels, eig_desc, energy_ratio

if TYPE_CHECKING:
    from hscc_core.compress.hscc.sides import ClusterSide

__all__ = ["Block", "Decomposition", "LayerDecomp", "LayerGeometry", "Region", "decompose_input",
           "decompose_output"]

# Relative variance below which an output channel is treated as constant (never activating) in a region.
_INACTIVE_RTOL = 1e-12


@dataclass(frozen=True, eq=False)
class Block:
    """Eigen-decomposition of one (region, cluster) block's outputs, eigenvalues descending.

    A rank-k block computes ``mean + U_k V_k^T (W_c x - mean_in)``: the block's part of the
    original layer applied to the layer's input x, read out along V_k and written back along U_k.
    Calibrated independently (on the original's own inputs) V = U and ``mean_in`` = ``mean``: the
    projection onto the top-k principal directions. A sequential fit
    (:mod:`hscc_core.compress.hscc.sequential`) sets ``readout`` (V) and ``mean_in`` so that the
    block reproduces the original's outputs from the compressed model's inputs.
    """

    channels: np.ndarray  # (|c|,) the clustered channels (output or input indices, by side)
    eigvals: np.ndarray  # (n,) >= 0
    eigvecs: np.ndarray  # (outputs, n): the block's output directions U
    mean: np.ndarray  # (outputs,): calibration mean of the block's (original) outputs
    ratio: np.ndarray  # (n,) cumulative energy ratio (empty when the block has no energy)
    readout: np.ndarray | None = None  # (outputs, n): V; None means V = U
    mean_in: np.ndarray | None = None  # (outputs,): mean of W_c x on the inputs V was fitted to

    @property
    def input_vecs(self) -> np.ndarray:
        """V: the directions the block reads its input along (U unless fitted sequentially)."""
        return self.eigvecs if self.readout is None else self.readout

    @property
    def input_mean(self) -> np.ndarray:
        """The mean V is applied around (``mean`` unless fitted sequentially)."""
        return self.mean if self.mean_in is None else self.mean_in


@dataclass(frozen=True, eq=False)
class Region:
    bounds: tuple[int, int, int, int]
    labels: np.ndarray  # cluster id per clustered channel, -1 for channels left out
    blocks: tuple[Block, ...]  # ordered by cluster id
    mean: np.ndarray | None = None  # output side: mu_r (O,), for the rank-0 channels


@dataclass(frozen=True, eq=False)
class LayerGeometry:
    """What every side knows about one decomposed convolution besides its regions."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    out_hw: tuple[int, int]
    grid: int
    grid_hw: tuple[int, int]
    clusters: int

    @property
    def kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_area

    @property
    def original_macs(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.out_channels * self.fan_in


@dataclass(frozen=True, eq=False)
class LayerDecomp(LayerGeometry):
    side: ClusterSide = None
    regions: tuple[Region, ...] = ()


@dataclass(frozen=True, eq=False)
class Decomposition:
    """Everything HSCC needs that does not depend on tau, for one side, K and seed."""

    layers: dict[str, LayerDecomp]
    side: ClusterSide
    clusters: int
    seed: int

    @property
    def original_macs(self) -> int:
        return sum(ld.original_macs for ld in self.layers.values())


def _conv(model: nn.Module, name: str) -> nn.Conv2d:
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"layer {name!r} is not a Conv2d with groups=1")
    return conv


def _block(channels: np.ndarray, vals: np.ndarray, vecs: np.ndarray, mean: np.ndarray) -> Block:
    return Block(channels, vals, np.ascontiguousarray(vecs), mean, energy_ratio(vals))


# --------------------------------------------------------------------------- output side


def decompose_output(model: nn.Module, stats: dict[str, LayerStats], clusters: int, seed: int,
                     side: ClusterSide, layers: list[str] | None = None) -> Decomposition:
    """Cluster output channels per region and eigen-decompose every (region, cluster) Gram block.

    Parameters
    ----------
    model : nn.Module
        The original model (read only; used for layer shapes).
    stats : dict of str to LayerStats
        From :func:`hscc_core.compress.hscc.stats.compute_stats`.
    clusters : int
        Requested K (>= 1); clamped per region to the number of active channels.
    seed : int
        k-means ``random_state``.
    side : ClusterSide
        The output side (carried by every layer).
    layers : list of str, optional
        Subset of ``stats`` to compress; default all of them.
    """
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    names = list(stats) if layers is None else list(layers)
    # The problems are tiny (O <= a few hundred points); one thread avoids OpenMP start-up and
    # contention with torch's pool, which otherwise dominates (about 5x slower on 2 cores).
    with threadpool_limits(limits=1):
        out = {name: _output_layer(model, stats[name], name, clusters, seed, side) for name in names}
    return Decomposition(out, side, clusters, seed)


def _output_layer(model, s: LayerStats, name, clusters, seed, side) -> LayerDecomp:
    conv = _conv(model, name)
    if conv.out_channels != s.out_channels:
        raise ValueError(f"stats for {name!r} do not match the model's channel count")
    regions = []
    for r, bounds in enumerate(s.regions):
        diag = np.diag(s.gram[r])
        scale = diag.max(initial=0.0)
        active = np.flatnonzero(diag > _INACTIVE_RTOL * scale) if scale > 0 else np.array([], int)
        labels = np.full(s.out_channels, -1, dtype=np.int64)
        labels[active] = cluster_channels(s.desc[r][active], clusters, seed)
        blocks = []
        for c in range(labels.max() + 1):
            ch = np.flatnonzero(labels == c)
            if ch.size:
                vals, vecs = eig_desc(s.gram[r][np.ix_(ch, ch)])
                blocks.append(_block(ch, vals, vecs, s.mean[r][ch]))
        regions.append(Region(tuple(bounds), labels, tuple(blocks), s.mean[r].copy()))
    return LayerDecomp(name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
                       kernel_size=tuple(conv.kernel_size), out_hw=tuple(s.out_hw), grid=s.grid,
                       grid_hw=tuple(s.grid_hw), clusters=clusters, side=side, regions=tuple(regions))


# --------------------------------------------------------------------------- input side


def decompose_input(model: nn.Module, stats: dict[str, InputLayerStats], side: ClusterSide,
                    layers: list[str] | None = None) -> Decomposition:
    """Eigen-decompose every (region, input cluster) partial output.

    Parameters
    ----------
    model : nn.Module
        The original model (read only; its weights turn input-basis statistics into output ones).
    stats : dict of str to InputLayerStats
        From :func:`hscc_core.compress.hscc.input_stats.compute_input_stats` (they fix K and the seed).
    side : ClusterSide
        The input side (carried by every layer).
    layers : list of str, optional
        Subset of ``stats``; default all of them.
    """
    names = list(stats) if layers is None else list(layers)
    if not names:
        raise ValueError("no layer to compress")
    # Small dense eigenproblems: one BLAS thread avoids oversubscription, which on a loaded 2-core
    # machine made OpenBLAS's eigh about 25x slower.
    with threadpool_limits(limits=1):
        out = {name: _input_layer(model, stats[name], name, side) for name in names}
    first = stats[names[0]]
    return Decomposition(out, side, first.clusters, first.seed)


def _input_block(b: InputBlockStats, w: np.ndarray, area: int) -> Block:
    if b.basis == "output":
        vals, vecs = eig_desc(b.scatter)
        return _block(b.channels, vals, vecs, b.mean)
    rows = (b.channels[:, None] * area + np.arange(area)[None, :]).ravel()
    wc = w[:, rows]
    # Scatter of Y = W_c S_X W_c^T = (W_c L)(W_c L)^T with S_X = L L^T: the thin SVD of W_c L gives
    # Y's eigenvectors and eigenvalues (squared singular values) without any O x O matrix.
    s, v = eig_desc(b.scatter)
    u, sv, _ = np.linalg.svd(wc @ (v * np.sqrt(s)[None, :]), full_matrices=False)
    return _block(b.channels, sv**2, u, wc @ b.mean)


def _input_layer(model, s: InputLayerStats, name, side) -> LayerDecomp:
    conv = _conv(model, name)
    if (conv.out_channels, conv.in_channels, tuple(conv.kernel_size)) != (
            s.out_channels, s.in_channels, tuple(s.kernel_size)):
        raise ValueError(f"stats for {name!r} do not match the model's convolution")
    w = conv.weight.detach().to(torch.float64).cpu().numpy().reshape(conv.out_channels, -1)
    area = s.kernel_size[0] * s.kernel_size[1]
    regions = tuple(Region(tuple(bounds), s.labels[k].copy(),
                           tuple(_input_block(b, w, area) for b in s.blocks[k]))
                    for k, bounds in enumerate(s.regions))
    return LayerDecomp(name=name, in_channels=s.in_channels, out_channels=s.out_channels,
                       kernel_size=tuple(s.kernel_size), out_hw=tuple(s.out_hw), grid=s.grid,
                       grid_hw=tuple(s.grid_hw), clusters=s.clusters, side=side, regions=regions)
