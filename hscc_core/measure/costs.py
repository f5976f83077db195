"""Cost measurement: FLOPs, parameters and latency of original and compressed models (DESIGN 4).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` run on the real modules (it counts
2 x MACs for convolutions and linear layers), so only work that is actually executed counts; the
analytical counts of HSCC (Vacavant et al. 2026, arXiv 2604.23375) and of the baselines must agree
with it. Latency is the median and p90 of timed runs after warm-up, with the models interleaved
run by run so they share the machine's conditions; speed-up is a ratio of medians.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hscc_core.measure.machine import BUSY_SHARE, cpu_snapshot, others_share

# Seconds of timed rounds a compression run spends on its latency (runs.pipeline.compute_run): an
# interleaved median of as many rounds as fit, batch 1 first (cheap: it gets its full count), batch
# 32 on what is left.
LATENCY_BUDGET_S = 4.0


class BusyMachineWarning(UserWarning):
    """Other processes kept the CPUs busy while models were timed: the timings are noisy."""


_warned_busy = False  # one warning per process: a sweep times many runs on the same machine

__all__ = ["BUSY_SHARE", "LATENCY_BUDGET_S", "BusyMachineWarning", "count_flops", "count_params", "flop_profile",
           "layer_flops", "measure_latency", "speedup", "timing_input", "timing_layout"]


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


@contextmanager
def _float32_math() -> Iterator[None]:
    """Plain float32 convolutions and matmuls inside (TF32 off), the previous settings restored.

    PyTorch's defaults let cuDNN convolutions use TF32 but not matmuls, so an original model (all
    convolutions) would get TF32 while the factorised layers' GEMMs would not: timings would
    compare two precisions. Everything is timed in float32 instead.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _plain_convs(module: nn.Module) -> Iterator[nn.Conv2d]:
    """The convolutions of ``module`` that run as PyTorch convolutions, not inside a layer that keeps
    its own memory layout (class attribute ``own_memory_format``: the HSCC layers, Global SVD's
    and Tucker-2's, whose fast paths read their weights in the layout they were built with)."""
    if getattr(module, "own_memory_format", False):
        return
    if isinstance(module, nn.Conv2d):
        yield module
    for child in module.children():
        yield from _plain_convs(child)


def _channels_last_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides of ``t``'s shape in channels-last memory. Compared in full: a one-channel
    weight (the grey conv1) counts as channels-last contiguous in either layout, but PyTorch picks
    a convolution's output layout from the strides, and NCHW ones gave an NCHW output map."""
    return torch.empty_like(t, memory_format=torch.channels_last).stride()


@contextmanager
def timing_layout(models, dev: torch.device) -> Iterator[None]:
    """On the CPU, every plain convolution's weight in channels-last memory inside (values
    unchanged), the caller's tensors restored afterwards: the layout every model is timed in.

    The compressed layers all run channels-last, and so do the ReLUs and max-pools after them.
    An NCHW original's max-pools alone took 2.1-2.5 ms of its 23 ms batch-1 forward at 224 px, and
    are about 10x slower than channels-last at batch 32, so the same model timed NCHW read
    1.06-1.36x slower than channels-last (benchmarks/layout_check.py, docs/performance.md). Every
    model is timed in the faster layout, the original included. A GPU keeps the layouts as they
    are.

    Parameters
    ----------
    models : iterable of nn.Module
    dev : torch.device
        Where they are timed; only ``cpu`` changes anything.
    """
    swapped = []
    if dev.type == "cpu":
        for model in models:
            for conv in _plain_convs(model):
                w = conv.weight
                if w.dim() == 4 and w.stride() != _channels_last_strides(w):
                    swapped.append((w, w.data))
                    w.data = torch.empty_like(w.data, memory_format=torch.channels_last).copy_(w.data)
    try:
        yield
    finally:
        for w, data in swapped:
            w.data = data


def timing_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as every model is timed on it: a CPU image batch in channels-last memory (see
    :func:`timing_layout`); anything else as it is."""
    if x.device.type != "cpu" or x.dim() != 4:
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


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
    return flop_profile(model, layer_names, input_shape)[1]


def flop_profile(
    model: nn.Module, layer_names: list[str], input_shape: tuple[int, ...] = (1, 3, 224, 224)
) -> tuple[int, dict[str, int]]:
    """:func:`count_flops` and :func:`layer_flops` from one counted forward pass (a counted pass
    of a region-heavy HSCC model at 224 px takes seconds on a CPU)."""
    counter = _flop_counts(model, input_shape)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {}
    for name in layer_names:
        model.get_submodule(name)  # KeyError-like failure for a wrong name
        out[name] = int(sum(counts.get(f"{root}.{name}", {}).values()))
    return int(counter.get_total_flops()), out


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
    cuda_graphs: bool = True,
    budget_s: float | None = None,
    min_runs: int = 5,
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
    cuda_graphs : bool
        On a GPU, also time every model replayed from a captured CUDA graph, which removes the
        per-kernel launch cost of the Python forward (a deployment would do the same). Every model
        gets the same treatment; when one model cannot be captured, no model's graph timing is
        reported for that batch size. Ignored on the CPU.
    budget_s : float, optional
        Wall-clock seconds the timed rounds may take in all (warm-ups included). Each batch size
        gets an even share of what is left when it starts (so time batch 1 leaves to batch 32); its
        number of interleaved rounds is what fits its share, measured from its last warm-up round,
        between ``min_runs`` and ``runs``, and a round is not started once the share is spent
        (unless fewer than ``min_runs`` were taken). Batch sizes after the first get one warm-up
        round. None: exactly ``runs`` rounds, as before.
    min_runs : int
        Fewest timed rounds per batch size under a budget (>= 1; ``runs`` when that is fewer).

    Returns
    -------
    dict
        ``{"device": str, "runs": int, "warmup": int, "threads": int, "cuda_graphs": bool, "tf32": False,
        "memory_format": str, "budget_s": float or None, "runs_taken": {"b1": int, ...},
        "models": {name: {"b1": {"median_ms": float, "p90_ms": float}, "b32": {...}}}}``.
        ``runs`` is the fewest rounds any batch size got (``runs_taken`` has each). ``others_cpu`` is
        the share of the CPUs other processes used meanwhile (None where it cannot be read); above
        :data:`BUSY_SHARE` a :class:`BusyMachineWarning` is issued, once per process.
        On a GPU with ``cuda_graphs``, each batch entry also has ``"graph_median_ms"`` and
        ``"graph_p90_ms"`` (absent for a batch size where a capture failed).
    """
    if not models:
        raise ValueError("no model to time")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if budget_s is not None and (budget_s <= 0 or min_runs < 1):
        raise ValueError(f"budget_s must be > 0 and min_runs >= 1, got {budget_s}, {min_runs}")
    min_runs = min(min_runs, runs)
    dev = torch.device(device) if device is not None else _device(next(iter(models.values())))
    gen = torch.Generator().manual_seed(seed)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "runs": runs,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "cuda_graphs": bool(cuda_graphs and dev.type == "cuda"),
        "tf32": False,  # see _float32_math
        "memory_format": "channels_last" if dev.type == "cpu" else "as built",  # see timing_layout
        "others_cpu": None,  # share of the CPUs other processes used meanwhile (machine.others_share)
        "budget_s": None if budget_s is None else float(budget_s),
        "runs_taken": {},
        "models": {name: {} for name in models},
    }
    start = time.perf_counter()
    before = cpu_snapshot()
    with _eval(*models.values()), _float32_math():
        moved = {name: m.to(dev) if _device(m) != dev else m for name, m in models.items()}
        with timing_layout(moved.values(), dev):
            for i, bs in enumerate(batch_sizes):
                x = torch.randn((bs, *tuple(input_shape)[1:]), generator=gen).to(dev)
                x = timing_input(x)
                share_start = time.perf_counter()
                share = None if budget_s is None else (budget_s - (share_start - start)) / (len(batch_sizes) - i)
                n_warm = warmup if budget_s is None or i == 0 else min(warmup, 1)
                round_s = 0.0
                for _ in range(n_warm):
                    t0 = time.perf_counter()
                    for m in moved.values():
                        m(x)
                    _sync(dev)
                    round_s = time.perf_counter() - t0
                n_runs = runs
                if share is not None:  # as many rounds as the rest of this batch size's share holds
                    left = share - (time.perf_counter() - share_start)
                    n_runs = max(min_runs, min(runs, int(left / round_s) if round_s > 0 else runs))
                times: dict[str, list[float]] = {name: [] for name in moved}
                for r in range(n_runs):
                    if share is not None and r >= min_runs and time.perf_counter() - share_start > share:
                        break  # the machine got slower than the warm-up said: keep to the budget
                    # Interleave so drifts (thermal, other load) hit every model alike.
                    for name, m in moved.items():
                        times[name].append(_time_once(m, x, dev))
                result["runs_taken"][f"b{bs}"] = len(next(iter(times.values())))
                for name, t in times.items():
                    result["models"][name][f"b{bs}"] = _stats(t)
                if result["cuda_graphs"]:
                    graph_times = _time_graphs(moved, x, runs, warmup)
                    for name, t in (graph_times or {}).items():
                        g = _stats(t)
                        result["models"][name][f"b{bs}"].update(graph_median_ms=g["median_ms"], graph_p90_ms=g["p90_ms"])
    result["runs"] = min(result["runs_taken"].values(), default=runs)
    result["others_cpu"] = others_share(before, cpu_snapshot())
    _warn_if_busy(result["others_cpu"])
    return result


def _warn_if_busy(share: float | None) -> None:
    global _warned_busy
    if share is not None and share > BUSY_SHARE and not _warned_busy:
        _warned_busy = True
        warnings.warn(BusyMachineWarning(
            f"other processes used {share:.0%} of the CPUs while models were timed: these timings are "
            "noisy (each run records its share as latency_ms.others_cpu); time on a quiet machine to quote them"),
            stacklevel=3)


def _stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90))}


def _time_graphs(models: dict[str, nn.Module], x: torch.Tensor, runs: int, warmup: int) -> dict | None:
    """Per model, ``runs`` timings (ms) of one CUDA-graph replay of ``model(x)``, interleaved like
    the eager timings; None when any model cannot be captured (then none is reported)."""
    graphs = {}
    try:
        for name, m in models.items():
            # Warm-up on a side stream, as torch.cuda.graphs asks before a capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(warmup, 1)):
                    m(x)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                m(x)
            graphs[name] = g
    except Exception:  # noqa: BLE001 - any capture failure means "no graph timing", not a crash
        torch.cuda.synchronize()
        return None
    for g in graphs.values():
        for _ in range(warmup):
            g.replay()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(runs):
        for name, g in graphs.items():
            times[name].append(_time_once(g.replay, None, x.device))
    return times


def _time_once(fn, x: torch.Tensor | None, dev: torch.device) -> float:
    """Milliseconds of one ``fn(x)`` (``fn()`` when ``x`` is None): CUDA events on a GPU."""
    call = fn if x is None else (lambda: fn(x))
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def speedup(latency: dict, baseline: str, other: str) -> dict[str, float]:
    """Median-latency ratio baseline / other per batch size (``{"b1": 1.4, "b32": 1.2}``)."""
    base = latency["models"][baseline]
    oth = latency["models"][other]
    return {b: base[b]["median_ms"] / oth[b]["median_ms"] for b in base if b in oth}
