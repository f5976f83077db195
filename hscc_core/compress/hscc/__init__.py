"""Hierarchical Spatio-Channel Clustering (HSCC) compression of convolutions.

Vacavant et al. 2026, "Hierarchical Spatio-Channel Clustering for Efficient Model Compression in
Medical Image Analysis", arXiv 2604.23375 (DESIGN 3.1-3.6), and its input-side variant (HSCC+,
DESIGN 3.9). The work is split in steps so that a budget bisection is cheap:

1. statistics: ``side.compute_stats`` (:mod:`.stats` per grid for the output side,
   :mod:`.input_stats` per grid and K for the input side);
2. decomposition: ``side.decompose`` (k-means and eigendecompositions; :mod:`.decomposition`);
3. plan: :func:`plan_at_energy` (ranks for one energy threshold; :func:`plan_macs` is its cost) or a
   greedy plan of :mod:`hscc_core.compress.allocation`;
4. :func:`build_hscc`: a deep copy of the model with the side's region-layer modules.

The cluster side is a value (:mod:`.sides`): one decomposition, plan and module base serve both.
"""

from __future__ import annotations

import copy

from threadpoolctl import threadpool_limits
from torch import nn

from hscc_core.compress.hscc.decomposition import Block, Decomposition, LayerDecomp, LayerGeometry, Region
from hscc_core.compress.hscc.input_conv import HSCCInputConv2d
from hscc_core.compress.hscc.layer import RegionLayer
from hscc_core.compress.hscc.output_conv import GEMM_MAX_ELEMENTS, STAGE1_MODES, HSCCConv2d
from hscc_core.compress.hscc.plan import LayerPlan, Plan, layer_plan, plan_at_energy, plan_macs
from hscc_core.compress.hscc.regions import region_bounds
from hscc_core.compress.hscc.sides import CLUSTER_SIDES, INPUT, OUTPUT, ClusterSide, cluster_side
from hscc_core.nn.layers import replace_module

__all__ = ["CLUSTER_SIDES", "GEMM_MAX_ELEMENTS", "INPUT", "OUTPUT", "STAGE1_MODES", "Block", "ClusterSide",
           "Decomposition", "HSCCConv2d", "HSCCInputConv2d", "LayerDecomp", "LayerGeometry", "LayerPlan", "Plan",
           "Region", "RegionLayer", "build_hscc", "cluster_side", "decompose", "layer_plan", "plan_at_energy",
           "plan_macs", "region_bounds", "set_stage1_mode"]


def decompose(model: nn.Module, layer_stats: dict, side: ClusterSide | str = OUTPUT, clusters: int = 1,
              seed: int = 0) -> Decomposition:
    """Decompose ``model``'s layers from their statistics on one cluster side.

    Parameters
    ----------
    model : nn.Module
        The original model (read only).
    layer_stats : dict
        The side's statistics (``side.compute_stats``).
    side : ClusterSide or str
    clusters, seed : int
        K and the k-means seed (the input side's statistics already fix them; they must match).
    """
    side = cluster_side(side) if isinstance(side, str) else side
    return side.decompose(model, layer_stats, clusters, seed)


def build_hscc(model: nn.Module, plan: Plan) -> nn.Module:
    """Deep copy of ``model`` with every planned layer replaced by its side's region layer."""
    out = copy.deepcopy(model)
    with threadpool_limits(limits=1):  # many small numpy products (see decomposition.py)
        for name, lp in plan.layers.items():
            replace_module(out, name, plan.side.module(model.get_submodule(name), lp))
    return out


def set_stage1_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set how every :class:`HSCCConv2d` in ``model`` runs stage 1 (``"auto"``, ``"conv"`` or
    ``"gemm"``); returns ``model``. Results are identical; only the speed differs."""
    if mode not in STAGE1_MODES:
        raise ValueError(f"stage1 mode must be one of {', '.join(STAGE1_MODES)}, got {mode!r}")
    for m in model.modules():
        if isinstance(m, HSCCConv2d):
            m.stage1_mode = mode
    return model
