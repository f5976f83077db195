"""Concurrent sweeps on one cache split the work: a run is claimed in the store before it is
computed, another sweep skips it and picks up the stored run, and a claim dies with its holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import original_run, run_key
from hscc_core.runs.store import RunStore
from hscc_core.runs.sweeps import run_sweep
from hscc_core.runs.workspace import Workspace
from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

HOLD = """
import sys, time
from hscc_core.runs.store import RunStore
claim = RunStore(sys.argv[1]).try_claim(sys.argv[2])
print("held" if claim else "busy", flush=True)
time.sleep(600)
"""


def _holder(cache: Path, key: str) -> subprocess.Popen:
    """A child process that claims ``key`` and sleeps (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cache), key], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def fresh(trained: Workspace, cache: Path) -> Workspace:
    """The session's tiny baseline over an empty cache."""
    ckpt = trained.store.blob_path("checkpoints", trained.baseline_key(), "pt")
    return Workspace(data=trained.data, cache_dir=cache, arch="tiny", input_size=32, checkpoint=ckpt)


def test_a_claim_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    store, key = RunStore(tmp_path), "ab" * 12
    holder = _holder(tmp_path, key)
    try:
        assert store.try_claim(key) is None
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    claim = store.try_claim(key)
    assert claim is not None
    claim.release()


def test_a_sweep_computes_what_a_killed_sweep_had_claimed(trained_workspace, tmp_path):
    ws = fresh(trained_workspace, tmp_path / "c")
    configs = [RunConfig("svd", energy=0.61), RunConfig("svd", energy=0.62)]
    holder = _holder(tmp_path / "c", run_key(ws, None, configs[0]))
    killer = threading.Timer(1.0, holder.kill)
    killer.start()
    try:
        result = run_sweep(ws, configs, measure_speed=False)
    finally:
        killer.join()
        holder.wait()
    assert result.computed == 2 and not result.failed and len(result.runs) == 2


def test_a_configuration_given_twice_is_computed_once(trained_workspace, tmp_path):
    ws = fresh(trained_workspace, tmp_path / "c")
    cfg = RunConfig("svd", energy=0.63)
    result = run_sweep(ws, [cfg, cfg], measure_speed=False)
    assert (result.computed, result.cached, len(result.runs)) == (1, 1, 2)
    assert result.runs[0]["cache_key"] == result.runs[1]["cache_key"]


SWEEP = """
import sys, time
from pathlib import Path
import hscc_core.runs.sweeps as sweeps

real = sweeps.compute_run


def slow(*args, **kwargs):  # every run takes at least 1 s, so the two sweeps surely overlap
    time.sleep(1.0)
    return real(*args, **kwargs)


sweeps.compute_run = slow
me, other = Path(sys.argv[1]), Path(sys.argv[2])
me.touch()
while not other.exists():  # start together
    time.sleep(0.02)
from hscc_core.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def test_two_concurrent_sweeps_compute_each_run_once(trained_workspace, tmp_path):
    ws = fresh(trained_workspace, tmp_path / "c")
    original_run(ws)  # what `hscc prepare` / `evaluate` leave behind
    energies = ["0.5", "0.6", "0.7", "0.8", "0.9", "0.95"]
    argv = ["sweep", "--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--checkpoint", str(ws.checkpoint),
            "--arch", "tiny", "--input-size", "32", "--quiet", "--json", "--no-speed", "--methods", "svd",
            "--energy", " ".join(energies)]
    ready = [tmp_path / "a.ready", tmp_path / "b.ready"]
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP, str(ready[i]), str(ready[1 - i]), *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=ENV) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    results = []
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["computed"] for r in results) == len(energies)  # each configuration computed once
    assert all(r["computed"] >= 1 for r in results)  # and the work was split, not queued
    for r in results:
        assert r["computed"] + r["cached"] == len(energies) and not r["failed"]
        assert sorted(x["config"]["energy"] for x in r["runs"]) == sorted(float(e) for e in energies)
    assert {x["cache_key"] for x in results[0]["runs"]} == {x["cache_key"] for x in results[1]["runs"]}
