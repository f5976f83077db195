"""Hierarchical Spatio-Channel Clustering (HSCC) compression of convolutions.

Vacavant et al. 2026, "Hierarchical Spatio-Channel Clustering ...", arXiv 2604.23375 (DESIGN 3.3-3.6).
Given the regional statistics of :mod:`hscc_core.compress.calibration`, every compressed convolution is split
into output regions; in each region the output channels are clustered with k-means on their
per-image activation descriptors, and each (region, cluster) block keeps the top-k eigenvectors of
its centred Gram. A factorised block is a k-channel convolution with weight U_k^T W_c followed by a
1x1 map U_k back to the block's channels, with bias b_c + (I - U_k U_k^T) mu_{r,c}: the
least-squares best rank-k reconstruction of the block's outputs on the calibration data.

The work is split in three steps so that budget bisection is cheap:

1. :func:`decompose_hscc` (k-means + eigendecompositions, once per statistics, K and seed);
2. :func:`plan_from_decomposition` (ranks for one energy threshold; :func:`plan_macs` is its cost);
3. :func:`build_hscc` (a deep copy of the model with :class:`HSCCConv2d` modules).

Rank-0 channels: a channel whose pre-bias output has zero variance over all calibration samples
of a region (relative variance <= 1e-12 of the region's largest: dead filters, channels fed only by
zeros, exactly constant outputs) "never activates" there. It carries no information beyond its
mean, so it is left out of the clustering and outputs exactly b_o + mu_{r,o}, with no convolution.

Speed: :class:`HSCCConv2d` runs a fast inference path (per region one stage-1 convolution or
im2col GEMM, per block one in-place GEMM with its bias, one channel gather per region, channels_last
output) and keeps the plain module-by-module path as :meth:`HSCCConv2d.forward_reference`; both
compute the same thing and do exactly the analytical MACs (docs/performance.md).

Exactness at tau = 1: every block keeps all directions with non-zero calibration energy, so the
compressed layer reproduces the original on the calibration data. On other inputs it is exact only
where the calibration Grams are full rank (then every block stays dense); with few calibration
samples (M |r| < |c|) some blocks factorise even at tau = 1.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.calibration import LayerStats

__all__ = [
    "HSCCConfig",
    "HSCCConv2d",
    "HSCCDecomposition",
    "HSCCPlan",
    "build_hscc",
    "compress_hscc",
    "decompose_hscc",
    "energy_rank",
    "plan_from_decomposition",
    "plan_hscc",
    "plan_macs",
    "replace_module",
    "set_stage1_mode",
]

_KMEANS_N_INIT = 4
# Relative variance below which a channel is treated as constant (never activating) in a region.
_INACTIVE_RTOL = 1e-12
# Slack on the cumulative energy test so that tau = 1 is reached despite round-off.
_ENERGY_ATOL = 1e-12


@dataclass(frozen=True)
class HSCCConfig:
    """HSCC hyper-parameters: grid size G, clusters K, energy threshold tau, k-means seed."""

    grid: int = 2
    clusters: int = 4
    energy: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {self.grid!r}")
        if not isinstance(self.clusters, int) or self.clusters < 1:
            raise ValueError(f"clusters must be an integer >= 1, got {self.clusters!r}")
        if not 0.0 < float(self.energy) <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


# --------------------------------------------------------------------------- helpers


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (e.g. ``"features.3"``) by ``new``, in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise KeyError(f"no submodule {name!r}")
    setattr(parent, child, new)


def energy_rank(ratio: np.ndarray, energy: float) -> int:
    """Smallest k with cumulative energy ratio ``ratio[k-1] >= energy``; 0 for an empty/no-energy block.

    ``ratio`` is the cumulative sum of descending eigenvalues over their total (NaN-free, ends at 1).
    """
    if ratio.size == 0 or not np.isfinite(ratio[-1]):
        return 0
    k = int(np.searchsorted(ratio, energy - _ENERGY_ATOL, side="left")) + 1
    return min(k, ratio.size)


def block_macs(rank: int, size: int, fan_in: int) -> tuple[int, bool]:
    """Per-position MACs of a block of ``size`` channels at ``rank``, and whether it stays dense."""
    if rank == 0:
        return 0, False
    dense = size * fan_in
    factored = rank * (fan_in + size)
    return (dense, True) if factored >= dense else (factored, False)


def conv_paddings(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of ``conv``, resolving ``'same'``/``'valid'``."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is supported, got padding_mode={conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th = conv.dilation[0] * (conv.kernel_size[0] - 1)
        tw = conv.dilation[1] * (conv.kernel_size[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = conv.padding
    return (ph, ph, pw, pw)


def check_out_hw(layer: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """The output size ``layer`` (an HSCC layer, either side) gives for ``x``, refused unless it is
    the map size the layer was calibrated for (its regions are fixed positions of that map)."""
    pt, pb, pl, pr = layer.pads
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ho = (x.shape[-2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[-1] + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if (ho, wo) != tuple(layer.out_hw):
        raise ValueError(f"{type(layer).__name__} was calibrated for a {tuple(layer.out_hw)} output map, "
                         f"this input gives {(ho, wo)}")
    return ho, wo


_GEOMETRY_TUPLES = ("kernel_size", "stride", "dilation", "pads", "out_hw", "grid_hw")


def geometry_spec(layer: nn.Module) -> dict:
    """The JSON-able geometry both region layer types put at the head of their ``spec()``."""
    return {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
            **{name: list(getattr(layer, name)) for name in _GEOMETRY_TUPLES}}


def set_geometry(layer: nn.Module, spec: dict) -> None:
    """Inverse of :func:`geometry_spec`: set the attributes on ``layer`` (in ``from_spec``)."""
    layer.in_channels, layer.out_channels = int(spec["in_channels"]), int(spec["out_channels"])
    for name in _GEOMETRY_TUPLES:
        setattr(layer, name, tuple(int(v) for v in spec[name]))


def tile_regions(outs: list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
    """Region outputs (NCHW, row-major over the grid) put together into the layer's output map."""
    gh, gw = grid_hw
    rows = [torch.cat(outs[i * gw:(i + 1) * gw], dim=3) if gw > 1 else outs[i * gw] for i in range(gh)]
    return torch.cat(rows, dim=2) if gh > 1 else rows[0]


def grid_macs(bounds, regions, batch: int = 1) -> int:
    """MACs of a region layer: positions of each region times its ``macs_per_position()``."""
    return batch * sum((h1 - h0) * (w1 - w0) * reg.macs_per_position()
                       for (h0, h1, w0, w1), reg in zip(bounds, regions))


def plan_summary(decomp, ranks, dense, macs: int) -> dict:
    """JSON-able record of one layer's plan, shared by both cluster sides: grid and cluster
    clamping, regions, per-channel labels, cluster sizes, ranks, dense flags, channels left out
    (``rank0_channels``) and MACs."""
    d = decomp
    used = [len(reg.blocks) for reg in d.regions]
    return {
        "grid": d.grid,
        "grid_hw": list(d.grid_hw),
        "grid_clamped": d.grid_hw != (d.grid, d.grid),
        "clusters": d.clusters,
        "clusters_used": used,
        # Some region formed fewer clusters than asked (K > active channels, or duplicates).
        "clusters_clamped": any(u < d.clusters for u in used),
        "out_hw": list(d.out_hw),
        "regions": [list(reg.bounds) for reg in d.regions],
        "labels": [reg.labels.tolist() for reg in d.regions],
        "cluster_sizes": [[int(b.channels.size) for b in reg.blocks] for reg in d.regions],
        "ranks": [list(r) for r in ranks],
        "dense": [list(x) for x in dense],
        "rank0_channels": [int((reg.labels < 0).sum()) for reg in d.regions],
        "macs": int(macs),
        "original_macs": int(d.original_macs),
    }


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Number clusters by first appearance so equal partitions give equal labels."""
    out = np.empty_like(labels)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        out[i] = mapping.setdefault(int(lab), len(mapping))
    return out


def _cluster(desc: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels of channels from centred, unit-normalised per-image descriptors (n, M)."""
    n = desc.shape[0]
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    x = desc - desc.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    with warnings.catch_warnings():
        # Fewer distinct descriptors than K is legitimate (e.g. tiny calibration sets).
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=_KMEANS_N_INIT, random_state=seed).fit(x)
    return _relabel(km.labels_.astype(np.int64))


# --------------------------------------------------------------------------- decomposition


@dataclass(frozen=True, eq=False)
class BlockDecomp:
    """Eigen-decomposition of one (region, cluster) Gram block, eigenvalues descending."""

    channels: np.ndarray  # (n,) output-channel indices
    eigvals: np.ndarray  # (n,) >= 0, descending
    eigvecs: np.ndarray  # (n, n), columns match eigvals
    mean: np.ndarray  # (n,) mu_{r,c}
    ratio: np.ndarray  # (n,) cumulative energy ratio (empty when the block has no energy)


@dataclass(frozen=True, eq=False)
class RegionDecomp:
    bounds: tuple[int, int, int, int]
    labels: np.ndarray  # (O,) cluster id, -1 for rank-0 (never active) channels
    blocks: tuple[BlockDecomp, ...]  # ordered by cluster id
    mean: np.ndarray  # (O,) mu_r


@dataclass(frozen=True, eq=False)
class LayerGeometry:
    """What both cluster sides know about one decomposed convolution besides its regions."""

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
    regions: tuple[RegionDecomp, ...]


class DecompositionTotals:
    """``original_macs`` over a decomposition's ``layers``, for both cluster sides."""

    layers: dict

    @property
    def original_macs(self) -> int:
        return sum(ld.original_macs for ld in self.layers.values())


@dataclass(frozen=True, eq=False)
class HSCCDecomposition(DecompositionTotals):
    """Everything HSCC needs that does not depend on tau (one per statistics, K and seed)."""

    layers: dict[str, LayerDecomp]
    clusters: int
    seed: int


def decompose_hscc(
    model: nn.Module,
    stats: dict[str, LayerStats],
    clusters: int,
    seed: int = 0,
    layers: list[str] | None = None,
) -> HSCCDecomposition:
    """Cluster channels per region and eigen-decompose every (region, cluster) Gram block.

    Parameters
    ----------
    model : nn.Module
        The original model (read only; used for layer shapes).
    stats : dict of str to LayerStats
        From :func:`hscc_core.compress.calibration.compute_stats`.
    clusters : int
        Requested K (>= 1); clamped per region to the number of active channels.
    seed : int
        k-means ``random_state``.
    layers : list of str, optional
        Subset of ``stats`` to compress; default all of them.

    Returns
    -------
    HSCCDecomposition
    """
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    names = list(stats) if layers is None else list(layers)
    # The problems are tiny (O <= a few hundred points); one thread avoids OpenMP start-up and
    # contention with torch's pool, which otherwise dominates (about 5x slower on 2 cores).
    with threadpool_limits(limits=1):
        return HSCCDecomposition(
            {name: _decompose_layer(model, stats[name], name, clusters, seed) for name in names},
            clusters,
            seed,
        )


def _decompose_layer(model: nn.Module, s: LayerStats, name: str, clusters: int, seed: int) -> LayerDecomp:
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"layer {name!r} is not a Conv2d with groups=1")
    if conv.out_channels != s.out_channels:
        raise ValueError(f"stats for {name!r} do not match the model's channel count")
    conv_paddings(conv)  # rejects unsupported padding modes early
    regions = []
    for r, bounds in enumerate(s.regions):
        diag = np.diag(s.gram[r])
        scale = diag.max(initial=0.0)
        active = np.flatnonzero(diag > _INACTIVE_RTOL * scale) if scale > 0 else np.array([], int)
        labels = np.full(s.out_channels, -1, dtype=np.int64)
        labels[active] = _cluster(s.desc[r][active], clusters, seed)
        blocks = []
        for c in range(labels.max() + 1):
            ch = np.flatnonzero(labels == c)
            if ch.size == 0:
                continue
            vals, vecs = np.linalg.eigh(s.gram[r][np.ix_(ch, ch)])
            vals = np.clip(vals[::-1], 0.0, None)
            vecs = vecs[:, ::-1]
            total = vals.sum()
            ratio = np.cumsum(vals) / total if total > 0 else np.array([])
            blocks.append(BlockDecomp(ch, vals, np.ascontiguousarray(vecs), s.mean[r][ch], ratio))
        regions.append(RegionDecomp(tuple(bounds), labels, tuple(blocks), s.mean[r].copy()))
    return LayerDecomp(
        name=name,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=tuple(conv.kernel_size),
        out_hw=tuple(s.out_hw),
        grid=s.grid,
        grid_hw=tuple(s.grid_hw),
        clusters=clusters,
        regions=tuple(regions),
    )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, eq=False)
class RankedLayer:
    """Ranks of one layer's blocks, ``ranks[r][c]`` and ``dense[r][c]``, on either cluster side;
    a side defines :meth:`block_macs`, the MACs per output position of one block."""

    decomp: LayerGeometry
    ranks: tuple[tuple[int, ...], ...]
    dense: tuple[tuple[bool, ...], ...]

    def block_macs(self, block, rank: int) -> int:
        raise NotImplementedError

    @property
    def macs(self) -> int:
        total = 0
        for reg, ranks in zip(self.decomp.regions, self.ranks):
            h0, h1, w0, w1 = reg.bounds
            total += (h1 - h0) * (w1 - w0) * sum(self.block_macs(b, k) for b, k in zip(reg.blocks, ranks))
        return total


class PlanTotals:
    """Totals over a plan's ``layers`` (name to :class:`RankedLayer`), for both cluster sides."""

    layers: dict

    def macs(self) -> int:
        """Analytical MACs of the compressed layers at batch 1."""
        return sum(lp.macs for lp in self.layers.values())

    def original_macs(self) -> int:
        return sum(lp.decomp.original_macs for lp in self.layers.values())

    def layer_summary(self) -> dict:
        """JSON-able per-layer record (grid, clamping, K, ranks, labels, MACs)."""
        return {name: lp.summary() for name, lp in self.layers.items()}


@dataclass(frozen=True, eq=False)
class LayerPlan(RankedLayer):
    """Ranks of one layer's output-cluster blocks at one energy."""

    def block_macs(self, block: BlockDecomp, rank: int) -> int:
        return block_macs(rank, block.channels.size, self.decomp.fan_in)[0]

    def summary(self) -> dict:
        return plan_summary(self.decomp, self.ranks, self.dense, self.macs)


@dataclass(frozen=True, eq=False)
class HSCCPlan(PlanTotals):
    """Per-layer HSCC ranks at one energy threshold; build it with :func:`build_hscc`."""

    layers: dict[str, LayerPlan]
    energy: float
    clusters: int
    seed: int


def plan_from_decomposition(decomp: HSCCDecomposition, energy: float) -> HSCCPlan:
    """Choose every block's rank for energy threshold ``energy`` in (0, 1] (no k-means, no eigh)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    layers = {}
    for name, ld in decomp.layers.items():
        ranks, dense = [], []
        for reg in ld.regions:
            rk = tuple(energy_rank(b.ratio, energy) for b in reg.blocks)
            ranks.append(rk)
            dense.append(tuple(block_macs(k, b.channels.size, ld.fan_in)[1] for b, k in zip(reg.blocks, rk)))
        layers[name] = LayerPlan(ld, tuple(ranks), tuple(dense))
    return HSCCPlan(layers, float(energy), decomp.clusters, decomp.seed)


def plan_macs(decomp: HSCCDecomposition, energy: float) -> int:
    """Analytical MACs (batch 1) of the compressed layers at ``energy``: the budget cost function."""
    return plan_from_decomposition(decomp, energy).macs()


def plan_hscc(
    model: nn.Module, stats: dict[str, LayerStats], clusters: int, energy: float, seed: int = 0
) -> HSCCPlan:
    """:func:`decompose_hscc` followed by :func:`plan_from_decomposition`."""
    return plan_from_decomposition(decompose_hscc(model, stats, clusters, seed), energy)


# --------------------------------------------------------------------------- modules


class _RegionConv(nn.Module):
    """One region's blocks: a stacked first-stage conv, per-block 1x1 maps, channel reorder, bias.

    The region's channels are kept in *sorted* order: the blocks one after the other in cluster
    order, then the rank-0 channels. The stage-1 rows, the 1x1 maps and the bias all follow it, so
    each block reads a slice of the stage-1 output (``splits``) and owns a slice of the bias
    (``cols``). ``order[j]`` is the original channel of sorted slot j and ``perm`` its inverse.
    """

    def __init__(
        self,
        bounds: tuple[int, int, int, int],
        window: tuple[int, int, int, int],
        stage1: nn.Conv2d | None,
        splits: list[tuple[int, int]],
        cols: list[tuple[int, int]],
        expands: list[nn.Module],
        n_const: int,
        order: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        super().__init__()
        h0, h1, w0, w1 = bounds
        self.bounds = bounds
        self.out_size = (h1 - h0, w1 - w0)
        self.window = window  # (top, bottom, left, right) in the zero-padded input
        self.stage1 = stage1
        self.splits = splits
        self.cols = cols
        self.expands = nn.ModuleList(expands)
        self.n_const = n_const
        order = order.to(torch.int64)
        perm = torch.empty_like(order)
        perm[order] = torch.arange(order.numel(), device=order.device)
        self.register_buffer("order", order)
        self.register_buffer("perm", perm)
        # Skip the reorder when the blocks already come in channel order (e.g. K = 1, dense).
        self.reorder = not torch.equal(order.cpu(), torch.arange(order.numel()))
        self.bias = nn.Parameter(bias)
        self.factorised = [isinstance(e, nn.Conv2d) for e in expands]

    def forward_reference(self, window: torch.Tensor) -> torch.Tensor:
        """Reference: one module call per block, concatenation, bias, reorder (NCHW)."""
        n = window.shape[0]
        h, w = self.out_size
        parts = []
        if self.stage1 is not None:
            z = self.stage1(window)
            for (a, b), expand in zip(self.splits, self.expands):
                parts.append(expand(z[:, a:b]))
        if self.n_const:
            parts.append(window.new_zeros(n, self.n_const, h, w))
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        y = y + self.bias.view(1, -1, 1, 1)
        return y.index_select(1, self.perm) if self.reorder else y

    def rows_into(self, win: torch.Tensor, rows: torch.Tensor, layer: HSCCConv2d, use_gemm: bool) -> None:
        """Write the region's outputs into ``rows`` (N h w, O): (image, position) rows in
        row-major order, the region's *sorted* channels as columns.

        ``win`` is the region's zero-padded input window (N, I, window h, window w). Every element
        of ``rows`` is written exactly once (each channel belongs to one block or is rank 0), so it
        may start uninitialised.
        """
        n = win.shape[0]
        h, w = self.out_size
        p = n * h * w
        bias = self.bias
        if self.stage1 is not None:
            wt = self.stage1.weight  # channels_last: (R, kh, kw, I) in memory
            if use_gemm:
                # im2col as one strided copy of the window (kh kw I per row, I fastest since the
                # window is channels_last), then one GEMM whose M dimension is every (image,
                # position) row: far better blocking than a direct conv on a tiny map.
                (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
                s_n, s_c, s_h, s_w = win.stride()
                patches = win.as_strided(
                    (n, h, w, kh, kw, win.shape[1]),
                    (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c),
                    win.storage_offset(),
                )
                z2 = torch.mm(patches.reshape(p, -1), wt.permute(0, 2, 3, 1).reshape(wt.shape[0], -1).t())
            else:
                # channels_last weights make oneDNN return a channels_last map, so z2 is a view.
                z = F.conv2d(win, wt, None, layer.stride, 0, layer.dilation)
                z2 = z.permute(0, 2, 3, 1).reshape(p, wt.shape[0])
            for k, ((za, zb), (s, e), expand) in enumerate(zip(self.splits, self.cols, self.expands)):
                if self.factorised[k]:
                    # The block's 1x1 map with its bias fused, written in place.
                    u = expand.weight.view(e - s, zb - za)
                    torch.addmm(bias[s:e], z2[:, za:zb], u.t(), out=rows[:, s:e])
                else:
                    torch.add(z2[:, za:zb], bias[s:e], out=rows[:, s:e])
        if self.n_const:
            s = self.order.numel() - self.n_const
            rows[:, s:].copy_(bias[s:].expand(p, -1))

    def macs_per_position(self) -> int:
        total = 0
        if self.stage1 is not None:
            w = self.stage1.weight
            total += w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]
        for e in self.expands:
            if isinstance(e, nn.Conv2d):
                total += e.weight.shape[0] * e.weight.shape[1]
        return total


STAGE1_MODES = ("auto", "conv", "gemm")
# "auto" runs stage 1 as im2col + GEMM when a region's im2col matrix has at most this many
# elements, else as a direct (oneDNN) convolution. Measured on the benchmark CPU (docs/performance.md):
# GEMM wins on AlexNet's 3x3 layers at both batch sizes and on every layer at batch 1; the direct
# conv wins where the copy gets large (conv1 and conv2 at batch 32, 2.3M and 2.5M elements).
GEMM_MAX_ELEMENTS = 1 << 20
# A direct-conv stage 1 reads inputs with fewer channels than this (an RGB image) as they come
# (NCHW): converting a 3-channel map to channels_last costs more than the convolution saves.
_MIN_CHANNELS_LAST = 8


class HSCCConv2d(nn.Module):
    """A Conv2d replaced by per-region, per-cluster low-rank blocks (see module docstring).

    Each region is computed from its own input window: the rows/columns the region's outputs
    read, zero-padded only where the window leaves the map, convolved with padding 0 and the
    original stride/dilation. Only real, factorised work is done.

    Two forward paths give the same result (to float round-off):

    * :meth:`forward` (fast, inference): per region, one stacked stage-1 product on the region's
      zero-padded input window, either a direct convolution or im2col + one GEMM (``stage1_mode``:
      ``"auto"``, ``"conv"`` or ``"gemm"``); then per factorised block one GEMM with its bias
      fused, written in place into the region's row buffer (image x position rows, sorted
      channels as columns); rank-0 channels are filled with their constant, no convolution. One
      column gather restores the channel order and one copy puts the region in place in a
      channels_last output. No concatenation, no separate bias pass; the FLOPs counted are
      exactly :meth:`analytical_macs`.
    * :meth:`forward_reference`: one module call per block, ``torch.cat``, reorder, per-region
      padding; the readable specification the tests compare the fast path against, and the path
      used whenever gradients are needed (fine-tuning), since in-place GEMMs have no autograd.
    """

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan) -> None:
        super().__init__()
        d = plan.decomp
        if conv.out_channels != d.out_channels or conv.in_channels != d.in_channels:
            raise ValueError(f"{d.name}: plan does not match the convolution's shape")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.pads = conv_paddings(conv)
        self.out_hw = tuple(d.out_hw)
        self.grid_hw = tuple(d.grid_hw)
        self.bounds = [tuple(reg.bounds) for reg in d.regions]
        self.stage1_mode = "auto"
        dev, dt = conv.weight.device, conv.weight.dtype
        w = conv.weight.detach().to(torch.float64).cpu().numpy().reshape(conv.out_channels, -1)
        b = (
            conv.bias.detach().to(torch.float64).cpu().numpy()
            if conv.bias is not None
            else np.zeros(conv.out_channels)
        )
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)

        regions = []
        for reg, ranks in zip(d.regions, plan.ranks):
            h0, h1, w0, w1 = reg.bounds
            bias = b.copy()
            rows, splits, cols, expands, order = [], [], [], [], []
            const = np.flatnonzero(reg.labels < 0).tolist()
            bias[const] += reg.mean[const]
            for blk, k in zip(reg.blocks, ranks):
                ch = blk.channels
                _, is_dense = block_macs(k, ch.size, d.fan_in)
                start = sum(r.shape[0] for r in rows)
                if k == 0:  # no energy: the block is its mean
                    bias[ch] += blk.mean
                    const.extend(ch.tolist())
                    continue
                if is_dense:
                    rows.append(w[ch])
                    expands.append(nn.Identity())
                else:
                    u = blk.eigvecs[:, :k]
                    rows.append(u.T @ w[ch])
                    e = nn.Conv2d(k, ch.size, 1, bias=False, device=dev, dtype=dt)
                    e.weight.data.copy_(tensor(u.reshape(ch.size, k, 1, 1)))
                    expands.append(e)
                    bias[ch] += blk.mean - u @ (u.T @ blk.mean)
                splits.append((start, start + rows[-1].shape[0]))
                cols.append((len(order), len(order) + ch.size))
                order.extend(ch.tolist())
            stage1 = None
            if rows:
                wt = np.concatenate(rows, axis=0)
                stage1 = nn.Conv2d(
                    d.in_channels, wt.shape[0], (kh, kw), stride=self.stride,
                    dilation=self.dilation, padding=0, bias=False, device=dev, dtype=dt,
                )
                # channels_last weights: the GEMM path reads them as an (R, kh kw I) matrix view.
                stage1.weight.data = tensor(wt.reshape(-1, d.in_channels, kh, kw)).contiguous(
                    memory_format=torch.channels_last)
            order.extend(const)
            order_arr = np.asarray(order, dtype=np.int64)
            # The window in the coordinates of the input padded once by the conv's own padding.
            window = (h0 * sh, (h1 - 1) * sh + dh * (kh - 1) + 1, w0 * sw, (w1 - 1) * sw + dw * (kw - 1) + 1)
            regions.append(
                _RegionConv(
                    tuple(reg.bounds), window, stage1, splits, cols, expands, len(const),
                    torch.as_tensor(order_arr, device=dev), tensor(bias[order_arr]),
                )
            )
        self.regions = nn.ModuleList(regions)

    # ---- description without the plan (export) ---------------------------------------------
    def spec(self) -> dict:
        """JSON-able structure of the layer (no weights): what :meth:`from_spec` rebuilds."""
        return {
            **geometry_spec(self),
            "regions": [
                {
                    "bounds": list(reg.bounds), "window": list(reg.window),
                    "splits": [list(v) for v in reg.splits], "cols": [list(v) for v in reg.cols],
                    # Rank of each factorised block's 1x1 map; None for a dense block.
                    "ranks": [zb - za if f else None for (za, zb), f in zip(reg.splits, reg.factorised)],
                    "n_const": reg.n_const, "order": reg.order.cpu().tolist(),
                }
                for reg in self.regions
            ],
        }

    @classmethod
    def from_spec(cls, spec: dict, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> HSCCConv2d:
        """An :class:`HSCCConv2d` of the structure ``spec`` (from :meth:`spec`) with uninitialised
        weights: load a state dict into it."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        set_geometry(self, spec)
        self.stage1_mode = "auto"
        regions = []
        for r in spec["regions"]:
            splits = [tuple(int(v) for v in x) for x in r["splits"]]
            rows = splits[-1][1] if splits else 0
            stage1 = None
            if rows:
                stage1 = nn.Conv2d(self.in_channels, rows, self.kernel_size, stride=self.stride,
                                   dilation=self.dilation, padding=0, bias=False, device=device, dtype=dtype)
                stage1.weight.data = stage1.weight.data.contiguous(memory_format=torch.channels_last)
            expands = []
            for (s, e), k in zip(r["cols"], r["ranks"]):
                expands.append(nn.Identity() if k is None else
                               nn.Conv2d(int(k), int(e) - int(s), 1, bias=False, device=device, dtype=dtype))
            regions.append(_RegionConv(
                tuple(int(v) for v in r["bounds"]), tuple(int(v) for v in r["window"]), stage1, splits,
                [tuple(int(v) for v in x) for x in r["cols"]], expands, int(r["n_const"]),
                torch.as_tensor(r["order"], dtype=torch.int64, device=device),
                torch.zeros(self.out_channels, device=device, dtype=dtype),
            ))
        self.regions = nn.ModuleList(regions)
        self.bounds = [reg.bounds for reg in regions]
        return self

    # ---- shared ---------------------------------------------------------------------------
    def _out_hw(self, x: torch.Tensor) -> tuple[int, int]:
        return check_out_hw(self, x)

    # ---- fast path --------------------------------------------------------------------------
    def _use_gemm(self, n: int, reg: _RegionConv) -> bool:
        if self.stage1_mode != "auto":
            return self.stage1_mode == "gemm"
        h, w = reg.out_size
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return n * h * w * fan_in <= GEMM_MAX_ELEMENTS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path (see class docstring); equals :meth:`forward_reference` to round-off."""
        if native.usable(self, x):  # one compiled call for the whole layer (compress/native)
            return native.run(self, x)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return self.forward_reference(x)
        ho, wo = self._out_hw(x)
        n, o = x.shape[0], self.out_channels
        gemm = [reg.stage1 is not None and self._use_gemm(n, reg) for reg in self.regions]
        if self.in_channels >= _MIN_CHANNELS_LAST or any(gemm):
            # The im2col copy reads (kh, kw, I) runs, contiguous only in channels_last; oneDNN
            # also convolves channels_last maps without a reorder.
            x = x.contiguous(memory_format=torch.channels_last)
        pt, pb, pl, pr = self.pads
        # The im2col path slices windows out of one padded copy; the conv path pads each window
        # itself (one copy per window, which oneDNN then reads as it is).
        xp = F.pad(x, (pl, pr, pt, pb)) if any(gemm) and (pt or pb or pl or pr) else x
        single = len(self.regions) == 1
        out = None if single else torch.empty((n, ho, wo, o), dtype=x.dtype, device=x.device)
        for reg, use_gemm in zip(self.regions, gemm):
            h0, h1, w0, w1 = reg.bounds
            if use_gemm:
                t, b, l, r = reg.window
                win = xp[:, :, t:b, l:r]
            else:
                win = self._window(x, reg.bounds)
            rows = torch.empty((n * (h1 - h0) * (w1 - w0), o), dtype=x.dtype, device=x.device)
            reg.rows_into(win, rows, self, use_gemm)
            # Back to channel order: a column gather (one pass), then into place (one copy).
            y = rows.index_select(1, reg.perm) if reg.reorder else rows
            if single:
                out = y.view(n, ho, wo, o)
            else:
                out[:, h0:h1, w0:w1].copy_(y.view(n, h1 - h0, w1 - w0, o))
        return out.permute(0, 3, 1, 2)  # (N, O, H, W) in channels_last memory

    # ---- reference path ---------------------------------------------------------------------
    def _window(self, x: torch.Tensor, bounds: tuple[int, int, int, int]) -> torch.Tensor:
        h0, h1, w0, w1 = bounds
        pt, _, pl, _ = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = h0 * sh - pt, (h1 - 1) * sh - pt + dh * (kh - 1) + 1
        left, right = w0 * sw - pl, (w1 - 1) * sw - pl + dw * (kw - 1) + 1
        hin, win = x.shape[-2:]
        a, b, c, e = max(top, 0), min(bottom, hin), max(left, 0), min(right, win)
        if a >= b or c >= e:  # the window lies entirely in the padding
            return x.new_zeros(x.shape[0], x.shape[1], bottom - top, right - left)
        out = x[:, :, a:b, c:e]
        pads = (c - left, right - e, a - top, bottom - b)
        return F.pad(out, pads) if any(pads) else out

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path: per-region window and modules, concatenation, reorder (NCHW)."""
        self._out_hw(x)
        return tile_regions([reg.forward_reference(self._window(x, b)) for reg, b in zip(self.regions, self.bounds)],
                            self.grid_hw)

    def analytical_macs(self, batch: int = 1) -> int:
        """sum_r |r| sum_c (k I kh kw + |c| k), dense cost for dense blocks, times ``batch``."""
        return grid_macs(self.bounds, self.regions, batch)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, grid={self.grid_hw}"


def set_stage1_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set how every :class:`HSCCConv2d` in ``model`` runs stage 1 (``"auto"``, ``"conv"`` or
    ``"gemm"``); returns ``model``. Results are identical; only the speed differs."""
    if mode not in STAGE1_MODES:
        raise ValueError(f"stage1 mode must be one of {', '.join(STAGE1_MODES)}, got {mode!r}")
    for m in model.modules():
        if isinstance(m, HSCCConv2d):
            m.stage1_mode = mode
    return model


def build_hscc(model: nn.Module, plan: HSCCPlan) -> nn.Module:
    """Deep copy of ``model`` with every planned layer replaced by an :class:`HSCCConv2d`."""
    out = copy.deepcopy(model)
    for name, lp in plan.layers.items():
        replace_module(out, name, HSCCConv2d(model.get_submodule(name), lp))
    return out


def compress_hscc(
    model: nn.Module, stats: dict[str, LayerStats], config: HSCCConfig
) -> tuple[nn.Module, HSCCPlan]:
    """Compress ``model`` with ``config`` (its grid must match the statistics'). Returns (model, plan)."""
    for name, s in stats.items():
        if s.grid != config.grid:
            raise ValueError(f"stats for {name!r} were computed with grid {s.grid}, config has {config.grid}")
    plan = plan_hscc(model, stats, config.clusters, config.energy, config.seed)
    return build_hscc(model, plan), plan
