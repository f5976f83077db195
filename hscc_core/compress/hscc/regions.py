"""Region geometry of HSCC (Vacavant et al. 2026, arXiv 2604.23375, DESIGN 3.1): the G x G grid of a
layer's output map, the input window each region reads, and putting region outputs back together.

Both cluster sides cut a layer the same way: every region is computed from its own input window (the
rows and columns its outputs read, zero-padded only where the window leaves the map), convolved with
padding 0 and the layer's own stride and dilation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.nn.layers import conv_paddings

__all__ = ["GridLayout", "im2col", "out_size", "region_bounds", "tile_regions", "window", "window_span"]

Bounds = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class GridLayout:
    """Where a layer's regions lie: its map sizes, the grid asked for and the clamped grid, the bounds.

    ``regions`` are ``(h0, h1, w0, w1)`` half-open bounds on the output map, row-major over the
    clamped grid ``grid_hw``; ``grid`` is the grid that was asked for.
    """

    name: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    grid: int
    grid_hw: tuple[int, int]
    regions: tuple[Bounds, ...]

    @property
    def grid_clamped(self) -> bool:
        """True when the grid was reduced because the output map is smaller than G."""
        return self.grid_hw != (self.grid, self.grid)


def region_bounds(h: int, w: int, grid: int) -> list[Bounds]:
    """Split an ``h x w`` map into a grid of regions.

    Parameters
    ----------
    h, w : int
        Output-map size.
    grid : int
        Requested grid size G (>= 1); clamped per axis to ``h`` and ``w`` so no region is empty.

    Returns
    -------
    list of (h0, h1, w0, w1)
        Half-open bounds, row-major. Boundaries are ``linspace(0, n, G + 1)`` rounded half-up.
    """
    if grid < 1 or h < 1 or w < 1:
        raise ValueError(f"grid, h and w must be >= 1, got grid={grid}, h={h}, w={w}")

    def cuts(n: int) -> np.ndarray:
        g = min(grid, n)
        # Half-up rounding (not numpy's half-to-even) keeps the cuts strictly increasing when the
        # spacing n / g is >= 1, which the clamp guarantees.
        return np.floor(np.linspace(0, n, g + 1) + 0.5).astype(int)

    hc, wc = cuts(h), cuts(w)
    return [(int(hc[i]), int(hc[i + 1]), int(wc[j]), int(wc[j + 1]))
            for i in range(len(hc) - 1) for j in range(len(wc) - 1)]


def out_size(in_hw: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int]:
    """Output map size of ``conv`` on an ``in_hw`` input."""
    pt, pb, pl, pr = conv_paddings(conv)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    return ((in_hw[0] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (in_hw[1] + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def window_span(bounds: Bounds, kernel_size, stride, dilation, pads) -> Bounds:
    """Input rows [top, bottom) and columns [left, right) read by a region, in unpadded coordinates
    (the span may extend past the map into the zero padding)."""
    h0, h1, w0, w1 = bounds
    pt, _, pl, _ = pads
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    top, bottom = h0 * sh - pt, (h1 - 1) * sh - pt + dh * (kh - 1) + 1
    left, right = w0 * sw - pl, (w1 - 1) * sw - pl + dw * (kw - 1) + 1
    return top, bottom, left, right


def window(x: torch.Tensor, span: Bounds) -> torch.Tensor:
    """The input window of a region, zero-padded only where it leaves the map."""
    top, bottom, left, right = span
    hin, win = x.shape[-2:]
    a, b, c, e = max(top, 0), min(bottom, hin), max(left, 0), min(right, win)
    if a >= b or c >= e:  # the window lies entirely in the padding
        return x.new_zeros(x.shape[0], x.shape[1], bottom - top, right - left)
    out = x[:, :, a:b, c:e]
    pads = (c - left, right - e, a - top, bottom - b)
    return F.pad(out, pads) if any(pads) else out


def im2col(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(C kh kw, N Ho Wo) patches of an already padded ``x``, rows channel-major like the weight.

    Built from strided views and one copy: several times faster than ``F.unfold`` on CPU.
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    p = x.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]  # (N, C, Ho, W, kh)
    p = p.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]  # (N, C, Ho, Wo, kh, kw)
    return p.permute(1, 4, 5, 0, 2, 3).reshape(x.shape[1] * kh * kw, -1)


def tile_regions(outs: list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
    """Region outputs (NCHW, row-major over the grid) put together into the layer's output map."""
    gh, gw = grid_hw
    rows = [torch.cat(outs[i * gw:(i + 1) * gw], dim=3) if gw > 1 else outs[i * gw] for i in range(gh)]
    return torch.cat(rows, dim=2) if gh > 1 else rows[0]
