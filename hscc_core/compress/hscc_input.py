"""Input-side channel clustering for HSCC (HSCC+, DESIGN 3.9 ``cluster side = input``).

Extends Hierarchical Spatio-Channel Clustering (Vacavant et al. 2026, arXiv 2604.23375). The paper
clusters a layer's *output* channels: every (region, cluster) block then runs its own k x k stage,
so at a fixed budget the expensive stage is repeated once per cluster. Here, per region r, the
layer's *input* channels are clustered instead, and the layer output is written as a sum of partial
outputs, one per input cluster c::

    y_r = b + sum_c Y_{r,c},     Y_{r,c} = (W[:, c] * x[c]) on the positions of r  (O x M|r|).

Each partial output gets its own rank-k subspace U_k (top eigenvectors of its centred calibration
scatter): a convolution that reads only c's channels with weight U_k^T W[:, c] (k outputs), then a
1x1 map U_k to all O outputs, and the bias b + sum_c (I - U_k U_k^T) mu_{r,c}. This is the
least-squares best rank-k reconstruction of Y_{r,c} on the calibration data. One kept direction
costs |r| (|c| kh kw + O) MACs, so more clusters make the k x k stage cheaper instead of repeating
it. A block whose factorised cost reaches its dense cost O |c| kh kw runs densely (all dense blocks
of a region share one convolution over their channels); a block with no energy is its mean.

Pipeline, mirroring :mod:`hscc_core.compress.hscc`:

1. :func:`compute_input_stats`: pass 1 collects, per region, each input channel's mean over the
   region's receptive window per calibration image (the k-means descriptor, centred and
   unit-normalised as on the output side) and clusters; pass 2 streams the per-(region, cluster)
   partial-output statistics, accumulated in float64 (each partial output is computed in the
   layer's own precision, as the layer computes it). Unlike the output side these depend on K and
   the seed, because the clusters decide which partial outputs exist. Forward passes stop after
   the last hooked layer (the classifier never runs).
2. :func:`decompose_hscc_input` (eigendecompositions), :func:`plan_input` (ranks at one energy,
   :func:`plan_input_macs` its cost), :func:`build_hscc_input` (:class:`HSCCInputConv2d` modules).

Storage trick: Y_{r,c} = W_c X_c with X_c the im2col rows of c's channels (d = |c| kh kw of them).
When d < O the scatter of X_c (d x d) is stored instead of the O x O scatter of Y_{r,c}; the
eigenvectors follow from an SVD of W_c L (L L^T = scatter of X_c). Both give the same subspace, but
with many clusters this is K-fold less memory and compute, and rank(Y_{r,c}) <= d anyway.

Inactive input channels: a channel that is zero over region r's whole receptive window on every
calibration image (relative energy <= 1e-12 of the region's largest: dead ReLUs) adds nothing to
the region's outputs; it is left out of the clustering and of the compressed module (label -1).

Exactness at tau = 1: every block keeps all directions with calibration energy, so each partial
output, and hence their sum, is reproduced on the calibration data; on other inputs only where the
blocks' scatters are full rank (then blocks run densely).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.calibration import compress_candidates, region_bounds, write_npz
from hscc_core.compress.hscc import (DecompositionTotals, LayerGeometry, PlanTotals, RankedLayer, _cluster, check_out_hw,
                   conv_paddings, energy_rank, geometry_spec, grid_macs, plan_summary, replace_module,
                   set_geometry, tile_regions)

__all__ = [
    "HSCCInputConv2d",
    "InputBlockDecomp",
    "InputBlockStats",
    "InputDecomposition",
    "InputLayerDecomp",
    "InputLayerPlan",
    "InputLayerStats",
    "InputPlan",
    "InputRegionDecomp",
    "build_hscc_input",
    "compute_input_stats",
    "decompose_hscc_input",
    "input_block_macs",
    "input_layer_plan",
    "load_input_stats",
    "plan_input",
    "plan_input_macs",
    "save_input_stats",
]

_FORMAT_VERSION = 1
# Relative window energy below which an input channel counts as inactive in a region.
_INACTIVE_RTOL = 1e-12
# Largest im2col chunk (bytes) held at once while streaming pass 2.
_CHUNK_BYTES = 64 * 2**20
# A region runs as im2col + GEMMs when its im2col matrix has at most this many elements, else as
# convolutions (the same rule of thumb as HSCCConv2d's "auto" stage 1: the copy stops paying on
# large early-layer regions at batch 32).
_GEMM_MAX_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------- geometry


def _out_size(in_hw: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int]:
    pt, pb, pl, pr = conv_paddings(conv)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    return ((in_hw[0] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (in_hw[1] + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _window_span(bounds, kernel_size, stride, dilation, pads) -> tuple[int, int, int, int]:
    """Input rows [top, bottom) and columns [left, right) read by a region, in unpadded coordinates
    (may extend past the map into the zero padding)."""
    h0, h1, w0, w1 = bounds
    pt, _, pl, _ = pads
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    top, bottom = h0 * sh - pt, (h1 - 1) * sh - pt + dh * (kh - 1) + 1
    left, right = w0 * sw - pl, (w1 - 1) * sw - pl + dw * (kw - 1) + 1
    return top, bottom, left, right


def _window(x: torch.Tensor, span: tuple[int, int, int, int]) -> torch.Tensor:
    """The input window of a region, zero-padded only where it leaves the map (as HSCCConv2d)."""
    top, bottom, left, right = span
    hin, win = x.shape[-2:]
    a, b, c, e = max(top, 0), min(bottom, hin), max(left, 0), min(right, win)
    if a >= b or c >= e:  # the window lies entirely in the padding
        return x.new_zeros(x.shape[0], x.shape[1], bottom - top, right - left)
    out = x[:, :, a:b, c:e]
    pads = (c - left, right - e, a - top, bottom - b)
    return F.pad(out, pads) if any(pads) else out


def _im2col(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(C kh kw, N Ho Wo) patches of an already padded ``x``, rows channel-major like the weight.

    Built from strided views and one copy: several times faster than ``F.unfold`` on CPU.
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    p = x.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]  # (N, C, Ho, W, kh)
    p = p.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]  # (N, C, Ho, Wo, kh, kw)
    return p.permute(1, 4, 5, 0, 2, 3).reshape(x.shape[1] * kh * kw, -1)


def input_block_macs(rank: int, size: int, kernel_area: int, out_channels: int) -> tuple[int, bool]:
    """Per-position MACs of an input cluster of ``size`` channels at ``rank``, and whether it is dense.

    Factorised: rank (size kh kw + O); dense: O size kh kw; rank 0 costs nothing.
    """
    if rank == 0:
        return 0, False
    dense = out_channels * size * kernel_area
    factored = rank * (size * kernel_area + out_channels)
    return (dense, True) if factored >= dense else (factored, False)


# --------------------------------------------------------------------------- statistics


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
class InputLayerStats:
    """Per-region input clusters and partial-output statistics of one convolution."""

    name: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    grid: int
    grid_hw: tuple[int, int]
    regions: tuple[tuple[int, int, int, int], ...]
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

    @property
    def grid_clamped(self) -> bool:
        return self.grid_hw != (self.grid, self.grid)


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
    def update_desc(self, x: torch.Tensor) -> None:
        n, i = x.shape[:2]
        x = x.detach().to(torch.float64)
        in_hw = tuple(x.shape[-2:])
        if self.regions is None:
            self.in_hw, self.out_hw = in_hw, _out_size(in_hw, self.conv)
            self.regions = region_bounds(*self.out_hw, self.grid)
            self.spans = [
                _window_span(b, self.conv.kernel_size, self.conv.stride, self.conv.dilation, self.pads)
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
                self.labels[k, active] = _cluster(desc[k][active], clusters, seed)
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
    def update_blocks(self, x: torch.Tensor) -> None:
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
                win = _window(x[s : s + chunk], span).index_select(1, perm.to(x.device))
                cols = _im2col(win, conv)
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


class _Stop(Exception):
    """Raised once every hooked layer has been reached: nothing after (e.g. the classifier) is needed."""


def _run(model: nn.Module, images: torch.Tensor, hooks: dict[str, Callable], batch_size: int,
         progress: Callable[[int], None]) -> None:
    mods = dict(model.named_modules())
    done: set[str] = set()

    def make_hook(name: str, fn: Callable):
        def hook(mod, inputs):  # a pre-hook: only the layer's input is needed
            fn(inputs[0])
            done.add(name)
            if len(done) == len(hooks):
                raise _Stop

        return hook

    handles = [mods[n].register_forward_pre_hook(make_hook(n, f)) for n, f in hooks.items()]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, images.shape[0], batch_size):
            done.clear()
            try:
                model(images[start : start + batch_size].to(device))
            except _Stop:
                pass
            progress(min(start + batch_size, images.shape[0]))
    finally:
        for h in handles:
            h.remove()
        for m, was in flags:  # restore each submodule's own mode
            m.training = was


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
    mods = dict(model.named_modules())
    names = compress_candidates(model) if layers is None else list(layers)
    if not names:
        raise ValueError("no layer to compress")
    for n in names:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            raise ValueError(f"layer {n!r} is not a Conv2d with groups=1 in this model")
        conv_paddings(m)  # rejects unsupported padding modes early
    m_images = int(images.shape[0])
    accs = {n: _InputAccumulator(mods[n], grid, m_images) for n in names}
    report = progress or (lambda done, total: None)

    _run(model, images, {n: a.update_desc for n, a in accs.items()}, batch_size,
         lambda d: report(d, 2 * m_images))
    for n, a in accs.items():
        if a.regions is None:
            raise ValueError(f"layer {n!r} was not executed by the model's forward pass")
    # k-means problems are tiny; one thread avoids OpenMP start-up and contention (see hscc.py).
    with threadpool_limits(limits=1):
        for a in accs.values():
            a.cluster(clusters, seed)
    _run(model, images, {n: a.update_blocks for n, a in accs.items()}, batch_size,
         lambda d: report(m_images + d, 2 * m_images))
    return {n: accs[n].result(n, clusters, seed) for n in names}


def save_input_stats(path: str | os.PathLike, stats: dict[str, InputLayerStats]) -> None:
    """Write statistics to one ``.npz`` (no pickles; metadata as JSON, ragged blocks flattened),
    atomically."""
    path = Path(path)
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
    out = {}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][0]))
        if meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported input-stats format version {meta.get('version')}")
        for i, m in enumerate(meta["layers"]):
            sizes, dims = z[f"l{i}_sizes"], z[f"l{i}_dims"]
            ch_flat, mean_flat, sc_flat = z[f"l{i}_channels"], z[f"l{i}_mean"], z[f"l{i}_scatter"]
            flat, pc, pm, ps = [], 0, 0, 0
            for size, dim, basis in zip(sizes.tolist(), dims.tolist(), m["basis"]):
                flat.append(InputBlockStats(
                    ch_flat[pc : pc + size], basis,
                    sc_flat[ps : ps + dim * dim].reshape(dim, dim), mean_flat[pm : pm + dim]))
                pc, pm, ps = pc + size, pm + dim, ps + dim * dim
            blocks, pos = [], 0
            for nb in m["blocks_per_region"]:
                blocks.append(tuple(flat[pos : pos + nb]))
                pos += nb
            out[m["name"]] = InputLayerStats(
                name=m["name"], in_hw=tuple(m["in_hw"]), out_hw=tuple(m["out_hw"]), grid=int(m["grid"]),
                grid_hw=tuple(m["grid_hw"]), regions=tuple(tuple(r) for r in m["regions"]),
                clusters=int(m["clusters"]), seed=int(m["seed"]), in_channels=int(m["in_channels"]),
                out_channels=int(m["out_channels"]), kernel_size=tuple(m["kernel_size"]),
                labels=z[f"l{i}_labels"], blocks=tuple(blocks), count=z[f"l{i}_count"],
            )
    return out


# --------------------------------------------------------------------------- decomposition


@dataclass(frozen=True, eq=False)
class InputBlockDecomp:
    """Eigen-decomposition of one partial output's scatter, eigenvalues descending.

    ``eigvecs`` is (O, n) with n = min(O, |c| kh kw): the partial output's rank cannot exceed n.
    """

    channels: np.ndarray  # (|c|,) input-channel indices
    eigvals: np.ndarray  # (n,) >= 0
    eigvecs: np.ndarray  # (O, n)
    mean: np.ndarray  # (O,) mu_{r,c}
    ratio: np.ndarray  # (n,) cumulative energy ratio (empty when the block has no energy)


@dataclass(frozen=True, eq=False)
class InputRegionDecomp:
    bounds: tuple[int, int, int, int]
    labels: np.ndarray  # (I,) input cluster id, -1 inactive
    blocks: tuple[InputBlockDecomp, ...]  # ordered by cluster id


@dataclass(frozen=True, eq=False)
class InputLayerDecomp(LayerGeometry):
    regions: tuple[InputRegionDecomp, ...]


@dataclass(frozen=True, eq=False)
class InputDecomposition(DecompositionTotals):
    """Everything input-side HSCC needs that does not depend on tau (one per statistics)."""

    layers: dict[str, InputLayerDecomp]
    clusters: int
    seed: int
    cluster_side: str = "input"


def _eig_desc(scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vals, vecs = np.linalg.eigh(scatter)
    return np.clip(vals[::-1], 0.0, None), vecs[:, ::-1]


def _decompose_block(b: InputBlockStats, w: np.ndarray, area: int) -> InputBlockDecomp:
    if b.basis == "output":
        vals, vecs = _eig_desc(b.scatter)
        mean = b.mean
    else:
        rows = (b.channels[:, None] * area + np.arange(area)[None, :]).ravel()
        wc = w[:, rows]
        # Scatter of Y = W_c S_X W_c^T = (W_c L)(W_c L)^T with S_X = L L^T: the thin SVD of W_c L
        # gives Y's eigenvectors and eigenvalues (squared singular values) without any O x O matrix.
        s, v = _eig_desc(b.scatter)
        u, sv, _ = np.linalg.svd(wc @ (v * np.sqrt(s)[None, :]), full_matrices=False)
        vals, vecs = sv**2, u
        mean = wc @ b.mean
    total = vals.sum()
    ratio = np.cumsum(vals) / total if total > 0 else np.array([])
    return InputBlockDecomp(b.channels, vals, np.ascontiguousarray(vecs), mean, ratio)


def decompose_hscc_input(
    model: nn.Module, stats: dict[str, InputLayerStats], layers: list[str] | None = None
) -> InputDecomposition:
    """Eigen-decompose every (region, input cluster) partial output.

    Parameters
    ----------
    model : nn.Module
        The original model (read only; its weights turn input-basis statistics into output ones).
    stats : dict of str to InputLayerStats
        From :func:`compute_input_stats` (they fix K and the seed).
    layers : list of str, optional
        Subset of ``stats``; default all of them.

    Returns
    -------
    InputDecomposition
    """
    names = list(stats) if layers is None else list(layers)
    if not names:
        raise ValueError("no layer to compress")
    # Small dense eigenproblems: one BLAS thread avoids oversubscription, which on a loaded 2-core
    # machine made OpenBLAS's eigh about 25x slower.
    with threadpool_limits(limits=1):
        out = {name: _decompose_layer(model, stats[name], name) for name in names}
    first = stats[names[0]]
    return InputDecomposition(out, first.clusters, first.seed)


def _decompose_layer(model: nn.Module, s: InputLayerStats, name: str) -> InputLayerDecomp:
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"layer {name!r} is not a Conv2d with groups=1")
    if (conv.out_channels, conv.in_channels, tuple(conv.kernel_size)) != (
        s.out_channels, s.in_channels, tuple(s.kernel_size)):
        raise ValueError(f"stats for {name!r} do not match the model's convolution")
    w = conv.weight.detach().to(torch.float64).cpu().numpy().reshape(conv.out_channels, -1)
    area = s.kernel_size[0] * s.kernel_size[1]
    regions = tuple(
        InputRegionDecomp(tuple(bounds), s.labels[k].copy(),
                          tuple(_decompose_block(b, w, area) for b in s.blocks[k]))
        for k, bounds in enumerate(s.regions)
    )
    return InputLayerDecomp(
        name=name, in_channels=s.in_channels, out_channels=s.out_channels,
        kernel_size=tuple(s.kernel_size), out_hw=tuple(s.out_hw), grid=s.grid,
        grid_hw=tuple(s.grid_hw), clusters=s.clusters, regions=regions,
    )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, eq=False)
class InputLayerPlan(RankedLayer):
    """Ranks of one layer's input-cluster blocks: ``ranks[r][c]``, ``dense[r][c]``."""

    def block_macs(self, block: InputBlockDecomp, rank: int) -> int:
        d = self.decomp
        return input_block_macs(rank, block.channels.size, d.kernel_area, d.out_channels)[0]

    def summary(self) -> dict:
        """JSON-able record; the keys of :meth:`hscc_core.compress.hscc.LayerPlan.summary`, labels per
        *input* channel, plus ``cluster_side``, ``in_channels`` and ``out_channels``."""
        d = self.decomp
        # rank0_channels counts the input channels left out in each region (zero over its whole
        # receptive window).
        return {"cluster_side": "input", "in_channels": d.in_channels, "out_channels": d.out_channels,
                **plan_summary(d, self.ranks, self.dense, self.macs)}


@dataclass(frozen=True, eq=False)
class InputPlan(PlanTotals):
    """Per-layer input-side ranks; build it with :func:`build_hscc_input`.

    ``energy`` is the uniform threshold, or None for a budget-greedy plan
    (:func:`hscc_core.compress.allocation.greedy_plan`).
    """

    layers: dict[str, InputLayerPlan]
    energy: float | None
    clusters: int
    seed: int
    cluster_side: str = "input"


def input_layer_plan(ld: InputLayerDecomp, ranks) -> InputLayerPlan:
    """An :class:`InputLayerPlan` from ranks (a rank at or past the dense break-even is dense)."""
    ranks = tuple(tuple(int(k) for k in rk) for rk in ranks)
    dense = tuple(
        tuple(input_block_macs(k, b.channels.size, ld.kernel_area, ld.out_channels)[1]
              for b, k in zip(reg.blocks, rk))
        for reg, rk in zip(ld.regions, ranks)
    )
    return InputLayerPlan(ld, ranks, dense)


def plan_input(decomp: InputDecomposition, energy: float) -> InputPlan:
    """Every block's rank for energy threshold ``energy`` in (0, 1] (the uniform rule)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    layers = {
        name: input_layer_plan(
            ld, [[energy_rank(b.ratio, energy) for b in reg.blocks] for reg in ld.regions])
        for name, ld in decomp.layers.items()
    }
    return InputPlan(layers, float(energy), decomp.clusters, decomp.seed)


def plan_input_macs(decomp: InputDecomposition, energy: float) -> int:
    """Analytical MACs (batch 1) at ``energy``: the budget cost function of the input side."""
    return plan_input(decomp, energy).macs()


# --------------------------------------------------------------------------- modules


class _InputRegionConv(nn.Module):
    """One region: per-cluster k-channel convs, one shared 1x1 expansion, one dense conv, bias."""

    def __init__(self, out_channels, out_size, n_inputs, perm, stage1, splits, expand, dense, dense_split,
                 bias):
        super().__init__()
        self.out_channels = out_channels
        self.out_size = out_size
        self.n_inputs = n_inputs  # active input channels read (0: a constant region)
        self.register_buffer("perm", perm)  # their order in the window; None when it is 0 .. I-1
        self.select = perm is not None
        self.stage1 = nn.ModuleList(stage1)
        self.splits = splits  # (start, stop) of each factorised cluster in the permuted window
        self.expand = expand  # 1x1: concat of all clusters' k_c channels -> O
        self.dense = dense
        self.dense_split = dense_split
        self.bias = nn.Parameter(bias)

    def forward_reference(self, window: torch.Tensor) -> torch.Tensor:
        """Module path: reorder, one convolution per cluster, one 1x1, dense conv, bias (NCHW)."""
        x = window.index_select(1, self.perm) if self.select else window
        y = None
        if self.stage1:
            z = [conv(x[:, a:b]) for (a, b), conv in zip(self.splits, self.stage1)]
            y = self.expand(torch.cat(z, dim=1) if len(z) > 1 else z[0])
        if self.dense is not None:
            a, b = self.dense_split
            yd = self.dense(x[:, a:b])
            y = yd if y is None else y + yd
        if y is None:  # every cluster is its mean (or no active input): a constant map
            h, w = self.out_size
            return self.bias.view(1, -1, 1, 1).expand(window.shape[0], -1, h, w).clone()
        return y + self.bias.view(1, -1, 1, 1)

    def forward_rows(self, window: torch.Tensor, layer: HSCCInputConv2d) -> torch.Tensor:
        """GEMM path: the region's outputs as (N h w, O) rows, (image, position) row-major.

        One im2col copy of the reordered window (rows: positions, columns: channel-major like the
        weights, so each cluster is a contiguous column block), one GEMM per factorised cluster,
        one GEMM for the shared 1x1 map with the bias fused, one for the dense clusters.
        """
        n = window.shape[0]
        h, w = self.out_size
        p = n * h * w
        o = self.out_channels
        if not self.n_inputs:
            return self.bias.expand(p, o).clone()
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
        s_n, s_c, s_h, s_w = window.stride()
        patches = window.as_strided(
            (n, h, w, window.shape[1], kh, kw),
            (s_n, s_h * sh, s_w * sw, s_c, s_h * dh, s_w * dw),
            window.storage_offset(),
        )
        # Channel gather and im2col in one copy: (N h w, I' kh kw), clusters in column blocks.
        cols = (patches[:, :, :, self.perm] if self.select else patches).reshape(p, -1)
        area = kh * kw
        y = None
        if self.stage1:
            z = [torch.mm(cols[:, a * area : b * area], conv.weight.view(conv.weight.shape[0], -1).t())
                 for (a, b), conv in zip(self.splits, self.stage1)]
            z = torch.cat(z, dim=1) if len(z) > 1 else z[0]
            y = torch.addmm(self.bias, z, self.expand.weight.view(o, -1).t())
        if self.dense is not None:
            a, b = self.dense_split
            wd = self.dense.weight.view(o, -1).t()
            dcols = cols[:, a * area : b * area]
            y = torch.addmm(self.bias, dcols, wd) if y is None else torch.addmm(y, dcols, wd)
        return y

    def macs_per_position(self) -> int:
        total = sum(c.weight.numel() for c in self.stage1)
        if self.expand is not None:
            total += self.expand.weight.numel()
        if self.dense is not None:
            total += self.dense.weight.numel()
        return total


class HSCCInputConv2d(nn.Module):
    """A Conv2d replaced by per-region, per-input-cluster low-rank partial outputs.

    Each region is computed from its own input window (the rows/columns its outputs read,
    zero-padded only where the window leaves the map, convolved with padding 0 and the original
    stride/dilation), exactly as :class:`hscc_core.compress.hscc.HSCCConv2d` cuts them. The window's active
    input channels are reordered once so that each factorised cluster is a contiguous slice read
    by its own k_c-channel stage; the clusters' k_c channels are concatenated and mapped to all O
    outputs by one 1x1 map (cost exactly sum_c k_c O); dense clusters share one convolution.
    :meth:`forward` runs small regions as im2col + GEMMs and large ones as convolutions;
    :meth:`forward_reference` always uses convolutions. Both count exactly
    :meth:`analytical_macs` and both support autograd (fine-tuning).
    """

    def __init__(self, conv: nn.Conv2d, plan: InputLayerPlan) -> None:
        super().__init__()
        d = plan.decomp
        if (conv.out_channels, conv.in_channels, tuple(conv.kernel_size)) != (
            d.out_channels, d.in_channels, tuple(d.kernel_size)):
            raise ValueError(f"{d.name}: plan does not match the convolution's shape")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.pads = conv_paddings(conv)
        self.out_hw = tuple(d.out_hw)
        self.grid_hw = tuple(d.grid_hw)
        self.bounds = [reg.bounds for reg in d.regions]
        self.spans = [_window_span(b, self.kernel_size, self.stride, self.dilation, self.pads)
                      for b in self.bounds]
        dev, dt = conv.weight.device, conv.weight.dtype
        kh, kw = self.kernel_size
        o = conv.out_channels
        w = conv.weight.detach().to(torch.float64).cpu().numpy()  # (O, I, kh, kw)
        b0 = (conv.bias.detach().to(torch.float64).cpu().numpy() if conv.bias is not None
              else np.zeros(o))

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)

        def new_conv(cin: int, cout: int, pointwise: bool = False) -> nn.Conv2d:
            if pointwise:
                return nn.Conv2d(cin, cout, 1, bias=False, device=dev, dtype=dt)
            return nn.Conv2d(cin, cout, (kh, kw), stride=self.stride, dilation=self.dilation,
                             padding=0, bias=False, device=dev, dtype=dt)

        regions = []
        for reg, ranks in zip(d.regions, plan.ranks):
            h0, h1, w0, w1 = reg.bounds
            bias = b0.copy()
            order, splits, stage1, us, dense_ch = [], [], [], [], []
            for blk, k in zip(reg.blocks, ranks):
                ch = blk.channels
                _, is_dense = input_block_macs(k, ch.size, d.kernel_area, o)
                if k == 0:  # no energy kept: the partial output is its calibration mean
                    bias += blk.mean
                elif is_dense:
                    dense_ch.append(ch)
                else:
                    u = blk.eigvecs[:, :k]  # (O, k)
                    wc = w[:, ch].reshape(o, -1)
                    c1 = new_conv(ch.size, k)
                    c1.weight.data.copy_(tensor((u.T @ wc).reshape(k, ch.size, kh, kw)))
                    stage1.append(c1)
                    splits.append((len(order), len(order) + ch.size))
                    order.extend(ch.tolist())
                    us.append(u)
                    bias += blk.mean - u @ (u.T @ blk.mean)
            expand = dense = None
            dense_split = (0, 0)
            if us:
                ucat = np.concatenate(us, axis=1)
                expand = new_conv(ucat.shape[1], o, pointwise=True)
                expand.weight.data.copy_(tensor(ucat.reshape(o, -1, 1, 1)))
            if dense_ch:
                dch = np.sort(np.concatenate(dense_ch))
                dense = new_conv(dch.size, o)
                dense.weight.data.copy_(tensor(w[:, dch]))
                dense_split = (len(order), len(order) + dch.size)
                order.extend(dch.tolist())
            perm = None
            if order != list(range(self.in_channels)):  # skip the copy when nothing moves
                perm = torch.as_tensor(np.asarray(order, dtype=np.int64), device=dev)
            regions.append(_InputRegionConv(o, (h1 - h0, w1 - w0), len(order), perm, stage1, splits,
                                            expand, dense, dense_split, tensor(bias)))
        self.regions = nn.ModuleList(regions)

    # ---- description without the plan (export) ---------------------------------------------
    def spec(self) -> dict:
        """JSON-able structure of the layer (no weights): what :meth:`from_spec` rebuilds."""
        return {
            **geometry_spec(self), "bounds": [list(b) for b in self.bounds],
            "regions": [
                {
                    "n_inputs": reg.n_inputs,
                    "perm": reg.perm.cpu().tolist() if reg.select else None,
                    "splits": [list(v) for v in reg.splits],
                    "ranks": [c.out_channels for c in reg.stage1],
                    "dense_split": list(reg.dense_split) if reg.dense is not None else None,
                }
                for reg in self.regions
            ],
        }

    @classmethod
    def from_spec(cls, spec: dict, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> HSCCInputConv2d:
        """An :class:`HSCCInputConv2d` of the structure ``spec`` (from :meth:`spec`) with
        uninitialised weights: load a state dict into it."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        set_geometry(self, spec)
        self.bounds = [tuple(int(v) for v in b) for b in spec["bounds"]]
        self.spans = [_window_span(b, self.kernel_size, self.stride, self.dilation, self.pads)
                      for b in self.bounds]
        o, (kh, kw) = self.out_channels, self.kernel_size

        def new_conv(cin: int, cout: int, kernel) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel, stride=self.stride if kernel != 1 else 1,
                             dilation=self.dilation if kernel != 1 else 1, padding=0, bias=False,
                             device=device, dtype=dtype)

        regions = []
        for (h0, h1, w0, w1), r in zip(self.bounds, spec["regions"]):
            splits = [tuple(int(v) for v in x) for x in r["splits"]]
            ranks = [int(k) for k in r["ranks"]]
            stage1 = [new_conv(b - a, k, (kh, kw)) for (a, b), k in zip(splits, ranks)]
            expand = new_conv(sum(ranks), o, 1) if ranks else None
            dense, dense_split = None, (0, 0)
            if r["dense_split"] is not None:
                dense_split = tuple(int(v) for v in r["dense_split"])
                dense = new_conv(dense_split[1] - dense_split[0], o, (kh, kw))
            perm = None if r["perm"] is None else torch.as_tensor(r["perm"], dtype=torch.int64, device=device)
            regions.append(_InputRegionConv(o, (h1 - h0, w1 - w0), int(r["n_inputs"]), perm, stage1, splits,
                                            expand, dense, dense_split,
                                            torch.zeros(o, device=device, dtype=dtype)))
        self.regions = nn.ModuleList(regions)
        return self

    def _check(self, x: torch.Tensor) -> None:
        check_out_hw(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per region the GEMM path (:meth:`_InputRegionConv.forward_rows`), or the module path
        where the region's im2col matrix would be large (there a direct convolution is faster);
        equal to :meth:`forward_reference` up to float round-off, same FLOPs."""
        if native.usable(self, x):  # one compiled call for the whole layer (compress/native)
            return native.run(self, x)
        self._check(x)
        n, o = x.shape[0], self.out_channels
        ho, wo = self.out_hw
        pt, pb, pl, pr = self.pads
        xp = F.pad(x, (pl, pr, pt, pb)) if any(self.pads) else x  # windows are slices of it
        out = torch.empty((n, ho, wo, o), dtype=x.dtype, device=x.device)
        kh, kw = self.kernel_size
        for (h0, h1, w0, w1), (top, bottom, left, right), reg in zip(self.bounds, self.spans, self.regions):
            win = xp[:, :, top + pt : bottom + pt, left + pl : right + pl]
            size = n * (h1 - h0) * (w1 - w0)
            if size * reg.n_inputs * kh * kw <= _GEMM_MAX_ELEMENTS:
                y = reg.forward_rows(win, self).view(n, h1 - h0, w1 - w0, o)
            else:
                y = reg.forward_reference(win).permute(0, 2, 3, 1)
            if len(self.regions) == 1:
                out = y
            else:
                out[:, h0:h1, w0:w1] = y
        return out.permute(0, 3, 1, 2)  # (N, O, H, W) view of channels-last memory

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Module path for every region (per-cluster convolutions), concatenated (NCHW)."""
        self._check(x)
        return tile_regions([reg.forward_reference(_window(x, span)) for reg, span in zip(self.regions, self.spans)],
                            self.grid_hw)

    def analytical_macs(self, batch: int = 1) -> int:
        """sum_r |r| (sum_c k_c (|c| kh kw + O) + O |dense| kh kw), times ``batch``."""
        return grid_macs(self.bounds, self.regions, batch)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"grid={self.grid_hw}, cluster_side=input")


def build_hscc_input(model: nn.Module, plan: InputPlan) -> nn.Module:
    """Deep copy of ``model`` with every planned layer replaced by an :class:`HSCCInputConv2d`."""
    out = copy.deepcopy(model)
    with threadpool_limits(limits=1):  # many small numpy products (see decompose_hscc_input)
        for name, lp in plan.layers.items():
            replace_module(out, name, HSCCInputConv2d(model.get_submodule(name), lp))
    return out
