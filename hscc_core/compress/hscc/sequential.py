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
from torch import nn

from hscc_core.compress.hscc.decomposition import Block, LayerDecomp
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
    """A block's rank-k readout: output = mean + U_k V_k^T (W_c x^ - mean_in)."""

    vals: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mean: np.ndarray
    mean_in: np.ndarray


def _shrunk(m: Moments, kappa: float) -> np.ndarray:
    """(S_ab + l I)(S_bb + l I)^-1, l = kappa x the mean eigenvalue of S_bb: the regression of a on b
    shrunk towards the identity."""
    d = m.scatter_b.shape[0]
    lam = kappa * max(float(np.trace(m.scatter_b)) / d, np.finfo(np.float64).tiny)
    eye = np.eye(d)
    return np.linalg.solve((m.scatter_b + lam * eye).T, (m.cross + lam * eye).T).T


def _fit(basis: str, m: Moments, kappa: float, wc: np.ndarray) -> _Fit:
    """Reduced-rank regression of the target on the predictor with shrinkage ``kappa`` (all ranks)."""
    r = _shrunk(m, kappa)
    if basis == "output":
        rl = r @ _sqrt_psd(m.scatter_b)
        vals, u = eig_desc(rl @ rl.T)  # the fitted scatter R S_bb R^T
        return _Fit(vals, u, r.T @ u, m.mean_a, m.mean_b)
    # Input basis: a, b are the cluster's im2col rows x, x^ (d of them); y = W_c x, y^ = W_c x^.
    # Fitted partial output W_c B (x^ - mean_b); its scatter (W_c B L)(W_c B L)^T with L L^T = S_bb:
    # the SVD of W_c B L gives U and the eigenvalues without any O x O matrix.
    wb = wc @ r
    u, sv, _ = np.linalg.svd(wb @ _sqrt_psd(m.scatter_b), full_matrices=False)
    v = ((u.T @ wb) @ np.linalg.pinv(wc)).T  # V^T W_c = U^T W_c B when W_c has full column rank (d < O)
    return _Fit(sv**2, u, v, wc @ m.mean_a, wc @ m.mean_b)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(s)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))[None, :]


def _error(basis: str, f: _Fit, k: int, m: Moments, wc: np.ndarray) -> float:
    """Squared error of the rank-k fit ``f`` on the samples of ``m`` (from their moments alone)."""
    t = np.eye(m.scatter_a.shape[0]) if basis == "output" else wc  # target map: a -> the block's output
    g = f.u[:, :k] @ f.v[:, :k].T
    p = g if basis == "output" else g @ wc  # predictor map: b -> the block's output
    resid = t @ m.mean_a - p @ m.mean_b - (f.mean - g @ f.mean_in)
    return float(np.trace(t @ m.scatter_a @ t.T) - 2 * np.trace(p @ m.cross.T @ t.T)
                 + np.trace(p @ m.scatter_b @ p.T) + m.count * resid @ resid)


def _refit_block(b: Block, k: int, cs: CrossBlock, wc: np.ndarray) -> Block:
    """The block refitted to the compressed inputs, or left as it is when that reconstructs the
    held-out half of the calibration images better (see module docstring)."""
    independent = _Fit(b.eigvals, b.eigvecs, b.input_vecs, b.mean, b.input_mean)
    f0, f1 = cs.folds
    best, best_err = None, sum(_error(cs.basis, independent, k, m, wc) for m in (f0, f1))
    for kappa in SHRINKAGE:
        err = _error(cs.basis, _fit(cs.basis, f0, kappa, wc), k, f1, wc) + \
              _error(cs.basis, _fit(cs.basis, f1, kappa, wc), k, f0, wc)
        if err < best_err:
            best, best_err = kappa, err
    if best is None:
        return b
    f = _fit(cs.basis, cs.all, best, wc)
    return replace(b, eigvals=f.vals, eigvecs=np.ascontiguousarray(f.u), mean=f.mean, ratio=energy_ratio(f.vals),
                   readout=np.ascontiguousarray(f.v), mean_in=f.mean_in)


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
            blocks.append(_refit_block(b, lp.ranks[r][j], cs, wc))
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
