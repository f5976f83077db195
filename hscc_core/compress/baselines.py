"""Weight-only low-rank baselines: Global SVD and Tucker-2.

* **Global SVD** (Denton et al. 2014, "Exploiting linear structure within convolutional networks
  for efficient evaluation"; Jaderberg et al. 2014, "Speeding up convolutional neural networks with
  low rank expansions"): truncated SVD of W reshaped to O x (I kh kw), run as a k-channel kh x kw
  convolution followed by a 1x1 convolution with the bias.
* **Tucker-2** (Kim et al. 2016, "Compression of deep convolutional neural networks for fast and
  low power mobile applications"): partial Tucker (HOOI, ``tensorly``) of W on its O and I modes,
  run as 1x1 (I -> r_in), kh x kw core (r_in -> r_out, original stride/padding), 1x1 (r_out -> O).

Both mirror HSCC's three steps: ``*_decompose`` (once per model), ``plan_*`` (ranks for one energy
threshold tau, the smallest rank whose squared singular values reach tau; ``plan_*_macs`` is the
budget cost function) and ``build_*`` (a deep copy with real factorised modules). A layer stays
dense whenever its factorisation would not be cheaper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from hscc_core.compress.calibration import compress_candidates
from hscc_core.compress.hscc import energy_rank, replace_module

__all__ = [
    "LowRankConv2d",
    "SVDDecomposition",
    "SVDPlan",
    "Tucker2Conv2d",
    "TuckerDecomposition",
    "TuckerPlan",
    "build_svd",
    "build_tucker",
    "layer_shapes",
    "plan_svd",
    "plan_svd_macs",
    "plan_tucker",
    "plan_tucker_macs",
    "svd_decompose",
    "tucker_decompose",
]


@dataclass(frozen=True)
class ConvShape:
    """A convolution's geometry and the input/output map sizes it runs at."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    @property
    def original_macs(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.out_channels * self.fan_in


@torch.no_grad()
def layer_shapes(
    model: nn.Module, input_shape: tuple[int, ...], layers: list[str] | None = None
) -> dict[str, ConvShape]:
    """Shapes of the named Conv2d layers, found with one forward pass on zeros of ``input_shape``."""
    names = compress_candidates(model) if layers is None else list(layers)
    seen: dict[str, ConvShape] = {}
    handles = []
    for n in names:
        mod = model.get_submodule(n)
        if not isinstance(mod, nn.Conv2d) or mod.groups != 1:
            raise ValueError(f"layer {n!r} is not a Conv2d with groups=1")

        def hook(m, inp, out, n=n):
            seen[n] = ConvShape(
                m.in_channels, m.out_channels, tuple(m.kernel_size),
                tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]),
            )

        handles.append(mod.register_forward_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros((1, *tuple(input_shape)[1:]), device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, was in flags:
            m.training = was
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"layers not executed by the forward pass: {missing}")
    return {n: seen[n] for n in names}


def _ratio(s: np.ndarray) -> np.ndarray:
    e = s.astype(np.float64) ** 2
    t = e.sum()
    return np.cumsum(e) / t if t > 0 else np.array([])


def _weight(conv: nn.Conv2d) -> np.ndarray:
    return conv.weight.detach().to(torch.float64).cpu().numpy()


def _summary_common(shape: ConvShape, macs: int, dense: bool) -> dict:
    return {
        "in_hw": list(shape.in_hw),
        "out_hw": list(shape.out_hw),
        "dense": bool(dense),
        "macs": int(macs),
        "original_macs": int(shape.original_macs),
    }


# --------------------------------------------------------------------------- Global SVD


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


def svd_decompose(
    model: nn.Module, layers: list[str] | None = None, *, input_shape: tuple[int, ...]
) -> SVDDecomposition:
    """SVD of each layer's weight reshaped to O x (I kh kw).

    Parameters
    ----------
    model : nn.Module
    layers : list of str, optional
        Conv2d (groups=1) layers; default all of them.
    input_shape : tuple
        Model input shape (N, C, H, W); needed for the layers' output sizes (MACs).
    """
    shapes = layer_shapes(model, input_shape, layers)
    out = {}
    for name, sh in shapes.items():
        w = _weight(model.get_submodule(name)).reshape(sh.out_channels, -1)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        out[name] = SVDLayer(sh, u, s, vt, _ratio(s))
    return SVDDecomposition(out)


def _svd_cost(sh: ConvShape, k: int) -> tuple[int, bool]:
    per_pos = k * (sh.fan_in + sh.out_channels)
    dense = sh.out_channels * sh.fan_in
    hw = sh.out_hw[0] * sh.out_hw[1]
    return (hw * dense, True) if per_pos >= dense else (hw * per_pos, False)


@dataclass(frozen=True, eq=False)
class SVDPlan:
    decomp: SVDDecomposition
    ranks: dict[str, int]
    energy: float

    def layer_macs(self, name: str) -> int:
        return _svd_cost(self.decomp.layers[name].shape, self.ranks[name])[0]

    def is_dense(self, name: str) -> bool:
        return _svd_cost(self.decomp.layers[name].shape, self.ranks[name])[1]

    def macs(self) -> int:
        """Analytical MACs of the compressed layers at batch 1."""
        return sum(self.layer_macs(n) for n in self.ranks)

    def original_macs(self) -> int:
        return self.decomp.original_macs

    def layer_summary(self) -> dict:
        out = {}
        for n, k in self.ranks.items():
            ly = self.decomp.layers[n]
            out[n] = {"rank": int(k), "full_rank": int(ly.s.size)}
            out[n].update(_summary_common(ly.shape, self.layer_macs(n), self.is_dense(n)))
        return out


def plan_svd(decomp: SVDDecomposition, energy: float) -> SVDPlan:
    """Per-layer rank: smallest k whose squared singular values reach ``energy`` in (0, 1]."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    ranks = {n: energy_rank(ly.ratio, energy) for n, ly in decomp.layers.items()}
    return SVDPlan(decomp, ranks, float(energy))


def plan_svd_macs(decomp: SVDDecomposition, energy: float) -> int:
    """Budget cost function of Global SVD: analytical MACs at ``energy``."""
    return plan_svd(decomp, energy).macs()


def _needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution as one GEMM over (image, position) rows, channels_last in and out.

    oneDNN runs 1x1 convolutions with few channels poorly (NCHW especially); a plain GEMM with
    the bias fused (``addmm``) does the same MACs, which FlopCounterMode counts alike.
    """
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
    wt = conv.weight.view(conv.out_channels, c).t()
    y = torch.addmm(conv.bias, rows, wt) if conv.bias is not None else torch.mm(rows, wt)
    return y.view(n, h, w, conv.out_channels).permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # An RGB image stays NCHW: converting 3 channels costs more than oneDNN gains from it.
    return x.contiguous(memory_format=torch.channels_last) if x.shape[1] >= 8 else x


class LowRankConv2d(nn.Sequential):
    """k-channel kh x kw convolution (original stride/padding/dilation) then a 1x1 convolution.

    The inference forward runs the 1x1 map as one GEMM on channels_last rows (same care as
    :class:`hscc_core.compress.hscc.HSCCConv2d`, so speed comparisons are fair); with gradients it runs
    the two modules as they are.
    """

    def __init__(self, conv: nn.Conv2d, first: np.ndarray, second: np.ndarray, bias: torch.Tensor | None):
        k = first.shape[0]
        dev, dt = conv.weight.device, conv.weight.dtype
        reduce = nn.Conv2d(
            conv.in_channels, k, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode, device=dev, dtype=dt,
        )
        expand = nn.Conv2d(k, conv.out_channels, 1, bias=bias is not None, device=dev, dtype=dt)
        # channels_last weights make oneDNN produce channels_last maps (rows for the GEMM).
        first_t = torch.as_tensor(first.reshape(reduce.weight.shape), dtype=dt, device=dev)
        reduce.weight.data = first_t.contiguous(memory_format=torch.channels_last)
        expand.weight.data.copy_(torch.as_tensor(second.reshape(expand.weight.shape), dtype=dt))
        if bias is not None:
            expand.bias.data.copy_(bias.detach())
        super().__init__(reduce, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_grad(self, x):
            return super().forward(x)
        return _pointwise(self[0](_channels_last(x)), self[1])


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
        first = root[:, None] * ly.vt[:k]
        second = ly.u[:, :k] * root[None, :]
        replace_module(out, name, LowRankConv2d(conv, first, second, conv.bias))
    return out


# --------------------------------------------------------------------------- Tucker-2


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
        w = _weight(model.get_submodule(name))
        s_out = np.linalg.svd(w.reshape(sh.out_channels, -1), compute_uv=False)
        s_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(sh.in_channels, -1), compute_uv=False)
        out[name] = TuckerLayer(sh, w, _ratio(s_out), _ratio(s_in))
    return TuckerDecomposition(out, seed)


def _tucker_cost(sh: ConvShape, r_out: int, r_in: int) -> tuple[int, bool]:
    kh, kw = sh.kernel_size
    hw_in = sh.in_hw[0] * sh.in_hw[1]
    hw_out = sh.out_hw[0] * sh.out_hw[1]
    # The first 1x1 runs on the unpadded input map (zero padding commutes with it).
    fact = hw_in * sh.in_channels * r_in + hw_out * (r_in * r_out * kh * kw + r_out * sh.out_channels)
    dense = sh.original_macs
    return (dense, True) if fact >= dense or r_in == 0 or r_out == 0 else (fact, False)


@dataclass(frozen=True, eq=False)
class TuckerPlan:
    decomp: TuckerDecomposition
    ranks: dict[str, tuple[int, int]]  # (r_out, r_in)
    energy: float

    def layer_macs(self, name: str) -> int:
        return _tucker_cost(self.decomp.layers[name].shape, *self.ranks[name])[0]

    def is_dense(self, name: str) -> bool:
        return _tucker_cost(self.decomp.layers[name].shape, *self.ranks[name])[1]

    def macs(self) -> int:
        """Analytical MACs of the compressed layers at batch 1."""
        return sum(self.layer_macs(n) for n in self.ranks)

    def original_macs(self) -> int:
        return self.decomp.original_macs

    def layer_summary(self) -> dict:
        out = {}
        for n, (ro, ri) in self.ranks.items():
            ly = self.decomp.layers[n]
            out[n] = {"rank_out": int(ro), "rank_in": int(ri)}
            out[n].update(_summary_common(ly.shape, self.layer_macs(n), self.is_dense(n)))
        return out


def plan_tucker(decomp: TuckerDecomposition, energy: float) -> TuckerPlan:
    """Per-layer (r_out, r_in): per mode, smallest rank whose squared singular values reach ``energy``."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    ranks = {
        n: (energy_rank(ly.ratio_out, energy), energy_rank(ly.ratio_in, energy))
        for n, ly in decomp.layers.items()
    }
    return TuckerPlan(decomp, ranks, float(energy))


def plan_tucker_macs(decomp: TuckerDecomposition, energy: float) -> int:
    """Budget cost function of Tucker-2: analytical MACs at ``energy``."""
    return plan_tucker(decomp, energy).macs()


class Tucker2Conv2d(nn.Sequential):
    """1x1 (I -> r_in), kh x kw core (r_in -> r_out, original stride/padding), 1x1 (r_out -> O) + bias.

    The inference forward runs both 1x1 maps as GEMMs on channels_last rows and the core as a
    channels_last convolution; with gradients it runs the three modules as they are.
    """

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
        if _needs_grad(self, x):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        return _pointwise(self[1](_pointwise(x, self[0])), self[2])


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
