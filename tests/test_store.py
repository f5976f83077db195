"""Tests of hscc_core.runs.store: round trips, cache hits, corruption, races, pruning, path safety."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import filelock
import numpy as np
import pytest

from hscc_core.runs import store as store_mod
from hscc_core.runs.store import RunStore, StoreWarning, cache_key, canonical_json, jsonable


def make_run(i: int = 0, method: str = "hscc", data: str = "d0") -> dict:
    return {
        "method": method,
        "config": {"grid": 2, "clusters": 3, "energy": 0.9, "seed": i},
        "data_fingerprint": data,
        "accuracy": 0.875,
        "per_class": {"glioma": {"f1": 0.8, "f1_se": 0.02}},
        "confusion_matrix": [[5, 1], [0, 6]],
    }


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pred": rng.integers(0, 4, size=50).astype(np.int16),
        "probs": rng.random((50, 4)).astype(np.float32),
        "mask": np.asfortranarray(rng.random((3, 5)) > 0.5),
    }


def key_of(i: int) -> str:
    return cache_key("run", {"i": i})


def run_dir(store: RunStore, key: str) -> Path:
    return store.root / "runs" / key


def arrays_file(store: RunStore, key: str) -> Path:
    (path,) = run_dir(store, key).glob("arrays-*.npz")
    return path


class Counter:
    def __init__(self, run: dict | None = None, arrays: dict | None = None) -> None:
        self.calls = 0
        self.run = run or make_run()
        self.arrays = make_arrays() if arrays is None else arrays

    def __call__(self) -> tuple[dict, dict]:
        self.calls += 1
        return self.run, self.arrays


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ---- keys and JSON ----------------------------------------------------------------------------


def test_cache_key_is_canonical() -> None:
    a = cache_key("run", {"config": {"b": 1, "a": [1, 2]}, "model": "m"})
    b = cache_key("run", {"model": "m", "config": {"a": (1, 2), "b": np.int64(1)}})
    assert a == b
    assert len(a) == 24 and int(a, 16) >= 0
    expected = hashlib.sha256(
        json.dumps(
            {"kind": "run", "config": {"a": [1, 2], "b": 1}, "model": "m"},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()[:24]
    assert a == expected
    assert cache_key("stats", {"config": {"b": 1, "a": [1, 2]}, "model": "m"}) != a
    assert cache_key("run", {"config": {"b": 1, "a": [1, 2]}, "model": "n"}) != a


def test_cache_key_accepts_dataclasses_and_rejects_nan_and_kind() -> None:
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        grid: int = 2
        energy: float = 0.9

    assert cache_key("run", {"config": Cfg()}) == cache_key(
        "run", {"config": {"grid": 2, "energy": 0.9}}
    )
    with pytest.raises(ValueError, match="non-finite"):
        cache_key("run", {"energy": float("nan")})
    with pytest.raises(ValueError, match="kind"):
        cache_key("run", {"kind": "x"})


def test_jsonable_converts_numpy_and_nan() -> None:
    out = jsonable({"a": np.float32(0.5), "b": (1, np.nan), "c": np.arange(3), 4: float("inf")})
    assert out == {"a": 0.5, "b": [1, None], "c": [0, 1, 2], "4": None}
    with pytest.raises(TypeError, match=r"\$\.p"):
        jsonable({"p": Path("x")})
    assert canonical_json({"b": 1, "a": float("nan")}) == '{"a":null,"b":1}'


# ---- round trip -------------------------------------------------------------------------------


def test_round_trip_with_arrays(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(1)
    run = {**make_run(), "speedup": np.float64(1.38), "nan_metric": float("nan"), "t": (1, 2)}
    arrays = make_arrays()
    assert store.get_run(key) is None and not store.has_run(key)
    store.put_run(key, run, arrays)
    got = store.get_run(key)
    assert got == {**make_run(), "speedup": 1.38, "nan_metric": None, "t": [1, 2], "cache_key": key}
    assert store.has_run(key)
    back = store.get_arrays(key)
    assert back.keys() == arrays.keys()
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name], arr)


def test_file_format_is_as_documented(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(2)
    store.put_run(key, make_run(), make_arrays())
    text = (run_dir(store, key) / "run.json").read_text("ascii")
    doc = json.loads(text)
    checksum = doc.pop("_checksum")
    body_text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert text == '{"_checksum":' + canonical_json(checksum) + "," + body_text[1:] + "\n"
    assert checksum["algorithm"] == "sha256"
    assert checksum["body"] == hashlib.sha256(body_text.encode()).hexdigest()
    npz = arrays_file(store, key)
    assert checksum["arrays"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert npz.name == f"arrays-{checksum['arrays'][:16]}.npz"
    with np.load(npz, allow_pickle=False) as f:  # a plain .npz
        assert sorted(f.files) == ["mask", "pred", "probs"]
    assert sorted(p.name for p in run_dir(store, key).iterdir()) == [npz.name, "run.json"]


def test_empty_arrays_and_overwrite(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(3)
    store.put_run(key, make_run(), None)
    assert store.get_arrays(key) == {}
    store.put_run(key, {**make_run(), "accuracy": 0.5}, {"x": np.ones(2)})
    assert store.get_run(key)["accuracy"] == 0.5
    assert list(store.get_arrays(key)) == ["x"]
    assert len(list(run_dir(store, key).glob("arrays-*.npz"))) == 1  # old arrays removed


def test_put_run_validates(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(4)
    with pytest.raises(ValueError, match="data_fingerprint"):
        store.put_run(key, {"method": "svd", "config": {}}, {})
    with pytest.raises(ValueError, match="does not match"):
        store.put_run(key, {**make_run(), "cache_key": key_of(5)}, {})
    with pytest.raises(ValueError, match="_checksum"):
        store.put_run(key, {**make_run(), "_checksum": 1}, {})
    with pytest.raises(ValueError, match="object"):
        store.put_run(key, make_run(), {"o": np.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match="array name"):
        store.put_run(key, make_run(), {"../evil": np.ones(1)})
    assert not run_dir(store, key).exists()


# ---- cache hits -------------------------------------------------------------------------------


def test_get_or_compute_hits_cache(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    compute = Counter(run={**make_run(), "loss": float("nan")})
    first, cached1 = store.get_or_compute(key_of(6), compute)
    second, cached2 = RunStore(tmp_path).get_or_compute(key_of(6), compute)
    assert (cached1, cached2) == (False, True)
    assert compute.calls == 1
    assert first == second and first["loss"] is None and first["cache_key"] == key_of(6)


# ---- corruption -------------------------------------------------------------------------------


def _truncate_json(store: RunStore, key: str) -> None:
    p = run_dir(store, key) / "run.json"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _truncate_arrays(store: RunStore, key: str) -> None:
    p = arrays_file(store, key)
    p.write_bytes(p.read_bytes()[:100])


def _flip_json_value(store: RunStore, key: str) -> None:
    p = run_dir(store, key) / "run.json"
    flip_byte(p, p.read_bytes().index(b"0.875") + 2)  # still valid JSON, different number


def _flip_arrays(store: RunStore, key: str) -> None:
    p = arrays_file(store, key)
    flip_byte(p, p.stat().st_size - 300)


def _delete_arrays(store: RunStore, key: str) -> None:
    arrays_file(store, key).unlink()


def _garbage_json(store: RunStore, key: str) -> None:
    (run_dir(store, key) / "run.json").write_bytes(b"\xff\xfe not json")


def _foreign_entry(store: RunStore, key: str) -> None:
    # A valid entry copied under another key's folder.
    other = key_of(999)
    store.put_run(other, make_run(), make_arrays())
    for p in run_dir(store, key).iterdir():
        p.unlink()
    for p in run_dir(store, other).iterdir():
        (run_dir(store, key) / p.name).write_bytes(p.read_bytes())


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_json,
        _truncate_arrays,
        _flip_json_value,
        _flip_arrays,
        _delete_arrays,
        _garbage_json,
        _foreign_entry,
    ],
)
def test_corruption_is_reported_once_and_recomputed(tmp_path: Path, damage) -> None:
    store = RunStore(tmp_path)
    key = key_of(7)
    compute = Counter()
    store.get_or_compute(key, compute)
    damage(store, key)
    with pytest.warns(StoreWarning, match=key) as record:
        run, cached = store.get_or_compute(key, compute)
    assert len([w for w in record if issubclass(w.category, StoreWarning)]) == 1
    assert not cached and compute.calls == 2
    assert run == store.get_run(key)
    np.testing.assert_array_equal(store.get_arrays(key)["probs"], compute.arrays["probs"])
    assert len(list((tmp_path / "quarantine").iterdir())) == 1  # moved aside, not re-reported
    # Damaged again in this process: treated as absent, but not reported a second time.
    damage(store, key)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_run(key) is None and not store.has_run(key)


def test_listing_and_has_run_detect_damage(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.put_run(key_of(8), make_run(8), make_arrays())
    store.put_run(key_of(9), make_run(9), make_arrays())
    _truncate_json(store, key_of(8))
    with pytest.warns(StoreWarning):
        assert [r["cache_key"] for r in store.list_runs()] == [key_of(9)]
    assert not store.has_run(key_of(8))
    _flip_arrays(store, key_of(9))
    assert store.has_run(key_of(9))  # presence-only check by design
    with pytest.warns(StoreWarning):
        assert store.get_arrays(key_of(9)) is None


def test_crash_mid_write_keeps_previous_entry(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    key = key_of(10)
    store.put_run(key, make_run(), make_arrays(0))
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith("run.json"):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        store.put_run(key, {**make_run(), "accuracy": 0.1}, make_arrays(1))
    monkeypatch.setattr(store_mod.os, "replace", real_replace)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_run(key)["accuracy"] == 0.875
        np.testing.assert_array_equal(store.get_arrays(key)["pred"], make_arrays(0)["pred"])
    # A half-written new entry (arrays but no run.json) is simply absent, silently.
    (run_dir(store, key_of(11))).mkdir()
    (run_dir(store, key_of(11)) / "arrays-0123456789abcdef.npz").write_bytes(b"PK")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_run(key_of(11)) is None
        assert [r["cache_key"] for r in store.list_runs()] == [key]
    store.put_run(key, make_run(), make_arrays(2))  # leftovers of the crash are cleaned up
    assert len(list(run_dir(store, key).iterdir())) == 2


# ---- races ------------------------------------------------------------------------------------


def _race_worker(root: str, key: str, barrier, out: str) -> None:
    store = RunStore(root)

    def compute():
        with open(Path(root) / "compute_calls.txt", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # keep the window wide: the other process must wait, not recompute
        return {**make_run(), "pid_free": True}, make_arrays()

    barrier.wait()
    run, cached = store.get_or_compute(key, compute)
    Path(out).write_text(json.dumps({"run": run, "cached": cached}))


def test_two_processes_racing_compute_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    key = key_of(12)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [
        ctx.Process(target=_race_worker, args=(str(tmp_path), key, barrier, str(o))) for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # generous: spawned interpreters start slowly on a loaded two-core machine
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert len((tmp_path / "compute_calls.txt").read_text().split()) == 1
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["run"] == results[1]["run"]
    store = RunStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_run(key) == results[0]["run"]
        assert store.list_runs(verify_arrays=True) == [results[0]["run"]]


def _rewrite_worker(root: str, key: str, seconds: float) -> None:
    store = RunStore(root)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        store.put_run(key, {**make_run(), "version": i % 2}, make_arrays(i % 2))
        i += 1


def test_readers_never_see_a_torn_entry_while_another_process_rewrites(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(13)
    store.put_run(key, {**make_run(), "version": 0}, make_arrays(0))
    proc = mp.get_context("spawn").Process(target=_rewrite_worker, args=(str(tmp_path), key, 1.0))
    proc.start()
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        while proc.is_alive() or not seen:
            run = store.get_run(key)
            assert run is not None
            seen.add(run["version"])
            arrays = store.get_arrays(key)
            assert arrays is not None and arrays["pred"].shape == (50,)
    proc.join(300)
    assert proc.exitcode == 0
    assert seen <= {0, 1}


def test_torn_read_is_retried_under_the_lock(tmp_path: Path, monkeypatch) -> None:
    # Deterministic version of the race above: a rewrite lands between the reader's read of
    # run.json and its read of the arrays that run.json names (which the rewrite deletes).
    store = RunStore(tmp_path)
    key = key_of(15)
    store.put_run(key, {**make_run(), "version": 0}, make_arrays(0))
    real_arrays_name = store_mod._arrays_name
    rewrites = []

    def interleave(sha: str) -> str:
        if not rewrites:
            rewrites.append(sha)
            store.put_run(key, {**make_run(), "version": 1}, make_arrays(1))
        return real_arrays_name(sha)

    monkeypatch.setattr(store_mod, "_arrays_name", interleave)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_run(key)["version"] == 1
    assert len(rewrites) == 1
    np.testing.assert_array_equal(store.get_arrays(key)["pred"], make_arrays(1)["pred"])


def test_lock_is_reentrant_and_excludes_other_threads(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = key_of(14)
    results = []

    def other() -> None:
        try:
            with store.lock(key, timeout=0.2):
                results.append("acquired")
        except filelock.Timeout:
            results.append("timeout")

    with store.lock(key), store.lock(key, timeout=1):  # nested in one thread: no deadlock
        store.put_run(key, make_run(), {})  # put_run takes the same lock again
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert results == ["timeout"]
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert results == ["timeout", "acquired"]


# ---- listing, pruning, size -------------------------------------------------------------------


def test_iter_runs_filters(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.put_run(key_of(20), make_run(20, "hscc", "d0"), {})
    store.put_run(key_of(21), make_run(21, "svd", "d0"), {})
    store.put_run(key_of(22), make_run(22, "hscc", "d1"), {})
    assert len(store.list_runs()) == 3
    assert {r["cache_key"] for r in store.iter_runs(method="hscc")} == {key_of(20), key_of(22)}
    assert [r["cache_key"] for r in store.list_runs("hscc", "d1")] == [key_of(22)]
    assert store.list_runs(data_fingerprint="nope") == []
    assert store.keys() == sorted([key_of(20), key_of(21), key_of(22)])
    assert RunStore(tmp_path / "empty").list_runs() == []


def test_prune_and_size(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for i in range(5):
        store.put_run(key_of(30 + i), make_run(i, "svd" if i % 2 else "hscc"), make_arrays(i))
    full = store.size_bytes()
    assert full > 5 * 1000
    assert store.prune([key_of(30), key_of(99)]) == 1
    assert store.prune(lambda r: r["method"] == "svd") == 2
    assert [r["cache_key"] for r in store.list_runs()] == sorted([key_of(32), key_of(34)])
    assert 0 < store.size_bytes() < full
    assert store.prune(key_of(32)) == 1  # a single key, not its characters
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "runs").iterdir())


# ---- path safety ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "ABCDEF0123456789", "abc", "0" * 65, "", "a/b" * 8, None])
def test_keys_must_be_hex(tmp_path: Path, bad) -> None:
    store = RunStore(tmp_path)
    for call in (
        lambda: store.get_run(bad),
        lambda: store.put_run(bad, make_run(), {}),
        lambda: store.has_run(bad),
        lambda: store.prune([bad]),
        lambda: store.blob_path("ckpt", bad, "pt"),
        lambda: store.lock(bad).__enter__(),
    ):
        with pytest.raises(ValueError, match="cache key"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_blob_kind_and_ext_are_validated(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        store.blob_path("../etc", key_of(1), "pt")
    with pytest.raises(ValueError, match="extension"):
        store.blob_path("ckpt", key_of(1), "p/t")
    assert store.blob_path("ckpt", key_of(1), "pt") == tmp_path / "blobs" / "ckpt" / (
        key_of(1) + ".pt"
    )


# ---- blobs ------------------------------------------------------------------------------------


def test_blob_round_trip_with_np_savez(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = cache_key("stats", {"g": 2})
    stats = {"mu": np.arange(6.0).reshape(2, 3), "gram": np.eye(3)}
    folder = tmp_path / "blobs" / "stats"
    folder.mkdir(parents=True)
    (folder / f".tmp-{key}-999-dead.npz").write_bytes(b"left by a crashed writer")
    path = store.put_blob_file("stats", key, "npz", lambda p: np.savez(p, **stats))
    assert path == store.blob_path("stats", key, "npz") and path.is_file()
    assert store.has_blob("stats", key, "npz") and store.verify_blob("stats", key, "npz")
    sidecar = path.with_name(path.name + ".sha256").read_text()
    assert sidecar == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["mu"], stats["mu"])
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.name + ".sha256"]
    )


def test_blob_corruption_and_failed_writers(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    key = cache_key("ckpt", {"m": 1})
    calls = []

    def writer(p: Path) -> None:
        calls.append(p)
        p.write_bytes(b"weights" * 100)

    path, cached = store.get_or_compute_blob("ckpt", key, "pt", writer)
    assert not cached and store.get_or_compute_blob("ckpt", key, "pt", writer) == (path, True)
    assert len(calls) == 1 and calls[0].name.endswith(".pt") and calls[0].parent == path.parent
    flip_byte(path, 10)
    with pytest.warns(StoreWarning, match="blob"):
        assert not store.verify_blob("ckpt", key, "pt")
    assert not path.exists() and not store.has_blob("ckpt", key, "pt")
    assert store.get_or_compute_blob("ckpt", key, "pt", writer) == (path, False)
    flip_byte(path, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)  # this key was already reported once
        assert not store.verify_blob("ckpt", key, "pt")
        assert not store.verify_blob("ckpt", key, "pt")  # absent now
    # Half-written (blob without its sidecar), on another key: reported.
    key2 = cache_key("ckpt", {"m": 2})
    path2 = store.put_blob_file("ckpt", key2, "pt", writer)
    path2.with_name(path2.name + ".sha256").unlink()
    with pytest.warns(StoreWarning, match="sidecar"):
        assert not store.verify_blob("ckpt", key2, "pt")
    assert not path2.exists()

    def failing(p: Path) -> None:
        p.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.put_blob_file("ckpt", key, "pt", failing)
    with pytest.raises(RuntimeError, match="did not create"):
        store.put_blob_file("ckpt", key, "pt", lambda p: None)
    assert list(path.parent.iterdir()) == []


# ---- speed ------------------------------------------------------------------------------------


def _write_entry_as_documented(runs: Path, key: str, run: dict, npz: Path) -> None:
    """Write an entry by following the module docstring alone (fast path for many runs).

    ``npz`` is any ``.npz`` file, hard-linked in (writing 10,000 files is slow on some disks).
    """
    arrays_sha = hashlib.sha256(npz.read_bytes()).hexdigest()
    body = json.dumps({**run, "cache_key": key}, sort_keys=True, separators=(",", ":"))
    checksum = {
        "algorithm": "sha256",
        "arrays": arrays_sha,
        "body": hashlib.sha256(body.encode()).hexdigest(),
    }
    d = runs / key
    d.mkdir(parents=True)
    os.link(npz, d / f"arrays-{arrays_sha[:16]}.npz")
    (d / "run.json").write_text('{"_checksum":' + canonical_json(checksum) + "," + body[1:] + "\n")


@pytest.fixture
def fast_dir(tmp_path: Path):
    """A memory-backed folder where there is one: creating 20,000 files on a busy disk takes
    tens of seconds, and the test is about the store's cost per entry, not the disk's."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="hscc-test-") as d:
            yield Path(d)
    else:
        yield tmp_path


def test_entries_written_as_documented_are_listed(fast_dir: Path) -> None:
    """Entries written by following the module docstring alone are read (the listing's speed at
    10,000 runs is measured by benchmarks/scale.py)."""
    store = RunStore(fast_dir / "store")
    npz = fast_dir / "plain.npz"
    np.savez(npz, pred=np.zeros(4, dtype=np.int8))  # written by numpy itself, not the store
    n = 1_000
    try:
        for i in range(n):
            run = {**make_run(i, "hscc" if i % 2 else "svd"), "flops": 1e9 + i}
            _write_entry_as_documented(store.root / "runs", key_of(i), run, npz)
        runs = store.list_runs()
        assert len(runs) == n and runs[0]["cache_key"] == min(key_of(i) for i in range(n))
        assert len(store.list_runs(method="svd")) == n // 2
        assert store.get_arrays(key_of(0))["pred"].dtype == np.int8
    finally:
        # Do not leave thousands of files for pytest's tmp-dir rotation to delete on later runs.
        shutil.rmtree(store.root, ignore_errors=True)


def test_generation_moves_on_every_write_and_removal(tmp_path) -> None:
    # Readers that cache by the key listing add the generation: a run stored again under its own key
    # (hscc runs --time) leaves the listing as it was.
    store = RunStore(tmp_path)
    assert store.generation() == 0
    key = cache_key("run", {"i": 1})
    seen = []
    for _ in range(3):
        store.put_run(key, make_run(), make_arrays(0))  # the same key, rewritten
        seen.append(store.generation())
    assert seen[0] > 0 and seen == sorted(set(seen)), seen  # strictly increasing
    assert store.keys() == [key]  # the generation file is not a run
    assert store.prune([key]) == 1 and store.generation() > seen[-1]
    before = store.generation()
    assert store.prune([key]) == 0 and store.generation() == before  # nothing removed, nothing announced
