"""Tests for hscc_core.data.duplicates on a tiny MRI-like folder with planted copies."""

import numpy as np
import pytest

from conftest import PLANTED, make_planted_folder, mri_like
from hscc_core.data.duplicates import (DEFAULT_THRESHOLD, Signatures, close_pairs, compute_signatures,
                                       content_box, duplicate_report, find_groups, perceptual_hash,
                                       twins_in_training)
from hscc_core.data.folders import discover

SIZE = 96


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    index = discover(make_planted_folder(tmp_path_factory.mktemp("planted") / "mri"))
    return index, compute_signatures(index, SIZE)


def _group_paths(index, groups):
    return sorted(sorted(index.files[k].relpath for k in m) for m in groups.members())


def test_every_planted_copy_is_grouped_with_its_source_and_nothing_else_is(planted):
    index, sigs = planted
    groups = find_groups(index, sigs)
    assert _group_paths(index, groups) == sorted(sorted((src, dst)) for _, src, dst in PLANTED)


def test_a_zero_threshold_keeps_only_hash_equal_copies(planted):
    index, sigs = planted
    by_kind = {kind: (src, dst) for kind, src, dst in PLANTED}
    dist = {k: int(np.bitwise_count(np.uint64(sigs.phash[a]) ^ np.uint64(sigs.phash[b])))
            for k, (a, b) in by_kind.items()}
    exact_only = _group_paths(index, find_groups(index, sigs, threshold=0))
    assert exact_only == sorted(sorted(p) for k, p in by_kind.items() if dist[k] == 0)
    assert sorted(by_kind["identical"]) in exact_only  # pixel-identical copies never depend on the hash


def test_pixel_identity_is_told_apart_from_near_identity(planted):
    index, sigs = planted
    assert sigs.pixel["Training/glioma_tumor/Tr1.png"] == sigs.pixel["Testing/glioma_tumor/identical.png"]
    assert sigs.pixel["Training/meningioma_tumor/Tr0.png"] != sigs.pixel["Testing/meningioma_tumor/reencoded.jpg"]
    twins = twins_in_training(index, find_groups(index, sigs))
    # identical + conflict are pixel twins; reencoded, rescaled and cropped only near twins.
    assert sum(r["pixel"] for r in twins.values()) == 2
    assert {c: r["near"] for c, r in twins.items()} == {
        "glioma_tumor": 1, "meningioma_tumor": 2, "no_tumor": 1, "pituitary_tumor": 1}
    assert sum(r["test"] for r in twins.values()) == len(index.split("test"))


def test_report_lists_groups_conflicts_and_pairs_on_both_sides_of_the_threshold(planted):
    index, sigs = planted
    report = duplicate_report(index, find_groups(index, sigs))
    assert report["threshold"] == DEFAULT_THRESHOLD and report["summary"]["groups"] == len(PLANTED)
    assert report["summary"]["groups_across_splits"] == len(PLANTED)
    [conflict] = report["label_conflicts"]
    assert [f["path"] for f in conflict["files"]] == ["Testing/meningioma_tumor/conflict.png",
                                                      "Training/glioma_tumor/Tr2.png"]
    assert conflict["classes"] == ["glioma_tumor", "meningioma_tumor"] and conflict["pixel_identical"]
    below = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["pairs_below_threshold"]}
    near = {frozenset((s, d)) for k, s, d in PLANTED if k in ("reencoded", "rescaled", "cropped")}
    assert below == near  # the planted near-duplicates, never the pixel-identical ones
    assert all(p["distance"] <= DEFAULT_THRESHOLD for p in report["pairs_below_threshold"])
    assert report["pairs_above_threshold"] == []  # no other pair is within 4 bits above it here
    # With a threshold of 0 the planted copies that moved are above it, closest first.
    above = duplicate_report(index, find_groups(index, sigs, threshold=0))["pairs_above_threshold"]
    moved = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["pairs_below_threshold"]
             if p["distance"] > 0}
    assert moved and {frozenset((p["a"]["path"], p["b"]["path"])) for p in above} == moved
    assert [p["distance"] for p in above] == sorted(p["distance"] for p in above)
    assert all(p["distance"] > 0 and not p["same_group"] for p in above)


def test_close_pairs_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips])  # each with a twin one bit away
    i, j, d = close_pairs(hashes, 3)
    brute = {(a, b, int(np.bitwise_count(hashes[a] ^ hashes[b]))) for a in range(80) for b in range(a + 1, 80)
             if np.bitwise_count(hashes[a] ^ hashes[b]) <= 3}
    assert set(zip(i.tolist(), j.tolist(), d.tolist())) == brute and len(brute) >= 40


def test_content_box_ignores_black_margin_and_blank_images():
    img = mri_like(np.random.default_rng(0), 128)
    padded = np.pad(img, 20)
    assert content_box(padded).shape == content_box(img).shape
    assert perceptual_hash(padded) == perceptual_hash(img)
    blank = np.zeros((32, 32), np.uint8)
    assert content_box(blank) is blank


def test_unreadable_files_get_no_hash_and_stay_alone(planted, tmp_path):
    index, _ = planted
    bad = tmp_path / "bad"
    bad.write_bytes(b"not an image")
    # One index entry pointing at garbage: decode fails, the file is reported and grouped with nobody.
    from dataclasses import replace

    broken = replace(index, root=tmp_path, files=(replace(index.files[0], relpath="bad"),))
    sigs = compute_signatures(broken, SIZE)
    assert sigs.unreadable == ["bad"] and sigs.phash == {}
    assert find_groups(broken, sigs).members() == []


def test_signatures_survive_json_and_bad_inputs_are_refused(planted):
    index, sigs = planted
    assert compute_signatures(index, SIZE, workers=1) == sigs  # threads change nothing but the time
    again = Signatures.from_json(sigs.to_json())
    assert again == sigs
    with pytest.raises(ValueError, match="0..64"):
        find_groups(index, sigs, threshold=65)
    with pytest.raises(ValueError, match="no signature"):
        find_groups(index, Signatures(SIZE, {}, {}))
