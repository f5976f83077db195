"""The same model timed in NCHW and in channels-last memory: what the layout alone is worth.

Every compressed layer of this project (HSCC's native kernel, Global SVD's and Tucker-2's GEMM
paths) runs channels-last, and so do the ReLUs and max-pools after it. Until 2026-11-29 the
original was timed in PyTorch's default NCHW, whose CPU max-pool is several times slower, so part
of every measured speed-up was the layout, not the compression. ``measure_latency`` now times every
model channels-last (``hscc_core.measure.costs.timing_layout``); this script measures how large
the difference was: one model, two layouts, timed interleaved in one process (medians), with the
time of its max-pools beside. docs/performance.md, section "The original in channels-last".

Usage (from the repository root):

    python benchmarks/layout_check.py --sizes 112 224 --threads 1 2 --json
    python benchmarks/layout_check.py --data ../shared/data/brain-tumor-mri --threads 1 2

Without ``--data`` the models are AlexNets with random weights and the folded one-channel conv1
(speed does not depend on the values); with it, the workspace's trained baseline at its own size.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hscc_core.measure.costs import timing_input, timing_layout  # noqa: E402
from hscc_core.nn.grey import input_shape  # noqa: E402


def _pool_time(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds the max-pools of ``model.features`` take in one forward of ``x`` (layer by layer)."""
    total, h = 0.0, x
    for layer in model.features:
        start = time.perf_counter()
        h = layer(h)
        if isinstance(layer, nn.MaxPool2d):
            total += time.perf_counter() - start
    return total


def compare(model: nn.Module, size: int, batch: int, rounds: int, warmup: int = 2) -> dict:
    """Median forward and max-pool milliseconds of ``model`` as it is (NCHW) and channels-last.

    The two layouts are two copies of one model, timed alternately round by round.
    """
    nchw = copy.deepcopy(model).eval()
    last = copy.deepcopy(model).eval()
    x = torch.randn(input_shape(model, size, batch))
    times = {"nchw": [], "channels_last": []}
    pools = {"nchw": [], "channels_last": []}
    with torch.inference_mode(), timing_layout([last], torch.device("cpu")):
        inputs = {"nchw": x, "channels_last": timing_input(x)}
        models = {"nchw": nchw, "channels_last": last}
        for _ in range(warmup):
            for name, m in models.items():
                m(inputs[name])
        for _ in range(rounds):
            for name, m in models.items():
                start = time.perf_counter()
                m(inputs[name])
                times[name].append(time.perf_counter() - start)
                pools[name].append(_pool_time(m, inputs[name]))

    def med(v):
        return sorted(v)[len(v) // 2] * 1e3

    row = {"size": size, "batch": batch, "threads": torch.get_num_threads(), "rounds": rounds}
    for name in times:
        row[f"{name}_ms"] = med(times[name])
        row[f"{name}_maxpool_ms"] = med(pools[name])
    row["nchw_over_channels_last"] = row["nchw_ms"] / row["channels_last_ms"]
    return row


def _models(a: argparse.Namespace) -> list[tuple[int, nn.Module]]:
    if a.data is None:
        from hscc_core.nn.grey import fold_grey_input  # noqa: PLC0415
        from hscc_core.nn.models import build_model  # noqa: PLC0415

        torch.manual_seed(0)
        return [(s, fold_grey_input(build_model("alexnet", 4)).eval()) for s in a.sizes]
    from hscc_core.runs.workspace import Workspace  # noqa: PLC0415

    try:
        ws = Workspace(data=a.data, cache_dir=a.cache_dir)
        ready = ws.has_baseline()
    except ValueError as e:  # a missing or malformed dataset folder
        print(e, file=sys.stderr)
        return []
    if not ready:
        print("no baseline in this cache: run `hscc prepare` with the same --data and --cache-dir first", file=sys.stderr)
        return []
    model, _ = ws.baseline(train_if_missing=False)
    return [(ws.size, model.eval())]


def _int_list(values: list[str]) -> list[int]:
    return [int(v) for s in values for v in s.split()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="dataset folder whose trained baseline to time")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--sizes", nargs="+", default=["112", "224"], help="input sizes (random-weight AlexNets)")
    p.add_argument("--batches", nargs="+", default=["1", "32"])
    p.add_argument("--threads", nargs="+", default=["1", "2"])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        a.sizes, a.batches, a.threads = _int_list(a.sizes), _int_list(a.batches), _int_list(a.threads)
    except ValueError:
        print("--sizes, --batches and --threads take whole numbers", file=sys.stderr)
        return 2
    if a.rounds < 1 or min(a.sizes + a.batches + a.threads) < 1:
        print("--rounds, --sizes, --batches and --threads must be >= 1", file=sys.stderr)
        return 2
    models = _models(a)
    if not models:
        return 1
    saved = torch.get_num_threads()
    rows = []
    try:
        for threads in a.threads:
            torch.set_num_threads(threads)
            for size, model in models:
                for batch in a.batches:
                    rows.append(compare(model, size, batch, a.rounds))
    finally:
        torch.set_num_threads(saved)
    if a.json:
        print(json.dumps({"command": "benchmarks/layout_check.py " + " ".join(argv or sys.argv[1:]), "rows": rows},
                         indent=1))
        return 0
    print("size batch threads  NCHW ms  channels-last ms  NCHW / CL  max-pools NCHW / CL ms")
    for r in rows:
        print(f"{r['size']:4d} {r['batch']:5d} {r['threads']:7d} {r['nchw_ms']:8.1f} {r['channels_last_ms']:17.1f} "
              f"{r['nchw_over_channels_last']:9.2f}x {r['nchw_maxpool_ms']:10.2f} / {r['channels_last_maxpool_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
