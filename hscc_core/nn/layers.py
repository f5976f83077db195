"""Layer helpers shared by every compression method: finding, measuring and replacing convolutions.

Nothing here knows about a particular method: which convolutions can be compressed, their padding,
the map sizes they run at, swapping a submodule for its compressed version, and the two small
execution helpers (a 1x1 convolution as one GEMM, channels_last where it pays) that every factorised
layer uses so that speed comparisons between methods are fair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ConvShape",
    "channels_last",
    "compress_candidates",
    "conv_paddings",
    "layer_shapes",
    "needs_grad",
    "pointwise",
    "replace_module",
    "resolve_layers",
    "run_hooked",
]

# A map with fewer channels than this (an image) stays NCHW: converting 3 channels to channels_last
# costs more than oneDNN gains from it.
MIN_CHANNELS_LAST = 8


def compress_candidates(model: nn.Module) -> list[str]:
    """Qualified names of the layers every method can compress (Conv2d with groups=1), in order."""
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and mod.groups == 1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (e.g. ``"features.3"``) by ``new``, in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise KeyError(f"no submodule {name!r}")
    setattr(parent, child, new)


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
def layer_shapes(model: nn.Module, input_shape: tuple[int, ...],
                 layers: list[str] | None = None) -> dict[str, ConvShape]:
    """Shapes of the named Conv2d layers, found with one forward pass on zeros of ``input_shape``.

    Parameters
    ----------
    model : nn.Module
        Not modified; run in eval mode and every submodule's mode restored.
    input_shape : tuple
        (N, C, H, W) of the model's input (only C, H and W are used).
    layers : list of str, optional
        Conv2d (groups=1) layers; default :func:`compress_candidates`.
    """
    names = compress_candidates(model) if layers is None else list(layers)
    seen: dict[str, ConvShape] = {}
    handles = []
    for n in names:
        mod = model.get_submodule(n)
        if not isinstance(mod, nn.Conv2d) or mod.groups != 1:
            raise ValueError(f"layer {n!r} is not a Conv2d with groups=1")

        def hook(m, inp, out, n=n):
            seen[n] = ConvShape(m.in_channels, m.out_channels, tuple(m.kernel_size),
                                tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))

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


def needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    """True when autograd must see ``module``'s forward (training or an input that needs grad):
    the in-place fast paths then give way to plain module calls."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory, except a map with few channels (an image), kept as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.shape[1] >= MIN_CHANNELS_LAST else x


def pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution as one GEMM over (image, position) rows, channels_last in and out.

    oneDNN runs 1x1 convolutions with few channels poorly (NCHW especially); a plain GEMM with the
    bias fused (``addmm``) does the same MACs, which FlopCounterMode counts alike.
    """
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
    wt = conv.weight.view(conv.out_channels, c).t()
    y = torch.addmm(conv.bias, rows, wt) if conv.bias is not None else torch.mm(rows, wt)
    return y.view(n, h, w, conv.out_channels).permute(0, 3, 1, 2)


def resolve_layers(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """``layers`` checked to be Conv2d (groups=1, zero padding) layers of ``model``; default all of them.

    Raises
    ------
    ValueError
        A name that is not such a layer, or no layer at all.
    """
    mods = dict(model.named_modules())
    names = compress_candidates(model) if layers is None else list(layers)
    for n in names:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            raise ValueError(f"layer {n!r} is not a Conv2d with groups=1 in this model")
        conv_paddings(m)  # rejects unsupported padding modes early
    if not names:
        raise ValueError("no layer to compress")
    return names


class _Stop(Exception):
    """Raised once every hooked layer has run: nothing after it (e.g. the classifier) is needed."""


@torch.no_grad()
def run_hooked(model: nn.Module, images: torch.Tensor, hooks: dict, batch_size: int = 32,
               progress=None, pre: bool = False) -> None:
    """Run ``model`` over ``images`` in batches with a hook on each named layer, in eval mode.

    Parameters
    ----------
    model : nn.Module
        Not modified; each submodule's mode is restored afterwards.
    images : torch.Tensor
        (M, C, H, W), moved batch by batch to the model's device.
    hooks : dict of str to callable
        ``fn(inputs, output)`` per layer name (``fn(inputs)`` when ``pre``), called on every batch.
    batch_size : int
    progress : callable(done), optional
        Called after each batch with the number of images done.
    pre : bool
        Forward pre-hooks (the layer's input only).

    The forward pass stops after the last hooked layer of each batch: the rest of the network is
    not needed.
    """
    mods = dict(model.named_modules())
    done: set[str] = set()

    def make(name, fn):
        def call(*args):
            fn(*args[1:])
            done.add(name)
            if len(done) == len(hooks):
                raise _Stop
        return call

    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    handles = [getattr(mods[n], register)(make(n, f)) for n, f in hooks.items()]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, images.shape[0], batch_size):
            done.clear()
            try:
                model(images[start:start + batch_size].to(device))
            except _Stop:
                pass
            if progress is not None:
                progress(min(start + batch_size, images.shape[0]))
    finally:
        for h in handles:
            h.remove()
        for m, was in flags:  # restore each submodule's own mode
            m.training = was
