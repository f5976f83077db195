"""Cost measurement: FLOPs, parameters and latency of original and compressed models (DESIGN 4).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` run on the real modules (it counts
2 x MACs for convolutions and linear layers), so only work that is actually executed counts; the
analytical counts of HSCC (Vacavant et al. 2026, arXiv 2604.23375) and of the baselines must agree
with it. Latency is the median and p90 of timed runs after warm-up, with the models interleaved
run by run so they share the machine's conditions; speed-up is a ratio of medians.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params", "layer_flops", "measure_latency", "speedup"]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval(*models: nn.Module) -> Iterator[None]:
    """Eval mode inside, every submodule's own train/eval flag restored afterwards."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, was in flags:
            m.training = was


def _flop_counts(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    x = torch.zeros(tuple(input_shape), device=_device(model))
    counter = FlopCounterMode(display=False)
    with _eval(model), torch.no_grad(), counter:
        model(x)
    return counter


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Whole-model FLOPs (2 x MACs for conv/linear) of one forward pass on ``input_shape``."""
    return int(_flop_counts(model, input_shape).get_total_flops())


def layer_flops(
    model: nn.Module, layer_names: list[str], input_shape: tuple[int, ...] = (1, 3, 224, 224)
) -> dict[str, int]:
    """FLOPs of the named submodules (everything inside each one, e.g. a replaced layer's factors).

    FlopCounterMode keys modules by ``<root class name>.<qualified name>`` and attributes a
    submodule's work to all of its ancestors, so each entry is the named module's whole cost.
    A module that does not run (or runs no counted op) gets 0.
    """
    counts = _flop_counts(model, input_shape).get_flop_counts()
    root = type(model).__name__
    out = {}
    for name in layer_names:
        model.get_submodule(name)  # KeyError-like failure for a wrong name
        out[name] = int(sum(counts.get(f"{root}.{name}", {}).values()))
    return out


def count_params(model: nn.Module) -> int:
    """Number of parameters (unique tensors)."""
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    batch_sizes: tuple[int, ...] = (1, 32),
    runs: int = 20,
    warmup: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict:
    """Time forward passes of several models under the same conditions.

    Parameters
    ----------
    models : dict of str to nn.Module
        E.g. ``{"original": m, "compressed": c}``; run in eval mode (restored afterwards).
    input_shape : tuple
        (N, C, H, W); N is replaced by each batch size.
    batch_sizes : tuple of int
    runs, warmup : int
        Timed and untimed runs per model and batch size (the design asks for runs >= 20).
    device : str or torch.device, optional
        Where to time; default the first model's device. Models are moved there if needed.
    seed : int
        Seed of the random input.

    Returns
    -------
    dict
        ``{"device": str, "runs": int, "warmup": int, "threads": int,
        "models": {name: {"b1": {"median_ms": float, "p90_ms": float}, "b32": {...}}}}``.
    """
    if not models:
        raise ValueError("no model to time")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    dev = torch.device(device) if device is not None else _device(next(iter(models.values())))
    gen = torch.Generator().manual_seed(seed)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "runs": runs,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "models": {name: {} for name in models},
    }
    with _eval(*models.values()):
        moved = {name: m.to(dev) if _device(m) != dev else m for name, m in models.items()}
        for bs in batch_sizes:
            x = torch.randn((bs, *tuple(input_shape)[1:]), generator=gen).to(dev)
            for m in moved.values():
                for _ in range(warmup):
                    m(x)
            _sync(dev)
            times: dict[str, list[float]] = {name: [] for name in moved}
            for _ in range(runs):
                # Interleave so drifts (thermal, other load) hit every model alike.
                for name, m in moved.items():
                    times[name].append(_time_once(m, x, dev))
            for name, t in times.items():
                a = np.asarray(t)
                result["models"][name][f"b{bs}"] = {
                    "median_ms": float(np.median(a)),
                    "p90_ms": float(np.percentile(a, 90)),
                }
    return result


def _time_once(model: nn.Module, x: torch.Tensor, dev: torch.device) -> float:
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1e3


def speedup(latency: dict, baseline: str, other: str) -> dict[str, float]:
    """Median-latency ratio baseline / other per batch size (``{"b1": 1.4, "b32": 1.2}``)."""
    base = latency["models"][baseline]
    oth = latency["models"][other]
    return {b: base[b]["median_ms"] / oth[b]["median_ms"] for b in base if b in oth}
