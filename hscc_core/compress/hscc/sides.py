"""The cluster side of HSCC as a value: what is clustered, and what a kept direction costs.

Vacavant et al. 2026, arXiv 2604.23375 cluster each region's *output* channels (DESIGN 3.3-3.5);
HSCC+ (DESIGN 3.9) may cluster its *input* channels instead. Everything that differs between the two
readings lives in one :class:`ClusterSide` object: the cost of one kept direction of a block and of
the block run densely (so the plan, the greedy allocation, the heat maps and the speed table share one
formula), the statistics it needs and how they are stored, how they are decomposed, and the module
that executes a plan. Look a side up by name with :func:`cluster_side`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hscc_core.compress.hscc import input_stats, stats
from hscc_core.compress.hscc.decomposition import Decomposition, LayerGeometry, decompose_input, decompose_output
from hscc_core.compress.hscc.input_conv import HSCCInputConv2d
from hscc_core.compress.hscc.layer import RegionLayer
from hscc_core.compress.hscc.output_conv import HSCCConv2d

__all__ = ["CLUSTER_SIDES", "INPUT", "OUTPUT", "ClusterSide", "cluster_side"]


class ClusterSide:
    """One reading of HSCC's channel clustering (see module docstring); use :data:`OUTPUT` or :data:`INPUT`."""

    name: str = ""
    title: str = ""
    module: type[RegionLayer] = RegionLayer
    stats_kind: str = ""

    # ---- cost (DESIGN 3.4/3.6/3.9), per output position --------------------------------------
    def direction_cost(self, layer: LayerGeometry, size: int) -> int:
        """MACs of one kept direction of a block of ``size`` clustered channels."""
        raise NotImplementedError

    def dense_cost(self, layer: LayerGeometry, size: int) -> int:
        """MACs of the block run densely."""
        raise NotImplementedError

    def max_rank(self, layer: LayerGeometry, size: int) -> int:
        """Directions of the block's outputs (the rank at which it is exact)."""
        raise NotImplementedError

    def region_rank_dense(self, layer: LayerGeometry, block_ranks: list[int]) -> int:
        """The original's directions in a region whose blocks have these full ranks."""
        raise NotImplementedError

    def block_macs(self, layer: LayerGeometry, size: int, rank: int) -> tuple[int, bool]:
        """Per-position MACs of a block at ``rank``, and whether it runs densely.

        A block whose factorised cost ``rank * direction_cost`` reaches its dense cost runs densely;
        rank 0 (no energy kept) costs nothing.
        """
        if rank == 0:
            return 0, False
        dense = self.dense_cost(layer, size)
        factored = rank * self.direction_cost(layer, size)
        return (dense, True) if factored >= dense else (factored, False)

    # ---- statistics and decomposition -------------------------------------------------------
    def stats_key(self, grid: int, clusters: int) -> dict:
        """What this side's statistics depend on besides the model, data and calibration set."""
        raise NotImplementedError

    def compute_stats(self, model: nn.Module, images: torch.Tensor, grid: int, clusters: int, seed: int,
                      progress: Callable[[int, int], None] | None = None) -> dict:
        raise NotImplementedError

    def save_stats(self, path, layer_stats: dict) -> None:
        raise NotImplementedError

    def load_stats(self, path) -> dict:
        raise NotImplementedError

    def decompose(self, model: nn.Module, layer_stats: dict, clusters: int, seed: int) -> Decomposition:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<cluster side {self.name}>"


class _OutputSide(ClusterSide):
    name, title, module, stats_kind = "output", "output channels (the paper)", HSCCConv2d, "stats"

    def direction_cost(self, layer, size):
        return layer.fan_in + size  # U_k^T W_c over the window, then U_k back to |c| channels

    def dense_cost(self, layer, size):
        return size * layer.fan_in

    def max_rank(self, layer, size):
        return size

    def region_rank_dense(self, layer, block_ranks):
        return layer.out_channels  # every output channel, rank-0 ones included

    def stats_key(self, grid, clusters):
        return {"grid": grid}  # K is applied at decomposition: one set of statistics per grid

    def compute_stats(self, model, images, grid, clusters, seed, progress=None):
        return stats.compute_stats(model, images, grid, progress=progress)

    def save_stats(self, path, layer_stats):
        stats.save_stats(path, layer_stats)

    def load_stats(self, path):
        return stats.load_stats(path)

    def decompose(self, model, layer_stats, clusters, seed):
        return decompose_output(model, layer_stats, clusters, seed, side=self)


class _InputSide(ClusterSide):
    name, title, module, stats_kind = "input", "input channels (HSCC+)", HSCCInputConv2d, "input-stats"

    def direction_cost(self, layer, size):
        return size * layer.kernel_area + layer.out_channels  # c's window only, then U_k to all O

    def dense_cost(self, layer, size):
        return layer.out_channels * size * layer.kernel_area

    def max_rank(self, layer, size):
        return min(layer.out_channels, size * layer.kernel_area)

    def region_rank_dense(self, layer, block_ranks):
        return sum(block_ranks)  # each partial output's own full rank

    def stats_key(self, grid, clusters):
        return {"grid": grid, "clusters": clusters}  # the clusters decide which partial outputs exist

    def compute_stats(self, model, images, grid, clusters, seed, progress=None):
        return input_stats.compute_input_stats(model, images, grid, clusters, seed, progress=progress)

    def save_stats(self, path, layer_stats):
        input_stats.save_input_stats(path, layer_stats)

    def load_stats(self, path):
        return input_stats.load_input_stats(path)

    def decompose(self, model, layer_stats, clusters, seed):
        first = next(iter(layer_stats.values()))
        if (first.clusters, first.seed) != (clusters, seed):
            raise ValueError(f"input statistics were computed for K={first.clusters}, seed {first.seed}, "
                             f"not K={clusters}, seed {seed}")
        return decompose_input(model, layer_stats, side=self)


OUTPUT = _OutputSide()
INPUT = _InputSide()
SIDES = {side.name: side for side in (OUTPUT, INPUT)}
CLUSTER_SIDES = tuple(SIDES)


def cluster_side(name: str) -> ClusterSide:
    """The side called ``name`` (``"output"`` or ``"input"``)."""
    try:
        return SIDES[name]
    except KeyError:
        raise ValueError(f"cluster side must be one of {', '.join(CLUSTER_SIDES)}, got {name!r}") from None
