"""Runs: evaluate the original model, or compress-evaluate-measure one configuration, and store it.

A run is a JSON-ready dict with the fields of DESIGN.md section 5 plus arrays (test predictions,
probabilities, per-layer cluster labels and ranks) kept beside it in the run store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from hscc_core.runs.store import cache_key
from hscc_core.runs.workspace import Workspace

# The compression, evaluation and measurement modules (torch, scikit-learn, tensorly, scipy) are
# imported inside the functions that use them: listing or fetching cached runs stays fast.

ORIGINAL_VERSION = 1


def _eval_device():
    """Where test-set predictions and layer errors run: the GPU when present.

    On a GPU machine evaluating on the CPU would be most of a sweep's time. TF32 is switched off
    so GPU convolutions round like float32 ones and CPU and GPU runs stay comparable.
    """
    import torch  # noqa: PLC0415

    from hscc_core.nn.training import pick_device  # noqa: PLC0415

    dev = pick_device()
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return dev


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
        from hscc_core.measure.metrics import classification_metrics, predict_proba  # noqa: PLC0415
        from hscc_core.measure.costs import count_flops, count_params  # noqa: PLC0415

        start = time.perf_counter()
        model, meta = ws.baseline()
        images = ws.images()
        try:
            probs = predict_proba(model.to(_eval_device()), images.x_test, to_input=images.to_tensor)
        finally:
            model.cpu()  # the workspace shares this model; everything else expects it on the CPU
        preds = probs.argmax(1)
        shape = (1, 3, images.size, images.size)
        flops, params = count_flops(model, shape), count_params(model)
        run = {
            "method": "original", "config": {}, "cache_key": key,
            "data": ws.data_label(), "data_fingerprint": images.fingerprint,
            "model_fingerprint": meta["fingerprint"], "arch": meta["arch"], "input_size": images.size,
            "classes": list(images.classes), "dedupe": ws.dedupe,
            **classification_metrics(images.y_test, preds, images.classes),
            "flops": flops, "flops_original": flops, "params": params, "params_original": params,
            "skipped_files": len(images.skipped), "seconds": time.perf_counter() - start,
        }
        return run, {"predictions": preds.astype(np.int64), "probabilities": probs.astype(np.float32)}

    run, cached = ws.store.get_or_compute(key, compute)
    return dict(run, cached=cached), ws.store.get_arrays(key), cached


def original_key(ws: Workspace) -> str:
    """Cache key of the original model's run (no model loading: fingerprints only)."""
    return cache_key("original", {"model": ws.model_fingerprint(), "data": ws.index().fingerprint,
                                  "version": ORIGINAL_VERSION})



# ---------------------------------------------------------------------------------------------
# Compression runs

METHODS = ("hscc", "svd", "tucker")
CLUSTER_SIDES = ("output", "input")  # DESIGN 3.9: cluster output channels (the paper) or inputs
ALLOCATIONS = ("uniform", "greedy")  # one energy for every block, or budget-greedy per MAC
RUN_VERSION = 1  # bump when the compression, evaluation or measurement of runs changes


@dataclass(frozen=True)
class RunConfig:
    """One compression run's configuration.

    Attributes
    ----------
    method : {"hscc", "svd", "tucker"}
    grid : int
        HSCC region grid G >= 1 (ignored by the baselines).
    clusters : int
        HSCC cluster count K >= 1 (ignored by the baselines).
    energy : float or None
        Energy threshold tau in (0, 1]; None when ``budget`` chooses it.
    budget : float or None
        Compress the conv layers' FLOPs by this factor (> 1); tau found by bisection.
    finetune_epochs : int
        Fine-tuning epochs after compression (>= 0), same recipe for every method.
    calib_size : int
        Calibration images drawn (seeded) from the training split (>= 1).
    seed : int
        Seeds calibration sampling, k-means and fine-tuning.
    cluster_side : {"output", "input"}
        HSCC: cluster each region's output channels (the paper) or its input channels (HSCC+).
    allocation : {"uniform", "greedy"}
        HSCC ranks: one energy threshold for every block, or (budget mode only) directions bought
        across all blocks by captured relative energy per MAC.
    """

    method: str = "hscc"
    grid: int = 2
    clusters: int = 4
    energy: float | None = 0.95
    budget: float | None = None
    finetune_epochs: int = 0
    calib_size: int = 256
    seed: int = 0
    cluster_side: str = "output"
    allocation: str = "uniform"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (allowed: {', '.join(METHODS)})")
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {self.grid}")
        if not isinstance(self.clusters, int) or self.clusters < 1:
            raise ValueError(f"clusters must be an integer >= 1, got {self.clusters}")
        if self.budget is None and self.energy is None:
            raise ValueError("give either an energy threshold or a budget")
        if self.budget is not None and self.energy is not None:
            raise ValueError("give an energy threshold or a budget, not both")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.budget is not None and not self.budget > 1:
            raise ValueError(f"budget must be > 1 (a compression factor), got {self.budget}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs}")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise ValueError(f"calib_size must be an integer >= 1, got {self.calib_size}")
        if self.cluster_side not in CLUSTER_SIDES:
            raise ValueError(f"cluster_side must be one of {', '.join(CLUSTER_SIDES)}, got {self.cluster_side!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.method != "hscc" and (self.cluster_side, self.allocation) != ("output", "uniform"):
            raise ValueError("cluster_side and allocation apply to method 'hscc' only")
        if self.allocation == "greedy" and self.budget is None:
            raise ValueError("allocation 'greedy' needs a budget (it spends one)")
        # 3 and 3.0 are the same budget: store floats so they share one cache key.
        for name in ("energy", "budget"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    def canonical(self) -> dict:
        """The fields that matter for this method (baselines ignore grid and clusters)."""
        d = asdict(self)
        if self.method != "hscc":
            d.pop("grid")
            d.pop("clusters")
            d.pop("calib_size")  # weight-only: no calibration data
        # Defaults are left out so the cache keys of earlier runs stay valid.
        for name, default in (("cluster_side", "output"), ("allocation", "uniform")):
            if d[name] == default:
                d.pop(name)
        return d

    def label(self) -> str:
        """Short human description, e.g. ``hscc G4 K8 tau=0.95``."""
        parts = [self.method]
        if self.method == "hscc":
            parts += [f"G{self.grid}", f"K{self.clusters}"]
            if self.cluster_side == "input":
                parts.append("in")
            if self.allocation == "greedy":
                parts.append("greedy")
        parts.append(f"{self.budget:g}x" if self.budget is not None else f"tau={self.energy:g}")
        if self.finetune_epochs:
            parts.append(f"ft{self.finetune_epochs}")
        return " ".join(parts)


def run_key(ws: Workspace, meta: dict | None, config: RunConfig) -> str:
    """Cache key of a run: canonical config, model and data fingerprints, algorithm version.

    ``meta`` (the loaded baseline's metadata) is optional: without it the checkpoint file is hashed
    instead of loaded, which keeps cache look-ups cheap.
    """
    model = meta["fingerprint"] if meta is not None else ws.model_fingerprint()
    return cache_key("run", {"config": config.canonical(), "model": model,
                             "data": ws.index().fingerprint, "version": RUN_VERSION})


def calibration_stats(ws: Workspace, model, meta: dict, grid: int, calib_size: int, seed: int,
                      progress=None) -> dict:
    """Regional statistics for one grid, computed once per model/data/calibration set and stored.

    Every cluster count and energy threshold on this grid reuses them (no forward pass).
    """
    from hscc_core.compress.calibration import compute_stats, load_stats, save_stats  # noqa: PLC0415
    from hscc_core.data.folders import calibration_indices  # noqa: PLC0415

    images = ws.images()
    key = cache_key("stats", {"model": meta["fingerprint"], "data": images.fingerprint, "grid": grid,
                              "calib_size": calib_size, "seed": seed, "version": RUN_VERSION})

    def write(path):
        idx = calibration_indices(images.y_train, calib_size, seed)
        x = images.to_tensor(images.x_train[idx])
        save_stats(path, compute_stats(model, x, grid, progress=progress))

    path, _ = ws.store.get_or_compute_blob("stats", key, "npz", write)
    return load_stats(path)


def input_calibration_stats(ws: Workspace, model, meta: dict, grid: int, clusters: int, calib_size: int,
                            seed: int, progress=None) -> dict:
    """Input-side statistics (DESIGN 3.9): per grid, cluster count and seed, since the input
    clusters decide which partial outputs are accumulated. Stored like :func:`calibration_stats`."""
    from hscc_core.data.folders import calibration_indices  # noqa: PLC0415
    from hscc_core.compress.hscc_input import compute_input_stats, load_input_stats, save_input_stats  # noqa: PLC0415

    images = ws.images()
    key = cache_key("input-stats", {"model": meta["fingerprint"], "data": images.fingerprint, "grid": grid,
                                    "clusters": clusters, "calib_size": calib_size, "seed": seed,
                                    "version": RUN_VERSION})

    def write(path):
        idx = calibration_indices(images.y_train, calib_size, seed)
        x = images.to_tensor(images.x_train[idx])
        save_input_stats(path, compute_input_stats(model, x, grid, clusters, seed, progress=progress))

    path, _ = ws.store.get_or_compute_blob("stats", key, "npz", write)
    return load_input_stats(path)


def _compressor(method: str, ws: Workspace, model, meta: dict, config: RunConfig, progress):
    """(decomposition, plan(decomp, energy), macs(decomp, energy), build(model, plan))."""
    from hscc_core.compress.baselines import (build_svd, build_tucker, plan_svd, plan_svd_macs, plan_tucker,  # noqa: PLC0415
                            plan_tucker_macs, svd_decompose, tucker_decompose)
    from hscc_core.compress.hscc import build_hscc, decompose_hscc, plan_from_decomposition, plan_macs  # noqa: PLC0415

    shape = (1, 3, ws.size, ws.size)
    if method == "hscc" and config.cluster_side == "input":
        from hscc_core.compress.hscc_input import build_hscc_input, decompose_hscc_input, plan_input, plan_input_macs  # noqa: PLC0415

        stats = input_calibration_stats(ws, model, meta, config.grid, config.clusters, config.calib_size,
                                        config.seed, progress)
        return decompose_hscc_input(model, stats), plan_input, plan_input_macs, build_hscc_input
    if method == "hscc":
        stats = calibration_stats(ws, model, meta, config.grid, config.calib_size, config.seed, progress)
        return (decompose_hscc(model, stats, config.clusters, config.seed),
                plan_from_decomposition, plan_macs, build_hscc)
    if method == "svd":
        return svd_decompose(model, input_shape=shape), plan_svd, plan_svd_macs, build_svd
    return (tucker_decompose(model, input_shape=shape, seed=config.seed), plan_tucker, plan_tucker_macs,
            build_tucker)


# The last decompositions (k-means, eigendecompositions, SVD, Tucker-2 mode spectra: everything that
# does not depend on the energy threshold; Tucker-2's HOOI runs at the planned ranks), kept per
# process: a sweep's runs of one configuration at several energies come one after the other
# (``sweeps.expand`` groups them), and re-decomposing a G = 8, K = 16 AlexNet took 6.6 s of a 24-s
# run on the 2-core CPU. Nothing mutates a decomposition.
_DECOMPOSITIONS: OrderedDict = OrderedDict()
_DECOMPOSITIONS_KEPT = 2


def _decomposition_key(ws: Workspace, meta: dict, config: RunConfig) -> tuple:
    if config.method == "hscc":
        shape = (config.cluster_side, config.grid, config.clusters, config.calib_size, config.seed)
    else:  # the weight-only baselines ignore grid, clusters and calibration
        shape = (config.seed,) if config.method == "tucker" else ()
    return (meta["fingerprint"], ws.images().fingerprint, ws.size, config.method, *shape)


def build_compressed(ws: Workspace, config: RunConfig, progress=None, model=None, meta=None):
    """Compress the baseline with ``config`` (no evaluation, no fine-tuning, nothing stored).

    Returns
    -------
    (model, plan, energy, budget_result)
        The compressed model (a deep copy), its plan (``.macs()``, ``.layer_summary()``), the energy
        threshold used (None for greedy allocation) and, in budget mode, the ``BudgetResult`` of the
        bisection or the ``GreedyBudget`` of the greedy allocation (else None).
    """
    from hscc_core.compress.allocation import greedy_budget  # noqa: PLC0415
    from hscc_core.compress.budgets import search_energy  # noqa: PLC0415

    progress = progress or (lambda stage, done, total: None)
    if model is None or meta is None:
        model, meta = ws.baseline(train_if_missing=False)
    key = _decomposition_key(ws, meta, config)
    if key in _DECOMPOSITIONS:
        _DECOMPOSITIONS.move_to_end(key)
        decomp, plan_fn, macs_fn, build_fn = _DECOMPOSITIONS[key]
    else:
        decomp, plan_fn, macs_fn, build_fn = _DECOMPOSITIONS[key] = _compressor(
            config.method, ws, model, meta, config, lambda d, t: progress("calibrate", d, t))
        while len(_DECOMPOSITIONS) > _DECOMPOSITIONS_KEPT:
            _DECOMPOSITIONS.popitem(last=False)
    if config.allocation == "greedy":  # budget mode only (RunConfig checks)
        plan, budget = greedy_budget(decomp, config.budget)
        return build_fn(model, plan), plan, None, budget
    if config.budget is not None:
        budget = search_energy(lambda e: macs_fn(decomp, e), decomp.original_macs, config.budget)
        energy = budget.energy
    else:
        budget, energy = None, config.energy
    plan = plan_fn(decomp, energy)
    return build_fn(model, plan), plan, energy, budget


def _latency_block(latency: dict, name: str) -> dict:
    return {b: {"median": v["median_ms"], "p90": v["p90_ms"]} for b, v in latency["models"][name].items()}


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
    from hscc_core.measure.metrics import classification_metrics, fidelity, paired_comparison, predict_proba  # noqa: PLC0415
    from hscc_core.measure.fidelity import layer_errors  # noqa: PLC0415
    from hscc_core.measure.costs import count_params, flop_profile, measure_latency, speedup  # noqa: PLC0415
    from hscc_core.nn.training import finetune_config, train  # noqa: PLC0415

    start = time.perf_counter()
    model, meta = ws.baseline(train_if_missing=False)
    images = ws.images()
    original, original_arrays, _ = original_run(ws)
    progress("compress", 0, 1)
    compressed, plan, energy, budget = build_compressed(ws, config, progress, model=model, meta=meta)
    progress("compress", 1, 1)
    if config.finetune_epochs:
        tcfg = finetune_config(config.finetune_epochs, config.seed)
        compressed = train(compressed, images.x_train, images.y_train, images.mean, images.std,
                           len(images.classes), tcfg,
                           progress=lambda i: progress("finetune", (i["epoch"] - 1) * i["batches"]
                                                       + i["batch"], i["epochs"] * i["batches"])).model.cpu()
    compressed.eval()
    progress("evaluate", 0, 1)
    dev = _eval_device()
    probs = predict_proba(compressed.to(dev), images.x_test, to_input=images.to_tensor)
    compressed.cpu()
    preds = probs.argmax(1)
    metrics = classification_metrics(images.y_test, preds, images.classes)
    paired = paired_comparison(images.y_test, original_arrays["predictions"], preds)
    fid = fidelity(original_arrays["probabilities"].astype(np.float64), probs)
    progress("evaluate", 1, 1)
    progress("measure", 0, 1)
    measure_start = time.perf_counter()
    shape = (1, 3, images.size, images.size)
    layers = list(plan.layers) if hasattr(plan, "layers") else list(plan.layer_summary())
    flops, layer_fl = flop_profile(compressed, layers, shape)
    layer_fl_orig = _original_layer_flops(model, meta["fingerprint"], tuple(layers), shape)
    run = {
        "method": config.method, "config": config.canonical(), "label": config.label(),
        "data": ws.data_label(), "data_fingerprint": images.fingerprint,
        "model_fingerprint": meta["fingerprint"], "arch": meta["arch"], "input_size": images.size,
        "classes": list(images.classes), "dedupe": ws.dedupe,
        "energy": None if energy is None else float(energy),
        "cluster_side": config.cluster_side, "allocation": config.allocation,
        "budget_search": None if budget is None else {
            "target": config.budget, "met": budget.met, "message": budget.message,
            "layer_flops_ratio": sum(layer_fl_orig.values()) / max(sum(layer_fl.values()), 1)},
        **metrics,
        "p_value_vs_original": paired["p_value"], "accuracy_delta": paired["accuracy_delta"],
        "accuracy_delta_se": paired["accuracy_delta_se"], "discordant": paired["discordant"],
        **fid,
        "flops": flops, "flops_original": original["flops"],
        "layer_flops": layer_fl, "layer_flops_original": layer_fl_orig,
        "analytical_layer_macs": int(plan.macs()),
        "params": count_params(compressed), "params_original": original["params"],
        "layers": _summaries_without_labels(plan.layer_summary()),
    }
    # Per-layer relative reconstruction error (errors not compounded) on 64 training images held
    # out of calibration (test images when calibration took the whole training split).
    from hscc_core.data.folders import calibration_indices  # noqa: PLC0415
    rest = np.setdiff1d(np.arange(len(images.y_train)),
                        calibration_indices(images.y_train, config.calib_size, config.seed))
    pool = images.x_train[rest] if rest.size else images.x_test
    held = np.sort(np.random.default_rng(config.seed).permutation(len(pool))[:64])
    try:
        run["layer_errors"] = layer_errors(model.to(dev), compressed.to(dev), layers,
                                           images.to_tensor(pool[held]).to(dev))
    finally:
        model.cpu()
        compressed.cpu()
    run["flops_ratio"] = run["flops_original"] / max(run["flops"], 1)
    run["layer_flops_ratio"] = sum(layer_fl_orig.values()) / max(sum(layer_fl.values()), 1)
    if measure_speed:
        from hscc_core.compress import native  # noqa: PLC0415
        from hscc_core.measure.costs import LATENCY_BUDGET_S  # noqa: PLC0415

        # Interleaved medians as before, but as many rounds as fit a few seconds (at most
        # latency_runs, at least 5 per batch size): the measure stage once took minutes under load.
        lat = measure_latency({"original": model, "compressed": compressed}, shape, runs=latency_runs,
                              budget_s=LATENCY_BUDGET_S)
        run["latency_ms"] = {"original": _latency_block(lat, "original"),
                             "compressed": _latency_block(lat, "compressed"),
                             "device": lat["device"], "threads": lat["threads"], "runs": lat["runs"],
                             "runs_taken": lat["runs_taken"], "budget_s": lat["budget_s"],
                             "kernel": native.kernel_of(compressed)}
        run["speedup"] = {b: v for b, v in speedup(lat, "original", "compressed").items()}
    else:
        run["latency_ms"], run["speedup"] = None, None
    run["measure_seconds"] = time.perf_counter() - measure_start
    progress("measure", 1, 1)
    run["seconds"] = time.perf_counter() - start
    arrays = {"predictions": preds.astype(np.int64), "probabilities": probs.astype(np.float32),
              **_plan_arrays(plan.layer_summary())}
    return run, arrays


_ORIGINAL_LAYER_FLOPS: dict[tuple, dict[str, int]] = {}


def _original_layer_flops(model, fingerprint: str, layers: tuple[str, ...], shape: tuple) -> dict[str, int]:
    # The same for every run of a sweep on one baseline: counted once per process.
    from hscc_core.measure.costs import layer_flops  # noqa: PLC0415

    key = (fingerprint, layers, tuple(shape))
    if key not in _ORIGINAL_LAYER_FLOPS:
        _ORIGINAL_LAYER_FLOPS[key] = layer_flops(model, list(layers), shape)
    return dict(_ORIGINAL_LAYER_FLOPS[key])


def _summaries_without_labels(summary: dict) -> dict:
    # Labels (one per channel and region) go to the arrays; the JSON keeps ranks and sizes.
    return {name: {k: v for k, v in s.items() if k != "labels"} for name, s in summary.items()}


def _plan_arrays(summary: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, s in summary.items():
        if "labels" in s:
            out[f"labels.{name}"] = np.asarray(s["labels"], dtype=np.int32)
        if "ranks" in s and s["ranks"] and isinstance(s["ranks"][0], list):
            width = max(len(r) for r in s["ranks"])
            padded = np.full((len(s["ranks"]), width), -1, dtype=np.int32)
            for i, r in enumerate(s["ranks"]):
                padded[i, :len(r)] = r
            out[f"ranks.{name}"] = padded
    return out
