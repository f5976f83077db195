"""Hostile and unlucky caches at the command line: each bad case is one ``hscc: error:`` line and exit
2, read-only caches keep serving every command that only reads, corruption is reported as
``hscc: warning:`` lines, and a checksum-valid ``.npz`` without its arrays is set aside and rebuilt."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_imagefolder
from conftest import FAULT_TINY as TINY, assert_one_error_line, hscc, set_read_only

pytestmark = pytest.mark.slow  # each case runs the CLI in a child process (about 5 s apiece)

RUN = ["--grid", "2", "--clusters", "2", "--calib-size", "16", "--no-speed"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny dataset and a cache holding its baseline and two runs (built once, copied per test)."""
    root = tmp_path_factory.mktemp("faults")
    data = make_imagefolder(root / "mri", n_train=8, n_test=3)
    cache = root / "cache"
    args = ["--data", str(data), "--cache-dir", str(cache), *TINY]
    for argv in (["prepare", *args], ["compress", *args, *RUN], ["compress", *args, *RUN, "--energy", "0.8"]):
        proc = hscc(*argv)
        assert proc.returncode == 0, proc.stderr
    return data, cache


@pytest.fixture
def cache_copy(prepared, tmp_path):
    data, cache = prepared
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    yield data, copy
    set_read_only(tmp_path, False)  # so pytest can clean up


def _args(data: Path, cache: Path) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(cache), *TINY]


def _run_keys(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "runs").iterdir())


def _compressed_key(cache: Path, energy: float = 0.95) -> str:
    """The stored compression run at ``energy`` (0.95: the one ``compress *RUN`` asks for)."""
    from hscc_core.runs.store import RunStore

    return next(r["cache_key"] for r in RunStore(cache).list_runs() if r["config"].get("energy") == energy)


def test_cache_dir_that_is_a_file(prepared, tmp_path):
    data, _ = prepared
    (tmp_path / "afile").write_text("not a cache")
    for command in (["runs"], ["prepare"], ["compress", *RUN]):
        proc = hscc(command[0], *_args(data, tmp_path / "afile"), *command[1:])
        assert_one_error_line(proc, "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "not a cache"


def test_read_only_cache_serves_reads_and_refuses_new_runs(cache_copy):
    data, cache = cache_copy
    before = _run_keys(cache)
    set_read_only(cache)
    listed = hscc("runs", *_args(data, cache), "--json", read_only=True)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["runs"]) == 2, listed.stderr
    # All served from the cache; the audit computes its image signatures without storing them.
    for argv in (["evaluate"], ["pareto"], ["compress", *RUN], ["audit"]):
        proc = hscc(*argv[:1], *_args(data, cache), *argv[1:], read_only=True)
        assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    new = hscc("compress", *_args(data, cache), *RUN, "--energy", "0.5", read_only=True)
    assert_one_error_line(new, "not writable", str(cache))
    assert _run_keys(cache) == before


def test_read_only_cache_with_a_corrupt_entry_still_lists_the_others(cache_copy):
    data, cache = cache_copy
    victim = _compressed_key(cache)
    run_json = cache / "runs" / victim / "run.json"
    run_json.write_bytes(run_json.read_bytes()[:-40])  # truncated
    damaged = run_json.read_bytes()
    set_read_only(cache)
    proc = hscc("runs", *_args(data, cache), "--json", read_only=True)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["runs"]) == 1
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("hscc: warning: cache entry run " + victim)
    assert "left in place" in warnings[0] and "Warning" not in warnings[0] and ".py" not in proc.stderr
    assert run_json.read_bytes() == damaged  # nothing moved, nothing deleted


def test_corruption_warning_is_one_hscc_line_and_the_entry_is_quarantined(cache_copy):
    data, cache = cache_copy
    victim = _compressed_key(cache)
    arrays = next((cache / "runs" / victim).glob("arrays-*.npz"))
    data_bytes = bytearray(arrays.read_bytes())
    data_bytes[100] ^= 0xFF
    arrays.write_bytes(bytes(data_bytes))
    proc = hscc("compress", *_args(data, cache), *RUN, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hscc: warning:")]
    assert len(lines) == 1 and "StoreWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
    moved = Path(lines[0].split("moved to ")[1].split(",")[0])
    assert (moved / victim / arrays.name).read_bytes() == bytes(data_bytes)


def test_empty_read_only_cache_and_missing_parent(prepared, tmp_path):
    data, _ = prepared
    locked = tmp_path / "locked"
    locked.mkdir()
    set_read_only(locked)
    try:
        for cache in (locked, locked / "sub" / "cache"):
            for command in ("prepare", "runs", "evaluate"):
                proc = hscc(command, *_args(data, cache), read_only=True)
                if command == "runs":  # nothing to read: the usual one-line answer
                    assert_one_error_line(proc, "no baseline yet")
                else:
                    assert_one_error_line(proc, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        set_read_only(locked, False)


def _forge_blob(path: Path, arrays: dict) -> None:
    """Replace a blob by an .npz of ``arrays`` with a matching sidecar checksum."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


@pytest.mark.parametrize("kind", ["images", "stats"])
def test_checksum_valid_npz_without_its_arrays_is_rebuilt(cache_copy, kind):
    data, cache = cache_copy
    (blob,) = (cache / "blobs" / kind).glob("*.npz")
    _forge_blob(blob, {"x": np.zeros(3)})
    proc = hscc("compress", *_args(data, cache), *RUN, "--energy", "0.7", "--json")
    assert proc.returncode == 0, proc.stderr
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("hscc: warning:")]
    # Images: numpy's KeyError for a missing array; statistics: their loader names the array missing.
    assert kind in warning and ("KeyError" in warning or "lacks array" in warning) and "moved to" in warning
    with np.load(blob) as z:
        assert "x" not in z.files  # rebuilt


def test_checksum_valid_npz_without_its_arrays_in_a_read_only_cache(cache_copy):
    data, cache = cache_copy
    (blob,) = (cache / "blobs" / "images").glob("*.npz")
    _forge_blob(blob, {"x": np.zeros(3)})
    set_read_only(cache)
    proc = hscc("evaluate", *_args(data, cache), read_only=True)
    assert_one_error_line(proc, "images", "KeyError", "not writable")


def test_original_run_arrays_without_predictions_are_recomputed(cache_copy):
    data, cache = cache_copy
    from hscc_core.runs.store import RunStore

    store = RunStore(cache)
    original = next(r for r in store.list_runs() if r["method"] == "original")
    key = original["cache_key"]
    body = {k: v for k, v in original.items()}
    store.put_run(key, body, {"unrelated": np.zeros(2)})  # a valid entry, checksums and all
    proc = hscc("compress", *_args(data, cache), *RUN, "--energy", "0.6", "--json")
    assert proc.returncode == 0, proc.stderr
    assert any("predictions" in ln and ln.startswith("hscc: warning:") for ln in proc.stderr.splitlines())
    assert set(RunStore(cache).get_arrays(key)) == {"predictions", "probabilities"}


@pytest.mark.parametrize("argv", [["compress", "--grid", "1000"], ["sweep", "--methods", "hscc", "--grid", "2 1000",
                                                                     "--clusters", "1", "--energy", "0.9"]])
def test_grid_beyond_the_smallest_compressed_map_is_refused(prepared, tmp_path, argv):
    data, cache = prepared
    proc = hscc(argv[0], *_args(data, cache), *argv[1:], "--no-speed")
    assert_one_error_line(proc, "grid 1000", "from 1 to 4")
