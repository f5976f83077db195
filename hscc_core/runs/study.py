"""Stored runs as one Optuna study, for optuna-dashboard and any other Optuna tool.

Each run becomes one completed trial of a two-objective study (default: accuracy maximised, FLOPs
minimised): its settings are the trial's parameters (the settings a method ignores are left out,
as Optuna does for conditional parameters), its objective values the trial's values, and its cache
key, label and other metrics user attributes. Written to an SQLite file, it opens as it is with
``optuna-dashboard sqlite:///PATH.db`` (history, Pareto front, parallel coordinates, importance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hscc_core.runs.pareto import axis_value, get_axis
from hscc_core.runs.table import CATEGORICAL, SETTINGS, runs_table

__all__ = ["STUDY_NAME", "export_study", "sqlite_url"]

STUDY_NAME = "hscc-runs"
# Settings written as parameters; the seed is constant in practice and only clutters a dashboard.
_PARAMS = tuple(s for s in SETTINGS if s != "seed")
_INTEGER = ("grid", "clusters", "calib_size", "rank_multiple", "finetune_epochs")


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an SQLite file (absolute, so it does not depend on the working folder)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def export_study(runs: Sequence[Mapping[str, Any]], storage: str, study_name: str = STUDY_NAME,
                 objectives: tuple[str, str] = ("accuracy", "flops"), attrs: Mapping[str, Any] | None = None):
    """Write ``runs`` as a new study ``study_name`` in ``storage`` (replacing one of that name).

    Parameters
    ----------
    runs
        Compression runs (the original model's run, which has no settings, is skipped).
    storage
        An Optuna storage URL, e.g. ``sqlite_url("runs.db")``.
    objectives
        Pareto axis names (:func:`hscc_core.runs.pareto.get_axis`) that become the trial values.
    attrs
        Extra study user attributes (the data and model the runs belong to).

    Returns
    -------
    (study, skipped)
        The written ``optuna.Study`` and the number of runs left out for lacking an objective.
    """
    import optuna  # noqa: PLC0415
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: PLC0415

    for name in objectives:
        get_axis(name)
    runs = [r for r in runs if r.get("method") != "original"]
    table = runs_table(runs, pareto=("flops", "accuracy"))
    dists = {}
    for name in _PARAMS:
        col = table[name].dropna()
        if col.empty:
            continue
        if name in CATEGORICAL:
            dists[name] = CategoricalDistribution(sorted(col.unique()))
        elif name in _INTEGER:
            dists[name] = IntDistribution(int(col.min()), int(col.max()))
        else:
            dists[name] = FloatDistribution(float(col.min()), float(col.max()))
    attr_columns = [c for c in table.columns if c not in (*SETTINGS, "key", "label") and c != "pareto"]
    trials, skipped = [], 0
    for run, (_, row) in zip(runs, table.iterrows()):
        values = [axis_value(run, o) for o in objectives]
        if not all(math.isfinite(v) for v in values):
            skipped += 1
            continue
        params = {}
        for name, dist in dists.items():
            value = row[name]
            if not pd.isna(value):
                params[name] = int(value) if name in _INTEGER else (value if name in CATEGORICAL else float(value))
        user_attrs = {"cache_key": run.get("cache_key"), "label": run.get("label")}
        user_attrs.update({c: float(row[c]) for c in attr_columns if math.isfinite(float(row[c]))})
        trials.append(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, values=values, user_attrs=user_attrs))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study_name in optuna.study.get_all_study_names(storage):
        optuna.delete_study(study_name=study_name, storage=storage)  # a re-export replaces it
    directions = ["minimize" if get_axis(o).direction == "min" else "maximize" for o in objectives]
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; the dashboard shows the names
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objectives))
    for key, value in {"objectives": list(objectives), **(attrs or {})}.items():
        study.set_user_attr(key, value)
    study.add_trials(trials)
    return study, skipped
