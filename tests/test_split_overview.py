"""Tests for hscc_core.runs.split_overview and the Workspace's ``split`` (how the split reaches
every process: spec, environment, cache)."""

from pathlib import Path

import pytest

from conftest import make_planted_folder
from hscc_core.data import duplicates
from hscc_core.runs.split_overview import split_overview
from hscc_core.runs.workspace import Workspace


@pytest.fixture(scope="module")
def planted_root(tmp_path_factory):
    return make_planted_folder(tmp_path_factory.mktemp("planted") / "mri")


def _ws(root, cache, **kw):
    return Workspace(data=root, cache_dir=cache, arch="tiny", input_size=96, **kw)


def test_official_split_reports_its_twins_and_the_clean_split_has_none(planted_root, tmp_path):
    official = split_overview(_ws(planted_root, tmp_path))
    assert official.split == "official" and official.test_images == 4 * 3 + 5
    assert official.test_with_pixel_twin == 2 and official.test_with_twin == 5
    assert official.test["meningioma_tumor"] == 5 and official.twins["meningioma_tumor"]["near"] == 2
    clean = split_overview(_ws(planted_root, tmp_path, split="clean"))
    assert clean.split == "clean" and clean.test_with_twin == 0 and clean.test_with_pixel_twin == 0
    assert all(abs(clean.test[c] - official.test[c]) <= 1 for c in clean.test)
    assert clean.data_fingerprint != official.data_fingerprint
    assert "5 test images have a twin in training (2 pixel-identical at 96 px" in official.sentence()
    assert clean.to_dict()["test_with_twin"] == 0
    assert clean.to_dict()["sentence"] == ("Clean split: 40 training and 17 test images; no test image has a twin "
                                           "in training (pixel- or near-identical at 96 px).")


def test_dedupe_on_the_official_split_leaves_only_near_twins(planted_root, tmp_path):
    view = split_overview(_ws(planted_root, tmp_path, dedupe=True))
    assert view.dedupe and view.test_with_pixel_twin == 0 and view.test_with_twin == 3  # the near copies


def test_signatures_are_computed_once_per_dataset_and_size(planted_root, tmp_path, monkeypatch):
    calls = []
    real = duplicates.compute_signatures
    monkeypatch.setattr(duplicates, "compute_signatures", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = _ws(planted_root, tmp_path, split="clean").index()
    again = _ws(planted_root, tmp_path, split="clean").index()  # a fresh process would do this
    split_overview(_ws(planted_root, tmp_path))
    assert len(calls) == 1 and first == again


def test_clean_split_has_its_own_images_and_baseline_keys(planted_root, tmp_path):
    official, clean = _ws(planted_root, tmp_path), _ws(planted_root, tmp_path, split="clean")
    assert official.baseline_key() != clean.baseline_key()
    images = clean.images()
    assert images.fingerprint == clean.index().fingerprint != official.index().fingerprint
    assert len(images.y_test) == len(clean.index().split("test"))
    assert clean.data_label().endswith("(clean split)") and official.data_label() == str(planted_root)


def test_the_split_travels_through_spec_and_environment(planted_root, tmp_path):
    ws = _ws(planted_root, tmp_path, split="clean")
    assert Workspace.from_spec(ws.spec()).split == "clean"
    old_spec = {k: v for k, v in _ws(planted_root, tmp_path).spec().items() if k != "split"}
    assert Workspace.from_spec(old_spec).split == "official"  # specs written before the option
    env = {"HSCC_DATA": str(planted_root), "HSCC_CACHE_DIR": str(tmp_path), "HSCC_SPLIT": "clean"}
    assert Workspace.from_env(env=env).split == "clean"
    assert Workspace.from_env(env={**env, "HSCC_SPLIT": ""}).split == "official"
    with pytest.raises(ValueError, match="split must be one of official, clean"):
        Workspace.from_env(env={**env, "HSCC_SPLIT": "leaky"})
    with pytest.raises(ValueError, match="split must be one of"):
        Workspace(data=Path(planted_root), split="Clean")
