"""Tucker-2: the second weight-only baseline.

Kim et al. 2016, "Compression of deep convolutional neural networks for fast and low power mobile
applications": partial Tucker (HOOI, ``tensorly``) of W on its O and I modes, run as 1x1 (I -> r_in),
kh x kw core (r_in -> r_out, original stride/padding), 1x1 (r_out -> O). Per mode, the rank is the
smallest whose squared singular values (of that mode's unfolding) reach the energy threshold tau.
Mirrors :mod:`hscc_core.compress.svd`: :func:`tucker_decompose`, :func:`plan_tucker` (with
:func:`plan_tucker_macs` the budget cost function) and :func:`build_tucker`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from hscc_core.compress.spectral import check_energy, energy_rank, energy_ratio
from hscc_core.compress.summary import LayerSummary
from hscc_core.compress.weightonly import LayerwisePlan, baseline_summary, captured, weight64
from hscc_core.nn.layers import ConvShape, layer_shapes, needs_grad, pointwise, replace_module

__all__ = ["Tucker2Conv2d", "TuckerDecomposition", "TuckerPlan", "build_tucker", "plan_tucker",
           "plan_tucker_macs", "tucker_cost", "tucker_decompose"]


@dataclass(frozen=True, eq=False)
class TuckerLayer:
    shape: ConvShape
    weight: np.ndarray  # (O, I, kh, kw) float64
    ratio_out: np.ndarray  # mode-0 unfolding energy
    ratio_in: np.ndarray  # mode-1 unfolding energy


@dataclass(frozen=True, eq=False)
class TuckerDecomposition:
    layers: dict[str, TuckerLayer]
    seed: int

    @property
    def original_macs(self) -> int:
        return sum(ly.shape.original_macs for ly in self.layers.values())


def tucker_decompose(
    model: nn.Module, layers: list[str] | None = None, *, input_shape: tuple[int, ...], seed: int = 0
) -> TuckerDecomposition:
    """Mode spectra of each layer's weight (cheap); HOOI runs in :func:`build_tucker` at the planned ranks.

    Parameters
    ----------
    model : nn.Module
    layers : list of str, optional
        Conv2d (groups=1) layers; default all of them.
    input_shape : tuple
        Model input shape (N, C, H, W); needed for the layers' map sizes (MACs).
    seed : int
        ``random_state`` passed to tensorly (HOOI with SVD initialisation is deterministic anyway).
    """
    shapes = layer_shapes(model, input_shape, layers)
    out = {}
    for name, sh in shapes.items():
        w = weight64(model.get_submodule(name))
        s_out = np.linalg.svd(w.reshape(sh.out_channels, -1), compute_uv=False)
        s_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(sh.in_channels, -1), compute_uv=False)
        out[name] = TuckerLayer(sh, w, energy_ratio(s_out ** 2), energy_ratio(s_in ** 2))
    return TuckerDecomposition(out, seed)


def tucker_cost(sh: ConvShape, r_out: int, r_in: int) -> tuple[int, bool]:
    kh, kw = sh.kernel_size
    hw_in = sh.in_hw[0] * sh.in_hw[1]
    hw_out = sh.out_hw[0] * sh.out_hw[1]
    # The first 1x1 runs on the unpadded input map (zero padding commutes with it).
    fact = hw_in * sh.in_channels * r_in + hw_out * (r_in * r_out * kh * kw + r_out * sh.out_channels)
    dense = sh.original_macs
    return (dense, True) if fact >= dense or r_in == 0 or r_out == 0 else (fact, False)


@dataclass(frozen=True, eq=False)
class TuckerPlan(LayerwisePlan):
    decomp: TuckerDecomposition
    ranks: dict[str, tuple[int, int]]  # (r_out, r_in)
    energy: float | None  # None for a greedy plan (no single threshold describes it)

    def layer_captured(self, name: str) -> float:
        """The mean of the two modes' captured energy fractions (what greedy allocation buys)."""
        ly, (ro, ri) = self.decomp.layers[name], self.ranks[name]
        return 0.5 * (captured(ly.ratio_out, ro) + captured(ly.ratio_in, ri))

    def layer_macs(self, name: str) -> int:
        return tucker_cost(self.decomp.layers[name].shape, *self.ranks[name])[0]

    def is_dense(self, name: str) -> bool:
        return tucker_cost(self.decomp.layers[name].shape, *self.ranks[name])[1]

    def summaries(self) -> dict[str, LayerSummary]:
        out = {}
        for n, (ro, ri) in self.ranks.items():
            sh = self.decomp.layers[n].shape
            dense = self.is_dense(n)
            out[n] = baseline_summary("tucker", sh, self.layer_macs(n), dense, sh.out_channels if dense else ro,
                                      sh.out_channels, rank_out=ro, rank_in=ri)
        return out


def plan_tucker(decomp: TuckerDecomposition, energy: float) -> TuckerPlan:
    """Per-layer (r_out, r_in): per mode, smallest rank whose squared singular values reach ``energy``."""
    energy = check_energy(energy)
    ranks = {n: (energy_rank(ly.ratio_out, energy), energy_rank(ly.ratio_in, energy))
             for n, ly in decomp.layers.items()}
    return TuckerPlan(decomp, ranks, energy)


def plan_tucker_macs(decomp: TuckerDecomposition, energy: float) -> int:
    """Budget cost function of Tucker-2: analytical MACs at ``energy``."""
    return plan_tucker(decomp, energy).macs()


class Tucker2Conv2d(nn.Sequential):
    """1x1 (I -> r_in), kh x kw core (r_in -> r_out, original stride/padding), 1x1 (r_out -> O) + bias.

    The inference forward runs both 1x1 maps as GEMMs on channels_last rows and the core as a
    channels_last convolution; with gradients it runs the three modules as they are.
    """

    own_memory_format = True  # its weights' layouts are its own (hscc_core.measure.costs.timing_layout)

    def __init__(self, conv: nn.Conv2d, core: np.ndarray, f_out: np.ndarray, f_in: np.ndarray):
        r_out, r_in = core.shape[:2]
        dev, dt = conv.weight.device, conv.weight.dtype
        first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False, device=dev, dtype=dt)
        mid = nn.Conv2d(
            r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode, device=dev, dtype=dt,
        )
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None, device=dev, dtype=dt)
        first.weight.data.copy_(torch.as_tensor(f_in.T.reshape(first.weight.shape), dtype=dt))
        mid.weight.data = torch.as_tensor(np.ascontiguousarray(core), dtype=dt, device=dev).contiguous(
            memory_format=torch.channels_last)
        last.weight.data.copy_(torch.as_tensor(f_out.reshape(last.weight.shape), dtype=dt))
        if conv.bias is not None:
            last.bias.data.copy_(conv.bias.detach())
        super().__init__(first, mid, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(self, x):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        return pointwise(self[1](pointwise(x, self[0])), self[2])


def build_tucker(model: nn.Module, plan: TuckerPlan) -> nn.Module:
    """Deep copy of ``model`` with each non-dense planned layer replaced by a Tucker2Conv2d (HOOI)."""
    out = copy.deepcopy(model)
    for name, (r_out, r_in) in plan.ranks.items():
        if plan.is_dense(name):
            continue
        ly = plan.decomp.layers[name]
        with tl.backend_context("numpy"):
            (core, (f_out, f_in)), _ = partial_tucker(
                ly.weight, rank=[r_out, r_in], modes=[0, 1], init="svd",
                random_state=plan.decomp.seed,
            )
        conv = model.get_submodule(name)
        replace_module(out, name, Tucker2Conv2d(conv, np.asarray(core), np.asarray(f_out), np.asarray(f_in)))
    return out
