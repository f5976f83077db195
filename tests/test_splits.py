"""Tests for hscc_core.data.splits: the clean split keeps duplicate groups whole, holds the class
proportions, is seeded, and never changes the official split's fingerprint."""

import hashlib
import json
from dataclasses import replace

import pytest

from conftest import REAL_DATA, make_planted_folder
from hscc_core.data.duplicates import compute_signatures, find_groups
from hscc_core.data.folders import DataError, deduplicate, discover
from hscc_core.data.splits import check_split, class_counts, clean_split

SIZE = 96


@pytest.fixture(scope="module", params=[True, False], ids=["training-testing", "class-folders"])
def planted(request, tmp_path_factory):
    root = make_planted_folder(tmp_path_factory.mktemp("planted") / "mri", split=request.param)
    index = discover(root)
    return index, find_groups(index, compute_signatures(index, SIZE))


def _sides(index):
    return {f.relpath: f.split for f in index.files}


def test_no_group_crosses_the_clean_split(planted):
    index, groups = planted
    assert any(len({index.files[k].split for k in m}) > 1 for m in groups.members())  # leaks before
    side = _sides(clean_split(index, groups, SIZE))
    for members in groups.members():
        assert len({side[index.files[k].relpath] for k in members}) == 1


def test_clean_split_keeps_the_official_test_size_per_class_within_one_image(planted):
    index, groups = planted
    clean = clean_split(index, groups, SIZE)
    official, got = class_counts(index, "test"), class_counts(clean, "test")
    assert all(abs(got[c] - official[c]) <= 1 for c in index.classes)
    assert len(clean.files) == len(index.files) and set(_sides(clean)) == set(_sides(index))
    assert [f.split for f in clean.files] == sorted((f.split for f in clean.files), key=lambda s: s != "train")


def test_clean_split_is_seeded(planted):
    index, groups = planted
    a, b = clean_split(index, groups, SIZE, seed=0), clean_split(index, groups, SIZE, seed=0)
    other = clean_split(index, groups, SIZE, seed=1)
    assert a == b and a.fingerprint == b.fingerprint
    assert _sides(other) != _sides(a) and other.fingerprint != a.fingerprint
    # The order in which files were discovered does not matter, only the seed and the files.
    shuffled = replace(index, files=tuple(reversed(index.files)))
    regrouped = find_groups(shuffled, compute_signatures(shuffled, SIZE))
    assert _sides(clean_split(shuffled, regrouped, SIZE, seed=0)) == _sides(a)


def test_clean_fingerprint_differs_and_the_official_one_keeps_its_formula(planted):
    index, groups = planted
    clean = clean_split(index, groups, SIZE)
    assert clean.split_rule.startswith("clean seed=0") and not index.split_rule
    # The official fingerprint is the formula caches were keyed with before splits existed.
    h = hashlib.sha256(json.dumps(list(index.classes)).encode())
    for f in sorted(index.files, key=lambda r: (r.split, r.relpath)):
        h.update(f"{f.split}\0{index.classes[f.label]}\0{f.relpath}\0{f.sha256}\n".encode())
    assert index.fingerprint == h.hexdigest()[:24]
    assert clean.fingerprint != index.fingerprint
    # Same files on the same sides but another rule still gets another fingerprint.
    assert replace(index, split_rule="x").fingerprint != index.fingerprint
    assert deduplicate(clean).split_rule == clean.split_rule


def test_groups_with_conflicting_labels_stay_whole_and_keep_their_labels(planted):
    index, groups = planted
    clean = clean_split(index, groups, SIZE)
    label = {f.relpath: index.classes[f.label] for f in clean.files}
    conflict = [p for p in label if p.endswith("conflict.png")][0]
    source = [p for p in label if p.endswith("Tr2.png") and "glioma" in p][0]
    assert label[conflict] == "meningioma_tumor" and label[source] == "glioma_tumor"
    assert _sides(clean)[conflict] == _sides(clean)[source]


def test_asked_test_counts_are_met_and_impossible_ones_refused(planted):
    index, groups = planted
    want = {c: 2 for c in index.classes}
    assert class_counts(clean_split(index, groups, SIZE, test_counts=want), "test") == want
    with pytest.raises(DataError, match="without test images"):
        clean_split(index, groups, SIZE, test_counts={**want, "no_tumor": 0})
    everything = {c: 10 ** 6 for c in index.classes}
    with pytest.raises(DataError, match="without train images"):
        clean_split(index, groups, SIZE, test_counts=everything)


def test_only_known_splits_are_accepted():
    assert check_split("clean") == "clean"
    with pytest.raises(ValueError, match="official, clean"):
        check_split("random")


def test_proportions_hold_on_a_larger_folder_with_many_groups(tmp_path):
    # 30 training and 8 test images per class, then a copy of every third training image among the
    # test files: groups of two everywhere, and the split must still hit the per-class sizes.
    root = make_planted_folder(tmp_path / "mri", n_train=30, n_test=8, seed=2)
    for i, path in enumerate(sorted((root / "Training").glob("*/Tr*.png"))):
        if i % 3 == 0:
            (root / "Testing" / path.parent.name / f"copy{i}.png").write_bytes(path.read_bytes())
    index = discover(root)
    groups = find_groups(index, compute_signatures(index, 64))
    official = class_counts(index, "test")
    for seed in range(3):
        clean = clean_split(index, groups, 64, seed=seed)
        got, side = class_counts(clean, "test"), _sides(clean)
        assert all(abs(got[k] - official[k]) <= 1 for k in official)
        assert all(len({side[index.files[k].relpath] for k in m}) == 1 for m in groups.members())


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real dataset is not on this machine")
def test_clean_split_of_the_real_dataset_has_no_twins_and_the_official_sizes():
    index = discover(REAL_DATA)
    groups = find_groups(index, compute_signatures(index, 224))
    clean = clean_split(index, groups, 224)
    assert class_counts(clean, "test") == class_counts(index, "test")
    side = _sides(clean)
    assert all(len({side[index.files[k].relpath] for k in m}) == 1 for m in groups.members())
