"""Compressed AlexNets with the per-block layouts of stored runs, for speed measurements.

Speed does not depend on the values of the factors, only on the layout (regions, cluster sizes,
ranks, dense flags, rank-0 channels): given a run's ``layers`` summary (as stored in
``docs/performance-data/real-layouts-v2.json``, or any run's ``layers``), :func:`model_from_layout`
builds the same compressed model with random orthonormal bases, through the project's own modules (``HSCCConv2d``, ``HSCCInputConv2d``,
``LowRankConv2d``, ``Tucker2Conv2d``). Its analytical MACs equal the stored run's (checked).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hscc_core.compress.hscc import (INPUT, OUTPUT, Block, HSCCConv2d, HSCCInputConv2d, LayerDecomp, LayerPlan,
                                     Region, layer_plan)
from hscc_core.compress.svd import LowRankConv2d
from hscc_core.compress.tucker import Tucker2Conv2d
from hscc_core.nn.layers import replace_module

__all__ = ["model_from_layout"]


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, max(cols, 1))))
    return q[:, :cols]


def _geometry(conv: nn.Conv2d, name: str, s: dict, regions, side) -> dict:
    return dict(side=side, name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
                kernel_size=tuple(conv.kernel_size), out_hw=tuple(s["out_hw"]), grid=int(s["grid"]),
                grid_hw=tuple(s["grid_hw"]), clusters=int(s["clusters"]), regions=tuple(regions))


def _bounds(region) -> tuple:
    """A region's ``(r0, r1, c0, c1)``: stored as the bare list (run format 2) or in a dict with the
    region's other facts (format 3)."""
    return tuple(region["bounds"] if isinstance(region, dict) else region)


def _clusters(rng: np.random.Generator, channels: int, sizes) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random disjoint channel sets of the given sizes: (labels with -1 for the rest, the sets)."""
    perm = rng.permutation(channels)
    labels = np.full(channels, -1, dtype=np.int64)
    sets, pos = [], 0
    for c, size in enumerate(sizes):
        ch = np.sort(perm[pos:pos + size])
        labels[ch] = c
        sets.append(ch)
        pos += size
    return labels, sets


def _output_layer(conv: nn.Conv2d, name: str, s: dict, rng: np.random.Generator) -> HSCCConv2d:
    o = conv.out_channels
    regions = []
    for bounds, sizes, n_const in zip(s["regions"], s["cluster_sizes"], s["rank0_channels"]):
        if sum(sizes) + n_const != o:
            raise ValueError(f"{name}: cluster sizes and rank-0 channels do not add up to {o}")
        labels, sets = _clusters(rng, o, sizes)
        blocks = [Block(ch, np.ones(ch.size), _orthonormal(rng, ch.size, ch.size),
                              rng.standard_normal(ch.size) * 0.01, np.arange(1, ch.size + 1) / ch.size)
                  for ch in sets]
        regions.append(Region(_bounds(bounds), labels, tuple(blocks), np.zeros(o)))
    ld = LayerDecomp(**_geometry(conv, name, s, regions, OUTPUT))
    plan = LayerPlan(ld, tuple(tuple(r) for r in s["ranks"]), tuple(tuple(d) for d in s["dense"]))
    return HSCCConv2d(conv, plan)


def _input_layer(conv: nn.Conv2d, name: str, s: dict, rng: np.random.Generator) -> HSCCInputConv2d:
    i, o = conv.in_channels, conv.out_channels
    area = conv.kernel_size[0] * conv.kernel_size[1]
    regions = []
    for bounds, sizes in zip(s["regions"], s["cluster_sizes"]):
        labels, sets = _clusters(rng, i, sizes)
        blocks = []
        for ch in sets:
            n = min(o, ch.size * area)
            blocks.append(Block(ch, np.ones(n), _orthonormal(rng, o, n), rng.standard_normal(o) * 0.01,
                                           np.arange(1, n + 1) / n))
        regions.append(Region(_bounds(bounds), labels, tuple(blocks)))
    ld = LayerDecomp(**_geometry(conv, name, s, regions, INPUT))
    return HSCCInputConv2d(conv, layer_plan(ld, s["ranks"]))


def _svd_layer(conv: nn.Conv2d, s: dict, rng: np.random.Generator) -> LowRankConv2d:
    k = int(s["rank"])
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return LowRankConv2d(conv, _orthonormal(rng, fan_in, k).T, _orthonormal(rng, conv.out_channels, k), conv.bias)


def _tucker_layer(conv: nn.Conv2d, s: dict, rng: np.random.Generator) -> Tucker2Conv2d:
    r_in, r_out = int(s["rank_in"]), int(s["rank_out"])
    kh, kw = conv.kernel_size
    core = rng.standard_normal((r_out, r_in, kh, kw)) / np.sqrt(r_in * kh * kw)
    return Tucker2Conv2d(conv, core, _orthonormal(rng, conv.out_channels, r_out), _orthonormal(rng, conv.in_channels, r_in))


def model_from_layout(model: nn.Module, layers: dict, seed: int = 0, check_macs: bool = True) -> nn.Module:
    """A deep copy of ``model`` whose layers named in ``layers`` (a run's per-layer summaries)
    are replaced by compressed modules of exactly that layout, with random orthonormal factors.

    The method is read from each summary: HSCC output side (``cluster_sizes`` without
    ``cluster_side``), HSCC input side (``cluster_side == "input"``), Global SVD (``rank``),
    Tucker-2 (``rank_in``/``rank_out``); a summary marked ``dense`` keeps the original layer.
    ``check_macs`` refuses an HSCC layer whose MACs differ from the summary's (off for edited
    layouts).
    """
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(model)
    for name, s in layers.items():
        conv = model.get_submodule(name)
        if int(s.get("in_channels", conv.in_channels)) != conv.in_channels:
            raise ValueError(f"{name}: the layout has {s['in_channels']} input channels, the model "
                             f"{conv.in_channels} (a folded grey conv1: fold the model first)")
        if "cluster_sizes" in s:
            build = _input_layer if s.get("cluster_side") == "input" else _output_layer
            new = build(conv, name, s, rng)
            if check_macs and new.analytical_macs() != int(s["macs"]):
                raise ValueError(f"{name}: rebuilt layout has {new.analytical_macs()} MACs, the run {s['macs']}")
        elif s.get("dense"):
            continue
        elif "rank_in" in s:
            new = _tucker_layer(conv, s, rng)
        else:
            new = _svd_layer(conv, s, rng)
        replace_module(out, name, new)
    return out.eval()


def conv_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Whole-model FLOPs / 2 as FlopCounterMode counts them (a sanity figure for the tables)."""
    from hscc_core.measure.costs import count_flops  # noqa: PLC0415

    with torch.no_grad():
        return count_flops(model, shape) // 2
