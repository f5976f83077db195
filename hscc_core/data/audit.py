"""Dataset audit: class counts, exact duplicates within and across splits, label conflicts,
unreadable files, and test images that equal a training image once decoded at the model's size.

The public brain-tumour MRI dataset contains byte-identical images inside a split and across
Training/Testing; a test image that also sits in training inflates test accuracy. The audit finds
such files by content hash and reports what ``--dedupe`` would drop (see ``data.deduplicate``).
The same image stored at another size or encoding is not byte-identical, yet the model sees the
same pixels: decoded at its input size, this dataset has far more such test images (251 of 394 at
224 px) than byte-identical ones (88). They are reported, not dropped.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Callable

from PIL import Image

from hscc_core.data.folders import DatasetIndex, FileRecord, deduplicate, decode_image, DataError


def _decoded_hash(path, size: int | None) -> str | None:
    """Hash of the pixels decoded at ``size`` (``""`` without a size), None if unreadable."""
    try:
        if size is None:
            with Image.open(path) as img:
                img.load()
            return ""
        return hashlib.sha256(decode_image(path, size).tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable" here
        return None


def audit(index: DatasetIndex, check_readable: bool = True,
          progress: Callable[[int, int], None] | None = None, pixel_size: int | None = None) -> dict:
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
        equal a training file's (``pixel_copies_across``); needs ``check_readable``.

    Returns
    -------
    dict
        JSON-ready: ``classes``, ``counts`` (split -> class -> n), ``duplicates_within``
        (split -> list of groups of relpaths with identical content), ``duplicates_across``
        (list of {"train": [...], "test": [...]}), ``label_conflicts`` (groups of identical files
        filed under different classes), ``unreadable``, ``would_drop`` (relpaths ``--dedupe``
        removes), ``pixel_copies_across`` (with ``pixel_size``: groups of test files equal to
        training files after decoding, or None) and ``summary`` counts.
    """
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
        splits = {f.split for f in group}
        if splits == {"train", "test"}:
            across.append({s: sorted(f.relpath for f in group if f.split == s) for s in ("train", "test")})
        if len({f.label for f in group}) > 1:
            conflicts.append(sorted(f"{f.relpath} ({classes[f.label]})" for f in group))

    unreadable: list[str] = []
    by_pixels: dict[str, list[FileRecord]] = defaultdict(list)
    if check_readable:
        for i, f in enumerate(index.files):
            digest = _decoded_hash(index.root / f.relpath, pixel_size)
            if digest is None:
                unreadable.append(f.relpath)
            elif pixel_size is not None:
                by_pixels[digest].append(f)
            if progress is not None:
                progress(i + 1, len(index.files))
    pixel_across = None
    if pixel_size is not None and check_readable:
        pixel_across = sorted(
            ({s: sorted(f.relpath for f in g if f.split == s) for s in ("train", "test")}
             for g in by_pixels.values() if {f.split for f in g} == {"train", "test"}),
            key=lambda g: g["test"])

    try:
        would_drop = sorted(f.relpath for f in deduplicate(index).dropped)
        dedupe_error = None
    except DataError as exc:
        would_drop, dedupe_error = [], str(exc)

    summary = {
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
    }
    return {
        "root": str(index.root),
        "split_on_disk": index.split_on_disk,
        "classes": list(classes),
        "counts": counts,
        "duplicates_within": {s: sorted(v) for s, v in within.items()},
        "duplicates_across": sorted(across, key=lambda g: g["test"]),
        "label_conflicts": sorted(conflicts),
        "unreadable": unreadable,
        "would_drop": would_drop,
        "dedupe_error": dedupe_error,
        "pixel_copies_across": pixel_across,
        "summary": summary,
    }


def format_audit(report: dict) -> str:
    """Human-readable summary of an audit report."""
    s = report["summary"]
    lines = [f"dataset {report['root']} ({'Training/Testing' if report['split_on_disk'] else 'seeded split'})"]
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
    lines += [
        f"  identical files under different classes: {s['label_conflicts']} groups",
        f"  unreadable files: {s['unreadable']}",
        f"  --dedupe would drop {s['would_drop']} files",
    ]
    if report.get("dedupe_error"):
        lines.append(f"  --dedupe is not possible: {report['dedupe_error']}")
    return "\n".join(lines)
