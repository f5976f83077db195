"""HSCC plans: the rank of every (region, cluster) block, for either cluster side.

Vacavant et al. 2026, arXiv 2604.23375 (DESIGN 3.4, 3.6): a block keeps the smallest rank whose
eigenvalue energy reaches tau (:func:`plan_at_energy`, the uniform rule; a greedy plan comes from
:mod:`hscc_core.compress.allocation`). A rank at or past the block's dense break-even runs densely.
The MACs of a plan are the analytical count of DESIGN 3.6, from the side's cost of one direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hscc_core.compress.hscc.decomposition import Decomposition, LayerDecomp
from hscc_core.compress.spectral import check_energy, energy_rank
from hscc_core.compress.summary import LayerSummary, RegionSummary

__all__ = ["LayerPlan", "Plan", "layer_plan", "plan_at_energy", "plan_macs", "round_rank"]


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """Ranks of one layer's blocks, ``ranks[r][c]``, and whether each runs densely, ``dense[r][c]``."""

    decomp: LayerDecomp
    ranks: tuple[tuple[int, ...], ...]
    dense: tuple[tuple[bool, ...], ...]

    def region_macs(self, r: int) -> int:
        """MACs (batch 1) of region ``r``: its positions times the sum of its blocks' costs."""
        ld = self.decomp
        reg = ld.regions[r]
        h0, h1, w0, w1 = reg.bounds
        per_pos = sum(ld.side.block_macs(ld, b.channels.size, k)[0] for b, k in zip(reg.blocks, self.ranks[r]))
        return (h1 - h0) * (w1 - w0) * per_pos

    @property
    def macs(self) -> int:
        return sum(self.region_macs(r) for r in range(len(self.decomp.regions)))

    def summary(self) -> LayerSummary:
        """The typed summary of this layer (see :mod:`hscc_core.compress.summary`)."""
        ld = self.decomp
        side = ld.side
        used = [len(reg.blocks) for reg in ld.regions]
        regions = []
        for r, (reg, ranks, dense) in enumerate(zip(ld.regions, self.ranks, self.dense)):
            h0, h1, w0, w1 = reg.bounds
            full = [side.max_rank(ld, b.channels.size) for b in reg.blocks]
            regions.append(RegionSummary(
                row=r // ld.grid_hw[1], col=r % ld.grid_hw[1], bounds=tuple(reg.bounds),
                rank_kept=int(sum(f if d else k for f, k, d in zip(full, ranks, dense))),
                rank_dense=int(side.region_rank_dense(ld, full)),
                macs=int(self.region_macs(r)), macs_dense=int((h1 - h0) * (w1 - w0) * ld.out_channels * ld.fan_in)))
        return LayerSummary(
            kind="hscc", cluster_side=side.name, in_channels=ld.in_channels, out_channels=ld.out_channels,
            kernel_size=tuple(ld.kernel_size), out_hw=tuple(ld.out_hw), macs=int(self.macs),
            original_macs=int(ld.original_macs), regions=tuple(regions), grid=ld.grid,
            grid_hw=tuple(ld.grid_hw), grid_clamped=tuple(ld.grid_hw) != (ld.grid, ld.grid),
            clusters=ld.clusters, clusters_used=tuple(used),
            # Some region formed fewer clusters than asked (K > active channels, or duplicates).
            clusters_clamped=any(u < ld.clusters for u in used),
            cluster_sizes=tuple(tuple(int(b.channels.size) for b in reg.blocks) for reg in ld.regions),
            ranks=tuple(tuple(int(k) for k in rk) for rk in self.ranks),
            dense=tuple(tuple(bool(x) for x in d) for d in self.dense),
            rank0_channels=tuple(int((reg.labels < 0).sum()) for reg in ld.regions))

    def labels(self) -> np.ndarray:
        """(R, channels) cluster id of each clustered channel per region, -1 for channels left out."""
        return np.stack([reg.labels for reg in self.decomp.regions])


def layer_plan(ld: LayerDecomp, ranks) -> LayerPlan:
    """A :class:`LayerPlan` from ranks (a rank at or past the dense break-even is dense)."""
    ranks = tuple(tuple(int(k) for k in rk) for rk in ranks)
    dense = tuple(tuple(ld.side.block_macs(ld, b.channels.size, k)[1] for b, k in zip(reg.blocks, rk))
                  for reg, rk in zip(ld.regions, ranks))
    return LayerPlan(ld, ranks, dense)


@dataclass(frozen=True, eq=False)
class Plan:
    """Per-layer HSCC ranks; ``energy`` is the uniform threshold, None for a greedy plan.

    Build it with :func:`hscc_core.compress.hscc.build_hscc`.
    """

    layers: dict[str, LayerPlan]
    energy: float | None
    decomposition: Decomposition

    @property
    def side(self):
        return self.decomposition.side

    @property
    def clusters(self) -> int:
        return self.decomposition.clusters

    @property
    def seed(self) -> int:
        return self.decomposition.seed

    def macs(self) -> int:
        """Analytical MACs of the compressed layers at batch 1."""
        return sum(lp.macs for lp in self.layers.values())

    def original_macs(self) -> int:
        return sum(lp.decomp.original_macs for lp in self.layers.values())

    def summaries(self) -> dict[str, LayerSummary]:
        """Typed per-layer summaries (grid, clamping, K, ranks, per-region costs)."""
        return {name: lp.summary() for name, lp in self.layers.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """What a run stores beside its JSON: the cluster labels of every layer (``labels.<layer>``)."""
        return {f"labels.{name}": lp.labels().astype(np.int32) for name, lp in self.layers.items()}

    def restrict(self, names) -> Plan:
        """The same plan for the layers ``names`` only (the others stay as the original has them)."""
        return Plan({n: self.layers[n] for n in names}, self.energy, self.decomposition)

    def captured_energy(self) -> dict[str, float]:
        """Per layer, the fraction of its calibration energy the plan keeps (dense blocks keep all).

        What greedy allocation maximises (summed over layers) for a MAC budget.
        """
        out = {}
        for name, lp in self.layers.items():
            total = kept = 0.0
            for reg, ranks, dense in zip(lp.decomp.regions, lp.ranks, lp.dense):
                for b, k, is_dense in zip(reg.blocks, ranks, dense):
                    e = float(b.eigvals.sum())
                    total += e
                    kept += e if is_dense else float(b.eigvals[:k].sum())
            out[name] = kept / total if total > 0 else 1.0
        return out


def round_rank(rank: int, multiple: int, size: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, capped at the block's ``size`` (0 stays 0).

    The speed-oriented constraint of issue #15: kernels run best on ranks that are multiples of 8.
    """
    if multiple <= 1 or rank == 0:
        return rank
    return min(-(-rank // multiple) * multiple, size)


def plan_at_energy(decomp: Decomposition, energy: float, multiple: int = 1) -> Plan:
    """Every block's rank for energy threshold ``energy`` in (0, 1] (no k-means, no eigh).

    With ``multiple`` > 1 every rank is rounded up to a multiple of it (capped at the block's size).
    """
    energy = check_energy(energy)
    layers = {name: layer_plan(ld, [[round_rank(energy_rank(b.ratio, energy), multiple, b.eigvals.size)
                                      for b in reg.blocks] for reg in ld.regions])
              for name, ld in decomp.layers.items()}
    return Plan(layers, energy, decomp)


def plan_macs(decomp: Decomposition, energy: float, multiple: int = 1) -> int:
    """Analytical MACs (batch 1) of the compressed layers at ``energy``: the budget cost function."""
    return plan_at_energy(decomp, energy, multiple).macs()
