"""Which stored runs belong to a workspace: the runs of its baseline, and one run by its key.

The CLI (``hscc runs``, ``pareto``, ``predict --run``, ``heatmap --run``) and every page of the app
select runs the same way: a run belongs to a workspace when its data and model fingerprints are the
workspace's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hscc_core.runs.store import RunStore
from hscc_core.runs.versions import is_current, is_upgradable
from hscc_core.runs.workspace import Workspace

__all__ = ["baseline_runs", "older_baseline_runs", "older_runs", "resolve_run", "upgraded_to"]


def _of_baseline(store: RunStore, data_fingerprint: str, model_fingerprint: str, method: str | None):
    """Every stored compression run (not the original's) of one dataset and baseline model."""
    return (r for r in store.list_runs(method=method, data_fingerprint=data_fingerprint)
            if r.get("method") != "original" and r.get("model_fingerprint") == model_fingerprint)


def baseline_runs(store: RunStore, data_fingerprint: str, model_fingerprint: str,
                  method: str | None = None) -> list[dict]:
    """The stored compression runs (not the original's) of one dataset and baseline model, computed
    by this version of the pipeline (:mod:`hscc_core.runs.versions`)."""
    return [r for r in _of_baseline(store, data_fingerprint, model_fingerprint, method) if is_current(r)]


def older_runs(store: RunStore, data_fingerprint: str, model_fingerprint: str, method: str | None = None) -> list[dict]:
    """The compression runs of this dataset and baseline that :func:`baseline_runs` leaves out because an
    older version of the pipeline computed them."""
    return [r for r in _of_baseline(store, data_fingerprint, model_fingerprint, method) if not is_current(r)]


def older_baseline_runs(store: RunStore, data_fingerprint: str, model_fingerprint: str,
                        method: str | None = None, upgradable: bool = False) -> int:
    """How many runs :func:`older_runs` finds; with ``upgradable``, how many of them
    :mod:`hscc_core.runs.upgrade` can bring up to date without computing them again."""
    return sum(not upgradable or is_upgradable(r)
               for r in older_runs(store, data_fingerprint, model_fingerprint, method))


def upgraded_to(runs: Iterable[Mapping], key: str) -> str | None:
    """The key of the run among ``runs`` (runs or their summaries) that an older run whose key starts
    with ``key`` was brought up to date as (:mod:`hscc_core.runs.upgrade` removes the older one), or
    None (none, or more than one)."""
    found = [r["cache_key"] for r in runs
             if str((r.get("upgraded_from") or {}).get("cache_key", "")).startswith(key)]
    return found[0] if len(found) == 1 else None


_HEX = re.compile(r"[0-9a-f]{4,64}")


def resolve_run(ws: Workspace, key: str) -> dict:
    """The stored compression run under ``key`` (a full cache key or a unique prefix of 4+ digits).

    Raises
    ------
    ValueError
        Malformed, unknown or ambiguous key; the original model's run; a run of another dataset or
        baseline than the workspace's.
    """
    key = str(key).strip().lower()
    if not _HEX.fullmatch(key):
        raise ValueError(f"invalid run key {key!r}: expected a cache key that `hscc runs` lists, or its first 4 "
                         "or more (hexadecimal) digits")
    keys = ws.store.keys()
    matches = [key] if key in keys else [k for k in keys if k.startswith(key)]
    if not matches:  # an older run brought up to date (hscc_core.runs.upgrade) lives under a new key
        moved = upgraded_to(ws.store.iter_runs(data_fingerprint=ws.index().fingerprint), key)
        matches = [moved] if moved else []
    if not matches:
        raise ValueError(f"no cached run with key {key}: list the runs with `hscc runs`")
    if len(matches) > 1:
        raise ValueError(f"run key {key} is ambiguous ({len(matches)} runs start with it): give more digits")
    run = ws.store.get_run(matches[0])
    if run is None:
        raise ValueError(f"the run {matches[0]} could not be read from the cache (see the messages above)")
    if run.get("method") == "original":
        raise ValueError(f"{matches[0]} is the original model's run: give a compressed run's key (`hscc runs`)")
    if run.get("data_fingerprint") != ws.index().fingerprint:
        # The split and --dedupe change the data too (a run of the official split, asked for with
        # --split clean, is on other test images): name all three.
        split = f", {run['split']} split" if run.get("split") else ""
        raise ValueError(f"run {matches[0]} was made on other data ({run.get('data', '?')}{split}): pass the "
                         "--data, --split and --dedupe it was made with")
    if run.get("model_fingerprint") != ws.model_fingerprint():
        raise ValueError(f"run {matches[0]} was made with another baseline model than this workspace's "
                         "(check --arch, --input-size, --epochs, --checkpoint)")
    return run
