"""Budget-optimal rank allocation for HSCC (HSCC+, DESIGN 3.9 ``allocation = greedy``).

HSCC (Vacavant et al. 2026, arXiv 2604.23375) keeps, in every (region, cluster) block, the smallest
rank whose eigenvalues reach one shared energy threshold tau (the *uniform* rule, found by bisection
for a budget). That spends FLOPs badly: a direction's price differs between blocks (|r| (I kh kw +
|c|) MACs on the output side, |r| (|c| kh kw + O) on the input side) and so does its worth. The
*greedy* rule buys directions across every block of every compressed layer in order of captured
relative energy (eigenvalue / the layer's total energy, so layers count alike) per MAC, until the
MAC budget is spent. Greedy never keeps more of a block than tau = 1 would (the eigenvalues past
that rank are round-off).

The dense rule makes a block's cost non-linear: ranks 1 .. k*-1 cost k times the direction cost
``a``; from k* on (k* a >= dense cost D) the block runs densely at cost D and captures all of its
energy. So the last purchase of a block is a *jump* to dense: it costs D - (k*-1) a <= a and gains
all remaining eigenvalues. Because that jump can be worth more per MAC than the directions before
it, each block's purchase sequence is "ironed" (upper concave envelope of its cumulative
(cost, energy) curve): the steps leading to a worthwhile jump share the jump's averaged ratio, so
the block is bought towards dense as a whole when that pays. Every single purchase still costs at
most ``a``, and when the next purchase does not fit, cheaper ones of other blocks are still tried;
so the plan never exceeds the budget and stops short of it by less than one direction's cost
(unless every direction with energy is already bought). Directions with no calibration energy are
never bought, and a block with no energy stays at rank 0 and costs nothing, as under tau = 1.

Greedy plans carry ``energy = None``: no single threshold describes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hscc_core.compress.hscc import Decomposition, Plan, layer_plan
from hscc_core.compress.spectral import energy_rank

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

    @property
    def achieved_ratio(self) -> float:
        """original_macs / macs (the compression actually reached)."""
        return self.original_macs / self.macs if self.macs else float("inf")


@dataclass(frozen=True)
class _Blocks:
    """Flat view of every block of a decomposition (output or input side)."""

    keys: list[tuple[str, int, int]]  # (layer, region, block)
    eigvals: list[np.ndarray]
    unit: np.ndarray  # MACs of one direction (|r| per-position cost)
    dense: np.ndarray  # MACs of the block run densely
    layer_energy: np.ndarray  # total eigenvalue energy of the block's layer


def _blocks(decomp: Decomposition) -> _Blocks:
    if not isinstance(decomp, Decomposition):
        raise TypeError(f"greedy allocation needs an HSCC decomposition, got {type(decomp).__name__}")
    side = decomp.side
    keys, eig, unit, dense, lay_e = [], [], [], [], []
    for name, ld in decomp.layers.items():
        total = float(sum(b.eigvals.sum() for reg in ld.regions for b in reg.blocks))
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
                eig.append(lam)
                unit.append(area * side.direction_cost(ld, n))
                dense.append(area * side.dense_cost(ld, n))
                lay_e.append(total)
    return _Blocks(keys, eig, np.asarray(unit, np.int64), np.asarray(dense, np.int64),
                   np.asarray(lay_e, np.float64))


def _steps(lam: np.ndarray, a: int, d: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ironed purchase sequence of one block: (ratio key per step, cost per step, k*).

    ``lam`` are relative eigenvalues, descending. Steps 1 .. k*-1 add one direction (cost a);
    step k* makes the block dense (cost d - (k*-1) a, gain all remaining energy).
    """
    kstar = min(-(-d // a), lam.size)  # smallest k with k a >= d (always <= lam.size)
    gains = np.empty(kstar)
    gains[:-1] = lam[: kstar - 1]
    gains[-1] = lam[kstar - 1 :].sum()
    costs = np.full(kstar, a, dtype=np.int64)
    costs[-1] = d - (kstar - 1) * a
    ratio = gains / costs
    cg = np.concatenate([[0.0], np.cumsum(gains)])
    cc = np.concatenate([[0], np.cumsum(costs)])
    to_end = (cg[-1] - cg[:-1]) / (cc[-1] - cc[:-1])  # average ratio from step m+1 to dense
    # The envelope leaves the (concave) direction-by-direction curve at the first step from which
    # going all the way to dense is worth at least as much per MAC as the next step alone.
    m = int(np.argmax(to_end >= ratio))
    keys = ratio.copy()
    keys[m:] = to_end[m]
    return np.minimum.accumulate(keys), costs, kstar  # guard the order against round-off


def greedy_plan(decomp: Decomposition, target_macs: float) -> Plan:
    """Ranks for every block by captured relative energy per MAC within ``target_macs``.

    Parameters
    ----------
    decomp : Decomposition
        An HSCC decomposition of either cluster side.
    target_macs : float
        MAC budget of the compressed layers at batch 1 (> 0).

    Returns
    -------
    Plan
        With ``energy=None``; build it with :func:`hscc_core.compress.hscc.build_hscc`.
        ``plan.macs() <= target_macs``, and ``target_macs - plan.macs()`` is below the cost of
        one more direction whenever any direction with energy is left out.
    """
    if not target_macs > 0:
        raise ValueError(f"target_macs must be > 0, got {target_macs}")
    bl = _blocks(decomp)
    nb = len(bl.keys)
    keys_l, cost_l, blk_l, step_l = [], [], [], []
    kstars = np.zeros(nb, dtype=np.int64)
    for i in range(nb):
        total = bl.layer_energy[i]
        lam = bl.eigvals[i]
        if total <= 0 or lam.size == 0 or lam.sum() <= 0:
            continue  # no energy: rank 0, costs nothing
        k, c, kstars[i] = _steps(lam / total, int(bl.unit[i]), int(bl.dense[i]))
        keep = k > 0  # zero-energy steps are never bought (they sit at the tail)
        keys_l.append(k[keep])
        cost_l.append(c[keep])
        blk_l.append(np.full(int(keep.sum()), i, dtype=np.int64))
        step_l.append(np.arange(int(keep.sum()), dtype=np.int64))
    taken = np.zeros(nb, dtype=np.int64)
    if keys_l:
        key, cost = np.concatenate(keys_l), np.concatenate(cost_l)
        blk, step = np.concatenate(blk_l), np.concatenate(step_l)
        # Best ratio first; ties by block then step, so each block is bought as a prefix.
        order = np.lexsort((step, blk, -key))
        csum = np.cumsum(cost[order])
        p = int(np.searchsorted(csum, target_macs, side="right"))
        spent = int(csum[p - 1]) if p else 0
        np.add.at(taken, blk[order[:p]], 1)
        if p < order.size:
            # Fill: the next purchase does not fit; its block is closed, cheaper purchases of
            # other blocks are still taken in ratio order while they fit.
            blocked = np.zeros(nb, dtype=bool)
            blocked[blk[order[p]]] = True
            min_cost = int(cost.min())
            rest = order[p + 1 :]
            for b, c in zip(blk[rest].tolist(), cost[rest].tolist()):
                if target_macs - spent < min_cost:
                    break
                if blocked[b]:
                    continue
                if spent + c <= target_macs:
                    taken[b] += 1
                    spent += c
                else:
                    blocked[b] = True
    # Steps bought -> ranks: k* steps means the block is dense (rank = all its directions).
    ranks: dict[str, dict[int, dict[int, int]]] = {}
    for i, (name, r, j) in enumerate(bl.keys):
        k = int(taken[i])
        rank = bl.eigvals[i].size if (k and k == kstars[i]) else k
        ranks.setdefault(name, {}).setdefault(r, {})[j] = rank
    return _make_plan(decomp, ranks)


def _make_plan(decomp: Decomposition, ranks) -> Plan:
    layers = {name: layer_plan(ld, [[ranks.get(name, {}).get(r, {}).get(j, 0) for j in range(len(reg.blocks))]
                                    for r, reg in enumerate(ld.regions)])
              for name, ld in decomp.layers.items()}
    return Plan(layers, None, decomp)


def greedy_budget(decomp: Decomposition, budget: float, tol: float = 0.02) -> tuple[Plan, GreedyBudget]:
    """Greedy plan for "compress the layers' MACs by ``budget`` x" (DESIGN 3.7 with 3.9).

    Parameters
    ----------
    decomp : Decomposition
    budget : float
        Compression factor B > 1; the target is ``decomp.original_macs / budget``.
    tol : float
        Relative window below the target that still counts as meeting it (0 <= tol < 1).

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
    plan = greedy_plan(decomp, target)
    macs = int(plan.macs())
    met = target * (1.0 - tol) <= macs <= target
    if met:
        msg = f"budget {budget:g}x met greedily: {macs} MACs (target {target:.0f})"
    else:
        msg = (f"budget {budget:g}x not met within {tol:.0%}: every direction with calibration energy "
               f"costs only {macs} MACs, below the target window [{target * (1 - tol):.0f}, {target:.0f}]")
    return plan, GreedyBudget(macs, target, original, met, msg)


def captured_energy(plan: Plan) -> dict[str, float]:
    """Per layer, the fraction of its calibration energy the plan keeps (dense blocks keep all).

    Works for plans of either cluster side; this is what greedy allocation maximises (summed over
    layers) for a MAC budget.
    """
    out = {}
    for name, lp in plan.layers.items():
        total = kept = 0.0
        for reg, ranks, dense in zip(lp.decomp.regions, lp.ranks, lp.dense):
            for b, k, is_dense in zip(reg.blocks, ranks, dense):
                e = float(b.eigvals.sum())
                total += e
                kept += e if is_dense else float(b.eigvals[:k].sum())
        out[name] = kept / total if total > 0 else 1.0
    return out
