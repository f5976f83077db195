"""The Ray executor against a real local Ray instance: same stored runs as the local executor,
bounded retries of a failing task, resumption from the store, and clear errors for bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hscc_core.runs.executors import RAY_MISSING, RayExecutor, make_executor
from hscc_core.runs.config import RunConfig
from hscc_core.runs.sweeps import LocalExecutor, expand, run_sweep
from hscc_core.runs.workspace import Workspace

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module (starting one takes seconds); the executor reuses it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fresh_workspace(trained, cache: Path) -> Workspace:
    """The session's tiny baseline in an empty cache, so no run can come from another test."""
    checkpoint = trained.store.blob_path("checkpoints", trained.baseline_key(), "pt")
    return Workspace(data=trained.data, cache_dir=cache, arch=trained.arch, input_size=trained.input_size,
                     recipe=trained.recipe, checkpoint=checkpoint)


CONFIGS = expand(["hscc", "svd", "tucker"], grids=[1, 2], clusters=[2], energies=[0.8], calib_size=32)

SAME = ("accuracy", "accuracy_se", "macro_f1", "macro_f1_se", "flops", "layer_flops", "params",
        "energy", "confusion_matrix")


def _ranks(run: dict) -> dict:
    return {name: {k: v for k, v in s.items() if "rank" in k} for name, s in run["layers"].items()}


def test_ray_gives_the_same_stored_runs_and_a_rerun_computes_nothing(ray_cluster, trained_workspace, tmp_path):
    local_ws = fresh_workspace(trained_workspace, tmp_path / "local")
    ray_ws = fresh_workspace(trained_workspace, tmp_path / "ray")
    local = run_sweep(local_ws, CONFIGS, LocalExecutor(1), measure_speed=False)
    seen = []
    remote = run_sweep(ray_ws, CONFIGS, RayExecutor(), progress=lambda d, t: seen.append((d, t)),
                       measure_speed=False)
    assert local.computed == remote.computed == len(CONFIGS) == 4 and not remote.failed
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)  # progress (and so the ETA) per finished task
    by_key = {r["cache_key"]: r for r in local.runs}
    assert set(by_key) == {r["cache_key"] for r in remote.runs}  # same data, model, configs
    for run in remote.runs:
        stored = ray_ws.store.get_run(run["cache_key"])  # what the single writer put in the store
        for field in SAME:
            assert stored[field] == by_key[run["cache_key"]][field], (run["label"], field)
        assert _ranks(stored) == _ranks(by_key[run["cache_key"]]) and _ranks(stored)
        arrays, expected = ray_ws.store.get_arrays(run["cache_key"]), local_ws.store.get_arrays(run["cache_key"])
        assert set(arrays) == set(expected)
        assert all(np.array_equal(arrays[k], expected[k]) for k in arrays if k != "probabilities")
    again = run_sweep(ray_ws, CONFIGS, RayExecutor(), measure_speed=False)
    assert again.computed == 0 and again.cached == 4 and not again.failed


def _flaky(counter: Path, fail_energy: float):
    """A task function that fails every attempt on one configuration, counting attempts in a file
    (retries run in other processes). A closure, so Ray ships it by value to the workers."""
    from hscc_core.runs.sweeps import run_task

    def fn(task):
        if task.config["energy"] == fail_energy:
            with open(counter, "a") as fh:
                fh.write("x")
            raise RuntimeError("boom")
        return run_task(task)

    return fn


class FlakyRay(RayExecutor):
    def __init__(self, counter, fail_energy):
        super().__init__(max_retries=2)
        self.fn = _flaky(counter, fail_energy)

    def submit_all(self, fn, tasks):
        return super().submit_all(self.fn, tasks)


def test_failing_task_is_retried_then_reported_and_the_sweep_goes_on(ray_cluster, trained_workspace, tmp_path):
    ws = fresh_workspace(trained_workspace, tmp_path / "cache")
    counter = tmp_path / "attempts"
    cfgs = [RunConfig("svd", energy=0.5), RunConfig("svd", energy=0.7)]
    result = run_sweep(ws, cfgs, FlakyRay(counter, 0.5), measure_speed=False)
    assert counter.read_text() == "xxx"  # the first attempt and 2 retries
    assert result.computed == 1 and len(result.failed) == 1
    assert result.failed[0]["error"] == "RuntimeError: boom"  # the task's error, not Ray's wrapper
    assert result.failed[0]["config"]["energy"] == 0.5


def test_make_executor_and_bad_input(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(make_executor("local", 2), LocalExecutor)
    assert isinstance(make_executor("ray"), RayExecutor)  # no Ray started until there is work
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="only applies to --executor ray"):
        make_executor("local", address="127.0.0.1:6379")
    with pytest.raises(ValueError, match="invalid Ray address"):
        RayExecutor(address="nowhere")
    with pytest.raises(ValueError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        RayExecutor(address="127.0.0.1:1")  # fails in seconds, not ray.init's two minutes
    with pytest.raises(ValueError, match="max_retries"):
        RayExecutor(max_retries=-1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ValueError, match=r"hscc-explorer\[ray\]") as err:
        make_executor("ray")
    assert str(err.value) == RAY_MISSING


def test_cli_reports_a_bad_address_in_one_line(capsys):
    from hscc_core.cli.main import main

    assert main(["sweep", "--executor", "ray", "--address", "127.0.0.1:1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hscc: error: cannot reach the Ray cluster at 127.0.0.1:1")
