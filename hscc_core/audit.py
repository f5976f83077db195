"""Dataset audit: class counts, exact duplicates within and across splits, label conflicts,
unreadable files.

The public brain-tumour MRI dataset contains byte-identical images inside a split and across
Training/Testing; a test image that also sits in training inflates test accuracy. The audit finds
such files by content hash and reports what ``--dedupe`` would drop (see ``data.deduplicate``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from PIL import Image

from .data import DatasetIndex, FileRecord, deduplicate, DataError


def _readable(path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable" here
        return False


def audit(index: DatasetIndex, check_readable: bool = True,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Audit a dataset's files.

    Parameters
    ----------
    index : DatasetIndex
        The dataset as discovered (without de-duplication).
    check_readable : bool
        Decode every file to find unreadable or truncated ones.
    progress : callable, optional
        ``progress(done, total)`` while decoding.

    Returns
    -------
    dict
        JSON-ready: ``classes``, ``counts`` (split -> class -> n), ``duplicates_within``
        (split -> list of groups of relpaths with identical content), ``duplicates_across``
        (list of {"train": [...], "test": [...]}), ``label_conflicts`` (groups of identical files
        filed under different classes), ``unreadable``, ``would_drop`` (relpaths ``--dedupe``
        removes) and ``summary`` counts.
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
    if check_readable:
        for i, f in enumerate(index.files):
            if not _readable(index.root / f.relpath):
                unreadable.append(f.relpath)
            if progress is not None:
                progress(i + 1, len(index.files))

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
        f"  identical files under different classes: {s['label_conflicts']} groups",
        f"  unreadable files: {s['unreadable']}",
        f"  --dedupe would drop {s['would_drop']} files",
    ]
    if report.get("dedupe_error"):
        lines.append(f"  --dedupe is not possible: {report['dedupe_error']}")
    return "\n".join(lines)
