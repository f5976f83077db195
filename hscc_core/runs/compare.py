"""Compare 2 to 4 runs side by side: metrics with SEs, paired tests, per-layer kept FLOPs.

Runs of one workspace are evaluated on the same test images, so two runs are compared pairwise on
those images (McNemar's exact test on the images one run gets right and the other wrong, and a
paired bootstrap of the accuracy difference: :func:`hscc_core.measure.metrics.paired_comparison`).
With up to six pairs, the p-values are also given Holm-adjusted (Holm 1979), which keeps the chance
of any false "different" at the nominal level.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hscc_core.measure.machine import BUSY_SHARE
from hscc_core.runs.config import run_name
from hscc_core.runs.pareto import as_float
from hscc_core.runs.table import class_names

__all__ = ["COMPARE_MAX", "COMPARE_MIN", "compressed_layers", "holm", "kept_fractions", "metrics_long",
           "metrics_wide", "pairwise_tests", "run_names"]

COMPARE_MIN, COMPARE_MAX = 2, 4
OTHERS_CPU = "others' CPU while timed"  # the row of latency_ms.others_cpu
_METRICS = (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("agreement", "agreement"),
            ("KL to original", "kl_to_original"), ("accuracy change vs original", "accuracy_delta"))


def run_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Unique display names: each run's readable name, with its key's start where names repeat."""
    labels = [run_name(r) for r in runs]
    return [f"{lab} · {str(r.get('cache_key', ''))[:6]}" if labels.count(lab) > 1 else lab
            for lab, r in zip(labels, runs)]


def _check(runs: Sequence[Mapping[str, Any]]) -> None:
    if not COMPARE_MIN <= len(runs) <= COMPARE_MAX:
        raise ValueError(f"compare {COMPARE_MIN} to {COMPARE_MAX} runs, got {len(runs)}")


def metrics_long(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (metric, run): columns ``metric``, ``run``, ``value``, ``se`` (NaN where absent).

    Metrics: accuracy, macro F1, per-class F1, agreement and KL with the original, accuracy change
    against the original and its McNemar p-value, FLOPs kept, params, latency and speed-up, and the
    share of the CPUs other processes used while the run was timed (above a quarter: noisy).
    """
    _check(runs)
    names = run_names(runs)
    rows = []

    def add(metric, run_name, value, se=None):
        rows.append({"metric": metric, "run": run_name, "value": as_float(value), "se": as_float(se)})

    for name, run in zip(names, runs):
        for label, field in _METRICS:
            add(label, name, run.get(field), run.get(f"{field}_se"))
        for cls in class_names(runs):
            pc = (run.get("per_class") or {}).get(cls) or {}
            add(f"F1 {cls.replace('_', ' ')}", name, pc.get("f1"), pc.get("f1_se"))
        add("p vs original (McNemar)", name, run.get("p_value_vs_original"))
        fo = run.get("flops_original")
        add("FLOPs kept", name, run["flops"] / fo if run.get("flops") is not None and fo else None)
        add("params", name, run.get("params"))
        lat = ((run.get("latency_ms") or {}).get("compressed") or {})
        sp = run.get("speedup") or {}
        for b in ("b1", "b32"):
            add(f"latency {b} (ms)", name, (lat.get(b) or {}).get("median"))
            add(f"speed-up {b}", name, sp.get(b))
        add(OTHERS_CPU, name, (run.get("latency_ms") or {}).get("others_cpu"))
    return pd.DataFrame(rows, columns=["metric", "run", "value", "se"]).astype({"value": float, "se": float})


def metrics_wide(runs: Sequence[Mapping[str, Any]], speed_format: Callable[[float], str] | None = None,
                 p_format: Callable[[float], str] | None = None) -> pd.DataFrame:
    """Metrics as rows, runs as columns, cells ``value ± SE`` as text (``n/a`` where absent).

    ``speed_format`` writes a speed-up and ``p_format`` a p-value (the app passes the words its other
    pages use: "1.04x slower", "< 0.001"); by default ``0.96x`` and three significant digits.
    """
    long = metrics_long(runs)
    pct = {"accuracy", "agreement", "FLOPs kept"}

    def cell(row) -> str:
        # One format per kind of metric, so a column reads alike down the table.
        v, se, metric = row["value"], row["se"], row["metric"]
        if not np.isfinite(v):
            return "n/a"
        err = np.isfinite(se)
        if metric in pct:
            return f"{100 * v:.2f} %" + (f" ± {100 * se:.2f}" if err else "")
        if metric == OTHERS_CPU:
            return f"{v:.0%}" + (" (noisy)" if v > BUSY_SHARE else "")
        if metric == "accuracy change vs original":  # a difference of percentages: points
            return f"{100 * v:+.2f} points" + (f" ± {100 * se:.2f}" if err else "")
        if metric == "params":
            return f"{v / 1e6:.3f} M"
        if "p vs" in metric and p_format:
            return p_format(v)
        if "KL" in metric or "p vs" in metric:
            return f"{v:.3g}" + (f" ± {se:.2g}" if err else "")
        if metric.startswith("speed-up"):
            return speed_format(v) if speed_format else f"{v:.2f}x"
        if metric.startswith("latency"):
            return f"{v:.1f}"
        return f"{v:.3f}" + (f" ± {se:.3f}" if err else "")  # F1 scores

    long["cell"] = long.apply(cell, axis=1)
    order = list(dict.fromkeys(long["metric"]))
    wide = long.pivot(index="metric", columns="run", values="cell")
    return wide.loc[order, run_names(runs)]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` (same order, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(running, 1.0)
    return adjusted


def pairwise_tests(runs: Sequence[Mapping[str, Any]], predictions: Mapping[str, np.ndarray],
                   y_true: np.ndarray) -> pd.DataFrame:
    """Every pair of runs tested on the same test images.

    Parameters
    ----------
    runs
        2 to 4 runs of one workspace.
    predictions
        cache key -> that run's test predictions (``RunStore.get_arrays(key)["predictions"]``).
    y_true
        The test labels (``Workspace.images().y_test``), in the order of the predictions.

    Returns
    -------
    pandas.DataFrame
        One row per pair ``(a, b)``: ``a``, ``b``, ``accuracy_a``, ``accuracy_b``, ``delta`` (b minus
        a), ``delta_se`` (paired bootstrap), ``a_only`` and ``b_only`` (images only that run gets
        right), ``p_value`` (McNemar, exact) and ``p_holm``.

    Raises
    ------
    ValueError
        For a wrong number of runs, a run without predictions, or predictions of another length.
    """
    from hscc_core.measure.metrics import paired_comparison  # noqa: PLC0415 - imports torch

    _check(runs)
    y_true = np.asarray(y_true)
    names = run_names(runs)
    preds = []
    for run, name in zip(runs, names):
        p = predictions.get(run.get("cache_key"))
        if p is None:
            raise ValueError(f"no stored predictions for {name}")
        p = np.asarray(p)
        if p.shape != y_true.shape:
            raise ValueError(f"{name}: {p.shape[0]} predictions for {y_true.shape[0]} test images "
                             "(runs of another dataset?)")
        preds.append(p)
    rows = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        paired = paired_comparison(y_true, preds[i], preds[j])
        rows.append({"a": names[i], "b": names[j],
                     "accuracy_a": float(np.mean(preds[i] == y_true)), "accuracy_b": float(np.mean(preds[j] == y_true)),
                     "delta": paired["accuracy_delta"], "delta_se": paired["accuracy_delta_se"],
                     "a_only": paired["discordant"]["ref_only"], "b_only": paired["discordant"]["new_only"],
                     "p_value": paired["p_value"]})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].to_numpy())
    return table


def _network_order(names) -> list[str]:
    # Layers in forward order (``features.3`` before ``features.10``): stored JSON sorts keys as text.
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def compressed_layers(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every layer that at least one of the runs compressed (has a layer summary of), in network order."""
    found: set[str] = set()
    for run in runs:
        found.update(run.get("layers") or {})
    return _network_order(found)


def kept_fractions(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Share of FLOPs kept per compressed layer: layers as rows, runs as columns.

    ``run["layer_flops"][layer] / run["layer_flops_original"][layer]``; NaN where a run did not
    compress that layer or lacks the counts. Layers in network order (``features.3`` before
    ``features.10``: stored JSON sorts keys as text).
    """
    names = run_names(runs)
    found: set[str] = set()
    for run in runs:
        found.update(run.get("layer_flops") or {})
    layers = _network_order(found)
    data = {}
    for name, run in zip(names, runs):
        kept, orig = run.get("layer_flops") or {}, run.get("layer_flops_original") or {}
        data[name] = [kept[layer] / orig[layer] if layer in kept and orig.get(layer) else np.nan for layer in layers]
    return pd.DataFrame(data, index=pd.Index(list(layers), name="layer"), dtype=float)

