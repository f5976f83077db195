"""Budget-optimal rank allocation for every method (HSCC+, DESIGN 3.9 ``allocation = greedy``).

HSCC (Vacavant et al. 2026, arXiv 2604.23375) keeps, in every (region, cluster) block, the smallest
rank whose eigenvalues reach one shared energy threshold tau (the *uniform* rule, found by bisection
for a budget). That spends FLOPs badly: a direction's price differs between blocks (|r| (I kh kw +
|c|) MACs on the output side, |r| (|c| kh kw + O) on the input side) and so does its worth. The
*greedy* rule buys directions across every block of every compressed layer in order of captured
relative energy (eigenvalue / the layer's total energy, so layers count alike) per MAC, until the
MAC budget is spent. Greedy never keeps more of a block than tau = 1 would (the eigenvalues past
that rank are round-off). The *sensitivity* rule is the same purchase with each layer's relative
energy priced by its measured effect on the output (:mod:`hscc_core.compress.sensitivity`): the
layer weights of :func:`greedy_plan`.

The weight-only baselines are bought the same way, so a budget comparison can be like for like
(:func:`greedy_plan` on their decompositions): a Global SVD layer is one block whose directions are
the weight's singular directions (energy: squared singular values); a Tucker-2 layer's two ranks
move along the layer's own energy path (each step adds the next direction of the mode whose
cumulative energy is lower, as the per-mode energy rule does when tau rises), a step gaining half
the added direction's relative energy in its mode (a layer's captured energy is the mean of its two
modes'). Every baseline layer keeps at least rank 1 (rank 1 in both modes for Tucker-2).

A step's purchase sequence is not always concave: the dense rule makes a block's cost jump (ranks
from k* on, where k* a >= its dense cost D, run densely and capture all of the block's energy), and
a Tucker-2 step's cost grows with the other mode's rank. So each sequence is "ironed" (the upper
concave envelope of its cumulative (cost, gain) curve): steps leading to a worthwhile jump share
the jump's averaged ratio and are bought towards it as a whole when that pays. Sequences are merged
in ratio order; when the next purchase does not fit, cheaper ones of other sequences are still tried,
so the plan never exceeds the budget and stops short of it by less than one step's cost (unless
everything with energy is bought). Steps with no energy are never bought; a block with no energy
stays at rank 0 and costs nothing, as under tau = 1. With ``multiple`` = m > 1 (HSCC) a step buys m
directions of a block at once, so every rank is a multiple of m (or the block's size, or dense).

Greedy plans carry ``energy = None``: no single threshold describes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from hscc_core.compress.hscc import Decomposition, Plan, layer_plan
from hscc_core.compress.spectral import energy_rank
from hscc_core.compress.svd import SVDDecomposition, SVDPlan, svd_cost
from hscc_core.compress.tucker import TuckerDecomposition, TuckerPlan, tucker_cost

__all__ = ["GreedyBudget", "captured_energy", "greedy_budget", "greedy_plan"]


@dataclass(frozen=True)
class GreedyBudget:
    """Outcome of a greedy budget allocation (the greedy counterpart of ``BudgetResult``).

    ``energy`` is always None; ``met`` is True when ``target * (1 - tol) <= macs <= target``.
    """

    macs: int
    target_macs: float
    original_macs: int
    met: bool
    message: str
    energy: None = None
    prices: dict | None = None  # sensitivity allocation: the layer prices the plan was made with

    @property
    def achieved_ratio(self) -> float:
        """original_macs / macs (the compression actually reached)."""
        return self.original_macs / self.macs if self.macs else float("inf")


# --------------------------------------------------------------------------- the purchase


def _envelope(gains: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per step, the slope of the upper concave envelope of the cumulative (cost, gain) curve.

    Non-increasing along the sequence, so buying steps in key order buys each sequence as a prefix.
    """
    cx = np.concatenate([[0.0], np.cumsum(costs, dtype=np.float64)])
    cy = np.concatenate([[0.0], np.cumsum(gains)])
    hull = [0]
    for i in range(1, cx.size):
        # Drop the last vertex while it lies on or below the chord from the one before it to i.
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (cy[b] - cy[a]) * (cx[i] - cx[a]) <= (cy[i] - cy[a]) * (cx[b] - cx[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    keys = np.empty(cx.size - 1)
    for a, b in zip(hull[:-1], hull[1:]):
        keys[a:b] = (cy[b] - cy[a]) / (cx[b] - cx[a])
    return np.minimum.accumulate(keys)  # guard the order against round-off


def _buy(sequences: list[tuple[np.ndarray, np.ndarray]], target: float) -> np.ndarray:
    """How many steps of each (gains, costs) sequence to buy within ``target`` MACs (see module docstring)."""
    nb = len(sequences)
    keys_l, cost_l, seq_l, step_l = [], [], [], []
    for i, (gains, costs) in enumerate(sequences):
        if gains.size == 0:
            continue
        k = _envelope(gains, costs)
        keep = k > 0  # steps with no energy are never bought (they sit at the tail)
        keys_l.append(k[keep])
        cost_l.append(costs[keep])
        seq_l.append(np.full(int(keep.sum()), i, dtype=np.int64))
        step_l.append(np.arange(int(keep.sum()), dtype=np.int64))
    taken = np.zeros(nb, dtype=np.int64)
    if not keys_l:
        return taken
    key, cost = np.concatenate(keys_l), np.concatenate(cost_l).astype(np.int64)
    seq, step = np.concatenate(seq_l), np.concatenate(step_l)
    # Best ratio first; ties by sequence then step, so each sequence is bought as a prefix.
    order = np.lexsort((step, seq, -key))
    csum = np.cumsum(cost[order])
    p = int(np.searchsorted(csum, target, side="right"))
    spent = int(csum[p - 1]) if p else 0
    np.add.at(taken, seq[order[:p]], 1)
    if p < order.size:
        # Fill: the next purchase does not fit; its sequence is closed, cheaper purchases of other
        # sequences are still taken in ratio order while they fit.
        blocked = np.zeros(nb, dtype=bool)
        blocked[seq[order[p]]] = True
        min_cost = int(cost.min())
        for b, c in zip(seq[order[p + 1:]].tolist(), cost[order[p + 1:]].tolist()):
            if target - spent < min_cost:
                break
            if blocked[b]:
                continue
            if spent + c <= target:
                taken[b] += 1
                spent += c
            else:
                blocked[b] = True
    return taken


def _block_steps(lam: np.ndarray, a: int, d: int, multiple: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gains, costs, rank after each step) of one block bought ``multiple`` directions at a time.

    ``lam`` are relative eigenvalues, descending; a direction costs ``a``; the block runs densely at
    cost ``d`` from rank k* = ceil(d / a) on, so the step that reaches k* is the jump to dense: it
    costs d minus what was bought and gains all remaining energy (its rank is the block's size).
    """
    n = lam.size
    kdense = min(-(-d // a), n)
    ranks = list(range(multiple, kdense, multiple)) + [n]
    before = np.array([0] + ranks[:-1])
    gains = np.array([lam[b:r].sum() for b, r in zip(before, ranks)])
    costs = np.array([(r - b) * a for b, r in zip(before[:-1], ranks[:-1])] + [d - before[-1] * a], dtype=np.int64)
    return gains, costs, np.array(ranks, dtype=np.int64)


def _steps(lam: np.ndarray, a: int, d: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Ironed purchase sequence of one block: (ratio key per step, cost per step, number of steps)."""
    gains, costs, _ = _block_steps(lam, a, d, multiple)
    return _envelope(gains, costs), costs, int(costs.size)


def _weight(weights: Mapping[str, float] | None, name: str) -> float:
    return 1.0 if weights is None else float(weights[name])


# --------------------------------------------------------------------------- HSCC


def _hscc_plan(decomp: Decomposition, target: float, weights, multiple: int) -> Plan:
    side = decomp.side
    keys, seqs, rank_steps = [], [], []
    for name, ld in decomp.layers.items():
        total = float(sum(b.eigvals.sum() for reg in ld.regions for b in reg.blocks))
        w = _weight(weights, name)
        for r, reg in enumerate(ld.regions):
            h0, h1, w0, w1 = reg.bounds
            area = (h1 - h0) * (w1 - w0)
            for j, b in enumerate(reg.blocks):
                n = int(b.channels.size)
                keys.append((name, r, j))
                lam = np.asarray(b.eigvals, dtype=np.float64).copy()
                # Past the rank that tau = 1 keeps lies round-off (e.g. float32 activations make a
                # rank-deficient scatter look full rank at ~1e-14): worth nothing, never bought.
                lam[energy_rank(b.ratio, 1.0):] = 0.0
                if total <= 0 or lam.size == 0 or lam.sum() <= 0:
                    seqs.append((np.zeros(0), np.zeros(0, np.int64)))  # no energy: rank 0, costs nothing
                    rank_steps.append(np.zeros(0, np.int64))
                    continue
                gains, costs, ranks = _block_steps(lam * (w / total), area * side.direction_cost(ld, n),
                                                   area * side.dense_cost(ld, n), multiple)
                seqs.append((gains, costs))
                rank_steps.append(ranks)
    taken = _buy(seqs, target)
    ranks: dict[str, dict[int, dict[int, int]]] = {}
    for (name, r, j), k, steps in zip(keys, taken.tolist(), rank_steps):
        ranks.setdefault(name, {}).setdefault(r, {})[j] = int(steps[k - 1]) if k else 0
    layers = {name: layer_plan(ld, [[ranks[name][r][j] for j in range(len(reg.blocks))]
                                    for r, reg in enumerate(ld.regions)])
              for name, ld in decomp.layers.items()}
    return Plan(layers, None, decomp)


# --------------------------------------------------------------------------- baselines


def _relative(ratio: np.ndarray) -> np.ndarray:
    """Relative eigenvalues (each direction's share of the energy) from a cumulative ratio."""
    return np.diff(np.concatenate([[0.0], ratio])) if ratio.size else ratio


def _svd_sequence(ly, w: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Steps of one Global SVD layer from rank 1: one singular direction each, then dense."""
    lam = _relative(ly.ratio) * w
    base, _ = svd_cost(ly.shape, 1)
    hw = ly.shape.out_hw[0] * ly.shape.out_hw[1]
    a, d = hw * (ly.shape.fan_in + ly.shape.out_channels), ly.shape.original_macs
    if lam.size <= 1 or base >= d:
        return np.zeros(0), np.zeros(0, np.int64), []
    gains, costs, ranks = _block_steps(lam[1:], a, d - base, 1)
    return gains, costs, [int(r) + 1 for r in ranks]


def _tucker_sequence(ly, w: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Steps of one Tucker-2 layer from ranks (1, 1) along its energy path, then dense."""
    lo, li = _relative(ly.ratio_out) * (0.5 * w), _relative(ly.ratio_in) * (0.5 * w)
    if lo.size == 0 or li.size == 0:
        return np.zeros(0), np.zeros(0, np.int64), []
    # The per-mode energy rule adds mode m's (k+1)-th direction once tau passes ratio_m[k - 1].
    events = sorted([(float(ly.ratio_out[k - 1]), 0, k) for k in range(1, lo.size)]
                    + [(float(ly.ratio_in[k - 1]), 1, k) for k in range(1, li.size)])
    dense = ly.shape.original_macs
    state, cost = [1, 1], tucker_cost(ly.shape, 1, 1)[0]
    gains, costs, ranks = [], [], []
    if tucker_cost(ly.shape, 1, 1)[1]:
        return np.zeros(0), np.zeros(0, np.int64), []
    captured = lo[0] + li[0]
    for _, mode, k in events:
        state[mode] = k + 1
        new, is_dense = tucker_cost(ly.shape, *state)
        if is_dense:  # the jump to dense: everything left, for what dense costs more
            gains.append(lo.sum() + li.sum() - captured)
            costs.append(dense - cost)
            ranks.append(None)
            break
        gain = (lo if mode == 0 else li)[k]
        gains.append(gain)
        costs.append(new - cost)
        ranks.append(tuple(state))
        captured += gain
        cost = new
    return np.asarray(gains), np.asarray(costs, dtype=np.int64), ranks


def _layerwise_plan(decomp, target: float, weights) -> SVDPlan | TuckerPlan:
    svd = isinstance(decomp, SVDDecomposition)
    first = {n: (1 if svd else (1, 1)) for n in decomp.layers}
    base = sum((svd_cost(ly.shape, 1) if svd else tucker_cost(ly.shape, 1, 1))[0] for ly in decomp.layers.values())
    seqs, paths = [], []
    for name, ly in decomp.layers.items():
        gains, costs, path = (_svd_sequence if svd else _tucker_sequence)(ly, _weight(weights, name))
        seqs.append((gains, costs))
        paths.append(path)
    taken = _buy(seqs, target - base) if target > base else np.zeros(len(seqs), np.int64)
    ranks = {}
    for (name, ly), k, path in zip(decomp.layers.items(), taken.tolist(), paths):
        rank = path[k - 1] if k else first[name]
        if rank is None:  # a Tucker-2 layer bought up to dense: full ranks (the build leaves it as it is)
            rank = (ly.shape.out_channels, ly.shape.in_channels)
        ranks[name] = rank
    return (SVDPlan(decomp, ranks, None) if svd else TuckerPlan(decomp, ranks, None))


# --------------------------------------------------------------------------- entry points


def greedy_plan(decomp, target_macs: float, weights: Mapping[str, float] | None = None, multiple: int = 1):
    """Ranks for every block (every baseline layer) by captured relative energy per MAC within ``target_macs``.

    Parameters
    ----------
    decomp : Decomposition, SVDDecomposition or TuckerDecomposition
        An HSCC decomposition of either cluster side, or a weight-only baseline's.
    target_macs : float
        MAC budget of the compressed layers at batch 1 (> 0).
    weights : mapping of layer name to float, optional
        Price of each layer's relative energy (sensitivity allocation); default 1 for every layer.
    multiple : int
        HSCC: buy directions ``multiple`` at a time, so ranks are multiples of it (>= 1).

    Returns
    -------
    Plan, SVDPlan or TuckerPlan
        With ``energy=None``. ``plan.macs() <= target_macs`` (for the baselines, unless rank 1 in
        every layer already costs more), and ``target_macs - plan.macs()`` is below the cost of one
        more step whenever any step with energy is left out.
    """
    if not target_macs > 0:
        raise ValueError(f"target_macs must be > 0, got {target_macs}")
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be an integer >= 1, got {multiple!r}")
    if weights is not None:
        bad = {n: w for n, w in weights.items() if not (np.isfinite(w) and w > 0)}
        if bad or not set(getattr(decomp, "layers", {})) <= set(weights):
            raise ValueError(f"weights must be finite and > 0 for every layer, got {dict(weights)}")
    if isinstance(decomp, Decomposition):
        return _hscc_plan(decomp, target_macs, weights, multiple)
    if isinstance(decomp, (SVDDecomposition, TuckerDecomposition)):
        if multiple != 1:
            raise ValueError("rank multiples apply to HSCC only")
        return _layerwise_plan(decomp, target_macs, weights)
    raise TypeError(f"greedy allocation needs a decomposition, got {type(decomp).__name__}")


def greedy_budget(decomp, budget: float, tol: float = 0.02, weights: Mapping[str, float] | None = None,
                  multiple: int = 1, plan_fn: Callable | None = None) -> tuple:
    """Greedy plan for "compress the layers' MACs by ``budget`` x" (DESIGN 3.7 with 3.9).

    Parameters
    ----------
    decomp
        Any decomposition :func:`greedy_plan` takes.
    budget : float
        Compression factor B > 1; the target is ``decomp.original_macs / budget``.
    tol : float
        Relative window below the target that still counts as meeting it (0 <= tol < 1).
    weights, multiple
        As for :func:`greedy_plan`.
    plan_fn : callable(target_macs) -> (plan, prices), optional
        Plans for a target instead of :func:`greedy_plan` (sensitivity allocation,
        :func:`hscc_core.compress.sensitivity.sensitivity_plan`).

    Returns
    -------
    (plan, GreedyBudget)
    """
    if not budget > 1.0:
        raise ValueError(f"budget must be > 1, got {budget}")
    if not 0.0 <= tol < 1.0:
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    original = int(decomp.original_macs)
    target = original / budget
    plan, prices = plan_fn(target) if plan_fn is not None else (greedy_plan(decomp, target, weights, multiple), None)
    macs = int(plan.macs())
    met = target * (1.0 - tol) <= macs <= target
    if met:
        msg = f"budget {budget:g}x met greedily: {macs} MACs (target {target:.0f})"
    elif macs > target:
        msg = (f"budget {budget:g}x infeasible: the cheapest plan (rank 1 everywhere) needs {macs} MACs "
               f"> target {target:.0f}")
    else:
        msg = (f"budget {budget:g}x not met within {tol:.0%}: every direction with calibration energy "
               f"costs only {macs} MACs, below the target window [{target * (1 - tol):.0f}, {target:.0f}]")
    return plan, GreedyBudget(macs, target, original, met, msg, prices=prices)


def captured_energy(plan) -> dict[str, float]:
    """Per layer, the fraction of its energy the plan keeps (``plan.captured_energy()``): for HSCC
    its calibration energy (dense blocks keep all), for the baselines the weight's energy."""
    return plan.captured_energy()
