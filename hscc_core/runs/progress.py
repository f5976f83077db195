"""One forward-only progress fraction over a whole run, with an ETA from measured stage times.

:func:`hscc_core.runs.pipeline.compute_run` reports ``progress(stage, done, total)`` per stage
(calibrate, compress, finetune, evaluate, measure). Stages differ a lot in length (timing the two
models can be most of a run; cached calibration statistics make calibration vanish), and some report
nothing between their start and their end. :class:`RunProgress` turns those reports into one
fraction of the whole run that never goes back:

* each stage weighs what it took in earlier runs of the same kind in this workspace
  (:class:`StageTimes`, a small JSON file in the cache folder; defaults before the first run);
* inside a stage the fraction follows the stage's own ``done / total`` or, where that says nothing,
  the time spent against the time expected (held below the stage's end until it reports its end);
* the input cluster side's two calibration passes arrive as one count to ``2 M``: one stage;
* a stage that does not run (statistics already stored, no fine-tuning) is skipped over, forward.

The ETA is the expected time of what is left, corrected by how fast this run has gone so far.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_SECONDS", "STAGES", "STAGE_NAMES", "ProgressState", "RunProgress", "StageTimes",
           "eta_text", "profile_of"]

#: The pipeline's stages, in the order a run goes through them.
STAGES = ("calibrate", "compress", "finetune", "evaluate", "measure")
#: What a person reads for each stage.
STAGE_NAMES = {"calibrate": "calibrating on training images", "compress": "compressing the layers",
               "finetune": "fine-tuning", "evaluate": "evaluating on the test images",
               "measure": "measuring FLOPs, layer errors and speed", "queued": "waiting in the queue",
               "preparing": "preparing the compression", "done": "done"}
#: Guessed seconds per stage before a workspace has measured any (phantom AlexNet, 2 CPU cores);
#: "measure+speed" is the measure stage when both models are also timed.
DEFAULT_SECONDS = {"calibrate": 20.0, "compress": 10.0, "finetune": 60.0, "evaluate": 5.0, "measure": 5.0,
                   "measure+speed": 15.0}
# Without sub-progress, time alone moves a stage's bar at most this far before the stage reports its end.
_TIME_CAP = 0.95
_KEEP = 0.5  # weight of the newest measurement in the running average


def profile_of(config) -> str:
    """The kind of run whose stage times predict ``config``'s: method, cluster side, fine-tuning epochs.

    Accepts a :class:`hscc_core.runs.config.RunConfig` or its canonical dict.
    """
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    side = get("cluster_side", "output") or "output"
    return f"{get('method', 'hscc')}/{side}/ft{int(get('finetune_epochs', 0) or 0)}"


def _name(stage: str, measure_speed: bool) -> str:
    return "measure+speed" if stage == "measure" and measure_speed else stage


class StageTimes:
    """Measured seconds per stage for each kind of run, kept in ``<cache>/stage_times.json``.

    Parameters
    ----------
    path : path
        The JSON file (created on first :meth:`record`, written atomically; an unreadable file
        counts as empty: it only steers an ETA).
    """

    _lock = threading.Lock()

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_cache(cls, cache_dir: str | os.PathLike) -> "StageTimes":
        return cls(Path(cache_dir) / "stage_times.json")

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def expected(self, workspace: str, profile: str, measure_speed: bool = True) -> dict[str, float]:
        """Seconds expected per stage of a run of ``profile`` in ``workspace`` (defaults where unmeasured;
        0 for fine-tuning when the profile has none)."""
        seen = self._read().get(f"{workspace}|{profile}", {})
        out = {}
        for stage in STAGES:
            name = _name(stage, measure_speed)
            value = seen.get(name)
            out[stage] = float(value) if isinstance(value, (int, float)) and value >= 0 else DEFAULT_SECONDS[name]
        if profile.endswith("/ft0"):
            out["finetune"] = 0.0
        return out

    def record(self, workspace: str, profile: str, seconds: Mapping[str, float], measure_speed: bool = True) -> None:
        """Blend a finished run's stage times into the stored averages."""
        with self._lock:
            data = self._read()
            entry = data.setdefault(f"{workspace}|{profile}", {})
            for stage, value in seconds.items():
                name = _name(stage, measure_speed)
                old = entry.get(name)
                entry[name] = value if not isinstance(old, (int, float)) else _KEEP * value + (1 - _KEEP) * old
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stage_times-")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError:
                pass  # a read-only cache still computes runs; only the next ETA is less informed


@dataclass(frozen=True)
class ProgressState:
    """Where a run is: ``fraction`` of the whole in [0, 1], the current ``stage``, seconds so far and the ETA."""

    fraction: float
    stage: str
    elapsed: float
    eta: float | None

    def text(self) -> str:
        """``"compressing the layers · 42 % · about 30 s left"``."""
        bits = [STAGE_NAMES.get(self.stage, self.stage), f"{math.floor(100 * self.fraction)} %"]
        if self.eta is not None and self.stage not in ("done", "queued"):
            bits.append(eta_text(self.eta))
        return " · ".join(bits)


def eta_text(seconds: float) -> str:
    """``"about 40 s left"``, ``"about 3 min left"``, ``"a few seconds left"``."""
    if seconds < 5:
        return "a few seconds left"
    if seconds < 90:
        return f"about {5 * math.ceil(seconds / 5):.0f} s left"
    return f"about {math.ceil(seconds / 60):.0f} min left"


class RunProgress:
    """A ``progress(stage, done, total)`` callback that keeps one forward-only fraction and an ETA.

    Parameters
    ----------
    expected : dict stage -> seconds
        What each stage is expected to take (:meth:`StageTimes.expected`); 0: the stage does not run.
    clock : callable, optional
        Seconds (``time.monotonic``); tests pass a fake clock.

    A stage starts when the one before it reports its end (``done == total``); reports of ``done == 0``
    for a later stage are announcements and move nothing (the pipeline announces "compress" before
    calibration, which belongs to it). Thread-safe: the pipeline reports from a worker thread while
    pages read :meth:`state`.
    """

    def __init__(self, expected: Mapping[str, float], clock: Callable[[], float] = time.monotonic):
        self.expected = {s: max(float(expected.get(s, DEFAULT_SECONDS[s])), 0.0) for s in STAGES}
        self.clock = clock
        self.start = clock()
        self._lock = threading.Lock()
        self._index = 0  # the current stage's position in STAGES
        self._stage_start = self.start
        self._within = 0.0  # the current stage's own done / total
        self._counted = False  # whether it reported a count strictly between its ends
        self._any = False  # whether it reported at all
        self._ended: float | None = None  # when it reported done == total
        self._best = 0.0
        self.seconds: dict[str, float] = {}  # measured time of each finished stage

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in STAGES:
            return
        with self._lock:
            now = self.clock()
            index = STAGES.index(stage)
            frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
            if index < self._index or (index > self._index and frac <= 0.0):
                return  # a late report of a finished stage, or an announcement
            if index > self._index:
                self._close(index, now)
            self._any = True
            self._counted = self._counted or 0.0 < frac < 1.0
            self._within = max(self._within, frac)
            if frac >= 1.0:
                self._ended = now

    def _close(self, index: int, now: float) -> None:
        # The current stage is over (a later one reported): it ran from its start to its end report.
        end = self._ended if self._ended is not None else now
        self.seconds[STAGES[self._index]] = end - self._stage_start if self._any else 0.0
        for skipped in STAGES[self._index + 1:index]:
            self.seconds[skipped] = 0.0
        if self._any:
            self._stage_start = end
        self._index, self._within, self._counted, self._any, self._ended = index, 0.0, False, False, None

    def finish(self) -> dict[str, float]:
        """Mark the run done; returns the measured seconds of every stage (0 for those that did not run)."""
        with self._lock:
            now = self.clock()
            if self._index < len(STAGES) - 1:
                self._close(len(STAGES) - 1, now)
            end = self._ended if self._ended is not None else now
            self.seconds[STAGES[-1]] = end - self._stage_start if self._any else 0.0
            self._index, self._best = len(STAGES), 1.0
            return dict(self.seconds)

    def state(self) -> ProgressState:
        """The run's current fraction (never lower than an earlier one), stage and ETA."""
        with self._lock:
            now = self.clock()
            elapsed = now - self.start
            if self._index >= len(STAGES):
                return ProgressState(1.0, "done", elapsed, 0.0)
            index, start, within, counted = self._index, self._stage_start, self._within, self._counted
            if within >= 1.0:  # the stage ended: the next one that runs has begun
                later = [i for i in range(index + 1, len(STAGES)) if self.expected[STAGES[i]] > 0]
                if later:
                    index, start, within, counted = later[0], self._ended, 0.0, False
            stage = STAGES[index]
            budget = self.expected[stage]
            label = "preparing" if index == 0 and not self._any else stage  # calibration may not run
            if not counted and within < 1.0:  # nothing but its ends: time tells
                within = max(within, min((now - start) / budget, _TIME_CAP) if budget > 0 else _TIME_CAP)
            total = sum(self.expected.values()) or 1.0
            done = sum(self.expected[s] for s in STAGES[:index]) + within * budget
            self._best = max(self._best, min(done / total, 0.999))
            # This run's pace against the expectation so far, once there is enough of it to judge
            # (clamped: one odd stage is noise).
            pace = min(max(elapsed / done, 0.5), 3.0) if done >= 0.15 * total else 1.0
            return ProgressState(self._best, label, elapsed, max(total - done, 0.0) * pace)
