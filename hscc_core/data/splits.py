"""Named splits of a dataset: ``official`` (as found on disk) and ``clean`` (leak-free).

``official`` is the split ``discover`` finds: the Training/Testing folders, or for a folder of class
folders only the seeded stratified 80/20 split of the files. ``clean`` pools both sides and draws a
new split in which every duplicate group (``data.duplicates``: pixel- or near-identical images) lies
whole on one side, so no test image has a copy in training:

* the test side gets, per class, as many files as the official split has (the Testing folder's
  counts, or the seeded split's 20 %), as closely as the groups allow;
* groups are visited in a seeded random order and each goes to test if every class it holds still has
  room there, else to training. This is the greedy assignment behind scikit-learn's
  ``StratifiedGroupKFold``, aimed at a per-class size instead of equal folds: the official test
  set is not a fixed fraction of each class (on the brain-tumour data 100 of 926 gliomas but 105 of
  500 no-tumour images), which k equal folds cannot reproduce.

A group whose files carry different labels stays whole too, each file keeping its own label (the
audit lists such groups). The clean split's index records its rule (seed, hash, threshold, size) in
``DatasetIndex.split_rule``, so its fingerprint, and with it the decoded images, the baseline
checkpoint and every run, differ from the official split's; the official fingerprint is unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hscc_core.data.duplicates import HASH_NAME, DuplicateGroups
from hscc_core.data.folders import DataError, DatasetIndex

SPLITS = ("official", "clean")
DEFAULT_SEED = 0


def check_split(name: str) -> str:
    """``name`` if it is a known split.

    Raises
    ------
    ValueError
        Naming the allowed values.
    """
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got '{name}'")
    return name


def class_counts(index: DatasetIndex, split: str) -> dict[str, int]:
    """Files per class on one side (``train`` or ``test``) of ``index``."""
    counts = {c: 0 for c in index.classes}
    for f in index.split(split):
        counts[index.classes[f.label]] += 1
    return counts


def clean_split(index: DatasetIndex, groups: DuplicateGroups, size: int, seed: int = DEFAULT_SEED,
                test_counts: dict[str, int] | None = None) -> DatasetIndex:
    """A seeded, stratified split of all files of ``index`` that keeps every duplicate group whole.

    Parameters
    ----------
    index : DatasetIndex
        The dataset with its official split (both sides are pooled).
    groups : DuplicateGroups
        Duplicate groups of ``index.files`` (``find_groups``).
    size : int
        Input size the groups were found at (recorded in the split rule).
    seed : int
        Seed of the order in which groups are assigned.
    test_counts : dict, optional
        Test files wanted per class; default: the official split's test counts.

    Returns
    -------
    DatasetIndex
        Training files then test files, each sorted by path; ``split_rule`` set.

    Raises
    ------
    DataError
        When a class would have no training or no test file.
    """
    files = index.files
    classes = index.classes
    wanted = test_counts or class_counts(index, "test")
    target = np.asarray([wanted[c] for c in classes], dtype=np.int64)
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups.group.tolist()):
        members.setdefault(g, []).append(k)
    # A canonical order (by first path) before shuffling: the result depends on the seed and the
    # files only, not on the order files were discovered in.
    ordered = sorted(members.values(), key=lambda m: min(files[k].relpath for k in m))
    rng = np.random.default_rng(seed)
    filled = np.zeros(len(classes), dtype=np.int64)
    test: set[int] = set()
    for pos in rng.permutation(len(ordered)):
        group = ordered[pos]
        need = np.bincount([files[k].label for k in group], minlength=len(classes))
        if np.all(filled + need <= target):
            filled += need
            test.update(group)
    new = [replace(f, split="test" if k in test else "train") for k, f in enumerate(files)]
    new.sort(key=lambda f: (f.split != "train", f.relpath))
    out = replace(index, files=tuple(new), dropped=(),
                  split_rule=f"clean seed={seed} groups={HASH_NAME} <= {groups.threshold} bits at {size}px")
    for side in ("train", "test"):
        for name, n in class_counts(out, side).items():
            if n == 0:
                raise DataError(f"the clean split leaves class '{name}' without {side} images "
                                "(its duplicate groups are too large to split)")
    return out
