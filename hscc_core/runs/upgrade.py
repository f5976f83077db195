"""Bring stored runs up to date without computing them again: older versions, missing timings.

A run's cache key includes the pipeline version (:mod:`hscc_core.runs.versions`), so a version bump
leaves every stored run unlisted. When the bump changed only how runs are *timed* (version 4: the
original timed channels-last like the compressed models), everything else a run holds (accuracy,
per-class metrics, fidelity, FLOPs, parameters, layer summaries, the plan's arrays) is what the
current pipeline would compute again, which on the real data takes minutes per run. Upgrading:

* re-keys the run under the current version's key (the key a ``hscc compress`` with the same
  settings looks up, so nothing is computed twice);
* times it again by the current rule when it had been timed: the compressed model is rebuilt from
  the stored calibration statistics (no new calibration, no evaluation), checked to have exactly
  the stored layout (per-layer summaries and analytical MACs), and timed against the original,
  interleaved in this process, as a run's measure stage does. A fine-tuned run is timed on its
  layout before fine-tuning: fine-tuning changes weights, not shapes, and the speed of these
  kernels depends on the shapes only. Without ``retime`` its timing is dropped instead;
* keeps what it replaces under ``upgraded_from`` (the old key, version and timing), then removes the
  old run, so listings count it once.

:func:`time_runs` completes current runs the same way: runs computed without a timing (``--no-speed``,
as parallel sweeps must be) are timed afterwards, one at a time, against the original. On request it
also times again the runs whose timing was taken on a busy machine
(:func:`hscc_core.measure.machine.busy_timing`), keeping the
timing it replaces.

Runs of versions that changed computation (not in
:data:`hscc_core.runs.versions.TIMING_ONLY_VERSIONS`) are left alone:
they must be computed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hscc_core.measure.machine import busy_timing
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import build_compressed, run_key, speed_fields
from hscc_core.runs.store import canonical_json
from hscc_core.runs.selection import older_runs
from hscc_core.runs.versions import RUN_VERSION, is_current, is_upgradable
from hscc_core.runs.workspace import Workspace

__all__ = ["TimingReport", "UpgradeReport", "config_of", "time_runs", "upgradable_runs", "upgrade_runs"]

# Fields of a run that the store adds or that describe one process's reading of it.
_TRANSIENT = ("cache_key", "cached")


@dataclass
class UpgradeReport:
    """What :func:`upgrade_runs` did: one entry per older run it looked at."""

    # {"from", "to", "label", "retimed", "already_current"}; already_current: a run of the same settings
    # had been computed again since, and only the older copy was removed
    upgraded: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"key", "label", "reason"}

    def summary(self) -> str:
        """One line for people: how many runs were brought up to date, re-timed and left alone."""
        retimed = sum(u["retimed"] for u in self.upgraded)
        n = len(self.upgraded)
        if not n and not self.skipped:
            return "No older run to bring up to date."
        text = (f"{n} older {'run' if n == 1 else 'runs'} brought up to date (version {RUN_VERSION})"
                + (f", {retimed} of them timed again" if retimed else ""))
        if self.skipped:
            text += f"; {len(self.skipped)} left as {'it was' if len(self.skipped) == 1 else 'they were'}"
        return text + "."


def upgradable_runs(ws: Workspace) -> list[dict]:
    """The stored compression runs of this workspace's data and baseline that an older pipeline
    version computed and that :func:`upgrade_runs` can bring up to date (key order)."""
    return [r for r in older_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint()) if is_upgradable(r)]


# Settings a run records beside its config: they must agree with what the config says.
_RECORDED = ("allocation", "calibration", "cluster_side")


def config_of(run: dict) -> RunConfig:
    """The :class:`RunConfig` that computes what ``run`` holds (:meth:`RunConfig.from_canonical`),
    checked against the settings the run records beside its config.

    Raises
    ------
    ValueError
        When today's settings cannot express it (a setting that no longer exists, or one that reads
        differently now).
    """
    stored = run["config"]
    try:
        config = RunConfig.from_canonical(stored)
    except TypeError as exc:  # a setting that no longer exists
        raise ValueError(str(exc)) from None
    canon = config.canonical()
    differs = {k for k, v in stored.items() if canon.get(k) != v} | set(canon).difference(stored)
    differs |= {f for f in _RECORDED if run.get(f) is not None and getattr(config, f) != run[f]}
    if differs:
        raise ValueError(f"its settings read differently today ({', '.join(sorted(differs))})")
    return config


def _layout(summaries) -> str:
    return canonical_json({name: s.to_json() for name, s in summaries.items()})


def upgrade_runs(ws: Workspace, retime: bool = True, latency_runs: int = 20,
                 progress: Callable[[int, int], None] | None = None) -> UpgradeReport:
    """Bring every upgradable run of ``ws`` (:func:`upgradable_runs`) to the current version.

    Parameters
    ----------
    ws : Workspace
        Its baseline must be present (runs are only ever upgraded against the model that made them).
    retime : bool
        Time runs that had been timed again by the current rule (default); False drops their
        timing instead (``latency_ms`` and ``speedup`` become None), which takes no time.
    latency_runs : int
        Rounds per model and batch size when timing, as for a run (the measure stage's time budget
        applies too).
    progress : callable(done, total), optional

    Returns
    -------
    UpgradeReport
    """
    progress = progress or (lambda done, total: None)
    report = UpgradeReport()
    runs = upgradable_runs(ws)
    progress(0, len(runs))
    model = meta = None
    for i, old in enumerate(runs):
        if model is None:
            model, meta = ws.baseline(train_if_missing=False)
        try:
            report.upgraded.append(_upgrade(ws, old, model, meta, retime, latency_runs))
        except _Skip as exc:
            report.skipped.append({"key": old["cache_key"], "label": old.get("label", "?"),
                                   "reason": f"{exc}; compute it again"})
        progress(i + 1, len(runs))
    return report


class _Skip(Exception):
    """A run upgrade_runs leaves as it was (the message says why)."""


def _upgrade(ws: Workspace, old: dict, model, meta: dict, retime: bool, latency_runs: int) -> dict:
    """Bring one older run up to date (module docstring); its entry of :attr:`UpgradeReport.upgraded`."""
    try:
        config = config_of(old)
    except (ValueError, KeyError) as exc:
        raise _Skip(str(exc)) from None
    new_key = run_key(ws, meta, config)
    done = {"from": old["cache_key"], "to": new_key, "label": config.label(), "retimed": False,
            "already_current": False}
    existing = ws.store.get_run(new_key) if new_key != old["cache_key"] else None
    if existing is not None and is_current(existing):  # computed again since: the older copy is redundant
        ws.store.prune([old["cache_key"]])
        return dict(done, already_current=True)
    new = {k: v for k, v in old.items() if k not in _TRANSIENT}
    # Today's form of the same settings: the config a new run of them stores, and its label.
    new.update(version=RUN_VERSION, config=config.canonical(), label=config.label())
    new["upgraded_from"] = {"cache_key": old["cache_key"], "version": old.get("version"),
                            "latency_ms": old.get("latency_ms"), "speedup": old.get("speedup"), "retimed": False}
    if old.get("latency_ms") is not None:
        if retime:
            start = time.perf_counter()
            new.update(_timing(ws, old, config, model, meta, latency_runs))
            new["upgraded_from"].update(retimed=True, seconds=time.perf_counter() - start)
        else:
            new["latency_ms"], new["speedup"] = None, None
    arrays = ws.store.get_arrays(old["cache_key"])
    if arrays is None:
        raise _Skip("its arrays could not be read from the store")
    ws.store.put_run(new_key, new, arrays)
    if new_key != old["cache_key"]:
        ws.store.prune([old["cache_key"]])
    return dict(done, retimed=new["upgraded_from"]["retimed"])


def _timing(ws: Workspace, run: dict, config: RunConfig, model, meta: dict, latency_runs: int) -> dict:
    """``latency_ms`` and ``speedup`` of a stored run by the current rule: its model rebuilt from the
    stored statistics (the layout before any fine-tuning), checked against the stored layout and
    MACs, timed against the original (:func:`hscc_core.runs.pipeline.speed_fields`)."""
    built = build_compressed(ws, config, model=model, meta=meta)
    if _layout(built.plan.summaries()) != canonical_json(run.get("layers")) \
            or int(built.plan.macs()) != run.get("analytical_layer_macs"):
        raise _Skip("the model rebuilt from its settings differs from the stored one")
    return speed_fields(model, built.model.eval(), ws.size, latency_runs)


@dataclass
class TimingReport:
    """What :func:`time_runs` did."""

    # {"key", "label", "speedup", "again"}; again: it had a timing, taken on a busy machine
    timed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"key", "label", "reason"}
    again_if_busy: bool = False  # what was asked: also the runs timed on a busy machine

    def summary(self) -> str:
        """One line for people."""
        if not self.timed and not self.skipped:
            return ("No run without a timing or timed on a busy machine." if self.again_if_busy
                    else "No run without a timing.")
        n, again = len(self.timed), sum(t["again"] for t in self.timed)
        runs = "run" if n == 1 else "runs"
        if again and again == n:
            text = (f"{n} {runs} timed again against the original ({'its' if n == 1 else 'their'} earlier "
                    "timing had been taken on a busy machine)")
        else:
            text = f"{n} {runs} timed against the original" + (
                f" ({again} of them again: their earlier timing had been taken on a busy machine)" if again else "")
        if self.skipped:
            k = len(self.skipped)
            text += (f"; {k} left as {'it was' if k == 1 else 'they were'}" if self.again_if_busy
                     else f"; {k} left without a timing")
        return text + "."


def time_runs(ws: Workspace, runs: list[dict], latency_runs: int = 20,
              progress: Callable[[int, int], None] | None = None, again_if_busy: bool = False) -> TimingReport:
    """Time the current runs among ``runs`` that have no timing (computed with ``--no-speed``, e.g.
    by a parallel sweep, whose workers would have disturbed each other's timings), and with
    ``again_if_busy`` also those timed on a busy machine
    (:func:`hscc_core.measure.machine.busy_timing`).

    Each run's model is rebuilt from the stored statistics and timed against the original, one run
    at a time, interleaved in this process, as a run's measure stage does; the run is then stored
    again under its key with ``latency_ms``, ``speedup`` and ``timed_later`` (``seconds``, that the
    timing was taken on the layout before any fine-tuning, and under ``replaced`` the ``latency_ms``
    and ``speedup`` of a timing it replaces). Nothing else of it changes.

    Parameters
    ----------
    ws : Workspace
    runs : list of dict
        Stored runs of ``ws`` (``hscc runs`` lists them); runs with a timing, and runs of an older
        pipeline version, are passed over.
    latency_runs : int
        Rounds per model and batch size (the measure stage's time budget applies).
    progress : callable(done, total), optional
    again_if_busy : bool
        Also time again the runs whose timing was taken while other processes used more than
        :data:`hscc_core.measure.machine.BUSY_SHARE` of the CPUs.

    Returns
    -------
    TimingReport
    """
    progress = progress or (lambda done, total: None)
    todo = [r for r in runs if r.get("method") != "original" and is_current(r)
            and (r.get("latency_ms") is None or (again_if_busy and busy_timing(r.get("latency_ms"))))]
    report = TimingReport(again_if_busy=again_if_busy)
    progress(0, len(todo))
    model = meta = None
    for i, run in enumerate(todo):
        if model is None:
            model, meta = ws.baseline(train_if_missing=False)
        label = run.get("label", "?")
        try:
            start = time.perf_counter()
            try:
                config = config_of(run)
            except (ValueError, KeyError) as exc:
                raise _Skip(str(exc)) from None
            timing = _timing(ws, run, config, model, meta, latency_runs)
            entry = ws.store.get_entry(run["cache_key"])
            if entry is None:
                raise _Skip("it could not be read from the store again")
            body = {k: v for k, v in entry[0].items() if k not in _TRANSIENT}
            later = {"seconds": time.perf_counter() - start, "finetuned": bool(config.finetune_epochs)}
            again = body.get("latency_ms") is not None
            if again:  # nothing lost: the busy timing stays beside the new one
                later["replaced"] = {"latency_ms": body["latency_ms"], "speedup": body.get("speedup")}
            body.update(timing, timed_later=later)
            ws.store.put_run(run["cache_key"], body, entry[1])
            report.timed.append({"key": run["cache_key"], "label": label, "speedup": timing["speedup"],
                                 "again": again})
        except _Skip as exc:
            report.skipped.append({"key": run["cache_key"], "label": label, "reason": str(exc)})
        progress(i + 1, len(todo))
    return report
