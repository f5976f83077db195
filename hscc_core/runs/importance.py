"""Which setting matters: importance of each run setting for one metric, fitted on stored runs.

Two estimators, both on the settings of :data:`hscc_core.runs.table.SETTINGS` that vary among the
runs:

* ``fanova`` (default): functional ANOVA (Hutter, Hoos and Leyton-Brown 2014, "An efficient
  approach for assessing hyperparameter importance") exactly as Optuna computes it
  (:class:`optuna.importance.FanovaImportanceEvaluator`) on an in-memory study with one completed
  trial per run: the share of the metric's variance, over a random forest fitted to the runs, that
  each setting explains on its own. The shares sum to 1.
* ``permutation``: permutation importance (Breiman 2001) of a scikit-learn random forest,
  cross-fitted: for each of 3 folds the forest is fitted on the others and the drop in R^2 when a
  setting's values are shuffled is measured on the held-out runs; the mean over folds. Not
  normalised (a setting that only adds noise can come out slightly negative).

A setting a run does not have (the grid of a Global SVD run; the energy of a budget run) is
encoded as a level of its own ("n/a", or a number just outside the observed ones), so conditional
settings are kept; their importance then also carries the difference between the runs that have
them and those that do not (filter to HSCC runs to rank HSCC's own settings).

Cost. Optuna's defaults (64 trees of depth 64) take minutes on thousands of runs, since the
variance decomposition walks every leaf; here the forest has 32 trees of depth 6 (at most 64
cells per tree: on 10,000 stored runs the ranking and the shares, to 0.002, were those of depth 8,
at a quarter of the time) and at most :data:`MAX_RUNS` runs (a seeded subsample) are used: 10,000
runs then take about a second (docs/dashboard.md).

Too few runs. A forest fitted on a handful of runs ranks settings by chance. A warning is set
when fewer than ``max(MIN_RUNS, RUNS_PER_SETTING x varying settings)`` runs carry the metric:
20 runs at least and 5 per varying setting, the rule of thumb of about ten observations per
effect estimated halved for tree ensembles that pool across settings. Below 3 runs nothing is
fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hscc_core.runs.table import CATEGORICAL, SETTINGS, is_numeric

__all__ = ["IMPORTANCE_METHODS", "Importance", "MAX_RUNS", "MIN_RUNS", "RUNS_PER_SETTING", "setting_importance"]

IMPORTANCE_METHODS = {"fanova": "fANOVA (Optuna)", "permutation": "permutation importance (random forest)"}
MIN_RUNS = 20
RUNS_PER_SETTING = 5
MAX_RUNS = 2000
_FANOVA = {"n_trees": 32, "max_depth": 6}


@dataclass(frozen=True)
class Importance:
    """Importance of each varying setting for one metric.

    Attributes
    ----------
    metric, method : str
    importances : dict
        setting -> importance, largest first (empty when nothing could be fitted).
    n_runs : int
        Runs that carry the metric (the runs the estimate rests on).
    n_used : int
        Runs fitted (``n_runs``, or a seeded subsample of :data:`MAX_RUNS`).
    constant : tuple of str
        Settings with one value among the runs (nothing to attribute to them).
    warning : str or None
        Set when there are too few runs for a trustworthy ranking.
    """

    metric: str
    method: str
    importances: dict = field(default_factory=dict)
    n_runs: int = 0
    n_used: int = 0
    constant: tuple = ()
    warning: str | None = None

    @property
    def method_label(self) -> str:
        return IMPORTANCE_METHODS.get(self.method, self.method)

    @property
    def min_runs(self) -> int:
        """Runs below which :attr:`warning` is set, for this number of varying settings."""
        return max(MIN_RUNS, RUNS_PER_SETTING * len(self.importances))


def _features(table: pd.DataFrame, settings: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Varying settings, encoded (categories as strings with "n/a"; numbers with an n/a value)."""
    feats, constant = {}, []
    for name in settings:
        if name not in table:
            continue
        col = table[name]
        if name in CATEGORICAL or not is_numeric(table, name):
            values = col.astype(object).where(col.notna(), "n/a").astype(str)
        else:
            values = col.to_numpy(float)
            finite = values[np.isfinite(values)]
            low = float(finite.min()) if finite.size else 0.0
            span = float(finite.max()) - low if finite.size else 1.0
            values = np.where(np.isfinite(values), values, low - max(span, 1.0))
            values = pd.Series(values, index=table.index)
        if pd.Series(values).nunique() < 2:
            constant.append(name)
        else:
            feats[name] = values
    return pd.DataFrame(feats, index=table.index), constant


def setting_importance(table: pd.DataFrame, metric: str, method: str = "fanova",
                       settings: Sequence[str] = SETTINGS, seed: int = 0, max_runs: int = MAX_RUNS) -> Importance:
    """Importance of each setting for ``metric`` over the runs of ``table``.

    Parameters
    ----------
    table
        A runs table (:func:`hscc_core.runs.table.runs_table`), possibly filtered.
    metric
        A number column of the table (``accuracy``, ``macro_f1``, ``flops``, ``latency_b1_ms``...).
    method
        ``"fanova"`` or ``"permutation"`` (see the module docstring).
    settings
        Candidate settings (default: all of :data:`~hscc_core.runs.table.SETTINGS`).
    seed
        Seeds the subsample, the forests and the permutations.
    max_runs
        Fit at most this many runs (a seeded subsample beyond it).

    Returns
    -------
    Importance

    Raises
    ------
    ValueError
        Unknown method, or a metric that is not a number column of the table.
    """
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"unknown importance method {method!r} (allowed: {', '.join(IMPORTANCE_METHODS)})")
    if metric not in table or not is_numeric(table, metric):
        raise ValueError(f"metric {metric!r} is not a number column of the runs table")
    if max_runs < 3:
        raise ValueError(f"max_runs must be >= 3, got {max_runs}")
    rows = table[np.isfinite(table[metric].to_numpy(float))]
    n_runs = len(rows)
    feats, constant = _features(rows, settings)
    if n_runs < 3 or feats.shape[1] == 0:
        why = f"only {n_runs} runs carry {metric}" if n_runs < 3 else "no setting varies among these runs"
        return Importance(metric, method, {}, n_runs, 0, tuple(constant), f"Nothing to rank: {why}.")
    if n_runs > max_runs:
        pick = np.sort(np.random.default_rng(seed).choice(n_runs, size=max_runs, replace=False))
        rows, feats = rows.iloc[pick], feats.iloc[pick]
    y = rows[metric].to_numpy(float)
    if np.ptp(y) == 0:
        scores = {name: 0.0 for name in feats.columns}
    elif method == "fanova":
        scores = _fanova(feats, y, seed)
    else:
        scores = _permutation(feats, y, seed)
    ordered = dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))
    need = max(MIN_RUNS, RUNS_PER_SETTING * len(ordered))
    warning = None
    if n_runs < need:
        warning = (f"Only {n_runs} runs for {len(ordered)} varying settings (at least {need} advised): "
                   "this ranking may be chance.")
    elif np.ptp(y) == 0:
        warning = f"{metric} is the same for every run: no setting matters."
    return Importance(metric, method, ordered, n_runs, len(rows), tuple(constant), warning)


def _fanova(feats: pd.DataFrame, y: np.ndarray, seed: int) -> dict[str, float]:
    import optuna  # noqa: PLC0415 - only importance and search need it
    from optuna.distributions import CategoricalDistribution, FloatDistribution  # noqa: PLC0415

    dists = {}
    for name in feats.columns:
        col = feats[name]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            dists[name] = CategoricalDistribution(sorted(col.unique()))
        else:
            dists[name] = FloatDistribution(float(col.min()), float(col.max()))
    records = feats.to_dict("records")
    trials = [optuna.trial.create_trial(params={k: (v if isinstance(v, str) else float(v)) for k, v in p.items()},
                                        distributions=dists, value=float(v)) for p, v in zip(records, y)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed, **_FANOVA)
    scores = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return {name: float(scores.get(name, 0.0)) for name in feats.columns}


def _permutation(feats: pd.DataFrame, y: np.ndarray, seed: int) -> dict[str, float]:
    from sklearn.ensemble import RandomForestRegressor  # noqa: PLC0415
    from sklearn.inspection import permutation_importance  # noqa: PLC0415
    from sklearn.model_selection import KFold  # noqa: PLC0415

    # Trees split ordinal codes of a category as well as one-hot columns, and keep one column per setting.
    x = np.column_stack([pd.factorize(feats[c], sort=True)[0] if feats[c].dtype == object
                         or pd.api.types.is_string_dtype(feats[c]) else feats[c].to_numpy(float)
                         for c in feats.columns]).astype(float)
    folds = min(3, len(y))
    total = np.zeros(x.shape[1])
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        forest = RandomForestRegressor(n_estimators=60, min_samples_leaf=2, random_state=seed, n_jobs=1)
        forest.fit(x[train], y[train])
        result = permutation_importance(forest, x[test], y[test], n_repeats=3, random_state=seed)
        total += np.nan_to_num(result.importances_mean)
    return {name: float(v / folds) for name, v in zip(feats.columns, total)}
