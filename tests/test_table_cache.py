"""The on-disk runs table: equal to a fresh table, reads only new or rewritten runs, drops removed ones; the run
summaries it keeps are the stored runs without their per-layer detail, and draw the same Pareto figure."""

import pandas as pd
import pytest

from conftest import TABLE_CLASSES as CLASSES
from conftest import table_run as fake_run
from hscc_core.runs.store import RunStore
from hscc_core.runs.table import runs_table
from hscc_core.present.plots import PARETO_COLUMNS, pareto_columns, pareto_figure, run_hover
from hscc_core.runs.table_cache import (DETAIL_FIELDS, older_runs_count, stored_run_columns, stored_run_summaries,
                                        stored_runs_table)
from hscc_core.runs.versions import ORIGINAL_VERSION, RUN_VERSION


def put(store, run, data="d" * 24, model="m" * 24, version=None):
    body = {k: v for k, v in run.items() if k != "cache_key"}
    if version is None:
        version = ORIGINAL_VERSION if run.get("method") == "original" else RUN_VERSION
    store.put_run(run["cache_key"], dict(body, data_fingerprint=data, model_fingerprint=model, version=version), {})


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
        # The Pareto page's typed columns, kept on disk: the same figure without decoding a summary.
        points = stored_run_columns(store, CLASSES, PARETO_COLUMNS, lambda r: pareto_columns(r, CLASSES))
        for original in (None, dict(detailed("9" * 24), method="original", config={}, latency_ms=None)):
            want = pareto_figure(full, x, y, original, error_bars=True, selected=full[2]["cache_key"]).to_json()
            assert pareto_figure(points, x, y, original, error_bars=True,
                                 selected=full[2]["cache_key"]).to_json() == want


def test_derived_columns_are_computed_once_per_run_and_follow_the_store(tmp_path, monkeypatch):
    import hscc_core.runs.table_cache as tc

    # Above two unread runs, their summaries come from the table cache; up to two, from their files.
    monkeypatch.setattr(tc, "_FULL_LISTING", 2)
    store = RunStore(tmp_path)
    for i in range(4):
        put(store, detailed(f"{i:024x}", accuracy=0.5 + 0.1 * i))
    put(store, detailed("e" * 24), data="e" * 24)
    derived = []

    def derive(run):
        derived.append(run["cache_key"])
        assert not any(field in run for field in DETAIL_FIELDS)  # from the summary
        return {"double": 2 * run["accuracy"], "name": run["label"]}

    def columns(**kw):
        return stored_run_columns(store, CLASSES, "test-1", derive, **kw)

    first = columns(data_fingerprint="d" * 24, model_fingerprint="m" * 24)
    assert list(first["key"]) == [f"{i:024x}" for i in range(4)] and len(derived) == 5
    assert list(first["double"]) == pytest.approx([1.0, 1.2, 1.4, 1.6])
    derived.clear()
    pd.testing.assert_frame_equal(columns(data_fingerprint="d" * 24, model_fingerprint="m" * 24), first)
    assert derived == []  # warm: read from its blob
    put(store, detailed(f"{1:024x}", accuracy=0.01))  # rewritten ...
    store.prune([f"{0:024x}"])  # ... removed ...
    put(store, detailed(f"{7:024x}", accuracy=0.3))  # ... and new
    updated = columns()
    assert sorted(derived) == [f"{1:024x}", f"{7:024x}"]
    assert list(updated["key"]) == [f"{i:024x}" for i in (1, 2, 3, 7)] + ["e" * 24]
    assert list(updated["double"]) == pytest.approx([0.02, 1.4, 1.6, 0.6, 1.6])
    assert list(updated["key"]) == [s["cache_key"] for s in stored_run_summaries(store, CLASSES)]
    derived.clear()
    assert stored_run_columns(store, CLASSES, "test-2", derive).shape == (5, 3) and len(derived) == 5  # a new name


def test_runs_of_an_older_pipeline_are_not_listed(tmp_path):
    # Their FLOPs and timings describe another computation (before conv1 was folded, say): a plot or
    # table beside the current runs would compare unlike with like.
    from hscc_core.runs.selection import baseline_runs, older_baseline_runs
    from hscc_core.runs.versions import older_runs_note

    store = RunStore(tmp_path)
    current, old, unversioned = (fake_run(f"{i:024x}") for i in range(3))
    put(store, current)
    put(store, old, version=RUN_VERSION - 1)
    body = {k: v for k, v in unversioned.items() if k not in ("cache_key", "version")}  # before versions
    store.put_run(unversioned["cache_key"], dict(body, data_fingerprint="d" * 24, model_fingerprint="m" * 24), {})
    listed = stored_runs_table(store, CLASSES, data_fingerprint="d" * 24, model_fingerprint="m" * 24)
    assert list(listed["key"]) == [current["cache_key"]]
    assert [r["cache_key"] for r in stored_run_summaries(store, CLASSES, "d" * 24, "m" * 24)] == [current["cache_key"]]
    assert [r["cache_key"] for r in baseline_runs(store, "d" * 24, "m" * 24)] == [current["cache_key"]]
    # ...but they are counted, so a listing can say why they are missing (one older, one unversioned).
    assert older_runs_count(store, CLASSES, "d" * 24, "m" * 24) == 2
    assert older_baseline_runs(store, "d" * 24, "m" * 24) == 2
    assert older_runs_count(store, CLASSES, "d" * 24, "x" * 24) == 0  # another model's are not this one's
    put(store, fake_run("f" * 24), model="x" * 24, version=RUN_VERSION - 1)
    assert older_runs_count(store, CLASSES, "d" * 24, "m" * 24) == 2
    assert older_runs_count(store, CLASSES, "d" * 24, "x" * 24) == 1
    assert older_runs_note(0) == "" and older_runs_note(1).startswith("1 stored run of this model comes")
    assert "2 stored runs of this model come" in older_runs_note(2) and "Compute them again" in older_runs_note(2)
