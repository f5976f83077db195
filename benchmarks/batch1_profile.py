"""Where a batch-1 forward's time goes, per compressed model: convolutions warm and cold, classifier.

At batch 1 a compressed model's convolutions compete with the unchanged classifier (AlexNet's two
large linear layers, 218 MB of float32 weights read per image at any input size) for the memory
bus: the classifier evicts the convolutions' weights from the caches between two forwards, so each
forward reads them again from memory. This script separates the parts, for the workspace's baseline
compressed at one budget by the uniform rule (as ``hscc bench --speed`` does):

- ``features warm``: ``model.features`` alone, run repeatedly (its weights stay in the caches as
  far as they fit);
- ``features cold``: the same after streaming through a buffer larger than the caches (what a whole
  forward sees after the classifier);
- ``features after the first``: the same in the order in which ``hscc bench --speed`` and every
  run time a model: its own whole forward, then one of the first model (the original), then this;
- ``classifier``: the classifier after ``features`` in whole forwards;
- ``forward``: whole forwards, repeated, and the speed-up against the original timed the same way.

Medians over ``--rounds``, the models interleaved round by round. ``conv weights`` is
``weight_bytes.conv_weight_bytes`` (what the native kernel reads); ``weights / cold`` is that size
over the cold time, the rate the convolutions read their weights at. docs/performance.md, section
"Why batch 1 stops where it does".

Usage (from the repository root; the real data needs its baseline in the cache):

    OMP_NUM_THREADS=1 python benchmarks/batch1_profile.py --data ../shared/data/brain-tumor-mri --configs 4x4 8x1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from weight_bytes import conv_weight_bytes, model_parser, models_and_input  # noqa: E402

from hscc_core.measure.costs import timing_input, timing_layout  # noqa: E402


def _median_ms(times: list[float]) -> float:
    return 1e3 * sorted(times)[len(times) // 2]


def profile(models: dict[str, nn.Module], x: torch.Tensor, rounds: int = 30, flush_mb: int = 512) -> dict:
    """Time the parts of a batch-1 forward of each model (``features``, ``avgpool``, ``classifier``).

    Parameters
    ----------
    models : dict of str to nn.Module
        Models with ``features``, ``avgpool`` and ``classifier`` (AlexNet's layout); the first is the
        reference of ``speedup``.
    x : torch.Tensor
        One input batch.
    rounds : int
        Timed rounds per measurement; models interleaved round by round.
    flush_mb : int
        Size of the buffer streamed through before a cold measurement (more than the caches).

    Returns
    -------
    dict
        Per model: ``conv_weight_mb``, ``features_warm_ms``, ``features_cold_ms``, ``features_after_first_ms``,
        ``classifier_ms``, ``forward_ms``, ``weights_gb_per_s`` (conv weights over the cold time)
        and ``speedup`` (the first model's forward over this one's).
    """
    if rounds < 1 or flush_mb < 1:
        raise ValueError(f"rounds and flush_mb must be >= 1, got {rounds} and {flush_mb}")
    flush = torch.zeros(flush_mb * 2 ** 20 // 4)
    t = {name: {"warm": [], "cold": [], "after_first": [], "classifier": [], "forward": []} for name in models}
    reference = next(iter(models.values()))
    # The layout hscc_core.measure.costs.measure_latency times every model in (channels-last).
    x = timing_input(x)
    with torch.inference_mode(), timing_layout(models.values(), x.device):
        for m in models.values():  # warm-up (and the native programs packed)
            m.eval()(x)
        for _ in range(rounds):
            for name, m in models.items():
                for _ in range(2):  # the weights into the caches, as far as they fit
                    m.features(x)
                s = time.perf_counter()
                m.features(x)
                t[name]["warm"].append(time.perf_counter() - s)
                flush.add_(1.0)  # stream past the caches
                s = time.perf_counter()
                h = m.features(x)
                t[name]["cold"].append(time.perf_counter() - s)
                m(x)  # the bench's order: this model's whole forward, the first model's, then this one's
                reference(x)
                s = time.perf_counter()
                m.features(x)
                t[name]["after_first"].append(time.perf_counter() - s)
                h = torch.flatten(m.avgpool(h), 1)
                s = time.perf_counter()
                m.classifier(h)
                t[name]["classifier"].append(time.perf_counter() - s)
                for _ in range(2):
                    m(x)
                s = time.perf_counter()
                m(x)
                t[name]["forward"].append(time.perf_counter() - s)
    first = next(iter(models))
    out = {}
    for name, m in models.items():
        mb = conv_weight_bytes(m) / 1e6
        cold = _median_ms(t[name]["cold"])
        out[name] = {"conv_weight_mb": mb, "features_warm_ms": _median_ms(t[name]["warm"]),
                     "features_cold_ms": cold, "features_after_first_ms": _median_ms(t[name]["after_first"]),
                     "classifier_ms": _median_ms(t[name]["classifier"]),
                     "forward_ms": _median_ms(t[name]["forward"]), "weights_gb_per_s": mb / cold}
    for name in out:
        out[name]["speedup"] = out[first]["forward_ms"] / out[name]["forward_ms"]
    return out


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__.splitlines()[0], ["1x1", "4x4", "8x1"],
                     "HSCC configurations G x K (output side); Global SVD is always added")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--flush-mb", type=int, default=512, help="buffer streamed before a cold measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    start = models_and_input(a, ("batch", "rounds", "flush_mb"), baselines=("svd",))
    if start is None:
        return 2
    models, x = start
    result = profile(models, x, rounds=a.rounds, flush_mb=a.flush_mb)
    if a.json:
        print(json.dumps({"command": " ".join(sys.argv), "threads": torch.get_num_threads(), "batch": a.batch,
                          "budget": a.budget, "models": result}, indent=1))
        return 0
    print(f"batch {a.batch}, {torch.get_num_threads()} thread(s), {a.budget:g}x conv budget, medians of {a.rounds}")
    print(f"{'model':14s} {'conv weights':>12s} {'feat. warm':>10s} {'feat. cold':>10s} {'after first':>11s} "
          f"{'weights/cold':>12s} {'classifier':>10s} {'forward':>8s} {'speed-up':>8s}")
    for name, r in result.items():
        print(f"{name:14s} {r['conv_weight_mb']:9.1f} MB {r['features_warm_ms']:7.2f} ms {r['features_cold_ms']:7.2f} ms "
              f"{r['features_after_first_ms']:8.2f} ms {r['weights_gb_per_s']:7.1f} GB/s {r['classifier_ms']:7.2f} ms "
              f"{r['forward_ms']:5.1f} ms {r['speedup']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
