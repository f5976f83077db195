"""Tests of hscc_core.runs.jobs: runs queued and computed one at a time in a background thread."""

from __future__ import annotations

import threading

from hscc_core.runs import jobs
from hscc_core.runs.config import RunConfig
from hscc_core.runs.progress import StageTimes, profile_of
from hscc_core.runs.workspace import Workspace

CFG = RunConfig(grid=1, clusters=1, energy=0.9)


class FakeCompute:
    """Stands in for compress_run: reports stages, can be held at "compress", can fail, counts calls."""

    def __init__(self, fail: bool = False, cached: bool = False):
        self.fail, self.cached = fail, cached
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.seen: list = []

    def __call__(self, ws, config, progress, measure_speed):
        self.seen.append((config, measure_speed, threading.current_thread().name))
        progress("compress", 0, 1)
        self.started.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("decomposition exploded")
        for stage in ("compress", "evaluate", "measure"):
            progress(stage, 1, 1)
        return {"cache_key": f"run-{len(self.seen)}", "config": config.canonical()}, self.cached


def test_a_job_runs_in_the_background_and_keeps_its_result(tmp_path):
    compute = FakeCompute()
    compute.release.clear()
    queue = jobs.JobQueue(Workspace(cache_dir=tmp_path), compute=compute)
    job = queue.submit("k1", CFG, measure_speed=False)
    assert compute.started.wait(10) and job.state == "running" and job.active
    assert queue.submit("k1", CFG) is job  # a second request joins the running job
    assert 0 < job.status().fraction < 1 and job.status().stage != "queued"
    compute.release.set()
    assert queue.wait(10)
    assert job.state == "done" and job.run["cache_key"] == "run-1" and not job.cached
    assert job.status().fraction == 1.0 and job.finished >= job.started
    assert compute.seen == [(CFG, False, "hscc-runs")]  # once, in the worker thread
    assert queue.job("k1") is job and queue.active() == []
    # Its stage times sized the next run's bar (measured without timing the models).
    learnt = StageTimes.for_cache(tmp_path).expected(queue.workspace_label, profile_of(CFG), measure_speed=False)
    assert learnt["compress"] < 5 and learnt["calibrate"] == 0.0


def test_runs_wait_their_turn_and_a_queued_one_can_be_cancelled(tmp_path):
    compute = FakeCompute()
    compute.release.clear()
    queue = jobs.JobQueue(Workspace(cache_dir=tmp_path), compute=compute)
    first = queue.submit("k1", CFG)
    assert compute.started.wait(10)
    second = queue.submit("k2", RunConfig(grid=2, clusters=1, energy=0.9))
    third = queue.submit("k3", RunConfig(grid=3, clusters=1, energy=0.9))
    assert second.state == third.state == "queued" and second.status().stage == "queued"
    assert queue.cancel(third.id) and not queue.cancel(first.id)  # a running job finishes
    assert [j.key for j in queue.active()] == ["k1", "k2"]
    compute.release.set()
    assert queue.wait(10)
    assert first.state == second.state == "done" and second.started >= first.finished
    assert [c.grid for c, _, _ in compute.seen] == [1, 2]
    queue.forget(first.id)
    assert [j.key for j in queue.jobs()] == ["k2"]


def test_a_failure_is_kept_with_its_traceback_and_the_worker_goes_on(tmp_path):
    compute = FakeCompute(fail=True)
    queue = jobs.JobQueue(Workspace(cache_dir=tmp_path), compute=compute)
    job = queue.submit("k1", CFG)
    assert queue.wait(10)
    assert job.state == "failed" and job.error == "RuntimeError: decomposition exploded"
    assert "Traceback" in job.details and job.run is None
    assert not (tmp_path / "stage_times.json").exists()  # a failed run teaches nothing
    compute.fail = False
    again = queue.submit("k1", CFG)  # "Try again": a new job, the failed one stays listed
    assert again is not job and queue.wait(10) and again.state == "done"


def test_one_queue_per_workspace(tmp_path):
    a = Workspace(cache_dir=tmp_path / "a")
    assert jobs.queue_for(a) is jobs.queue_for(Workspace(cache_dir=tmp_path / "a"))
    assert jobs.queue_for(a) is not jobs.queue_for(Workspace(cache_dir=tmp_path / "b"))
    assert jobs.wait_all(5)
