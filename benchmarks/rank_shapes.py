"""Do SIMD-friendly rank shapes pay with the native kernel? (issue 15, item 2, measured).

From the stored real-data layout of HSCC G4 K4 at 6x (output side, docs/performance-data/real-layouts-v2.json) three
variants are built (benchmarks/layouts.py, random orthonormal factors) and timed on the native
kernel, interleaved, CPU time of the calling thread (one thread: robust to a loaded machine):

* ``stored``: the ranks as found by the budget bisection;
* ``multiple of 8``: every block's rank rounded up to a multiple of 8 (dense where that reaches
  the dense cost), so every GEMM dimension that is a rank is SIMD-aligned;
* ``equal per region``: in each layer, block c of every region gets the same rank (the mean of
  the stored ranks of block c over the regions, at most the block's size).

Usage: python benchmarks/rank_shapes.py [--runs 7] [--size 224] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]


def variants(layers: dict, fan_in: dict) -> dict:
    from types import SimpleNamespace  # noqa: PLC0415

    from hscc_core.compress.hscc import OUTPUT  # noqa: PLC0415

    def dense(name, k, size):  # the output side's break-even rule (it reads only the fan-in)
        return OUTPUT.block_macs(SimpleNamespace(fan_in=fan_in[name]), size, k)[1]

    def with_ranks(fn):
        out = copy.deepcopy(layers)
        for name, s in out.items():
            s["ranks"] = [[fn(name, r, c, k) for c, k in enumerate(rk)] for r, rk in enumerate(s["ranks"])]
            s["ranks"] = [[min(k, size) for k, size in zip(rk, sizes)] for rk, sizes in zip(s["ranks"], s["cluster_sizes"])]
            s["dense"] = [[dense(name, k, size) for k, size in zip(rk, sizes)]
                          for rk, sizes in zip(s["ranks"], s["cluster_sizes"])]
        return out

    def mean_rank(name, c):
        ks = [rk[c] for rk in layers[name]["ranks"] if c < len(rk)]
        return max(1, round(sum(ks) / len(ks)))

    return {"stored": layers,
            "multiple of 8": with_ranks(lambda n, r, c, k: -(-k // 8) * 8 if k else 0),
            "equal per region": with_ranks(lambda n, r, c, k: mean_rank(n, c) if k else 0)}


def main() -> int:
    from hscc_core.compress import native  # noqa: PLC0415
    from hscc_core.compress.hscc import HSCCConv2d  # noqa: PLC0415
    from hscc_core.nn.models import build_model  # noqa: PLC0415
    from layouts import model_from_layout  # noqa: PLC0415
    from fast_hscc import stored_layouts  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if not native.build():
        print("native kernel unavailable", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = build_model("alexnet", 4).eval()
    layers = stored_layouts(ROOT / "docs" / "performance-data" / "real-layouts-v2.json")[("hscc G4 K4", 6.0)]
    fan_in = {n: base.get_submodule(n).weight[0].numel() for n in layers}
    models = {k: model_from_layout(base, v, check_macs=False) for k, v in variants(layers, fan_in).items()}
    macs = {k: sum(m.analytical_macs() for m in mod.modules() if isinstance(m, HSCCConv2d)) for k, mod in models.items()}
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224)
        times = {k: [] for k in models}
        with torch.no_grad():
            for m in models.values():
                m(x)
            for _ in range(a.runs):
                for k, m in models.items():  # interleaved
                    t0 = time.thread_time()
                    m(x)
                    times[k].append((time.thread_time() - t0) * 1e3)
        for k, t in times.items():
            med = sorted(t)[len(t) // 2]
            rows.append({"variant": k, "batch": batch, "conv_macs": macs[k], "cpu_ms": med,
                         "macs_vs_stored": macs[k] / macs["stored"]})
            print(f"batch {batch:2d}  {k:17s} conv MACs x{macs[k] / macs['stored']:.3f}  CPU {med:8.1f} ms "
                  f"({med / times_median(times['stored']):.3f} of stored)", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


def times_median(t):
    return sorted(t)[len(t) // 2]


if __name__ == "__main__":
    sys.exit(main())
