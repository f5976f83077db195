"""Grey input folded into a one-channel first convolution.

MRI slices are grey, but AlexNet (Krizhevsky et al. 2012, torchvision's architecture) reads three
channels, so every image used to be copied into three identical channels. A convolution over three
identical channels equals a convolution over one channel with the sum of the three input-channel
slices of its weight::

    sum_c W[:, c] * x  =  (sum_c W[:, c]) * x

:func:`fold_grey_input` makes that exact substitution (up to float round-off), so conv1 reads 121
weights per output instead of 363 and its FLOPs drop to a third, for the original model and every
compressed one alike. Training keeps the three-channel architecture (checkpoints stay valid); the
fold happens when the workspace loads a baseline. Every model input is then one channel: take the
count from the model with :func:`input_channels` and :func:`input_shape`, never from a constant.
"""

from __future__ import annotations

import torch
from torch import nn

from hscc_core.nn.layers import replace_module

__all__ = ["fold_grey_input", "input_channels", "input_shape"]


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError("the model has no Conv2d layer")


def input_channels(model: nn.Module) -> int:
    """Channels the model reads: the input channels of its first convolution, in module order
    (forward order for every architecture here).

    A compressed first layer counts as one convolution: an HSCC region layer reads every input
    channel although its inner convolutions may read a cluster of them (the input side), so a
    module with ``in_channels`` of its own answers before its children do.
    """
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or isinstance(getattr(m, "in_channels", None), int):
            return int(m.in_channels)
    raise ValueError("the model has no Conv2d layer")


def input_shape(model: nn.Module, size: int, batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, channels, size, size): the input shape of ``model`` for square ``size``-pixel images."""
    return (int(batch), input_channels(model), int(size), int(size))


@torch.no_grad()
def fold_grey_input(model: nn.Module) -> nn.Module:
    """Replace a first convolution that reads copies of one grey channel by its one-channel sum.

    Parameters
    ----------
    model : nn.Module
        Changed in place (its first Conv2d is swapped for a new one); a model whose first
        convolution already reads one channel is returned unchanged.

    Returns
    -------
    nn.Module
        ``model``, whose outputs on a grey image (N, 1, H, W) equal the unfolded model's outputs on
        the same image repeated into its channels (N, C, H, W), to float round-off.
    """
    name, conv = _first_conv(model)
    if conv.in_channels == 1:
        return model
    if conv.groups != 1:
        raise ValueError(f"cannot fold a grouped first convolution ({name}, groups={conv.groups})")
    folded = nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    # Summed in float64, then rounded once: the closest float32 weight to the exact sum.
    folded.weight.copy_(conv.weight.to(torch.float64).sum(dim=1, keepdim=True).to(conv.weight.dtype))
    if conv.bias is not None:
        folded.bias.copy_(conv.bias)
    folded.train(conv.training)
    replace_module(model, name, folded)
    return model
