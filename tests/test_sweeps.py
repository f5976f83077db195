"""Sweeps: expansion, cache skipping, resumption after an interruption, pluggable executors."""

import subprocess
import sys
from pathlib import Path

import pytest

from hscc_core.runs.config import DEFAULTS, RunConfig
from hscc_core.runs.sweeps import LocalExecutor, expand, run_sweep


def test_expand_product_and_baselines_once():
    cfgs = expand(["hscc", "svd"], grids=[1, 2], clusters=[1, 4], energies=[0.9, 0.95], budgets=[3])
    hscc = [c for c in cfgs if c.method == "hscc"]
    svd = [c for c in cfgs if c.method == "svd"]
    assert len(hscc) == 2 * 2 * 3 and len(svd) == 3  # baselines ignore grid and clusters
    assert [c.grid for c in hscc] == sorted(c.grid for c in hscc)  # grouped by grid
    plus = expand(["hscc", "svd"], grids=[2], clusters=[2], energies=[0.9], budgets=[3],
                  cluster_sides=["output", "input"], allocations=["uniform", "greedy"])
    # Greedy pairs with budgets only; baselines are not multiplied by HSCC-only switches, but take the
    # allocations (like for like in budget mode).
    assert len([c for c in plus if c.method == "hscc"]) == 2 * 2 + 2 and len([c for c in plus if c.method == "svd"]) == 3
    seq = expand(["hscc", "tucker"], grids=[2], clusters=[2], energies=[], budgets=[3], calibration="sequential",
                 rank_multiple=8, calib_flip=True, calib_size="all")
    assert [(c.method, c.calibration, c.rank_multiple) for c in seq] == [("hscc", "sequential", 8),
                                                                         ("tucker", "independent", 1)]
    assert all(c.calib_flip and c.calib_size == "all" for c in seq)
    # Several rank multiples: an HSCC run for each (repeats once), the baselines once.
    several = expand(["hscc", "svd"], grids=[2], clusters=[2], energies=[], budgets=[3], rank_multiple=[1, 8, 8, 16])
    assert [(c.method, c.rank_multiple) for c in several] == [("hscc", 1), ("hscc", 8), ("hscc", 16), ("svd", 1)]
    with pytest.raises(ValueError, match="rank multiple"):
        expand(["hscc"], grids=[2], clusters=[2], energies=[0.9], rank_multiple=[])
    with pytest.raises(ValueError, match="rank_multiple"):
        expand(["hscc"], grids=[2], clusters=[2], energies=[0.9], rank_multiple=[8, 0])
    with pytest.raises(ValueError, match="grid"):
        expand(["hscc"], grids=[0], clusters=[1], energies=[0.9])
    with pytest.raises(ValueError, match="at least one energy or budget"):
        expand(["svd"], energies=[], budgets=[])


def test_expand_defaults_to_uniform_energies_and_greedy_budgets():
    cfgs = expand(["hscc", "svd"], grids=[2], clusters=[2], energies=[0.9], budgets=[3])
    by = {(c.method, c.energy is None): c.allocation for c in cfgs}
    assert by == {("hscc", False): "uniform", ("hscc", True): DEFAULTS["allocation"],
                  ("svd", False): "uniform", ("svd", True): "uniform"}
    uniform_only = expand(["hscc"], grids=[2], clusters=[2], energies=[], budgets=[3], allocations=["uniform"])
    assert [c.allocation for c in uniform_only] == ["uniform"]


class InterruptAfter(LocalExecutor):
    """Runs tasks in process and simulates Ctrl-C after ``n`` of them."""

    def __init__(self, n):
        super().__init__(1)
        self.n = n

    def submit_all(self, fn, tasks):
        for i, item in enumerate(super().submit_all(fn, tasks)):
            if i == self.n:
                raise KeyboardInterrupt
            yield item


def test_interrupted_sweep_resumes_without_recomputing(trained_workspace):
    ws = trained_workspace
    cfgs = expand(["svd", "tucker"], energies=[0.6, 0.75, 0.85])
    first = run_sweep(ws, cfgs, InterruptAfter(2), measure_speed=False)
    assert first.interrupted and first.computed == 2
    second = run_sweep(ws, cfgs, measure_speed=False)
    # Runs finished before the interruption (including one that completed as it arrived) are kept.
    assert not second.interrupted and second.cached >= 2 and second.computed + second.cached == 6
    assert second.computed <= 4
    third = run_sweep(ws, cfgs, measure_speed=False)
    assert third.cached == 6 and third.computed == 0 and len(third.runs) == 6


def test_failed_task_is_reported_and_sweep_goes_on(trained_workspace, monkeypatch):
    import hscc_core.runs.sweeps as sweeps

    real = sweeps.compute_run

    def flaky(ws, config, **kw):
        if config.energy == 0.55:
            raise RuntimeError("boom")
        return real(ws, config, **kw)

    monkeypatch.setattr(sweeps, "compute_run", flaky)
    result = run_sweep(trained_workspace, expand(["svd"], energies=[0.55, 0.65]), measure_speed=False)
    assert result.computed == 1 and len(result.failed) == 1 and "boom" in result.failed[0]["error"]


def test_process_pool_gives_same_runs(trained_workspace):
    cfgs = [RunConfig("svd", energy=0.66), RunConfig("tucker", energy=0.66)]
    pooled = run_sweep(trained_workspace, cfgs, LocalExecutor(2), measure_speed=False)
    assert pooled.computed == 2 and not pooled.failed
    again = run_sweep(trained_workspace, cfgs, measure_speed=False)
    assert again.cached == 2
    by_key = {r["cache_key"]: r["accuracy"] for r in pooled.runs}
    assert all(by_key[r["cache_key"]] == r["accuracy"] for r in again.runs)


def test_sweep_workers_limit_torch_and_blas_threads():
    # A worker must not start one BLAS/OpenMP thread per core next to its siblings (oversubscribed
    # Tucker-2 and SVD runs were several times slower); checked in a fresh process.
    code = ("import os, torch; from threadpoolctl import threadpool_info; from hscc_core.runs.sweeps import _init_worker; "
            "_init_worker(os.cpu_count()); "
            "print(torch.get_num_threads(), max(i['num_threads'] for i in threadpool_info()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["1", "1"]
