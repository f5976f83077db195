"""Runs: evaluate the original model, or compress-evaluate-measure one configuration, and store it.

A run is a JSON-ready dict with the fields of DESIGN.md section 5, its typed per-layer summaries
(``layers``: :class:`hscc_core.compress.summary.LayerSummary` as JSON) and arrays (test
predictions, probabilities, per-layer cluster labels) kept beside it in the run store. Every method
goes through the same steps (:mod:`hscc_core.compress.methods`): calibration statistics (data-aware
methods only, stored per model, data, calibration set and what the cluster side needs), a
decomposition (kept in memory for the last configurations), a plan for the run's target (with layer
sensitivities, stored per model, decomposition and calibration set, when the allocation asks for
them), a sequential refit of that plan when the calibration asks for it (its statistics stored per
layer under the plan of the layers before it), a build.

Every model here reads one grey input channel: the workspace folds conv1
(:mod:`hscc_core.nn.grey`), and shapes and input tensors take their channel count from the model.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.hscc.sequential import cross_stats, load_cross, save_cross
from hscc_core.compress.methods import get_method, make_plan
from hscc_core.compress.sensitivity import SENSITIVITY_ENERGIES, SENSITIVITY_IMAGES, Sensitivity, layer_sensitivity
from hscc_core.data.folders import GreyBatches, calibration_indices
from hscc_core.measure.costs import (LATENCY_BUDGET_S, count_flops, count_params, flop_profile, layer_flops,
                                     measure_latency, speedup)
from hscc_core.measure.fidelity import layer_errors
from hscc_core.measure.metrics import classification_metrics, fidelity, paired_comparison, predict_proba
from hscc_core.nn.grey import input_channels, input_shape
from hscc_core.nn.training import finetune_config, pick_device, train
from hscc_core.runs.config import DEFAULTS, RunConfig, calibration_count
from hscc_core.runs.store import cache_key
from hscc_core.runs.versions import ORIGINAL_VERSION, RUN_VERSION
from hscc_core.runs.workspace import Workspace

__all__ = ["Compressed", "ORIGINAL_VERSION", "RUN_VERSION", "SENSITIVITY_VERSION", "SEQUENTIAL_VERSION",
           "STATS_VERSION", "build_compressed", "calibration_images", "calibration_stats", "compress_run",
           "compute_run", "eval_device", "original_key", "original_run", "rebuild_model", "run_key", "speed_fields"]

# 2: computed on the folded model (input-side statistics of conv1 have 1 input channel, not 3).
STATS_VERSION = 2  # bump when the calibration statistics change
SEQUENTIAL_VERSION = 1  # bump when the cross statistics of sequential calibration change
SENSITIVITY_VERSION = 1  # bump when the layer-sensitivity measurement changes
# Held-out calibration-side images on which each compressed layer's output error is measured.
_ERROR_IMAGES = 64


def eval_device() -> torch.device:
    """Where test-set predictions and layer errors run: the GPU when present.

    On a GPU machine evaluating on the CPU would be most of a sweep's time. TF32 is switched off
    so GPU convolutions round like float32 ones and CPU and GPU runs stay comparable.
    """
    dev = pick_device()
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return dev


def _predict(model: nn.Module, images) -> np.ndarray:
    """Test-split class probabilities of ``model`` (on the evaluation device, then back on the CPU)."""
    try:
        channels = input_channels(model)
        return predict_proba(model.to(eval_device()), images.x_test,
                             to_input=lambda x: images.to_tensor(x, channels))
    finally:
        model.cpu()  # the workspace shares its model; everything else expects it on the CPU


# --------------------------------------------------------------------------------------------
# The original model


def original_run(ws: Workspace, progress=None) -> tuple[dict, dict[str, np.ndarray], bool]:
    """Metrics of the baseline on the test split (cached).

    Returns
    -------
    (run, arrays, cached)
        ``arrays`` holds ``predictions`` and ``probabilities``.
    """
    if not ws.has_baseline():
        ws.baseline(progress=progress)  # trains it
    key = original_key(ws)

    def compute():
        start = time.perf_counter()
        model, meta = ws.baseline()
        images = ws.images()
        probs = _predict(model, images)
        preds = probs.argmax(1)
        shape = input_shape(model, images.size)
        flops, params = count_flops(model, shape), count_params(model)
        run = {"method": "original", "config": {}, "cache_key": key, "version": ORIGINAL_VERSION,
               **_provenance(ws, meta),
               **classification_metrics(images.y_test, preds, images.classes),
               "flops": flops, "flops_original": flops, "params": params, "params_original": params,
               "skipped_files": len(images.skipped), "seconds": time.perf_counter() - start}
        return run, {"predictions": preds.astype(np.int64), "probabilities": probs.astype(np.float32)}

    run, cached = ws.store.get_or_compute(key, compute)
    arrays = ws.store.get_arrays(key, required=("predictions", "probabilities"))
    if arrays is None:  # unusable arrays were just set aside: compute the run again
        run, cached = ws.store.get_or_compute(key, compute)
        arrays = ws.store.get_arrays(key, required=("predictions", "probabilities"))
    return dict(run, cached=cached), arrays, cached


def original_key(ws: Workspace) -> str:
    """Cache key of the original model's run (no model loading: fingerprints only)."""
    return cache_key("original", {"model": ws.model_fingerprint(), "data": ws.index().fingerprint,
                                  "version": ORIGINAL_VERSION})


def _provenance(ws: Workspace, meta: dict) -> dict:
    """Which data and model a run belongs to (the same fields for the original and every run)."""
    images = ws.images()
    return {"data": ws.data_label(), "data_fingerprint": images.fingerprint,
            "model_fingerprint": meta["fingerprint"], "arch": meta["arch"], "input_size": images.size,
            "classes": list(images.classes), "dedupe": ws.dedupe, "split": ws.split}


# --------------------------------------------------------------------------------------------
# Compression


def run_key(ws: Workspace, meta: dict | None, config: RunConfig) -> str:
    """Cache key of a run: canonical config, model and data fingerprints, algorithm version.

    ``meta`` (the loaded baseline's metadata) is optional: without it the checkpoint file is hashed
    instead of loaded, which keeps cache look-ups cheap. An HSCC grid above the model's
    ``max_grid`` raises ValueError here, before any work.
    """
    if config.method == "hscc":
        ws.check_grid(config.grid)
    model = meta["fingerprint"] if meta is not None else ws.model_fingerprint()
    return cache_key("run", {"config": config.canonical(), "model": model,
                             "data": ws.index().fingerprint, "version": RUN_VERSION})


def _calibration_set(ws: Workspace, calib_size, seed: int, flip: bool) -> tuple[np.ndarray, dict]:
    """Indices of the calibration images in the training split, and what identifies the set."""
    images = ws.images()
    count = calibration_count(calib_size, len(images.y_train))
    ident = {"calib_size": count, "seed": seed, **({"flip": True} if flip else {})}
    return calibration_indices(images.y_train, count, seed), ident


def calibration_images(ws: Workspace, model: nn.Module, calib_size, seed: int, flip: bool = False) -> GreyBatches:
    """The calibration images of a run, normalised batch by batch for ``model`` (its channel count),
    followed by their mirror images when ``flip``."""
    images = ws.images()
    idx, _ = _calibration_set(ws, calib_size, seed, flip)
    return images.batches(images.x_train[idx], input_channels(model), flip)


def _stats_base(ws: Workspace, meta: dict, calib_size, seed: int, flip: bool) -> dict:
    """What every calibration statistic of a run depends on: model, data and calibration set."""
    return {"model": meta["fingerprint"], "data": ws.images().fingerprint,
            **_calibration_set(ws, calib_size, seed, flip)[1]}


def calibration_stats(ws: Workspace, model: nn.Module, meta: dict, side, grid: int, clusters: int,
                      calib_size, seed: int, progress=None, flip: bool = False) -> dict:
    """A cluster side's calibration statistics, computed once and stored.

    They depend on the model, the data, the calibration set (size, seed, flips) and what the side
    needs (the grid; the input side also K): every energy threshold, and on the output side every K,
    of the same grid reuses them without a forward pass.
    """
    key = cache_key(side.stats_kind, {**_stats_base(ws, meta, calib_size, seed, flip),
                                      **side.stats_key(grid, clusters), "version": STATS_VERSION})

    def write(path):
        x = calibration_images(ws, model, calib_size, seed, flip)
        side.save_stats(path, side.compute_stats(model, x, grid, clusters, seed, progress=progress))

    return ws.store.load_or_compute_blob("stats", key, "npz", write, side.load_stats)[0]


# The last decompositions (k-means, eigendecompositions, SVD, Tucker-2 mode spectra: everything that
# does not depend on the energy threshold; Tucker-2's HOOI runs at the planned ranks), kept per
# process: a sweep's runs of one configuration at several energies come one after the other
# (``sweeps.expand`` groups them), and re-decomposing a G = 8, K = 16 AlexNet took 6.6 s of a 24-s
# run on the 2-core CPU. Nothing mutates a decomposition.
_DECOMPOSITIONS: OrderedDict = OrderedDict()
_DECOMPOSITIONS_KEPT = 2


def _decompose(ws: Workspace, model: nn.Module, meta: dict, config: RunConfig, progress) -> Any:
    """The method's decomposition of the baseline for ``config`` (statistics from the store)."""
    method = get_method(config.method)

    def stats(side, grid, clusters):
        return calibration_stats(ws, model, meta, side, grid, clusters, config.calib_size, config.seed,
                                 lambda d, t: progress("calibrate", d, t), flip=config.calib_flip)

    return method.decompose(model, input_shape(model, ws.size), config.settings(), stats)


def _decomposition(ws: Workspace, model: nn.Module, meta: dict, config: RunConfig, progress) -> Any:
    method = get_method(config.method)
    calib = (config.calib_size, config.calib_flip) if method.data_aware else ()
    key = (meta["fingerprint"], ws.images().fingerprint, ws.size, config.method,
           *method.decomposition_key(config.settings()), *calib)
    if key in _DECOMPOSITIONS:
        _DECOMPOSITIONS.move_to_end(key)
        return _DECOMPOSITIONS[key]
    decomp = _DECOMPOSITIONS[key] = _decompose(ws, model, meta, config, progress)
    while len(_DECOMPOSITIONS) > _DECOMPOSITIONS_KEPT:
        _DECOMPOSITIONS.popitem(last=False)
    return decomp


def _sensitivity(ws: Workspace, model: nn.Module, meta: dict, config: RunConfig, decomp, progress) -> Sensitivity:
    """Layer sensitivities of the run's method decomposition (measured once and stored): KL to the
    original on up to 128 calibration images with one layer truncated at a time."""
    method = get_method(config.method)
    key = cache_key("sensitivity", {**_stats_base(ws, meta, config.calib_size, config.seed, False),
                                    "method": config.method,
                                    "decomposition": list(method.decomposition_key(config.settings())),
                                    "calib_flip": config.calib_flip if method.data_aware else False,
                                    "energies": list(SENSITIVITY_ENERGIES), "images": SENSITIVITY_IMAGES,
                                    "version": SENSITIVITY_VERSION})

    def write(path):
        images = ws.images()
        idx, _ = _calibration_set(ws, config.calib_size, config.seed, False)
        rng = np.random.default_rng(config.seed)
        sub = np.sort(idx[rng.permutation(idx.size)[:SENSITIVITY_IMAGES]])
        x = images.batches(images.x_train[sub], input_channels(model))
        sens = layer_sensitivity(method, model, decomp, x, progress=lambda d, t: progress("sensitivity", d, t))
        path.write_text(json.dumps(sens.to_json()))

    return ws.store.load_or_compute_blob("sensitivity", key, "json", write,
                                         lambda p: Sensitivity.from_json(json.loads(p.read_text())))[0]


def _cross_source(ws: Workspace, model: nn.Module, meta: dict, config: RunConfig, progress):
    """Where a sequential fit gets each layer's cross statistics: the store, keyed by everything
    that fixes the compressed prefix (the configuration behind the decomposition and the ranks of
    every earlier layer) and by which of the layer's own blocks are factorised."""
    base = {**_stats_base(ws, meta, config.calib_size, config.seed, config.calib_flip),
            "side": config.cluster_side, "grid": config.grid, "clusters": config.clusters,
            "version": SEQUENTIAL_VERSION}

    def source(name, prefix, lp, ident):
        factorised = [[int(k > 0 and not d) for k, d in zip(rk, dn)] for rk, dn in zip(lp.ranks, lp.dense)]
        key = cache_key("cross-stats", {**base, "layer": name, "factorised": factorised, "prefix": ident})

        def write(path):
            x = calibration_images(ws, model, config.calib_size, config.seed, config.calib_flip)
            save_cross(path, cross_stats(model, prefix, name, lp, x,
                                         progress=lambda d, t: progress(f"sequential {name}", d, t)))

        return ws.store.load_or_compute_blob("stats", key, "npz", write, load_cross)[0]

    return source


@dataclass(frozen=True)
class Compressed:
    """A compressed model with its plan and, in budget mode, the budget outcome."""

    model: nn.Module
    plan: Any
    outcome: Any = None  # BudgetResult (uniform) or GreedyBudget (greedy, sensitivity); None in energy mode
    sensitivity: Sensitivity | None = None  # sensitivity allocation: the measured curves and the prices used

    @property
    def energy(self) -> float | None:
        """The energy threshold used (None for greedy allocation)."""
        return self.plan.energy


def build_compressed(ws: Workspace, config: RunConfig, progress=None, model=None, meta=None) -> Compressed:
    """Compress the baseline with ``config`` (no evaluation, no fine-tuning, nothing stored).

    Returns
    -------
    Compressed
        The compressed model (a deep copy), its plan (``.macs()``, ``.summaries()``) and the budget
        outcome (``met``, ``message``) in budget mode.
    """
    progress = progress or (lambda stage, done, total: None)
    if config.method == "hscc":
        ws.check_grid(config.grid)
    if model is None or meta is None:
        model, meta = ws.baseline(train_if_missing=False)
    method = get_method(config.method)
    decomp = _decomposition(ws, model, meta, config, progress)
    sens = _sensitivity(ws, model, meta, config, decomp, progress) if config.allocation == "sensitivity" else None
    plan, outcome = make_plan(method, decomp, energy=config.energy, budget=config.budget,
                              allocation=config.allocation, sensitivity=sens, multiple=config.rank_multiple)
    if sens is not None:  # the measured curves, and the prices they gave this budget
        sens = Sensitivity(sens.points, outcome.prices)
    if config.calibration == "sequential":
        plan = method.fit_sequential(model, plan, _cross_source(ws, model, meta, config, progress))
    return Compressed(method.build(model, plan), plan, outcome, sens)


# --------------------------------------------------------------------------------------------
# One run: compress, fine-tune, evaluate, measure


def compress_run(ws: Workspace, config: RunConfig, progress=None, measure_speed: bool = True,
                 latency_runs: int = 20) -> tuple[dict, bool]:
    """Compress the baseline with ``config``, evaluate and measure it, store the run (cached).

    Parameters
    ----------
    ws : Workspace
    config : RunConfig
    progress : callable, optional
        ``progress(stage, done, total)`` with stages calibrate, compress, finetune, evaluate, measure.
    measure_speed : bool
        Time original and compressed models (batch 1 and 32) in this process.
    latency_runs : int
        Timed runs per model and batch size (>= 20 for reported numbers).

    Returns
    -------
    (run, cached)
    """
    key = run_key(ws, None, config)
    run, cached = ws.store.get_or_compute(
        key, lambda: compute_run(ws, config, progress, measure_speed, latency_runs))
    return dict(run, cached=cached), cached


def compute_run(ws: Workspace, config: RunConfig, progress=None, measure_speed: bool = True,
                latency_runs: int = 20) -> tuple[dict, dict[str, np.ndarray]]:
    """Compress, fine-tune, evaluate and measure one configuration without storing anything.

    Sweep workers call this and hand ``(run, arrays)`` to a single writer; ``compress_run`` is the
    cached entry point for everything else. The original's run must be computable (baseline present).

    Returns
    -------
    (run, arrays)
    """
    progress = progress or (lambda stage, done, total: None)
    start = time.perf_counter()
    model, meta = ws.baseline(train_if_missing=False)
    original, original_arrays, _ = original_run(ws)
    progress("compress", 0, 1)
    built = build_compressed(ws, config, progress, model=model, meta=meta)
    progress("compress", 1, 1)
    compressed = _finetune(ws, built.model, config, progress)
    progress("evaluate", 0, 1)
    evaluation, probs = _evaluate(ws, compressed, original_arrays)
    progress("evaluate", 1, 1)
    progress("measure", 0, 1)
    measure_start = time.perf_counter()
    summaries = built.plan.summaries()
    run = {"method": config.method, "config": config.canonical(), "label": config.label(), "version": RUN_VERSION,
           **_provenance(ws, meta), "energy": built.energy, "cluster_side": config.cluster_side,
           "allocation": config.allocation, "calibration": config.calibration,
           "sensitivity": None if built.sensitivity is None else built.sensitivity.to_json(), **evaluation,
           **_costs(ws, model, meta, compressed, built.plan.macs(), summaries, original),
           "layer_errors": _layer_errors(ws, model, compressed, list(summaries), config)}
    run["budget_search"] = None if built.outcome is None else {
        "target": config.budget, "met": built.outcome.met, "message": built.outcome.message,
        "layer_flops_ratio": run["layer_flops_ratio"]}
    run.update(speed_fields(model, compressed, ws.size, latency_runs) if measure_speed
               else {"latency_ms": None, "speedup": None})
    run["measure_seconds"] = time.perf_counter() - measure_start
    progress("measure", 1, 1)
    run["seconds"] = time.perf_counter() - start
    arrays = {"predictions": probs.argmax(1).astype(np.int64), "probabilities": probs.astype(np.float32),
              **built.plan.arrays()}
    return run, arrays


def _finetune(ws: Workspace, compressed: nn.Module, config: RunConfig, progress) -> nn.Module:
    """Fine-tune the compressed model for ``config.finetune_epochs`` (same recipe for every method)."""
    if config.finetune_epochs:
        images = ws.images()
        tcfg = finetune_config(config.finetune_epochs, config.seed)

        def report(i):
            progress("finetune", (i["epoch"] - 1) * i["batches"] + i["batch"], i["epochs"] * i["batches"])

        compressed = train(compressed, images.x_train, images.y_train, images.mean, images.std,
                           len(images.classes), tcfg, progress=report).model.cpu()
    return compressed.eval()


def _evaluate(ws: Workspace, compressed: nn.Module, original_arrays: dict) -> tuple[dict, np.ndarray]:
    """Classification metrics, the paired test against the original and fidelity to its answers."""
    images = ws.images()
    probs = _predict(compressed, images)
    preds = probs.argmax(1)
    paired = paired_comparison(images.y_test, original_arrays["predictions"], preds)
    out = {**classification_metrics(images.y_test, preds, images.classes),
           "p_value_vs_original": paired["p_value"], "accuracy_delta": paired["accuracy_delta"],
           "accuracy_delta_se": paired["accuracy_delta_se"], "discordant": paired["discordant"],
           **fidelity(original_arrays["probabilities"].astype(np.float64), probs)}
    return out, probs


def _costs(ws: Workspace, model: nn.Module, meta: dict, compressed: nn.Module, macs: int, summaries: dict,
           original: dict) -> dict:
    """Measured FLOPs (whole model and compressed layers), parameters and the typed layer summaries."""
    shape = input_shape(model, ws.size)
    layers = list(summaries)
    flops, layer_fl = flop_profile(compressed, layers, shape)
    layer_fl_orig = _original_layer_flops(model, meta["fingerprint"], tuple(layers), shape)
    return {"flops": flops, "flops_original": original["flops"], "layer_flops": layer_fl,
            "layer_flops_original": layer_fl_orig, "analytical_layer_macs": int(macs),
            "flops_ratio": original["flops"] / max(flops, 1),
            "layer_flops_ratio": sum(layer_fl_orig.values()) / max(sum(layer_fl.values()), 1),
            "params": count_params(compressed), "params_original": original["params"],
            "layers": {name: s.to_json() for name, s in summaries.items()}}


def _layer_errors(ws: Workspace, model: nn.Module, compressed: nn.Module, layers: list[str],
                  config: RunConfig) -> dict:
    """Each compressed layer's relative output error (errors not compounded) on 64 training images held
    out of calibration (test images when calibration took the whole training split)."""
    images = ws.images()
    # The weight-only baselines' cache key leaves the calibration size out (they read no calibration
    # data): their held-out images must not depend on it either.
    calib_size = config.calib_size if get_method(config.method).data_aware else DEFAULTS["calib_size"]
    rest = np.setdiff1d(np.arange(len(images.y_train)), _calibration_set(ws, calib_size, config.seed, False)[0])
    pool = images.x_train[rest] if rest.size else images.x_test
    held = np.sort(np.random.default_rng(config.seed).permutation(len(pool))[:_ERROR_IMAGES])
    dev = eval_device()
    x = images.to_tensor(pool[held], input_channels(model)).to(dev)
    try:
        return layer_errors(model.to(dev), compressed.to(dev), layers, x)
    finally:
        model.cpu()
        compressed.cpu()


def speed_fields(model: nn.Module, compressed: nn.Module, size: int, latency_runs: int) -> dict:
    """A run's ``latency_ms`` and ``speedup``: the original and the compressed model timed
    interleaved in this process (also what :mod:`hscc_core.runs.upgrade` times older runs with).

    As many rounds as fit :data:`hscc_core.measure.costs.LATENCY_BUDGET_S` (at most ``latency_runs``, at least 5 per batch
    size): the measure stage once took minutes under load. The path the HSCC layers took (native
    kernel or PyTorch) is recorded beside the timings, and so is the share of the CPUs other
    processes used meanwhile (``others_cpu``: a reader can tell a quiet timing from a disturbed one).
    """
    lat = measure_latency({"original": model, "compressed": compressed}, input_shape(model, size), runs=latency_runs,
                          budget_s=LATENCY_BUDGET_S)

    def block(name):
        return {b: {"median": v["median_ms"], "p90": v["p90_ms"]} for b, v in lat["models"][name].items()}

    return {"latency_ms": {"original": block("original"), "compressed": block("compressed"),
                           "device": lat["device"], "threads": lat["threads"], "runs": lat["runs"],
                           "runs_taken": lat["runs_taken"], "budget_s": lat["budget_s"],
                           "memory_format": lat["memory_format"], "kernel": native.kernel_of(compressed),
                           "others_cpu": lat["others_cpu"]},
            "speedup": dict(speedup(lat, "original", "compressed"))}


_ORIGINAL_LAYER_FLOPS: dict[tuple, dict[str, int]] = {}


def _original_layer_flops(model, fingerprint: str, layers: tuple[str, ...], shape: tuple) -> dict[str, int]:
    # The same for every run of a sweep on one baseline: counted once per process.
    key = (fingerprint, layers, tuple(shape))
    if key not in _ORIGINAL_LAYER_FLOPS:
        _ORIGINAL_LAYER_FLOPS[key] = layer_flops(model, list(layers), shape)
    return dict(_ORIGINAL_LAYER_FLOPS[key])


def rebuild_model(ws: Workspace, run: dict, progress=None) -> nn.Module:
    """The compressed model of a stored run, rebuilt from its configuration (eval mode).

    :func:`build_compressed` redoes the deterministic part (calibration statistics come from the
    store; budget runs reach the same plan); a fine-tuned run is then fine-tuned again with its seed,
    which takes as long as it did the first time and is not bit-reproducible across machines (its
    trained weights are not stored).

    Parameters
    ----------
    ws : Workspace
    run : dict
        A run of :func:`compress_run` (its ``config`` is used).
    progress : callable(stage, done, total), optional

    Raises
    ------
    ValueError
        For the original model's run, or a run of another baseline model than ``ws``'s.
    """
    if run.get("method") == "original" or not run.get("config"):
        raise ValueError("the original model's run has no compressed model")
    model, meta = ws.baseline(train_if_missing=False)
    if run.get("model_fingerprint") not in (None, meta["fingerprint"]):
        raise ValueError("this run was made with another baseline model than the workspace's")
    # A stored config leaves out fields at their LEGACY value: RunConfig(**config) would read a uniform
    # budget run as today's default (greedy) allocation and rebuild another model.
    config = RunConfig.from_canonical(run["config"])
    progress = progress or (lambda stage, done, total: None)
    return _finetune(ws, build_compressed(ws, config, progress, model=model, meta=meta).model, config, progress)
