"""Tests of hscc_core.runs.pareto: exact fronts against brute force, directions, axes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hscc_core.runs import pareto
from hscc_core.runs.pareto import AXES, axis_value, front_runs, get_axis, pareto_front, register_axis


def brute_front(points: np.ndarray, minimise_x: bool, maximise_y: bool) -> set[int]:
    """O(n^2) reference: i is kept iff no j is >= in both objectives and > in one."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    sx = 1.0 if minimise_x else -1.0  # map to "smaller is better"
    sy = -1.0 if maximise_y else 1.0
    keep = set()
    for i, (xi, yi) in enumerate(pts):
        if math.isnan(xi) or math.isnan(yi):
            continue
        dominated = False
        for j, (xj, yj) in enumerate(pts):
            if j == i or math.isnan(xj) or math.isnan(yj):
                continue
            ai, bi, aj, bj = sx * xi, sy * yi, sx * xj, sy * yj
            if aj <= ai and bj <= bi and (aj < ai or bj < bi):
                dominated = True
                break
        if not dominated:
            keep.add(i)
    return keep


DIRECTIONS = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize(("minimise_x", "maximise_y"), DIRECTIONS)
def test_matches_brute_force_on_integer_grids_with_ties(minimise_x: bool, maximise_y: bool) -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(0, 60))
        side = int(rng.integers(1, 8))  # tiny grids force many exact ties and duplicates
        pts = rng.integers(0, side, size=(n, 2)).astype(float)
        if trial % 3 == 0 and n:
            pts[rng.random(n) < 0.2, int(rng.integers(0, 2))] = np.nan
        got = pareto_front(pts, minimise_x=minimise_x, maximise_y=maximise_y)
        assert got.dtype.kind == "i"
        assert len(set(got.tolist())) == len(got)
        assert set(got.tolist()) == brute_front(pts, minimise_x, maximise_y)


@pytest.mark.parametrize(("minimise_x", "maximise_y"), DIRECTIONS)
def test_matches_brute_force_on_continuous_points(minimise_x: bool, maximise_y: bool) -> None:
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(400, 2))
    pts[200:260] = pts[:60]  # some exact duplicates
    got = pareto_front(pts, minimise_x, maximise_y)
    assert set(got.tolist()) == brute_front(pts, minimise_x, maximise_y)


def test_identical_points_are_all_kept() -> None:
    pts = [(1.0, 0.9), (1.0, 0.9), (2.0, 0.5), (1.0, 0.9)]
    assert pareto_front(pts).tolist() == [0, 1, 3]


def test_weak_domination_removes_point() -> None:
    # Same cost, lower accuracy: dominated. Lower cost, same accuracy: dominates.
    pts = [(1.0, 0.9), (1.0, 0.8), (0.5, 0.9)]
    assert pareto_front(pts).tolist() == [2]


def test_directions() -> None:
    pts = [(1.0, 1.0), (2.0, 2.0)]
    assert pareto_front(pts, minimise_x=True, maximise_y=True).tolist() == [0, 1]
    assert pareto_front(pts, minimise_x=True, maximise_y=False).tolist() == [0]
    assert pareto_front(pts, minimise_x=False, maximise_y=True).tolist() == [1]
    assert pareto_front(pts, minimise_x=False, maximise_y=False).tolist() == [0, 1]


def test_nan_and_none_are_excluded_and_order_is_by_x() -> None:
    pts = [(3.0, 0.9), (None, 1.0), (1.0, float("nan")), (1.0, 0.5), (2.0, 0.7)]
    assert pareto_front(pts).tolist() == [3, 4, 0]
    assert pareto_front([(None, None)]).tolist() == []
    assert pareto_front([]).tolist() == []
    assert pareto_front(np.empty((0, 2))).tolist() == []


def test_infinities_are_values() -> None:
    pts = np.array([[0.0, -np.inf], [np.inf, 1.0], [1.0, 0.0]])
    for mx, my in DIRECTIONS:
        assert set(pareto_front(pts, mx, my).tolist()) == brute_front(pts, mx, my)
    assert pareto_front([(0.0, -np.inf)]).tolist() == [0]


def test_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        pareto_front(np.zeros((4, 3)))


def test_ten_thousand_points_give_the_same_front_as_the_definition() -> None:
    """Behaviour at scale (the timing is benchmarks/scale.py's business)."""
    pts = np.random.default_rng(2).integers(0, 300, size=(10_000, 2)).astype(float)
    front = set(np.flatnonzero(pareto_front(pts)).tolist())
    for i in np.random.default_rng(3).choice(10_000, 200, replace=False):
        dominated = np.any(np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1))
        assert (i in front) == (not dominated)


# ---- axes -------------------------------------------------------------------------------------


def make_run(name: str, flops: float, acc: float, **extra) -> dict:
    run = {
        "name": name,
        "flops": flops,
        "params": flops / 10,
        "accuracy": acc,
        "macro_f1": acc - 0.01,
        "latency_ms": {"compressed": {"b1": {"median": flops / 1e9, "p90": 1.0}}},
        "per_class": {"meningioma": {"f1": acc - 0.05, "precision": 0.0, "recall": 0.0}},
    }
    run.update(extra)
    return run


def test_axis_value_mapping() -> None:
    run = make_run("a", 2e9, 0.9, agreement=0.97, kl_to_original=0.02)
    assert axis_value(run, "flops") == 2e9
    assert axis_value(run, "params") == 2e8
    assert axis_value(run, "latency") == 2.0
    assert axis_value(run, "accuracy") == 0.9
    assert axis_value(run, "macro_f1") == pytest.approx(0.89)
    assert axis_value(run, "meningioma_f1") == pytest.approx(0.85)
    assert axis_value(run, "agreement") == 0.97
    assert axis_value(run, "kl_to_original") == 0.02
    assert math.isnan(axis_value(run, "glioma_f1"))  # class absent
    assert math.isnan(axis_value({"flops": None}, "flops"))
    assert math.isnan(axis_value({}, "latency"))


def test_directions_of_axes() -> None:
    assert {n: a.direction for n, a in AXES.items()} == {
        "flops": "min",
        "params": "min",
        "latency": "min",
        "accuracy": "max",
        "macro_f1": "max",
        "agreement": "max",
        "kl_to_original": "min",
    }
    assert get_axis("pituitary_f1").direction == "max"
    assert get_axis("pituitary_f1").label


def test_unknown_axis_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"unknown axis 'speed'.*accuracy.*kl_to_original"):
        front_runs([], "speed", "accuracy")
    with pytest.raises(ValueError, match="allowed"):
        axis_value({}, "nope")


def test_front_runs_sorted_by_x_and_skips_missing() -> None:
    runs = [
        make_run("big", 8e9, 0.95),
        make_run("dominated", 5e9, 0.80),
        make_run("small", 1e9, 0.85),
        make_run("mid", 3e9, 0.90),
        {"name": "no-metrics"},
        {**make_run("no-acc", 0.5e9, 0.99), "accuracy": None},
    ]
    assert [r["name"] for r in front_runs(runs, "flops", "accuracy")] == ["small", "mid", "big"]
    assert front_runs([], "flops", "accuracy") == []


def test_front_runs_minimises_kl() -> None:
    runs = [
        make_run("a", 1e9, 0.8, kl_to_original=0.30),
        make_run("b", 2e9, 0.8, kl_to_original=0.10),
        make_run("c", 3e9, 0.8, kl_to_original=0.20),  # costlier and further from the original
    ]
    assert [r["name"] for r in front_runs(runs, "flops", "kl_to_original")] == ["a", "b"]


def test_register_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pareto, "AXES", dict(AXES))
    register_axis("seconds", lambda r: r["seconds"], "min", "Wall time (s)")
    runs = [{"seconds": 3.0, "accuracy": 0.9}, {"seconds": 1.0, "accuracy": 0.8}]
    assert [r["seconds"] for r in front_runs(runs, "seconds", "accuracy")] == [1.0, 3.0]
    with pytest.raises(ValueError, match="direction"):
        register_axis("bad", lambda r: 0, "up", "Bad")  # type: ignore[arg-type]
