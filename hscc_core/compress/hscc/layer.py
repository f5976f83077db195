"""The region-layer base both HSCC module types share: geometry, windows, tiling, spec and MACs.

An HSCC layer (Vacavant et al. 2026, arXiv 2604.23375, DESIGN 3.6) replaces a convolution by one
small module per region of its output grid; each region is computed from its own input window. What
differs between the cluster sides is only what a region module does with its window (see
:mod:`hscc_core.compress.hscc.output_conv` and :mod:`hscc_core.compress.hscc.input_conv`); this base
holds the rest, once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hscc_core.compress.hscc.regions import tile_regions, window, window_span
from hscc_core.nn.layers import conv_paddings

__all__ = ["RegionLayer"]

_GEOMETRY_TUPLES = ("kernel_size", "stride", "dilation", "pads", "out_hw", "grid_hw")


class RegionLayer(nn.Module):
    """Base of the HSCC layers: a convolution cut into regions, one region module each.

    Subclasses set ``cluster_side``, build ``self.regions`` (an ``nn.ModuleList`` of region modules,
    row-major over ``grid_hw``) and implement :meth:`forward` (the fast inference path) and
    :meth:`region_from_spec`. Region modules provide ``forward_reference(window)`` (NCHW),
    ``macs_per_position()`` and ``spec()``.
    """

    cluster_side = ""
    # The layer picks its own memory layouts (channels-last output, packed programs): timing leaves
    # its weights as they are (hscc_core.measure.costs.timing_layout).
    own_memory_format = True

    def _set_geometry(self, conv: nn.Conv2d, out_hw, grid_hw, bounds) -> None:
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.pads = conv_paddings(conv)
        self.out_hw = tuple(out_hw)
        self.grid_hw = tuple(grid_hw)
        self._set_bounds(bounds)

    def _set_bounds(self, bounds) -> None:
        self.bounds = [tuple(int(v) for v in b) for b in bounds]
        # The input rows/columns each region reads, unpadded (may reach into the padding) ...
        self.spans = [window_span(b, self.kernel_size, self.stride, self.dilation, self.pads) for b in self.bounds]
        pt, _, pl, _ = self.pads
        # ... and the same in the coordinates of the input padded once by the conv's own padding.
        self.windows = [(t + pt, b + pt, lf + pl, r + pl) for t, b, lf, r in self.spans]

    @staticmethod
    def _float64_weights(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
        """The convolution's weight (O, I, kh, kw) and bias (O,; zeros without one) in float64: the
        factors are computed in double precision, then cast to the layer's own dtype."""
        w = conv.weight.detach().to(torch.float64).cpu().numpy()
        b = (conv.bias.detach().to(torch.float64).cpu().numpy() if conv.bias is not None
             else np.zeros(conv.out_channels))
        return w, b

    @staticmethod
    def _tensor_like(conv: nn.Conv2d):
        """``a -> tensor`` on the convolution's device and dtype."""
        dev, dt = conv.weight.device, conv.weight.dtype
        return lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)

    # ---- shared forward pieces ----------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """The output size for ``x``, refused unless it is the map size the layer was calibrated for
        (its regions are fixed positions of that map)."""
        pt, pb, pl, pr = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (x.shape[-2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wo = (x.shape[-1] + pl + pr - dw * (kw - 1) - 1) // sw + 1
        if (ho, wo) != tuple(self.out_hw):
            raise ValueError(f"{type(self).__name__} was calibrated for a {tuple(self.out_hw)} output map, "
                             f"this input gives {(ho, wo)}")
        return ho, wo

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path: each region module on its own zero-padded window, tiled (NCHW).

        The readable specification the fast path is tested against, and the path used whenever
        gradients are needed (fine-tuning).
        """
        self.check_input(x)
        return tile_regions([reg.forward_reference(window(x, span)) for reg, span in zip(self.regions, self.spans)],
                            self.grid_hw)

    def analytical_macs(self, batch: int = 1) -> int:
        """MACs of the layer (DESIGN 3.6): each region's positions times its per-position cost."""
        return batch * sum((h1 - h0) * (w1 - w0) * reg.macs_per_position()
                           for (h0, h1, w0, w1), reg in zip(self.bounds, self.regions))

    # ---- description without the plan (export) -------------------------------------------------
    def spec(self) -> dict:
        """JSON-able structure of the layer (no weights): what :meth:`from_spec` rebuilds."""
        return {"cluster_side": self.cluster_side, "in_channels": self.in_channels,
                "out_channels": self.out_channels, **{k: list(getattr(self, k)) for k in _GEOMETRY_TUPLES},
                "bounds": [list(b) for b in self.bounds], "regions": [reg.spec() for reg in self.regions]}

    @classmethod
    def from_spec(cls, spec: dict, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> RegionLayer:
        """A layer of the structure ``spec`` (from :meth:`spec`) with uninitialised weights: load a
        state dict into it."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_channels, self.out_channels = int(spec["in_channels"]), int(spec["out_channels"])
        for name in _GEOMETRY_TUPLES:
            setattr(self, name, tuple(int(v) for v in spec[name]))
        self._set_bounds(spec["bounds"])
        self.regions = nn.ModuleList(self.region_from_spec(b, r, device, dtype)
                                     for b, r in zip(self.bounds, spec["regions"]))
        self._after_regions()
        return self

    def region_from_spec(self, bounds, spec: dict, device, dtype) -> nn.Module:
        raise NotImplementedError

    def _after_regions(self) -> None:
        """Hook for what a subclass derives from its regions (called by ``__init__`` and ``from_spec``)."""

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, grid={self.grid_hw}, "
                f"cluster_side={self.cluster_side}")
