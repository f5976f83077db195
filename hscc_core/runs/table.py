"""The runs table: every stored run as one typed row, with filters, sorting, Pareto marks and export.

What a sweep dashboard (Optuna Dashboard, TensorBoard's HParams view, W&B sweeps) starts from: one
flat table whose columns are the run's settings and its metrics, so runs can be sorted, filtered,
searched and exported. Columns (:data:`SETTINGS`, then metrics; per-class F1 columns are added per
class name found in the runs):

* ``key``, ``label``
* settings: ``method``, ``grid``, ``clusters``, ``cluster_side``, ``allocation``, ``calibration``,
  ``calib_size``, ``calib_flip`` (``yes`` when the calibration images were joined by their mirror
  images, else ``no``), ``rank_multiple`` (ranks rounded up to multiples of it; 1: no rounding),
  ``energy`` (the threshold asked for; empty in budget mode), ``budget``, ``finetune_epochs``,
  ``seed``; settings a method ignores (grid, clusters, side, calibration, calibration size, mirror
  images and rank multiple of the weight-only baselines) are empty; the allocation rule applies to
  every method
* ``energy_found``: the threshold the budget bisection found (empty otherwise)
* metrics, each followed by ``<name>_se`` where the run has a bootstrap SE: ``accuracy``,
  ``macro_f1``, ``<class>_f1``, ``agreement``, ``kl_to_original``; then ``accuracy_delta``
  (+ SE) and ``p_value_vs_original`` (McNemar against the original), ``flops``, ``flops_kept``
  (share of the original's whole-model FLOPs), ``layer_flops_ratio`` (compressed layers'
  original / compressed FLOPs), ``params``, ``latency_b1_ms``, ``latency_b32_ms``, ``speedup_b1``,
  ``speedup_b32``, ``others_cpu`` (the share of the CPUs other processes used while the run was timed;
  empty where it was not recorded)
* ``pareto``: True for runs on the Pareto front of two axes (default FLOPs vs accuracy,
  :func:`hscc_core.runs.pareto.pareto_front`)

Numbers are float64 (NaN where a run lacks the value), categories are strings (missing: NaN),
``pareto`` is bool: never the string ``"None"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hscc_core.runs.config import run_name
from hscc_core.runs.pareto import as_float, get_axis, pareto_front

__all__ = [
    "CATEGORICAL",
    "SETTINGS",
    "axis_column",
    "category_values",
    "class_names",
    "filter_mask",
    "filter_table",
    "is_numeric",
    "mark_pareto",
    "runs_table",
    "search_mask",
    "sort_table",
    "to_csv",
    "to_json",
]

#: The settings of a run, in table order (what importance and parallel coordinates use).
SETTINGS = ("method", "grid", "clusters", "cluster_side", "allocation", "calibration", "calib_size", "calib_flip",
            "rank_multiple", "energy", "budget", "finetune_epochs", "seed")
#: Settings that are categories (the rest are numbers).
CATEGORICAL = ("method", "cluster_side", "allocation", "calibration", "calib_flip")
_WITH_SE = ("accuracy", "macro_f1", "agreement", "kl_to_original")
#: Pareto axis name -> its table column (every other axis has a column of its own name).
_AXIS_COLUMNS = {"latency": "latency_b1_ms"}
_TEXT = pd.StringDtype(na_value=np.nan)
#: Columns searched by the text search besides the categories.
_TEXT_COLUMNS = ("key", "label")


def _get(d: Any, *path: str) -> Any:
    for part in path:
        # type() first: runs are plain dicts from JSON, and an ABC isinstance check per field
        # was a third of the time of a 10,000-run table.
        if type(d) is not dict and not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d


def class_names(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Class names of the runs, in the order they first appear (their ``classes`` or ``per_class``)."""
    seen: dict[str, None] = {}
    for run in runs:
        for name in run.get("classes") or list((run.get("per_class") or {}).keys()):
            seen.setdefault(str(name), None)
    return list(seen)


def _settings(run: Mapping[str, Any]) -> dict[str, Any]:
    cfg = run.get("config") or {}
    method = run.get("method")
    hscc = method == "hscc"
    row = {
        "method": method,
        "grid": as_float(cfg.get("grid")) if hscc else math.nan,
        "clusters": as_float(cfg.get("clusters")) if hscc else math.nan,
        # Defaults are left out of canonical configs (old cache keys stay valid): the run says.
        "cluster_side": (cfg.get("cluster_side") or run.get("cluster_side") or "output") if hscc else None,
        "allocation": cfg.get("allocation") or run.get("allocation") or "uniform",
        "calibration": (cfg.get("calibration") or run.get("calibration") or "independent") if hscc else None,
        # "all" (the whole training split) has no number: the label says it.
        "calib_size": as_float(cfg.get("calib_size")) if hscc and cfg.get("calib_size") != "all" else math.nan,
        # Words, not a bool: a category column whose filter chips and axis ticks read as such.
        "calib_flip": ("yes" if cfg.get("calib_flip") else "no") if hscc else None,
        "rank_multiple": as_float(cfg.get("rank_multiple", 1)) if hscc else math.nan,
        "energy": as_float(cfg.get("energy")),
        "budget": as_float(cfg.get("budget")),
        "finetune_epochs": as_float(cfg.get("finetune_epochs", 0)),
        "seed": as_float(cfg.get("seed")),
    }
    row["energy_found"] = as_float(run.get("energy")) if cfg.get("budget") is not None else math.nan
    return row


def _metrics(run: Mapping[str, Any], classes: Sequence[str]) -> dict[str, float]:
    row: dict[str, float] = {}
    for name in ("accuracy", "macro_f1"):
        row[name], row[f"{name}_se"] = as_float(run.get(name)), as_float(run.get(f"{name}_se"))
    per_class = run.get("per_class") or {}
    for cls in classes:
        row[f"{cls}_f1"] = as_float(_get(per_class, cls, "f1"))
        row[f"{cls}_f1_se"] = as_float(_get(per_class, cls, "f1_se"))
    for name in ("agreement", "kl_to_original", "accuracy_delta"):
        row[name], row[f"{name}_se"] = as_float(run.get(name)), as_float(run.get(f"{name}_se"))
    row["p_value_vs_original"] = as_float(run.get("p_value_vs_original"))
    flops, original = as_float(run.get("flops")), as_float(run.get("flops_original"))
    row["flops"] = flops
    row["flops_kept"] = flops / original if original > 0 else math.nan
    row["layer_flops_ratio"] = as_float(run.get("layer_flops_ratio"))
    row["params"] = as_float(run.get("params"))
    for b in ("b1", "b32"):
        row[f"latency_{b}_ms"] = as_float(_get(run.get("latency_ms"), "compressed", b, "median"))
    for b in ("b1", "b32"):
        row[f"speedup_{b}"] = as_float(_get(run.get("speedup"), b))
    row["others_cpu"] = as_float(_get(run.get("latency_ms"), "others_cpu"))
    return row


def runs_table(runs: Sequence[Mapping[str, Any]], classes: Sequence[str] | None = None,
               pareto: tuple[str, str] = ("flops", "accuracy")) -> pd.DataFrame:
    """One row per run: settings, metrics with SEs, and the Pareto mark.

    Parameters
    ----------
    runs
        Run dicts as stored (:mod:`hscc_core.runs.pipeline`); the original model's run may be
        among them (its settings are empty).
    classes
        Class names for the per-class F1 columns (default: :func:`class_names` of the runs).
    pareto
        The two axes (``x`` minimised or maximised by its direction, see
        :func:`hscc_core.runs.pareto.get_axis`) whose front the ``pareto`` column marks.

    Returns
    -------
    pandas.DataFrame
        Columns as described in the module docstring, index ``0..n-1`` in the order of ``runs``.
    """
    classes = class_names(runs) if classes is None else list(classes)
    rows = []
    for run in runs:
        row = {"key": run.get("cache_key"), "label": run_name(run)}
        row.update(_settings(run))
        row.update(_metrics(run, classes))
        rows.append(row)
    columns = ["key", "label", *SETTINGS, "energy_found", *_metrics({}, classes)]
    table = pd.DataFrame.from_records(rows, columns=columns)
    for col in columns:
        if col in ("key", "label", *CATEGORICAL):
            # Missing stays NaN (never the text "None"): the string dtype with NaN as its NA value.
            table[col] = table[col].astype(_TEXT)
        else:
            table[col] = table[col].astype("float64")
    table["pareto"] = mark_pareto(table, *pareto)
    return table


def axis_column(axis: str) -> str:
    """The table column of a Pareto axis (``latency`` -> ``latency_b1_ms``, else the same name)."""
    get_axis(axis)  # raises ValueError naming the allowed axes
    return _AXIS_COLUMNS.get(axis, axis)


def mark_pareto(table: pd.DataFrame, x: str = "flops", y: str = "accuracy") -> np.ndarray:
    """Boolean mask of the rows on the Pareto front of axes ``x`` and ``y`` (directions from the axes).

    Rows lacking either value are never on the front.
    """
    ax, ay = get_axis(x), get_axis(y)
    cx, cy = axis_column(x), axis_column(y)
    mask = np.zeros(len(table), dtype=bool)
    if len(table) == 0 or cx not in table or cy not in table:
        return mask
    pts = np.column_stack([table[cx].to_numpy(float), table[cy].to_numpy(float)])
    idx = pareto_front(pts, minimise_x=ax.direction == "min", maximise_y=ay.direction == "max")
    mask[idx] = True
    return mask


# --------------------------------------------------------------------------------------------
# Filtering and sorting


def is_numeric(table: pd.DataFrame, column: str) -> bool:
    """True for number columns (ranges filter them), False for categories and text."""
    return pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column])


def category_values(table: pd.DataFrame, column: str) -> list:
    """The distinct values of a category column, sorted, with ``None`` last when some rows lack one."""
    col = table[column]
    values = sorted(str(v) for v in col.dropna().unique())
    return values + ([None] if col.isna().any() else [])


def search_mask(table: pd.DataFrame, text: str) -> np.ndarray:
    """Rows where every word of ``text`` occurs (case-insensitive) in the key, label or a category."""
    words = str(text or "").lower().split()
    mask = np.ones(len(table), dtype=bool)
    if not words:
        return mask
    cols = [c for c in (*_TEXT_COLUMNS, *CATEGORICAL) if c in table]
    haystack = table[cols[0]].fillna("").astype(str).str.lower()
    for c in cols[1:]:
        haystack = haystack + " " + table[c].fillna("").astype(str).str.lower()
    for word in words:
        mask &= haystack.str.contains(word, regex=False).to_numpy(bool)
    return mask


def filter_mask(table: pd.DataFrame, ranges: Mapping[str, tuple[float, float]] | None = None,
                categories: Mapping[str, Iterable] | None = None, text: str = "") -> np.ndarray:
    """Boolean mask of the rows that pass every filter.

    Parameters
    ----------
    ranges
        ``column -> (low, high)``, inclusive; rows lacking the value (NaN) fail a range.
    categories
        ``column -> allowed values``; ``None`` among them admits rows lacking the value. Also
        accepted for a number column (exact values, e.g. ``{"grid": [2, 4]}``).
    text
        Words that must all occur in the key, label or a category column (:func:`search_mask`).

    Raises
    ------
    ValueError
        For a column the table does not have, or a range whose low end is above its high end.
    """
    mask = search_mask(table, text)
    for col, (lo, hi) in (ranges or {}).items():
        if col not in table:
            raise ValueError(f"unknown column {col!r}")
        if lo > hi:
            raise ValueError(f"range of {col!r} is empty: {lo} > {hi}")
        values = table[col].to_numpy(float)
        with np.errstate(invalid="ignore"):
            mask &= (values >= lo) & (values <= hi)
    for col, allowed in (categories or {}).items():
        if col not in table:
            raise ValueError(f"unknown column {col!r}")
        allowed = list(allowed)
        series = table[col]
        keep_missing = any(a is None or (isinstance(a, float) and math.isnan(a)) for a in allowed)
        present = [a for a in allowed if a is not None and not (isinstance(a, float) and math.isnan(a))]
        if is_numeric(table, col):
            hit = series.isin([float(a) for a in present]).to_numpy(bool)
        else:
            hit = series.isin([str(a) for a in present]).to_numpy(bool)
        mask &= hit | (series.isna().to_numpy(bool) & keep_missing)
    return mask


def filter_table(table: pd.DataFrame, ranges: Mapping[str, tuple[float, float]] | None = None,
                 categories: Mapping[str, Iterable] | None = None, text: str = "") -> pd.DataFrame:
    """The rows of ``table`` that pass :func:`filter_mask` (index kept)."""
    return table[filter_mask(table, ranges, categories, text)]


def sort_table(table: pd.DataFrame, by: str, descending: bool = False) -> pd.DataFrame:
    """``table`` sorted by one column (stable; rows lacking the value last)."""
    if by not in table:
        raise ValueError(f"unknown column {by!r}")
    return table.sort_values(by, ascending=not descending, kind="stable", na_position="last")


# --------------------------------------------------------------------------------------------
# Export


def to_csv(table: pd.DataFrame) -> str:
    """CSV text: a header row naming the columns, one row per run, empty cells for missing values.

    Numbers are written with 12 significant digits (``2`` rather than ``2.0`` for a grid).
    """
    return table.to_csv(index=False, float_format="%.12g", lineterminator="\n")


def to_json(table: pd.DataFrame) -> str:
    """JSON text ``{"columns": [...], "rows": [{column: value}, ...]}``; missing values are ``null``."""
    rows = json.loads(table.to_json(orient="records", double_precision=15))
    return json.dumps({"columns": list(table.columns), "rows": rows}, allow_nan=False)
