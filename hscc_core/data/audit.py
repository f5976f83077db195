"""Dataset audit: class counts, exact duplicates within and across splits, label conflicts,
unreadable files, and test images that equal a training image once decoded at the model's size.

The public brain-tumour MRI dataset contains byte-identical images inside a split and across
Training/Testing; a test image that also sits in training inflates test accuracy. The audit finds
such files by content hash and reports what ``--dedupe`` would drop (see ``data.deduplicate``).
The same image stored at another size or encoding is not byte-identical, yet the model sees the
same pixels: decoded at its input size, this dataset has far more such test images (251 of 394 at
224 px) than byte-identical ones (88). They are reported, not dropped. With the decoding size the
audit also groups pixel- and near-identical files over both splits (``data.duplicates``) and shows
the closest pairs on either side of the perceptual-hash threshold.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from PIL import Image

from hscc_core.data.duplicates import (DEFAULT_THRESHOLD, Signatures, compute_signatures, duplicate_report,
                                       find_groups)
from hscc_core.data.folders import DatasetIndex, FileRecord, deduplicate, DataError


def _readable(path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable" here
        return False


def audit(index: DatasetIndex, check_readable: bool = True,
          progress: Callable[[int, int], None] | None = None, pixel_size: int | None = None,
          threshold: int = DEFAULT_THRESHOLD, signatures: Signatures | None = None) -> dict:
    """Audit a dataset's files.

    Parameters
    ----------
    index : DatasetIndex
        The dataset as discovered (without de-duplication).
    check_readable : bool
        Decode every file to find unreadable or truncated ones.
    progress : callable, optional
        ``progress(done, total)`` while decoding.
    pixel_size : int, optional
        Also decode every file as training does at this size and report test files whose pixels
        equal a training file's (``pixel_copies_across``), and group duplicates
        (``duplicate_groups``); needs ``check_readable``.
    threshold : int
        Perceptual-hash distance (bits) up to which two files are near-identical.
    signatures : Signatures, optional
        The files' signatures at ``pixel_size`` when already computed (else they are computed).

    Returns
    -------
    dict
        JSON-ready: ``classes``, ``counts`` (split -> class -> n), ``duplicates_within``
        (split -> list of groups of relpaths with identical content), ``duplicates_across``
        (list of {"train": [...], "test": [...]}), ``label_conflicts`` (groups of identical files
        filed under different classes), ``unreadable``, ``would_drop`` (relpaths ``--dedupe``
        removes), ``pixel_copies_across`` (with ``pixel_size``: groups of test files equal to
        training files after decoding, or None), ``duplicate_groups`` (with ``pixel_size``: see
        ``data.duplicates.duplicate_report``, else None), ``split`` (``official`` or the index's
        split rule) and ``summary`` counts.
    """
    counts, within, across, conflicts = _byte_copies(index)
    unreadable, pixel_across, duplicates = [], None, None
    if check_readable and pixel_size is None:
        for i, f in enumerate(index.files):
            if not _readable(index.root / f.relpath):
                unreadable.append(f.relpath)
            if progress is not None:
                progress(i + 1, len(index.files))
    elif check_readable:
        if signatures is None:
            signatures = compute_signatures(index, pixel_size, progress)
        elif signatures.size != pixel_size:
            raise ValueError(f"signatures decoded at {signatures.size} px, audit asked for {pixel_size} px")
        unreadable, pixel_across = _pixel_copies(index, signatures)
        duplicates = duplicate_report(index, find_groups(index, signatures, threshold))
    try:
        would_drop = sorted(f.relpath for f in deduplicate(index).dropped)
        dedupe_error = None
    except DataError as exc:
        would_drop, dedupe_error = [], str(exc)
    summary = _summary(index, counts, within, across, conflicts, unreadable, would_drop, pixel_across, pixel_size,
                       duplicates)
    return {
        "root": str(index.root),
        "split_on_disk": index.split_on_disk,
        "classes": list(index.classes),
        "counts": counts,
        "duplicates_within": {s: sorted(v) for s, v in within.items()},
        "duplicates_across": sorted(across, key=lambda g: g["test"]),
        "label_conflicts": sorted(conflicts),
        "unreadable": unreadable,
        "would_drop": would_drop,
        "dedupe_error": dedupe_error,
        "pixel_copies_across": pixel_across,
        "duplicate_groups": duplicates,
        "split": index.split_rule or "official",
        "summary": summary,
    }


def _byte_copies(index: DatasetIndex):
    """Class counts per split and the groups of byte-identical files: within a split, across the
    splits, and under different classes."""
    classes = index.classes
    counts = {s: {c: 0 for c in classes} for s in ("train", "test")}
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for f in index.files:
        counts[f.split][classes[f.label]] += 1
        by_hash[f.sha256].append(f)
    within = {"train": [], "test": []}
    across, conflicts = [], []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        for split in ("train", "test"):
            members = sorted(f.relpath for f in group if f.split == split)
            if len(members) > 1:
                within[split].append(members)
        if {f.split for f in group} == {"train", "test"}:
            across.append({s: sorted(f.relpath for f in group if f.split == s) for s in ("train", "test")})
        if len({f.label for f in group}) > 1:
            conflicts.append(sorted(f"{f.relpath} ({classes[f.label]})" for f in group))
    return counts, within, across, conflicts


def _pixel_copies(index: DatasetIndex, signatures: Signatures) -> tuple[list[str], list[dict]]:
    """Unreadable files, and the groups of test files whose decoded pixels equal a training file's."""
    unreadable = []
    by_pixels: dict[str, list[FileRecord]] = defaultdict(list)
    for f in index.files:
        digest = signatures.pixel[f.relpath]
        if digest is None:
            unreadable.append(f.relpath)
        else:
            by_pixels[digest].append(f)
    pixel_across = sorted(
        ({s: sorted(f.relpath for f in g if f.split == s) for s in ("train", "test")}
         for g in by_pixels.values() if {f.split for f in g} == {"train", "test"}),
        key=lambda g: g["test"])
    return unreadable, pixel_across


def _summary(index, counts, within, across, conflicts, unreadable, would_drop, pixel_across, pixel_size,
             duplicates) -> dict:
    """The audit's headline counts."""
    return {
        "files": len(index.files),
        "train_files": sum(counts["train"].values()),
        "test_files": sum(counts["test"].values()),
        "duplicate_groups_within_train": len(within["train"]),
        "duplicate_groups_within_test": len(within["test"]),
        "extra_copies_within_train": sum(len(g) - 1 for g in within["train"]),
        "extra_copies_within_test": sum(len(g) - 1 for g in within["test"]),
        "test_files_also_in_train": sum(len(g["test"]) for g in across),
        "label_conflicts": len(conflicts),
        "unreadable": len(unreadable),
        "would_drop": len(would_drop),
        "test_images_equal_to_train_after_decoding": (
            None if pixel_across is None else sum(len(g["test"]) for g in pixel_across)),
        "pixel_size": pixel_size if pixel_across is not None else None,
        **({} if duplicates is None else {
            "duplicate_groups": duplicates["summary"]["groups"],
            "duplicate_groups_across_splits": duplicates["summary"]["groups_across_splits"],
            "largest_duplicate_group": duplicates["summary"]["largest_group"],
            "duplicate_group_label_conflicts": duplicates["summary"]["label_conflicts"],
            "test_images_with_twin_in_train": duplicates["summary"]["test_with_twin_in_train"],
            "near_duplicate_threshold": duplicates["threshold"]}),
    }


def format_audit(report: dict) -> str:
    """Human-readable summary of an audit report."""
    s = report["summary"]
    lines = [f"dataset {report['root']} ({'Training/Testing' if report['split_on_disk'] else 'seeded split'}), "
             f"split: {report.get('split', 'official')}"]
    for split in ("train", "test"):
        per = ", ".join(f"{c} {n}" for c, n in report["counts"][split].items())
        lines.append(f"  {split:5s}: {sum(report['counts'][split].values())} files ({per})")
    lines += [
        f"  duplicates within train: {s['duplicate_groups_within_train']} groups, "
        f"{s['extra_copies_within_train']} extra copies",
        f"  duplicates within test:  {s['duplicate_groups_within_test']} groups, "
        f"{s['extra_copies_within_test']} extra copies",
        f"  test files also in train: {s['test_files_also_in_train']}",
    ]
    if s.get("test_images_equal_to_train_after_decoding") is not None:
        lines.append(f"  test images equal to a training image once decoded at {s['pixel_size']} px: "
                     f"{s['test_images_equal_to_train_after_decoding']} (reported, not dropped)")
    if s.get("duplicate_groups") is not None:
        lines += [
            f"  duplicate groups (pixel- or near-identical, phash <= {s['near_duplicate_threshold']} bits): "
            f"{s['duplicate_groups']}, {s['duplicate_groups_across_splits']} across splits, "
            f"largest {s['largest_duplicate_group']} files, {s['duplicate_group_label_conflicts']} with "
            "more than one class",
            f"  test images sharing a group with a training image: {s['test_images_with_twin_in_train']}"]
    lines += [
        f"  identical files under different classes: {s['label_conflicts']} groups",
        f"  unreadable files: {s['unreadable']}",
        f"  --dedupe would drop {s['would_drop']} files",
    ]
    if report.get("dedupe_error"):
        lines.append(f"  --dedupe is not possible: {report['dedupe_error']}")
    return "\n".join(lines)
