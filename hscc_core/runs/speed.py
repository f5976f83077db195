"""Wall-clock speed of compressed models against the original: the ``hscc bench --speed`` table.

For each method (HSCC, Vacavant et al. 2026, arXiv 2604.23375; Global SVD; Tucker-2) and each
conv-FLOPs budget, the baseline is compressed exactly as a compression run does
(:func:`hscc_core.runs.pipeline.build_compressed`: same decomposition, same budget bisection, same
builders), then original and compressed models are timed in this process, interleaved run by run
after warm-up (:func:`hscc_core.measure.costs.measure_latency`), at batch 1 and 32, on the CPU and on a
GPU when one is present (CUDA events). Speed-up is the ratio of median latencies; the *speed-up
efficiency* is that speed-up over the whole-model FLOPs ratio (the paper reached 1.38x on a 5.3x
FLOPs cut, an efficiency of 0.26). See docs/performance.md for measured tables.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from hscc_core.compress.methods import get_method
from hscc_core.compress.native import kernel_of
from hscc_core.measure.costs import count_flops, flop_profile, layer_flops, measure_latency
from hscc_core.measure.machine import machine_info
from hscc_core.nn.grey import input_shape
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import build_compressed
from hscc_core.runs.workspace import Workspace

__all__ = ["default_devices", "machine_info", "speed_table"]

BATCHES = (1, 32)
# Settings only a data-aware method takes (RunConfig refuses them for the weight-only baselines).
HSCC_ONLY = ("calibration", "rank_multiple")


def default_devices() -> list[str]:
    """``["cpu"]``, plus ``"cuda"`` when a GPU is available."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _block(latency: dict, name: str) -> dict:
    out = {}
    for b, v in latency["models"][name].items():
        out[b] = {"median": v["median_ms"], "p90": v["p90_ms"]}
        if "graph_median_ms" in v:
            out[b].update(graph_median=v["graph_median_ms"], graph_p90=v["graph_p90_ms"])
    return out


def speed_table(
    ws: Workspace,
    methods: Sequence[str] = ("hscc", "svd", "tucker"),
    budgets: Sequence[float] = (3.0, 6.0),
    hscc_grid: int = 2,
    hscc_clusters: int = 4,
    hscc_allocation: str = "uniform",
    runs: int = 20,
    devices: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    settings: dict | None = None,
) -> dict:
    """Time the original against each method at each budget.

    Parameters
    ----------
    ws : Workspace
        Its baseline must exist (``hscc prepare``).
    methods : sequence of {"hscc", "svd", "tucker"}
    budgets : sequence of float
        Conv-FLOPs compression factors (> 1), met by bisection on the energy threshold.
    hscc_grid, hscc_clusters : int
        HSCC's G and K (the defaults of a compression run).
    hscc_allocation : {"uniform", "greedy"}
        HSCC's rank allocation (uniform: the paper's rule, the bench table's).
    runs : int
        Timed runs per model and batch size, after 3 warm-up runs (>= 20 for reported numbers).
    devices : sequence of str, optional
        Default :func:`default_devices`.
    progress : callable(stage, done, total), optional
        Stage ``"speed"`` once per (method, budget, device); the compression stages of
        :func:`~hscc_core.runs.pipeline.build_compressed` are passed through.
    settings : dict, optional
        Further :class:`~hscc_core.runs.config.RunConfig` fields of every model, as a run takes them
        (``calib_size``, ``seed``, ``calib_flip``; ``calibration`` and ``rank_multiple`` for HSCC
        only, which the weight-only baselines do not read). Each row's ``config`` says what was built.

    Returns
    -------
    dict
        ``{"rows": [row, ...], "machine": machine_info(), "runs": runs, "input_shape": [...]}``
        with one row per (method, budget, device)::

            {"method", "budget", "energy", "budget_met", "device", "flops", "flops_original",
             "flops_ratio", "layer_flops_ratio", "speedup_b1", "speedup_b32",
             "speedup_p90_b1", "speedup_p90_b32", "efficiency_b1", "efficiency_b32",
             "latency_ms": {"original": {"b1": {"median", "p90"}, "b32": {...}},
                            "compressed": {...}, "threads": int, "runs": int}}

        ``flops_ratio`` is whole-model FLOPs original / compressed, ``layer_flops_ratio`` the same
        for the compressed layers only; ``efficiency_*`` is speed-up / ``flops_ratio``. GPU rows
        also carry ``speedup_graph_b1``/``_b32`` and ``efficiency_graph_*``: both models replayed
        from captured CUDA graphs (see :func:`~hscc_core.measure.costs.measure_latency`), with
        ``graph_median``/``graph_p90`` in their latency blocks; absent where a capture failed.
    """
    report = progress or (lambda stage, done, total: None)
    devices = list(devices) if devices is not None else default_devices()
    for d in devices:
        if torch.device(d).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {d!r} requested but no GPU is available")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    model, meta = ws.baseline(train_if_missing=False)
    model = copy.deepcopy(model).cpu().eval()  # timing moves models; leave the cached one alone
    shape = input_shape(model, ws.size)  # one grey channel: conv1 is folded (hscc_core.nn.grey)
    flops_original = count_flops(model, shape)
    orig_layer_fl: dict[tuple, int] = {}
    total = len(methods) * len(budgets) * len(devices)
    rows = []
    settings = dict(settings or {})
    for method in methods:
        for budget in budgets:
            own = settings if get_method(method).data_aware else {
                k: v for k, v in settings.items() if k not in HSCC_ONLY}
            config = RunConfig(method=method, grid=hscc_grid, clusters=hscc_clusters, energy=None,
                               budget=float(budget),
                               allocation=hscc_allocation if method == "hscc" else "uniform", **own)
            built = build_compressed(ws, config, progress, model=model, meta=meta)
            layers = list(built.plan.summaries())
            if tuple(layers) not in orig_layer_fl:  # the same layers for every method: count once
                orig_layer_fl[tuple(layers)] = sum(layer_flops(model, layers, shape).values())
            done = len(rows)
            new = _time_on_devices(model, built, method, budget, layers, shape, devices, runs, flops_original,
                                   orig_layer_fl[tuple(layers)], lambda i: report("speed", done + i, total))
            rows += [dict(r, config=config.canonical()) for r in new]
            model.cpu()  # back on the CPU for the next method's build and FLOPs count
    report("speed", total, total)
    return {"rows": rows, "machine": machine_info(), "runs": runs, "input_shape": list(shape)}


def _time_on_devices(model, built, method: str, budget: float, layers, shape, devices, runs: int,
                     flops_original: int, layer_fl_orig: int, tick) -> list[dict]:
    """One row per device: original and compressed model timed interleaved in this process."""
    compressed = built.model.eval()
    fl, per_layer = flop_profile(compressed, layers, shape)  # one counted pass for both
    out = []
    for i, device in enumerate(devices):
        tick(i)
        lat = measure_latency({"original": model, "compressed": compressed}, shape, batch_sizes=BATCHES,
                              runs=runs, device=device)
        row = _row(method, budget, built, lat, fl, flops_original, sum(per_layer.values()), layer_fl_orig)
        row["kernel"] = kernel_of(compressed.to(device))  # which path the HSCC layers took
        out.append(row)
    return out


def _row(method: str, budget: float, built, lat: dict, fl: int, flops_original: int, layer_fl: int,
         layer_fl_orig: int) -> dict:
    """One row of the table: FLOPs ratios, median and p90 speed-ups, efficiencies, latencies."""
    orig, comp = _block(lat, "original"), _block(lat, "compressed")
    row = {"method": method, "budget": float(budget),
           "energy": None if built.energy is None else float(built.energy),  # None: greedy allocation
           "budget_met": None if built.outcome is None else bool(built.outcome.met),
           "device": lat["device"], "flops": fl, "flops_original": flops_original,
           "flops_ratio": flops_original / max(fl, 1), "layer_flops_ratio": layer_fl_orig / max(layer_fl, 1)}
    for b in (f"b{n}" for n in BATCHES):
        row[f"speedup_{b}"] = orig[b]["median"] / comp[b]["median"]
        row[f"speedup_p90_{b}"] = orig[b]["p90"] / comp[b]["p90"]
        row[f"efficiency_{b}"] = row[f"speedup_{b}"] / row["flops_ratio"]
        if "graph_median" in orig[b] and "graph_median" in comp[b]:
            # Both models replayed from CUDA graphs (no kernel-launch cost).
            row[f"speedup_graph_{b}"] = orig[b]["graph_median"] / comp[b]["graph_median"]
            row[f"efficiency_graph_{b}"] = row[f"speedup_graph_{b}"] / row["flops_ratio"]
    row["latency_ms"] = {"original": orig, "compressed": comp, "threads": lat["threads"], "runs": lat["runs"],
                         "memory_format": lat["memory_format"], "others_cpu": lat["others_cpu"]}
    return row
