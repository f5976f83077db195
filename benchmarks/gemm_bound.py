"""The native kernel against MKL on HSCC's own GEMMs: is it the kernel or the shapes?

At batch 32 HSCC's convolutions run behind Global SVD's at the same FLOPs budget (docs/performance.md).
Two explanations: the native kernel does each GEMM slower than a tuned BLAS would, or HSCC's GEMMs
are shapes no BLAS runs fast (each region's own factors over that region's few rows, ranks that are
not multiples of the vector width, small 1x1 steps). This script separates them. For every
compressed convolution of the workspace's baseline compressed at one budget by the uniform rule
(as ``hscc bench --speed`` builds the models), warm, it times:

- ``native``: the layer's forward as every run times it (the native kernel: im2col, every GEMM step,
  bias and the channel scatter into the output);
- ``mkl`` (HSCC layers): only the layer's GEMM steps, one ``torch.mm`` (the BLAS this PyTorch ships)
  per step over all of a region's rows at once, on operands prepared beforehand: the same MACs, with
  no im2col, no write-out and the tallest GEMMs the layer allows, the best case for a BLAS;
- for every other model's layers (the original, Global SVD, Tucker-2): their PyTorch forward
  (oneDNN's convolutions).

Each row gives the layer's MACs (``FlopCounterMode``, which the native kernel reports exactly) and
GMAC/s. The layers of all models are interleaved round by round; medians of ``--rounds``.

Usage (from the repository root; the real data needs its baseline in the cache):

    OMP_NUM_THREADS=1 python benchmarks/gemm_bound.py --data ../shared/data/brain-tumor-mri --configs 1x1 4x4 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from weight_bytes import model_parser, models_and_input  # noqa: E402

from hscc_core.measure.costs import timing_input, timing_layout  # noqa: E402
from hscc_core.measure.machine import machine_info  # noqa: E402


def _convs(model: nn.Module) -> list[int]:
    """Indices in ``model.features`` of its convolutions (plain, factorised or HSCC): the modules
    with weights (ReLUs and pools have none)."""
    return [i for i, m in enumerate(model.features) if next(m.parameters(), None) is not None]


def _mkl_steps(layer: nn.Module, batch: int):
    """The HSCC layer's GEMM steps as (A, W^T, out) operands, one per step and region, or None for
    another kind of layer."""
    from hscc_core.compress.hscc.layer import RegionLayer  # noqa: PLC0415
    from hscc_core.compress.native.program import lower  # noqa: PLC0415

    if not isinstance(layer, RegionLayer):
        return None
    gen = torch.Generator().manual_seed(0)
    ops = []
    for region in lower(layer).regions:
        rows = batch * region.positions
        for step in region.steps:
            n, k = step.weight.shape
            ops.append((torch.randn(rows, k, generator=gen), step.weight.t().contiguous(), torch.empty(rows, n)))
    return ops


def _macs(layer: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops() // 2


def bound(models: dict[str, nn.Module], x: torch.Tensor, rounds: int = 7) -> list[dict]:
    """Time every compressed convolution of each model, and HSCC's GEMM steps through MKL.

    Parameters
    ----------
    models : dict of str to nn.Module
        Models with AlexNet's ``features``; each convolution is timed on the input it sees in a
        forward of ``x``.
    x : torch.Tensor
        One input batch.
    rounds : int
        Timed rounds; every layer of every model is timed once per round, interleaved.

    Returns
    -------
    list of dict
        One row per model and convolution: ``model``, ``layer`` (index in ``features``), ``macs``,
        ``native_ms`` and ``native_gmacs`` (the layer's forward), and for HSCC layers ``mkl_ms`` and
        ``mkl_gmacs`` (its GEMM steps through ``torch.mm``).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    x = timing_input(x)
    rows, jobs = [], []
    with torch.inference_mode(), timing_layout(models.values(), x.device):
        for name, model in models.items():
            model.eval()
            h, inputs = x, {}
            for i, m in enumerate(model.features):
                inputs[i] = h
                h = m(h)
            for i in _convs(model):
                layer = model.features[i]
                row = {"model": name, "layer": i, "macs": _macs(layer, inputs[i])}
                rows.append(row)
                jobs.append((row, lambda layer=layer, h=inputs[i]: layer(h), _mkl_steps(layer, x.shape[0])))
        times = [{"native": [], "mkl": []} for _ in jobs]
        for _ in range(rounds + 1):  # the first round warms the caches and the kernel's buffers
            for (row, forward, ops), t in zip(jobs, times):
                start = time.perf_counter()
                forward()
                t["native"].append(time.perf_counter() - start)
                if ops is not None:
                    start = time.perf_counter()
                    for a, wt, out in ops:
                        torch.mm(a, wt, out=out)
                    t["mkl"].append(time.perf_counter() - start)
    for (row, _, ops), t in zip(jobs, times):
        for kind in ("native", "mkl") if ops is not None else ("native",):
            ms = 1e3 * sorted(t[kind][1:])[len(t[kind][1:]) // 2]
            row[f"{kind}_ms"] = ms
            row[f"{kind}_gmacs"] = row["macs"] / ms / 1e6
    return rows


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__.splitlines()[0], ["1x1", "4x4"], "HSCC configurations G x K (output side)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    start = models_and_input(a, ("batch", "rounds"))
    if start is None:
        return 2
    models, x = start
    rows = bound(models, x, rounds=a.rounds)
    if a.json:
        print(json.dumps({"command": " ".join(sys.argv), "machine": machine_info(), "threads": torch.get_num_threads(),
                          "batch": a.batch, "budget": a.budget, "rows": rows}, indent=1))
        return 0
    print(f"batch {a.batch}, {torch.get_num_threads()} thread(s), {a.budget:g}x conv budget, medians of {a.rounds}")
    for r in rows:
        mkl = f"  MKL steps {r['mkl_ms']:7.2f} ms {r['mkl_gmacs']:5.1f} GMAC/s" if "mkl_ms" in r else ""
        print(f"{r['model']:12s} features.{r['layer']:<2d} {r['macs'] / 1e6:9.1f} MMAC  "
              f"forward {r['native_ms']:7.2f} ms {r['native_gmacs']:5.1f} GMAC/s{mkl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
