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

whose solution is M_k = U_k U_k^T R with R = S_{y y^} S_{y^ y^}^-1 (the full-rank regression) and
U the eigenvectors of the fitted scatter R S_{y^ y^} R^T. The block then runs exactly as an
independently calibrated one, mean + U_k V_k^T (W_c x^ - mean_in) with V_k = R^T U_k: the same two
stages and the same MACs, only the stage-1 weights (V_k^T W_c instead of U_k^T W_c) and the bias
change. With x^ = x the fit is the independent one (R is the identity), so a plan that keeps
everything is still exact.

Regularisation: R has |c|^2 coefficients, fitted on M |r| samples, which on fine grids is barely
more than |c| (on the phantom at G = 4, 576 samples for 384 channels): an unregularised fit
overfits the calibration images and made a G = 4 model worse than its independent twin. R is
therefore shrunk towards the identity, R_l = (S_{y y^} + l I)(S_{y^ y^} + l I)^-1 (large l gives
back the independent directions), and the amount is chosen per block by two-fold cross-validation
over the calibration images (even and odd images; the error of a rank-k fit on the other half
follows from that half's moments alone): l in :data:`SHRINKAGE` times the predictor scatter's mean
eigenvalue, or no refit at all when the independent block reconstructs the held-out images best.

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
from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress.hscc.decomposition import Block, LayerDecomp, Region
from hscc_core.compress.hscc.npz import read_npz, write_npz
from hscc_core.compress.hscc.plan import LayerPlan, Plan, layer_plan
from hscc_core.compress.hscc.regions import im2col, window, window_span
from hscc_core.compress.spectral import eig_desc, energy_ratio
from hscc_core.nn.layers import conv_paddings, replace_module

__all__ = ["SHRINKAGE", "CrossBlock", "CrossSource", "Moments", "cross_stats", "fit_sequential", "load_cross",
           "prefix_ident", "refit_layer", "save_cross"]

_FORMAT_VERSION = 1
# (layer name, prefix model, layer plan, prefix identity) -> the layer's cross statistics.
CrossSource = Callable[[str, nn.Module, LayerPlan, list], "list[list[CrossBlock | None]]"]


@dataclass(frozen=True, eq=False)
class Moments:
    """Centred moments of a block's target a (the original's) and predictor b (the compressed
    model's) over the same calibration samples."""

    count: int
    mean_a: np.ndarray  # (da,)
    mean_b: np.ndarray  # (db,)
    scatter_a: np.ndarray  # (da, da): sum (a - mean_a)(a - mean_a)^T
    scatter_b: np.ndarray  # (db, db)
    cross: np.ndarray  # (da, db): sum (a - mean_a)(b - mean_b)^T

    def merge(self, other: Moments) -> Moments:
        """The moments of both sample sets together (pairwise update, Chan et al.)."""
        n = self.count + other.count
        da, db = other.mean_a - self.mean_a, other.mean_b - self.mean_b
        f = self.count * other.count / n
        return Moments(n, self.mean_a + da * (other.count / n), self.mean_b + db * (other.count / n),
                       self.scatter_a + other.scatter_a + np.outer(da, da) * f,
                       self.scatter_b + other.scatter_b + np.outer(db, db) * f,
                       self.cross + other.cross + np.outer(da, db) * f)


FIELDS = ("mean_a", "mean_b", "scatter_a", "scatter_b", "cross")


@dataclass(frozen=True, eq=False)
class CrossBlock:
    """A block's moments on two halves of the calibration images (even and odd image index), so that
    the regularisation of its fit can be chosen on held-out images.

    ``basis`` is ``"output"`` when a and b are block outputs (y and y^ = W_c x^), ``"input"`` when
    they are the block's im2col rows (x and x^; input side with |c| kh kw < O).
    """

    basis: str
    folds: tuple[Moments, Moments]

    @property
    def all(self) -> Moments:
        return self.folds[0].merge(self.folds[1])


class _Moments:
    """Streaming float64 co-moments of (a, b) column samples, merged pairwise (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        nb = a.shape[1]
        if nb == 0:
            return
        ma, mb = a.mean(dim=1), b.mean(dim=1)
        ac, bc = a - ma[:, None], b - mb[:, None]
        saa, sbb, sab = ac @ ac.T, bc @ bc.T, ac @ bc.T
        if self.n == 0:
            self.n, self.ma, self.mb, self.saa, self.sbb, self.sab = nb, ma, mb, saa, sbb, sab
            return
        tot = self.n + nb
        da, db = ma - self.ma, mb - self.mb
        f = self.n * nb / tot
        self.saa += saa + torch.outer(da, da) * f
        self.sbb += sbb + torch.outer(db, db) * f
        self.sab += sab + torch.outer(da, db) * f
        self.ma += da * (nb / tot)
        self.mb += db * (nb / tot)
        self.n = tot

    def result(self) -> Moments:
        if self.n == 0:
            raise ValueError("a sequential fit needs at least two calibration images")
        return Moments(int(self.n), *(t.cpu().numpy() for t in (self.ma, self.mb, self.saa, self.sbb, self.sab)))


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


def _input_basis(ld: LayerDecomp, b: Block) -> bool:
    return ld.side.name == "input" and b.channels.size * ld.kernel_area < ld.out_channels


@torch.no_grad()
def cross_stats(original: nn.Module, prefix: nn.Module, name: str, lp: LayerPlan, images,
                batch_size: int = 32, progress: Callable[[int, int], None] | None = None
                ) -> list[list[CrossBlock | None]]:
    """Per region and block of layer ``name``, the moments a sequential fit needs (None for blocks
    that are not factorised), on the even and on the odd calibration images.

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
        Calibration images, normalised for the model (M >= 2).
    """
    conv = original.get_submodule(name)
    ld = lp.decomp
    pads = conv_paddings(conv)
    w = conv.weight.detach()
    acc = [[(_Moments(), _Moments()) if _factorised(lp, r, j) else None for j in range(len(reg.blocks))]
           for r, reg in enumerate(ld.regions)]
    flags = [(m, m.training) for mod in (original, prefix) for m in mod.modules()]
    original.eval()
    prefix.eval()
    m_images = int(images.shape[0])
    try:
        for start in range(0, m_images, batch_size):
            x_all, xh_all = _layer_inputs(original, prefix, name, images[start:start + batch_size])
            for fold in (0, 1):
                pick = torch.arange((start + fold) % 2, x_all.shape[0], 2, device=x_all.device)
                if pick.numel() == 0:
                    continue
                x, xh = x_all.index_select(0, pick), xh_all.index_select(0, pick)
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
                        if m is None:
                            continue
                        ch = torch.as_tensor(b.channels, device=win.device)
                        if ld.side.name == "output":
                            m[fold].update(ys[ch], yhs[ch])
                            continue
                        xc, xhc = im2col(win.index_select(1, ch), conv), im2col(winh.index_select(1, ch), conv)
                        if _input_basis(ld, b):  # the im2col basis (see module docstring)
                            m[fold].update(xc, xhc)
                        else:
                            wc = w[:, ch].reshape(w.shape[0], -1)
                            m[fold].update(wc @ xc, wc @ xhc)
            if progress is not None:
                progress(min(start + batch_size, m_images), m_images)
    finally:
        for m, was in flags:
            m.training = was
    return [[None if m is None else CrossBlock("input" if _input_basis(ld, b) else "output",
                                               (m[0].result(), m[1].result()))
             for b, m in zip(reg.blocks, row)] for reg, row in zip(ld.regions, acc)]


# --------------------------------------------------------------------------- the fit

# Shrinkage of the regression towards the identity (the independent fit), as multiples of the
# predictor scatter's mean eigenvalue: each block takes the one that reconstructs the held-out half
# of the calibration images best, or stays as the independent fit when that does better.
SHRINKAGE = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class _Fit:
    """A block's readout: output = mean + U_k V_k^T (W_c x^ - mean_in) (all n columns, or the top k)."""

    vals: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mean: np.ndarray
    mean_in: np.ndarray


class _Half:
    """One set of moments prepared for fits (the predictor scatter's eigenpairs) and for measuring a
    fit's error on its samples (everything mapped to the block's outputs)."""

    def __init__(self, basis: str, m: Moments, wc: np.ndarray) -> None:
        self.basis, self.m, self.wc = basis, m, wc
        self.d, self.q = np.linalg.eigh(m.scatter_b)
        self.d = np.clip(self.d, 0.0, None)
        to_out = (lambda a: a) if basis == "output" else (lambda a: wc @ a)  # a vector of a or b -> outputs
        self.taa = float(np.trace(m.scatter_a)) if basis == "output" else float(np.sum(wc * (wc @ m.scatter_a)))
        self.tab = m.cross if basis == "output" else wc @ m.cross @ wc.T  # outputs x outputs
        self.tbb = m.scatter_b if basis == "output" else wc @ m.scatter_b @ wc.T
        self.ma, self.mb = to_out(m.mean_a), to_out(m.mean_b)

    def fit(self, kappa: float, k: int | None = None) -> _Fit:
        """Reduced-rank regression shrunk by ``kappa`` (top ``k`` directions; all when None)."""
        m, q, d = self.m, self.q, self.d
        lam = kappa * max(float(d.mean()), np.finfo(np.float64).tiny)
        # R = (S_ab + l I)(S_bb + l I)^-1, from the eigenpairs of S_bb.
        r = ((m.cross + lam * np.eye(d.size)) @ q / (d + lam)[None, :]) @ q.T
        root = q * np.sqrt(d)[None, :]  # root root^T = S_bb
        if self.basis == "output":
            rl = r @ root
            fitted = rl @ rl.T  # the fitted scatter R S_bb R^T
            vals, u = eig_desc(fitted)
            if k is not None:
                vals, u = vals[:k], u[:, :k]
            return _Fit(vals, u, r.T @ u, m.mean_a, m.mean_b)
        # Input basis: a, b are the cluster's im2col rows x, x^ (d of them); y = W_c x, y^ = W_c x^.
        # Fitted partial output W_c B (x^ - mean_b); its scatter (W_c B L)(W_c B L)^T with L L^T = S_bb:
        # the SVD of W_c B L gives U and the eigenvalues without any O x O eigenproblem.
        wb = self.wc @ r
        u, sv, _ = np.linalg.svd(wb @ root, full_matrices=False)
        if k is not None:
            u, sv = u[:, :k], sv[:k]
        v = ((u.T @ wb) @ self.pinv).T  # V^T W_c = U^T W_c B when W_c has full column rank (d < O)
        return _Fit(sv**2, u, v, self.ma, self.mb)

    @property
    def pinv(self) -> np.ndarray:
        if not hasattr(self, "_pinv"):
            self._pinv = np.linalg.pinv(self.wc)
        return self._pinv

    def error(self, f: _Fit, k: int) -> float:
        """Squared error of the rank-k fit ``f`` on this half's samples, from their moments alone:
        tr S_aa - 2 tr(G S_ba) + tr(G S_bb G^T) + n |residual of the means|^2, G = U_k V_k^T."""
        u, v = f.u[:, :k], f.v[:, :k]
        resid = (self.ma - f.mean) - u @ (v.T @ (self.mb - f.mean_in))
        return (self.taa - 2 * float(np.sum(v * (self.tab.T @ u))) + float(np.sum(v * (self.tbb @ v)))
                + self.m.count * float(resid @ resid))


def _refit_block(b: Block, k: int, cs: CrossBlock, wc: np.ndarray) -> Block:
    """The block refitted to the compressed inputs, or left as it is when that reconstructs the
    held-out half of the calibration images better (see module docstring)."""
    independent = _Fit(b.eigvals, b.eigvecs, b.input_vecs, b.mean, b.input_mean)
    h0, h1 = (_Half(cs.basis, m, wc) for m in cs.folds)
    best, best_err = None, h0.error(independent, k) + h1.error(independent, k)
    for kappa in SHRINKAGE:
        err = h1.error(h0.fit(kappa, k), k) + h0.error(h1.fit(kappa, k), k)
        if err < best_err:
            best, best_err = kappa, err
    if best is None:
        return b
    f = _Half(cs.basis, cs.all, wc).fit(best)
    return replace(b, eigvals=f.vals, eigvecs=np.ascontiguousarray(f.u), mean=f.mean, ratio=energy_ratio(f.vals),
                   readout=np.ascontiguousarray(f.v), mean_in=f.mean_in)


def refit_layer(lp: LayerPlan, cross: list[list[CrossBlock | None]], conv: nn.Conv2d) -> LayerPlan:
    """The layer plan ``lp`` with every factorised block refitted from its cross statistics (same
    ranks, same dense flags, same MACs)."""
    ld = lp.decomp
    w = conv.weight.detach().to(torch.float64).cpu().numpy().reshape(ld.out_channels, -1)
    area = ld.kernel_area
    regions = []
    # Many small dense eigenproblems: one BLAS thread (on a loaded 2-core machine OpenBLAS's threads
    # made them several times slower, as in decomposition.py).
    with threadpool_limits(limits=1):
        for r, reg in enumerate(ld.regions):
            regions.append(_refit_region(lp, r, reg, cross[r], w, area))
    fitted = layer_plan(replace(ld, regions=tuple(regions)), lp.ranks)
    if fitted.dense != lp.dense:
        raise AssertionError("a refit must not change which blocks run densely")
    return fitted


def _refit_region(lp: LayerPlan, r: int, reg: Region, cross: list, w: np.ndarray, area: int) -> Region:
    """Region ``r`` of ``lp`` with its factorised blocks refitted (``w``: the layer's O x fan-in weight)."""
    ld = lp.decomp
    blocks = []
    for j, b in enumerate(reg.blocks):
        if not _factorised(lp, r, j):
            blocks.append(b)
            continue
        if cross[j] is None:
            raise ValueError(f"{ld.name}: no cross statistics for factorised block ({r}, {j})")
        if ld.side.name == "output":
            wc = w[b.channels]
        else:
            wc = w[:, (b.channels[:, None] * area + np.arange(area)[None, :]).ravel()]
        blocks.append(_refit_block(b, lp.ranks[r][j], cross[j], wc))
    return replace(reg, blocks=tuple(blocks))


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
    meta = {"version": _FORMAT_VERSION,
            "blocks": [[None if c is None else [c.basis, [m.count for m in c.folds]] for c in row] for row in cross]}
    arrays = {}
    for r, row in enumerate(cross):
        for j, c in enumerate(row):
            for f, m in enumerate(() if c is None else c.folds):
                for field in FIELDS:
                    arrays[f"r{r}_b{j}_f{f}_{field}"] = getattr(m, field)
    write_npz(path, meta, arrays)


def load_cross(path: str | os.PathLike) -> list[list[CrossBlock | None]]:
    """Read a file of :func:`save_cross` (``allow_pickle=False``)."""
    with read_npz(path, _FORMAT_VERSION, "cross-statistics") as (meta, z):
        try:
            return [[None if c is None else CrossBlock(c[0], tuple(
                        Moments(int(n), *(z[f"r{r}_b{j}_f{f}_{field}"] for field in FIELDS))
                        for f, n in enumerate(c[1])))
                     for j, c in enumerate(row)] for r, row in enumerate(meta["blocks"])]
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"cross-statistics file {path} has damaged metadata ({exc})") from None
