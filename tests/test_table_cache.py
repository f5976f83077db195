"""The on-disk runs table: equal to a fresh table, reads only new or rewritten runs, drops removed ones; the run
summaries it keeps are the stored runs without their per-layer detail, and draw the same Pareto figure."""

import pandas as pd
import pytest

from conftest import TABLE_CLASSES as CLASSES
from conftest import table_run as fake_run
from hscc_core.runs.store import RunStore
from hscc_core.runs.table import runs_table
from hscc_core.present.plots import pareto_figure, run_hover
from hscc_core.runs.table_cache import DETAIL_FIELDS, stored_run_summaries, stored_runs_table


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


def detailed(key, **kw):
    """A table run with the per-layer detail a real run stores (what summaries leave out)."""
    run = fake_run(key, **kw)
    run.update(layers={"features.0": {"regions": [{"rank": 3}] * 4}}, layer_errors={"features.0": 0.1},
               layer_flops={"features.0": 50}, layer_flops_original={"features.0": 100},
               confusion_matrix=[[3, 1], [0, 4]], budget_search={"steps": [1, 2]})
    return run


def test_summaries_are_the_stored_runs_without_their_detail_and_follow_the_store(tmp_path, counted):
    store = RunStore(tmp_path)
    for i in range(4):
        put(store, detailed(f"{i:024x}", grid=i + 1, accuracy=0.5 + 0.1 * i, flops=100 - i, latency=1.0 + i))
    put(store, detailed("e" * 24), data="e" * 24)
    put(store, dict(detailed("9" * 24), method="original", config={}))

    def expected(**kw):
        return [{k: v for k, v in r.items() if k not in DETAIL_FIELDS}
                for r in sorted(store.list_runs(**kw), key=lambda r: r["cache_key"]) if r["method"] != "original"]

    summaries = stored_run_summaries(store, CLASSES, "d" * 24, "m" * 24)
    assert summaries == expected(data_fingerprint="d" * 24) and len(summaries) == 4
    assert not any(field in s for s in summaries for field in DETAIL_FIELDS)
    everything = expected()
    counted.update(get_run=0, listed=0)
    assert stored_run_summaries(store, CLASSES) == everything  # warm: from the one blob, no run read
    assert counted == {"get_run": 0, "listed": 0}
    put(store, detailed(f"{1:024x}", accuracy=0.01))  # rewritten ...
    store.prune([f"{0:024x}"])  # ... and removed
    updated = stored_run_summaries(store, CLASSES, "d" * 24, "m" * 24)
    assert counted == {"get_run": 1, "listed": 0}
    assert updated == expected(data_fingerprint="d" * 24)
    assert [s["accuracy"] for s in updated if s["cache_key"] == f"{1:024x}"] == [0.01]
    # The table and the summaries share the cache: the table reads nothing either.
    want = reference(store)
    counted.update(get_run=0, listed=0)
    pd.testing.assert_frame_equal(stored_runs_table(store, CLASSES), want)
    assert counted == {"get_run": 0, "listed": 0}


def test_summaries_draw_the_same_pareto_figure_as_the_full_runs(tmp_path):
    store = RunStore(tmp_path)
    for i in range(5):
        put(store, detailed(f"{i:024x}", grid=1 + i % 2, accuracy=0.5 + 0.07 * i, flops=100 - 9 * i,
                            latency=2.0 - 0.1 * i, method="hscc" if i < 4 else "svd"))
    full = sorted(store.list_runs(), key=lambda r: r["cache_key"])
    summaries = stored_run_summaries(store, CLASSES)
    for x, y in (("flops", "accuracy"), ("latency", f"{CLASSES[1]}_f1"), ("params", "kl_to_original")):
        want = pareto_figure(full, x, y, error_bars=True, selected=full[2]["cache_key"]).to_json()
        assert pareto_figure(summaries, x, y, error_bars=True, selected=full[2]["cache_key"]).to_json() == want
        hovers = {r["cache_key"]: run_hover(r) for r in summaries}
        assert pareto_figure(summaries, x, y, error_bars=True, selected=full[2]["cache_key"],
                             hovers=hovers).to_json() == want
