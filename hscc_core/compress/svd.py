"""Global SVD: the weight-only low-rank baseline.

Denton et al. 2014, "Exploiting linear structure within convolutional networks for efficient
evaluation"; Jaderberg et al. 2014, "Speeding up convolutional neural networks with low rank
expansions". Truncated SVD of W reshaped to O x (I kh kw), run as a k-channel kh x kw convolution
followed by a 1x1 convolution with the bias. Mirrors HSCC's steps: :func:`svd_decompose` (once per
model), :func:`plan_svd` (ranks for one energy threshold tau: the smallest rank whose squared
singular values reach tau; :func:`plan_svd_macs` is the budget cost function) and :func:`build_svd`
(a deep copy with real factorised modules). A layer stays dense whenever its factorisation would not
be cheaper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hscc_core.compress.spectral import check_energy, energy_rank, energy_ratio
from hscc_core.compress.summary import LayerSummary
from hscc_core.compress.weightonly import LayerwisePlan, baseline_summary, captured, weight64
from hscc_core.nn.layers import ConvShape, channels_last, layer_shapes, needs_grad, pointwise, replace_module

__all__ = ["LowRankConv2d", "SVDDecomposition", "SVDPlan", "build_svd", "plan_svd", "plan_svd_macs",
           "svd_cost", "svd_decompose"]


@dataclass(frozen=True, eq=False)
class SVDLayer:
    shape: ConvShape
    u: np.ndarray  # (O, n)
    s: np.ndarray  # (n,) descending
    vt: np.ndarray  # (n, I kh kw)
    ratio: np.ndarray


@dataclass(frozen=True, eq=False)
class SVDDecomposition:
    layers: dict[str, SVDLayer]

    @property
    def original_macs(self) -> int:
        return sum(ly.shape.original_macs for ly in self.layers.values())


def svd_decompose(model: nn.Module, layers: list[str] | None = None, *,
                  input_shape: tuple[int, ...]) -> SVDDecomposition:
    """SVD of each layer's weight reshaped to O x (I kh kw).

    Parameters
    ----------
    model : nn.Module
    layers : list of str, optional
        Conv2d (groups=1) layers; default all of them.
    input_shape : tuple
        Model input shape (N, C, H, W); needed for the layers' output sizes (MACs).
    """
    out = {}
    for name, sh in layer_shapes(model, input_shape, layers).items():
        w = weight64(model.get_submodule(name)).reshape(sh.out_channels, -1)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        out[name] = SVDLayer(sh, u, s, vt, energy_ratio(s ** 2))
    return SVDDecomposition(out)


def svd_cost(sh: ConvShape, k: int) -> tuple[int, bool]:
    per_pos = k * (sh.fan_in + sh.out_channels)
    dense = sh.out_channels * sh.fan_in
    hw = sh.out_hw[0] * sh.out_hw[1]
    return (hw * dense, True) if per_pos >= dense else (hw * per_pos, False)


@dataclass(frozen=True, eq=False)
class SVDPlan(LayerwisePlan):
    decomp: SVDDecomposition
    ranks: dict[str, int]
    energy: float | None  # None for a greedy plan (no single threshold describes it)

    def layer_captured(self, name: str) -> float:
        return captured(self.decomp.layers[name].ratio, self.ranks[name])

    def layer_macs(self, name: str) -> int:
        return svd_cost(self.decomp.layers[name].shape, self.ranks[name])[0]

    def is_dense(self, name: str) -> bool:
        return svd_cost(self.decomp.layers[name].shape, self.ranks[name])[1]

    def summaries(self) -> dict[str, LayerSummary]:
        out = {}
        for n, k in self.ranks.items():
            ly = self.decomp.layers[n]
            dense = self.is_dense(n)
            out[n] = baseline_summary("svd", ly.shape, self.layer_macs(n), dense,
                                      ly.s.size if dense else k, ly.s.size, rank=k, full_rank=ly.s.size)
        return out


def plan_svd(decomp: SVDDecomposition, energy: float) -> SVDPlan:
    """Per-layer rank: smallest k whose squared singular values reach ``energy`` in (0, 1]."""
    energy = check_energy(energy)
    return SVDPlan(decomp, {n: energy_rank(ly.ratio, energy) for n, ly in decomp.layers.items()}, energy)


def plan_svd_macs(decomp: SVDDecomposition, energy: float) -> int:
    """Budget cost function of Global SVD: analytical MACs at ``energy``."""
    return plan_svd(decomp, energy).macs()


class LowRankConv2d(nn.Sequential):
    """k-channel kh x kw convolution (original stride/padding/dilation) then a 1x1 convolution.

    The inference forward runs the 1x1 map as one GEMM on channels_last rows (the same care as the
    HSCC layers, so speed comparisons are fair); with gradients it runs the two modules as they are.
    """

    own_memory_format = True  # its weights' layouts are its own (hscc_core.measure.costs.timing_layout)

    def __init__(self, conv: nn.Conv2d, first: np.ndarray, second: np.ndarray, bias: torch.Tensor | None):
        k = first.shape[0]
        dev, dt = conv.weight.device, conv.weight.dtype
        reduce = nn.Conv2d(conv.in_channels, k, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                           dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode, device=dev, dtype=dt)
        expand = nn.Conv2d(k, conv.out_channels, 1, bias=bias is not None, device=dev, dtype=dt)
        # channels_last weights make oneDNN produce channels_last maps (rows for the GEMM).
        first_t = torch.as_tensor(first.reshape(reduce.weight.shape), dtype=dt, device=dev)
        reduce.weight.data = first_t.contiguous(memory_format=torch.channels_last)
        expand.weight.data.copy_(torch.as_tensor(second.reshape(expand.weight.shape), dtype=dt))
        if bias is not None:
            expand.bias.data.copy_(bias.detach())
        super().__init__(reduce, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(self, x):
            return super().forward(x)
        return pointwise(self[0](channels_last(x)), self[1])


def build_svd(model: nn.Module, plan: SVDPlan) -> nn.Module:
    """Deep copy of ``model`` with each non-dense planned layer replaced by a LowRankConv2d."""
    out = copy.deepcopy(model)
    for name, k in plan.ranks.items():
        if plan.is_dense(name) or k == 0:
            continue
        ly = plan.decomp.layers[name]
        conv = model.get_submodule(name)
        # Split the singular values evenly between the factors (better conditioned for fine-tuning).
        root = np.sqrt(ly.s[:k])
        replace_module(out, name, LowRankConv2d(conv, root[:, None] * ly.vt[:k], ly.u[:, :k] * root[None, :],
                                                conv.bias))
    return out
