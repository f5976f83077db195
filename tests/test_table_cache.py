"""The on-disk runs table: equal to a fresh table, reads only new or rewritten runs, drops removed ones."""

import pandas as pd
import pytest

from conftest import TABLE_CLASSES as CLASSES
from conftest import table_run as fake_run
from hscc_core.runs.store import RunStore
from hscc_core.runs.table import runs_table
from hscc_core.runs.table_cache import stored_runs_table


def put(store, run, data="d" * 24, model="m" * 24):
    body = {k: v for k, v in run.items() if k != "cache_key"}
    store.put_run(run["cache_key"], dict(body, data_fingerprint=data, model_fingerprint=model), {})


@pytest.fixture
def counted(monkeypatch):
    counts = {"get_run": 0, "listed": 0}
    real_get, real_iter = RunStore.get_run, RunStore.iter_runs

    def get_run(self, key):
        counts["get_run"] += 1
        return real_get(self, key)

    def iter_runs(self, *a, **k):
        for run in real_iter(self, *a, **k):
            counts["listed"] += 1
            yield run

    monkeypatch.setattr(RunStore, "get_run", get_run)
    monkeypatch.setattr(RunStore, "iter_runs", iter_runs)
    return counts


def reference(store, **kw):
    runs = [r for r in store.list_runs(**kw) if r["method"] != "original"]
    return runs_table(sorted(runs, key=lambda r: r["cache_key"]), classes=CLASSES)


def test_cached_rows_equal_a_fresh_table_and_only_changes_are_read(tmp_path, counted):
    store = RunStore(tmp_path)
    for i in range(5):
        put(store, fake_run(f"{i:024x}", grid=i + 1, accuracy=0.5 + 0.05 * i, flops=100 - i))
    put(store, dict(fake_run("9" * 24), method="original", config={}))
    first = stored_runs_table(store, CLASSES)
    assert len(first) == 5 and counted == {"get_run": 6, "listed": 0}  # each run read once (the original too)
    pd.testing.assert_frame_equal(first, reference(store))
    counted.update(get_run=0, listed=0)
    again = stored_runs_table(store, CLASSES)  # nothing changed: no run is read
    pd.testing.assert_frame_equal(again, first)
    assert counted == {"get_run": 0, "listed": 0}
    put(store, fake_run(f"{7:024x}", accuracy=0.99, flops=10))  # a new run ...
    rewritten = fake_run(f"{2:024x}", grid=3, accuracy=0.11, flops=98)
    put(store, rewritten)  # ... one rewritten under its key ...
    store.prune([f"{0:024x}"])  # ... and one removed
    updated = stored_runs_table(store, CLASSES)
    assert counted == {"get_run": 2, "listed": 0}
    pd.testing.assert_frame_equal(updated, reference(store))
    assert f"{0:024x}" not in set(updated["key"])
    assert updated.set_index("key").loc[f"{2:024x}", "accuracy"] == 0.11


def test_filters_by_data_and_model_and_rebuilds_a_damaged_cache(tmp_path, counted):
    store = RunStore(tmp_path)
    put(store, fake_run("a" * 24))
    put(store, fake_run("b" * 24), data="e" * 24)
    put(store, fake_run("c" * 24), model="f" * 24)
    assert list(stored_runs_table(store, CLASSES, "d" * 24, "m" * 24)["key"]) == ["a" * 24]
    assert len(stored_runs_table(store, CLASSES)) == 3
    blob = next((tmp_path / "blobs" / "tables").glob("*.parquet"))
    blob.write_bytes(b"not parquet")
    with pytest.warns(UserWarning):
        table = stored_runs_table(store, CLASSES)
    pd.testing.assert_frame_equal(table, reference(store))
    assert len(stored_runs_table(RunStore(tmp_path / "empty"), CLASSES)) == 0


def test_many_unread_runs_come_from_one_listing(tmp_path, counted, monkeypatch):
    import hscc_core.runs.table_cache as tc

    monkeypatch.setattr(tc, "_FULL_LISTING", 2)
    store = RunStore(tmp_path)
    for i in range(4):
        put(store, fake_run(f"{i:024x}", accuracy=0.4 + 0.1 * i))
    table = stored_runs_table(store, CLASSES)
    assert counted == {"get_run": 0, "listed": 4}
    pd.testing.assert_frame_equal(table, reference(store))
