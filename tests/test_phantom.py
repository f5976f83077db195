"""Tests of the synthetic MRI phantom: determinism, class structure, spec checks and the writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hscc_core.data import phantom
from hscc_core.data.phantom import (
    CLASSES,
    PhantomSpec,
    render_slice,
    render_slice_with_masks,
    write_phantom_dataset,
)

SIZE = 64  # small images keep the suite fast; anatomy is resolution independent


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by a 3x3 cross, ``steps`` times (numpy only)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


# ---- render_slice ------------------------------------------------------------------------------


def test_classes_match_the_real_dataset_folders():
    assert CLASSES == ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


@pytest.mark.parametrize("label", CLASSES)
def test_render_slice_shape_dtype_and_range(label):
    img = render_slice(label, _rng(1), SIZE)
    assert img.shape == (SIZE, SIZE)
    assert img.dtype == np.uint8
    # A head on a dark background that uses most of the 8-bit range.
    assert img[:3, :3].mean() < 60
    assert img.max() > 200


@pytest.mark.parametrize("label", CLASSES)
def test_same_seed_same_image_and_other_seed_other_image(label):
    a = render_slice(label, _rng(5), SIZE)
    b = render_slice(label, _rng(5), SIZE)
    c = render_slice(label, _rng(6), SIZE)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


def test_render_slice_is_the_image_of_render_slice_with_masks():
    img, masks = render_slice_with_masks("glioma_tumor", _rng(3), SIZE)
    np.testing.assert_array_equal(img, render_slice("glioma_tumor", _rng(3), SIZE))
    assert set(masks) == {"lesion", "intracranial", "skull"}
    assert all(m.shape == (SIZE, SIZE) and m.dtype == bool for m in masks.values())


def test_other_sizes_render():
    assert render_slice("pituitary_tumor", _rng(0), 32).shape == (32, 32)
    assert render_slice("meningioma_tumor", _rng(0), 160).shape == (160, 160)


@pytest.mark.parametrize(
    ("label", "size"), [("cat", 64), ("Glioma_tumor", 64), ("no_tumor", 16), ("no_tumor", 2000), ("no_tumor", 64.0)]
)
def test_render_slice_rejects_bad_input(label, size):
    with pytest.raises(ValueError, match="must be"):
        render_slice(label, _rng(0), size)


# ---- class-specific structure ------------------------------------------------------------------


def test_no_tumor_has_no_lesion_and_tumours_have_one():
    for i in range(4):
        assert not render_slice_with_masks("no_tumor", _rng(10, i), SIZE)[1]["lesion"].any()
        for label in ("glioma_tumor", "meningioma_tumor", "pituitary_tumor"):
            assert render_slice_with_masks(label, _rng(10, i), SIZE)[1]["lesion"].sum() >= 3, label


def test_meningioma_touches_the_inner_skull_and_glioma_does_not():
    for i in range(8):
        _, m = render_slice_with_masks("meningioma_tumor", _rng(20, i), SIZE)
        # Extra-axial: the mass reaches the bone (within one pixel) and stays inside the skull.
        assert (_dilate(m["lesion"], 1) & m["skull"]).any(), i
        assert not (m["lesion"] & ~_dilate(m["intracranial"], 1)).any(), i
        _, g = render_slice_with_masks("glioma_tumor", _rng(20, i), SIZE)
        # Intra-axial: well inside the brain, clear of the bone.
        assert not (_dilate(g["lesion"], 2) & g["skull"]).any(), i


def test_pituitary_lesion_is_a_small_midline_mass_at_the_skull_base():
    for i in range(8):
        _, m = render_slice_with_masks("pituitary_tumor", _rng(30, i), SIZE)
        head = m["intracranial"] | m["skull"]
        rows, cols = np.nonzero(head)
        cy, cx = rows.mean(), cols.mean()
        # Principal axes of the head give its own up/down and left/right, whatever the pose.
        cov = np.cov(np.stack([rows - cy, cols - cx]))
        evals, evecs = np.linalg.eigh(cov)
        long_axis = evecs[:, 1] * np.sign(evecs[0, 1] or 1.0)  # antero-posterior, pointing down
        lr, lc = np.nonzero(m["lesion"])
        rel = np.stack([lr - cy, lc - cx])
        along = (long_axis @ rel).mean() / np.sqrt(evals[1])
        across = np.abs(np.array([-long_axis[1], long_axis[0]]) @ rel).mean() / np.sqrt(evals[0])
        assert along > 0.8, (i, along)  # in the lower (posterior-basal) part of the head
        assert across < 0.5, (i, across)  # on the midline
        assert m["lesion"].sum() < 0.04 * head.sum()  # small


def test_pituitary_region_is_brighter_than_in_no_tumor_on_average():
    def sella_window_mean(label: str) -> float:
        vals = []
        for i in range(10):
            img, m = render_slice_with_masks(label, _rng(40, i), SIZE)
            rows, cols = np.nonzero(m["intracranial"])
            # The sella sits at the bottom of the intracranial space on the midline.
            bottom, mid = rows.max(), int(round(cols.mean()))
            win = img[bottom - SIZE // 6 : bottom + 1, mid - SIZE // 16 : mid + SIZE // 16 + 1]
            vals.append(np.percentile(win, 90))
        return float(np.mean(vals))

    assert sella_window_mean("pituitary_tumor") > sella_window_mean("no_tumor") + 5


@pytest.mark.parametrize("label", ["meningioma_tumor", "pituitary_tumor"])
def test_enhancing_lesions_are_brighter_than_the_brain(label):
    diffs = []
    for i in range(8):
        img, m = render_slice_with_masks(label, _rng(50, i), SIZE)
        brain = m["intracranial"] & ~_dilate(m["lesion"], 2)
        diffs.append(img[m["lesion"]].mean() - np.median(img[brain]))
    assert np.mean(diffs) > 5


# ---- PhantomSpec ----------------------------------------------------------------------------------


def test_spec_defaults_are_valid_and_frozen():
    spec = PhantomSpec()
    assert spec.size == 128
    with pytest.raises(AttributeError):
        spec.size = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("size", 8, r"\[32, 1024\]"),
        ("size", 4096, r"\[32, 1024\]"),
        ("size", True, r"\[32, 1024\]"),
        ("size", 64.0, r"\[32, 1024\]"),
        ("train_per_class", 0, r"\[1, 100000\]"),
        ("test_per_class", -3, r"\[1, 100000\]"),
        ("test_per_class", 10**6, r"\[1, 100000\]"),
        ("seed", -1, r"\[0, "),
        ("seed", "0", r"\[0, "),
    ],
)
def test_spec_validation_names_the_allowed_range(field, value, allowed):
    with pytest.raises(ValueError, match=field + ".*" + allowed):
        PhantomSpec(**{field: value})


# ---- write_phantom_dataset ------------------------------------------------------------------------

TINY = PhantomSpec(size=48, train_per_class=3, test_per_class=2, seed=7)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_phantom_dataset_layout(tmp_path):
    calls = []
    root = write_phantom_dataset(tmp_path / "ph", TINY, progress=lambda d, t: calls.append((d, t)))
    assert root == tmp_path / "ph"
    for split, n in (("Training", 3), ("Testing", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        for label in CLASSES:
            names = sorted(p.name for p in (root / split / label).iterdir())
            assert names == sorted(f"{label}_{i}.png" for i in range(n))
    with Image.open(root / "Training" / "no_tumor" / "no_tumor_0.png") as im:
        assert im.mode == "L" and im.size == (48, 48)
    manifest = json.loads((root / "phantom.json").read_text())
    assert manifest["spec"] == {"size": 48, "train_per_class": 3, "test_per_class": 2, "seed": 7}
    assert manifest["version"] == phantom.PHANTOM_VERSION
    assert calls == [(i, 20) for i in range(1, 21)]
    # No temporary sibling is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]


def test_written_pixels_are_the_seeded_render(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", TINY)
    with Image.open(root / "Testing" / "glioma_tumor" / "glioma_tumor_1.png") as im:
        on_disk = np.asarray(im)
    expected = render_slice("glioma_tumor", phantom.image_rng(TINY, "Testing", "glioma_tumor", 1), TINY.size)
    np.testing.assert_array_equal(on_disk, expected)


def test_write_is_byte_identical_and_idempotent(tmp_path):
    a = _tree(write_phantom_dataset(tmp_path / "a", TINY))
    b = _tree(write_phantom_dataset(tmp_path / "b", TINY))
    assert a == b
    # A second call on a complete dataset returns at once without touching a file.
    png = tmp_path / "a" / "Training" / "glioma_tumor" / "glioma_tumor_0.png"
    before = png.stat().st_mtime_ns
    calls = []
    write_phantom_dataset(tmp_path / "a", TINY, progress=lambda d, t: calls.append(d))
    assert calls == [] and png.stat().st_mtime_ns == before


def test_other_seed_gives_other_files(tmp_path):
    a = _tree(write_phantom_dataset(tmp_path / "a", TINY))
    b = _tree(write_phantom_dataset(tmp_path / "b", PhantomSpec(size=48, train_per_class=3, test_per_class=2, seed=8)))
    assert a.keys() - {"phantom.json"} == b.keys() - {"phantom.json"}
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))


def test_existing_folder_that_is_not_this_phantom_is_left_alone(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other"):
        write_phantom_dataset(other, TINY)
    assert (other / "keep.txt").read_text() == "mine"
    write_phantom_dataset(tmp_path / "ph", TINY)
    with pytest.raises(FileExistsError):
        write_phantom_dataset(tmp_path / "ph", PhantomSpec(size=48, train_per_class=3, test_per_class=2, seed=9))


def test_half_written_dataset_never_appears(tmp_path):
    # Fail mid-way: root must not exist afterwards, and no temporary folder is left.
    def boom(done, total):
        if done == 5:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_phantom_dataset(tmp_path / "ph", TINY, progress=boom)
    assert list(tmp_path.iterdir()) == []
    # The next call starts afresh and completes.
    assert (write_phantom_dataset(tmp_path / "ph", TINY) / "phantom.json").is_file()


def test_a_concurrent_writer_that_finished_first_wins(tmp_path, monkeypatch):
    # Simulate another process completing the same dataset while this one was writing.
    def racing_rename(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "phantom.json").write_text(json.dumps(TINY.manifest()))
        raise OSError("target exists")

    monkeypatch.setattr(phantom.os, "rename", racing_rename)
    root = write_phantom_dataset(tmp_path / "ph", TINY)
    assert root == tmp_path / "ph"
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]


def test_a_phantom_written_before_the_package_moved_is_still_used(tmp_path):
    # Caches from before the move into hscc_core/data/ name the generator "hscc_core.phantom".
    root = write_phantom_dataset(tmp_path / "ph", TINY)
    manifest = root / "phantom.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "generator": "hscc_core.phantom"}))
    assert write_phantom_dataset(root, TINY) == root  # no "exists and is not the phantom" error
    manifest.write_text(json.dumps({**old, "generator": "someone.else"}))
    with pytest.raises(FileExistsError):
        write_phantom_dataset(root, TINY)
