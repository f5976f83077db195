"""The runs table of a store, kept on disk between sessions and updated run by run.

Listing a store reads and verifies every ``run.json``: about 1 ms for a real AlexNet run (10 kB of
JSON), so a dashboard over 10,000 runs would wait seconds on each fresh process. The table's rows
are small, so they are kept as one Parquet blob in the store (``blobs/tables/<key>.parquet``, with
the store's checksum sidecar) beside each row's run file state (modification time in ns and size).
A later call stats the run files (cheap), reuses the rows whose file is unchanged, reads only runs
that are new or were rewritten, drops rows of removed runs, and rewrites the blob when anything
changed. Rows come from verified reads (:meth:`RunStore.iter_runs` / :meth:`RunStore.get_run`),
and a run file cannot change without its state changing, so the cache never serves a stale row.

Each row also keeps its run's *summary*: the stored run without its per-layer detail
(:data:`DETAIL_FIELDS`, about 85 % of a real run's JSON), as JSON text. Pages that draw every run
(the Pareto page) read the summaries from the same blob instead of 10,000 run files
(:func:`stored_run_summaries`); a summary has exactly the stored values of every field it keeps.

Decoding 10,000 summaries takes most of a second, too long for a page's first visit. A page that
needs a few values of every run asks for them as typed columns instead (:func:`stored_run_columns`):
a function of a run's summary, computed once per run and kept in a blob of its own beside the
table's, updated like the table (only new or rewritten runs are derived, from their summaries).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hscc_core.runs.store import RunStore, cache_key
from hscc_core.runs.table import mark_pareto, runs_table
from hscc_core.runs.versions import is_current, is_upgradable

__all__ = ["DETAIL_FIELDS", "TABLE_VERSION", "older_runs_count", "stored_run_columns", "stored_run_summaries",
           "stored_runs_table"]

TABLE_VERSION = 7  # bump when runs_table's columns or the summaries change (3: calibration, allocation
#                    for every method; run summaries; 4: whether a run is current; 5: mirror images, rank multiple;
#                    6: whether an older run can be upgraded; 7: others' CPU share while timed)
#: Fields of a stored run that a summary leaves out: per-layer summaries and errors, per-layer FLOPs,
#: the confusion matrix and the budget search's record. Listings never read them.
DETAIL_FIELDS = ("layers", "layer_errors", "layer_flops", "layer_flops_original", "confusion_matrix",
                 "budget_search")
_META = ("_mtime", "_size", "_data", "_model", "_method", "_current", "_upgradable", "_summary")
_FULL_LISTING = 100  # above this many unread runs, one listing is cheaper than reads with arrays


def _states(store: RunStore) -> dict[str, tuple[int, int]]:
    """Each run file's state (modification time in ns, size) by key; runs whose file is gone are left out."""
    states, runs_dir = {}, str(store.runs_dir)
    for key in store.keys():
        try:
            st = os.stat(f"{runs_dir}/{key}/run.json")  # an f-string: os.path.join cost as much as the stat
        except OSError:
            continue
        states[key] = (st.st_mtime_ns, st.st_size)
    return states


def _unchanged(cached: pd.DataFrame, states: dict) -> np.ndarray:
    """Mask of the cached rows whose run file is unchanged (not rewritten, not removed)."""
    return np.array([states.get(k) == (m, n) for k, m, n in zip(cached["key"], cached["_mtime"], cached["_size"])],
                    dtype=bool)


def _with_meta(table: pd.DataFrame, runs: list[dict], states: dict) -> pd.DataFrame:
    """``table`` (one row per run) with each run's file state, fingerprints, method, whether it is current
    and whether an older one can be upgraded."""
    table["_mtime"] = np.array([states[r["cache_key"]][0] for r in runs], dtype=np.int64)
    table["_size"] = np.array([states[r["cache_key"]][1] for r in runs], dtype=np.int64)
    text = pd.StringDtype(na_value=np.nan)
    for col, field in (("_data", "data_fingerprint"), ("_model", "model_fingerprint"), ("_method", "method")):
        table[col] = pd.array([r.get(field) for r in runs], dtype=text)
    table["_current"] = np.array([is_current(r) for r in runs], dtype=bool)
    table["_upgradable"] = np.array([not is_current(r) and is_upgradable(r) for r in runs], dtype=bool)
    return table


def _summary(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in DETAIL_FIELDS}


def _rows(runs: list[dict], classes: Sequence[str], states: dict) -> pd.DataFrame:
    table = _with_meta(runs_table(runs, classes=classes), runs, states)
    text = pd.StringDtype(na_value=np.nan)
    table["_summary"] = pd.array([json.dumps(_summary(r), separators=(",", ":")) for r in runs], dtype=text)
    return table


def _read_blob(store: RunStore, blob: str) -> pd.DataFrame | None:
    if store.verify_blob("tables", blob, "parquet"):
        try:
            return pd.read_parquet(store.blob_path("tables", blob, "parquet"))
        except (OSError, ValueError):  # unreadable despite its checksum: rebuild it
            return None
    return None


def _cached_rows(store: RunStore, classes: list[str]) -> pd.DataFrame:
    """Every run's row with its file state, fingerprints, method and summary, in key order, brought up
    to date with the store (reads only new or rewritten runs; rewrites the blob when anything changed)."""
    blob = cache_key("runs-table", {"classes": classes, "version": TABLE_VERSION})
    states = _states(store)
    cached = _read_blob(store, blob)
    changed = False
    if cached is not None:
        same = _unchanged(cached, states)
        changed = not same.all()  # removed or rewritten runs
        cached = cached[same]
    have = set(cached["key"]) if cached is not None else set()
    missing = [k for k in states if k not in have]
    if missing:
        if len(missing) > _FULL_LISTING:
            wanted = set(missing)
            runs = [r for r in store.iter_runs() if r["cache_key"] in wanted]
        else:
            runs = [r for r in (store.get_run(k) for k in missing) if r is not None]
        fresh = _rows(runs, classes, states)
        cached = fresh if cached is None or cached.empty else pd.concat([cached, fresh], ignore_index=True)
    changed = changed or bool(missing)
    if cached is None:
        cached = _rows([], classes, states)
    if changed:
        store.put_blob_file("tables", blob, "parquet", lambda p: cached.to_parquet(p, index=False))
    return cached.sort_values("key", kind="stable")


def _chosen(rows: pd.DataFrame, data_fingerprint: str | None, model_fingerprint: str | None,
            include_original: bool) -> np.ndarray:
    mask = np.ones(len(rows), dtype=bool)
    if not include_original:
        mask &= (rows["_method"] != "original").to_numpy(bool)
    if data_fingerprint is not None:
        mask &= (rows["_data"] == data_fingerprint).to_numpy(bool)
    if model_fingerprint is not None:
        # A model's runs from an older pipeline describe another computation: never listed beside it.
        mask &= (rows["_model"] == model_fingerprint).to_numpy(bool) & rows["_current"].to_numpy(bool)
    return mask


def stored_runs_table(store: RunStore, classes: Sequence[str], data_fingerprint: str | None = None,
                      model_fingerprint: str | None = None, pareto: tuple[str, str] = ("flops", "accuracy"),
                      include_original: bool = False) -> pd.DataFrame:
    """:func:`~hscc_core.runs.table.runs_table` of the store's runs, from the on-disk row cache.

    Parameters
    ----------
    store
        The run store.
    classes
        Class names of the per-class columns (part of the cache's identity).
    data_fingerprint, model_fingerprint
        Keep only runs of this data and baseline (None: every run).
    pareto
        Axes of the ``pareto`` column, marked among the rows returned.
    include_original
        Keep the original model's runs (left out by default, as the pages list compression runs).

    Returns
    -------
    pandas.DataFrame
        Rows in key order, exactly the columns of ``runs_table``.
    """
    rows = _cached_rows(store, list(classes))
    mask = _chosen(rows, data_fingerprint, model_fingerprint, include_original)
    table = rows[mask].drop(columns=list(_META)).reset_index(drop=True)
    table["pareto"] = mark_pareto(table, *pareto)
    return table


def older_runs_count(store: RunStore, classes: Sequence[str], data_fingerprint: str, model_fingerprint: str,
                     upgradable: bool = False) -> int:
    """How many compression runs of this data and baseline the store holds from an older version of
    the pipeline (:mod:`hscc_core.runs.versions`). They stay on disk but are never listed beside
    current runs; the Runs and Pareto pages say how many there are (``older_runs_note``), so none
    seems lost. With ``upgradable``: how many of them :mod:`hscc_core.runs.upgrade` can bring up to date."""
    rows = _cached_rows(store, list(classes))
    mask = ((rows["_method"] != "original") & (rows["_data"] == data_fingerprint)
            & (rows["_model"] == model_fingerprint) & ~rows["_current"].astype(bool))
    if upgradable:
        mask &= rows["_upgradable"].astype(bool)
    return int(mask.to_numpy(bool).sum())


def stored_run_summaries(store: RunStore, classes: Sequence[str], data_fingerprint: str | None = None,
                         model_fingerprint: str | None = None, include_original: bool = False) -> list[dict]:
    """The store's runs without their per-layer detail (:data:`DETAIL_FIELDS`), from the on-disk row cache.

    What a page that lists or draws every run needs (configuration, metrics with SEs, per-class
    scores, FLOPs, parameters, latency, split, cache key) without reading every run file.

    Parameters
    ----------
    store, classes, data_fingerprint, model_fingerprint, include_original
        As for :func:`stored_runs_table` (the two share one cache).

    Returns
    -------
    list of dict
        One dict per run in key order: the stored run minus :data:`DETAIL_FIELDS`, values unchanged.
    """
    rows = _cached_rows(store, list(classes))
    mask = _chosen(rows, data_fingerprint, model_fingerprint, include_original)
    return [json.loads(s) for s in rows["_summary"].to_numpy(object)[mask]]


def stored_run_columns(store: RunStore, classes: Sequence[str], name: str,
                       derive: Callable[[dict], Mapping[str, Any]], data_fingerprint: str | None = None,
                       model_fingerprint: str | None = None, include_original: bool = False) -> pd.DataFrame:
    """Columns derived from each stored run's summary, computed once per run and kept on disk.

    A warm call stats the run files and reads this one blob (neither the table's blob nor a run).
    Runs that are new or were rewritten are derived from their summaries: read one by one when
    there are few, else decoded from the table cache's (brought up to date first).

    Parameters
    ----------
    store, classes, data_fingerprint, model_fingerprint, include_original
        As for :func:`stored_runs_table` (the runs are the same, in the same order).
    name
        Identity of ``derive``: its blob is ``(name, classes, TABLE_VERSION)``, so a caller names a new
        version of its function with a new name (``"pareto-2"``).
    derive
        ``summary -> {column: value}`` (a summary as :func:`stored_run_summaries` returns it); the same
        columns for every run, values that Parquet stores (numbers, text, None).

    Returns
    -------
    pandas.DataFrame
        One row per run in key order: ``key`` and the derived columns.
    """
    blob = cache_key("runs-columns", {"name": name, "classes": list(classes), "version": TABLE_VERSION})
    states = _states(store)
    cached = _read_blob(store, blob)
    if cached is not None and not {"key", *_META[:-1]} <= set(cached.columns):
        cached = None  # written by another layout of this cache: rebuild it
    changed = cached is None
    if cached is not None:
        same = _unchanged(cached, states)
        changed = not same.all()  # removed or rewritten runs
        cached = cached[same]
    have = set() if cached is None else set(cached["key"])
    missing = [k for k in states if k not in have]
    if missing:
        if len(missing) > _FULL_LISTING:
            rows = _cached_rows(store, list(classes))
            wanted = set(missing)
            summaries = [json.loads(t) for k, t in zip(rows["key"], rows["_summary"]) if k in wanted]
        else:
            summaries = [_summary(r) for r in (store.get_run(k) for k in missing) if r is not None]
        summaries = [r for r in summaries if r["cache_key"] in states]
        fresh = pd.DataFrame.from_records([dict(derive(r)) for r in summaries])
        fresh["key"] = pd.array([r["cache_key"] for r in summaries], dtype=pd.StringDtype(na_value=np.nan))
        fresh = _with_meta(fresh, summaries, states)
        cached = fresh if cached is None or cached.empty else pd.concat([cached, fresh], ignore_index=True)
        changed = True
    if cached is None:  # an empty store
        cached = _with_meta(pd.DataFrame({"key": pd.array([], dtype=pd.StringDtype(na_value=np.nan))}), [], states)
    if changed:
        store.put_blob_file("tables", blob, "parquet", lambda p: cached.to_parquet(p, index=False))
    cached = cached.sort_values("key", kind="stable")
    mask = _chosen(cached, data_fingerprint, model_fingerprint, include_original)
    return cached[mask].drop(columns=[c for c in _META if c in cached]).reset_index(drop=True)
