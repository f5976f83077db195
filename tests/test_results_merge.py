"""benchmarks/results_from_device.py: runs of several device sessions merge only when they are runs
of the same model."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_from_device.py"


def load_script():
    spec = importlib.util.spec_from_file_location("results_from_device", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(label, accuracy, kl):
    return {"label": label, "method": "hscc", "accuracy": accuracy, "kl_to_original": kl}


def test_sources_merge_when_shared_runs_agree_and_refuse_otherwise(tmp_path):
    m = load_script()
    a = [run("hscc G4 K4 3x", 0.67, 0.18), run("svd 3x", 0.39, 1.0)]
    b = [run("hscc G4 K4 3x", 0.67, 0.18), run("tucker 6x", 0.34, 1.1)]
    merged = m.merge_sources([a, b])
    assert sorted(r["label"] for r in merged) == ["hscc G4 K4 3x", "svd 3x", "tucker 6x"]
    with pytest.raises(SystemExit, match="not the same baseline"):
        m.merge_sources([a, [run("svd 3x", 0.39, 0.99)]])


def test_runs_load_from_a_listing_or_a_run_store_folder(tmp_path):
    m = load_script()
    listing = tmp_path / "runs.json"
    listing.write_text(json.dumps({"runs": [run("svd 3x", 0.4, 1.0), {"method": "original"}]}))
    folder = tmp_path / "runs"
    (folder / "k1").mkdir(parents=True)
    (folder / "k1" / "run.json").write_text(json.dumps(run("svd 6x", 0.3, 1.2)))
    (folder / "k2").mkdir()
    (folder / "k2" / "run.json").write_text(json.dumps({"method": "original", "accuracy": 0.7}))
    assert [r["label"] for r in m.load_runs(listing)] == ["svd 3x"]  # the original is not a run
    assert [r["label"] for r in m.load_runs(folder)] == ["svd 6x"]
