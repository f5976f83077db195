"""Which stored runs belong to a workspace: the runs of its baseline, and one run by its key.

The CLI (``hscc runs``, ``pareto``, ``predict --run``, ``heatmap --run``) and every page of the app
select runs the same way: a run belongs to a workspace when its data and model fingerprints are the
workspace's.
"""

from __future__ import annotations

import re

from hscc_core.runs.store import RunStore
from hscc_core.runs.versions import is_current
from hscc_core.runs.workspace import Workspace

__all__ = ["baseline_runs", "older_baseline_runs", "resolve_run"]


def _of_baseline(store: RunStore, data_fingerprint: str, model_fingerprint: str, method: str | None):
    """Every stored compression run (not the original's) of one dataset and baseline model."""
    return (r for r in store.list_runs(method=method, data_fingerprint=data_fingerprint)
            if r.get("method") != "original" and r.get("model_fingerprint") == model_fingerprint)


def baseline_runs(store: RunStore, data_fingerprint: str, model_fingerprint: str,
                  method: str | None = None) -> list[dict]:
    """The stored compression runs (not the original's) of one dataset and baseline model, computed
    by this version of the pipeline (:mod:`hscc_core.runs.versions`)."""
    return [r for r in _of_baseline(store, data_fingerprint, model_fingerprint, method) if is_current(r)]


def older_baseline_runs(store: RunStore, data_fingerprint: str, model_fingerprint: str,
                        method: str | None = None) -> int:
    """How many compression runs of this dataset and baseline :func:`baseline_runs` leaves out because
    an older version of the pipeline computed them."""
    return sum(not is_current(r) for r in _of_baseline(store, data_fingerprint, model_fingerprint, method))


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
        raise ValueError(f"invalid run key {key!r}: expected the hexadecimal cache key that `hscc runs` lists")
    keys = ws.store.keys()
    matches = [key] if key in keys else [k for k in keys if k.startswith(key)]
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
        raise ValueError(f"run {matches[0]} was made on another dataset ({run.get('data', '?')}): "
                         "pass that dataset with --data")
    if run.get("model_fingerprint") != ws.model_fingerprint():
        raise ValueError(f"run {matches[0]} was made with another baseline model than this workspace's "
                         "(check --arch, --input-size, --epochs, --checkpoint)")
    return run
