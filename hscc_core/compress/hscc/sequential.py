"""Sequential calibration of HSCC: each layer fitted, in forward order, to the original's outputs from
the compressed model's inputs (asymmetric reconstruction).

Zhang et al. 2016, "Accelerating Very Deep Convolutional Networks for Classification and Detection"
(TPAMI), section 3.3: calibrating every layer on the original model's own inputs (the independent
rule of HSCC, Vacavant et al. 2026, arXiv 2604.23375) lets errors compound, because the compressed
layer l is then fed the compressed layers 1 .. l-1's outputs, which it was never fitted to. The
asymmetric fit of a block of layer l takes the original's outputs y (from the original's input x)
as the target and the original layer's block applied to the compressed model's input x^ as the
predictor, y^ = W_c x^, and solves the reduced-rank regression (linear form of Zhang's problem)

    min_{rank(M) <= k}  sum ||(y - mu_y) - M (y^ - mu_y^)||^2 ,

whose solution is M_k = U_k U_k^T R with R = S_{y y^} S_{y^ y^}^+ (the full-rank regression) and U
the eigenvectors of the fitted scatter R S_{y^ y}. The block then runs exactly as an independently
calibrated one, mean + U_k V_k^T (W_c x^ - mean_in) with V_k = R^T U_k: the same two stages and the
same MACs, only the stage-1 weights (V_k^T W_c instead of U_k^T W_c) and the bias change. With
x^ = x the fit is the independent one (R is the identity on the data's span), so a plan that keeps
everything is still exact.

Both cluster sides are fitted: on the output side a block is a cluster of output channels; on the
input side a block is the partial output of a cluster of input channels, fitted to the original's
partial output. Where the input side stores a block's statistics in the basis of its im2col rows
(d = |c| kh kw < O), the regression runs there (x^ -> x, then mapped through W_c), which equals the
regression on y^ = W_c x^ whenever W_c has full column rank.

Ranks are chosen before the fit, on the original's statistics, by any rule (energy threshold,
uniform or greedy budget): the fit changes directions, not ranks, so a sequentially calibrated model
has exactly the MACs of its independently calibrated twin. Dense blocks and blocks at rank 0 are
left as they are (a dense block computes W_c x^ exactly; rank 0 is the original's mean).

The statistics of layer l depend on the compressed layers before it, so on their whole plan (the
ranks of every earlier layer); :func:`fit_sequential` hands that prefix to the statistics source,
which caches them under it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.compress.hscc.decomposition import Block, LayerDecomp, Region
from hscc_core.compress.hscc.npz import read_npz, write_npz
from hscc_core.compress.hscc.plan import LayerPlan, Plan, layer_plan
from hscc_core.compress.hscc.regions import im2col, window, window_span
from hscc_core.compress.spectral import eig_desc, energy_ratio
from hscc_core.nn.layers import conv_paddings, replace_module

__all__ = ["CrossBlock", "CrossSource", "cross_stats", "fit_sequential", "load_cross", "prefix_ident", "refit_layer",
           "save_cross"]

_FORMAT_VERSION = 1
# Relative ridge on the predictor scatter (times its mean eigenvalue): keeps the regression defined
# where the compressed inputs span fewer directions than the block has (dead channels, tiny regions).
RIDGE = 1e-6

# (layer name, prefix model, layer plan, prefix identity) -> the layer's cross statistics.
CrossSource = Callable[[str, nn.Module, LayerPlan, list], "list[list[CrossBlock | None]]"]


@dataclass(frozen=True, eq=False)
class CrossBlock:
    """Centred moments of one block's target a (the original's) and predictor b (the compressed
    model's), over the same calibration samples.

    ``basis`` is ``"output"`` when a and b are block outputs (y and y^ = W_c x^), ``"input"`` when
    they are the block's im2col rows (x and x^; input side with |c| kh kw < O).
    """

    basis: str
    count: int
    mean_a: np.ndarray  # (da,)
    mean_b: np.ndarray  # (db,)
    scatter_b: np.ndarray  # (db, db): sum (b - mean_b)(b - mean_b)^T
    cross: np.ndarray  # (da, db): sum (a - mean_a)(b - mean_b)^T


class _Moments:
    """Streaming float64 co-moments of (a, b) column samples, merged pairwise (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        nb = a.shape[1]
        ma, mb = a.mean(dim=1), b.mean(dim=1)
        ac, bc = a - ma[:, None], b - mb[:, None]
        sbb, sab = bc @ bc.T, ac @ bc.T
        if self.n == 0:
            self.n, self.ma, self.mb, self.sbb, self.sab = nb, ma, mb, sbb, sab
            return
        tot = self.n + nb
        da, db = ma - self.ma, mb - self.mb
        f = self.n * nb / tot
        self.sbb += sbb + torch.outer(db, db) * f
        self.sab += sab + torch.outer(da, db) * f
        self.ma += da * (nb / tot)
        self.mb += db * (nb / tot)
        self.n = tot

    def result(self, basis: str) -> CrossBlock:
        return CrossBlock(basis, int(self.n), self.ma.cpu().numpy(), self.mb.cpu().numpy(),
                          self.sbb.cpu().numpy(), self.sab.cpu().numpy())


def _factorised(lp: LayerPlan, r: int, j: int) -> bool:
    return lp.ranks[r][j] > 0 and not lp.dense[r][j]


def _layer_inputs(original: nn.Module, prefix: nn.Module, name: str, x: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of layer ``name`` in the original and in the prefix model, for one batch."""
    seen = {}

    class _Stop(Exception):
        pass

    def grab(key):
        def hook(_m, inputs):
            seen[key] = inputs[0].detach()
            raise _Stop
        return hook

    for key, model in (("x", original), ("xh", prefix)):
        handle = model.get_submodule(name).register_forward_pre_hook(grab(key))
        try:
            model(x.to(next(model.parameters()).device))
        except _Stop:
            pass
        finally:
            handle.remove()
        if key not in seen:
            raise ValueError(f"layer {name!r} was not executed by the model's forward pass")
    return seen["x"], seen["xh"]


@torch.no_grad()
def cross_stats(original: nn.Module, prefix: nn.Module, name: str, lp: LayerPlan, images,
                batch_size: int = 32, progress: Callable[[int, int], None] | None = None
                ) -> list[list[CrossBlock | None]]:
    """Per region and block of layer ``name``, the moments a sequential fit needs (None for blocks
    that are not factorised).

    Parameters
    ----------
    original : nn.Module
        The original model (not modified; run in eval mode, modes restored).
    prefix : nn.Module
        The original with the layers before ``name`` already compressed (layer ``name`` itself and
        everything after it may be anything: the pass stops at the layer's input).
    name : str
        The layer.
    lp : LayerPlan
        Its independent plan (clusters, ranks).
    images : tensor (M, C, H, W) or an object that slices like one
        Calibration images, normalised for the model.
    """
    conv = original.get_submodule(name)
    ld = lp.decomp
    pads = conv_paddings(conv)
    w = conv.weight.detach()
    kh, kw = ld.kernel_size
    area = kh * kw
    acc = [[_Moments() if _factorised(lp, r, j) else None for j in range(len(reg.blocks))]
           for r, reg in enumerate(ld.regions)]
    flags = [(m, m.training) for mod in (original, prefix) for m in mod.modules()]
    original.eval()
    prefix.eval()
    m_images = int(images.shape[0])
    try:
        for start in range(0, m_images, batch_size):
            x, xh = _layer_inputs(original, prefix, name, images[start:start + batch_size])
            for r, reg in enumerate(ld.regions):
                if not any(acc[r]):
                    continue
                span = window_span(reg.bounds, conv.kernel_size, conv.stride, conv.dilation, pads)
                win, winh = window(x, span), window(xh, span)
                if ld.side.name == "output":
                    y = F.conv2d(win, w, None, conv.stride, 0, conv.dilation)
                    yh = F.conv2d(winh, w, None, conv.stride, 0, conv.dilation)
                    ys = y.permute(1, 0, 2, 3).reshape(y.shape[1], -1)
                    yhs = yh.permute(1, 0, 2, 3).reshape(yh.shape[1], -1)
                    for b, m in zip(reg.blocks, acc[r]):
                        if m is not None:
                            ch = torch.as_tensor(b.channels, device=ys.device)
                            m.update(ys[ch], yhs[ch])
                    continue
                for b, m in zip(reg.blocks, acc[r]):
                    if m is None:
                        continue
                    ch = torch.as_tensor(b.channels, device=win.device)
                    xc, xhc = im2col(win.index_select(1, ch), conv), im2col(winh.index_select(1, ch), conv)
                    if b.channels.size * area < ld.out_channels:  # the im2col basis (see module docstring)
                        m.update(xc, xhc)
                    else:
                        wc = w[:, ch].reshape(w.shape[0], -1)
                        m.update(wc @ xc, wc @ xhc)
            if progress is not None:
                progress(min(start + batch_size, m_images), m_images)
    finally:
        for m, was in flags:
            m.training = was
    return [[None if m is None else m.result("input" if ld.side.name == "input" and
                                             b.channels.size * area < ld.out_channels else "output")
             for b, m in zip(reg.blocks, row)] for reg, row in zip(ld.regions, acc)]


def _inv_sqrt_psd(s: np.ndarray) -> np.ndarray:
    """(S + ridge I)^(-1/2) of a PSD scatter, the ridge relative to its mean eigenvalue."""
    vals, vecs = np.linalg.eigh(s)
    vals = np.clip(vals, 0.0, None)
    ridge = RIDGE * max(float(vals.mean()), np.finfo(np.float64).tiny)
    return (vecs / np.sqrt(vals + ridge)[None, :]) @ vecs.T


def _refit_block(b: Block, cs: CrossBlock, wc: np.ndarray) -> Block:
    """The reduced-rank regression of a block's target on its predictor (see module docstring)."""
    isq = _inv_sqrt_psd(cs.scatter_b)
    if cs.basis == "output":
        r = cs.cross @ isq @ isq  # R = S_ab S_bb^-1 in the block's output space
        vals, u = eig_desc((cs.cross @ isq) @ (cs.cross @ isq).T)  # fitted scatter R S_ba
        return replace(b, eigvals=vals, eigvecs=np.ascontiguousarray(u), mean=cs.mean_a,
                       ratio=energy_ratio(vals), readout=np.ascontiguousarray(r.T @ u), mean_in=cs.mean_b)
    # Input basis: a, b are the cluster's im2col rows x, x^ (d of them); y = W_c x, y^ = W_c x^.
    # Fitted partial output W_c B (x^ - mean_b) with B = S_ab S_bb^-1; its scatter (W_c L)(W_c L)^T,
    # L = S_ab S_bb^-1/2: the SVD of W_c L gives U and the eigenvalues (no O x O matrix).
    u, sv, _ = np.linalg.svd(wc @ (cs.cross @ isq), full_matrices=False)
    t = (u.T @ wc) @ (cs.cross @ isq @ isq)  # U^T W_c B
    v = (t @ np.linalg.pinv(wc)).T  # V^T W_c = U^T W_c B when W_c has full column rank (d < O)
    vals = sv**2
    return replace(b, eigvals=vals, eigvecs=np.ascontiguousarray(u), mean=wc @ cs.mean_a, ratio=energy_ratio(vals),
                   readout=np.ascontiguousarray(v), mean_in=wc @ cs.mean_b)


def refit_layer(lp: LayerPlan, cross: list[list[CrossBlock | None]], conv: nn.Conv2d) -> LayerPlan:
    """The layer plan ``lp`` with every factorised block refitted from its cross statistics (same
    ranks, same dense flags, same MACs)."""
    ld = lp.decomp
    w = conv.weight.detach().to(torch.float64).cpu().numpy().reshape(ld.out_channels, -1)
    area = ld.kernel_area
    regions = []
    for r, reg in enumerate(ld.regions):
        blocks = []
        for j, b in enumerate(reg.blocks):
            cs = cross[r][j]
            if not _factorised(lp, r, j):
                blocks.append(b)
                continue
            if cs is None:
                raise ValueError(f"{ld.name}: no cross statistics for factorised block ({r}, {j})")
            if ld.side.name == "output":
                wc = w[b.channels]
            else:
                wc = w[:, (b.channels[:, None] * area + np.arange(area)[None, :]).ravel()]
            blocks.append(_refit_block(b, cs, wc))
        regions.append(replace(reg, blocks=tuple(blocks)))
    fitted = layer_plan(replace(ld, regions=tuple(regions)), lp.ranks)
    if fitted.dense != lp.dense:
        raise AssertionError("a refit must not change which blocks run densely")
    return fitted


def prefix_ident(done: list[tuple[str, LayerPlan]]) -> list:
    """JSON-able identity of a compressed prefix: every earlier layer's name and block ranks (with the
    configuration that made the decomposition, this fixes the prefix model, fits included)."""
    return [[name, [list(rk) for rk in lp.ranks]] for name, lp in done]


def fit_sequential(model: nn.Module, plan: Plan, cross: CrossSource) -> Plan:
    """``plan`` with every layer after the first refitted in forward order (see module docstring).

    Parameters
    ----------
    model : nn.Module
        The original model (not modified).
    plan : Plan
        An independent plan (its layers in forward order, as decompositions list them).
    cross : callable(name, prefix model, layer plan, prefix identity) -> cross statistics
        E.g. ``lambda n, p, lp, ident: cross_stats(model, p, n, lp, images)``; a caching source
        keys the result by the prefix identity (:func:`prefix_ident`).

    Returns
    -------
    Plan
        Same ranks and MACs as ``plan``; build it with :func:`hscc_core.compress.hscc.build_hscc`.
    """
    prefix = copy.deepcopy(model)
    layers: dict[str, LayerPlan] = {}
    done: list[tuple[str, LayerPlan]] = []
    for name, lp in plan.layers.items():
        conv = model.get_submodule(name)
        # Before any layer is compressed the compressed inputs are the original's: the independent
        # fit is already the sequential one.
        fitted = lp if not done else refit_layer(lp, cross(name, prefix, lp, prefix_ident(done)), conv)
        layers[name] = fitted
        replace_module(prefix, name, plan.side.module(conv, fitted))
        done.append((name, lp))
    return Plan(layers, plan.energy, plan.decomposition)


# --------------------------------------------------------------------------- storage


def save_cross(path: str | os.PathLike, cross: list[list[CrossBlock | None]]) -> None:
    """Write one layer's cross statistics to an ``.npz`` (no pickles), atomically."""
    meta = {"version": _FORMAT_VERSION, "blocks": [[None if c is None else [c.basis, c.count] for c in row]
                                                   for row in cross]}
    arrays = {}
    for r, row in enumerate(cross):
        for j, c in enumerate(row):
            if c is not None:
                for field in ("mean_a", "mean_b", "scatter_b", "cross"):
                    arrays[f"r{r}_b{j}_{field}"] = getattr(c, field)
    write_npz(path, meta, arrays)


def load_cross(path: str | os.PathLike) -> list[list[CrossBlock | None]]:
    """Read a file of :func:`save_cross` (``allow_pickle=False``)."""
    with read_npz(path, _FORMAT_VERSION, "cross-statistics") as (meta, z):
        try:
            return [[None if c is None else CrossBlock(
                        c[0], int(c[1]), *(z[f"r{r}_b{j}_{f}"] for f in ("mean_a", "mean_b", "scatter_b", "cross")))
                     for j, c in enumerate(row)] for r, row in enumerate(meta["blocks"])]
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"cross-statistics file {path} has damaged metadata ({exc})") from None
