"""Tests for hscc_core.data.audit on planted duplicates, leaks, label conflicts and unreadable files."""

import shutil
from pathlib import Path

import pytest

from hscc_core.data.audit import audit, format_audit
from hscc_core.data.folders import discover
from conftest import PLANTED, make_planted_folder, truncated_jpeg_bytes


def test_audit_finds_planted_problems(tiny_folder):
    tr = tiny_folder / "Training"
    shutil.copy(tr / "glioma_tumor" / "Tr0.png", tr / "glioma_tumor" / "copy.png")  # within train
    shutil.copy(tr / "glioma_tumor" / "Tr1.png", tiny_folder / "Testing" / "glioma_tumor" / "leak.png")
    shutil.copy(tr / "no_tumor" / "Tr0.png", tr / "pituitary_tumor" / "mislabel.png")  # class conflict
    (tr / "meningioma_tumor" / "bad.jpg").write_bytes(truncated_jpeg_bytes())
    report = audit(discover(tiny_folder))
    s = report["summary"]
    assert report["counts"]["train"]["glioma_tumor"] == 13
    assert report["duplicates_within"]["train"] == [
        ["Training/glioma_tumor/Tr0.png", "Training/glioma_tumor/copy.png"],
        ["Training/no_tumor/Tr0.png", "Training/pituitary_tumor/mislabel.png"]]
    assert report["duplicates_across"] == [
        {"train": ["Training/glioma_tumor/Tr1.png"], "test": ["Testing/glioma_tumor/leak.png"]}]
    assert s["label_conflicts"] == 1 and s["test_files_also_in_train"] == 1
    assert report["unreadable"] == ["Training/meningioma_tumor/bad.jpg"]
    assert report["would_drop"] == ["Testing/glioma_tumor/leak.png", "Training/glioma_tumor/copy.png",
                                    "Training/pituitary_tumor/mislabel.png"]
    assert "test files also in train: 1" in format_audit(report)


def test_clean_folder_has_nothing_to_drop(tiny_folder):
    report = audit(discover(tiny_folder), check_readable=False)
    assert report["would_drop"] == [] and report["summary"]["label_conflicts"] == 0


def test_audit_finds_test_images_equal_to_training_ones_once_decoded(tiny_folder):
    from PIL import Image

    src = tiny_folder / "Training" / "glioma_tumor" / "Tr1.png"
    with Image.open(src) as img:
        # Same pixels, other bytes (another compression level and a text chunk): not a byte copy.
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("note", "re-encoded")
        img.save(tiny_folder / "Testing" / "glioma_tumor" / "reencoded.png", compress_level=1, pnginfo=info)
    index = discover(tiny_folder)
    plain = audit(index)
    assert plain["summary"]["test_files_also_in_train"] == 0
    assert plain["pixel_copies_across"] is None
    report = audit(index, pixel_size=16)
    assert report["summary"]["test_images_equal_to_train_after_decoding"] == 1
    assert report["pixel_copies_across"] == [{"train": ["Training/glioma_tumor/Tr1.png"],
                                              "test": ["Testing/glioma_tumor/reencoded.png"]}]
    assert "once decoded at 16 px: 1" in format_audit(report)
    assert report["would_drop"] == []  # reported, not dropped


def test_audit_groups_planted_duplicates_and_lists_the_near_pairs(tmp_path):
    from hscc_core.data.duplicates import compute_signatures

    index = discover(make_planted_folder(tmp_path / "mri"))
    report = audit(index, pixel_size=96)
    groups = report["duplicate_groups"]
    assert sorted(sorted(f["path"] for f in g["files"]) for g in groups["groups"]) == sorted(
        sorted((src, dst)) for _, src, dst in PLANTED)
    below = {frozenset((p["a"]["path"], p["b"]["path"])) for p in groups["pairs_below_threshold"]}
    assert below == {frozenset((s, d)) for k, s, d in PLANTED if k in ("reencoded", "rescaled", "cropped")}
    s = report["summary"]
    assert s["duplicate_groups"] == len(PLANTED) and s["duplicate_group_label_conflicts"] == 1
    assert s["test_images_with_twin_in_train"] == len(PLANTED) and s["near_duplicate_threshold"] == 4
    assert s["test_images_equal_to_train_after_decoding"] == 2  # the byte copies; the others moved pixels
    assert report["split"] == "official"
    assert "duplicate groups (pixel- or near-identical, phash <= 4 bits): 5, 5 across splits" in format_audit(report)
    # Signatures computed elsewhere (the workspace caches them) give the same report; another size is refused.
    assert audit(index, pixel_size=96, signatures=compute_signatures(index, 96)) == report
    with pytest.raises(ValueError, match="decoded at 64 px"):
        audit(index, pixel_size=96, signatures=compute_signatures(index, 64))


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason="the real dataset is not on this machine")
def test_audit_of_the_real_dataset_reports_its_duplicates_and_leaks():
    s = audit(discover(REAL), pixel_size=224)["summary"]
    # The counts hscc audit reported on this dataset (docs/results.md): what --dedupe drops.
    assert s["test_files_also_in_train"] == 88 and s["extra_copies_within_test"] == 80
    assert s["extra_copies_within_train"] == 93 and s["would_drop"] == 237
    assert s["test_images_equal_to_train_after_decoding"] == 251  # same pixels, other bytes
