"""Tests for hscc_core.data.folders: discovery, odd images, splits, fingerprints, de-duplication."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hscc_core.data.folders import (DataError, calibration_indices, decode_all, decode_image, discover,
                            normalise, stratified_holdout)
from conftest import class_image, make_imagefolder, truncated_jpeg_bytes, write_png


def test_discover_training_testing_layout(tiny_folder):
    index = discover(tiny_folder)
    assert index.classes == ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
    assert index.split_on_disk
    assert len(index.split("train")) == 48 and len(index.split("test")) == 16


def test_class_folders_only_gets_seeded_stratified_split(tmp_path):
    root = make_imagefolder(tmp_path / "flat", n_train=8, n_test=2, split=False)
    a, b = discover(root, seed=3), discover(root, seed=3)
    assert not a.split_on_disk
    assert [f.relpath for f in a.split("test")] == [f.relpath for f in b.split("test")]
    per_class = np.bincount([f.label for f in a.split("test")], minlength=4)
    assert per_class.tolist() == [2, 2, 2, 2]  # 20 % of 10 per class
    assert discover(root, seed=4).fingerprint != a.fingerprint or \
        [f.relpath for f in discover(root, seed=4).split("test")] != [f.relpath for f in a.split("test")]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_decode_any_mode_and_size(tmp_path, mode):
    arr = class_image(1, np.random.default_rng(0), 57)
    path = tmp_path / f"x.{'png'}"
    Image.fromarray(arr).convert(mode).save(path)
    out = decode_image(path, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_decode_16bit_uses_full_range(tmp_path):
    arr = (np.linspace(0, 4000, 40 * 40).reshape(40, 40)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = decode_image(path, 40)
    assert out.min() == 0 and out.max() >= 250  # 12-bit range stretched, not clipped to black


def test_truncated_and_unreadable_files_are_skipped_and_counted(tiny_folder):
    (tiny_folder / "Training" / "no_tumor" / "broken.jpg").write_bytes(truncated_jpeg_bytes())
    (tiny_folder / "Testing" / "glioma_tumor" / "notes.png").write_bytes(b"not an image at all")
    images = decode_all(discover(tiny_folder), 24)
    assert sorted(images.skipped) == ["Testing/glioma_tumor/notes.png", "Training/no_tumor/broken.jpg"]
    assert len(images.y_train) == 48 and len(images.y_test) == 16


def test_class_with_only_unreadable_files_is_fatal(tiny_folder):
    folder = tiny_folder / "Testing" / "no_tumor"
    for p in folder.iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="no_tumor"):
        decode_all(discover(tiny_folder), 24)


def test_bad_layouts_raise_clear_errors(tmp_path, tiny_folder):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path / "empty")
    shutil.rmtree(tiny_folder / "Testing" / "pituitary_tumor")
    with pytest.raises(DataError, match="different classes"):
        discover(tiny_folder)


def test_empty_class_is_refused(tiny_folder):
    for p in (tiny_folder / "Training" / "no_tumor").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="no_tumor"):
        discover(tiny_folder)


def test_fingerprint_changes_with_content(tiny_folder):
    before = discover(tiny_folder).fingerprint
    assert discover(tiny_folder).fingerprint == before
    write_png(tiny_folder / "Training" / "no_tumor" / "Tr0.png", np.zeros((40, 40), np.uint8))
    assert discover(tiny_folder).fingerprint != before


def test_dedupe_drops_leaks_and_copies(tiny_folder):
    src = tiny_folder / "Training" / "glioma_tumor" / "Tr0.png"
    shutil.copy(src, tiny_folder / "Testing" / "glioma_tumor" / "leak.png")
    shutil.copy(src, tiny_folder / "Training" / "glioma_tumor" / "zz_copy.png")
    index = discover(tiny_folder, dedupe=True)
    dropped = sorted(f.relpath for f in index.dropped)
    assert dropped == ["Testing/glioma_tumor/leak.png", "Training/glioma_tumor/zz_copy.png"]
    assert discover(tiny_folder).fingerprint != index.fingerprint


def test_normalisation_uses_training_statistics(tiny_folder):
    images = decode_all(discover(tiny_folder), 24)
    scaled = images.x_train / 255.0
    assert images.mean == pytest.approx(scaled.mean()) and images.std == pytest.approx(scaled.std())
    x = images.to_tensor(images.x_train)
    assert x.shape == (48, 1, 24, 24)  # one grey channel: the models' conv1 is folded (nn.grey)
    torch.testing.assert_close(x.mean().item(), 0.0, atol=1e-4, rtol=0)
    x3 = images.to_tensor(images.x_train, channels=3)  # the three-channel training architecture
    assert x3.shape == (48, 3, 24, 24)
    torch.testing.assert_close(x3[:, 0], x3[:, 2])
    torch.testing.assert_close(x3[:, :1], x)
    assert normalise(torch.zeros(1, 2, 2, dtype=torch.uint8), 0.5, 0.25).shape == (1, 1, 2, 2)


def test_grey_batches_stand_for_the_tensor_with_mirror_images(tiny_folder):
    images = decode_all(discover(tiny_folder), 24)
    x = images.x_train[:10]
    lazy = images.batches(x, flip=True)
    assert lazy.shape == (20, 1, 24, 24) and lazy.ndim == 4 and len(lazy) == 20
    full = images.to_tensor(x)
    torch.testing.assert_close(lazy[0:10], full)
    torch.testing.assert_close(lazy[10:20], full.flip(-1))  # the mirror images follow the images
    torch.testing.assert_close(lazy[7:13], torch.cat([full[7:], full[:3].flip(-1)]))
    assert images.batches(x, channels=3)[0:2].shape == (2, 3, 24, 24) and len(images.batches(x)) == 10
    with pytest.raises(TypeError):
        lazy[3]


def test_holdout_and_calibration_are_seeded_and_stratified():
    labels = np.repeat(np.arange(4), 10)
    kept, held = stratified_holdout(labels, 0.2, seed=1)
    assert np.bincount(labels[held]).tolist() == [2, 2, 2, 2]
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 40
    assert np.array_equal(calibration_indices(labels, 7, 0), calibration_indices(labels, 7, 0))
    assert len(calibration_indices(labels, 100, 0)) == 40
