"""Hypervolume of two-objective fronts: closed forms, directions, and agreement with Optuna's own."""

import numpy as np
import pytest

from conftest import table_run as fake_run
from hscc_core.runs.hypervolume import front_hypervolume, hypervolume_2d, reference_point


def test_closed_forms():
    # Both minimised, reference (4, 4): a staircase of areas 3 + 2 + 1.
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1]], [4, 4], ("min", "min")) == 6.0
    # A dominated point and a duplicate add nothing; points beyond the reference add nothing.
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1], [2, 2.5], [2, 2], [5, 0]], [4, 4], ("min", "min")) == 6.0
    assert hypervolume_2d([], [1, 1]) == 0.0
    assert hypervolume_2d([[np.nan, 1]], [1, 0]) == 0.0
    # x minimised (FLOPs), y maximised (accuracy): (1, 0.9) owns 2 x 0.9, (2, 0.95) adds 1 x 0.05.
    assert hypervolume_2d([[1, 0.9], [2, 0.95]], [3, 0.0]) == pytest.approx(1.85)
    with pytest.raises(ValueError):
        hypervolume_2d([[1, 1]], [np.inf, 0])
    with pytest.raises(ValueError):
        hypervolume_2d([[1, 1]], [1, 0], ("min", "up"))


def test_matches_optuna():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for _ in range(5):
        pts = rng.random((40, 2))
        ref = np.array([1.1, 1.1])
        assert hypervolume_2d(pts, ref, ("min", "min")) == pytest.approx(compute_hypervolume(pts, ref))


def test_runs_front_and_shared_reference():
    runs = [fake_run("a" * 24, accuracy=0.7, flops=50), fake_run("b" * 24, accuracy=0.8, flops=100),
            fake_run("c" * 24, accuracy=0.6, flops=120)]
    ref = reference_point(runs, "flops", "accuracy")
    assert ref == (120.0, 0.6)
    # a owns [50, 100] x [0.6, 0.7], b owns [100, 120] x [0.6, 0.8].
    assert front_hypervolume(runs, "flops", "accuracy", ref) == pytest.approx(50 * 0.1 + 20 * 0.2)
    better = runs + [fake_run("d" * 24, accuracy=0.85, flops=60)]
    assert front_hypervolume(better, "flops", "accuracy", ref) > front_hypervolume(runs, "flops", "accuracy", ref)
    with pytest.raises(ValueError, match="no run"):
        reference_point(runs, "latency", "accuracy")
