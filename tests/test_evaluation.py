"""Tests for hscc_core.measure.metrics: metrics, bootstrap SEs, paired tests, fidelity."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from hscc_core.measure.metrics import classification_metrics, fidelity, paired_comparison

CLASSES = ("a", "b", "c", "d")


def _labels(n, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < noise, rng.integers(0, 4, n), y)
    return y, pred


def test_point_metrics_match_sklearn():
    y, p = _labels(300)
    m = classification_metrics(y, p, CLASSES)
    assert m["accuracy"] == pytest.approx(np.mean(y == p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p)
    for k, name in enumerate(CLASSES):
        assert m["per_class"][name]["precision"] == pytest.approx(prec[k])
        assert m["per_class"][name]["recall"] == pytest.approx(rec[k])
        assert m["per_class"][name]["f1"] == pytest.approx(f1[k])
        assert m["per_class"][name]["support"] == sup[k]
    assert np.array(m["confusion_matrix"]).sum() == 300


def test_perfect_predictions_have_zero_se():
    y, _ = _labels(200)
    m = classification_metrics(y, y, CLASSES)
    assert m["accuracy"] == 1.0 and m["accuracy_se"] == 0.0 and m["macro_f1_se"] == 0.0
    assert all(v["f1_se"] == 0.0 for v in m["per_class"].values())


def test_se_shrinks_with_n_and_matches_binomial():
    small = classification_metrics(*_labels(100, seed=1), CLASSES)
    large = classification_metrics(*_labels(2500, seed=1), CLASSES)
    assert large["accuracy_se"] < small["accuracy_se"] / 3
    acc = large["accuracy"]
    assert large["accuracy_se"] == pytest.approx(np.sqrt(acc * (1 - acc) / 2500), rel=0.15)


def test_bootstrap_is_seeded():
    y, p = _labels(150)
    assert classification_metrics(y, p, CLASSES, seed=5) == classification_metrics(y, p, CLASSES, seed=5)
    assert classification_metrics(y, p, CLASSES, seed=5)["accuracy_se"] != \
        classification_metrics(y, p, CLASSES, seed=6)["accuracy_se"]


def test_paired_comparison_identical_and_different():
    y, p = _labels(200)
    same = paired_comparison(y, p, p)
    assert same["p_value"] == 1.0 and same["accuracy_delta"] == 0.0 and same["accuracy_delta_se"] == 0.0
    worse = np.where(np.arange(200) < 60, (y + 1) % 4, y)  # 60 new errors where the reference may be right
    res = paired_comparison(y, y, worse)
    assert res["p_value"] < 1e-10 and res["accuracy_delta"] == pytest.approx(-0.3)
    assert res["discordant"] == {"ref_only": 60, "new_only": 0}


def test_fidelity_identical_models():
    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.ones(4), size=50)
    f = fidelity(prob, prob)
    assert f["agreement"] == 1.0 and f["kl_to_original"] == pytest.approx(0.0, abs=1e-12)
    other = rng.dirichlet(np.ones(4), size=50)
    g = fidelity(prob, other)
    assert g["agreement"] < 1.0 and g["kl_to_original"] > 0 and g["kl_to_original_se"] > 0
