"""Runs computed in the background: one small queue per workspace, one worker thread that drains it.

The app submits a configuration and goes on (other pages, other runs); the worker computes it with
:func:`hscc_core.runs.pipeline.compress_run`, so a run computed in the background is stored exactly
like any other (only once it is complete: a failure leaves the store as it was). Pages poll
:meth:`JobQueue.jobs` for each job's state, its forward-only progress and ETA
(:class:`hscc_core.runs.progress.RunProgress`), its error, and when it is done, its run.

Design, and why:

* **A thread, not a process.** The worker shares the server process's memory, so nothing is pickled
  and the per-process decomposition cache of the pipeline is reused; PyTorch and NumPy release the
  GIL in their kernels, so pages stay responsive while a run computes. The worker has its *own*
  :class:`~hscc_core.runs.workspace.Workspace` (rebuilt from the app's ``spec()``), so its baseline
  model is a separate copy: calibration and Grad-CAM put hooks on a model, and a page's Grad-CAM
  must never see the worker's forward passes (nor calibration a page's).
* **One worker per workspace, runs one at a time.** Two runs would fight for the same cores and
  both finish later; queued runs start in submission order. The thread exits when the queue is
  empty and a new submission starts another.
* **Shared by every session of the server.** The store is shared anyway; a second request for a
  configuration that is queued or running joins that job instead of computing it twice.
* **Stage times are learnt.** When a run finishes, its stage times are blended into
  ``<cache>/stage_times.json`` (:class:`~hscc_core.runs.progress.StageTimes`), which sizes the next
  run's progress bar and ETA.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from hscc_core.runs import pipeline
from hscc_core.runs.config import RunConfig
from hscc_core.runs.progress import ProgressState, RunProgress, StageTimes, profile_of
from hscc_core.runs.workspace import Workspace

__all__ = ["ACTIVE", "Job", "JobQueue", "queue_for", "wait_all"]

ACTIVE = ("queued", "running")
_HISTORY = 20  # finished jobs kept for the pages to show
_LOG = logging.getLogger("hscc_explorer.jobs")
_ids = itertools.count(1)


@dataclass
class Job:
    """One submitted run.

    Attributes
    ----------
    key : str
        The run's cache key (where the store will hold it).
    config : RunConfig
    measure_speed : bool
    state : {"queued", "running", "done", "failed"}
    run : dict or None
        The stored run once done.
    error, details : str or None
        One line and the traceback, when it failed.
    """

    key: str
    config: RunConfig
    measure_speed: bool
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "queued"
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: RunProgress | None = field(default=None, repr=False)
    run: dict | None = field(default=None, repr=False)
    cached: bool = False
    error: str | None = None
    details: str | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def status(self) -> ProgressState:
        """Fraction, stage and ETA now (``queued`` before the worker takes it, ``done`` after)."""
        if self.state == "queued" or self.progress is None:
            return ProgressState(0.0, "queued", 0.0, None)
        if self.state != "running":
            return ProgressState(1.0 if self.state == "done" else self.progress.state().fraction, self.state,
                                 (self.finished or time.time()) - (self.started or self.submitted), 0.0)
        return self.progress.state()


class JobQueue:
    """The background runs of one workspace.

    Parameters
    ----------
    ws : Workspace
        Whose runs are computed (the worker rebuilds its own copy from ``ws.spec()``).
    compute : callable, optional
        ``compute(ws, config, progress, measure_speed) -> (run, cached)``; default
        :func:`hscc_core.runs.pipeline.compress_run` (looked up when a job starts).
    """

    def __init__(self, ws: Workspace, compute: Callable | None = None):
        self.spec = ws.spec()
        self.workspace_label = f"{ws.data or 'phantom'}|{ws.arch}|{ws.size}|{ws.split}|{ws.dedupe}"
        self.times = StageTimes.for_cache(ws.cache_dir)
        self._compute = compute
        self._jobs: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ws: Workspace | None = None

    # ---- what pages call ---------------------------------------------------------------------
    def submit(self, key: str, config: RunConfig, measure_speed: bool = True) -> Job:
        """Queue ``config`` (whose cache key is ``key``); joins a queued or running job of the same key."""
        with self._cond:
            for job in self._jobs:
                if job.key == key and job.active:
                    return job
            job = Job(key=key, config=config, measure_speed=bool(measure_speed))
            self._jobs.append(job)
            finished = [j for j in self._jobs if not j.active]
            for old in finished[:max(len(finished) - _HISTORY, 0)]:
                self._jobs.remove(old)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="hscc-runs", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return job

    def jobs(self) -> list[Job]:
        """Every job still remembered, newest first."""
        with self._cond:
            return list(reversed(self._jobs))

    def job(self, key: str) -> Job | None:
        """The newest job of a cache key."""
        return next((j for j in self.jobs() if j.key == key), None)

    def active(self) -> list[Job]:
        """Queued and running jobs, in the order they will finish."""
        with self._cond:
            return [j for j in self._jobs if j.active]

    def cancel(self, job_id: int) -> bool:
        """Drop a job that has not started (a running one finishes: its work would be lost)."""
        with self._cond:
            for job in self._jobs:
                if job.id == job_id and job.state == "queued":
                    self._jobs.remove(job)
                    return True
        return False

    def forget(self, job_id: int) -> None:
        """Remove a finished job from the list."""
        with self._cond:
            self._jobs = [j for j in self._jobs if j.id != job_id or j.active]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests, scripts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while any(j.active for j in self._jobs):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ---- the worker --------------------------------------------------------------------------
    def _next(self) -> Job | None:
        with self._cond:
            job = next((j for j in self._jobs if j.state == "queued"), None)
            if job is None:
                self._thread = None  # the next submission starts a new worker
                return None
            expected = self.times.expected(self.workspace_label, profile_of(job.config), job.measure_speed)
            job.progress, job.state, job.started = RunProgress(expected), "running", time.time()
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if self._ws is None:
                    self._ws = Workspace.from_spec(self.spec)
                compute = self._compute or pipeline.compress_run
                run, cached = compute(self._ws, job.config, progress=job.progress, measure_speed=job.measure_speed)
                seconds = job.progress.finish()
                if not cached:
                    self.times.record(self.workspace_label, profile_of(job.config), seconds, job.measure_speed)
                result = {"state": "done", "run": run, "cached": bool(cached)}
            except Exception as exc:  # noqa: BLE001 - any failure is the job's, shown on the page; the worker goes on
                _LOG.exception("background run %s failed", job.key)
                result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "details": traceback.format_exc()}
            with self._cond:
                for name, value in result.items():
                    setattr(job, name, value)
                job.finished = time.time()
                self._cond.notify_all()


_QUEUES: dict[str, JobQueue] = {}
_QUEUES_LOCK = threading.Lock()


def queue_for(ws: Workspace) -> JobQueue:
    """The process's queue of ``ws`` (one per workspace settings, shared by every session)."""
    token = json.dumps(ws.spec(), sort_keys=True)
    with _QUEUES_LOCK:
        if token not in _QUEUES:
            _QUEUES[token] = JobQueue(ws)
        return _QUEUES[token]


def wait_all(timeout: float | None = None) -> bool:
    """Wait for every queue of this process to be idle (tests); False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for queue in list(_QUEUES.values()):
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not queue.wait(left):
            return False
    return True
