"""What the weight-only baselines (Global SVD, Tucker-2) share: float64 weights, plan totals and their typed layer summaries (one region covering each layer's map)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from hscc_core.compress.summary import LayerSummary, RegionSummary
from hscc_core.nn.layers import ConvShape

__all__ = ["LayerwisePlan", "baseline_summary", "captured", "weight64"]


def weight64(conv: nn.Conv2d) -> np.ndarray:
    """The convolution's weight as a float64 numpy array (O, I, kh, kw)."""
    return conv.weight.detach().to(torch.float64).cpu().numpy()


def baseline_summary(kind: str, shape: ConvShape, macs: int, dense: bool, rank_kept: int, rank_dense: int,
                     **ranks) -> LayerSummary:
    """The typed summary of a weight-only baseline's layer: one region covering the whole map."""
    oh, ow = shape.out_hw
    region = RegionSummary(row=0, col=0, bounds=(0, oh, 0, ow), rank_kept=int(rank_kept), rank_dense=int(rank_dense),
                           macs=int(macs), macs_dense=int(shape.original_macs))
    return LayerSummary(kind=kind, in_channels=shape.in_channels, out_channels=shape.out_channels,
                        kernel_size=tuple(shape.kernel_size), out_hw=tuple(shape.out_hw), in_hw=tuple(shape.in_hw),
                        macs=int(macs), original_macs=int(shape.original_macs), regions=(region,),
                        dense_layer=bool(dense), **{k: int(v) for k, v in ranks.items()})


class LayerwisePlan:
    """Totals of a plan with one rank setting per layer (``ranks``, ``layer_macs(name)``, ``decomp``)."""

    ranks: dict
    decomp: object

    def layer_macs(self, name: str) -> int:
        raise NotImplementedError

    def macs(self) -> int:
        """Analytical MACs of the compressed layers at batch 1."""
        return sum(self.layer_macs(n) for n in self.ranks)

    def original_macs(self) -> int:
        return self.decomp.original_macs

    def arrays(self) -> dict[str, np.ndarray]:
        """Nothing to store beside the run: weight-only methods do not cluster."""
        return {}

    def restrict(self, names):
        """The same plan for the layers ``names`` only (the others stay as the original has them)."""
        return replace(self, ranks={n: self.ranks[n] for n in names})

    def captured_energy(self) -> dict[str, float]:
        """Per layer, the fraction of its weight energy the plan keeps (1 where it stays dense)."""
        return {n: 1.0 if self.is_dense(n) else self.layer_captured(n) for n in self.ranks}

    def is_dense(self, name: str) -> bool:
        raise NotImplementedError

    def layer_captured(self, name: str) -> float:
        raise NotImplementedError


def captured(ratio: np.ndarray, rank: int) -> float:
    """Cumulative energy ratio at ``rank`` (0 for rank 0)."""
    return float(ratio[rank - 1]) if rank > 0 and ratio.size else 0.0
